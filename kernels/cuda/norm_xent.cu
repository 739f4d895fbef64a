// norm_xent.cu: the cuda backend's row-wise ops: layer normalisation and
// RMSNorm, and the softmax over the vocabulary fused with cross-entropy.
#include "cuda_impl.cuh"

#define ROWS_PER_BLOCK (ENT_CUDA_THREADS / 32) // one warp a row

// ---------------------------------------------------------------------------
// normalisation over the last axis, one warp per row: GPT-2's layernorm (mean
// removed, eps = 1e-5, bias) and the Llama family's RMSNorm (Centred false:
// the mean taken as 0 and not stored, eps from the model, no bias), as one
// pair of kernels, as on the CPU. Fused with the residual (res non-NULL, inp
// NULL): each lane first writes its columns of the row of res, a + b, and
// then reads them back as the input (its own writes: no barrier), so that
// the norm sees the values stored in T, as the two ops would.

template <typename T, bool Centred>
__global__ void norm_forward_kernel(T *out, float *mean, float *rstd, const T *inp, T *res,
                                    const T *a, const T *b, const T *weight, const T *bias,
                                    float eps, int N, int C) {
    int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return; // whole warps
    const T *x;
    if (res != NULL) {
        size_t row = (size_t)n * C;
        for (int c = lane; c < C; c += 32)
            ent_store(res + row + c, ent_load(a + row + c) + ent_load(b + row + c));
        x = res + row;
    } else {
        x = inp + (size_t)n * C;
    }
    float m = 0.0f;
    if (Centred) {
        float s = 0.0f;
        for (int c = lane; c < C; c += 32) s += ent_load(x + c);
        m = ent_warp_sum(s) / C;
    }
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = ent_load(x + c) - m;
        v += d * d;
    }
    float r = 1.0f / sqrtf(ent_warp_sum(v) / C + eps);
    T *o = out + (size_t)n * C;
    for (int c = lane; c < C; c += 32) {
        float xc = ent_load(x + c), w = ent_load(weight + c);
        ent_store(o + c, Centred ? ent_k_layernorm(xc, m, r, w, ent_load(bias + c))
                                 : ent_k_rmsnorm(xc, r, w));
    }
    if (lane == 0) {
        if (Centred) mean[n] = m;
        rstd[n] = r;
    }
}

// the rows of one normalisation: inp, or (fused) res = a + b
template <typename T> struct norm_rows {
    const T *inp;
    T *res;
    const T *a, *b;
};

template <bool Centred, typename T>
static ent_status norm_forward(ent_backend_t *be, const char *op, T *out, float *mean,
                               float *rstd, norm_rows<T> in, const T *weight, const T *bias,
                               float eps, int N, int C) {
    if (N <= 0) return ENT_OK;
    unsigned blocks = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    norm_forward_kernel<T, Centred><<<blocks, ENT_CUDA_THREADS, 0, ent_cuda_of(be)->stream>>>(
        out, mean, rstd, in.inp, in.res, in.a, in.b, weight, bias, eps, N, C);
    return ent_cuda_launched(op);
}

template <typename T>
ent_status ent_cuda_layernorm_forward(ent_backend_t *be, T *out, float *mean, float *rstd,
                                      const T *inp, const T *weight, const T *bias, int N, int C) {
    return norm_forward<true, T>(be, "layernorm_forward", out, mean, rstd, {inp, NULL, NULL, NULL},
                                 weight, bias, 1e-5f, N, C);
}

template <typename T>
ent_status ent_cuda_rmsnorm_forward(ent_backend_t *be, T *out, float *rstd, const T *inp,
                                    const T *weight, float eps, int N, int C) {
    return norm_forward<false, T>(be, "rmsnorm_forward", out, NULL, rstd, {inp, NULL, NULL, NULL},
                                  weight, NULL, eps, N, C);
}

