// kernel_math.h: private to kernels/. The per-element arithmetic of the
// kernels, written once for the host and the device.
//
// Under nvcc every function is __host__ __device__, so a CUDA kernel calls the
// same code that the CPU backend runs and that tests/unit_kernel_math checks
// with gcc on a machine without a GPU; only indexing and launch code is
// GPU-only. In C the functions are static inline and vectorise in the CPU
// backend's loops. Plain C that nvcc also compiles as C++: no designated
// initialisers, no C++ either.
#ifndef ENT_KERNEL_MATH_H
#define ENT_KERNEL_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define ENT_HD __host__ __device__ inline
#else
#define ENT_HD static inline
#endif

// ---------------------------------------------------------------------------
// exponentials

// exp(x) in float. On the host: within about 1 ulp, written as plain
// arithmetic so that loops calling it vectorise (glibc's expf and tanhf are
// scalar calls): range reduction x = n ln2 + r, a degree-6 polynomial for e^r
// (Cephes), 2^n through the exponent bits; inputs below -87 give 0, above 88
// give e^88. On the device: the CUDA math library's expf (within 2 ulp).
ENT_HD float ent_k_expf(float x) {
#ifdef __CUDA_ARCH__
    return expf(x);
#else
    int underflow = x < -87.0f;
    x = x > 88.0f ? 88.0f : (x < -87.0f ? -87.0f : x);
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return underflow ? 0.0f : p * scale;
#endif
}

// tanh(x) = 1 - 2 / (e^(2x) + 1): absolute error about 1e-7, saturating cleanly.
ENT_HD float ent_k_tanhf(float x) { return 1.0f - 2.0f / (ent_k_expf(2.0f * x) + 1.0f); }

// ---------------------------------------------------------------------------
// GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

#define ENT_K_GELU_SCALE 0.7978845608028654f // sqrt(2/pi)

ENT_HD float ent_k_gelu(float x) {
    return 0.5f * x * (1.0f + ent_k_tanhf(ENT_K_GELU_SCALE * (x + 0.044715f * x * x * x)));
}

// d gelu(x) / dx. tanh and sech^2 from one exponential; sech^2 = 4e / (e + 1)^2
// keeps its relative accuracy where 1 - tanh^2 would cancel. Multiplied as
// 4 * inv * (e * inv): e * inv = e / (e + 1) stays in [0, 1], where 4 * e
// alone overflows for large inputs (e is up to e^88).
ENT_HD float ent_k_gelu_grad(float x) {
    float u = ENT_K_GELU_SCALE * (x + 0.044715f * x * x * x);
    float e = ent_k_expf(2.0f * u), inv = 1.0f / (e + 1.0f);
    float th = 1.0f - 2.0f * inv;
    float sech2 = 4.0f * inv * (e * inv);
    float du = ENT_K_GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * sech2 * du;
}

// ---------------------------------------------------------------------------
// layer normalisation of one value

// (x - mean) * rstd: the normalised value, also what the weight's gradient multiplies
ENT_HD float ent_k_norm(float x, float mean, float rstd) { return (x - mean) * rstd; }

// the layer's output for one value: norm * weight + bias
ENT_HD float ent_k_layernorm(float x, float mean, float rstd, float weight, float bias) {
    return ent_k_norm(x, mean, rstd) * weight + bias;
}

// The input gradient of one value of a normalised row (layernorm, and RMSNorm
// with mean_d = 0 since it removes no mean): rstd * (dn - mean_d - norm *
// mean_dn), where dn = dout * weight is the gradient of the normalised value
// norm, mean_d the row's mean of dn and mean_dn the row's mean of dn * norm.
ENT_HD float ent_k_norm_grad(float dn, float norm, float rstd, float mean_d, float mean_dn) {
    return rstd * (dn - mean_d - norm * mean_dn);
}

// ---------------------------------------------------------------------------
// the Llama family's element-wise math

// (x * rstd) * weight: RMSNorm's output for one value. The normalised value
// x * rstd is ent_k_norm(x, 0, rstd) (the same bits), which the weight's
// gradient multiplies, and its input gradient is ent_k_norm_grad with mean_d = 0.
ENT_HD float ent_k_rmsnorm(float x, float rstd, float weight) { return (x * rstd) * weight; }

