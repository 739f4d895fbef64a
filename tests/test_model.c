// test_model.c: the whole GPT model on the CPU backend.
//
//  - gradient check: the backward pass against finite differences of the loss,
//    tensor by tensor, along a random direction of each tensor;
//  - the loss at initialisation is within 2% of ln(vocab);
//  - a tiny model overfits one batch to a loss below 0.05;
//  - the same seed gives bit-identical losses and parameters, another seed does not;
//  - the activation table lays out the activation arenas and sizes the memory estimate.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ent_runtime.h"
#include "ref.h"
#include "runtime_impl.h" // the activation table; the memory estimate of given tables

static ent_backend_t *be;

static int setup(void **state) {
    (void)state;
    be = ent_backend_cpu_new(0);
    return be == NULL;
}

static int teardown(void **state) {
    (void)state;
    ent_backend_free(&be);
    return 0;
}

static ent_model_shape tiny_shape(int layers, int heads, int width, int context) {
    ent_model_shape s = {.layers = layers, .heads = heads, .width = width, .context = context,
                         .vocab = ENT_BYTE_VOCAB, .padded_vocab = 320};
    return s;
}

// A tiny llama: kv KV heads (grouped-query attention when fewer than heads),
// SwiGLU of ffn units, Llama 3's frequency bands (a short original context,
// so that every band falls inside these head sizes), lm_head tied or not.
static ent_model_shape tiny_llama(int layers, int heads, int kv, int width, int context, int ffn,
                                  int tie) {
    // through the configuration, as a run builds its shape
    ent_config cfg;
    ent_config_defaults(&cfg);
    cfg.layers = layers;
    cfg.heads = heads;
    cfg.width = width;
    cfg.context = context;
    cfg.n_kv_heads = kv;
    cfg.ffn_hidden = ffn;
    cfg.tie_embeddings = tie;
    cfg.rope_original_context = 64;
    snprintf(cfg.arch, sizeof cfg.arch, "llama");
    snprintf(cfg.rope_scaling, sizeof cfg.rope_scaling, "llama3");
    ent_model_shape s = ent_model_shape_from_config(&cfg);
    assert_int_equal(s.padded_vocab, 320);
    return s;
}

static ent_model_t *new_model_on(ent_backend_t *on, const ent_model_shape *s, int B,
                                 uint64_t seed) {
    ent_model_t *m = NULL;
    assert_int_equal(ent_model_new(on, s, NULL, B, s->context, &m), ENT_OK);
    assert_int_equal(ent_model_init(m, seed), ENT_OK);
    return m;
}

static ent_model_t *new_model(const ent_model_shape *s, int B, uint64_t seed) {
    return new_model_on(be, s, B, seed);
}

static void random_tokens(int32_t *x, size_t n, int vocab) {
    for (size_t i = 0; i < n; i++) x[i] = (int32_t)(test_uniform() * vocab);
}

static double loss_of(ent_model_t *m, const int32_t *tok, const int32_t *tgt, int B, int T) {
    float loss = 0.0f;
    assert_int_equal(ent_model_forward(m, tok, tgt, B, T, &loss), ENT_OK);
    return loss;
}

// ---------------------------------------------------------------------------

// Directional derivative of the loss along d (unit norm, inside one tensor) by a
// fourth-order central difference, with the tensor restored bit for bit after.
static double numeric_derivative(ent_model_t *m, const ent_param_row *r, const float *d,
                                 const int32_t *tok, const int32_t *tgt, int B, int T, double h) {
    float *p = ent_model_arena(m, ENT_ARENA_PARAMS) + r->offset;
    float *saved = malloc(sizeof(float) * r->numel);
    assert_non_null(saved);
    memcpy(saved, p, sizeof(float) * r->numel);
    double f[4];
    const double steps[4] = {h, -h, 2 * h, -2 * h};
    for (int k = 0; k < 4; k++) {
        for (size_t i = 0; i < r->numel; i++) p[i] = (float)(saved[i] + steps[k] * d[i]);
        f[k] = loss_of(m, tok, tgt, B, T);
    }
    memcpy(p, saved, sizeof(float) * r->numel);
    free(saved);
    return (8.0 * (f[0] - f[1]) - (f[2] - f[3])) / (12.0 * h);
}

// the live elements of a row: a vocabulary's padding rows are never used
static size_t live_numel(const ent_model_shape *s, const ent_param_row *r) {
    return r->ndim == 2 && r->shape[0] == s->padded_vocab ? (size_t)s->vocab * (size_t)r->shape[1]
                                                          : r->numel;
}

