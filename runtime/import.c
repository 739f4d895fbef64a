// import.c: `entente ckpt import --from DIR --out FILE.h5`: a Hugging Face
// model directory (config.json and safetensors) as an entente checkpoint at
// step 0.
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
#include <time.h>
#include <unistd.h>

enum { CONFIG_MAX = 1 << 20 };

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
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
    ent_status st = ent_fail(ENT_ERR_INPUT, "%s: \"%s\" is %.64s; entente's GPT-2 has %s", path,
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

// Buffers some GPT-2 checkpoints carry beside the weights (the causal mask),
// and the output layer tied to wte: not parameters, skipped.
static int gpt2_skipped(const char *name) {
    size_t n = strlen(name);
    const char *ends[] = {".attn.bias", ".attn.masked_bias"};
    for (int i = 0; i < 2; i++) {
        size_t k = strlen(ends[i]);
        if (n > k && strcmp(name + n - k, ends[i]) == 0) return 1;
    }
    return strcmp(name, "lm_head.weight") == 0;
}

// The stored name of an entente row: GPT2LMHeadModel saves "transformer."
// before it, GPT2Model does not.
static const ent_st_tensor *gpt2_tensor(const ent_st_t *st, const char *row) {
    char prefixed[ENT_ST_NAME_MAX];
    const ent_st_tensor *t = ent_st_find(st, row);
    snprintf(prefixed, sizeof prefixed, "transformer.%s", row);
    const ent_st_tensor *u = ent_st_find(st, prefixed);
    return t != NULL ? t : u;
}

static int is_conv1d(const char *row) {
    const char *ends[] = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                          "mlp.c_proj.weight"};
    size_t n = strlen(row);
    for (int i = 0; i < 4; i++) {
        size_t k = strlen(ends[i]);
        if (n >= k && strcmp(row + n - k, ends[i]) == 0) return 1;
    }
    return 0;
}

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

// Every row of the table from its tensor, each checked against the shape the
// configuration implies, and no tensor left but the skipped ones, before
// anything is read; then the tensors in file order. The time since t0 (the
// arena's allocation) is reported.
static ent_status fill(ent_st_t *st, const char *dir, const ent_param_table *t, int64_t vocab,
                       float *params, double t0, FILE *out) {
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
        const ent_st_tensor *x = gpt2_tensor(st, r->name);
        if (x == NULL) {
            s = ent_fail(ENT_ERR_INPUT, "%s: tensor %s (or transformer.%s) is missing from the "
                         "model's safetensors", dir, r->name, r->name);
            break;
        }
        for (int k = 0; k < n; k++) used[k] |= ent_st_get(st, k) == x;
        int64_t want[2] = {r->shape[0], r->shape[1]};
        if (strcmp(r->name, "wte.weight") == 0) want[0] = vocab; // padding rows: entente's
        if (is_conv1d(r->name)) want[0] = r->shape[1], want[1] = r->shape[0]; // (in, out)
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
        if (!gpt2_skipped(x->name))
            s = ent_fail(ENT_ERR_INPUT, "%s: unexpected tensor %s (not part of GPT-2 as entente "
                         "builds it)", x->file, x->name);
        else if (out != NULL)
            fprintf(out, "skipped %s (%s)\n", x->name,
                    strcmp(x->name, "lm_head.weight") == 0 ? "the output layer is tied to wte"
                                                            : "a buffer, not a parameter");
    }
    double bytes = 0;
    if (s == ENT_OK) qsort(jobs, (size_t)t->nrows, sizeof *jobs, file_order);
    for (int i = 0; i < t->nrows && s == ENT_OK; i++) {
        const job *j = &jobs[i];
        s = ent_st_read(st, j->x, params + j->row->offset, is_conv1d(j->row->name));
        bytes += (double)j->x->numel * (double)ent_dtype_size(j->x->dtype);
    }
    double took = now_seconds() - t0;
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
    else if (strcmp(type->valuestring, "gpt2") != 0)
        s = ent_fail(ENT_ERR_INPUT, "%s: model_type \"%.64s\": this version imports \"gpt2\"",
                     path, type->valuestring);
    if (s == ENT_OK) s = gpt2_config(root, path, text, sizeof text);
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
    // the arena mapped with its pages in place (zero-filled): one fault per
    // 4 KiB page as the reads land cost more than the disk (reads at half of
    // dd's rate); counted in the time the read takes
    size_t arena = sizeof(float) * (t.total ? t.total : 1);
    float *params = NULL;
    double t0 = now_seconds();
    if (s == ENT_OK) {
        void *p = mmap(NULL, arena, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (p == MAP_FAILED) s = ent_fail(ENT_ERR_NOMEM, "out of memory: %zu parameters", t.total);
        else params = p;
    }
    if (s == ENT_OK) s = fill(st, dir, &t, cfg.vocab, params, t0, log);
    ent_st_close(&st);
    if (s == ENT_OK) s = save(out, &cfg, &t, params);
    if (s == ENT_OK && log != NULL)
        fprintf(log, "wrote %s: GPT-2, %d layers, %d heads, width %d, context %d, vocabulary %d "
                "(%zu parameters), step 0\n", out, cfg.layers, cfg.heads, cfg.width, cfg.context,
                cfg.vocab, ent_model_shape_num_params(&shape));
    if (params != NULL) munmap(params, arena);
    ent_param_table_free(&t);
    return s;
}
