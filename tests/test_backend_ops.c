// test_backend_ops.c: every op of a backend against the cpu backend.
//
// test_backend_ops NAME... runs each named backend (all this build knows
// other than cpu when none is named) through every op of struct
// ent_backend_i, on fresh seeded random inputs (ENT_TEST_SEED=... repeats a
// run), and compares what it computes with the cpu backend, the reference,
// given the same inputs: error = max |got - want| / max |want| per output,
// within the backend's tolerance for the op (matrix products on TF32
// hardware get more room than f32 paths). Besides the values it checks the
// interface's semantics: backward ops accumulate into gradients that start
// non-zero (softmax_xent_backward overwrites), probs may alias logits and
// dlogits probs, padding columns get 0, targets NULL leaves losses alone,
// adamw with a separate f32 master updates both copies; and that the
// gradient reductions and sum_squares give the same bits when run twice
// (data-parallel replicas must agree bit for bit).
//
// --precision bf16 runs the backend under test in bf16 (where it has it: the
// cuda backends): activations and parameters in compute go to it as bf16
// (their reference gets the same values, rounded to bf16 first) and come
// back widened; every tolerance is then at least 1e-2, the bound for bf16;
// AdamW's params are checked to be their master rounded, bit for bit, and
// cast against the host's rounding.
//
// Exit 0: all passed; 1: a mismatch (each printed); 77: a named backend
// cannot run here (no GPU visible, or not in this build), with the reason.
// test_backend_ops --available NAME only creates the backend: 0 when it can
// run here, else 77 with the reason (the GPU scripts' skip test).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ent_kernels.h"
#include "kernel_math.h"
#include "ref.h"
#ifdef ENT_TEST_CUDA_LIBRARY
#include "cuda/cuda_backend.h" // ent_cuda_lt_version
#endif

typedef struct {
    const char *name;
    double f32;    // element-wise and row-wise f32 ops
    double matmul; // ops whose FLOPs are matrix products (TF32 on a GPU)
    double attn_backward; // attention's backward: probabilities recomputed, other order
    double sumsq;  // sum_squares, double accumulation in another order
    int llama;     // 1: the backend has the Llama family's ops, and lacking one is a failure
} tolerances;

static const tolerances known[] = {
    {"cpu-guarded", 1e-6, 1e-6, 1e-6, 1e-14, 1},
    {"cuda", 1e-5, 1e-2, 1e-4, 1e-12, 1},
    // the cuda kernels on the host (tests/cuda_emu): cuda's bounds, the CPU's matrix products
    {"cuda-emulated", 1e-5, 1e-6, 1e-4, 1e-12, 1},
};
static const tolerances unknown = {"(other)", 1e-5, 1e-2, 1e-4, 1e-12, 0};

// How the program makes a backend: ent_backend_new, or in the build against
// the CUDA emulator (test_backend_ops_emulated) its constructor, which also
// knows "cuda-emulated".
#ifdef ENT_CUDA_EMULATOR
ent_status ent_emu_backend_new(const char *name, const ent_backend_opts *opts, ent_backend_t **out);
#define backend_new ent_emu_backend_new
#else
#define backend_new ent_backend_new
#endif

static ent_backend_t *B[2]; // B[0] the reference (cpu), B[1] the backend under test
static const tolerances *tol;
static int failures, checks;
static ent_precision precision = ENT_PRECISION_F32; // of B[1] (--precision)
static int bf16;                                    // B[1] computes in bf16
// the check that came closest to its limit without failing (err / limit)
static double closest;
static char closest_at[128];
#define BF16_TOL 1e-2

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        printf("FAIL %s: ", B[1]->iface->name);                                                   \
        printf(__VA_ARGS__);                                                                       \
        printf("\n");                                                                              \
        failures++;                                                                                \
    } while (0)

