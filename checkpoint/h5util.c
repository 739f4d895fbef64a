// h5util.c: HDF5 errors, attributes and layout details shared by checkpoint/.
#include "ckpt_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const ckpt_groups[CKPT_NGROUPS] = {"params", "adam_m", "adam_v",
                                                CKPT_COALITION "/anchor",
                                                CKPT_COALITION "/outer_momentum",
                                                CKPT_COALITION "/residual"};

// Parameters and the coalition's arrays from arena offset 0, moments over the
// state range.
ckpt_sources ckpt_shard_sources(const ent_ckpt_shard *sh) {
    size_t total = sh->table->total, s0 = sh->state_first, s1 = s0 + sh->state_count;
    const ent_ckpt_coalition *c = sh->coalition;
    return (ckpt_sources){{sh->params, sh->adam_m, sh->adam_v, c ? c->anchor : NULL,
                           c ? c->outer_momentum : NULL, c ? c->residual : NULL},
                          {0, s0, s0, 0, 0, 0},
                          {total, s1, s1, total, total, total}};
}

void ent_ckpt_library_init(void) {
    H5dont_atexit();
    ckpt_h5_init();
}

void ckpt_h5_init(void) {
    static int done = 0;
    if (done) return;
    done = 1;
    // Lustre and GPFS often refuse flock; checkpoints are never shared for writing
    setenv("HDF5_USE_FILE_LOCKING", "FALSE", 0);
    H5open();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    // HDF5 allocates and frees a buffer per chunk (4 MiB); kept in the heap,
    // they are reused instead of being mapped and zeroed by the kernel anew
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

typedef struct {
    char innermost[512];
} walk_data;

static herr_t walk(unsigned n, const H5E_error2_t *err, void *data) {
    (void)n;
    walk_data *w = data;
    // walking downward, the last entry is where the failure started
    if (err->desc != NULL && err->desc[0] != '\0')
        snprintf(w->innermost, sizeof w->innermost, "%s", err->desc);
    return 0;
}

ent_status ckpt_h5_fail(ent_status st, const char *what, ...) {
    char head[1024];
    va_list ap;
    va_start(ap, what);
    vsnprintf(head, sizeof head, what, ap);
    va_end(ap);
    walk_data w = {""};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk, &w);
    H5Eclear2(H5E_DEFAULT);
    if (w.innermost[0]) return ent_fail(st, "%s: %s", head, w.innermost);
    return ent_fail(st, "%s", head);
}

ent_status ckpt_write_attr(hid_t obj, const ent_ckpt_attr *a) {
    hid_t space = H5Screate(H5S_SCALAR), type = -1;
    const void *value = NULL;
    switch (a->type) {
    case ENT_ATTR_I64: type = H5Tcopy(H5T_NATIVE_INT64); value = &a->i; break;
    case ENT_ATTR_U64: type = H5Tcopy(H5T_NATIVE_UINT64); value = &a->u; break;
    case ENT_ATTR_F64: type = H5Tcopy(H5T_NATIVE_DOUBLE); value = &a->f; break;
    case ENT_ATTR_STR:
        type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, strlen(a->s) + 1);
        H5Tset_strpad(type, H5T_STR_NULLTERM);
        value = a->s;
        break;
    }
    hid_t attr = H5Acreate2(obj, a->name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, type, value);
    ent_status st = rc < 0 ? ckpt_h5_fail(ENT_ERR_IO, "cannot write attribute %s", a->name) : ENT_OK;
    if (attr >= 0) H5Aclose(attr);
    H5Tclose(type);
    H5Sclose(space);
    return st;
}

static hid_t open_attr(hid_t obj, const char *path, const char *name, ent_status *st) {
    if (H5Aexists(obj, name) <= 0) {
        *st = ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is missing (not an entente checkpoint, "
                       "or a damaged one)", path, name);
        return -1;
    }
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) *st = ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot read attribute '%s'", path, name);
    return a;
}

// A text attribute's value as a C string: fixed-length texts of any padding
// (NULLTERM as entente writes them; NULLPAD without a terminating NUL and
// SPACEPAD, as h5py and others write them: HDF5's conversion to a
// NUL-terminated type one byte longer drops the padding) and variable-length
// ones. The first NUL ends it.
static ent_status read_text(hid_t a, hid_t type, const char *path, const char *name, char **text) {
    *text = NULL;
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mem, H5Tget_cset(type)); // HDF5 converts no character set to another
    herr_t rc = -1;
    if (H5Tis_variable_str(type) > 0) {
        char *p = NULL;
        H5Tset_size(mem, H5T_VARIABLE);
        rc = H5Aread(a, mem, &p);
        if (rc >= 0) *text = strdup(p != NULL ? p : "");
        if (p != NULL) H5free_memory(p);
    } else {
        size_t n = H5Tget_size(type);
        if (n == 0 || n > CKPT_TEXT_MAX) {
            H5Tclose(mem);
            return ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is a text of %zu bytes (accepted: "
                            "1 to %d)", path, name, n, CKPT_TEXT_MAX);
        }
        *text = calloc(n + 1, 1);
        H5Tset_size(mem, n + 1);
        H5Tset_strpad(mem, H5T_STR_NULLTERM);
        if (*text != NULL) rc = H5Aread(a, mem, *text);
        else rc = 0;
    }
    H5Tclose(mem);
    if (rc >= 0 && *text == NULL)
        return ent_fail(ENT_ERR_NOMEM, "out of memory reading attribute '%s' of %s", name, path);
    if (rc < 0) {
        free(*text);
        *text = NULL;
        return ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot read attribute '%s'", path, name);
    }
    return ENT_OK;
}

