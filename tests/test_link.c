// test_link.c: the coalition link (comm/link_*.c): wire protocol v1 and the
// ZeroMQ endpoints.
//
//  - CRC32C against published vectors (the CRC catalogue's check value, RFC
//    3720's iSCSI vectors) and against a bit-at-a-time reference on random
//    bytes of every length and alignment, both the instruction and the table
//    form;
//  - every message type encoded from random contents and decoded back field
//    for field, re-encoding to the same bytes; encoders refusing what a
//    decoder would refuse, naming the field;
//  - corruption as an attacker would try it, for every type: every byte set
//    to several values, bursts of 2-4 bytes, truncation at every length and
//    random extensions each fail with a message naming the peer; then the
//    same with both checksums (and the length) recomputed, so the field
//    checks themselves meet the damage: each message fails with a message,
//    or decodes to content that re-encodes to exactly those bytes (so no
//    byte escapes every check);
//  - a ROUTER on an ephemeral loopback port and two DEALERs exchanging HELLO,
//    WELCOME, ROUND_PLAN, chunked DELTAs and UPDATEs and HEARTBEATs, while a
//    third peer sends garbage (wrong frame counts, a short header frame, a
//    wrong magic, another version, a lying length, a frame over the size
//    limit): each refused with a logged reason (and an ERROR answer), the good
//    peers served throughout.
// Contents are fresh random values on every run (ENT_TEST_SEED=... reproduces one).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "ent_comm.h"
#include "link_impl.h"
#include "ref.h"

static const char *const PEER = "fuzz-peer 10.0.0.9";

static uint64_t rand_u64(void) {
    uint64_t hi = (uint64_t)test_rand_int(0, 0xffffffffLL);
    return hi << 32 | (uint64_t)test_rand_int(0, 0xffffffffLL);
}
static uint32_t rand_u32(uint32_t lo, uint32_t hi) { return (uint32_t)test_rand_int(lo, hi); }

// A finite double in [0, hi]: sometimes an edge, mostly spread over magnitudes.
static double rand_rate(double hi) {
    switch (test_rand_int(0, 5)) {
    case 0: return 0.0;
    case 1: return hi;
    default: return hi * pow(test_uniform(), 1 + 20 * test_uniform());
    }
}

// ---------------------------------------------------------------------------
// CRC32C

