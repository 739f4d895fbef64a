// site.c: a site of a coalition: `entente train` with a [coalition] section.
//
// The trainer object runs the inner steps; this file runs the rounds around
// it (docs/coalition.md, "Rounds"):
//
//   join     the leader (world rank 0) sends HELLO, gets WELCOME (its id and
//            its first round J: 0, or the round after the one being merged
//            when it joins a running coalition) and the anchor theta_anchor
//            (f32 UPDATE chunks); every rank starts from it.
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
// Cut off (docs/coalition.md, "Joins, rejoins and cut-off sites"): when the
// coordinator is silent for coalition.lost_after while the site waits for
// it, a send fails, or the coordinator no longer counts the site (ERROR 4 or
// 5), the leader closes its connection and the site trains on alone, in
// rounds of its last plan, while the leader tries a new connection (with
// backoff) between inner steps. Once welcomed back (at round J, with the
// current anchor), every rank rebases: the progress made since its last
// delta was sent rides on the new anchor into round J's delta when the
// anchor it started from is at most coalition.max_staleness rounds old, and
// is dropped otherwise.
//
// Only the leader talks to the coordinator; the other ranks get plans,
// updates, the ledger (LEDGER, checked as `entente ledger` checks it, for
// the site's checkpoints) and the link's state over the site's own
// collectives. Every rank
// holds the anchor (and the error-feedback residual) in the global layout and
// encodes the same bytes, so every rank's anchor is bit-identical to the
// coordinator's.
#include "coalition_impl.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PLAN_SLOTS 4
#define BACKOFF_MAX_S 30.0 // the longest wait between two tries to reconnect
// With several coordinator endpoints (a primary and its standby), a try at
// one that takes no connection (TCP and the CurveZMQ handshake: a few round
// trips) in this long moves on to the next: the dead one is skipped fast.
#define NO_CONNECTION_MS 2000
// A standby takes over a fraction of a second after its primary's
// connection closes; a site that saw that connection close first and asked
// the standby too early (NOT_PRIMARY) asks it again after STANDBY_RETRY_S,
// for STANDBY_GRACE_S after the cut, before it moves on to the next endpoint.
#define STANDBY_RETRY_S 0.25
#define STANDBY_GRACE_S 3.0

// The leader's link, as the site goes from member to cut off and back.
typedef enum {
    LINK_ONLINE,  // a member: plans, deltas and updates flow
    LINK_OFFLINE, // cut off: no connection; the next try at next_try
    LINK_HELLO,   // a new connection: HELLO going out, WELCOME awaited
    LINK_ANCHOR,  // welcomed: the anchor's chunks coming in
    LINK_READY,   // the anchor is in: every rank rebases at the next step
    LINK_ALONE,   // the coalition ended without this site: it trains to its end alone
} link_state;

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
    uint64_t anchor_round;       // anchor = the coordinator's after this many rounds' updates
    // start - theta is the progress not yet sent: made since step start_step,
    // from an anchor of base_round, plus carried_tokens' worth carried over
    // a rejoin (docs/coalition.md, the staleness rule)
    uint64_t base_round, carried_tokens;
    int64_t start_step;
    ent_ckpt_coalition ck;
    ent_codec codec;
    int online; // every rank: the state the leader last shared (1: a member)
    double step_floor; // ENTENTE_FAULT_STEP_S: an inner step lasts at least this (0: off)
    // the link (leader only)
    ent_link_endpoint_t *ep;
    ent_link_opts lo; // its options, pointing into keys
    coal_keys keys;
    char endpoint[256];   // the coordinator endpoint in use (eps[cur])
    char eps[ENT_COAL_ENDPOINTS_MAX][256]; // coalition.coordinator: a primary, its standby, ...
    int nep, cur;
    // with several endpoints: RUN_DIR/coordinator_endpoint, the one that
    // last welcomed this site (a restart with --resume tries it first)
    char ep_file[ENT_PATH_MAX + 32];
    link_state state;
    char cut_why[600];     // why the link is found broken ("" while it works)
    uint16_t cut_code;     // the ERROR code that broke it (0: none)
    int cut_closed;        // it broke because the coordinator's connection closed
    double standby_until;  // until then, a NOT_PRIMARY answer is asked again (STANDBY_GRACE_S)
    double last_heard;     // when the coordinator last sent anything
    double next_try, try_since, backoff, t_hello, t_anchor, t_cut;
    int64_t cut_step;
    int hello_sent;
    ent_link_welcome welcome;
    uint32_t site_id, chunk_bytes, heartbeat_ms;
    uint64_t first_round; // the round this site's (last) WELCOME named
    double last_heartbeat;
    uint64_t plan_round[PLAN_SLOTS];
    uint32_t plan_steps[PLAN_SLOTS];
    int plan_have[PLAN_SLOTS];
    uint32_t last_steps;   // the last plan's steps: the length of a round trained alone
    coal_vec update;       // the update being received (or the anchor, when joining)
    uint64_t update_round; // the round it belongs to
    int update_started;
    ent_link_stats marked; // link counters at the last round record
    int64_t printed_step;  // the step of the last round line printed
    uint64_t hb_round;     // the round and steps of the last heartbeat sent
    uint32_t hb_steps;
    // the coalition's ledger: the last LEDGER the leader received and
    // checked (NULL: none yet), and every rank's copy that checkpoints write
    char *ledger_in, *ledger_ck;
    uint64_t ledger_round; // its rounds merged
} site;

static ent_status site_fail(site *s, ent_status st, const char *what) {
    return ent_fail(st, "site %s, coordinator %s: %s: %s", s->cfg->coal_site, s->endpoint, what,
                    ent_last_error());
}

// ---------------------------------------------------------------------------
// the leader's side of the link

// The link is broken (the first reason found is the one told).
static void link_broken(site *s, uint16_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void link_broken(site *s, uint16_t code, const char *fmt, ...) {
    if (s->cut_why[0] != '\0') return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->cut_why, sizeof s->cut_why, fmt, ap);
    va_end(ap);
    s->cut_code = code;
}

static void coordinator_closed(site *s);

// A send; one that fails breaks the link instead of the run. A connection
// seen closed is not sent on (the send would wait for its timeout).
static void send_or_break(site *s, ent_link_buf *msg, ent_status st, const char *what) {
    if (s->ep != NULL) coordinator_closed(s);
    if (s->cut_why[0] != '\0') {
        ent_link_buf_free(msg);
        return;
    }
    if (st == ENT_OK && s->ep != NULL) st = ent_link_send(s->ep, NULL, msg->data, msg->len);
    ent_link_buf_free(msg);
    if (st != ENT_OK) link_broken(s, 0, "sending %s: %s", what, ent_last_error());
}

