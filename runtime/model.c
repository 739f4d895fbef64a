// model.c: GPT-2 and the Llama family on any backend, with optional tensor
// parallelism.
//
// GPT-2: pre-norm transformer blocks, learned positions, input and output
// embedding tied. Llama (model.arch = llama): RMSNorm, rotary positions on Q
// and K, grouped-query attention, a SwiGLU MLP, no biases, an lm_head of its
// own unless tied. Both run the same skeleton of arenas, tables and buckets;
// each has its own forward and backward below. Parameters and gradients each live in one arena laid out by the
// parameter table; activations live in two more (the activations; one
// layer's worth of their gradients, which the backward pass reuses for every
// layer), carved into views (llm.c style) by the activation table below,
// whose rows describe each buffer as the parameter table's describe a
// tensor: name, dtype, element count, offset.
//
// Element types (the backend's precision, system.precision): parameters in
// compute are in be->param_dtype, activations and their gradients in
// be->act_dtype, both f32 on the CPU and bf16 or f32 on a GPU; so their
// views are void *, and sizes and offsets of them count elements of that
// type (act_at). Everything else is f32 on every backend: the parameters'
// masters (the arena everything outside the model reads and writes:
// checkpoints, data parallelism, the coalition, import), their gradients,
// the norms' statistics, the losses and the rotation tables. Where the
// compute type is f32 the parameters are their own masters and nothing is
// copied; else ent_model_params_changed casts the masters into the compute
// copy after they were written from outside.
//
// Tensor parallelism (Megatron style) over the TP group: each rank holds
// NH/tp heads of the QKV projection (column-parallel) and the matching
// columns of the attention output projection (row-parallel), and 4C/tp of
// the MLP's hidden units (MLP-up column-parallel, MLP-down row-parallel).
// One all-reduce joins the partial outputs of each attention and each MLP in
// the forward pass, one joins the partial input gradients of each in the
// backward pass. Embeddings, layernorms, the output bias of both row-parallel
// projections and the tied output layer are replicated: every TP rank
// computes them identically, so their gradients agree without communication.
// A llama splits Q, gate and up by output features and O and down by input
// features the same way; K and V are split by KV heads when TP divides them.
// Otherwise every rank computes all of K and V (their weights replicated),
// attends with the KV heads of its own query heads, and the ranks sum their
// gradients of K and V before the projections' backward, so that the
// replicated weights' gradients agree; TP rank 0 alone adds their input
// gradient.
#include "runtime_impl.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

// A block's tensors. A llama uses ln1w (input_layernorm), qw, kw, vw,
// projw (o_proj), ln2w (post_attention_layernorm), gatew, upw and fcpw
// (down_proj); its biases stay NULL.
// The same struct holds a block's parameters in compute (param_dtype) and
// its gradients (f32).
typedef struct {
    void *ln1w, *ln1b;   // (C)
    void *qw, *kw, *vw;  // llama: (Ca, C), (KVw, C), (KVw, C)   KVw = KV heads here x hd
    void *gatew, *upw;   // llama: (Cf, C)
    void *qkvw, *qkvb;   // (3Ca, C), (3Ca)       Ca = C / tp
    void *projw, *projb; // (C, Ca), (C)
    void *ln2w, *ln2b;   // (C)
    void *fcw, *fcb;     // (Cf, C), (Cf)          Cf = 4C / tp
    void *fcpw, *fcpb;   // (C, Cf), (C)
} layer_tensors;

// Activations (act_dtype) are void *; the statistics f32.
typedef struct {
    void *ln1;                        // (B,T,C)
    float *ln1_mean, *ln1_rstd;       // (B,T), (B,T)
    void *qkv;                        // (B,T,3Ca)
    void *atty;                       // (B,T,Ca)
    float *att;                       // attention_state_bytes(B,T,NH/tp): (B,NH/tp,T,T) on the CPU
    void *res2;                       // (B,T,C)
    void *ln2;                        // (B,T,C)
    float *ln2_mean, *ln2_rstd;       // (B,T), (B,T)
    void *fch, *fch_gelu;             // (B,T,Cf)
    void *res3;                       // (B,T,C)
    // llama: ln1, ln1_rstd, atty, att, res2, ln2, ln2_rstd and res3 as
    // above; fch is the gate, fch_gelu SwiGLU's output
    void *q, *k, *v;                  // (B,T,Ca), (B,T,KVw), (B,T,KVw), after RoPE
    void *up;                         // (B,T,Cf)
} layer_acts;

struct ent_model {
    ent_backend_t *be;
    ent_model_shape shape;
    ent_param_table table;
    ent_group_t *tp;       // NULL without tensor parallelism
    int tp_rank, tp_size;
    int Ca, Cf, NHl;       // this rank's attention channels, MLP units, heads
    // llama: KV heads in this rank's K and V (all of them when replicated),
    // the first one its query heads use, and the heads' grouping
    int KVl, kv0, hd, kv_replicated;
    ent_gqa_shape gqa;     // (B and T set per call)
    void *lm_head;         // llama: lm_head.weight (or embed_tokens when tied)
    float *dlm_head;
    float *rope_cos, *rope_sin; // (T, hd/2) each
    float *arena[2];       // params' f32 masters, grads: arena_floats each
    size_t arena_floats;
    void *params;          // the parameters in compute: arena[PARAMS] when f32
    size_t psize, asize;   // bytes of one parameter in compute, of one activation
    void *wte, *wpe, *lnfw, *lnfb;
    float *dwte, *dwpe, *dlnfw, *dlnfb;
    layer_tensors *p, *g;  // per layer: parameter and gradient views
    int B, T;              // capacity of the activation buffers

    ent_act_table acts;    // the activations' rows
    void *act_arena[2];    // activations, activation gradients (ent_act_arena)
    layer_acts *a;         // per layer views
    void *encoded;         // (B,T,C)
    void *proj;            // (B,T,C) scratch: attention and MLP projections
    void *lnf;
    float *lnf_mean, *lnf_rstd;
    void *logits;          // (B,T,Vp); probabilities after a forward with targets
    float *losses;         // (B,T)
    int32_t *tokens, *targets; // (B,T) token ids

    // activation gradients, one layer's worth
    void *dres, *dln, *datty, *dqkv, *dfch_gelu, *dfch;
    float *datt;
    void *dq, *dk, *dv, *dup; // llama
    void *host_logits;     // one row of logits in act_dtype (ent_model_logits_at)

    ent_grad_hook hook;    // told when a bucket's gradients are complete
    void *hook_ctx;
    float *host_losses;    // (B,T)
    int last_b, last_t, last_has_targets;
};

// ---------------------------------------------------------------------------
// the activation table

// What sizes an activation, per micro-batch of BT = B x T tokens.
typedef enum {
    ACT_TOKENS,     // (B,T)
    ACT_C,          // (B,T,C)
    ACT_3CA,        // (B,T,3Ca)
    ACT_CA,         // (B,T,Ca)
    ACT_CF,         // (B,T,Cf)
    ACT_VP,         // (B,T,Vp)
    ACT_TOKEN_IDS,  // (B,T) i32
    ACT_ATTENTION,  // attention_state_bytes(B,T,NH/tp) bytes, laid out by the backend
    ACT_KV,         // (B,T,KVw): a llama's K or V
    ACT_ROPE,       // (T, hd/2): a rotation table (constant, written once)
} act_kind;

