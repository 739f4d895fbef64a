#!/usr/bin/env python3
"""Hugging Face model directories for `entente ckpt import`, written with numpy.

    hf_import.py write DIR [--dtype F32|BF16|F16] [--shards N] [--bare] [--seed S]
                           [--layers L --heads H --width C --context T --vocab V]
    hf_import.py write DIR --llama [--llama3] [--tied] [--dtype ...] [--shards N] [--seed S]
                           [--layers L --heads H --kv-heads K --width C --ffn F
                            --context T --vocab V]
    hf_import.py write DIR ARGS... -- DIR ARGS... -- ...   (several models)
        A tiny random GPT-2 (by default 2 layers, 4 heads, width 64, context 32,
        the 257 byte tokens) as transformers saves it: config.json, and
        model.safetensors or N shards with model.safetensors.index.json;
        "transformer." before every name (GPT2LMHeadModel) unless --bare
        (GPT2Model), the causal-mask buffers h.N.attn.bias, and lm_head.weight
        (tied: wte's values). With --llama, a tiny LlamaForCausalLM (2 layers,
        4 heads over 2 KV heads, width 64, SwiGLU of 160, context 32): --llama3
        Llama 3's rope (theta 500000, frequency bands), --tied an output layer
        tied to the embedding; a rotary_emb.inv_freq buffer as older files have.
    hf_import.py check DIR LOGITS PROMPT [DIR LOGITS PROMPT ...]
        The logits of GPT-2 in numpy (float64, Hugging Face's conventions, on
        the stored values) for the end-of-text token and PROMPT's bytes,
        against those `entente sample --logits` wrote: relative error < 1e-5
        (each DIR in turn; fails if any fails).
    hf_import.py same CKPT_A CKPT_B [CKPT_A CKPT_B ...]
        Every dataset of /params equal, bit for bit, in each pair.
    hf_import.py hostile DIR ENTENTE WORK SEED CKPT_TOOL
        Damaged copies of DIR, each imported by ENTENTE: the named ones must
        fail (exit 1) with a message naming the file and the tensor or key;
        then single bits of the safetensors file flipped (the length's 8
        bytes, 90 of the header's at seeded random places, 10 of the data's),
        each imported in a child of `CKPT_TOOL import-changes`: an import
        succeeds or fails with exit code 1 and a message within 20 s, never
        anything else, and one that succeeds wrote a checkpoint `ckpt verify`
        passes.
Exit 0: all checks passed; 1: a check failed; 77: numpy or h5py missing.
"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # the caller picks an interpreter that has them
    print(f"SKIP: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_crosscheck import gpt2_logits, rel_err  # noqa: E402

CFG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 257,
       "n_positions": 32, "n_ctx": 32, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": None,
       "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05,
       "tie_word_embeddings": True, "scale_attn_weights": True, "torch_dtype": "float32"}


LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 257,
         "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
         "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": None,
         "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
         "mlp_bias": False, "bos_token_id": 256, "eos_token_id": 256, "torch_dtype": "float32"}
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def to_dtype(a, dtype):
    """The bytes of float32 array a in dtype, and the float64 values they hold."""
    a = np.ascontiguousarray(a, dtype="<f4")
    if dtype == "F32":
        return a.tobytes(), a.astype(np.float64)
    if dtype == "F16":
        h = a.astype("<f2")
        return h.tobytes(), h.astype(np.float64)
    bits = (a.view("<u4") >> 16).astype("<u2")  # bf16: the upper half (truncated)
    back = (bits.astype("<u4") << 16).view("<f4")
    return bits.tobytes(), back.astype(np.float64)


def weights(rng, cfg):
    C, L, V, T = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    t = {"wte.weight": rng.normal(0, 0.3, (V, C)), "wpe.weight": rng.normal(0, 0.1, (T, C)),
         "ln_f.weight": 1 + rng.normal(0, 0.1, C), "ln_f.bias": rng.normal(0, 0.1, C)}
    for i in range(L):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            t[p + ln + ".weight"] = 1 + rng.normal(0, 0.1, C)
            t[p + ln + ".bias"] = rng.normal(0, 0.1, C)
        for name, shape in (("attn.c_attn", (C, 3 * C)), ("attn.c_proj", (C, C)),
                            ("mlp.c_fc", (C, 4 * C)), ("mlp.c_proj", (4 * C, C))):
            t[p + name + ".weight"] = rng.normal(0, 0.15, shape)  # Conv1D: (in, out)
            t[p + name + ".bias"] = rng.normal(0, 0.05, shape[1])
    return t


def llama_weights(rng, cfg):
    C, L, V, F = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    hs = C // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hs
    t = {"model.embed_tokens.weight": rng.normal(0, 0.3, (V, C)),
         "model.norm.weight": 1 + rng.normal(0, 0.1, C)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = rng.normal(0, 0.2, (V, C))
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, C)
        t[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, C)
        for name, shape in (("self_attn.q_proj", (C, C)), ("self_attn.k_proj", (kv, C)),
                            ("self_attn.v_proj", (kv, C)), ("self_attn.o_proj", (C, C)),
                            ("mlp.gate_proj", (F, C)), ("mlp.up_proj", (F, C)),
                            ("mlp.down_proj", (C, F))):
            t[p + name + ".weight"] = rng.normal(0, 0.15, shape)  # nn.Linear: (out, in)
    return t


def llama_inv_freq(cfg, hs):
    """RoPE's frequencies as transformers computes them (default, or Llama 3's bands)."""
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hs, 2, dtype=np.float64) / hs))
    sc = cfg.get("rope_scaling")
    if not sc:
        return inv
    factor, low, high = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old = sc["original_max_position_embeddings"]
    low_wl, high_wl = old / low, old / high
    wl = 2 * np.pi / inv
    scaled = np.where(wl > low_wl, inv / factor, inv)
    smooth = (old / wl - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wl < high_wl) & ~(wl > low_wl)
    return np.where(medium, smoothed, scaled)


def llama_logits(t, cfg, ids):
    """LlamaForCausalLM as transformers computes it (rotate_half, repeat_kv), in float64."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    n, C, H = len(ids), cfg["hidden_size"], cfg["num_attention_heads"]
    KV, eps = cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    hs = C // H

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    freqs = np.outer(np.arange(n, dtype=np.float64), llama_inv_freq(cfg, hs))
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]

    def rope(x):  # (n, heads, hs)
        x1, x2 = x[..., :hs // 2], x[..., hs // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    h = t["model.embed_tokens.weight"][ids]
    mask = np.triu(np.ones((n, n), dtype=bool), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms(h, t[p + "input_layernorm.weight"])
        q = rope((a @ t[p + "self_attn.q_proj.weight"].T).reshape(n, H, hs))
        k = rope((a @ t[p + "self_attn.k_proj.weight"].T).reshape(n, KV, hs))
        v = (a @ t[p + "self_attn.v_proj.weight"].T).reshape(n, KV, hs)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)  # repeat_kv
        q, k, v = (x.transpose(1, 0, 2) for x in (q, k, v))
        att = q @ k.transpose(0, 2, 1) / np.sqrt(hs)
        att[:, mask] = -np.inf
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(n, C)
        h = h + y @ t[p + "self_attn.o_proj.weight"].T
        m = rms(h, t[p + "post_attention_layernorm.weight"])
        g = m @ t[p + "mlp.gate_proj.weight"].T
        u = m @ t[p + "mlp.up_proj.weight"].T
        h = h + (g / (1 + np.exp(-g)) * u) @ t[p + "mlp.down_proj.weight"].T
    h = rms(h, t["model.norm.weight"])
    out = t["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else t["lm_head.weight"]
    return h @ out.T


def write_safetensors(path, items):
    """items: (name, dtype, shape, bytes) in order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, data in items:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for item in items:
            f.write(item[3])


def read_safetensors(path):
    """name -> float64 array, whatever the stored dtype."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[b:e]
        if info["dtype"] == "F32":
            a = np.frombuffer(raw, "<f4")
        elif info["dtype"] == "F16":
            a = np.frombuffer(raw, "<f2")
        else:
            a = (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4")
        out[name] = a.astype(np.float64).reshape(info["shape"])
    return out


def save_dir(d, cfg, items, dtype, shards):
    """config.json, and model.safetensors or `shards` files with their index."""
    cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    json.dump(cfg, open(f"{d}/config.json", "w"), indent=2)
    if shards == 1:
        write_safetensors(f"{d}/model.safetensors", items)
        return 0
    weight_map = {}
    for s in range(shards):
        part = items[s::shards]
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(f"{d}/{name}", part)
        weight_map.update({it[0]: name for it in part})
    json.dump({"metadata": {"total_size": sum(len(it[3]) for it in items)}, "weight_map": weight_map},
              open(f"{d}/model.safetensors.index.json", "w"), indent=2)
    return 0


def cmd_write(args):
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: hf_import.py write DIR [--dtype F32|BF16|F16] [--shards N] ... "
                         "(the first argument is the directory to write)")
    d, dtype, shards, bare, seed = args[0], "F32", 1, False, 1
    llama = any(a in ("--llama", "--llama3", "--tied") for a in args)
    cfg = dict(LLAMA if llama else CFG)
    sizes = {"--layers": "n_layer", "--heads": "n_head", "--width": "n_embd",
             "--context": "n_positions", "--vocab": "vocab_size"}
    if llama:
        sizes = {"--layers": "num_hidden_layers", "--heads": "num_attention_heads",
                 "--kv-heads": "num_key_value_heads", "--width": "hidden_size",
                 "--ffn": "intermediate_size", "--context": "max_position_embeddings",
                 "--vocab": "vocab_size"}
    i = 1
    while i < len(args):
        if args[i] in sizes:
            cfg[sizes[args[i]]], i = int(args[i + 1]), i + 2
        elif args[i] == "--dtype":
            dtype, i = args[i + 1], i + 2
        elif args[i] == "--shards":
            shards, i = int(args[i + 1]), i + 2
        elif args[i] == "--seed":
            seed, i = int(args[i + 1]), i + 2
        elif args[i] == "--bare" and not llama:
            bare, i = True, i + 1
        elif args[i] == "--llama3":  # Llama 3's rope: theta 500000 and frequency bands
            cfg["rope_theta"], cfg["rope_scaling"], i = 500000.0, dict(LLAMA3_SCALING), i + 1
        elif args[i] == "--tied":
            cfg["tie_word_embeddings"], i = True, i + 1
        elif args[i] == "--llama":
            i += 1
        else:
            raise SystemExit(f"unknown argument {args[i]}")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    if llama:
        t = llama_weights(rng, cfg)
        items = [(k, dtype, v.shape, to_dtype(v, dtype)[0]) for k, v in t.items()]
        hs = cfg["hidden_size"] // cfg["num_attention_heads"]
        inv = llama_inv_freq(cfg, hs).astype("<f4")  # a buffer older checkpoints carry
        items.append(("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", inv.shape, inv.tobytes()))
        return save_dir(d, cfg, items, dtype, shards)
    cfg["n_ctx"] = cfg["n_positions"]
    t = weights(rng, cfg)
    prefix = "" if bare else "transformer."
    items = [(prefix + k, dtype, v.shape, to_dtype(v, dtype)[0]) for k, v in t.items()]
    T = cfg["n_positions"]
    for i in range(cfg["n_layer"]):  # the causal mask, a buffer some checkpoints carry
        mask = np.tril(np.ones((T, T), np.float32)).reshape(1, 1, T, T)
        items.append((f"{prefix}h.{i}.attn.bias", "F32", mask.shape, mask.astype("<f4").tobytes()))
    if not bare:
        items.append(("lm_head.weight", dtype, t["wte.weight"].shape, to_dtype(t["wte.weight"], dtype)[0]))
    return save_dir(d, cfg, items, dtype, shards)


def load_dir(d):
    if os.path.exists(f"{d}/model.safetensors"):
        t = read_safetensors(f"{d}/model.safetensors")
    else:
        index = json.load(open(f"{d}/model.safetensors.index.json"))
        t = {}
        for f in sorted(set(index["weight_map"].values())):
            t.update(read_safetensors(f"{d}/{f}"))
    return {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in t.items()}


def cmd_check(args):
    d, logits_file, prompt = args
    cfg = json.load(open(f"{d}/config.json"))
    t = load_dir(d)
    ids = [cfg["vocab_size"] - 1] + list(prompt.encode())
    ours = np.loadtxt(logits_file, ndmin=2)
    ref = llama_logits(t, cfg, ids) if cfg["model_type"] == "llama" else gpt2_logits(t, cfg, ids)
    err = rel_err(ours, ref) if ours.shape == ref.shape else float("inf")
    print(f"{os.path.basename(d)}: numpy {cfg['model_type']} on the imported tensors vs entente logits: "
          f"relative error {err:.2e} over {ref.shape[0]} positions x {ref.shape[1]} tokens")
    failed = not err < 1e-5
    try:  # transformers itself, where it is installed
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"transformers check not run: {e} (pip install torch transformers to run it)")
    else:
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0].double().numpy()
        herr = rel_err(ours, hf)
        print(f"transformers {type(model).__name__} vs entente logits: relative error {herr:.2e}")
        failed |= not herr < 1e-5
    return 1 if failed else 0


