// ckpt_impl.h: private to checkpoint/.
#ifndef ENT_CKPT_IMPL_H
#define ENT_CKPT_IMPL_H

#include "ent_ckpt.h"

#include <hdf5.h>
#include <sys/types.h>

// The arenas a checkpoint holds, in file order: the parameters, the AdamW
// moments (over the state range), and a coalition's anchor weights and outer
// momentum (laid out as the parameters).
enum { CKPT_PARAMS, CKPT_ADAM_M, CKPT_ADAM_V, CKPT_ANCHOR, CKPT_OUTER_M, CKPT_RESIDUAL, CKPT_NGROUPS };
extern const char *const ckpt_groups[CKPT_NGROUPS]; // "params", ..., "coalition/anchor", ...
#define CKPT_COALITION "coalition"

// A shard's arenas: for each group, the buffer holding arena range
// [first, end) (base NULL: this arena is not in the shard).
typedef struct {
    float *base[CKPT_NGROUPS];
    size_t first[CKPT_NGROUPS], end[CKPT_NGROUPS];
} ckpt_sources;
ckpt_sources ckpt_shard_sources(const ent_ckpt_shard *sh);

// Turns HDF5's error stack printing off once (errors are reported by us).
void ckpt_h5_init(void);
// ENT_ERR_* with "what: <HDF5's innermost message>".
ent_status ckpt_h5_fail(ent_status st, const char *what, ...) __attribute__((format(printf, 2, 3)));

// Attributes on an object (the root group).
ent_status ckpt_write_attr(hid_t obj, const ent_ckpt_attr *a);

// An attribute's value as a reader sees it: an integer (signed or not, up to
// 8 bytes, widened), a floating-point number (up to 8 bytes), or a text (s,
// malloc'ed: fixed-length of any padding, or variable-length; up to its first
// NUL). Anything else (an array, a compound, a wider type) is refused.
typedef struct {
    ent_attr_type type;
    int64_t i;
    uint64_t u;
    double f;
    char *s;
} ckpt_value;
#define CKPT_TEXT_MAX (16 << 20) // bytes of one text attribute (the config is a few KiB)
ent_status ckpt_read_value(hid_t attr, const char *path, const char *name, ckpt_value *v);
// A text attribute (any kind of HDF5 string), malloc'ed into *text.
ent_status ckpt_read_text_attr(hid_t obj, const char *path, const char *name, char **text);
ent_status ckpt_read_i64_attr(hid_t obj, const char *path, const char *name, int64_t *v);
ent_status ckpt_read_u64_attr(hid_t obj, const char *path, const char *name, uint64_t *v);

// Chunk shape of a dataset: whole rows up to about 4M floats (16 MiB).
void ckpt_chunk_dims(int ndim, const int64_t shape[2], hsize_t chunk[2]);

// The memory dataspace for n contiguous floats landing in the given blocks of
// the file: the block's own shape when there is one block (HDF5 then maps it
// to chunks directly; a mismatched shape makes it go element by element), a
// flat run otherwise, and an empty selection when n is 0.
hid_t ckpt_memory_space(int ndim, const ent_rect *rects, int nrects, size_t n);
// Selects the blocks in the file space; none (a rank with no part in a
// collective call) selects nothing in either space.
void ckpt_select_blocks(hid_t fspace, hid_t mspace, const ent_rect *rects, int nrects);

// A checkpoint file streamed through the page cache (stream.c): while it is
// written, pages written a while ago are pushed to disk and dropped. Hints
// only: fd is -1 where the file cannot be opened, and then nothing is done
// (nor for a NULL stream). A file being read is opened the same way: its
// descriptor reads the chunks (direct.c).
typedef struct {
    int fd;
    off_t done; // where the run not yet written back starts
    off_t end;  // where the run written in place ends (0: none, the file's end)
} ckpt_stream;
typedef struct ckpt_readers ckpt_readers; // chunk readers: below
void ckpt_stream_open(ckpt_stream *s, const char *path);
// Writing a file laid out in advance (several ranks, each writing its chunks
// in place, in file order): this process wrote bytes [from, to). A file that
// grows as it is written (one process) needs no report: its size says how far
// the writing got.
void ckpt_stream_wrote(ckpt_stream *s, off_t from, off_t to);
void ckpt_stream_advance(ckpt_stream *s);                  // writing: up to how far it got
void ckpt_stream_close(ckpt_stream *s);

