// util.c: random numbers, files and memory figures used across runtime/.
#include "runtime_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
// files

ent_status ent_mkdirs(const char *path) {
    char buf[ENT_PATH_MAX];
    if (strlen(path) >= sizeof buf) return ent_fail(ENT_ERR_USAGE, "path too long: %s", path);
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return ent_fail(ENT_ERR_IO, "cannot create directory %s: %s", buf,
                                strerror(errno));
            struct stat st;
            if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
                return ent_fail(ENT_ERR_IO, "cannot create directory %s: %s exists and is not "
                                "a directory", path, buf);
            *p = saved;
            if (saved == '\0') break;
        }
    }
    if (access(path, W_OK | X_OK) != 0)
        return ent_fail(ENT_ERR_IO, "directory %s is not writable: %s", path, strerror(errno));
    return ENT_OK;
}

ent_status ent_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return ent_fail(ENT_ERR_IO, "cannot open directory %s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    // some file systems do not support fsync on directories; that is not an error here
    if (rc != 0 && err != EINVAL && err != ENOTSUP)
        return ent_fail(ENT_ERR_IO, "cannot sync directory %s: %s", dir, strerror(err));
    return ENT_OK;
}

ent_status ent_write_file_parts_atomic(const char *path, const void *const *parts,
                                      const size_t *lens, int nparts) {
    char tmp[ENT_PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return ent_fail(ENT_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    for (int i = 0; i < nparts; i++) {
        const char *p = parts[i];
        size_t left = lens[i];
        while (left > 0) {
            ssize_t w = write(fd, p, left);
            if (w < 0) {
                if (errno == EINTR) continue;
                int err = errno;
                close(fd);
                unlink(tmp);
                return ent_fail(ENT_ERR_IO, "cannot write %s: %s", tmp, strerror(err));
            }
            p += w;
            left -= (size_t)w;
        }
    }
    if (fsync(fd) != 0) {
        int err = errno;
        close(fd);
        unlink(tmp);
        return ent_fail(ENT_ERR_IO, "cannot write %s: %s", tmp, strerror(err));
    }
    if (close(fd) != 0) {
        int err = errno;
        unlink(tmp);
        return ent_fail(ENT_ERR_IO, "cannot write %s: %s", tmp, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return ent_fail(ENT_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(err));
    }
    char dir[ENT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    return ent_fsync_dir(dirname(dir));
}

ent_status ent_write_file_atomic(const char *path, const void *data, size_t len) {
    const void *parts[1] = {data};
    size_t lens[1] = {len};
    return ent_write_file_parts_atomic(path, parts, lens, 1);
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
