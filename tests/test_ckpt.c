// test_ckpt.c: the savers' contract and reading back, in one process and
// under mpirun (mpi_ckpt_3: every rank writes its share of each save, and the
// ranks, data-parallel replicas, share the reading and broadcast it).
//
//  - staged: after ent_ckpt_save returns, the caller may read its arrays; once
//    ent_ckpt_wait_staged returns it may overwrite them, and the checkpoint
//    still holds the state as it was at the save (the arrays are large enough
//    that a copy still running would be caught overwritten);
//  - wait_staged without a save in flight, or on a synchronous saver, returns
//    at once and adds nothing to the blocked time;
//  - two saves in a row: the second waits for the first, both commit, and
//    `latest` names the second;
//  - parts of the moments, as ZeRO shards them (ranges that start or end
//    inside a chunk, on a boundary, in the edge chunk), read back exactly;
//  - a damaged chunk, read by one rank only, fails the read on every rank
//    (and nothing is broadcast);
//  - any byte of a chunk changed (edges, block and piece boundaries, the
//    stored checksum, the edge chunk's padding, seeded random places) fails
//    the read, naming the dataset and the chunk, read alone and by the
//    reader threads with the whole state (which name the first damaged chunk
//    in file order);
//  - coalition state (anchor weights, outer momentum, round, ledger) is
//    written when present, by synchronous and asynchronous saves, verifies,
//    and reads back; asking a file without it for it is a clear error;
//  - retention (keep) removes only the saver's own checkpoints (or those it
//    adopts), and the check before the first save names a directory that
//    cannot be created;
//  - metadata: every file is written in HDF5's 1.10 format (superblock 3,
//    checksummed metadata; under mpirun through the layout driver and
//    MPI-IO); the metadata digest is SHA-256 (FIPS 180-4 vectors), catches a
//    changed or missing attribute, and texts of every HDF5 kind (NULLPAD
//    without a NUL, SPACEPAD, variable-length) read back and hash alike.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>
#include <fcntl.h>

#include "ckpt_impl.h" // the digest's own tests
#include "ent_ckpt.h"
#include "ent_runtime.h"
#include "kernel_math.h"
#include "ref.h"

static char root[64];
static ent_comm_t *comm;
static ent_grid *grid;
static int rank, ranks;

typedef struct {
    ent_param_table table;
    float *p, *m, *v;
    ent_ckpt_shard sh;
} state;

// A model state of about 3 x 10M floats, each value a function of its index
// and a seed, so that what was saved can be told from what was written after.
static float value(size_t i, int arena, uint32_t seed) {
    uint32_t x = (uint32_t)(i * 2654435761u) ^ (seed * 40503u + (uint32_t)arena * 977u);
    return (float)(x >> 8) * 1e-7f - 0.5f;
}

static void fill(state *s, uint32_t seed) {
    float *a[3] = {s->p, s->m, s->v};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < s->table.total; i++) a[k][i] = value(i, k, seed);
}

static const ent_model_shape shape = {.layers = 2, .heads = 8, .width = 512, .context = 256,
                                      .vocab = 12000, .padded_vocab = 12032};

// What the files of these tests must hold (for `ckpt verify`, the runtime
// derives it from a checkpoint's stored configuration).
static ent_status expect_table(ent_ckpt_t *ck, void *ctx, ent_param_table *table) {
    (void)ck;
    (void)ctx;
    return ent_param_table_build(&shape, 1, table);
}

static void state_new_shaped(state *s, const ent_model_shape *shape) {
    assert_int_equal(ent_param_table_build(shape, 1, &s->table), ENT_OK);
    size_t n = s->table.total;
    s->p = malloc(sizeof(float) * n);
    s->m = malloc(sizeof(float) * n);
    s->v = malloc(sizeof(float) * n);
    assert_true(s->p != NULL && s->m != NULL && s->v != NULL);
    // each rank writes its share, and reads as one of `ranks` DP replicas
    size_t share = n / (size_t)ranks, first = share * (size_t)rank;
    s->sh = (ent_ckpt_shard){.table = &s->table, .tp_size = 1, .params = s->p, .adam_m = s->m,
                             .adam_v = s->v, .state_count = n, .write_first = first,
                             .write_count = rank == ranks - 1 ? n - first : share,
                             .replicas = grid->dp};
}

static void state_new(state *s) { state_new_shaped(s, &shape); }

static void state_free(state *s) {
    free(s->p);
    free(s->m);
    free(s->v);
    ent_param_table_free(&s->table);
}

// The checkpoint at path holds exactly fill(seed)'s values.
static void assert_holds(const char *path, state *s, uint32_t seed) {
    ent_ckpt_t *ck = NULL;
    assert_int_equal(ent_ckpt_open(path, grid->world, &ck), ENT_OK);
    fill(s, seed ^ 0xdeadu); // something else, so the read must bring every value
    assert_int_equal(ent_ckpt_read(ck, &s->sh), ENT_OK);
    ent_ckpt_close(&ck);
    float *a[3] = {s->p, s->m, s->v};
    size_t wrong = 0;
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < s->table.total; i++) wrong += a[k][i] != value(i, k, seed);
    assert_int_equal(wrong, 0);
}