static uint32_t crc32c_bitwise(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

static void assert_crc(const void *p, size_t n, uint32_t want) {
    assert_int_equal(ent_link_crc32c(0, p, n), want);
    assert_int_equal(link_crc32c_portable(0, p, n), want);
    assert_int_equal(crc32c_bitwise(p, n), want);
}

static void test_crc32c_vectors(void **state) {
    (void)state;
    // the CRC catalogue's check value of CRC-32/ISCSI
    assert_crc("123456789", 9, 0xe3069283u);
    assert_crc("", 0, 0);
    // RFC 3720, appendix B.4
    uint8_t b[48];
    memset(b, 0, 32);
    assert_crc(b, 32, 0x8a9136aau);
    memset(b, 0xff, 32);
    assert_crc(b, 32, 0x62a8ab43u);
    for (int i = 0; i < 32; i++) b[i] = (uint8_t)i;
    assert_crc(b, 32, 0x46dd794eu);
    for (int i = 0; i < 32; i++) b[i] = (uint8_t)(31 - i);
    assert_crc(b, 32, 0x113fdb5cu);
    static const uint8_t pdu[48] = {0x01, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                    0x14, 0,    0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0x14, 0, 0, 0, 0x18,
                                    0x28, 0,    0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0};
    assert_crc(pdu, 48, 0xd9963a56u);
}

static void test_crc32c_random(void **state) {
    (void)state;
    test_reseed(1);
    enum { MAX = 4200 };
    uint8_t *buf = malloc(MAX + 8);
    for (size_t i = 0; i < MAX + 8; i++) buf[i] = (uint8_t)rand_u32(0, 255);
    for (size_t n = 0; n <= MAX; n += (n < 80 ? 1 : (size_t)test_rand_int(1, 97))) {
        size_t align = (size_t)test_rand_int(0, 7);
        const uint8_t *p = buf + align;
        uint32_t want = crc32c_bitwise(p, n);
        assert_int_equal(ent_link_crc32c(0, p, n), want);
        assert_int_equal(link_crc32c_portable(0, p, n), want);
        // continuing over a split gives the same value
        size_t cut = n ? (size_t)test_rand_int(0, (int64_t)n) : 0;
        assert_int_equal(ent_link_crc32c(ent_link_crc32c(0, p, cut), p + cut, n - cut), want);
        assert_int_equal(link_crc32c_portable(link_crc32c_portable(0, p, cut), p + cut, n - cut),
                         want);
        // any single flipped bit changes it
        if (n) {
            size_t bit = (size_t)test_rand_int(0, (int64_t)(8 * n - 1));
            buf[align + bit / 8] ^= (uint8_t)(1u << (bit % 8));
            assert_int_not_equal(ent_link_crc32c(0, p, n), want);
            buf[align + bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
    }
    free(buf);
}

// ---------------------------------------------------------------------------
// every type through one interface

typedef union {
    ent_link_hello hello;
    ent_link_welcome welcome;
    ent_link_heartbeat heartbeat;
    ent_link_round_plan plan;
    ent_link_chunk chunk;
    ent_link_reason reason;
    ent_link_ledger ledger;
} any_msg;

static ent_status encode_any(int type, ent_link_buf *b, uint32_t site, uint64_t round,
                             const any_msg *m) {
    switch (type) {
    case ENT_LINK_HELLO: return ent_link_encode_hello(b, site, round, &m->hello);
    case ENT_LINK_WELCOME: return ent_link_encode_welcome(b, site, round, &m->welcome);
    case ENT_LINK_HEARTBEAT: return ent_link_encode_heartbeat(b, site, round, &m->heartbeat);
    case ENT_LINK_ROUND_PLAN: return ent_link_encode_round_plan(b, site, round, &m->plan);
    case ENT_LINK_DELTA: return ent_link_encode_delta(b, site, round, &m->chunk);
    case ENT_LINK_UPDATE: return ent_link_encode_update(b, site, round, &m->chunk);
    case ENT_LINK_STATE: return ent_link_encode_state(b, site, round, &m->chunk);
    case ENT_LINK_LEAVE: return ent_link_encode_leave(b, site, round, &m->reason);
    case ENT_LINK_ERROR: return ent_link_encode_error(b, site, round, &m->reason);
    case ENT_LINK_LEDGER: return ent_link_encode_ledger(b, site, round, &m->ledger);
    }
    fail_msg("no type %d", type);
    return ENT_ERR_INTERNAL;
}

static ent_status decode_any(int type, const void *p, size_t n, const char *peer,
                             ent_link_header *h, any_msg *m) {
    switch (type) {
    case ENT_LINK_HELLO: return ent_link_decode_hello(p, n, peer, h, &m->hello);
    case ENT_LINK_WELCOME: return ent_link_decode_welcome(p, n, peer, h, &m->welcome);
    case ENT_LINK_HEARTBEAT: return ent_link_decode_heartbeat(p, n, peer, h, &m->heartbeat);
    case ENT_LINK_ROUND_PLAN: return ent_link_decode_round_plan(p, n, peer, h, &m->plan);
    case ENT_LINK_DELTA: return ent_link_decode_delta(p, n, peer, h, &m->chunk);
    case ENT_LINK_UPDATE: return ent_link_decode_update(p, n, peer, h, &m->chunk);
    case ENT_LINK_STATE: return ent_link_decode_state(p, n, peer, h, &m->chunk);
    case ENT_LINK_LEAVE: return ent_link_decode_leave(p, n, peer, h, &m->reason);
    case ENT_LINK_ERROR: return ent_link_decode_error(p, n, peer, h, &m->reason);
    case ENT_LINK_LEDGER: return ent_link_decode_ledger(p, n, peer, h, &m->ledger);
    }
    fail_msg("no type %d", type);
    return ENT_ERR_INTERNAL;
}

static int same_double(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static void assert_same(int type, const any_msg *a, const any_msg *b) {
    switch (type) {
    case ENT_LINK_HELLO:
        assert_int_equal(a->hello.max_version, b->hello.max_version);
        assert_string_equal(a->hello.name, b->hello.name);
        assert_true(a->hello.shape_hash == b->hello.shape_hash);
        assert_true(a->hello.config_hash == b->hello.config_hash);
        assert_int_equal(a->hello.dp_size, b->hello.dp_size);
        assert_int_equal(a->hello.tp_size, b->hello.tp_size);
        assert_true(same_double(a->hello.tokens_per_s, b->hello.tokens_per_s));
        assert_true(a->hello.tokens_per_step == b->hello.tokens_per_step);
        break;
    case ENT_LINK_WELCOME:
        assert_true(a->welcome.anchor_hash == b->welcome.anchor_hash);
        assert_int_equal(a->welcome.inner_steps, b->welcome.inner_steps);
        assert_true(same_double(a->welcome.round_seconds, b->welcome.round_seconds));
        assert_int_equal(a->welcome.heartbeat_ms, b->welcome.heartbeat_ms);
        assert_int_equal(a->welcome.codec, b->welcome.codec);
        assert_int_equal(a->welcome.chunk_bytes, b->welcome.chunk_bytes);
        break;
    case ENT_LINK_HEARTBEAT:
        assert_true(a->heartbeat.time_ns == b->heartbeat.time_ns);
        assert_true(a->heartbeat.echo_ns == b->heartbeat.echo_ns);
        assert_int_equal(a->heartbeat.steps_done, b->heartbeat.steps_done);
        assert_true(same_double(a->heartbeat.tokens_per_s, b->heartbeat.tokens_per_s));
        break;
    case ENT_LINK_ROUND_PLAN:
        assert_int_equal(a->plan.inner_steps, b->plan.inner_steps);
        assert_int_equal(a->plan.deadline_ms, b->plan.deadline_ms);
        break;
    case ENT_LINK_DELTA:
    case ENT_LINK_UPDATE:
    case ENT_LINK_STATE:
        assert_int_equal(a->chunk.index, b->chunk.index);
        assert_int_equal(a->chunk.count, b->chunk.count);
        assert_true(a->chunk.total == b->chunk.total);
        assert_true(a->chunk.offset == b->chunk.offset);
        assert_true(a->chunk.length == b->chunk.length);
        assert_int_equal(a->chunk.codec, b->chunk.codec);
        assert_true(a->chunk.anchor_hash == b->chunk.anchor_hash);
        assert_true(a->chunk.tokens == b->chunk.tokens);
        assert_int_equal(a->chunk.data_len, b->chunk.data_len);
        assert_memory_equal(a->chunk.data, b->chunk.data, a->chunk.data_len);
        break;
    case ENT_LINK_LEAVE:
    case ENT_LINK_ERROR:
        assert_int_equal(a->reason.code, b->reason.code);
        assert_string_equal(a->reason.text, b->reason.text);
        break;
    case ENT_LINK_LEDGER:
        assert_int_equal(a->ledger.len, b->ledger.len);
        assert_memory_equal(a->ledger.text, b->ledger.text, a->ledger.len);
        break;
    default: fail_msg("no type %d", type);
    }
}

static const char NAME_CHARS[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";

// Random valid contents of a type; chunk data go to data (room for max_data).
static void random_msg(int type, any_msg *m, uint8_t *data, size_t max_data) {
    memset(m, 0, sizeof *m);
    switch (type) {
    case ENT_LINK_HELLO: {
        ent_link_hello *h = &m->hello;
        h->max_version = (uint16_t)rand_u32(1, 65535);
        size_t n = test_rand_int(0, 3) == 0 ? ENT_LINK_NAME_MAX : (size_t)test_rand_int(1, 20);
        for (size_t i = 0; i < n; i++)
            h->name[i] = NAME_CHARS[test_rand_int(0, (int64_t)strlen(NAME_CHARS) - 1)];
        if (h->name[0] == '.') h->name[0] = 's';
        h->shape_hash = rand_u64();
        h->config_hash = rand_u64();
        h->dp_size = rand_u32(1, 1024);
        h->tp_size = rand_u32(1, ENT_LINK_RANKS_MAX / h->dp_size);
        h->tokens_per_s = rand_rate(ENT_LINK_RATE_MAX);
        h->tokens_per_step = 1 + rand_u64() % ENT_LINK_ROUND_MAX;
        break;
    }
    case ENT_LINK_WELCOME:
        m->welcome = (ent_link_welcome){
            .anchor_hash = rand_u64(),
            .inner_steps = rand_u32(1, ENT_LINK_INNER_STEPS_MAX),
            .round_seconds = rand_rate(ENT_LINK_ROUND_SECONDS_MAX),
            .heartbeat_ms = rand_u32(ENT_LINK_HEARTBEAT_MS_MIN, ENT_LINK_HEARTBEAT_MS_MAX),
            .codec = (uint16_t)rand_u32(0, ENT_LINK_CODEC_END - 1),
            .chunk_bytes = rand_u32(1, ENT_LINK_CHUNK_DATA_MAX),
        };
        break;
    case ENT_LINK_HEARTBEAT:
        m->heartbeat = (ent_link_heartbeat){
            .time_ns = rand_u64(),
            .echo_ns = rand_u64(),
            .steps_done = rand_u32(0, ENT_LINK_INNER_STEPS_MAX),
            .tokens_per_s = rand_rate(ENT_LINK_RATE_MAX),
        };
        break;
    case ENT_LINK_ROUND_PLAN:
        m->plan = (ent_link_round_plan){.inner_steps = rand_u32(1, ENT_LINK_INNER_STEPS_MAX),
                                        .deadline_ms = rand_u32(1, 0xffffffffu)};
        break;
    case ENT_LINK_DELTA:
    case ENT_LINK_UPDATE:
    case ENT_LINK_STATE: {
        ent_link_chunk *c = &m->chunk;
        c->count = rand_u32(1, test_rand_int(0, 1) ? 16 : ENT_LINK_CHUNKS_MAX);
        c->index = rand_u32(0, c->count - 1);
        c->total = 1 + rand_u64() % ENT_LINK_PARAMS_MAX;
        c->offset = rand_u64() % c->total;
        c->length = 1 + rand_u64() % (c->total - c->offset);
        c->codec = (uint16_t)rand_u32(0, ENT_LINK_CODEC_END - 1);
        c->anchor_hash = rand_u64();
        c->tokens = rand_u64() % (ENT_LINK_ROUND_MAX + 1);
        c->data_len = (size_t)test_rand_int(1, (int64_t)max_data);
        for (size_t i = 0; i < c->data_len; i++) data[i] = (uint8_t)rand_u32(0, 255);
        c->data = data;
        break;
    }
    case ENT_LINK_LEAVE:
    case ENT_LINK_ERROR: {
        ent_link_reason *r = &m->reason;
        r->code = (uint16_t)rand_u32(1, (type == ENT_LINK_LEAVE ? ENT_LINK_LEAVE_END
                                                                : ENT_LINK_ERR_END) - 1);
        size_t n = test_rand_int(0, 5) == 0 ? ENT_LINK_TEXT_MAX : (size_t)test_rand_int(0, 40);
        for (size_t i = 0; i < n; i++) r->text[i] = (char)rand_u32(0x20, 0xff);
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)r->text[i] == 0x7f) r->text[i] = 'x';
        break;
    }
    case ENT_LINK_LEDGER: {
        // any text of allowed bytes (the link does not parse the JSON)
        size_t n = (size_t)test_rand_int(1, (int64_t)max_data);
        for (size_t i = 0; i < n; i++) {
            data[i] = (uint8_t)rand_u32(0x20, 0xff);
            if (data[i] == 0x7f) data[i] = '{';
        }
        m->ledger = (ent_link_ledger){.text = (const char *)data, .len = n};
        break;
    }
    default: fail_msg("no type %d", type);
    }
}

static uint32_t rand_site(void) {
    return test_rand_int(0, 3) ? rand_u32(1, 1000) : rand_u32(0, 0xffffffffu);
}
static uint64_t rand_round(void) {
    if (test_rand_int(0, 3)) return (uint64_t)test_rand_int(0, 100000);
    return rand_u64() % (ENT_LINK_ROUND_MAX + 1);
}

// ---------------------------------------------------------------------------
// round trips

static void test_roundtrip(void **state) {
    (void)state;
    test_reseed(2);
    enum { MAX_DATA = 3000 };
    uint8_t *data = malloc(MAX_DATA);
    ent_link_buf b = {0}, b2 = {0};
    for (int type = ENT_LINK_HELLO; type < ENT_LINK_TYPE_END; type++) {
        for (int rep = 0; rep < 300; rep++) {
            any_msg m, d;
            random_msg(type, &m, data, MAX_DATA);
            uint32_t site = rand_site();
            if (type == ENT_LINK_WELCOME && site == 0) site = 1;
            uint64_t round = rand_round();
            if (encode_any(type, &b, site, round, &m) != ENT_OK)
                fail_msg("encoding %s: %s", ent_link_type_name(type), ent_last_error());
            // an exact-size copy: a read past the end is a read past the allocation
            uint8_t *copy = malloc(b.len);
            memcpy(copy, b.data, b.len);
            ent_link_header h;
            if (decode_any(type, copy, b.len, PEER, &h, &d) != ENT_OK)
                fail_msg("decoding %s: %s", ent_link_type_name(type), ent_last_error());
            assert_int_equal(h.version, ENT_LINK_VERSION);
            assert_int_equal(h.type, type);
            assert_int_equal(h.flags, 0);
            assert_int_equal(h.site, site);
            assert_true(h.round == round);
            assert_int_equal(h.payload_len, b.len - ENT_LINK_HEADER_BYTES);
            assert_same(type, &m, &d);
            // the magic is "ENTL" on the wire
            assert_memory_equal(copy, "ENTL", 4);
            // one encoding per content
            assert_int_equal(encode_any(type, &b2, h.site, h.round, &d), ENT_OK);
            assert_int_equal(b2.len, b.len);
            assert_memory_equal(b2.data, copy, b.len);
            // any other type's decoder refuses it, naming both types
            int other = type % (ENT_LINK_TYPE_END - 1) + 1;
            assert_int_equal(decode_any(other, copy, b.len, PEER, NULL, &d), ENT_ERR_INPUT);
            assert_non_null(strstr(ent_last_error(), ent_link_type_name(type)));
            assert_non_null(strstr(ent_last_error(), ent_link_type_name(other)));
            free(copy);
        }
    }
    // a chunk the size of a real one (a quarter of the largest payload)
    size_t big = ENT_LINK_PAYLOAD_MAX / 4;
    uint8_t *bigdata = malloc(big);
    for (size_t i = 0; i < big; i++) bigdata[i] = (uint8_t)(i * 2654435761u >> 13);
    ent_link_chunk c = {.index = 3, .count = 8, .total = 124439808, .offset = 62219904,
                        .length = 15554976, .codec = ENT_LINK_CODEC_INT8, .anchor_hash = 7,
                        .tokens = 1 << 20, .data = bigdata, .data_len = big},
                   d;
    assert_int_equal(ent_link_encode_delta(&b, 2, 9, &c), ENT_OK);
    assert_int_equal(b.len, ENT_LINK_HEADER_BYTES + ENT_LINK_CHUNK_FIXED_BYTES + big);
    assert_int_equal(ent_link_decode_delta(b.data, b.len, PEER, NULL, &d), ENT_OK);
    assert_int_equal(d.data_len, big);
    assert_memory_equal(d.data, bigdata, big);
    free(bigdata);
    ent_link_buf_free(&b);
    ent_link_buf_free(&b2);
    free(data);
}

// ---------------------------------------------------------------------------
// encoders refuse what decoders would refuse

static void expect_encode_refused(int type, uint32_t site, uint64_t round, const any_msg *m,
                                  const char *field) {
    ent_link_buf b = {0};
    ent_clear_error();
    ent_status st = encode_any(type, &b, site, round, m);
    if (st != ENT_ERR_USAGE || strstr(ent_last_error(), field) == NULL)
        fail_msg("encoding %s expected a refusal naming '%s', got status %d: %s",
                 ent_link_type_name(type), field, st, ent_last_error());
    ent_link_buf_free(&b);
}

static void test_encoders_refuse(void **state) {
    (void)state;
    test_reseed(3);
    uint8_t data[16] = {1};
    any_msg m;
    random_msg(ENT_LINK_HELLO, &m, data, sizeof data);
    any_msg ok = m;
    strcpy(m.hello.name, "site/1");
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "byte 0x2f at offset 4");
    strcpy(m.hello.name, "");
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "site name: empty");
    strcpy(m.hello.name, "..");
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "starts with '.'");
    memset(m.hello.name, 'a', sizeof m.hello.name); // no NUL within the field
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "longer than 64");
    m = ok;
    m.hello.dp_size = 0;
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "dp_size 0");
    m = ok;
    m.hello.dp_size = 2048;
    m.hello.tp_size = 1024; // each fine, the product too large
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "product");
    m = ok;
    m.hello.tokens_per_s = NAN;
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "tokens_per_s");
    m.hello.tokens_per_s = -1;
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "tokens_per_s");
    m = ok;
    m.hello.tokens_per_step = 0;
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "tokens_per_step");
    m.hello.tokens_per_step = ENT_LINK_ROUND_MAX + 1;
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "tokens_per_step");
    m = ok;
    m.hello.max_version = 0;
    expect_encode_refused(ENT_LINK_HELLO, 0, 0, &m, "max_version");
    expect_encode_refused(ENT_LINK_HELLO, 0, ENT_LINK_ROUND_MAX + 1, &ok, "round");

    random_msg(ENT_LINK_WELCOME, &m, data, sizeof data);
    ok = m;
    expect_encode_refused(ENT_LINK_WELCOME, 0, 0, &m, "site id 0");
    m.welcome.inner_steps = 0;
    expect_encode_refused(ENT_LINK_WELCOME, 1, 0, &m, "inner_steps");
    m = ok;
    m.welcome.round_seconds = INFINITY;
    expect_encode_refused(ENT_LINK_WELCOME, 1, 0, &m, "round_seconds");
    m = ok;
    m.welcome.heartbeat_ms = ENT_LINK_HEARTBEAT_MS_MIN - 1;
    expect_encode_refused(ENT_LINK_WELCOME, 1, 0, &m, "heartbeat_ms");
    m = ok;
    m.welcome.codec = ENT_LINK_CODEC_END;
    expect_encode_refused(ENT_LINK_WELCOME, 1, 0, &m, "codec");
    m = ok;
    m.welcome.chunk_bytes = ENT_LINK_CHUNK_DATA_MAX + 1;
    expect_encode_refused(ENT_LINK_WELCOME, 1, 0, &m, "chunk_bytes");

    random_msg(ENT_LINK_HEARTBEAT, &m, data, sizeof data);
    m.heartbeat.steps_done = ENT_LINK_INNER_STEPS_MAX + 1;
    expect_encode_refused(ENT_LINK_HEARTBEAT, 1, 0, &m, "steps_done");
    random_msg(ENT_LINK_ROUND_PLAN, &m, data, sizeof data);
    m.plan.deadline_ms = 0;
    expect_encode_refused(ENT_LINK_ROUND_PLAN, 1, 0, &m, "deadline_ms");

    for (int type = ENT_LINK_DELTA; type <= ENT_LINK_UPDATE; type++) {
        random_msg(type, &m, data, sizeof data);
        ok = m;
        m.chunk.index = m.chunk.count;
        expect_encode_refused(type, 1, 0, &m, "chunk index");
        m = ok;
        m.chunk.count = 0;
        m.chunk.index = 0;
        expect_encode_refused(type, 1, 0, &m, "chunk count 0");
        m = ok;
        m.chunk.length = m.chunk.total - m.chunk.offset + 1;
        expect_encode_refused(type, 1, 0, &m, "range");
        m = ok;
        m.chunk.offset = UINT64_MAX; // offset + length would wrap
        expect_encode_refused(type, 1, 0, &m, "range");
        m = ok;
        m.chunk.length = 0;
        expect_encode_refused(type, 1, 0, &m, "range");
        m = ok;
        m.chunk.total = ENT_LINK_PARAMS_MAX + 1;
        expect_encode_refused(type, 1, 0, &m, "total");
        m = ok;
        m.chunk.codec = 77;
        expect_encode_refused(type, 1, 0, &m, "codec");
        m = ok;
        m.chunk.data_len = 0;
        expect_encode_refused(type, 1, 0, &m, "bytes of data");
        m = ok;
        m.chunk.data = NULL;
        expect_encode_refused(type, 1, 0, &m, "no data");
        m = ok;
        m.chunk.tokens = ENT_LINK_ROUND_MAX + 1;
        expect_encode_refused(type, 1, 0, &m, "tokens");
    }
    for (int type = ENT_LINK_LEAVE; type <= ENT_LINK_ERROR; type++) {
        random_msg(type, &m, data, sizeof data);
        ok = m;
        m.reason.code = 0;
        expect_encode_refused(type, 1, 0, &m, "code 0");
        m.reason.code = type == ENT_LINK_LEAVE ? ENT_LINK_LEAVE_END : ENT_LINK_ERR_END;
        expect_encode_refused(type, 1, 0, &m, "unknown");
        m = ok;
        strcpy(m.reason.text, "two\nlines");
        expect_encode_refused(type, 1, 0, &m, "control byte 0x0a at offset 3");
        memset(m.reason.text, 'x', sizeof m.reason.text);
        expect_encode_refused(type, 1, 0, &m, "longer than 1024");
    }
    // the sanitiser makes any string a valid text
    char text[ENT_LINK_TEXT_MAX + 1], raw[2000];
    for (size_t i = 0; i + 1 < sizeof raw; i++) raw[i] = (char)rand_u32(1, 255);
    raw[sizeof raw - 1] = '\0';
    link_text_sanitize(text, sizeof text, raw);
    assert_int_equal(strlen(text), ENT_LINK_TEXT_MAX);
    ent_link_reason r = {.code = ENT_LINK_ERR_INTERNAL};
    memcpy(r.text, text, sizeof text);
    ent_link_buf b = {0};
    assert_int_equal(ent_link_encode_error(&b, 0, 0, &r), ENT_OK);
    ent_link_buf_free(&b);
}

