// params.c: the parameter table. Every trainable tensor is one row with its
// Hugging Face name (GPT-2's or the Llama family's), global shape, tensor-parallel split and offset in
// the arenas; the model, the optimizer and (later) DP, TP, checkpoints and
// export all read this one table.
#include "runtime_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ent_arch_name(ent_arch arch) { return arch == ENT_ARCH_LLAMA ? "llama" : "gpt2"; }

int ent_model_default_ffn(int width) { return (8 * width / 3 + 31) / 32 * 32; }

ent_model_shape ent_model_shape_from_config(const ent_config *cfg) {
    ent_model_shape s = {
        .layers = cfg->layers,
        .heads = cfg->heads,
        .width = cfg->width,
        .context = cfg->context,
        .vocab = cfg->vocab,
        .padded_vocab = (cfg->vocab + 63) / 64 * 64,
    };
    if (strcmp(cfg->arch, "llama") != 0) return s;
    s.arch = ENT_ARCH_LLAMA;
    s.kv_heads = cfg->n_kv_heads ? cfg->n_kv_heads : cfg->heads;
    s.ffn_hidden = cfg->ffn_hidden ? cfg->ffn_hidden : ent_model_default_ffn(cfg->width);
    s.tie_embeddings = cfg->tie_embeddings;
    s.rms_eps = (float)cfg->rms_eps;
    s.rope = (ent_rope){
        .theta = cfg->rope_theta,
        .scaling = strcmp(cfg->rope_scaling, "llama3") == 0 ? ENT_ROPE_LLAMA3 : ENT_ROPE_DEFAULT,
        .factor = cfg->rope_factor,
        .low_freq_factor = cfg->rope_low_freq_factor,
        .high_freq_factor = cfg->rope_high_freq_factor,
        .original_max = cfg->rope_original_context,
    };
    return s;
}

size_t ent_model_shape_num_params(const ent_model_shape *s) {
    size_t C = (size_t)s->width, L = (size_t)s->layers, V = (size_t)s->vocab;
    if (s->arch == ENT_ARCH_LLAMA) {
        // norms 2C, q and o 2 C^2, k and v 2 C kv_width, gate, up, down 3 C F
        size_t kvw = (size_t)s->kv_heads * (C / (size_t)s->heads), F = (size_t)s->ffn_hidden;
        size_t per_layer = 2 * C + 2 * C * C + 2 * C * kvw + 3 * C * F;
        return V * C * (s->tie_embeddings ? 1 : 2) + L * per_layer + C;
    }
    size_t per_layer = 12 * C * C + 13 * C; // ln 4C, qkv 3C^2+3C, proj C^2+C, fc 4C^2+4C, fcproj 4C^2+C
    return V * C + (size_t)s->context * C + L * per_layer + 2 * C;
}

double ent_model_shape_flops_per_token(const ent_model_shape *s) {
    return 6.0 * (double)ent_model_shape_num_params(s) +
           6.0 * s->layers * (double)s->width * s->context;
}

typedef struct {
    ent_param_table *t;
    size_t offset;
    int cap;
    int tp; // tensor-parallel ranks
} table_builder;

