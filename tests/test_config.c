// test_config.c: the INI configuration and the learning-rate schedule.
//
//  - a file that sets a random subset of the keys to random valid values loads
//    them, in any order and spelling (comments, spacing, reopened sections,
//    every boolean spelling); every other key keeps its default;
//  - every error of a file (unknown key or section, key outside a section, bad
//    int/float/bool, out of range, duplicate, syntax, missing file) returns
//    ENT_ERR_USAGE with a message naming the file, the line and the key;
//  - inconsistent combinations name both keys and where they were set;
//  - --set overrides apply after the file and name the key on error;
//  - quoted strings with escapes; the written configuration reads back the same,
//    including strings the INI syntax treats specially and values as long as the
//    fields allow;
//  - the learning-rate schedule: linear warm-up, cosine decay to the floor;
//  - numbers are written in the shortest text that reads back exactly;
//  - the progress line's ETA is steady under noisy step times.
// Values are fresh random numbers on every run (ENT_TEST_SEED=... reproduces one).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ent_runtime.h"
#include "ref.h"

static char tmpdir[64];

static int setup(void **state) {
    (void)state;
    return test_tmpdir_create(tmpdir, sizeof tmpdir, "config");
}

static int teardown(void **state) {
    (void)state;
    return test_tree_remove(tmpdir);
}

static uint64_t rand_u64(void) {
    uint64_t hi = (uint64_t)(test_uniform() * 4294967296.0), lo = (uint64_t)(test_uniform() * 4294967296.0);
    return hi << 32 | lo;
}

// Writes text to tmpdir/name; path gets the full name.
static void write_text(char *path, size_t n, const char *name, const char *text) {
    snprintf(path, n, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

// The configuration as ent_config_write prints it; the caller frees the text.
// (noinline: once inlined, gcc takes the memstream's &buf for a dangling pointer)
__attribute__((noinline)) static char *config_text(const ent_config *cfg) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    ent_config_write(cfg, f);
    assert_int_equal(fclose(f), 0);
    return buf;
}

// Fails unless st is want and the last error message contains every non-NULL word.
static void expect_error(ent_status st, ent_status want, const char *w1, const char *w2,
                         const char *w3, const char *w4) {
    const char *msg = ent_last_error();
    if (st != want) fail_msg("status %d, expected %d (message: %s)", (int)st, (int)want, msg);
    const char *words[4] = {w1, w2, w3, w4};
    for (int i = 0; i < 4; i++)
        if (words[i] && strstr(msg, words[i]) == NULL)
            fail_msg("message does not name '%s': %s", words[i], msg);
}

// ---------------------------------------------------------------------------
// every key, as docs/config.md lists them; group: keys that are only valid
// together (a subset of keys mixed with defaults must stay consistent)

typedef enum { T_INT, T_FLOAT, T_BOOL, T_STR, T_U64 } ftype;

typedef struct {
    const char *section, *key;
    ftype type;
    size_t offset;
    int group;
} field;

#define F(s, k, t, f, g) {s, k, t, offsetof(ent_config, f), g}
static const field fields[] = {
    F("model", "layers", T_INT, layers, 0),       F("model", "heads", T_INT, heads, 1),
    F("model", "width", T_INT, width, 1),         F("model", "context", T_INT, context, 0),
    F("model", "vocab", T_INT, vocab, 4),         F("train", "steps", T_INT, steps, 3),
    F("train", "batch_size", T_INT, batch_size, 2), F("train", "micro_batch", T_INT, micro_batch, 2),
    F("train", "lr", T_FLOAT, lr, 0),             F("train", "lr_floor", T_FLOAT, lr_floor, 0),
    F("train", "warmup_steps", T_INT, warmup_steps, 3),
    F("train", "weight_decay", T_FLOAT, weight_decay, 0),
    F("train", "beta1", T_FLOAT, beta1, 0),       F("train", "beta2", T_FLOAT, beta2, 0),
    F("train", "eps", T_FLOAT, eps, 0),           F("train", "grad_clip", T_FLOAT, grad_clip, 0),
    F("train", "seed", T_U64, seed, 0),           F("train", "log_every", T_INT, log_every, 0),
    F("eval", "every", T_INT, eval_every, 0),     F("eval", "batches", T_INT, eval_batches, 0),
    F("sample", "every", T_INT, sample_every, 0), F("sample", "tokens", T_INT, sample_tokens, 0),
    F("sample", "temperature", T_FLOAT, sample_temperature, 0),
    F("sample", "seed", T_U64, sample_seed, 0),   F("sample", "prompt", T_STR, sample_prompt, 4),
    F("data", "dir", T_STR, data_dir, 5),         F("data", "train_pattern", T_STR, train_pattern, 0),
    F("data", "val_pattern", T_STR, val_pattern, 0), F("data", "shuffle", T_BOOL, shuffle, 0),
    F("parallel", "tp", T_INT, tp, 1),            F("parallel", "zero", T_INT, zero, 0),
    F("system", "threads", T_INT, threads, 0),
};
#define NFIELDS ((int)(sizeof fields / sizeof fields[0]))
#define AT(cfg, f, type) (*(type *)((char *)(cfg) + (f)->offset))

static void assert_field_equal(const ent_config *a, const ent_config *b, const field *f) {
    ent_config *x = (ent_config *)a, *y = (ent_config *)b;
    switch (f->type) {
    case T_INT:
    case T_BOOL:
        if (AT(x, f, int) != AT(y, f, int))
            fail_msg("%s.%s: %d != %d", f->section, f->key, AT(x, f, int), AT(y, f, int));
        break;
    case T_FLOAT:
        if (AT(x, f, double) != AT(y, f, double))
            fail_msg("%s.%s: %.17g != %.17g", f->section, f->key, AT(x, f, double), AT(y, f, double));
        break;
    case T_U64:
        if (AT(x, f, uint64_t) != AT(y, f, uint64_t))
            fail_msg("%s.%s: %llu != %llu", f->section, f->key,
                     (unsigned long long)AT(x, f, uint64_t), (unsigned long long)AT(y, f, uint64_t));
        break;
    case T_STR:
        if (strcmp((char *)x + f->offset, (char *)y + f->offset) != 0)
            fail_msg("%s.%s: \"%s\" != \"%s\"", f->section, f->key, (char *)x + f->offset,
                     (char *)y + f->offset);
        break;
    }
}

static void assert_config_equal(const ent_config *a, const ent_config *b) {
    for (int i = 0; i < NFIELDS; i++) assert_field_equal(a, b, &fields[i]);
}

// A random string of printable characters, spaces, tabs, newlines, quotes,
// backslashes and the INI comment characters.
static void random_text(char *out, int len) {
    static const char alphabet[] = "abcdefxyzABCXYZ0123456789 \t\n\"\\#;=:[]{}/.,!?-_'*&%$@~`<>()";
    for (int i = 0; i < len; i++) out[i] = alphabet[test_rand_int(0, (int)sizeof alphabet - 2)];
    out[len] = '\0';
}

// A random valid configuration; every group of dependent keys is consistent on
// its own and with the defaults of the other groups.
static void random_config(ent_config *c) {
    ent_config_defaults(c);
    c->layers = (int)test_rand_int(1, 48);
    c->heads = 1 << test_rand_int(0, 4);
    c->width = c->heads * (int)test_rand_int(1, 96);
    c->tp = 1 << test_rand_int(0, (int)log2(c->heads));
    c->context = (int)test_rand_int(1, 65536);
    c->steps = (int)test_rand_int(1, 1000000);
    c->warmup_steps = (int)test_rand_int(0, c->steps < 20000 ? c->steps : 20000);
    c->micro_batch = test_rand_int(0, 1) ? (int)test_rand_int(1, 64) : 0;
    c->batch_size = c->micro_batch ? c->micro_batch * (int)test_rand_int(1, 16) : (int)test_rand_int(1, 4096);
    c->lr = 10.0 * test_uniform();
    c->lr_floor = test_uniform();
    c->weight_decay = 10.0 * test_uniform();
    c->beta1 = 0.999 * test_uniform();
    c->beta2 = 0.999 * test_uniform();
    c->eps = 1e-8 * (1.0 + test_uniform());
    c->grad_clip = 1e6 * test_uniform();
    c->seed = rand_u64();
    c->log_every = (int)test_rand_int(1, 1000);
    c->eval_every = (int)test_rand_int(0, 100000);
    c->eval_batches = (int)test_rand_int(1, 1000);
    c->sample_every = (int)test_rand_int(0, 100000);
    c->sample_tokens = (int)test_rand_int(0, 1000000);
    c->sample_temperature = 100.0 * test_uniform();
    c->sample_seed = rand_u64();
    if (test_rand_int(0, 1)) {
        c->vocab = ENT_BYTE_VOCAB;
        random_text(c->sample_prompt, (int)test_rand_int(1, 60));
    } else {
        do c->vocab = (int)test_rand_int(2, 65536); while (c->vocab == ENT_BYTE_VOCAB);
        c->sample_prompt[0] = '\0';
    }
    snprintf(c->data_dir, sizeof c->data_dir, "/tmp/ent data/%llx", (unsigned long long)rand_u64());
    snprintf(c->train_pattern, sizeof c->train_pattern, "*tr%d*.bin", (int)test_rand_int(0, 999));
    snprintf(c->val_pattern, sizeof c->val_pattern, "v%d_*.bin", (int)test_rand_int(0, 999));
    c->shuffle = (int)test_rand_int(0, 1);
    c->zero = (int)test_rand_int(0, 1);
    c->threads = (int)test_rand_int(0, 4096);
}

// The value of one key as INI text, written by the test (not by ent_config_write):
// booleans in any accepted spelling, strings quoted with escapes.
static void format_value(const ent_config *c, const field *f, char *buf, size_t n) {
    ent_config *x = (ent_config *)c;
    static const char *yes[] = {"true", "yes", "on", "1", "TRUE", "Yes"};
    static const char *no[] = {"false", "no", "off", "0", "False", "NO"};
    switch (f->type) {
    case T_INT: snprintf(buf, n, "%d", AT(x, f, int)); break;
    case T_FLOAT: snprintf(buf, n, "%.17g", AT(x, f, double)); break;
    case T_U64: snprintf(buf, n, "%llu", (unsigned long long)AT(x, f, uint64_t)); break;
    case T_BOOL: snprintf(buf, n, "%s", (AT(x, f, int) ? yes : no)[test_rand_int(0, 5)]); break;
    case T_STR: {
        size_t j = 0;
        buf[j++] = '"';
        for (const char *p = (const char *)x + f->offset; *p && j + 4 < n; p++) {
            if (*p == '\n') buf[j++] = '\\', buf[j++] = 'n';
            else if (*p == '\t') buf[j++] = '\\', buf[j++] = 't';
            else if (*p == '"' || *p == '\\' || *p == ';') buf[j++] = '\\', buf[j++] = *p;
            else buf[j++] = *p;
        }
        buf[j++] = '"';
        buf[j] = '\0';
        break;
    }
    }
}

// (';' is escaped: inside quotes " ;" would still start an INI comment)
// INI text setting the keys with use[i] set, in random order, each preceded by its
// [section] when the section changes (so sections reopen), with comments, blank
// lines and random spacing around '='. The caller frees the text.
static char *ini_text(const ent_config *c, const int *use) {
    int order[NFIELDS], n = 0;
    for (int i = 0; i < NFIELDS; i++)
        if (use[i]) order[n++] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)test_rand_int(0, i), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    fputs("; written by test_config\n\n", f);
    const char *section = "";
    static const char *eqs[] = {" = ", "=", "\t=  ", " =\t"};
    for (int k = 0; k < n; k++) {
        const field *fl = &fields[order[k]];
        if (strcmp(section, fl->section) != 0) {
            section = fl->section;
            fprintf(f, "\n[%s]\n", section);
        }
        if (test_rand_int(0, 3) == 0) fputs(test_rand_int(0, 1) ? "# a comment\n" : "\n", f);
        char value[256];
        format_value(c, fl, value, sizeof value);
        fprintf(f, "%s%s%s\n", fl->key, eqs[test_rand_int(0, 3)], value);
    }
    assert_int_equal(fclose(f), 0);
    return buf;
}

