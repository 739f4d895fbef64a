// config.c: the INI configuration.
//
// One table of keys is the single source of truth: it sets the defaults,
// parses and range-checks values, prints `entente train --help`, and writes
// the effective configuration into the run directory. docs/config.md mirrors
// it (a test checks that every key and default appears there).
#include "runtime_impl.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { K_INT, K_FLOAT, K_BOOL, K_STR, K_U64 } key_type;

typedef struct {
    const char *section, *key;
    key_type type;
    size_t offset, size;
    const char *def;
    double lo, hi;      // accepted range (numbers)
    int lo_open;        // 1: lo itself is not accepted
    const char *help;
} key_desc;

#define FIELD(f) offsetof(ent_config, f), sizeof(((ent_config *)0)->f)
#define BIG 1e9

static const key_desc keys[] = {
    {"model", "layers", K_INT, FIELD(layers), "4", 1, 1024, 0, "transformer blocks"},
    {"model", "heads", K_INT, FIELD(heads), "4", 1, 1024, 0, "attention heads per block; must divide width"},
    {"model", "width", K_INT, FIELD(width), "128", 1, 65536, 0, "embedding width (channels)"},
    {"model", "context", K_INT, FIELD(context), "128", 1, 65536, 0, "tokens per sequence (and learned positions)"},
    {"model", "vocab", K_INT, FIELD(vocab), "257", 2, ENT_VOCAB_MAX, 0, "vocabulary size; 257 = bytes + end-of-text; a BPE tokenizer's is what data prepare prints"},
    {"model", "arch", K_STR, FIELD(arch), "gpt2", 0, 0, 0, "architecture: gpt2 (layernorm, learned positions, GELU MLP, biases, tied embeddings) or llama (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, no biases; docs/open-weights.md)"},
    {"model", "n_kv_heads", K_INT, FIELD(n_kv_heads), "0", 0, 1024, 0, "llama: key/value heads (grouped-query attention), dividing model.heads; 0 = model.heads"},
    {"model", "ffn_hidden", K_INT, FIELD(ffn_hidden), "0", 0, 1048576, 0, "llama: hidden units of the SwiGLU MLP (Hugging Face's intermediate_size); 0 = 8/3 x width rounded up to a multiple of 32"},
    {"model", "tie_embeddings", K_BOOL, FIELD(tie_embeddings), "false", 0, 0, 0, "llama: the output layer lm_head is model.embed_tokens (GPT-2's are always tied)"},
    {"model", "rope_theta", K_FLOAT, FIELD(rope_theta), "10000", 0, 1e12, 1, "llama: base of the rotary embeddings' wavelengths (rope_theta)"},
    {"model", "rms_eps", K_FLOAT, FIELD(rms_eps), "1e-5", 0, 1, 1, "llama: epsilon of RMSNorm (rms_norm_eps)"},
    {"model", "rope_scaling", K_STR, FIELD(rope_scaling), "none", 0, 0, 0, "llama: none, or llama3 (Llama 3.1's frequency bands, set by the four rope_* keys below)"},
    {"model", "rope_factor", K_FLOAT, FIELD(rope_factor), "8", 0, 1e6, 1, "llama3 scaling: long wavelengths are divided by this (rope_scaling.factor)"},
    {"model", "rope_low_freq_factor", K_FLOAT, FIELD(rope_low_freq_factor), "1", 0, 1e6, 1, "llama3 scaling: wavelengths above original_context / this are scaled fully (low_freq_factor)"},
    {"model", "rope_high_freq_factor", K_FLOAT, FIELD(rope_high_freq_factor), "4", 0, 1e6, 1, "llama3 scaling: wavelengths below original_context / this are kept (high_freq_factor); above rope_low_freq_factor"},
    {"model", "rope_original_context", K_INT, FIELD(rope_original_context), "8192", 1, 16777216, 0, "llama3 scaling: the context the model was first trained with (original_max_position_embeddings)"},

    {"train", "steps", K_INT, FIELD(steps), "1000", 1, BIG, 0, "optimizer steps"},
    {"train", "batch_size", K_INT, FIELD(batch_size), "32", 1, BIG, 0, "sequences per optimizer step, whole job"},
    {"train", "micro_batch", K_INT, FIELD(micro_batch), "0", 0, BIG, 0, "sequences per forward/backward on a rank; 0 = batch_size / data-parallel ranks (no accumulation)"},
    {"train", "lr", K_FLOAT, FIELD(lr), "0.001", 0, 10, 0, "peak learning rate"},
    {"train", "lr_floor", K_FLOAT, FIELD(lr_floor), "0.1", 0, 1, 0, "final learning rate, as a fraction of lr (cosine decay)"},
    {"train", "warmup_steps", K_INT, FIELD(warmup_steps), "100", 0, BIG, 0, "steps of linear warm-up; more than train.steps is lowered to a tenth of the run, with a warning"},
    {"train", "weight_decay", K_FLOAT, FIELD(weight_decay), "0.1", 0, 10, 0, "AdamW decoupled weight decay (matrices and embeddings only)"},
    {"train", "beta1", K_FLOAT, FIELD(beta1), "0.9", 0, 0.999999, 0, "AdamW first-moment decay"},
    {"train", "beta2", K_FLOAT, FIELD(beta2), "0.95", 0, 0.999999, 0, "AdamW second-moment decay"},
    {"train", "eps", K_FLOAT, FIELD(eps), "1e-8", 0, 1, 1, "AdamW epsilon"},
    {"train", "grad_clip", K_FLOAT, FIELD(grad_clip), "1.0", 0, 1e6, 0, "clip the global gradient norm to this; 0 = off"},
    {"train", "seed", K_U64, FIELD(seed), "1337", 0, 0, 0, "seed of initialisation and data order"},
    {"train", "log_every", K_INT, FIELD(log_every), "1", 1, BIG, 0, "keep a progress line every this many steps (on a terminal, a status line shows every step)"},

    {"eval", "every", K_INT, FIELD(eval_every), "100", 0, BIG, 0, "validation loss every this many steps (and at the start and end); 0 = start and end only"},
    {"eval", "batches", K_INT, FIELD(eval_batches), "4", 1, BIG, 0, "batches of validation data per evaluation (train.batch_size sequences each, the same set whatever the number of ranks)"},

    {"sample", "every", K_INT, FIELD(sample_every), "0", 0, BIG, 0, "print generated text every this many steps; 0 = at the end only"},
    {"sample", "tokens", K_INT, FIELD(sample_tokens), "256", 0, 1000000, 0, "tokens generated per sample; 0 = no samples"},
    {"sample", "temperature", K_FLOAT, FIELD(sample_temperature), "0.8", 0, 100, 0, "softmax temperature; 0 = always the most likely token"},
    {"sample", "seed", K_U64, FIELD(sample_seed), "42", 0, 0, 0, "seed of the sampler"},
    {"sample", "prompt", K_STR, FIELD(sample_prompt), "", 0, 0, 0, "text the sample continues; empty = start of a document"},

    {"data", "dir", K_STR, FIELD(data_dir), "", 0, 0, 0, "directory of token shards (entente data prepare); required"},
    {"data", "tokenizer", K_STR, FIELD(data_tokenizer), "", 0, 0, 0, "the tokenizer.json (or its directory) the shards were prepared with (data prepare --tokenizer): it encodes sample.prompt and decodes samples; empty = bytes"},
    {"data", "train_pattern", K_STR, FIELD(train_pattern), "*train*.bin", 0, 0, 0, "glob of training shards in dir"},
    {"data", "val_pattern", K_STR, FIELD(val_pattern), "*val*.bin", 0, 0, 0, "glob of validation shards in dir; none found = no validation"},
    {"data", "shuffle", K_BOOL, FIELD(shuffle), "true", 0, 0, 0, "visit sequences in a seeded order, new each epoch"},

    {"parallel", "tp", K_INT, FIELD(tp), "1", 1, 1024, 0, "tensor-parallel ranks; must divide heads and the world size"},
    {"parallel", "zero", K_INT, FIELD(zero), "0", 0, 1, 0, "1 = shard AdamW state across data-parallel ranks (ZeRO-1)"},
    {"parallel", "timeout", K_FLOAT, FIELD(timeout), "600", 0, 1e6, 0, "seconds a rank waits in one collective before it concludes a peer is lost and stops (exit code 3); 0 = wait forever"},

    {"checkpoint", "dir", K_STR, FIELD(ckpt_dir), "", 0, 0, 0, "directory of checkpoints; empty = RUN_DIR/checkpoints"},
    {"checkpoint", "every", K_INT, FIELD(ckpt_every), "0", 0, BIG, 0, "save every this many steps (and always at the end and on SIGTERM/SIGUSR1); 0 = end and signals only"},
    {"checkpoint", "keep", K_INT, FIELD(ckpt_keep), "3", 0, BIG, 0, "keep this many newest checkpoints of this run (another run's are never removed); 0 = all"},
    {"checkpoint", "async", K_BOOL, FIELD(ckpt_async), "false", 0, 0, 0, "write checkpoints from a background thread, which first copies the state to memory beside the next step's forward and backward"},
    {"checkpoint", "on_error", K_STR, FIELD(ckpt_on_error), "stop", 0, 0, 0, "when a save fails (a full disk): stop (exit 1) or continue training"},
    {"checkpoint", "at_start", K_BOOL, FIELD(ckpt_at_start), "false", 0, 0, 0, "also save the initial model as step 0, before the first update (a new run only)"},
    {"coalition", "coordinator", K_STR, FIELD(coal_coordinator), "", 0, 0, 0, "the coordinator's ZeroMQ endpoint, tcp://HOST:PORT: set, train makes this job a site of that coalition; empty = train alone. A site may list up to 4, comma-separated (a primary and its standby): cut off, it tries them in turn"},
    {"coalition", "bind", K_STR, FIELD(coal_bind), "", 0, 0, 0, "the endpoint `entente coordinator` binds (tcp://0.0.0.0:5555; port * = any free one); empty = coalition.coordinator"},
    {"coalition", "site", K_STR, FIELD(coal_site), "", 0, 0, 0, "this site's name: 1-64 of A-Z a-z 0-9 . _ - (required for a site)"},
    {"coalition", "sites", K_INT, FIELD(coal_sites), "1", 1, 4096, 0, "sites the coordinator waits for before round 0; more may join later, up to max_sites"},
    {"coalition", "max_sites", K_INT, FIELD(coal_max_sites), "64", 1, 4096, 0, "the most sites the coordinator admits over the run (at least coalition.sites): later joiners are merged from the round after they join"},
    {"coalition", "rounds", K_INT, FIELD(coal_rounds), "10", 1, 1000000, 0, "outer rounds; a site trains rounds x its inner steps (train.steps is not used)"},
    {"coalition", "inner_steps", K_INT, FIELD(coal_inner_steps), "800", 1, 1048576, 0, "inner AdamW steps per round (H); with round_seconds, the most a site is planned"},
    {"coalition", "round_seconds", K_FLOAT, FIELD(coal_round_seconds), "0", 0, 1e6, 0, "plan each site's inner steps from its measured speed so rounds last this long; 0 = inner_steps for every site"},
    {"coalition", "overlap", K_BOOL, FIELD(coal_overlap), "true", 0, 0, 0, "true: a site goes on training while its delta is merged and applies each update one round late; false: it waits for each round's merge and starts the next round from the new anchor (DiLoCo as published)"},
    {"coalition", "codec", K_STR, FIELD(coal_codec), "int8", 0, 0, 0, "compression of deltas and updates: int8 (blockwise, per-block scales), int4, or topk (1/64 of values, 2 bits each)"},
    {"coalition", "outer_lr", K_FLOAT, FIELD(coal_outer_lr), "0.7", 0, 10, 1, "outer Nesterov SGD learning rate"},
    {"coalition", "outer_momentum", K_FLOAT, FIELD(coal_outer_momentum), "0.9", 0, 0.999999, 0, "outer Nesterov momentum"},
    {"coalition", "eval_rounds", K_INT, FIELD(coal_eval_rounds), "1", 0, 1000000, 0, "the coordinator evaluates the anchor on data.dir's validation shards after every this many rounds (and the last); 0 = the start and the last round only"},
    {"coalition", "timeout", K_FLOAT, FIELD(coal_timeout), "600", 1, 1e6, 0, "seconds a site or the coordinator waits for the other before it gives up (exit 1, naming the peer)"},
    {"coalition", "quorum", K_INT, FIELD(coal_quorum), "1", 1, 4096, 0, "the coordinator merges a round only from at least this many sites' accepted deltas, and stops (exit 1, naming the sites gone) when fewer remain"},
    {"coalition", "lost_after", K_FLOAT, FIELD(coal_lost_after), "60", 1, 1e6, 0, "seconds of silence after which the coordinator declares a site lost and goes on without it (a site whose process dies is lost at once: its connection closes)"},
    {"coalition", "max_staleness", K_INT, FIELD(coal_max_staleness), "4", 0, 1000000, 0, "a site cut off from the coordinator keeps training; on reconnecting, its progress is merged if the anchor it started from is at most this many rounds old, else dropped (it rebases on the current anchor)"},
    {"coalition", "max_norm_ratio", K_FLOAT, FIELD(coal_max_norm_ratio), "10", 0, 1e9, 0, "the coordinator rejects a delta whose norm exceeds this many times the round's lower median (0 = no norm check); deltas that do not decode or are not finite are always rejected"},
    {"coalition", "score_batches", K_INT, FIELD(coal_score_batches), "1", 0, 1000000, 0, "the coordinator scores each delta by the loss change it causes alone, on this many batches of data.dir's validation shards (the held-out set the coalition shares); 0 = no scores"},
    {"coalition", "score_tolerance", K_FLOAT, FIELD(coal_score_tolerance), "0", 0, 1e9, 0, "the coordinator rejects a delta that, applied alone to the anchor, makes the held-out loss worse by more than this (nats per token) beyond the round's median change when that is a loss too; 0 = score only, reject none (docs/coalition.md says why that is the default)"},
    {"coalition", "key", K_STR, FIELD(coal_key), "", 0, 0, 0, "this member's CURVE key pair, NAME.key from entente keygen (a site's NAME is its coalition.site); required unless --insecure"},
    {"coalition", "coordinator_key", K_STR, FIELD(coal_coordinator_key), "", 0, 0, 0, "a site: the coordinator's public key file (its NAME.pub); required unless --insecure. With several coordinator endpoints: one file for all, or one per endpoint, comma-separated in the same order"},
    {"coalition", "standby", K_STR, FIELD(coal_standby), "", 0, 0, 0, "the primary coordinator: the standby coordinator's endpoint (its coalition.bind), to which it streams its state after every merge; empty = no standby. A standby (--standby) given one streams to it once it has taken over (a chain)"},
    {"coalition", "standby_key", K_STR, FIELD(coal_standby_key), "", 0, 0, 0, "the primary (or a standby of a chain): the standby's public key file (NAME.pub); required with coalition.standby unless --insecure"},
    {"coalition", "primary_key", K_STR, FIELD(coal_primary_key), "", 0, 0, 0, "a standby (entente coordinator --standby): the public key file (NAME.pub) of the coordinator that streams to it (the primary; in a chain, the standby before it), the only key whose state it takes; required unless --insecure"},
    {"coalition", "takeover_after", K_FLOAT, FIELD(coal_takeover_after), "10", 0.5, 1e6, 0, "a standby takes over when the primary's connection closes, or when the primary has sent nothing for this many seconds (it sends at least every second)"},
    {"coalition", "allow", K_STR, FIELD(coal_allow), "", 0, 0, 0, "the coordinator: the sites admitted, a directory of their NAME.pub files (or one file); required unless --insecure"},
    {"system", "threads", K_INT, FIELD(threads), "0", 0, 4096, 0, "CPU threads per rank; 0 = OMP_NUM_THREADS or all cores"},
    {"system", "backend", K_STR, FIELD(backend), "cpu", 0, 0, 0, "the device backend that computes: cpu (OpenBLAS + OpenMP); cpu-guarded (the same, its memory locked outside its own calls: for tests, several times slower); cuda (one NVIDIA GPU per rank, the node-local rank's, in a build with the CUDA toolkit; not yet validated on a GPU); or auto (cuda when built with it and a GPU is visible, else cpu)"},
    {"system", "precision", K_STR, FIELD(precision), "auto", 0, 0, 0, "the element type the backend computes in: f32; bf16 (parameters and activations in bf16 with f32 master weights, AdamW moments, gradients of the weights and reductions; the cuda backend only); or auto (bf16 on cuda, f32 on the CPU backends). Checkpoints hold the f32 masters whatever the precision"},
};

