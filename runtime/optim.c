// optim.c: AdamW and the data-parallel synchronisation around it.
//
// A step is: the gradients' synchronisation (ent_optim_begin_backward,
// ent_optim_reduce_grads: all-reduce or reduce-scatter over DP), the norm,
// AdamW on this rank's range (ent_optim_update), and the parameters shared
// back (ent_optim_share_params: the ZeRO-1 all-gather). AdamW knows nothing
// of DP and the DP code nothing of AdamW, so an outer optimizer can sit
// beside them.
//
// AdamW counts its own updates (the t of its bias correction), apart from the
// trainer's step: an outer loop's merge may reset the optimizer (moments and
// count to zero, ent_optim_reset) while the step, the learning-rate schedule
// and the data cursor go on.
//
// Plain data parallelism: during the backward pass of a step's last
// micro-batch, the model reports each bucket (the final layernorm, then each
// block from the last, then the embeddings) as soon as its gradients are
// complete; the bucket's all-reduce over the DP group starts at once, in
// place, and runs while the backward pass continues (each later bucket also
// tests the earlier requests, which is what advances MPI's progress on a CPU).
// Every DP rank ends with the same summed gradient and takes the same step,
// so replicas stay bit-identical.
//
// ZeRO-1: the arena is cut into dp_size equal shards; gradients are
// reduce-scattered so each rank receives the sum for its shard, AdamW state
// exists only for that shard, each rank updates its part of the parameters
// and an all-gather brings every rank the whole updated model.
//
// The gradient norm counts every tensor once: tensors split across TP ranks
// contribute every rank's part, replicated ones only TP rank 0's copy.
#include "runtime_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUCKETS 4096

struct ent_optim {
    ent_model_t *model;
    const ent_grid *grid;
    ent_group_t *dp;       // the DP group for the backend's memory (gradients, parameters)
    ent_backend_t *be;
    int zero;
    size_t first, count;   // the arena range whose AdamW state this rank keeps
    float *m, *v;          // (count) AdamW moments
    int updates;           // AdamW updates since creation or the last reset
    float *shard_grads;    // (count) ZeRO-1: this rank's reduced gradients
    int armed;             // the backward in progress completes the step
    ent_request_t *req[MAX_BUCKETS];
    int nreq;
    ent_status hook_status; // first failure inside the hook
};

void ent_optim_moments(ent_optim_t *o, float **m, float **v) {
    *m = o->m;
    *v = o->v;
}

size_t ent_optim_state_floats(const ent_optim_t *o, size_t *first) {
    if (first) *first = o->first;
    return o->count;
}

int ent_optim_updates(const ent_optim_t *o) { return o->updates; }

void ent_optim_set_updates(ent_optim_t *o, int updates) { o->updates = updates; }

