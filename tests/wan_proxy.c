// wan_proxy: a TCP proxy that makes a loopback link behave like a wide-area
// one, for tests and benchmarks (this kernel has no netem).
//
// Every connection accepted on --listen is joined to a new connection to
// --connect, and bytes are forwarded both ways. Each chunk read is stamped
// with the time it arrived and released to the other side one --latency-ms
// later; released bytes are then paced by a token bucket of --rate-mbit per
// direction per connection (the bucket holds 5 ms of the rate, so bursts stay
// short). A direction stops reading while its queue holds more than
// latency x rate + 1 MiB (--buffer-kib: that many KiB, with kernel socket
// buffers as small), so a fast sender is held back by TCP itself rather
// than by the proxy's memory. End of stream travels with the same latency
// (shutdown of the write side once the queue is empty); a reset or an error
// on either side resets the other. One thread, poll, non-blocking sockets.
//
// Standalone: no Entente library is used, so benchmarks can run it anywhere.

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)
#define SEND_QUANTUM 1500          // pacing never sends fewer bytes than this, unless the chunk ends
#define BUCKET_SECONDS 0.005       // the token bucket holds this much of the rate
#define BASE_QUEUE (1024 * 1024)   // queue bound beyond latency x rate
#define UNCAPPED_RATE_BPS 1.25e9   // sizes the queue bound when no rate is set (10 Gbit/s)
#define UNCAPPED_QUEUE_MAX (256.0 * 1024 * 1024)

static const char usage_text[] =
    "usage: wan_proxy --listen HOST:PORT --connect HOST:PORT [--latency-ms N]\n"
    "                 [--rate-mbit R] [--buffer-kib N] [--port-file FILE]\n"
    "\n"
    "Forwards every TCP connection accepted on --listen to --connect, both ways,\n"
    "as if over a wide-area link:\n"
    "  --listen HOST:PORT   address to accept on; port 0 picks a free port\n"
    "  --connect HOST:PORT  where each accepted connection is forwarded\n"
    "  --latency-ms N       one-way delay added to every byte, each direction\n"
    "                       (integer milliseconds, 0..600000; default 0). A round\n"
    "                       trip through the proxy gains 2 x N.\n"
    "  --rate-mbit R        bandwidth cap per direction of each connection, in\n"
    "                       megabits (10^6 bits) per second, e.g. 100 or 2.5\n"
    "                       (default: no cap). Bursts are at most 5 ms of R.\n"
    "  --buffer-kib N       bound each direction's queue at N KiB (1..65536)\n"
    "                       instead of latency x rate + 1 MiB, and ask the kernel\n"
    "                       for N KiB socket buffers: a sender is held back after\n"
    "                       little more than N KiB in flight (tests of a slow\n"
    "                       link's back-pressure)\n"
    "  --capture-dir DIR    write a copy of every byte each client sends (toward\n"
    "                       --connect) to DIR/conn-N.up, N counting connections\n"
    "                       from 1 (for tests that check what crossed the link)\n"
    "  --port-file FILE     write the listening port (a decimal number and a\n"
    "                       newline) to FILE once accepting; written whole via a\n"
    "                       rename, so a reader never sees part of it\n"
    "  --help               this text\n"
    "\n"
    "Each direction buffers at most latency x rate + 1 MiB (or --buffer-kib) and\n"
    "then stops reading, so TCP holds the sender back. End of stream (shutdown) is\n"
    "forwarded after the latency too; a reset on one side resets the other.\n"
    "SIGTERM or SIGINT stops\n"
    "the proxy; it then prints the connections and bytes forwarded each way on\n"
    "stderr and exits 0. Exit 2: bad arguments; exit 1: a socket error at start.\n"
    "\n"
    "Example, a 100 Mbit/s link with 50 ms one way in front of port 5555:\n"
    "  wan_proxy --listen 127.0.0.1:0 --port-file p --connect 127.0.0.1:5555 \\\n"
    "            --latency-ms 50 --rate-mbit 100\n";

