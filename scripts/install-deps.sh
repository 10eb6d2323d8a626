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
    libclang-rt-14-dev  # the sanitizer runtimes (only recommended by clang, not pulled in)
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
# tests/client runs the official openai and @anthropic-ai/sdk packages, pinned in the committed
# package-lock.json: install exactly it with `npm ci`, but only when node_modules does not
# already hold it (a stamp records the hashes of package.json and package-lock.json and the
# node version that npm ci last installed them for).
if [[ -f $ROOT/package-lock.json ]]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        # A machine without Node.js gets Debian's (18.x on Debian 12, enough for the SDKs).
        echo "install-deps: apt-get install nodejs npm"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
    fi
    stamp=$ROOT/node_modules/.switchyard-npm-ci
    want="$(cd "$ROOT" && cat package.json package-lock.json | sha256sum | cut -d' ' -f1) node $(node --version)"
    if [[ ! -f $stamp || $(<"$stamp") != "$want" ]]; then
        echo "install-deps: npm ci"
        (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$want" >"$stamp"
    fi
fi
