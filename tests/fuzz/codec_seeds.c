// codec_seeds: writes valid encodings of every codec into DIR, the seed
// corpus of fuzz_codec (tests/fuzz/corpus/codec/ holds its output): int8,
// int4 and topk of seeded random vectors of a few lengths (one short block,
// an odd length, several blocks), and of a vector of zeros.
//   codec_seeds DIR
#include "ent_runtime.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: codec_seeds DIR\n");
        return 2;
    }
    const ent_codec_kind kinds[] = {ENT_CODEC_INT8, ENT_CODEC_INT4, ENT_CODEC_TOPK};
    const size_t lengths[] = {0, 1, 7, 300, 1001};
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    int bad = 0;
    for (size_t k = 0; k < 3; k++) {
        ent_codec c = ent_codec_default(kinds[k]);
        if (kinds[k] != ENT_CODEC_TOPK) c.block = 64; // several blocks in a small seed
        else c.block = 128, c.k = 8;
        for (size_t l = 0; l < sizeof lengths / sizeof lengths[0]; l++) {
            size_t n = lengths[l], cap = 0, len = 0;
            float *v = calloc(n + 1, sizeof(float));
            if (v == NULL || ent_codec_encoded_size(&c, n, &cap) != ENT_OK) return 1;
            unsigned char *buf = malloc(cap);
            for (size_t i = 0; i < n && l != 1; i++) { // length 1: a zero
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                v[i] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5) * 0.02f;
            }
            char path[4200];
            snprintf(path, sizeof path, "%s/%s-%zu", argv[1], ent_codec_name(kinds[k]), n);
            FILE *f = NULL;
            if (buf == NULL || ent_codec_encode(&c, v, n, buf, cap, &len) != ENT_OK ||
                (f = fopen(path, "wb")) == NULL || fwrite(buf, 1, len, f) != len) {
                fprintf(stderr, "codec_seeds: cannot write %s: %s\n", path, ent_last_error());
                bad = 1;
            }
            if (f != NULL && fclose(f) != 0) bad = 1;
            free(buf);
            free(v);
        }
    }
    return bad;
}
