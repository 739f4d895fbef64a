#!/usr/bin/env bash
# ckpt_test.sh: checkpoints, end to end through the entente binary.
#
#   ckpt_test.sh ENTENTE_BINARY SOURCE_DIR CASE [CKPT_TOOL]
#
# resume         continuing from a checkpoint on the same layout is
#                bit-identical to an uninterrupted run (1 rank, 2 ranks DP,
#                asynchronous saves; --resume FILE, latest, auto); a dangling
#                latest is an error for auto too; metrics are appended
# reshard        saved at DP=2 x TP=2, resumed on 1 rank, TP=2 and DP=4 with
#                ZeRO-1 (and saved on 1 rank, resumed at DP=2 x TP=2): losses
#                within 1e-5 of the uninterrupted run, the data cursor neither
#                repeating nor skipping sequences; without --config the
#                layout comes from the command line, not the checkpoint
# reshard_llama  the same for a llama whose one KV head TP = 2 replicates
# tools          ckpt info, ckpt verify, h5dump -H, sample --checkpoint,
#                retention (checkpoint.keep), the latest pointer
# import         ckpt import of Hugging Face GPT-2 and Llama directories written
#                with numpy (tests/hf_import.py): F32/BF16/F16, sharded, GQA,
#                Llama 3 rope, tied; logits against numpy; train --resume (a
#                llama at another context) and eval of an import; export then
#                import is bit-identical; damaged directories refused by name;
#                bytes flipped
# transformers   the outside check with Hugging Face transformers itself
#                (tests/hf_transformers.py): a tiny GPT2LMHeadModel and a tiny
#                LlamaForCausalLM saved by transformers, imported (logits
#                within 1e-5), trained 10 steps, exported and loaded back by
#                transformers (logits within 1e-5); skipped, saying so, where
#                no Python imports torch and transformers ($ENT_PYTHON,
#                python3, /usr/bin/python3)
# export         ckpt export checked outside entente (tests/hf_crosscheck.py):
#                h5py reads the checkpoint, a numpy GPT-2 with Hugging Face's
#                conventions gives entente's logits
# corrupt        a flipped byte in a dataset, a truncated file, a file that is
#                not HDF5, an empty file, another format version, another
#                model: clear errors from verify, resume and sample
# fuzz           every byte of a tiny checkpoint's metadata changed in turn,
#                and a seeded sample of its chunks (ckpt_tool fuzz; seed
#                CKPT_FUZZ_SEED, default 1): each change refused by ckpt verify's
#                checks or harmless (the file reads back identical), none
#                crashing the checks, none passed by verify and refused by resume;
#                a crash the harness provokes (SIGFPE) is caught and fails it
# hostile        checkpoints written by h5py (tests/ckpt_hostile.py): a valid
#                one with h5py's kinds of text verifies and resumes; int32
#                datasets, a wrong-shaped wpe, step -5, optim.updates past
#                the step, negative or missing, data.consumed 2^62 or
#                negative, a wrong tensors count, an extra dataset, no
#                Fletcher32, the oldest or HDF5 1.8's format, no or a wrong digest: each
#                refused by verify and by resume (exit 1), naming the file and
#                the attribute or dataset
# kill           SIGKILL at random moments while saving, 20 times: `latest`
#                always names a checkpoint that verifies and resumes
# disk_full      a checkpoint that cannot fit is found before step 1; a save
#                that hits a full disk fails cleanly, the previous
#                checkpoint stays, training stops or goes on as configured
# signal         SIGTERM saves a checkpoint at the stop step (exit 75) and
#                --resume auto continues bit-identically
set -u
CKPT_TOOL=${4:-}
set -- "$1" "$2" "$3"
# shellcheck source=cli_lib.sh
. "$(dirname "$0")/cli_lib.sh"

ckpt_config() {
    write_config "$1"
    sed -i 's/^steps = 30/steps = 20/; s/^heads = 2/heads = 4/' "$1"
    printf '\n[checkpoint]\nevery = 10\n' >>"$1"
}

# ---------------------------------------------------------------------------