// Every tensor's gradient against the loss's directional derivative.
static void gradient_check(const ent_model_shape *shape) {
    ent_model_shape s = *shape;
    int B = 2, T = s.context;
    ent_model_t *m = new_model(&s, B, test_seed());
    // Move away from the initialisation, where layernorm gradients are ~1e-3 and
    // lost in the finite differences' float noise: every parameter gets N(0, 0.2).
    float *params = ent_model_arena(m, ENT_ARENA_PARAMS);
    const ent_param_table *t = ent_model_table(m);
    for (int i = 0; i < t->nrows; i++) {
        const ent_param_row *r = &t->rows[i];
        size_t live = live_numel(&s, r);
        for (size_t k = 0; k < live; k++) params[r->offset + k] += (float)(0.2 * test_normal());
    }
    int32_t tok[2 * 8], tgt[2 * 8];
    random_tokens(tok, (size_t)B * T, s.vocab);
    random_tokens(tgt, (size_t)B * T, s.vocab);
    ent_model_zero_grad(m);
    loss_of(m, tok, tgt, B, T);
    assert_int_equal(ent_model_backward(m, 1.0f / (float)(B * T)), ENT_OK);

    const float *grads = ent_model_arena(m, ENT_ARENA_GRADS);
    int verbose = getenv("ENT_TEST_VERBOSE") != NULL;
    double worst = 0.0;
    for (int i = 0; i < t->nrows; i++) {
        const ent_param_row *r = &t->rows[i];
        const float *g = grads + r->offset;
        // direction: random magnitudes with the gradient's signs, so the
        // directional derivative is large and every component's error counts
        float *d = malloc(sizeof(float) * r->numel);
        double norm = 0.0, analytic = 0.0;
        for (size_t k = 0; k < r->numel; k++) {
            double mag = fabs(test_normal());
            d[k] = (float)(g[k] < 0 ? -mag : mag);
            norm += (double)d[k] * d[k];
        }
        norm = sqrt(norm);
        for (size_t k = 0; k < r->numel; k++) {
            d[k] = (float)(d[k] / norm);
            analytic += (double)g[k] * d[k];
        }
        double numeric = numeric_derivative(m, r, d, tok, tgt, B, T, 1e-2);
        double err = fabs(numeric - analytic) / fmax(fabs(analytic), 1e-3);
        if (verbose)
            fprintf(stderr, "  %-24s analytic %+.6e numeric %+.6e rel err %.2e\n", r->name,
                    analytic, numeric, err);
        if (err > worst) worst = err;
        if (!(err < 1e-2))
            fail_msg("%s: analytic %.6e vs numeric %.6e (relative error %.3g)", r->name,
                     analytic, numeric, err);
        free(d);
    }
    if (verbose) fprintf(stderr, "  worst relative error %.3g\n", worst);
    ent_model_free(&m);
}

static void test_gradient_check(void **state) {
    (void)state;
    test_rng_reset(test_seed() ^ 0x11);
    ent_model_shape s = tiny_shape(2, 2, 16, 8);
    gradient_check(&s);
}

static void test_initial_loss(void **state) {
    (void)state;
    test_rng_reset(test_seed() ^ 0x22);
    ent_model_shape s = tiny_shape(2, 4, 64, 32);
    int B = 4, T = s.context;
    ent_model_t *m = new_model(&s, B, test_seed());
    int32_t *tok = malloc(sizeof(int32_t) * B * T), *tgt = malloc(sizeof(int32_t) * B * T);
    random_tokens(tok, (size_t)B * T, s.vocab);
    random_tokens(tgt, (size_t)B * T, s.vocab);
    double loss = loss_of(m, tok, tgt, B, T), expect = log((double)s.vocab);
    if (getenv("ENT_TEST_VERBOSE")) fprintf(stderr, "  loss at init %.4f, ln(V) %.4f\n", loss, expect);
    assert_true(fabs(loss - expect) / expect < 0.02);
    free(tok);
    free(tgt);
    ent_model_free(&m);
}

