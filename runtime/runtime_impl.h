// runtime_impl.h: private to runtime/.
#ifndef ENT_RUNTIME_IMPL_H
#define ENT_RUNTIME_IMPL_H

#include "ent_ckpt.h"
#include "ent_runtime.h"

#include <stddef.h>
#include <stdint.h>

// ---- random numbers (xoshiro256**, seeded through splitmix64) ----
typedef struct {
    uint64_t s[4];
} ent_rng;

void ent_rng_seed(ent_rng *rng, uint64_t seed);
uint64_t ent_rng_next(ent_rng *rng);
double ent_rng_uniform(ent_rng *rng); // [0, 1)
double ent_rng_normal(ent_rng *rng);  // N(0, 1)
uint64_t ent_hash64(uint64_t x);      // splitmix64 finaliser
uint64_t ent_hash_string(const char *s, uint64_t seed);
uint64_t ent_hash_bytes(const void *data, size_t n, uint64_t seed);

// ---- data ----
// Files in dir matching the glob pattern, sorted; *paths is owned by the caller
// (ent_free_paths). Returns the count, 0 when none match, or -1 (error recorded)
// when dir cannot be read.
int ent_glob_shards(const char *dir, const char *pattern, char ***paths);
void ent_free_paths(char **paths, int n);

// The key of the data order, from train.seed (rng.data_order_key in a checkpoint).
uint64_t ent_data_order_key(uint64_t seed);

// ---- checkpoints of a training run (ckpt_state.c) ----
// A hash of the model's shape (model.shape_hash in a checkpoint).
uint64_t ent_model_shape_hash(const ent_config *cfg);
// What a resume takes from a checkpoint, once checked.
typedef struct {
    ent_config cfg;         // the configuration it was trained with (attribute `config`)
    int64_t step, consumed; // steps done, sequences consumed (the data cursor)
} ent_ckpt_state;
// Checks every attribute a resume relies on (range and consistency: the
// model.* attributes against the stored configuration, step within its
// train.steps, the data cursor, tokens, epoch, seeds, the saving layout), or
// fails naming the file, the attribute and the accepted value or range
// (ENT_ERR_INPUT); fills *out and *table (the rows at global shapes; the
// caller frees it).
ent_status ent_checkpoint_check(ent_ckpt_t *ck, ent_ckpt_state *out, ent_param_table *table);
// The same as an ent_ckpt_expect_fn, for `ckpt verify` (ctx unused).
ent_status ent_checkpoint_expect(ent_ckpt_t *ck, void *ctx, ent_param_table *table);

#endif // ENT_RUNTIME_IMPL_H
