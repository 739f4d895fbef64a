// watchdog.c: bounds every wait inside a collective or an agreement.
//
// MPI cannot tell a slow peer from a dead one, and a task that dies under a
// launcher that does not kill its siblings leaves them blocked forever. A
// thread watches the waits this process is in: each waiting thread (the
// training loop, an asynchronous checkpoint's writer) holds one slot while it
// waits. Past the timeout it prints which wait on which group and ends the
// process with ENT_EXIT_PEER_LOST. It never calls MPI (the world may be
// initialised for one calling thread) and costs a wait a few atomic operations.
#include "comm_impl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

// More threads than slots wait unwatched rather than fail: a site has the
// training thread and at most one checkpoint writer.
#define WATCH_SLOTS 8

typedef struct {
    atomic_int busy;         // held by a waiting thread
    _Atomic double started;  // 0: not waiting yet
    const char *_Atomic what;
    const ent_group_t *_Atomic group; // NULL: `where` names it
    const char *_Atomic where;
} watch_slot;

static watch_slot slots[WATCH_SLOTS];
static _Thread_local watch_slot *held;
static _Atomic double timeout;
static int watch_rank;
static pthread_t watcher;
static int watcher_running;

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void begin(const char *what, const ent_group_t *g, const char *where) {
    if (held != NULL) return; // nested: the outer wait is watched already
    for (int i = 0; i < WATCH_SLOTS; i++) {
        int free_slot = 0;
        if (!atomic_compare_exchange_strong(&slots[i].busy, &free_slot, 1)) continue;
        held = &slots[i];
        atomic_store_explicit(&held->what, what, memory_order_relaxed);
        atomic_store_explicit(&held->group, g, memory_order_relaxed);
        atomic_store_explicit(&held->where, where, memory_order_relaxed);
        atomic_store_explicit(&held->started, monotonic(), memory_order_release);
        return;
    }
}

void ent_watch_begin(const char *what, const ent_group_t *g) { begin(what, g, NULL); }

void ent_comm_watch_begin(const char *what, const char *where) { begin(what, NULL, where); }

void ent_watch_end(void) {
    if (held == NULL) return;
    atomic_store_explicit(&held->started, 0.0, memory_order_release);
    atomic_store_explicit(&held->busy, 0, memory_order_release);
    held = NULL;
}

void ent_comm_watch_end(void) { ent_watch_end(); }

static void report_and_exit(const watch_slot *s, double limit) {
    const char *what = atomic_load_explicit(&s->what, memory_order_relaxed);
    const ent_group_t *g = atomic_load_explicit(&s->group, memory_order_relaxed);
    const char *where = atomic_load_explicit(&s->where, memory_order_relaxed);
    if (g != NULL)
        fprintf(stderr,
                "entente[%d]: error: %s on group %s (%d ranks, %s) has not completed after "
                "%.0f s: a peer rank has died or hangs (parallel.timeout); stopping with exit "
                "code %d\n",
                watch_rank, what ? what : "a collective", g->name, g->size, g->iface->name, limit,
                ENT_EXIT_PEER_LOST);
    else
        fprintf(stderr,
                "entente[%d]: error: %s on %s has not completed after %.0f s: a peer rank has "
                "died or hangs (parallel.timeout); stopping with exit code %d\n",
                watch_rank, what ? what : "a wait on other ranks", where ? where : "the world",
                limit, ENT_EXIT_PEER_LOST);
    fflush(stderr);
    _exit(ENT_EXIT_PEER_LOST);
}

static void *watch(void *arg) {
    (void)arg;
    for (;;) {
        double limit = timeout;
        double period = limit / 10 < 1.0 ? limit / 10 : 1.0;
        struct timespec ts = {(time_t)period, (long)((period - (time_t)period) * 1e9)};
        nanosleep(&ts, NULL);
        double now = monotonic();
        for (int i = 0; i < WATCH_SLOTS; i++) {
            double started = atomic_load_explicit(&slots[i].started, memory_order_acquire);
            if (started != 0.0 && now - started >= limit) report_and_exit(&slots[i], limit);
        }
    }
    return NULL;
}

void ent_watch_start_thread(double seconds, int rank) {
    timeout = seconds;
    watch_rank = rank;
    if (seconds <= 0 || watcher_running) return;
    if (pthread_create(&watcher, NULL, watch, NULL) == 0) {
        pthread_detach(watcher);
        watcher_running = 1;
    }
}
