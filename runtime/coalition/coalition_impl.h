// coalition_impl.h: private to runtime/coalition/: what the site's round
// driver (site.c) and the coordinator (coordinator.c) share: the parameter
// table's global layout, and vectors that travel as DELTA or UPDATE chunks
// (vec.c). docs/coalition.md describes the rounds, docs/protocol.md the bytes.
#ifndef ENT_COALITION_IMPL_H
#define ENT_COALITION_IMPL_H

#include "runtime_impl.h"

// ---- the global layout ----
// Every vector that crosses sites (a delta, an update, the anchor) lists the
// parameter table's rows in table order, each at its global shape, row-major,
// with no padding: n = the table's global element count. A rank's arena holds
// its tensor-parallel part of each row, padded; these map one to the other.
typedef struct {
    const ent_param_table *table; // a tensor-parallel rank's table (every rank's has the same offsets)
    size_t *goff;                 // global offset of each row
    size_t n;                     // global elements
} coal_layout;

ent_status coal_layout_new(const ent_param_table *table, coal_layout *out);
void coal_layout_free(coal_layout *l);
// Tensor-parallel rank tp_rank's arena elements into their places in global.
void coal_arena_to_global(const coal_layout *l, int tp_rank, const float *arena, float *global);
// Rank tp_rank's part of global into its arena (padding untouched).
void coal_global_to_arena(const coal_layout *l, int tp_rank, const float *global, float *arena);

// ---- the link's keys (secure.c) ----
// What an endpoint's CURVE options point into: keep it alive as long as the
// endpoint is open.
typedef struct {
    ent_link_keypair self; // coalition.key
    // a site: the public key of each coordinator endpoint it may use
    // (coalition.coordinator_key: one for all, or one per endpoint)
    ent_link_keypair server[ENT_COAL_ENDPOINTS_MAX];
    int nserver;
    ent_link_keypair *allow; // the coordinator: coalition.allow (a standby: and the primary's key)
    int nallow;
    ent_link_keypair standby; // coalition.standby's public key (a primary's, or a chained standby's)
    ent_link_keypair primary; // a standby: its streamer's public key (coalition.primary_key)
} coal_keys;

// Loads the keys a coordinator (coordinator = 1) or a site needs and points
// lo's CURVE fields at them (a site's at its first endpoint's key); with
// cfg->coal_insecure, warns and leaves lo plaintext. A missing setting is
// ENT_ERR_USAGE saying what to set; a bad key file ENT_ERR_INPUT naming it;
// a site's key must carry its coalition.site name. A standby
// (cfg->coal_standby_mode) admits the primary's key besides the sites' (in a
// chain, the key of the standby that streams to it).
ent_status coal_keys_load(const ent_config *cfg, int coordinator, coal_keys *k,
                          ent_link_opts *lo);
void coal_keys_free(coal_keys *k);

// ---- vectors in chunks ----
// A vector over the global layout as it travels: `count` chunks, chunk i
// covering parameters [poff[i], poff[i] + plen[i]) and held in data at
// [boff[i], boff[i] + blen[i]). Raw float32 (codec ENT_LINK_CODEC_F32) for the
// anchor a site joins with; an encoded buffer per chunk (ent_codec_encode,
// self-describing) for deltas and updates. Both sides derive the chunking
// from (codec, total, chunk_bytes), so a receiver knows what to expect.
typedef struct {
    uint16_t codec;   // ent_link_codec
    uint64_t total;   // parameters
    uint32_t count;   // chunks
    uint64_t *poff, *plen;
    size_t *boff, *blen;
    uint8_t *data;
    size_t len;       // bytes in data
    uint64_t anchor_hash, tokens;
    uint32_t received; // assembling: chunks in so far
    uint8_t *have;     // assembling: which
} coal_vec;

void coal_vec_free(coal_vec *v);
// Parameters per chunk: the largest multiple of ENT_CODEC_TOPK_BLOCK (a
// multiple of every default block) whose encoding fits chunk_bytes (at least
// one such block).
ent_status coal_chunk_params(uint16_t codec, const ent_codec *settings, uint32_t chunk_bytes,
                             size_t *per_chunk);
// Encodes x (total floats, overwritten) into v: raw f32 when codec is
// ENT_LINK_CODEC_F32 (settings and residual unused), else with error feedback
// into residual (ent_codec_encode_feedback, chunk by chunk) when residual is
// set, plainly when it is NULL.
ent_status coal_vec_encode(coal_vec *v, uint16_t codec, const ent_codec *settings, float *x,
                           float *residual, size_t total, uint32_t chunk_bytes);
// Sends every chunk as a DELTA, an UPDATE or a STATE (type) to `to` (NULL
// from a DEALER) for site and round.
ent_status coal_vec_send(ent_link_endpoint_t *ep, const ent_link_peer *to, int type,
                         uint32_t site, uint64_t round, const coal_vec *v);
// Starts assembling a vector of `total` parameters in codec with the
// chunking chunk_bytes gives.
ent_status coal_vec_expect(coal_vec *v, uint16_t codec, const ent_codec *settings,
                           uint64_t total, uint32_t chunk_bytes);
