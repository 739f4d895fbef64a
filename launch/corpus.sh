#!/usr/bin/env bash
# Prepares the default corpus, the King James Bible from Debian's bible-kjv,
# as token shards in data/kjv (the first time only): the corpus of
# configs/demo.ini and of the local coalition (launch/coalition.sh).
# Needs build/entente (launch/build.sh) and the bible program (launch/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

corpus=data/kjv
if [ -f "$corpus/train_000000.bin" ] && [ -f "$corpus/val_000000.bin" ]; then
    exit 0
fi
if [ ! -x build/entente ]; then
    echo "corpus: build/entente is missing: run launch/build.sh first" >&2
    exit 1
fi
if ! command -v bible >/dev/null 2>&1; then
    echo "corpus: the bible program is missing: run launch/setup.sh (package bible-kjv)" >&2
    exit 1
fi
echo "corpus: preparing the default corpus in $corpus"
mkdir -p "$corpus"
bible -l0 "Gen1:1-Rev22:21" > "$corpus/kjv.txt.tmp"
mv "$corpus/kjv.txt.tmp" "$corpus/kjv.txt"
build/entente data prepare --input "$corpus/kjv.txt" --output "$corpus" --force
