// check.c: a checkpoint's datasets against the parameter table they must hold.
//
// Every reader of arenas (ent_ckpt_read: resume, sample) and `ckpt verify`
// call ent_ckpt_check_layout before they believe a dataset: what the file
// holds is exactly what the table says (no dataset missing, none extra, no
// other object), each dataset exactly IEEE float32 little-endian at its
// row's global shape, chunked with a Fletcher32 checksum (so that "checksums
// good" means something), and every object's header checksummed. HDF5 would
// otherwise convert an int32 or float64 dataset silently, and read a 1-D
// dataset into a 2-D row.
#include "ckpt_impl.h"

#include <string.h>

static const char *const root_groups[] = {"params", "adam_m", "adam_v", CKPT_COALITION};
enum { NROOT = 4 };

// An object's header must be version 2 (checksummed): superblock 2 and later
// allow version 1 headers too.
static ent_status check_header(hid_t obj, const char *path, const char *name) {
#if H5_VERSION_GE(1, 12, 0)
    H5O_native_info_t oi;
    herr_t rc = H5Oget_native_info(obj, &oi, H5O_NATIVE_INFO_HDR);
#else
    H5O_info_t oi;
    herr_t rc = H5Oget_info2(obj, &oi, H5O_INFO_HDR);
#endif
    if (rc < 0)
        return ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot read the object header of /%s", path, name);
    if (oi.hdr.version < 2)
        return ent_fail(ENT_ERR_INPUT, "%s: object /%s has a version %u header, without a checksum "
                        "(accepted: 2, HDF5's 1.8 format or later)", path, name, oi.hdr.version);
    return ENT_OK;
}

// Links in a group: exactly `expect`, all hard links (no soft or external
// link to elsewhere).
typedef struct {
    int hard, others;
} link_count;

static herr_t count_link(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    (void)g;
    (void)name;
    link_count *c = data;
    if (info->type == H5L_TYPE_HARD) c->hard++;
    else c->others++;
    return 0;
}

static ent_status check_links(hid_t grp, const char *path, const char *name, int expect) {
    link_count c = {0, 0};
    if (H5Literate(grp, H5_INDEX_NAME, H5_ITER_INC, NULL, count_link, &c) < 0)
        return ckpt_h5_fail(ENT_ERR_INPUT, "%s: cannot list group /%s", path, name);
    if (c.others > 0)
        return ent_fail(ENT_ERR_INPUT, "%s: group /%s holds %d soft or external link(s) (accepted: "
                        "datasets and groups only)", path, name, c.others);
    if (c.hard != expect)
        return ent_fail(ENT_ERR_INPUT, "%s: group /%s holds %d objects; the model stored needs %d",
                        path, name, c.hard, expect);
    return ENT_OK;
}

