// attention.cu: causal multi-head attention, flash-style, in f32.
//
// The (T,T) scores are never stored. A block takes ATT_ROWS consecutive rows
// (queries in the forward and dQ kernels, keys in the dK/dV kernel), one warp
// each, and walks the other side in tiles of 32 rows staged in shared memory:
// in a tile, lane l owns row l of the tile for the dot products (scores), and
// head dimension lane + 32 k (k < ATT_MAXD) for the sums over the tile. The
// forward keeps an online softmax per row (kernel_math.h's merge) and stores
// only its log-sum-exp (B,NH,T) as the attention state; the backward
// recomputes each probability as exp(score - lse). dQ and dK/dV are separate
// kernels so that every gradient element is summed by one thread in a fixed
// order: no atomics, the same bits on every run. The backward's scratch (the
// state's size) holds D_i = sum_j P_ij dP_ij, computed by the dQ kernel.
// Head sizes up to 32 * ATT_MAXD = 128.
#include "cuda_impl.cuh"

#define ATT_ROWS 8  // rows per block, one warp each
#define ATT_TILE 32 // rows of the other side per tile, one per lane
#define ATT_MAXD 4  // head dimensions per lane

size_t ent_cuda_attention_state_bytes(ent_backend_t *be, int B, int T, int NH) {
    (void)be;
    return (size_t)B * NH * T * sizeof(float); // log-sum-exp of each row
}

// Stages rows r0.. r0+ATT_TILE-1 (those < limit) of `head` columns [off, off+hs)
// of a (T, ld) row-major matrix into tile (ATT_TILE, hs+1), scaled; rows past
// limit are zero.
template <typename T>
__device__ void stage_tile(float *tile, const T *head, size_t ld, int r0, int limit, int hs,
                           float scale) {
    for (int e = threadIdx.x; e < ATT_TILE * hs; e += blockDim.x) {
        int r = e / hs, d = e % hs;
        float v = r0 + r < limit ? ent_load(head + (size_t)(r0 + r) * ld + d) * scale : 0.0f;
        tile[r * (hs + 1) + d] = v;
    }
}

// Where a block's warp works: its (sequence, head), its row of the block's
// ATT_ROWS, and that head's Q, K and V columns (row 0) inside qkv (B,T,3C).
template <typename T> struct att_place {
    int bh, warp, lane, row0, row, hs;
    size_t ld; // 3C
    const T *q, *k, *v;
};

template <typename T>
__device__ att_place<T> att_locate(const T *qkv, int T_, int C, int NH) {
    att_place<T> p;
    p.hs = C / NH;
    p.bh = blockIdx.y;
    p.warp = threadIdx.x / 32;
    p.lane = threadIdx.x % 32;
    p.row0 = blockIdx.x * ATT_ROWS;
    p.row = p.row0 + p.warp;
    p.ld = 3 * (size_t)C;
    p.q = qkv + (size_t)(p.bh / NH) * T_ * p.ld + (size_t)(p.bh % NH) * p.hs;
    p.k = p.q + C;
    p.v = p.q + 2 * C;
    return p;
}

// A warp copies row `row` (0 past `limit`) of a head's columns, scaled, into dst (hs).
template <typename T>
__device__ void stage_row(float *dst, const T *head, size_t ld, int row, int limit, int hs,
                          float scale, int lane) {
    for (int d = lane; d < hs; d += 32)
        dst[d] = row < limit ? ent_load(head + (size_t)row * ld + d) * scale : 0.0f;
}

// dot product of row `lane` of a staged tile with a row vector in shared memory
__device__ __forceinline__ float tile_dot(const float *tile, const float *row, int lane, int hs) {
    const float *t = tile + lane * (hs + 1);
    float s = 0.0f;
    for (int d = 0; d < hs; d++) s += t[d] * row[d];
    return s;
}