#define NKEYS ((int)(sizeof keys / sizeof keys[0]))
_Static_assert(NKEYS <= ENT_CONFIG_MAX_KEYS, "raise ENT_CONFIG_MAX_KEYS");

// ---------------------------------------------------------------------------
// values

static int find_key(const char *section, const char *key) {
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0) return i;
    return -1;
}

static int section_exists(const char *section) {
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0) return 1;
    return 0;
}

static void describe_range(const key_desc *k, char *buf, size_t n) {
    switch (k->type) {
    case K_INT:
        if (k->hi >= BIG) snprintf(buf, n, "an integer >= %.0f", k->lo);
        else snprintf(buf, n, "an integer in %.0f..%.0f", k->lo, k->hi);
        break;
    case K_FLOAT:
        snprintf(buf, n, "a number in %s%g, %g]", k->lo_open ? "(" : "[", k->lo, k->hi);
        break;
    case K_BOOL: snprintf(buf, n, "true or false"); break;
    case K_U64: snprintf(buf, n, "an integer in 0..18446744073709551615"); break;
    case K_STR: snprintf(buf, n, "text of at most %zu bytes", k->size - 1); break;
    }
}

// Undoes the quoting of a "..." value: \n \t \" \\ \; escapes. Returns -1 when
// the value is too long for out, -2 for an opening quote without its closing one.
static int unquote(const char *in, char *out, size_t cap) {
    size_t len = strlen(in), j = 0;
    if (len == 0 || in[0] != '"') {
        if (len >= cap) return -1;
        memcpy(out, in, len + 1);
        return 0;
    }
    if (len < 2 || in[len - 1] != '"' || (len >= 3 && in[len - 2] == '\\' && in[len - 3] != '\\'))
        return -2;
    for (size_t i = 1; i + 1 < len; i++) {
        char c = in[i];
        if (c == '\\' && i + 2 < len) {
            char e = in[++i];
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e;
        }
        if (j + 1 >= cap) return -1;
        out[j++] = c;
    }
    out[j] = '\0';
    return 0;
}

