#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install, build and run every test suite; print a table of stages and, as the last line,
# "N passed, N failed[, N skipped]". Exit status 0 only when every stage ran and nothing failed.
#
# Each stage is one line in STAGES below: a name and a command. A command reports its counts by
# setting PASSED/FAILED/SKIPPED (the run_* helpers parse the tools' reports); if it returns
# non-zero without counting a failure, the stage counts as 1 failed (a build that broke, a
# runner that crashed, a suite that collected nothing).
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$SY_ROOT" || exit 1

BUILD=build
ASAN=build-asan
FUZZ=build-fuzz
FUZZ_SECONDS=${SWITCHYARD_FUZZ_SECONDS:-20} # seconds each libFuzzer target runs (tests/fuzz/run.sh)
LOGS=$SY_ROOT/build-test-logs # one place for junit files and stage logs
PYTEST_TIMEOUT=${SWITCHYARD_PYTEST_TIMEOUT:-420} # seconds for one pytest run; then it is stopped

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# name | command
STAGES=(
    "unit|build_tree $BUILD -Dbuildtype=debugoptimized -Dwerror=true && run_meson_suite $BUILD unit"
    "integration|need_build $BUILD && run_pytest $BUILD tests/integration"
    "unit-asan|CC=clang build_tree $ASAN -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true && run_meson_suite $ASAN unit"
    "integration-asan|need_build $ASAN && run_pytest $ASAN tests/integration"
    "fuzz|CC=clang build_tree $FUZZ -Dfuzz=true -Dtests=false -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debugoptimized -Dwerror=true && run_fuzz $FUZZ"
)

# ---- helpers a stage uses -----------------------------------------------------------------------

declare -A BUILT=() # build dir -> 1 once it built in this run

# build_tree DIR [-Dopt ...]: configure and build; a failure is the stage's failure.
build_tree() {
    local dir=$1
    shift
    if sy_build "$dir" "$@"; then
        BUILT[$dir]=1
    else
        NOTE="build of $dir failed"
        return 1
    fi
}

# need_build DIR: a stage that runs what an earlier stage built fails if that build failed.
need_build() {
    [[ -n ${BUILT[$1]:-} ]] && return 0
    NOTE="not run: $1 did not build"
    return 1
}

# run_meson_suite DIR SUITE: counts from meson's summary (Ok/Expected Fail pass; Fail,
# Unexpected Pass and Timeout fail; Skipped skip). A suite without tests fails the stage.
run_meson_suite() {
    local dir=$1 suite=$2 out
    out=$LOGS/$STAGE.meson.txt
    meson test -C "$dir" --suite "$suite" --print-errorlogs --num-processes "$(nproc)" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    count() { awk -v k="$1" -F: '$1 == k { gsub(/ /, "", $2); n = $2 } END { print n + 0 }' "$out"; }
    PASSED=$(($(count Ok) + $(count "Expected Fail")))
    FAILED=$(($(count Fail) + $(count "Unexpected Pass") + $(count Timeout)))
    SKIPPED=$(count Skipped)
    if ((PASSED + FAILED + SKIPPED == 0)); then
        NOTE="no tests in suite $suite"
        return 1
    fi
    return "$rc"
}

# run_pytest DIR PATH [pytest args]: counts from pytest's junit xml; exit 5 (nothing
# collected) and every other non-zero exit fail the stage.
run_pytest() {
    local dir=$1 path=$2 xml
    shift 2
    xml=$LOGS/$STAGE.junit.xml
    rm -f "$xml"
    # --foreground keeps Ctrl-C working; pytest turns timeout's SIGTERM into a clean teardown.
    SWITCHYARD_BUILD_DIR=$SY_ROOT/$dir timeout --foreground -k 30 "$PYTEST_TIMEOUT" \
        /usr/bin/pytest -q -p no:cacheprovider --junitxml="$xml" "$path" "$@"
    local rc=$?
    read_junit "$xml"
    case $rc in
    0) ;;
    5) NOTE="pytest collected no tests" ;;
    124 | 137) NOTE="pytest timed out after ${PYTEST_TIMEOUT}s" ;;
    1) ;;
    *) NOTE="pytest exited $rc" ;;
    esac
    return "$rc"
}

# run_fuzz DIR: each libFuzzer target for FUZZ_SECONDS on a scratch copy of its seed corpus;
# one test per target, passed when it ends without a crash, leak, timeout or failed check.
run_fuzz() {
    local dir=$1 out
    out=$LOGS/$STAGE.txt
    bash tests/fuzz/run.sh "$dir" "$FUZZ_SECONDS" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    read -r PASSED FAILED < <(awk '/^fuzz: [0-9]+ passed, [0-9]+ failed$/ { print $2, $4 }' "$out")
    PASSED=${PASSED:-0} FAILED=${FAILED:-0}
    if ((PASSED + FAILED == 0)); then
        NOTE="no fuzz targets ran"
        return 1
    fi
    return "$rc"
}

# read_junit FILE: PASSED/FAILED/SKIPPED from a junit xml file (pytest, meson, node runners).
read_junit() {
    [[ -f $1 ]] || return 0
    read -r PASSED FAILED SKIPPED < <(/usr/bin/python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
t = f = s = 0
for su in suites:
    t += int(su.get("tests", 0))
    f += int(su.get("failures", 0)) + int(su.get("errors", 0))
    s += int(su.get("skipped", 0))
print(t - f - s, f, s)
PY
    ) || true
}

# ---- driver ---------------------------------------------------------------------------------------

rm -rf "$LOGS"
mkdir -p "$LOGS"
RESULTS=()
T_PASSED=0 T_FAILED=0 T_SKIPPED=0
start_all=$SECONDS

sy_say "installing dependencies"
if ! bash scripts/install-deps.sh; then
    RESULTS+=("deps|0|1|0|0|install-deps.sh failed")
    T_FAILED=$((T_FAILED + 1))
fi

for entry in "${STAGES[@]}"; do
    STAGE=${entry%%|*}
    cmd=${entry#*|}
    PASSED=0 FAILED=0 SKIPPED=0 NOTE=""
    printf '\n==> stage %s: %s\n' "$STAGE" "$cmd"
    t0=$SECONDS
    eval "$cmd"
    rc=$?
    if ((rc != 0 && FAILED == 0)); then
        FAILED=1
        [[ -n $NOTE ]] || NOTE="exit status $rc"
    fi
    RESULTS+=("$STAGE|$PASSED|$FAILED|$SKIPPED|$((SECONDS - t0))|$NOTE")
    T_PASSED=$((T_PASSED + PASSED))
    T_FAILED=$((T_FAILED + FAILED))
    T_SKIPPED=$((T_SKIPPED + SKIPPED))
done

printf '\n%-20s %7s %7s %7s %6s  %s\n' stage passed failed skipped secs note
for r in "${RESULTS[@]}"; do
    IFS='|' read -r name p f s secs note <<<"$r"
    printf '%-20s %7d %7d %7d %6d  %s\n' "$name" "$p" "$f" "$s" "$secs" "$note"
done
printf 'total time %ds; logs in %s\n\n' "$((SECONDS - start_all))" "${LOGS#"$SY_ROOT"/}"

line="$T_PASSED passed, $T_FAILED failed"
((T_SKIPPED)) && line+=", $T_SKIPPED skipped"
echo "$line"
((T_FAILED == 0))
