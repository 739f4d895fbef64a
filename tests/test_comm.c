// test_comm.c: the collectives and the grid, run by ctest under mpirun with
// 2 and 4 ranks (label mpi). Every rank checks its own results; mpirun fails
// the test when any rank does. Data are small integers in floating point, so
// every sum is exact and results are compared bit for bit.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ent_comm.h"

#include <mpi.h>

static void sleep_seconds(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static ent_comm_t *comm;
static ent_grid *grid;
static int rank, size;

// rank r's value at index i
static double val(int r, size_t i) { return (double)((r + 1) * (int)(i % 7 + 1)); }
// the sum over ranks of val(r, i)
static double sum_val(size_t i) { return (double)(size * (size + 1) / 2) * (double)(i % 7 + 1); }

static void test_allreduce(void **state) {
    (void)state;
    size_t counts[] = {0, 1, 1000, 3000001};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        size_t n = counts[c];
        float *send = malloc(sizeof(float) * (n + 1)), *recv = malloc(sizeof(float) * (n + 1));
        double *d = malloc(sizeof(double) * (n + 1));
        for (size_t i = 0; i < n; i++) {
            send[i] = (float)val(rank, i);
            d[i] = val(rank, i);
        }
        assert_int_equal(ent_allreduce(grid->world, send, recv, n, ENT_F32, ENT_SUM), ENT_OK);
        for (size_t i = 0; i < n; i++) assert_true(recv[i] == (float)sum_val(i));
        // in place, double, average
        assert_int_equal(ent_allreduce(grid->world, d, d, n, ENT_F64, ENT_AVG), ENT_OK);
        for (size_t i = 0; i < n; i++) assert_true(d[i] == sum_val(i) / size);
        free(send);
        free(recv);
        free(d);
    }
    int64_t mine[2] = {rank, -rank}, out[2];
    assert_int_equal(ent_allreduce(grid->world, mine, out, 2, ENT_I64, ENT_MAX), ENT_OK);
    assert_int_equal(out[0], size - 1);
    assert_int_equal(out[1], 0);
    assert_int_equal(ent_allreduce(grid->world, mine, out, 2, ENT_I64, ENT_MIN), ENT_OK);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], -(size - 1));
    // AVG of integers is refused, not silently truncated
    assert_int_equal(ent_allreduce(grid->world, mine, out, 2, ENT_I64, ENT_AVG), ENT_ERR_INTERNAL);
}

static void test_reduce_scatter_allgather(void **state) {
    (void)state;
    size_t count = 12345;
    float *send = malloc(sizeof(float) * count * size), *mine = malloc(sizeof(float) * count);
    float *all = malloc(sizeof(float) * count * size);
    for (size_t i = 0; i < count * size; i++) send[i] = (float)val(rank, i);
    assert_int_equal(ent_reduce_scatter(grid->world, send, mine, count, ENT_F32, ENT_SUM), ENT_OK);
    for (size_t i = 0; i < count; i++)
        assert_true(mine[i] == (float)sum_val((size_t)rank * count + i));
    // gathering the pieces back gives the whole reduction, in rank order
    assert_int_equal(ent_allgather(grid->world, mine, all, count, ENT_F32), ENT_OK);
    for (size_t i = 0; i < count * size; i++) assert_true(all[i] == (float)sum_val(i));
    // in place: this rank's slot of the output
    memset(all, 0, sizeof(float) * count * size);
    for (size_t i = 0; i < count; i++) all[(size_t)rank * count + i] = (float)(rank * 10 + 1);
    assert_int_equal(ent_allgather(grid->world, all + (size_t)rank * count, all, count, ENT_F32),
                     ENT_OK);
    for (int r = 0; r < size; r++) assert_true(all[(size_t)r * count + 7] == (float)(r * 10 + 1));
    free(send);
    free(mine);
    free(all);
}

