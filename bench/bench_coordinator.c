// bench_coordinator.c: what a round costs the coalition's coordinator, with
// its own functions (runtime/coalition/vec.c, comm/ link): S simulated sites
// on loopback each send a compressed delta of the model's size; the
// coordinator assembles them, merges them and takes the outer step
// (coal_round_merge: token-weighted merge, outer Nesterov, the update encoded
// with error feedback, applied to its anchor), and sends the update back to
// every site. Beside it, in the same run: memcpy of the bytes it receives and
// a plain streaming sum of S fp32 arrays of the model's size (the least any
// merge must do). Figures only: it never passes or fails.
//
// usage: bench_coordinator [PARAMS [REPS [SITES ...]]]
//   PARAMS: parameters (default 124439808, GPT-2 small); REPS: timed rounds
//   after one warm-up round, medians printed (default 3); SITES: the site
//   counts to run (default 3 16), run in increasing order. Threads of the
//   merge and the sum: OMP_NUM_THREADS.
//
// A site here is a thread with its own DEALER (ent_link_dealer_connect) to the
// ROUTER this program binds on 127.0.0.1, holding its delta encoded as a site
// encodes it (coal_vec_encode: the int8 default codec, 4 MiB chunks, error
// feedback from a zero residual, i.e. a site's first round; not timed). With
// no HELLO, site i takes id i (1..S) itself. Each round the main thread
// releases every site at once, assembles their chunks as the coordinator's
// on_delta does (ent_link_recv, ent_link_decode_delta, coal_vec_expect at a
// site's first chunk, coal_vec_add, keyed by the header's site id), runs
// coal_round_merge, sends the update to every site (coal_vec_send) and waits
// until every site has assembled all of it (decoded and added chunk by chunk,
// as a site does). The sites share the machine's cores with the coordinator.
#include "bench_util.h"
#include "coalition/coalition_impl.h" // coal_vec_*, coal_round_merge: the coordinator's own
#include "ent_comm.h"
#include "ent_runtime.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define MAX_REPS 64
#define MAX_SITES 256
#define MAX_RUNS 16
#define CHUNK_BYTES (4u << 20) // the coordinator's chunk size (coordinator.c, coord_setup)
#define WAIT_S 600.0           // a round still waiting after this has failed
#define FILL_BLOCK 65536       // values drawn from one seed

static void check(ent_status st, const char *what) {
    if (st == ENT_OK) return;
    fprintf(stderr, "bench_coordinator: %s: %s\n", what, ent_last_error());
    exit(1);
}

// malloc, or calloc (zero pages mapped on first touch) when zero is set.
static void *alloc_or_die(size_t bytes, int zero) {
    void *p = zero ? calloc(bytes > 0 ? bytes : 1, 1) : malloc(bytes > 0 ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "bench_coordinator: out of memory for %zu bytes\n", bytes);
        exit(1);
    }
    return p;
}

// ---------------------------------------------------------------------------
// seeded values

static uint64_t mix64(uint64_t z) { // splitmix64's finaliser
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// n values of mean 0 and about sigma: each block of FILL_BLOCK at its own
// scale between sigma / 4 and 4 sigma (tensors differ), near-normal within it
// (a sum of four uniforms); block b drawn from (seed, b), so the values do not
// depend on the thread count.
static void fill_values(float *x, size_t n, uint64_t seed, float sigma) {
    size_t nb = (n + FILL_BLOCK - 1) / FILL_BLOCK;
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        uint64_t s = mix64(seed ^ mix64(b)) | 1;
        float scale = sigma * exp2f((float)((double)(s >> 11) * 0x1.0p-53 * 4.0 - 2.0));
        scale /= 37837.23f; // the standard deviation of a sum of four 16-bit uniforms
        size_t end = (b + 1) * FILL_BLOCK < n ? (b + 1) * FILL_BLOCK : n;
        for (size_t i = b * FILL_BLOCK; i < end; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            int32_t sum = (int32_t)(s & 0xffff) + (int32_t)((s >> 16) & 0xffff) +
                          (int32_t)((s >> 32) & 0xffff) + (int32_t)(s >> 48) - 131070;
            x[i] = scale * (float)sum;
        }
    }
}

