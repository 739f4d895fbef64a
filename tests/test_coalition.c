// test_coalition.c: the coalition's round math (runtime/coalition/): the
// codecs' round trips and byte layouts (read here as docs/coalition.md
// describes them), error feedback over many rounds, determinism (twice, on 1,
// 2 and 3 threads, any call and arrival order), hostile buffers (seeded
// corruption of every byte, truncation at every length, read from a buffer
// that ends at an inaccessible page), the outer Nesterov step against values
// worked out by hand, the token-weighted merge, and a few whole rounds of
// three sites and a coordinator whose anchors must stay bit-identical. Then
// the vectors that travel (runtime/coalition/vec.c): the global layout
// against tensor-parallel arenas, chunked vectors sent and reassembled in any
// order, hostile chunks refused, and the coordinator's whole round
// (coal_round_merge) independent of the order sites are listed in. And the
// ledger's JSON, read back exactly and refused whole when damaged.
// Inputs are fresh random numbers on every run (ENT_TEST_SEED=... reproduces one).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coalition/coalition_impl.h"
#include "ent_runtime.h"
#include "ref.h"

static float *fvec(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

static uint8_t *bvec(size_t n) {
    uint8_t *p = calloc(n ? n : 1, 1);
    assert_non_null(p);
    return p;
}

// encodes x and checks the length against ent_codec_encoded_size; caller frees
static uint8_t *encode(const ent_codec *c, const float *x, size_t n, size_t *len) {
    size_t want = 0;
    assert_int_equal(ent_codec_encoded_size(c, n, &want), ENT_OK);
    uint8_t *buf = bvec(want);
    assert_int_equal(ent_codec_encode(c, x, n, buf, want, len), ENT_OK);
    assert_int_equal(*len, want);
    return buf;
}

static float le_f32(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t le_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static double block_amax(const float *x, size_t i0, size_t i1) {
    double a = 0;
    for (size_t i = i0; i < i1; i++) a = fmax(a, fabs(x[i]));
    return a;
}

// a random delta-like vector: normal values at several scales, some blocks zero
static void fill_delta(float *x, size_t n, size_t block) {
    fill_normal(x, n, 1e-3);
    for (size_t i = 0; i < n; i++)
        if ((i / 97) % 5 == 3) x[i] *= 50.0f; // stretches of larger values
    if (n > 3 * block)
        for (size_t i = block; i < 2 * block; i++) x[i] = 0.0f;
}

static const size_t sizes[] = {0, 1, 2, 5, 63, 64, 65, 127, 128, 129, 1000, 4099};

// ---------------------------------------------------------------------------

static void test_names_and_settings(void **state) {
    (void)state;
    ent_codec c;
    assert_int_equal(ent_codec_parse("int8", &c), ENT_OK);
    assert_int_equal(c.kind, ENT_CODEC_INT8);
    assert_int_equal(c.block, ENT_CODEC_INT8_BLOCK);
    assert_int_equal(ent_codec_parse("int4", &c), ENT_OK);
    assert_int_equal(c.block, ENT_CODEC_INT4_BLOCK);
    assert_int_equal(ent_codec_parse("topk", &c), ENT_OK);
    assert_int_equal(c.k, ENT_CODEC_TOPK_K);
    assert_string_equal(ent_codec_name(ENT_CODEC_TOPK), "topk");
    assert_string_equal(ent_codec_name((ent_codec_kind)9), "invalid");
    assert_int_equal(ent_codec_parse("fp8", &c), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "unknown codec 'fp8'"));
    const ent_codec bad[] = {
        {ENT_CODEC_INT8, 0, 0}, {ENT_CODEC_INT8, ENT_CODEC_MAX_BLOCK + 1, 0},
        {ENT_CODEC_INT4, 63, 0}, {ENT_CODEC_TOPK, 64, 0}, {ENT_CODEC_TOPK, 64, 65},
        {ENT_CODEC_INT8, 64, 3}, {(ent_codec_kind)0, 64, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t bytes;
        assert_int_equal(ent_codec_check(&bad[i]), ENT_ERR_USAGE);
        assert_int_equal(ent_codec_encoded_size(&bad[i], 10, &bytes), ENT_ERR_USAGE);
    }
    // sizes: the layouts of docs/coalition.md
    size_t bytes;
    ent_codec i8 = ent_codec_default(ENT_CODEC_INT8), i4 = ent_codec_default(ENT_CODEC_INT4);
    ent_codec tk = {ENT_CODEC_TOPK, 1024, 16};
    assert_int_equal(ent_codec_encoded_size(&i8, 1000, &bytes), ENT_OK);
    assert_int_equal(bytes, 24 + 4 * 4 + 1000);
    assert_int_equal(ent_codec_encoded_size(&i4, 1001, &bytes), ENT_OK);
    assert_int_equal(bytes, 24 + 4 * 8 + 501);
    assert_int_equal(ent_codec_encoded_size(&tk, 3000, &bytes), ENT_OK);
    assert_int_equal(bytes, 24 + 8 * 3 + (48 * 10 + 7) / 8 + 48 / 4);
    assert_int_equal(ent_codec_encoded_size(&tk, 2050, &bytes), ENT_OK); // last block keeps 2
    assert_int_equal(bytes, 24 + 8 * 3 + (34 * 10 + 7) / 8 + (34 + 3) / 4);
    assert_int_equal(ent_codec_encoded_size(&i8, SIZE_MAX - 8, &bytes), ENT_ERR_USAGE);
}

// int8: the header as documented, scales = max|x| / 127 per block, every
// value within half its block's scale, and the values the backends'
// quantize_i8 + dequantize_i8 give, bit for bit. (The half-scale bounds allow
// float rounding: x * (1 / scale) is off by up to ~127 * 2^-23 of a step, and
// q * scale by 2^-24 of itself, together under 1e-4 of half a step.)
static void test_int8_round_trip(void **state) {
    (void)state;
    test_reseed(0x18);
    ent_backend_t *be = ent_backend_cpu_new(0);
    assert_non_null(be);
    uint32_t blocks[] = {1, 7, 64, 256};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (size_t bi = 0; bi < sizeof blocks / sizeof blocks[0]; bi++) {
            size_t n = sizes[si], block = blocks[bi], nb = (n + block - 1) / block, len;
            ent_codec c = {ENT_CODEC_INT8, blocks[bi], 0};
            float *x = fvec(n), *back = fvec(n), *ref = fvec(n), *scales = fvec(nb);
            int8_t *q = (int8_t *)bvec(n);
            fill_delta(x, n, block);
            uint8_t *buf = encode(&c, x, n, &len);
            assert_memory_equal(buf, "ENTD", 4);
            assert_int_equal(buf[4], ENT_CODEC_VERSION);
            assert_int_equal(buf[5], ENT_CODEC_INT8);
            assert_int_equal(le_u32(buf + 8), n);
            assert_int_equal(le_u32(buf + 16), block);
            assert_int_equal(ent_codec_decode(buf, len, back, n), ENT_OK);
            assert_int_equal(ent_vec_quantize_i8(be, q, scales, x, n, block), ENT_OK);
            assert_int_equal(ent_vec_dequantize_i8(be, ref, q, scales, n, block), ENT_OK);
            assert_memory_equal(back, ref, n * sizeof(float));
            assert_memory_equal(buf + 24 + 4 * nb, q, n);
            for (size_t b = 0; b < nb; b++) {
                size_t i0 = b * block, i1 = i0 + block < n ? i0 + block : n;
                double amax = block_amax(x, i0, i1), scale = le_f32(buf + 24 + 4 * b);
                assert_true(fabs(scale - amax / 127.0) <= 1e-6 * amax);
                for (size_t i = i0; i < i1; i++)
                    assert_true(fabs((double)back[i] - x[i]) <= 0.5 * scale * (1 + 1e-4));
            }
            free(x);
            free(back);
            free(ref);
            free(scales);
            free(q);
            free(buf);
        }
    ent_backend_free(&be);
}

// int4: scale = max|x| / 7 per block, nibbles as documented, error <= scale / 2.
static void test_int4_round_trip(void **state) {
    (void)state;
    test_reseed(0x14);
    uint32_t blocks[] = {2, 8, 64, 128};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (size_t bi = 0; bi < sizeof blocks / sizeof blocks[0]; bi++) {
            size_t n = sizes[si], block = blocks[bi], nb = (n + block - 1) / block, len;
            ent_codec c = {ENT_CODEC_INT4, blocks[bi], 0};
            float *x = fvec(n), *back = fvec(n);
            fill_delta(x, n, block);
            uint8_t *buf = encode(&c, x, n, &len);
            assert_int_equal(buf[5], ENT_CODEC_INT4);
            assert_int_equal(ent_codec_decode(buf, len, back, n), ENT_OK);
            const uint8_t *nib = buf + 24 + 4 * nb;
            for (size_t b = 0; b < nb; b++) {
                size_t i0 = b * block, i1 = i0 + block < n ? i0 + block : n;
                double amax = block_amax(x, i0, i1), scale = le_f32(buf + 24 + 4 * b);
                assert_true(fabs(scale - amax / 7.0) <= 1e-6 * amax);
                for (size_t i = i0; i < i1; i++) {
                    int q = (nib[i / 2] >> (4 * (i % 2))) & 0xF;
                    q = q >= 8 ? q - 16 : q;
                    assert_true(q >= -7 && q <= 7);
                    assert_true(back[i] == (float)q * (float)scale);
                    assert_true(fabs((double)back[i] - x[i]) <= 0.5 * scale * (1 + 1e-4));
                }
            }
            if (n % 2) assert_int_equal(nib[n / 2] >> 4, 0);
            free(x);
            free(back);
            free(buf);
        }
}

// The reference top-k of a block: ranks by |x| descending, then position.
static const float *rank_x;
static int by_strength(const void *a, const void *b) {
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    double fi = fabs(rank_x[i]), fj = fabs(rank_x[j]);
    if (fi != fj) return fi > fj ? -1 : 1;
    return (i > j) - (i < j);
}

// topk: exactly the k strongest values of each block are non-zero positions
// of the decoded block (lo > 0 here), each with its sign and the lo or hi of
// its block; lo and hi are the means of the best split of the kept
// magnitudes into two groups (brute force in double), and each kept value
// decodes to the nearer of the two.
static void test_topk_round_trip(void **state) {
    (void)state;
    test_reseed(0x7c);
    const ent_codec codecs[] = {{ENT_CODEC_TOPK, 64, 1}, {ENT_CODEC_TOPK, 64, 4},
                                {ENT_CODEC_TOPK, 100, 7}, {ENT_CODEC_TOPK, 1024, 16},
                                {ENT_CODEC_TOPK, 8, 8}, {ENT_CODEC_TOPK, 1, 1}};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (size_t ci = 0; ci < sizeof codecs / sizeof codecs[0]; ci++) {
            const ent_codec *c = &codecs[ci];
            size_t n = sizes[si], block = c->block, nb = (n + block - 1) / block, len;
            float *x = fvec(n), *back = fvec(n);
            fill_normal(x, n, 1.0); // no zeros: every kept magnitude is above 0
            if (n > 20) x[3] = x[17] = 2.5f, x[9] = -2.5f; // ties go to the lower position
            uint8_t *buf = encode(c, x, n, &len);
            assert_int_equal(buf[5], ENT_CODEC_TOPK);
            assert_int_equal(le_u32(buf + 20), c->k);
            assert_int_equal(ent_codec_decode(buf, len, back, n), ENT_OK);
            size_t *idx = calloc(block, sizeof *idx);
            double *mag = calloc(block, sizeof *mag);
            assert_non_null(idx);
            assert_non_null(mag);
            for (size_t b = 0; b < nb; b++) {
                size_t i0 = b * block, i1 = i0 + block < n ? i0 + block : n, L = i1 - i0;
                size_t kb = L < c->k ? L : c->k;
                float lo = le_f32(buf + 24 + 8 * b), hi = le_f32(buf + 24 + 8 * b + 4);
                assert_true(lo > 0 && lo <= hi);
                for (size_t i = 0; i < L; i++) idx[i] = i0 + i;
                rank_x = x;
                qsort(idx, L, sizeof *idx, by_strength);
                for (size_t r = 0; r < L; r++) {
                    size_t i = idx[r];
                    if (r >= kb) {
                        assert_true(back[i] == 0.0f);
                        continue;
                    }
                    assert_true(back[i] == lo || back[i] == hi || back[i] == -lo || back[i] == -hi);
                    assert_true((back[i] < 0) == (x[i] < 0));
                    double a = fabs(x[i]), got = fabs(back[i]), other = got == lo ? hi : lo;
                    assert_true(fabs(a - got) <= fabs(a - other) + 1e-6 * a);
                    mag[kb - 1 - r] = a; // ascending
                }
                // the two levels are as good as the best split (brute force):
                // the squared error of the kept magnitudes is the least
                double sq = 0, best = kb == 1 ? mag[0] * mag[0] : 0, err = 0;
                for (size_t r = 0; r < kb; r++) sq += mag[r] * mag[r];
                for (size_t j = 1; j < kb; j++) {
                    double s0 = 0, s1 = 0;
                    for (size_t r = 0; r < j; r++) s0 += mag[r];
                    for (size_t r = j; r < kb; r++) s1 += mag[r];
                    best = fmax(best, s0 * s0 / j + s1 * s1 / (kb - j));
                }
                for (size_t r = 0; r < kb; r++) {
                    size_t i = idx[r];
                    err += (fabs(x[i]) - fabs(back[i])) * (fabs(x[i]) - fabs(back[i]));
                }
                assert_true(err <= (sq - best) + 1e-9 * sq);
                assert_true(lo >= mag[0] * (1 - 1e-6) && hi <= mag[kb - 1] * (1 + 1e-6));
            }
            free(idx);
            free(mag);
            free(x);
            free(back);
            free(buf);
        }
}

// decode_axpy: y + alpha * D within float rounding, and exactly y - D for alpha -1.
static void test_decode_axpy(void **state) {
    (void)state;
    test_reseed(0xa1);
    const ent_codec codecs[] = {ent_codec_default(ENT_CODEC_INT8),
                                ent_codec_default(ENT_CODEC_INT4),
                                ent_codec_default(ENT_CODEC_TOPK)};
    size_t n = 5000;
    float *x = fvec(n), *y = fvec(n), *y0 = fvec(n), *d = fvec(n);
    for (size_t ci = 0; ci < 3; ci++) {
        size_t len;
        fill_delta(x, n, codecs[ci].block);
        fill_normal(y0, n, 1.0);
        uint8_t *buf = encode(&codecs[ci], x, n, &len);
        assert_int_equal(ent_codec_decode(buf, len, d, n), ENT_OK);
        memcpy(y, y0, n * sizeof(float));
        assert_int_equal(ent_codec_decode_axpy(buf, len, -1.0f, y, n), ENT_OK);
        for (size_t i = 0; i < n; i++) assert_true(y[i] == y0[i] - d[i]);
        memcpy(y, y0, n * sizeof(float));
        assert_int_equal(ent_codec_decode_axpy(buf, len, 0.3f, y, n), ENT_OK);
        for (size_t i = 0; i < n; i++)
            assert_true(fabs(y[i] - (y0[i] + 0.3 * d[i])) <= 1e-6 * (fabs(y0[i]) + fabs(d[i])));
        free(buf);
    }
    free(x);
    free(y);
    free(y0);
    free(d);
}

// ---------------------------------------------------------------------------
// determinism

static void test_determinism(void **state) {
    (void)state;
    test_reseed(0xde7);
    const ent_codec codecs[] = {ent_codec_default(ENT_CODEC_INT8),
                                ent_codec_default(ENT_CODEC_INT4),
                                ent_codec_default(ENT_CODEC_TOPK), {ENT_CODEC_TOPK, 256, 32}};
    size_t n = 100003;
    float *a = fvec(n), *b = fvec(n), *da = fvec(n), *db = fvec(n), *da2 = fvec(n), *db2 = fvec(n);
    int threads = omp_get_max_threads();
    for (size_t ci = 0; ci < sizeof codecs / sizeof codecs[0]; ci++) {
        const ent_codec *c = &codecs[ci];
        fill_delta(a, n, c->block);
        fill_delta(b, n, c->block);
        size_t len1, len2, lenb;
        omp_set_num_threads(1);
        uint8_t *one = encode(c, a, n, &len1);
        for (int t = 2; t <= 3; t++) {
            omp_set_num_threads(t);
            uint8_t *again = encode(c, a, n, &len2);
            assert_int_equal(len1, len2);
            assert_memory_equal(one, again, len1);
            free(again);
        }
        omp_set_num_threads(threads);
        uint8_t *twice = encode(c, a, n, &len2);
        assert_memory_equal(one, twice, len1);
        // decoding a then b, and b then a, on different thread counts
        uint8_t *bb = encode(c, b, n, &lenb);
        omp_set_num_threads(1);
        assert_int_equal(ent_codec_decode(one, len1, da, n), ENT_OK);
        assert_int_equal(ent_codec_decode(bb, lenb, db, n), ENT_OK);
        omp_set_num_threads(2);
        assert_int_equal(ent_codec_decode(bb, lenb, db2, n), ENT_OK);
        assert_int_equal(ent_codec_decode(one, len1, da2, n), ENT_OK);
        omp_set_num_threads(threads);
        assert_memory_equal(da, da2, n * sizeof(float));
        assert_memory_equal(db, db2, n * sizeof(float));
        free(one);
        free(twice);
        free(bb);
    }
    free(a);
    free(b);
    free(da);
    free(db);
    free(da2);
    free(db2);
}

// ---------------------------------------------------------------------------
// error feedback

typedef struct {
    double max_residual_first, max_residual_second; // over rounds [1, R/2] and (R/2, R]
    double track_half, track_end;                   // max |sum of decoded - t d| at R/2 and R
} ef_run;

// R rounds with the same delta d each round, with error feedback or without
// (then each round sends C(d)).
static ef_run run_feedback(const ent_codec *c, const float *d, size_t n, int R, int feedback) {
    ef_run out = {0};
    size_t cap, len;
    assert_int_equal(ent_codec_encoded_size(c, n, &cap), ENT_OK);
    uint8_t *buf = bvec(cap);
    float *delta = fvec(n), *residual = fvec(n);
    double *sum = calloc(n, sizeof *sum);
    float *dec = fvec(n);
    assert_non_null(sum);
    for (int t = 1; t <= R; t++) {
        memcpy(delta, d, n * sizeof(float));
        if (feedback) {
            float *before = fvec(n);
            memcpy(before, residual, n * sizeof(float));
            assert_int_equal(ent_codec_encode_feedback(c, delta, residual, n, buf, cap, &len),
                             ENT_OK);
            assert_int_equal(ent_codec_decode(buf, len, dec, n), ENT_OK);
            // the new residual is exactly what the decoded update missed of d + r
            for (size_t i = 0; i < n; i++) assert_true(residual[i] == (d[i] + before[i]) - dec[i]);
            free(before);
        } else {
            assert_int_equal(ent_codec_encode(c, delta, n, buf, cap, &len), ENT_OK);
            assert_int_equal(ent_codec_decode(buf, len, dec, n), ENT_OK);
        }
        double rmax = 0, track = 0;
        for (size_t i = 0; i < n; i++) {
            sum[i] += dec[i];
            rmax = fmax(rmax, fabs(residual[i]));
            track = fmax(track, fabs(sum[i] - (double)t * d[i]));
        }
        if (t <= R / 2) out.max_residual_first = fmax(out.max_residual_first, rmax);
        else out.max_residual_second = fmax(out.max_residual_second, rmax);
        if (t == R / 2) out.track_half = track;
        if (t == R) out.track_end = track;
    }
    free(buf);
    free(delta);
    free(residual);
    free(sum);
    free(dec);
    return out;
}

// With error feedback the sum of the decoded updates tracks the sum of the
// true deltas: the gap is the last residual, which stays bounded (int8:
// max|d| / 253, int4: max|d| / 13, from |r'| <= scale(d + r) / 2; top-k: a
// value waits at most about block / k rounds, so by 2 * block / k * max|d|)
// and does not grow. Without it the gap grows with the rounds, and for
// top-k it is far larger.
static void test_error_feedback(void **state) {
    (void)state;
    test_reseed(0xef);
    const ent_codec codecs[] = {{ENT_CODEC_INT8, 64, 0}, {ENT_CODEC_INT4, 64, 0},
                                {ENT_CODEC_TOPK, 256, 8}};
    const double bound[] = {1.0 / 253, 1.0 / 13, 2.0 * 256 / 8};
    size_t n = 4096;
    int R = 400;
    float *d = fvec(n);
    for (size_t ci = 0; ci < 3; ci++) {
        fill_normal(d, n, 1e-3);
        double dmax = block_amax(d, 0, n);
        ef_run fb = run_feedback(&codecs[ci], d, n, R, 1);
        ef_run raw = run_feedback(&codecs[ci], d, n, R, 0);
        if (getenv("ENT_TEST_VERBOSE"))
            fprintf(stderr, "%s: residual max %.3g then %.3g (bound %.3g); gap with feedback "
                    "%.3g, without %.3g at R/2 and %.3g at R\n", ent_codec_name(codecs[ci].kind),
                    fb.max_residual_first, fb.max_residual_second, bound[ci] * dmax,
                    fb.track_end, raw.track_half, raw.track_end);
        double rmax = fmax(fb.max_residual_first, fb.max_residual_second);
        assert_true(rmax <= bound[ci] * dmax * 1.001);
        assert_true(fb.max_residual_second <= 1.25 * fb.max_residual_first);
        // the gap is the last residual, up to the rounding of d + r in each round
        assert_true(fb.track_end <= rmax * 1.001 + 2.5e-7 * R * (dmax + rmax));
        assert_true(raw.track_end >= 1.9 * raw.track_half); // grows linearly
        assert_true(raw.track_end > 4.0 * fb.track_end);
        if (codecs[ci].kind == ENT_CODEC_TOPK) assert_true(raw.track_end > 0.5 * R * dmax / 4);
    }
    free(d);
}

// ---------------------------------------------------------------------------
// hostile buffers

// A copy of a buffer placed so that its last byte is the last one before a
// page that faults on any access: a decoder reading one byte too far dies.
typedef struct {
    uint8_t *map;
    size_t map_bytes, room;
} guarded;

static guarded guarded_new(size_t room) {
    long page = sysconf(_SC_PAGESIZE);
    guarded g;
    g.room = (room + (size_t)page - 1) / (size_t)page * (size_t)page;
    g.map_bytes = g.room + (size_t)page;
    g.map = mmap(NULL, g.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g.map != MAP_FAILED);
    assert_int_equal(mprotect(g.map + g.room, (size_t)page, PROT_NONE), 0);
    return g;
}

static uint8_t *guarded_put(guarded *g, const uint8_t *src, size_t len) {
    assert_true(len <= g->room);
    uint8_t *p = g->map + g->room - len;
    memcpy(p, src, len);
    return p;
}

#define CANARY 64
static const float sentinel = 12345.0f;

// Decodes (and decode_axpy's) a candidate buffer: either an error with the
// output untouched, or finite values; never a write past the n values.
// Returns 1 when it decoded.
static int try_decode(const uint8_t *buf, size_t len, float *out, size_t n) {
    for (size_t i = 0; i < n + CANARY; i++) out[i] = sentinel;
    ent_status st = ent_codec_decode(buf, len, out, n);
    for (size_t i = n; i < n + CANARY; i++) assert_true(out[i] == sentinel);
    if (st != ENT_OK) {
        assert_int_equal(st, ENT_ERR_INPUT);
        assert_true(strncmp(ent_last_error(), "encoded delta: ", 15) == 0);
        for (size_t i = 0; i < n; i++) assert_true(out[i] == sentinel);
    } else {
        for (size_t i = 0; i < n; i++) assert_true(isfinite(out[i]));
    }
    for (size_t i = 0; i < n + CANARY; i++) out[i] = 1.0f;
    ent_status st2 = ent_codec_decode_axpy(buf, len, 0.5f, out, n);
    assert_int_equal(st2, st);
    for (size_t i = n; i < n + CANARY; i++) assert_true(out[i] == 1.0f);
    for (size_t i = 0; i < n; i++) assert_true(st2 == ENT_OK ? isfinite(out[i]) : out[i] == 1.0f);
    return st == ENT_OK;
}

// Every byte of an encoded buffer of each codec changed in 8 ways (seeded),
// 3000 seeded changes of 1-8 random bytes, truncation at every length and
// extension by 1-8 bytes: each decodes to finite values or is refused with
// the output untouched. Changes to magic, version, codec, reserved bytes and
// count, truncations and extensions are always refused.
static void test_hostile_buffers(void **state) {
    (void)state;
    test_reseed(0x405);
    const ent_codec codecs[] = {{ENT_CODEC_INT8, 64, 0}, {ENT_CODEC_INT4, 64, 0},
                                {ENT_CODEC_TOPK, 128, 8}, {ENT_CODEC_TOPK, 100, 100}};
    size_t n = 700;
    float *x = fvec(n), *out = fvec(n + CANARY);
    guarded g = guarded_new(1 << 16);
    for (size_t ci = 0; ci < sizeof codecs / sizeof codecs[0]; ci++) {
        size_t len, decoded = 0, tried = 0;
        fill_delta(x, n, codecs[ci].block);
        uint8_t *good = encode(&codecs[ci], x, n, &len);
        uint8_t *work = bvec(len + 8);
        assert_int_equal(try_decode(guarded_put(&g, good, len), len, out, n), 1);
        for (size_t pos = 0; pos < len; pos++)
            for (int way = 0; way < 8; way++) {
                memcpy(work, good, len);
                uint8_t v = good[pos];
                switch (way) {
                case 0: v = 0x00; break;
                case 1: v = 0xff; break;
                case 2: v = (uint8_t)(v + 1); break;
                case 3: v = (uint8_t)(v - 1); break;
                case 4: v ^= 0x80; break;
                default: v ^= (uint8_t)(1u << test_rand_int(0, 6)); break;
                }
                if (v == good[pos]) continue;
                work[pos] = v;
                int ok = try_decode(guarded_put(&g, work, len), len, out, n);
                if (pos < 16) assert_false(ok); // magic, version, codec, reserved, count
                decoded += (size_t)ok;
                tried++;
            }
        for (int trial = 0; trial < 3000; trial++) {
            memcpy(work, good, len);
            int changes = (int)test_rand_int(1, 8);
            for (int c = 0; c < changes; c++)
                work[test_rand_int(0, (int64_t)len - 1)] = (uint8_t)test_rand_int(0, 255);
            decoded += (size_t)try_decode(guarded_put(&g, work, len), len, out, n);
            tried++;
        }
        for (size_t cut = 0; cut < len; cut++)
            assert_false(try_decode(guarded_put(&g, good, cut), cut, out, n));
        memcpy(work, good, len);
        for (size_t extra = 1; extra <= 8; extra++) {
            work[len + extra - 1] = (uint8_t)test_rand_int(0, 255);
            assert_false(try_decode(guarded_put(&g, work, len + extra), len + extra, out, n));
        }
        // the right buffer for another count is refused too
        assert_int_equal(ent_codec_decode(good, len, out, n - 1), ENT_ERR_INPUT);
        assert_non_null(strstr(ent_last_error(), "values; 699 expected"));
        if (getenv("ENT_TEST_VERBOSE"))
            fprintf(stderr, "%s: %zu of %zu damaged buffers decoded (finite), the rest refused\n",
                    ent_codec_name(codecs[ci].kind), decoded, tried);
        free(good);
        free(work);
    }
    munmap(g.map, g.map_bytes);
    free(x);
    free(out);
}

// Headers picked by hand: each refused, with a message that says why.
static void test_hostile_headers(void **state) {
    (void)state;
    size_t n = 300, len;
    float *x = fvec(n), *out = fvec(n);
    fill_normal(x, n, 1.0);
    ent_codec tk = {ENT_CODEC_TOPK, 64, 3}; // 15 kept: 90 position bits, 30 code bits
    uint8_t *good = encode(&tk, x, n, &len);
    uint8_t *w = bvec(1024); // room for each buffer below
    struct {
        size_t at;
        int bytes;
        uint64_t value;
        const char *says;
    } cases[] = {
        {4, 1, 2, "format version 2; this build reads version 1"},
        {5, 1, 0, "unknown codec id 0"},
        {5, 1, 7, "unknown codec id 7"},
        {8, 8, UINT64_MAX, "values"},
        {8, 8, (uint64_t)1 << 62, "values"},
        {16, 4, 0, "block of 0 values"},
        {16, 4, 0xffffffffu, "outside [1, 1048576]"},
        {20, 4, 0, "topk keeps 0 values"},
        {6, 1, 1, "reserved bytes"},
        {20, 4, 65, "topk keeps 65 values"},
        {20, 4, 5, "implies"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(w, good, len);
        for (int b = 0; b < cases[i].bytes; b++)
            w[cases[i].at + (size_t)b] = (uint8_t)(cases[i].value >> (8 * b));
        assert_int_equal(ent_codec_decode(w, len, out, n), ENT_ERR_INPUT);
        assert_non_null(strstr(ent_last_error(), cases[i].says));
        assert_int_equal(ent_codec_read_header(w, len, NULL, NULL), ENT_ERR_INPUT);
    }
    // positions (6 bits each, after 5 blocks' lo and hi) and codes, as documented
    ent_codec c;
    uint64_t count;
    assert_int_equal(ent_codec_read_header(good, len, &c, &count), ENT_OK);
    assert_int_equal(count, n);
    assert_int_equal(c.k, 3);
    const size_t P = 24 + 8 * 5, C = P + 12; // 90 bits: 12 bytes; codes 30 bits: 4 bytes
    assert_int_equal(len, C + 4);
    assert_int_equal(ent_codec_decode(good, len, out, n), ENT_OK);
    for (size_t e = 0; e < 15; e++) {
        size_t bit = 6 * e;
        uint32_t p = (uint32_t)good[P + bit / 8] >> (bit % 8);
        if (bit % 8 > 2) p |= (uint32_t)good[P + bit / 8 + 1] << (8 - bit % 8);
        p &= 63;
        unsigned code = (good[C + e / 4] >> (2 * (e % 4))) & 3;
        size_t i = 64 * (e / 3) + p;
        assert_true(i < n);
        float lo = le_f32(good + 24 + 8 * (e / 3)), hi = le_f32(good + 28 + 8 * (e / 3));
        assert_true((code & 1) == (x[i] < 0));
        assert_true(out[i] == (code & 1 ? -1.0f : 1.0f) * (code >> 1 ? hi : lo));
    }
    memcpy(w, good, len);
    w[P] = (uint8_t)((w[P] & 0xC0) | (w[P] >> 6 | (w[P + 1] & 0xF) << 2)); // entry 0 = entry 1
    assert_int_equal(ent_codec_decode(w, len, out, n), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "not above the one before"));
    memcpy(w, good, len);
    w[P + 11] |= 0x80; // after bit 90
    assert_int_equal(ent_codec_decode(w, len, out, n), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "padding bits after the last position"));
    memcpy(w, good, len);
    w[len - 1] |= 0x80; // after bit 30
    assert_int_equal(ent_codec_decode(w, len, out, n), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "padding bits after the last code"));
    memcpy(w, good, len);
    w[P + 10] |= 0xF0; // the last position (bits 84-89, in a block of 44 values): 63
    w[P + 11] |= 0x03;
    assert_int_equal(ent_codec_decode(w, len, out, n), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "outside the block"));
    ent_codec i4 = {ENT_CODEC_INT4, 64, 0};
    free(good);
    good = encode(&i4, x, 299, &len);
    memcpy(w, good, len);
    w[len - 1] |= 0x10; // the padding nibble after value 298
    assert_int_equal(ent_codec_decode(w, len, out, 299), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "padding nibble"));
    // a non-finite value cannot be encoded
    x[77] = NAN;
    const ent_codec all[] = {ent_codec_default(ENT_CODEC_INT8), i4, tk};
    for (int i = 0; i < 3; i++) {
        size_t cap;
        assert_int_equal(ent_codec_encoded_size(&all[i], n, &cap), ENT_OK);
        uint8_t *buf = bvec(cap);
        assert_int_equal(ent_codec_encode(&all[i], x, n, buf, cap, &len), ENT_ERR_INPUT);
        assert_non_null(strstr(ent_last_error(), "value 77 of the delta"));
        assert_int_equal(ent_codec_encode(&all[i], x, n, buf, cap - 1, &len), ENT_ERR_USAGE);
        free(buf);
    }
    // the largest float: encoded when its block's top level stays finite, refused otherwise
    x[77] = -FLT_MAX;
    for (int i = 0; i < 2; i++) {
        size_t cap;
        assert_int_equal(ent_codec_encoded_size(&all[i], n, &cap), ENT_OK);
        uint8_t *buf = bvec(cap);
        float top = i == 0 ? 127.0f : 7.0f, scale = FLT_MAX / top;
        ent_status st = ent_codec_encode(&all[i], x, n, buf, cap, &len);
        if (isfinite(scale * top)) {
            assert_int_equal(st, ENT_OK);
            assert_int_equal(ent_codec_decode(buf, len, out, n), ENT_OK);
            for (size_t j = 0; j < n; j++) assert_true(isfinite(out[j]));
        } else {
            assert_int_equal(st, ENT_ERR_INPUT);
            assert_non_null(strstr(ent_last_error(), "overflows when decoded"));
        }
        free(buf);
    }
    free(good);
    free(w);
    free(x);
    free(out);
}

