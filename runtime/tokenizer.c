// tokenizer.c: byte-level BPE from a Hugging Face tokenizer.json (GPT-2, Llama 3,
// Qwen2 and their kin), for `data prepare --tokenizer` and for sampling.
//
// Encoding follows the `tokenizers` library step by step, so that the ids are
// the library's ids:
//   1. added tokens are split out of the raw text, first those not matched on
//      normalized text, then the pieces between are normalized (none, or NFC
//      as Qwen2 has it) and the others split out of them (leftmost-longest
//      match; single_word, lstrip and rstrip as the library applies them);
//   2. each remaining piece is cut at invalid UTF-8 (the library takes only
//      text): every valid run goes through the pre-tokenizer, every run of
//      invalid bytes straight to the model as one word, so any bytes encode
//      and decode back;
//   3. the pre-tokenizer: Split steps (a regex, Isolated) then ByteLevel (an
//      optional prefix space, GPT-2's regex when use_regex);
//   4. the BPE model merges each word by merge rank, lowest rank first and
//      leftmost first among equals (a heap over the word's symbols), with
//      ignore_merges, byte_fallback and unk_token as the library has them.
// The model works on raw bytes: the byte-level alphabet (GPT-2's byte-to-
// unicode table) is undone once when the vocabulary is loaded. The regexes
// are PCRE2's (JIT, UTF + UCP); the JSON is cJSON's.
#include "runtime_impl.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <errno.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uninorm.h>
#include <unistd.h>

#define TOKENIZER_FILE_MAX ((size_t)1 << 30) // a tokenizer.json larger than this is refused
#define TOKEN_BYTES_MAX 65535                 // the longest token text accepted
#define CACHE_SLOTS 65536                     // words remembered by the encoder
#define CACHE_WORD_MAX 24                     // longest word (bytes) the cache holds
#define CACHE_IDS_MAX 8                       // most ids a cached word may have

static const char *gpt2_pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// ---------------------------------------------------------------------------
// the byte-level alphabet: byte b is written as code point byte_cp[b]

static uint16_t byte_cp[256];
static int16_t cp_byte[324]; // the inverse, -1 where a code point is not in the alphabet

static void alphabet_init(void) {
    static int done;
    if (done) return;
    int n = 0;
    for (int cp = 0; cp < 324; cp++) cp_byte[cp] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        byte_cp[b] = (uint16_t)(printable ? b : 256 + n++);
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
    done = 1;
}

// ---------------------------------------------------------------------------
// UTF-8

// The length of the well-formed UTF-8 sequence at s (n > 0 bytes left), with
// its code point, or 0 when none starts there (overlong, surrogate, > U+10FFFF,
// truncated).
static int utf8_char(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) len = 2, v = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, v = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

// Bytes of s (n) that are well-formed UTF-8 from the start.
static size_t utf8_valid_prefix(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) { // ASCII, 8 bytes at a time
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        uint32_t cp;
        int len = utf8_char(s + i, n - i, &cp);
        if (len == 0) break;
        i += (size_t)len;
    }
    return i;
}

static int utf8_encode(uint32_t cp, unsigned char *out) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

// Unicode White_Space (what `\s` matches in the library's Rust regexes).
static int is_space_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

// The code point that ends s[0..n) (-1 when it is not well-formed UTF-8).
static int64_t utf8_last(const unsigned char *s, size_t n) {
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        uint32_t cp;
        if ((s[n - back] & 0xC0) == 0x80) continue;
        return utf8_char(s + n - back, back, &cp) == (int)back ? (int64_t)cp : -1;
    }
    return -1;
}

// The NFC of n bytes of valid UTF-8 (libunistring), malloc'd, *len bytes, or
// NULL when out of memory. Text that is ASCII is its own NFC.
static unsigned char *nfc(const void *p, size_t n, size_t *len) {
    size_t k = 0;
    while (k < n && ((const unsigned char *)p)[k] < 0x80) k++;
    unsigned char *out;
    if (k == n) {
        out = malloc(n + 1);
        if (out) memcpy(out, p, n);
        *len = n;
    } else {
        *len = 0;
        out = u8_normalize(UNINORM_NFC, p, n, NULL, len);
        if (out) {
            unsigned char *grown = realloc(out, *len + 1); // room for the NUL
            if (grown == NULL) free(out);
            out = grown;
        }
    }
    if (out) out[*len] = '\0';
    return out;
}

// ---------------------------------------------------------------------------
// the tokenizer

typedef struct {
    char *text;             // as the file gives it (token_id finds it by this)
    unsigned char *content; // what is matched in text: text, or its NFC
    size_t len;             // of content; 0 for a token the library ignores
    uint32_t id;
    int single_word, lstrip, rstrip, normalized;
} added_token;

// The added tokens matched in one pass, found by their first two bytes:
// tok[first[k] .. first[k + 1]) start with the bytes k = b0 * 256 + b1, longest
// first; one-byte tokens come after, in one[b0] (-1: none).
typedef struct {
    added_token **tok;
    int n;
    int *first;     // (65537)
    int one[256];
} added_set;

typedef struct {
    pcre2_code *re;
    int byte_level;       // 1: ByteLevel (add_prefix_space, then re if use_regex)
    int add_prefix_space;
} pre_step;

typedef struct {
    uint64_t key; // (left << 32 | right) + 1; 0 = empty
    uint32_t rank, id;
} merge_slot;

typedef struct {
    uint64_t hash;
    uint8_t len, nids; // len 0 = empty
    unsigned char word[CACHE_WORD_MAX];
    uint32_t ids[CACHE_IDS_MAX];
} cache_slot;

struct ent_tokenizer {
    char *path;
    uint32_t nids;           // largest id + 1
    uint64_t *piece;         // (nids) offset << 24 | length into bytes: what each id decodes to
    unsigned char *bytes;    // the pieces
    size_t nbytes, cap_bytes;
    unsigned char *is_id;    // (nids) 1 where an id exists
    // model tokens by their raw bytes (the vocabulary's byte-level text undone)
    uint32_t *vocab_slots;   // id + 1, 0 = empty
    size_t vocab_mask;
    size_t model_size;       // entries of model.vocab
    uint32_t *foreign_slots; // model tokens outside the byte-level alphabet, by their
                             // UTF-8 (only named: unk_token, merges), id + 1
    int64_t *added_by_id;    // (nids) the added token of an id, -1 if none
    uint32_t *added_slots;   // added tokens by their text: index + 1, 0 = empty
    size_t added_mask;
    merge_slot *merges;
    size_t merge_mask;
    int64_t byte_id[256];         // the token of each single byte, -1 if none
    int64_t fallback[256][3];     // byte_fallback: <0xXX> of the UTF-8 of byte_cp[b]
    int byte_fallback, ignore_merges, fuse_unk;
    int nfc;                      // the normalizer: NFC (Qwen2), or none
    int64_t unk;                  // -1: none
    added_token *added;
    int nadded;
    added_set raw_set, norm_set;
    pre_step *steps;
    int nsteps;
    pcre2_code *word_re;     // one word character (single_word added tokens)
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    cache_slot *cache;
    // scratch of the encoder
    unsigned char *scratch;
    size_t scratch_cap;
};

