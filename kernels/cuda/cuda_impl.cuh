// cuda_impl.cuh: private to kernels/cuda (C++, included by its .cu files only).
//
// The backend's device state, the storage types, the launch helpers and the
// ops behind its table. Precision: each kernel that reads or writes
// activations or parameters in compute is a template over its storage type
// T, with ent_load / ent_store converting to and from f32; the table's entry
// calls the float or the __nv_bfloat16 instantiation by the backend's
// precision (system.precision; ent_cuda_entry). Arithmetic is f32
// throughout, reductions of norms in double; masters, moments, parameters'
// gradients and statistics are f32 in both.
#ifndef ENT_CUDA_IMPL_CUH
#define ENT_CUDA_IMPL_CUH

#include "../ent_kernels.h"
#include "../kernel_math.h"
#include "cuda_backend.h"

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

// cuBLASLt, opened when the first cuda backend starts (ent_cuda_lt_load),
// not linked: loading it cost every entente process 0.18 s at start, a
// CPU-only `ckpt verify` or `--help` included. Its functions are called
// through ent_lt (ent_lt.Matmul for cublasLtMatmul, ...).
#define ENT_LT_FUNCTIONS(X) \
    X(Create) \
    X(Destroy) \
    X(GetStatusString) \
    X(GetVersion) \
    X(Matmul) \
    X(MatmulAlgoGetHeuristic) \
    X(MatmulDescCreate) \
    X(MatmulDescDestroy) \
    X(MatmulDescSetAttribute) \
    X(MatmulPreferenceCreate) \
    X(MatmulPreferenceDestroy) \
    X(MatmulPreferenceSetAttribute) \
    X(MatrixLayoutCreate) \
    X(MatrixLayoutDestroy)

struct ent_lt_api {
#define ENT_LT_FIELD(name) decltype(&cublasLt##name) name;
    ENT_LT_FUNCTIONS(ENT_LT_FIELD)
#undef ENT_LT_FIELD
};
extern ent_lt_api ent_lt;
// Opens cuBLASLt once (the soname of the headers built against, then the
// toolkit's directory found at build time); an error names the library.
ent_status ent_cuda_lt_load(void);

// The ops of the backend table that these kernels implement, all but the
// matrix products (cuBLASLt): X(op) for each, so that the cuda backend's
// table and the CPU emulator's (tests/cuda_emu) list them once. The storage
// ops are templates over the storage type (below); the f32 ops are not.
#define ENT_CUDA_STORAGE_OPS(X) X(encoder_forward) X(encoder_backward) X(layernorm_forward) \
    X(layernorm_backward) X(attention_forward) X(attention_backward) \
    X(gelu_forward) X(gelu_backward) X(residual_forward) X(residual_backward) \
    X(residual_layernorm_forward) X(residual_rmsnorm_forward) \
    X(softmax_xent_forward) X(softmax_xent_backward) X(rmsnorm_forward) X(rmsnorm_backward) \
    X(rope_forward) X(rope_backward) X(swiglu_forward) X(swiglu_backward) X(gqa_forward) \
    X(gqa_backward) X(adamw_update)
#define ENT_CUDA_F32_OPS(X) X(attention_state_bytes) X(sum_squares) X(sub) X(axpy) \
    X(quantize_i8) X(dequantize_i8) X(cast)
// i.op = the entry that calls the instantiation of the backend's precision
// (ent_cuda_entry below), in a function that fills a table i
#define ENT_CUDA_STORAGE_ENTRY(op) \
    i.op = ent_cuda_entry<decltype(i.op), &ent_cuda_##op<float>, \
                          &ent_cuda_##op<__nv_bfloat16>>::call;
#define ENT_CUDA_F32_ENTRY(op) i.op = ent_cuda_##op;
#define ENT_CUDA_TABLE_ENTRIES                   \
    ENT_CUDA_STORAGE_OPS(ENT_CUDA_STORAGE_ENTRY) \
    ENT_CUDA_F32_OPS(ENT_CUDA_F32_ENTRY)

// ---------------------------------------------------------------------------
// device state

