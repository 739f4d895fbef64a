// guarded.c: the CPU backend with its memory locked outside its own calls.
//
// Device memory must only be touched through a backend's ops and copies
// (STYLE.md 13): a GPU site crashes, or silently reads garbage, where a CPU
// run would not notice. This backend makes a CPU run notice. Every buffer it
// allocates is an mmap of its own, kept PROT_NONE; each op and copy opens all
// of them, runs the CPU backend's code, and locks them again. Any access from
// outside the backend (a checkpoint writer, a collective, a sampler reading an
// arena) faults at once with SIGSEGV. It reports is_host = 0, as a GPU does,
// so callers take their device paths. Tests only: every call costs two
// mprotect system calls per buffer.
#include "cpu_impl.h"

#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct {
    void *p;
    size_t len; // mapped bytes (whole pages)
} region;

typedef struct {
    pthread_mutex_t lock;
    region *regions;
    int n, cap;
    int open_depth; // calls in progress (a saver thread's copy may overlap an op)
} guard;

static void protect_all(guard *g, int prot) {
    for (int i = 0; i < g->n; i++)
        if (mprotect(g->regions[i].p, g->regions[i].len, prot) != 0) {
            perror("cpu-guarded backend: mprotect");
            abort(); // the guard itself is broken: nothing it reports can be trusted
        }
}

static void open_all(ent_backend_t *be) {
    guard *g = be->impl;
    pthread_mutex_lock(&g->lock);
    if (g->open_depth++ == 0) protect_all(g, PROT_READ | PROT_WRITE);
    pthread_mutex_unlock(&g->lock);
}

static void close_all(ent_backend_t *be) {
    guard *g = be->impl;
    pthread_mutex_lock(&g->lock);
    if (--g->open_depth == 0) protect_all(g, PROT_NONE);
    pthread_mutex_unlock(&g->lock);
}

static void *g_alloc(ent_backend_t *be, size_t bytes) {
    guard *g = be->impl;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (bytes + page - 1) / page * page;
    if (len == 0) len = page;
    void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    pthread_mutex_lock(&g->lock);
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 16;
        region *r = realloc(g->regions, sizeof *r * (size_t)cap);
        if (r == NULL) {
            pthread_mutex_unlock(&g->lock);
            munmap(p, len);
            return NULL;
        }
        g->regions = r;
        g->cap = cap;
    }
    g->regions[g->n++] = (region){p, len};
    // a buffer made while another thread's call has the others open is opened too
    if (g->open_depth > 0) mprotect(p, len, PROT_READ | PROT_WRITE);
    pthread_mutex_unlock(&g->lock);
    return p; // fresh anonymous pages are zero
}

static void g_free_mem(ent_backend_t *be, void *p) {
    guard *g = be->impl;
    pthread_mutex_lock(&g->lock);
    for (int i = 0; i < g->n; i++)
        if (g->regions[i].p == p) {
            munmap(p, g->regions[i].len);
            g->regions[i] = g->regions[--g->n];
            break;
        }
    pthread_mutex_unlock(&g->lock);
}

static void g_free_backend(ent_backend_t *be) {
    guard *g = be->impl;
    for (int i = 0; i < g->n; i++) munmap(g->regions[i].p, g->regions[i].len);
    free(g->regions);
    pthread_mutex_destroy(&g->lock);
    free(g);
    free(be);
}

static const char *g_describe(ent_backend_t *be) {
    (void)be;
    static char desc[320];
    snprintf(desc, sizeof desc, "guarded (memory PROT_NONE outside backend calls); %s",
             ent_backend_cpu_describe());
    return desc;
}

static ent_status g_synchronize(ent_backend_t *be) {
    (void)be;
    return ENT_OK;
}

// Each op: open every buffer, run the CPU backend's op, lock them again.
#define GUARDED(op, params, args)                                                \
    static ent_status g_##op params {                                            \
        open_all(be);                                                            \
        ent_status st = ent_cpu_##op args;                                       \
        close_all(be);                                                           \
        return st;                                                               \
    }

GUARDED(zero, (ent_backend_t *be, void *p, size_t bytes), (be, p, bytes))
GUARDED(copy, (ent_backend_t *be, void *dst, const void *src, size_t bytes), (be, dst, src, bytes))
GUARDED(encoder_forward,
        (ent_backend_t *be, float *out, const int32_t *tokens, const float *wte, const float *wpe,
         int B, int T, int C),
        (be, out, tokens, wte, wpe, B, T, C))