struct ent_ckpt {
    hid_t file;
    char path[4096];
    ent_group_t *world; // the ranks that opened it together (NULL: this process alone)
    ckpt_stream stream;
    ckpt_readers *readers; // started by the first ent_ckpt_read (NULL: none)
};

// HDF5's Fletcher32 checksum of nbytes at data, bit for bit (fletcher32.c):
// vectorised where the target has AVX2, the portable form elsewhere.
uint32_t ckpt_fletcher32(const void *data, size_t nbytes);
// The same without the vector path (the reference the tests and the bench
// hold the vector path to).
uint32_t ckpt_fletcher32_portable(const void *data, size_t nbytes);

// Datasets chunk by chunk past the filter pipeline (direct.c), each process
// on its own file handle, checksums as HDF5 computes them; chunks must span
// whole rows.
// Rows in one chunk of the dataset when it can be moved chunk by chunk (whole
// rows, one Fletcher32 filter); 0 when not.
hsize_t ckpt_direct_rows(hid_t dset);
// The whole chunks among local elements [lo, hi) of row r, stored in chunks
// of chunk_rows rows (ckpt_direct_rows): [*a, *b), from the first chunk
// boundary at or after lo to the last at or before hi (or the row's end). 0
// when there are none, or the row is split across TP ranks (its local
// elements are not whole global rows), or chunk_rows is 0.
int ckpt_whole_chunks(hsize_t chunk_rows, const ent_param_row *r, size_t lo, size_t hi, size_t *a,
                      size_t *b);
// A full chunk moves between memory and file without a copy: the 4 bytes
// after it in memory (the next chunk's, or `slack` bytes the caller may lend
// after the tensor) hold its checksum meanwhile and are put back, so no other
// thread may use the tensor or its slack during the call. stream (may be
// NULL) follows every chunk written or read.
// Writes rows [row0, row1) from src (row0 on a chunk boundary, row1 too or
// past the last row). `allocated`: the chunks must already be allocated at
// their checksummed size (a file rank 0 laid out: ckpt_layout_chunks), so
// that writing them changes no metadata and each rank may write its own
// chunks on its own; a chunk that is not is an error, and nothing of it is
// written.
ent_status ckpt_write_rows(hid_t dset, const char *name, hsize_t row0, hsize_t row1, float *src,
                           size_t slack, int allocated, ckpt_stream *stream);
// One chunk to read straight from the file: its stored image, `bytes` of
// data and the 4-byte checksum after them, at file offset addr; the first
// `have` bytes of data (all of them but in a dataset's last, partial chunk)
// go to dst. name and row name it in errors.
typedef struct {
    off_t addr;
    size_t bytes, have;
    unsigned char *dst;
    char name[160];
    unsigned long long row;
} ckpt_chunk_read;
// What ckpt_read_chunk returns besides 0 (read, checksum good) and errno values.
enum { CKPT_CHUNK_SHORT = -1, CKPT_CHUNK_BAD_SUM = -2 };
// Reading a chunk through fd in two halves, so that one thread may sum a
// chunk while another reads the next: fetch reads the whole stored image
// (data to dst, or for an edge chunk, have < bytes, to scratch, bytes long;
// the checksum to sum4); check sums it against sum4, copies an edge chunk
// out of scratch and drops the chunk's pages from the page cache. read does
// both. They touch no HDF5 object and no state but their arguments: any
// thread.
int ckpt_fetch_chunk(int fd, const ckpt_chunk_read *c, unsigned char *scratch,
                     unsigned char sum4[4]);
int ckpt_check_chunk(int fd, const ckpt_chunk_read *c, unsigned char *scratch,
                     const unsigned char sum4[4]);
int ckpt_read_chunk(int fd, const ckpt_chunk_read *c, unsigned char *scratch);
// The error a ckpt_read_chunk code means, naming the dataset and chunk.
ent_status ckpt_chunk_error(const ckpt_chunk_read *c, int code);