// sigmoid(x) from e = e^-|x| <= 1, so nothing overflows: 1 / (1 + e) for
// x >= 0, e / (1 + e) below, which keeps its relative accuracy down to
// x = -87 (where the host's exponential flushes to 0; 1 above about 17).
// NaN stays NaN; sigmoid(-inf) = 0, sigmoid(inf) = 1.
ENT_HD float ent_k_sigmoid(float x) {
    float e = ent_k_expf(-fabsf(x)), r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

// SiLU (swish): g * sigmoid(g); about g for large g, about 0 (below) for very
// negative g; silu(-inf) is NaN (-inf x 0), as in PyTorch, so that a
// diverged activation is never hidden
ENT_HD float ent_k_silu(float g) { return g * ent_k_sigmoid(g); }

// silu'(g) = s (1 + g (1 - s)) from s = sigmoid(g): the form in which the
// backward shares s with silu(g) (ent_k_swiglu_grad)
ENT_HD float ent_k_silu_grad_s(float g, float s) { return s * (1.0f + g * (1.0f - s)); }

// d silu(g) / dg
ENT_HD float ent_k_silu_grad(float g) { return ent_k_silu_grad_s(g, ent_k_sigmoid(g)); }

// SwiGLU of one unit: silu(gate) * up
ENT_HD float ent_k_swiglu(float gate, float up) { return ent_k_silu(gate) * up; }

// Its gradients for an output gradient dout: *dgate = dout * up * silu'(gate),
// *dup = dout * silu(gate), with one sigmoid for both.
ENT_HD void ent_k_swiglu_grad(float gate, float up, float dout, float *dgate, float *dup) {
    float s = ent_k_sigmoid(gate);
    *dgate = dout * up * ent_k_silu_grad_s(gate, s);
    *dup = dout * (gate * s);
}

// Rotary embedding of one pair (x0, x1) = (x[i], x[i + hd/2]) by the angle
// whose cosine and sine are c, s (Hugging Face's rotate_half convention):
// (x0 c - x1 s, x1 c + x0 s). The backward rotates by the opposite angle
// (ent_k_rope_back): the rotation is orthogonal, its transpose its inverse.
ENT_HD void ent_k_rope(float x0, float x1, float c, float s, float *y0, float *y1) {
    *y0 = x0 * c - x1 * s;
    *y1 = x1 * c + x0 * s;
}

// The gradient of a rotated pair (dy0, dy1) turned back to the input's:
// (dy0 c + dy1 s, dy1 c - dy0 s), ent_k_rope by -s (the same bits).
ENT_HD void ent_k_rope_back(float dy0, float dy1, float c, float s, float *dx0, float *dx1) {
    ent_k_rope(dy0, dy1, c, -s, dx0, dx1);
}

// ---------------------------------------------------------------------------
// online softmax: a running (max, sum of exp(x - max)) over part of a row

typedef struct {
    float max; // largest value seen; -INFINITY before any
    float sum; // sum of exp(value - max) over the values seen
} ent_k_maxsum;

ENT_HD ent_k_maxsum ent_k_maxsum_empty(void) {
    ent_k_maxsum r;
    r.max = -INFINITY;
    r.sum = 0.0f;
    return r;
}

// The pair of the concatenation of the values behind a and b: the sums
// rescaled to the larger max by the factors *fa = exp(a.max - max) and
// *fb = exp(b.max - max), 0 for an empty side (which contributes nothing).
// Anything else computed over a's or b's values against their own max (an
// attention output) is rescaled by the same factors.
ENT_HD ent_k_maxsum ent_k_maxsum_merge_scaled(ent_k_maxsum a, ent_k_maxsum b, float *fa,
                                              float *fb) {
    ent_k_maxsum r;
    r.max = a.max > b.max ? a.max : b.max;
    *fa = a.max == -INFINITY ? 0.0f : ent_k_expf(a.max - r.max);
    *fb = b.max == -INFINITY ? 0.0f : ent_k_expf(b.max - r.max);
    r.sum = a.sum * *fa + b.sum * *fb;
    return r;
}

ENT_HD ent_k_maxsum ent_k_maxsum_merge(ent_k_maxsum a, ent_k_maxsum b) {
    float fa, fb;
    return ent_k_maxsum_merge_scaled(a, b, &fa, &fb);
}

// One more value x into the running pair: one exponential, except when x
// raises the max (a value of -infinity adds nothing).
ENT_HD ent_k_maxsum ent_k_maxsum_add(ent_k_maxsum a, float x) {
    if (x > a.max) {
        a.sum = (a.max == -INFINITY ? 0.0f : a.sum * ent_k_expf(a.max - x)) + 1.0f;
        a.max = x;
    } else if (x != -INFINITY) {
        a.sum += ent_k_expf(x - a.max);
    }
    return a;
}

// ---------------------------------------------------------------------------
// AdamW, one element

typedef struct {
    float lr, beta1, beta2, eps, weight_decay, grad_scale;
    float c1, c2; // bias corrections 1 - beta1^t and 1 - beta2^t
} ent_k_adamw_hp;

ENT_HD ent_k_adamw_hp ent_k_adamw_hparams(float lr, float beta1, float beta2, float eps,
                                          float weight_decay, float grad_scale, int t) {
    ent_k_adamw_hp h;
    h.lr = lr;
    h.beta1 = beta1;
    h.beta2 = beta2;
    h.eps = eps;
    h.weight_decay = weight_decay;
    h.grad_scale = grad_scale;
    h.c1 = 1.0f - powf(beta1, (float)t);
    h.c2 = 1.0f - powf(beta2, (float)t);
    return h;
}

// Updates the moments *m, *v with gradient grad and returns the new value of
// the f32 master weight w (decoupled weight decay: w -= lr * wd * w).
ENT_HD float ent_k_adamw(float *m, float *v, float grad, float w, const ent_k_adamw_hp *h) {
    float g = grad * h->grad_scale;
    float mi = h->beta1 * *m + (1.0f - h->beta1) * g;
    float vi = h->beta2 * *v + (1.0f - h->beta2) * g * g;
    *m = mi;
    *v = vi;
    float mhat = mi / h->c1, vhat = vi / h->c2;
    return w - h->lr * (mhat / (sqrtf(vhat) + h->eps) + h->weight_decay * w);
}

// ---------------------------------------------------------------------------
// bfloat16 on bit patterns (the upper half of an IEEE float)

ENT_HD uint32_t ent_k_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

ENT_HD float ent_k_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

ENT_HD float ent_k_bf16_to_f32(uint16_t h) { return ent_k_f32_from_bits((uint32_t)h << 16); }

// IEEE half precision: sign, 5 exponent bits (bias 15), 10 fraction bits;
// subnormals, infinities and NaNs (payload kept) exactly.
ENT_HD float ent_k_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return ent_k_f32_from_bits(sign | 0x7f800000u | m << 13);
    if (e != 0) return ent_k_f32_from_bits(sign | (e + 112) << 23 | m << 13);
    float f = (float)m * 5.9604644775390625e-08f; // m x 2^-24
    return sign ? -f : f;
}

