// bench_checkpoint.c: checkpoint save and load throughput for a GPT-2-small
// state (parameters and both AdamW moments), next to dd on the same file
// system in the same run, and the time an asynchronous save blocks training.
//
//   build/bench/bench_checkpoint [--dir DIR] [--layers L --width C --vocab V] [--rounds R]
//
// Save: a synchronous ent_ckpt_save (HDF5, Fletcher32, fsync, rename) against
// `dd if=/dev/zero of=DIR/... bs=16M conv=fsync` of the same bytes. Load:
// ent_ckpt_read of the whole state against `dd` reading the dd file; both files
// are dropped from the page cache first (posix_fadvise DONTNEED), so both read
// the disk. Async: the seconds ent_ckpt_save blocked with checkpoint.async
// (the copy to host memory; the snapshot is prepared before, as the trainer
// does) against the synchronous save. The measurements alternate over rounds
// and the medians are printed: a shared disk's speed drifts. It prints
// figures; it never passes or fails. It writes about 3 x the state's bytes in
// DIR and removes them.
#include "bench_util.h"
#include "ent_ckpt.h"
#include "ent_runtime.h"

#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void drop_from_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

// Reads the arrays through once, as a training step would: state that sat
// unused for a while can be slow to read again on a machine that reclaims
// idle memory, and in training the state is never idle.
static double touch(const float *a, const float *b, const float *c, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i += 16) s += a[i] + b[i] + c[i];
    return s;
}

// Runs a shell command and returns its wall time in seconds (-1 on failure).
static double timed(const char *cmd) {
    double t0 = now();
    int rc = system(cmd);
    return rc == 0 ? now() - t0 : -1.0;
}

