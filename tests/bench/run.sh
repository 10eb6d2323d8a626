#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark Switchyard against nginx and the mock provider directly, on this machine, in one run.
# See tests/bench/README.md. Only 127.0.0.1 is touched; every loop is bounded.
#
#   BENCH_RUNS=3 BENCH_SECONDS=5   repetitions (interleaved) and seconds per wrk run
#   BENCH_SERVER_CPUS=0            CPUs for the mock and the proxies (taskset -c list)
#   BENCH_CLIENT_CPUS=1            CPUs for wrk and the stream client
#   BENCH_STREAMS=1000             slow streams for the memory measure
#   BENCH_STREAM_DELAY_MS=30000    the mock's delay between chunks of those streams
#   BENCH_BUILD_DIR=DIR            use this existing build instead of building build-release
#   BENCH_KEEP=1                   keep the work directory (logs, configs, raw results)
#   BENCH_GOV_ITERS=1000000        iterations per batch of the governance microbenchmark
#   BENCH_GOVERNANCE=0|only        skip the governance section, or run it alone
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
cd "$SY_ROOT"
BENCH=$SY_ROOT/tests/bench

RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_SECONDS:-5}
STREAMS=${BENCH_STREAMS:-1000}
STREAM_DELAY=${BENCH_STREAM_DELAY_MS:-30000}
GOV_ITERS=${BENCH_GOV_ITERS:-1000000}
GOVERNANCE=${BENCH_GOVERNANCE:-1}
MAIN_RUNS=$RUNS
[[ $GOVERNANCE == only ]] && MAIN_RUNS=0 # the governance section alone
if (($(nproc) > 1)); then
    SERVER_CPUS=${BENCH_SERVER_CPUS:-0}
    CLIENT_CPUS=${BENCH_CLIENT_CPUS:-1}
else
    SERVER_CPUS=${BENCH_SERVER_CPUS:-0}
    CLIENT_CPUS=${BENCH_CLIENT_CPUS:-0}
fi
bash scripts/install-deps.sh
if [[ -n ${BENCH_BUILD_DIR:-} ]]; then
    BUILD=$(cd "$BENCH_BUILD_DIR" && pwd) # an existing build, used as it is
else
    BUILD=$SY_ROOT/build-release
    sy_build "$BUILD" -Dbuildtype=release -Db_ndebug=true -Dtests=true
fi
DATAPLANE=$BUILD/dataplane/switchyard-dataplane
MOCK=$BUILD/tests/mockprovider/switchyard-mockprovider
[[ -x $DATAPLANE && -x $MOCK ]] || sy_die "build did not produce $DATAPLANE and $MOCK"
BENCH_GOVERN=$BUILD/tests/bench/bench_govern
BENCH_RING=$BUILD/tests/bench/bench_ring
if [[ $GOVERNANCE != 0 ]] && [[ ! -x $BENCH_GOVERN || ! -x $BENCH_RING ]]; then
    sy_warn "no $BENCH_GOVERN or $BENCH_RING in this build: governance section skipped"
    GOVERNANCE=0
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
    if [[ -n ${BENCH_KEEP:-} ]]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPUS CMD...: run in its own session (so its whole group can be stopped), pinned.
start() {
    local name=$1 cpus=$2
    shift 2
    taskset -c "$cpus" setsid "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
}

wait_port_file() { # FILE PID
    for _ in $(seq 200); do
        [[ -s $1 ]] && { cat "$1"; return 0; }
        kill -0 "$2" 2>/dev/null || break
        sleep 0.05
    done
    return 1
}

free_port() { # a free port below the ephemeral range
    /usr/bin/python3 -c '
import random, socket
for _ in range(200):
    p = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass
    finally: s.close()'
}

worker_pids() { # MASTER_PID -> comma-separated children
    ps -o pid= --ppid "$1" | tr -d ' ' | paste -sd, -
}