struct ent_cuda {
    int device, device_count;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_workspace; // cuBLASLt's workspace
    size_t lt_workspace_bytes;
    void *scratch; // device scratch of the reductions, grown on demand
    size_t scratch_bytes;
    void *host_scratch; // pinned host scratch (results, token buckets)
    size_t host_scratch_bytes;
    char desc[320];
};

static inline ent_cuda *ent_cuda_of(ent_backend_t *be) { return (ent_cuda *)be->impl; }

// At least `bytes` of device (or pinned host) scratch, valid until the next
// call for more; growing waits for the stream, so work queued earlier that
// still reads the old scratch has finished.
ent_status ent_cuda_scratch(ent_backend_t *be, size_t bytes, void **out);
ent_status ent_cuda_host_scratch(ent_backend_t *be, size_t bytes, void **out);

// The status of the launch just made: ENT_ERR_INTERNAL naming the op when it failed.
ent_status ent_cuda_launched(const char *op);

// ---------------------------------------------------------------------------
// storage types: f32 in registers, T in memory

template <typename T> __device__ __forceinline__ float ent_load(const T *p);
template <> __device__ __forceinline__ float ent_load<float>(const float *p) { return *p; }
template <> __device__ __forceinline__ float ent_load<__nv_bfloat16>(const __nv_bfloat16 *p) {
    return ent_k_bf16_to_f32(*reinterpret_cast<const uint16_t *>(p));
}

template <typename T> __device__ __forceinline__ void ent_store(T *p, float x);
template <> __device__ __forceinline__ void ent_store<float>(float *p, float x) { *p = x; }
template <> __device__ __forceinline__ void ent_store<__nv_bfloat16>(__nv_bfloat16 *p, float x) {
    *reinterpret_cast<uint16_t *>(p) = ent_k_f32_to_bf16(x); // round to nearest even
}

// ---------------------------------------------------------------------------
// launch shapes and warp reductions

#define ENT_CUDA_THREADS 256
#define ENT_CUDA_FULL_MASK 0xffffffffu

// Blocks of ENT_CUDA_THREADS for n elements in a grid-stride loop (capped:
// every kernel that uses it loops).
static inline unsigned ent_cuda_blocks(size_t n) {
    size_t b = (n + ENT_CUDA_THREADS - 1) / ENT_CUDA_THREADS;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

// Butterfly reductions: every lane ends with the same value, summed in the
// same order on every run.
__device__ __forceinline__ float ent_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(ENT_CUDA_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float ent_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(ENT_CUDA_FULL_MASK, v, o));
    return v;
}

// ---------------------------------------------------------------------------
// deterministic column sums: acc (C) += sum over rows n < N of f(n, c), rows
// summed in order within fixed chunks and the chunks in order, with no
// atomics, so that the result depends on N and C only.

#define ENT_COLSUM_ROWS 256 // rows per chunk

template <typename F>
__global__ void ent_colsum_partial_kernel(float *partial, int N, int C, F f) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int n0 = blockIdx.y * ENT_COLSUM_ROWS, n1 = min(N, n0 + ENT_COLSUM_ROWS);
    float s = 0.0f;
    for (int n = n0; n < n1; n++) s += f(n, c);
    partial[(size_t)blockIdx.y * C + c] = s;
}

// f(n, c) = x[n * ld + c]: the plain column sums of a row-major matrix
template <typename T> struct ent_matrix_value {
    const T *x;
    size_t ld;
    __device__ float operator()(int n, int c) const { return ent_load(x + (size_t)n * ld + c); }
};

__global__ void ent_colsum_finish_kernel(float *acc, const float *partial, int chunks, int C);

template <typename F>
ent_status ent_cuda_column_sums(ent_backend_t *be, float *acc, int N, int C, F f) {
    if (N <= 0 || C <= 0) return ENT_OK;
    int chunks = (N + ENT_COLSUM_ROWS - 1) / ENT_COLSUM_ROWS;
    void *partial = NULL;
    ENT_CHECK(ent_cuda_scratch(be, sizeof(float) * (size_t)chunks * C, &partial));
    cudaStream_t s = ent_cuda_of(be)->stream;
    dim3 grid((C + ENT_CUDA_THREADS - 1) / ENT_CUDA_THREADS, chunks);
    ent_colsum_partial_kernel<<<grid, ENT_CUDA_THREADS, 0, s>>>((float *)partial, N, C, f);
    ENT_CHECK(ent_cuda_launched("column sums"));
    ent_colsum_finish_kernel<<<(C + ENT_CUDA_THREADS - 1) / ENT_CUDA_THREADS, ENT_CUDA_THREADS, 0,
                               s>>>(acc, (const float *)partial, chunks, C);
    return ent_cuda_launched("column sums");
}

