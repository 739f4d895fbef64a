// param_table.c: layout helpers of the parameter table. Where a tensor-
// parallel rank's elements sit in a row's global tensor is answered in one
// place, ent_param_row_rects; slicing for initialisation and the checkpoint's
// hyperslabs both use it.
#include "ent_kernels.h"

#include <stdlib.h>
#include <string.h>

void ent_param_table_free(ent_param_table *t) {
    free(t->rows);
    memset(t, 0, sizeof *t);
}

const ent_param_row *ent_param_table_find(const ent_param_table *t, const char *name) {
    for (int i = 0; i < t->nrows; i++)
        if (strcmp(t->rows[i].name, name) == 0) return &t->rows[i];
    return NULL;
}

// Appends the global blocks of local rows [r0, r1) and columns [c0, c1).
static int add_local_block(const ent_param_row *r, int tp_rank, int64_t r0, int64_t r1,
                           int64_t c0, int64_t c1, ent_rect *out, int n) {
    if (r0 >= r1 || c0 >= c1) return n;
    int64_t lrows = r->local_shape[0], lcols = r->local_shape[1];
    if (r->split == ENT_SPLIT_ROWS) {
        // local rows are groups (Q, K, V) of `band` rows; group g's band sits
        // at global row g * group_rows + tp_rank * band
        int64_t band = lrows / r->split_groups, group_rows = r->shape[0] / r->split_groups;
        while (r0 < r1) {
            int64_t g = r0 / band, end = (g + 1) * band < r1 ? (g + 1) * band : r1;
            ent_rect *x = &out[n++];
            x->start[0] = g * group_rows + tp_rank * band + (r0 - g * band);
            x->count[0] = end - r0;
            x->start[1] = c0;
            x->count[1] = c1 - c0;
            r0 = end;
        }
        return n;
    }
    ent_rect *x = &out[n++];
    x->start[0] = r0;
    x->count[0] = r1 - r0;
    x->start[1] = c0 + (r->split == ENT_SPLIT_COLS ? tp_rank * lcols : 0);
    x->count[1] = c1 - c0;
    return n;
}

int ent_param_row_rects(const ent_param_row *r, int tp_rank, int tp_size, size_t lo, size_t hi,
                        ent_rect *out) {
    (void)tp_size; // the local shape already carries it
    if (lo >= hi) return 0;
    int64_t cols = r->local_shape[1];
    int64_t r0 = (int64_t)lo / cols, c0 = (int64_t)lo % cols;
    int64_t r1 = (int64_t)(hi - 1) / cols, c1 = (int64_t)(hi - 1) % cols + 1;
    int n = 0;
    if (r0 == r1) return add_local_block(r, tp_rank, r0, r0 + 1, c0, c1, out, n);
    // a partial first row, whole rows, a partial last row
    int64_t first_full = r0, last_full = r1;
    if (c0 > 0) {
        n = add_local_block(r, tp_rank, r0, r0 + 1, c0, cols, out, n);
        first_full = r0 + 1;
    }
    if (c1 < cols) last_full = r1 - 1;
    n = add_local_block(r, tp_rank, first_full, last_full + 1, 0, cols, out, n);
    if (c1 < cols) n = add_local_block(r, tp_rank, r1, r1 + 1, 0, c1, out, n);
    return n;
}

void ent_param_row_slice(const ent_param_row *r, int tp_rank, int tp_size, const float *global,
                         float *local) {
    ent_rect rects[ENT_MAX_RECTS];
    int n = ent_param_row_rects(r, tp_rank, tp_size, 0, r->numel, rects);
    int64_t cols = r->shape[1];
    for (int k = 0; k < n; k++)
        for (int64_t i = 0; i < rects[k].count[0]; i++) {
            const float *src = global + (size_t)((rects[k].start[0] + i) * cols + rects[k].start[1]);
            memcpy(local, src, sizeof(float) * (size_t)rects[k].count[1]);
            local += rects[k].count[1];
        }
}