// ---------------------------------------------------------------- time, logs

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void log_msg(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("wan_proxy: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

// ---------------------------------------------------------------- arguments

typedef struct {
  const char *listen;     // HOST:PORT
  const char *connect;    // HOST:PORT
  int64_t latency_ns;
  double rate_bps;        // bytes per second; 0 = no cap
  const char *port_file;  // NULL = none
  const char *capture;    // directory for copies of client -> target bytes; NULL = none
  size_t buffer;          // --buffer-kib in bytes; 0 = the defaults
} options_t;

static int bad_arg(const char *flag, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "wan_proxy: %s: ", flag);
  vfprintf(stderr, fmt, ap);
  fputs(" (see wan_proxy --help)\n", stderr);
  va_end(ap);
  return -1;
}

// Whole decimal digits only: no sign, space, exponent or trailing bytes.
static int parse_uint(const char *flag, const char *s, uint64_t max, uint64_t *out) {
  if (s[0] == '\0') return bad_arg(flag, "empty value");
  uint64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return bad_arg(flag, "'%s' is not a whole non-negative number", s);
    if (v > (max - (uint64_t)(*p - '0')) / 10) return bad_arg(flag, "'%s' is above %llu", s, (unsigned long long)max);
    v = v * 10 + (uint64_t)(*p - '0');
  }
  *out = v;
  return 0;
}

static int parse_rate(const char *flag, const char *s, double *mbit) {
  // digits with at most one decimal point, e.g. 100, 2.5, 0.25
  int digits = 0, points = 0;
  for (const char *p = s; *p; p++) {
    if (*p >= '0' && *p <= '9') digits++;
    else if (*p == '.' && points == 0) points++;
    else return bad_arg(flag, "'%s' is not a positive decimal number (e.g. 100 or 2.5)", s);
  }
  if (digits == 0) return bad_arg(flag, "'%s' is not a positive decimal number (e.g. 100 or 2.5)", s);
  errno = 0;
  char *end = NULL;
  double v = strtod(s, &end);
  if (errno != 0 || end == s || *end != '\0' || !isfinite(v))
    return bad_arg(flag, "'%s' is not a positive decimal number", s);
  if (v <= 0.0) return bad_arg(flag, "'%s' must be above 0 (leave the flag out for no cap)", s);
  if (v > 1e6) return bad_arg(flag, "'%s' is above 1000000 Mbit/s", s);
  *mbit = v;
  return 0;
}

// HOST:PORT, HOST may be [IPv6]. host/port point into buf.
static int split_hostport(const char *flag, const char *s, char *buf, size_t cap,
                          const char **host, uint16_t *port, bool allow_port0) {
  if (strlen(s) >= cap) return bad_arg(flag, "address too long");
  strcpy(buf, s);
  char *colon = strrchr(buf, ':');
  if (!colon || colon == buf) return bad_arg(flag, "'%s' is not HOST:PORT", s);
  *colon = '\0';
  char *h = buf;
  size_t hl = strlen(h);
  if (h[0] == '[') {
    if (hl < 3 || h[hl - 1] != ']') return bad_arg(flag, "'%s' has an unclosed [IPv6] host", s);
    h[hl - 1] = '\0';
    h++;
  }
  uint64_t p = 0;
  if (parse_uint(flag, colon + 1, 65535, &p) != 0) return -1;
  if (p == 0 && !allow_port0) return bad_arg(flag, "port 0 is not a port to connect to");
  *host = h;
  *port = (uint16_t)p;
  return 0;
}