// A string is written quoted when it has edge spaces or characters INI would
// take as comments or escapes.
static int needs_quotes(const char *s) {
    size_t len = strlen(s);
    return len > 0 && (isspace((unsigned char)s[0]) || isspace((unsigned char)s[len - 1]) ||
                       strpbrk(s, ";#\"\\\n\t") != NULL || s[0] == '"');
}

// Writes s as an INI value into f (or only counts its bytes when f is NULL).
static size_t write_string(const char *s, FILE *f) {
    if (!needs_quotes(s)) {
        if (f) fputs(s, f);
        return strlen(s);
    }
    size_t n = 2;
    if (f) fputc('"', f);
    for (const char *p = s; *p; p++) {
        const char *esc = *p == '\n' ? "\\n" : *p == '\t' ? "\\t" : *p == '"' ? "\\\""
                          : *p == '\\' ? "\\\\" : *p == ';' ? "\\;" : NULL;
        if (esc) {
            if (f) fputs(esc, f);
            n += 2;
        } else {
            if (f) fputc(*p, f);
            n += 1;
        }
    }
    if (f) fputc('"', f);
    return n;
}

// ---------------------------------------------------------------------------
// numbers: one strict reading for config values and command-line options

// Skips spaces; returns where the text proper starts, *endp where it ends.
static const char *trimmed(const char *text, const char **endp) {
    const char *p = text, *e = text + strlen(text);
    while (isspace((unsigned char)*p)) p++;
    while (e > p && isspace((unsigned char)e[-1])) e--;
    *endp = e;
    return p;
}