static ent_ckpt_saver_t *saver_new(const char *dir, int async) {
    ent_ckpt_saver_opts o = {.dir = dir, .keep = 0, .async = async};
    ent_ckpt_saver_t *sv = NULL;
    assert_int_equal(ent_ckpt_saver_new(grid->world, &o, &sv), ENT_OK);
    return sv;
}

// A fresh state and a saver into root/sub (dir: PATH_MAX bytes).
static ent_ckpt_saver_t *begin(state *s, char *dir, const char *sub, int async) {
    state_new(s);
    snprintf(dir, PATH_MAX, "%s/%s", root, sub);
    return saver_new(dir, async);
}

static const ent_ckpt_attr step_attr[] = {{.name = "step", .type = ENT_ATTR_I64, .i = 7}};

// A fresh state holding fill(seed), saved synchronously as root/sub/name;
// its path in path (PATH_MAX + 32 bytes).
static void saved(state *s, char *path, const char *sub, const char *name, uint32_t seed) {
    char dir[PATH_MAX];
    ent_ckpt_saver_t *sv = begin(s, dir, sub, 0);
    fill(s, seed);
    assert_int_equal(ent_ckpt_save(sv, name, step_attr, 1, &s->sh), ENT_OK);
    ent_ckpt_saver_free(&sv);
    snprintf(path, PATH_MAX + 32, "%s/%s", dir, name);
}

static void test_staged_then_overwritten(void **unused) {
    (void)unused;
    state s;
    char dir[PATH_MAX], path[PATH_MAX + 32];
    ent_ckpt_saver_t *sv = begin(&s, dir, "staged", 1);
    assert_int_equal(ent_ckpt_saver_prepare(sv, &s.sh), ENT_OK);
    ent_ckpt_wait_staged(sv); // nothing in flight: returns at once
    for (int round = 0; round < 3; round++) {
        uint32_t seed = 100u + (uint32_t)round;
        fill(&s, seed);
        assert_int_equal(ent_ckpt_save(sv, "a.h5", step_attr, 1, &s.sh), ENT_OK);
        ent_ckpt_wait_staged(sv);
        double blocked = ent_ckpt_last_blocked_seconds(sv);
        // what an optimizer update does right after the copy: every value changes
        fill(&s, seed + 1000u);
        assert_int_equal(ent_ckpt_wait(sv), ENT_OK);
        assert_true(blocked >= 0.0);
        snprintf(path, sizeof path, "%s/a.h5", dir);
        assert_holds(path, &s, seed);
    }
    ent_ckpt_saver_free(&sv);
    state_free(&s);
}

static void test_two_saves_in_a_row(void **unused) {
    (void)unused;
    state s;
    char dir[PATH_MAX], path[PATH_MAX + 32];
    ent_ckpt_saver_t *sv = begin(&s, dir, "row", 1);
    fill(&s, 1);
    assert_int_equal(ent_ckpt_save(sv, "one.h5", step_attr, 1, &s.sh), ENT_OK);
    ent_ckpt_wait_staged(sv);
    fill(&s, 2);
    // the second save waits for the first to commit before it starts
    assert_int_equal(ent_ckpt_save(sv, "two.h5", step_attr, 1, &s.sh), ENT_OK);
    ent_ckpt_saver_free(&sv); // finishes the save in flight
    snprintf(path, sizeof path, "%s/one.h5", dir);
    assert_holds(path, &s, 1);
    char target[PATH_MAX];
    assert_int_equal(ent_ckpt_resolve_latest(dir, target, sizeof target), ENT_OK);
    assert_non_null(strstr(target, "two.h5"));
    assert_holds(target, &s, 2);
    state_free(&s);
}

static void test_sync_saver(void **unused) {
    (void)unused;
    state s;
    char dir[PATH_MAX], path[PATH_MAX + 32];
    ent_ckpt_saver_t *sv = begin(&s, dir, "sync", 0);
    fill(&s, 5);
    assert_int_equal(ent_ckpt_save(sv, "s.h5", step_attr, 1, &s.sh), ENT_OK);
    double blocked = ent_ckpt_last_blocked_seconds(sv);
    ent_ckpt_wait_staged(sv); // a synchronous save is done when it returns
    assert_true(ent_ckpt_last_blocked_seconds(sv) == blocked);
    assert_true(blocked > 0.0);
    fill(&s, 6);
    snprintf(path, sizeof path, "%s/s.h5", dir);
    assert_holds(path, &s, 5);
    ent_ckpt_saver_free(&sv);
    state_free(&s);
}

