// test_nccl.c: the NCCL backend's collectives on GPU buffers, against the
// values the MPI tests check on the host, and the device group of a backend
// with a stream: NCCL on that stream, in order with the backend's work. Run
// by ctest under mpirun (labels gpu, mpi), one rank per GPU. Without enough
// GPUs it exits 77 (skipped) with the reason; test_comm checks the clean
// failure on such machines.
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ent_comm.h"

static int failures;

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "test_nccl: FAIL %s:%d: ", __FILE__, __LINE__);    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            failures++;                                                        \
        }                                                                      \
    } while (0)

static float val(int r, size_t i) { return (float)((r + 1) * (int)(i % 7 + 1)); }

// A stand-in for a GPU backend: all this test needs of one is the stream it
// queues its work on.
static void *stream_of(ent_backend_t *be) { return be->impl; }

static const struct ent_backend_i stream_backend_i = {
    .name = "test-stream",
    .is_host = 0,
    .stream = stream_of,
};

// Holds the stream until released: work queued behind it cannot run.
static volatile int released;
static void CUDART_CB hold_stream(void *arg) {
    (void)arg;
    struct timespec ms = {0, 1000000};
    while (!released) nanosleep(&ms, NULL);
}

// The device group of a backend with a stream is NCCL on that stream: a
// collective queued behind a held stream has not completed while it is held
// (on a stream of its own it would), reads the input the stream wrote before
// it without any synchronisation, and leaves the backend's stream to the
// backend when the group is freed.
static void backend_stream_group(ent_grid *grid, int rank, int size) {
    cudaStream_t stream = NULL;
    EXPECT(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess, "stream");
    ent_backend_t be = {.iface = &stream_backend_i, .impl = stream};
    ent_group_t *g = NULL;
    if (ent_group_new_device(grid->world, &be, &g) != ENT_OK) {
        EXPECT(0, "device group of a backend with a stream: %s", ent_last_error());
        return;
    }
    EXPECT(strcmp(ent_group_backend(g), "nccl") == 0, "backend %s", ent_group_backend(g));
    size_t n = 1 << 20;
    int32_t *dev = NULL, *host = malloc(sizeof(int32_t) * n);
    cudaMalloc((void **)&dev, sizeof(int32_t) * n);
    // every byte rank + 1: every int32 (rank + 1) * 0x01010101; the sum over ranks
    int32_t want = (int32_t)(size * (size + 1) / 2) * 0x01010101;

    // non-blocking, behind a held stream
    released = 0;
    EXPECT(cudaLaunchHostFunc(stream, hold_stream, NULL) == cudaSuccess, "host function");
    EXPECT(cudaMemsetAsync(dev, rank + 1, sizeof(int32_t) * n, stream) == cudaSuccess, "memset");
    ent_request_t *req = NULL;
    EXPECT(ent_iallreduce(g, dev, dev, n, ENT_I32, ENT_SUM, &req) == ENT_OK, "%s",
           ent_last_error());
    int done = 0;
    for (int i = 0; i < 100 && !done; i++) { // 0.1 s
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        EXPECT(ent_test(req, &done) == ENT_OK, "%s", ent_last_error());
    }
    EXPECT(!done, "the all-reduce completed while the backend's stream was held: it is not "
                  "on that stream");
    released = 1;
    EXPECT(ent_wait(&req) == ENT_OK, "%s", ent_last_error());
    cudaMemcpy(host, dev, sizeof(int32_t) * n, cudaMemcpyDeviceToHost);
    EXPECT(host[0] == want && host[n - 1] == want, "all-reduce on the stream: %d, want %d",
           host[0], want);

    // blocking, right after the backend's own write, with no synchronisation
    EXPECT(cudaMemsetAsync(dev, rank + 1, sizeof(int32_t) * n, stream) == cudaSuccess, "memset");
    EXPECT(ent_allreduce(g, dev, dev, n, ENT_I32, ENT_SUM) == ENT_OK, "%s", ent_last_error());
    EXPECT(cudaStreamQuery(stream) == cudaSuccess, "a blocking all-reduce returned before the "
                                                   "stream passed it");
    cudaMemcpy(host, dev, sizeof(int32_t) * n, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++)
        if (host[i] != want) {
            EXPECT(0, "blocking all-reduce on the stream at %zu: %d, want %d", i, host[i], want);
            break;
        }
    ent_group_free(&g);
    // the stream is the backend's: still usable after the group is gone
    EXPECT(cudaMemsetAsync(dev, 0, sizeof(int32_t) * n, stream) == cudaSuccess, "memset after");
    EXPECT(cudaStreamSynchronize(stream) == cudaSuccess, "the stream after the group");
    cudaFree(dev);
    free(host);
    cudaStreamDestroy(stream);
}

