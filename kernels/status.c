// status.c: error messages, traces and log lines shared by every layer.
//
// Library code never prints errors itself: it records one line with ent_fail
// and returns the status up to main, which prints it once and picks the exit
// code. Only broken invariants (ENT_ASSERT) abort.
#include "ent_kernels.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[1024];
static int log_rank = 0;
static int log_world = 1;

ent_status ent_fail(ent_status st, const char *fmt, ...) {
    // formatted aside first: callers may wrap the previous message,
    // ent_fail(st, "saving: %s", ent_last_error())
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(last_error, msg, sizeof msg);
    return st;
}

const char *ent_last_error(void) { return last_error; }

ent_status ent_fail_call(const char *file, int line, const char *call, const char *message) {
    const char *base = strrchr(file, '/');
    return ent_fail(ENT_ERR_INTERNAL, "%s:%d: %s: %s", base ? base + 1 : file, line, call,
                    message && *message ? message : "failed");
}

void ent_clear_error(void) { last_error[0] = '\0'; }

int ent_exit_code(ent_status st) {
    switch (st) {
    case ENT_OK: return 0;
    case ENT_ERR_USAGE: return 2;
    case ENT_STOPPED: return ENT_EXIT_REQUEUE;
    default: return 1;
    }
}

void ent_trace(const char *file, int line, const char *expr) {
    static int enabled = -1;
    if (enabled < 0) {
        const char *v = getenv("ENTENTE_TRACE");
        enabled = v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
    }
    if (enabled) fprintf(stderr, "entente: trace: %s:%d: %s failed\n", file, line, expr);
}

void ent_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "entente: rank %d: internal error at %s:%d: assertion '%s' failed\n",
            log_rank, file, line, expr);
    fflush(stderr);
    abort();
}

void ent_log_set_rank(int rank, int world) {
    log_rank = rank;
    log_world = world;
}

static void log_line(FILE *f, const char *level, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (log_world > 1)
        fprintf(f, "entente[%d]: %s%s\n", log_rank, level, msg);
    else
        fprintf(f, "entente: %s%s\n", level, msg);
    fflush(f);
}

void ent_log_info(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_line(stdout, "", fmt, ap);
    va_end(ap);
}

void ent_log_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_line(stderr, "error: ", fmt, ap);
    va_end(ap);
}

void ent_log_notice(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_line(stderr, "", fmt, ap);
    va_end(ap);
}

void ent_log_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_line(stderr, "warning: ", fmt, ap);
    va_end(ap);
}
