// ent_runtime.h: the GPT model, its parameter table, the data loader, the
// configuration, the training loop and sampling: what the `entente` binary runs.
#ifndef ENT_RUNTIME_H
#define ENT_RUNTIME_H

#include "ent_comm.h"
#include "ent_kernels.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------
// configuration (INI; every key is documented in docs/config.md)

#define ENT_PATH_MAX 4096
#define ENT_PROMPT_MAX 1024
#define ENT_CONFIG_MAX_KEYS 96

typedef struct {
    // [model]
    int layers, heads, width, context, vocab;
    char arch[16];              // "gpt2" or "llama"
    // llama only (docs/config.md): 0 = the defaults that the shape derives
    int n_kv_heads, ffn_hidden, tie_embeddings;
    double rope_theta, rms_eps;
    char rope_scaling[16];      // "none" or "llama3"
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_context;
    // [train]
    int steps, batch_size, micro_batch, warmup_steps, log_every;
    double lr, lr_floor, weight_decay, beta1, beta2, eps, grad_clip;
    uint64_t seed;
    // [eval]
    int eval_every, eval_batches;
    // [sample]
    int sample_every, sample_tokens;
    double sample_temperature;
    uint64_t sample_seed;
    char sample_prompt[ENT_PROMPT_MAX];
    // [data]
    char data_dir[ENT_PATH_MAX];
    char data_tokenizer[ENT_PATH_MAX]; // "" = bytes
    char train_pattern[256], val_pattern[256];
    int shuffle;
    // [parallel]
    int tp, zero;
    double timeout;
    // [checkpoint]
    char ckpt_dir[ENT_PATH_MAX];
    int ckpt_every, ckpt_keep, ckpt_async;
    char ckpt_on_error[16];
    int ckpt_at_start;
    // [coalition]
    char coal_coordinator[256], coal_bind[256];
    char coal_site[ENT_LINK_NAME_MAX + 1];
    int coal_sites, coal_max_sites, coal_rounds, coal_inner_steps, coal_eval_rounds, coal_overlap;
    int coal_quorum, coal_max_staleness, coal_score_batches;
    double coal_score_tolerance;
    double coal_round_seconds, coal_outer_lr, coal_outer_momentum, coal_timeout;
    double coal_lost_after, coal_max_norm_ratio;
    char coal_codec[16];
    char coal_key[ENT_PATH_MAX], coal_coordinator_key[ENT_PATH_MAX], coal_allow[ENT_PATH_MAX];
    char coal_standby[256], coal_standby_key[ENT_PATH_MAX], coal_primary_key[ENT_PATH_MAX];
    double coal_takeover_after;
    int coal_insecure; // --insecure on the command line (never from a file): plaintext link
    int coal_standby_mode; // `entente coordinator --standby` (never from a file)
    // [system]
    int threads;
    char backend[32];
    char precision[8]; // auto, f32 or bf16 (ent_precision_parse)

    char path[ENT_PATH_MAX]; // the file it was read from ("" for defaults only)
    // where each key's value came from, for messages: its line in path,
    // 0 for the default, -1 for --set (indexed like the key table in config.c)
    int key_line[ENT_CONFIG_MAX_KEYS];
} ent_config;

// Fills every key with its documented default.
void ent_config_defaults(ent_config *cfg);
// A comma-separated list (coalition.coordinator, coalition.coordinator_key)
// into out: returns how many items (0 for ""), or -1 for an empty item, one
// of 256 bytes or more, or more than ENT_COAL_ENDPOINTS_MAX of them.
#define ENT_COAL_ENDPOINTS_MAX 4
int ent_coal_split_list(const char *text, char out[][256]);
// Reads an INI file over the defaults, then applies overrides ("section.key=value",
// n_overrides of them) and checks every value and combination. Errors name the
// file, line and key (or the --set argument) and return ENT_ERR_USAGE.
ent_status ent_config_load(ent_config *cfg, const char *path, const char *const *overrides,
                           int n_overrides);
// Applies one "section.key=value" override (as from --set).
ent_status ent_config_set(ent_config *cfg, const char *assignment);
// Checks values that depend on each other (heads dividing width, ...).
ent_status ent_config_validate(const ent_config *cfg);
// Writes v into buf (n >= 32 bytes) as the shortest %g text that strtod reads
// back as exactly v (3e-3 as "0.003"); returns buf.
const char *ent_format_double(double v, char *buf, size_t n);
// Writes the effective configuration as INI text: every key, its value, each
// number in the shortest text that reads back exactly.
void ent_config_write(const ent_config *cfg, FILE *f);
// The same text in a malloc'ed string (its length in *len unless NULL); NULL when out of memory.
char *ent_config_text(const ent_config *cfg, size_t *len);
// Writes the table of keys (section.key, default, accepted range, meaning), for --help.
void ent_config_describe_keys(FILE *f);

// ---------------------------------------------------------------------------
// the model's shape and parameter table (the table's type is in ent_kernels.h)

