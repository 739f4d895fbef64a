// bench_codec: the coalition's delta codecs (runtime/coalition/) on one
// process: encode, encode with error feedback, decode and decode-accumulate
// throughput in GB/s of fp32 values, and the compression ratio against fp32,
// beside memcpy of the same array (the memory's own speed) as the baseline.
// Figures only: it never passes or fails.
//
// usage: bench_codec [VALUES [REPS]]   (default 33554432 values, 5 repetitions;
// GPT-2 small is 124439808). Threads: OMP_NUM_THREADS.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "ent_runtime.h"

#define MAX_REPS 64

typedef enum { ENCODE, FEEDBACK, DECODE, AXPY } op;

static double run(op what, const ent_codec *c, float *x, float *y, float *r, uint8_t *buf,
                  size_t cap, size_t n, size_t *len) {
    double t0 = bench_now();
    ent_status st = ENT_OK;
    switch (what) {
    case ENCODE: st = ent_codec_encode(c, x, n, buf, cap, len); break;
    case FEEDBACK:
        memcpy(y, x, n * sizeof(float)); // the delta is the feedback's scratch
        t0 = bench_now();
        st = ent_codec_encode_feedback(c, y, r, n, buf, cap, len);
        break;
    case DECODE: st = ent_codec_decode(buf, *len, y, n); break;
    case AXPY: st = ent_codec_decode_axpy(buf, *len, 0.25f, y, n); break;
    }
    double t = bench_now() - t0;
    if (st != ENT_OK) {
        fprintf(stderr, "bench_codec: %s\n", ent_last_error());
        exit(1);
    }
    return t;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : (size_t)1 << 25;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (n == 0 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "usage: bench_codec [VALUES >= 1 [REPS 1-%d]]\n", MAX_REPS);
        return 2;
    }
    const ent_codec codecs[] = {ent_codec_default(ENT_CODEC_INT8),
                                ent_codec_default(ENT_CODEC_INT4),
                                ent_codec_default(ENT_CODEC_TOPK)};
    size_t cap = 0;
    for (int i = 0; i < 3; i++) {
        size_t b;
        if (ent_codec_encoded_size(&codecs[i], n, &b) != ENT_OK) {
            fprintf(stderr, "bench_codec: %s\n", ent_last_error());
            return 1;
        }
        cap = b > cap ? b : cap;
    }
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    float *r = calloc(n, sizeof(float));
    uint8_t *buf = malloc(cap);
    if (!x || !y || !r || !buf) {
        fprintf(stderr, "bench_codec: out of memory for %zu values\n", n);
        return 1;
    }
    // a delta-like input: small normal values (fixed seed, Box-Muller)
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        double u1 = ((s >> 11) + 1) * 0x1.0p-53;
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        double u2 = (s >> 11) * 0x1.0p-53;
        x[i] = (float)(1e-3 * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    double gb = (double)n * sizeof(float) / 1e9, t[MAX_REPS];
    printf("bench_codec: %zu values (%.1f MB fp32), %d threads, median of %d\n", n, gb * 1e3,
           omp_get_max_threads(), reps);
    for (int k = 0; k < reps; k++) {
        double t0 = bench_now();
        memcpy(y, x, n * sizeof(float));
        t[k] = bench_now() - t0;
    }
    printf("baseline memcpy of the fp32 array: %.2f GB/s\n\n", gb / bench_median(t, reps));
    printf("%-5s %7s %10s %11s %9s %10s %10s %12s\n", "codec", "block", "bytes", "ratio/fp32",
           "bits/val", "encode", "enc+feedb", "decode  axpy");
    for (int i = 0; i < 3; i++) {
        const ent_codec *c = &codecs[i];
        size_t len = 0;
        double g[4];
        memset(r, 0, n * sizeof(float));
        for (op o = ENCODE; o <= AXPY; o++) {
            if (o == DECODE) run(ENCODE, c, x, y, r, buf, cap, n, &len);
            for (int k = 0; k < reps; k++) t[k] = run(o, c, x, y, r, buf, cap, n, &len);
            g[o] = gb / bench_median(t, reps);
        }
        char block[32];
        if (c->kind == ENT_CODEC_TOPK) snprintf(block, sizeof block, "%u/%u", c->k, c->block);
        else snprintf(block, sizeof block, "%u", c->block);
        printf("%-5s %7s %10zu %10.1fx %9.3f %7.2f GB/s %5.2f GB/s %5.2f %5.2f GB/s\n",
               ent_codec_name(c->kind), block, len, (double)n * 4 / (double)len,
               8.0 * (double)len / (double)n, g[ENCODE], g[FEEDBACK], g[DECODE], g[AXPY]);
    }
    printf("\nGB/s are of fp32 values (4 bytes each) in or out; encode+feedback adds the\n"
           "residual and decodes what it sent; axpy is decode-accumulate (the merge).\n");
    free(x);
    free(y);
    free(r);
    free(buf);
    return 0;
}
