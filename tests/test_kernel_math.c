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
// RMSNorm, and the normalisation's input gradient (layernorm's and RMSNorm's)

// One row's loss sum_c dy_c * out_c, out the layer's output in double:
// layernorm (centred) or RMSNorm, eps 1e-5; for central differences.
static double norm_row_loss(const double *x, const float *w, const float *b, const float *dy,
                            int C, int centred) {
    double m = 0.0, v = 0.0, loss = 0.0;
    if (centred) {
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
    }
    for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
    double r = 1.0 / sqrt(v / C + 1e-5);
    for (int c = 0; c < C; c++) loss += dy[c] * ((x[c] - m) * r * w[c] + (centred ? b[c] : 0.0));
    return loss;
}

static void test_rmsnorm(void **state) {
    (void)state;
    test_reseed(0x125);
    for (int k = 0; k < 10000; k++) {
        float x = (float)test_normal() * 3.0f, r = (float)test_uniform() * 4.0f;
        float w = (float)test_normal();
        double want = (double)x * r * w;
        assert_true(fabs(ent_k_rmsnorm(x, r, w) - want) <= 1e-6 * (1.0 + fabs(want)));
        // the normalised value the weight's gradient multiplies: the same bits as x * rstd
        float n0 = ent_k_norm(x, 0.0f, r), xr = x * r;
        assert_memory_equal(&n0, &xr, sizeof n0);
        // the gradient term against its double form
        float dn = (float)test_normal(), md = (float)test_normal(), mdn = (float)test_normal();
        double g = (double)r * (dn - (double)md - (double)n0 * mdn);
        assert_true(fabs(ent_k_norm_grad(dn, n0, r, md, mdn) - g) <=
                    2e-6 * r * (fabs(dn) + fabs(md) + fabs(n0 * mdn)) + 1e-30);
    }
    // signs and special values: -0 stays -0, inf and NaN propagate
    assert_true(signbit(ent_k_rmsnorm(-0.0f, 2.0f, 3.0f)) && ent_k_rmsnorm(-0.0f, 2.0f, 3.0f) == 0.0f);
    assert_true(isinf(ent_k_rmsnorm(INFINITY, 0.5f, 1.0f)));
    assert_true(isnan(ent_k_rmsnorm(NAN, 0.5f, 1.0f)));
    assert_true(isnan(ent_k_norm_grad(1.0f, NAN, 1.0f, 0.0f, 1.0f)));
    assert_true(ent_k_rmsnorm(3e38f, 1e-38f, 1.0f) == 3e38f * 1e-38f); // no overflow inside
    // A whole row: the input gradient the backends assemble from
    // ent_k_norm_grad is the slope of the row's loss (central differences in
    // double), for RMSNorm (mean_d = 0) and layernorm, wide and narrow rows.
    enum { CMAX = 300 };
    float xf[CMAX], w[CMAX], b[CMAX], dy[CMAX];
    double xd[CMAX];
    for (int trial = 0; trial < 40; trial++) {
        int C = trial % 2 ? (int)test_rand_int(2, 8) : (int)test_rand_int(9, CMAX);
        int centred = trial % 4 >= 2;
        double spread = trial % 3 == 0 ? 1e3 : trial % 3 == 1 ? 1e-3 : 1.0; // scale-free
        fill_normal(xf, (size_t)C, spread);
        fill_normal(w, (size_t)C, 1.0);
        fill_normal(b, (size_t)C, 1.0);
        fill_normal(dy, (size_t)C, 1.0);
        double m = 0.0, v = 0.0;
        if (centred) {
            for (int c = 0; c < C; c++) m += xf[c];
            m /= C;
        }
        for (int c = 0; c < C; c++) v += ((double)xf[c] - m) * ((double)xf[c] - m);
        float mf = (float)m, r = (float)(1.0 / sqrt(v / C + 1e-5));
        double sum_d = 0.0, sum_dn = 0.0;
        for (int c = 0; c < C; c++) {
            float dn = dy[c] * w[c];
            sum_d += dn;
            sum_dn += (double)dn * ent_k_norm(xf[c], mf, r);
        }
        float mean_d = centred ? (float)(sum_d / C) : 0.0f, mean_dn = (float)(sum_dn / C);
        for (int c = 0; c < C; c++) xd[c] = xf[c];
        // the scale of the terms (a layernorm of 2 values has a gradient of ~0:
        // its error is relative to what cancelled)
        double gscale = 0.0;
        double got[CMAX], want[CMAX];
        for (int c = 0; c < C; c++) {
            float dn = dy[c] * w[c], nc = ent_k_norm(xf[c], mf, r);
            got[c] = ent_k_norm_grad(dn, nc, r, mean_d, mean_dn);
            gscale = fmax(gscale, r * (fabs(dn) + fabs(mean_d) + fabs(nc * mean_dn)));
            double h = 1e-4 * (fabs(xd[c]) + sqrt(v / C) + 1e-3), x0 = xd[c];
            xd[c] = x0 + h;
            double lp = norm_row_loss(xd, w, b, dy, C, centred);
            xd[c] = x0 - h;
            double lm = norm_row_loss(xd, w, b, dy, C, centred);
            xd[c] = x0;
            want[c] = (lp - lm) / (2.0 * h);
        }
        for (int c = 0; c < C; c++)
            if (fabs(got[c] - want[c]) > 1e-4 * gscale + 1e-12)
                fail_msg("%s C %d: d/dx[%d] = %.9g, finite differences %.9g (terms %.3g)",
                         centred ? "layernorm" : "rmsnorm", C, c, got[c], want[c], gscale);
    }
}