// Runs `steps` AdamW steps on one fixed batch; returns the last loss.
static double train_on_batch(ent_model_t *m, const int32_t *tok, const int32_t *tgt, int B,
                             int T, int steps, float lr, double *losses) {
    ent_optim_t *o = NULL;
    assert_int_equal(ent_optim_new(m, NULL, 0, &o), ENT_OK);
    ent_adamw hp = {lr, 0.9f, 0.95f, 1e-8f, 0.0f};
    double loss = 0.0;
    for (int step = 1; step <= steps; step++) {
        assert_int_equal(ent_model_zero_grad(m), ENT_OK);
        loss = loss_of(m, tok, tgt, B, T);
        if (losses) losses[step - 1] = loss;
        ent_optim_begin_backward(o, 1);
        assert_int_equal(ent_model_backward(m, 1.0f / (float)(B * T)), ENT_OK);
        assert_int_equal(ent_optim_reduce_grads(o), ENT_OK);
        double norm;
        assert_int_equal(ent_optim_grad_norm(o, &norm), ENT_OK);
        float scale = norm > 1.0 ? (float)(1.0 / norm) : 1.0f;
        assert_int_equal(ent_optim_step(o, &hp, scale), ENT_OK);
    }
    ent_optim_free(&o);
    return loss;
}

static void test_overfit_one_batch(void **state) {
    (void)state;
    test_rng_reset(test_seed() ^ 0x33);
    ent_model_shape s = tiny_shape(2, 4, 64, 32);
    int B = 4, T = s.context;
    ent_model_t *m = new_model(&s, B, test_seed());
    int32_t tok[4 * 32], tgt[4 * 32];
    random_tokens(tok, (size_t)B * T, s.vocab);
    random_tokens(tgt, (size_t)B * T, s.vocab);
    // train until the loss is below 0.05, at most 600 steps
    double losses[600], loss = 0.0;
    train_on_batch(m, tok, tgt, B, T, 600, 3e-3f, losses);
    int steps = 0;
    while (steps < 600 && losses[steps] >= 0.05) steps++;
    loss = steps < 600 ? losses[steps] : losses[599];
    if (getenv("ENT_TEST_VERBOSE")) fprintf(stderr, "  loss %.4f after %d steps\n", loss, steps);
    if (!(loss < 0.05)) fail_msg("loss %.4f after %d steps on one batch, expected < 0.05", loss, steps);
    ent_model_free(&m);
}

// Trains a fresh model (seed) on one batch for `steps` steps on backend `on`;
// returns its parameters, copied out through the backend (the caller frees).
static float *trained_params(ent_backend_t *on, const ent_model_shape *s, int B, uint64_t seed,
                             const int32_t *tok, const int32_t *tgt, int steps, double *losses,
                             size_t *total) {
    ent_model_t *m = new_model_on(on, s, B, seed);
    train_on_batch(m, tok, tgt, B, s->context, steps, 1e-3f, losses);
    *total = ent_model_table(m)->total;
    float *params = malloc(sizeof(float) * *total);
    assert_non_null(params);
    assert_int_equal(on->iface->to_host(on, params, ent_model_arena(m, ENT_ARENA_PARAMS),
                                        sizeof(float) * *total),
                     ENT_OK);
    ent_model_free(&m);
    return params;
}

static void test_deterministic(void **state) {
    (void)state;
    test_rng_reset(test_seed() ^ 0x44);
    ent_model_shape s = tiny_shape(2, 4, 64, 32);
    int B = 4, T = s.context, steps = 8;
    int32_t tok[4 * 32], tgt[4 * 32];
    random_tokens(tok, (size_t)B * T, s.vocab);
    random_tokens(tgt, (size_t)B * T, s.vocab);
    double losses[3][8];
    float *params[3];
    uint64_t seeds[3] = {7, 7, 8};
    size_t total = 0;
    for (int run = 0; run < 3; run++)
        params[run] = trained_params(be, &s, B, seeds[run], tok, tgt, steps, losses[run], &total);
    assert_memory_equal(losses[0], losses[1], sizeof losses[0]);
    assert_memory_equal(params[0], params[1], sizeof(float) * total);
    assert_memory_not_equal(losses[0], losses[2], sizeof losses[0]);
    for (int run = 0; run < 3; run++) free(params[run]);
}

