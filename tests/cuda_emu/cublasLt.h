// cublasLt.h of the CUDA emulator (tests/cuda_emu): the types the backend's
// private header names. The matrix products are cuBLASLt's and are not
// emulated: the emulated backend takes the CPU's.
#ifndef ENT_CUDA_EMU_CUBLASLT_H
#define ENT_CUDA_EMU_CUBLASLT_H
typedef void *cublasLtHandle_t;
typedef int cublasStatus_t;
#define CUBLAS_STATUS_SUCCESS 0
static inline const char *cublasLtGetStatusString(cublasStatus_t) { return "(emulated)"; }
#endif