int main(int argc, char **argv) {
    ent_comm_t *comm = NULL;
    if (ent_comm_init(&argc, &argv, &comm) != ENT_OK) return 1;
    ent_comm_set_timeout(comm, 120);
    int rank = ent_comm_rank(comm), size = ent_comm_size(comm);
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
    int enough = ent_comm_local_rank(comm) < gpus, all = 0;
    ent_grid *grid = NULL;
    if (ent_grid_new(comm, 1, &grid) != ENT_OK) return 1;
    int64_t e = enough, a = 0;
    ent_allreduce(grid->world, &e, &a, 1, ENT_I64, ENT_MIN);
    all = (int)a;
    if (!all) {
        if (rank == 0)
            printf("SKIP: %d GPU(s) visible on this node for %d rank(s): the NCCL collectives "
                   "need one GPU per rank\n", gpus, ent_comm_local_size(comm));
        ent_grid_free(&grid);
        ent_comm_finalize(&comm);
        return 77;
    }
    ent_group_t *g = NULL;
    if (ent_group_new_nccl(comm, grid->world, &g) != ENT_OK) {
        fprintf(stderr, "test_nccl: %s\n", ent_last_error());
        return 1;
    }
    EXPECT(strcmp(ent_group_backend(g), "nccl") == 0, "backend %s", ent_group_backend(g));

    size_t n = 1 << 20;
    float *host = malloc(sizeof(float) * n * size), *dev = NULL, *dev2 = NULL;
    cudaMalloc((void **)&dev, sizeof(float) * n * size);
    cudaMalloc((void **)&dev2, sizeof(float) * n * size);
    double S = size * (size + 1) / 2.0;

    // all-reduce sum, in place
    for (size_t i = 0; i < n; i++) host[i] = val(rank, i);
    cudaMemcpy(dev, host, sizeof(float) * n, cudaMemcpyHostToDevice);
    EXPECT(ent_allreduce(g, dev, dev, n, ENT_F32, ENT_SUM) == ENT_OK, "%s", ent_last_error());
    cudaMemcpy(host, dev, sizeof(float) * n, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++)
        if (host[i] != (float)(S * (double)(i % 7 + 1))) {
            EXPECT(0, "all-reduce sum at %zu: %g", i, host[i]);
            break;
        }
    // average, non-blocking
    for (size_t i = 0; i < n; i++) host[i] = val(rank, i);
    cudaMemcpy(dev, host, sizeof(float) * n, cudaMemcpyHostToDevice);
    ent_request_t *req = NULL;
    EXPECT(ent_iallreduce(g, dev, dev2, n, ENT_F32, ENT_AVG, &req) == ENT_OK, "%s", ent_last_error());
    EXPECT(ent_wait(&req) == ENT_OK, "%s", ent_last_error());
    cudaMemcpy(host, dev2, sizeof(float) * n, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++)
        if (host[i] != (float)(S / size * (double)(i % 7 + 1))) {
            EXPECT(0, "all-reduce avg at %zu: %g", i, host[i]);
            break;
        }
    // reduce-scatter then all-gather gives back the whole reduction
    for (size_t i = 0; i < n * size; i++) host[i] = val(rank, i);
    cudaMemcpy(dev, host, sizeof(float) * n * size, cudaMemcpyHostToDevice);
    EXPECT(ent_reduce_scatter(g, dev, dev2, n, ENT_F32, ENT_SUM) == ENT_OK, "%s", ent_last_error());
    EXPECT(ent_allgather(g, dev2, dev, n, ENT_F32) == ENT_OK, "%s", ent_last_error());
    cudaMemcpy(host, dev, sizeof(float) * n * size, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n * size; i++)
        if (host[i] != (float)(S * (double)(i % 7 + 1))) {
            EXPECT(0, "reduce-scatter + all-gather at %zu: %g", i, host[i]);
            break;
        }
    // broadcast from the last rank
    for (size_t i = 0; i < n; i++) host[i] = rank == size - 1 ? (float)i : -1.0f;
    cudaMemcpy(dev, host, sizeof(float) * n, cudaMemcpyHostToDevice);
    EXPECT(ent_broadcast(g, dev, n, ENT_F32, size - 1) == ENT_OK, "%s", ent_last_error());
    cudaMemcpy(host, dev, sizeof(float) * n, cudaMemcpyDeviceToHost);
    EXPECT(host[n - 1] == (float)(n - 1), "broadcast: %g", host[n - 1]);
    EXPECT(ent_barrier(g) == ENT_OK, "%s", ent_last_error());

    backend_stream_group(grid, rank, size);

    cudaFree(dev);
    cudaFree(dev2);
    free(host);
    ent_group_free(&g);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    if (rank == 0) printf("test_nccl: %s (%d ranks)\n", failures ? "FAILED" : "PASSED", size);
    return failures ? 1 : 0;
}