static void test_broadcast_barrier(void **state) {
    (void)state;
    int root = size - 1;
    double buf[100];
    for (int i = 0; i < 100; i++) buf[i] = rank == root ? i * 0.5 : -1.0;
    assert_int_equal(ent_broadcast(grid->world, buf, 100, ENT_F64, root), ENT_OK);
    for (int i = 0; i < 100; i++) assert_true(buf[i] == i * 0.5);
    assert_int_equal(ent_broadcast(grid->world, buf, 1, ENT_F64, size), ENT_ERR_INTERNAL);
    assert_int_equal(ent_barrier(grid->world), ENT_OK);
}

static void test_nonblocking(void **state) {
    (void)state;
    size_t n = 200000;
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
    double *c = malloc(sizeof(double) * n);
    float *rs_send = malloc(sizeof(float) * n * size), *rs = malloc(sizeof(float) * n);
    float *ag_send = malloc(sizeof(float) * n), *ag = malloc(sizeof(float) * n * size);
    int bc[4] = {0};
    for (size_t i = 0; i < n; i++) {
        ag_send[i] = (float)val(rank, i);
        a[i] = (float)val(rank, i);
        b[i] = (float)val(rank, i + 3);
        c[i] = val(rank, i);
    }
    for (size_t i = 0; i < n * size; i++) rs_send[i] = (float)val(rank, i);
    if (rank == 0) bc[0] = 11, bc[1] = 22, bc[2] = 33, bc[3] = 44;
    // several operations in flight at once, completed in another order
    ent_request_t *r1 = NULL, *r2 = NULL, *r3 = NULL, *r4 = NULL, *r5 = NULL, *r6 = NULL;
    assert_int_equal(ent_iallreduce(grid->world, a, a, n, ENT_F32, ENT_SUM, &r1), ENT_OK);
    assert_int_equal(ent_iallreduce(grid->world, b, b, n, ENT_F32, ENT_SUM, &r2), ENT_OK);
    assert_int_equal(ent_iallreduce(grid->world, c, c, n, ENT_F64, ENT_AVG, &r3), ENT_OK);
    assert_int_equal(ent_ibroadcast(grid->world, bc, 4, ENT_I32, 0, &r4), ENT_OK);
    assert_int_equal(ent_ireduce_scatter(grid->world, rs_send, rs, n, ENT_F32, ENT_SUM, &r5), ENT_OK);
    assert_int_equal(ent_iallgather(grid->world, ag_send, ag, n, ENT_F32, &r6), ENT_OK);
    int done = 0;
    for (int spins = 0; spins < 1000000 && !done; spins++)
        assert_int_equal(ent_test(r2, &done), ENT_OK);
    assert_int_equal(ent_wait(&r2), ENT_OK);
    assert_null(r2);
    assert_int_equal(ent_wait(&r6), ENT_OK);
    assert_int_equal(ent_wait(&r5), ENT_OK);
    assert_int_equal(ent_wait(&r4), ENT_OK);
    assert_int_equal(ent_wait(&r3), ENT_OK);
    assert_int_equal(ent_wait(&r1), ENT_OK);
    assert_int_equal(ent_wait(&r1), ENT_OK); // NULL: a no-op
    for (size_t i = 0; i < n; i++) {
        assert_true(a[i] == (float)sum_val(i));
        assert_true(b[i] == (float)sum_val(i + 3));
        assert_true(c[i] == sum_val(i) / size);
        assert_true(rs[i] == (float)sum_val((size_t)rank * n + i));
        for (int r = 0; r < size; r++) assert_true(ag[(size_t)r * n + i] == (float)val(r, i));
    }
    assert_int_equal(bc[3], 44);
    free(a); free(b); free(c); free(rs_send); free(rs); free(ag_send); free(ag);
}