// ---------------------------------------------------------------------------
// loading

static void test_load_overrides_defaults(void **state) {
    (void)state;
    test_reseed(1);
    ent_config defaults;
    ent_config_defaults(&defaults);
    for (int trial = 0; trial < 20; trial++) {
        ent_config want;
        random_config(&want);
        int use[NFIELDS], groups[6];
        for (int g = 0; g < 6; g++) groups[g] = g == 5 || test_rand_int(0, 1); // data.dir is required
        for (int i = 0; i < NFIELDS; i++)
            use[i] = fields[i].group ? groups[fields[i].group] : (int)test_rand_int(0, 1);
        char *text = ini_text(&want, use), path[128];
        write_text(path, sizeof path, "load.ini", text);
        ent_config got;
        ent_status st = ent_config_load(&got, path, NULL, 0);
        if (st != ENT_OK) fail_msg("%s\n---\n%s", ent_last_error(), text);
        assert_string_equal(got.path, path);
        for (int i = 0; i < NFIELDS; i++)
            assert_field_equal(&got, use[i] ? &want : &defaults, &fields[i]);
        free(text);
    }
}

static void test_load_without_file(void **state) {
    (void)state;
    // no file: the defaults plus overrides; the defaults alone lack data.dir
    ent_config cfg, defaults;
    ent_config_defaults(&defaults);
    expect_error(ent_config_load(&cfg, NULL, NULL, 0), ENT_ERR_USAGE, "data.dir", NULL, NULL, NULL);
    const char *set[] = {"data.dir=/some/where"};
    assert_int_equal(ent_config_load(&cfg, NULL, set, 1), ENT_OK);
    assert_string_equal(cfg.data_dir, "/some/where");
    strcpy(defaults.data_dir, "/some/where");
    assert_config_equal(&cfg, &defaults);
}

typedef struct {
    const char *text;
    int line;                 // the line the message must name
    const char *words[3];     // and these words (the key, the bad value)
} bad_file;

