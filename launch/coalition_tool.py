#!/usr/bin/env python3
"""Text munging for launch/coalition.sh (standard library only).

  coalition_tool.py split [--stripe BYTES] SHARD_DIR OUT_FILE [OUT_FILE ...]
      Reads the training shards of SHARD_DIR (train_*.bin, in name order,
      llm.c's .bin layout of byte-level tokens), and writes their text into
      the OUT_FILEs: disjoint parts of about equal size, cut at line ends,
      that together hold every byte of the training tokens once (end-of-text
      tokens, which only mark where a document starts, are left out:
      `entente data prepare` puts one before each file again). Each part is
      one contiguous piece, or with --stripe, pieces of about BYTES dealt out
      in turn (piece i to part i mod N), so every part draws from the whole
      text. The validation shards are not read, so no part holds validation
      text.

  coalition_tool.py columns METRICS_JSONL FIELD [FIELD ...] [--event NAME]
      Prints one line per record of a metrics.jsonl that has every FIELD as a
      number: the FIELDs' values separated by spaces (for gnuplot). Records
      are those whose "event" is NAME, or, without --event, those with no
      "event" (training steps and evaluations). Records where a FIELD is
      missing or null are skipped; a line that is not a JSON object (a run
      killed in the middle of writing one) is skipped with a warning.

  coalition_tool.py ini-value SECTION KEY < CONFIG
      Prints the value of SECTION.KEY in a configuration as `entente train
      --print-config` writes it, quotes and escapes (\\n \\t \\" \\\\ \\;)
      undone; nothing when the key is absent.

Exit codes: 0 success, 1 bad input (named), 2 usage.
"""

import glob
import json
import math
import os
import re
import struct
import sys

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_BYTES = 1024
EOT = 256


class InputError(Exception):
    pass