// The model and the optimizer reach device memory only through the backend:
// on the guarded backend (memory PROT_NONE outside its own calls) any other
// access faults. Training there gives the CPU backend's losses and
// parameters bit for bit (the same arithmetic runs inside the guard).
static void test_guarded_backend(void **state) {
    (void)state;
    test_rng_reset(test_seed() ^ 0x66);
    ent_backend_t *guarded = NULL;
    assert_int_equal(ent_backend_new("cpu-guarded", NULL, &guarded), ENT_OK);
    assert_int_equal(guarded->iface->is_host, 0);
    ent_model_shape s = tiny_shape(2, 4, 64, 32);
    int B = 2, T = s.context, steps = 4;
    int32_t tok[2 * 32], tgt[2 * 32];
    random_tokens(tok, (size_t)B * T, s.vocab);
    random_tokens(tgt, (size_t)B * T, s.vocab);
    double losses[2][4];
    size_t total = 0;
    float *on_cpu = trained_params(be, &s, B, 11, tok, tgt, steps, losses[0], &total);
    float *on_guarded = trained_params(guarded, &s, B, 11, tok, tgt, steps, losses[1], &total);
    assert_memory_equal(losses[0], losses[1], sizeof losses[0]);
    assert_memory_equal(on_cpu, on_guarded, sizeof(float) * total);
    free(on_cpu);
    free(on_guarded);
    ent_backend_free(&guarded);
}

static void test_parameter_table(void **state) {
    (void)state;
    // GPT-2 small: the table holds 124,439,808 trainable parameters (real vocabulary)
    ent_model_shape s = {.layers = 12, .heads = 12, .width = 768, .context = 1024,
                         .vocab = 50257, .padded_vocab = 50304};
    assert_int_equal(ent_model_shape_num_params(&s), 124439808);
    ent_param_table t;
    assert_int_equal(ent_param_table_build(&s, 1, &t), ENT_OK);
    assert_int_equal(t.nrows, 2 + 12 * 12 + 2);
    const ent_param_row *qkv = ent_param_table_find(&t, "h.11.attn.c_attn.weight");
    assert_non_null(qkv);
    assert_int_equal(qkv->shape[0], 3 * 768);
    assert_int_equal(qkv->shape[1], 768);
    assert_int_equal(qkv->split, ENT_SPLIT_ROWS);
    assert_int_equal(qkv->split_groups, 3);
    assert_int_equal(ent_param_table_find(&t, "h.0.mlp.c_proj.weight")->split, ENT_SPLIT_COLS);
    assert_int_equal(ent_param_table_find(&t, "ln_f.bias")->decay, 0);
    assert_null(ent_param_table_find(&t, "h.12.ln_1.weight"));
    // rows do not overlap and fit in the arena
    for (int i = 1; i < t.nrows; i++)
        assert_true(t.rows[i].offset >= t.rows[i - 1].offset + t.rows[i - 1].numel);
    assert_true(t.rows[t.nrows - 1].offset + t.rows[t.nrows - 1].numel <= t.total);
    ent_param_table_free(&t);
}

// GPT-2 initialisation: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 L)),
// zero biases, unit layernorm gains, zero padding rows in wte.
static void test_initialisation(void **state) {
    (void)state;
    ent_model_shape s = tiny_shape(3, 4, 128, 64);
    ent_model_t *m = new_model(&s, 1, 1234);
    const ent_param_table *t = ent_model_table(m);
    const float *p = ent_model_arena(m, ENT_ARENA_PARAMS);
    for (int i = 0; i < t->nrows; i++) {
        const ent_param_row *r = &t->rows[i];
        const float *x = p + r->offset;
        size_t n = r->numel;
        if (strcmp(r->name, "wte.weight") == 0) {
            for (size_t k = (size_t)s.vocab * s.width; k < n; k++) assert_true(x[k] == 0.0f);
            n = (size_t)s.vocab * s.width;
        }
        double sum = 0, sq = 0;
        for (size_t k = 0; k < n; k++) {
            sum += x[k];
            sq += (double)x[k] * x[k];
        }
        double mean = sum / n, std = sqrt(sq / n - mean * mean);
        if (strstr(r->name, ".bias")) {
            assert_true(sq == 0.0);
        } else if (r->ndim == 1) {
            assert_true(mean == 1.0 && std == 0.0);
        } else {
            double expect = strstr(r->name, "c_proj.weight") ? 0.02 / sqrt(2.0 * s.layers) : 0.02;
            // n >= 8192 draws: the sample std is within a few percent of the true one
            if (fabs(std / expect - 1.0) > 0.05 || fabs(mean) > 0.1 * expect)
                fail_msg("%s: mean %.3g std %.4g, expected N(0, %.4g)", r->name, mean, std, expect);
        }
    }
    // each tensor draws from its own stream: the same seed gives the same tensor
    ent_model_t *again = new_model(&s, 1, 1234), *other = new_model(&s, 1, 1235);
    assert_memory_equal(p, ent_model_arena(again, ENT_ARENA_PARAMS), sizeof(float) * t->total);
    assert_memory_not_equal(p, ent_model_arena(other, ENT_ARENA_PARAMS), sizeof(float) * t->total);
    ent_model_free(&again);
    ent_model_free(&other);
    ent_model_free(&m);
}

