#!/usr/bin/env bash
# gpu_check.sh: every GPU check in one call, on a machine with an NVIDIA GPU,
# from a bundle made by launch/gpu_bundle.sh on the build machine.
#
#   bash bench/gpu_check.sh BUNDLE.tar.gz RESULTS_DIR
#
# Unpacks the bundle, points LD_LIBRARY_PATH at its libraries and at the
# machine's CUDA libraries (cuBLASLt, NCCL: the toolkit's, or PyTorch's
# nvidia-* wheels), OPAL_PREFIX at its Open MPI, then writes to RESULTS_DIR:
#   device.txt       nvidia-smi, the driver, the libraries found
#   gpu_tests.txt    each gpu-labelled test (the build's ctest entries: every
#                    op against the cpu backend, GPT-2 and llama training
#                    against cpu, NCCL, checkpoints across backends):
#                    PASS, FAIL or SKIP with its output; a summary line
#   bench.txt        bench_gpu (entente, cuda backend) and bench/gpt2_torch.py
#                    (PyTorch, bf16 autocast, torch.compile) at the same batch
#                    and context, and the side-by-side table
# Exit status: 0 when every test passed or skipped, 1 otherwise.
set -u
BUNDLE_TGZ=$(readlink -f "${1:?usage: gpu_check.sh BUNDLE.tar.gz RESULTS_DIR}")
RES=${2:?usage: gpu_check.sh BUNDLE.tar.gz RESULTS_DIR}
mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/entente-gpu-check.XXXXXX")
tar -C "$WORK" -xzf "$BUNDLE_TGZ" || { echo "gpu_check: cannot unpack $BUNDLE_TGZ"; exit 1; }
export BUNDLE=$WORK/entente-gpu

# CUDA's libraries from the machine: the toolkit's, then PyTorch's wheels
cudalibs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && cudalibs=$cudalibs:$d
done
py=$(command -v python3 || true)
if [ -n "$py" ]; then
    wheels=$("$py" - <<'EOF' 2>/dev/null
import glob, os, site
dirs = []
for s in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib")))
print(":".join(dirs))
EOF
)
    [ -n "$wheels" ] && cudalibs=$cudalibs:$wheels
fi
export LD_LIBRARY_PATH=$BUNDLE/lib$cudalibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Open MPI from the bundle (relocated), allowed to run as root and to oversubscribe
export OPAL_PREFIX=$BUNDLE/mpi
export PATH=$BUNDLE/mpi/bin:$PATH
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_ess_singleton_isolated=1
export OMPI_MCA_btl=self,vader,tcp

{
    echo "== nvidia-smi"; nvidia-smi 2>&1
    echo "== libraries"; ldd "$BUNDLE/bin/entente" 2>&1 | grep -E "not found|cuda|cublas|nccl|mpi"
    echo "== cuda backend"; "$BUNDLE/bin/test_backend_ops" --available cuda 2>&1
} >"$RES/device.txt"

# ---- the gpu-labelled tests
pass=0 fail=0 skip=0
run_test() {
    local name=$1 skipcode=$2 limit=$3
    shift 3
    local env=()
    while [ "$1" != "--" ]; do env+=("$1"); shift; done
    shift
    local t0=$SECONDS
    (cd "$WORK" && env "${env[@]}" timeout "$limit" "$@") >"$WORK/out" 2>&1
    local rc=$? verdict
    if [ $rc -eq 0 ]; then verdict=PASS; pass=$((pass + 1))
    elif [ "$skipcode" != 0 ] && [ $rc -eq "$skipcode" ]; then verdict=SKIP; skip=$((skip + 1))
    else verdict="FAIL (exit $rc)"; fail=$((fail + 1)); fi
    {
        echo "== $name: $verdict, $((SECONDS - t0)) s"
        tail -40 "$WORK/out"
    } >>"$RES/gpu_tests.txt"
    echo "$name: $verdict"
}
: >"$RES/gpu_tests.txt"
# shellcheck source=/dev/null
. "$BUNDLE/gpu_tests.sh"
echo "gpu tests: $pass passed, $fail failed, $skip skipped" | tee -a "$RES/gpu_tests.txt"

# ---- the bench: entente's cuda backend beside PyTorch, same batch and context
{
    "$BUNDLE/bin/bench_gpu" 2>&1
    echo "bench_gpu exit $?"
} >"$RES/bench.txt"
ours=$(grep '^RESULT' "$RES/bench.txt" | tail -1)
batch=$(echo "$ours" | sed -n 's/.*batch=\([0-9]*\).*/\1/p')
if [ -n "$batch" ] && [ -n "$py" ]; then
    PYTHONUNBUFFERED=1 timeout 900 "$py" "$BUNDLE/src/bench/gpt2_torch.py" --batch "$batch" \
        >>"$RES/bench.txt" 2>&1
    echo "gpt2_torch exit $?" >>"$RES/bench.txt"
fi
theirs=$(grep '^RESULT' "$RES/bench.txt" | tail -1)
[ "$theirs" = "$ours" ] && theirs=""
field() { echo "$1" | sed -n "s/.*$2=\([0-9.]*\).*/\1/p"; }
{
    echo
    echo "GPT-2 124M, batch ${batch:-?} x context 1024, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
    printf '%-34s %14s %8s\n' "trainer" "tokens/s" "MFU"
    printf '%-34s %14s %8s\n' "entente cuda (f32, TF32 matmuls)" "$(field "$ours" tokens_per_s)" "$(field "$ours" mfu)"
    printf '%-34s %14s %8s\n' "PyTorch (bf16 autocast, compile)" "$(field "$theirs" tokens_per_s)" "$(field "$theirs" mfu)"
} | tee -a "$RES/bench.txt"
rm -rf "$WORK"
[ $fail -eq 0 ]
