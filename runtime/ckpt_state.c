// ckpt_state.c: what a training checkpoint's attributes must say, checked once
// for `--resume` and `ckpt verify` alike.
//
// The checkpoint layer checks the file (format, version, metadata digest,
// checksummed metadata) and its datasets against a parameter table; what the
// attributes mean is the runtime's: the configuration the run was trained
// with (attribute `config`) implies the model, hence the table, and bounds
// the step; the data cursor bounds the tokens and the epoch. Every attribute
// a resume relies on is range-checked and cross-checked here, so a file that
// `ckpt verify` passes resumes, and one a resume refuses fails `ckpt verify`
// (docs/checkpoint.md, "What is checked").
#include "runtime_impl.h"
#include "ent_version.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

uint64_t ent_model_shape_hash(const ent_config *cfg) {
    char text[512];
    ent_model_shape s = ent_model_shape_from_config(cfg);
    if (s.arch != ENT_ARCH_LLAMA) {
        snprintf(text, sizeof text, "gpt2:%d:%d:%d:%d:%d", cfg->layers, cfg->heads, cfg->width,
                 cfg->context, cfg->vocab);
        return ent_hash_string(text, 0);
    }
    // every key that changes the function a llama computes, numbers in the
    // shortest text that reads back exactly
    char th[32], eps[32], f[32], lo[32], hi[32], scaling[160] = "none";
    if (s.rope.scaling == ENT_ROPE_LLAMA3)
        snprintf(scaling, sizeof scaling, "llama3:%s:%s:%s:%d",
                 ent_format_double(cfg->rope_factor, f, sizeof f),
                 ent_format_double(cfg->rope_low_freq_factor, lo, sizeof lo),
                 ent_format_double(cfg->rope_high_freq_factor, hi, sizeof hi),
                 cfg->rope_original_context);
    snprintf(text, sizeof text, "llama:%d:%d:%d:%d:%d:%d:%d:%d:%s:%s:%s", cfg->layers, cfg->heads,
             cfg->width, cfg->context, cfg->vocab, s.kv_heads, s.ffn_hidden, s.tie_embeddings,
             ent_format_double(cfg->rope_theta, th, sizeof th),
             ent_format_double(cfg->rms_eps, eps, sizeof eps), scaling);
    return ent_hash_string(text, 0);
}

// The largest train.batch_size a configuration accepts (config.c): bounds the
// sequences one step consumes.
ent_status ent_run_attrs_build(ent_run_attrs *ra, const ent_config *cfg, const ent_run_state *rs) {
    ra->config = ent_config_text(cfg, NULL);
    if (ra->config == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    const ent_ckpt_attr attrs[] = {
        {.name = "step", .type = ENT_ATTR_I64, .i = rs->step},
        {.name = "optim.updates", .type = ENT_ATTR_I64, .i = rs->updates},
        {.name = "tokens", .type = ENT_ATTR_I64, .i = rs->consumed * cfg->context},
        {.name = "data.consumed", .type = ENT_ATTR_I64, .i = rs->consumed},
        {.name = "data.epoch", .type = ENT_ATTR_I64, .i = rs->consumed / rs->sequences},
        {.name = "data.sequences", .type = ENT_ATTR_I64, .i = rs->sequences},
        {.name = "rng.train_seed", .type = ENT_ATTR_U64, .u = cfg->seed},
        {.name = "rng.data_order_key", .type = ENT_ATTR_U64, .u = ent_data_order_key(cfg->seed)},
        {.name = "model.architecture", .type = ENT_ATTR_STR, .s = ent_arch_name(shape.arch)},
        {.name = "model.layers", .type = ENT_ATTR_I64, .i = cfg->layers},
        {.name = "model.heads", .type = ENT_ATTR_I64, .i = cfg->heads},
        {.name = "model.width", .type = ENT_ATTR_I64, .i = cfg->width},
        {.name = "model.context", .type = ENT_ATTR_I64, .i = cfg->context},
        {.name = "model.vocab", .type = ENT_ATTR_I64, .i = cfg->vocab},
        {.name = "model.padded_vocab", .type = ENT_ATTR_I64, .i = shape.padded_vocab},
        {.name = "model.parameters", .type = ENT_ATTR_I64, .i = (int64_t)ent_model_shape_num_params(&shape)},
        {.name = "model.shape_hash", .type = ENT_ATTR_U64, .u = ent_model_shape_hash(cfg)},
        {.name = "saved_by.world_size", .type = ENT_ATTR_I64, .i = rs->world},
        {.name = "saved_by.dp", .type = ENT_ATTR_I64, .i = rs->dp},
        {.name = "saved_by.tp", .type = ENT_ATTR_I64, .i = rs->tp},
        {.name = "saved_by.zero", .type = ENT_ATTR_I64, .i = cfg->zero},
        {.name = "entente_version", .type = ENT_ATTR_STR, .s = ENT_VERSION},
        {.name = "revision", .type = ENT_ATTR_STR, .s = ENT_GIT_REVISION},
        {.name = "config", .type = ENT_ATTR_STR, .s = ra->config},
    };
    _Static_assert(sizeof attrs / sizeof attrs[0] <= ENT_RUN_ATTRS_MAX, "raise ENT_RUN_ATTRS_MAX");
    ra->count = (int)(sizeof attrs / sizeof attrs[0]);
    memcpy(ra->attrs, attrs, sizeof attrs);
    return ENT_OK;
}

void ent_run_attrs_free(ent_run_attrs *ra) {
    free(ra->config);
    ra->config = NULL;
}

#define MAX_BATCH 1000000000LL

static ent_status want_i64(ent_ckpt_t *ck, const char *name, int64_t expect, const char *why) {
    int64_t v = 0;
    ENT_CHECK(ent_ckpt_attr_i64(ck, name, &v));
    if (v != expect)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is %lld; %s says %lld", ent_ckpt_path(ck),
                        name, (long long)v, why, (long long)expect);
    return ENT_OK;
}

