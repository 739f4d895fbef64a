// safetensors.c: reading a Hugging Face model directory's tensors
// (model.safetensors, or the shards model.safetensors.index.json names).
//
// The format: an 8-byte little-endian header length N, N bytes of JSON (each
// tensor's dtype, shape and byte range [begin, end) in the data that
// follows; an optional "__metadata__" of strings), then the data. Nothing in
// a file is believed before it is checked against the file's size and the
// other tensors: a header past the end or over the format's limit, a byte
// range past the end, one that does not hold its shape, two tensors over the
// same bytes, a name twice, a dtype other than F32/BF16/F16, and a shard the
// index names wrongly are errors naming the file and the tensor. Reading
// goes tensor by tensor in pieces, converted to float32 as they arrive.
#include "ckpt_impl.h"
#include "kernel_math.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// The format's own limit on the header (the reference reader refuses more).
// AHEAD: how far the fetcher thread (ent_st_stream) may read ahead of the
// tensors read, in reads of at most FETCH bytes.
enum {
    HEADER_MAX = 100 * 1000 * 1000,
    INDEX_MAX = 64 << 20,
    PIECE = 1 << 20,
    MAX_READERS = 64,
    AHEAD = 256 << 20,
    FETCH = 4 << 20
};

typedef struct {
    char *path;
    int fd;
    uint64_t data_at, data_bytes; // where the data starts, and its length
} st_file;

typedef struct {
    ent_st_tensor pub;
    uint64_t begin, end; // within its file's data
    int file;
} st_entry;

struct ent_st {
    st_file *files;
    int nfiles;
    st_entry *t;
    int n, cap;
    unsigned char *bufs[MAX_READERS]; // each reading thread's (ent_st_read)
    int nbufs;
    size_t buf_bytes;
    // the fetcher (ent_st_stream): it reads the tensors of `stream`, in
    // that order, into the page cache, up to AHEAD bytes past `read`: the
    // bytes of the stream before the piece being read
    pthread_t fetcher;
    int fetching;
    const st_entry **stream;
    uint64_t *stream_at; // each tensor's first byte in the stream
    float **dst;         // where each lands (NULL: not said)
    int nstream, next;   // next: the tensor of the stream expected next
    _Atomic uint64_t read;
    atomic_int stop;
};

static ent_status nomem(void) { return ent_fail(ENT_ERR_NOMEM, "out of memory reading safetensors"); }

// A JSON number that is a whole number in [0, 2^53].
static int whole(const cJSON *j, uint64_t *v) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d) return 0;
    *v = (uint64_t)d;
    return 1;
}

static int dtype_of(const char *s, ent_dtype *d) {
    if (strcmp(s, "F32") == 0) *d = ENT_F32;
    else if (strcmp(s, "BF16") == 0) *d = ENT_BF16;
    else if (strcmp(s, "F16") == 0) *d = ENT_F16;
    else return 0;
    return 1;
}

