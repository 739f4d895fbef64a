// tools.c: `entente ckpt info` and `entente ckpt verify`, on one process.
#include "ckpt_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ---------------------------------------------------------------------------
// info

static herr_t print_attr(hid_t obj, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    FILE *out = data;
    if (strcmp(name, "config") == 0) return 0; // printed last, it is long
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(a);
    H5T_class_t cls = H5Tget_class(type);
    fprintf(out, "  %-24s ", name);
    if (cls == H5T_STRING && H5Tis_variable_str(type) <= 0) {
        size_t n = H5Tget_size(type);
        char *buf = calloc(n + 1, 1);
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, n);
        if (buf && H5Aread(a, mem, buf) >= 0) fprintf(out, "%s", buf);
        H5Tclose(mem);
        free(buf);
    } else if (cls == H5T_INTEGER) {
        long long v = 0;
        if (H5Tget_sign(type) == H5T_SGN_NONE) {
            unsigned long long u = 0;
            H5Aread(a, H5T_NATIVE_ULLONG, &u);
            fprintf(out, "%llu", u);
        } else {
            H5Aread(a, H5T_NATIVE_LLONG, &v);
            fprintf(out, "%lld", v);
        }
    } else if (cls == H5T_FLOAT) {
        double v = 0;
        H5Aread(a, H5T_NATIVE_DOUBLE, &v);
        fprintf(out, "%.10g", v);
    } else {
        fprintf(out, "(type class %d)", (int)cls);
    }
    fputc('\n', out);
    H5Tclose(type);
    H5Aclose(a);
    return 0;
}

typedef struct {
    int count;
    double values;
} group_sum;

static herr_t sum_dataset(hid_t grp, const char *name, const H5L_info_t *info, void *data) {
    (void)info;
    group_sum *s = data;
    hid_t d = H5Dopen2(grp, name, H5P_DEFAULT);
    if (d < 0) return 0;
    hid_t space = H5Dget_space(d);
    s->values += (double)H5Sget_simple_extent_npoints(space);
    s->count++;
    H5Sclose(space);
    H5Dclose(d);
    return 0;
}