template <typename T>
ent_status ent_cuda_residual_layernorm_forward(ent_backend_t *be, T *res, T *out, float *mean,
                                               float *rstd, const T *a, const T *b,
                                               const T *weight, const T *bias, int N, int C) {
    return norm_forward<true, T>(be, "residual_layernorm_forward", out, mean, rstd,
                                 {NULL, res, a, b}, weight, bias, 1e-5f, N, C);
}

template <typename T>
ent_status ent_cuda_residual_rmsnorm_forward(ent_backend_t *be, T *res, T *out, float *rstd,
                                             const T *a, const T *b, const T *weight, float eps,
                                             int N, int C) {
    return norm_forward<false, T>(be, "residual_rmsnorm_forward", out, NULL, rstd,
                                  {NULL, res, a, b}, weight, NULL, eps, N, C);
}

// dinp, one warp per row: dnorm = dy * weight, dx += ent_k_norm_grad (the
// mean(dnorm) term only where a mean was removed)
template <typename T, bool Centred>
__global__ void norm_backward_kernel(T *dinp, const T *dout, const T *inp, const T *weight,
                                     const float *mean, const float *rstd, int N, int C) {
    int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const T *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
    T *dx = dinp + (size_t)n * C;
    float m = Centred ? mean[n] : 0.0f, r = rstd[n];
    float sum_d = 0.0f, sum_dn = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float dn = ent_load(dy + c) * ent_load(weight + c);
        sum_d += dn;
        sum_dn += dn * ent_k_norm(ent_load(x + c), m, r);
    }
    float mean_d = Centred ? ent_warp_sum(sum_d) / C : 0.0f, mean_dn = ent_warp_sum(sum_dn) / C;
    for (int c = lane; c < C; c += 32) {
        float norm = ent_k_norm(ent_load(x + c), m, r);
        float dn = ent_load(dy + c) * ent_load(weight + c);
        ent_store(dx + c, ent_load(dx + c) + ent_k_norm_grad(dn, norm, r, mean_d, mean_dn));
    }
}

// the values whose column sums are dweight: dout * norm (mean NULL: RMSNorm's)
template <typename T> struct norm_dweight_value {
    const T *dout, *inp;
    const float *mean, *rstd;
    int C;
    __device__ float operator()(int n, int c) const {
        size_t i = (size_t)n * C + c;
        return ent_load(dout + i) *
               ent_k_norm(ent_load(inp + i), mean != NULL ? mean[n] : 0.0f, rstd[n]);
    }
};

// dinp, then dweight (and dbias, where non-NULL) as deterministic column sums
template <bool Centred, typename T>
static ent_status norm_backward(ent_backend_t *be, const char *op, T *dinp, float *dweight,
                                float *dbias, const T *dout, const T *inp, const T *weight,
                                const float *mean, const float *rstd, int N, int C) {
    if (N <= 0) return ENT_OK;
    unsigned blocks = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    norm_backward_kernel<T, Centred><<<blocks, ENT_CUDA_THREADS, 0, ent_cuda_of(be)->stream>>>(
        dinp, dout, inp, weight, mean, rstd, N, C);
    ENT_CHECK(ent_cuda_launched(op));
    norm_dweight_value<T> fw = {dout, inp, Centred ? mean : NULL, rstd, C};
    ENT_CHECK(ent_cuda_column_sums(be, dweight, N, C, fw));
    if (dbias == NULL) return ENT_OK;
    ent_matrix_value<T> fb = {dout, (size_t)C};
    return ent_cuda_column_sums(be, dbias, N, C, fb);
}

template <typename T>
ent_status ent_cuda_layernorm_backward(ent_backend_t *be, T *dinp, float *dweight, float *dbias,
                                       const T *dout, const T *inp, const T *weight,
                                       const float *mean, const float *rstd, int N, int C) {
    return norm_backward<true, T>(be, "layernorm_backward", dinp, dweight, dbias, dout, inp,
                                  weight, mean, rstd, N, C);
}

template <typename T>
ent_status ent_cuda_rmsnorm_backward(ent_backend_t *be, T *dinp, float *dweight, const T *dout,
                                     const T *inp, const T *weight, const float *rstd, int N,
                                     int C) {
    return norm_backward<false, T>(be, "rmsnorm_backward", dinp, dweight, NULL, dout, inp, weight,
                                   NULL, rstd, N, C);
}

