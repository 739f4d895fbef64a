// header_check.c: compiled by the test `headers_without_mpi` with only
// kernels/ and comm/ on the include path, none of MPI's: the public headers
// that the coalition link will include must not need <mpi.h> (and its own
// declarations need neither <mpi.h> nor <zmq.h>).
#include "ent_comm.h"
#include "ent_kernels.h"

int header_check_groups(const ent_group_t *g) { return ent_group_size(g); }

ent_status header_check_link(const void *msg, size_t len) {
    ent_link_opts o = ent_link_opts_default();
    (void)o;
    return ent_link_decode_header(msg, len, "peer", NULL);
}
