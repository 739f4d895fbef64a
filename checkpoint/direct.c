// direct.c: whole datasets written and read chunk by chunk, past HDF5's
// filter pipeline (H5Dwrite_chunk, H5Dread_chunk), for one process.
//
// HDF5 1.10 pushes every filtered chunk through a selection walk, a copy and
// a scalar checksum, one chunk at a time; that cost more than the disk. Here
// each chunk goes straight from the caller's memory to the file with the
// Fletcher32 checksum appended exactly as HDF5's filter does (so every HDF5
// reader verifies it). Reading, each chunk is read from the file where HDF5's
// index puts it, in pieces, and each piece is summed while it is still in
// the cache; a failure is named by dataset and chunk.
#include "ckpt_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>

// The buffer for edge chunks, kept from one tensor to the next (fresh 16 MiB
// each time would be fresh pages for the kernel to zero). HDF5 is called from
// one thread at a time, and so is this.
static unsigned char *pool;
static size_t pool_bytes;

static unsigned char *chunk_buffers(size_t bytes) {
    if (bytes <= pool_bytes) return pool;
    unsigned char *p = realloc(pool, bytes);
    if (p == NULL) return NULL;
    pool = p;
    pool_bytes = bytes;
    return pool;
}

typedef struct {
    int ndim;
    hsize_t dims[2], chunk[2];
    hsize_t nchunks;    // along the first dimension (chunks span whole rows)
    size_t chunk_elems; // floats in one (full) chunk
} chunk_layout;

// The dataset's chunking; 0 when it is not whole-row chunks (nothing recorded).
static int read_layout(hid_t dset, chunk_layout *l) {
    hid_t space = H5Dget_space(dset), dcpl = H5Dget_create_plist(dset);
    l->ndim = H5Sget_simple_extent_ndims(space);
    l->dims[1] = l->chunk[1] = 1;
    int ok = l->ndim >= 1 && l->ndim <= 2 && H5Sget_simple_extent_dims(space, l->dims, NULL) >= 0 &&
             H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 2, l->chunk) == l->ndim;
    H5Pclose(dcpl);
    H5Sclose(space);
    // whole-row chunks only (what entente writes); anything else goes through HDF5
    if (!ok || (l->ndim == 2 && l->chunk[1] != l->dims[1]) || l->chunk[0] == 0) return 0;
    l->nchunks = (l->dims[0] + l->chunk[0] - 1) / l->chunk[0];
    l->chunk_elems = (size_t)(l->chunk[0] * l->chunk[1]);
    return 1;
}

static ent_status layout_of(hid_t dset, const char *name, chunk_layout *l) {
    if (!read_layout(dset, l))
        return ent_fail(ENT_ERR_INPUT, "dataset %s is not chunked by whole rows", name);
    return ENT_OK;
}

// Chunk k of a tensor: its rows, and how many of them hold data.
static size_t chunk_rows(const chunk_layout *l, hsize_t k) {
    hsize_t first = k * l->chunk[0], rows = l->chunk[0];
    return (size_t)(first + rows <= l->dims[0] ? rows : l->dims[0] - first);
}

hsize_t ckpt_direct_rows(hid_t dset) {
    chunk_layout l;
    return read_layout(dset, &l) ? l.chunk[0] : 0;
}

int ckpt_whole_chunks(hsize_t chunk_rows, const ent_param_row *r, size_t lo, size_t hi, size_t *a,
                      size_t *b) {
    size_t cols = (size_t)r->shape[1];
    if (lo >= hi || r->numel != (size_t)r->shape[0] * cols) return 0; // split across TP ranks
    size_t per = (size_t)chunk_rows * cols;
    if (per == 0) return 0;
    *a = (lo + per - 1) / per * per;
    *b = hi == r->numel ? hi : hi / per * per;
    return *a < *b;
}

