// readers.c: threads that read a checkpoint's chunks while the caller walks
// HDF5's index.
//
// One thread reading a chunk at a time leaves the disk idle while it copies
// and sums what arrived, and the copy out of the page cache costs as much
// CPU as the disk takes time on a fast one. Here the caller (the only thread
// that calls HDF5) finds where each chunk lies and queues it; a few readers,
// each with a descriptor of its own, take the chunks in order and read, sum
// and drop them (ckpt_read_chunk). The caller waits for them before it hands
// the memory on (a broadcast, its own caller), and learns the first failure
// in queue order, so the error a damaged file gets does not depend on which
// thread read what.
#include "ckpt_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// Readers per process: one per core it may run on (two on a 2-core node
// keep the disk busy while one copies and sums), at most four. A rank bound
// to one core gets one: two ranks with two readers each on two cores read
// 61-63% as fast as dd in bench_checkpoint, with one each 75-80%.
enum { READERS_MIN = 1, READERS_MAX = 4 };

typedef struct {
    ckpt_chunk_read chunk;
    int code; // ckpt_read_chunk's result, once read
} job;

typedef struct {
    ckpt_readers *rd;
    pthread_t thread;
    int fd;
    unsigned char *scratch; // an edge chunk's whole image (grown as needed)
    size_t scratch_bytes;
} reader;

struct ckpt_readers {
    pthread_mutex_t lock;
    pthread_cond_t work, idle; // work queued or stop; every job done
    job *jobs;                 // the jobs since the last wait, in queue order
    size_t n, cap, next, done; // queued, allocated, taken, finished
    int stop;
    int nthreads;
    reader threads[READERS_MAX];
};

static int read_one(reader *me, const ckpt_chunk_read *c) {
    if (c->have != c->bytes && me->scratch_bytes < c->bytes) {
        unsigned char *p = realloc(me->scratch, c->bytes);
        if (p == NULL) return ENOMEM;
        me->scratch = p;
        me->scratch_bytes = c->bytes;
    }
    return ckpt_read_chunk(me->fd, c, me->scratch);
}

static void *reader_main(void *arg) {
    reader *me = arg;
    ckpt_readers *rd = me->rd;
    pthread_mutex_lock(&rd->lock);
    for (;;) {
        if (rd->next < rd->n) {
            size_t i = rd->next++;
            ckpt_chunk_read c = rd->jobs[i].chunk; // the array may move meanwhile
            pthread_mutex_unlock(&rd->lock);
            int code = read_one(me, &c);
            pthread_mutex_lock(&rd->lock);
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
    struct stat want;
    if (fd < 0 || fstat(fd, &want) != 0) return NULL;
    ckpt_readers *rd = calloc(1, sizeof *rd);
    if (rd == NULL) return NULL;
    pthread_mutex_init(&rd->lock, NULL);
    pthread_cond_init(&rd->work, NULL);
    pthread_cond_init(&rd->idle, NULL);
    int cores = usable_cores();
    int n = cores < READERS_MIN ? READERS_MIN : cores > READERS_MAX ? READERS_MAX : cores;
    for (int i = 0; i < n; i++) {
        reader *t = &rd->threads[rd->nthreads];
        struct stat sb;
        t->rd = rd;
        t->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (t->fd >= 0 && (fstat(t->fd, &sb) != 0 || sb.st_dev != want.st_dev ||
                           sb.st_ino != want.st_ino)) { // not the file being read: none
            close(t->fd);
            t->fd = -1;
        }
        if (t->fd < 0) break;
        if (pthread_create(&t->thread, NULL, reader_main, t) != 0) {
            close(t->fd);
            break;
        }
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
    rd->n = rd->next = rd->done = 0;
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
        close(rd->threads[i].fd);
        free(rd->threads[i].scratch);
    }
    pthread_cond_destroy(&rd->idle);
    pthread_cond_destroy(&rd->work);
    pthread_mutex_destroy(&rd->lock);
    free(rd->jobs);
    free(rd);
    *rdp = NULL;
}