typedef enum { ENT_ARCH_GPT2 = 0, ENT_ARCH_LLAMA } ent_arch;

typedef struct {
    int layers, heads, width, context;
    int vocab;        // tokens the model predicts
    int padded_vocab; // vocab rounded up to a multiple of 64 (rows of wte)
    ent_arch arch;    // GPT2 (0) unless set: the fields below are llama's
    int kv_heads;     // key/value heads, dividing heads
    int ffn_hidden;   // SwiGLU hidden units (intermediate_size)
    int tie_embeddings; // lm_head is model.embed_tokens
    float rms_eps;
    ent_rope rope;
} ent_model_shape;

// "gpt2", "llama"
const char *ent_arch_name(ent_arch arch);
// The SwiGLU width a llama of this width gets when model.ffn_hidden is 0:
// 8/3 x width (the parameters of GPT-2's 4 x width MLP in three matrices),
// rounded up to a multiple of 32.
int ent_model_default_ffn(int width);

// Builds the table of one rank of tp_size tensor-parallel ranks (1: no split);
// the caller owns it (ent_param_table_free).
ent_status ent_param_table_build(const ent_model_shape *shape, int tp_size,
                                 ent_param_table *table);

// The model shape a configuration asks for.
ent_model_shape ent_model_shape_from_config(const ent_config *cfg);
// Trainable parameters (real vocabulary, as GPT-2 counts them).
size_t ent_model_shape_num_params(const ent_model_shape *shape);
// FLOPs of one training token: 6 * params + 6 * layers * width * context (llm.c's count).
double ent_model_shape_flops_per_token(const ent_model_shape *shape);

// ---------------------------------------------------------------------------
// the GPT model (GPT-2 architecture, pre-norm, tied embeddings, learned positions)

typedef struct ent_model ent_model_t;

typedef enum { ENT_ARENA_PARAMS = 0, ENT_ARENA_GRADS } ent_arena;

typedef struct {
    ent_group_t *tp;       // tensor-parallel group (Megatron style); NULL = none
    size_t arena_multiple; // arenas padded to a multiple of this many floats (ZeRO shards)
} ent_model_opts;

// Bytes one rank needs on its device: the parameters' f32 masters, their
// gradients and AdamW state, the parameters in compute where the backend's
// param_dtype is not f32, and the activations in its act_dtype (with the
// token ids and f32 statistics) for micro-batches of B sequences of T
// tokens, with TP over tp ranks, each tensor rounded up to ENT_ARENA_ALIGN as
// the arenas lay them out. The backend sizes what it keeps for attention's
// backward (attention_state_bytes).
size_t ent_model_memory_bytes(ent_backend_t *be, const ent_model_shape *shape, int tp, int B,
                              int T);
// Allocates a model for micro-batches of up to B x T tokens (T <= context); opts
// may be NULL. Fails with ENT_ERR_NOMEM and the sizes when the memory is not
// there. Caller owns the model.
ent_status ent_model_new(ent_backend_t *be, const ent_model_shape *shape,
                         const ent_model_opts *opts, int B, int T, ent_model_t **out);
void ent_model_free(ent_model_t **model);
// GPT-2 initialisation from a seed: N(0, 0.02) weights, residual projections
// scaled by 1/sqrt(2 * layers), zero biases, unit layernorm gains. Each tensor
// draws from its own stream (seed, row name) at its global shape, and each TP
// rank keeps its part, so any layout initialises the same model.
ent_status ent_model_init(ent_model_t *model, uint64_t seed);
// Forward pass over b x t tokens (b <= B, t <= T). With targets, returns the mean
// cross-entropy in *loss and keeps what backward needs; without, leaves logits.
ent_status ent_model_forward(ent_model_t *model, const int32_t *tokens, const int32_t *targets,
                             int b, int t, float *loss);
// Sets every parameter gradient to zero.
ent_status ent_model_zero_grad(ent_model_t *model);
// Backward pass of the last forward with targets; ACCUMULATES into the parameter
// gradients. dloss scales every position's loss gradient (1 / tokens per step).
ent_status ent_model_backward(ent_model_t *model, float dloss);
// Called by backward as soon as the gradients of a bucket (a contiguous range
// of the arena: the final layernorm, one block, the embeddings) are complete.
typedef void (*ent_grad_hook)(void *ctx, size_t offset, size_t count);
void ent_model_set_grad_hook(ent_model_t *model, ent_grad_hook hook, void *ctx);
// Copies the logits of position (b, t) of the last forward into host memory
// (padded_vocab floats).
ent_status ent_model_logits_at(ent_model_t *model, int b, int t, float *host_out);
// The model's arenas (device memory; ent_model_arena_floats floats each, padded)
// and its table; not owned by the caller. ENT_ARENA_PARAMS is the f32
// masters: what checkpoints, data parallelism and the coalition read and
// write. The rows' dtype in the table is the parameters' in compute.
float *ent_model_arena(ent_model_t *model, ent_arena which);
// After the masters were written from outside the model's ops (a load, a
// broadcast, an all-gather of ZeRO shards, an outer update): refreshes the
// parameters in compute from them (the backend's cast). Nothing to do, and
// ENT_OK, where the parameters are f32 and their own masters.
ent_status ent_model_params_changed(ent_model_t *model);
// The parameters in compute (device memory, arena_floats elements of the
// table's dtype, laid out as the masters): the masters themselves when f32.
// AdamW writes both (adamw_update's params and master).
void *ent_model_compute_params(ent_model_t *model);
size_t ent_model_arena_floats(const ent_model_t *model);
const ent_param_table *ent_model_table(const ent_model_t *model);
const ent_model_shape *ent_model_get_shape(const ent_model_t *model);
ent_backend_t *ent_model_backend(const ent_model_t *model);
int ent_model_tp_rank(const ent_model_t *model);

