// prepare.c: `entente data prepare`, raw files to token shards.
//
// The default tokenizer is byte-level: token = byte value (0..255), and 256
// marks the end of text; each input file is one document, preceded by that
// token. Any bytes are accepted (UTF-8 or not, text or binary). With
// --tokenizer, a BPE tokenizer (tokenizer.c) encodes each file, read whole, and
// its document token comes first. The validation split holds out whole blocks
// spread evenly through the token stream: with fraction f, block i goes to
// validation when floor((i+1) f) > floor(i f), with blocks of
// clamp(total * f / 20, 256, 32768) tokens, so even a small corpus gets about
// twenty validation blocks drawn from its whole length; total counts the
// bytes and the documents (bytes / 4 for BPE, an estimate made before encoding).
//
// Output appears atomically: every shard is written as NAME.tmp and renamed,
// all inputs (regular files only: a FIFO or a device would block or never
// end) are opened before anything is written, and if a write fails the shards
// already written by this run are removed again, with any directory it made.
#include "runtime_impl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *outdir;
    const char *prefix; // "train" or "val"
    size_t shard_tokens;
    int width;  // bytes per token: 2 (version 1 shards) or 4 (version 2)
    void *buf;  // uint16 or uint32 tokens
    size_t len, cap;
    int nwritten;
    size_t total;
    char **written; // paths written so far
} shard_writer;

