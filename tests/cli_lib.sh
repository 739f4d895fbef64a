# cli_lib.sh: what the command-line test scripts share (sourced, not run).
#
#   SCRIPT ENTENTE_BINARY SOURCE_DIR CASE
#
# Sets E (the binary), SRC (the source tree), CASE and W (a temporary
# directory, the current directory, removed on exit); provides the helpers
# below; run_case runs the function case_$CASE and exits 0 (pass), 1 (fail) or
# 77 (skipped, the case said why). Only bash, grep, awk and sed.
set -u
export LC_ALL=C

if [ $# -ne 3 ]; then
    echo "usage: $0 ENTENTE_BINARY SOURCE_DIR CASE" >&2
    exit 2
fi
case "$1" in /*) E=$1 ;; *) E=$PWD/$1 ;; esac
case "$2" in /*) SRC=$2 ;; *) SRC=$PWD/$2 ;; esac
CASE=$3

if [ ! -x "$E" ]; then
    echo "FAIL: entente binary $E does not exist or is not executable"
    exit 1
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/entente-cli-$CASE.XXXXXX") || exit 1
trap 'rm -rf "$W"' EXIT
cd "$W" || exit 1
ulimit -c 0 2>/dev/null || true # a crash must show as an exit code, not leave a core

FAILED=0
RC=0
LAST_CMD=""
# Corpus and shards in $W/data (made once per case, by make_data).
DATA=$W/data

# ---------------------------------------------------------------------------
# helpers

show_last() {
    echo "    command:   $LAST_CMD"
    echo "    exit code: $RC"
    echo "    stderr (first 15 lines):"
    sed -n '1,15s/^/      | /p' "$W/err"
}

fail() {
    echo "FAIL: $*"
    FAILED=1
}

# expect DESC WANT [PATTERN ...] -- CMD [ARG ...]
# Runs CMD (stdout to $W/out, stderr to $W/err) and checks its exit code:
# WANT is a number or 'nonzero' (any failure that is not a crash). Each
# PATTERN is a fixed string that must appear on an "entente: error:" line of
# stderr, or in stdout when written as out:TEXT, or anywhere in stderr when
# written as err:TEXT. A failure must print an "entente: error:" line unless
# --no-error-line is given. An exit code of 124 or more (timeout, signal) fails.
expect() {
    local desc=$1 want=$2
    shift 2
    local pats=() errline=1
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        if [ "$1" = --no-error-line ]; then errline=0; else pats+=("$1"); fi
        shift
    done
    shift
    LAST_CMD="$*"
    "$@" >"$W/out" 2>"$W/err" </dev/null
    RC=$?
    local ok=1
    if [ "$RC" -ge 124 ]; then
        fail "$desc: expected exit code $want, got $RC (a crash, a signal or a timeout)"
        ok=0
    elif [ "$want" = nonzero ]; then
        if [ "$RC" -eq 0 ]; then
            fail "$desc: expected a non-zero exit code, got 0"
            ok=0
        fi
    elif [ "$RC" != "$want" ]; then
        fail "$desc: expected exit code $want, got $RC"
        ok=0
    fi
    if [ "$want" != 0 ] && [ $errline = 1 ] && ! grep -qE '^entente(\[[0-9]+\])?: error: ' "$W/err"; then
        fail "$desc: expected a line 'entente: error: ...' on stderr"
        ok=0
    fi
    local p
    for p in "${pats[@]+"${pats[@]}"}"; do
        case "$p" in
        out:*)
            if ! grep -qF -- "${p#out:}" "$W/out"; then
                fail "$desc: expected stdout to contain '${p#out:}'"
                echo "    stdout (first 15 lines):"
                sed -n '1,15s/^/      | /p' "$W/out"
                ok=0
            fi
            ;;
        err:*)
            if ! grep -qF -- "${p#err:}" "$W/err"; then
                fail "$desc: expected stderr to contain '${p#err:}'"
                ok=0
            fi
            ;;
        *)
            if ! grep -E '^entente(\[[0-9]+\])?: error: ' "$W/err" | grep -qF -- "$p"; then
                fail "$desc: expected the error message to contain '$p'"
                ok=0
            fi
            ;;
        esac
    done
    [ $ok = 1 ] || show_last
    return $((1 - ok))
}

# no_shards DESC DIR: no .bin (or leftover .bin.tmp) file in DIR
no_shards() {
    local found
    found=$(find "$2" -name '*.bin*' 2>/dev/null | head -3)
    [ -z "$found" ] || fail "$1: expected no shard in $2, found: $found"
}

# A few hundred KB of varied text: numbered lines of words drawn by a seeded
# awk, then seq output.
make_corpus() {
    awk 'BEGIN {
        srand(7)
        n = split("the quick brown fox jumps over a lazy dog while entente trains one " \
                  "small model on pooled compute across several sites and every rank " \
                  "reads token shards of bytes from disk Then It Stops", w, " ")
        for (i = 1; i <= 6000; i++) {
            line = i ":"
            k = 3 + int(rand() * 9)
            for (j = 0; j < k; j++) line = line " " w[1 + int(rand() * n)]
            print line
        }
    }' >"$1"
    seq 1 20000 >>"$1"
}

# python_with WHAT MODULE...: prints the first of $ENT_PYTHON, python3 and
# /usr/bin/python3 that imports every MODULE; else says the case is skipped
# and why (WHAT: how to get them) and exits 77
python_with() {
    local what=$1 cand
    shift
    for cand in "${ENT_PYTHON:-}" python3 /usr/bin/python3; do
        [ -n "$cand" ] && "$cand" -c "import $(IFS=,; echo "$*")" 2>/dev/null && { echo "$cand"; return 0; }
    done
    echo "SKIP: no Python that imports $* ($what, or set ENT_PYTHON)" >&2
    exit 77
}

make_data() {
    [ -f "$DATA/train_000000.bin" ] && return 0
    make_corpus "$W/corpus.txt"
    if ! expect "prepare the test corpus" 0 -- "$E" data prepare --input "$W/corpus.txt" --output "$DATA"; then
        echo "FAIL: cannot prepare test data; stopping"
        exit 1
    fi
}

# write_config FILE [DATA_DIR]: the tiny configuration
write_config() {
    cat >"$1" <<EOF
; tiny model for the CLI tests
[model]
layers = 2
heads = 2
width = 32
context = 32

[train]
steps = 30
batch_size = 8
lr = 3e-3
warmup_steps = 5

[eval]
every = 10
batches = 2

[sample]
tokens = 32

[data]
dir = ${2:-$DATA}
EOF
}

# losses FILE: the training losses of a metrics.jsonl, one per line, as printed
losses() {
    sed -n 's/.*"loss":\([^,}]*\).*/\1/p' "$1"
}