// ---------------------------------------------------------------------------
// the optimizer: AdamW, with the data-parallel reduction of gradients

typedef struct ent_optim ent_optim_t;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} ent_adamw;

// AdamW state for a model trained by the data-parallel group of grid (NULL: a
// single process, no communication). zero = 1 shards the AdamW state across the DP ranks
// (ZeRO-1): gradients are reduce-scattered, each rank updates its shard, and
// parameters are all-gathered; the model's arena_multiple must be a multiple of
// 16 x dp_size. Otherwise gradients are all-reduced bucket by bucket during the
// backward pass of the last micro-batch. Caller owns the result.
ent_status ent_optim_new(ent_model_t *model, const ent_grid *grid, int zero, ent_optim_t **out);
void ent_optim_free(ent_optim_t **optim);
// Called before each micro-batch's backward pass; last = 1 for the micro-batch
// that completes the step (its backward starts the bucket all-reduces).
void ent_optim_begin_backward(ent_optim_t *optim, int last);
// Completes the reduction of gradients over the DP group (sums: the loss
// gradient already carries the 1 / global tokens).
ent_status ent_optim_reduce_grads(ent_optim_t *optim);
// Global L2 norm of the reduced gradient, every tensor counted once.
ent_status ent_optim_grad_norm(ent_optim_t *optim, double *norm);
// AdamW on this rank's range of the arena (all of it, or its ZeRO-1 shard)
// with gradients scaled by grad_scale (clipping); weight decay only on rows
// with decay set. Its bias correction takes the optimizer's own count of
// updates (t = ent_optim_updates + 1, then counted), not the caller's step.
// No communication.
ent_status ent_optim_update(ent_optim_t *optim, const ent_adamw *hp, float grad_scale);
// After an update: every DP rank gets the whole updated parameters (the
// ZeRO-1 all-gather; nothing to do without ZeRO-1).
ent_status ent_optim_share_params(ent_optim_t *optim);
// ent_optim_update, then ent_optim_share_params.
ent_status ent_optim_step(ent_optim_t *optim, const ent_adamw *hp, float grad_scale);
// AdamW updates taken since the optimizer was created or last reset (0 at
// first); a resume sets the count its checkpoint stored.
int ent_optim_updates(const ent_optim_t *optim);
void ent_optim_set_updates(ent_optim_t *optim, int updates);
// A fresh AdamW state: this rank's moments (its shard under ZeRO-1) zeroed
// through the backend and the update count set to 0, as after ent_optim_new.
// No communication: every rank of the DP group resets its own range.
ent_status ent_optim_reset(ent_optim_t *optim);
// Floats of AdamW state this rank keeps (a shard under ZeRO-1), and the arena
// offset where its range starts.
size_t ent_optim_state_floats(const ent_optim_t *optim, size_t *first);
// The AdamW moments (state_floats floats each, device memory); not owned.
void ent_optim_moments(ent_optim_t *optim, float **m, float **v);

// ---------------------------------------------------------------------------
// token data: shards in llm.c's .bin layout

#define ENT_SHARD_MAGIC 20240520
#define ENT_SHARD_VERSION 1    // llm.c's: uint16 tokens
#define ENT_SHARD_VERSION_2 2  // header[3] = bytes per token (2 or 4): uint32 tokens
#define ENT_SHARD_HEADER_INTS 256
#define ENT_TOKEN_EOT 256   // the byte-level tokenizer's end-of-text token
#define ENT_BYTE_VOCAB 257  // 256 byte values + end-of-text
#define ENT_VOCAB_MAX (1 << 24) // the largest model.vocab; token ids are below it

// Writes one shard (header + uint16 tokens, version 1) atomically: PATH.tmp,
// fsync, rename.
ent_status ent_shard_write(const char *path, const uint16_t *tokens, size_t ntokens);
// The same with uint32 tokens (version 2, token size 4).
ent_status ent_shard_write_u32(const char *path, const uint32_t *tokens, size_t ntokens);
// Checks a shard's header and size; *ntokens gets the header's token count.
ent_status ent_shard_check_header(const char *path, size_t *ntokens);

