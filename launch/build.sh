#!/usr/bin/env bash
# Configures and builds Entente (Release) into build/: the CPU backend, and the
# cuda backend and NCCL collectives when nvcc and the CUDA toolkit are found.
# Extra arguments go to CMake's configure step, e.g. -DENT_ARCH=native.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$(nproc)"
