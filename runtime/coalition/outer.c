// outer.c: the coalition's outer loop on the anchor: the pseudo-gradient
// (anchor - local), the outer optimizer (SGD with Nesterov momentum, as in
// DiLoCo) and the anchor's hash. Element-wise float arithmetic in the order
// written (this folder is built without fused multiply-add contraction), so
// any build computes the same bits. The merge of the sites' deltas is in
// codec.c, beside the decoder it uses.
#include "runtime_impl.h"

#include <math.h>

ent_status ent_pseudo_gradient(const float *anchor, const float *local, float *delta, size_t n) {
    ent_backend_t *cpu = NULL;
    ENT_CHECK(ent_backend_new("cpu", NULL, &cpu));
    ent_status st = ent_vec_sub(cpu, delta, anchor, local, n);
    ent_backend_free(&cpu);
    return st;
}

ent_outer_opt ent_outer_defaults(void) {
    return (ent_outer_opt){.lr = ENT_OUTER_LR, .momentum = ENT_OUTER_MOMENTUM};
}

static ent_status check_opt(const ent_outer_opt *opt) {
    if (!(opt->lr > 0.0f) || !isfinite(opt->lr))
        return ent_fail(ENT_ERR_USAGE, "outer learning rate %g must be finite and above 0",
                        (double)opt->lr);
    if (!(opt->momentum >= 0.0f && opt->momentum < 1.0f))
        return ent_fail(ENT_ERR_USAGE, "outer momentum %g must be in [0, 1)",
                        (double)opt->momentum);
    return ENT_OK;
}

// One element's outer step: the momentum moves to mu m + g and the update
// is lr (g + mu m) with the new m (the one formula both calls below use).
static inline float nesterov(float lr, float mu, float *m, float g) {
    float next = mu * *m + g;
    *m = next;
    return lr * (g + mu * next);
}

ent_status ent_outer_nesterov_update(const ent_outer_opt *opt, float *momentum, const float *g,
                                     float *update, size_t n) {
    ENT_CHECK(check_opt(opt));
    const float lr = opt->lr, mu = opt->momentum;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++) update[i] = nesterov(lr, mu, &momentum[i], g[i]);
    return ENT_OK;
}

ent_status ent_outer_nesterov_step(const ent_outer_opt *opt, float *anchor, float *momentum,
                                   const float *g, size_t n) {
    ENT_CHECK(check_opt(opt));
    const float lr = opt->lr, mu = opt->momentum;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++) anchor[i] -= nesterov(lr, mu, &momentum[i], g[i]);
    return ENT_OK;
}

uint64_t ent_anchor_hash(const float *x, size_t n) {
    static const float none = 0.0f;
    return ent_hash_bytes(n > 0 ? (const void *)x : (const void *)&none, n * sizeof(float), 0);
}
