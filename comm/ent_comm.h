// ent_comm.h: communication inside a site.
//
// Every entente process is an MPI rank from its first line. A site's ranks
// form a 2-D grid, world = DP x TP with the TP ranks of a group adjacent
// (world rank = dp_rank * tp_size + tp_rank), so tensor parallelism stays
// inside a node. Collectives run on process groups; each group has a backend:
// MPI for host memory, NCCL for device memory (when built with CUDA).
//
// Every wait inside a collective is watched: a rank that has waited longer
// than the timeout (ent_comm_set_timeout) concludes that a peer died or hangs,
// prints which collective on which group, and exits with ENT_EXIT_PEER_LOST,
// so a job never hangs forever. (The coalition link over ZeroMQ will live
// here too.)
#ifndef ENT_COMM_H
#define ENT_COMM_H

#include "ent_kernels.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Exit code of a rank whose collective timed out (a peer is lost).
#define ENT_EXIT_PEER_LOST 3

typedef struct ent_comm ent_comm_t;

// Initialises MPI (a singleton when started without mpirun) and returns the
// world, which the caller owns and releases with ent_comm_finalize. MPI is
// called from one thread at a time (MPI_THREAD_FUNNELED).
ent_status ent_comm_init(int *argc, char ***argv, ent_comm_t **out);
// The same, with MPI_THREAD_MULTIPLE when `multiple` is set (a background
// thread that also calls MPI, e.g. asynchronous checkpoints); fails with a
// clear message when the MPI library does not provide it.
ent_status ent_comm_init_threads(int *argc, char ***argv, int multiple, ent_comm_t **out);
// Finalises MPI and NULLs *comm.
void ent_comm_finalize(ent_comm_t **comm);

int ent_comm_rank(const ent_comm_t *comm);
int ent_comm_size(const ent_comm_t *comm);
// Rank among the processes on this node, and how many share the node.
int ent_comm_local_rank(const ent_comm_t *comm);
int ent_comm_local_size(const ent_comm_t *comm);
// Number of distinct nodes in the world.
int ent_comm_num_nodes(const ent_comm_t *comm);

// Bounds every wait in a collective to `seconds` (0 = no bound); see above.
void ent_comm_set_timeout(ent_comm_t *comm, double seconds);

// Combines a status across the world: every rank gets ENT_OK only if every
// rank passed ENT_OK. A rank that failed keeps its own message; the others
// get "rank N failed: see its message" (N the lowest failing rank). Watched
// like a collective: a rank that never arrives stops the others after the
// timeout with ENT_EXIT_PEER_LOST.
ent_status ent_comm_agree(ent_comm_t *comm, ent_status local);

// Puts a wait on other ranks that does not go through the collectives below
// (an agreement on a library's communicator, a collective parallel-HDF5 call)
// under the watchdog: begin before it and end after it, on the same thread.
// `what` and `where` name it in the timeout's message and must outlive it.
void ent_comm_watch_begin(const char *what, const char *where);
void ent_comm_watch_end(void);

// ---------------------------------------------------------------------------
// process groups and collectives

typedef struct ent_group ent_group_t;
typedef struct ent_request ent_request_t;

// Element types are kernels/' ent_dtype. The MPI backend moves every type;
// it reduces all but bf16 and f16 (MPI has no such types), which NCCL reduces.
typedef enum { ENT_SUM = 0, ENT_AVG, ENT_MAX, ENT_MIN } ent_op; // AVG: floating types only

int ent_group_rank(const ent_group_t *g);
int ent_group_size(const ent_group_t *g);
const char *ent_group_name(const ent_group_t *g); // "world", "dp", "tp"
const char *ent_group_backend(const ent_group_t *g); // "mpi", "nccl"
// The group's MPI communicator, for libraries that take one (parallel HDF5),
// written to *(MPI_Comm *)mpi_comm: so that this header needs no <mpi.h> and
// code that never calls MPI (the coalition link) never sees it.
void ent_group_mpi_comm(const ent_group_t *g, void *mpi_comm);

// Blocking collectives. send may equal recv (in place) for allreduce.
// reduce_scatter: send holds size x count values, recv gets this rank's count.
// allgather: send holds count values, recv gets size x count in rank order.
ent_status ent_allreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                         ent_dtype dtype, ent_op op);
ent_status ent_reduce_scatter(ent_group_t *g, const void *send, void *recv, size_t count,
                              ent_dtype dtype, ent_op op);
