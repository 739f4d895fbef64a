#!/usr/bin/env bash
# cli_test.sh: command-line tests of the entente binary, one named case per call.
#
#   cli_test.sh ENTENTE_BINARY SOURCE_DIR CASE
#
# Exit status: 0 pass, 1 fail (each failed check says what was expected and
# what happened: exit code and stderr), 77 when the case cannot run here.
# Every case works in its own temporary directory, removed on exit. The test
# data is a small corpus made here with awk and seq: no network, no packages.
# Only POSIX tools plus bash, grep, awk, sed: no python.
#
# The shared set-up and helpers are in cli_lib.sh.

# shellcheck source=cli_lib.sh
. "$(dirname "$0")/cli_lib.sh"

# The keys of the table in runtime/config.c, as section.key.
source_keys() {
    sed -n 's/^ *{"\([a-z0-9_]*\)", "\([a-z0-9_]*\)", K_[A-Z0-9]*,.*/\1.\2/p' "$SRC/runtime/config.c"
}

# "section.key default" pairs from `entente train --help` (lines that start
# with two spaces, then section.key, then "default").
help_keys() {
    "$E" train --help | sed -n 's/^  \([a-z0-9_]*\.[a-z0-9_]*\) *default *\([^ ]*\).*/\1 \2/p'
}

# ---------------------------------------------------------------------------
# cases

case_help() {
    expect "entente --help" 0 out:train "out:data prepare" -- "$E" --help
    expect "entente -h" 0 out:train -- "$E" -h
    expect "entente help train" 0 out:model.layers -- "$E" help train
    expect "entente --version" 0 "out:entente " -- "$E" --version

    expect "entente train --help" 0 out:--config out:--set out:--run-dir out:--print-config out:--force \
        -- "$E" train --help
    local keys k n=0
    keys=$(source_keys)
    if [ -z "$keys" ]; then
        fail "cannot read the key table from $SRC/runtime/config.c"
    fi
    local rows
    rows=$(grep -cE "K_[A-Z0-9]+, FIELD\(" "$SRC/runtime/config.c")
    [ "$(printf "%s\n" "$keys" | grep -c .)" = "$rows" ] ||
        fail "this test read $(printf "%s\n" "$keys" | grep -c .) keys from runtime/config.c, which has $rows rows"
    for k in $keys; do
        n=$((n + 1))
        grep -qE "^  $(printf '%s' "$k" | sed 's/\./\\./') +default " "$W/out" ||
            fail "entente train --help: key $k (runtime/config.c) is not listed as '  $k  default ...'"
    done
    local listed
    listed=$(grep -cE '^  [a-z0-9_]+\.[a-z0-9_]+ +default ' "$W/out")
    [ "$listed" = "$n" ] ||
        fail "entente train --help lists $listed keys, runtime/config.c has $n"
    for k in model.layers model.heads model.width model.context train.lr train.steps data.dir; do
        grep -qF "  $k " "$W/out" || fail "entente train --help does not list $k"
    done

    expect "entente data prepare --help" 0 out:--input out:--output out:--val-fraction out:--force \
        -- "$E" data prepare --help
    expect "entente data --help" 0 "out:data prepare" -- "$E" data --help

    # every command that `entente --help` lists runs: its --help (and `entente
    # help COMMAND`) prints its usage exactly once, with exit code 0
    local cmds cmd n_usage
    cmds=$("$E" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z ]*[a-z]\)  .*/\1/p')
    [ "$(printf '%s\n' "$cmds" | grep -c .)" -ge 5 ] ||
        fail "entente --help lists $(printf '%s\n' "$cmds" | grep -c .) commands: cannot read its Commands section"
    while read -r cmd; do
        [ -n "$cmd" ] || continue
        # shellcheck disable=SC2086 # "data prepare" is two words
        expect "entente $cmd --help" 0 "out:Usage: entente ${cmd%% *}" -- "$E" $cmd --help || continue
        n_usage=$(grep -c '^ *Usage: ' "$W/out")
        [ "$n_usage" = 1 ] || fail "entente $cmd --help prints its usage $n_usage times"
        cp "$W/out" "$W/help1"
        # shellcheck disable=SC2086
        expect "entente help ${cmd%% *}" 0 -- "$E" help ${cmd%% *}
        cmp -s "$W/out" "$W/help1" || fail "entente help ${cmd%% *} differs from entente $cmd --help"
    done <<<"$cmds"
    expect "entente data --help (usage once)" 0 -- "$E" data --help
    [ "$(grep -c '^ *Usage: ' "$W/out")" = 1 ] || fail "entente data --help prints its usage more than once"
    # this version trains one site: the help must not promise pooled sites
    "$E" --help | grep -qi 'pooled by several' && fail "entente --help describes pooled sites, which this version does not run"
    expect "entente with no arguments" 2 --no-error-line "err:Usage: entente COMMAND" -- "$E"
    # the usage text goes to stderr, so only the exit code and the text are checked
    expect "entente frobnicate" 2 "unknown command 'frobnicate'" -- "$E" frobnicate
    expect "entente data (no subcommand)" 2 "entente data prepare" -- "$E" data
    expect "entente data frob" 2 "entente data prepare" -- "$E" data frob
}

