// link_capture: checks what a site sent the coordinator, from the bytes
// wan_proxy --capture-dir copied off the wire (tests/coalition_test.sh).
//
//   link_capture CAPTURE [--shard FILE ...] [--text FILE ...] [--expect-deltas N]
//                        [--encrypted]
//
// CAPTURE is one TCP stream from a site's DEALER to the coordinator's
// ROUTER. It must parse, to its last byte, as ZeroMQ's ZMTP 3 framing (the
// 64-byte greeting, commands such as READY, then messages), and every
// message must be one Entente protocol message of two frames that its
// decoder accepts, of a type a site sends (HELLO, HEARTBEAT, DELTA, LEAVE);
// every DELTA chunk's data must be a compressed delta whose header agrees
// with the chunk. Then no 16-byte window drawn (seeded) from the token
// region of each --shard, nor from each --text file, may occur anywhere in
// the capture: the site's data did not travel. Prints the message counts;
// exit 0 when all holds, 1 otherwise (naming the byte offset), 2 for usage.
//
// --encrypted: the stream of a CurveZMQ link instead. The greeting must name
// CURVE, and after it every frame must be a ZMTP command of the handshake or
// a MESSAGE box (libzmq sends those as data frames that begin with the
// command's name): no message travels in the clear, the bytes "ENTL"
// (every Entente message's magic) occur nowhere, and at least `N` MESSAGE
// boxes came (one HELLO, N DELTA chunks).
#include "ent_runtime.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 16
#define WINDOWS_PER_FILE 400

static uint8_t *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "link_capture: cannot open %s\n", path);
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got; buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            uint8_t *b = realloc(buf, cap *= 2);
            if (b == NULL) free(buf);
            buf = b;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

static int fail(size_t at, const char *why) {
    printf("FAIL: capture byte %zu: %s\n", at, why);
    return 1;
}

// One frame at *pos: its flags, body and size; 0 when the bytes run out.
static int next_frame(const uint8_t *b, size_t len, size_t *pos, int *flags, const uint8_t **body,
                      uint64_t *size) {
    size_t p = *pos;
    if (p + 2 > len) return 0;
    *flags = b[p++];
    if (*flags & 2) {
        if (p + 8 > len) return 0;
        uint64_t s = 0;
        for (int i = 0; i < 8; i++) s = s << 8 | b[p++];
        *size = s;
    } else {
        *size = b[p++];
    }
    if (*size > len - p) return 0;
    *body = b + p;
    *pos = p + (size_t)*size;
    return 1;
}

static int check_messages(const uint8_t *b, size_t len, long expect_deltas) {
    if (len < 64 || b[0] != 0xff || b[9] != 0x7f || b[10] != 3)
        return fail(0, "no ZMTP 3 greeting");
    if (memcmp(b + 12, "NULL", 5) != 0) return fail(12, "the security mechanism is not NULL");
    size_t pos = 64;
    long count[ENT_LINK_TYPE_END] = {0}, commands = 0;
    while (pos < len) {
        size_t at = pos;
        int flags;
        const uint8_t *body;
        uint64_t size;
        if (!next_frame(b, len, &pos, &flags, &body, &size))
            return fail(at, "a frame cut short (the capture ends inside it)");
        if (flags & ~7) return fail(at, "reserved frame flag bits set");
        if (flags & 4) { // a ZMTP command (READY, ...): not data
            commands++;
            continue;
        }
        if (!(flags & 1) || size != ENT_LINK_HEADER_BYTES)
            return fail(at, "a message whose first frame is not a 36-byte header followed by more");
        const uint8_t *head = body;
        size_t at2 = pos;
        if (!next_frame(b, len, &pos, &flags, &body, &size))
            return fail(at2, "a payload frame cut short");
        if (flags & 5) return fail(at2, "a message of more than two frames, or a command inside one");
        uint8_t *whole = malloc(ENT_LINK_HEADER_BYTES + (size_t)size + 1);
        if (whole == NULL) return fail(at, "out of memory");
        memcpy(whole, head, ENT_LINK_HEADER_BYTES);
        memcpy(whole + ENT_LINK_HEADER_BYTES, body, (size_t)size);
        size_t n = ENT_LINK_HEADER_BYTES + (size_t)size;
        ent_link_header h;
        ent_status st = ent_link_decode_header(whole, n, "capture", &h);
        if (st == ENT_OK) {
            switch (h.type) {
            case ENT_LINK_HELLO: {
                ent_link_hello m;
                st = ent_link_decode_hello(whole, n, "capture", NULL, &m);
                break;
            }
            case ENT_LINK_HEARTBEAT: {
                ent_link_heartbeat m;
                st = ent_link_decode_heartbeat(whole, n, "capture", NULL, &m);
                break;
            }
            case ENT_LINK_LEAVE: {
                ent_link_reason m;
                st = ent_link_decode_leave(whole, n, "capture", NULL, &m);
                break;
            }
            case ENT_LINK_DELTA: {
                ent_link_chunk m;
                ent_codec codec;
                uint64_t values = 0;
                st = ent_link_decode_delta(whole, n, "capture", NULL, &m);
                if (st == ENT_OK) st = ent_codec_read_header(m.data, m.data_len, &codec, &values);
                if (st == ENT_OK && (values != m.length || (uint16_t)codec.kind != m.codec))
                    st = ent_fail(ENT_ERR_INPUT, "a DELTA chunk of %llu values in codec %u holds "
                                  "%llu in codec %d", (unsigned long long)m.length, m.codec,
                                  (unsigned long long)values, codec.kind);
                break;
            }
            default:
                st = ent_fail(ENT_ERR_INPUT, "a %s, which a site never sends",
                              ent_link_type_name(h.type));
            }
        }
        free(whole);
        if (st != ENT_OK) return fail(at, ent_last_error());
        count[h.type]++;
    }
    printf("capture: %zu bytes: %ld ZMTP commands; HELLO %ld, HEARTBEAT %ld, DELTA %ld, LEAVE %ld\n",
           len, commands, count[ENT_LINK_HELLO], count[ENT_LINK_HEARTBEAT], count[ENT_LINK_DELTA],
           count[ENT_LINK_LEAVE]);
    if (count[ENT_LINK_HELLO] != 1) return fail(len, "not exactly one HELLO");
    if (expect_deltas >= 0 && count[ENT_LINK_DELTA] != expect_deltas) {
        char why[96];
        snprintf(why, sizeof why, "%ld DELTA chunks, expected %ld", count[ENT_LINK_DELTA],
                 expect_deltas);
        return fail(len, why);
    }
    return 0;
}

