// ckpt_impl.h: private to checkpoint/.
#ifndef ENT_CKPT_IMPL_H
#define ENT_CKPT_IMPL_H

#include "ent_ckpt.h"

#include <hdf5.h>

// The three arenas a checkpoint holds, in file order.
#define CKPT_NGROUPS 3
extern const char *const ckpt_groups[CKPT_NGROUPS]; // "params", "adam_m", "adam_v"

struct ent_ckpt {
    hid_t file;
    char path[4096];
    int parallel; // opened by a group (collective reads)
};

// Turns HDF5's error stack printing off once (errors are reported by us).
void ckpt_h5_init(void);
// ENT_ERR_* with "what: <HDF5's innermost message>".
ent_status ckpt_h5_fail(ent_status st, const char *what, ...) __attribute__((format(printf, 2, 3)));

// Attributes on an object (the root group).
ent_status ckpt_write_attr(hid_t obj, const ent_ckpt_attr *a);
// A fixed-length text attribute, malloc'ed into *text.
ent_status ckpt_read_text_attr(hid_t obj, const char *path, const char *name, char **text);
ent_status ckpt_read_i64_attr(hid_t obj, const char *path, const char *name, int64_t *v);
ent_status ckpt_read_u64_attr(hid_t obj, const char *path, const char *name, uint64_t *v);

// Chunk shape of a dataset: whole rows up to about 1M floats (4 MiB).
void ckpt_chunk_dims(int ndim, const int64_t shape[2], hsize_t chunk[2]);

// The memory dataspace for n contiguous floats landing in the given blocks of
// the file: the block's own shape when there is one block (HDF5 then maps it
// to chunks directly; a mismatched shape makes it go element by element), a
// flat run otherwise, and an empty selection when n is 0.
hid_t ckpt_memory_space(int ndim, const ent_rect *rects, int nrects, size_t n);

// Whole datasets chunk by chunk past the filter pipeline (direct.c), for one
// process: Fletcher32 computed as HDF5 does; chunks must span whole rows.
uint32_t ckpt_fletcher32(const void *data, size_t nbytes);
int ckpt_direct_ok(hid_t dset);
// Threads that prepare and check chunks (default 1; 0: OpenMP's count).
void ckpt_direct_threads(int n);
ent_status ckpt_write_whole(hid_t dset, const char *name, const float *src);
ent_status ckpt_read_whole(hid_t dset, const char *name, float *dst);

// Checks the format and version attributes of an open file.
ent_status ckpt_check_format(hid_t file, const char *path);

// fsync of a file by name.
ent_status ckpt_fsync_path(const char *path);

#endif // ENT_CKPT_IMPL_H
