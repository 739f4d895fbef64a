#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing, build,
# and run a local coalition (launch/coalition.sh): a coordinator and 3 sites,
# each its own mpirun, co-training configs/coalition.ini on their own thirds of
# the King James Bible (prepared the first time). Extra arguments go to
# launch/coalition.sh, e.g. --sites 2 or --set coalition.rounds=3.
# The single-site alternative: build/entente train --config configs/demo.ini
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
launch/build.sh
exec launch/coalition.sh "$@"
