// backend_cuda.cu: the cuda backend's table, its device, memory and copies.
//
// One backend instance drives one GPU through one stream: every op, copy and
// memset is queued on it in order, and comm/'s NCCL collectives are queued on
// it too (ent_backend_stream). Copies wait for the stream, so host buffers
// may be reused when they return; ops do not, and report launch errors at
// once and faults at the next synchronize or copy.
#include "cuda_impl.cuh"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// cuBLASLt's workspace: what its heuristics need for the model's shapes
#define ENT_CUDA_LT_WORKSPACE (32u << 20)

ent_status ent_cuda_launched(const char *op) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return ENT_OK;
    return ent_fail(ENT_ERR_INTERNAL, "cuda backend: %s: launch failed: %s", op,
                    cudaGetErrorString(e));
}

// grows *buf to at least bytes (device memory, or pinned host memory)
static ent_status grow_scratch(ent_backend_t *be, void **buf, size_t *have, size_t bytes,
                               int pinned, void **out) {
    ent_cuda *c = ent_cuda_of(be);
    if (bytes > *have) {
        ENT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
        if (pinned) cudaFreeHost(*buf);
        else cudaFree(*buf);
        *buf = NULL;
        *have = 0;
        cudaError_t e = pinned ? cudaMallocHost(buf, bytes) : cudaMalloc(buf, bytes);
        if (e != cudaSuccess)
            return ent_fail(ENT_ERR_NOMEM, "cuda backend: out of %s memory for %zu bytes of "
                            "scratch", pinned ? "pinned host" : "device", bytes);
        *have = bytes;
    }
    *out = *buf;
    return ENT_OK;
}

ent_status ent_cuda_scratch(ent_backend_t *be, size_t bytes, void **out) {
    ent_cuda *c = ent_cuda_of(be);
    return grow_scratch(be, &c->scratch, &c->scratch_bytes, bytes, 0, out);
}

ent_status ent_cuda_host_scratch(ent_backend_t *be, size_t bytes, void **out) {
    ent_cuda *c = ent_cuda_of(be);
    return grow_scratch(be, &c->host_scratch, &c->host_scratch_bytes, bytes, 1, out);
}

__global__ void ent_colsum_finish_kernel(float *acc, const float *partial, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; k++) s += partial[(size_t)k * C + c];
    acc[c] += s;
}

// ---------------------------------------------------------------------------
// memory and copies

static void *cuda_alloc(ent_backend_t *be, size_t bytes) {
    ent_cuda *c = ent_cuda_of(be);
    void *p = NULL;
    if (bytes == 0) bytes = 256;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError(); // an out-of-memory is the caller's to report, not a sticky error
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, bytes, c->stream) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free_mem(ent_backend_t *be, void *p) {
    (void)be;
    cudaFree(p); // waits for the device's work: nothing queued still uses p
}

static ent_status cuda_zero(ent_backend_t *be, void *p, size_t bytes) {
    ENT_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ent_cuda_of(be)->stream));
    return ENT_OK;
}

static ent_status cuda_copy(ent_backend_t *be, void *dst, const void *src, size_t bytes,
                            cudaMemcpyKind kind) {
    cudaStream_t s = ent_cuda_of(be)->stream;
    ENT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, s));
    ENT_CUDA_CHECK(cudaStreamSynchronize(s));
    return ENT_OK;
}

static ent_status cuda_to_device(ent_backend_t *be, void *dst, const void *host_src,
                                 size_t bytes) {
    return cuda_copy(be, dst, host_src, bytes, cudaMemcpyHostToDevice);
}

static ent_status cuda_to_host(ent_backend_t *be, void *host_dst, const void *src, size_t bytes) {
    return cuda_copy(be, host_dst, src, bytes, cudaMemcpyDeviceToHost);
}

static ent_status cuda_synchronize(ent_backend_t *be) {
    ENT_CUDA_CHECK(cudaStreamSynchronize(ent_cuda_of(be)->stream));
    ENT_CUDA_CHECK(cudaGetLastError());
    return ENT_OK;
}

static size_t cuda_available_memory(ent_backend_t *be) {
    (void)be;
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) return (size_t)-1;
    return free_bytes;
}

static void *cuda_stream(ent_backend_t *be) { return (void *)ent_cuda_of(be)->stream; }

static const char *cuda_describe(ent_backend_t *be) { return ent_cuda_of(be)->desc; }

static void cuda_release(ent_cuda *c) {
    if (c == NULL) return;
    if (c->stream != NULL) cudaStreamSynchronize(c->stream);
    cudaFree(c->lt_workspace);
    cudaFree(c->scratch);
    cudaFreeHost(c->host_scratch);
    if (c->lt != NULL) ent_lt.Destroy(c->lt);
    if (c->stream != NULL) cudaStreamDestroy(c->stream);
    free(c);
}

static void cuda_free_backend(ent_backend_t *be) {
    cuda_release(ent_cuda_of(be));
    free(be);
}

// ---------------------------------------------------------------------------
// the table

static struct ent_backend_i cuda_iface_make(void) {
    struct ent_backend_i i = {};
    i.name = "cuda";
    i.is_host = 0;
    i.free = cuda_free_backend;
    i.describe = cuda_describe;
    i.alloc = cuda_alloc;
    i.free_mem = cuda_free_mem;
    i.zero = cuda_zero;
    i.to_device = cuda_to_device;
    i.to_host = cuda_to_host;
    i.synchronize = cuda_synchronize;
    i.available_memory = cuda_available_memory;
    i.stream = cuda_stream;
    ENT_CUDA_TABLE_ENTRIES
    i.matmul_forward = ent_cuda_matmul_forward;
    i.matmul_backward = ent_cuda_matmul_backward;
    i.matmul_gelu_forward = ent_cuda_matmul_gelu_forward;
    return i;
}