static const bad_file bad_files[] = {
    {"[model]\nlayers = 2\nwidht = 64\n", 3, {"widht"}},                       // unknown key
    {"[model]\nlayers = 2\n\n[modle]\nheads = 4\n", 4, {"modle"}},              // unknown section (named at its header)
    {"layers = 2\n[model]\nheads = 4\n", 1, {"layers"}},                       // outside a section
    {"[model]\n# comment\nlayers = two\n", 3, {"layers", "two"}},              // not an integer
    {"[model]\nlayers = 2.5\n", 2, {"layers", "2.5"}},
    {"[model]\nlayers = 12abc\n", 2, {"layers", "12abc"}},
    {"[model]\nlayers =\n", 2, {"layers"}},                                     // no value
    {"[model]\nheads = 0\n", 2, {"heads", "0"}},                               // int out of range
    {"[model]\nvocab = 16777217\n", 2, {"vocab", "16777217"}},
    {"[train]\nsteps = 99999999999999999999\n", 2, {"steps"}},                 // overflows
    {"[train]\nlr = 10.5\n", 2, {"lr", "10.5"}},                               // float out of range
    {"[train]\nbeta2 = -0.25\n", 2, {"beta2", "-0.25"}},
    {"[train]\neps = 0\n", 2, {"eps"}},                                        // open lower bound
    {"[train]\nlr = nan\n", 2, {"lr", "nan"}},
    {"[train]\nlr = 1e-3x\n", 2, {"lr", "1e-3x"}},
    {"[train]\nseed = -1\n", 2, {"seed", "-1"}},
    {"[data]\nshuffle = maybe\n", 2, {"shuffle", "maybe"}},                    // bad bool
    {"[data]\nshuffle = 2\n", 2, {"shuffle"}},
    {"[model]\nlayers = 2\njust some words\n", 3, {NULL}},                     // syntax: no '='
    {"[model\nlayers = 2\n", 1, {NULL}},                                       // syntax: no ']'
    {"[model]\nwidht = 1\nlayers = x\n", 2, {"widht"}},                        // the first error wins
    {"[train]\nsteps = 10\n\n; comment\n\nlr = 20\nsteps = x\n", 6, {"lr", "20"}},
};

static void test_load_errors(void **state) {
    (void)state;
    test_reseed(2);
    for (size_t c = 0; c < sizeof bad_files / sizeof bad_files[0]; c++) {
        // a random number of comment and blank lines first, so the line number moves
        int pad = (int)test_rand_int(0, 6);
        char text[512] = "", path[128], where[192];
        for (int i = 0; i < pad; i++) strcat(text, i % 2 ? "; pad\n" : "\n");
        strcat(text, bad_files[c].text);
        char name[32];
        snprintf(name, sizeof name, "bad%zu.ini", c);
        write_text(path, sizeof path, name, text);
        snprintf(where, sizeof where, "%s:%d:", path, bad_files[c].line + pad);
        ent_config cfg;
        ent_status st = ent_config_load(&cfg, path, NULL, 0);
        if (st != ENT_ERR_USAGE) fail_msg("case %zu: status %d for\n%s", c, (int)st, text);
        const char *msg = ent_last_error();
        if (strstr(msg, where) == NULL) fail_msg("case %zu: message does not name %s: %s", c, where, msg);
        for (int w = 0; w < 3 && bad_files[c].words[w]; w++)
            if (strstr(msg, bad_files[c].words[w]) == NULL)
                fail_msg("case %zu: message does not name '%s': %s", c, bad_files[c].words[w], msg);
    }
}

static void test_duplicate_key(void **state) {
    (void)state;
    test_reseed(3);
    // the key is set on line `first`, then again after other keys and a reopened section
    int pad = (int)test_rand_int(0, 9), first = pad + 2;
    char text[512] = "[model]\n", path[128], where[160], first_line[32];
    for (int i = 0; i < pad; i++) strcat(text, "# pad\n");
    strcat(text, "layers = 2\nheads = 4\n[train]\nsteps = 5\n[model]\nlayers = 3\n");
    write_text(path, sizeof path, "dup.ini", text);
    snprintf(where, sizeof where, "%s:%d:", path, first + 5);
    snprintf(first_line, sizeof first_line, "line %d", first);
    ent_config cfg;
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, where, "layers", first_line, NULL);
}

static void test_missing_file(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/no-such-config.ini", tmpdir);
    ent_config cfg;
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, path, NULL, NULL, NULL);
    // not a regular file: refused before it is opened for reading (a FIFO
    // without a writer would block, /dev/zero would never end)
    snprintf(path, sizeof path, "%s/fifo.ini", tmpdir);
    assert_int_equal(mkfifo(path, 0644), 0);
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, path, "FIFO", "not a regular file", NULL);
    expect_error(ent_config_load(&cfg, "/dev/zero", NULL, 0), ENT_ERR_USAGE, "/dev/zero",
                 "character device", NULL, NULL);
    expect_error(ent_config_load(&cfg, tmpdir, NULL, 0), ENT_ERR_USAGE, tmpdir, "directory", NULL, NULL);
}

// ---------------------------------------------------------------------------
// combinations

static void test_inconsistent_combinations(void **state) {
    (void)state;
    test_reseed(4);
    char path[128], a[160], b[160];
    ent_config cfg;
    int heads = 1 << test_rand_int(1, 4), width = heads * (int)test_rand_int(2, 20) + 1;

    // width not divisible by heads: both keys and both lines
    char text[512];
    snprintf(text, sizeof text, "[data]\ndir = /d\n[model]\nwidth = %d\nheads = %d\n", width, heads);
    write_text(path, sizeof path, "heads.ini", text);
    snprintf(a, sizeof a, "%s:4", path);
    snprintf(b, sizeof b, "%s:5", path);
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, "model.width", "model.heads", a, b);

    // micro_batch not dividing batch_size
    int micro = (int)test_rand_int(2, 16), batch = micro * (int)test_rand_int(1, 8) + (int)test_rand_int(1, micro - 1);
    snprintf(text, sizeof text, "[train]\nbatch_size = %d\nmicro_batch = %d\n[data]\ndir = /d\n", batch, micro);
    write_text(path, sizeof path, "micro.ini", text);
    snprintf(a, sizeof a, "%s:3", path);
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, "micro_batch", "batch_size", a, NULL);

    // warm-up longer than the run: a loaded configuration gets a tenth of the
    // run instead (with a warning); a configuration built in code is refused
    int steps = (int)test_rand_int(1, 1000);
    snprintf(text, sizeof text, "[data]\ndir = /d\n[train]\nsteps = %d\nwarmup_steps = %d\n", steps,
             steps + (int)test_rand_int(1, 100));
    write_text(path, sizeof path, "warmup.ini", text);
    assert_int_equal(ent_config_load(&cfg, path, NULL, 0), ENT_OK);
    assert_int_equal(cfg.warmup_steps, steps / 10);
    char set_steps[64];
    snprintf(set_steps, sizeof set_steps, "train.steps=%d", steps);
    const char *sets[] = {"train.warmup_steps=1000000", set_steps};
    assert_int_equal(ent_config_load(&cfg, path, sets, 2), ENT_OK);
    assert_int_equal(cfg.warmup_steps, steps / 10);
    cfg.warmup_steps = steps + 1;
    expect_error(ent_config_validate(&cfg), ENT_ERR_USAGE, "warmup_steps", "train.steps", NULL, NULL);

    // tp not dividing heads
    snprintf(text, sizeof text, "[data]\ndir = /d\n[model]\nheads = %d\n[parallel]\ntp = %d\n", heads,
             heads * 2);
    write_text(path, sizeof path, "tp.ini", text);
    snprintf(a, sizeof a, "%s:6", path);
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, "parallel.tp", "model.heads", a, NULL);

    // data.dir unset (or set to nothing)
    write_text(path, sizeof path, "nodata.ini", "[model]\nlayers = 2\n");
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, "data.dir", path, NULL, NULL);
    write_text(path, sizeof path, "emptydata.ini", "[data]\ndir =\n");
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, "data.dir", path, NULL, NULL);

    // a prompt needs the byte vocabulary
    write_text(path, sizeof path, "prompt.ini", "[data]\ndir = /d\n[model]\nvocab = 50257\n[sample]\nprompt = hi\n");
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, "sample.prompt", "vocab", NULL, NULL);

    // the boundaries themselves are fine: width = heads = tp, micro = batch, warm-up = steps
    snprintf(text, sizeof text,
             "[data]\ndir = /d\n[model]\nwidth = %d\nheads = %d\n[parallel]\ntp = %d\n"
             "[train]\nbatch_size = %d\nmicro_batch = %d\nsteps = %d\nwarmup_steps = %d\n",
             heads, heads, heads, micro, micro, steps, steps);
    write_text(path, sizeof path, "edges.ini", text);
    assert_int_equal(ent_config_load(&cfg, path, NULL, 0), ENT_OK);

    // ent_config_validate on a configuration built in memory
    ent_config_defaults(&cfg);
    strcpy(cfg.data_dir, "/d");
    assert_int_equal(ent_config_validate(&cfg), ENT_OK);
    cfg.heads = 3;
    expect_error(ent_config_validate(&cfg), ENT_ERR_USAGE, "model.width", "model.heads", NULL, NULL);
}