// ---------------------------------------------------------------------------
// rotary embeddings of one pair

static void test_rope(void **state) {
    (void)state;
    test_reseed(0x20be);
    for (int k = 0; k < 100000; k++) {
        float x0 = (float)test_normal() * 4.0f, x1 = (float)test_normal() * 4.0f;
        double th = (test_uniform() * 2.0 - 1.0) * 1e4; // positions x frequencies reach far
        float c = (float)cos(th), s = (float)sin(th), y0, y1, z0, z1, b0, b1;
        ent_k_rope(x0, x1, c, s, &y0, &y1);
        // Hugging Face's rotate_half: x * cos + (-x1, x0) * sin
        double w0 = (double)x0 * c - (double)x1 * s, w1 = (double)x1 * c + (double)x0 * s;
        double mag = fabs(x0) + fabs(x1);
        if (fabs(y0 - w0) > 2e-7 * mag || fabs(y1 - w1) > 2e-7 * mag)
            fail_msg("rope(%.9g, %.9g; %.9g, %.9g) = (%.9g, %.9g), want (%.9g, %.9g)", x0, x1, c,
                     s, y0, y1, w0, w1);
        // the way back is the transpose: the rotation by -s, bit for bit, and it
        // returns the pair (up to the table's rounding, |c|^2 + |s|^2 = 1 +- 1e-7)
        ent_k_rope_back(y0, y1, c, s, &z0, &z1);
        ent_k_rope(y0, y1, c, -s, &b0, &b1);
        assert_memory_equal(&z0, &b0, sizeof z0);
        assert_memory_equal(&z1, &b1, sizeof z1);
        if (fabs(z0 - x0) > 5e-7 * mag || fabs(z1 - x1) > 5e-7 * mag)
            fail_msg("rope back(rope(%.9g, %.9g)) = (%.9g, %.9g)", x0, x1, z0, z1);
        // the length is kept
        double n0 = hypot(x0, x1), n1 = hypot(y0, y1);
        assert_true(fabs(n1 - n0) <= 4e-7 * (n0 + 1e-30));
    }
    // a quarter turn, angle 0, and non-finite values propagate
    float y0, y1;
    ent_k_rope(3.0f, 5.0f, 0.0f, 1.0f, &y0, &y1);
    assert_true(y0 == -5.0f && y1 == 3.0f);
    ent_k_rope(3.0f, -5.0f, 1.0f, 0.0f, &y0, &y1);
    assert_true(y0 == 3.0f && y1 == -5.0f);
    ent_k_rope(NAN, 1.0f, 0.6f, 0.8f, &y0, &y1);
    assert_true(isnan(y0) && isnan(y1));
    ent_k_rope(INFINITY, 0.0f, 1.0f, 0.0f, &y0, &y1);
    assert_true(isinf(y0) && y0 > 0.0f);
}

// ---------------------------------------------------------------------------
// SiLU and SwiGLU

