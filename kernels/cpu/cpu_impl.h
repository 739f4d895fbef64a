// cpu_impl.h: private to kernels/cpu. The CPU ops behind struct ent_backend_i;
// each has the signature of its table entry (see ent_kernels.h for shapes).
#ifndef ENT_CPU_IMPL_H
#define ENT_CPU_IMPL_H

#include "../ent_kernels.h"
#include "../kernel_math.h"

// Column reductions (bias and layernorm weight gradients) are split into
// blocks of this many columns: each thread owns whole columns and walks the
// rows in order, so results are bit-identical whatever the thread count.
#define ENT_CPU_COL_BLOCK 64

ent_status ent_cpu_encoder_forward(ent_backend_t *be, float *out, const int32_t *tokens,
                                   const float *wte, const float *wpe, int B, int T, int C);
ent_status ent_cpu_encoder_backward(ent_backend_t *be, float *dwte, float *dwpe, const float *dout,
                                    const int32_t *tokens, int B, int T, int C);
ent_status ent_cpu_layernorm_forward(ent_backend_t *be, float *out, float *mean, float *rstd,
                                     const float *inp, const float *weight, const float *bias,
                                     int N, int C);
ent_status ent_cpu_layernorm_backward(ent_backend_t *be, float *dinp, float *dweight, float *dbias,
                                      const float *dout, const float *inp, const float *weight,
                                      const float *mean, const float *rstd, int N, int C);
ent_status ent_cpu_matmul_forward(ent_backend_t *be, float *out, const float *inp,
                                  const float *weight, const float *bias, int N, int C, int OC);
ent_status ent_cpu_matmul_backward(ent_backend_t *be, float *dinp, float *dweight, float *dbias,
                                   const float *dout, const float *inp, const float *weight,
                                   int N, int C, int OC);
ent_status ent_cpu_attention_forward(ent_backend_t *be, float *out, float *att, const float *qkv,
                                     int B, int T, int C, int NH);
ent_status ent_cpu_attention_backward(ent_backend_t *be, float *dqkv, float *scratch,
                                      const float *dout, const float *qkv, const float *att,
                                      int B, int T, int C, int NH);
ent_status ent_cpu_gelu_forward(ent_backend_t *be, float *out, const float *inp, size_t n);
ent_status ent_cpu_gelu_backward(ent_backend_t *be, float *dinp, const float *inp,
                                 const float *dout, size_t n);
ent_status ent_cpu_residual_forward(ent_backend_t *be, float *out, const float *a, const float *b,
                                    size_t n);
ent_status ent_cpu_residual_backward(ent_backend_t *be, float *da, float *db, const float *dout,
                                     size_t n);
ent_status ent_cpu_residual_layernorm_forward(ent_backend_t *be, float *res, float *out,
                                              float *mean, float *rstd, const float *a,
                                              const float *b, const float *weight,
                                              const float *bias, int N, int C);
ent_status ent_cpu_residual_rmsnorm_forward(ent_backend_t *be, float *res, float *out,
                                            float *rstd, const float *a, const float *b,
                                            const float *weight, float eps, int N, int C);
ent_status ent_cpu_softmax_xent_forward(ent_backend_t *be, float *losses, float *probs,
                                        const float *logits, const int32_t *targets,
                                        int N, int V, int Vp);
ent_status ent_cpu_softmax_xent_backward(ent_backend_t *be, float *dlogits, const float *probs,
                                         const int32_t *targets, float dloss, int N, int V, int Vp);
ent_status ent_cpu_rmsnorm_forward(ent_backend_t *be, float *out, float *rstd, const float *inp,
                                   const float *weight, float eps, int N, int C);
ent_status ent_cpu_rmsnorm_backward(ent_backend_t *be, float *dinp, float *dweight,
                                    const float *dout, const float *inp, const float *weight,
                                    const float *rstd, int N, int C);
ent_status ent_cpu_rope_forward(ent_backend_t *be, float *x, const float *cos_t,
                                const float *sin_t, int B, int T, int H, int hd);
ent_status ent_cpu_rope_backward(ent_backend_t *be, float *dx, const float *cos_t,
                                 const float *sin_t, int B, int T, int H, int hd);
ent_status ent_cpu_swiglu_forward(ent_backend_t *be, float *out, const float *gate,
                                  const float *up, size_t n);
ent_status ent_cpu_swiglu_backward(ent_backend_t *be, float *dgate, float *dup, const float *dout,
                                   const float *gate, const float *up, size_t n);