// ---------------------------------------------------------------------------
// softmax + cross-entropy over the first V of Vp logits: one block per row.
// One pass keeps each thread's online (max, sum) and merges them in a fixed
// tree; a second pass writes each probability once. The target's logit is
// read in the first pass, before probs (which may alias logits) is written.

template <typename T>
__global__ void softmax_xent_forward_kernel(float *losses, T *probs, const T *logits,
                                            const int32_t *targets, int V, int Vp) {
    __shared__ ent_k_maxsum sh[ENT_CUDA_THREADS];
    int n = blockIdx.x;
    const T *x = logits + (size_t)n * Vp;
    T *p = probs + (size_t)n * Vp;
    float target_logit = 0.0f;
    if (targets != NULL && threadIdx.x == 0) target_logit = ent_load(x + targets[n]);
    ent_k_maxsum ms = ent_k_maxsum_empty();
    for (int i = threadIdx.x; i < V; i += blockDim.x) ms = ent_k_maxsum_add(ms, ent_load(x + i));
    sh[threadIdx.x] = ms;
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        __syncthreads();
        if ((int)threadIdx.x < s)
            sh[threadIdx.x] = ent_k_maxsum_merge(sh[threadIdx.x], sh[threadIdx.x + s]);
    }
    __syncthreads();
    ent_k_maxsum row = sh[0];
    float inv = 1.0f / row.sum;
    for (int i = threadIdx.x; i < Vp; i += blockDim.x)
        ent_store(p + i, i < V ? ent_k_expf(ent_load(x + i) - row.max) * inv : 0.0f);
    // loss = log(sum exp) - logit[target], exact even where the probability underflows
    if (targets != NULL && threadIdx.x == 0)
        losses[n] = logf(row.sum) + row.max - target_logit;
}

template <typename T>
ent_status ent_cuda_softmax_xent_forward(ent_backend_t *be, float *losses, T *probs,
                                         const T *logits, const int32_t *targets, int N, int V,
                                         int Vp) {
    if (N <= 0) return ENT_OK;
    softmax_xent_forward_kernel<T><<<N, ENT_CUDA_THREADS, 0, ent_cuda_of(be)->stream>>>(
        losses, probs, logits, targets, V, Vp);
    return ent_cuda_launched("softmax_xent_forward");
}

template <typename T>
__global__ void softmax_xent_backward_kernel(T *dlogits, const T *probs, const int32_t *targets,
                                             float dloss, int V, int Vp, size_t n) {
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(e % Vp);
        float d = 0.0f;
        if (i < V) d = (ent_load(probs + e) - (i == targets[e / Vp] ? 1.0f : 0.0f)) * dloss;
        ent_store(dlogits + e, d);
    }
}

template <typename T>
ent_status ent_cuda_softmax_xent_backward(ent_backend_t *be, T *dlogits, const T *probs,
                                          const int32_t *targets, float dloss, int N, int V,
                                          int Vp) {
    size_t n = (size_t)N * Vp;
    softmax_xent_backward_kernel<T><<<ent_cuda_blocks(n), ENT_CUDA_THREADS, 0,
                                      ent_cuda_of(be)->stream>>>(dlogits, probs, targets, dloss, V,
                                                                 Vp, n);
    return ent_cuda_launched("softmax_xent_backward");
}

ENT_CUDA_INSTANTIATE(layernorm_forward)
ENT_CUDA_INSTANTIATE(layernorm_backward)
ENT_CUDA_INSTANTIATE(rmsnorm_forward)
ENT_CUDA_INSTANTIATE(rmsnorm_backward)
ENT_CUDA_INSTANTIATE(residual_layernorm_forward)
ENT_CUDA_INSTANTIATE(residual_rmsnorm_forward)
ENT_CUDA_INSTANTIATE(softmax_xent_forward)
ENT_CUDA_INSTANTIATE(softmax_xent_backward)
