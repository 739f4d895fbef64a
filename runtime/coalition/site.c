// site.c: a site of a coalition: `entente train` with a [coalition] section.
//
// The trainer object runs the inner steps; this file runs the rounds around
// it (docs/coalition.md, "Rounds"):
//
//   join     the leader (world rank 0) sends HELLO, gets WELCOME and the
//            anchor theta_anchor (f32 UPDATE chunks); every rank starts from it.
//   round r  H_r inner steps (the coordinator's ROUND_PLAN), then
//            d_r = theta_start - theta (this round's progress) is encoded with
//            error feedback and sent as DELTA chunks, at once; training does
//            not wait for the round's merge. The update of round r-1 (sent by
//            the coordinator while this round trained) is applied:
//            anchor -= D(update_{r-1}), and the model becomes
//            anchor - d_r: the merged progress of every site up to round r-1
//            plus this site's own progress in round r. The next round starts
//            from there.
//   end      after the last round the site waits for the last update; its
//            model is then the anchor itself, which it evaluates, samples and
//            saves; LEAVE.
//
// Only the leader talks to the coordinator; the other ranks get plans and
// updates over the site's own collectives. Every rank holds the anchor (and
// the error-feedback residual) in the global layout and encodes the same
// bytes, so every rank's anchor is bit-identical to the coordinator's.
#include "coalition_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PLAN_SLOTS 4

typedef struct {
    const ent_config *cfg;
    ent_comm_t *comm;
    ent_trainer_t *tr;
    const ent_grid *grid;
    int leader;
    coal_layout lay;
    size_t n, arena;
    float *anchor, *resid, *v;   // global layout
    float *p, *start, *gather;   // arena layout (gather: tp_size arenas)
    float *ck_anchor, *ck_resid; // what checkpoints write (arena layout)
    uint64_t anchor_hash;        // of anchor, as apply_update last checked it
    ent_ckpt_coalition ck;
    ent_codec codec;
    // the link (leader only)
    ent_link_endpoint_t *ep;
    ent_link_opts lo; // its options, pointing into keys
    coal_keys keys;
    char endpoint[256];
    uint32_t site_id, chunk_bytes, heartbeat_ms;
    uint64_t first_round;
    double last_heartbeat;
    uint64_t plan_round[PLAN_SLOTS];
    uint32_t plan_steps[PLAN_SLOTS];
    int plan_have[PLAN_SLOTS];
    coal_vec update;       // the update being received
    uint64_t update_round; // the round it belongs to
    int update_started;
    ent_link_stats marked; // link counters at the last round record
    int64_t printed_step;  // the step of the last round line printed
    uint64_t hb_round;     // the round and steps of the last heartbeat sent
    uint32_t hb_steps;
} site;

static ent_status site_fail(site *s, ent_status st, const char *what) {
    return ent_fail(st, "site %s, coordinator %s: %s: %s", s->cfg->coal_site, s->endpoint, what,
                    ent_last_error());
}

// ---------------------------------------------------------------------------
// the leader's side of the link

// Handles one message while waiting: plans and update chunks are kept,
// heartbeats ignored, an ERROR ends the site; anything else is dropped with
// a warning.
static ent_status handle(site *s, const ent_link_incoming *in) {
    const char *peer = in->peer.name;
    switch (in->header.type) {
    case ENT_LINK_ROUND_PLAN: {
        ent_link_round_plan m;
        ent_link_header h;
        ENT_CHECK(ent_link_decode_round_plan(in->bytes, in->len, peer, &h, &m));
        int k = (int)(h.round % PLAN_SLOTS);
        s->plan_round[k] = h.round;
        s->plan_steps[k] = m.inner_steps;
        s->plan_have[k] = 1;
        return ENT_OK;
    }
    case ENT_LINK_UPDATE: {
        ent_link_chunk c;
        ent_link_header h;
        ENT_CHECK(ent_link_decode_update(in->bytes, in->len, peer, &h, &c));
        if (h.round != s->update_round || !s->update_started)
            return ent_fail(ENT_ERR_INPUT, "%s: an UPDATE for round %llu while waiting for "
                            "round %llu's", peer, (unsigned long long)h.round,
                            (unsigned long long)s->update_round);
        int done = 0;
        return coal_vec_add(&s->update, &c, peer, &done);
    }
    case ENT_LINK_ERROR: {
        ent_link_reason r;
        ENT_CHECK(ent_link_decode_error(in->bytes, in->len, peer, NULL, &r));
        return ent_fail(ENT_ERR_INPUT, "%s refused this site (code %u): %s", peer, r.code, r.text);
    }
    case ENT_LINK_HEARTBEAT: return ENT_OK;
    default:
        ent_log_warn("site %s: dropped a %s from %s: not expected by a site", s->cfg->coal_site,
                     ent_link_type_name(in->header.type), peer);
        return ENT_OK;
    }
}

