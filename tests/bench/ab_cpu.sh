#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Before/after of a change on the request path: the worker's own CPU time per request of two
# data-plane binaries, side by side on one mock, interleaved (run 1 of A, of B, run 2 ...).
# CPU per request (utime + stime of the worker from /proc, over the requests wrk completed) is
# steadier than req/s on a shared machine, where the mock and the load move the throughput.
#
#   bash tests/bench/ab_cpu.sh OLD_DATAPLANE NEW_DATAPLANE
#   AB_STREAM=1 (5-chunk streams)  AB_RUNS=3  AB_SECONDS=4  AB_CONNS="1 64"
#
# Build the old one from a worktree: git worktree add /tmp/old <rev> && cd /tmp/old &&
# meson setup build-rel -Dbuildtype=release -Db_ndebug=true && ninja -C build-rel.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
(($# == 2)) || sy_die "usage: $0 OLD_DATAPLANE NEW_DATAPLANE"
BIN=(["0"]="$1" ["1"]="$2")
RUNS=${AB_RUNS:-3} SECS=${AB_SECONDS:-4} CONNS=${AB_CONNS:-1 64}
MOCK=${AB_MOCK:-$SY_ROOT/build-release/tests/mockprovider/switchyard-mockprovider}
[[ -x $MOCK ]] || sy_die "no mock at $MOCK (build build-release first: bash tests/bench/run.sh does)"
W=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

wait_file() { for _ in $(seq 100); do [[ -s $1 ]] && return 0; sleep 0.05; done; return 1; }
taskset -c 0 "$MOCK" --listen 127.0.0.1:0 --port-file "$W/mock.port" >/dev/null 2>&1 &
PIDS+=($!)
wait_file "$W/mock.port" || sy_die "the mock did not start"
cat >"$W/table.json" <<JSON
{"version":1,"deployments":[{"name":"mock","provider":"mock","model":"gpt-4o-mini",
 "format":"openai","base_url":"http://127.0.0.1:$(cat "$W/mock.port")/v1","auth":"bearer",
 "api_key":"sk-bench"}],
 "models":[{"name":"gpt-4o-mini","targets":[{"deployment":"mock","weight":1}]}]}
JSON
if [[ ${AB_STREAM:-0} == 1 ]]; then
    echo '{"model":"gpt-4o-mini","stream":true,"mock":{"chunks":5,"chunk_delay_ms":0},"messages":[{"role":"user","content":"Say hello"}]}' >"$W/body.json"
else
    echo '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}' >"$W/body.json"
fi
declare -A PORT WORKER
for i in 0 1; do
    taskset -c 0 "${BIN[$i]}" --listen 127.0.0.1:0 --workers 1 --table "$W/table.json" \
        --port-file "$W/$i.port" >"$W/$i.log" 2>&1 &
    PIDS+=($!)
    wait_file "$W/$i.port" || sy_die "${BIN[$i]} did not start (see $W/$i.log)"
    sleep 0.3
    PORT[$i]=$(cat "$W/$i.port")
    WORKER[$i]=$(pgrep -P "${PIDS[-1]}" | head -1)
done
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-6s %-4s %-5s %10s %14s\n' conns run which requests "us CPU/req"
for c in $CONNS; do
    for run in $(seq "$RUNS"); do
        for i in 0 1; do
            t0=$(ticks "${WORKER[$i]}")
            out=$(taskset -c 1 wrk -t1 -c"$c" -d"${SECS}s" -s "$SY_ROOT/tests/bench/post.lua" \
                "http://127.0.0.1:${PORT[$i]}/v1/chat/completions" -- "$W/body.json" 2>&1)
            t1=$(ticks "${WORKER[$i]}")
            n=$(awk '/^BENCH_RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "=");
                      if (kv[1] == "requests") print kv[2] } }' <<<"$out")
            printf '%-6s %-4s %-5s %10s %14s\n' "$c" "$run" "$([[ $i == 0 ]] && echo old || echo new)" \
                "$n" "$(awk -v t=$((t1 - t0)) -v n="${n:-0}" -v hz="$hz" \
                    'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / hz / n; else print "-" }')"
        done
    done
done
