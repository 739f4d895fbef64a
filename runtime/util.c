// util.c: random numbers, files, memory figures and the clock used across runtime/.
#include "runtime_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------
// random numbers

uint64_t ent_hash64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t ent_hash_string(const char *s, uint64_t seed) {
    uint64_t h = 1469598103934665603ULL ^ ent_hash64(seed); // FNV-1a, seeded
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return ent_hash64(h);
}

uint64_t ent_hash_bytes(const void *data, size_t n, uint64_t seed) {
    // 8 bytes at a time, each word mixed in through the splitmix finaliser
    const unsigned char *p = data;
    uint64_t h = ent_hash64(seed ^ n);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = ent_hash64(h ^ w);
    }
    uint64_t tail = 0;
    memcpy(&tail, p + i, n - i);
    return ent_hash64(h ^ tail);
}

void ent_rng_seed(ent_rng *rng, uint64_t seed) {
    for (int i = 0; i < 4; i++) {
        seed = ent_hash64(seed);
        rng->s[i] = seed;
    }
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ent_rng_next(ent_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double ent_rng_uniform(ent_rng *rng) { return (ent_rng_next(rng) >> 11) * 0x1.0p-53; }

double ent_rng_normal(ent_rng *rng) {
    // Box-Muller; one of the pair is dropped so a stream's values do not depend
    // on how many were drawn before in pairs.
    double u1 = ent_rng_uniform(rng), u2 = ent_rng_uniform(rng);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

// ---------------------------------------------------------------------------
// files Entente reads

// What a file that is not a regular file is, for messages.
static const char *file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "not a regular file";
}

ent_status ent_open_regular(const char *path, const char *what, ent_status bad, int *fd) {
    *fd = -1;
    struct stat st;
    if (stat(path, &st) != 0)
        return ent_fail(bad, "cannot read %s %s: %s", what, path, strerror(errno));
    // a FIFO would block open() until a writer comes, a device would read forever
    if (!S_ISREG(st.st_mode))
        return ent_fail(bad, "%s %s is %s, not a regular file", what, path, file_kind(st.st_mode));
    // O_NONBLOCK: should the path have become a FIFO since the stat, open must
    // not wait for a writer; fstat then checks what was really opened
    int f = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (f < 0) return ent_fail(bad, "cannot read %s %s: %s", what, path, strerror(errno));
    if (fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(f);
        return ent_fail(bad, "%s %s is %s, not a regular file", what, path, file_kind(st.st_mode));
    }
    int flags = fcntl(f, F_GETFL);
    if (flags >= 0) fcntl(f, F_SETFL, flags & ~O_NONBLOCK);
    *fd = f;
    return ENT_OK;
}

ent_status ent_check_regular(const char *path, const char *what, ent_status bad) {
    int fd;
    ENT_CHECK(ent_open_regular(path, what, bad, &fd));
    close(fd);
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// memory

const char *ent_format_bytes(double bytes, char *buf, size_t n) {
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 5) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
    return buf;
}

double ent_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