GUARDED(encoder_backward,
        (ent_backend_t *be, float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
         int B, int T, int C),
        (be, dwte, dwpe, dout, tokens, B, T, C))
GUARDED(layernorm_forward,
        (ent_backend_t *be, float *out, float *mean, float *rstd, const float *inp,
         const float *weight, const float *bias, int N, int C),
        (be, out, mean, rstd, inp, weight, bias, N, C))
GUARDED(layernorm_backward,
        (ent_backend_t *be, float *dinp, float *dweight, float *dbias, const float *dout,
         const float *inp, const float *weight, const float *mean, const float *rstd, int N,
         int C),
        (be, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C))
GUARDED(matmul_forward,
        (ent_backend_t *be, float *out, const float *inp, const float *weight, const float *bias,
         int N, int C, int OC),
        (be, out, inp, weight, bias, N, C, OC))
GUARDED(matmul_backward,
        (ent_backend_t *be, float *dinp, float *dweight, float *dbias, const float *dout,
         const float *inp, const float *weight, int N, int C, int OC),
        (be, dinp, dweight, dbias, dout, inp, weight, N, C, OC))
GUARDED(attention_forward,
        (ent_backend_t *be, float *out, float *att, const float *qkv, int B, int T, int C, int NH),
        (be, out, att, qkv, B, T, C, NH))
GUARDED(attention_backward,
        (ent_backend_t *be, float *dqkv, float *scratch, const float *dout, const float *qkv,
         const float *att, int B, int T, int C, int NH),
        (be, dqkv, scratch, dout, qkv, att, B, T, C, NH))
GUARDED(gelu_forward, (ent_backend_t *be, float *out, const float *inp, size_t n),
        (be, out, inp, n))
GUARDED(gelu_backward,
        (ent_backend_t *be, float *dinp, const float *inp, const float *dout, size_t n),
        (be, dinp, inp, dout, n))
GUARDED(residual_forward,
        (ent_backend_t *be, float *out, const float *a, const float *b, size_t n),
        (be, out, a, b, n))
GUARDED(residual_backward,
        (ent_backend_t *be, float *da, float *db, const float *dout, size_t n),
        (be, da, db, dout, n))
GUARDED(residual_layernorm_forward,
        (ent_backend_t *be, float *res, float *out, float *mean, float *rstd, const float *a,
         const float *b, const float *weight, const float *bias, int N, int C),
        (be, res, out, mean, rstd, a, b, weight, bias, N, C))
GUARDED(residual_rmsnorm_forward,
        (ent_backend_t *be, float *res, float *out, float *rstd, const float *a, const float *b,
         const float *weight, float eps, int N, int C),
        (be, res, out, rstd, a, b, weight, eps, N, C))
GUARDED(softmax_xent_forward,
        (ent_backend_t *be, float *losses, float *probs, const float *logits,
         const int32_t *targets, int N, int V, int Vp),
        (be, losses, probs, logits, targets, N, V, Vp))
GUARDED(softmax_xent_backward,
        (ent_backend_t *be, float *dlogits, const float *probs, const int32_t *targets,
         float dloss, int N, int V, int Vp),
        (be, dlogits, probs, targets, dloss, N, V, Vp))
GUARDED(rmsnorm_forward,
        (ent_backend_t *be, float *out, float *rstd, const float *inp, const float *weight,
         float eps, int N, int C),
        (be, out, rstd, inp, weight, eps, N, C))
GUARDED(rmsnorm_backward,
        (ent_backend_t *be, float *dinp, float *dweight, const float *dout, const float *inp,
         const float *weight, const float *rstd, int N, int C),
        (be, dinp, dweight, dout, inp, weight, rstd, N, C))
GUARDED(rope_forward,
        (ent_backend_t *be, float *x, const float *cos_t, const float *sin_t, int B, int T, int H,
         int hd),
        (be, x, cos_t, sin_t, B, T, H, hd))
GUARDED(rope_backward,
        (ent_backend_t *be, float *dx, const float *cos_t, const float *sin_t, int B, int T,
         int H, int hd),
        (be, dx, cos_t, sin_t, B, T, H, hd))
GUARDED(swiglu_forward,
        (ent_backend_t *be, float *out, const float *gate, const float *up, size_t n),
        (be, out, gate, up, n))
