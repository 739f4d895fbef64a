// optimizer.c: AdamW (decoupled weight decay, Loshchilov & Hutter) and the
// sum of squares behind the global gradient norm.
#include "cpu_impl.h"

#include <math.h>

ent_status ent_cpu_adamw_update(ent_backend_t *be, float *params, float *master,
                                const float *grads, float *m, float *v, size_t n, float lr,
                                float beta1, float beta2, float eps, float weight_decay,
                                float grad_scale, int t) {
    (void)be;
    ent_k_adamw_hp h = ent_k_adamw_hparams(lr, beta1, beta2, eps, weight_decay, grad_scale, t);
    float *w = master != NULL ? master : params;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        w[i] = ent_k_adamw(&m[i], &v[i], grads[i], w[i], &h);
        if (w != params) params[i] = w[i]; // f32 params: the master's value
    }
    return ENT_OK;
}

// Fixed-size chunks summed in parallel, then the chunk sums added in order:
// the result depends on n only, never on the number of threads.
#define SUMSQ_CHUNK 16384
#define SUMSQ_STACK_CHUNKS 1024

ent_status ent_cpu_sum_squares(ent_backend_t *be, const float *x, size_t n, double *out) {
    (void)be;
    size_t nchunks = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    double total = 0.0;
    // Large inputs are reduced in groups of SUMSQ_STACK_CHUNKS chunks so the
    // partial sums stay on the stack; groups and chunks are added in order.
    for (size_t g0 = 0; g0 < nchunks; g0 += SUMSQ_STACK_CHUNKS) {
        size_t g1 = g0 + SUMSQ_STACK_CHUNKS < nchunks ? g0 + SUMSQ_STACK_CHUNKS : nchunks;
        double partial[SUMSQ_STACK_CHUNKS];
#pragma omp parallel for schedule(static)
        for (size_t ch = g0; ch < g1; ch++) {
            size_t i0 = ch * SUMSQ_CHUNK;
            size_t i1 = i0 + SUMSQ_CHUNK < n ? i0 + SUMSQ_CHUNK : n;
            double s = 0.0;
            for (size_t i = i0; i < i1; i++) s += (double)x[i] * x[i];
            partial[ch - g0] = s;
        }
        for (size_t ch = g0; ch < g1; ch++) total += partial[ch - g0];
    }
    *out = total;
    return ENT_OK;
}
