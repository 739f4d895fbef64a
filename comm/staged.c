// staged.c: device groups; collectives on the memory of a backend that is
// not host memory, over MPI, by staging through host buffers.
//
// A device group has the ranks of a host group and a compute backend. On a
// backend with a stream, in a build with NCCL, it is a NCCL group on that
// stream (comm/nccl.c). On a backend whose memory is the host's (cpu) it is
// an ordinary MPI group. On another (the guarded test backend; a GPU without
// NCCL), every collective copies its input to a host buffer through the
// backend, runs the MPI collective there, and copies the result back; a
// non-blocking one does the copy back when it completes. AVG is finished on the host copy, before the
// result goes back. Nothing here touches device memory but the backend's
// copies: the guarded backend proves it.
#include "comm_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ent_backend_t *be;
} staged_group;

typedef struct {
    void *host;      // the staging buffer the MPI operation works in
    void *dev;       // where the result goes back (NULL: nothing comes back)
    size_t bytes;    // of the result
    size_t offset;   // of the result within host
    int avg_by;      // > 1: divide the result by this before it goes back
    ent_dtype dtype;
    size_t count;
} staged_req;

static ent_backend_t *backend_of(const ent_group_t *g) { return ((staged_group *)g->impl)->be; }

// The result of a finished operation back to device memory; frees the stage.
static ent_status finish(ent_group_t *g, staged_req *s) {
    ent_status st = ENT_OK;
    if (s->avg_by > 1) ent_scale_host((char *)s->host + s->offset, s->count, s->dtype, s->avg_by);
    ent_backend_t *be = backend_of(g);
    if (s->dev != NULL)
        st = be->iface->to_device(be, s->dev, (char *)s->host + s->offset, s->bytes);
    free(s->host);
    free(s);
    return st;
}

// Starts a staged operation: `in_bytes` of `in` (device) copied to a host
// buffer of `host_bytes`; the result (`out_bytes` at `out_offset` of it) goes
// to `out` when it completes. Blocking when req is NULL.
typedef ent_status (*host_op)(ent_group_t *g, void *host, size_t count, ent_dtype dtype,
                              ent_op op, int root, ent_request_t *req);

static ent_status staged(ent_group_t *g, const void *in, size_t in_offset, size_t in_bytes,
                         size_t host_bytes, void *out, size_t out_offset, size_t out_bytes,
                         size_t count, ent_dtype dtype, ent_op op, int root, host_op run,
                         ent_request_t *req) {
    ent_backend_t *be = backend_of(g);
    staged_req *s = calloc(1, sizeof *s);
    void *host = malloc(host_bytes ? host_bytes : 1);
    if (s == NULL || host == NULL) {
        free(s);
        free(host);
        return ent_fail(ENT_ERR_NOMEM, "out of memory staging %zu bytes for group %s",
                        host_bytes, g->name);
    }
    *s = (staged_req){.host = host, .dev = out, .bytes = out_bytes, .offset = out_offset,
                      .avg_by = op == ENT_AVG ? g->size : 0, .dtype = dtype,
                      .count = out_bytes / ent_dtype_size(dtype)};
    ent_status st = in_bytes ? be->iface->to_host(be, (char *)host + in_offset, in, in_bytes)
                             : ENT_OK;
    if (st == ENT_OK) st = run(g, host, count, dtype, op == ENT_AVG ? ENT_SUM : op, root, req);
    if (st != ENT_OK) {
        free(host);
        free(s);
        return st;
    }
    if (req == NULL) return finish(g, s);
    req->impl = s;
    return ENT_OK;
}

static ent_status host_allreduce(ent_group_t *g, void *host, size_t count, ent_dtype dtype,
                                 ent_op op, int root, ent_request_t *req) {
    (void)root;
    return ent_comm_mpi_backend.allreduce(g, host, host, count, dtype, op, req);
}

static ent_status host_reduce_scatter(ent_group_t *g, void *host, size_t count, ent_dtype dtype,
                                      ent_op op, int root, ent_request_t *req) {
    (void)root; // the input is size x count, the result after it
    void *out = (char *)host + (size_t)g->size * count * ent_dtype_size(dtype);
    return ent_comm_mpi_backend.reduce_scatter(g, host, out, count, dtype, op, req);
}

