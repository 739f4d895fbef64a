// layernorm.c: normalisation over the last axis: GPT-2's layernorm (mean
// removed, eps = 1e-5, bias) and the Llama family's RMSNorm (no mean, eps
// from the model, no bias). RMSNorm is layernorm with the mean taken as 0 and
// no bias, so one forward and one backward serve both.
#include "cpu_impl.h"

#include <math.h>

// out = (inp - mean) * rstd * weight + bias per row; centred = 0: the mean is
// taken as 0 (and not stored) and bias is NULL. Fused with the residual
// (res non-NULL; inp NULL): each row of res is written first, a + b, and
// normalised.
static void norm_forward(float *out, float *mean, float *rstd, const float *inp, float *res,
                         const float *a, const float *b, const float *weight, const float *bias,
                         double eps, int centred, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x;
        float *o = out + (size_t)n * C;
        if (res != NULL) {
            const float *ar = a + (size_t)n * C, *br = b + (size_t)n * C;
            float *r = res + (size_t)n * C;
            for (int c = 0; c < C; c++) r[c] = ar[c] + br[c];
            x = r;
        } else {
            x = inp + (size_t)n * C;
        }
        float m = 0.0f;
        if (centred) {
            double s = 0.0;
            for (int c = 0; c < C; c++) s += x[c];
            m = (float)(s / C);
        }
        double v = 0.0;
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v += (double)d * d;
        }
        float r = (float)(1.0 / sqrt(v / C + eps));
        if (centred) {
            for (int c = 0; c < C; c++) o[c] = ent_k_layernorm(x[c], m, r, weight[c], bias[c]);
            mean[n] = m;
        } else {
            for (int c = 0; c < C; c++) o[c] = ent_k_rmsnorm(x[c], r, weight[c]);
        }
        rstd[n] = r;
    }
}

// The gradients of norm_forward; mean NULL: RMSNorm's (dbias NULL too).
static void norm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const float *weight, const float *mean,
                          const float *rstd, int N, int C) {
    // dinp: independent rows
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float m = mean != NULL ? mean[n] : 0.0f, r = rstd[n];
        // dnorm = dy * weight; dx = r * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)),
        // without the mean(dnorm) term when no mean was removed
        double sum_d = 0.0, sum_dn = 0.0;
        for (int c = 0; c < C; c++) {
            float norm = ent_k_norm(x[c], m, r);
            float dn = dy[c] * weight[c];
            sum_d += dn;
            sum_dn += (double)dn * norm;
        }
        float mean_d = mean != NULL ? (float)(sum_d / C) : 0.0f, mean_dn = (float)(sum_dn / C);
        for (int c = 0; c < C; c++) {
            float norm = ent_k_norm(x[c], m, r);
            float dn = dy[c] * weight[c];
            dx[c] += ent_k_norm_grad(dn, norm, r, mean_d, mean_dn);
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
            float m = mean != NULL ? mean[n] : 0.0f, r = rstd[n];
            for (int c = c0; c < c1; c++) {
                dw[c - c0] += dy[c] * ent_k_norm(x[c], m, r);
                db[c - c0] += dy[c];
            }
        }
        for (int c = c0; c < c1; c++) {
            dweight[c] += dw[c - c0];
            if (dbias != NULL) dbias[c] += db[c - c0];
        }
    }
}

ent_status ent_cpu_layernorm_forward(ent_backend_t *be, float *out, float *mean, float *rstd,
                                     const float *inp, const float *weight, const float *bias,
                                     int N, int C) {
    (void)be;
    norm_forward(out, mean, rstd, inp, NULL, NULL, NULL, weight, bias, 1e-5, 1, N, C);
    return ENT_OK;
}

ent_status ent_cpu_residual_layernorm_forward(ent_backend_t *be, float *res, float *out,
                                              float *mean, float *rstd, const float *a,
                                              const float *b, const float *weight,
                                              const float *bias, int N, int C) {
    (void)be;
    norm_forward(out, mean, rstd, NULL, res, a, b, weight, bias, 1e-5, 1, N, C);
    return ENT_OK;
}

ent_status ent_cpu_layernorm_backward(ent_backend_t *be, float *dinp, float *dweight, float *dbias,
                                      const float *dout, const float *inp, const float *weight,
                                      const float *mean, const float *rstd, int N, int C) {
    (void)be;
    norm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    return ENT_OK;
}

ent_status ent_cpu_rmsnorm_forward(ent_backend_t *be, float *out, float *rstd, const float *inp,
                                   const float *weight, float eps, int N, int C) {
    (void)be;
    norm_forward(out, NULL, rstd, inp, NULL, NULL, NULL, weight, NULL, (double)eps, 0, N, C);
    return ENT_OK;
}

ent_status ent_cpu_residual_rmsnorm_forward(ent_backend_t *be, float *res, float *out,
                                            float *rstd, const float *a, const float *b,
                                            const float *weight, float eps, int N, int C) {
    (void)be;
    norm_forward(out, NULL, rstd, NULL, res, a, b, weight, NULL, (double)eps, 0, N, C);
    return ENT_OK;
}

ent_status ent_cpu_rmsnorm_backward(ent_backend_t *be, float *dinp, float *dweight,
                                    const float *dout, const float *inp, const float *weight,
                                    const float *rstd, int N, int C) {
    (void)be;
    norm_backward(dinp, dweight, NULL, dout, inp, weight, NULL, rstd, N, C);
    return ENT_OK;
}
