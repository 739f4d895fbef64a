// read.c: opening checkpoints and reading them back, on any layout.
//
// Each rank opens the file on its own (a committed checkpoint is read-only)
// and reads the blocks of every global tensor that its own table describes:
// its tensor-parallel part of every parameter row, and of the AdamW moments
// only its state range (its ZeRO shard). Data-parallel replicas need the same
// blocks: each reads a part of them and broadcasts it to the others, so the
// file is read once, not once per replica. Whole chunks move straight from
// the file, read and checked by reader threads (readers.c, direct.c); the pieces of
// chunks at the edges of a rank's part go through HDF5. The ranks agree on
// the outcome, and nothing is broadcast unless every rank read its part.
#include "ckpt_impl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// Opens the file on this process: read-only, through the default (POSIX)
// driver, with no file lock (a committed checkpoint never changes, and
// parallel file systems often refuse locks).
static ent_status open_here(const char *path, ent_ckpt_t **out) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return ent_fail(ENT_ERR_INPUT, "cannot open checkpoint %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return ent_fail(ENT_ERR_INPUT, "%s is not a regular file", path);
    if (sb.st_size == 0) return ent_fail(ENT_ERR_INPUT, "%s is empty: not a checkpoint", path);
    if (H5Fis_hdf5(path) <= 0)
        return ent_fail(ENT_ERR_INPUT, "%s is not an HDF5 file, so not an entente checkpoint",
                        path);
    ent_ckpt_t *ck = calloc(1, sizeof *ck);
    if (ck == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory opening %s", path);
    snprintf(ck->path, sizeof ck->path, "%s", path);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_file_locking(fapl, 0, 1);
    ck->stream.fd = -1;
    ck->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    ent_status st = ck->file < 0 ? ckpt_h5_fail(ENT_ERR_INPUT, "cannot open checkpoint %s "
                                                "(truncated or damaged?)", path)
                                 : ENT_OK;
    H5Pclose(fapl);
    if (st != ENT_OK) {
        free(ck);
        return st;
    }
    st = ckpt_check_format(ck->file, path);
    if (st != ENT_OK) {
        ent_ckpt_close(&ck);
        return st;
    }
    // the descriptor whole chunks are read through, where it is the file
    // HDF5 has open at plain file offsets (else chunks go through HDF5)
    ckpt_stream_open(&ck->stream, path);
    if (!ckpt_direct_fd_ok(ck->file, ck->stream.fd)) ckpt_stream_close(&ck->stream);
    *out = ck;
    return ENT_OK;
}

// Every rank's outcome of a step on the file (no one else's without a group).
static ent_status agree(ent_group_t *g, ent_status local, const char *what, const char *path) {
    if (g == NULL) return local;
    char step[4200];
    snprintf(step, sizeof step, "%s %s", what, path);
    return ckpt_agree(ckpt_comm(g), local, step);
}

ent_status ent_ckpt_open(const char *path, ent_group_t *world, ent_ckpt_t **out) {
    ckpt_h5_init();
    if (world != NULL && ent_group_size(world) < 2) world = NULL;
    ent_status st = agree(world, open_here(path, out), "opening", path);
    if (st != ENT_OK) {
        ent_ckpt_close(out);
        return st;
    }
    (*out)->world = world;
    return ENT_OK;
}

void ent_ckpt_close(ent_ckpt_t **ck) {
    if (ck == NULL || *ck == NULL) return;
    if ((*ck)->file >= 0) H5Fclose((*ck)->file);
    ckpt_readers_stop(&(*ck)->readers);
    ckpt_stream_close(&(*ck)->stream);
    free(*ck);
    *ck = NULL;
}

const char *ent_ckpt_path(const ent_ckpt_t *ck) { return ck->path; }

ent_status ent_ckpt_attr_i64(ent_ckpt_t *ck, const char *name, int64_t *v) {
    return ckpt_read_i64_attr(ck->file, ck->path, name, v);
}

ent_status ent_ckpt_attr_u64(ent_ckpt_t *ck, const char *name, uint64_t *v) {
    return ckpt_read_u64_attr(ck->file, ck->path, name, v);
}

ent_status ent_ckpt_attr_text(ent_ckpt_t *ck, const char *name, char **text) {
    return ckpt_read_text_attr(ck->file, ck->path, name, text);
}

int ent_ckpt_has_attr(ent_ckpt_t *ck, const char *name) {
    return H5Aexists(ck->file, name) > 0;
}

int ent_ckpt_has_moments(ent_ckpt_t *ck) {
    return H5Lexists(ck->file, "adam_m", H5P_DEFAULT) > 0 &&
           H5Lexists(ck->file, "adam_v", H5P_DEFAULT) > 0;
}

// Opens group/name and checks it has the row's global shape.
static hid_t open_checked(ent_ckpt_t *ck, const char *group, const ent_param_row *r,
                          ent_status *st) {
    char name[160];
    snprintf(name, sizeof name, "%s/%s", group, r->name);
    if (H5Lexists(ck->file, group, H5P_DEFAULT) <= 0 || H5Lexists(ck->file, name, H5P_DEFAULT) <= 0) {
        *st = ent_fail(ENT_ERR_INPUT, "%s has no dataset %s: it was saved from another model",
                       ck->path, name);
        return -1;
    }
    hid_t d = H5Dopen2(ck->file, name, H5P_DEFAULT);
    if (d < 0) {
        *st = ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot open dataset %s", ck->path, name);
        return -1;
    }
    hid_t space = H5Dget_space(d);
    hsize_t dims[2] = {0, 1};
    int nd = H5Sget_simple_extent_ndims(space);
    if (nd >= 1 && nd <= 2) H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    if (nd != r->ndim || (int64_t)dims[0] != r->shape[0] || (nd == 2 && (int64_t)dims[1] != r->shape[1])) {
        *st = ent_fail(ENT_ERR_INPUT, "%s: dataset %s has shape (%llu, %llu); this model needs "
                       "(%lld, %lld)", ck->path, name, (unsigned long long)dims[0],
                       (unsigned long long)(nd == 2 ? dims[1] : 1), (long long)r->shape[0],
                       (long long)r->shape[1]);
        H5Dclose(d);
        return -1;
    }
    return d;
}

// Reads local elements [lo, hi) of row r into buf through HDF5's filter
// pipeline (any layout; the checksums are checked by HDF5).
static ent_status read_part(ent_ckpt_t *ck, hid_t dset, const char *group,
                            const ent_param_row *r, const ent_ckpt_shard *sh, size_t lo,
                            size_t hi, float *buf) {
    if (lo >= hi) return ENT_OK;
    hid_t fspace = H5Dget_space(dset);
    ent_rect rects[ENT_MAX_RECTS];
    int nr = ent_param_row_rects(r, sh->tp_rank, sh->tp_size, lo, hi, rects);
    hid_t mspace = ckpt_memory_space(r->ndim, rects, nr, hi - lo);
    ckpt_select_blocks(fspace, mspace, rects, nr);
    herr_t rc = H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, buf);
    ent_status st = rc < 0 ? ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot read dataset %s/%s "
                                          "(corrupted?)", ck->path, group, r->name)
                           : ENT_OK;
    H5Sclose(mspace);
    H5Sclose(fspace);
    return st;
}

