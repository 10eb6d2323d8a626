#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Run each built libFuzzer target for a bounded time on a scratch copy of its seed corpus.
#
#   tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...]
#
# A target passes when libFuzzer ends its time without a crash, leak, timeout or failed check.
# Prints one line per target ("fuzz <name>: ok, N runs" or "... FAILED") and, last,
# "fuzz: P passed, F failed". Crash inputs and logs are kept in BUILD_DIR/fuzz-out/<target>/
# (or $SWITCHYARD_FUZZ_OUT/<target>/);
# new inputs found are not written back to the committed corpus (copy them by hand:
# docs/fuzzing.md). Exit status 0 only when every target passed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=$1
secs=$2
shift 2
bin=$build/tests/fuzz
if (($# == 0)); then
    mapfile -t targets < <(find "$bin" -maxdepth 1 -type f -executable -name "fuzz_*" \
        -printf "%f\n" | sed "s/^fuzz_//" | sort)
    set -- "${targets[@]}"
fi
if (($# == 0)); then
    echo "fuzz: no targets in $bin" >&2
    exit 1
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
passed=0 failed=0
for t in "$@"; do
    out=${SWITCHYARD_FUZZ_OUT:-$build/fuzz-out}/$t
    rm -rf "$out"
    mkdir -p "$out/corpus"
    [[ -d $here/corpus/$t ]] && cp "$here"/corpus/"$t"/* "$out/corpus/" 2>/dev/null
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048
          -print_final_stats=1 -artifact_prefix="$out/")
    # A dictionary: the target's own, else its family's (translate_stream_a2o -> translate).
    for d in "$t" "${t%_*}" "${t%%_*}"; do
        if [[ -f $here/$d.dict ]]; then
            args+=(-dict="$here/$d.dict")
            break
        fi
    done
    "$bin/fuzz_$t" "${args[@]}" "$out/corpus" >"$out/log" 2>&1
    rc=$?
    runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$out/log")
    if ((rc == 0)); then
        passed=$((passed + 1))
        echo "fuzz $t: ok, ${runs:-0} runs in ${secs}s"
    else
        failed=$((failed + 1))
        echo "fuzz $t: FAILED (exit $rc), see $out/log:"
        grep -E 'ERROR|SUMMARY|check failed|Test unit written' "$out/log" | head -5 | sed 's/^/    /'
    fi
done
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
