// attention.cu: causal attention, flash-style, in f32: GPT-2's multi-head
// attention (Q, K, V side by side in one qkv tensor) and the Llama family's
// grouped-query attention (q, k, v apart, `group` query heads sharing a KV
// head) through the same kernels, which read each tensor through its row
// stride and map query head h to KV head (phase + h) / group (ent_gqa_shape).
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
// order: no atomics, the same bits on every run. The dK/dV kernel runs per KV
// head and takes the query heads of its group one after the other, so a
// shared KV head's gradient sums over them in a fixed order too. The
// backward's scratch (the state's size) holds D_i = sum_j P_ij dP_ij per
// query row, computed by the dQ kernel. Head sizes up to 32 * ATT_MAXD = 128.
#include "cuda_impl.cuh"

#define ATT_ROWS 8  // rows per block, one warp each
#define ATT_TILE 32 // rows of the other side per tile, one per lane
#define ATT_MAXD 4  // head dimensions per lane

size_t ent_cuda_attention_state_bytes(ent_backend_t *be, int B, int T, int NH) {
    (void)be;
    return (size_t)B * NH * T * sizeof(float); // log-sum-exp of each row
}

// Where the heads live: the row strides (floats) of q, k, v and out (their
// gradients have the same), the head size, and the heads' mapping.
struct att_layout {
    size_t ldq, ldk, ldv, ldo;
    int NH, hs;
    int group, phase; // ent_gqa_shape's
    int nkv;          // KV heads the query heads use: kv_of(NH - 1) + 1
};

