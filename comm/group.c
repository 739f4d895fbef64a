// group.c: process groups, the collectives' dispatch, and the DP x TP grid.
//
// Every public collective goes through here: arguments are checked, the
// backend starts the operation, and every blocking part runs under the
// watchdog. AVG is finished here (a SUM scaled by 1/size) for backends
// that do not average themselves. What a backend can do is in its table
// (host memory, native AVG, half-precision reductions), never in a test of
// which backend it is.
#include "comm_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ent_group_rank(const ent_group_t *g) { return g->rank; }
int ent_group_size(const ent_group_t *g) { return g->size; }
const char *ent_group_name(const ent_group_t *g) { return g->name; }
const char *ent_group_backend(const ent_group_t *g) { return g->iface->name; }
void ent_group_mpi_comm(const ent_group_t *g, void *mpi_comm) {
    *(MPI_Comm *)mpi_comm = g->mpi;
}

ent_status ent_group_from_mpi(MPI_Comm mpi, const char *name, int owns_mpi, ent_group_t **out) {
    ent_group_t *g = calloc(1, sizeof *g);
    if (g == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating group %s", name);
    g->iface = &ent_comm_mpi_backend;
    snprintf(g->name, sizeof g->name, "%s", name);
    g->mpi = mpi;
    g->owns_mpi = owns_mpi;
    MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
    MPI_Comm_rank(mpi, &g->rank);
    MPI_Comm_size(mpi, &g->size);
    *out = g;
    return ENT_OK;
}

void ent_group_free(ent_group_t **g) {
    if (g == NULL || *g == NULL) return;
    if ((*g)->iface->free_group) (*g)->iface->free_group(*g);
    if ((*g)->owns_mpi) MPI_Comm_free(&(*g)->mpi);
    free(*g);
    *g = NULL;
}

// ---------------------------------------------------------------------------
// dispatch

// A type every collective moves: one of the enum's.
static ent_status check_type(const ent_group_t *g, ent_dtype dtype, const char *what) {
    if (ent_dtype_size(dtype) == 0)
        return ent_fail(ENT_ERR_INTERNAL, "%s on group %s: element type %d is not an ent_dtype",
                        what, g->name, (int)dtype);
    return ENT_OK;
}

// A reduction of dtype by op that the group's backend computes.
static ent_status check_op(const ent_group_t *g, ent_dtype dtype, ent_op op, const char *what) {
    ENT_CHECK(check_type(g, dtype, what));
    if (op == ENT_AVG && !ent_dtype_is_float(dtype))
        return ent_fail(ENT_ERR_INTERNAL, "%s on group %s: AVG needs a floating type, not %s",
                        what, g->name, ent_dtype_name(dtype));
    if (!g->iface->reduces_half && (dtype == ENT_BF16 || dtype == ENT_F16))
        return ent_fail(ENT_ERR_INTERNAL,
                        "%s on group %s: MPI has no %s arithmetic (reduce in f32, or on a NCCL "
                        "group)", what, g->name, ent_dtype_name(dtype));
    return ENT_OK;
}

// Finishes a SUM that stands for an AVG. The NCCL backend averages itself.
static void finish_avg(ent_group_t *g, void *recv, size_t count, ent_dtype dtype, ent_op op) {
    if (op == ENT_AVG && !g->iface->native_avg && g->size > 1)
        ent_scale_host(recv, count, dtype, g->size);
}

static ent_status new_request(ent_group_t *g, const char *what, ent_request_t **req) {
    *req = calloc(1, sizeof **req);
    if (*req == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory starting %s", what);
    (*req)->group = g;
    (*req)->what = what;
    return ENT_OK;
}

// Runs a blocking backend call under the watchdog.
#define WATCHED(what, g, call)                                                   \
    do {                                                                         \
        ent_watch_begin(what, g);                                                \
        ent_status ent_w__ = (call);                                             \
        ent_watch_end();                                                         \
        if (ent_w__ != ENT_OK) return ent_w__;                                   \
    } while (0)

ent_status ent_allreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                         ent_dtype dtype, ent_op op) {
    ENT_CHECK(check_op(g, dtype, op, "all-reduce"));
    if (g->size == 1 && g->iface->host_memory) { // device memory: the backend copies
        if (send != recv) memcpy(recv, send, count * ent_dtype_size(dtype));
        return ENT_OK;
    }
    WATCHED("all-reduce", g, g->iface->allreduce(g, send, recv, count, dtype, op, NULL));
    finish_avg(g, recv, count, dtype, op);
    return ENT_OK;
}

ent_status ent_reduce_scatter(ent_group_t *g, const void *send, void *recv, size_t count,
                              ent_dtype dtype, ent_op op) {
    ENT_CHECK(check_op(g, dtype, op, "reduce-scatter"));
    WATCHED("reduce-scatter", g, g->iface->reduce_scatter(g, send, recv, count, dtype, op, NULL));
    finish_avg(g, recv, count, dtype, op);
    return ENT_OK;
}

ent_status ent_allgather(ent_group_t *g, const void *send, void *recv, size_t count,
                         ent_dtype dtype) {
    ENT_CHECK(check_type(g, dtype, "all-gather"));
    WATCHED("all-gather", g, g->iface->allgather(g, send, recv, count, dtype, NULL));
    return ENT_OK;
}

ent_status ent_broadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype, int root) {
    ENT_CHECK(check_type(g, dtype, "broadcast"));
    if (root < 0 || root >= g->size)
        return ent_fail(ENT_ERR_INTERNAL, "broadcast on group %s: root %d out of range", g->name,
                        root);
    if (g->size == 1) return ENT_OK;
    WATCHED("broadcast", g, g->iface->broadcast(g, buf, count, dtype, root, NULL));
    return ENT_OK;
}