// ---------------------------------------------------------------------------
// loading

typedef struct {
    const char *path;
    char where[160]; // the JSON path of the value being read
} loader;

static ent_status bad(const loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static ent_status bad(const loader *L, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ent_fail(ENT_ERR_INPUT, "%s: %s: %s", L->path, L->where, msg);
}

#define WHERE(L, ...) snprintf((L)->where, sizeof (L)->where, __VA_ARGS__)

// A JSON string shown in a message: at most 40 bytes, control bytes as '?'.
static const char *shown(const char *s, char *buf, size_t n) {
    size_t k = 0;
    for (; s[k] != '\0' && k + 1 < n && k < 40; k++)
        buf[k] = (unsigned char)s[k] < 0x20 ? '?' : s[k];
    buf[k] = '\0';
    return buf;
}

static ent_status get_bool(const loader *L, const cJSON *obj, const char *key, int def, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL || cJSON_IsNull(v)) {
        *out = def;
        return ENT_OK;
    }
    if (!cJSON_IsBool(v)) return bad(L, "'%s' is not true or false", key);
    *out = cJSON_IsTrue(v);
    return ENT_OK;
}

static ent_status get_id(const loader *L, const cJSON *v, uint32_t *id) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble >= ENT_VOCAB_MAX ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return bad(L, "a token id must be an integer in 0..%d", ENT_VOCAB_MAX - 1);
    *id = (uint32_t)v->valuedouble;
    return ENT_OK;
}

// Appends a piece to the pieces of the tokenizer; *off gets its offset.
static ent_status put_bytes(ent_tokenizer_t *t, const void *p, size_t n, size_t *off) {
    if (t->nbytes + n > t->cap_bytes) {
        size_t cap = t->cap_bytes ? t->cap_bytes : 1 << 16;
        while (cap < t->nbytes + n) cap *= 2;
        unsigned char *b = realloc(t->bytes, cap);
        ENT_ALLOC_CHECK(b, "the tokenizer's vocabulary");
        t->bytes = b;
        t->cap_bytes = cap;
    }
    memcpy(t->bytes + t->nbytes, p, n);
    *off = t->nbytes;
    t->nbytes += n;
    return ENT_OK;
}

static const unsigned char *id_bytes(const ent_tokenizer_t *t, uint32_t id, size_t *len) {
    *len = (size_t)(t->piece[id] & 0xFFFFFF);
    return t->bytes + (t->piece[id] >> 24);
}

// Undoes the byte-level alphabet: 1 with out (n bytes) filled when every
// character of s is in it, 0 otherwise. out has room for strlen(s) bytes.
static int from_byte_level(const char *s, unsigned char *out, size_t *n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s), i = 0, k = 0;
    while (i < len) {
        uint32_t cp;
        int l = utf8_char(p + i, len - i, &cp);
        if (l == 0 || cp >= 324 || cp_byte[cp] < 0) return 0;
        out[k++] = (unsigned char)cp_byte[cp];
        i += (size_t)l;
    }
    *n = k;
    return 1;
}

static uint64_t hash_bytes(const void *p, size_t n) { return ent_hash_bytes(p, n, 0x70c3); }

static int64_t table_find(const ent_tokenizer_t *t, const uint32_t *slots, const void *p,
                          size_t n) {
    for (size_t s = hash_bytes(p, n) & t->vocab_mask;; s = (s + 1) & t->vocab_mask) {
        uint32_t v = slots[s];
        if (v == 0) return -1;
        size_t len;
        const unsigned char *b = id_bytes(t, v - 1, &len);
        if (len == n && memcmp(b, p, n) == 0) return v - 1;
    }
}

static int64_t vocab_find(const ent_tokenizer_t *t, const void *p, size_t n) {
    return table_find(t, t->vocab_slots, p, n);
}

// Adds id to a table under its bytes; 0 when those bytes are there already.
static int table_insert(ent_tokenizer_t *t, uint32_t *slots, uint32_t id) {
    size_t len;
    const unsigned char *b = id_bytes(t, id, &len);
    if (table_find(t, slots, b, len) >= 0) return 0;
    size_t s = hash_bytes(b, len) & t->vocab_mask;
    while (slots[s] != 0) s = (s + 1) & t->vocab_mask;
    slots[s] = id + 1;
    return 1;
}

static const merge_slot *merge_find(const ent_tokenizer_t *t, uint32_t a, uint32_t b) {
    uint64_t key = ((uint64_t)a << 32 | b) + 1;
    for (size_t s = ent_hash64(key) & t->merge_mask;; s = (s + 1) & t->merge_mask) {
        if (t->merges[s].key == key) return &t->merges[s];
        if (t->merges[s].key == 0) return NULL;
    }
}

// A model token by its name in the file (unk_token, <0xXX>, a merge's parts), or -1.
static int64_t model_token(const ent_tokenizer_t *t, const char *name) {
    size_t len = strlen(name), n;
    unsigned char *buf = malloc(len + 1);
    if (buf == NULL) return -1;
    int64_t id = -1;
    if (from_byte_level(name, buf, &n)) id = vocab_find(t, buf, n);
    else id = table_find(t, t->foreign_slots, name, len);
    free(buf);
    return id;
}

// What the ByteLevel decoder makes of a token's text: the bytes behind its
// byte-level characters, or its own UTF-8 when one is outside the alphabet.
static ent_status set_piece(ent_tokenizer_t *t, const loader *L, uint32_t id, const char *text,
                            int *byte_level) {
    size_t len = strlen(text), n = 0, off = 0;
    if (len > TOKEN_BYTES_MAX)
        return bad(L, "a token of %zu bytes (at most %d)", len, TOKEN_BYTES_MAX);
    unsigned char *buf = malloc(len + 1);
    ENT_ALLOC_CHECK(buf, "a token");
    *byte_level = from_byte_level(text, buf, &n);
    ent_status st = *byte_level ? put_bytes(t, buf, n, &off) : put_bytes(t, text, n = len, &off);
    free(buf);
    if (st == ENT_OK) {
        t->piece[id] = (uint64_t)off << 24 | n;
        t->is_id[id] = 1;
    }
    return st;
}