// ---------------------------------------------------------------------------
// decoders: each check with its message

// Recomputes what an attacker who knows the format would: the payload length
// (fix_len), the payload checksum and the header checksum.
static void reseal(uint8_t *p, size_t len, int fix_len) {
    if (len < ENT_LINK_HEADER_BYTES) return;
    uint32_t plen = (uint32_t)(len - ENT_LINK_HEADER_BYTES);
    if (fix_len)
        for (int i = 0; i < 4; i++) p[24 + i] = (uint8_t)(plen >> (8 * i));
    uint32_t c = ent_link_crc32c(0, p + ENT_LINK_HEADER_BYTES, len - ENT_LINK_HEADER_BYTES);
    for (int i = 0; i < 4; i++) p[28 + i] = (uint8_t)(c >> (8 * i));
    c = ent_link_crc32c(0, p, 32);
    for (int i = 0; i < 4; i++) p[32 + i] = (uint8_t)(c >> (8 * i));
}

static void expect_decode_refused(int type, const uint8_t *p, size_t len, const char *what) {
    uint8_t *copy = malloc(len ? len : 1);
    if (len) memcpy(copy, p, len);
    any_msg m;
    ent_clear_error();
    ent_status st = decode_any(type, copy, len, PEER, NULL, &m);
    if (st != ENT_ERR_INPUT || strstr(ent_last_error(), what) == NULL ||
        strstr(ent_last_error(), PEER) == NULL)
        fail_msg("decoding %s expected a refusal naming '%s' and the peer, got status %d: %s",
                 ent_link_type_name(type), what, st, ent_last_error());
    free(copy);
}

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void test_decoder_checks(void **state) {
    (void)state;
    ent_link_buf b = {0};
    ent_link_hello hello = {.max_version = 1, .name = "north", .dp_size = 2, .tp_size = 2,
                            .tokens_per_s = 1000, .tokens_per_step = 4096};
    assert_int_equal(ent_link_encode_hello(&b, 0, 0, &hello), ENT_OK);
    size_t n = b.len;
    uint8_t *p = malloc(n + 64), *q = malloc(n + 64);
    memcpy(p, b.data, n);

    expect_decode_refused(ENT_LINK_HELLO, p, 0, "0 bytes, shorter than the 36-byte header");
    expect_decode_refused(ENT_LINK_HELLO, p, 20, "20 bytes, shorter than the 36-byte header");
    memcpy(q, p, n);
    memcpy(q, "HTTP", 4);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "bad magic");
    // another version: named, with the one this build speaks, whatever follows
    memcpy(q, p, n);
    put_le(q + 4, 2, 2);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "protocol version 2; this build speaks version 3");
    expect_decode_refused(ENT_LINK_HELLO, q, 6, "protocol version 2");
    put_le(q + 4, 4, 2);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "protocol version 4; this build speaks version 3");
    memcpy(q, p, n);
    q[17] ^= 1;
    expect_decode_refused(ENT_LINK_HELLO, q, n, "header checksum");
    memcpy(q, p, n);
    q[n - 1] ^= 1;
    expect_decode_refused(ENT_LINK_HELLO, q, n, "payload checksum");
    // forged checksums: the field checks
    memcpy(q, p, n);
    put_le(q + 6, ENT_LINK_TYPE_END, 2);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "unknown message type 11");
    memcpy(q, p, n);
    put_le(q + 6, ENT_LINK_DELTA, 2);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "expected HELLO, got DELTA");
    memcpy(q, p, n);
    put_le(q + 8, 1, 4);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "flags 0x00000001");
    memcpy(q, p, n);
    put_le(q + 16, ENT_LINK_ROUND_MAX + 1, 8);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "round 9007199254740992");
    memcpy(q, p, n);
    put_le(q + 24, 0xffffffffu, 4);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "payload of 4294967295 bytes, over the limit");
    memcpy(q, p, n);
    put_le(q + 24, n - ENT_LINK_HEADER_BYTES + 1, 4);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "declares");
    // the name: NUL inside, a length over the limit or past the payload
    size_t name_at = ENT_LINK_HEADER_BYTES + 2 + 2; // after max_version and the length
    memcpy(q, p, n);
    q[name_at + 2] = 0;
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "a NUL byte at offset 2");
    memcpy(q, p, n);
    q[name_at + 1] = '/';
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "byte 0x2f at offset 1");
    memcpy(q, p, n);
    put_le(q + name_at - 2, 65, 2);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "65 bytes, the limit is 64");
    memcpy(q, p, n);
    put_le(q + name_at - 2, 60, 2);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "60 bytes declared");
    // a short and a long payload
    memcpy(q, p, n);
    reseal(q, n - 3, 1);
    expect_decode_refused(ENT_LINK_HELLO, q, n - 3, "too short");
    memcpy(q, p, n);
    memset(q + n, 0xab, 5);
    reseal(q, n + 5, 1);
    expect_decode_refused(ENT_LINK_HELLO, q, n + 5, "5 bytes after the last field");
    // tokens per step (the last field): 0, and over 2^53 - 1
    memcpy(q, p, n);
    put_le(q + n - 8, 0, 8);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "tokens_per_step: 0");
    put_le(q + n - 8, ENT_LINK_ROUND_MAX + 1, 8);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "tokens_per_step: 9007199254740992");
    // tokens/s (the field before it): NaN
    memcpy(q, p, n);
    put_le(q + n - 16, 0x7ff8000000000000ull, 8);
    reseal(q, n, 0);
    expect_decode_refused(ENT_LINK_HELLO, q, n, "tokens_per_s");
    // a NULL peer: the message still says what failed
    any_msg m;
    assert_int_equal(decode_any(ENT_LINK_HELLO, q, n, NULL, NULL, &m), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "link: HELLO: tokens_per_s"));
    assert_int_equal(ent_link_decode_header(NULL, 0, NULL, NULL), ENT_ERR_INPUT);

    // a chunk whose range leaves the table
    uint8_t d[4] = {1, 2, 3, 4};
    ent_link_chunk c = {.index = 0, .count = 2, .total = 100, .offset = 90, .length = 10,
                        .data = d, .data_len = 4};
    assert_int_equal(ent_link_encode_delta(&b, 1, 1, &c), ENT_OK);
    assert_true(b.len <= n + 64);
    memcpy(q, b.data, b.len);
    put_le(q + ENT_LINK_HEADER_BYTES + 16, 91, 8); // offset
    reseal(q, b.len, 0);
    expect_decode_refused(ENT_LINK_DELTA, q, b.len, "not a non-empty range inside the 100");
    memcpy(q, b.data, b.len);
    put_le(q + ENT_LINK_HEADER_BYTES, 2, 4); // index == count
    reseal(q, b.len, 0);
    expect_decode_refused(ENT_LINK_DELTA, q, b.len, "chunk index 2 of 2 chunks");
    // no data at all
    memcpy(q, b.data, b.len);
    reseal(q, ENT_LINK_HEADER_BYTES + ENT_LINK_CHUNK_FIXED_BYTES, 1);
    expect_decode_refused(ENT_LINK_DELTA, q, ENT_LINK_HEADER_BYTES + ENT_LINK_CHUNK_FIXED_BYTES,
                          "0 bytes of data");
    // a WELCOME to site 0
    ent_link_welcome w = {.inner_steps = 5, .heartbeat_ms = 1000, .chunk_bytes = 100};
    assert_int_equal(ent_link_encode_welcome(&b, 3, 0, &w), ENT_OK);
    memcpy(q, b.data, b.len);
    put_le(q + 12, 0, 4);
    reseal(q, b.len, 0);
    expect_decode_refused(ENT_LINK_WELCOME, q, b.len, "site id 0");
    // an ERROR whose text carries an escape sequence
    ent_link_reason r = {.code = ENT_LINK_ERR_VERSION, .text = "abc"};
    assert_int_equal(ent_link_encode_error(&b, 0, 0, &r), ENT_OK);
    memcpy(q, b.data, b.len);
    q[b.len - 2] = 0x1b;
    reseal(q, b.len, 0);
    expect_decode_refused(ENT_LINK_ERROR, q, b.len, "control byte 0x1b at offset 1");

    free(p);
    free(q);
    ent_link_buf_free(&b);
}

