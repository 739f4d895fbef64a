// matmul.cu: the linear layer through cuBLASLt, out (N,OC) = inp (N,C) @ weight^T + bias.
//
// cuBLASLt is column-major: a row-major (R, K) matrix is a column-major
// (K, R) one, so each product below is written on the transposes. The
// storage types follow the backend's precision: bf16 activations and
// weights with f32 accumulation (CUBLAS_COMPUTE_32F) and the weights'
// gradients accumulated into f32 (C and D f32, beta 1); or f32 throughout on
// TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32). The forward's bias (in
// the weights' type) is cuBLASLt's bias epilogue, and GPT-2's MLP takes
// its GELU as an epilogue too (GELU_AUX_BIAS: the pre-activation written
// beside the output, one pass over the (N, 4C) activations saved); the bias
// gradient is a deterministic column sum.
// cuBLAS gives the same bits on every run on GPUs of one architecture, which
// the data-parallel check of bit-identical replicas relies on.
#include "cuda_impl.cuh"

#include <stdint.h>

// the largest power of two (at most 256) that divides the address: what the
// heuristics may assume of each matrix
static uint32_t alignment_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t align = 256;
    while (align > 1 && a % align != 0) align >>= 1;
    return align;
}

typedef struct {
    const void *ptr;
    cudaDataType_t type;
    int rows, cols, ld; // column-major, as stored
    int transpose;
} lt_operand;

// D (m,n) = alpha * op(A) (m,k) @ op(B) (k,n) + beta * D [+ bias (m) on each column],
// all column-major. D is read (beta != 0) and written in place. gelu_pre
// not NULL: D = gelu(that), and gelu_pre (laid out as D) holds its input.
static ent_status lt_matmul(ent_backend_t *be, const char *what, lt_operand a, lt_operand b,
                            void *d, cudaDataType_t d_type, int m, int n, int ldd,
                            const void *bias, float beta, void *gelu_pre) {
    ent_cuda *cu = ent_cuda_of(be);
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    ent_status st = ENT_OK;
    cublasStatus_t rc;
    float alpha = 1.0f;
    cublasOperation_t ta = a.transpose ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t tb = b.transpose ? CUBLAS_OP_T : CUBLAS_OP_N;
    uint32_t align_a = alignment_of(a.ptr), align_b = alignment_of(b.ptr), align_d = alignment_of(d);
    uint64_t ws = cu->lt_workspace_bytes;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
#define LT(call)                                                                                   \
    do {                                                                                           \
        rc = (call);                                                                               \
        if (rc != CUBLAS_STATUS_SUCCESS) {                                                         \
            st = ent_fail(ENT_ERR_INTERNAL, "cuda backend: %s (%dx%d): %s: %s", what, m, n, #call, \
                          ent_lt.GetStatusString(rc));                                            \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)
    int bf16 = be->act_dtype == ENT_BF16;
    LT(ent_lt.MatmulDescCreate(&desc, bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32,
                               CUDA_R_32F));
    LT(ent_lt.MatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT(ent_lt.MatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (bias != NULL || gelu_pre != NULL) {
        cublasLtEpilogue_t epi = gelu_pre == NULL ? CUBLASLT_EPILOGUE_BIAS
                                 : bias != NULL   ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                                  : CUBLASLT_EPILOGUE_GELU_AUX;
        LT(ent_lt.MatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    }
    if (bias != NULL) {
        cudaDataType_t bias_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
        LT(ent_lt.MatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                          sizeof bias));
        LT(ent_lt.MatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                          sizeof bias_type));
    }
    if (gelu_pre != NULL) { // in D's type, D's leading dimension
        int64_t ld_pre = ldd;
        LT(ent_lt.MatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                          &gelu_pre, sizeof gelu_pre));
        LT(ent_lt.MatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_pre,
                                          sizeof ld_pre));
    }
    LT(ent_lt.MatrixLayoutCreate(&la, a.type, a.rows, a.cols, a.ld));
    LT(ent_lt.MatrixLayoutCreate(&lb, b.type, b.rows, b.cols, b.ld));
    LT(ent_lt.MatrixLayoutCreate(&ld, d_type, m, n, ldd));
    LT(ent_lt.MatmulPreferenceCreate(&pref));
    LT(ent_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                            sizeof ws));
    LT(ent_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                            &align_a, sizeof align_a));
    LT(ent_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                            &align_b, sizeof align_b));
    LT(ent_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                            &align_d, sizeof align_d));
    LT(ent_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                            &align_d, sizeof align_d));
    LT(ent_lt.MatmulAlgoGetHeuristic(cu->lt, desc, la, lb, ld, ld, pref, 1, &heur, &found));
    if (found == 0) {
        st = ent_fail(ENT_ERR_INTERNAL, "cuda backend: %s: cuBLASLt has no algorithm for "
                      "(%d x %d) = op(%d x %d) @ op(%d x %d)", what, m, n, a.rows, a.cols, b.rows,
                      b.cols);
        goto done;
    }
    LT(ent_lt.Matmul(cu->lt, desc, &alpha, a.ptr, la, b.ptr, lb, &beta, d, ld, d, ld,
                      &heur.algo, cu->lt_workspace, cu->lt_workspace_bytes, cu->stream));
