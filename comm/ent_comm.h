// ent_comm.h: communication inside a site.
//
// Every entente process is an MPI rank from its first line. A site's ranks
// form a 2-D grid, world = DP x TP with the TP ranks of a group adjacent
// (world rank = dp_rank * tp_size + tp_rank), so tensor parallelism stays
// inside a node. Collectives run on process groups; each group has a backend:
// MPI for host memory, NCCL for device memory (when built with CUDA).
//
// Every wait inside a collective is watched: a rank that has waited longer
// than the timeout (ent_comm_set_timeout) concludes that a peer died or hangs,
// prints which collective on which group, and exits with ENT_EXIT_PEER_LOST,
// so a job never hangs forever.
//
// The second half of this header is the coalition link: the wire protocol
// between sites and the coordinator, and ZeroMQ endpoints that carry it
// (comm/link_*.c). It needs neither MPI nor ZeroMQ's headers.
#ifndef ENT_COMM_H
#define ENT_COMM_H

#include "ent_kernels.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Exit code of a rank whose collective timed out (a peer is lost).
#define ENT_EXIT_PEER_LOST 3

typedef struct ent_comm ent_comm_t;

// Initialises MPI (a singleton when started without mpirun) and returns the
// world, which the caller owns and releases with ent_comm_finalize. MPI is
// called from one thread at a time (MPI_THREAD_FUNNELED).
ent_status ent_comm_init(int *argc, char ***argv, ent_comm_t **out);
// The same, with MPI_THREAD_MULTIPLE when `multiple` is 1 (a background
// thread that also calls MPI, e.g. asynchronous checkpoints), or
// MPI_THREAD_SERIALIZED when it is ENT_COMM_SERIALIZED (one thread at a time,
// not always the main one: the coordinator's checkpoint thread); fails with
// a clear message when the MPI library does not provide it.
#define ENT_COMM_SERIALIZED 2
ent_status ent_comm_init_threads(int *argc, char ***argv, int multiple, ent_comm_t **out);
// Finalises MPI and NULLs *comm.
void ent_comm_finalize(ent_comm_t **comm);

int ent_comm_rank(const ent_comm_t *comm);
int ent_comm_size(const ent_comm_t *comm);
// Rank among the processes on this node, and how many share the node.
int ent_comm_local_rank(const ent_comm_t *comm);
int ent_comm_local_size(const ent_comm_t *comm);
// Number of distinct nodes in the world.
int ent_comm_num_nodes(const ent_comm_t *comm);

// Bounds every wait in a collective to `seconds` (0 = no bound); see above.
void ent_comm_set_timeout(ent_comm_t *comm, double seconds);

// Combines a status across the world: every rank gets ENT_OK only if every
// rank passed ENT_OK. A rank that failed keeps its own message; the others
// get "rank N failed: see its message" (N the lowest failing rank). Watched
// like a collective: a rank that never arrives stops the others after the
// timeout with ENT_EXIT_PEER_LOST.
ent_status ent_comm_agree(ent_comm_t *comm, ent_status local);

// Puts a wait on other ranks that does not go through the collectives below
// (an agreement on a library's communicator, a collective parallel-HDF5 call)
// under the watchdog: begin before it and end after it, on the same thread.
// `what` and `where` name it in the timeout's message and must outlive it.
void ent_comm_watch_begin(const char *what, const char *where);
void ent_comm_watch_end(void);

// ---------------------------------------------------------------------------
// process groups and collectives

typedef struct ent_group ent_group_t;
typedef struct ent_request ent_request_t;

// Element types are kernels/' ent_dtype. The MPI backend moves every type;
// it reduces all but bf16 and f16 (MPI has no such types), which NCCL reduces.
typedef enum { ENT_SUM = 0, ENT_AVG, ENT_MAX, ENT_MIN } ent_op; // AVG: floating types only