case_docs_config() {
    local doc=$SRC/docs/config.md
    if [ ! -f "$doc" ]; then
        fail "$doc does not exist: every configuration key should be documented there"
        return
    fi
    local pairs
    pairs=$(help_keys)
    if [ -z "$pairs" ]; then
        fail "entente train --help lists no keys"
        return
    fi
    # For each key: some line of the doc holds the key and its default, each as
    # a whole token (train.lr does not match train.lr_floor; 1 does not match 10
    # or 1.0). An empty default, shown as (empty), may be written (empty), "" or empty.
    local missing
    missing=$(printf '%s\n' "$pairs" | awk -v doc="$doc" '
        function word(c) { return c ~ /[A-Za-z0-9_]/ }
        # does tok occur in s with a token boundary on each side?
        function has(s, tok,    i, pos, before, after, next2) {
            pos = 0
            while ((i = index(substr(s, pos + 1), tok)) > 0) {
                pos += i
                before = pos > 1 ? substr(s, pos - 1, 1) : ""
                after = substr(s, pos + length(tok), 1)
                next2 = substr(s, pos + length(tok) + 1, 1)
                if (!word(before) && before != "." &&
                    !word(after) && !(after == "." && word(next2)))
                    return 1
            }
            return 0
        }
        BEGIN { while ((getline line < doc) > 0) lines[++n] = line }
        {
            key = $1; def = $2; ok = 0
            for (i = 1; i <= n && !ok; i++) {
                if (!has(lines[i], key)) continue
                if (def == "(empty)")
                    ok = index(lines[i], "(empty)") || index(lines[i], "\"\"") || has(lines[i], "empty")
                else
                    ok = has(lines[i], def)
            }
            if (!ok) print key " (default " def ")"
        }')
    if [ -n "$missing" ]; then
        fail "$doc lacks these keys with their default on the same line:"
        printf '%s\n' "$missing" | sed 's/^/      /'
    fi
}

# Every error message that README.md and docs/*.md quote is one the code
# prints: each run of constant words of a quoted message (no digits, paths,
# quotes, keys or FILE-like placeholders) can be cut into pieces that the
# sources' string literals hold (adjacent literals joined): pieces of two
# words or more, or one word next to a substituted value.
case_docs_messages() {
    # every C source of the library, subfolders too (runtime/coalition, ...)
    find "$SRC"/runtime "$SRC"/checkpoint "$SRC"/comm "$SRC"/kernels -name '*.c' -print0 |
        sort -z | xargs -0 cat | sed -z 's/"[ \t]*\n[ \t]*"//g' >"$W/strings"
    local f
    for f in "$SRC"/README.md "$SRC"/docs/*.md; do
        # "entente: error: ..." messages, and the messages of "## Errors" tables
        awk -v file="${f#"$SRC"/}" '
            /^#/ { errors = ($0 ~ /^## Errors/) }
            {
                line = $0
                while (match(line, /entente(\[[0-9A-Z]+\])?: error: [^`]*/)) {
                    m = substr(line, RSTART, RLENGTH)
                    sub(/^[^ ]* error: /, "", m)
                    print file ":" NR "\t" m
                    line = substr(line, RSTART + RLENGTH)
                }
                if (errors && $0 ~ /^\|/ && $0 !~ /^\|--/) {
                    split($0, cols, "|")
                    line = cols[3]
                    while (match(line, /`[^`]*`/)) {
                        print file ":" NR "\t" substr(line, RSTART + 1, RLENGTH - 2)
                        line = substr(line, RSTART + RLENGTH)
                    }
                }
            }' "$f"
    done >"$W/quoted"
    [ "$(grep -c . "$W/quoted")" -ge 15 ] ||
        fail "found only $(grep -c . "$W/quoted") quoted error messages in the docs: the extraction broke"
    # the system's own words (strerror) are not in the sources
    sed -i 's/No such file or directory//g; s/Permission denied//g; s/No space left on device//g' "$W/quoted"
    local where msg word words runs=0 variable_re placeholder_re='^[A-Z]+[:,]?$'
    variable_re='[][0-9/."'"'"'`=*<>_]'
    while IFS=$'\t' read -r where msg; do
        words=()
        for word in $msg ""; do
            if [ -n "$word" ] && ! [[ $word =~ $variable_re ]] && ! [[ $word =~ $placeholder_re ]]; then
                words+=("$word")
                continue
            fi
            if [ ${#words[@]} -ge 3 ]; then
                runs=$((runs + 1))
                docs_run_printed "${words[@]}" ||
                    fail "$where: the quoted message '$msg' is not one the code prints ('${words[*]}' is in no string of the sources)"
            fi
            words=()
        done
    done <"$W/quoted"
    [ $runs -ge 15 ] || fail "checked only $runs runs of words: the extraction broke"
    # every mpirun example says, in its block or within 12 lines of it, what
    # Open MPI needs as root and with more ranks than cores (or links to it)
    local examples=0
    for f in "$SRC"/README.md "$SRC"/docs/*.md; do
        awk -v file="${f#"$SRC"/}" '
            { line[NR] = $0 }
            /^```/ { if (inblock) { stop[nb] = NR } else { start[++nb] = NR }; inblock = !inblock }
            inblock && /^[ \t]*([A-Z_]+=[^ ]+ +)*mpirun / { run[nb] = run[nb] ? run[nb] : NR }
            END {
                for (b = 1; b <= nb; b++) {
                    if (!run[b]) continue
                    root = over = 0
                    for (i = start[b] - 12; i <= stop[b] + 12; i++) {
                        if (line[i] ~ /allow-run-as-root|OMPI_ALLOW_RUN_AS_ROOT|parallel\.md#launching-with-mpirun/) root = 1
                        if (line[i] ~ /oversubscribe|parallel\.md#launching-with-mpirun/) over = 1
                    }
                    print (root && over ? "ok" : "missing") "\t" file ":" run[b]
                }
            }' "$f"
    done >"$W/mpirun_examples"
    examples=$(grep -c . "$W/mpirun_examples")
    [ "$examples" -ge 5 ] || fail "found only $examples mpirun examples in the docs: the extraction broke"
    while IFS=$'\t' read -r verdict where; do
        [ "$verdict" = ok ] ||
            fail "$where: an mpirun example with no word on --allow-run-as-root and --oversubscribe near it"
    done <"$W/mpirun_examples"
}

# docs_run_printed WORD...: can the words be cut into pieces the sources hold?
docs_run_printed() {
    local w=("$@") n=$# i=0 j piece found beside_re='(^[(])|([,:;()]$)'
    while [ $i -lt $n ]; do
        found=0
        for ((j = n; j > i; j--)); do
            piece="${w[*]:i:j-i}"
            if [ $((j - i)) -ge 2 ]; then
                grep -qF -- "$piece" "$W/strings" && found=1
            elif [[ $piece =~ $beside_re ]] || grep -qF -- "\"$piece\"" "$W/strings"; then
                found=1 # one word: beside a value ("ranks," after %d) or a whole literal ("all-reduce")
            fi
            [ $found = 1 ] && break
        done
        [ $found = 1 ] || return 1
        i=$j
    done
}

case_config_errors() {
    make_data
    write_config "$W/tiny.ini"

    expect "missing config file" 2 "$W/nope.ini" -- "$E" train --config "$W/nope.ini"

    write_config "$W/unknown.ini"
    sed -i 's/^heads = 2$/heads = 2\nfrobs = 3/' "$W/unknown.ini"
    local line
    line=$(grep -n '^frobs' "$W/unknown.ini" | cut -d: -f1)
    expect "unknown key in the file" 2 "$W/unknown.ini:$line" "frobs" -- \
        "$E" train --config "$W/unknown.ini"

    write_config "$W/section.ini"
    printf '[bogus]\nx = 1\n' >>"$W/section.ini"
    expect "unknown section" 2 "[bogus]" -- "$E" train --config "$W/section.ini"

    write_config "$W/range.ini"
    sed -i 's/^layers = 2$/layers = 0/' "$W/range.ini"
    line=$(grep -n '^layers' "$W/range.ini" | cut -d: -f1)
    expect "out-of-range value in the file" 2 "$W/range.ini:$line" "layers" "out of range" -- \
        "$E" train --config "$W/range.ini"
    expect "out-of-range value in --set" 2 "train.lr" "out of range" -- \
        "$E" train --config "$W/tiny.ini" --set train.lr=-1
    expect "not a number" 2 "train.steps" "'many'" -- \
        "$E" train --config "$W/tiny.ini" --set train.steps=many

    write_config "$W/heads.ini"
    sed -i 's/^heads = 2$/heads = 3/' "$W/heads.ini"
    expect "width not divisible by heads (file)" 2 "model.width = 32" "model.heads = 3" -- \
        "$E" train --config "$W/heads.ini"
    expect "width not divisible by heads (--set)" 2 "model.width = 32" "--set model.heads" -- \
        "$E" train --config "$W/tiny.ini" --set model.heads=5

    # a warm-up longer than the run is lowered, with a warning naming the key
    write_config "$W/warmup.ini"
    expect "warmup_steps above steps" 0 err:"warmup.ini:12: train.warmup_steps = 5 exceeds train.steps = 3" -- \
        "$E" train --config "$W/warmup.ini" --set train.steps=3 --print-config
    grep -q '^warmup_steps = 0$' "$W/out" || fail "the printed configuration does not hold warmup_steps = 0"

    expect "--set with an unknown key" 2 "model.frobs" -- \
        "$E" train --config "$W/tiny.ini" --set model.frobs=3
    expect "--set without '='" 2 "--set model.layers" "section.key=value" -- \
        "$E" train --config "$W/tiny.ini" --set model.layers
    expect "--set without a value argument" 2 "--set needs a value" -- \
        "$E" train --config "$W/tiny.ini" --set
    expect "unknown CLI argument" 2 "unknown argument '--frobnicate'" -- \
        "$E" train --config "$W/tiny.ini" --frobnicate
    expect "--config missing" 2 "--config" -- "$E" train --set model.layers=2
    expect "--config without its value" 2 "--config needs a value" -- "$E" train --config

    printf '[model]\nlayers = 2\n' >"$W/nodata.ini"
    expect "data.dir not set" 2 "data.dir" -- "$E" train --config "$W/nodata.ini"

    expect "data prepare: unknown argument" 2 "unknown argument '--frob'" -- \
        "$E" data prepare --input "$W/corpus.txt" --output "$W/d2" --frob
    expect "data prepare: --output missing" 2 "--output" -- \
        "$E" data prepare --input "$W/corpus.txt"
    expect "data prepare: bad --val-fraction" 2 "--val-fraction" -- \
        "$E" data prepare --input "$W/corpus.txt" --output "$W/d2" --val-fraction 0.9
    no_shards "config errors write no shards" "$W/d2"
}

case_print_config() {
    make_data
    write_config "$W/tiny.ini"
    expect "--print-config with --set" 0 "out:[model]" "out:[train]" "out:[data]" -- \
        "$E" train --config "$W/tiny.ini" --set train.steps=7 --set sample.prompt=Once --print-config
    cp "$W/out" "$W/p1.ini"
    grep -qE '^steps *= *7$' "$W/p1.ini" || fail "--print-config does not show the --set train.steps=7"
    grep -qE '^prompt *= *Once$' "$W/p1.ini" || fail "--print-config does not show the --set sample.prompt=Once"
    grep -qE '^layers *= *2$' "$W/p1.ini" || fail "--print-config does not show model.layers = 2 from the file"
    grep -qE "^dir *= *$DATA\$" "$W/p1.ini" || fail "--print-config does not show data.dir"
    # every key appears, under its section
    local k sec key
    for k in $(source_keys); do
        sec=${k%%.*}
        key=${k#*.}
        awk -v s="[$sec]" -v k="$key" '
            /^\[/ { in_s = ($0 == s) }
            in_s && $1 == k && $2 == "=" { found = 1 }
            END { exit !found }' "$W/p1.ini" || fail "--print-config lacks $key under [$sec]"
    done
    [ -d "$W/runs" ] && fail "--print-config created a run directory"
    expect "--print-config of the printed config" 0 -- "$E" train --config "$W/p1.ini" --print-config
    if ! cmp -s "$W/p1.ini" "$W/out"; then
        fail "the printed config does not print the same when loaded again:"
        diff "$W/p1.ini" "$W/out" | head -20 | sed 's/^/      /'
    fi
}

# Strings the INI writer has to protect: an inline-comment character after a
# space must be written so that it loads again unchanged. Text values hold as
# much as docs/config.md promises, exactly: data.dir a path of 4095 bytes,
# sample.prompt 1023 bytes, through --set and in a file; one byte more is
# refused (exit 2) with the key and the limit named, never cut short.
case_print_config_strings() {
    make_data
    write_config "$W/tiny.ini"
    local dir4095 dir4096 p1023 p1024
    dir4095="$W/$(head -c $((4095 - ${#W} - 1)) /dev/zero | tr '\0' d)"
    dir4096="${dir4095}d"
    p1023=$(head -c 1023 /dev/zero | tr '\0' p)
    p1024="${p1023}p"
    [ ${#dir4095} = 4095 ] || fail "test set-up: the path is ${#dir4095} bytes, not 4095"
    expect "--set data.dir (4096 bytes)" 2 "data.dir" "at most 4095 bytes" -- \
        "$E" train --config "$W/tiny.ini" --set "data.dir=$dir4096" --print-config
    expect "--set sample.prompt (1024 bytes)" 2 "sample.prompt" "at most 1023 bytes" -- \
        "$E" train --config "$W/tiny.ini" --set "sample.prompt=$p1024" --print-config
    local s
    for s in "sample.prompt=ham ;eggs" "sample.prompt=a # b" "sample.prompt=x\\;y \\\"z\\\"" \
        "data.dir=$dir4095" "sample.prompt=$p1023" "sample.prompt=$(head -c 1023 /dev/zero | tr '\0' ';')"; do
        if ! expect "--print-config --set '${s:0:40}...'" 0 -- \
            "$E" train --config "$W/tiny.ini" --set "$s" --print-config; then
            continue
        fi
        cp "$W/out" "$W/p1.ini"
        if expect "load the printed config of --set '${s:0:40}...'" 0 -- \
            "$E" train --config "$W/p1.ini" --print-config; then
            if ! cmp -s "$W/p1.ini" "$W/out"; then
                fail "--set '${s:0:40}...': the printed config loads as a different config:"
                diff "$W/p1.ini" "$W/out" | cut -c1-100 | head -6 | sed 's/^/      /'
            fi
        fi
    done
    # in a file: at the limits it loads whole; one over names file:line and the key
    printf "[data]\ndir = %s\n\n[sample]\nprompt = %s\n" "$dir4095" "$p1023" >"$W/long.ini"
    if expect "a config with a 4095-byte data.dir and a 1023-byte sample.prompt" 0 -- \
        "$E" train --config "$W/long.ini" --print-config; then
        grep -qxF "dir = $dir4095" "$W/out" || fail "data.dir of 4095 bytes did not load whole"
        grep -qxF "prompt = $p1023" "$W/out" || fail "sample.prompt of 1023 bytes did not load whole"
    fi
    # and used: shards in a directory whose path is 4000 bytes (nested, as a
    # name is at most 255 bytes; the shards' own names take the path to
    # about 4018) train, the path given in a file
    local deep="$W/deep" part
    part=$(head -c 199 /dev/zero | tr '\0' e)
    while [ $((${#deep} + 200)) -lt 4000 ]; do deep="$deep/$part"; done
    deep="$deep/${part:0:$((4000 - ${#deep} - 1))}"
    [ ${#deep} = 4000 ] || fail "test set-up: the deep path is ${#deep} bytes, not 4000"
    mkdir -p "$deep" && cp "$DATA"/* "$deep"/ || { fail "cannot make the 4000-byte data directory"; return; }
    awk -v d="$deep" '/^\[/ { s = $0 } s == "[data]" && $1 == "dir" { $0 = "dir = " d } 1' "$W/tiny.ini" >"$W/deep.ini"
    grep -qxF "dir = $deep" "$W/deep.ini" || fail "test set-up: no data.dir line to replace in tiny.ini"
    expect "train on shards under a 4000-byte path" 0 -- "$E" train --config "$W/deep.ini" \
        --set train.steps=2 --set eval.every=0 --set sample.tokens=0 --run-dir "$W/rdeep"
    [ "$(grep -c '"loss":' "$W/rdeep/metrics.jsonl" 2>/dev/null)" = 2 ] ||
        fail "training on shards under a 4000-byte path did not record 2 steps"
    printf "[data]\ndir = %s\n\n[sample]\nprompt = %s\n" "$dir4095" "$p1024" >"$W/long.ini"
    expect "a config with a 1024-byte sample.prompt" 2 "$W/long.ini:5:" "prompt" "at most 1023 bytes" -- \
        "$E" train --config "$W/long.ini" --print-config
    printf "[data]\ndir = %s\n" "$dir4096" >"$W/long.ini"
    expect "a config with a 4096-byte data.dir" 2 "$W/long.ini:2:" "dir" "at most 4095 bytes" -- \
        "$E" train --config "$W/long.ini" --print-config
}

case_data_errors() {
    make_data
    write_config "$W/tiny.ini"

    expect "data.dir missing" 1 "$W/nodir" -- \
        "$E" train --config "$W/tiny.ini" --set "data.dir=$W/nodir" --run-dir "$W/r1"
    [ -e "$W/r1" ] && fail "a failed start (missing data) created the run directory"

    mkdir -p "$W/emptydir"
    expect "data.dir without shards" 1 "$W/emptydir" "no token shards" -- \
        "$E" train --config "$W/tiny.ini" --set "data.dir=$W/emptydir" --run-dir "$W/r1"

    # wrong magic
    cp -r "$DATA" "$W/magic"
    printf 'XXXX' | dd of="$W/magic/train_000000.bin" bs=1 seek=0 conv=notrunc 2>/dev/null
    expect "shard with a wrong magic" 1 "$W/magic/train_000000.bin" "magic" -- \
        "$E" train --config "$W/tiny.ini" --set "data.dir=$W/magic" --run-dir "$W/r1"

    # truncated (in the validation shard, which is opened after the train shards)
    cp -r "$DATA" "$W/trunc"
    local size
    size=$(wc -c <"$W/trunc/val_000000.bin")
    truncate -s $((size - 100)) "$W/trunc/val_000000.bin"
    expect "truncated shard" 1 "$W/trunc/val_000000.bin" "truncated" -- \
        "$E" train --config "$W/tiny.ini" --set "data.dir=$W/trunc" --run-dir "$W/r1"

    # shorter than the header
    mkdir -p "$W/tiny"
    printf 'short' >"$W/tiny/train_000000.bin"
    expect "shard shorter than its header" 1 "$W/tiny/train_000000.bin" -- \
        "$E" train --config "$W/tiny.ini" --set "data.dir=$W/tiny" --run-dir "$W/r1"

    # a token id of 0xffff (little-endian uint16) at token position 1000
    cp -r "$DATA" "$W/vocab"
    printf '\377\377' | dd of="$W/vocab/train_000000.bin" bs=1 seek=$((1024 + 2 * 1000)) \
        conv=notrunc 2>/dev/null
    expect "token outside the vocabulary" 1 "$W/vocab/train_000000.bin" "65535" "vocabulary" -- \
        "$E" train --config "$W/tiny.ini" --set "data.dir=$W/vocab" --run-dir "$W/r1"
    # byte tokens above model.vocab are out of vocabulary too
    expect "model.vocab smaller than the data's tokens" 1 "vocabulary" -- \
        "$E" train --config "$W/tiny.ini" --set model.vocab=100 --run-dir "$W/r1"
    [ -e "$W/r1" ] && fail "a failed start (bad data) created the run directory $W/r1"

    # prepare: empty input
    : >"$W/empty.txt"
    expect "prepare an empty input" 1 "empty" "$W/empty.txt" -- \
        "$E" data prepare --input "$W/empty.txt" --output "$W/out_empty"
    no_shards "prepare an empty input" "$W/out_empty"

    # prepare: missing input (with a good one before it)
    expect "prepare a missing input" 1 "$W/missing.txt" -- \
        "$E" data prepare --input "$W/corpus.txt" "$W/missing.txt" --output "$W/out_missing"
    no_shards "prepare a missing input" "$W/out_missing"

    # prepare: a directory as input
    expect "prepare a directory as input" 1 "$W/emptydir" -- \
        "$E" data prepare --input "$W/emptydir" --output "$W/out_dirin"
    no_shards "prepare a directory as input" "$W/out_dirin"

    # prepare: a binary file (the entente binary itself) is accepted
    local bytes total
    bytes=$(wc -c <"$E")
    if expect "prepare a binary file" 0 "out:wrote" -- \
        "$E" data prepare --input "$E" --output "$W/out_bin"; then
        [ -f "$W/out_bin/train_000000.bin" ] || fail "prepare a binary file: no train_000000.bin"
        # one token per byte plus the end-of-text token
        total=$(sed -n 's/.*wrote \([0-9]*\) train and \([0-9]*\) val tokens.*/\1 \2/p' "$W/out" |
            awk '{ print $1 + $2 }')
        [ "$total" = $((bytes + 1)) ] ||
            fail "prepare a binary file of $bytes bytes: expected $((bytes + 1)) tokens, stdout says '$total'"
    fi

    # prepare: into a directory that already holds shards
    mkdir -p "$W/out_force"
    expect "prepare into an empty dir, small shards" 0 -- \
        "$E" data prepare --input "$W/corpus.txt" --output "$W/out_force" --shard-tokens 100000
    local before
    before=$(ls "$W/out_force" | grep -c '\.bin$')
    [ "$before" -gt 2 ] || fail "--shard-tokens 100000 should give several shards, got $before"
    cp "$W/out_force/train_000000.bin" "$W/first.bin"
    expect "prepare into a dir with shards, no --force" 2 "$W/out_force" "--force" -- \
        "$E" data prepare --input "$W/corpus.txt" --output "$W/out_force"
    cmp -s "$W/out_force/train_000000.bin" "$W/first.bin" ||
        fail "a refused prepare changed the existing shards"
    expect "prepare into a dir with shards, --force" 0 "out:wrote" -- \
        "$E" data prepare --input "$W/corpus.txt" --output "$W/out_force" --force
    local after
    after=$(ls "$W/out_force" | grep '\.bin' | tr '\n' ' ')
    [ "$after" = "train_000000.bin val_000000.bin " ] ||
        fail "--force should leave exactly the new train_000000.bin and val_000000.bin, found: $after"
    cmp -s "$W/out_force/train_000000.bin" "$DATA/train_000000.bin" ||
        fail "--force did not write the same shard as a fresh prepare of the same corpus"
}

# A FIFO, a socket or a device wherever Entente reads a file (config,
# data prepare input, shard, checkpoint, a checkpoint directory's latest) is
# refused before it is opened for reading: a clear error, never a hang. Every
# command runs under timeout (exit 124 fails the check).
case_inputs_not_regular() {
    command -v mkfifo >/dev/null 2>&1 || { echo "SKIP: mkfifo is not installed"; exit 77; }
    command -v timeout >/dev/null 2>&1 || { echo "SKIP: timeout (coreutils) is not installed"; exit 77; }
    make_data
    write_config "$W/tiny.ini"
    mkfifo "$W/fifo"
    local t=(timeout 20) dev
    for dev in "$W/fifo" /dev/zero /dev/null; do
        local kind="FIFO"
        [ "$dev" = "$W/fifo" ] || kind="character device"
        expect "config $dev" 2 "config $dev is a $kind" -- "${t[@]}" "$E" train --config "$dev"
        expect "data prepare --input $dev" 1 "input $dev is a $kind" -- \
            "${t[@]}" "$E" data prepare --input "$W/corpus.txt" "$dev" --output "$W/p"
        no_shards "data prepare --input $dev" "$W/p"
        [ -e "$W/p" ] && fail "data prepare --input $dev left the directory $W/p"
        expect "ckpt info $dev" 1 "checkpoint $dev is a $kind" -- "${t[@]}" "$E" ckpt info "$dev"
        expect "ckpt verify $dev" 1 "checkpoint $dev is a $kind" -- "${t[@]}" "$E" ckpt verify "$dev"
        expect "sample --checkpoint $dev" 1 "checkpoint $dev is a $kind" -- \
            "${t[@]}" "$E" sample --checkpoint "$dev" --tokens 1
        # a shard: the FIFO or device under a shard's name (a link for the device)
        rm -rf "$W/d"
        cp -r "$DATA" "$W/d"
        if [ "$dev" = "$W/fifo" ]; then mkfifo "$W/d/train_000001.bin"; else ln -s "$dev" "$W/d/train_000001.bin"; fi
        expect "shard $dev" 1 "shard $W/d/train_000001.bin is a $kind" -- \
            "${t[@]}" "$E" train --config "$W/tiny.ini" --set "data.dir=$W/d" --run-dir "$W/r"
        [ -e "$W/r" ] && fail "a refused shard created the run directory"
        # a checkpoint directory whose latest points at it
        rm -rf "$W/ck"
        mkdir -p "$W/ck"
        ln -s "$dev" "$W/ck/latest"
        expect "ckpt info of a directory whose latest is $dev" 1 "is a $kind" -- \
            "${t[@]}" "$E" ckpt info "$W/ck"
    done
    # a directory as a config, a socket as an input (if python can make one)
    mkdir -p "$W/cfgdir"
    expect "config is a directory" 2 "config $W/cfgdir is a directory" -- "${t[@]}" "$E" train --config "$W/cfgdir"
    # (a socket file: as an input, a config, a checkpoint and a shard)
    if /usr/bin/python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" "$W/sock" 2>/dev/null; then
        expect "data prepare --input a socket" 1 "input $W/sock is a socket" -- \
            "${t[@]}" "$E" data prepare --input "$W/sock" --output "$W/p"
        expect "config is a socket" 2 "config $W/sock is a socket" -- "${t[@]}" "$E" train --config "$W/sock"
        expect "ckpt info of a socket" 1 "checkpoint $W/sock is a socket" -- "${t[@]}" "$E" ckpt info "$W/sock"
        rm -rf "$W/d" "$W/r"
        cp -r "$DATA" "$W/d"
        ln -s "$W/sock" "$W/d/train_000001.bin"
        expect "shard a socket" 1 "shard $W/d/train_000001.bin is a socket" -- \
            "${t[@]}" "$E" train --config "$W/tiny.ini" --set "data.dir=$W/d" --run-dir "$W/r"
        [ -e "$W/r" ] && fail "a refused shard (a socket) created the run directory"
    else
        echo "    (no UNIX socket could be made here: sockets were not tried)"
    fi
    expect "ckpt info of a missing file" 1 "cannot open checkpoint $W/missing.h5: No such file" -- \
        "${t[@]}" "$E" ckpt info "$W/missing.h5"
    # an empty corpus leaves nothing behind, not even the directories it would have made
    : >"$W/empty.txt"
    expect "prepare an empty corpus into a new nested directory" 1 "empty corpus" -- \
        "$E" data prepare --input "$W/empty.txt" --output "$W/new/nested/out"
    [ -e "$W/new" ] && fail "an empty corpus left the directory $W/new behind"
}

# Every numeric option of sample and data prepare refuses what the config
# refuses (empty, sign on a seed, overflow, trailing junk, inf/nan, hex)
# with exit code 2, naming the option; the edges of each range are accepted.
case_numeric_args() {
    local opt bad v n=0
    local -A cases=(
        [--seed]="'' ' ' -1 -0 18446744073709551616 99999999999999999999999 1x 0x10 1e3 nan 1.5 +"
        [--tokens]="'' -1 1000001 2.5 1e3 9223372036854775808 7x nan inf"
        [--temperature]="'' ' ' -0.1 100.5 nan inf -inf 0x1p2 1e999 1e 0.5x ."
    )
    for opt in --seed --tokens --temperature; do
        eval "bad=(${cases[$opt]})"
        for v in "${bad[@]}"; do
            expect "sample $opt '$v'" 2 "$opt '$v'" -- "$E" sample --checkpoint "$W/none.h5" "$opt" "$v"
            n=$((n + 1))
        done
    done
    for v in '' -0.1 0.6 nan inf 1e 0x0.1 0.1x; do
        expect "data prepare --val-fraction '$v'" 2 "--val-fraction '$v'" -- \
            "$E" data prepare --input "$W/x" --output "$W/o" --val-fraction "$v"
    done
    for v in '' 0 -5 2147483648 99999999999999999999 1e6 5x; do
        expect "data prepare --shard-tokens '$v'" 2 "--shard-tokens '$v'" -- \
            "$E" data prepare --input "$W/x" --output "$W/o" --shard-tokens "$v"
    done
    # accepted: the checkpoint is then what fails (exit 1), not the option
    for v in "--seed 18446744073709551615" "--seed 0" "--tokens 0" "--tokens 1000000" \
        "--temperature 0" "--temperature 100" "--temperature .5" "--seed 007"; do
        # shellcheck disable=SC2086
        expect "sample $v (accepted)" 1 "cannot open checkpoint" -- "$E" sample --checkpoint "$W/none.h5" $v
    done
    # seeded random junk after a good value
    local seed=${ENT_TEST_SEED:-$RANDOM} i junk='xq,;#%/_()abc'
    echo "numeric_args: seed $seed (ENT_TEST_SEED=$seed reproduces it)"
    RANDOM=$seed
    for i in $(seq 1 20); do
        v="$((RANDOM % 100))${junk:$((RANDOM % ${#junk})):1}"
        opt=(--seed --tokens --temperature)
        opt=${opt[$((RANDOM % 3))]}
        expect "sample $opt '$v'" 2 "$opt '$v'" -- "$E" sample --checkpoint "$W/none.h5" "$opt" "$v"
    done
}

# data.train_pattern and data.val_pattern may not match the same shard (by
# name, or through a link): validation would measure what the run trains on.
case_data_split() {
    make_data
    write_config "$W/tiny.ini"
    expect "train_pattern *.bin also matches val_000000.bin" 2 "$DATA/val_000000.bin" \
        "data.train_pattern = *.bin" "data.val_pattern = *val*.bin" -- \
        "$E" train --config "$W/tiny.ini" --set 'data.train_pattern=*.bin' --run-dir "$W/r"
    expect "val_pattern * also matches train_000000.bin" 2 "$DATA/train_000000.bin" \
        "data.val_pattern = *" -- \
        "$E" train --config "$W/tiny.ini" --set 'data.val_pattern=*' --run-dir "$W/r"
    cp -r "$DATA" "$W/d"
    ln -s train_000000.bin "$W/d/val_000001.bin"
    expect "a validation shard that links to a training shard" 2 "$W/d/train_000000.bin" \
        "$W/d/val_000001.bin" "same file" -- \
        "$E" train --config "$W/tiny.ini" --set "data.dir=$W/d" --run-dir "$W/r"
    [ -e "$W/r" ] && fail "a refused split created the run directory"
    # disjoint patterns still train
    expect "disjoint patterns" 0 -- "$E" train --config "$W/tiny.ini" --set train.steps=2 \
        --set train.warmup_steps=0 --set sample.tokens=0 --set 'data.train_pattern=train_*.bin' \
        --set 'data.val_pattern=val_*.bin' --run-dir "$W/ok"
}

# sample sizes its model from a checkpoint's model.* attributes: each is
# checked against its configuration key's range (and the heads against the
# width), so a damaged or foreign file is an error naming the attribute, not
# an abort (a context of 0) or garbage (heads not dividing the width).
case_sample_shape() {
    local py=/usr/bin/python3
    "$py" -c 'import h5py' 2>/dev/null || { echo "SKIP: no /usr/bin/python3 with h5py (python3-h5py)"; exit 77; }
    make_data
    write_config "$W/tiny.ini"
    expect "train 2 steps" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/r" \
        --set train.steps=2 --set train.warmup_steps=0 --set sample.tokens=0 || return
    local good=$W/r/checkpoints/step_00000002.h5 seed=${ENT_TEST_SEED:-$RANDOM} attr v
    echo "sample_shape: seed $seed (ENT_TEST_SEED=$seed reproduces it)"
    RANDOM=$seed
    local cases=("model.context 0" "model.layers -5" "model.heads 3" "model.vocab 1099511627776"
        "model.width 0" "model.layers 1025" "model.context 65537" "model.vocab 1")
    local attrs=(model.layers model.heads model.width model.context model.vocab) i
    for i in 1 2 3 4; do # random values below 1 or above 2^17 (model.vocab: 2^24)
        attr=${attrs[$((RANDOM % 5))]}
        v=$((131072 + RANDOM * RANDOM))
        [ "$attr" = model.vocab ] && v=$((16777217 + RANDOM * RANDOM))
        cases+=("$attr $((RANDOM % 2 ? -RANDOM : v))")
    done
    for i in "${cases[@]}"; do
        attr=${i% *}
        v=${i#* }
        cp "$good" "$W/bad.h5"
        # the attribute changed and the digest recomputed (docs/checkpoint.md):
        # what sizes the model must be checked even in a file that is consistent
        "$py" -c 'import h5py, sys
sys.path.insert(0, sys.argv[4])
import ckpt_hostile
f = h5py.File(sys.argv[1], "r+"); a = f.attrs[sys.argv[2]]; f.attrs[sys.argv[2]] = a.dtype.type(int(sys.argv[3]))
f.attrs["digest"] = ckpt_hostile.digest(ckpt_hostile.read_attrs(f)); f.close()' \
            "$W/bad.h5" "$attr" "$v" "$SRC/tests" || { fail "cannot set $attr = $v with h5py"; continue; }
        local want="attribute $attr"
        [ "$i" = "model.heads 3" ] && want="not divisible by model.heads = 3"
        expect "sample from a checkpoint with $attr = $v" 1 "$W/bad.h5" "$want" -- \
            timeout 60 "$E" sample --checkpoint "$W/bad.h5" --tokens 2
    done
    expect "sample from the good checkpoint" 0 -- "$E" sample --checkpoint "$good" --tokens 4
}

# A launcher whose tasks this MPI library sees as separate single ranks
# (Hydra's mpiexec, srun without --mpi=pmix): each would train alone on the
# same files, so it is refused, with what to do instead.
case_launcher_mismatch() {
    make_data
    write_config "$W/tiny.ini"
    expect "PMI_SIZE=2, world of 1" 2 "PMI_SIZE=2" "srun --mpi=pmix" -- \
        env PMI_SIZE=2 "$E" train --config "$W/tiny.ini" --run-dir "$W/r"
    expect "SLURM_STEP_NUM_TASKS=3, world of 1" 2 "SLURM_STEP_NUM_TASKS=3" -- \
        env SLURM_STEP_NUM_TASKS=3 "$E" train --config "$W/tiny.ini" --run-dir "$W/r"
    [ -e "$W/r/metrics.jsonl" ] && fail "a refused launch wrote metrics"
    expect "SLURM_STEP_NUM_TASKS=1 trains" 0 -- env SLURM_STEP_NUM_TASKS=1 "$E" train \
        --config "$W/tiny.ini" --run-dir "$W/ok" --set train.steps=2 --set train.warmup_steps=0 \
        --set sample.tokens=0
}

case_run_dir_error() {
    make_data
    write_config "$W/tiny.ini"
    : >"$W/file"
    expect "--run-dir under a regular file" 1 "$W/file" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/file/sub"
    [ -f "$W/file" ] && [ ! -s "$W/file" ] || fail "the regular file $W/file was changed"
}

# A run directory holds one run. A second `train` into it is refused (exit 2)
# and changes nothing, whichever of its files marks it, and so is a new run
# into a checkpoint.dir that holds another run's checkpoints. --resume
# continues the run, appending to metrics.jsonl and samples.txt; --force
# starts over, replacing the files and removing the earlier checkpoints;
# the two together are a usage error.
case_run_dir_reuse() {
    make_data
    write_config "$W/tiny.ini"
    local sets=(--set train.steps=10 --set eval.every=5 --set sample.tokens=8
        --set checkpoint.every=2 --set checkpoint.keep=2)
    expect "first run" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/run" "${sets[@]}" || return
    local ck=$W/run/checkpoints
    cp -a "$W/run" "$W/before"
    expect "a second run into the same --run-dir" 2 "run directory $W/run already holds a run" \
        "--resume latest" "--force" -- "$E" train --config "$W/tiny.ini" --run-dir "$W/run" "${sets[@]}"
    diff -r "$W/before" "$W/run" >/dev/null || fail "a refused run changed the run directory"
    # each of the run's files alone marks the directory as used, and stays as it was
    local f
    for f in metrics.jsonl samples.txt config.ini run.json; do
        mkdir -p "$W/used-$f"
        echo "earlier" >"$W/used-$f/$f"
        expect "a run directory holding only $f" 2 "$W/used-$f/$f" -- \
            "$E" train --config "$W/tiny.ini" --run-dir "$W/used-$f" "${sets[@]}"
        [ "$(cat "$W/used-$f/$f")" = earlier ] || fail "a refused run changed $f"
        [ -e "$W/used-$f/checkpoints" ] && fail "a refused run made $W/used-$f/checkpoints"
    done
    # another run directory, the same checkpoint.dir: refused, the checkpoints named
    expect "a new run into a used checkpoint.dir" 2 "checkpoint.dir $ck" "2 checkpoint(s), step_00000008.h5 .. step_00000010.h5" \
        "--force" -- "$E" train --config "$W/tiny.ini" --run-dir "$W/other" "${sets[@]}" \
        --set checkpoint.dir="$ck"
    [ -e "$W/other" ] && fail "a refused run created its run directory"
    # a resume from another run's checkpoint into it would mix the two
    cp "$ck/step_00000010.h5" "$W/elsewhere.h5"
    expect "a resume from elsewhere into a used checkpoint.dir" 2 "holds another run's checkpoints" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/other" "${sets[@]}" --set train.steps=12 \
        --set checkpoint.dir="$ck" --resume "$W/elsewhere.h5"
    diff -r "$W/before" "$W/run" >/dev/null || fail "a refused run changed the run directory"
    expect "--force with --resume" 2 "--force" "--resume" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/run" "${sets[@]}" --force --resume latest

    # --resume latest: the earlier records stay, in front; the new ones follow
    expect "--resume latest" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/run" "${sets[@]}" \
        --set train.steps=14 --resume latest || return
    local n
    n=$(wc -l <"$W/before/metrics.jsonl")
    head -n "$n" "$W/run/metrics.jsonl" | cmp -s - "$W/before/metrics.jsonl" ||
        fail "--resume changed the earlier records of metrics.jsonl"
    [ "$(grep -c '"loss":' "$W/run/metrics.jsonl")" = 14 ] ||
        fail "after --resume, metrics.jsonl should hold 14 step records, has $(grep -c '"loss":' "$W/run/metrics.jsonl")"
    head -c "$(wc -c <"$W/before/samples.txt")" "$W/run/samples.txt" | cmp -s - "$W/before/samples.txt" ||
        fail "--resume changed the earlier samples"
    grep -q '^---- sample at step 14 ' "$W/run/samples.txt" || fail "no sample of step 14 appended"
    # retention counts the resumed run's checkpoints as its own (keep = 2)
    [ "$(cd "$ck" && ls step_*.h5 | tr '\n' ' ')" = "step_00000012.h5 step_00000014.h5 " ] ||
        fail "after --resume with keep = 2, expected steps 12 and 14, found: $(cd "$ck" && ls | tr '\n' ' ')"

    # --force: a new run in place of the old one
    expect "--force" 0 "err:--force: removed 2 checkpoint(s)" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/run" "${sets[@]}" --force || return
    [ "$(grep -c '"loss":' "$W/run/metrics.jsonl")" = 10 ] ||
        fail "--force: metrics.jsonl should hold the new run's 10 step records"
    [ "$(grep -c '"event":"start"' "$W/run/metrics.jsonl")" = 1 ] ||
        fail "--force: metrics.jsonl should hold one start record"
    grep -q '^---- sample at step 14 ' "$W/run/samples.txt" && fail "--force: samples.txt kept the earlier run's"
    [ "$(cd "$ck" && ls step_*.h5 | tr '\n' ' ')" = "step_00000008.h5 step_00000010.h5 " ] ||
        fail "--force: expected only the new run's steps 8 and 10, found: $(cd "$ck" && ls | tr '\n' ' ')"
    [ "$(readlink "$ck/latest")" = step_00000010.h5 ] || fail "--force: latest should name step 10"
    # the new run is the same as the first (same config): its records match
    diff <(losses "$W/before/metrics.jsonl") <(losses "$W/run/metrics.jsonl") >/dev/null ||
        fail "--force: the new run's losses differ from the first run's"
}

# Checkpoints that cannot be written are found before step 1 (exit 1, the
# directory named), not at the first save, even with checkpoint.every = 0:
# a checkpoint.dir under a regular file, on a read-only file system, and on
# a file system too small for one checkpoint. With checkpoint.on_error =
# continue it is a warning and training goes on. Under mpirun every rank
# exits with the same code and rank 0 names the directory.
case_checkpoint_dir_checks() {
    need_mpirun
    make_data
    write_config "$W/tiny.ini"
    # (200 steps: a run that wrongly trains ends, and fails, in seconds)
    local sets=(--set checkpoint.every=0 --set train.steps=200 --set eval.every=0 --set sample.tokens=0)
    : >"$W/file"
    expect "checkpoint.dir under a regular file" 1 "$W/file/ck" "checked before step 1" "checkpoint.dir" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/r1" "${sets[@]}" --set checkpoint.dir="$W/file/ck"
    [ -e "$W/r1/metrics.jsonl" ] && fail "a run whose checkpoints cannot be written trained"
    expect "the run directory under a regular file" 1 "$W/file/run/checkpoints" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/file/run" "${sets[@]}"
    [ -f "$W/file" ] && [ ! -s "$W/file" ] || fail "the regular file $W/file was changed"
    expect "on_error = continue: a warning, training goes on" 0 "err:checkpoints will fail, training goes on" \
        "err:checkpoint at step 3 failed, training goes on" -- "$E" train --config "$W/tiny.ini" \
        --run-dir "$W/r2" --set train.steps=3 --set train.warmup_steps=1 --set checkpoint.dir="$W/file/ck" --set checkpoint.on_error=continue
    [ "$(grep -c '"loss":' "$W/r2/metrics.jsonl" 2>/dev/null)" = 3 ] || fail "on_error = continue: expected 3 step records"

    mkdir -p "$W/mnt"
    if [ "$(id -u)" != 0 ] || ! mount -t tmpfs -o size=4m tmpfs "$W/mnt" 2>/dev/null; then
        echo "    (no tmpfs could be mounted here: the full and read-only file systems were not tested)"
        return
    fi
    # the tiny model's checkpoint: 0.45 MB of params and two moments, taken
    # with HDF5's metadata and a margin as about 2 MB, does not fit in the
    # 1 MB that 3 MB of filler leave
    head -c 3145728 /dev/zero >"$W/mnt/filler"
    expect "checkpoint.dir on a full file system, checkpoint.every = 0" 1 "$W/mnt/ck" \
        "not enough space for a checkpoint" "the file system has" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/r3" "${sets[@]}" --set checkpoint.dir="$W/mnt/ck"
    [ -e "$W/r3/metrics.jsonl" ] && fail "a run whose checkpoint does not fit trained"
    rm -f "$W/mnt/filler"
    expect "the same with room" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/r4" \
        --set train.steps=2 --set train.warmup_steps=1 --set checkpoint.dir="$W/mnt/ck"
    [ "$(readlink "$W/mnt/ck/latest")" = step_00000002.h5 ] || fail "the run with room saved no checkpoint"
    mount -o remount,ro "$W/mnt" || { umount "$W/mnt"; fail "cannot remount the tmpfs read-only"; return; }
    expect "checkpoint.dir on a read-only file system" 1 "$W/mnt/new" "Read-only file system" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/r5" "${sets[@]}" --set checkpoint.dir="$W/mnt/new"
    # two ranks: both exit 1, rank 0 names the directory, none trains
    LAST_CMD="mpirun -np 2 entente train, checkpoint.dir read-only"
    timeout 120 "${MPIRUN[@]}" -np 2 bash -c '"$0" "$@"; echo "rank $OMPI_COMM_WORLD_RANK exit $?" >>"'"$W"'/codes"' \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/r6" "${sets[@]}" --set checkpoint.dir="$W/mnt/new" \
        >"$W/out" 2>"$W/err"
    RC=$?
    umount "$W/mnt"
    [ "$(sort "$W/codes" 2>/dev/null | tr '\n' ' ')" = "rank 0 exit 1 rank 1 exit 1 " ] ||
        { fail "2 ranks: expected both to exit 1, got: $(tr '\n' ' ' <"$W/codes" 2>/dev/null)"; show_last; }
    grep -q "^entente\[0\]: error: .*$W/mnt/new.*Read-only file system" "$W/err" ||
        { fail "2 ranks: rank 0 does not name the read-only directory"; show_last; }
    [ -e "$W/r6/metrics.jsonl" ] && fail "2 ranks: a run whose checkpoints cannot be written trained"
}

# A full disk: metrics.jsonl or samples.txt on /dev/full during training, and a
# file-size limit (ulimit -f) for data prepare. Each is a clean error naming the file;
# prepare leaves no shard behind.
case_disk_full() {
    make_data
    write_config "$W/tiny.ini"
    # (--force: a run directory that holds a metrics.jsonl holds a run)
    mkdir -p "$W/run"
    ln -s /dev/full "$W/run/metrics.jsonl"
    expect "train with metrics.jsonl on a full disk" 1 "metrics.jsonl" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/run" --force
    mkdir -p "$W/big"
    head -c 3000000 /dev/urandom >"$W/big/input.bin"
    expect "data prepare beyond the file-size limit" 1 "$W/big/out/train_000000.bin" -- \
        bash -c 'ulimit -f 1000 && exec "$0" data prepare --input "$1" --output "$2"' \
        "$E" "$W/big/input.bin" "$W/big/out"
    no_shards "data prepare beyond the file-size limit" "$W/big/out"
    # (training is not run under a small ulimit -f: MPI's own start-up needs
    # files of several MB and fails before entente runs)
    mkdir -p "$W/run3"
    ln -s /dev/full "$W/run3/samples.txt"
    expect "train with samples.txt on a full disk" 1 "samples.txt" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/run3" --force
}

case_out_of_memory() {
    make_data
    write_config "$W/tiny.ini"
    expect "a model far too big" 1 "not enough memory" -- \
        "$E" train --config "$W/tiny.ini" --set model.width=65536 --set model.layers=1024 \
        --set model.heads=64 --run-dir "$W/run"
    local cores
    cores=$(find "$W" -maxdepth 1 -name 'core*' | head -1)
    [ -z "$cores" ] || fail "a core file was left: $cores"
    grep -qiE 'segmentation|aborted|core dumped' "$W/err" && fail "stderr reports a crash"
    [ -e "$W/run" ] && fail "the failed run created its run directory"
}

# check_run DESC RUN_DIR STDOUT: the files and records of the tiny run
check_run() {
    local desc=$1 run=$2 out=$3 f
    for f in metrics.jsonl config.ini run.json samples.txt; do
        [ -s "$run/$f" ] || fail "$desc: $run/$f is missing or empty"
    done
    [ -s "$run/metrics.jsonl" ] || return
    local m=$run/metrics.jsonl
    # one train record per step 1..30, with every field
    local bad
    bad=$(awk '
        /"loss":/ {
            if (!match($0, /"step":[0-9]+/)) { print "no step: " $0; next }
            s = substr($0, RSTART + 7, RLENGTH - 7) + 0
            seen[s]++
            n = split("loss lr grad_norm tokens_per_s", k, " ")
            for (i = 1; i <= n; i++)
                if ($0 !~ ("\"" k[i] "\":-?[0-9]")) print "step " s ": no numeric " k[i]
        }
        END {
            for (s = 1; s <= 30; s++) if (seen[s] != 1) print "step " s ": " (seen[s] + 0) " train records"
            for (s in seen) if (s + 0 < 1 || s + 0 > 30) print "unexpected train record for step " s
        }' "$m")
    [ -z "$bad" ] || { fail "$desc: metrics.jsonl train records:"; printf '%s\n' "$bad" | head -10 | sed 's/^/      /'; }
    local vsteps
    vsteps=$(sed -n 's/^{"step":\([0-9]*\),"val_loss":[0-9].*/\1/p' "$m" | tr '\n' ' ')
    [ "$vsteps" = "0 10 20 30 " ] ||
        fail "$desc: expected val_loss records at steps 0 10 20 30, found at: '$vsteps'"
    local first last
    first=$(sed -n 's/^{"step":1,.*"loss":\([-0-9.e+]*\).*/\1/p' "$m")
    last=$(sed -n 's/^{"step":30,.*"loss":\([-0-9.e+]*\).*/\1/p' "$m")
    if [ -z "$first" ] || [ -z "$last" ]; then
        fail "$desc: no loss at step 1 or 30 in metrics.jsonl"
    elif ! awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }'; then
        fail "$desc: the loss did not fall: step 1 $first, step 30 $last"
    fi
    # warm-up reaches the peak learning rate at step 5
    grep -qE '^\{"step":5,.*"lr":0\.003[,}]' "$m" ||
        fail "$desc: step 5 (end of warm-up) should have lr 0.003: $(grep '^{"step":5,' "$m" | grep lr)"
    grep -qE '^step +1/30 \| loss [0-9.]+ \| lr ' "$out" || fail "$desc: no progress line for step 1 on stdout"
    grep -qE '^step +30/30 \| loss [0-9.]+ \| lr ' "$out" || fail "$desc: no progress line for step 30 on stdout"
    grep -qE '^step +30/30 \| val loss [0-9.]+' "$out" || fail "$desc: no val loss line for step 30 on stdout"
    grep -q '^---- sample at step 30 ' "$out" || fail "$desc: no sample on stdout"
    grep -q '^---- sample at step 30 ' "$run/samples.txt" || fail "$desc: no sample in samples.txt"
}

case_train_tiny() {
    make_data
    write_config "$W/tiny.ini"
    expect "train the tiny config" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/run" || return
    cp "$W/out" "$W/train.out"
    check_run "train_tiny" "$W/run" "$W/train.out"
    grep -q '"world_size":1' "$W/run/run.json" || fail "run.json lacks \"world_size\":1"
    # the run's config.ini is the effective config and loads again
    expect "print the tiny config" 0 -- "$E" train --config "$W/tiny.ini" --print-config
    cp "$W/out" "$W/p1.ini"
    expect "load the run's config.ini" 0 -- "$E" train --config "$W/run/config.ini" --print-config
    cmp -s "$W/p1.ini" "$W/out" || fail "run/config.ini does not load as the run's configuration"
    # OpenBLAS on its pre-AVX2 kernels (what a release that does not know the
    # CPU picks) is named, with the fix; on its AVX2 kernels it is not (the
    # build needs AVX2, so every machine running it has it)
    local short=(train --config "$W/tiny.ini" --set train.steps=5 --set sample.tokens=0)
    expect "train on OpenBLAS's Prescott kernels" 0 -- \
        env OPENBLAS_CORETYPE=Prescott "$E" "${short[@]}" --run-dir "$W/prescott" || return
    grep -q 'warning: OpenBLAS runs its Prescott kernels.*OPENBLAS_CORETYPE=' "$W/err" ||
        fail "no warning about OpenBLAS's Prescott kernels on an AVX2 machine"
    expect "train on OpenBLAS's Haswell kernels" 0 -- \
        env OPENBLAS_CORETYPE=Haswell "$E" "${short[@]}" --run-dir "$W/haswell" || return
    grep -q 'OPENBLAS_CORETYPE' "$W/err" && fail "a warning about OpenBLAS's kernels on its Haswell kernels"
}

# Two runs of the same configuration give the same losses to the last bit; a
# different seed gives different ones; accumulating micro-batches of 4 or 2
# reproduces the batch of 8 within float rounding (1e-4 relative).
case_train_reproducible() {
    make_data
    write_config "$W/tiny.ini"
    local run
    for run in a b; do
        expect "tiny run $run" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/$run" \
            --set sample.tokens=0 || return
        losses "$W/$run/metrics.jsonl" >"$W/$run.loss"
    done
    [ "$(wc -l <"$W/a.loss")" = 30 ] || fail "expected 30 losses, got $(wc -l <"$W/a.loss")"
    cmp -s "$W/a.loss" "$W/b.loss" || {
        fail "two runs of the same configuration gave different losses:"
        diff "$W/a.loss" "$W/b.loss" | head -6 | sed 's/^/      /'
    }
    expect "tiny run, another seed" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/c" \
        --set sample.tokens=0 --set train.seed=99 || return
    losses "$W/c/metrics.jsonl" >"$W/c.loss"
    cmp -s "$W/a.loss" "$W/c.loss" && fail "train.seed=99 gave the same losses as the default seed"
    local micro
    for micro in 4 2; do
        expect "tiny run, micro_batch $micro" 0 -- "$E" train --config "$W/tiny.ini" \
            --run-dir "$W/m$micro" --set sample.tokens=0 --set train.micro_batch=$micro || return
        grep -q "\"grad_accum\":$((8 / micro))" "$W/m$micro/run.json" ||
            fail "micro_batch $micro: run.json does not record $((8 / micro)) accumulation steps"
        losses "$W/m$micro/metrics.jsonl" >"$W/m$micro.loss"
        paste "$W/a.loss" "$W/m$micro.loss" | awk -v m="$micro" '
            { d = $1 - $2; if (d < 0) d = -d; if (d > 1e-4 * $1) { bad = 1; print "      step " NR ": " $1 " vs " $2 } }
            END { exit bad }' || fail "micro_batch $micro (accumulation) departs from the single batch"
    done
}

case_train_mpirun() {
    need_mpirun
    make_data
    write_config "$W/tiny.ini"
    expect "mpirun -np 1 entente train" 0 -- \
        timeout 60 "${MPIRUN[@]}" -np 1 "$E" train --config "$W/tiny.ini" --run-dir "$W/run1"
    cp "$W/out" "$W/train.out"
    [ "$RC" = 0 ] && check_run "mpirun -np 1" "$W/run1" "$W/train.out"
    # layouts that cannot work are refused on every rank, before any work, without a hang
    expect "mpirun -np 3 with parallel.tp=2" 2 "does not divide the world size 3" -- \
        timeout 60 "${MPIRUN[@]}" -np 3 "$E" train --config "$W/tiny.ini" --run-dir "$W/run2" \
        --set parallel.tp=2 --set model.heads=2
    [ "$(grep -c 'does not divide the world size' "$W/err")" = 3 ] ||
        fail "mpirun -np 3 with parallel.tp=2: expected the error from each of the 3 ranks"
    expect "mpirun -np 3, batch of 8" 2 "not divisible by the 3 data-parallel ranks" -- \
        timeout 60 "${MPIRUN[@]}" -np 3 "$E" train --config "$W/tiny.ini" --run-dir "$W/run3"
    expect "ranks with different configurations" 2 "do not run the same configuration" -- \
        timeout 60 "${MPIRUN[@]}" -np 1 "$E" train --config "$W/tiny.ini" --run-dir "$W/run4" : \
        -np 1 "$E" train --config "$W/tiny.ini" --run-dir "$W/run4" --set train.lr=0.001
    local d
    for d in run2 run3 run4; do
        [ -e "$W/$d/metrics.jsonl" ] && fail "$d: a run that refused to start wrote metrics"
    done
}

# parallel_case NP SETTINGS...: the tiny model trained on NP ranks with the
# same global batch reproduces the single-rank losses, validation losses and
# gradient norms within 1e-5 relative, every DP replica ends with identical
# parameters, and the run records its topology. The model settings in the
# array PARALLEL_MODEL (none: the tiny GPT-2) apply to both runs.
PARALLEL_MODEL=()
parallel_case() {
    need_mpirun
    local np=$1
    shift
    make_data
    write_config "$W/tiny.ini"
    sed -i 's/^heads = 2/heads = 4/' "$W/tiny.ini"
    local sets=(--set sample.tokens=8 --set train.steps=20 --set eval.every=5)
    local s
    for s in "${PARALLEL_MODEL[@]}"; do sets+=(--set "$s"); done
    local nref=${#sets[@]}
    for s in "$@"; do sets+=(--set "$s"); done
    expect "single-rank reference" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/ref" \
        "${sets[@]:0:$nref}" || return
    expect "mpirun -np $np, $*" 0 -- timeout 120 "${MPIRUN[@]}" -np "$np" "$E" train \
        --config "$W/tiny.ini" --run-dir "$W/par" "${sets[@]}" || return
    local kind
    for kind in loss val_loss grad_norm; do
        sed -n "s/.*\"$kind\":\\([^,}]*\\).*/\\1/p" "$W/ref/metrics.jsonl" >"$W/ref.$kind"
        sed -n "s/.*\"$kind\":\\([^,}]*\\).*/\\1/p" "$W/par/metrics.jsonl" >"$W/par.$kind"
        [ -s "$W/ref.$kind" ] || fail "no $kind in the reference metrics"
        paste "$W/ref.$kind" "$W/par.$kind" | awk -v kind="$kind" '
            { n++; d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1 || $2 == "") { bad = 1; print "      " kind " " n ": " $1 " vs " $2 } }
            END { exit bad }' || fail "$np ranks ($*): the $kind curve departs from the single rank"
        [ "$(wc -l <"$W/ref.$kind")" = "$(wc -l <"$W/par.$kind")" ] ||
            fail "$np ranks ($*): a different number of $kind records"
    done
    grep -q '"event":"end","step":20,"reason":"completed","replicas_identical":true' \
        "$W/par/metrics.jsonl" || fail "$np ranks ($*): no end record with identical replicas"
    grep -q "\"world_size\":$np," "$W/par/run.json" || fail "run.json does not record $np ranks"
    grep -q '^{"event":"start","world_size":'"$np"',' "$W/par/metrics.jsonl" ||
        fail "metrics.jsonl does not start with the topology"
}

case_parallel_dp2() { parallel_case 2; }
case_parallel_tp2() { parallel_case 2 parallel.tp=2; }
case_parallel_zero() { parallel_case 2 parallel.zero=1; }
case_parallel_dp2_tp2() { parallel_case 4 parallel.tp=2; }
case_parallel_accum_zero() { parallel_case 4 parallel.zero=1 train.micro_batch=1; }

# The same equivalences for a tiny llama: 4 heads sharing 2 KV heads
# (grouped-query attention), Llama 3's frequency bands over a short original
# context (every band inside a head of 8), an untied lm_head. TP = 2 splits
# the KV heads; with one KV head (multi-query) TP = 2 replicates K and V; TP
# = 4 over 2 KV heads replicates them with each rank's query head starting
# inside a group.
LLAMA=(model.arch=llama model.n_kv_heads=2 model.rope_scaling=llama3 model.rope_original_context=16)
case_parallel_llama_dp2() { PARALLEL_MODEL=("${LLAMA[@]}"); parallel_case 2; }
case_parallel_llama_tp2() { PARALLEL_MODEL=("${LLAMA[@]}"); parallel_case 2 parallel.tp=2; }
case_parallel_llama_tp2_kv_replicated() {
    PARALLEL_MODEL=(model.arch=llama model.n_kv_heads=1 model.rope_scaling=llama3
                    model.rope_original_context=16)
    parallel_case 2 parallel.tp=2
}
case_parallel_llama_tp4() { PARALLEL_MODEL=("${LLAMA[@]}"); parallel_case 4 parallel.tp=4; }
case_parallel_llama_zero() { PARALLEL_MODEL=("${LLAMA[@]}"); parallel_case 2 parallel.zero=1; }

# A rank killed mid-run: mpirun ends the whole job, non-zero, within seconds.
case_rank_dies() {
    need_mpirun
    make_data
    write_config "$W/tiny.ini"
    timeout 120 "${MPIRUN[@]}" -np 2 "$E" train --config "$W/tiny.ini" --run-dir "$W/run" \
        --set train.steps=1000000 --set eval.every=0 >"$W/out" 2>"$W/err" &
    local job=$!
    wait_for_step "$W/run/metrics.jsonl" 3 60 || { fail "the run did not reach step 3"; kill $job; return; }
    local victim
    victim=$(rank_pid 1) || { fail "cannot find rank 1"; kill $job; return; }
    local t0=$SECONDS
    kill -9 "$victim"
    wait $job
    RC=$?
    LAST_CMD="mpirun -np 2 entente train, rank 1 killed"
    [ "$RC" != 0 ] || fail "the job exited 0 after rank 1 was killed"
    [ "$RC" != 124 ] || fail "the job hung after rank 1 was killed (stopped by timeout)"
    [ $((SECONDS - t0)) -le 30 ] || fail "the job took $((SECONDS - t0)) s to end after rank 1 died"
}

# A rank that hangs (SIGSTOP): the others give up after parallel.timeout with
# exit code 3 and a message naming the collective.
case_rank_hangs() {
    need_mpirun
    make_data
    write_config "$W/tiny.ini"
    timeout 120 "${MPIRUN[@]}" -np 2 "$E" train --config "$W/tiny.ini" --run-dir "$W/run" \
        --set train.steps=1000000 --set eval.every=0 --set parallel.timeout=3 >"$W/out" 2>"$W/err" &
    local job=$!
    wait_for_step "$W/run/metrics.jsonl" 3 60 || { fail "the run did not reach step 3"; kill $job; return; }
    local victim
    victim=$(rank_pid 1) || { fail "cannot find rank 1"; kill $job; return; }
    local t0=$SECONDS
    kill -STOP "$victim"
    wait $job
    RC=$?
    kill -9 "$victim" 2>/dev/null
    LAST_CMD="mpirun -np 2 entente train --set parallel.timeout=3, rank 1 stopped"
    [ "$RC" != 0 ] || fail "the job exited 0 while rank 1 hung"
    [ "$RC" != 124 ] || { fail "the job hung while rank 1 was stopped"; show_last; }
    grep -q 'entente\[0\]: error: .* on .* has not completed after 3 s' "$W/err" ||
        { fail "rank 0 did not report the stalled collective"; show_last; }
    [ $((SECONDS - t0)) -le 30 ] || fail "the job took $((SECONDS - t0)) s to end (timeout 3 s)"
}

# SIGTERM (Slurm's preemption) or SIGUSR1 (--signal) stops the run after the
# current step with exit code 75; under mpirun a signal to one rank stops all.
case_signal_stop() {
    need_mpirun
    make_data
    write_config "$W/tiny.ini"
    local long=(--set train.steps=1000000 --set eval.every=0)
    "$E" train --config "$W/tiny.ini" --run-dir "$W/one" "${long[@]}" >"$W/out" 2>"$W/err" &
    local job=$!
    sigterm_at_step $job "$W/one/metrics.jsonl" 3
    grep -q '^entente: stopped by SIGTERM after step [0-9]*' "$W/err" || { fail "SIGTERM: no stop message"; show_last; }
    grep -q 'error' "$W/err" && { fail "SIGTERM: a clean stop printed an error"; show_last; }
    grep -q '"event":"end","step":[0-9]*,"reason":"signal"' "$W/one/metrics.jsonl" ||
        fail "SIGTERM: no end record with reason signal"

    timeout 120 "${MPIRUN[@]}" -np 2 "$E" train --config "$W/tiny.ini" --run-dir "$W/two" \
        "${long[@]}" >"$W/out" 2>"$W/err" &
    job=$!
    wait_for_step "$W/two/metrics.jsonl" 3 60 || { fail "the 2-rank run did not reach step 3"; kill $job; return; }
    kill -USR1 "$(rank_pid 1)"
    wait $job
    RC=$?
    LAST_CMD="mpirun -np 2 entente train, SIGUSR1 to rank 1"
    [ "$RC" = 75 ] || { fail "SIGUSR1 to rank 1: expected exit code 75, got $RC"; show_last; }
    grep -q '"event":"end","step":[0-9]*,"reason":"signal","replicas_identical":true' \
        "$W/two/metrics.jsonl" || fail "SIGUSR1: the ranks did not stop together with identical replicas"
}

# ---------------------------------------------------------------------------

# entente eval gives a checkpoint's validation loss without training: the
# loss its run logged at that step (same set, same chunks), for the last step
# and for the step-0 checkpoint that checkpoint.at_start saves; bad arguments
# are usage errors. A warm-up longer than a short run is lowered, with a
# warning naming the key, instead of refusing the run. An unknown backend is
# refused, naming the ones this build has.
case_eval_checkpoint() {
    make_data
    write_config "$W/tiny.ini"
    expect "train with checkpoint.at_start" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/run" \
        --set sample.tokens=0 --set checkpoint.at_start=true || return
    local ck="$W/run/checkpoints"
    [ -f "$ck/step_00000000.h5" ] || { fail "checkpoint.at_start saved no step_00000000.h5"; return; }
    expect "verify the step-0 checkpoint" 0 -- "$E" ckpt verify "$ck/step_00000000.h5"
    local step logged got
    for step in 0 30; do
        logged=$(sed -n "s/.*\"step\":$step,\"val_loss\":\([^,}]*\).*/\1/p" "$W/run/metrics.jsonl" | tail -1)
        [ -n "$logged" ] || { fail "no val_loss logged at step $step"; continue; }
        expect "eval the step-$step checkpoint" 0 -- "$E" eval --checkpoint "$(printf '%s/step_%08d.h5' "$ck" "$step")" || continue
        got=$(sed -n 's/^val loss \([0-9.]*\) over 16 sequences .*/\1/p' "$W/out")
        [ -n "$got" ] || { fail "eval printed no 'val loss X over 16 sequences': $(cat "$W/out")"; continue; }
        awk -v a="$got" -v b="$logged" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5) }' ||
            fail "eval of step $step gives $got, the run logged $logged"
    done
    # the last checkpoint through its directory, fewer batches, another data dir
    expect "eval one batch" 0 out:"over 8 sequences" -- "$E" eval --checkpoint "$ck" --batches 1
    expect "eval --data" 0 out:"from $DATA" -- "$E" eval --checkpoint "$ck" --data "$DATA"
    expect "eval without --checkpoint" 2 "--checkpoint FILE is required" -- "$E" eval --batches 2
    expect "eval --batches 0" 2 "--batches '0' is not an integer in 1..1000000" -- \
        "$E" eval --checkpoint "$ck" --batches 0
    expect "eval --batches x" 2 "--batches 'x' is not an integer" -- "$E" eval --checkpoint "$ck" --batches x
    expect "eval an unknown option" 2 "unknown argument '--nope'" -- "$E" eval --checkpoint "$ck" --nope 1
    expect "eval a missing checkpoint" 1 "cannot open checkpoint $W/none.h5" -- \
        "$E" eval --checkpoint "$W/none.h5"
    mkdir -p "$W/empty"
    expect "eval on a directory without validation shards" 1 "no validation shards match $W/empty/" -- \
        "$E" eval --checkpoint "$ck" --data "$W/empty"
    # warm-up longer than the run: lowered to a tenth of it, with a warning
    expect "a short run of a long warm-up" 0 \
        err:"train.warmup_steps = 100 exceeds train.steps = 20: warming up over 2 step(s)" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/short" --set train.warmup_steps=100 \
        --set train.steps=20 --set sample.tokens=0 --set eval.every=0
    grep -q '^warmup_steps = 2$' "$W/short/config.ini" || fail "config.ini does not hold the lowered warm-up"
    expect "an unknown backend" 2 \
        "system.backend = 'gpu9000': unknown backend 'gpu9000' (this build has: cpu, cpu-guarded" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/g" --set system.backend=gpu9000
    # precision: a name it does not know, and bf16 on a backend that computes in f32
    expect "an unknown precision" 2 \
        "system.precision = 'fp8': expected auto, f32 or bf16" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/g" --set system.precision=fp8
    local b
    for b in cpu cpu-guarded; do
        expect "bf16 on $b" 2 \
            "system.precision = bf16 needs system.backend = cuda (or auto on a GPU): backend '$b' computes in f32 only" -- \
            "$E" train --config "$W/tiny.ini" --run-dir "$W/g" --set system.precision=bf16 \
            --set system.backend=$b
    done
    [ -e "$W/g" ] && fail "a refused precision left a run directory"
}

