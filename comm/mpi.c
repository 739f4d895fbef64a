// mpi.c: the MPI collectives backend, for buffers in host memory.
//
// Blocking calls use MPI's blocking collectives (Open MPI's tuned algorithms,
// faster than the non-blocking ones); non-blocking calls use MPI_I*. Counts
// beyond INT_MAX are split into parts. AVG is a SUM scaled by 1/size.
#include "comm_impl.h"

#include <limits.h>
#include <string.h>

MPI_Datatype ent_mpi_dtype(ent_dtype dtype) {
    switch (dtype) {
    case ENT_F32: return MPI_FLOAT;
    case ENT_F64: return MPI_DOUBLE;
    case ENT_I32: return MPI_INT32_T;
    case ENT_I64: return MPI_INT64_T;
    case ENT_U64: return MPI_UINT64_T;
    case ENT_BF16: case ENT_F16: return MPI_UINT16_T;
    case ENT_I8: return MPI_INT8_T;
    case ENT_U8: return MPI_UINT8_T;
    case ENT_DTYPE_COUNT: break;
    }
    return MPI_DATATYPE_NULL;
}

static MPI_Op mpi_op(ent_op op) {
    switch (op) {
    case ENT_MAX: return MPI_MAX;
    case ENT_MIN: return MPI_MIN;
    default: return MPI_SUM; // AVG: scaled afterwards
    }
}

void ent_scale_host(void *buf, size_t count, ent_dtype dtype, int by) {
    if (dtype == ENT_F32) {
        float *x = buf, s = 1.0f / (float)by;
        for (size_t i = 0; i < count; i++) x[i] *= s;
    } else if (dtype == ENT_F64) {
        double *x = buf, s = 1.0 / by;
        for (size_t i = 0; i < count; i++) x[i] *= s;
    }
}

// Number of parts of at most INT_MAX elements, checked against the request's room.
static ent_status split_count(size_t count, int *parts) {
    size_t n = count == 0 ? 1 : (count + INT_MAX - 1) / INT_MAX;
    if (n > ENT_REQ_MAX_PARTS)
        return ent_fail(ENT_ERR_INTERNAL, "collective of %zu elements is too large", count);
    *parts = (int)n;
    return ENT_OK;
}

static ent_status mpi_allreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                                ent_dtype dtype, ent_op op, ent_request_t *req) {
    int parts = 0;
    ENT_CHECK(split_count(count, &parts));
    size_t esz = ent_dtype_size(dtype);
    for (int p = 0; p < parts; p++) {
        size_t off = (size_t)p * INT_MAX, n = count - off < INT_MAX ? count - off : INT_MAX;
        const void *s = send == recv ? MPI_IN_PLACE : (const char *)send + off * esz;
        void *r = (char *)recv + off * esz;
        if (req == NULL) {
            ENT_MPI_CHECK(MPI_Allreduce(s, r, (int)n, ent_mpi_dtype(dtype), mpi_op(op), g->mpi));
        } else {
            ENT_MPI_CHECK(MPI_Iallreduce(s, r, (int)n, ent_mpi_dtype(dtype), mpi_op(op), g->mpi,
                                         &req->mpi[req->nparts++]));
        }
    }
    return ENT_OK;
}

static ent_status mpi_reduce_scatter(ent_group_t *g, const void *send, void *recv,
                                     size_t count, ent_dtype dtype, ent_op op,
                                     ent_request_t *req) {
    if (count > INT_MAX)
        return ent_fail(ENT_ERR_INTERNAL, "reduce-scatter of %zu elements per rank is too large",
                        count);
    if (req == NULL) {
        ENT_MPI_CHECK(MPI_Reduce_scatter_block(send, recv, (int)count, ent_mpi_dtype(dtype),
                                               mpi_op(op), g->mpi));
    } else {
        ENT_MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, (int)count, ent_mpi_dtype(dtype),
                                                mpi_op(op), g->mpi, &req->mpi[req->nparts++]));
    }
    return ENT_OK;
}

static ent_status mpi_allgather(ent_group_t *g, const void *send, void *recv, size_t count,
                                ent_dtype dtype, ent_request_t *req) {
    if (count > INT_MAX)
        return ent_fail(ENT_ERR_INTERNAL, "all-gather of %zu elements per rank is too large",
                        count);
    // in place when send is this rank's slot of recv
    const void *s = send == (const char *)recv + (size_t)g->rank * count * ent_dtype_size(dtype)
                        ? MPI_IN_PLACE : send;
    if (req == NULL) {
        ENT_MPI_CHECK(MPI_Allgather(s, (int)count, ent_mpi_dtype(dtype), recv, (int)count,
                                    ent_mpi_dtype(dtype), g->mpi));
    } else {
        ENT_MPI_CHECK(MPI_Iallgather(s, (int)count, ent_mpi_dtype(dtype), recv, (int)count,
                                     ent_mpi_dtype(dtype), g->mpi, &req->mpi[req->nparts++]));
    }
    return ENT_OK;
}

static ent_status mpi_broadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype,
                                int root, ent_request_t *req) {
    int parts = 0;
    ENT_CHECK(split_count(count, &parts));
    size_t esz = ent_dtype_size(dtype);
    for (int p = 0; p < parts; p++) {
        size_t off = (size_t)p * INT_MAX, n = count - off < INT_MAX ? count - off : INT_MAX;
        void *b = (char *)buf + off * esz;
        if (req == NULL) {
            ENT_MPI_CHECK(MPI_Bcast(b, (int)n, ent_mpi_dtype(dtype), root, g->mpi));
        } else {
            ENT_MPI_CHECK(MPI_Ibcast(b, (int)n, ent_mpi_dtype(dtype), root, g->mpi,
                                     &req->mpi[req->nparts++]));
        }
    }
    return ENT_OK;
}

static ent_status mpi_barrier(ent_group_t *g) {
    ENT_MPI_CHECK(MPI_Barrier(g->mpi));
    return ENT_OK;
}

static ent_status mpi_wait(ent_request_t *req) {
    ENT_MPI_CHECK(MPI_Waitall(req->nparts, req->mpi, MPI_STATUSES_IGNORE));
    return ENT_OK;
}

static ent_status mpi_test(ent_request_t *req, int *done) {
    ENT_MPI_CHECK(MPI_Testall(req->nparts, req->mpi, done, MPI_STATUSES_IGNORE));
    return ENT_OK;
}

const struct ent_comm_backend_i ent_comm_mpi_backend = {
    .name = "mpi",
    .host_memory = 1,
    .native_avg = 0,
    .reduces_half = 0,
    .allreduce = mpi_allreduce,
    .reduce_scatter = mpi_reduce_scatter,
    .allgather = mpi_allgather,
    .broadcast = mpi_broadcast,
    .barrier = mpi_barrier,
    .wait = mpi_wait,
    .test = mpi_test,
    .free_group = NULL,
};