int ent_group_rank(const ent_group_t *g);
int ent_group_size(const ent_group_t *g);
const char *ent_group_name(const ent_group_t *g); // "world", "dp", "tp"
const char *ent_group_backend(const ent_group_t *g); // "mpi", "nccl"
// The group's MPI communicator, for libraries that take one (parallel HDF5),
// written to *(MPI_Comm *)mpi_comm: so that this header needs no <mpi.h> and
// code that never calls MPI (the coalition link) never sees it.
void ent_group_mpi_comm(const ent_group_t *g, void *mpi_comm);

// Blocking collectives. send may equal recv (in place) for allreduce.
// reduce_scatter: send holds size x count values, recv gets this rank's count.
// allgather: send holds count values, recv gets size x count in rank order.
ent_status ent_allreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                         ent_dtype dtype, ent_op op);
ent_status ent_reduce_scatter(ent_group_t *g, const void *send, void *recv, size_t count,
                              ent_dtype dtype, ent_op op);
ent_status ent_allgather(ent_group_t *g, const void *send, void *recv, size_t count,
                         ent_dtype dtype);
ent_status ent_broadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype, int root);
ent_status ent_barrier(ent_group_t *g);

// Non-blocking variants: start the operation and return a request the caller
// owns; ent_wait completes it (and frees it), ent_test advances it.
ent_status ent_iallreduce(ent_group_t *g, const void *send, void *recv, size_t count,
                          ent_dtype dtype, ent_op op, ent_request_t **req);
ent_status ent_ireduce_scatter(ent_group_t *g, const void *send, void *recv, size_t count,
                               ent_dtype dtype, ent_op op, ent_request_t **req);
ent_status ent_iallgather(ent_group_t *g, const void *send, void *recv, size_t count,
                          ent_dtype dtype, ent_request_t **req);
ent_status ent_ibroadcast(ent_group_t *g, void *buf, size_t count, ent_dtype dtype, int root,
                          ent_request_t **req);
// Completes the request, frees it and NULLs *req (a NULL *req is a no-op).
ent_status ent_wait(ent_request_t **req);
// Advances the request without blocking; *done is set when it completed (then
// ent_wait returns at once).
ent_status ent_test(ent_request_t *req, int *done);

// ---------------------------------------------------------------------------
// the DP x TP grid of a site

typedef struct {
    ent_group_t *world, *dp, *tp; // host-memory (MPI) groups
    // groups of the same ranks for buffers in the compute backend's memory
    // (ent_grid_attach_device); NULL until attached
    ent_group_t *dp_dev, *tp_dev;
    int dp_rank, dp_size, tp_rank, tp_size;
} ent_grid;

// Splits the world into the grid; tp must divide the world size. The caller
// owns the grid (ent_grid_free). Warns when a TP group spans nodes.
ent_status ent_grid_new(ent_comm_t *comm, int tp, ent_grid **out);
// A grid of this rank alone (DP = TP = 1), e.g. for a single-rank reference.
ent_status ent_grid_new_self(ent_grid **out);
void ent_grid_free(ent_grid **grid);
// Gives the grid its DP and TP groups for the memory of backend be
// (ent_group_new_device: NCCL on be's stream where it has one), freed with
// the grid; be must outlive them. Collective over the world.
ent_status ent_grid_attach_device(ent_grid *grid, ent_backend_t *be);

// A group of the same ranks as `host` for buffers in the memory of backend
// be (name: ent_group_backend):
//   - "nccl" when be has a stream (ent_backend_stream) and this build has
//     NCCL: its collectives are queued on be's stream, on that stream's GPU,
//     in order with be's ops. A collective reads its input after every op be
//     queued before it, and be's later ops see its result, with no
//     synchronisation in between; a blocking one returns once the stream has
//     passed it (and everything queued before it); a non-blocking one
//     returns once queued, and ent_wait / ent_test follow an event recorded
//     right after it. Creating it is collective over `host`'s ranks (NCCL's
//     bootstrap), and fails on every rank when one cannot join.
//   - "mpi", `host`'s MPI, when be's memory is host memory (the cpu backend,
//     which has no stream: its ops have finished when they return);
//   - otherwise "mpi-staged": MPI through host buffers that be's copies fill
//     and empty, so a device whose memory the host must not touch still runs
//     every collective.
// The caller owns it (ent_group_free); `host` and be must outlive it.
ent_status ent_group_new_device(const ent_group_t *host, ent_backend_t *be, ent_group_t **out);

