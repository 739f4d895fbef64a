// ent_comm.h: communication. Inside a site every entente process is an MPI
// rank from its first line, so that data and tensor parallelism add process
// groups and collectives here, not start-up plumbing. (The coalition link
// over ZeroMQ will live here too.)
#ifndef ENT_COMM_H
#define ENT_COMM_H

#include "ent_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ent_comm ent_comm_t;

// Initialises MPI (a singleton when started without mpirun) and returns the
// world, which the caller owns and releases with ent_comm_finalize.
ent_status ent_comm_init(int *argc, char ***argv, ent_comm_t **out);
// Finalises MPI and NULLs *comm.
void ent_comm_finalize(ent_comm_t **comm);

int ent_comm_rank(const ent_comm_t *comm);
int ent_comm_size(const ent_comm_t *comm);
// Rank among the processes on this node, and how many share the node.
int ent_comm_local_rank(const ent_comm_t *comm);
int ent_comm_local_size(const ent_comm_t *comm);

// Ends every rank of the job with exit code `code` (after a fatal error on one rank).
void ent_comm_abort(const ent_comm_t *comm, int code) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif // ENT_COMM_H