static double sigmoid_ref(double x) {
    return x >= 0.0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

static double silu_grad_ref(double x) {
    double s = sigmoid_ref(x);
    return s * (1.0 + x * (1.0 - s));
}

static void test_silu_swiglu(void **state) {
    (void)state;
    test_reseed(0x5e1);
    for (int k = 0; k < 200000; k++) {
        // mostly moderate gates, some far out in either tail
        float x = k % 10 == 0 ? (float)((test_uniform() * 2.0 - 1.0) * 200.0)
                              : (float)(test_normal() * 6.0);
        double s = ent_k_sigmoid(x), ws = sigmoid_ref(x);
        // relative accuracy in both tails down to 1e-38 (where the host's exp flushes)
        if (fabs(s - ws) > 1e-6 * ws + 1e-37) fail_msg("sigmoid(%.9g) = %.9g, want %.9g", x, s, ws);
        double f = ent_k_silu(x), wf = x * ws;
        if (fabs(f - wf) > 1e-6 * fabs(wf) + 1e-35) fail_msg("silu(%.9g) = %.9g, want %.9g", x, f, wf);
        double d = ent_k_silu_grad(x), wd = silu_grad_ref(x);
        // silu' crosses 0 near x = -1.28: its error is relative to its terms
        if (fabs(d - wd) > 1e-6 * (ws + fabs(x * ws)) + 1e-35)
            fail_msg("silu'(%.9g) = %.9g, want %.9g", x, d, wd);
        // SwiGLU is silu(gate) * up, its gradients dout * up * silu' and dout * silu
        float up = (float)test_normal(), dout = (float)test_normal(), dg, du;
        float sw = ent_k_swiglu(x, up), sw_want = ent_k_silu(x) * up;
        assert_memory_equal(&sw, &sw_want, sizeof sw);
        ent_k_swiglu_grad(x, up, dout, &dg, &du);
        // (the floors scaled too: below -87 the host's sigmoid is 0, silu' and
        // silu are then off by up to 1.4e-36, times dout and up)
        double wdg = (double)dout * up * wd, wdu = (double)dout * wf;
        if (fabs(dg - wdg) > (2e-6 * (ws + fabs(x * ws)) + 1e-35) * fabs((double)dout * up) ||
            fabs(du - wdu) > 2e-6 * fabs(wdu) + 1e-35 * fabs(dout))
            fail_msg("swiglu'(%.9g, %.9g; %.9g) = (%.9g, %.9g), want (%.9g, %.9g)", x, up, dout,
                     dg, du, wdg, wdu);
    }
    // the derivative is the slope of the function itself (central differences)
    for (int k = 0; k < 200; k++) {
        double x = test_uniform() * 16.0 - 8.0, h = 1e-3;
        double fd = (ent_k_silu((float)(x + h)) - ent_k_silu((float)(x - h))) / (2.0 * h);
        if (fabs(fd - ent_k_silu_grad((float)x)) > 2e-3)
            fail_msg("silu'(%.9g) = %.9g, slope %.9g", x, ent_k_silu_grad((float)x), fd);
    }
    // edges: 0 and -0, saturation without overflow, non-finite values
    assert_true(ent_k_sigmoid(0.0f) == 0.5f && ent_k_sigmoid(-0.0f) == 0.5f);
    assert_true(ent_k_silu(0.0f) == 0.0f && !signbit(ent_k_silu(0.0f)));
    assert_true(ent_k_silu(-0.0f) == 0.0f && signbit(ent_k_silu(-0.0f)));
    assert_true(ent_k_silu_grad(0.0f) == 0.5f);
    assert_true(ent_k_sigmoid(100.0f) == 1.0f && ent_k_sigmoid(-100.0f) >= 0.0f &&
                ent_k_sigmoid(-100.0f) < 1e-37f);
    assert_true(ent_k_silu(1e30f) == 1e30f);                       // silu(x) = x far out
    assert_true(ent_k_silu(-1e30f) <= 0.0f && ent_k_silu(-1e30f) > -1e-30f); // and 0
    assert_true(ent_k_silu_grad(1e30f) == 1.0f && fabsf(ent_k_silu_grad(-1e30f)) < 1e-30f);
    assert_true(ent_k_sigmoid(INFINITY) == 1.0f && ent_k_sigmoid(-INFINITY) == 0.0f);
    assert_true(ent_k_silu(INFINITY) == INFINITY);
    assert_true(isnan(ent_k_silu(-INFINITY))); // -inf x 0: a diverged gate is not hidden
    assert_true(isnan(ent_k_sigmoid(NAN)) && isnan(ent_k_silu(NAN)) && isnan(ent_k_silu_grad(NAN)));
    float dg, du;
    ent_k_swiglu_grad(NAN, 1.0f, 1.0f, &dg, &du);
    assert_true(isnan(dg) && isnan(du));
    ent_k_swiglu_grad(2.0f, NAN, 1.0f, &dg, &du);
    assert_true(isnan(dg) && !isnan(du)); // dup does not read up
    assert_true(isinf(ent_k_swiglu(2.0f, INFINITY)));
}

// The CPU backend's Llama ops run these element functions: the same bits.
static void test_cpu_llama_ops_share_math(void **state) {
    (void)state;
    test_reseed(0x11a);
    enum { B = 2, T = 5, H = 3, hd = 8, C = H * hd, N = B * T, n = N * C };
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    float *g = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n);
    float *d = malloc(sizeof(float) * n), *dg = malloc(sizeof(float) * n);
    float *du = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * C);
    float rstd[N], ct[T * hd / 2], st[T * hd / 2];
    assert_non_null(w);
    fill_normal(x, n, 2.0);
    fill_normal(g, n, 4.0);
    fill_normal(u, n, 1.0);
    fill_normal(d, n, 1.0);
    fill_normal(w, C, 1.0);
    ent_backend_t *cpu = ent_backend_cpu_new(1);
    assert_non_null(cpu);
    // swiglu, forward and backward (accumulating into zeros)
    memset(dg, 0, sizeof(float) * n);
    memset(du, 0, sizeof(float) * n);
    assert_int_equal(cpu->iface->swiglu_forward(cpu, y, g, u, n), ENT_OK);
    assert_int_equal(cpu->iface->swiglu_backward(cpu, dg, du, d, g, u, n), ENT_OK);
    for (int i = 0; i < n; i++) {
        float want = ent_k_swiglu(g[i], u[i]), wg, wu;
        ent_k_swiglu_grad(g[i], u[i], d[i], &wg, &wu);
        wg += 0.0f, wu += 0.0f; // the op adds to 0
        assert_memory_equal(&y[i], &want, sizeof want);
        assert_memory_equal(&dg[i], &wg, sizeof wg);
        assert_memory_equal(&du[i], &wu, sizeof wu);
    }
    // rmsnorm's output from its own rstd
    assert_int_equal(cpu->iface->rmsnorm_forward(cpu, y, rstd, x, w, 1e-5f, N, C), ENT_OK);
    for (int i = 0; i < n; i++) {
        float want = ent_k_rmsnorm(x[i], rstd[i / C], w[i % C]);
        assert_memory_equal(&y[i], &want, sizeof want);
    }
    // rope, forward then back, pair by pair
    ent_rope rope = {.theta = 500000.0, .scaling = ENT_ROPE_DEFAULT};
    ent_rope_table(&rope, hd, T, ct, st);
    memcpy(y, x, sizeof(float) * n);
    assert_int_equal(cpu->iface->rope_forward(cpu, y, ct, st, B, T, H, hd), ENT_OK);
    memcpy(d, y, sizeof(float) * n);
    assert_int_equal(cpu->iface->rope_backward(cpu, d, ct, st, B, T, H, hd), ENT_OK);
    for (int bth = 0; bth < B * T * H; bth++) {
        int t = bth / H % T;
        for (int i = 0; i < hd / 2; i++) {
            size_t i0 = (size_t)bth * hd + i, i1 = i0 + hd / 2;
            float f0, f1, b0, b1;
            ent_k_rope(x[i0], x[i1], ct[t * hd / 2 + i], st[t * hd / 2 + i], &f0, &f1);
            ent_k_rope_back(y[i0], y[i1], ct[t * hd / 2 + i], st[t * hd / 2 + i], &b0, &b1);
            assert_memory_equal(&y[i0], &f0, sizeof f0);
            assert_memory_equal(&y[i1], &f1, sizeof f1);
            assert_memory_equal(&d[i0], &b0, sizeof b0);
            assert_memory_equal(&d[i1], &b1, sizeof b1);
        }
    }
    ent_backend_free(&cpu);
    free(x), free(y), free(g), free(u), free(d), free(dg), free(du), free(w);
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
            // half a step, and the float rounding of x * inv (a few ulps of x:
            // near 127 steps they beat 1e-5 of a step), as unit_kernels allows
            assert_true(fabs((double)q * scale - x[i]) <=
                        0.5 * scale * (1.0 + 1e-5) + 0x1p-22 * fabs(x[i]));
            top |= fabsf(q) == 127.0f;
        }
        assert_true(top || amax == 0.0f);
    }
}

int main(void) {
    test_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gelu),       cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_rmsnorm),    cmocka_unit_test(test_rope),
        cmocka_unit_test(test_silu_swiglu), cmocka_unit_test(test_cpu_llama_ops_share_math),
        cmocka_unit_test(test_online_softmax), cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_f16_widen),
        cmocka_unit_test(test_bf16_round), cmocka_unit_test(test_bf16_stochastic),
        cmocka_unit_test(test_quantize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
