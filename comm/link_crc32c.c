// link_crc32c.c: CRC32C (Castagnoli polynomial 0x1EDC6F41, reflected as
// 0x82F63B78, initial value and final xor 0xFFFFFFFF), the checksum of every
// coalition link message's header and payload. docs/protocol.md says why this
// one: it finds every error burst of up to 32 bits, x86 computes it with one
// instruction per 8 bytes (SSE4.2), and the table form is portable.
#include "link_impl.h"

#include <pthread.h>
#include <string.h>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

// ---------------------------------------------------------------------------
// portable: slice-by-8 tables, built once

static uint32_t crc_table[8][256];
static pthread_once_t crc_table_once = PTHREAD_ONCE_INIT;

static void crc_table_build(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t link_crc32c_portable(uint32_t crc, const void *data, size_t n) {
    pthread_once(&crc_table_once, crc_table_build);
    const uint8_t *p = data;
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = crc ^ le32(p), hi = le32(p + 4);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

// ---------------------------------------------------------------------------
// the SSE4.2 instruction where the build targets it (x86-64-v2 and later)

uint32_t ent_link_crc32c(uint32_t crc, const void *data, size_t n) {
#if defined(__SSE4_2__)
    const uint8_t *p = data;
    uint64_t c = ~crc;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8); // x86 is little-endian: the bytes in stream order
        c = _mm_crc32_u64(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
#else
    return link_crc32c_portable(crc, data, n);
#endif
}
