// vec.c: the global layout of the parameter table and the vectors (deltas,
// updates, the anchor) that cross sites in DELTA and UPDATE chunks.
#include "coalition_impl.h"

#include <math.h>

#include <stdlib.h>
#include <string.h>

void coal_hash_hex(uint64_t h, char out[17]) {
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

uint64_t coal_config_hash(const ent_config *cfg) {
    char text[512];
    snprintf(text, sizeof text, "model %llu rounds %d codec %s outer %.17g %.17g overlap %d "
             "max_staleness %d", (unsigned long long)ent_model_shape_hash(cfg), cfg->coal_rounds,
             cfg->coal_codec, cfg->coal_outer_lr, cfg->coal_outer_momentum, cfg->coal_overlap,
             cfg->coal_max_staleness);
    return ent_hash_string(text, 0);
}

ent_status coal_fault_number(const char *name, double lo, double hi, int whole, double *value) {
    *value = 0;
    const char *text = getenv(name);
    if (text == NULL || text[0] == '\0') return ENT_OK;
    char *end = NULL;
    double x = strtod(text, &end);
    if (end == text || *end != '\0' || !(x >= lo && x <= hi) || (whole && x != floor(x)))
        return ent_fail(ENT_ERR_USAGE, "%s=%s: give a%s number in [%g, %g]", name, text,
                        whole ? " whole" : "", lo, hi);
    *value = x;
    return ENT_OK;
}

ent_status coal_alloc_floats(float **p, size_t n, const char *what) {
    *p = calloc(n > 0 ? n : 1, sizeof(float));
    if (*p == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for %s (%zu floats)", what, n);
    // a model-sized vector: in place before the first round, not during a
    // join (a GPT-2 small joiner spent 5.6 s of its 22 s faulting in two)
    if (n >= (16u << 20)) ent_populate_big(*p, sizeof(float) * n);
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// layout

ent_status coal_layout_new(const ent_param_table *table, coal_layout *out) {
    memset(out, 0, sizeof *out);
    out->goff = malloc(sizeof(size_t) * (size_t)(table->nrows > 0 ? table->nrows : 1));
    if (out->goff == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    out->table = table;
    for (int i = 0; i < table->nrows; i++) {
        const ent_param_row *r = &table->rows[i];
        out->goff[i] = out->n;
        out->n += (size_t)r->shape[0] * (size_t)r->shape[1];
    }
    return ENT_OK;
}

void coal_layout_free(coal_layout *l) {
    free(l->goff);
    memset(l, 0, sizeof *l);
}

// Calls f for every block of row r's local elements: the local position, the
// global position (in the whole vector) and the element count.
static void row_blocks(const coal_layout *l, int r, int tp_rank,
                       void (*f)(void *ctx, size_t local, size_t global, size_t count),
                       void *ctx) {
    const ent_param_row *row = &l->table->rows[r];
    ent_rect rects[ENT_MAX_RECTS];
    int nr = ent_param_row_rects(row, tp_rank, l->table->tp_size, 0, row->numel, rects);
    size_t local = row->offset, width = (size_t)row->shape[1];
    for (int k = 0; k < nr; k++)
        for (int64_t i = 0; i < rects[k].count[0]; i++) {
            size_t g = l->goff[r] + (size_t)(rects[k].start[0] + i) * width +
                       (size_t)rects[k].start[1];
            f(ctx, local, g, (size_t)rects[k].count[1]);
            local += (size_t)rects[k].count[1];
        }
}

typedef struct {
    float *dst;
    const float *src;
} copy_ctx;

static void to_global(void *ctx, size_t local, size_t global, size_t count) {
    copy_ctx *c = ctx;
    memcpy(c->dst + global, c->src + local, sizeof(float) * count);
}

static void to_arena(void *ctx, size_t local, size_t global, size_t count) {
    copy_ctx *c = ctx;
    memcpy(c->dst + local, c->src + global, sizeof(float) * count);
}

void coal_arena_to_global(const coal_layout *l, int tp_rank, const float *arena, float *global) {
    copy_ctx c = {.dst = global, .src = arena};
    for (int r = 0; r < l->table->nrows; r++) row_blocks(l, r, tp_rank, to_global, &c);
}

void coal_global_to_arena(const coal_layout *l, int tp_rank, const float *global, float *arena) {
    copy_ctx c = {.dst = arena, .src = global};
    for (int r = 0; r < l->table->nrows; r++) row_blocks(l, r, tp_rank, to_arena, &c);
}

// ---------------------------------------------------------------------------
// vectors

void coal_vec_free(coal_vec *v) {
    free(v->poff);
    free(v->plen);
    free(v->boff);
    free(v->blen);
    free(v->data);
    free(v->have);
    memset(v, 0, sizeof *v);
}

static ent_status chunk_bytes_of(uint16_t codec, const ent_codec *settings, size_t n,
                                 size_t *bytes) {
    if (codec == ENT_LINK_CODEC_F32) {
        *bytes = sizeof(float) * n;
        return ENT_OK;
    }
    return ent_codec_encoded_size(settings, n, bytes);
}

ent_status coal_chunk_params(uint16_t codec, const ent_codec *settings, uint32_t chunk_bytes,
                             size_t *per_chunk) {
    const size_t unit = ENT_CODEC_TOPK_BLOCK;
    size_t bytes = 0;
    ENT_CHECK(chunk_bytes_of(codec, settings, unit, &bytes));
    // a first guess from the size per unit, then down until it fits
    size_t p = ((size_t)chunk_bytes / bytes) * unit;
    if (p < unit) p = unit;
    for (; p > unit; p -= unit) {
        ENT_CHECK(chunk_bytes_of(codec, settings, p, &bytes));
        if (bytes <= chunk_bytes) break;
    }
    *per_chunk = p;
    return ENT_OK;
}

static ent_status vec_layout(coal_vec *v, uint16_t codec, const ent_codec *settings,
                             uint64_t total, uint32_t chunk_bytes) {
    coal_vec_free(v);
    size_t per = 0;
    ENT_CHECK(coal_chunk_params(codec, settings, chunk_bytes, &per));
    uint64_t count = (total + per - 1) / per;
    if (total == 0 || count > ENT_LINK_CHUNKS_MAX)
        return ent_fail(ENT_ERR_USAGE, "a vector of %llu parameters does not fit in %u chunks",
                        (unsigned long long)total, ENT_LINK_CHUNKS_MAX);
    v->codec = codec;
    v->total = total;
    v->count = (uint32_t)count;
    v->poff = calloc(count, sizeof *v->poff);
    v->plen = calloc(count, sizeof *v->plen);
    v->boff = calloc(count, sizeof *v->boff);
    v->blen = calloc(count, sizeof *v->blen);
    v->have = calloc(count, 1);
    if (!v->poff || !v->plen || !v->boff || !v->blen || !v->have) {
        coal_vec_free(v);
        return ent_fail(ENT_ERR_NOMEM, "out of memory for %llu chunks", (unsigned long long)count);
    }
    for (uint64_t i = 0; i < count; i++) {
        v->poff[i] = i * per;
        v->plen[i] = total - v->poff[i] < per ? total - v->poff[i] : per;
        size_t b = 0;
        ent_status st = chunk_bytes_of(codec, settings, v->plen[i], &b);
        if (st != ENT_OK) {
            coal_vec_free(v);
            return st;
        }
        v->boff[i] = v->len;
        v->blen[i] = b;
        v->len += b;
    }
    v->data = malloc(v->len);
    if (v->data == NULL) {
        coal_vec_free(v);
        return ent_fail(ENT_ERR_NOMEM, "out of memory for %zu bytes", v->len);
    }
    return ENT_OK;
}

ent_status coal_vec_encode(coal_vec *v, uint16_t codec, const ent_codec *settings, float *x,
                           float *residual, size_t total, uint32_t chunk_bytes) {
    ENT_CHECK(vec_layout(v, codec, settings, total, chunk_bytes));
    for (uint32_t i = 0; i < v->count; i++) {
        float *xi = x + v->poff[i];
        uint8_t *out = v->data + v->boff[i];
        size_t n = v->plen[i], got = 0;
        ent_status st = ENT_OK;
        if (codec == ENT_LINK_CODEC_F32) {
            memcpy(out, xi, sizeof(float) * n);
            got = sizeof(float) * n;
        } else if (residual != NULL) {
            st = ent_codec_encode_feedback(settings, xi, residual + v->poff[i], n, out,
                                           v->blen[i], &got);
        } else {
            st = ent_codec_encode(settings, xi, n, out, v->blen[i], &got);
        }
        if (st == ENT_OK && got != v->blen[i])
            st = ent_fail(ENT_ERR_INTERNAL, "chunk %u encoded to %zu bytes, expected %zu", i, got,
                          v->blen[i]);
        if (st != ENT_OK) {
            coal_vec_free(v);
            return st;
        }
        v->have[i] = 1;
    }
    v->received = v->count;
    return ENT_OK;
}

ent_status coal_vec_send(ent_link_endpoint_t *ep, const ent_link_peer *to, int type,
                         uint32_t site, uint64_t round, const coal_vec *v) {
    ent_link_buf msg = {0};
    ent_status st = ENT_OK;
    for (uint32_t i = 0; i < v->count && st == ENT_OK; i++) {
        ent_link_chunk c = {.index = i, .count = v->count, .total = v->total,
                            .offset = v->poff[i], .length = v->plen[i], .codec = v->codec,
                            .anchor_hash = v->anchor_hash, .tokens = v->tokens,
                            .data = v->data + v->boff[i], .data_len = v->blen[i]};
        st = type == ENT_LINK_DELTA   ? ent_link_encode_delta(&msg, site, round, &c)
             : type == ENT_LINK_STATE ? ent_link_encode_state(&msg, site, round, &c)
                                      : ent_link_encode_update(&msg, site, round, &c);
        if (st == ENT_OK) st = ent_link_send(ep, to, msg.data, msg.len);
    }
    ent_link_buf_free(&msg);
    return st;
}

ent_status coal_vec_expect(coal_vec *v, uint16_t codec, const ent_codec *settings,
                           uint64_t total, uint32_t chunk_bytes) {
    return vec_layout(v, codec, settings, total, chunk_bytes);
}

ent_status coal_vec_add(coal_vec *v, const ent_link_chunk *c, const char *peer, int *complete) {
    *complete = 0;
    if (c->count != v->count || c->total != v->total || c->codec != v->codec)
        return ent_fail(ENT_ERR_INPUT, "%s: chunk %u of %u (%llu parameters, codec %u); expected "
                        "%u chunks of %llu parameters in codec %u", peer, c->index, c->count,
                        (unsigned long long)c->total, c->codec, v->count,
                        (unsigned long long)v->total, v->codec);
    uint32_t i = c->index;
    if (c->offset != v->poff[i] || c->length != v->plen[i] || c->data_len != v->blen[i])
        return ent_fail(ENT_ERR_INPUT, "%s: chunk %u covers [%llu, +%llu) in %zu bytes; expected "
                        "[%llu, +%llu) in %zu bytes", peer, i, (unsigned long long)c->offset,
                        (unsigned long long)c->length, c->data_len,
                        (unsigned long long)v->poff[i], (unsigned long long)v->plen[i],
                        v->blen[i]);
    if (v->have[i])
        return ent_fail(ENT_ERR_INPUT, "%s: chunk %u arrived twice", peer, i);
    if (v->received > 0 && (c->anchor_hash != v->anchor_hash || c->tokens != v->tokens))
        return ent_fail(ENT_ERR_INPUT, "%s: chunk %u disagrees with the chunks before it (anchor "
                        "hash or tokens)", peer, i);
    if (v->codec != ENT_LINK_CODEC_F32) {
        ent_codec got;
        uint64_t n = 0;
        if (ent_codec_read_header(c->data, c->data_len, &got, &n) != ENT_OK)
            return ent_fail(ENT_ERR_INPUT, "%s: chunk %u: %s", peer, i, ent_last_error());
        if ((uint16_t)got.kind != v->codec || n != c->length)
            return ent_fail(ENT_ERR_INPUT, "%s: chunk %u holds %llu values in codec %d; its header "
                            "says %llu in codec %u", peer, i, (unsigned long long)n, got.kind,
                            (unsigned long long)c->length, v->codec);
    }
    memcpy(v->data + v->boff[i], c->data, c->data_len);
    v->anchor_hash = c->anchor_hash;
    v->tokens = c->tokens;
    v->have[i] = 1;
    v->received++;
    *complete = v->received == v->count;
    return ENT_OK;
}

ent_status coal_vec_apply(const coal_vec *v, float alpha, float *y) {
    if (v->codec == ENT_LINK_CODEC_F32) {
        memcpy(y, v->data, sizeof(float) * v->total);
        return ENT_OK;
    }
    // every chunk decoded (and so checked in full) before any is applied: a
    // bad one leaves y untouched
    size_t most = 0;
    for (uint32_t i = 0; i < v->count; i++) most = v->plen[i] > most ? v->plen[i] : most;
    float *scratch = malloc(sizeof(float) * (most > 0 ? most : 1));
    if (scratch == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    ent_status st = ENT_OK;
    for (uint32_t i = 0; i < v->count && st == ENT_OK; i++)
        st = ent_codec_decode(v->data + v->boff[i], v->blen[i], scratch, v->plen[i]);
    free(scratch);
    for (uint32_t i = 0; i < v->count && st == ENT_OK; i++)
        st = ent_codec_decode_axpy(v->data + v->boff[i], v->blen[i], alpha, y + v->poff[i],
                                   v->plen[i]);
    return st;
}

ent_status coal_vec_bcast(coal_vec *v, ent_group_t *g, int root) {
    int me = ent_group_rank(g) == root;
    uint64_t head[6] = {v->codec, v->total, v->len, v->anchor_hash, v->tokens, v->count};
    ENT_CHECK(ent_broadcast(g, head, 6, ENT_U64, root));
    if (!me) {
        coal_vec_free(v);
        v->codec = (uint16_t)head[0];
        v->total = head[1];
        v->len = head[2];
        v->anchor_hash = head[3];
        v->tokens = head[4];
        v->count = v->received = (uint32_t)head[5];
        size_t count = head[5];
        v->poff = calloc(count, sizeof *v->poff);
        v->plen = calloc(count, sizeof *v->plen);
        v->boff = calloc(count, sizeof *v->boff);
        v->blen = calloc(count, sizeof *v->blen);
        v->have = calloc(count, 1);
        v->data = malloc(v->len > 0 ? v->len : 1);
    }
    int32_t ok = v->poff && v->plen && v->boff && v->blen && v->have && v->data, all = 0;
    ENT_CHECK(ent_allreduce(g, &ok, &all, 1, ENT_I32, ENT_MIN));
    if (!all) return ent_fail(ENT_ERR_NOMEM, "out of memory for a vector of %zu bytes", v->len);
    _Static_assert(sizeof(size_t) == sizeof(uint64_t), "size_t is 64 bits");
    uint64_t *tables[4] = {v->poff, v->plen, (uint64_t *)v->boff, (uint64_t *)v->blen};
    for (int t = 0; t < 4; t++) ENT_CHECK(ent_broadcast(g, tables[t], v->count, ENT_U64, root));
    return ent_broadcast(g, v->data, v->len, ENT_U8, root);
}

// ---------------------------------------------------------------------------
// the coordinator's arithmetic of a round

ent_status coal_vec_norm(const coal_vec *v, float *scratch, double *norm) {
    *norm = 0;
    if (v->received != v->count) return ent_fail(ENT_ERR_INPUT, "an incomplete vector");
    double sum = 0;
    for (uint32_t ch = 0; ch < v->count; ch++) {
        float *x = scratch + v->poff[ch];
        ENT_CHECK(ent_codec_decode(v->data + v->boff[ch], v->blen[ch], x, v->plen[ch]));
        for (uint64_t i = 0; i < v->plen[ch]; i++) sum += (double)x[i] * x[i];
    }
    if (!isfinite(sum)) return ent_fail(ENT_ERR_INPUT, "its values overflow (norm not finite)");
    *norm = sqrt(sum);
    return ENT_OK;
}

ent_status coal_round_merge(const coal_vec *const *deltas, const float *const *decoded,
                            const uint32_t *ids, int count, const ent_outer_opt *outer,
                            const ent_codec *codec, uint32_t chunk_bytes, float *anchor,
                            float *momentum, float *resid, float *g, size_t n,
                            coal_vec *update) {
    if (count < 1) return ent_fail(ENT_ERR_INPUT, "a round with no delta");
    ent_site_delta *d = calloc((size_t)count, sizeof *d);
    if (d == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    const coal_vec *first = deltas[0];
    uint64_t tokens = 0;
    ent_status st = ENT_OK;
    for (int i = 0; i < count && st == ENT_OK; i++) {
        tokens += deltas[i]->tokens;
        if (deltas[i]->count != first->count || deltas[i]->total != n ||
            deltas[i]->received != deltas[i]->count)
            st = ent_fail(ENT_ERR_INPUT, "site %u: its delta is not complete, or of another "
                          "layout", ids[i]);
    }
    // chunk by chunk: the same chunking on every site, summed in site order
    for (uint32_t ch = 0; ch < first->count && st == ENT_OK; ch++) {
        for (int i = 0; i < count; i++) {
            const coal_vec *v = deltas[i];
            // decoded: the same products w * D(x) added in the same order as
            // from the bytes, so the same bits (docs/coalition.md)
            d[i] = decoded != NULL
                       ? (ent_site_delta){.site = ids[i], .tokens = v->tokens,
                                          .values = decoded[i] + v->poff[ch]}
                       : (ent_site_delta){.site = ids[i], .tokens = v->tokens,
                                          .encoded = v->data + v->boff[ch],
                                          .encoded_len = v->blen[ch]};
        }
        st = ent_coalition_merge(d, count, g + first->poff[ch], first->plen[ch]);
    }
    free(d);
    if (st == ENT_OK) st = ent_outer_nesterov_update(outer, momentum, g, g, n);
    if (st == ENT_OK)
        st = coal_vec_encode(update, (uint16_t)codec->kind, codec, g, resid, n, chunk_bytes);
    // the coordinator's copy moves exactly as every site's will
    if (st == ENT_OK) st = coal_vec_apply(update, -1.0f, anchor);
    if (st == ENT_OK) {
        update->anchor_hash = ent_anchor_hash(anchor, n);
        update->tokens = tokens;
    }
    return st;
}