// Floats in one chunk of a row's dataset when this rank's part of the row is
// the whole global tensor (so that whole chunks can move directly), as
// entente chunks it; 0 otherwise.
static size_t whole_chunk_floats(const ent_param_row *r) {
    if (r->numel != (size_t)(r->shape[0] * r->shape[1])) return 0; // split across TP ranks
    hsize_t chunk[2];
    ckpt_chunk_dims(r->ndim, r->shape, chunk);
    return (size_t)(chunk[0] * chunk[1]);
}

// Reads local elements [lo, hi) of row r to dst: the whole chunks among them
// straight from the file (checksums checked as they are read), the rest
// through HDF5. `end`: the arena offset where the memory dst lies in ends.
static ent_status read_range(ent_ckpt_t *ck, hid_t dset, int g, const ent_param_row *r,
                             const ent_ckpt_shard *sh, size_t lo, size_t hi, float *dst,
                             size_t end) {
    size_t a, b, cols = (size_t)r->shape[1];
    if (!ckpt_whole_chunks(ckpt_direct_rows(dset), r, lo, hi, &a, &b))
        return read_part(ck, dset, ckpt_groups[g], r, sh, lo, hi, dst);
    ENT_CHECK(read_part(ck, dset, ckpt_groups[g], r, sh, lo, a, dst));
    char name[160];
    snprintf(name, sizeof name, "%s/%s", ckpt_groups[g], r->name);
    size_t after = r->offset + b; // the arena offset just past the chunks
    ent_status st = ckpt_read_rows(dset, name, a / cols, (b + cols - 1) / cols, dst + (a - lo),
                                   (end > after ? end - after : 0) * sizeof(float), &ck->stream,
                                   ck->readers);
    if (st != ENT_OK) return ent_fail(st, "%s: %s", ck->path, ent_last_error());
    return read_part(ck, dset, ckpt_groups[g], r, sh, b, hi, dst + (b - lo));
}