int ent_parse_i64(const char *text, long long *out) {
    const char *e, *p = trimmed(text, &e);
    char *end = NULL;
    if (p == e || !(isdigit((unsigned char)*p) || *p == '-' || *p == '+')) return -1;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (errno != 0 || end != e) return -1;
    *out = v;
    return 0;
}

int ent_parse_u64(const char *text, uint64_t *out) {
    const char *e, *p = trimmed(text, &e);
    char *end = NULL;
    // strtoull would take "-1" as 2^64 - 1
    if (p == e || !(isdigit((unsigned char)*p) || *p == '+')) return -1;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (errno != 0 || end != e) return -1;
    *out = (uint64_t)v;
    return 0;
}

int ent_parse_f64(const char *text, double *out) {
    const char *e, *p = trimmed(text, &e);
    char *end = NULL;
    // decimal only: no hexadecimal floats, no inf or nan (a leading digit or
    // point after an optional sign)
    const char *q = p + (*p == '-' || *p == '+');
    if (p == e || !(isdigit((unsigned char)*q) || (*q == '.' && isdigit((unsigned char)q[1]))) ||
        memchr(p, 'x', (size_t)(e - p)) || memchr(p, 'X', (size_t)(e - p)))
        return -1;
    double v = strtod(p, &end); // an underflow reads as 0 or a subnormal: still a number
    if (end != e || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

// The first byte of s that a text value may not hold (a control character
// other than tab and newline, which have escapes), or NULL.
static const char *bad_text_byte(const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) return s;
    }
    return NULL;
}