static size_t pow2_above(size_t n) {
    size_t p = 16;
    while (p < n * 2) p *= 2;
    return p;
}

static ent_status load_vocab(ent_tokenizer_t *t, loader *L, const cJSON *model,
                             const cJSON *added) {
    WHERE(L, "model.vocab");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) return bad(L, "missing, or not an object of token: id");
    // ids: the largest, over the model and the added tokens, sizes the tables
    uint32_t maxid = 0;
    size_t count = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        uint32_t id = 0;
        WHERE(L, "model.vocab[%zu]", count);
        ENT_CHECK(get_id(L, e, &id));
        maxid = id > maxid ? id : maxid;
        count++;
    }
    if (count == 0) return bad(L, "the vocabulary is empty");
    size_t k = 0;
    cJSON_ArrayForEach(e, added) {
        WHERE(L, "added_tokens[%zu].id", k++);
        uint32_t id = 0;
        ENT_CHECK(get_id(L, cJSON_GetObjectItemCaseSensitive(e, "id"), &id));
        maxid = id > maxid ? id : maxid;
    }
    t->nids = maxid + 1;
    t->model_size = count;
    t->piece = calloc(t->nids, sizeof *t->piece);
    t->is_id = calloc(t->nids, 1);
    t->vocab_mask = pow2_above(count) - 1;
    t->vocab_slots = calloc(t->vocab_mask + 1, sizeof *t->vocab_slots);
    t->foreign_slots = calloc(t->vocab_mask + 1, sizeof *t->foreign_slots);
    t->added_by_id = malloc(t->nids * sizeof *t->added_by_id);
    ENT_ALLOC_CHECK(t->piece && t->is_id && t->vocab_slots && t->foreign_slots && t->added_by_id
                        ? t : NULL, "the tokenizer's vocabulary");
    for (uint32_t i = 0; i < t->nids; i++) t->added_by_id[i] = -1;
    k = 0;
    cJSON_ArrayForEach(e, vocab) {
        char s[48];
        uint32_t id = (uint32_t)e->valuedouble;
        WHERE(L, "model.vocab[%zu] (\"%s\")", k++, shown(e->string, s, sizeof s));
        if (t->is_id[id]) return bad(L, "id %u is given to two tokens", id);
        int byte_level;
        ENT_CHECK(set_piece(t, L, id, e->string, &byte_level));
        if (!table_insert(t, byte_level ? t->vocab_slots : t->foreign_slots, id))
            return bad(L, "the token appears twice");
    }
    return ENT_OK;
}

static ent_status load_merges(ent_tokenizer_t *t, loader *L, const cJSON *model) {
    WHERE(L, "model.merges");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (merges == NULL || cJSON_IsNull(merges)) merges = NULL;
    else if (!cJSON_IsArray(merges)) return bad(L, "not an array");
    size_t n = merges ? (size_t)cJSON_GetArraySize(merges) : 0;
    t->merge_mask = pow2_above(n) - 1;
    t->merges = calloc(t->merge_mask + 1, sizeof *t->merges);
    ENT_ALLOC_CHECK(t->merges, "the merges");
    size_t rank = 0;
    const cJSON *m;
    char *both = NULL;
    ent_status st = ENT_OK;
    cJSON_ArrayForEach(m, merges) {
        WHERE(L, "model.merges[%zu]", rank);
        const char *a = NULL, *b = NULL;
        char *space = NULL;
        if (cJSON_IsString(m)) { // "a b"
            space = strchr(m->valuestring, ' ');
            if (space == NULL || strchr(space + 1, ' ') != NULL) {
                st = bad(L, "expected two tokens separated by one space");
                break;
            }
            *space = '\0';
            a = m->valuestring;
            b = space + 1;
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) { // ["a", "b"]
            a = cJSON_GetArrayItem(m, 0)->valuestring;
            b = cJSON_GetArrayItem(m, 1)->valuestring;
        } else {
            st = bad(L, "expected \"A B\" or [\"A\", \"B\"]");
            break;
        }
        int64_t ia = model_token(t, a), ib = model_token(t, b);
        size_t la = strlen(a), lb = strlen(b);
        free(both);
        both = malloc(la + lb + 1);
        if (both == NULL) {
            st = ent_fail(ENT_ERR_NOMEM, "out of memory reading the merges");
            break;
        }
        memcpy(both, a, la);
        memcpy(both + la, b, lb + 1);
        int64_t ic = model_token(t, both);
        char s[48];
        if (ia < 0 || ib < 0 || ic < 0) {
            st = bad(L, "'%s' is not in the vocabulary",
                     shown(ia < 0 ? a : ib < 0 ? b : both, s, sizeof s));
        }
        if (space) *space = ' ';
        if (st != ENT_OK) break;
        // a pair given twice keeps its last rank, as the library's map does
        uint64_t key = ((uint64_t)ia << 32 | (uint64_t)ib) + 1;
        size_t slot = ent_hash64(key) & t->merge_mask;
        while (t->merges[slot].key != 0 && t->merges[slot].key != key)
            slot = (slot + 1) & t->merge_mask;
        t->merges[slot] = (merge_slot){.key = key, .rank = (uint32_t)rank, .id = (uint32_t)ic};
        rank++;
    }
    free(both);
    return st;
}

// The id the library gives the next added token (it does not read the file's
// id): the id of an added token with this text, else the model's id of its
// text, else one past the largest added id so far (*max, -1 if none), or the
// model's size when those are all below it.
static uint32_t library_added_id(const ent_tokenizer_t *t, const char *content, int64_t max) {
    int64_t id = ent_tokenizer_token_id(t, content);
    if (id >= 0) return (uint32_t)id;
    if (max < 0) return (uint32_t)t->model_size;
    return max >= (int64_t)t->model_size ? (uint32_t)max + 1 : (uint32_t)t->model_size;
}

static int added_key(const added_token *a) {
    return a->len >= 2 ? a->content[0] * 256 + a->content[1] : 65536; // one byte: last
}

static int compare_added(const void *x, const void *y) {
    const added_token *a = *(added_token *const *)x, *b = *(added_token *const *)y;
    int ka = added_key(a), kb = added_key(b);
    if (ka != kb) return ka < kb ? -1 : 1;
    return a->len > b->len ? -1 : a->len < b->len;
}