// Chunks [k0, k1) holding rows [row0, row1) (row1 past the end: to the end);
// the rows must fall on whole chunks.
static ent_status chunk_span(const chunk_layout *l, const char *name, hsize_t row0, hsize_t row1,
                             hsize_t *k0, hsize_t *k1) {
    if (row1 > l->dims[0]) row1 = l->dims[0];
    if (row0 % l->chunk[0] != 0 || (row1 % l->chunk[0] != 0 && row1 != l->dims[0]))
        return ent_fail(ENT_ERR_INTERNAL, "dataset %s: rows %llu..%llu do not fall on whole "
                        "chunks of %llu rows", name, (unsigned long long)row0,
                        (unsigned long long)row1, (unsigned long long)l->chunk[0]);
    *k0 = row0 / l->chunk[0];
    *k1 = (row1 + l->chunk[0] - 1) / l->chunk[0];
    return ENT_OK;
}

// Where chunk k of a tensor, whose data is (or goes) at `chunk`, moves
// between memory and file, chunks before k_end moving in one go: there
// itself when the chunk is full and 4 bytes follow it (the next chunk's, or
// the slack after the last), which then hold the checksum meanwhile and are
// saved in kept[] (*in_place = 1); otherwise the edge buffer. *have: the
// chunk's bytes of data. NULL: out of memory.
static unsigned char *chunk_io(const chunk_layout *l, hsize_t k, hsize_t k_end,
                               unsigned char *chunk, size_t slack, unsigned char kept[4],
                               int *in_place, size_t *have) {
    size_t bytes = l->chunk_elems * sizeof(float);
    *have = chunk_rows(l, k) * (size_t)l->chunk[1] * sizeof(float);
    *in_place = *have == bytes && (k + 1 < k_end || slack >= 4);
    if (!*in_place) return chunk_buffers(bytes + 4);
    memcpy(kept, chunk + bytes, 4);
    return chunk;
}

// HDF5's filter stores the checksum little-endian, whatever the host.
static void put_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

