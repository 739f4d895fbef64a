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
};

// Translates an MPI error code into ENT_ERR_INTERNAL with MPI's own message.
#define ENT_MPI_CHECK(call)                                                      \
    do {                                                                         \
        int ent_mpi_rc__ = (call);                                               \
        if (ent_mpi_rc__ != MPI_SUCCESS) {                                       \
            char ent_mpi_msg__[MPI_MAX_ERROR_STRING];                            \
            int ent_mpi_len__ = 0;                                               \
            MPI_Error_string(ent_mpi_rc__, ent_mpi_msg__, &ent_mpi_len__);        \
            return ent_fail(ENT_ERR_INTERNAL, "%s:%d: %s: %s", __FILE__, __LINE__, \
                            #call, ent_mpi_msg__);                               \
        }                                                                        \
    } while (0)

#endif // ENT_COMM_IMPL_H