static void test_grid(void **state) {
    (void)state;
    int tps[] = {1, 2, 4};
    for (size_t k = 0; k < sizeof tps / sizeof tps[0]; k++) {
        int tp = tps[k];
        ent_grid *g = NULL;
        if (size % tp != 0) {
            assert_int_equal(ent_grid_new(comm, tp, &g), ENT_ERR_USAGE);
            assert_null(g);
            assert_non_null(strstr(ent_last_error(), "does not divide the world size"));
            continue;
        }
        assert_int_equal(ent_grid_new(comm, tp, &g), ENT_OK);
        assert_int_equal(g->tp_size, tp);
        assert_int_equal(g->dp_size, size / tp);
        // TP ranks are adjacent: world rank = dp_rank * tp + tp_rank
        assert_int_equal(rank, g->dp_rank * tp + g->tp_rank);
        assert_int_equal(ent_group_rank(g->tp), g->tp_rank);
        assert_int_equal(ent_group_size(g->tp), tp);
        assert_int_equal(ent_group_rank(g->dp), g->dp_rank);
        assert_int_equal(ent_group_size(g->dp), size / tp);
        // the members of my TP group are dp_rank*tp .. dp_rank*tp + tp-1
        int64_t r = rank, sum = 0;
        assert_int_equal(ent_allreduce(g->tp, &r, &sum, 1, ENT_I64, ENT_SUM), ENT_OK);
        int64_t first = (int64_t)g->dp_rank * tp;
        assert_int_equal(sum, first * tp + (int64_t)tp * (tp - 1) / 2);
        // the members of my DP group share my tp_rank
        int64_t tpr = g->tp_rank, max = -1;
        assert_int_equal(ent_allreduce(g->dp, &tpr, &max, 1, ENT_I64, ENT_MAX), ENT_OK);
        assert_int_equal(max, g->tp_rank);
        assert_string_equal(ent_group_name(g->tp), "tp");
        assert_string_equal(ent_group_backend(g->dp), "mpi");
        ent_grid_free(&g);
        assert_null(g);
    }
    ent_grid *g = NULL;
    assert_int_equal(ent_grid_new(comm, 0, &g), ENT_ERR_USAGE);
    assert_int_equal(ent_grid_new(comm, size + 1, &g), ENT_ERR_USAGE);
}

static void test_agree(void **state) {
    (void)state;
    assert_int_equal(ent_comm_agree(comm, ENT_OK), ENT_OK);
    // the last rank fails: every rank learns it, the others with its number
    ent_status local = rank == size - 1 ? ent_fail(ENT_ERR_INPUT, "bad shard on this rank") : ENT_OK;
    ent_status st = ent_comm_agree(comm, local);
    assert_int_equal(st, ENT_ERR_INPUT);
    if (rank == size - 1) {
        assert_string_equal(ent_last_error(), "bad shard on this rank");
    } else {
        char want[64];
        snprintf(want, sizeof want, "rank %d failed", size - 1);
        assert_non_null(strstr(ent_last_error(), want));
    }
}