rss_kb() { # comma-separated PIDs -> summed VmRSS
    local sum=0 p v
    for p in ${1//,/ }; do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

write_table() { # FILE MOCK_PORT IDLE_MS TOTAL_MS
    cat >"$1" <<JSON
{"version":1,
 "deployments":[{"name":"mock","provider":"mock","model":"gpt-4o-mini","format":"openai",
   "base_url":"http://127.0.0.1:$2/v1","auth":"bearer","api_key":"sk-bench",
   "timeouts":{"connect_ms":1000,"first_byte_ms":10000,"idle_ms":$3,"total_ms":$4}}],
 "models":[{"name":"gpt-4o-mini","targets":[{"deployment":"mock","weight":1}]}]}
JSON
}

start_switchyard() { # NAME [TABLE] -> SY_PID, SY_PORT
    rm -f "$WORK/$1.port"
    start "$1" "$SERVER_CPUS" "$DATAPLANE" --listen 127.0.0.1:0 --workers 1 \
        --table "${2:-$WORK/table.json}" --port-file "$WORK/$1.port"
    SY_PID=$LAST_PID
    SY_PORT=$(wait_port_file "$WORK/$1.port" "$SY_PID") || {
        tail -n 20 "$WORK/$1.log" >&2
        sy_die "Switchyard did not start"
    }
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:$SY_PORT/healthz" 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.3 # let the worker settle before anyone reads its RSS
}

# ---- servers ------------------------------------------------------------------------------------

sy_say "starting the mock provider (CPUs $SERVER_CPUS)"
start mock "$SERVER_CPUS" "$MOCK" --listen 127.0.0.1:0 --port-file "$WORK/mock.port" --quiet --workers 1
MOCK_PID=$LAST_PID
declare -A SERVER_PID=([mock]=$MOCK_PID)
MOCK_PORT=$(wait_port_file "$WORK/mock.port" "$MOCK_PID") || {
    tail -n 20 "$WORK/mock.log" >&2
    sy_die "the mock provider did not start"
}

sy_say "starting nginx (1 worker, CPUs $SERVER_CPUS)"
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
user root;
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 120s;
        }
    }
}
CONF
start nginx "$SERVER_CPUS" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
SERVER_PID[nginx]=$LAST_PID

sy_say "starting Switchyard (1 worker, CPUs $SERVER_CPUS)"
write_table "$WORK/table.json" "$MOCK_PORT" 120000 300000
start_switchyard switchyard
SERVER_PID[switchyard]=$SY_PID
IDLE_RSS=$(rss_kb "$(worker_pids "$SY_PID")")

# ---- request bodies -----------------------------------------------------------------------------

MSG='"messages":[{"role":"user","content":"Say hello in one short sentence."}]'
echo "{\"model\":\"gpt-4o-mini\",$MSG,\"max_tokens\":16}" >"$WORK/chat.json"
echo "{\"model\":\"gpt-4o-mini\",$MSG,\"max_tokens\":16,\"stream\":true,\"mock\":{\"chunks\":5,\"chunk_delay_ms\":0}}" >"$WORK/stream.json"
echo "{\"model\":\"gpt-4o-mini\",$MSG,\"stream\":true,\"mock\":{\"chunks\":3,\"chunk_delay_ms\":$STREAM_DELAY}}" >"$WORK/slow.json"

declare -A URL=(
    [direct]="http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
    [nginx]="http://127.0.0.1:$NGINX_PORT/v1/chat/completions"
    [switchyard]="http://127.0.0.1:$SY_PORT/v1/chat/completions"
)
TARGETS=()
for t in direct nginx switchyard; do
    ok=1
    for body in chat stream; do
        code=$(curl -s -o "$WORK/check-$t-$body.out" -w '%{http_code}' --max-time 10 \
            -H 'Content-Type: application/json' --data-binary "@$WORK/$body.json" "${URL[$t]}" || true)
        [[ $code == 200 ]] || { sy_warn "$t answers $body with HTTP $code: left out"; ok=0; }
    done
    ((ok)) && TARGETS+=("$t")
