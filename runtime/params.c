// params.c: the parameter table. Every trainable tensor is one row with its
// Hugging Face GPT-2 name, global shape, tensor-parallel split and offset in
// the arenas; the model, the optimizer and (later) DP, TP, checkpoints and
// export all read this one table.
#include "runtime_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ent_model_shape ent_model_shape_from_config(const ent_config *cfg) {
    ent_model_shape s = {
        .layers = cfg->layers,
        .heads = cfg->heads,
        .width = cfg->width,
        .context = cfg->context,
        .vocab = cfg->vocab,
        .padded_vocab = (cfg->vocab + 63) / 64 * 64,
    };
    return s;
}

size_t ent_model_shape_num_params(const ent_model_shape *s) {
    size_t C = (size_t)s->width, L = (size_t)s->layers;
    size_t per_layer = 12 * C * C + 13 * C; // ln 4C, qkv 3C^2+3C, proj C^2+C, fc 4C^2+4C, fcproj 4C^2+C
    return (size_t)s->vocab * C + (size_t)s->context * C + L * per_layer + 2 * C;
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

ent_status ent_param_table_build(const ent_model_shape *s, int tp_size, ent_param_table *t) {
    memset(t, 0, sizeof *t);
    // every split dimension (heads' channels, 4C) must divide evenly
    if (tp_size < 1 || s->heads % tp_size != 0)
        return ent_fail(ENT_ERR_USAGE, "%d tensor-parallel ranks do not divide %d heads", tp_size,
                        s->heads);
    table_builder tb = {.t = t, .tp = tp_size};
    t->tp_size = tp_size;
    int64_t C = s->width;
    char name[64];
    ent_status st = ENT_OK;
    ENT_CHECK_GOTO(add_row(&tb, "wte.weight", 2, s->padded_vocab, C, ENT_SPLIT_NONE, 1, 1), fail);
    ENT_CHECK_GOTO(add_row(&tb, "wpe.weight", 2, s->context, C, ENT_SPLIT_NONE, 1, 1), fail);
    for (int l = 0; l < s->layers; l++) {
        // name suffix, ndim, rows, cols, split, groups, decay
        struct { const char *suffix; int ndim; int64_t d0, d1; ent_split split; int groups, decay; } spec[] = {
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
        for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
            snprintf(name, sizeof name, "h.%d.%s", l, spec[i].suffix);
            ENT_CHECK_GOTO(add_row(&tb, name, spec[i].ndim, spec[i].d0, spec[i].d1, spec[i].split,
                                   spec[i].groups, spec[i].decay), fail);
        }
    }
    ENT_CHECK_GOTO(add_row(&tb, "ln_f.weight", 1, C, 1, ENT_SPLIT_NONE, 1, 0), fail);
    ENT_CHECK_GOTO(add_row(&tb, "ln_f.bias", 1, C, 1, ENT_SPLIT_NONE, 1, 0), fail);
    t->total = tb.offset;
    return ENT_OK;
fail:
    ent_param_table_free(t);
    return st;
}

