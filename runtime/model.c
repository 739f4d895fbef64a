// model.c: GPT-2 on any backend.
//
// Pre-norm transformer blocks, learned positions, input and output embedding
// tied. Parameters, gradients and the two AdamW moments each live in one arena
// laid out by the parameter table; activations live in one more arena, carved
// into views below (llm.c style). The backward pass reuses one layer's worth of
// activation-gradient buffers for every layer.
#include "runtime_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float *ln1w, *ln1b;   // (C)
    float *qkvw, *qkvb;   // (3C, C), (3C)
    float *projw, *projb; // (C, C), (C)
    float *ln2w, *ln2b;   // (C)
    float *fcw, *fcb;     // (4C, C), (4C)
    float *fcpw, *fcpb;   // (C, 4C), (C)
} layer_tensors;

typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; // (B,T,C), (B,T), (B,T)
    float *qkv;                       // (B,T,3C)
    float *atty;                      // (B,T,C)
    float *att;                       // (B,NH,T,T)
    float *res2;                      // (B,T,C)
    float *ln2, *ln2_mean, *ln2_rstd; // (B,T,C), (B,T), (B,T)
    float *fch, *fch_gelu;            // (B,T,4C)
    float *res3;                      // (B,T,C)
} layer_acts;

struct ent_model {
    ent_backend_t *be;
    ent_model_shape shape;
    ent_param_table table;
    float *arena[4];       // params, grads, m, v: table.total floats each
    float *wte, *wpe, *lnfw, *lnfb, *dwte, *dwpe, *dlnfw, *dlnfb;
    layer_tensors *p, *g;  // per layer: parameter and gradient views
    int B, T;              // capacity of the activation buffers

    float *acts;           // activation arena
    layer_acts *a;         // per layer views
    float *encoded;        // (B,T,C)
    float *proj;           // (B,T,C) scratch: attention and MLP projections
    float *lnf, *lnf_mean, *lnf_rstd;
    float *logits;         // (B,T,Vp); probabilities after a forward with targets
    float *losses;         // (B,T)
    int32_t *tokens, *targets; // (B,T) on the device

    float *grad_acts;      // arena of activation gradients (one layer's worth)
    float *dres, *dln, *datty, *dqkv, *datt, *dfch_gelu, *dfch;

    float *host_losses;    // (B,T)
    int last_b, last_t, last_has_targets;
};

// ---------------------------------------------------------------------------
// sizes

// Floats of activations, and of activation gradients, for a B x T micro-batch.
static void activation_floats(const ent_model_shape *s, int B, int T, double *acts,
                              double *grads) {
    double BT = (double)B * T, C = s->width, L = s->layers;
    double att = (double)s->heads * B * (double)T * T;
    double per_layer = 16 * BT * C + 4 * BT + att;
    *acts = L * per_layer + 3 * BT * C + 2 * BT + BT * s->padded_vocab + BT;
    *grads = 15 * BT * C + att;
}

size_t ent_model_memory_bytes(const ent_model_shape *s, int B, int T) {
    ent_param_table t;
    size_t params = 0;
    if (ent_param_table_build(s, &t) == ENT_OK) {
        params = t.total;
        ent_param_table_free(&t);
    }
    double acts, grads;
    activation_floats(s, B, T, &acts, &grads);
    double bytes = 4.0 * (4.0 * params + acts + grads) + 8.0 * B * T; // + tokens, targets
    return bytes > (double)SIZE_MAX ? SIZE_MAX : (size_t)bytes;
}

// ---------------------------------------------------------------------------
// allocation

static void point_layer_tensors(const ent_param_table *t, float *base, int layer,
                                layer_tensors *lt) {
    // rows of a layer follow each other in the table (params.c), ln_1.weight first
    char name[64];
    snprintf(name, sizeof name, "h.%d.ln_1.weight", layer);
    const ent_param_row *r = ent_param_table_find(t, name);
    ENT_ASSERT(r != NULL);
    float **views[] = {&lt->ln1w, &lt->ln1b, &lt->qkvw, &lt->qkvb, &lt->projw, &lt->projb,
                       &lt->ln2w, &lt->ln2b, &lt->fcw, &lt->fcb, &lt->fcpw, &lt->fcpb};
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) *views[i] = base + r[i].offset;
}