// Parts of the moments read back exactly, whatever chunks they cut.
static void test_read_parts(void **unused) {
    (void)unused;
    state s;
    char path[PATH_MAX + 32];
    saved(&s, path, "parts", "p.h5", 9);
    const ent_param_row *wte = ent_param_table_find(&s.table, "wte.weight");
    size_t n = s.table.total, c = (size_t)1 << 22; // floats in one chunk of wte (4M / 512 rows)
    assert_true(wte != NULL && wte->offset == 0 && wte->numel > c && wte->numel < 2 * c);
    size_t parts[][2] = {
        {0, n},                                     // everything
        {1, n - 1},                                 // from inside the first chunk on
        {c, wte->numel - c},                        // just wte's edge chunk
        {c - 3, 10},                                // across a chunk boundary
        {12345, wte->numel + 999 - 12345},          // two chunk pieces, into the next row
        {n - 5, 5},                                 // the last values
        {n / (size_t)ranks * (size_t)rank, n / (size_t)ranks}, // a ZeRO shard of its own
    };
    for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
        fill(&s, 77); // something else, so the read must bring every value
        s.sh.state_first = parts[k][0];
        s.sh.state_count = parts[k][1];
        ent_ckpt_t *ck = NULL;
        assert_int_equal(ent_ckpt_open(path, grid->world, &ck), ENT_OK);
        assert_int_equal(ent_ckpt_read(ck, &s.sh), ENT_OK);
        ent_ckpt_close(&ck);
        size_t wrong = 0;
        for (size_t i = 0; i < n; i++) wrong += s.p[i] != value(i, 0, 9);
        for (size_t i = 0; i < parts[k][1]; i++) {
            wrong += s.m[i] != value(parts[k][0] + i, 1, 9);
            wrong += s.v[i] != value(parts[k][0] + i, 2, 9);
        }
        if (wrong) fprintf(stderr, "part %zu (%zu, +%zu): %zu wrong\n", k, parts[k][0],
                           parts[k][1], wrong);
        assert_int_equal(wrong, 0);
    }
    state_free(&s);
}

// One flipped byte in a chunk that one rank reads: every rank fails, the one
// that read it naming the dataset.
static void test_damaged_chunk(void **unused) {
    (void)unused;
    state s;
    char path[PATH_MAX + 32];
    saved(&s, path, "damaged", "d.h5", 3);
    if (rank == 0) { // wte's second chunk (rows 8192..): its 1000th byte
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t d = H5Dopen2(f, "params/wte.weight", H5P_DEFAULT);
        hsize_t at[2] = {8192, 0}, bytes = 0;
        haddr_t addr = HADDR_UNDEF;
        unsigned mask = 0;
        assert_true(H5Dget_chunk_info_by_coord(d, at, &mask, &addr, &bytes) >= 0);
        H5Dclose(d);
        H5Fclose(f);
        int fd = open(path, O_RDWR);
        unsigned char b = 0;
        assert_int_equal(pread(fd, &b, 1, (off_t)addr + 1000), 1);
        b ^= 0x10;
        assert_int_equal(pwrite(fd, &b, 1, (off_t)addr + 1000), 1);
        close(fd);
    }
    ent_barrier(grid->world);
    ent_ckpt_t *ck = NULL;
    assert_int_equal(ent_ckpt_open(path, grid->world, &ck), ENT_OK);
    ent_status st = ent_ckpt_read(ck, &s.sh);
    ent_ckpt_close(&ck);
    assert_int_not_equal(st, ENT_OK);
    const char *msg = ent_last_error();
    fprintf(stderr, "rank %d: %s\n", rank, msg);
    assert_true(strstr(msg, "params/wte.weight") != NULL || strstr(msg, "failed on rank") != NULL);
    state_free(&s);
}

// wte as the file at path holds it, read by this process alone (malloc'ed
// into *data; NULL on failure).
static ent_status read_wte(const char *path, float **data) {
    ent_ckpt_t *ck = NULL;
    int64_t shape[2];
    int ndim = 0;
    *data = NULL;
    ent_status st = ent_ckpt_open(path, NULL, &ck);
    if (st == ENT_OK) st = ent_ckpt_read_dataset(ck, "params/wte.weight", data, shape, &ndim);
    ent_ckpt_close(&ck);
    return st;
}

// Where the chunk of dataset `name` at row `row` lies in the file at path,
// and its stored bytes (data and checksum).
static haddr_t chunk_at(const char *path, const char *name, hsize_t row, hsize_t *stored) {
    hsize_t at[2] = {row, 0};
    haddr_t addr = HADDR_UNDEF;
    unsigned mask = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    assert_true(H5Dget_chunk_info_by_coord(d, at, &mask, &addr, stored) >= 0);
    H5Dclose(d);
    H5Fclose(f);
    return addr;
}