// ---------------------------------------------------------------------------
// the round: pseudo-gradient, outer step, merge, hash

static void test_pseudo_gradient(void **state) {
    (void)state;
    test_reseed(0x9d);
    size_t n = 1001;
    float *a = fvec(n), *l = fvec(n), *d = fvec(n);
    fill_normal(a, n, 1.0);
    fill_normal(l, n, 1.0);
    assert_int_equal(ent_pseudo_gradient(a, l, d, n), ENT_OK);
    for (size_t i = 0; i < n; i++) assert_true(d[i] == a[i] - l[i]);
    memcpy(d, a, n * sizeof(float));
    assert_int_equal(ent_pseudo_gradient(d, l, d, n), ENT_OK); // in place
    for (size_t i = 0; i < n; i++) assert_true(d[i] == a[i] - l[i]);
    free(a);
    free(l);
    free(d);
}

// Two steps worked out by hand (lr 0.7, mu 0.9): anchor 1, g 0.1 then -0.2:
//   m1 = 0.1, update 0.7 * (0.1 + 0.09) = 0.133, anchor 0.867;
//   m2 = 0.09 - 0.2 = -0.11, update 0.7 * (-0.2 - 0.099) = -0.2093, anchor 1.0763.
// And with lr 0.5, mu 0.5 from m = 2, anchor -3, g 4: m = 5, update
// 0.5 * (4 + 2.5) = 3.25, anchor -6.25.
static void test_nesterov(void **state) {
    (void)state;
    ent_outer_opt opt = ent_outer_defaults();
    assert_true(opt.lr == 0.7f && opt.momentum == 0.9f);
    float anchor[3] = {1.0f, 1.0f, -3.0f}, m[3] = {0.0f, 0.0f, 2.0f}, g[3] = {0.1f, 0.1f, 4.0f};
    assert_int_equal(ent_outer_nesterov_step(&opt, anchor, m, g, 2), ENT_OK);
    assert_float_equal(m[0], 0.1f, 1e-7);
    assert_float_equal(anchor[0], 0.867f, 1e-6);
    g[0] = -0.2f;
    assert_int_equal(ent_outer_nesterov_step(&opt, anchor, m, g, 1), ENT_OK);
    assert_float_equal(m[0], -0.11f, 1e-7);
    assert_float_equal(anchor[0], 1.0763f, 1e-6);
    assert_float_equal(anchor[1], 0.867f, 1e-6); // untouched by the second (n = 1) step
    ent_outer_opt half = {0.5f, 0.5f};
    assert_int_equal(ent_outer_nesterov_step(&half, anchor + 2, m + 2, g + 2, 1), ENT_OK);
    assert_float_equal(m[2], 5.0f, 0);
    assert_float_equal(anchor[2], -6.25f, 0);
    // update + anchor -= update is the step, bit for bit; update may alias g
    test_reseed(0x4e5);
    size_t n = 777;
    float *a1 = fvec(n), *m1 = fvec(n), *a2 = fvec(n), *m2 = fvec(n), *gg = fvec(n);
    fill_normal(a1, n, 1.0);
    fill_normal(m1, n, 0.01);
    memcpy(a2, a1, n * sizeof(float));
    memcpy(m2, m1, n * sizeof(float));
    for (int round = 0; round < 3; round++) {
        fill_normal(gg, n, 0.01);
        assert_int_equal(ent_outer_nesterov_step(&opt, a1, m1, gg, n), ENT_OK);
        assert_int_equal(ent_outer_nesterov_update(&opt, m2, gg, gg, n), ENT_OK);
        for (size_t i = 0; i < n; i++) a2[i] -= gg[i];
    }
    assert_memory_equal(a1, a2, n * sizeof(float));
    assert_memory_equal(m1, m2, n * sizeof(float));
    ent_outer_opt bad[] = {{0.0f, 0.9f}, {NAN, 0.9f}, {0.7f, 1.0f}, {0.7f, -0.1f}};
    for (int i = 0; i < 4; i++)
        assert_int_equal(ent_outer_nesterov_step(&bad[i], a1, m1, gg, n), ENT_ERR_USAGE);
    free(a1);
    free(m1);
    free(a2);
    free(m2);
    free(gg);
}

