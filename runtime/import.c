// import.c: `entente ckpt import --from DIR --out FILE.h5`: a Hugging Face
// model directory (config.json and safetensors; GPT-2 or the Llama family) as
// an entente checkpoint at step 0; and `entente ckpt export`'s config.json
// and layout for each architecture.
//
// config.json gives the model; every setting entente does not implement the
// same way is refused by name rather than imported into a different model.
// The tensors are read one at a time straight into the parameter arena
// (converted to float32, Conv1D weights transposed to entente's (out, in)),
// so the model is held once. The checkpoint holds no AdamW moments: at step
// 0 they are zero, and a resume starts AdamW afresh (docs/open-weights.md).
#include "runtime_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum { CONFIG_MAX = 1 << 20 };

#define ENT_IMPORT_NO_DATA "imported-without-data"

// An integer key of config.json; `fallback`: another name for it (or NULL).
static ent_status config_int(const cJSON *root, const char *path, const char *key,
                             const char *fallback, int64_t lo, int64_t hi, int64_t *v) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (j == NULL && fallback != NULL) j = cJSON_GetObjectItemCaseSensitive(root, key = fallback);
    if (j == NULL) return ent_fail(ENT_ERR_INPUT, "%s: key \"%s\" is missing", path, key);
    double d = cJSON_IsNumber(j) ? j->valuedouble : -1.0;
    if (!cJSON_IsNumber(j) || d != (double)(int64_t)d || d < (double)lo || d > (double)hi)
        return ent_fail(ENT_ERR_INPUT, "%s: \"%s\" must be a whole number in [%lld, %lld]", path,
                        key, (long long)lo, (long long)hi);
    *v = (int64_t)d;
    return ENT_OK;
}

// A key that, when present (and not null), must say what entente does: a
// boolean (want_bool 0 or 1), else the number want_num.
static ent_status config_must(const cJSON *root, const char *path, const char *key, int want_bool,
                              double want_num) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (j == NULL || cJSON_IsNull(j)) return ENT_OK;
    if (want_bool >= 0 ? cJSON_IsBool(j) && cJSON_IsTrue(j) == want_bool
                       : cJSON_IsNumber(j) && j->valuedouble == want_num)
        return ENT_OK;
    char *said = cJSON_PrintUnformatted(j), want[32];
    if (want_bool >= 0) snprintf(want, sizeof want, "%s", want_bool ? "true" : "false");
    else snprintf(want, sizeof want, "%g", want_num);
    ent_status st = ent_fail(ENT_ERR_INPUT, "%s: \"%s\" is %.64s; entente supports only %s", path,
                             key, said != NULL ? said : "?", want);
    free(said);
    return st;
}

// GPT-2's config.json as an entente configuration text.
static ent_status gpt2_config(const cJSON *root, const char *path, char *text, size_t n) {
    int64_t layers = 0, heads = 0, width = 0, context = 0, vocab = 0;
    ENT_CHECK(config_int(root, path, "n_layer", NULL, 1, 1024, &layers));
    ENT_CHECK(config_int(root, path, "n_head", NULL, 1, 1024, &heads));
    ENT_CHECK(config_int(root, path, "n_embd", NULL, 1, 65536, &width));
    ENT_CHECK(config_int(root, path, "n_positions", "n_ctx", 1, 65536, &context));
    ENT_CHECK(config_int(root, path, "vocab_size", NULL, 2, ENT_VOCAB_MAX, &vocab));
    // what entente's GPT-2 computes, and nothing else
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act != NULL && !(cJSON_IsString(act) && (strcmp(act->valuestring, "gelu_new") == 0 ||
                                                  strcmp(act->valuestring, "gelu_pytorch_tanh") == 0)))
        return ent_fail(ENT_ERR_INPUT, "%s: \"activation_function\" is %s; entente's GPT-2 uses "
                        "GELU's tanh form (\"gelu_new\", \"gelu_pytorch_tanh\")", path,
                        cJSON_IsString(act) ? act->valuestring : "not a string");
    ENT_CHECK(config_must(root, path, "layer_norm_epsilon", -1, 1e-5));
    ENT_CHECK(config_must(root, path, "tie_word_embeddings", 1, 0));
    ENT_CHECK(config_must(root, path, "scale_attn_weights", 1, 0));
    ENT_CHECK(config_must(root, path, "scale_attn_by_inverse_layer_idx", 0, 0));
    ENT_CHECK(config_must(root, path, "reorder_and_upcast_attn", 0, 0));
    ENT_CHECK(config_must(root, path, "add_cross_attention", 0, 0));
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (inner != NULL && !cJSON_IsNull(inner) &&
        !(cJSON_IsNumber(inner) && inner->valuedouble == 4.0 * (double)width))
        return ent_fail(ENT_ERR_INPUT, "%s: \"n_inner\" must be null or 4 x n_embd = %lld "
                        "(entente's GPT-2 MLP)", path, (long long)(4 * width));
    // the data is the user's: a resume, eval or sample names it (--config,
    // --set data.dir=..., --data)
    snprintf(text, n, "[model]\nlayers = %lld\nheads = %lld\nwidth = %lld\ncontext = %lld\n"
             "vocab = %lld\n[data]\ndir = %s\n", (long long)layers, (long long)heads,
             (long long)width, (long long)context, (long long)vocab, ENT_IMPORT_NO_DATA);
    return ENT_OK;
}

