// bench_train.c: training throughput of a GPT-2-small-shaped model on the CPU
// backend, next to the BLAS ceiling measured in the same run.
//
// Prints tokens/s and achieved GFLOP/s (6 * params + 6 * layers * width *
// context FLOPs per token, llm.c's count) for full training steps (forward,
// backward, AdamW), the time split between them, and cblas_sgemm's GFLOP/s
// on a 2048^3 product and on the model's own largest matmul shape. It never
// passes or fails: it reports figures.
//
// --llama also trains a Llama of the same width and depth (n_kv_heads
// --kv-heads, SwiGLU of --ffn units, untied lm_head) in the same run, GPT-2
// and Llama alternating step by step, and prints both throughputs, their
// ratio beside the ratio of their FLOPs per token, and the share of a Llama
// step that RMSNorm, RoPE and SwiGLU take (forward and backward): those ops
// timed on their own with the step's shapes and counts, the fastest of 5
// runs over the fastest step.
#include "ent_runtime.h"
#include "bench_util.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


// Median GFLOP/s of reps products C (M,N) = A (M,K) @ B^T (K,N), as the model calls sgemm.
static double sgemm_gflops(int M, int N, int K, int reps) {
    float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)N * K);
    float *c = malloc(sizeof(float) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)((i * 7919) % 1000) / 1000.0f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)((i * 104729) % 1000) / 1000.0f;
    double *rate = malloc(sizeof(double) * (size_t)reps);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        rate[r] = 2.0 * M * N * (double)K / (bench_now() - t0) / 1e9;
    }
    double median = bench_median(rate, reps);
    free(a); free(b); free(c); free(rate);
    return median;
}

static void usage(void) {
    fprintf(stderr,
            "Usage: bench_train [--layers L] [--heads H] [--width C] [--context T] [--vocab V]\n"
            "                   [--batch B] [--steps N] [--warmup N]\n"
            "                   [--llama] [--kv-heads K] [--ffn F]\n"
            "Defaults: GPT-2 small (12, 12, 768, vocab 50257) with context 256, batch 4,\n"
            "3 timed steps after 1 warm-up step. --llama: a Llama of the same shape beside\n"
            "it (K = H / 2 KV heads or 1, F = 8/3 x width rounded up to 32 by default).\n"
            "OMP_NUM_THREADS sets the threads.\n");
}

// A model, its optimizer and a batch of B x T tokens, trained step by step.
typedef struct {
    ent_model_shape s;
    ent_model_t *m;
    ent_optim_t *o;
    int B, T;
    double t_fwd, t_bwd, t_opt; // summed over the timed steps
    double t_min;               // the fastest timed step
} trainee;

static int trainee_new(ent_backend_t *be, const ent_model_shape *s, int B, int T, trainee *tr) {
    memset(tr, 0, sizeof *tr);
    tr->s = *s;
    tr->B = B;
    tr->T = T;
    if (ent_model_new(be, s, NULL, B, T, &tr->m) != ENT_OK ||
        ent_optim_new(tr->m, NULL, 0, &tr->o) != ENT_OK) {
        fprintf(stderr, "bench_train: %s\n", ent_last_error());
        return -1;
    }
    ent_model_init(tr->m, 1);
    return 0;
}

static void trainee_free(trainee *tr) {
    ent_optim_free(&tr->o);
    ent_model_free(&tr->m);
}

