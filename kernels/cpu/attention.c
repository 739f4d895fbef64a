// attention.c: causal self-attention on OpenBLAS, multi-head (GPT-2) and
// grouped-query (the Llama family) through one core.
//
// For each (batch, head) the scores S = Q K^T / sqrt(hs) and the output
// P V are sgemm calls that read Q, K and V in place through their leading
// dimensions (inside GPT-2's fused qkv, or three buffers), so nothing is
// permuted or copied. The forward's (batch, head) loop is an OpenMP loop; the
// backward's runs over (batch, KV head), each taking the query heads that
// share the KV head in order, so that their sums into dK and dV never race
// and never depend on the thread count. The OpenMP build of OpenBLAS runs
// each call single-threaded inside these loops. The full T x T product is
// computed and the upper triangle masked, which wastes at most half of a
// small share of the model's FLOPs.
#include "cpu_impl.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

// Where the heads live: row strides (floats) of q, k, v, out; the heads'
// mapping (ent_gqa_shape).
typedef struct {
    size_t ldq, ldk, ldv, ldo;
    ent_gqa_shape s;
} att_layout;

static int kv_of(const ent_gqa_shape *s, int h) { return (s->phase + h) / s->group; }

static void core_forward(float *out, float *att, const float *qb, const float *kb,
                         const float *vb, const att_layout *L) {
    const ent_gqa_shape *s = &L->s;
    int T = s->T, hs = s->hd, NH = s->NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < s->B * NH; bh++) {
        int b = bh / NH, h = bh % NH, j = kv_of(s, h);
        const float *q = qb + (size_t)b * T * L->ldq + (size_t)h * hs;
        const float *k = kb + (size_t)b * T * L->ldk + (size_t)j * hs;
        const float *v = vb + (size_t)b * T * L->ldv + (size_t)j * hs;
        float *p = att + (size_t)bh * T * T;
        // p (T,T) = scale * q (T,hs) @ k^T (hs,T)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, (int)L->ldq, k,
                    (int)L->ldk, 0.0f, p, T);
        for (int t = 0; t < T; t++) {
            float *row = p + (size_t)t * T;
            float maxv = row[0];
            for (int i = 1; i <= t; i++) maxv = row[i] > maxv ? row[i] : maxv;
            float sum = 0.0f;
            for (int i = 0; i <= t; i++) {
                row[i] = ent_k_expf(row[i] - maxv);
                sum += row[i];
            }
            float inv = 1.0f / sum;
            for (int i = 0; i <= t; i++) row[i] *= inv;
            for (int i = t + 1; i < T; i++) row[i] = 0.0f;
        }
        // out (T,hs) = p (T,T) @ v (T,hs)
        float *o = out + (size_t)b * T * L->ldo + (size_t)h * hs;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, v,
                    (int)L->ldv, 0.0f, o, (int)L->ldo);
    }
}

