// sample.c: text generation with the model's forward pass.
//
// Each new token runs the forward pass over the last `context` tokens (no KV
// cache yet) and draws from softmax(logits / temperature) on the host.
#include "runtime_impl.h"

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
    ENT_ASSERT(window != NULL && logits != NULL);
    int len = np < T ? np : T;
    memcpy(window, prompt + (np - len), sizeof(int32_t) * (size_t)len);
    ent_rng rng;
    ent_rng_seed(&rng, seed);
    ent_status st = ENT_OK;
    for (int i = 0; i < n && st == ENT_OK; i++) {
        st = ent_model_forward(model, window, NULL, 1, len, NULL);
        if (st != ENT_OK) break;
        ent_model_logits_at(model, 0, len - 1, logits);
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

void ent_tokens_print(FILE *f, const int32_t *tokens, int n, int vocab) {
    for (int i = 0; i < n; i++) {
        int32_t t = tokens[i];
        if (vocab != ENT_BYTE_VOCAB) {
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