// acc[k] += sum over tile rows r of w_r * tile[r][lane + 32 k], w_r held by lane r
__device__ __forceinline__ void tile_accumulate(float acc[ATT_MAXD], const float *tile, float w,
                                                int lane, int hs) {
    for (int r = 0; r < ATT_TILE; r++) {
        float wr = __shfl_sync(ENT_CUDA_FULL_MASK, w, r);
        const float *t = tile + r * (hs + 1);
#pragma unroll
        for (int k = 0; k < ATT_MAXD; k++) {
            int d = lane + 32 * k;
            if (d < hs) acc[k] += wr * t[d];
        }
    }
}

// ---------------------------------------------------------------------------
// forward: grid (ceil(T / ATT_ROWS), B * NH)

template <typename T>
__global__ void attention_forward_kernel(T *out, float *lse, const T *qkv, int T_, int C, int NH,
                                         float scale) {
    extern __shared__ float smem[];
    att_place<T> at = att_locate(qkv, T_, C, NH);
    int hs = at.hs, bh = at.bh, lane = at.lane, q0 = at.row0, i = at.row;
    size_t ld = at.ld;
    const T *kh = at.k, *vh = at.v;
    float *ks = smem, *vs = ks + ATT_TILE * (hs + 1), *qs = vs + ATT_TILE * (hs + 1);
    float *q = qs + at.warp * hs;
    stage_row(q, at.q, ld, i, T_, hs, scale, lane);
    int last = min(T_ - 1, q0 + ATT_ROWS - 1); // the last key any row of the block sees
    float acc[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f};
    ent_k_maxsum run = ent_k_maxsum_empty();
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads(); // the previous tile is consumed (and q is staged)
        stage_tile(ks, kh, ld, k0, last + 1, hs, 1.0f);
        stage_tile(vs, vh, ld, k0, last + 1, hs, 1.0f);
        __syncthreads();
        if (i >= T_ || k0 > i) continue; // whole warps
        int j = k0 + lane;
        float s = j <= i ? tile_dot(ks, q, lane, hs) : -INFINITY;
        ent_k_maxsum tile;
        tile.max = ent_warp_max(s); // key k0 <= i: finite
        float p = j <= i ? ent_k_expf(s - tile.max) : 0.0f;
        tile.sum = ent_warp_sum(p);
        float f_run, f_tile;
        run = ent_k_maxsum_merge_scaled(run, tile, &f_run, &f_tile);
        float pv[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f};
        tile_accumulate(pv, vs, p, lane, hs);
#pragma unroll
        for (int k = 0; k < ATT_MAXD; k++) acc[k] = acc[k] * f_run + pv[k] * f_tile;
    }
    if (i >= T_) return;
    float inv = 1.0f / run.sum;
    T *o = out + ((size_t)(bh / NH) * T_ + i) * C + (size_t)(bh % NH) * hs;
#pragma unroll
    for (int k = 0; k < ATT_MAXD; k++) {
        int d = lane + 32 * k;
        if (d < hs) ent_store(o + d, acc[k] * inv);
    }
    if (lane == 0) lse[(size_t)bh * T_ + i] = run.max + logf(run.sum);
}

// ---------------------------------------------------------------------------
// backward, dQ: grid as the forward. Two passes over the keys of each query
// row: D_i = sum_j P_ij dP_ij (dP_ij = dO_i . v_j), then
// dq_i += scale * sum_j P_ij (dP_ij - D_i) k_j.