// ---------------------------------------------------------------------------
// corruption of every byte

typedef struct {
    size_t tried, refused, accepted, refused_by_fields;
} fuzz_count;

// Decodes a corrupted copy (exactly len bytes on the heap). forged: the
// checksums were recomputed, so a message may pass; then it must re-encode
// to exactly these bytes. Not forged: it must fail.
static void fuzz_one(int type, const uint8_t *p, size_t len, int forged, fuzz_count *fc,
                     const char *what, size_t where) {
    uint8_t *copy = malloc(len ? len : 1);
    if (len) memcpy(copy, p, len);
    any_msg m;
    memset(&m, 0x5a, sizeof m);
    ent_link_header h;
    ent_clear_error();
    ent_status st = decode_any(type, copy, len, PEER, &h, &m);
    fc->tried++;
    if (st != ENT_OK) {
        if (st != ENT_ERR_INPUT || strstr(ent_last_error(), PEER) == NULL)
            fail_msg("%s, %s %zu: status %d, message '%s' (expected one naming the peer)",
                     ent_link_type_name(type), what, where, st, ent_last_error());
        fc->refused++;
        if (strstr(ent_last_error(), "checksum") == NULL) fc->refused_by_fields++;
    } else {
        if (!forged)
            fail_msg("%s, %s %zu (seed %llu): accepted a damaged message",
                     ent_link_type_name(type), what, where, (unsigned long long)test_seed());
        ent_link_buf b = {0};
        if (encode_any(type, &b, h.site, h.round, &m) != ENT_OK)
            fail_msg("%s, %s %zu: decoded content does not encode: %s",
                     ent_link_type_name(type), what, where, ent_last_error());
        if (b.len != len || memcmp(b.data, copy, len) != 0)
            fail_msg("%s, %s %zu (seed %llu): decoded, but its content encodes to other bytes "
                     "(a byte no check covers)",
                     ent_link_type_name(type), what, where, (unsigned long long)test_seed());
        ent_link_buf_free(&b);
        fc->accepted++;
    }
    free(copy);
}