// The merge: bit-identical whatever order the deltas come in (all 24 orders
// of 4 sites, encoded and plain), the token-weighted mean within float
// rounding, and refusals (a repeated site, no tokens, a damaged delta naming
// its site) that leave out untouched.
static void test_merge(void **state) {
    (void)state;
    test_reseed(0x3e7);
    size_t n = 3000;
    const ent_codec codecs[] = {ent_codec_default(ENT_CODEC_INT8),
                                ent_codec_default(ENT_CODEC_INT4),
                                ent_codec_default(ENT_CODEC_TOPK)};
    ent_site_delta in[4];
    float *x[4], *dec[4];
    uint8_t *buf[4];
    uint64_t tokens[4] = {100, 300, 0, 617};
    uint32_t ids[4] = {7, 2, 11, 5};
    for (int s = 0; s < 4; s++) {
        x[s] = fvec(n);
        dec[s] = fvec(n);
        fill_delta(x[s], n, 256);
        in[s] = (ent_site_delta){.site = ids[s], .tokens = tokens[s]};
        if (s < 3) {
            size_t len;
            buf[s] = encode(&codecs[s], x[s], n, &len);
            in[s].encoded = buf[s];
            in[s].encoded_len = len;
            assert_int_equal(ent_codec_decode(buf[s], len, dec[s], n), ENT_OK);
        } else {
            buf[s] = NULL;
            in[s].values = x[s];
            memcpy(dec[s], x[s], n * sizeof(float));
        }
    }
    float *first = fvec(n), *out = fvec(n);
    int perm[24][4], np = 0;
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++)
            for (int c = 0; c < 4; c++)
                for (int d = 0; d < 4; d++)
                    if (a != b && a != c && a != d && b != c && b != d && c != d) {
                        perm[np][0] = a, perm[np][1] = b, perm[np][2] = c, perm[np][3] = d;
                        np++;
                    }
    assert_int_equal(np, 24);
    for (int p = 0; p < np; p++) {
        ent_site_delta order[4];
        for (int s = 0; s < 4; s++) order[s] = in[perm[p][s]];
        assert_int_equal(ent_coalition_merge(order, 4, p ? out : first, n), ENT_OK);
        if (p) assert_memory_equal(first, out, n * sizeof(float));
    }
    double total = 100 + 300 + 0 + 617;
    for (size_t i = 0; i < n; i++) {
        double want = 0, scale = 0;
        for (int s = 0; s < 4; s++) {
            want += tokens[s] / total * dec[s][i];
            scale += fabs(dec[s][i]);
        }
        assert_true(fabs(first[i] - want) <= 1e-6 * scale);
    }
    // refusals leave out untouched
    for (size_t i = 0; i < n; i++) out[i] = sentinel;
    ent_site_delta two[2] = {in[0], in[0]};
    assert_int_equal(ent_coalition_merge(two, 2, out, n), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "site 7 sent two deltas"));
    ent_site_delta idle[1] = {in[2]};
    assert_int_equal(ent_coalition_merge(idle, 1, out, n), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "no tokens"));
    uint8_t saved[2] = {buf[1][30], buf[1][31]};
    buf[1][30] = 0x7f; // block 1's scale becomes about -3e38
    buf[1][31] = 0xff;
    assert_int_equal(ent_coalition_merge(in, 4, out, n), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "site 2's delta: encoded delta: block 1's scale"));
    buf[1][30] = saved[0];
    buf[1][31] = saved[1];
    assert_int_equal(ent_coalition_merge(in, 0, out, n), ENT_ERR_USAGE);
    x[3][5] = INFINITY;
    assert_int_equal(ent_coalition_merge(in, 4, out, n), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "site 5's delta value 5"));
    for (size_t i = 0; i < n; i++) assert_true(out[i] == sentinel);
    for (int s = 0; s < 4; s++) {
        free(x[s]);
        free(dec[s]);
        free(buf[s]);
    }
    free(first);
    free(out);
}