// A device-memory (NCCL) twin of an MPI group: same ranks, NCCL unique id
// distributed with MPI_Bcast, this rank on GPU local_rank, collectives on a
// stream of the group's own, ordered with no other work: the caller makes
// their inputs ready first (ent_group_new_device orders them with a
// backend's stream instead). Fails with a clear message when there are fewer
// GPUs on the node than ranks, or when this build has no NCCL. The caller
// owns it (ent_group_free).
ent_status ent_group_new_nccl(ent_comm_t *comm, ent_group_t *mpi_group, ent_group_t **out);
void ent_group_free(ent_group_t **g);
// 1 when this build has the NCCL backend.
int ent_comm_have_nccl(void);

// ===========================================================================
// coalition link: wire protocol v2 (comm/link_proto.c) and ZeroMQ endpoints
// (comm/link_zmq.c). docs/protocol.md is the specification.
//
// The link knows bytes and peers, not models: a DELTA or UPDATE chunk carries
// compressed bytes, a codec id and a range of the parameter table's global
// layout, and nothing here interprets them. Every message is a fixed 36-byte
// little-endian header (magic, version, type, flags, site, round, payload
// length, payload CRC32C, header CRC32C) followed by its payload. Decoders
// check the magic, the version, both checksums, the type, every length,
// bound and string before they fill their output, and fail with a message
// naming the peer; they never read outside the bytes they are given.

#define ENT_LINK_MAGIC 0x4c544e45u     // the bytes "ENTL"
#define ENT_LINK_VERSION 3             // the protocol version this build speaks (2: STATE, ERROR 9;
                                       // 3: HELLO's tokens_per_step, LEDGER)
#define ENT_LINK_HEADER_BYTES 36
#define ENT_LINK_PAYLOAD_MAX (64u << 20) // largest payload of any message
#define ENT_LINK_NAME_MAX 64           // site name, bytes
#define ENT_LINK_TEXT_MAX 1024         // LEAVE and ERROR text, bytes
#define ENT_LINK_CHUNK_FIXED_BYTES 50  // a chunk's payload before its data
#define ENT_LINK_CHUNK_DATA_MAX (ENT_LINK_PAYLOAD_MAX - ENT_LINK_CHUNK_FIXED_BYTES)
#define ENT_LINK_CHUNKS_MAX (1u << 24)      // chunks of one DELTA or UPDATE
#define ENT_LINK_PARAMS_MAX (1ull << 40)    // parameters in a table
#define ENT_LINK_ROUND_MAX ((1ull << 53) - 1) // rounds and token counts stay exact in JSON
#define ENT_LINK_INNER_STEPS_MAX (1u << 20)
#define ENT_LINK_RANKS_MAX (1u << 20)       // a site's DP, TP and DP x TP
#define ENT_LINK_RATE_MAX 1e15              // tokens/s
#define ENT_LINK_ROUND_SECONDS_MAX 1e6
#define ENT_LINK_HEARTBEAT_MS_MIN 10
#define ENT_LINK_HEARTBEAT_MS_MAX 600000
#define ENT_LINK_LEDGER_MAX (8u << 20) // a LEDGER's text, bytes