# step_losses METRICS FROM TO: "step loss" of each step record in FROM..TO
step_losses() {
    sed -n 's/^{"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$1" |
        awk -v a="$2" -v b="$3" '$1 >= a && $1 <= b'
}

# step_field METRICS STEP FIELD: the value of FIELD in the record of STEP
step_field() {
    grep "^{\"step\":$2,\"loss\"" "$1" | tail -1 | sed -n "s/.*\"$3\":\\([^,}]*\\).*/\\1/p"
}

# same_curve DESC REF RUN FROM TO TOLERANCE: the losses of steps FROM..TO of
# RUN's metrics match REF's within TOLERANCE relative (0: bit for bit, as printed)
same_curve() {
    local desc=$1 ref=$2 run=$3 from=$4 to=$5 tol=$6
    step_losses "$ref" "$from" "$to" >"$W/a.curve"
    step_losses "$run" "$from" "$to" >"$W/b.curve"
    if [ "$(wc -l <"$W/a.curve")" != $((to - from + 1)) ] ||
        [ "$(wc -l <"$W/b.curve")" != $((to - from + 1)) ]; then
        fail "$desc: expected $((to - from + 1)) step records in both runs"
        return
    fi
    if [ "$tol" = 0 ]; then
        cmp -s "$W/a.curve" "$W/b.curve" || {
            fail "$desc: the continued curve is not bit-identical to the uninterrupted one:"
            diff "$W/a.curve" "$W/b.curve" | head -6 | sed 's/^/      /'
        }
    else
        paste "$W/a.curve" "$W/b.curve" | awk -v t="$tol" '
            { d = $2 - $4; if (d < 0) d = -d; if (d > t * $2) { bad = 1; print "      step " $1 ": " $2 " vs " $4 } }
            END { exit bad }' || fail "$desc: the continued curve departs by more than $tol"
    fi
    # the data cursor: the resumed run has consumed exactly what the uninterrupted one had
    local step
    for step in $from $to; do
        [ "$(step_field "$ref" "$step" tokens)" = "$(step_field "$run" "$step" tokens)" ] ||
            fail "$desc: at step $step the data cursor differs (tokens $(step_field "$ref" "$step" tokens) vs $(step_field "$run" "$step" tokens))"
    done
}

# need_mpirun: sets MPIRUN (mpirun with the flags this machine needs) or skips.
need_mpirun() {
    if ! command -v mpirun >/dev/null 2>&1; then
        echo "SKIP: mpirun is not installed"
        exit 77
    fi
    if ! command -v timeout >/dev/null 2>&1; then
        echo "SKIP: timeout (coreutils) is not installed"
        exit 77
    fi
    MPIRUN=(mpirun)
    if mpirun --version 2>&1 | grep -qi 'open mpi\|open-mpi\|openrte'; then
        [ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root)
        # more ranks than cores: a waiting rank yields its core, not spins
        MPIRUN+=(--oversubscribe --mca mpi_yield_when_idle 1)
    fi
    export OMP_NUM_THREADS=1
}

# rank_pid RANK: the pid of this case's entente process of that MPI rank
rank_pid() {
    local p
    for p in $(pgrep -x entente); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" || continue
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$W" || continue
        echo "$p"
        return 0
    done
    return 1
}

# wait_for_step METRICS STEP SECONDS: until metrics.jsonl has a record of STEP
wait_for_step() {
    local t=0
    while [ $t -lt $(($3 * 10)) ]; do
        grep -q "^{\"step\":$2," "$1" 2>/dev/null && return 0
        sleep 0.1
        t=$((t + 1))
    done
    return 1
}

# sigterm_at_step PID METRICS STEP: once METRICS records STEP, sends SIGTERM to
# the background run PID and waits for it: RC is its exit code, which must be
# 75. Returns 1 after a failure (the run killed if it never reached STEP).
sigterm_at_step() {
    if ! wait_for_step "$2" "$3" 60; then
        fail "the run did not reach step $3"
        kill -9 "$1"
        return 1
    fi
    kill -TERM "$1"
    wait "$1"
    RC=$?
    LAST_CMD="entente train, SIGTERM"
    [ "$RC" = 75 ] || { fail "SIGTERM: expected exit code 75, got $RC"; show_last; return 1; }
}

# run_case: runs case_$CASE and exits with its verdict.
run_case() {
    if ! declare -F "case_$CASE" >/dev/null; then
        echo "unknown case '$CASE'" >&2
        exit 2
    fi
    "case_$CASE"
    if [ "$FAILED" != 0 ]; then
        echo "cli_$CASE: FAILED"
        exit 1
    fi
    echo "cli_$CASE: passed"
    exit 0
}