done
((${#TARGETS[@]})) || sy_die "no target answers; logs in $WORK (BENCH_KEEP=1 keeps them)"

# ---- throughput and latency ---------------------------------------------------------------------

# check_alive: stop the benchmark, with the reason, if a server died under load (numbers taken
# after that would be garbage).
check_alive() {
    local name pid rc
    for name in mock nginx switchyard gov ring; do
        pid=${SERVER_PID[$name]:-}
        [[ -n $pid ]] || continue
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" 2>/dev/null || rc=$?
            tail -n 20 "$WORK/$name.log" >&2
            sy_die "$name (pid $pid) exited with status $rc during the benchmark; logs in $WORK (BENCH_KEEP=1 keeps them)"
        fi
    done
}

wrk_once() { # TARGET SCENARIO CONNS SECONDS -> "requests duration p50 p99 errors"
    local out
    out=$(timeout $(($4 + 30)) taskset -c "$CLIENT_CPUS" wrk -t1 -c"$3" -d"$4s" --timeout 10s \
        --latency -s "$BENCH/post.lua" "${URL[$1]}" -- "$WORK/$2.json" 2>&1) || true
    echo "$out" >>"$WORK/wrk.log"
    check_alive
    awk '/^BENCH_RESULT/ {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        print v["requests"], v["duration_us"], v["p50_us"], v["p99_us"], v["errors"] }' <<<"$out"
}

sy_say "warming up"
for t in "${TARGETS[@]}"; do wrk_once "$t" chat 8 1 >/dev/null; done

total=$((MAIN_RUNS * 4 * ${#TARGETS[@]}))
sy_say "$total wrk runs of ${SECS}s (wrk on CPUs $CLIENT_CPUS), about $((total * (SECS + 1) / 60 + 1)) min"
: >"$WORK/results.tsv"
for run in $(seq "$MAIN_RUNS"); do
    for scenario in chat stream; do
        for conns in 1 64; do
            # interleaved: the three targets back to back, so noise hits them alike
            for t in "${TARGETS[@]}"; do
                r=$(wrk_once "$t" "$scenario" "$conns" "$SECS")
                if [[ -z $r ]]; then
                    sy_warn "wrk gave no result for $t $scenario c=$conns (see wrk.log)"
                    continue
                fi
                echo "$t $scenario $conns $run $r" >>"$WORK/results.tsv"
                printf '  run %d %-6s c=%-3d %-10s %s\n' "$run" "$scenario" "$conns" "$t" "$r"
            done
        done
    done
done

# ---- memory: 1,000 slow streams on a fresh Switchyard --------------------------------------------

if ((MAIN_RUNS)); then
    sy_say "memory: $STREAMS slow streams through a fresh Switchyard"
    unset 'SERVER_PID[switchyard]'
    kill -TERM -- "-$SY_PID" 2>/dev/null || true
    wait "$SY_PID" 2>/dev/null || true
    start_switchyard switchyard-mem
    WPIDS=$(worker_pids "$SY_PID")
    if timeout 120 taskset -c "$CLIENT_CPUS" /usr/bin/python3 "$BENCH/slow_streams.py" \
        --port "$SY_PORT" --pids "$WPIDS" --streams "$STREAMS" --body "$WORK/slow.json" \
        >"$WORK/streams.json" 2>"$WORK/streams.err"; then
        :
    else
        sy_warn "not every stream was established: $(cat "$WORK/streams.json" "$WORK/streams.err" 2>/dev/null | tail -n 3)"
    fi
    /usr/bin/python3 - "$WORK/streams.json" "$IDLE_RSS" >"$WORK/memory.json" <<'PY'
import json, sys
try:
    m = json.load(open(sys.argv[1]))
except ValueError:
    m = {}
m["idle_rss_kb"] = int(sys.argv[2])
print(json.dumps(m))
PY
fi

# ---- governance (issues 4 and 6) ----------------------------------------------------------------
#
# The same mock behind a Switchyard (--workers 1) whose table adds two models that fall back to
# gpt-4o-mini: fb-refused, whose only deployment is a closed port (every request is refused,
# then falls back: its circuit is set so that it never opens), and fb-circuit, whose deployment
# the mock fails with 500 (after the first failure its circuit stays open for the whole run, so
# every request goes straight to the fallback). Then a fresh Switchyard for the decision-log
# ring, kept drained by a consumer or left full; then the CPU microbenchmark.

write_gov_table() { # FILE MOCK_PORT CLOSED_PORT
    cat >"$1" <<JSON
{"version":1,
 "deployments":[
  {"name":"mock","provider":"mock","model":"gpt-4o-mini","format":"openai",
   "base_url":"http://127.0.0.1:$2/v1","auth":"bearer","api_key":"sk-bench",
   "timeouts":{"connect_ms":1000,"first_byte_ms":10000,"idle_ms":120000,"total_ms":300000}},
  {"name":"refused","provider":"mock","model":"fb-refused-up","format":"openai",
   "base_url":"http://127.0.0.1:$3/v1","auth":"bearer","api_key":"sk-bench",
   "timeouts":{"connect_ms":1000,"first_byte_ms":10000,"idle_ms":120000,"total_ms":300000}},
  {"name":"failing","provider":"mock","model":"fb-circuit-up","format":"openai",
   "base_url":"http://127.0.0.1:$2/v1","auth":"bearer","api_key":"sk-bench",
   "timeouts":{"connect_ms":1000,"first_byte_ms":10000,"idle_ms":120000,"total_ms":300000}}],
 "models":[
  {"name":"gpt-4o-mini","targets":[{"deployment":"mock","weight":1}]},
  {"name":"fb-refused","targets":[{"deployment":"refused","weight":1}],
   "fallbacks":["gpt-4o-mini"],
   "policy":{"retry":{"attempts":1},
             "circuit":{"consecutive":0,"window_ms":1000,"min_requests":1000000}}},
  {"name":"fb-circuit","targets":[{"deployment":"failing","weight":1}],
   "fallbacks":["gpt-4o-mini"],
   "policy":{"retry":{"attempts":1},
             "circuit":{"consecutive":1,"cooldown_ms":600000,"min_requests":1000}}}]}
JSON
}

ring_tool() { # MODE [SECONDS] on the ring Switchyard's segment -> "cells used dropped popped"
    timeout 660 taskset -c "$CLIENT_CPUS" "$BENCH_RING" "$RING_SHM" "$@" 2>>"$WORK/ring.err" |
        awk '/^BENCH_RING/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                             print v["cells"], v["used"], v["dropped"], v["popped"] }'
}

: >"$WORK/gov.tsv"
: >"$WORK/govern.txt"
: >"$WORK/ring.tsv"
if [[ $GOVERNANCE != 0 ]]; then
    sy_say "governance: fallback latency, circuit-open throughput, decision-log ring"
    unset 'SERVER_PID[switchyard]'
    kill -TERM -- "-$SY_PID" 2>/dev/null || true # the memory Switchyard
    wait "$SY_PID" 2>/dev/null || true
    CLOSED_PORT=$(free_port) # nothing listens there: connection refused
    write_gov_table "$WORK/gov-table.json" "$MOCK_PORT" "$CLOSED_PORT"
    curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$MOCK_PORT/mock/config" \
        -d '{"by_model":{"fb-circuit-up":{"status":500}}}' || sy_die "the mock refused its config"
    start_switchyard gov "$WORK/gov-table.json"
    SERVER_PID[gov]=$SY_PID
    GOV_PORT=$SY_PORT
    for m in gpt-4o-mini fb-refused fb-circuit; do
        echo "{\"model\":\"$m\",$MSG,\"max_tokens\":16}" >"$WORK/gov-$m.json"
    done
    URL[gov]="http://127.0.0.1:$GOV_PORT/v1/chat/completions"
    # Each model must answer 200, served by gpt-4o-mini; the first fb-circuit request opens
    # its circuit, the second shows the open circuit (no attempt on "failing").
    gov_ok=1
    for m in gpt-4o-mini fb-refused fb-circuit fb-circuit; do
        code=$(curl -s -D "$WORK/gov-check-$m.head" -o "$WORK/gov-check-$m.out" -w '%{http_code}' \
            --max-time 10 -H 'Content-Type: application/json' \
            --data-binary "@$WORK/gov-$m.json" "${URL[gov]}" || true)
        trace=$(tr -d '\r' <"$WORK/gov-check-$m.head" | awk -F': ' 'tolower($1) == "x-switchyard-trace" { print $2 }')
        echo "  check $m: HTTP $code, trace: ${trace:-none}"
        [[ $code == 200 ]] || { sy_warn "the governance Switchyard answers $m with HTTP $code"; gov_ok=0; }
    done
    ((gov_ok)) || sy_warn "governance figures below are suspect; logs in $WORK (BENCH_KEEP=1)"

    gov_once() { # LABEL URL BODY CONNS
        local r
        URL[gtmp]=$2
        r=$(wrk_once gtmp "$3" "$4" "$SECS")
        if [[ -z $r ]]; then
            sy_warn "wrk gave no result for governance $1 c=$4 (see wrk.log)"
            return
        fi
        echo "$1 $4 $run $r" >>"$WORK/gov.tsv"
        printf '  run %d gov    c=%-3d %-13s %s\n' "$run" "$4" "$1" "$r"
    }
    # warm-up: every path once under load (also opens fb-circuit's circuit for good)
    for m in gpt-4o-mini fb-refused fb-circuit; do
        URL[gtmp]=${URL[gov]}
        wrk_once gtmp "gov-$m" 8 1 >/dev/null
    done

    # the decision-log ring: a fresh Switchyard, with the main one-deployment table
    start_switchyard ring "$WORK/table.json"
    SERVER_PID[ring]=$SY_PID
    RING_PORT=$SY_PORT
    RING_SHM=/dev/shm/switchyard-$RING_PORT # the data plane's default segment
    [[ -e $RING_SHM ]] || sy_warn "no segment $RING_SHM: the ring measure will say nothing"
    RING_URL="http://127.0.0.1:$RING_PORT/v1/chat/completions"
    URL[gtmp]=$RING_URL
    wrk_once gtmp chat 8 1 >/dev/null

    total=$((RUNS * 7))
    sy_say "governance: $total wrk runs of ${SECS}s, about $((total * (SECS + 2) / 60 + 1)) min"
    for run in $(seq "$RUNS"); do
        # (a) 1 connection: the backup directly (mock), the backup model through Switchyard,
        #     the model whose primary refuses connections
        gov_once direct "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" chat 1
        gov_once healthy "${URL[gov]}" gov-gpt-4o-mini 1
        gov_once refused "${URL[gov]}" gov-fb-refused 1
        # (b) 64 connections: healthy model, model whose primary's circuit is open
        gov_once healthy "${URL[gov]}" gov-gpt-4o-mini 64
        gov_once circuit "${URL[gov]}" gov-fb-circuit 64
        # ring: kept empty by a consumer (as the control plane drains it), then left full
        before=$(ring_tool stat || true)
        timeout $((SECS + 20)) taskset -c "$CLIENT_CPUS" "$BENCH_RING" "$RING_SHM" drain $((SECS + 2)) \
            >"$WORK/drain.out" 2>>"$WORK/ring.err" &
        drain_pid=$!
        sleep 0.5
        gov_once ring_drained "$RING_URL" chat 64
        wait "$drain_pid" 2>/dev/null || true
        after=$(ring_tool stat || true)
        echo "ring_drained $run $before $after $(awk '/^BENCH_RING/ { sub(/.*popped=/, ""); print }' "$WORK/drain.out")" >>"$WORK/ring.tsv"
        ring_tool fill >/dev/null || true
        before=$(ring_tool stat || true)
        gov_once ring_full "$RING_URL" chat 64
        after=$(ring_tool stat || true)
        echo "ring_full $run $before $after 0" >>"$WORK/ring.tsv"
    done

    # (c) CPU of governance per request: nothing else runs now
    sy_say "governance: CPU microbenchmark ($GOV_ITERS iterations x 5 batches per measure)"
    timeout 900 taskset -c "$SERVER_CPUS" "$BENCH_GOVERN" "$GOV_ITERS" 5 | tee "$WORK/govern.txt" ||
        sy_warn "bench_govern failed"
fi

# ---- report -------------------------------------------------------------------------------------

{
    echo "Run $(date -u +%Y-%m-%d) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) CPUs, Linux $(uname -r);"
    echo "$(nginx -v 2>&1 | sed 's/.*: //'), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}'), Switchyard $(git -C "$SY_ROOT" describe --always --dirty 2>/dev/null || echo unknown);"
    echo "medians of $RUNS interleaved runs of ${SECS}s; servers on CPU $SERVER_CPUS, wrk (1 thread) on CPU $CLIENT_CPUS."
} >"$WORK/env.txt"
echo
/usr/bin/python3 "$BENCH/report.py" "$WORK/results.tsv" "$WORK/memory.json" "$WORK/env.txt" \
    "$WORK/gov.tsv" "$WORK/ring.tsv" "$WORK/govern.txt" | tee "$WORK/report.md"