case_resume() {
    need_mpirun
    make_data
    ckpt_config "$W/c.ini"
    expect "uninterrupted run" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/a" || return
    local c10=$W/a/checkpoints/step_00000010.h5
    [ -f "$c10" ] || { fail "no checkpoint at step 10"; return; }
    expect "resume from step 10" 0 "out:resumed from" -- "$E" train --config "$W/c.ini" \
        --run-dir "$W/b" --resume "$c10" || return
    same_curve "1 rank, --resume FILE" "$W/a/metrics.jsonl" "$W/b/metrics.jsonl" 11 20 0
    grep -q '"resumed_step":10' "$W/b/metrics.jsonl" || fail "the start record does not say where it resumed"
    # without --config: the checkpoint carries its configuration
    expect "resume from a file alone" 0 -- "$E" train --run-dir "$W/c" --resume "$c10" || return
    same_curve "--resume FILE without --config" "$W/a/metrics.jsonl" "$W/c/metrics.jsonl" 11 20 0
    # --resume latest in the run's own directory goes on past the end, appending
    expect "resume latest" 0 -- "$E" train --run-dir "$W/a" --resume latest --set train.steps=25 || return
    [ "$(grep -c '"loss":' "$W/a/metrics.jsonl")" = 25 ] ||
        fail "resume latest: metrics.jsonl should hold 25 step records after appending"
    # two ranks, data parallel, and asynchronous saves
    expect "2 ranks, async saves" 0 -- timeout 120 "${MPIRUN[@]}" -np 2 "$E" train \
        --config "$W/c.ini" --run-dir "$W/d" --set checkpoint.async=true || return
    # each async save's record (written once its copy is made) comes before
    # the next step's, and says how long training waited
    [ "$(grep -c '"event":"checkpoint".*"async":true,"blocked_s":[0-9]' "$W/d/metrics.jsonl")" = 2 ] ||
        fail "async run: expected 2 checkpoint records with async and blocked_s"
    local at10 at11
    at10=$(grep -n '"event":"checkpoint","step":10,' "$W/d/metrics.jsonl" | cut -d: -f1)
    at11=$(grep -n '^{"step":11,' "$W/d/metrics.jsonl" | cut -d: -f1)
    [ -n "$at10" ] && [ -n "$at11" ] && [ "$at10" -lt "$at11" ] ||
        fail "async run: the record of the step 10 checkpoint should precede step 11's"
    expect "2 ranks, resumed" 0 -- timeout 120 "${MPIRUN[@]}" -np 2 "$E" train --config "$W/c.ini" \
        --run-dir "$W/e" --resume "$W/d/checkpoints/step_00000010.h5" --set checkpoint.async=true || return
    same_curve "2 ranks DP, async" "$W/d/metrics.jsonl" "$W/e/metrics.jsonl" 11 20 0
    # auto: with nothing to resume it is a fresh run; then it extends the run
    # exactly as `--resume latest` did above (steps 21..25)
    expect "auto, fresh" 0 "err:starting from the beginning" -- "$E" train --config "$W/c.ini" \
        --run-dir "$W/f" --resume auto || return
    same_curve "--resume auto, fresh" "$W/a/metrics.jsonl" "$W/f/metrics.jsonl" 1 20 0
    expect "auto, again" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/f" --resume auto \
        --set train.steps=25 || return
    same_curve "--resume auto, extended" "$W/a/metrics.jsonl" "$W/f/metrics.jsonl" 21 25 0
    expect "resume latest where there is none" 1 "latest" -- "$E" train --config "$W/c.ini" \
        --run-dir "$W/none" --resume latest
    # a 'latest' that names a missing file is an error naming it, for auto
    # too: never a fresh start over the run's records
    cp -a "$W/f" "$W/dangling"
    rm "$W/dangling/checkpoints/step_00000025.h5"
    cp "$W/dangling/metrics.jsonl" "$W/dangling.metrics"
    local kind
    for kind in auto latest; do
        expect "--resume $kind, latest dangling" 1 "$W/dangling/checkpoints/latest" \
            "step_00000025.h5" -- "$E" train --config "$W/c.ini" --run-dir "$W/dangling" --resume "$kind"
        cmp -s "$W/dangling/metrics.jsonl" "$W/dangling.metrics" ||
            fail "--resume $kind with a dangling latest changed metrics.jsonl"
    done
    # auto after a run killed before its first checkpoint: from step 0 again,
    # appending (the earlier records stay in front)
    mkdir -p "$W/h"
    printf '{"step":1,"loss":9}\n' >"$W/h/metrics.jsonl"
    expect "auto, no checkpoint, earlier records" 0 "err:starting from the beginning" -- \
        "$E" train --config "$W/c.ini" --run-dir "$W/h" --resume auto || return
    [ "$(head -1 "$W/h/metrics.jsonl")" = '{"step":1,"loss":9}' ] || fail "--resume auto truncated metrics.jsonl"
    same_curve "--resume auto, no checkpoint yet" "$W/a/metrics.jsonl" "$W/h/metrics.jsonl" 1 20 0
    expect "resume past train.steps" 2 "leaves nothing to do" -- "$E" train --config "$W/c.ini" \
        --run-dir "$W/g" --resume "$W/a/checkpoints/step_00000020.h5"
}