ent_status ent_optim_reset(ent_optim_t *o) {
    // each rank zeroes the range it keeps (its shard under ZeRO-1), through
    // the backend: the moments are its memory
    ENT_CHECK(o->be->iface->zero(o->be, o->m, sizeof(float) * o->count));
    ENT_CHECK(o->be->iface->zero(o->be, o->v, sizeof(float) * o->count));
    o->updates = 0;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// the bucket hook

static void on_bucket(void *ctx, size_t offset, size_t count) {
    ent_optim_t *o = ctx;
    if (!o->armed || o->hook_status != ENT_OK) return;
    float *g = ent_model_arena(o->model, ENT_ARENA_GRADS) + offset;
    if (o->nreq == MAX_BUCKETS) {
        o->hook_status = ent_fail(ENT_ERR_INTERNAL, "more than %d gradient buckets", MAX_BUCKETS);
        return;
    }
    o->hook_status = ent_iallreduce(o->dp, g, g, count, ENT_F32, ENT_SUM, &o->req[o->nreq]);
    if (o->hook_status != ENT_OK) return;
    o->nreq++;
    for (int i = 0; i < o->nreq && o->hook_status == ENT_OK; i++) {
        int done;
        o->hook_status = ent_test(o->req[i], &done);
    }
}

// ---------------------------------------------------------------------------

ent_status ent_optim_new(ent_model_t *model, const ent_grid *grid, int zero, ent_optim_t **out) {
    *out = NULL;
    ent_optim_t *o = calloc(1, sizeof *o);
    if (o == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating the optimizer");
    o->model = model;
    o->grid = grid;
    if (grid != NULL) o->dp = grid->dp_dev != NULL ? grid->dp_dev : grid->dp;
    o->be = ent_model_backend(model);
    int dp = grid != NULL ? grid->dp_size : 1;
    o->zero = zero && dp > 1;
    size_t total = ent_model_arena_floats(model);
    if (o->zero) {
        if (total % (16 * (size_t)dp) != 0) {
            free(o);
            return ent_fail(ENT_ERR_INTERNAL, "ZeRO-1 needs the arena padded to a multiple of "
                            "16 x %d floats", grid->dp_size);
        }
        o->count = total / grid->dp_size;
        o->first = o->count * (size_t)grid->dp_rank;
    } else {
        o->count = total;
        o->first = 0;
    }
    ent_backend_t *be = o->be;
    o->m = be->iface->alloc(be, sizeof(float) * o->count);
    o->v = be->iface->alloc(be, sizeof(float) * o->count);
    if (o->zero) o->shard_grads = be->iface->alloc(be, sizeof(float) * o->count);
    if (o->m == NULL || o->v == NULL || (o->zero && o->shard_grads == NULL)) {
        char sz[32];
        ent_optim_free(&o);
        return ent_fail(ENT_ERR_NOMEM, "cannot allocate %s of AdamW state",
                        ent_format_bytes(8.0 * (double)total, sz, sizeof sz));
    }
    if (!o->zero && dp > 1) ent_model_set_grad_hook(model, on_bucket, o);
    *out = o;
    return ENT_OK;
}

void ent_optim_free(ent_optim_t **optim) {
    if (optim == NULL || *optim == NULL) return;
    ent_optim_t *o = *optim;
    for (int i = 0; i < o->nreq; i++) ent_wait(&o->req[i]);
    ent_model_set_grad_hook(o->model, NULL, NULL);
    if (o->m) o->be->iface->free_mem(o->be, o->m);
    if (o->v) o->be->iface->free_mem(o->be, o->v);
    if (o->shard_grads) o->be->iface->free_mem(o->be, o->shard_grads);
    free(o);
    *optim = NULL;
}

void ent_optim_begin_backward(ent_optim_t *o, int last) { o->armed = last; }

ent_status ent_optim_reduce_grads(ent_optim_t *o) {
    o->armed = 0;
    ent_status st = o->hook_status;
    for (int i = 0; i < o->nreq; i++) {
        ent_status w = ent_wait(&o->req[i]);
        if (st == ENT_OK) st = w;
    }
    o->nreq = 0;
    o->hook_status = ENT_OK;
    ENT_CHECK(st);
    if (o->zero) {
        float *g = ent_model_arena(o->model, ENT_ARENA_GRADS);
        ENT_CHECK(ent_reduce_scatter(o->dp, g, o->shard_grads, o->count, ENT_F32, ENT_SUM));
    }
    return ENT_OK;
}

// The part of row r inside this rank's range: [*lo, *hi) in arena offsets.
static int row_in_range(const ent_optim_t *o, const ent_param_row *r, size_t *lo, size_t *hi) {
    size_t a = r->offset, b = r->offset + r->numel, s0 = o->first, s1 = o->first + o->count;
    *lo = a > s0 ? a : s0;
    *hi = b < s1 ? b : s1;
    return *lo < *hi;
}

// The gradient this rank holds for arena offset `at` (the shard under ZeRO-1).
static const float *grads_at(const ent_optim_t *o, size_t at) {
    if (o->zero) return o->shard_grads + (at - o->first);
    return ent_model_arena(o->model, ENT_ARENA_GRADS) + at;
}

ent_status ent_optim_grad_norm(ent_optim_t *o, double *norm) {
    const ent_param_table *t = ent_model_table(o->model);
    int tp_rank = ent_model_tp_rank(o->model);
    double sq = 0.0;
    for (int i = 0; i < t->nrows; i++) {
        const ent_param_row *r = &t->rows[i];
        size_t lo, hi;
        if ((r->split == ENT_SPLIT_NONE && tp_rank != 0) || !row_in_range(o, r, &lo, &hi)) continue;
        double part = 0.0;
        ENT_CHECK(o->be->iface->sum_squares(o->be, grads_at(o, lo), hi - lo, &part));
        sq += part;
    }
    // ZeRO shards differ across DP ranks and TP parts across TP ranks: sum over
    // the world; plain DP replicas agree, so the TP group is enough
    if (o->grid != NULL) {
        ent_group_t *g = o->zero ? o->grid->world : o->grid->tp;
        ENT_CHECK(ent_allreduce(g, &sq, &sq, 1, ENT_F64, ENT_SUM));
    }
    *norm = sqrt(sq);
    return ENT_OK;
}

ent_status ent_optim_update(ent_optim_t *o, const ent_adamw *hp, float grad_scale) {
    int t = o->updates + 1;
    const ent_param_table *tab = ent_model_table(o->model);
    // the f32 masters and the parameters in compute (the same memory when f32)
    float *master = ent_model_arena(o->model, ENT_ARENA_PARAMS);
    char *compute = ent_model_compute_params(o->model);
    size_t psize = ent_dtype_size(o->be->param_dtype);
    int own = (void *)compute == (void *)master;
    for (int i = 0; i < tab->nrows; i++) {
        const ent_param_row *r = &tab->rows[i];
        size_t lo, hi;
        if (!row_in_range(o, r, &lo, &hi)) continue;
        size_t s = lo - o->first;
        ENT_CHECK(o->be->iface->adamw_update(o->be, compute + lo * psize, own ? NULL : master + lo,
                                             grads_at(o, lo), o->m + s, o->v + s, hi - lo, hp->lr,
                                             hp->beta1, hp->beta2, hp->eps,
                                             r->decay ? hp->weight_decay : 0.0f, grad_scale, t));
    }
    o->updates = t;
    return ENT_OK;
}

ent_status ent_optim_share_params(ent_optim_t *o) {
    if (!o->zero) return ENT_OK; // every replica updated the whole arena itself
    float *params = ent_model_arena(o->model, ENT_ARENA_PARAMS);
    ENT_CHECK(ent_allgather(o->dp, params + o->first, params, o->count, ENT_F32));
    return ent_model_params_changed(o->model); // the other shards' masters arrived
}

ent_status ent_optim_step(ent_optim_t *o, const ent_adamw *hp, float grad_scale) {
    ENT_CHECK(ent_optim_update(o, hp, grad_scale));
    return ent_optim_share_params(o);
}
