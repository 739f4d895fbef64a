// bench_train.c: training throughput of a GPT-2-small-shaped model on the CPU
// backend, next to the BLAS ceiling measured in the same run.
//
// Prints tokens/s and achieved GFLOP/s (6 * params + 6 * layers * width *
// context FLOPs per token, llm.c's count) for full training steps (forward,
// backward, AdamW), the time split between them, and cblas_sgemm's GFLOP/s
// on a 2048^3 product and on the model's own largest matmul shape. It never
// passes or fails: it reports figures.
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
            "Defaults: GPT-2 small (12, 12, 768, vocab 50257) with context 256, batch 4,\n"
            "3 timed steps after 1 warm-up step. OMP_NUM_THREADS sets the threads.\n");
}

int main(int argc, char **argv) {
    int layers = 12, heads = 12, width = 768, context = 256, vocab = 50257, B = 4, steps = 3,
        warmup = 1;
    for (int i = 1; i < argc; i++) {
        int *target = NULL;
        if (strcmp(argv[i], "--layers") == 0) target = &layers;
        else if (strcmp(argv[i], "--heads") == 0) target = &heads;
        else if (strcmp(argv[i], "--width") == 0) target = &width;
        else if (strcmp(argv[i], "--context") == 0) target = &context;
        else if (strcmp(argv[i], "--vocab") == 0) target = &vocab;
        else if (strcmp(argv[i], "--batch") == 0) target = &B;
        else if (strcmp(argv[i], "--steps") == 0) target = &steps;
        else if (strcmp(argv[i], "--warmup") == 0) target = &warmup;
        if (target == NULL || i + 1 >= argc || (*target = atoi(argv[i + 1])) <= 0) {
            usage();
            return 2;
        }
        i++;
    }
    if (width % heads != 0 || vocab > 65536 || warmup < 0) {
        usage();
        return 2;
    }
    ent_backend_t *be = ent_backend_cpu_new(0);
    ent_model_shape s = {.layers = layers, .heads = heads, .width = width, .context = context,
                         .vocab = vocab, .padded_vocab = (vocab + 63) / 64 * 64};
    ent_model_t *m = NULL;
    ent_optim_t *o = NULL;
    if (ent_model_new(be, &s, NULL, B, context, &m) != ENT_OK ||
        ent_optim_new(m, NULL, 0, &o) != ENT_OK) {
        fprintf(stderr, "bench_train: %s\n", ent_last_error());
        return 1;
    }
    ent_model_init(m, 1);
    int N = B * context;
    int32_t *tok = malloc(sizeof(int32_t) * N), *tgt = malloc(sizeof(int32_t) * N);
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < N; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        tok[i] = (int32_t)(x % (uint64_t)vocab);
        tgt[i] = (int32_t)((x >> 32) % (uint64_t)vocab);
    }

    double flops_tok = ent_model_shape_flops_per_token(&s);
    char mem[32];
    printf("bench_train: GPT model %d layers, %d heads, width %d, context %d, vocab %d (%.1fM "
           "parameters)\n", layers, heads, width, context, vocab,
           ent_model_shape_num_params(&s) / 1e6);
    printf("             batch %d x %d = %d tokens/step, %.3g FLOP/token, %s of memory\n", B,
           context, N, flops_tok,
           ent_format_bytes((double)ent_model_memory_bytes(be, &s, 1, B, context), mem, sizeof mem));
    printf("             %s\n", ent_backend_cpu_describe());
    const char *blas = ent_backend_cpu_warning();
    if (blas != NULL) printf("             WARNING: %s\n", blas);

    double t_fwd = 0, t_bwd = 0, t_opt = 0;
    for (int step = 1; step <= warmup + steps; step++) {
        double t0 = bench_now();
        ent_model_zero_grad(m);
        float loss;
        ent_model_forward(m, tok, tgt, B, context, &loss);
        double t1 = bench_now();
        ent_optim_begin_backward(o, 1);
        ent_model_backward(m, 1.0f / (float)N);
        ent_optim_reduce_grads(o);
        double norm;
        ent_optim_grad_norm(o, &norm);
        double t2 = bench_now();
        ent_adamw hp = {1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
        ent_optim_step(o, &hp, norm > 1.0 ? (float)(1.0 / norm) : 1.0f);
        double t3 = bench_now();
        if (step > warmup) {
            t_fwd += t1 - t0;
            t_bwd += t2 - t1;
            t_opt += t3 - t2;
        }
    }
    double t_step = (t_fwd + t_bwd + t_opt) / steps;
    double tok_s = N / t_step, gflops = tok_s * flops_tok / 1e9;

    // the BLAS ceiling, measured now on the same cores
    double peak = sgemm_gflops(2048, 2048, 2048, 5);
    double shape = sgemm_gflops(N, 4 * width, width, 5);

    printf("\n%-44s %12s\n", "measurement", "value");
    printf("%-44s %12.0f\n", "training tokens/s", tok_s);
    printf("%-44s %12.1f\n", "training step, seconds", t_step);
    printf("%-44s %12.1f%%\n", "  forward share", 100 * t_fwd / steps / t_step);
    printf("%-44s %12.1f%%\n", "  backward + grad norm share", 100 * t_bwd / steps / t_step);
    printf("%-44s %12.1f%%\n", "  AdamW share", 100 * t_opt / steps / t_step);
    printf("%-44s %12.1f\n", "training GFLOP/s (achieved)", gflops);
    printf("%-44s %12.1f\n", "cblas_sgemm 2048^3 GFLOP/s (baseline)", peak);
    char label[64];
    snprintf(label, sizeof label, "cblas_sgemm %dx%dx%d GFLOP/s (MLP shape)", N, 4 * width, width);
    printf("%-44s %12.1f\n", label, shape);
    printf("%-44s %12.1f%%\n", "training / sgemm 2048^3", 100 * gflops / peak);
    free(tok);
    free(tgt);
    ent_optim_free(&o);
    ent_model_free(&m);
    ent_backend_free(&be);
    return 0;
}