// Tensor-parallel layout: for TP = 2 and 4, every rank's part of every row,
// found block by block by ent_param_row_rects for random local ranges, is
// exactly what ent_param_row_slice gives, and the ranks' parts together cover
// every element of the global tensor once.
static void test_tensor_parallel_layout(void **state) {
    (void)state;
    test_rng_reset(test_seed() ^ 0x55);
    ent_model_shape s = tiny_shape(1, 4, 16, 8);
    int tps[] = {2, 4};
    for (int k = 0; k < 2; k++) {
        int tp = tps[k];
        for (int rank = 0; rank < tp; rank++) {
            ent_param_table t;
            assert_int_equal(ent_param_table_build(&s, tp, &t), ENT_OK);
            for (int i = 0; i < t.nrows; i++) {
                const ent_param_row *r = &t.rows[i];
                size_t n = (size_t)(r->shape[0] * r->shape[1]);
                float *global = malloc(sizeof(float) * n), *local = malloc(sizeof(float) * r->numel);
                for (size_t j = 0; j < n; j++) global[j] = (float)j; // each element names itself
                ent_param_row_slice(r, rank, tp, global, local);
                for (int trial = 0; trial < 20; trial++) {
                    size_t lo = (size_t)test_rand_int(0, (int64_t)r->numel - 1);
                    size_t hi = (size_t)test_rand_int((int64_t)lo + 1, (int64_t)r->numel);
                    ent_rect rects[ENT_MAX_RECTS];
                    int nr = ent_param_row_rects(r, rank, tp, lo, hi, rects);
                    assert_true(nr >= 1 && nr <= ENT_MAX_RECTS);
                    size_t at = lo;
                    for (int q = 0; q < nr; q++)
                        for (int64_t a = 0; a < rects[q].count[0]; a++)
                            for (int64_t b = 0; b < rects[q].count[1]; b++) {
                                float want = (float)((rects[q].start[0] + a) * r->shape[1] +
                                                     rects[q].start[1] + b);
                                assert_true(at < hi && local[at] == want);
                                at++;
                            }
                    assert_int_equal(at, hi);
                }
                free(global);
                free(local);
            }
            ent_param_table_free(&t);
        }
        // coverage: every global element belongs to exactly one rank (or to
        // every rank, for replicated rows)
        ent_param_table t;
        assert_int_equal(ent_param_table_build(&s, tp, &t), ENT_OK);
        for (int i = 0; i < t.nrows; i++) {
            const ent_param_row *r = &t.rows[i];
            size_t n = (size_t)(r->shape[0] * r->shape[1]);
            int *hits = calloc(n, sizeof(int));
            for (int rank = 0; rank < tp; rank++) {
                ent_rect rects[ENT_MAX_RECTS];
                int nr = ent_param_row_rects(r, rank, tp, 0, r->numel, rects);
                for (int q = 0; q < nr; q++)
                    for (int64_t a = 0; a < rects[q].count[0]; a++)
                        for (int64_t b = 0; b < rects[q].count[1]; b++)
                            hits[(rects[q].start[0] + a) * r->shape[1] + rects[q].start[1] + b]++;
            }
            int expect = r->split == ENT_SPLIT_NONE ? tp : 1;
            for (size_t j = 0; j < n; j++)
                if (hits[j] != expect) fail_msg("%s (TP %d): element %zu covered %d times", r->name, tp, j, hits[j]);
            free(hits);
        }
        ent_param_table_free(&t);
    }
}

static void test_out_of_memory(void **state) {
    (void)state;
    ent_model_shape s = {.layers = 1024, .heads = 64, .width = 65536, .context = 1024,
                         .vocab = 257, .padded_vocab = 320};
    ent_model_t *m = NULL;
    assert_int_equal(ent_model_new(be, &s, NULL, 8, 1024, &m), ENT_ERR_NOMEM);
    assert_null(m);
    assert_non_null(strstr(ent_last_error(), "not enough memory"));
}

// The activation table: every row has a name and an element type, the rows
// of an arena follow each other on 64-byte boundaries without gaps or
// overlaps, and each arena is the sum of its rows' sizes rounded up to 64
// bytes (computed here, not by the code under test). The memory estimate is
// the tables', and with bf16 activations it is smaller by exactly what every
// float row saves after rounding (token ids and the backend's attention state
// keep their size). A model refuses activations its kernels cannot run.
static size_t rounded(size_t numel, ent_dtype dtype) {
    return (numel * ent_dtype_size(dtype) + 63) / 64 * 64;
}

