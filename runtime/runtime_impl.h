// runtime_impl.h: private to runtime/.
#ifndef ENT_RUNTIME_IMPL_H
#define ENT_RUNTIME_IMPL_H

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
uint64_t ent_hash64(uint64_t x);      // splitmix64 finaliser
uint64_t ent_hash_string(const char *s, uint64_t seed);
uint64_t ent_hash_bytes(const void *data, size_t n, uint64_t seed);

// ---- data ----
// Files in dir matching the glob pattern, sorted; *paths is owned by the caller
// (ent_free_paths). Returns the count, 0 when none match, or -1 (error recorded)
// when dir cannot be read.
int ent_glob_shards(const char *dir, const char *pattern, char ***paths);
void ent_free_paths(char **paths, int n);

// ---- JSON lines (metrics.c): every record of metrics.jsonl and run.json ----
typedef enum { ENT_JSON_NUMBER, ENT_JSON_INT, ENT_JSON_STRING, ENT_JSON_BOOL } ent_json_kind;
typedef struct {
    const char *key;
    ent_json_kind kind;
    double num;      // NUMBER (NaN and Inf are written as null)
    long long i;     // INT, BOOL
    const char *s;   // STRING (NULL is written as null)
} ent_json_field;
#define ENT_JNUM(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_NUMBER, .num = (v)})
#define ENT_JINT(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_INT, .i = (long long)(v)})
#define ENT_JSTR(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_STRING, .s = (v)})
#define ENT_JBOOL(k, v) ((ent_json_field){.key = (k), .kind = ENT_JSON_BOOL, .i = !!(v)})

// Writes the n fields as one JSON object on one line, then a newline.
void ent_json_line(FILE *f, const ent_json_field *fields, int n);

#endif // ENT_RUNTIME_IMPL_H