static int by_begin(const void *a, const void *b) {
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

// One tensor's header entry, checked against its file.
static ent_status add_entry(ent_st_t *st, int fi, const cJSON *e) {
    const st_file *f = &st->files[fi];
    const char *name = e->string;
    if (strlen(name) >= ENT_ST_NAME_MAX)
        return ent_fail(ENT_ERR_INPUT, "%s: a tensor name of %zu bytes (at most %d)", f->path,
                        strlen(name), ENT_ST_NAME_MAX - 1);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(off) ||
        cJSON_GetArraySize(off) != 2)
        return ent_fail(ENT_ERR_INPUT, "%s: tensor %s: the header entry needs \"dtype\", \"shape\" "
                        "and two \"data_offsets\"", f->path, name);
    ent_dtype dtype;
    if (!dtype_of(dt->valuestring, &dtype))
        return ent_fail(ENT_ERR_INPUT, "%s: tensor %s has dtype %.16s; import reads F32, BF16 and "
                        "F16", f->path, name, dt->valuestring);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ENT_ST_MAX_DIMS)
        return ent_fail(ENT_ERR_INPUT, "%s: tensor %s has %d dimensions (at most %d)", f->path,
                        name, ndim, ENT_ST_MAX_DIMS);
    if (st->n == st->cap) {
        int cap = st->cap ? 2 * st->cap : 256;
        st_entry *p = realloc(st->t, sizeof *p * (size_t)cap);
        if (p == NULL) return nomem();
        st->t = p;
        st->cap = cap;
    }
    st_entry *t = &st->t[st->n];
    memset(t, 0, sizeof *t);
    snprintf(t->pub.name, sizeof t->pub.name, "%s", name);
    t->pub.dtype = dtype;
    t->pub.ndim = ndim;
    t->pub.file = f->path;
    t->file = fi;
    uint64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        uint64_t v;
        if (!whole(cJSON_GetArrayItem(shape, d), &v) || v > ((uint64_t)1 << 40))
            return ent_fail(ENT_ERR_INPUT, "%s: tensor %s: dimension %d of its shape is not a "
                            "size", f->path, name, d);
        t->pub.shape[d] = (int64_t)v;
        numel = v == 0 ? 0 : numel > UINT64_MAX / v ? UINT64_MAX : numel * v;
    }
    if (!whole(cJSON_GetArrayItem(off, 0), &t->begin) || !whole(cJSON_GetArrayItem(off, 1), &t->end) ||
        t->begin > t->end)
        return ent_fail(ENT_ERR_INPUT, "%s: tensor %s: data_offsets are not a byte range", f->path,
                        name);
    if (t->end > f->data_bytes)
        return ent_fail(ENT_ERR_INPUT, "%s: tensor %s ends at byte %llu of the data, which has %llu "
                        "(a truncated file?)", f->path, name, (unsigned long long)t->end,
                        (unsigned long long)f->data_bytes);
    uint64_t size = ent_dtype_size(dtype);
    if (numel > UINT64_MAX / size || numel * size != t->end - t->begin)
        return ent_fail(ENT_ERR_INPUT, "%s: tensor %s: its shape of %s needs %llu bytes, its "
                        "data_offsets span %llu", f->path, name, ent_dtype_name(dtype),
                        numel > UINT64_MAX / size ? 0ULL : (unsigned long long)(numel * size),
                        (unsigned long long)(t->end - t->begin));
    t->pub.numel = (size_t)numel;
    t->pub.at = f->data_at + t->begin;
    for (int i = 0; i < st->n; i++)
        if (strcmp(st->t[i].pub.name, name) == 0)
            return ent_fail(ENT_ERR_INPUT, "%s: tensor %s appears twice (also in %s)", f->path,
                            name, st->t[i].pub.file);
    st->n++;
    return ENT_OK;
}

// Opens one file and reads its header's entries.
static ent_status open_file(ent_st_t *st, const char *path) {
    st_file *files = realloc(st->files, sizeof *files * (size_t)(st->nfiles + 1));
    if (files == NULL) return nomem();
    st->files = files;
    st_file *f = &st->files[st->nfiles];
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = strdup(path);
    if (f->path == NULL) return nomem();
    int fi = st->nfiles++;
    struct stat sb;
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0 || fstat(f->fd, &sb) != 0)
        return ent_fail(ENT_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return ent_fail(ENT_ERR_INPUT, "%s is not a regular file", path);
    (void)posix_fadvise(f->fd, 0, 0, POSIX_FADV_SEQUENTIAL); // a hint: failure changes nothing
    uint64_t size = (uint64_t)sb.st_size, n = 0;
    unsigned char len8[8];
    if (size < 8 || pread(f->fd, len8, 8, 0) != 8)
        return ent_fail(ENT_ERR_INPUT, "%s: %llu bytes, too short for a safetensors header", path,
                        (unsigned long long)size);
    for (int i = 7; i >= 0; i--) n = n << 8 | len8[i];
    if (n > HEADER_MAX)
        return ent_fail(ENT_ERR_INPUT, "%s: a header of %llu bytes, over the format's limit of %d "
                        "(not safetensors?)", path, (unsigned long long)n, HEADER_MAX);
    if (n > size - 8)
        return ent_fail(ENT_ERR_INPUT, "%s: a header of %llu bytes in a file of %llu (truncated, "
                        "or not safetensors)", path, (unsigned long long)n, (unsigned long long)size);
    f->data_at = 8 + n;
    f->data_bytes = size - 8 - n;
    char *json = malloc(n + 1);
    if (json == NULL) return nomem();
    ssize_t got = pread(f->fd, json, n, 8);
    if (got != (ssize_t)n) {
        free(json);
        return ent_fail(ENT_ERR_IO, "cannot read the header of %s", path);
    }
    json[n] = '\0';
    cJSON *root = cJSON_ParseWithLength(json, n);
    free(json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ent_fail(ENT_ERR_INPUT, "%s: the header is not a JSON object", path);
    }
    ent_status s = ENT_OK;
    int first = st->n;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        if ((s = add_entry(st, fi, e)) != ENT_OK) break;
    }
    cJSON_Delete(root);
    if (s != ENT_OK) return s;
    // no two tensors over the same bytes
    int k = st->n - first;
    st_entry **order = malloc(sizeof *order * (size_t)(k ? k : 1));
    if (order == NULL) return nomem();
    for (int i = 0; i < k; i++) order[i] = &st->t[first + i];
    qsort(order, (size_t)k, sizeof *order, by_begin);
    for (int i = 1; i < k && s == ENT_OK; i++)
        if (order[i]->begin < order[i - 1]->end)
            s = ent_fail(ENT_ERR_INPUT, "%s: tensors %s and %s overlap", path, order[i - 1]->pub.name,
                         order[i]->pub.name);
    free(order);
    return s;
}