static void fuzz_message(int type, const uint8_t *orig, size_t len, int forged, fuzz_count *fc) {
    uint8_t *p = malloc(len + 128);
    // every byte, set to several values
    for (size_t i = 0; i < len; i++) {
        uint8_t vals[7] = {(uint8_t)(orig[i] ^ 0x01), (uint8_t)(orig[i] ^ 0x80),
                           (uint8_t)~orig[i],        0x00,
                           0xff,                      (uint8_t)(orig[i] + 1),
                           (uint8_t)rand_u32(0, 255)};
        for (int v = 0; v < 7; v++) {
            if (vals[v] == orig[i]) continue;
            memcpy(p, orig, len);
            p[i] = vals[v];
            if (forged) reseal(p, len, 0);
            if (forged && memcmp(p, orig, len) == 0) continue; // the reseal undid it
            fuzz_one(type, p, len, forged, fc, "byte changed at offset", i);
        }
    }
    // bursts of 2-4 bytes (CRC32C finds every burst of up to 32 bits)
    for (int k = 0; k < 64 && len >= 4; k++) {
        size_t w = (size_t)test_rand_int(2, 4), at = (size_t)test_rand_int(0, (int64_t)(len - w));
        memcpy(p, orig, len);
        for (size_t j = 0; j < w; j++) p[at + j] = (uint8_t)rand_u32(0, 255);
        if (forged) reseal(p, len, 0);
        if (memcmp(p, orig, len) == 0) continue;
        fuzz_one(type, p, len, forged, fc, "burst at offset", at);
    }
    // truncation at every length
    for (size_t cut = 0; cut < len; cut++) {
        memcpy(p, orig, len);
        if (forged) reseal(p, cut, 1);
        fuzz_one(type, p, cut, forged, fc, "truncated to bytes:", cut);
    }
    // extensions by random bytes
    for (int k = 0; k < 24; k++) {
        size_t extra = (size_t)test_rand_int(1, 128);
        memcpy(p, orig, len);
        for (size_t j = 0; j < extra; j++) p[len + j] = (uint8_t)rand_u32(0, 255);
        if (forged) reseal(p, len + extra, 1);
        fuzz_one(type, p, len + extra, forged, fc, "extended by bytes:", extra);
    }
    free(p);
}

static void fuzz_all(int forged) {
    fuzz_count total = {0};
    uint8_t data[48];
    ent_link_buf b = {0};
    for (int type = ENT_LINK_HELLO; type < ENT_LINK_TYPE_END; type++) {
        fuzz_count fc = {0};
        for (int rep = 0; rep < 3; rep++) {
            any_msg m;
            random_msg(type, &m, data, sizeof data);
            if (type == ENT_LINK_LEAVE || type == ENT_LINK_ERROR) // keep texts short here
                m.reason.text[test_rand_int(0, 24)] = '\0';
            uint32_t site = rand_site();
            if (type == ENT_LINK_WELCOME && site == 0) site = 1;
            assert_int_equal(encode_any(type, &b, site, rand_round(), &m), ENT_OK);
            uint8_t *orig = malloc(b.len);
            memcpy(orig, b.data, b.len);
            fuzz_message(type, orig, b.len, forged, &fc);
            free(orig);
        }
        fprintf(stderr, "%s %-10s: %zu corruptions, %zu refused (%zu by field checks), %zu "
                        "accepted and re-encoded identically\n",
                forged ? "forged checksums" : "plain corruption", ent_link_type_name(type),
                fc.tried, fc.refused, fc.refused_by_fields, fc.accepted);
        total.tried += fc.tried;
        total.refused += fc.refused;
        total.refused_by_fields += fc.refused_by_fields;
        total.accepted += fc.accepted;
    }
    assert_true(total.tried > 5000);
    if (forged) {
        // the field checks met the damage, and some changes were valid messages
        assert_true(total.refused_by_fields > total.tried / 10);
        assert_true(total.accepted > 0);
    } else {
        assert_int_equal(total.refused, total.tried);
    }
    ent_link_buf_free(&b);
}

static void test_fuzz_plain(void **state) {
    (void)state;
    test_reseed(4);
    fuzz_all(0);
}

static void test_fuzz_forged(void **state) {
    (void)state;
    test_reseed(5);
    fuzz_all(1);
}

// ---------------------------------------------------------------------------
// ZeroMQ endpoints on loopback

enum { WAIT_MS = 10000 }; // bounds every wait; none is expected to take long

static ent_link_opts test_opts(size_t max_payload) {
    ent_link_opts o = ent_link_opts_default();
    o.max_payload = max_payload;
    o.linger_ms = 200;
    o.send_timeout_ms = 5000;
    return o;
}

static void must(ent_status st, const char *what) {
    if (st != ENT_OK) fail_msg("%s: %s", what, ent_last_error());
}

// The next message on ep, which must arrive.
static void recv_one(ent_link_endpoint_t *ep, ent_link_incoming *in) {
    int got = 0;
    must(ent_link_recv(ep, WAIT_MS, in, &got), "receiving");
    if (!got) fail_msg("no message within %d ms on %s", WAIT_MS, ent_link_address(ep));
}

static void send_hello(ent_link_endpoint_t *site, const char *name, ent_link_buf *b) {
    ent_link_hello h = {.max_version = 1, .dp_size = 2, .tp_size = 1, .tokens_per_s = 500,
                        .tokens_per_step = 1024};
    snprintf(h.name, sizeof h.name, "%s", name);
    must(ent_link_encode_hello(b, 0, 0, &h), "encoding HELLO");
    must(ent_link_send(site, NULL, b->data, b->len), "sending HELLO");
}

// A DELTA or UPDATE of n random bytes in chunks of at most per bytes.
static void send_chunks(ent_link_endpoint_t *ep, const ent_link_peer *to, int type,
                        uint32_t site, uint64_t round, const uint8_t *bytes, size_t n,
                        size_t per, ent_link_buf *b) {
    uint32_t count = (uint32_t)((n + per - 1) / per);
    for (uint32_t i = 0; i < count; i++) {
        size_t at = (size_t)i * per, len = n - at < per ? n - at : per;
        ent_link_chunk c = {.index = i, .count = count, .total = n, .offset = at, .length = len,
                            .codec = ENT_LINK_CODEC_INT8, .anchor_hash = 0xabcdef,
                            .tokens = 4096, .data = bytes + at, .data_len = len};
        if (type == ENT_LINK_DELTA)
            must(ent_link_encode_delta(b, site, round, &c), "encoding DELTA");
        else
            must(ent_link_encode_update(b, site, round, &c), "encoding UPDATE");
        must(ent_link_send(ep, to, b->data, b->len), "sending a chunk");
    }
}

// Receives count chunks of `type` and puts them together into out (n bytes).
static void recv_chunks(ent_link_endpoint_t *ep, int type, uint8_t *out, size_t n,
                        uint32_t expect_count, ent_link_peer *from) {
    for (uint32_t k = 0; k < expect_count; k++) {
        ent_link_incoming in;
        recv_one(ep, &in);
        ent_link_chunk c;
        if (type == ENT_LINK_DELTA)
            must(ent_link_decode_delta(in.bytes, in.len, in.peer.name, NULL, &c), "DELTA");
        else
            must(ent_link_decode_update(in.bytes, in.len, in.peer.name, NULL, &c), "UPDATE");
        assert_int_equal(c.count, expect_count);
        assert_true(c.total == n && c.offset + c.length <= n && c.length == c.data_len);
        memcpy(out + c.offset, c.data, c.data_len);
        if (from) *from = in.peer;
    }
}

static int same_peer(const ent_link_peer *a, const ent_link_peer *b) {
    return a->id_len == b->id_len && memcmp(a->id, b->id, a->id_len) == 0;
}

// A raw ZeroMQ DEALER that sends what it likes, with a monitor that sees
// its connection come and go.
typedef struct {
    void *ctx, *sock, *monitor;
} raw_peer;

// Waits for the monitor to report `event` (skipping others).
static void await_event(raw_peer *r, int event) {
    for (int i = 0; i < 100; i++) {
        uint8_t ev[6];
        char endpoint[256];
        int n = zmq_recv(r->monitor, ev, sizeof ev, 0);
        if (n < 0) fail_msg("no socket event %d within %d ms", event, WAIT_MS);
        assert_int_equal(n, 6);
        assert_true(zmq_recv(r->monitor, endpoint, sizeof endpoint, 0) >= 0);
        if ((ev[0] | ev[1] << 8) == event) return;
    }
    fail_msg("socket event %d never came", event);
}

