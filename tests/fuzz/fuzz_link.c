// fuzz_link.c: a libFuzzer target for every decoder of the coalition link
// (comm/link_proto.c), built with clang -fsanitize=fuzzer,address,undefined
// (tests/CMakeLists.txt, test fuzz_link: a bounded run over the corpus in
// tests/fuzz/corpus/link/).
//
// Each input is tried twice: as it is, and "forged": with its payload length,
// payload checksum and header checksum recomputed, as an attacker who knows
// the format would send it, so that the field checks behind the checksums
// meet the input and not only the CRC. Every decoder sees both (the header's
// and each type's, whatever the type field says). The properties, any
// failure of which aborts (a finding, the input saved by libFuzzer):
//   - no decoder reads outside the input or crashes (AddressSanitizer, UBSan);
//   - a type decoder never accepts what the header decoder refuses;
//   - whatever a type decoder accepts re-encodes to exactly the same bytes
//     (every field has one encoding, so nothing a check let through can hide
//     in a byte the decoder ignored).
#include "ent_comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PEER "fuzz"

static void must_equal(const ent_link_buf *b, const uint8_t *d, size_t n, const char *what) {
    if (b->len != n || memcmp(b->data, d, n) != 0) {
        fprintf(stderr, "fuzz_link: a %s decoded but re-encodes to %zu other bytes (input %zu)\n",
                what, b->len, n);
        abort();
    }
}

static void not_accepted(const char *what) {
    fprintf(stderr, "fuzz_link: the %s decoder accepted a message the header decoder refused\n",
            what);
    abort();
}

static void try_all(const uint8_t *d, size_t n) {
    ent_link_header h;
    int header_ok = ent_link_decode_header(d, n, PEER, &h) == ENT_OK;
    ent_link_buf b = {0};
    ent_link_header hh;
#define TRY(TYPE, decode, encode, ...)                                                             \
    do {                                                                                           \
        TYPE m;                                                                                    \
        if (decode(d, n, PEER, &hh, &m) == ENT_OK) {                                               \
            if (!header_ok) not_accepted(#decode);                                                 \
            if (encode(&b, hh.site, hh.round, &m) != ENT_OK) {                                     \
                fprintf(stderr, "fuzz_link: %s accepted what %s refuses: %s\n", #decode, #encode,  \
                        ent_last_error());                                                         \
                abort();                                                                           \
            }                                                                                      \
            must_equal(&b, d, n, #TYPE);                                                           \
        }                                                                                          \
    } while (0)
    TRY(ent_link_hello, ent_link_decode_hello, ent_link_encode_hello);
    TRY(ent_link_welcome, ent_link_decode_welcome, ent_link_encode_welcome);
    TRY(ent_link_heartbeat, ent_link_decode_heartbeat, ent_link_encode_heartbeat);
    TRY(ent_link_round_plan, ent_link_decode_round_plan, ent_link_encode_round_plan);
    TRY(ent_link_chunk, ent_link_decode_delta, ent_link_encode_delta);
    TRY(ent_link_chunk, ent_link_decode_update, ent_link_encode_update);
    TRY(ent_link_chunk, ent_link_decode_state, ent_link_encode_state);
    TRY(ent_link_ledger, ent_link_decode_ledger, ent_link_encode_ledger);
    TRY(ent_link_reason, ent_link_decode_leave, ent_link_encode_leave);
    TRY(ent_link_reason, ent_link_decode_error, ent_link_encode_error);
#undef TRY
    ent_link_buf_free(&b);
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    try_all(data, size);
    if (size < ENT_LINK_HEADER_BYTES) return 0;
    // forged: the length and both checksums made right for these bytes
    uint8_t *f = malloc(size);
    if (f == NULL) return 0;
    memcpy(f, data, size);
    size_t plen = size - ENT_LINK_HEADER_BYTES;
    put32(f + 24, (uint32_t)plen);
    put32(f + 28, plen ? ent_link_crc32c(0, f + ENT_LINK_HEADER_BYTES, plen) : 0);
    put32(f + 32, ent_link_crc32c(0, f, 32));
    try_all(f, size);
    free(f);
    return 0;
}
