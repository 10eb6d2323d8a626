# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# A private PostgreSQL cluster for running Switchyard locally (sourced, not run).
#
#   sy_pg_start DIR   initdb DIR/data once, start it listening on a Unix socket in DIR/run only
#                     (no TCP), create the database "switchyard"; sets SY_PG_DIR, SY_PG_URL.
#   sy_pg_stop        stop it (fast shutdown); safe to call twice or when it never started.
#
# PostgreSQL refuses to run as root, so as root everything runs as the "postgres" user and DIR
# is owned by it; as any other user the cluster belongs to that user. Authentication is "trust"
# on the socket only, and the socket directory is 0700: only its owner and root can connect.

SY_PG_DIR=""
SY_PG_URL=""
SY_PG_USER="" # the role/OS user that owns the cluster (exported for callers)

# The newest installed server's bin directory (Debian keeps it off PATH).
sy_pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $d && -x $d/initdb ]] || { echo "PostgreSQL server not installed (apt-get install postgresql)" >&2; return 1; }
    echo "$d"
}

# Run a command as the cluster's owner.
sy_pg_as() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

sy_pg_start() {
    local dir=$1 bin
    bin=$(sy_pg_bindir) || return 1
    mkdir -p "$dir" || return 1
    dir=$(cd "$dir" && pwd)
    if ((EUID == 0)); then
        SY_PG_USER=postgres
        chown postgres: "$dir"
        chmod 0700 "$dir"
        # Every directory above must be traversable by postgres (not so under a 0700 /root).
        if ! runuser -u postgres -- test -x "$dir"; then
            echo "the postgres user cannot reach $dir; move the checkout or set SWITCHYARD_DATABASE_URL" >&2
            return 1
        fi
    else
        SY_PG_USER=$(id -un)
    fi
    SY_PG_DIR=$dir
    local data=$dir/data sock=$dir/run
    sy_pg_as mkdir -p "$sock" && sy_pg_as chmod 0700 "$sock" || return 1

    if [[ ! -f $data/PG_VERSION ]]; then
        echo "==> initdb $data"
        sy_pg_as "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    fi
    # A crash of a previous run can leave a stale pid file; pg_ctl start handles that itself.
    if ! sy_pg_as "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        # setsid: a Ctrl-C in the terminal must not reach the postmaster; the trap stops it in
        # order, after what uses it.
        sy_pg_as setsid "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 30 \
            -o "-c listen_addresses='' -c unix_socket_directories='$sock'" \
            start >/dev/null || { tail -n 20 "$dir/postgres.log" >&2; return 1; }
    fi
    if [[ $(sy_pg_as "$bin/psql" -h "$sock" -U postgres -d postgres -XAtqc \
            "select 1 from pg_database where datname = 'switchyard'") != 1 ]]; then
        sy_pg_as "$bin/createdb" -h "$sock" -U postgres switchyard || return 1
    fi
    SY_PG_URL="postgresql:///switchyard?host=$sock&user=postgres"
    echo "==> PostgreSQL: $SY_PG_URL"
}

sy_pg_stop() {
    [[ -n $SY_PG_DIR ]] || return 0
    local bin
    bin=$(sy_pg_bindir) || return 0
    if sy_pg_as "$bin/pg_ctl" -D "$SY_PG_DIR/data" status >/dev/null 2>&1; then
        echo "==> stopping PostgreSQL"
        sy_pg_as "$bin/pg_ctl" -D "$SY_PG_DIR/data" -m fast -w -t 30 stop >/dev/null || true
    fi
    SY_PG_DIR=""
}