static int parse_args(int argc, char **argv, options_t *o) {
  memset(o, 0, sizeof *o);
  bool have_latency = false, have_rate = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage_text, stdout);
      exit(0);
    }
    const char *known[] = {"--listen", "--connect", "--latency-ms", "--rate-mbit", "--port-file",
                           "--capture-dir", "--buffer-kib"};
    bool is_known = false;
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) is_known |= strcmp(a, known[k]) == 0;
    if (!is_known) return bad_arg(a, "unknown argument");
    if (i + 1 >= argc) return bad_arg(a, "needs a value");
    const char *v = argv[++i];
    if (strcmp(a, "--listen") == 0) {
      if (o->listen) return bad_arg(a, "given twice");
      o->listen = v;
    } else if (strcmp(a, "--connect") == 0) {
      if (o->connect) return bad_arg(a, "given twice");
      o->connect = v;
    } else if (strcmp(a, "--latency-ms") == 0) {
      if (have_latency) return bad_arg(a, "given twice");
      uint64_t ms = 0;
      if (parse_uint(a, v, 600000, &ms) != 0) return -1;
      o->latency_ns = (int64_t)ms * 1000000;
      have_latency = true;
    } else if (strcmp(a, "--rate-mbit") == 0) {
      if (have_rate) return bad_arg(a, "given twice");
      double mbit = 0.0;
      if (parse_rate(a, v, &mbit) != 0) return -1;
      o->rate_bps = mbit * 1e6 / 8.0;
      have_rate = true;
    } else if (strcmp(a, "--buffer-kib") == 0) {
      if (o->buffer) return bad_arg(a, "given twice");
      uint64_t kib = 0;
      if (parse_uint(a, v, 65536, &kib) != 0) return -1;
      if (kib == 0) return bad_arg(a, "must be at least 1");
      o->buffer = (size_t)kib * 1024;
    } else if (strcmp(a, "--capture-dir") == 0) {
      if (o->capture) return bad_arg(a, "given twice");
      if (v[0] == '\0') return bad_arg(a, "empty directory name");
      o->capture = v;
    } else {
      if (o->port_file) return bad_arg(a, "given twice");
      if (v[0] == '\0') return bad_arg(a, "empty file name");
      o->port_file = v;
    }
  }
  if (!o->listen) return bad_arg("--listen", "missing (the address to accept on, e.g. 127.0.0.1:0)");
  if (!o->connect) return bad_arg("--connect", "missing (the address to forward to, e.g. 127.0.0.1:5555)");
  return 0;
}

// ---------------------------------------------------------------- sockets

static int resolve(const char *flag, const char *hostport, bool passive, struct addrinfo **out) {
  char buf[512];
  const char *host = NULL;
  uint16_t port = 0;
  if (split_hostport(flag, hostport, buf, sizeof buf, &host, &port, passive) != 0) return -1;
  char ps[8];
  snprintf(ps, sizeof ps, "%u", port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = passive ? AI_PASSIVE : 0};
  int rc = getaddrinfo(host, ps, &hints, out);
  if (rc != 0) return bad_arg(flag, "cannot resolve '%s': %s", host, gai_strerror(rc));
  return 0;
}

static void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// --buffer-kib: small kernel buffers (before connect or listen, so that the
// window is sized from them)
static void set_buffers(const options_t *o, int fd) {
  if (o->buffer == 0) return;
  int n = (int)o->buffer;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof n);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof n);
}

