// swiglu.c: the Llama family's gated MLP activation, silu(gate) * up (the
// per-element math is kernel_math.h's).
#include "cpu_impl.h"

ent_status ent_cpu_swiglu_forward(ent_backend_t *be, float *out, const float *gate,
                                  const float *up, size_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = ent_k_swiglu(gate[i], up[i]);
    return ENT_OK;
}

ent_status ent_cpu_swiglu_backward(ent_backend_t *be, float *dgate, float *dup, const float *dout,
                                   const float *gate, const float *up, size_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float dg, du;
        ent_k_swiglu_grad(gate[i], up[i], dout[i], &dg, &du);
        dgate[i] += dg;
        dup[i] += du;
    }
    return ENT_OK;
}