case_reshard() {
    need_mpirun
    make_data
    ckpt_config "$W/c.ini"
    expect "DP=2 x TP=2, uninterrupted" 0 -- timeout 120 "${MPIRUN[@]}" -np 4 "$E" train \
        --config "$W/c.ini" --run-dir "$W/src" --set parallel.tp=2 || return
    local c=$W/src/checkpoints/step_00000010.h5 m=$W/src/metrics.jsonl
    # written by four ranks into a file rank 0 laid out: entente and HDF5's own
    # tools (its Fletcher32 filter on every chunk read) read it back whole
    "$E" ckpt verify "$c" >/dev/null || fail "a checkpoint written by DP=2 x TP=2 does not verify"
    if command -v h5dump >/dev/null 2>&1; then
        for d in /params/wte.weight /adam_m/h.0.attn.c_attn.weight /adam_v/ln_f.bias; do
            h5dump -d "$d" "$c" >/dev/null 2>"$W/h5dump.err" ||
                fail "h5dump cannot read $d of the DP=2 x TP=2 checkpoint: $(head -c 300 "$W/h5dump.err")"
        done
    fi
    expect "resumed on 1 rank" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/one" --resume "$c" || return
    same_curve "DP2xTP2 -> 1 rank" "$m" "$W/one/metrics.jsonl" 11 20 1e-5
    # without --config: the layout is not the checkpoint's (parallel.tp = 2)
    # but the command line's and the world's
    expect "resumed on 1 rank, the checkpoint's own config" 0 -- "$E" train --run-dir "$W/one-own" \
        --resume "$c" || return
    same_curve "DP2xTP2 -> 1 rank, own config" "$m" "$W/one-own/metrics.jsonl" 11 20 1e-5
    grep -q '"world_size":1,"dp":1,"tp":1,"zero":0' "$W/one-own/run.json" ||
        fail "a resume without --config did not take the layout of its one rank"
    # a layout that does not fit the world: the message says which --set fits
    expect "parallel.tp = 2 on 1 rank" 2 "parallel.tp = 2 does not divide the world size 1" \
        "--set parallel.tp=1" -- "$E" train --run-dir "$W/one-tp2" --resume "$c" --set parallel.tp=2
    expect "resumed at TP=2" 0 -- timeout 120 "${MPIRUN[@]}" -np 2 "$E" train --config "$W/c.ini" \
        --run-dir "$W/tp2" --resume "$c" --set parallel.tp=2 || return
    same_curve "DP2xTP2 -> TP2" "$m" "$W/tp2/metrics.jsonl" 11 20 1e-5
    expect "resumed at DP=4, ZeRO-1" 0 -- timeout 120 "${MPIRUN[@]}" -np 4 "$E" train \
        --config "$W/c.ini" --run-dir "$W/dp4" --resume "$c" --set parallel.zero=1 || return
    same_curve "DP2xTP2 -> DP4 ZeRO-1" "$m" "$W/dp4/metrics.jsonl" 11 20 1e-5
    # and the reverse: saved on one rank (and by DP=4 with ZeRO-1), resumed at DP=2 x TP=2
    expect "1 rank, uninterrupted" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/r1" || return
    expect "1 rank -> DP=2 x TP=2" 0 -- timeout 120 "${MPIRUN[@]}" -np 4 "$E" train \
        --config "$W/c.ini" --run-dir "$W/r4" --set parallel.tp=2 \
        --resume "$W/r1/checkpoints/step_00000010.h5" || return
    same_curve "1 rank -> DP2xTP2" "$W/r1/metrics.jsonl" "$W/r4/metrics.jsonl" 11 20 1e-5
    expect "DP=4 ZeRO-1 -> DP=2 x TP=2" 0 -- timeout 120 "${MPIRUN[@]}" -np 4 "$E" train \
        --config "$W/c.ini" --run-dir "$W/z4" --set parallel.tp=2 \
        --resume "$W/dp4/checkpoints/step_00000020.h5" --set train.steps=25 || return
    "$E" ckpt verify "$W/dp4/checkpoints/step_00000020.h5" >/dev/null ||
        fail "a checkpoint written by DP=4 with ZeRO-1 does not verify"
}

# The same resharding for a tiny llama whose single KV head TP = 2
# replicates: saved at DP=2 x TP=2, resumed on 1 rank and at DP=2 with
# ZeRO-1; saved on 1 rank, resumed at DP=2 x TP=2.
case_reshard_llama() {
    need_mpirun
    make_data
    ckpt_config "$W/c.ini"
    sed -i 's/^\[model\]/[model]\narch = llama\nn_kv_heads = 1\nrope_scaling = llama3\nrope_original_context = 16/' "$W/c.ini"
    expect "llama DP=2 x TP=2, uninterrupted" 0 -- timeout 120 "${MPIRUN[@]}" -np 4 "$E" train \
        --config "$W/c.ini" --run-dir "$W/src" --set parallel.tp=2 || return
    local c=$W/src/checkpoints/step_00000010.h5 m=$W/src/metrics.jsonl
    "$E" ckpt verify "$c" >/dev/null || fail "a llama checkpoint written by DP=2 x TP=2 does not verify"
    "$E" ckpt info "$c" | grep -q '^  model.architecture *llama$' || fail "$c is not a llama's checkpoint"
    expect "llama resumed on 1 rank" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/one" --resume "$c" || return
    same_curve "llama DP2xTP2 -> 1 rank" "$m" "$W/one/metrics.jsonl" 11 20 1e-5
    expect "llama resumed at DP=2, ZeRO-1" 0 -- timeout 120 "${MPIRUN[@]}" -np 2 "$E" train \
        --config "$W/c.ini" --run-dir "$W/z2" --resume "$c" --set parallel.zero=1 || return
    same_curve "llama DP2xTP2 -> DP2 ZeRO-1" "$m" "$W/z2/metrics.jsonl" 11 20 1e-5
    expect "llama 1 rank -> DP=2 x TP=2" 0 -- timeout 120 "${MPIRUN[@]}" -np 4 "$E" train \
        --config "$W/c.ini" --run-dir "$W/r4" --set parallel.tp=2 \
        --resume "$W/one/checkpoints/step_00000020.h5" --set train.steps=25 || return
    [ -n "$(step_losses "$W/r4/metrics.jsonl" 21 25)" ] || fail "the resumed llama trained no steps 21..25"
}

