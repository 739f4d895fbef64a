#!/usr/bin/env python3
"""Cross-checks a checkpoint and its safetensors export outside Entente.

    hf_crosscheck.py CHECKPOINT EXPORT_DIR LOGITS_FILE PROMPT

1. Reads the checkpoint with h5py, as docs/checkpoint.md shows, and checks
   that the export holds the same tensors (wte cut to the vocabulary, Conv1D
   weights transposed).
2. Parses model.safetensors as the format specifies (8-byte little-endian
   header length, JSON header, raw data) and config.json.
3. Runs GPT-2's forward pass in numpy the way Hugging Face's modeling_gpt2
   does (Conv1D: x @ W + b, gelu_new, layernorm eps from config, tied output
   layer) on the byte tokens of PROMPT after the end-of-text token, and
   compares the logits with those `entente sample --logits` wrote.
4. Where torch and transformers are installed, loads the export with
   GPT2LMHeadModel.from_pretrained and compares its logits too; otherwise says
   that this part did not run.
Exit 0: all checks passed; 1: a check failed; 77: numpy or h5py missing.
"""
import json
import struct
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # the caller picks an interpreter that has them
    print(f"SKIP: {e}")
    sys.exit(77)


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"])
    return tensors


def layernorm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gpt2_logits(t, cfg, ids):
    """GPT-2 as transformers' modeling_gpt2 computes it, in float64."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    n, C, H = len(ids), cfg["n_embd"], cfg["n_head"]
    eps, hs = cfg["layer_norm_epsilon"], C // H
    h = t["wte.weight"][ids] + t["wpe.weight"][:n]
    mask = np.triu(np.ones((n, n), dtype=bool), 1)
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        a = layernorm(h, t[p + "ln_1.weight"], t[p + "ln_1.bias"], eps)
        qkv = a @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]  # Conv1D
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (x.reshape(n, H, hs).transpose(1, 0, 2) for x in (q, k, v))
        att = q @ k.transpose(0, 2, 1) / np.sqrt(hs)
        att[:, mask] = -np.inf
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(n, C)
        h = h + y @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
        m = layernorm(h, t[p + "ln_2.weight"], t[p + "ln_2.bias"], eps)
        m = gelu_new(m @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"])
        h = h + m @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    h = layernorm(h, t["ln_f.weight"], t["ln_f.bias"], eps)
    return h @ t["wte.weight"].T  # tied output layer


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main():
    ckpt, export_dir, logits_file, prompt = sys.argv[1:5]
    failed = False
    cfg = json.load(open(f"{export_dir}/config.json"))
    t = load_safetensors(f"{export_dir}/model.safetensors")

    # 1. the checkpoint, read with h5py as the documentation shows
    with h5py.File(ckpt, "r") as f:
        assert f.attrs["format"] == b"entente-checkpoint" or f.attrs["format"] == "entente-checkpoint"
        V = int(f.attrs["model.vocab"])
        wte = f["params/wte.weight"][:]
        c_attn = f["params/h.0.attn.c_attn.weight"][:]
        names = sorted(f["params"].keys())
    if not np.array_equal(t["wte.weight"], wte[:V]):
        print("FAIL: exported wte.weight differs from the checkpoint's first vocab rows")
        failed = True
    if not np.array_equal(t["h.0.attn.c_attn.weight"], c_attn.T):
        print("FAIL: exported h.0.attn.c_attn.weight is not the checkpoint's, transposed")
        failed = True
    if sorted(t.keys()) != names:
        print(f"FAIL: exported tensor names differ from the checkpoint's: {sorted(t)} vs {names}")
        failed = True
    for k in ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions"):
        if k not in cfg:
            print(f"FAIL: config.json lacks {k}")
            failed = True

    # 3. logits of a numpy GPT-2 against entente's
    ids = [V - 1] + list(prompt.encode())
    ours = np.loadtxt(logits_file, ndmin=2)
    ref = gpt2_logits(t, cfg, ids)
    err = rel_err(ours, ref)
    print(f"numpy GPT-2 (Hugging Face conventions) vs entente logits: relative error {err:.2e} "
          f"over {ours.shape[0]} positions x {ours.shape[1]} tokens")
    if ours.shape != ref.shape or not err < 1e-4:
        print("FAIL: the logits differ")
        failed = True

    # 4. transformers itself, where it is installed
    try:
        import torch
        from transformers import GPT2LMHeadModel
    except ImportError as e:
        print(f"transformers check not run: {e} (pip install torch transformers to run it)")
    else:
        model = GPT2LMHeadModel.from_pretrained(export_dir).eval()
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0].double().numpy()
        err = rel_err(ours, hf)
        print(f"transformers GPT2LMHeadModel vs entente logits: relative error {err:.2e}")
        if not err < 1e-4:
            print("FAIL: transformers' logits differ")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
