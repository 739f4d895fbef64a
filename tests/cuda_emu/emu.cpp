// emu.cpp: runs the cuda backend's kernels on the CPU, for tests on machines
// without a GPU (the CUDA emulator of tests/cuda_emu).
//
// translate.py turns kernels/cuda's files into plain C++ in namespace
// ent_emu; this file runs their launches. Each CUDA thread of a block is a
// lightweight context with its own stack (made once per launch with
// makecontext and reused by the thread of the same index in every block,
// then switched with _setjmp/_longjmp, which keep the signal mask alone and
// so make no system call). The threads of a block run round robin;
// __syncthreads is a barrier of the block's live threads, and a warp shuffle
// one of the warp's live threads around a shared slot per lane, so the
// kernels' reductions, tiles and shared memory behave as on a GPU, in one
// fixed interleaving. Blocks run one after the other; dynamic shared memory
// starts as NaN, so a kernel that reads what it has not staged fails its
// comparison. What it cannot show: races between blocks or warps that a
// real GPU's scheduling would expose, timing, and the device's own math
// library (expf, logf: the host's; kernel_math.h's host paths).
//
// The backend it makes, "cuda-emulated", has host memory, the emulated
// kernels for every op but the matrix products (cuBLASLt's: the CPU's, with
// bf16 operands widened and the output rounded back in bf16), the cuda
// backend's precisions (system.precision: auto is bf16), and
// is handed to tests/test_backend_ops.c, compiled with ent_backend_new
// renamed to ent_emu_backend_new (tests/CMakeLists.txt).
#undef _FORTIFY_SOURCE // _longjmp between stacks is the point
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <vector>

#include "cuda_impl.cuh" // the translated one

uint3 blockIdx;
dim3 blockDim, gridDim;
float *ent_emu_smem;

namespace {

struct emu_thread {
    ucontext_t start;  // where a new thread begins
    jmp_buf resume;    // where a suspended thread goes on
    uint3 idx;
    int started, done, warp, lane;
};

struct emu_barrier {
    int arrived = 0;
    unsigned generation = 0;
};

const size_t STACK_BYTES = 64 << 10;
const int MAX_THREADS = 1024, MAX_WARPS = MAX_THREADS / 32;

emu_thread *cur;
std::vector<emu_thread> threads;
std::vector<char> stacks;
jmp_buf scheduler;
ucontext_t scheduler_ctx;
const std::function<void()> *kernel;
int live, warp_live[MAX_WARPS];
emu_barrier block_barrier, warp_barrier[MAX_WARPS];
float lane_slot[MAX_WARPS][32];

void yield() {
    if (_setjmp(cur->resume) == 0) _longjmp(scheduler, 1);
}

// waits until every live thread of the group (whose count is *live_count)
// has arrived; threads that have exited do not count
void barrier_wait(emu_barrier &b, const int *live_count) {
    unsigned gen = b.generation;
    b.arrived++;
    for (;;) {
        if (b.generation != gen) return;
        if (b.arrived >= *live_count) {
            b.arrived = 0;
            b.generation++;
            return;
        }
        yield();
    }
}

// runs thread t until it yields, waits or exits (a function of its own, so
// that no variable of the launch's loops lives across the _setjmp)
__attribute__((noinline)) void run_thread(emu_thread *t) {
    cur = t;
    if (_setjmp(scheduler) != 0) return;
    if (!t->started) {
        t->started = 1;
        swapcontext(&scheduler_ctx, &t->start);
    } else {
        _longjmp(t->resume, 1);
    }
}

void thread_main();

// a new context for thread t on its own stack (getcontext returns twice: kept
// out of the launch's loops too)
__attribute__((noinline)) void make_thread(emu_thread *t, char *stack) {
    getcontext(&t->start);
    t->start.uc_stack.ss_sp = stack;
    t->start.uc_stack.ss_size = STACK_BYTES;
    t->start.uc_link = NULL;
    makecontext(&t->start, thread_main, 0);
}

// A thread's context lives for the whole launch: after the kernel returns
// it waits for the next block and runs the kernel again as the thread of
// the same index there (a context made once per launch, not per block).
void thread_main() {
    for (;;) {
        (*kernel)();
        cur->done = 1;
        live--;
        warp_live[cur->warp]--;
        if (_setjmp(cur->resume) == 0) _longjmp(scheduler, 1);
    }
}

} // namespace

const uint3 &ent_emu_thread_idx(void) { return cur->idx; }

void __syncthreads(void) { barrier_wait(block_barrier, &live); }

float __shfl_sync(unsigned mask, float v, int src_lane) {
    (void)mask;
    int w = cur->warp;
    lane_slot[w][cur->lane] = v;
    barrier_wait(warp_barrier[w], &warp_live[w]);
    float r = lane_slot[w][src_lane & 31];
    barrier_wait(warp_barrier[w], &warp_live[w]); // the slots are read before they change
    return r;
}

