// test_fletcher.c: the checkpoint's Fletcher32 (checkpoint/fletcher32.c)
// against HDF5's, bit for bit.
//
//  - on seeded random bytes of many lengths (0 to 3, odd counts, around the
//    360-word block where HDF5 folds its sums, 4 KiB multiples, large ones)
//    and at every alignment, the vector path equals the portable one, a
//    transcription of HDF5's loop (H5_checksum_fletcher32, 1.10 and 1.14),
//    and HDF5's own function where its library exports it;
//  - the worst cases for the 32-bit sums (all bytes 0xff, so sum2 wraps
//    within a block; all zero; alternating halves);
//  - HDF5's filter itself: chunks of those lengths written through H5Dwrite
//    (the filter computes the checksum) store exactly ckpt_fletcher32 of the
//    data, and chunks written raw with ckpt_fletcher32 appended are read back
//    by H5Dread (the filter verifies them), and refused once a byte of the
//    data or of the checksum is changed;
//  - every single-bit flip, at seeded random places, changes the checksum.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_impl.h"
#include "ref.h"

// A seeded random integer in [0, n).
static size_t below(size_t n) { return (size_t)test_rand_int(0, (int64_t)n - 1); }

static void fill_random(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)below(256);
}

// n seeded random bytes (malloc'ed), the stream restarted with salt.
static unsigned char *random_bytes(size_t n, uint64_t salt) {
    test_reseed(salt);
    unsigned char *p = malloc(n);
    assert_non_null(p);
    fill_random(p, n);
    return p;
}

