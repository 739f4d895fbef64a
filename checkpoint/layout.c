// layout.c: the file driver that lays out a multi-rank checkpoint.
//
// Before several ranks write a checkpoint, one of them creates the whole file
// alone: attributes, groups, and every dataset with every chunk allocated at
// its checksummed size (H5D_ALLOC_TIME_EARLY). The ranks then open it together
// and each writes its own whole chunks in place (ckpt_write_rows), which
// changes no metadata.
//
// Allocating the chunks of a filtered dataset makes HDF5 write each one
// through the filter pipeline (filled, though the fill time is NEVER): the
// file would be written twice. This driver is HDF5's POSIX driver (sec2) with
// one difference: while the caller's flag is set, raw-data writes are
// dropped. The chunks get their addresses and index entries, their bytes are
// never written, and the file is extended to its full size when it is closed
// (sec2 truncates to the end of the allocated space), leaving holes that the
// ranks fill. Metadata is written as usual.
//
// The file it leaves is an ordinary HDF5 file: the driver writes nothing of
// its own (no driver block in the superblock).
#include "ckpt_impl.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

typedef struct {
    const int *drop; // raw-data writes are dropped while *drop is non-zero
} layout_info;

typedef struct {
    H5FD_t pub; // filled by HDF5; first, as every driver's file struct
    H5FD_t *sec2;
    const int *drop;
} layout_file;

static H5FD_t *sec2_of(const H5FD_t *f) { return ((const layout_file *)f)->sec2; }

static H5FD_t *layout_open(const char *name, unsigned flags, hid_t fapl, haddr_t maxaddr) {
    const layout_info *info = H5Pget_driver_info(fapl);
    if (info == NULL) return NULL;
    hid_t inner = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_sec2(inner);
    H5FD_t *sec2 = H5FDopen(name, flags, inner, maxaddr);
    H5Pclose(inner);
    if (sec2 == NULL) return NULL;
    layout_file *f = calloc(1, sizeof *f);
    if (f == NULL) {
        H5FDclose(sec2);
        return NULL;
    }
    f->sec2 = sec2;
    f->drop = info->drop;
    return &f->pub;
}

static herr_t layout_close(H5FD_t *file) {
    herr_t rc = H5FDclose(sec2_of(file));
    free(file);
    return rc;
}

static int layout_cmp(const H5FD_t *a, const H5FD_t *b) { return H5FDcmp(sec2_of(a), sec2_of(b)); }

static herr_t layout_query(const H5FD_t *file, unsigned long *flags) {
    // the class is asked with no file: sec2's flags either way
    if (file == NULL) return H5FDdriver_query(H5FD_SEC2, flags);
    return H5FDquery(sec2_of(file), flags) < 0 ? -1 : 0;
}

static haddr_t layout_get_eoa(const H5FD_t *file, H5FD_mem_t type) {
    return H5FDget_eoa(sec2_of(file), type);
}

static herr_t layout_set_eoa(H5FD_t *file, H5FD_mem_t type, haddr_t addr) {
    return H5FDset_eoa(sec2_of(file), type, addr);
}

static haddr_t layout_get_eof(const H5FD_t *file, H5FD_mem_t type) {
    return H5FDget_eof(sec2_of(file), type);
}

static herr_t layout_get_handle(H5FD_t *file, hid_t fapl, void **handle) {
    return H5FDget_vfd_handle(sec2_of(file), fapl, handle);
}

static herr_t layout_read(H5FD_t *file, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size,
                          void *buf) {
    return H5FDread(sec2_of(file), type, dxpl, addr, size, buf);
}

static herr_t layout_write(H5FD_t *file, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size,
                           const void *buf) {
    const layout_file *f = (const layout_file *)file;
    if (type == H5FD_MEM_DRAW && *f->drop) return 0;
    return H5FDwrite(f->sec2, type, dxpl, addr, size, buf);
}