static void test_activation_table(void **state) {
    (void)state;
    // odd sizes, so that rounding to 64 bytes matters: B x T x 1 floats are
    // not a multiple of 16 for B*T = 3*7 or 5*9
    struct { int layers, heads, width, context, tp, B, T; } cases[] = {
        {2, 4, 64, 32, 1, 3, 7}, {3, 4, 48, 16, 2, 5, 9}, {1, 4, 32, 8, 4, 2, 8}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ent_model_shape s = tiny_shape(cases[c].layers, cases[c].heads, cases[c].width,
                                       cases[c].context);
        int tp = cases[c].tp, B = cases[c].B, T = cases[c].T;
        ent_param_table params;
        ent_act_table f32, bf16;
        assert_int_equal(ent_param_table_build(&s, tp, &params), ENT_OK);
        assert_int_equal(ent_act_table_build(be, &s, tp, B, T, ENT_F32, &f32), ENT_OK);
        assert_int_equal(ent_act_table_build(be, &s, tp, B, T, ENT_BF16, &bf16), ENT_OK);
        assert_true(f32.nrows > 13 * s.layers);
        assert_int_equal(f32.nrows, bf16.nrows);
        size_t end[2] = {0, 0}, saved = 0;
        int floats = 0, ids = 0, states = 0;
        for (int i = 0; i < f32.nrows; i++) {
            const ent_act_row *r = &f32.rows[i], *h = &bf16.rows[i];
            assert_true(r->name[0] != '\0');
            assert_true(ent_dtype_size(r->dtype) > 0); // a dtype of the enum
            assert_true(r->numel > 0);
            assert_true(r->arena == ENT_ACTS || r->arena == ENT_ACT_GRADS);
            assert_int_equal(r->offset, end[r->arena]);
            assert_int_equal(r->offset % ENT_ARENA_ALIGN, 0);
            end[r->arena] += rounded(r->numel, r->dtype);
            assert_string_equal(r->name, h->name);
            assert_int_equal(r->numel, h->numel);
            assert_int_equal(r->arena, h->arena);
            // statistics, losses and rotation tables stay f32 in every precision
            size_t len = strlen(r->name);
            int stat = (len > 5 && (strcmp(r->name + len - 5, ".mean") == 0 ||
                                    strcmp(r->name + len - 5, ".rstd") == 0)) ||
                       strcmp(r->name, "losses") == 0 || strncmp(r->name, "rope.", 5) == 0;
            if (stat) {
                assert_int_equal(r->dtype, ENT_F32);
                assert_int_equal(h->dtype, ENT_F32);
            } else if (ent_dtype_is_float(r->dtype)) {
                floats++;
                assert_int_equal(r->dtype, ENT_F32);
                assert_int_equal(h->dtype, ENT_BF16);
                saved += rounded(r->numel, ENT_F32) - rounded(h->numel, ENT_BF16);
            } else {
                assert_int_equal(r->dtype, h->dtype);
            }
            if (strcmp(r->name, "tokens") == 0 || strcmp(r->name, "targets") == 0) {
                ids++;
                assert_int_equal(r->dtype, ENT_I32);
                assert_int_equal(r->numel, (size_t)B * T);
            }
            if (strstr(r->name, "attn.state") != NULL) {
                states++;
                assert_int_equal(r->dtype, ENT_U8);
                assert_int_equal(r->numel, be->iface->attention_state_bytes(be, B, T,
                                                                            s.heads / tp));
            }
            if (strcmp(r->name, "h.0.attn.qkv") == 0)
                assert_int_equal(r->numel, (size_t)3 * B * T * (s.width / tp));
            if (strcmp(r->name, "logits") == 0)
                assert_int_equal(r->numel, (size_t)B * T * s.padded_vocab);
        }
        assert_int_equal(ids, 2);
        assert_int_equal(states, s.layers + 1); // each block's, and the backward's scratch
        assert_true(floats > 0 && saved > 0);
        assert_int_equal(f32.bytes[ENT_ACTS], end[ENT_ACTS]);
        assert_int_equal(f32.bytes[ENT_ACT_GRADS], end[ENT_ACT_GRADS]);
        // the estimate: four f32 parameter arenas and the two activation arenas
        size_t estimate = ent_model_memory_bytes(be, &s, tp, B, T);
        assert_int_equal(estimate, 4 * sizeof(float) * params.total + end[0] + end[1]);
        assert_int_equal(estimate, ent_model_memory_bytes_of(&params, &f32));
        assert_int_equal(estimate - ent_model_memory_bytes_of(&params, &bf16), saved);
        ent_act_table_free(&f32);
        ent_act_table_free(&bf16);
        assert_null(f32.rows);
        ent_param_table_free(&params);
    }
    // activations the model cannot run are refused, naming the type
    ent_model_shape s = tiny_shape(1, 2, 16, 8);
    ent_act_table t;
    assert_int_equal(ent_act_table_build(be, &s, 1, 1, 8, ENT_I8, &t), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "activations in i8"));
    // the CPU backends compute in f32: bf16 is refused naming the backend and the key
    const char *cpus[] = {"cpu", "cpu-guarded"};
    for (int i = 0; i < 2; i++) {
        ent_backend_opts bf16 = {.precision = ENT_PRECISION_BF16};
        ent_backend_t *other = NULL;
        assert_int_equal(ent_backend_new(cpus[i], &bf16, &other), ENT_ERR_USAGE);
        assert_null(other);
        assert_non_null(strstr(ent_last_error(), "system.precision = bf16"));
        assert_non_null(strstr(ent_last_error(), cpus[i]));
        ent_backend_opts f32 = {.precision = ENT_PRECISION_F32};
        assert_int_equal(ent_backend_new(cpus[i], &f32, &other), ENT_OK);
        assert_int_equal(other->act_dtype, ENT_F32);
        assert_int_equal(other->param_dtype, ENT_F32);
        ent_backend_free(&other);
    }
    ent_model_t *m = NULL;
    assert_int_equal(ent_model_new(be, &s, NULL, 1, 8, &m), ENT_OK);
    // f32 parameters are their own masters: nothing to cast
    assert_ptr_equal(ent_model_compute_params(m), ent_model_arena(m, ENT_ARENA_PARAMS));
    assert_int_equal(ent_model_params_changed(m), ENT_OK);
    ent_model_free(&m);
}