// Close so that the peer sees a reset, not an orderly end.
static void close_reset(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

static int write_port_file(const char *path, unsigned port) {
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
    log_msg("--port-file: '%s': name too long", path);
    return -1;
  }
  FILE *f = fopen(tmp, "w");
  if (!f) {
    log_msg("--port-file: cannot write '%s': %s", tmp, strerror(errno));
    return -1;
  }
  int ok = fprintf(f, "%u\n", port) > 0;
  ok &= fclose(f) == 0;
  if (!ok || rename(tmp, path) != 0) {
    log_msg("--port-file: cannot write '%s': %s", path, strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}

// ---------------------------------------------------------------- one direction

typedef struct chunk {
  struct chunk *next;
  int64_t due_ns;  // when its bytes may leave
  size_t len, off;
  unsigned char data[];
} chunk_t;

typedef struct {
  chunk_t *head, *tail;
  size_t queued;       // bytes in the queue not yet sent
  bool src_eof;        // the source ended its stream
  int64_t eof_due_ns;  // when that end may be forwarded
  bool dst_shut;       // the end has been forwarded
  bool dst_blocked;    // the last send met a full socket buffer
  double tokens;       // bytes the bucket allows now
  int64_t refill_ns;   // when tokens were last topped up
  uint64_t bytes;      // forwarded so far
  FILE *capture;       // a copy of every byte read (--capture-dir); NULL = none
} dir_t;

typedef struct {
  int fd[2];        // 0: the accepted client, 1: the connection to the target
  bool connecting;  // fd[1]'s connect is in progress
  dir_t dir[2];     // dir[0]: client -> target, dir[1]: target -> client
  uint64_t id;
} conn_t;

typedef struct {
  options_t opt;
  size_t queue_max;
  double bucket_cap;
  uint64_t accepted, closed, failed;
  uint64_t bytes[2];  // client -> target, target -> client, of closed connections
} proxy_t;

static void dir_free(dir_t *d) {
  for (chunk_t *c = d->head, *n; c; c = n) {
    n = c->next;
    free(c);
  }
  d->head = d->tail = NULL;
  d->queued = 0;
}

static void refill(const proxy_t *p, dir_t *d, int64_t now) {
  if (p->opt.rate_bps <= 0) return;
  d->tokens += p->opt.rate_bps * (double)(now - d->refill_ns) * 1e-9;
  if (d->tokens > p->bucket_cap) d->tokens = p->bucket_cap;
  d->refill_ns = now;
}

// Reads from src into d's queue while there is room. Returns -1 on a reset or
// an error of src.
static int dir_read(const proxy_t *p, dir_t *d, int src, int64_t now) {
  static unsigned char buf[READ_CHUNK];
  while (!d->src_eof && d->queued < p->queue_max) {
    size_t room = p->queue_max - d->queued;
    ssize_t n = recv(src, buf, room < sizeof buf ? room : sizeof buf, 0);
    if (n > 0) {
      chunk_t *c = malloc(sizeof *c + (size_t)n);
      if (!c) {
        log_msg("out of memory queueing %zd bytes", n);
        return -1;
      }
      memcpy(c->data, buf, (size_t)n);
      if (d->capture && fwrite(buf, 1, (size_t)n, d->capture) != (size_t)n) {
        log_msg("cannot write the capture: %s", strerror(errno));
        return -1;
      }
      c->len = (size_t)n;
      c->off = 0;
      c->due_ns = now + p->opt.latency_ns;
      c->next = NULL;
      if (d->tail) d->tail->next = c;
      else d->head = c;
      d->tail = c;
      d->queued += (size_t)n;
    } else if (n == 0) {
      d->src_eof = true;
      d->eof_due_ns = now + p->opt.latency_ns;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return 0;
    } else {
      return -1;
    }
  }
  return 0;
}

// Sends what is due and what the bucket allows to dst. Returns -1 on a reset
// or an error of dst.
static int dir_write(const proxy_t *p, dir_t *d, int dst, int64_t now) {
  refill(p, d, now);
  while (d->head && d->head->due_ns <= now && !d->dst_blocked) {
    chunk_t *c = d->head;
    size_t want = c->len - c->off;
    if (p->opt.rate_bps > 0) {
      size_t need = want < SEND_QUANTUM ? want : SEND_QUANTUM;
      if (d->tokens < (double)need) break;
      if ((double)want > d->tokens) want = (size_t)d->tokens;
    }
    ssize_t n = send(dst, c->data + c->off, want, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        d->dst_blocked = true;
        break;
      }
      return -1;
    }
    c->off += (size_t)n;
    d->queued -= (size_t)n;
    d->bytes += (uint64_t)n;
    if (p->opt.rate_bps > 0) d->tokens -= (double)n;
    if (c->off == c->len) {
      d->head = c->next;
      if (!d->head) d->tail = NULL;
      free(c);
    }
  }
  if (!d->head && d->src_eof && !d->dst_shut && d->eof_due_ns <= now) {
    if (shutdown(dst, SHUT_WR) != 0 && errno != ENOTCONN) return -1;
    d->dst_shut = true;
  }
  return 0;
}

// The earliest time d can make progress without a socket event; INT64_MAX if none.
static int64_t dir_wake(const proxy_t *p, const dir_t *d) {
  int64_t t = INT64_MAX;
  if (d->head && !d->dst_blocked) {
    t = d->head->due_ns;
    if (p->opt.rate_bps > 0) {
      size_t want = d->head->len - d->head->off;
      double need = (double)(want < SEND_QUANTUM ? want : SEND_QUANTUM);
      if (d->tokens < need) {
        int64_t ready = d->refill_ns + (int64_t)ceil((need - d->tokens) / p->opt.rate_bps * 1e9);
        if (ready > t) t = ready;
      }
    }
  } else if (!d->head && d->src_eof && !d->dst_shut) {
    t = d->eof_due_ns;
  }
  return t;
}

// ---------------------------------------------------------------- connections

static conn_t *conn_open(proxy_t *p, int client, const struct addrinfo *target, int64_t now) {
  int fd = socket(target->ai_family, target->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  target->ai_protocol);
  if (fd < 0) {
    log_msg("connection %llu: socket: %s", (unsigned long long)(p->accepted), strerror(errno));
    return NULL;
  }
  set_buffers(&p->opt, fd);
  int rc = connect(fd, target->ai_addr, target->ai_addrlen);
  if (rc != 0 && errno != EINPROGRESS) {
    log_msg("connection %llu: connect to %s: %s", (unsigned long long)(p->accepted),
            p->opt.connect, strerror(errno));
    close(fd);
    return NULL;
  }
  conn_t *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    return NULL;
  }
  c->fd[0] = client;
  c->fd[1] = fd;
  c->connecting = rc != 0;
  c->id = p->accepted;
  for (int k = 0; k < 2; k++) {
    c->dir[k].tokens = p->bucket_cap;
    c->dir[k].refill_ns = now;
  }
  if (p->opt.capture) {
    char path[4096];
    snprintf(path, sizeof path, "%s/conn-%llu.up", p->opt.capture, (unsigned long long)c->id);
    c->dir[0].capture = fopen(path, "wb");
    if (!c->dir[0].capture) {
      log_msg("connection %llu: cannot create %s: %s", (unsigned long long)c->id, path,
              strerror(errno));
      close(fd);
      free(c);
      return NULL;
    }
  }
  set_nodelay(client);
  set_nodelay(fd);
  return c;
}