static void raw_send(raw_peer *r, const void *const *frames, const size_t *sizes, int n) {
    for (int i = 0; i < n; i++)
        assert_true(zmq_send(r->sock, frames[i], sizes[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

// Serves the ROUTER until it has dropped one more message than `before`;
// nothing good may arrive meanwhile. Returns the reason it logged.
static void await_drop(ent_link_endpoint_t *router, uint64_t before, const char *reason_has) {
    ent_link_stats s;
    for (int i = 0; i < 100; i++) {
        ent_link_get_stats(router, &s);
        if (s.dropped > before) break;
        ent_link_incoming in;
        int got = 0;
        must(ent_link_recv(router, WAIT_MS / 100, &in, &got), "serving");
        if (got) fail_msg("a message got through while garbage was expected: %s",
                          ent_link_type_name(in.header.type));
    }
    ent_link_get_stats(router, &s);
    assert_int_equal(s.dropped, before + 1);
    if (strstr(s.last_drop, reason_has) == NULL)
        fail_msg("dropped for '%s', expected a reason with '%s'", s.last_drop, reason_has);
}

// The ERROR the ROUTER answered garbage with.
static void await_error_reply(raw_peer *r, uint16_t code, const char *text_has) {
    uint8_t head[64], *payload = malloc(ENT_LINK_PAYLOAD_MAX / 1024);
    int hn = zmq_recv(r->sock, head, sizeof head, 0);
    assert_int_equal(hn, ENT_LINK_HEADER_BYTES);
    int more = 0;
    size_t ms = sizeof more;
    assert_int_equal(zmq_getsockopt(r->sock, ZMQ_RCVMORE, &more, &ms), 0);
    assert_true(more);
    int pn = zmq_recv(r->sock, payload, ENT_LINK_PAYLOAD_MAX / 1024, 0);
    assert_true(pn >= 0);
    uint8_t *msg = malloc((size_t)hn + (size_t)pn);
    memcpy(msg, head, (size_t)hn);
    memcpy(msg + hn, payload, (size_t)pn);
    ent_link_reason er;
    must(ent_link_decode_error(msg, (size_t)hn + (size_t)pn, "coordinator", NULL, &er),
         "decoding the ERROR answer");
    assert_int_equal(er.code, code);
    if (strstr(er.text, text_has) == NULL)
        fail_msg("ERROR text '%s' lacks '%s'", er.text, text_has);
    free(msg);
    free(payload);
}

// The good peer is still served: its heartbeat arrives, from it.
static void heartbeat_gets_through(ent_link_endpoint_t *router, ent_link_endpoint_t *site,
                                   const ent_link_peer *site_peer, uint32_t site_id,
                                   ent_link_buf *b) {
    ent_link_heartbeat hb = {.time_ns = 123456789, .steps_done = 3, .tokens_per_s = 42};
    must(ent_link_encode_heartbeat(b, site_id, 1, &hb), "encoding HEARTBEAT");
    must(ent_link_send(site, NULL, b->data, b->len), "sending HEARTBEAT");
    ent_link_incoming in;
    recv_one(router, &in);
    assert_int_equal(in.header.type, ENT_LINK_HEARTBEAT);
    assert_true(same_peer(&in.peer, site_peer));
    ent_link_heartbeat d;
    must(ent_link_decode_heartbeat(in.bytes, in.len, in.peer.name, NULL, &d), "HEARTBEAT");
    assert_true(d.time_ns == hb.time_ns);
}

static void test_loopback(void **state) {
    (void)state;
    test_reseed(6);
    enum { MAXP = 64 * 1024 };
    ent_link_opts o = test_opts(MAXP);
    ent_link_endpoint_t *router = NULL, *a = NULL, *bsite = NULL;
    must(ent_link_router_bind("tcp://127.0.0.1:*", &o, &router), "binding");
    const char *addr = ent_link_address(router);
    assert_true(strncmp(addr, "tcp://127.0.0.1:", 16) == 0);
    assert_true(atoi(addr + 16) > 0);
    must(ent_link_dealer_connect(addr, &o, &a), "connecting alpha");
    must(ent_link_dealer_connect(addr, &o, &bsite), "connecting beta");
    ent_link_buf buf = {0};

    // HELLO -> WELCOME
    send_hello(a, "alpha", &buf);
    send_hello(bsite, "beta", &buf);
    ent_link_peer peer_a = {0}, peer_b = {0};
    for (int k = 0; k < 2; k++) {
        ent_link_incoming in;
        recv_one(router, &in);
        ent_link_hello h;
        must(ent_link_decode_hello(in.bytes, in.len, in.peer.name, NULL, &h), "HELLO");
        assert_true(in.peer.id_len > 0);
        assert_non_null(strstr(in.peer.name, "127.0.0.1"));
        int is_a = strcmp(h.name, "alpha") == 0;
        assert_true(is_a || strcmp(h.name, "beta") == 0);
        if (is_a) peer_a = in.peer;
        else peer_b = in.peer;
        ent_link_welcome w = {.anchor_hash = 0x1234 + (uint64_t)is_a, .inner_steps = 50,
                              .round_seconds = 30, .heartbeat_ms = 1000,
                              .codec = ENT_LINK_CODEC_INT8, .chunk_bytes = 40000};
        must(ent_link_encode_welcome(&buf, is_a ? 1 : 2, 7, &w), "encoding WELCOME");
        must(ent_link_send(router, &in.peer, buf.data, buf.len), "sending WELCOME");
    }
    assert_false(same_peer(&peer_a, &peer_b));
    ent_link_endpoint_t *sites[2] = {a, bsite};
    for (int s = 0; s < 2; s++) {
        ent_link_incoming in;
        recv_one(sites[s], &in);
        ent_link_welcome w;
        ent_link_header h;
        must(ent_link_decode_welcome(in.bytes, in.len, in.peer.name, &h, &w), "WELCOME");
        assert_int_equal(h.site, s == 0 ? 1 : 2);
        assert_true(h.round == 7);
        assert_true(w.anchor_hash == (s == 0 ? 0x1235u : 0x1234u));
        assert_non_null(strstr(in.peer.name, addr)); // the coordinator, by its endpoint
    }

    // ROUND_PLAN to each
    ent_link_peer *peers[2] = {&peer_a, &peer_b};
    for (int s = 0; s < 2; s++) {
        ent_link_round_plan plan = {.inner_steps = 40 + (uint32_t)s, .deadline_ms = 60000};
        must(ent_link_encode_round_plan(&buf, (uint32_t)s + 1, 8, &plan), "ROUND_PLAN");
        must(ent_link_send(router, peers[s], buf.data, buf.len), "sending ROUND_PLAN");
    }
    for (int s = 0; s < 2; s++) {
        ent_link_incoming in;
        recv_one(sites[s], &in);
        ent_link_round_plan plan;
        must(ent_link_decode_round_plan(in.bytes, in.len, in.peer.name, NULL, &plan), "plan");
        assert_int_equal(plan.inner_steps, 40 + s);
    }

    // DELTAs, chunked, from both sites at once
    size_t n = 150000;
    uint8_t *delta[2], *got = malloc(n), *update = malloc(n);
    for (int s = 0; s < 2; s++) {
        delta[s] = malloc(n);
        for (size_t i = 0; i < n; i++) delta[s][i] = (uint8_t)rand_u32(0, 255);
    }
    send_chunks(a, NULL, ENT_LINK_DELTA, 1, 8, delta[0], n, 40000, &buf);
    send_chunks(bsite, NULL, ENT_LINK_DELTA, 2, 8, delta[1], n, 40000, &buf);
    uint8_t *assembled[2] = {calloc(1, n), calloc(1, n)};
    for (int k = 0; k < 8; k++) {
        ent_link_incoming in;
        recv_one(router, &in);
        ent_link_chunk c;
        ent_link_header h;
        must(ent_link_decode_delta(in.bytes, in.len, in.peer.name, &h, &c), "DELTA");
        int s = (int)h.site - 1;
        assert_true(s == 0 || s == 1);
        assert_true(same_peer(&in.peer, peers[s])); // the site id came over its own connection
        memcpy(assembled[s] + c.offset, c.data, c.data_len);
    }
    for (int s = 0; s < 2; s++) assert_memory_equal(assembled[s], delta[s], n);

    // one UPDATE to both
    for (size_t i = 0; i < n; i++) update[i] = (uint8_t)(delta[0][i] ^ delta[1][i]);
    for (int s = 0; s < 2; s++)
        send_chunks(router, peers[s], ENT_LINK_UPDATE, (uint32_t)s + 1, 8, update, n, 60000,
                    &buf);
    for (int s = 0; s < 2; s++) {
        memset(got, 0, n);
        recv_chunks(sites[s], ENT_LINK_UPDATE, got, n, 3, NULL);
        assert_memory_equal(got, update, n);
    }

    // garbage from a third peer: each refused with its reason, the good ones served
    raw_peer g;
    g.ctx = zmq_ctx_new();
    g.sock = zmq_socket(g.ctx, ZMQ_DEALER);
    int linger = 0, rcvtimeo = WAIT_MS;
    zmq_setsockopt(g.sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(g.sock, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo);
    assert_int_equal(zmq_socket_monitor(g.sock, "inproc://garbage-monitor",
                                        ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED), 0);
    g.monitor = zmq_socket(g.ctx, ZMQ_PAIR);
    zmq_setsockopt(g.monitor, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(g.monitor, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo);
    assert_int_equal(zmq_connect(g.monitor, "inproc://garbage-monitor"), 0);
    assert_int_equal(zmq_connect(g.sock, addr), 0);
    await_event(&g, ZMQ_EVENT_CONNECTED);
    ent_link_heartbeat hb = {.time_ns = 1, .tokens_per_s = 1};
    must(ent_link_encode_heartbeat(&buf, 0, 0, &hb), "encoding");
    uint8_t valid[ENT_LINK_HEADER_BYTES + 64], bad[ENT_LINK_HEADER_BYTES + 64];
    size_t vlen = buf.len;
    memcpy(valid, buf.data, vlen);
    const uint8_t *vp = valid + ENT_LINK_HEADER_BYTES;
    size_t vplen = vlen - ENT_LINK_HEADER_BYTES;
    ent_link_stats st;
    ent_link_get_stats(router, &st);
    uint64_t dropped = st.dropped;

    // one frame: the header alone
    raw_send(&g, (const void *[]){valid}, (size_t[]){ENT_LINK_HEADER_BYTES}, 1);
    await_drop(router, dropped++, "1 frames");
    await_error_reply(&g, ENT_LINK_ERR_MALFORMED, "1 frames");
    heartbeat_gets_through(router, a, &peer_a, 1, &buf);
    // three frames
    raw_send(&g, (const void *[]){valid, vp, vp}, (size_t[]){ENT_LINK_HEADER_BYTES, vplen, 4},
             3);
    await_drop(router, dropped++, "3 frames");
    await_error_reply(&g, ENT_LINK_ERR_MALFORMED, "3 frames");
    heartbeat_gets_through(router, bsite, &peer_b, 2, &buf);
    // a short header frame
    raw_send(&g, (const void *[]){valid, vp}, (size_t[]){ENT_LINK_HEADER_BYTES - 1, vplen}, 2);
    await_drop(router, dropped++, "header frame of 35 bytes");
    await_error_reply(&g, ENT_LINK_ERR_MALFORMED, "header frame of 35 bytes");
    heartbeat_gets_through(router, a, &peer_a, 1, &buf);
    // a wrong magic
    memcpy(bad, valid, vlen);
    memcpy(bad, "GET ", 4);
    raw_send(&g, (const void *[]){bad, vp}, (size_t[]){ENT_LINK_HEADER_BYTES, vplen}, 2);
    await_drop(router, dropped++, "bad magic");
    await_error_reply(&g, ENT_LINK_ERR_MALFORMED, "bad magic");
    heartbeat_gets_through(router, a, &peer_a, 1, &buf);
    // another protocol version
    memcpy(bad, valid, vlen);
    put_le(bad + 4, 2, 2); // an older peer's (version 2)
    raw_send(&g, (const void *[]){bad, vp}, (size_t[]){ENT_LINK_HEADER_BYTES, vplen}, 2);
    await_drop(router, dropped++, "protocol version 2; this build speaks version 3");
    await_error_reply(&g, ENT_LINK_ERR_VERSION, "protocol version 2; this build speaks version 3");
    heartbeat_gets_through(router, bsite, &peer_b, 2, &buf);
    // a header that lies about the payload's length (checksums forged)
    memcpy(bad, valid, vlen);
    put_le(bad + 24, MAXP, 4);
    reseal(bad, vlen, 0);
    raw_send(&g, (const void *[]){bad, vp}, (size_t[]){ENT_LINK_HEADER_BYTES, vplen}, 2);
    await_drop(router, dropped++, "declares");
    await_error_reply(&g, ENT_LINK_ERR_MALFORMED, "declares");
    heartbeat_gets_through(router, a, &peer_a, 1, &buf);
    // a frame over max_payload: libzmq closes that connection while reading
    // it and delivers nothing; the garbage peer reconnects and its next
    // message (a wrong magic again) is the only one dropped
    uint8_t *huge = calloc(1, MAXP + 1);
    raw_send(&g, (const void *[]){valid, huge}, (size_t[]){ENT_LINK_HEADER_BYTES, MAXP + 1}, 2);
    await_event(&g, ZMQ_EVENT_DISCONNECTED);
    await_event(&g, ZMQ_EVENT_CONNECTED);
    memcpy(bad, valid, vlen);
    memcpy(bad, "XXXX", 4);
    raw_send(&g, (const void *[]){bad, vp}, (size_t[]){ENT_LINK_HEADER_BYTES, vplen}, 2);
    ent_link_get_stats(router, &st);
    uint64_t received = st.messages_received;
    await_drop(router, dropped++, "bad magic 0x58585858");
    ent_link_get_stats(router, &st);
    assert_true(st.messages_received == received);
    heartbeat_gets_through(router, bsite, &peer_b, 2, &buf);
    free(huge);

    // the good sites are still served both ways
    send_chunks(router, &peer_b, ENT_LINK_UPDATE, 2, 9, update, n, 60000, &buf);
    memset(got, 0, n);
    recv_chunks(bsite, ENT_LINK_UPDATE, got, n, 3, NULL);
    assert_memory_equal(got, update, n);

    // LEAVE
    ent_link_reason leave = {.code = ENT_LINK_LEAVE_FINISHED, .text = "done after 9 rounds"};
    must(ent_link_encode_leave(&buf, 1, 9, &leave), "encoding LEAVE");
    must(ent_link_send(a, NULL, buf.data, buf.len), "sending LEAVE");
    ent_link_incoming in;
    recv_one(router, &in);
    ent_link_reason lv;
    must(ent_link_decode_leave(in.bytes, in.len, in.peer.name, NULL, &lv), "LEAVE");
    assert_string_equal(lv.text, leave.text);

    // a ROUTER cannot send to a peer it does not know
    ent_link_peer ghost = {.id = {0, 1, 2, 3, 4}, .id_len = 5, .name = "ghost-peer"};
    assert_int_equal(ent_link_send(router, &ghost, buf.data, buf.len), ENT_ERR_IO);
    assert_non_null(strstr(ent_last_error(), "ghost-peer"));
    // nor anyone send bytes that are not a message
    assert_int_equal(ent_link_send(a, NULL, "hello", 5), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "refusing to send"));
    assert_int_equal(ent_link_send(a, &ghost, buf.data, buf.len), ENT_ERR_USAGE);
    assert_int_equal(ent_link_send(router, NULL, buf.data, buf.len), ENT_ERR_USAGE);
    // a payload over this link's own limit is not sent
    uint8_t *big = calloc(1, MAXP + 1);
    ent_link_chunk c = {.count = 1, .total = 1, .length = 1, .data = big, .data_len = MAXP + 1};
    must(ent_link_encode_delta(&buf, 1, 9, &c), "encoding a large DELTA");
    assert_int_equal(ent_link_send(a, NULL, buf.data, buf.len), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "max_payload"));
    free(big);
    // nothing waiting: a zero timeout returns at once with nothing
    int gotit = 1;
    must(ent_link_recv(a, 0, &in, &gotit), "polling");
    assert_int_equal(gotit, 0);

    ent_link_get_stats(a, &st);
    assert_true(st.messages_sent >= 8 && st.bytes_sent > n);
    ent_link_get_stats(router, &st);
    assert_int_equal(st.dropped, dropped);

    zmq_socket_monitor(g.sock, NULL, 0);
    zmq_close(g.monitor);
    zmq_close(g.sock);
    zmq_ctx_term(g.ctx);
    ent_link_close(&a);
    ent_link_close(&bsite);
    ent_link_close(&router);
    assert_null(router);
    ent_link_close(&router); // a second close is a no-op
    ent_link_buf_free(&buf);
    for (int s = 0; s < 2; s++) {
        free(delta[s]);
        free(assembled[s]);
    }
    free(got);
    free(update);
}

static void test_endpoint_errors(void **state) {
    (void)state;
    ent_link_endpoint_t *ep = NULL, *ep2 = NULL;
    // a server key without this side's own key pair
    ent_link_opts o = test_opts(4096);
    o.server_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    assert_int_equal(ent_link_dealer_connect("tcp://127.0.0.1:5", &o, &ep), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "own key pair"));
    assert_null(ep);
    // a CURVE coordinator with no allowlist
    ent_link_keypair kp;
    must(ent_link_keygen("coord", &kp), "keygen");
    o = test_opts(4096);
    o.curve = &kp;
    assert_int_equal(ent_link_router_bind("tcp://127.0.0.1:*", &o, &ep), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "allowlist"));
    assert_null(ep);
    o = test_opts(0);
    assert_int_equal(ent_link_router_bind("tcp://127.0.0.1:*", &o, &ep), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "max_payload 0"));
    assert_int_equal(ent_link_router_bind("", NULL, &ep), ENT_ERR_USAGE);
    assert_int_equal(ent_link_dealer_connect("carrier-pigeon://x", NULL, &ep), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "carrier-pigeon://x"));
    // an address in use
    o = test_opts(4096);
    must(ent_link_router_bind("tcp://127.0.0.1:*", &o, &ep), "binding");
    char addr[256];
    snprintf(addr, sizeof addr, "%s", ent_link_address(ep));
    assert_int_equal(ent_link_router_bind(addr, &o, &ep2), ENT_ERR_IO);
    assert_non_null(strstr(ent_last_error(), "cannot bind the coordinator"));
    assert_null(ep2);
    ent_link_close(&ep);
    // a coordinator that is not there: the send fails after its timeout,
    // naming the endpoint (the port was just freed: nothing listens)
    o.send_timeout_ms = 200;
    must(ent_link_dealer_connect(addr, &o, &ep), "connecting");
    ent_link_buf b = {0};
    ent_link_round_plan plan = {.inner_steps = 1, .deadline_ms = 1};
    must(ent_link_encode_round_plan(&b, 1, 1, &plan), "encoding");
    assert_int_equal(ent_link_send(ep, NULL, b.data, b.len), ENT_ERR_IO);
    assert_non_null(strstr(ent_last_error(), addr));
    assert_non_null(strstr(ent_last_error(), "reachable"));
    ent_link_close(&ep);
    ent_link_buf_free(&b);
}

