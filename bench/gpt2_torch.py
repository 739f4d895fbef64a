#!/usr/bin/env python3
"""gpt2_torch.py: the baseline of bench_gpu, GPT-2 124M training in PyTorch.

The same model (12 layers, 12 heads, width 768, context 1024, vocab 50257
padded to 50304, tied embeddings, GELU tanh, pre-layernorm), the same batch
and context, random tokens, AdamW (fused), bf16 autocast and torch.compile,
as a strong PyTorch user would run it. Prints tokens/s and MFU with llm.c's
count over the given dense bf16 peak, and a last line
"RESULT tokens_per_s=... mfu=..." that bench/gpu_check.sh reads.

    python3 bench/gpt2_torch.py --batch 16 [--context 1024] [--steps 10]
        [--warmup 3] [--peak-tflops 989] [--no-compile]
"""
import argparse
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("gpt2_torch: skipped: PyTorch is not installed")
    sys.exit(77)

L, H, C, V, VP, MAXT = 12, 12, 768, 50257, 50304, 1024


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VP, C)
        self.wpe = nn.Embedding(MAXT, C)
        self.h = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)[..., :V]
        return F.cross_entropy(logits.float().view(-1, V), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpt2_torch: skipped: no CUDA device visible to PyTorch")
        sys.exit(77)
    torch.manual_seed(1)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = "cuda"
    model = GPT().to(dev)
    params = sum(p.numel() for p in model.parameters())
    params_llmc = params - (VP - V) * C  # llm.c counts the padded rows out
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1, fused=True)
    step_fn = model if a.no_compile else torch.compile(model)
    B, T = a.batch, a.context
    idx = torch.randint(0, V, (B, T), device=dev)
    tgt = torch.randint(0, V, (B, T), device=dev)
    flops_tok = 6 * params_llmc + 6 * L * C * T
    print(f"gpt2_torch: torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"{params / 1e6:.1f}M parameters, batch {B} x context {T}, "
          f"{'eager' if a.no_compile else 'torch.compile'}, bf16 autocast", flush=True)
    total = 0.0
    for step in range(1, a.warmup + a.steps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = step_fn(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step > a.warmup:
            total += dt
        print(f"step {step:3d}: loss {loss.item():.4f}, {dt * 1e3:.1f} ms", flush=True)
    tok_s = B * T * a.steps / total
    mfu = tok_s * flops_tok / (a.peak_tflops * 1e12)
    print(f"gpt2_torch: {tok_s:.0f} tokens/s, MFU {100 * mfu:.1f}% of {a.peak_tflops:.0f} TFLOP/s")
    print(f"RESULT tokens_per_s={tok_s:.0f} mfu={mfu:.4f} batch={B} context={T}")
    assert math.isfinite(loss.item())


if __name__ == "__main__":
    main()