case_tools() {
    make_data
    ckpt_config "$W/c.ini"
    expect "train with retention" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/a" \
        --set checkpoint.every=5 --set checkpoint.keep=2 || return
    local d=$W/a/checkpoints
    [ "$(cd "$d" && ls step_*.h5 | tr '\n' ' ')" = "step_00000015.h5 step_00000020.h5 " ] ||
        fail "checkpoint.keep = 2 should leave steps 15 and 20, found: $(cd "$d" && ls | tr '\n' ' ')"
    [ "$(readlink "$d/latest")" = step_00000020.h5 ] || fail "latest should point at step 20"
    expect "ckpt info" 0 "out:step                     20" "out:optim.updates            20" \
        "out:model.width              32" \
        "out:/params   28 tensors" "out:configuration it was trained with" -- "$E" ckpt info "$d/latest"
    expect "ckpt verify" 0 "out:ok: step 20, 84 datasets" -- "$E" ckpt verify "$d"
    if command -v h5dump >/dev/null 2>&1; then
        expect "h5dump -H" 0 'out:GROUP "params"' 'out:DATASET "wte.weight"' 'out:ATTRIBUTE "step"' \
            -- h5dump -H "$d/step_00000020.h5"
    else
        fail "h5dump (hdf5-tools) is not installed: the layout must be readable without entente"
    fi
    expect "sample from a checkpoint" 0 "out:And God said" -- "$E" sample --checkpoint "$d" \
        --prompt "And God said" --tokens 40 --temperature 0
    [ "$(wc -c <"$W/out")" -ge 52 ] || fail "sample printed too little: $(cat "$W/out")"
    expect "ckpt export" 0 "out:model.safetensors" -- "$E" ckpt export "$d/latest" \
        --format safetensors --out "$W/hf"
    [ -s "$W/hf/model.safetensors" ] && [ -s "$W/hf/config.json" ] || fail "export wrote no files"
    grep -Eq '"n_embd":[[:space:]]*32' "$W/hf/config.json" || fail "config.json lacks n_embd 32"
    expect "ckpt export, unknown format" 2 "only safetensors" -- "$E" ckpt export "$d/latest" \
        --format gguf --out "$W/x"
    expect "ckpt without a file" 2 -- "$E" ckpt verify
    expect "sample without --checkpoint" 2 "--checkpoint FILE is required" -- "$E" sample
}

# numpy_python: prints a python3 with numpy and h5py; fails (the caller skips,
# exit 77) saying why when there is none
numpy_python() {
    local cand
    for cand in python3 /usr/bin/python3; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import numpy, h5py' 2>/dev/null; then
            echo "$cand"
            return
        fi
    done
    echo "SKIP: no python3 with numpy and h5py (Debian: python3-numpy python3-h5py)" >&2
    exit 77
}

case_export() {
    local py
    py=$(numpy_python) || exit 77
    make_data
    ckpt_config "$W/c.ini"
    expect "train" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/a" || return
    local c=$W/a/checkpoints/step_00000020.h5 prompt="In the beginning God"
    expect "export" 0 -- "$E" ckpt export "$c" --out "$W/hf" || return
    expect "logits" 0 -- "$E" sample --checkpoint "$c" --prompt "$prompt" --tokens 0 \
        --logits "$W/logits.txt" || return
    expect "cross-check outside entente" 0 "out:vs entente logits: relative error" -- \
        "$py" "$SRC/tests/hf_crosscheck.py" "$c" "$W/hf" "$W/logits.txt" "$prompt"
    sed -n '1,4s/^/    /p' "$W/out"
}

case_transformers() {
    local py
    py=$(python_with "pip install torch transformers in a venv" numpy h5py torch transformers) || exit 77
    make_data
    expect "transformers' models imported, trained, exported and loaded back" 0 \
        "out:llama: trained 10 steps in entente" -- "$py" "$SRC/tests/hf_transformers.py" "$E" "$W" "$DATA"
    sed 's/^/    /' "$W/out"
}

