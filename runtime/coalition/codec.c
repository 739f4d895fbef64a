// codec.c: how a site's delta (and the coordinator's outer update) travels:
// blockwise int8 (built on the backends' quantize_i8/dequantize_i8 op),
// blockwise int4, and top-k with 2-bit values, each as one self-describing
// little-endian buffer (layouts in docs/coalition.md), plus error feedback.
//
// Every copy of the anchor must apply the same update bit for bit, so
// encoding is a pure function of its input (blocks are independent, so the
// thread count never matters) and decoding is one IEEE multiply per value
// (q * scale); this folder is built without fused multiply-add contraction.
// Decoders distrust their bytes: the whole buffer is checked before a single
// value is written.
#include "runtime_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t codec_magic[4] = {'E', 'N', 'T', 'D'};

// Loops over fewer values than this run on one thread: starting a team costs
// more than it saves (results are the same either way).
#define PAR_MIN 65536

// ---------------------------------------------------------------------------
// settings and names

ent_codec ent_codec_default(ent_codec_kind kind) {
    ent_codec c = {.kind = kind, .block = ENT_CODEC_INT8_BLOCK, .k = 0};
    if (kind == ENT_CODEC_INT4) c.block = ENT_CODEC_INT4_BLOCK;
    if (kind == ENT_CODEC_TOPK) {
        c.block = ENT_CODEC_TOPK_BLOCK;
        c.k = ENT_CODEC_TOPK_K;
    }
    return c;
}

const char *ent_codec_name(ent_codec_kind kind) {
    switch (kind) {
    case ENT_CODEC_INT8: return "int8";
    case ENT_CODEC_INT4: return "int4";
    case ENT_CODEC_TOPK: return "topk";
    }
    return "invalid";
}

ent_status ent_codec_parse(const char *name, ent_codec *out) {
    static const ent_codec_kind kinds[] = {ENT_CODEC_INT8, ENT_CODEC_INT4, ENT_CODEC_TOPK};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (name != NULL && strcmp(name, ent_codec_name(kinds[i])) == 0) {
            *out = ent_codec_default(kinds[i]);
            return ENT_OK;
        }
    return ent_fail(ENT_ERR_USAGE, "unknown codec '%s' (known: int8, int4, topk)",
                    name ? name : "(null)");
}

// The settings' checks, reported with status st and "what: " in front (the
// caller's settings are ENT_ERR_USAGE, a buffer's header ENT_ERR_INPUT).
static ent_status check_codec(const ent_codec *c, ent_status st, const char *what) {
    const char *name = ent_codec_name(c->kind);
    if (strcmp(name, "invalid") == 0)
        return ent_fail(st, "%s: unknown codec id %d (known: 1 int8, 2 int4, 3 topk)", what,
                        (int)c->kind);
    if (c->block < 1 || c->block > ENT_CODEC_MAX_BLOCK)
        return ent_fail(st, "%s: %s block of %u values is outside [1, %u]", what, name,
                        c->block, ENT_CODEC_MAX_BLOCK);
    if (c->kind == ENT_CODEC_INT4 && c->block % 2 != 0)
        return ent_fail(st, "%s: int4 block of %u values must be even (blocks start on a byte)",
                        what, c->block);
    if (c->kind == ENT_CODEC_TOPK && (c->k < 1 || c->k > c->block))
        return ent_fail(st, "%s: topk keeps %u values per block; it must be in [1, %u] (the block)",
                        what, c->k, c->block);
    if (c->kind != ENT_CODEC_TOPK && c->k != 0)
        return ent_fail(st, "%s: %s takes no k (got %u; only topk keeps k values per block)", what,
                        name, c->k);
    return ENT_OK;
}

ent_status ent_codec_check(const ent_codec *codec) {
    return check_codec(codec, ENT_ERR_USAGE, "codec settings");
}

// ---------------------------------------------------------------------------
// layout: where each part of an encoded buffer lies

