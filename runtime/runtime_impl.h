// runtime_impl.h: private to runtime/.
#ifndef ENT_RUNTIME_IMPL_H
#define ENT_RUNTIME_IMPL_H

#include "ent_ckpt.h"
#include "ent_runtime.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// ---- random numbers (xoshiro256**, seeded through splitmix64) ----
typedef struct {
    uint64_t s[4];
} ent_rng;

void ent_rng_seed(ent_rng *rng, uint64_t seed);
uint64_t ent_rng_next(ent_rng *rng);
double ent_rng_uniform(ent_rng *rng); // [0, 1)
double ent_rng_normal(ent_rng *rng);  // N(0, 1)
// Seconds on the monotonic clock (for intervals).
double ent_now_seconds(void);
uint64_t ent_hash64(uint64_t x);      // splitmix64 finaliser
uint64_t ent_hash_string(const char *s, uint64_t seed);
uint64_t ent_hash_bytes(const void *data, size_t n, uint64_t seed);

// ---- the model's activations (model.c) ----
// Described like the parameter table: one row per buffer that the forward and
// backward passes keep on the device, with its name, element type, element
// count and offset, in bytes, into one of two arenas (the activations; the
// activation gradients, one layer's worth). A row takes
// ent_arena_bytes(dtype, numel) bytes, so each starts on an ENT_ARENA_ALIGN
// boundary, and an arena's size is the sum of its rows'. The model carves its
// views from the table and sizes its memory estimate by it.
typedef enum { ENT_ACTS = 0, ENT_ACT_GRADS } ent_act_arena;

typedef struct {
    char name[32];        // "h.3.attn.qkv", "logits", "grad.mlp.fc", ...
    ent_act_arena arena;
    ent_dtype dtype;      // the table's float type; i32 token ids; u8 attention state
    size_t numel;
    size_t offset;        // bytes into its arena
} ent_act_row;

typedef struct {
    ent_act_row *rows;
    int nrows;
    size_t bytes[2];      // of each arena, by ent_act_arena
} ent_act_table;

// The activations of one of tp tensor-parallel ranks (tp divides the heads:
// ent_param_table_build checks it) of a model of shape s for micro-batches
// of B x T tokens, with its floating-point activations in dtype
// (ENT_ERR_USAGE when that is not a floating type). The attention state is
// the backend's (attention_state_bytes), kept as bytes. The model runs f32
// activations only (ent_model_new refuses others); another dtype sizes an
// estimate. The caller owns the table (ent_act_table_free).
ent_status ent_act_table_build(ent_backend_t *be, const ent_model_shape *s, int tp, int B, int T,
                               ent_dtype dtype, ent_act_table *t);
void ent_act_table_free(ent_act_table *t);
// Bytes a model with these tables needs on its device: parameters, gradients
// and the two AdamW moments, activations and their gradients.
// ent_model_memory_bytes is this for the f32 tables of a shape.
size_t ent_model_memory_bytes_of(const ent_param_table *params, const ent_act_table *acts);

// ---- files Entente reads ----
// Opens path read-only after checking that it is a regular file: a FIFO,
// socket, device or directory is refused before it is opened for reading (a
// FIFO would block, a device never end), and the descriptor is checked again
// (fstat) against a swap since. Errors are `bad` and read "cannot read WHAT
// PATH: why" or "WHAT PATH is a FIFO (named pipe), not a regular file".
// *fd is the caller's to close.
ent_status ent_open_regular(const char *path, const char *what, ent_status bad, int *fd);
// The same check for a file another library opens (HDF5): opened and closed.
ent_status ent_check_regular(const char *path, const char *what, ent_status bad);

// ---- numbers (config values and command-line options) ----
// Strict decimal readings: spaces around are allowed; empty text, trailing
// junk, overflow, a sign on an unsigned number, hexadecimal, inf and nan are
// not. Return 0 with *out set, or -1. Ranges are the caller's to check.
int ent_parse_i64(const char *text, long long *out);
int ent_parse_u64(const char *text, uint64_t *out);
int ent_parse_f64(const char *text, double *out);

// ---- configuration ----
// Sets section.key from text, range-checked by the key table as a config file
// is; a bad value fails with status `bad` and "ORIGIN section.key: why" (for
// values that come from elsewhere than a config, e.g. a checkpoint's
// attributes). The key must exist.
ent_status ent_config_set_key(ent_config *cfg, const char *section, const char *key,
                              const char *text, const char *origin, ent_status bad);

// ---- data ----
// Files in dir matching the glob pattern, sorted; *paths is owned by the caller
// (ent_free_paths). Returns the count, 0 when none match, or -1 (error recorded)
// when dir cannot be read.
int ent_glob_shards(const char *dir, const char *pattern, char ***paths);
void ent_free_paths(char **paths, int n);
// Refuses (ENT_ERR_USAGE, naming the shard and both patterns) a file of dir
// that both patterns match, by name or through a link: validation must not
// measure data the run trains on.
ent_status ent_data_check_split(const char *dir, const char *train_pattern,
                                const char *val_pattern);

