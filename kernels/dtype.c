// dtype.c: sizes and names of the element types every layer shares, and the
// size of a tensor in an arena.
//
// Each switch lists every type and has no default, so a type added to the enum
// without a size or a name is a compiler warning (-Wswitch, an error here),
// never a wrong size picked silently.
#include "ent_kernels.h"
#include "kernel_math.h"

size_t ent_dtype_size(ent_dtype dtype) {
    switch (dtype) {
    case ENT_F64: case ENT_I64: case ENT_U64: return 8;
    case ENT_F32: case ENT_I32: return 4;
    case ENT_BF16: case ENT_F16: return 2;
    case ENT_I8: case ENT_U8: return 1;
    case ENT_DTYPE_COUNT: break;
    }
    return 0;
}

const char *ent_dtype_name(ent_dtype dtype) {
    switch (dtype) {
    case ENT_F32: return "f32";
    case ENT_F64: return "f64";
    case ENT_I32: return "i32";
    case ENT_I64: return "i64";
    case ENT_U64: return "u64";
    case ENT_BF16: return "bf16";
    case ENT_F16: return "f16";
    case ENT_I8: return "i8";
    case ENT_U8: return "u8";
    case ENT_DTYPE_COUNT: break;
    }
    return "invalid";
}

int ent_dtype_is_float(ent_dtype dtype) {
    switch (dtype) {
    case ENT_F32: case ENT_F64: case ENT_BF16: case ENT_F16: return 1;
    case ENT_I32: case ENT_I64: case ENT_U64: case ENT_I8: case ENT_U8:
    case ENT_DTYPE_COUNT: break;
    }
    return 0;
}

size_t ent_arena_bytes(ent_dtype dtype, size_t numel) {
    size_t bytes = numel * ent_dtype_size(dtype);
    return (bytes + ENT_ARENA_ALIGN - 1) / ENT_ARENA_ALIGN * ENT_ARENA_ALIGN;
}

ent_status ent_dtype_to_f32(ent_dtype dtype, const void *src, float *dst, size_t n) {
    const uint16_t *h = src;
    switch (dtype) {
    case ENT_F32: memmove(dst, src, n * sizeof(float)); return ENT_OK;
    case ENT_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = ent_k_bf16_to_f32(h[i]);
        return ENT_OK;
    case ENT_F16:
        for (size_t i = 0; i < n; i++) dst[i] = ent_k_f16_to_f32(h[i]);
        return ENT_OK;
    case ENT_F64: case ENT_I32: case ENT_I64: case ENT_U64: case ENT_I8: case ENT_U8:
    case ENT_DTYPE_COUNT: break;
    }
    return ent_fail(ENT_ERR_USAGE, "cannot widen %s values to f32", ent_dtype_name(dtype));
}