ent_status ckpt_write_rows(hid_t dset, const char *name, hsize_t row0, hsize_t row1, float *src,
                           size_t slack, int allocated, ckpt_stream *stream) {
    chunk_layout l;
    hsize_t k0 = 0, k1 = 0;
    ENT_CHECK(layout_of(dset, name, &l));
    ENT_CHECK(chunk_span(&l, name, row0, row1, &k0, &k1));
    size_t bytes = l.chunk_elems * sizeof(float);
    ent_status st = ENT_OK;
    for (hsize_t k = k0; k < k1 && st == ENT_OK; k++) {
        unsigned char *chunk = (unsigned char *)(src + (size_t)(k - k0) * l.chunk_elems), kept[4];
        hsize_t offset[2] = {k * l.chunk[0], 0}, stored = 0;
        haddr_t addr = HADDR_UNDEF;
        unsigned mask = 0;
        if (allocated && (H5Dget_chunk_info_by_coord(dset, offset, &mask, &addr, &stored) < 0 ||
                          addr == HADDR_UNDEF || stored != bytes + 4))
            return ent_fail(ENT_ERR_INTERNAL, "dataset %s: the chunk at row %llu was not "
                            "allocated at its size (%llu bytes, expected %zu)", name,
                            (unsigned long long)offset[0], (unsigned long long)stored, bytes + 4);
        int in_place;
        size_t have;
        unsigned char *out = chunk_io(&l, k, k1, chunk, slack, kept, &in_place, &have);
        if (out == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory writing %s", name);
        if (!in_place) { // an edge chunk, padded
            memcpy(out, chunk, have);
            memset(out + have, 0, bytes - have);
        }
        put_le32(out + bytes, ckpt_fletcher32(out, bytes)); // where and how HDF5's filter stores it
        if (H5Dwrite_chunk(dset, H5P_DEFAULT, 0, offset, bytes + 4, out) < 0)
            st = ckpt_h5_fail(ENT_ERR_IO, "dataset %s", name);
        if (in_place) memcpy(chunk + bytes, kept, 4);
        if (allocated) ckpt_stream_wrote(stream, (off_t)addr, (off_t)(addr + bytes + 4));
        ckpt_stream_advance(stream);
    }
    return st;
}

// Does a chunk's checksum match the one stored? HDF5 also accepts the
// checksum with the bytes of each half swapped (written that way by its
// releases before 1.6.3).
static int chunk_sum_ok(uint32_t sum, uint32_t stored) {
    uint32_t swapped = ((sum & 0x00ff00ffu) << 8) | ((sum >> 8) & 0x00ff00ffu);
    return stored == sum || stored == swapped;
}

static ent_status chunk_sum_error(const char *name, unsigned long long row) {
    return ent_fail(ENT_ERR_INPUT, "dataset %s: data error detected by Fletcher32 checksum in "
                    "the chunk at row %llu", name, row);
}

// ---------------------------------------------------------------------------
// reading

int ckpt_direct_fd_ok(hid_t file, int fd) {
    if (fd < 0) return 0;
    hid_t fcpl = H5Fget_create_plist(file), fapl = H5Fget_access_plist(file);
    hsize_t userblock = 1;
    void *handle = NULL;
    struct stat mine, hdf5s;
    int ok = fcpl >= 0 && fapl >= 0 && H5Pget_userblock(fcpl, &userblock) >= 0 && userblock == 0 &&
             H5Pget_driver(fapl) == H5FD_SEC2 && H5Fget_vfd_handle(file, fapl, &handle) >= 0 &&
             handle != NULL && fstat(*(int *)handle, &hdf5s) == 0 && fstat(fd, &mine) == 0 &&
             mine.st_dev == hdf5s.st_dev && mine.st_ino == hdf5s.st_ino;
    if (fcpl >= 0) H5Pclose(fcpl);
    if (fapl >= 0) H5Pclose(fapl);
    return ok;
}

// Reads a chunk's stored image, its data (n bytes, to data) and then its
// 4-byte checksum (to sum4), whole: one call unless the kernel returns less.
int ckpt_fetch_chunk(int fd, const ckpt_chunk_read *c, unsigned char *scratch,
                     unsigned char sum4[4]) {
    unsigned char *data = c->have == c->bytes ? c->dst : scratch;
    size_t n = c->bytes, got = 0;
    while (got < n + 4) {
        struct iovec iov[2];
        int k = 0;
        if (got < n) iov[k++] = (struct iovec){.iov_base = data + got, .iov_len = n - got};
        size_t s = got > n ? got - n : 0;
        iov[k++] = (struct iovec){.iov_base = sum4 + s, .iov_len = 4 - s};
        ssize_t r = preadv(fd, iov, k, c->addr + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno ? errno : EIO;
        if (r == 0) return CKPT_CHUNK_SHORT;
        got += (size_t)r;
    }
    return 0;
}

int ckpt_check_chunk(int fd, const ckpt_chunk_read *c, unsigned char *scratch,
                     const unsigned char sum4[4]) {
    // an edge chunk's padding rows are summed too, so it came through scratch
    unsigned char *data = c->have == c->bytes ? c->dst : scratch;
    if (!chunk_sum_ok(ckpt_fletcher32(data, c->bytes), get_le32(sum4))) return CKPT_CHUNK_BAD_SUM;
    if (data != c->dst) memcpy(c->dst, data, c->have);
    // read once: its pages make room for the next ones (whole pages only; the
    // kernel keeps those it shares with the neighbouring chunks)
    posix_fadvise(fd, c->addr, (off_t)(c->bytes + 4), POSIX_FADV_DONTNEED);
    return 0;
}

int ckpt_read_chunk(int fd, const ckpt_chunk_read *c, unsigned char *scratch) {
    unsigned char sum4[4];
    int code = ckpt_fetch_chunk(fd, c, scratch, sum4);
    return code != 0 ? code : ckpt_check_chunk(fd, c, scratch, sum4);
}

ent_status ckpt_chunk_error(const ckpt_chunk_read *c, int code) {
    if (code == CKPT_CHUNK_BAD_SUM) return chunk_sum_error(c->name, c->row);
    return ent_fail(ENT_ERR_INPUT, "dataset %s: cannot read the chunk at row %llu: %s", c->name,
                    c->row, code == CKPT_CHUNK_SHORT ? "the file ends before it (truncated)"
                                                     : strerror(code));
}

ent_status ckpt_read_rows(hid_t dset, const char *name, hsize_t row0, hsize_t row1, float *dst,
                          size_t slack, ckpt_stream *stream, ckpt_readers *readers) {
    chunk_layout l;
    hsize_t k0 = 0, k1 = 0;
    ENT_CHECK(layout_of(dset, name, &l));
    ENT_CHECK(chunk_span(&l, name, row0, row1, &k0, &k1));
    {
        hid_t dcpl = H5Dget_create_plist(dset);
        unsigned flags = 0;
        int fletcher = H5Pget_nfilters(dcpl) == 1 &&
                       H5Pget_filter2(dcpl, 0, &flags, NULL, NULL, 0, NULL, NULL) == H5Z_FILTER_FLETCHER32;
        H5Pclose(dcpl);
        if (!fletcher)
            return ent_fail(ENT_ERR_INPUT, "dataset %s is not stored with exactly one "
                            "Fletcher32 filter", name);
    }
    int fd = stream != NULL ? stream->fd : -1; // checked at open (ckpt_direct_fd_ok)
    size_t bytes = l.chunk_elems * sizeof(float);
    for (hsize_t k = k0; k < k1; k++) {
        hsize_t offset[2] = {k * l.chunk[0], 0}, stored_bytes = 0;
        unsigned long long row = (unsigned long long)offset[0];
        haddr_t addr = HADDR_UNDEF;
        unsigned chunk_filters = 0;
        if (H5Dget_chunk_info_by_coord(dset, offset, &chunk_filters, &addr, &stored_bytes) < 0 ||
            addr == HADDR_UNDEF || stored_bytes != bytes + 4)
            return ent_fail(ENT_ERR_INPUT, "dataset %s: chunk at row %llu is missing or has %llu "
                            "bytes, expected %zu (damaged file)", name, row,
                            (unsigned long long)stored_bytes, bytes + 4);
        if (chunk_filters != 0) // the filter was skipped: no checksum stored
            return ent_fail(ENT_ERR_INPUT, "dataset %s: the chunk at row %llu was stored without "
                            "its checksum", name, row);
        unsigned char *chunk = (unsigned char *)(dst + (size_t)(k - k0) * l.chunk_elems);
        if (fd >= 0) { // straight from the file, by the readers or here
            ckpt_chunk_read c = {.addr = (off_t)addr, .bytes = bytes, .dst = chunk, .row = row,
                                 .have = chunk_rows(&l, k) * (size_t)l.chunk[1] * sizeof(float)};
            snprintf(c.name, sizeof c.name, "%s", name);
            if (readers != NULL) {
                ENT_CHECK(ckpt_readers_queue(readers, &c));
                continue;
            }
            unsigned char *scratch = c.have == bytes ? NULL : chunk_buffers(bytes);
            if (c.have != bytes && scratch == NULL)
                return ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", name);
            int code = ckpt_read_chunk(fd, &c, scratch);
            if (code != 0) return ckpt_chunk_error(&c, code);
            continue;
        }
        // through HDF5 (the file is not where a descriptor of ours can read it)
        unsigned char kept[4] = {0};
        int in_place;
        size_t have;
        unsigned char *in = chunk_io(&l, k, k1, chunk, slack, kept, &in_place, &have);
        if (in == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", name);
        uint32_t mask = 0;
        herr_t rc = H5Dread_chunk(dset, H5P_DEFAULT, offset, &mask, in);
        uint32_t sum = rc < 0 ? 0 : ckpt_fletcher32(in, bytes), stored = get_le32(in + bytes);
        if (in_place) memcpy(chunk + bytes, kept, 4);
        if (rc < 0)
            return ckpt_h5_fail(ENT_ERR_INPUT, "dataset %s: cannot read the chunk at row %llu",
                                name, row);
        if (!chunk_sum_ok(sum, stored)) return chunk_sum_error(name, row);
        if (!in_place) memcpy(chunk, in, have);
    }
    return ENT_OK;
}
