// residual.c: the residual stream's addition and its gradient.
#include "cpu_impl.h"

ent_status ent_cpu_residual_forward(ent_backend_t *be, float *out, const float *a, const float *b,
                                    size_t n) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    return ENT_OK;
}

ent_status ent_cpu_residual_backward(ent_backend_t *be, float *da, float *db, const float *dout,
                                     size_t n) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
    return ENT_OK;
}
