// link_proto.c: the coalition link's wire protocol, version 3 (version 2,
// which added the STATE message, type 9, and ERROR code 9 to version 1,
// with HELLO's tokens_per_step and the LEDGER message, type 10).
//
// Every message is a 36-byte little-endian header followed by its payload
// (docs/protocol.md, which this file must match byte for byte):
//
//   off size field
//     0    4 magic        "ENTL" (0x4c544e45 read little-endian)
//     4    2 version      3
//     6    2 type         ent_link_type
//     8    4 flags        0 (none defined)
//    12    4 site         site id (0 before WELCOME)
//    16    8 round
//    24    4 payload_len  bytes after the header
//    28    4 payload_crc  CRC32C of the payload
//    32    4 header_crc   CRC32C of bytes 0..31
//
// A decoder trusts nothing before it has checked it: the magic and the
// version first (they sit at the same offsets in every version, so a reader
// can always say which version it saw), then the header's own checksum, then
// each header field, the payload's length and checksum, and last the payload
// field by field, with an exact length (no trailing bytes). Every field has
// one encoding (reserved bits zero, strings length-prefixed without NUL,
// finite doubles), so a message that decodes re-encodes to the same bytes.
// Encoders run the same field checks, so this build never sends what a peer
// would refuse.
#include "link_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------
// names and errors

static const char *const type_names[ENT_LINK_TYPE_END] = {
    [ENT_LINK_HELLO] = "HELLO",         [ENT_LINK_WELCOME] = "WELCOME",
    [ENT_LINK_HEARTBEAT] = "HEARTBEAT", [ENT_LINK_ROUND_PLAN] = "ROUND_PLAN",
    [ENT_LINK_DELTA] = "DELTA",         [ENT_LINK_UPDATE] = "UPDATE",
    [ENT_LINK_LEAVE] = "LEAVE",         [ENT_LINK_ERROR] = "ERROR",
    [ENT_LINK_STATE] = "STATE",         [ENT_LINK_LEDGER] = "LEDGER",
};

const char *ent_link_type_name(int type) {
    if (type <= 0 || type >= ENT_LINK_TYPE_END) return "unknown";
    return type_names[type];
}

