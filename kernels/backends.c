// backends.c: the backends by name (config key system.backend).
#include "ent_kernels.h"
#include "cpu/cpu_impl.h"
#ifdef ENT_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#include <stdio.h>
#include <string.h>

static ent_status auto_new(const ent_backend_opts *opts, ent_backend_t **out);
#ifndef ENT_HAVE_CUDA
static ent_status no_cuda(const ent_backend_opts *opts, ent_backend_t **out) {
    (void)opts;
    (void)out;
    return ent_fail(ENT_ERR_USAGE, "backend 'cuda': this build has no CUDA (it has %s): rebuild "
                    "with the CUDA toolkit: cmake -DENT_CUDA=ON", ent_backend_names());
}
#endif

static const struct {
    const char *name;
    ent_status (*create)(const ent_backend_opts *opts, ent_backend_t **out);
    int built; // 0: known, but this build cannot create it (create says why)
    int bf16;  // 1: it can compute in bf16 (system.precision)
} backends[] = {
    {"cpu", ent_cpu_new, 1, 0},
    {"cpu-guarded", ent_cpu_guarded_new, 1, 0},
#ifdef ENT_HAVE_CUDA
    {"cuda", ent_cuda_backend_new, 1, 1},
#else
    {"cuda", no_cuda, 0, 1},
#endif
    {"auto", auto_new, 1, 1}, // cuda on a GPU; the cpu it falls back to refuses bf16 itself
};
#define NBACKENDS (sizeof backends / sizeof backends[0])

static ent_status auto_new(const ent_backend_opts *opts, ent_backend_t **out) {
#ifdef ENT_HAVE_CUDA
    char why[160];
    if (ent_cuda_device_count(why, sizeof why) > 0) return ent_cuda_backend_new(opts, out);
#endif
    return ent_cpu_new(opts, out);
}

const char *ent_backend_names(void) {
    static char names[128];
    if (names[0] == '\0') {
        size_t len = 0;
        for (size_t i = 0; i < NBACKENDS; i++)
            if (backends[i].built)
                len += (size_t)snprintf(names + len, sizeof names - len, "%s%s",
                                        len ? ", " : "", backends[i].name);
    }
    return names;
}

ent_status ent_backend_check_name(const char *name) {
    for (size_t i = 0; i < NBACKENDS; i++)
        if (strcmp(name, backends[i].name) == 0) {
            if (backends[i].built) return ENT_OK;
            ent_backend_t *none = NULL;
            return backends[i].create(NULL, &none); // the reason it is not built
        }
    return ent_fail(ENT_ERR_USAGE, "unknown backend '%s' (this build has: %s)", name,
                    ent_backend_names());
}

ent_status ent_backend_new(const char *name, const ent_backend_opts *opts, ent_backend_t **out) {
    *out = NULL;
    ENT_CHECK(ent_backend_check_name(name));
    for (size_t i = 0; i < NBACKENDS; i++)
        if (strcmp(name, backends[i].name) == 0) return backends[i].create(opts, out);
    return ENT_ERR_INTERNAL; // not reached: check_name knows the same names
}

static const char *const precision_names[] = {"auto", "f32", "bf16"};

ent_status ent_precision_parse(const char *name, ent_precision *out) {
    for (int i = 0; i < (int)(sizeof precision_names / sizeof precision_names[0]); i++)
        if (strcmp(name, precision_names[i]) == 0) {
            *out = (ent_precision)i;
            return ENT_OK;
        }
    return ent_fail(ENT_ERR_USAGE, "unknown precision '%s' (known: auto, f32, bf16)", name);
}

ent_status ent_backend_check_precision(const char *name, ent_precision p) {
    if (p != ENT_PRECISION_BF16) return ENT_OK;
    for (size_t i = 0; i < NBACKENDS; i++)
        if (strcmp(name, backends[i].name) == 0 && !backends[i].bf16)
            return ent_fail(ENT_ERR_USAGE, "system.precision = bf16 needs system.backend = cuda "
                            "(or auto on a GPU): backend '%s' computes in f32 only", name);
    return ENT_OK;
}

ent_backend_t *ent_backend_cpu_new(int threads) {
    ent_backend_opts opts = {.threads = threads};
    ent_backend_t *be = NULL;
    return ent_backend_new("cpu", &opts, &be) == ENT_OK ? be : NULL;
}

void ent_backend_free(ent_backend_t **be) {
    if (be == NULL || *be == NULL) return;
    (*be)->iface->free(*be);
    *be = NULL;
}

ent_status ent_backend_check_llama(ent_backend_t *be) {
    const struct ent_backend_i *i = be->iface;
    const struct {
        const char *name;
        int present;
    } ops[] = {
        {"rmsnorm_forward", i->rmsnorm_forward != NULL},
        {"rmsnorm_backward", i->rmsnorm_backward != NULL},
        {"rope_forward", i->rope_forward != NULL},
        {"rope_backward", i->rope_backward != NULL},
        {"swiglu_forward", i->swiglu_forward != NULL},
        {"swiglu_backward", i->swiglu_backward != NULL},
        {"gqa_forward", i->gqa_forward != NULL},
        {"gqa_backward", i->gqa_backward != NULL},
    };
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
        if (!ops[k].present)
            return ent_fail(ENT_ERR_USAGE, "op %s not implemented on %s (model.arch = llama "
                            "needs it; system.backend = cpu has every op)", ops[k].name, i->name);
    return ENT_OK;
}

ent_status ent_gqa_shape_check(ent_gqa_shape s) {
    if (s.NH < 1 || s.hd < 1 || s.group < 1 || s.phase < 0 || s.phase >= s.group ||
        (s.phase + s.NH - 1) / s.group >= s.kv_heads)
        return ent_fail(ENT_ERR_USAGE, "gqa attention: %d query heads of size %d in groups of %d "
                        "from phase %d need more than the %d KV heads given", s.NH, s.hd, s.group,
                        s.phase, s.kv_heads);
    return ENT_OK;
}