def cmd_same(args):
    a, b = args
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        na, nb = sorted(fa["params"].keys()), sorted(fb["params"].keys())
        if na != nb:
            print(f"FAIL: {a} and {b}: tensor names differ: {na} vs {nb}")
            return 1
        for n in na:
            x, y = fa["params"][n][:], fb["params"][n][:]
            if x.shape != y.shape or x.tobytes() != y.tobytes():
                print(f"FAIL: {a} and {b}: params/{n} differs")
                return 1
    print(f"{os.path.basename(a)}: {len(na)} tensors bit-identical")
    return 0


def run_import(entente, src, out):
    if os.path.exists(out):
        os.unlink(out)
    try:
        p = subprocess.run([entente, "ckpt", "import", "--from", src, "--out", out],
                           capture_output=True, text=True, errors="replace",
                           timeout=20)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return p.returncode, p.stderr


def cmd_hostile(args):
    src, entente, work, seed, ckpt_tool = args[0], args[1], args[2], int(args[3]), args[4]
    failed = 0
    st = f"{src}/model.safetensors"
    blob = open(st, "rb").read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    names = [k for k in header if k != "__metadata__"]
    first = names[0]

    def variant(name, mutate_bytes=None, mutate_header=None, mutate_config=None, files=None):
        d = f"{work}/{name}"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        if mutate_header is not None:
            h = json.loads(json.dumps(header))
            mutate_header(h)
            raw = json.dumps(h).encode()
            data = blob[8 + hlen:]
            open(f"{d}/model.safetensors", "wb").write(struct.pack("<Q", len(raw)) + raw + data)
        if mutate_bytes is not None:
            open(f"{d}/model.safetensors", "wb").write(mutate_bytes(bytearray(blob)))
        if mutate_config is not None:
            c = json.load(open(f"{d}/config.json"))
            mutate_config(c)
            json.dump(c, open(f"{d}/config.json", "w"))
        if files is not None:
            files(d)
        return d

    def set_(h, k, f, v):
        h[k][f] = v

    llama = json.load(open(f"{src}/config.json"))["model_type"] == "llama"
    prefix = "" if llama else "transformer."
    gone = "model.layers.1.mlp.up_proj.weight" if llama else "transformer.h.1.ln_2.bias"
    small = "model.norm.weight" if llama else "transformer.ln_f.weight"
    small2 = "model.layers.0.input_layernorm.weight" if llama else "transformer.ln_f.bias"
    cases = [
        ("truncated", dict(mutate_bytes=lambda b: b[:len(b) - 100]), "truncated"),
        ("header past the end", dict(mutate_bytes=lambda b: struct.pack("<Q", len(b)) + b[8:]),
         "header of"),
        ("header over the limit", dict(mutate_bytes=lambda b: struct.pack("<Q", 2**40) + b[8:]),
         "limit"),
        ("too short", dict(mutate_bytes=lambda b: b[:5]), "too short"),
        ("header not JSON", dict(mutate_bytes=lambda b: b[:8] + b"[" + b[9:]), "JSON"),
        ("unsupported dtype", dict(mutate_header=lambda h: set_(h, first, "dtype", "F64")), "F64"),
        ("shape against bytes", dict(mutate_header=lambda h: set_(h, first, "shape", [3, 3])),
         first),
        ("overlapping tensors", dict(mutate_header=lambda h: set_(
            h, small2, "data_offsets", h[small]["data_offsets"])), "overlap"),
        ("missing tensor", dict(mutate_header=lambda h: h.pop(gone)), gone[len(prefix):]),
        ("unexpected tensor", dict(mutate_header=lambda h: h.__setitem__(
            prefix + "h.9.extra.weight", {"dtype": "F32", "shape": [0],
                                             "data_offsets": [len(blob) - 8 - hlen] * 2})),
         "h.9.extra.weight"),
    ]
    if llama:
        cases += [
            ("wrong shape for the config", dict(mutate_config=lambda c: c.__setitem__(
                "num_key_value_heads", 4)), "k_proj.weight"),
            ("attention biases", dict(mutate_config=lambda c: c.__setitem__("attention_bias", True)),
             "attention_bias"),
            ("another rope", dict(mutate_config=lambda c: c.__setitem__(
                "rope_scaling", {"rope_type": "linear", "factor": 2.0})), "rope_scaling"),
            ("a sliding window", dict(mutate_config=lambda c: c.__setitem__("sliding_window", 8)),
             "sliding_window"),
            ("another activation", dict(mutate_config=lambda c: c.__setitem__("hidden_act", "gelu")),
             "hidden_act"),
            ("another architecture", dict(mutate_config=lambda c: c.__setitem__("model_type", "qwen2")),
             "model_type"),
            ("missing key", dict(mutate_config=lambda c: c.pop("intermediate_size")),
             "intermediate_size"),
        ]
    else:
        cases += [
        ("wrong shape for the config", dict(mutate_config=lambda c: c.__setitem__("n_positions", 16),
                                            ), "wpe.weight"),
        ("another architecture", dict(mutate_config=lambda c: c.__setitem__("model_type", "bert")),
         "model_type"),
        ("exact GELU", dict(mutate_config=lambda c: c.__setitem__("activation_function", "gelu")),
         "activation_function"),
        ("untied output layer", dict(mutate_config=lambda c: c.__setitem__("tie_word_embeddings",
                                                                            False)),
         "tie_word_embeddings"),
        ("missing key", dict(mutate_config=lambda c: c.pop("n_layer")), "n_layer"),
        ]
    cases += [
        ("no weights", dict(files=lambda d: os.unlink(f"{d}/model.safetensors")),
         "model.safetensors"),
        ("config not JSON", dict(files=lambda d: open(f"{d}/config.json", "w").write("{")),
         "config.json"),
    ]
    for name, kw, needle in cases:
        d = variant(name.replace(" ", "_"), **kw)
        rc, err = run_import(entente, d, f"{d}.h5")
        ok = rc == 1 and needle in err and os.path.basename(d) in err
        if "mutate_config" in kw or name == "config not JSON":
            ok = rc == 1 and needle in err
        print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {rc}: {err.strip().splitlines()[-1] if err else ''}")
        failed += not ok
        if os.path.exists(f"{d}.h5") and rc != 0:
            print(f"FAIL {name}: a refused import left {d}.h5")
            failed += 1
    # the header's length, a seeded sample of the rest of the header and of
    # the data: never a crash or a hang; an accepted file verifies. Each
    # change is imported in a child process that ckpt_tool forks (what
    # `entente ckpt import` and `ckpt verify` run, without loading the
    # binary's libraries anew each time; the named cases above run the binary)
    rng = random.Random(seed)
    places = list(range(8)) + sorted(rng.sample(range(8, 8 + hlen), 90))
    places += sorted(rng.sample(range(8 + hlen, len(blob)), 10))
    d = f"{work}/flip"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, d)
    with open(f"{work}/flip.changes", "w") as f:
        for at in places:
            f.write(f"{at} {1 << rng.randrange(8)}\n")
    p = subprocess.run([ckpt_tool, "import-changes", d, f"{work}/flip.changes"], capture_output=True,
                       text=True, errors="replace", timeout=20 * len(places) + 60)
    sys.stdout.write(p.stdout)
    if p.returncode != 0 or open(f"{d}/model.safetensors", "rb").read() != blob:
        print(f"FAIL: ckpt_tool import-changes: exit {p.returncode}: {p.stderr[-300:]}")
        failed += 1
    print(f"(the single-byte changes: seed {seed})")
    return 1 if failed else 0


def groups(args, size=None):
    """ARGS split at each "--" (write), or into groups of SIZE (check, same):
    one interpreter for many models, not one each."""
    if size is None:
        out, cur = [], []
        for a in args:
            if a == "--":
                out.append(cur)
                cur = []
            else:
                cur.append(a)
        return out + [cur] if cur else out
    if not args or len(args) % size:
        raise SystemExit(f"expected groups of {size} arguments, got {len(args)}")
    return [args[i:i + size] for i in range(0, len(args), size)]


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "hostile":
        return cmd_hostile(args)
    run, size = {"write": (cmd_write, None), "check": (cmd_check, 3), "same": (cmd_same, 2)}[cmd]
    return max(run(g) for g in groups(args, size))


if __name__ == "__main__":
    sys.exit(main())
