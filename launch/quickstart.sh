#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing, build,
# prepare the default corpus (the King James Bible, the first time only) and
# train configs/demo.ini on it. Extra arguments go to `entente train`,
# e.g. --set train.steps=100.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
launch/build.sh

corpus=data/kjv
if [ ! -f "$corpus/train_000000.bin" ] || [ ! -f "$corpus/val_000000.bin" ]; then
    echo "quickstart: preparing the default corpus in $corpus"
    mkdir -p "$corpus"
    bible -l0 "Gen1:1-Rev22:21" > "$corpus/kjv.txt.tmp"
    mv "$corpus/kjv.txt.tmp" "$corpus/kjv.txt"
    build/entente data prepare --input "$corpus/kjv.txt" --output "$corpus" --force
fi

exec build/entente train --config configs/demo.ini "$@"