// The arena ranges the replicas read, one each, to be broadcast after:
// [cut[k], cut[k + 1]) for replica k, about equal, moved to the nearest chunk
// boundary where the row there moves whole chunks, so each rank reads whole
// chunks. Every replica
// computes the same cuts from the same table.
static void replica_cuts(const ent_param_table *t, size_t a0, size_t a1, int n, size_t *cut) {
    cut[0] = a0;
    cut[n] = a1;
    int i = 0;
    for (int k = 1; k < n; k++) {
        size_t at = a0 + (size_t)((double)(a1 - a0) * k / n);
        while (i + 1 < t->nrows && t->rows[i].offset + t->rows[i].numel <= at) i++;
        const ent_param_row *r = &t->rows[i];
        size_t per = whole_chunk_floats(r);
        if (per > 0 && at >= r->offset && at < r->offset + r->numel) { // the nearest boundary
            size_t q = (at - r->offset + per / 2) / per * per;
            at = r->offset + (q < r->numel ? q : r->numel);
        }
        cut[k] = at < cut[k - 1] ? cut[k - 1] : at;
    }
}

// A shared arena is read and broadcast in segments of about this many floats
// (64 MiB), MIN_SEGMENTS to MAX_SEGMENTS of them (a small model's several
// segments cost little, and every multi-rank test then goes through them).
enum { BCAST_FLOATS = 16 << 20, MIN_SEGMENTS = 4, MAX_SEGMENTS = 64 };

// Advances the broadcasts in flight (MPI moves them only inside its calls).
static void progress(ent_request_t **reqs, int n) {
    for (int i = 0; i < n; i++) {
        int done;
        if (reqs[i] != NULL) ent_test(reqs[i], &done);
    }
}