// ---------------------------------------------------------------------------
// CURVE: key files, the allowlist, and who gets through the handshake

static char tmpdir[64];

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_key_files(void **state) {
    (void)state;
    test_reseed(8);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ent_keys_XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    ent_link_keypair a, back;
    must(ent_link_keygen("site-a", &a), "keygen");
    assert_int_equal(strlen(a.public_key), ENT_LINK_KEY_TEXT);
    assert_int_equal(ent_link_keygen("../evil", &back), ENT_ERR_USAGE);
    must(ent_link_key_write(tmpdir, &a, 0), "writing keys");
    // never overwritten without force
    assert_int_equal(ent_link_key_write(tmpdir, &a, 0), ENT_ERR_USAGE);
    assert_non_null(strstr(ent_last_error(), "site-a.key"));
    char key[128], pub[128];
    snprintf(key, sizeof key, "%s/site-a.key", tmpdir);
    snprintf(pub, sizeof pub, "%s/site-a.pub", tmpdir);
    struct stat sb;
    assert_int_equal(stat(key, &sb), 0);
    assert_int_equal(sb.st_mode & 077, 0); // the secret is the owner's alone
    must(ent_link_key_read(key, 1, &back), "reading the key pair");
    assert_string_equal(back.name, "site-a");
    assert_string_equal(back.public_key, a.public_key);
    assert_string_equal(back.secret_key, a.secret_key);
    must(ent_link_key_read(pub, 0, &back), "reading the public key");
    assert_string_equal(back.public_key, a.public_key);
    assert_string_equal(back.secret_key, "");
    assert_int_equal(ent_link_key_read(pub, 1, &back), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "public key only"));

    // every byte of the key file damaged in turn: refused naming the file, or
    // (a comment byte, spacing) read back as the very same keys
    FILE *f = fopen(key, "rb");
    char orig[512];
    size_t n = fread(orig, 1, sizeof orig, f);
    fclose(f);
    char bad[256];
    snprintf(bad, sizeof bad, "%s/bad.key", tmpdir);
    int refused = 0, same = 0;
    for (size_t i = 0; i < n; i++) {
        char copy[512];
        memcpy(copy, orig, n);
        copy[i] = (char)(copy[i] ^ (1 + test_rand_int(0, 254)));
        f = fopen(bad, "wb");
        fwrite(copy, 1, n, f);
        fclose(f);
        chmod(bad, 0600);
        ent_status st = ent_link_key_read(bad, 1, &back);
        if (st != ENT_OK) {
            assert_int_equal(st, ENT_ERR_INPUT);
            assert_non_null(strstr(ent_last_error(), bad));
            refused++;
        } else {
            // only a change that leaves the keys and the name as they were
            assert_string_equal(back.public_key, a.public_key);
            assert_string_equal(back.secret_key, a.secret_key);
            assert_string_equal(back.name, "site-a");
            same++;
        }
    }
    assert_true(refused > (int)n / 2);
    // truncated at every length
    for (size_t len = 0; len + 1 < n; len++) {
        f = fopen(bad, "wb");
        fwrite(orig, 1, len, f);
        fclose(f);
        ent_status st = ent_link_key_read(bad, 1, &back);
        if (st == ENT_OK) fail_msg("a key file cut to %zu of %zu bytes was accepted", len, n);
    }
    // a secret that is not the public key's
    ent_link_keypair other;
    must(ent_link_keygen("x", &other), "keygen");
    char text[512];
    char fields[256];
    snprintf(fields, sizeof fields, "site-a\n%s\n%s\n", a.public_key, other.secret_key);
    snprintf(text, sizeof text, "name = site-a\npublic = %s\nsecret = %s\ncheck = %08x\n",
             a.public_key, other.secret_key, ent_link_crc32c(0, fields, strlen(fields)));
    write_text(bad, text);
    assert_int_equal(ent_link_key_read(bad, 1, &back), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "does not belong"));
    unlink(bad);
    printf("key file: %d damaged copies refused, %d harmless (comments, spacing)\n", refused,
           same);

    // the allowlist: a directory of .pub files, sorted by name
    char allow[96];
    snprintf(allow, sizeof allow, "%s/allow", tmpdir);
    ent_link_keypair b;
    must(ent_link_keygen("site-b", &b), "keygen");
    must(ent_link_key_write(allow, &b, 0), "writing b");
    must(ent_link_key_write(allow, &a, 0), "writing a");
    ent_link_keypair *keys = NULL;
    int nkeys = 0;
    must(ent_link_allowlist_load(allow, &keys, &nkeys), "allowlist");
    assert_int_equal(nkeys, 2);
    assert_string_equal(keys[0].name, "site-a");
    assert_string_equal(keys[1].public_key, b.public_key);
    assert_string_equal(keys[0].secret_key, ""); // never keeps a secret
    free(keys);
    // the same site twice
    snprintf(fields, sizeof fields, "site-a\n%s\n\n", b.public_key);
    snprintf(text, sizeof text, "name = site-a\npublic = %s\ncheck = %08x\n", b.public_key,
             ent_link_crc32c(0, fields, strlen(fields)));
    snprintf(bad, sizeof bad, "%s/dup.pub", allow);
    write_text(bad, text);
    assert_int_equal(ent_link_allowlist_load(allow, &keys, &nkeys), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "site-a"));
    unlink(bad);
    char empty[128];
    snprintf(empty, sizeof empty, "%s/empty", tmpdir);
    mkdir(empty, 0700);
    assert_int_equal(ent_link_allowlist_load(empty, &keys, &nkeys), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "no NAME.pub"));
}

