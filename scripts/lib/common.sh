# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Helpers shared by the scripts (sourced, not run). Sets SY_ROOT to the checkout.

SY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

sy_say() { printf '==> %s\n' "$*"; }
sy_warn() { printf 'warning: %s\n' "$*" >&2; }
sy_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The C compiler id ("gcc", "clang") a configured meson build dir uses, "" if none.
sy_build_compiler() {
    local info=$1/meson-info/intro-compilers.json
    [[ -f $info ]] || return 0
    /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["host"]["c"]["id"])' \
        "$info" 2>/dev/null || true
}

# sy_build DIR [-Dopt=value ...]: configure DIR with these options (setting it up if it does not
# exist, reconfiguring it if it does, wiping it if it was made with another compiler than $CC)
# and build it with ninja. The compiler comes from $CC as meson reads it (default cc).
sy_build() {
    local dir=$1
    shift
    local want=${CC:-}
    want=${want##*/}
    if [[ -f $dir/build.ninja ]]; then
        local have
        have=$(sy_build_compiler "$dir")
        if [[ -n $have && (($want == *clang* && $have != clang) || ($want == *gcc* && $have != gcc)) ]]; then
            sy_say "meson setup --wipe $dir (was built with $have, now $want)"
            meson setup --wipe "$dir" "$@" || return
        elif [[ $# -gt 0 ]]; then
            meson configure "$dir" "$@" >/dev/null || meson setup --wipe "$dir" "$@" || return
        fi
    else
        sy_say "meson setup $dir $*"
        meson setup "$dir" "$@" || return
    fi
    sy_say "ninja -C $dir"
    ninja -C "$dir"
}