def read_shard_tokens(path):
    """The tokens of one shard as bytes (little-endian uint16 pairs), checked."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < SHARD_HEADER_BYTES:
        raise InputError(f"{path}: {len(data)} bytes, shorter than the "
                         f"{SHARD_HEADER_BYTES}-byte shard header")
    magic, version, ntok = struct.unpack_from("<iii", data, 0)
    if magic != SHARD_MAGIC:
        raise InputError(f"{path} is not a token shard: magic {magic}, "
                         f"expected {SHARD_MAGIC}")
    if version != SHARD_VERSION:
        raise InputError(f"{path}: shard version {version} is not supported "
                         f"(this tool reads version {SHARD_VERSION})")
    if ntok < 0 or len(data) != SHARD_HEADER_BYTES + 2 * ntok:
        raise InputError(f"{path}: its header announces {ntok} tokens "
                         f"({SHARD_HEADER_BYTES + 2 * ntok} bytes) but the "
                         f"file has {len(data)} bytes")
    return data[SHARD_HEADER_BYTES:]


def shard_text(paths):
    """The bytes the tokens of the shards stand for, end-of-text tokens left out."""
    text = bytearray()
    for path in paths:
        raw = read_shard_tokens(path)
        low, high = raw[0::2], raw[1::2]  # byte-level: a token < 256 is its byte
        start = 0
        for m in re.finditer(rb"[^\x00]", high):  # tokens >= 256: EOT only
            pos = m.start()
            tok = low[pos] | (high[pos] << 8)
            if tok != EOT:
                raise InputError(f"{path}: token {tok} at position {pos} is "
                                 f"not byte-level (vocabulary 257)")
            text += low[start:pos]
            start = pos + 1
        text += low[start:]
    return bytes(text)


def cut_points(text, parts):
    """Indices that cut text into `parts` pieces of about equal size, each
    cut just after a newline at or past the even share (or at the share when
    no newline follows); every piece is non-empty."""
    n = len(text)
    cuts = [0]
    for i in range(1, parts):
        target = max(n * i // parts, cuts[-1] + 1)
        nl = text.find(b"\n", target)
        cut = nl + 1 if nl >= 0 else target
        if cut >= n:
            cut = target
        cuts.append(cut)
    cuts.append(n)
    for a, b in zip(cuts, cuts[1:]):
        if b <= a:
            raise InputError(f"{len(text)} bytes of training text are too few "
                             f"for {parts} parts")
    return cuts


def cmd_split(args):
    stripe = 0
    if len(args) >= 2 and args[0] == "--stripe":
        try:
            stripe = int(args[1])
        except ValueError:
            stripe = 0
        if stripe < 1:
            print(f"coalition_tool: --stripe '{args[1]}': expected a number of "
                  f"bytes >= 1", file=sys.stderr)
            return 2
        args = args[2:]
    if len(args) < 2:
        return usage()
    shard_dir, outs = args[0], args[1:]
    paths = sorted(glob.glob(os.path.join(glob.escape(shard_dir), "train_*.bin")))
    if not paths:
        raise InputError(f"no training shards match {shard_dir}/train_*.bin")
    text = shard_text(paths)
    parts = len(outs)
    # contiguous: one piece per part; striped: about `stripe` bytes a piece,
    # a whole number of pieces per part, dealt out in turn
    pieces = parts * max(1, round(len(text) / stripe / parts)) if stripe else parts
    cuts = cut_points(text, pieces)
    for i, out in enumerate(outs):
        mine = list(zip(cuts[i:-1:parts], cuts[i + 1::parts]))
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            for a, b in mine:
                f.write(text[a:b])
        os.replace(tmp, out)
        size = sum(b - a for a, b in mine)
        if stripe:
            print(f"{out}: {size} bytes (stripes {i}, {i + parts}, ... of {pieces} "
                  f"of the {len(text)} training bytes)")
        else:
            a, b = mine[0]
            print(f"{out}: {size} bytes (training bytes {a}..{b - 1} of {len(text)})")
    return 0


def number(v):
    """v as a finite float, or None (bool, null, text, nan and inf are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def fmt(f):
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


def cmd_columns(args):
    event = None
    fields = []
    i = 0
    while i < len(args):
        if args[i] == "--event":
            if i + 1 >= len(args):
                return usage()
            event = args[i + 1]
            i += 2
        else:
            fields.append(args[i])
            i += 1
    if len(fields) < 2:
        return usage()
    path, fields = fields[0], fields[1:]
    bad = 0
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(rec, dict):
                bad += 1
                continue
            if rec.get("event") != event:
                continue
            values = [number(rec.get(k)) for k in fields]
            if any(v is None for v in values):
                continue
            print(" ".join(fmt(v) for v in values))
    if bad:
        print(f"coalition_tool: {path}: skipped {bad} line(s) that are not "
              f"JSON objects", file=sys.stderr)
    return 0


ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", ";": ";"}


def unquote(value):
    """A configuration text value as entente reads it: quotes and escapes undone."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    out, i, inner = [], 0, value[1:-1]
    while i < len(inner):
        c = inner[i]
        if c == "\\" and i + 1 < len(inner) and inner[i + 1] in ESCAPES:
            out.append(ESCAPES[inner[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def cmd_ini_value(args):
    if len(args) != 2:
        return usage()
    section, key = "[" + args[0] + "]", args[1]
    current = None
    for line in sys.stdin.buffer.read().decode("utf-8", "surrogateescape").splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line
        elif current == section and "=" in line:
            k, v = line.split("=", 1)
            if k.strip() == key:
                sys.stdout.buffer.write(unquote(v.strip()).encode("utf-8", "surrogateescape"))
                return 0
    return 0


def usage():
    print("usage: coalition_tool.py split [--stripe BYTES] SHARD_DIR OUT_FILE [OUT_FILE ...]\n"
          "       coalition_tool.py columns METRICS_JSONL FIELD [FIELD ...] "
          "[--event NAME]\n"
          "       coalition_tool.py ini-value SECTION KEY < CONFIG", file=sys.stderr)
    return 2


def main(argv):
    if len(argv) < 2:
        return usage()
    if argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    cmd = {"split": cmd_split, "columns": cmd_columns,
           "ini-value": cmd_ini_value}.get(argv[1])
    if cmd is None:
        print(f"coalition_tool: unknown command '{argv[1]}' (split, columns, ini-value)",
              file=sys.stderr)
        return 2
    try:
        return cmd(argv[2:])
    except (InputError, OSError) as e:
        print(f"coalition_tool: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