static void core_backward(float *dqb, float *dkb, float *dvb, float *scratch, const float *dout,
                          const float *qb, const float *kb, const float *vb, const float *att,
                          const att_layout *L) {
    const ent_gqa_shape *s = &L->s;
    int T = s->T, hs = s->hd, NH = s->NH;
    int nkv = kv_of(s, NH - 1) + 1; // KV heads these query heads use
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static)
    for (int bj = 0; bj < s->B * nkv; bj++) {
        int b = bj / nkv, j = bj % nkv;
        size_t koff = (size_t)b * T * L->ldk + (size_t)j * hs;
        size_t voff = (size_t)b * T * L->ldv + (size_t)j * hs;
        const float *k = kb + koff, *v = vb + voff;
        float *dk = dkb + koff, *dv = dvb + voff;
        int h0 = j * s->group - s->phase, h1 = h0 + s->group;
        for (int h = h0 < 0 ? 0 : h0; h < h1 && h < NH; h++) {
            int bh = b * NH + h;
            size_t qoff = (size_t)b * T * L->ldq + (size_t)h * hs;
            const float *q = qb + qoff;
            float *dq = dqb + qoff;
            const float *p = att + (size_t)bh * T * T;
            const float *dO = dout + (size_t)b * T * L->ldo + (size_t)h * hs;
            float *dp = scratch + (size_t)bh * T * T;
            // dv (T,hs) += p^T (T,T) @ dO (T,hs)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, dO,
                        (int)L->ldo, 1.0f, dv, (int)L->ldv);
            // dp (T,T) = dO (T,hs) @ v^T (hs,T)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dO, (int)L->ldo,
                        v, (int)L->ldv, 0.0f, dp, T);
            // softmax backward, scale folded in: ds = scale * p * (dp - sum_i p dp)
            for (int t = 0; t < T; t++) {
                const float *prow = p + (size_t)t * T;
                float *drow = dp + (size_t)t * T;
                float dot = 0.0f;
                for (int i = 0; i <= t; i++) dot += prow[i] * drow[i];
                for (int i = 0; i <= t; i++) drow[i] = scale * prow[i] * (drow[i] - dot);
                for (int i = t + 1; i < T; i++) drow[i] = 0.0f;
            }
            // dq (T,hs) += ds (T,T) @ k (T,hs);  dk (T,hs) += ds^T (T,T) @ q (T,hs)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, dp, T, k,
                        (int)L->ldk, 1.0f, dq, (int)L->ldq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, dp, T, q,
                        (int)L->ldq, 1.0f, dk, (int)L->ldk);
        }
    }
}

// GPT-2's layout: Q, K, V side by side in qkv (B,T,3C), one KV head per head
static att_layout fused_layout(int B, int T, int C, int NH) {
    att_layout L = {.ldq = 3 * (size_t)C, .ldk = 3 * (size_t)C, .ldv = 3 * (size_t)C,
                    .ldo = (size_t)C,
                    .s = {.B = B, .T = T, .NH = NH, .kv_heads = NH, .hd = C / NH, .group = 1}};
    return L;
}

static att_layout gqa_layout(ent_gqa_shape s) {
    size_t ldq = (size_t)s.NH * s.hd, ldkv = (size_t)s.kv_heads * s.hd;
    att_layout L = {.ldq = ldq, .ldk = ldkv, .ldv = ldkv, .ldo = ldq, .s = s};
    return L;
}

ent_status ent_cpu_attention_forward(ent_backend_t *be, float *out, float *att, const float *qkv,
                                     int B, int T, int C, int NH) {
    (void)be;
    att_layout L = fused_layout(B, T, C, NH);
    core_forward(out, att, qkv, qkv + C, qkv + 2 * C, &L);
    return ENT_OK;
}

ent_status ent_cpu_attention_backward(ent_backend_t *be, float *dqkv, float *scratch,
                                      const float *dout, const float *qkv, const float *att,
                                      int B, int T, int C, int NH) {
    (void)be;
    att_layout L = fused_layout(B, T, C, NH);
    core_backward(dqkv, dqkv + C, dqkv + 2 * C, scratch, dout, qkv, qkv + C, qkv + 2 * C, att, &L);
    return ENT_OK;
}

ent_status ent_cpu_gqa_forward(ent_backend_t *be, float *out, float *att, const float *q,
                               const float *k, const float *v, ent_gqa_shape s) {
    (void)be;
    ENT_CHECK(ent_gqa_shape_check(s));
    att_layout L = gqa_layout(s);
    core_forward(out, att, q, k, v, &L);
    return ENT_OK;
}

ent_status ent_cpu_gqa_backward(ent_backend_t *be, float *dq, float *dk, float *dv,
                                float *scratch, const float *dout, const float *q, const float *k,
                                const float *v, const float *att, ent_gqa_shape s) {
    (void)be;
    ENT_CHECK(ent_gqa_shape_check(s));
    att_layout L = gqa_layout(s);
    core_backward(dq, dk, dv, scratch, dout, q, k, v, att, &L);
    return ENT_OK;
}
