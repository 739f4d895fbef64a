// readers.c: threads that read a checkpoint's chunks while the caller walks
// HDF5's index.
//
// The caller (the only thread that calls HDF5) finds where each chunk lies
// and queues it. The readers take the chunks in queue order, which is the
// file's order, and read each one whole, in turn: one read at a time, in
// file order, through one shared descriptor, so the disk sees what dd shows
// it (one sequential stream, the kernel's readahead running ahead of it).
// Having read its chunk, a reader hands the turn on and sums and drops it
// (ckpt_check_chunk) while the next reader reads the next one. Several
// readers each reading their own chunk at once were slower (75% of dd's
// rate on a 2-core virtual machine, against 85-95% in turns): their streams
// interleave and each descriptor's readahead starts over at every chunk.
// The caller waits for them before it hands the memory on (a broadcast, its
// own caller), and learns the first failure in queue order, so the error a
// damaged file gets does not depend on which thread read what.
#include "ckpt_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// Readers per process: one per core it may run on, at most two (one reads
// while the other sums; summing runs at several times a disk's rate, so a
// third would wait). A rank bound to one core reads and sums by itself.
enum { READERS_MIN = 1, READERS_MAX = 2 };

typedef struct {
    ckpt_chunk_read chunk;
    int code; // ckpt_read_chunk's result, once read
} job;

typedef struct {
    ckpt_readers *rd;
    pthread_t thread;
    unsigned char *scratch; // an edge chunk's whole image (grown as needed)
    size_t scratch_bytes;
} reader;

struct ckpt_readers {
    pthread_mutex_t lock;
    pthread_cond_t work, idle, turn; // work queued or stop; every job done; turn passed
    job *jobs;                       // the jobs since the last wait, in queue order
    size_t n, cap, next, done;       // queued, allocated, taken, finished
    size_t reading;                  // the job whose turn it is to be read
    int fd;                          // shared: one file position's readahead for all
    int stop;
    int nthreads;
    reader threads[READERS_MAX];
};

// Job i: waits for its turn, reads the chunk, passes the turn on, then sums
// it. Called and returns with the lock held.
static int read_one(reader *me, size_t i, const ckpt_chunk_read *c) {
    ckpt_readers *rd = me->rd;
    int code = 0;
    if (c->have != c->bytes && me->scratch_bytes < c->bytes) {
        unsigned char *p = realloc(me->scratch, c->bytes);
        if (p == NULL) code = ENOMEM;
        else {
            me->scratch = p;
            me->scratch_bytes = c->bytes;
        }
    }
    while (rd->reading != i) pthread_cond_wait(&rd->turn, &rd->lock);
    pthread_mutex_unlock(&rd->lock);
    unsigned char sum4[4];
    if (code == 0) code = ckpt_fetch_chunk(rd->fd, c, me->scratch, sum4);
    pthread_mutex_lock(&rd->lock);
    rd->reading++;
    pthread_cond_broadcast(&rd->turn);
    pthread_mutex_unlock(&rd->lock);
    if (code == 0) code = ckpt_check_chunk(rd->fd, c, me->scratch, sum4);
    pthread_mutex_lock(&rd->lock);
    return code;
}

static void *reader_main(void *arg) {
    reader *me = arg;
    ckpt_readers *rd = me->rd;
    pthread_mutex_lock(&rd->lock);
    for (;;) {
        if (rd->next < rd->n) {
            size_t i = rd->next++;
            ckpt_chunk_read c = rd->jobs[i].chunk; // the array may move meanwhile
            int code = read_one(me, i, &c);
            rd->jobs[i].code = code;
            if (++rd->done == rd->n) pthread_cond_broadcast(&rd->idle);
            continue;
        }
        if (rd->stop) break;
        pthread_cond_wait(&rd->work, &rd->lock);
    }
    pthread_mutex_unlock(&rd->lock);
    return NULL;
}

// The cores this process may run on.
static int usable_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return CPU_COUNT(&set);
}

ckpt_readers *ckpt_readers_start(const char *path, int fd) {
    struct stat want, sb;
    if (fd < 0 || fstat(fd, &want) != 0) return NULL;
    ckpt_readers *rd = calloc(1, sizeof *rd);
    if (rd == NULL) return NULL;
    // a descriptor of their own (the caller's may be moved by HDF5), on the
    // same file
    rd->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (rd->fd >= 0 && (fstat(rd->fd, &sb) != 0 || sb.st_dev != want.st_dev ||
                        sb.st_ino != want.st_ino)) {
        close(rd->fd);
        rd->fd = -1;
    }
    if (rd->fd < 0) {
        free(rd);
        return NULL;
    }
    posix_fadvise(rd->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    pthread_mutex_init(&rd->lock, NULL);
    pthread_cond_init(&rd->work, NULL);
    pthread_cond_init(&rd->idle, NULL);
    pthread_cond_init(&rd->turn, NULL);
    int cores = usable_cores();
    int n = cores < READERS_MIN ? READERS_MIN : cores > READERS_MAX ? READERS_MAX : cores;
    for (int i = 0; i < n; i++) {
        reader *t = &rd->threads[rd->nthreads];
        t->rd = rd;
        if (pthread_create(&t->thread, NULL, reader_main, t) != 0) break;
        rd->nthreads++;
    }
    if (rd->nthreads == 0) ckpt_readers_stop(&rd);
    return rd;
}

ent_status ckpt_readers_queue(ckpt_readers *rd, const ckpt_chunk_read *c) {
    pthread_mutex_lock(&rd->lock);
    if (rd->n == rd->cap) {
        size_t cap = rd->cap ? 2 * rd->cap : 256;
        job *p = realloc(rd->jobs, cap * sizeof *p);
        if (p == NULL) {
            pthread_mutex_unlock(&rd->lock);
            return ent_fail(ENT_ERR_NOMEM, "out of memory queueing the chunks of %s", c->name);
        }
        rd->jobs = p;
        rd->cap = cap;
    }
    rd->jobs[rd->n++] = (job){.chunk = *c};
    pthread_cond_signal(&rd->work);
    pthread_mutex_unlock(&rd->lock);
    return ENT_OK;
}

ent_status ckpt_readers_wait(ckpt_readers *rd) {
    pthread_mutex_lock(&rd->lock);
    while (rd->done < rd->n) pthread_cond_wait(&rd->idle, &rd->lock);
    ent_status st = ENT_OK;
    for (size_t i = 0; i < rd->n && st == ENT_OK; i++)
        if (rd->jobs[i].code != 0) st = ckpt_chunk_error(&rd->jobs[i].chunk, rd->jobs[i].code);
    rd->n = rd->next = rd->done = rd->reading = 0;
    pthread_mutex_unlock(&rd->lock);
    return st;
}

void ckpt_readers_stop(ckpt_readers **rdp) {
    ckpt_readers *rd = *rdp;
    if (rd == NULL) return;
    pthread_mutex_lock(&rd->lock);
    rd->stop = 1;
    pthread_cond_broadcast(&rd->work);
    pthread_mutex_unlock(&rd->lock);
    for (int i = 0; i < rd->nthreads; i++) {
        pthread_join(rd->threads[i].thread, NULL);
        free(rd->threads[i].scratch);
    }
    close(rd->fd);
    pthread_cond_destroy(&rd->turn);
    pthread_cond_destroy(&rd->idle);
    pthread_cond_destroy(&rd->work);
    pthread_mutex_destroy(&rd->lock);
    free(rd->jobs);
    free(rd);
    *rdp = NULL;
}
