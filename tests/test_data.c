// test_data.c: data preparation, token shards, the dataset view and its cursor.
//
//  - prepare: every input byte becomes one token and every input one end-of-text
//    token (counts and histograms), the validation share is the requested
//    fraction within one block and spread through the stream, shards split at
//    shard_tokens with consecutive names, errors leave no shard behind, --force
//    replaces an earlier preparation;
//  - shards: each malformed file (magic, version, size, token ids, none found,
//    too short) is refused with ENT_ERR_INPUT and its path; shards written by
//    another tool in llm.c's layout (GPT-2 vocabulary) read back as written;
//    version 2 (uint32 tokens) reads back, checks ids and takes the same
//    seeded corruption as version 1;
//  - sequences: targets are the inputs shifted by one, sequences never cross a
//    shard boundary, (ntokens - 1) / T of them per shard;
//  - order: the permutation is a deterministic bijection that changes with the
//    epoch and the seed; the cursor splits a global batch between ranks and
//    visits every sequence once per epoch.
// Inputs are fresh random bytes on every run (ENT_TEST_SEED=... reproduces one).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ent_runtime.h"
#include "ref.h"

static char root[64]; // every test works in a folder under it; teardown removes it

static int setup(void **state) {
    (void)state;
    return test_tmpdir_create(root, sizeof root, "data");
}

static int teardown(void **state) {
    (void)state;
    return test_tree_remove(root);
}

// root/name (created unless create is 0) into path
static void folder(char *path, size_t n, const char *name, int create) {
    snprintf(path, n, "%s/%s", root, name);
    if (create) assert_int_equal(mkdir(path, 0755), 0);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

// Whole file into memory; the caller frees it.
static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) fail_msg("cannot open %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    assert_true(len >= 0);
    rewind(f);
    unsigned char *buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

// Writes a shard by hand in llm.c's layout: int32 header[256], uint16 tokens.
static void write_raw_shard(const char *path, int32_t magic, int32_t version, int32_t announced,
                            const uint16_t *tokens, size_t ntokens) {
    int32_t header[ENT_SHARD_HEADER_INTS] = {0};
    header[0] = magic;
    header[1] = version;
    header[2] = announced;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(header, sizeof(int32_t), ENT_SHARD_HEADER_INTS, f), ENT_SHARD_HEADER_INTS);
    if (ntokens) assert_int_equal(fwrite(tokens, sizeof(uint16_t), ntokens, f), ntokens);
    assert_int_equal(fclose(f), 0);
}

// Reads a shard by hand (not through the library): checks the header, returns the tokens.
static uint16_t *read_shard(const char *path, size_t *ntokens) {
    size_t n;
    unsigned char *buf = read_bytes(path, &n);
    assert_true(n >= ENT_SHARD_HEADER_INTS * sizeof(int32_t));
    int32_t header[ENT_SHARD_HEADER_INTS];
    memcpy(header, buf, sizeof header);
    assert_int_equal(header[0], ENT_SHARD_MAGIC);
    assert_int_equal(header[1], ENT_SHARD_VERSION);
    size_t count = (size_t)header[2];
    assert_int_equal(n, sizeof header + count * sizeof(uint16_t));
    for (int i = 3; i < ENT_SHARD_HEADER_INTS; i++) assert_int_equal(header[i], 0);
    uint16_t *tok = malloc(count * sizeof(uint16_t) + 2);
    assert_non_null(tok);
    memcpy(tok, buf + sizeof header, count * sizeof(uint16_t));
    free(buf);
    *ntokens = count;
    return tok;
}

// Files in dir matching pattern, sorted (glob's order); frees with globfree.
static size_t list_files(const char *dir, const char *pattern, glob_t *g) {
    char full[512];
    snprintf(full, sizeof full, "%s/%s", dir, pattern);
    int rc = glob(full, 0, NULL, g);
    if (rc == GLOB_NOMATCH) return 0;
    assert_int_equal(rc, 0);
    return g->gl_pathc;
}

static size_t count_files(const char *dir, const char *pattern) {
    glob_t g;
    size_t n = list_files(dir, pattern, &g);
    if (n) globfree(&g);
    return n;
}

// Every shard of one prefix (train/val) in dir, concatenated in name order; checks
// that the names are PREFIX_000000.bin, PREFIX_000001.bin, ... and each holds at most
// max_tokens (when nonzero). *nshards gets their count.
static uint16_t *read_split(const char *dir, const char *prefix, size_t max_tokens, size_t *ntokens,
                            size_t *nshards) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "%s_*.bin", prefix);
    glob_t g;
    size_t n = list_files(dir, pattern, &g), total = 0;
    uint16_t *all = malloc(2);
    assert_non_null(all);
    for (size_t i = 0; i < n; i++) {
        char want[512];
        snprintf(want, sizeof want, "%s/%s_%06zu.bin", dir, prefix, i);
        if (strcmp(g.gl_pathv[i], want) != 0) fail_msg("shard %zu is %s, expected %s", i, g.gl_pathv[i], want);
        size_t count, checked = 0;
        uint16_t *tok = read_shard(g.gl_pathv[i], &count);
        assert_int_equal(ent_shard_check_header(g.gl_pathv[i], &checked), ENT_OK);
        assert_int_equal(checked, count);
        assert_true(count > 0);
        if (max_tokens && count > max_tokens) fail_msg("%s holds %zu tokens, more than %zu", want, count, max_tokens);
        all = realloc(all, (total + count) * sizeof(uint16_t) + 2);
        assert_non_null(all);
        memcpy(all + total, tok, count * sizeof(uint16_t));
        total += count;
        free(tok);
    }
    if (n) globfree(&g);
    *ntokens = total;
    *nshards = n;
    return all;
}

// ---------------------------------------------------------------------------
// prepare

typedef struct {
    char bin[256], text[256];         // the two input files
    unsigned char *bin_data, *text_data;
    size_t bin_len, text_len;
} corpus;

// A random binary file holding every byte value (a shuffled 0..255, then bytes
// >= 128), and a random text file of printable ASCII and newlines.
static void make_corpus(corpus *c, const char *dir, size_t bin_len, size_t text_len) {
    snprintf(c->bin, sizeof c->bin, "%s/blob.bin", dir);
    snprintf(c->text, sizeof c->text, "%s/story.txt", dir);
    c->bin_len = bin_len;
    c->text_len = text_len;
    c->bin_data = malloc(bin_len);
    c->text_data = malloc(text_len);
    assert_non_null(c->bin_data);
    assert_non_null(c->text_data);
    for (size_t i = 0; i < 256; i++) c->bin_data[i] = (unsigned char)i;
    for (size_t i = 255; i > 0; i--) {
        size_t j = (size_t)test_rand_int(0, (int64_t)i);
        unsigned char t = c->bin_data[i];
        c->bin_data[i] = c->bin_data[j];
        c->bin_data[j] = t;
    }
    for (size_t i = 256; i < bin_len; i++) c->bin_data[i] = (unsigned char)test_rand_int(128, 255);
    for (size_t i = 0; i < text_len; i++)
        c->text_data[i] = test_rand_int(0, 40) == 0 ? '\n' : (unsigned char)test_rand_int(32, 126);
    write_bytes(c->bin, c->bin_data, bin_len);
    write_bytes(c->text, c->text_data, text_len);
}