ent_status ent_barrier(ent_group_t *g) {
    if (g->size == 1) return ENT_OK;
    WATCHED("barrier", g, g->iface->barrier(g));
    return ENT_OK;
}

// Completes the start of a non-blocking operation: a request the backend
// refused is freed; an AVG is noted, to be finished by ent_wait.
static ent_status started(ent_status st, ent_request_t **req, void *recv, size_t count,
                          ent_dtype dtype, ent_op op) {
    if (st != ENT_OK) {
        free(*req);
        *req = NULL;
        return st;
    }
    if (op == ENT_AVG) {
        (*req)->avg_buf = recv;
        (*req)->avg_count = count;
        (*req)->dtype = dtype;
    }
    return ENT_OK;
}

ent_status ent_iallreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                          ent_dtype dtype, ent_op op, ent_request_t **req) {
    ENT_CHECK(check_op(g, dtype, op, "all-reduce"));
    ENT_CHECK(new_request(g, "all-reduce", req));
    return started(g->iface->allreduce(g, send, recv, count, dtype, op, *req), req, recv, count,
                   dtype, op);
}

ent_status ent_ireduce_scatter(ent_group_t *g, const void *send, void *recv, size_t count,
                               ent_dtype dtype, ent_op op, ent_request_t **req) {
    ENT_CHECK(check_op(g, dtype, op, "reduce-scatter"));
    ENT_CHECK(new_request(g, "reduce-scatter", req));
    return started(g->iface->reduce_scatter(g, send, recv, count, dtype, op, *req), req, recv,
                   count, dtype, op);
}

ent_status ent_iallgather(ent_group_t *g, const void *send, void *recv, size_t count,
                          ent_dtype dtype, ent_request_t **req) {
    ENT_CHECK(check_type(g, dtype, "all-gather"));
    ENT_CHECK(new_request(g, "all-gather", req));
    return started(g->iface->allgather(g, send, recv, count, dtype, *req), req, recv, count,
                   dtype, ENT_SUM);
}

ent_status ent_ibroadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype, int root,
                          ent_request_t **req) {
    ENT_CHECK(check_type(g, dtype, "broadcast"));
    if (root < 0 || root >= g->size)
        return ent_fail(ENT_ERR_INTERNAL, "broadcast on group %s: root %d out of range", g->name,
                        root);
    ENT_CHECK(new_request(g, "broadcast", req));
    return started(g->iface->broadcast(g, buf, count, dtype, root, *req), req, buf, count, dtype,
                   ENT_SUM);
}

ent_status ent_wait(ent_request_t **req) {
    if (req == NULL || *req == NULL) return ENT_OK;
    ent_request_t *r = *req;
    ent_group_t *g = r->group;
    ent_watch_begin(r->what, g);
    ent_status st = g->iface->wait(r);
    ent_watch_end();
    if (st == ENT_OK && r->avg_buf != NULL)
        finish_avg(g, r->avg_buf, r->avg_count, r->dtype, ENT_AVG);
    free(r);
    *req = NULL;
    return st;
}

ent_status ent_test(ent_request_t *req, int *done) {
    *done = 0;
    if (req == NULL) {
        *done = 1;
        return ENT_OK;
    }
    return req->group->iface->test(req, done);
}

// ---------------------------------------------------------------------------
// the grid

