// cuda_runtime.h of the CUDA emulator (tests/cuda_emu): the few runtime
// types and calls kernels/cuda uses, on host memory, and the device-side
// names (__global__, threadIdx, __syncthreads, warp shuffles) that emu.cpp
// implements with one lightweight context per CUDA thread. Only for the
// kernels' translation by translate.py; nothing here talks to a GPU.
#ifndef ENT_CUDA_EMU_RUNTIME_H
#define ENT_CUDA_EMU_RUNTIME_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#include <functional>

typedef void *cudaStream_t;
typedef enum { cudaSuccess = 0 } cudaError_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
static inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
static inline const char *cudaGetErrorString(cudaError_t) { return "(emulated)"; }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
static inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind,
                                          cudaStream_t) {
    memcpy(dst, src, n);
    return cudaSuccess;
}

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// one array for the whole block: blocks run one after the other
#define __shared__ static

extern uint3 blockIdx;
extern dim3 blockDim, gridDim;
// the running thread's index
const uint3 &ent_emu_thread_idx(void);
#define threadIdx (ent_emu_thread_idx())
// the launch's dynamic shared memory (translate.py points `extern __shared__` arrays at it)
extern float *ent_emu_smem;

void __syncthreads(void);
float __shfl_sync(unsigned mask, float v, int src_lane);
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);

// kernel<<<grid, block, shmem, stream>>>(args) as translate.py writes it:
// runs fn once per thread of every block of the grid
void ent_emu_launch(dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
                    const std::function<void()> &fn);

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

#endif