static void free_corpus(corpus *c) {
    free(c->bin_data);
    free(c->text_data);
}

// The token stream the byte tokenizer must produce: EOT, bin, EOT, text.
static uint16_t *expected_stream(const corpus *c, size_t *n) {
    *n = c->bin_len + c->text_len + 2;
    uint16_t *s = malloc(*n * sizeof(uint16_t));
    assert_non_null(s);
    size_t k = 0;
    s[k++] = ENT_TOKEN_EOT;
    for (size_t i = 0; i < c->bin_len; i++) s[k++] = c->bin_data[i];
    s[k++] = ENT_TOKEN_EOT;
    for (size_t i = 0; i < c->text_len; i++) s[k++] = c->text_data[i];
    return s;
}

// Is a[0..na) a subsequence of b[0..nb)?
static int is_subsequence(const uint16_t *a, size_t na, const uint16_t *b, size_t nb) {
    size_t i = 0;
    for (size_t j = 0; j < nb && i < na; j++)
        if (a[i] == b[j]) i++;
    return i == na;
}

static ent_status prepare(const corpus *c, const char *outdir, double val_fraction,
                          size_t shard_tokens, int force, size_t *train, size_t *val) {
    const char *inputs[2] = {c->bin, c->text};
    ent_prepare_args a = {.inputs = inputs, .n_inputs = 2, .outdir = outdir,
                          .val_fraction = val_fraction, .shard_tokens = shard_tokens, .force = force};
    ent_prepare_result r;
    ent_status st = ent_data_prepare(&a, &r);
    if (st == ENT_OK && train) *train = r.train_tokens;
    if (st == ENT_OK && val) *val = r.val_tokens;
    return st;
}

static void test_prepare_counts(void **state) {
    (void)state;
    test_reseed(1);
    char dir[128], out[256];
    folder(dir, sizeof dir, "prepare_counts", 1);
    for (int trial = 0; trial < 4; trial++) {
        corpus c;
        make_corpus(&c, dir, (size_t)test_rand_int(20000, 40000), (size_t)test_rand_int(20000, 40000));
        snprintf(out, sizeof out, "%s/out%d", dir, trial);
        double f = trial == 0 ? 0.5 : 0.05 + 0.25 * test_uniform();
        size_t train = 0, val = 0;
        ent_status st = prepare(&c, out, f, 1 << 20, 0, &train, &val);
        if (st != ENT_OK) fail_msg("%s", ent_last_error());

        size_t ntrain, nval, strain, sval;
        uint16_t *tt = read_split(out, "train", 0, &ntrain, &strain);
        uint16_t *vt = read_split(out, "val", 0, &nval, &sval);
        assert_int_equal(ntrain, train);
        assert_int_equal(nval, val);
        assert_int_equal(count_files(out, "*"), strain + sval); // nothing else, no .tmp
        // every byte once, every input one end-of-text token
        size_t total = c.bin_len + c.text_len + 2;
        assert_int_equal(ntrain + nval, total);
        size_t want[257] = {0}, got[257] = {0};
        for (size_t i = 0; i < c.bin_len; i++) want[c.bin_data[i]]++;
        for (size_t i = 0; i < c.text_len; i++) want[c.text_data[i]]++;
        want[ENT_TOKEN_EOT] = 2;
        for (size_t i = 0; i < ntrain; i++) got[tt[i]]++;
        for (size_t i = 0; i < nval; i++) got[vt[i]]++;
        for (int v = 0; v < 257; v++)
            if (got[v] != want[v]) fail_msg("token %d: %zu in the shards, %zu in the inputs", v, got[v], want[v]);
        // the val share: floor(m f) of the m whole blocks, plus at most the last partial one
        double block = fmin(fmax(total * f / 20.0, 256.0), 32768.0);
        double dev = fabs((double)nval - f * (double)total);
        if (dev > block * (1.0 + f))
            fail_msg("%zu val tokens of %zu, fraction %.3f: off by %.0f, more than a block (%.0f)", nval,
                     total, f, dev, block);
        // spread through the stream: val holds bytes of the binary file (>= 128) and
        // of the text file (ASCII beyond the 128 the binary file holds)
        size_t high = 0, ascii = 0;
        for (size_t i = 0; i < nval; i++) {
            if (vt[i] >= 128 && vt[i] < 256) high++;
            if (vt[i] < 128) ascii++;
        }
        if (high == 0 || ascii <= 128) fail_msg("val is not spread over both inputs: %zu high, %zu ASCII", high, ascii);
        // train and val each keep the order of the token stream
        size_t n;
        uint16_t *s = expected_stream(&c, &n);
        if (!is_subsequence(tt, ntrain, s, n)) fail_msg("train tokens are not in stream order");
        if (!is_subsequence(vt, nval, s, n)) fail_msg("val tokens are not in stream order");
        free(s);
        free(tt);
        free(vt);
        free_corpus(&c);
    }
}

static void test_prepare_no_val(void **state) {
    (void)state;
    test_reseed(2);
    char dir[128], out[256];
    folder(dir, sizeof dir, "prepare_noval", 1);
    corpus c;
    make_corpus(&c, dir, (size_t)test_rand_int(300, 5000), (size_t)test_rand_int(1, 5000));
    snprintf(out, sizeof out, "%s/out", dir);
    size_t train = 0, val = 99;
    assert_int_equal(prepare(&c, out, 0.0, 1 << 20, 0, &train, &val), ENT_OK);
    assert_int_equal(val, 0);
    assert_int_equal(count_files(out, "val*"), 0);
    // everything in train, in order: EOT, the binary file, EOT, the text
    size_t n, ntrain, nshards;
    uint16_t *s = expected_stream(&c, &n), *tt = read_split(out, "train", 0, &ntrain, &nshards);
    assert_int_equal(ntrain, n);
    assert_int_equal(train, n);
    assert_int_equal(nshards, 1);
    assert_memory_equal(tt, s, n * sizeof(uint16_t));
    free(s);
    free(tt);
    free_corpus(&c);
}

static void test_prepare_shard_split(void **state) {
    (void)state;
    test_reseed(3);
    char dir[128], big[256], small[256];
    folder(dir, sizeof dir, "prepare_split", 1);
    corpus c;
    make_corpus(&c, dir, (size_t)test_rand_int(3000, 6000), (size_t)test_rand_int(2000, 6000));
    snprintf(big, sizeof big, "%s/big", dir);
    snprintf(small, sizeof small, "%s/small", dir);
    double f = 0.1 + 0.2 * test_uniform();
    size_t shard_tokens = (size_t)test_rand_int(100, 900);
    size_t train1, val1, train2, val2;
    assert_int_equal(prepare(&c, big, f, 1 << 20, 0, &train1, &val1), ENT_OK);
    assert_int_equal(prepare(&c, small, f, shard_tokens, 0, &train2, &val2), ENT_OK);
    // shard size does not change the split, only where the files end
    assert_int_equal(train1, train2);
    assert_int_equal(val1, val2);
    size_t n1, n2, s1, s2, nv1, nv2;
    uint16_t *t1 = read_split(big, "train", 0, &n1, &s1), *t2 = read_split(small, "train", shard_tokens, &n2, &s2);
    uint16_t *v1 = read_split(big, "val", 0, &nv1, &s1), *v2 = read_split(small, "val", shard_tokens, &nv2, &s2);
    assert_int_equal(n1, n2);
    assert_memory_equal(t1, t2, n1 * sizeof(uint16_t));
    assert_int_equal(nv1, nv2);
    assert_memory_equal(v1, v2, nv1 * sizeof(uint16_t));
    if (count_files(small, "train_*.bin") < 3)
        fail_msg("%zu train tokens in shards of %zu: only %zu shards", n2, shard_tokens,
                 count_files(small, "train_*.bin"));
    assert_int_equal(count_files(small, "*"), count_files(small, "*.bin"));
    free(t1);
    free(t2);
    free(v1);
    free(v2);
    free_corpus(&c);
}