// ---------------------------------------------------------------------------
// --set

static void test_set_overrides(void **state) {
    (void)state;
    test_reseed(5);
    char path[128], text[256];
    int layers = (int)test_rand_int(1, 50), layers2 = layers + (int)test_rand_int(1, 50);
    double lr = 0.5 * test_uniform();
    snprintf(text, sizeof text, "[model]\nlayers = %d\n[train]\nlr = %.17g\n[data]\ndir = /d\n", layers, lr);
    write_text(path, sizeof path, "set.ini", text);

    // applied after the file; a later --set of the same key wins; spaces around the value
    char o1[64], o2[64], o3[64];
    snprintf(o1, sizeof o1, "model.layers=%d", layers + 500);
    snprintf(o2, sizeof o2, "model.layers=%d", layers2);
    snprintf(o3, sizeof o3, "data.shuffle= false");
    const char *overrides[] = {o1, o2, o3, "sample.prompt=\"x\\ny\"", "data.dir=/elsewhere"};
    ent_config cfg;
    assert_int_equal(ent_config_load(&cfg, path, overrides, 5), ENT_OK);
    assert_int_equal(cfg.layers, layers2);
    assert_true(cfg.lr == lr);
    assert_int_equal(cfg.shuffle, 0);
    assert_string_equal(cfg.sample_prompt, "x\ny");
    assert_string_equal(cfg.data_dir, "/elsewhere");

    // errors name the key (or the whole argument when it has no key)
    static const struct {
        const char *arg, *word;
    } bad[] = {
        {"model.layers", "model.layers"},        // no '='
        {"model.layers 4", "model.layers"},
        {"modellayers=4", "modellayers"},        // no '.'
        {"layers=4.5", "layers"},                // '.' only after '='
        {".layers=4", ".layers"},                // empty section
        {"model.=4", "model."},                  // empty key
        {"model.depth=4", "model.depth"},        // unknown key
        {"modle.layers=4", "modle.layers"},      // unknown section
        {"model.layers=four", "model.layers"},   // bad values
        {"model.layers=0", "model.layers"},
        {"train.lr=11", "train.lr"},
        {"data.shuffle=sometimes", "data.shuffle"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ent_config_defaults(&cfg);
        ent_config before = cfg;
        ent_status st = ent_config_set(&cfg, bad[i].arg);
        expect_error(st, ENT_ERR_USAGE, bad[i].word, NULL, NULL, NULL);
        assert_config_equal(&cfg, &before); // a failed --set changes nothing it names
        const char *one[] = {bad[i].arg};
        expect_error(ent_config_load(&cfg, path, one, 1), ENT_ERR_USAGE, bad[i].word, NULL, NULL, NULL);
    }

    // a --set that breaks a combination is named as such
    const char *heads3[] = {"model.heads=3"};
    expect_error(ent_config_load(&cfg, path, heads3, 1), ENT_ERR_USAGE, "--set model.heads", "model.width",
                 NULL, NULL);
}

// ---------------------------------------------------------------------------
// strings

static void test_quoted_strings(void **state) {
    (void)state;
    char path[128];
    write_text(path, sizeof path, "quoted.ini",
               "[sample]\nprompt = \"a\\nb\"\n"
               "[data]\ndir = \"  /spaced dir/\\t\\\"q\\\" \\\\x  \"\n"
               "train_pattern = plain words\n"
               "val_pattern = \"\"\n");
    ent_config cfg;
    ent_status st = ent_config_load(&cfg, path, NULL, 0);
    if (st != ENT_OK) fail_msg("%s", ent_last_error());
    assert_string_equal(cfg.sample_prompt, "a\nb");
    assert_string_equal(cfg.data_dir, "  /spaced dir/\t\"q\" \\x  ");
    assert_string_equal(cfg.train_pattern, "plain words");
    assert_string_equal(cfg.val_pattern, "");
    // ';' escaped inside quotes; " ;" inside quotes is a comment to INI and must not
    // be taken silently as the end of the value
    write_text(path, sizeof path, "semi.ini", "[data]\ndir = /d\n[sample]\nprompt = \"a \\; b\"\n");
    st = ent_config_load(&cfg, path, NULL, 0);
    if (st != ENT_OK) fail_msg("%s", ent_last_error());
    assert_string_equal(cfg.sample_prompt, "a ; b");
    write_text(path, sizeof path, "semi2.ini", "[data]\ndir = /d\n[sample]\nprompt = \"a ; b\"\n");
    st = ent_config_load(&cfg, path, NULL, 0);
    if (st == ENT_OK) fail_msg("prompt = \"a ; b\" read as '%s'", cfg.sample_prompt);
    char where[160];
    snprintf(where, sizeof where, "%s:4:", path);
    expect_error(st, ENT_ERR_USAGE, where, "prompt", NULL, NULL);
    // and the same through --set
    ent_config_defaults(&cfg);
    assert_int_equal(ent_config_set(&cfg, "sample.prompt=\"one\\ntwo\\tthree\\\\\""), ENT_OK);
    assert_string_equal(cfg.sample_prompt, "one\ntwo\tthree\\");
}

// ---------------------------------------------------------------------------
// round trip

// Writes cfg with ent_config_write to tmpdir/name and loads it back into out.
static void write_and_reload(const ent_config *cfg, const char *name, ent_config *out, char **text) {
    char path[128];
    *text = config_text(cfg);
    write_text(path, sizeof path, name, *text);
    ent_status st = ent_config_load(out, path, NULL, 0);
    if (st != ENT_OK) fail_msg("%s\n---\n%s", ent_last_error(), *text);
}

static void test_round_trip(void **state) {
    (void)state;
    test_reseed(6);
    for (int trial = 0; trial < 20; trial++) {
        ent_config want, first, second;
        random_config(&want);
        int use[NFIELDS];
        for (int i = 0; i < NFIELDS; i++) use[i] = 1;
        char *src = ini_text(&want, use), path[128];
        write_text(path, sizeof path, "rt0.ini", src);
        assert_int_equal(ent_config_load(&first, path, NULL, 0), ENT_OK);
        assert_config_equal(&first, &want);

        char *text1, *text2;
        write_and_reload(&first, "rt1.ini", &second, &text1);
        assert_config_equal(&second, &first);
        text2 = config_text(&second);
        assert_string_equal(text1, text2);
        // every key appears in the written text, under its section
        for (int i = 0; i < NFIELDS; i++) {
            char sec[32], key[48];
            snprintf(sec, sizeof sec, "[%s]\n", fields[i].section);
            snprintf(key, sizeof key, "\n%s = ", fields[i].key);
            const char *s = strstr(text1, sec);
            assert_non_null(s);
            assert_non_null(strstr(s, key));
        }
        assert_true(second.seed == want.seed && second.lr == want.lr);
        assert_string_equal(second.sample_prompt, want.sample_prompt);
        free(src);
        free(text1);
        free(text2);
    }
}

// Strings with " ;" (an inline comment to the INI parser) and '#' must survive
// the round trip: ent_config_write quotes them.
static void test_round_trip_inline_comment_chars(void **state) {
    (void)state;
    static const char *values[] = {"hello ;world", "a ; b", "x;y", "# not a comment", "tail ;"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        ent_config cfg, back;
        ent_config_defaults(&cfg);
        snprintf(cfg.sample_prompt, sizeof cfg.sample_prompt, "%s", values[i]);
        snprintf(cfg.data_dir, sizeof cfg.data_dir, "/tmp/%s", values[i]);
        char *text;
        write_and_reload(&cfg, "semicolon.ini", &back, &text);
        if (strcmp(back.sample_prompt, cfg.sample_prompt) != 0 || strcmp(back.data_dir, cfg.data_dir) != 0)
            fail_msg("prompt '%s' read back as '%s', data.dir '%s' as '%s'", cfg.sample_prompt,
                     back.sample_prompt, cfg.data_dir, back.data_dir);
        free(text);
    }
}

// Writes n raw bytes to tmpdir/name; path gets the full name.
static void write_bytes(char *path, size_t pn, const char *name, const void *data, size_t n) {
    snprintf(path, pn, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

typedef struct {
    const char *section, *key;
    size_t offset, cap; // the field and its size (the value holds cap - 1 bytes at most)
} text_key;

#define TEXT_KEY(s, k, f) {s, k, offsetof(ent_config, f), sizeof(((ent_config *)0)->f)}
static const text_key text_keys[] = {
    TEXT_KEY("sample", "prompt", sample_prompt), TEXT_KEY("data", "dir", data_dir),
    TEXT_KEY("data", "train_pattern", train_pattern), TEXT_KEY("data", "val_pattern", val_pattern),
    TEXT_KEY("checkpoint", "dir", ckpt_dir),
};
#define NTEXT ((int)(sizeof text_keys / sizeof text_keys[0]))

// Every string value up to its field's size is accepted, through --set and in
// a file, and comes back from the written configuration unchanged; one byte
// more is refused with the key and the limit named, never cut short. Random
// lengths around each limit, with characters that need escapes.
static void test_long_values(void **state) {
    (void)state;
    test_reseed(7);
    assert_int_equal(sizeof ((ent_config *)0)->data_dir, ENT_PATH_MAX);
    assert_int_equal(sizeof ((ent_config *)0)->sample_prompt, ENT_PROMPT_MAX);
    int accepted = 0, refused = 0;
    char *value = malloc(2 * ENT_PATH_MAX), *quoted = malloc(5 * ENT_PATH_MAX),
         *arg = malloc(5 * ENT_PATH_MAX + 64);
    assert_true(value && quoted && arg);
    for (int trial = 0; trial < 200; trial++) {
        const text_key *k = &text_keys[test_rand_int(0, NTEXT - 1)];
        // mostly near the limit: exactly at it, one over, or anywhere below
        int pick = (int)test_rand_int(0, 3), cap = (int)k->cap;
        int len = pick == 0 ? cap - 1 : pick == 1 ? cap : (int)test_rand_int(1, cap + 40);
        random_text(value, len);
        // quote it the way a user would on the command line
        size_t j = 0;
        quoted[j++] = '"';
        for (const char *p = value; *p; p++) {
            if (*p == '\\' || *p == '"') quoted[j++] = '\\', quoted[j++] = *p;
            else if (*p == '\n') quoted[j++] = '\\', quoted[j++] = 'n';
            else quoted[j++] = *p;
        }
        quoted[j++] = '"';
        quoted[j] = '\0';
        char name[64], limit[64];
        snprintf(name, sizeof name, "%s.%s", k->section, k->key);
        snprintf(limit, sizeof limit, "at most %d bytes", cap - 1);
        snprintf(arg, 5 * ENT_PATH_MAX + 64, "%s=%s", name, quoted);
        ent_config cfg, back;
        ent_config_defaults(&cfg);
        strcpy(cfg.data_dir, "/d");
        ent_status st = ent_config_set(&cfg, arg);
        if (len >= cap) {
            refused++;
            if (st == ENT_OK) fail_msg("%s: a %d-byte value accepted (the field holds %d)", name, len, cap - 1);
            expect_error(st, ENT_ERR_USAGE, name, limit, NULL, NULL);
            continue;
        }
        if (st != ENT_OK) fail_msg("%s: %d-byte value refused: %s", name, len, ent_last_error());
        accepted++;
        assert_string_equal((char *)&cfg + k->offset, value);
        char *text;
        write_and_reload(&cfg, "long.ini", &back, &text);
        assert_config_equal(&back, &cfg);
        free(text);
    }
    if (accepted == 0 || refused == 0) fail_msg("%d values accepted, %d refused", accepted, refused);

    // in a file, at each limit and one over: the message names file:line and the key
    for (int i = 0; i < NTEXT; i++) {
        const text_key *k = &text_keys[i];
        for (int over = 0; over < 2; over++) {
            int pad = (int)test_rand_int(0, 5), len = (int)k->cap - 1 + over;
            char *text = calloc(1, (size_t)len + 256), path[128], where[160], name[64];
            assert_non_null(text);
            for (int p = 0; p < pad; p++) strcat(text, "# pad\n");
            if (strcmp(k->section, "data") != 0 || strcmp(k->key, "dir") != 0)
                strcat(text, "[data]\ndir = /d\n");
            sprintf(text + strlen(text), "[%s]\n%s = ", k->section, k->key);
            size_t at = strlen(text);
            for (int c = 0; c < len; c++) text[at + c] = (char)('a' + test_rand_int(0, 25));
            int line = 1;
            for (size_t c = 0; c < at; c++) line += text[c] == '\n';
            strcat(text, "\n[model]\nlayers = 2\n");
            write_text(path, sizeof path, "limit.ini", text);
            ent_config cfg;
            ent_status st = ent_config_load(&cfg, path, NULL, 0);
            snprintf(name, sizeof name, "%s.%s", k->section, k->key);
            if (!over) {
                if (st != ENT_OK) fail_msg("%s of %d bytes in a file: %s", name, len, ent_last_error());
                assert_int_equal(strlen((char *)&cfg + k->offset), (size_t)len);
                assert_int_equal(cfg.layers, 2);
            } else {
                snprintf(where, sizeof where, "%s:%d:", path, line);
                expect_error(st, ENT_ERR_USAGE, where, name, "at most", NULL);
            }
            free(text);
        }
    }

    // a line longer than any value could need names its own line, in any section
    int lens[] = {20000, 200000};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        int pad = (int)test_rand_int(0, 5);
        char *text = calloc(1, (size_t)lens[i] + 256), path[128], where[160];
        assert_non_null(text);
        for (int k = 0; k < pad; k++) strcat(text, "# pad\n");
        strcat(text, "[data]\ndir = /");
        size_t at = strlen(text);
        for (int k = 0; k < lens[i]; k++) text[at + k] = (char)('a' + test_rand_int(0, 25));
        strcat(text, "\n[model]\nlayers = 2\n");
        write_text(path, sizeof path, "longline.ini", text);
        snprintf(where, sizeof where, "%s:%d:", path, pad + 2);
        ent_config cfg;
        expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, where, NULL, NULL, NULL);
        free(text);
    }
    free(value);
    free(quoted);
    free(arg);
}

// The first error of a file is the one reported, even when a later line is too long.
static void test_first_error_before_long_line(void **state) {
    (void)state;
    size_t n = 30000;
    char *text = calloc(1, n + 64), path[128], where[160];
    assert_non_null(text);
    strcpy(text, "[model]\nwidht = 64\n[data]\ndir = /");
    size_t at = strlen(text);
    memset(text + at, 'x', n);
    strcpy(text + at + n, "\n");
    write_text(path, sizeof path, "firsterror.ini", text);
    free(text);
    snprintf(where, sizeof where, "%s:2:", path);
    ent_config cfg;
    expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, where, "widht", NULL, NULL);
}

