// nccl.c: the NCCL collectives backend, for buffers in GPU memory.
//
// A NCCL group is the twin of an MPI group: the same ranks, bootstrapped by
// broadcasting NCCL's unique id over MPI, each rank on GPU `local_rank` of its
// node, every operation on the group's own stream. Blocking calls synchronise
// the stream; non-blocking calls record an event that ent_wait / ent_test use.
#include "comm_impl.h"

#ifdef ENT_HAVE_NCCL

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;
} nccl_group;

// Every ent_dtype has an NCCL type (group.c refuses values outside the enum
// before they get here).
static ncclDataType_t nccl_dtype(ent_dtype d) {
    switch (d) {
    case ENT_F32: return ncclFloat32;
    case ENT_F64: return ncclFloat64;
    case ENT_I32: return ncclInt32;
    case ENT_I64: return ncclInt64;
    case ENT_U64: return ncclUint64;
    case ENT_BF16: return ncclBfloat16;
    case ENT_F16: return ncclFloat16;
    case ENT_I8: return ncclInt8;
    case ENT_U8: return ncclUint8;
    case ENT_DTYPE_COUNT: break;
    }
    return ncclFloat32;
}

static ncclRedOp_t nccl_op(ent_op op) {
    switch (op) {
    case ENT_AVG: return ncclAvg;
    case ENT_MAX: return ncclMax;
    case ENT_MIN: return ncclMin;
    default: return ncclSum;
    }
}

// Blocking: wait for the stream. Non-blocking: record an event for wait/test.
static ent_status finish(ent_group_t *g, ent_request_t *req) {
    nccl_group *n = g->impl;
    if (req == NULL) {
        ENT_CUDA_CHECK(cudaStreamSynchronize(n->stream));
        return ENT_OK;
    }
    cudaEvent_t ev;
    ENT_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    ENT_CUDA_CHECK(cudaEventRecord(ev, n->stream));
    req->impl = ev;
    return ENT_OK;
}

static ent_status nc_allreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                               ent_dtype dtype, ent_op op, ent_request_t *req) {
    nccl_group *n = g->impl;
    ENT_NCCL_CHECK(ncclAllReduce(send, recv, count, nccl_dtype(dtype), nccl_op(op), n->comm,
                                 n->stream));
    return finish(g, req);
}

static ent_status nc_reduce_scatter(ent_group_t *g, const void *send, void *recv, size_t count,
                                    ent_dtype dtype, ent_op op, ent_request_t *req) {
    nccl_group *n = g->impl;
    ENT_NCCL_CHECK(ncclReduceScatter(send, recv, count, nccl_dtype(dtype), nccl_op(op), n->comm,
                                     n->stream));
    return finish(g, req);
}

static ent_status nc_allgather(ent_group_t *g, const void *send, void *recv, size_t count,
                               ent_dtype dtype, ent_request_t *req) {
    nccl_group *n = g->impl;
    ENT_NCCL_CHECK(ncclAllGather(send, recv, count, nccl_dtype(dtype), n->comm, n->stream));
    return finish(g, req);
}

static ent_status nc_broadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype,
                               int root, ent_request_t *req) {
    nccl_group *n = g->impl;
    ENT_NCCL_CHECK(ncclBroadcast(buf, buf, count, nccl_dtype(dtype), root, n->comm, n->stream));
    return finish(g, req);
}

static ent_status nc_barrier(ent_group_t *g) {
    nccl_group *n = g->impl;
    ENT_CUDA_CHECK(cudaStreamSynchronize(n->stream));
    ENT_MPI_CHECK(MPI_Barrier(g->mpi));
    return ENT_OK;
}

static ent_status nc_wait(ent_request_t *req) {
    cudaEvent_t ev = req->impl;
    cudaError_t rc = cudaEventSynchronize(ev);
    cudaEventDestroy(ev);
    req->impl = NULL;
    if (rc != cudaSuccess)
        return ent_fail(ENT_ERR_INTERNAL, "NCCL %s on group %s: %s", req->what, req->group->name,
                        cudaGetErrorString(rc));
    return ENT_OK;
}

