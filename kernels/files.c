// files.c: file-system helpers every layer uses: mkdir -p, a directory's
// fsync, and writing a file atomically (NAME.tmp, fsync, rename, fsync of the
// directory), so that a file appears complete or not at all; and the memory
// hint for large buffers that reads land in.
#include "ent_kernels.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_BYTES 4096

ent_status ent_mkdirs(const char *path) {
    char buf[PATH_BYTES];
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
    char tmp[PATH_BYTES + 8];
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
    char dir[PATH_BYTES];
    snprintf(dir, sizeof dir, "%s", path);
    return ent_fsync_dir(dirname(dir));
}

ent_status ent_write_file_atomic(const char *path, const void *data, size_t len) {
    const void *parts[1] = {data};
    size_t lens[1] = {len};
    return ent_write_file_parts_atomic(path, parts, lens, 1);
}

void ent_populate_big(void *p, size_t bytes) {
    long page = sysconf(_SC_PAGESIZE);
    if (p == NULL || page <= 0) return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t b = ((uintptr_t)p + bytes) & ~((uintptr_t)page - 1);
    if (b <= a) return;
    (void)madvise((void *)a, b - a, MADV_HUGEPAGE);
    (void)madvise((void *)a, b - a, MADV_POPULATE_WRITE);
}