static void expect_error(ent_status st, ent_status want, const char *w1, const char *w2, const char *w3) {
    const char *msg = ent_last_error();
    if (st != want) fail_msg("status %d, expected %d (message: %s)", (int)st, (int)want, msg);
    const char *words[3] = {w1, w2, w3};
    for (int i = 0; i < 3; i++)
        if (words[i] && strstr(msg, words[i]) == NULL) fail_msg("message does not name '%s': %s", words[i], msg);
}

static void test_prepare_errors(void **state) {
    (void)state;
    test_reseed(4);
    char dir[128], out[256], empty[256], missing[256];
    folder(dir, sizeof dir, "prepare_errors", 1);
    corpus c;
    make_corpus(&c, dir, 2000, 1000);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(empty, sizeof empty, "%s/empty.txt", dir);
    snprintf(missing, sizeof missing, "%s/no-such-input.txt", dir);
    write_bytes(empty, "", 0);

    // an empty corpus: even with one-token shards (the end-of-text token already
    // written) nothing stays behind
    const char *just_empty[1] = {empty};
    ent_prepare_args a = {.inputs = just_empty, .n_inputs = 1, .outdir = out, .val_fraction = 0.1,
                          .shard_tokens = 1};
    ent_status st = ent_data_prepare(&a, NULL);
    assert_int_not_equal(st, ENT_OK);
    expect_error(st, st, "empty", NULL, NULL);
    assert_int_equal(count_files(out, "*"), 0);

    // a missing input, after a good one: named, nothing written
    const char *with_missing[2] = {c.bin, missing};
    a.inputs = with_missing;
    a.n_inputs = 2;
    a.shard_tokens = 100;
    st = ent_data_prepare(&a, NULL);
    assert_int_not_equal(st, ENT_OK);
    expect_error(st, st, missing, NULL, NULL);
    assert_int_equal(count_files(out, "*"), 0);

    // val_fraction outside [0, 0.5]
    double bad[] = {-0.01, 0.51, 1.0, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        st = prepare(&c, out, bad[i], 1000, 0, NULL, NULL);
        if (st != ENT_ERR_USAGE) fail_msg("val_fraction %g: status %d", bad[i], (int)st);
        assert_int_equal(count_files(out, "*"), 0);
    }
    // shard_tokens 0
    assert_int_equal(prepare(&c, out, 0.1, 0, 0, NULL, NULL), ENT_ERR_USAGE);
    assert_int_equal(count_files(out, "*"), 0);
    free_corpus(&c);
}

static void test_prepare_force(void **state) {
    (void)state;
    test_reseed(5);
    char dir[128], out[256];
    folder(dir, sizeof dir, "prepare_force", 1);
    corpus c;
    make_corpus(&c, dir, (size_t)test_rand_int(2000, 4000), (size_t)test_rand_int(1000, 3000));
    snprintf(out, sizeof out, "%s/out", dir);
    // a first preparation: many small shards
    assert_int_equal(prepare(&c, out, 0.2, 300, 0, NULL, NULL), ENT_OK);
    glob_t g;
    size_t nold = list_files(out, "*", &g);
    assert_true(nold > 4 && count_files(out, "val_*.bin") > 0);
    unsigned char **before = calloc(nold, sizeof *before);
    size_t *lens = calloc(nold, sizeof *lens);
    for (size_t i = 0; i < nold; i++) before[i] = read_bytes(g.gl_pathv[i], &lens[i]);

    // without force: refused, the old shards untouched
    ent_status st = prepare(&c, out, 0.0, 1 << 20, 0, NULL, NULL);
    assert_int_not_equal(st, ENT_OK);
    expect_error(st, st, out, NULL, NULL);
    assert_int_equal(count_files(out, "*"), nold);
    for (size_t i = 0; i < nold; i++) {
        size_t n;
        unsigned char *now = read_bytes(g.gl_pathv[i], &n);
        assert_int_equal(n, lens[i]);
        assert_memory_equal(now, before[i], n);
        free(now);
        free(before[i]);
    }
    free(before);
    free(lens);
    globfree(&g);

    // a val shard alone also counts as an earlier preparation
    char lone[256], lone_shard[300];
    snprintf(lone, sizeof lone, "%s/lone", dir);
    assert_int_equal(mkdir(lone, 0755), 0);
    snprintf(lone_shard, sizeof lone_shard, "%s/val_000000.bin", lone);
    uint16_t few[3] = {1, 2, 3};
    assert_int_equal(ent_shard_write(lone_shard, few, 3), ENT_OK);
    assert_int_not_equal(prepare(&c, lone, 0.1, 1000, 0, NULL, NULL), ENT_OK);
    assert_int_equal(count_files(lone, "*"), 1);

    // with force: one train shard, every old one gone, the new content in it
    size_t train, val;
    st = prepare(&c, out, 0.0, 1 << 20, 1, &train, &val);
    if (st != ENT_OK) fail_msg("%s", ent_last_error());
    assert_int_equal(count_files(out, "*"), 1);
    size_t n, ntrain, nshards;
    uint16_t *s = expected_stream(&c, &n), *tt = read_split(out, "train", 0, &ntrain, &nshards);
    assert_int_equal(ntrain, n);
    assert_memory_equal(tt, s, n * sizeof(uint16_t));
    free(s);
    free(tt);
    free_corpus(&c);
}

// ---------------------------------------------------------------------------
// shard validation

// Opening the shards of dir matching name (a glob) fails for the file `bad` (name
// when NULL), with ENT_ERR_INPUT, its path and the words w2, w3 in the message.
static void expect_bad_shard_in(const char *dir, const char *name, const char *bad, int vocab, int T,
                                const char *w2, const char *w3) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, bad ? bad : name);
    ent_dataset_t *d = (ent_dataset_t *)&d; // must come back NULL
    ent_status st = ent_dataset_open(dir, name, vocab, T, &d);
    expect_error(st, ENT_ERR_INPUT, path, w2, w3);
    assert_null(d);
}

static void expect_bad_shard(const char *dir, const char *name, int vocab, int T, const char *w2,
                             const char *w3) {
    expect_bad_shard_in(dir, name, NULL, vocab, T, w2, w3);
}