// ---------------------------------------------------------------------------
// the ops (signatures of struct ent_backend_i; shapes in ent_kernels.h)
//
// The ops of ENT_CUDA_STORAGE_OPS are templates over T, the storage type of
// the activations and the parameters they read: the table's entry takes the
// float or the __nv_bfloat16 instantiation by the backend's precision, and
// tests/cuda_emu checks both on the CPU. Parameter gradients, statistics (mean, rstd, losses), attention's state,
// the rotation tables and AdamW's master and moments are float in both.

template <typename T>
ent_status ent_cuda_encoder_forward(ent_backend_t *be, T *out, const int32_t *tokens,
                                    const T *wte, const T *wpe, int B, int T_, int C);
template <typename T>
ent_status ent_cuda_encoder_backward(ent_backend_t *be, float *dwte, float *dwpe, const T *dout,
                                     const int32_t *tokens, int B, int T_, int C);
template <typename T>
ent_status ent_cuda_layernorm_forward(ent_backend_t *be, T *out, float *mean, float *rstd,
                                      const T *inp, const T *weight, const T *bias, int N, int C);
template <typename T>
ent_status ent_cuda_layernorm_backward(ent_backend_t *be, T *dinp, float *dweight, float *dbias,
                                       const T *dout, const T *inp, const T *weight,
                                       const float *mean, const float *rstd, int N, int C);
// the matrix products take the table's void * and read the types from be
ent_status ent_cuda_matmul_forward(ent_backend_t *be, void *out, const void *inp,
                                   const void *weight, const void *bias, int N, int C, int OC);
ent_status ent_cuda_matmul_backward(ent_backend_t *be, void *dinp, float *dweight, float *dbias,
                                    const void *dout, const void *inp, const void *weight,
                                    int N, int C, int OC);
ent_status ent_cuda_matmul_gelu_forward(ent_backend_t *be, void *pre, void *out, const void *inp,
                                        const void *weight, const void *bias, int N, int C,
                                        int OC);
size_t ent_cuda_attention_state_bytes(ent_backend_t *be, int B, int T, int NH);
template <typename T>
ent_status ent_cuda_attention_forward(ent_backend_t *be, T *out, float *att, const T *qkv, int B,
                                      int T_, int C, int NH);
template <typename T>
ent_status ent_cuda_attention_backward(ent_backend_t *be, T *dqkv, float *scratch, const T *dout,
                                       const T *qkv, const float *att, int B, int T_, int C,
                                       int NH);
template <typename T>
ent_status ent_cuda_gelu_forward(ent_backend_t *be, T *out, const T *inp, size_t n);
template <typename T>
ent_status ent_cuda_gelu_backward(ent_backend_t *be, T *dinp, const T *inp, const T *dout,
                                  size_t n);
template <typename T>
ent_status ent_cuda_residual_forward(ent_backend_t *be, T *out, const T *a, const T *b, size_t n);
template <typename T>
ent_status ent_cuda_residual_backward(ent_backend_t *be, T *da, T *db, const T *dout, size_t n);
template <typename T>
ent_status ent_cuda_residual_layernorm_forward(ent_backend_t *be, T *res, T *out, float *mean,
                                               float *rstd, const T *a, const T *b,
                                               const T *weight, const T *bias, int N, int C);
template <typename T>
ent_status ent_cuda_residual_rmsnorm_forward(ent_backend_t *be, T *res, T *out, float *rstd,
                                             const T *a, const T *b, const T *weight, float eps,
                                             int N, int C);
template <typename T>
ent_status ent_cuda_softmax_xent_forward(ent_backend_t *be, float *losses, T *probs,
                                         const T *logits, const int32_t *targets, int N, int V,
                                         int Vp);
