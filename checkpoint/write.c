// write.c: saving checkpoints.
//
// Every rank of the world writes its share of the state into one file: the
// rows of its arena range [write_first, +write_count), each as the blocks of
// the global tensor that range covers (ent_param_row_rects); rows replicated
// across tensor-parallel ranks only from TP rank 0. With several ranks, rank 0
// first lays the file out alone, every chunk allocated and none written
// (layout.c), and the ranks then open it with parallel HDF5. Each rank writes
// the whole chunks of its share straight to the file (write_chunks), at its
// own pace; then the rest, through HDF5's collective filtered (Fletcher32)
// writes, row by row, every rank joining each, if only with an empty
// selection (write_rest). After a local failure a rank still goes through
// every collective call, so no rank is left waiting, and the ranks agree on
// the outcome at the end.
//
// Commit: the file is written as NAME.tmp; rank 0 syncs it, renames it to NAME,
// syncs the directory, then points the `latest` symlink at it (a new link
// renamed over the old) and removes this run's checkpoints beyond `keep`. A crash at any
// moment leaves `latest` naming a complete checkpoint.
//
// Asynchronous saves hand the shard to a background thread that copies its
// share to host memory (beside the caller's next forward and backward; the
// caller's update waits for the copy: ent_ckpt_wait_staged), then runs the
// same steps at low CPU priority on its own duplicate of the world's
// communicator (MPI_THREAD_MULTIPLE).
#include "ckpt_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PATH_BYTES 4096

void ent_ckpt_name(int64_t step, char *buf, size_t n) {
    snprintf(buf, n, "step_%08lld.h5", (long long)step);
}

// ---------------------------------------------------------------------------
// one save

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// This rank's part of one row: local elements [lo, hi) (none: lo == hi), of
// which the whole chunks [a, b) go straight to the file (where the row is not
// split across TP ranks), the rest, [lo, a) and [b, hi), through HDF5 (a = b =
// hi when nothing goes straight). Rows replicated across TP ranks are written
// by TP rank 0.
typedef struct {
    size_t lo, hi, a, b;
} row_part;

static row_part plan_row(const ent_param_row *r, const ent_ckpt_shard *sh, const ckpt_sources *src,
                         int g) {
    size_t ra = r->offset, rb = r->offset + r->numel;
    size_t w0 = sh->write_first, w1 = sh->write_first + sh->write_count;
    row_part p = {(ra > w0 ? ra : w0) - ra, rb < w1 ? rb : w1, 0, 0};
    p.hi = p.hi > ra ? p.hi - ra : 0;
    int mine = src->base[g] != NULL && p.lo < p.hi &&
               (r->split != ENT_SPLIT_NONE || sh->tp_rank == 0);
    if (!mine) p.lo = p.hi = 0;
    hsize_t chunk[2];
    ckpt_chunk_dims(r->ndim, r->shape, chunk); // as the dataset was created
    if (!ckpt_whole_chunks(chunk[0], r, p.lo, p.hi, &p.a, &p.b)) p.a = p.b = p.hi;
    return p;
}

static int part_for_hdf5(const row_part *p) { return p->a > p->lo || p->hi > p->b; }

// A row of the file being written: its dataset, this rank's part of it, and
// whether some rank writes part of it through HDF5 (agreed by all).
typedef struct {
    hid_t dset;
    char path[160]; // GROUP/NAME
    int g;
    const ent_param_row *r;
    row_part p;
    int collective;
} file_row;

static float *part_base(const file_row *f, const ckpt_sources *src) {
    return src->base[f->g] + (f->r->offset + f->p.lo - src->first[f->g]);
}

// The whole chunks of this rank's part, straight to the file (one process:
// chunks are allocated as they come; several: rank 0 laid the file out with
// every chunk allocated, so each rank writes its own in place).
static ent_status write_chunks(const file_row *f, const ckpt_sources *src, int alone,
                               ckpt_stream *stream) {
    const ent_param_row *r = f->r;
    size_t cols = (size_t)r->shape[1], ra = r->offset;
    size_t after = src->end[f->g] > ra + f->p.b ? src->end[f->g] - (ra + f->p.b) : 0;
    return ckpt_write_rows(f->dset, f->path, f->p.a / cols, (f->p.b + cols - 1) / cols,
                           part_base(f, src) + (f->p.a - f->p.lo), after * sizeof(float),
                           !alone, stream);
}

// The rest of this rank's part (chunks shared with a neighbour's share,
// tensor-parallel parts) through HDF5's filtered write: collective with
// several ranks, every rank joining, if only with an empty selection.
static ent_status write_rest(const file_row *f, hid_t dxpl, const ent_ckpt_shard *sh,
                             const ckpt_sources *src) {
    const ent_param_row *r = f->r;
    const row_part *p = &f->p;
    int mine = p->lo < p->hi;
    float *buf = mine ? part_base(f, src) : NULL;
    hid_t fspace = H5Dget_space(f->dset);
    ent_rect rects[2 * ENT_MAX_RECTS];
    int nhead = mine ? ent_param_row_rects(r, sh->tp_rank, sh->tp_size, p->lo, p->a, rects) : 0;
    int ntail = mine ? ent_param_row_rects(r, sh->tp_rank, sh->tp_size, p->b, p->hi,
                                           rects + nhead) : 0;
    int nr = nhead + ntail;
    size_t n = (p->a - p->lo) + (p->hi - p->b);
    hid_t mspace;
    if (ntail == 0 || nhead == 0) {
        mspace = ckpt_memory_space(r->ndim, rects, nr, n);
        if (nhead == 0 && ntail > 0) buf += p->b - p->lo;
    } else { // two runs of the buffer, around the part written directly
        hsize_t extent = p->hi - p->lo, zero = 0, head = p->a - p->lo, tail_at = p->b - p->lo,
                tail = p->hi - p->b;
        mspace = H5Screate_simple(1, &extent, NULL);
        H5Sselect_hyperslab(mspace, H5S_SELECT_SET, &zero, NULL, &head, NULL);
        H5Sselect_hyperslab(mspace, H5S_SELECT_OR, &tail_at, NULL, &tail, NULL);
    }
    ckpt_select_blocks(fspace, mspace, rects, nr);
    static const float dummy = 0.0f;
    herr_t rc = H5Dwrite(f->dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, nr > 0 ? buf : &dummy);
    ent_status st = rc < 0 ? ckpt_h5_fail(ENT_ERR_IO, "dataset %s", r->name) : ENT_OK;
    H5Sclose(mspace);
    H5Sclose(fspace);
    return st;
}

