#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install, build and start Switchyard in the foreground. Ctrl-C stops everything.
#
#   SWITCHYARD_TABLE         routing table file (default deploy/example-table.json, which reads
#                            the OpenAI key from OPENAI_API_KEY)
#   SWITCHYARD_LISTEN        data-plane address (default 0.0.0.0:8080)
#   SWITCHYARD_DATABASE_URL  use this PostgreSQL instead of a private cluster under ./.pgdata
#   SWITCHYARD_BUILD_DIR     build directory (default build; set up as a release build if new)
# Every other SWITCHYARD_* variable of the data plane (README.md, Configuration) passes through.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$SY_ROOT/scripts/lib/postgres.sh"
cd "$SY_ROOT"

bash scripts/install-deps.sh

BUILD=${SWITCHYARD_BUILD_DIR:-build}
if [[ ! -f $BUILD/build.ninja ]]; then
    sy_say "meson setup $BUILD --buildtype=release"
    meson setup "$BUILD" --buildtype=release
fi
sy_say "ninja -C $BUILD"
ninja -C "$BUILD"

TABLE=${SWITCHYARD_TABLE:-deploy/example-table.json}
LISTEN=${SWITCHYARD_LISTEN:-0.0.0.0:8080}
[[ -r $TABLE ]] || sy_die "no routing table at $TABLE (set SWITCHYARD_TABLE)"
# Say early which credentials the table expects but the environment lacks.
for var in $(/usr/bin/python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))
print(" ".join(sorted({d["api_key_env"] for d in t.get("deployments", []) if d.get("api_key_env")})))
' "$TABLE"); do
    [[ -n ${!var:-} ]] || sy_warn "$var is not set: requests to deployments that read it will fail (export $var=...)"
done

RUN=$SY_ROOT/.run
mkdir -p "$RUN"
DP_PID=""

stop_all() {
    trap - INT TERM EXIT
    if [[ -n $DP_PID ]] && kill -0 "$DP_PID" 2>/dev/null; then
        sy_say "stopping the data plane (draining)"
        kill -TERM "$DP_PID" 2>/dev/null || true
        # A second Ctrl-C while draining kills it.
        trap 'kill -KILL "$DP_PID" 2>/dev/null || true' INT
        wait "$DP_PID" 2>/dev/null || true
    fi
    # (the control plane stops here, before its database)
    sy_pg_stop
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# ---- PostgreSQL -------------------------------------------------------------------------------
if [[ -z ${SWITCHYARD_DATABASE_URL:-} ]]; then
    sy_pg_start "$SY_ROOT/.pgdata"
    export SWITCHYARD_DATABASE_URL=$SY_PG_URL
else
    sy_say "PostgreSQL: using SWITCHYARD_DATABASE_URL"
fi

# ---- control plane ----------------------------------------------------------------------------
# (arrives with the control-plane issue: start it here against $SWITCHYARD_DATABASE_URL)

# ---- data plane -------------------------------------------------------------------------------
rm -f "$RUN/dataplane.port"
"$BUILD/dataplane/switchyard-dataplane" --listen "$LISTEN" --table "$TABLE" \
    --port-file "$RUN/dataplane.port" &
DP_PID=$!

for _ in $(seq 150); do
    [[ -s $RUN/dataplane.port ]] && break
    kill -0 "$DP_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -s $RUN/dataplane.port ]]; then
    rc=0
    kill -0 "$DP_PID" 2>/dev/null || { wait "$DP_PID" || rc=$?; }
    sy_die "the data plane did not start (exit status $rc); see its messages above"
fi

host=${LISTEN%:*}
case $host in 0.0.0.0 | "" | "[::]" | "::") host=127.0.0.1 ;; esac
port=$(<"$RUN/dataplane.port")
cat <<MSG

  Switchyard is up: OpenAI-compatible endpoint http://$host:$port/v1  (routing table: $TABLE)

  curl http://$host:$port/v1/chat/completions \\
    -H 'Content-Type: application/json' \\
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'

  Ctrl-C stops it.

MSG

rc=0
wait "$DP_PID" || rc=$?
DP_PID=""
stop_all
exit "$rc"