template <typename T>
ent_status ent_cuda_softmax_xent_backward(ent_backend_t *be, T *dlogits, const T *probs,
                                          const int32_t *targets, float dloss, int N, int V,
                                          int Vp);
template <typename T>
ent_status ent_cuda_rmsnorm_forward(ent_backend_t *be, T *out, float *rstd, const T *inp,
                                    const T *weight, float eps, int N, int C);
template <typename T>
ent_status ent_cuda_rmsnorm_backward(ent_backend_t *be, T *dinp, float *dweight, const T *dout,
                                     const T *inp, const T *weight, const float *rstd, int N,
                                     int C);
template <typename T>
ent_status ent_cuda_rope_forward(ent_backend_t *be, T *x, const float *cos_t, const float *sin_t,
                                 int B, int T_, int H, int hd);
template <typename T>
ent_status ent_cuda_rope_backward(ent_backend_t *be, T *dx, const float *cos_t,
                                  const float *sin_t, int B, int T_, int H, int hd);
template <typename T>
ent_status ent_cuda_swiglu_forward(ent_backend_t *be, T *out, const T *gate, const T *up,
                                   size_t n);
template <typename T>
ent_status ent_cuda_swiglu_backward(ent_backend_t *be, T *dgate, T *dup, const T *dout,
                                    const T *gate, const T *up, size_t n);
template <typename T>
ent_status ent_cuda_gqa_forward(ent_backend_t *be, T *out, float *att, const T *q, const T *k,
                                const T *v, ent_gqa_shape s);
template <typename T>
ent_status ent_cuda_gqa_backward(ent_backend_t *be, T *dq, T *dk, T *dv, float *scratch,
                                 const T *dout, const T *q, const T *k, const T *v,
                                 const float *att, ent_gqa_shape s);
// params in T beside their f32 master (NULL, or params itself when T is
// float: the params are their own master)
template <typename T>
ent_status ent_cuda_adamw_update(ent_backend_t *be, T *params, float *master, const float *grads,
                                 float *m, float *v, size_t n, float lr, float beta1, float beta2,
                                 float eps, float weight_decay, float grad_scale, int t);

// The table's entry of a storage op: its instantiation for the backend's
// precision (be->act_dtype; the parameters in compute have the same type),
// called with each `void *` of the table turned into a pointer to that type
// and every other argument as it is.
template <typename... P, typename... A>
static inline ent_status ent_cuda_call(ent_status (*op)(ent_backend_t *, P...), ent_backend_t *be,
                                       A... a) {
    return op(be, (P)a...);
}
template <typename Entry, auto F32, auto BF16> struct ent_cuda_entry;
template <typename... A, auto F32, auto BF16>
struct ent_cuda_entry<ent_status (*)(ent_backend_t *, A...), F32, BF16> {
    static ent_status call(ent_backend_t *be, A... a) {
        return be->act_dtype == ENT_BF16 ? ent_cuda_call(BF16, be, a...)
                                         : ent_cuda_call(F32, be, a...);
    }
};

// Both instantiations of a storage op, in the file that defines it.
#define ENT_CUDA_INSTANTIATE(op) \
    template decltype(ent_cuda_##op<float>) ent_cuda_##op<float>; \
    template decltype(ent_cuda_##op<__nv_bfloat16>) ent_cuda_##op<__nv_bfloat16>;

ent_status ent_cuda_sum_squares(ent_backend_t *be, const float *x, size_t n, double *out);
ent_status ent_cuda_sub(ent_backend_t *be, float *out, const float *a, const float *b, size_t n);
ent_status ent_cuda_axpy(ent_backend_t *be, float *y, float alpha, const float *x, size_t n);
ent_status ent_cuda_quantize_i8(ent_backend_t *be, int8_t *q, float *scales, const float *x,
                                size_t n, size_t block);
ent_status ent_cuda_dequantize_i8(ent_backend_t *be, float *out, const int8_t *q,
                                  const float *scales, size_t n, size_t block);
// dst (n values in be->param_dtype) = src, rounded to nearest even
ent_status ent_cuda_cast(ent_backend_t *be, void *dst, const float *src, size_t n);

#endif // ENT_CUDA_IMPL_CUH