# A llama's checkpoint: it verifies, `entente eval` gives the validation loss
# its run logged, `entente sample` generates from it (and its logits are the
# run's), it exports and imports back, resuming it continues the run, and a
# resume as another model (GPT-2,
# or other llama keys) is refused naming the difference. The llama keys are
# refused for a GPT-2, and llama shapes that cannot work are named.
case_llama_checkpoint() {
    make_data
    write_config "$W/tiny.ini"
    local llama=(--set model.arch=llama --set model.heads=4 --set model.n_kv_heads=2
                 --set model.rope_theta=500000 --set model.rope_scaling=llama3
                 --set model.rope_original_context=16 --set checkpoint.every=10)
    expect "train a tiny llama" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/run" \
        --set sample.tokens=0 "${llama[@]}" || return
    local ck="$W/run/checkpoints"
    expect "verify the llama checkpoint" 0 "out:ok: step 30" -- "$E" ckpt verify "$ck/latest"
    # embed_tokens, 9 tensors in each of 2 layers, norm, lm_head
    expect "ckpt info names the architecture" 0 "out:model.architecture       llama" \
        "out:/params   21 tensors" "out:arch = llama" -- "$E" ckpt info "$ck/latest"
    if command -v h5ls >/dev/null 2>&1; then
        h5ls "$ck/latest/params" 2>/dev/null | grep -q '^model.layers.1.self_attn.k_proj.weight .*{16, 32}' ||
            fail "h5ls finds no /params/model.layers.1.self_attn.k_proj.weight of shape {16, 32}"
    fi
    local logged got
    logged=$(sed -n 's/.*"step":30,"val_loss":\([^,}]*\).*/\1/p' "$W/run/metrics.jsonl" | tail -1)
    expect "eval the llama checkpoint" 0 -- "$E" eval --checkpoint "$ck/latest" || return
    got=$(sed -n 's/^val loss \([0-9.]*\) over 16 sequences .*/\1/p' "$W/out")
    [ -n "$got" ] && [ -n "$logged" ] || { fail "no val loss from eval ($got) or the run ($logged)"; return; }
    awk -v a="$got" -v b="$logged" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5) }' ||
        fail "eval of the llama checkpoint gives $got, the run logged $logged"
    expect "sample the llama checkpoint" 0 -- "$E" sample --checkpoint "$ck/latest" --tokens 20 \
        --temperature 0 --prompt "And God said"
    [ -s "$W/out" ] || fail "sample printed nothing"
    expect "export a llama" 0 "out:model.safetensors (21 tensors" -- \
        "$E" ckpt export "$ck/latest" --format safetensors --out "$W/exported"
    grep -q '"model_type":[[:space:]]*"llama"' "$W/exported/config.json" ||
        fail "the export's config.json is not a llama's"
    expect "import the export" 0 "out:Llama, 2 layers" -- \
        "$E" ckpt import --from "$W/exported" --out "$W/reimported.h5"
    # resuming step 10 continues the uninterrupted run bit for bit
    expect "resume the llama at step 10" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/res" \
        --set sample.tokens=0 "${llama[@]}" --resume "$ck/step_00000010.h5" || return
    same_curve "llama resumed at 10" "$W/run/metrics.jsonl" "$W/res/metrics.jsonl" 11 30 0
    expect "resume the llama as a GPT-2" 2 "holds another model than this run trains: model.arch: checkpoint llama, this run gpt2" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/g" --set model.heads=4 --resume "$ck/latest"
    expect "resume the llama with another rope_theta" 2 "the llama keys differ" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/t" "${llama[@]}" \
        --set model.rope_theta=10000 --resume "$ck/latest"
    expect "a GPT-2 with n_kv_heads" 2 "model.n_kv_heads applies to model.arch = llama only" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/x" --set model.n_kv_heads=2 --print-config
    expect "an unknown architecture" 2 "model.arch = 'mamba': expected gpt2 or llama" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/x" --set model.arch=mamba --print-config
    expect "KV heads that do not divide the heads" 2 "model.n_kv_heads = 3 does not divide model.heads = 4" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/x" "${llama[@]}" --set model.n_kv_heads=3 --print-config
    expect "an odd head size" 2 "must be even" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/x" "${llama[@]}" --set model.width=36 --print-config
    expect "llama3 bands the wrong way round" 2 "model.rope_high_freq_factor = 1 must exceed model.rope_low_freq_factor = 2" -- \
        "$E" train --config "$W/tiny.ini" --run-dir "$W/x" "${llama[@]}" \
        --set model.rope_low_freq_factor=2 --set model.rope_high_freq_factor=1 --print-config
}

