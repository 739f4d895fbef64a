// bf16_ops.cpp: the cuda backend's storage ops in precision bf16, called
// through the table of the CUDA emulator's backend (so its entries' dispatch
// to the __nv_bfloat16 instantiations is checked too), against the cpu
// backend in f32 on the same inputs; and the cast of f32 masters to bf16.
//
// Every input is drawn, rounded to bf16, and handed to both sides: its bf16
// bits to the emulated kernels, their exact f32 values to the cpu backend.
// Outputs in bf16 (activations, their gradients, the params AdamW writes)
// are widened and compared with the cpu's f32 results: error = max |got -
// want| / max |want| within 1e-2, the bound the CUDA issue sets for bf16;
// outputs the plan keeps in f32 (parameter gradients, mean, rstd, losses,
// AdamW's master and moments) within the same bound, as their inputs passed
// through bf16 storage. Gradients accumulate into values that start non-zero.
// ENT_TEST_SEED=... repeats a run. Exit 0: all passed; 1: a mismatch.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <vector>

#include "cuda_impl.cuh" // the translated one: the templates in namespace ent_emu
extern "C" {
#include "ref.h"
ent_status ent_emu_backend_new(const char *name, const ent_backend_opts *opts,
                               ent_backend_t **out);
}

namespace {

typedef __nv_bfloat16 bf16;
const double TOL = 1e-2;
ent_backend_t *cpu, *emu;
int failures, checks;
double largest;         // the largest error of a check that passed
const char *largest_at; // and its check

// one tensor: its bf16 copy (the emulated kernels') and its f32 copy (the cpu's)
struct tensor {
    std::vector<uint16_t> b;
    std::vector<float> f;
    bf16 *B() { return reinterpret_cast<bf16 *>(b.data()); }
    float *F() { return f.data(); }
};

tensor randn(size_t n, double std) {
    tensor t;
    t.f.resize(n ? n : 1);
    fill_normal(t.f.data(), n, std);
    t.b.resize(t.f.size());
    for (size_t i = 0; i < t.f.size(); i++) {
        t.b[i] = ent_k_f32_to_bf16(t.f[i]);
        t.f[i] = ent_k_bf16_to_f32(t.b[i]);
    }
    return t;
}

tensor zeros(size_t n) {
    tensor t;
    t.b.assign(n ? n : 1, 0);
    t.f.assign(n ? n : 1, 0.0f);
    return t;
}

// f32 outputs of both sides
struct pair32 {
    std::vector<float> e, c; // the emulated kernels', the cpu's
};

pair32 zeros32(size_t n) { return pair32{std::vector<float>(n ? n : 1), std::vector<float>(n ? n : 1)}; }

pair32 randn32(size_t n, double std) {
    pair32 p = zeros32(n);
    fill_normal(p.c.data(), n, std);
    p.e = p.c;
    return p;
}

void report(const char *what, const double *got_want_scale, size_t worst, double g, double w) {
    double err = got_want_scale[0] / (got_want_scale[1] > 0 ? got_want_scale[1] : 1.0);
    checks++;
    if (err <= TOL && err > largest) largest = err, largest_at = what;
    if (getenv("ENT_TEST_VERBOSE") != NULL) printf("%-50s %.3g\n", what, err);
    if (!(err <= TOL)) {
        printf("FAIL bf16 %s: error %.3g > %.3g (at %zu: %.6g, want %.6g)\n", what, err, TOL,
               worst, g, w);
        failures++;
    }
}

void compare(const char *what, const tensor &t, size_t n) {
    double d[2] = {0, 0}, g = 0, w = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double gi = ent_k_bf16_to_f32(t.b[i]), wi = t.f[i];
        double e = isnan(gi) != isnan(wi) ? INFINITY : isnan(gi) ? 0 : fabs(gi - wi);
        if (e > d[0]) d[0] = e, worst = i, g = gi, w = wi;
        if (fabs(wi) > d[1]) d[1] = fabs(wi);
    }
    report(what, d, worst, g, w);
}

void compare32(const char *what, const pair32 &p, size_t n) {
    double d[2] = {0, 0}, g = 0, w = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = isnan(p.e[i]) != isnan(p.c[i]) ? INFINITY : fabs((double)p.e[i] - p.c[i]);
        if (e > d[0]) d[0] = e, worst = i, g = p.e[i], w = p.c[i];
        if (fabs(p.c[i]) > d[1]) d[1] = fabs(p.c[i]);
    }
    report(what, d, worst, g, w);
}