// reset: the pair ends abnormally and each side still open sees a reset.
static void conn_close(proxy_t *p, conn_t *c, bool reset) {
  for (int k = 0; k < 2; k++) {
    if (reset) close_reset(c->fd[k]);
    else close(c->fd[k]);
    p->bytes[k] += c->dir[k].bytes;
    if (c->dir[k].capture) fclose(c->dir[k].capture);
    dir_free(&c->dir[k]);
  }
  p->closed++;
  if (reset) p->failed++;
  free(c);
}

// Moves c forward after poll reported revents[0..1] for its two sockets.
// Returns false once the pair is finished (closed and freed).
static bool conn_step(proxy_t *p, conn_t *c, const short revents[2], int64_t now) {
  if (c->connecting) {
    if (!(revents[1] & (POLLOUT | POLLERR | POLLHUP))) goto client_only;
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      log_msg("connection %llu: connect to %s: %s", (unsigned long long)c->id, p->opt.connect,
              strerror(err));
      conn_close(p, c, true);
      return false;
    }
    c->connecting = false;
  }
  for (int k = 0; k < 2; k++) {
    // writable again, or broken (the next send says how)
    if (revents[1 - k] & (POLLOUT | POLLERR | POLLHUP)) c->dir[k].dst_blocked = false;
    if (revents[k] & (POLLIN | POLLHUP | POLLERR)) {
      if (dir_read(p, &c->dir[k], c->fd[k], now) != 0) goto reset;
    }
  }
  for (int k = 0; k < 2; k++) {
    if (dir_write(p, &c->dir[k], c->fd[1 - k], now) != 0) goto reset;
  }
  if (c->dir[0].dst_shut && c->dir[1].dst_shut) {
    conn_close(p, c, false);
    return false;
  }
  return true;

