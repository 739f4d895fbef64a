// link_zmq.c: the coalition link's ZeroMQ endpoints.
//
// The coordinator binds a ROUTER; the leader rank of each site connects a
// DEALER. A message is two frames, the 36-byte header and the payload (on a
// ROUTER, after the routing id that ZeroMQ puts first), sent as one atomic
// multipart message. The receiver reads every frame of a message, refuses one
// whose frames are not exactly that (counted, logged with the peer, answered
// with an ERROR on a ROUTER), and hands on only messages whose header passes
// ent_link_decode_header. The payload's fields are the caller's to decode
// with the decoder of the header's type.
//
// Bounds: ZMQ_MAXMSGSIZE makes libzmq drop the connection of a peer that
// sends a frame larger than max_payload before it is read into memory; sends
// fail after send_timeout_ms instead of blocking forever; a ROUTER fails
// to send to a peer it does not know (ZMQ_ROUTER_MANDATORY) instead of
// dropping the message silently; closing waits at most linger_ms.
//
// CURVE: a ROUTER given a key pair is a CURVE server whose ZAP handler (a
// thread of the endpoint's own, answering on the context's
// inproc://zeromq.zap.01) admits only the public keys of its allowlist and
// tells libzmq the name each was admitted under, which every message of that
// connection then carries (ent_link_peer.user). A refused key is logged with
// its fingerprint and counted. Both sides watch their socket's handshake
// events (a monitor), so a refused or mismatched handshake is reported for
// what it is instead of as a peer that never answers.
#include "link_impl.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

struct ent_link_endpoint {
    void *ctx, *sock;
    int is_router;
    ent_link_opts opts;
    char address[256]; // bound (ZMQ_LAST_ENDPOINT) or connected endpoint
    char peer_name[128]; // a DEALER's name for its peer: "coordinator tcp://..."
    uint8_t *buf;      // the last received message, header then payload
    size_t buf_cap;
    ent_link_stats stats;
    ent_link_buf reply; // an ERROR answer being encoded
    // CURVE
    ent_link_keypair *allow; // the ROUTER's allowlist (copied), nallow keys
    int nallow;
    void *zap;         // the ZAP handler's REP socket (its thread's alone once started)
    pthread_t zap_thread;
    int zap_started;
    volatile int zap_stop; // set (under auth_lock) to end the ZAP handler's loop
    pthread_mutex_t auth_lock; // guards refused / last_refusal, written by the ZAP thread
    uint64_t refused;
    char last_refusal[256];
    double last_refusal_logged_ms; // the same refusal again is logged at most every 10 s
    uint64_t refusals_unlogged;
    void *monitor;          // PAIR receiving the socket's handshake and disconnect events
    char handshake_error[256]; // a DEALER's last failed handshake ("" if none)
    int send_full; // the last send found no room (EAGAIN within its timeout): a retry may do
    int closed[64];         // connections closed, not yet taken (ent_link_take_disconnects)
    int nclosed;
};

ent_link_opts ent_link_opts_default(void) {
    return (ent_link_opts){
        .max_payload = ENT_LINK_PAYLOAD_MAX,
        .send_timeout_ms = 10000,
        .linger_ms = 2000,
        .reply_errors = 1,
    };
}

const char *ent_link_address(const ent_link_endpoint_t *ep) { return ep->address; }

static void drain_monitor(ent_link_endpoint_t *ep);

int ent_link_take_disconnects(ent_link_endpoint_t *ep, int *fds, int max) {
    drain_monitor(ep);
    int n = ep->nclosed < max ? ep->nclosed : max;
    memcpy(fds, ep->closed, sizeof *fds * (size_t)n);
    memmove(ep->closed, ep->closed + n, sizeof *fds * (size_t)(ep->nclosed - n));
    ep->nclosed -= n;
    return n;
}

ent_status ent_link_set_send_timeout(ent_link_endpoint_t *ep, int ms) {
    if (ms < -1)
        return ent_fail(ENT_ERR_USAGE, "link %s: send timeout %d ms must be >= -1", ep->address,
                        ms);
    ENT_ZMQ_CHECK(zmq_setsockopt(ep->sock, ZMQ_SNDTIMEO, &ms, sizeof ms));
    ep->opts.send_timeout_ms = ms;
    return ENT_OK;
}