ent_status ent_allgather(ent_group_t *g, const void *send, void *recv, size_t count,
                         ent_dtype dtype);
ent_status ent_broadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype, int root);
ent_status ent_barrier(ent_group_t *g);

// Non-blocking variants: start the operation and return a request the caller
// owns; ent_wait completes it (and frees it), ent_test advances it.
ent_status ent_iallreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                          ent_dtype dtype, ent_op op, ent_request_t **req);
ent_status ent_ireduce_scatter(ent_group_t *g, const void *send, void *recv, size_t count,
                               ent_dtype dtype, ent_op op, ent_request_t **req);
ent_status ent_iallgather(ent_group_t *g, const void *send, void *recv, size_t count,
                          ent_dtype dtype, ent_request_t **req);
ent_status ent_ibroadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype, int root,
                          ent_request_t **req);
// Completes the request, frees it and NULLs *req (a NULL *req is a no-op).
ent_status ent_wait(ent_request_t **req);
// Advances the request without blocking; *done is set when it completed (then
// ent_wait returns at once).
ent_status ent_test(ent_request_t *req, int *done);

// ---------------------------------------------------------------------------
// the DP x TP grid of a site

typedef struct {
    ent_group_t *world, *dp, *tp; // host-memory (MPI) groups
    // groups of the same ranks for buffers in the compute backend's memory
    // (ent_grid_attach_device); NULL until attached
    ent_group_t *dp_dev, *tp_dev;
    int dp_rank, dp_size, tp_rank, tp_size;
} ent_grid;

// Splits the world into the grid; tp must divide the world size. The caller
// owns the grid (ent_grid_free). Warns when a TP group spans nodes.
ent_status ent_grid_new(ent_comm_t *comm, int tp, ent_grid **out);
// A grid of this rank alone (DP = TP = 1), e.g. for a single-rank reference.
ent_status ent_grid_new_self(ent_grid **out);
void ent_grid_free(ent_grid **grid);
// Gives the grid its DP and TP groups for the memory of backend be
// (ent_group_new_device: NCCL on be's stream where it has one), freed with
// the grid; be must outlive them. Collective over the world.
ent_status ent_grid_attach_device(ent_grid *grid, ent_backend_t *be);

// A group of the same ranks as `host` for buffers in the memory of backend
// be (name: ent_group_backend):
//   - "nccl" when be has a stream (ent_backend_stream) and this build has
//     NCCL: its collectives are queued on be's stream, on that stream's GPU,
//     in order with be's ops. A collective reads its input after every op be
//     queued before it, and be's later ops see its result, with no
//     synchronisation in between; a blocking one returns once the stream has
//     passed it (and everything queued before it); a non-blocking one
//     returns once queued, and ent_wait / ent_test follow an event recorded
//     right after it. Creating it is collective over `host`'s ranks (NCCL's
//     bootstrap), and fails on every rank when one cannot join.
//   - "mpi", `host`'s MPI, when be's memory is host memory (the cpu backend,
//     which has no stream: its ops have finished when they return);
//   - otherwise "mpi-staged": MPI through host buffers that be's copies fill
//     and empty, so a device whose memory the host must not touch still runs
//     every collective.
// The caller owns it (ent_group_free); `host` and be must outlive it.
ent_status ent_group_new_device(const ent_group_t *host, ent_backend_t *be, ent_group_t **out);

// A device-memory (NCCL) twin of an MPI group: same ranks, NCCL unique id
// distributed with MPI_Bcast, this rank on GPU local_rank, collectives on a
// stream of the group's own, ordered with no other work: the caller makes
// their inputs ready first (ent_group_new_device orders them with a
// backend's stream instead). Fails with a clear message when there are fewer
// GPUs on the node than ranks, or when this build has no NCCL. The caller
// owns it (ent_group_free).
ent_status ent_group_new_nccl(ent_comm_t *comm, ent_group_t *mpi_group, ent_group_t **out);
void ent_group_free(ent_group_t **g);
// 1 when this build has the NCCL backend.
int ent_comm_have_nccl(void);

#ifdef __cplusplus
}
#endif

#endif // ENT_COMM_H