typedef enum {
    ENT_LINK_HELLO = 1,  // site -> coordinator: who it is, what it trains
    ENT_LINK_WELCOME,    // coordinator -> site: its id, the round, the anchor's hash, defaults
    ENT_LINK_HEARTBEAT,  // either way: alive, progress, clock for round-trip times
    ENT_LINK_ROUND_PLAN, // coordinator -> site: inner steps and deadline of a round
    ENT_LINK_DELTA,      // site -> coordinator: one chunk of its compressed pseudo-gradient
    ENT_LINK_UPDATE,     // coordinator -> sites: one chunk of the compressed outer update
    ENT_LINK_LEAVE,      // site -> coordinator: it stops, and why
    ENT_LINK_ERROR,      // either way: a refusal with a reason code and text
    ENT_LINK_STATE,      // primary coordinator -> standby: one chunk of its state
    ENT_LINK_LEDGER,     // coordinator -> sites: the ledger's text after a merge
    ENT_LINK_TYPE_END    // one past the last type
} ent_link_type;

// Labels for the compressed bytes of a chunk; the link only checks that the
// id is known. The formats belong to the code that compresses.
typedef enum {
    ENT_LINK_CODEC_F32 = 0, // raw little-endian float32
    ENT_LINK_CODEC_INT8,    // blockwise int8 with per-block scales
    ENT_LINK_CODEC_INT4,    // blockwise int4 with per-block scales
    ENT_LINK_CODEC_TOPK2,   // top-k indices with 2-bit values
    ENT_LINK_CODEC_END
} ent_link_codec;

typedef enum {
    ENT_LINK_LEAVE_FINISHED = 1, // the site's run is over
    ENT_LINK_LEAVE_STOPPED,      // stopped by a signal or preemption; it may come back
    ENT_LINK_LEAVE_FAILED,       // an error ended it (the text says which)
    ENT_LINK_LEAVE_END
} ent_link_leave_code;

typedef enum {
    ENT_LINK_ERR_MALFORMED = 1, // a message failed a decoder's checks
    ENT_LINK_ERR_VERSION,       // a protocol version the receiver does not speak
    ENT_LINK_ERR_INCOMPATIBLE,  // another model shape or configuration
    ENT_LINK_ERR_UNKNOWN_SITE,  // a site id the coordinator never gave out
    ENT_LINK_ERR_STALE_ROUND,   // a contribution to a round that is closed
    ENT_LINK_ERR_DUPLICATE_SITE, // a site name already joined
    ENT_LINK_ERR_INTERNAL,      // the sender failed; the text says how
    ENT_LINK_ERR_NOT_ITS_KEY,   // a site name other than the one its CURVE key was admitted as
    ENT_LINK_ERR_NOT_PRIMARY,   // a coordinator that does not serve the coalition: a standby
                                // that has not taken over, or (to a primary) one that has
    ENT_LINK_ERR_END
} ent_link_error_code;

// The header of every message (decoded; magic and checksums are checked
// and not kept).
typedef struct {
    uint16_t version;     // ENT_LINK_VERSION
    uint16_t type;        // ent_link_type
    uint32_t flags;       // versions 1 to 3 define none: always 0
    uint32_t site;        // the site it comes from or goes to; 0 before WELCOME
    uint64_t round;       // <= ENT_LINK_ROUND_MAX
    uint32_t payload_len; // bytes after the header
    uint32_t payload_crc; // CRC32C of the payload
} ent_link_header;

// HELLO: the first message of a site.
typedef struct {
    uint16_t max_version;             // highest protocol version the site speaks (>= 1)
    char name[ENT_LINK_NAME_MAX + 1]; // 1-64 bytes of [A-Za-z0-9._-], not starting with '.'
    uint64_t shape_hash;              // of the model's parameter table (names, shapes)
    uint64_t config_hash;             // of the settings every site must share
    uint32_t dp_size, tp_size;        // 1..ENT_LINK_RANKS_MAX each, and their product
    double tokens_per_s;              // the site's estimate: finite, 0..ENT_LINK_RATE_MAX
    uint64_t tokens_per_step;         // tokens of one inner step (batch x context):
                                      // 1..ENT_LINK_ROUND_MAX
} ent_link_hello;

