#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install what Switchyard needs to build, test and benchmark, from Debian 12's apt.
# Fast when everything is there already: dpkg-query decides, and apt-get runs (update included)
# only when a package is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# One list, grouped by what needs it.
PACKAGES=(
    # toolchain and build
    gcc libc6-dev clang meson ninja-build pkg-config
    # libraries the C code links
    libuv1-dev libssl-dev libmsgpack-dev libpq-dev libjansson-dev libvectorscan-dev
    node-llhttp    # llhttp's generated C sources, compiled by meson.build
    libcmocka-dev  # unit tests
    # integration tests: a real PostgreSQL, certificates, HTTP from the shell
    postgresql openssl curl python3 python3-pytest
    # benchmarks and operations
    nginx-light wrk prometheus
    # taskset, runuser
    util-linux
)

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    SUDO=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { echo "install-deps: need root or sudo" >&2; exit 1; }
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged PostgreSQL and nginx on install; Switchyard runs its own
    # private instances, so the system services are not needed (harmless if left running).
fi

# ---- JavaScript dependencies (client SDK tests) ------------------------------------------
# The SDK client tests arrive later: once a package-lock.json is committed, install exactly it.
if [[ -f $ROOT/package-lock.json ]]; then
    command -v npm >/dev/null || { echo "install-deps: package-lock.json needs npm (apt-get install npm)" >&2; exit 1; }
    if [[ ! -d $ROOT/node_modules || $ROOT/package-lock.json -nt $ROOT/node_modules ]]; then
        (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
