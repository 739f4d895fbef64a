// matmul.c: the linear layer on OpenBLAS. out (N,OC) = inp (N,C) @ weight^T + bias.
// Every FLOP of the model's dense layers goes through cblas_sgemm here, so the
// CPU backend runs at the speed of the BLAS it links.
#include "cpu_impl.h"

#include <cblas.h>
#include <string.h>

void ent_cpu_add_column_sums(float *acc, const float *x, int N, int C) {
    int nblocks = (C + ENT_CPU_COL_BLOCK - 1) / ENT_CPU_COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * ENT_CPU_COL_BLOCK;
        int c1 = c0 + ENT_CPU_COL_BLOCK < C ? c0 + ENT_CPU_COL_BLOCK : C;
        float sum[ENT_CPU_COL_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float *row = x + (size_t)n * C;
            for (int c = c0; c < c1; c++) sum[c - c0] += row[c];
        }
        for (int c = c0; c < c1; c++) acc[c] += sum[c - c0];
    }
}

ent_status ent_cpu_matmul_forward(ent_backend_t *be, float *out, const float *inp,
                                  const float *weight, const float *bias, int N, int C, int OC) {
    (void)be;
    float beta = 0.0f;
    if (bias != NULL) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, sizeof(float) * OC);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C,
                beta, out, OC);
    return ENT_OK;
}

ent_status ent_cpu_matmul_backward(ent_backend_t *be, float *dinp, float *dweight, float *dbias,
                                   const float *dout, const float *inp, const float *weight,
                                   int N, int C, int OC) {
    (void)be;
    // dinp (N,C) += dout (N,OC) @ weight (OC,C)
    if (dinp != NULL)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight,
                    C, 1.0f, dinp, C);
    // dweight (OC,C) += dout^T (OC,N) @ inp (N,C)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C,
                1.0f, dweight, C);
    if (dbias != NULL) ent_cpu_add_column_sums(dbias, dout, N, OC);
    return ENT_OK;
}
