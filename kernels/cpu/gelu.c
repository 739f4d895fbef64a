// gelu.c: GELU, tanh form (the per-element math is kernel_math.h's).
#include "cpu_impl.h"

ent_status ent_cpu_gelu_forward(ent_backend_t *be, float *out, const float *inp, size_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = ent_k_gelu(inp[i]);
    return ENT_OK;
}

ent_status ent_cpu_gelu_backward(ent_backend_t *be, float *dinp, const float *inp,
                                 const float *dout, size_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * ent_k_gelu_grad(inp[i]);
    return ENT_OK;
}
