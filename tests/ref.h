// ref.h: plain double-precision reference implementations of every kernel's
// forward pass, written for clarity rather than speed, and the helpers the
// tests share (random inputs, error measures). Test code only.
#ifndef ENT_TEST_REF_H
#define ENT_TEST_REF_H

#include <stddef.h>
#include <stdint.h>

// ---- random inputs: seeded from the clock unless ENT_TEST_SEED is set ----
uint64_t test_seed(void);              // prints the seed once, for reproduction
void test_rng_reset(uint64_t seed);
double test_uniform(void);             // [0, 1)
double test_normal(void);
void fill_normal(float *x, size_t n, double std);
void fill_uniform(float *x, size_t n, double lo, double hi);
void to_double(const float *x, double *y, size_t n);
// Restarts the random stream from the run's seed mixed with a per-test salt.
void test_reseed(uint64_t salt);
// A uniform integer in [lo, hi].
int64_t test_rand_int(int64_t lo, int64_t hi);

// ---- temporary directories ----
// Creates /tmp/ent_test_<tag>_XXXXXX into buf (n bytes); returns 0 on success.
int test_tmpdir_create(char *buf, size_t n, const char *tag);
// Removes a directory tree; returns 0 on success.
int test_tree_remove(const char *path);

// max |a - b| / max |b|: the error relative to the reference's scale
double rel_error(const float *a, const double *b, size_t n);

// ---- reference forward passes (inputs in double, outputs in double) ----
void ref_encoder(double *out, const int32_t *tokens, const double *wte, const double *wpe,
                 int B, int T, int C);
void ref_layernorm(double *out, const double *inp, const double *w, const double *b, int N,
                   int C);
void ref_matmul(double *out, const double *inp, const double *w, const double *bias, int N,
                int C, int OC);
void ref_attention(double *out, const double *qkv, int B, int T, int C, int NH);
void ref_gelu(double *out, const double *inp, size_t n);
void ref_softmax_xent(double *losses, double *probs, const double *logits,
                      const int32_t *targets, int N, int V, int Vp);

// ---- the Llama family ----
// out = inp / sqrt(mean(inp^2) + eps) * w, per row
void ref_rmsnorm(double *out, const double *inp, const double *w, double eps, int N, int C);
// Hugging Face's inverse frequencies in double: 1 / theta^(2i/hd), then, when
// llama3 is set, Llama 3's bands (factor, low and high frequency factors,
// original context)
void ref_rope_inv_freq(double *inv, int hd, double theta, int llama3, double factor, double low,
                       double high, double original);
// x (B,T,H*hd) rotated: pairs (i, i + hd/2) of position t by t * inv[i]
void ref_rope(double *out, const double *x, const double *inv, int B, int T, int H, int hd);
// silu(gate) * up
void ref_swiglu(double *out, const double *gate, const double *up, size_t n);
// causal grouped-query attention: query head h of q (B,T,NH*hd) with KV head
// (phase + h) / group of k, v (B,T,KV*hd)
void ref_gqa(double *out, const double *q, const double *k, const double *v, int B, int T,
             int NH, int KV, int hd, int group, int phase);

// Central finite differences of f(x) . w over every x_i, with step h:
// grad_i = (f(x + h e_i) - f(x - h e_i)) . w / 2h. f writes nout values.
typedef void (*ref_fn)(const double *x, double *out, void *ctx);
void finite_diff(ref_fn f, void *ctx, double *x, size_t nx, const double *w, size_t nout,
                 double h, double *grad);

#endif