static ent_status build_set(ent_tokenizer_t *t, added_set *set, int normalized) {
    set->tok = calloc((size_t)t->nadded + 1, sizeof *set->tok);
    set->first = calloc(65537, sizeof *set->first);
    ENT_ALLOC_CHECK(set->tok && set->first ? set : NULL, "the added tokens");
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].normalized == normalized && t->added[i].len > 0)
            set->tok[set->n++] = &t->added[i];
    qsort(set->tok, (size_t)set->n, sizeof *set->tok, compare_added);
    int k = 0;
    for (int key = 0; key <= 65536; key++) {
        while (k < set->n && added_key(set->tok[k]) < key) k++;
        set->first[key] = k;
    }
    for (int b = 0; b < 256; b++) set->one[b] = -1;
    for (int i = 0; i < set->n; i++)
        if (set->tok[i]->len == 1) set->one[set->tok[i]->content[0]] = i;
    return ENT_OK;
}

static ent_status compile_regex(loader *L, const char *pattern, int literal, pcre2_code **out) {
    int err;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &err, &off,
                                   NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return bad(L, "the regex does not compile at offset %zu: %s", (size_t)off, (char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // without JIT, pcre2_match interprets it
    *out = re;
    return ENT_OK;
}

static ent_status load_added(ent_tokenizer_t *t, loader *L, const cJSON *added) {
    int n = added ? cJSON_GetArraySize(added) : 0;
    t->added = calloc((size_t)n + 1, sizeof *t->added);
    ENT_ALLOC_CHECK(t->added, "the added tokens");
    int64_t max = -1; // the largest added id so far
    t->added_mask = pow2_above((size_t)n) - 1;
    t->added_slots = calloc(t->added_mask + 1, sizeof *t->added_slots);
    ENT_ALLOC_CHECK(t->added_slots, "the added tokens");
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(added, i);
        WHERE(L, "added_tokens[%d]", i);
        if (!cJSON_IsObject(e)) return bad(L, "not an object");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsString(c)) return bad(L, "'content' is missing or not a string");
        added_token *a = &t->added[i];
        uint32_t file_id = 0;
        WHERE(L, "added_tokens[%d].id", i);
        ENT_CHECK(get_id(L, cJSON_GetObjectItemCaseSensitive(e, "id"), &file_id));
        WHERE(L, "added_tokens[%d]", i);
        ENT_CHECK(get_bool(L, e, "single_word", 0, &a->single_word));
        ENT_CHECK(get_bool(L, e, "lstrip", 0, &a->lstrip));
        ENT_CHECK(get_bool(L, e, "rstrip", 0, &a->rstrip));
        ENT_CHECK(get_bool(L, e, "normalized", 1, &a->normalized));
        uint32_t id = library_added_id(t, c->valuestring, max);
        char s[48];
        if (id != file_id)
            return bad(L, "\"%s\" has id %u, but the tokenizers library gives it id %u (a "
                       "model token's own id, else the next free id): the file is inconsistent",
                       shown(c->valuestring, s, sizeof s), file_id, id);
        a->id = id;
        a->text = strdup(c->valuestring);
        ENT_ALLOC_CHECK(a->text, "an added token");
        t->nadded = i + 1;
        if (t->added_by_id[id] >= 0) continue; // the same text again: the library keeps one
        size_t tlen = strlen(a->text);
        // matched as the normalizer leaves it when `normalized`
        if (t->nfc && a->normalized) a->content = nfc(a->text, tlen, &a->len);
        else a->content = (unsigned char *)strdup(a->text), a->len = tlen;
        ENT_ALLOC_CHECK(a->content, "an added token");
        t->added_by_id[id] = i;
        size_t slot = hash_bytes(a->text, tlen) & t->added_mask;
        while (t->added_slots[slot] != 0) slot = (slot + 1) & t->added_mask;
        t->added_slots[slot] = (uint32_t)i + 1;
        max = (int64_t)id > max ? (int64_t)id : max;
        if (!t->is_id[id]) {
            int byte_level;
            ENT_CHECK(set_piece(t, L, id, c->valuestring, &byte_level));
        }
    }
    for (int i = 0; i < t->nadded && t->word_re == NULL; i++)
        if (t->added[i].single_word)
            ENT_CHECK(compile_regex(L, "^[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]", 0,
                                    &t->word_re));
    ENT_CHECK(build_set(t, &t->raw_set, 0));
    return build_set(t, &t->norm_set, 1);
}

static ent_status load_pre_step(loader *L, const cJSON *p, pre_step *step) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (!cJSON_IsString(type)) return bad(L, "'type' is missing");
    if (strcmp(type->valuestring, "ByteLevel") == 0) {
        int use_regex = 1;
        step->byte_level = 1;
        ENT_CHECK(get_bool(L, p, "add_prefix_space", 1, &step->add_prefix_space));
        ENT_CHECK(get_bool(L, p, "use_regex", 1, &use_regex));
        if (use_regex) ENT_CHECK(compile_regex(L, gpt2_pattern, 0, &step->re));
        return ENT_OK;
    }
    if (strcmp(type->valuestring, "Split") != 0)
        return bad(L, "pre-tokenizer '%s' is not supported (ByteLevel, or a Sequence of Split "
                   "and ByteLevel)", type->valuestring);
    const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(p, "behavior");
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(p, "pattern");
    int invert = 0;
    ENT_CHECK(get_bool(L, p, "invert", 0, &invert));
    if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") != 0)
        return bad(L, "Split: only behavior \"Isolated\" is supported");
    if (invert) return bad(L, "Split: invert = true is not supported");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
    const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pattern, "String");
    if (cJSON_IsString(re)) return compile_regex(L, re->valuestring, 0, &step->re);
    if (cJSON_IsString(lit)) return compile_regex(L, lit->valuestring, 1, &step->re);
    return bad(L, "Split: 'pattern' must be {\"Regex\": ...} or {\"String\": ...}");
}