typedef struct ent_dataset ent_dataset_t;

// Opens every shard in dir matching the glob pattern (sorted by name), checks
// magic, version, size and every token id against vocab, and views the tokens
// as sequences of T+1 tokens (stride T) that never cross a shard boundary.
// Caller owns the result.
ent_status ent_dataset_open(const char *dir, const char *pattern, int vocab, int T,
                            ent_dataset_t **out);
void ent_dataset_close(ent_dataset_t **data);
int64_t ent_dataset_num_sequences(const ent_dataset_t *data);
int64_t ent_dataset_num_tokens(const ent_dataset_t *data);
int ent_dataset_num_shards(const ent_dataset_t *data);
// Copies sequence seq: inputs (T) and the next-token targets (T).
void ent_dataset_sequence(const ent_dataset_t *data, int64_t seq, int32_t *inputs,
                          int32_t *targets);

// The topology-independent cursor: `consumed` counts sequences taken by the
// whole job since the start. Position p maps to epoch p / n and, within the
// epoch, to sequence permute(p % n) (a seeded bijection, new each epoch), so
// any number of ranks can split a global batch and a run can resume on another.
typedef struct {
    int64_t consumed;
} ent_data_cursor;

// A bijection on [0, n) chosen by (seed, epoch); the identity when shuffle is 0.
int64_t ent_data_permute(int64_t i, int64_t n, uint64_t seed, int64_t epoch);
// The key of a run's data order (the seed ent_data_permute takes; a
// checkpoint's rng.data_order_key) from its train.seed (docs/data.md).
uint64_t ent_data_order_key(uint64_t train_seed);
// Fills count sequences starting at global position cursor->consumed + skip
// into inputs/targets (count x T each); does not move the cursor.
void ent_dataset_fill(const ent_dataset_t *data, const ent_data_cursor *cursor, int64_t skip,
                      int count, int shuffle, uint64_t seed, int32_t *inputs,
                      int32_t *targets);

// ---------------------------------------------------------------------------
// tokenizers: byte-level BPE from a Hugging Face tokenizer.json (tokenizer.c)

typedef struct ent_tokenizer ent_tokenizer_t;

// Loads DIR/tokenizer.json, or path itself when it names a file. Unsupported
// parts (a normalizer, a model other than BPE, a pre-tokenizer other than
// ByteLevel or Split + ByteLevel, a decoder other than ByteLevel) and every
// malformed value are ENT_ERR_INPUT naming the file and the JSON path. The
// caller owns *out (ent_tokenizer_free).
ent_status ent_tokenizer_load(const char *path, ent_tokenizer_t **out);
void ent_tokenizer_free(ent_tokenizer_t **tok);
// The vocabulary a model needs: the largest id + 1.
uint32_t ent_tokenizer_vocab(const ent_tokenizer_t *tok);
// The tokenizer.json it was loaded from.
const char *ent_tokenizer_path(const ent_tokenizer_t *tok);
// The id of a token (added tokens first, then the model's), or -1.
int64_t ent_tokenizer_token_id(const ent_tokenizer_t *tok, const char *text);
// The token put before each document: `name` when not NULL (ENT_ERR_USAGE if
// there is no such token), else the first of <|begin_of_text|>, <|endoftext|>,
// <s>, <|end_of_text|> that the tokenizer has (ENT_ERR_USAGE if none).
ent_status ent_tokenizer_document_token(const ent_tokenizer_t *tok, const char *name,
                                        uint32_t *id);

// Receives ids as the encoder produces them.
typedef ent_status (*ent_token_sink)(void *ctx, const uint32_t *ids, size_t n);
// Encodes n bytes of text (any bytes: invalid UTF-8 is encoded byte by byte
// and decodes back) and hands the ids to sink in order. The tokenizer keeps a
// cache and scratch space: one thread at a time per tokenizer.
ent_status ent_tokenizer_encode_to(ent_tokenizer_t *tok, const void *text, size_t n,
                                   ent_token_sink sink, void *ctx);
// The same into *ids (owned by the caller, NULL when there are none), *nids ids.
ent_status ent_tokenizer_encode(ent_tokenizer_t *tok, const void *text, size_t n,
                                uint32_t **ids, size_t *nids);
// The bytes token id stands for (ByteLevel decoding), *len of them, or NULL
// when the id is not in the vocabulary. Owned by the tokenizer.
const void *ent_tokenizer_piece(const ent_tokenizer_t *tok, uint32_t id, size_t *len);
// Decodes n ids into *text (owned by the caller, NUL-terminated after *len
// bytes); an id outside the vocabulary is ENT_ERR_INPUT.
ent_status ent_tokenizer_decode(const ent_tokenizer_t *tok, const uint32_t *ids, size_t n,
                                char **text, size_t *len);

