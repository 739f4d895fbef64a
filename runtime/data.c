// data.c: token shards and the dataset view the trainer reads.
//
// A shard is llm.c's .bin layout: 256 int32 header (magic 20240520, version 1,
// token count, the rest zero) followed by the tokens as uint16. Version 2 is
// the same with header[3] = bytes per token (2 or 4), for vocabularies beyond
// uint16 (docs/data.md). Every shard is checked in full when opened, so a bad
// file fails at start-up with its name, never in the middle of a run. Shards
// are mapped read-only.
#include "runtime_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_BYTES (ENT_SHARD_HEADER_INTS * sizeof(int32_t))

// ---------------------------------------------------------------------------
// one shard

// Writes a shard of tokens of `width` bytes: version 1 for 2, version 2 for 4.
static ent_status shard_write(const char *path, const void *tokens, size_t ntokens, int width) {
    if (ntokens > INT32_MAX)
        return ent_fail(ENT_ERR_USAGE, "%s: %zu tokens do not fit one shard (at most %d)", path,
                        ntokens, INT32_MAX);
    int32_t header[ENT_SHARD_HEADER_INTS] = {0};
    header[0] = ENT_SHARD_MAGIC;
    header[1] = width == 2 ? ENT_SHARD_VERSION : ENT_SHARD_VERSION_2;
    header[2] = (int32_t)ntokens;
    if (width != 2) header[3] = width;
    const void *parts[2] = {header, tokens};
    size_t lens[2] = {HEADER_BYTES, ntokens * (size_t)width};
    return ent_write_file_parts_atomic(path, parts, lens, 2);
}

ent_status ent_shard_write(const char *path, const uint16_t *tokens, size_t ntokens) {
    return shard_write(path, tokens, ntokens, 2);
}

ent_status ent_shard_write_u32(const char *path, const uint32_t *tokens, size_t ntokens) {
    return shard_write(path, tokens, ntokens, 4);
}

// Reads and checks the header of an open shard against the file's size;
// *width gets the bytes per token.
static ent_status check_header(const char *path, int fd, size_t *ntokens, int *width) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        return ent_fail(ENT_ERR_IO, "cannot stat shard %s: %s", path, strerror(errno));
    if ((size_t)st.st_size < HEADER_BYTES)
        return ent_fail(ENT_ERR_INPUT,
                        "%s is not a token shard: %lld bytes, shorter than the %zu-byte header",
                        path, (long long)st.st_size, HEADER_BYTES);
    int32_t header[ENT_SHARD_HEADER_INTS];
    ssize_t got = pread(fd, header, HEADER_BYTES, 0);
    if (got != (ssize_t)HEADER_BYTES)
        return ent_fail(ENT_ERR_IO, "cannot read the header of %s: %s", path,
                        got < 0 ? strerror(errno) : "short read");
    if (header[0] != ENT_SHARD_MAGIC)
        return ent_fail(ENT_ERR_INPUT,
                        "%s is not a token shard: magic %d, expected %d (llm.c .bin layout)",
                        path, header[0], ENT_SHARD_MAGIC);
    if (header[1] != ENT_SHARD_VERSION && header[1] != ENT_SHARD_VERSION_2)
        return ent_fail(ENT_ERR_INPUT,
                        "%s: shard version %d is not supported (this build reads version %d "
                        "and version %d)", path, header[1], ENT_SHARD_VERSION, ENT_SHARD_VERSION_2);
    // version 1 is llm.c's: uint16, whatever the rest of its header holds
    int w = header[1] == ENT_SHARD_VERSION ? 2 : header[3];
    if (w != 2 && w != 4)
        return ent_fail(ENT_ERR_INPUT, "%s: version 2 shard with token size %d (header[3]); "
                        "expected 2 or 4 bytes", path, w);
    if (header[2] < 0)
        return ent_fail(ENT_ERR_INPUT, "%s: header holds a negative token count (%d)", path,
                        header[2]);
    size_t n = (size_t)header[2];
    size_t expect = HEADER_BYTES + n * (size_t)w;
    if ((size_t)st.st_size < expect)
        return ent_fail(ENT_ERR_INPUT,
                        "%s is truncated: its header announces %zu tokens (%zu bytes) but the "
                        "file has %lld bytes", path, n, expect, (long long)st.st_size);
    if ((size_t)st.st_size > expect)
        return ent_fail(ENT_ERR_INPUT,
                        "%s has %lld bytes after its %zu tokens: not a valid shard (header and "
                        "size disagree)", path, (long long)((size_t)st.st_size - expect), n);
    *ntokens = n;
    *width = w;
    return ENT_OK;
}

