// cuda_bf16.h of the CUDA emulator (tests/cuda_emu): the storage type only.
#ifndef ENT_CUDA_EMU_BF16_H
#define ENT_CUDA_EMU_BF16_H
struct __nv_bfloat16 {
    unsigned short bits;
};
#endif
