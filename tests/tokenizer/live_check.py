#!/usr/bin/env python3
"""Compares the shards `entente data prepare --tokenizer` wrote with Hugging Face
`tokenizers` (the reference implementation) on the same documents.

usage: live_check.py SHARD_DIR TOKENIZER_DIR DOC_FILE [DOC_FILE ...]

The shards (one preparation with --val-fraction 0, the documents in this order)
must hold, for each document, the tokenizer's document token and then the ids
the library gives the document's bytes, cut at invalid UTF-8 as
make_fixtures.golden_ids does. Prints the first difference with its context
and exits 1, or prints the counts and exits 0. Needs `tokenizers`, numpy-free.
"""
import glob
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import golden_ids  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def read_shards(folder):
    ids = []
    for path in sorted(glob.glob(os.path.join(folder, "train_*.bin"))):
        data = open(path, "rb").read()
        magic, version, count, width = struct.unpack("<4i", data[:16])
        assert magic == 20240520, (path, magic)
        width = 2 if version == 1 else width
        fmt = "<%d%s" % (count, "H" if width == 2 else "I")
        assert len(data) == 1024 + count * width, (path, len(data), count, width)
        ids += struct.unpack(fmt, data[1024:])
    return ids


def main():
    shard_dir, tok_dir, docs = sys.argv[1], sys.argv[2], sys.argv[3:]
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    eot = None
    for name in ("<|begin_of_text|>", "<|endoftext|>", "<s>", "<|end_of_text|>"):
        if tok.token_to_id(name) is not None:
            eot = tok.token_to_id(name)
            break
    want = []
    for doc in docs:
        want.append(eot)
        want += golden_ids(tok, open(doc, "rb").read())
    got = read_shards(shard_dir)
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            ctx = want[max(0, i - 5):i + 5]
            print("FAIL: id %d is %d, the tokenizers library gave %d; its neighbours %s "
                  "decode to %r" % (i, a, b, ctx, tok.decode([t for t in ctx if t is not None])))
            return 1
    if len(got) != len(want):
        print("FAIL: %d ids in the shards, the tokenizers library gave %d" % (len(got), len(want)))
        return 1
    print("%s: %d ids, equal to the tokenizers library's" % (tok_dir, len(got)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
