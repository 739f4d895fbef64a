// comm_impl.h: private to comm/.
#ifndef ENT_COMM_IMPL_H
#define ENT_COMM_IMPL_H

#include "ent_comm.h"

#include <mpi.h>

struct ent_comm {
    MPI_Comm world;
    MPI_Comm node; // ranks sharing this node's memory
    int rank, size;
    int local_rank, local_size;
    int num_nodes;
};

// A collectives backend: a table filled by comm/mpi.c and comm/nccl.c. Every
// entry starts the operation; with req == NULL it also completes it.
struct ent_comm_backend_i {
    const char *name;
    int host_memory;  // buffers are host memory (size-1 groups copy them with memcpy)
    int native_avg;   // computes AVG itself (else group.c scales a SUM on the host)
    int reduces_half; // reduces bf16 and f16
    ent_status (*allreduce)(ent_group_t *g, const void *send, void *recv, size_t count,
                            ent_dtype dtype, ent_op op, ent_request_t *req);
    ent_status (*reduce_scatter)(ent_group_t *g, const void *send, void *recv, size_t count,
                                 ent_dtype dtype, ent_op op, ent_request_t *req);
    ent_status (*allgather)(ent_group_t *g, const void *send, void *recv, size_t count,
                            ent_dtype dtype, ent_request_t *req);
    ent_status (*broadcast)(ent_group_t *g, void *buf, size_t count, ent_dtype dtype, int root,
                            ent_request_t *req);
    ent_status (*barrier)(ent_group_t *g);
    ent_status (*wait)(ent_request_t *req);
    ent_status (*test)(ent_request_t *req, int *done);
    void (*free_group)(ent_group_t *g); // backend-private state
};

struct ent_group {
    const struct ent_comm_backend_i *iface;
    char name[16];
    int rank, size;
    MPI_Comm mpi;  // the group's ranks (NCCL groups keep it for bootstrap)
    int owns_mpi;  // free mpi with the group
    void *impl;    // backend-private (ncclComm_t and its stream; a staged group's backend)
};

#define ENT_REQ_MAX_PARTS 8

struct ent_request {
    ent_group_t *group;
    const char *what; // "all-reduce", ... for the watchdog's message
    MPI_Request mpi[ENT_REQ_MAX_PARTS];
    int nparts;
    // AVG: recv is scaled by 1/size when the operation completes
    void *avg_buf;
    size_t avg_count;
    ent_dtype dtype;
    void *impl; // backend-private (CUDA event)
};

extern const struct ent_comm_backend_i ent_comm_mpi_backend;
extern const struct ent_comm_backend_i ent_comm_staged_backend;

// A NCCL group of host's ranks whose collectives run on `stream`, a
// backend's cudaStream_t, on that stream's GPU (comm/nccl.c says how they
// order with the backend's work). Collective over host's ranks. The caller
// owns the group; the stream must outlive it. ENT_ERR_INTERNAL in a build
// without NCCL (ent_comm_have_nccl says which).
ent_status ent_nccl_group_on_stream(const ent_group_t *host, void *stream, ent_group_t **out);

// Wraps an MPI communicator as a group (owns_mpi: free it with the group).
ent_status ent_group_from_mpi(MPI_Comm mpi, const char *name, int owns_mpi, ent_group_t **out);

// The MPI datatype of a dtype (bf16 and f16 as 16-bit words: moved, never
// reduced); MPI_DATATYPE_NULL for a value that is not an ent_dtype.
MPI_Datatype ent_mpi_dtype(ent_dtype dtype);

// Divides count values of buf by `by` (AVG after a SUM), on the host.
void ent_scale_host(void *buf, size_t count, ent_dtype dtype, int by);

// The watchdog: marks the start and end of a wait inside a collective.
void ent_watch_begin(const char *what, const ent_group_t *g);
void ent_watch_end(void);
void ent_watch_start_thread(double timeout_seconds, int rank);

#endif // ENT_COMM_IMPL_H
