// test_tokenizer.c: the byte-level BPE tokenizer (runtime/tokenizer.c).
//
//  - golden: the three fixtures of tests/tokenizer/ (GPT-2, Llama 3 and Qwen2
//    style, trained on the KJV with Hugging Face `tokenizers`) encode the
//    multilingual sample to exactly the ids that library gave
//    (tests/tokenizer/make_fixtures.py stored them), and decode it back to
//    its bytes, invalid UTF-8 included;
//  - round trip: fresh random byte strings (ASCII words, multi-byte UTF-8,
//    arbitrary bytes, long runs, added tokens that strip no whitespace, near
//    misses of those that do) encode to ids inside the vocabulary and decode
//    back to the same bytes;
//  - 20,000 added tokens load and split out of text; words of a million
//    bytes encode and decode;
//  - NFC: the Qwen2 style fixture encodes composed and decomposed text alike;
//  - hostile files: seeded random corruption and truncation of the fixtures
//    either loads (and then encodes and decodes) or fails naming the file;
//    each malformed or unsupported part by hand fails with ENT_ERR_INPUT,
//    the file and the JSON path.
// ENT_TEST_SEED=... reproduces a run.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ent_runtime.h"
#include "ref.h"

static const char *fixtures = ENT_TOKENIZER_FIXTURES; // tests/tokenizer
// GPT-2 style; Llama 3 style (added tokens that swallow whitespace); Qwen2
// style (the NFC normalizer): only the first gives back every text it encodes
#define NFIXTURES 3
static const char *names[NFIXTURES] = {"gpt2", "llama3", "qwen2"};
static char root[64];

static int setup(void **state) {
    (void)state;
    return test_tmpdir_create(root, sizeof root, "tokenizer");
}

static int teardown(void **state) {
    (void)state;
    return test_tree_remove(root);
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) fail_msg("cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    buf[len] = '\0';
    *n = (size_t)len;
    return buf;
}

static void write_all(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

// A fixture's tokenizer.json (the caller frees it), and a path for a copy in root.
static char *read_fixture(const char *name, size_t *n, const char *copy, char *path, size_t cap) {
    char src[512];
    snprintf(src, sizeof src, "%s/%s/tokenizer.json", fixtures, name);
    snprintf(path, cap, "%s/%s", root, copy);
    return read_all(src, n);
}

static ent_tokenizer_t *load_fixture(const char *name) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", fixtures, name);
    ent_tokenizer_t *t = NULL;
    ent_status st = ent_tokenizer_load(dir, &t);
    if (st != ENT_OK) fail_msg("%s: %s", dir, ent_last_error());
    return t;
}

static void expect_round_trip(ent_tokenizer_t *t, const char *text, size_t n) {
    uint32_t *ids = NULL;
    size_t nids = 0;
    assert_int_equal(ent_tokenizer_encode(t, text, n, &ids, &nids), ENT_OK);
    for (size_t i = 0; i < nids; i++) assert_true(ids[i] < ent_tokenizer_vocab(t));
    char *back = NULL;
    size_t len = 0;
    assert_int_equal(ent_tokenizer_decode(t, ids, nids, &back, &len), ENT_OK);
    if (len != n || memcmp(back, text, n) != 0) {
        size_t k = 0;
        while (k < n && k < len && back[k] == text[k]) k++;
        fail_msg("%zu bytes decode to %zu bytes, first difference at byte %zu", n, len, k);
    }
    free(back);
    free(ids);
}

// ---------------------------------------------------------------------------
// golden ids from the reference implementation