// ---- JSON lines (metrics.c): every record of metrics.jsonl and run.json ----
typedef enum {
    ENT_JSON_NUMBER,
    ENT_JSON_INT,
    ENT_JSON_STRING,
    ENT_JSON_BOOL,
    ENT_JSON_RAW, // s is JSON text the caller built (an array), written as it is
} ent_json_kind;
typedef struct {
    const char *key;
    ent_json_kind kind;
    double num;      // NUMBER (NaN and Inf are written as null)
    long long i;     // INT, BOOL
    const char *s;   // STRING (NULL is written as null), RAW
} ent_json_field;
#define ENT_JNUM(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_NUMBER, .num = (v)})
#define ENT_JINT(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_INT, .i = (long long)(v)})
#define ENT_JSTR(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_STRING, .s = (v)})
#define ENT_JRAW(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_RAW, .s = (v)})
#define ENT_JBOOL(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_BOOL, .i = !!(v)})

// Writes the n fields as one JSON object on one line, then a newline.
void ent_json_line(FILE *f, const ent_json_field *fields, int n);

// ---- checkpoints of a training run (ckpt_state.c) ----
// The configuration stored in an open checkpoint (its `config` text), then
// overrides; messages name the file as FILE:config.
ent_status ent_config_from_open_checkpoint(ent_ckpt_t *ck, ent_config *cfg,
                                           const char *const *overrides, int n_overrides);
// A hash of the model's shape (model.shape_hash in a checkpoint).
uint64_t ent_model_shape_hash(const ent_config *cfg);

// What a checkpoint's root attributes record of a training state (besides
// the configuration and model the config gives): the trainer's, or the
// coordinator's anchor (step 0, nothing consumed).
typedef struct {
    int64_t step, updates, consumed, sequences;
    int world, dp, tp;
} ent_run_state;

#define ENT_RUN_ATTRS_MAX 32
typedef struct {
    ent_ckpt_attr attrs[ENT_RUN_ATTRS_MAX];
    int count;
    char *config; // the configuration's text, which attribute `config` points at
} ent_run_attrs;

// The root attributes ent_checkpoint_check expects of a checkpoint of cfg in
// state rs; the caller frees them with ent_run_attrs_free.
ent_status ent_run_attrs_build(ent_run_attrs *ra, const ent_config *cfg, const ent_run_state *rs);
void ent_run_attrs_free(ent_run_attrs *ra);
// What a resume takes from a checkpoint, once checked.
typedef struct {
    ent_config cfg;         // the configuration it was trained with (attribute `config`)
    int64_t step, consumed; // steps done, sequences consumed (the data cursor)
    int64_t updates;        // AdamW's update count (optim.updates), 0..step
} ent_ckpt_state;
// Checks every attribute a resume relies on (range and consistency: the
// model.* attributes against the stored configuration, step within its
// train.steps, AdamW's update count within the step, the data cursor,
// tokens, epoch, seeds, the saving layout), or fails naming the file, the
// attribute and the accepted value or range (ENT_ERR_INPUT); fills *out and
// *table (the rows at global shapes; the caller frees it).
ent_status ent_checkpoint_check(ent_ckpt_t *ck, ent_ckpt_state *out, ent_param_table *table);
// A checkpoint's model (theirs: its stored configuration, once checked)
// against cfg's: ENT_ERR_USAGE naming path and every model.* key that
// differs (a llama's context may differ).
ent_status ent_check_same_model(const ent_config *cfg, const char *path, const ent_config *theirs);
// The same as an ent_ckpt_expect_fn, for `ckpt verify` (ctx unused).
ent_status ent_checkpoint_expect(ent_ckpt_t *ck, void *ctx, ent_param_table *table);

// ---- the trainer, as the coalition's round driver sees it (trainer.c) ----
const ent_grid *ent_trainer_grid(const ent_trainer_t *tr);
int ent_trainer_is_leader(const ent_trainer_t *tr);
double ent_trainer_elapsed(const ent_trainer_t *tr); // seconds since set-up ended
int64_t ent_trainer_tokens(const ent_trainer_t *tr); // tokens trained on since the start
// One metrics record from the leader (others: nothing); a failed write is
// held for the next sync, as a step's.
ent_status ent_trainer_record(ent_trainer_t *tr, const ent_json_field *fields, int n);
// This rank's parameter arena into host memory (ent_model_arena_floats floats).
ent_status ent_trainer_params_to_host(ent_trainer_t *tr, float *host);
// The coalition state checkpoints hold from now on (c's arrays must stay
// valid and unchanged until the next call; NULL: none), and the site and
// round each step record names. Waits first for an asynchronous save's copy,
// so the caller may refill c's arrays once it returns.
void ent_trainer_set_coalition(ent_trainer_t *tr, const ent_ckpt_coalition *c, const char *site,
                               int round);

#endif // ENT_RUNTIME_IMPL_H