// `entente data prepare`: tokenizes the input files (each file is one document,
// preceded by the end-of-text token), holds out val_fraction of the tokens in
// blocks spread evenly through the stream, and writes train_NNNNNN.bin and
// val_NNNNNN.bin shards of at most shard_tokens into outdir. The tokenizer is
// byte-level (256 = end-of-text) unless `tokenizer` names a tokenizer.json (or
// its directory); then each document starts with the token `eot` names (or
// ent_tokenizer_document_token's choice), and the shards hold uint32 tokens
// (version 2) when the vocabulary exceeds 65536, uint16 (version 1) otherwise.
typedef struct {
    const char *const *inputs;
    int n_inputs;
    const char *outdir;
    double val_fraction;
    size_t shard_tokens;
    int force;             // replace shards already in outdir
    const char *tokenizer; // NULL: bytes
    const char *eot;       // NULL: the tokenizer's document token
} ent_prepare_args;

// What a preparation wrote.
typedef struct {
    size_t train_tokens, val_tokens;
    uint32_t vocab;   // the model.vocab the shards need
    int token_bytes;  // 2 or 4
} ent_prepare_result;

ent_status ent_data_prepare(const ent_prepare_args *args, ent_prepare_result *result);

// ---------------------------------------------------------------------------
// training and sampling

// The learning rate at a 1-based step: linear warm-up to lr over warmup_steps,
// then cosine decay to lr * lr_floor at step `horizon` (train.steps for
// `entente train`; an outer loop sets its own through ent_trainer_set_horizon).
double ent_lr_schedule(const ent_config *cfg, int step, int horizon);

// How `entente train` treats its run directory (docs/cli.md).
typedef struct {
    const char *run_dir;
    const char *resume; // a checkpoint file to continue from, or NULL
    int continues;      // --resume was given: append to the run in run_dir (with
                        // resume NULL: --resume auto found no checkpoint yet)
    int force;          // start over: replace the run files, remove the run's checkpoints
} ent_train_opts;

// Runs `entente train` with a loaded configuration; writes run_dir/metrics.jsonl,
// run_dir/config.ini, run_dir/run.json, run_dir/samples.txt and checkpoints.
// Before step 1 it refuses a run directory (or checkpoint directory) that
// holds another run unless continuing or forced, and checks that checkpoints
// can be written (ENT_ERR_IO naming the directory).
ent_status ent_train(const ent_config *cfg, const ent_train_opts *opts, ent_comm_t *comm);

// ---------------------------------------------------------------------------
// the trainer object: everything one site's inner loop holds (grid, data,
// model, optimizer, checkpoint saver, run directory). `entente train` is a
// short loop over it; an outer loop (rounds of inner steps, then a merge that
// replaces the parameters and keeps or resets the optimizer) drives the same
// object.

typedef struct ent_trainer ent_trainer_t;

typedef struct {
    int step;                 // the step just taken (1-based)
    double loss, grad_norm;   // global mean loss, gradient norm before clipping
    double lr;                // the rate it was taken at
    double seconds, tokens_per_s;
} ent_step_stats;

// Sets up a run on every rank: layout, data, model, optimizer, the resume
// (opts->resume), the checkpoint saver (checked writable before step 1) and
// the leader's run directory, refusing one that holds another run (see
// ent_train). Collective; the caller owns *out (ent_trainer_free).
ent_status ent_trainer_new(const ent_config *cfg, const ent_train_opts *opts, ent_comm_t *comm,
                           ent_trainer_t **out);
void ent_trainer_free(ent_trainer_t **tr);
// Optimizer steps done (a resumed run starts at its checkpoint's step).
int ent_trainer_steps_done(const ent_trainer_t *tr);
// 1 when the run continues from a checkpoint.
int ent_trainer_resumed(const ent_trainer_t *tr);
// The model (its arenas are the backend's memory); not owned by the caller.
ent_model_t *ent_trainer_model(ent_trainer_t *tr);
// The step the learning-rate schedule decays to (default train.steps).
void ent_trainer_set_horizon(ent_trainer_t *tr, int total_steps);
// One optimizer step: this rank's micro-batches, gradient synchronisation
// over the DP group, clipping, AdamW; writes the step's metrics record and
// progress line (a failed write is held for the next sync). Collective: every
// rank returns the same status (divergence is ENT_ERR_INPUT on every rank).
ent_status ent_trainer_step(ent_trainer_t *tr, ent_step_stats *out);
// The validation loss at the current step (NaN without validation shards),
// recorded in metrics.jsonl. Collective.
ent_status ent_trainer_eval(ent_trainer_t *tr, double *val_loss);
// A sample from the prompt, to the terminal and samples.txt. Collective.
ent_status ent_trainer_sample(ent_trainer_t *tr);
// The one sync point, at a step or a round boundary: the ranks agree on
// `local` and on any held write failure (a failing rank keeps its message,
// the others name it), then on stop requests: *stop_signal (may be NULL) is
// the signal any rank received, 0 for none.
ent_status ent_trainer_sync(ent_trainer_t *tr, ent_status local, int *stop_signal);
// A merge's new parameters: params is this rank's parameter arena in host
// memory (ent_model_arena_floats floats laid out as its table: its
// tensor-parallel part), written through the backend; every DP replica must
// be given the same. Waits first for an asynchronous save's copy. The step,
// the schedule, the data cursor and the optimizer state are unchanged.
ent_status ent_trainer_set_params(ent_trainer_t *tr, const float *params);
// A merge that resets AdamW: every rank zeroes the moments it keeps (its
// shard under ZeRO-1) and the update count, so the next step's bias
// correction starts again at t = 1; the step, the learning-rate schedule and
// the data cursor go on. Waits first for an asynchronous save's copy. Every
// rank calls it at the same point; no communication.
ent_status ent_trainer_reset_optimizer(ent_trainer_t *tr);
// Saves a checkpoint of the current step (checkpoint.on_error decides whether
// a failure stops the run). Collective.
ent_status ent_trainer_save(ent_trainer_t *tr);
// Ends the run: saves the current step unless saved since its last change
// (a step, new parameters, a reset), waits for the saver, writes the end
// record and the summary; ENT_STOPPED when stopped_by (a signal) ended it
// early. Collective.
ent_status ent_trainer_finish(ent_trainer_t *tr, int stopped_by);