typedef struct {
    ent_codec c;
    size_t n, nblocks;
    size_t kept;        // topk: values kept in all blocks
    unsigned width;     // topk: bits per position inside a block
    size_t param_bytes; // per-block parameters: f32 scales, or topk's (lo, hi) pairs
    size_t data_bytes;  // int8 values, int4 nibbles, or topk's packed positions
    size_t code_bytes;  // topk's 2-bit codes
    size_t total;       // header included
} layout;

static size_t div_up(size_t a, size_t b) { return a / b + (a % b != 0); }

// Bits that hold a position inside a block of `block` values (at least 1).
static unsigned position_bits(uint32_t block) {
    unsigned w = 1;
    while (w < 32 && ((uint64_t)1 << w) < block) w++;
    return w;
}

// Values the block starting at value b * block keeps (topk).
static size_t block_len(const layout *L, size_t b) {
    size_t i0 = b * L->c.block;
    return L->n - i0 < L->c.block ? L->n - i0 : L->c.block;
}

static size_t block_kept(const layout *L, size_t b) {
    size_t len = block_len(L, b);
    return len < L->c.k ? len : L->c.k;
}

// Fills L for n values; 0, or -1 when a size does not fit in size_t.
static int layout_of(const ent_codec *c, uint64_t n64, layout *L) {
    memset(L, 0, sizeof *L);
    if (n64 > SIZE_MAX) return -1;
    size_t n = (size_t)n64, t = 0;
    L->c = *c;
    L->n = n;
    L->nblocks = div_up(n, c->block);
    int ovf = 0;
    switch (c->kind) {
    case ENT_CODEC_INT8:
        ovf |= __builtin_mul_overflow(L->nblocks, (size_t)4, &L->param_bytes);
        L->data_bytes = n;
        break;
    case ENT_CODEC_INT4:
        ovf |= __builtin_mul_overflow(L->nblocks, (size_t)4, &L->param_bytes);
        L->data_bytes = div_up(n, 2);
        break;
    case ENT_CODEC_TOPK: {
        ovf |= __builtin_mul_overflow(L->nblocks, (size_t)8, &L->param_bytes);
        L->width = position_bits(c->block);
        if (L->nblocks > 0) {
            size_t last = block_kept(L, L->nblocks - 1);
            ovf |= __builtin_mul_overflow(L->nblocks - 1, (size_t)c->k, &L->kept);
            ovf |= __builtin_add_overflow(L->kept, last, &L->kept);
        }
        size_t bits;
        ovf |= __builtin_mul_overflow(L->kept, (size_t)L->width, &bits);
        L->data_bytes = div_up(bits, 8);
        L->code_bytes = div_up(L->kept, 4);
        break;
    }
    }
    ovf |= __builtin_add_overflow((size_t)ENT_CODEC_HEADER_BYTES, L->param_bytes, &t);
    ovf |= __builtin_add_overflow(t, L->data_bytes, &t);
    ovf |= __builtin_add_overflow(t, L->code_bytes, &t);
    L->total = t;
    return ovf ? -1 : 0;
}