ent_status ckpt_read_value(hid_t a, const char *path, const char *name, ckpt_value *v) {
    memset(v, 0, sizeof *v);
    hid_t type = H5Aget_type(a), space = H5Aget_space(a);
    H5T_class_t cls = type < 0 ? H5T_NO_CLASS : H5Tget_class(type);
    size_t size = type < 0 ? 0 : H5Tget_size(type);
    int scalar = space >= 0 && H5Sget_simple_extent_type(space) == H5S_SCALAR;
    ent_status st = ENT_OK;
    herr_t rc = 0;
    if (!scalar || (cls != H5T_STRING && (size == 0 || size > 8))) {
        st = ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is not a single integer, number or text "
                      "(%s, %zu bytes)", path, name, scalar ? "a scalar" : "not a scalar", size);
    } else if (cls == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE) {
        v->type = ENT_ATTR_U64;
        rc = H5Aread(a, H5T_NATIVE_UINT64, &v->u);
    } else if (cls == H5T_INTEGER) {
        v->type = ENT_ATTR_I64;
        rc = H5Aread(a, H5T_NATIVE_INT64, &v->i);
    } else if (cls == H5T_FLOAT) {
        v->type = ENT_ATTR_F64;
        rc = H5Aread(a, H5T_NATIVE_DOUBLE, &v->f);
    } else if (cls == H5T_STRING) {
        v->type = ENT_ATTR_STR;
        st = read_text(a, type, path, name, &v->s);
    } else {
        st = ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is of HDF5 type class %d (accepted: an "
                      "integer, a floating-point number or a text)", path, name, (int)cls);
    }
    if (st == ENT_OK && rc < 0)
        st = ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot read attribute '%s'", path, name);
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    return st;
}

// Opens and reads the attribute; its value must be of type `want`.
static ent_status read_typed(hid_t obj, const char *path, const char *name, ent_attr_type want,
                             ckpt_value *v) {
    ent_status st = ENT_OK;
    hid_t a = open_attr(obj, path, name, &st);
    if (a < 0) return st;
    st = ckpt_read_value(a, path, name, v);
    H5Aclose(a);
    if (st != ENT_OK) return st;
    // an unsigned value that fits is as good as a signed one, and the reverse
    if (want == ENT_ATTR_I64 && v->type == ENT_ATTR_U64 && v->u <= INT64_MAX) {
        v->i = (int64_t)v->u;
        v->type = ENT_ATTR_I64;
    } else if (want == ENT_ATTR_U64 && v->type == ENT_ATTR_I64 && v->i >= 0) {
        v->u = (uint64_t)v->i;
        v->type = ENT_ATTR_U64;
    }
    if (v->type == want) return ENT_OK;
    static const char *const what[] = {"an integer (-2^63 to 2^63-1)", "an integer (0 to 2^64-1)",
                                       "a number", "a text"};
    free(v->s);
    return ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is not %s", path, name, what[want]);
}

ent_status ckpt_read_text_attr(hid_t obj, const char *path, const char *name, char **text) {
    ckpt_value v;
    *text = NULL;
    ENT_CHECK(read_typed(obj, path, name, ENT_ATTR_STR, &v));
    *text = v.s;
    return ENT_OK;
}

ent_status ckpt_read_i64_attr(hid_t obj, const char *path, const char *name, int64_t *v) {
    ckpt_value x;
    ENT_CHECK(read_typed(obj, path, name, ENT_ATTR_I64, &x));
    *v = x.i;
    return ENT_OK;
}

ent_status ckpt_read_u64_attr(hid_t obj, const char *path, const char *name, uint64_t *v) {
    ckpt_value x;
    ENT_CHECK(read_typed(obj, path, name, ENT_ATTR_U64, &x));
    *v = x.u;
    return ENT_OK;
}

hid_t ckpt_memory_space(int ndim, const ent_rect *rects, int nrects, size_t n) {
    if (n == 0) {
        hsize_t one = 1;
        hid_t m = H5Screate_simple(1, &one, NULL);
        H5Sselect_none(m);
        return m;
    }
    // an explicit hyperslab over the whole extent, not the default "all"
    // selection: HDF5 1.10 maps hyperslabs to chunks block by block, but "all"
    // element by element
    hsize_t zero[2] = {0, 0};
    if (nrects == 1) {
        hsize_t dims[2] = {(hsize_t)rects[0].count[0], (hsize_t)rects[0].count[1]};
        hid_t m = H5Screate_simple(ndim, dims, NULL);
        H5Sselect_hyperslab(m, H5S_SELECT_SET, zero, NULL, dims, NULL);
        return m;
    }
    hsize_t flat = (hsize_t)n;
    hid_t m = H5Screate_simple(1, &flat, NULL);
    H5Sselect_hyperslab(m, H5S_SELECT_SET, zero, NULL, &flat, NULL);
    return m;
}