// WELCOME: the coordinator's answer. The site id it assigns and the current
// round are the header's site (>= 1) and round.
typedef struct {
    uint64_t anchor_hash;  // of the coordinator's anchor parameters at that round
    uint32_t inner_steps;  // default inner steps per round: 1..ENT_LINK_INNER_STEPS_MAX
    double round_seconds;  // target length of a round (0: fixed inner_steps), finite
    uint32_t heartbeat_ms; // how often to send HEARTBEAT: HEARTBEAT_MS_MIN..MAX
    uint16_t codec;        // default codec of deltas (ent_link_codec)
    uint32_t chunk_bytes;  // largest chunk data to send: 1..ENT_LINK_CHUNK_DATA_MAX
} ent_link_welcome;

// HEARTBEAT, either way.
typedef struct {
    uint64_t time_ns;    // the sender's monotonic clock
    uint64_t echo_ns;    // the last time_ns it received from the other side (0: none yet)
    uint32_t steps_done; // inner steps done in the header's round, <= INNER_STEPS_MAX
    double tokens_per_s; // current throughput: finite, 0..ENT_LINK_RATE_MAX
} ent_link_heartbeat;

// ROUND_PLAN: the header's round for the header's site.
typedef struct {
    uint32_t inner_steps; // 1..ENT_LINK_INNER_STEPS_MAX
    uint32_t deadline_ms; // send the round's DELTA within this long of receipt (>= 1)
} ent_link_round_plan;

// DELTA and UPDATE: one chunk of a compressed vector over the parameter
// table's global layout.
typedef struct {
    uint32_t index, count;  // chunk index of count: index < count <= ENT_LINK_CHUNKS_MAX
    uint64_t total;         // parameters in the table: 1..ENT_LINK_PARAMS_MAX
    uint64_t offset, length; // parameters [offset, offset + length) of it; length >= 1
    uint16_t codec;         // ent_link_codec
    uint64_t anchor_hash;   // DELTA: the anchor it was computed from; UPDATE: the anchor after it
    uint64_t tokens;        // DELTA: the site's tokens in the round; UPDATE: tokens merged
                            // (<= ENT_LINK_ROUND_MAX)
    const uint8_t *data;    // compressed bytes; after decoding, a view into the message
    size_t data_len;        // 1..ENT_LINK_CHUNK_DATA_MAX
} ent_link_chunk;

// LEDGER: the coalition's ledger as JSON text (the link checks its size
// and bytes, not its JSON). The header's round: the rounds merged.
typedef struct {
    const char *text; // after decoding, a view into the message (not NUL-terminated)
    size_t len;       // 1..ENT_LINK_LEDGER_MAX bytes, none below 0x20 nor 0x7f
} ent_link_ledger;

// LEAVE (code: ent_link_leave_code) and ERROR (code: ent_link_error_code).
typedef struct {
    uint16_t code;
    char text[ENT_LINK_TEXT_MAX + 1]; // 0-1024 bytes, none below 0x20 nor 0x7f
} ent_link_reason;

// A growable byte buffer the encoders write into. Zero-initialise it; the
// caller owns it and releases it with ent_link_buf_free.
typedef struct {
    uint8_t *data;
    size_t len, cap;
} ent_link_buf;
void ent_link_buf_free(ent_link_buf *buf);

// 1 when name is a valid site name (1-64 bytes of A-Z a-z 0-9 . _ -, not
// starting with '.'), as HELLO requires; 0 otherwise.
int ent_link_name_ok(const char *name);

// "HELLO", ..., or "unknown" for a value that is no type.
const char *ent_link_type_name(int type);

// CRC32C (Castagnoli, reflected, as iSCSI and ext4): pass 0 to start and the
// previous result to continue over more bytes.
uint32_t ent_link_crc32c(uint32_t crc, const void *data, size_t n);

// Checks the header of the message in msg[0..len) and the payload's checksum;
// *out (may be NULL) gets the header. `peer` names the sender in the error
// message (may be NULL).
ent_status ent_link_decode_header(const void *msg, size_t len, const char *peer,
                                  ent_link_header *out);