// The ETA of the progress line: the mean wall-clock time of the last
// ENT_ETA_WINDOW steps, so that one slow or fast step hardly moves it.
#define ENT_ETA_WINDOW 32
typedef struct {
    double seconds[ENT_ETA_WINDOW];
    int count, next;
} ent_eta;

// Records the wall-clock seconds of one step (evaluations and saves included).
void ent_eta_add(ent_eta *eta, double step_seconds);
// Seconds that steps_left more steps will take; NAN before the first step.
double ent_eta_remaining(const ent_eta *eta, int steps_left);
// The checkpoint directory of a run: checkpoint.dir, or RUN_DIR/checkpoints.
void ent_checkpoint_dir(const ent_config *cfg, const char *run_dir, char *out, size_t n);
// Loads a configuration from the text stored in a checkpoint, then overrides.
ent_status ent_config_load_text(ent_config *cfg, const char *text, const char *origin,
                                const char *const *overrides, int n_overrides);

// The mean loss over the first `want` sequences of val (fewer if it holds
// fewer), in chunks of micro sequences (at most the model's micro-batch),
// shared out among the ranks of dp (NULL: this rank alone). inputs and
// targets are micro x context host buffers. Collective over dp.
ent_status ent_eval_loss(ent_model_t *model, const ent_dataset_t *val, int64_t want, int micro,
                         ent_group_t *dp, int32_t *inputs, int32_t *targets, double *out);
// `entente eval`: the validation loss of a checkpoint's model on this process's
// CPU, over batches x train.batch_size validation sequences (batches <= 0:
// the checkpoint's eval.batches) of data_dir (NULL: the checkpoint's
// data.dir), written as one line to out.
ent_status ent_eval_checkpoint(const char *path, const char *data_dir, int batches, FILE *out);
// `entente ckpt import`: the Hugging Face model in dir (config.json and
// model.safetensors or its sharded index; GPT-2 or the Llama family) as an entente checkpoint at
// step 0 with no AdamW moments, written to out (which must not exist unless
// force); what was skipped and what was written go to log (may be NULL).
ent_status ent_import_hf(const char *dir, const char *out, int force, FILE *log);
// `entente ckpt export`: the checkpoint's parameters as a Hugging Face model
// directory (model.safetensors and config.json) for its architecture.
ent_status ent_export_hf(const char *path, const char *outdir, FILE *out);
// Loads the model of a checkpoint (any layout it was saved with) on a new CPU
// backend, for micro-batches of B sequences. The caller owns *be and *model.
ent_status ent_model_from_checkpoint(const char *path, int B, ent_backend_t **be,
                                     ent_model_t **model);
// The configuration stored in a checkpoint (its `config` text), then overrides.
ent_status ent_config_from_checkpoint(ent_config *cfg, const char *path,
                                      const char *const *overrides, int n_overrides);

// Generates n tokens after a prompt of np tokens (np >= 1) with the model's
// forward pass; temperature 0 picks the most likely token. out gets the n new tokens.
ent_status ent_sample(ent_model_t *model, const int32_t *prompt, int np, int n,
                      double temperature, uint64_t seed, int32_t *out);
// `entente sample --checkpoint`: loads the model of a checkpoint (any layout it
// was saved with) on this process's CPU and writes tokens generated after the
// prompt to out; with logits_path, also the logits of every prompt position.
// The prompt is encoded and the tokens decoded with `tokenizer` (a
// tokenizer.json or its directory; "" = bytes; NULL = the checkpoint's
// data.tokenizer).
ent_status ent_sample_checkpoint(const char *path, const char *prompt, const char *tokenizer,
                                 int tokens, double temperature, uint64_t seed,
                                 const char *logits_path, FILE *out);