typedef int (*wait_done_fn)(const site *s, uint64_t arg);

static int have_plan(const site *s, uint64_t round) {
    int k = (int)(round % PLAN_SLOTS);
    return s->plan_have[k] && s->plan_round[k] == round;
}

static int have_update(const site *s, uint64_t round) {
    (void)round;
    return s->update.count > 0 && s->update.received == s->update.count;
}

// Receives until done(s, arg) holds, for at most coalition.timeout seconds.
static ent_status send_heartbeat(site *s, uint64_t round, uint32_t steps, double tokens_per_s);

// Receives until done(s, arg), for at most coalition.timeout; a HEARTBEAT
// goes out every heartbeat interval meanwhile, so that the coordinator does
// not take a waiting site for a lost one (coalition.lost_after).
static ent_status wait_for(site *s, wait_done_fn done, uint64_t arg, const char *what) {
    double until = coal_now() + s->cfg->coal_timeout;
    while (!done(s, arg)) {
        if (s->site_id != 0 && s->heartbeat_ms > 0 &&
            (coal_now() - s->last_heartbeat) * 1e3 >= s->heartbeat_ms)
            ENT_CHECK(send_heartbeat(s, s->hb_round, s->hb_steps, 0));
        double left = until - coal_now();
        if (left <= 0)
            return ent_fail(ENT_ERR_IO, "site %s: no %s from the coordinator %s within "
                            "coalition.timeout = %g s", s->cfg->coal_site, what, s->endpoint,
                            s->cfg->coal_timeout);
        ent_link_incoming in;
        int got = 0;
        int ms = left > 1.0 ? 1000 : (int)(left * 1000) + 1;
        ENT_CHECK(ent_link_recv(s->ep, ms, &in, &got));
        if (got) ENT_CHECK(handle(s, &in));
    }
    return ENT_OK;
}

static ent_status start_update(site *s, uint64_t round, uint16_t codec) {
    s->update_round = round;
    s->update_started = 1;
    return coal_vec_expect(&s->update, codec, &s->codec, s->n, s->chunk_bytes);
}

static ent_status send_heartbeat(site *s, uint64_t round, uint32_t steps, double tokens_per_s) {
    ent_link_heartbeat m = {.time_ns = (uint64_t)(coal_now() * 1e9), .steps_done = steps,
                            .tokens_per_s = isfinite(tokens_per_s) && tokens_per_s >= 0
                                                ? tokens_per_s : 0};
    s->hb_round = round; // what a heartbeat while waiting repeats
    s->hb_steps = steps;
    ent_link_buf msg = {0};
    ent_status st = ent_link_encode_heartbeat(&msg, s->site_id, round, &m);
    if (st == ENT_OK) st = ent_link_send(s->ep, NULL, msg.data, msg.len);
    ent_link_buf_free(&msg);
    s->last_heartbeat = coal_now();
    return st;
}

static ent_status send_leave(site *s, uint64_t round, uint16_t code, const char *text) {
    ent_link_reason r = {.code = code};
    snprintf(r.text, sizeof r.text, "%s", text);
    ent_link_buf msg = {0};
    ent_status st = ent_link_encode_leave(&msg, s->site_id, round, &r);
    if (st == ENT_OK) st = ent_link_send(s->ep, NULL, msg.data, msg.len);
    ent_link_buf_free(&msg);
    return st;
}

