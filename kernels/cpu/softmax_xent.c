// softmax_xent.c: softmax over the vocabulary fused with cross-entropy.
// Only the first V of the Vp (padded) logits take part; padding gets probability 0.
#include "cpu_impl.h"

#include <math.h>

ent_status ent_cpu_softmax_xent_forward(ent_backend_t *be, float *losses, float *probs,
                                        const float *logits, const int32_t *targets,
                                        int N, int V, int Vp) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * Vp;
        float *p = probs + (size_t)n * Vp;
        float maxv = x[0];
        for (int i = 1; i < V; i++) maxv = x[i] > maxv ? x[i] : maxv;
        // the target's logit is read before probs (which may alias logits) is written
        float target_logit = targets != NULL ? x[targets[n]] : 0.0f;
        double sum = 0.0;
        for (int i = 0; i < V; i++) {
            float e = ent_k_expf(x[i] - maxv);
            p[i] = e;
            sum += e;
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < V; i++) p[i] *= inv;
        for (int i = V; i < Vp; i++) p[i] = 0.0f;
        // loss = log(sum exp) - logit[target], exact even where the probability underflows
        if (targets != NULL) losses[n] = (float)(log(sum) + maxv - target_logit);
    }
    return ENT_OK;
}

ent_status ent_cpu_softmax_xent_backward(ent_backend_t *be, float *dlogits, const float *probs,
                                         const int32_t *targets, float dloss, int N, int V,
                                         int Vp) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * Vp;
        float *d = dlogits + (size_t)n * Vp;
        int target = targets[n];
        for (int i = 0; i < V; i++) d[i] = (p[i] - (i == target ? 1.0f : 0.0f)) * dloss;
        for (int i = V; i < Vp; i++) d[i] = 0.0f;
    }
    return ENT_OK;
}
