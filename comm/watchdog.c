// watchdog.c: bounds every wait inside a collective.
//
// MPI cannot tell a slow peer from a dead one, and a task that dies under a
// launcher that does not kill its siblings leaves them blocked forever. A
// thread watches the one collective this rank is waiting in (ranks wait in
// one collective at a time); past the timeout it prints which collective on
// which group and ends the process with ENT_EXIT_PEER_LOST. It never calls
// MPI (the world is initialised for one calling thread) and costs the
// collective two atomic stores.
#include "comm_impl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static _Atomic double wait_started;         // 0: not waiting
static const char *_Atomic wait_what;
static const ent_group_t *_Atomic wait_group;
static _Atomic double timeout;
static int watch_rank;
static pthread_t watcher;
static int watcher_running;

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ent_watch_begin(const char *what, const ent_group_t *g) {
    atomic_store_explicit(&wait_what, what, memory_order_relaxed);
    atomic_store_explicit(&wait_group, g, memory_order_relaxed);
    atomic_store_explicit(&wait_started, monotonic(), memory_order_release);
}

void ent_watch_end(void) { atomic_store_explicit(&wait_started, 0.0, memory_order_release); }

static void *watch(void *arg) {
    (void)arg;
    for (;;) {
        double period = timeout / 10 < 1.0 ? timeout / 10 : 1.0;
        struct timespec ts = {(time_t)period, (long)((period - (time_t)period) * 1e9)};
        nanosleep(&ts, NULL);
        double started = atomic_load_explicit(&wait_started, memory_order_acquire);
        if (started == 0.0 || monotonic() - started < timeout) continue;
        const char *what = atomic_load_explicit(&wait_what, memory_order_relaxed);
        const ent_group_t *g = atomic_load_explicit(&wait_group, memory_order_relaxed);
        fprintf(stderr,
                "entente[%d]: error: %s on group %s (%d ranks, %s) has not completed after "
                "%.0f s: a peer rank has died or hangs (parallel.timeout); stopping with exit "
                "code %d\n",
                watch_rank, what ? what : "a collective", g ? g->name : "?", g ? g->size : 0,
                g ? g->iface->name : "?", timeout, ENT_EXIT_PEER_LOST);
        fflush(stderr);
        _exit(ENT_EXIT_PEER_LOST);
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