# docs/data.md's description of the data order, run as written (Python),
# gives the sequences the code takes: several sizes (powers of 4 and not,
# where cycle-walking matters), seeds, and positions across epochs.
case_data_order_docs() {
    local py=""
    for cand in /usr/bin/python3 python3; do
        command -v "$cand" >/dev/null 2>&1 && { py=$cand; break; }
    done
    [ -n "$py" ] || { echo "SKIP: no python3 to run docs/data.md's description"; exit 77; }
    local order="$(dirname "$E")/tests/test_data"
    [ -x "$order" ] || { fail "no $order"; return; }
    awk '/^```python/{f=1;next} /^```/{if(f){exit}} f' "$SRC/docs/data.md" >"$W/order.py"
    grep -q 'def permute' "$W/order.py" || { fail "docs/data.md has no python block with permute"; return; }
    cat >>"$W/order.py" <<'PY'
import sys
n, seed, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
key = data_order_key(seed)
for p in range(count):
    print(permute(p % n, n, key, p // n))
PY
    local n seed
    for n in 1 2 5 16 17 1000 5698; do
        for seed in 0 1337 18446744073709551615; do
            "$order" --order "$n" "$seed" $((3 * n + 5)) >"$W/c.txt"
            "$py" "$W/order.py" "$n" "$seed" $((3 * n + 5)) >"$W/p.txt" ||
                { fail "docs/data.md's python failed for n=$n seed=$seed"; return; }
            cmp -s "$W/c.txt" "$W/p.txt" ||
                fail "docs/data.md's order differs from the code's for n=$n seed=$seed"
        done
    done
}

# Nothing outside the backend touches its memory: on the cpu-guarded backend
# (every buffer PROT_NONE outside its own calls, so a host access faults) a
# run trains, evaluates, samples, saves, resumes, and runs DP, TP and ZeRO-1
# over staged MPI groups, giving the cpu backend's losses bit for bit and
# checkpoints that verify and sample alike.
case_guarded_backend() {
    need_mpirun
    make_data
    write_config "$W/tiny.ini"
    local common=(--set train.steps=12 --set eval.every=6 --set checkpoint.every=6 --set sample.tokens=16)
    local guarded=(--set system.backend=cpu-guarded) b
    for b in cpu guarded; do
        local extra=()
        [ "$b" = guarded ] && extra=("${guarded[@]}")
        expect "one rank, $b" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/$b" "${common[@]}" "${extra[@]}" || return
        grep -o '"\(loss\|val_loss\)":[^,]*' "$W/$b/metrics.jsonl" >"$W/$b.loss"
        expect "verify the $b checkpoint" 0 -- "$E" ckpt verify "$W/$b/checkpoints/latest"
        expect "sample the $b checkpoint" 0 -- "$E" sample --checkpoint "$W/$b/checkpoints/latest" \
            --temperature 0 --tokens 24
        cp "$W/out" "$W/$b.sample"
    done
    [ "$(wc -l <"$W/cpu.loss")" -ge 14 ] || fail "expected 12 losses and 3 val losses in $W/cpu.loss"
    cmp -s "$W/cpu.loss" "$W/guarded.loss" || fail "cpu-guarded trained other losses than cpu"
    cmp -s "$W/cpu.sample" "$W/guarded.sample" || fail "the cpu-guarded checkpoint samples other text"
    # resume the step-6 checkpoint on the guarded backend: the uninterrupted losses
    expect "guarded, resumed from step 6" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/gr" \
        "${common[@]}" "${guarded[@]}" --resume "$W/guarded/checkpoints/step_00000006.h5" || return
    [ "$(losses "$W/gr/metrics.jsonl" | tail -6)" = "$(losses "$W/cpu/metrics.jsonl" | tail -6)" ] ||
        fail "a guarded run resumed at step 6 did not continue the cpu run's losses"
    # several ranks: DP, TP, ZeRO-1 over staged groups
    local lay
    for lay in dp:"" tp:"--set parallel.tp=2" zero:"--set parallel.zero=1"; do
        local name=${lay%%:*} args=() l
        [ -n "${lay#*:}" ] && read -r -a args <<<"${lay#*:}"
        for l in cpu guarded; do
            local extra=()
            [ "$l" = guarded ] && extra=("${guarded[@]}")
            timeout 180 "${MPIRUN[@]}" -np 2 "$E" train --config "$W/tiny.ini" --run-dir "$W/$name-$l" \
                "${common[@]}" "${args[@]}" "${extra[@]}" >"$W/out" 2>"$W/err" ||
                { fail "2 ranks ($name), $l: exit $?"; sed 's/^/      /' "$W/err" | tail -5; return; }
        done
        [ -n "$(losses "$W/$name-cpu/metrics.jsonl")" ] || fail "no losses from 2 ranks ($name)"
        [ "$(losses "$W/$name-cpu/metrics.jsonl")" = "$(losses "$W/$name-guarded/metrics.jsonl")" ] ||
            fail "2 ranks ($name): cpu-guarded trained other losses than cpu"
    done
}

run_case