// One training step; its times are added when timed.
static void train_step(trainee *tr, const int32_t *tok, const int32_t *tgt, int timed) {
    int N = tr->B * tr->T;
    double t0 = bench_now();
    ent_model_zero_grad(tr->m);
    float loss;
    ent_model_forward(tr->m, tok, tgt, tr->B, tr->T, &loss);
    double t1 = bench_now();
    ent_optim_begin_backward(tr->o, 1);
    ent_model_backward(tr->m, 1.0f / (float)N);
    ent_optim_reduce_grads(tr->o);
    double norm;
    ent_optim_grad_norm(tr->o, &norm);
    double t2 = bench_now();
    ent_adamw hp = {1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
    ent_optim_step(tr->o, &hp, norm > 1.0 ? (float)(1.0 / norm) : 1.0f);
    double t3 = bench_now();
    if (timed) {
        if (tr->t_min == 0.0 || t3 - t0 < tr->t_min) tr->t_min = t3 - t0;
        tr->t_fwd += t1 - t0;
        tr->t_bwd += t2 - t1;
        tr->t_opt += t3 - t2;
    }
}

// Seconds one Llama step spends in RMSNorm, RoPE and SwiGLU, forward and
// backward: each op called on buffers of the step's shapes as many times as
// a step calls it (per layer two norms, RoPE on Q and K, one SwiGLU; the
// final norm), the fastest of reps: set against the fastest step, the share
// is what a quiet machine shows (on shared cores each OpenMP region may wait
// for a descheduled thread, which the median does not filter).
static double llama_elementwise_seconds(ent_backend_t *be, const ent_model_shape *s, int B, int T,
                                        int reps) {
    const struct ent_backend_i *k = be->iface;
    int N = B * T, C = s->width, hd = C / s->heads, F = s->ffn_hidden;
    size_t big = (size_t)N * (size_t)(F > C ? F : C);
    float *x = malloc(sizeof(float) * big), *y = malloc(sizeof(float) * big);
    float *z = malloc(sizeof(float) * big), *dx = malloc(sizeof(float) * big);
    float *dy = malloc(sizeof(float) * big), *du = malloc(sizeof(float) * big);
    float *w = malloc(sizeof(float) * (size_t)C);
    float *dw = malloc(sizeof(float) * (size_t)C), *rstd = malloc(sizeof(float) * (size_t)N);
    float *ct = malloc(sizeof(float) * (size_t)T * hd / 2), *st = malloc(sizeof(float) * (size_t)T * hd / 2);
    double *t = malloc(sizeof(double) * (size_t)reps);
    for (size_t i = 0; i < big; i++) x[i] = y[i] = dy[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    for (int i = 0; i < C; i++) w[i] = 1.0f;
    ent_rope_table(&s->rope, hd, T, ct, st);
    for (int r = 0; r < reps; r++) {
        memset(dx, 0, sizeof(float) * big);
        memset(du, 0, sizeof(float) * big);
        double t0 = bench_now();
        for (int l = 0; l < s->layers; l++) {
            for (int n = 0; n < 2; n++) {
                k->rmsnorm_forward(be, z, rstd, x, w, s->rms_eps, N, C);
                k->rmsnorm_backward(be, dx, dw, dy, x, w, rstd, N, C);
            }
            k->rope_forward(be, y, ct, st, B, T, s->heads, hd);
            k->rope_forward(be, y, ct, st, B, T, s->kv_heads, hd);
            k->rope_backward(be, y, ct, st, B, T, s->heads, hd);
            k->rope_backward(be, y, ct, st, B, T, s->kv_heads, hd);
            k->swiglu_forward(be, z, x, y, (size_t)N * F);
            k->swiglu_backward(be, dx, du, dy, x, y, (size_t)N * F);
        }
        k->rmsnorm_forward(be, z, rstd, x, w, s->rms_eps, N, C);
        k->rmsnorm_backward(be, dx, dw, dy, x, w, rstd, N, C);
        t[r] = bench_now() - t0;
    }
    double fastest = t[0];
    for (int r = 1; r < reps; r++) fastest = t[r] < fastest ? t[r] : fastest;
    free(x); free(y); free(z); free(dx); free(dy); free(du); free(w); free(dw); free(rstd); free(ct);
    free(st); free(t);
    return fastest;
}

int main(int argc, char **argv) {
    int layers = 12, heads = 12, width = 768, context = 256, vocab = 50257, B = 4, steps = 3,
        warmup = 1, llama = 0, kv_heads = 0, ffn = 0;
    for (int i = 1; i < argc; i++) {
        int *target = NULL;
        if (strcmp(argv[i], "--llama") == 0) {
            llama = 1;
            continue;
        }
        if (strcmp(argv[i], "--layers") == 0) target = &layers;
        else if (strcmp(argv[i], "--heads") == 0) target = &heads;
        else if (strcmp(argv[i], "--width") == 0) target = &width;
        else if (strcmp(argv[i], "--context") == 0) target = &context;
        else if (strcmp(argv[i], "--vocab") == 0) target = &vocab;
        else if (strcmp(argv[i], "--batch") == 0) target = &B;
        else if (strcmp(argv[i], "--steps") == 0) target = &steps;
        else if (strcmp(argv[i], "--warmup") == 0) target = &warmup;
        else if (strcmp(argv[i], "--kv-heads") == 0) target = &kv_heads;
        else if (strcmp(argv[i], "--ffn") == 0) target = &ffn;
        if (target == NULL || i + 1 >= argc || (*target = atoi(argv[i + 1])) <= 0) {
            usage();
            return 2;
        }
        i++;
    }
    if (kv_heads == 0) kv_heads = heads > 1 ? heads / 2 : 1;
    if (ffn == 0) ffn = ent_model_default_ffn(width);
    if (width % heads != 0 || vocab > 65536 || warmup < 0 ||
        (llama && (heads % kv_heads != 0 || (width / heads) % 2 != 0))) {
        usage();
        return 2;
    }
    ent_backend_t *be = ent_backend_cpu_new(0);
    // both models through the configuration, as a run builds them: the GPT-2,
    // then the Llama of the same shape with Llama 3's rope settings
    ent_config cfg;
    ent_config_defaults(&cfg);
    int *dims[] = {&cfg.layers, &cfg.heads, &cfg.width, &cfg.context, &cfg.vocab,
                   &cfg.n_kv_heads, &cfg.ffn_hidden};
    int vals[] = {layers, heads, width, context, vocab, kv_heads, ffn};
    for (int i = 0; i < 5; i++) *dims[i] = vals[i];
    ent_model_shape s = ent_model_shape_from_config(&cfg);
    for (int i = 5; i < 7; i++) *dims[i] = vals[i];
    const char *llama_keys[] = {"model.arch=llama", "model.rope_theta=500000",
                                "model.rope_scaling=llama3"};
    for (int i = 0; i < 3; i++) ent_config_set(&cfg, llama_keys[i]);
    ent_model_shape ls = ent_model_shape_from_config(&cfg);
    trainee run[2];
    int nruns = llama ? 2 : 1;
    if (trainee_new(be, &s, B, context, &run[0]) != 0 ||
        (llama && trainee_new(be, &ls, B, context, &run[1]) != 0))
        return 1;
    int N = B * context;
    int32_t *tok = malloc(sizeof(int32_t) * N), *tgt = malloc(sizeof(int32_t) * N);
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < N; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        tok[i] = (int32_t)(x % (uint64_t)vocab);
        tgt[i] = (int32_t)((x >> 32) % (uint64_t)vocab);
    }

    char mem[32];
    for (int r = 0; r < nruns; r++) {
        const ent_model_shape *rs = &run[r].s;
        if (rs->arch == ENT_ARCH_LLAMA)
            printf("bench_train: Llama model %d layers, %d heads (%d KV heads), width %d, SwiGLU "
                   "%d, context %d, vocab %d (%.1fM parameters)\n", layers, heads, kv_heads,
                   width, ffn, context, vocab, ent_model_shape_num_params(rs) / 1e6);
        else
            printf("bench_train: GPT model %d layers, %d heads, width %d, context %d, vocab %d "
                   "(%.1fM parameters)\n", layers, heads, width, context, vocab,
                   ent_model_shape_num_params(rs) / 1e6);
        printf("             batch %d x %d = %d tokens/step, %.3g FLOP/token, %s of memory\n", B,
               context, N, ent_model_shape_flops_per_token(rs),
               ent_format_bytes((double)ent_model_memory_bytes(be, rs, 1, B, context), mem,
                                sizeof mem));
    }
    printf("             %s\n", ent_backend_cpu_describe());
    const char *blas = ent_backend_cpu_warning();
    if (blas != NULL) printf("             WARNING: %s\n", blas);

    // the models take turns step by step, so that both see the same machine
    for (int step = 1; step <= warmup + steps; step++)
        for (int r = 0; r < nruns; r++) train_step(&run[r], tok, tgt, step > warmup);

    // the BLAS ceiling, measured now on the same cores
    double peak = sgemm_gflops(2048, 2048, 2048, 5);
    double shape = sgemm_gflops(N, 4 * width, width, 5);

    double tok_s[2];
    for (int r = 0; r < nruns; r++) {
        trainee *t = &run[r];
        const char *name = t->s.arch == ENT_ARCH_LLAMA ? "llama" : "gpt2";
        double t_step = (t->t_fwd + t->t_bwd + t->t_opt) / steps;
        tok_s[r] = N / t_step;
        double gflops = tok_s[r] * ent_model_shape_flops_per_token(&t->s) / 1e9;
        char label[96];
        printf("\n%-44s %12s\n", "measurement", "value");
#define ROW(fmt, what, ...)                                                                        \
    do {                                                                                           \
        snprintf(label, sizeof label, "%s " what, name);                                           \
        printf("%-44s " fmt "\n", label, __VA_ARGS__);                                             \
    } while (0)
        ROW("%12.0f", "training tokens/s", tok_s[r]);
        ROW("%12.3f", "training step, seconds", t_step);
        ROW("%12.1f%%", "  forward share", 100 * t->t_fwd / steps / t_step);
        ROW("%12.1f%%", "  backward + grad norm share", 100 * t->t_bwd / steps / t_step);
        ROW("%12.1f%%", "  AdamW share", 100 * t->t_opt / steps / t_step);
        ROW("%12.1f", "training GFLOP/s (achieved)", gflops);
        ROW("%12.1f%%", "training / sgemm 2048^3", 100 * gflops / peak);
        if (t->s.arch == ENT_ARCH_LLAMA) {
            double ew = llama_elementwise_seconds(be, &t->s, B, context, 5);
            ROW("%12.1f%%", "RMSNorm+RoPE+SwiGLU share (fastest)", 100 * ew / t->t_min);
        }
#undef ROW
    }
    printf("%-44s %12.1f\n", "cblas_sgemm 2048^3 GFLOP/s (baseline)", peak);
    char label[64];
    snprintf(label, sizeof label, "cblas_sgemm %dx%dx%d GFLOP/s (MLP shape)", N, 4 * width, width);
    printf("%-44s %12.1f\n", label, shape);
    if (llama) {
        printf("%-44s %12.3f\n", "llama / gpt2 tokens/s", tok_s[1] / tok_s[0]);
        printf("%-44s %12.3f\n", "gpt2 / llama FLOP per token",
               ent_model_shape_flops_per_token(&s) / ent_model_shape_flops_per_token(&ls));
    }
    free(tok);
    free(tgt);
    for (int r = 0; r < nruns; r++) trainee_free(&run[r]);
    ent_backend_free(&be);
    return 0;
}
