// test_kernel_math.c: the per-element arithmetic of kernels/kernel_math.h,
// which the CPU backend and the CUDA kernels share, checked with gcc here so
// that it is checked on machines without a GPU: each function against a
// double-precision reference and known values. Inputs are fresh random
// numbers on every run (the seed is printed; ENT_TEST_SEED=... reproduces).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ent_kernels.h"
#include "kernel_math.h"
#include "ref.h"

static uint32_t random_u32(void) { return (uint32_t)test_rand_int(0, 0xffffffffLL); }

// ---------------------------------------------------------------------------
// GELU and layernorm

static double gelu_ref(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

static double gelu_grad_ref(double x) {
    double u = sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
    double th = tanh(u), du = sqrt(2.0 / M_PI) * (1.0 + 3.0 * 0.044715 * x * x);
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du;
}

static void test_gelu(void **state) {
    (void)state;
    test_reseed(0x6e1);
    for (int k = 0; k < 200000; k++) {
        float x = (float)(test_uniform() * 24.0 - 12.0);
        double tol = 2e-6 * (1.0 + fabs(x));
        double g = ent_k_gelu(x), want = gelu_ref(x);
        if (fabs(g - want) > tol) fail_msg("gelu(%.9g) = %.9g, want %.9g", x, g, want);
        double d = ent_k_gelu_grad(x), dwant = gelu_grad_ref(x);
        if (fabs(d - dwant) > 1e-5 * (1.0 + fabs(x)))
            fail_msg("gelu'(%.9g) = %.9g, want %.9g", x, d, dwant);
    }
    // the derivative is the slope of the function itself (central differences)
    for (int k = 0; k < 100; k++) {
        double x = test_uniform() * 8.0 - 4.0, h = 1e-3;
        double fd = (ent_k_gelu((float)(x + h)) - ent_k_gelu((float)(x - h))) / (2.0 * h);
        assert_true(fabs(fd - ent_k_gelu_grad((float)x)) < 2e-3);
    }
    assert_true(ent_k_gelu(0.0f) == 0.0f);
    assert_true(fabsf(ent_k_gelu_grad(0.0f) - 0.5f) < 1e-7f);
    assert_true(ent_k_gelu(100.0f) == 100.0f);                  // saturates to x
    assert_true(fabsf(ent_k_gelu(-100.0f)) == 0.0f);            // and to 0
    assert_true(fabsf(ent_k_gelu_grad(100.0f) - 1.0f) < 1e-7f); // no overflow: e^88 inside
    assert_true(fabsf(ent_k_gelu_grad(-100.0f)) < 1e-7f);
}

static void test_layernorm(void **state) {
    (void)state;
    test_reseed(0x1a7);
    for (int k = 0; k < 10000; k++) {
        float x = (float)test_normal() * 3.0f, m = (float)test_normal(), r = (float)test_uniform() * 4.0f;
        float w = (float)test_normal(), b = (float)test_normal();
        double norm = ((double)x - m) * r, want = norm * w + b;
        assert_true(fabs(ent_k_norm(x, m, r) - norm) <= 1e-6 * (1.0 + fabs(norm)));
        assert_true(fabs(ent_k_layernorm(x, m, r, w, b) - want) <= 1e-6 * (1.0 + fabs(norm * w) + fabs(b)));
    }
    assert_true(ent_k_layernorm(2.0f, 2.0f, 7.0f, 3.0f, 0.25f) == 0.25f); // the mean maps to the bias
}

// ---------------------------------------------------------------------------
// online softmax

// (max, sum of exp(x - max)) in double
static void maxsum_ref(const float *x, int n, double *max, double *sum) {
    double m = -INFINITY, s = 0.0;
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - m);
    *max = m;
    *sum = s;
}

