// vector_ops.c: dispatch of the backends' optional entries: the vector ops
// and the stream.
#include "ent_kernels.h"
#include "kernel_math.h"

#include <math.h>
#include <stddef.h>

void *ent_backend_stream(ent_backend_t *be) {
    return be->iface->stream != NULL ? be->iface->stream(be) : NULL;
}

static ent_status missing(const ent_backend_t *be, const char *op) {
    return ent_fail(ENT_ERR_USAGE, "the %s backend has no %s op", be->iface->name, op);
}

ent_status ent_vec_sub(ent_backend_t *be, float *out, const float *a, const float *b, size_t n) {
    if (be->iface->sub == NULL) return missing(be, "sub");
    return be->iface->sub(be, out, a, b, n);
}

ent_status ent_vec_axpy(ent_backend_t *be, float *y, float alpha, const float *x, size_t n) {
    if (be->iface->axpy == NULL) return missing(be, "axpy");
    return be->iface->axpy(be, y, alpha, x, n);
}

ent_status ent_vec_quantize_i8(ent_backend_t *be, int8_t *q, float *scales, const float *x,
                               size_t n, size_t block) {
    if (be->iface->quantize_i8 == NULL) return missing(be, "quantize_i8");
    if (block == 0) return ent_fail(ENT_ERR_USAGE, "quantize_i8: block size 0");
    return be->iface->quantize_i8(be, q, scales, x, n, block);
}

ent_status ent_vec_dequantize_i8(ent_backend_t *be, float *out, const int8_t *q,
                                 const float *scales, size_t n, size_t block) {
    if (be->iface->dequantize_i8 == NULL) return missing(be, "dequantize_i8");
    if (block == 0) return ent_fail(ENT_ERR_USAGE, "dequantize_i8: block size 0");
    return be->iface->dequantize_i8(be, out, q, scales, n, block);
}

float ent_block_scale(const float *x, size_t n, float levels, float *inv) {
    float amax = 0.0f;
    for (size_t i = 0; i < n; i++) amax = ent_k_amax_add(amax, x[i]); // NaN propagates
    return ent_k_block_scale(amax, levels, inv);
}
