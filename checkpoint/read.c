// read.c: opening checkpoints and reading them back, on any layout.
//
// Each rank reads the blocks of every global tensor that its own table
// describes: its tensor-parallel part of every parameter row, and of the
// AdamW moments only its state range (its ZeRO shard). As for writing, every
// rank takes part in every collective read, and the ranks agree on the outcome.
#include "ckpt_impl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

ent_status ent_ckpt_open(const char *path, ent_group_t *world, ent_ckpt_t **out) {
    *out = NULL;
    ckpt_h5_init();
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
    if (world != NULL && ent_group_size(world) > 1) {
        H5Pset_fapl_mpio(fapl, ent_group_mpi_comm(world), MPI_INFO_NULL);
        H5Pset_all_coll_metadata_ops(fapl, 1);
        ck->parallel = 1;
    }
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
    if (!ck->parallel) ckpt_stream_open(&ck->stream, path); // direct reads drop what they read
    *out = ck;
    return ENT_OK;
}

void ent_ckpt_close(ent_ckpt_t **ck) {
    if (ck == NULL || *ck == NULL) return;
    if ((*ck)->file >= 0) H5Fclose((*ck)->file);
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

// Reads local elements [lo, hi) of row r into buf (collective when parallel;
// a rank with nothing to read selects nothing).
static ent_status read_part(ent_ckpt_t *ck, hid_t dset, hid_t dxpl, const char *group,
                            const ent_param_row *r, const ent_ckpt_shard *sh, size_t lo,
                            size_t hi, float *buf) {
    hid_t fspace = H5Dget_space(dset);
    ent_rect rects[ENT_MAX_RECTS];
    int nr = lo < hi ? ent_param_row_rects(r, sh->tp_rank, sh->tp_size, lo, hi, rects) : 0;
    hid_t mspace = ckpt_memory_space(r->ndim, rects, nr, lo < hi ? hi - lo : 0);
    ckpt_select_blocks(fspace, mspace, rects, lo < hi ? nr : 0);
    float dummy;
    herr_t rc = H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace,
                        dxpl, lo < hi ? buf : &dummy);
    ent_status st = rc < 0 ? ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot read dataset %s/%s "
                                          "(corrupted?)", ck->path, group, r->name)
                           : ENT_OK;
    H5Sclose(mspace);
    H5Sclose(fspace);
    return st;
}

ent_status ent_ckpt_read(ent_ckpt_t *ck, const ent_ckpt_shard *sh) {
    ent_status st = ENT_OK;
    // one process reads whole tensors directly; their checksums are checked beside
    ckpt_verifier *verifier = !ck->parallel && sh->tp_size == 1 ? ckpt_verifier_start() : NULL;
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (ck->parallel) H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
    int moments = sh->adam_m != NULL && sh->adam_v != NULL;
    if (moments && !ent_ckpt_has_moments(ck))
        st = ent_fail(ENT_ERR_INPUT, "%s holds no AdamW state (adam_m, adam_v)", ck->path);
    for (int g = 0; g < (moments ? CKPT_NGROUPS : 1); g++) {
        for (int i = 0; i < sh->table->nrows; i++) {
            const ent_param_row *r = &sh->table->rows[i];
            ent_status local = ENT_OK;
            hid_t d = open_checked(ck, ckpt_groups[g], r, &local);
            if (d < 0) {
                // metadata is the same for every rank: every rank stops here together
                if (st == ENT_OK) st = local;
                goto done;
            }
            size_t lo = 0, hi = r->numel;
            float *dst = sh->params + r->offset;
            size_t end = sh->table->total; // the arena dst lies in ends here
            if (g > 0) { // moments: only this rank's state range
                size_t a = r->offset, b = r->offset + r->numel;
                size_t s0 = sh->state_first, s1 = sh->state_first + sh->state_count;
                lo = (a > s0 ? a : s0) - a;
                hi = b < s1 ? b - a : (s1 > a ? s1 - a : 0);
                float *m = g == 1 ? sh->adam_m : sh->adam_v;
                dst = m + (r->offset + lo - sh->state_first);
                end = s1;
            }
            if (!ck->parallel && sh->tp_size == 1 && lo == 0 && hi == r->numel && ckpt_direct_ok(d)) {
                // one process reading a whole tensor: chunk by chunk, checksums checked here
                char name[160];
                snprintf(name, sizeof name, "%s/%s", ckpt_groups[g], r->name);
                size_t row_end = r->offset + r->numel;
                local = ckpt_read_whole(d, name, dst, (end > row_end ? end - row_end : 0) * sizeof(float),
                                        &ck->stream, verifier);
                if (local != ENT_OK) local = ent_fail(local, "%s: %s", ck->path, ent_last_error());
            } else {
                local = read_part(ck, d, dxpl, ckpt_groups[g], r, sh, lo, hi, dst);
            }
            if (local != ENT_OK && st == ENT_OK) st = local;
            H5Dclose(d);
        }
    }
done:
    H5Pclose(dxpl);
    ent_status checked = ckpt_verifier_finish(verifier);
    if (checked != ENT_OK && st == ENT_OK) st = ent_fail(checked, "%s: %s", ck->path, ent_last_error());
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
    if (!ck->parallel && ckpt_direct_ok(d)) {
        st = ckpt_read_whole(d, name, buf, sizeof(float), &ck->stream, NULL);
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
