// backend_cpu.c: the CPU backend's table and its memory functions.
#include "cpu_impl.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void *cpu_alloc(ent_backend_t *be, size_t bytes) {
    (void)be;
    void *p = NULL;
    if (bytes == 0) bytes = 64;
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    memset(p, 0, bytes);
    return p;
}

static void cpu_free(ent_backend_t *be, void *p) {
    (void)be;
    free(p);
}

ent_status ent_cpu_zero(ent_backend_t *be, void *p, size_t bytes) {
    (void)be;
    memset(p, 0, bytes);
    return ENT_OK;
}

ent_status ent_cpu_copy(ent_backend_t *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memcpy(dst, src, bytes);
    return ENT_OK;
}

// (B, NH, T, T) probabilities, kept for backward
size_t ent_cpu_attention_state_bytes(ent_backend_t *be, int B, int T, int NH) {
    (void)be;
    return (size_t)B * (size_t)NH * (size_t)T * (size_t)T * sizeof(float);
}

static void cpu_free_backend(ent_backend_t *be) { free(be); }

static const char *cpu_describe(ent_backend_t *be) {
    (void)be;
    return ent_backend_cpu_describe();
}

// MemAvailable from /proc/meminfo, capped by the address-space limit: what
// can be allocated and touched before the kernel starts reclaiming or killing.
size_t ent_cpu_available_memory(ent_backend_t *be) {
    (void)be;
    size_t avail = (size_t)-1;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f != NULL) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = (size_t)kb * 1024;
                break;
            }
        fclose(f);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < avail)
        avail = rl.rlim_cur;
    return avail;
}

static ent_status cpu_synchronize(ent_backend_t *be) {
    (void)be; // every op has finished when it returns
    return ENT_OK;
}

// The table's entries: each forwards to the op's kernel, whose float *
// takes the table's void * (f32: ent_cpu_new refuses another precision).
#define CPU_ENTRY(op, params, args) \
    static ent_status cpu_##op params { return ent_cpu_##op args; }
ENT_CPU_OPS(CPU_ENTRY)
#undef CPU_ENTRY
#define CPU_SLOT(op, params, args) .op = cpu_##op,

static const struct ent_backend_i cpu_backend_i = {
    .name = "cpu",
    .is_host = 1,
    .free = cpu_free_backend,
    .describe = cpu_describe,
    .alloc = cpu_alloc,
    .free_mem = cpu_free,
    .zero = ent_cpu_zero,
    .to_device = ent_cpu_copy,
    .to_host = ent_cpu_copy,
    .synchronize = cpu_synchronize,
    .available_memory = ent_cpu_available_memory,
    .attention_state_bytes = ent_cpu_attention_state_bytes,
    ENT_CPU_OPS(CPU_SLOT)
};


ent_status ent_cpu_new(const ent_backend_opts *opts, ent_backend_t **out) {
    if (opts != NULL) ENT_CHECK(ent_backend_check_precision("cpu", opts->precision));
    ent_backend_t *be = calloc(1, sizeof *be);
    if (be == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating the cpu backend");
    be->act_dtype = be->param_dtype = ENT_F32;
    if (opts != NULL && opts->threads > 0) omp_set_num_threads(opts->threads);
    be->iface = &cpu_backend_i;
    be->impl = NULL;
    be->threads = omp_get_max_threads();
    *out = be;
    return ENT_OK;
}

const char *ent_backend_cpu_warning(void) {
    static char msg[320];
    // OpenBLAS's x86-64 kernel sets from before AVX2 and FMA
    static const char *const old[] = {"prescott", "core2", "penryn", "dunnington", "nehalem",
                                      "atom", "opteron", "barcelona", "bobcat", "sandybridge",
                                      "bulldozer"};
    const char *core = openblas_get_corename();
    int dated = 0;
    for (size_t i = 0; core != NULL && i < sizeof old / sizeof old[0]; i++)
        dated |= strcasecmp(core, old[i]) == 0;
    __builtin_cpu_init();
    if (!dated || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return NULL;
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    snprintf(msg, sizeof msg, "OpenBLAS runs its %s kernels on a CPU with %s: this OpenBLAS "
             "does not know the CPU model, and matrix products run several times slower. Set "
             "OPENBLAS_CORETYPE=%s in the environment before starting entente", core,
             avx512 ? "AVX-512" : "AVX2 and FMA", avx512 ? "SkylakeX" : "Haswell");
    return msg;
}

const char *ent_backend_cpu_describe(void) {
    static char desc[256];
    const char *modes[] = {"sequential", "pthreads", "openmp"};
    int mode = openblas_get_parallel();
    char *cfg = openblas_get_config();
    snprintf(desc, sizeof desc, "%s (%s, %d threads)", cfg ? cfg : "OpenBLAS",
             mode >= 0 && mode <= 2 ? modes[mode] : "?", omp_get_max_threads());
    return desc;
}
