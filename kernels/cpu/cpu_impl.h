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