// ---------------------------------------------------------------------------
// the simulated sites

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t go;  // rounds released so far (round go - 1 is the current one)
    int stop;
    int done;     // sites holding the current round's whole update
} rendezvous;

typedef struct {
    pthread_t thread;
    uint32_t id;
    const char *endpoint;
    const ent_codec *codec;
    size_t n;
    coal_vec delta;       // encoded as the site would send it
    uint64_t update_hash; // the anchor hash the last update carried
    rendezvous *rv;
} sender;

static void *sender_main(void *arg) {
    sender *s = arg;
    ent_link_endpoint_t *ep = NULL;
    char what[64];
    snprintf(what, sizeof what, "site %u", s->id);
    check(ent_link_dealer_connect(s->endpoint, NULL, &ep), what);
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&s->rv->mu);
        while (s->rv->go == seen && !s->rv->stop) pthread_cond_wait(&s->rv->cv, &s->rv->mu);
        int stop = s->rv->stop;
        seen = s->rv->go;
        pthread_mutex_unlock(&s->rv->mu);
        if (stop) break;
        uint64_t round = seen - 1;
        check(coal_vec_send(ep, NULL, ENT_LINK_DELTA, s->id, round, &s->delta), what);
        // the update, chunk by chunk, as a site's leader takes it
        coal_vec up = {0};
        check(coal_vec_expect(&up, (uint16_t)s->codec->kind, s->codec, s->n, CHUNK_BYTES), what);
        double until = bench_now() + WAIT_S;
        while (up.received < up.count) {
            if (bench_now() > until) {
                fprintf(stderr, "bench_coordinator: site %u: no whole update within %.0f s\n",
                        s->id, WAIT_S);
                exit(1);
            }
            ent_link_incoming in;
            int got = 0, complete = 0;
            check(ent_link_recv(ep, 1000, &in, &got), what);
            if (!got) continue;
            ent_link_chunk c;
            ent_link_header h;
            check(ent_link_decode_update(in.bytes, in.len, in.peer.name, &h, &c), what);
            if (h.round != round) {
                fprintf(stderr, "bench_coordinator: site %u: an update of round %llu in round "
                        "%llu\n", s->id, (unsigned long long)h.round, (unsigned long long)round);
                exit(1);
            }
            check(coal_vec_add(&up, &c, in.peer.name, &complete), what);
        }
        s->update_hash = up.anchor_hash;
        coal_vec_free(&up);
        pthread_mutex_lock(&s->rv->mu);
        s->rv->done++;
        pthread_cond_broadcast(&s->rv->cv);
        pthread_mutex_unlock(&s->rv->mu);
    }
    ent_link_close(&ep);
    return NULL;
}

// ---------------------------------------------------------------------------
// the baselines

// out = sum_s w[s] * x[s], one pass over the S arrays, block by block (out's
// block stays in cache while the sites are added to it).
static void streaming_sum(float *const *x, const float *w, int S, float *out, size_t n) {
    const size_t block = 4096;
    size_t nb = (n + block - 1) / block;
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        size_t lo = b * block, hi = lo + block < n ? lo + block : n;
        for (size_t i = lo; i < hi; i++) out[i] = w[0] * x[0][i];
        for (int s = 1; s < S; s++)
            for (size_t i = lo; i < hi; i++) out[i] += w[s] * x[s][i];
    }
}

// ---------------------------------------------------------------------------
// one site count

typedef struct {
    double recv_s, merge_s, update_s, round_s; // medians
    double memcpy_s, sum_s;                   // baselines, medians
    size_t delta_bytes, update_bytes, coord_bytes;
    long peak_kib;
} result;

static long peak_rss_kib(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return ru.ru_maxrss; // KiB on Linux
}