// Creates a dataset in grp: chunked, Fletcher32, never filled (every chunk is
// written in full); `early`: with every chunk allocated now, none written
// (the multi-rank layout, layout.c), otherwise allocated as written.
static hid_t create_dataset(hid_t grp, const char *group, const char *name, hid_t type, int ndim,
                            const hsize_t *dims, const hsize_t *chunk, int early, ent_status *st) {
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, ndim, chunk);
    H5Pset_fletcher32(dcpl);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t dset = H5Dcreate2(grp, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    char path[256];
    snprintf(path, sizeof path, "%s/%s", group, name);
    if (dset < 0) *st = ckpt_h5_fail(ENT_ERR_IO, "cannot create dataset %s", path);
    else if (early) *st = ckpt_layout_chunks(dset, path);
    return dset;
}

static size_t ledger_bytes(const ent_ckpt_shard *sh) {
    return sh->coalition && sh->coalition->ledger ? strlen(sh->coalition->ledger) : 0;
}

// Lays the file out: its attributes, the group /coalition (its `round`
// attribute, its ledger dataset when there is one) and a group per arena the
// checkpoint holds, with a dataset per parameter row. `early`: every chunk is
// allocated now, with *drop set meanwhile (one process laying out the file for
// several, through the layout driver); otherwise chunks are allocated as they
// are written. No data is written here.
static ent_status create_layout(hid_t file, const char *tmp, const ent_ckpt_attr *attrs, int nattrs,
                                const ent_ckpt_shard *sh, const ckpt_sources *src, int early,
                                int *drop) {
    time_t now = time(NULL);
    char created[64];
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%S%z", localtime(&now));
    ent_ckpt_attr own[4] = {
        {.name = "format", .type = ENT_ATTR_STR, .s = ENT_CKPT_FORMAT},
        {.name = "format_version", .type = ENT_ATTR_I64, .i = ENT_CKPT_VERSION},
        {.name = "created", .type = ENT_ATTR_STR, .s = created},
        {.name = "tensors", .type = ENT_ATTR_I64, .i = sh->table->nrows},
    };
    for (int i = 0; i < 4; i++) ENT_CHECK(ckpt_write_attr(file, &own[i]));
    for (int i = 0; i < nattrs; i++) ENT_CHECK(ckpt_write_attr(file, &attrs[i]));
    *drop = early;
    ent_status st = ENT_OK;
    if (sh->coalition != NULL) {
        hid_t grp = H5Gcreate2(file, CKPT_COALITION, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (grp < 0) st = ckpt_h5_fail(ENT_ERR_IO, "cannot create group %s", CKPT_COALITION);
        ent_ckpt_attr round = {.name = "round", .type = ENT_ATTR_I64, .i = sh->coalition->round};
        if (st == ENT_OK) st = ckpt_write_attr(grp, &round);
        hsize_t n = ledger_bytes(sh), chunk = n < (1u << 22) ? n : (1u << 22);
        hid_t d = st == ENT_OK && n > 0 ? create_dataset(grp, CKPT_COALITION, "ledger",
                                                         H5T_STD_U8LE, 1, &n, &chunk, early, &st)
                                        : -1;
        if (d >= 0) H5Dclose(d);
        if (grp >= 0) H5Gclose(grp);
    }
    for (int g = 0; g < CKPT_NGROUPS && st == ENT_OK; g++) {
        if (src->base[g] == NULL && g > 0) continue; // no moments in this checkpoint
        hid_t grp = H5Gcreate2(file, ckpt_groups[g], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (grp < 0) st = ckpt_h5_fail(ENT_ERR_IO, "cannot create group %s", ckpt_groups[g]);
        for (int i = 0; st == ENT_OK && i < sh->table->nrows; i++) {
            const ent_param_row *r = &sh->table->rows[i];
            hsize_t dims[2] = {(hsize_t)r->shape[0], (hsize_t)r->shape[1]}, chunk[2];
            ckpt_chunk_dims(r->ndim, r->shape, chunk);
            hid_t d = create_dataset(grp, ckpt_groups[g], r->name, H5T_IEEE_F32LE, r->ndim, dims,
                                     chunk, early, &st);
            if (d >= 0) H5Dclose(d);
        }
        if (grp >= 0) H5Gclose(grp);
    }
    *drop = 0;
    // last, over every attribute written above (the ranks write no more)
    if (st == ENT_OK) st = ckpt_write_digest(file, tmp);
    return st;
}

// Several ranks: rank 0 lays the file out alone, every chunk allocated and
// none written (layout.c), and closes it; then the ranks open it together.
// One process: the file is created and laid out, chunks allocated as written.
static hid_t open_for_writing(MPI_Comm comm, const char *tmp, const ent_ckpt_attr *attrs,
                              int nattrs, const ent_ckpt_shard *sh, const ckpt_sources *src,
                              ent_status *st) {
    int rank = 0, size = 1, drop = 0;
    *st = ckpt_comm_shape(comm, &rank, &size);
    if (*st != ENT_OK) return -1;
    // (HDF5 clears its error stack on entry to every call: a failure is
    // reported before anything else is called)
    if (rank == 0) {
        hid_t fapl = size > 1 ? ckpt_layout_fapl(&drop) : H5Pcreate(H5P_FILE_ACCESS);
        if (fapl >= 0) ckpt_set_format(fapl);
        hid_t file = fapl < 0 ? -1 : H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
        if (fapl >= 0) H5Pclose(fapl);
        if (file < 0) *st = ckpt_h5_fail(ENT_ERR_IO, "cannot create checkpoint %s", tmp);
        if (*st == ENT_OK) *st = create_layout(file, tmp, attrs, nattrs, sh, src, size > 1, &drop);
        if (size == 1) {
            if (*st == ENT_OK) return file;
            if (file >= 0) H5Fclose(file);
            return -1;
        }
        if (file >= 0 && H5Fclose(file) < 0 && *st == ENT_OK)
            *st = ckpt_h5_fail(ENT_ERR_IO, "cannot lay out checkpoint %s", tmp);
    }
    *st = ckpt_agree(comm, *st, "laying out the checkpoint");
    if (*st != ENT_OK) return -1;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    ckpt_set_format(fapl); // what the ranks add (nothing but chunks) in the same format
    H5Pset_coll_metadata_write(fapl, 1);
    hid_t file = H5Fopen(tmp, H5F_ACC_RDWR, fapl);
    H5Pclose(fapl);
    if (file < 0) *st = ckpt_h5_fail(ENT_ERR_IO, "cannot open checkpoint %s", tmp);
    *st = ckpt_agree(comm, *st, "opening the checkpoint");
    if (*st != ENT_OK && file >= 0) {
        H5Fclose(file);
        file = -1;
    }
    return file;
}

// Writes the ledger (rank 0, collectively).
static ent_status write_ledger(hid_t file, hid_t dxpl, int rank, const ent_ckpt_shard *sh) {
    static const char none = 0;
    hid_t d = H5Dopen2(file, CKPT_COALITION "/ledger", H5P_DEFAULT);
    hid_t space = d < 0 ? -1 : H5Dget_space(d);
    if (space >= 0 && rank != 0) H5Sselect_none(space);
    hid_t mem = space < 0 ? -1 : H5Scopy(space);
    ent_status st = ENT_OK;
    if (mem < 0 || H5Dwrite(d, H5T_NATIVE_UCHAR, mem, space, dxpl,
                            rank == 0 ? sh->coalition->ledger : &none) < 0)
        st = ckpt_h5_fail(ENT_ERR_IO, "cannot write dataset %s/ledger", CKPT_COALITION);
    if (mem >= 0) H5Sclose(mem);
    if (space >= 0) H5Sclose(space);
    if (d >= 0) H5Dclose(d);
    return st;
}

// Opens the dataset of every row of every arena the checkpoint holds (every
// rank, all of them, in the same order: closing them is collective) and plans
// this rank's part of each; *n of them. NULL when out of memory.
static file_row *open_rows(hid_t file, const ent_ckpt_shard *sh, const ckpt_sources *src,
                           const char *tmp, int *n, ent_status *st) {
    int nrows = sh->table->nrows;
    file_row *rows = calloc((size_t)CKPT_NGROUPS * (size_t)nrows, sizeof *rows);
    *n = 0;
    if (rows == NULL) {
        *st = ent_fail(ENT_ERR_NOMEM, "out of memory writing %s", tmp);
        return NULL;
    }
    for (int g = 0; g < CKPT_NGROUPS; g++) {
        if (src->base[g] == NULL && g > 0) continue; // no moments in this checkpoint
        for (int i = 0; i < nrows; i++) {
            file_row *f = &rows[(*n)++];
            f->g = g;
            f->r = &sh->table->rows[i];
            f->p = plan_row(f->r, sh, src, g);
            snprintf(f->path, sizeof f->path, "%s/%s", ckpt_groups[g], f->r->name);
            f->dset = H5Dopen2(file, f->path, H5P_DEFAULT);
            if (f->dset < 0 && *st == ENT_OK)
                *st = ckpt_h5_fail(ENT_ERR_IO, "cannot open dataset %s of %s", f->path, tmp);
        }
    }
    return rows;
}

// Closes and frees the rows; the first failure to close one.
static ent_status close_rows(file_row *rows, int n, const char *tmp) {
    ent_status st = ENT_OK;
    for (int k = 0; rows != NULL && k < n; k++)
        if (rows[k].dset >= 0 && H5Dclose(rows[k].dset) < 0 && st == ENT_OK)
            st = ckpt_h5_fail(ENT_ERR_IO, "writing %s of %s", rows[k].path, tmp);
    free(rows);
    return st;
}

// The first failure of a rank that goes on through the collective calls (the
// message ent_fail keeps would be overwritten by later ones). A failure
// writing a row names the row and the file.
typedef struct {
    ent_status st;
    char msg[1024];
} first_failure;

static void keep_first(first_failure *f, ent_status st, const file_row *row, const char *tmp) {
    if (st == ENT_OK || f->st != ENT_OK) return;
    f->st = st;
    if (row != NULL) ent_fail(st, "writing %s of %s: %s", row->path, tmp, ent_last_error());
    snprintf(f->msg, sizeof f->msg, "%s", ent_last_error());
}

// Writes the whole file (every rank, collectively). Each rank first writes the
// whole chunks of its share, at its own pace; then the rows that some rank
// writes part of through HDF5 are written together (were they written in file
// order, a rank would wait at each for the others to get there). After a local
// failure a rank still goes through every collective call, and returns the
// first failure.
static ent_status write_file(MPI_Comm comm, const char *tmp, const ent_ckpt_attr *attrs,
                             int nattrs, const ent_ckpt_shard *sh, const ckpt_sources *src) {
    ckpt_h5_init();
    ent_status st = ENT_OK;
    int rank = 0, size = 1, n = 0;
    ENT_CHECK(ckpt_comm_shape(comm, &rank, &size));
    hid_t file = open_for_writing(comm, tmp, attrs, nattrs, sh, src, &st);
    if (file < 0) return st;
    file_row *rows = open_rows(file, sh, src, tmp, &n, &st);
    // which rows need HDF5's collective write, agreed once
    unsigned char *coll = malloc((size_t)n + 1);
    if (coll == NULL && st == ENT_OK) st = ent_fail(ENT_ERR_NOMEM, "out of memory writing %s", tmp);
    first_failure fail = {ENT_OK, ""};
    keep_first(&fail, ckpt_agree(comm, st, "opening the checkpoint's datasets"), NULL, tmp);
    if (fail.st != ENT_OK) { // (closing may fail too: the message kept is the first)
        free(coll);
        close_rows(rows, n, tmp);
        H5Fclose(file);
        return ent_fail(fail.st, "%s", fail.msg);
    }
    for (int k = 0; k < n; k++) coll[k] = (unsigned char)part_for_hdf5(&rows[k].p);
    int rc = MPI_SUCCESS;
    if (size > 1) {
        ent_comm_watch_begin("agreeing on the collective rows", "the checkpoint's ranks");
        rc = MPI_Allreduce(MPI_IN_PLACE, coll, n, MPI_UNSIGNED_CHAR, MPI_MAX, comm);
        ent_comm_watch_end();
    }
    if (rc != MPI_SUCCESS) {
        free(coll);
        close_rows(rows, n, tmp);
        H5Fclose(file);
        return ent_fail(ENT_ERR_INTERNAL, "writing %s: agreeing on the collective rows failed "
                        "(MPI error %d)", tmp, rc);
    }
    for (int k = 0; k < n; k++) rows[k].collective = coll[k];
    free(coll);

    ckpt_stream stream;
    ckpt_stream_open(&stream, tmp);
    for (int k = 0; k < n && fail.st == ENT_OK; k++) { // on its own: stops at a failure
        const file_row *f = &rows[k];
        if (f->p.a >= f->p.b) continue;
        keep_first(&fail, write_chunks(f, src, size == 1, &stream), f, tmp);
        ckpt_stream_advance(&stream);
    }
    // A rank whose own writes failed (a full disk) makes every rank skip the
    // collective writes: HDF5's collective filtered write, failing on one
    // rank midway, leaves the ranks' metadata caches disagreeing, and closing
    // the file then deadlocks (seen with HDF5's 1.10 file format on a full
    // tmpfs). The file is removed anyway.
    ent_status chunks = ckpt_agree(comm, fail.st, "writing the checkpoint's chunks");
    keep_first(&fail, chunks, NULL, tmp);
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (size > 1) H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
    for (int k = 0; k < n && chunks == ENT_OK; k++) // collective: every rank goes through all
        if (rows[k].collective) keep_first(&fail, write_rest(&rows[k], dxpl, sh, src), &rows[k], tmp);
    if (ledger_bytes(sh) > 0 && chunks == ENT_OK)
        keep_first(&fail, write_ledger(file, dxpl, rank, sh), NULL, tmp);
    H5Pclose(dxpl);
    keep_first(&fail, close_rows(rows, n, tmp), NULL, tmp);
    if (H5Fclose(file) < 0)
        keep_first(&fail, ckpt_h5_fail(ENT_ERR_IO, "cannot complete checkpoint %s", tmp), NULL, tmp);
    ckpt_stream_close(&stream);
    return fail.st == ENT_OK ? ENT_OK : ent_fail(fail.st, "%s", fail.msg);
}

// Bytes of the file: the data, plus HDF5's metadata and checksums (generous).
static double file_bytes(const ent_ckpt_shard *sh, const ckpt_sources *src) {
    double values = 0;
    for (int i = 0; i < sh->table->nrows; i++)
        values += (double)sh->table->rows[i].shape[0] * (double)sh->table->rows[i].shape[1];
    int groups = 0;
    for (int g = 0; g < CKPT_NGROUPS; g++) groups += src->base[g] != NULL;
    double ledger = (double)ledger_bytes(sh);
    return 4.0 * values * groups + 8192.0 * sh->table->nrows * groups + ledger + 1048576.0;
}

static const char *mib(double bytes, char *buf, size_t n) {
    snprintf(buf, n, "%.1f MiB", bytes / 1048576.0);
    return buf;
}

// Rank 0, before writing: is there room for the file (free space, ulimit -f)?
// Quotas are not seen here; a write that fails midway is handled as well.
// ENTENTE_CKPT_SKIP_SPACE_CHECK=1 skips this (the tests use it to fail midway).
static ent_status check_room(const char *dir, double need) {
    const char *skip = getenv("ENTENTE_CKPT_SKIP_SPACE_CHECK");
    if (skip != NULL && strcmp(skip, "1") == 0) return ENT_OK;
    char a[32], b[32];
    struct statvfs vs;
    if (statvfs(dir, &vs) == 0) {
        double avail = (double)vs.f_bavail * (double)vs.f_frsize;
        if (need > avail)
            return ent_fail(ENT_ERR_IO, "not enough space for a checkpoint in %s: it needs about "
                            "%s, the file system has %s free", dir, mib(need, a, sizeof a),
                            mib(avail, b, sizeof b));
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && need > (double)rl.rlim_cur)
        return ent_fail(ENT_ERR_IO, "a checkpoint of about %s exceeds this process's file-size "
                        "limit (ulimit -f: %s)", mib(need, a, sizeof a),
                        mib((double)rl.rlim_cur, b, sizeof b));
    return ENT_OK;
}

// Adds what the machine says about room to a failed write's message.
static ent_status with_room_hint(ent_status st, const char *dir) {
    char a[32], b[32], hint[160] = "";
    struct statvfs vs;
    struct rlimit rl;
    if (statvfs(dir, &vs) == 0)
        snprintf(hint, sizeof hint, " (%s free on the file system of %s",
                 mib((double)vs.f_bavail * (double)vs.f_frsize, a, sizeof a), dir);
    if (hint[0] && getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        snprintf(hint + strlen(hint), sizeof hint - strlen(hint), "; file-size limit %s",
                 mib((double)rl.rlim_cur, b, sizeof b));
    if (hint[0]) strcat(hint, ")");
    return ent_fail(st, "%s%s", ent_last_error(), hint);
}

// Points dir/latest at name: a new symlink renamed over the old one.
static ent_status point_latest(const char *dir, const char *name) {
    char link[PATH_BYTES + 32], tmp[PATH_BYTES + 32];
    snprintf(link, sizeof link, "%s/latest", dir);
    snprintf(tmp, sizeof tmp, "%s/latest.tmp", dir);
    unlink(tmp);
    if (symlink(name, tmp) != 0)
        return ent_fail(ENT_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    if (rename(tmp, link) != 0) {
        int err = errno;
        unlink(tmp);
        return ent_fail(ENT_ERR_IO, "cannot update %s: %s", link, strerror(err));
    }
    return ent_fsync_dir(dir);
}

// Steps of the checkpoints in dir (step_NNNNNNNN.h5), sorted; *n of them.
static int64_t *list_steps(const char *dir, int *n) {
    *n = 0;
    DIR *d = opendir(dir);
    if (d == NULL) return NULL;
    int cap = 16;
    int64_t *steps = malloc(sizeof *steps * (size_t)cap);
    struct dirent *e;
    while (steps != NULL && (e = readdir(d)) != NULL) {
        long long step;
        char tail[8];
        if (sscanf(e->d_name, "step_%lld.%7s", &step, tail) != 2 || strcmp(tail, "h5") != 0)
            continue;
        char expect[64];
        ent_ckpt_name(step, expect, sizeof expect);
        if (strcmp(expect, e->d_name) != 0) continue;
        if (*n == cap) {
            cap *= 2;
            int64_t *grown = realloc(steps, sizeof *steps * (size_t)cap);
            if (grown == NULL) break;
            steps = grown;
        }
        steps[(*n)++] = step;
    }
    closedir(d);
    for (int i = 1; i < *n; i++) // insertion sort: a few dozen at most
        for (int j = i; j > 0 && steps[j - 1] > steps[j]; j--) {
            int64_t t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    return steps;
}

// The checkpoints retention may remove: those of this run (the steps this
// saver committed, and those already in the directory when the run resumed
// from one of them). Rank 0 keeps the list; the save thread adds to it.
typedef struct {
    int keep;       // checkpoint.keep (0: all)
    int64_t *steps; // this run's checkpoints
    int n, cap;
} retention;

static int owns(const retention *r, int64_t step) {
    for (int i = 0; i < r->n; i++)
        if (r->steps[i] == step) return 1;
    return 0;
}

static void own(retention *r, int64_t step) {
    if (owns(r, step)) return;
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 16;
        int64_t *grown = realloc(r->steps, sizeof *grown * (size_t)cap);
        if (grown == NULL) return; // not owned: kept, never wrongly removed
        r->steps = grown;
        r->cap = cap;
    }
    r->steps[r->n++] = step;
}

// Keeps `keep` checkpoints: the one just committed (never removed, whatever
// its step) and the keep - 1 others with the highest steps. Only this run's
// checkpoints are counted and removed: another run's files in the same
// directory are left alone.
static void retain(const char *dir, retention *r, int64_t newest) {
    own(r, newest);
    if (r->keep <= 0) return;
    int n;
    int64_t *steps = list_steps(dir, &n);
    int kept = 1;
    for (int i = n - 1; i >= 0; i--) {
        if (steps[i] == newest || !owns(r, steps[i])) continue;
        if (kept < r->keep) {
            kept++;
            continue;
        }
        char path[PATH_BYTES + 64], name[64];
        ent_ckpt_name(steps[i], name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (unlink(path) != 0)
            ent_log_warn("cannot remove old checkpoint %s: %s", path, strerror(errno));
    }
    free(steps);
}

int ent_ckpt_list_steps(const char *dir, int64_t **steps) {
    int n;
    *steps = list_steps(dir, &n);
    return n;
}

// Removes partial files a killed save left behind (NAME.tmp), rank 0.
static void remove_stale_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "step_", 5) != 0 || len <= 7 || strcmp(e->d_name + len - 7, ".h5.tmp") != 0)
            continue;
        // a killed save leaves a regular file; anything else is not ours to remove
        char path[PATH_BYTES + 300];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(path, &sb) == 0 && S_ISREG(sb.st_mode)) unlink(path);
    }
    closedir(d);
}

