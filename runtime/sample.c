// sample.c: text generation with the model's forward pass.
//
// Each new token runs the forward pass over the last `context` tokens (no KV
// cache yet) and draws from softmax(logits / temperature) on the host.
#include "runtime_impl.h"
#include "ent_ckpt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int32_t draw(const float *logits, int V, double temperature, ent_rng *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature <= 0.0) return best;
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((logits[i] - logits[best]) / temperature);
    double u = ent_rng_uniform(rng) * sum, acc = 0.0;
    for (int i = 0; i < V; i++) {
        acc += exp((logits[i] - logits[best]) / temperature);
        if (u < acc) return i;
    }
    return best;
}

ent_status ent_sample(ent_model_t *model, const int32_t *prompt, int np, int n,
                      double temperature, uint64_t seed, int32_t *out) {
    ENT_ASSERT(np >= 1);
    const ent_model_shape *s = ent_model_get_shape(model);
    int T = s->context;
    int32_t *window = malloc(sizeof(int32_t) * (size_t)T);
    float *logits = malloc(sizeof(float) * (size_t)s->padded_vocab);
    if (window == NULL || logits == NULL) {
        free(window);
        free(logits);
        return ent_fail(ENT_ERR_NOMEM, "out of memory sampling %d tokens", n);
    }
    int len = np < T ? np : T;
    memcpy(window, prompt + (np - len), sizeof(int32_t) * (size_t)len);
    ent_rng rng;
    ent_rng_seed(&rng, seed);
    ent_status st = ENT_OK;
    for (int i = 0; i < n && st == ENT_OK; i++) {
        st = ent_model_forward(model, window, NULL, 1, len, NULL);
        if (st == ENT_OK) st = ent_model_logits_at(model, 0, len - 1, logits);
        if (st != ENT_OK) break;
        int32_t next = draw(logits, s->vocab, temperature, &rng);
        out[i] = next;
        if (len == T) {
            memmove(window, window + 1, sizeof(int32_t) * (size_t)(T - 1));
            len--;
        }
        window[len++] = next;
    }
    free(window);
    free(logits);
    return st;
}

ent_status ent_prompt_encode(ent_tokenizer_t *tok, const char *prompt, int vocab, int32_t **ids,
                             int *n) {
    *ids = NULL;
    *n = 0;
    size_t plen = strlen(prompt), count = plen;
    uint32_t *enc = NULL, first = vocab == ENT_BYTE_VOCAB ? ENT_TOKEN_EOT : 0;
    if (tok != NULL) {
        ENT_CHECK(ent_tokenizer_document_token(tok, NULL, &first));
        ENT_CHECK(ent_tokenizer_encode(tok, prompt, plen, &enc, &count));
    } else if (plen > 0 && vocab != ENT_BYTE_VOCAB) {
        return ent_fail(ENT_ERR_USAGE, "a prompt needs a byte-level model (vocabulary %d) or a "
                        "tokenizer (data.tokenizer, --tokenizer); this model has %d tokens",
                        ENT_BYTE_VOCAB, vocab);
    }
    int32_t *out = count < INT32_MAX ? malloc(sizeof(int32_t) * (count + 1)) : NULL;
    if (out == NULL) {
        free(enc);
        return ent_fail(ENT_ERR_NOMEM, "out of memory for a prompt of %zu tokens", count);
    }
    out[0] = (int32_t)first;
    for (size_t i = 0; i < count; i++)
        out[i + 1] = tok ? (int32_t)enc[i] : (int32_t)(unsigned char)prompt[i];
    free(enc);
    for (size_t i = 0; i <= count; i++) {
        if (out[i] < vocab) continue;
        int32_t bad = out[i];
        free(out);
        return ent_fail(ENT_ERR_USAGE, "the prompt's token %d is outside the model's vocabulary "
                        "(%d): the tokenizer %s is not this model's", bad, vocab,
                        tok ? ent_tokenizer_path(tok) : "(bytes)");
    }
    *ids = out;
    *n = (int)count + 1;
    return ENT_OK;
}