void ent_link_get_stats(const ent_link_endpoint_t *ep, ent_link_stats *out) {
    *out = ep->stats;
    pthread_mutex_lock((pthread_mutex_t *)&ep->auth_lock);
    out->refused = ep->refused;
    snprintf(out->last_refusal, sizeof out->last_refusal, "%s", ep->last_refusal);
    pthread_mutex_unlock((pthread_mutex_t *)&ep->auth_lock);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void note_refusal(ent_link_endpoint_t *ep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void note_refusal(ent_link_endpoint_t *ep, const char *fmt, ...) {
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    // a peer that retries every 100 ms must not flood the log
    pthread_mutex_lock(&ep->auth_lock);
    ep->refused++;
    double now = now_ms();
    int again = strcmp(ep->last_refusal, text) == 0 &&
                now - ep->last_refusal_logged_ms < 10000;
    uint64_t unlogged = ep->refusals_unlogged;
    if (again) {
        ep->refusals_unlogged++;
    } else {
        ep->refusals_unlogged = 0;
        ep->last_refusal_logged_ms = now;
    }
    snprintf(ep->last_refusal, sizeof ep->last_refusal, "%s", text);
    pthread_mutex_unlock(&ep->auth_lock);
    if (again) return;
    if (unlogged > 0)
        ent_log_warn("link %s: %s (and %llu more refusals since the last one logged)",
                     ep->address, text, (unsigned long long)unlogged);
    else
        ent_log_warn("link %s: %s", ep->address, text);
}

// ---------------------------------------------------------------------------
// CURVE: the ZAP handler (RFC 27) and the handshake monitor

// One frame into buf (cap bytes, NUL-terminated); its size, or -1 when the
// context is ending or the frame is larger than cap - 1.
static int zap_frame(void *sock, char *buf, size_t cap, int *more) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, 0) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    size_t n = zmq_msg_size(&m);
    *more = zmq_msg_more(&m);
    int ok = n < cap;
    if (ok) {
        memcpy(buf, zmq_msg_data(&m), n);
        buf[n] = '\0';
    }
    zmq_msg_close(&m);
    return ok ? (int)n : -2;
}

static int zap_stopping(ent_link_endpoint_t *ep) {
    pthread_mutex_lock(&ep->auth_lock);
    int stop = ep->zap_stop;
    pthread_mutex_unlock(&ep->auth_lock);
    return stop;
}

// Answers ZAP requests until ent_link_close asks it to stop (it looks every
// 100 ms), so that closing never has to shut the context down: that would
// drop the messages the closed socket still lingers to deliver.
static void *zap_loop(void *arg) {
    ent_link_endpoint_t *ep = arg;
    enum { FRAMES = 7 };
    char f[FRAMES][256];
    int len[FRAMES];
    for (;;) {
        zmq_pollitem_t item = {.socket = ep->zap, .events = ZMQ_POLLIN};
        int ready = zmq_poll(&item, 1, 100);
        if (zap_stopping(ep)) goto out;
        if (ready < 0 && zmq_errno() != EINTR) goto out;
        if (ready <= 0) continue;
        int more = 1, n = 0;
        while (more) {
            char scratch[256];
            int got = zap_frame(ep->zap, n < FRAMES ? f[n] : scratch, 256, &more);
            if (got == -1) goto out; // the context is shutting down
            if (n < FRAMES) len[n] = got;
            n++;
        }
        if (n < 6) continue; // not a ZAP request: nothing to answer
        // version, request id, domain, address, routing id, mechanism, credentials
        const char *status = "400", *text = "key not on the allowlist";
        const char *user = "";
        char z85[ENT_LINK_KEY_TEXT + 1] = "";
        if (n == 7 && strcmp(f[5], "CURVE") == 0 && len[6] == 32) {
            zmq_z85_encode(z85, (const uint8_t *)f[6], 32);
            for (int i = 0; i < ep->nallow; i++)
                if (strcmp(ep->allow[i].public_key, z85) == 0) {
                    status = "200";
                    text = "OK";
                    user = ep->allow[i].name;
                    break;
                }
        } else {
            text = "CURVE is required";
        }
        if (strcmp(status, "200") != 0) {
            char fp[32];
            note_refusal(ep, "refused a connection from %s: %s (key %s)",
                         len[3] >= 0 ? f[3] : "?", text,
                         z85[0] ? ent_link_key_fingerprint(z85, fp, sizeof fp) : "none");
        }
        // version, request id (echoed), status, text, user id, metadata
        const char *reply[6] = {"1.0", f[1], status, text, user, ""};
        size_t rlen[6] = {3, len[1] >= 0 ? (size_t)len[1] : 0, 3, strlen(text), strlen(user), 0};
        for (int i = 0; i < 6; i++)
            if (zmq_send(ep->zap, reply[i], rlen[i], i < 5 ? ZMQ_SNDMORE : 0) < 0) goto out;
    }
out:
    zmq_close(ep->zap);
    ep->zap = NULL;
    return NULL;
}