// The whole save: file, agreement, commit (rank 0), agreement.
static ent_status save_now(MPI_Comm comm, const char *dir, retention *owned, const char *name,
                           int64_t step, const ent_ckpt_attr *attrs, int nattrs,
                           const ent_ckpt_shard *sh, const ckpt_sources *src) {
    int rank = 0;
    ENT_CHECK(ckpt_comm_shape(comm, &rank, NULL));
    char final[PATH_BYTES + 80], tmp[PATH_BYTES + 88];
    snprintf(final, sizeof final, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    ent_status st = ENT_OK;
    if (rank == 0) {
        st = ent_mkdirs(dir);
        if (st == ENT_OK) remove_stale_tmp(dir);
        if (st == ENT_OK) st = check_room(dir, file_bytes(sh, src));
    }
    ENT_CHECK(ckpt_agree(comm, st, "preparing the checkpoint"));
    st = write_file(comm, tmp, attrs, nattrs, sh, src);
    if (st != ENT_OK) st = with_room_hint(st, dir);
    st = ckpt_agree(comm, st, "writing the checkpoint");
    if (st != ENT_OK) {
        if (rank == 0) unlink(tmp); // the previous checkpoint and `latest` stay as they were
        return st;
    }
    if (rank == 0) {
        st = ckpt_fsync_path(tmp);
        if (st == ENT_OK && rename(tmp, final) != 0)
            st = ent_fail(ENT_ERR_IO, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
        if (st == ENT_OK) st = ent_fsync_dir(dir);
        if (st == ENT_OK) st = point_latest(dir, name);
        if (st == ENT_OK) retain(dir, owned, step);
        if (st != ENT_OK) unlink(tmp);
    }
    return ckpt_agree(comm, st, "committing the checkpoint");
}

// ---------------------------------------------------------------------------
// the saver

typedef struct {
    char name[256];
    int64_t step;
    ent_ckpt_attr *attrs; // deep copies
    int nattrs;
    ent_ckpt_shard shard; // the caller's arrays, copied from by the thread
    ent_ckpt_coalition coalition; // shard.coalition points here (ledger: a copy)
    ckpt_sources src;          // the saver's snapshot buffers
} job;

struct ent_ckpt_saver {
    ent_group_t *world;
    MPI_Comm io;          // a duplicate of the world's communicator, for the thread
    char dir[PATH_BYTES];
    retention owned; // checkpoint.keep and this run's checkpoints (rank 0)
    int async;
    pthread_t thread;
    int running;
    job *pending;
    float *snap[CKPT_NGROUPS]; // host copies of the write range, reused by every save
    size_t snap_floats;
    pthread_mutex_t lock;      // guards staged
    pthread_cond_t staged_cv;
    int staged;                // the pending job's snapshot is complete
    ent_status result;
    char result_msg[1024];
    double blocked;
};

static void free_job(job *j) {
    if (j == NULL) return;
    for (int i = 0; i < j->nattrs; i++) {
        free((char *)j->attrs[i].name);
        if (j->attrs[i].type == ENT_ATTR_STR) free((char *)j->attrs[i].s);
    }
    free(j->attrs);
    free((char *)j->coalition.ledger);
    free(j);
}

// Copies the job's share of every arena into the snapshot. One thread: it
// runs beside the next step's forward and backward, which use every core.
static void stage(job *j) {
    const ent_ckpt_shard *sh = &j->shard;
    ckpt_sources live = ckpt_shard_sources(sh);
    for (int g = 0; g < CKPT_NGROUPS; g++)
        if (live.base[g] != NULL)
            memcpy(j->src.base[g], live.base[g] + (sh->write_first - live.first[g]),
                   sizeof(float) * sh->write_count);
}

static void *run_job(void *arg) {
    ent_ckpt_saver_t *s = arg;
    job *j = s->pending;
    stage(j);
    pthread_mutex_lock(&s->lock);
    s->staged = 1;
    pthread_cond_broadcast(&s->staged_cv);
    pthread_mutex_unlock(&s->lock);
    // The write yields the cores to training: this thread drops to the lowest
    // CPU priority once the copy is made (Linux keeps a nice value per thread;
    // raising it needs no privilege). Whenever training waits for the save
    // (the next one, the end of the run) the cores are idle and it has them.
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);

    ent_status st = save_now(s->io, s->dir, &s->owned, j->name, j->step, j->attrs, j->nattrs,
                             &j->shard, &j->src);
    s->result = st;
    snprintf(s->result_msg, sizeof s->result_msg, "%s", st == ENT_OK ? "" : ent_last_error());
    return NULL;
}

ent_status ent_ckpt_saver_new(ent_group_t *world, const ent_ckpt_saver_opts *opts,
                              ent_ckpt_saver_t **out) {
    *out = NULL;
    ent_ckpt_saver_t *s = calloc(1, sizeof *s);
    if (s == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating the checkpoint saver");
    if (strlen(opts->dir) >= sizeof s->dir) {
        free(s);
        return ent_fail(ENT_ERR_USAGE, "checkpoint directory name too long: %.64s...", opts->dir);
    }
    s->world = world;
    snprintf(s->dir, sizeof s->dir, "%s", opts->dir);
    s->owned.keep = opts->keep;
    s->async = opts->async;
    if (opts->adopt && ent_group_rank(world) == 0) {
        int n;
        int64_t *steps = list_steps(s->dir, &n);
        for (int i = 0; i < n; i++) own(&s->owned, steps[i]);
        free(steps);
    }
    s->io = MPI_COMM_NULL;
    if (s->async) {
        int level = 0;
        MPI_Query_thread(&level);
        if (level < MPI_THREAD_MULTIPLE) {
            free(s);
            return ent_fail(ENT_ERR_USAGE, "asynchronous checkpoints need MPI initialised with "
                            "MPI_THREAD_MULTIPLE");
        }
        if (MPI_Comm_dup(ckpt_comm(world), &s->io) != MPI_SUCCESS) {
            free(s);
            return ent_fail(ENT_ERR_INTERNAL, "the asynchronous saver cannot duplicate the "
                            "world's communicator");
        }
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->staged_cv, NULL);
    *out = s;
    return ENT_OK;
}

// Rank 0: can a checkpoint be written into dir? It creates the directory,
// writes and removes a small file there, and checks the room for `need` bytes.
static ent_status probe_dir(const char *dir, double need) {
    ENT_CHECK(ent_mkdirs(dir));
    char probe[PATH_BYTES + 64];
    snprintf(probe, sizeof probe, "%s/.entente-probe-%ld", dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return ent_fail(ENT_ERR_IO, "cannot create a file in %s: %s", dir, strerror(errno));
    char block[4096];
    memset(block, 0, sizeof block);
    int err = write(fd, block, sizeof block) == (ssize_t)sizeof block ? 0 : errno ? errno : EIO;
    if (close(fd) != 0 && err == 0) err = errno;
    unlink(probe);
    if (err != 0) return ent_fail(ENT_ERR_IO, "cannot write a file in %s: %s", dir, strerror(err));
    return check_room(dir, need);
}

ent_status ent_ckpt_saver_check(ent_ckpt_saver_t *s, const ent_ckpt_shard *sh) {
    MPI_Comm comm = ckpt_comm(s->world);
    ckpt_sources src = ckpt_shard_sources(sh);
    ent_status st = ent_group_rank(s->world) == 0 ? probe_dir(s->dir, file_bytes(sh, &src)) : ENT_OK;
    ENT_CHECK(ckpt_agree(comm, st, "checking the checkpoint directory"));
    // every rank writes into the file: each must see the directory rank 0 made
    // (on another node it may be another file system, or none)
    st = ENT_OK;
    struct stat sb;
    if (stat(s->dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(s->dir, W_OK | X_OK) != 0) {
        int rank = ent_group_rank(s->world);
        st = ent_fail(ENT_ERR_IO, "rank %d cannot write into the checkpoint directory %s: %s",
                      rank, s->dir, strerror(errno ? errno : ENOTDIR));
    }
    return ckpt_agree(comm, st, "checking the checkpoint directory");
}

ent_status ent_ckpt_wait(ent_ckpt_saver_t *s) {
    if (s == NULL || !s->running) return ENT_OK;
    pthread_join(s->thread, NULL);
    s->running = 0;
    free_job(s->pending);
    s->pending = NULL;
    if (s->result != ENT_OK) return ent_fail(s->result, "%s", s->result_msg);
    return ENT_OK;
}

void ent_ckpt_saver_free(ent_ckpt_saver_t **saver) {
    if (saver == NULL || *saver == NULL) return;
    ent_ckpt_saver_t *s = *saver;
    ent_ckpt_wait(s);
    if (s->io != MPI_COMM_NULL) MPI_Comm_free(&s->io);
    for (int g = 0; g < CKPT_NGROUPS; g++) free(s->snap[g]);
    free(s->owned.steps);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->staged_cv);
    free(s);
    *saver = NULL;
}

void ent_ckpt_wait_staged(ent_ckpt_saver_t *s) {
    if (s == NULL || !s->running) return;
    double t0 = now_seconds();
    pthread_mutex_lock(&s->lock);
    int waited = !s->staged;
    while (!s->staged) pthread_cond_wait(&s->staged_cv, &s->lock);
    pthread_mutex_unlock(&s->lock);
    if (waited) s->blocked += now_seconds() - t0;
}

double ent_ckpt_last_blocked_seconds(const ent_ckpt_saver_t *s) { return s->blocked; }

static int64_t find_step(const ent_ckpt_attr *attrs, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(attrs[i].name, "step") == 0) return attrs[i].i;
    return -1;
}

ent_status ent_ckpt_saver_prepare(ent_ckpt_saver_t *s, const ent_ckpt_shard *sh) {
    if (!s->async) return ENT_OK;
    size_t n = sh->write_count ? sh->write_count : 1;
    if (s->snap_floats < n) { // every buffer made anew, at the new size
        for (int g = 0; g < CKPT_NGROUPS; g++) {
            free(s->snap[g]);
            s->snap[g] = NULL;
        }
    }
    s->snap_floats = n;
    ckpt_sources live = ckpt_shard_sources(sh);
    for (int g = 0; g < CKPT_NGROUPS; g++) {
        if (live.base[g] == NULL || s->snap[g] != NULL) continue;
        s->snap[g] = malloc(sizeof(float) * n);
        if (s->snap[g] == NULL)
            return ent_fail(ENT_ERR_NOMEM, "out of memory for the host copy of a checkpoint "
                            "(%zu MiB for %s)", n * sizeof(float) >> 20, ckpt_groups[g]);
        // touched now, so that the first save does not wait for the kernel to
        // provide pages (not with zeros: the compiler makes malloc + zeroing a
        // calloc, which touches nothing)
        memset(s->snap[g], 0xff, sizeof(float) * n);
    }
    return ENT_OK;
}

// The job of an asynchronous save: copies of the attributes, the caller's
// arrays, and the snapshot buffers the thread copies this rank's write range
// of every arena into (stage) before it writes them.
static ent_status make_job(ent_ckpt_saver_t *s, const char *name, const ent_ckpt_attr *attrs,
                           int nattrs, const ent_ckpt_shard *sh, job **out) {
    ENT_CHECK(ent_ckpt_saver_prepare(s, sh));
    job *j = calloc(1, sizeof *j);
    if (j == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for a checkpoint");
    snprintf(j->name, sizeof j->name, "%s", name);
    j->step = find_step(attrs, nattrs);
    j->shard = *sh;
    j->attrs = calloc((size_t)nattrs, sizeof *j->attrs);
    j->nattrs = nattrs;
    int ok = j->attrs != NULL;
    if (sh->coalition != NULL) {
        j->coalition = *sh->coalition;
        j->coalition.ledger = strdup(sh->coalition->ledger ? sh->coalition->ledger : "");
        j->shard.coalition = &j->coalition;
        ok = ok && j->coalition.ledger != NULL;
    }
    for (int i = 0; ok && i < nattrs; i++) {
        j->attrs[i] = attrs[i];
        j->attrs[i].name = strdup(attrs[i].name);
        if (attrs[i].type == ENT_ATTR_STR) j->attrs[i].s = strdup(attrs[i].s);
        ok = j->attrs[i].name != NULL && (attrs[i].type != ENT_ATTR_STR || j->attrs[i].s != NULL);
    }
    if (!ok) {
        free_job(j);
        return ent_fail(ENT_ERR_NOMEM, "out of memory for a checkpoint");
    }
    ckpt_sources live = ckpt_shard_sources(sh);
    for (int g = 0; g < CKPT_NGROUPS; g++) {
        if (live.base[g] == NULL) continue;
        j->src.base[g] = s->snap[g];
        j->src.first[g] = sh->write_first;
        j->src.end[g] = sh->write_first + sh->write_count;
    }
    *out = j;
    return ENT_OK;
}

ent_status ent_ckpt_save(ent_ckpt_saver_t *s, const char *name, const ent_ckpt_attr *attrs,
                         int nattrs, const ent_ckpt_shard *sh) {
    double t0 = now_seconds();
    if (!s->async) {
        ckpt_sources src = ckpt_shard_sources(sh);
        ent_status st = save_now(ckpt_comm(s->world), s->dir, &s->owned, name,
                                 find_step(attrs, nattrs), attrs, nattrs, sh, &src);
        s->blocked = now_seconds() - t0;
        return st;
    }
    // one save in flight at a time: the previous one must have committed
    ENT_CHECK(ent_ckpt_wait(s));
    job *j = NULL;
    ent_status st = make_job(s, name, attrs, nattrs, sh, &j);
    // every rank must start the thread, or none (the thread's calls are collective)
    int mine = st == ENT_OK, all = 0;
    ent_comm_watch_begin("agreeing to start the checkpoint thread", "the checkpoint's ranks");
    int rc = MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, ckpt_comm(s->world));
    ent_comm_watch_end();
    if (rc != MPI_SUCCESS) all = 0;
    if (!all) {
        free_job(j);
        s->blocked = now_seconds() - t0;
        return st != ENT_OK ? st : ent_fail(ENT_ERR_NOMEM, "another rank could not copy its "
                                             "checkpoint shard to host memory");
    }
    s->pending = j;
    s->staged = 0;
    if (pthread_create(&s->thread, NULL, run_job, s) != 0) {
        // cannot happen in practice; save synchronously rather than lose it
        s->pending = NULL;
        stage(j);
        st = save_now(s->io, s->dir, &s->owned, j->name, j->step, j->attrs, j->nattrs, &j->shard,
                      &j->src);
        free_job(j);
        s->blocked = now_seconds() - t0;
        return st;
    }
    s->running = 1;
    s->blocked = now_seconds() - t0;
    return ENT_OK;
}

ent_status ent_ckpt_resolve_latest(const char *dir, char *out, size_t n) {
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISREG(st.st_mode)) {
        snprintf(out, n, "%s", dir);
        return ENT_OK;
    }
    char link[PATH_BYTES + 16], target[PATH_BYTES];
    snprintf(link, sizeof link, "%s/latest", dir);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len < 0)
        return ent_fail(ENT_ERR_INPUT, "no checkpoint to resume: %s does not exist (%s)", link,
                        strerror(errno));
    target[len] = '\0';
    if (target[0] == '/') snprintf(out, n, "%s", target);
    else snprintf(out, n, "%s/%s", dir, target);
    if (stat(out, &st) != 0)
        return ent_fail(ENT_ERR_INPUT, "%s points to %s, which does not exist", link, out);
    return ENT_OK;
}