// Every dtype of the one enum has a size and a name; the MPI backend moves
// every type bit for bit, reduces the integer ones, and refuses to reduce
// bf16/f16 (MPI has no such arithmetic) or a value outside the enum.
static void test_dtypes(void **state) {
    (void)state;
    size_t sizes[ENT_DTYPE_COUNT] = {[ENT_F32] = 4, [ENT_F64] = 8, [ENT_I32] = 4, [ENT_I64] = 8,
                                     [ENT_U64] = 8, [ENT_BF16] = 2, [ENT_F16] = 2, [ENT_I8] = 1,
                                     [ENT_U8] = 1};
    for (int d = 0; d < ENT_DTYPE_COUNT; d++) {
        assert_int_equal(ent_dtype_size((ent_dtype)d), sizes[d]);
        assert_string_not_equal(ent_dtype_name((ent_dtype)d), "invalid");
    }
    assert_int_equal(ent_dtype_size(ENT_DTYPE_COUNT), 0);
    assert_int_equal(ent_dtype_size((ent_dtype)-1), 0);
    // int8 sum: rank r gives r+1 at every index
    int8_t a[5], b[5];
    for (int i = 0; i < 5; i++) a[i] = (int8_t)(rank + 1);
    assert_int_equal(ent_allreduce(grid->world, a, b, 5, ENT_I8, ENT_SUM), ENT_OK);
    for (int i = 0; i < 5; i++) assert_int_equal(b[i], size * (size + 1) / 2);
    // bf16 words gathered bit for bit, including NaN and negative-zero patterns
    uint16_t mine[3] = {(uint16_t)(0x3f80 + rank), 0x7fc1, 0x8000}, all[3 * 8];
    assert_true(size <= 8);
    assert_int_equal(ent_allgather(grid->world, mine, all, 3, ENT_BF16), ENT_OK);
    for (int r = 0; r < size; r++) {
        assert_int_equal(all[3 * r], 0x3f80 + r);
        assert_int_equal(all[3 * r + 1], 0x7fc1);
        assert_int_equal(all[3 * r + 2], 0x8000);
    }
    uint8_t bytes[4] = {1, 2, 3, (uint8_t)rank};
    assert_int_equal(ent_broadcast(grid->world, bytes, 4, ENT_U8, 0), ENT_OK);
    assert_int_equal(bytes[3], 0);
    if (size > 1) { // a size-1 group copies without arithmetic
        assert_int_equal(ent_allreduce(grid->world, mine, all, 3, ENT_BF16, ENT_SUM),
                         ENT_ERR_INTERNAL);
        assert_non_null(strstr(ent_last_error(), "MPI has no bf16 arithmetic"));
    }
    assert_int_equal(ent_allreduce(grid->world, a, b, 5, ENT_I8, ENT_AVG), ENT_ERR_INTERNAL);
    assert_non_null(strstr(ent_last_error(), "AVG needs a floating type, not i8"));
    assert_int_equal(ent_broadcast(grid->world, a, 5, (ent_dtype)ENT_DTYPE_COUNT, 0),
                     ENT_ERR_INTERNAL);
    assert_non_null(strstr(ent_last_error(), "is not an ent_dtype"));
}

// The MPI member of the one check family: a failed call becomes
// ENT_ERR_INTERNAL naming the file, line, call and MPI's own message; the
// _GOTO form stores the status and jumps.
static ent_status bad_root(MPI_Comm c) {
    int x = 0;
    ENT_MPI_CHECK(MPI_Bcast(&x, 1, MPI_INT, 1 << 20, c));
    return ENT_OK;
}

static ent_status bad_root_goto(MPI_Comm c, int *cleaned) {
    ent_status st = ENT_OK;
    int x = 0;
    ENT_MPI_CHECK_GOTO(MPI_Bcast(&x, 1, MPI_INT, -7, c), done);
done:
    *cleaned = 1;
    return st;
}

static void test_mpi_check(void **state) {
    (void)state;
    MPI_Comm c, world;
    ent_group_mpi_comm(grid->world, &world);
    assert_int_equal(MPI_Comm_dup(world, &c), MPI_SUCCESS);
    MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
    assert_int_equal(bad_root(c), ENT_ERR_INTERNAL);
    assert_non_null(strstr(ent_last_error(), "test_comm.c:"));
    assert_non_null(strstr(ent_last_error(), "MPI_Bcast(&x, 1, MPI_INT, 1 << 20, c): "));
    assert_non_null(strstr(ent_last_error(), "root")); // MPI's own words: "invalid root"
    int cleaned = 0;
    assert_int_equal(bad_root_goto(c, &cleaned), ENT_ERR_INTERNAL);
    assert_int_equal(cleaned, 1);
    MPI_Comm_free(&c);
}