float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    return __shfl_sync(mask, v, cur->lane ^ lane_mask);
}

void ent_emu_launch(dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
                    const std::function<void()> &fn) {
    (void)stream;
    int n = (int)(block.x * block.y * block.z);
    if (n < 1 || n > MAX_THREADS) {
        fprintf(stderr, "cuda emulator: a block of %d threads\n", n);
        abort();
    }
    gridDim = grid;
    blockDim = block;
    kernel = &fn;
    threads.assign(n, emu_thread());
    stacks.resize((size_t)n * STACK_BYTES);
    for (int t = 0; t < n; t++) {
        threads[t].started = 0;
        make_thread(&threads[t], &stacks[(size_t)t * STACK_BYTES]);
    }
    std::vector<float> smem(shmem / sizeof(float) + 1);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = {x, y, z};
                for (float &f : smem) f = NAN;
                ent_emu_smem = smem.data();
                live = n;
                for (int w = 0; w < MAX_WARPS; w++) {
                    warp_live[w] = 0;
                    warp_barrier[w] = emu_barrier();
                }
                block_barrier = emu_barrier();
                for (int t = 0; t < n; t++) {
                    emu_thread &e = threads[t];
                    e.idx = {(unsigned)t % block.x, (unsigned)t / block.x % block.y,
                             (unsigned)t / (block.x * block.y)};
                    e.done = 0;
                    e.warp = t / 32;
                    e.lane = t % 32;
                    warp_live[e.warp]++;
                }
                while (live > 0)
                    for (int t = 0; t < n; t++)
                        if (!threads[t].done) run_thread(&threads[t]);
            }
}

// ---------------------------------------------------------------------------
// what backend_cuda.cu gives the op files

namespace ent_emu {

ent_status ent_cuda_launched(const char *op) {
    (void)op;
    return ENT_OK;
}

static ent_status grow(void **buf, size_t *have, size_t bytes, void **out) {
    if (bytes > *have) {
        free(*buf);
        *buf = malloc(bytes);
        if (*buf == NULL) return ent_fail(ENT_ERR_NOMEM, "cuda emulator: scratch");
        memset(*buf, 0xff, bytes); // NaN floats: scratch read before written shows
        *have = bytes;
    }
    *out = *buf;
    return ENT_OK;
}

ent_status ent_cuda_scratch(ent_backend_t *be, size_t bytes, void **out) {
    ent_cuda *c = ent_cuda_of(be);
    return grow(&c->scratch, &c->scratch_bytes, bytes, out);
}

ent_status ent_cuda_host_scratch(ent_backend_t *be, size_t bytes, void **out) {
    ent_cuda *c = ent_cuda_of(be);
    return grow(&c->host_scratch, &c->host_scratch_bytes, bytes, out);
}

// backend_cuda.cu's, word for word
__global__ void ent_colsum_finish_kernel(float *acc, const float *partial, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; k++) s += partial[(size_t)k * C + c];
    acc[c] += s;
}

} // namespace ent_emu

// ---------------------------------------------------------------------------
// the emulated backend

extern "C" {
ent_status ent_cpu_matmul_forward(ent_backend_t *be, float *out, const float *inp,
                                  const float *weight, const float *bias, int N, int C, int OC);
ent_status ent_cpu_matmul_backward(ent_backend_t *be, float *dinp, float *dweight, float *dbias,
                                   const float *dout, const float *inp, const float *weight,
                                   int N, int C, int OC);
ent_status ent_emu_backend_new(const char *name, const ent_backend_opts *opts,
                               ent_backend_t **out);
}

