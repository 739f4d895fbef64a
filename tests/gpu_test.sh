#!/usr/bin/env bash
# gpu_test.sh: the trainer on the cuda backend (label gpu), one named case per call.
#
#   gpu_test.sh ENTENTE_BINARY SOURCE_DIR CASE
#
# train_vs_cpu   20 steps of the tiny model on cuda (bf16, its default
#                precision) and on cpu: every loss within 1e-2 relative, the
#                cuda run repeated gives the same losses bit for bit; and
#                cuda in f32 (TF32 matrix products) within 1e-2 of cpu
# llama_vs_cpu   the same for a tiny llama (RMSNorm, rotary embeddings with
#                Llama 3's bands, grouped-query attention with 2 query heads
#                per KV head, SwiGLU): 20 steps on cuda within 1e-2 of cpu,
#                bit-identical when repeated
# parallel       NCCL groups on the cuda backend: DP=2 x TP=2 where 4 GPUs are
#                visible, DP=2 and TP=2 where 2 are, one rank otherwise; each
#                layout's losses within 1e-2 of the same layout on cpu
# ckpt_cross     a checkpoint written by a cuda run resumes on cpu, and one
#                written on cpu resumes on cuda: the continued losses within
#                1e-2 of the uninterrupted run (the file holds f32 weights)
#
# Each case first checks that the cuda backend can run here: without a
# visible GPU, or in a build without CUDA, it exits 77 with the reason.
set -u
# shellcheck source=cli_lib.sh
. "$(dirname "$0")/cli_lib.sh"

CUDA=(--set system.backend=cuda)

# need_gpu: skips (77) with the binary's own reason when cuda cannot run here
need_gpu() {
    make_data
    write_config "$W/tiny.ini"
    "$E" train --config "$W/tiny.ini" --run-dir "$W/probe" --set train.steps=1 \
        --set eval.every=0 --set sample.tokens=0 "${CUDA[@]}" >"$W/out" 2>"$W/err"
    local rc=$?
    if [ $rc -ne 0 ] && grep -q "no CUDA device visible\|has no CUDA" "$W/err"; then
        echo "SKIP: $(grep -m1 'error: ' "$W/err" | sed 's/^.*error: //')"
        exit 77
    fi
    [ $rc -eq 0 ] || { fail "one cuda step: exit $rc"; sed 's/^/      /' "$W/err" | tail -5; exit 1; }
}

# visible_gpus: how many GPUs this process sees
visible_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        local n
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
        if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
            local listed
            listed=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
            [ "$listed" -lt "$n" ] && n=$listed
        fi
        echo "$n"
    else
        echo 1
    fi
}

case_train_vs_cpu() {
    need_gpu
    local common=(--set train.steps=20 --set eval.every=10 --set sample.tokens=0)
    expect "20 steps on cpu" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/cpu" "${common[@]}" || return
    expect "20 steps on cuda" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/cuda" \
        "${common[@]}" "${CUDA[@]}" || return
    expect "20 steps on cuda again" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/cuda2" \
        "${common[@]}" "${CUDA[@]}" || return
    expect "20 steps on cuda in f32" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/cuda32" \
        "${common[@]}" "${CUDA[@]}" --set system.precision=f32 || return
    grep -q '"precision":"bf16"' "$W/cuda/run.json" || fail "run.json of the cuda run does not say bf16"
    grep -q '"precision":"f32"' "$W/cuda32/run.json" || fail "run.json of the f32 cuda run does not say f32"
    same_curve "cuda (bf16) vs cpu" "$W/cpu/metrics.jsonl" "$W/cuda/metrics.jsonl" 1 20 1e-2
    same_curve "cuda run twice" "$W/cuda/metrics.jsonl" "$W/cuda2/metrics.jsonl" 1 20 0
    same_curve "cuda (f32) vs cpu" "$W/cpu/metrics.jsonl" "$W/cuda32/metrics.jsonl" 1 20 1e-2
}