__host__ __device__ __forceinline__ int att_kv_of(const att_layout &L, int h) {
    return (L.phase + h) / L.group;
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

// Where a block's warp works in the query-side kernels (grid (ceil(T /
// ATT_ROWS), B * NH)): its (sequence, query head), its row of the block's
// ATT_ROWS, and row 0 of that head's Q and of its KV head's K and V.
template <typename T> struct att_place {
    int b, h, bh, warp, lane, row0, row;
    const T *q, *k, *v;
};

template <typename T>
__device__ att_place<T> att_locate(const T *q, const T *k, const T *v, int T_,
                                   const att_layout &L) {
    att_place<T> p;
    p.bh = blockIdx.y;
    p.b = p.bh / L.NH;
    p.h = p.bh % L.NH;
    p.warp = threadIdx.x / 32;
    p.lane = threadIdx.x % 32;
    p.row0 = blockIdx.x * ATT_ROWS;
    p.row = p.row0 + p.warp;
    int kv = att_kv_of(L, p.h);
    p.q = q + (size_t)p.b * T_ * L.ldq + (size_t)p.h * L.hs;
    p.k = k + (size_t)p.b * T_ * L.ldk + (size_t)kv * L.hs;
    p.v = v + (size_t)p.b * T_ * L.ldv + (size_t)kv * L.hs;
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
__global__ void attention_forward_kernel(T *out, float *lse, const T *qg, const T *kg,
                                         const T *vg, int T_, att_layout L, float scale) {
    extern __shared__ float smem[];
    att_place<T> at = att_locate(qg, kg, vg, T_, L);
    int hs = L.hs, bh = at.bh, lane = at.lane, q0 = at.row0, i = at.row;
    float *ks = smem, *vs = ks + ATT_TILE * (hs + 1), *qs = vs + ATT_TILE * (hs + 1);
    float *q = qs + at.warp * hs;
    stage_row(q, at.q, L.ldq, i, T_, hs, scale, lane);
    int last = min(T_ - 1, q0 + ATT_ROWS - 1); // the last key any row of the block sees
    float acc[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f};
    ent_k_maxsum run = ent_k_maxsum_empty();
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads(); // the previous tile is consumed (and q is staged)
        stage_tile(ks, at.k, L.ldk, k0, last + 1, hs, 1.0f);
        stage_tile(vs, at.v, L.ldv, k0, last + 1, hs, 1.0f);
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
    T *o = out + ((size_t)at.b * T_ + i) * L.ldo + (size_t)at.h * hs;
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
__global__ void attention_backward_dq_kernel(T *dqg, float *Dout, const T *dout, const T *qg,
                                             const T *kg, const T *vg, const float *lse, int T_,
                                             att_layout L, float scale) {
    extern __shared__ float smem[];
    att_place<T> at = att_locate(qg, kg, vg, T_, L);
    int hs = L.hs, bh = at.bh, lane = at.lane, q0 = at.row0, i = at.row;
    const T *doh = dout + (size_t)at.b * T_ * L.ldo + (size_t)at.h * hs;
    float *ks = smem, *vs = ks + ATT_TILE * (hs + 1), *qs = vs + ATT_TILE * (hs + 1);
    float *dos = qs + ATT_ROWS * hs;
    float *q = qs + at.warp * hs, *dO = dos + at.warp * hs;
    stage_row(q, at.q, L.ldq, i, T_, hs, scale, lane);
    stage_row(dO, doh, L.ldo, i, T_, hs, 1.0f, lane);
    float l = i < T_ ? lse[(size_t)bh * T_ + i] : 0.0f;
    int last = min(T_ - 1, q0 + ATT_ROWS - 1);
    float D = 0.0f;
    float acc[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int pass = 0; pass < 2; pass++) {
        float Dpart = 0.0f;
        for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
            __syncthreads();
            stage_tile(ks, at.k, L.ldk, k0, last + 1, hs, 1.0f);
            stage_tile(vs, at.v, L.ldv, k0, last + 1, hs, 1.0f);
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
    T *dq = dqg + ((size_t)at.b * T_ + i) * L.ldq + (size_t)at.h * hs;
#pragma unroll
    for (int k = 0; k < ATT_MAXD; k++) {
        int d = lane + 32 * k;
        if (d < hs) ent_store(dq + d, ent_load(dq + d) + scale * acc[k]);
    }
}

// ---------------------------------------------------------------------------
// backward, dK and dV: grid (ceil(T / ATT_ROWS), B * nkv), a warp per key row
// j of one KV head, taking the query heads h of its group in order and, for
// each, walking the query rows i >= j in tiles: dv_j += sum_h sum_i P_hij dO_hi,
// dk_j += scale * sum_h sum_i P_hij (dP_hij - D_hi) q_hi.

template <typename T>
__global__ void attention_backward_dkv_kernel(T *dkg, T *dvg, const T *dout, const T *qg,
                                              const T *kg, const T *vg, const float *lse,
                                              const float *Dbuf, int T_, att_layout L,
                                              float scale) {
    extern __shared__ float smem[];
    int hs = L.hs, b = blockIdx.y / L.nkv, kv = blockIdx.y % L.nkv;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int j0 = blockIdx.x * ATT_ROWS, j = j0 + warp;
    float *qt = smem, *dot = qt + ATT_TILE * (hs + 1), *kr = dot + ATT_TILE * (hs + 1);
    float *vr = kr + ATT_ROWS * hs, *lt = vr + ATT_ROWS * hs, *Dt = lt + ATT_TILE;
    float *k = kr + warp * hs, *v = vr + warp * hs;
    size_t koff = (size_t)b * T_ * L.ldk + (size_t)kv * hs;
    size_t voff = (size_t)b * T_ * L.ldv + (size_t)kv * hs;
    stage_row(k, kg + koff, L.ldk, j, T_, hs, 1.0f, lane);
    stage_row(v, vg + voff, L.ldv, j, T_, hs, 1.0f, lane);
    float dk[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f}, dv[ATT_MAXD] = {0.0f, 0.0f, 0.0f, 0.0f};
    // the query heads reading this KV head, in order
    int h0 = max(0, kv * L.group - L.phase), h1 = min(L.NH, kv * L.group - L.phase + L.group);
    for (int h = h0; h < h1; h++) {
        const T *qh = qg + (size_t)b * T_ * L.ldq + (size_t)h * hs;
        const T *doh = dout + (size_t)b * T_ * L.ldo + (size_t)h * hs;
        size_t bh = (size_t)b * L.NH + h;
        // queries from the block's first key on (earlier ones do not see these keys)
        for (int i0 = j0 - j0 % ATT_TILE; i0 < T_; i0 += ATT_TILE) {
            __syncthreads();
            stage_tile(qt, qh, L.ldq, i0, T_, hs, scale); // q scaled: scores and dk take it so
            stage_tile(dot, doh, L.ldo, i0, T_, hs, 1.0f);
            if (threadIdx.x < ATT_TILE) {
                int i = i0 + threadIdx.x;
                lt[threadIdx.x] = i < T_ ? lse[bh * T_ + i] : 0.0f;
                Dt[threadIdx.x] = i < T_ ? Dbuf[bh * T_ + i] : 0.0f;
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
    }
    if (j >= T_) return;
    T *dkp = dkg + koff + (size_t)j * L.ldk, *dvp = dvg + voff + (size_t)j * L.ldv;
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
// launches, shared by both layouts

static ent_status check_head_size(const char *op, int hs) {
    if (hs < 1 || hs > 32 * ATT_MAXD)
        return ent_fail(ENT_ERR_USAGE, "cuda backend: %s: head size %d: the attention kernels "
                        "take head sizes from 1 to %d", op, hs, 32 * ATT_MAXD);
    return ENT_OK;
}

// the grid's second dimension: (sequence, head) pairs
static ent_status check_grid(const char *op, int B, int heads) {
    if ((long long)B * heads > 65535)
        return ent_fail(ENT_ERR_USAGE, "cuda backend: %s: %d sequences x %d heads exceed the "
                        "65535 blocks of a grid's second dimension", op, B, heads);
    return ENT_OK;
}

template <typename T>
static ent_status att_forward(ent_backend_t *be, const char *op, T *out, float *lse, const T *q,
                              const T *k, const T *v, int B, int T_, const att_layout &L) {
    if (B <= 0 || T_ <= 0) return ENT_OK;
    ENT_CHECK(check_grid(op, B, L.NH));
    int hs = L.hs;
    size_t shmem = sizeof(float) * (2 * ATT_TILE * (hs + 1) + ATT_ROWS * hs);
    dim3 grid((T_ + ATT_ROWS - 1) / ATT_ROWS, B * L.NH);
    attention_forward_kernel<T><<<grid, 32 * ATT_ROWS, shmem, ent_cuda_of(be)->stream>>>(
        out, lse, q, k, v, T_, L, 1.0f / sqrtf((float)hs));
    return ent_cuda_launched(op);
}

template <typename T>
static ent_status att_backward(ent_backend_t *be, const char *op, T *dq, T *dk, T *dv,
                               float *scratch, const T *dout, const T *q, const T *k, const T *v,
                               const float *lse, int B, int T_, const att_layout &L) {
    if (B <= 0 || T_ <= 0) return ENT_OK;
    ENT_CHECK(check_grid(op, B, L.NH));
    int hs = L.hs;
    float scale = 1.0f / sqrtf((float)hs);
    cudaStream_t s = ent_cuda_of(be)->stream;
    dim3 grid_q((T_ + ATT_ROWS - 1) / ATT_ROWS, B * L.NH);
    size_t shmem_dq = sizeof(float) * (2 * ATT_TILE * (hs + 1) + 2 * ATT_ROWS * hs);
    attention_backward_dq_kernel<T><<<grid_q, 32 * ATT_ROWS, shmem_dq, s>>>(
        dq, scratch, dout, q, k, v, lse, T_, L, scale);
    ENT_CHECK(ent_cuda_launched(op));
    dim3 grid_kv((T_ + ATT_ROWS - 1) / ATT_ROWS, B * L.nkv);
    size_t shmem_dkv =
        sizeof(float) * (2 * ATT_TILE * (hs + 1) + 2 * ATT_ROWS * hs + 2 * ATT_TILE);
    attention_backward_dkv_kernel<T><<<grid_kv, 32 * ATT_ROWS, shmem_dkv, s>>>(
        dk, dv, dout, q, k, v, lse, scratch, T_, L, scale);
    return ent_cuda_launched(op);
}

// GPT-2's layout: Q, K, V side by side in qkv (B,T,3C), one KV head per head
static ent_status fused_layout(const char *op, int C, int NH, att_layout *L) {
    if (NH <= 0 || C % NH != 0)
        return ent_fail(ENT_ERR_USAGE, "cuda backend: %s: width %d and %d heads: the head size "
                        "must divide the width", op, C, NH);
    ENT_CHECK(check_head_size(op, C / NH));
    L->ldq = L->ldk = L->ldv = 3 * (size_t)C;
    L->ldo = (size_t)C;
    L->NH = NH;
    L->hs = C / NH;
    L->group = 1;
    L->phase = 0;
    L->nkv = NH;
    return ENT_OK;
}

// the Llama family's: q and out (B,T,NH*hd), k and v (B,T,kv_heads*hd)
static ent_status gqa_layout(const char *op, ent_gqa_shape s, att_layout *L) {
    ENT_CHECK(ent_gqa_shape_check(s));
    ENT_CHECK(check_head_size(op, s.hd));
    L->ldq = L->ldo = (size_t)s.NH * s.hd;
    L->ldk = L->ldv = (size_t)s.kv_heads * s.hd;
    L->NH = s.NH;
    L->hs = s.hd;
    L->group = s.group;
    L->phase = s.phase;
    L->nkv = att_kv_of(*L, s.NH - 1) + 1;
    return ENT_OK;
}

template <typename T>
ent_status ent_cuda_attention_forward(ent_backend_t *be, T *out, float *att, const T *qkv, int B,
                                      int T_, int C, int NH) {
    att_layout L;
    ENT_CHECK(fused_layout("attention_forward", C, NH, &L));
    return att_forward(be, "attention_forward", out, att, qkv, qkv + C, qkv + 2 * C, B, T_, L);
}

template <typename T>
ent_status ent_cuda_attention_backward(ent_backend_t *be, T *dqkv, float *scratch, const T *dout,
                                       const T *qkv, const float *att, int B, int T_, int C,
                                       int NH) {
    att_layout L;
    ENT_CHECK(fused_layout("attention_backward", C, NH, &L));
    return att_backward(be, "attention_backward", dqkv, dqkv + C, dqkv + 2 * C, scratch, dout,
                        qkv, qkv + C, qkv + 2 * C, att, B, T_, L);
}

template <typename T>
ent_status ent_cuda_gqa_forward(ent_backend_t *be, T *out, float *att, const T *q, const T *k,
                                const T *v, ent_gqa_shape s) {
    att_layout L;
    ENT_CHECK(gqa_layout("gqa_forward", s, &L));
    return att_forward(be, "gqa_forward", out, att, q, k, v, s.B, s.T, L);
}

template <typename T>
ent_status ent_cuda_gqa_backward(ent_backend_t *be, T *dq, T *dk, T *dv, float *scratch,
                                 const T *dout, const T *q, const T *k, const T *v,
                                 const float *att, ent_gqa_shape s) {
    att_layout L;
    ENT_CHECK(gqa_layout("gqa_backward", s, &L));
    return att_backward(be, "gqa_backward", dq, dk, dv, scratch, dout, q, k, v, att, s.B, s.T, L);
}

ENT_CUDA_INSTANTIATE(attention_forward)
ENT_CUDA_INSTANTIATE(attention_backward)
ENT_CUDA_INSTANTIATE(gqa_forward)
ENT_CUDA_INSTANTIATE(gqa_backward)
