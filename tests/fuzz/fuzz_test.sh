#!/usr/bin/env bash
# fuzz_test.sh FUZZER CORPUS SECONDS: a bounded libFuzzer run of FUZZER over a
# copy of the seed corpus CORPUS (new inputs stay in a temporary directory,
# not in the repository). The seed is printed (ENT_FUZZ_SEED=... repeats a
# run). Exit 0 when the run ends without a finding; 77 (skipped) when this
# build has no fuzzer (clang with libFuzzer was not found).
FUZZER=$1 CORPUS=$2 SECONDS_MAX=$3
if [ -z "$FUZZER" ] || [ ! -x "$FUZZER" ]; then
    echo "SKIP: no libFuzzer build of this target: clang with -fsanitize=fuzzer was not found" \
         "when CMake ran (Debian package clang; launch/setup.sh installs it)"
    exit 77
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/entente-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$W"' EXIT
cp "$CORPUS"/* "$W/" || exit 1
seed=${ENT_FUZZ_SEED:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
echo "fuzz: $(basename "$FUZZER") for ${SECONDS_MAX} s over $(ls "$CORPUS" | wc -l) seed inputs, -seed=$seed"
"$FUZZER" -max_total_time="$SECONDS_MAX" -seed="$seed" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$W/" "$W" >"$W/log" 2>&1
rc=$?
grep -E "^#[0-9]+ *DONE|^Done [0-9]+ runs" "$W/log" | tail -2
if [ $rc != 0 ]; then
    echo "FAIL: the fuzzer found an input that breaks a property (exit $rc); the end of its log:"
    tail -40 "$W/log"
    for a in "$W"/crash-* "$W"/leak-* "$W"/timeout-* "$W"/oom-*; do
        [ -f "$a" ] || continue
        echo "input: $(basename "$a") ($(wc -c <"$a") bytes):"
        od -A d -t x1 "$a" | head -20
    done
    exit 1
fi
exit 0