static void test_golden(void **state) {
    (void)state;
    char path[512];
    size_t n;
    snprintf(path, sizeof path, "%s/sample.txt", fixtures);
    char *sample = read_all(path, &n);
    for (int f = 0; f < NFIXTURES; f++) {
        ent_tokenizer_t *t = load_fixture(names[f]);
        snprintf(path, sizeof path, "%s/sample.%s.ids", fixtures, names[f]);
        size_t ntext;
        char *text = read_all(path, &ntext);
        uint32_t *want = malloc(sizeof *want * (ntext / 2 + 1));
        size_t nwant = 0;
        for (char *p = text, *end; *p != '\0' && *p != '\n'; p = end) {
            want[nwant++] = (uint32_t)strtoul(p, &end, 10);
            assert_true(end > p);
        }
        uint32_t *ids = NULL;
        size_t nids = 0;
        assert_int_equal(ent_tokenizer_encode(t, sample, n, &ids, &nids), ENT_OK);
        for (size_t i = 0; i < nids && i < nwant; i++) {
            if (ids[i] == want[i]) continue;
            size_t len;
            const char *piece = ent_tokenizer_piece(t, want[i], &len);
            fail_msg("%s: id %zu is %u, the tokenizers library gave %u ('%.*s')", names[f], i,
                     ids[i], want[i], piece ? (int)len : 0, piece ? piece : "");
        }
        assert_int_equal(nids, nwant);
        uint32_t max = 0;
        for (size_t i = 0; i < nwant; i++) max = want[i] > max ? want[i] : max;
        assert_true(ent_tokenizer_vocab(t) > max);
        // the Llama 3 style fixture has added tokens that swallow the
        // whitespace around them (lstrip, rstrip), the Qwen2 style one
        // normalizes, as in the library: their samples do not decode back whole
        if (f == 0) expect_round_trip(t, sample, n);
        free(ids);
        free(want);
        free(text);
        ent_tokenizer_free(&t);
        assert_null(t);
    }
    free(sample);
}