// A LEDGER: its text is kept for the site's checkpoints once it parses as
// a ledger (coal_ledger_parse, as `entente ledger` checks it) of the rounds
// its header names; one that does not is logged and dropped, the last good
// one kept: the text from the wire is never trusted, and never ends the
// site. (A restarted coordinator's ledger may count fewer rounds than the
// one held: it is the coalition's now, as its anchor is.)
static void take_ledger(site *s, const ent_link_incoming *in) {
    ent_link_ledger m;
    ent_link_header h;
    char from[sizeof in->peer.name + 40];
    snprintf(from, sizeof from, "the LEDGER from %s", in->peer.name);
    if (ent_link_decode_ledger(in->bytes, in->len, in->peer.name, &h, &m) != ENT_OK) {
        ent_log_warn("site %s: dropped a LEDGER (it keeps its last good one): %s",
                     s->cfg->coal_site, ent_last_error());
        return;
    }
    char *text = malloc(m.len + 1);
    if (text == NULL) {
        ent_log_warn("site %s: dropped a LEDGER (it keeps its last good one): %s: out of memory "
                     "for %zu bytes", s->cfg->coal_site, from, m.len);
        return;
    }
    memcpy(text, m.text, m.len);
    text[m.len] = '\0';
    coal_ledger_site *sites = NULL;
    int n = 0;
    uint64_t merged = 0;
    if (coal_ledger_parse(from, text, &sites, &n, &merged) != ENT_OK || merged != h.round) {
        if (sites != NULL)
            ent_fail(ENT_ERR_INPUT, "%s: its ledger counts %llu rounds merged, its header %llu",
                     from, (unsigned long long)merged, (unsigned long long)h.round);
        ent_log_warn("site %s: dropped a LEDGER (it keeps its last good one): %s",
                     s->cfg->coal_site, ent_last_error());
        free(sites);
        free(text);
        return;
    }
    free(sites);
    free(s->ledger_in);
    s->ledger_in = text;
    s->ledger_round = merged;
}

// Handles one message: plans and update chunks are kept, heartbeats are
// signs of life; an ERROR saying the coordinator no longer counts this site
// (4 unknown site, 5 stale round), already has a connection under its name
// (6) or does not serve the coalition (9: a standby, or a primary its
// standby superseded) breaks the link, any other ERROR ends the site;
// anything else is dropped with a warning.
static ent_status handle(site *s, const ent_link_incoming *in) {
    const char *peer = in->peer.name;
    s->last_heard = ent_now_seconds();
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
        if (r.code == ENT_LINK_ERR_UNKNOWN_SITE || r.code == ENT_LINK_ERR_STALE_ROUND ||
            r.code == ENT_LINK_ERR_DUPLICATE_SITE || r.code == ENT_LINK_ERR_NOT_PRIMARY) {
            link_broken(s, r.code, "the coordinator answered code %u: %s", r.code, r.text);
            return ENT_OK;
        }
        return ent_fail(ENT_ERR_INPUT, "%s refused this site (code %u): %s", peer, r.code, r.text);
    }
    case ENT_LINK_HEARTBEAT: return ENT_OK;
    case ENT_LINK_LEDGER: take_ledger(s, in); return ENT_OK;
    default:
        ent_log_warn("site %s: dropped a %s from %s: not expected by a site", s->cfg->coal_site,
                     ent_link_type_name(in->header.type), peer);
        return ENT_OK;
    }
}

