// coordinator.c: `entente coordinator`, the coalition's ROUTER service.
//
// It holds the anchor theta_anchor (initialised from train.seed, as any run
// of the configuration would be), the outer Nesterov momentum and the
// error-feedback residual of the updates it sends. It waits for
// coalition.sites sites to join (HELLO; WELCOME and the anchor in f32
// chunks), plans each site's inner steps per round, and for each round
// merges every site's DELTA by tokens, takes the outer step, encodes the
// update (with error feedback), applies it to its own anchor exactly as the
// sites do, and sends it to every site with the plan two rounds ahead. It
// evaluates the anchor on the validation shards of its own data.dir, writes
// one metrics record per round, and saves the anchor as a checkpoint.
// docs/coalition.md ("Rounds") and docs/protocol.md ("Who sends what").
//
// Failures: a site whose connection closes (its process died), that is
// silent for coalition.lost_after seconds, or whose link has taken nothing
// of what is queued for it for as long (sends never wait: what ZeroMQ has
// no room for waits in the site's own queue) is lost, and one that says LEAVE
// before the end has left; the rounds go on with the others while at least
// coalition.quorum remain. A delta that arrived whole before its site was
// lost is still merged.
//
// Churn: a site may join after round 0 (up to coalition.max_sites sites in
// all), and a site that was lost or left may come back under its name, on a
// new connection; either way it gets WELCOME, the current anchor and its
// first round's plan, and is merged from the round after the one being
// merged (docs/coalition.md, "Joins, rejoins and cut-off sites"). Every
// HEARTBEAT is answered with one, so that a site can tell a silent
// coordinator from a busy one. A contribution that does not decode, is not
// finite, starts from another anchor, or whose norm exceeds
// coalition.max_norm_ratio times the round's (lower) median is rejected:
// logged, recorded, and left out of that round's merge; its site stays. Each
// delta is also scored by the loss change it causes alone on the first
// coalition.score_batches validation batches (the ledger's loss_gain), and,
// with coalition.score_tolerance set, rejected when it makes that loss worse
// by more than the tolerance beyond the round's median change. A delta whose
// tokens its steps cannot have made (the tokens per step its HELLO declared
// times the steps planned, plus what a site back from a cut may carry) is
// rejected too (check_tokens). With each update goes the ledger (LEDGER),
// which the sites keep in their checkpoints.
//
// A merge (decoding, screening and scoring the deltas, the outer step, the
// update's encoding, and the evaluations) runs on a worker thread while the
// main loop keeps serving: HELLOs are answered, heartbeats counted, the next
// round's deltas collected (docs/coalition.md, "Serving while merging").
#include "coalition_impl.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define PLAN_SLOTS 4

// A vector encoded once and sent to several sites (a round's update to
// every site, a joiner's anchor): the sites' queues hold references to it,
// never copies (an update of a 7B model is 7 GB in int8, its anchor 28 GB).
typedef struct {
    int refs;
    coal_vec v;
} shared_vec;

// One entry of a site's outgoing queue: a message of its own (vec NULL), or
// the chunks [chunk, count) of a shared vector as UPDATE messages of
// `round`, the chunk being sent encoded in msg.
typedef struct qmsg {
    struct qmsg *next;
    ent_link_buf msg;
    shared_vec *vec;
    uint32_t site, chunk;
    uint64_t round;
} qmsg;

typedef struct {
    uint32_t id; // 1.. in order of first joining; a site that comes back keeps its id
    char name[ENT_LINK_NAME_MAX + 1];
    ent_link_peer peer;
    uint64_t first_round; // the first round it is merged in since it (re)joined
    int joins;            // times it joined (2 and more: it came back)
    int left;    // said LEAVE
    int lost;    // its connection closed, or silent for coalition.lost_after
    // a continuing coordinator's site that it awaits back (the adopted
    // roster had it in; after a restart, every site of the ledger): the
    // state it streams before its empty round says so (stream_state)
    int awaited;
    uint64_t rejected_round[2]; // a contribution rejected for this round (slot round % 2)
    int rejected[2];
    double last_seen;
    coal_vec delta[2];       // the deltas of two consecutive rounds (slot round % 2)
    uint64_t delta_round[2];
    int delta_used[2];
    uint64_t plan_round[PLAN_SLOTS]; // the rounds planned (slot round % 4)
    int plan_sent[PLAN_SLOTS];
    uint32_t plan_steps[PLAN_SLOTS]; // the most inner steps planned for that round
    // the tokens rule (check_tokens): its HELLO's tokens per inner step, and
    // whether its next whole delta may carry progress made before it (re)joined
    uint64_t tokens_per_step;
    int may_carry;
    // throughput: two heartbeats of one round give inner steps per second
    uint64_t hb_round, hb_time_ns;
    uint32_t hb_steps;
    int hb_have; // a heartbeat came before
    int replanned; // round 0 planned again from a measured speed
    double steps_per_s;
    // a joiner's first round, with overlap and round_seconds: the seconds
    // until the others' deltas of that round are due (0: round_seconds)
    double first_round_s;
    // the ledger: the site's HEARTBEAT right after a delta reports its round
    // (inner steps, and compute seconds as tokens / tokens_per_s)
    coal_ledger_site led;
    uint64_t sent_round, sent_tokens; // the last delta in whole (or rejected)
    int sent_any;
    uint64_t reported_round; // the last round whose report was counted
    int reported_any;
    uint64_t stale_round; // the last round a stale DELTA was counted for
    int stale_any;
    double gain[2]; // the loss-change score of the round's delta (slot round % 2): L(A) - L(A - d)
    uint64_t gain_round[2];
    int gain_have[2];
    // what ZeroMQ had no room for yet, in order (site_send): the main loop
    // sends it as room appears (pump_queues); q_moved: when the queue last
    // took a message in or sent one out (a queue that has not moved for
    // coalition.lost_after loses its site)
    qmsg *q_head, *q_tail;
    uint64_t q_msgs; // messages in it (a vector's chunks each)
    double q_moved;
} csite;

// A checkpoint written on a thread of its own (save_start, save_work): it
// copies the state after `round` rounds into its buffers (arena layout),
// then writes them through the saver, while the main loop serves.
typedef struct {
    pthread_t thread;
    int running;      // started and not joined yet (save_reap)
    atomic_int stage; // 1: the state is copied (a merge may move it on), 2: written (or failed)
    uint64_t round;
    char name[64];
    const coal_layout *lay;
    const ent_param_table *table;
    ent_ckpt_saver_t *saver;
    const float *anchor, *momentum, *resid; // what it copies (global layout)
    float *params, *mom, *res;              // the copies (arena layout)
    char *ledger;
    ent_run_attrs ra;
    double fault_s; // ENTENTE_FAULT_SAVE_S: a save lasts at least this (tests)
    double blocked_s, write_s, done_at;
    ent_status st;
    char err[1024];
} save_job;

// The state after `merged` rounds on its way to the standby (stream_state):
// a thread copies it and encodes its STATE messages (stream_work), the main
// loop sends them, a few at a time between its reads (stream_pump): the
// socket is the main loop's alone.
typedef struct {
    pthread_t thread;
    int running;      // started and not joined yet
    atomic_int stage; // 1: the state is copied, 2: encoded (or failed)
    int sending;      // messages [next, count) are left to send
    // the first message waits for the connection (a continuing coordinator's
    // first state: its link to the standby has just been opened, and a
    // DEALER takes nothing before its handshake); dropped if the next state
    // is due first (stream_wait)
    int hold;
    uint64_t merged, anchor_hash, tokens;
    size_t n;
    uint32_t chunk_bytes;
    const float *anchor, *momentum, *resid;
    char *text;
    ent_link_buf *msgs;
    uint32_t count, next;
    int slow;         // a send found the standby's queue full: it is tried again at the next poll
    uint64_t skipped; // states not streamed while this one was on its way (a slow standby)
    ent_status st;
    char err[1024];
} stream_job;

typedef struct {
    const ent_config *cfg;
    const ent_train_opts *opts;
    const char *run_dir;
    ent_backend_t *be;
    ent_model_t *model;
    const ent_param_table *table;
    coal_layout lay;
    size_t n;
    float *anchor, *momentum, *resid, *g; // global layout
    // a merge in progress writes the anchor after it here (the anchor stays
    // as it was, for the joiners the main loop answers meanwhile)
    float *anchor_next;
    // each delta of a round decoded once (n floats each), for its screen,
    // its score and the merge; kept from round to round (ndec of them: the
    // most deltas a round has merged), up to dec_cap of them: a round with
    // more decodes each delta into one buffer for its screen and score, and
    // again, from its bytes, in the merge
    float **dec;
    int ndec, dec_cap;
    int merging;      // a merge runs: its round's deltas are out of the sites
    double fault_merge_s; // ENTENTE_FAULT_MERGE_S: a merge lasts at least this (tests)
    float *ck_mom, *ck_resid;             // arena layout, for checkpoints
    float *ck_params;                     // the anchor, arena layout, for the save thread
    save_job save;                        // the checkpoint being written, if any
    stream_job stream;                    // the state going to the standby, if any
    // the longest time the main loop went without reading its socket, from
    // round 0's plans on (the end record's longest_pause_s)
    double poll_last, pause_max;
    int pump_next;   // the site pump_queues starts with (each gets its turn first)
    int pump_more;   // a queue had room left when its time ran out: poll again at once
    // the anchor encoded for the joiners of one round (anchor_sv_round):
    // those that join before the next merge share it (send_update drops it)
    shared_vec *anchor_sv;
    uint64_t anchor_sv_round;
    uint64_t *hist;                       // anchor hash after each round (hist[0]: initial)
    ent_codec codec;
    ent_outer_opt outer;
    uint32_t chunk_bytes;
    ent_link_endpoint_t *ep;
    ent_link_opts lo; // its options, pointing into keys
    coal_keys keys;
    csite *sites;
    int nsites, cap; // sites that ever joined; slots (coalition.max_sites, at least .sites)
    int started;     // round 0's plans went out: a site that joins now waits for the next round
    uint64_t rounds, round; // the round being merged
    uint64_t tokens_total;
    FILE *metrics;
    ent_dataset_t *val;
    int32_t *inputs, *targets;
    int micro;
    ent_grid *grid;
    ent_ckpt_saver_t *saver;
    char ckpt_dir[ENT_PATH_MAX];
    double t_start;
    // when the sites began the round they train now: with overlap, as the
    // deltas of the round before were in, at its merge's start (0: unknown)
    double round_began;
    // a coordinator that continues a coalition (restarted from its
    // checkpoint, or a standby that took over): it holds the state after
    // resume_round rounds, merges that round empty once `await` of the
    // sites it knows are back (or coalition.timeout passed), then goes on
    int resumed;
    uint64_t resume_round;
    int await;
    char resumed_from[ENT_PATH_MAX + 32];
    // a primary with coalition.standby: the link its state streams on
    ent_link_endpoint_t *standby;
    double standby_beat;  // when it last sent the standby anything
    int standby_failing;  // a send to the standby failed (logged once until one succeeds)
    int standby_slow;     // the standby took a state slowly (logged once)
    int save_failed; // a checkpoint could not be written: with a standby, it takes over
    int superseded;       // the standby answered that it has taken over
    // a standby (--standby): the primary's connection, and its state as it
    // streams in (st_in) and the last one whole (st_done, after st_round rounds)
    int taken_over;
    int primary_known;
    ent_link_peer primary;
    double primary_heard, st_done_at;
    coal_vec st_in, st_done;
    uint64_t st_in_round, st_round;
    int st_in_started, st_have;
} coord;