GUARDED(swiglu_backward,
        (ent_backend_t *be, float *dgate, float *dup, const float *dout, const float *gate,
         const float *up, size_t n),
        (be, dgate, dup, dout, gate, up, n))
GUARDED(gqa_forward,
        (ent_backend_t *be, float *out, float *att, const float *q, const float *k, const float *v,
         ent_gqa_shape s),
        (be, out, att, q, k, v, s))
GUARDED(gqa_backward,
        (ent_backend_t *be, float *dq, float *dk, float *dv, float *scratch, const float *dout,
         const float *q, const float *k, const float *v, const float *att, ent_gqa_shape s),
        (be, dq, dk, dv, scratch, dout, q, k, v, att, s))
GUARDED(adamw_update,
        (ent_backend_t *be, float *params, float *master, const float *grads, float *m, float *v,
         size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
         float grad_scale, int t),
        (be, params, master, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t))
GUARDED(sum_squares, (ent_backend_t *be, const float *x, size_t n, double *out),
        (be, x, n, out))
GUARDED(sub, (ent_backend_t *be, float *out, const float *a, const float *b, size_t n),
        (be, out, a, b, n))
GUARDED(axpy, (ent_backend_t *be, float *y, float alpha, const float *x, size_t n),
        (be, y, alpha, x, n))
GUARDED(quantize_i8,
        (ent_backend_t *be, int8_t *q, float *scales, const float *x, size_t n, size_t block),
        (be, q, scales, x, n, block))
GUARDED(dequantize_i8,
        (ent_backend_t *be, float *out, const int8_t *q, const float *scales, size_t n,
         size_t block),
        (be, out, q, scales, n, block))

static const struct ent_backend_i guarded_backend_i = {
    .name = "cpu-guarded",
    .is_host = 0,
    .free = g_free_backend,
    .describe = g_describe,
    .alloc = g_alloc,
    .free_mem = g_free_mem,
    .zero = g_zero,
    .to_device = g_copy,
    .to_host = g_copy,
    .synchronize = g_synchronize,
    .available_memory = ent_cpu_available_memory,
    .attention_state_bytes = ent_cpu_attention_state_bytes,
    .encoder_forward = g_encoder_forward,
    .encoder_backward = g_encoder_backward,
    .layernorm_forward = g_layernorm_forward,
    .layernorm_backward = g_layernorm_backward,
    .matmul_forward = g_matmul_forward,
    .matmul_backward = g_matmul_backward,
    .attention_forward = g_attention_forward,
    .attention_backward = g_attention_backward,
    .gelu_forward = g_gelu_forward,
    .gelu_backward = g_gelu_backward,
    .residual_forward = g_residual_forward,
    .residual_backward = g_residual_backward,
    .residual_layernorm_forward = g_residual_layernorm_forward,
    .residual_rmsnorm_forward = g_residual_rmsnorm_forward,
    .softmax_xent_forward = g_softmax_xent_forward,
    .softmax_xent_backward = g_softmax_xent_backward,
    .rmsnorm_forward = g_rmsnorm_forward,
    .rmsnorm_backward = g_rmsnorm_backward,
    .rope_forward = g_rope_forward,
    .rope_backward = g_rope_backward,
    .swiglu_forward = g_swiglu_forward,
    .swiglu_backward = g_swiglu_backward,
    .gqa_forward = g_gqa_forward,
    .gqa_backward = g_gqa_backward,
    .adamw_update = g_adamw_update,
    .sum_squares = g_sum_squares,
    .sub = g_sub,
    .axpy = g_axpy,
    .quantize_i8 = g_quantize_i8,
    .dequantize_i8 = g_dequantize_i8,
};

ent_status ent_cpu_guarded_new(const ent_backend_opts *opts, ent_backend_t **out) {
    ent_backend_t *be = calloc(1, sizeof *be);
    guard *g = calloc(1, sizeof *g);
    if (be == NULL || g == NULL) {
        free(be);
        free(g);
        return ent_fail(ENT_ERR_NOMEM, "out of memory creating the cpu-guarded backend");
    }
    pthread_mutex_init(&g->lock, NULL);
    if (opts != NULL && opts->threads > 0) omp_set_num_threads(opts->threads);
    be->threads = omp_get_max_threads();
    be->iface = &guarded_backend_i;
    be->impl = g;
    *out = be;
    return ENT_OK;
}
