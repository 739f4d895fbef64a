// rope.c: rotary position embeddings in place, from a table of cos and sin
// per (position, frequency) (ent_rope_table); the backward is the rotation
// by the opposite angle.
#include "cpu_impl.h"

// back = 0: the rotation; 1: its inverse (the gradient's way back)
static void rotate(float *x, const float *cos_t, const float *sin_t, int B, int T, int H, int hd,
                   int back) {
    int half = hd / 2;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        int t = bt % T;
        const float *c = cos_t + (size_t)t * half, *s = sin_t + (size_t)t * half;
        for (int h = 0; h < H; h++) {
            float *x0 = x + ((size_t)bt * H + h) * hd, *x1 = x0 + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                if (back) ent_k_rope_back(x0[i], x1[i], c[i], s[i], &x0[i], &x1[i]);
                else ent_k_rope(x0[i], x1[i], c[i], s[i], &x0[i], &x1[i]);
            }
        }
    }
}

ent_status ent_cpu_rope_forward(ent_backend_t *be, float *x, const float *cos_t,
                                const float *sin_t, int B, int T, int H, int hd) {
    (void)be;
    rotate(x, cos_t, sin_t, B, T, H, hd, 0);
    return ENT_OK;
}

ent_status ent_cpu_rope_backward(ent_backend_t *be, float *dx, const float *cos_t,
                                 const float *sin_t, int B, int T, int H, int hd) {
    (void)be;
    rotate(dx, cos_t, sin_t, B, T, H, hd, 1);
    return ENT_OK;
}
