// elementwise.cu: the cuda backend's element-wise and reduction ops: the
// embedding, GELU, the residual, SwiGLU, rotary embeddings, AdamW, the sum of
// squares, and the coalition's vector ops. The arithmetic of each element is
// kernel_math.h's.
#include "cuda_impl.cuh"

#include <stdlib.h>

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                        \
         i += (size_t)gridDim.x * blockDim.x)

#define LAUNCH(kernel, n, ...)                                                                     \
    do {                                                                                           \
        kernel<<<ent_cuda_blocks(n), ENT_CUDA_THREADS, 0, ent_cuda_of(be)->stream>>>(__VA_ARGS__); \
        return ent_cuda_launched(#kernel);                                                         \
    } while (0)

// ---------------------------------------------------------------------------
// embedding

template <typename T>
__global__ void encoder_forward_kernel(T *out, const int32_t *tokens, const T *wte, const T *wpe,
                                       int T_, int C, size_t n) {
    GRID_STRIDE(i, n) {
        size_t bt = i / C;
        int c = (int)(i % C);
        float w = ent_load(wte + (size_t)tokens[bt] * C + c);
        float p = wpe != NULL ? ent_load(wpe + (bt % T_) * C + c) : 0.0f;
        ent_store(out + i, w + p);
    }
}

template <typename T>
ent_status ent_cuda_encoder_forward(ent_backend_t *be, T *out, const int32_t *tokens,
                                    const T *wte, const T *wpe, int B, int T_, int C) {
    size_t n = (size_t)B * T_ * C;
    LAUNCH(encoder_forward_kernel<T>, n, out, tokens, wte, wpe, T_, C, n);
}

// dwte: one block row per distinct token, summing its positions in order
template <typename T>
__global__ void encoder_backward_wte_kernel(float *dwte, const T *dout, const int32_t *uniq,
                                            const int32_t *offsets, const int32_t *positions,
                                            int C) {
    int u = blockIdx.y;
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int k = offsets[u]; k < offsets[u + 1]; k++)
        s += ent_load(dout + (size_t)positions[k] * C + c);
    dwte[(size_t)uniq[u] * C + c] += s;
}

