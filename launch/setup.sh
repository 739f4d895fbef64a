#!/usr/bin/env bash
# Installs the Debian 12 packages Entente builds, runs and tests with.
# Idempotent: packages already present are left alone, and when nothing is missing
# it changes nothing and needs no root. Otherwise it needs root (or sudo).
set -euo pipefail

packages=(
    build-essential cmake pkg-config      # toolchain
    libopenmpi-dev openmpi-bin            # MPI: every entente process is an MPI rank
    libopenblas-openmp-dev                # BLAS (OpenMP flavour, so it nests with our OpenMP)
    libzmq3-dev                           # ZeroMQ (CURVE): the coalition link between sites
    libhdf5-openmpi-dev hdf5-tools        # parallel HDF5 checkpoints; h5dump for the layout test
    libpcre2-dev libcjson-dev             # the BPE tokenizer: its regexes, tokenizer.json
    libunistring-dev                      # the BPE tokenizer: NFC (Qwen2's normalizer)
    libcmocka-dev                         # unit tests
    python3-numpy python3-h5py            # tests read checkpoints without Entente, as users would
    bible-kjv                             # the built-in default corpus
    gnuplot-nox                           # loss.png of the local coalition (launch/coalition.sh)
    slurm-wlm munge                       # Slurm, for the template test (a one-node cluster)
    clang                                 # libFuzzer targets of the suite (the link's decoders)
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: all ${#packages[@]} packages present"
    exit 0
fi

echo "setup: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "setup: need root to install ${missing[*]} (run as root or install sudo)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