// A number key of config.json, absent or null: `fallback`.
static ent_status config_num(const cJSON *root, const char *path, const char *key, double fallback,
                             double lo, double hi, double *v) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    *v = fallback;
    if (j == NULL || cJSON_IsNull(j)) return ENT_OK;
    if (!cJSON_IsNumber(j) || !(j->valuedouble > lo && j->valuedouble <= hi))
        return ent_fail(ENT_ERR_INPUT, "%s: \"%s\" must be a number in (%g, %g]", path, key, lo, hi);
    *v = j->valuedouble;
    return ENT_OK;
}

// The context an imported llama trains at unless the user sets model.context:
// its rotary positions have no table, so any context up to what it was
// trained with works.
enum { LLAMA_IMPORT_CONTEXT = 2048 };

// A Llama-family config.json (llama; mistral without a sliding window) as an
// entente configuration text.
static ent_status llama_config(const cJSON *root, const char *path, char *text, size_t n) {
    int64_t layers = 0, heads = 0, width = 0, maxpos = 0, vocab = 0, kv = 0, ffn = 0, hd = 0;
    ENT_CHECK(config_int(root, path, "num_hidden_layers", NULL, 1, 1024, &layers));
    ENT_CHECK(config_int(root, path, "num_attention_heads", NULL, 1, 1024, &heads));
    ENT_CHECK(config_int(root, path, "hidden_size", NULL, 1, 65536, &width));
    ENT_CHECK(config_int(root, path, "intermediate_size", NULL, 1, 1048576, &ffn));
    ENT_CHECK(config_int(root, path, "max_position_embeddings", NULL, 1, INT32_MAX, &maxpos));
    ENT_CHECK(config_int(root, path, "vocab_size", NULL, 2, ENT_VOCAB_MAX, &vocab));
    if (cJSON_GetObjectItemCaseSensitive(root, "num_key_value_heads") == NULL) kv = heads;
    else ENT_CHECK(config_int(root, path, "num_key_value_heads", NULL, 1, 1024, &kv));
    const cJSON *hdj = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (hdj != NULL && !cJSON_IsNull(hdj)) {
        ENT_CHECK(config_int(root, path, "head_dim", NULL, 1, 65536, &hd));
        if (hd * heads != width)
            return ent_fail(ENT_ERR_INPUT, "%s: \"head_dim\" %lld x %lld heads is not hidden_size "
                            "%lld (entente's llama has head_dim = hidden_size / heads)", path,
                            (long long)hd, (long long)heads, (long long)width);
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act != NULL && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0))
        return ent_fail(ENT_ERR_INPUT, "%s: \"hidden_act\" is %s; entente's llama uses \"silu\" "
                        "(SwiGLU)", path, cJSON_IsString(act) ? act->valuestring : "not a string");
    ENT_CHECK(config_must(root, path, "attention_bias", 0, 0));
    ENT_CHECK(config_must(root, path, "mlp_bias", 0, 0));
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    if (sw != NULL && !cJSON_IsNull(sw))
        return ent_fail(ENT_ERR_INPUT, "%s: \"sliding_window\" is set; entente's llama attends "
                        "to the whole context", path);
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    int tied = cJSON_IsTrue(tie);
    if (tie != NULL && !cJSON_IsBool(tie) && !cJSON_IsNull(tie))
        return ent_fail(ENT_ERR_INPUT, "%s: \"tie_word_embeddings\" is not true or false", path);
    double eps = 0, theta = 0;
    ENT_CHECK(config_num(root, path, "rms_norm_eps", 1e-6, 0, 1, &eps));
    ENT_CHECK(config_num(root, path, "rope_theta", 10000, 0, 1e12, &theta));
    char rope[256] = "rope_scaling = none\n";
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (sc != NULL && !cJSON_IsNull(sc)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(sc, "rope_type");
        if (type == NULL) type = cJSON_GetObjectItemCaseSensitive(sc, "type");
        if (!cJSON_IsObject(sc) || !cJSON_IsString(type) || strcmp(type->valuestring, "llama3") != 0)
            return ent_fail(ENT_ERR_INPUT, "%s: \"rope_scaling\" is %s; entente's llama has none "
                            "or Llama 3's (\"rope_type\": \"llama3\")", path,
                            cJSON_IsString(type) ? type->valuestring : "not an object with a type");
        double factor = 0, low = 0, high = 0;
        int64_t orig = 0;
        ENT_CHECK(config_num(sc, path, "factor", -1, 0, 1e6, &factor));
        ENT_CHECK(config_num(sc, path, "low_freq_factor", -1, 0, 1e6, &low));
        ENT_CHECK(config_num(sc, path, "high_freq_factor", -1, 0, 1e6, &high));
        ENT_CHECK(config_int(sc, path, "original_max_position_embeddings", NULL, 1, 16777216, &orig));
        if (factor < 0 || low < 0 || high < 0)
            return ent_fail(ENT_ERR_INPUT, "%s: \"rope_scaling\" needs factor, low_freq_factor and "
                            "high_freq_factor", path);
        snprintf(rope, sizeof rope, "rope_scaling = llama3\nrope_factor = %.17g\n"
                 "rope_low_freq_factor = %.17g\nrope_high_freq_factor = %.17g\n"
                 "rope_original_context = %lld\n", factor, low, high, (long long)orig);
    }
    int64_t context = maxpos < LLAMA_IMPORT_CONTEXT ? maxpos : LLAMA_IMPORT_CONTEXT;
    snprintf(text, n, "[model]\narch = llama\nlayers = %lld\nheads = %lld\nn_kv_heads = %lld\n"
             "width = %lld\nffn_hidden = %lld\ncontext = %lld\nvocab = %lld\n"
             "tie_embeddings = %s\nrms_eps = %.17g\nrope_theta = %.17g\n%s[data]\ndir = %s\n",
             (long long)layers, (long long)heads, (long long)kv, (long long)width, (long long)ffn,
             (long long)context, (long long)vocab, tied ? "true" : "false", eps, theta, rope,
             ENT_IMPORT_NO_DATA);
    return ENT_OK;
}