// A llama: RMSNorm, RoPE, SwiGLU and grouped-query attention (4 heads
// sharing 2 KV heads), lm_head of its own; then tied, with multi-query
// attention (one KV head).
static void test_llama_gradient_check(void **state) {
    (void)state;
    test_rng_reset(test_seed() ^ 0x12);
    ent_model_shape s = tiny_llama(2, 4, 2, 16, 8, 24, 0);
    gradient_check(&s);
    s = tiny_llama(1, 4, 1, 16, 8, 32, 1);
    gradient_check(&s);
}

// A llama's table: Hugging Face's names and (out, in) shapes, Megatron's
// splits (q, k, v, gate, up by output features: rows; o and down by input
// features: columns), K and V replicated when TP does not divide the KV
// heads, lm_head only when untied; the parameter count is the table's.
static void test_llama_table(void **state) {
    (void)state;
    ent_model_shape s = tiny_llama(3, 8, 2, 64, 32, 96, 0);
    ent_param_table t;
    assert_int_equal(ent_param_table_build(&s, 2, &t), ENT_OK);
    assert_int_equal(t.nrows, 1 + 3 * 9 + 2);
    struct {
        const char *name;
        int64_t d0, d1;
        ent_split split;
    } want[] = {
        {"model.embed_tokens.weight", 320, 64, ENT_SPLIT_NONE},
        {"model.layers.2.input_layernorm.weight", 64, 1, ENT_SPLIT_NONE},
        {"model.layers.2.self_attn.q_proj.weight", 64, 64, ENT_SPLIT_ROWS},
        {"model.layers.2.self_attn.k_proj.weight", 16, 64, ENT_SPLIT_ROWS},
        {"model.layers.2.self_attn.v_proj.weight", 16, 64, ENT_SPLIT_ROWS},
        {"model.layers.2.self_attn.o_proj.weight", 64, 64, ENT_SPLIT_COLS},
        {"model.layers.2.post_attention_layernorm.weight", 64, 1, ENT_SPLIT_NONE},
        {"model.layers.2.mlp.gate_proj.weight", 96, 64, ENT_SPLIT_ROWS},
        {"model.layers.2.mlp.up_proj.weight", 96, 64, ENT_SPLIT_ROWS},
        {"model.layers.2.mlp.down_proj.weight", 64, 96, ENT_SPLIT_COLS},
        {"model.norm.weight", 64, 1, ENT_SPLIT_NONE},
        {"lm_head.weight", 320, 64, ENT_SPLIT_NONE},
    };
    size_t count = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const ent_param_row *r = ent_param_table_find(&t, want[i].name);
        if (r == NULL) fail_msg("no row %s", want[i].name);
        assert_int_equal(r->shape[0], want[i].d0);
        assert_int_equal(r->shape[1], want[i].d1);
        assert_int_equal(r->split, want[i].split);
        assert_int_equal(r->decay, r->ndim == 2);
    }
    for (int i = 0; i < t.nrows; i++) count += live_numel(&s, &t.rows[i]) * (t.rows[i].split == ENT_SPLIT_NONE ? 1 : 2);
    assert_int_equal(count, ent_model_shape_num_params(&s));
    assert_null(ent_param_table_find(&t, "model.layers.0.self_attn.q_proj.bias"));
    ent_param_table_free(&t);
    // TP = 4 does not divide 2 KV heads: K and V are replicated; tied: no lm_head
    s.tie_embeddings = 1;
    assert_int_equal(ent_param_table_build(&s, 4, &t), ENT_OK);
    assert_int_equal(ent_param_table_find(&t, "model.layers.0.self_attn.k_proj.weight")->split,
                     ENT_SPLIT_NONE);
    assert_int_equal(ent_param_table_find(&t, "model.layers.0.self_attn.q_proj.weight")->local_shape[0], 16);
    assert_null(ent_param_table_find(&t, "lm_head.weight"));
    ent_param_table_free(&t);
    // an MLP width TP does not divide is refused
    s.ffn_hidden = 90;
    assert_int_equal(ent_param_table_build(&s, 4, &t), ENT_ERR_USAGE);
    ent_clear_error();
}