// Collectives on the memory of a backend the host must not touch: the
// guarded backend's buffers (PROT_NONE outside its calls) through a device
// group, staged over MPI; every result equals the host collectives' (a host
// access to the buffers would fault). On the cpu backend a device group is
// plain MPI. Neither CPU backend has a stream, so neither gets NCCL, even in
// a build that has it.
static void test_device_groups(void **state) {
    (void)state;
    ent_backend_t *cpu = NULL, *be = NULL;
    assert_int_equal(ent_backend_new("cpu", NULL, &cpu), ENT_OK);
    assert_null(ent_backend_stream(cpu));
    ent_group_t *plain = NULL, *g = NULL;
    assert_int_equal(ent_group_new_device(grid->world, cpu, &plain), ENT_OK);
    assert_string_equal(ent_group_backend(plain), "mpi");
    ent_group_free(&plain);
    assert_int_equal(ent_backend_new("cpu-guarded", NULL, &be), ENT_OK);
    assert_null(ent_backend_stream(be));
    assert_int_equal(ent_group_new_device(grid->world, be, &g), ENT_OK);
    assert_string_equal(ent_group_backend(g), "mpi-staged");
    assert_int_equal(ent_group_size(g), size);
    size_t n = 1001, all = n * (size_t)size;
    float *host = malloc(sizeof(float) * all), *got = malloc(sizeof(float) * all);
    float *dev = be->iface->alloc(be, sizeof(float) * all);
    float *dev2 = be->iface->alloc(be, sizeof(float) * all);
    assert_true(host && got && dev && dev2);
    for (size_t i = 0; i < all; i++) host[i] = (float)val(rank, i);
    // all-reduce, blocking and not, SUM and AVG
    for (int nb = 0; nb < 2; nb++)
        for (int avg = 0; avg < 2; avg++) {
            assert_int_equal(be->iface->to_device(be, dev, host, sizeof(float) * n), ENT_OK);
            ent_op op = avg ? ENT_AVG : ENT_SUM;
            if (nb) {
                ent_request_t *req = NULL;
                assert_int_equal(ent_iallreduce(g, dev, dev, n, ENT_F32, op, &req), ENT_OK);
                assert_int_equal(ent_wait(&req), ENT_OK);
            } else {
                assert_int_equal(ent_allreduce(g, dev, dev, n, ENT_F32, op), ENT_OK);
            }
            assert_int_equal(be->iface->to_host(be, got, dev, sizeof(float) * n), ENT_OK);
            for (size_t i = 0; i < n; i++)
                assert_true(got[i] == (float)(avg ? sum_val(i) / size : sum_val(i)));
        }
    // reduce-scatter: this rank's n of the size x n sums
    assert_int_equal(be->iface->to_device(be, dev, host, sizeof(float) * all), ENT_OK);
    assert_int_equal(ent_reduce_scatter(g, dev, dev2, n, ENT_F32, ENT_SUM), ENT_OK);
    assert_int_equal(be->iface->to_host(be, got, dev2, sizeof(float) * n), ENT_OK);
    for (size_t i = 0; i < n; i++) assert_true(got[i] == (float)sum_val((size_t)rank * n + i));
    // all-gather, non-blocking: every rank's n values in rank order
    assert_int_equal(be->iface->to_device(be, dev, host, sizeof(float) * n), ENT_OK);
    ent_request_t *req = NULL;
    assert_int_equal(ent_iallgather(g, dev, dev2, n, ENT_F32, &req), ENT_OK);
    assert_int_equal(ent_wait(&req), ENT_OK);
    assert_int_equal(be->iface->to_host(be, got, dev2, sizeof(float) * all), ENT_OK);
    for (int r = 0; r < size; r++)
        for (size_t i = 0; i < n; i++) assert_true(got[(size_t)r * n + i] == (float)val(r, i));
    // broadcast from the last rank
    assert_int_equal(be->iface->to_device(be, dev, host, sizeof(float) * n), ENT_OK);
    assert_int_equal(ent_broadcast(g, dev, n, ENT_F32, size - 1), ENT_OK);
    assert_int_equal(be->iface->to_host(be, got, dev, sizeof(float) * n), ENT_OK);
    for (size_t i = 0; i < n; i++) assert_true(got[i] == (float)val(size - 1, i));
    be->iface->free_mem(be, dev);
    be->iface->free_mem(be, dev2);
    free(host);
    free(got);
    ent_group_free(&g);
    ent_backend_free(&be);
    ent_backend_free(&cpu);
}

