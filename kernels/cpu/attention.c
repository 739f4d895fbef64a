// attention.c: causal multi-head self-attention on OpenBLAS.
//
// For each (batch, head) the scores S = Q K^T / sqrt(hs) and the output
// P V are sgemm calls that read Q, K and V in place inside qkv (leading
// dimension 3C), so nothing is permuted or copied. The (batch, head) loop is
// an OpenMP loop; the OpenMP build of OpenBLAS runs each call single-threaded
// inside it. The full T x T product is computed and the upper triangle
// masked, which wastes at most half of a small share of the model's FLOPs.
#include "cpu_impl.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

ent_status ent_cpu_attention_forward(ent_backend_t *be, float *out, float *att, const float *qkv,
                                     int B, int T, int C, int NH) {
    (void)be;
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs;
        const float *k = q + C;
        const float *v = q + 2 * C;
        float *p = att + (size_t)bh * T * T;
        // p (T,T) = scale * q (T,hs) @ k^T (hs,T)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, C3, k, C3,
                    0.0f, p, T);
        for (int t = 0; t < T; t++) {
            float *row = p + (size_t)t * T;
            float maxv = row[0];
            for (int j = 1; j <= t; j++) maxv = row[j] > maxv ? row[j] : maxv;
            float sum = 0.0f;
            for (int j = 0; j <= t; j++) {
                row[j] = ent_k_expf(row[j] - maxv);
                sum += row[j];
            }
            float inv = 1.0f / sum;
            for (int j = 0; j <= t; j++) row[j] *= inv;
            for (int j = t + 1; j < T; j++) row[j] = 0.0f;
        }
        // out (T,hs) = p (T,T) @ v (T,hs)
        float *o = out + (size_t)b * T * C + (size_t)h * hs;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, v, C3,
                    0.0f, o, C);
    }
    return ENT_OK;
}

ent_status ent_cpu_attention_backward(ent_backend_t *be, float *dqkv, float *scratch,
                                      const float *dout, const float *qkv, const float *att,
                                      int B, int T, int C, int NH) {
    (void)be;
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        size_t qoff = (size_t)b * T * C3 + (size_t)h * hs;
        const float *q = qkv + qoff, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + qoff, *dk = dq + C, *dv = dq + 2 * C;
        const float *p = att + (size_t)bh * T * T;
        const float *dO = dout + (size_t)b * T * C + (size_t)h * hs;
        float *dp = scratch + (size_t)bh * T * T;
        // dv (T,hs) += p^T (T,T) @ dO (T,hs)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, dO, C,
                    1.0f, dv, C3);
        // dp (T,T) = dO (T,hs) @ v^T (hs,T)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dO, C, v, C3,
                    0.0f, dp, T);
        // softmax backward, scale folded in: ds = scale * p * (dp - sum_j p dp)
        for (int t = 0; t < T; t++) {
            const float *prow = p + (size_t)t * T;
            float *drow = dp + (size_t)t * T;
            float dot = 0.0f;
            for (int j = 0; j <= t; j++) dot += prow[j] * drow[j];
            for (int j = 0; j <= t; j++) drow[j] = scale * prow[j] * (drow[j] - dot);
            for (int j = t + 1; j < T; j++) drow[j] = 0.0f;
        }
        // dq (T,hs) += ds (T,T) @ k (T,hs);  dk (T,hs) += ds^T (T,T) @ q (T,hs)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, dp, T, k, C3,
                    1.0f, dq, C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, dp, T, q, C3,
                    1.0f, dk, C3);
    }
    return ENT_OK;
}
