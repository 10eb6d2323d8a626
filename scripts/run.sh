#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install, build and start Switchyard in the foreground: a private PostgreSQL (unless
# SWITCHYARD_DATABASE_URL is set), the control plane with its admin API, and the data plane
# following it. Ctrl-C stops everything.
#
#   SWITCHYARD_LISTEN        data-plane address (default 0.0.0.0:8080)
#   SWITCHYARD_ADMIN_LISTEN  admin API address (default 127.0.0.1:9090)
#   SWITCHYARD_DATABASE_URL  use this PostgreSQL instead of a private cluster under ./.pgdata
#   SWITCHYARD_ADMIN_TOKEN   admin token (default: generated once into .run/admin-token)
#   SWITCHYARD_MASTER_KEY    master key for credentials (default: generated into .run/master-key)
#   SWITCHYARD_TABLE         also serve this routing-table file until the control plane publishes
#   SWITCHYARD_BUILD_DIR     build directory (default build; set up as a release build if new)
# Every other SWITCHYARD_* variable of either plane (README.md, Configuration) passes through.
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

LISTEN=${SWITCHYARD_LISTEN:-0.0.0.0:8080}
ADMIN_LISTEN=${SWITCHYARD_ADMIN_LISTEN:-127.0.0.1:9090}
TABLE=${SWITCHYARD_TABLE:-}
if [[ -n $TABLE ]]; then
    [[ -r $TABLE ]] || sy_die "no routing table at $TABLE"
fi

RUN=$SY_ROOT/.run
mkdir -p "$RUN"
chmod 0700 "$RUN"
DP_PID=""
CP_PID=""

# Secrets kept across restarts, readable by root only: the admin token and the master key that
# seals provider credentials in the database. The environment wins when it sets them.
secret() { # file bytes
    [[ -s $1 ]] || (umask 077 && openssl rand -hex "$2" >"$1")
    cat "$1"
}
export SWITCHYARD_ADMIN_TOKEN=${SWITCHYARD_ADMIN_TOKEN:-$(secret "$RUN/admin-token" 24)}
if [[ -z ${SWITCHYARD_MASTER_KEY:-} && -z ${SWITCHYARD_MASTER_KEY_FILE:-} ]]; then
    export SWITCHYARD_MASTER_KEY=$(secret "$RUN/master-key" 32)
fi

stop_pid() { # pid name
    if [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; then
        sy_say "stopping the $2"
        kill -TERM "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
stop_all() {
    trap - INT TERM EXIT
    # A second Ctrl-C while draining kills what is left.
    trap 'kill -KILL $DP_PID $CP_PID 2>/dev/null || true' INT
    stop_pid "$DP_PID" "data plane (draining)"
    stop_pid "$CP_PID" "control plane"
    sy_pg_stop
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

wait_port() { # file pid what
    for _ in $(seq 300); do
        [[ -s $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    local rc=0
    kill -0 "$2" 2>/dev/null || { wait "$2" || rc=$?; }
    sy_die "the $3 did not start (exit status $rc); see its messages above"
}

# ---- PostgreSQL -------------------------------------------------------------------------------
if [[ -z ${SWITCHYARD_DATABASE_URL:-} ]]; then
    sy_pg_start "$SY_ROOT/.pgdata"
    export SWITCHYARD_DATABASE_URL=$SY_PG_URL
else
    sy_say "PostgreSQL: using SWITCHYARD_DATABASE_URL"
fi

# ---- control plane ----------------------------------------------------------------------------
rm -f "$RUN/controlplane.port"
# The node's shared memory: the data plane's counters, circuits and decision log, which the
# control plane reads for /metrics, usage and events.
SHM=${SWITCHYARD_SHM:-/dev/shm/switchyard-$(id -u)-$(echo "$SY_ROOT" | cksum | cut -d' ' -f1)}
"$BUILD/controlplane/switchyard-controlplane" --admin-listen "$ADMIN_LISTEN" \
    --socket "$RUN/control.sock" --port-file "$RUN/controlplane.port" --shm "$SHM" &
CP_PID=$!
wait_port "$RUN/controlplane.port" "$CP_PID" "control plane"

# ---- data plane -------------------------------------------------------------------------------
rm -f "$RUN/dataplane.port"
"$BUILD/dataplane/switchyard-dataplane" --listen "$LISTEN" --control-socket "$RUN/control.sock" \
    --snapshot "$RUN/snapshot.msgpack" --port-file "$RUN/dataplane.port" --shm "$SHM" \
    ${TABLE:+--table "$TABLE"} &
DP_PID=$!
wait_port "$RUN/dataplane.port" "$DP_PID" "data plane"

host=${LISTEN%:*}
case $host in 0.0.0.0 | "" | "[::]" | "::") host=127.0.0.1 ;; esac
port=$(<"$RUN/dataplane.port")
admin_port=$(<"$RUN/controlplane.port")
admin_host=${ADMIN_LISTEN%:*}
case $admin_host in 0.0.0.0 | "" | "[::]" | "::") admin_host=127.0.0.1 ;; esac
cat <<MSG

  Switchyard is up.
    model endpoint (OpenAI-compatible)  http://$host:$port/v1
    admin API                           http://$admin_host:$admin_port/admin/v1
    Prometheus metrics                  http://$admin_host:$admin_port/metrics
    admin token                         $SWITCHYARD_ADMIN_TOKEN   (kept in .run/admin-token)

  Next: add a provider, a deployment, a model and a key (README.md, "Quick start"):
    export SY_ADMIN=http://$admin_host:$admin_port/admin/v1 SY_TOKEN=$SWITCHYARD_ADMIN_TOKEN
    curl -s \$SY_ADMIN/catalog -H "Authorization: Bearer \$SY_TOKEN"

  Ctrl-C stops it.

MSG

rc=0
wait "$DP_PID" || rc=$?
DP_PID=""
stop_all
exit "$rc"