static void test_online_softmax(void **state) {
    (void)state;
    test_reseed(0x50f);
    float x[700];
    for (int trial = 0; trial < 300; trial++) {
        int n = (int)test_rand_int(2, 700), cut = (int)test_rand_int(0, n);
        double spread = trial % 3 == 0 ? 60.0 : 8.0; // some rows whose sums span many scales
        for (int i = 0; i < n; i++) x[i] = (float)(test_normal() * spread);
        ent_k_maxsum a = ent_k_maxsum_empty(), b = ent_k_maxsum_empty(), whole = ent_k_maxsum_empty();
        for (int i = 0; i < cut; i++) a = ent_k_maxsum_add(a, x[i]);
        for (int i = cut; i < n; i++) b = ent_k_maxsum_add(b, x[i]);
        for (int i = 0; i < n; i++) whole = ent_k_maxsum_add(whole, x[i]);
        float fa, fb;
        ent_k_maxsum m = ent_k_maxsum_merge_scaled(a, b, &fa, &fb);
        double rmax, rsum;
        maxsum_ref(x, n, &rmax, &rsum);
        // the merge of the parts is the softmax of the concatenation
        assert_true(m.max == (float)rmax);
        assert_true(whole.max == (float)rmax);
        if (fabs(m.sum - rsum) > 1e-5 * rsum) fail_msg("merged sum %.9g, want %.9g", m.sum, rsum);
        if (fabs(whole.sum - rsum) > 1e-5 * rsum) fail_msg("online sum %.9g, want %.9g", whole.sum, rsum);
        // the factors rescale each side's own sum to the merged max
        double amax, asum, bmax, bsum;
        if (cut > 0) {
            maxsum_ref(x, cut, &amax, &asum);
            assert_true(fabs(fa - exp(amax - rmax)) <= 1e-6);
        } else {
            assert_true(fa == 0.0f);
        }
        if (cut < n) {
            maxsum_ref(x + cut, n - cut, &bmax, &bsum);
            assert_true(fabs(fb - exp(bmax - rmax)) <= 1e-6);
        } else {
            assert_true(fb == 0.0f);
        }
        // probabilities from the pair sum to 1
        double total = 0.0;
        for (int i = 0; i < n; i++) total += ent_k_expf(x[i] - m.max) / m.sum;
        assert_true(fabs(total - 1.0) < 1e-5);
    }
    // empty sides and -infinity (masked scores) contribute nothing
    ent_k_maxsum e = ent_k_maxsum_empty(), one = ent_k_maxsum_add(e, 3.0f);
    ent_k_maxsum both = ent_k_maxsum_merge(e, e);
    assert_true(both.max == -INFINITY && both.sum == 0.0f);
    ent_k_maxsum left = ent_k_maxsum_merge(e, one), right = ent_k_maxsum_merge(one, e);
    assert_true(left.max == 3.0f && left.sum == 1.0f && right.max == 3.0f && right.sum == 1.0f);
    ent_k_maxsum masked = ent_k_maxsum_add(one, -INFINITY);
    assert_true(masked.max == 3.0f && masked.sum == 1.0f);
    assert_true(ent_k_maxsum_add(e, -INFINITY).sum == 0.0f);
}

// ---------------------------------------------------------------------------
// AdamW