static void test_shard_validation(void **state) {
    (void)state;
    test_reseed(6);
    char dir[128], path[512], w[64], w2[64];
    folder(dir, sizeof dir, "bad_shards", 1);
    size_t n = (size_t)test_rand_int(100, 2000), got;
    uint16_t *tok = malloc((n + 8) * sizeof(uint16_t));
    for (size_t i = 0; i < n + 8; i++) tok[i] = (uint16_t)test_rand_int(0, ENT_BYTE_VOCAB - 1);

    // a good one first: header count, readable
    snprintf(path, sizeof path, "%s/good.bin", dir);
    assert_int_equal(ent_shard_write(path, tok, n), ENT_OK);
    assert_int_equal(ent_shard_check_header(path, &got), ENT_OK);
    assert_int_equal(got, n);
    ent_dataset_t *d = NULL;
    assert_int_equal(ent_dataset_open(dir, "good.bin", ENT_BYTE_VOCAB, 8, &d), ENT_OK);
    assert_int_equal(ent_dataset_num_tokens(d), n);
    ent_dataset_close(&d);
    assert_null(d);

    struct {
        const char *name;
        int32_t magic, version, announced;
        size_t ntok;
        const char *word;
    } bad[] = {
        {"magic.bin", 20240521, 1, (int32_t)n, n, NULL},
        {"magic0.bin", 0, 1, (int32_t)n, n, NULL},
        {"version.bin", ENT_SHARD_MAGIC, 37, (int32_t)n, n, "37"},
        {"version0.bin", ENT_SHARD_MAGIC, 0, (int32_t)n, n, NULL},
        {"truncated.bin", ENT_SHARD_MAGIC, 1, (int32_t)n + 5, n, NULL},
        {"negative.bin", ENT_SHARD_MAGIC, 1, -1, n, NULL},
        {"trailing.bin", ENT_SHARD_MAGIC, 1, (int32_t)n, n + 1, NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, bad[i].name);
        write_raw_shard(path, bad[i].magic, bad[i].version, bad[i].announced, tok, bad[i].ntok);
        expect_error(ent_shard_check_header(path, &got), ENT_ERR_INPUT, path, bad[i].word, NULL);
        expect_bad_shard(dir, bad[i].name, ENT_BYTE_VOCAB, 8, bad[i].word, NULL);
    }
    // the version message names the version seen and the one supported
    snprintf(w, sizeof w, "version %d", ENT_SHARD_VERSION);
    snprintf(path, sizeof path, "%s/version.bin", dir);
    expect_error(ent_shard_check_header(path, &got), ENT_ERR_INPUT, path, "37", w);

    // one odd byte after the tokens
    snprintf(path, sizeof path, "%s/oddbyte.bin", dir);
    {
        size_t len;
        char good[512];
        snprintf(good, sizeof good, "%s/good.bin", dir);
        unsigned char *b = read_bytes(good, &len);
        b[len] = 0x7f;
        write_bytes(path, b, len + 1);
        free(b);
    }
    expect_error(ent_shard_check_header(path, &got), ENT_ERR_INPUT, path, NULL, NULL);
    expect_bad_shard(dir, "oddbyte.bin", ENT_BYTE_VOCAB, 8, NULL, NULL);

    // shorter than the 1024-byte header (an empty file too)
    size_t shorts[] = {0, 4, 1023};
    for (size_t i = 0; i < 3; i++) {
        unsigned char junk[1024];
        int32_t magic = ENT_SHARD_MAGIC;
        memset(junk, 0, sizeof junk);
        memcpy(junk, &magic, sizeof magic);
        snprintf(path, sizeof path, "%s/short.bin", dir);
        write_bytes(path, junk, shorts[i]);
        expect_error(ent_shard_check_header(path, &got), ENT_ERR_INPUT, path, NULL, NULL);
        expect_bad_shard(dir, "short.bin", ENT_BYTE_VOCAB, 8, NULL, NULL);
    }

    // a token id >= vocab: the message names the id and its position; vocab - 1 is fine
    int vocab = (int)test_rand_int(300, 60000);
    size_t pos = (size_t)test_rand_int(0, (int64_t)n - 1);
    uint16_t bad_id = (uint16_t)test_rand_int(vocab, 65535);
    uint16_t *t2 = malloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) t2[i] = (uint16_t)test_rand_int(0, vocab - 1);
    t2[test_rand_int(0, (int64_t)n - 1)] = (uint16_t)(vocab - 1);
    snprintf(path, sizeof path, "%s/vocab_a_ok.bin", dir);
    assert_int_equal(ent_shard_write(path, t2, n), ENT_OK);
    assert_int_equal(ent_dataset_open(dir, "vocab_a_ok.bin", vocab, 8, &d), ENT_OK);
    ent_dataset_close(&d);
    // exactly vocab is already outside
    t2[pos] = (uint16_t)vocab;
    snprintf(path, sizeof path, "%s/vocab_edge.bin", dir);
    assert_int_equal(ent_shard_write(path, t2, n), ENT_OK);
    snprintf(w, sizeof w, " %d ", vocab);
    snprintf(w2, sizeof w2, "position %zu ", pos);
    expect_bad_shard(dir, "vocab_edge.bin", vocab, 8, w, w2);
    t2[pos] = bad_id;
    if (pos + 1 < n) t2[pos + 1] = (uint16_t)vocab; // a later bad one is not the first
    snprintf(path, sizeof path, "%s/vocab_b_bad.bin", dir);
    assert_int_equal(ent_shard_write(path, t2, n), ENT_OK);
    snprintf(w, sizeof w, " %u ", bad_id);
    snprintf(w2, sizeof w2, "position %zu ", pos);
    expect_bad_shard(dir, "vocab_b_bad.bin", vocab, 8, w, w2);
    // a bad shard after good ones fails the whole open
    expect_bad_shard_in(dir, "vocab_*.bin", "vocab_b_bad.bin", vocab, 8, w, w2);
    free(t2);

    // no shard matches; the data directory does not exist
    ent_status st = ent_dataset_open(dir, "*nothing*.bin", ENT_BYTE_VOCAB, 8, &d);
    expect_error(st, ENT_ERR_INPUT, dir, NULL, NULL);
    assert_null(d);
    char nodir[300];
    snprintf(nodir, sizeof nodir, "%s/no-such-dir", dir);
    st = ent_dataset_open(nodir, "*.bin", ENT_BYTE_VOCAB, 8, &d);
    expect_error(st, ENT_ERR_INPUT, nodir, NULL, NULL);
    assert_null(d);

    // too short for one sequence of T + 1 tokens: T tokens, even in two shards
    int T = (int)test_rand_int(4, 64);
    snprintf(path, sizeof path, "%s/tiny_a.bin", dir);
    assert_int_equal(ent_shard_write(path, tok, (size_t)T), ENT_OK);
    snprintf(path, sizeof path, "%s/tiny_b.bin", dir);
    assert_int_equal(ent_shard_write(path, tok, (size_t)T), ENT_OK);
    st = ent_dataset_open(dir, "tiny_*.bin", ENT_BYTE_VOCAB, T, &d);
    expect_error(st, ENT_ERR_INPUT, dir, NULL, NULL);
    assert_null(d);
    // T + 1 tokens make one sequence
    snprintf(path, sizeof path, "%s/tiny_c.bin", dir);
    assert_int_equal(ent_shard_write(path, tok, (size_t)T + 1), ENT_OK);
    assert_int_equal(ent_dataset_open(dir, "tiny_*.bin", ENT_BYTE_VOCAB, T, &d), ENT_OK);
    assert_int_equal(ent_dataset_num_sequences(d), 1);
    assert_int_equal(ent_dataset_num_shards(d), 3);
    ent_dataset_close(&d);
    free(tok);
}