// A member's connection closed: the coordinator's process ended (a kill, a
// crash, or it stopped). A coordinator started again on the endpoint would
// not know this site: it is cut off at once, and comes back with HELLO.
static void coordinator_closed(site *s) {
    int fds[4];
    if (s->ep != NULL && ent_link_take_disconnects(s->ep, fds, 4) > 0 && s->cut_why[0] == '\0') {
        link_broken(s, 0, "the coordinator's connection closed (its process ended, or its "
                    "host dropped the link)");
        s->cut_closed = 1;
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

static void send_heartbeat(site *s, uint64_t round, uint32_t steps, double tokens_per_s);

// Receives until done(s, arg), or until the link breaks: the coordinator
// silent for coalition.lost_after (it answers every heartbeat, which goes out
// every heartbeat interval meanwhile), nothing awaited within
// coalition.timeout, a failed send, or an ERROR that says so (s->cut_why
// set; the caller goes on alone). Other failures are errors.
static ent_status wait_for(site *s, wait_done_fn done, uint64_t arg, const char *what) {
    double until = ent_now_seconds() + s->cfg->coal_timeout;
    while (!done(s, arg) && s->cut_why[0] == '\0') {
        double now = ent_now_seconds();
        if (s->site_id != 0 && s->heartbeat_ms > 0 &&
            (now - s->last_heartbeat) * 1e3 >= s->heartbeat_ms)
            send_heartbeat(s, s->hb_round, s->hb_steps, 0);
        if (now - s->last_heard > s->cfg->coal_lost_after) {
            link_broken(s, 0, "no word from the coordinator for %.0f s while waiting for %s "
                        "(coalition.lost_after)", now - s->last_heard, what);
            break;
        }
        if (now > until) {
            link_broken(s, 0, "no %s within coalition.timeout = %g s", what,
                        s->cfg->coal_timeout);
            break;
        }
        ent_link_incoming in;
        int got = 0;
        ENT_CHECK(ent_link_recv(s->ep, 200, &in, &got));
        if (got) ENT_CHECK(handle(s, &in));
        else coordinator_closed(s);
    }
    return ENT_OK;
}

static ent_status start_update(site *s, uint64_t round, uint16_t codec) {
    s->update_round = round;
    s->update_started = 1;
    return coal_vec_expect(&s->update, codec, &s->codec, s->n, s->chunk_bytes);
}

static void send_heartbeat(site *s, uint64_t round, uint32_t steps, double tokens_per_s) {
    ent_link_heartbeat m = {.time_ns = (uint64_t)(ent_now_seconds() * 1e9), .steps_done = steps,
                            .tokens_per_s = isfinite(tokens_per_s) && tokens_per_s >= 0
                                                ? tokens_per_s : 0};
    s->hb_round = round; // what a heartbeat while waiting repeats
    s->hb_steps = steps;
    ent_link_buf msg = {0};
    send_or_break(s, &msg, ent_link_encode_heartbeat(&msg, s->site_id, round, &m), "a heartbeat");
    s->last_heartbeat = ent_now_seconds();
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

// Tokens of one inner step: train.batch_size sequences (the whole site's)
// of model.context tokens; what HELLO declares and every delta's tokens
// are counted in (docs/coalition.md, "Tokens").
static uint64_t tokens_per_step(const ent_config *cfg) {
    return (uint64_t)cfg->batch_size * (uint64_t)cfg->context;
}

static ent_status send_hello(site *s) {
    const ent_config *cfg = s->cfg;
    ent_link_hello h = {.max_version = ENT_LINK_VERSION,
                        .shape_hash = ent_model_shape_hash(cfg),
                        .config_hash = coal_config_hash(cfg),
                        .dp_size = (uint32_t)s->grid->dp_size,
                        .tp_size = (uint32_t)s->grid->tp_size,
                        .tokens_per_step = tokens_per_step(cfg)};
    snprintf(h.name, sizeof h.name, "%s", cfg->coal_site);
    ent_link_buf msg = {0};
    ent_status st = ent_link_encode_hello(&msg, 0, 0, &h);
    if (st == ENT_OK) st = ent_link_send(s->ep, NULL, msg.data, msg.len);
    ent_link_buf_free(&msg);
    if (st == ENT_OK) s->t_hello = ent_now_seconds();
    return st;
}

// A new connection to the coordinator endpoint in use (eps[cur]), with its
// key; send_timeout_ms: how long a send may wait for the connection.
static ent_status connect_current(site *s, int send_timeout_ms) {
    snprintf(s->endpoint, sizeof s->endpoint, "%s", s->eps[s->cur]);
    ent_link_opts lo = s->lo;
    lo.send_timeout_ms = send_timeout_ms;
    if (lo.curve != NULL && s->keys.nserver > 1) lo.server_key = s->keys.server[s->cur].public_key;
    return ent_link_dealer_connect(s->endpoint, &lo, &s->ep);
}

// The next coordinator endpoint (a site that lists a primary and its standby).
static void next_endpoint(site *s) {
    if (s->nep > 1) s->cur = (s->cur + 1) % s->nep;
    snprintf(s->endpoint, sizeof s->endpoint, "%s", s->eps[s->cur]);
}

// A WELCOME: this site's id and first round; the anchor's chunks follow.
static ent_status on_welcome(site *s, const ent_link_incoming *in) {
    ent_link_header hd;
    ENT_CHECK(ent_link_decode_welcome(in->bytes, in->len, in->peer.name, &hd, &s->welcome));
    if (s->welcome.codec != (uint16_t)s->codec.kind)
        return ent_fail(ENT_ERR_USAGE, "the coordinator uses codec %u, this site %s",
                        s->welcome.codec, s->cfg->coal_codec);
    s->last_heard = ent_now_seconds();
    // closes before the welcome (a refused handshake, a coordinator that
    // was not up yet) are not this membership's
    int fds[4];
    while (ent_link_take_disconnects(s->ep, fds, 4) > 0) {
    }
    s->site_id = hd.site;
    s->first_round = hd.round;
    s->chunk_bytes = s->welcome.chunk_bytes;
    s->heartbeat_ms = s->welcome.heartbeat_ms;
    s->state = LINK_ANCHOR;
    return start_update(s, s->first_round, ENT_LINK_CODEC_F32);
}

// The anchor is in: it must be the one WELCOME named.
static ent_status anchor_in(site *s) {
    if (s->update.anchor_hash != s->welcome.anchor_hash)
        return ent_fail(ENT_ERR_INPUT, "the anchor's chunks say hash %016llx, the WELCOME "
                        "%016llx", (unsigned long long)s->update.anchor_hash,
                        (unsigned long long)s->welcome.anchor_hash);
    s->t_anchor = ent_now_seconds();
    s->state = LINK_READY;
    if (s->ep_file[0] != '\0') {
        char line[sizeof s->endpoint + 1];
        int len = snprintf(line, sizeof line, "%s\n", s->endpoint);
        if (ent_write_file_atomic(s->ep_file, line, (size_t)len) != ENT_OK)
            ent_log_warn("site %s: %s (a restart tries the first endpoint first)",
                         s->cfg->coal_site, ent_last_error());
    }
    return ENT_OK;
}

// A restarted site (--resume) starts with the endpoint that last welcomed
// it, when it is one of coalition.coordinator's: after a failover, the
// standby, not the dead primary's 2 s of silence.
static void resume_endpoint(site *s, int resuming) {
    if (s->ep_file[0] == '\0' || !resuming) return;
    FILE *f = fopen(s->ep_file, "r");
    if (f == NULL) return;
    char line[sizeof s->endpoint + 2] = "";
    if (fgets(line, sizeof line, f) != NULL) line[strcspn(line, "\n")] = '\0';
    fclose(f);
    for (int i = 0; i < s->nep; i++)
        if (i != s->cur && strcmp(line, s->eps[i]) == 0) {
            s->cur = i;
            snprintf(s->endpoint, sizeof s->endpoint, "%s", s->eps[i]);
            ent_log_info("site %s: trying %s first: the coordinator endpoint that last welcomed "
                         "it (%s)", s->cfg->coal_site, s->endpoint, s->ep_file);
        }
}

// The first join: HELLO, then WELCOME (or ERROR), then the anchor in f32
// chunks, each waited for up to coalition.timeout. A site that cannot join
// at its start has nothing to train from and fails, naming why.
static ent_status join_at(site *s, double until, int send_timeout_ms);

static ent_status join(site *s) {
    const ent_config *cfg = s->cfg;
    ent_link_opts *lo = &s->lo;
    if (cfg->coal_timeout * 1e3 < lo->send_timeout_ms)
        lo->send_timeout_ms = (int)(cfg->coal_timeout * 1e3);
    double until = ent_now_seconds() + cfg->coal_timeout;
    for (;;) {
        // with several endpoints, each try lasts at most coalition.lost_after
        double end = until, now = ent_now_seconds();
        if (s->nep > 1 && now + cfg->coal_lost_after < end) end = now + cfg->coal_lost_after;
        ent_status st = join_at(s, end, s->nep > 1 && s->lo.send_timeout_ms > NO_CONNECTION_MS
                                            ? NO_CONNECTION_MS : s->lo.send_timeout_ms);
        if (st == ENT_OK) return ENT_OK;
        // a standby that does not serve, or no answer: the next endpoint;
        // any other refusal (another model, a duplicate name, too late) ends it
        int retry = s->nep > 1 && (s->cut_code == ENT_LINK_ERR_NOT_PRIMARY ||
                                   (s->cut_code == 0 && st == ENT_ERR_IO));
        if (!retry) return st;
        // refused as not serving (a standby), or no answer: the next endpoint
        ent_log_info("site %s: no way in at %s (%s): trying %s", cfg->coal_site, s->endpoint,
                     s->cut_why[0] ? s->cut_why : ent_last_error(),
                     s->eps[(s->cur + 1) % s->nep]);
        ent_link_close(&s->ep);
        s->cut_why[0] = '\0';
        s->cut_code = 0;
        s->cut_closed = 0;
        s->state = LINK_OFFLINE;
        coal_vec_free(&s->update);
        s->update_started = 0;
        next_endpoint(s);
        if (ent_now_seconds() >= until)
            return ent_fail(ENT_ERR_IO, "no coordinator of %s welcomed this site within "
                            "coalition.timeout = %g s", cfg->coal_coordinator, cfg->coal_timeout);
        struct timespec pause = {0, 200000000}; // not a busy loop between two refusals
        nanosleep(&pause, NULL);
    }
}

// One try at the endpoint in use, until `until`.
static ent_status join_at(site *s, double until, int send_timeout_ms) {
    const ent_config *cfg = s->cfg;
    ENT_CHECK(connect_current(s, send_timeout_ms));
    ENT_CHECK(send_hello(s));
    while (s->state != LINK_ANCHOR) {
        double left = until - ent_now_seconds();
        if (left <= 0)
            return ent_fail(ENT_ERR_IO, "no WELCOME within %s = %g s (is the coordinator "
                            "running, and coalition.coordinator its endpoint?)",
                            s->nep > 1 ? "coalition.lost_after" : "coalition.timeout",
                            s->nep > 1 ? cfg->coal_lost_after : cfg->coal_timeout);
        ent_link_incoming in;
        int got = 0;
        ENT_CHECK(ent_link_recv(s->ep, left > 1 ? 1000 : 1 + (int)(left * 1000), &in, &got));
        if (!got) continue;
        if (in.header.type == ENT_LINK_WELCOME) {
            ENT_CHECK(on_welcome(s, &in));
            // in: sends may wait as long as ever (the short wait was for the connection)
            ENT_CHECK(ent_link_set_send_timeout(s->ep, s->lo.send_timeout_ms));
        } else {
            ENT_CHECK(handle(s, &in));
        }
        if (s->cut_why[0] != '\0') // refused as a duplicate, too late, or not serving
            return ent_fail(ENT_ERR_INPUT, "%s", s->cut_why);
    }
    ENT_CHECK(wait_for(s, have_update, 0, "anchor"));
    if (s->cut_why[0] != '\0') return ent_fail(ENT_ERR_IO, "%s", s->cut_why);
    return anchor_in(s);
}

// The link broke (s->cut_why): the connection is closed (what it still
// queued is dropped with it), and the site trains on alone; the first try
// to come back is at once when the coordinator answered that it no longer
// counts this site, else after a second.
static void go_offline(site *s, uint64_t round) {
    ent_log_warn("site %s: cut off from the coordinator %s in round %llu: %s; training on "
                 "alone, and trying to reconnect", s->cfg->coal_site, s->endpoint,
                 (unsigned long long)round, s->cut_why);
    ent_link_close(&s->ep);
    // with a standby to go to, a closed connection (the primary's process
    // ended) or a primary that says it no longer serves (superseded, or
    // handing over) is a reason to ask the standby at once, and again while
    // it has not taken over yet
    int failover = (s->cut_closed || s->cut_code == ENT_LINK_ERR_NOT_PRIMARY) && s->nep > 1;
    int at_once = s->cut_code == ENT_LINK_ERR_UNKNOWN_SITE ||
                  s->cut_code == ENT_LINK_ERR_STALE_ROUND ||
                  s->cut_code == ENT_LINK_ERR_NOT_PRIMARY || failover;
    // the coordinator in use is gone (or superseded): the next endpoint first
    next_endpoint(s);
    s->state = LINK_OFFLINE;
    s->backoff = 1;
    s->next_try = ent_now_seconds() + (at_once ? 0 : s->backoff);
    s->standby_until = failover ? ent_now_seconds() + STANDBY_GRACE_S : 0;
    s->cut_why[0] = '\0';
    s->cut_code = 0;
    s->cut_closed = 0;
    coal_vec_free(&s->update);
    s->update_started = 0;
    memset(s->plan_have, 0, sizeof s->plan_have); // the old membership's plans are void
}

// A try to reconnect that did not succeed: the next one after twice the
// wait (at most BACKOFF_MAX_S).
static void try_failed(site *s) {
    if (s->cut_code == ENT_LINK_ERR_NOT_PRIMARY && ent_now_seconds() < s->standby_until) {
        // a standby that has not seen its primary go yet: it will in a moment
        ent_log_info("site %s: the coordinator %s does not serve yet (%s); asking it again in "
                     "%.2f s", s->cfg->coal_site, s->endpoint, s->cut_why, STANDBY_RETRY_S);
        ent_link_close(&s->ep);
        s->state = LINK_OFFLINE;
        s->next_try = ent_now_seconds() + STANDBY_RETRY_S;
        s->cut_why[0] = '\0';
        s->cut_code = 0;
        s->cut_closed = 0;
        return;
    }
    ent_log_info("site %s: no way back to the coordinator %s yet: %s; next try in %.0f s",
                 s->cfg->coal_site, s->endpoint, s->cut_why, s->backoff);
    ent_link_close(&s->ep);
    if (s->cut_code == ENT_LINK_ERR_STALE_ROUND) {
        // too late: the coalition's last round is merged or being merged
        ent_log_warn("site %s: the coalition has finished its rounds without this site: it "
                     "trains to its end alone", s->cfg->coal_site);
        s->state = LINK_ALONE;
    } else {
        s->state = LINK_OFFLINE;
        s->next_try = ent_now_seconds() + s->backoff;
        s->backoff = s->backoff * 2 < BACKOFF_MAX_S ? s->backoff * 2 : BACKOFF_MAX_S;
        next_endpoint(s); // the next try goes to the next coordinator endpoint
    }
    s->cut_why[0] = '\0';
    s->cut_code = 0;
    s->cut_closed = 0;
}

// Between inner steps while cut off, never waiting: a new connection when
// the backoff is over, HELLO once it is up, then WELCOME and the anchor as
// they come; LINK_READY once the anchor is in. A try ends after
// coalition.lost_after without an answer.
static ent_status rejoin_poll(site *s) {
    double now = ent_now_seconds();
    if (s->state == LINK_OFFLINE) {
        if (now < s->next_try) return ENT_OK;
        // a HELLO never holds up training
        if (connect_current(s, 0) != ENT_OK) {
            link_broken(s, 0, "%s", ent_last_error());
            try_failed(s);
            return ENT_OK;
        }
        s->state = LINK_HELLO;
        s->hello_sent = 0;
        s->try_since = now;
        s->last_heard = now;
    }
    if (s->state == LINK_HELLO && !s->hello_sent) s->hello_sent = send_hello(s) == ENT_OK;
    for (int k = 0; k < 1024 && (s->state == LINK_HELLO || s->state == LINK_ANCHOR); k++) {
        ent_link_incoming in;
        int got = 0;
        ENT_CHECK(ent_link_recv(s->ep, 0, &in, &got));
        if (!got) break;
        if (s->state == LINK_HELLO && in.header.type == ENT_LINK_WELCOME) {
            ENT_CHECK(on_welcome(s, &in));
            ENT_CHECK(ent_link_set_send_timeout(s->ep, s->lo.send_timeout_ms));
        } else {
            ENT_CHECK(handle(s, &in));
        }
        if (s->cut_why[0] != '\0') break;
        // stop at the anchor's last chunk: update chunks of another round follow it
        if (s->state == LINK_ANCHOR && have_update(s, 0)) ENT_CHECK(anchor_in(s));
    }
    // with several endpoints, one that takes no connection is left soon
    double limit = s->cfg->coal_lost_after;
    if (s->nep > 1 && !s->hello_sent && limit > NO_CONNECTION_MS / 1e3) limit = NO_CONNECTION_MS / 1e3;
    if (s->cut_why[0] == '\0' && (s->state == LINK_HELLO || s->state == LINK_ANCHOR) &&
        now - s->last_heard > limit)
        link_broken(s, 0, "%s within %g s%s", s->hello_sent ? "no answer to HELLO" : "no connection",
                    limit, limit == s->cfg->coal_lost_after ? " (coalition.lost_after)" : "");
    if (s->cut_why[0] != '\0') try_failed(s);
    return ENT_OK;
}

// Between inner steps, never waiting: a member takes what has arrived
// (plans, update chunks, the answers to its heartbeats) so ZeroMQ's queue
// drains while the site trains, and finds the link broken when nothing came
// for coalition.lost_after; a site cut off tries its way back.
static ent_status link_poll(site *s) {
    if (s->state != LINK_ONLINE) return rejoin_poll(s);
    for (int k = 0; k < 256 && s->cut_why[0] == '\0'; k++) {
        ent_link_incoming in;
        int got = 0;
        ENT_CHECK(ent_link_recv(s->ep, 0, &in, &got));
        if (!got) break;
        ENT_CHECK(handle(s, &in));
    }
    coordinator_closed(s);
    double silent = ent_now_seconds() - s->last_heard;
    if (silent > s->cfg->coal_lost_after)
        link_broken(s, 0, "no word from the coordinator for %.0f s (coalition.lost_after)",
                    silent);
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
    // A bench hook: ENTENTE_FAULT_STEP_S = seconds makes every inner step
    // last at least that long (the rest slept, and counted as the step's
    // compute), so that sites sharing a few cores each train at a speed of
    // their own, as sites on their own clusters do (bench/bench_failover.sh)
    ENT_CHECK(coal_fault_number("ENTENTE_FAULT_STEP_S", 0, 60, 0, &s->step_floor));
    if (s->step_floor > 0 && s->leader)
        ent_log_warn("site %s: ENTENTE_FAULT_STEP_S=%g: every inner step lasts at least that many "
                     "seconds on purpose (a bench hook)", s->cfg->coal_site, s->step_floor);
    return ENT_OK;
}

// Sleeps what is left of the step floor after a step of `last->seconds`,
// and counts the step as that long (its speed, reported in heartbeats, too).
static void pace_step(const site *s, ent_step_stats *last) {
    if (!(s->step_floor > last->seconds)) return;
    double rest = s->step_floor - last->seconds;
    struct timespec pause = {.tv_sec = (time_t)rest,
                             .tv_nsec = (long)((rest - (double)(time_t)rest) * 1e9)};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
    last->tokens_per_s = last->seconds > 0 ? last->tokens_per_s * last->seconds / s->step_floor
                                           : 0;
    last->seconds = s->step_floor;
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
    free(s->ledger_in);
    free(s->ledger_ck);
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
    // the join's anchor (f32, for its first round J) is the coordinator's
    // after J - 1 rounds; an update of round r makes it the one after r + 1
    if (s->update.codec == ENT_LINK_CODEC_F32) s->anchor_round = round > 0 ? round - 1 : 0;
    else s->anchor_round = round + 1;
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

// What the leader tells every rank at a sync point, after they agree on its
// status: the round's steps (*steps, in and out), whether the site is a
// member (s->online) and whether it is ready to rejoin (*ready, may be NULL).
static ent_status share(site *s, ent_status leader_st, int64_t *steps, int *ready) {
    int64_t m[3] = {*steps, 0, 0};
    if (s->leader) {
        m[1] = s->state == LINK_ONLINE;
        m[2] = s->state == LINK_READY;
    }
    ENT_CHECK(agree(s, leader_st));
    ENT_CHECK(ent_broadcast(s->grid->world, m, 3, ENT_I64, 0));
    *steps = m[0];
    s->online = (int)m[1];
    if (ready != NULL) *ready = (int)m[2];
    return ENT_OK;
}

// Leader: a member whose link broke goes on alone.
static void check_link(site *s, uint64_t round) {
    if (s->state == LINK_ONLINE && s->cut_why[0] != '\0') {
        go_offline(s, round);
        s->t_cut = ent_now_seconds();
        s->cut_step = ent_trainer_steps_done(s->tr);
        ent_json_field rec[] = {ENT_JSTR("event", "cut_off"), ENT_JSTR("site", s->cfg->coal_site),
                                ENT_JINT("round", round), ENT_JINT("step", s->cut_step),
                                ENT_JNUM("elapsed_s", ent_trainer_elapsed(s->tr))};
        (void)ent_trainer_record(s->tr, rec, (int)(sizeof rec / sizeof rec[0]));
    }
}

// The plan of a round: a member's leader waits for it; a site cut off
// trains a round of its last plan's length (and tries its way back). Every
// rank gets it.
static ent_status round_plan(site *s, uint64_t round, uint32_t *steps, int *ready) {
    ent_status st = ENT_OK;
    int64_t h = s->last_steps;
    if (s->leader) {
        if (s->state == LINK_ONLINE) st = wait_for(s, have_plan, round, "ROUND_PLAN");
        else st = link_poll(s);
        if (st == ENT_OK) check_link(s, round);
        if (st == ENT_OK && s->state == LINK_ONLINE) h = s->plan_steps[round % PLAN_SLOTS];
        if (st != ENT_OK) st = site_fail(s, st, "waiting for a round plan");
    }
    ENT_CHECK(share(s, st, &h, ready));
    *steps = (uint32_t)h;
    s->last_steps = *steps;
    return ENT_OK;
}

static ent_status record_round(site *s, uint64_t round, uint32_t steps, double compute_s,
                               double wait_s, double wall_s, const ent_step_stats *last) {
    ent_link_stats now = {0};
    if (s->leader && s->ep != NULL) ent_link_get_stats(s->ep, &now);
    if (now.bytes_sent < s->marked.bytes_sent || now.bytes_received < s->marked.bytes_received)
        memset(&s->marked, 0, sizeof s->marked); // a new connection counts from 0
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
        ENT_JINT("anchor_round", (long long)s->anchor_round - 1),
        ENT_JSTR("anchor_hash", hash),
        ENT_JINT("bytes_sent", now.bytes_sent - s->marked.bytes_sent),
        ENT_JINT("bytes_received", now.bytes_received - s->marked.bytes_received),
        ENT_JNUM("compute_s", compute_s),
        ENT_JNUM("wait_s", wait_s),
        ENT_JNUM("wall_s", wall_s),
        ENT_JNUM("elapsed_s", ent_trainer_elapsed(s->tr)),
        ENT_JBOOL("online", s->online),
    };
    s->marked = now;
    // a line a round, but no more often than train.log_every steps (the
    // first and last rounds always): short rounds would flood the terminal
    int64_t step = ent_trainer_steps_done(s->tr);
    int print = round == 0 || round + 1 == (uint64_t)s->cfg->coal_rounds ||
                step - s->printed_step >= s->cfg->log_every;
    if (print) s->printed_step = step;
    if (s->leader && print)
        ent_log_info("site %s: round %llu done%s: %u inner steps, loss %.4f, %.1f s computing, "
                     "%.2f s waiting; anchor %s", s->cfg->coal_site, (unsigned long long)round,
                     s->online ? "" : " (alone: cut off)", steps, last->loss, compute_s, wait_s,
                     hash);
    return ent_trainer_record(s->tr, rec, (int)(sizeof rec / sizeof rec[0]));
}

// Every rank gets the leader's last ledger (collective; the text's length
// first): every rank of a site lays out the same checkpoint.
static ent_status share_ledger(site *s) {
    uint64_t n[2] = {s->leader && s->ledger_in ? strlen(s->ledger_in) : 0, s->ledger_round};
    ENT_CHECK(ent_broadcast(s->grid->world, n, 2, ENT_U64, 0));
    if (n[0] == 0) return ENT_OK; // none yet (or none new, below)
    char *text = malloc(n[0] + 1);
    if (text == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for the ledger");
    if (s->leader) memcpy(text, s->ledger_in, n[0]);
    ent_status st = ent_broadcast(s->grid->world, text, n[0], ENT_U8, 0);
    text[n[0]] = '\0';
    if (st != ENT_OK) {
        free(text);
        return st;
    }
    free(s->ledger_ck);
    s->ledger_ck = text;
    s->ledger_round = n[1];
    return ENT_OK;
}

// The arrays checkpoints write, in this rank's arena layout, and the
// ledger (every rank: the leader's last).
static ent_status refresh_checkpoint_state(site *s, uint64_t round) {
    ent_trainer_set_coalition(s->tr, &s->ck, s->cfg->coal_site, (int)round);
    coal_global_to_arena(&s->lay, s->grid->tp_rank, s->anchor, s->ck_anchor);
    coal_global_to_arena(&s->lay, s->grid->tp_rank, s->resid, s->ck_resid);
    ent_status st = share_ledger(s);
    s->ck = (ent_ckpt_coalition){.anchor = s->ck_anchor, .residual = s->ck_resid,
                                 .round = (int64_t)round, .ledger = s->ledger_ck};
    return st;
}

// Between inner steps: the leader takes what has arrived without waiting
// (link_poll), and every rank learns the round's plan, which the
// coordinator may revise while it runs (a site's first round, once it has
// measured the site's speed), and the link's state. The round ends after
// *steps steps, never before step i.
static ent_status replan(site *s, uint64_t round, uint32_t i, uint32_t *steps, int *ready) {
    ent_status st = ENT_OK;
    int64_t h = *steps;
    if (s->leader) {
        st = link_poll(s);
        if (st == ENT_OK) check_link(s, round);
        if (st == ENT_OK && s->state == LINK_ONLINE && have_plan(s, round))
            h = s->plan_steps[round % PLAN_SLOTS];
        if (st != ENT_OK) st = site_fail(s, st, "during the round");
    }
    ENT_CHECK(share(s, st, &h, ready));
    *steps = h < (int64_t)i ? i : (uint32_t)h;
    return ENT_OK;
}

// The round's inner steps (*steps, as the plan may change), with the
// evaluations, samples and stop requests of `entente train`, and the
// leader's heartbeats. *stop: the signal that stopped it (0: none);
// *rejoin: the site, cut off, is welcomed back and ends the round here.
static ent_status inner_steps(site *s, uint64_t round, uint32_t *steps, double *compute_s,
                              ent_step_stats *last, int *stop, int *rejoin) {
    const ent_config *cfg = s->cfg;
    *compute_s = 0;
    *stop = 0;
    *rejoin = 0;
    for (uint32_t i = 1; i <= *steps; i++) {
        ENT_CHECK(ent_trainer_step(s->tr, last));
        pace_step(s, last);
        *compute_s += last->seconds;
        int step = ent_trainer_steps_done(s->tr);
        ent_status io = ENT_OK;
        if (cfg->eval_every > 0 && step % cfg->eval_every == 0) io = ent_trainer_eval(s->tr, NULL);
        if (io == ENT_OK && cfg->sample_every > 0 && step % cfg->sample_every == 0)
            io = ent_trainer_sample(s->tr);
        // the plan of the next round and the coordinator's idea of this
        // site's speed come from these
        if (s->leader && s->state == LINK_ONLINE &&
            (i == 1 || i == 3 || (ent_now_seconds() - s->last_heartbeat) * 1e3 >= s->heartbeat_ms))
            send_heartbeat(s, round, i, last->tokens_per_s);
        ENT_CHECK(ent_trainer_sync(s->tr, io, stop));
        if (*stop) return ENT_OK;
        ENT_CHECK(replan(s, round, i, steps, rejoin));
        if (*rejoin) return ENT_OK;
    }
    return ENT_OK;
}

// Fault injection, for the tests of the coordinator's screen only:
// ENTENTE_FAULT_DELTA = scale:F (the delta times F, before encoding; F = -1
// flips its sign), noise:F (the delta replaced by Gaussian noise F times its
// norm, before encoding) or nan (the first block parameter of the encoded
// delta, a scale, set to NaN after encoding, as no honest encoder writes it)
// spoils this site's delta from
// round ENTENTE_FAULT_ROUND (default 1) on, as a broken or hostile site would
// send it. Unset, nothing happens. encoded: NULL before encoding.
static void inject_fault(site *s, uint64_t round, coal_vec *encoded) {
    const char *f = getenv("ENTENTE_FAULT_DELTA");
    if (f == NULL || f[0] == '\0') return;
    const char *r = getenv("ENTENTE_FAULT_ROUND");
    if (round < (uint64_t)(r != NULL ? strtoull(r, NULL, 10) : 1)) return;
    int scale = strncmp(f, "scale:", 6) == 0, nan = strcmp(f, "nan") == 0;
    int noise = strncmp(f, "noise:", 6) == 0;
    if (encoded == NULL && scale) {
        float k = strtof(f + 6, NULL);
        for (size_t i = 0; i < s->n; i++) s->v[i] *= k;
    } else if (encoded == NULL && noise) {
        double norm = 0, nn = 0;
        ent_rng rng;
        ent_rng_seed(&rng, 0x6e6f697365ull + round);
        for (size_t i = 0; i < s->n; i++) {
            norm += (double)s->v[i] * s->v[i];
            s->v[i] = (float)ent_rng_normal(&rng);
            nn += (double)s->v[i] * s->v[i];
        }
        double k = nn > 0 ? strtod(f + 6, NULL) * sqrt(norm / nn) : 0;
        for (size_t i = 0; i < s->n; i++) s->v[i] = (float)(s->v[i] * k);
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

// The tokens a delta claims: what it was trained on; a test's lying site
// claims F times as many, to earn a bigger share and weight, as a hostile
// site would: ENTENTE_FAULT_TOKENS = F from round ENTENTE_FAULT_ROUND
// (default 1) on, or = rejoin:F in the first delta that carries progress
// made before it came back (only there). Unset, the truth.
static uint64_t claimed_tokens(site *s, uint64_t round, uint64_t tokens) {
    const char *f = getenv("ENTENTE_FAULT_TOKENS");
    if (f == NULL || f[0] == '\0') return tokens;
    int rejoin = strncmp(f, "rejoin:", 7) == 0;
    const char *r = getenv("ENTENTE_FAULT_ROUND");
    if (rejoin ? s->carried_tokens == 0
               : round < (uint64_t)(r != NULL ? strtoull(r, NULL, 10) : 1))
        return tokens;
    double k = strtod(f + (rejoin ? 7 : 0), NULL);
    uint64_t claim = k > 0 && k * (double)tokens < 1e15 ? (uint64_t)(k * (double)tokens) : tokens;
    ent_log_warn("site %s: ENTENTE_FAULT_TOKENS=%s: round %llu's delta claims %llu tokens, it "
                 "trained on %llu", s->cfg->coal_site, f, (unsigned long long)round,
                 (unsigned long long)claim, (unsigned long long)tokens);
    return claim;
}

// Tokens in the progress not yet sent (start - theta).
static uint64_t unsent_tokens(site *s) {
    int64_t steps = ent_trainer_steps_done(s->tr) - s->start_step;
    return s->carried_tokens + (uint64_t)(steps > 0 ? steps : 0) * (uint64_t)s->cfg->batch_size *
                                   (uint64_t)s->cfg->context;
}

// The delta has left (or was lost with the link: either way it is no longer
// this site's to send): the next one counts from theta (in p), computed from
// the anchor held now.
static void delta_gone(site *s) {
    memcpy(s->start, s->p, sizeof(float) * s->arena);
    s->start_step = ent_trainer_steps_done(s->tr);
    s->carried_tokens = 0;
    s->base_round = s->anchor_round;
}

// The leader waits for the update of `round`, unless the link is broken;
// every rank learns whether the site is still a member.
static ent_status await_update(site *s, uint64_t round, const char *what) {
    ent_status st = ENT_OK;
    int64_t none = 0;
    if (s->leader && s->state == LINK_ONLINE) {
        st = wait_for(s, have_update, round, what);
        if (st == ENT_OK) check_link(s, round);
        if (st != ENT_OK) st = site_fail(s, st, "waiting for the update");
    }
    return share(s, st, &none, NULL);
}

// The end of round r: the delta goes out, the update of round r-1 comes in.
// A site cut off keeps its progress in start - theta until it is back.
static ent_status end_round(site *s, uint64_t round, uint32_t steps, double compute_s) {
    int tp_rank = s->grid->tp_rank;
    ENT_CHECK(ent_trainer_params_to_host(s->tr, s->p));
    if (!s->online) return ENT_OK;
    // this round's progress: start - p, in the global layout, plus the residual
    for (size_t i = 0; i < s->arena; i++) s->start[i] = s->start[i] - s->p[i];
    ENT_CHECK(to_global(s, s->start, s->v));
    inject_fault(s, round, NULL);
    coal_vec delta = {0};
    ENT_CHECK(coal_vec_encode(&delta, (uint16_t)s->codec.kind, &s->codec, s->v, s->resid, s->n,
                              s->chunk_bytes));
    inject_fault(s, round, &delta);
    if (s->leader && s->state == LINK_ONLINE) {
        delta.anchor_hash = s->anchor_hash;
        delta.tokens = claimed_tokens(s, round, unsent_tokens(s));
        // a send that fails breaks the link: the site goes on alone
        coordinator_closed(s);
        if (s->cut_why[0] == '\0' &&
            coal_vec_send(s->ep, NULL, ENT_LINK_DELTA, s->site_id, round, &delta) != ENT_OK)
            link_broken(s, 0, "sending the delta of round %llu: %s", (unsigned long long)round,
                        ent_last_error());
        // the rate this round trained at, for the coordinator's plans
        if (s->cut_why[0] == '\0')
            send_heartbeat(s, round, steps, compute_s > 0 ? delta.tokens / compute_s : 0);
        check_link(s, round);
    }
    coal_vec_free(&delta);
    int64_t none = 0;
    ENT_CHECK(share(s, ENT_OK, &none, NULL));
    if (!s->cfg->coal_overlap) {
        // DiLoCo as published: this round's merge, then the next round
        // starts from the new anchor
        if (s->online) ENT_CHECK(await_update(s, round, "UPDATE"));
        if (s->online) {
            ENT_CHECK(apply_update(s, round));
            if (s->leader) ENT_CHECK(start_update(s, round + 1, (uint16_t)s->codec.kind));
            coal_global_to_arena(&s->lay, tp_rank, s->anchor, s->p);
            ENT_CHECK(ent_trainer_set_params(s->tr, s->p));
        }
        delta_gone(s);
        return ENT_OK;
    }
    if (round > 0 && s->online) ENT_CHECK(await_update(s, round - 1, "UPDATE"));
    if (round == 0 || !s->online) {
        // nothing to merge yet, or no way to: the next round goes on from here
        delta_gone(s);
        return ENT_OK;
    }
    ENT_CHECK(apply_update(s, round - 1));
    if (s->leader) ENT_CHECK(start_update(s, round, (uint16_t)s->codec.kind));
    // the model: the new anchor minus this round's own progress (in start)
    coal_global_to_arena(&s->lay, tp_rank, s->anchor, s->p);
    for (size_t i = 0; i < s->arena; i++) s->p[i] = s->p[i] - s->start[i];
    ENT_CHECK(ent_trainer_set_params(s->tr, s->p));
    delta_gone(s);
    return ENT_OK;
}

// In the coalition, for the first time (first = 1) or back after a cut:
// every rank takes the anchor the leader received and goes on from round
// *round = J, the round its WELCOME named. Coming back, the progress not yet
// sent (start - theta) rides on the new anchor into round J's delta when the
// anchor it was made from is at most coalition.max_staleness rounds older
// than the one round J's delta is computed from; otherwise it is dropped
// (its tokens are logged and recorded as such).
static ent_status rebase(site *s, int first, uint64_t *round) {
    const ent_config *cfg = s->cfg;
    uint64_t w[4] = {s->site_id, s->first_round, s->chunk_bytes, s->heartbeat_ms};
    ENT_CHECK(ent_broadcast(s->grid->world, w, 4, ENT_U64, 0));
    s->site_id = (uint32_t)w[0];
    s->first_round = w[1];
    s->chunk_bytes = (uint32_t)w[2];
    s->heartbeat_ms = (uint32_t)w[3];
    uint64_t J = s->first_round;
    if (J >= (uint64_t)cfg->coal_rounds)
        return ent_fail(ENT_ERR_USAGE, "the coalition is at round %llu of %d: nothing left",
                        (unsigned long long)J, cfg->coal_rounds);
    ENT_CHECK(apply_update(s, J));
    if (s->leader) {
        // the next update: J - 1's (with overlap, applied after round J;
        // without, before it), none before round 0's
        s->state = LINK_ONLINE;
        ENT_CHECK(start_update(s, J > 0 ? J - 1 : 0, (uint16_t)s->codec.kind));
    }
    int64_t none = 0;
    ENT_CHECK(share(s, ENT_OK, &none, NULL));
    if (!cfg->coal_overlap && J > 0) {
        ENT_CHECK(await_update(s, J - 1, "UPDATE"));
        if (!s->online) return ENT_OK; // cut off again at once: on alone, as before
        ENT_CHECK(apply_update(s, J - 1));
        if (s->leader) ENT_CHECK(start_update(s, J, (uint16_t)s->codec.kind));
    }
    // start - p: what this site made since its last delta left
    uint64_t made = unsent_tokens(s);
    uint64_t stale = s->anchor_round > s->base_round ? s->anchor_round - s->base_round : 0;
    int keep = !first && made > 0 && stale <= (uint64_t)cfg->coal_max_staleness;
    ENT_CHECK(ent_trainer_params_to_host(s->tr, s->p));
    for (size_t i = 0; i < s->arena; i++) s->start[i] = s->start[i] - s->p[i];
    coal_global_to_arena(&s->lay, s->grid->tp_rank, s->anchor, s->p);
    if (keep) {
        for (size_t i = 0; i < s->arena; i++) {
            float a = s->p[i];
            s->p[i] = a - s->start[i];
            s->start[i] = a;
        }
    } else {
        memcpy(s->start, s->p, sizeof(float) * s->arena);
        memset(s->resid, 0, sizeof(float) * s->n); // what the codec still owed goes with it
    }
    ENT_CHECK(ent_trainer_set_params(s->tr, s->p));
    s->carried_tokens = keep ? made : 0;
    s->start_step = ent_trainer_steps_done(s->tr);
    s->base_round = s->anchor_round;
    *round = J;
    if (first || !s->leader) return ENT_OK;
    int64_t steps_alone = s->start_step - s->cut_step;
    double alone_s = ent_now_seconds() - s->t_cut;
    ent_log_info("site %s: back in the coalition at round %llu after %.1f s and %lld steps "
                 "alone: %llu tokens of progress from an anchor %llu round(s) old: %s",
                 cfg->coal_site, (unsigned long long)J, alone_s, (long long)steps_alone,
                 (unsigned long long)made, (unsigned long long)stale,
                 keep ? "carried into this round's delta"
                 : made == 0 ? "nothing to carry"
                             : "dropped (older than coalition.max_staleness); rebased on the "
                               "current anchor");
    ent_json_field rec[] = {ENT_JSTR("event", "rejoined"), ENT_JSTR("site", cfg->coal_site),
                            ENT_JINT("first_round", J), ENT_JINT("staleness", stale),
                            ENT_JSTR("progress", keep ? "carried" : "dropped"),
                            ENT_JINT("tokens", made), ENT_JINT("steps_alone", steps_alone),
                            ENT_JNUM("alone_s", alone_s), ENT_JINT("step", s->start_step),
                            ENT_JNUM("elapsed_s", ent_trainer_elapsed(s->tr))};
    return ent_trainer_record(s->tr, rec, (int)(sizeof rec / sizeof rec[0]));
}

static ent_status run_rounds(site *s, int resuming) {
    const ent_config *cfg = s->cfg;
    ent_status st = ENT_OK;
    if (s->leader) {
        s->nep = ent_coal_split_list(cfg->coal_coordinator, s->eps); // checked with the config
        if (s->nep < 1) s->nep = 1;
        snprintf(s->endpoint, sizeof s->endpoint, "%s", s->eps[0]);
        resume_endpoint(s, resuming);
        st = join(s);
        if (st != ENT_OK) st = site_fail(s, st, "joining");
    }
    ENT_CHECK(agree(s, st));
    uint64_t rounds = (uint64_t)cfg->coal_rounds, round = 0;
    // the anchor every rank starts from
    ENT_CHECK(rebase(s, 1, &round));
    if (s->leader) {
        ent_log_info("site %s joined the coalition at %s as site %u, round %llu of %llu; anchor "
                     "%016llx", cfg->coal_site, s->endpoint, s->site_id,
                     (unsigned long long)round, (unsigned long long)rounds,
                     (unsigned long long)s->anchor_hash);
        ent_link_get_stats(s->ep, &s->marked);
    }
    ENT_CHECK(refresh_checkpoint_state(s, round));
    // a site that joins a running coalition starts at once; at round 0 the
    // start is evaluated, as a run alone's is
    if (round == 0) ENT_CHECK(ent_trainer_sync(s->tr, ent_trainer_eval(s->tr, NULL), NULL));

    int stop = 0, next_save = cfg->ckpt_every;
    ent_step_stats last = {0};
    while (round < rounds) {
        double t0 = ent_now_seconds(), compute_s = 0;
        uint32_t steps = 0;
        int ready = 0;
        ENT_CHECK(round_plan(s, round, &steps, &ready));
        if (ready) {
            ENT_CHECK(rebase(s, 0, &round));
            continue;
        }
        double t_plan = ent_now_seconds() - t0;
        if (s->leader && s->t_hello > 0 && s->state == LINK_ONLINE) {
            // HELLO to the first inner step: what joining costs a site
            ent_log_info("site %s: joined round %llu: anchor received in %.2f s, first inner "
                         "step %.2f s after its HELLO", cfg->coal_site, (unsigned long long)round,
                         s->t_anchor - s->t_hello, ent_now_seconds() - s->t_hello);
            s->t_hello = 0;
        }
        int done = ent_trainer_steps_done(s->tr);
        uint64_t horizon = (uint64_t)done + (uint64_t)steps * (rounds - round);
        ent_trainer_set_horizon(s->tr, horizon < (uint64_t)cfg->steps ? (int)horizon : cfg->steps);
        ent_trainer_set_coalition(s->tr, &s->ck, cfg->coal_site, (int)round);
        int rejoin = 0;
        ENT_CHECK(inner_steps(s, round, &steps, &compute_s, &last, &stop, &rejoin));
        if (stop) break;
        if (rejoin) {
            // welcomed back mid-round: what the round made so far goes along
            ENT_CHECK(rebase(s, 0, &round));
            continue;
        }
        double t1 = ent_now_seconds();
        ENT_CHECK(end_round(s, round, steps, compute_s));
        double wait_s = t_plan + (ent_now_seconds() - t1);
        ENT_CHECK(refresh_checkpoint_state(s, round + 1));
        ENT_CHECK(record_round(s, round, steps, compute_s, wait_s, ent_now_seconds() - t0, &last));
        ENT_CHECK(ent_trainer_sync(s->tr, ENT_OK, &stop));
        if (stop) break;
        if (cfg->ckpt_every > 0 && ent_trainer_steps_done(s->tr) >= next_save &&
            round + 1 < rounds) {
            ENT_CHECK(ent_trainer_save(s->tr));
            while (next_save <= ent_trainer_steps_done(s->tr)) next_save += cfg->ckpt_every;
        }
        round++;
    }
    if (stop) {
        if (s->leader && s->state == LINK_ONLINE)
            (void)send_leave(s, round, ENT_LINK_LEAVE_STOPPED, "stopped by a signal");
        return ent_trainer_finish(s->tr, stop);
    }
    // the last update (without overlap: applied already): the model becomes the anchor
    if (s->online && cfg->coal_overlap) ENT_CHECK(await_update(s, rounds - 1, "last UPDATE"));
    char hash[17];
    coal_hash_hex(s->anchor_hash, hash);
    if (s->online) {
        if (cfg->coal_overlap) ENT_CHECK(apply_update(s, rounds - 1));
        coal_global_to_arena(&s->lay, s->grid->tp_rank, s->anchor, s->p);
        ENT_CHECK(ent_trainer_set_params(s->tr, s->p));
        ENT_CHECK(refresh_checkpoint_state(s, rounds));
        coal_hash_hex(s->anchor_hash, hash);
        // every rank's own copy, for whoever compares them (the tests do)
        ent_log_info("site %s: rank %d holds anchor %s after round %llu", cfg->coal_site,
                     ent_comm_rank(s->comm), hash, (unsigned long long)rounds - 1);
        ent_json_field rec[] = {ENT_JSTR("event", "anchor"), ENT_JSTR("site", cfg->coal_site),
                                ENT_JINT("anchor_round", (long long)rounds - 1),
                                ENT_JSTR("anchor_hash", hash),
                                ENT_JNUM("elapsed_s", ent_trainer_elapsed(s->tr))};
        ENT_CHECK(ent_trainer_record(s->tr, rec, (int)(sizeof rec / sizeof rec[0])));
    } else if (s->leader) {
        ent_log_warn("site %s: the coalition's %llu rounds are over while this site is cut off: "
                     "its model is its own, not the coalition's anchor", cfg->coal_site,
                     (unsigned long long)rounds);
    }
    ENT_CHECK(ent_trainer_sync(s->tr, ent_trainer_eval(s->tr, NULL), NULL));
    ENT_CHECK(ent_trainer_sync(s->tr, ent_trainer_sample(s->tr), NULL));
    if (s->leader && s->online) {
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
    // a site trains rounds x its planned inner steps: at most this many
    ent_config cfg = *cfg_in;
    long long cap = (long long)cfg.coal_rounds * cfg.coal_inner_steps;
    if (cap > 1000000000LL)
        return ent_fail(ENT_ERR_USAGE, "coalition.rounds x coalition.inner_steps = %lld steps: "
                        "more than the 10^9 a run may take", cap);
    cfg.steps = (int)cap;
    if (cfg.warmup_steps > cfg.steps) cfg.warmup_steps = cfg.steps;
    // with --resume, a restarted site takes its inner state (the optimizer's
    // moments, the step and schedule, the data cursor) from its checkpoint,
    // and its parameters from the coalition's anchor when it joins
    site s = {.cfg = &cfg, .comm = comm, .leader = ent_comm_rank(comm) == 0,
              .last_steps = (uint32_t)cfg.coal_inner_steps, .online = 1};
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
    if (st == ENT_OK && s.leader && opts->run_dir != NULL &&
        ent_coal_split_list(cfg.coal_coordinator, s.eps) > 1)
        snprintf(s.ep_file, sizeof s.ep_file, "%s/coordinator_endpoint", opts->run_dir);
    if (st == ENT_OK) st = run_rounds(&s, opts->resume != NULL || opts->continues);
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
