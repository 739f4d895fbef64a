// direct.c: whole datasets written and read chunk by chunk, past HDF5's
// filter pipeline (H5Dwrite_chunk, H5Dread_chunk), for one process.
//
// HDF5 1.10 pushes every filtered chunk through a selection walk, a copy and
// a scalar checksum, one chunk at a time; that cost more than the disk. Here
// the chunks of a tensor are prepared in parallel (copy, zero padding of edge
// chunks, the Fletcher32 checksum appended exactly as HDF5's filter does, so
// every HDF5 reader verifies them) and then written in order. Reads check the
// same checksum and name the dataset and chunk that fails it.
#include "ckpt_impl.h"

#include <omp.h>

#include <stdlib.h>
#include <string.h>

// The chunk buffers, kept from one tensor to the next (fresh 64 MiB each time
// would be fresh pages for the kernel to zero). HDF5 is called from one thread
// at a time, and so is this.
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

// Threads preparing and checking chunks. One is enough since the checksum
// vectorises, and more cost more: while this thread writes, OpenMP's other
// threads spin, taking the cores the kernel needs to take in the data.
static int helper_threads = 1;

void ckpt_direct_threads(int n) { helper_threads = n; }

// HDF5's Fletcher32 (H5_checksum_fletcher32), bit for bit: big-endian 16-bit
// words, sums folded every 360 words, an odd last byte as the high half of a
// word, two final folds. HDF5 runs the block's two sums word by word in
// 32-bit arithmetic (sum2 may wrap); here each block is summed in closed form,
//   sum1 += sum of w_i,   sum2 += n * sum1 + sum of (n - i) * w_i  (i = 0..n-1),
// in the same 32-bit ring, so the result is identical and the loop vectorises.
uint32_t ckpt_fletcher32(const void *data, size_t nbytes) {
    const uint8_t *p = data;
    size_t words = nbytes / 2;
    uint32_t sum1 = 0, sum2 = 0;
    while (words) {
        uint32_t n = words > 360 ? 360 : (uint32_t)words;
        words -= n;
        uint32_t s = 0, weighted = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t w = (uint32_t)p[2 * i] << 8 | p[2 * i + 1];
            s += w;
            weighted += (n - i) * w;
        }
        p += 2 * n;
        sum2 += n * sum1 + weighted;
        sum1 += s;
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    if (nbytes % 2) {
        sum1 += (uint32_t)((uint16_t)*p << 8);
        sum2 += sum1;
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    return (sum2 << 16) | sum1;
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

int ckpt_direct_ok(hid_t dset) {
    chunk_layout l;
    return read_layout(dset, &l);
}

ent_status ckpt_write_whole(hid_t dset, const char *name, const float *src) {
    chunk_layout l;
    ENT_CHECK(layout_of(dset, name, &l));
    // one batch of chunks prepared in parallel, then written in order
    int batch = 4;
    size_t bytes = l.chunk_elems * sizeof(float);
    unsigned char *bufs = chunk_buffers((bytes + 4) * (size_t)batch);
    if (bufs == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory writing %s", name);
    size_t row = (size_t)l.chunk[1];
    ent_status st = ENT_OK;
    for (hsize_t k0 = 0; k0 < l.nchunks && st == ENT_OK; k0 += (hsize_t)batch) {
        int n = (int)(l.nchunks - k0 < (hsize_t)batch ? l.nchunks - k0 : (hsize_t)batch);
#pragma omp parallel for schedule(static) num_threads(helper_threads ? helper_threads : omp_get_max_threads())
        for (int i = 0; i < n; i++) {
            hsize_t k = k0 + (hsize_t)i;
            unsigned char *b = bufs + (size_t)i * (bytes + 4);
            size_t have = chunk_rows(&l, k) * row * sizeof(float);
            memcpy(b, src + (size_t)k * l.chunk_elems, have);
            memset(b + have, 0, bytes - have); // the edge chunk's padding
            uint32_t sum = ckpt_fletcher32(b, bytes);
            memcpy(b + bytes, &sum, 4); // stored as HDF5's filter stores it
        }
        for (int i = 0; i < n && st == ENT_OK; i++) {
            hsize_t offset[2] = {(k0 + (hsize_t)i) * l.chunk[0], 0};
            if (H5Dwrite_chunk(dset, H5P_DEFAULT, 0, offset, bytes + 4, bufs + (size_t)i * (bytes + 4)) < 0)
                st = ckpt_h5_fail(ENT_ERR_IO, "dataset %s", name);
        }
    }
    return st;
}

ent_status ckpt_read_whole(hid_t dset, const char *name, float *dst) {
    chunk_layout l;
    ENT_CHECK(layout_of(dset, name, &l));
    unsigned filters = 0;
    int nfilters = 0;
    {
        hid_t dcpl = H5Dget_create_plist(dset);
        nfilters = H5Pget_nfilters(dcpl);
        int fletcher = nfilters == 1 && H5Pget_filter2(dcpl, 0, &filters, NULL, NULL, 0, NULL,
                                                       NULL) == H5Z_FILTER_FLETCHER32;
        H5Pclose(dcpl);
        if (!fletcher)
            return ent_fail(ENT_ERR_INPUT, "dataset %s is not stored with exactly one "
                            "Fletcher32 filter", name);
    }
    enum { batch = 4 };
    size_t bytes = l.chunk_elems * sizeof(float);
    unsigned char *bufs = chunk_buffers((bytes + 4) * (size_t)batch);
    int bad[batch] = {0};
    if (bufs == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", name);
    size_t row = (size_t)l.chunk[1];
    ent_status st = ENT_OK;
    for (hsize_t k0 = 0; k0 < l.nchunks && st == ENT_OK; k0 += (hsize_t)batch) {
        int n = (int)(l.nchunks - k0 < (hsize_t)batch ? l.nchunks - k0 : (hsize_t)batch);
        for (int i = 0; i < n && st == ENT_OK; i++) {
            hsize_t offset[2] = {(k0 + (hsize_t)i) * l.chunk[0], 0};
            hsize_t stored = 0;
            uint32_t mask = 0;
            if (H5Dget_chunk_storage_size(dset, offset, &stored) < 0 || stored != bytes + 4)
                st = ent_fail(ENT_ERR_INPUT, "dataset %s: chunk at row %llu is missing or has "
                              "%llu bytes, expected %zu (damaged file)", name,
                              (unsigned long long)offset[0], (unsigned long long)stored, bytes + 4);
            else if (H5Dread_chunk(dset, H5P_DEFAULT, offset, &mask, bufs + (size_t)i * (bytes + 4)) < 0)
                st = ckpt_h5_fail(ENT_ERR_INPUT, "dataset %s: cannot read the chunk at row %llu",
                                  name, (unsigned long long)offset[0]);
            else if (mask != 0)
                st = ent_fail(ENT_ERR_INPUT, "dataset %s: the chunk at row %llu was stored without "
                              "its checksum", name, (unsigned long long)offset[0]);
        }
        if (st != ENT_OK) break;
#pragma omp parallel for schedule(static) num_threads(helper_threads ? helper_threads : omp_get_max_threads())
        for (int i = 0; i < n; i++) {
            hsize_t k = k0 + (hsize_t)i;
            const unsigned char *b = bufs + (size_t)i * (bytes + 4);
            uint32_t stored;
            memcpy(&stored, b + bytes, 4);
            // HDF5 also accepts the checksum with the bytes of each half swapped
            // (written that way by its releases before 1.6.3)
            uint32_t sum = ckpt_fletcher32(b, bytes);
            uint32_t swapped = ((sum & 0x00ff00ffu) << 8) | ((sum >> 8) & 0x00ff00ffu);
            bad[i] = stored != sum && stored != swapped;
            if (!bad[i])
                memcpy(dst + (size_t)k * l.chunk_elems, b, chunk_rows(&l, k) * row * sizeof(float));
        }
        for (int i = 0; i < n; i++)
            if (bad[i]) {
                st = ent_fail(ENT_ERR_INPUT, "dataset %s: data error detected by Fletcher32 "
                              "checksum in the chunk at row %llu", name,
                              (unsigned long long)((k0 + (hsize_t)i) * l.chunk[0]));
                break;
            }
    }
    return st;
}