// "link: <what> from <peer>: <detail>" as ENT_ERR_INPUT
static ent_status decode_fail(const char *peer, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static ent_status decode_fail(const char *peer, const char *what, const char *fmt, ...) {
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (peer != NULL && peer[0] != '\0')
        return ent_fail(ENT_ERR_INPUT, "link: %s from %s: %s", what, peer, detail);
    return ent_fail(ENT_ERR_INPUT, "link: %s: %s", what, detail);
}

// Field checks write why a value is refused into `why` and return -1; the
// encoders report it as the caller's error, the decoders as the peer's.
#define WHY(...) (snprintf(why, WHY_MAX, __VA_ARGS__), -1)
enum { WHY_MAX = 256 };

// ---------------------------------------------------------------------------
// little-endian writing into a buffer

void ent_link_buf_free(ent_link_buf *buf) {
    if (buf == NULL) return;
    free(buf->data);
    buf->data = NULL;
    buf->len = buf->cap = 0;
}

static ent_status buf_reserve(ent_link_buf *b, size_t need) {
    if (need <= b->cap) return ENT_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    ENT_ALLOC_CHECK(p, "a link message");
    b->data = p;
    b->cap = cap;
    return ENT_OK;
}

// The writers assume room was reserved (the encoders reserve the whole
// message first: header plus the payload's exact size).
static void put_u16(ent_link_buf *b, uint16_t v) {
    b->data[b->len++] = (uint8_t)v;
    b->data[b->len++] = (uint8_t)(v >> 8);
}
static void put_u32(ent_link_buf *b, uint32_t v) {
    for (int i = 0; i < 4; i++) b->data[b->len++] = (uint8_t)(v >> (8 * i));
}
static void put_u64(ent_link_buf *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b->data[b->len++] = (uint8_t)(v >> (8 * i));
}
static void put_f64(ent_link_buf *b, double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    put_u64(b, u);
}
static void put_bytes(ent_link_buf *b, const void *p, size_t n) {
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
}
static void put_str(ent_link_buf *b, const char *s, size_t n) {
    put_u16(b, (uint16_t)n);
    put_bytes(b, s, n);
}

// ---------------------------------------------------------------------------
// bounded little-endian reading: past the end, a reader reads zeros and
// remembers it, so a parse reads every field and checks `overrun` once

typedef struct {
    const uint8_t *p;
    size_t len, pos;
    int overrun;
} reader;

static int rd_take(reader *r, size_t n, const uint8_t **out) {
    if (r->overrun || n > r->len - r->pos) {
        r->overrun = 1;
        return -1;
    }
    *out = r->p + r->pos;
    r->pos += n;
    return 0;
}
static uint64_t rd_le(reader *r, size_t n) {
    const uint8_t *q;
    if (rd_take(r, n, &q) != 0) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)q[i] << (8 * i);
    return v;
}
static uint16_t rd_u16(reader *r) { return (uint16_t)rd_le(r, 2); }
static uint32_t rd_u32(reader *r) { return (uint32_t)rd_le(r, 4); }
static uint64_t rd_u64(reader *r) { return rd_le(r, 8); }
static double rd_f64(reader *r) {
    uint64_t u = rd_le(r, 8);
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

// A length-prefixed string into dst (max bytes + NUL): refuses a length over
// max or a NUL inside before copying.
static int rd_str(reader *r, char *dst, size_t max, const char *field, char *why) {
    size_t n = rd_u16(r);
    if (r->overrun) return WHY("%s: the payload ends inside its length", field);
    if (n > max) return WHY("%s: %zu bytes, the limit is %zu", field, n, max);
    const uint8_t *q;
    if (rd_take(r, n, &q) != 0)
        return WHY("%s: %zu bytes declared, %zu left in the payload", field, n, r->len - (r->pos));
    const uint8_t *nul = memchr(q, 0, n);
    if (nul != NULL) return WHY("%s: a NUL byte at offset %zu", field, (size_t)(nul - q));
    memcpy(dst, q, n);
    dst[n] = '\0';
    return 0;
}

// ---------------------------------------------------------------------------
// field checks, shared by encoders and decoders

static int finite_in(double v, double hi) { return isfinite(v) && v >= 0 && v <= hi; }

// A string of the struct (encoders: must be NUL-terminated within cap).
static int str_len(const char *s, size_t max, const char *field, size_t *n, char *why) {
    *n = strnlen(s, max + 1);
    if (*n > max) return WHY("%s: longer than %zu bytes (or not NUL-terminated)", field, max);
    return 0;
}

static int check_site_name(const char *name, char *why) {
    size_t n;
    if (str_len(name, ENT_LINK_NAME_MAX, "site name", &n, why) != 0) return -1;
    if (n == 0) return WHY("site name: empty");
    if (name[0] == '.') return WHY("site name: '%s' starts with '.'", name);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return WHY("site name: byte 0x%02x at offset %zu (allowed: A-Z a-z 0-9 . _ -)", c,
                       i);
    }
    return 0;
}

int ent_link_name_ok(const char *name) {
    char why[256];
    return check_site_name(name, why) == 0;
}

static int check_text(const char *text, char *why) {
    size_t n;
    if (str_len(text, ENT_LINK_TEXT_MAX, "text", &n, why) != 0) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c == 0x7f)
            return WHY("text: control byte 0x%02x at offset %zu", c, i);
    }
    return 0;
}