// Shards written by another tool (llm.c's tokenizer scripts) in the same layout.
// Seeded random corruption of every byte of a shard's header, of random byte
// ranges, and truncations and extensions at random lengths: each either opens
// as the same data (a byte of the unused header words) or fails with
// ENT_ERR_INPUT naming the shard; never a crash, a hang or other data.
static void expect_corrupt_outcome(const char *dir, const char *path, const unsigned char *good,
                                   const unsigned char *bytes, size_t len, size_t goodlen,
                                   const uint32_t *tok, size_t n, int vocab, size_t decisive,
                                   int T, const char *what) {
    write_bytes(path, bytes, len);
    ent_dataset_t *d = NULL;
    ent_status st = ent_dataset_open(dir, "corrupt.bin", vocab, T, &d);
    size_t announced = 0;
    ent_status st2 = ent_shard_check_header(path, &announced);
    // the magic, version and count (the first 12 bytes; version 2: and the
    // token size, 16) and the size decide
    int same = len == goodlen && memcmp(bytes, good, decisive) == 0;
    if (st == ENT_OK) {
        if (!same) fail_msg("%s: opened although the magic, version, count or size changed", what);
        assert_int_equal(st2, ENT_OK);
        assert_int_equal(announced, n);
        assert_int_equal(ent_dataset_num_tokens(d), (int64_t)n);
        int32_t in[64], tg[64];
        int64_t last = ent_dataset_num_sequences(d) - 1;
        ent_dataset_sequence(d, last, in, tg);
        for (int i = 0; i < T; i++)
            assert_int_equal(in[i], tok[(size_t)last * (size_t)T + (size_t)i]);
        ent_dataset_close(&d);
        return;
    }
    assert_null(d);
    if (same) fail_msg("%s: refused although only unused header words changed: %s", what, ent_last_error());
    if (st != ENT_ERR_INPUT || strstr(ent_last_error(), path) == NULL)
        fail_msg("%s: status %d, message does not name %s: %s", what, (int)st, path, ent_last_error());
    if (st2 == ENT_OK && len != goodlen) fail_msg("%s: the header check passed a wrong size", what);
}

// The corruption rounds on one shard of `version` (1: uint16 tokens below
// 257, written by hand as llm.c does; 2: uint32 tokens up to 70000, written by
// ent_shard_write_u32).
static void corrupt_shard(int version) {
    char dir[128], path[512];
    folder(dir, sizeof dir, version == 1 ? "corrupt" : "corrupt_v2", 1);
    snprintf(path, sizeof path, "%s/corrupt.bin", dir);
    size_t n = (size_t)test_rand_int(100, 3000);
    int T = (int)test_rand_int(2, 32), vocab = version == 1 ? ENT_BYTE_VOCAB : 70000;
    size_t decisive = version == 1 ? 12 : 16;
    uint32_t *tok = malloc(n * sizeof *tok);
    uint16_t *tok16 = malloc(n * sizeof *tok16);
    assert_true(tok && tok16);
    for (size_t i = 0; i < n; i++) {
        tok[i] = (uint32_t)test_rand_int(0, vocab - 1);
        tok16[i] = (uint16_t)tok[i];
    }
    if (version == 1) write_raw_shard(path, ENT_SHARD_MAGIC, ENT_SHARD_VERSION, (int32_t)n, tok16, n);
    else assert_int_equal(ent_shard_write_u32(path, tok, n), ENT_OK);
    size_t goodlen;
    unsigned char *good = read_bytes(path, &goodlen);
    assert_int_equal(goodlen, ENT_SHARD_HEADER_INTS * 4 + n * (version == 1 ? 2 : 4));
    unsigned char *bytes = malloc(goodlen + 4096);
    assert_non_null(bytes);
    char what[96];
    const size_t header = ENT_SHARD_HEADER_INTS * sizeof(int32_t);
    // every header byte, set to another random value
    size_t refused = 0;
    for (size_t at = 0; at < header; at++) {
        memcpy(bytes, good, goodlen);
        bytes[at] = (unsigned char)(good[at] ^ test_rand_int(1, 255));
        snprintf(what, sizeof what, "v%d: header byte %zu = 0x%02x", version, at, bytes[at]);
        expect_corrupt_outcome(dir, path, good, bytes, goodlen, goodlen, tok, n, vocab, decisive, T,
                               what);
        refused += at < decisive;
    }
    assert_int_equal(refused, decisive);
    // random ranges of random bytes anywhere in the header, and the count set
    // to extreme values (version 2: the token size too)
    for (int trial = 0; trial < 300; trial++) {
        memcpy(bytes, good, goodlen);
        size_t a = (size_t)test_rand_int(0, (int64_t)header - 1), b = (size_t)test_rand_int((int64_t)a, (int64_t)header - 1);
        for (size_t i = a; i <= b; i++) bytes[i] = (unsigned char)test_rand_int(0, 255);
        if (trial % 10 == 0) {
            int32_t extremes[] = {INT32_MAX, INT32_MIN, -1, 0, 1, (int32_t)n + 1, (int32_t)n - 1,
                                  (int32_t)n * 2, (int32_t)n / 2};
            memcpy(bytes + 8, &extremes[test_rand_int(0, 8)], 4);
        }
        if (version == 2 && trial % 10 == 5) {
            int32_t sizes[] = {0, 1, 2, 3, 8, -4, INT32_MAX};
            memcpy(bytes + 12, &sizes[test_rand_int(0, 6)], 4);
        }
        snprintf(what, sizeof what, "v%d: header bytes %zu..%zu randomised (trial %d)", version, a,
                 b, trial);
        expect_corrupt_outcome(dir, path, good, bytes, goodlen, goodlen, tok, n, vocab, decisive, T,
                               what);
    }
    // truncations (every length through the header, random ones after) and extensions
    for (int trial = 0; trial < 400; trial++) {
        size_t len = trial < 200 ? (size_t)test_rand_int(0, (int64_t)header + 8)
                                 : (size_t)test_rand_int(0, (int64_t)goodlen - 1);
        snprintf(what, sizeof what, "v%d: truncated to %zu of %zu bytes", version, len, goodlen);
        expect_corrupt_outcome(dir, path, good, good, len, goodlen, tok, n, vocab, decisive, T, what);
    }
    for (int trial = 0; trial < 20; trial++) {
        size_t extra = (size_t)test_rand_int(1, 4096);
        memcpy(bytes, good, goodlen);
        for (size_t i = 0; i < extra; i++) bytes[goodlen + i] = (unsigned char)test_rand_int(0, 255);
        snprintf(what, sizeof what, "v%d: %zu bytes appended", version, extra);
        expect_corrupt_outcome(dir, path, good, bytes, goodlen + extra, goodlen, tok, n, vocab,
                               decisive, T, what);
    }
    free(tok);
    free(tok16);
    free(good);
    free(bytes);
}

static void test_shard_corruption(void **state) {
    (void)state;
    test_reseed(12);
    corrupt_shard(1);
    corrupt_shard(2);
}