void ckpt_select_blocks(hid_t fspace, hid_t mspace, const ent_rect *rects, int nrects) {
    H5Sselect_none(fspace);
    if (nrects == 0) H5Sselect_none(mspace);
    for (int k = 0; k < nrects; k++) {
        hsize_t start[2] = {(hsize_t)rects[k].start[0], (hsize_t)rects[k].start[1]};
        hsize_t count[2] = {(hsize_t)rects[k].count[0], (hsize_t)rects[k].count[1]};
        // SET first: a single block stays a regular selection, which HDF5
        // maps to chunks directly (an OR-built one goes element by element)
        H5Sselect_hyperslab(fspace, k == 0 ? H5S_SELECT_SET : H5S_SELECT_OR, start, NULL, count,
                            NULL);
    }
}

void ckpt_chunk_dims(int ndim, const int64_t shape[2], hsize_t chunk[2]) {
    const int64_t target = 1 << 22;
    if (ndim == 1) {
        chunk[0] = (hsize_t)(shape[0] < target ? shape[0] : target);
        chunk[1] = 1;
        return;
    }
    int64_t rows = target / shape[1];
    if (rows < 1) rows = 1;
    if (rows > shape[0]) rows = shape[0];
    chunk[0] = (hsize_t)rows;
    chunk[1] = (hsize_t)shape[1];
}

ent_status ckpt_check_format(hid_t file, const char *path) {
    char *format = NULL;
    ent_status st = ckpt_read_text_attr(file, path, "format", &format);
    if (st != ENT_OK)
        return ent_fail(ENT_ERR_INPUT, "%s is an HDF5 file but not an entente checkpoint (no "
                        "'format' attribute)", path);
    if (strcmp(format, ENT_CKPT_FORMAT) != 0) {
        st = ent_fail(ENT_ERR_INPUT, "%s is not an entente checkpoint (format '%.64s')", path,
                      format);
        free(format);
        return st;
    }
    free(format);
    int64_t version = 0;
    ENT_CHECK(ckpt_read_i64_attr(file, path, "format_version", &version));
    if (version != ENT_CKPT_VERSION)
        return ent_fail(ENT_ERR_INPUT,
                        "%s: checkpoint format version %lld is not supported (this build reads "
                        "version %d)", path, (long long)version, ENT_CKPT_VERSION);
    // without checksummed metadata a flipped bit in a dataset's type or
    // shape would be believed; the digest covers the attributes
    H5F_info2_t info;
    if (H5Fget_info2(file, &info) < 0)
        return ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot read the HDF5 superblock", path);
    // (version 2, HDF5's 1.8 format, checksums most metadata but not the
    // chunk indexes: a changed chunk coordinate would go unnoticed)
    if (info.super.version < 3)
        return ent_fail(ENT_ERR_INPUT, "%s: HDF5 superblock version %u: its metadata is not all "
                        "checksummed (accepted: 3 or later, HDF5's 1.10 format: h5py "
                        "libver=('v110', 'latest'))", path, info.super.version);
    return ckpt_check_digest(file, path);
}

void ckpt_set_format(hid_t fapl) { H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST); }

ent_status ckpt_fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ent_fail(ENT_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0) return ent_fail(ENT_ERR_IO, "cannot sync %s: %s", path, strerror(err));
    return ENT_OK;
}

ent_status ckpt_comm_shape(MPI_Comm comm, int *rank, int *size) {
    int r = 0, n = 1;
    ENT_MPI_CHECK(MPI_Comm_rank(comm, &r));
    ENT_MPI_CHECK(MPI_Comm_size(comm, &n));
    if (rank != NULL) *rank = r;
    if (size != NULL) *size = n;
    return ENT_OK;
}

ent_status ckpt_agree(MPI_Comm comm, ent_status local, const char *what) {
    int rank = 0, size = 1;
    ent_status shape = ckpt_comm_shape(comm, &rank, &size);
    if (shape != ENT_OK) return local != ENT_OK ? local : shape;
    int mine[2] = {local != ENT_OK ? rank : size, (int)local}, first[2];
    // a rank stuck in its I/O must not hold the others here forever
    ent_comm_watch_begin(what, "the checkpoint's ranks");
    int rc = MPI_Allreduce(mine, first, 1, MPI_2INT, MPI_MINLOC, comm);
    ent_comm_watch_end();
    if (rc != MPI_SUCCESS)
        return local != ENT_OK ? local
                               : ent_fail(ENT_ERR_INTERNAL, "%s: MPI_Allreduce failed (code %d)",
                                          what, rc);
    if (first[0] == size || local != ENT_OK) return local;
    return ent_fail((ent_status)first[1], "%s failed on rank %d (see its message)", what, first[0]);
}
