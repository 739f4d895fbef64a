#!/usr/bin/python3
"""ckpt_hostile.py: checkpoints written by h5py, not by entente (ckpt_test.sh hostile).

    ckpt_hostile.py GOOD.h5 OUTDIR

Reads GOOD.h5 (written by entente) and writes, with h5py only:
  valid.h5         the same checkpoint rewritten: texts as h5py writes them
                   (variable-length, fixed-length NULLPAD without a NUL,
                   SPACEPAD), the digest recomputed as docs/checkpoint.md says;
                   it must verify and resume
  int32.h5         params/h.0.ln_1.weight stored as int32
  wpe_shape.h5     params/wpe.weight one row short
  step.h5          step = -5
  updates.h5       optim.updates = step + 1 (AdamW cannot have updated more often than the steps)
  updates_neg.h5   optim.updates = -1
  no_updates.h5    without optim.updates (as an earlier entente wrote them)
  consumed.h5      data.consumed = 2^62
  negative.h5      data.consumed negated (tokens and epoch to match): the
                   data order would walk forever
  tensors.h5       tensors = one less than the table's rows
  tokens.h5        tokens one more than data.consumed x model.context
  epoch.h5         data.epoch one more than data.consumed / data.sequences
  width.h5         model.width twice what the stored configuration says
  config_width.h5  the stored configuration's width doubled (model.width not)
  config_text.h5   a stored configuration that does not load (width = wide)
  architecture.h5  model.architecture 'llama' for a GPT-2
  model_shape_hash.h5, rng_train_seed.h5, rng_data_order_key.h5
                   each with its lowest bit flipped
  saved_by.h5      saved_by.dp = 2 in a world of 1
  extra.h5         one dataset more in /params
  no_fletcher.h5   params/ln_f.bias without its Fletcher32 checksum
  old_format.h5    valid.h5's content in HDF5's oldest format (no metadata checksums)
  v18_format.h5    valid.h5's content in HDF5's 1.8 format (chunk indexes without checksums)
  no_digest.h5     valid.h5 without its digest
  bad_digest.h5    valid.h5 with `step` changed but not the digest
Each file but valid.h5 has a correct digest unless said otherwise, so that
what refuses it is the check named; prints NAME<TAB>WHAT-THE-MESSAGE-MUST-NAME.
"""
import hashlib
import struct
import sys

import h5py
import numpy as np


def digest(attrs):
    """SHA-256 over (name, value) pairs as docs/checkpoint.md defines it."""
    out = b""
    for name in sorted(attrs, key=lambda n: n.encode()):
        v = attrs[name]
        out += name.encode() + b"\0"
        if isinstance(v, (bytes, str)):
            b = v.encode() if isinstance(v, str) else v
            b = b.split(b"\0")[0]
            out += b"s" + struct.pack("<Q", len(b)) + b
        elif isinstance(v, (float, np.floating)):
            out += b"f" + struct.pack("<d", float(v))
        elif isinstance(v, np.unsignedinteger):
            out += b"u" + struct.pack("<Q", int(v))
        else:
            out += b"i" + struct.pack("<q", int(v))
    return "sha256:" + hashlib.sha256(out).hexdigest()


def read_attrs(f):
    a = {}
    for k, v in f.attrs.items():
        if k == "digest":
            continue
        a[k] = v.decode() if isinstance(v, bytes) else v
    return a


def spacepad(text):
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(text) + 3)
    tid.set_strpad(h5py.h5t.STR_SPACEPAD)
    return np.array((text + "   ").encode(), dtype="S%d" % (len(text) + 3)), h5py.Datatype(tid)


def write(path, attrs, data, libver=("v110", "latest"), set_digest=True, fletcher=None,
          dtypes=None):
    """attrs: name -> value; data: 'group/name' -> array."""
    fletcher = fletcher or {}
    dtypes = dtypes or {}
    with h5py.File(path, "w", libver=libver) as f:
        for k, v in attrs.items():
            if v is None:  # left out
                continue
            if isinstance(v, str):
                if k == "created":  # SPACEPAD, padded with spaces
                    val, t = spacepad(v)
                    f.attrs.create(k, val, dtype=t)
                elif k in ("revision", "model.architecture"):  # fixed, NULLPAD, no NUL
                    f.attrs[k] = np.bytes_(v.encode())
                else:  # variable-length UTF-8, h5py's own default
                    f.attrs[k] = v
            else:
                f.attrs[k] = v
        for name, arr in data.items():
            arr = arr.astype(dtypes.get(name, arr.dtype))
            chunks = (arr.shape[0],) + arr.shape[1:]  # whole rows, one chunk
            f.create_dataset(name, data=arr, chunks=chunks, fletcher32=fletcher.get(name, True))
        if set_digest:
            f.attrs["digest"] = digest(read_attrs(f))