static void test_anchor_hash(void **state) {
    (void)state;
    test_reseed(0x4a5);
    size_t n = 4097;
    float *x = fvec(n), *y = fvec(n);
    fill_normal(x, n, 1.0);
    memcpy(y, x, n * sizeof(float));
    uint64_t h = ent_anchor_hash(x, n);
    assert_true(h == ent_anchor_hash(y, n));
    assert_true(h != ent_anchor_hash(x, n - 1));
    for (int t = 0; t < 500; t++) { // every single-bit change shows
        size_t i = (size_t)test_rand_int(0, (int64_t)n - 1);
        uint32_t u;
        memcpy(&u, &y[i], 4);
        u ^= 1u << test_rand_int(0, 31);
        memcpy(&y[i], &u, 4);
        assert_true(ent_anchor_hash(y, n) != h);
        y[i] = x[i];
    }
    float z[2] = {0.0f, -0.0f};
    assert_true(ent_anchor_hash(z, 1) != ent_anchor_hash(z + 1, 1));
    assert_true(ent_anchor_hash(NULL, 0) == ent_anchor_hash(x, 0));
    free(x);
    free(y);
}

// Rounds of three sites and a coordinator, all in this process: each site
// trains (a seeded drift of its local copy), sends its delta with error
// feedback; the coordinator merges the deltas in whatever order they arrived,
// takes the outer step, and sends the update encoded with its own error
// feedback; every copy applies it (decode_axpy -1). The four anchors stay
// bit-identical round after round, and a run where the deltas arrive in
// another order gives the same anchors.
static void run_rounds(const ent_codec *codec, int rounds, int shuffle, uint64_t *hashes) {
    enum { SITES = 3 };
    size_t n = 20000, cap, len[SITES], ulen;
    assert_int_equal(ent_codec_encoded_size(codec, n, &cap), ENT_OK);
    float *anchor[SITES + 1], *local[SITES], *resid[SITES], *delta = fvec(n);
    uint8_t *sent[SITES], *upd = bvec(cap);
    float *g = fvec(n), *m = fvec(n), *ures = fvec(n);
    for (int s = 0; s <= SITES; s++) anchor[s] = fvec(n);
    test_reseed(0x5173);
    fill_normal(anchor[0], n, 0.02);
    for (int s = 1; s <= SITES; s++) memcpy(anchor[s], anchor[0], n * sizeof(float));
    for (int s = 0; s < SITES; s++) {
        local[s] = fvec(n);
        resid[s] = fvec(n);
        sent[s] = bvec(cap);
    }
    ent_outer_opt opt = ent_outer_defaults();
    for (int r = 0; r < rounds; r++) {
        ent_site_delta in[SITES];
        for (int s = 0; s < SITES; s++) {
            memcpy(local[s], anchor[s], n * sizeof(float));
            test_reseed(0x1000 + (uint64_t)(r * SITES + s));
            for (size_t i = 0; i < n; i++) local[s][i] += (float)(1e-3 * test_normal()) - 1e-4f;
            assert_int_equal(ent_pseudo_gradient(anchor[s], local[s], delta, n), ENT_OK);
            assert_int_equal(ent_codec_encode_feedback(codec, delta, resid[s], n, sent[s], cap,
                                                       &len[s]),
                             ENT_OK);
            int at = shuffle ? (s + r + 1) % SITES : s; // arrival order
            in[at] = (ent_site_delta){.site = (uint32_t)(10 + s),
                                      .tokens = 1000 * (uint64_t)(s + 1),
                                      .encoded = sent[s],
                                      .encoded_len = len[s]};
        }
        assert_int_equal(ent_coalition_merge(in, SITES, g, n), ENT_OK);
        assert_int_equal(ent_outer_nesterov_update(&opt, m, g, g, n), ENT_OK);
        assert_int_equal(ent_codec_encode_feedback(codec, g, ures, n, upd, cap, &ulen), ENT_OK);
        for (int s = 0; s <= SITES; s++)
            assert_int_equal(ent_codec_decode_axpy(upd, ulen, -1.0f, anchor[s], n), ENT_OK);
        hashes[r] = ent_anchor_hash(anchor[SITES], n);
        for (int s = 0; s < SITES; s++) assert_true(ent_anchor_hash(anchor[s], n) == hashes[r]);
        if (r > 0) assert_true(hashes[r] != hashes[r - 1]);
    }
    for (int s = 0; s < SITES; s++) {
        free(local[s]);
        free(resid[s]);
        free(sent[s]);
    }
    for (int s = 0; s <= SITES; s++) free(anchor[s]);
    free(delta);
    free(upd);
    free(g);
    free(m);
    free(ures);
}

