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
    ckpt_value v;
    fprintf(out, "  %-24s ", name);
    if (a < 0 || ckpt_read_value(a, "", name, &v) != ENT_OK) {
        fprintf(out, "(unreadable)");
        ent_clear_error();
    } else if (v.type == ENT_ATTR_STR) {
        fprintf(out, "%s", v.s);
        free(v.s);
    } else if (v.type == ENT_ATTR_I64) {
        fprintf(out, "%lld", (long long)v.i);
    } else if (v.type == ENT_ATTR_U64) {
        fprintf(out, "%llu", (unsigned long long)v.u);
    } else {
        fprintf(out, "%.10g", v.f);
    }
    fputc('\n', out);
    if (a >= 0) H5Aclose(a);
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

// Reads a whole dataset (its checksums checked) and counts NaN and Inf.
static void verify_dataset(verify_state *v, ent_ckpt_t *ck, const char *full) {
    float *buf = NULL;
    int64_t shape[2];
    int nd;
    v->datasets++;
    if (ent_ckpt_read_dataset(ck, full, &buf, shape, &nd) != ENT_OK) {
        verify_fail(v, "%s", ent_last_error());
        return;
    }
    size_t n = (size_t)(shape[0] * shape[1]), nonfinite = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(buf[i]) && nonfinite++ == 0) first = i;
    free(buf);
    v->values += (double)n;
    if (nonfinite)
        verify_fail(v, "%s: %zu value(s) are NaN or infinite (first at flat index %zu)", full,
                    nonfinite, first);
}

ent_status ent_ckpt_verify(const char *path, ent_ckpt_expect_fn expect, void *ctx, FILE *out) {
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    // the same checks as a resume makes before it reads anything (the
    // attributes, then the layout against the table they imply)
    ent_param_table table = {0};
    ent_status st = expect(ck, ctx, &table);
    if (st == ENT_OK) st = ent_ckpt_check_layout(ck, &table);
    if (st != ENT_OK) {
        ent_param_table_free(&table);
        ent_ckpt_close(&ck);
        return st;
    }
    verify_state v = {.out = out};
    for (int g = 0; g < CKPT_NGROUPS; g++) {
        if (H5Lexists(ck->file, ckpt_groups[g], H5P_DEFAULT) <= 0) continue; // layout checked
        for (int i = 0; i < table.nrows; i++) {
            char full[256];
            snprintf(full, sizeof full, "%s/%s", ckpt_groups[g], table.rows[i].name);
            verify_dataset(&v, ck, full);
        }
    }
    ent_param_table_free(&table);
    int64_t round = 0, step = -1;
    char *ledger = NULL;
    if (ent_ckpt_has_coalition(ck) && ent_ckpt_coalition_info(ck, &round, &ledger) != ENT_OK)
        verify_fail(&v, "%s", ent_last_error());
    free(ledger);
    if (H5Aexists(ck->file, "step") > 0 && ent_ckpt_attr_i64(ck, "step", &step) != ENT_OK)
        verify_fail(&v, "%s", ent_last_error());
    ent_ckpt_close(&ck);
    if (v.bad)
        return ent_fail(ENT_ERR_INPUT, "%d problem(s) in the checkpoint; first: %s", v.bad,
                        v.first_bad);
    fprintf(out, "%s: ok: step %lld, %d datasets, %.0f values, metadata digest and checksums "
            "good, no NaN or Inf\n", path, (long long)step, v.datasets, v.values);
    return ENT_OK;
}
