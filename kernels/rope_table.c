// rope_table.c: the frequencies and the rotation table of rotary position
// embeddings, on the host, once per model. Computed in float32 step by step
// as Hugging Face's transformers does (_compute_default_rope_parameters,
// _compute_llama3_parameters, then cos and sin of t * inv_freq), so that an
// imported model sees the angles it was trained with.
#include "ent_kernels.h"

#include <math.h>

void ent_rope_inv_freq(const ent_rope *r, int hd, float *inv_freq) {
    float base = (float)r->theta;
    for (int i = 0; i < hd / 2; i++) {
        // 1 / base^(arange(0, hd, 2) / hd), in float32
        float e = (float)(2 * i) / (float)hd;
        inv_freq[i] = 1.0f / powf(base, e);
    }
    if (r->scaling != ENT_ROPE_LLAMA3) return;
    float factor = (float)r->factor, low = (float)r->low_freq_factor;
    float old_len = (float)r->original_max;
    // the wavelength bounds are Python floats (double) in transformers
    double low_wavelen = r->original_max / r->low_freq_factor;
    double high_wavelen = r->original_max / r->high_freq_factor;
    float span = (float)(r->high_freq_factor - r->low_freq_factor);
    for (int i = 0; i < hd / 2; i++) {
        float f = inv_freq[i];
        float wavelen = (float)(2.0 * M_PI) / f;
        float scaled = wavelen > (float)low_wavelen ? f / factor : f;
        int medium = !(wavelen < (float)high_wavelen) && !(wavelen > (float)low_wavelen);
        if (medium) {
            float smooth = (old_len / wavelen - low) / span;
            scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
        }
        inv_freq[i] = scaled;
    }
}

void ent_rope_table(const ent_rope *r, int hd, int T, float *cos_t, float *sin_t) {
    int half = hd / 2;
    if (T < 1 || half < 1) return;
    // the frequencies wait in sin's row 0, which is written last (position 0
    // does not turn: cos 1, sin 0, whatever the frequency)
    float *inv = sin_t;
    ent_rope_inv_freq(r, hd, inv);
    for (int t = T - 1; t >= 1; t--)
        for (int i = 0; i < half; i++) {
            float angle = (float)t * inv[i];
            cos_t[(size_t)t * half + i] = (float)cos((double)angle);
            sin_t[(size_t)t * half + i] = (float)sin((double)angle);
        }
    for (int i = 0; i < half; i++) {
        cos_t[i] = 1.0f;
        sin_t[i] = 0.0f;
    }
}