void link_text_sanitize(char *dst, size_t cap, const char *src) {
    if (cap == 0) return;
    size_t n = 0;
    for (; src[n] != '\0' && n < ENT_LINK_TEXT_MAX && n + 1 < cap; n++) {
        unsigned char c = (unsigned char)src[n];
        dst[n] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    dst[n] = '\0';
}

static int check_rate(double v, const char *field, char *why) {
    if (!finite_in(v, ENT_LINK_RATE_MAX))
        return WHY("%s: %g is not a finite number in [0, %g]", field, v, ENT_LINK_RATE_MAX);
    return 0;
}

static int check_hello(const ent_link_hello *m, char *why) {
    if (m->max_version < 1) return WHY("max_version: 0 (versions start at 1)");
    if (check_site_name(m->name, why) != 0) return -1;
    if (m->dp_size < 1 || m->dp_size > ENT_LINK_RANKS_MAX || m->tp_size < 1 ||
        m->tp_size > ENT_LINK_RANKS_MAX ||
        (uint64_t)m->dp_size * m->tp_size > ENT_LINK_RANKS_MAX)
        return WHY("dp_size %u x tp_size %u: each and their product must be in 1..%u",
                   m->dp_size, m->tp_size, ENT_LINK_RANKS_MAX);
    if (m->tokens_per_step < 1 || m->tokens_per_step > ENT_LINK_ROUND_MAX)
        return WHY("tokens_per_step: %llu, not in 1..%llu", (unsigned long long)m->tokens_per_step,
                   (unsigned long long)ENT_LINK_ROUND_MAX);
    return check_rate(m->tokens_per_s, "tokens_per_s", why);
}

static int check_welcome(uint32_t site, const ent_link_welcome *m, char *why) {
    if (site == 0) return WHY("site id 0 (WELCOME assigns an id >= 1)");
    if (m->inner_steps < 1 || m->inner_steps > ENT_LINK_INNER_STEPS_MAX)
        return WHY("inner_steps: %u, not in 1..%u", m->inner_steps, ENT_LINK_INNER_STEPS_MAX);
    if (!finite_in(m->round_seconds, ENT_LINK_ROUND_SECONDS_MAX))
        return WHY("round_seconds: %g is not a finite number in [0, %g]", m->round_seconds,
                   ENT_LINK_ROUND_SECONDS_MAX);
    if (m->heartbeat_ms < ENT_LINK_HEARTBEAT_MS_MIN || m->heartbeat_ms > ENT_LINK_HEARTBEAT_MS_MAX)
        return WHY("heartbeat_ms: %u, not in %u..%u", m->heartbeat_ms, ENT_LINK_HEARTBEAT_MS_MIN,
                   ENT_LINK_HEARTBEAT_MS_MAX);
    if (m->codec >= ENT_LINK_CODEC_END)
        return WHY("codec: %u is no codec (0..%d)", m->codec, ENT_LINK_CODEC_END - 1);
    if (m->chunk_bytes < 1 || m->chunk_bytes > ENT_LINK_CHUNK_DATA_MAX)
        return WHY("chunk_bytes: %u, not in 1..%u", m->chunk_bytes, ENT_LINK_CHUNK_DATA_MAX);
    return 0;
}

static int check_heartbeat(const ent_link_heartbeat *m, char *why) {
    if (m->steps_done > ENT_LINK_INNER_STEPS_MAX)
        return WHY("steps_done: %u, over %u", m->steps_done, ENT_LINK_INNER_STEPS_MAX);
    return check_rate(m->tokens_per_s, "tokens_per_s", why);
}

static int check_round_plan(const ent_link_round_plan *m, char *why) {
    if (m->inner_steps < 1 || m->inner_steps > ENT_LINK_INNER_STEPS_MAX)
        return WHY("inner_steps: %u, not in 1..%u", m->inner_steps, ENT_LINK_INNER_STEPS_MAX);
    if (m->deadline_ms < 1) return WHY("deadline_ms: 0");
    return 0;
}

static int check_chunk(const ent_link_chunk *m, char *why) {
    if (m->count < 1 || m->count > ENT_LINK_CHUNKS_MAX)
        return WHY("chunk count %u, not in 1..%u", m->count, ENT_LINK_CHUNKS_MAX);
    if (m->index >= m->count) return WHY("chunk index %u of %u chunks", m->index, m->count);
    if (m->total < 1 || m->total > ENT_LINK_PARAMS_MAX)
        return WHY("total %llu parameters, not in 1..%llu", (unsigned long long)m->total,
                   (unsigned long long)ENT_LINK_PARAMS_MAX);
    if (m->length < 1 || m->offset >= m->total || m->length > m->total - m->offset)
        return WHY("parameters [%llu, +%llu) are not a non-empty range inside the %llu of the "
                   "table",
                   (unsigned long long)m->offset, (unsigned long long)m->length,
                   (unsigned long long)m->total);
    if (m->codec >= ENT_LINK_CODEC_END)
        return WHY("codec: %u is no codec (0..%d)", m->codec, ENT_LINK_CODEC_END - 1);
    if (m->tokens > ENT_LINK_ROUND_MAX)
        return WHY("tokens: %llu, over %llu", (unsigned long long)m->tokens,
                   (unsigned long long)ENT_LINK_ROUND_MAX);
    if (m->data_len < 1 || m->data_len > ENT_LINK_CHUNK_DATA_MAX)
        return WHY("%zu bytes of data, not in 1..%u", m->data_len, ENT_LINK_CHUNK_DATA_MAX);
    if (m->data == NULL) return WHY("no data");
    return 0;
}

static int check_reason(int type, const ent_link_reason *m, char *why) {
    int end = type == ENT_LINK_LEAVE ? ENT_LINK_LEAVE_END : ENT_LINK_ERR_END;
    if (m->code < 1 || m->code >= end)
        return WHY("%s code %u is unknown (1..%d)", type == ENT_LINK_LEAVE ? "leave" : "error",
                   m->code, end - 1);
    return check_text(m->text, why);
}

// ---------------------------------------------------------------------------
// the header

static uint16_t le16_at(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32_at(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64_at(const uint8_t *p) {
    return (uint64_t)le32_at(p) | (uint64_t)le32_at(p + 4) << 32;
}

ent_status ent_link_decode_header(const void *msg, size_t len, const char *peer,
                                  ent_link_header *out) {
    const uint8_t *p = msg;
    const char *what = "message";
    if (msg == NULL || len < 6)
        return decode_fail(peer, what, "%zu bytes, shorter than the %d-byte header", len,
                           ENT_LINK_HEADER_BYTES);
    uint32_t magic = le32_at(p);
    if (magic != ENT_LINK_MAGIC)
        return decode_fail(peer, what,
                           "bad magic 0x%08x (expected 0x%08x, \"ENTL\"): not an Entente link "
                           "message",
                           magic, ENT_LINK_MAGIC);
    uint16_t version = le16_at(p + 4);
    if (version != ENT_LINK_VERSION)
        return decode_fail(peer, what,
                           "protocol version %u; this build speaks version %d only", version,
                           ENT_LINK_VERSION);
    if (len < ENT_LINK_HEADER_BYTES)
        return decode_fail(peer, what, "%zu bytes, shorter than the %d-byte header", len,
                           ENT_LINK_HEADER_BYTES);
    uint32_t hcrc = le32_at(p + 32), hcrc_want = ent_link_crc32c(0, p, 32);
    if (hcrc != hcrc_want)
        return decode_fail(peer, what, "header checksum 0x%08x, its bytes give 0x%08x (damaged)",
                           hcrc, hcrc_want);
    ent_link_header h = {
        .version = version,
        .type = le16_at(p + 6),
        .flags = le32_at(p + 8),
        .site = le32_at(p + 12),
        .round = le64_at(p + 16),
        .payload_len = le32_at(p + 24),
        .payload_crc = le32_at(p + 28),
    };
    if (h.type < ENT_LINK_HELLO || h.type >= ENT_LINK_TYPE_END)
        return decode_fail(peer, what, "unknown message type %u (1..%d)", h.type,
                           ENT_LINK_TYPE_END - 1);
    what = type_names[h.type];
    if (h.flags != 0)
        return decode_fail(peer, what, "flags 0x%08x; version %d defines none", h.flags,
                           ENT_LINK_VERSION);
    if (h.round > ENT_LINK_ROUND_MAX)
        return decode_fail(peer, what, "round %llu, over %llu", (unsigned long long)h.round,
                           (unsigned long long)ENT_LINK_ROUND_MAX);
    if (h.payload_len > ENT_LINK_PAYLOAD_MAX)
        return decode_fail(peer, what, "payload of %u bytes, over the limit of %u", h.payload_len,
                           ENT_LINK_PAYLOAD_MAX);
    if ((size_t)h.payload_len != len - ENT_LINK_HEADER_BYTES)
        return decode_fail(peer, what, "the header declares %u payload bytes, %zu came",
                           h.payload_len, len - ENT_LINK_HEADER_BYTES);
    uint32_t pcrc = ent_link_crc32c(0, p + ENT_LINK_HEADER_BYTES, h.payload_len);
    if (pcrc != h.payload_crc)
        return decode_fail(peer, what,
                           "payload checksum 0x%08x, its %u bytes give 0x%08x (damaged)",
                           h.payload_crc, h.payload_len, pcrc);
    if (out) *out = h;
    return ENT_OK;
}

// Starts a message: reserves header + payload bytes and leaves the header
// to header_end.
static ent_status header_begin(ent_link_buf *out, size_t payload_len) {
    out->len = 0;
    ENT_CHECK(buf_reserve(out, ENT_LINK_HEADER_BYTES + payload_len));
    memset(out->data, 0, ENT_LINK_HEADER_BYTES);
    out->len = ENT_LINK_HEADER_BYTES;
    return ENT_OK;
}

static void header_end(ent_link_buf *out, int type, uint32_t site, uint64_t round) {
    size_t payload_len = out->len - ENT_LINK_HEADER_BYTES, end = out->len;
    out->len = 0;
    put_u32(out, ENT_LINK_MAGIC);
    put_u16(out, ENT_LINK_VERSION);
    put_u16(out, (uint16_t)type);
    put_u32(out, 0); // flags
    put_u32(out, site);
    put_u64(out, round);
    put_u32(out, (uint32_t)payload_len);
    put_u32(out, ent_link_crc32c(0, out->data + ENT_LINK_HEADER_BYTES, payload_len));
    put_u32(out, ent_link_crc32c(0, out->data, 32));
    out->len = end;
}

// The checks every encoder makes before it writes: the header's fields and
// the payload's size (the field checks come from the caller).
static ent_status encode_begin(ent_link_buf *out, int type, uint64_t round, size_t payload_len,
                               int field_check, const char *why) {
    if (out == NULL) return ent_fail(ENT_ERR_USAGE, "link: encoding %s: no buffer",
                                     type_names[type]);
    if (field_check != 0)
        return ent_fail(ENT_ERR_USAGE, "link: cannot encode %s: %s", type_names[type], why);
    if (round > ENT_LINK_ROUND_MAX)
        return ent_fail(ENT_ERR_USAGE, "link: cannot encode %s: round %llu, over %llu",
                        type_names[type], (unsigned long long)round,
                        (unsigned long long)ENT_LINK_ROUND_MAX);
    if (payload_len > ENT_LINK_PAYLOAD_MAX)
        return ent_fail(ENT_ERR_USAGE, "link: cannot encode %s: payload of %zu bytes, over %u",
                        type_names[type], payload_len, ENT_LINK_PAYLOAD_MAX);
    return header_begin(out, payload_len);
}

// The common start of every decoder: the header, then the type.
static ent_status decode_begin(const void *msg, size_t len, const char *peer, int type,
                               ent_link_header *h, reader *r) {
    ENT_CHECK(ent_link_decode_header(msg, len, peer, h));
    if (h->type != type)
        return decode_fail(peer, "message", "expected %s, got %s", type_names[type],
                           type_names[h->type]);
    *r = (reader){.p = (const uint8_t *)msg + ENT_LINK_HEADER_BYTES, .len = h->payload_len};
    return ENT_OK;
}

// The common end: every byte read, none left over, the fields valid.
static ent_status decode_end(const char *peer, int type, const reader *r, int field_check,
                             const char *why) {
    if (field_check != 0) return decode_fail(peer, type_names[type], "%s", why);
    if (r->overrun)
        return decode_fail(peer, type_names[type], "payload of %zu bytes is too short",
                           r->len);
    if (r->pos != r->len)
        return decode_fail(peer, type_names[type], "%zu bytes after the last field",
                           r->len - r->pos);
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// HELLO: u16 max_version, str name, u64 shape_hash, u64 config_hash,
//        u32 dp_size, u32 tp_size, f64 tokens_per_s, u64 tokens_per_step

ent_status ent_link_encode_hello(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_hello *m) {
    char why[WHY_MAX] = "";
    int bad = check_hello(m, why);
    size_t n = bad ? 0 : strlen(m->name);
    ENT_CHECK(encode_begin(out, ENT_LINK_HELLO, round, 2 + 2 + n + 8 + 8 + 4 + 4 + 8 + 8, bad, why));
    put_u16(out, m->max_version);
    put_str(out, m->name, n);
    put_u64(out, m->shape_hash);
    put_u64(out, m->config_hash);
    put_u32(out, m->dp_size);
    put_u32(out, m->tp_size);
    put_f64(out, m->tokens_per_s);
    put_u64(out, m->tokens_per_step);
    header_end(out, ENT_LINK_HELLO, site, round);
    return ENT_OK;
}

ent_status ent_link_decode_hello(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_hello *m) {
    ent_link_header h = {0};
    reader r = {0};
    ENT_CHECK(decode_begin(msg, len, peer, ENT_LINK_HELLO, &h, &r));
    char why[WHY_MAX] = "";
    ent_link_hello v = {0};
    v.max_version = rd_u16(&r);
    int bad = rd_str(&r, v.name, ENT_LINK_NAME_MAX, "site name", why);
    v.shape_hash = rd_u64(&r);
    v.config_hash = rd_u64(&r);
    v.dp_size = rd_u32(&r);
    v.tp_size = rd_u32(&r);
    v.tokens_per_s = rd_f64(&r);
    v.tokens_per_step = rd_u64(&r);
    if (!bad && !r.overrun) bad = check_hello(&v, why);
    ENT_CHECK(decode_end(peer, ENT_LINK_HELLO, &r, bad, why));
    if (hdr) *hdr = h;
    *m = v;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// WELCOME: u64 anchor_hash, u32 inner_steps, f64 round_seconds,
//          u32 heartbeat_ms, u16 codec, u32 chunk_bytes

enum { WELCOME_BYTES = 8 + 4 + 8 + 4 + 2 + 4 };

ent_status ent_link_encode_welcome(ent_link_buf *out, uint32_t site, uint64_t round,
                                   const ent_link_welcome *m) {
    char why[WHY_MAX] = "";
    int bad = check_welcome(site, m, why);
    ENT_CHECK(encode_begin(out, ENT_LINK_WELCOME, round, WELCOME_BYTES, bad, why));
    put_u64(out, m->anchor_hash);
    put_u32(out, m->inner_steps);
    put_f64(out, m->round_seconds);
    put_u32(out, m->heartbeat_ms);
    put_u16(out, m->codec);
    put_u32(out, m->chunk_bytes);
    header_end(out, ENT_LINK_WELCOME, site, round);
    return ENT_OK;
}

ent_status ent_link_decode_welcome(const void *msg, size_t len, const char *peer,
                                   ent_link_header *hdr, ent_link_welcome *m) {
    ent_link_header h = {0};
    reader r = {0};
    ENT_CHECK(decode_begin(msg, len, peer, ENT_LINK_WELCOME, &h, &r));
    char why[WHY_MAX] = "";
    ent_link_welcome v = {0};
    v.anchor_hash = rd_u64(&r);
    v.inner_steps = rd_u32(&r);
    v.round_seconds = rd_f64(&r);
    v.heartbeat_ms = rd_u32(&r);
    v.codec = rd_u16(&r);
    v.chunk_bytes = rd_u32(&r);
    int bad = r.overrun ? 0 : check_welcome(h.site, &v, why);
    ENT_CHECK(decode_end(peer, ENT_LINK_WELCOME, &r, bad, why));
    if (hdr) *hdr = h;
    *m = v;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// HEARTBEAT: u64 time_ns, u64 echo_ns, u32 steps_done, f64 tokens_per_s

enum { HEARTBEAT_BYTES = 8 + 8 + 4 + 8 };

ent_status ent_link_encode_heartbeat(ent_link_buf *out, uint32_t site, uint64_t round,
                                     const ent_link_heartbeat *m) {
    char why[WHY_MAX] = "";
    int bad = check_heartbeat(m, why);
    ENT_CHECK(encode_begin(out, ENT_LINK_HEARTBEAT, round, HEARTBEAT_BYTES, bad, why));
    put_u64(out, m->time_ns);
    put_u64(out, m->echo_ns);
    put_u32(out, m->steps_done);
    put_f64(out, m->tokens_per_s);
    header_end(out, ENT_LINK_HEARTBEAT, site, round);
    return ENT_OK;
}

ent_status ent_link_decode_heartbeat(const void *msg, size_t len, const char *peer,
                                     ent_link_header *hdr, ent_link_heartbeat *m) {
    ent_link_header h = {0};
    reader r = {0};
    ENT_CHECK(decode_begin(msg, len, peer, ENT_LINK_HEARTBEAT, &h, &r));
    char why[WHY_MAX] = "";
    ent_link_heartbeat v = {0};
    v.time_ns = rd_u64(&r);
    v.echo_ns = rd_u64(&r);
    v.steps_done = rd_u32(&r);
    v.tokens_per_s = rd_f64(&r);
    int bad = r.overrun ? 0 : check_heartbeat(&v, why);
    ENT_CHECK(decode_end(peer, ENT_LINK_HEARTBEAT, &r, bad, why));
    if (hdr) *hdr = h;
    *m = v;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// ROUND_PLAN: u32 inner_steps, u32 deadline_ms

enum { ROUND_PLAN_BYTES = 4 + 4 };

ent_status ent_link_encode_round_plan(ent_link_buf *out, uint32_t site, uint64_t round,
                                      const ent_link_round_plan *m) {
    char why[WHY_MAX] = "";
    int bad = check_round_plan(m, why);
    ENT_CHECK(encode_begin(out, ENT_LINK_ROUND_PLAN, round, ROUND_PLAN_BYTES, bad, why));
    put_u32(out, m->inner_steps);
    put_u32(out, m->deadline_ms);
    header_end(out, ENT_LINK_ROUND_PLAN, site, round);
    return ENT_OK;
}

ent_status ent_link_decode_round_plan(const void *msg, size_t len, const char *peer,
                                      ent_link_header *hdr, ent_link_round_plan *m) {
    ent_link_header h = {0};
    reader r = {0};
    ENT_CHECK(decode_begin(msg, len, peer, ENT_LINK_ROUND_PLAN, &h, &r));
    char why[WHY_MAX] = "";
    ent_link_round_plan v = {0};
    v.inner_steps = rd_u32(&r);
    v.deadline_ms = rd_u32(&r);
    int bad = r.overrun ? 0 : check_round_plan(&v, why);
    ENT_CHECK(decode_end(peer, ENT_LINK_ROUND_PLAN, &r, bad, why));
    if (hdr) *hdr = h;
    *m = v;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// DELTA, UPDATE and STATE: u32 index, u32 count, u64 total, u64 offset, u64 length,
//                   u16 codec, u64 anchor_hash, u64 tokens, then the data
//                   (the rest of the payload)

_Static_assert(ENT_LINK_CHUNK_FIXED_BYTES == 4 + 4 + 8 + 8 + 8 + 2 + 8 + 8,
               "the chunk layout and ENT_LINK_CHUNK_FIXED_BYTES disagree");

static ent_status encode_chunk(ent_link_buf *out, int type, uint32_t site, uint64_t round,
                               const ent_link_chunk *m) {
    char why[WHY_MAX] = "";
    int bad = check_chunk(m, why);
    size_t payload = ENT_LINK_CHUNK_FIXED_BYTES + (bad ? 0 : m->data_len);
    ENT_CHECK(encode_begin(out, type, round, payload, bad, why));
    put_u32(out, m->index);
    put_u32(out, m->count);
    put_u64(out, m->total);
    put_u64(out, m->offset);
    put_u64(out, m->length);
    put_u16(out, m->codec);
    put_u64(out, m->anchor_hash);
    put_u64(out, m->tokens);
    put_bytes(out, m->data, m->data_len);
    header_end(out, type, site, round);
    return ENT_OK;
}

static ent_status decode_chunk(const void *msg, size_t len, const char *peer, int type,
                               ent_link_header *hdr, ent_link_chunk *m) {
    ent_link_header h = {0};
    reader r = {0};
    ENT_CHECK(decode_begin(msg, len, peer, type, &h, &r));
    char why[WHY_MAX] = "";
    ent_link_chunk v = {0};
    v.index = rd_u32(&r);
    v.count = rd_u32(&r);
    v.total = rd_u64(&r);
    v.offset = rd_u64(&r);
    v.length = rd_u64(&r);
    v.codec = rd_u16(&r);
    v.anchor_hash = rd_u64(&r);
    v.tokens = rd_u64(&r);
    if (!r.overrun) {
        v.data_len = r.len - r.pos;
        rd_take(&r, v.data_len, &v.data);
    }
    int bad = r.overrun ? 0 : check_chunk(&v, why);
    ENT_CHECK(decode_end(peer, type, &r, bad, why));
    if (hdr) *hdr = h;
    *m = v;
    return ENT_OK;
}

ent_status ent_link_encode_delta(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_chunk *m) {
    return encode_chunk(out, ENT_LINK_DELTA, site, round, m);
}
ent_status ent_link_decode_delta(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_chunk *m) {
    return decode_chunk(msg, len, peer, ENT_LINK_DELTA, hdr, m);
}
ent_status ent_link_encode_update(ent_link_buf *out, uint32_t site, uint64_t round,
                                  const ent_link_chunk *m) {
    return encode_chunk(out, ENT_LINK_UPDATE, site, round, m);
}
ent_status ent_link_decode_update(const void *msg, size_t len, const char *peer,
                                  ent_link_header *hdr, ent_link_chunk *m) {
    return decode_chunk(msg, len, peer, ENT_LINK_UPDATE, hdr, m);
}

ent_status ent_link_encode_state(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_chunk *m) {
    return encode_chunk(out, ENT_LINK_STATE, site, round, m);
}
ent_status ent_link_decode_state(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_chunk *m) {
    return decode_chunk(msg, len, peer, ENT_LINK_STATE, hdr, m);
}

// ---------------------------------------------------------------------------
// LEDGER: the text, the whole payload (1..ENT_LINK_LEDGER_MAX bytes, none
// below 0x20 nor 0x7f: no NUL, newline or terminal escape)

static int check_ledger_text(const char *text, size_t len, char *why) {
    if (len < 1 || len > ENT_LINK_LEDGER_MAX)
        return WHY("text: %zu bytes, not in 1..%u", len, ENT_LINK_LEDGER_MAX);
    if (text == NULL) return WHY("text: none");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c == 0x7f) return WHY("text: control byte 0x%02x at offset %zu", c, i);
    }
    return 0;
}

ent_status ent_link_encode_ledger(ent_link_buf *out, uint32_t site, uint64_t round,
                                  const ent_link_ledger *m) {
    char why[WHY_MAX] = "";
    int bad = check_ledger_text(m->text, m->len, why);
    ENT_CHECK(encode_begin(out, ENT_LINK_LEDGER, round, bad ? 0 : m->len, bad, why));
    put_bytes(out, m->text, m->len);
    header_end(out, ENT_LINK_LEDGER, site, round);
    return ENT_OK;
}

ent_status ent_link_decode_ledger(const void *msg, size_t len, const char *peer,
                                  ent_link_header *hdr, ent_link_ledger *m) {
    ent_link_header h = {0};
    reader r = {0};
    ENT_CHECK(decode_begin(msg, len, peer, ENT_LINK_LEDGER, &h, &r));
    char why[WHY_MAX] = "";
    ent_link_ledger v = {.len = r.len};
    const uint8_t *q = NULL;
    rd_take(&r, v.len, &q);
    v.text = (const char *)q;
    int bad = r.overrun ? 0 : check_ledger_text(v.text, v.len, why);
    ENT_CHECK(decode_end(peer, ENT_LINK_LEDGER, &r, bad, why));
    if (hdr) *hdr = h;
    *m = v;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// LEAVE and ERROR: u16 code, str text

static ent_status encode_reason(ent_link_buf *out, int type, uint32_t site, uint64_t round,
                                const ent_link_reason *m) {
    char why[WHY_MAX] = "";
    int bad = check_reason(type, m, why);
    size_t n = bad ? 0 : strlen(m->text);
    ENT_CHECK(encode_begin(out, type, round, 2 + 2 + n, bad, why));
    put_u16(out, m->code);
    put_str(out, m->text, n);
    header_end(out, type, site, round);
    return ENT_OK;
}

static ent_status decode_reason(const void *msg, size_t len, const char *peer, int type,
                                ent_link_header *hdr, ent_link_reason *m) {
    ent_link_header h = {0};
    reader r = {0};
    ENT_CHECK(decode_begin(msg, len, peer, type, &h, &r));
    char why[WHY_MAX] = "";
    ent_link_reason v;
    v.code = rd_u16(&r);
    int bad = rd_str(&r, v.text, ENT_LINK_TEXT_MAX, "text", why);
    if (!bad && !r.overrun) bad = check_reason(type, &v, why);
    ENT_CHECK(decode_end(peer, type, &r, bad, why));
    if (hdr) *hdr = h;
    *m = v;
    return ENT_OK;
}

ent_status ent_link_encode_leave(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_reason *m) {
    return encode_reason(out, ENT_LINK_LEAVE, site, round, m);
}
ent_status ent_link_decode_leave(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_reason *m) {
    return decode_reason(msg, len, peer, ENT_LINK_LEAVE, hdr, m);
}
ent_status ent_link_encode_error(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_reason *m) {
    return encode_reason(out, ENT_LINK_ERROR, site, round, m);
}
ent_status ent_link_decode_error(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_reason *m) {
    return decode_reason(msg, len, peer, ENT_LINK_ERROR, hdr, m);
}