case_llama_vs_cpu() {
    need_gpu
    local common=(--set train.steps=20 --set eval.every=10 --set sample.tokens=0
                  --set model.arch=llama --set model.heads=4 --set model.n_kv_heads=2
                  --set model.rope_scaling=llama3 --set model.rope_original_context=16)
    expect "20 llama steps on cpu" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/cpu" \
        "${common[@]}" || return
    expect "20 llama steps on cuda" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/cuda" \
        "${common[@]}" "${CUDA[@]}" || return
    expect "20 llama steps on cuda again" 0 -- "$E" train --config "$W/tiny.ini" \
        --run-dir "$W/cuda2" "${common[@]}" "${CUDA[@]}" || return
    same_curve "llama: cuda vs cpu" "$W/cpu/metrics.jsonl" "$W/cuda/metrics.jsonl" 1 20 1e-2
    same_curve "llama: cuda run twice" "$W/cuda/metrics.jsonl" "$W/cuda2/metrics.jsonl" 1 20 0
}

case_parallel() {
    need_gpu
    need_mpirun
    local gpus layouts=()
    gpus=$(visible_gpus)
    if [ "$gpus" -ge 4 ]; then
        layouts=("4:--set parallel.tp=2")
    elif [ "$gpus" -ge 2 ]; then
        layouts=("2:" "2:--set parallel.tp=2")
    else
        layouts=("1:")
    fi
    echo "GPUs visible: $gpus; layouts (ranks:options): ${layouts[*]}"
    local common=(--set train.steps=12 --set eval.every=6 --set sample.tokens=0) lay
    sed -i 's/^heads = 2/heads = 4/' "$W/tiny.ini"
    for lay in "${layouts[@]}"; do
        local np=${lay%%:*} args=() b
        [ -n "${lay#*:}" ] && read -r -a args <<<"${lay#*:}"
        for b in cpu cuda; do
            local extra=()
            [ "$b" = cuda ] && extra=("${CUDA[@]}")
            timeout 240 "${MPIRUN[@]}" -np "$np" "$E" train --config "$W/tiny.ini" \
                --run-dir "$W/$np${args[*]// /}-$b" "${common[@]}" "${args[@]}" "${extra[@]}" \
                >"$W/out" 2>"$W/err" ||
                { fail "$np rank(s) ${args[*]}, $b: exit $?"; sed 's/^/      /' "$W/err" | tail -5; return; }
        done
        same_curve "$np rank(s) ${args[*]}: cuda vs cpu" "$W/$np${args[*]// /}-cpu/metrics.jsonl" \
            "$W/$np${args[*]// /}-cuda/metrics.jsonl" 1 12 1e-2
    done
}

case_ckpt_cross() {
    need_gpu
    local common=(--set train.steps=12 --set eval.every=0 --set sample.tokens=0 --set checkpoint.every=6)
    local b
    for b in cpu cuda; do
        local extra=()
        [ "$b" = cuda ] && extra=("${CUDA[@]}")
        expect "12 steps on $b, saving at 6" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/$b" \
            "${common[@]}" "${extra[@]}" || return
    done
    expect "the cuda checkpoint verifies" 0 -- "$E" ckpt verify "$W/cuda/checkpoints/step_00000006.h5"
    expect "resume the cuda checkpoint on cpu" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/c2c" \
        "${common[@]}" --resume "$W/cuda/checkpoints/step_00000006.h5" || return
    same_curve "cuda checkpoint resumed on cpu" "$W/cuda/metrics.jsonl" "$W/c2c/metrics.jsonl" 7 12 1e-2
    expect "resume the cpu checkpoint on cuda" 0 -- "$E" train --config "$W/tiny.ini" --run-dir "$W/p2g" \
        "${common[@]}" "${CUDA[@]}" --resume "$W/cpu/checkpoints/step_00000006.h5" || return
    same_curve "cpu checkpoint resumed on cuda" "$W/cpu/metrics.jsonl" "$W/p2g/metrics.jsonl" 7 12 1e-2
}

run_case