// Binary data in a config: a NUL byte (anywhere: at the start of a line it
// once hid the whole line, inside a value it read as "line too long") or
// another control character is an error naming the file and line; tab and CR
// are text. Seeded: random valid files, one byte replaced on a random line.
static void test_binary_bytes(void **state) {
    (void)state;
    test_reseed(11);
    static const char base[] = "; tiny\n[model]\nlayers = 2\nheads = 2\n\n[data]\ndir = /d\n"
                               "train_pattern = *tr*.bin\n[sample]\nprompt = hello there\n";
    int nlines = 0;
    for (const char *c = base; *c; c++) nlines += *c == '\n';
    for (int trial = 0; trial < 300; trial++) {
        char text[sizeof base], path[128], where[160];
        memcpy(text, base, sizeof base);
        // a byte of the chosen line (not its newline), or the start of the line
        size_t at;
        do at = (size_t)test_rand_int(0, (int64_t)sizeof base - 2);
        while (text[at] == '\n');
        if (trial % 3 == 0) while (at > 0 && text[at - 1] != '\n') at--;
        int line = 1;
        for (size_t c = 0; c < at; c++) line += text[c] == '\n';
        int byte;
        do byte = (int)test_rand_int(0, 0x7f);
        while (byte >= 0x20 && byte != 0x7f);
        if (byte == '\t' || byte == '\r' || byte == '\n') byte = 0;
        if (trial % 2 == 0) byte = 0;
        text[at] = (char)byte;
        write_bytes(path, sizeof path, "binary.ini", text, sizeof base - 1);
        ent_config cfg;
        ent_status st = ent_config_load(&cfg, path, NULL, 0);
        snprintf(where, sizeof where, "%s:%d:", path, line);
        if (st == ENT_OK) fail_msg("byte 0x%02x at offset %zu (line %d) accepted", byte, at, line);
        expect_error(st, ENT_ERR_USAGE, where, byte == 0 ? "NUL" : "control character", NULL, NULL);
    }
    (void)nlines;
    // tab and CR (Windows line ends) are text; so are bytes above 0x7f (UTF-8 or not)
    char path[128];
    static const char crlf[] = "[model]\r\nlayers\t= 3\r\n[sample]\r\nprompt = caf\xc3\xa9 \xff\r\n"
                               "[data]\r\ndir = /d\r\n";
    write_bytes(path, sizeof path, "crlf.ini", crlf, sizeof crlf - 1);
    ent_config cfg;
    ent_status st = ent_config_load(&cfg, path, NULL, 0);
    if (st != ENT_OK) fail_msg("%s", ent_last_error());
    assert_int_equal(cfg.layers, 3);
    assert_string_equal(cfg.sample_prompt, "caf\xc3\xa9 \xff");
    // a control character reaching a text value through --set is refused too
    ent_config_defaults(&cfg);
    expect_error(ent_config_set(&cfg, "sample.prompt=a\x01" "b"), ENT_ERR_USAGE, "sample.prompt",
                 "control character 0x01", NULL, NULL);
    expect_error(ent_config_set(&cfg, "data.dir=/d\r"), ENT_ERR_USAGE, "data.dir", "0x0d", NULL, NULL);
}