static void test_rounds_identical_anchors(void **state) {
    (void)state;
    const ent_codec codecs[] = {ent_codec_default(ENT_CODEC_INT8),
                                ent_codec_default(ENT_CODEC_INT4),
                                ent_codec_default(ENT_CODEC_TOPK)};
    for (int c = 0; c < 3; c++) {
        uint64_t a[6], b[6];
        run_rounds(&codecs[c], 6, 0, a);
        run_rounds(&codecs[c], 6, 1, b);
        assert_memory_equal(a, b, sizeof a);
    }
}

// ---------------------------------------------------------------------------
// the vectors that travel between sites (vec.c)

static const ent_model_shape small_shape = {.layers = 2, .heads = 4, .width = 32, .context = 16,
                                            .vocab = 100, .padded_vocab = 128};

// Every tensor-parallel layout maps the global vector to arenas and back
// exactly, and the ranks' parts tile it: each element comes from one rank.
static void test_global_layout(void **state) {
    (void)state;
    test_reseed(0x61);
    size_t n_tp1 = 0;
    for (int tp = 1; tp <= 4; tp *= 2) {
        ent_param_table t = {0};
        assert_int_equal(ent_param_table_build(&small_shape, tp, &t), ENT_OK);
        coal_layout l;
        assert_int_equal(coal_layout_new(&t, &l), ENT_OK);
        size_t want = 0;
        for (int r = 0; r < t.nrows; r++) want += (size_t)(t.rows[r].shape[0] * t.rows[r].shape[1]);
        assert_int_equal(l.n, want);
        if (tp == 1) n_tp1 = l.n;
        assert_int_equal(l.n, n_tp1); // the global layout is the same for every layout
        float *g = fvec(l.n), *back = fvec(l.n), *arena = fvec(t.total);
        fill_normal(g, l.n, 1.0);
        for (size_t i = 0; i < l.n; i++) back[i] = NAN;
        for (int r = 0; r < tp; r++) {
            for (size_t i = 0; i < t.total; i++) arena[i] = -7.0f; // padding stays as it was
            coal_global_to_arena(&l, r, g, arena);
            for (int k = 0; k < t.nrows; k++) {
                const ent_param_row *row = &t.rows[k];
                float *slice = fvec(row->numel);
                ent_param_row_slice(row, r, tp, g + l.goff[k], slice);
                assert_memory_equal(slice, arena + row->offset, sizeof(float) * row->numel);
                free(slice);
            }
            coal_arena_to_global(&l, r, arena, back);
        }
        assert_memory_equal(g, back, sizeof(float) * l.n);
        free(g);
        free(back);
        free(arena);
        coal_layout_free(&l);
        ent_param_table_free(&t);
    }
}