static ent_status load_pre_tokenizer(ent_tokenizer_t *t, loader *L, const cJSON *root) {
    WHERE(L, "pre_tokenizer");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (!cJSON_IsObject(p) || !cJSON_IsString(type))
        return bad(L, "missing: byte-level BPE needs a ByteLevel pre-tokenizer");
    const cJSON *list = NULL;
    int n = 1;
    if (strcmp(type->valuestring, "Sequence") == 0) {
        list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return bad(L, "Sequence: 'pretokenizers' is not an array");
        n = cJSON_GetArraySize(list);
        if (n == 0) return bad(L, "Sequence: empty, but byte-level BPE needs ByteLevel");
        if (n > 64) return bad(L, "Sequence: %d steps, more than the 64 supported", n);
    }
    t->steps = calloc((size_t)n + 1, sizeof *t->steps);
    ENT_ALLOC_CHECK(t->steps, "the pre-tokenizer");
    for (int i = 0; i < n; i++) {
        if (list) WHERE(L, "pre_tokenizer.pretokenizers[%d]", i);
        const cJSON *s = list ? cJSON_GetArrayItem(list, i) : p;
        if (!cJSON_IsObject(s)) return bad(L, "not an object");
        t->nsteps = i + 1;
        ENT_CHECK(load_pre_step(L, s, &t->steps[i]));
    }
    for (int i = 0; i < n; i++) {
        if (list) WHERE(L, "pre_tokenizer.pretokenizers[%d]", i);
        if (t->steps[i].byte_level != (i == n - 1))
            return bad(L, "ByteLevel must come once, last (it turns bytes into its alphabet)");
    }
    return ENT_OK;
}

static ent_status load_model(ent_tokenizer_t *t, loader *L, const cJSON *root) {
    WHERE(L, "model");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return bad(L, "missing or not an object");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") != 0)
        return bad(L, "model type '%s' is not supported (BPE only)",
                   cJSON_IsString(type) ? type->valuestring : "(none)");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return bad(L, "dropout is random: only null or 0 is supported");
    static const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (a && !cJSON_IsNull(a) && !(cJSON_IsString(a) && a->valuestring[0] == '\0'))
            return bad(L, "%s is not supported by byte-level BPE (null or \"\" only)", affixes[i]);
    }
    ENT_CHECK(get_bool(L, model, "byte_fallback", 0, &t->byte_fallback));
    ENT_CHECK(get_bool(L, model, "ignore_merges", 0, &t->ignore_merges));
    ENT_CHECK(get_bool(L, model, "fuse_unk", 0, &t->fuse_unk));
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    WHERE(L, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) return bad(L, "not an array");
    if (!cJSON_IsArray(added)) added = NULL;
    ENT_CHECK(load_vocab(t, L, model, added));
    ENT_CHECK(load_merges(t, L, model));
    WHERE(L, "model.unk_token");
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    t->unk = -1;
    if (unk && !cJSON_IsNull(unk)) {
        char s[48];
        if (!cJSON_IsString(unk)) return bad(L, "not a string");
        t->unk = model_token(t, unk->valuestring);
        if (t->unk < 0) return bad(L, "\"%s\" is not in the vocabulary", shown(unk->valuestring, s, sizeof s));
    }
    for (int b = 0; b < 256; b++) {
        unsigned char one = (unsigned char)b, utf8[3];
        t->byte_id[b] = vocab_find(t, &one, 1);
        int n = utf8_encode(byte_cp[b], utf8);
        for (int k = 0; k < 3; k++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", utf8[k]);
            t->fallback[b][k] = k < n ? model_token(t, name) : -2; // -2: past the end
        }
    }
    return load_added(t, L, added);
}

static ent_status load_root(ent_tokenizer_t *t, loader *L, const cJSON *root) {
    WHERE(L, "(top level)");
    if (!cJSON_IsObject(root)) return bad(L, "not a JSON object");
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(root, "version");
    WHERE(L, "version");
    if (version && !(cJSON_IsString(version) && strcmp(version->valuestring, "1.0") == 0))
        return bad(L, "only tokenizer.json version \"1.0\" is supported");
    WHERE(L, "normalizer");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(norm, "type");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "NFC") != 0)
            return bad(L, "normalizer '%s' is not supported (null or NFC only)",
                       cJSON_IsString(type) ? type->valuestring : "(no type)");
        t->nfc = 1;
    }
    WHERE(L, "decoder");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(dec, "type");
    if (!cJSON_IsString(dtype) || strcmp(dtype->valuestring, "ByteLevel") != 0)
        return bad(L, "decoder '%s' is not supported (ByteLevel only)",
                   cJSON_IsString(dtype) ? dtype->valuestring : "(none)");
    ENT_CHECK(load_model(t, L, root));
    return load_pre_tokenizer(t, L, root);
}

// DIR/tokenizer.json, or path itself when it is a file.
static ent_status tokenizer_file(const char *path, char *out, size_t n) {
    struct stat st;
    if (stat(path, &st) != 0)
        return ent_fail(ENT_ERR_INPUT, "cannot read tokenizer %s: %s", path, strerror(errno));
    int len = S_ISDIR(st.st_mode) ? snprintf(out, n, "%s/tokenizer.json", path)
                                  : snprintf(out, n, "%s", path);
    if (len < 0 || (size_t)len >= n)
        return ent_fail(ENT_ERR_USAGE, "tokenizer path %.200s... is too long", path);
    return ENT_OK;
}

ent_status ent_tokenizer_load(const char *path, ent_tokenizer_t **out) {
    *out = NULL;
    alphabet_init();
    char file[ENT_PATH_MAX + 32];
    ENT_CHECK(tokenizer_file(path, file, sizeof file));
    int fd;
    ENT_CHECK(ent_open_regular(file, "tokenizer", ENT_ERR_INPUT, &fd));
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size > TOKENIZER_FILE_MAX) {
        close(fd);
        return ent_fail(ENT_ERR_INPUT, "tokenizer %s: %lld bytes, more than the %zu a "
                        "tokenizer.json may have", file, (long long)st.st_size, TOKENIZER_FILE_MAX);
    }
    size_t size = (size_t)st.st_size;
    char *text = malloc(size + 1);
    if (text == NULL) {
        close(fd);
        return ent_fail(ENT_ERR_NOMEM, "out of memory reading tokenizer %s", file);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, text + got, size - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != size) {
        free(text);
        return ent_fail(ENT_ERR_IO, "cannot read tokenizer %s: %s", file,
                        got < size ? "short read" : strerror(errno));
    }
    cJSON *root = cJSON_ParseWithLength(text, size);
    if (root == NULL) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= text && at <= text + size ? (size_t)(at - text) : 0;
        free(text);
        return ent_fail(ENT_ERR_INPUT, "tokenizer %s is not valid JSON (near byte %zu)", file, off);
    }
    free(text);
    ent_tokenizer_t *t = calloc(1, sizeof *t);
    ent_status st2 = t ? ENT_OK : ent_fail(ENT_ERR_NOMEM, "out of memory");
    loader L = {.path = file};
    if (st2 == ENT_OK) {
        t->path = strdup(file);
        t->cache = calloc(CACHE_SLOTS, sizeof *t->cache);
        t->md = pcre2_match_data_create(32, NULL);
        t->mctx = pcre2_match_context_create(NULL);
        t->jit_stack = pcre2_jit_stack_create(32 << 10, 8 << 20, NULL);
        if (!t->path || !t->cache || !t->md || !t->mctx || !t->jit_stack)
            st2 = ent_fail(ENT_ERR_NOMEM, "out of memory loading tokenizer %s", file);
        else pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
    }
    if (st2 == ENT_OK) st2 = load_root(t, &L, root);
    cJSON_Delete(root);
    if (st2 != ENT_OK) {
        ent_tokenizer_free(&t);
        return st2;
    }
    *out = t;
    return ENT_OK;
}