// A DEALER with opts d sends a HELLO to a CURVE ROUTER that admits `allowed`:
// 1 when the ROUTER got it (its peer.user then is *user), 0 when the send failed.
static int curve_hello(ent_link_endpoint_t *router, const ent_link_opts *d, char *user) {
    ent_link_endpoint_t *site = NULL;
    must(ent_link_dealer_connect(ent_link_address(router), d, &site), "connecting");
    ent_link_buf b = {0};
    ent_link_hello h = {.max_version = 1, .dp_size = 1, .tp_size = 1, .tokens_per_s = 1,
                        .tokens_per_step = 1};
    snprintf(h.name, sizeof h.name, "%s", "hello");
    must(ent_link_encode_hello(&b, 0, 0, &h), "encoding HELLO");
    ent_status st = ent_link_send(site, NULL, b.data, b.len);
    int got = 0;
    if (st == ENT_OK) {
        ent_link_incoming in;
        must(ent_link_recv(router, WAIT_MS, &in, &got), "receiving");
        if (got) snprintf(user, ENT_LINK_NAME_MAX + 1, "%s", in.peer.user);
    } else {
        assert_int_equal(st, ENT_ERR_IO);
        // the coordinator's own events (its monitor) are read while it waits
        ent_link_incoming in;
        must(ent_link_recv(router, 50, &in, &got), "receiving");
        assert_int_equal(got, 0);
    }
    ent_link_buf_free(&b);
    ent_link_close(&site);
    return got;
}

static void test_curve(void **state) {
    (void)state;
    ent_link_keypair coord, a, b, intruder;
    must(ent_link_keygen("coordinator", &coord), "keygen");
    must(ent_link_keygen("site-a", &a), "keygen");
    must(ent_link_keygen("site-b", &b), "keygen");
    must(ent_link_keygen("site-a", &intruder), "keygen"); // the right name, the wrong key
    ent_link_keypair allow[2] = {a, b};
    memset(allow[0].secret_key, 0, sizeof allow[0].secret_key);
    memset(allow[1].secret_key, 0, sizeof allow[1].secret_key);
    ent_link_opts ro = test_opts(4096);
    ro.curve = &coord;
    ro.allow = allow;
    ro.nallow = 2;
    ent_link_endpoint_t *router = NULL;
    must(ent_link_router_bind("tcp://127.0.0.1:*", &ro, &router), "binding");
    char user[ENT_LINK_NAME_MAX + 1] = "";
    ent_link_stats stats;

    // allowed keys get through, each under its own name
    ent_link_opts d = test_opts(4096);
    d.curve = &a;
    d.server_key = coord.public_key;
    assert_int_equal(curve_hello(router, &d, user), 1);
    assert_string_equal(user, "site-a");
    d.curve = &b;
    assert_int_equal(curve_hello(router, &d, user), 1);
    assert_string_equal(user, "site-b");
    ent_link_get_stats(router, &stats);
    assert_int_equal(stats.refused, 0);

    // an unknown key: refused by the ZAP handler, logged with its fingerprint,
    // and the site is told why
    d.curve = &intruder;
    d.send_timeout_ms = 700;
    assert_int_equal(curve_hello(router, &d, user), 0);
    assert_non_null(strstr(ent_last_error(), "refused this site's key"));
    ent_link_get_stats(router, &stats);
    assert_true(stats.refused >= 1);
    char fp[32];
    assert_non_null(strstr(stats.last_refusal, ent_link_key_fingerprint(intruder.public_key, fp,
                                                                         sizeof fp)));
    assert_non_null(strstr(stats.last_refusal, "not on the allowlist"));

    // a client without keys: no CURVE, no connection
    uint64_t before = stats.refused;
    ent_link_opts plain = test_opts(4096);
    plain.send_timeout_ms = 700;
    assert_int_equal(curve_hello(router, &plain, user), 0);
    assert_non_null(strstr(ent_last_error(), "CURVE"));
    ent_link_get_stats(router, &stats);
    assert_true(stats.refused > before);

    // a site given the wrong coordinator key
    d.curve = &a;
    d.server_key = b.public_key;
    assert_int_equal(curve_hello(router, &d, user), 0);
    assert_non_null(strstr(ent_last_error(), "coordinator_key"));
    ent_link_get_stats(router, &stats);
    assert_non_null(strstr(stats.last_refusal, "key exchange failed"));

    // and the allowed site still gets through after all that
    d.server_key = coord.public_key;
    d.send_timeout_ms = 10000;
    assert_int_equal(curve_hello(router, &d, user), 1);
    assert_string_equal(user, "site-a");
    ent_link_close(&router);
}

int main(void) {
    test_seed(); // printed, for ENT_TEST_SEED to repeat the run
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_vectors),  cmocka_unit_test(test_crc32c_random),
        cmocka_unit_test(test_roundtrip),       cmocka_unit_test(test_encoders_refuse),
        cmocka_unit_test(test_decoder_checks),  cmocka_unit_test(test_fuzz_plain),
        cmocka_unit_test(test_fuzz_forged),     cmocka_unit_test(test_loopback),
        cmocka_unit_test(test_endpoint_errors), cmocka_unit_test(test_key_files),
        cmocka_unit_test(test_curve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