client_only:
  // while connecting, the client's bytes are queued (and their latency runs)
  if ((revents[0] & (POLLIN | POLLHUP | POLLERR)) && dir_read(p, &c->dir[0], c->fd[0], now) != 0)
    goto reset;
  return true;

reset:
  conn_close(p, c, true);
  return false;
}

// ---------------------------------------------------------------- main loop

static volatile sig_atomic_t stop_signal = 0;

static void on_signal(int sig) { stop_signal = sig; }

static int open_listener(const proxy_t *p, unsigned *port) {
  struct addrinfo *ai;
  if (resolve("--listen", p->opt.listen, true, &ai) != 0) return -2;
  int fd = -1;
  int last_errno = 0;
  for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_errno = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    set_buffers(&p->opt, fd); // accepted connections inherit them
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
      last_errno = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(ai);
  if (fd < 0) {
    log_msg("--listen: cannot listen on %s: %s", p->opt.listen, strerror(last_errno));
    return -1;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                         : ((struct sockaddr_in *)&ss)->sin_port);
  return fd;
}

int main(int argc, char **argv) {
  proxy_t p = {0};
  if (parse_args(argc, argv, &p.opt) != 0) return 2;
  struct addrinfo *target;
  if (resolve("--connect", p.opt.connect, false, &target) != 0) return 2;

  double lat_s = (double)p.opt.latency_ns * 1e-9;
  if (p.opt.rate_bps > 0) {
    p.queue_max = p.opt.buffer ? p.opt.buffer : BASE_QUEUE + (size_t)(lat_s * p.opt.rate_bps);
    p.bucket_cap = p.opt.rate_bps * BUCKET_SECONDS;
    if (p.bucket_cap < 2 * SEND_QUANTUM) p.bucket_cap = 2 * SEND_QUANTUM;
  } else {
    double q = BASE_QUEUE + lat_s * UNCAPPED_RATE_BPS;
    p.queue_max = (size_t)(q < UNCAPPED_QUEUE_MAX ? q : UNCAPPED_QUEUE_MAX);
    if (p.opt.buffer) p.queue_max = p.opt.buffer;
  }

  unsigned port = 0;
  int lfd = open_listener(&p, &port);
  if (lfd < 0) {
    freeaddrinfo(target);
    return lfd == -2 ? 2 : 1;
  }
  if (p.opt.port_file && write_port_file(p.opt.port_file, port) != 0) {
    close(lfd);
    freeaddrinfo(target);
    return 1;
  }

  // SIGTERM/SIGINT are blocked except inside ppoll, so a stop is never missed
  // between a check of the flag and the wait.
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigset_t block, wait_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigprocmask(SIG_BLOCK, &block, &wait_mask);
  sigdelset(&wait_mask, SIGTERM);
  sigdelset(&wait_mask, SIGINT);

  conn_t **conns = NULL;
  size_t nconn = 0, capconn = 0;
  struct pollfd *pfd = NULL;
  size_t cappfd = 0;
  int64_t accept_pause_until = 0;
  int rc = 0;

  while (!stop_signal) {
    int64_t now = now_ns();
    if (cappfd < 1 + 2 * nconn) {
      cappfd = 2 * (1 + 2 * nconn);
      struct pollfd *np = realloc(pfd, cappfd * sizeof *pfd);
      if (!np) {
        log_msg("out of memory for %zu connections", nconn);
        rc = 1;
        break;
      }
      pfd = np;
    }
    int64_t wake = INT64_MAX;
    pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
    if (now < accept_pause_until) {
      pfd[0].fd = -1;
      wake = accept_pause_until;
    }
    for (size_t i = 0; i < nconn; i++) {
      conn_t *c = conns[i];
      for (int k = 0; k < 2; k++) {
        dir_t *in = &c->dir[k];       // read from fd[k]
        dir_t *out = &c->dir[1 - k];  // written to fd[k]
        short ev = 0;
        if (!in->src_eof && in->queued < p.queue_max && !(k == 1 && c->connecting)) ev |= POLLIN;
        if (out->dst_blocked || (k == 1 && c->connecting)) ev |= POLLOUT;
        // a socket we neither read nor wait on is left out: once shut both
        // ways it reports POLLHUP at once, and polling it would spin
        pfd[1 + 2 * i + k] = (struct pollfd){.fd = ev ? c->fd[k] : -1, .events = ev};
        if (!(k == 1 && c->connecting)) {
          int64_t t = dir_wake(&p, out);
          if (t < wake) wake = t;
        }
      }
    }
    struct timespec ts, *tsp = NULL;
    if (wake != INT64_MAX) {
      int64_t d = wake > now ? wake - now : 0;
      ts.tv_sec = d / 1000000000;
      ts.tv_nsec = d % 1000000000;
      tsp = &ts;
    }
    int n = ppoll(pfd, 1 + 2 * nconn, tsp, &wait_mask);
    if (n < 0 && errno != EINTR) {
      log_msg("poll: %s", strerror(errno));
      rc = 1;
      break;
    }
    if (n < 0) continue;
    now = now_ns();

    size_t polled = nconn;
    size_t keep = 0;
    for (size_t i = 0; i < polled; i++) {
      short rev[2] = {pfd[1 + 2 * i].revents, pfd[2 + 2 * i].revents};
      if (conn_step(&p, conns[i], rev, now)) conns[keep++] = conns[i];
    }
    nconn = keep;

    if (pfd[0].revents & POLLIN) {
      for (;;) {
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            log_msg("accept: %s; not accepting for 100 ms", strerror(errno));
            accept_pause_until = now + 100000000;
          }
          break;  // EAGAIN, or a connection that died in the backlog
        }
        p.accepted++;
        conn_t *c = conn_open(&p, cfd, target, now);
        if (!c) {
          close_reset(cfd);
          p.closed++;
          p.failed++;
          continue;
        }
        if (nconn == capconn) {
          capconn = capconn ? 2 * capconn : 16;
          conn_t **nc = realloc(conns, capconn * sizeof *nc);
          if (!nc) {
            log_msg("out of memory for %zu connections", nconn);
            conn_close(&p, c, true);
            break;
          }
          conns = nc;
        }
        conns[nconn++] = c;
      }
    }
  }

  for (size_t i = 0; i < nconn; i++) conn_close(&p, conns[i], false);
  p.closed -= nconn;  // still open at the stop: counted apart
  free(conns);
  free(pfd);
  close(lfd);
  freeaddrinfo(target);
  if (stop_signal) log_msg("stopped by signal %d", (int)stop_signal);
  fprintf(stderr,
          "wan_proxy: %llu connections (%llu closed, %llu of them reset or failed; %zu open at the stop); "
          "bytes client->target %llu, target->client %llu\n",
          (unsigned long long)p.accepted, (unsigned long long)p.closed,
          (unsigned long long)p.failed, nconn, (unsigned long long)p.bytes[0],
          (unsigned long long)p.bytes[1]);
  return rc;
}