static ent_status writer_flush(shard_writer *w) {
    if (w->len == 0) return ENT_OK;
    char path[ENT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s_%06d.bin", w->outdir, w->prefix, w->nwritten);
    char **grown = realloc(w->written, sizeof *grown * (size_t)(w->nwritten + 1));
    if (grown == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory writing %s", path);
    w->written = grown;
    w->written[w->nwritten] = NULL;
    ENT_CHECK(w->width == 2 ? ent_shard_write(path, w->buf, w->len)
                            : ent_shard_write_u32(path, w->buf, w->len));
    w->written[w->nwritten++] = strdup(path);
    w->total += w->len;
    w->len = 0;
    return ENT_OK;
}

static ent_status writer_put(shard_writer *w, uint32_t token) {
    if (w->len == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 1 << 16;
        if (cap > w->shard_tokens) cap = w->shard_tokens;
        void *buf = realloc(w->buf, cap * (size_t)w->width);
        if (buf == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory buffering tokens");
        w->buf = buf;
        w->cap = cap;
    }
    if (w->width == 2) ((uint16_t *)w->buf)[w->len++] = (uint16_t)token;
    else ((uint32_t *)w->buf)[w->len++] = token;
    if (w->len == w->shard_tokens) ENT_CHECK(writer_flush(w));
    return ENT_OK;
}

static void writer_remove_outputs(shard_writer *w) {
    for (int i = 0; i < w->nwritten; i++)
        if (w->written[i]) unlink(w->written[i]);
}

static void writer_free(shard_writer *w) {
    for (int i = 0; i < w->nwritten; i++) free(w->written[i]);
    free(w->written);
    free(w->buf);
}

// Was this path written by the writer in this run?
static int writer_wrote(const shard_writer *w, const char *path) {
    for (int i = 0; i < w->nwritten; i++)
        if (w->written[i] && strcmp(w->written[i], path) == 0) return 1;
    return 0;
}

// The first directory of path (path itself or a parent) that does not exist
// yet, into out ("" when path exists): what a failed run removes again.
static void first_missing_dir(const char *path, char *out, size_t n) {
    char buf[ENT_PATH_MAX];
    struct stat st;
    out[0] = '\0';
    if (strlen(path) >= sizeof buf) return;
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (stat(buf, &st) != 0) {
            snprintf(out, n, "%s", buf);
            return;
        }
        *p = saved;
        if (saved == '\0') return;
    }
}

// Removes outdir and its parents up to `created` (first_missing_dir), each only
// if empty: a failed run leaves no directory behind that it made.
static void remove_created_dirs(const char *outdir, const char *created) {
    char buf[ENT_PATH_MAX];
    if (created[0] == '\0' || strlen(outdir) >= sizeof buf) return;
    snprintf(buf, sizeof buf, "%s", outdir);
    while (rmdir(buf) == 0 && strlen(buf) > strlen(created)) {
        char *slash = strrchr(buf, '/');
        if (slash == NULL) return;
        *slash = '\0';
    }
}

// Splits the token stream between the two writers block by block.
typedef struct {
    shard_writer *train, *val;
    double fraction;
    size_t block;
    size_t pos; // tokens routed so far
} splitter;

static ent_status split_put(splitter *s, uint32_t token) {
    size_t i = s->pos++ / s->block;
    int to_val = s->fraction > 0 && floor((double)(i + 1) * s->fraction) > floor((double)i * s->fraction);
    return writer_put(to_val ? s->val : s->train, token);
}

static ent_status split_put_ids(void *ctx, const uint32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) ENT_CHECK(split_put(ctx, ids[i]));
    return ENT_OK;
}

// One input, whole, through the BPE tokenizer; *got gets its bytes.
static ent_status encode_file(ent_tokenizer_t *tok, FILE *f, const char *path, splitter *sp,
                              size_t *got) {
    size_t cap = 1 << 20, n = 0, r;
    char *text = malloc(cap);
    ENT_ALLOC_CHECK(text, "an input file");
    while ((r = fread(text + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n < cap) continue;
        char *grown = cap <= SIZE_MAX / 2 ? realloc(text, cap * 2) : NULL;
        if (grown == NULL) {
            free(text);
            return ent_fail(ENT_ERR_NOMEM, "out of memory reading input %s (more than %zu bytes)",
                            path, n);
        }
        text = grown;
        cap *= 2;
    }
    ent_status st = ENT_OK;
    if (ferror(f)) st = ent_fail(ENT_ERR_IO, "error reading input %s: %s", path, strerror(errno));
    if (st == ENT_OK) st = ent_tokenizer_encode_to(tok, text, n, split_put_ids, sp);
    free(text);
    *got = n;
    return st;
}

ent_status ent_data_prepare(const ent_prepare_args *a, ent_prepare_result *result) {
    if (a->n_inputs < 1) return ent_fail(ENT_ERR_USAGE, "data prepare: no --input given");
    if (!(a->val_fraction >= 0.0 && a->val_fraction <= 0.5))
        return ent_fail(ENT_ERR_USAGE, "data prepare: --val-fraction %g is outside [0, 0.5]",
                        a->val_fraction);
    if (a->shard_tokens < 1 || a->shard_tokens > INT32_MAX)
        return ent_fail(ENT_ERR_USAGE, "data prepare: --shard-tokens must be in 1..%d",
                        INT32_MAX);

    if (a->eot != NULL && a->tokenizer == NULL)
        return ent_fail(ENT_ERR_USAGE, "data prepare: --eot needs --tokenizer");

    // the tokenizer, then every input: a bad one fails before anything is written
    ent_tokenizer_t *tok = NULL;
    uint32_t eot = ENT_TOKEN_EOT, vocab = ENT_BYTE_VOCAB;
    if (a->tokenizer != NULL) {
        ENT_CHECK(ent_tokenizer_load(a->tokenizer, &tok));
        ent_status st = ent_tokenizer_document_token(tok, a->eot, &eot);
        if (st != ENT_OK) {
            ent_tokenizer_free(&tok);
            return st;
        }
        vocab = ent_tokenizer_vocab(tok);
    }
    int width = vocab > 65536 ? 4 : 2;
    ent_status st = ENT_OK;
    FILE **files = calloc((size_t)a->n_inputs, sizeof *files);
    if (files == NULL) {
        ent_tokenizer_free(&tok);
        return ent_fail(ENT_ERR_NOMEM, "out of memory");
    }
    double total = 0, bytes = 0;
    char created[ENT_PATH_MAX] = ""; // the first directory this run creates
    for (int i = 0; i < a->n_inputs; i++) {
        int fd;
        struct stat sb;
        ENT_CHECK_GOTO(ent_open_regular(a->inputs[i], "input", ENT_ERR_INPUT, &fd), close_inputs);
        files[i] = fdopen(fd, "rb");
        if (files[i] == NULL || fstat(fd, &sb) != 0) {
            if (files[i] == NULL) close(fd);
            st = ent_fail(ENT_ERR_IO, "cannot read input %s: %s", a->inputs[i], strerror(errno));
            goto close_inputs;
        }
        total += (tok ? (double)sb.st_size / 4 : (double)sb.st_size) + 1;
        bytes += (double)sb.st_size;
    }
    if (bytes == 0) {
        st = ent_fail(ENT_ERR_INPUT, "empty corpus: the %d input file(s) hold no bytes (first: %s)",
                      a->n_inputs, a->inputs[0]);
        goto close_inputs;
    }

    first_missing_dir(a->outdir, created, sizeof created);
    ENT_CHECK_GOTO(ent_mkdirs(a->outdir), close_inputs);
    char **existing = NULL;
    int nexisting = 0;
    const char *patterns[2] = {"train_*.bin", "val_*.bin"};
    for (int p = 0; p < 2 && !a->force; p++) {
        nexisting = ent_glob_shards(a->outdir, patterns[p], &existing);
        if (nexisting < 0) {
            st = ENT_ERR_IO;
            goto close_inputs;
        }
        if (nexisting > 0) {
            st = ent_fail(ENT_ERR_USAGE,
                          "%s already holds shards (%s, ...): choose an empty directory or "
                          "pass --force to replace them", a->outdir, existing[0]);
            ent_free_paths(existing, nexisting);
            goto close_inputs;
        }
    }

    shard_writer train = {.outdir = a->outdir, .prefix = "train", .shard_tokens = a->shard_tokens,
                          .width = width};
    shard_writer val = {.outdir = a->outdir, .prefix = "val", .shard_tokens = a->shard_tokens,
                        .width = width};
    double block = total * a->val_fraction / 20.0;
    splitter sp = {
        .train = &train,
        .val = &val,
        .fraction = a->val_fraction,
        .block = (size_t)(block < 256 ? 256 : block > 32768 ? 32768 : block),
    };
    size_t payload = 0;
    unsigned char chunk[1 << 16];
    for (int i = 0; i < a->n_inputs; i++) {
        ENT_CHECK_GOTO(split_put(&sp, eot), fail);
        size_t got = 0;
        if (tok != NULL) {
            ENT_CHECK_GOTO(encode_file(tok, files[i], a->inputs[i], &sp, &got), fail);
            payload += got;
            continue;
        }
        while ((got = fread(chunk, 1, sizeof chunk, files[i])) > 0) {
            payload += got;
            for (size_t k = 0; k < got; k++) ENT_CHECK_GOTO(split_put(&sp, chunk[k]), fail);
        }
        if (ferror(files[i])) {
            st = ent_fail(ENT_ERR_IO, "error reading input %s: %s", a->inputs[i], strerror(errno));
            goto fail;
        }
    }
    if (payload == 0) { // the inputs were emptied since they were opened
        st = ent_fail(ENT_ERR_INPUT, "empty corpus: the %d input file(s) hold no bytes (first: %s)",
                      a->n_inputs, a->inputs[0]);
        goto fail;
    }
    ENT_CHECK_GOTO(writer_flush(&train), fail);
    ENT_CHECK_GOTO(writer_flush(&val), fail);

    // with --force, shards of an earlier preparation that were not overwritten go
    for (int p = 0; p < 2 && a->force; p++) {
        nexisting = ent_glob_shards(a->outdir, patterns[p], &existing);
        for (int k = 0; k < nexisting; k++)
            if (!writer_wrote(&train, existing[k]) && !writer_wrote(&val, existing[k]))
                unlink(existing[k]);
        ent_free_paths(existing, nexisting);
    }
    if (result)
        *result = (ent_prepare_result){.train_tokens = train.total, .val_tokens = val.total,
                                       .vocab = vocab, .token_bytes = width};
    writer_free(&train);
    writer_free(&val);
    goto close_inputs;

fail:
    writer_remove_outputs(&train);
    writer_remove_outputs(&val);
    writer_free(&train);
    writer_free(&val);
close_inputs:
    if (st != ENT_OK) remove_created_dirs(a->outdir, created);
    for (int i = 0; i < a->n_inputs; i++)
        if (files[i]) fclose(files[i]);
    free(files);
    ent_tokenizer_free(&tok);
    return st;
}