// A llama learns: its loss at initialisation is near ln(vocab) and it
// overfits one batch; the guarded backend trains it bit for bit as the cpu
// backend does (nothing touches its memory from outside).
static void test_llama_trains(void **state) {
    (void)state;
    test_rng_reset(test_seed() ^ 0x13);
    ent_model_shape s = tiny_llama(2, 4, 2, 64, 32, 128, 0);
    int B = 4, T = s.context;
    int32_t tok[4 * 32], tgt[4 * 32];
    random_tokens(tok, (size_t)B * T, s.vocab);
    random_tokens(tgt, (size_t)B * T, s.vocab);
    ent_model_t *m = new_model(&s, B, test_seed());
    double loss = loss_of(m, tok, tgt, B, T), expect = log((double)s.vocab);
    if (getenv("ENT_TEST_VERBOSE")) fprintf(stderr, "  llama loss at init %.4f, ln(V) %.4f\n", loss, expect);
    assert_true(fabs(loss - expect) / expect < 0.02);
    double losses[600];
    train_on_batch(m, tok, tgt, B, T, 600, 3e-3f, losses);
    int steps = 0;
    while (steps < 600 && losses[steps] >= 0.05) steps++;
    if (getenv("ENT_TEST_VERBOSE")) fprintf(stderr, "  llama below 0.05 after %d steps\n", steps);
    if (steps == 600) fail_msg("llama loss %.4f after 600 steps on one batch", losses[599]);
    ent_model_free(&m);

    ent_backend_t *guarded = NULL;
    assert_int_equal(ent_backend_new("cpu-guarded", NULL, &guarded), ENT_OK);
    double l2[2][4];
    size_t total = 0;
    float *on_cpu = trained_params(be, &s, 2, 5, tok, tgt, 4, l2[0], &total);
    float *on_guarded = trained_params(guarded, &s, 2, 5, tok, tgt, 4, l2[1], &total);
    assert_memory_equal(l2[0], l2[1], sizeof l2[0]);
    assert_memory_equal(on_cpu, on_guarded, sizeof(float) * total);
    free(on_cpu);
    free(on_guarded);
    ent_backend_free(&guarded);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parameter_table), cmocka_unit_test(test_gradient_check),
        cmocka_unit_test(test_initial_loss),    cmocka_unit_test(test_overfit_one_batch),
        cmocka_unit_test(test_deterministic),   cmocka_unit_test(test_initialisation),
        cmocka_unit_test(test_tensor_parallel_layout), cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_guarded_backend), cmocka_unit_test(test_activation_table),
        cmocka_unit_test(test_llama_gradient_check), cmocka_unit_test(test_llama_table),
        cmocka_unit_test(test_llama_trains),
    };
    return cmocka_run_group_tests_name("model", tests, setup, teardown);
}
