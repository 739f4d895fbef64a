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
// CURVE (authentication and encryption) is a later issue: the options carry
// the key fields and refuse them for now.
#include "link_impl.h"

#include <errno.h>
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

void ent_link_get_stats(const ent_link_endpoint_t *ep, ent_link_stats *out) { *out = ep->stats; }

// ---------------------------------------------------------------------------
// opening and closing

static ent_status check_opts(const ent_link_opts *o, const char *endpoint) {
    if (o->curve_public_key || o->curve_secret_key || o->curve_server_key)
        return ent_fail(ENT_ERR_USAGE,
                        "link %s: CURVE keys given, but CURVE is not implemented yet in this "
                        "build (the link runs without authentication or encryption)",
                        endpoint);
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
    ENT_CHECK(check_opts(&o, endpoint));
    ent_link_endpoint_t *ep = calloc(1, sizeof *ep);
    ENT_ALLOC_CHECK(ep, "a link endpoint");
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
    // dead links across a WAN or a NAT show up instead of hanging
    ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_TCP_KEEPALIVE, &one, sizeof one), fail);
    if (ep->is_router)
        ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one),
                           fail);
    else
        ENT_ZMQ_CHECK_GOTO(zmq_setsockopt(ep->sock, ZMQ_IMMEDIATE, &one, sizeof one), fail);
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
    if (ep->sock) zmq_close(ep->sock); // linger bounds how long the context waits below
    if (ep->ctx) {
        while (zmq_ctx_term(ep->ctx) != 0 && zmq_errno() == EINTR) {
        }
    }
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
    if (zmq_send(ep->sock, p, n, (more ? ZMQ_SNDMORE : 0) | flags) >= 0) return ENT_OK;
    int e = zmq_errno();
    if (e == EAGAIN && ep->is_router)
        return ent_fail(ENT_ERR_IO, "link: sending to %s: its queue stayed full for %d ms",
                        dest_name(ep, to), ep->opts.send_timeout_ms);
    if (e == EAGAIN)
        return ent_fail(ENT_ERR_IO, "link: sending to %s: no connection (or its queue stayed "
                        "full) for %d ms: is the coordinator running and reachable?",
                        dest_name(ep, to), ep->opts.send_timeout_ms);
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

ent_status ent_link_send(ent_link_endpoint_t *ep, const ent_link_peer *to, const void *msg,
                         size_t len) {
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
    return send_message(ep, to, msg, len, 0);
}

// ---------------------------------------------------------------------------
// receiving

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

// "127.0.0.1 [id 0080000001]"
static void name_peer(ent_link_peer *peer, zmq_msg_t *frame_with_metadata) {
    char hex[2 * 16 + 3] = "";
    size_t n = peer->id_len < 16 ? peer->id_len : 16;
    for (size_t i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", peer->id[i]);
    if (peer->id_len > 16) strcat(hex, "..");
    const char *addr = frame_with_metadata ? zmq_msg_gets(frame_with_metadata, "Peer-Address")
                                           : NULL;
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
    if (ep->is_router) {
        // ZeroMQ's routing id: 1..255 bytes
        first = 1;
        in->peer.id_len = zmq_msg_size(&frames[0]);
        if (in->peer.id_len > ENT_LINK_PEER_ID_MAX) in->peer.id_len = ENT_LINK_PEER_ID_MAX;
        memcpy(in->peer.id, zmq_msg_data(&frames[0]), in->peer.id_len);
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
        zmq_pollitem_t item = {.socket = ep->sock, .events = ZMQ_POLLIN};
        int n = zmq_poll(&item, 1, wait);
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