void ent_tokenizer_free(ent_tokenizer_t **tp) {
    if (tp == NULL || *tp == NULL) return;
    ent_tokenizer_t *t = *tp;
    for (int i = 0; i < t->nsteps; i++) pcre2_code_free(t->steps[i].re);
    pcre2_code_free(t->word_re);
    for (int i = 0; i < t->nadded; i++) {
        free(t->added[i].text);
        free(t->added[i].content);
    }
    free(t->steps);
    free(t->added);
    free(t->raw_set.tok);
    free(t->norm_set.tok);
    free(t->raw_set.first);
    free(t->norm_set.first);
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mctx);
    pcre2_jit_stack_free(t->jit_stack);
    free(t->path);
    free(t->piece);
    free(t->bytes);
    free(t->is_id);
    free(t->vocab_slots);
    free(t->foreign_slots);
    free(t->added_by_id);
    free(t->added_slots);
    free(t->merges);
    free(t->cache);
    free(t->scratch);
    free(t);
    *tp = NULL;
}

uint32_t ent_tokenizer_vocab(const ent_tokenizer_t *t) { return t->nids; }
const char *ent_tokenizer_path(const ent_tokenizer_t *t) { return t->path; }

int64_t ent_tokenizer_token_id(const ent_tokenizer_t *t, const char *text) {
    size_t len = strlen(text);
    for (size_t s = hash_bytes(text, len) & t->added_mask; t->added_slots; s = (s + 1) & t->added_mask) {
        uint32_t v = t->added_slots[s];
        if (v == 0) break;
        if (strcmp(t->added[v - 1].text, text) == 0) return t->added[v - 1].id;
    }
    return model_token(t, text);
}

ent_status ent_tokenizer_document_token(const ent_tokenizer_t *t, const char *name,
                                        uint32_t *id) {
    static const char *known[] = {"<|begin_of_text|>", "<|endoftext|>", "<s>", "<|end_of_text|>"};
    if (name != NULL) {
        int64_t i = ent_tokenizer_token_id(t, name);
        if (i < 0)
            return ent_fail(ENT_ERR_USAGE, "--eot %s: no such token in %s", name, t->path);
        *id = (uint32_t)i;
        return ENT_OK;
    }
    for (int k = 0; k < 4; k++) {
        int64_t i = ent_tokenizer_token_id(t, known[k]);
        if (i >= 0) {
            *id = (uint32_t)i;
            return ENT_OK;
        }
    }
    return ent_fail(ENT_ERR_USAGE, "%s has none of <|begin_of_text|>, <|endoftext|>, <s>, "
                    "<|end_of_text|> to separate documents: name one with --eot TOKEN", t->path);
}

// ---------------------------------------------------------------------------
// encoding

typedef struct {
    ent_tokenizer_t *t;
    ent_token_sink sink;
    void *ctx;
    uint32_t buf[4096];
    int n;
    ent_status st;
} encoder;

static void emit(encoder *e, uint32_t id) {
    if (e->n == (int)(sizeof e->buf / sizeof e->buf[0])) {
        if (e->st == ENT_OK) e->st = e->sink(e->ctx, e->buf, (size_t)e->n);
        e->n = 0;
    }
    e->buf[e->n++] = id;
}

typedef struct {
    uint32_t id, len;  // len 0: merged away
    int prev, next;    // -1: none
} symbol;

typedef struct {
    uint32_t rank, pos, id;
} merge_cand;