def main():
    good, out = sys.argv[1], sys.argv[2]
    with h5py.File(good, "r") as f:
        attrs = read_attrs(f)
        data = {}
        f.visititems(lambda n, o: data.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    rows = int(attrs["tensors"])
    cases = []

    def case(name, what, **kw):
        a = dict(attrs)
        a.update(kw.pop("attrs", {}))
        d = dict(data)
        d.update(kw.pop("data", {}))
        write("%s/%s" % (out, name), a, d, **kw)
        cases.append((name, what))

    case("valid.h5", "")
    case("int32.h5", "params/h.0.ln_1.weight", dtypes={"params/h.0.ln_1.weight": np.int32})
    case("wpe_shape.h5", "params/wpe.weight", data={"params/wpe.weight": data["params/wpe.weight"][:-1].copy()})
    case("step.h5", "attribute 'step' is -5", attrs={"step": np.int64(-5)})
    step = int(attrs["step"])
    case("updates.h5", "attribute 'optim.updates' is %d (accepted: 0 to %d)" % (step + 1, step),
         attrs={"optim.updates": np.int64(step + 1)})
    case("updates_neg.h5", "attribute 'optim.updates' is -1 (accepted: 0 to %d)" % step,
         attrs={"optim.updates": np.int64(-1)})
    case("no_updates.h5", "attribute 'optim.updates' is missing",
         attrs={"optim.updates": None})
    case("consumed.h5", "attribute 'data.consumed' is 4611686018427387904",
         attrs={"data.consumed": np.int64(2**62)})
    neg = -int(attrs["data.consumed"]) or -1
    case("negative.h5", "attribute 'data.consumed' is %d" % neg,
         attrs={"data.consumed": np.int64(neg), "tokens": np.int64(neg * int(attrs["model.context"])),
                "data.epoch": np.int64(0)})
    case("tensors.h5", "attribute 'tensors' is %d" % (rows - 1), attrs={"tensors": np.int64(rows - 1)})
    # each attribute cross-checked against the others and the stored
    # configuration, the digest recomputed: only the cross-check can refuse it
    tokens = int(attrs["tokens"])
    case("tokens.h5", "attribute 'tokens' is %d; data.consumed x model.context says %d" %
         (tokens + 1, tokens), attrs={"tokens": np.int64(tokens + 1)})
    epoch = int(attrs["data.epoch"])
    case("epoch.h5", "attribute 'data.epoch' is %d" % (epoch + 1),
         attrs={"data.epoch": np.int64(epoch + 1)})
    width = int(attrs["model.width"])
    case("width.h5", "attribute 'model.width' is %d" % (width * 2),
         attrs={"model.width": np.int64(width * 2)})
    case("config_width.h5", "attribute 'model.width' is %d; the stored configuration" % width,
         attrs={"config": attrs["config"].replace("width = %d" % width, "width = %d" % (width * 2))})
    case("config_text.h5", "attribute 'config' is not a valid configuration",
         attrs={"config": attrs["config"].replace("width = %d" % width, "width = wide")})
    case("architecture.h5", "attribute 'model.architecture' is 'llama'",
         attrs={"model.architecture": "llama"})
    for key in ("model.shape_hash", "rng.train_seed", "rng.data_order_key"):
        case(key.replace(".", "_") + ".h5", "attribute '%s' is %d" % (key, int(attrs[key]) ^ 1),
             attrs={key: np.uint64(int(attrs[key]) ^ 1)})
    case("saved_by.h5", "attribute 'saved_by.dp' is 2 (accepted: 1 to 1)",
         attrs={"saved_by.dp": np.int64(2)})
    case("extra.h5", "group /params holds %d objects" % (rows + 1),
         data={"params/extra.weight": np.zeros((2, 2), np.float32)})
    case("no_fletcher.h5", "params/ln_f.bias is not chunked with a Fletcher32",
         fletcher={"params/ln_f.bias": False})
    case("old_format.h5", "superblock version 0", libver=("earliest", "latest"))
    case("v18_format.h5", "superblock version 2", libver=("v108", "v108"))
    case("no_digest.h5", "attribute 'digest' is missing", set_digest=False)
    case("bad_digest.h5", "metadata digest does not match")
    with h5py.File("%s/bad_digest.h5" % out, "r+") as f:
        f.attrs["step"] = np.int64(int(attrs["step"]) - 1)
    for name, what in cases:
        print("%s\t%s" % (name, what))


if __name__ == "__main__":
    main()
