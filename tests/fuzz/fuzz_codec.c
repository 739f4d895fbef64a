// fuzz_codec.c: a libFuzzer target for the coalition's delta decoder
// (runtime/coalition/codec.c: what a site's DELTA and the coordinator's
// UPDATE carry), built with clang -fsanitize=fuzzer,address,undefined
// (tests/CMakeLists.txt, test fuzz_codec: a bounded run over the corpus in
// tests/fuzz/corpus/codec/, valid encodings of each codec).
//
// Each input is tried as it is and "forged": its value count rewritten so
// that the header agrees with the input's length for the codec it names, as
// an attacker who knows the format would send it, so that the checks of the
// body meet the input and not only the length check. The properties, any
// failure of which aborts (a finding, the input saved by libFuzzer):
//   - the decoder reads nothing outside the input and writes nothing outside
//     the n values it is given (AddressSanitizer, UBSan);
//   - it accepts a buffer only with the value count its header says and the
//     exact size ent_codec_encoded_size gives for that codec and count;
//   - every value it accepts is finite;
//   - decoding and decoding into y = 0 with alpha = 1 accept the same
//     buffers and give the same values.
#include "runtime_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Values decoded at most (bigger headers are skipped: memory, not logic).
enum { MAX_VALUES = 1 << 16, COUNT_AT = 8 };

static void finding(const char *what) {
    fprintf(stderr, "fuzz_codec: %s\n", what);
    abort();
}

static void try_one(const uint8_t *d, size_t len) {
    ent_codec c;
    uint64_t n64 = 0;
    if (ent_codec_read_header(d, len, &c, &n64) != ENT_OK || n64 > MAX_VALUES) return;
    size_t n = (size_t)n64, want = 0;
    float *out = malloc(sizeof(float) * (n ? n : 1)), *y = calloc(n ? n : 1, sizeof(float));
    if (out == NULL || y == NULL) finding("out of memory");
    int ok = ent_codec_decode(d, len, out, n) == ENT_OK;
    int ok_axpy = ent_codec_decode_axpy(d, len, 1.0f, y, n) == ENT_OK;
    if (ok != ok_axpy) finding("decode and decode_axpy disagree on whether the buffer is good");
    if (ok) {
        if (ent_codec_encoded_size(&c, n, &want) != ENT_OK || want != len)
            finding("a buffer of another size than its codec and count give was accepted");
        for (size_t i = 0; i < n; i++) {
            if (!isfinite(out[i])) finding("a non-finite value was accepted");
            if (out[i] != y[i]) finding("decode and decode_axpy gave different values");
        }
        if (n > 0 && ent_codec_decode(d, len, out, n - 1) == ENT_OK)
            finding("the buffer decoded into fewer values than its header says");
    }
    free(out);
    free(y);
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    try_one(d, n);
    // forged: the value count (bytes 8-15) that makes the size right for the
    // codec the header names, where one does (the size grows with the count)
    if (n < ENT_CODEC_HEADER_BYTES) return 0;
    ent_codec c = {.kind = (ent_codec_kind)d[5], .block = get_u32(d + 16), .k = get_u32(d + 20)};
    if (ent_codec_check(&c) != ENT_OK) return 0;
    uint64_t lo = 0, hi = MAX_VALUES;
    while (lo < hi) { // the smallest count whose encoding takes at least n bytes
        uint64_t mid = lo + (hi - lo) / 2;
        size_t size = 0;
        if (ent_codec_encoded_size(&c, (size_t)mid, &size) != ENT_OK) return 0;
        if (size < n) lo = mid + 1;
        else hi = mid;
    }
    uint8_t *f = malloc(n);
    if (f == NULL) return 0;
    memcpy(f, d, n);
    for (int i = 0; i < 8; i++) f[COUNT_AT + i] = (uint8_t)(lo >> (8 * i));
    try_one(f, n);
    free(f);
    return 0;
}