static void test_adamw(void **state) {
    (void)state;
    test_reseed(0xada);
    enum { n = 4096 };
    float *w = malloc(sizeof(float) * n), *g = malloc(sizeof(float) * n);
    float *m = malloc(sizeof(float) * n), *v = malloc(sizeof(float) * n);
    float *w2 = malloc(sizeof(float) * n), *m2 = malloc(sizeof(float) * n);
    float *v2 = malloc(sizeof(float) * n);
    assert_non_null(v2);
    fill_normal(w, n, 1.0);
    fill_normal(g, n, 0.1);
    fill_normal(m, n, 0.01);
    fill_uniform(v, n, 0.0, 1e-3);
    memcpy(w2, w, sizeof(float) * n);
    memcpy(m2, m, sizeof(float) * n);
    memcpy(v2, v, sizeof(float) * n);
    float lr = 3e-4f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.7f;
    int t = 7;
    ent_k_adamw_hp h = ent_k_adamw_hparams(lr, b1, b2, eps, wd, gs, t);
    for (int i = 0; i < n; i++) {
        // the double-precision update
        double gi = (double)g[i] * gs;
        double mi = b1 * (double)m[i] + (1.0 - b1) * gi;
        double vi = b2 * (double)v[i] + (1.0 - b2) * gi * gi;
        double mhat = mi / (1.0 - pow(b1, t)), vhat = vi / (1.0 - pow(b2, t));
        double want = w[i] - lr * (mhat / (sqrt(vhat) + eps) + wd * (double)w[i]);
        float mf = m[i], vf = v[i];
        float got = ent_k_adamw(&mf, &vf, g[i], w[i], &h);
        if (fabs(got - want) > 1e-6 * (1.0 + fabs(want))) fail_msg("adamw %.9g, want %.9g", got, want);
        // m is a difference of two terms when m and g disagree in sign: its
        // error is relative to the terms, not to their (possibly tiny) sum
        assert_true(fabs(mf - mi) <= 1e-6 * (fabs(b1 * (double)m[i]) + fabs((1.0 - b1) * gi)) +
                                         1e-12);
        assert_true(fabs(vf - vi) <= 1e-5 * (1e-9 + fabs(vi)));
        w[i] = got;
        m[i] = mf;
        v[i] = vf;
    }
    // the CPU backend's op runs this element update: the same bits
    ent_backend_t *cpu = ent_backend_cpu_new(0);
    assert_non_null(cpu);
    assert_int_equal(cpu->iface->adamw_update(cpu, w2, NULL, g, m2, v2, n, lr, b1, b2, eps, wd, gs,
                                              t), ENT_OK);
    assert_memory_equal(w, w2, sizeof(float) * n);
    assert_memory_equal(m, m2, sizeof(float) * n);
    assert_memory_equal(v, v2, sizeof(float) * n);
    ent_backend_free(&cpu);
    free(w), free(g), free(m), free(v), free(w2), free(m2), free(v2);
}

// ---------------------------------------------------------------------------
// bfloat16

static float from_bits(uint32_t u) { return ent_k_f32_from_bits(u); }

// round to nearest even by comparing distances in double; a bf16 past the
// largest finite value counts as 2^128 (where IEEE rounding overflows)
static uint16_t bf16_rne_ref(float f) {
    uint32_t u = ent_k_f32_bits(f);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    if ((u & 0xffffu) == 0) return lo;
    double x = fabs((double)f);
    double vlo = fabs((double)ent_k_bf16_to_f32(lo));
    double vhi = (hi & 0x7fffu) == 0x7f80u ? ldexp(1.0, 128) : fabs((double)ent_k_bf16_to_f32(hi));
    double dlo = x - vlo, dhi = vhi - x;
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (lo & 1u) ? hi : lo;
}

static int is_nan_bf16(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) != 0; }

// Every one of the 65536 half-precision patterns against its value from the
// definition: (-1)^s x 2^(e-15) x (1 + m/1024), subnormals 2^-14 x m/1024,
// infinities, and NaNs that stay NaNs of their sign.
static void test_f16_widen(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t sgn = h >> 15, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
        float got = ent_k_f16_to_f32((uint16_t)h);
        if (e == 0x1f) {
            assert_true(m ? isnan(got) : isinf(got));
            assert_int_equal(signbit(got) != 0, sgn);
            continue;
        }
        double v = e ? ldexp(1.0 + m / 1024.0, (int)e - 15) : ldexp(m / 1024.0, -14);
        if (sgn) v = -v;
        if ((double)got != v || (signbit(got) != 0) != (int)sgn)
            fail_msg("f16 0x%04x widened to %.9g, expected %.9g", h, (double)got, v);
    }
}