void ent_tokens_print(FILE *f, const ent_tokenizer_t *tok, const int32_t *tokens, int n,
                      int vocab) {
    for (int i = 0; i < n; i++) {
        int32_t t = tokens[i];
        size_t len;
        const void *piece = tok && t >= 0 ? ent_tokenizer_piece(tok, (uint32_t)t, &len) : NULL;
        if (tok != NULL) {
            if (piece) fwrite(piece, 1, len, f);
            else fprintf(f, "[%d]", t);
        } else if (vocab != ENT_BYTE_VOCAB) {
            fprintf(f, "%s%d", i ? " " : "", t);
        } else if (t == ENT_TOKEN_EOT) {
            fputs("\n<|endoftext|>\n", f);
        } else if (t < 0x20 && t != '\n' && t != '\t') {
            fputc('?', f);
        } else {
            fputc(t, f);
        }
    }
}

// The logits of every position of the prompt (its last `context` tokens), one
// line of `vocab` numbers per position: for checking exports against other
// implementations of GPT-2.
static ent_status write_logits(ent_model_t *m, const int32_t *ids, int n, const char *path) {
    const ent_model_shape *s = ent_model_get_shape(m);
    int t = n < s->context ? n : s->context;
    ENT_CHECK(ent_model_forward(m, ids + (n - t), NULL, 1, t, NULL));
    FILE *f = fopen(path, "w");
    if (f == NULL) return ent_fail(ENT_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    float *row = malloc(sizeof(float) * (size_t)s->padded_vocab);
    if (row == NULL) {
        fclose(f);
        return ent_fail(ENT_ERR_NOMEM, "out of memory");
    }
    ent_status st = ENT_OK;
    for (int i = 0; i < t && st == ENT_OK; i++) {
        st = ent_model_logits_at(m, 0, i, row);
        for (int v = 0; v < s->vocab && st == ENT_OK; v++)
            fprintf(f, v ? " %.9g" : "%.9g", row[v]);
        fputc('\n', f);
    }
    free(row);
    if (fclose(f) != 0 && st == ENT_OK)
        st = ent_fail(ENT_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return st;
}

// The model shape of a checkpoint's attributes, each checked against the
// range its configuration key accepts (and the heads against the width): a
// damaged or foreign file must not size the model (a context of 0 once
// aborted the sampler; heads not dividing the width sampled garbage).
static ent_status checkpoint_shape(ent_ckpt_t *ck, const char *path, ent_model_shape *shape) {
    static const char *keys[] = {"layers", "heads", "width", "context", "vocab"};
    ent_config cfg;
    ent_config_defaults(&cfg);
    char origin[ENT_PATH_MAX + 32], name[32], text[32];
    snprintf(origin, sizeof origin, "%.4000s: attribute", path);
    for (int i = 0; i < 5; i++) {
        int64_t v;
        snprintf(name, sizeof name, "model.%s", keys[i]);
        ENT_CHECK(ent_ckpt_attr_i64(ck, name, &v));
        snprintf(text, sizeof text, "%lld", (long long)v);
        ENT_CHECK(ent_config_set_key(&cfg, "model", keys[i], text, origin, ENT_ERR_INPUT));
    }
    if (cfg.width % cfg.heads != 0)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute model.width = %d is not divisible by "
                        "model.heads = %d: not a model entente writes", path, cfg.width, cfg.heads);
    *shape = (ent_model_shape){.layers = cfg.layers, .heads = cfg.heads, .width = cfg.width,
                               .context = cfg.context, .vocab = cfg.vocab,
                               .padded_vocab = (cfg.vocab + 63) / 64 * 64};
    // another architecture: its keys are in the stored configuration, which
    // must describe the same model as the attributes
    char *arch = NULL;
    ENT_CHECK(ent_ckpt_attr_text(ck, "model.architecture", &arch));
    int gpt2 = strcmp(arch, "gpt2") == 0, llama = strcmp(arch, "llama") == 0;
    free(arch);
    if (gpt2) return ENT_OK;
    if (!llama)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute model.architecture is neither gpt2 nor "
                        "llama", path);
    // this process samples on its CPU, whichever backend trained the model
    const char *cpu[] = {"system.backend=cpu"};
    ent_config stored;
    if (ent_config_from_open_checkpoint(ck, &stored, cpu, 1) != ENT_OK)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute 'config' is not a valid configuration: %s",
                        path, ent_last_error());
    if (strcmp(stored.arch, "llama") != 0)
        return ent_fail(ENT_ERR_INPUT, "%s: attribute model.architecture is llama, its stored "
                        "configuration's model.arch %s", path, stored.arch);
    ent_model_shape full = ent_model_shape_from_config(&stored);
    if (full.layers != shape->layers || full.heads != shape->heads ||
        full.width != shape->width || full.context != shape->context ||
        full.vocab != shape->vocab)
        return ent_fail(ENT_ERR_INPUT, "%s: the model.* attributes and the stored configuration "
                        "describe different models", path);
    *shape = full;
    return ENT_OK;
}