// Version 2 shards (uint32 tokens) read back as written, with ids beyond
// uint16; a token id at or above the vocabulary is refused with its position,
// as in version 1.
static void test_shard_v2(void **state) {
    (void)state;
    test_reseed(13);
    char dir[128], path[512], w[64], w2[64];
    folder(dir, sizeof dir, "v2", 1);
    int T = (int)test_rand_int(2, 16), vocab = (int)test_rand_int(65537, ENT_VOCAB_MAX);
    size_t n = (size_t)T * (size_t)test_rand_int(3, 50) + 1;
    uint32_t *tok = malloc(n * sizeof *tok);
    assert_non_null(tok);
    for (size_t i = 0; i < n; i++) tok[i] = (uint32_t)test_rand_int(0, vocab - 1);
    tok[test_rand_int(0, (int64_t)n - 1)] = (uint32_t)vocab - 1;
    snprintf(path, sizeof path, "%s/good_v2.bin", dir);
    assert_int_equal(ent_shard_write_u32(path, tok, n), ENT_OK);
    size_t got;
    assert_int_equal(ent_shard_check_header(path, &got), ENT_OK);
    assert_int_equal(got, n);
    ent_dataset_t *d = NULL;
    assert_int_equal(ent_dataset_open(dir, "good_v2.bin", vocab, T, &d), ENT_OK);
    int64_t nseq = ent_dataset_num_sequences(d);
    assert_int_equal(nseq, (int64_t)((n - 1) / (size_t)T));
    int32_t *in = malloc(sizeof(int32_t) * (size_t)T), *tg = malloc(sizeof(int32_t) * (size_t)T);
    for (int64_t s = 0; s < nseq; s++) {
        ent_dataset_sequence(d, s, in, tg);
        for (int i = 0; i < T; i++) {
            assert_int_equal(in[i], tok[(size_t)s * (size_t)T + (size_t)i]);
            assert_int_equal(tg[i], tok[(size_t)s * (size_t)T + (size_t)i + 1]);
        }
    }
    ent_dataset_close(&d);
    // one id at the vocabulary, then one far above: named with its position
    size_t pos = (size_t)test_rand_int(0, (int64_t)n - 1);
    uint32_t bads[2] = {(uint32_t)vocab, (uint32_t)test_rand_int(vocab, UINT32_MAX)};
    for (int k = 0; k < 2; k++) {
        uint32_t keep = tok[pos];
        tok[pos] = bads[k];
        snprintf(path, sizeof path, "%s/bad_v2.bin", dir);
        assert_int_equal(ent_shard_write_u32(path, tok, n), ENT_OK);
        snprintf(w, sizeof w, " %u ", bads[k]);
        snprintf(w2, sizeof w2, "position %zu ", pos);
        expect_bad_shard(dir, "bad_v2.bin", vocab, T, w, w2);
        tok[pos] = keep;
    }
    // version 1 and version 2 shards side by side in one dataset
    uint16_t small[64];
    for (int i = 0; i < 64; i++) small[i] = (uint16_t)test_rand_int(0, 65535);
    snprintf(path, sizeof path, "%s/good_v1.bin", dir);
    assert_int_equal(ent_shard_write(path, small, 64), ENT_OK);
    assert_int_equal(ent_dataset_open(dir, "good_v*.bin", vocab, T, &d), ENT_OK);
    assert_int_equal(ent_dataset_num_tokens(d), (int64_t)n + 64);
    ent_dataset_sequence(d, 0, in, tg); // good_v1.bin sorts first
    for (int i = 0; i < T; i++) assert_int_equal(in[i], small[i]);
    ent_dataset_close(&d);
    free(in);
    free(tg);
    free(tok);
}

// A FIFO or a device under a shard's name is refused before it is opened for
// reading (a FIFO without a writer would block open() for ever).
static void test_shard_not_regular(void **state) {
    (void)state;
    char dir[128], path[512];
    folder(dir, sizeof dir, "fifo", 1);
    snprintf(path, sizeof path, "%s/train_000000.bin", dir);
    assert_int_equal(mkfifo(path, 0644), 0);
    expect_bad_shard_in(dir, "train_*.bin", "train_000000.bin", ENT_BYTE_VOCAB, 8, "FIFO",
                        "not a regular file");
    size_t nt;
    expect_error(ent_shard_check_header(path, &nt), ENT_ERR_INPUT, path, "FIFO", NULL);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(symlink("/dev/zero", path), 0);
    expect_bad_shard_in(dir, "train_*.bin", "train_000000.bin", ENT_BYTE_VOCAB, 8,
                        "character device", NULL);
}

static void test_foreign_shards(void **state) {
    (void)state;
    test_reseed(7);
    char dir[128], val[512], train[512];
    folder(dir, sizeof dir, "llmc", 1);
    size_t n = (size_t)test_rand_int(2000, 6000);
    uint16_t *tok = malloc(n * sizeof(uint16_t)), *other = malloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) {
        tok[i] = (uint16_t)test_rand_int(0, 50256);
        other[i] = (uint16_t)test_rand_int(0, 50256);
    }
    tok[test_rand_int(0, (int64_t)n - 1)] = 50256; // GPT-2's end-of-text
    snprintf(val, sizeof val, "%s/tiny_shakespeare_val.bin", dir);
    snprintf(train, sizeof train, "%s/tiny_shakespeare_train.bin", dir);
    write_raw_shard(val, 20240520, 1, (int32_t)n, tok, n);
    write_raw_shard(train, 20240520, 1, (int32_t)n - 1, other, n - 1);

    int T = (int)test_rand_int(8, 128);
    ent_dataset_t *d = NULL;
    ent_status st = ent_dataset_open(dir, "*val*.bin", 50257, T, &d);
    if (st != ENT_OK) fail_msg("%s", ent_last_error());
    assert_int_equal(ent_dataset_num_shards(d), 1);
    assert_int_equal(ent_dataset_num_tokens(d), n);
    assert_int_equal(ent_dataset_num_sequences(d), (n - 1) / T);
    int32_t *in = malloc(sizeof(int32_t) * T), *tg = malloc(sizeof(int32_t) * T);
    for (int64_t s = 0; s < ent_dataset_num_sequences(d); s++) {
        ent_dataset_sequence(d, s, in, tg);
        for (int i = 0; i < T; i++) {
            if (in[i] != tok[s * T + i] || tg[i] != tok[s * T + i + 1])
                fail_msg("sequence %lld position %d: %d -> %d, expected %u -> %u", (long long)s, i, in[i],
                         tg[i], tok[s * T + i], tok[s * T + i + 1]);
        }
    }
    ent_dataset_close(&d);
    // both shards under the train pattern of the defaults? only the train one
    assert_int_equal(ent_dataset_open(dir, "*train*.bin", 50257, T, &d), ENT_OK);
    assert_int_equal(ent_dataset_num_tokens(d), n - 1);
    ent_dataset_close(&d);

    // with the byte vocabulary the GPT-2 tokens are refused, naming the first bad one
    size_t first = 0;
    while (tok[first] < ENT_BYTE_VOCAB) first++;
    char w[32], w2[48];
    snprintf(w, sizeof w, " %u ", tok[first]);
    snprintf(w2, sizeof w2, "position %zu ", first);
    st = ent_dataset_open(dir, "*val*.bin", ENT_BYTE_VOCAB, T, &d);
    expect_error(st, ENT_ERR_INPUT, val, w, w2);
    assert_null(d);
    free(tok);
    free(other);
    free(in);
    free(tg);
}