static herr_t layout_flush(H5FD_t *file, hid_t dxpl, hbool_t closing) {
    return H5FDflush(sec2_of(file), dxpl, closing);
}

static herr_t layout_truncate(H5FD_t *file, hid_t dxpl, hbool_t closing) {
    return H5FDtruncate(sec2_of(file), dxpl, closing);
}

static herr_t layout_lock(H5FD_t *file, hbool_t rw) { return H5FDlock(sec2_of(file), rw); }

static herr_t layout_unlock(H5FD_t *file) { return H5FDunlock(sec2_of(file)); }

static const H5FD_class_t layout_class = {
#ifdef H5FD_CLASS_VERSION // HDF5 1.14 on: classes carry a version and a value
    .version = H5FD_CLASS_VERSION,
    .value = 500, // from the range HDF5 leaves to drivers of its users
#endif
    .name = "entente-layout",
    .maxaddr = ((haddr_t)1 << (8 * sizeof(off_t) - 1)) - 1, // as sec2
    .fc_degree = H5F_CLOSE_WEAK,
    .fapl_size = sizeof(layout_info),
    .open = layout_open,
    .close = layout_close,
    .cmp = layout_cmp,
    .query = layout_query,
    .get_eoa = layout_get_eoa,
    .set_eoa = layout_set_eoa,
    .get_eof = layout_get_eof,
    .get_handle = layout_get_handle,
    .read = layout_read,
    .write = layout_write,
    .flush = layout_flush,
    .truncate = layout_truncate,
    .lock = layout_lock,
    .unlock = layout_unlock,
    .fl_map = H5FD_FLMAP_DICHOTOMY,
};

static hid_t layout_driver = -1;

static void register_layout(void) { layout_driver = H5FDregister(&layout_class); }

hid_t ckpt_layout_fapl(const int *drop) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    ckpt_h5_init();
    pthread_once(&once, register_layout);
    if (layout_driver < 0) return -1;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    layout_info info = {drop};
    if (fapl >= 0 && H5Pset_driver(fapl, layout_driver, &info) < 0) {
        H5Pclose(fapl);
        return -1;
    }
    return fapl;
}

ent_status ckpt_layout_chunks(hid_t dset, const char *name) {
    hid_t space = H5Dget_space(dset), dcpl = H5Dget_create_plist(dset), type = H5Dget_type(dset);
    hsize_t dims[2] = {1, 1}, chunk[2] = {1, 1};
    int ndim = space < 0 ? -1 : H5Sget_simple_extent_dims(space, dims, NULL);
    int ok = ndim >= 1 && ndim <= 2 && dcpl >= 0 && H5Pget_chunk(dcpl, ndim, chunk) == ndim &&
             type >= 0;
    size_t bytes = ok ? chunk[0] * chunk[1] * H5Tget_size(type) + 4 : 0; // + Fletcher32
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (type >= 0) H5Tclose(type);
    if (!ok) return ckpt_h5_fail(ENT_ERR_INTERNAL, "dataset %s: not a chunked 1- or 2-d dataset", name);
    // what the chunks are "written" from: never read (the writes are dropped),
    // mapped but never touched
    void *none = mmap(NULL, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (none == MAP_FAILED) return ent_fail(ENT_ERR_NOMEM, "out of memory laying out %s", name);
    ent_status st = ENT_OK;
    for (hsize_t r = 0; r < dims[0] && st == ENT_OK; r += chunk[0])
        for (hsize_t c = 0; c < dims[1] && st == ENT_OK; c += chunk[1]) {
            hsize_t offset[2] = {r, c};
            if (H5Dwrite_chunk(dset, H5P_DEFAULT, 0, offset, bytes, none) < 0)
                st = ckpt_h5_fail(ENT_ERR_IO, "dataset %s: cannot allocate the chunk at row %llu",
                                  name, (unsigned long long)r);
        }
    munmap(none, bytes);
    return st;
}
