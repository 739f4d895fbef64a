// vector.c: element-wise vector ops the coalition runs on every backend:
// the pseudo-gradient (anchor - local), the outer update (axpy), and the
// blockwise int8 compression of deltas with one float scale per block.
#include "cpu_impl.h"

#include <math.h>

ent_status ent_cpu_sub(ent_backend_t *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] - b[i];
    return ENT_OK;
}

ent_status ent_cpu_axpy(ent_backend_t *be, float *y, float alpha, const float *x, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
    return ENT_OK;
}

// scale = max |x| / 127 over the block; q = x / scale rounded to nearest
// (ties to even, the default rounding mode), so |q| <= 127 and the error of
// each value is at most scale / 2. An all-zero block has scale 0 and q = 0;
// a non-finite value makes its block's scale non-finite, so a receiver that
// checks the scales refuses it.
ent_status ent_cpu_quantize_i8(ent_backend_t *be, int8_t *q, float *scales, const float *x,
                               size_t n, size_t block) {
    (void)be;
    size_t nblocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < nblocks; k++) {
        size_t i0 = k * block, i1 = i0 + block < n ? i0 + block : n;
        float inv;
        scales[k] = ent_block_scale(x + i0, i1 - i0, 127.0f, &inv);
        for (size_t i = i0; i < i1; i++) q[i] = (int8_t)ent_k_quantize(x[i], inv, 127.0f);
    }
    return ENT_OK;
}

ent_status ent_cpu_dequantize_i8(ent_backend_t *be, float *out, const int8_t *q,
                                 const float *scales, size_t n, size_t block) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = (float)q[i] * scales[i / block];
    return ENT_OK;
}
