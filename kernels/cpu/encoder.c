// encoder.c: token + position embedding. out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:],
// or the token embedding alone when wpe is NULL (the Llama family: rotary positions).
#include "cpu_impl.h"

ent_status ent_cpu_encoder_forward(ent_backend_t *be, float *out, const int32_t *tokens,
                                   const float *wte, const float *wpe, int B, int T, int C) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        int t = bt % T;
        const float *w = wte + (size_t)tokens[bt] * C;
        float *o = out + (size_t)bt * C;
        if (wpe == NULL) {
            for (int c = 0; c < C; c++) o[c] = w[c];
            continue;
        }
        const float *p = wpe + (size_t)t * C;
        for (int c = 0; c < C; c++) o[c] = w[c] + p[c];
    }
    return ENT_OK;
}

ent_status ent_cpu_encoder_backward(ent_backend_t *be, float *dwte, float *dwpe, const float *dout,
                                    const int32_t *tokens, int B, int T, int C) {
    (void)be;
    // Parallel over channel blocks: a token may repeat within the batch, so
    // rows of dwte would race; columns never do. Rows are summed in order.
    int nblocks = (C + ENT_CPU_COL_BLOCK - 1) / ENT_CPU_COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * ENT_CPU_COL_BLOCK;
        int c1 = c0 + ENT_CPU_COL_BLOCK < C ? c0 + ENT_CPU_COL_BLOCK : C;
        for (int bt = 0; bt < B * T; bt++) {
            const float *d = dout + (size_t)bt * C;
            float *w = dwte + (size_t)tokens[bt] * C;
            if (dwpe == NULL) {
                for (int c = c0; c < c1; c++) w[c] += d[c];
                continue;
            }
            float *p = dwpe + (size_t)(bt % T) * C;
            for (int c = c0; c < c1; c++) {
                w[c] += d[c];
                p[c] += d[c];
            }
        }
    }
    return ENT_OK;
}
