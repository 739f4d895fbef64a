// fletcher32.c: HDF5's Fletcher32 chunk checksum, bit for bit, at memory speed.
//
// HDF5 (H5_checksum_fletcher32) reads the data as big-endian 16-bit words
// and runs two 32-bit sums over them word by word, sum1 += w, sum2 += sum1
// (sum2 may wrap), folding both to 16 bits plus carry after every 360 words;
// an odd last byte counts as the high half of a word; two final folds. The
// folds are not linear, so they must fall where HDF5's do; between them the
// sums are plain arithmetic modulo 2^32, so a block of n words w_0..w_{n-1}
// adds, in closed form,
//   sum1 += S = sum of w_i,   sum2 += n * sum1 + W,  W = sum of (n - i) * w_i,
// and any way of computing S and W in 32-bit arithmetic gives HDF5's result.
//
// The vector path (AVX2) keeps 8 lanes of running sums: word i = 8k + j of a
// block lands in lane j of step k; A_j += v_kj and then B_j += A_j, so that
// after the block's m = 45 steps B_j = sum over k of (m - k) * v_kj, and
//   S = sum_j A_j,   W = sum_j (8 * B_j - j * A_j)
// (the weight of word 8k + j is n - 8k - j = 8(m - k) - j). Two adds per 8
// words: the loop runs at the speed memory delivers. Other targets use the
// portable closed form, which compilers also vectorise.
#include "ckpt_impl.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

enum { BLOCK = 720, BLOCK_WORDS = BLOCK / 2 }; // 360 words: where HDF5 folds

typedef struct {
    uint32_t sum1, sum2;
} sums;

static inline uint32_t fold(uint32_t x) { return (x & 0xffff) + (x >> 16); }

// One block of n words (n <= 360) at p in closed form; sums folded after.
static void block_portable(uint32_t *sum1, uint32_t *sum2, const uint8_t *p, uint32_t n) {
    uint32_t s = 0, weighted = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t w = (uint32_t)p[2 * i] << 8 | p[2 * i + 1];
        s += w;
        weighted += (n - i) * w;
    }
    *sum2 = fold(*sum2 + n * *sum1 + weighted);
    *sum1 = fold(*sum1 + s);
}

#ifdef __AVX2__
// Horizontal sum of 8 32-bit lanes (modulo 2^32).
static inline uint32_t hsum(__m256i v) {
    __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
    return (uint32_t)_mm_cvtsi128_si32(x);
}

// Whole 360-word blocks, `blocks` of them, at p.
static void blocks_avx2(uint32_t *sum1, uint32_t *sum2, const uint8_t *p, size_t blocks) {
    // 16 bytes (8 words) sit in both 128-bit halves; each half picks 4 words,
    // byte-swapped into the low 16 bits of a 32-bit lane (0x80: a zero byte)
    const __m256i swap = _mm256_setr_epi8(1, 0, -128, -128, 3, 2, -128, -128, 5, 4, -128, -128,
                                          7, 6, -128, -128, 9, 8, -128, -128, 11, 10, -128, -128,
                                          13, 12, -128, -128, 15, 14, -128, -128);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (size_t b = 0; b < blocks; b++, p += BLOCK) {
        __m256i a = _mm256_setzero_si256(), acc = _mm256_setzero_si256();
        for (int k = 0; k < BLOCK_WORDS / 8; k++) {
            __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + 16 * k)));
            a = _mm256_add_epi32(a, _mm256_shuffle_epi8(v, swap));
            acc = _mm256_add_epi32(acc, a);
        }
        uint32_t s = hsum(a);
        uint32_t weighted = hsum(_mm256_sub_epi32(_mm256_slli_epi32(acc, 3),
                                                  _mm256_mullo_epi32(lane, a)));
        *sum2 = fold(*sum2 + BLOCK_WORDS * *sum1 + weighted);
        *sum1 = fold(*sum1 + s);
    }
}
#endif

// Adds nbytes at data to the sums: whole blocks on the vector path when
// `vector` (and the target has one), the rest in closed form.
static void add(sums *st, const uint8_t *p, size_t nbytes, int vector) {
    size_t words = nbytes / 2;
#ifdef __AVX2__
    if (vector) {
        blocks_avx2(&st->sum1, &st->sum2, p, words / BLOCK_WORDS);
        p += words / BLOCK_WORDS * BLOCK;
        words %= BLOCK_WORDS;
    }
#else
    (void)vector;
#endif
    while (words) {
        uint32_t n = words > BLOCK_WORDS ? BLOCK_WORDS : (uint32_t)words;
        block_portable(&st->sum1, &st->sum2, p, n);
        p += 2 * n;
        words -= n;
    }
    if (nbytes % 2) { // the last byte, as the high half of a word
        st->sum1 += (uint32_t)*p << 8;
        st->sum2 = fold(st->sum2 + st->sum1);
        st->sum1 = fold(st->sum1);
    }
}

static uint32_t end(const sums *st) {
    return fold(st->sum2) << 16 | fold(st->sum1);
}

uint32_t ckpt_fletcher32(const void *data, size_t nbytes) {
    sums st = {0, 0};
    add(&st, data, nbytes, 1);
    return end(&st);
}

uint32_t ckpt_fletcher32_portable(const void *data, size_t nbytes) {
    sums st = {0, 0};
    add(&st, data, nbytes, 0);
    return end(&st);
}