ent_status ent_ckpt_read(ent_ckpt_t *ck, const ent_ckpt_shard *sh) {
    ent_status st = ENT_OK;
    const ent_param_table *t = sh->table;
    ckpt_sources src = ckpt_shard_sources(sh); // the arenas wanted, and where they go
    int moments = src.base[CKPT_ADAM_M] != NULL && src.base[CKPT_ADAM_V] != NULL;
    if (!moments) src.base[CKPT_ADAM_M] = src.base[CKPT_ADAM_V] = NULL;
    // DP replicas hold the same parameters (and coalition arrays, and
    // moments without ZeRO): each reads a part and broadcasts it, so the file
    // is read once
    ent_group_t *reps = sh->replicas != NULL && ent_group_size(sh->replicas) > 1 ? sh->replicas : NULL;
    ent_group_t *all_ranks = ck->world != NULL ? ck->world : reps;
    int nrep = reps ? ent_group_size(reps) : 1, me = reps ? ent_group_rank(reps) : 0;
    size_t *cut = calloc((size_t)nrep + 1, sizeof(size_t)); // the arena being read's cuts
    size_t seg[MAX_SEGMENTS + 1]; // the segments of the arena being read
    int maxreq = MAX_SEGMENTS * nrep, nreq = 0;
    ent_request_t **reqs = calloc((size_t)maxreq, sizeof *reqs);
    if (cut == NULL || reqs == NULL) st = ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", ck->path);
    int shared[CKPT_NGROUPS]; // which arenas the replicas share
    for (int g = 0; g < CKPT_NGROUPS; g++) shared[g] = g != CKPT_ADAM_M && g != CKPT_ADAM_V;
    if (moments) {
        int mine = sh->state_first == 0 && sh->state_count >= t->total, all = mine;
        ent_status a = reps != NULL ? ent_allreduce(reps, &mine, &all, 1, ENT_I32, ENT_MIN) : ENT_OK;
        if (st == ENT_OK) st = a;
        shared[CKPT_ADAM_M] = shared[CKPT_ADAM_V] = all;
    }
    // no dataset is believed before the whole file matches the table
    if (st == ENT_OK) st = ent_ckpt_check_layout(ck, t);
    if (st == ENT_OK && moments && !ent_ckpt_has_moments(ck))
        st = ent_fail(ENT_ERR_INPUT, "%s holds no AdamW state (adam_m, adam_v)", ck->path);
    if ((src.base[CKPT_ANCHOR] || src.base[CKPT_OUTER_M] || src.base[CKPT_RESIDUAL]) &&
        !ent_ckpt_has_coalition(ck))
        st = ent_fail(ENT_ERR_INPUT, "%s holds no coalition state (group /%s): it was not saved "
                      "by a member of a coalition", ck->path, CKPT_COALITION);
    st = agree(all_ranks, st, "reading", ck->path);
    if (st != ENT_OK) {
        free(cut);
        free(reqs);
        return st;
    }
    // Arena by arena, and a shared arena segment by segment, each replica
    // reads its part (whole chunks by the readers, queued as this thread
    // walks the index; with no one to send it to, the next arena is queued at
    // once), waits for the readers, then sends it to the others while the
    // next segment is read (its broadcast advanced between rows). Segments
    // keep the broadcast left over at the end short: with one per arena, the
    // last arena's (a third of a resume's state) took 0.1-0.37 s of a 2-3.6 s
    // load of GPT-2 small at DP=2. A failed read does not stop the broadcasts
    // (every rank takes part in all of them, in the same order); every rank
    // learns of it at the end and fails, the arrays then being unspecified.
    // Reading and the broadcasts never touch the same memory at once: reads
    // only write forward of the segments already sent (the 4 bytes lent after
    // a chunk read in place through HDF5 included), into parts whose
    // broadcast is not yet posted.
    if (ck->readers == NULL) ck->readers = ckpt_readers_start(ck->path, ck->stream.fd);
    for (int g = 0; g < CKPT_NGROUPS; g++) {
        if (src.base[g] == NULL) continue;
        size_t s0 = src.first[g], s1 = src.end[g]; // base holds arena range [s0, s1)
        size_t e1 = s1 < t->total ? s1 : t->total;
        // shared arenas go in segments of about BCAST_FLOATS, each read and
        // then sent while the next is read, so only the last segment's
        // broadcast is left to wait for at the end
        int nseg = 1;
        if (shared[g] && reps != NULL && e1 > s0) {
            size_t want = (e1 - s0 + BCAST_FLOATS - 1) / BCAST_FLOATS;
            nseg = want < MIN_SEGMENTS ? MIN_SEGMENTS : want > MAX_SEGMENTS ? MAX_SEGMENTS : (int)want;
            replica_cuts(t, s0, e1, nseg, seg);
        } else {
            seg[0] = s0;
            seg[1] = e1;
        }
        for (int j = 0; j < nseg; j++) { // every rank takes part in every broadcast
            if (shared[g]) replica_cuts(t, seg[j], seg[j + 1], nrep, cut);
            size_t r0 = shared[g] ? cut[me] : s0, r1 = shared[g] ? cut[me + 1] : s1;
            for (int i = 0; i < t->nrows && st == ENT_OK; i++) {
                const ent_param_row *r = &t->rows[i];
                size_t a = r->offset, b = r->offset + r->numel;
                if (b <= r0 || a >= r1) continue; // nothing of this row here
                hid_t d = open_checked(ck, ckpt_groups[g], r, &st);
                if (d < 0) break;
                size_t lo = (a > r0 ? a : r0) - a, hi = b < r1 ? b - a : r1 - a;
                st = read_range(ck, d, g, r, sh, lo, hi, src.base[g] + (a + lo - s0), s1);
                H5Dclose(d);
                progress(reqs, nreq);
            }
            if (ck->readers != NULL && reps != NULL && shared[g]) { // nothing is sent unchecked
                ent_status w = ckpt_readers_wait(ck->readers);
                if (st == ENT_OK) st = w;
            }
            for (int k = 0; reps != NULL && shared[g] && k < nrep; k++) {
                if (cut[k + 1] <= cut[k]) continue;
                if (nreq == maxreq) { // the oldest are long done: make room
                    for (int q = 0; q < nreq; q++) {
                        ent_status w = ent_wait(&reqs[q]);
                        if (st == ENT_OK) st = w;
                    }
                    nreq = 0;
                }
                ent_status b = ent_ibroadcast(reps, src.base[g] + (cut[k] - s0), cut[k + 1] - cut[k],
                                              ENT_F32, k, &reqs[nreq]);
                if (b == ENT_OK) nreq++;
                else if (st == ENT_OK) st = b;
            }
        }
    }
    if (ck->readers != NULL) { // nor returned
        ent_status w = ckpt_readers_wait(ck->readers);
        if (st == ENT_OK) st = w;
    }
    for (int i = 0; i < nreq; i++) {
        ent_status w = ent_wait(&reqs[i]);
        if (st == ENT_OK) st = w;
    }
    free(reqs);
    free(cut);
    return agree(all_ranks, st, "reading", ck->path);
}