ent_status ent_shard_check_header(const char *path, size_t *ntokens) {
    int fd, width;
    ENT_CHECK(ent_open_regular(path, "shard", ENT_ERR_INPUT, &fd));
    ent_status st = check_header(path, fd, ntokens, &width);
    close(fd);
    return st;
}

// ---------------------------------------------------------------------------
// shard lists

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int ent_glob_shards(const char *dir, const char *pattern, char ***paths) {
    *paths = NULL;
    struct stat st;
    if (stat(dir, &st) != 0) {
        ent_fail(ENT_ERR_INPUT, "data directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        ent_fail(ENT_ERR_INPUT, "data directory %s is not a directory", dir);
        return -1;
    }
    char full[ENT_PATH_MAX + 256];
    snprintf(full, sizeof full, "%s/%s", dir, pattern);
    glob_t g;
    int rc = glob(full, 0, NULL, &g);
    if (rc == GLOB_NOMATCH) return 0;
    if (rc != 0) {
        ent_fail(ENT_ERR_IO, "cannot list %s", full);
        return -1;
    }
    int n = (int)g.gl_pathc;
    char **out = calloc((size_t)n, sizeof *out);
    for (int i = 0; out != NULL && i < n; i++) out[i] = strdup(g.gl_pathv[i]);
    globfree(&g);
    for (int i = 0; out != NULL && i < n; i++)
        if (out[i] == NULL) {
            ent_free_paths(out, n);
            out = NULL;
        }
    if (out == NULL) {
        ent_fail(ENT_ERR_NOMEM, "out of memory listing %s", full);
        return -1;
    }
    qsort(out, (size_t)n, sizeof *out, compare_strings);
    *paths = out;
    return n;
}

void ent_free_paths(char **paths, int n) {
    if (paths == NULL) return;
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

// The same file under both patterns: by name, or a link from one name to the other.
static int same_file(const char *a, const struct stat *sa, const char *b) {
    struct stat sb;
    if (strcmp(a, b) == 0) return 1;
    return sa != NULL && stat(b, &sb) == 0 && sa->st_dev == sb.st_dev && sa->st_ino == sb.st_ino;
}

ent_status ent_data_check_split(const char *dir, const char *train_pattern,
                                const char *val_pattern) {
    char **train = NULL, **val = NULL;
    int ntrain = ent_glob_shards(dir, train_pattern, &train);
    if (ntrain < 0) return ENT_ERR_INPUT;
    int nval = ent_glob_shards(dir, val_pattern, &val);
    if (nval < 0) {
        ent_free_paths(train, ntrain);
        return ENT_ERR_INPUT;
    }
    ent_status st = ENT_OK;
    for (int i = 0; i < ntrain && st == ENT_OK; i++) {
        struct stat si;
        int have = stat(train[i], &si) == 0;
        for (int j = 0; j < nval && st == ENT_OK; j++) {
            if (!same_file(train[i], have ? &si : NULL, val[j])) continue;
            if (strcmp(train[i], val[j]) == 0)
                st = ent_fail(ENT_ERR_USAGE,
                              "%s is both a training shard (data.train_pattern = %s) and a "
                              "validation shard (data.val_pattern = %s): validation would "
                              "measure data the model trains on; make the patterns match "
                              "disjoint files", train[i], train_pattern, val_pattern);
            else
                st = ent_fail(ENT_ERR_USAGE,
                              "training shard %s (data.train_pattern = %s) is the same file as "
                              "validation shard %s (data.val_pattern = %s): validation would "
                              "measure data the model trains on", train[i], train_pattern,
                              val[j], val_pattern);
        }
    }
    ent_free_paths(train, ntrain);
    ent_free_paths(val, nval);
    return st;
}

// ---------------------------------------------------------------------------
// the dataset

typedef struct {
    char *path;
    void *map;
    size_t map_bytes;
    const void *tokens; // uint16 or uint32, by width
    int width;          // bytes per token: 2 or 4
    size_t ntokens;
    int64_t first_seq, nseq; // sequences [first_seq, first_seq + nseq) of the dataset
} shard;

struct ent_dataset {
    shard *shards;
    int nshards;
    int T;
    int64_t nseq, ntokens;
};

static uint32_t token_at(const shard *s, size_t i) {
    return s->width == 2 ? ((const uint16_t *)s->tokens)[i] : ((const uint32_t *)s->tokens)[i];
}

// Finds the first token >= vocab, in blocks so the common case is a tight loop.
static int64_t find_bad_token(const shard *s, int vocab) {
    const size_t block = 1 << 16, n = s->ntokens;
    const uint16_t *t16 = s->tokens;
    const uint32_t *t32 = s->tokens;
    for (size_t b0 = 0; b0 < n; b0 += block) {
        size_t b1 = b0 + block < n ? b0 + block : n;
        uint32_t maxv = 0;
        if (s->width == 2)
            for (size_t i = b0; i < b1; i++) maxv = t16[i] > maxv ? t16[i] : maxv;
        else
            for (size_t i = b0; i < b1; i++) maxv = t32[i] > maxv ? t32[i] : maxv;
        if (maxv < (uint32_t)vocab) continue;
        for (size_t i = b0; i < b1; i++)
            if (token_at(s, i) >= (uint32_t)vocab) return (int64_t)i;
    }
    return -1;
}

static ent_status open_shard(shard *s, const char *path, int vocab) {
    s->path = strdup(path);
    if (s->path == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory opening %s", path);
    int fd;
    ENT_CHECK(ent_open_regular(path, "shard", ENT_ERR_INPUT, &fd));
    ent_status st = check_header(path, fd, &s->ntokens, &s->width);
    if (st != ENT_OK) {
        close(fd);
        return st;
    }
    s->map_bytes = HEADER_BYTES + s->ntokens * (size_t)s->width;
    s->map = mmap(NULL, s->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        return ent_fail(ENT_ERR_IO, "cannot map shard %s: %s", path, strerror(err));
    }
    s->tokens = (const char *)s->map + HEADER_BYTES;
    int64_t bad = find_bad_token(s, vocab);
    if (bad >= 0)
        return ent_fail(ENT_ERR_INPUT,
                        "%s: token id %u at position %lld is outside the vocabulary "
                        "(model.vocab = %d)", path, token_at(s, (size_t)bad), (long long)bad, vocab);
    return ENT_OK;
}

ent_status ent_dataset_open(const char *dir, const char *pattern, int vocab, int T,
                            ent_dataset_t **out) {
    *out = NULL;
    char **paths = NULL;
    int n = ent_glob_shards(dir, pattern, &paths);
    if (n < 0) return ENT_ERR_INPUT;
    if (n == 0)
        return ent_fail(ENT_ERR_INPUT, "no token shards match %s/%s (prepare some with "
                        "'entente data prepare')", dir, pattern);
    ent_dataset_t *d = calloc(1, sizeof *d);
    shard *shards = calloc((size_t)n, sizeof *shards);
    if (d == NULL || shards == NULL) {
        free(d);
        free(shards);
        ent_free_paths(paths, n);
        return ent_fail(ENT_ERR_NOMEM, "out of memory opening %s", dir);
    }
    d->shards = shards;
    d->nshards = n;
    d->T = T;
    ent_status st = ENT_OK;
    for (int i = 0; i < n; i++) {
        ENT_CHECK_GOTO(open_shard(&shards[i], paths[i], vocab), fail);
        shard *s = &shards[i];
        s->first_seq = d->nseq;
        s->nseq = s->ntokens > (size_t)T ? (int64_t)((s->ntokens - 1) / (size_t)T) : 0;
        d->nseq += s->nseq;
        d->ntokens += (int64_t)s->ntokens;
    }
    if (d->nseq == 0) {
        st = ent_fail(ENT_ERR_INPUT,
                      "%s/%s: %d shard(s) hold %lld tokens, fewer than one sequence of "
                      "model.context + 1 = %d tokens", dir, pattern, n, (long long)d->ntokens,
                      T + 1);
        goto fail;
    }
    ent_free_paths(paths, n);
    *out = d;
    return ENT_OK;
fail:
    ent_free_paths(paths, n);
    ent_dataset_close(&d);
    return st;
}

void ent_dataset_close(ent_dataset_t **data) {
    if (data == NULL || *data == NULL) return;
    ent_dataset_t *d = *data;
    for (int i = 0; i < d->nshards; i++) {
        if (d->shards[i].map) munmap(d->shards[i].map, d->shards[i].map_bytes);
        free(d->shards[i].path);
    }
    free(d->shards);
    free(d);
    *data = NULL;
}

int64_t ent_dataset_num_sequences(const ent_dataset_t *d) { return d->nseq; }
int64_t ent_dataset_num_tokens(const ent_dataset_t *d) { return d->ntokens; }
int ent_dataset_num_shards(const ent_dataset_t *d) { return d->nshards; }

void ent_dataset_sequence(const ent_dataset_t *d, int64_t seq, int32_t *inputs,
                          int32_t *targets) {
    ENT_ASSERT(seq >= 0 && seq < d->nseq);
    int lo = 0, hi = d->nshards - 1;
    while (lo < hi) { // last shard whose first_seq <= seq
        int mid = (lo + hi + 1) / 2;
        if (d->shards[mid].first_seq <= seq) lo = mid;
        else hi = mid - 1;
    }
    while (d->shards[lo].nseq == 0 || seq >= d->shards[lo].first_seq + d->shards[lo].nseq) lo++;
    const shard *s = &d->shards[lo];
    size_t first = (size_t)(seq - s->first_seq) * (size_t)d->T;
    for (int i = 0; i < d->T; i++) {
        inputs[i] = (int32_t)token_at(s, first + (size_t)i);
        targets[i] = (int32_t)token_at(s, first + (size_t)i + 1);
    }
}

// ---------------------------------------------------------------------------
// order

// Four Feistel rounds over the smallest even number of bits covering n, with
// cycle-walking back into [0, n): a bijection that needs no table, so any
// rank computes any position's sequence in O(1).
int64_t ent_data_permute(int64_t i, int64_t n, uint64_t seed, int64_t epoch) {
    // the cycle walk ends only from inside [0, n): callers pass checked cursors
    ENT_ASSERT(i >= 0 && i < n);
    if (n <= 1) return i;
    int bits = 2;
    while (bits < 62 && ((int64_t)1 << bits) < n) bits += 2;
    int half = bits / 2;
    uint64_t mask = ((uint64_t)1 << half) - 1;
    uint64_t key = ent_hash64(seed ^ ent_hash64((uint64_t)epoch + 0x5eed));
    uint64_t x = (uint64_t)i;
    do {
        uint64_t left = x >> half, right = x & mask;
        for (int r = 0; r < 4; r++) {
            uint64_t f = ent_hash64(right ^ (key + (uint64_t)r * 0x9e3779b97f4a7c15ULL)) & mask;
            uint64_t next = left ^ f;
            left = right;
            right = next;
        }
        x = (left << half) | right;
    } while (x >= (uint64_t)n);
    return (int64_t)x;
}

uint64_t ent_data_order_key(uint64_t train_seed) { return ent_hash64(train_seed ^ 0xda7aULL); }

void ent_dataset_fill(const ent_dataset_t *d, const ent_data_cursor *cursor, int64_t skip,
                      int count, int shuffle, uint64_t seed, int32_t *inputs,
                      int32_t *targets) {
    // a cursor read from a checkpoint is checked there (ent_checkpoint_check:
    // 0 <= data.consumed, tokens within 64 bits); a negative one would make
    // the permutation walk forever
    ENT_ASSERT(cursor->consumed >= 0 && skip >= 0 && count >= 0 && d->nseq > 0);
    for (int j = 0; j < count; j++) {
        int64_t p = cursor->consumed + skip + j;
        int64_t epoch = p / d->nseq, idx = p % d->nseq;
        int64_t seq = shuffle ? ent_data_permute(idx, d->nseq, seed, epoch) : idx;
        ent_dataset_sequence(d, seq, inputs + (size_t)j * d->T, targets + (size_t)j * d->T);
    }
}