static ent_status in_range(ent_ckpt_t *ck, const char *name, int64_t lo, int64_t hi, int64_t *v) {
    ENT_CHECK(ent_ckpt_attr_i64(ck, name, v));
    if (*v < lo || *v > hi)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is %lld (accepted: %lld to %lld)",
                        ent_ckpt_path(ck), name, (long long)*v, (long long)lo, (long long)hi);
    return ENT_OK;
}

static ent_status want_text(ent_ckpt_t *ck, const char *name, const char *expect) {
    char *v = NULL;
    ENT_CHECK(ent_ckpt_attr_text(ck, name, &v));
    ent_status st = ENT_OK;
    if (expect != NULL && strcmp(v, expect) != 0)
        st = ent_fail(ENT_ERR_INPUT, "%s: attribute '%s' is '%.64s' (accepted: '%s')",
                      ent_ckpt_path(ck), name, v, expect);
    free(v);
    return st;
}

ent_status ent_config_from_open_checkpoint(ent_ckpt_t *ck, ent_config *cfg,
                                           const char *const *overrides, int n_overrides) {
    char *text = NULL, origin[ENT_PATH_MAX];
    ENT_CHECK(ent_ckpt_attr_text(ck, "config", &text));
    snprintf(origin, sizeof origin, "%.4080s:config", ent_ckpt_path(ck));
    ent_status st = ent_config_load_text(cfg, text, origin, overrides, n_overrides);
    free(text);
    return st;
}

// The stored configuration: a text that must load as a valid configuration.
static ent_status stored_config(ent_ckpt_t *ck, ent_config *cfg) {
    // a damaged file, not a user's mistake (exit code 1, not 2)
    if (ent_config_from_open_checkpoint(ck, cfg, NULL, 0) != ENT_OK)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute 'config' is not a valid configuration: %s",
                        ent_ckpt_path(ck), ent_last_error());
    return ENT_OK;
}