int ent_ckpt_has_coalition(ent_ckpt_t *ck) {
    return H5Lexists(ck->file, CKPT_COALITION, H5P_DEFAULT) > 0;
}

ent_status ent_ckpt_coalition_info(ent_ckpt_t *ck, int64_t *round, char **ledger) {
    *ledger = NULL;
    if (!ent_ckpt_has_coalition(ck))
        return ent_fail(ENT_ERR_INPUT, "%s holds no coalition state (group /%s)", ck->path,
                        CKPT_COALITION);
    hid_t grp = H5Gopen2(ck->file, CKPT_COALITION, H5P_DEFAULT);
    if (grp < 0) return ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot open group /%s", ck->path, CKPT_COALITION);
    ent_status st = ckpt_read_i64_attr(grp, ck->path, "round", round);
    hsize_t n = 0;
    hid_t d = st == ENT_OK && H5Lexists(grp, "ledger", H5P_DEFAULT) > 0
                  ? H5Dopen2(grp, "ledger", H5P_DEFAULT) : H5I_INVALID_HID;
    if (d >= 0) {
        hid_t space = H5Dget_space(d);
        if (H5Sget_simple_extent_ndims(space) == 1) H5Sget_simple_extent_dims(space, &n, NULL);
        H5Sclose(space);
    }
    if (st == ENT_OK) *ledger = calloc((size_t)n + 1, 1);
    if (st == ENT_OK && *ledger == NULL) st = ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", ck->path);
    if (st == ENT_OK && n > 0 && H5Dread(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, *ledger) < 0)
        st = ckpt_h5_fail(ENT_ERR_INPUT, "%s: dataset /%s/ledger is damaged", ck->path, CKPT_COALITION);
    if (d >= 0) H5Dclose(d);
    H5Gclose(grp);
    if (st != ENT_OK) {
        free(*ledger);
        *ledger = NULL;
    }
    return st;
}

ent_status ent_ckpt_read_dataset(ent_ckpt_t *ck, const char *name, float **data,
                                 int64_t shape[2], int *ndim) {
    *data = NULL;
    hid_t d = H5Dopen2(ck->file, name, H5P_DEFAULT);
    if (d < 0) return ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot open dataset %s", ck->path, name);
    hid_t space = H5Dget_space(d);
    hsize_t dims[2] = {0, 1};
    int nd = H5Sget_simple_extent_ndims(space);
    if (nd < 1 || nd > 2) {
        H5Sclose(space);
        H5Dclose(d);
        return ent_fail(ENT_ERR_INPUT, "%s: dataset %s has %d dimensions", ck->path, name, nd);
    }
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    size_t n = (size_t)dims[0] * (size_t)(nd == 2 ? dims[1] : 1);
    float *buf = malloc(sizeof(float) * (n + 1)); // one more: slack for the direct read
    if (buf == NULL) {
        H5Dclose(d);
        return ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", name);
    }
    ent_status st;
    if (ckpt_direct_rows(d) > 0) {
        st = ckpt_read_rows(d, name, 0, dims[0], buf, sizeof(float), &ck->stream, NULL);
        if (st != ENT_OK) st = ent_fail(st, "%s: %s", ck->path, ent_last_error());
    } else {
        herr_t rc = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
        st = rc < 0 ? ckpt_h5_fail(ENT_ERR_INPUT, "%s: dataset %s is damaged", ck->path, name)
                    : ENT_OK;
    }
    H5Dclose(d);
    if (st != ENT_OK) {
        free(buf);
        return st;
    }
    shape[0] = (int64_t)dims[0];
    shape[1] = nd == 2 ? (int64_t)dims[1] : 1;
    *ndim = nd;
    *data = buf;
    return ENT_OK;
}