// ---------------------------------------------------------------------------
// sequences

static void test_sequences(void **state) {
    (void)state;
    test_reseed(8);
    char dir[128], path[512];
    folder(dir, sizeof dir, "sequences", 1);
    int T = (int)test_rand_int(4, 48);
    // shard lengths: random ones and the edges (empty, T, T + 1, 2T + 1, a multiple of T)
    size_t lens[8] = {(size_t)test_rand_int(T + 1, 3000), 0, (size_t)T, (size_t)test_rand_int(1, 3000),
                      (size_t)T + 1, (size_t)test_rand_int(T + 1, 3000), 2 * (size_t)T + 1,
                      (size_t)T * (size_t)test_rand_int(2, 50)};
    uint16_t *tok[8];
    int64_t want_seq = 0, want_tok = 0;
    for (int s = 0; s < 8; s++) {
        tok[s] = malloc(lens[s] * sizeof(uint16_t) + 2);
        for (size_t i = 0; i < lens[s]; i++) tok[s][i] = (uint16_t)test_rand_int(0, ENT_BYTE_VOCAB - 1);
        snprintf(path, sizeof path, "%s/train_%06d.bin", dir, s);
        assert_int_equal(ent_shard_write(path, tok[s], lens[s]), ENT_OK);
        want_seq += lens[s] > 0 ? (int64_t)(lens[s] - 1) / T : 0;
        want_tok += (int64_t)lens[s];
    }
    ent_dataset_t *d = NULL;
    ent_status st = ent_dataset_open(dir, "train_*.bin", ENT_BYTE_VOCAB, T, &d);
    if (st != ENT_OK) fail_msg("%s", ent_last_error());
    assert_int_equal(ent_dataset_num_shards(d), 8);
    assert_int_equal(ent_dataset_num_tokens(d), want_tok);
    assert_int_equal(ent_dataset_num_sequences(d), want_seq);
    // walk the shards: sequence k of shard s starts at token k*T and holds T + 1 tokens
    int32_t *in = malloc(sizeof(int32_t) * T), *tg = malloc(sizeof(int32_t) * T);
    int64_t seq = 0;
    for (int s = 0; s < 8; s++) {
        int64_t per = lens[s] > 0 ? (int64_t)(lens[s] - 1) / T : 0;
        for (int64_t k = 0; k < per; k++, seq++) {
            ent_dataset_sequence(d, seq, in, tg);
            for (int i = 0; i < T; i++) {
                if (in[i] != tok[s][k * T + i] || tg[i] != tok[s][k * T + i + 1])
                    fail_msg("sequence %lld (shard %d, #%lld) position %d differs", (long long)seq, s,
                             (long long)k, i);
                if (i + 1 < T) assert_int_equal(tg[i], in[i + 1]);
            }
        }
    }
    assert_int_equal(seq, want_seq);
    ent_dataset_close(&d);
    for (int s = 0; s < 8; s++) free(tok[s]);
    free(in);
    free(tg);
}

// ---------------------------------------------------------------------------
// order

static void test_permute(void **state) {
    (void)state;
    test_reseed(9);
    const int64_t sizes[] = {1, 2, 3, 7, 64, 1000, 12345};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int64_t n = sizes[k];
        for (int trial = 0; trial < 3; trial++) {
            uint64_t seed = (uint64_t)test_rand_int(0, INT64_MAX);
            int64_t epoch = test_rand_int(0, 1000);
            unsigned char *seen = calloc((size_t)n, 1);
            for (int64_t i = 0; i < n; i++) {
                int64_t p = ent_data_permute(i, n, seed, epoch);
                if (p < 0 || p >= n) fail_msg("n %lld: %lld -> %lld, outside [0, n)", (long long)n,
                                              (long long)i, (long long)p);
                if (seen[p]) fail_msg("n %lld: %lld is hit twice", (long long)n, (long long)p);
                seen[p] = 1;
                assert_int_equal(ent_data_permute(i, n, seed, epoch), p); // deterministic
            }
            free(seen);
        }
    }
    // n = 1000: another epoch or another seed reorders; none is the identity
    int64_t n = 1000, order[4][1000];
    uint64_t seed = (uint64_t)test_rand_int(0, INT64_MAX);
    for (int64_t i = 0; i < n; i++) {
        order[0][i] = ent_data_permute(i, n, seed, 0);
        order[1][i] = ent_data_permute(i, n, seed, 1);
        order[2][i] = ent_data_permute(i, n, seed ^ 1, 0);
        order[3][i] = ent_data_permute(i, n, seed + 1000003, 0);
    }
    for (int a = 0; a < 4; a++) {
        int fixed = 0;
        for (int64_t i = 0; i < n; i++) fixed += order[a][i] == i;
        if (fixed > 20) fail_msg("order %d leaves %d of 1000 in place", a, fixed);
        for (int b = a + 1; b < 4; b++) {
            int same = 0;
            for (int64_t i = 0; i < n; i++) same += order[a][i] == order[b][i];
            if (same > 20) fail_msg("orders %d and %d agree in %d of 1000 places", a, b, same);
        }
    }
}

// A dataset whose every token is distinct (a shuffled 0..N-1, vocab N), split into
// three shards, so that a sequence is known by its first token.
typedef struct {
    ent_dataset_t *d;
    int T;
    int64_t nseq;
    int64_t *seq_of_first; // token -> sequence starting with it, or -1
    uint16_t *all;         // the tokens, shards concatenated
    int64_t *start;        // sequence -> its first token's index in all
} unique_data;

static void make_unique_data(unique_data *u, const char *name) {
    char dir[128], path[512];
    folder(dir, sizeof dir, name, 1);
    int N = (int)test_rand_int(4000, 12000);
    u->T = (int)test_rand_int(4, 24);
    u->all = malloc(sizeof(uint16_t) * N);
    for (int i = 0; i < N; i++) u->all[i] = (uint16_t)i;
    for (int i = N - 1; i > 0; i--) {
        int j = (int)test_rand_int(0, i);
        uint16_t t = u->all[i];
        u->all[i] = u->all[j];
        u->all[j] = t;
    }
    int cut1 = (int)test_rand_int(u->T + 1, N / 3), cut2 = (int)test_rand_int(N / 2, N - u->T - 1);
    int cuts[4] = {0, cut1, cut2, N};
    u->seq_of_first = malloc(sizeof(int64_t) * N);
    u->start = malloc(sizeof(int64_t) * N);
    for (int i = 0; i < N; i++) u->seq_of_first[i] = -1;
    u->nseq = 0;
    for (int s = 0; s < 3; s++) {
        snprintf(path, sizeof path, "%s/train_%06d.bin", dir, s);
        int len = cuts[s + 1] - cuts[s];
        assert_int_equal(ent_shard_write(path, u->all + cuts[s], (size_t)len), ENT_OK);
        for (int k = 0; (k + 1) * u->T < len; k++) {
            int at = cuts[s] + k * u->T;
            u->seq_of_first[u->all[at]] = u->nseq;
            u->start[u->nseq++] = at;
        }
    }
    ent_status st = ent_dataset_open(dir, "train_*.bin", N, u->T, &u->d);
    if (st != ENT_OK) fail_msg("%s", ent_last_error());
    assert_int_equal(ent_dataset_num_sequences(u->d), u->nseq);
}