// The ids a sample starts from: the end-of-text token (256) then the prompt's
// bytes, or with a tokenizer its document token then the prompt encoded.
// *ids (owned by the caller) gets *n ids; ENT_ERR_USAGE when an id reaches vocab.
ent_status ent_prompt_encode(ent_tokenizer_t *tok, const char *prompt, int vocab, int32_t **ids,
                             int *n);
// Writes tokens as text: with a tokenizer, what they decode to (an id outside
// it as [id]); byte-level ones with end-of-text shown as a line
// "<|endoftext|>" and control bytes as '?'; other vocabularies as ids.
void ent_tokens_print(FILE *f, const ent_tokenizer_t *tok, const int32_t *tokens, int n,
                      int vocab);

// Formats a byte count as "1.23 GiB" into buf (n bytes) and returns buf.
const char *ent_format_bytes(double bytes, char *buf, size_t n);

// ===========================================================================
// the coalition's round math (runtime/coalition/, docs/coalition.md)
//
// Plain functions over host float arrays laid out as the parameter table's
// arena (a caller whose backend keeps the arena elsewhere copies it to the
// host first): the pseudo-gradient, delta compression with error feedback,
// the merge of the sites' deltas, the outer Nesterov step and the anchor's
// hash. No MPI, no ZeroMQ: the coordinator, the sites and the tests call the
// same code. Every result is bit-reproducible: it depends neither on the
// thread count nor on the order in which the sites' deltas arrived, so every
// copy of the anchor that applies the same encoded update stays bit-identical.

// ---- codecs: how a delta travels ----
typedef enum {
    ENT_CODEC_INT8 = 1, // blockwise int8, one f32 scale (max|x| / 127) per block: the default
    ENT_CODEC_INT4 = 2, // blockwise int4 in [-7, 7], two values per byte, one f32 scale per block
    ENT_CODEC_TOPK = 3, // the k largest magnitudes of each block, packed positions, 2 bits
                        // each (sign, and one of the block's two magnitudes lo <= hi)
} ent_codec_kind;

#define ENT_CODEC_INT8_BLOCK 256  // default values per int8 block
#define ENT_CODEC_INT4_BLOCK 128  // default values per int4 block (must be even)
#define ENT_CODEC_TOPK_BLOCK 1024 // default values per top-k block
#define ENT_CODEC_TOPK_K 16       // default values top-k keeps per block (1/64)
#define ENT_CODEC_MAX_BLOCK (1u << 20)
#define ENT_CODEC_HEADER_BYTES 24 // magic, version, codec, count, block, k
#define ENT_CODEC_VERSION 1

typedef struct {
    ent_codec_kind kind;
    uint32_t block; // values per block, 1..ENT_CODEC_MAX_BLOCK (the last block may be shorter)
    uint32_t k;     // top-k: values kept per block, 1..block (a shorter last block keeps
                    // min(k, its length)); 0 for the other codecs
} ent_codec;

// The codec's default settings (the block sizes and k above).
ent_codec ent_codec_default(ent_codec_kind kind);
// "int8", "int4" or "topk" with their defaults; another name is ENT_ERR_USAGE
// naming the known ones.
ent_status ent_codec_parse(const char *name, ent_codec *out);
// "int8", "int4", "topk"; "invalid" for another value.
const char *ent_codec_name(ent_codec_kind kind);
// ENT_ERR_USAGE with the reason when the settings are out of range.
ent_status ent_codec_check(const ent_codec *codec);
// The exact size in bytes of n values encoded with codec (header included);
// ENT_ERR_USAGE for bad settings or a size that does not fit in size_t.
ent_status ent_codec_encoded_size(const ent_codec *codec, size_t n, size_t *bytes);
// Encodes x (n host floats) into out (cap bytes; at least the encoded size):
// a self-describing buffer, the same bytes for the same input on every run
// and thread count. *len gets its size. A non-finite value (or one so large
// that its block's decoded values would overflow) is ENT_ERR_INPUT naming it.
ent_status ent_codec_encode(const ent_codec *codec, const float *x, size_t n, void *out,
                            size_t cap, size_t *len);
// Error feedback: encodes v = delta + residual into out and keeps what the
// encoding lost for the next round: residual becomes v - D(out), D being
// ent_codec_decode of the bytes sent, so the sum of everything decoded tracks
// the sum of the true deltas. delta is the caller's scratch (overwritten). On
// failure residual is unchanged.
ent_status ent_codec_encode_feedback(const ent_codec *codec, float *delta, float *residual,
                                     size_t n, void *out, size_t cap, size_t *len);