// Threads that read queued chunks (readers.c) while the caller goes on
// walking HDF5's index (HDF5 itself stays on the caller's thread): whole
// chunks read one at a time in queue order, each summed while the next is
// read.
// Starts the threads on the file at path, which must be the file fd has open
// (same inode); NULL where they cannot start (the caller then reads itself).
ckpt_readers *ckpt_readers_start(const char *path, int fd);
// Queues a chunk (copied); dst is written by a reader at any time until the
// next ckpt_readers_wait returns.
ent_status ckpt_readers_queue(ckpt_readers *rd, const ckpt_chunk_read *c);
// Waits until every chunk queued so far is read: the first failure in queue
// order, or ENT_OK.
ent_status ckpt_readers_wait(ckpt_readers *rd);
// Stops the threads (after the chunks queued) and frees; *rd becomes NULL.
void ckpt_readers_stop(ckpt_readers **rd);

// Whether fd is the file HDF5 has open as `file` (same inode), through its
// POSIX driver with no user block, so that the addresses HDF5's chunk index
// gives are offsets in fd: chunks can then be read straight from it. An
// opened checkpoint keeps its stream's descriptor only where this holds.
int ckpt_direct_fd_ok(hid_t file, int fd);
// Reads rows [row0, row1) into dst (row0 on a chunk boundary, row1 too or
// past the last row: read to the end). The chunks are read through the
// stream's descriptor where it has one (ckpt_direct_fd_ok): by `readers` when
// given (queued: dst is complete and checked only once ckpt_readers_wait
// returns ENT_OK), else here, each chunk's checksum checked before the call
// returns. Elsewhere they go through HDF5, with the lending above (slack:
// what follows the last row read).
ent_status ckpt_read_rows(hid_t dset, const char *name, hsize_t row0, hsize_t row1, float *dst,
                          size_t slack, ckpt_stream *stream, ckpt_readers *readers);

// A file access property list for one process laying out a multi-rank
// checkpoint (layout.c): HDF5's POSIX driver, except that raw-data writes are
// dropped while *drop is non-zero (chunks allocated then get their place in
// the file, not their fill bytes). -1 when the driver cannot be registered.
hid_t ckpt_layout_fapl(const int *drop);
// Allocates every chunk of a dataset (Fletcher32 its only filter) at its
// checksummed size, by writes that the layout driver drops: the chunks get
// their place, in order, and the index its entries, for the ranks to write
// them in place later. (H5D_ALLOC_TIME_EARLY would allocate them too, but
// HDF5 then fills a chunk and computes its checksum for every dataset.)
ent_status ckpt_layout_chunks(hid_t dset, const char *name);

// Checks an open file before anything else of it is believed: its format
// and version attributes, that its metadata is checksummed (superblock 3 or
// later: HDF5's 1.10 file format), and its metadata digest.
ent_status ckpt_check_format(hid_t file, const char *path);

// The metadata digest (digest.c, docs/checkpoint.md): SHA-256 over every
// attribute of the root group but `digest` and of the group /coalition, by
// name, stored in the root attribute `digest` as "sha256:" and 64 hex digits.
#define CKPT_DIGEST_ATTR "digest"
// Computes it from the open file and writes the attribute.
ent_status ckpt_write_digest(hid_t file, const char *path);
// Recomputes it and compares with the stored one.
ent_status ckpt_check_digest(hid_t file, const char *path);
// SHA-256 (FIPS 180-4) of n bytes.
void ckpt_sha256(const void *data, size_t n, uint8_t out[32]);

// Every new checkpoint file is created with this file access property list's
// format bounds: HDF5's 1.10 format (superblock 3, checksummed object
// headers, B-trees and heaps), so that no flipped bit in the metadata goes
// unnoticed.
void ckpt_set_format(hid_t fapl);

// Every rank of comm: the outcome of a step that each took (ENT_OK only if
// every rank's was). A rank that failed keeps its message; the others name
// the lowest failing rank: "WHAT failed on rank N (see its message)".
ent_status ckpt_agree(MPI_Comm comm, ent_status local, const char *what);
// This rank's number in comm and its size (either may be NULL); MPI's own
// message when the communicator is not usable.
ent_status ckpt_comm_shape(MPI_Comm comm, int *rank, int *size);
// The MPI communicator of a group.
static inline MPI_Comm ckpt_comm(const ent_group_t *g) {
    MPI_Comm c = MPI_COMM_NULL;
    ent_group_mpi_comm(g, &c);
    return c;
}

// fsync of a file by name.
ent_status ckpt_fsync_path(const char *path);

#endif // ENT_CKPT_IMPL_H