int main(int argc, char **argv) {
    const char *dir = "bench-checkpoint.tmp";
    int layers = 12, width = 768, vocab = 50257, rounds = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) dir = argv[++i];
        else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc) layers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--width") == 0 && i + 1 < argc) width = atoi(argv[++i]);
        else if (strcmp(argv[i], "--vocab") == 0 && i + 1 < argc) vocab = atoi(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) rounds = atoi(argv[++i]);
        else {
            fprintf(stderr, "Usage: bench_checkpoint [--dir DIR] [--layers L] [--width C] [--vocab V] "
                            "[--rounds R]\n");
            return 2;
        }
    }
    if (rounds < 1 || rounds > 16) rounds = 5;
    ent_ckpt_library_init();
    ent_comm_t *comm = NULL;
    ent_grid *grid = NULL;
    if (ent_comm_init_threads(&argc, &argv, 1, &comm) != ENT_OK ||
        ent_grid_new(comm, 1, &grid) != ENT_OK || ent_mkdirs(dir) != ENT_OK) {
        fprintf(stderr, "bench_checkpoint: %s\n", ent_last_error());
        return 1;
    }
    ent_model_shape s = {.layers = layers, .heads = width / 64 > 0 ? width / 64 : 1,
                         .width = width, .context = 1024, .vocab = vocab,
                         .padded_vocab = (vocab + 63) / 64 * 64};
    ent_param_table table;
    if (ent_param_table_build(&s, 1, &table) != ENT_OK) {
        fprintf(stderr, "bench_checkpoint: %s\n", ent_last_error());
        return 1;
    }
    size_t n = table.total;
    float *p = malloc(sizeof(float) * n), *m = malloc(sizeof(float) * n),
          *v = malloc(sizeof(float) * n);
    if (p == NULL || m == NULL || v == NULL) {
        fprintf(stderr, "bench_checkpoint: out of memory for %zu floats x 3\n", n);
        return 1;
    }
    for (size_t i = 0; i < n; i++) { // values that do not compress: real state does not
        uint32_t x = (uint32_t)(i * 2654435761u);
        p[i] = (float)(x >> 8) * 1e-7f;
        m[i] = (float)(x >> 12) * 1e-9f;
        v[i] = (float)(x >> 16) * 1e-11f;
    }
    ent_ckpt_shard sh = {.table = &table, .tp_rank = 0, .tp_size = 1, .params = p, .adam_m = m,
                         .adam_v = v, .state_first = 0, .state_count = n, .write_first = 0,
                         .write_count = n};
    double bytes = 3.0 * 4.0 * (double)n, mib = bytes / 1048576.0;
    ent_ckpt_attr attrs[] = {{.name = "step", .type = ENT_ATTR_I64, .i = 1}};
    printf("bench_checkpoint: GPT model %d layers, width %d, vocab %d: %.1fM parameters; state "
           "(params + AdamW m, v) %.0f MiB; directory %s\n", layers, width, vocab, n / 1e6, mib,
           dir);

    // Rounds of: synchronous save, dd write, load, dd read, asynchronous save.
    // A shared disk's speed drifts: the rounds alternate, the medians are printed.
    enum { MAXR = 16 };
    double t_save[MAXR], t_ddw[MAXR], t_load[MAXR], t_ddr[MAXR], t_blocked[MAXR], t_async[MAXR];
    volatile double sink = 0;
    char cmd[8192], ddfile[4200], ckfile[4200];
    snprintf(ddfile, sizeof ddfile, "%s/bench_dd.bin", dir);
    snprintf(ckfile, sizeof ckfile, "%s/bench_a.h5", dir);
    long count = (long)(bytes / (16.0 * 1048576.0) + 0.5);
    ent_ckpt_saver_opts sync_opts = {.dir = dir, .keep = 0, .async = 0};
    ent_ckpt_saver_opts async_opts = {.dir = dir, .keep = 0, .async = 1};
    ent_ckpt_saver_t *sync_saver = NULL, *async_saver = NULL;
    ent_ckpt_saver_new(grid->world, &sync_opts, &sync_saver);
    ent_ckpt_saver_new(grid->world, &async_opts, &async_saver);
    ent_ckpt_saver_prepare(async_saver, &sh); // as the trainer does, before training
    int ok = 1;
    for (int r = 0; r < rounds; r++) {
        sink += touch(p, m, v, n);
        double t0 = now();
        if (ent_ckpt_save(sync_saver, "bench_a.h5", attrs, 1, &sh) != ENT_OK) {
            fprintf(stderr, "bench_checkpoint: %s\n", ent_last_error());
            return 1;
        }
        t_save[r] = now() - t0;
        snprintf(cmd, sizeof cmd, "dd if=/dev/zero of='%s' bs=16M count=%ld conv=fsync status=none",
                 ddfile, count);
        t_ddw[r] = timed(cmd);
        drop_from_cache(ckfile);
        memset(p, 0, sizeof(float) * n);
        t0 = now();
        ent_ckpt_t *ck = NULL;
        if (ent_ckpt_open(ckfile, grid->world, &ck) != ENT_OK || ent_ckpt_read(ck, &sh) != ENT_OK) {
            fprintf(stderr, "bench_checkpoint: %s\n", ent_last_error());
            return 1;
        }
        ent_ckpt_close(&ck);
        t_load[r] = now() - t0;
        ok = ok && p[n / 2] == (float)((uint32_t)((n / 2) * 2654435761u) >> 8) * 1e-7f;
        drop_from_cache(ddfile);
        snprintf(cmd, sizeof cmd, "dd if='%s' of=/dev/null bs=16M status=none", ddfile);
        t_ddr[r] = timed(cmd);
        sink += touch(p, m, v, n);
        t0 = now();
        ent_ckpt_save(async_saver, "bench_b.h5", attrs, 1, &sh);
        t_blocked[r] = now() - t0;
        if (ent_ckpt_wait(async_saver) != ENT_OK) {
            fprintf(stderr, "bench_checkpoint: %s\n", ent_last_error());
            return 1;
        }
        t_async[r] = now() - t0;
    }
    ent_ckpt_saver_free(&sync_saver);
    ent_ckpt_saver_free(&async_saver);
    double save = bench_median(t_save, rounds), ddw = bench_median(t_ddw, rounds);
    double load = bench_median(t_load, rounds), ddr = bench_median(t_ddr, rounds);
    double blocked = bench_median(t_blocked, rounds), async = bench_median(t_async, rounds);

    printf("\n%-52s %10s %12s   (median of %d rounds)\n", "measurement", "seconds", "MiB/s", rounds);
    printf("%-52s %10.2f %12.0f\n", "save (HDF5, checksums, fsync, rename)", save, mib / save);
    printf("%-52s %10.2f %12.0f\n", "dd bs=16M conv=fsync, same bytes (baseline)", ddw, mib / ddw);
    printf("%-52s %10.2f %12.0f\n", "load (read + verify checksums), from disk", load, mib / load);
    printf("%-52s %10.2f %12.0f\n", "dd read, same bytes, from disk (baseline)", ddr, mib / ddr);
    printf("%-52s %10.2f\n", "async save: training blocked (copy to memory)", blocked);
    printf("%-52s %10.2f\n", "async save: written and committed after", async);
    printf("\n%-52s %9.1f%%\n", "save / dd write", 100 * ddw / save);
    printf("%-52s %9.1f%%\n", "load / dd read", 100 * ddr / load);
    printf("%-52s %9.1f%%\n", "async blocked / synchronous save", 100 * blocked / save);
    if (!ok) printf("WARNING: the state read back differs from the state saved\n");
    (void)sink;

    char path[4300];
    const char *names[] = {"bench_a.h5", "bench_b.h5", "bench_dd.bin", "latest"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
    free(p);
    free(m);
    free(v);
    ent_param_table_free(&table);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    return 0;
}