static ent_status record(coord *c, const ent_json_field *f, int n) {
    ent_json_line(c->metrics, f, n);
    if (fflush(c->metrics) != 0 || ferror(c->metrics))
        return ent_fail(ENT_ERR_IO, "cannot write %s/metrics.jsonl", c->run_dir);
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// the sites' outgoing queues
//
// The main loop must never wait for one site's link: a send that waited for
// room (ZeroMQ's queue of a site behind a slow link full) would stop the
// answers to every other site for as long as that transfer takes. So every
// send to a site is tried without waiting; what finds no room waits in the
// site's own queue, with everything sent to it after (the order of a
// site's messages is kept), and goes out as room appears (pump_queues, at
// every poll).

static shared_vec *shared_take(coal_vec *v) {
    shared_vec *sv = malloc(sizeof *sv);
    if (sv == NULL) return NULL;
    sv->refs = 1;
    sv->v = *v;
    // v keeps its numbers (count, len, anchor_hash, tokens), not its buffers
    v->poff = v->plen = NULL;
    v->boff = v->blen = NULL;
    v->data = v->have = NULL;
    return sv;
}

static void shared_drop(shared_vec *sv) {
    if (sv == NULL || --sv->refs > 0) return;
    coal_vec_free(&sv->v);
    free(sv);
}

static void queue_clear(csite *s) {
    while (s->q_head != NULL) {
        qmsg *q = s->q_head;
        s->q_head = q->next;
        ent_link_buf_free(&q->msg);
        shared_drop(q->vec);
        free(q);
    }
    s->q_tail = NULL;
    s->q_msgs = 0;
}

// Sends from s's queue until it is empty, ZeroMQ has no room (*full), or
// `until`. A failure other than no room (the peer gone) is returned: the
// caller loses the site (lost_on_failure).
static ent_status site_pump(coord *c, csite *s, double until, int *full) {
    *full = 0;
    while (s->q_head != NULL) {
        qmsg *q = s->q_head;
        if (q->vec != NULL && q->msg.len == 0) {
            const coal_vec *v = &q->vec->v;
            uint32_t i = q->chunk;
            ent_link_chunk ch = {.index = i, .count = v->count, .total = v->total,
                                 .offset = v->poff[i], .length = v->plen[i], .codec = v->codec,
                                 .anchor_hash = v->anchor_hash, .tokens = v->tokens,
                                 .data = v->data + v->boff[i], .data_len = v->blen[i]};
            ENT_CHECK(ent_link_encode_update(&q->msg, q->site, q->round, &ch));
        }
        if (ent_link_send_now(c->ep, &s->peer, q->msg.data, q->msg.len) != ENT_OK) {
            if (!ent_link_send_was_full(c->ep)) return ENT_ERR_IO;
            *full = 1;
            return ENT_OK;
        }
        s->q_moved = ent_now_seconds();
        s->q_msgs--;
        q->msg.len = 0; // its buffer serves the vector's next chunk
        if (q->vec == NULL || ++q->chunk == q->vec->v.count) {
            s->q_head = q->next;
            if (s->q_head == NULL) s->q_tail = NULL;
            ent_link_buf_free(&q->msg);
            shared_drop(q->vec);
            free(q);
        }
        if (ent_now_seconds() >= until) break;
    }
    return ENT_OK;
}

// Appends q to s's queue and sends what can go at once (for up to 5 ms:
// the rest of a large vector goes out between the main loop's reads).
static ent_status site_queue(coord *c, csite *s, qmsg *q, uint64_t msgs) {
    if (s->q_head == NULL) s->q_moved = ent_now_seconds();
    if (s->q_tail != NULL) s->q_tail->next = q;
    else s->q_head = q;
    s->q_tail = q;
    s->q_msgs += msgs;
    int full = 0;
    ent_status st = site_pump(c, s, ent_now_seconds() + 0.005, &full);
    if (st == ENT_OK && s->q_head != NULL && !full) c->pump_more = 1;
    return st;
}

// One message (msg's buffer moves into the queue) to site s; st: its encoder's.
static ent_status site_send(coord *c, csite *s, ent_link_buf *msg, ent_status st) {
    if (st != ENT_OK) {
        ent_link_buf_free(msg);
        return st;
    }
    qmsg *q = calloc(1, sizeof *q);
    if (q == NULL) {
        ent_link_buf_free(msg);
        return ent_fail(ENT_ERR_NOMEM, "out of memory for a message to site '%s'", s->name);
    }
    q->msg = *msg;
    memset(msg, 0, sizeof *msg);
    return site_queue(c, s, q, 1);
}

// Every chunk of sv as UPDATE messages of `round` to site s (a reference).
static ent_status site_send_vec(coord *c, csite *s, shared_vec *sv, uint64_t round) {
    if (sv->v.count == 0) return ENT_OK;
    qmsg *q = calloc(1, sizeof *q);
    if (q == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for a message to site '%s'", s->name);
    q->vec = sv;
    sv->refs++;
    q->site = s->id;
    q->round = round;
    return site_queue(c, s, q, sv->v.count);
}

static ent_status lost_on_failure(coord *c, csite *s, ent_status st);

// At every poll: the queues send as their links take, for about 5 ms in all,
// each site's in turn first.
static ent_status pump_queues(coord *c) {
    c->pump_more = 0;
    double t0 = ent_now_seconds();
    for (int k = 0; k < c->nsites; k++) {
        csite *s = &c->sites[(c->pump_next + k) % c->nsites];
        if (s->q_head == NULL) continue;
        if (s->left || s->lost) { // it said LEAVE at the end: it has all it needs
            queue_clear(s);
            continue;
        }
        int full = 0;
        ENT_CHECK(lost_on_failure(c, s, site_pump(c, s, t0 + 0.005, &full)));
        if (s->q_head != NULL && !full) c->pump_more = 1;
    }
    if (c->nsites > 0) c->pump_next = (c->pump_next + 1) % c->nsites;
    return ENT_OK;
}

static int queued(const coord *c) {
    for (int i = 0; i < c->nsites; i++)
        if (c->sites[i].q_head != NULL) return 1;
    return 0;
}

// A message to a peer that may not be a site (an ERROR): through the queue
// of the site it is, else at once, never waiting.
static ent_status send_msg(coord *c, const ent_link_peer *to, ent_link_buf *msg, ent_status st) {
    for (int i = 0; st == ENT_OK && i < c->nsites; i++) {
        csite *s = &c->sites[i];
        if (!s->left && !s->lost && s->peer.id_len == to->id_len &&
            memcmp(s->peer.id, to->id, to->id_len) == 0)
            return site_send(c, s, msg, st);
    }
    if (st == ENT_OK) st = ent_link_send_now(c->ep, to, msg->data, msg->len);
    ent_link_buf_free(msg);
    return st;
}

static ent_status send_error(coord *c, const ent_link_peer *to, uint32_t site, uint16_t code,
                             const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static ent_status send_error(coord *c, const ent_link_peer *to, uint32_t site, uint16_t code,
                             const char *fmt, ...) {
    ent_link_reason r = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.text, sizeof r.text, fmt, ap);
    va_end(ap);
    ent_log_warn("coordinator: refused %s: %s", to->name, r.text);
    ent_link_buf msg = {0};
    // a refused peer that is gone before its answer leaves is no failure of ours
    if (send_msg(c, to, &msg, ent_link_encode_error(&msg, site, c->round, &r)) != ENT_OK)
        ent_log_warn("coordinator: the refusal did not reach %s: %s", to->name,
                     ent_last_error());
    return ENT_OK;
}

static int active(const csite *s) { return !s->left && !s->lost; }

static int active_count(const coord *c) {
    int n = 0;
    for (int i = 0; i < c->nsites; i++) n += active(&c->sites[i]);
    return n;
}

static int rejected_for(const csite *s, uint64_t round) {
    int k = (int)(round % 2);
    return s->rejected[k] && s->rejected_round[k] == round;
}

// The names of the sites for which keep(site) holds, as a JSON array.
static void site_names(const coord *c, int (*keep)(const csite *), char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "[");
    int first = 1;
    for (int i = 0; i < c->nsites && n + ENT_LINK_NAME_MAX + 8 < cap; i++) {
        if (!keep(&c->sites[i])) continue;
        n += (size_t)snprintf(out + n, cap - n, "%s\"%s\"", first ? "" : ",", c->sites[i].name);
        first = 0;
    }
    snprintf(out + n, cap - n, "]");
}

static int gone(const csite *s) { return !active(s); }

static int whole_delta(const csite *s, uint64_t round) {
    int k = (int)(round % 2);
    return s->delta_used[k] && s->delta_round[k] == round &&
           s->delta[k].received == s->delta[k].count;
}

// The round whose deltas the coordinator collects: the one it waits for,
// or, while that one's merge runs, the next (its deltas are out of the
// sites by then).
static uint64_t collecting(const coord *c) { return c->round + (c->merging ? 1 : 0); }

// A site goes (or comes back on a new connection): what it sent of a later
// round, or in part, is dropped; a whole delta of the round being collected
// stays and is merged (its site's data cursor moved past those batches).
static void drop_partial_deltas(coord *c, csite *s) {
    uint64_t r = collecting(c);
    for (int j = 0; j < 2; j++) {
        if (s->delta_used[j] && s->delta_round[j] == r && whole_delta(s, r))
            continue;
        s->delta_used[j] = 0;
        coal_vec_free(&s->delta[j]);
    }
}

// A site is gone (lost, or left before the end): recorded, and the rounds
// go on with the others while coalition.quorum of them remain.
static ent_status site_gone(coord *c, csite *s, const char *event, const char *why) {
    if (!active(s)) return ENT_OK;
    if (strcmp(event, "lost") == 0) s->lost = 1;
    else s->left = 1;
    queue_clear(s); // nothing is sent to it any more; a rejoin starts afresh
    drop_partial_deltas(c, s);
    int n = active_count(c);
    ent_log_warn("coordinator: site '%s' (%s) %s at round %llu: %s; %d of %d site(s) go on%s",
                 s->name, s->peer.name, event, (unsigned long long)c->round, why, n, c->nsites,
                 whole_delta(s, collecting(c))
                     ? " (its delta of the round collected is in, and is merged)"
                     : "");
    ent_json_field rec[] = {ENT_JSTR("event", event), ENT_JSTR("site", s->name),
                            ENT_JINT("round", c->round), ENT_JSTR("reason", why),
                            ENT_JINT("sites_left", n),
                            ENT_JNUM("elapsed_s", ent_now_seconds() - c->t_start)};
    ENT_CHECK(record(c, rec, (int)(sizeof rec / sizeof rec[0])));
    if (c->round < c->rounds && n < c->cfg->coal_quorum) {
        char names[ENT_LINK_NAME_MAX * 64 + 64];
        site_names(c, gone, names, sizeof names);
        return ent_fail(ENT_ERR_IO, "coordinator: %d site(s) remain at round %llu, fewer than "
                        "coalition.quorum = %d (gone: %s): stopping", n,
                        (unsigned long long)c->round, c->cfg->coal_quorum, names);
    }
    return ENT_OK;
}

// A send to s failed: out of memory stops the coordinator; any other
// failure means the site cannot be reached (gone, or its queue full for the
// send timeout), and it is lost while the others go on.
static ent_status lost_on_failure(coord *c, csite *s, ent_status st) {
    if (st == ENT_OK || st == ENT_ERR_NOMEM) return st;
    char why[600];
    snprintf(why, sizeof why, "%s", ent_last_error());
    return site_gone(c, s, "lost", why);
}

// A contribution left out: logged, recorded with its kind, counted in the ledger.
static ent_status reject_record(coord *c, csite *s, uint64_t round, coal_reject_kind kind,
                                const char *why) {
    s->led.rejected[kind]++;
    ent_log_warn("coordinator: rejected the delta of site '%s' for round %llu (%s): %s", s->name,
                 (unsigned long long)round, coal_reject_names[kind], why);
    ent_json_field rec[] = {ENT_JSTR("event", "rejected"), ENT_JSTR("site", s->name),
                            ENT_JINT("round", round), ENT_JSTR("reason", why),
                            ENT_JSTR("kind", coal_reject_names[kind]),
                            ENT_JNUM("elapsed_s", ent_now_seconds() - c->t_start)};
    return record(c, rec, (int)(sizeof rec / sizeof rec[0]));
}

// A contribution left out of a round's merge; its site stays.
static ent_status reject(coord *c, csite *s, uint64_t round, coal_reject_kind kind,
                         const char *why) {
    int k = (int)(round % 2);
    s->rejected[k] = 1;
    s->rejected_round[k] = round;
    if (s->delta_used[k] && s->delta_round[k] == round) {
        s->delta_used[k] = 0;
        coal_vec_free(&s->delta[k]);
    }
    // its report (the heartbeat after it) still counts; a delta rejected at
    // the merge may come after the site's next delta arrived whole
    if (!s->sent_any || round > s->sent_round) s->sent_round = round;
    s->sent_any = 1;
    return reject_record(c, s, round, kind, why);
}

static ent_status send_plan(coord *c, csite *s, uint64_t round) {
    int k = (int)(round % PLAN_SLOTS);
    uint32_t steps = (uint32_t)c->cfg->coal_inner_steps;
    if (c->cfg->coal_round_seconds > 0 && s->steps_per_s > 0) {
        double secs = round == s->first_round && s->first_round_s > 0 ? s->first_round_s
                                                                      : c->cfg->coal_round_seconds;
        double h = floor(secs * s->steps_per_s + 0.5);
        steps = h < 1 ? 1 : h > steps ? steps : (uint32_t)h;
    }
    if (!(s->plan_sent[k] && s->plan_round[k] == round)) s->plan_steps[k] = 0;
    if (steps > s->plan_steps[k]) s->plan_steps[k] = steps; // a replan may shorten it
    s->plan_round[k] = round;
    s->plan_sent[k] = 1;
    ent_link_round_plan m = {.inner_steps = steps,
                             .deadline_ms = (uint32_t)(c->cfg->coal_timeout * 1e3)};
    ent_link_buf msg = {0};
    return site_send(c, s, &msg, ent_link_encode_round_plan(&msg, s->id, round, &m));
}

static int plan_sent(const csite *s, uint64_t round) {
    int k = (int)(round % PLAN_SLOTS);
    return s->plan_sent[k] && s->plan_round[k] == round;
}

static csite *find_site(coord *c, const ent_link_incoming *in) {
    for (int i = 0; i < c->nsites; i++) {
        csite *s = &c->sites[i];
        if (active(s) && s->id == in->header.site && s->peer.id_len == in->peer.id_len &&
            memcmp(s->peer.id, in->peer.id, in->peer.id_len) == 0)
            return s;
    }
    return NULL;
}

// ---------------------------------------------------------------------------
// joining

// The anchor as it is now (after the updates of the rounds before the one
// being merged), as f32 UPDATE chunks of the site's first round, into its
// queue: they go out as its link takes them.
// It reads the anchor only (raw f32 is a copy): a merge may run meanwhile.
// Joiners before the next merge (several sites back after a restart) share
// one encoding of it.
static ent_status send_anchor(coord *c, csite *s) {
    shared_vec *sv = c->anchor_sv;
    if (sv != NULL && c->anchor_sv_round != c->round) {
        shared_drop(sv);
        c->anchor_sv = sv = NULL;
    }
    if (sv == NULL) {
        coal_vec v = {0};
        ENT_CHECK(coal_vec_encode(&v, ENT_LINK_CODEC_F32, NULL, c->anchor, NULL, c->n,
                                  c->chunk_bytes));
        v.anchor_hash = c->hist[c->round];
        sv = shared_take(&v);
        if (sv == NULL) {
            coal_vec_free(&v);
            return ent_fail(ENT_ERR_NOMEM, "out of memory for the anchor of site '%s'", s->name);
        }
        c->anchor_sv = sv;
        c->anchor_sv_round = c->round;
    }
    return site_send_vec(c, s, sv, s->first_round);
}

static int same_peer(const ent_link_peer *a, const ent_link_peer *b) {
    return a->id_len == b->id_len && memcmp(a->id, b->id, a->id_len) == 0;
}

// A site that comes back: its id and name stay, with the deltas the round
// being merged still counts (drop_partial_deltas); the rest starts afresh.
static void readmit(coord *c, csite *s) {
    queue_clear(s); // its WELCOME and anchor go first, behind nothing of before
    drop_partial_deltas(c, s);
    csite keep = *s;
    memset(s, 0, sizeof *s);
    s->id = keep.id;
    memcpy(s->name, keep.name, sizeof s->name);
    s->joins = keep.joins;
    s->led = keep.led;
    for (int j = 0; j < 2; j++) {
        s->delta[j] = keep.delta[j];
        s->delta_round[j] = keep.delta_round[j];
        s->delta_used[j] = keep.delta_used[j];
        s->rejected[j] = keep.rejected[j];
        s->rejected_round[j] = keep.rejected_round[j];
    }
}

static ent_status on_hello(coord *c, const ent_link_incoming *in) {
    ent_link_hello h;
    ent_link_header hd;
    if (ent_link_decode_hello(in->bytes, in->len, in->peer.name, &hd, &h) != ENT_OK)
        return send_error(c, &in->peer, 0, ENT_LINK_ERR_MALFORMED, "%s", ent_last_error());
    // on a CURVE link a site is the name its key was admitted under, and no other
    if (c->lo.curve != NULL && strcmp(in->peer.user, h.name) != 0)
        return send_error(c, &in->peer, 0, ENT_LINK_ERR_NOT_ITS_KEY,
                          "a HELLO as site '%s' from the key of site '%s': a site joins only "
                          "under the name its key was admitted as", h.name, in->peer.user);
    const ent_config *cfg = c->cfg;
    if (h.shape_hash != ent_model_shape_hash(cfg) || h.config_hash != coal_config_hash(cfg))
        return send_error(c, &in->peer, 0, ENT_LINK_ERR_INCOMPATIBLE,
                          "site '%s' trains another %s than this coalition (model %d layers, %d "
                          "heads, width %d, context %d, vocab %d; %d rounds, codec %s, outer lr "
                          "%g, momentum %g)", h.name,
                          h.shape_hash != ent_model_shape_hash(cfg) ? "model" : "configuration",
                          cfg->layers, cfg->heads, cfg->width, cfg->context, cfg->vocab,
                          cfg->coal_rounds, cfg->coal_codec, cfg->coal_outer_lr,
                          cfg->coal_outer_momentum);
    // its tokens per inner step: train.batch_size sequences of model.context tokens
    if (h.tokens_per_step % (uint64_t)cfg->context != 0)
        return send_error(c, &in->peer, 0, ENT_LINK_ERR_INCOMPATIBLE,
                          "site '%s' declares %llu tokens per inner step, not a whole number of "
                          "sequences of model.context = %d tokens", h.name,
                          (unsigned long long)h.tokens_per_step, cfg->context);
    // a site that joins once the rounds run is merged from the next round on
    uint64_t first = c->started ? c->round + 1 : 0;
    if (first >= c->rounds)
        return send_error(c, &in->peer, 0, ENT_LINK_ERR_STALE_ROUND,
                          "site '%s' is too late: the coalition's last round (%llu) is being "
                          "merged", h.name, (unsigned long long)c->rounds - 1);
    csite *s = NULL;
    for (int i = 0; i < c->nsites && s == NULL; i++)
        if (strcmp(c->sites[i].name, h.name) == 0) s = &c->sites[i];
    // the same name on another connection while the first is alive: a
    // second process under one name (or an impostor), never a replacement
    if (s != NULL && active(s) && !same_peer(&s->peer, &in->peer))
        return send_error(c, &in->peer, 0, ENT_LINK_ERR_DUPLICATE_SITE,
                          "a site named '%s' has already joined and is connected (from %s)",
                          h.name, s->peer.name);
    int rejoin = s != NULL;
    if (rejoin) {
        readmit(c, s);
    } else {
        if (c->nsites >= c->cap)
            return send_error(c, &in->peer, 0, ENT_LINK_ERR_INCOMPATIBLE,
                              "site '%s': the coalition is full (%d sites have joined: "
                              "coalition.max_sites)", h.name, c->cap);
        s = &c->sites[c->nsites];
        memset(s, 0, sizeof *s);
        s->id = (uint32_t)c->nsites + 1;
        snprintf(s->name, sizeof s->name, "%s", h.name);
        memcpy(s->led.name, s->name, sizeof s->led.name);
        coal_utc_now(s->led.first_time);
        s->led.first_round = first;
        memcpy(s->led.last_time, s->led.first_time, sizeof s->led.last_time);
        s->led.last_round = first;
        c->nsites++;
    }
    s->peer = in->peer;
    s->last_seen = ent_now_seconds();
    s->first_round = first;
    s->joins++;
    s->tokens_per_step = h.tokens_per_step;
    s->may_carry = rejoin; // a site back carries what it trained meanwhile (site.c)
    // With overlap a joiner starts its first round at once, from the anchor
    // it gets, while the others are in round T (T = the round being
    // collected, or the next one while a merge computes), begun at
    // round_began; its delta is due when theirs of round `first` are, at
    // round_began + (first - T + 1) x round_seconds. Planned that long, it
    // trains through the time to then instead of sending early, running a
    // round ahead of the others and idling that long at the last merge.
    s->first_round_s = 0;
    double rs = cfg->coal_round_seconds;
    if (c->started && cfg->coal_overlap && rs > 0 && c->round_began > 0) {
        uint64_t T = c->round + (c->merging ? 1 : 0);
        double due = c->round_began + (double)(first - T + 1) * rs - ent_now_seconds();
        s->first_round_s = due < 1e-3 ? 1e-3 : due > 2 * rs ? 2 * rs : due;
    }
    ent_link_welcome w = {.anchor_hash = c->hist[c->round],
                          .inner_steps = (uint32_t)cfg->coal_inner_steps,
                          .round_seconds = cfg->coal_round_seconds,
                          .heartbeat_ms = 2000, .codec = (uint16_t)c->codec.kind,
                          .chunk_bytes = c->chunk_bytes};
    ent_link_buf msg = {0};
    double t0 = ent_now_seconds();
    ent_status st = site_send(c, s, &msg, ent_link_encode_welcome(&msg, s->id, first, &w));
    if (st == ENT_OK) st = send_anchor(c, s);
    if (st == ENT_OK && c->started) st = send_plan(c, s, first);
    if (st != ENT_OK) return lost_on_failure(c, s, st); // gone before its welcome left
    int n = active_count(c);
    ent_log_info("coordinator: site '%s' %s as site %u (%u x %u ranks, from %s), merged from "
                 "round %llu; %d site(s) in, %d awaited before round 0; the anchor took %.2f s "
                 "to encode%s", s->name, rejoin ? "rejoined" : "joined", s->id, h.dp_size,
                 h.tp_size, in->peer.name, (unsigned long long)first, n, cfg->coal_sites,
                 ent_now_seconds() - t0,
                 s->q_head != NULL ? " (its link takes it slower: the rest of it is queued)" : "");
    char now[32];
    coal_utc_now(now);
    ent_json_field rec[] = {ENT_JSTR("event", rejoin ? "rejoined" : "joined"),
                            ENT_JSTR("site", s->name), ENT_JINT("first_round", first),
                            ENT_JINT("sites_in", n), ENT_JNUM("anchor_s", ent_now_seconds() - t0),
                            ENT_JNUM("elapsed_s", ent_now_seconds() - c->t_start),
                            ENT_JSTR("time", rejoin ? now : s->led.first_time),
                            ENT_JINT("tokens_per_step", h.tokens_per_step),
                            ENT_JNUM("first_round_s", s->first_round_s > 0 ? s->first_round_s
                                                                          : cfg->coal_round_seconds)};
    return record(c, rec, (int)(sizeof rec / sizeof rec[0]));
}

// ---------------------------------------------------------------------------
// messages during the rounds

// The most inner steps planned for site s's round (the coalition's
// inner_steps, the most any plan gives, when none was sent).
static uint64_t planned_steps(const coord *c, const csite *s, uint64_t round) {
    int k = (int)(round % PLAN_SLOTS);
    if (s->plan_sent[k] && s->plan_round[k] == round) return s->plan_steps[k];
    return (uint64_t)c->cfg->coal_inner_steps;
}

// The tokens rule (docs/coalition.md, "Tokens"): a whole delta's tokens
// must be a whole number of inner steps of the tokens per step its site
// declared in HELLO, at most the steps planned for the round; the first
// delta after a site came back may add the progress it made meanwhile: at
// most twice its fastest speed (steps per compute second, from its
// heartbeats and the ledger's reports) over the time since its last report,
// plus 2 s. A delta that breaks it is rejected (kind "tokens"); *ok = 0.
static ent_status check_tokens(coord *c, csite *s, uint64_t round, const coal_vec *v, int *ok) {
    *ok = 1;
    uint64_t per = s->tokens_per_step, steps = per ? v->tokens / per : 0;
    uint64_t plan = planned_steps(c, s, round), cap = plan;
    int carry = s->may_carry;
    s->may_carry = 0;
    char why[400], carried[200] = "";
    if (per == 0 || v->tokens == 0 || v->tokens % per != 0) {
        snprintf(why, sizeof why, "%llu tokens: not a whole number (>= 1) of inner steps of the "
                 "%llu tokens per step its HELLO declared", (unsigned long long)v->tokens,
                 (unsigned long long)per);
    } else {
        if (carry) {
            double speed = s->steps_per_s, absent = coal_utc_age(s->led.last_time);
            if (s->led.compute_s > 0 && s->led.inner_steps / s->led.compute_s > speed)
                speed = (double)s->led.inner_steps / s->led.compute_s;
            // no speed known yet (no report of its own): nothing to carry by
            double more = speed > 0 && absent >= 0 ? ceil(2 * speed * (absent + 2)) : 0;
            cap += more > 1e15 ? (uint64_t)1e15 : (uint64_t)more;
            snprintf(carried, sizeof carried, " and %.0f it may carry (twice %.3g steps/s over the "
                     "%.0f s since its last report, plus 2 s)", more, speed, absent);
        }
        if (steps <= cap) {
            if (carry && steps > plan) // what it carried, against the bound
                ent_log_info("coordinator: site '%s' carries %llu inner steps into round %llu "
                             "beyond the %llu planned (the tokens rule allows %llu more)",
                             s->name, (unsigned long long)(steps - plan),
                             (unsigned long long)round, (unsigned long long)plan,
                             (unsigned long long)(cap - plan));
            return ENT_OK;
        }
        snprintf(why, sizeof why, "%llu tokens: %llu inner steps of %llu tokens, over the %llu "
                 "planned for round %llu%s", (unsigned long long)v->tokens,
                 (unsigned long long)steps, (unsigned long long)per, (unsigned long long)plan,
                 (unsigned long long)round, carried);
    }
    *ok = 0;
    return reject(c, s, round, COAL_REJECT_TOKENS, why);
}

static ent_status on_delta(coord *c, csite *s, const ent_link_incoming *in) {
    ent_link_chunk ch;
    ent_link_header hd;
    if (ent_link_decode_delta(in->bytes, in->len, in->peer.name, &hd, &ch) != ENT_OK)
        return send_error(c, &in->peer, s->id, ENT_LINK_ERR_MALFORMED, "%s", ent_last_error());
    // the round collected and the next; while a merge runs, the round after
    // it only (a delta of the round after that starts from the anchor the
    // merge makes, which no site has yet)
    uint64_t open = collecting(c), last = c->merging ? open : open + 1;
    if (hd.round < open || hd.round > last) {
        char why[200];
        snprintf(why, sizeof why, "a DELTA for round %llu while the coordinator collects round "
                 "%llu%s", (unsigned long long)hd.round, (unsigned long long)open,
                 c->merging ? " (the round before is being merged)" : "");
        // a round already merged: counted once per round in the ledger
        if (hd.round < open && !(s->stale_any && s->stale_round == hd.round)) {
            s->stale_any = 1;
            s->stale_round = hd.round;
            ENT_CHECK(reject_record(c, s, hd.round, COAL_REJECT_STALE, why));
        }
        return send_error(c, &in->peer, s->id, ENT_LINK_ERR_STALE_ROUND, "%s", why);
    }
    if (hd.round < s->first_round) {
        ent_log_warn("coordinator: ignored a DELTA chunk of round %llu from site '%s': it "
                     "rejoined, and is merged from round %llu", (unsigned long long)hd.round,
                     s->name, (unsigned long long)s->first_round);
        return ENT_OK;
    }
    int k = (int)(hd.round % 2);
    if (rejected_for(s, hd.round)) return ENT_OK; // the rest of a rejected delta
    coal_vec *v = &s->delta[k];
    if (!s->delta_used[k] || s->delta_round[k] != hd.round) {
        ENT_CHECK(coal_vec_expect(v, (uint16_t)c->codec.kind, &c->codec, c->n, c->chunk_bytes));
        s->delta_round[k] = hd.round;
        s->delta_used[k] = 1;
    }
    s->sent_tokens = ch.tokens; // what its report's rate is over, even if a chunk is refused
    int done = 0;
    char who[ENT_LINK_NAME_MAX + sizeof in->peer.name + 16];
    snprintf(who, sizeof who, "site '%s' (%s)", s->name, in->peer.name);
    if (coal_vec_add(v, &ch, who, &done) != ENT_OK) {
        char why[600];
        snprintf(why, sizeof why, "%s", ent_last_error());
        return reject(c, s, hd.round, COAL_REJECT_UNDECODABLE, why);
    }
    if (done) {
        // the anchor a site's delta starts from: before the update of the
        // round before (which it applies after sending this one)
        // (without overlap: the anchor after the update of the round before)
        uint64_t from = !c->cfg->coal_overlap ? hd.round : hd.round > 0 ? hd.round - 1 : 0;
        // an anchor not made yet (its merge runs) is one no site can hold
        int known = from <= c->round;
        uint64_t want = known ? c->hist[from] : 0;
        if (!known || v->anchor_hash != want) {
            char why[200];
            if (known)
                snprintf(why, sizeof why, "computed from anchor %016llx; the coalition's was "
                         "%016llx", (unsigned long long)v->anchor_hash, (unsigned long long)want);
            else
                snprintf(why, sizeof why, "computed from anchor %016llx; the coalition's anchor "
                         "after round %llu is not made yet", (unsigned long long)v->anchor_hash,
                         (unsigned long long)from - 1);
            return reject(c, s, hd.round, COAL_REJECT_ANCHOR, why);
        }
        int ok = 1;
        ENT_CHECK(check_tokens(c, s, hd.round, v, &ok));
        if (!ok) return ENT_OK;
        s->sent_round = hd.round;
        s->sent_tokens = v->tokens;
        s->sent_any = 1;
    }
    return ENT_OK;
}

// A site's report of its round r (the HEARTBEAT it sends right after its
// delta): inner steps, and compute seconds as its delta's tokens over the
// rate it reports (tokens / compute_s at the site). Recorded as a `report`.
static ent_status count_report(coord *c, csite *s, uint64_t round, const ent_link_heartbeat *m) {
    s->reported_any = 1;
    s->reported_round = round;
    double compute_s = m->tokens_per_s > 0 ? (double)s->sent_tokens / m->tokens_per_s : 0;
    s->led.inner_steps += m->steps_done;
    s->led.compute_s += compute_s;
    coal_utc_now(s->led.last_time);
    s->led.last_round = round;
    ent_json_field rec[] = {ENT_JSTR("event", "report"), ENT_JSTR("site", s->name),
                            ENT_JINT("round", round), ENT_JINT("inner_steps", m->steps_done),
                            ENT_JNUM("compute_s", compute_s), ENT_JINT("tokens", s->sent_tokens),
                            ENT_JSTR("time", s->led.last_time)};
    return record(c, rec, (int)(sizeof rec / sizeof rec[0]));
}

static ent_status on_heartbeat(coord *c, csite *s, const ent_link_incoming *in) {
    ent_link_heartbeat m;
    ent_link_header hd;
    if (ent_link_decode_heartbeat(in->bytes, in->len, in->peer.name, &hd, &m) != ENT_OK)
        return send_error(c, &in->peer, s->id, ENT_LINK_ERR_MALFORMED, "%s", ent_last_error());
    // a speed from two heartbeats of one round, both sent while training
    // (steps done >= 1): one sent while the site waited (for its plan, with
    // 0 steps done) would count the wait as compute
    if (s->hb_have && hd.round == s->hb_round && s->hb_steps >= 1 &&
        m.steps_done > s->hb_steps && m.time_ns > s->hb_time_ns)
        s->steps_per_s = (double)(m.steps_done - s->hb_steps) / ((double)(m.time_ns - s->hb_time_ns) * 1e-9);
    // the first heartbeat of a round after its delta: the site's report of it
    if (s->sent_any && hd.round == s->sent_round &&
        !(s->reported_any && s->reported_round == hd.round))
        ENT_CHECK(count_report(c, s, hd.round, &m));
    s->hb_round = hd.round;
    s->hb_steps = m.steps_done;
    s->hb_time_ns = m.time_ns;
    s->hb_have = 1;
    // a site's first round is planned before anything is known: once its
    // speed shows, that round is planned again (it trains on to the new
    // length) and the next one planned
    ent_status st = ENT_OK;
    uint64_t first = s->first_round;
    if (hd.round == first && s->steps_per_s > 0 && c->cfg->coal_round_seconds > 0 &&
        !s->replanned && c->started) {
        s->replanned = 1;
        st = send_plan(c, s, first);
        if (st == ENT_OK && first + 1 < c->rounds) st = send_plan(c, s, first + 1);
    }
    // the answer tells the site that the coordinator hears it (a site that
    // hears nothing for coalition.lost_after takes itself for cut off)
    ent_link_heartbeat e = {.time_ns = (uint64_t)(ent_now_seconds() * 1e9), .echo_ns = m.time_ns};
    ent_link_buf msg = {0};
    if (st == ENT_OK)
        st = site_send(c, s, &msg, ent_link_encode_heartbeat(&msg, s->id, hd.round, &e));
    return lost_on_failure(c, s, st);
}

static int from_primary(const coord *c, const ent_link_incoming *in);

static ent_status on_message(coord *c, const ent_link_incoming *in) {
    // a standby that took over: the old primary, if it is back, is told so
    if (c->taken_over && (from_primary(c, in) || in->header.type == ENT_LINK_STATE))
        return send_error(c, &in->peer, 0, ENT_LINK_ERR_NOT_PRIMARY, "the standby took over the "
                          "coalition at round %llu: this coordinator no longer serves it",
                          (unsigned long long)c->resume_round);
    if (in->header.type == ENT_LINK_HELLO) return on_hello(c, in);
    csite *s = find_site(c, in);
    if (s == NULL)
        return send_error(c, &in->peer, in->header.site, ENT_LINK_ERR_UNKNOWN_SITE,
                          "site id %u was not given to this peer (send HELLO first)",
                          in->header.site);
    s->last_seen = ent_now_seconds();
    switch (in->header.type) {
    case ENT_LINK_DELTA: return on_delta(c, s, in);
    case ENT_LINK_HEARTBEAT: return on_heartbeat(c, s, in);
    case ENT_LINK_LEAVE: {
        ent_link_reason r;
        if (ent_link_decode_leave(in->bytes, in->len, in->peer.name, NULL, &r) != ENT_OK)
            return send_error(c, &in->peer, s->id, ENT_LINK_ERR_MALFORMED, "%s", ent_last_error());
        if (c->round >= c->rounds) {
            s->left = 1; // done, as every site is at the end
            return ENT_OK;
        }
        char why[ENT_LINK_TEXT_MAX + 32];
        snprintf(why, sizeof why, "it said LEAVE (code %u: %s)", r.code, r.text);
        return site_gone(c, s, "left", why);
    }
    default:
        return send_error(c, &in->peer, s->id, ENT_LINK_ERR_MALFORMED,
                          "a %s is not for the coordinator", ent_link_type_name(in->header.type));
    }
}

// The coordinator was busy since `since` (sending the state to the standby,
// a save) and read nothing: no site's silence counts for that time. (A
// merge is no such time: the main loop serves while it runs.)
static void heard_all(coord *c, double since) {
    double now = ent_now_seconds(), busy = now - since;
    for (int i = 0; i < c->nsites; i++) {
        double t = c->sites[i].last_seen + busy;
        c->sites[i].last_seen = t < now ? t : now;
        t = c->sites[i].q_moved + busy;
        c->sites[i].q_moved = t < now ? t : now;
    }
}

// A site whose connection closed: its process is gone (a kill, a crash).
// Applied before every message is handled: a closed socket's number may
// come back for the next connection, whose messages must find the old
// close already taken (the close is reported before the new connection is
// accepted).
static ent_status take_closes(coord *c) {
    int fds[16];
    for (int n = ent_link_take_disconnects(c->ep, fds, 16); n > 0;
         n = ent_link_take_disconnects(c->ep, fds, 16))
        for (int j = 0; j < n; j++)
            for (int i = 0; i < c->nsites; i++)
                if (active(&c->sites[i]) && c->sites[i].peer.fd == fds[j] && fds[j] >= 0)
                    ENT_CHECK(site_gone(c, &c->sites[i], "lost", "its connection closed (its "
                                        "process ended, or its host dropped the link)"));
    return ENT_OK;
}

// Receives for up to ms, and then whatever else is waiting (so that a site
// is not taken for silent while its messages queue), then checks that no
// site has been silent too long.
static ent_status standby_poll(coord *c);
static ent_status save_reap(coord *c);
static ent_status stream_pump(coord *c);
static int stream_held(const stream_job *j) { return j->sending && j->hold && j->next == 0; }

// The main loop's longest pause: the time between two reads of its socket
// (the handling of a message, a send, anything between two polls), from
// the first round on (poll_last > 0).
static ent_status recv_timed(coord *c, int ms, ent_link_incoming *in, int *got) {
    if (c->poll_last > 0) {
        double gap = ent_now_seconds() - c->poll_last;
        if (gap > c->pause_max) c->pause_max = gap;
    }
    ent_status st = ent_link_recv(c->ep, ms, in, got);
    if (c->poll_last > 0) c->poll_last = ent_now_seconds();
    return st;
}

static ent_status poll_once(coord *c, int ms) {
    ENT_CHECK(standby_poll(c));
    ENT_CHECK(save_reap(c));
    ENT_CHECK(stream_pump(c));
    ENT_CHECK(pump_queues(c));
    if (c->pump_more) ms = 0; // a queue has more its link would take now
    else if (queued(c) && ms > 2) ms = 2; // a queue waits for room: try again soon
    // more of the state to send: back soon (not while the first message
    // waits for the connection, nor for a slow standby: every 10 ms)
    if (c->stream.sending && !c->stream.slow && !stream_held(&c->stream)) ms = 0;
    else if (c->stream.sending && ms > 10) ms = 10;
    // the state being encoded goes out as soon as it is ready: a primary
    // that dies before its standby has the state after a merge costs the
    // coalition that merge (the standby takes over one round earlier)
    else if (c->stream.running && ms > 1) ms = 1;
    ent_link_incoming in;
    int got = 0;
    ENT_CHECK(recv_timed(c, ms, &in, &got));
    for (int more = 0; got && more < 1000; more++) {
        ENT_CHECK(take_closes(c));
        ENT_CHECK(on_message(c, &in));
        ENT_CHECK(recv_timed(c, 0, &in, &got));
    }
    ENT_CHECK(take_closes(c));
    double now = ent_now_seconds();
    for (int i = 0; i < c->nsites; i++) {
        csite *s = &c->sites[i];
        if (!active(s)) continue;
        // while messages wait for a site, its queue decides: moving, the
        // site is reading (a joiner takes its anchor for as long as its
        // link needs); not moved for coalition.lost_after, its link takes
        // nothing and it is lost. With nothing queued, its silence decides.
        char why[192];
        if (s->q_head != NULL) {
            if (now - s->q_moved <= c->cfg->coal_lost_after) continue;
            snprintf(why, sizeof why, "its queue of %llu message(s) has not moved for %.0f s "
                     "(coalition.lost_after): its link takes nothing",
                     (unsigned long long)s->q_msgs, now - s->q_moved);
            ENT_CHECK(site_gone(c, s, "lost", why));
        } else if (now - s->last_seen > c->cfg->coal_lost_after) {
            snprintf(why, sizeof why, "silent for %.0f s (coalition.lost_after)",
                     now - s->last_seen);
            ENT_CHECK(site_gone(c, s, "lost", why));
        }
    }
    return ENT_OK;
}

// poll_once while the coordinator holds the state after `merged` rounds
// (stream_state and save_start waiting for the one before, after a merge
// and before the round loop moves on): it serves as in round `merged`.
static ent_status serve_merged(coord *c, uint64_t merged) {
    uint64_t r = c->round;
    c->round = merged;
    ent_status st = poll_once(c, 20);
    c->round = r;
    return st;
}

// Every site in since before the round has its delta in (or rejected).
static int round_complete(const coord *c) {
    for (int i = 0; i < c->nsites; i++) {
        const csite *s = &c->sites[i];
        if (!active(s) || s->first_round > c->round || rejected_for(s, c->round)) continue;
        if (!whole_delta(s, c->round)) return 0;
    }
    return 1;
}

// ---------------------------------------------------------------------------
// a round

// The validation loss of anchor (the anchor, or the one a merge makes).
static ent_status eval_anchor(coord *c, const float *anchor, double *loss) {
    *loss = NAN;
    if (c->val == NULL) return ENT_OK;
    float *p = ent_model_arena(c->model, ENT_ARENA_PARAMS);
    coal_global_to_arena(&c->lay, 0, anchor, p);
    ENT_CHECK(ent_model_params_changed(c->model));
    int64_t want = (int64_t)c->cfg->eval_batches * c->cfg->batch_size;
    return ent_eval_loss(c->model, c->val, want, c->micro, NULL, c->inputs, c->targets, loss);
}

static const coord *sort_c; // by_name's coordinator (qsort takes no context)
static int by_name(const void *a, const void *b) {
    return strcmp(sort_c->sites[*(const int *)a].name, sort_c->sites[*(const int *)b].name);
}

// The ledger after `merged` rounds as JSON text, sites in the order of
// their names (the same text whoever joined first); order (may be NULL)
// gets the index in c->sites of each entry. The caller frees it; NULL when
// out of memory.
static char *ledger_text(coord *c, uint64_t merged, int *order) {
    coal_ledger_site *led = calloc((size_t)c->nsites + 1, sizeof *led);
    int *idx = calloc((size_t)c->nsites + 1, sizeof *idx);
    char *text = NULL;
    if (led != NULL && idx != NULL) {
        for (int i = 0; i < c->nsites; i++) idx[i] = i;
        sort_c = c;
        qsort(idx, (size_t)c->nsites, sizeof *idx, by_name);
        for (int i = 0; i < c->nsites; i++) led[i] = c->sites[idx[i]].led;
        text = coal_ledger_json(led, c->nsites, merged);
        if (order != NULL) memcpy(order, idx, sizeof *idx * (size_t)c->nsites);
    }
    free(led);
    free(idx);
    return text;
}

// ---------------------------------------------------------------------------
// checkpoints, on a thread (docs/coalition.md, "Checkpoints")
//
// save_start takes what only the main loop may read (the ledger, the
// attributes) and starts save_work, which copies the anchor, the outer
// momentum and the residual into the save's own buffers (stage 1), then
// writes the file through the (synchronous) saver (stage 2). The main loop
// serves meanwhile. The state copied stays as it is until stage 1: a merge
// waits for it before it starts (state_copied), and the anchor buffer is not
// written before the merge after next. One save at a time: the next one
// waits for it, serving; poll_once reaps it (save_reap), and a failure
// stops the coordinator. The saver's MPI calls run on this thread only
// while it runs (MPI_THREAD_SERIALIZED).

static void *save_work(void *arg) {
    save_job *j = arg;
    double t0 = ent_now_seconds();
    coal_global_to_arena(j->lay, 0, j->anchor, j->params);
    coal_global_to_arena(j->lay, 0, j->momentum, j->mom);
    coal_global_to_arena(j->lay, 0, j->resid, j->res);
    atomic_store(&j->stage, 1);
    if (j->fault_s > 0) { // the file of a larger model on a slower disk (tests)
        double until = t0 + j->fault_s;
        while (ent_now_seconds() < until) {
            struct timespec pause = {0, 10000000};
            nanosleep(&pause, NULL);
        }
    }
    ent_ckpt_coalition co = {.anchor = j->params, .outer_momentum = j->mom, .residual = j->res,
                             .round = (int64_t)j->round, .ledger = j->ledger};
    ent_ckpt_shard sh = {.table = j->table, .tp_rank = 0, .tp_size = 1, .params = j->params,
                         .write_first = 0, .write_count = j->table->total, .coalition = &co};
    j->st = ent_ckpt_save(j->saver, j->name, j->ra.attrs, j->ra.count, &sh);
    if (j->st != ENT_OK) snprintf(j->err, sizeof j->err, "%s", ent_last_error());
    j->done_at = ent_now_seconds();
    j->write_s = j->done_at - t0;
    atomic_store(&j->stage, 2);
    return NULL;
}

static void save_job_clear(save_job *j) {
    free(j->ledger);
    j->ledger = NULL;
    ent_run_attrs_free(&j->ra);
    memset(&j->ra, 0, sizeof j->ra);
}

// A save written (or failed): joined, logged and recorded, or its failure
// returned (the coordinator stops, naming the file).
static ent_status save_reap(coord *c) {
    save_job *j = &c->save;
    if (!j->running || atomic_load(&j->stage) < 2) return ENT_OK;
    pthread_join(j->thread, NULL);
    j->running = 0;
    save_job_clear(j);
    if (j->st != ENT_OK) {
        c->save_failed = 1;
        return ent_fail(j->st, "coordinator: saving the anchor after %llu rounds as %s/%s: %s",
                        (unsigned long long)j->round, c->ckpt_dir, j->name, j->err);
    }
    ent_log_info("coordinator: saved the anchor after %llu rounds: %s/%s (%.2f s on its thread; "
                 "the main loop held %.3f s)", (unsigned long long)j->round, c->ckpt_dir, j->name,
                 j->write_s, j->blocked_s);
    char path[ENT_PATH_MAX + 80];
    snprintf(path, sizeof path, "%s/%s", c->ckpt_dir, j->name);
    ent_json_field rec[] = {ENT_JSTR("event", "checkpoint"), ENT_JINT("round", j->round),
                            ENT_JSTR("file", path), ENT_JBOOL("async", 1),
                            ENT_JNUM("blocked_s", j->blocked_s), ENT_JNUM("write_s", j->write_s),
                            ENT_JNUM("elapsed_s", j->done_at - c->t_start)};
    return record(c, rec, (int)(sizeof rec / sizeof rec[0]));
}

// The save thread's anchor buffer, and the test hook ENTENTE_FAULT_SAVE_S
// (every save lasts at least that many seconds: a large model's file).
static ent_status save_setup(coord *c) {
    ENT_CHECK(coal_alloc_floats(&c->ck_params, c->table->total, "the checkpoint's anchor"));
    ENT_CHECK(coal_fault_number("ENTENTE_FAULT_SAVE_S", 0, 600, 0, &c->save.fault_s));
    if (c->save.fault_s > 0)
        ent_log_warn("coordinator: ENTENTE_FAULT_SAVE_S=%g: every save lasts at least that many "
                     "seconds on purpose (a test hook)", c->save.fault_s);
    return ENT_OK;
}

// Serving until the save in flight, if any, is written.
static ent_status save_wait(coord *c, uint64_t merged) {
    while (c->save.running) ENT_CHECK(serve_merged(c, merged));
    return ENT_OK;
}

// The checkpoint of the state after `merged` rounds (anchor_round_NNNNNNNN.h5)
// starts on its thread, once the one before is written.
static ent_status save_start(coord *c, uint64_t merged) {
    // the ledger as of this merge: what the main loop records while it waits
    // for the save before belongs to the rounds after it
    char *ledger = ledger_text(c, merged, NULL);
    if (ledger == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for the ledger");
    ent_status waited = save_wait(c, merged);
    if (waited != ENT_OK) {
        free(ledger);
        return waited;
    }
    double t0 = ent_now_seconds();
    save_job *j = &c->save;
    j->round = merged;
    snprintf(j->name, sizeof j->name, "anchor_round_%08llu.h5", (unsigned long long)merged);
    j->lay = &c->lay;
    j->table = c->table;
    j->saver = c->saver;
    j->anchor = c->anchor;
    j->momentum = c->momentum;
    j->resid = c->resid;
    j->params = c->ck_params;
    j->mom = c->ck_mom;
    j->res = c->ck_resid;
    j->st = ENT_OK;
    j->err[0] = '\0';
    j->ledger = ledger;
    ent_run_state rs = {.sequences = 1, .world = 1, .dp = 1, .tp = 1};
    ent_status st = ent_run_attrs_build(&j->ra, c->cfg, &rs);
    atomic_store(&j->stage, 0);
    if (st == ENT_OK && pthread_create(&j->thread, NULL, save_work, j) != 0)
        st = ent_fail(ENT_ERR_NOMEM, "coordinator: cannot start the thread that saves the anchor "
                      "after %llu rounds", (unsigned long long)merged);
    if (st != ENT_OK) {
        save_job_clear(j);
        return st;
    }
    j->running = 1;
    j->blocked_s = ent_now_seconds() - t0;
    heard_all(c, t0);
    return ENT_OK;
}

// Whether the state after the last merge has been copied by the save and
// the standby's stream that read it (a merge moves it on).
static int state_copied(coord *c) {
    return (!c->save.running || atomic_load(&c->save.stage) >= 1) &&
           (!c->stream.running || atomic_load(&c->stream.stage) >= 1);
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// ---------------------------------------------------------------------------
// the merge, on a worker thread
//
// merge_round takes the round's whole deltas out of the sites into a job
// and starts merge_work on a thread, which screens, scores and merges them
// into the next anchor (stage 1), then evaluates it if the round asks for
// that (stage 2). The main loop serves on (poll_once) meanwhile: at stage 1
// it records what the merge decided, moves the anchor and sends the update
// (merge_apply), and serves as in the next round until stage 2, when it
// writes the round's record (merge_record). The worker reads the anchor
// it started from and writes only the job, the next anchor, the outer
// momentum and residual, g, the decoded deltas and the model (its
// losses); the main loop writes none of those while it runs, and reads
// only the anchor (a joiner's, send_anchor).

typedef struct {
    int site;       // index in c->sites
    uint32_t id;    // the merge's order: 1 + the deltas whose site's name sorts before
    coal_vec delta; // taken out of the site's slot
    float *dec;     // decoded (one of c->dec)
    double norm;
    double gain; // its loss-change score, L(A) - L(A - d)
    int scored;
    int rejected; // left out, for kind and why
    coal_reject_kind kind;
    char why[600];
} mdelta;

typedef struct {
    coord *c;
    uint64_t round;
    const float *anchor; // the anchor the round starts from
    float *next;         // the anchor after the round
    int eval;            // the round's anchor is evaluated (coalition.eval_rounds, the last)
    mdelta *d;
    int count;
    int one_buffer;       // more deltas than c->dec_cap: all decode into c->dec[0]
    int *merged, nmerged; // the deltas merged (indices in d)
    double base;          // the anchor's loss on the score batches (NaN: no scores)
    double val;           // the validation loss after the merge (NaN: not evaluated)
    coal_vec up;
    double merge_s;
    ent_status st;
    char err[1024];
    atomic_int stage; // 1: merged (or failed), 2: done
    // the round record's arrays (merge_apply)
    char names[ENT_LINK_NAME_MAX * 64 + 256], toks[32 * 64 + 256], gains[32 * 64 + 256];
    char members[ENT_LINK_NAME_MAX * 64 + 256];
} merge_job;

static void left_out(mdelta *d, coal_reject_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void left_out(mdelta *d, coal_reject_kind kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->why, sizeof d->why, fmt, ap);
    va_end(ap);
    d->rejected = 1;
    d->kind = kind;
}

// The loss-change score of delta d (coalition.score_batches > 0 and
// validation shards): the loss of the anchor with this delta alone
// applied, A - d, on the first score_batches batches of the validation
// shards, against the anchor's own loss there (*base, computed at the first
// call of a round). gain = L(A) - L(A - d): positive, the delta helps.
static ent_status score_delta(coord *c, const float *anchor, mdelta *d, double *base) {
    d->scored = 0;
    if (c->val == NULL || c->cfg->coal_score_batches <= 0) return ENT_OK;
    float *p = ent_model_arena(c->model, ENT_ARENA_PARAMS);
    int64_t want = (int64_t)c->cfg->coal_score_batches * c->cfg->batch_size;
    if (isnan(*base)) {
        coal_global_to_arena(&c->lay, 0, anchor, p);
        ENT_CHECK(ent_model_params_changed(c->model));
        ENT_CHECK(ent_eval_loss(c->model, c->val, want, c->micro, NULL, c->inputs, c->targets,
                                base));
    }
    for (size_t i = 0; i < c->n; i++) c->g[i] = anchor[i] - d->dec[i];
    coal_global_to_arena(&c->lay, 0, c->g, p);
    ENT_CHECK(ent_model_params_changed(c->model));
    double loss = NAN;
    ENT_CHECK(ent_eval_loss(c->model, c->val, want, c->micro, NULL, c->inputs, c->targets, &loss));
    // a loss that is not finite is as bad as a loss can be
    d->gain = isfinite(loss) ? *base - loss : -INFINITY;
    d->scored = 1;
    return ENT_OK;
}

// The round's contributions that pass the screen: each decodes to finite
// values (decoded once, into its d->dec), and its norm is at most
// coalition.max_norm_ratio times the lower median of the round's norms (a
// site that scales its delta up cannot pull the median with it, even among
// two). The others are marked rejected; the rest go into job->merged.
static ent_status screen_round(merge_job *job) {
    coord *c = job->c;
    int m = 0, *merged = job->merged;
    double norms[4096], base = NAN;
    job->nmerged = 0;
    job->base = NAN;
    for (int j = 0; j < job->count; j++) {
        mdelta *d = &job->d[j];
        if (coal_vec_norm(&d->delta, d->dec, &d->norm) != ENT_OK) {
            left_out(d, COAL_REJECT_UNDECODABLE, "it does not decode: %s", ent_last_error());
            continue;
        }
        ENT_CHECK(score_delta(c, job->anchor, d, &base));
        norms[m] = d->norm;
        merged[m++] = j;
    }
    double ratio = c->cfg->coal_max_norm_ratio;
    if (m >= 2 && ratio > 0) {
        double sorted[4096];
        memcpy(sorted, norms, sizeof *norms * (size_t)m);
        qsort(sorted, (size_t)m, sizeof *sorted, by_value);
        double median = sorted[(m - 1) / 2];
        int kept = 0;
        for (int j = 0; j < m; j++) {
            if (norms[j] > ratio * median)
                left_out(&job->d[merged[j]], COAL_REJECT_NORM, "its norm %.4g is %.1f times the "
                         "round's median %.4g (coalition.max_norm_ratio = %g)", norms[j],
                         norms[j] / median, median, ratio);
            else
                merged[kept++] = merged[j];
        }
        m = kept;
    }
    // the loss-change screen, on what passed the others: a delta is rejected
    // when it makes the held-out loss worse by more than the tolerance,
    // counted from the round's upper median change when that is a loss too
    // (late in a run, or on data the held-out set covers less, honest deltas
    // can all make it a little worse; at least half the round's deltas are
    // assumed honest, as for the norm)
    double tol = c->cfg->coal_score_tolerance, gains[4096], ref = 0;
    int ng = 0;
    for (int j = 0; j < m; j++)
        if (job->d[merged[j]].scored) gains[ng++] = job->d[merged[j]].gain;
    if (ng > 0) {
        qsort(gains, (size_t)ng, sizeof *gains, by_value);
        ref = gains[ng / 2] < 0 ? gains[ng / 2] : 0;
    }
    int kept = 0;
    for (int j = 0; j < m; j++) {
        mdelta *d = &job->d[merged[j]];
        if (tol > 0 && d->scored && d->gain < ref - tol)
            left_out(d, COAL_REJECT_LOSS, "it makes the held-out loss worse by %.4g (from %.4f "
                     "to %.4f; the round's median change %+.4g, coalition.score_tolerance = %g)",
                     -d->gain, base, base - d->gain, -gains[ng / 2], tol);
        else
            merged[kept++] = merged[j];
    }
    job->nmerged = kept;
    job->base = base;
    if (kept < c->cfg->coal_quorum)
        return ent_fail(ENT_ERR_IO, "%d contribution(s) left to merge, fewer than "
                        "coalition.quorum = %d: stopping", kept, c->cfg->coal_quorum);
    return ENT_OK;
}

// The worker's first part: the screen, and the merge into job->next (from
// the deltas as decoded).
static ent_status merge_compute(merge_job *job) {
    coord *c = job->c;
    double t0 = ent_now_seconds();
    if (c->fault_merge_s > 0) { // a merge of a larger model on busier cores (tests)
        double until = t0 + c->fault_merge_s;
        while (ent_now_seconds() < until) {
            struct timespec pause = {0, 10000000};
            nanosleep(&pause, NULL);
        }
    }
    ENT_CHECK(screen_round(job));
    int m = job->nmerged;
    const coal_vec **deltas = calloc((size_t)m + 1, sizeof *deltas);
    const float **dec = calloc((size_t)m + 1, sizeof *dec);
    uint32_t *ids = calloc((size_t)m + 1, sizeof *ids);
    ent_status st = deltas && dec && ids ? ENT_OK : ent_fail(ENT_ERR_NOMEM, "out of memory");
    for (int j = 0; j < m && st == ENT_OK; j++) {
        const mdelta *d = &job->d[job->merged[j]];
        deltas[j] = &d->delta;
        dec[j] = d->dec;
        ids[j] = d->id;
    }
    if (job->one_buffer) { // the buffer holds the last delta screened only
        free(dec);
        dec = NULL;
    }
    if (st == ENT_OK) {
        memcpy(job->next, job->anchor, sizeof(float) * c->n);
        st = coal_round_merge(deltas, dec, ids, m, &c->outer, &c->codec, c->chunk_bytes,
                              job->next, c->momentum, c->resid, c->g, c->n, &job->up);
    }
    free(deltas);
    free(dec);
    free(ids);
    job->merge_s = ent_now_seconds() - t0;
    return st;
}

static void *merge_work(void *arg) {
    merge_job *job = arg;
    job->st = merge_compute(job);
    if (job->st == ENT_OK) {
        atomic_store(&job->stage, 1);
        job->val = NAN;
        if (job->eval) job->st = eval_anchor(job->c, job->next, &job->val);
    }
    if (job->st != ENT_OK) snprintf(job->err, sizeof job->err, "%s", ent_last_error());
    atomic_store(&job->stage, 2);
    return NULL;
}

static void merge_job_free(merge_job *job) {
    for (int j = 0; j < job->count; j++) coal_vec_free(&job->d[j].delta);
    coal_vec_free(&job->up);
    free(job->d);
    free(job->merged);
}

// The job of the round: its whole deltas (those of sites lost since they
// sent them too), out of the sites, and a decoded vector for each.
static ent_status merge_job_new(coord *c, merge_job *job) {
    memset(job, 0, sizeof *job);
    job->c = c;
    job->round = c->round;
    job->anchor = c->anchor;
    job->next = c->anchor_next;
    int every = c->cfg->coal_eval_rounds;
    job->eval = c->round + 1 == c->rounds || (every > 0 && (c->round + 1) % (uint64_t)every == 0);
    int k = (int)(c->round % 2);
    job->d = calloc((size_t)c->nsites + 1, sizeof *job->d);
    job->merged = calloc((size_t)c->nsites + 1, sizeof *job->merged);
    if (job->d == NULL || job->merged == NULL) {
        merge_job_free(job);
        return ent_fail(ENT_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < c->nsites; i++) {
        csite *s = &c->sites[i];
        if (!whole_delta(s, c->round) || rejected_for(s, c->round)) continue;
        mdelta *d = &job->d[job->count++];
        d->site = i;
        d->delta = s->delta[k];
        memset(&s->delta[k], 0, sizeof s->delta[k]);
        s->delta_used[k] = 0;
    }
    // the merge sums in the order of the ids it is given: the sites' names'
    // order, not the order they joined in, so that a coalition gives the
    // same bits whichever site connected first
    for (int j = 0; j < job->count; j++) {
        job->d[j].id = 1;
        for (int o = 0; o < job->count; o++)
            job->d[j].id += strcmp(c->sites[job->d[o].site].name,
                                   c->sites[job->d[j].site].name) < 0;
    }
    // what is left of the round in the sites (nothing whole) goes; the slot
    // takes the round after next, once this merge is done
    for (int i = 0; i < c->nsites; i++) {
        c->sites[i].delta_used[k] = 0;
        coal_vec_free(&c->sites[i].delta[k]);
    }
    if (c->dec_cap == 0) { // a quarter of the memory free when the first merge runs
        size_t avail = c->be->iface->available_memory != NULL
                           ? c->be->iface->available_memory(c->be) : (size_t)1 << 32;
        size_t cap = avail / 4 / (sizeof(float) * (c->n > 0 ? c->n : 1));
        c->dec_cap = cap < 1 ? 1 : cap > 4096 ? 4096 : (int)cap;
        // (tests: ENTENTE_FAULT_DECODED_MAX = K, as if only K copies fitted)
        const char *f = getenv("ENTENTE_FAULT_DECODED_MAX");
        if (f != NULL && atoi(f) >= 1) c->dec_cap = atoi(f);
    }
    job->one_buffer = job->count > c->dec_cap;
    int want = job->one_buffer ? 1 : job->count;
    if (want > c->ndec) {
        float **more = realloc(c->dec, sizeof *more * (size_t)want);
        if (more == NULL) {
            merge_job_free(job);
            return ent_fail(ENT_ERR_NOMEM, "out of memory");
        }
        c->dec = more;
        for (; c->ndec < want; c->ndec++) {
            ent_status st = coal_alloc_floats(&c->dec[c->ndec], c->n, "a decoded delta");
            if (st != ENT_OK) {
                merge_job_free(job);
                return st;
            }
        }
    }
    for (int j = 0; j < job->count; j++) job->d[j].dec = c->dec[job->one_buffer ? 0 : j];
    if (job->one_buffer)
        ent_log_info("coordinator: round %llu: %d deltas of %zu values, over the %d decoded copies "
                     "a quarter of the free memory holds: each is decoded twice",
                     (unsigned long long)c->round, job->count, c->n, c->dec_cap);
    return ENT_OK;
}

static ent_status merge_empty(coord *c);
static ent_status merge_apply(coord *c, merge_job *job);
static ent_status merge_record(coord *c, merge_job *job);

// Fault injection, for the test of the sites' LEDGER checks only:
// ENTENTE_FAULT_LEDGER = R spoils the first byte of the ledger sent after R
// rounds merged ('X': not JSON), as damage or a broken coordinator would.
// Unset, nothing happens.
static void spoil_ledger(uint64_t merged, char *text) {
    const char *f = getenv("ENTENTE_FAULT_LEDGER");
    if (f == NULL || f[0] == '\0' || strtoull(f, NULL, 10) != merged || text[0] == '\0') return;
    text[0] = 'X';
    ent_log_warn("coordinator: ENTENTE_FAULT_LEDGER=%s: the ledger after %llu rounds goes out "
                 "spoiled on purpose", f, (unsigned long long)merged);
}

// The round's ledger (LEDGER: the sites checkpoint it), its update, and
// the plan two rounds ahead, to every site still in; one that cannot be
// sent to is lost.
// The update's buffers move into a vector the sites' queues share (up keeps
// its numbers).
static ent_status send_update(coord *c, coal_vec *up) {
    char *ledger = ledger_text(c, c->round + 1, NULL);
    if (ledger == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for the ledger");
    spoil_ledger(c->round + 1, ledger);
    ent_link_ledger lm = {.text = ledger, .len = strlen(ledger)};
    ent_status st = ENT_OK;
    if (lm.len > ENT_LINK_LEDGER_MAX) { // 4096 sites take about 2 MB
        ent_log_warn("coordinator: the ledger (%zu bytes) is over the %u a LEDGER carries: the "
                     "sites do not get it", lm.len, ENT_LINK_LEDGER_MAX);
        lm.len = 0;
    }
    // the anchor moves with this update: joiners from now on get the new one
    shared_drop(c->anchor_sv);
    c->anchor_sv = NULL;
    shared_vec *sv = shared_take(up);
    if (sv == NULL) {
        free(ledger);
        return ent_fail(ENT_ERR_NOMEM, "out of memory for the update of round %llu",
                        (unsigned long long)c->round);
    }
    for (int i = 0; i < c->nsites && st == ENT_OK; i++) {
        csite *s = &c->sites[i];
        if (!active(s)) continue;
        ent_link_buf msg = {0};
        if (lm.len > 0)
            st = site_send(c, s, &msg, ent_link_encode_ledger(&msg, s->id, c->round + 1, &lm));
        if (st == ENT_OK) st = site_send_vec(c, s, sv, c->round);
        if (st == ENT_OK && c->round + 2 < c->rounds) st = send_plan(c, s, c->round + 2);
        st = lost_on_failure(c, s, st);
    }
    shared_drop(sv);
    free(ledger);
    return st;
}

static ent_status merge_round(coord *c) {
    if (c->resumed && c->round == c->resume_round) return merge_empty(c);
    merge_job job;
    ENT_CHECK(merge_job_new(c, &job));
    pthread_t worker;
    c->merging = 1;
    c->round_began = ent_now_seconds(); // the sites train the next round (overlap)
    // the merge moves the outer momentum and the residual: the save and the
    // standby's stream of the state before must have copied them (at once,
    // but for a model far larger than the time the round took)
    ent_status wait = ENT_OK;
    while (wait == ENT_OK && !state_copied(c)) wait = poll_once(c, 20);
    if (wait != ENT_OK) {
        c->merging = 0;
        merge_job_free(&job);
        return wait;
    }
    if (pthread_create(&worker, NULL, merge_work, &job) != 0) {
        c->merging = 0;
        merge_job_free(&job);
        return ent_fail(ENT_ERR_NOMEM, "coordinator: cannot start the merge of round %llu",
                        (unsigned long long)c->round);
    }
    // serving on; a failure here (the quorum lost) waits for the worker
    ent_status st = ENT_OK;
    while (st == ENT_OK && atomic_load(&job.stage) < 1) st = poll_once(c, 20);
    if (st == ENT_OK) st = merge_apply(c, &job);
    if (st == ENT_OK) {
        // the update is out: for the sites the coalition is in the next
        // round while the worker evaluates the new anchor
        c->merging = 0;
        c->round = job.round + 1;
        while (st == ENT_OK && atomic_load(&job.stage) < 2) st = poll_once(c, 20);
        c->round = job.round;
    }
    pthread_join(worker, NULL);
    c->merging = 0;
    if (st == ENT_OK && job.st != ENT_OK)
        st = ent_fail(job.st, "coordinator: round %llu: %s", (unsigned long long)job.round,
                      job.err);
    if (st == ENT_OK) st = merge_record(c, &job);
    merge_job_free(&job);
    return st;
}

// The main loop's part once the merge is computed: the rejections and
// scores recorded, the anchor moved, the ledger counted and the update sent.
static ent_status merge_apply(coord *c, merge_job *job) {
    int k = (int)(c->round % 2);
    for (int j = 0; j < job->count; j++) {
        mdelta *d = &job->d[j];
        csite *s = &c->sites[d->site];
        s->gain_have[k] = d->scored;
        s->gain[k] = d->gain;
        s->gain_round[k] = c->round;
        if (d->rejected) ENT_CHECK(reject(c, s, c->round, d->kind, d->why));
    }
    if (atomic_load(&job->stage) == 2 && job->st != ENT_OK)
        return ent_fail(job->st, "coordinator: round %llu: %s", (unsigned long long)c->round,
                        job->err);
    c->anchor = job->next;
    c->anchor_next = (float *)job->anchor;
    int nmerged = job->nmerged;
    c->hist[c->round + 1] = job->up.anchor_hash;
    // names and tokens of the sites merged, as JSON arrays
    // and their loss-change scores (null: not scored)
    char *names = job->names, *toks = job->toks, *gains = job->gains;
    size_t un = 1, ut = 1, ug = 1;
    snprintf(names, sizeof job->names, "[");
    snprintf(toks, sizeof job->toks, "[");
    snprintf(gains, sizeof job->gains, "[");
    for (int j = 0; j < nmerged && un < sizeof job->names - 80 && ut < sizeof job->toks - 40 &&
                    ug < sizeof job->gains - 40; j++) {
        const mdelta *d = &job->d[job->merged[j]];
        const csite *s = &c->sites[d->site];
        un += (size_t)snprintf(names + un, sizeof job->names - un, "%s\"%s\"", j ? "," : "",
                               s->name);
        ut += (size_t)snprintf(toks + ut, sizeof job->toks - ut, "%s%llu", j ? "," : "",
                               (unsigned long long)d->delta.tokens);
        if (d->scored)
            ug += (size_t)snprintf(gains + ug, sizeof job->gains - ug, "%s%.17g", j ? "," : "",
                                   d->gain);
        else
            ug += (size_t)snprintf(gains + ug, sizeof job->gains - ug, "%snull", j ? "," : "");
    }
    snprintf(names + un, sizeof job->names - un, "]");
    snprintf(toks + ut, sizeof job->toks - ut, "]");
    snprintf(gains + ug, sizeof job->gains - ug, "]");
    // the ledger: tokens and acceptances of the merged, the round for every
    // member (in since before it, and still in or merged)
    char *members = job->members;
    size_t um = 1;
    snprintf(members, sizeof job->members, "[");
    for (int i = 0; i < c->nsites; i++) {
        csite *s = &c->sites[i];
        const mdelta *in_merge = NULL;
        for (int j = 0; j < nmerged && in_merge == NULL; j++)
            if (job->d[job->merged[j]].site == i) in_merge = &job->d[job->merged[j]];
        if (in_merge) {
            s->led.tokens += in_merge->delta.tokens;
            s->led.accepted++;
            if (in_merge->scored) {
                s->led.scored++;
                s->led.loss_gain += in_merge->gain;
            }
        }
        if (s->first_round > c->round || !(active(s) || in_merge)) continue;
        s->led.rounds_joined++;
        if (um < sizeof job->members - 80)
            um += (size_t)snprintf(members + um, sizeof job->members - um, "%s\"%s\"",
                                   um > 1 ? "," : "", s->name);
    }
    snprintf(members + um, sizeof job->members - um, "]");
    c->tokens_total += job->up.tokens;
    // every site still in gets the update, a site whose delta was rejected too
    return send_update(c, &job->up);
}

// The round's record, once the worker has evaluated the new anchor (if the
// round asks for it).
static ent_status merge_record(coord *c, merge_job *job) {
    uint64_t h = job->up.anchor_hash, tokens = job->up.tokens;
    double val = job->val, merge_s = job->merge_s;
    char hash[17];
    coal_hash_hex(h, hash);
    ent_json_field rec[] = {ENT_JSTR("event", "round"), ENT_JINT("round", c->round),
                            ENT_JRAW("sites", job->names), ENT_JRAW("site_tokens", job->toks),
                            ENT_JRAW("site_loss_gain", job->gains),
                            ENT_JNUM("score_loss", job->base), ENT_JRAW("members", job->members),
                            ENT_JINT("tokens", tokens), ENT_JINT("tokens_total", c->tokens_total),
                            ENT_JSTR("anchor_hash", hash), ENT_JNUM("val_loss", val),
                            ENT_JINT("update_bytes", job->up.len), ENT_JNUM("merge_s", merge_s),
                            ENT_JNUM("elapsed_s", ent_now_seconds() - c->t_start)};
    ENT_CHECK(record(c, rec, (int)(sizeof rec / sizeof rec[0])));
    // a line for every round evaluated (coalition.eval_rounds), the first and the last
    if (isfinite(val))
        ent_log_info("coordinator: round %llu merged (%d sites, %llu tokens, %.3f s): val loss "
                     "%.4f, anchor %s", (unsigned long long)c->round, job->nmerged,
                     (unsigned long long)tokens, merge_s, val, hash);
    else if (c->round == 0)
        ent_log_info("coordinator: round %llu merged (%d sites, %llu tokens, %.3f s): anchor %s",
                     (unsigned long long)c->round, job->nmerged, (unsigned long long)tokens,
                     merge_s, hash);
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// continuing a coalition: a restart from a checkpoint, a standby's takeover

// Takes the coalition's state after `round` rounds (anchor, momentum and
// residual already in their arrays) from `from`: the ledger's sites become
// known sites, lost until each says HELLO again under its name (then
// re-admitted under its id: ids[i] for the ledger's i-th site, or i + 1 when
// ids is NULL). The round `round` is then merged empty (merge_empty): the
// sites come back as joiners of round + 1, with their unsent progress.
static ent_status adopt_state(coord *c, uint64_t round, const char *from, const char *ledger,
                              const uint32_t *ids) {
    if (round + 1 >= c->rounds)
        return ent_fail(ENT_ERR_USAGE, "%s: the coalition's state after round %llu of "
                        "coalition.rounds = %llu: no round is left to continue with", from,
                        (unsigned long long)round, (unsigned long long)c->rounds);
    shared_drop(c->anchor_sv); // another anchor from now on
    c->anchor_sv = NULL;
    coal_ledger_site *led = NULL;
    int n = 0;
    uint64_t merged = 0;
    ENT_CHECK(coal_ledger_parse(from, ledger, &led, &n, &merged));
    ent_status st = ENT_OK;
    if (merged != round)
        st = ent_fail(ENT_ERR_INPUT, "%s: the ledger counts %llu rounds merged, the state %llu",
                      from, (unsigned long long)merged, (unsigned long long)round);
    if (st == ENT_OK && n > c->cap)
        st = ent_fail(ENT_ERR_USAGE, "%s: %d sites have joined the coalition, more than "
                      "coalition.max_sites = %d", from, n, c->cap);
    for (int i = 0; st == ENT_OK && i < c->nsites; i++) {
        coal_vec_free(&c->sites[i].delta[0]);
        coal_vec_free(&c->sites[i].delta[1]);
    }
    if (st == ENT_OK) {
        memset(c->sites, 0, sizeof *c->sites * (size_t)c->cap);
        c->tokens_total = 0;
        for (int i = 0; i < n; i++) {
            csite *s = &c->sites[i];
            s->id = ids != NULL ? ids[i] : (uint32_t)i + 1;
            memcpy(s->name, led[i].name, sizeof s->name);
            s->led = led[i];
            s->lost = 1;
            s->joins = 1;
            c->tokens_total += led[i].tokens;
        }
        c->nsites = n;
        c->round = c->resume_round = round;
        c->hist[round] = ent_anchor_hash(c->anchor, c->n);
        c->resumed = c->started = 1;
        snprintf(c->resumed_from, sizeof c->resumed_from, "%s", from);
    }
    free(led);
    return st;
}

// `entente coordinator --resume FILE`: the file must be a coordinator's
// checkpoint (the anchor, the outer momentum and residual, the round and the
// ledger under /coalition) of this configuration's model and coalition.
static ent_status load_checkpoint(coord *c, const char *path) {
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    ent_ckpt_state *saved = calloc(1, sizeof *saved);
    ent_param_table table = {0};
    char *ledger = NULL;
    int64_t round = 0;
    ent_status st = saved == NULL ? ent_fail(ENT_ERR_NOMEM, "out of memory") : ENT_OK;
    if (st == ENT_OK) st = ent_checkpoint_check(ck, saved, &table);
    ent_param_table_free(&table);
    if (st == ENT_OK) st = ent_check_same_model(c->cfg, path, &saved->cfg);
    // what every member hashes into HELLO must be the checkpoint's too
    const ent_config *mine = c->cfg, *theirs = saved ? &saved->cfg : NULL;
    if (st == ENT_OK && coal_config_hash(mine) != coal_config_hash(theirs)) {
        const char *key = mine->coal_rounds != theirs->coal_rounds ? "coalition.rounds"
                          : strcmp(mine->coal_codec, theirs->coal_codec) != 0 ? "coalition.codec"
                          : mine->coal_outer_lr != theirs->coal_outer_lr ? "coalition.outer_lr"
                          : mine->coal_outer_momentum != theirs->coal_outer_momentum
                              ? "coalition.outer_momentum"
                          : mine->coal_overlap != theirs->coal_overlap ? "coalition.overlap"
                                                                       : "coalition.max_staleness";
        st = ent_fail(ENT_ERR_USAGE, "%s was saved by a coalition with other settings: %s "
                      "differs (the sites would be refused)", path, key);
    }
    if (st == ENT_OK && !ent_ckpt_has_coalition(ck))
        st = ent_fail(ENT_ERR_INPUT, "%s holds no coalition state (group /coalition): it is not "
                      "a coordinator's checkpoint", path);
    if (st == ENT_OK) st = ent_ckpt_coalition_info(ck, &round, &ledger);
    // a site's checkpoint holds its inner optimizer's moments (and, once the
    // coordinator has sent one, a ledger); the coordinator's never
    if (st == ENT_OK && (ent_ckpt_has_moments(ck) || ledger == NULL || ledger[0] == '\0'))
        st = ent_fail(ENT_ERR_INPUT, "%s holds %s: a site's checkpoint, not a coordinator's", path,
                      ent_ckpt_has_moments(ck) ? "AdamW moments (adam_m, adam_v)"
                                               : "no ledger (/coalition/ledger)");
    float *p = ent_model_arena(c->model, ENT_ARENA_PARAMS);
    ent_ckpt_coalition co = {.anchor = p, .outer_momentum = c->ck_mom, .residual = c->ck_resid};
    ent_ckpt_shard sh = {.table = c->table, .tp_size = 1, .params = p,
                         .write_count = c->table->total, .coalition = &co};
    if (st == ENT_OK) st = ent_ckpt_read(ck, &sh);
    ent_ckpt_close(&ck);
    free(saved);
    if (st == ENT_OK) {
        coal_arena_to_global(&c->lay, 0, p, c->anchor);
        coal_arena_to_global(&c->lay, 0, c->ck_mom, c->momentum);
        coal_arena_to_global(&c->lay, 0, c->ck_resid, c->resid);
        st = adopt_state(c, (uint64_t)round, path, ledger, NULL);
    }
    free(ledger);
    if (st == ENT_OK) {
        // which sites were in when it was saved the ledger does not say:
        // any of them may come back
        for (int i = 0; i < c->nsites; i++) c->sites[i].awaited = 1;
        c->await = c->nsites < c->cfg->coal_sites ? c->nsites : c->cfg->coal_sites;
        ent_log_info("coordinator: resumed from %s: %llu rounds merged, %d site(s) known; "
                     "waiting for them to come back", path, (unsigned long long)round,
                     c->nsites);
    }
    return st;
}

// Before the first round after a restart or a takeover: the sites it knows
// come back (`await` of them, within coalition.timeout; at least
// coalition.quorum by then).
static ent_status await_rejoins(coord *c) {
    double t0 = ent_now_seconds(), until = t0 + c->cfg->coal_timeout;
    while (active_count(c) < c->await && ent_now_seconds() < until) ENT_CHECK(poll_once(c, 200));
    int n = active_count(c);
    if (n < c->cfg->coal_quorum || n == 0)
        return ent_fail(ENT_ERR_IO, "coordinator: %d of the %d site(s) it knows came back within "
                        "coalition.timeout = %g s (coalition.quorum = %d): stopping", n,
                        c->nsites, c->cfg->coal_timeout, c->cfg->coal_quorum);
    char hash[17];
    coal_hash_hex(c->hist[c->round], hash);
    ent_log_info("coordinator: %d of %d site(s) back after %.1f s; round %llu is merged empty, "
                 "the sites carry their progress into round %llu", n, c->nsites,
                 ent_now_seconds() - t0, (unsigned long long)c->round,
                 (unsigned long long)c->round + 1);
    ent_json_field rec[] = {ENT_JSTR("event", "resumed"), ENT_JINT("round", c->round),
                            ENT_JSTR("from", c->resumed_from), ENT_JINT("sites_in", n),
                            ENT_JINT("sites_known", c->nsites), ENT_JSTR("anchor_hash", hash),
                            ENT_JNUM("wait_s", ent_now_seconds() - t0)};
    return record(c, rec, (int)(sizeof rec / sizeof rec[0]));
}

// The round a continuing coordinator starts at: the deltas of it died with
// the coordinator before, so it merges nothing. The update is zero (the
// anchor and the outer momentum stay as they are), and every site back gets
// it, with the plan two rounds ahead, as after any merge.
static ent_status merge_empty(coord *c) {
    double t0 = ent_now_seconds();
    memset(c->g, 0, sizeof(float) * c->n);
    coal_vec up = {0};
    ENT_CHECK(coal_vec_encode(&up, (uint16_t)c->codec.kind, &c->codec, c->g, NULL, c->n,
                              c->chunk_bytes));
    uint64_t h = c->hist[c->round];
    up.anchor_hash = h;
    up.tokens = 0;
    c->hist[c->round + 1] = h;
    ent_status st = send_update(c, &up);
    size_t up_bytes = up.len;
    coal_vec_free(&up);
    ENT_CHECK(st);
    char hash[17];
    coal_hash_hex(h, hash);
    ent_json_field rec[] = {ENT_JSTR("event", "round"), ENT_JINT("round", c->round),
                            ENT_JRAW("sites", "[]"), ENT_JRAW("site_tokens", "[]"),
                            ENT_JRAW("members", "[]"), ENT_JINT("tokens", 0),
                            ENT_JINT("tokens_total", c->tokens_total),
                            ENT_JSTR("anchor_hash", hash), ENT_JNUM("val_loss", NAN),
                            ENT_JINT("update_bytes", up_bytes),
                            ENT_JNUM("merge_s", ent_now_seconds() - t0),
                            ENT_JNUM("elapsed_s", ent_now_seconds() - c->t_start),
                            ENT_JSTR("empty", "the coordinator continued from this round")};
    return record(c, rec, (int)(sizeof rec / sizeof rec[0]));
}


// ---------------------------------------------------------------------------
// the standby (docs/coalition.md, "A standby coordinator")
//
// The primary streams its state to the standby after every merge: one
// vector of 3n + w floats in f32 STATE chunks, the header's round the rounds
// merged: the anchor, the outer momentum and the residual (n each, global
// layout), then w words of JSON text (NUL-padded): the roster (each site's
// name, id and whether it is in) and the ledger. The standby keeps the last
// whole one. When the primary's connection closes, or it is silent for
// coalition.takeover_after, the standby takes that state over as a restarted
// coordinator takes its checkpoint's (adopt_state) and serves the sites on
// its endpoint, where it had answered every site with NOT_PRIMARY until then.

#define STATE_TEXT_MAX (64u << 20) // the roster and ledger, bytes

// The state's copy and its STATE messages, on the stream's thread (the
// text is the main loop's, made before).
static void *stream_work(void *arg) {
    stream_job *j = arg;
    size_t len = strlen(j->text), words = len / 4 + 1, total = 3 * j->n + words;
    float *buf = calloc(total, sizeof(float));
    ent_status st = buf ? ENT_OK : ent_fail(ENT_ERR_NOMEM, "out of memory for the standby's state");
    if (st == ENT_OK) {
        memcpy(buf, j->anchor, sizeof(float) * j->n);
        memcpy(buf + j->n, j->momentum, sizeof(float) * j->n);
        memcpy(buf + 2 * j->n, j->resid, sizeof(float) * j->n);
        memcpy(buf + 3 * j->n, j->text, len);
    }
    atomic_store(&j->stage, 1);
    coal_vec v = {0};
    if (st == ENT_OK)
        st = coal_vec_encode(&v, ENT_LINK_CODEC_F32, NULL, buf, NULL, total, j->chunk_bytes);
    free(buf);
    // the messages coal_vec_send would send, chunk by chunk
    if (st == ENT_OK) {
        j->msgs = calloc(v.count, sizeof *j->msgs);
        if (j->msgs == NULL) st = ent_fail(ENT_ERR_NOMEM, "out of memory for the standby's state");
        else j->count = v.count;
    }
    for (uint32_t i = 0; st == ENT_OK && i < v.count; i++) {
        ent_link_chunk ch = {.index = i, .count = v.count, .total = v.total, .offset = v.poff[i],
                             .length = v.plen[i], .codec = v.codec, .anchor_hash = j->anchor_hash,
                             .tokens = j->tokens, .data = v.data + v.boff[i],
                             .data_len = v.blen[i]};
        st = ent_link_encode_state(&j->msgs[i], 0, j->merged, &ch);
    }
    coal_vec_free(&v);
    j->st = st;
    if (st != ENT_OK) snprintf(j->err, sizeof j->err, "%s", ent_last_error());
    atomic_store(&j->stage, 2);
    return NULL;
}

static void stream_job_clear(stream_job *j) {
    for (uint32_t i = 0; j->msgs != NULL && i < j->count; i++) ent_link_buf_free(&j->msgs[i]);
    free(j->msgs);
    j->msgs = NULL;
    j->count = j->next = 0;
    j->sending = 0;
    j->slow = 0;
    j->skipped = 0;
    free(j->text);
    j->text = NULL;
}

// The main loop's part of the stream, at every poll: once the messages are
// encoded, it sends them in order, for up to about 5 ms a poll. A standby
// that cannot take one (gone, or its queue full: sends never wait) is
// logged once and gets none of the rest of this state; the rounds go on.
static ent_status stream_pump(coord *c) {
    stream_job *j = &c->stream;
    if (j->running && atomic_load(&j->stage) == 2) {
        pthread_join(j->thread, NULL);
        j->running = 0;
        if (j->st != ENT_OK) {
            stream_job_clear(j);
            return ent_fail(j->st, "coordinator: the state after %llu rounds for the standby: %s",
                            (unsigned long long)j->merged, j->err);
        }
        j->sending = 1;
        j->next = 0;
    }
    if (!j->sending) return ENT_OK;
    double t0 = ent_now_seconds();
    while (j->next < j->count && ent_now_seconds() - t0 < 0.005) {
        ent_link_buf *m = &j->msgs[j->next];
        if (ent_link_send(c->standby, NULL, m->data, m->len) != ENT_OK) {
            if (stream_held(j)) return ENT_OK; // no connection yet: again at the next poll
            if (ent_link_send_was_full(c->standby)) {
                // the standby (or the link to it) takes the state slower than
                // it is made: the rest goes at the next polls, and the states
                // of merges meanwhile are skipped (stream_state)
                if (!j->slow && !c->standby_slow)
                    ent_log_info("coordinator: the standby at %s takes the state after round "
                                 "%llu slowly (%u of %u messages queued); the rest follows as "
                                 "it takes them, and states made meanwhile are skipped (said "
                                 "once)", ent_link_address(c->standby),
                                 (unsigned long long)j->merged, j->next, j->count);
                j->slow = 1;
                c->standby_slow = 1;
                return ENT_OK;
            }
            if (!c->standby_failing)
                ent_log_warn("coordinator: the standby at %s does not take the state after round "
                             "%llu: %s (the rounds go on; it gets the next one when it can)",
                             ent_link_address(c->standby), (unsigned long long)j->merged,
                             ent_last_error());
            c->standby_failing = 1;
            stream_job_clear(j);
            return ENT_OK;
        }
        ent_link_buf_free(m);
        j->next++;
        j->hold = 0;
        c->standby_beat = ent_now_seconds();
    }
    if (j->next < j->count) return ENT_OK;
    if (j->skipped)
        ent_log_info("coordinator: the standby at %s has the state after round %llu (%llu "
                     "later state(s) skipped while it was on its way)", ent_link_address(c->standby),
                     (unsigned long long)j->merged, (unsigned long long)j->skipped);
    if (c->standby_failing)
        ent_log_info("coordinator: the standby at %s takes the state again (after round %llu)",
                     ent_link_address(c->standby), (unsigned long long)j->merged);
    c->standby_failing = 0;
    stream_job_clear(j);
    return ENT_OK;
}

// Serving until the stream's state before is sent (STATE vectors never
// interleave: the standby would drop both); one still held for its
// connection is dropped, the newer state goes in its place. It returns
// early when the standby takes it slowly (its queue is full): stream.sending
// then still says so.
static ent_status stream_wait(coord *c, uint64_t merged) {
    stream_job *j = &c->stream;
    while (j->running || (j->sending && !j->slow)) {
        if (stream_held(j)) {
            ent_log_warn("coordinator: the standby at %s was not connected before the state "
                         "after round %llu could go out: it gets the next one",
                         ent_link_address(c->standby), (unsigned long long)j->merged);
            stream_job_clear(j);
            break;
        }
        ENT_CHECK(serve_merged(c, merged));
    }
    return ENT_OK;
}

// A coordinator with a standby: the state after `merged` rounds to it,
// after every merge (and once as a continuing coordinator starts: the state
// it continues from). The text (roster and ledger) is made here; the copy
// of the state and its encoding run on the stream's thread, and the main
// loop sends the messages between its reads (stream_pump), after the state
// before.
static ent_status stream_state(coord *c, uint64_t merged) {
    if (c->standby == NULL) return ENT_OK;
    // the roster and ledger as of this merge, before waiting for the state
    // before to go out (the main loop records more meanwhile)
    double t0 = ent_now_seconds();
    int *order = calloc((size_t)c->nsites + 1, sizeof *order);
    char *ledger = order ? ledger_text(c, merged, order) : NULL;
    cJSON *root = cJSON_CreateObject(), *roster = cJSON_CreateArray();
    int ok = ledger != NULL && root != NULL && roster != NULL;
    if (ok) {
        cJSON_AddNumberToObject(root, "rounds_merged", (double)merged);
        cJSON_AddItemToObject(root, "roster", roster);
        roster = NULL;
        for (int j = 0; j < c->nsites && ok; j++) {
            const csite *s = &c->sites[order[j]];
            cJSON *o = cJSON_CreateObject();
            ok = o != NULL;
            if (!ok) break;
            cJSON_AddStringToObject(o, "site", s->name);
            cJSON_AddNumberToObject(o, "id", s->id);
            // the state a continuing coordinator streams at once, before
            // its empty round (run): the sites it awaits are in, as in the
            // roster it adopted (they try the next link if it dies), though
            // none may be back yet
            int in = active(s) || (c->resumed && merged == c->resume_round && s->awaited);
            cJSON_AddBoolToObject(o, "in", in);
            cJSON_AddItemToArray(cJSON_GetObjectItem(root, "roster"), o);
        }
        cJSON_AddStringToObject(root, "ledger", ledger);
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    cJSON_Delete(roster);
    free(ledger);
    free(order);
    if (text == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for the standby's state");
    double text_s = ent_now_seconds() - t0; // busy: no message read
    ent_status waited = stream_wait(c, merged);
    if (waited != ENT_OK) {
        free(text);
        return waited;
    }
    t0 = ent_now_seconds() - text_s;
    stream_job *j = &c->stream;
    if (j->sending) {
        // a slow standby still takes the state before: never queue more
        // behind it (the rounds would wait, or the queue grow without bound)
        j->skipped++;
        free(text);
        return ENT_OK;
    }
    j->merged = merged;
    j->anchor_hash = c->hist[merged];
    j->tokens = c->tokens_total;
    j->n = c->n;
    j->chunk_bytes = c->chunk_bytes;
    j->anchor = c->anchor;
    j->momentum = c->momentum;
    j->resid = c->resid;
    j->text = text;
    j->st = ENT_OK;
    j->hold = c->resumed && merged == c->resume_round;
    atomic_store(&j->stage, 0);
    if (pthread_create(&j->thread, NULL, stream_work, j) != 0) {
        stream_job_clear(j);
        return ent_fail(ENT_ERR_NOMEM, "coordinator: cannot start the thread that encodes the "
                        "state after %llu rounds for the standby", (unsigned long long)merged);
    }
    j->running = 1;
    heard_all(c, t0);
    return ENT_OK;
}

// A primary that ends, or a standby that ends without taking over: LEAVE
// tells its standby why (FINISHED: it exits 0; else it stops with it).
static void leave_standby(coord *c, uint16_t code, uint64_t round, const char *why) {
    if (c->standby == NULL) return;
    ent_link_reason r = {.code = code};
    snprintf(r.text, sizeof r.text, "%.900s", why);
    ent_link_buf msg = {0};
    if (ent_link_encode_leave(&msg, 0, round, &r) == ENT_OK)
        (void)ent_link_send(c->standby, NULL, msg.data, msg.len);
    ent_link_buf_free(&msg);
}

// A primary, between messages: a heartbeat to the standby every second (so
// that its silence means something), and the standby's answers: NOT_PRIMARY
// means it has taken over, and this coordinator stops.
static ent_status standby_poll(coord *c) {
    if (c->standby == NULL) return ENT_OK;
    if (ent_now_seconds() - c->standby_beat >= 1) {
        ent_link_heartbeat m = {.time_ns = (uint64_t)(ent_now_seconds() * 1e9)};
        ent_link_buf msg = {0};
        ent_status st = ent_link_encode_heartbeat(&msg, 0, c->round, &m);
        if (st == ENT_OK && ent_link_send(c->standby, NULL, msg.data, msg.len) == ENT_OK)
            c->standby_beat = ent_now_seconds();
        ent_link_buf_free(&msg);
        ENT_CHECK(st);
    }
    for (int k = 0; k < 64; k++) {
        ent_link_incoming in;
        int got = 0;
        ENT_CHECK(ent_link_recv(c->standby, 0, &in, &got));
        if (!got) break;
        ent_link_reason r;
        if (in.header.type != ENT_LINK_ERROR ||
            ent_link_decode_error(in.bytes, in.len, in.peer.name, NULL, &r) != ENT_OK)
            continue;
        if (r.code == ENT_LINK_ERR_NOT_PRIMARY) {
            c->superseded = 1;
            return ent_fail(ENT_ERR_IO, "coordinator: superseded: the standby at %s says: %s. "
                            "This coordinator stops (split brain is refused); the coalition "
                            "goes on at the standby", ent_link_address(c->standby), r.text);
        }
        ent_log_warn("coordinator: the standby at %s refused the stream (code %u): %s",
                     ent_link_address(c->standby), r.code, r.text);
    }
    return ENT_OK;
}

// A standby: is this message the primary's? On a CURVE link, its key's
// name says so (coalition.primary_key); on a plaintext one, a message
// without a site id (sites have theirs once welcomed) that is no HELLO.
static int from_primary(const coord *c, const ent_link_incoming *in) {
    if (!c->cfg->coal_standby_mode) return 0;
    if (c->lo.curve != NULL) return strcmp(in->peer.user, c->keys.primary.name) == 0;
    return in->header.site == 0 && in->header.type != ENT_LINK_HELLO;
}

// A standby: one STATE chunk; a vector whole becomes the state it would take over.
static void on_state(coord *c, const ent_link_incoming *in) {
    ent_link_chunk ch;
    ent_link_header hd;
    if (ent_link_decode_state(in->bytes, in->len, in->peer.name, &hd, &ch) != ENT_OK) {
        ent_log_warn("coordinator: standby: dropped a STATE chunk: %s", ent_last_error());
        return;
    }
    if (!c->st_in_started || hd.round != c->st_in_round || ch.index == 0) {
        uint64_t words = ch.total > 3 * c->n ? ch.total - 3 * c->n : 0;
        if (ch.codec != ENT_LINK_CODEC_F32 || words == 0 || words > STATE_TEXT_MAX / 4 ||
            hd.round >= c->rounds ||
            coal_vec_expect(&c->st_in, ENT_LINK_CODEC_F32, NULL, ch.total, c->chunk_bytes) != ENT_OK) {
            ent_log_warn("coordinator: standby: dropped the primary's state of round %llu: %llu "
                         "values in codec %u, expected 3 x %zu and a text", (unsigned long long)hd.round,
                         (unsigned long long)ch.total, ch.codec, c->n);
            c->st_in_started = 0;
            return;
        }
        c->st_in_started = 1;
        c->st_in_round = hd.round;
    }
    int done = 0;
    if (coal_vec_add(&c->st_in, &ch, "the primary's state", &done) != ENT_OK) {
        ent_log_warn("coordinator: standby: dropped the primary's state of round %llu: %s",
                     (unsigned long long)hd.round, ent_last_error());
        c->st_in_started = 0;
        coal_vec_free(&c->st_in);
        return;
    }
    if (!done) return;
    coal_vec_free(&c->st_done);
    c->st_done = c->st_in;
    memset(&c->st_in, 0, sizeof c->st_in);
    c->st_in_started = 0;
    if (!c->st_have)
        ent_log_info("coordinator: standby: the primary's state is streaming in (after %llu "
                     "rounds merged)", (unsigned long long)hd.round);
    c->st_have = 1;
    c->st_round = hd.round;
    c->st_done_at = ent_now_seconds();
}

// A standby takes the last whole state over (the primary is gone: why).
static ent_status take_over(coord *c, const char *why) {
    double t0 = ent_now_seconds();
    const coal_vec *v = &c->st_done;
    size_t words = v->total - 3 * c->n;
    float *buf = calloc(v->total, sizeof(float));
    if (buf == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for the primary's state");
    ent_status st = coal_vec_apply(v, 1.0f, buf);
    const char *text = (const char *)(buf + 3 * c->n);
    if (st == ENT_OK && strnlen(text, words * 4) == words * 4)
        st = ent_fail(ENT_ERR_INPUT, "the primary's state: its text is not terminated");
    if (st == ENT_OK) {
        memcpy(c->anchor, buf, sizeof(float) * c->n);
        memcpy(c->momentum, buf + c->n, sizeof(float) * c->n);
        memcpy(c->resid, buf + 2 * c->n, sizeof(float) * c->n);
        if (ent_anchor_hash(c->anchor, c->n) != v->anchor_hash)
            st = ent_fail(ENT_ERR_INPUT, "the primary's state: the anchor's hash is not the one "
                          "its chunks name");
    }
    cJSON *root = st == ENT_OK ? cJSON_Parse(text) : NULL;
    if (st == ENT_OK && root == NULL) st = ent_fail(ENT_ERR_INPUT, "the primary's state: not JSON");
    const cJSON *roster = cJSON_GetObjectItemCaseSensitive(root, "roster");
    const cJSON *ledger = cJSON_GetObjectItemCaseSensitive(root, "ledger");
    const cJSON *merged = cJSON_GetObjectItemCaseSensitive(root, "rounds_merged");
    int n = cJSON_GetArraySize(roster), in = 0;
    uint32_t *ids = calloc((size_t)n + 1, sizeof *ids);
    if (st == ENT_OK && (!cJSON_IsArray(roster) || !cJSON_IsString(ledger) ||
                         !cJSON_IsNumber(merged) || merged->valuedouble != (double)c->st_round ||
                         ids == NULL))
        st = ent_fail(ENT_ERR_INPUT, "the primary's state: no roster, ledger or round %llu",
                      (unsigned long long)c->st_round);
    for (int i = 0; st == ENT_OK && i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(roster, i);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 1 || id->valuedouble > 4096)
            st = ent_fail(ENT_ERR_INPUT, "the primary's state: roster entry %d has no id", i);
        else ids[i] = (uint32_t)id->valuedouble;
    }
    if (st == ENT_OK) st = adopt_state(c, c->st_round, "the primary's state", ledger->valuestring, ids);
    // the roster lists the ledger's sites in its order: which were in
    for (int i = 0; st == ENT_OK && i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(roster, i);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "site");
        if (i >= c->nsites || !cJSON_IsString(name) || strcmp(name->valuestring, c->sites[i].name) != 0)
            st = ent_fail(ENT_ERR_INPUT, "the primary's state: its roster and ledger differ");
        else c->sites[i].awaited = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "in"));
        if (st == ENT_OK) in += c->sites[i].awaited;
    }
    cJSON_Delete(root);
    free(ids);
    free(buf);
    if (st != ENT_OK) return ent_fail(st, "coordinator: standby: cannot take over: %s", ent_last_error());
    c->taken_over = 1;
    c->await = in;
    coal_vec_free(&c->st_done);
    double silent = t0 - c->primary_heard;
    ent_log_warn("coordinator: standby: the primary is gone (%s): taking over the coalition at "
                 "round %llu, from its state after %llu rounds merged (received %.1f s before); "
                 "waiting for the %d site(s) it had", why, (unsigned long long)c->round,
                 (unsigned long long)c->round, t0 - c->st_done_at, in);
    ent_json_field rec[] = {ENT_JSTR("event", "takeover"), ENT_JINT("round", c->round),
                            ENT_JSTR("reason", why), ENT_JNUM("silent_s", silent),
                            ENT_JNUM("state_age_s", t0 - c->st_done_at),
                            ENT_JNUM("takeover_s", ent_now_seconds() - t0),
                            ENT_JINT("sites_awaited", in),
                            ENT_JNUM("elapsed_s", ent_now_seconds() - c->t_start)};
    return record(c, rec, (int)(sizeof rec / sizeof rec[0]));
}

// A standby until it takes over: the primary's state streams in; a site
// that tries this endpoint is told that the primary serves (NOT_PRIMARY).
// *finished: the primary said it finished (LEAVE), nothing to take over.
//
// In a chain (primary -> standby 1 -> standby 2 ...), "the primary" is the
// coordinator that streams to this one (coalition.primary_key): standby 2's
// is standby 1, which streams nothing before it has taken over (it has no
// state of its own) but heartbeats every second from its start. Standby 2
// therefore never sees the first primary, nor its death: it takes over only
// once it holds a whole state, and it gets one only from a standby 1 that
// has taken over (the state it adopted, streamed at once: run). A streamer
// gone before any state came from it leaves this standby waiting (for
// coalition.timeout from then: a streamer restarted on its endpoint may
// come back).
static ent_status standby_wait(coord *c, int *finished) {
    const ent_config *cfg = c->cfg;
    *finished = 0;
    double until = ent_now_seconds() + cfg->coal_timeout;
    ent_json_field start[] = {ENT_JSTR("event", "standby"),
                              ENT_JSTR("endpoint", ent_link_address(c->ep)),
                              ENT_JNUM("takeover_after", cfg->coal_takeover_after)};
    ENT_CHECK(record(c, start, (int)(sizeof start / sizeof start[0])));
    for (;;) {
        // a chain's next link: heartbeats (it knows this standby is there);
        // its NOT_PRIMARY stops this one as superseded
        ENT_CHECK(standby_poll(c));
        ent_link_incoming in;
        int got = 0;
        ENT_CHECK(ent_link_recv(c->ep, 200, &in, &got));
        for (int more = 0; got && more < 1000; more++) {
            if (!from_primary(c, &in)) {
                (void)send_error(c, &in.peer, 0, ENT_LINK_ERR_NOT_PRIMARY, "this is the "
                                 "coalition's standby coordinator: the primary serves the "
                                 "sites until it is gone");
            } else {
                c->primary = in.peer;
                c->primary_known = 1;
                c->primary_heard = ent_now_seconds();
                if (in.header.type == ENT_LINK_STATE) {
                    on_state(c, &in);
                } else if (in.header.type == ENT_LINK_LEAVE) {
                    ent_link_reason r;
                    ENT_CHECK(ent_link_decode_leave(in.bytes, in.len, in.peer.name, NULL, &r));
                    if (r.code != ENT_LINK_LEAVE_FINISHED)
                        return ent_fail(ENT_ERR_IO, "coordinator: standby: the primary stopped "
                                        "(%s): the standby stops with it", r.text);
                    ent_log_info("coordinator: standby: the primary finished the coalition's "
                                 "rounds: nothing to take over");
                    *finished = 1;
                    return ENT_OK;
                }
            }
            ENT_CHECK(ent_link_recv(c->ep, 0, &in, &got));
        }
        char why[160] = "";
        int fds[16];
        for (int n = ent_link_take_disconnects(c->ep, fds, 16), j = 0; j < n; j++)
            if (c->primary_known && fds[j] == c->primary.fd && fds[j] >= 0)
                snprintf(why, sizeof why, "its connection closed");
        double now = ent_now_seconds();
        if (!why[0] && c->primary_known && now - c->primary_heard > cfg->coal_takeover_after)
            snprintf(why, sizeof why, "silent for %.1f s (coalition.takeover_after)",
                     now - c->primary_heard);
        if (why[0] && c->st_have) return take_over(c, why);
        if (why[0]) {
            ent_log_warn("coordinator: standby: the primary is gone (%s) before any state of it "
                         "came in: nothing to take over; waiting up to coalition.timeout = %g s "
                         "for a primary", why, cfg->coal_timeout);
            c->primary_known = 0;
            until = now + cfg->coal_timeout;
        }
        if (!c->primary_known && !c->st_have && now > until)
            return ent_fail(ENT_ERR_IO, "coordinator: standby: no word from the primary within "
                            "coalition.timeout = %g s (is it started with coalition.standby = "
                            "%s, and its key coalition.primary_key?)", cfg->coal_timeout,
                            ent_link_address(c->ep));
    }
}

// ---------------------------------------------------------------------------
// set-up

static ent_status open_run_dir(coord *c) {
    char path[ENT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", c->run_dir);
    struct stat sb;
    if (!c->opts->force && !c->opts->continues && stat(path, &sb) == 0)
        return ent_fail(ENT_ERR_USAGE, "%s holds another run (its metrics.jsonl): continue it "
                        "with --resume auto, give another --run-dir, or --force to start over "
                        "in it", c->run_dir);
    ENT_CHECK(ent_mkdirs(c->run_dir));
    snprintf(path, sizeof path, "%s/config.ini", c->run_dir);
    char *text = ent_config_text(c->cfg, NULL);
    if (text == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    ent_status st = ent_write_file_atomic(path, text, strlen(text));
    free(text);
    ENT_CHECK(st);
    snprintf(path, sizeof path, "%s/metrics.jsonl", c->run_dir);
    // a coordinator that continues appends to its log
    c->metrics = fopen(path, c->opts->continues ? "a" : "w");
    if (c->metrics == NULL) return ent_fail(ENT_ERR_IO, "cannot create %s", path);
    return ENT_OK;
}

static ent_status coord_setup(coord *c) {
    const ent_config *cfg = c->cfg;
    ENT_CHECK(ent_codec_parse(cfg->coal_codec, &c->codec));
    c->outer = (ent_outer_opt){.lr = (float)cfg->coal_outer_lr,
                               .momentum = (float)cfg->coal_outer_momentum};
    c->rounds = (uint64_t)cfg->coal_rounds;
    c->chunk_bytes = 4u << 20;
    // A test hook: ENTENTE_FAULT_CHUNK_BYTES = B cuts every vector (anchor,
    // updates, the standby's state) into chunks of B bytes, so that a small
    // model's state takes more messages than a queue holds
    double chunk;
    ENT_CHECK(coal_fault_number("ENTENTE_FAULT_CHUNK_BYTES", 256, c->chunk_bytes, 1, &chunk));
    if (chunk > 0) {
        c->chunk_bytes = (uint32_t)chunk;
        ent_log_warn("coordinator: ENTENTE_FAULT_CHUNK_BYTES=%u: vectors go in chunks of that "
                     "many bytes (a test hook)", c->chunk_bytes);
    }
    c->cap = cfg->coal_max_sites > cfg->coal_sites ? cfg->coal_max_sites : cfg->coal_sites;
    c->sites = calloc((size_t)c->cap, sizeof *c->sites);
    c->hist = calloc(c->rounds + 1, sizeof *c->hist);
    if (c->sites == NULL || c->hist == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    // the anchor: the model a run of this configuration starts from
    c->micro = cfg->micro_batch > 0 ? cfg->micro_batch : cfg->batch_size;
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    ENT_CHECK(ent_backend_new("cpu", NULL, &c->be));
    ENT_CHECK(ent_model_new(c->be, &shape, NULL, c->micro, cfg->context, &c->model));
    ENT_CHECK(ent_model_init(c->model, cfg->seed));
    c->table = ent_model_table(c->model);
    ENT_CHECK(coal_layout_new(c->table, &c->lay));
    c->n = c->lay.n;
    ENT_CHECK(coal_alloc_floats(&c->anchor, c->n, "the anchor"));
    ENT_CHECK(coal_alloc_floats(&c->momentum, c->n, "the outer momentum"));
    ENT_CHECK(coal_alloc_floats(&c->resid, c->n, "the residual"));
    ENT_CHECK(coal_alloc_floats(&c->g, c->n, "the merge"));
    ENT_CHECK(coal_alloc_floats(&c->anchor_next, c->n, "the anchor a merge makes"));
    ENT_CHECK(coal_fault_number("ENTENTE_FAULT_MERGE_S", 0, 600, 0, &c->fault_merge_s));
    if (c->fault_merge_s > 0)
        ent_log_warn("coordinator: ENTENTE_FAULT_MERGE_S=%g: every merge lasts at least that "
                     "many seconds on purpose (a test hook)", c->fault_merge_s);
    ENT_CHECK(save_setup(c));
    ENT_CHECK(coal_alloc_floats(&c->ck_mom, c->table->total, "the checkpoint's momentum"));
    ENT_CHECK(coal_alloc_floats(&c->ck_resid, c->table->total, "the checkpoint's residual"));
    coal_arena_to_global(&c->lay, 0, ent_model_arena(c->model, ENT_ARENA_PARAMS), c->anchor);
    c->hist[0] = ent_anchor_hash(c->anchor, c->n);
    // the coalition's validation set: data.dir's validation shards, if any
    char **vals = NULL;
    int nval = ent_glob_shards(cfg->data_dir, cfg->val_pattern, &vals);
    ent_free_paths(vals, nval > 0 ? nval : 0);
    if (nval > 0) {
        ENT_CHECK(ent_dataset_open(cfg->data_dir, cfg->val_pattern, cfg->vocab, cfg->context,
                                   &c->val));
        c->inputs = malloc(sizeof(int32_t) * (size_t)c->micro * (size_t)cfg->context);
        c->targets = malloc(sizeof(int32_t) * (size_t)c->micro * (size_t)cfg->context);
        if (c->inputs == NULL || c->targets == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    } else {
        ent_log_notice("coordinator: no validation shards match %s/%s: the anchor is not "
                       "evaluated", cfg->data_dir, cfg->val_pattern);
    }
    // checkpoints of the anchor
    ENT_CHECK(ent_grid_new_self(&c->grid));
    ent_checkpoint_dir(cfg, c->run_dir, c->ckpt_dir, sizeof c->ckpt_dir);
    ent_ckpt_saver_opts so = {.dir = c->ckpt_dir, .keep = 0, .async = 0,
                              .adopt = c->opts->resume != NULL};
    ENT_CHECK(ent_ckpt_saver_new(c->grid->world, &so, &c->saver));
    float *p = ent_model_arena(c->model, ENT_ARENA_PARAMS);
    ent_ckpt_coalition co = {.anchor = p, .outer_momentum = c->ck_mom, .residual = c->ck_resid};
    ent_ckpt_shard sh = {.table = c->table, .tp_size = 1, .params = p,
                         .write_count = c->table->total, .coalition = &co};
    ENT_CHECK(ent_ckpt_saver_check(c->saver, &sh));
    if (c->opts->resume != NULL) ENT_CHECK(load_checkpoint(c, c->opts->resume));
    // the run directory's files change only once the checkpoint is taken
    ENT_CHECK(open_run_dir(c));
    // the link
    const char *bind = cfg->coal_bind[0] ? cfg->coal_bind : cfg->coal_coordinator;
    if (bind[0] == '\0')
        return ent_fail(ENT_ERR_USAGE, "%s: neither coalition.bind nor coalition.coordinator is "
                        "set: give the endpoint to listen on (tcp://0.0.0.0:5555)",
                        cfg->path[0] ? cfg->path : "configuration");
    c->lo = ent_link_opts_default();
    ENT_CHECK(coal_keys_load(cfg, 1, &c->keys, &c->lo));
    // A test hook: ENTENTE_FAULT_SITE_QUEUE = N lets ZeroMQ queue only N
    // messages per site (ZMQ_SNDHWM), in kernel send buffers of 16 KiB, so
    // that a small model's vectors (in small chunks: ENTENTE_FAULT_CHUNK_BYTES)
    // fill a slow site's queue as a large model's fill ZeroMQ's 1000
    double sq;
    ENT_CHECK(coal_fault_number("ENTENTE_FAULT_SITE_QUEUE", 1, 1000, 1, &sq));
    if (sq > 0) {
        c->lo.send_queue = (int)sq;
        c->lo.send_buffer = 16 << 10;
        ent_log_warn("coordinator: ENTENTE_FAULT_SITE_QUEUE=%d: ZeroMQ queues that many "
                     "message(s) per site, in 16 KiB send buffers (a test hook)", c->lo.send_queue);
    }
    ENT_CHECK(ent_link_router_bind(bind, &c->lo, &c->ep));
    if (cfg->coal_standby[0] != '\0') {
        // the state stream: never waits (a standby that is not there costs
        // nothing). A standby with a standby of its own (a chain) connects
        // now too: it heartbeats while it waits, so that the next link knows
        // it is there, and streams once it has taken over
        ent_link_opts so = ent_link_opts_default();
        so.send_timeout_ms = 0;
        // A test hook: ENTENTE_FAULT_STANDBY_QUEUE = N messages queued for
        // the standby at most (ZeroMQ's 1000 by default), so that a small
        // model's state meets a full queue, as a large one does
        double q;
        ENT_CHECK(coal_fault_number("ENTENTE_FAULT_STANDBY_QUEUE", 1, 1000000, 1, &q));
        if (q > 0) {
            so.send_queue = (int)q;
            ent_log_warn("coordinator: ENTENTE_FAULT_STANDBY_QUEUE=%d: at most that many messages "
                         "queued for the standby (a test hook)", so.send_queue);
        }
        if (c->lo.curve != NULL) {
            so.curve = c->lo.curve;
            so.server_key = c->keys.standby.public_key;
        }
        ENT_CHECK(ent_link_dealer_connect(cfg->coal_standby, &so, &c->standby));
    }
    char path[ENT_PATH_MAX + 32], line[300];
    snprintf(path, sizeof path, "%s/endpoint", c->run_dir);
    int len = snprintf(line, sizeof line, "%s\n", ent_link_address(c->ep));
    ENT_CHECK(ent_write_file_atomic(path, line, (size_t)len));
    return ENT_OK;
}

static void coord_free(coord *c) {
    // a save in flight is finished (a checkpoint of an earlier round), the
    // stream's encoding ends; its messages are dropped
    if (c->save.running) {
        pthread_join(c->save.thread, NULL);
        if (c->save.st == ENT_OK)
            ent_log_info("coordinator: saved the anchor after %llu rounds: %s/%s",
                         (unsigned long long)c->save.round, c->ckpt_dir, c->save.name);
        else
            ent_log_warn("coordinator: the checkpoint after %llu rounds (%s/%s) was not saved: %s",
                         (unsigned long long)c->save.round, c->ckpt_dir, c->save.name,
                         c->save.err);
    }
    save_job_clear(&c->save);
    if (c->stream.running) pthread_join(c->stream.thread, NULL);
    stream_job_clear(&c->stream);
    free(c->ck_params);
    ent_link_close(&c->standby);
    coal_vec_free(&c->st_in);
    coal_vec_free(&c->st_done);
    if (c->saver) ent_ckpt_saver_free(&c->saver);
    if (c->grid) ent_grid_free(&c->grid);
    ent_link_close(&c->ep);
    coal_keys_free(&c->keys);
    shared_drop(c->anchor_sv);
    c->anchor_sv = NULL;
    for (int i = 0; c->sites && i < c->cap; i++) {
        queue_clear(&c->sites[i]);
        coal_vec_free(&c->sites[i].delta[0]);
        coal_vec_free(&c->sites[i].delta[1]);
    }
    free(c->sites);
    free(c->hist);
    free(c->anchor);
    free(c->momentum);
    free(c->resid);
    free(c->g);
    free(c->anchor_next);
    for (int i = 0; i < c->ndec; i++) free(c->dec[i]);
    free(c->dec);
    free(c->ck_mom);
    free(c->ck_resid);
    free(c->inputs);
    free(c->targets);
    ent_dataset_close(&c->val);
    coal_layout_free(&c->lay);
    ent_model_free(&c->model);
    ent_backend_free(&c->be);
    if (c->metrics) fclose(c->metrics);
}

static ent_status start_rounds(coord *c);
static ent_status await_rejoins(coord *c);
static ent_status finish(coord *c);

static ent_status run(coord *c) {
    const ent_config *cfg = c->cfg;
    if (cfg->coal_standby_mode)
        ent_log_info("coordinator: standby on %s: takes the primary's state%s%s%s and the "
                     "coalition if the primary is gone (its connection closed, or silent for "
                     "coalition.takeover_after = %g s)%s%s", ent_link_address(c->ep),
                     c->lo.curve ? " (key " : "", c->lo.curve ? c->keys.primary.name : "",
                     c->lo.curve ? ")" : "", cfg->coal_takeover_after,
                     c->standby ? "; once it has taken over, streams its state to the standby "
                                  "at " : "",
                     c->standby ? ent_link_address(c->standby) : "");
    else if (c->standby != NULL)
        ent_log_info("coordinator: streams its state to the standby at %s after every merge",
                     ent_link_address(c->standby));
    ent_log_info("coordinator: listening on %s for %d site(s); %llu rounds of %d inner steps%s, "
                 "codec %s, outer lr %g, momentum %g; %zu parameters", ent_link_address(c->ep),
                 cfg->coal_sites, (unsigned long long)c->rounds, cfg->coal_inner_steps,
                 cfg->coal_round_seconds > 0 ? " at most (planned from each site's speed)" : "",
                 cfg->coal_codec, cfg->coal_outer_lr, cfg->coal_outer_momentum, c->n);
    c->t_start = ent_now_seconds();
    if (c->resumed) {
        // where the appended log's second life starts (the ledger's sums
        // skip the first life's records after the checkpoint: docs/coalition.md)
        ent_json_field rec[] = {ENT_JSTR("event", "restart"), ENT_JINT("round", c->round),
                                ENT_JSTR("from", c->resumed_from)};
        ENT_CHECK(record(c, rec, (int)(sizeof rec / sizeof rec[0])));
    }
    if (cfg->coal_standby_mode) {
        int finished = 0;
        ENT_CHECK(standby_wait(c, &finished));
        if (finished) {
            // down a chain: the next standby has nothing to take over either
            leave_standby(c, ENT_LINK_LEAVE_FINISHED, c->rounds, "the primary finished the "
                          "coalition's rounds");
            return ENT_OK;
        }
    }
    if (c->resumed) {
        // the state it continues from goes to its standby at once, while it
        // waits for the sites: a standby that took over (or a restarted
        // coordinator) that dies before its first merge leaves the next
        // link that state to take over, not nothing
        ENT_CHECK(stream_state(c, c->round));
        ENT_CHECK(await_rejoins(c));
    } else {
        ENT_CHECK(start_rounds(c));
    }
    if (!c->resumed) ENT_CHECK(stream_state(c, 0));
    c->poll_last = ent_now_seconds(); // the longest pause is counted from here
    for (; c->round < c->rounds; c->round++) {
        while (!round_complete(c)) {
            ENT_CHECK(poll_once(c, 200));
            // round 1's plan: a site that has shown no speed yet by its delta gets the cap
            for (int i = 0; c->round == 0 && c->rounds > 1 && i < c->nsites; i++) {
                csite *s = &c->sites[i];
                if (!plan_sent(s, 1) && s->delta_used[0] &&
                    s->delta[0].received == s->delta[0].count)
                    ENT_CHECK(send_plan(c, s, 1));
            }
        }
        ENT_CHECK(merge_round(c));
        // both go on on threads of their own while the main loop serves
        ENT_CHECK(stream_state(c, c->round + 1));
        if (cfg->ckpt_every > 0 && (c->round + 1) % (uint64_t)cfg->ckpt_every == 0 &&
            c->round + 1 < c->rounds)
            ENT_CHECK(save_start(c, c->round + 1));
    }
    return finish(c);
}

// Round 0: coalition.sites sites join within coalition.timeout; the start
// anchor is evaluated and recorded, and rounds 0 and 1 planned.
static ent_status start_rounds(coord *c) {
    const ent_config *cfg = c->cfg;
    double until = ent_now_seconds() + cfg->coal_timeout;
    while (active_count(c) < cfg->coal_sites) {
        if (ent_now_seconds() > until)
            return ent_fail(ENT_ERR_IO, "coordinator: %d of %d sites joined within "
                            "coalition.timeout = %g s", active_count(c), cfg->coal_sites,
                            cfg->coal_timeout);
        ENT_CHECK(poll_once(c, 500));
    }
    double val = NAN;
    ENT_CHECK(eval_anchor(c, c->anchor, &val));
    char hash[17];
    coal_hash_hex(c->hist[0], hash);
    ent_json_field start[] = {ENT_JSTR("event", "start"), ENT_JINT("sites", c->nsites),
                              ENT_JINT("rounds", c->rounds), ENT_JINT("parameters", c->n),
                              ENT_JSTR("codec", cfg->coal_codec), ENT_JSTR("anchor_hash", hash),
                              ENT_JNUM("val_loss", val)};
    ENT_CHECK(record(c, start, (int)(sizeof start / sizeof start[0])));
    // rounds 0 and 1 are planned before any speed is known, unless a fixed
    // number of inner steps needs no measure; later rounds at each merge
    c->started = 1;
    c->round_began = ent_now_seconds();
    for (int i = 0; i < c->nsites; i++) {
        csite *s = &c->sites[i];
        if (!active(s)) continue;
        ent_status st = send_plan(c, s, 0);
        if (st == ENT_OK && c->rounds > 1 && cfg->coal_round_seconds <= 0) st = send_plan(c, s, 1);
        ENT_CHECK(lost_on_failure(c, s, st));
    }
    c->round = 0;
    return ENT_OK;
}

// The last round is merged: every site says it is done, the anchor is saved.
static ent_status finish(coord *c) {
    const ent_config *cfg = c->cfg;
    // the last state goes out before the LEAVE (a slow standby: for up to
    // coalition.timeout)
    ENT_CHECK(stream_wait(c, c->rounds));
    for (double until = ent_now_seconds() + cfg->coal_timeout;
         c->stream.sending && ent_now_seconds() < until;)
        ENT_CHECK(serve_merged(c, c->rounds));
    if (c->stream.sending)
        ent_log_warn("coordinator: the standby at %s did not take the last state within "
                     "coalition.timeout = %g s", ent_link_address(c->standby), cfg->coal_timeout);
    // the standby stops: there is nothing left to take over
    char done[64];
    snprintf(done, sizeof done, "the coalition's %llu rounds are merged",
             (unsigned long long)c->rounds);
    leave_standby(c, ENT_LINK_LEAVE_FINISHED, c->rounds, done);
    char hash[17];
    // every site says it is done once it has the last update
    double until = ent_now_seconds() + cfg->coal_timeout;
    for (;;) {
        int waiting = active_count(c);
        if (waiting == 0) break;
        if (ent_now_seconds() > until) {
            ent_log_warn("coordinator: %d of %d sites did not say they finished within "
                         "coalition.timeout", waiting, c->nsites);
            break;
        }
        ENT_CHECK(poll_once(c, 200));
    }
    // the last checkpoint, written before the coordinator ends
    ENT_CHECK(save_start(c, c->rounds));
    ENT_CHECK(save_wait(c, c->rounds));
    coal_hash_hex(c->hist[c->rounds], hash);
    ent_log_info("coordinator: the main loop went at most %.3f s without reading its socket",
                 c->pause_max);
    ent_json_field end[] = {ENT_JSTR("event", "end"), ENT_JINT("rounds", c->rounds),
                            ENT_JINT("tokens_total", c->tokens_total),
                            ENT_JSTR("anchor_hash", hash),
                            ENT_JNUM("longest_pause_s", c->pause_max),
                            ENT_JNUM("elapsed_s", ent_now_seconds() - c->t_start)};
    ENT_CHECK(record(c, end, (int)(sizeof end / sizeof end[0])));
    ent_log_info("coordinator: done: %llu rounds, %llu tokens merged in %.1f s; anchor %s",
                 (unsigned long long)c->rounds, (unsigned long long)c->tokens_total,
                 ent_now_seconds() - c->t_start, hash);
    return ENT_OK;
}

ent_status ent_coordinator_run(const ent_config *cfg, const ent_train_opts *opts) {
    coord c = {.cfg = cfg, .opts = opts, .run_dir = opts->run_dir};
    ent_status st = coord_setup(&c);
    if (st == ENT_OK) st = run(&c);
    if (st != ENT_OK && c.ep != NULL) {
        // tell every site why, so none waits for its timeout
        char why[ENT_LINK_TEXT_MAX + 1];
        snprintf(why, sizeof why, "%s", ent_last_error());
        // A checkpoint this coordinator cannot write (its disk full, its
        // directory gone) is its own failure, not the coalition's: with a
        // standby, the state after the last merge goes out to it, and the
        // sites and the standby are handed over (the standby takes over as
        // this process's connection closes)
        int hand_over = !c.superseded && c.save_failed && c.standby != NULL && c.started &&
                        (!c.cfg->coal_standby_mode || c.taken_over);
        if (hand_over) {
            for (double until = ent_now_seconds() + 5;
                 (c.stream.running || c.stream.sending) && ent_now_seconds() < until;)
                if (stream_pump(&c) != ENT_OK || poll_once(&c, 10) != ENT_OK) break;
            ent_log_warn("coordinator: handing the coalition over to the standby at %s: the "
                         "sites are told to go there", ent_link_address(c.standby));
        }
        // superseded by the standby, or handed over to it: the sites go
        // there (NOT_PRIMARY); any other failure ends them, and the standby
        // with them (LEAVE)
        for (int i = 0; i < c.nsites; i++)
            if (active(&c.sites[i]))
                (void)send_error(&c, &c.sites[i].peer, c.sites[i].id,
                                 c.superseded || hand_over ? ENT_LINK_ERR_NOT_PRIMARY
                                                           : ENT_LINK_ERR_INTERNAL,
                                 "the coordinator stopped: %s", why);
        if (!c.superseded && !hand_over) leave_standby(&c, ENT_LINK_LEAVE_FAILED, c.round, why);
        // A site reads the ERROR only when it next waits for a message, and a
        // DEALER drops what it has not read once the connection closes: stay
        // until each site has answered (its LEAVE) or gone, for up to 10 s.
        double until = ent_now_seconds() + 10;
        while (active_count(&c) > 0 && ent_now_seconds() < until) {
            ent_link_incoming in;
            int got = 0, fds[16];
            if (ent_link_recv(c.ep, 200, &in, &got) != ENT_OK) break;
            for (int i = 0; got && i < c.nsites; i++)
                if (in.header.type == ENT_LINK_LEAVE && in.header.site == c.sites[i].id)
                    c.sites[i].left = 1;
            for (int n = ent_link_take_disconnects(c.ep, fds, 16), j = 0; j < n; j++)
                for (int i = 0; i < c.nsites; i++)
                    if (c.sites[i].peer.fd == fds[j]) c.sites[i].lost = 1;
        }
        st = ent_fail(st, "%s", why);
    }
    coord_free(&c);
    return st;
}