// Round to nearest, ties to even; a NaN stays a (quiet) NaN of its sign,
// infinities stay infinite, values past the largest bf16 round to infinity,
// subnormals round like any other value.
ENT_HD uint16_t ent_k_f32_to_bf16(float f) {
    uint32_t u = ent_k_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// Stochastic rounding: up with probability (distance to the lower bf16) /
// (spacing), given 32 uniformly random bits, of which the low 16 are used; the
// expected result is f. NaN as above; infinities stay.
ENT_HD uint16_t ent_k_f32_to_bf16_stochastic(float f, uint32_t random) {
    uint32_t u = ent_k_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    if ((u & 0x7fffffffu) == 0x7f800000u) return (uint16_t)(u >> 16);
    u += random & 0xffffu;
    return (uint16_t)(u >> 16);
}

// ---------------------------------------------------------------------------
// blockwise quantisation (ent_block_scale, the int8 vector op)

// The running max |x| of a block; a NaN, once seen, stays.
ENT_HD float ent_k_amax_add(float amax, float x) {
    float a = fabsf(x);
    return a > amax || a != a ? a : amax;
}

// The scale of a block with largest magnitude amax quantised to integers in
// [-levels, levels]: amax / levels; *inv its inverse, 0 when the scale is 0
// or not finite.
ENT_HD float ent_k_block_scale(float amax, float levels, float *inv) {
    float scale = amax / levels;
    *inv = scale > 0.0f && isfinite(scale) ? 1.0f / scale : 0.0f;
    return scale;
}

// One value quantised with the inverse scale inv: x * inv rounded to nearest
// (ties to even), clamped to [-levels, levels]; NaN gives 0 (the block's
// scale already says the block is bad).
ENT_HD float ent_k_quantize(float x, float inv, float levels) {
    float r = rintf(x * inv);
    r = r > levels ? levels : r < -levels ? -levels : r;
    return r == r ? r : 0.0f;
}

#endif // ENT_KERNEL_MATH_H