// Encoders: replace out's contents with one whole message (header and
// payload) to `site` in `round`, after checking m against the same bounds
// the decoder checks (ENT_ERR_USAGE naming the field when it fails).
// Decoders: check everything (ent_link_decode_header, then the type, the
// payload's exact length and every field) before they fill *m; hdr may be
// NULL. On failure *m is untouched and the message names the peer.
ent_status ent_link_encode_hello(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_hello *m);
ent_status ent_link_decode_hello(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_hello *m);
ent_status ent_link_encode_welcome(ent_link_buf *out, uint32_t site, uint64_t round,
                                   const ent_link_welcome *m);
ent_status ent_link_decode_welcome(const void *msg, size_t len, const char *peer,
                                   ent_link_header *hdr, ent_link_welcome *m);
ent_status ent_link_encode_heartbeat(ent_link_buf *out, uint32_t site, uint64_t round,
                                     const ent_link_heartbeat *m);
ent_status ent_link_decode_heartbeat(const void *msg, size_t len, const char *peer,
                                     ent_link_header *hdr, ent_link_heartbeat *m);
ent_status ent_link_encode_round_plan(ent_link_buf *out, uint32_t site, uint64_t round,
                                      const ent_link_round_plan *m);
ent_status ent_link_decode_round_plan(const void *msg, size_t len, const char *peer,
                                      ent_link_header *hdr, ent_link_round_plan *m);
ent_status ent_link_encode_delta(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_chunk *m);
ent_status ent_link_decode_delta(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_chunk *m);
ent_status ent_link_encode_update(ent_link_buf *out, uint32_t site, uint64_t round,
                                  const ent_link_chunk *m);
ent_status ent_link_decode_update(const void *msg, size_t len, const char *peer,
                                  ent_link_header *hdr, ent_link_chunk *m);
// STATE: the same payload as DELTA and UPDATE (docs/protocol.md).
ent_status ent_link_encode_state(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_chunk *m);
ent_status ent_link_decode_state(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_chunk *m);
ent_status ent_link_encode_ledger(ent_link_buf *out, uint32_t site, uint64_t round,
                                  const ent_link_ledger *m);
ent_status ent_link_decode_ledger(const void *msg, size_t len, const char *peer,
                                  ent_link_header *hdr, ent_link_ledger *m);
ent_status ent_link_encode_leave(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_reason *m);
ent_status ent_link_decode_leave(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_reason *m);
ent_status ent_link_encode_error(ent_link_buf *out, uint32_t site, uint64_t round,
                                 const ent_link_reason *m);
ent_status ent_link_decode_error(const void *msg, size_t len, const char *peer,
                                 ent_link_header *hdr, ent_link_reason *m);

// ---------------------------------------------------------------------------
// coalition link: ZeroMQ endpoints
//
// The coordinator binds a ROUTER, each site's leader connects a DEALER. A
// message travels as two frames, the 36-byte header and the payload (empty
// or not), so a receiver knows each frame's size before it reads the next.
// An endpoint belongs to one thread at a time (ZeroMQ sockets are not
// thread-safe) and has its own ZeroMQ context.

typedef struct ent_link_endpoint ent_link_endpoint_t;

// ---- CURVE keys (comm/link_keys.c) ----
// A key is 32 bytes, written as 40 characters of Z85 (ZeroMQ's text form).
// Key files are text, one `field = value` a line, '#' comments:
//   NAME.key  name, public, secret  (the secret: mode 0600, never shared)
//   NAME.pub  name, public          (what a coordinator's allowlist holds)
#define ENT_LINK_KEY_TEXT 40
typedef struct {
    char name[ENT_LINK_NAME_MAX + 1];      // a site name (ent_link_name_ok)
    char public_key[ENT_LINK_KEY_TEXT + 1]; // Z85
    char secret_key[ENT_LINK_KEY_TEXT + 1]; // Z85; "" for a public key alone
} ent_link_keypair;