// The merges of a fixture rewritten from ["a", "b"] pairs to "a b" strings
// (the older format): the same ids.
static void test_merges_as_strings(void **state) {
    (void)state;
    char src[512], path[256];
    size_t n;
    char *orig = read_fixture("llama3", &n, "string_merges.json", path, sizeof path);
    char *out = malloc(n + 1);
    char *m = strstr(orig, "\"merges\":[[");
    assert_non_null(m);
    size_t head = (size_t)(m - orig) + strlen("\"merges\":["), k = head;
    memcpy(out, orig, head);
    int depth = 1, in_string = 0, quotes = 0, pairs = 0;
    for (size_t i = head; i < n; i++) {
        char c = orig[i];
        if (in_string) {
            if (c == '\\') {
                out[k++] = c;
                out[k++] = orig[++i];
                continue;
            }
            if (c == '"') in_string = 0;
            if (c == '"' && quotes == 1) continue; // the end of a: dropped
            out[k++] = c;
            continue;
        }
        if (depth == 2) {
            if (c == '"') {
                in_string = 1;
                out[k++] = quotes++ == 0 ? '"' : ' ';
            } else if (c == ']') {
                depth = 1;
                pairs++;
            }
            continue; // the comma between a and b
        }
        if (c == '[' || c == ',') { // a pair starts; between pairs
            depth = c == '[' ? 2 : 1;
            quotes = 0;
            if (c == ',') out[k++] = c;
            continue;
        }
        memcpy(out + k, orig + i, n - i); // the end of the merges: the rest as it is
        k += n - i;
        break;
    }
    assert_true(pairs > 1000);
    write_all(path, out, k);
    ent_tokenizer_t *a = load_fixture("llama3"), *b = NULL;
    if (ent_tokenizer_load(path, &b) != ENT_OK) fail_msg("%s", ent_last_error());
    snprintf(src, sizeof src, "%s/sample.txt", fixtures);
    char *sample = read_all(src, &n);
    uint32_t *ia, *ib;
    size_t na, nb;
    assert_int_equal(ent_tokenizer_encode(a, sample, n, &ia, &na), ENT_OK);
    assert_int_equal(ent_tokenizer_encode(b, sample, n, &ib, &nb), ENT_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(ia, ib, na * sizeof *ia);
    free(ia);
    free(ib);
    free(sample);
    free(orig);
    free(out);
    ent_tokenizer_free(&a);
    ent_tokenizer_free(&b);
}

// Many added tokens (20,000 after the fixture's own): they load, are found
// by their text and split out of text with their ids.
static void test_many_added_tokens(void **state) {
    (void)state;
    char path[256];
    size_t n;
    char *orig = read_fixture("gpt2", &n, "many_added.json", path, sizeof path);
    const char *anchor = "\"special\":true}";
    char *at = strstr(orig, anchor);
    assert_non_null(at);
    size_t head = (size_t)(at - orig) + strlen(anchor);
    const int count = 20000;
    char *out = malloc(n + (size_t)count * 128);
    assert_non_null(out);
    memcpy(out, orig, head);
    size_t k = head;
    for (int i = 0; i < count; i++)
        k += (size_t)sprintf(out + k, ",{\"id\":%d,\"content\":\"<x%d>\",\"single_word\":false,"
                             "\"lstrip\":false,\"rstrip\":false,\"normalized\":%s,"
                             "\"special\":%s}", 2001 + i, i, i % 2 ? "true" : "false",
                             i % 3 ? "true" : "false");
    memcpy(out + k, orig + head, n - head);
    write_all(path, out, k + n - head);
    ent_tokenizer_t *t = NULL;
    if (ent_tokenizer_load(path, &t) != ENT_OK) fail_msg("%s", ent_last_error());
    assert_int_equal(ent_tokenizer_vocab(t), 2001 + count);
    test_reseed(14);
    for (int trial = 0; trial < 50; trial++) {
        int i = (int)test_rand_int(0, count - 1);
        char name[32], text[96];
        snprintf(name, sizeof name, "<x%d>", i);
        assert_int_equal(ent_tokenizer_token_id(t, name), 2001 + i);
        int len = snprintf(text, sizeof text, "In the%s<x%d>beginning", i % 2 ? " " : "", i);
        uint32_t *ids;
        size_t nids;
        assert_int_equal(ent_tokenizer_encode(t, text, (size_t)len, &ids, &nids), ENT_OK);
        int found = 0;
        for (size_t j = 0; j < nids; j++) found += ids[j] == (uint32_t)(2001 + i);
        assert_int_equal(found, 1);
        free(ids);
    }
    ent_tokenizer_free(&t);
    free(out);
    free(orig);
}

// The Qwen2 style fixture normalizes (NFC) what it encodes: decomposed and
// composed text give the same ids, and the added token written decomposed
// matches both; the others leave text as it is.
static void test_nfc(void **state) {
    (void)state;
    const char *composed = "caf\xc3\xa9 \xc3\x85 \xea\xb0\x81";           // café Å 각
    const char *decomposed = "cafe\xcc\x81 A\xcc\x8a \xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8";
    for (int f = 0; f < NFIXTURES; f++) {
        ent_tokenizer_t *t = load_fixture(names[f]);
        uint32_t *a, *b;
        size_t na, nb;
        assert_int_equal(ent_tokenizer_encode(t, composed, strlen(composed), &a, &na), ENT_OK);
        assert_int_equal(ent_tokenizer_encode(t, decomposed, strlen(decomposed), &b, &nb), ENT_OK);
        int same = na == nb && memcmp(a, b, na * sizeof *a) == 0;
        assert_int_equal(same, strcmp(names[f], "qwen2") == 0);
        if (same) { // the added token "cafe\u0301" in both
            int64_t id = ent_tokenizer_token_id(t, "cafe\xcc\x81");
            assert_true(id >= 0);
            assert_int_equal(a[0], (uint32_t)id);
            char *text;
            size_t len;
            assert_int_equal(ent_tokenizer_decode(t, b + 1, nb - 1, &text, &len), ENT_OK);
            assert_string_equal(text, composed + 5); // the rest, normalized
            free(text);
        }
        free(a);
        free(b);
        ent_tokenizer_free(&t);
    }
}

// The document token by the documented rule, and --eot.
static void test_document_token(void **state) {
    (void)state;
    const char *expect[NFIXTURES] = {"<|endoftext|>", "<|begin_of_text|>", "<|endoftext|>"};
    for (int f = 0; f < NFIXTURES; f++) {
        ent_tokenizer_t *t = load_fixture(names[f]);
        uint32_t id, other;
        assert_int_equal(ent_tokenizer_document_token(t, NULL, &id), ENT_OK);
        assert_int_equal((int64_t)id, ent_tokenizer_token_id(t, expect[f]));
        size_t len;
        const char *piece = ent_tokenizer_piece(t, id, &len);
        assert_int_equal(len, strlen(expect[f]));
        assert_memory_equal(piece, expect[f], len);
        // any token, by its text; a missing one names itself and the file
        assert_int_equal(ent_tokenizer_document_token(t, "a", &other), ENT_OK);
        assert_int_not_equal(other, id);
        assert_int_equal(ent_tokenizer_document_token(t, "<|no such token|>", &other),
                         ENT_ERR_USAGE);
        assert_non_null(strstr(ent_last_error(), "<|no such token|>"));
        assert_non_null(strstr(ent_last_error(), "tokenizer.json"));
        ent_tokenizer_free(&t);
    }
}

// ---------------------------------------------------------------------------
// random text

static size_t random_text(char *buf, size_t cap) {
    static const char *pieces[] = {" ", "  ", "\n", "\r\n", "\t", "the", "The", " Lord", "'s",
                                   "'LL", "don't", "123", "4567", "é", "ß", "日本", "العربية",
                                   "हिन्दी", "👍🏽", "‍", "\xcc\x81", "\xff", "\xc3", "\xe2\x82",
                                   "<|endoftext|>", "<|eot_id|>", "Selah", "<MASK>", "<br",
                                   "\xc2\xa0", "\xe3\x80\x80", ".", "!!", "\xf0\x9f", "☃x"};
    size_t n = (size_t)test_rand_int(0, (int64_t)cap), k = 0;
    int mode = (int)test_rand_int(0, 2);
    while (k < n) {
        if (mode == 0) { // arbitrary bytes
            buf[k++] = (char)test_rand_int(0, 255);
        } else if (mode == 1 && test_uniform() < 0.3) { // runs of one byte
            size_t run = (size_t)test_rand_int(1, 300);
            char c = " \n.a\xff"[test_rand_int(0, 4)];
            for (size_t i = 0; i < run && k < n; i++) buf[k++] = c;
        } else {
            const char *p = pieces[test_rand_int(0, sizeof pieces / sizeof pieces[0] - 1)];
            for (size_t i = 0; p[i] != '\0' && k < n; i++) buf[k++] = p[i];
        }
    }
    return n;
}

static void test_random_round_trip(void **state) {
    (void)state;
    test_reseed(11);
    char *buf = malloc(1 << 16);
    assert_non_null(buf);
    for (int f = 0; f < 2; f++) {
        ent_tokenizer_t *t = load_fixture(names[f]);
        for (int i = 0; i < 300; i++) {
            size_t n = random_text(buf, i % 50 == 0 ? (1 << 16) : 512);
            expect_round_trip(t, buf, n);
        }
        // one word of a million bytes (a run of letters, of spaces, of 0xff)
        char *run = malloc(1 << 20);
        assert_non_null(run);
        const char fills[3] = {'a', ' ', (char)0xff};
        for (int k = 0; k < 3; k++) {
            memset(run, fills[k], 1 << 20);
            expect_round_trip(t, run, 1 << 20);
        }
        free(run);
        // encoding is deterministic: the cache gives what merging gave
        size_t n = random_text(buf, 4096);
        uint32_t *a = NULL, *b = NULL;
        size_t na, nb;
        assert_int_equal(ent_tokenizer_encode(t, buf, n, &a, &na), ENT_OK);
        ent_tokenizer_t *fresh = load_fixture(names[f]);
        assert_int_equal(ent_tokenizer_encode(fresh, buf, n, &b, &nb), ENT_OK);
        assert_int_equal(na, nb);
        if (na) assert_memory_equal(a, b, na * sizeof *a);
        free(a);
        free(b);
        ent_tokenizer_free(&fresh);
        // ids outside the vocabulary do not decode
        uint32_t bad = ent_tokenizer_vocab(t);
        char *text;
        size_t len;
        assert_int_equal(ent_tokenizer_decode(t, &bad, 1, &text, &len), ENT_ERR_INPUT);
        assert_null(ent_tokenizer_piece(t, bad, &len));
        ent_tokenizer_free(&t);
    }
    free(buf);
}

// ---------------------------------------------------------------------------
// hostile files

static void test_corruption(void **state) {
    (void)state;
    test_reseed(12);
    char path[256], src[512];
    snprintf(path, sizeof path, "%s/corrupt.json", root);
    for (int f = 0; f < NFIXTURES; f++) {
        size_t n;
        snprintf(src, sizeof src, "%s/%s/tokenizer.json", fixtures, names[f]);
        char *orig = read_all(src, &n);
        char *buf = malloc(n + 64);
        int loaded = 0, refused = 0;
        for (int trial = 0; trial < 100; trial++) {
            memcpy(buf, orig, n);
            size_t len = n;
            int kind = (int)test_rand_int(0, 3);
            if (kind == 0) { // truncated
                len = (size_t)test_rand_int(0, (int64_t)n - 1);
            } else if (kind == 1) { // a few bytes overwritten
                for (int k = (int)test_rand_int(1, 8); k > 0; k--)
                    buf[test_rand_int(0, (int64_t)n - 1)] = (char)test_rand_int(0, 255);
            } else if (kind == 2) { // a digit changed: ids and ranks
                for (int k = 0; k < 1000; k++) {
                    size_t at = (size_t)test_rand_int(0, (int64_t)n - 1);
                    if (buf[at] >= '0' && buf[at] <= '9') {
                        buf[at] = (char)('0' + test_rand_int(0, 9));
                        break;
                    }
                }
            } else { // a range swapped with another
                size_t a = (size_t)test_rand_int(0, (int64_t)n - 33);
                size_t b = (size_t)test_rand_int(0, (int64_t)n - 33), w = (size_t)test_rand_int(1, 32);
                char tmp[32];
                memcpy(tmp, buf + a, w);
                memmove(buf + a, buf + b, w);
                memcpy(buf + b, tmp, w);
            }
            write_all(path, buf, len);
            ent_tokenizer_t *t = NULL;
            ent_status st = ent_tokenizer_load(path, &t);
            if (st == ENT_OK) {
                loaded++;
                const char *text = "In the beginning, don't \xff 日本 <|endoftext|>";
                uint32_t *ids = NULL;
                size_t nids;
                char *back = NULL;
                size_t blen;
                assert_int_equal(ent_tokenizer_encode(t, text, strlen(text), &ids, &nids), ENT_OK);
                assert_int_equal(ent_tokenizer_decode(t, ids, nids, &back, &blen), ENT_OK);
                free(ids);
                free(back);
                ent_tokenizer_free(&t);
            } else {
                refused++;
                assert_null(t);
                if (strstr(ent_last_error(), path) == NULL)
                    fail_msg("message does not name %s: %s", path, ent_last_error());
            }
        }
        print_message("%s: %d corrupted files refused, %d loaded\n", names[f], refused, loaded);
        assert_true(refused > 0);
        free(buf);
        free(orig);
    }
}

// The fixture with one replacement made, loaded; the status and message.
static ent_status load_edited(const char *name, const char *from, const char *to,
                              char *path, size_t cap) {
    size_t n;
    char *orig = read_fixture(name, &n, "bad.json", path, cap);
    char *at = strstr(orig, from);
    if (at == NULL) fail_msg("%s's tokenizer.json does not hold '%s'", name, from);
    size_t lf = strlen(from), lt = strlen(to);
    char *out = malloc(n - lf + lt + 1);
    size_t head = (size_t)(at - orig);
    memcpy(out, orig, head);
    memcpy(out + head, to, lt);
    memcpy(out + head + lt, at + lf, n - head - lf);
    write_all(path, out, n - lf + lt);
    free(out);
    free(orig);
    ent_tokenizer_t *t = NULL;
    ent_status st = ent_tokenizer_load(path, &t);
    ent_tokenizer_free(&t);
    return st;
}

static void test_malformed(void **state) {
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/bad.json", root);
    static const struct {
        const char *fixture, *from, *to, *word1, *word2;
    } cases[] = {
        {"gpt2", "{\"version\"", "[{\"version\"", "not valid JSON", NULL},
        {"gpt2", "\"normalizer\":null", "\"normalizer\":{\"type\":\"NFKC\"}", "normalizer", "NFKC"},
        {"gpt2", "\"normalizer\":null", "\"normalizer\":{\"type\":\"Sequence\"}", "normalizer", "Sequence"},
        {"gpt2", "\"type\":\"BPE\"", "\"type\":\"Unigram\"", "model", "Unigram"},
        {"gpt2", "\"decoder\":{\"type\":\"ByteLevel\"", "\"decoder\":{\"type\":\"WordPiece\"",
         "decoder", "WordPiece"},
        {"gpt2", "\"pre_tokenizer\":{\"type\":\"ByteLevel\"",
         "\"pre_tokenizer\":{\"type\":\"Whitespace\"", "pre_tokenizer", "Whitespace"},
        {"gpt2", "\"vocab\":{", "\"vocabulary\":{", "model.vocab", NULL},
        {"gpt2", "\"merges\":[[", "\"merges\":[\"zzzq x\",[", "model.merges[0]", "zzzq"},
        {"gpt2", "\"merges\":[[", "\"merges\":[[\"a\",\"zzzq\"],[", "model.merges[0]", "zzzq"},
        {"gpt2", "\"merges\":[[", "\"merges\":[\"a b c\",[", "model.merges[0]", NULL},
        {"gpt2", "\"merges\":[[", "\"merges\":[[\"a\"],[", "model.merges[0]", NULL},
        {"gpt2", "\"vocab\":{", "\"vocab\":{\"zzzq\":4294967296,", "model.vocab[0]", NULL},
        {"gpt2", "\"vocab\":{", "\"vocab\":{\"zzzq\":-1,", "model.vocab[0]", NULL},
        {"gpt2", "\"vocab\":{", "\"vocab\":{\"zzzq\":1.5,", "model.vocab[0]", NULL},
        {"gpt2", "\"vocab\":{", "\"vocab\":{\"zzzq\":0,", "model.vocab", "two tokens"},
        {"gpt2", "\"id\":2000", "\"id\":1999", "added_tokens[0]", "inconsistent"},
        {"gpt2", "\"dropout\":null", "\"dropout\":0.1", "model", "dropout"},
        {"gpt2", "\"unk_token\":null", "\"unk_token\":\"<unk>\"", "model.unk_token", "<unk>"},
        {"llama3", "\"behavior\":\"Isolated\"", "\"behavior\":\"Removed\"",
         "pre_tokenizer.pretokenizers[0]", "Isolated"},
        {"llama3", "{\"Regex\":\"", "{\"Regex\":\"(\\\\p{Nonsense}", "pretokenizers[0]", "regex"},
        {"llama3", "\"use_regex\":false}", "\"use_regex\":false},{\"type\":\"Digits\"}",
         "pretokenizers[2]", "Digits"},
        {"llama3", "\"content\":\"<|eot_id|>\"", "\"content\":7", "added_tokens[2]", "content"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ent_status st = load_edited(cases[i].fixture, cases[i].from, cases[i].to, path, sizeof path);
        const char *msg = ent_last_error();
        if (st != ENT_ERR_INPUT)
            fail_msg("case %zu: status %d, expected ENT_ERR_INPUT (%s)", i, (int)st, msg);
        const char *words[3] = {path, cases[i].word1, cases[i].word2};
        for (int w = 0; w < 3; w++)
            if (words[w] && strstr(msg, words[w]) == NULL)
                fail_msg("case %zu: the message does not name '%s': %s", i, words[w], msg);
    }

    // a token longer than 65535 bytes
    char *longer = malloc(70100);
    assert_non_null(longer);
    memcpy(longer, "\"vocab\":{\"", 10);
    memset(longer + 10, 'a', 70000);
    strcpy(longer + 70010, "\":5000,");
    assert_int_equal(load_edited("gpt2", "\"vocab\":{", longer, path, sizeof path), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "70000 bytes"));
    assert_non_null(strstr(ent_last_error(), "model.vocab[0]"));
    free(longer);

    // a huge file is refused before it is read (sparse: no disk used)
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), (off_t)(1LL << 30) + 1), 0);
    fclose(f);
    ent_tokenizer_t *t = NULL;
    assert_int_equal(ent_tokenizer_load(path, &t), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), path));
    // missing, a directory without tokenizer.json, a FIFO-free path check
    assert_int_equal(ent_tokenizer_load(root, &t), ENT_ERR_INPUT);
    assert_non_null(strstr(ent_last_error(), "tokenizer.json"));
    unlink(path);
    assert_int_equal(ent_tokenizer_load(path, &t), ENT_ERR_INPUT);
    assert_null(t);
}

int main(void) {
    test_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_merges_as_strings),
        cmocka_unit_test(test_nfc),
        cmocka_unit_test(test_document_token),
        cmocka_unit_test(test_many_added_tokens),
        cmocka_unit_test(test_random_round_trip),
        cmocka_unit_test(test_corruption),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