static float *carve(float **cursor, double n) {
    float *p = *cursor;
    *cursor += ((size_t)n + 15) / 16 * 16;
    return p;
}

ent_status ent_model_new(ent_backend_t *be, const ent_model_shape *s, int B, int T,
                         ent_model_t **out) {
    *out = NULL;
    ENT_ASSERT(B >= 1 && T >= 1 && T <= s->context);
    if ((double)B * T > 2147483647.0)
        return ent_fail(ENT_ERR_USAGE,
                        "micro-batch of %d x %d tokens is too large for this model: lower "
                        "train.micro_batch or model.context", B, T);
    size_t need = ent_model_memory_bytes(s, B, T);
    if (be->iface->available_memory != NULL) {
        size_t avail = be->iface->available_memory(be);
        if (need > avail) {
            char a[32], b[32];
            return ent_fail(ENT_ERR_NOMEM,
                            "not enough memory: the model (%d layers, width %d, context %d, "
                            "vocab %d) with micro-batches of %d x %d tokens needs %s on the %s "
                            "device, %s is available; lower model.width, model.layers, "
                            "train.micro_batch or model.context",
                            s->layers, s->width, s->context, s->vocab, B, T,
                            ent_format_bytes((double)need, a, sizeof a), be->iface->name,
                            ent_format_bytes((double)avail, b, sizeof b));
        }
    }

    ent_model_t *m = calloc(1, sizeof *m);
    if (m == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory allocating the model");
    ent_status st = ENT_OK;
    m->be = be;
    m->shape = *s;
    m->B = B;
    m->T = T;
    ENT_CHECK_GOTO(ent_param_table_build(s, &m->table), fail);
    int L = s->layers, C = s->width, NH = s->heads, Vp = s->padded_vocab;
    double BT = (double)B * T;

    char sz[32];
    for (int i = 0; i < 4; i++) {
        m->arena[i] = be->iface->alloc(be, m->table.total * sizeof(float));
        if (m->arena[i] == NULL) {
            st = ent_fail(ENT_ERR_NOMEM, "cannot allocate %s for the model's arenas",
                          ent_format_bytes(4.0 * m->table.total * sizeof(float), sz, sizeof sz));
            goto fail;
        }
    }
    const ent_param_table *t = &m->table;
    float *P = m->arena[ENT_ARENA_PARAMS], *G = m->arena[ENT_ARENA_GRADS];
    m->wte = P + ent_param_table_find(t, "wte.weight")->offset;
    m->wpe = P + ent_param_table_find(t, "wpe.weight")->offset;
    m->lnfw = P + ent_param_table_find(t, "ln_f.weight")->offset;
    m->lnfb = P + ent_param_table_find(t, "ln_f.bias")->offset;
    m->dwte = G + (m->wte - P);
    m->dwpe = G + (m->wpe - P);
    m->dlnfw = G + (m->lnfw - P);
    m->dlnfb = G + (m->lnfb - P);
    m->p = calloc((size_t)L, sizeof *m->p);
    m->g = calloc((size_t)L, sizeof *m->g);
    m->a = calloc((size_t)L, sizeof *m->a);
    m->host_losses = malloc(sizeof(float) * (size_t)BT);
    if (m->p == NULL || m->g == NULL || m->a == NULL || m->host_losses == NULL) {
        st = ent_fail(ENT_ERR_NOMEM, "out of memory allocating the model");
        goto fail;
    }
    for (int l = 0; l < L; l++) {
        point_layer_tensors(t, P, l, &m->p[l]);
        point_layer_tensors(t, G, l, &m->g[l]);
    }

    // activations: sizes in floats, each view rounded up to 16 floats
    double acts, grads;
    activation_floats(s, B, T, &acts, &grads);
    size_t nacts = (size_t)acts + (size_t)(L * 11 + 16) * 16;
    size_t ngrads = (size_t)grads + 8 * 16;
    m->acts = be->iface->alloc(be, nacts * sizeof(float));
    m->grad_acts = be->iface->alloc(be, ngrads * sizeof(float));
    m->tokens = be->iface->alloc(be, 2 * (size_t)BT * sizeof(int32_t));
    if (m->acts == NULL || m->grad_acts == NULL || m->tokens == NULL) {
        st = ent_fail(ENT_ERR_NOMEM, "cannot allocate %s of activations",
                      ent_format_bytes(4.0 * (double)(nacts + ngrads), sz, sizeof sz));
        goto fail;
    }
    m->targets = m->tokens + (size_t)BT;
    float *cur = m->acts;
    double att = (double)NH * B * (double)T * T;
    m->encoded = carve(&cur, BT * C);
    m->proj = carve(&cur, BT * C);
    for (int l = 0; l < L; l++) {
        layer_acts *a = &m->a[l];
        a->ln1 = carve(&cur, BT * C);
        a->ln1_mean = carve(&cur, BT);
        a->ln1_rstd = carve(&cur, BT);
        a->qkv = carve(&cur, 3 * BT * C);
        a->atty = carve(&cur, BT * C);
        a->att = carve(&cur, att);
        a->res2 = carve(&cur, BT * C);
        a->ln2 = carve(&cur, BT * C);
        a->ln2_mean = carve(&cur, BT);
        a->ln2_rstd = carve(&cur, BT);
        a->fch = carve(&cur, 4 * BT * C);
        a->fch_gelu = carve(&cur, 4 * BT * C);
        a->res3 = carve(&cur, BT * C);
    }
    m->lnf = carve(&cur, BT * C);
    m->lnf_mean = carve(&cur, BT);
    m->lnf_rstd = carve(&cur, BT);
    m->logits = carve(&cur, BT * Vp);
    m->losses = carve(&cur, BT);
    ENT_ASSERT((size_t)(cur - m->acts) <= nacts);

    cur = m->grad_acts;
    m->dres = carve(&cur, BT * C);
    m->dln = carve(&cur, BT * C);
    m->datty = carve(&cur, BT * C);
    m->dqkv = carve(&cur, 3 * BT * C);
    m->datt = carve(&cur, att);
    m->dfch_gelu = carve(&cur, 4 * BT * C);
    m->dfch = carve(&cur, 4 * BT * C);
    ENT_ASSERT((size_t)(cur - m->grad_acts) <= ngrads);
    *out = m;
    return ENT_OK;
fail:
    ent_model_free(&m);
    return st;
}

void ent_model_free(ent_model_t **model) {
    if (model == NULL || *model == NULL) return;
    ent_model_t *m = *model;
    ent_backend_t *be = m->be;
    for (int i = 0; i < 4; i++)
        if (m->arena[i]) be->iface->free_mem(be, m->arena[i]);
    if (m->acts) be->iface->free_mem(be, m->acts);
    if (m->grad_acts) be->iface->free_mem(be, m->grad_acts);
    if (m->tokens) be->iface->free_mem(be, m->tokens);
    free(m->p);
    free(m->g);
    free(m->a);
    free(m->host_losses);
    ent_param_table_free(&m->table);
    free(m);
    *model = NULL;
}

// ---------------------------------------------------------------------------
// initialisation

void ent_model_init(ent_model_t *m, uint64_t seed) {
    const ent_param_table *t = &m->table;
    double residual_std = 0.02 / sqrt(2.0 * m->shape.layers);
    size_t max_numel = 0;
    for (int i = 0; i < t->nrows; i++)
        if (t->rows[i].numel > max_numel) max_numel = t->rows[i].numel;
    float *host = malloc(sizeof(float) * max_numel);
    ENT_ASSERT(host != NULL);
    for (int i = 0; i < t->nrows; i++) {
        const ent_param_row *r = &t->rows[i];
        const char *suffix = strrchr(r->name, '.');
        size_t n = r->numel;
        if (strcmp(suffix, ".bias") == 0) {
            memset(host, 0, sizeof(float) * n);
        } else if (r->ndim == 1) { // layernorm gain
            for (size_t k = 0; k < n; k++) host[k] = 1.0f;
        } else {
            int residual = strstr(r->name, "c_proj.weight") != NULL;
            double std = residual ? residual_std : 0.02;
            // wte's padding rows are never read as inputs nor trained as outputs: keep them 0
            size_t live = strcmp(r->name, "wte.weight") == 0
                              ? (size_t)m->shape.vocab * (size_t)r->shape[1] : n;
            ent_rng rng;
            ent_rng_seed(&rng, ent_hash_string(r->name, seed));
            for (size_t k = 0; k < live; k++) host[k] = (float)(std * ent_rng_normal(&rng));
            for (size_t k = live; k < n; k++) host[k] = 0.0f;
        }
        m->be->iface->to_device(m->be, m->arena[ENT_ARENA_PARAMS] + r->offset, host,
                                sizeof(float) * n);
    }
    free(host);
    for (int i = 1; i < 4; i++)
        m->be->iface->zero(m->be, m->arena[i], sizeof(float) * t->total);
}

// ---------------------------------------------------------------------------
// forward and backward

void ent_model_forward(ent_model_t *m, const int32_t *tokens, const int32_t *targets, int b,
                       int t, float *loss) {
    ENT_ASSERT(b >= 1 && b <= m->B && t >= 1 && t <= m->T);
    const struct ent_backend_i *k = m->be->iface;
    ent_backend_t *be = m->be;
    int L = m->shape.layers, C = m->shape.width, NH = m->shape.heads;
    int V = m->shape.vocab, Vp = m->shape.padded_vocab, N = b * t;
    k->to_device(be, m->tokens, tokens, sizeof(int32_t) * (size_t)N);
    if (targets != NULL) k->to_device(be, m->targets, targets, sizeof(int32_t) * (size_t)N);

    k->encoder_forward(be, m->encoded, m->tokens, m->wte, m->wpe, b, t, C);
    for (int l = 0; l < L; l++) {
        const layer_tensors *p = &m->p[l];
        layer_acts *a = &m->a[l];
        const float *residual = l == 0 ? m->encoded : m->a[l - 1].res3;
        k->layernorm_forward(be, a->ln1, a->ln1_mean, a->ln1_rstd, residual, p->ln1w, p->ln1b, N, C);
        k->matmul_forward(be, a->qkv, a->ln1, p->qkvw, p->qkvb, N, C, 3 * C);
        k->attention_forward(be, a->atty, a->att, a->qkv, b, t, C, NH);
        k->matmul_forward(be, m->proj, a->atty, p->projw, p->projb, N, C, C);
        k->residual_forward(be, a->res2, residual, m->proj, (size_t)N * C);
        k->layernorm_forward(be, a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, p->ln2w, p->ln2b, N, C);
        k->matmul_forward(be, a->fch, a->ln2, p->fcw, p->fcb, N, C, 4 * C);
        k->gelu_forward(be, a->fch_gelu, a->fch, (size_t)N * 4 * C);
        k->matmul_forward(be, m->proj, a->fch_gelu, p->fcpw, p->fcpb, N, 4 * C, C);
        k->residual_forward(be, a->res3, a->res2, m->proj, (size_t)N * C);
    }
    k->layernorm_forward(be, m->lnf, m->lnf_mean, m->lnf_rstd, m->a[L - 1].res3, m->lnfw, m->lnfb,
                         N, C);
    k->matmul_forward(be, m->logits, m->lnf, m->wte, NULL, N, C, Vp);
    m->last_b = b;
    m->last_t = t;
    m->last_has_targets = targets != NULL;
    if (targets == NULL) return;
    k->softmax_xent_forward(be, m->losses, m->logits, m->logits, m->targets, N, V, Vp);
    k->to_host(be, m->host_losses, m->losses, sizeof(float) * (size_t)N);
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += m->host_losses[i];
    if (loss != NULL) *loss = (float)(sum / N);
}

void ent_model_zero_grad(ent_model_t *m) {
    m->be->iface->zero(m->be, m->arena[ENT_ARENA_GRADS], sizeof(float) * m->table.total);
}

void ent_model_backward(ent_model_t *m, float dloss) {
    ENT_ASSERT(m->last_has_targets); // backward needs a forward with targets
    const struct ent_backend_i *k = m->be->iface;
    ent_backend_t *be = m->be;
    int b = m->last_b, t = m->last_t, N = b * t;
    int L = m->shape.layers, C = m->shape.width, NH = m->shape.heads;
    int V = m->shape.vocab, Vp = m->shape.padded_vocab;
    size_t NC = (size_t)N * C;

    // logits hold probabilities; turn them into dlogits in place
    k->softmax_xent_backward(be, m->logits, m->logits, m->targets, dloss, N, V, Vp);
    k->zero(be, m->dln, sizeof(float) * NC);
    k->matmul_backward(be, m->dln, m->dwte, NULL, m->logits, m->lnf, m->wte, N, C, Vp);
    k->zero(be, m->dres, sizeof(float) * NC);
    k->layernorm_backward(be, m->dres, m->dlnfw, m->dlnfb, m->dln, m->a[L - 1].res3, m->lnfw,
                          m->lnf_mean, m->lnf_rstd, N, C);
    // dres is the gradient of the residual stream; every block adds to it in place
    for (int l = L - 1; l >= 0; l--) {
        const layer_tensors *p = &m->p[l];
        const layer_tensors *g = &m->g[l];
        const layer_acts *a = &m->a[l];
        const float *residual = l == 0 ? m->encoded : m->a[l - 1].res3;
        // MLP: res3 = res2 + fcproj(gelu(fc(ln2(res2))))
        k->zero(be, m->dfch_gelu, sizeof(float) * NC * 4);
        k->matmul_backward(be, m->dfch_gelu, g->fcpw, g->fcpb, m->dres, a->fch_gelu, p->fcpw, N,
                           4 * C, C);
        k->zero(be, m->dfch, sizeof(float) * NC * 4);
        k->gelu_backward(be, m->dfch, a->fch, m->dfch_gelu, NC * 4);
        k->zero(be, m->dln, sizeof(float) * NC);
        k->matmul_backward(be, m->dln, g->fcw, g->fcb, m->dfch, a->ln2, p->fcw, N, C, 4 * C);
        k->layernorm_backward(be, m->dres, g->ln2w, g->ln2b, m->dln, a->res2, p->ln2w,
                              a->ln2_mean, a->ln2_rstd, N, C);
        // attention: res2 = residual + proj(attn(qkv(ln1(residual))))
        k->zero(be, m->datty, sizeof(float) * NC);
        k->matmul_backward(be, m->datty, g->projw, g->projb, m->dres, a->atty, p->projw, N, C, C);
        k->zero(be, m->dqkv, sizeof(float) * NC * 3);
        k->attention_backward(be, m->dqkv, m->datt, m->datty, a->qkv, a->att, b, t, C, NH);
        k->zero(be, m->dln, sizeof(float) * NC);
        k->matmul_backward(be, m->dln, g->qkvw, g->qkvb, m->dqkv, a->ln1, p->qkvw, N, C, 3 * C);
        k->layernorm_backward(be, m->dres, g->ln1w, g->ln1b, m->dln, residual, p->ln1w,
                              a->ln1_mean, a->ln1_rstd, N, C);
    }
    k->encoder_backward(be, m->dwte, m->dwpe, m->dres, m->tokens, b, t, C);
    // the probabilities were consumed: a second backward needs a new forward
    m->last_has_targets = 0;
}

double ent_model_grad_norm(ent_model_t *m) {
    return sqrt(m->be->iface->sum_squares(m->be, m->arena[ENT_ARENA_GRADS], m->table.total));
}

void ent_model_adamw(ent_model_t *m, float lr, float beta1, float beta2, float eps,
                     float weight_decay, float grad_scale, int step) {
    const ent_param_table *t = &m->table;
    for (int i = 0; i < t->nrows; i++) {
        const ent_param_row *r = &t->rows[i];
        size_t o = r->offset;
        m->be->iface->adamw_update(m->be, m->arena[ENT_ARENA_PARAMS] + o,
                                   m->arena[ENT_ARENA_GRADS] + o, m->arena[ENT_ARENA_ADAM_M] + o,
                                   m->arena[ENT_ARENA_ADAM_V] + o, r->numel, lr, beta1, beta2,
                                   eps, r->decay ? weight_decay : 0.0f, grad_scale, step);
    }
}

void ent_model_logits_at(ent_model_t *m, int b, int t, float *host_out) {
    ENT_ASSERT(!m->last_has_targets && b < m->last_b && t < m->last_t);
    int Vp = m->shape.padded_vocab;
    m->be->iface->to_host(m->be, host_out, m->logits + ((size_t)b * m->last_t + t) * Vp,
                          sizeof(float) * Vp);
}

float *ent_model_arena(ent_model_t *m, ent_arena which) { return m->arena[which]; }
const ent_param_table *ent_model_table(const ent_model_t *m) { return &m->table; }
const ent_model_shape *ent_model_get_shape(const ent_model_t *m) { return &m->shape; }