// Parses text into the key's field. On failure writes why into err.
static int parse_value(ent_config *cfg, const key_desc *k, const char *text, char *err,
                       size_t errn) {
    char *field = (char *)cfg + k->offset;
    char range[96];
    describe_range(k, range, sizeof range);
    const char *p = text;
    while (isspace((unsigned char)*p)) p++;
    if (k->type != K_STR && *p == '\0') {
        snprintf(err, errn, "no value given; expected %s", range);
        return -1;
    }
    switch (k->type) {
    case K_INT: {
        long long v;
        if (ent_parse_i64(text, &v) != 0) {
            snprintf(err, errn, "'%s' is not %s", text, range);
            return -1;
        }
        if (v < k->lo || v > k->hi) {
            snprintf(err, errn, "%lld is out of range; expected %s", v, range);
            return -1;
        }
        *(int *)field = (int)v;
        return 0;
    }
    case K_U64: {
        uint64_t v;
        if (ent_parse_u64(text, &v) != 0) {
            snprintf(err, errn, "'%s' is not %s", text, range);
            return -1;
        }
        *(uint64_t *)field = v;
        return 0;
    }
    case K_FLOAT: {
        double v;
        if (ent_parse_f64(text, &v) != 0) {
            snprintf(err, errn, "'%s' is not %s", text, range);
            return -1;
        }
        if (v < k->lo || v > k->hi || (k->lo_open && v == k->lo)) {
            snprintf(err, errn, "%g is out of range; expected %s", v, range);
            return -1;
        }
        *(double *)field = v;
        return 0;
    }
    case K_BOOL: {
        static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
        for (int i = 0; i < 4; i++) {
            if (strcasecmp(p, yes[i]) == 0) { *(int *)field = 1; return 0; }
            if (strcasecmp(p, no[i]) == 0) { *(int *)field = 0; return 0; }
        }
        snprintf(err, errn, "'%s' is not %s", text, range);
        return -1;
    }
    case K_STR: {
        int rc = unquote(text, field, k->size);
        if (rc == -2) {
            snprintf(err, errn, "unterminated quoted value %s (inside quotes, write ';' as \\;, "
                     "since ' ;' starts a comment)", text);
            return -1;
        }
        if (rc == -1) {
            snprintf(err, errn, "value is too long: %s.%s holds at most %zu bytes", k->section,
                     k->key, k->size - 1);
            return -1;
        }
        const char *bad = bad_text_byte(field);
        if (bad != NULL) {
            snprintf(err, errn, "control character 0x%02x at byte %zu of the value: text values "
                     "hold no control characters but tab and newline (written \\t and \\n "
                     "inside quotes)", (unsigned char)*bad, (size_t)(bad - field) + 1);
            field[0] = '\0';
            return -1;
        }
        return 0;
    }
    }
    return -1;
}

void ent_config_defaults(ent_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    char err[256];
    for (int i = 0; i < NKEYS; i++) {
        int rc = parse_value(cfg, &keys[i], keys[i].def, err, sizeof err);
        ENT_ASSERT(rc == 0); // a default outside its own range is a bug in the table
    }
}

// Where a key's value came from, for messages: "FILE:LINE", "--set" or "default".
static void key_origin(const ent_config *cfg, int idx, char *buf, size_t n) {
    int line = cfg->key_line[idx];
    if (line > 0) snprintf(buf, n, "%s:%d", cfg->path, line);
    else if (line < 0) snprintf(buf, n, "--set %s.%s", keys[idx].section, keys[idx].key);
    else snprintf(buf, n, "default of %s.%s", keys[idx].section, keys[idx].key);
}

// ---------------------------------------------------------------------------
// the INI file

// Entente reads INI itself, line by line, rather than through a library with
// a fixed line buffer: a value is bounded by its field (data.dir holds a whole
// path), and every byte of a line is checked (binary data is an error that
// names the line, never a line read short or skipped). The syntax: comment
// lines start with ';' or '#'; '[section]'; 'key = value' (or 'key: value');
// ' ;' after a value starts a comment; spaces around keys and values go; a
// UTF-8 byte-order mark at the start is skipped.

// The longest line read: far more than the longest value written quoted needs,
// few enough that a file without newlines is refused at once.
#define CONFIG_LINE_MAX (4 * ENT_PATH_MAX + 1024)

typedef struct {
    ent_config *cfg;
    int line;
    char section[64];
    unsigned char seen[ENT_CONFIG_MAX_KEYS];
} ini_parser;

// Reads one line (without its newline) into buf. Returns 1, 0 at the end of
// the file, -1 when the line holds more than cap - 1 bytes.
static int read_line(FILE *f, char *buf, size_t cap, size_t *len) {
    size_t n = 0;
    int c;
    while ((c = getc(f)) != EOF && c != '\n') {
        if (n + 1 >= cap) return -1;
        buf[n++] = (char)c;
    }
    buf[n] = '\0';
    *len = n;
    return c == EOF && n == 0 ? 0 : 1;
}

static ent_status syntax_error(const ini_parser *ps) {
    return ent_fail(ENT_ERR_USAGE,
                    "%s:%d: syntax error: expected '[section]', 'key = value' or a comment",
                    ps->cfg->path, ps->line);
}

// A comment, or nothing, from s on?
static int rest_is_comment(const char *s) {
    while (isspace((unsigned char)*s)) s++;
    return *s == '\0' || *s == ';' || *s == '#';
}

static ent_status on_value(ini_parser *ps, const char *name, const char *value) {
    const char *path = ps->cfg->path, *section = ps->section;
    if (section[0] == '\0')
        return ent_fail(ENT_ERR_USAGE, "%s:%d: key '%s' is outside any [section]", path,
                        ps->line, name);
    int idx = find_key(section, name);
    if (idx < 0)
        return ent_fail(ENT_ERR_USAGE,
                        "%s:%d: unknown key '%s' in [%s] (see 'entente train --help' or "
                        "docs/config.md)", path, ps->line, name, section);
    if (ps->seen[idx])
        return ent_fail(ENT_ERR_USAGE, "%s:%d: [%s] %s is set twice (first on line %d)", path,
                        ps->line, section, name, ps->cfg->key_line[idx]);
    char why[256];
    if (parse_value(ps->cfg, &keys[idx], value, why, sizeof why) != 0)
        return ent_fail(ENT_ERR_USAGE, "%s:%d: [%s] %s: %s", path, ps->line, section, name, why);
    ps->seen[idx] = 1;
    ps->cfg->key_line[idx] = ps->line;
    return ENT_OK;
}