// A shard's name from the index: a plain file name in the model directory.
static int plain_name(const char *s) {
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static ent_status read_text(const char *path, size_t max, char **text) {
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) return ent_fail(ENT_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = malloc(max + 1);
    size_t n = buf != NULL ? fread(buf, 1, max + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (buf == NULL) return nomem();
    if (bad || n > max) {
        free(buf);
        return ent_fail(ENT_ERR_INPUT, bad ? "cannot read %s" : "%s is larger than %zu bytes", path,
                        max);
    }
    buf[n] = '\0';
    *text = buf;
    return ENT_OK;
}

ent_status ent_st_read_json(const char *path, size_t max, void **json) {
    char *text = NULL;
    *json = NULL;
    ENT_CHECK(read_text(path, max, &text));
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ent_fail(ENT_ERR_INPUT, "%s is not a JSON object", path);
    }
    *json = root;
    return ENT_OK;
}

// The shards an index names, each opened once; every tensor of the weight
// map in the shard it names, and no tensor in a shard the map leaves out.
static ent_status open_index(ent_st_t *st, const char *dir, const char *index) {
    cJSON *root = NULL;
    ENT_CHECK(ent_st_read_json(index, INDEX_MAX, (void **)&root));
    ent_status s = ENT_OK;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map"), *e;
    if (!cJSON_IsObject(map) || cJSON_GetArraySize(map) == 0)
        s = ent_fail(ENT_ERR_INPUT, "%s: no \"weight_map\" of tensor names to files", index);
    if (s != ENT_OK) map = NULL;
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e) || !plain_name(e->valuestring)) {
            s = ent_fail(ENT_ERR_INPUT, "%s: tensor %s maps to %s, not a file name in %s", index,
                         e->string, cJSON_IsString(e) ? e->valuestring : "a non-string", dir);
            break;
        }
        int known = 0;
        for (int i = 0; i < st->nfiles && !known; i++)
            known = strcmp(strrchr(st->files[i].path, '/') + 1, e->valuestring) == 0;
        if (known) continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->valuestring) >= (int)sizeof path) {
            s = ent_fail(ENT_ERR_INPUT, "%s: the path of shard %s is too long", index, e->valuestring);
            break;
        }
        if ((s = open_file(st, path)) != ENT_OK) break;
    }
    for (int i = 0; i < st->n && s == ENT_OK; i++) {
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(map, st->t[i].pub.name);
        const char *file = strrchr(st->t[i].pub.file, '/') + 1;
        if (want == NULL)
            s = ent_fail(ENT_ERR_INPUT, "%s: tensor %s is not in the weight map of %s",
                         st->t[i].pub.file, st->t[i].pub.name, index);
        else if (strcmp(want->valuestring, file) != 0)
            s = ent_fail(ENT_ERR_INPUT, "%s: tensor %s is in %s, not in %s as the index says", index,
                         st->t[i].pub.name, file, want->valuestring);
    }
    if (s != ENT_OK) map = NULL;
    cJSON_ArrayForEach(e, map) {
        if (ent_st_find(st, e->string) == NULL) {
            s = ent_fail(ENT_ERR_INPUT, "%s: tensor %s is missing from %s/%s", index, e->string, dir,
                         e->valuestring);
            break;
        }
    }
    cJSON_Delete(root);
    return s;
}