// One activation: its name (after "h.{l}." in a block), what sizes it, and
// where its view lives (offsetof in struct ent_model, or in layer_acts).
typedef struct {
    const char *name;
    act_kind kind;
    size_t view;
} act_spec;

#define MODEL_VIEW(f) offsetof(struct ent_model, f)
#define LAYER_VIEW(f) offsetof(layer_acts, f)

static const act_spec acts_before_blocks[] = {
    {"encoded", ACT_C, MODEL_VIEW(encoded)},
    {"proj", ACT_C, MODEL_VIEW(proj)},
};
static const act_spec acts_of_block[] = {
    {"ln_1", ACT_C, LAYER_VIEW(ln1)},
    {"ln_1.mean", ACT_TOKENS, LAYER_VIEW(ln1_mean)},
    {"ln_1.rstd", ACT_TOKENS, LAYER_VIEW(ln1_rstd)},
    {"attn.qkv", ACT_3CA, LAYER_VIEW(qkv)},
    {"attn.y", ACT_CA, LAYER_VIEW(atty)},
    {"attn.state", ACT_ATTENTION, LAYER_VIEW(att)},
    {"res_2", ACT_C, LAYER_VIEW(res2)},
    {"ln_2", ACT_C, LAYER_VIEW(ln2)},
    {"ln_2.mean", ACT_TOKENS, LAYER_VIEW(ln2_mean)},
    {"ln_2.rstd", ACT_TOKENS, LAYER_VIEW(ln2_rstd)},
    {"mlp.fc", ACT_CF, LAYER_VIEW(fch)},
    {"mlp.gelu", ACT_CF, LAYER_VIEW(fch_gelu)},
    {"res_3", ACT_C, LAYER_VIEW(res3)},
};
static const act_spec acts_after_blocks[] = {
    {"ln_f", ACT_C, MODEL_VIEW(lnf)},
    {"ln_f.mean", ACT_TOKENS, MODEL_VIEW(lnf_mean)},
    {"ln_f.rstd", ACT_TOKENS, MODEL_VIEW(lnf_rstd)},
    {"logits", ACT_VP, MODEL_VIEW(logits)},
    {"losses", ACT_TOKENS, MODEL_VIEW(losses)},
    {"tokens", ACT_TOKEN_IDS, MODEL_VIEW(tokens)},
    {"targets", ACT_TOKEN_IDS, MODEL_VIEW(targets)},
};
static const act_spec act_grads[] = {
    {"grad.res", ACT_C, MODEL_VIEW(dres)},
    {"grad.ln", ACT_C, MODEL_VIEW(dln)},
    {"grad.attn.y", ACT_CA, MODEL_VIEW(datty)},
    {"grad.attn.qkv", ACT_3CA, MODEL_VIEW(dqkv)},
    {"grad.attn.state", ACT_ATTENTION, MODEL_VIEW(datt)},
    {"grad.mlp.gelu", ACT_CF, MODEL_VIEW(dfch_gelu)},
    {"grad.mlp.fc", ACT_CF, MODEL_VIEW(dfch)},
};

static const act_spec llama_before_blocks[] = {
    {"encoded", ACT_C, MODEL_VIEW(encoded)},
    {"proj", ACT_C, MODEL_VIEW(proj)},
    {"rope.cos", ACT_ROPE, MODEL_VIEW(rope_cos)},
    {"rope.sin", ACT_ROPE, MODEL_VIEW(rope_sin)},
};
static const act_spec llama_of_block[] = {
    {"input_norm", ACT_C, LAYER_VIEW(ln1)},
    {"input_norm.rstd", ACT_TOKENS, LAYER_VIEW(ln1_rstd)},
    {"attn.q", ACT_CA, LAYER_VIEW(q)},
    {"attn.k", ACT_KV, LAYER_VIEW(k)},
    {"attn.v", ACT_KV, LAYER_VIEW(v)},
    {"attn.y", ACT_CA, LAYER_VIEW(atty)},
    {"attn.state", ACT_ATTENTION, LAYER_VIEW(att)},
    {"res_2", ACT_C, LAYER_VIEW(res2)},
    {"post_norm", ACT_C, LAYER_VIEW(ln2)},
    {"post_norm.rstd", ACT_TOKENS, LAYER_VIEW(ln2_rstd)},
    {"mlp.gate", ACT_CF, LAYER_VIEW(fch)},
    {"mlp.up", ACT_CF, LAYER_VIEW(up)},
    {"mlp.swiglu", ACT_CF, LAYER_VIEW(fch_gelu)},
    {"res_3", ACT_C, LAYER_VIEW(res3)},
};
static const act_spec llama_after_blocks[] = {
    {"norm", ACT_C, MODEL_VIEW(lnf)},
    {"norm.rstd", ACT_TOKENS, MODEL_VIEW(lnf_rstd)},
    {"logits", ACT_VP, MODEL_VIEW(logits)},
    {"losses", ACT_TOKENS, MODEL_VIEW(losses)},
    {"tokens", ACT_TOKEN_IDS, MODEL_VIEW(tokens)},
    {"targets", ACT_TOKEN_IDS, MODEL_VIEW(targets)},
};
static const act_spec llama_grads[] = {
    {"grad.res", ACT_C, MODEL_VIEW(dres)},
    {"grad.ln", ACT_C, MODEL_VIEW(dln)},
    {"grad.attn.y", ACT_CA, MODEL_VIEW(datty)},
    {"grad.attn.q", ACT_CA, MODEL_VIEW(dq)},
    {"grad.attn.k", ACT_KV, MODEL_VIEW(dk)},
    {"grad.attn.v", ACT_KV, MODEL_VIEW(dv)},
    {"grad.attn.state", ACT_ATTENTION, MODEL_VIEW(datt)},
    {"grad.mlp.swiglu", ACT_CF, MODEL_VIEW(dfch_gelu)},
    {"grad.mlp.gate", ACT_CF, MODEL_VIEW(dfch)},
    {"grad.mlp.up", ACT_CF, MODEL_VIEW(dup)},
};
#define COUNT_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

// An architecture's activations: before, in each block (named
// PREFIX.{l}.NAME), after the blocks, and the gradients.
typedef struct {
    const char *block_prefix;
    const act_spec *part[4];
    int count[4];
} act_specs;

static const act_specs gpt2_acts = {
    "h",
    {acts_before_blocks, acts_of_block, acts_after_blocks, act_grads},
    {COUNT_OF(acts_before_blocks), COUNT_OF(acts_of_block), COUNT_OF(acts_after_blocks),
     COUNT_OF(act_grads)},
};
static const act_specs llama_acts = {
    "layers",
    {llama_before_blocks, llama_of_block, llama_after_blocks, llama_grads},
    {COUNT_OF(llama_before_blocks), COUNT_OF(llama_of_block), COUNT_OF(llama_after_blocks),
     COUNT_OF(llama_grads)},
};

static const act_specs *specs_of(ent_arch arch) {
    return arch == ENT_ARCH_LLAMA ? &llama_acts : &gpt2_acts;
}

// Calls visit for every activation in arena order (the table's row order);
// layer is the block, -1 outside the blocks.
typedef void (*act_visitor)(void *ctx, const act_spec *spec, int layer, ent_act_arena arena);