static int check_encrypted(const uint8_t *b, size_t len, long expect_deltas) {
    if (len < 64 || b[0] != 0xff || b[9] != 0x7f || b[10] != 3)
        return fail(0, "no ZMTP 3 greeting");
    if (memcmp(b + 12, "CURVE", 6) != 0) return fail(12, "the security mechanism is not CURVE");
    const uint8_t *magic = memmem(b, len, "ENTL", 4);
    if (magic != NULL)
        return fail((size_t)(magic - b), "the magic of an Entente message, in the clear");
    size_t pos = 64;
    long boxes = 0, handshake = 0;
    while (pos < len) {
        size_t at = pos;
        int flags;
        const uint8_t *body;
        uint64_t size;
        if (!next_frame(b, len, &pos, &flags, &body, &size))
            return fail(at, "a frame cut short (the capture ends inside it)");
        // libzmq sends the boxes as data frames that start like the command
        if (size >= 8 && memcmp(body, "\x07MESSAGE", 8) == 0) boxes++;
        else if (flags & 4) handshake++;
        else return fail(at, "a data frame that is not a CurveZMQ MESSAGE box");
    }
    printf("capture: %zu bytes under CURVE: %ld handshake commands, %ld MESSAGE boxes\n", len,
           handshake, boxes);
    // a message of two frames travels as two boxes
    if (expect_deltas >= 0 && boxes < 2 * (1 + expect_deltas))
        return fail(len, "fewer MESSAGE boxes than a HELLO and the DELTAs need");
    return 0;
}

// Seeded windows of a file (from byte `from` on) must not occur in the capture.
static int check_absent(const uint8_t *cap, size_t len, const char *path, size_t from) {
    size_t n = 0;
    uint8_t *data = read_all(path, &n);
    if (data == NULL) return 1;
    if (n < from + WINDOW) {
        free(data);
        printf("FAIL: %s is too short to draw windows from\n", path);
        return 1;
    }
    uint64_t x = 0x9e3779b97f4a7c15ull ^ n;
    int found = 0;
    for (int w = 0; w < WINDOWS_PER_FILE && !found; w++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t at = from + (size_t)(x % (n - from - WINDOW + 1));
        if (memmem(cap, len, data + at, WINDOW) != NULL) {
            printf("FAIL: bytes %zu..%zu of %s occur in the capture\n", at, at + WINDOW - 1, path);
            found = 1;
        }
    }
    free(data);
    if (!found) printf("capture: none of %d windows of %s occurs in it\n", WINDOWS_PER_FILE, path);
    return found;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: link_capture CAPTURE [--shard FILE ...] [--text FILE ...] "
                        "[--expect-deltas N] [--encrypted]\n");
        return 2;
    }
    size_t len = 0;
    uint8_t *cap = read_all(argv[1], &len);
    if (cap == NULL) return 2;
    long expect = -1;
    int encrypted = 0;
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--encrypted") == 0) encrypted = 1;
    for (int i = 2; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--expect-deltas") == 0) expect = strtol(argv[i + 1], NULL, 10);
    int bad = encrypted ? check_encrypted(cap, len, expect) : check_messages(cap, len, expect);
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--encrypted") == 0) {
            i--; // a flag: no value
            continue;
        }
        if (strcmp(argv[i], "--shard") == 0)
            bad |= check_absent(cap, len, argv[i + 1], 4 * ENT_SHARD_HEADER_INTS);
        else if (strcmp(argv[i], "--text") == 0)
            bad |= check_absent(cap, len, argv[i + 1], 0);
        else if (strcmp(argv[i], "--expect-deltas") != 0) {
            fprintf(stderr, "link_capture: unknown argument %s\n", argv[i]);
            bad = 2;
        }
    }
    free(cap);
    return bad;
}