ent_status ent_st_open(const char *dir, ent_st_t **out) {
    *out = NULL;
    ent_st_t *st = calloc(1, sizeof *st);
    if (st == NULL) return nomem();
    char single[PATH_MAX], index[PATH_MAX];
    ent_status s = ENT_OK;
    if (snprintf(single, sizeof single, "%s/model.safetensors", dir) >= (int)sizeof single ||
        snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir) >= (int)sizeof index)
        s = ent_fail(ENT_ERR_USAGE, "model directory name too long: %.64s...", dir);
    else if (access(single, F_OK) == 0) s = open_file(st, single);
    else if (access(index, F_OK) == 0) s = open_index(st, dir, index);
    else
        s = ent_fail(ENT_ERR_INPUT, "%s holds neither model.safetensors nor "
                     "model.safetensors.index.json", dir);
    if (s != ENT_OK) {
        ent_st_close(&st);
        return s;
    }
    *out = st;
    return ENT_OK;
}

int ent_st_count(const ent_st_t *st) { return st->n; }

const ent_st_tensor *ent_st_get(const ent_st_t *st, int i) { return &st->t[i].pub; }

const ent_st_tensor *ent_st_find(const ent_st_t *st, const char *name) {
    for (int i = 0; i < st->n; i++)
        if (strcmp(st->t[i].pub.name, name) == 0) return &st->t[i].pub;
    return NULL;
}

#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <omp.h>

// Each stored value as a float (little-endian in the file, whatever the host).
static inline float value_at(ent_dtype d, const unsigned char *p, size_t i) {
    switch (d) {
    case ENT_BF16: return ent_k_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    case ENT_F16: return ent_k_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    default:
        return ent_k_f32_from_bits((uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                                   (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24);
    }
}

#if defined(__AVX2__) && defined(__F16C__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ST_VECTOR 1
// Eight stored values at p as floats in a register. F16 goes by the F16C
// instruction, which converts exactly but quiets a signalling NaN: the
// callers send a block holding an F16 NaN the scalar way (has_nan16).
static inline __attribute__((always_inline)) __m256 load8(ent_dtype d, const unsigned char *p) {
    switch (d) {
    case ENT_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)), 16));
    case ENT_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
    default: return _mm256_loadu_ps((const float *)(const void *)p);
    }
}

// Whether any of the eight F16 values at p is a NaN (all exponent bits set,
// a mantissa bit set).
static inline int has_nan16(const unsigned char *p) {
    const __m128i exp = _mm_set1_epi16(0x7c00), man = _mm_set1_epi16(0x03ff);
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i nan = _mm_andnot_si128(_mm_cmpeq_epi16(_mm_and_si128(h, man), _mm_setzero_si128()),
                                   _mm_cmpeq_epi16(_mm_and_si128(h, exp), exp));
    return _mm_movemask_epi8(nan) != 0;
}