static ent_status nc_test(ent_request_t *req, int *done) {
    cudaError_t rc = cudaEventQuery((cudaEvent_t)req->impl);
    *done = rc == cudaSuccess;
    if (rc != cudaSuccess && rc != cudaErrorNotReady)
        return ent_fail(ENT_ERR_INTERNAL, "NCCL %s on group %s: %s", req->what, req->group->name,
                        cudaGetErrorString(rc));
    return ENT_OK;
}

static void nc_free_group(ent_group_t *g) {
    nccl_group *n = g->impl;
    if (n == NULL) return;
    if (n->comm) ncclCommDestroy(n->comm);
    if (n->stream) cudaStreamDestroy(n->stream);
    free(n);
    g->impl = NULL;
}

static const struct ent_comm_backend_i nccl_backend = {
    .name = "nccl",
    .host_memory = 0,
    .native_avg = 1,
    .reduces_half = 1,
    .allreduce = nc_allreduce,
    .reduce_scatter = nc_reduce_scatter,
    .allgather = nc_allgather,
    .broadcast = nc_broadcast,
    .barrier = nc_barrier,
    .wait = nc_wait,
    .test = nc_test,
    .free_group = nc_free_group,
};

int ent_comm_have_nccl(void) { return 1; }

ent_status ent_group_new_nccl(ent_comm_t *comm, ent_group_t *mpi_group, ent_group_t **out) {
    *out = NULL;
    // every rank of the group learns whether every rank has its GPU, so a
    // node short of GPUs fails the whole group instead of hanging it in init
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
    int ok = comm->local_rank < gpus, all_ok = 0, worst = 0;
    ENT_MPI_CHECK(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, mpi_group->mpi));
    if (!all_ok) {
        int mine = ok ? -1 : comm->rank;
        ENT_MPI_CHECK(MPI_Allreduce(&mine, &worst, 1, MPI_INT, MPI_MAX, mpi_group->mpi));
        if (!ok)
            return ent_fail(ENT_ERR_USAGE,
                            "this node has %d GPU(s) for %d ranks: start at most one rank per "
                            "GPU (Slurm: --ntasks-per-node no larger than --gpus-per-node)",
                            gpus, comm->local_size);
        return ent_fail(ENT_ERR_USAGE, "rank %d has no GPU of its own (see its message)", worst);
    }
    cudaError_t ce = cudaSetDevice(comm->local_rank);
    if (ce != cudaSuccess)
        return ent_fail(ENT_ERR_INTERNAL, "cannot use GPU %d: %s", comm->local_rank,
                        cudaGetErrorString(ce));

    ncclUniqueId id;
    if (mpi_group->rank == 0) ENT_NCCL_CHECK(ncclGetUniqueId(&id));
    ENT_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi_group->mpi));

    ent_group_t *g = calloc(1, sizeof *g);
    nccl_group *n = calloc(1, sizeof *n);
    if (g == NULL || n == NULL) {
        free(g);
        free(n);
        return ent_fail(ENT_ERR_NOMEM, "out of memory creating a NCCL group");
    }
    g->iface = &nccl_backend;
    snprintf(g->name, sizeof g->name, "%s", mpi_group->name);
    g->rank = mpi_group->rank;
    g->size = mpi_group->size;
    g->mpi = mpi_group->mpi;
    g->owns_mpi = 0;
    g->impl = n;
    ent_status st = ENT_OK;
    ncclResult_t nr = ncclCommInitRank(&n->comm, g->size, id, g->rank);
    if (nr != ncclSuccess) {
        st = ent_fail(ENT_ERR_INTERNAL, "NCCL initialisation of group %s failed: %s", g->name,
                      ncclGetErrorString(nr));
        n->comm = NULL;
    } else if ((ce = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        st = ent_fail(ENT_ERR_INTERNAL, "cannot create a CUDA stream: %s", cudaGetErrorString(ce));
    }
    if (st != ENT_OK) {
        ent_group_free(&g);
        return st;
    }
    *out = g;
    return ENT_OK;
}

#else // no NCCL in this build

int ent_comm_have_nccl(void) { return 0; }

ent_status ent_group_new_nccl(ent_comm_t *comm, ent_group_t *mpi_group, ent_group_t **out) {
    (void)comm;
    (void)mpi_group;
    *out = NULL;
    return ent_fail(ENT_ERR_USAGE, "this build has no NCCL backend: configure it where the CUDA "
                    "toolkit and NCCL are installed (cmake -DENT_CUDA=ON)");
}

#endif