ent_status ent_grid_new(ent_comm_t *comm, int tp, ent_grid **out) {
    *out = NULL;
    if (tp < 1 || comm->size % tp != 0)
        return ent_fail(ENT_ERR_USAGE,
                        "parallel.tp = %d does not divide the world size %d: run a multiple of "
                        "%d ranks", tp, comm->size, tp);
    ent_grid *grid = calloc(1, sizeof *grid);
    if (grid == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating the grid");
    ent_status st = ENT_OK;
    grid->tp_size = tp;
    grid->dp_size = comm->size / tp;
    grid->tp_rank = comm->rank % tp;
    grid->dp_rank = comm->rank / tp;
    MPI_Comm world, dp, tpc;
    if (MPI_Comm_dup(comm->world, &world) != MPI_SUCCESS ||
        MPI_Comm_split(comm->world, grid->tp_rank, grid->dp_rank, &dp) != MPI_SUCCESS ||
        MPI_Comm_split(comm->world, grid->dp_rank, grid->tp_rank, &tpc) != MPI_SUCCESS) {
        free(grid);
        return ent_fail(ENT_ERR_INTERNAL, "cannot split the world into a %d x %d grid",
                        comm->size / tp, tp);
    }
    ENT_CHECK_GOTO(ent_group_from_mpi(world, "world", 1, &grid->world), fail);
    ENT_CHECK_GOTO(ent_group_from_mpi(dp, "dp", 1, &grid->dp), fail);
    ENT_CHECK_GOTO(ent_group_from_mpi(tpc, "tp", 1, &grid->tp), fail);
    // tensor parallelism all-reduces every block: it belongs inside a node.
    // A node is named by the lowest world rank on it.
    if (tp > 1) {
        int node_id = comm->rank, lo = 0, hi = 0, spans = 0, any = 0;
        MPI_Allreduce(MPI_IN_PLACE, &node_id, 1, MPI_INT, MPI_MIN, comm->node);
        MPI_Allreduce(&node_id, &lo, 1, MPI_INT, MPI_MIN, tpc);
        MPI_Allreduce(&node_id, &hi, 1, MPI_INT, MPI_MAX, tpc);
        spans = lo != hi;
        MPI_Allreduce(&spans, &any, 1, MPI_INT, MPI_MAX, comm->world);
        if (any && comm->rank == 0)
            ent_log_warn("a tensor-parallel group of %d ranks spans nodes: place %d ranks per "
                         "node (or a multiple) so that TP traffic stays inside a node", tp, tp);
    }
    *out = grid;
    return ENT_OK;
fail:
    ent_grid_free(&grid);
    return st;
}

ent_status ent_grid_new_self(ent_grid **out) {
    *out = NULL;
    ent_grid *grid = calloc(1, sizeof *grid);
    if (grid == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating the grid");
    ent_status st = ENT_OK;
    grid->tp_size = grid->dp_size = 1;
    MPI_Comm c[3];
    for (int i = 0; i < 3; i++) MPI_Comm_dup(MPI_COMM_SELF, &c[i]);
    ENT_CHECK_GOTO(ent_group_from_mpi(c[0], "world", 1, &grid->world), fail);
    ENT_CHECK_GOTO(ent_group_from_mpi(c[1], "dp", 1, &grid->dp), fail);
    ENT_CHECK_GOTO(ent_group_from_mpi(c[2], "tp", 1, &grid->tp), fail);
    *out = grid;
    return ENT_OK;
fail:
    ent_grid_free(&grid);
    return st;
}

ent_status ent_grid_attach_device(ent_grid *grid, ent_backend_t *be) {
    ent_group_free(&grid->dp_dev);
    ent_group_free(&grid->tp_dev);
    // creating a NCCL group is collective: every rank creates both groups, so
    // that one whose DP group failed does not leave its TP peers waiting
    ent_status st = ent_group_new_device(grid->dp, be, &grid->dp_dev);
    char first[1024] = ""; // as long as a recorded message
    if (st != ENT_OK) snprintf(first, sizeof first, "%s", ent_last_error());
    ent_status st_tp = ent_group_new_device(grid->tp, be, &grid->tp_dev);
    if (st == ENT_OK) return st_tp;
    ent_group_free(&grid->tp_dev);
    return ent_fail(st, "%s", first); // the DP group's message, not the TP group's
}

void ent_grid_free(ent_grid **grid) {
    if (grid == NULL || *grid == NULL) return;
    ent_group_free(&(*grid)->dp_dev);
    ent_group_free(&(*grid)->tp_dev);
    ent_group_free(&(*grid)->world);
    ent_group_free(&(*grid)->dp);
    ent_group_free(&(*grid)->tp);
    free(*grid);
    *grid = NULL;
}