static result run_sites(int S, size_t n, int reps) {
    result res = {0};
    ent_codec codec;
    check(ent_codec_parse("int8", &codec), "codec");
    const ent_outer_opt outer = ent_outer_defaults();
    // the coordinator's state, allocated as coord_setup does
    float *anchor = alloc_or_die(n * sizeof(float), 1);
    float *momentum = alloc_or_die(n * sizeof(float), 1);
    float *resid = alloc_or_die(n * sizeof(float), 1), *g = alloc_or_die(n * sizeof(float), 1);
    fill_values(anchor, n, 0xa17c0, 0.02f);
    uint64_t anchor0 = ent_anchor_hash(anchor, n);
    ent_link_endpoint_t *ep = NULL;
    check(ent_link_router_bind("tcp://127.0.0.1:*", NULL, &ep), "bind");
    // the sites' deltas, encoded as a site encodes them (not timed)
    rendezvous rv = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    sender *sites = alloc_or_die((size_t)S * sizeof *sites, 1);
    float *x = alloc_or_die(n * sizeof(float), 0), *r = alloc_or_die(n * sizeof(float), 0);
    for (int i = 0; i < S; i++) {
        sender *s = &sites[i];
        *s = (sender){.id = (uint32_t)i + 1, .endpoint = ent_link_address(ep), .codec = &codec,
                      .n = n, .rv = &rv};
        fill_values(x, n, 0x5173000ULL + s->id, 1e-3f);
        memset(r, 0, n * sizeof(float));
        check(coal_vec_encode(&s->delta, (uint16_t)codec.kind, &codec, x, r, n, CHUNK_BYTES),
              "encode a delta");
        s->delta.anchor_hash = anchor0;
        s->delta.tokens = 65536u * (8u + (uint64_t)(i % 5)); // unequal weights
    }
    free(x);
    free(r);
    for (int i = 0; i < S; i++)
        if (pthread_create(&sites[i].thread, NULL, sender_main, &sites[i]) != 0) {
            fprintf(stderr, "bench_coordinator: cannot start site thread %d\n", i + 1);
            exit(1);
        }
    res.delta_bytes = sites[0].delta.len;

    // rounds: 0 is the warm-up (connections, first touch of the state)
    double t_recv[MAX_REPS], t_merge[MAX_REPS], t_update[MAX_REPS], t_round[MAX_REPS];
    coal_vec *recv = alloc_or_die((size_t)S * sizeof *recv, 1);
    ent_link_peer *peers = alloc_or_die((size_t)S * sizeof *peers, 1);
    const coal_vec **deltas = alloc_or_die((size_t)S * sizeof *deltas, 1);
    uint32_t *ids = alloc_or_die((size_t)S * sizeof *ids, 1);
    for (int round = 0; round <= reps; round++) {
        double t0 = bench_now();
        pthread_mutex_lock(&rv.mu);
        rv.go = (uint64_t)round + 1;
        rv.done = 0;
        pthread_cond_broadcast(&rv.cv);
        pthread_mutex_unlock(&rv.mu);
        // every site's delta, chunk by chunk, as on_delta assembles it
        int complete = 0;
        while (complete < S) {
            if (bench_now() - t0 > WAIT_S) {
                fprintf(stderr, "bench_coordinator: %d of %d deltas within %.0f s\n", complete, S,
                        WAIT_S);
                exit(1);
            }
            ent_link_incoming in;
            int got = 0, done = 0;
            check(ent_link_recv(ep, 1000, &in, &got), "receive");
            if (!got) continue;
            ent_link_chunk ch;
            ent_link_header hd;
            check(ent_link_decode_delta(in.bytes, in.len, in.peer.name, &hd, &ch), "a DELTA");
            if (hd.site < 1 || hd.site > (uint32_t)S || hd.round != (uint64_t)round) {
                fprintf(stderr, "bench_coordinator: a DELTA from site %u of round %llu\n",
                        hd.site, (unsigned long long)hd.round);
                exit(1);
            }
            int k = (int)hd.site - 1;
            if (recv[k].count == 0) {
                check(coal_vec_expect(&recv[k], (uint16_t)codec.kind, &codec, n, CHUNK_BYTES),
                      "expect a delta");
                peers[k] = in.peer;
            } else if (in.peer.id_len != peers[k].id_len ||
                       memcmp(in.peer.id, peers[k].id, in.peer.id_len) != 0) {
                fprintf(stderr, "bench_coordinator: site %u's chunks come from two peers\n",
                        hd.site);
                exit(1);
            }
            check(coal_vec_add(&recv[k], &ch, in.peer.name, &done), "add a chunk");
            complete += done;
        }
        double t1 = bench_now();
        coal_vec up = {0};
        for (int i = 0; i < S; i++) {
            deltas[i] = &recv[i];
            ids[i] = (uint32_t)i + 1;
        }
        check(coal_round_merge(deltas, NULL, ids, S, &outer, &codec, CHUNK_BYTES, anchor,
                               momentum, resid, g, n, &up),
              "coal_round_merge");
        double t2 = bench_now();
        for (int i = 0; i < S; i++)
            check(coal_vec_send(ep, &peers[i], ENT_LINK_UPDATE, (uint32_t)i + 1,
                                (uint64_t)round, &up),
                  "send the update");
        pthread_mutex_lock(&rv.mu);
        while (rv.done < S) pthread_cond_wait(&rv.cv, &rv.mu);
        pthread_mutex_unlock(&rv.mu);
        double t3 = bench_now();
        for (int i = 0; i < S; i++)
            if (sites[i].update_hash != up.anchor_hash) {
                fprintf(stderr, "bench_coordinator: site %d's update says anchor %016llx, the "
                        "coordinator's %016llx\n", i + 1,
                        (unsigned long long)sites[i].update_hash,
                        (unsigned long long)up.anchor_hash);
                exit(1);
            }
        // what the coordinator holds at its fullest: every delta, the update,
        // anchor, momentum, residual and scratch
        res.coord_bytes = 4 * n * sizeof(float) + up.len;
        for (int i = 0; i < S; i++) res.coord_bytes += recv[i].len;
        res.update_bytes = up.len;
        coal_vec_free(&up);
        for (int i = 0; i < S; i++) coal_vec_free(&recv[i]);
        if (round > 0) {
            t_recv[round - 1] = t1 - t0;
            t_merge[round - 1] = t2 - t1;
            t_update[round - 1] = t3 - t2;
            t_round[round - 1] = t3 - t0;
        }
    }
    res.peak_kib = peak_rss_kib();
    res.recv_s = bench_median(t_recv, reps);
    res.merge_s = bench_median(t_merge, reps);
    res.update_s = bench_median(t_update, reps);
    res.round_s = bench_median(t_round, reps);
    pthread_mutex_lock(&rv.mu);
    rv.stop = 1;
    pthread_cond_broadcast(&rv.cv);
    pthread_mutex_unlock(&rv.mu);
    for (int i = 0; i < S; i++) pthread_join(sites[i].thread, NULL);
    ent_link_close(&ep);
    free(recv);
    free(peers);
    free(deltas);
    free(ids);
    free(anchor);
    free(momentum);
    free(resid);
    free(g);

    // baseline 1: memcpy of the bytes received (into memory touched before)
    size_t total = 0;
    for (int i = 0; i < S; i++) total += sites[i].delta.len;
    uint8_t *dst = alloc_or_die(total, 0);
    double t[MAX_REPS];
    for (int k = -1; k < reps; k++) {
        double t0 = bench_now();
        size_t off = 0;
        for (int i = 0; i < S; i++) {
            memcpy(dst + off, sites[i].delta.data, sites[i].delta.len);
            off += sites[i].delta.len;
        }
        if (k >= 0) t[k] = bench_now() - t0;
    }
    res.memcpy_s = bench_median(t, reps);
    free(dst);
    for (int i = 0; i < S; i++) coal_vec_free(&sites[i].delta);
    free(sites);

    // baseline 2: a weighted sum of S fp32 arrays of n, the least a merge does
    float **xs = alloc_or_die((size_t)S * sizeof *xs, 0);
    float *w = alloc_or_die((size_t)S * sizeof *w, 0), *out = alloc_or_die(n * sizeof(float), 0);
    for (int i = 0; i < S; i++) {
        xs[i] = alloc_or_die(n * sizeof(float), 0);
        fill_values(xs[i], n, 0x5173000ULL + (uint64_t)i + 1, 1e-3f);
        w[i] = 1.0f / (float)S;
    }
    for (int k = -1; k < reps; k++) {
        double t0 = bench_now();
        streaming_sum(xs, w, S, out, n);
        if (k >= 0) t[k] = bench_now() - t0;
    }
    res.sum_s = bench_median(t, reps);
    for (int i = 0; i < S; i++) free(xs[i]);
    free(xs);
    free(w);
    free(out);
    return res;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 124439808;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    int counts[MAX_RUNS] = {3, 16}, runs = 2;
    if (argc > 3) {
        runs = argc - 3;
        for (int i = 0; i < runs && i < MAX_RUNS; i++) counts[i] = atoi(argv[3 + i]);
    }
    int ok = n > 0 && n <= ENT_LINK_PARAMS_MAX && reps >= 1 && reps <= MAX_REPS &&
             runs <= MAX_RUNS;
    for (int i = 0; ok && i < runs; i++) ok = counts[i] >= 1 && counts[i] <= MAX_SITES;
    if (!ok) {
        fprintf(stderr, "usage: bench_coordinator [PARAMS >= 1 [REPS 1-%d [SITES ...]]] (up to %d "
                "site counts, each 1-%d)\n", MAX_REPS, MAX_RUNS, MAX_SITES);
        return 2;
    }
    qsort(counts, (size_t)runs, sizeof *counts, cmp_int); // peak RSS is a high-water mark
    double mb = 1e-6, gib = 1.0 / (1024.0 * 1024.0 * 1024.0);
    printf("bench_coordinator: %zu parameters (%.1f MB fp32), int8 deltas in %u MiB chunks, "
           "%d threads, median of %d rounds after 1 warm-up\n", n, (double)n * 4 * mb,
           CHUNK_BYTES >> 20, omp_get_max_threads(), reps);
    printf("sites are threads with their own DEALER on 127.0.0.1, on the same cores\n");
    for (int i = 0; i < runs; i++) {
        int S = counts[i];
        result r = run_sites(S, n, reps);
        double in_bytes = (double)S * (double)r.delta_bytes;
        printf("\n%d sites: deltas %.1f MB each (%.1f MB in), update %.1f MB\n", S,
               (double)r.delta_bytes * mb, in_bytes * mb, (double)r.update_bytes * mb);
        printf("  receive, release to last chunk assembled  %10.1f ms %6.2f GB/s   memcpy of the "
               "same bytes %9.1f ms %6.2f GB/s\n", r.recv_s * 1e3, in_bytes / r.recv_s * 1e-9,
               r.memcpy_s * 1e3, in_bytes / r.memcpy_s * 1e-9);
        printf("  merge, outer step, encode, apply          %10.1f ms               streaming "
               "sum of %d fp32 arrays %9.1f ms  merge %.1fx\n", r.merge_s * 1e3, S,
               r.sum_s * 1e3, r.merge_s / r.sum_s);
        printf("  update, sent until every site has it      %10.1f ms %6.2f GB/s\n",
               r.update_s * 1e3, (double)S * (double)r.update_bytes / r.update_s * 1e-9);
        printf("  whole round                               %10.1f ms\n", r.round_s * 1e3);
        printf("  memory: the coordinator's arrays %.3f GiB (the deltas, the update, anchor, "
               "momentum, residual, scratch)\n", (double)r.coord_bytes * gib);
        printf("          process peak RSS %.3f GiB (also the sites' copies, ZeroMQ's queues)\n",
               (double)r.peak_kib * 1024.0 * gib);
    }
    printf("\nGB/s of encoded bytes (the deltas in; the update out, once per site). The merge "
           "reads int8 deltas (about 1 byte a parameter), the sum fp32 arrays (4).\n");
    return 0;
}