// A fresh key pair named `name` (ENT_ERR_USAGE for a name that is not a
// valid site name; ENT_ERR_INTERNAL when this libzmq has no CURVE).
ent_status ent_link_keygen(const char *name, ent_link_keypair *out);
// Writes DIR/NAME.key (mode 0600) and DIR/NAME.pub, each atomically; an
// existing file is refused (naming it) unless force.
ent_status ent_link_key_write(const char *dir, const ent_link_keypair *kp, int force);
// Reads a key file: a .key gives both keys (checked to be a pair), a .pub
// the public key alone (secret_key ""). need_secret: a .pub is refused.
// Every defect is ENT_ERR_INPUT naming the file (and the line).
ent_status ent_link_key_read(const char *path, int need_secret, ent_link_keypair *out);
// Every NAME.pub in dir (a directory) or the one file `dir` names, sorted by
// name; two files with the same name or key are refused. The caller frees
// *keys (free()); an allowlist with no key is ENT_ERR_INPUT.
ent_status ent_link_allowlist_load(const char *dir, ent_link_keypair **keys, int *n);
// A short fingerprint of a Z85 public key for logs: its first 8 characters
// and the CRC32C of the 32 bytes ("rq::7&Ka..3f9e02c1"); "(invalid key)" if it
// does not decode. buf holds at least 24 bytes.
const char *ent_link_key_fingerprint(const char *public_key, char *buf, size_t cap);

typedef struct {
    // Largest payload frame accepted (ZMQ_MAXMSGSIZE, at most and by default
    // ENT_LINK_PAYLOAD_MAX). libzmq closes the connection of a peer that
    // sends a larger frame while reading it: nothing of it is delivered.
    size_t max_payload;
    int send_timeout_ms;  // a send not queued within this fails (default 10000; -1: wait)
    int linger_ms;        // how long closing waits for queued messages to leave (default 2000)
    int reply_errors;     // ROUTER: answer a dropped message with an ERROR (default 1)
    // messages queued for a peer before a send waits, or fails (ZMQ_SNDHWM;
    // 0, the default: ZeroMQ's own, 1000)
    int send_queue;
    // the kernel's send buffer of each connection, bytes (ZMQ_SNDBUF; 0, the
    // default: the system's, which grows with the connection)
    int send_buffer;
    // CURVE (CurveZMQ: authentication and encryption). NULL `curve`: plaintext.
    // ROUTER: curve is the coordinator's own key pair, and only the clients
    // whose public keys are in `allow` (nallow of them) get through the
    // handshake (a ZAP handler); each message then carries the name its
    // key was admitted under (ent_link_peer.user). DEALER: curve is the
    // site's key pair and server_key the coordinator's public key (Z85).
    const ent_link_keypair *curve;
    const ent_link_keypair *allow;
    int nallow;
    const char *server_key;
} ent_link_opts;

// The defaults above.
ent_link_opts ent_link_opts_default(void);

#define ENT_LINK_PEER_ID_MAX 255

// Who sent a message, and where to send an answer.
typedef struct {
    uint8_t id[ENT_LINK_PEER_ID_MAX]; // the ROUTER's routing id of the peer (DEALER: none)
    size_t id_len;
    // CURVE ROUTER: the allowlist name the peer's key was admitted under
    // (the only name it may act as); "" on a plaintext link
    char user[ENT_LINK_NAME_MAX + 1];
    char name[128]; // for messages: "127.0.0.1 [id 0080000001]", or the coordinator's endpoint
    int fd;         // ROUTER: the connection's socket (for ent_link_take_disconnects); -1: none
} ent_link_peer;

// One received message that passed ent_link_decode_header.
typedef struct {
    ent_link_peer peer;
    ent_link_header header;
    const uint8_t *bytes; // header then payload, for ent_link_decode_*: owned by
    size_t len;           // the endpoint, valid until its next receive or close
} ent_link_incoming;