namespace {

// The matrix products: the CPU's, in f32; in bf16 as cuBLASLt computes them
// (bf16 operands widened exactly, f32 accumulation, a bf16 output rounded
// once, after the accumulation into what it held; f32 weight gradients).
std::vector<float> widen(const void *p, size_t n) {
    std::vector<float> w(p != NULL ? n : 0);
    if (p != NULL) ent_dtype_to_f32(ENT_BF16, p, w.data(), n); // cannot fail for bf16
    return w;
}
void narrow(void *p, const std::vector<float> &w) {
    uint16_t *h = (uint16_t *)p;
    for (size_t i = 0; i < w.size(); i++) h[i] = ent_k_f32_to_bf16(w[i]);
}
const float *data_or_null(const std::vector<float> &w) { return w.empty() ? NULL : w.data(); }

ent_status emu_matmul_forward(ent_backend_t *be, void *out, const void *inp, const void *weight,
                              const void *bias, int N, int C, int OC) {
    if (be->act_dtype != ENT_BF16)
        return ent_cpu_matmul_forward(be, (float *)out, (const float *)inp,
                                      (const float *)weight, (const float *)bias, N, C, OC);
    std::vector<float> x = widen(inp, (size_t)N * C), w = widen(weight, (size_t)OC * C);
    std::vector<float> b = widen(bias, (size_t)OC), y((size_t)N * OC);
    ent_status st = ent_cpu_matmul_forward(be, y.data(), x.data(), w.data(), data_or_null(b), N,
                                           C, OC);
    narrow(out, y);
    return st;
}

// the product, then the emulated GELU kernel (cuBLASLt's epilogue is not emulated)
ent_status emu_matmul_gelu_forward(ent_backend_t *be, void *pre, void *out, const void *inp,
                                   const void *weight, const void *bias, int N, int C, int OC) {
    ent_status st = emu_matmul_forward(be, pre, inp, weight, bias, N, C, OC);
    return st == ENT_OK ? be->iface->gelu_forward(be, out, pre, (size_t)N * OC) : st;
}

ent_status emu_matmul_backward(ent_backend_t *be, void *dinp, float *dweight, float *dbias,
                               const void *dout, const void *inp, const void *weight, int N,
                               int C, int OC) {
    if (be->act_dtype != ENT_BF16)
        return ent_cpu_matmul_backward(be, (float *)dinp, dweight, dbias, (const float *)dout,
                                       (const float *)inp, (const float *)weight, N, C, OC);
    std::vector<float> dy = widen(dout, (size_t)N * OC), x = widen(inp, (size_t)N * C);
    std::vector<float> w = widen(weight, (size_t)OC * C), dx = widen(dinp, (size_t)N * C);
    ent_status st = ent_cpu_matmul_backward(be, dinp != NULL ? dx.data() : NULL, dweight, dbias,
                                            dy.data(), x.data(), w.data(), N, C, OC);
    if (dinp != NULL) narrow(dinp, dx);
    return st;
}

void *emu_alloc(ent_backend_t *, size_t bytes) {
    size_t n = (bytes + ENT_ARENA_ALIGN - 1) / ENT_ARENA_ALIGN * ENT_ARENA_ALIGN;
    void *p = aligned_alloc(ENT_ARENA_ALIGN, n ? n : ENT_ARENA_ALIGN);
    if (p != NULL) memset(p, 0, n);
    return p;
}
void emu_free_mem(ent_backend_t *, void *p) { free(p); }
ent_status emu_zero(ent_backend_t *, void *p, size_t bytes) {
    memset(p, 0, bytes);
    return ENT_OK;
}
ent_status emu_copy(ent_backend_t *, void *dst, const void *src, size_t bytes) {
    memcpy(dst, src, bytes);
    return ENT_OK;
}
ent_status emu_synchronize(ent_backend_t *) { return ENT_OK; }
const char *emu_describe(ent_backend_t *) {
    return "the cuda backend's kernels emulated on the host (tests/cuda_emu), the CPU's matrix "
           "products (widened from bf16, rounded back, in bf16)";
}
void emu_free(ent_backend_t *be) {
    ent_emu::ent_cuda *c = ent_emu::ent_cuda_of(be);
    free(c->scratch);
    free(c->host_scratch);
    free(c);
    free(be);
}

struct ent_backend_i emu_iface_make() {
    using namespace ent_emu;
    struct ent_backend_i i = {};
    i.name = "cuda-emulated";
    i.is_host = 0;
    i.free = emu_free;
    i.describe = emu_describe;
    i.alloc = emu_alloc;
    i.free_mem = emu_free_mem;
    i.zero = emu_zero;
    i.to_device = emu_copy;
    i.to_host = emu_copy;
    i.synchronize = emu_synchronize;
    ENT_CUDA_TABLE_ENTRIES
    i.matmul_forward = emu_matmul_forward;
    i.matmul_backward = emu_matmul_backward;
    i.matmul_gelu_forward = emu_matmul_gelu_forward;
    return i;
}

const struct ent_backend_i emu_iface = emu_iface_make();

} // namespace

// "cuda-emulated": the emulated backend; any other name: ent_backend_new's
ent_status ent_emu_backend_new(const char *name, const ent_backend_opts *opts,
                               ent_backend_t **out) {
    if (strcmp(name, "cuda-emulated") != 0) return ent_backend_new(name, opts, out);
    ent_backend_t *be = (ent_backend_t *)calloc(1, sizeof *be);
    void *impl = calloc(1, sizeof(ent_emu::ent_cuda));
    if (be == NULL || impl == NULL) {
        free(be);
        free(impl);
        return ent_fail(ENT_ERR_NOMEM, "out of memory creating the cuda emulator");
    }
    be->iface = &emu_iface;
    be->impl = impl;
    // as the cuda backend: auto is bf16
    int f32 = opts != NULL && opts->precision == ENT_PRECISION_F32;
    be->act_dtype = be->param_dtype = f32 ? ENT_F32 : ENT_BF16;
    be->threads = 1;
    *out = be;
    return ENT_OK;
}