// The grid's device groups: DP and TP groups of the grid's ranks, "mpi" on
// the cpu backend and "mpi-staged" on the guarded one, each running its
// collectives over its own ranks.
static void test_grid_device_groups(void **state) {
    (void)state;
    const char *names[] = {"cpu", "cpu-guarded"}, *kinds[] = {"mpi", "mpi-staged"};
    int tp = size % 2 == 0 ? 2 : 1;
    for (int k = 0; k < 2; k++) {
        ent_backend_t *be = NULL;
        ent_grid *gr = NULL;
        assert_int_equal(ent_backend_new(names[k], NULL, &be), ENT_OK);
        assert_int_equal(ent_grid_new(comm, tp, &gr), ENT_OK);
        assert_null(gr->dp_dev);
        assert_int_equal(ent_grid_attach_device(gr, be), ENT_OK);
        ent_group_t *groups[] = {gr->dp_dev, gr->tp_dev};
        for (int i = 0; i < 2; i++) {
            ent_group_t *g = groups[i];
            assert_string_equal(ent_group_backend(g), kinds[k]);
            assert_string_equal(ent_group_name(g), i == 0 ? "dp" : "tp");
            // the sum of the world ranks of the group's members, in the backend's memory
            int64_t mine = rank, sum = 0, want = 0;
            int64_t *dev = be->iface->alloc(be, sizeof mine);
            assert_non_null(dev);
            assert_int_equal(be->iface->to_device(be, dev, &mine, sizeof mine), ENT_OK);
            assert_int_equal(ent_allreduce(g, dev, dev, 1, ENT_I64, ENT_SUM), ENT_OK);
            assert_int_equal(be->iface->to_host(be, &sum, dev, sizeof sum), ENT_OK);
            for (int r = 0; r < size; r++) {
                int same = i == 0 ? r % tp == gr->tp_rank : r / tp == gr->dp_rank;
                if (same) want += r;
            }
            assert_int_equal(sum, want);
            be->iface->free_mem(be, dev);
        }
        ent_grid_free(&gr);
        ent_backend_free(&be);
    }
}

// A backend that hands out a stream (the guarded backend's table with a
// stream entry: a token, for no CUDA call may be made through it here). In a
// build without NCCL its device group stages over MPI and works; in a build
// with NCCL it is a NCCL group on that stream, which on machines without a
// GPU fails on every rank, each with an error, none waiting for the others.
static void *token_stream(ent_backend_t *be) {
    (void)be;
    static int token;
    return &token;
}

static void test_device_group_with_stream(void **state) {
    (void)state;
    if (ent_comm_have_nccl()) {
        // only where no rank has a GPU: there no CUDA call reaches the token
        ent_group_t *g = NULL;
        ent_status st = ent_group_new_nccl(comm, grid->world, &g);
        int64_t no_gpu = st != ENT_OK && strstr(ent_last_error(), "has 0 GPU(s)") != NULL, all = 0;
        ent_group_free(&g);
        assert_int_equal(ent_allreduce(grid->world, &no_gpu, &all, 1, ENT_I64, ENT_MIN), ENT_OK);
        if (!all) {
            if (rank == 0) printf("test_device_group_with_stream: GPUs here; see test_nccl\n");
            return;
        }
    }
    ent_backend_t *guarded = NULL;
    assert_int_equal(ent_backend_new("cpu-guarded", NULL, &guarded), ENT_OK);
    struct ent_backend_i with_stream = *guarded->iface;
    with_stream.stream = token_stream;
    ent_backend_t be = *guarded;
    be.iface = &with_stream;
    assert_non_null(ent_backend_stream(&be));
    ent_group_t *g = NULL;
    ent_status st = ent_group_new_device(grid->world, &be, &g);
    if (ent_comm_have_nccl()) {
        assert_int_not_equal(st, ENT_OK);
        assert_null(g);
        assert_true(strstr(ent_last_error(), "GPU of the backend's stream") != NULL ||
                    strstr(ent_last_error(), "NCCL") != NULL);
    } else {
        assert_int_equal(st, ENT_OK);
        assert_string_equal(ent_group_backend(g), "mpi-staged");
        float one = 1.0f, sum = 0.0f;
        float *dev = be.iface->alloc(&be, sizeof one);
        assert_int_equal(be.iface->to_device(&be, dev, &one, sizeof one), ENT_OK);
        assert_int_equal(ent_allreduce(g, dev, dev, 1, ENT_F32, ENT_SUM), ENT_OK);
        assert_int_equal(be.iface->to_host(&be, &sum, dev, sizeof sum), ENT_OK);
        assert_true(sum == (float)size);
        be.iface->free_mem(&be, dev);
        ent_group_free(&g);
    }
    ent_backend_free(&guarded);
}