static int cand_less(const merge_cand *a, const merge_cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(merge_cand *h, int *n, merge_cand c) {
    int i = (*n)++;
    while (i > 0 && cand_less(&c, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static merge_cand heap_pop(merge_cand *h, int *n) {
    merge_cand top = h[0], last = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(&h[c + 1], &h[c])) c++;
        if (!cand_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

static void push_pair(const ent_tokenizer_t *t, const symbol *s, int pos, merge_cand *h, int *nh) {
    if (pos < 0 || s[pos].next < 0) return;
    const merge_slot *m = merge_find(t, s[pos].id, s[s[pos].next].id);
    if (m) heap_push(h, nh, (merge_cand){m->rank, (uint32_t)pos, m->id});
}

// The model on one word (raw bytes): ids into out (at most 3 n), their count.
static size_t bpe_word(const ent_tokenizer_t *t, const unsigned char *w, size_t n, uint32_t *out,
                       symbol *s, merge_cand *h) {
    int ns = 0;
    for (size_t i = 0; i < n; i++) {
        const int64_t *fb = t->fallback[w[i]];
        if (t->byte_id[w[i]] >= 0) {
            s[ns++].id = (uint32_t)t->byte_id[w[i]];
        } else if (t->byte_fallback && fb[0] >= 0 && fb[1] != -1 && fb[2] != -1) {
            for (int k = 0; k < 3 && fb[k] >= 0; k++) s[ns++].id = (uint32_t)fb[k];
        } else if (t->unk >= 0 && !(t->fuse_unk && ns > 0 && s[ns - 1].id == (uint32_t)t->unk)) {
            s[ns++].id = (uint32_t)t->unk; // fuse_unk: one unk for a run of them
        } // no unk_token: the library drops the character
    }
    for (int i = 0; i < ns; i++) {
        s[i].len = 1;
        s[i].prev = i - 1;
        s[i].next = i + 1 < ns ? i + 1 : -1;
    }
    int nh = 0;
    for (int i = 0; i + 1 < ns; i++) push_pair(t, s, i, h, &nh);
    while (nh > 0) {
        merge_cand c = heap_pop(h, &nh);
        symbol *a = &s[c.pos];
        if (a->len == 0 || a->next < 0) continue;
        const merge_slot *m = merge_find(t, a->id, s[a->next].id);
        if (m == NULL || m->id != c.id) continue; // stale
        symbol *b = &s[a->next];
        a->id = c.id;
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (a->next >= 0) s[a->next].prev = (int)c.pos;
        push_pair(t, s, a->prev, h, &nh);
        push_pair(t, s, (int)c.pos, h, &nh);
    }
    size_t k = 0;
    for (int i = ns > 0 ? 0 : -1; i >= 0; i = s[i].next) out[k++] = s[i].id;
    return k;
}

static ent_status grow_scratch(ent_tokenizer_t *t, size_t need) {
    if (need <= t->scratch_cap) return ENT_OK;
    size_t cap = t->scratch_cap ? t->scratch_cap : 4096;
    while (cap < need) cap *= 2;
    unsigned char *p = realloc(t->scratch, cap);
    ENT_ALLOC_CHECK(p, "the encoder's scratch");
    t->scratch = p;
    t->scratch_cap = cap;
    return ENT_OK;
}

// One word to the model: whole when ignore_merges finds it, from the cache, or merged.
static void encode_word(encoder *e, const unsigned char *w, size_t n) {
    ent_tokenizer_t *t = e->t;
    if (n == 0 || e->st != ENT_OK) return;
    if (t->ignore_merges) {
        int64_t id = vocab_find(t, w, n);
        if (id >= 0) {
            emit(e, (uint32_t)id);
            return;
        }
    }
    uint64_t hash = 0;
    cache_slot *slot = NULL;
    if (n <= CACHE_WORD_MAX) {
        hash = hash_bytes(w, n);
        slot = &t->cache[hash & (CACHE_SLOTS - 1)];
        if (slot->len == n && slot->hash == hash && memcmp(slot->word, w, n) == 0) {
            for (int i = 0; i < slot->nids; i++) emit(e, slot->ids[i]);
            return;
        }
    }
    // symbols: one a byte (two with byte_fallback: a byte-level character is
    // at most 2 bytes of UTF-8); the heap: each merge pops one candidate and
    // pushes at most two, so it never holds more than twice the symbols; the ids
    size_t ns = t->byte_fallback ? 2 * n : n;
    size_t need = ns * sizeof(symbol) + (2 * ns + 1) * sizeof(merge_cand) + ns * sizeof(uint32_t);
    if ((e->st = grow_scratch(t, need)) != ENT_OK) return;
    symbol *s = (symbol *)t->scratch;
    merge_cand *h = (merge_cand *)(s + ns);
    uint32_t *ids = (uint32_t *)(h + 2 * ns + 1);
    size_t k = bpe_word(t, w, n, ids, s, h);
    for (size_t i = 0; i < k; i++) emit(e, ids[i]);
    if (slot && k <= CACHE_IDS_MAX) {
        slot->hash = hash;
        slot->len = (uint8_t)n;
        slot->nids = (uint8_t)k;
        memcpy(slot->word, w, n);
        memcpy(slot->ids, ids, k * sizeof *ids);
    }
}

static void pre_tokenize(encoder *e, const unsigned char *p, size_t n, int step);

// The pieces of p by the regex: each match and each gap between matches (Isolated).
static void split_regex(encoder *e, pcre2_code *re, const unsigned char *p, size_t n, int step) {
    ent_tokenizer_t *t = e->t;
    size_t pos = 0, gap = 0;
    while (pos < n && e->st == ENT_OK) {
        int rc = pcre2_jit_match(re, p, n, pos, PCRE2_NO_UTF_CHECK, t->md, t->mctx);
        if (rc == PCRE2_ERROR_JIT_BADOPTION)
            rc = pcre2_match(re, p, n, pos, PCRE2_NO_UTF_CHECK, t->md, t->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            e->st = ent_fail(ENT_ERR_INPUT, "%s: the pre-tokenizer's regex failed on a piece of "
                             "%zu bytes: %s", t->path, n, (char *)msg);
            return;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        size_t s = ov[0], end = ov[1];
        if (end == s) { // an empty match: the library moves one character on
            uint32_t cp;
            if (s >= n) break;
            pos = s + (size_t)utf8_char(p + s, n - s, &cp);
            continue;
        }
        if (s > gap) pre_tokenize(e, p + gap, s - gap, step + 1);
        pre_tokenize(e, p + s, end - s, step + 1);
        gap = pos = end;
    }
    if (gap < n) pre_tokenize(e, p + gap, n - gap, step + 1);
}

// Pre-tokenizer step `step` on a piece of valid UTF-8; past the last step, the model.
static void pre_tokenize(encoder *e, const unsigned char *p, size_t n, int step) {
    ent_tokenizer_t *t = e->t;
    if (n == 0 || e->st != ENT_OK) return;
    if (step == t->nsteps) {
        encode_word(e, p, n);
        return;
    }
    const pre_step *ps = &t->steps[step];
    if (ps->byte_level && ps->add_prefix_space && p[0] != ' ') {
        // the last step, so the scratch of the model is free until the pieces are
        // words; a copy keeps it apart from the model's use of the scratch
        unsigned char *copy = malloc(n + 1);
        if (copy == NULL) {
            e->st = ent_fail(ENT_ERR_NOMEM, "out of memory encoding");
            return;
        }
        copy[0] = ' ';
        memcpy(copy + 1, p, n);
        if (ps->re) split_regex(e, ps->re, copy, n + 1, step);
        else pre_tokenize(e, copy, n + 1, step + 1);
        free(copy);
        return;
    }
    if (ps->re) split_regex(e, ps->re, p, n, step);
    else pre_tokenize(e, p, n, step + 1);
}

// A piece that is no added token: valid UTF-8 runs to the pre-tokenizer,
// invalid bytes to the model as words of their own.
static void encode_text(encoder *e, const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n && e->st == ENT_OK) {
        size_t v = utf8_valid_prefix(p + i, n - i);
        pre_tokenize(e, p + i, v, 0);
        i += v;
        size_t j = i;
        uint32_t cp;
        while (j < n && utf8_char(p + j, n - j, &cp) == 0) j++;
        encode_word(e, p + i, j - i);
        i = j;
    }
}

// Unicode word characters, as the library's `\w` (Alphabetic, marks, decimal
// digits, connector punctuation, joiners), asked of PCRE2 (t->word_re).
static int is_word_cp(const ent_tokenizer_t *t, int64_t cp) {
    if (cp < 0) return 0;
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    unsigned char u[4];
    int len = utf8_encode((uint32_t)cp, u);
    return pcre2_match(t->word_re, u, (size_t)len, 0, PCRE2_NO_UTF_CHECK, t->md, NULL) >= 0;
}

static size_t space_run_before(const unsigned char *p, size_t end, size_t floor) {
    while (end > floor) {
        int64_t cp = utf8_last(p + floor, end - floor);
        if (cp < 0 || !is_space_cp((uint32_t)cp)) break;
        while (end > floor && (p[end - 1] & 0xC0) == 0x80) end--;
        end--;
    }
    return end;
}

static size_t space_run_after(const unsigned char *p, size_t start, size_t n) {
    uint32_t cp;
    int len;
    while (start < n && (len = utf8_char(p + start, n - start, &cp)) > 0 && is_space_cp(cp))
        start += (size_t)len;
    return start;
}

// Splits out the tokens of set from p (n bytes), as the library's
// find_matches does, handing on what lies between to `next`.
static void split_added(encoder *e, const added_set *set, const unsigned char *p, size_t n,
                        void (*next)(encoder *, const unsigned char *, size_t)) {
    size_t done = 0; // bytes of p handed on
    if (set->n == 0) {
        next(e, p, n);
        return;
    }
    for (size_t i = 0; i < n && e->st == ENT_OK;) {
        const added_token *m = NULL;
        if (i + 1 < n) { // the longest token starting with these two bytes that fits
            int key = p[i] * 256 + p[i + 1];
            for (int k = set->first[key]; k < set->first[key + 1] && m == NULL; k++)
                if (set->tok[k]->len <= n - i &&
                    memcmp(set->tok[k]->content, p + i, set->tok[k]->len) == 0)
                    m = set->tok[k];
        }
        if (m == NULL && set->one[p[i]] >= 0) m = set->tok[set->one[p[i]]];
        if (m == NULL) {
            i++;
            continue;
        }
        size_t start = i, stop = i + m->len;
        i = stop; // the scan goes on after the match, kept or not
        if (m->single_word) {
            uint32_t cp;
            int after_word =
                stop < n && utf8_char(p + stop, n - stop, &cp) > 0 && is_word_cp(e->t, cp);
            if ((start > 0 && is_word_cp(e->t, utf8_last(p, start))) || after_word) continue;
        }
        if (m->lstrip) {
            size_t s = space_run_before(p, start, 0);
            start = s > done ? s : done;
        }
        if (m->rstrip) stop = space_run_after(p, stop, n);
        if (start > done) next(e, p + done, start - done);
        emit(e, m->id);
        done = stop;
    }
    if (done < n) next(e, p + done, n - done);
}

// A piece between the raw pass's added tokens: normalized (NFC: each run of
// valid UTF-8 on its own, invalid bytes as they are), then the normalized
// added tokens split out of it.
static void split_normalized(encoder *e, const unsigned char *p, size_t n) {
    ent_tokenizer_t *t = e->t;
    size_t ascii = 0;
    while (ascii < n && p[ascii] < 0x80) ascii++;
    if (!t->nfc || ascii == n) {
        split_added(e, &t->norm_set, p, n, encode_text);
        return;
    }
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    for (size_t i = 0; i < n && e->st == ENT_OK;) {
        size_t v = utf8_valid_prefix(p + i, n - i), j = i + v, got = 0;
        uint32_t cp;
        while (j < n && utf8_char(p + j, n - j, &cp) == 0) j++;
        unsigned char *norm = v ? nfc(p + i, v, &got) : NULL;
        size_t need = len + got + (j - i - v);
        unsigned char *grown = need > cap ? realloc(buf, need * 2) : buf;
        if (grown == NULL || (v && norm == NULL)) {
            free(norm);
            e->st = ent_fail(ENT_ERR_NOMEM, "out of memory normalizing %zu bytes", v);
            break;
        }
        if (need > cap) cap = need * 2;
        buf = grown;
        memcpy(buf + len, norm, got);
        memcpy(buf + len + got, p + i + v, j - i - v);
        len = need;
        free(norm);
        i = j;
    }
    if (e->st == ENT_OK) split_added(e, &t->norm_set, buf, len, encode_text);
    free(buf);
}

ent_status ent_tokenizer_encode_to(ent_tokenizer_t *t, const void *text, size_t n,
                                   ent_token_sink sink, void *ctx) {
    encoder *e = malloc(sizeof *e);
    ENT_ALLOC_CHECK(e, "the encoder");
    e->t = t;
    e->sink = sink;
    e->ctx = ctx;
    e->n = 0;
    e->st = ENT_OK;
    split_added(e, &t->raw_set, text, n, split_normalized);
    if (e->st == ENT_OK && e->n > 0) e->st = sink(ctx, e->buf, (size_t)e->n);
    ent_status st = e->st;
    free(e);
    return st;
}

typedef struct {
    uint32_t *ids;
    size_t n, cap;
} id_vec;

static ent_status append_ids(void *ctx, const uint32_t *ids, size_t n) {
    id_vec *v = ctx;
    if (v->n + n > v->cap) {
        size_t cap = v->cap ? v->cap : 256;
        while (cap < v->n + n) cap *= 2;
        uint32_t *p = realloc(v->ids, cap * sizeof *p);
        ENT_ALLOC_CHECK(p, "token ids");
        v->ids = p;
        v->cap = cap;
    }
    memcpy(v->ids + v->n, ids, n * sizeof *ids);
    v->n += n;
    return ENT_OK;
}

ent_status ent_tokenizer_encode(ent_tokenizer_t *t, const void *text, size_t n, uint32_t **ids,
                                size_t *nids) {
    id_vec v = {0};
    ent_status st = ent_tokenizer_encode_to(t, text, n, append_ids, &v);
    if (st != ENT_OK) {
        free(v.ids);
        v.ids = NULL;
        v.n = 0;
    }
    *ids = v.ids;
    *nids = v.n;
    return st;
}

// ---------------------------------------------------------------------------
// decoding

const void *ent_tokenizer_piece(const ent_tokenizer_t *t, uint32_t id, size_t *len) {
    if (id >= t->nids || !t->is_id[id]) return NULL;
    return id_bytes(t, id, len);
}

ent_status ent_tokenizer_decode(const ent_tokenizer_t *t, const uint32_t *ids, size_t n,
                                char **text, size_t *len) {
    *text = NULL;
    *len = 0;
    size_t total = 0, l;
    for (size_t i = 0; i < n; i++) {
        if (ent_tokenizer_piece(t, ids[i], &l) == NULL)
            return ent_fail(ENT_ERR_INPUT, "token id %u at position %zu is not in %s", ids[i], i,
                            t->path);
        total += l;
    }
    char *out = malloc(total + 1);
    ENT_ALLOC_CHECK(out, "decoded text");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const void *p = ent_tokenizer_piece(t, ids[i], &l);
        memcpy(out + k, p, l);
        k += l;
    }
    out[k] = '\0';
    *text = out;
    *len = k;
    return ENT_OK;
}
