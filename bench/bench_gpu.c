// bench_gpu.c: GPT-2 124M training throughput on the cuda backend.
//
// Full training steps (forward, backward, grad norm, AdamW) of GPT-2 small
// (12 layers, 12 heads, width 768, context 1024, vocab 50257 padded to 50304)
// on random tokens, with the batch sized to the GPU's free memory unless
// --batch is given. Prints the device, tokens/s and MFU with llm.c's count
// (6 * params + 6 * layers * width * context FLOPs per token) over the card's
// dense bf16 peak (H100/H200 SXM: 989 TFLOP/s; --peak-tflops for others),
// and a last line "RESULT tokens_per_s=... mfu=... batch=..." that
// bench/gpu_check.sh puts beside PyTorch's (bench/gpt2_torch.py). Exits 77
// with the reason where the cuda backend cannot run (no GPU, no CUDA build).
#include "ent_runtime.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    fprintf(stderr, "Usage: bench_gpu [--batch B] [--context T] [--steps N] [--warmup N] "
                    "[--peak-tflops P] [--precision bf16|f32]\n"
                    "Defaults: GPT-2 124M, context 1024, the largest batch (64, 32, ..., 1) "
                    "that fits in 90%% of the free GPU memory, 10 timed steps after 3, bf16 "
                    "parameters and activations with f32 masters (system.precision's auto).\n");
}

// dense bf16 peak of the cards we know, TFLOP/s, from the device's name
static double known_peak(const char *desc) {
    if (strstr(desc, "H100") != NULL || strstr(desc, "H200") != NULL) return 989.0;
    if (strstr(desc, "A100") != NULL) return 312.0;
    return 0.0;
}

int main(int argc, char **argv) {
    int B = 0, T = 1024, steps = 10, warmup = 3;
    double peak = 0.0;
    ent_backend_opts opts = {.precision = ENT_PRECISION_BF16};
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) {
            usage();
            return 2;
        }
        if (strcmp(argv[i], "--batch") == 0) B = atoi(argv[++i]);
        else if (strcmp(argv[i], "--context") == 0) T = atoi(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--warmup") == 0) warmup = atoi(argv[++i]);
        else if (strcmp(argv[i], "--peak-tflops") == 0) peak = atof(argv[++i]);
        else if (strcmp(argv[i], "--precision") == 0) {
            if (ent_precision_parse(argv[++i], &opts.precision) != ENT_OK) {
                fprintf(stderr, "bench_gpu: %s\n", ent_last_error());
                return 2;
            }
        } else {
            usage();
            return 2;
        }
    }
    if (T <= 0 || T > 1024 || steps <= 0 || warmup < 0 || B < 0) {
        usage();
        return 2;
    }
    ent_backend_t *be = NULL;
    if (ent_backend_new("cuda", &opts, &be) != ENT_OK) {
        printf("bench_gpu: skipped: %s\n", ent_last_error());
        return 77;
    }
    const char *desc = be->iface->describe(be);
    if (peak <= 0.0) peak = known_peak(desc);
    ent_model_shape s = {.layers = 12, .heads = 12, .width = 768, .context = 1024,
                         .vocab = 50257, .padded_vocab = 50304};
    if (B == 0) {
        size_t avail = be->iface->available_memory(be);
        for (B = 64; B > 1; B /= 2)
            if ((double)ent_model_memory_bytes(be, &s, 1, B, T) < 0.9 * (double)avail) break;
    }
    ent_model_t *m = NULL;
    ent_optim_t *o = NULL;
    if (ent_model_new(be, &s, NULL, B, T, &m) != ENT_OK || ent_model_init(m, 1) != ENT_OK ||
        ent_optim_new(m, NULL, 0, &o) != ENT_OK) {
        fprintf(stderr, "bench_gpu: %s\n", ent_last_error());
        return 1;
    }
    int N = B * T;
    int32_t *tok = malloc(sizeof(int32_t) * N), *tgt = malloc(sizeof(int32_t) * N);
    if (tok == NULL || tgt == NULL) return 1;
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < N; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        tok[i] = (int32_t)(x % 50257u);
        tgt[i] = (int32_t)((x >> 32) % 50257u);
    }
    double flops_tok = ent_model_shape_flops_per_token(&s);
    printf("bench_gpu: GPT-2 124M (%.1fM parameters), batch %d x context %d = %d tokens/step\n",
           ent_model_shape_num_params(&s) / 1e6, B, T, N);
    printf("bench_gpu: %s\n", desc);
    double t_total = 0.0;
    float loss = 0.0f;
    for (int step = 1; step <= warmup + steps; step++) {
        double t0 = bench_now();
        ent_status st = ent_model_zero_grad(m);
        if (st == ENT_OK) st = ent_model_forward(m, tok, tgt, B, T, &loss);
        if (st == ENT_OK) ent_optim_begin_backward(o, 1);
        if (st == ENT_OK) st = ent_model_backward(m, 1.0f / (float)N);
        if (st == ENT_OK) st = ent_optim_reduce_grads(o);
        double norm = 0.0;
        if (st == ENT_OK) st = ent_optim_grad_norm(o, &norm);
        ent_adamw hp = {6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
        if (st == ENT_OK) st = ent_optim_step(o, &hp, norm > 1.0 ? (float)(1.0 / norm) : 1.0f);
        if (st == ENT_OK) st = be->iface->synchronize(be);
        if (st != ENT_OK) {
            fprintf(stderr, "bench_gpu: step %d: %s\n", step, ent_last_error());
            return 1;
        }
        if (step > warmup) t_total += bench_now() - t0;
        printf("step %3d: loss %.4f, %.1f ms\n", step, loss, (bench_now() - t0) * 1e3);
    }
    double tok_s = N * steps / t_total;
    double mfu = peak > 0.0 ? tok_s * flops_tok / (peak * 1e12) : 0.0;
    printf("bench_gpu: %.0f tokens/s, %.1f TFLOP/s achieved", tok_s, tok_s * flops_tok / 1e12);
    if (peak > 0.0) printf(", MFU %.1f%% of %.0f TFLOP/s dense bf16", 100.0 * mfu, peak);
    printf("\nRESULT tokens_per_s=%.0f mfu=%.4f batch=%d context=%d\n", tok_s, mfu, B, T);
    free(tok);
    free(tgt);
    ent_optim_free(&o);
    ent_model_free(&m);
    ent_backend_free(&be);
    return 0;
}
