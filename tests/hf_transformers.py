#!/usr/bin/env python3
"""hf_transformers.py ENTENTE WORK DATA_DIR

The outside check of import and export, with Hugging Face transformers
itself (docs/open-weights.md, "Checked against transformers"). For a tiny
random GPT2LMHeadModel and a tiny random LlamaForCausalLM (grouped-query
attention, untied lm_head), each created by transformers and saved with
save_pretrained (model.safetensors):

1. `entente ckpt import` it, and compare `entente sample --logits` with
   transformers' logits for the end-of-text token and a prompt's bytes:
   relative error < 1e-5;
2. train 10 steps in entente from the import (`train --resume`, on
   DATA_DIR), `entente ckpt export` the result, load the export with
   transformers' from_pretrained, and compare its logits with entente's
   logits of the trained checkpoint: relative error < 1e-5, and different
   from the import's (the 10 steps changed the model).

Exit 0: passed; 1: a check failed; 77: torch or transformers is missing
(the reason printed).
"""
import os
import subprocess
import sys

try:
    import numpy as np
    import torch
    import transformers
    from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM)
except ImportError as e:
    print(f"SKIP: {e} (the outside check needs torch and transformers: pip install torch "
          "transformers in a venv and set ENT_PYTHON to its python)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_crosscheck import rel_err  # noqa: E402  (largest difference over the largest value)

PROMPT = "In the beginning God"
VOCAB = 257  # the 256 bytes and end-of-text, entente's byte tokenizer


def run(args):
    p = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=300)
    if p.returncode != 0:
        print(f"FAIL: {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-400:]}")
        sys.exit(1)
    return p.stdout


def entente_logits(entente, ckpt, out):
    run([entente, "sample", "--checkpoint", ckpt, "--prompt", PROMPT, "--tokens", "0",
         "--logits", out])
    return np.loadtxt(out, ndmin=2)


def hf_logits(model):
    ids = [VOCAB - 1] + list(PROMPT.encode())
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def check(entente, work, data, name, model):
    failed = False
    d = os.path.join(work, name)
    model.save_pretrained(d, safe_serialization=True)
    ckpt = os.path.join(work, f"{name}.h5")
    run([entente, "ckpt", "import", "--from", d, "--out", ckpt, "--force"])
    ours = entente_logits(entente, ckpt, os.path.join(work, f"{name}.logits"))
    ref = hf_logits(model.eval())
    err = rel_err(ours, ref) if ours.shape == ref.shape else float("inf")
    print(f"{name}: transformers {type(model).__name__} saved, imported: logits relative error "
          f"{err:.2e} over {ref.shape[0]} positions x {ref.shape[1]} tokens")
    failed |= not err < 1e-5
    # 10 steps in entente, exported, loaded back in transformers
    run_dir = os.path.join(work, f"{name}-run")
    run([entente, "train", "--resume", ckpt, "--run-dir", run_dir,
         "--set", f"data.dir={data}", "--set", "train.steps=10", "--set", "train.lr=3e-3",
         "--set", "train.warmup_steps=2", "--set", "train.batch_size=8",
         "--set", "eval.every=0", "--set", "sample.every=0", "--set", "checkpoint.every=0"])
    trained = os.path.join(run_dir, "checkpoints", "latest")
    exported = os.path.join(work, f"{name}-export")
    run([entente, "ckpt", "export", trained, "--out", exported])
    ours2 = entente_logits(entente, trained, os.path.join(work, f"{name}-trained.logits"))
    back = AutoModelForCausalLM.from_pretrained(exported).float().eval()
    ref2 = hf_logits(back)
    err2 = rel_err(ours2, ref2) if ours2.shape == ref2.shape else float("inf")
    moved = rel_err(ours2, ours) if ours2.shape == ours.shape else 0.0
    print(f"{name}: trained 10 steps in entente, exported, loaded by transformers as "
          f"{type(back).__name__}: logits relative error {err2:.2e} (the 10 steps moved the "
          f"logits by {moved:.2e})")
    failed |= not err2 < 1e-5
    if not moved > 1e-3:
        print(f"FAIL: {name}: the 10 steps did not change the logits")
        failed = True
    return failed


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    entente, work, data = sys.argv[1:]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.manual_seed(7)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2,
                                      n_head=4, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1))
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1))
    # transformers initialises with std 0.02: logits near zero say little;
    # widen every weight so the logits spread as a trained model's do
    with torch.no_grad():
        for m in (gpt2, llama):
            for n, p in m.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.3)
                elif "bias" in n:
                    p.normal_(0.0, 0.1)
    failed = check(entente, work, data, "gpt2", gpt2)
    failed |= check(entente, work, data, "llama", llama)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
