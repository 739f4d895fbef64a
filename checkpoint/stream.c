// stream.c: keeping a checkpoint's pages from piling up in the page cache.
//
// A save writes gigabytes in one go. Left to itself the kernel keeps every
// page dirty in memory until the final fsync: the save then pays for fresh
// page-cache memory for the whole file, writes it all back at the end, and
// evicts what the node had cached (the data shards). Instead, as the file
// grows, the pages written a window ago are pushed to disk and dropped, so
// writeback overlaps the writing and the cache holds a few windows at most.
// (Reading drops each chunk's pages once it is read and checked: direct.c.)
// These are hints: durability still comes from the fsync at commit, and a
// file system that ignores them only loses speed.
#include "ckpt_impl.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

// Bytes pushed to disk and dropped at a time.
#define STREAM_WINDOW ((off_t)64 << 20)

void ckpt_stream_open(ckpt_stream *s, const char *path) {
    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    s->done = s->end = 0;
}

// Gaps a run of writes may skip and stay one run: HDF5's metadata between two
// datasets' chunks.
#define STREAM_GAP ((off_t)1 << 20)

void ckpt_stream_wrote(ckpt_stream *s, off_t from, off_t to) {
    if (s == NULL || s->fd < 0) return;
    if (s->end == 0 || from < s->end || from > s->end + STREAM_GAP) {
        // a new run: what is left of the one before is sent on its way
        if (s->end > s->done)
            sync_file_range(s->fd, s->done, s->end - s->done, SYNC_FILE_RANGE_WRITE);
        s->done = from;
    }
    s->end = to;
}

void ckpt_stream_advance(ckpt_stream *s) {
    struct stat sb;
    if (s == NULL || s->fd < 0) return;
    // how far this process got: the end of the run it is writing in place,
    // or, when it appends (nothing reported), the end of the file
    off_t upto = s->end;
    if (upto == 0) {
        if (fstat(s->fd, &sb) != 0) return;
        upto = sb.st_size;
    }
    // [done, done + window) is written back and dropped once the window after
    // it is complete too; that one is only started, so the disk keeps busy
    while (upto - s->done >= 2 * STREAM_WINDOW) {
        off_t next = s->done + STREAM_WINDOW;
        sync_file_range(s->fd, next, upto - next, SYNC_FILE_RANGE_WRITE);
        sync_file_range(s->fd, s->done, STREAM_WINDOW, SYNC_FILE_RANGE_WAIT_BEFORE |
                        SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
        posix_fadvise(s->fd, s->done, STREAM_WINDOW, POSIX_FADV_DONTNEED);
        s->done = next;
    }
}

void ckpt_stream_close(ckpt_stream *s) {
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
}
