// world.c: MPI start-up, the world's shape, and agreeing on errors.
#include "comm_impl.h"

#include <stdlib.h>

ent_status ent_comm_init(int *argc, char ***argv, ent_comm_t **out) {
    return ent_comm_init_threads(argc, argv, 0, out);
}

// A launcher that started this process as one of several tasks, as its
// variables say: Hydra's mpiexec (MPICH, Intel MPI) and srun. If MPI then sees
// a world of one, the launcher does not speak to this MPI library (Open MPI's
// own mpirun sets OMPI_COMM_WORLD_SIZE, srun needs --mpi=pmix), and every task
// would train alone on the same files. Returns the task count (0: none said).
static long launcher_tasks(const char **var) {
    static const char *vars[] = {"PMI_SIZE", "SLURM_STEP_NUM_TASKS"};
    if (getenv("OMPI_COMM_WORLD_SIZE") != NULL) return 0; // started by Open MPI itself
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        char *end = NULL;
        long n = v != NULL ? strtol(v, &end, 10) : 0;
        if (v != NULL && end != v && *end == '\0' && n > 1) {
            *var = vars[i];
            return n;
        }
    }
    return 0;
}

ent_status ent_comm_init_threads(int *argc, char ***argv, int multiple, ent_comm_t **out) {
    *out = NULL;
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        // Open MPI's non-blocking all-reduce (libnbc) defaults to recursive
        // doubling, twice as slow as its blocking one from 1 MiB up on shared
        // memory; Rabenseifner's algorithm matches it (bench_allreduce). The
        // user's own setting wins; other MPIs ignore the variable.
        setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "3", 0);
        // Started without mpirun, Open MPI forks a daemon (orted) for a world
        // of one, which only MPI_Comm_spawn and friends need, and entente uses
        // none: isolated, a `ckpt import` or a one-rank `train` starts 0.18 s
        // sooner (0.63 s against 0.82 s, median of 10). Under mpirun the
        // variable is unused.
        setenv("OMPI_MCA_ess_singleton_isolated", "1", 0);
        int provided = 0;
        // FUNNELED: only the main thread calls MPI; OpenMP threads compute.
        int want = multiple == ENT_COMM_SERIALIZED ? MPI_THREAD_SERIALIZED
                   : multiple                      ? MPI_THREAD_MULTIPLE
                                                   : MPI_THREAD_FUNNELED;
        const char *var = NULL;
        long tasks = launcher_tasks(&var);
        if (MPI_Init_thread(argc, argv, want, &provided) != MPI_SUCCESS)
            return ent_fail(ENT_ERR_INTERNAL, "MPI could not start (MPI_Init_thread failed; the "
                            "MPI library's own message, if any, is above)");
        int size = 0;
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        if (tasks > 1 && size == 1) {
            MPI_Finalize();
            return ent_fail(ENT_ERR_USAGE, "started as one of %ld tasks (%s=%ld) but MPI sees a "
                            "world of 1 rank: the launcher does not match this MPI library, and "
                            "each task would train alone; start it with this MPI's own mpirun "
                            "(Open MPI), or under Slurm with srun --mpi=pmix", tasks, var, tasks);
        }
        if (provided < want && want == MPI_THREAD_SERIALIZED)
            return ent_fail(ENT_ERR_USAGE, "this MPI library does not provide "
                            "MPI_THREAD_SERIALIZED, which the coordinator's checkpoint thread "
                            "needs");
        if (provided < want)
            return ent_fail(ENT_ERR_USAGE, "this MPI library does not provide "
                            "MPI_THREAD_MULTIPLE, which checkpoint.async needs: set "
                            "checkpoint.async = false");
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
    int leader = c->local_rank == 0;
    ENT_MPI_CHECK(MPI_Allreduce(&leader, &c->num_nodes, 1, MPI_INT, MPI_SUM, c->world));
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
int ent_comm_num_nodes(const ent_comm_t *comm) { return comm->num_nodes; }

void ent_comm_set_timeout(ent_comm_t *comm, double seconds) {
    ent_watch_start_thread(seconds, comm->rank);
}

ent_status ent_comm_agree(ent_comm_t *comm, ent_status local) {
    if (comm->size == 1) return local;
    // MINLOC over (rank, status) pairs: the lowest failing rank and its status
    // (a rank that did not fail offers the world size, which never wins)
    int mine[2] = {local != ENT_OK ? comm->rank : comm->size, (int)local}, first[2];
    ent_comm_watch_begin("an agreement", "the world");
    int rc = MPI_Allreduce(mine, first, 1, MPI_2INT, MPI_MINLOC, comm->world);
    ent_comm_watch_end();
    if (rc != MPI_SUCCESS)
        return local != ENT_OK ? local : ent_fail(ENT_ERR_INTERNAL, "MPI_Allreduce failed");
    if (first[0] == comm->size) return ENT_OK;
    if (local != ENT_OK) return local;
    return ent_fail((ent_status)first[1], "rank %d failed (see its message)", first[0]);
}