// What a failed handshake means, as this side sees it (values observed with
// libzmq 4.3: a plaintext DEALER sees a mechanism mismatch while its CURVE
// ROUTER sees the connection dropped; a DEALER given the wrong server key
// sees the connection dropped while the ROUTER sees a cryptographic error).
static const char *handshake_reason(uint16_t event, uint32_t value, int router) {
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        return value == 400 ? "the coordinator refused this site's key (not on its allowlist)"
                            : "the coordinator's key check failed";
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        return router ? "the peer dropped the connection in the handshake (a client without "
                        "CURVE keys, or not an Entente site?)"
                      : "the coordinator dropped the connection in the CURVE handshake: the "
                        "coordinator's public key this site was given (coalition.coordinator_key) "
                        "is most likely not the coordinator's";
    switch (value) {
    case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "one side uses CURVE and the other does not (a plaintext peer, or --insecure "
               "on one side only)";
    case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
    case ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE:
        return router ? "the CURVE key exchange failed (the site was given another "
                        "coordinator public key than this coordinator's)"
                      : "the CURVE key exchange failed (coalition.coordinator_key is not the "
                        "coordinator's public key)";
    default:
        return "the handshake failed: a protocol error (a peer without CURVE keys, or not an "
               "Entente link)";
    }
}

// Reads the handshake events waiting on the monitor: a ROUTER logs each
// failure (a refused key was logged by the ZAP handler already); a DEALER
// keeps the last one for the message of a send that found no connection.
static void drain_monitor(ent_link_endpoint_t *ep) {
    if (ep->monitor == NULL) return;
    for (;;) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, ep->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        zmq_msg_init(&addr);
        int have_addr = zmq_msg_more(&ev) && zmq_msg_recv(&addr, ep->monitor, 0) >= 0;
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (const uint8_t *)zmq_msg_data(&ev) + 2, 4);
        }
        char where[128] = "";
        if (have_addr)
            snprintf(where, sizeof where, "%.*s", (int)(zmq_msg_size(&addr) < 100 ?
                     zmq_msg_size(&addr) : 100), (const char *)zmq_msg_data(&addr));
        zmq_msg_close(&ev);
        zmq_msg_close(&addr);
        if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            ep->handshake_error[0] = '\0';
            continue;
        }
        if (event == ZMQ_EVENT_DISCONNECTED) { // the value is the connection's fd
            if (ep->nclosed < (int)(sizeof ep->closed / sizeof ep->closed[0]))
                ep->closed[ep->nclosed++] = (int)value;
            continue;
        }
        const char *why = handshake_reason(event, value, ep->is_router);
        if (ep->is_router) {
            if (event != ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
                note_refusal(ep, "a connection on %s failed the CURVE handshake: %s", where,
                             why);
        } else {
            snprintf(ep->handshake_error, sizeof ep->handshake_error, "%s", why);
        }
    }
}

static ent_status start_monitor(ent_link_endpoint_t *ep) {
    char name[64];
    snprintf(name, sizeof name, "inproc://entente-monitor-%p", (void *)ep);
    ENT_ZMQ_CHECK(zmq_socket_monitor(ep->sock, name, ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                     ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                     ZMQ_EVENT_DISCONNECTED));
    ep->monitor = zmq_socket(ep->ctx, ZMQ_PAIR);
    if (ep->monitor == NULL)
        return ent_fail(ENT_ERR_INTERNAL, "link %s: zmq_socket: %s", ep->address,
                        zmq_strerror(zmq_errno()));
    int zero = 0;
    zmq_setsockopt(ep->monitor, ZMQ_LINGER, &zero, sizeof zero);
    ENT_ZMQ_CHECK(zmq_connect(ep->monitor, name));
    return ENT_OK;
}