#define OK(call)                                                                                   \
    do {                                                                                           \
        ent_status st__ = (call);                                                                  \
        if (st__ != ENT_OK) {                                                                      \
            printf("FAIL %s: %s: %s\n", B[1]->iface->name, #call, ent_last_error());               \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

// ---------------------------------------------------------------------------
// a host array with a copy on each backend

// act: an activation or a parameter in compute, which B[1] keeps in its
// act_dtype (n elements); else plain bytes, the same on both (f32
// gradients, statistics, token ids)
typedef struct {
    void *d[2];
    size_t bytes[2];
    size_t n;
    int act;
} twin;

static twin tw_alloc(size_t bytes0, size_t bytes1) {
    twin t = {{NULL, NULL}, {bytes0, bytes1}, 0, 0};
    for (int k = 0; k < 2; k++) {
        t.d[k] = B[k]->iface->alloc(B[k], t.bytes[k]);
        if (t.d[k] == NULL) {
            printf("FAIL: %s: out of memory for %zu bytes\n", B[k]->iface->name, t.bytes[k]);
            exit(1);
        }
    }
    return t;
}

static twin tw(const void *host, size_t bytes) {
    twin t = tw_alloc(bytes, bytes);
    for (int k = 0; k < 2 && host != NULL; k++)
        OK(B[k]->iface->to_device(B[k], t.d[k], host, bytes));
    return t;
}

// n activations from host (NULL: zeros): in bf16 mode rounded to bf16 for
// both sides, B[1] given the bf16 bits
static twin tw_act(const float *host, size_t n) {
    twin t = tw_alloc(sizeof(float) * n, (bf16 ? sizeof(uint16_t) : sizeof(float)) * n);
    t.n = n;
    t.act = 1;
    if (host == NULL) return t;
    if (!bf16) {
        for (int k = 0; k < 2; k++) OK(B[k]->iface->to_device(B[k], t.d[k], host, t.bytes[k]));
        return t;
    }
    uint16_t *h = malloc(sizeof(uint16_t) * (n ? n : 1));
    float *r = malloc(sizeof(float) * (n ? n : 1));
    if (h == NULL || r == NULL) exit(1);
    for (size_t i = 0; i < n; i++) h[i] = ent_k_f32_to_bf16(host[i]);
    OK(ent_dtype_to_f32(ENT_BF16, h, r, n));
    OK(B[0]->iface->to_device(B[0], t.d[0], r, t.bytes[0]));
    OK(B[1]->iface->to_device(B[1], t.d[1], h, t.bytes[1]));
    free(h);
    free(r);
    return t;
}

static void tw_free(twin *t) {
    for (int k = 0; k < 2; k++) B[k]->iface->free_mem(B[k], t->d[k]);
}

// a copy of side k's bytes
static void *host_of(const twin *t, int k) {
    void *h = malloc(t->bytes[k] ? t->bytes[k] : 1);
    if (h == NULL) exit(1);
    OK(B[k]->iface->to_host(B[k], h, t->d[k], t->bytes[k]));
    return h;
}

// side k as floats (an activation of B[1] in bf16 widened)
static float *floats_of(const twin *t, int k) {
    void *h = host_of(t, k);
    if (!(t->act && k == 1 && bf16)) return h;
    float *f = malloc(sizeof(float) * (t->n ? t->n : 1));
    if (f == NULL) exit(1);
    OK(ent_dtype_to_f32(ENT_BF16, h, f, t->n));
    free(h);
    return f;
}

#define F(t, k) ((float *)(t).d[k])
#define I(t, k) ((int32_t *)(t).d[k])

static float *randn(size_t n, double std) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    if (x == NULL) exit(1);
    fill_normal(x, n, std);
    return x;
}

static twin tw_randn(size_t n, double std) {
    float *h = randn(n, std);
    twin t = tw(h, sizeof(float) * n);
    free(h);
    return t;
}

static twin tw_arandn(size_t n, double std) {
    float *h = randn(n, std);
    twin t = tw_act(h, n);
    free(h);
    return t;
}

// the backend's copy against the reference's: max |got - want| / max |want|
static void compare(const char *what, const twin *t, size_t n, double limit) {
    float *want = floats_of(t, 0), *got = floats_of(t, 1);
    if (bf16 && limit < BF16_TOL) limit = BF16_TOL;
    double maxdiff = 0.0, scale = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double w = want[i], g = got[i];
        if (isnan(w) && isnan(g)) continue;
        double d = isnan(w) || isnan(g) ? INFINITY : fabs(g - w);
        if (d > maxdiff) maxdiff = d, worst = i;
        if (fabs(w) > scale) scale = fabs(w);
    }
    double err = maxdiff / (scale > 0.0 ? scale : 1.0);
    checks++;
    if (err <= limit && limit > 0.0 && err / limit > closest) {
        closest = err / limit;
        snprintf(closest_at, sizeof closest_at, "%s: %.3g of %.3g", what, err, limit);
    }
    if (!(err <= limit))
        FAIL("%s: error %.3g > %.3g (at %zu: %.9g, want %.9g)", what, err, limit, worst,
             got[worst], want[worst]);
    free(want);
    free(got);
}

// two copies on backend k hold the same bits
static void same_bits_on(int k, const char *what, const twin *a, const twin *b) {
    void *x = host_of(a, k), *y = host_of(b, k);
    checks++;
    if (a->bytes[k] != b->bytes[k] || memcmp(x, y, a->bytes[k]) != 0)
        FAIL("%s: different bits%s", what, k == 0 ? " on the reference (cpu)" : "");
    free(x);
    free(y);
}

// two copies on the backend under test hold the same bits (two runs agree)
static void same_bits(const char *what, const twin *a, const twin *b) {
    same_bits_on(1, what, a, b);
}

// a twin of t's kind holding side k's bytes on side k (and on the other
// side too where both sides have the same layout)
static twin tw_copy_of(const twin *t, int k) {
    void *h = host_of(t, k);
    twin c = tw_alloc(t->bytes[0], t->bytes[1]);
    c.n = t->n;
    c.act = t->act;
    for (int j = 0; j < 2; j++)
        if (j == k || c.bytes[j] == c.bytes[k])
            OK(B[j]->iface->to_device(B[j], c.d[j], h, c.bytes[k]));
    free(h);
    return c;
}

// ---------------------------------------------------------------------------
// the ops

static void test_encoder(void) {
    int Bn = 3, T = 37, C = 96, Vp = 64; // B*T > Vp: tokens repeat
    int32_t tokens[3 * 37];
    for (int i = 0; i < Bn * T; i++) tokens[i] = (int32_t)test_rand_int(0, Vp - 1);
    twin tok = tw(tokens, sizeof tokens), wte = tw_arandn((size_t)Vp * C, 1.0),
         wpe = tw_arandn((size_t)T * C, 1.0), out = tw_act(NULL, (size_t)Bn * T * C);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->encoder_forward(B[k], F(out, k), I(tok, k), F(wte, k), F(wpe, k), Bn, T, C));
    compare("encoder_forward", &out, (size_t)Bn * T * C, tol->f32);
    twin dout = tw_arandn((size_t)Bn * T * C, 1.0), dwte = tw_randn((size_t)Vp * C, 1.0),
         dwpe = tw_randn((size_t)T * C, 1.0);
    twin dwte2 = tw_copy_of(&dwte, 1), dwpe2 = tw_copy_of(&dwpe, 1);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->encoder_backward(B[k], F(dwte, k), F(dwpe, k), F(dout, k), I(tok, k), Bn,
                                         T, C));
    OK(B[1]->iface->encoder_backward(B[1], F(dwte2, 1), F(dwpe2, 1), F(dout, 1), I(tok, 1), Bn, T,
                                     C));
    compare("encoder_backward dwte (accumulated)", &dwte, (size_t)Vp * C, tol->f32);
    compare("encoder_backward dwpe (accumulated)", &dwpe, (size_t)T * C, tol->f32);
    same_bits("encoder_backward dwte", &dwte, &dwte2);
    same_bits("encoder_backward dwpe", &dwpe, &dwpe2);
    twin *all[] = {&tok, &wte, &wpe, &out, &dout, &dwte, &dwpe, &dwte2, &dwpe2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

static void test_layernorm(int N, int C) {
    char what[96];
    twin inp = tw_arandn((size_t)N * C, 2.0), w = tw_arandn(C, 1.0), b = tw_arandn(C, 1.0);
    twin out = tw_act(NULL, (size_t)N * C), mean = tw(NULL, sizeof(float) * N),
         rstd = tw(NULL, sizeof(float) * N);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->layernorm_forward(B[k], F(out, k), F(mean, k), F(rstd, k), F(inp, k),
                                          F(w, k), F(b, k), N, C));
    snprintf(what, sizeof what, "layernorm_forward (%d x %d)", N, C);
    compare(what, &out, (size_t)N * C, tol->f32);
    compare("layernorm_forward mean", &mean, N, tol->f32);
    compare("layernorm_forward rstd", &rstd, N, tol->f32);
    twin dout = tw_arandn((size_t)N * C, 1.0), dinp = tw_arandn((size_t)N * C, 1.0),
         dw = tw_randn(C, 1.0), db = tw_randn(C, 1.0);
    twin dw2 = tw_copy_of(&dw, 1), db2 = tw_copy_of(&db, 1), dinp2 = tw_copy_of(&dinp, 1);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->layernorm_backward(B[k], F(dinp, k), F(dw, k), F(db, k), F(dout, k),
                                           F(inp, k), F(w, k), F(mean, k), F(rstd, k), N, C));
    OK(B[1]->iface->layernorm_backward(B[1], F(dinp2, 1), F(dw2, 1), F(db2, 1), F(dout, 1),
                                       F(inp, 1), F(w, 1), F(mean, 1), F(rstd, 1), N, C));
    snprintf(what, sizeof what, "layernorm_backward (%d x %d) dinp (accumulated)", N, C);
    compare(what, &dinp, (size_t)N * C, tol->f32);
    compare("layernorm_backward dweight (accumulated)", &dw, C, tol->f32);
    compare("layernorm_backward dbias (accumulated)", &db, C, tol->f32);
    same_bits("layernorm_backward dweight", &dw, &dw2);
    same_bits("layernorm_backward dbias", &db, &db2);
    same_bits("layernorm_backward dinp", &dinp, &dinp2);
    twin *all[] = {&inp, &w, &b, &out, &mean, &rstd, &dout, &dinp, &dw, &db, &dw2, &db2, &dinp2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

static void test_matmul(int N, int C, int OC, int with_bias) {
    char what[96];
    twin inp = tw_arandn((size_t)N * C, 1.0), w = tw_arandn((size_t)OC * C, 0.2),
         b = tw_arandn(OC, 1.0), out = tw_act(NULL, (size_t)N * OC);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->matmul_forward(B[k], F(out, k), F(inp, k), F(w, k),
                                       with_bias ? F(b, k) : NULL, N, C, OC));
    snprintf(what, sizeof what, "matmul_forward (%d x %d x %d%s)", N, C, OC,
             with_bias ? ", bias" : "");
    compare(what, &out, (size_t)N * OC, tol->matmul);
    // fused with the GELU after it (optional; the cuda backends have it): the
    // reference is the two ops
    if (B[1]->iface->matmul_gelu_forward != NULL) {
        size_t n = (size_t)N * OC;
        twin pre = tw_act(NULL, n), act = tw_act(NULL, n);
        OK(B[0]->iface->matmul_forward(B[0], F(pre, 0), F(inp, 0), F(w, 0),
                                       with_bias ? F(b, 0) : NULL, N, C, OC));
        OK(B[0]->iface->gelu_forward(B[0], F(act, 0), F(pre, 0), n));
        OK(B[1]->iface->matmul_gelu_forward(B[1], F(pre, 1), F(act, 1), F(inp, 1), F(w, 1),
                                            with_bias ? F(b, 1) : NULL, N, C, OC));
        snprintf(what, sizeof what, "matmul_gelu_forward (%d x %d x %d%s) pre", N, C, OC,
                 with_bias ? ", bias" : "");
        compare(what, &pre, n, tol->matmul);
        compare("matmul_gelu_forward out", &act, n, tol->matmul);
        tw_free(&pre);
        tw_free(&act);
    } else if (strncmp(B[1]->iface->name, "cuda", 4) == 0) {
        FAIL("matmul_gelu_forward missing (GELU as the product's epilogue)");
    }
    twin dout = tw_arandn((size_t)N * OC, 1.0), dinp = tw_arandn((size_t)N * C, 1.0),
         dw = tw_randn((size_t)OC * C, 1.0), db = tw_randn(OC, 1.0);
    twin dw2 = tw_copy_of(&dw, 1), db2 = tw_copy_of(&db, 1), dinp2 = tw_copy_of(&dinp, 1);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->matmul_backward(B[k], F(dinp, k), F(dw, k), with_bias ? F(db, k) : NULL,
                                        F(dout, k), F(inp, k), F(w, k), N, C, OC));
    OK(B[1]->iface->matmul_backward(B[1], F(dinp2, 1), F(dw2, 1), with_bias ? F(db2, 1) : NULL,
                                    F(dout, 1), F(inp, 1), F(w, 1), N, C, OC));
    snprintf(what, sizeof what, "matmul_backward (%d x %d x %d) dinp (accumulated)", N, C, OC);
    compare(what, &dinp, (size_t)N * C, tol->matmul);
    compare("matmul_backward dweight (accumulated)", &dw, (size_t)OC * C, tol->matmul);
    // dbias is a plain f32 column sum; untouched when NULL
    compare(with_bias ? "matmul_backward dbias (accumulated)" : "matmul_backward dbias NULL",
            &db, OC, with_bias ? tol->f32 : 0.0);
    same_bits("matmul_backward dinp", &dinp, &dinp2);
    same_bits("matmul_backward dweight", &dw, &dw2);
    same_bits("matmul_backward dbias", &db, &db2);
    twin *all[] = {&inp, &w, &b, &out, &dout, &dinp, &dw, &db, &dw2, &db2, &dinp2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

static void test_attention(int Bn, int T, int C, int NH) {
    char what[96];
    size_t nqkv = (size_t)Bn * T * 3 * C, nout = (size_t)Bn * T * C;
    twin qkv = tw_arandn(nqkv, 1.0), out = tw_act(NULL, nout);
    void *att[2], *scratch[2], *att2 = NULL;
    for (int k = 0; k < 2; k++) {
        size_t bytes = B[k]->iface->attention_state_bytes(B[k], Bn, T, NH);
        att[k] = B[k]->iface->alloc(B[k], bytes);
        scratch[k] = B[k]->iface->alloc(B[k], bytes);
        if (k == 1) att2 = B[k]->iface->alloc(B[k], bytes);
        if (att[k] == NULL || scratch[k] == NULL || (k == 1 && att2 == NULL)) exit(1);
        OK(B[k]->iface->attention_forward(B[k], F(out, k), att[k], F(qkv, k), Bn, T, C, NH));
    }
    snprintf(what, sizeof what, "attention_forward (B %d, T %d, C %d, NH %d)", Bn, T, C, NH);
    compare(what, &out, nout, tol->f32);
    twin dout = tw_arandn(nout, 1.0), dqkv = tw_arandn(nqkv, 1.0);
    twin dqkv2 = tw_copy_of(&dqkv, 1);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->attention_backward(B[k], F(dqkv, k), scratch[k], F(dout, k), F(qkv, k),
                                           att[k], Bn, T, C, NH));
    OK(B[1]->iface->attention_forward(B[1], F(out, 1), att2, F(qkv, 1), Bn, T, C, NH));
    OK(B[1]->iface->attention_backward(B[1], F(dqkv2, 1), scratch[1], F(dout, 1), F(qkv, 1),
                                       att2, Bn, T, C, NH));
    snprintf(what, sizeof what, "attention_backward (B %d, T %d, C %d, NH %d) dqkv (accumulated)",
             Bn, T, C, NH);
    compare(what, &dqkv, nqkv, tol->attn_backward);
    same_bits("attention_backward dqkv", &dqkv, &dqkv2);
    for (int k = 0; k < 2; k++) {
        B[k]->iface->free_mem(B[k], att[k]);
        B[k]->iface->free_mem(B[k], scratch[k]);
    }
    B[1]->iface->free_mem(B[1], att2);
    twin *all[] = {&qkv, &out, &dout, &dqkv, &dqkv2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

// The Llama family's ops (ent_backend_check_llama): a backend known to have
// them fails without them; another says so, and the rest of its ops still run.
static void test_llama_ops(int Bn, int T, int NH, int KV, int hd, int group, int phase) {
    if (ent_backend_check_llama(B[1]) != ENT_OK) {
        if (tol->llama) FAIL("the Llama ops: %s", ent_last_error());
        else printf("SKIP %s: the Llama ops: %s\n", B[1]->iface->name, ent_last_error());
        ent_clear_error();
        return;
    }
    char what[128];
    int N = Bn * T, C = NH * hd;
    // rmsnorm
    twin inp = tw_arandn((size_t)N * C, 2.0), w = tw_arandn(C, 1.0);
    twin out = tw_act(NULL, (size_t)N * C), rstd = tw(NULL, sizeof(float) * N);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->rmsnorm_forward(B[k], F(out, k), F(rstd, k), F(inp, k), F(w, k), 1e-5f,
                                        N, C));
    snprintf(what, sizeof what, "rmsnorm_forward (%d x %d)", N, C);
    compare(what, &out, (size_t)N * C, tol->f32);
    compare("rmsnorm_forward rstd", &rstd, N, tol->f32);
    twin dout = tw_arandn((size_t)N * C, 1.0), dinp = tw_arandn((size_t)N * C, 1.0),
         dw = tw_randn(C, 1.0);
    twin dw2 = tw_copy_of(&dw, 1), dinp2 = tw_copy_of(&dinp, 1);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->rmsnorm_backward(B[k], F(dinp, k), F(dw, k), F(dout, k), F(inp, k),
                                         F(w, k), F(rstd, k), N, C));
    OK(B[1]->iface->rmsnorm_backward(B[1], F(dinp2, 1), F(dw2, 1), F(dout, 1), F(inp, 1),
                                     F(w, 1), F(rstd, 1), N, C));
    compare("rmsnorm_backward dinp (accumulated)", &dinp, (size_t)N * C, tol->f32);
    compare("rmsnorm_backward dweight (accumulated)", &dw, C, tol->f32);
    same_bits("rmsnorm_backward dinp", &dinp, &dinp2);
    same_bits("rmsnorm_backward dweight", &dw, &dw2);
    // rope, in place, there and back
    ent_rope rope = {.theta = 10000.0, .scaling = ENT_ROPE_LLAMA3, .factor = 8.0,
                     .low_freq_factor = 1.0, .high_freq_factor = 4.0, .original_max = 16};
    float *ct = malloc(sizeof(float) * (size_t)T * hd / 2), *st = malloc(sizeof(float) * (size_t)T * hd / 2);
    if (ct == NULL || st == NULL) exit(1);
    ent_rope_table(&rope, hd, T, ct, st);
    twin cos_t = tw(ct, sizeof(float) * (size_t)T * hd / 2), sin_t = tw(st, sizeof(float) * (size_t)T * hd / 2);
    free(ct);
    free(st);
    twin x = tw_arandn((size_t)N * C, 1.0);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->rope_forward(B[k], F(x, k), F(cos_t, k), F(sin_t, k), Bn, T, NH, hd));
    compare("rope_forward (in place)", &x, (size_t)N * C, tol->f32);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->rope_backward(B[k], F(x, k), F(cos_t, k), F(sin_t, k), Bn, T, NH, hd));
    compare("rope_backward (in place)", &x, (size_t)N * C, tol->f32);
    // swiglu
    size_t n = (size_t)N * C;
    twin gate = tw_arandn(n, 3.0), up = tw_arandn(n, 1.0), dgate = tw_arandn(n, 1.0),
         dup = tw_arandn(n, 1.0);
    for (int k = 0; k < 2; k++) {
        OK(B[k]->iface->swiglu_forward(B[k], F(out, k), F(gate, k), F(up, k), n));
        OK(B[k]->iface->swiglu_backward(B[k], F(dgate, k), F(dup, k), F(dout, k), F(gate, k),
                                        F(up, k), n));
    }
    compare("swiglu_forward", &out, n, tol->f32);
    compare("swiglu_backward dgate (accumulated)", &dgate, n, tol->f32);
    compare("swiglu_backward dup (accumulated)", &dup, n, tol->f32);
    // grouped-query attention
    ent_gqa_shape s = {.B = Bn, .T = T, .NH = NH, .kv_heads = KV, .hd = hd, .group = group,
                       .phase = phase};
    size_t nkv = (size_t)N * KV * hd;
    twin q = tw_arandn(n, 1.0), kk = tw_arandn(nkv, 1.0), v = tw_arandn(nkv, 1.0);
    twin dq = tw_arandn(n, 1.0), dk = tw_arandn(nkv, 1.0), dv = tw_arandn(nkv, 1.0);
    twin dk2 = tw_copy_of(&dk, 1), dv2 = tw_copy_of(&dv, 1), dq2 = tw_copy_of(&dq, 1);
    void *att[2], *scratch[2];
    for (int k = 0; k < 2; k++) {
        size_t bytes = B[k]->iface->attention_state_bytes(B[k], Bn, T, NH);
        att[k] = B[k]->iface->alloc(B[k], bytes);
        scratch[k] = B[k]->iface->alloc(B[k], bytes);
        if (att[k] == NULL || scratch[k] == NULL) exit(1);
        OK(B[k]->iface->gqa_forward(B[k], F(out, k), att[k], F(q, k), F(kk, k), F(v, k), s));
        OK(B[k]->iface->gqa_backward(B[k], F(dq, k), F(dk, k), F(dv, k), scratch[k], F(dout, k),
                                     F(q, k), F(kk, k), F(v, k), att[k], s));
    }
    OK(B[1]->iface->gqa_backward(B[1], F(dq2, 1), F(dk2, 1), F(dv2, 1), scratch[1], F(dout, 1),
                                 F(q, 1), F(kk, 1), F(v, 1), att[1], s));
    snprintf(what, sizeof what, "gqa_forward (B %d, T %d, NH %d, KV %d, hd %d, phase %d)", Bn, T,
             NH, KV, hd, phase);
    compare(what, &out, n, tol->f32);
    compare("gqa_backward dq (accumulated)", &dq, n, tol->attn_backward);
    compare("gqa_backward dk (accumulated)", &dk, nkv, tol->attn_backward);
    compare("gqa_backward dv (accumulated)", &dv, nkv, tol->attn_backward);
    same_bits("gqa_backward dq", &dq, &dq2);
    same_bits("gqa_backward dk", &dk, &dk2);
    same_bits("gqa_backward dv", &dv, &dv2);
    for (int k = 0; k < 2; k++) {
        B[k]->iface->free_mem(B[k], att[k]);
        B[k]->iface->free_mem(B[k], scratch[k]);
    }
    twin *all[] = {&inp, &w, &out, &rstd, &dout, &dinp, &dw, &dw2, &dinp2, &cos_t, &sin_t, &x, &gate,
                   &up, &dgate, &dup, &q, &kk, &v, &dq, &dk, &dv, &dk2, &dv2, &dq2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

// A grouped-query shape whose query heads need more KV heads than given is
// refused with ENT_ERR_USAGE by every backend, before anything is read.
static void test_gqa_rejects(void) {
    if (ent_backend_check_llama(B[1]) != ENT_OK) {
        ent_clear_error();
        return;
    }
    ent_gqa_shape bad[] = {
        {.B = 1, .T = 4, .NH = 4, .kv_heads = 1, .hd = 8, .group = 2, .phase = 0},
        {.B = 1, .T = 4, .NH = 2, .kv_heads = 1, .hd = 8, .group = 2, .phase = 1},
        {.B = 1, .T = 4, .NH = 2, .kv_heads = 2, .hd = 8, .group = 2, .phase = 2},
        {.B = 1, .T = 4, .NH = 2, .kv_heads = 2, .hd = 0, .group = 1, .phase = 0},
    };
    twin buf = tw_randn(64, 1.0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (int k = 0; k < 2; k++) {
            ent_status st = B[k]->iface->gqa_forward(B[k], F(buf, k), F(buf, k), F(buf, k),
                                                     F(buf, k), F(buf, k), bad[i]);
            ent_status st2 = B[k]->iface->gqa_backward(B[k], F(buf, k), F(buf, k), F(buf, k),
                                                       F(buf, k), F(buf, k), F(buf, k), F(buf, k),
                                                       F(buf, k), F(buf, k), bad[i]);
            checks++;
            if (st != ENT_ERR_USAGE || st2 != ENT_ERR_USAGE)
                FAIL("gqa with %d query heads, %d KV heads, group %d, phase %d, hd %d on %s: "
                     "status %d and %d, want ENT_ERR_USAGE", bad[i].NH, bad[i].kv_heads,
                     bad[i].group, bad[i].phase, bad[i].hd, B[k]->iface->name, st, st2);
            ent_clear_error();
        }
    }
    tw_free(&buf);
}

static void test_elementwise(void) {
    size_t n = 10007;
    twin inp = tw_arandn(n, 3.0), out = tw_act(NULL, n);
    for (int k = 0; k < 2; k++) OK(B[k]->iface->gelu_forward(B[k], F(out, k), F(inp, k), n));
    compare("gelu_forward", &out, n, tol->f32);
    twin dout = tw_arandn(n, 1.0), dinp = tw_arandn(n, 1.0);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->gelu_backward(B[k], F(dinp, k), F(inp, k), F(dout, k), n));
    compare("gelu_backward (accumulated)", &dinp, n, tol->f32);
    twin b = tw_arandn(n, 1.0), da = tw_arandn(n, 1.0), db = tw_arandn(n, 1.0);
    for (int k = 0; k < 2; k++) {
        OK(B[k]->iface->residual_forward(B[k], F(out, k), F(inp, k), F(b, k), n));
        OK(B[k]->iface->residual_backward(B[k], F(da, k), F(db, k), F(dout, k), n));
    }
    compare("residual_forward", &out, n, tol->f32);
    compare("residual_backward da (accumulated)", &da, n, tol->f32);
    compare("residual_backward db (accumulated)", &db, n, tol->f32);
    twin *all[] = {&inp, &out, &dout, &dinp, &b, &da, &db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

// The residual fused with the norm after it: on every backend, the same bits
// as residual_forward then the norm on that backend; against the reference
// within the f32 tolerance. rms: RMSNorm's (Llama), else layernorm's.
static void test_residual_norm(int N, int C, int rms) {
    const struct ent_backend_i *i1 = B[1]->iface;
    const char *op = rms ? "residual_rmsnorm_forward" : "residual_layernorm_forward";
    if (rms ? i1->residual_rmsnorm_forward == NULL : i1->residual_layernorm_forward == NULL) {
        printf("note: %s has no %s (optional): only the reference's is checked\n", i1->name, op);
    }
    size_t n = (size_t)N * C;
    twin a = tw_arandn(n, 2.0), b = tw_arandn(n, 1.0), w = tw_arandn(C, 1.0), bias = tw_arandn(C, 1.0);
    twin res = tw_act(NULL, n), out = tw_act(NULL, n),
         mean = tw(NULL, sizeof(float) * N), rstd = tw(NULL, sizeof(float) * N);
    twin res2 = tw_act(NULL, n), out2 = tw_act(NULL, n),
         mean2 = tw(NULL, sizeof(float) * N), rstd2 = tw(NULL, sizeof(float) * N);
    float eps = 1e-6f;
    for (int k = 0; k < 2; k++) {
        const struct ent_backend_i *i = B[k]->iface;
        if (rms ? i->residual_rmsnorm_forward == NULL : i->residual_layernorm_forward == NULL)
            continue;
        if (rms) {
            OK(i->residual_rmsnorm_forward(B[k], F(res, k), F(out, k), F(rstd, k), F(a, k), F(b, k),
                                           F(w, k), eps, N, C));
            OK(i->residual_forward(B[k], F(res2, k), F(a, k), F(b, k), n));
            OK(i->rmsnorm_forward(B[k], F(out2, k), F(rstd2, k), F(res2, k), F(w, k), eps, N, C));
        } else {
            OK(i->residual_layernorm_forward(B[k], F(res, k), F(out, k), F(mean, k), F(rstd, k),
                                             F(a, k), F(b, k), F(w, k), F(bias, k), N, C));
            OK(i->residual_forward(B[k], F(res2, k), F(a, k), F(b, k), n));
            OK(i->layernorm_forward(B[k], F(out2, k), F(mean2, k), F(rstd2, k), F(res2, k), F(w, k),
                                    F(bias, k), N, C));
            same_bits_on(k, "residual_layernorm_forward mean = residual, layernorm", &mean, &mean2);
        }
        char what[96];
        snprintf(what, sizeof what, "%s (%d x %d) = residual, norm: res", op, N, C);
        same_bits_on(k, what, &res, &res2);
        snprintf(what, sizeof what, "%s (%d x %d) = residual, norm: out", op, N, C);
        same_bits_on(k, what, &out, &out2);
        snprintf(what, sizeof what, "%s (%d x %d) = residual, norm: rstd", op, N, C);
        same_bits_on(k, what, &rstd, &rstd2);
        if (k == 1) {
            snprintf(what, sizeof what, "%s (%d x %d) out", op, N, C);
            compare(what, &out, n, tol->f32);
            compare("fused residual: res", &res, n, tol->f32);
            compare("fused residual: rstd", &rstd, N, tol->f32);
            if (!rms) compare("fused residual: mean", &mean, N, tol->f32);
        }
    }
    twin *all[] = {&a, &b, &w, &bias, &res, &out, &mean, &rstd, &res2, &out2, &mean2, &rstd2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

static void test_softmax_xent(void) {
    int N = 50, V = 1000, Vp = 1024;
    size_t n = (size_t)N * Vp;
    int32_t targets[50];
    for (int i = 0; i < N; i++) targets[i] = (int32_t)test_rand_int(0, V - 1);
    float *logits_h = randn(n, 4.0), *sentinel = malloc(sizeof(float) * N);
    if (sentinel == NULL) exit(1);
    for (int i = 0; i < N; i++) sentinel[i] = 12345.0f + (float)i;
    twin logits = tw_act(logits_h, n), probs = tw_act(NULL, n);
    twin tgt = tw(targets, sizeof targets), losses = tw(sentinel, sizeof(float) * N);
    // targets NULL: probs only, losses untouched
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->softmax_xent_forward(B[k], F(losses, k), F(probs, k), F(logits, k), NULL,
                                             N, V, Vp));
    compare("softmax_xent_forward probs (targets NULL)", &probs, n, tol->f32);
    float *l1 = host_of(&losses, 1);
    checks++;
    if (memcmp(l1, sentinel, sizeof(float) * N) != 0)
        FAIL("softmax_xent_forward with targets NULL wrote losses");
    free(l1);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->softmax_xent_forward(B[k], F(losses, k), F(probs, k), F(logits, k),
                                             I(tgt, k), N, V, Vp));
    compare("softmax_xent_forward losses", &losses, N, tol->f32);
    compare("softmax_xent_forward probs", &probs, n, tol->f32);
    // padding columns: exactly 0
    float *p1 = floats_of(&probs, 1);
    int bad = 0;
    for (int r = 0; r < N; r++)
        for (int i = V; i < Vp; i++) bad += p1[(size_t)r * Vp + i] != 0.0f;
    checks++;
    if (bad) FAIL("softmax_xent_forward: %d padding probabilities are not 0", bad);
    free(p1);
    // probs aliasing logits: in place, the same result
    twin inplace = tw_act(logits_h, n);
    for (int k = 0; k < 2; k++)
        OK(B[k]->iface->softmax_xent_forward(B[k], F(losses, k), F(inplace, k), F(inplace, k),
                                             I(tgt, k), N, V, Vp));
    compare("softmax_xent_forward probs aliasing logits", &inplace, n, tol->f32);
    compare("softmax_xent_forward losses (aliased)", &losses, N, tol->f32);
    // backward overwrites dlogits (garbage before), also in place over probs
    twin dlogits = tw_arandn(n, 100.0);
    for (int k = 0; k < 2; k++) {
        OK(B[k]->iface->softmax_xent_backward(B[k], F(dlogits, k), F(probs, k), I(tgt, k),
                                              1.0f / N, N, V, Vp));
        OK(B[k]->iface->softmax_xent_backward(B[k], F(inplace, k), F(inplace, k), I(tgt, k),
                                              0.5f, N, V, Vp));
    }
    compare("softmax_xent_backward (overwrites)", &dlogits, n, tol->f32);
    compare("softmax_xent_backward dlogits aliasing probs", &inplace, n, tol->f32);
    float *d1 = floats_of(&dlogits, 1);
    bad = 0;
    for (int r = 0; r < N; r++)
        for (int i = V; i < Vp; i++) bad += d1[(size_t)r * Vp + i] != 0.0f;
    checks++;
    if (bad) FAIL("softmax_xent_backward: %d padding gradients are not 0", bad);
    free(d1);
    free(logits_h);
    free(sentinel);
    twin *all[] = {&logits, &probs, &tgt, &losses, &inplace, &dlogits};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

static void test_adamw(void) {
    size_t n = 5003;
    float *w = randn(n, 1.0), *vh = randn(n, 1e-3);
    for (size_t i = 0; i < n; i++) vh[i] = vh[i] * vh[i];
    twin params = tw_act(w, n), master = tw(w, sizeof(float) * n);
    twin params2 = tw_act(w, n), grads = tw_randn(n, 0.1), m = tw_randn(n, 0.01),
         v = tw(vh, sizeof(float) * n), m2 = tw_copy_of(&m, 0), v2 = tw(vh, sizeof(float) * n);
    for (int k = 0; k < 2; k++) {
        // f32 params as their own master, then with a separate master copy
        OK(B[k]->iface->adamw_update(B[k], F(params, k), NULL, F(grads, k), F(m, k), F(v, k), n,
                                     3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.8f, 5));
        OK(B[k]->iface->adamw_update(B[k], F(params2, k), F(master, k), F(grads, k), F(m2, k),
                                     F(v2, k), n, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.8f, 5));
    }
    compare("adamw_update params (master NULL)", &params, n, tol->f32);
    compare("adamw_update m", &m, n, tol->f32);
    compare("adamw_update v", &v, n, tol->f32);
    compare("adamw_update master (separate)", &master, n, tol->f32);
    compare("adamw_update params (separate master)", &params2, n, tol->f32);
    if (bf16) {
        // bf16 params beside their master: its rounding, bit for bit
        uint16_t *p = host_of(&params2, 1);
        float *mh = host_of(&master, 1);
        size_t wrong = 0;
        for (size_t i = 0; i < n; i++) wrong += p[i] != ent_k_f32_to_bf16(mh[i]);
        checks++;
        if (wrong) FAIL("adamw_update: %zu bf16 params are not their master rounded", wrong);
        free(p);
        free(mh);
    } else {
        // f32 params: rounded to f32, they are the master's bits, and the same
        // as the update with master NULL
        same_bits("adamw_update params vs master", &params2, &master);
        same_bits("adamw_update master vs NULL master", &params2, &params);
    }
    free(w);
    free(vh);
    twin *all[] = {&params, &master, &params2, &grads, &m, &v, &m2, &v2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

// cast (optional; the cuda backends have it): f32 masters into the
// parameters in compute, rounded to nearest even (bf16) or copied (f32), bit
// for bit, infinities, NaN and overflow included
static void test_cast(void) {
    if (B[1]->iface->cast == NULL) {
        if (strncmp(B[1]->iface->name, "cuda", 4) == 0) FAIL("cast missing");
        return;
    }
    size_t n = 5003;
    float *m = randn(n, 3.0);
    m[0] = INFINITY;
    m[1] = -INFINITY;
    m[2] = NAN;
    m[3] = 3.4e38f; // past the largest bf16: infinity
    twin master = tw(m, sizeof(float) * n), p = tw_act(NULL, n);
    OK(B[1]->iface->cast(B[1], p.d[1], F(master, 1), n));
    void *got = host_of(&p, 1);
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) {
        if (bf16) {
            uint16_t g = ((uint16_t *)got)[i];
            wrong += i == 2 ? !isnan(ent_k_bf16_to_f32(g)) : g != ent_k_f32_to_bf16(m[i]);
        } else {
            float g = ((float *)got)[i];
            wrong += i == 2 ? !isnan(g) : memcmp(&g, &m[i], sizeof g) != 0;
        }
    }
    checks++;
    if (wrong) FAIL("cast: %zu values are not their f32 rounded to nearest even", wrong);
    free(got);
    free(m);
    tw_free(&master);
    tw_free(&p);
}

static void test_sum_squares(size_t n) {
    twin x = tw_randn(n, 2.0);
    double got[2], again = 0.0;
    for (int k = 0; k < 2; k++) OK(B[k]->iface->sum_squares(B[k], F(x, k), n, &got[k]));
    OK(B[1]->iface->sum_squares(B[1], F(x, 1), n, &again));
    checks += 2;
    if (!(fabs(got[1] - got[0]) <= tol->sumsq * fabs(got[0])))
        FAIL("sum_squares (%zu values): %.17g, want %.17g", n, got[1], got[0]);
    if (memcmp(&again, &got[1], sizeof again) != 0)
        FAIL("sum_squares (%zu values): two runs gave %.17g and %.17g", n, got[1], again);
    tw_free(&x);
}

static void test_vector_ops(void) {
    size_t n = 10000;
    twin a = tw_randn(n, 1.0), b = tw_randn(n, 1.0), out = tw(NULL, sizeof(float) * n);
    for (int k = 0; k < 2; k++) {
        OK(ent_vec_sub(B[k], F(out, k), F(a, k), F(b, k), n));
        OK(ent_vec_axpy(B[k], F(out, k), -0.37f, F(b, k), n));
        OK(ent_vec_sub(B[k], F(a, k), F(a, k), F(out, k), n)); // out aliasing an input
    }
    compare("sub, axpy", &out, n, tol->f32);
    compare("sub (out aliasing a)", &a, n, tol->f32);
    // int8 blocks: the last shorter, one holding a NaN
    size_t block = 300, nblocks = (n + block - 1) / block;
    float *xh = randn(n, 3.0);
    xh[1234] = NAN;
    twin x = tw(xh, sizeof(float) * n), q = tw(NULL, n), scales = tw(NULL, sizeof(float) * nblocks),
         deq = tw(NULL, sizeof(float) * n);
    for (int k = 0; k < 2; k++) {
        OK(ent_vec_quantize_i8(B[k], (int8_t *)q.d[k], F(scales, k), F(x, k), n, block));
        OK(ent_vec_dequantize_i8(B[k], F(deq, k), (int8_t *)q.d[k], F(scales, k), n, block));
    }
    int8_t *q0 = host_of(&q, 0), *q1 = host_of(&q, 1);
    checks++;
    if (memcmp(q0, q1, n) != 0) FAIL("quantize_i8: the int8 values differ from the cpu's");
    free(q0);
    free(q1);
    compare("quantize_i8 scales", &scales, nblocks, 0.0);
    compare("dequantize_i8", &deq, n, 0.0);
    free(xh);
    twin *all[] = {&a, &b, &out, &x, &q, &scales, &deq};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tw_free(all[i]);
}

// ---------------------------------------------------------------------------

static int run_backend(const char *name) {
    ent_backend_t *be = NULL;
    ent_backend_opts opts = {.precision = precision};
    ent_status st = backend_new(name, &opts, &be);
    if (st != ENT_OK) {
        if (st == ENT_ERR_USAGE && strcmp(name, "cpu") != 0) {
            printf("SKIP: %s\n", ent_last_error());
            return 77;
        }
        printf("FAIL: %s\n", ent_last_error());
        return 1;
    }
    tol = &unknown;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(known[i].name, be->iface->name) == 0) tol = &known[i];
    B[1] = be;
    bf16 = be->act_dtype == ENT_BF16;
    printf("%s: %s\n", name, be->iface->describe(be));
    failures = checks = 0;
    closest = 0.0;
    snprintf(closest_at, sizeof closest_at, "none (every error 0)");
    test_encoder();
    test_layernorm(111, 96);
    test_layernorm(7, 768);
    test_matmul(111, 96, 200, 1);
    test_matmul(111, 96, 288, 0);
    test_matmul(64, 768, 2304, 1);
    test_matmul(37, 64, 100, 1); // a width cuBLASLt's GELU epilogue cannot take: the two ops
    test_attention(3, 37, 96, 6);  // head size 16
    test_attention(2, 70, 128, 2); // 64
    test_attention(1, 33, 96, 1);  // 96
    test_elementwise();
    test_residual_norm(37, 768, 0);
    test_residual_norm(5, 100, 0); // rows shorter than a warp's stride, not a multiple of 32
    test_residual_norm(37, 768, 1);
    test_residual_norm(3, 17, 1);
    test_llama_ops(2, 37, 8, 2, 16, 4, 0);
    test_llama_ops(3, 20, 3, 2, 32, 2, 1);  // a tensor-parallel rank's heads from mid-group
    test_llama_ops(1, 70, 8, 1, 64, 8, 0);  // every query head on one KV head; 3 key tiles
    test_llama_ops(2, 33, 4, 4, 128, 1, 0); // plain multi-head, head size 128 (Llama 3's)
    test_gqa_rejects();
    test_softmax_xent();
    test_adamw();
    test_cast();
    test_sum_squares(1);
    test_sum_squares(100003);
    test_vector_ops();
    OK(be->iface->synchronize(be));
    printf("%s: %d checks, %d failed; closest to its limit: %s\n", name, checks, failures,
           closest_at);
    ent_backend_free(&be);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
#ifdef ENT_TEST_CUDA_LIBRARY
    // cuBLASLt, which nothing links, opens and has every function the
    // backend takes from it (no GPU needed)
    if (argc == 2 && strcmp(argv[1], "--cuda-library") == 0) {
        size_t v = ent_cuda_lt_version();
        if (v == 0) {
            printf("FAIL: %s\n", ent_last_error());
            return 1;
        }
        printf("cuBLASLt %zu opened, its functions found\n", v);
        return 0;
    }
#endif
    if (argc == 3 && strcmp(argv[1], "--available") == 0) {
        ent_backend_t *be = NULL;
        if (backend_new(argv[2], NULL, &be) != ENT_OK) {
            printf("SKIP: %s\n", ent_last_error());
            return 77;
        }
        printf("%s: %s\n", argv[2], be->iface->describe(be));
        ent_backend_free(&be);
        return 0;
    }
    // --precision P first: the precision of the backends under test
    if (argc >= 3 && strcmp(argv[1], "--precision") == 0) {
        if (ent_precision_parse(argv[2], &precision) != ENT_OK) {
            printf("FAIL: %s\n", ent_last_error());
            return 2;
        }
        argc -= 2;
        argv += 2;
    }
    test_seed();
    B[0] = ent_backend_cpu_new(0);
    if (B[0] == NULL) return 1;
    int rc = 0, skipped = 0, ran = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            int r = run_backend(argv[i]);
            if (r == 77) skipped++; else ran++;
            if (r == 1) rc = 1;
        }
    } else {
        // every backend of this build but the reference ("auto" is one of them)
        char names[128];
        snprintf(names, sizeof names, "%s", ent_backend_names());
        for (char *tok = strtok(names, ", "); tok != NULL; tok = strtok(NULL, ", ")) {
            if (strcmp(tok, "cpu") == 0 || strcmp(tok, "auto") == 0) continue;
            int r = run_backend(tok);
            if (r == 77) skipped++; else ran++;
            if (r == 1) rc = 1;
        }
    }
    ent_backend_free(&B[0]);
    if (rc == 0 && ran == 0 && skipped > 0) return 77;
    return rc;
}