static void walk_activations(const act_specs *a, int layers, act_visitor visit, void *ctx) {
    for (int i = 0; i < a->count[0]; i++) visit(ctx, &a->part[0][i], -1, ENT_ACTS);
    for (int l = 0; l < layers; l++)
        for (int i = 0; i < a->count[1]; i++) visit(ctx, &a->part[1][i], l, ENT_ACTS);
    for (int i = 0; i < a->count[2]; i++) visit(ctx, &a->part[2][i], -1, ENT_ACTS);
    for (int i = 0; i < a->count[3]; i++) visit(ctx, &a->part[3][i], -1, ENT_ACT_GRADS);
}

typedef struct {
    ent_act_table *t;
    ent_dtype dtype;          // of the float activations
    size_t bt, C, Ca, Cf, Vp; // tokens per micro-batch; widths
    size_t KVw, rope;         // llama: K and V widths; one rotation table (T x hd/2)
    size_t attention_bytes;
    const char *prefix;       // of the blocks' rows
} act_builder;

static void add_activation(void *ctx, const act_spec *spec, int layer, ent_act_arena arena) {
    act_builder *tb = ctx;
    ent_act_table *t = tb->t;
    ent_act_row *r = &t->rows[t->nrows++];
    if (layer >= 0)
        snprintf(r->name, sizeof r->name, "%s.%d.%s", tb->prefix, layer, spec->name);
    else
        snprintf(r->name, sizeof r->name, "%s", spec->name);
    r->arena = arena;
    r->dtype = tb->dtype;
    switch (spec->kind) {
    case ACT_TOKENS: // statistics and losses: f32 on every backend
        r->dtype = ENT_F32;
        r->numel = tb->bt;
        break;
    case ACT_C: r->numel = tb->bt * tb->C; break;
    case ACT_3CA: r->numel = 3 * tb->bt * tb->Ca; break;
    case ACT_CA: r->numel = tb->bt * tb->Ca; break;
    case ACT_CF: r->numel = tb->bt * tb->Cf; break;
    case ACT_VP: r->numel = tb->bt * tb->Vp; break;
    case ACT_TOKEN_IDS:
        r->dtype = ENT_I32;
        r->numel = tb->bt;
        break;
    case ACT_ATTENTION:
        r->dtype = ENT_U8;
        r->numel = tb->attention_bytes;
        break;
    case ACT_KV: r->numel = tb->bt * tb->KVw; break;
    case ACT_ROPE:
        r->dtype = ENT_F32;
        r->numel = tb->rope;
        break;
    }
    r->offset = t->bytes[arena];
    t->bytes[arena] += ent_arena_bytes(r->dtype, r->numel);
}

ent_status ent_act_table_build(ent_backend_t *be, const ent_model_shape *s, int tp, int B, int T,
                               ent_dtype dtype, ent_act_table *t) {
    memset(t, 0, sizeof *t);
    if (!ent_dtype_is_float(dtype))
        return ent_fail(ENT_ERR_USAGE, "activations in %s: activations need a floating type",
                        ent_dtype_name(dtype));
    const act_specs *specs = specs_of(s->arch);
    int rows = specs->count[0] + s->layers * specs->count[1] + specs->count[2] + specs->count[3];
    t->rows = calloc((size_t)rows, sizeof *t->rows);
    if (t->rows == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory building the activation table");
    act_builder tb = {
        .t = t,
        .dtype = dtype,
        .bt = (size_t)B * (size_t)T,
        .C = (size_t)s->width,
        .Ca = (size_t)(s->width / tp),
        .Cf = (size_t)(4 * s->width / tp),
        .Vp = (size_t)s->padded_vocab,
        .attention_bytes = be->iface->attention_state_bytes(be, B, T, s->heads / tp),
        .prefix = specs->block_prefix,
    };
    if (s->arch == ENT_ARCH_LLAMA) {
        size_t hd = (size_t)(s->width / s->heads);
        int kv_split = s->kv_heads % tp == 0;
        tb.Cf = (size_t)(s->ffn_hidden / tp);
        tb.KVw = (size_t)(kv_split ? s->kv_heads / tp : s->kv_heads) * hd;
        tb.rope = (size_t)T * (hd / 2);
    }
    walk_activations(specs, s->layers, add_activation, &tb);
    ENT_ASSERT(t->nrows == rows);
    return ENT_OK;
}

void ent_act_table_free(ent_act_table *t) {
    free(t->rows);
    memset(t, 0, sizeof *t);
}

// The parameter table's rows describe the parameters in compute.
static void set_compute_dtype(ent_param_table *t, ent_dtype dtype) {
    for (int i = 0; i < t->nrows; i++) t->rows[i].dtype = dtype;
}

size_t ent_model_memory_bytes_of(const ent_param_table *params, const ent_act_table *acts) {
    // masters, gradients, AdamW m and v: f32 arenas laid out by the table;
    // and the parameters in compute, when their type is not f32
    double bytes = 4.0 * (double)params->total * sizeof(float);
    ent_dtype compute = params->nrows > 0 ? params->rows[0].dtype : ENT_F32;
    if (compute != ENT_F32) bytes += (double)params->total * ent_dtype_size(compute);
    bytes += (double)acts->bytes[ENT_ACTS] + (double)acts->bytes[ENT_ACT_GRADS];
    return bytes > (double)SIZE_MAX ? SIZE_MAX : (size_t)bytes;
}

size_t ent_model_memory_bytes(ent_backend_t *be, const ent_model_shape *s, int tp, int B,
                              int T) {
    ent_param_table params;
    ent_act_table acts;
    if (ent_param_table_build(s, tp, &params) != ENT_OK) return 0; // ent_model_new says why
    set_compute_dtype(&params, be->param_dtype);
    size_t bytes = 0;
    if (ent_act_table_build(be, s, tp, B, T, be->act_dtype, &acts) == ENT_OK) {
        bytes = ent_model_memory_bytes_of(&params, &acts);
        ent_act_table_free(&acts);
    }
    ent_param_table_free(&params);
    return bytes;
}

// Points the views of the model (and its blocks) at the rows of its table.
typedef struct {
    ent_model_t *m;
    int row;
} view_cursor;

static void point_activation(void *ctx, const act_spec *spec, int layer, ent_act_arena arena) {
    view_cursor *c = ctx;
    ent_model_t *m = c->m;
    const ent_act_row *r = &m->acts.rows[c->row++];
    ENT_ASSERT(r->arena == arena);
    char *at = (char *)m->act_arena[arena] + r->offset;
    char *holder = layer >= 0 ? (char *)&m->a[layer] : (char *)m;
    // the views are typed pointers: copy one of the view's own type
    if (spec->kind == ACT_TOKEN_IDS) {
        ENT_ASSERT(r->dtype == ENT_I32);
        int32_t *view = (int32_t *)(void *)at;
        memcpy(holder + spec->view, &view, sizeof view);
    } else if (spec->kind == ACT_TOKENS || spec->kind == ACT_ROPE ||
               spec->kind == ACT_ATTENTION) {
        // f32 (statistics, losses, rotation tables) or the backend's opaque
        // attention state, handed to the kernels as float *
        ENT_ASSERT(r->dtype == ENT_F32 || spec->kind == ACT_ATTENTION);
        float *view = (float *)(void *)at;
        memcpy(holder + spec->view, &view, sizeof view);
    } else {
        ENT_ASSERT(r->dtype == m->be->act_dtype);
        void *view = at;
        memcpy(holder + spec->view, &view, sizeof view);
    }
}

// ---------------------------------------------------------------------------
// allocation

// The rotation table of positions 0..T-1, computed on the host once.
static ent_status upload_rope_table(ent_model_t *m) {
    size_t n = (size_t)m->T * (size_t)(m->hd / 2);
    float *host = malloc(sizeof(float) * 2 * (n ? n : 1));
    if (host == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for the rotation table");
    ent_rope_table(&m->shape.rope, m->hd, m->T, host, host + n);
    ent_status st = m->be->iface->to_device(m->be, m->rope_cos, host, sizeof(float) * n);
    if (st == ENT_OK) st = m->be->iface->to_device(m->be, m->rope_sin, host + n, sizeof(float) * n);
    free(host);
    return st;
}

// Points lt at block `layer`'s rows in an arena of elements of `size` bytes.
static void point_layer_tensors(const ent_param_table *t, ent_arch arch, void *arena, size_t size,
                                int layer, layer_tensors *lt) {
    char *base = arena;
    // rows of a layer follow each other in the table (params.c), its norm first
    char name[64];
    if (arch == ENT_ARCH_LLAMA) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", layer);
        const ent_param_row *r = ent_param_table_find(t, name);
        ENT_ASSERT(r != NULL);
        void **views[] = {&lt->ln1w, &lt->qw, &lt->kw, &lt->vw, &lt->projw,
                          &lt->ln2w, &lt->gatew, &lt->upw, &lt->fcpw};
        for (size_t i = 0; i < sizeof views / sizeof views[0]; i++)
            *views[i] = base + r[i].offset * size;
        return;
    }
    snprintf(name, sizeof name, "h.%d.ln_1.weight", layer);
    const ent_param_row *r = ent_param_table_find(t, name);
    ENT_ASSERT(r != NULL);
    void **views[] = {&lt->ln1w, &lt->ln1b, &lt->qkvw, &lt->qkvb, &lt->projw, &lt->projb,
                      &lt->ln2w, &lt->ln2b, &lt->fcw, &lt->fcb, &lt->fcpw, &lt->fcpb};
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++)
        *views[i] = base + r[i].offset * size;
}

