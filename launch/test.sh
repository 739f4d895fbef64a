#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: install what is
# missing, build, and run every test with ctest. Tests that cannot run here
# (no GPU, no Slurm) are reported as skipped with their reason, never as passed.
# Extra arguments go to ctest, e.g. -L unit or -R cli_.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
launch/build.sh
cd build
ctest --output-on-failure --timeout 600 "$@"