#undef LT
done:
    if (pref != NULL) ent_lt.MatmulPreferenceDestroy(pref);
    if (ld != NULL) ent_lt.MatrixLayoutDestroy(ld);
    if (lb != NULL) ent_lt.MatrixLayoutDestroy(lb);
    if (la != NULL) ent_lt.MatrixLayoutDestroy(la);
    if (desc != NULL) ent_lt.MatmulDescDestroy(desc);
    return st;
}

// the cuBLASLt type of the backend's activations and parameters in compute
static cudaDataType_t storage_type(ent_backend_t *be) {
    return be->act_dtype == ENT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

ent_status ent_cuda_matmul_forward(ent_backend_t *be, void *out, const void *inp,
                                   const void *weight, const void *bias, int N, int C, int OC) {
    // out^T (OC,N) = weight (C,OC col-major)^T @ inp^T (C,N)
    cudaDataType_t t = storage_type(be);
    lt_operand w = {weight, t, C, OC, C, 1};
    lt_operand x = {inp, t, C, N, C, 0};
    return lt_matmul(be, "matmul_forward", w, x, out, t, OC, N, OC, bias, 0.0f, NULL);
}

ent_status ent_cuda_matmul_gelu_forward(ent_backend_t *be, void *pre, void *out, const void *inp,
                                        const void *weight, const void *bias, int N, int C,
                                        int OC) {
    // cuBLASLt's GELU input needs a leading dimension divisible by 8 (and
    // 16-byte aligned rows): other widths take the two ops
    size_t row = (size_t)OC * ent_dtype_size(be->act_dtype);
    if (OC % 8 != 0 || row % 16 != 0 || (uintptr_t)pre % 16 != 0) {
        ENT_CHECK(ent_cuda_matmul_forward(be, pre, inp, weight, bias, N, C, OC));
        return be->iface->gelu_forward(be, out, pre, (size_t)N * OC);
    }
    cudaDataType_t t = storage_type(be);
    lt_operand w = {weight, t, C, OC, C, 1};
    lt_operand x = {inp, t, C, N, C, 0};
    return lt_matmul(be, "matmul_gelu_forward", w, x, out, t, OC, N, OC, bias, 0.0f, pre);
}

ent_status ent_cuda_matmul_backward(ent_backend_t *be, void *dinp, float *dweight, float *dbias,
                                    const void *dout, const void *inp, const void *weight,
                                    int N, int C, int OC) {
    // dinp^T (C,N) += weight (C,OC col-major) @ dout^T (OC,N)
    cudaDataType_t t = storage_type(be);
    lt_operand w = {weight, t, C, OC, C, 0};
    lt_operand dy = {dout, t, OC, N, OC, 0};
    if (dinp != NULL)
        ENT_CHECK(lt_matmul(be, "matmul_backward (input)", w, dy, dinp, t, C, N, C, NULL, 1.0f,
                            NULL));
    // dweight^T (C,OC) += inp^T (C,N) @ dout (N,OC): dout^T (OC,N) transposed; f32 C and D
    lt_operand x = {inp, t, C, N, C, 0};
    lt_operand dyt = {dout, t, OC, N, OC, 1};
    ENT_CHECK(lt_matmul(be, "matmul_backward (weight)", x, dyt, dweight, CUDA_R_32F, C, OC, C,
                        NULL, 1.0f, NULL));
    if (dbias == NULL) return ENT_OK;
    if (be->act_dtype == ENT_BF16) {
        ent_matrix_value<__nv_bfloat16> f = {(const __nv_bfloat16 *)dout, (size_t)OC};
        return ent_cuda_column_sums(be, dbias, N, OC, f);
    }
    ent_matrix_value<float> f = {(const float *)dout, (size_t)OC};
    return ent_cuda_column_sums(be, dbias, N, OC, f);
}