static void test_bf16_round(void **state) {
    (void)state;
    // known values, ties to even
    assert_int_equal(ent_k_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x3f808000u)), 0x3f80); // tie, even below
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x3f818000u)), 0x3f82); // tie, even above
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x3f808001u)), 0x3f81); // past the tie
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x3f807fffu)), 0x3f80);
    assert_int_equal(ent_k_f32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(ent_k_f32_to_bf16(0.0f), 0x0000);
    assert_int_equal(ent_k_f32_to_bf16(-0.0f), 0x8000);
    // infinities stay, the largest floats overflow to infinity, NaNs stay NaN
    // (a signalling NaN whose payload sits in the low half too) with their sign
    assert_int_equal(ent_k_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(ent_k_f32_to_bf16(-INFINITY), 0xff80);
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x7f7fffffu)), 0x7f80);
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x7f7f7fffu)), 0x7f7f);
    assert_true(is_nan_bf16(ent_k_f32_to_bf16(NAN)));
    assert_true(is_nan_bf16(ent_k_f32_to_bf16(from_bits(0x7f800001u))));
    uint16_t nneg = ent_k_f32_to_bf16(from_bits(0xffc00001u));
    assert_true(is_nan_bf16(nneg) && (nneg & 0x8000u));
    // subnormals round like the rest
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x00000001u)), 0x0000);
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x00008000u)), 0x0000); // tie, even
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x00018000u)), 0x0002); // tie, even
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x00010001u)), 0x0001);
    assert_int_equal(ent_k_f32_to_bf16(from_bits(0x007fffffu)), 0x0080); // up to the smallest normal
    // every bf16 value converts to f32 and back unchanged
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if (is_nan_bf16((uint16_t)h)) continue;
        assert_int_equal(ent_k_f32_to_bf16(ent_k_bf16_to_f32((uint16_t)h)), h);
    }
    // random bit patterns (every exponent, subnormals included) against the reference
    test_reseed(0xbf16);
    for (int k = 0; k < 1000000; k++) {
        uint32_t u = random_u32();
        if (k % 4 == 0) u &= 0x807fffffu; // subnormals and zeros
        float f = from_bits(u);
        if (isnan(f)) {
            assert_true(is_nan_bf16(ent_k_f32_to_bf16(f)));
            continue;
        }
        uint16_t got = ent_k_f32_to_bf16(f), want = bf16_rne_ref(f);
        if (got != want) fail_msg("bf16(0x%08x) = 0x%04x, want 0x%04x", u, got, want);
    }
}

static void test_bf16_stochastic(void **state) {
    (void)state;
    test_reseed(0x5704);
    // values between two neighbours: only those two come out, and the mean is the value
    for (int trial = 0; trial < 20; trial++) {
        uint32_t u = (random_u32() & 0x3fffffffu) | 0x1u; // finite, positive, not on a bf16
        float f = from_bits(u);
        uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
        double sum = 0.0;
        int draws = 200000;
        for (int k = 0; k < draws; k++) {
            uint16_t r = ent_k_f32_to_bf16_stochastic(f, random_u32());
            assert_true(r == lo || r == hi);
            sum += ent_k_bf16_to_f32(r);
        }
        double spacing = ent_k_bf16_to_f32(hi) - ent_k_bf16_to_f32(lo);
        double frac = ((double)f - ent_k_bf16_to_f32(lo)) / spacing;
        // standard deviation of the mean: spacing * sqrt(p (1 - p) / draws); 5 sigma
        double sigma = spacing * sqrt(frac * (1.0 - frac) / draws) + 1e-30;
        if (fabs(sum / draws - f) > 5.0 * sigma + spacing * 1e-5)
            fail_msg("stochastic mean %.9g for %.9g (spacing %.3g)", sum / draws, f, spacing);
        // the probability of rounding up is the fraction, exactly, over all 2^16 low bits
        int ups = 0;
        for (uint32_t r = 0; r < 0x10000u; r++) ups += ent_k_f32_to_bf16_stochastic(f, r) == hi;
        assert_int_equal(ups, (int)(u & 0xffffu));
    }
    // bf16 values stay exact, special values stay
    for (int k = 0; k < 1000; k++) {
        uint32_t u = random_u32() & 0xffff0000u;
        if (isnan(from_bits(u))) continue;
        assert_int_equal(ent_k_f32_to_bf16_stochastic(from_bits(u), random_u32()), u >> 16);
    }
    assert_int_equal(ent_k_f32_to_bf16_stochastic(INFINITY, 0xffffffffu), 0x7f80);
    assert_int_equal(ent_k_f32_to_bf16_stochastic(-INFINITY, 0xffffu), 0xff80);
    assert_true(is_nan_bf16(ent_k_f32_to_bf16_stochastic(from_bits(0x7f800001u), 0)));
}