// How an architecture's rows are found among the stored tensors.
typedef struct {
    const char *name;
    const ent_st_tensor *(*find)(const ent_st_t *st, const char *row);
    int (*transposed)(const char *row);        // stored (in, out): transposed on the way
    int (*vocab_rows)(const char *row);        // entente pads its rows to padded_vocab
    const char *(*skipped)(const char *name, int tied); // why a tensor is not read, or NULL
} arch_map;

static int ends_with(const char *s, const char *end) {
    size_t n = strlen(s), k = strlen(end);
    return n >= k && strcmp(s + n - k, end) == 0;
}

// GPT-2: GPT2LMHeadModel saves "transformer." before the names, GPT2Model
// does not; the four Conv1D weights of a block are stored (in, out); the
// causal-mask buffers some files carry and the output layer tied to wte are
// not parameters.
static const ent_st_tensor *gpt2_find(const ent_st_t *st, const char *row) {
    char prefixed[ENT_ST_NAME_MAX];
    const ent_st_tensor *t = ent_st_find(st, row);
    snprintf(prefixed, sizeof prefixed, "transformer.%s", row);
    return t != NULL ? t : ent_st_find(st, prefixed);
}

static int gpt2_transposed(const char *row) {
    return ends_with(row, "attn.c_attn.weight") || ends_with(row, "attn.c_proj.weight") ||
           ends_with(row, "mlp.c_fc.weight") || ends_with(row, "mlp.c_proj.weight");
}

static int gpt2_vocab_rows(const char *row) { return strcmp(row, "wte.weight") == 0; }

