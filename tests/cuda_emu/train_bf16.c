// train_bf16.c: the model trained in bf16 by the cuda backend's kernels run
// on the CPU (the CUDA emulator, tests/cuda_emu), against the cpu backend in
// f32: the whole precision seam of runtime/model.c without a GPU.
//
// For a tiny GPT-2 and a tiny llama (grouped-query attention, so that the
// KV views are offset in bf16 elements), each built on both backends from
// the same seed:
//   - the masters are the cpu's parameters bit for bit, and the parameters in
//     compute are the masters rounded to bf16 (the backend's cast);
//   - 20 AdamW steps on the same tokens: every loss within 1e-2 relative of
//     the cpu's (bf16 storage, f32 arithmetic); at the first step, from the
//     same parameters, every row of the gradient within 2e-2 (max |g - w| /
//     max |w|) and its norm within 1e-2; the norm at steps 10 and 20 within
//     5e-2 (the two runs' parameters have drifted apart by then: AdamW's
//     normalised steps turn bf16's small differences of small gradients
//     into differences of lr);
//   - after the steps, the parameters in compute are still the masters
//     rounded (AdamW writes both);
//   - masters written from outside (a resume: the cpu's trained masters)
//     reach compute through ent_model_params_changed: the next loss matches
//     the cpu's within 1e-2, and compute is the new masters rounded;
//   - ent_model_logits_at widens a row of bf16 logits: within 1e-2 of the
//     cpu's row (relative to its largest value).
// The emulated backend's matrix products are the CPU's on operands widened
// from bf16 and rounded back (as cuBLASLt computes them in bf16), not
// cuBLASLt itself. ENT_TEST_SEED=... repeats a run. Exit 0: all passed.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ent_runtime.h"
#include "kernel_math.h"
#include "ref.h"

ent_status ent_emu_backend_new(const char *name, const ent_backend_opts *opts, ent_backend_t **out);

static const double TOL = 1e-2;
static int failures, checks;