// One line of len bytes (NUL bytes included), without its newline.
static ent_status parse_line(ini_parser *ps, char *line, size_t len) {
    const char *path = ps->cfg->path;
    // text only: a NUL or another control character (tab and CR aside) means
    // binary data or a damaged file, which must not pass for a short line
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if (c == 0)
            return ent_fail(ENT_ERR_USAGE, "%s:%d: a NUL byte at column %zu: binary data, not "
                            "an INI configuration", path, ps->line, i + 1);
        if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7f)
            return ent_fail(ENT_ERR_USAGE, "%s:%d: control character 0x%02x at column %zu: a "
                            "configuration is text (inside a quoted value, write \\n for a "
                            "newline)", path, ps->line, c, i + 1);
    }
    char *p = line;
    if (ps->line == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3; // UTF-8 byte-order mark
    while (isspace((unsigned char)*p)) p++;
    char *end = p + strlen(p);
    while (end > p && isspace((unsigned char)end[-1])) *--end = '\0';
    if (*p == '\0' || *p == ';' || *p == '#') return ENT_OK;

    if (*p == '[') {
        char *close = strchr(p, ']');
        if (close == NULL || !rest_is_comment(close + 1)) return syntax_error(ps);
        *close = '\0';
        // checked here, not at its first key, so that a misspelt section with
        // nothing under it is not ignored
        if (strlen(p + 1) >= sizeof ps->section || !section_exists(p + 1))
            return ent_fail(ENT_ERR_USAGE,
                            "%s:%d: unknown section [%.64s] (sections: model train eval sample "
                            "data parallel checkpoint system)", path, ps->line, p + 1);
        snprintf(ps->section, sizeof ps->section, "%s", p + 1);
        return ENT_OK;
    }

    // key, separator, value; a ';' after a space starts a comment
    char *sep = p;
    while (*sep && *sep != '=' && *sep != ':' &&
           !(*sep == ';' && sep > p && isspace((unsigned char)sep[-1])))
        sep++;
    if (*sep != '=' && *sep != ':') return syntax_error(ps);
    char *key_end = sep;
    while (key_end > p && isspace((unsigned char)key_end[-1])) key_end--;
    *key_end = '\0';
    char *value = sep + 1;
    while (isspace((unsigned char)*value)) value++;
    for (char *c = value; *c; c++)
        if (*c == ';' && c > value && isspace((unsigned char)c[-1])) {
            *c = '\0';
            break;
        }
    end = value + strlen(value);
    while (end > value && isspace((unsigned char)end[-1])) *--end = '\0';
    return on_value(ps, p, value);
}

// Parses INI text from f (named `path` in messages) over cfg; closes f.
static ent_status load_stream(ent_config *cfg, const char *path, FILE *f) {
    if (strlen(path) >= sizeof cfg->path) {
        fclose(f);
        return ent_fail(ENT_ERR_USAGE, "config path is too long: %.64s...", path);
    }
    snprintf(cfg->path, sizeof cfg->path, "%s", path);
    char *buf = malloc(CONFIG_LINE_MAX);
    if (buf == NULL) {
        fclose(f);
        return ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", path);
    }
    ini_parser ps = {.cfg = cfg};
    ent_status st = ENT_OK;
    size_t len;
    int got;
    while (st == ENT_OK && (got = read_line(f, buf, CONFIG_LINE_MAX, &len)) != 0) {
        ps.line++;
        if (got < 0)
            st = ent_fail(ENT_ERR_USAGE, "%s:%d: line is longer than %d bytes, the most a "
                          "config line may hold", path, ps.line, CONFIG_LINE_MAX - 1);
        else
            st = parse_line(&ps, buf, len);
    }
    if (st == ENT_OK && ferror(f))
        st = ent_fail(ENT_ERR_USAGE, "cannot read config %s: I/O error", path);
    free(buf);
    fclose(f);
    return st;
}

static ent_status load_file(ent_config *cfg, const char *path) {
    int fd;
    ENT_CHECK(ent_open_regular(path, "config", ENT_ERR_USAGE, &fd));
    FILE *f = fdopen(fd, "r");
    if (f == NULL) {
        close(fd);
        return ent_fail(ENT_ERR_USAGE, "cannot read config %s: %s", path, strerror(errno));
    }
    return load_stream(cfg, path, f);
}

// A warm-up longer than the run (a short run of a configuration made for a
// long one, `--set train.steps=80` on the demo) is lowered to a tenth of the
// run instead of refusing the run: the first thing a new user tries.
static void fit_warmup(ent_config *cfg) {
    if (cfg->warmup_steps <= cfg->steps) return;
    int fit = cfg->steps / 10;
    char a[ENT_PATH_MAX + 64];
    key_origin(cfg, find_key("train", "warmup_steps"), a, sizeof a);
    ent_log_warn("%s: train.warmup_steps = %d exceeds train.steps = %d: warming up over %d "
                 "step(s) instead (a tenth of the run; --set train.warmup_steps=N chooses)", a,
                 cfg->warmup_steps, cfg->steps, fit);
    cfg->warmup_steps = fit;
}