// Adds one received chunk: it must be the expected one (index, range,
// codec, total), agree with the chunks before it (anchor hash, tokens), not
// repeat one, and its data must be the encoding of its range (header checked;
// for f32, 4 bytes per parameter). ENT_ERR_INPUT naming `peer` otherwise.
// *complete = 1 once every chunk is in.
ent_status coal_vec_add(coal_vec *v, const ent_link_chunk *c, const char *peer, int *complete);
// y += alpha * D(v) over the whole vector (every chunk checked first by the
// decoder); f32 vectors are copied into y instead (alpha unused).
ent_status coal_vec_apply(const coal_vec *v, float alpha, float *y);
// Decodes a complete vector into scratch (total floats) and gives its L2
// norm: ENT_ERR_INPUT with the decoder's reason when a chunk does not decode
// (the decoder refuses non-finite scales; the sum of squares is checked
// too). What the coordinator screens a delta with before it merges it.
ent_status coal_vec_norm(const coal_vec *v, float *scratch, double *norm);
// Gives every rank of g the root's complete vector (collective).
ent_status coal_vec_bcast(coal_vec *v, ent_group_t *g, int root);

// The coordinator's arithmetic of one round (coordinator.c; bench_coordinator
// times it): g = the token-weighted merge of the count sites' complete deltas
// (site ids[i], one chunking), chunk by chunk in increasing id, read from
// their bytes, or, when decoded is set, from decoded[i] (n floats: what
// coal_vec_norm decoded deltas[i] to; the same bits, without decoding each
// delta a second time); the outer
// Nesterov step on momentum (g becomes the update); the update encoded with
// error feedback into resid as *update (anchor_hash: the anchor after it;
// tokens: the round's); and anchor -= D(update), exactly as every site
// applies it. g is scratch of n floats.
ent_status coal_round_merge(const coal_vec *const *deltas, const float *const *decoded,
                            const uint32_t *ids, int count, const ent_outer_opt *outer,
                            const ent_codec *codec, uint32_t chunk_bytes, float *anchor,
                            float *momentum, float *resid, float *g, size_t n,
                            coal_vec *update);

// ---- the ledger (ledger.c) ----
// Why a site's delta was left out of a round (the names the ledger and the
// coordinator's `rejected` records use: coal_reject_names).
typedef enum {
    COAL_REJECT_UNDECODABLE, // a chunk or the whole does not decode, or is not finite
    COAL_REJECT_ANCHOR,      // computed from another anchor than the round's
    COAL_REJECT_NORM,        // norm over coalition.max_norm_ratio x the round's median
    COAL_REJECT_STALE,       // a DELTA for a round already merged
    COAL_REJECT_LOSS,        // makes the held-out loss worse by over coalition.score_tolerance
    COAL_REJECT_TOKENS,      // tokens that its site's steps cannot have made (docs/coalition.md)
    COAL_REJECT_KINDS
} coal_reject_kind;
extern const char *const coal_reject_names[COAL_REJECT_KINDS];

// One site's entry: every number is a sum over the coordinator's
// metrics.jsonl records (docs/coalition.md, "The ledger").
typedef struct {
    char name[ENT_LINK_NAME_MAX + 1];
    uint64_t tokens;        // tokens of its deltas merged (round records' site_tokens)
    uint64_t inner_steps;   // inner steps it reported after each delta (report records)
    double compute_s;       // seconds of inner steps it reported (report records)
    uint64_t rounds_joined; // rounds merged while it was a member (round records' members)
    uint64_t accepted;      // its deltas merged (round records' sites)
    uint64_t rejected[COAL_REJECT_KINDS]; // its deltas left out, by kind (rejected records)
    uint64_t scored;  // its merged deltas that had a loss-change score (round records)
    double loss_gain; // the sum of their scores, L(A) - L(A - d) (round records' site_loss_gain)
    char first_time[32], last_time[32];   // UTC, ISO 8601
    uint64_t first_round, last_round;     // first: its first round; last: of its last report
} coal_ledger_site;

// The time now, UTC, as 2026-01-31T12:00:00Z.
void coal_utc_now(char out[32]);
// Seconds from a time written by coal_utc_now to now (whole seconds), or -1
// when iso is not such a time.
double coal_utc_age(const char *iso);
// The ledger of n sites as JSON text (format "entente-ledger", version 3);
// the caller owns it (free). NULL when out of memory.
char *coal_ledger_json(const coal_ledger_site *sites, int n, uint64_t rounds_merged);

// The entries of a ledger's text (checked as `entente ledger` checks it;
// ENT_ERR_INPUT naming path otherwise); the caller frees *sites (free).
ent_status coal_ledger_parse(const char *path, const char *text, coal_ledger_site **sites, int *n,
                             uint64_t *rounds_merged);

// "0123456789abcdef": a hash as 16 hex digits (JSON numbers lose 64-bit values).
void coal_hash_hex(uint64_t h, char out[17]);
// The hash of the settings every member of a coalition must share (model
// shape and the [coalition] round settings), sent in HELLO.
uint64_t coal_config_hash(const ent_config *cfg);
// *p = n zeroed floats, or ENT_ERR_NOMEM naming what they are for.
ent_status coal_alloc_floats(float **p, size_t n, const char *what);
// A test or bench hook's number from the environment (ENTENTE_FAULT_*):
// *value = 0 and ENT_OK when NAME is unset or empty; else its value, which
// must be a number in [lo, hi] (a whole one with `whole`), or ENT_ERR_USAGE
// naming NAME and the range. The caller logs what the hook does.
ent_status coal_fault_number(const char *name, double lo, double hi, int whole, double *value);

#endif // ENT_COALITION_IMPL_H