case_import() {
    local py
    py=$(numpy_python) || exit 77
    local H="$SRC/tests/hf_import.py" prompt="In the beginning God" m
    # each layout and dtype transformers saves, GPT-2 and the Llama family (GQA,
    # Llama 3's rope bands, a tied output layer), and a width that is not a
    # multiple of 8 (the transposes' edges): logits equal numpy's on the
    # stored values
    local models=("f32 --dtype F32" "bf16 --dtype BF16 --shards 3 --bare" "f16 --dtype F16 --shards 2"
        "llama --llama" "llama3 --llama --llama3 --dtype BF16 --shards 2"
        "llama_tied --llama --tied --dtype F16" "odd --width 44 --heads 4"
        "odd_bf16 --width 44 --heads 4 --dtype BF16")
    # one interpreter writes them all, and one checks them all
    local writes=() checks=()
    for m in "${models[@]}"; do
        set -- $m
        writes+=("$W/hf_$1" "${@:2}" --seed 7 --)
        checks+=("$W/hf_$1" "$W/logits_$1.txt" "$prompt")
    done
    "$py" "$H" write "${writes[@]}" || { fail "writing the models"; return; }
    for m in "${models[@]}"; do
        set -- $m
        local name=$1 arch="GPT-2"
        case $name in llama*) arch="Llama" ;; esac
        expect "import ($name)" 0 "out:wrote $W/$name.h5: $arch, 2 layers" -- \
            "$E" ckpt import --from "$W/hf_$name" --out "$W/$name.h5" || return
        expect "verify the import ($name)" 0 "out:step 0" -- "$E" ckpt verify "$W/$name.h5"
        expect "logits ($name)" 0 -- "$E" sample --checkpoint "$W/$name.h5" --prompt "$prompt" \
            --tokens 0 --logits "$W/logits_$name.txt" || return
    done
    expect "numpy GPT-2 and Llama on the same tensors" 0 "out:relative error" -- \
        "$py" "$H" check "${checks[@]}"
    grep 'relative error' "$W/out" | sed 's/^/    /'
    [ "$(grep -c 'vs entente logits: relative error' "$W/out")" = ${#models[@]} ] ||
        fail "the logits of ${#models[@]} models were not all checked: $(cat "$W/out")"
    expect "an existing FILE is kept" 2 "exists; --force replaces it" -- \
        "$E" ckpt import --from "$W/hf_f32" --out "$W/f32.h5"
    expect "--force replaces it" 0 -- "$E" ckpt import --from "$W/hf_f32" --out "$W/f32.h5" --force
    # continued pretraining from the import: AdamW starts afresh, the loss falls
    make_data
    write_config "$W/c.ini"
    sed -i 's/^heads = 2/heads = 4/; s/^width = 32/width = 64/; s/^steps = 30/steps = 10/' "$W/c.ini"
    expect "train --resume an import" 0 "out:resumed from $W/f32.h5 at step 0" -- \
        "$E" train --config "$W/c.ini" --run-dir "$W/ft" --resume "$W/f32.h5" || return
    local first last
    first=$(losses "$W/ft/metrics.jsonl" | head -1)
    last=$(losses "$W/ft/metrics.jsonl" | tail -1)
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' ||
        fail "training from the import did not lower the loss ($first -> $last)"
    expect "eval of an import" 0 "out:val loss" -- "$E" eval --checkpoint "$W/f32.h5" --data "$DATA"
    # a llama imported at context 32 trains on at 16: rotary positions have no table
    write_config "$W/l.ini"
    sed -i 's/^heads = 2/heads = 4/; s/^width = 32/width = 64/; s/^steps = 30/steps = 10/; s/^context = 32/context = 16/' "$W/l.ini"
    sed -i 's/^\[model\]/[model]\narch = llama\nn_kv_heads = 2\nffn_hidden = 160/' "$W/l.ini"
    expect "train --resume a llama import at another context" 0 "out:resumed from $W/llama.h5 at step 0" -- \
        "$E" train --config "$W/l.ini" --run-dir "$W/lft" --resume "$W/llama.h5" || return
    first=$(losses "$W/lft/metrics.jsonl" | head -1)
    last=$(losses "$W/lft/metrics.jsonl" | tail -1)
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' ||
        fail "training from the llama import did not lower the loss ($first -> $last)"
    # export, then import again: the same bits, for an import and for a trained model
    local c pairs=() i=0
    for c in "$W/f32.h5" "$W/ft/checkpoints/step_00000010.h5" "$W/llama3.h5" "$W/llama_tied.h5" \
             "$W/lft/checkpoints/step_00000010.h5"; do
        i=$((i + 1))
        expect "export $(basename "$c")" 0 -- "$E" ckpt export "$c" --out "$W/rt$i" || return
        expect "import the export of $(basename "$c")" 0 -- \
            "$E" ckpt import --from "$W/rt$i" --out "$W/rt$i.h5" || return
        pairs+=("$c" "$W/rt$i.h5")
    done
    expect "export then import: the same bits" 0 "out:bit-identical" -- "$py" "$H" same "${pairs[@]}"
    [ "$(grep -c 'tensors bit-identical' "$W/out")" = 5 ] ||
        fail "not every export came back bit-identical: $(cat "$W/out")"
    # the directory's tokenizer.json becomes the checkpoint's data.tokenizer
    cp -r "$W/hf_f32" "$W/hf_tok" && cp "$SRC/tests/tokenizer/gpt2/tokenizer.json" "$W/hf_tok/"
    expect "import with a tokenizer" 0 -- "$E" ckpt import --from "$W/hf_tok" --out "$W/tok.h5"
    expect "the import names its tokenizer" 0 "out:tokenizer = $(cd "$W/hf_tok" && pwd -P)" -- \
        "$E" ckpt info "$W/tok.h5"
    # damaged model directories, and a byte changed in turn
    [ -x "$CKPT_TOOL" ] || { fail "ckpt_tool is missing ($CKPT_TOOL)"; return; }
    mkdir -p "$W/hostile"
    expect "hostile model directories" 0 "out:single-byte changes" -- \
        "$py" "$H" hostile "$W/hf_f32" "$E" "$W/hostile" "${ENTENTE_TEST_SEED:-1202}" \
        "$CKPT_TOOL"
    grep -E '^(FAIL|ok)|single-byte' "$W/out" | sed 's/^/    /'
    expect "hostile Llama directories" 0 "out:single-byte changes" -- \
        "$py" "$H" hostile "$W/hf_llama" "$E" "$W/hostile" "${ENTENTE_TEST_SEED:-1202}" \
        "$CKPT_TOOL"
    grep -E '^FAIL|single-byte' "$W/out" | sed 's/^/    /'
}

case_corrupt() {
    [ -x "$CKPT_TOOL" ] || { fail "ckpt_tool is missing ($CKPT_TOOL)"; return; }
    make_data
    ckpt_config "$W/c.ini"
    expect "train" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/a" || return
    local good=$W/a/checkpoints/step_00000010.h5 bad=$W/bad.h5
    cp "$good" "$bad"
    "$CKPT_TOOL" flip "$bad" params/h.1.mlp.c_fc.weight >/dev/null || { fail "ckpt_tool flip failed"; return; }
    expect "verify a flipped byte" 1 "params/h.1.mlp.c_fc.weight" -- "$E" ckpt verify "$bad"
    expect "resume a flipped byte" 1 "params/h.1.mlp.c_fc.weight" -- "$E" train --config "$W/c.ini" \
        --run-dir "$W/r" --resume "$bad"
    [ -e "$W/r/checkpoints" ] && fail "a refused resume wrote checkpoints"
    cp "$good" "$bad"
    "$CKPT_TOOL" flip "$bad" adam_v/wpe.weight >/dev/null || { fail "ckpt_tool flip failed"; return; }
    expect "verify a flipped moment" 1 "adam_v/wpe.weight" -- "$E" ckpt verify "$bad"
    head -c $(($(stat -c %s "$good") / 2)) "$good" >"$bad"
    expect "verify a truncated file" 1 "$bad" -- "$E" ckpt verify "$bad"
    expect "resume a truncated file" 1 "$bad" -- "$E" train --config "$W/c.ini" --run-dir "$W/r" --resume "$bad"
    head -c 100000 /dev/urandom >"$bad"
    expect "verify random bytes" 1 "is not an HDF5 file" -- "$E" ckpt verify "$bad"
    : >"$bad"
    expect "verify an empty file" 1 "is empty" -- "$E" ckpt verify "$bad"
    expect "info of a missing file" 1 "$W/missing.h5" -- "$E" ckpt info "$W/missing.h5"
    cp "$good" "$bad"
    "$CKPT_TOOL" set-version "$bad" 2 || { fail "ckpt_tool set-version failed"; return; }
    expect "another format version" 1 "format version 2 is not supported (this build reads version 1)" \
        -- "$E" ckpt verify "$bad"
    expect "resume another model" 2 "model.width: checkpoint 32, this run 64" -- "$E" train \
        --config "$W/c.ini" --run-dir "$W/r" --resume "$good" --set model.width=64
    expect "resume another vocabulary" 2 "model.vocab: checkpoint 257, this run 300" -- "$E" train \
        --config "$W/c.ini" --run-dir "$W/r" --resume "$good" --set model.vocab=300
    "$E" ckpt verify "$good" >/dev/null || fail "the untouched checkpoint no longer verifies"
}

# A checkpoint of the tiniest model (16 tensors, 65 KB): $W/tiny/checkpoints/step_00000003.h5
tiny_checkpoint() {
    make_data
    write_config "$W/tiny.ini"
    sed -i 's/^layers = 2/layers = 1/; s/^width = 32/width = 8/; s/^context = 32/context = 8/;
            s/^steps = 30/steps = 3/; s/^warmup_steps = 5/warmup_steps = 1/; s/^every = 10/every = 0/' \
        "$W/tiny.ini"
    expect "train a tiny model" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/tiny" || return 1
    [ -f "$W/tiny/checkpoints/step_00000003.h5" ] || { fail "no checkpoint at step 3"; return 1; }
}

case_fuzz() {
    [ -x "$CKPT_TOOL" ] || { fail "ckpt_tool is missing ($CKPT_TOOL)"; return; }
    tiny_checkpoint || return
    local seed=${CKPT_FUZZ_SEED:-1}
    echo "  seed $seed (set CKPT_FUZZ_SEED to change it)"
    expect "every metadata byte, sampled data bytes" 0 "out:all changed" -- \
        "$CKPT_TOOL" fuzz "$W/tiny/checkpoints/step_00000003.h5" "$seed" 300
    sed 's/^/    /' "$W/out"
    # the harness itself: checks that die on a change are caught, named and
    # fail the run, and the changes after it are still tried
    expect "a crash of the checks fails the run" 1 --no-error-line "out:the checks died (signal 8)" \
        "out:all changed: 39 refused, 0 harmless, 1 crashed" -- env CKPT_FUZZ_ONLY=40 CKPT_FUZZ_CRASH_AT=7 \
        "$CKPT_TOOL" fuzz "$W/tiny/checkpoints/step_00000003.h5" "$seed" 0
}

case_hostile() {
    local py=/usr/bin/python3
    if ! "$py" -c 'import numpy, h5py' 2>/dev/null; then
        echo "SKIP: /usr/bin/python3 cannot import numpy and h5py (Debian: python3-numpy python3-h5py)"
        exit 77
    fi
    tiny_checkpoint || return
    mkdir -p "$W/h"
    "$py" "$SRC/tests/ckpt_hostile.py" "$W/tiny/checkpoints/step_00000003.h5" "$W/h" >"$W/cases" ||
        { fail "ckpt_hostile.py failed"; return; }
    local name what n=0
    while IFS=$'\t' read -r name what; do
        n=$((n + 1))
        if [ -z "$what" ]; then # written by h5py, and valid
            expect "$name verifies" 0 "out:ok: step 3" -- "$E" ckpt verify "$W/h/$name"
            expect "$name resumes" 0 "out:resumed from" -- timeout 60 "$E" train --config "$W/tiny.ini" \
                --run-dir "$W/r_$name" --resume "$W/h/$name" --set train.steps=5
            continue
        fi
        expect "verify $name" 1 "$W/h/$name" "$what" -- "$E" ckpt verify "$W/h/$name"
        # refused before training (a negative data cursor once spun forever: timeout)
        expect "resume $name" 1 "$W/h/$name" "$what" -- timeout 60 "$E" train --config "$W/tiny.ini" \
            --run-dir "$W/r_$name" --resume "$W/h/$name" --set train.steps=5
        [ -e "$W/r_$name/checkpoints" ] && fail "resume $name: a refused resume wrote checkpoints"
    done <"$W/cases"
    [ "$n" -ge 26 ] || fail "ckpt_hostile.py wrote $n cases, expected 26 or more"
}

# SIGKILL 20 times at random moments of a run that saves every step (half of
# them at random moments inside a save): the
# run directory's `latest` must always name a checkpoint that verifies, and a
# run resumed from it must train on.
case_kill() {
    make_data
    ckpt_config "$W/c.ini"
    # saves dominate each step: a model whose checkpoint (params + AdamW) is ~40 MB
    local big=(--set model.layers=4 --set model.width=256 --set model.heads=4 --set model.context=32
        --set train.steps=1000000 --set checkpoint.every=1 --set checkpoint.keep=2
        --set eval.every=0 --set sample.tokens=0)
    local i during=0 steps_seen="" kills=${ENTENTE_TEST_KILLS:-20}
    for i in $(seq 1 "$kills"); do
        "$E" train --config "$W/c.ini" --run-dir "$W/run" --resume auto "${big[@]}" \
            >"$W/out" 2>"$W/err" &
        local pid=$!
        # wait for this run's first checkpoint event, then a random moment
        local before after t
        before=$(cat "$W/run/metrics.jsonl" 2>/dev/null | grep -c '"event":"checkpoint"')
        for t in $(seq 300); do
            after=$(cat "$W/run/metrics.jsonl" 2>/dev/null | grep -c '"event":"checkpoint"')
            [ "$after" -gt "$before" ] && break
            kill -0 $pid 2>/dev/null || break
            sleep 0.05
        done
        if [ $((i % 2)) = 0 ]; then
            # any moment of training or saving
            sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
        else
            # a moment inside a save: once its .tmp exists, within 0-19 ms
            # (a save is short next to a step on a busy machine, so random
            # moments alone may all miss it; a tiny model's save can end
            # within 50 ms, and two suites at once made 4 of 5 aimed kills
            # miss with 0-49 ms)
            for t in $(seq 2000); do
                compgen -G "$W/run/checkpoints/*.tmp" >/dev/null && break
                kill -0 $pid 2>/dev/null || break
                sleep 0.002
            done
            sleep "0.0$((RANDOM % 2))$((RANDOM % 10))"
        fi
        kill -9 $pid 2>/dev/null
        wait $pid 2>/dev/null
        ls "$W/run/checkpoints"/*.tmp >/dev/null 2>&1 && during=$((during + 1))
        local latest
        latest=$(readlink "$W/run/checkpoints/latest") || { fail "kill $i: no latest pointer"; continue; }
        if ! "$E" ckpt verify "$W/run/checkpoints/latest" >"$W/v.out" 2>"$W/v.err"; then
            fail "kill $i: latest ($latest) does not verify: $(cat "$W/v.err")"
            continue
        fi
        steps_seen="$steps_seen $(sed -n 's/^step_0*\([0-9]*\)\.h5$/\1/p' <<<"$latest")"
    done
    # every kill was followed by a resume from latest (the next iteration's
    # --resume auto); the last one is checked here explicitly
    local step
    step=$(sed -n 's/.*step_0*\([0-9]*\)\.h5.*/\1/p' <<<"$(readlink "$W/run/checkpoints/latest")")
    expect "resume after the last kill" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/run" \
        --resume latest "${big[@]}" --set train.steps=$((step + 2)) --set checkpoint.every=0
    grep -q "\"resumed_step\":$step" "$W/run/metrics.jsonl" || fail "the last resume did not start from step $step"
    echo "    $kills kills, $during of them while a checkpoint was being written; latest after each:$steps_seen"
    # half the kills aim inside a save; at least 3 in 20 must land there
    [ "$during" -ge $(((kills * 3 + 19) / 20)) ] ||
        fail "only $during of $kills kills landed during a save: the test did not test saves"
}

# A save that cannot fit. A first run saves step 2 normally; a resumed run
# then cannot save step 4. When the room is checked (DESC *-checked), the
# resumed run finds that before its first step: it stops at once (on_error =
# stop), training nothing, or warns and trains on (continue). When the check
# is skipped (*-midway), the save fails midway: it stops after step 4 or
# trains on. Step 2 stays the intact latest checkpoint either way.
# disk_full_run DESC DIR ULIMIT_KB EXPECTED_MESSAGE [ENV...]; the resumed runs
# are started through ${LAUNCH[@]} (empty: one process)
LAUNCH=()
disk_full_run() {
    local desc=$1 dir=$2 limit=$3 why=$4
    shift 4
    # a save every 2 steps: the first run leaves step 2, the save at step 4
    # fails (each step costs, a guarded one ~15 times a plain one)
    local when=("checkpoint at step 4 failed" "the previous checkpoint is intact")
    case $desc in *-checked) when=("checked before step 1" "checkpoints cannot be saved in $dir") ;; esac
    local sets=(--set model.layers=4 --set model.width=128 --set checkpoint.dir="$dir"
        --set eval.every=0 --set sample.tokens=0 --set checkpoint.every=2 --set train.steps=4)
    rm -rf "$W/r-$desc"
    # the first run only sets the stage: on the plain backend where a guarded
    # one is under test (the saves that fail below are what it guards)
    expect "$desc: first run" 0 -- "${ENTENTE_REAL:-$E}" train --config "$W/c.ini" --run-dir "$W/r-$desc" \
        "${sets[@]}" --set train.steps=2 --set checkpoint.keep=0 || return
    [ "$(readlink "$dir/latest")" = step_00000002.h5 ] || { fail "$desc: no checkpoint at step 2"; return; }
    local records
    records=$(grep -c '"loss":' "$W/r-$desc/metrics.jsonl")
    expect "$desc: on_error = stop" 1 "${when[@]}" \
        "$why" -- env "$@" bash -c "ulimit -f $limit; exec \"\$@\"" - \
        "${LAUNCH[@]}" "$E" train --config "$W/c.ini" --run-dir "$W/r-$desc" "${sets[@]}" --resume latest
    case $desc in *-checked)
        [ "$(grep -c '"loss":' "$W/r-$desc/metrics.jsonl")" = "$records" ] ||
            fail "$desc: a run whose checkpoint could not fit trained before it stopped" ;;
    esac
    [ "$(readlink "$dir/latest")" = step_00000002.h5 ] || fail "$desc: latest moved off step 2"
    "$E" ckpt verify "$dir/latest" >/dev/null || fail "$desc: step 2 no longer verifies"
    [ -e "$dir/step_00000004.h5" ] && fail "$desc: the failed save left step_00000004.h5"
    ls "$dir"/*.tmp >/dev/null 2>&1 && fail "$desc: the failed save left a .tmp file"
    expect "$desc: on_error = continue" 0 "err:checkpoint at step 4 failed, training goes on" \
        -- env "$@" bash -c "ulimit -f $limit; exec \"\$@\"" - "${LAUNCH[@]}" "$E" train \
        --config "$W/c.ini" --run-dir "$W/r-$desc" "${sets[@]}" --resume latest \
        --set checkpoint.on_error=continue
    [ "$(readlink "$dir/latest")" = step_00000002.h5 ] || fail "$desc: latest moved off step 2"
}

case_disk_full() {
    make_data
    ckpt_config "$W/c.ini"
    # a ~10 MB checkpoint. A 5 MB file-size limit (EFBIG; MPI itself starts in
    # that): refused before writing, and, with the check skipped, failing midway
    local skip=ENTENTE_CKPT_SKIP_SPACE_CHECK=1
    disk_full_run "limit-checked" "$W/c1" 5000 "exceeds this process's file-size limit" X=1
    disk_full_run "limit-midway" "$W/c2" 5000 "file write failed" "$skip"
    # a real full file system: a 15 MB tmpfs holds one checkpoint, not two
    # (mounting needs root; said when not possible)
    mkdir -p "$W/tmpfs"
    if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=15m tmpfs "$W/tmpfs" 2>/dev/null; then
        disk_full_run "tmpfs-checked" "$W/tmpfs/c3" unlimited "the file system has" X=1
        rm -rf "$W/tmpfs/c3"
        disk_full_run "tmpfs-midway" "$W/tmpfs/c4" unlimited "file write failed" "$skip"
        rm -rf "$W/tmpfs/c4"
        # two ranks: rank 0 lays the whole file out (sparse), the ranks'
        # writes into it then fail
        need_mpirun
        LAUNCH=(timeout 120 "${MPIRUN[@]}" -np 2)
        disk_full_run "tmpfs-midway-2-ranks" "$W/tmpfs/c5" unlimited "file write failed" "$skip"
        LAUNCH=()
        umount "$W/tmpfs"
    else
        echo "    (no tmpfs could be mounted here: the full file system was tested through the file-size limit only)"
    fi
}

case_signal() {
    make_data
    ckpt_config "$W/c.ini"
    local n=${ENTENTE_TEST_LONG_STEPS:-400} # long enough for SIGTERM at step 5 to land mid-run
    local long=(--set train.steps=$n --set checkpoint.every=0 --set eval.every=0 --set sample.tokens=0)
    expect "uninterrupted" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/a" "${long[@]}" || return
    "$E" train --config "$W/c.ini" --run-dir "$W/b" "${long[@]}" >"$W/out" 2>"$W/err" &
    sigterm_at_step $! "$W/b/metrics.jsonl" 5 || return
    local stop
    stop=$(sed -n 's/.*"event":"end","step":\([0-9]*\),"reason":"signal".*/\1/p' "$W/b/metrics.jsonl")
    [ -n "$stop" ] || { fail "no end record with reason signal"; return; }
    [ "$(readlink "$W/b/checkpoints/latest")" = "$(printf 'step_%08d.h5' "$stop")" ] ||
        fail "the stop at step $stop saved no checkpoint of it"
    expect "requeued: --resume auto" 0 -- "$E" train --config "$W/c.ini" --run-dir "$W/b" \
        --resume auto "${long[@]}" || return
    same_curve "stopped by SIGTERM, resumed" "$W/a/metrics.jsonl" "$W/b/metrics.jsonl" \
        $((stop + 1)) "$n" 0
}

run_case
