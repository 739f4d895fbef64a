// header_check.c: compiled by the test `headers_without_mpi` with only
// kernels/ and comm/ on the include path, none of MPI's: the public headers
// that the coalition link will include must not need <mpi.h>.
#include "ent_comm.h"
#include "ent_kernels.h"

int header_check_groups(const ent_group_t *g) { return ent_group_size(g); }