ent_status ent_checkpoint_check(ent_ckpt_t *ck, ent_ckpt_state *out, ent_param_table *table) {
    const char *path = ent_ckpt_path(ck);
    ent_ckpt_state s;
    memset(&s, 0, sizeof s);
    memset(table, 0, sizeof *table);
    ENT_CHECK(stored_config(ck, &s.cfg));
    const ent_config *cfg = &s.cfg;
    const char *said = "the stored configuration (attribute 'config')";
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    // the model: every model.* attribute is what the stored configuration implies
    ENT_CHECK(want_text(ck, "model.architecture", ent_arch_name(shape.arch)));
    const char *keys[] = {"model.layers", "model.heads", "model.width", "model.context",
                          "model.vocab", "model.padded_vocab", "model.parameters"};
    int64_t vals[] = {cfg->layers, cfg->heads, cfg->width, cfg->context, cfg->vocab,
                      shape.padded_vocab, (int64_t)ent_model_shape_num_params(&shape)};
    for (int i = 0; i < 7; i++) ENT_CHECK(want_i64(ck, keys[i], vals[i], said));
    uint64_t u = 0;
    ENT_CHECK(ent_ckpt_attr_u64(ck, "model.shape_hash", &u));
    if (u != ent_model_shape_hash(cfg))
        return ent_fail(ENT_ERR_INPUT, "%s: attribute 'model.shape_hash' is %llu; %s implies %llu",
                        path, (unsigned long long)u, said,
                        (unsigned long long)ent_model_shape_hash(cfg));
    // the step, within the run; AdamW's own update count, within the steps
    // (fewer once an outer loop reset the optimizer)
    ENT_CHECK(in_range(ck, "step", 0, cfg->steps, &s.step));
    if (!ent_ckpt_has_attr(ck, "optim.updates"))
        return ent_fail(ENT_ERR_INPUT, "%s: attribute 'optim.updates' is missing: AdamW's update "
                        "count, apart from 'step' (an earlier entente took the step for it; "
                        "docs/checkpoint.md says how to add it to such a file)", path);
    ENT_CHECK(in_range(ck, "optim.updates", 0, s.step, &s.updates));
    // the data cursor: a step consumes at most MAX_BATCH sequences, and the
    // tokens (consumed x context) must fit in 64 bits
    int64_t most = s.step * MAX_BATCH, fit = INT64_MAX / cfg->context;
    ENT_CHECK(in_range(ck, "data.consumed", 0, most < fit ? most : fit, &s.consumed));
    ENT_CHECK(want_i64(ck, "tokens", s.consumed * cfg->context,
                       "data.consumed x model.context"));
    int64_t nseq = 0, epoch = 0;
    ENT_CHECK(in_range(ck, "data.sequences", 1, INT64_MAX, &nseq));
    ENT_CHECK(in_range(ck, "data.epoch", 0, INT64_MAX, &epoch));
    if (epoch != s.consumed / nseq)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute 'data.epoch' is %lld; data.consumed / "
                        "data.sequences = %lld / %lld says %lld", path, (long long)epoch,
                        (long long)s.consumed, (long long)nseq, (long long)(s.consumed / nseq));
    // the random state: the seed of the stored configuration, and the key derived from it
    ENT_CHECK(ent_ckpt_attr_u64(ck, "rng.train_seed", &u));
    if (u != cfg->seed)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute 'rng.train_seed' is %llu; %s says train.seed "
                        "= %llu", path, (unsigned long long)u, said, (unsigned long long)cfg->seed);
    ENT_CHECK(ent_ckpt_attr_u64(ck, "rng.data_order_key", &u));
    if (u != ent_data_order_key(cfg->seed))
        return ent_fail(ENT_ERR_INPUT, "%s: attribute 'rng.data_order_key' is %llu; train.seed %llu "
                        "gives %llu", path, (unsigned long long)u, (unsigned long long)cfg->seed,
                        (unsigned long long)ent_data_order_key(cfg->seed));
    // the layout that wrote it (for information, but not nonsense)
    int64_t world = 0, dp = 0, tp = 0, zero = 0;
    ENT_CHECK(in_range(ck, "saved_by.world_size", 1, INT_MAX, &world));
    ENT_CHECK(in_range(ck, "saved_by.dp", 1, world, &dp));
    ENT_CHECK(in_range(ck, "saved_by.tp", 1, world, &tp));
    ENT_CHECK(in_range(ck, "saved_by.zero", 0, 1, &zero));
    if (dp * tp != world)
        return ent_fail(ENT_ERR_INPUT, "%s: attributes 'saved_by.dp' x 'saved_by.tp' = %lld x %lld; "
                        "'saved_by.world_size' is %lld", path, (long long)dp, (long long)tp,
                        (long long)world);
    const char *texts[] = {"created", "entente_version", "revision"};
    for (int i = 0; i < 3; i++) ENT_CHECK(want_text(ck, texts[i], NULL));
    ENT_CHECK(ent_param_table_build(&shape, 1, table));
    *out = s;
    return ENT_OK;
}

ent_status ent_checkpoint_expect(ent_ckpt_t *ck, void *ctx, ent_param_table *table) {
    (void)ctx;
    ent_ckpt_state s;
    return ent_checkpoint_check(ck, &s, table);
}