static ent_status host_allgather(ent_group_t *g, void *host, size_t count, ent_dtype dtype,
                                 ent_op op, int root, ent_request_t *req) {
    (void)op;
    (void)root; // this rank's part sits in its slot of the result
    void *mine = (char *)host + (size_t)g->rank * count * ent_dtype_size(dtype);
    return ent_comm_mpi_backend.allgather(g, mine, host, count, dtype, req);
}

static ent_status host_broadcast(ent_group_t *g, void *host, size_t count, ent_dtype dtype,
                                 ent_op op, int root, ent_request_t *req) {
    (void)op;
    return ent_comm_mpi_backend.broadcast(g, host, count, dtype, root, req);
}

static ent_status staged_allreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                                   ent_dtype dtype, ent_op op, ent_request_t *req) {
    size_t bytes = count * ent_dtype_size(dtype);
    return staged(g, send, 0, bytes, bytes, recv, 0, bytes, count, dtype, op, 0, host_allreduce,
                  req);
}

static ent_status staged_reduce_scatter(ent_group_t *g, const void *send, void *recv,
                                        size_t count, ent_dtype dtype, ent_op op,
                                        ent_request_t *req) {
    size_t bytes = count * ent_dtype_size(dtype), all = (size_t)g->size * bytes;
    return staged(g, send, 0, all, all + bytes, recv, all, bytes, count, dtype, op, 0,
                  host_reduce_scatter, req);
}

static ent_status staged_allgather(ent_group_t *g, const void *send, void *recv, size_t count,
                                   ent_dtype dtype, ent_request_t *req) {
    size_t bytes = count * ent_dtype_size(dtype), all = (size_t)g->size * bytes;
    return staged(g, send, (size_t)g->rank * bytes, bytes, all, recv, 0, all, count, dtype,
                  ENT_SUM, 0, host_allgather, req);
}

static ent_status staged_broadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype,
                                   int root, ent_request_t *req) {
    size_t bytes = count * ent_dtype_size(dtype);
    return staged(g, buf, 0, g->rank == root ? bytes : 0, bytes, g->rank == root ? NULL : buf, 0,
                  bytes, count, dtype, ENT_SUM, root, host_broadcast, req);
}

static ent_status staged_barrier(ent_group_t *g) { return ent_comm_mpi_backend.barrier(g); }

static ent_status staged_wait(ent_request_t *req) {
    ent_status st = ent_comm_mpi_backend.wait(req);
    staged_req *s = req->impl;
    req->impl = NULL;
    if (s == NULL) return st;
    if (st != ENT_OK) {
        free(s->host);
        free(s);
        return st;
    }
    return finish(req->group, s);
}

static ent_status staged_test(ent_request_t *req, int *done) {
    return ent_comm_mpi_backend.test(req, done); // the copy back happens in wait
}

static void staged_free_group(ent_group_t *g) {
    free(g->impl);
    g->impl = NULL;
}

const struct ent_comm_backend_i ent_comm_staged_backend = {
    .name = "mpi-staged",
    .host_memory = 0,
    .native_avg = 1,
    .reduces_half = 0,
    .allreduce = staged_allreduce,
    .reduce_scatter = staged_reduce_scatter,
    .allgather = staged_allgather,
    .broadcast = staged_broadcast,
    .barrier = staged_barrier,
    .wait = staged_wait,
    .test = staged_test,
    .free_group = staged_free_group,
};

ent_status ent_group_new_device(const ent_group_t *host, ent_backend_t *be, ent_group_t **out) {
    *out = NULL;
    // a backend that queues its work on a stream gets NCCL on that stream,
    // where this build has NCCL; without, its copies stage for MPI
    void *stream = ent_backend_stream(be);
    if (stream != NULL && ent_comm_have_nccl()) return ent_nccl_group_on_stream(host, stream, out);
    ent_group_t *g = calloc(1, sizeof *g);
    if (g == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating group %s", host->name);
    *g = (ent_group_t){.rank = host->rank, .size = host->size, .mpi = host->mpi, .owns_mpi = 0};
    snprintf(g->name, sizeof g->name, "%s", host->name);
    if (be->iface->is_host) {
        g->iface = &ent_comm_mpi_backend; // the backend's memory is MPI's to use
    } else {
        staged_group *sg = calloc(1, sizeof *sg);
        if (sg == NULL) {
            free(g);
            return ent_fail(ENT_ERR_NOMEM, "out of memory creating group %s", host->name);
        }
        sg->be = be;
        g->impl = sg;
        g->iface = &ent_comm_staged_backend;
    }
    *out = g;
    return ENT_OK;
}