typedef struct {
    uint64_t messages_sent, messages_received, bytes_sent, bytes_received; // frames' bytes
    uint64_t dropped;    // messages refused on receipt (wrong frames, failed header checks)
    char last_drop[256]; // why the last one was refused ("" if none)
    uint64_t refused;    // CURVE: connections refused (a key not on the allowlist, no CURVE)
    char last_refusal[256]; // why the last one was refused ("" if none)
} ent_link_stats;

// The coordinator's side: binds a ROUTER to `endpoint` ("tcp://HOST:PORT";
// port "*" picks a free one, see ent_link_address). opts may be NULL
// (defaults). The caller owns the endpoint (ent_link_close).
ent_status ent_link_router_bind(const char *endpoint, const ent_link_opts *opts,
                                ent_link_endpoint_t **out);
// A site's side: a DEALER connected to the coordinator's endpoint. Sends
// queue only on a completed connection (ZMQ_IMMEDIATE), so a coordinator that
// cannot be reached makes the first send fail after send_timeout_ms.
ent_status ent_link_dealer_connect(const char *endpoint, const ent_link_opts *opts,
                                   ent_link_endpoint_t **out);
// The endpoint actually bound (ZMQ_LAST_ENDPOINT) or connected to. Owned by ep.
const char *ent_link_address(const ent_link_endpoint_t *ep);
// Sends one whole message from an encoder (its header is checked first). A
// ROUTER sends to `to` (a peer it received from); a DEALER passes NULL.
ent_status ent_link_send(ent_link_endpoint_t *ep, const ent_link_peer *to, const void *msg,
                         size_t len);
// The same, never waiting: a message that finds no room at once fails
// (ent_link_send_was_full then says so, and nothing of it was queued). The
// coordinator sends to its sites this way, keeping what finds no room in a
// queue of its own per site (docs/coalition.md, "Serving while merging").
ent_status ent_link_send_now(ent_link_endpoint_t *ep, const ent_link_peer *to, const void *msg,
                             size_t len);
// 1 when the last ent_link_send or ent_link_send_now on ep failed because the message found no
// room within the send timeout (the peer's queue full, or no connection
// yet): nothing of it was queued, and the same send may be tried again.
int ent_link_send_was_full(const ent_link_endpoint_t *ep);
// Waits up to timeout_ms (-1: no limit, 0: only what is there) for one
// message that passes ent_link_decode_header; *got = 1 when *in holds one,
// 0 when the time ran out or a signal interrupted the wait. Messages that
// fail (wrong number of frames, a header frame of the wrong size, a failed
// header check) are dropped, logged with the peer and the reason, counted in
// the stats and, on a ROUTER with reply_errors, answered with an ERROR.
ent_status ent_link_recv(ent_link_endpoint_t *ep, int timeout_ms, ent_link_incoming *in,
                         int *got);
void ent_link_get_stats(const ent_link_endpoint_t *ep, ent_link_stats *out);
// Changes how long a send may wait (ent_link_opts.send_timeout_ms) from now
// on: a site that retries a lost coordinator sends its HELLO without
// waiting, then sends as usual once it is answered.
ent_status ent_link_set_send_timeout(ent_link_endpoint_t *ep, int ms);
// The connections that closed since the last call (a ROUTER's: their
// ent_link_peer.fd; a DEALER's: its connection to the ROUTER), at most max
// of them into fds; returns how many. A peer whose process died (a SIGKILL,
// a crash) shows here as soon as its host's kernel closes the connection;
// one whose host or link died shows only through its silence. Read while
// ent_link_recv waits.
int ent_link_take_disconnects(ent_link_endpoint_t *ep, int *fds, int max);
// Closes the socket (waiting up to linger_ms for queued messages) and the
// context, and NULLs *ep (a NULL *ep is a no-op).
void ent_link_close(ent_link_endpoint_t **ep);

#ifdef __cplusplus
}
#endif

#endif // ENT_COMM_H