template <typename T>
__global__ void attention_backward_dq_kernel(T *dqkv, float *Dout, const T *dout, const T *qkv,
                                             const float *lse, int T_, int C, int NH,
                                             float scale) {
    extern __shared__ float smem[];
    att_place<T> at = att_locate(qkv, T_, C, NH);
    int hs = at.hs, bh = at.bh, lane = at.lane, q0 = at.row0, i = at.row;
    size_t ld = at.ld;
    const T *kh = at.k, *vh = at.v;
    const T *doh = dout + (size_t)(bh / NH) * T_ * C + (size_t)(bh % NH) * hs;
    float *ks = smem, *vs = ks + ATT_TILE * (hs + 1), *qs = vs + ATT_TILE * (hs + 1);
    float *dos = qs + ATT_ROWS * hs;
    float *q = qs + at.warp * hs, *dO = dos + at.warp * hs;
    stage_row(q, at.q, ld, i, T_, hs, scale, lane);
    stage_row(dO, doh, (size_t)C, i, T_, hs, 1.0f, lane);
    float l = i < T_ ? lse[(size_t)bh * T_ + i] : 0.0f;
    int last = min(T_ - 1, q0 + ATT_ROWS - 1);
    float D = 0.0f;
    float acc[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int pass = 0; pass < 2; pass++) {
        float Dpart = 0.0f;
        for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
            __syncthreads();
            stage_tile(ks, kh, ld, k0, last + 1, hs, 1.0f);
            stage_tile(vs, vh, ld, k0, last + 1, hs, 1.0f);
            __syncthreads();
            if (i >= T_ || k0 > i) continue;
            int j = k0 + lane;
            float p = j <= i ? ent_k_expf(tile_dot(ks, q, lane, hs) - l) : 0.0f;
            float dp = j <= i ? tile_dot(vs, dO, lane, hs) : 0.0f;
            if (pass == 0) {
                Dpart += p * dp;
            } else {
                float ds = p * (dp - D);
                tile_accumulate(acc, ks, ds, lane, hs);
            }
        }
        if (pass == 0) D = ent_warp_sum(Dpart);
    }
    if (i >= T_) return;
    if (lane == 0) Dout[(size_t)bh * T_ + i] = D;
    T *dq = dqkv + ((size_t)(bh / NH) * T_ + i) * ld + (size_t)(bh % NH) * hs;
#pragma unroll
    for (int k = 0; k < ATT_MAXD; k++) {
        int d = lane + 32 * k;
        if (d < hs) ent_store(dq + d, ent_load(dq + d) + scale * acc[k]);
    }
}

// ---------------------------------------------------------------------------
// backward, dK and dV: grid (ceil(T / ATT_ROWS), B * NH), a warp per key row j
// walking the query rows i >= j in tiles: dv_j += sum_i P_ij dO_i,
// dk_j += scale * sum_i P_ij (dP_ij - D_i) q_i.

template <typename T>
__global__ void attention_backward_dkv_kernel(T *dqkv, const T *dout, const T *qkv,
                                              const float *lse, const float *Dbuf, int T_, int C,
                                              int NH, float scale) {
    extern __shared__ float smem[];
    att_place<T> at = att_locate(qkv, T_, C, NH);
    int hs = at.hs, bh = at.bh, lane = at.lane, j0 = at.row0, j = at.row;
    size_t ld = at.ld;
    const T *qh = at.q;
    const T *doh = dout + (size_t)(bh / NH) * T_ * C + (size_t)(bh % NH) * hs;
    float *qt = smem, *dot = qt + ATT_TILE * (hs + 1), *kr = dot + ATT_TILE * (hs + 1);
    float *vr = kr + ATT_ROWS * hs, *lt = vr + ATT_ROWS * hs, *Dt = lt + ATT_TILE;
    float *k = kr + at.warp * hs, *v = vr + at.warp * hs;
    stage_row(k, at.k, ld, j, T_, hs, 1.0f, lane);
    stage_row(v, at.v, ld, j, T_, hs, 1.0f, lane);
    float dk[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f}, dv[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f};
    // queries from the block's first key on (earlier ones do not see these keys)
    for (int i0 = j0 - j0 % ATT_TILE; i0 < T_; i0 += ATT_TILE) {
        __syncthreads();
        stage_tile(qt, qh, ld, i0, T_, hs, scale); // q scaled: scores and dk take it so
        stage_tile(dot, doh, C, i0, T_, hs, 1.0f);
        if (threadIdx.x < ATT_TILE) {
            int i = i0 + threadIdx.x;
            lt[threadIdx.x] = i < T_ ? lse[(size_t)bh * T_ + i] : 0.0f;
            Dt[threadIdx.x] = i < T_ ? Dbuf[(size_t)bh * T_ + i] : 0.0f;
        }
        __syncthreads();
        if (j >= T_) continue;
        int i = i0 + lane;
        int valid = i >= j && i < T_;
        float p = valid ? ent_k_expf(tile_dot(qt, k, lane, hs) - lt[lane]) : 0.0f;
        float dp = valid ? tile_dot(dot, v, lane, hs) : 0.0f;
        float ds = p * (dp - Dt[lane]);
        tile_accumulate(dv, dot, p, lane, hs);
        tile_accumulate(dk, qt, ds, lane, hs);
    }
    if (j >= T_) return;
    T *dkp = dqkv + ((size_t)(bh / NH) * T_ + j) * ld + C + (size_t)(bh % NH) * hs, *dvp = dkp + C;
#pragma unroll
    for (int c = 0; c < ATT_MAXD; c++) {
        int d = lane + 32 * c;
        if (d < hs) {
            ent_store(dkp + d, ent_load(dkp + d) + dk[c]);
            ent_store(dvp + d, ent_load(dvp + d) + dv[c]);
        }
    }
}

