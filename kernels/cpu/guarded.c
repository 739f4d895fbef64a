// guarded.c: the CPU backend with its memory locked outside its own calls.
//
// Device memory must only be touched through a backend's ops and copies
// (STYLE.md 13): a GPU site crashes, or silently reads garbage, where a CPU
// run would not notice. This backend makes a CPU run notice. Every buffer it
// allocates is an mmap of its own, kept PROT_NONE; each op and copy opens all
// of them, runs the CPU backend's code, and locks them again. Any access from
// outside the backend (a checkpoint writer, a collective, a sampler reading an
// arena) faults at once with SIGSEGV. It reports is_host = 0, as a GPU does,
// so callers take their device paths. Tests only: every call costs two
// mprotect system calls per buffer.
#include "cpu_impl.h"

#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct {
    void *p;
    size_t len; // mapped bytes (whole pages)
} region;

typedef struct {
    pthread_mutex_t lock;
    region *regions;
    int n, cap;
    int open_depth; // calls in progress (a saver thread's copy may overlap an op)
} guard;

static void protect_all(guard *g, int prot) {
    for (int i = 0; i < g->n; i++)
        if (mprotect(g->regions[i].p, g->regions[i].len, prot) != 0) {
            perror("cpu-guarded backend: mprotect");
            abort(); // the guard itself is broken: nothing it reports can be trusted
        }
}

static void open_all(ent_backend_t *be) {
    guard *g = be->impl;
    pthread_mutex_lock(&g->lock);
    if (g->open_depth++ == 0) protect_all(g, PROT_READ | PROT_WRITE);
    pthread_mutex_unlock(&g->lock);
}

static void close_all(ent_backend_t *be) {
    guard *g = be->impl;
    pthread_mutex_lock(&g->lock);
    if (--g->open_depth == 0) protect_all(g, PROT_NONE);
    pthread_mutex_unlock(&g->lock);
}

static void *g_alloc(ent_backend_t *be, size_t bytes) {
    guard *g = be->impl;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (bytes + page - 1) / page * page;
    if (len == 0) len = page;
    void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    pthread_mutex_lock(&g->lock);
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 16;
        region *r = realloc(g->regions, sizeof *r * (size_t)cap);
        if (r == NULL) {
            pthread_mutex_unlock(&g->lock);
            munmap(p, len);
            return NULL;
        }
        g->regions = r;
        g->cap = cap;
    }
    g->regions[g->n++] = (region){p, len};
    // a buffer made while another thread's call has the others open is opened too
    if (g->open_depth > 0) mprotect(p, len, PROT_READ | PROT_WRITE);
    pthread_mutex_unlock(&g->lock);
    return p; // fresh anonymous pages are zero
}

static void g_free_mem(ent_backend_t *be, void *p) {
    guard *g = be->impl;
    pthread_mutex_lock(&g->lock);
    for (int i = 0; i < g->n; i++)
        if (g->regions[i].p == p) {
            munmap(p, g->regions[i].len);
            g->regions[i] = g->regions[--g->n];
            break;
        }
    pthread_mutex_unlock(&g->lock);
}

static void g_free_backend(ent_backend_t *be) {
    guard *g = be->impl;
    for (int i = 0; i < g->n; i++) munmap(g->regions[i].p, g->regions[i].len);
    free(g->regions);
    pthread_mutex_destroy(&g->lock);
    free(g);
    free(be);
}

static const char *g_describe(ent_backend_t *be) {
    (void)be;
    static char desc[320];
    snprintf(desc, sizeof desc, "guarded (memory PROT_NONE outside backend calls); %s",
             ent_backend_cpu_describe());
    return desc;
}

static ent_status g_synchronize(ent_backend_t *be) {
    (void)be;
    return ENT_OK;
}

// Each op: open every buffer, run the CPU backend's op, lock them again.
#define GUARDED(op, params, args)                                                \
    static ent_status g_##op params {                                            \
        open_all(be);                                                            \
        ent_status st = ent_cpu_##op args;                                       \
        close_all(be);                                                           \
        return st;                                                               \
    }

GUARDED(zero, (ent_backend_t *be, void *p, size_t bytes), (be, p, bytes))
GUARDED(copy, (ent_backend_t *be, void *dst, const void *src, size_t bytes), (be, dst, src, bytes))
ENT_CPU_OPS(GUARDED)
#define GUARDED_SLOT(op, params, args) .op = g_##op,

static const struct ent_backend_i guarded_backend_i = {
    .name = "cpu-guarded",
    .is_host = 0,
    .free = g_free_backend,
    .describe = g_describe,
    .alloc = g_alloc,
    .free_mem = g_free_mem,
    .zero = g_zero,
    .to_device = g_copy,
    .to_host = g_copy,
    .synchronize = g_synchronize,
    .available_memory = ent_cpu_available_memory,
    .attention_state_bytes = ent_cpu_attention_state_bytes,
    ENT_CPU_OPS(GUARDED_SLOT)
};

ent_status ent_cpu_guarded_new(const ent_backend_opts *opts, ent_backend_t **out) {
    if (opts != NULL) ENT_CHECK(ent_backend_check_precision("cpu-guarded", opts->precision));
    ent_backend_t *be = calloc(1, sizeof *be);
    guard *g = calloc(1, sizeof *g);
    if (be == NULL || g == NULL) {
        free(be);
        free(g);
        return ent_fail(ENT_ERR_NOMEM, "out of memory creating the cpu-guarded backend");
    }
    pthread_mutex_init(&g->lock, NULL);
    if (opts != NULL && opts->threads > 0) omp_set_num_threads(opts->threads);
    be->threads = omp_get_max_threads();
    be->iface = &guarded_backend_i;
    be->impl = g;
    be->act_dtype = be->param_dtype = ENT_F32;
    *out = be;
    return ENT_OK;
}