// The CURVE options of a socket; a ROUTER's ZAP handler starts first, as
// libzmq asks (it must be bound before the server socket binds).
static ent_status curve_setup(ent_link_endpoint_t *ep) {
    const ent_link_opts *o = &ep->opts;
    // a peer that keeps failing the handshake is retried at most every 5 s
    int ivl_max = 5000;
    ENT_ZMQ_CHECK(zmq_setsockopt(ep->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max));
    if (o->curve == NULL) return start_monitor(ep); // handshake failures said as such
    if (!zmq_has("curve"))
        return ent_fail(ENT_ERR_INTERNAL, "link %s: this libzmq was built without CURVE",
                        ep->address);
    if (ep->is_router) {
        ep->allow = malloc(sizeof *ep->allow * (size_t)o->nallow);
        ENT_ALLOC_CHECK(ep->allow, "the allowlist");
        memcpy(ep->allow, o->allow, sizeof *ep->allow * (size_t)o->nallow);
        ep->nallow = o->nallow;
        ep->zap = zmq_socket(ep->ctx, ZMQ_REP);
        if (ep->zap == NULL)
            return ent_fail(ENT_ERR_INTERNAL, "link %s: zmq_socket: %s", ep->address,
                            zmq_strerror(zmq_errno()));
        int zero = 0;
        zmq_setsockopt(ep->zap, ZMQ_LINGER, &zero, sizeof zero);
        ENT_ZMQ_CHECK(zmq_bind(ep->zap, "inproc://zeromq.zap.01"));
        if (pthread_create(&ep->zap_thread, NULL, zap_loop, ep) != 0)
            return ent_fail(ENT_ERR_INTERNAL, "link %s: cannot start the ZAP handler thread",
                            ep->address);
        ep->zap_started = 1;
        int one = 1;
        ENT_ZMQ_CHECK(zmq_setsockopt(ep->sock, ZMQ_CURVE_SERVER, &one, sizeof one));
        ENT_ZMQ_CHECK(zmq_setsockopt(ep->sock, ZMQ_ZAP_DOMAIN, "entente", 7));
    } else {
        ENT_ZMQ_CHECK(zmq_setsockopt(ep->sock, ZMQ_CURVE_SERVERKEY, o->server_key,
                                     ENT_LINK_KEY_TEXT + 1));
        ENT_ZMQ_CHECK(zmq_setsockopt(ep->sock, ZMQ_CURVE_PUBLICKEY, o->curve->public_key,
                                     ENT_LINK_KEY_TEXT + 1));
    }
    ENT_ZMQ_CHECK(zmq_setsockopt(ep->sock, ZMQ_CURVE_SECRETKEY, o->curve->secret_key,
                                 ENT_LINK_KEY_TEXT + 1));
    return start_monitor(ep);
}

// ---------------------------------------------------------------------------
// opening and closing

static int z85_ok(const char *text) {
    uint8_t raw[32];
    return text != NULL && strlen(text) == ENT_LINK_KEY_TEXT && zmq_z85_decode(raw, text) != NULL;
}

static ent_status check_opts(const ent_link_opts *o, const char *endpoint, int router) {
    if (o->curve != NULL) {
        if (!z85_ok(o->curve->public_key) || !z85_ok(o->curve->secret_key))
            return ent_fail(ENT_ERR_USAGE, "link %s: CURVE needs this side's whole key pair",
                            endpoint);
        if (router && (o->allow == NULL || o->nallow < 1))
            return ent_fail(ENT_ERR_USAGE, "link %s: a CURVE coordinator needs an allowlist "
                            "of at least one site key", endpoint);
        for (int i = 0; router && i < o->nallow; i++)
            if (!z85_ok(o->allow[i].public_key) || !ent_link_name_ok(o->allow[i].name))
                return ent_fail(ENT_ERR_USAGE, "link %s: allowlist entry %d is not a named "
                                "public key", endpoint, i);
        if (!router && !z85_ok(o->server_key))
            return ent_fail(ENT_ERR_USAGE, "link %s: a CURVE site needs the coordinator's "
                            "public key", endpoint);
    } else if (o->allow != NULL || o->server_key != NULL) {
        return ent_fail(ENT_ERR_USAGE, "link %s: an allowlist or a server key without this "
                        "side's own key pair", endpoint);
    }
    if (o->max_payload < 1 || o->max_payload > ENT_LINK_PAYLOAD_MAX)
        return ent_fail(ENT_ERR_USAGE, "link %s: max_payload %zu, not in 1..%u", endpoint,
                        o->max_payload, ENT_LINK_PAYLOAD_MAX);
    if (o->send_timeout_ms < -1 || o->linger_ms < -1)
        return ent_fail(ENT_ERR_USAGE, "link %s: send_timeout_ms %d and linger_ms %d must be "
                        ">= -1", endpoint, o->send_timeout_ms, o->linger_ms);
    return ENT_OK;
}