static void free_unique_data(unique_data *u) {
    ent_dataset_close(&u->d);
    free(u->seq_of_first);
    free(u->all);
    free(u->start);
}

// Fills count sequences from position `at` (+ skip) and returns which they are,
// checking each one's inputs and targets against the tokens.
static void fill_ids(const unique_data *u, int64_t at, int64_t skip, int count, int shuffle,
                     uint64_t seed, int64_t *ids) {
    int T = u->T;
    int32_t *in = malloc(sizeof(int32_t) * T * count), *tg = malloc(sizeof(int32_t) * T * count);
    ent_data_cursor cur = {.consumed = at};
    ent_dataset_fill(u->d, &cur, skip, count, shuffle, seed, in, tg);
    assert_int_equal(cur.consumed, at); // the cursor does not move
    for (int j = 0; j < count; j++) {
        int64_t id = u->seq_of_first[in[(size_t)j * T]];
        if (id < 0) fail_msg("filled sequence %d starts with token %d, no sequence's start", j, in[(size_t)j * T]);
        for (int i = 0; i < T; i++) {
            assert_int_equal(in[(size_t)j * T + i], u->all[u->start[id] + i]);
            assert_int_equal(tg[(size_t)j * T + i], u->all[u->start[id] + i + 1]);
        }
        ids[j] = id;
    }
    free(in);
    free(tg);
}

static void test_fill(void **state) {
    (void)state;
    test_reseed(10);
    unique_data u;
    make_unique_data(&u, "fill");
    int64_t n = u.nseq;
    uint64_t seed = (uint64_t)test_rand_int(0, INT64_MAX);
    int64_t *e0 = malloc(sizeof(int64_t) * n), *e1 = malloc(sizeof(int64_t) * n), *e0b = malloc(sizeof(int64_t) * n);
    unsigned char *seen = malloc((size_t)n);

    // one epoch with shuffle, in uneven chunks: every sequence exactly once
    for (int64_t at = 0; at < n;) {
        int count = (int)fmin((double)test_rand_int(1, 40), (double)(n - at));
        fill_ids(&u, at, 0, count, 1, seed, e0 + at);
        at += count;
    }
    memset(seen, 0, (size_t)n);
    int in_place = 0;
    for (int64_t p = 0; p < n; p++) {
        if (seen[e0[p]]) fail_msg("epoch 0 visits sequence %lld twice", (long long)e0[p]);
        seen[e0[p]] = 1;
        in_place += e0[p] == p;
        // the documented mapping: position p -> permute(p % n, n, seed, p / n)
        assert_int_equal(e0[p], ent_data_permute(p, n, seed, 0));
    }
    if (in_place > n / 10) fail_msg("shuffle leaves %d of %lld sequences in place", in_place, (long long)n);
    // epoch 1 starts at position n: again every sequence once, in another order
    fill_ids(&u, n, 0, (int)n, 1, seed, e1);
    memset(seen, 0, (size_t)n);
    int same = 0;
    for (int64_t p = 0; p < n; p++) {
        if (seen[e1[p]]) fail_msg("epoch 1 visits sequence %lld twice", (long long)e1[p]);
        seen[e1[p]] = 1;
        same += e1[p] == e0[p];
    }
    if (same > n / 10) fail_msg("epochs 0 and 1 agree in %d of %lld places", same, (long long)n);
    // another seed, another order; the same seed, the same order
    fill_ids(&u, 0, 0, (int)n, 1, seed + 1, e0b);
    same = 0;
    for (int64_t p = 0; p < n; p++) same += e0b[p] == e0[p];
    if (same > n / 10) fail_msg("seeds %llu and +1 agree in %d of %lld places", (unsigned long long)seed, same, (long long)n);
    fill_ids(&u, 0, 0, (int)n, 1, seed, e0b);
    assert_memory_equal(e0b, e0, sizeof(int64_t) * n);

    // without shuffle: in order, and around again after the last
    fill_ids(&u, 0, 0, (int)n, 0, seed, e0b);
    for (int64_t p = 0; p < n; p++) assert_int_equal(e0b[p], p);
    int64_t wrap[5];
    fill_ids(&u, n - 2, 0, 5, 0, seed, wrap);
    int64_t expect_wrap[5] = {n - 2, n - 1, 0, 1, 2};
    assert_memory_equal(wrap, expect_wrap, sizeof wrap);

    // the data-parallel split: 8 at once = 4 (skip 0) + 4 (skip 4), at random
    // positions and across an epoch boundary; and a resumed cursor continues
    for (int trial = 0; trial < 20; trial++) {
        int64_t at = trial == 0 ? n - 3 : test_rand_int(0, 3 * n);
        int shuffle = trial % 3 != 0;
        int64_t all8[8], first4[4], last4[4], resumed[4];
        fill_ids(&u, at, 0, 8, shuffle, seed, all8);
        fill_ids(&u, at, 0, 4, shuffle, seed, first4);
        fill_ids(&u, at, 4, 4, shuffle, seed, last4);
        fill_ids(&u, at + 4, 0, 4, shuffle, seed, resumed);
        assert_memory_equal(all8, first4, sizeof first4);
        assert_memory_equal(all8 + 4, last4, sizeof last4);
        assert_memory_equal(resumed, last4, sizeof last4);
        // and it is the sequence the position names
        for (int j = 0; j < 8; j++) {
            int64_t p = at + j;
            assert_int_equal(all8[j], shuffle ? ent_data_permute(p % n, n, seed, p / n) : p % n);
        }
    }
    free(e0);
    free(e1);
    free(e0b);
    free(seen);
    free_unique_data(&u);
}

// `test_data --order N SEED COUNT`: the sequences of global positions
// 0..COUNT-1 over N sequences with train.seed SEED, one per line, for the
// check that docs/data.md's description of the order reproduces it
// (cli_test.sh, case data_order_docs).
static int print_order(char **argv) {
    int64_t n = strtoll(argv[2], NULL, 10), count = strtoll(argv[4], NULL, 10);
    uint64_t key = ent_data_order_key(strtoull(argv[3], NULL, 10));
    for (int64_t p = 0; p < count; p++)
        printf("%lld\n", (long long)ent_data_permute(p % n, n, key, p / n));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "--order") == 0) return print_order(argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prepare_counts),    cmocka_unit_test(test_prepare_no_val),
        cmocka_unit_test(test_prepare_shard_split), cmocka_unit_test(test_prepare_errors),
        cmocka_unit_test(test_prepare_force),     cmocka_unit_test(test_shard_validation),
        cmocka_unit_test(test_shard_corruption),
        cmocka_unit_test(test_shard_v2), cmocka_unit_test(test_shard_not_regular),
        cmocka_unit_test(test_foreign_shards),    cmocka_unit_test(test_sequences),
        cmocka_unit_test(test_permute),           cmocka_unit_test(test_fill),
    };
    return cmocka_run_group_tests_name("data", tests, setup, teardown);
}
