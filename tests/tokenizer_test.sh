#!/usr/bin/env bash
# tokenizer_test.sh: `data prepare --tokenizer` end to end, with the fixtures of
# tests/tokenizer/ (GPT-2, Llama 3 and Qwen2 style byte-level BPE).
#
#   tokenizer_test.sh ENTENTE_BINARY SOURCE_DIR CASE
#
# Cases:
#   live     the whole KJV and the multilingual sample, prepared by entente with
#            each fixture, give exactly the ids of Hugging Face `tokenizers`
#            (needs a Python that imports it: $ENT_PYTHON, python3 or
#            /usr/bin/python3; otherwise skipped with the reason, exit 77)
#   prepare  shards of the right version and token size (uint16, version 1, for
#            the GPT-2 and Qwen2 styles; uint32, version 2, for the Llama 3
#            style whose ids reach 70049), the model.vocab printed, a short
#            training run on each with data.tokenizer (the prompt encoded,
#            samples decoded as text), and `entente sample` from its checkpoint
#   errors   a missing or malformed tokenizer, an unknown --eot, --eot without
#            --tokenizer: exit codes, messages, nothing written; a model.vocab
#            below the tokenizer's is refused at start
. "$(dirname "$0")/cli_lib.sh"

FIX=$SRC/tests/tokenizer
export PYTHONDONTWRITEBYTECODE=1

# header WORD FILE: the int32 header word WORD (0-based) of a shard
header() {
    od -An -t d4 -j $(($1 * 4)) -N 4 "$2" | tr -d ' '
}

case_live() {
    local py
    py=$(python_with "pip install tokenizers" tokenizers) || exit 77
    if ! command -v bible >/dev/null 2>&1; then
        echo "SKIP: the bible program is missing (Debian package bible-kjv, launch/setup.sh)"
        exit 77
    fi
    bible -l0 "Gen1:1-Rev22:21" >"$W/kjv.txt" || { fail "bible did not print the KJV"; return; }
    echo "live: $py, tokenizers $("$py" -c 'import tokenizers; print(tokenizers.__version__)')"
    local f
    for f in gpt2 llama3 qwen2; do
        expect "prepare the KJV and the sample with $f" 0 -- "$E" data prepare --tokenizer "$FIX/$f" \
            --input "$W/kjv.txt" "$FIX/sample.txt" --output "$W/$f" --val-fraction 0 || continue
        "$py" "$FIX/live_check.py" "$W/$f" "$FIX/$f" "$W/kjv.txt" "$FIX/sample.txt" ||
            fail "$f: the ids differ from the tokenizers library's"
    done
}

