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
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
cd "$SY_ROOT"
BENCH=$SY_ROOT/tests/bench

RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_SECONDS:-5}
STREAMS=${BENCH_STREAMS:-1000}
STREAM_DELAY=${BENCH_STREAM_DELAY_MS:-30000}
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

start_switchyard() { # NAME -> SY_PID, SY_PORT
    rm -f "$WORK/$1.port"
    start "$1" "$SERVER_CPUS" "$DATAPLANE" --listen 127.0.0.1:0 --workers 1 \
        --table "$WORK/table.json" --port-file "$WORK/$1.port"
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
    for name in mock nginx switchyard; do
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

total=$((RUNS * 4 * ${#TARGETS[@]}))
sy_say "$total wrk runs of ${SECS}s (wrk on CPUs $CLIENT_CPUS), about $((total * (SECS + 1) / 60 + 1)) min"
: >"$WORK/results.tsv"
for run in $(seq "$RUNS"); do
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

# ---- report -------------------------------------------------------------------------------------

{
    echo "Run $(date -u +%Y-%m-%d) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) CPUs, Linux $(uname -r);"
    echo "$(nginx -v 2>&1 | sed 's/.*: //'), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}'), Switchyard $(git -C "$SY_ROOT" describe --always --dirty 2>/dev/null || echo unknown);"
    echo "medians of $RUNS interleaved runs of ${SECS}s; servers on CPU $SERVER_CPUS, wrk (1 thread) on CPU $CLIENT_CPUS."
} >"$WORK/env.txt"
echo
/usr/bin/python3 "$BENCH/report.py" "$WORK/results.tsv" "$WORK/memory.json" "$WORK/env.txt" | tee "$WORK/report.md"