// Reads and checks an encoded buffer's header (magic, version, codec, settings,
// and that len is exactly the size they imply); codec and n may be NULL.
ent_status ent_codec_read_header(const void *buf, size_t len, ent_codec *codec, uint64_t *n);
// Decodes an encoded buffer of n values into out. Every byte is checked before
// anything is written (header, length, scales finite and in range, codes,
// positions in range and increasing, padding bits zero): a damaged or hostile
// buffer is ENT_ERR_INPUT with the reason and out is untouched; a decoded
// buffer holds only finite values.
ent_status ent_codec_decode(const void *buf, size_t len, float *out, size_t n);
// The same checks, then y += alpha * D(buf) (y untouched on failure). With
// alpha = -1 it applies an outer update exactly as every other copy does.
ent_status ent_codec_decode_axpy(const void *buf, size_t len, float alpha, float *y, size_t n);

// ---- the round ----
// The pseudo-gradient: delta = anchor - local (n host floats; delta may alias either).
ent_status ent_pseudo_gradient(const float *anchor, const float *local, float *delta, size_t n);

// One site's contribution to a round, for ent_coalition_merge: its delta as
// an encoded buffer, or (encoded NULL) as host floats.
typedef struct {
    uint32_t site;       // the site's id: deltas are summed in increasing id order
    uint64_t tokens;     // tokens it trained on this round: its weight is tokens / total
    const void *encoded; // its encoded delta (ent_codec_encode) of encoded_len bytes...
    size_t encoded_len;
    const float *values; // ...or, when encoded is NULL, its delta as n floats
} ent_site_delta;

// The token-weighted mean of the sites' deltas: out = sum_i w_i * D_i with
// w_i = (float)(tokens_i / total) (the quotient in double), summed in
// increasing site id, so out is bit-identical whatever order the deltas are
// given in. Every encoded delta is checked first; a bad one, a repeated site
// id or no tokens at all is ENT_ERR_INPUT naming the site, and out is untouched.
ent_status ent_coalition_merge(const ent_site_delta *deltas, int count, float *out, size_t n);

// The outer optimizer: SGD with Nesterov momentum on the anchor.
typedef struct {
    float lr;       // outer learning rate, > 0 (default 0.7)
    float momentum; // Nesterov momentum mu, in [0, 1) (default 0.9)
} ent_outer_opt;

#define ENT_OUTER_LR 0.7f
#define ENT_OUTER_MOMENTUM 0.9f

// lr 0.7, momentum 0.9 (DiLoCo's settings).
ent_outer_opt ent_outer_defaults(void);
// The outer update from the merged pseudo-gradient g, element by element in
// float: m = mu * m + g; update = lr * (g + mu * m). update may alias g.
// The anchor then moves by anchor -= update (ent_outer_nesterov_step, or
// ent_codec_decode_axpy(-1) of the update as encoded for the sites).
// ENT_ERR_USAGE for lr <= 0 or not finite, or mu outside [0, 1).
ent_status ent_outer_nesterov_update(const ent_outer_opt *opt, float *momentum, const float *g,
                                     float *update, size_t n);
// The whole outer step without compression: m = mu * m + g;
// anchor -= lr * (g + mu * m).
ent_status ent_outer_nesterov_step(const ent_outer_opt *opt, float *anchor, float *momentum,
                                   const float *g, size_t n);

// A 64-bit hash of n floats' bytes (anchor_hash in metrics and messages): the
// hash the trainer compares DP replicas with, so equal hashes mean the same
// bits (0.0 and -0.0 differ).
uint64_t ent_anchor_hash(const float *x, size_t n);

// ---- the coalition's services (docs/coalition.md, "Rounds") ----

// `entente train` with coalition.coordinator set: this job is a site of that
// coalition. Its leader joins (HELLO), every rank starts from the
// coordinator's anchor, and it trains coalition.rounds rounds of the inner
// steps each ROUND_PLAN gives, sending each round's compressed delta and
// applying each outer update one round late; at the end its model is the
// coalition's anchor. Collective.
ent_status ent_coalition_site(const ent_config *cfg, const ent_train_opts *opts,
                              ent_comm_t *comm);
// `entente coordinator`: binds coalition.bind (or coalition.coordinator),
// writes RUN_DIR/endpoint, waits for coalition.sites sites, runs
// coalition.rounds rounds (merge by tokens, outer Nesterov step, compressed
// update to every site), evaluates the anchor on data.dir's validation
// shards, writes RUN_DIR/metrics.jsonl and saves the anchor's checkpoint.
// One process; refuses a run directory that holds a run unless opts->force
// or opts->continues. opts->resume: a coordinator's checkpoint to continue
// the coalition from (docs/coalition.md, "A coordinator that restarts").
ent_status ent_coordinator_run(const ent_config *cfg, const ent_train_opts *opts);
// `entente ledger`: the coalition ledger text read from checkpoint path,
// checked field by field, written to out as a table (one row per site) or,
// with json, as the stored JSON. ENT_ERR_INPUT naming path when text is empty
// (no ledger) or malformed.
ent_status ent_ledger_print(const char *path, const char *text, int json, FILE *out);

// ===========================================================================

// ---------------------------------------------------------------------------
// the command line

// `entente ARGS...`: the whole CLI; returns the process exit code.
int ent_cli_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif // ENT_RUNTIME_H
