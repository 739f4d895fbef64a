// ent_kernels.h: the lowest layer of Entente.
//
// Two things live here because every other folder needs them and kernels/ may
// include nothing above it:
//   1. the status type, error messages and CHECK macros used by every layer;
//   2. the backend interface: one table of function pointers with the math of
//      one device (forward and backward of every GPT op, AdamW, norms), filled
//      by kernels/cpu (and later kernels/cuda).
//
// Conventions of every op:
//   - tensors are row-major; shapes are given in comments as (rows, cols);
//   - element types: an argument declared `void *` is an activation (or its
//     gradient) in the backend's be->act_dtype, or a parameter in compute in
//     be->param_dtype (f32 on the CPU; bf16 or f32 on a GPU,
//     system.precision); an argument declared `float *` is f32 on every
//     backend: parameters' gradients, norms' statistics, losses, the
//     attention state, the rotation tables, masters and moments;
//   - N is the number of token positions in a micro-batch (B*T);
//   - a matmul weight is (OC, C): out = inp @ weight^T + bias, as in llm.c;
//   - backward ops ACCUMULATE (+=) into every gradient they produce, so callers
//     zero gradient buffers once and may sum contributions from several ops;
//     the exceptions (softmax_xent_backward) say so.
#ifndef ENT_KERNELS_H
#define ENT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------
// status and errors

typedef enum {
    ENT_OK = 0,
    ENT_ERR_USAGE,    // bad command line or configuration (exit code 2)
    ENT_ERR_INPUT,    // a data file or checkpoint that is malformed (exit code 1)
    ENT_ERR_IO,       // the file system refused (exit code 1)
    ENT_ERR_NOMEM,    // not enough memory for what was asked (exit code 1)
    ENT_ERR_INTERNAL, // a library call failed unexpectedly (exit code 1)
    ENT_STOPPED,      // stopped on request (SIGTERM, SIGUSR1, SIGINT): exit code 75, requeue
} ent_status;

// Exit code of a run stopped by a signal (preemption): the batch script requeues.
#define ENT_EXIT_REQUEUE 75