// Opens grp/name, which must be a dataset of exactly `type` (an HDF5
// predefined type: float32 or uint8, little-endian), chunked, with Fletcher32
// among its filters, of ndim dimensions and this shape (shape[1] unused when
// ndim is 1).
static hid_t open_dataset(hid_t grp, const char *path, const char *full, const char *name,
                          hid_t type, int ndim, const int64_t shape[2], ent_status *st) {
    hid_t d = H5Lexists(grp, name, H5P_DEFAULT) > 0 ? H5Dopen2(grp, name, H5P_DEFAULT) : -1;
    if (d < 0) {
        *st = ent_fail(ENT_ERR_INPUT, "%s: dataset /%s is missing (or not a dataset)", path, full);
        return -1;
    }
    *st = check_header(d, path, full);
    hid_t t = H5Dget_type(d), space = H5Dget_space(d), dcpl = H5Dget_create_plist(d);
    hsize_t dims[2] = {0, 0};
    int nd = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    if (nd >= 1 && nd <= 2) H5Sget_simple_extent_dims(space, dims, NULL);
    int fletcher = 0, nf = dcpl < 0 ? 0 : H5Pget_nfilters(dcpl);
    for (int k = 0; k < nf; k++) {
        unsigned flags, conf;
        size_t nvals = 0;
        if (H5Pget_filter2(dcpl, (unsigned)k, &flags, &nvals, NULL, 0, NULL, &conf) == H5Z_FILTER_FLETCHER32)
            fletcher = 1;
    }
    H5D_chunk_index_t index = H5D_CHUNK_IDX_BTREE;
    const char *want = H5Tequal(type, H5T_IEEE_F32LE) > 0 ? "IEEE float32 little-endian" : "uint8";
    if (*st != ENT_OK) {
    } else if (t < 0 || H5Tequal(t, type) <= 0) {
        H5T_class_t cls = t < 0 ? H5T_NO_CLASS : H5Tget_class(t);
        *st = ent_fail(ENT_ERR_INPUT, "%s: dataset /%s is of another type: %s, %zu bytes, %s "
                       "(accepted: exactly %s)", path, full,
                       cls == H5T_INTEGER ? "integer" : cls == H5T_FLOAT ? "floating-point" : "not a number",
                       t < 0 ? (size_t)0 : H5Tget_size(t),
                       t >= 0 && H5Tget_order(t) == H5T_ORDER_BE ? "big-endian" : "little-endian", want);
    } else if (nd != ndim || (int64_t)dims[0] != shape[0] ||
               (ndim == 2 && (int64_t)dims[1] != shape[1])) {
        char got[64], need[64];
        if (nd == 2) snprintf(got, sizeof got, "(%llu, %llu)", (unsigned long long)dims[0], (unsigned long long)dims[1]);
        else if (nd == 1) snprintf(got, sizeof got, "(%llu)", (unsigned long long)dims[0]);
        else snprintf(got, sizeof got, "%d dimensions", nd);
        if (ndim == 2) snprintf(need, sizeof need, "(%lld, %lld)", (long long)shape[0], (long long)shape[1]);
        else snprintf(need, sizeof need, "(%lld)", (long long)shape[0]);
        *st = ent_fail(ENT_ERR_INPUT, "%s: dataset /%s has shape %s; the model stored needs %s",
                       path, full, got, need);
    } else if (dcpl < 0 || H5Pget_layout(dcpl) != H5D_CHUNKED || !fletcher) {
        *st = ent_fail(ENT_ERR_INPUT, "%s: dataset /%s is not chunked with a Fletcher32 checksum "
                       "(its values could not be checked)", path, full);
    } else if (H5Dget_chunk_index_type(d, &index) < 0 || index == H5D_CHUNK_IDX_BTREE) {
        // a version 1 B-tree's nodes carry no checksum: a changed chunk
        // coordinate would put a valid chunk in another place
        *st = ent_fail(ENT_ERR_INPUT, "%s: dataset /%s indexes its chunks with a version 1 B-tree, "
                       "without checksums (accepted: HDF5 1.10's chunk indexes)", path, full);
    }
    if (t >= 0) H5Tclose(t);
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (*st != ENT_OK) {
        H5Dclose(d);
        return -1;
    }
    return d;
}

// A group of one dataset per row.
static ent_status check_arena(hid_t file, const char *path, const char *group,
                              const ent_param_table *t) {
    hid_t grp = H5Gopen2(file, group, H5P_DEFAULT);
    if (grp < 0) return ckpt_h5_fail(ENT_ERR_INPUT, "%s: /%s is not a group", path, group);
    ent_status st = check_header(grp, path, group);
    if (st == ENT_OK) st = check_links(grp, path, group, t->nrows);
    for (int i = 0; i < t->nrows && st == ENT_OK; i++) {
        const ent_param_row *r = &t->rows[i];
        char full[256];
        snprintf(full, sizeof full, "%s/%s", group, r->name);
        hid_t d = open_dataset(grp, path, full, r->name, H5T_IEEE_F32LE, r->ndim, r->shape, &st);
        if (d >= 0) H5Dclose(d);
    }
    H5Gclose(grp);
    return st;
}