static const struct ent_backend_i cuda_iface = cuda_iface_make();

// ---------------------------------------------------------------------------
// cuBLASLt, opened at the first backend

ent_lt_api ent_lt;

#define ENT_STR2(x) #x
#define ENT_STR(x) ENT_STR2(x)
#ifndef ENT_CUBLASLT_DIR
#define ENT_CUBLASLT_DIR ""
#endif

static pthread_mutex_t lt_lock = PTHREAD_MUTEX_INITIALIZER;
static int lt_state; // 0: not tried, 1: loaded, -1: failed (lt_error says why)
static char lt_error[600];

ent_status ent_cuda_lt_load(void) {
    pthread_mutex_lock(&lt_lock);
    if (lt_state == 0) {
        // the soname of the cuBLASLt the headers are from, found as the
        // system finds libraries, then in the toolkit's directory of the build
        const char *soname = "libcublasLt.so." ENT_STR(CUBLAS_VER_MAJOR);
        char there[512];
        snprintf(there, sizeof there, "%s/%s", ENT_CUBLASLT_DIR, soname);
        void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
        if (h == NULL && ENT_CUBLASLT_DIR[0] != '\0') h = dlopen(there, RTLD_NOW | RTLD_LOCAL);
        lt_state = 1;
        if (h == NULL) {
            snprintf(lt_error, sizeof lt_error, "cuda backend: cannot load cuBLASLt (%s, nor %s): %s",
                     soname, there, dlerror());
            lt_state = -1;
        }
#define ENT_LT_LOAD(name)                                                                          \
        if (lt_state == 1) {                                                                       \
            void *f = dlsym(h, "cublasLt" #name);                                                  \
            if (f == NULL) {                                                                       \
                snprintf(lt_error, sizeof lt_error, "cuda backend: %s lacks cublasLt" #name,       \
                         soname);                                                                  \
                lt_state = -1;                                                                     \
            }                                                                                      \
            memcpy(&ent_lt.name, &f, sizeof f);                                                    \
        }
        ENT_LT_FUNCTIONS(ENT_LT_LOAD)
#undef ENT_LT_LOAD
    }
    int state = lt_state;
    pthread_mutex_unlock(&lt_lock);
    return state == 1 ? ENT_OK : ent_fail(ENT_ERR_USAGE, "%s", lt_error);
}

extern "C" size_t ent_cuda_lt_version(void) {
    return ent_cuda_lt_load() == ENT_OK ? ent_lt.GetVersion() : 0;
}

// ---------------------------------------------------------------------------
// creation

extern "C" int ent_cuda_device_count(char *why, size_t len) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(why, len, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
        cudaGetLastError();
        return 0;
    }
    if (count == 0) snprintf(why, len, "cudaGetDeviceCount found no device");
    return count;
}

extern "C" ent_status ent_cuda_backend_new(const ent_backend_opts *opts, ent_backend_t **out) {
    *out = NULL;
    char why[160];
    int count = ent_cuda_device_count(why, sizeof why);
    if (count <= 0)
        return ent_fail(ENT_ERR_USAGE, "backend 'cuda': no CUDA device visible (%s)", why);
    ENT_CHECK(ent_cuda_lt_load());
    int want = opts != NULL && opts->device > 0 ? opts->device : 0;
    // auto is bf16: f32 masters, bf16 parameters in compute and activations
    int f32 = opts != NULL && opts->precision == ENT_PRECISION_F32;
    ent_status st = ENT_OK;
    ent_backend_t *be = (ent_backend_t *)calloc(1, sizeof *be);
    ent_cuda *c = (ent_cuda *)calloc(1, sizeof *c);
    if (be == NULL || c == NULL) {
        free(be);
        free(c);
        return ent_fail(ENT_ERR_NOMEM, "out of memory creating the cuda backend");
    }
    c->device = want % count;
    c->device_count = count;
    ENT_CUDA_CHECK_GOTO(cudaSetDevice(c->device), fail);
    ENT_CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), fail);
    if (ent_lt.Create(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        st = ent_fail(ENT_ERR_INTERNAL, "cuda backend: cublasLtCreate failed on GPU %d",
                      c->device);
        goto fail;
    }
    c->lt_workspace_bytes = ENT_CUDA_LT_WORKSPACE;
    ENT_CUDA_CHECK_GOTO(cudaMalloc(&c->lt_workspace, c->lt_workspace_bytes), fail);
    {
        cudaDeviceProp prop;
        int runtime = 0;
        ENT_CUDA_CHECK_GOTO(cudaGetDeviceProperties(&prop, c->device), fail);
        cudaRuntimeGetVersion(&runtime);
        snprintf(c->desc, sizeof c->desc,
                 "cuda: GPU %d of %d, %.96s (sm_%d%d, %.1f GiB, %d SMs), CUDA runtime %d.%d, "
                 "cuBLASLt %zu; %s",
                 c->device, count, prop.name, prop.major, prop.minor,
                 (double)prop.totalGlobalMem / (1u << 30), prop.multiProcessorCount,
                 runtime / 1000, runtime % 1000 / 10, ent_lt.GetVersion(),
                 f32 ? "f32 storage, TF32 matrix products"
                     : "bf16 parameters and activations, f32 masters and accumulation");
    }
    be->act_dtype = be->param_dtype = f32 ? ENT_F32 : ENT_BF16;
    be->iface = &cuda_iface;
    be->impl = c;
    be->threads = 1;
    *out = be;
    return ENT_OK;
fail:
    cuda_release(c);
    free(be);
    return st;
}
