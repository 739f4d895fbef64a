// cublasLt.h of the CUDA emulator (tests/cuda_emu): the types the backend's
// private header names. The matrix products are cuBLASLt's and are not
// emulated: the emulated backend takes the CPU's.
#ifndef ENT_CUDA_EMU_CUBLASLT_H
#define ENT_CUDA_EMU_CUBLASLT_H
typedef void *cublasLtHandle_t;
typedef int cublasStatus_t;
#define CUBLAS_STATUS_SUCCESS 0
static inline const char *cublasLtGetStatusString(cublasStatus_t) { return "(emulated)"; }
// declared only, never called: the backend's table of cuBLASLt's functions
// (ent_lt_api) names their types
#define ENT_EMU_LT(name) cublasStatus_t cublasLt##name(...);
ENT_EMU_LT(Create)
ENT_EMU_LT(Destroy)
ENT_EMU_LT(Matmul)
ENT_EMU_LT(MatmulAlgoGetHeuristic)
ENT_EMU_LT(MatmulDescCreate)
ENT_EMU_LT(MatmulDescDestroy)
ENT_EMU_LT(MatmulDescSetAttribute)
ENT_EMU_LT(MatmulPreferenceCreate)
ENT_EMU_LT(MatmulPreferenceDestroy)
ENT_EMU_LT(MatmulPreferenceSetAttribute)
ENT_EMU_LT(MatrixLayoutCreate)
ENT_EMU_LT(MatrixLayoutDestroy)
#undef ENT_EMU_LT
size_t cublasLtGetVersion(void);
#endif