ent_status ent_codec_encoded_size(const ent_codec *codec, size_t n, size_t *bytes) {
    ENT_CHECK(ent_codec_check(codec));
    layout L;
    if (layout_of(codec, n, &L) != 0)
        return ent_fail(ENT_ERR_USAGE, "%zu values encoded with %s do not fit in memory", n,
                        ent_codec_name(codec->kind));
    *bytes = L.total;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// little-endian fields and bit streams

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
static void put_f32(uint8_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(p, u);
}
static float get_f32(const uint8_t *p) {
    uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// w bits of v at bit `pos` of a zeroed stream, least significant bit first.
static void put_bits(uint8_t *s, uint64_t pos, uint32_t v, unsigned w) {
    while (w > 0) {
        unsigned off = (unsigned)(pos & 7), take = 8 - off < w ? 8 - off : w;
        s[pos >> 3] |= (uint8_t)((v & ((1u << take) - 1)) << off);
        v >>= take;
        pos += take;
        w -= take;
    }
}
static uint32_t get_bits(const uint8_t *s, uint64_t pos, unsigned w) {
    uint32_t v = 0;
    unsigned got = 0;
    while (got < w) {
        unsigned off = (unsigned)(pos & 7), take = 8 - off < w - got ? 8 - off : w - got;
        v |= (uint32_t)((s[pos >> 3] >> off) & ((1u << take) - 1)) << got;
        pos += take;
        got += take;
    }
    return v;
}

// 1 when the bits of s from `from` to the end of its `bytes` bytes are zero.
static int padding_zero(const uint8_t *s, uint64_t from, size_t bytes) {
    for (uint64_t p = from; p < (uint64_t)bytes * 8; p++)
        if ((s[p >> 3] >> (p & 7)) & 1) return 0;
    return 1;
}

// ---------------------------------------------------------------------------
// encoding

// Highest level of a scaled codec's values (int8: 127, int4: 7).
static float max_level(ent_codec_kind kind) { return kind == ENT_CODEC_INT8 ? 127.0f : 7.0f; }

// A block whose scale is not finite held a non-finite value; one whose top
// level overflows held a value too large to decode finitely: both refused.
static ent_status check_scales(const layout *L, const float *x, const float *scales) {
    float top = max_level(L->c.kind);
    for (size_t b = 0; b < L->nblocks; b++) {
        if (isfinite(scales[b]) && isfinite(scales[b] * top)) continue;
        size_t i0 = b * L->c.block, i1 = i0 + block_len(L, b);
        for (size_t i = i0; i < i1; i++)
            if (!isfinite(x[i]))
                return ent_fail(ENT_ERR_INPUT, "cannot encode value %zu of the delta: it is %g",
                                i, (double)x[i]);
        return ent_fail(ENT_ERR_INPUT, "cannot encode block %zu of the delta: its scale %g "
                        "overflows when decoded", b, (double)scales[b]);
    }
    return ENT_OK;
}

// int8 through the backends' own quantiser (the CPU backend's, on host memory).
static ent_status encode_int8(const layout *L, const float *x, uint8_t *body) {
    float *scales = malloc((L->nblocks ? L->nblocks : 1) * sizeof(float));
    ENT_ALLOC_CHECK(scales, "the int8 scales");
    ent_backend_t *cpu = NULL;
    ent_status st;
    ENT_CHECK_GOTO(ent_backend_new("cpu", NULL, &cpu), done);
    ENT_CHECK_GOTO(ent_vec_quantize_i8(cpu, (int8_t *)(body + L->param_bytes), scales, x, L->n,
                                       L->c.block),
                   done);
    ENT_CHECK_GOTO(check_scales(L, x, scales), done);
    for (size_t b = 0; b < L->nblocks; b++) put_f32(body + 4 * b, scales[b]);
done:
    ent_backend_free(&cpu);
    free(scales);
    return st;
}

// int4: the int8 kernel's rule with 7 levels: scale = max|x| / 7 per block,
// q = x * (1 / scale) rounded to nearest (ties to even), |q| <= 7, stored as
// a 4-bit two's complement nibble, value 2j in the low nibble of byte j.
static ent_status encode_int4(const layout *L, const float *x, uint8_t *body) {
    float *scales = malloc((L->nblocks ? L->nblocks : 1) * sizeof(float));
    ENT_ALLOC_CHECK(scales, "the int4 scales");
    uint8_t *nib = body + L->param_bytes;
    size_t block = L->c.block, nb = L->nblocks, n = L->n;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * block, i1 = i0 + block < n ? i0 + block : n;
        float inv;
        scales[b] = ent_block_scale(x + i0, i1 - i0, 7.0f, &inv);
        for (size_t i = i0; i < i1; i++) {
            float r = nearbyintf(x[i] * inv);
            r = r > 7.0f ? 7.0f : r < -7.0f ? -7.0f : r;
            uint8_t q = (uint8_t)((int)(r == r ? r : 0.0f) & 0xF);
            if (i % 2 == 0) nib[i / 2] = q; // blocks are even: a byte is never shared
            else nib[i / 2] |= (uint8_t)(q << 4);
        }
    }
    ent_status st = check_scales(L, x, scales);
    for (size_t b = 0; st == ENT_OK && b < nb; b++) put_f32(body + 4 * b, scales[b]);
    free(scales);
    return st;
}

// Top-k of one block x (len values), kb of them: the largest magnitudes,
// equal magnitudes going to the smaller position. Writes their positions in
// increasing order with their codes (bit 0: sign, 1 = negative; bit 1:
// magnitude, 0 = lo, 1 = hi), and lo <= hi: the optimal split of the kept
// magnitudes into two groups (least squares, sums in double in a fixed
// order) and the mean of each.
static int weaker(const float *x, uint32_t a, uint32_t b) {
    float fa = fabsf(x[a]), fb = fabsf(x[b]);
    return fa < fb || (fa == fb && a > b);
}

static void sift_down(const float *x, uint32_t *h, size_t size, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < size && weaker(x, h[l], h[m])) m = l;
        if (r < size && weaker(x, h[r], h[m])) m = r;
        if (m == i) return;
        uint32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void topk_block(const float *x, size_t len, size_t kb, uint32_t *heap, uint32_t *pos,
                       uint8_t *codes, float *lo, float *hi) {
    size_t size = 0;
    for (uint32_t i = 0; i < len; i++) {
        if (size < kb) { // push, sifting up
            size_t j = size++;
            heap[j] = i;
            while (j > 0 && weaker(x, heap[j], heap[(j - 1) / 2])) {
                uint32_t t = heap[j];
                heap[j] = heap[(j - 1) / 2];
                heap[(j - 1) / 2] = t;
                j = (j - 1) / 2;
            }
        } else if (weaker(x, heap[0], i)) {
            heap[0] = i;
            sift_down(x, heap, size, 0);
        }
    }
    // heap sort: pos[r] = the kept value of rank r, weakest first
    for (size_t r = 0; r < kb; r++) {
        pos[r] = heap[0];
        heap[0] = heap[--size];
        sift_down(x, heap, size, 0);
    }
    // split ranks [0, j) -> lo, [j, kb) -> hi maximising the explained sum of squares
    double total = 0.0, below = 0.0, best = -1.0;
    size_t split = kb;
    for (size_t r = 0; r < kb; r++) total += fabsf(x[pos[r]]);
    for (size_t j = 1; j < kb; j++) {
        below += fabsf(x[pos[j - 1]]);
        double above = total - below;
        double score = below * below / (double)j + above * above / (double)(kb - j);
        if (score > best) {
            best = score;
            split = j;
        }
    }
    double slo = 0.0, shi = 0.0;
    for (size_t r = 0; r < kb; r++) {
        if (r < split) slo += fabsf(x[pos[r]]);
        else shi += fabsf(x[pos[r]]);
    }
    *lo = (float)(slo / (double)split);
    *hi = split < kb ? (float)(shi / (double)(kb - split)) : *lo;
    // positions in increasing order, the group in the lowest bit while sorting
    for (size_t r = 0; r < kb; r++) pos[r] = pos[r] << 1 | (r >= split);
    qsort(pos, kb, sizeof *pos, cmp_u32);
    for (size_t r = 0; r < kb; r++) {
        uint32_t p = pos[r] >> 1;
        codes[r] = (uint8_t)((x[p] < 0.0f) | (pos[r] & 1) << 1);
        pos[r] = p;
    }
}

static ent_status encode_topk(const layout *L, const float *x, uint8_t *body) {
    for (size_t i = 0; i < L->n; i++)
        if (!isfinite(x[i]))
            return ent_fail(ENT_ERR_INPUT, "cannot encode value %zu of the delta: it is %g", i,
                            (double)x[i]);
    size_t kept = L->kept ? L->kept : 1, nb = L->nblocks, k = L->c.k, block = L->c.block;
    uint32_t *pos = malloc(kept * sizeof *pos);
    uint8_t *codes = malloc(kept);
    float *lohi = malloc((nb ? nb : 1) * 2 * sizeof(float));
    int nomem = pos == NULL || codes == NULL || lohi == NULL;
    if (!nomem) {
#pragma omp parallel if (L->n >= PAR_MIN)
        {
            uint32_t *heap = malloc(k * sizeof *heap);
            if (heap == NULL) {
#pragma omp atomic write
                nomem = 1;
            }
#pragma omp for schedule(static)
            for (size_t b = 0; b < nb; b++)
                if (heap != NULL)
                    topk_block(x + b * block, block_len(L, b), block_kept(L, b), heap,
                               pos + b * k, codes + b * k, &lohi[2 * b], &lohi[2 * b + 1]);
            free(heap);
        }
    }
    if (nomem) {
        free(pos);
        free(codes);
        free(lohi);
        return ent_fail(ENT_ERR_NOMEM, "out of memory encoding %zu values with topk", L->n);
    }
    for (size_t b = 0; b < nb; b++) {
        put_f32(body + 8 * b, lohi[2 * b]);
        put_f32(body + 8 * b + 4, lohi[2 * b + 1]);
    }
    uint8_t *ps = body + L->param_bytes, *cs = ps + L->data_bytes;
    memset(ps, 0, L->data_bytes + L->code_bytes);
    for (size_t e = 0; e < L->kept; e++) {
        put_bits(ps, (uint64_t)e * L->width, pos[e], L->width);
        put_bits(cs, (uint64_t)e * 2, codes[e], 2);
    }
    free(pos);
    free(codes);
    free(lohi);
    return ENT_OK;
}

ent_status ent_codec_encode(const ent_codec *codec, const float *x, size_t n, void *out,
                            size_t cap, size_t *len) {
    ENT_CHECK(ent_codec_check(codec));
    layout L;
    if (layout_of(codec, n, &L) != 0)
        return ent_fail(ENT_ERR_USAGE, "%zu values encoded with %s do not fit in memory", n,
                        ent_codec_name(codec->kind));
    if (cap < L.total)
        return ent_fail(ENT_ERR_USAGE, "%zu values encoded with %s take %zu bytes; the buffer "
                        "has %zu", n, ent_codec_name(codec->kind), L.total, cap);
    uint8_t *p = out;
    memcpy(p, codec_magic, 4);
    p[4] = ENT_CODEC_VERSION;
    p[5] = (uint8_t)codec->kind;
    p[6] = p[7] = 0;
    put_u64(p + 8, n);
    put_u32(p + 16, codec->block);
    put_u32(p + 20, codec->k);
    uint8_t *body = p + ENT_CODEC_HEADER_BYTES;
    switch (codec->kind) {
    case ENT_CODEC_INT8: ENT_CHECK(encode_int8(&L, x, body)); break;
    case ENT_CODEC_INT4: ENT_CHECK(encode_int4(&L, x, body)); break;
    case ENT_CODEC_TOPK: ENT_CHECK(encode_topk(&L, x, body)); break;
    }
    *len = L.total;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// decoding: check everything, then write

typedef struct {
    layout L;
    const uint8_t *body;
    float *params; // the per-block parameters, read and checked (owned)
} parsed;

static void parsed_free(parsed *p) {
    free(p->params);
    p->params = NULL;
}

#define BAD(...) ent_fail(ENT_ERR_INPUT, "encoded delta: " __VA_ARGS__)

static ent_status read_header(const uint8_t *p, size_t len, layout *L) {
    if (p == NULL && len > 0) return ent_fail(ENT_ERR_USAGE, "encoded delta: NULL buffer");
    if (len < ENT_CODEC_HEADER_BYTES)
        return BAD("%zu bytes, shorter than the %d-byte header", len, ENT_CODEC_HEADER_BYTES);
    if (memcmp(p, codec_magic, 4) != 0)
        return BAD("bad magic %02x %02x %02x %02x (expected 'ENTD')", p[0], p[1], p[2], p[3]);
    if (p[4] != ENT_CODEC_VERSION)
        return BAD("format version %u; this build reads version %d", p[4], ENT_CODEC_VERSION);
    if (p[6] != 0 || p[7] != 0)
        return BAD("reserved bytes 6-7 are %02x %02x, not zero", p[6], p[7]);
    ent_codec c = {.kind = (ent_codec_kind)p[5], .block = get_u32(p + 16), .k = get_u32(p + 20)};
    ENT_CHECK(check_codec(&c, ENT_ERR_INPUT, "encoded delta"));
    uint64_t n = get_u64(p + 8);
    if (layout_of(&c, n, L) != 0)
        return BAD("%llu values cannot be addressed", (unsigned long long)n);
    if (L->total != len)
        return BAD("%zu bytes, but its header (%s, %llu values, block %u, k %u) implies %zu", len,
                   ent_codec_name(c.kind), (unsigned long long)n, c.block, c.k, L->total);
    return ENT_OK;
}

ent_status ent_codec_read_header(const void *buf, size_t len, ent_codec *codec, uint64_t *n) {
    layout L;
    ENT_CHECK(read_header(buf, len, &L));
    if (codec != NULL) *codec = L.c;
    if (n != NULL) *n = L.n;
    return ENT_OK;
}

static ent_status check_body(parsed *P) {
    const layout *L = &P->L;
    size_t nb = L->nblocks;
    const uint8_t *body = P->body, *data = body + L->param_bytes;
    if (L->c.kind != ENT_CODEC_TOPK) {
        float top = max_level(L->c.kind);
        for (size_t b = 0; b < nb; b++) {
            float s = P->params[b] = get_f32(body + 4 * b);
            if (!(s >= 0.0f) || !isfinite(s * top))
                return BAD("block %zu's scale %g is not a finite non-negative number whose "
                           "values stay finite", b, (double)s);
        }
    }
    switch (L->c.kind) {
    case ENT_CODEC_INT8: {
        const uint8_t *bad = memchr(data, 0x80, L->n);
        if (bad != NULL) return BAD("value %zu is -128, outside [-127, 127]", (size_t)(bad - data));
        break;
    }
    case ENT_CODEC_INT4:
        if (L->n % 2 != 0 && data[L->data_bytes - 1] >> 4 != 0)
            return BAD("the padding nibble after the last value is not zero");
        for (size_t j = 0; j < L->data_bytes; j++) {
            if ((data[j] & 0xF) == 8 || data[j] >> 4 == 8)
                return BAD("value %zu is -8, outside [-7, 7]", 2 * j + ((data[j] & 0xF) != 8));
        }
        break;
    case ENT_CODEC_TOPK: {
        for (size_t b = 0; b < nb; b++) {
            float lo = P->params[2 * b] = get_f32(body + 8 * b);
            float hi = P->params[2 * b + 1] = get_f32(body + 8 * b + 4);
            if (!(lo >= 0.0f && lo <= hi && isfinite(hi)))
                return BAD("block %zu's magnitudes lo %g, hi %g are not finite with 0 <= lo <= hi",
                           b, (double)lo, (double)hi);
        }
        uint64_t e = 0;
        for (size_t b = 0; b < nb; b++) {
            size_t len = block_len(L, b), kb = block_kept(L, b);
            uint32_t prev = 0;
            for (size_t r = 0; r < kb; r++, e++) {
                uint32_t p = get_bits(data, e * L->width, L->width);
                if (p >= len || (r > 0 && p <= prev))
                    return BAD("block %zu: position %u (entry %zu) is %s", b, p, r,
                               p >= len ? "outside the block" : "not above the one before");
                prev = p;
            }
        }
        if (!padding_zero(data, (uint64_t)L->kept * L->width, L->data_bytes))
            return BAD("padding bits after the last position are not zero");
        if (!padding_zero(data + L->data_bytes, (uint64_t)L->kept * 2, L->code_bytes))
            return BAD("padding bits after the last code are not zero");
        break;
    }
    }
    return ENT_OK;
}

// Checks a whole buffer of n values: P holds its layout and parameters.
static ent_status parse(const void *buf, size_t len, size_t n, parsed *P) {
    memset(P, 0, sizeof *P);
    ENT_CHECK(read_header(buf, len, &P->L));
    if (P->L.n != n)
        return BAD("holds %zu values; %zu expected", P->L.n, n);
    P->body = (const uint8_t *)buf + ENT_CODEC_HEADER_BYTES;
    size_t nparams = P->L.nblocks * (P->L.c.kind == ENT_CODEC_TOPK ? 2 : 1);
    P->params = malloc((nparams ? nparams : 1) * sizeof(float));
    ENT_ALLOC_CHECK(P->params, "the decoded block parameters");
    ent_status st = check_body(P);
    if (st != ENT_OK) parsed_free(P);
    return st;
}

// y = D (set) or y += alpha * D, for a checked buffer.
static ent_status apply(const parsed *P, int set, float alpha, float *y) {
    const layout *L = &P->L;
    const uint8_t *data = P->body + L->param_bytes;
    size_t n = L->n, block = L->c.block, nb = L->nblocks;
    const float *prm = P->params;
    switch (L->c.kind) {
    case ENT_CODEC_INT8: { // the backends' dequantize_i8: q * scale
        ent_backend_t *cpu = NULL;
        ENT_CHECK(ent_backend_new("cpu", NULL, &cpu));
        const int8_t *q = (const int8_t *)data;
        ent_status st = ENT_OK;
        if (set) {
            st = ent_vec_dequantize_i8(cpu, y, q, prm, n, block);
        } else { // through a buffer of whole blocks
            size_t chunk = block * (block < 65536 ? 65536 / block : 1);
            float *tmp = malloc((n < chunk ? (n ? n : 1) : chunk) * sizeof(float));
            if (tmp == NULL) st = ent_fail(ENT_ERR_NOMEM, "out of memory decoding an int8 delta");
            for (size_t c0 = 0; st == ENT_OK && c0 < n; c0 += chunk) {
                size_t m = n - c0 < chunk ? n - c0 : chunk;
                st = ent_vec_dequantize_i8(cpu, tmp, q + c0, prm + c0 / block, m, block);
                for (size_t i = 0; st == ENT_OK && i < m; i++) y[c0 + i] += alpha * tmp[i];
            }
            free(tmp);
        }
        ent_backend_free(&cpu);
        return st;
    }
    case ENT_CODEC_INT4:
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
        for (size_t i = 0; i < n; i++) {
            int q = (data[i / 2] >> (4 * (i % 2))) & 0xF;
            float d = (float)(q >= 8 ? q - 16 : q) * prm[i / block];
            if (set) y[i] = d;
            else y[i] += alpha * d;
        }
        return ENT_OK;
    case ENT_CODEC_TOPK: {
        if (set) memset(y, 0, n * sizeof(float));
        const uint8_t *codes = data + L->data_bytes;
        uint64_t e = 0;
        for (size_t b = 0; b < nb; b++) {
            size_t kb = block_kept(L, b);
            for (size_t r = 0; r < kb; r++, e++) {
                size_t i = b * block + get_bits(data, e * L->width, L->width);
                unsigned c = get_bits(codes, e * 2, 2);
                float mag = prm[2 * b + (c >> 1)], d = c & 1 ? -mag : mag;
                if (set) y[i] = d;
                else y[i] += alpha * d;
            }
        }
        return ENT_OK;
    }
    }
    ENT_ASSERT(0 && "a parsed buffer has a known codec");
    return ENT_ERR_INTERNAL;
}

ent_status ent_codec_decode(const void *buf, size_t len, float *out, size_t n) {
    parsed P;
    ENT_CHECK(parse(buf, len, n, &P));
    ent_status st = apply(&P, 1, 1.0f, out);
    parsed_free(&P);
    return st;
}

ent_status ent_codec_decode_axpy(const void *buf, size_t len, float alpha, float *y, size_t n) {
    parsed P;
    ENT_CHECK(parse(buf, len, n, &P));
    ent_status st = apply(&P, 0, alpha, y);
    parsed_free(&P);
    return st;
}

// ---------------------------------------------------------------------------
// error feedback

ent_status ent_codec_encode_feedback(const ent_codec *codec, float *delta, float *residual,
                                     size_t n, void *out, size_t cap, size_t *len) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) delta[i] += residual[i];
    ENT_CHECK(ent_codec_encode(codec, delta, n, out, cap, len));
    // what the receivers get is exactly the decoder's output of these bytes
    ENT_CHECK(ent_codec_decode_axpy(out, *len, -1.0f, delta, n));
    memcpy(residual, delta, n * sizeof(float));
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// the merge of a round's deltas (here because it reads encoded buffers)

ent_status ent_coalition_merge(const ent_site_delta *deltas, int count, float *out, size_t n) {
    if (count < 1) return ent_fail(ENT_ERR_USAGE, "merge: no deltas to merge");
    int *order = malloc((size_t)count * sizeof *order);
    parsed *P = calloc((size_t)count, sizeof *P);
    ent_status st = ENT_OK;
    if (order == NULL || P == NULL) {
        free(order);
        free(P);
        return ent_fail(ENT_ERR_NOMEM, "out of memory merging %d deltas", count);
    }
    // increasing site id (insertion sort: a handful of sites)
    for (int i = 0; i < count; i++) {
        int j = i;
        while (j > 0 && deltas[order[j - 1]].site > deltas[i].site) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    uint64_t total = 0;
    for (int r = 0; r < count && st == ENT_OK; r++) {
        const ent_site_delta *d = &deltas[order[r]];
        if (r > 0 && deltas[order[r - 1]].site == d->site)
            st = ent_fail(ENT_ERR_INPUT, "merge: site %u sent two deltas for one round", d->site);
        else if (__builtin_add_overflow(total, d->tokens, &total))
            st = ent_fail(ENT_ERR_INPUT, "merge: the sites' token counts overflow (site %u: %llu)",
                          d->site, (unsigned long long)d->tokens);
        else if (d->encoded != NULL) {
            st = parse(d->encoded, d->encoded_len, n, &P[order[r]]);
            if (st != ENT_OK)
                st = ent_fail(st, "merge: site %u's delta: %s", d->site, ent_last_error());
        } else if (d->values == NULL) {
            st = ent_fail(ENT_ERR_USAGE, "merge: site %u has neither an encoded delta nor values",
                          d->site);
        } else {
            for (size_t i = 0; i < n; i++)
                if (!isfinite(d->values[i])) {
                    st = ent_fail(ENT_ERR_INPUT, "merge: site %u's delta value %zu is %g", d->site,
                                  i, (double)d->values[i]);
                    break;
                }
        }
    }
    if (st == ENT_OK && total == 0)
        st = ent_fail(ENT_ERR_INPUT, "merge: the %d sites trained on no tokens this round", count);
    if (st == ENT_OK) {
        memset(out, 0, n * sizeof(float));
        for (int r = 0; r < count && st == ENT_OK; r++) {
            const ent_site_delta *d = &deltas[order[r]];
            float w = (float)((double)d->tokens / (double)total);
            if (d->encoded != NULL) {
                st = apply(&P[order[r]], 0, w, out);
            } else {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
                for (size_t i = 0; i < n; i++) out[i] += w * d->values[i];
            }
        }
    }
    for (int i = 0; i < count; i++) parsed_free(&P[i]);
    free(P);
    free(order);
    return st;
}
