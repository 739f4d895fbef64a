#!/usr/bin/env bash
# launch_test.sh: the local coalition's script (launch/coalition.sh) and its
# helper (launch/coalition_tool.py), without running a coalition: one named
# case per call.
#
#   launch_test.sh ENTENTE_BINARY SOURCE_DIR CASE
#
# args     --help, and every malformed argument refused with exit code 2 and a
#          message naming it, before anything is prepared or started
# columns  metrics.jsonl to columns: step records, round records with
#          val_loss, nulls, missing fields, text, booleans, non-finite numbers
#          and a line cut short skipped (the last with a warning)
# split    the training tokens of shards prepared by `entente data prepare`
#          cut into parts that are disjoint, cut at line ends, and hold every
#          training byte once and no validation byte; striped parts each
#          spanning the whole text; bad shards refused
# plot     --plot RUN_DIR draws a PNG from handmade metrics; a run with no
#          records and a machine without gnuplot give no loss.png, exit 0
#
# Exit status: 0 pass, 1 fail, 77 when the case cannot run here (no python3,
# no gnuplot for the plot case).

# shellcheck source=cli_lib.sh
. "$(dirname "$0")/cli_lib.sh"

COALITION=$SRC/launch/coalition.sh
TOOL=$SRC/launch/coalition_tool.py

need_python3() {
    command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 is not installed"; exit 77; }
}

# ---------------------------------------------------------------------------
# cases

case_args() {
    expect "--help" 0 "out:Usage: launch/coalition.sh" out:--sites out:--set out:--plot -- \
        bash "$COALITION" --help
    expect "-h" 0 "out:Usage: launch/coalition.sh" -- bash "$COALITION" -h
    local bad
    for bad in 0 9 -1 x 3x "" 1.5 99999999999999999999; do
        expect "--sites '$bad'" 2 --no-error-line \
            "err:coalition: error: --sites '$bad': the number of sites must be an integer from 1 to 8" -- \
            bash "$COALITION" --sites "$bad"
    done
    expect "--sites=0" 2 --no-error-line "err:--sites '0'" -- bash "$COALITION" --sites=0
    expect "--sites without a value" 2 --no-error-line "err:--sites needs a value" -- \
        bash "$COALITION" --sites
    expect "--set without a value" 2 --no-error-line "err:--set needs a value" -- \
        bash "$COALITION" --set
    local s
    for s in foo coalition.rounds rounds=3 "=3" ".x=1"; do
        expect "--set '$s'" 2 --no-error-line "err:--set '$s': expected SECTION.KEY=VALUE" -- \
            bash "$COALITION" --sites 2 --set "$s"
    done
    for s in x "" Contiguous; do
        expect "--split '$s'" 2 --no-error-line "err:--split '$s': expected contiguous or striped" -- \
            bash "$COALITION" --split "$s"
    done
    expect "unknown argument" 2 --no-error-line "err:unknown argument '--rounds'" -- \
        bash "$COALITION" --rounds 3
    expect "--plot of a missing directory" 2 --no-error-line "err:--plot '$W/none': no such run directory" -- \
        bash "$COALITION" --plot "$W/none"
    # nothing was prepared or started by any of these
    [ ! -e "$SRC/data/coalition-0" ] || fail "a refused --sites 0 created data/coalition-0"
}