// An 8 x 8 block: eight rows of stored values (stride ss bytes) become
// eight rows of floats in dst (stride ds floats), widened in the registers.
static inline __attribute__((always_inline)) void transpose8(ent_dtype d, const unsigned char *src,
                                                             size_t ss, float *dst, size_t ds) {
    __m256 r[8], u[8], v[8];
    for (int k = 0; k < 8; k++) r[k] = load8(d, src + k * ss);
    for (int k = 0; k < 8; k += 2) {
        u[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        u[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        v[k] = _mm256_shuffle_ps(u[k], u[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
        v[k + 1] = _mm256_shuffle_ps(u[k], u[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
        v[k + 2] = _mm256_shuffle_ps(u[k + 1], u[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
        v[k + 3] = _mm256_shuffle_ps(u[k + 1], u[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; k++) {
        _mm256_storeu_ps(dst + k * ds, _mm256_permute2f128_ps(v[k], v[k + 4], 0x20));
        _mm256_storeu_ps(dst + (k + 4) * ds, _mm256_permute2f128_ps(v[k], v[k + 4], 0x31));
    }
}
#else
#define ST_VECTOR 0
#endif

// n floats from src (32-byte aligned) to dst. The stores go around the
// cache where dst is aligned for them: the lines they fill are not read
// again soon (a model is much larger than the cache), and a store that
// misses the cache would first read the line it overwrites. Without
// them, transposing a GPT-2 matrix took 2.3-3 ns a value here, with them
// 0.4-0.5 ns. The caller fences (ST_FENCE) before others read dst.
static inline void store_run(float *dst, const float *src, size_t n) {
    size_t i = 0;
#if ST_VECTOR
    if (((uintptr_t)dst & 31) == 0)
        for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_load_ps(src + i));
#endif
    for (; i < n; i++) dst[i] = src[i];
}

#if ST_VECTOR
#define ST_FENCE() _mm_sfence()
#else
#define ST_FENCE() ((void)0)
#endif

// n stored values at p as floats at out.
static inline __attribute__((always_inline)) void widen_as(ent_dtype d, const unsigned char *p,
                                                           size_t n, float *out) {
    size_t i = 0;
    if (d == ENT_F32 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
        if ((const void *)p != (const void *)out) memcpy(out, p, 4 * n);
        return;
    }
#if ST_VECTOR
    int stream = ((uintptr_t)out & 31) == 0;
    for (; i + 8 <= n; i += 8) {
        if (d == ENT_F16 && has_nan16(p + 2 * i)) {
            for (size_t j = i; j < i + 8; j++) out[j] = value_at(d, p, j);
            continue;
        }
        if (stream) _mm256_stream_ps(out + i, load8(d, p + 2 * i));
        else _mm256_storeu_ps(out + i, load8(d, p + 2 * i));
    }
#endif
    for (; i < n; i++) out[i] = value_at(d, p, i);
}

// The scalar way into a transposed tile: stored values (i, j) of the block
// at s0 (rows cols values apart), i in [i0, i1), j in [j0, j1), to
// tile[j * stride + i].
static inline void tile_scalar(ent_dtype d, const unsigned char *s0, size_t cols, float *tile,
                               size_t stride, size_t i0, size_t i1, size_t j0, size_t j1) {
    for (size_t j = j0; j < j1; j++)
        for (size_t i = i0; i < i1; i++) tile[j * stride + i] = value_at(d, s0, i * cols + j);
}

// Rows [r0, r0 + nr) of a stored [rows, cols] matrix (in: those rows,
// row-major) into the transposed [cols, rows] float matrix t, widened as
// they move: a TILE x TILE block at a time is transposed into a buffer
// (by 8 x 8 blocks in registers), then each of its rows is stored to t
// as one run (store_run). Storing the 8 x 8 blocks straight to t, whose
// rows lie a power of two apart in most models, was 5 times slower.
static inline __attribute__((always_inline)) void transpose_as(ent_dtype d, const unsigned char *in,
                                                               size_t r0, size_t nr, size_t rows,
                                                               size_t cols, float *t) {
    enum { TILE = 32, STRIDE = TILE + 8 };
    float tile[TILE * STRIDE] __attribute__((aligned(32)));
    size_t es = ent_dtype_size(d);
    for (size_t i0 = 0; i0 < nr; i0 += TILE)
        for (size_t j0 = 0; j0 < cols; j0 += TILE) {
            size_t ni = nr - i0 < TILE ? nr - i0 : TILE, nj = cols - j0 < TILE ? cols - j0 : TILE;
            const unsigned char *s0 = in + (i0 * cols + j0) * es;
            size_t i = 0;
#if ST_VECTOR
            for (; i + 8 <= ni; i += 8) {
                size_t j = 0;
                for (; j + 8 <= nj; j += 8) {
                    const unsigned char *s = s0 + (i * cols + j) * es;
                    int scalar = 0;
                    if (d == ENT_F16)
                        for (int k = 0; k < 8; k++) scalar |= has_nan16(s + k * cols * es);
                    if (scalar) tile_scalar(d, s0, cols, tile, STRIDE, i, i + 8, j, j + 8);
                    else transpose8(d, s, cols * es, tile + j * STRIDE + i, STRIDE);
                }
                tile_scalar(d, s0, cols, tile, STRIDE, i, i + 8, j, nj);
            }
#endif
            tile_scalar(d, s0, cols, tile, STRIDE, i, ni, 0, nj);
            for (size_t j = 0; j < nj; j++) store_run(t + (j0 + j) * rows + r0 + i0, tile + j * STRIDE, ni);
        }
}

// A piece of a tensor as floats: widened into place, or (transpose) its
// rows [r0, r0 + nr) transposed into the [cols, rows] matrix t. One copy
// of the loops for each dtype, so that the inner ones know it.
static void convert_piece(ent_dtype d, const unsigned char *in, size_t n, float *out, int transpose,
                          size_t r0, size_t rows, size_t cols) {
    switch (d) {
    case ENT_BF16:
        if (transpose) transpose_as(ENT_BF16, in, r0, n / cols, rows, cols, out);
        else widen_as(ENT_BF16, in, n, out);
        break;
    case ENT_F16:
        if (transpose) transpose_as(ENT_F16, in, r0, n / cols, rows, cols, out);
        else widen_as(ENT_F16, in, n, out);
        break;
    default:
        if (transpose) transpose_as(ENT_F32, in, r0, n / cols, rows, cols, out);
        else widen_as(ENT_F32, in, n, out);
        break;
    }
    ST_FENCE();
}

// The fetcher: brings the stream's tensors into the page cache, staying at
// most AHEAD ahead of the tensors read, so that the disk streams while the
// reading thread widens and transposes. It asks the kernel to read ahead
// (readahead(2): no copy; where that is refused, it reads into a scratch
// buffer) and, before each tensor, puts in place the memory that tensor
// will land in (its `dst`, ent_populate_big), which the reading thread would
// otherwise fault in or zero itself: on 2 cores, 0.07-0.1 s of a 0.3-0.4 s
// read of GPT-2 small. What it has not fetched is read on demand: it only
// ever makes reads faster. It stops at the end, at a read error (the reader
// then meets it itself) or when told to.
static void *fetch_main(void *arg) {
    ent_st_t *st = arg;
    unsigned char *buf = NULL;
    int copy = 0; // readahead was refused: read into buf instead
    for (int i = 0; i < st->nstream && !atomic_load(&st->stop); i++) {
        const st_entry *t = st->stream[i];
        const st_file *f = &st->files[t->file];
        int placed = st->dst == NULL;
        for (uint64_t at = 0; at < t->end - t->begin && !atomic_load(&st->stop);) {
            if (st->stream_at[i] + at > atomic_load(&st->read) + AHEAD) {
                nanosleep(&(struct timespec){.tv_nsec = 200000}, NULL);
                continue;
            }
            if (!placed) {
                ent_populate_big(st->dst[i], sizeof(float) * t->pub.numel);
                placed = 1;
            }
            uint64_t left = t->end - t->begin - at;
            size_t k = left < FETCH ? (size_t)left : FETCH;
            off_t from = (off_t)(f->data_at + t->begin + at);
            if (!copy && readahead(f->fd, from, k) == 0) {
                at += k;
                continue;
            }
            copy = 1;
            if (buf == NULL && (buf = malloc(FETCH)) == NULL) return NULL;
            ssize_t r = pread(f->fd, buf, k, from);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            at += (uint64_t)r;
        }
    }
    free(buf);
    return NULL;
}

void ent_st_stream(ent_st_t *st, const ent_st_tensor *const *order, float *const *dst, int n) {
    if (st->fetching || n <= 0) return;
    st->stream = malloc(sizeof *st->stream * (size_t)n);
    st->stream_at = malloc(sizeof *st->stream_at * (size_t)n);
    st->dst = dst != NULL ? malloc(sizeof *st->dst * (size_t)n) : NULL;
    if (st->stream == NULL || st->stream_at == NULL || (dst != NULL && st->dst == NULL))
        return; // read on demand
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        st->stream[i] = (const st_entry *)order[i]; // pub is the first member
        st->stream_at[i] = at;
        at += st->stream[i]->end - st->stream[i]->begin;
        if (dst != NULL) st->dst[i] = dst[i];
    }
    st->nstream = n;
    st->next = 0;
    atomic_store(&st->stop, 0);
    atomic_store(&st->read, 0);
    st->fetching = pthread_create(&st->fetcher, NULL, fetch_main, st) == 0; // else: read on demand
}

// Where t is in the fetcher's stream (the one expected next, or found):
// the stream's byte where t starts, or UINT64_MAX where it is not streamed.
static uint64_t stream_find(ent_st_t *st, const st_entry *t) {
    if (!st->fetching) return UINT64_MAX;
    if (st->next >= st->nstream || st->stream[st->next] != t)
        for (int i = 0; i < st->nstream; i++)
            if (st->stream[i] == t) st->next = i;
    return st->next < st->nstream && st->stream[st->next] == t ? st->stream_at[st->next] : UINT64_MAX;
}

// The fetcher's window follows the furthest byte of the stream read (the
// readers take the pieces of a tensor in order, but finish them in any).
static void stream_mark(ent_st_t *st, uint64_t at) {
    uint64_t was = atomic_load(&st->read);
    while (was < at && !atomic_compare_exchange_weak(&st->read, &was, at)) {
    }
}

// A tensor is read in pieces of whole rows when transposed (a row longer
// than a piece is one alone; rows by eights where a piece holds more, which
// keeps the tiles whole), shared among the OpenMP threads: each reads its
// piece into a buffer of its own, small enough to stay in its core's cache
// while it is widened (and transposed) into dst. float32 not transposed
// (little-endian) is read straight into dst.
ent_status ent_st_read(ent_st_t *st, const ent_st_tensor *pub, float *dst, int transpose) {
    const st_entry *t = (const st_entry *)pub; // pub is the first member
    st_file *f = &st->files[t->file];
    size_t esize = ent_dtype_size(pub->dtype), rows = 1, cols = 1;
    if (transpose) {
        if (pub->ndim != 2)
            return ent_fail(ENT_ERR_INTERNAL, "tensor %s: only a matrix is transposed", pub->name);
        rows = (size_t)pub->shape[0];
        cols = (size_t)pub->shape[1];
    }
    size_t per = PIECE / sizeof(float);
    if (transpose && cols > 0) { // (a matrix with no columns has no pieces)
        size_t nr = per / cols;
        per = (nr >= 16 ? nr / 8 * 8 : nr > 0 ? nr : 1) * cols;
    }
    size_t npieces = pub->numel == 0 ? 0 : (pub->numel - 1) / per + 1;
    int direct = pub->dtype == ENT_F32 && !transpose && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
    int nt = omp_get_max_threads();
    if (nt > MAX_READERS) nt = MAX_READERS;
    if ((size_t)nt > npieces) nt = npieces > 0 ? (int)npieces : 1;
    if (!direct && per * esize > st->buf_bytes) { // larger buffers: a row longer than a piece
        for (; st->nbufs > 0; st->nbufs--) free(st->bufs[st->nbufs - 1]);
        st->buf_bytes = per * esize;
    }
    for (; !direct && st->nbufs < nt; st->nbufs++)
        if ((st->bufs[st->nbufs] = malloc(st->buf_bytes)) == NULL) return nomem();
    uint64_t base = stream_find(st, t);
    // the first failure (the lowest piece that failed), reported after
    size_t bad = SIZE_MAX;
    int bad_errno = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (size_t p = 0; p < npieces; p++) {
        size_t done = p * per, k = pub->numel - done < per ? pub->numel - done : per;
        size_t bytes = k * esize, got = 0;
        unsigned char *in = direct ? (unsigned char *)(dst + done) : st->bufs[omp_get_thread_num()];
        if (base != UINT64_MAX) stream_mark(st, base + done * esize);
        while (got < bytes) {
            ssize_t r = pread(f->fd, in + got, bytes - got,
                              (off_t)(f->data_at + t->begin + done * esize + got));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                int e = r == 0 ? 0 : errno;
#pragma omp critical(ent_st_read_failed)
                if (p < bad) bad = p, bad_errno = e;
                break;
            }
            got += (size_t)r;
        }
        if (got == bytes && !direct)
            convert_piece(pub->dtype, in, k, transpose ? dst : dst + done, transpose, done / cols,
                          rows, cols);
    }
    if (bad != SIZE_MAX)
        return ent_fail(ENT_ERR_IO, "%s: cannot read tensor %s: %s", f->path, pub->name,
                        bad_errno == 0 ? "the file ends early (changed while read?)" : strerror(bad_errno));
    if (base != UINT64_MAX) st->next++;
    return ENT_OK;
}

void ent_st_close(ent_st_t **stp) {
    ent_st_t *st = *stp;
    if (st == NULL) return;
    if (st->fetching) {
        atomic_store(&st->stop, 1);
        pthread_join(st->fetcher, NULL);
    }
    free(st->stream);
    free(st->stream_at);
    free(st->dst);
    for (int i = 0; i < st->nfiles; i++) {
        if (st->files[i].fd >= 0) close(st->files[i].fd);
        free(st->files[i].path);
    }
    free(st->files);
    free(st->t);
    for (int i = 0; i < st->nbufs; i++) free(st->bufs[i]);
    free(st);
    *stp = NULL;
}
