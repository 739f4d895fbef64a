// nccl.c: the NCCL collectives backend, for buffers in GPU memory.
//
// A NCCL group is the twin of an MPI group: the same ranks, bootstrapped by
// broadcasting NCCL's unique id over MPI. Every collective of a group runs on
// one CUDA stream:
//   - a device group of a backend that has a stream (ent_group_new_device)
//     runs on that stream, on the stream's GPU. A collective is queued in
//     order with the backend's ops: it reads its input after every op the
//     backend queued before it, and the ops queued after it see its result,
//     with no synchronisation between them. On one stream, collectives and
//     the backend's compute take turns; they do not overlap.
//   - a group made by ent_group_new_nccl runs on a stream of its own, on GPU
//     local_rank, ordered with nothing else: the caller makes the inputs
//     ready (synchronises whatever wrote them) before a collective.
// Either way a blocking call returns once the stream has passed the end of
// the collective (and so everything queued on it before), and a non-blocking
// call records an event after the collective, which ent_wait waits for and
// ent_test queries (work queued on the stream later delays neither).
#include "comm_impl.h"

#ifdef ENT_HAVE_NCCL

#include <cuda_runtime.h>
#include <limits.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;
    int owns_stream; // a stream of the group's own, not a backend's
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
    if (n->stream && n->owns_stream) cudaStreamDestroy(n->stream);
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

static ent_status unique_id(ncclUniqueId *id) {
    ENT_NCCL_CHECK(ncclGetUniqueId(id));
    return ENT_OK;
}

// The ranks of host agree that each is ready (`ready`: ENT_OK, or this
// rank's error, recorded), so that none waits in NCCL's initialisation for a
// rank that will never come, and rank 0 gives them NCCL's unique id.
static ent_status agree_and_share_id(const ent_group_t *host, ent_status ready,
                                     ncclUniqueId *id) {
    if (ready == ENT_OK && host->rank == 0) ready = unique_id(id);
    // the lowest world rank that failed tells the others where to look
    int world_rank = 0, mine = INT_MAX, first = INT_MAX;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    if (ready != ENT_OK) mine = world_rank;
    ENT_MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, host->mpi));
    if (ready != ENT_OK) return ready;
    if (first != INT_MAX)
        return ent_fail(ENT_ERR_USAGE, "rank %d cannot join NCCL group %s: it has no GPU of "
                        "its own, or NCCL failed there (see its message)", first, host->name);
    ENT_MPI_CHECK(MPI_Bcast(id, sizeof *id, MPI_BYTE, 0, host->mpi));
    return ENT_OK;
}

// Creates the NCCL group of host's ranks on the current GPU, running on
// `stream` (a backend's), or on a stream of its own when stream is NULL.
// `ready` as for agree_and_share_id. Collective over host's ranks; its waits
// are watched like a collective's, so a rank that never comes (it failed
// before) stops the others after the timeout.
static ent_status nccl_group_create(const ent_group_t *host, ent_status ready,
                                    cudaStream_t stream, ent_group_t **out) {
    *out = NULL;
    ncclUniqueId id = {0};
    ent_watch_begin("NCCL's bootstrap", host);
    ent_status st = agree_and_share_id(host, ready, &id);
    ent_watch_end();
    if (st != ENT_OK) return st;

    ent_group_t *g = calloc(1, sizeof *g);
    nccl_group *n = calloc(1, sizeof *n);
    if (g == NULL || n == NULL) {
        free(g);
        free(n);
        return ent_fail(ENT_ERR_NOMEM, "out of memory creating a NCCL group");
    }
    g->iface = &nccl_backend;
    snprintf(g->name, sizeof g->name, "%s", host->name);
    g->rank = host->rank;
    g->size = host->size;
    g->mpi = host->mpi;
    g->owns_mpi = 0;
    g->impl = n;
    cudaError_t ce = cudaSuccess;
    ent_watch_begin("NCCL's initialisation", host);
    ncclResult_t nr = ncclCommInitRank(&n->comm, g->size, id, g->rank);
    ent_watch_end();
    if (nr != ncclSuccess) {
        st = ent_fail(ENT_ERR_INTERNAL, "NCCL initialisation of group %s failed: %s", g->name,
                      ncclGetErrorString(nr));
        n->comm = NULL;
    } else if (stream != NULL) {
        n->stream = stream;
    } else if ((ce = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        st = ent_fail(ENT_ERR_INTERNAL, "cannot create a CUDA stream: %s", cudaGetErrorString(ce));
    } else {
        n->owns_stream = 1;
    }
    if (st != ENT_OK) {
        ent_group_free(&g);
        return st;
    }
    *out = g;
    return ENT_OK;
}

ent_status ent_group_new_nccl(ent_comm_t *comm, ent_group_t *mpi_group, ent_group_t **out) {
    *out = NULL;
    // this rank takes GPU local_rank of its node; a node short of GPUs fails
    // the whole group instead of hanging it in initialisation
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
    ent_status ready = ENT_OK;
    cudaError_t ce;
    if (comm->local_rank >= gpus)
        ready = ent_fail(ENT_ERR_USAGE,
                         "this node has %d GPU(s) for %d ranks: start at most one rank per "
                         "GPU (Slurm: --ntasks-per-node no larger than --gpus-per-node)",
                         gpus, comm->local_size);
    else if ((ce = cudaSetDevice(comm->local_rank)) != cudaSuccess)
        ready = ent_fail(ENT_ERR_INTERNAL, "cannot use GPU %d: %s", comm->local_rank,
                         cudaGetErrorString(ce));
    return nccl_group_create(mpi_group, ready, NULL, out);
}

ent_status ent_nccl_group_on_stream(const ent_group_t *host, void *stream, ent_group_t **out) {
    ent_status ready = ENT_OK;
#if CUDART_VERSION >= 12080
    // NCCL binds a communicator to the current GPU: make it the stream's
    int dev = -1;
    cudaError_t ce = cudaStreamGetDevice((cudaStream_t)stream, &dev);
    if (ce == cudaSuccess) ce = cudaSetDevice(dev);
    if (ce != cudaSuccess)
        ready = ent_fail(ENT_ERR_INTERNAL, "cannot use the GPU of the backend's stream: %s",
                         cudaGetErrorString(ce));
#endif // older CUDA: the backend made its GPU the current one
    return nccl_group_create(host, ready, (cudaStream_t)stream, out);
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

ent_status ent_nccl_group_on_stream(const ent_group_t *host, void *stream, ent_group_t **out) {
    (void)host;
    (void)stream;
    *out = NULL;
    return ent_fail(ENT_ERR_INTERNAL, "this build has no NCCL backend");
}

#endif
