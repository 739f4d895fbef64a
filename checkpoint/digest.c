// digest.c: the metadata digest, SHA-256 over a checkpoint's attributes.
//
// HDF5's 1.10 format checksums the metadata blocks (ckpt_set_format), but a
// file written with an older format, or by a tool that rewrote an attribute
// with a wrong value, would still be believed: step, data cursor, seeds and
// the stored configuration decide where a resumed run continues. The digest
// covers every attribute's value as a reader sees it (so an int32 `step` and
// an int64 one hash alike), in a byte form that an outside program can
// recompute (docs/checkpoint.md, "Metadata digest"):
//
//   for each attribute, ordered by name (bytes, ascending), where the names
//   of the group /coalition's attributes are prefixed "coalition/":
//     name, one 0 byte, a tag byte, then
//       'i' signed integer:   8 bytes, little-endian two's complement
//       'u' unsigned integer: 8 bytes, little-endian
//       'f' floating point:   8 bytes, the IEEE double, little-endian
//       's' text:             its length as 8 bytes little-endian, the bytes
#include "ckpt_impl.h"

#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------
// SHA-256, FIPS 180-4

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

void ckpt_sha256(const void *data, size_t n, uint8_t out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const uint8_t *p = data;
    size_t whole = n / 64 * 64;
    for (size_t i = 0; i < whole; i += 64) sha_block(h, p + i);
    uint8_t tail[128] = {0};
    size_t rest = n - whole, len = rest + 9 <= 64 ? 64 : 128;
    memcpy(tail, p + whole, rest);
    tail[rest] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++) tail[len - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < len; i += 64) sha_block(h, tail + i);
    for (int i = 0; i < 32; i++) out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

// ---------------------------------------------------------------------------
// the attributes' byte form

#define MAX_ATTRS 4096 // far more than any checkpoint holds; bounds the walk

typedef struct {
    char *name; // "step", "coalition/round"
    ckpt_value v;
} entry;

typedef struct {
    const char *prefix, *path;
    entry *e;
    int n;
    ent_status st;
} walk;

static herr_t collect(hid_t obj, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    walk *w = data;
    if (w->prefix[0] == '\0' && strcmp(name, CKPT_DIGEST_ATTR) == 0) return 0;
    if (w->n == MAX_ATTRS) {
        w->st = ent_fail(ENT_ERR_INPUT, "%s: more than %d attributes", w->path, MAX_ATTRS);
        return 1;
    }
    entry *e = &w->e[w->n];
    size_t len = strlen(w->prefix) + strlen(name) + 1;
    e->name = malloc(len);
    if (e->name == NULL) {
        w->st = ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", w->path);
        return 1;
    }
    snprintf(e->name, len, "%s%s", w->prefix, name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    w->st = a < 0 ? ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot read attribute '%s'", w->path, e->name)
                  : ckpt_read_value(a, w->path, e->name, &e->v);
    if (a >= 0) H5Aclose(a);
    w->n++; // its name is freed with the others, whatever happened
    return w->st == ENT_OK ? 0 : 1;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static void put64(uint8_t *p, uint64_t x) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(x >> (8 * i));
}

// The digest of the file's attributes, as 64 hex digits.
static ent_status compute(hid_t file, const char *path, char hex[65]) {
    walk w = {.path = path, .st = ENT_OK};
    w.e = calloc(MAX_ATTRS, sizeof *w.e);
    if (w.e == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", path);
    const char *prefixes[2] = {"", CKPT_COALITION "/"};
    for (int k = 0; k < 2 && w.st == ENT_OK; k++) {
        hid_t obj = k == 0 ? H5Gopen2(file, "/", H5P_DEFAULT)
                  : H5Lexists(file, CKPT_COALITION, H5P_DEFAULT) > 0
                        ? H5Gopen2(file, CKPT_COALITION, H5P_DEFAULT) : H5I_INVALID_HID;
        if (k == 0 && obj < 0) w.st = ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot open the root group", path);
        if (obj < 0) continue;
        w.prefix = prefixes[k];
        hsize_t idx = 0;
        if (H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx, collect, &w) < 0 && w.st == ENT_OK)
            w.st = ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot list the attributes of /%s", path,
                                k == 0 ? "" : CKPT_COALITION);
        H5Gclose(obj);
    }
    size_t bytes = 0;
    for (int i = 0; i < w.n; i++)
        bytes += strlen(w.e[i].name) + 2 + 8 + (w.e[i].v.type == ENT_ATTR_STR ? strlen(w.e[i].v.s) : 0);
    uint8_t *buf = w.st == ENT_OK ? malloc(bytes + 1) : NULL;
    if (w.st == ENT_OK && buf == NULL) w.st = ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", path);
    if (w.st == ENT_OK) {
        qsort(w.e, (size_t)w.n, sizeof *w.e, by_name);
        uint8_t *p = buf;
        for (int i = 0; i < w.n; i++) {
            const ckpt_value *v = &w.e[i].v;
            size_t len = strlen(w.e[i].name) + 1;
            memcpy(p, w.e[i].name, len); // with its NUL
            p += len;
            static const char tags[] = {[ENT_ATTR_I64] = 'i', [ENT_ATTR_U64] = 'u',
                                        [ENT_ATTR_F64] = 'f', [ENT_ATTR_STR] = 's'};
            *p++ = (uint8_t)tags[v->type];
            uint64_t x = v->type == ENT_ATTR_I64 ? (uint64_t)v->i
                       : v->type == ENT_ATTR_U64 ? v->u
                       : v->type == ENT_ATTR_STR ? strlen(v->s) : 0;
            if (v->type == ENT_ATTR_F64) memcpy(&x, &v->f, 8);
            put64(p, x);
            p += 8;
            if (v->type == ENT_ATTR_STR) {
                memcpy(p, v->s, strlen(v->s));
                p += strlen(v->s);
            }
        }
        uint8_t sum[32];
        ckpt_sha256(buf, (size_t)(p - buf), sum);
        for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", sum[i]);
    }
    free(buf);
    for (int i = 0; i < w.n; i++) {
        free(w.e[i].name);
        free(w.e[i].v.s);
    }
    free(w.e);
    return w.st;
}

ent_status ckpt_write_digest(hid_t file, const char *path) {
    char hex[65], text[80];
    ENT_CHECK(compute(file, path, hex));
    snprintf(text, sizeof text, "sha256:%s", hex);
    ent_ckpt_attr a = {.name = CKPT_DIGEST_ATTR, .type = ENT_ATTR_STR, .s = text};
    return ckpt_write_attr(file, &a);
}

ent_status ckpt_check_digest(hid_t file, const char *path) {
    if (H5Aexists(file, CKPT_DIGEST_ATTR) <= 0)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is missing: its metadata cannot be "
                        "checked (written before entente kept a metadata digest, or by another "
                        "tool; docs/checkpoint.md says how to compute it)", path, CKPT_DIGEST_ATTR);
    char *stored = NULL, hex[65];
    ENT_CHECK(ckpt_read_text_attr(file, path, CKPT_DIGEST_ATTR, &stored));
    ent_status st = compute(file, path, hex);
    if (st == ENT_OK && (strncmp(stored, "sha256:", 7) != 0 || strcmp(stored + 7, hex) != 0))
        st = ent_fail(ENT_ERR_INPUT, "%s: the metadata digest does not match the attributes "
                      "(damaged or altered): attribute '%s' is '%.80s', they hash to sha256:%s",
                      path, CKPT_DIGEST_ATTR, stored, hex);
    free(stored);
    return st;
}