static const char *gpt2_skipped(const char *name, int tied) {
    (void)tied;
    if (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias"))
        return "a buffer, not a parameter";
    return strcmp(name, "lm_head.weight") == 0 ? "the output layer is tied to wte" : NULL;
}

// Llama: the names are entente's, nn.Linear's (out, in) is entente's layout;
// older files carry the rotary frequencies as buffers.
static const ent_st_tensor *llama_find(const ent_st_t *st, const char *row) {
    return ent_st_find(st, row);
}

static int llama_transposed(const char *row) {
    (void)row;
    return 0;
}

static int llama_vocab_rows(const char *row) {
    return strcmp(row, "model.embed_tokens.weight") == 0 || strcmp(row, "lm_head.weight") == 0;
}

static const char *llama_skipped(const char *name, int tied) {
    if (ends_with(name, ".rotary_emb.inv_freq")) return "a buffer, not a parameter";
    return tied && strcmp(name, "lm_head.weight") == 0
               ? "the output layer is tied to model.embed_tokens" : NULL;
}

static const arch_map gpt2_map = {"GPT-2", gpt2_find, gpt2_transposed, gpt2_vocab_rows, gpt2_skipped};
static const arch_map llama_map = {"Llama", llama_find, llama_transposed, llama_vocab_rows,
                                   llama_skipped};

static void shape_text(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t at = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && at < n; d++)
        at += (size_t)snprintf(buf + at, n - at, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (at < n) snprintf(buf + at, n - at, "]");
}

typedef struct {
    const ent_param_row *row;
    const ent_st_tensor *x;
} job;

// In the files' order, so that the disk reads ahead of the import.
static int file_order(const void *a, const void *b) {
    const ent_st_tensor *x = ((const job *)a)->x, *y = ((const job *)b)->x;
    int c = strcmp(x->file, y->file);
    return c != 0 ? c : (x->at > y->at) - (x->at < y->at);
}

// The arena for the parameters, mapped in huge pages, each tensor's part put
// in place (zero-filled) by the fetcher ahead of its read (ent_st_stream,
// ent_populate_big): one fault per 4 KiB page as the reads land cost more
// than the disk (reads at half of dd's rate), populating 4 KiB pages took
// 0.26 s of a 0.7 s read, and huge pages 0.07-0.1 s, which the fetcher now
// takes off the reading thread. Where the hints fail, the pages fault in as
// the reads land.
static ent_status map_arena(size_t bytes, float **out) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return ent_fail(ENT_ERR_NOMEM, "out of memory: %zu parameters", bytes / 4);
    (void)madvise(p, bytes, MADV_HUGEPAGE);
    *out = p;
    return ENT_OK;
}

