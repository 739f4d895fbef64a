// layernorm.c: layer normalisation over the last axis, eps = 1e-5 (GPT-2).
#include "cpu_impl.h"

#include <math.h>

ent_status ent_cpu_layernorm_forward(ent_backend_t *be, float *out, float *mean, float *rstd,
                                     const float *inp, const float *weight, const float *bias,
                                     int N, int C) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += x[c];
        float m = (float)(s / C);
        double v = 0.0;
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v += (double)d * d;
        }
        float r = (float)(1.0 / sqrt(v / C + 1e-5));
        for (int c = 0; c < C; c++) o[c] = ent_k_layernorm(x[c], m, r, weight[c], bias[c]);
        mean[n] = m;
        rstd[n] = r;
    }
    return ENT_OK;
}

ent_status ent_cpu_layernorm_backward(ent_backend_t *be, float *dinp, float *dweight, float *dbias,
                                      const float *dout, const float *inp, const float *weight,
                                      const float *mean, const float *rstd, int N, int C) {
    (void)be;
    // dinp: independent rows
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float m = mean[n], r = rstd[n];
        // dnorm = dy * weight; dx = r * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
        double sum_d = 0.0, sum_dn = 0.0;
        for (int c = 0; c < C; c++) {
            float norm = ent_k_norm(x[c], m, r);
            float dn = dy[c] * weight[c];
            sum_d += dn;
            sum_dn += (double)dn * norm;
        }
        float mean_d = (float)(sum_d / C), mean_dn = (float)(sum_dn / C);
        for (int c = 0; c < C; c++) {
            float norm = ent_k_norm(x[c], m, r);
            float dn = dy[c] * weight[c];
            dx[c] += r * (dn - mean_d - norm * mean_dn);
        }
    }
    // dweight, dbias: column reductions, by column block
    int nblocks = (C + ENT_CPU_COL_BLOCK - 1) / ENT_CPU_COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * ENT_CPU_COL_BLOCK;
        int c1 = c0 + ENT_CPU_COL_BLOCK < C ? c0 + ENT_CPU_COL_BLOCK : C;
        float dw[ENT_CPU_COL_BLOCK] = {0}, db[ENT_CPU_COL_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *dy = dout + (size_t)n * C;
            float m = mean[n], r = rstd[n];
            for (int c = c0; c < c1; c++) {
                dw[c - c0] += dy[c] * ent_k_norm(x[c], m, r);
                db[c - c0] += dy[c];
            }
        }
        for (int c = c0; c < c1; c++) {
            dweight[c] += dw[c - c0];
            dbias[c] += db[c - c0];
        }
    }
    return ENT_OK;
}