// ---------------------------------------------------------------------------
// int8 block quantisation

static void test_quantize(void **state) {
    (void)state;
    test_reseed(0x18);
    float inv;
    assert_true(ent_k_block_scale(0.0f, 127.0f, &inv) == 0.0f && inv == 0.0f);
    assert_true(isnan(ent_k_block_scale(NAN, 127.0f, &inv)) && inv == 0.0f);
    assert_true(isinf(ent_k_block_scale(INFINITY, 127.0f, &inv)) && inv == 0.0f);
    assert_true(ent_k_block_scale(254.0f, 127.0f, &inv) == 2.0f && inv == 0.5f);
    assert_true(ent_k_quantize(5.0f, 0.5f, 127.0f) == 2.0f);  // 2.5: ties to even
    assert_true(ent_k_quantize(7.0f, 0.5f, 127.0f) == 4.0f);  // 3.5
    assert_true(ent_k_quantize(-5.0f, 0.5f, 127.0f) == -2.0f);
    assert_true(ent_k_quantize(1e9f, 1.0f, 127.0f) == 127.0f); // clamped
    assert_true(ent_k_quantize(-1e9f, 1.0f, 127.0f) == -127.0f);
    assert_true(ent_k_quantize(NAN, 1.0f, 127.0f) == 0.0f);
    assert_true(ent_k_amax_add(3.0f, -4.0f) == 4.0f && ent_k_amax_add(3.0f, 1.0f) == 3.0f);
    assert_true(isnan(ent_k_amax_add(ent_k_amax_add(0.0f, NAN), 5.0f))); // a NaN stays
    // random blocks: the error of each value is at most half a step, the
    // largest one maps to +-127, and the scale is ent_block_scale's
    float x[300];
    for (int trial = 0; trial < 200; trial++) {
        int n = (int)test_rand_int(1, 300);
        fill_normal(x, (size_t)n, test_uniform() * 10.0);
        float amax = 0.0f;
        for (int i = 0; i < n; i++) amax = ent_k_amax_add(amax, x[i]);
        float inv2, scale = ent_k_block_scale(amax, 127.0f, &inv);
        assert_true(scale == ent_block_scale(x, (size_t)n, 127.0f, &inv2) && inv == inv2);
        int top = 0;
        for (int i = 0; i < n; i++) {
            float q = ent_k_quantize(x[i], inv, 127.0f);
            assert_true(q == rintf(q) && fabsf(q) <= 127.0f);
            assert_true(fabs((double)q * scale - x[i]) <= 0.5 * scale * (1.0 + 1e-5));
            top |= fabsf(q) == 127.0f;
        }
        assert_true(top || amax == 0.0f);
    }
}

int main(void) {
    test_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gelu),       cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_online_softmax), cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_f16_widen),
        cmocka_unit_test(test_bf16_round), cmocka_unit_test(test_bf16_stochastic),
        cmocka_unit_test(test_quantize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