// Every row of the table from its tensor, each checked against the shape the
// configuration implies, and no tensor left but the skipped ones, before
// anything is read; then the fetcher starts on the tensors in file order,
// the arena (*params, arena bytes) is mapped while it reads, and the
// tensors are read into it. The time since t0 is reported.
static ent_status fill(ent_st_t *st, const arch_map *a, int tied, const char *dir,
                       const ent_param_table *t, int64_t vocab, size_t arena, float **params,
                       double t0, FILE *out) {
    int n = ent_st_count(st);
    char *used = calloc((size_t)n + 1, 1);
    job *jobs = calloc((size_t)t->nrows + 1, sizeof *jobs);
    if (used == NULL || jobs == NULL) {
        free(used);
        free(jobs);
        return ent_fail(ENT_ERR_NOMEM, "out of memory importing");
    }
    ent_status s = ENT_OK;
    for (int i = 0; i < t->nrows && s == ENT_OK; i++) {
        const ent_param_row *r = &t->rows[i];
        const ent_st_tensor *x = a->find(st, r->name);
        if (x == NULL) {
            s = ent_fail(ENT_ERR_INPUT, "%s: tensor %s%s%s%s is missing from the model's "
                         "safetensors", dir, r->name, a == &gpt2_map ? " (or transformer." : "",
                         a == &gpt2_map ? r->name : "", a == &gpt2_map ? ")" : "");
            break;
        }
        for (int k = 0; k < n; k++) used[k] |= ent_st_get(st, k) == x;
        int64_t want[2] = {r->shape[0], r->shape[1]};
        if (a->vocab_rows(r->name)) want[0] = vocab;                          // padding: entente's
        if (a->transposed(r->name)) want[0] = r->shape[1], want[1] = r->shape[0]; // (in, out)
        if (!(x->ndim == r->ndim && x->shape[0] == want[0] && (r->ndim == 1 || x->shape[1] == want[1]))) {
            char got[96], exp[64];
            shape_text(x->shape, x->ndim, got, sizeof got);
            shape_text(want, r->ndim, exp, sizeof exp);
            s = ent_fail(ENT_ERR_INPUT, "%s: tensor %s has shape %s; config.json implies %s",
                         x->file, x->name, got, exp);
        }
        jobs[i] = (job){.row = r, .x = x};
    }
    for (int k = 0; k < n && s == ENT_OK; k++) {
        const ent_st_tensor *x = ent_st_get(st, k);
        if (used[k]) continue;
        const char *why = a->skipped(x->name, tied);
        if (why == NULL)
            s = ent_fail(ENT_ERR_INPUT, "%s: unexpected tensor %s (not part of %s as entente "
                         "builds it)", x->file, x->name, a->name);
        else if (out != NULL)
            fprintf(out, "skipped %s (%s)\n", x->name, why);
    }
    double bytes = 0;
    const ent_st_tensor **order = calloc((size_t)t->nrows + 1, sizeof *order);
    float **dst = calloc((size_t)t->nrows + 1, sizeof *dst);
    if (s == ENT_OK && (order == NULL || dst == NULL)) s = ent_fail(ENT_ERR_NOMEM, "out of memory importing");
    if (s == ENT_OK) s = map_arena(arena, params);
    if (s == ENT_OK) {
        qsort(jobs, (size_t)t->nrows, sizeof *jobs, file_order);
        for (int i = 0; i < t->nrows; i++) {
            order[i] = jobs[i].x;
            dst[i] = *params + jobs[i].row->offset;
        }
        ent_st_stream(st, order, dst, t->nrows);
    }
    free(order); // the stream keeps its own lists
    free(dst);
    for (int i = 0; i < t->nrows && s == ENT_OK; i++) {
        const job *j = &jobs[i];
        s = ent_st_read(st, j->x, *params + j->row->offset, a->transposed(j->row->name));
        bytes += (double)j->x->numel * (double)ent_dtype_size(j->x->dtype);
    }
    double took = ent_now_seconds() - t0;
    if (s == ENT_OK && out != NULL)
        fprintf(out, "read %d tensors (%.1f MiB as stored) in %.2f s: %.0f MiB/s\n", t->nrows,
                bytes / 1048576.0, took, took > 0 ? bytes / 1048576.0 / took : 0.0);
    free(used);
    free(jobs);
    return s;
}