ent_status ent_model_new(ent_backend_t *be, const ent_model_shape *s, const ent_model_opts *opts,
                         int B, int T, ent_model_t **out) {
    *out = NULL;
    ENT_ASSERT(B >= 1 && T >= 1 && T <= s->context);
    ent_group_t *tpg = opts != NULL ? opts->tp : NULL;
    int tp = tpg != NULL ? ent_group_size(tpg) : 1;
    if ((double)B * T > 2147483647.0)
        return ent_fail(ENT_ERR_USAGE,
                        "micro-batch of %d x %d tokens is too large for this model: lower "
                        "train.micro_batch or model.context", B, T);

    ent_model_t *m = calloc(1, sizeof *m);
    if (m == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory allocating the model");
    ent_status st = ENT_OK;
    m->be = be;
    m->shape = *s;
    m->B = B;
    m->T = T;
    m->tp = tp > 1 ? tpg : NULL;
    m->tp_size = tp;
    m->tp_rank = tpg != NULL ? ent_group_rank(tpg) : 0;
    m->psize = ent_dtype_size(be->param_dtype);
    m->asize = ent_dtype_size(be->act_dtype);
    ENT_ASSERT(m->psize > 0 && m->asize > 0);
    ENT_CHECK_GOTO(ent_param_table_build(s, tp, &m->table), fail);
    set_compute_dtype(&m->table, be->param_dtype);
    ENT_CHECK_GOTO(ent_act_table_build(be, s, tp, B, T, be->act_dtype, &m->acts), fail);
    size_t need = ent_model_memory_bytes_of(&m->table, &m->acts);
    if (be->iface->available_memory != NULL) {
        size_t avail = be->iface->available_memory(be);
        if (need > avail) {
            char a[32], b[32];
            st = ent_fail(ENT_ERR_NOMEM,
                          "not enough memory: the model (%d layers, width %d, context %d, "
                          "vocab %d) with micro-batches of %d x %d tokens needs %s on the %s "
                          "device, %s is available; lower model.width, model.layers, "
                          "train.micro_batch or model.context, or add tensor-parallel ranks",
                          s->layers, s->width, s->context, s->vocab, B, T,
                          ent_format_bytes((double)need, a, sizeof a), be->iface->name,
                          ent_format_bytes((double)avail, b, sizeof b));
            goto fail;
        }
    }
    int L = s->layers, C = s->width;
    m->Ca = C / tp;
    m->Cf = 4 * C / tp;
    m->NHl = s->heads / tp;
    if (s->arch == ENT_ARCH_LLAMA) {
        ENT_CHECK_GOTO(ent_backend_check_llama(be), fail);
        m->Cf = s->ffn_hidden / tp;
        m->hd = C / s->heads;
        int group = s->heads / s->kv_heads, head0 = m->tp_rank * m->NHl;
        m->kv_replicated = s->kv_heads % tp != 0;
        m->KVl = m->kv_replicated ? s->kv_heads : s->kv_heads / tp;
        m->kv0 = m->kv_replicated ? head0 / group : 0;
        m->gqa = (ent_gqa_shape){.NH = m->NHl, .kv_heads = m->KVl, .hd = m->hd, .group = group,
                                 .phase = m->kv_replicated ? head0 % group : 0};
    }
    size_t BT = (size_t)B * (size_t)T;

    size_t multiple = opts != NULL && opts->arena_multiple > 0 ? opts->arena_multiple : 1;
    m->arena_floats = (m->table.total + multiple - 1) / multiple * multiple;
    char sz[32];
    for (int i = 0; i < 2; i++) {
        m->arena[i] = be->iface->alloc(be, m->arena_floats * sizeof(float));
        if (m->arena[i] == NULL) {
            st = ent_fail(ENT_ERR_NOMEM, "cannot allocate %s for the model's arenas",
                          ent_format_bytes(2.0 * m->arena_floats * sizeof(float), sz, sizeof sz));
            goto fail;
        }
    }
    // the parameters in compute: the masters themselves when f32
    m->params = m->arena[ENT_ARENA_PARAMS];
    if (be->param_dtype != ENT_F32) {
        if (be->iface->cast == NULL) {
            st = ent_fail(ENT_ERR_USAGE, "backend %s keeps parameters in %s but has no cast op",
                          be->iface->name, ent_dtype_name(be->param_dtype));
            goto fail;
        }
        m->params = be->iface->alloc(be, m->arena_floats * m->psize);
        if (m->params == NULL) {
            st = ent_fail(ENT_ERR_NOMEM, "cannot allocate %s for the parameters in %s",
                          ent_format_bytes((double)m->arena_floats * m->psize, sz, sizeof sz),
                          ent_dtype_name(be->param_dtype));
            goto fail;
        }
    }
    const ent_param_table *t = &m->table;
    float *G = m->arena[ENT_ARENA_GRADS];
    char *P = m->params;
    size_t ps = m->psize;
    // the embeddings and the final norm, each a parameter view and a gradient
    // view (a llama has no learned positions and no biases: NULL)
    static const char *const outer[2][4] = {
        {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"},
        {"model.embed_tokens.weight", NULL, "model.norm.weight", NULL}};
    void **pviews[] = {&m->wte, &m->wpe, &m->lnfw, &m->lnfb};
    float **gviews[] = {&m->dwte, &m->dwpe, &m->dlnfw, &m->dlnfb};
    for (int i = 0; i < 4; i++) {
        const char *name = outer[s->arch == ENT_ARCH_LLAMA][i];
        if (name == NULL) continue;
        size_t off = ent_param_table_find(t, name)->offset;
        *pviews[i] = P + off * ps;
        *gviews[i] = G + off;
    }
    if (s->arch == ENT_ARCH_LLAMA) { // lm_head.weight, or embed_tokens when tied
        const ent_param_row *head = ent_param_table_find(t, "lm_head.weight");
        size_t off = head != NULL ? head->offset : (size_t)(m->dwte - G);
        m->lm_head = P + off * ps;
        m->dlm_head = G + off;
    }
    m->p = calloc((size_t)L, sizeof *m->p);
    m->g = calloc((size_t)L, sizeof *m->g);
    m->a = calloc((size_t)L, sizeof *m->a);
    m->host_losses = malloc(sizeof(float) * BT);
    m->host_logits = malloc(m->asize * (size_t)s->padded_vocab);
    if (m->p == NULL || m->g == NULL || m->a == NULL || m->host_losses == NULL ||
        m->host_logits == NULL) {
        st = ent_fail(ENT_ERR_NOMEM, "out of memory allocating the model");
        goto fail;
    }
    for (int l = 0; l < L; l++) {
        point_layer_tensors(t, s->arch, P, ps, l, &m->p[l]);
        point_layer_tensors(t, s->arch, G, sizeof(float), l, &m->g[l]);
    }

    // activations: two arenas laid out by the activation table
    for (int i = 0; i < 2; i++) {
        m->act_arena[i] = be->iface->alloc(be, m->acts.bytes[i]);
        if (m->act_arena[i] == NULL) {
            st = ent_fail(ENT_ERR_NOMEM, "cannot allocate %s of activations",
                          ent_format_bytes((double)(m->acts.bytes[ENT_ACTS] +
                                                    m->acts.bytes[ENT_ACT_GRADS]),
                                           sz, sizeof sz));
            goto fail;
        }
    }
    view_cursor cursor = {.m = m};
    walk_activations(specs_of(s->arch), L, point_activation, &cursor);
    ENT_ASSERT(cursor.row == m->acts.nrows);
    if (s->arch == ENT_ARCH_LLAMA) ENT_CHECK_GOTO(upload_rope_table(m), fail);
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
    if (m->params != NULL && m->params != m->arena[ENT_ARENA_PARAMS])
        be->iface->free_mem(be, m->params);
    for (int i = 0; i < 2; i++)
        if (m->arena[i]) be->iface->free_mem(be, m->arena[i]);
    for (int i = 0; i < 2; i++)
        if (m->act_arena[i]) be->iface->free_mem(be, m->act_arena[i]);
    free(m->p);
    free(m->g);
    free(m->a);
    free(m->host_losses);
    free(m->host_logits);
    ent_param_table_free(&m->table);
    ent_act_table_free(&m->acts);
    free(m);
    *model = NULL;
}

// ---------------------------------------------------------------------------
// initialisation

ent_status ent_model_init(ent_model_t *m, uint64_t seed) {
    const ent_param_table *t = &m->table;
    double residual_std = 0.02 / sqrt(2.0 * m->shape.layers);
    size_t max_numel = 0;
    for (int i = 0; i < t->nrows; i++) {
        size_t global = (size_t)(t->rows[i].shape[0] * t->rows[i].shape[1]);
        if (global > max_numel) max_numel = global;
    }
    float *global = malloc(sizeof(float) * max_numel), *local = malloc(sizeof(float) * max_numel);
    ent_status st = global != NULL && local != NULL
                        ? ENT_OK
                        : ent_fail(ENT_ERR_NOMEM, "out of memory initialising the model");
    for (int i = 0; i < t->nrows && st == ENT_OK; i++) {
        const ent_param_row *r = &t->rows[i];
        const char *suffix = strrchr(r->name, '.');
        size_t n = (size_t)(r->shape[0] * r->shape[1]);
        if (strcmp(suffix, ".bias") == 0) {
            memset(global, 0, sizeof(float) * n);
        } else if (r->ndim == 1) { // layernorm gain
            for (size_t k = 0; k < n; k++) global[k] = 1.0f;
        } else {
            // the projections into the residual stream: GPT-2's c_proj, a llama's o_proj
            // and down_proj
            int residual = strstr(r->name, "c_proj.weight") != NULL ||
                           strstr(r->name, "o_proj.weight") != NULL ||
                           strstr(r->name, "down_proj.weight") != NULL;
            double std = residual ? residual_std : 0.02;
            // the vocabulary's padding rows are never read as inputs nor trained as
            // outputs: keep them 0
            size_t live = r->shape[0] == m->shape.padded_vocab && r->ndim == 2 &&
                                  (strcmp(r->name, "wte.weight") == 0 ||
                                   strcmp(r->name, "model.embed_tokens.weight") == 0 ||
                                   strcmp(r->name, "lm_head.weight") == 0)
                              ? (size_t)m->shape.vocab * (size_t)r->shape[1] : n;
            ent_rng rng;
            ent_rng_seed(&rng, ent_hash_string(r->name, seed));
            for (size_t k = 0; k < live; k++) global[k] = (float)(std * ent_rng_normal(&rng));
            for (size_t k = live; k < n; k++) global[k] = 0.0f;
        }
        ent_param_row_slice(r, m->tp_rank, m->tp_size, global, local);
        st = m->be->iface->to_device(m->be, m->arena[ENT_ARENA_PARAMS] + r->offset, local,
                                     sizeof(float) * r->numel);
    }
    free(global);
    free(local);
    ENT_CHECK(st);
    ENT_CHECK(ent_model_params_changed(m));
    return ent_model_zero_grad(m);
}

// ---------------------------------------------------------------------------
// forward and backward

// The activation n elements past p (act_dtype).
static void *act_at(const ent_model_t *m, const void *p, size_t n) {
    return (char *)p + n * m->asize;
}

// Sums the partial results of the TP ranks (no-op without TP): activations.
static ent_status tp_sum(ent_model_t *m, void *x, size_t n) {
    if (m->tp == NULL) return ENT_OK;
    return ent_allreduce(m->tp, x, x, n, m->be->act_dtype, ENT_SUM);
}

// A normalisation of the residual stream: its output and statistics (mean
// NULL: RMSNorm's), and its weights.
typedef struct {
    void *out;
    float *mean, *rstd;
    const void *weight, *bias;
} norm_at;

// The norm before block l's attention (l < layers), or the final one (l = layers).
static norm_at block_norm(ent_model_t *m, int l) {
    if (l == m->shape.layers)
        return (norm_at){m->lnf, m->lnf_mean, m->lnf_rstd, m->lnfw, m->lnfb};
    layer_acts *a = &m->a[l];
    return (norm_at){a->ln1, a->ln1_mean, a->ln1_rstd, m->p[l].ln1w, m->p[l].ln1b};
}

// The norm before block l's MLP (a llama's mean and bias views are NULL).
static norm_at mlp_norm(ent_model_t *m, int l) {
    layer_acts *a = &m->a[l];
    return (norm_at){a->ln2, a->ln2_mean, a->ln2_rstd, m->p[l].ln2w, m->p[l].ln2b};
}

// The norm of the architecture (layernorm, or RMSNorm for the Llama family)
// of inp (N rows); with a and b, of inp = a + b, written first: the
// backend's fused op where it has one, else the residual then the norm.
static ent_status norm_forward(ent_model_t *m, void *inp, const void *a, const void *b,
                               norm_at o, int N) {
    const struct ent_backend_i *k = m->be->iface;
    ent_backend_t *be = m->be;
    int C = m->shape.width;
    float eps = m->shape.rms_eps;
    int rms = m->shape.arch == ENT_ARCH_LLAMA;
    if (a != NULL && rms && k->residual_rmsnorm_forward != NULL)
        return k->residual_rmsnorm_forward(be, inp, o.out, o.rstd, a, b, o.weight, eps, N, C);
    if (a != NULL && !rms && k->residual_layernorm_forward != NULL)
        return k->residual_layernorm_forward(be, inp, o.out, o.mean, o.rstd, a, b, o.weight,
                                             o.bias, N, C);
    if (a != NULL) ENT_CHECK(k->residual_forward(be, inp, a, b, (size_t)N * C));
    if (rms) return k->rmsnorm_forward(be, o.out, o.rstd, inp, o.weight, eps, N, C);
    return k->layernorm_forward(be, o.out, o.mean, o.rstd, inp, o.weight, o.bias, N, C);
}

// GPT-2's forward pass from the tokens to the logits. Each residual addition
// comes with the norm that reads it (norm_forward): ln_2 in the block, the
// next block's ln_1 (or ln_f) at its end.
static ent_status gpt2_forward(ent_model_t *m, int b, int t) {
    const struct ent_backend_i *k = m->be->iface;
    ent_backend_t *be = m->be;
    int L = m->shape.layers, C = m->shape.width, Ca = m->Ca, Cf = m->Cf;
    int Vp = m->shape.padded_vocab, N = b * t;
    // the output biases of row-parallel layers are added by TP rank 0 alone
    int add_bias = m->tp_rank == 0;
    ENT_CHECK(k->encoder_forward(be, m->encoded, m->tokens, m->wte, m->wpe, b, t, C));
    ENT_CHECK(norm_forward(m, m->encoded, NULL, NULL, block_norm(m, 0), N));
    for (int l = 0; l < L; l++) {
        const layer_tensors *p = &m->p[l];
        layer_acts *a = &m->a[l];
        const void *residual = l == 0 ? m->encoded : m->a[l - 1].res3;
        ENT_CHECK(k->matmul_forward(be, a->qkv, a->ln1, p->qkvw, p->qkvb, N, C, 3 * Ca));
        ENT_CHECK(k->attention_forward(be, a->atty, a->att, a->qkv, b, t, Ca, m->NHl));
        ENT_CHECK(k->matmul_forward(be, m->proj, a->atty, p->projw, add_bias ? p->projb : NULL, N,
                                    Ca, C));
        ENT_CHECK(tp_sum(m, m->proj, (size_t)N * C));
        ENT_CHECK(norm_forward(m, a->res2, residual, m->proj, mlp_norm(m, l), N));
        if (k->matmul_gelu_forward != NULL) { // GELU as the product's epilogue
            ENT_CHECK(k->matmul_gelu_forward(be, a->fch, a->fch_gelu, a->ln2, p->fcw, p->fcb, N, C,
                                             Cf));
        } else {
            ENT_CHECK(k->matmul_forward(be, a->fch, a->ln2, p->fcw, p->fcb, N, C, Cf));
            ENT_CHECK(k->gelu_forward(be, a->fch_gelu, a->fch, (size_t)N * Cf));
        }
        ENT_CHECK(k->matmul_forward(be, m->proj, a->fch_gelu, p->fcpw, add_bias ? p->fcpb : NULL, N,
                                    Cf, C));
        ENT_CHECK(tp_sum(m, m->proj, (size_t)N * C));
        ENT_CHECK(norm_forward(m, a->res3, a->res2, m->proj, block_norm(m, l + 1), N));
    }
    return k->matmul_forward(be, m->logits, m->lnf, m->wte, NULL, N, C, Vp);
}

// A llama's forward pass from the tokens to the logits.
static ent_status llama_forward(ent_model_t *m, int b, int t) {
    const struct ent_backend_i *k = m->be->iface;
    ent_backend_t *be = m->be;
    int L = m->shape.layers, C = m->shape.width, Ca = m->Ca, Cf = m->Cf;
    int Vp = m->shape.padded_vocab, N = b * t, hd = m->hd;
    int KVw = m->KVl * hd;
    size_t kv0 = (size_t)m->kv0 * hd; // the first KV head this rank's queries use
    ent_gqa_shape g = m->gqa;
    g.B = b;
    g.T = t;
    ENT_CHECK(k->encoder_forward(be, m->encoded, m->tokens, m->wte, NULL, b, t, C));
    ENT_CHECK(norm_forward(m, m->encoded, NULL, NULL, block_norm(m, 0), N));
    for (int l = 0; l < L; l++) {
        const layer_tensors *p = &m->p[l];
        layer_acts *a = &m->a[l];
        const void *residual = l == 0 ? m->encoded : m->a[l - 1].res3;
        ENT_CHECK(k->matmul_forward(be, a->q, a->ln1, p->qw, NULL, N, C, Ca));
        ENT_CHECK(k->matmul_forward(be, a->k, a->ln1, p->kw, NULL, N, C, KVw));
        ENT_CHECK(k->matmul_forward(be, a->v, a->ln1, p->vw, NULL, N, C, KVw));
        ENT_CHECK(k->rope_forward(be, a->q, m->rope_cos, m->rope_sin, b, t, m->NHl, hd));
        ENT_CHECK(k->rope_forward(be, a->k, m->rope_cos, m->rope_sin, b, t, m->KVl, hd));
        ENT_CHECK(k->gqa_forward(be, a->atty, a->att, a->q, act_at(m, a->k, kv0),
                                 act_at(m, a->v, kv0), g));
        ENT_CHECK(k->matmul_forward(be, m->proj, a->atty, p->projw, NULL, N, Ca, C));
        ENT_CHECK(tp_sum(m, m->proj, (size_t)N * C));
        ENT_CHECK(norm_forward(m, a->res2, residual, m->proj, mlp_norm(m, l), N));
        ENT_CHECK(k->matmul_forward(be, a->fch, a->ln2, p->gatew, NULL, N, C, Cf));
        ENT_CHECK(k->matmul_forward(be, a->up, a->ln2, p->upw, NULL, N, C, Cf));
        ENT_CHECK(k->swiglu_forward(be, a->fch_gelu, a->fch, a->up, (size_t)N * Cf));
        ENT_CHECK(k->matmul_forward(be, m->proj, a->fch_gelu, p->fcpw, NULL, N, Cf, C));
        ENT_CHECK(tp_sum(m, m->proj, (size_t)N * C));
        ENT_CHECK(norm_forward(m, a->res3, a->res2, m->proj, block_norm(m, l + 1), N));
    }
    return k->matmul_forward(be, m->logits, m->lnf, m->lm_head, NULL, N, C, Vp);
}

ent_status ent_model_forward(ent_model_t *m, const int32_t *tokens, const int32_t *targets,
                             int b, int t, float *loss) {
    ENT_ASSERT(b >= 1 && b <= m->B && t >= 1 && t <= m->T);
    const struct ent_backend_i *k = m->be->iface;
    ent_backend_t *be = m->be;
    int V = m->shape.vocab, Vp = m->shape.padded_vocab, N = b * t;
    ENT_CHECK(k->to_device(be, m->tokens, tokens, sizeof(int32_t) * (size_t)N));
    if (targets != NULL)
        ENT_CHECK(k->to_device(be, m->targets, targets, sizeof(int32_t) * (size_t)N));
    ENT_CHECK(m->shape.arch == ENT_ARCH_LLAMA ? llama_forward(m, b, t) : gpt2_forward(m, b, t));
    m->last_b = b;
    m->last_t = t;
    m->last_has_targets = targets != NULL;
    if (targets == NULL) return ENT_OK;
    ENT_CHECK(k->softmax_xent_forward(be, m->losses, m->logits, m->logits, m->targets, N, V, Vp));
    ENT_CHECK(k->to_host(be, m->host_losses, m->losses, sizeof(float) * (size_t)N));
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += m->host_losses[i];
    if (loss != NULL) *loss = (float)(sum / N);
    return ENT_OK;
}

ent_status ent_model_zero_grad(ent_model_t *m) {
    return m->be->iface->zero(m->be, m->arena[ENT_ARENA_GRADS], sizeof(float) * m->arena_floats);
}

void ent_model_set_grad_hook(ent_model_t *m, ent_grad_hook hook, void *ctx) {
    m->hook = hook;
    m->hook_ctx = ctx;
}

// Tells the hook that the gradients of rows [first, last] are complete.
static void bucket_done(ent_model_t *m, const float *first, const float *last_row_start,
                        size_t last_numel) {
    if (m->hook == NULL) return;
    const float *G = m->arena[ENT_ARENA_GRADS];
    size_t off = (size_t)(first - G), end = (size_t)(last_row_start - G) + last_numel;
    m->hook(m->hook_ctx, off, end - off);
}

// GPT-2's backward pass from the logits' gradients (in m->logits).
static ent_status gpt2_backward(ent_model_t *m, int b, int t) {
    const struct ent_backend_i *k = m->be->iface;
    ent_backend_t *be = m->be;
    int N = b * t;
    int L = m->shape.layers, C = m->shape.width, Ca = m->Ca, Cf = m->Cf;
    int Vp = m->shape.padded_vocab;
    size_t NC = (size_t)N * C;
    ENT_CHECK(k->zero(be, m->dln, m->asize * NC));
    ENT_CHECK(k->matmul_backward(be, m->dln, m->dwte, NULL, m->logits, m->lnf, m->wte, N, C, Vp));
    ENT_CHECK(k->zero(be, m->dres, m->asize * NC));
    ENT_CHECK(k->layernorm_backward(be, m->dres, m->dlnfw, m->dlnfb, m->dln, m->a[L - 1].res3,
                                    m->lnfw, m->lnf_mean, m->lnf_rstd, N, C));
    bucket_done(m, m->dlnfw, m->dlnfb, (size_t)C);
    // dres is the gradient of the residual stream; every block adds to it in place
    for (int l = L - 1; l >= 0; l--) {
        const layer_tensors *p = &m->p[l];
        const layer_tensors *g = &m->g[l];
        const layer_acts *a = &m->a[l];
        const void *residual = l == 0 ? m->encoded : m->a[l - 1].res3;
        // MLP: res3 = res2 + fcproj(gelu(fc(ln2(res2))))
        ENT_CHECK(k->zero(be, m->dfch_gelu, m->asize * (size_t)N * Cf));
        ENT_CHECK(k->matmul_backward(be, m->dfch_gelu, g->fcpw, g->fcpb, m->dres, a->fch_gelu,
                                     p->fcpw, N, Cf, C));
        ENT_CHECK(k->zero(be, m->dfch, m->asize * (size_t)N * Cf));
        ENT_CHECK(k->gelu_backward(be, m->dfch, a->fch, m->dfch_gelu, (size_t)N * Cf));
        ENT_CHECK(k->zero(be, m->dln, m->asize * NC));
        ENT_CHECK(
            k->matmul_backward(be, m->dln, g->fcw, g->fcb, m->dfch, a->ln2, p->fcw, N, C, Cf));
        ENT_CHECK(tp_sum(m, m->dln, NC));
        ENT_CHECK(k->layernorm_backward(be, m->dres, g->ln2w, g->ln2b, m->dln, a->res2, p->ln2w,
                                        a->ln2_mean, a->ln2_rstd, N, C));
        // attention: res2 = residual + proj(attn(qkv(ln1(residual))))
        ENT_CHECK(k->zero(be, m->datty, m->asize * (size_t)N * Ca));
        ENT_CHECK(k->matmul_backward(be, m->datty, g->projw, g->projb, m->dres, a->atty, p->projw,
                                     N, Ca, C));
        ENT_CHECK(k->zero(be, m->dqkv, m->asize * (size_t)N * 3 * Ca));
        ENT_CHECK(k->attention_backward(be, m->dqkv, m->datt, m->datty, a->qkv, a->att, b, t, Ca,
                                        m->NHl));
        ENT_CHECK(k->zero(be, m->dln, m->asize * NC));
        ENT_CHECK(k->matmul_backward(be, m->dln, g->qkvw, g->qkvb, m->dqkv, a->ln1, p->qkvw, N, C,
                                     3 * Ca));
        ENT_CHECK(tp_sum(m, m->dln, NC));
        ENT_CHECK(k->layernorm_backward(be, m->dres, g->ln1w, g->ln1b, m->dln, residual, p->ln1w,
                                        a->ln1_mean, a->ln1_rstd, N, C));
        bucket_done(m, g->ln1w, g->fcpb, (size_t)C);
    }
    ENT_CHECK(k->encoder_backward(be, m->dwte, m->dwpe, m->dres, m->tokens, b, t, C));
    bucket_done(m, m->dwte, m->dwpe, (size_t)m->shape.context * C);
    return ENT_OK;
}

// A llama's backward pass from the logits' gradients (in m->logits).
static ent_status llama_backward(ent_model_t *m, int b, int t) {
    const struct ent_backend_i *k = m->be->iface;
    ent_backend_t *be = m->be;
    int N = b * t, hd = m->hd;
    int L = m->shape.layers, C = m->shape.width, Ca = m->Ca, Cf = m->Cf, KVw = m->KVl * hd;
    int Vp = m->shape.padded_vocab;
    size_t NC = (size_t)N * C, NF = (size_t)N * Cf, NKV = (size_t)N * KVw;
    size_t kv0 = (size_t)m->kv0 * hd;
    ent_gqa_shape g = m->gqa;
    g.B = b;
    g.T = t;
    // replicated K and V: every rank holds their whole gradient (summed below),
    // and rank 0 alone adds what it sends into the input
    void *kv_dinp = m->kv_replicated && m->tp_rank != 0 ? NULL : m->dln;
    ENT_CHECK(k->zero(be, m->dln, m->asize * NC));
    ENT_CHECK(k->matmul_backward(be, m->dln, m->dlm_head, NULL, m->logits, m->lnf, m->lm_head, N,
                                 C, Vp));
    ENT_CHECK(k->zero(be, m->dres, m->asize * NC));
    ENT_CHECK(k->rmsnorm_backward(be, m->dres, m->dlnfw, m->dln, m->a[L - 1].res3, m->lnfw,
                                  m->lnf_rstd, N, C));
    // the final norm, with lm_head after it unless tied (then embed_tokens is
    // complete only after the blocks)
    if (m->lm_head != m->wte)
        bucket_done(m, m->dlnfw, m->dlm_head, (size_t)Vp * C);
    else
        bucket_done(m, m->dlnfw, m->dlnfw, (size_t)C);
    for (int l = L - 1; l >= 0; l--) {
        const layer_tensors *p = &m->p[l];
        const layer_tensors *gr = &m->g[l];
        const layer_acts *a = &m->a[l];
        const void *residual = l == 0 ? m->encoded : m->a[l - 1].res3;
        // MLP: res3 = res2 + down(swiglu(gate(n2), up(n2))), n2 = post_norm(res2)
        ENT_CHECK(k->zero(be, m->dfch_gelu, m->asize * NF));
        ENT_CHECK(k->matmul_backward(be, m->dfch_gelu, gr->fcpw, NULL, m->dres, a->fch_gelu,
                                     p->fcpw, N, Cf, C));
        ENT_CHECK(k->zero(be, m->dfch, m->asize * NF));
        ENT_CHECK(k->zero(be, m->dup, m->asize * NF));
        ENT_CHECK(k->swiglu_backward(be, m->dfch, m->dup, m->dfch_gelu, a->fch, a->up, NF));
        ENT_CHECK(k->zero(be, m->dln, m->asize * NC));
        ENT_CHECK(k->matmul_backward(be, m->dln, gr->gatew, NULL, m->dfch, a->ln2, p->gatew, N, C,
                                     Cf));
        ENT_CHECK(k->matmul_backward(be, m->dln, gr->upw, NULL, m->dup, a->ln2, p->upw, N, C, Cf));
        ENT_CHECK(tp_sum(m, m->dln, NC));
        ENT_CHECK(k->rmsnorm_backward(be, m->dres, gr->ln2w, m->dln, a->res2, p->ln2w,
                                      a->ln2_rstd, N, C));
        // attention: res2 = residual + o(gqa(rope(q(n1)), rope(k(n1)), v(n1))), n1 = input_norm
        ENT_CHECK(k->zero(be, m->datty, m->asize * (size_t)N * Ca));
        ENT_CHECK(k->matmul_backward(be, m->datty, gr->projw, NULL, m->dres, a->atty, p->projw, N,
                                     Ca, C));
        ENT_CHECK(k->zero(be, m->dq, m->asize * (size_t)N * Ca));
        ENT_CHECK(k->zero(be, m->dk, m->asize * NKV));
        ENT_CHECK(k->zero(be, m->dv, m->asize * NKV));
        ENT_CHECK(k->gqa_backward(be, m->dq, act_at(m, m->dk, kv0), act_at(m, m->dv, kv0),
                                  m->datt, m->datty, a->q, act_at(m, a->k, kv0),
                                  act_at(m, a->v, kv0), a->att, g));
        if (m->kv_replicated) {
            ENT_CHECK(tp_sum(m, m->dk, NKV));
            ENT_CHECK(tp_sum(m, m->dv, NKV));
        }
        ENT_CHECK(k->rope_backward(be, m->dq, m->rope_cos, m->rope_sin, b, t, m->NHl, hd));
        ENT_CHECK(k->rope_backward(be, m->dk, m->rope_cos, m->rope_sin, b, t, m->KVl, hd));
        ENT_CHECK(k->zero(be, m->dln, m->asize * NC));
        ENT_CHECK(k->matmul_backward(be, m->dln, gr->qw, NULL, m->dq, a->ln1, p->qw, N, C, Ca));
        ENT_CHECK(k->matmul_backward(be, kv_dinp, gr->kw, NULL, m->dk, a->ln1, p->kw, N, C, KVw));
        ENT_CHECK(k->matmul_backward(be, kv_dinp, gr->vw, NULL, m->dv, a->ln1, p->vw, N, C, KVw));
        ENT_CHECK(tp_sum(m, m->dln, NC));
        ENT_CHECK(k->rmsnorm_backward(be, m->dres, gr->ln1w, m->dln, residual, p->ln1w,
                                      a->ln1_rstd, N, C));
        bucket_done(m, gr->ln1w, gr->fcpw, (size_t)C * Cf);
    }
    ENT_CHECK(k->encoder_backward(be, m->dwte, NULL, m->dres, m->tokens, b, t, C));
    bucket_done(m, m->dwte, m->dwte, (size_t)Vp * C);
    return ENT_OK;
}

ent_status ent_model_backward(ent_model_t *m, float dloss) {
    ENT_ASSERT(m->last_has_targets); // backward needs a forward with targets
    const struct ent_backend_i *k = m->be->iface;
    int b = m->last_b, t = m->last_t, N = b * t;
    // logits hold probabilities; turn them into dlogits in place
    ENT_CHECK(k->softmax_xent_backward(m->be, m->logits, m->logits, m->targets, dloss, N,
                                       m->shape.vocab, m->shape.padded_vocab));
    ENT_CHECK(m->shape.arch == ENT_ARCH_LLAMA ? llama_backward(m, b, t) : gpt2_backward(m, b, t));
    // the probabilities were consumed: a second backward needs a new forward
    m->last_has_targets = 0;
    return ENT_OK;
}

ent_status ent_model_logits_at(ent_model_t *m, int b, int t, float *host_out) {
    ENT_ASSERT(!m->last_has_targets && b < m->last_b && t < m->last_t);
    size_t Vp = (size_t)m->shape.padded_vocab;
    const void *row = act_at(m, m->logits, ((size_t)b * m->last_t + t) * Vp);
    ENT_CHECK(m->be->iface->to_host(m->be, m->host_logits, row, m->asize * Vp));
    return ent_dtype_to_f32(m->be->act_dtype, m->host_logits, host_out, Vp);
}

ent_status ent_model_params_changed(ent_model_t *m) {
    if (m->params == m->arena[ENT_ARENA_PARAMS]) return ENT_OK; // their own masters
    return m->be->iface->cast(m->be, m->params, m->arena[ENT_ARENA_PARAMS], m->arena_floats);
}

void *ent_model_compute_params(ent_model_t *m) { return m->params; }

float *ent_model_arena(ent_model_t *m, ent_arena which) { return m->arena[which]; }
size_t ent_model_arena_floats(const ent_model_t *m) { return m->arena_floats; }
const ent_param_table *ent_model_table(const ent_model_t *m) { return &m->table; }
const ent_model_shape *ent_model_get_shape(const ent_model_t *m) { return &m->shape; }
ent_backend_t *ent_model_backend(const ent_model_t *m) { return m->be; }
int ent_model_tp_rank(const ent_model_t *m) { return m->tp_rank; }
