// rmsnorm.c: root-mean-square normalisation over the last axis (the Llama
// family's norm: no mean removed, no bias).
#include "cpu_impl.h"

#include <math.h>

ent_status ent_cpu_rmsnorm_forward(ent_backend_t *be, float *out, float *rstd, const float *inp,
                                   const float *weight, float eps, int N, int C) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        for (int c = 0; c < C; c++) o[c] = ent_k_rmsnorm(x[c], r, weight[c]);
        rstd[n] = r;
    }
    return ENT_OK;
}

ent_status ent_cpu_rmsnorm_backward(ent_backend_t *be, float *dinp, float *dweight,
                                    const float *dout, const float *inp, const float *weight,
                                    const float *rstd, int N, int C) {
    (void)be;
    // y = w x r, r = (mean(x^2) + eps)^-1/2: dx = r (w dy) - x r^3 mean(w dy x)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n];
        double dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)(dy[c] * weight[c]) * x[c];
        float k = (float)(dot / C) * r * r * r;
        for (int c = 0; c < C; c++) dx[c] += r * (dy[c] * weight[c]) - k * x[c];
    }
    // dweight: column sums of dy * x * r, by column block (thread-count independent)
    int nblocks = (C + ENT_CPU_COL_BLOCK - 1) / ENT_CPU_COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * ENT_CPU_COL_BLOCK;
        int c1 = c0 + ENT_CPU_COL_BLOCK < C ? c0 + ENT_CPU_COL_BLOCK : C;
        float dw[ENT_CPU_COL_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *dy = dout + (size_t)n * C;
            float r = rstd[n];
            for (int c = c0; c < c1; c++) dw[c - c0] += dy[c] * (x[c] * r);
        }
        for (int c = c0; c < c1; c++) dweight[c] += dw[c - c0];
    }
    return ENT_OK;
}