// Context and socket with the options both sides share.
static ent_status endpoint_open(const char *endpoint, const ent_link_opts *opts, int type,
                                ent_link_endpoint_t **out) {
    *out = NULL;
    if (endpoint == NULL || endpoint[0] == '\0')
        return ent_fail(ENT_ERR_USAGE, "link: no endpoint given (expected tcp://HOST:PORT)");
    ent_link_opts o = opts ? *opts : ent_link_opts_default();
    ENT_CHECK(check_opts(&o, endpoint, type == ZMQ_ROUTER));
    ent_link_endpoint_t *ep = calloc(1, sizeof *ep);
    ENT_ALLOC_CHECK(ep, "a link endpoint");
    pthread_mutex_init(&ep->auth_lock, NULL);
    ep->opts = o;
    ep->is_router = type == ZMQ_ROUTER;
    snprintf(ep->address, sizeof ep->address, "%s", endpoint);
    ent_status st = ENT_OK;
    ep->ctx = zmq_ctx_new();
    if (ep->ctx == NULL) {
        st = ent_fail(ENT_ERR_INTERNAL, "link %s: zmq_ctx_new: %s", endpoint,
                      zmq_strerror(zmq_errno()));
        goto fail;
    }
    ep->sock = zmq_socket(ep->ctx, type);
    if (ep->sock == NULL) {
        st = ent_fail(ENT_ERR_INTERNAL, "link %s: zmq_socket: %s", endpoint,
                      zmq_strerror(zmq_errno()));
        goto fail;
    }
    int64_t maxmsg = (int64_t)o.max_payload;
    if (maxmsg < ENT_LINK_HEADER_BYTES) maxmsg = ENT_LINK_HEADER_BYTES; // the header frame
    int one = 1;
    ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg), fail);
    ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_LINGER, &o.linger_ms, sizeof(int)), fail);
    ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_SNDTIMEO, &o.send_timeout_ms, sizeof(int)),
                       fail);
    if (o.send_queue > 0)
        ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_SNDHWM, &o.send_queue, sizeof(int)), fail);
    if (o.send_buffer > 0)
        ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_SNDBUF, &o.send_buffer, sizeof(int)), fail);
    // dead links across a WAN or a NAT show up instead of hanging
    ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_TCP_KEEPALIVE, &one, sizeof one), fail);
    if (ep->is_router)
        ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one),
                           fail);
    else
        ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_IMMEDIATE, &one, sizeof one), fail);
    ENT_CHECK_GOTO(curve_setup(ep), fail);
    *out = ep;
    return ENT_OK;
fail:
    ent_link_close(&ep);
    return st;
}