// HDF5's H5_checksum_fletcher32 (H5checksum.c), transcribed as it is: word
// by word, folds every 360 words, the odd byte, two final folds.
static uint32_t reference(const void *data, size_t len) {
    const uint8_t *p = data;
    size_t words = len / 2;
    uint32_t sum1 = 0, sum2 = 0;
    while (words) {
        size_t tlen = words > 360 ? 360 : words;
        words -= tlen;
        do {
            sum1 += (uint32_t)(((uint16_t)p[0]) << 8) | ((uint16_t)p[1]);
            p += 2;
            sum2 += sum1;
        } while (--tlen);
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    if (len % 2) {
        sum1 += (uint32_t)(((uint16_t)*p) << 8);
        sum2 += sum1;
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    return (sum2 << 16) | sum1;
}

// HDF5's own function, where the library exports it (a private symbol).
typedef uint32_t (*fletcher_fn)(const void *, size_t);
static fletcher_fn hdf5_own;

// The lengths checked: small, odd, around a block (720 bytes), 4 KiB
// multiples, an edge chunk's worth, large; then seeded random ones.
static size_t lengths[256];
static int nlengths;
enum { MAX_LEN = (16 << 20) + 4099 };

static void add_length(size_t n) {
    if (nlengths < (int)(sizeof lengths / sizeof lengths[0]) && n <= MAX_LEN) lengths[nlengths++] = n;
}

static void make_lengths(void) {
    for (size_t n = 0; n <= 40; n++) add_length(n);
    const size_t near[] = {718, 720, 1440, 2160, 4096, 8192, 65536, 720 * 1456, 1 << 20, 16 << 20};
    for (size_t i = 0; i < sizeof near / sizeof near[0]; i++)
        for (int d = -3; d <= 3; d++) add_length(near[i] + (size_t)d);
    for (size_t k = 1; k <= 8; k++) add_length(4096 * k * 3);
    while (nlengths < (int)(sizeof lengths / sizeof lengths[0])) add_length(below(1 << 21));
}

static void check_all(const unsigned char *p, size_t n, const char *what) {
    uint32_t want = reference(p, n);
    uint32_t fast = ckpt_fletcher32(p, n), portable = ckpt_fletcher32_portable(p, n);
    if (fast != want || portable != want || (hdf5_own && hdf5_own(p, n) != want))
        fail_msg("%s, %zu bytes at alignment %u (seed %llu): HDF5 0x%08x, vector 0x%08x, "
                 "portable 0x%08x", what, n, (unsigned)((uintptr_t)p % 64),
                 (unsigned long long)test_seed(), want, fast, portable);
}

static void test_random_lengths(void **unused) {
    (void)unused;
    unsigned char *buf = random_bytes(MAX_LEN + 64, 1);
    for (int i = 0; i < nlengths; i++) {
        size_t n = lengths[i];
        check_all(buf + below(64), n, "random bytes");
        if (n < 100000) // every alignment of the vector loads, on the shorter ones
            for (unsigned a = 0; a < 32; a++) check_all(buf + a, n, "random bytes");
    }
    free(buf);
}

static void test_extreme_values(void **unused) {
    (void)unused;
    unsigned char *buf = malloc(MAX_LEN);
    assert_non_null(buf);
    const unsigned char patterns[][2] = {{0xff, 0xff}, {0, 0}, {0xff, 0}, {0, 0xff}, {0x80, 0x01}};
    for (size_t k = 0; k < sizeof patterns / sizeof patterns[0]; k++) {
        for (size_t i = 0; i < MAX_LEN; i++) buf[i] = patterns[k][i % 2];
        for (int i = 0; i < nlengths; i++) check_all(buf, lengths[i], "a fixed pattern");
    }
    free(buf);
}

static void test_bit_flips(void **unused) {
    (void)unused;
    size_t n = (1 << 20) + 7;
    unsigned char *buf = random_bytes(n, 3);
    uint32_t clean = ckpt_fletcher32(buf, n);
    for (int trial = 0; trial < 2000; trial++) {
        size_t at = trial < 8 ? (trial < 4 ? (size_t)trial : n - 8 + (size_t)trial) : below(n);
        unsigned char bit = (unsigned char)(1u << below(8));
        buf[at] ^= bit;
        uint32_t flipped = ckpt_fletcher32(buf, n);
        assert_int_equal(flipped, reference(buf, n));
        if (flipped == clean)
            fail_msg("flipping bit 0x%02x of byte %zu of %zu left the checksum 0x%08x (seed %llu)",
                     bit, at, n, clean, (unsigned long long)test_seed());
        buf[at] ^= bit;
    }
    free(buf);
}

// A file in memory with one byte dataset per length, each one chunk of that
// length with HDF5's Fletcher32 filter.
static hid_t memory_file(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_core(fapl, 1 << 20, 0);
    hid_t f = H5Fcreate("fletcher-in-memory.h5", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    return f;
}

static hid_t chunked_bytes(hid_t file, const char *name, size_t n) {
    hsize_t dims[1] = {n};
    hid_t space = H5Screate_simple(1, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, dims);
    H5Pset_fletcher32(dcpl);
    hid_t d = H5Dcreate2(file, name, H5T_NATIVE_UCHAR, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    return d;
}

static void put_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void test_hdf5_filter(void **unused) {
    (void)unused;
    test_reseed(4);
    unsigned char *data = malloc(MAX_LEN + 4), *raw = malloc(MAX_LEN + 4), *back = malloc(MAX_LEN);
    assert_non_null(data);
    assert_non_null(raw);
    assert_non_null(back);
    hid_t f = memory_file();
    assert_true(f >= 0);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); // the refusals below are expected
    char name[64];
    for (int i = 0; i < nlengths; i++) {
        size_t n = lengths[i];
        if (n == 0) continue; // HDF5 has no empty chunk
        fill_random(data, n);
        hsize_t origin[1] = {0};
        uint32_t mask = 1;
        // 1. the filter's checksum is ours
        snprintf(name, sizeof name, "filtered_%d", i);
        hid_t d = chunked_bytes(f, name, n);
        assert_true(d >= 0);
        assert_true(H5Dwrite(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
        assert_true(H5Dread_chunk(d, H5P_DEFAULT, origin, &mask, raw) >= 0);
        assert_int_equal(mask, 0);
        assert_memory_equal(raw, data, n);
        unsigned char sum[4];
        put_le32(sum, ckpt_fletcher32(data, n));
        if (memcmp(raw + n, sum, 4) != 0)
            fail_msg("%zu bytes (seed %llu): HDF5's filter stored %02x%02x%02x%02x, ours "
                     "%02x%02x%02x%02x", n, (unsigned long long)test_seed(), raw[n], raw[n + 1],
                     raw[n + 2], raw[n + 3], sum[0], sum[1], sum[2], sum[3]);
        H5Dclose(d);
        // 2. a chunk written raw with our checksum passes HDF5's filter on
        // reading, and fails it once changed (a data byte, then a sum byte)
        snprintf(name, sizeof name, "raw_%d", i);
        d = chunked_bytes(f, name, n);
        memcpy(raw, data, n);
        put_le32(raw + n, ckpt_fletcher32(data, n));
        assert_true(H5Dwrite_chunk(d, H5P_DEFAULT, 0, origin, n + 4, raw) >= 0);
        assert_true(H5Dread(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, back) >= 0);
        assert_memory_equal(back, data, n);
        for (int k = 0; k < 2; k++) {
            size_t at = k == 0 ? below(n) : n + below(4);
            raw[at] ^= (unsigned char)(1u << below(8));
            assert_true(H5Dwrite_chunk(d, H5P_DEFAULT, 0, origin, n + 4, raw) >= 0);
            if (H5Dread(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, back) >= 0)
                fail_msg("%zu bytes (seed %llu): HDF5 read a chunk with byte %zu changed", n,
                         (unsigned long long)test_seed(), at);
            memcpy(raw, data, n);
            put_le32(raw + n, ckpt_fletcher32(data, n));
        }
        H5Dclose(d);
    }
    H5Fclose(f);
    free(data);
    free(raw);
    free(back);
}

int main(void) {
    test_seed(); // printed, for ENT_TEST_SEED to repeat the run
    hdf5_own = (fletcher_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "H5_checksum_fletcher32");
    printf("test_fletcher: HDF5's own H5_checksum_fletcher32 %s\n",
           hdf5_own ? "found: compared too" : "not exported by this HDF5: its loop, transcribed, only");
    test_reseed(0);
    make_lengths();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_lengths),
        cmocka_unit_test(test_extreme_values),
        cmocka_unit_test(test_bit_flips),
        cmocka_unit_test(test_hdf5_filter),
    };
    return cmocka_run_group_tests_name("fletcher", tests, NULL, NULL);
}