ent_status ent_cpu_gqa_forward(ent_backend_t *be, float *out, float *att, const float *q,
                               const float *k, const float *v, ent_gqa_shape s);
ent_status ent_cpu_gqa_backward(ent_backend_t *be, float *dq, float *dk, float *dv,
                                float *scratch, const float *dout, const float *q, const float *k,
                                const float *v, const float *att, ent_gqa_shape s);
ent_status ent_cpu_adamw_update(ent_backend_t *be, float *params, float *master,
                                const float *grads, float *m, float *v, size_t n, float lr,
                                float beta1, float beta2, float eps, float weight_decay,
                                float grad_scale, int t);
ent_status ent_cpu_sum_squares(ent_backend_t *be, const float *x, size_t n, double *out);

ent_status ent_cpu_sub(ent_backend_t *be, float *out, const float *a, const float *b, size_t n);
ent_status ent_cpu_axpy(ent_backend_t *be, float *y, float alpha, const float *x, size_t n);
ent_status ent_cpu_quantize_i8(ent_backend_t *be, int8_t *q, float *scales, const float *x,
                               size_t n, size_t block);
ent_status ent_cpu_dequantize_i8(ent_backend_t *be, float *out, const int8_t *q,
                                 const float *scales, size_t n, size_t block);

// Every op of the table as X(op, (parameters as the table declares them),
// (arguments)): the CPU backend's table and the guarded backend's wrap
// ent_cpu_<op> with them, so that the `void *` of an activation or a
// parameter (f32 on the CPU backends, which refuse bf16) becomes the float *
// of the kernels here in one place.
#define ENT_CPU_OPS(X)                                                                            \
    X(encoder_forward, (ent_backend_t *be, void *out, const int32_t *tokens, const void *wte,     \
      const void *wpe, int B, int T, int C), (be, out, tokens, wte, wpe, B, T, C))                \
    X(encoder_backward, (ent_backend_t *be, float *dwte, float *dwpe, const void *dout,           \
      const int32_t *tokens, int B, int T, int C), (be, dwte, dwpe, dout, tokens, B, T, C))       \
    X(layernorm_forward, (ent_backend_t *be, void *out, float *mean, float *rstd,                 \
      const void *inp, const void *weight, const void *bias, int N, int C), (be, out, mean,       \
      rstd, inp, weight, bias, N, C))                                                             \
    X(layernorm_backward, (ent_backend_t *be, void *dinp, float *dweight, float *dbias,           \
      const void *dout, const void *inp, const void *weight, const float *mean,                   \
      const float *rstd, int N, int C), (be, dinp, dweight, dbias, dout, inp, weight, mean,       \
      rstd, N, C))                                                                                \
    X(matmul_forward, (ent_backend_t *be, void *out, const void *inp, const void *weight,         \
      const void *bias, int N, int C, int OC), (be, out, inp, weight, bias, N, C, OC))            \
    X(matmul_backward, (ent_backend_t *be, void *dinp, float *dweight, float *dbias,              \
      const void *dout, const void *inp, const void *weight, int N, int C, int OC), (be,          \
      dinp, dweight, dbias, dout, inp, weight, N, C, OC))                                         \
    X(attention_forward, (ent_backend_t *be, void *out, float *att, const void *qkv, int B,       \
      int T, int C, int NH), (be, out, att, qkv, B, T, C, NH))                                    \
    X(attention_backward, (ent_backend_t *be, void *dqkv, float *scratch, const void *dout,       \
      const void *qkv, const float *att, int B, int T, int C, int NH), (be, dqkv, scratch,        \
      dout, qkv, att, B, T, C, NH))                                                               \
    X(gelu_forward, (ent_backend_t *be, void *out, const void *inp, size_t n), (be, out, inp,     \
      n))                                                                                         \
    X(gelu_backward, (ent_backend_t *be, void *dinp, const void *inp, const void *dout,           \
      size_t n), (be, dinp, inp, dout, n))                                                        \
    X(residual_forward, (ent_backend_t *be, void *out, const void *a, const void *b,              \
      size_t n), (be, out, a, b, n))                                                              \
    X(residual_backward, (ent_backend_t *be, void *da, void *db, const void *dout, size_t n),     \
      (be, da, db, dout, n))                                                                      \
    X(residual_layernorm_forward, (ent_backend_t *be, void *res, void *out, float *mean,          \
      float *rstd, const void *a, const void *b, const void *weight, const void *bias, int N,     \
      int C), (be, res, out, mean, rstd, a, b, weight, bias, N, C))                               \
    X(residual_rmsnorm_forward, (ent_backend_t *be, void *res, void *out, float *rstd,            \
      const void *a, const void *b, const void *weight, float eps, int N, int C), (be, res,       \
      out, rstd, a, b, weight, eps, N, C))                                                        \
    X(softmax_xent_forward, (ent_backend_t *be, float *losses, void *probs,                       \
      const void *logits, const int32_t *targets, int N, int V, int Vp), (be, losses, probs,      \
      logits, targets, N, V, Vp))                                                                 \
    X(softmax_xent_backward, (ent_backend_t *be, void *dlogits, const void *probs,                \
      const int32_t *targets, float dloss, int N, int V, int Vp), (be, dlogits, probs,            \
      targets, dloss, N, V, Vp))                                                                  \
    X(rmsnorm_forward, (ent_backend_t *be, void *out, float *rstd, const void *inp,               \
      const void *weight, float eps, int N, int C), (be, out, rstd, inp, weight, eps, N, C))      \
    X(rmsnorm_backward, (ent_backend_t *be, void *dinp, float *dweight, const void *dout,         \
      const void *inp, const void *weight, const float *rstd, int N, int C), (be, dinp,           \
      dweight, dout, inp, weight, rstd, N, C))                                                    \
    X(rope_forward, (ent_backend_t *be, void *x, const float *cos_t, const float *sin_t,          \
      int B, int T, int H, int hd), (be, x, cos_t, sin_t, B, T, H, hd))                           \
    X(rope_backward, (ent_backend_t *be, void *dx, const float *cos_t, const float *sin_t,        \
      int B, int T, int H, int hd), (be, dx, cos_t, sin_t, B, T, H, hd))                          \
    X(swiglu_forward, (ent_backend_t *be, void *out, const void *gate, const void *up,            \
      size_t n), (be, out, gate, up, n))                                                          \
    X(swiglu_backward, (ent_backend_t *be, void *dgate, void *dup, const void *dout,              \
      const void *gate, const void *up, size_t n), (be, dgate, dup, dout, gate, up, n))           \
    X(gqa_forward, (ent_backend_t *be, void *out, float *att, const void *q, const void *k,       \
      const void *v, ent_gqa_shape s), (be, out, att, q, k, v, s))                                \
    X(gqa_backward, (ent_backend_t *be, void *dq, void *dk, void *dv, float *scratch,             \
      const void *dout, const void *q, const void *k, const void *v, const float *att,            \
      ent_gqa_shape s), (be, dq, dk, dv, scratch, dout, q, k, v, att, s))                         \
    X(adamw_update, (ent_backend_t *be, void *params, float *master, const float *grads,          \
      float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps,                \
      float weight_decay, float grad_scale, int t), (be, params, master, grads, m, v, n, lr,      \
      beta1, beta2, eps, weight_decay, grad_scale, t))                                            \
    X(sum_squares, (ent_backend_t *be, const float *x, size_t n, double *out), (be, x, n,         \
      out))                                                                                       \
    X(sub, (ent_backend_t *be, float *out, const float *a, const float *b, size_t n), (be,        \
      out, a, b, n))                                                                              \
    X(axpy, (ent_backend_t *be, float *y, float alpha, const float *x, size_t n), (be, y,         \
      alpha, x, n))                                                                               \
    X(quantize_i8, (ent_backend_t *be, int8_t *q, float *scales, const float *x, size_t n,        \
      size_t block), (be, q, scales, x, n, block))                                                \
    X(dequantize_i8, (ent_backend_t *be, float *out, const int8_t *q, const float *scales,        \
      size_t n, size_t block), (be, out, q, scales, n, block))

// memory and copies of the CPU backend (the guarded backend wraps them too)
ent_status ent_cpu_zero(ent_backend_t *be, void *p, size_t bytes);
ent_status ent_cpu_copy(ent_backend_t *be, void *dst, const void *src, size_t bytes);
size_t ent_cpu_available_memory(ent_backend_t *be);
size_t ent_cpu_attention_state_bytes(ent_backend_t *be, int B, int T, int NH);

// The CPU backend (backend_cpu.c) and the guarded one (guarded.c), for
// ent_backend_new("cpu") and ("cpu-guarded").
ent_status ent_cpu_new(const ent_backend_opts *opts, ent_backend_t **out);
ent_status ent_cpu_guarded_new(const ent_backend_opts *opts, ent_backend_t **out);

// Adds the column sums of x (N,C) into acc (C), deterministically.
void ent_cpu_add_column_sums(float *acc, const float *x, int N, int C);

#endif // ENT_CPU_IMPL_H