// Every numeric key, through --set and in a file, refuses every malformed
// number with its key named: empty, signs alone, trailing or leading junk,
// overflow, hexadecimal, inf and nan (and a sign on a seed). Seeded random
// junk around good values too.
static void test_number_syntax(void **state) {
    (void)state;
    test_reseed(12);
    static const char *bad[] = {
        "", " ", "+", "-", "--1", "+-1", "1 2", "5x", "x5", "0x10", "0X1A", "1e999", "-1e999",
        "nan", "NaN", "-nan", "inf", "-inf", "+inf", "infinity", "99999999999999999999999",
        "-99999999999999999999999", "18446744073709551616", "1,5", "1_000", "1.5.2", "..5",
        ".", "e5", "1e", "1e+", "0x1p3", "\"3\"", "3;", "1/2", "two",
    };
    static const char *bad_int[] = {"2.5", "1e3", "1.", ".5"};
    static const char *bad_u64[] = {"-1", "-0", "18446744073709551616", "-18446744073709551615", "1e3"};
    static const char junk[] = "xe,;/_#'\"abcq"; // none of them completes a number
    char arg[256], name[64];
    int checked = 0, nkeys = 0;
    // every numeric key, as the key table describes it (entente train --help)
    char *help = NULL;
    size_t helpn = 0;
    FILE *hf = open_memstream(&help, &helpn);
    assert_non_null(hf);
    ent_config_describe_keys(hf);
    assert_int_equal(fclose(hf), 0);
    for (char *line = strtok(help, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char section[32], key[32];
        if (sscanf(line, "  %31[a-z0-9_].%31[a-z0-9_] default", section, key) != 2) continue;
        int is_u64 = strstr(line, "0..18446744073709551615") != NULL;
        int is_int = !is_u64 && strstr(line, "an integer") != NULL;
        if (!is_u64 && !is_int && strstr(line, "a number in") == NULL) continue;
        nkeys++;
        snprintf(name, sizeof name, "%s.%s", section, key);
        const char **extra = is_int ? bad_int : is_u64 ? bad_u64 : NULL;
        size_t nextra = is_int ? 4 : is_u64 ? 5 : 0;
        size_t nbad = sizeof bad / sizeof bad[0];
        for (size_t b = 0; b < nbad + nextra + 20; b++) {
            char v[64];
            if (b < nbad) snprintf(v, sizeof v, "%s", bad[b]);
            else if (b < nbad + nextra) snprintf(v, sizeof v, "%s", extra[b - nbad]);
            else { // a good value with junk before or after it
                char c = junk[test_rand_int(0, (int64_t)sizeof junk - 2)];
                if (test_rand_int(0, 1)) snprintf(v, sizeof v, "1%c", c);
                else snprintf(v, sizeof v, "%c1", c);
            }
            ent_config cfg;
            ent_config_defaults(&cfg);
            snprintf(arg, sizeof arg, "%s=%s", name, v);
            ent_status st = ent_config_set(&cfg, arg);
            if (st == ENT_OK) fail_msg("--set %s accepted", arg);
            expect_error(st, ENT_ERR_USAGE, name, NULL, NULL, NULL);
            checked++;
        }
        // the same in a file, where the message names file:line:
        char text[256], path[128], where[160];
        snprintf(text, sizeof text, "[data]\ndir = /d\n[%s]\n%s = %s\n", section, key,
                 bad[test_rand_int(0, (int64_t)(sizeof bad / sizeof bad[0]) - 1)]);
        write_text(path, sizeof path, "num.ini", text);
        snprintf(where, sizeof where, "%s:4:", path);
        ent_config cfg;
        expect_error(ent_config_load(&cfg, path, NULL, 0), ENT_ERR_USAGE, where, key, NULL, NULL);
    }
    free(help);
    // the keys of every numeric kind were found (the description did not change shape)
    if (nkeys < 20) fail_msg("only %d numeric keys found in the key descriptions", nkeys);
    // and what must still read: spaces around, a plus sign, leading zeros
    ent_config cfg;
    ent_config_defaults(&cfg);
    assert_int_equal(ent_config_set(&cfg, "train.steps= 012 "), ENT_OK);
    assert_int_equal(cfg.steps, 12);
    assert_int_equal(ent_config_set(&cfg, "train.lr=+.5e-2"), ENT_OK);
    assert_true(cfg.lr == 0.005);
    assert_int_equal(ent_config_set(&cfg, "sample.seed=+7"), ENT_OK);
    assert_true(cfg.sample_seed == 7);
    print_message("%d malformed numbers refused over %d numeric keys\n", checked, nkeys);
}

// The seeds are documented as integers in 0..2^64-1: a leading zero must not
// switch to octal (nor "08" be rejected while "8" is accepted).
static void test_seed_is_decimal(void **state) {
    (void)state;
    test_reseed(8);
    ent_config cfg;
    ent_config_defaults(&cfg);
    assert_int_equal(ent_config_set(&cfg, "train.seed=18446744073709551615"), ENT_OK);
    assert_true(cfg.seed == UINT64_MAX);
    expect_error(ent_config_set(&cfg, "train.seed=18446744073709551616"), ENT_ERR_USAGE, "train.seed", NULL, NULL, NULL);
    unsigned v = (unsigned)test_rand_int(8, 99999);
    char arg[64];
    snprintf(arg, sizeof arg, "train.seed=0%u", v);
    ent_status st = ent_config_set(&cfg, arg);
    if (st != ENT_OK || cfg.seed != v)
        fail_msg("%s: status %d, seed %llu, expected %u (%s)", arg, (int)st,
                 (unsigned long long)cfg.seed, v, st ? ent_last_error() : "");
}

// ---------------------------------------------------------------------------
// learning-rate schedule

static void check_schedule(const ent_config *c) {
    double lr = c->lr, floor_lr = c->lr * c->lr_floor, prev = INFINITY;
    for (int step = 1; step <= c->steps; step++) {
        double v = ent_lr_schedule(c, step, c->steps);
        if (!isfinite(v)) fail_msg("step %d: lr %g", step, v);
        if (step <= c->warmup_steps) {
            double want = lr * step / c->warmup_steps;
            if (fabs(v - want) > 1e-15 * lr)
                fail_msg("warm-up step %d/%d: %.17g, expected %.17g", step, c->warmup_steps, v, want);
            // lr * w / w may round: allow the two roundings (at most 2^-52 relative)
            if (step == c->warmup_steps && fabs(v - lr) > 2.3e-16 * lr)
                fail_msg("end of warm-up (step %d): %.17g, expected lr %.17g", step, v, lr);
        } else {
            if (!(v <= prev)) fail_msg("step %d: %.17g rises above step %d's %.17g", step, v, step - 1, prev);
            if (!(v >= floor_lr * (1 - 1e-15) && v <= lr))
                fail_msg("step %d: %.17g outside [lr * lr_floor, lr] = [%g, %g]", step, v, floor_lr, lr);
        }
        if (step > c->warmup_steps) prev = v;
    }
    if (c->steps > c->warmup_steps) {
        double last = ent_lr_schedule(c, c->steps, c->steps);
        if (fabs(last - floor_lr) > 1e-12 * lr)
            fail_msg("last step: %.17g, expected lr * lr_floor = %.17g", last, floor_lr);
        // halfway through the decay, the cosine is at its midpoint
        int decay = c->steps - c->warmup_steps;
        if (decay % 2 == 0) {
            double mid = ent_lr_schedule(c, c->warmup_steps + decay / 2, c->steps);
            if (fabs(mid - 0.5 * (lr + floor_lr)) > 1e-12 * lr)
                fail_msg("middle of the decay: %.17g, expected %.17g", mid, 0.5 * (lr + floor_lr));
        }
    }
}

static void test_lr_schedule(void **state) {
    (void)state;
    test_reseed(9);
    for (int trial = 0; trial < 50; trial++) {
        ent_config c;
        ent_config_defaults(&c);
        c.lr = 10.0 * (1.0 - test_uniform());
        c.lr_floor = trial % 10 == 0 ? 0.0 : trial % 10 == 1 ? 1.0 : test_uniform();
        c.steps = (int)test_rand_int(2, 3000);
        c.warmup_steps = trial % 5 == 0 ? 0 : (int)test_rand_int(1, c.steps - 1);
        check_schedule(&c);
    }
    // no warm-up: the first step already decays from lr
    ent_config c;
    ent_config_defaults(&c);
    c.lr = 0.003;
    c.lr_floor = 0.1;
    c.steps = 100;
    c.warmup_steps = 0;
    check_schedule(&c);
    double first = ent_lr_schedule(&c, 1, c.steps);
    assert_true(first <= c.lr && first > 0.99 * c.lr);
    // warm-up over the whole run: ends at lr, no NaN
    c.warmup_steps = c.steps;
    check_schedule(&c);
    assert_true(fabs(ent_lr_schedule(&c, c.steps, c.steps) - c.lr) <= 1e-15);
}

// Numbers in the written configuration: the shortest text that reads back
// exactly. 3e-3 is "0.003", not %.17g's 0.0030000000000000001.
static void test_shortest_float_text(void **state) {
    (void)state;
    char buf[32];
    static const struct {
        double v;
        const char *text;
    } known[] = {{3e-3, "0.003"}, {0.1, "0.1"}, {600, "600"}, {0.95, "0.95"}, {1e-8, "1e-08"},
                 {0.1 + 0.2, "0.30000000000000004"}, {-2.5, "-2.5"}, {0.0, "0"}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        assert_string_equal(ent_format_double(known[i].v, buf, sizeof buf), known[i].text);
    test_reseed(10);
    for (int trial = 0; trial < 20000; trial++) {
        // any finite double, from its bits
        uint64_t bits = rand_u64();
        double v;
        memcpy(&v, &bits, sizeof v);
        if (!isfinite(v)) continue;
        ent_format_double(v, buf, sizeof buf);
        double back = strtod(buf, NULL);
        if (memcmp(&back, &v, sizeof v) != 0)
            fail_msg("%.17g written as '%s' reads back as %.17g", v, buf, back);
        // a decimal of k significant digits, as a person writes it, prints in
        // at most k (k from 1 to 15: every such decimal is distinct as a double)
        int k = (int)test_rand_int(1, 15);
        char dec[64];
        snprintf(dec, sizeof dec, "%.*e", k - 1, (1.0 + 9.0 * test_uniform()) *
                                                      pow(10.0, (double)test_rand_int(-30, 30)));
        v = strtod(dec, NULL);
        ent_format_double(v, buf, sizeof buf);
        int digits = 0;
        for (const char *c = buf; *c && *c != 'e'; c++) digits += *c >= '0' && *c <= '9';
        const char *lead = buf; // leading zeros of "0.00x" are not significant
        while (*lead == '0' || *lead == '.') {
            if (*lead == '0') digits--;
            lead++;
        }
        if (strpbrk(buf, ".e") == NULL) // nor the trailing zeros of a whole number
            for (const char *c = buf + strlen(buf) - 1; c > buf && *c == '0'; c--) digits--;
        if (digits > k || strtod(buf, NULL) != v)
            fail_msg("'%s' (%d significant digits) was written as '%s'", dec, k, buf);
    }
}

// Every number key through the written text and back, bit for bit, with
// random values over each key's whole range; 3e-3 appears as "lr = 0.003".
static void test_float_keys_round_trip(void **state) {
    (void)state;
    test_reseed(11);
    for (int trial = 0; trial < 200; trial++) {
        ent_config cfg, back;
        ent_config_defaults(&cfg);
        snprintf(cfg.data_dir, sizeof cfg.data_dir, "shards");
        cfg.lr = trial == 0 ? 3e-3 : 10.0 * (1.0 - test_uniform());
        cfg.lr_floor = test_uniform();
        cfg.weight_decay = test_uniform();
        cfg.beta1 = test_uniform();
        cfg.beta2 = test_uniform();
        cfg.eps = 1e-12 * (1.0 + test_uniform());
        cfg.grad_clip = 100.0 * test_uniform();
        cfg.sample_temperature = 2.0 * test_uniform();
        cfg.timeout = 1000.0 * test_uniform();
        char *text = ent_config_text(&cfg, NULL);
        assert_non_null(text);
        if (trial == 0) assert_non_null(strstr(text, "\nlr = 0.003\n"));
        ent_status st = ent_config_load_text(&back, text, "written", NULL, 0);
        if (st != ENT_OK) fail_msg("%s\n---\n%s", ent_last_error(), text);
        const double *a[] = {&cfg.lr, &cfg.lr_floor, &cfg.weight_decay, &cfg.beta1, &cfg.beta2,
                             &cfg.eps, &cfg.grad_clip, &cfg.sample_temperature, &cfg.timeout};
        const double *b[] = {&back.lr, &back.lr_floor, &back.weight_decay, &back.beta1,
                             &back.beta2, &back.eps, &back.grad_clip, &back.sample_temperature,
                             &back.timeout};
        for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
            if (memcmp(a[i], b[i], sizeof(double)) != 0)
                fail_msg("value %zu: %.17g read back as %.17g\n---\n%s", i, *a[i], *b[i], text);
        free(text);
    }
}

// The ETA of the progress line: step times that swing by 5x (noise, and an
// evaluation every 10th step) give an estimate that moves by a few percent
// from one step to the next, stays near the true mean, and follows a lasting
// change of speed within its window.
static void test_eta_smoothing(void **state) {
    (void)state;
    test_reseed(12);
    ent_eta eta = {0};
    assert_true(isnan(ent_eta_remaining(&eta, 10)));
    double base = 0.1, prev = 0.0, last_dt = 0.0, raw_swing = 1.0;
    for (int step = 1; step <= 400; step++) {
        if (step == 301) base = 0.2; // the run slows down for good
        double dt = base * (0.5 + test_uniform()) * (step % 10 == 0 ? 5.0 : 1.0);
        if (last_dt > 0 && fmax(dt / last_dt, last_dt / dt) > raw_swing)
            raw_swing = fmax(dt / last_dt, last_dt / dt);
        last_dt = dt;
        ent_eta_add(&eta, dt);
        double per_step = ent_eta_remaining(&eta, 1);
        assert_true(fabs(ent_eta_remaining(&eta, 1000) - 1000 * per_step) <= 1e-9 * per_step * 1000);
        // the true mean of a step: noise averages 1, one step in ten is 5x
        double mean = base * 1.4;
        if (step > ENT_ETA_WINDOW && step <= 300) {
            if (fabs(per_step - prev) > 0.3 * prev)
                fail_msg("step %d: the estimate moved from %g to %g s per step", step, prev, per_step);
            if (fabs(per_step - mean) > 0.35 * mean)
                fail_msg("step %d: %g s per step, the mean is %g", step, per_step, mean);
        }
        if (step >= 300 + ENT_ETA_WINDOW && fabs(per_step - mean) > 0.35 * mean)
            fail_msg("step %d: %g s per step %d steps after the slow-down, the mean is %g", step,
                     per_step, step - 300, mean);
        prev = per_step;
    }
    // the input did swing: a step-by-step estimate would have moved by 5x
    assert_true(raw_swing >= 5.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_overrides_defaults),
        cmocka_unit_test(test_load_without_file),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_inconsistent_combinations),
        cmocka_unit_test(test_set_overrides),
        cmocka_unit_test(test_quoted_strings),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_round_trip_inline_comment_chars),
        cmocka_unit_test(test_long_values),
        cmocka_unit_test(test_first_error_before_long_line),
        cmocka_unit_test(test_binary_bytes),
        cmocka_unit_test(test_number_syntax),
        cmocka_unit_test(test_seed_is_decimal),
        cmocka_unit_test(test_lr_schedule),
        cmocka_unit_test(test_shortest_float_text),
        cmocka_unit_test(test_float_keys_round_trip),
        cmocka_unit_test(test_eta_smoothing),
    };
    return cmocka_run_group_tests_name("config", tests, setup, teardown);
}
