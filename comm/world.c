// world.c: MPI start-up and the world's shape.
#include "comm_impl.h"

#include <stdlib.h>

ent_status ent_comm_init(int *argc, char ***argv, ent_comm_t **out) {
    *out = NULL;
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = 0;
        // FUNNELED: only the main thread calls MPI; OpenMP threads compute.
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return ent_fail(ENT_ERR_INTERNAL, "MPI_Init_thread failed");
    }
    ent_comm_t *c = calloc(1, sizeof *c);
    if (c == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating the MPI world");
    // Errors come back as codes so they travel up as ent_status, not as aborts.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    c->world = MPI_COMM_WORLD;
    ENT_MPI_CHECK(MPI_Comm_rank(c->world, &c->rank));
    ENT_MPI_CHECK(MPI_Comm_size(c->world, &c->size));
    ENT_MPI_CHECK(MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL,
                                      &c->node));
    ENT_MPI_CHECK(MPI_Comm_rank(c->node, &c->local_rank));
    ENT_MPI_CHECK(MPI_Comm_size(c->node, &c->local_size));
    ent_log_set_rank(c->rank, c->size);
    *out = c;
    return ENT_OK;
}

void ent_comm_finalize(ent_comm_t **comm) {
    if (comm == NULL || *comm == NULL) return;
    MPI_Comm_free(&(*comm)->node);
    free(*comm);
    *comm = NULL;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

int ent_comm_rank(const ent_comm_t *comm) { return comm->rank; }
int ent_comm_size(const ent_comm_t *comm) { return comm->size; }
int ent_comm_local_rank(const ent_comm_t *comm) { return comm->local_rank; }
int ent_comm_local_size(const ent_comm_t *comm) { return comm->local_size; }

void ent_comm_abort(const ent_comm_t *comm, int code) {
    MPI_Abort(comm != NULL ? comm->world : MPI_COMM_WORLD, code);
    exit(code); // not reached: MPI_Abort ends the process
}
