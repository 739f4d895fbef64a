// cuda_backend.h: private to kernels/. What the rest of kernels/ (C) sees of
// the cuda backend: its constructor for ent_backend_new and the device count
// behind "auto". Everything else of kernels/cuda stays inside its .cu files.
#ifndef ENT_CUDA_BACKEND_H
#define ENT_CUDA_BACKEND_H

#include "../ent_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

// The cuda backend on GPU opts->device modulo the visible count (opts may be
// NULL: GPU 0). ENT_ERR_USAGE, with what the CUDA runtime said, when no GPU
// is visible. The caller owns *out.
ent_status ent_cuda_backend_new(const ent_backend_opts *opts, ent_backend_t **out);
// GPUs this process sees; 0 when none, with the reason in why (len bytes).
int ent_cuda_device_count(char *why, size_t len);
// Opens cuBLASLt (once; the backend does it when it starts, as nothing links
// it) and returns its version, or 0 with the reason in ent_last_error(). No
// GPU is needed.
size_t ent_cuda_lt_version(void);

#ifdef __cplusplus
}
#endif

#endif // ENT_CUDA_BACKEND_H