// /coalition: attribute round >= 0; groups anchor, outer_momentum and
// residual (each optional, as the arenas saved); dataset ledger (optional).
static ent_status check_coalition(hid_t file, const char *path, const ent_param_table *t) {
    hid_t grp = H5Gopen2(file, CKPT_COALITION, H5P_DEFAULT);
    if (grp < 0) return ckpt_h5_fail(ENT_ERR_INPUT, "%s: /%s is not a group", path, CKPT_COALITION);
    ent_status st = check_header(grp, path, CKPT_COALITION);
    int64_t round = 0;
    if (st == ENT_OK) st = ckpt_read_i64_attr(grp, path, "round", &round);
    if (st == ENT_OK && round < 0)
        st = ent_fail(ENT_ERR_INPUT, "%s: attribute %s/round is %lld (accepted: 0 or more)", path,
                      CKPT_COALITION, (long long)round);
    int present = 0;
    for (int g = CKPT_ANCHOR; g < CKPT_NGROUPS && st == ENT_OK; g++) {
        if (H5Lexists(file, ckpt_groups[g], H5P_DEFAULT) <= 0) continue;
        present++;
        st = check_arena(file, path, ckpt_groups[g], t);
    }
    if (st == ENT_OK && H5Lexists(grp, "ledger", H5P_DEFAULT) > 0) {
        present++;
        hid_t d = H5Dopen2(grp, "ledger", H5P_DEFAULT), space = d < 0 ? -1 : H5Dget_space(d);
        hsize_t n = 0;
        if (space >= 0 && H5Sget_simple_extent_ndims(space) == 1) H5Sget_simple_extent_dims(space, &n, NULL);
        if (space >= 0) H5Sclose(space);
        if (d >= 0) H5Dclose(d);
        int64_t shape[2] = {(int64_t)n, 1};
        d = open_dataset(grp, path, CKPT_COALITION "/ledger", "ledger", H5T_STD_U8LE, 1, shape, &st);
        if (d >= 0) H5Dclose(d);
        if (st == ENT_OK && n > CKPT_TEXT_MAX)
            st = ent_fail(ENT_ERR_INPUT, "%s: dataset /%s/ledger holds %llu bytes (accepted: up to "
                          "%d)", path, CKPT_COALITION, (unsigned long long)n, CKPT_TEXT_MAX);
    }
    if (st == ENT_OK) st = check_links(grp, path, CKPT_COALITION, present);
    H5Gclose(grp);
    return st;
}

ent_status ent_ckpt_check_layout(ent_ckpt_t *ck, const ent_param_table *t) {
    const char *path = ck->path;
    int64_t tensors = 0;
    ENT_CHECK(check_header(ck->file, path, ""));
    ENT_CHECK(ckpt_read_i64_attr(ck->file, path, "tensors", &tensors));
    if (tensors != t->nrows)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute 'tensors' is %lld; the model stored has %d "
                        "parameter tensors", path, (long long)tensors, t->nrows);
    int present[NROOT] = {0}, n = 0;
    for (int k = 0; k < NROOT; k++) n += present[k] = H5Lexists(ck->file, root_groups[k], H5P_DEFAULT) > 0;
    if (!present[0]) return ent_fail(ENT_ERR_INPUT, "%s: group /params is missing", path);
    if (present[1] != present[2])
        return ent_fail(ENT_ERR_INPUT, "%s: group /%s is missing (the AdamW moments come as a pair)",
                        path, present[1] ? "adam_v" : "adam_m");
    // nothing else at the root: an object entente does not know is a file it did not write
    ENT_CHECK(check_links(ck->file, path, "", n));
    for (int g = CKPT_PARAMS; g <= CKPT_ADAM_V; g++)
        if (present[g]) ENT_CHECK(check_arena(ck->file, path, ckpt_groups[g], t));
    if (present[3]) ENT_CHECK(check_coalition(ck->file, path, t));
    return ENT_OK;
}