static int by_token_then_position(const void *a, const void *b) {
    const int32_t *x = (const int32_t *)a, *y = (const int32_t *)b;
    if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

// A token may repeat within the batch, so rows of dwte would race: the
// positions are bucketed by token on the host (the tokens are B*T integers)
// and each bucket summed in position order, which makes the result
// deterministic. dwpe is the column sums of dout seen as (B, T*C).
template <typename T>
ent_status ent_cuda_encoder_backward(ent_backend_t *be, float *dwte, float *dwpe, const T *dout,
                                     const int32_t *tokens, int B, int T_, int C) {
    ent_cuda *cu = ent_cuda_of(be);
    int BT = B * T_;
    if (BT <= 0) return ENT_OK;
    ent_matrix_value<T> rows = {dout, (size_t)T_ * C};
    if (dwpe != NULL) ENT_CHECK(ent_cuda_column_sums(be, dwpe, B, T_ * C, rows));
    // host: pairs (token, position) sorted, then uniq (U), offsets (U+1), positions (BT)
    size_t ints = (size_t)2 * BT + 2 * BT + 1 + BT;
    void *h = NULL, *d = NULL;
    ENT_CHECK(ent_cuda_host_scratch(be, sizeof(int32_t) * ints, &h));
    int32_t *pairs = (int32_t *)h, *tok = pairs + 2 * BT;
    ENT_CUDA_CHECK(cudaMemcpyAsync(tok, tokens, sizeof(int32_t) * BT, cudaMemcpyDeviceToHost,
                                   cu->stream));
    ENT_CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    for (int i = 0; i < BT; i++) {
        pairs[2 * i] = tok[i];
        pairs[2 * i + 1] = i;
    }
    qsort(pairs, BT, 2 * sizeof(int32_t), by_token_then_position);
    int32_t *uniq = pairs + 2 * BT; // over tok, which is read
    int32_t *offsets = uniq + BT, *positions = offsets + BT + 1;
    int U = 0;
    for (int i = 0; i < BT; i++) {
        if (i == 0 || pairs[2 * i] != pairs[2 * i - 2]) {
            uniq[U] = pairs[2 * i];
            offsets[U++] = i;
        }
        positions[i] = pairs[2 * i + 1];
    }
    offsets[U] = BT;
    size_t dev_ints = (size_t)BT + BT + 1 + BT;
    ENT_CHECK(ent_cuda_scratch(be, sizeof(int32_t) * dev_ints, &d));
    int32_t *duniq = (int32_t *)d, *doffsets = duniq + BT, *dpositions = doffsets + BT + 1;
    ENT_CUDA_CHECK(cudaMemcpyAsync(duniq, uniq, sizeof(int32_t) * (size_t)U,
                                   cudaMemcpyHostToDevice, cu->stream));
    ENT_CUDA_CHECK(cudaMemcpyAsync(doffsets, offsets, sizeof(int32_t) * (size_t)(U + 1),
                                   cudaMemcpyHostToDevice, cu->stream));
    ENT_CUDA_CHECK(cudaMemcpyAsync(dpositions, positions, sizeof(int32_t) * (size_t)BT,
                                   cudaMemcpyHostToDevice, cu->stream));
    dim3 grid((C + ENT_CUDA_THREADS - 1) / ENT_CUDA_THREADS, U);
    encoder_backward_wte_kernel<T><<<grid, ENT_CUDA_THREADS, 0, cu->stream>>>(
        dwte, dout, duniq, doffsets, dpositions, C);
    ENT_CHECK(ent_cuda_launched("encoder_backward"));
    // the host buckets stay in use until the copies have run
    ENT_CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// GELU and the residual

template <typename T> __global__ void gelu_forward_kernel(T *out, const T *inp, size_t n) {
    GRID_STRIDE(i, n) ent_store(out + i, ent_k_gelu(ent_load(inp + i)));
}

template <typename T>
__global__ void gelu_backward_kernel(T *dinp, const T *inp, const T *dout, size_t n) {
    GRID_STRIDE(i, n) {
        float d = ent_load(dinp + i) + ent_load(dout + i) * ent_k_gelu_grad(ent_load(inp + i));
        ent_store(dinp + i, d);
    }
}

template <typename T>
ent_status ent_cuda_gelu_forward(ent_backend_t *be, T *out, const T *inp, size_t n) {
    LAUNCH(gelu_forward_kernel<T>, n, out, inp, n);
}

template <typename T>
ent_status ent_cuda_gelu_backward(ent_backend_t *be, T *dinp, const T *inp, const T *dout,
                                  size_t n) {
    LAUNCH(gelu_backward_kernel<T>, n, dinp, inp, dout, n);
}

template <typename T>
__global__ void residual_forward_kernel(T *out, const T *a, const T *b, size_t n) {
    GRID_STRIDE(i, n) ent_store(out + i, ent_load(a + i) + ent_load(b + i));
}

template <typename T>
__global__ void residual_backward_kernel(T *da, T *db, const T *dout, size_t n) {
    GRID_STRIDE(i, n) {
        float d = ent_load(dout + i);
        ent_store(da + i, ent_load(da + i) + d);
        ent_store(db + i, ent_load(db + i) + d);
    }
}

template <typename T>
ent_status ent_cuda_residual_forward(ent_backend_t *be, T *out, const T *a, const T *b, size_t n) {
    LAUNCH(residual_forward_kernel<T>, n, out, a, b, n);
}

template <typename T>
ent_status ent_cuda_residual_backward(ent_backend_t *be, T *da, T *db, const T *dout, size_t n) {
    LAUNCH(residual_backward_kernel<T>, n, da, db, dout, n);
}

// ---------------------------------------------------------------------------
// the Llama family's element-wise ops: SwiGLU, and rotary embeddings in place

template <typename T>
__global__ void swiglu_forward_kernel(T *out, const T *gate, const T *up, size_t n) {
    GRID_STRIDE(i, n) ent_store(out + i, ent_k_swiglu(ent_load(gate + i), ent_load(up + i)));
}

template <typename T>
__global__ void swiglu_backward_kernel(T *dgate, T *dup, const T *dout, const T *gate, const T *up,
                                       size_t n) {
    GRID_STRIDE(i, n) {
        float dg, du;
        ent_k_swiglu_grad(ent_load(gate + i), ent_load(up + i), ent_load(dout + i), &dg, &du);
        ent_store(dgate + i, ent_load(dgate + i) + dg);
        ent_store(dup + i, ent_load(dup + i) + du);
    }
}

template <typename T>
ent_status ent_cuda_swiglu_forward(ent_backend_t *be, T *out, const T *gate, const T *up,
                                   size_t n) {
    LAUNCH(swiglu_forward_kernel<T>, n, out, gate, up, n);
}

template <typename T>
ent_status ent_cuda_swiglu_backward(ent_backend_t *be, T *dgate, T *dup, const T *dout,
                                    const T *gate, const T *up, size_t n) {
    LAUNCH(swiglu_backward_kernel<T>, n, dgate, dup, dout, gate, up, n);
}

// One thread per pair (i, i + hd/2) of a head of x (B,T,H*hd): pairs =
// B*T*H*(hd/2) of them (an odd hd's last value stays, as on the CPU); the
// angle of position t, frequency i is row t of the f32 tables cos_t, sin_t
// (T, hd/2). Back: the inverse rotation (the gradient's).
template <typename T, bool Back>
__global__ void rope_kernel(T *x, const float *cos_t, const float *sin_t, int T_, int H, int hd,
                            size_t pairs) {
    int half = hd / 2;
    GRID_STRIDE(e, pairs) {
        int i = (int)(e % half);
        size_t head = e / half; // (b, t, h) flattened
        int t = (int)((head / H) % T_);
        T *x0 = x + head * hd + i, *x1 = x0 + half;
        float c = cos_t[(size_t)t * half + i], s = sin_t[(size_t)t * half + i], y0, y1;
        if (Back) ent_k_rope_back(ent_load(x0), ent_load(x1), c, s, &y0, &y1);
        else ent_k_rope(ent_load(x0), ent_load(x1), c, s, &y0, &y1);
        ent_store(x0, y0);
        ent_store(x1, y1);
    }
}

template <typename T>
ent_status ent_cuda_rope_forward(ent_backend_t *be, T *x, const float *cos_t, const float *sin_t,
                                 int B, int T_, int H, int hd) {
    size_t pairs = (size_t)B * T_ * H * (hd / 2);
    if (pairs == 0) return ENT_OK;
    LAUNCH((rope_kernel<T, false>), pairs, x, cos_t, sin_t, T_, H, hd, pairs);
}

template <typename T>
ent_status ent_cuda_rope_backward(ent_backend_t *be, T *dx, const float *cos_t,
                                  const float *sin_t, int B, int T_, int H, int hd) {
    size_t pairs = (size_t)B * T_ * H * (hd / 2);
    if (pairs == 0) return ENT_OK;
    LAUNCH((rope_kernel<T, true>), pairs, dx, cos_t, sin_t, T_, H, hd, pairs);
}

// ---------------------------------------------------------------------------
// AdamW: f32 master weights and moments; params in their storage type P.
// master NULL: params are f32 and their own master.

template <typename P>
__global__ void adamw_kernel(P *params, float *master, const float *grads, float *m, float *v,
                             size_t n, ent_k_adamw_hp h) {
    GRID_STRIDE(i, n) {
        float w = master != NULL ? master[i] : ent_load(params + i);
        w = ent_k_adamw(&m[i], &v[i], grads[i], w, &h);
        if (master != NULL) master[i] = w;
        ent_store(params + i, w); // rounded to P
    }
}

template <typename T>
ent_status ent_cuda_adamw_update(ent_backend_t *be, T *params, float *master, const float *grads,
                                 float *m, float *v, size_t n, float lr, float beta1, float beta2,
                                 float eps, float weight_decay, float grad_scale, int t) {
    ent_k_adamw_hp h = ent_k_adamw_hparams(lr, beta1, beta2, eps, weight_decay, grad_scale, t);
    if ((void *)master == (void *)params) master = NULL;
    LAUNCH(adamw_kernel<T>, n, params, master, grads, m, v, n, h);
}

// ---------------------------------------------------------------------------
// sum of squares: a fixed grid of SUMSQ_BLOCKS blocks, each summing a fixed
// stride of x in double and reducing in a fixed tree; then one block sums the
// partials the same way. The bits depend on n only.

#define SUMSQ_BLOCKS 256

__device__ static void block_tree_sum(double *sh) {
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        __syncthreads();
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    }
    __syncthreads();
}

template <typename T> __global__ void sumsq_partial_kernel(double *partial, const T *x, size_t n) {
    __shared__ double sh[ENT_CUDA_THREADS];
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double v = ent_load(x + i);
        s += v * v;
    }
    sh[threadIdx.x] = s;
    block_tree_sum(sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

__global__ void sumsq_finish_kernel(double *out, const double *partial) {
    __shared__ double sh[SUMSQ_BLOCKS];
    sh[threadIdx.x] = partial[threadIdx.x];
    block_tree_sum(sh);
    if (threadIdx.x == 0) *out = sh[0];
}

ent_status ent_cuda_sum_squares(ent_backend_t *be, const float *x, size_t n, double *out) {
    static_assert(SUMSQ_BLOCKS == ENT_CUDA_THREADS, "the finishing block has one thread a block");
    ent_cuda *cu = ent_cuda_of(be);
    void *d = NULL, *h = NULL;
    ENT_CHECK(ent_cuda_scratch(be, sizeof(double) * (SUMSQ_BLOCKS + 1), &d));
    ENT_CHECK(ent_cuda_host_scratch(be, sizeof(double), &h));
    double *partial = (double *)d, *total = partial + SUMSQ_BLOCKS;
    sumsq_partial_kernel<float><<<SUMSQ_BLOCKS, ENT_CUDA_THREADS, 0, cu->stream>>>(partial, x, n);
    ENT_CHECK(ent_cuda_launched("sum_squares"));
    sumsq_finish_kernel<<<1, SUMSQ_BLOCKS, 0, cu->stream>>>(total, partial);
    ENT_CHECK(ent_cuda_launched("sum_squares"));
    ENT_CUDA_CHECK(cudaMemcpyAsync(h, total, sizeof(double), cudaMemcpyDeviceToHost, cu->stream));
    ENT_CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    *out = *(double *)h;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// the coalition's vector ops (f32 vectors)

__global__ void sub_kernel(float *out, const float *a, const float *b, size_t n) {
    GRID_STRIDE(i, n) out[i] = a[i] - b[i];
}

__global__ void axpy_kernel(float *y, float alpha, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

ent_status ent_cuda_sub(ent_backend_t *be, float *out, const float *a, const float *b, size_t n) {
    LAUNCH(sub_kernel, n, out, a, b, n);
}

ent_status ent_cuda_axpy(ent_backend_t *be, float *y, float alpha, const float *x, size_t n) {
    LAUNCH(axpy_kernel, n, y, alpha, x, n);
}

// One block per quantisation block (a grid-stride loop over them): the max
// |x| (NaN propagating; max is exact, so the order does not matter), the
// scale and the values, as the CPU's ent_block_scale and quantize.
__global__ void quantize_i8_kernel(int8_t *q, float *scales, const float *x, size_t n,
                                   size_t block, size_t nblocks) {
    __shared__ float sh[ENT_CUDA_THREADS];
    for (size_t k = blockIdx.x; k < nblocks; k += gridDim.x) {
        size_t i0 = k * block, i1 = i0 + block < n ? i0 + block : n;
        float amax = 0.0f;
        for (size_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) amax = ent_k_amax_add(amax, x[i]);
        sh[threadIdx.x] = amax;
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            __syncthreads();
            if ((int)threadIdx.x < s)
                sh[threadIdx.x] = ent_k_amax_add(sh[threadIdx.x], sh[threadIdx.x + s]);
        }
        __syncthreads();
        float inv;
        float scale = ent_k_block_scale(sh[0], 127.0f, &inv);
        if (threadIdx.x == 0) scales[k] = scale;
        for (size_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
            q[i] = (int8_t)ent_k_quantize(x[i], inv, 127.0f);
        __syncthreads(); // sh is reused by the next block
    }
}

__global__ void dequantize_i8_kernel(float *out, const int8_t *q, const float *scales, size_t n,
                                     size_t block) {
    GRID_STRIDE(i, n) out[i] = (float)q[i] * scales[i / block];
}

ent_status ent_cuda_quantize_i8(ent_backend_t *be, int8_t *q, float *scales, const float *x,
                                size_t n, size_t block) {
    size_t nblocks = (n + block - 1) / block;
    if (nblocks == 0) return ENT_OK;
    unsigned grid = (unsigned)(nblocks < 65535 * 8 ? nblocks : 65535 * 8);
    quantize_i8_kernel<<<grid, ENT_CUDA_THREADS, 0, ent_cuda_of(be)->stream>>>(q, scales, x, n,
                                                                                block, nblocks);
    return ent_cuda_launched("quantize_i8");
}

ent_status ent_cuda_dequantize_i8(ent_backend_t *be, float *out, const int8_t *q,
                                  const float *scales, size_t n, size_t block) {
    LAUNCH(dequantize_i8_kernel, n, out, q, scales, n, block);
}

// ---------------------------------------------------------------------------
// the compute copy of the parameters from their f32 masters

template <typename T> __global__ void cast_kernel(T *dst, const float *src, size_t n) {
    GRID_STRIDE(i, n) ent_store(dst + i, src[i]); // rounded to T
}

ent_status ent_cuda_cast(ent_backend_t *be, void *dst, const float *src, size_t n) {
    if (be->param_dtype == ENT_BF16)
        LAUNCH(cast_kernel<__nv_bfloat16>, n, (__nv_bfloat16 *)dst, src, n);
    LAUNCH(cast_kernel<float>, n, (float *)dst, src, n);
}

ENT_CUDA_INSTANTIATE(encoder_forward)
ENT_CUDA_INSTANTIATE(encoder_backward)
ENT_CUDA_INSTANTIATE(gelu_forward)
ENT_CUDA_INSTANTIATE(gelu_backward)
ENT_CUDA_INSTANTIATE(residual_forward)
ENT_CUDA_INSTANTIATE(residual_backward)
ENT_CUDA_INSTANTIATE(swiglu_forward)
ENT_CUDA_INSTANTIATE(swiglu_backward)
ENT_CUDA_INSTANTIATE(rope_forward)
ENT_CUDA_INSTANTIATE(rope_backward)
ENT_CUDA_INSTANTIATE(adamw_update)