// ---------------------------------------------------------------------------

static ent_status check_shape(int C, int NH) {
    if (NH <= 0 || C % NH != 0 || C / NH > 32 * ATT_MAXD)
        return ent_fail(ENT_ERR_USAGE, "cuda backend: attention with width %d and %d heads: "
                        "the head size must divide the width and be at most %d", C, NH,
                        32 * ATT_MAXD);
    return ENT_OK;
}

ent_status ent_cuda_attention_forward(ent_backend_t *be, float *out, float *att,
                                      const float *qkv, int B, int T, int C, int NH) {
    ENT_CHECK(check_shape(C, NH));
    if (B <= 0 || T <= 0) return ENT_OK;
    int hs = C / NH;
    size_t shmem = sizeof(float) * (2 * ATT_TILE * (hs + 1) + ATT_ROWS * hs);
    dim3 grid((T + ATT_ROWS - 1) / ATT_ROWS, B * NH);
    attention_forward_kernel<float><<<grid, 32 * ATT_ROWS, shmem, ent_cuda_of(be)->stream>>>(
        out, att, qkv, T, C, NH, 1.0f / sqrtf((float)hs));
    return ent_cuda_launched("attention_forward");
}

ent_status ent_cuda_attention_backward(ent_backend_t *be, float *dqkv, float *scratch,
                                       const float *dout, const float *qkv, const float *att,
                                       int B, int T, int C, int NH) {
    ENT_CHECK(check_shape(C, NH));
    if (B <= 0 || T <= 0) return ENT_OK;
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    cudaStream_t s = ent_cuda_of(be)->stream;
    dim3 grid((T + ATT_ROWS - 1) / ATT_ROWS, B * NH);
    size_t shmem_dq = sizeof(float) * (2 * ATT_TILE * (hs + 1) + 2 * ATT_ROWS * hs);
    attention_backward_dq_kernel<float><<<grid, 32 * ATT_ROWS, shmem_dq, s>>>(
        dqkv, scratch, dout, qkv, att, T, C, NH, scale);
    ENT_CHECK(ent_cuda_launched("attention_backward (dq)"));
    size_t shmem_dkv =
        sizeof(float) * (2 * ATT_TILE * (hs + 1) + 2 * ATT_ROWS * hs + 2 * ATT_TILE);
    attention_backward_dkv_kernel<float><<<grid, 32 * ATT_ROWS, shmem_dkv, s>>>(
        dqkv, dout, qkv, att, scratch, T, C, NH, scale);
    return ent_cuda_launched("attention_backward (dk, dv)");
}