ent_status ent_link_router_bind(const char *endpoint, const ent_link_opts *opts,
                                ent_link_endpoint_t **out) {
    ENT_CHECK(endpoint_open(endpoint, opts, ZMQ_ROUTER, out));
    ent_link_endpoint_t *ep = *out;
    ent_status st = ENT_OK;
    if (zmq_bind(ep->sock, endpoint) != 0) {
        st = ent_fail(ENT_ERR_IO, "link: cannot bind the coordinator to %s: %s", endpoint,
                      zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t n = sizeof ep->address;
    ENT_ZMQ_CHECK_GOTO(zmq_getsockopt(ep->sock, ZMQ_LAST_ENDPOINT, ep->address, &n), fail);
    return ENT_OK;
fail:
    ent_link_close(out);
    return st;
}

ent_status ent_link_dealer_connect(const char *endpoint, const ent_link_opts *opts,
                                   ent_link_endpoint_t **out) {
    ENT_CHECK(endpoint_open(endpoint, opts, ZMQ_DEALER, out));
    ent_link_endpoint_t *ep = *out;
    snprintf(ep->peer_name, sizeof ep->peer_name, "coordinator %.100s", endpoint);
    if (zmq_connect(ep->sock, endpoint) != 0) {
        ent_status st = ent_fail(ENT_ERR_USAGE, "link: cannot connect to the coordinator at "
                                 "%s: %s", endpoint, zmq_strerror(zmq_errno()));
        ent_link_close(out);
        return st;
    }
    return ENT_OK;
}

void ent_link_close(ent_link_endpoint_t **pep) {
    if (pep == NULL || *pep == NULL) return;
    ent_link_endpoint_t *ep = *pep;
    if (ep->monitor) zmq_close(ep->monitor);
    if (ep->sock) zmq_close(ep->sock); // linger bounds how long the context waits below
    if (ep->zap && !ep->zap_started) zmq_close(ep->zap);
    if (ep->zap_started) {
        pthread_mutex_lock(&ep->auth_lock);
        ep->zap_stop = 1;
        pthread_mutex_unlock(&ep->auth_lock);
        pthread_join(ep->zap_thread, NULL); // it closes its socket
    }
    if (ep->ctx) {
        while (zmq_ctx_term(ep->ctx) != 0 && zmq_errno() == EINTR) {
        }
    }
    pthread_mutex_destroy(&ep->auth_lock);
    free(ep->allow);
    free(ep->buf);
    ent_link_buf_free(&ep->reply);
    free(ep);
    *pep = NULL;
}

// ---------------------------------------------------------------------------
// sending

static const char *dest_name(const ent_link_endpoint_t *ep, const ent_link_peer *to) {
    return ep->is_router ? to->name : ep->peer_name;
}

// One frame; more: another follows.
static ent_status send_frame(ent_link_endpoint_t *ep, const ent_link_peer *to, const void *p,
                             size_t n, int more, int flags) {
    if (zmq_send(ep->sock, p, n, (more ? ZMQ_SNDMORE : 0) | flags) >= 0) {
        ep->send_full = 0;
        return ENT_OK;
    }
    int e = zmq_errno();
    ep->send_full = e == EAGAIN;
    if (e == EAGAIN && (flags & ZMQ_DONTWAIT))
        return ent_fail(ENT_ERR_IO, "link: sending to %s: its queue is full", dest_name(ep, to));
    if (e == EAGAIN && ep->is_router)
        return ent_fail(ENT_ERR_IO, "link: sending to %s: its queue stayed full for %d ms",
                        dest_name(ep, to), ep->opts.send_timeout_ms);
    if (e == EAGAIN) {
        drain_monitor(ep);
        if (ep->handshake_error[0])
            return ent_fail(ENT_ERR_IO, "link: sending to %s: the secure handshake failed: %s",
                            dest_name(ep, to), ep->handshake_error);
        return ent_fail(ENT_ERR_IO, "link: sending to %s: no connection (or its queue stayed "
                        "full) for %d ms: is the coordinator running and reachable?",
                        dest_name(ep, to), ep->opts.send_timeout_ms);
    }
    if (e == EHOSTUNREACH)
        return ent_fail(ENT_ERR_IO, "link: sending to %s: not connected (it left, or never was)",
                        dest_name(ep, to));
    return ent_fail(ENT_ERR_IO, "link: sending to %s: %s", dest_name(ep, to), zmq_strerror(e));
}

static ent_status send_message(ent_link_endpoint_t *ep, const ent_link_peer *to,
                               const uint8_t *msg, size_t len, int flags) {
    if (ep->is_router) ENT_CHECK(send_frame(ep, to, to->id, to->id_len, 1, flags));
    // once the first frame is queued, ZeroMQ takes the rest of the message
    ENT_CHECK(send_frame(ep, to, msg, ENT_LINK_HEADER_BYTES, 1, flags));
    ENT_CHECK(send_frame(ep, to, msg + ENT_LINK_HEADER_BYTES, len - ENT_LINK_HEADER_BYTES, 0,
                         flags));
    ep->stats.messages_sent++;
    ep->stats.bytes_sent += len;
    return ENT_OK;
}

int ent_link_send_was_full(const ent_link_endpoint_t *ep) { return ep != NULL && ep->send_full; }

static ent_status link_send(ent_link_endpoint_t *ep, const ent_link_peer *to, const void *msg,
                            size_t len, int flags) {
    if (ep->is_router && (to == NULL || to->id_len == 0 || to->id_len > ENT_LINK_PEER_ID_MAX))
        return ent_fail(ENT_ERR_USAGE, "link %s: a ROUTER sends to a peer it received from",
                        ep->address);
    if (!ep->is_router && to != NULL)
        return ent_fail(ENT_ERR_USAGE, "link %s: a DEALER sends only to its coordinator (to: "
                        "NULL)", ep->address);
    // never put on the wire what a peer would refuse
    if (ent_link_decode_header(msg, len, NULL, NULL) != ENT_OK)
        return ent_fail(ENT_ERR_USAGE, "link: refusing to send to %s: %s", dest_name(ep, to),
                        ent_last_error());
    if (len - ENT_LINK_HEADER_BYTES > ep->opts.max_payload)
        return ent_fail(ENT_ERR_USAGE, "link: refusing to send to %s: a payload of %zu bytes, "
                        "over this link's max_payload of %zu", dest_name(ep, to),
                        len - ENT_LINK_HEADER_BYTES, ep->opts.max_payload);
    return send_message(ep, to, msg, len, flags);
}

ent_status ent_link_send(ent_link_endpoint_t *ep, const ent_link_peer *to, const void *msg,
                         size_t len) {
    return link_send(ep, to, msg, len, 0);
}

ent_status ent_link_send_now(ent_link_endpoint_t *ep, const ent_link_peer *to, const void *msg,
                             size_t len) {
    return link_send(ep, to, msg, len, ZMQ_DONTWAIT);
}

// ---------------------------------------------------------------------------
// receiving

// "127.0.0.1 [id 0080000001]"
static void name_peer(ent_link_peer *peer, zmq_msg_t *frame_with_metadata) {
    char hex[2 * 16 + 3] = "";
    size_t n = peer->id_len < 16 ? peer->id_len : 16;
    for (size_t i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", peer->id[i]);
    if (peer->id_len > 16) strcat(hex, "..");
    const char *addr = frame_with_metadata ? zmq_msg_gets(frame_with_metadata, "Peer-Address")
                                           : NULL;
    const char *user = frame_with_metadata ? zmq_msg_gets(frame_with_metadata, "User-Id") : NULL;
    if (user != NULL) snprintf(peer->user, sizeof peer->user, "%s", user);
    if (addr != NULL)
        snprintf(peer->name, sizeof peer->name, "%.64s [id %s]", addr, hex);
    else
        snprintf(peer->name, sizeof peer->name, "peer [id %s]", hex);
}

// Records a refused message: counted, logged, and on a ROUTER answered.
// reason: "message from PEER: what was wrong".
static void drop(ent_link_endpoint_t *ep, const ent_link_peer *from, uint16_t code,
                 const char *reason) {
    if (strncmp(reason, "link: ", 6) == 0) reason += 6; // a decoder's message
    ep->stats.dropped++;
    snprintf(ep->stats.last_drop, sizeof ep->stats.last_drop, "%s", reason);
    ent_log_warn("link %s: dropped a %s", ep->address, reason);
    if (!ep->is_router || !ep->opts.reply_errors) return;
    ent_link_reason r = {.code = code};
    link_text_sanitize(r.text, sizeof r.text, reason);
    if (ent_link_encode_error(&ep->reply, 0, 0, &r) != ENT_OK) return;
    // best effort: a peer that does not read does not hold the coordinator up
    if (send_message(ep, from, ep->reply.data, ep->reply.len, ZMQ_DONTWAIT) != ENT_OK)
        ent_log_warn("link %s: %s", ep->address, ent_last_error());
}

enum { FRAMES_KEPT = 4 };

// Reads every frame of one message (ZeroMQ delivers them together) and
// checks them; *ok = 1 when *in holds a message.
static ent_status read_message(ent_link_endpoint_t *ep, ent_link_incoming *in, int *ok) {
    zmq_msg_t frames[FRAMES_KEPT];
    size_t nframes = 0, kept = 0, total = 0;
    ent_status st = ENT_OK;
    *ok = 0;
    for (;;) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, ep->sock, ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&f);
            if (nframes == 0 && (e == EAGAIN || e == EINTR)) goto done; // nothing after all
            st = ent_fail(ENT_ERR_IO, "link %s: receiving: %s", ep->address, zmq_strerror(e));
            goto done;
        }
        nframes++;
        total += zmq_msg_size(&f);
        int more = zmq_msg_more(&f);
        if (kept < FRAMES_KEPT)
            frames[kept++] = f;
        else
            zmq_msg_close(&f);
        if (!more) break;
    }
    ep->stats.bytes_received += total;

    size_t first = 0; // the header frame's index
    memset(&in->peer, 0, sizeof in->peer);
    in->peer.fd = -1;
    if (ep->is_router) {
        // ZeroMQ's routing id: 1..255 bytes
        first = 1;
        in->peer.id_len = zmq_msg_size(&frames[0]);
        if (in->peer.id_len > ENT_LINK_PEER_ID_MAX) in->peer.id_len = ENT_LINK_PEER_ID_MAX;
        memcpy(in->peer.id, zmq_msg_data(&frames[0]), in->peer.id_len);
        // the connection's socket, from a frame that came off it (the routing
        // id frame is the ROUTER's own); ZMQ_SRCFD is deprecated, and the only way
        int fd = kept > 1 ? zmq_msg_get(&frames[1], ZMQ_SRCFD) : -1;
        in->peer.fd = fd >= 0 ? fd : -1;
        name_peer(&in->peer, kept > 1 ? &frames[1] : NULL);
    } else {
        snprintf(in->peer.name, sizeof in->peer.name, "%s", ep->peer_name);
    }
    char reason[256];
    size_t got_frames = nframes - first;
    if (got_frames != 2) {
        snprintf(reason, sizeof reason,
                 "message from %s: %zu frames, a link message has 2 (header, payload)",
                 in->peer.name, got_frames);
        drop(ep, &in->peer, ENT_LINK_ERR_MALFORMED, reason);
        goto done;
    }
    size_t hlen = zmq_msg_size(&frames[first]), plen = zmq_msg_size(&frames[first + 1]);
    if (hlen != ENT_LINK_HEADER_BYTES) {
        snprintf(reason, sizeof reason, "message from %s: a header frame of %zu bytes, "
                 "expected %d", in->peer.name, hlen, ENT_LINK_HEADER_BYTES);
        drop(ep, &in->peer, ENT_LINK_ERR_MALFORMED, reason);
        goto done;
    }
    if (plen > ep->opts.max_payload) { // libzmq's ZMQ_MAXMSGSIZE should have cut it already
        snprintf(reason, sizeof reason, "message from %s: a payload of %zu bytes, over the "
                 "limit of %zu", in->peer.name, plen, ep->opts.max_payload);
        drop(ep, &in->peer, ENT_LINK_ERR_MALFORMED, reason);
        goto done;
    }
    size_t len = hlen + plen;
    if (len > ep->buf_cap) {
        uint8_t *b = realloc(ep->buf, len);
        if (b == NULL) {
            st = ent_fail(ENT_ERR_NOMEM, "link %s: out of memory for a message of %zu bytes "
                          "from %s", ep->address, len, in->peer.name);
            goto done;
        }
        ep->buf = b;
        ep->buf_cap = len;
    }
    memcpy(ep->buf, zmq_msg_data(&frames[first]), hlen);
    if (plen) memcpy(ep->buf + hlen, zmq_msg_data(&frames[first + 1]), plen);
    if (ent_link_decode_header(ep->buf, len, in->peer.name, &in->header) != ENT_OK) {
        uint16_t version = (uint16_t)(ep->buf[4] | ep->buf[5] << 8);
        int wrong_version = version != ENT_LINK_VERSION &&
                            memcmp(ep->buf, "ENTL", 4) == 0;
        drop(ep, &in->peer, wrong_version ? ENT_LINK_ERR_VERSION : ENT_LINK_ERR_MALFORMED,
             ent_last_error());
        goto done;
    }
    in->bytes = ep->buf;
    in->len = len;
    ep->stats.messages_received++;
    *ok = 1;
done:
    for (size_t i = 0; i < kept; i++) zmq_msg_close(&frames[i]);
    return st;
}