#define OK(call)                                                                                   \
    do {                                                                                           \
        ent_status st__ = (call);                                                                  \
        if (st__ != ENT_OK) {                                                                      \
            printf("FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, ent_last_error());          \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    checks++;
    if (ok) return;
    failures++;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

// a copy of n floats of device memory of backend be
static float *host_floats(ent_backend_t *be, const void *p, size_t n) {
    float *h = malloc(sizeof(float) * (n ? n : 1));
    if (h == NULL) exit(1);
    OK(be->iface->to_host(be, h, p, sizeof(float) * n));
    return h;
}

// how many parameters in compute (bf16 on the emulated backend) are not
// their master rounded to nearest even
static size_t unrounded(ent_model_t *m) {
    ent_backend_t *be = ent_model_backend(m);
    size_t n = ent_model_arena_floats(m);
    float *master = host_floats(be, ent_model_arena(m, ENT_ARENA_PARAMS), n);
    uint16_t *compute = malloc(sizeof(uint16_t) * n);
    if (compute == NULL) exit(1);
    OK(be->iface->to_host(be, compute, ent_model_compute_params(m), sizeof(uint16_t) * n));
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += compute[i] != ent_k_f32_to_bf16(master[i]);
    free(master);
    free(compute);
    return wrong;
}

static double rel(double got, double want) {
    return fabs(got - want) / (fabs(want) > 1e-30 ? fabs(want) : 1.0);
}

// each row's gradient error, bf16 against f32: max |g - w| / max |w|, within
// limit (each printed with ENT_TEST_VERBOSE)
static void grad_rows(const char *name, int step, ent_model_t *m[2], double limit) {
    const ent_param_table *t = ent_model_table(m[0]);
    size_t n = ent_model_arena_floats(m[0]);
    float *g[2];
    for (int k = 0; k < 2; k++)
        g[k] = host_floats(ent_model_backend(m[k]), ent_model_arena(m[k], ENT_ARENA_GRADS), n);
    for (int i = 0; i < t->nrows; i++) {
        const ent_param_row *r = &t->rows[i];
        double d = 0, w = 0;
        for (size_t j = r->offset; j < r->offset + r->numel; j++) {
            d = fmax(d, fabs((double)g[1][j] - g[0][j]));
            w = fmax(w, fabs((double)g[0][j]));
        }
        double e = d / (w > 0 ? w : 1);
        if (getenv("ENT_TEST_VERBOSE") != NULL)
            printf("%s step %d: %-40s %.3g\n", name, step, r->name, e);
        check(e <= limit, "%s step %d: gradient of %s: error %.3g > %.3g", name, step, r->name, e,
              limit);
    }
    free(g[0]);
    free(g[1]);
}

static ent_model_t *model_on(ent_backend_t *be, const ent_model_shape *s, int B) {
    ent_model_t *m = NULL;
    OK(ent_model_new(be, s, NULL, B, s->context, &m));
    OK(ent_model_init(m, 1234));
    return m;
}

static void run(const char *name, const ent_model_shape *s, ent_backend_t *cpu,
                ent_backend_t *emu) {
    const int B = 1, T = s->context, steps = 20;
    size_t n = (size_t)B * T;
    ent_model_t *m[2] = {model_on(cpu, s, B), model_on(emu, s, B)};
    ent_optim_t *o[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) OK(ent_optim_new(m[k], NULL, 0, &o[k]));
    size_t floats = ent_model_arena_floats(m[0]);
    check(floats == ent_model_arena_floats(m[1]), "%s: arenas of %zu and %zu floats", name, floats,
          ent_model_arena_floats(m[1]));
    check(ent_model_table(m[1])->rows[0].dtype == ENT_BF16, "%s: the table's dtype is %s, not bf16",
          name, ent_dtype_name(ent_model_table(m[1])->rows[0].dtype));
    check(ent_model_compute_params(m[1]) != ent_model_arena(m[1], ENT_ARENA_PARAMS),
          "%s: bf16 parameters share the masters' memory", name);

    // the same initial masters; compute their rounding
    float *p0 = host_floats(cpu, ent_model_arena(m[0], ENT_ARENA_PARAMS), floats);
    float *p1 = host_floats(emu, ent_model_arena(m[1], ENT_ARENA_PARAMS), floats);
    check(memcmp(p0, p1, sizeof(float) * floats) == 0, "%s: initial masters differ from the cpu's",
          name);
    size_t wrong = unrounded(m[1]);
    check(wrong == 0, "%s: %zu initial parameters in compute are not their master rounded", name,
          wrong);
    free(p0);
    free(p1);

    int32_t *tok = malloc(sizeof(int32_t) * n), *tgt = malloc(sizeof(int32_t) * n);
    if (tok == NULL || tgt == NULL) exit(1);
    ent_adamw hp = {.lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                    .weight_decay = 0.1f};
    double worst_loss = 0, worst_norm = 0;
    for (int step = 1; step <= steps; step++) {
        for (size_t i = 0; i < n; i++) {
            tok[i] = (int32_t)test_rand_int(0, s->vocab - 1);
            tgt[i] = (int32_t)test_rand_int(0, s->vocab - 1);
        }
        float loss[2];
        double norm[2];
        for (int k = 0; k < 2; k++) {
            OK(ent_model_zero_grad(m[k]));
            OK(ent_model_forward(m[k], tok, tgt, B, T, &loss[k]));
            ent_optim_begin_backward(o[k], 1);
            OK(ent_model_backward(m[k], 1.0f / (float)n));
            OK(ent_optim_reduce_grads(o[k]));
            // the norm at a few steps: sum_squares' fixed grid of 256 blocks of
            // 256 threads per row is the emulator's most expensive launch
            norm[k] = -1;
            if (step == 1 || step % 10 == 0) OK(ent_optim_grad_norm(o[k], &norm[k]));
            OK(ent_optim_step(o[k], &hp, 1.0f));
        }
        if (step == 1) grad_rows(name, step, m, 2 * TOL);
        double el = rel(loss[1], loss[0]);
        if (el > worst_loss) worst_loss = el;
        check(el <= TOL, "%s step %d: loss %.6f in bf16, %.6f in f32 (relative %.3g)", name, step,
              loss[1], loss[0], el);
        if (norm[0] >= 0) {
            double en = rel(norm[1], norm[0]), limit = step == 1 ? TOL : 5 * TOL;
            if (en > worst_norm) worst_norm = en;
            check(en <= limit, "%s step %d: gradient norm %.6f in bf16, %.6f in f32 (relative "
                  "%.3g > %.3g)", name, step, norm[1], norm[0], en, limit);
        }
        check(isfinite(loss[1]), "%s step %d: loss not finite", name, step);
    }
    wrong = unrounded(m[1]);
    check(wrong == 0, "%s: after %d steps %zu parameters in compute are not their master rounded",
          name, steps, wrong);

    // a resume: the cpu's trained masters written into the bf16 model
    float *trained = host_floats(cpu, ent_model_arena(m[0], ENT_ARENA_PARAMS), floats);
    OK(emu->iface->to_device(emu, ent_model_arena(m[1], ENT_ARENA_PARAMS), trained,
                             sizeof(float) * floats));
    OK(ent_model_params_changed(m[1]));
    wrong = unrounded(m[1]);
    check(wrong == 0, "%s: after params_changed %zu parameters in compute are not the new masters "
          "rounded", name, wrong);
    float loss[2];
    for (int k = 0; k < 2; k++) OK(ent_model_forward(m[k], tok, tgt, B, T, &loss[k]));
    double er = rel(loss[1], loss[0]);
    check(er <= TOL, "%s: loss of the cpu's masters: %.6f in bf16, %.6f in f32 (relative %.3g)",
          name, loss[1], loss[0], er);

    // a row of logits, widened from bf16 on the host
    int Vp = s->padded_vocab;
    float *row[2] = {malloc(sizeof(float) * Vp), malloc(sizeof(float) * Vp)};
    if (row[0] == NULL || row[1] == NULL) exit(1);
    for (int k = 0; k < 2; k++) {
        OK(ent_model_forward(m[k], tok, NULL, B, T, NULL));
        OK(ent_model_logits_at(m[k], B - 1, T - 1, row[k]));
    }
    double diff = 0, scale = 0;
    for (int v = 0; v < s->vocab; v++) {
        diff = fmax(diff, fabs((double)row[1][v] - row[0][v]));
        scale = fmax(scale, fabs((double)row[0][v]));
    }
    check(scale > 0 && diff / scale <= TOL, "%s: logits row within %.3g of its largest value %.3g",
          name, diff / (scale > 0 ? scale : 1), scale);
    printf("%s: %d steps in bf16 (emulated) against f32 (cpu): largest relative difference of "
           "the losses %.3g, of the gradient norms %.3g; resumed loss %.3g; logits %.3g\n",
           name, steps, worst_loss, worst_norm, er, diff / (scale > 0 ? scale : 1));
    free(row[0]);
    free(row[1]);
    free(trained);
    free(tok);
    free(tgt);
    for (int k = 0; k < 2; k++) {
        ent_optim_free(&o[k]);
        ent_model_free(&m[k]);
    }
}

int main(void) {
    test_seed();
    ent_backend_t *cpu = ent_backend_cpu_new(0), *emu = NULL;
    ent_backend_opts bf16 = {.precision = ENT_PRECISION_BF16};
    if (cpu == NULL || ent_emu_backend_new("cuda-emulated", &bf16, &emu) != ENT_OK) {
        printf("FAIL: cannot create the backends: %s\n", ent_last_error());
        return 1;
    }
    check(emu->act_dtype == ENT_BF16 && emu->param_dtype == ENT_BF16,
          "the emulated backend in precision bf16 computes in %s / %s",
          ent_dtype_name(emu->act_dtype), ent_dtype_name(emu->param_dtype));

    ent_config cfg;
    ent_config_defaults(&cfg);
    cfg.layers = 2;
    cfg.heads = 4;
    cfg.width = 32;
    cfg.context = 16;
    ent_model_shape gpt2 = ent_model_shape_from_config(&cfg);
    run("gpt2", &gpt2, cpu, emu);
    cfg.n_kv_heads = 2;
    cfg.ffn_hidden = 48;
    cfg.tie_embeddings = 0;
    cfg.rope_original_context = 64;
    snprintf(cfg.arch, sizeof cfg.arch, "llama");
    snprintf(cfg.rope_scaling, sizeof cfg.rope_scaling, "llama3");
    ent_model_shape llama = ent_model_shape_from_config(&cfg);
    run("llama", &llama, cpu, emu);

    printf("train_bf16: %d checks, %d failed\n", checks, failures);
    ent_backend_free(&emu);
    ent_backend_free(&cpu);
    return failures ? 1 : 0;
}
