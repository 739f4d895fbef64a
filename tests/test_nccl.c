// test_nccl.c: the NCCL backend's collectives on GPU buffers, against the
// values the MPI tests check on the host. Run by ctest under mpirun (labels
// gpu, mpi), one rank per GPU. Without enough GPUs it exits 77 (skipped) with
// the reason; test_comm checks the clean failure on such machines.
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

    cudaFree(dev);
    cudaFree(dev2);
    free(host);
    ent_group_free(&g);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    if (rank == 0) printf("test_nccl: %s (%d ranks)\n", failures ? "FAILED" : "PASSED", size);
    return failures ? 1 : 0;
}