case_columns() {
    need_python3
    cat >"$W/m.jsonl" <<'EOF'
{"event":"start","world_size":2,"elapsed_s":0}
{"step":0,"val_loss":5.6,"elapsed_s":0.5}
{"step":1,"loss":5.5,"lr":0.0001,"tokens":4096,"elapsed_s":1.25}
{"event":"round","site":"a","round":1,"tokens":8192,"elapsed_s":2.5,"val_loss":null}
{"step":2,"loss":4.75,"lr":0.0002,"tokens":8192,"elapsed_s":2.5}
{"step":3,"loss":null,"tokens":12288,"elapsed_s":3}
{"step":4,"loss":"4.1","tokens":16384,"elapsed_s":3.5}
{"step":5,"loss":true,"tokens":20480,"elapsed_s":4}
{"step":6,"loss":NaN,"tokens":24576,"elapsed_s":4.5}
{"step":7,"tokens":28672,"elapsed_s":5}
{"event":"round","round":2,"tokens_total":16384,"val_loss":3.25,"elapsed_s":6}
[1,2]

{"step":8,"loss":4.5,"tokens":32768,"elapsed_s":7}
{"step":9,"loss":4.4,"tok
EOF
    expect "step columns" 0 -- python3 "$TOOL" columns "$W/m.jsonl" elapsed_s tokens loss
    printf '1.25 4096 5.5\n2.5 8192 4.75\n7 32768 4.5\n' >"$W/want"
    cmp -s "$W/out" "$W/want" || { fail "step columns: got"; sed 's/^/      | /' "$W/out"; }
    grep -qF "skipped 2 line(s) that are not JSON objects" "$W/err" ||
        fail "step columns: no warning about the 2 broken lines: $(cat "$W/err")"
    expect "round columns" 0 -- python3 "$TOOL" columns "$W/m.jsonl" elapsed_s tokens_total val_loss --event round
    printf '6 16384 3.25\n' >"$W/want"
    cmp -s "$W/out" "$W/want" || { fail "round columns: got"; sed 's/^/      | /' "$W/out"; }
    expect "evaluation columns" 0 -- python3 "$TOOL" columns "$W/m.jsonl" step val_loss
    printf '0 5.6\n' >"$W/want"
    cmp -s "$W/out" "$W/want" || { fail "evaluation columns: got"; sed 's/^/      | /' "$W/out"; }
    expect "an event no record has" 0 -- python3 "$TOOL" columns "$W/m.jsonl" step --event nothing
    [ ! -s "$W/out" ] || fail "an event no record has: printed $(head -c 200 "$W/out")"
    expect "a missing file" 1 --no-error-line "err:$W/missing.jsonl" -- \
        python3 "$TOOL" columns "$W/missing.jsonl" step loss
    expect "no field" 2 --no-error-line err:usage -- python3 "$TOOL" columns "$W/m.jsonl"
    expect "--event without a name" 2 --no-error-line err:usage -- \
        python3 "$TOOL" columns "$W/m.jsonl" step --event
    expect "an unknown command" 2 --no-error-line "err:unknown command 'rows'" -- \
        python3 "$TOOL" rows "$W/m.jsonl" step
}

# shard_tokens SHARD: the token count in a shard's header
shard_tokens() {
    od -An -t d4 -j 8 -N 4 "$1" | tr -d ' '
}

case_split() {
    need_python3
    make_corpus "$W/corpus.txt"
    # without a validation split the parts together are the corpus itself
    expect "prepare, no validation" 0 -- "$E" data prepare --input "$W/corpus.txt" --output "$W/all" \
        --val-fraction 0
    expect "split into 3" 0 out:"$W/p1.txt" -- python3 "$TOOL" split "$W/all" "$W/p1.txt" "$W/p2.txt" "$W/p3.txt"
    cat "$W/p1.txt" "$W/p2.txt" "$W/p3.txt" >"$W/joined"
    cmp -s "$W/joined" "$W/corpus.txt" || fail "split into 3: the parts joined are not the corpus"
    local total p size
    total=$(wc -c <"$W/corpus.txt")
    for p in p1 p2 p3; do
        size=$(wc -c <"$W/$p.txt")
        [ "$size" -gt $((total / 4)) ] && [ "$size" -lt $((total / 2)) ] ||
            fail "split into 3: $p holds $size of $total bytes, not about a third"
    done
    for p in p1 p2; do
        [ "$(tail -c 1 "$W/$p.txt" | od -An -c | tr -d ' ')" = '\n' ] ||
            fail "split into 3: $p does not end at a line end"
    done
    # with a validation split: every training byte once, no validation byte
    expect "prepare, 10% validation" 0 -- "$E" data prepare --input "$W/corpus.txt" --output "$W/tv"
    expect "split into 2" 0 -- python3 "$TOOL" split "$W/tv" "$W/q1.txt" "$W/q2.txt"
    local ntrain nval joined
    ntrain=$(shard_tokens "$W/tv/train_000000.bin")
    nval=$(shard_tokens "$W/tv/val_000000.bin")
    joined=$(cat "$W/q1.txt" "$W/q2.txt" | wc -c)
    # the training shard holds the end-of-text token and the training bytes
    [ "$joined" = $((ntrain - 1)) ] ||
        fail "split into 2: the parts hold $joined bytes, the training shard $((ntrain - 1)) bytes of text"
    [ $((joined + nval)) = "$total" ] ||
        fail "split into 2: parts ($joined) + validation ($nval) are not the corpus ($total bytes)"
    # each part prepared again: its tokens are its bytes and one end-of-text token
    expect "prepare part 1" 0 -- "$E" data prepare --input "$W/q1.txt" --output "$W/s1" --val-fraction 0
    [ "$(shard_tokens "$W/s1/train_000000.bin")" = $(($(wc -c <"$W/q1.txt") + 1)) ] ||
        fail "prepare part 1: the shard does not hold the part's bytes and one end-of-text token"
    [ ! -e "$W/s1/val_000000.bin" ] || fail "prepare part 1 with --val-fraction 0 wrote validation shards"
    # striped: every part draws from the whole text, every line once
    expect "split into 3, striped" 0 -- python3 "$TOOL" split --stripe 20000 "$W/all" \
        "$W/r1.txt" "$W/r2.txt" "$W/r3.txt"
    cat "$W/r1.txt" "$W/r2.txt" "$W/r3.txt" | sort >"$W/joined"
    sort "$W/corpus.txt" | cmp -s - "$W/joined" || fail "split into 3, striped: the parts' lines are not the corpus's"
    local lines first last
    lines=$(wc -l <"$W/corpus.txt")
    for p in r1 r2 r3; do
        size=$(wc -c <"$W/$p.txt")
        [ "$size" -gt $((total / 4)) ] && [ "$size" -lt $((total / 2)) ] ||
            fail "split into 3, striped: $p holds $size of $total bytes, not about a third"
        # the corpus's line numbers of the part's first and last line
        first=$(grep -nxF -m1 -- "$(head -n 1 "$W/$p.txt")" "$W/corpus.txt" | cut -d: -f1)
        last=$(grep -nxF -m1 -- "$(tail -n 1 "$W/$p.txt")" "$W/corpus.txt" | cut -d: -f1)
        [ "${first:-$lines}" -lt $((lines / 3)) ] && [ "${last:-0}" -gt $((2 * lines / 3)) ] ||
            fail "split into 3, striped: $p runs from corpus line ${first:-?} to ${last:-?} of $lines, not across the whole text"
    done
    cmp -s "$W/r1.txt" "$W/p1.txt" && fail "split into 3, striped: part 1 is the contiguous part 1"
    for s in 0 -5 x ""; do
        expect "--stripe '$s'" 2 --no-error-line "err:--stripe '$s'" -- \
            python3 "$TOOL" split --stripe "$s" "$W/all" "$W/x.txt"
    done
    # one part each for more sites than lines: refused, naming the cause
    printf 'one line only\n' >"$W/tiny.txt"
    expect "prepare a one-line corpus" 0 -- "$E" data prepare --input "$W/tiny.txt" --output "$W/tiny" --val-fraction 0
    expect "split 14 bytes into 20" 1 --no-error-line "err:too few for 20 parts" -- \
        python3 "$TOOL" split "$W/tiny" $(seq -f "$W/t%g.txt" 20)
    # bad shards
    expect "no shards" 1 --no-error-line "err:no training shards match $W/empty/train_*.bin" -- \
        python3 "$TOOL" split "$W/empty" "$W/x.txt"
    mkdir -p "$W/bad"
    head -c 2000 "$W/all/train_000000.bin" >"$W/bad/train_000000.bin"
    expect "a truncated shard" 1 --no-error-line "err:$W/bad/train_000000.bin: its header announces" -- \
        python3 "$TOOL" split "$W/bad" "$W/x.txt"
    printf 'XXXX' | dd of="$W/bad/train_000000.bin" conv=notrunc 2>/dev/null
    expect "a shard with another magic" 1 --no-error-line "err:is not a token shard" -- \
        python3 "$TOOL" split "$W/bad" "$W/x.txt"
    # a token past the byte-level vocabulary (GPT-2's 50257, say)
    cp "$W/all/train_000000.bin" "$W/bad/train_000000.bin"
    printf '\x00\x01' | dd of="$W/bad/train_000000.bin" bs=1 seek=$((1024 + 2 * 100)) conv=notrunc 2>/dev/null
    expect "a token of 256 inside the text" 0 -- python3 "$TOOL" split "$W/bad" "$W/x.txt"
    printf '\x01\x01' | dd of="$W/bad/train_000000.bin" bs=1 seek=$((1024 + 2 * 100)) conv=notrunc 2>/dev/null
    expect "token 257" 1 --no-error-line "err:token 257 at position 100 is not byte-level" -- \
        python3 "$TOOL" split "$W/bad" "$W/x.txt"
    [ ! -e "$W/x.txt.tmp" ] || fail "a refused split left $W/x.txt.tmp"
}

case_plot() {
    need_python3
    command -v gnuplot >/dev/null 2>&1 || { echo "SKIP: gnuplot is not installed (gnuplot-nox)"; exit 77; }
    local run=$W/runs/coalition-x s step
    mkdir -p "$run/coordinator" "$run/site-a" "$run/site-b"
    for s in a b; do
        {
            echo '{"event":"start","world_size":1}'
            for step in $(seq 1 40); do
                echo "{\"step\":$step,\"loss\":$(awk -v s="$step" 'BEGIN { print 1 + 4 * exp(-s / 10) }'),\"tokens\":$((step * 4096)),\"elapsed_s\":$step.5}"
            done
        } >"$run/site-$s/metrics.jsonl"
    done
    printf '%s\n' '{"event":"round","round":1,"tokens_total":163840,"val_loss":2.5,"elapsed_s":21}' \
        '{"event":"round","round":2,"tokens_total":327680,"val_loss":1.9,"elapsed_s":42}' \
        '{"event":"end"}' >"$run/coordinator/metrics.jsonl"
    expect "--plot a run" 0 "out:loss plot: $run/loss.png" -- bash "$COALITION" --plot "$run"
    [ "$(head -c 8 "$run/loss.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
        fail "--plot a run: $run/loss.png is not a PNG file"
    # relative to the caller's directory
    rm -f "$run/loss.png"
    (cd "$W/runs" && bash "$COALITION" --plot coalition-x) >"$W/out" 2>&1 ||
        fail "--plot with a relative path failed: $(cat "$W/out")"
    [ -s "$run/loss.png" ] || fail "--plot with a relative path drew no $run/loss.png"
    # a run that recorded nothing yet
    mkdir -p "$W/runs/empty/site-a"
    : >"$W/runs/empty/site-a/metrics.jsonl"
    expect "--plot a run with no records" 0 "out:no loss records" -- bash "$COALITION" --plot "$W/runs/empty"
    [ ! -e "$W/runs/empty/loss.png" ] || fail "--plot a run with no records drew a loss.png"
    # no gnuplot on the PATH: said, and no failure
    mkdir -p "$W/bin"
    local c
    for c in bash python3 dirname basename mktemp rm mv cat grep sed; do
        ln -s "$(command -v "$c")" "$W/bin/$c"
    done
    rm -f "$run/loss.png"
    expect "--plot without gnuplot" 0 "out:gnuplot is not installed" -- \
        env PATH="$W/bin" bash "$COALITION" --plot "$run"
    [ ! -e "$run/loss.png" ] || fail "--plot without gnuplot drew a loss.png"
}

run_case