case_prepare() {
    make_corpus "$W/corpus.txt"
    # gpt2: 2001 ids, uint16, version 1 (llm.c's layout)
    expect "prepare with the GPT-2 style tokenizer" 0 "out:model.vocab = 2001" "out:2-byte tokens" -- \
        "$E" data prepare --tokenizer "$FIX/gpt2/tokenizer.json" --input "$W/corpus.txt" \
        "$FIX/sample.txt" --output "$W/g" || return
    local s=$W/g/train_000000.bin n
    [ "$(header 1 "$s")" = 1 ] || fail "gpt2 shard: version $(header 1 "$s"), expected 1"
    n=$(header 2 "$s")
    [ "$(stat -c %s "$s")" = $((1024 + 2 * n)) ] || fail "gpt2 shard: $(stat -c %s "$s") bytes for $n uint16 tokens"
    # the first token is the document token, <|endoftext|> (2000)
    [ "$(od -An -t u2 -j 1024 -N 2 "$s" | tr -d ' ')" = 2000 ] || fail "gpt2 shard does not start with <|endoftext|>"
    # bytes per token: BPE, not bytes
    [ "$n" -lt $(($(stat -c %s "$W/corpus.txt") * 3 / 4)) ] || fail "gpt2: $n tokens for $(stat -c %s "$W/corpus.txt") bytes: no merging?"

    # llama3: ids up to 70049, uint32, version 2 with token size 4
    expect "prepare with the Llama 3 style tokenizer" 0 "out:model.vocab = 70050" "out:4-byte tokens" -- \
        "$E" data prepare --tokenizer "$FIX/llama3" --input "$W/corpus.txt" "$FIX/sample.txt" \
        --output "$W/l" || return
    s=$W/l/train_000000.bin
    [ "$(header 1 "$s")" = 2 ] || fail "llama3 shard: version $(header 1 "$s"), expected 2"
    [ "$(header 3 "$s")" = 4 ] || fail "llama3 shard: token size $(header 3 "$s"), expected 4"
    n=$(header 2 "$s")
    [ "$(stat -c %s "$s")" = $((1024 + 4 * n)) ] || fail "llama3 shard: $(stat -c %s "$s") bytes for $n uint32 tokens"
    local big
    big=$(od -An -v -t u4 -j 1024 "$W"/l/*.bin | tr -s ' ' '\n' | awk '$1 >= 65536' | wc -l)
    [ "$big" -gt 0 ] || fail "llama3: no id >= 65536 in the shards"
    [ "$(od -An -t u4 -j 1024 -N 4 "$s" | tr -d ' ')" = 3000 ] || fail "llama3 shard does not start with <|begin_of_text|>"

    # train a few steps on each, the prompt encoded and the samples decoded
    local f v
    # qwen2: the NFC normalizer, version 1 shards
    expect "prepare with the Qwen2 style tokenizer" 0 "out:model.vocab = 1504" "out:2-byte tokens" -- \
        "$E" data prepare --tokenizer "$FIX/qwen2" --input "$W/corpus.txt" --output "$W/q" || return

    for f in g:2001:gpt2 l:70050:llama3 q:1504:qwen2; do
        IFS=: read -r d v name <<<"$f"
        write_config "$W/$d.ini" "$W/$d"
        expect "train on the $name shards" 0 -- "$E" train --config "$W/$d.ini" --run-dir "$W/run$d" \
            --set model.vocab="$v" --set data.tokenizer="$FIX/$name" --set train.steps=6 \
            --set train.warmup_steps=1 --set eval.every=0 --set "sample.prompt=In the beginning" \
            --set sample.tokens=24 --set sample.temperature=0 || continue
        grep -q "^In the beginning" "$W/run$d/samples.txt" ||
            fail "$name: the sample does not start with the decoded prompt: $(head -3 "$W/run$d/samples.txt")"
        # decoded text, not a list of ids
        grep -A1 '^---- sample' "$W/run$d/samples.txt" | tail -1 | grep -qE '^([0-9]+ )+[0-9]+$' &&
            fail "$name: the sample is printed as ids"
        expect "sample from the $name checkpoint (its data.tokenizer)" 0 "out:Lord" -- \
            "$E" sample --checkpoint "$W/run$d/checkpoints" --prompt "the Lord" --tokens 8 \
            --temperature 0
        expect "sample with an explicit --tokenizer" 0 "out:God" -- \
            "$E" sample --checkpoint "$W/run$d/checkpoints" --tokenizer "$FIX/$name" --prompt "God" \
            --tokens 4
    done
}

case_errors() {
    make_corpus "$W/corpus.txt"
    expect "a missing tokenizer" 1 "$W/none" -- \
        "$E" data prepare --tokenizer "$W/none" --input "$W/corpus.txt" --output "$W/o1"
    [ -e "$W/o1" ] && fail "a failed preparation left $W/o1"
    mkdir -p "$W/bad"
    head -c 5000 "$FIX/gpt2/tokenizer.json" >"$W/bad/tokenizer.json"
    expect "a truncated tokenizer.json" 1 "$W/bad/tokenizer.json" "not valid JSON" -- \
        "$E" data prepare --tokenizer "$W/bad" --input "$W/corpus.txt" --output "$W/o2"
    [ -e "$W/o2" ] && fail "a failed preparation left $W/o2"
    sed 's/"normalizer":null/"normalizer":{"type":"NFKC"}/' "$FIX/gpt2/tokenizer.json" >"$W/bad/tokenizer.json"
    expect "an unsupported normalizer" 1 "$W/bad/tokenizer.json" "normalizer" "NFKC" -- \
        "$E" data prepare --tokenizer "$W/bad" --input "$W/corpus.txt" --output "$W/o3"
    expect "an unknown --eot" 2 "<|nope|>" -- \
        "$E" data prepare --tokenizer "$FIX/gpt2" --eot "<|nope|>" --input "$W/corpus.txt" --output "$W/o4"
    [ -e "$W/o4" ] && fail "a failed preparation left $W/o4"
    expect "--eot without --tokenizer" 2 "--eot needs --tokenizer" -- \
        "$E" data prepare --eot x --input "$W/corpus.txt" --output "$W/o5"
    expect "--tokenizer without a value" 2 "--tokenizer needs a value" -- \
        "$E" data prepare --input "$W/corpus.txt" --output "$W/o6" --tokenizer
    # --eot names any token: the shards start with it
    expect "--eot the" 0 -- "$E" data prepare --tokenizer "$FIX/gpt2" --eot "a" \
        --input "$W/corpus.txt" --output "$W/o7" --val-fraction 0
    local a
    a=$(grep -o '"a":[0-9]*' "$FIX/gpt2/tokenizer.json" | head -1 | cut -d: -f2)
    [ "$(od -An -t u2 -j 1024 -N 2 "$W/o7/train_000000.bin" | tr -d ' ')" = "$a" ] ||
        fail "--eot a: the shard does not start with token a ($a)"
    # a model too small for the tokenizer
    write_config "$W/c.ini" "$W/o7"
    expect "model.vocab below the tokenizer's" 2 "model.vocab" "2001" -- \
        "$E" train --config "$W/c.ini" --set model.vocab=2001 --set data.tokenizer="$FIX/llama3" \
        --run-dir "$W/r" --set train.steps=1
}

run_case