static ent_link_chunk chunk_of(const coal_vec *v, uint32_t i) {
    return (ent_link_chunk){.index = i, .count = v->count, .total = v->total,
                            .offset = v->poff[i], .length = v->plen[i], .codec = v->codec,
                            .anchor_hash = v->anchor_hash, .tokens = v->tokens,
                            .data = v->data + v->boff[i], .data_len = v->blen[i]};
}

// A vector cut into chunks, each encoded on its own, arrives in any order
// and applies exactly as the sender's copy does; the error feedback across
// chunks is the whole vector's.
static void test_vec_chunks(void **state) {
    (void)state;
    test_reseed(0x62);
    const char *names[] = {"int8", "int4", "topk"};
    const size_t n = 5 * 1024 * 3 + 777;
    for (int c = 0; c < 4; c++) {
        ent_codec codec = {0};
        uint16_t id = ENT_LINK_CODEC_F32;
        if (c < 3) {
            assert_int_equal(ent_codec_parse(names[c], &codec), ENT_OK);
            id = (uint16_t)codec.kind;
        }
        // topk packs 1024 values into ~60 bytes: smaller chunks for it
        const uint32_t cb = c == 2 ? 200 : 8192;
        size_t per = 0;
        assert_int_equal(coal_chunk_params(id, &codec, cb, &per), ENT_OK);
        assert_int_equal(per % 1024, 0);
        float *x = fvec(n), *x0 = fvec(n), *r = fvec(n), *r_whole = fvec(n), *y = fvec(n),
              *z = fvec(n);
        fill_delta(x, n, 1024);
        memcpy(x0, x, sizeof(float) * n);
        coal_vec v = {0}, in = {0};
        assert_int_equal(coal_vec_encode(&v, id, &codec, x, c < 3 ? r : NULL, n, cb), ENT_OK);
        assert_true(v.count >= 2);
        for (uint32_t i = 0; i < v.count; i++) assert_true(v.blen[i] <= cb);
        v.anchor_hash = 0x1234;
        v.tokens = 99;
        // the receiver: chunks in a shuffled order
        assert_int_equal(coal_vec_expect(&in, id, &codec, n, cb), ENT_OK);
        uint32_t *order = calloc(v.count, sizeof *order);
        for (uint32_t i = 0; i < v.count; i++) order[i] = i;
        for (uint32_t i = v.count - 1; i > 0; i--) {
            uint32_t j = (uint32_t)test_rand_int(0, i), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (uint32_t k = 0; k < v.count; k++) {
            ent_link_chunk ch = chunk_of(&v, order[k]);
            int done = -1;
            assert_int_equal(coal_vec_add(&in, &ch, "test", &done), ENT_OK);
            assert_int_equal(done, k + 1 == v.count);
        }
        assert_int_equal(in.anchor_hash, 0x1234);
        assert_int_equal(in.tokens, 99);
        assert_int_equal(coal_vec_apply(&v, -1.0f, y), ENT_OK);
        assert_int_equal(coal_vec_apply(&in, -1.0f, z), ENT_OK);
        assert_memory_equal(y, z, sizeof(float) * n);
        if (c == 3) {
            assert_memory_equal(z, x0, sizeof(float) * n); // f32: the values themselves
        } else {
            // feedback: what arrived plus what stayed behind is what was sent
            size_t off = 0;
            for (size_t i = 0; i < n; i++) off += fabsf((-y[i] + r[i]) - x0[i]) > 1e-6f * (1 + fabsf(x0[i]));
            assert_int_equal(off, 0);
            // the same bits as one encoding of each chunk's range with feedback
            memcpy(x, x0, sizeof(float) * n);
            for (uint32_t i = 0; i < v.count; i++) {
                uint8_t *buf = bvec(v.blen[i]);
                size_t len = 0;
                assert_int_equal(ent_codec_encode_feedback(&codec, x + v.poff[i],
                                                           r_whole + v.poff[i], v.plen[i], buf,
                                                           v.blen[i], &len), ENT_OK);
                assert_memory_equal(buf, v.data + v.boff[i], len);
                free(buf);
            }
            assert_memory_equal(r, r_whole, sizeof(float) * n);
        }
        free(order);
        coal_vec_free(&v);
        coal_vec_free(&in);
        free(x);
        free(x0);
        free(r);
        free(r_whole);
        free(y);
        free(z);
    }
}

// Chunks that do not fit what the receiver expects are refused, naming the
// peer, and change nothing; a chunk whose data fails the decoder's full
// check leaves the target untouched.
static void test_vec_hostile_chunks(void **state) {
    (void)state;
    test_reseed(0x63);
    const size_t n = 4 * 1024 + 5;
    ent_codec codec;
    assert_int_equal(ent_codec_parse("int8", &codec), ENT_OK);
    float *x = fvec(n), *y = fvec(n), *y0 = fvec(n);
    fill_delta(x, n, 256);
    coal_vec v = {0};
    assert_int_equal(coal_vec_encode(&v, (uint16_t)codec.kind, &codec, x, NULL, n, 2048), ENT_OK);
    v.anchor_hash = 7;
    v.tokens = 10;
    assert_true(v.count >= 3);
    for (int kind = 0; kind < 10; kind++) {
        coal_vec in = {0};
        assert_int_equal(coal_vec_expect(&in, (uint16_t)codec.kind, &codec, n, 2048), ENT_OK);
        ent_link_chunk first = chunk_of(&v, 0);
        int done = 0;
        assert_int_equal(coal_vec_add(&in, &first, "test", &done), ENT_OK);
        ent_link_chunk c = chunk_of(&v, 1);
        uint8_t *copy = bvec(c.data_len);
        memcpy(copy, c.data, c.data_len);
        c.data = copy;
        switch (kind) {
        case 0: c = chunk_of(&v, 0); break;                    // a repeat
        case 1: c.count++; break;                              // another count
        case 2: c.total--; break;                              // another table
        case 3: c.codec = ENT_LINK_CODEC_INT4; break;          // another codec
        case 4: c.offset += 1024; break;                       // another range
        case 5: c.length -= 1; break;
        case 6: c.data_len -= 1; break;                        // another size
        case 7: c.anchor_hash ^= 1; break;                     // disagrees with chunk 0
        case 8: c.tokens++; break;
        case 9: copy[5] = 2; break;                            // its header names int4
        }
        ent_status st = coal_vec_add(&in, &c, "peer X", &done);
        assert_int_equal(st, ENT_ERR_INPUT);
        assert_non_null(strstr(ent_last_error(), "peer X"));
        assert_int_equal(in.received, 1);
        free(copy);
        coal_vec_free(&in);
    }
    // data that passes the header check but not the decoder's: a NaN scale
    coal_vec in = {0};
    assert_int_equal(coal_vec_expect(&in, (uint16_t)codec.kind, &codec, n, 2048), ENT_OK);
    for (uint32_t i = 0; i < v.count; i++) {
        ent_link_chunk c = chunk_of(&v, i);
        uint8_t *copy = bvec(c.data_len);
        memcpy(copy, c.data, c.data_len);
        if (i == v.count - 1) {
            float nan = NAN;
            memcpy(copy + ENT_CODEC_HEADER_BYTES, &nan, 4);
        }
        c.data = copy;
        int done = 0;
        assert_int_equal(coal_vec_add(&in, &c, "test", &done), ENT_OK);
        free(copy);
    }
    fill_normal(y, n, 1.0);
    memcpy(y0, y, sizeof(float) * n);
    assert_int_equal(coal_vec_apply(&in, -1.0f, y), ENT_ERR_INPUT);
    assert_memory_equal(y, y0, sizeof(float) * n); // the earlier, good chunks were not applied
    coal_vec_free(&in);
    coal_vec_free(&v);
    free(x);
    free(y);
    free(y0);
}

// The coordinator's round: the same anchor, momentum, residual and update
// bytes whatever order the sites are listed in.
static void test_round_merge_order(void **state) {
    (void)state;
    test_reseed(0x64);
    const size_t n = 3 * 4096 + 100;
    const int S = 4;
    ent_codec codec;
    assert_int_equal(ent_codec_parse("int8", &codec), ENT_OK);
    coal_vec d[4] = {{0}};
    uint32_t ids[4] = {3, 1, 4, 2};
    for (int i = 0; i < S; i++) {
        float *x = fvec(n);
        fill_delta(x, n, 256);
        assert_int_equal(coal_vec_encode(&d[i], (uint16_t)codec.kind, &codec, x, NULL, n, 4096),
                         ENT_OK);
        d[i].tokens = (uint64_t)(100 * (i + 1));
        free(x);
    }
    ent_outer_opt opt = ent_outer_defaults();
    float *a[2], *m[2], *r[2], *g = fvec(n);
    coal_vec up[2] = {{0}};
    float *a0 = fvec(n);
    fill_normal(a0, n, 0.02);
    for (int k = 0; k < 2; k++) {
        a[k] = fvec(n);
        m[k] = fvec(n);
        r[k] = fvec(n);
        memcpy(a[k], a0, sizeof(float) * n);
        const coal_vec *list[4];
        uint32_t lids[4];
        for (int i = 0; i < S; i++) {
            int j = k == 0 ? i : S - 1 - i; // the second time, listed in reverse
            list[i] = &d[j];
            lids[i] = ids[j];
        }
        for (int round = 0; round < 3; round++) {
            coal_vec_free(&up[k]);
            assert_int_equal(coal_round_merge(list, NULL, lids, S, &opt, &codec, 4096, a[k], m[k],
                                              r[k], g, n, &up[k]), ENT_OK);
        }
    }
    assert_memory_equal(a[0], a[1], sizeof(float) * n);
    assert_memory_equal(m[0], m[1], sizeof(float) * n);
    assert_memory_equal(r[0], r[1], sizeof(float) * n);
    assert_int_equal(up[0].len, up[1].len);
    assert_memory_equal(up[0].data, up[1].data, up[0].len);
    assert_int_equal(up[0].anchor_hash, ent_anchor_hash(a[0], n));
    assert_int_equal(up[0].tokens, 1000);
    assert_true(memcmp(a[0], a0, sizeof(float) * n) != 0);
    // an incomplete delta is refused and changes nothing
    float *before = fvec(n);
    memcpy(before, a[0], sizeof(float) * n);
    d[2].received--;
    const coal_vec *list[4] = {&d[0], &d[1], &d[2], &d[3]};
    coal_vec bad = {0};
    assert_int_equal(coal_round_merge(list, NULL, ids, S, &opt, &codec, 4096, a[0], m[0], r[0], g,
                                      n, &bad), ENT_ERR_INPUT);
    assert_memory_equal(a[0], before, sizeof(float) * n);
    for (int k = 0; k < 2; k++) {
        free(a[k]);
        free(m[k]);
        free(r[k]);
        coal_vec_free(&up[k]);
    }
    for (int i = 0; i < S; i++) coal_vec_free(&d[i]);
    free(before);
    free(a0);
    free(g);
}

// The coordinator merges from the deltas it decoded once to screen them
// (coal_vec_norm's output): for every codec, the anchor, momentum, residual
// and update bytes are those of the merge from the deltas' bytes, bit for
// bit, over several rounds (the sums and the norms too).
static void test_round_merge_decoded(void **state) {
    (void)state;
    test_reseed(0x65);
    const size_t n = 5 * 4096 + 77;
    const int S = 3;
    const char *names[] = {"int8", "int4", "topk"};
    for (int c = 0; c < 3; c++) {
        ent_codec codec;
        assert_int_equal(ent_codec_parse(names[c], &codec), ENT_OK);
        ent_outer_opt opt = ent_outer_defaults();
        float *a[2], *m[2], *r[2], *g = fvec(n), *dec[3];
        float *a0 = fvec(n);
        fill_normal(a0, n, 0.02);
        for (int k = 0; k < 2; k++) {
            a[k] = fvec(n);
            m[k] = fvec(n);
            r[k] = fvec(n);
            memcpy(a[k], a0, sizeof(float) * n);
        }
        for (int i = 0; i < S; i++) dec[i] = fvec(n);
        uint32_t ids[3] = {2, 3, 1};
        for (int round = 0; round < 3; round++) {
            coal_vec d[3] = {{0}}, up[2] = {{0}};
            const coal_vec *list[3];
            for (int i = 0; i < S; i++) {
                float *x = fvec(n);
                fill_delta(x, n, 256);
                // a negative zero among the values: the merge's sums must not
                // tell it from the bytes' path either
                x[17 + i] = -0.0f;
                assert_int_equal(coal_vec_encode(&d[i], (uint16_t)codec.kind, &codec, x, NULL,
                                                 n, 4096), ENT_OK);
                d[i].tokens = (uint64_t)(37 * (i + 1) + round);
                list[i] = &d[i];
                double norm = 0, want = 0;
                assert_int_equal(coal_vec_norm(&d[i], dec[i], &norm), ENT_OK);
                assert_int_equal(coal_vec_norm(&d[i], g, &want), ENT_OK);
                assert_true(norm == want && norm > 0);
                free(x);
            }
            const float *const *decoded = (const float *const *)dec;
            assert_int_equal(coal_round_merge(list, NULL, ids, S, &opt, &codec, 4096, a[0], m[0],
                                              r[0], g, n, &up[0]), ENT_OK);
            assert_int_equal(coal_round_merge(list, decoded, ids, S, &opt, &codec, 4096, a[1],
                                              m[1], r[1], g, n, &up[1]), ENT_OK);
            assert_memory_equal(a[0], a[1], sizeof(float) * n);
            assert_memory_equal(m[0], m[1], sizeof(float) * n);
            assert_memory_equal(r[0], r[1], sizeof(float) * n);
            assert_int_equal(up[0].len, up[1].len);
            assert_memory_equal(up[0].data, up[1].data, up[0].len);
            assert_int_equal(up[0].anchor_hash, up[1].anchor_hash);
            assert_int_equal(up[0].tokens, up[1].tokens);
            for (int i = 0; i < S; i++) coal_vec_free(&d[i]);
            coal_vec_free(&up[0]);
            coal_vec_free(&up[1]);
        }
        // the anchor moved: the comparison was not of two untouched copies
        assert_true(memcmp(a[0], a0, sizeof(float) * n) != 0);
        for (int k = 0; k < 2; k++) {
            free(a[k]);
            free(m[k]);
            free(r[k]);
        }
        for (int i = 0; i < S; i++) free(dec[i]);
        free(a0);
        free(g);
    }
}

// ---------------------------------------------------------------------------
// the ledger (ledger.c): what the coordinator writes, `entente ledger` reads
// back exactly (JSON) and as a table; every damaged text is refused naming
// the file, never crashes the reader

static ent_status ledger_print(const char *text, int json, char **out) {
    size_t len = 0;
    FILE *f = open_memstream(out, &len);
    assert_non_null(f);
    ent_status st = ent_ledger_print("ck.h5", text, json, f);
    fclose(f);
    return st;
}

// text with the character after the first `key` changed to c is refused
// with a message that holds want.
// A ledger of version `from` relabelled as version `to` (lacking that
// version's fields): refused, naming what is missing.
static void refused_as_version(const char *text, char from, char to, const char *needle) {
    char *t = strdup(text), key[] = "\"version\":0";
    assert_non_null(t);
    key[10] = from;
    char *at = strstr(t, key);
    assert_non_null(at);
    at[10] = to;
    char *out = NULL;
    assert_int_equal(ledger_print(t, 0, &out), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), needle));
    free(out);
    free(t);
}