#define OK(call)                                                                                   \
    do {                                                                                           \
        ent_status st__ = (call);                                                                  \
        if (st__ != ENT_OK) {                                                                      \
            printf("FAIL bf16: %s: %s\n", #call, ent_last_error());                                \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

using namespace ent_emu;

void test_encoder() {
    int B = 3, T = 37, C = 96, Vp = 64;
    std::vector<int32_t> tok((size_t)B * T);
    for (auto &x : tok) x = (int32_t)test_rand_int(0, Vp - 1);
    size_t n = (size_t)B * T * C;
    tensor wte = randn((size_t)Vp * C, 1.0), wpe = randn((size_t)T * C, 1.0), out = zeros(n);
    OK(emu->iface->encoder_forward(emu, out.B(), tok.data(), wte.B(), wpe.B(), B, T, C));
    OK(cpu->iface->encoder_forward(cpu, out.F(), tok.data(), wte.F(), wpe.F(), B, T, C));
    compare("encoder_forward", out, n);
    tensor dout = randn(n, 1.0);
    pair32 dwte = randn32((size_t)Vp * C, 1.0), dwpe = randn32((size_t)T * C, 1.0);
    OK(emu->iface->encoder_backward(emu, dwte.e.data(), dwpe.e.data(), dout.B(), tok.data(), B,
                                       T, C));
    OK(cpu->iface->encoder_backward(cpu, dwte.c.data(), dwpe.c.data(), dout.F(), tok.data(), B, T,
                                    C));
    compare32("encoder_backward dwte (f32, accumulated)", dwte, (size_t)Vp * C);
    compare32("encoder_backward dwpe (f32, accumulated)", dwpe, (size_t)T * C);
}

// layernorm (rms 0) or RMSNorm (rms 1), forward and backward, and the
// residual fused with it
void test_norm(int N, int C, int rms) {
    size_t n = (size_t)N * C;
    float eps = 1e-5f;
    tensor inp = randn(n, 2.0), w = randn(C, 1.0), bias = randn(C, 1.0), out = zeros(n);
    pair32 mean = zeros32(N), rstd = zeros32(N);
    if (rms) {
        OK(emu->iface->rmsnorm_forward(emu, out.B(), rstd.e.data(), inp.B(), w.B(), eps, N, C));
        OK(cpu->iface->rmsnorm_forward(cpu, out.F(), rstd.c.data(), inp.F(), w.F(), eps, N, C));
    } else {
        OK(emu->iface->layernorm_forward(emu, out.B(), mean.e.data(), rstd.e.data(), inp.B(),
                                            w.B(), bias.B(), N, C));
        OK(cpu->iface->layernorm_forward(cpu, out.F(), mean.c.data(), rstd.c.data(), inp.F(), w.F(),
                                         bias.F(), N, C));
        compare32("layernorm_forward mean (f32)", mean, N);
    }
    compare(rms ? "rmsnorm_forward" : "layernorm_forward", out, n);
    compare32(rms ? "rmsnorm_forward rstd (f32)" : "layernorm_forward rstd (f32)", rstd, N);
    // backward from the cpu's statistics on both sides (the forward's were compared)
    mean.e = mean.c;
    rstd.e = rstd.c;
    tensor dout = randn(n, 1.0), dinp = randn(n, 1.0);
    pair32 dw = randn32(C, 1.0), db = randn32(C, 1.0);
    if (rms) {
        OK(emu->iface->rmsnorm_backward(emu, dinp.B(), dw.e.data(), dout.B(), inp.B(), w.B(),
                                           rstd.e.data(), N, C));
        OK(cpu->iface->rmsnorm_backward(cpu, dinp.F(), dw.c.data(), dout.F(), inp.F(), w.F(),
                                        rstd.c.data(), N, C));
    } else {
        OK(emu->iface->layernorm_backward(emu, dinp.B(), dw.e.data(), db.e.data(), dout.B(),
                                             inp.B(), w.B(), mean.e.data(), rstd.e.data(), N, C));
        OK(cpu->iface->layernorm_backward(cpu, dinp.F(), dw.c.data(), db.c.data(), dout.F(),
                                          inp.F(), w.F(), mean.c.data(), rstd.c.data(), N, C));
        compare32("layernorm_backward dbias (f32, accumulated)", db, C);
    }
    compare(rms ? "rmsnorm_backward dinp (accumulated)" : "layernorm_backward dinp (accumulated)",
            dinp, n);
    compare32(rms ? "rmsnorm_backward dweight (f32, accumulated)"
                  : "layernorm_backward dweight (f32, accumulated)",
              dw, C);
    // fused with the residual before it: res = a + b stored in bf16, then its norm
    tensor a = randn(n, 2.0), b = randn(n, 1.0), res = zeros(n);
    if (rms) {
        OK(emu->iface->residual_rmsnorm_forward(emu, res.B(), out.B(), rstd.e.data(), a.B(),
                                                   b.B(), w.B(), eps, N, C));
        OK(cpu->iface->residual_rmsnorm_forward(cpu, res.F(), out.F(), rstd.c.data(), a.F(), b.F(),
                                                w.F(), eps, N, C));
    } else {
        OK(emu->iface->residual_layernorm_forward(emu, res.B(), out.B(), mean.e.data(),
                                                     rstd.e.data(), a.B(), b.B(), w.B(), bias.B(),
                                                     N, C));
        OK(cpu->iface->residual_layernorm_forward(cpu, res.F(), out.F(), mean.c.data(),
                                                  rstd.c.data(), a.F(), b.F(), w.F(), bias.F(), N,
                                                  C));
    }
    compare("residual + norm: res", res, n);
    compare("residual + norm: out", out, n);
    compare32("residual + norm: rstd (f32)", rstd, N);
}

void test_elementwise() {
    size_t n = 10007;
    tensor inp = randn(n, 3.0), out = zeros(n), dout = randn(n, 1.0), dinp = randn(n, 1.0);
    OK(emu->iface->gelu_forward(emu, out.B(), inp.B(), n));
    OK(cpu->iface->gelu_forward(cpu, out.F(), inp.F(), n));
    compare("gelu_forward", out, n);
    OK(emu->iface->gelu_backward(emu, dinp.B(), inp.B(), dout.B(), n));
    OK(cpu->iface->gelu_backward(cpu, dinp.F(), inp.F(), dout.F(), n));
    compare("gelu_backward (accumulated)", dinp, n);
    tensor b = randn(n, 1.0), da = randn(n, 1.0), db = randn(n, 1.0);
    OK(emu->iface->residual_forward(emu, out.B(), inp.B(), b.B(), n));
    OK(cpu->iface->residual_forward(cpu, out.F(), inp.F(), b.F(), n));
    compare("residual_forward", out, n);
    OK(emu->iface->residual_backward(emu, da.B(), db.B(), dout.B(), n));
    OK(cpu->iface->residual_backward(cpu, da.F(), db.F(), dout.F(), n));
    compare("residual_backward da (accumulated)", da, n);
    compare("residual_backward db (accumulated)", db, n);
    tensor up = randn(n, 1.0), dgate = randn(n, 1.0), dup = randn(n, 1.0);
    OK(emu->iface->swiglu_forward(emu, out.B(), inp.B(), up.B(), n));
    OK(cpu->iface->swiglu_forward(cpu, out.F(), inp.F(), up.F(), n));
    compare("swiglu_forward", out, n);
    OK(emu->iface->swiglu_backward(emu, dgate.B(), dup.B(), dout.B(), inp.B(), up.B(), n));
    OK(cpu->iface->swiglu_backward(cpu, dgate.F(), dup.F(), dout.F(), inp.F(), up.F(), n));
    compare("swiglu_backward dgate (accumulated)", dgate, n);
    compare("swiglu_backward dup (accumulated)", dup, n);
}

void test_rope() {
    int B = 2, T = 19, H = 3, hd = 32;
    size_t n = (size_t)B * T * H * hd, half = (size_t)T * (hd / 2);
    ent_rope r = {};
    r.theta = 10000.0;
    std::vector<float> cs(2 * half);
    ent_rope_table(&r, hd, T, cs.data(), cs.data() + half);
    tensor x = randn(n, 1.0);
    OK(emu->iface->rope_forward(emu, x.B(), cs.data(), cs.data() + half, B, T, H, hd));
    OK(cpu->iface->rope_forward(cpu, x.F(), cs.data(), cs.data() + half, B, T, H, hd));
    compare("rope_forward (in place)", x, n);
    tensor dx = randn(n, 1.0);
    OK(emu->iface->rope_backward(emu, dx.B(), cs.data(), cs.data() + half, B, T, H, hd));
    OK(cpu->iface->rope_backward(cpu, dx.F(), cs.data(), cs.data() + half, B, T, H, hd));
    compare("rope_backward (in place)", dx, n);
}

void test_softmax_xent() {
    int N = 50, V = 1000, Vp = 1024;
    size_t n = (size_t)N * Vp;
    std::vector<int32_t> targets(N);
    for (auto &t : targets) t = (int32_t)test_rand_int(0, V - 1);
    tensor logits = randn(n, 3.0), probs = zeros(n);
    pair32 losses = zeros32(N);
    OK(emu->iface->softmax_xent_forward(emu, losses.e.data(), probs.B(), logits.B(),
                                           targets.data(), N, V, Vp));
    OK(cpu->iface->softmax_xent_forward(cpu, losses.c.data(), probs.F(), logits.F(), targets.data(),
                                        N, V, Vp));
    compare("softmax_xent_forward probs", probs, n);
    compare32("softmax_xent_forward losses (f32)", losses, N);
    tensor dlogits = randn(n, 1.0); // overwritten
    OK(emu->iface->softmax_xent_backward(emu, dlogits.B(), probs.B(), targets.data(), 0.02f, N,
                                            V, Vp));
    OK(cpu->iface->softmax_xent_backward(cpu, dlogits.F(), probs.F(), targets.data(), 0.02f, N, V,
                                         Vp));
    compare("softmax_xent_backward", dlogits, n);
}

// GPT-2's fused attention (kv 0) or grouped-query attention: the forward's
// out, and the backward's gradients accumulated into non-zero values, each
// side with its own state (the cpu keeps probabilities, cuda the log-sum-exp)
void test_attention(int B, int T, int NH, int KV, int hd, int group, int fused) {
    int C = NH * hd;
    size_t nq = (size_t)B * T * (fused ? 3 * C : C), nkv = (size_t)B * T * KV * hd;
    size_t no = (size_t)B * T * C;
    tensor q = randn(nq, 1.0), k = randn(fused ? 1 : nkv, 1.0), v = randn(fused ? 1 : nkv, 1.0);
    tensor out = zeros(no), dout = randn(no, 1.0);
    tensor dq = randn(nq, 1.0), dk = randn(fused ? 1 : nkv, 1.0), dv = randn(fused ? 1 : nkv, 1.0);
    std::vector<float> se(ent_cuda_attention_state_bytes(emu, B, T, NH) / sizeof(float) + 1),
        sc(cpu->iface->attention_state_bytes(cpu, B, T, NH) / sizeof(float) + 1);
    std::vector<float> xe(se.size()), xc(sc.size()); // the backward's scratch
    ent_gqa_shape s = {B, T, NH, KV, hd, group, 0};
    char what[96];
    if (fused) {
        OK(emu->iface->attention_forward(emu, out.B(), se.data(), q.B(), B, T, C, NH));
        OK(cpu->iface->attention_forward(cpu, out.F(), sc.data(), q.F(), B, T, C, NH));
        OK(emu->iface->attention_backward(emu, dq.B(), xe.data(), dout.B(), q.B(), se.data(), B,
                                             T, C, NH));
        OK(cpu->iface->attention_backward(cpu, dq.F(), xc.data(), dout.F(), q.F(), sc.data(), B, T,
                                          C, NH));
    } else {
        OK(emu->iface->gqa_forward(emu, out.B(), se.data(), q.B(), k.B(), v.B(), s));
        OK(cpu->iface->gqa_forward(cpu, out.F(), sc.data(), q.F(), k.F(), v.F(), s));
        OK(emu->iface->gqa_backward(emu, dq.B(), dk.B(), dv.B(), xe.data(), dout.B(), q.B(),
                                       k.B(), v.B(), se.data(), s));
        OK(cpu->iface->gqa_backward(cpu, dq.F(), dk.F(), dv.F(), xc.data(), dout.F(), q.F(), k.F(),
                                    v.F(), sc.data(), s));
    }
    const char *op = fused ? "attention" : "gqa";
    snprintf(what, sizeof what, "%s_forward (B %d T %d heads %d/%d hd %d)", op, B, T, NH,
             fused ? NH : KV, hd);
    compare(what, out, no);
    snprintf(what, sizeof what, "%s_backward %s (accumulated)", op, fused ? "dqkv" : "dq");
    compare(what, dq, nq);
    if (!fused) {
        compare("gqa_backward dk (accumulated)", dk, nkv);
        compare("gqa_backward dv (accumulated)", dv, nkv);
    }
}

// bf16 params beside their f32 master: the master as the cpu's f32 params,
// the params its rounding, bit for bit
void test_adamw() {
    size_t n = 4099;
    tensor p = randn(n, 1.0);
    pair32 master = zeros32(n), g = randn32(n, 0.1), m = randn32(n, 0.01), v = zeros32(n);
    for (size_t i = 0; i < n; i++) {
        master.e[i] = master.c[i] = p.f[i];
        v.e[i] = v.c[i] = 1e-4f * (float)(i % 7);
    }
    for (int t = 1; t <= 3; t++) {
        OK(emu->iface->adamw_update(emu, p.B(), master.e.data(), g.e.data(), m.e.data(),
                                       v.e.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t));
        OK(cpu->iface->adamw_update(cpu, master.c.data(), NULL, g.c.data(), m.c.data(), v.c.data(),
                                    n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t));
    }
    compare32("adamw_update master (f32)", master, n);
    compare32("adamw_update m (f32)", m, n);
    compare32("adamw_update v (f32)", v, n);
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += p.b[i] != ent_k_f32_to_bf16(master.e[i]);
    checks++;
    if (wrong != 0) {
        printf("FAIL bf16 adamw_update: %zu params are not their master rounded to bf16\n", wrong);
        failures++;
    }
}

// the compute copy of parameters from their masters: each value rounded to
// nearest even, bit for bit, infinities and NaN kept
void test_cast() {
    size_t n = 5003;
    std::vector<float> master(n);
    fill_normal(master.data(), n, 3.0);
    master[0] = INFINITY;
    master[1] = -INFINITY;
    master[2] = NAN;
    master[3] = 3.4e38f; // rounds past the largest bf16: infinity
    tensor p = zeros(n);
    OK(emu->iface->cast(emu, p.B(), master.data(), n));
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t want = ent_k_f32_to_bf16(master[i]);
        wrong += i == 2 ? !isnan(ent_k_bf16_to_f32(p.b[i])) : p.b[i] != want;
    }
    checks++;
    if (wrong != 0) {
        printf("FAIL bf16 cast: %zu values are not their f32 rounded to nearest even\n", wrong);
        failures++;
    }
}

} // namespace

int main() {
    test_seed();
    cpu = ent_backend_cpu_new(0);
    ent_backend_opts bf16_opts = {};
    bf16_opts.precision = ENT_PRECISION_BF16;
    if (cpu == NULL || ent_emu_backend_new("cuda-emulated", &bf16_opts, &emu) != ENT_OK) {
        printf("FAIL: cannot create the backends: %s\n", ent_last_error());
        return 1;
    }
    test_encoder();
    test_norm(7, 768, 0);
    test_norm(5, 100, 0);
    test_norm(7, 768, 1);
    test_norm(3, 17, 1);
    test_elementwise();
    test_rope();
    test_softmax_xent();
    test_attention(3, 37, 6, 6, 16, 1, 1);  // GPT-2's fused QKV
    test_attention(2, 70, 2, 2, 64, 1, 1);  // 3 key tiles
    test_attention(2, 37, 8, 2, 16, 4, 0);  // grouped-query
    test_attention(2, 33, 4, 4, 128, 1, 0); // head size 128
    test_adamw();
    test_cast();
    printf("cuda-emulated, bf16 storage: %d checks, %d failed; largest error that passed %.3g "
           "(%s)\n", checks, failures, largest, largest_at != NULL ? largest_at : "none");
    ent_backend_free(&emu);
    ent_backend_free(&cpu);
    return failures ? 1 : 0;
}