ent_status ent_link_recv(ent_link_endpoint_t *ep, int timeout_ms, ent_link_incoming *in,
                         int *got) {
    *got = 0;
    double deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        long wait = -1;
        if (timeout_ms >= 0) {
            double left = deadline - now_ms();
            wait = left > 0 ? (long)(left + 0.999) : 0;
        }
        zmq_pollitem_t items[2] = {{.socket = ep->sock, .events = ZMQ_POLLIN},
                                   {.socket = ep->monitor, .events = ZMQ_POLLIN}};
        int n = zmq_poll(items, ep->monitor ? 2 : 1, wait);
        zmq_pollitem_t item = items[0];
        if (n > 0 && ep->monitor && (items[1].revents & ZMQ_POLLIN)) drain_monitor(ep);
        if (n < 0) {
            if (zmq_errno() == EINTR) return ENT_OK; // the caller looks at its stop flag
            return ent_fail(ENT_ERR_IO, "link %s: waiting for a message: %s", ep->address,
                            zmq_strerror(zmq_errno()));
        }
        if (n > 0 && (item.revents & ZMQ_POLLIN)) {
            ENT_CHECK(read_message(ep, in, got));
            if (*got) return ENT_OK;
            continue; // dropped: wait on for a good one until the deadline
        }
        if (timeout_ms >= 0 && now_ms() >= deadline) return ENT_OK;
    }
}