ent_status ent_config_from_checkpoint(ent_config *cfg, const char *path,
                                      const char *const *overrides, int n_overrides) {
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    ent_status st = ent_config_from_open_checkpoint(ck, cfg, overrides, n_overrides);
    ent_ckpt_close(&ck);
    return st;
}

ent_status ent_model_from_checkpoint(const char *path, int B, ent_backend_t **be_out,
                                     ent_model_t **model_out) {
    *be_out = NULL;
    *model_out = NULL;
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    ent_model_shape shape = {0};
    ent_status st = checkpoint_shape(ck, path, &shape);
    ent_backend_t *be = NULL;
    ent_model_t *m = NULL;
    if (st == ENT_OK) st = ent_backend_new("cpu", NULL, &be);
    if (st == ENT_OK) st = ent_model_new(be, &shape, NULL, B, shape.context, &m);
    if (st == ENT_OK) {
        ent_ckpt_shard sh = {.table = ent_model_table(m), .tp_rank = 0, .tp_size = 1,
                             .params = ent_model_arena(m, ENT_ARENA_PARAMS)};
        st = ent_ckpt_read(ck, &sh);
        if (st == ENT_OK) st = ent_model_params_changed(m);
    }
    ent_ckpt_close(&ck);
    if (st != ENT_OK) {
        ent_model_free(&m);
        ent_backend_free(&be);
        return st;
    }
    *be_out = be;
    *model_out = m;
    return ENT_OK;
}

ent_status ent_sample_checkpoint(const char *path, const char *prompt, const char *tokenizer,
                                 int tokens, double temperature, uint64_t seed,
                                 const char *logits_path, FILE *out) {
    ent_backend_t *be = NULL;
    ent_model_t *m = NULL;
    ent_tokenizer_t *tok = NULL;
    ent_status st = ENT_OK;
    if (tokenizer == NULL) { // the one the checkpoint's run trained with
        ent_config cfg;
        ENT_CHECK(ent_config_from_checkpoint(&cfg, path, NULL, 0));
        if (cfg.data_tokenizer[0] != '\0') st = ent_tokenizer_load(cfg.data_tokenizer, &tok);
    } else if (tokenizer[0] != '\0') {
        st = ent_tokenizer_load(tokenizer, &tok);
    }
    if (st == ENT_OK) st = ent_model_from_checkpoint(path, 1, &be, &m);
    if (st != ENT_OK) {
        ent_tokenizer_free(&tok);
        return st;
    }
    const ent_model_shape shape = *ent_model_get_shape(m);
    int32_t *ids = NULL, *gen = NULL;
    int np = 0;
    st = ent_prompt_encode(tok, prompt, shape.vocab, &ids, &np);
    if (st == ENT_OK) {
        gen = malloc(sizeof(int32_t) * (size_t)(tokens > 0 ? tokens : 1));
        if (gen == NULL) st = ent_fail(ENT_ERR_NOMEM, "out of memory");
    }
    if (st == ENT_OK && logits_path != NULL) st = write_logits(m, ids, np, logits_path);
    if (st == ENT_OK && tokens > 0)
        st = ent_sample(m, ids, np, tokens, temperature, seed, gen);
    if (st == ENT_OK && tokens > 0) {
        fputs(prompt, out);
        ent_tokens_print(out, tok, gen, tokens, shape.vocab);
        fputc('\n', out);
    }
    free(ids);
    free(gen);
    ent_model_free(&m);
    ent_backend_free(&be);
    ent_tokenizer_free(&tok);
    return st;
}