ent_status ent_config_load_text(ent_config *cfg, const char *text, const char *origin,
                                const char *const *overrides, int n_overrides) {
    ent_config_defaults(cfg);
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    if (f == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory reading %s", origin);
    ENT_CHECK(load_stream(cfg, origin, f));
    for (int i = 0; i < n_overrides; i++) ENT_CHECK(ent_config_set(cfg, overrides[i]));
    fit_warmup(cfg);
    return ent_config_validate(cfg);
}

ent_status ent_config_set_key(ent_config *cfg, const char *section, const char *key,
                              const char *text, const char *origin, ent_status bad) {
    int idx = find_key(section, key);
    ENT_ASSERT(idx >= 0); // callers name keys of the table
    char why[256];
    if (parse_value(cfg, &keys[idx], text, why, sizeof why) != 0)
        return ent_fail(bad, "%s %s.%s: %s", origin, section, key, why);
    return ENT_OK;
}

ent_status ent_config_set(ent_config *cfg, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    if (eq == NULL || dot == NULL || dot > eq)
        return ent_fail(ENT_ERR_USAGE, "--set %s: expected section.key=value", assignment);
    char section[64], key[64];
    size_t slen = (size_t)(dot - assignment), klen = (size_t)(eq - dot - 1);
    if (slen == 0 || slen >= sizeof section || klen == 0 || klen >= sizeof key)
        return ent_fail(ENT_ERR_USAGE, "--set %s: expected section.key=value", assignment);
    memcpy(section, assignment, slen);
    section[slen] = '\0';
    memcpy(key, dot + 1, klen);
    key[klen] = '\0';
    int idx = find_key(section, key);
    if (idx < 0)
        return ent_fail(ENT_ERR_USAGE, "--set %s: unknown key %s.%s (see 'entente train --help')",
                        assignment, section, key);
    ENT_CHECK(ent_config_set_key(cfg, section, key, eq + 1, "--set", ENT_ERR_USAGE));
    cfg->key_line[idx] = -1;
    return ENT_OK;
}

ent_status ent_config_load(ent_config *cfg, const char *path, const char *const *overrides,
                           int n_overrides) {
    ent_config_defaults(cfg);
    if (path != NULL) ENT_CHECK(load_file(cfg, path));
    for (int i = 0; i < n_overrides; i++) ENT_CHECK(ent_config_set(cfg, overrides[i]));
    fit_warmup(cfg);
    return ent_config_validate(cfg);
}

// ---------------------------------------------------------------------------
// combinations

#define KEY(s, k) find_key(s, k)

// The architecture's keys: llama's keys away from their defaults are refused
// for gpt2 (they would silently do nothing), and llama's shapes must fit.
static ent_status validate_arch(const ent_config *cfg) {
    char a[ENT_PATH_MAX + 64];
    int llama = strcmp(cfg->arch, "llama") == 0;
    if (!llama && strcmp(cfg->arch, "gpt2") != 0) {
        key_origin(cfg, KEY("model", "arch"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: model.arch = '%s': expected gpt2 or llama", a,
                        cfg->arch);
    }
    if (strcmp(cfg->rope_scaling, "none") != 0 && strcmp(cfg->rope_scaling, "llama3") != 0) {
        key_origin(cfg, KEY("model", "rope_scaling"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: model.rope_scaling = '%s': expected none or llama3",
                        a, cfg->rope_scaling);
    }
    if (!llama) {
        const char *set = cfg->n_kv_heads != 0 ? "n_kv_heads"
                          : cfg->ffn_hidden != 0 ? "ffn_hidden"
                          : cfg->tie_embeddings ? "tie_embeddings"
                          : strcmp(cfg->rope_scaling, "none") != 0 ? "rope_scaling" : NULL;
        if (set == NULL) return ENT_OK;
        key_origin(cfg, KEY("model", set), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: model.%s applies to model.arch = llama only (this "
                        "model is gpt2)", a, set);
    }
    int kv = cfg->n_kv_heads ? cfg->n_kv_heads : cfg->heads;
    if (cfg->heads % kv != 0) {
        key_origin(cfg, KEY("model", "n_kv_heads"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: model.n_kv_heads = %d does not divide model.heads = "
                        "%d", a, kv, cfg->heads);
    }
    if ((cfg->width / cfg->heads) % 2 != 0) {
        key_origin(cfg, KEY("model", "width"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: a llama's head size model.width / model.heads = %d "
                        "must be even (rotary embeddings turn pairs of channels)", a,
                        cfg->width / cfg->heads);
    }
    int ffn = cfg->ffn_hidden ? cfg->ffn_hidden : ent_model_default_ffn(cfg->width);
    if (ffn % cfg->tp != 0) {
        key_origin(cfg, KEY("parallel", "tp"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: parallel.tp = %d does not divide the MLP's %d hidden "
                        "units (model.ffn_hidden)", a, cfg->tp, ffn);
    }
    if (strcmp(cfg->rope_scaling, "llama3") == 0 &&
        !(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor)) {
        key_origin(cfg, KEY("model", "rope_high_freq_factor"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: model.rope_high_freq_factor = %g must exceed "
                        "model.rope_low_freq_factor = %g", a, cfg->rope_high_freq_factor,
                        cfg->rope_low_freq_factor);
    }
    return ENT_OK;
}

ent_status ent_config_validate(const ent_config *cfg) {
    char a[ENT_PATH_MAX + 64], b[ENT_PATH_MAX + 64];
    if (cfg->width % cfg->heads != 0) {
        key_origin(cfg, KEY("model", "width"), a, sizeof a);
        key_origin(cfg, KEY("model", "heads"), b, sizeof b);
        return ent_fail(ENT_ERR_USAGE,
                        "%s: model.width = %d is not divisible by model.heads = %d (%s)", a,
                        cfg->width, cfg->heads, b);
    }
    if (cfg->heads % cfg->tp != 0) {
        key_origin(cfg, KEY("parallel", "tp"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: parallel.tp = %d does not divide model.heads = %d",
                        a, cfg->tp, cfg->heads);
    }
    ENT_CHECK(validate_arch(cfg));
    if (cfg->micro_batch > 0 && cfg->batch_size % cfg->micro_batch != 0) {
        key_origin(cfg, KEY("train", "micro_batch"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE,
                        "%s: train.micro_batch = %d does not divide train.batch_size = %d", a,
                        cfg->micro_batch, cfg->batch_size);
    }
    if (cfg->warmup_steps > cfg->steps) {
        key_origin(cfg, KEY("train", "warmup_steps"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: train.warmup_steps = %d exceeds train.steps = %d", a,
                        cfg->warmup_steps, cfg->steps);
    }
    if (cfg->data_dir[0] == '\0') {
        const char *where = cfg->path[0] ? cfg->path : "configuration";
        return ent_fail(ENT_ERR_USAGE,
                        "%s: data.dir is not set: name a directory of token shards "
                        "(entente data prepare --help)", where);
    }
    if (ent_backend_check_name(cfg->backend) != ENT_OK) {
        key_origin(cfg, KEY("system", "backend"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: system.backend = '%s': %s", a, cfg->backend,
                        ent_last_error());
    }
    ent_precision precision;
    if (ent_precision_parse(cfg->precision, &precision) != ENT_OK) {
        key_origin(cfg, KEY("system", "precision"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: system.precision = '%s': expected auto, f32 or bf16",
                        a, cfg->precision);
    }
    if (ent_backend_check_precision(cfg->backend, precision) != ENT_OK) {
        key_origin(cfg, KEY("system", "precision"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: %s", a, ent_last_error());
    }
    if (strcmp(cfg->ckpt_on_error, "stop") != 0 && strcmp(cfg->ckpt_on_error, "continue") != 0) {
        key_origin(cfg, KEY("checkpoint", "on_error"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: checkpoint.on_error = '%s': expected stop or continue",
                        a, cfg->ckpt_on_error);
    }
    ent_codec codec;
    if (ent_codec_parse(cfg->coal_codec, &codec) != ENT_OK) {
        key_origin(cfg, KEY("coalition", "codec"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: coalition.codec = '%s': expected int8, int4 or topk",
                        a, cfg->coal_codec);
    }
    const char *endpoints[] = {cfg->coal_coordinator, cfg->coal_bind, cfg->coal_standby};
    const char *ekeys[] = {"coordinator", "bind", "standby"};
    for (int i = 0; i < 3; i++) {
        // coalition.coordinator may list several, comma-separated
        char list[ENT_COAL_ENDPOINTS_MAX][256];
        int n = ent_coal_split_list(endpoints[i], list), bad = n < 0 || (i > 0 && n > 1);
        for (int j = 0; j < n && !bad; j++) {
            const char *e = list[j], *colon = strrchr(e, ':');
            bad = !(strncmp(e, "tcp://", 6) == 0 && colon != NULL && colon > e + 6 &&
                    colon[1] != '\0');
        }
        if (!bad) continue;
        key_origin(cfg, KEY("coalition", ekeys[i]), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: coalition.%s = '%s': expected tcp://HOST:PORT%s", a,
                        ekeys[i], endpoints[i],
                        i == 0 ? " (or up to 4 of them, comma-separated)" : "");
    }
    if (cfg->coal_site[0] != '\0' && !ent_link_name_ok(cfg->coal_site)) {
        key_origin(cfg, KEY("coalition", "site"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE, "%s: coalition.site = '%s': expected 1-64 of A-Z a-z 0-9 "
                        ". _ - not starting with '.'", a, cfg->coal_site);
    }
    if (cfg->vocab != ENT_BYTE_VOCAB && cfg->sample_prompt[0] != '\0' &&
        cfg->data_tokenizer[0] == '\0') {
        key_origin(cfg, KEY("sample", "prompt"), a, sizeof a);
        return ent_fail(ENT_ERR_USAGE,
                        "%s: sample.prompt needs the byte-level vocabulary (model.vocab = %d), "
                        "not %d, or the tokenizer in data.tokenizer", a, ENT_BYTE_VOCAB,
                        cfg->vocab);
    }
    return ENT_OK;
}

int ent_coal_split_list(const char *text, char out[][256]) {
    int n = 0;
    const char *p = text;
    while (*p != '\0') {
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= 256 || n == ENT_COAL_ENDPOINTS_MAX) return -1;
        memcpy(out[n], p, len);
        out[n++][len] = '\0';
        p += len;
        if (*p == ',' && *++p == '\0') return -1; // a trailing comma
    }
    return n;
}

// ---------------------------------------------------------------------------
// output

const char *ent_format_double(double v, char *buf, size_t n) {
    // %.17g always reads back exactly but shows binary noise (3e-3 prints as
    // 0.0030000000000000001); the first precision that reads back is the
    // shortest exact text
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    // a whole number as a person writes it: 600, not 6e+02
    if (strchr(buf, 'e') != NULL && v == floor(v) && fabs(v) < 1e16) snprintf(buf, n, "%.0f", v);
    return buf;
}

static void write_value(const ent_config *cfg, const key_desc *k, FILE *f) {
    const char *field = (const char *)cfg + k->offset;
    switch (k->type) {
    case K_INT: fprintf(f, "%d", *(const int *)field); break;
    case K_U64: fprintf(f, "%llu", (unsigned long long)*(const uint64_t *)field); break;
    case K_FLOAT: {
        char num[32];
        fputs(ent_format_double(*(const double *)field, num, sizeof num), f);
        break;
    }
    case K_BOOL: fputs(*(const int *)field ? "true" : "false", f); break;
    case K_STR: write_string(field, f); break;
    }
}

void ent_config_write(const ent_config *cfg, FILE *f) {
    const char *section = "";
    for (int i = 0; i < NKEYS; i++) {
        if (strcmp(section, keys[i].section) != 0) {
            section = keys[i].section;
            fprintf(f, "%s[%s]\n", i ? "\n" : "", section);
        }
        fprintf(f, "%s = ", keys[i].key);
        write_value(cfg, &keys[i], f);
        fputc('\n', f);
    }
}

char *ent_config_text(const ent_config *cfg, size_t *len) {
    char *text = NULL;
    size_t n = 0;
    FILE *mem = open_memstream(&text, &n);
    if (mem == NULL) return NULL;
    ent_config_write(cfg, mem);
    if (fclose(mem) != 0) {
        free(text);
        return NULL;
    }
    if (len != NULL) *len = n;
    return text;
}

void ent_config_describe_keys(FILE *f) {
    for (int i = 0; i < NKEYS; i++) {
        char name[64], range[96];
        snprintf(name, sizeof name, "%s.%s", keys[i].section, keys[i].key);
        describe_range(&keys[i], range, sizeof range);
        fprintf(f, "  %-22s default %-12s %s\n  %-22s %s\n", name,
                keys[i].def[0] ? keys[i].def : "(empty)", range, "", keys[i].help);
    }
}