static void ledger_refused_edited(const char *text, const char *key, char c, const char *want) {
    char *edited = strdup(text), *out = NULL;
    assert_non_null(edited);
    char *at = strstr(edited, key);
    assert_non_null(at);
    at[strlen(key)] = c;
    assert_int_equal(ledger_print(edited, 0, &out), ENT_ERR_INPUT);
    if (strstr(ent_last_error(), want) == NULL) fail_msg("'%s', not '%s'", ent_last_error(), want);
    free(out);
    free(edited);
}

static void test_ledger(void **state) {
    (void)state;
    test_reseed(0x1e);
    coal_ledger_site sites[3];
    memset(sites, 0, sizeof sites);
    const char *names[3] = {"north", "south", "x.2"};
    for (int i = 0; i < 3; i++) {
        coal_ledger_site *s = &sites[i];
        snprintf(s->name, sizeof s->name, "%s", names[i]);
        s->tokens = (uint64_t)test_rand_int(0, (int64_t)1 << 52);
        s->inner_steps = (uint64_t)test_rand_int(0, 1000000);
        s->compute_s = (double)test_rand_int(0, 1000000) / 64.0;
        s->accepted = (uint64_t)test_rand_int(0, 1000);
        s->rounds_joined = s->accepted + (uint64_t)test_rand_int(0, 10);
        for (int k = 0; k < COAL_REJECT_KINDS; k++)
            s->rejected[k] = (uint64_t)test_rand_int(0, 5);
        snprintf(s->first_time, sizeof s->first_time, "2026-01-0%dT00:00:00Z", i + 1);
        snprintf(s->last_time, sizeof s->last_time, "2026-02-0%dT00:00:00Z", i + 1);
        s->first_round = (uint64_t)test_rand_int(0, 5);
        s->last_round = s->first_round + (uint64_t)test_rand_int(0, 100);
        s->scored = s->accepted;
        s->loss_gain = (double)test_rand_int(-100000, 100000) / 4096.0; // may be negative
    }
    // the age of a time it wrote (what the tokens rule measures a site's
    // absence by); anything else is no time
    char now[32];
    coal_utc_now(now);
    double age = coal_utc_age(now);
    assert_true(age >= 0 && age <= 2);
    assert_true(coal_utc_age("2026-01-01T00:00:00Z") > 0);
    assert_true(coal_utc_age("2026-01-01T00:00:00") == -1);
    assert_true(coal_utc_age("2026-01-01T00:00:00Zx") == -1);
    assert_true(coal_utc_age("") == -1);
    char *text = coal_ledger_json(sites, 3, 1234);
    assert_non_null(text);
    char *out = NULL;
    // --json: the text itself; the table: a row per site with its numbers
    assert_int_equal(ledger_print(text, 1, &out), ENT_OK);
    assert_int_equal(strlen(out), strlen(text) + 1);
    assert_memory_equal(out, text, strlen(text));
    free(out);
    assert_int_equal(ledger_print(text, 0, &out), ENT_OK);
    assert_non_null(strstr(out, "rounds merged: 1234\n"));
    for (int i = 0; i < 3; i++) {
        char row[64], tok[32];
        snprintf(row, sizeof row, "\n%-16s ", names[i]);
        snprintf(tok, sizeof tok, " %llu ", (unsigned long long)sites[i].tokens);
        const char *at = strstr(out, row);
        assert_non_null(at);
        const char *eol = strchr(at + 1, '\n');
        assert_non_null(strstr(at, tok));
        assert_true(strstr(at, tok) < eol);
        assert_non_null(strstr(at, sites[i].last_time));
        snprintf(tok, sizeof tok, " %.4f ", sites[i].loss_gain);
        assert_non_null(strstr(at, tok));
        assert_true(strstr(at, tok) < eol);
    }
    free(out);
    // a version 1 ledger (before the scores): read, its scores printed as -
    const char *v1 = "{\"format\":\"entente-ledger\",\"version\":1,\"rounds_merged\":2,\"sites\":[{"
                     "\"site\":\"old\",\"tokens\":10,\"inner_steps\":2,\"compute_s\":0.5,"
                     "\"rounds_joined\":2,\"accepted\":2,\"rejected\":{\"undecodable\":0,"
                     "\"wrong_anchor\":0,\"norm\":1,\"stale\":0},\"first_seen\":{\"time\":"
                     "\"2026-01-01T00:00:00Z\",\"round\":0},\"last_seen\":{\"time\":"
                     "\"2026-01-02T00:00:00Z\",\"round\":1}}]}";
    assert_int_equal(ledger_print(v1, 0, &out), ENT_OK);
    assert_non_null(strstr(out, "norm 1 "));
    assert_non_null(strstr(out, "      - "));
    free(out);
    // and a restarted coordinator carries it on: no scores, no loss rejections
    coal_ledger_site *back = NULL;
    int nback = 0;
    uint64_t merged = 0;
    assert_int_equal(coal_ledger_parse("ck.h5", v1, &back, &nback, &merged), ENT_OK);
    assert_int_equal(nback, 1);
    assert_int_equal(merged, 2);
    assert_int_equal(back[0].rejected[COAL_REJECT_NORM], 1);
    assert_int_equal(back[0].rejected[COAL_REJECT_LOSS], 0);
    assert_int_equal(back[0].rejected[COAL_REJECT_TOKENS], 0);
    assert_int_equal(back[0].scored, 0);
    free(back);
    // a version 2 ledger (scores, no "tokens" rejections): read, none counted
    const char *v2ok = "{\"format\":\"entente-ledger\",\"version\":2,\"rounds_merged\":2,"
                       "\"sites\":[{\"site\":\"old\",\"tokens\":10,\"inner_steps\":2,"
                       "\"compute_s\":0.5,\"rounds_joined\":2,\"accepted\":2,\"scored\":2,"
                       "\"loss_gain\":-0.25,\"rejected\":{\"undecodable\":0,\"wrong_anchor\":0,"
                       "\"norm\":0,\"stale\":0,\"loss\":3},\"first_seen\":{\"time\":"
                       "\"2026-01-01T00:00:00Z\",\"round\":0},\"last_seen\":{\"time\":"
                       "\"2026-01-02T00:00:00Z\",\"round\":1}}]}";
    assert_int_equal(ledger_print(v2ok, 0, &out), ENT_OK);
    assert_non_null(strstr(out, "loss 3 "));
    assert_non_null(strstr(out, "-0.2500 "));
    free(out);
    assert_int_equal(coal_ledger_parse("ck.h5", v2ok, &back, &nback, &merged), ENT_OK);
    assert_int_equal(back[0].rejected[COAL_REJECT_LOSS], 3);
    assert_int_equal(back[0].rejected[COAL_REJECT_TOKENS], 0);
    assert_true(back[0].loss_gain == -0.25);
    free(back);
    // version 3 without its "tokens" rejections: refused
    refused_as_version(v2ok, '2', '3', "site 'old': \"rejected\"");
    // version 3 round trip: every field back as written
    assert_int_equal(coal_ledger_parse("ck.h5", text, &back, &nback, &merged), ENT_OK);
    assert_int_equal(nback, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(back[i].scored, sites[i].scored);
        assert_true(back[i].loss_gain == sites[i].loss_gain);
        assert_memory_equal(back[i].rejected, sites[i].rejected, sizeof sites[i].rejected);
    }
    free(back);
    // version 2 without its scores, or with a score that is not a number
    refused_as_version(v1, '1', '2', "site 'old': \"rejected\"");
    ledger_refused_edited(text, "\"loss_gai", 'X', "site 'north': \"loss_gain\" is missing or not a finite number");
    // refusals that name the file and what is wrong
    assert_int_equal(ledger_print("", 0, &out), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "ck.h5 holds no ledger"));
    free(out);
    ledger_refused_edited(text, "\"version\":", '4', "format version is 4; this entente reads versions 1 to 3");
    ledger_refused_edited(text, "\"tokens\":", '-', "ck.h5: the ledger (/coalition/ledger) is malformed: site 'north': \"tokens\"");
    ledger_refused_edited(text, "\"round\":", 'x', "ck.h5: the ledger (/coalition/ledger) is malformed: not JSON");
    // every truncation, something after the object, and seeded changes of
    // bytes to JSON's own characters: refused or read whole, never a crash
    size_t n = strlen(text);
    char *buf = malloc(n + 8);
    assert_non_null(buf);
    for (size_t cut = 0; cut < n; cut++) {
        memcpy(buf, text, cut);
        buf[cut] = '\0';
        assert_int_equal(ledger_print(buf, 0, &out), ENT_ERR_INPUT);
        free(out);
    }
    snprintf(buf, n + 8, "%s{}", text);
    assert_int_equal(ledger_print(buf, 0, &out), ENT_ERR_INPUT);
    free(out);
    static const char alphabet[] = "{}[]\":,-.0123456789eEtrufalsn x\\";
    int refused = 0;
    for (int trial = 0; trial < 3000; trial++) {
        memcpy(buf, text, n + 1);
        int changes = (int)test_rand_int(1, 4);
        for (int c = 0; c < changes; c++)
            buf[test_rand_int(0, (int64_t)n - 1)] =
                alphabet[test_rand_int(0, (int64_t)sizeof alphabet - 2)];
        for (int json = 0; json < 2; json++) {
            ent_status st = ledger_print(buf, json, &out);
            assert_true(st == ENT_OK || st == ENT_ERR_INPUT);
            if (st != ENT_OK) assert_non_null(strstr(ent_last_error(), "ck.h5"));
            refused += st != ENT_OK;
            free(out);
        }
    }
    assert_true(refused > 0);
    free(buf);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ledger),
        cmocka_unit_test(test_names_and_settings), cmocka_unit_test(test_int8_round_trip),
        cmocka_unit_test(test_int4_round_trip),    cmocka_unit_test(test_topk_round_trip),
        cmocka_unit_test(test_decode_axpy),        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_error_feedback),     cmocka_unit_test(test_hostile_buffers),
        cmocka_unit_test(test_hostile_headers),    cmocka_unit_test(test_pseudo_gradient),
        cmocka_unit_test(test_nesterov),           cmocka_unit_test(test_merge),
        cmocka_unit_test(test_anchor_hash),        cmocka_unit_test(test_rounds_identical_anchors),
        cmocka_unit_test(test_global_layout),      cmocka_unit_test(test_vec_chunks),
        cmocka_unit_test(test_vec_hostile_chunks), cmocka_unit_test(test_round_merge_order),
        cmocka_unit_test(test_round_merge_decoded),
    };
    // one thread, except where a test sets more (determinism compares 1, 2
    // and 3): on a loaded 2-core machine OpenMP's barriers dominate the
    // thousands of small encodes here
    omp_set_num_threads(1);
    return cmocka_run_group_tests_name("coalition", tests, NULL, NULL);
}