// HELLO, then WELCOME (or ERROR), then the anchor in f32 chunks.
static ent_status join(site *s, uint64_t *welcome) {
    const ent_config *cfg = s->cfg;
    ent_link_opts *lo = &s->lo;
    if (cfg->coal_timeout * 1e3 < lo->send_timeout_ms)
        lo->send_timeout_ms = (int)(cfg->coal_timeout * 1e3);
    ENT_CHECK(ent_link_dealer_connect(cfg->coal_coordinator, lo, &s->ep));
    ent_link_hello h = {.max_version = ENT_LINK_VERSION,
                        .shape_hash = ent_model_shape_hash(cfg),
                        .config_hash = coal_config_hash(cfg),
                        .dp_size = (uint32_t)s->grid->dp_size,
                        .tp_size = (uint32_t)s->grid->tp_size};
    snprintf(h.name, sizeof h.name, "%s", cfg->coal_site);
    ent_link_buf msg = {0};
    ent_status st = ent_link_encode_hello(&msg, 0, 0, &h);
    if (st == ENT_OK) st = ent_link_send(s->ep, NULL, msg.data, msg.len);
    ent_link_buf_free(&msg);
    ENT_CHECK(st);
    double until = coal_now() + cfg->coal_timeout;
    ent_link_welcome w;
    for (;;) {
        double left = until - coal_now();
        if (left <= 0)
            return ent_fail(ENT_ERR_IO, "no WELCOME within coalition.timeout = %g s (is the "
                            "coordinator running, and coalition.coordinator its endpoint?)",
                            cfg->coal_timeout);
        ent_link_incoming in;
        int got = 0;
        ENT_CHECK(ent_link_recv(s->ep, left > 1 ? 1000 : 1 + (int)(left * 1000), &in, &got));
        if (!got) continue;
        if (in.header.type == ENT_LINK_WELCOME) {
            ent_link_header hd;
            ENT_CHECK(ent_link_decode_welcome(in.bytes, in.len, in.peer.name, &hd, &w));
            s->site_id = hd.site;
            s->first_round = hd.round;
            break;
        }
        ENT_CHECK(handle(s, &in)); // an ERROR ends it
    }
    if (w.codec != (uint16_t)s->codec.kind)
        return ent_fail(ENT_ERR_USAGE, "the coordinator uses codec %u, this site %s", w.codec,
                        cfg->coal_codec);
    s->chunk_bytes = w.chunk_bytes;
    s->heartbeat_ms = w.heartbeat_ms;
    ENT_CHECK(start_update(s, s->first_round, ENT_LINK_CODEC_F32));
    ENT_CHECK(wait_for(s, have_update, 0, "anchor"));
    if (s->update.anchor_hash != w.anchor_hash)
        return ent_fail(ENT_ERR_INPUT, "the anchor's chunks say hash %016llx, the WELCOME "
                        "%016llx", (unsigned long long)s->update.anchor_hash,
                        (unsigned long long)w.anchor_hash);
    welcome[0] = s->site_id;
    welcome[1] = s->first_round;
    welcome[2] = s->chunk_bytes;
    welcome[3] = s->heartbeat_ms;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// every rank

static ent_status site_setup(site *s) {
    ent_model_t *model = ent_trainer_model(s->tr);
    const ent_param_table *t = ent_model_table(model);
    ENT_CHECK(coal_layout_new(t, &s->lay));
    s->n = s->lay.n;
    s->arena = ent_model_arena_floats(model);
    ENT_CHECK(coal_alloc_floats(&s->anchor, s->n, "the anchor"));
    ENT_CHECK(coal_alloc_floats(&s->resid, s->n, "the residual"));
    ENT_CHECK(coal_alloc_floats(&s->v, s->n, "the delta"));
    ENT_CHECK(coal_alloc_floats(&s->p, s->arena, "the parameters"));
    ENT_CHECK(coal_alloc_floats(&s->start, s->arena, "the round's start"));
    ENT_CHECK(coal_alloc_floats(&s->gather, s->arena * (size_t)s->grid->tp_size, "the gather"));
    ENT_CHECK(coal_alloc_floats(&s->ck_anchor, s->arena, "the checkpoint's anchor"));
    ENT_CHECK(coal_alloc_floats(&s->ck_resid, s->arena, "the checkpoint's residual"));
    return ENT_OK;
}

static void site_free(site *s) {
    coal_layout_free(&s->lay);
    free(s->anchor);
    free(s->resid);
    free(s->v);
    free(s->p);
    free(s->start);
    free(s->gather);
    free(s->ck_anchor);
    free(s->ck_resid);
    coal_vec_free(&s->update);
    ent_link_close(&s->ep);
    coal_keys_free(&s->keys);
}

// The leader's status, agreed by every rank (the others wait in it).
static ent_status agree(site *s, ent_status leader_st) {
    return ent_comm_agree(s->comm, s->leader ? leader_st : ENT_OK);
}

// Every rank gets the leader's update (after `agree`) and applies it to the
// anchor; the anchor's hash must then be the one the chunks name.
static ent_status apply_update(site *s, uint64_t round) {
    ENT_CHECK(coal_vec_bcast(&s->update, s->grid->world, 0));
    if (s->update.codec == ENT_LINK_CODEC_F32) ENT_CHECK(coal_vec_apply(&s->update, 1.0f, s->anchor));
    else ENT_CHECK(coal_vec_apply(&s->update, -1.0f, s->anchor));
    uint64_t h = ent_anchor_hash(s->anchor, s->n);
    s->anchor_hash = h;
    if (h != s->update.anchor_hash)
        return ent_fail(ENT_ERR_INPUT, "site %s: after the update of round %llu the anchor's hash "
                        "is %016llx, the coordinator's %016llx: the copies differ",
                        s->cfg->coal_site, (unsigned long long)round, (unsigned long long)h,
                        (unsigned long long)s->update.anchor_hash);
    coal_vec_free(&s->update);
    s->update_started = 0;
    return ENT_OK;
}

// The global vector of this rank's arena x (its tensor-parallel group's parts
// put together) into out.
static ent_status to_global(site *s, const float *x, float *out) {
    int tp = s->grid->tp_size;
    if (tp == 1) {
        coal_arena_to_global(&s->lay, 0, x, out);
        return ENT_OK;
    }
    ENT_CHECK(ent_allgather(s->grid->tp, x, s->gather, s->arena, ENT_F32));
    for (int r = 0; r < tp; r++) coal_arena_to_global(&s->lay, r, s->gather + (size_t)r * s->arena, out);
    return ENT_OK;
}

// The plan of a round: the leader waits for it, every rank gets it.
static ent_status round_plan(site *s, uint64_t round, uint32_t *steps) {
    ent_status st = ENT_OK;
    int64_t h = 0;
    if (s->leader) {
        st = wait_for(s, have_plan, round, "ROUND_PLAN");
        if (st == ENT_OK) h = s->plan_steps[round % PLAN_SLOTS];
        if (st != ENT_OK) st = site_fail(s, st, "waiting for a round plan");
    }
    ENT_CHECK(agree(s, st));
    ENT_CHECK(ent_broadcast(s->grid->world, &h, 1, ENT_I64, 0));
    *steps = (uint32_t)h;
    return ENT_OK;
}

static ent_status record_round(site *s, uint64_t round, uint32_t steps, double compute_s,
                               double wait_s, double wall_s, const ent_step_stats *last) {
    ent_link_stats now = {0};
    if (s->leader) ent_link_get_stats(s->ep, &now);
    char hash[17];
    coal_hash_hex(s->anchor_hash, hash);
    ent_json_field rec[] = {
        ENT_JSTR("event", "round"),
        ENT_JSTR("site", s->cfg->coal_site),
        ENT_JINT("round", round),
        ENT_JINT("inner_steps", steps),
        ENT_JINT("step", ent_trainer_steps_done(s->tr)),
        ENT_JINT("tokens", ent_trainer_tokens(s->tr)),
        ENT_JNUM("loss", last->loss),
        ENT_JINT("anchor_round", (long long)round - (s->cfg->coal_overlap ? 1 : 0)),
        ENT_JSTR("anchor_hash", hash),
        ENT_JINT("bytes_sent", now.bytes_sent - s->marked.bytes_sent),
        ENT_JINT("bytes_received", now.bytes_received - s->marked.bytes_received),
        ENT_JNUM("compute_s", compute_s),
        ENT_JNUM("wait_s", wait_s),
        ENT_JNUM("wall_s", wall_s),
        ENT_JNUM("elapsed_s", ent_trainer_elapsed(s->tr)),
    };
    s->marked = now;
    // a line a round, but no more often than train.log_every steps (the
    // first and last rounds always): short rounds would flood the terminal
    int64_t step = ent_trainer_steps_done(s->tr);
    int print = round == 0 || round + 1 == (uint64_t)s->cfg->coal_rounds ||
                step - s->printed_step >= s->cfg->log_every;
    if (print) s->printed_step = step;
    if (s->leader && print)
        ent_log_info("site %s: round %llu done: %u inner steps, loss %.4f, %.1f s computing, "
                     "%.2f s waiting; anchor %s", s->cfg->coal_site, (unsigned long long)round,
                     steps, last->loss, compute_s, wait_s, hash);
    return ent_trainer_record(s->tr, rec, (int)(sizeof rec / sizeof rec[0]));
}

// The arrays checkpoints write, in this rank's arena layout.
static void refresh_checkpoint_state(site *s, uint64_t round) {
    ent_trainer_set_coalition(s->tr, &s->ck, s->cfg->coal_site, (int)round);
    coal_global_to_arena(&s->lay, s->grid->tp_rank, s->anchor, s->ck_anchor);
    coal_global_to_arena(&s->lay, s->grid->tp_rank, s->resid, s->ck_resid);
    s->ck = (ent_ckpt_coalition){.anchor = s->ck_anchor, .residual = s->ck_resid,
                                 .round = (int64_t)round};
}

// The leader takes what has arrived (plans, update chunks) without waiting,
// so ZeroMQ's queue drains while the site trains; every rank then learns the
// round's plan, which the coordinator may revise while it runs (the first
// round, once it has measured the site's speed). The round ends after
// *steps steps, never before step i.
static ent_status replan(site *s, uint64_t round, uint32_t i, uint32_t *steps) {
    ent_status st = ENT_OK;
    int64_t h = *steps;
    if (s->leader) {
        for (int k = 0; k < 256 && st == ENT_OK; k++) {
            ent_link_incoming in;
            int got = 0;
            st = ent_link_recv(s->ep, 0, &in, &got);
            if (st != ENT_OK || !got) break;
            st = handle(s, &in);
        }
        if (st == ENT_OK && have_plan(s, round)) h = s->plan_steps[round % PLAN_SLOTS];
        if (st != ENT_OK) st = site_fail(s, st, "during the round");
    }
    ENT_CHECK(agree(s, st));
    ENT_CHECK(ent_broadcast(s->grid->world, &h, 1, ENT_I64, 0));
    *steps = h < (int64_t)i ? i : (uint32_t)h;
    return ENT_OK;
}

// The round's inner steps (*steps, as the plan may change), with the
// evaluations, samples and stop requests of `entente train`, and the
// leader's heartbeats. *stop: the signal that stopped it (0: none).
static ent_status inner_steps(site *s, uint64_t round, uint32_t *steps, double *compute_s,
                              ent_step_stats *last, int *stop) {
    const ent_config *cfg = s->cfg;
    *compute_s = 0;
    *stop = 0;
    for (uint32_t i = 1; i <= *steps; i++) {
        ENT_CHECK(ent_trainer_step(s->tr, last));
        *compute_s += last->seconds;
        int step = ent_trainer_steps_done(s->tr);
        ent_status io = ENT_OK;
        if (cfg->eval_every > 0 && step % cfg->eval_every == 0) io = ent_trainer_eval(s->tr, NULL);
        if (io == ENT_OK && cfg->sample_every > 0 && step % cfg->sample_every == 0)
            io = ent_trainer_sample(s->tr);
        // the plan of the next round and the coordinator's idea of this
        // site's speed come from these
        if (io == ENT_OK && s->leader &&
            (i == 1 || i == 3 || (coal_now() - s->last_heartbeat) * 1e3 >= s->heartbeat_ms))
            io = send_heartbeat(s, round, i, last->tokens_per_s);
        ENT_CHECK(ent_trainer_sync(s->tr, io, stop));
        if (*stop) return ENT_OK;
        ENT_CHECK(replan(s, round, i, steps));
    }
    return ENT_OK;
}

// Fault injection, for the tests of the coordinator's screen only:
// ENTENTE_FAULT_DELTA = scale:F (the delta times F, before encoding) or nan
// (the first block parameter of the encoded delta, a scale, set to NaN after
// encoding, as no honest encoder writes it) spoils this site's delta from
// round ENTENTE_FAULT_ROUND (default 1) on, as a broken or hostile site would
// send it. Unset, nothing happens. encoded: NULL before encoding.
static void inject_fault(site *s, uint64_t round, coal_vec *encoded) {
    const char *f = getenv("ENTENTE_FAULT_DELTA");
    if (f == NULL || f[0] == '\0') return;
    const char *r = getenv("ENTENTE_FAULT_ROUND");
    if (round < (uint64_t)(r != NULL ? strtoull(r, NULL, 10) : 1)) return;
    int scale = strncmp(f, "scale:", 6) == 0, nan = strcmp(f, "nan") == 0;
    if (encoded == NULL && scale) {
        float k = strtof(f + 6, NULL);
        for (size_t i = 0; i < s->n; i++) s->v[i] *= k;
    } else if (encoded != NULL && nan && encoded->count > 0 &&
               encoded->blen[0] >= ENT_CODEC_HEADER_BYTES + 4) {
        const uint8_t bits[4] = {0x00, 0x00, 0xc0, 0x7f}; // a quiet NaN, little-endian
        memcpy(encoded->data + encoded->boff[0] + ENT_CODEC_HEADER_BYTES, bits, 4);
    } else {
        return;
    }
    if (s->leader)
        ent_log_warn("site %s: ENTENTE_FAULT_DELTA=%s: round %llu's delta spoiled on purpose",
                     s->cfg->coal_site, f, (unsigned long long)round);
}

// The end of round r: the delta goes out, the update of round r-1 comes in.
static ent_status end_round(site *s, uint64_t round, uint32_t steps, double compute_s) {
    int tp_rank = s->grid->tp_rank;
    ENT_CHECK(ent_trainer_params_to_host(s->tr, s->p));
    // this round's progress: start - p, in the global layout, plus the residual
    for (size_t i = 0; i < s->arena; i++) s->start[i] = s->start[i] - s->p[i];
    ENT_CHECK(to_global(s, s->start, s->v));
    inject_fault(s, round, NULL);
    coal_vec delta = {0};
    ENT_CHECK(coal_vec_encode(&delta, (uint16_t)s->codec.kind, &s->codec, s->v, s->resid, s->n,
                              s->chunk_bytes));
    inject_fault(s, round, &delta);
    ent_status st = ENT_OK;
    if (s->leader) {
        delta.anchor_hash = s->anchor_hash;
        delta.tokens = (uint64_t)steps * (uint64_t)s->cfg->batch_size * (uint64_t)s->cfg->context;
        st = coal_vec_send(s->ep, NULL, ENT_LINK_DELTA, s->site_id, round, &delta);
        // the rate this round trained at, for the coordinator's plans
        if (st == ENT_OK)
            st = send_heartbeat(s, round, steps, compute_s > 0 ? delta.tokens / compute_s : 0);
        if (st != ENT_OK) st = site_fail(s, st, "sending the delta");
    }
    coal_vec_free(&delta);
    ENT_CHECK(agree(s, st));
    if (!s->cfg->coal_overlap) {
        // DiLoCo as published: this round's merge, then the next round
        // starts from the new anchor
        if (s->leader) {
            st = wait_for(s, have_update, round, "UPDATE");
            if (st != ENT_OK) st = site_fail(s, st, "waiting for the update");
        }
        ENT_CHECK(agree(s, st));
        ENT_CHECK(apply_update(s, round));
        if (s->leader) ENT_CHECK(start_update(s, round + 1, (uint16_t)s->codec.kind));
        coal_global_to_arena(&s->lay, tp_rank, s->anchor, s->p);
        ENT_CHECK(ent_trainer_set_params(s->tr, s->p));
        memcpy(s->start, s->p, sizeof(float) * s->arena);
        return ENT_OK;
    }
    if (round == s->first_round) {
        // nothing to merge yet: the next round goes on from here
        memcpy(s->start, s->p, sizeof(float) * s->arena);
        return ENT_OK;
    }
    if (s->leader) {
        st = wait_for(s, have_update, round - 1, "UPDATE");
        if (st != ENT_OK) st = site_fail(s, st, "waiting for the update");
    }
    ENT_CHECK(agree(s, st));
    ENT_CHECK(apply_update(s, round - 1));
    if (s->leader) ENT_CHECK(start_update(s, round, (uint16_t)s->codec.kind));
    // the model: the new anchor minus this round's own progress (in start)
    coal_global_to_arena(&s->lay, tp_rank, s->anchor, s->p);
    for (size_t i = 0; i < s->arena; i++) s->p[i] = s->p[i] - s->start[i];
    ENT_CHECK(ent_trainer_set_params(s->tr, s->p));
    memcpy(s->start, s->p, sizeof(float) * s->arena);
    return ENT_OK;
}

static ent_status run_rounds(site *s) {
    const ent_config *cfg = s->cfg;
    uint64_t welcome[4] = {0};
    ent_status st = ENT_OK;
    if (s->leader) {
        snprintf(s->endpoint, sizeof s->endpoint, "%s", cfg->coal_coordinator);
        st = join(s, welcome);
        if (st != ENT_OK) st = site_fail(s, st, "joining");
    }
    ENT_CHECK(agree(s, st));
    ENT_CHECK(ent_broadcast(s->grid->world, welcome, 4, ENT_U64, 0));
    s->site_id = (uint32_t)welcome[0];
    s->first_round = welcome[1];
    s->chunk_bytes = (uint32_t)welcome[2];
    s->heartbeat_ms = (uint32_t)welcome[3];
    uint64_t rounds = (uint64_t)cfg->coal_rounds;
    if (s->first_round >= rounds)
        return ent_fail(ENT_ERR_USAGE, "the coalition is at round %llu of %llu: nothing left",
                        (unsigned long long)s->first_round, (unsigned long long)rounds);
    // the anchor every rank starts from
    ENT_CHECK(apply_update(s, s->first_round));
    if (s->leader) {
        ENT_CHECK(start_update(s, s->first_round, (uint16_t)s->codec.kind));
        ent_log_info("site %s joined the coalition at %s as site %u, round %llu of %llu; anchor "
                     "%016llx", cfg->coal_site, s->endpoint, s->site_id,
                     (unsigned long long)s->first_round, (unsigned long long)rounds,
                     (unsigned long long)s->anchor_hash);
        ent_link_get_stats(s->ep, &s->marked);
    }
    coal_global_to_arena(&s->lay, s->grid->tp_rank, s->anchor, s->p);
    ENT_CHECK(ent_trainer_set_params(s->tr, s->p));
    memcpy(s->start, s->p, sizeof(float) * s->arena);
    refresh_checkpoint_state(s, s->first_round);
    ENT_CHECK(ent_trainer_sync(s->tr, ent_trainer_eval(s->tr, NULL), NULL));

    int stop = 0, next_save = cfg->ckpt_every;
    ent_step_stats last = {0};
    uint64_t round = s->first_round;
    for (; round < rounds; round++) {
        double t0 = coal_now(), compute_s = 0;
        uint32_t steps = 0;
        ENT_CHECK(round_plan(s, round, &steps));
        double t_plan = coal_now() - t0;
        int done = ent_trainer_steps_done(s->tr);
        uint64_t horizon = (uint64_t)done + (uint64_t)steps * (rounds - round);
        ent_trainer_set_horizon(s->tr, horizon < (uint64_t)cfg->steps ? (int)horizon : cfg->steps);
        ent_trainer_set_coalition(s->tr, &s->ck, cfg->coal_site, (int)round);
        ENT_CHECK(inner_steps(s, round, &steps, &compute_s, &last, &stop));
        if (stop) break;
        double t1 = coal_now();
        ENT_CHECK(end_round(s, round, steps, compute_s));
        double wait_s = t_plan + (coal_now() - t1);
        refresh_checkpoint_state(s, round + 1);
        ENT_CHECK(record_round(s, round, steps, compute_s, wait_s, coal_now() - t0, &last));
        ENT_CHECK(ent_trainer_sync(s->tr, ENT_OK, &stop));
        if (stop) break;
        if (cfg->ckpt_every > 0 && ent_trainer_steps_done(s->tr) >= next_save &&
            round + 1 < rounds) {
            ENT_CHECK(ent_trainer_save(s->tr));
            while (next_save <= ent_trainer_steps_done(s->tr)) next_save += cfg->ckpt_every;
        }
    }
    if (stop) {
        if (s->leader) (void)send_leave(s, round, ENT_LINK_LEAVE_STOPPED, "stopped by a signal");
        return ent_trainer_finish(s->tr, stop);
    }
    // the last update (without overlap: applied already): the model becomes the anchor
    st = ENT_OK;
    if (s->leader && cfg->coal_overlap) {
        st = wait_for(s, have_update, rounds - 1, "last UPDATE");
        if (st != ENT_OK) st = site_fail(s, st, "waiting for the last update");
    }
    ENT_CHECK(agree(s, st));
    if (cfg->coal_overlap) ENT_CHECK(apply_update(s, rounds - 1));
    coal_global_to_arena(&s->lay, s->grid->tp_rank, s->anchor, s->p);
    ENT_CHECK(ent_trainer_set_params(s->tr, s->p));
    refresh_checkpoint_state(s, rounds);
    char hash[17];
    coal_hash_hex(s->anchor_hash, hash);
    // every rank's own copy, for whoever compares them (the tests do)
    ent_log_info("site %s: rank %d holds anchor %s after round %llu", cfg->coal_site,
                 ent_comm_rank(s->comm), hash, (unsigned long long)rounds - 1);
    ent_json_field rec[] = {ENT_JSTR("event", "anchor"), ENT_JSTR("site", cfg->coal_site),
                            ENT_JINT("anchor_round", (long long)rounds - 1),
                            ENT_JSTR("anchor_hash", hash),
                            ENT_JNUM("elapsed_s", ent_trainer_elapsed(s->tr))};
    ENT_CHECK(ent_trainer_record(s->tr, rec, (int)(sizeof rec / sizeof rec[0])));
    ENT_CHECK(ent_trainer_sync(s->tr, ent_trainer_eval(s->tr, NULL), NULL));
    ENT_CHECK(ent_trainer_sync(s->tr, ent_trainer_sample(s->tr), NULL));
    if (s->leader) {
        ent_log_info("site %s: the coalition's %llu rounds are done; this site's model is the "
                     "anchor %s", cfg->coal_site, (unsigned long long)rounds, hash);
        ENT_CHECK(send_leave(s, rounds, ENT_LINK_LEAVE_FINISHED, "finished"));
    }
    return ent_trainer_finish(s->tr, 0);
}

ent_status ent_coalition_site(const ent_config *cfg_in, const ent_train_opts *opts,
                              ent_comm_t *comm) {
    if (cfg_in->coal_site[0] == '\0')
        return ent_fail(ENT_ERR_USAGE, "%s: coalition.coordinator is set but coalition.site is "
                        "not: name this site (--set coalition.site=NAME)",
                        cfg_in->path[0] ? cfg_in->path : "configuration");
    if (opts->resume != NULL)
        return ent_fail(ENT_ERR_USAGE, "a site of a coalition joins at the coordinator's round "
                        "and anchor; --resume is for a run alone (remove the [coalition] "
                        "section, or coalition.coordinator, to resume a site's checkpoint alone)");
    // a site trains rounds x its planned inner steps: at most this many
    ent_config cfg = *cfg_in;
    long long cap = (long long)cfg.coal_rounds * cfg.coal_inner_steps;
    if (cap > 1000000000LL)
        return ent_fail(ENT_ERR_USAGE, "coalition.rounds x coalition.inner_steps = %lld steps: "
                        "more than the 10^9 a run may take", cap);
    cfg.steps = (int)cap;
    if (cfg.warmup_steps > cfg.steps) cfg.warmup_steps = cfg.steps;
    site s = {.cfg = &cfg, .comm = comm, .leader = ent_comm_rank(comm) == 0};
    ENT_CHECK(ent_codec_parse(cfg.coal_codec, &s.codec));
    // the link's keys are checked before any work starts
    s.lo = ent_link_opts_default();
    ent_status st = s.leader ? coal_keys_load(&cfg, 0, &s.keys, &s.lo) : ENT_OK;
    st = ent_comm_agree(comm, st);
    if (st == ENT_OK) st = ent_trainer_new(&cfg, opts, comm, &s.tr);
    if (st != ENT_OK) {
        coal_keys_free(&s.keys);
        return st;
    }
    s.grid = ent_trainer_grid(s.tr);
    st = ent_comm_agree(comm, site_setup(&s));
    if (st == ENT_OK) st = run_rounds(&s);
    if (st != ENT_OK && st != ENT_STOPPED && s.leader && s.ep != NULL) {
        char why[ENT_LINK_TEXT_MAX + 1];
        snprintf(why, sizeof why, "%s", ent_last_error());
        (void)send_leave(&s, 0, ENT_LINK_LEAVE_FAILED, why);
        st = ent_fail(st, "%s", why); // the message, not the LEAVE's fate
    }
    ent_trainer_free(&s.tr);
    site_free(&s);
    return st;
}