static ent_status add_row(table_builder *tb, const char *name, int ndim, int64_t d0, int64_t d1,
                          ent_split split, int groups, int decay) {
    ent_param_table *t = tb->t;
    if (t->nrows == tb->cap) {
        int cap = tb->cap ? 2 * tb->cap : 32;
        ent_param_row *rows = realloc(t->rows, sizeof *rows * (size_t)cap);
        if (rows == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory building the parameter table");
        t->rows = rows;
        tb->cap = cap;
    }
    ent_param_row *r = &t->rows[t->nrows++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->ndim = ndim;
    r->shape[0] = d0;
    r->shape[1] = ndim > 1 ? d1 : 1;
    r->split = split;
    r->split_groups = groups;
    r->decay = decay;
    r->dtype = ENT_F32;
    r->local_shape[0] = r->shape[0];
    r->local_shape[1] = r->shape[1];
    if (split == ENT_SPLIT_ROWS) r->local_shape[0] /= tb->tp;
    if (split == ENT_SPLIT_COLS) r->local_shape[1] /= tb->tp;
    r->numel = (size_t)r->local_shape[0] * (size_t)r->local_shape[1];
    // offsets count floats: the arenas are f32 (ENT_ARENA_ALIGN keeps every
    // tensor on its own cache lines, SIMD-aligned)
    r->offset = tb->offset;
    tb->offset += ent_arena_bytes(r->dtype, r->numel) / sizeof(float);
    return ENT_OK;
}

// One row per spec, named PREFIX.N.SUFFIX for each layer N.
typedef struct {
    const char *suffix;
    int ndim;
    int64_t d0, d1;
    ent_split split;
    int groups, decay;
} row_spec;

static ent_status add_layers(table_builder *tb, const char *prefix, int layers,
                             const row_spec *spec, int nspec) {
    char name[64];
    for (int l = 0; l < layers; l++)
        for (int i = 0; i < nspec; i++) {
            snprintf(name, sizeof name, "%s.%d.%s", prefix, l, spec[i].suffix);
            ENT_CHECK(add_row(tb, name, spec[i].ndim, spec[i].d0, spec[i].d1, spec[i].split,
                              spec[i].groups, spec[i].decay));
        }
    return ENT_OK;
}

// The Llama family's table, with Hugging Face's names and its (out, in)
// weight layout (nn.Linear's, no transposition either way). Megatron's
// column-parallel layers (q, k, v, gate, up) split their output features,
// rows here; the row-parallel ones (o, down) their input features, columns.
// K and V are split when TP divides the KV heads and replicated otherwise.
// The vocabulary's rows are padded to padded_vocab (zero rows that the
// softmax never sees).
static ent_status llama_rows(const ent_model_shape *s, table_builder *tb) {
    int64_t C = s->width, hd = s->width / s->heads, F = s->ffn_hidden;
    int64_t kvw = (int64_t)s->kv_heads * hd;
    ent_split kv_split = s->kv_heads % tb->tp == 0 ? ENT_SPLIT_ROWS : ENT_SPLIT_NONE;
    ENT_CHECK(add_row(tb, "model.embed_tokens.weight", 2, s->padded_vocab, C, ENT_SPLIT_NONE, 1, 1));
    const row_spec spec[] = {
        {"input_layernorm.weight", 1, C, 1, ENT_SPLIT_NONE, 1, 0},
        {"self_attn.q_proj.weight", 2, C, C, ENT_SPLIT_ROWS, 1, 1},
        {"self_attn.k_proj.weight", 2, kvw, C, kv_split, 1, 1},
        {"self_attn.v_proj.weight", 2, kvw, C, kv_split, 1, 1},
        {"self_attn.o_proj.weight", 2, C, C, ENT_SPLIT_COLS, 1, 1},
        {"post_attention_layernorm.weight", 1, C, 1, ENT_SPLIT_NONE, 1, 0},
        {"mlp.gate_proj.weight", 2, F, C, ENT_SPLIT_ROWS, 1, 1},
        {"mlp.up_proj.weight", 2, F, C, ENT_SPLIT_ROWS, 1, 1},
        {"mlp.down_proj.weight", 2, C, F, ENT_SPLIT_COLS, 1, 1},
    };
    ENT_CHECK(add_layers(tb, "model.layers", s->layers, spec, (int)(sizeof spec / sizeof spec[0])));
    ENT_CHECK(add_row(tb, "model.norm.weight", 1, C, 1, ENT_SPLIT_NONE, 1, 0));
    if (!s->tie_embeddings)
        ENT_CHECK(add_row(tb, "lm_head.weight", 2, s->padded_vocab, C, ENT_SPLIT_NONE, 1, 1));
    return ENT_OK;
}

ent_status ent_param_table_build(const ent_model_shape *s, int tp_size, ent_param_table *t) {
    memset(t, 0, sizeof *t);
    // every split dimension (heads' channels, 4C) must divide evenly
    if (tp_size < 1 || s->heads % tp_size != 0)
        return ent_fail(ENT_ERR_USAGE, "%d tensor-parallel ranks do not divide %d heads", tp_size,
                        s->heads);
    if (s->arch == ENT_ARCH_LLAMA &&
        (s->kv_heads < 1 || s->heads % s->kv_heads != 0 || s->ffn_hidden % tp_size != 0 ||
         s->ffn_hidden < 1))
        return ent_fail(ENT_ERR_USAGE, "a llama of %d heads, %d KV heads and %d MLP units cannot "
                        "be split over %d tensor-parallel ranks", s->heads, s->kv_heads,
                        s->ffn_hidden, tp_size);
    table_builder tb = {.t = t, .tp = tp_size};
    t->tp_size = tp_size;
    ent_status st = ENT_OK;
    if (s->arch == ENT_ARCH_LLAMA) {
        ENT_CHECK_GOTO(llama_rows(s, &tb), fail);
        t->total = tb.offset;
        return ENT_OK;
    }
    int64_t C = s->width;
    ENT_CHECK_GOTO(add_row(&tb, "wte.weight", 2, s->padded_vocab, C, ENT_SPLIT_NONE, 1, 1), fail);
    ENT_CHECK_GOTO(add_row(&tb, "wpe.weight", 2, s->context, C, ENT_SPLIT_NONE, 1, 1), fail);
    const row_spec spec[] = {
        {"ln_1.weight", 1, C, 1, ENT_SPLIT_NONE, 1, 0},
        {"ln_1.bias", 1, C, 1, ENT_SPLIT_NONE, 1, 0},
        {"attn.c_attn.weight", 2, 3 * C, C, ENT_SPLIT_ROWS, 3, 1},
        {"attn.c_attn.bias", 1, 3 * C, 1, ENT_SPLIT_ROWS, 3, 0},
        {"attn.c_proj.weight", 2, C, C, ENT_SPLIT_COLS, 1, 1},
        {"attn.c_proj.bias", 1, C, 1, ENT_SPLIT_NONE, 1, 0},
        {"ln_2.weight", 1, C, 1, ENT_SPLIT_NONE, 1, 0},
        {"ln_2.bias", 1, C, 1, ENT_SPLIT_NONE, 1, 0},
        {"mlp.c_fc.weight", 2, 4 * C, C, ENT_SPLIT_ROWS, 1, 1},
        {"mlp.c_fc.bias", 1, 4 * C, 1, ENT_SPLIT_ROWS, 1, 0},
        {"mlp.c_proj.weight", 2, C, 4 * C, ENT_SPLIT_COLS, 1, 1},
        {"mlp.c_proj.bias", 1, C, 1, ENT_SPLIT_NONE, 1, 0},
    };
    ENT_CHECK_GOTO(add_layers(&tb, "h", s->layers, spec, (int)(sizeof spec / sizeof spec[0])), fail);
    ENT_CHECK_GOTO(add_row(&tb, "ln_f.weight", 1, C, 1, ENT_SPLIT_NONE, 1, 0), fail);
    ENT_CHECK_GOTO(add_row(&tb, "ln_f.bias", 1, C, 1, ENT_SPLIT_NONE, 1, 0), fail);
    t->total = tb.offset;
    return ENT_OK;
fail:
    ent_param_table_free(t);
    return st;
}