ent_status ent_ckpt_info(const char *path, FILE *out) {
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    struct stat sb;
    stat(path, &sb);
    fprintf(out, "%s: entente checkpoint, format version %d, %.1f MiB\n", path, ENT_CKPT_VERSION,
            sb.st_size / 1048576.0);
    fprintf(out, "attributes:\n");
    hsize_t idx = 0;
    H5Aiterate2(ck->file, H5_INDEX_NAME, H5_ITER_INC, &idx, print_attr, out);
    fprintf(out, "datasets (float32, global shapes, Fletcher32 checksums):\n");
    for (int g = 0; g < CKPT_NGROUPS; g++) {
        if (H5Lexists(ck->file, ckpt_groups[g], H5P_DEFAULT) <= 0) {
            fprintf(out, "  /%-8s absent\n", ckpt_groups[g]);
            continue;
        }
        hid_t grp = H5Gopen2(ck->file, ckpt_groups[g], H5P_DEFAULT);
        group_sum s = {0, 0};
        H5Literate(grp, H5_INDEX_NAME, H5_ITER_INC, NULL, sum_dataset, &s);
        H5Gclose(grp);
        fprintf(out, "  /%-8s %d tensors, %.0f values (%.1f MiB)\n", ckpt_groups[g], s.count,
                s.values, s.values * 4 / 1048576.0);
    }
    int64_t round = 0;
    char *ledger = NULL;
    if (ent_ckpt_has_coalition(ck) && ent_ckpt_coalition_info(ck, &round, &ledger) == ENT_OK)
        fprintf(out, "coalition: round %lld, ledger %zu bytes\n", (long long)round, strlen(ledger));
    free(ledger);
    char *config = NULL;
    if (ent_ckpt_attr_text(ck, "config", &config) == ENT_OK) {
        fprintf(out, "configuration it was trained with:\n%s", config);
        free(config);
    }
    ent_clear_error();
    ent_ckpt_close(&ck);
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// verify

typedef struct {
    ent_ckpt_t *ck;
    const char *group;
    FILE *out;
    int datasets, bad;
    double values;
    char first_bad[512];
} verify_state;

static void verify_fail(verify_state *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void verify_fail(verify_state *v, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(v->out, "  FAILED %s\n", msg);
    if (!v->bad) snprintf(v->first_bad, sizeof v->first_bad, "%s", msg);
    v->bad++;
}

static herr_t verify_dataset(hid_t grp, const char *name, const H5L_info_t *info, void *data) {
    (void)grp;
    (void)info;
    verify_state *v = data;
    char full[256];
    snprintf(full, sizeof full, "%s/%s", v->group, name);
    float *buf = NULL;
    int64_t shape[2];
    int nd;
    v->datasets++;
    if (ent_ckpt_read_dataset(v->ck, full, &buf, shape, &nd) != ENT_OK) {
        verify_fail(v, "%s", ent_last_error());
        return 0;
    }
    size_t n = (size_t)(shape[0] * shape[1]), nonfinite = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(buf[i]) && nonfinite++ == 0) first = i;
    free(buf);
    v->values += (double)n;
    if (nonfinite)
        verify_fail(v, "%s: %zu value(s) are NaN or infinite (first at flat index %zu)", full,
                    nonfinite, first);
    // every moment tensor must mirror its parameter tensor
    if (strcmp(v->group, "params") != 0) {
        char pname[256];
        snprintf(pname, sizeof pname, "params/%s", name);
        if (H5Lexists(v->ck->file, pname, H5P_DEFAULT) <= 0) {
            verify_fail(v, "%s has no matching %s", full, pname);
        } else {
            hid_t d = H5Dopen2(v->ck->file, pname, H5P_DEFAULT);
            hid_t s = H5Dget_space(d);
            hsize_t dims[2] = {0, 1};
            H5Sget_simple_extent_dims(s, dims, NULL);
            H5Sclose(s);
            H5Dclose(d);
            if ((int64_t)dims[0] != shape[0] || (nd == 2 && (int64_t)dims[1] != shape[1]))
                verify_fail(v, "%s has shape (%lld, %lld) but %s has (%llu, %llu)", full,
                            (long long)shape[0], (long long)shape[1], pname,
                            (unsigned long long)dims[0], (unsigned long long)dims[1]);
        }
    }
    return 0;
}

ent_status ent_ckpt_verify(const char *path, FILE *out) {
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    verify_state v = {.ck = ck, .out = out};
    int64_t tensors = 0, step = 0;
    ent_status st = ent_ckpt_attr_i64(ck, "tensors", &tensors);
    if (st == ENT_OK) st = ent_ckpt_attr_i64(ck, "step", &step);
    if (st != ENT_OK) {
        ent_ckpt_close(&ck);
        return st;
    }
    for (int g = 0; g < CKPT_NGROUPS; g++) {
        if (H5Lexists(ck->file, ckpt_groups[g], H5P_DEFAULT) <= 0) {
            if (g == 0) verify_fail(&v, "group params is missing");
            continue;
        }
        hid_t grp = H5Gopen2(ck->file, ckpt_groups[g], H5P_DEFAULT);
        v.group = ckpt_groups[g];
        int before = v.datasets;
        H5Literate(grp, H5_INDEX_NAME, H5_ITER_INC, NULL, verify_dataset, &v);
        H5Gclose(grp);
        if (v.datasets - before != tensors)
            verify_fail(&v, "group %s holds %d datasets, the checkpoint says %lld tensors",
                        ckpt_groups[g], v.datasets - before, (long long)tensors);
    }
    int64_t round = 0;
    char *ledger = NULL;
    if (ent_ckpt_has_coalition(ck) && ent_ckpt_coalition_info(ck, &round, &ledger) != ENT_OK)
        verify_fail(&v, "%s", ent_last_error());
    free(ledger);
    ent_ckpt_close(&ck);
    if (v.bad)
        return ent_fail(ENT_ERR_INPUT, "%d problem(s) in the checkpoint; first: %s", v.bad,
                        v.first_bad);
    fprintf(out, "%s: ok: step %lld, %d datasets, %.0f values, checksums good, no NaN or Inf\n",
            path, (long long)step, v.datasets, v.values);
    return ENT_OK;
}