static void test_nccl_without_gpu(void **state) {
    (void)state;
    // On a machine without GPUs a NCCL group must fail cleanly, on every rank.
    // (test_nccl runs the collectives themselves where GPUs exist.)
    ent_group_t *g = NULL;
    ent_status st = ent_group_new_nccl(comm, grid->world, &g);
    if (!ent_comm_have_nccl()) {
        assert_int_equal(st, ENT_ERR_USAGE);
        assert_non_null(strstr(ent_last_error(), "no NCCL backend"));
        return;
    }
    if (st == ENT_OK) { // a machine with enough GPUs: nothing to check here
        ent_group_free(&g);
        return;
    }
    assert_int_equal(st, ENT_ERR_USAGE);
    assert_null(g);
    assert_true(strstr(ent_last_error(), "GPU(s) for") != NULL ||
                strstr(ent_last_error(), "has no GPU") != NULL);
}

// `test_comm --hang-before WHAT`: the last rank never reaches an agreement
// (as if stuck in I/O) and every other rank must leave through the watchdog
// within the 2 s timeout with ENT_EXIT_PEER_LOST; WHAT is `agree`
// (ent_comm_agree) or `raw` (a library's own collective under
// ent_comm_watch_begin, as the checkpoint's agreements are). Reaching the end
// of this function is the failure: tests/comm_hang_test.sh checks the code.
static int hang_before(const char *what) {
    ent_comm_set_timeout(comm, 2);
    if (rank == size - 1) {
        for (int i = 0; i < 600; i++) sleep_seconds(0.1); // the others must not wait for this
        fprintf(stderr, "test_comm: rank %d: the others are still waiting after 60 s\n", rank);
        return 1;
    }
    if (strcmp(what, "agree") == 0) {
        ent_status st = ent_comm_agree(comm, ENT_OK);
        fprintf(stderr, "test_comm: rank %d: ent_comm_agree returned %d, not through the "
                        "watchdog\n", rank, (int)st);
    } else {
        int one = 1, all = 0;
        MPI_Comm world;
        ent_group_mpi_comm(grid->world, &world);
        ent_comm_watch_begin("an agreement of the test", "the world");
        MPI_Allreduce(&one, &all, 1, MPI_INT, MPI_SUM, world);
        ent_comm_watch_end();
        fprintf(stderr, "test_comm: rank %d: the watched MPI_Allreduce returned\n", rank);
    }
    return 1;
}

int main(int argc, char **argv) {
    if (ent_comm_init(&argc, &argv, &comm) != ENT_OK) {
        fprintf(stderr, "test_comm: %s\n", ent_last_error());
        return 1;
    }
    ent_comm_set_timeout(comm, 120);
    rank = ent_comm_rank(comm);
    size = ent_comm_size(comm);
    if (ent_grid_new(comm, 1, &grid) != ENT_OK) {
        fprintf(stderr, "test_comm: %s\n", ent_last_error());
        return 1;
    }
    if (argc == 3 && strcmp(argv[1], "--hang-before") == 0) return hang_before(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allreduce),   cmocka_unit_test(test_reduce_scatter_allgather),
        cmocka_unit_test(test_broadcast_barrier), cmocka_unit_test(test_nonblocking),
        cmocka_unit_test(test_grid),        cmocka_unit_test(test_agree),
        cmocka_unit_test(test_dtypes),      cmocka_unit_test(test_mpi_check),
        cmocka_unit_test(test_device_groups), cmocka_unit_test(test_grid_device_groups),
        cmocka_unit_test(test_device_group_with_stream),
        cmocka_unit_test(test_nccl_without_gpu),
    };
    char name[32];
    snprintf(name, sizeof name, "comm (rank %d of %d)", rank, size);
    int failed = cmocka_run_group_tests_name(name, tests, NULL, NULL);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    return failed;
}