// Saves the parameters as OUT: written in a directory of its own beside OUT
// (the saver commits it there and points that directory's `latest` at it),
// then renamed over nothing into place, so OUT's directory gets no `latest`.
static ent_status save(const char *out, const ent_config *cfg, ent_param_table *t, float *params) {
    ent_comm_t *comm = NULL;
    ent_grid *grid = NULL;
    ent_ckpt_saver_t *saver = NULL;
    ent_run_attrs ra = {0};
    char dir[ENT_PATH_MAX], staged[ENT_PATH_MAX + 16], latest[ENT_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s.import.d", out);
    snprintf(staged, sizeof staged, "%s/import.h5", dir);
    snprintf(latest, sizeof latest, "%s/latest", dir);
    ent_ckpt_library_init(); // before MPI: see ent_ckpt.h
    ent_status s = ent_comm_init_threads(NULL, NULL, 0, &comm);
    if (s == ENT_OK) s = ent_grid_new(comm, 1, &grid);
    ent_run_state rs = {.step = 0, .updates = 0, .consumed = 0, .sequences = 1, .world = 1, .dp = 1,
                        .tp = 1};
    if (s == ENT_OK) s = ent_run_attrs_build(&ra, cfg, &rs);
    ent_ckpt_saver_opts opts = {.dir = dir};
    ent_ckpt_shard sh = {.table = t, .tp_size = 1, .params = params, .write_count = t->total};
    if (s == ENT_OK) s = ent_ckpt_saver_new(grid->world, &opts, &saver);
    if (s == ENT_OK) s = ent_ckpt_saver_check(saver, &sh);
    if (s == ENT_OK) s = ent_ckpt_save(saver, "import.h5", ra.attrs, ra.count, &sh);
    ent_ckpt_saver_free(&saver);
    if (s == ENT_OK && rename(staged, out) != 0)
        s = ent_fail(ENT_ERR_IO, "cannot move %s to %s: %s", staged, out, strerror(errno));
    if (s == ENT_OK) {
        char parent[ENT_PATH_MAX];
        snprintf(parent, sizeof parent, "%s", out);
        char *slash = strrchr(parent, '/');
        if (slash == NULL) snprintf(parent, sizeof parent, ".");
        else if (slash == parent) parent[1] = '\0';
        else *slash = '\0';
        s = ent_fsync_dir(parent);
    }
    unlink(latest);
    unlink(staged);
    rmdir(dir);
    ent_run_attrs_free(&ra);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    return s;
}

ent_status ent_import_hf(const char *dir, const char *out, int force, FILE *log) {
    struct stat sb;
    if (!force && lstat(out, &sb) == 0)
        return ent_fail(ENT_ERR_USAGE, "%s exists; --force replaces it", out);
    char path[ENT_PATH_MAX + 16], text[512 + PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *root = NULL;
    ENT_CHECK(ent_st_read_json(path, CONFIG_MAX, (void **)&root));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    ent_status s = ENT_OK;
    if (!cJSON_IsString(type))
        s = ent_fail(ENT_ERR_INPUT, "%s: no \"model_type\" string", path);
    const arch_map *a = NULL;
    if (s == ENT_OK && strcmp(type->valuestring, "gpt2") == 0) {
        a = &gpt2_map;
        s = gpt2_config(root, path, text, sizeof text);
    } else if (s == ENT_OK && (strcmp(type->valuestring, "llama") == 0 ||
                               strcmp(type->valuestring, "mistral") == 0)) {
        a = &llama_map;
        s = llama_config(root, path, text, sizeof text);
    } else if (s == ENT_OK) {
        s = ent_fail(ENT_ERR_INPUT, "%s: model_type \"%.64s\": this version imports \"gpt2\", "
                     "\"llama\" and \"mistral\" (without a sliding window)", path,
                     type->valuestring);
    }
    cJSON_Delete(root);
    if (s != ENT_OK) return s;
    // the model's own tokenizer, where the directory has one, for sample and
    // eval (a path the configuration's syntax can hold as it is)
    char tok[ENT_PATH_MAX + 16], real[PATH_MAX];
    snprintf(tok, sizeof tok, "%s/tokenizer.json", dir);
    if (access(tok, R_OK) == 0 && realpath(dir, real) != NULL && strcspn(real, ";#\n\r") == strlen(real) &&
        strlen(text) + strlen(real) + 16 < sizeof text) {
        strcat(text, "tokenizer = ");
        strcat(text, real);
        strcat(text, "\n");
    }
    ent_config cfg;
    char origin[ENT_PATH_MAX + 64];
    snprintf(origin, sizeof origin, "%s (as an entente configuration)", path);
    ENT_CHECK(ent_config_load_text(&cfg, text, origin, NULL, 0));

    ent_st_t *st = NULL;
    ENT_CHECK(ent_st_open(dir, &st));
    ent_model_shape shape = ent_model_shape_from_config(&cfg);
    ent_param_table t = {0};
    s = ent_param_table_build(&shape, 1, &t);
    // the checks, mapping the arena and the reads are all counted in the
    // time the read takes
    size_t arena = sizeof(float) * (t.total ? t.total : 1);
    float *params = NULL;
    double t0 = ent_now_seconds();
    if (s == ENT_OK)
        s = fill(st, a, shape.arch == ENT_ARCH_LLAMA && shape.tie_embeddings, dir, &t, cfg.vocab,
                 arena, &params, t0, log);
    ent_st_close(&st);
    if (s == ENT_OK) s = save(out, &cfg, &t, params);
    if (s == ENT_OK && log != NULL)
        fprintf(log, "wrote %s: %s, %d layers, %d heads, width %d, context %d, vocabulary %d "
                "(%zu parameters), step 0\n", out, a->name, cfg.layers, cfg.heads, cfg.width,
                cfg.context, cfg.vocab, ent_model_shape_num_params(&shape));
    if (params != NULL) munmap(params, arena);
    ent_param_table_free(&t);
    return s;
}

// ---------------------------------------------------------------------------
// export: config.json for the architecture, and its layout

static void add_num(cJSON *o, const char *key, double v) { cJSON_AddNumberToObject(o, key, v); }

// config.json as transformers' GPT2LMHeadModel or LlamaForCausalLM reads it.
static char *hf_config_json(const ent_config *cfg) {
    ent_model_shape s = ent_model_shape_from_config(cfg);
    cJSON *o = cJSON_CreateObject(), *archs = cJSON_AddArrayToObject(o, "architectures");
    int llama = s.arch == ENT_ARCH_LLAMA;
    cJSON_AddItemToArray(archs, cJSON_CreateString(llama ? "LlamaForCausalLM" : "GPT2LMHeadModel"));
    cJSON_AddStringToObject(o, "model_type", llama ? "llama" : "gpt2");
    add_num(o, "vocab_size", cfg->vocab);
    if (!llama) {
        add_num(o, "n_positions", cfg->context);
        add_num(o, "n_ctx", cfg->context);
        add_num(o, "n_embd", cfg->width);
        add_num(o, "n_layer", cfg->layers);
        add_num(o, "n_head", cfg->heads);
        cJSON_AddNullToObject(o, "n_inner");
        cJSON_AddStringToObject(o, "activation_function", "gelu_new");
        add_num(o, "layer_norm_epsilon", 1e-5);
        add_num(o, "initializer_range", 0.02);
        add_num(o, "resid_pdrop", 0);
        add_num(o, "embd_pdrop", 0);
        add_num(o, "attn_pdrop", 0);
        cJSON_AddTrueToObject(o, "scale_attn_weights");
        cJSON_AddTrueToObject(o, "tie_word_embeddings");
    } else {
        add_num(o, "hidden_size", cfg->width);
        add_num(o, "intermediate_size", s.ffn_hidden);
        add_num(o, "num_hidden_layers", cfg->layers);
        add_num(o, "num_attention_heads", cfg->heads);
        add_num(o, "num_key_value_heads", s.kv_heads);
        add_num(o, "head_dim", cfg->width / cfg->heads);
        add_num(o, "max_position_embeddings", cfg->context);
        add_num(o, "rms_norm_eps", cfg->rms_eps);
        add_num(o, "rope_theta", cfg->rope_theta);
        if (s.rope.scaling == ENT_ROPE_LLAMA3) {
            cJSON *sc = cJSON_AddObjectToObject(o, "rope_scaling");
            cJSON_AddStringToObject(sc, "rope_type", "llama3");
            add_num(sc, "factor", cfg->rope_factor);
            add_num(sc, "low_freq_factor", cfg->rope_low_freq_factor);
            add_num(sc, "high_freq_factor", cfg->rope_high_freq_factor);
            add_num(sc, "original_max_position_embeddings", cfg->rope_original_context);
        } else {
            cJSON_AddNullToObject(o, "rope_scaling");
        }
        cJSON_AddBoolToObject(o, "tie_word_embeddings", s.tie_embeddings);
        cJSON_AddStringToObject(o, "hidden_act", "silu");
        cJSON_AddFalseToObject(o, "attention_bias");
        cJSON_AddFalseToObject(o, "mlp_bias");
        add_num(o, "initializer_range", 0.02);
    }
    add_num(o, "bos_token_id", cfg->vocab - 1);
    add_num(o, "eos_token_id", cfg->vocab - 1);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

ent_status ent_export_hf(const char *path, const char *outdir, FILE *out) {
    ent_ckpt_t *ck = NULL;
    ent_config cfg;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    ent_status s = ent_config_from_open_checkpoint(ck, &cfg, NULL, 0);
    ent_ckpt_close(&ck);
    if (s != ENT_OK)
        return ent_fail(ENT_ERR_INPUT, "%s: its stored configuration does not load: %s", path,
                        ent_last_error());
    int llama = ent_model_shape_from_config(&cfg).arch == ENT_ARCH_LLAMA;
    char *json = hf_config_json(&cfg);
    if (json == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory exporting %s", path);
    const arch_map *a = llama ? &llama_map : &gpt2_map;
    ent_ckpt_export how = {.config_json = json, .transposed = a->transposed,
                           .vocab_rows = a->vocab_rows};
    s = ent_ckpt_export_safetensors(path, outdir, &how, out);
    cJSON_free(json);
    return s;
}