static void flip_byte(const char *path, off_t at, unsigned char flip) {
    int fd = open(path, O_RDWR);
    unsigned char b = 0;
    assert_int_equal(pread(fd, &b, 1, at), 1);
    b ^= flip;
    assert_int_equal(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

// The whole state read by this process alone, as a one-rank resume reads it
// (chunks queued to the reader threads).
static ent_status read_alone(const char *path, state *s) {
    ent_ckpt_shard sh = s->sh;
    sh.replicas = NULL;
    ent_ckpt_t *ck = NULL;
    ent_status st = ent_ckpt_open(path, NULL, &ck);
    if (st == ENT_OK) st = ent_ckpt_read(ck, &sh);
    ent_ckpt_close(&ck);
    return st;
}

// Corruption of any byte of a chunk read straight from the file: the first
// and last bytes, around the blocks HDF5 folds at and the pages the kernel
// reads, the stored checksum itself, the
// padding of the edge chunk, and seeded random places. Each read fails,
// naming the dataset and the chunk's row, both read alone (in this thread)
// and as part of the whole state (by the reader threads, with a later chunk,
// adam_v's first, damaged too: the failure named is the first in the file's
// order, whichever thread found its own first); put back, the tensor reads
// whole, and the whole state fails on the later damage only.
static void test_damaged_bytes(void **unused) {
    (void)unused;
    state s;
    char path[PATH_MAX + 32];
    saved(&s, path, "bytes", "b.h5", 5);
    test_reseed(0xb17e5);
    hsize_t later_bytes = 0;
    haddr_t later = rank == 0 ? chunk_at(path, "adam_v/wte.weight", 0, &later_bytes) : 0;
    if (rank == 0) flip_byte(path, (off_t)later + 4321, 0x04);
    for (int k = 0; k < 2 && rank == 0; k++) { // wte's chunks: rows 0.. (full), 8192.. (edge)
        hsize_t at[2] = {k == 0 ? 0 : 8192, 0}, stored = 0, rows = k == 0 ? 8192 : 12032 - 8192;
        haddr_t addr = chunk_at(path, "params/wte.weight", at[0], &stored);
        size_t bytes = (size_t)stored - 4, have = (size_t)rows * 512 * sizeof(float);
        enum { FOLD = 720 }; // bytes between the folds of HDF5's Fletcher32 sums
        size_t places[] = {0, 1, FOLD - 1, FOLD, 4095, 4096, 4097, 5 * 4096 + 3,
                           have - 1, have, bytes - 1, bytes, bytes + 3,
                           0, 0, 0, 0, 0, 0};
        size_t nplaces = sizeof places / sizeof places[0];
        for (size_t i = 13; i < nplaces; i++) places[i] = (size_t)test_rand_int(0, (int64_t)bytes + 3);
        for (size_t i = 0; i < nplaces; i++) {
            if (places[i] >= bytes + 4) continue;
            unsigned char flip = (unsigned char)(1u << test_rand_int(0, 7));
            flip_byte(path, (off_t)(addr + places[i]), flip);
            char row[32];
            snprintf(row, sizeof row, "row %llu", (unsigned long long)at[0]);
            for (int whole = 0; whole < 2; whole++) {
                float *data = NULL;
                ent_status st = whole ? read_alone(path, &s) : read_wte(path, &data);
                free(data);
                if (st == ENT_OK || strstr(ent_last_error(), "params/wte.weight") == NULL ||
                    strstr(ent_last_error(), row) == NULL)
                    fail_msg("bit 0x%02x of byte %zu of the chunk at %s flipped, %s: %s", flip,
                             places[i], row, whole ? "whole state" : "wte alone",
                             st == ENT_OK ? "read without error" : ent_last_error());
            }
            flip_byte(path, (off_t)(addr + places[i]), flip);
        }
    }
    if (rank == 0) { // only the later damage is left
        assert_int_not_equal(read_alone(path, &s), ENT_OK);
        assert_non_null(strstr(ent_last_error(), "adam_v/wte.weight"));
        flip_byte(path, (off_t)later + 4321, 0x04);
        fill(&s, 77);
        assert_int_equal(read_alone(path, &s), ENT_OK);
        size_t wrong = 0;
        for (size_t i = 0; i < s.table.total; i++) wrong += s.v[i] != value(i, 2, 5);
        assert_int_equal(wrong, 0);
    }
    if (rank == 0) { // put back: every value as saved
        float *data = NULL;
        assert_int_equal(read_wte(path, &data), ENT_OK);
        const ent_param_row *r = &s.table.rows[0];
        assert_string_equal(r->name, "wte.weight");
        size_t wrong = 0;
        for (size_t i = 0; i < r->numel; i++) wrong += data[i] != value(r->offset + i, 0, 5);
        assert_int_equal(wrong, 0);
        free(data);
    }
    ent_barrier(grid->world);
    state_free(&s);
}

static void test_coalition_state(void **unused) {
    (void)unused;
    for (int async = 0; async < 2; async++) {
        state s;
        char dir[PATH_MAX], path[PATH_MAX + 32];
        ent_ckpt_saver_t *sv = begin(&s, dir, async ? "coalition_async" : "coalition", async);
        size_t n = s.table.total;
        float *anchor = malloc(sizeof(float) * n), *outer = malloc(sizeof(float) * n);
        float *resid = malloc(sizeof(float) * n);
        assert_true(anchor != NULL && outer != NULL && resid != NULL);
        for (size_t i = 0; i < n; i++) {
            anchor[i] = value(i, 3, 11);
            outer[i] = value(i, 4, 11);
            resid[i] = value(i, 5, 11);
        }
        char ledger[] = "round 41: site-a 81920 tokens, site-b 40960 tokens\n";
        ent_ckpt_coalition c = {.anchor = anchor, .outer_momentum = outer, .residual = resid, .round = 42,
                                .ledger = ledger};
        fill(&s, 11);
        s.sh.coalition = &c;
        assert_int_equal(ent_ckpt_save(sv, "c.h5", step_attr, 1, &s.sh), ENT_OK);
        ent_ckpt_wait_staged(sv);
        // what the caller may do once the copy is made: change everything
        for (size_t i = 0; i < n; i++) anchor[i] = outer[i] = resid[i] = -1.0f;
        ledger[0] = 'X';
        assert_int_equal(ent_ckpt_wait(sv), ENT_OK);
        s.sh.coalition = NULL; // a file without coalition state, beside
        assert_int_equal(ent_ckpt_save(sv, "plain.h5", step_attr, 1, &s.sh), ENT_OK);
        ent_ckpt_saver_free(&sv);

        snprintf(path, sizeof path, "%s/c.h5", dir);
        if (rank == 0) {
            FILE *devnull = fopen("/dev/null", "w");
            assert_int_equal(ent_ckpt_verify(path, expect_table, NULL, devnull), ENT_OK);
            fclose(devnull);
        }
        ent_ckpt_coalition back = {.anchor = anchor, .outer_momentum = outer, .residual = resid};
        s.sh.coalition = &back;
        ent_ckpt_t *ck = NULL;
        assert_int_equal(ent_ckpt_open(path, grid->world, &ck), ENT_OK);
        assert_true(ent_ckpt_has_coalition(ck));
        assert_int_equal(ent_ckpt_read(ck, &s.sh), ENT_OK);
        int64_t round = 0;
        char *text = NULL;
        assert_int_equal(ent_ckpt_coalition_info(ck, &round, &text), ENT_OK);
        ent_ckpt_close(&ck);
        assert_int_equal(round, 42);
        assert_string_equal(text, "round 41: site-a 81920 tokens, site-b 40960 tokens\n");
        free(text);
        size_t wrong = 0;
        for (size_t i = 0; i < n; i++)
            wrong += anchor[i] != value(i, 3, 11) || outer[i] != value(i, 4, 11) ||
                     resid[i] != value(i, 5, 11) || s.p[i] != value(i, 0, 11);
        assert_int_equal(wrong, 0);

        snprintf(path, sizeof path, "%s/plain.h5", dir);
        assert_int_equal(ent_ckpt_open(path, grid->world, &ck), ENT_OK);
        assert_false(ent_ckpt_has_coalition(ck));
        assert_int_not_equal(ent_ckpt_read(ck, &s.sh), ENT_OK);
        assert_non_null(strstr(ent_last_error(), "holds no coalition state"));
        ent_ckpt_close(&ck);
        free(anchor);
        free(outer);
        free(resid);
        state_free(&s);
    }
}

static void hex(const uint8_t *d, char *out) {
    for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_sha256_vectors(void **unused) {
    (void)unused;
    const char *in[] = {"", "abc", "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"};
    const char *want[] = {"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"};
    uint8_t d[32];
    char h[65];
    for (int i = 0; i < 3; i++) {
        ckpt_sha256(in[i], strlen(in[i]), d);
        hex(d, h);
        assert_string_equal(h, want[i]);
    }
    // a million 'a's: many blocks
    char *a = malloc(1000000);
    assert_non_null(a);
    memset(a, 'a', 1000000);
    ckpt_sha256(a, 1000000, d);
    free(a);
    hex(d, h);
    assert_string_equal(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Copies src to dst (a test file of a few MiB).
static void copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    assert_true(in != NULL && out != NULL);
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

// Opening path fails with a message holding `what`.
static void assert_refused(const char *path, const char *what) {
    ent_ckpt_t *ck = NULL;
    assert_int_not_equal(ent_ckpt_open(path, NULL, &ck), ENT_OK);
    if (strstr(ent_last_error(), what) == NULL) fprintf(stderr, "message: %s\n", ent_last_error());
    assert_non_null(strstr(ent_last_error(), what));
    assert_non_null(strstr(ent_last_error(), path));
}

static void add_text(hid_t file, const char *name, const char *value, size_t size, H5T_str_t pad) {
    hid_t t = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR);
    H5Tset_size(t, size);
    if (size != H5T_VARIABLE) H5Tset_strpad(t, pad);
    hid_t a = H5Acreate2(file, name, t, space, H5P_DEFAULT, H5P_DEFAULT);
    char fixed[64] = {0};
    memcpy(fixed, value, strlen(value));
    assert_true(a >= 0 && H5Awrite(a, t, size == H5T_VARIABLE ? (const void *)&value : fixed) >= 0);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(t);
}

static void test_metadata(void **unused) {
    (void)unused;
    state s;
    char dir[PATH_MAX], path[PATH_MAX + 32], bad[PATH_MAX + 32];
    ent_ckpt_saver_t *sv = begin(&s, dir, "metadata", 0);
    fill(&s, 5);
    assert_int_equal(ent_ckpt_save(sv, "m.h5", step_attr, 1, &s.sh), ENT_OK);
    ent_ckpt_saver_free(&sv);
    snprintf(path, sizeof path, "%s/m.h5", dir);
    if (rank == 0) {
        // HDF5's 1.10 format, whichever path wrote it (one process; under
        // mpirun, rank 0's layout driver then MPI-IO)
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        H5F_info2_t info;
        assert_true(f >= 0 && H5Fget_info2(f, &info) >= 0);
        assert_int_equal(info.super.version, 3);
        H5Fclose(f);
        // a changed attribute, a missing digest
        snprintf(bad, sizeof bad, "%s/bad.h5", dir);
        copy_file(path, bad);
        f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        hid_t a = H5Aopen(f, "step", H5P_DEFAULT);
        long long eight = 8;
        assert_true(a >= 0 && H5Awrite(a, H5T_NATIVE_LLONG, &eight) >= 0);
        H5Aclose(a);
        H5Fclose(f);
        assert_refused(bad, "metadata digest does not match");
        f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        assert_true(H5Adelete(f, "digest") >= 0);
        H5Fclose(f);
        assert_refused(bad, "attribute 'digest' is missing");
        // texts as other tools write them, once digested, read back as texts
        copy_file(path, bad);
        f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        add_text(f, "t.nullpad", "abcdef", 6, H5T_STR_NULLPAD); // no room for a NUL
        add_text(f, "t.spacepad", "abc   ", 6, H5T_STR_SPACEPAD);
        add_text(f, "t.vlen", "variable length", H5T_VARIABLE, H5T_STR_NULLTERM);
        assert_true(H5Adelete(f, "digest") >= 0);
        assert_int_equal(ckpt_write_digest(f, bad), ENT_OK);
        H5Fclose(f);
        ent_ckpt_t *ck = NULL;
        assert_int_equal(ent_ckpt_open(bad, NULL, &ck), ENT_OK);
        const char *names[] = {"t.nullpad", "t.spacepad", "t.vlen"};
        const char *want[] = {"abcdef", "abc", "variable length"};
        for (int i = 0; i < 3; i++) {
            char *text = NULL;
            assert_int_equal(ent_ckpt_attr_text(ck, names[i], &text), ENT_OK);
            assert_string_equal(text, want[i]);
            free(text);
        }
        int64_t step = 0;
        assert_int_equal(ent_ckpt_attr_i64(ck, "step", &step), ENT_OK);
        assert_int_equal(step, 7);
        assert_int_equal(ent_ckpt_check_layout(ck, &s.table), ENT_OK);
        ent_ckpt_close(&ck);
        // the same text padded otherwise hashes alike: the digest is over values
        f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        assert_true(H5Adelete(f, "t.vlen") >= 0);
        add_text(f, "t.vlen", "variable length", 15, H5T_STR_NULLPAD);
        H5Fclose(f);
        assert_int_equal(ent_ckpt_open(bad, NULL, &ck), ENT_OK);
        ent_ckpt_close(&ck);
        // a layout of another model is refused by name
        ent_model_shape other = shape;
        other.layers = 1;
        ent_param_table t1;
        assert_int_equal(ent_param_table_build(&other, 1, &t1), ENT_OK);
        assert_int_equal(ent_ckpt_open(bad, NULL, &ck), ENT_OK);
        assert_int_not_equal(ent_ckpt_check_layout(ck, &t1), ENT_OK);
        assert_non_null(strstr(ent_last_error(), "attribute 'tensors' is"));
        ent_ckpt_close(&ck);
        ent_param_table_free(&t1);
    }
    ent_barrier(grid->world);
    assert_holds(path, &s, 5);
    state_free(&s);
}

// rank 0 makes the directory; every rank uses it
static int setup(void **unused) {
    (void)unused;
    int rc = rank == 0 ? test_tmpdir_create(root, sizeof root, "ckpt") : 0;
    MPI_Comm c = MPI_COMM_NULL;
    ent_group_mpi_comm(grid->world, &c);
    MPI_Bcast(&rc, 1, MPI_INT, 0, c);
    MPI_Bcast(root, sizeof root, MPI_CHAR, 0, c);
    return rc;
}

static int teardown(void **unused) {
    (void)unused;
    ent_barrier(grid->world);
    return rank == 0 ? test_tree_remove(root) : 0;
}

// Retention removes only this run's checkpoints: files of another run in the
// same directory stay (unless the saver adopts them: a run resumed from one).
// Then the check before the first save: a directory that cannot be created
// fails on every rank, naming it; a good one is created and left clean.
static void test_retention_and_check(void **unused) {
    (void)unused;
    state s;
    ent_model_shape small = {.layers = 1, .heads = 2, .width = 32, .context = 16, .vocab = 64,
                             .padded_vocab = 64};
    state_new_shaped(&s, &small);
    fill(&s, 9);
    char dir[PATH_MAX], path[PATH_MAX + 64], name[64];
    for (int adopt = 0; adopt < 2; adopt++) {
        snprintf(dir, sizeof dir, "%s/retain%d", root, adopt);
        const int64_t foreign[] = {1, 3}, mine[] = {2, 4, 5, 6};
        if (rank == 0) {
            assert_int_equal(ent_mkdirs(dir), ENT_OK);
            for (int i = 0; i < 2; i++) {
                ent_ckpt_name(foreign[i], name, sizeof name);
                snprintf(path, sizeof path, "%s/%s", dir, name);
                FILE *f = fopen(path, "w");
                assert_non_null(f);
                fputs("another run's checkpoint", f);
                assert_int_equal(fclose(f), 0);
            }
        }
        int64_t sync = 0;
        assert_int_equal(ent_allreduce(grid->world, &sync, &sync, 1, ENT_I64, ENT_SUM), ENT_OK);
        ent_ckpt_saver_opts o = {.dir = dir, .keep = 2, .adopt = adopt};
        ent_ckpt_saver_t *sv = NULL;
        assert_int_equal(ent_ckpt_saver_new(grid->world, &o, &sv), ENT_OK);
        for (int i = 0; i < 4; i++) {
            ent_ckpt_attr at = {.name = "step", .type = ENT_ATTR_I64, .i = mine[i]};
            ent_ckpt_name(mine[i], name, sizeof name);
            assert_int_equal(ent_ckpt_save(sv, name, &at, 1, &s.sh), ENT_OK);
        }
        ent_ckpt_saver_free(&sv);
        int64_t *steps = NULL;
        int n = ent_ckpt_list_steps(dir, &steps);
        char found[256] = "";
        for (int i = 0; i < n; i++)
            snprintf(found + strlen(found), sizeof found - strlen(found), "%lld ",
                     (long long)steps[i]);
        free(steps);
        // keep = 2 of this run: 5 and 6; another run's 1 and 3 stay unless adopted
        assert_string_equal(found, adopt ? "5 6 " : "1 3 5 6 ");
    }
    snprintf(path, sizeof path, "%s/plain-file", root);
    if (rank == 0) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        assert_int_equal(fclose(f), 0);
    }
    snprintf(dir, sizeof dir, "%s/plain-file/checkpoints", root);
    ent_ckpt_saver_opts o = {.dir = dir, .keep = 0};
    ent_ckpt_saver_t *sv = NULL;
    assert_int_equal(ent_ckpt_saver_new(grid->world, &o, &sv), ENT_OK);
    assert_int_equal(ent_ckpt_saver_check(sv, &s.sh), ENT_ERR_IO);
    if (rank == 0) assert_non_null(strstr(ent_last_error(), "plain-file"));
    ent_ckpt_saver_free(&sv);
    snprintf(dir, sizeof dir, "%s/checked/deeper", root);
    o.dir = dir;
    assert_int_equal(ent_ckpt_saver_new(grid->world, &o, &sv), ENT_OK);
    assert_int_equal(ent_ckpt_saver_check(sv, &s.sh), ENT_OK);
    ent_ckpt_saver_free(&sv);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", dir); // no probe file left
    assert_int_equal(system(cmd), 0);
    state_free(&s);
}

// Writes DIR (under root)/model.safetensors: the JSON header (padded to 8
// bytes) and then `times` copies of the n 16-bit values, little-endian.
static void write_st16(const char *dir, const char *header, const uint16_t *v, int n, int times) {
    char path[PATH_MAX + 32], json[256];
    assert_int_equal(ent_mkdirs(dir), ENT_OK);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int len = snprintf(json, sizeof json, "%s", header);
    while (len % 8 != 0) json[len++] = ' ';
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    unsigned char le[8];
    for (int k = 0; k < 8; k++) le[k] = (unsigned char)((uint64_t)len >> (8 * k));
    assert_int_equal(fwrite(le, 1, 8, f), 8);
    assert_int_equal(fwrite(json, 1, (size_t)len, f), (size_t)len);
    for (int rep = 0; rep < times; rep++)
        for (int i = 0; i < n; i++) {
            unsigned char two[2] = {(unsigned char)(v[i] & 0xff), (unsigned char)(v[i] >> 8)};
            assert_int_equal(fwrite(two, 1, 2, f), 2);
        }
    assert_int_equal(fclose(f), 0);
}

// Every F16 and BF16 bit pattern, read from a safetensors file, widens to
// the float the scalar conversions give, bit for bit (the F16C path, the
// blocks that hold a NaN, and a tail of 3 that no vector covers).
static void test_safetensors_widen(void **unused) {
    (void)unused;
    if (rank != 0) return;
    enum { N = 65536 + 3 };
    char dir[PATH_MAX], json[256];
    snprintf(dir, sizeof dir, "%s/st_widen", root);
    snprintf(json, sizeof json,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[%d],\"data_offsets\":[%d,%d]}}",
             N, 2 * N, N, 2 * N, 4 * N);
    uint16_t *bits = malloc(sizeof *bits * N);
    assert_non_null(bits);
    for (int i = 0; i < N; i++) bits[i] = (uint16_t)(i < 65536 ? i : 0x7e00 + i); // a NaN tail
    write_st16(dir, json, bits, N, 2); // h, then b: the same bits
    ent_st_t *st = NULL;
    assert_int_equal(ent_st_open(dir, &st), ENT_OK);
    float *out = malloc(sizeof *out * N);
    assert_non_null(out);
    for (int which = 0; which < 2; which++) {
        const ent_st_tensor *t = ent_st_find(st, which == 0 ? "h" : "b");
        assert_non_null(t);
        assert_int_equal(ent_st_read(st, t, out, 0), ENT_OK);
        int wrong = 0;
        for (int i = 0; i < N; i++) {
            float want = which == 0 ? ent_k_f16_to_f32(bits[i]) : ent_k_bf16_to_f32(bits[i]);
            uint32_t a, b;
            memcpy(&a, &out[i], 4);
            memcpy(&b, &want, 4);
            if (a != b && wrong++ < 5)
                print_error("%s 0x%04x: 0x%08x, want 0x%08x\n", which == 0 ? "F16" : "BF16",
                            bits[i], a, b);
        }
        assert_int_equal(wrong, 0);
    }
    free(out);
    free(bits);
    ent_st_close(&st);
}

// Tensors with no elements (a dimension of 0), as a file may hold them, read
// as nothing, transposed or not, and leave the destination alone.
static void test_safetensors_empty(void **unused) {
    (void)unused;
    if (rank != 0) return;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/st_empty", root);
    write_st16(dir,
               "{\"a\":{\"dtype\":\"BF16\",\"shape\":[3,0],\"data_offsets\":[0,0]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
               "\"c\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[0,0]}}",
               NULL, 0, 0);
    ent_st_t *st = NULL;
    assert_int_equal(ent_st_open(dir, &st), ENT_OK);
    float canary = 7.0f;
    for (int which = 0; which < 3; which++) {
        const ent_st_tensor *t = ent_st_find(st, which == 0 ? "a" : which == 1 ? "b" : "c");
        assert_non_null(t);
        for (int transpose = 0; transpose < (which < 2 ? 2 : 1); transpose++)
            assert_int_equal(ent_st_read(st, t, &canary, transpose), ENT_OK);
    }
    assert_true(canary == 7.0f);
    ent_st_close(&st);
}

// A matrix large enough for its pieces to be shared among the threads
// (rows and columns not multiples of 8 or 64), as BF16, F16 and F32, lands
// transposed, each value the scalar conversion of its stored bits, bit for
// bit. The F16 copy has a NaN in one value of about 128 (signalling ones
// too), so that some 8 x 8 blocks take the vector path and some the scalar.
static void test_safetensors_transpose(void **unused) {
    (void)unused;
    if (rank != 0) return;
    enum { R = 523, C = 1031, N = R * C };
    char dir[PATH_MAX], json[320];
    snprintf(dir, sizeof dir, "%s/st_transpose", root);
    snprintf(json, sizeof json,
             "{\"b\":{\"dtype\":\"BF16\",\"shape\":[%d,%d],\"data_offsets\":[0,%d]},"
             "\"h\":{\"dtype\":\"F16\",\"shape\":[%d,%d],\"data_offsets\":[%d,%d]},"
             "\"f\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%d,%d]}}",
             R, C, 2 * N, R, C, 2 * N, 4 * N, R, C, 4 * N, 8 * N);
    uint16_t *bits = malloc(sizeof *bits * N);
    float *out = malloc(sizeof *out * N);
    assert_true(bits != NULL && out != NULL);
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        bits[i] = (uint16_t)(x >> 16);
        if ((x >> 8) & 3) bits[i] &= 0xbfff; // no F16 NaN or infinity
    }
    write_st16(dir, json, bits, N, 4); // b, h, then f: its two halves from two copies
    ent_st_t *st = NULL;
    assert_int_equal(ent_st_open(dir, &st), ENT_OK);
    for (int which = 0; which < 3; which++) {
        const ent_st_tensor *t = ent_st_find(st, which == 0 ? "b" : which == 1 ? "h" : "f");
        assert_non_null(t);
        memset(out, 0xff, sizeof *out * N);
        assert_int_equal(ent_st_read(st, t, out, 1), ENT_OK);
        int wrong = 0;
        for (int i = 0; i < R; i++)
            for (int j = 0; j < C; j++) {
                int m = i * C + j;
                float want = which == 0 ? ent_k_bf16_to_f32(bits[m])
                             : which == 1
                                 ? ent_k_f16_to_f32(bits[m])
                                 : ent_k_f32_from_bits((uint32_t)bits[(2 * m) % N] |
                                                       (uint32_t)bits[(2 * m + 1) % N] << 16);
                if (memcmp(&out[(size_t)j * R + i], &want, 4) != 0 && wrong++ < 5)
                    print_error("%s [%d, %d] lands wrong\n", t->name, i, j);
            }
        assert_int_equal(wrong, 0);
    }
    // The file cut in the middle of h after it was opened (changed while
    // read): the pieces past the end fail on whichever threads read them,
    // and the read reports it once, naming the file and the tensor; b, whole
    // before the cut, still reads.
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(truncate(path, sb.st_size - 5 * (off_t)N), 0);
    for (int which = 0; which < 4; which++) {
        const ent_st_tensor *t = ent_st_find(st, which == 0 ? "b" : which == 3 ? "f" : "h");
        ent_clear_error();
        ent_status got = ent_st_read(st, t, out, which != 2);
        if (which == 0) {
            assert_int_equal(got, ENT_OK);
            continue;
        }
        assert_int_equal(got, ENT_ERR_IO);
        assert_non_null(strstr(ent_last_error(), path));
        assert_non_null(strstr(ent_last_error(), which == 3 ? "tensor f" : "tensor h"));
        assert_non_null(strstr(ent_last_error(), "ends early"));
    }
    free(out);
    free(bits);
    ent_st_close(&st);
}

int main(int argc, char **argv) {
    ent_ckpt_library_init();
    if (ent_comm_init_threads(&argc, &argv, 1, &comm) != ENT_OK ||
        ent_grid_new(comm, 1, &grid) != ENT_OK) {
        fprintf(stderr, "test_ckpt: %s\n", ent_last_error());
        return 1;
    }
    rank = ent_comm_rank(comm);
    ranks = ent_comm_size(comm);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_staged_then_overwritten),
        cmocka_unit_test(test_two_saves_in_a_row),
        cmocka_unit_test(test_sync_saver),
        cmocka_unit_test(test_read_parts),
        cmocka_unit_test(test_damaged_chunk),
        cmocka_unit_test(test_damaged_bytes),
        cmocka_unit_test(test_coalition_state),
        cmocka_unit_test(test_retention_and_check),
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_safetensors_widen),
        cmocka_unit_test(test_safetensors_transpose),
        cmocka_unit_test(test_safetensors_empty),
    };
    int failed = cmocka_run_group_tests_name("ckpt", tests, setup, teardown);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    return failed;
}