// Records a one-line error message (printf format) and returns st, so that
// `return ent_fail(ENT_ERR_INPUT, "%s: bad magic", path);` both reports and propagates.
ent_status ent_fail(ent_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// The last message recorded by ent_fail in this thread ("" if none). Not owned by the caller.
const char *ent_last_error(void);
void ent_clear_error(void);
// The process exit code for a status: 0 ok, 2 usage/config, 75 stopped, 1 everything else.
int ent_exit_code(ent_status st);
// Called by ENT_CHECK on a failed call; prints "file:line: expr" when ENTENTE_TRACE is set.
void ent_trace(const char *file, int line, const char *expr);
// Aborts the process after printing file:line, the rank and the broken invariant.
void ent_assert_fail(const char *file, int line, const char *expr) __attribute__((noreturn));

// Messages printed by every layer carry the rank once the world is larger than one.
void ent_log_set_rank(int rank, int world);
void ent_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ent_log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// "entente: error: ..." (with the rank in a multi-rank job) on stderr.
void ent_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// The same without "error: ", for messages that end a run but are no error.
void ent_log_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define ENT_CHECK(call)                                  \
    do {                                                 \
        ent_status ent_s__ = (call);                     \
        if (ent_s__ != ENT_OK) {                         \
            ent_trace(__FILE__, __LINE__, #call);        \
            return ent_s__;                              \
        }                                                \
    } while (0)

// Stores the status in `st` (which the caller declares) and jumps to label on failure.
#define ENT_CHECK_GOTO(call, label)                      \
    do {                                                 \
        st = (call);                                     \
        if (st != ENT_OK) {                              \
            ent_trace(__FILE__, __LINE__, #call);        \
            goto label;                                  \
        }                                                \
    } while (0)

// ---- calls into other libraries: one family of checks ----
// ENT_<LIB>_CHECK(call) evaluates the call once; when it failed it records
// "file:line: call: the library's own message" as ENT_ERR_INTERNAL and
// returns that status; ENT_<LIB>_CHECK_GOTO(call, label) stores it in `st`
// (which the caller declares) and jumps to label instead. This header
// includes none of the libraries: a file that uses a check includes the
// library's header (mpi.h, hdf5.h, cuda_runtime.h, cublasLt.h, nccl.h, zmq.h) itself.
// Errors that are the user's (a missing file, a full disk, a peer that sent
// garbage) deserve a message of their own, not these.

// Records "file:line: call: message" with ENT_ERR_INTERNAL and returns it.
ent_status ent_fail_call(const char *file, int line, const char *call, const char *message);

// The core: `failed` and `message` may use ent_rc__, the call's result; the
// outer macros stringify the call themselves (here it would be expanded).
#define ENT_LIB_CHECK_(type, call, text, failed, message, on_fail)                                 \
    do {                                                                                           \
        type ent_rc__ = (call);                                                                    \
        if (failed) {                                                                              \
            ent_status ent_e__ = ent_fail_call(__FILE__, __LINE__, text, (message));               \
            on_fail;                                                                               \
        }                                                                                          \
    } while (0)
#define ENT_ON_FAIL_RETURN_ return ent_e__
#define ENT_ON_FAIL_GOTO_(label)                                                                   \
    do {                                                                                           \
        st = ent_e__;                                                                              \
        goto label;                                                                                \
    } while (0)

// MPI: MPI_SUCCESS or a code (under MPI_ERRORS_RETURN), MPI's error string.
#define ENT_MPI_CHECK_(call, text, on_fail)                                                        \
    do {                                                                                           \
        int ent_mpi_rc__ = (call);                                                                 \
        if (ent_mpi_rc__ != MPI_SUCCESS) {                                                         \
            char ent_mpi_msg__[MPI_MAX_ERROR_STRING] = "unknown MPI error";                        \
            int ent_mpi_len__ = 0;                                                                 \
            MPI_Error_string(ent_mpi_rc__, ent_mpi_msg__, &ent_mpi_len__);                         \
            ent_status ent_e__ = ent_fail_call(__FILE__, __LINE__, text, ent_mpi_msg__);           \
            on_fail;                                                                               \
        }                                                                                          \
    } while (0)
#define ENT_MPI_CHECK(call) ENT_MPI_CHECK_(call, #call, ENT_ON_FAIL_RETURN_)
#define ENT_MPI_CHECK_GOTO(call, label) ENT_MPI_CHECK_(call, #call, ENT_ON_FAIL_GOTO_(label))

// HDF5: a negative herr_t or hid_t (HDF5 prints its own error stack unless
// it was turned off).
#define ENT_H5_CHECK(call)                                                                         \
    ENT_LIB_CHECK_(int64_t, call, #call, ent_rc__ < 0, "HDF5 reported an error",                   \
                   ENT_ON_FAIL_RETURN_)
#define ENT_H5_CHECK_GOTO(call, label)                                                             \
    ENT_LIB_CHECK_(int64_t, call, #call, ent_rc__ < 0, "HDF5 reported an error",                   \
                   ENT_ON_FAIL_GOTO_(label))

// CUDA runtime: cudaSuccess or an error with its string.
#define ENT_CUDA_CHECK(call)                                                                       \
    ENT_LIB_CHECK_(cudaError_t, call, #call, ent_rc__ != cudaSuccess,                              \
                   cudaGetErrorString(ent_rc__), ENT_ON_FAIL_RETURN_)
#define ENT_CUDA_CHECK_GOTO(call, label)                                                           \
    ENT_LIB_CHECK_(cudaError_t, call, #call, ent_rc__ != cudaSuccess,                              \
                   cudaGetErrorString(ent_rc__), ENT_ON_FAIL_GOTO_(label))

// cuBLAS / cuBLASLt: CUBLAS_STATUS_SUCCESS or a status with its string.
#define ENT_CUBLAS_CHECK(call)                                                                     \
    ENT_LIB_CHECK_(cublasStatus_t, call, #call, ent_rc__ != CUBLAS_STATUS_SUCCESS,                 \
                   cublasLtGetStatusString(ent_rc__), ENT_ON_FAIL_RETURN_)

// NCCL: ncclSuccess or a result with its string.
#define ENT_NCCL_CHECK(call)                                                                       \
    ENT_LIB_CHECK_(ncclResult_t, call, #call, ent_rc__ != ncclSuccess,                             \
                   ncclGetErrorString(ent_rc__), ENT_ON_FAIL_RETURN_)
#define ENT_NCCL_CHECK_GOTO(call, label)                                                           \
    ENT_LIB_CHECK_(ncclResult_t, call, #call, ent_rc__ != ncclSuccess,                             \
                   ncclGetErrorString(ent_rc__), ENT_ON_FAIL_GOTO_(label))

// ZeroMQ: -1 with zmq_errno() (calls that return a count or 0 on success).
#define ENT_ZMQ_CHECK(call)                                                                        \
    ENT_LIB_CHECK_(int, call, #call, ent_rc__ == -1, zmq_strerror(zmq_errno()), ENT_ON_FAIL_RETURN_)
#define ENT_ZMQ_CHECK_GOTO(call, label)                                                            \
    ENT_LIB_CHECK_(int, call, #call, ent_rc__ == -1, zmq_strerror(zmq_errno()),                    \
                   ENT_ON_FAIL_GOTO_(label))

// Memory: a NULL from an allocation is ENT_ERR_NOMEM naming what it was for.
#define ENT_ALLOC_CHECK(ptr, what)                                                                 \
    do {                                                                                           \
        if ((ptr) == NULL)                                                                         \
            return ent_fail(ENT_ERR_NOMEM, "out of memory allocating %s", (what));                 \
    } while (0)

#define ENT_ASSERT(cond)                                                   \
    do {                                                                   \
        if (!(cond)) ent_assert_fail(__FILE__, __LINE__, #cond);           \
    } while (0)

// ---------------------------------------------------------------------------
// files

// mkdir -p; names the path and the reason on failure.
ent_status ent_mkdirs(const char *path);
// fsyncs a directory so that a rename inside it is durable.
ent_status ent_fsync_dir(const char *dir);
// Writes data to path atomically: path.tmp, fsync, rename, fsync of the directory.
// On failure nothing is left at path.tmp and an older path is untouched.
ent_status ent_write_file_atomic(const char *path, const void *data, size_t len);
// The same for data in several pieces written one after the other.
ent_status ent_write_file_parts_atomic(const char *path, const void *const *parts,
                                      const size_t *lens, int nparts);
// Large buffers: asks the kernel to back [p, p + bytes) with huge pages and
// to fault it in now (both hints, ignored where unsupported), so that the
// first pass over it does not pay a fault per 4 KiB page (on a virtual
// machine that hands freed pages back to its host, 0.26 s per 500 MB here,
// against 0.07 in huge pages). Only the whole pages inside the range.
void ent_populate_big(void *p, size_t bytes);

// ---------------------------------------------------------------------------
// element types: one enum for every layer (arenas, table rows, collectives,
// files). The first five keep their values across versions.

typedef enum {
    ENT_F32 = 0,
    ENT_F64,
    ENT_I32,
    ENT_I64,
    ENT_U64,
    ENT_BF16, // bfloat16: 8-bit exponent, 7-bit mantissa (GPU parameters, activations)
    ENT_F16,  // IEEE half
    ENT_I8,   // int8 (blockwise-quantised deltas)
    ENT_U8,   // bytes
    ENT_DTYPE_COUNT
} ent_dtype;

// Bytes of one element; 0 for a value that is not an ent_dtype.
size_t ent_dtype_size(ent_dtype dtype);
// "f32", "bf16", ...; "invalid" for a value that is not an ent_dtype.
const char *ent_dtype_name(ent_dtype dtype);
// 1 for the floating-point types.
int ent_dtype_is_float(ent_dtype dtype);
// dst = n values of src in dtype (f32, bf16 or f16) as f32, exactly (a
// host-side copy of a device's bf16 activations, for instance); ENT_ERR_USAGE
// for another type.
ent_status ent_dtype_to_f32(ent_dtype dtype, const void *src, float *dst, size_t n);

// Every tensor in an arena (parameters, their gradients and moments,
// activations) starts on a 64-byte boundary, 16 floats: its own cache lines,
// aligned SIMD loads.
#define ENT_ARENA_ALIGN 64
// Bytes numel elements of dtype take in an arena: numel x ent_dtype_size,
// rounded up to ENT_ARENA_ALIGN; 0 for a value that is not an ent_dtype.
size_t ent_arena_bytes(ent_dtype dtype, size_t numel);

// ---------------------------------------------------------------------------
// the parameter table: one row per trainable tensor (DESIGN.md)
//
// Every layer describes tensors with it: the model lays out its arenas by it,
// the optimizer and data parallelism shard by it, tensor parallelism slices by
// it, checkpoints write one dataset per row at the global shape. runtime/
// builds the GPT-2 table; the type and its layout helpers live here, below
// every layer that reads it.

typedef enum {
    ENT_SPLIT_NONE = 0, // replicated across tensor-parallel ranks
    ENT_SPLIT_ROWS,     // rows (output features) split across TP ranks
    ENT_SPLIT_COLS,     // columns (input features) split across TP ranks
} ent_split;

typedef struct {
    char name[64];          // Hugging Face name, "h.3.attn.c_attn.weight" (GPT-2) or
                            // "model.layers.3.self_attn.q_proj.weight" (the Llama family)
    int ndim;               // 1 or 2 (a 1-D row has shape[1] = local_shape[1] = 1)
    int64_t shape[2];       // global shape; a weight is (out, in)
    int64_t local_shape[2]; // the part one tensor-parallel rank holds
    ent_split split;
    int split_groups;       // rows made of this many blocks split separately (3 for Q,K,V)
    int decay;              // 1: AdamW weight decay applies (matrices and embeddings)
    ent_dtype dtype;        // element type in the parameter arena (ENT_F32 today)
    size_t offset;          // in floats, into each local arena (params, grads, ...)
    size_t numel;           // local elements (the global count when not split)
} ent_param_row;

typedef struct {
    ent_param_row *rows;
    int nrows;
    size_t total; // floats in each local arena
    int tp_size;  // tensor-parallel ranks the rows are split over
} ent_param_table;

void ent_param_table_free(ent_param_table *table);
// The row with this name, or NULL.
const ent_param_row *ent_param_table_find(const ent_param_table *table, const char *name);
// Copies tensor-parallel rank tp_rank's part of a row's global tensor (global
// shape, row-major) into local (local shape). Q, K and V are split separately.
void ent_param_row_slice(const ent_param_row *row, int tp_rank, int tp_size,
                         const float *global, float *local);

// A block of a row's global tensor: rows start[0].. and columns start[1]..
typedef struct {
    int64_t start[2], count[2];
} ent_rect;
#define ENT_MAX_RECTS 5

// The blocks of the global tensor that hold local elements [lo, hi) (flat,
// row-major in the local shape) of tensor-parallel rank tp_rank, in the order
// those elements have in the global tensor (which is their local order).
// Returns how many (at most ENT_MAX_RECTS); 0 when lo >= hi.
int ent_param_row_rects(const ent_param_row *row, int tp_rank, int tp_size, size_t lo,
                        size_t hi, ent_rect *out);

// ---------------------------------------------------------------------------
// rotary position embeddings (the Llama family)

typedef enum {
    ENT_ROPE_DEFAULT = 0, // inv_freq[i] = 1 / theta^(2i / hd)
    ENT_ROPE_LLAMA3,      // the same, rescaled by Llama 3's frequency bands
} ent_rope_scaling;

typedef struct {
    double theta;              // rope_theta (base of the wavelengths), > 0
    ent_rope_scaling scaling;
    // Llama 3 scaling (Hugging Face's rope_scaling with rope_type "llama3"):
    // wavelengths above original_max / low_freq_factor are divided by factor,
    // those below original_max / high_freq_factor kept, the band between
    // interpolated; low_freq_factor < high_freq_factor
    double factor, low_freq_factor, high_freq_factor;
    int original_max;          // original_max_position_embeddings
} ent_rope;

// The inverse frequencies (hd/2 of them, hd even) as Hugging Face computes
// them in float32 (_compute_default_rope_parameters, then
// _compute_llama3_parameters for ENT_ROPE_LLAMA3).
void ent_rope_inv_freq(const ent_rope *rope, int hd, float *inv_freq);
// The rotation table of positions 0..T-1 in host memory: cos and sin (T, hd/2)
// of the float32 angle t * inv_freq[i], as the rope ops take it.
void ent_rope_table(const ent_rope *rope, int hd, int T, float *cos_t, float *sin_t);

// The heads of one grouped-query attention call. Query head h of q (NH
// heads per row) attends with key/value head (phase + h) / group of k and v
// (kv_heads heads per row): `group` query heads share a KV head, and a
// tensor-parallel rank whose query heads start inside a group says where
// (phase = its first head's index within the group, 0 otherwise).
// Plain multi-head attention is group 1, kv_heads = NH, phase 0.
typedef struct {
    int B, T;
    int NH;       // query heads in q and out, per row
    int kv_heads; // KV heads in k and v, per row
    int hd;       // head size
    int group;    // query heads per KV head, >= 1
    int phase;    // 0 <= phase < group
} ent_gqa_shape;

// ENT_OK when the heads of s fit: NH, hd and group at least 1, phase in
// [0, group), and the last query head's KV head (phase + NH - 1) / group
// below kv_heads; else ENT_ERR_USAGE naming the numbers. Every backend's
// gqa_forward and gqa_backward check their shape with it.
ent_status ent_gqa_shape_check(ent_gqa_shape s);

// ---------------------------------------------------------------------------
// backend interface

typedef struct ent_backend ent_backend_t;

struct ent_backend_i {
    const char *name;
    // 1: arenas and buffers are host memory that MPI and the CPU may use
    // directly; 0: device memory, reached only through ops and copies
    int is_host;
    // releases the backend instance (its device state, then be itself)
    void (*free)(ent_backend_t *be);
    // one line for logs: the device, its libraries, threads ("OpenBLAS 0.3.21 ...")
    const char *(*describe)(ent_backend_t *be);

    // memory: alloc returns zeroed device memory the caller owns (free with
    // free_mem), or NULL when the device has not enough.
    void *(*alloc)(ent_backend_t *be, size_t bytes);
    void (*free_mem)(ent_backend_t *be, void *p);
    ent_status (*zero)(ent_backend_t *be, void *p, size_t bytes);
    ent_status (*to_device)(ent_backend_t *be, void *dst, const void *host_src, size_t bytes);
    ent_status (*to_host)(ent_backend_t *be, void *host_dst, const void *src, size_t bytes);
    // waits for every op started so far; a failure of one of them (a launch
    // error, a fault) is reported here if the op could not report it
    ent_status (*synchronize)(ent_backend_t *be);
    // bytes the device can still give this process; optional (NULL: unknown)
    size_t (*available_memory)(ent_backend_t *be);
    // the stream the backend queues its ops and copies on, in order (a
    // cudaStream_t on a GPU), so that other work, such as NCCL collectives,
    // can be queued in order with them; optional (NULL: none, as on the CPU
    // backends, whose ops have finished when they return). Call it through
    // ent_backend_stream.
    void *(*stream)(ent_backend_t *be);

    // out (B,T,C) = wte[tokens] + wpe[position]; tokens (B,T) index wte (Vp,C), wpe (maxT,C).
    // wpe NULL: the token embedding alone (no learned positions), and dwpe NULL in backward.
    ent_status (*encoder_forward)(ent_backend_t *be, void *out, const int32_t *tokens,
                                  const void *wte, const void *wpe, int B, int T, int C);
    ent_status (*encoder_backward)(ent_backend_t *be, float *dwte, float *dwpe, const void *dout,
                                   const int32_t *tokens, int B, int T, int C);

    // out (N,C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) saved for backward
    ent_status (*layernorm_forward)(ent_backend_t *be, void *out, float *mean, float *rstd,
                                    const void *inp, const void *weight, const void *bias,
                                    int N, int C);
    ent_status (*layernorm_backward)(ent_backend_t *be, void *dinp, float *dweight, float *dbias,
                                     const void *dout, const void *inp, const void *weight,
                                     const float *mean, const float *rstd, int N, int C);

    // out (N,OC) = inp (N,C) @ weight^T (C,OC) + bias (OC); bias may be NULL
    ent_status (*matmul_forward)(ent_backend_t *be, void *out, const void *inp,
                                 const void *weight, const void *bias, int N, int C, int OC);
    // dinp (N,C), dweight (OC,C), dbias (OC, may be NULL); dinp may be NULL too (only
    // the weight's gradients: a replicated layer whose input gradient another rank adds)
    ent_status (*matmul_backward)(ent_backend_t *be, void *dinp, float *dweight, float *dbias,
                                  const void *dout, const void *inp, const void *weight,
                                  int N, int C, int OC);
    // The product fused with the GELU after it (GPT-2's MLP). Optional (NULL:
    // the caller runs matmul_forward, then gelu_forward): pre (N,OC) = inp @
    // weight^T + bias (bias may be NULL), kept for backward, and out (N,OC) =
    // gelu(pre), as the two ops give them.
    ent_status (*matmul_gelu_forward)(ent_backend_t *be, void *pre, void *out, const void *inp,
                                      const void *weight, const void *bias, int N, int C,
                                      int OC);

    // causal multi-head attention. qkv (B,T,3C) holds Q, K, V side by side, each
    // split into NH heads of C/NH; out (B,T,C); att is the state kept for
    // backward, of attention_state_bytes(B, T, NH) bytes: the CPU keeps the
    // softmax probabilities (B,NH,T,T), zero above the diagonal; a flash-style
    // kernel may keep only its softmax statistics.
    size_t (*attention_state_bytes)(ent_backend_t *be, int B, int T, int NH);
    ent_status (*attention_forward)(ent_backend_t *be, void *out, float *att, const void *qkv,
                                    int B, int T, int C, int NH);
    // dqkv (B,T,3C) accumulates; scratch (attention_state_bytes) is overwritten.
    ent_status (*attention_backward)(ent_backend_t *be, void *dqkv, float *scratch,
                                     const void *dout, const void *qkv, const float *att,
                                     int B, int T, int C, int NH);

    // GELU, tanh approximation, element-wise over n values
    ent_status (*gelu_forward)(ent_backend_t *be, void *out, const void *inp, size_t n);
    ent_status (*gelu_backward)(ent_backend_t *be, void *dinp, const void *inp, const void *dout,
                                size_t n);

    // out = a + b (n values); backward: da += dout, db += dout
    ent_status (*residual_forward)(ent_backend_t *be, void *out, const void *a, const void *b,
                                   size_t n);
    ent_status (*residual_backward)(ent_backend_t *be, void *da, void *db, const void *dout,
                                    size_t n);
    // The residual addition fused with the normalisation that follows it.
    // Optional (NULL: the caller runs residual_forward, then the norm): res
    // (N,C) = a + b, then out, mean and rstd of res as layernorm_forward
    // gives them (rmsnorm's: as rmsnorm_forward with eps), the same bits as
    // the two ops one after the other, in one pass over the rows.
    ent_status (*residual_layernorm_forward)(ent_backend_t *be, void *res, void *out,
                                             float *mean, float *rstd, const void *a,
                                             const void *b, const void *weight,
                                             const void *bias, int N, int C);
    ent_status (*residual_rmsnorm_forward)(ent_backend_t *be, void *res, void *out, float *rstd,
                                           const void *a, const void *b, const void *weight,
                                           float eps, int N, int C);

    // fused softmax + cross-entropy over the first V of Vp logits per row (the
    // padding columns get probability 0). probs (N,Vp) may alias logits.
    // targets (N) may be NULL: then only probs are produced and losses is untouched.
    ent_status (*softmax_xent_forward)(ent_backend_t *be, float *losses, void *probs,
                                       const void *logits, const int32_t *targets,
                                       int N, int V, int Vp);
    // dlogits (N,Vp) = (probs - onehot(targets)) * dloss. OVERWRITES dlogits, which
    // may alias probs; dloss is the gradient of the total loss w.r.t. each row's loss.
    ent_status (*softmax_xent_backward)(ent_backend_t *be, void *dlogits, const void *probs,
                                        const int32_t *targets, float dloss, int N, int V, int Vp);

    // ---- the Llama family's ops. Optional: NULL where a backend lacks them
    // (ent_backend_check_llama names the first missing one). ----

    // RMSNorm: out (N,C) = inp * rstd * weight with rstd = 1 / sqrt(mean(inp^2) + eps)
    // per row, saved in rstd (N) for backward. No bias.
    ent_status (*rmsnorm_forward)(ent_backend_t *be, void *out, float *rstd, const void *inp,
                                  const void *weight, float eps, int N, int C);
    ent_status (*rmsnorm_backward)(ent_backend_t *be, void *dinp, float *dweight,
                                   const void *dout, const void *inp, const void *weight,
                                   const float *rstd, int N, int C);

    // rotary embeddings, IN PLACE on x (B,T,H*hd): in every head, the pair
    // (i, i + hd/2) of position t turns by the angle of cos_t, sin_t (T, hd/2)
    // row t (ent_rope_table). Backward turns the gradient dx back, in place
    // (an exception to accumulation: the rotation is its own state).
    ent_status (*rope_forward)(ent_backend_t *be, void *x, const float *cos_t,
                               const float *sin_t, int B, int T, int H, int hd);
    ent_status (*rope_backward)(ent_backend_t *be, void *dx, const float *cos_t,
                                const float *sin_t, int B, int T, int H, int hd);

    // SwiGLU: out = silu(gate) * up over n values; backward accumulates dgate, dup
    ent_status (*swiglu_forward)(ent_backend_t *be, void *out, const void *gate,
                                 const void *up, size_t n);
    ent_status (*swiglu_backward)(ent_backend_t *be, void *dgate, void *dup, const void *dout,
                                  const void *gate, const void *up, size_t n);

    // causal grouped-query attention (ent_gqa_shape): q (B,T,NH*hd), k and v
    // (B,T,kv_heads*hd), out (B,T,NH*hd); att is the state kept for backward,
    // attention_state_bytes(B, T, NH) bytes, as attention_forward's.
    ent_status (*gqa_forward)(ent_backend_t *be, void *out, float *att, const void *q,
                              const void *k, const void *v, ent_gqa_shape s);
    // dq, dk, dv accumulate (a KV head's gradient sums over its query heads);
    // scratch (attention_state_bytes) is overwritten.
    ent_status (*gqa_backward)(ent_backend_t *be, void *dq, void *dk, void *dv, float *scratch,
                               const void *dout, const void *q, const void *k, const void *v,
                               const float *att, ent_gqa_shape s);

    // AdamW with decoupled weight decay over n values; t is the 1-based step.
    // The update reads and writes the f32 master weights `master` (weight
    // decay: master -= lr * weight_decay * master), then writes them to the
    // model's copy `params` in be->param_dtype; master NULL (or equal to
    // params): the f32 parameters are their own master, as on the CPU. A GPU
    // backend in bf16 keeps bf16 params beside f32 masters. grads are
    // multiplied by grad_scale first (clipping).
    ent_status (*adamw_update)(ent_backend_t *be, void *params, float *master, const float *grads,
                               float *m, float *v, size_t n, float lr, float beta1, float beta2,
                               float eps, float weight_decay, float grad_scale, int t);

    // dst (n values in be->param_dtype) = src (f32), rounded to nearest even:
    // the compute copy of parameters whose f32 masters changed outside the
    // backend's ops (a load, an outer update). Optional: NULL on a backend
    // whose parameters are f32, their own masters.
    ent_status (*cast)(ent_backend_t *be, void *dst, const float *src, size_t n);

    // sum of x[i]^2 in double, in an order that does not depend on thread count
    ent_status (*sum_squares)(ent_backend_t *be, const float *x, size_t n, double *out);

    // Optional vector ops for the coalition's outer loop (NULL: not provided;
    // call them through ent_vec_* below, which say so). n values each.
    // out = a - b (out may alias a or b)
    ent_status (*sub)(ent_backend_t *be, float *out, const float *a, const float *b, size_t n);
    // y += alpha * x
    ent_status (*axpy)(ent_backend_t *be, float *y, float alpha, const float *x, size_t n);
    // blockwise int8: blocks of `block` values (the last may be shorter), each
    // with scale = max|x| / 127 (ceil(n / block) scales) and q = round(x / scale);
    // dequantize gives q * scale.
    ent_status (*quantize_i8)(ent_backend_t *be, int8_t *q, float *scales, const float *x, size_t n,
                              size_t block);
    ent_status (*dequantize_i8)(ent_backend_t *be, float *out, const int8_t *q, const float *scales,
                                size_t n, size_t block);
};

// A backend instance: the interface plus the device state it runs on.
struct ent_backend {
    const struct ent_backend_i *iface;
    void *impl; // backend-private (stream, handles); NULL for the CPU backend
    int threads; // host threads used by the CPU backend
    // the element types of the `void *` arguments of its ops (ENT_F32 or
    // ENT_BF16), set at creation from ent_backend_opts.precision
    ent_dtype act_dtype;   // activations and their gradients
    ent_dtype param_dtype; // parameters in compute (their masters are f32)
};

// The optional vector ops, dispatched: ENT_ERR_USAGE naming the backend and
// the op when the backend has none; block must be at least 1.
ent_status ent_vec_sub(ent_backend_t *be, float *out, const float *a, const float *b, size_t n);
ent_status ent_vec_axpy(ent_backend_t *be, float *y, float alpha, const float *x, size_t n);
ent_status ent_vec_quantize_i8(ent_backend_t *be, int8_t *q, float *scales, const float *x,
                               size_t n, size_t block);
ent_status ent_vec_dequantize_i8(ent_backend_t *be, float *out, const int8_t *q,
                                 const float *scales, size_t n, size_t block);

// The scale of a block of n values quantised to integers in [-levels,
// levels]: max |x| / levels (NaN or infinite when a value is: a receiver
// that checks the scales refuses the block), and in *inv its inverse, 0 when
// the scale is 0 or not finite. The int8 op and the coalition's codecs share it.
float ent_block_scale(const float *x, size_t n, float levels, float *inv);

// ENT_OK when the backend has every op of the Llama family (rmsnorm, rope,
// swiglu, gqa, forward and backward); else ENT_ERR_USAGE "op X not
// implemented on NAME".
ent_status ent_backend_check_llama(ent_backend_t *be);

// The backend's stream (its iface->stream), or NULL when it has none. Not
// owned by the caller: it lives as long as the backend.
void *ent_backend_stream(ent_backend_t *be);

// system.precision: the element type a backend computes in.
typedef enum {
    ENT_PRECISION_AUTO = 0, // bf16 on cuda, f32 on the CPU backends
    ENT_PRECISION_F32,      // f32 parameters and activations everywhere
    ENT_PRECISION_BF16,     // bf16 parameters and activations, f32 masters (cuda only)
} ent_precision;

// "auto", "f32", "bf16" -> *out; ENT_ERR_USAGE naming the known names otherwise.
ent_status ent_precision_parse(const char *name, ent_precision *out);
// ENT_ERR_USAGE when the backend called `name` cannot compute in precision p
// (bf16 on the CPU backends), saying which can; ENT_OK otherwise (an unknown
// name too: ent_backend_check_name says what is wrong with it). The
// configuration's check and the backends' own at creation.
ent_status ent_backend_check_precision(const char *name, ent_precision p);

typedef struct {
    int threads; // host threads (CPU backends); <= 0: OpenMP's default
    // GPU backends: the device, taken modulo the number of devices this
    // process sees (CUDA_VISIBLE_DEVICES, Slurm's GPU binding), so that a
    // trainer passing its node-local rank spreads a node's ranks over its
    // GPUs; negative counts as 0
    int device;
    // the element type of parameters and activations: a CPU backend refuses
    // bf16 (ENT_ERR_USAGE); 0 is ENT_PRECISION_AUTO
    ent_precision precision;
} ent_backend_opts;

// Creates the backend called `name` (config key system.backend): "cpu", the
// OpenBLAS + OpenMP backend; "cpu-guarded", the CPU backend whose memory is
// kept inaccessible (PROT_NONE) outside its own ops and copies, so that any
// access from outside the backend faults (for tests); "cuda", one NVIDIA GPU
// (a build with the CUDA toolkit; ENT_ERR_USAGE saying why when no GPU is
// visible); "auto", cuda when this build has it and a GPU is visible, else
// cpu (the instance's iface->name says which). opts may be NULL. An unknown
// name is ENT_ERR_USAGE naming the known ones. The caller owns *out
// (ent_backend_free).
ent_status ent_backend_new(const char *name, const ent_backend_opts *opts, ent_backend_t **out);
// ENT_OK when ent_backend_new could create `name` in this build (whether a
// GPU is visible is not checked); else ENT_ERR_USAGE with the message
// ent_backend_new would give ("cuda" in a build without CUDA: how to rebuild).
ent_status ent_backend_check_name(const char *name);
// The names ent_backend_new knows in this build, comma-separated
// ("cpu, cpu-guarded, cuda, auto"; without CUDA "cpu, cpu-guarded, auto").
const char *ent_backend_names(void);
// The CPU backend: ent_backend_new("cpu") with `threads`; NULL when out of memory.
ent_backend_t *ent_backend_cpu_new(int threads);
// Releases a backend (its iface->free) and NULLs *be.
void ent_backend_free(ent_backend_t **be);

// The BLAS library and threading in use, for logs and benchmarks ("OpenBLAS 0.3.21 ... (openmp)").
const char *ent_backend_cpu_describe(void);
// A warning when OpenBLAS runs kernels far older than this CPU (a release
// that does not know the CPU model falls back to its SSE3 "Prescott" kernels,
// several times slower), naming the OPENBLAS_CORETYPE that fixes it; NULL
// when its kernels suit the CPU.
const char *ent_backend_cpu_warning(void);

#ifdef __cplusplus
}
#endif

#endif // ENT_KERNELS_H
