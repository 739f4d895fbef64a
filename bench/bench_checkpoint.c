// bench_checkpoint.c: checkpoint save and load throughput for a GPT-2-small
// training state (parameters and both AdamW moments), next to dd on the same
// file system in the same run, and what an asynchronous save costs a training
// loop next to a synchronous save.
//
//   build/bench/bench_checkpoint [--dir DIR] [--layers L --width C --vocab V]
//                                [--batch B] [--steps K] [--rounds R]
//   mpirun -np N build/bench/bench_checkpoint ...   (save and load only)
//
// The state is a real model's and optimizer's (GPT-2 small by default, its
// table at context 1024, trained on batches of B x 256 random tokens).
// Save: a synchronous ent_ckpt_save (HDF5, Fletcher32, fsync, rename) against
// `dd if=/dev/zero of=DIR/... bs=16M conv=fsync` of the same bytes. Load:
// ent_ckpt_read of the whole state against `dd` reading the dd file (and, for
// reference, the checkpoint file itself: its extents, not its bytes, differ);
// all files are dropped from the page cache first (posix_fadvise DONTNEED),
// so every read reads the disk; the save and the dd write go in turn first from round
// to round (a virtual disk's host may cache what was written last); three reads
// of each per round, alternating, the first of them
// alternating from round to round (the first read follows the writes closely,
// and a virtual disk may still be writing them back). Async, in a training loop as the trainer runs it: K steps with no
// save, and K steps right after an asynchronous ent_ckpt_save, whose copy to
// the host snapshot runs beside the first step's forward and backward (the
// update waits for it: ent_ckpt_wait_staged). Blocked: the time the save call
// and that wait held the loop (the figure the target is about), against the
// synchronous save, which holds the loop for all of its time. Slowdown: the K
// steps after the save minus the K steps without, which also counts what the
// saver's thread took from the training's cores (copy, checksums, page cache).
// Under mpirun the ranks are data-parallel replicas: each writes its 1/N share
// of the state with parallel HDF5's collective MPI-IO path; to load, each
// reads about 1/N of the file and broadcasts it to the others, ending with
// the whole state, as resuming at DP=N does (without ZeRO); the training loop
// is left out (the ranks would share the cores). dd runs on rank 0.
// Checksum: Fletcher32 over 64 MiB of the parameters on one core, as the
// load path computes it (the AVX2 path where built for it), the portable
// closed form (what every build had before), and HDF5's own function (its
// filter's loop), where its library exports it.
// The measurements alternate over rounds and the medians are printed: a
// shared disk's speed drifts. It prints figures; it never passes or fails. It
// writes about 3 x the state's bytes in DIR and removes them.
#include "bench_util.h"
#include "ckpt_impl.h" // ckpt_fletcher32: the checksum's throughput
#include "ent_ckpt.h"
#include "ent_runtime.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void check(ent_status st) {
    if (st == ENT_OK) return;
    fprintf(stderr, "bench_checkpoint: %s\n", ent_last_error());
    exit(1);
}

static void drop_from_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

// Runs a shell command and returns its wall time in seconds (-1 on failure).
static double timed(const char *cmd) {
    double t0 = bench_now();
    int rc = system(cmd);
    return rc == 0 ? bench_now() - t0 : -1.0;
}

// GB/s of a checksum over n bytes at p, the median of 5 passes of ~0.1 s.
typedef uint32_t (*checksum_fn)(const void *, size_t);
static double checksum_rate(checksum_fn f, const void *p, size_t n) {
    double rate[5];
    volatile uint32_t sink = 0;
    for (int k = 0; k < 5; k++) {
        int reps = 0;
        double t0 = bench_now(), t;
        do {
            sink += f(p, n);
            reps++;
        } while ((t = bench_now() - t0) < 0.1);
        rate[k] = (double)n * reps / t / 1e9;
    }
    (void)sink;
    return bench_median(rate, 5);
}

typedef struct {
    ent_model_t *model;
    ent_optim_t *optim;
    int32_t *tok, *tgt;
    int B, T;
} loop;

// One training step as the trainer takes it; the update waits for the copy of
// an asynchronous save in flight. Its wall time.
static double train_step(loop *l, ent_ckpt_saver_t *saver) {
    double t0 = bench_now();
    ent_model_zero_grad(l->model);
    float loss;
    check(ent_model_forward(l->model, l->tok, l->tgt, l->B, l->T, &loss));
    ent_optim_begin_backward(l->optim, 1);
    check(ent_model_backward(l->model, 1.0f / (float)(l->B * l->T)));
    check(ent_optim_reduce_grads(l->optim));
    double norm;
    check(ent_optim_grad_norm(l->optim, &norm));
    ent_ckpt_wait_staged(saver);
    ent_adamw hp = {1e-6f, 0.9f, 0.95f, 1e-8f, 0.1f};
    check(ent_optim_step(l->optim, &hp, norm > 1.0 ? (float)(1.0 / norm) : 1.0f));
    return bench_now() - t0;
}

static double train_steps(loop *l, int k, ent_ckpt_saver_t *saver) {
    double t = 0;
    for (int i = 0; i < k; i++) t += train_step(l, saver);
    return t;
}

static void usage(void) {
    fprintf(stderr, "Usage: bench_checkpoint [--dir DIR] [--layers L] [--width C] [--vocab V] "
                    "[--batch B] [--steps K] [--rounds R]\n"
                    "Defaults: GPT-2 small (12, 768, 50257), batch 1 x 256 tokens, 3 steps after "
                    "each async save, 5 rounds,\nDIR bench-checkpoint.tmp (on the file system to "
                    "measure; removed after).\n");
}

int main(int argc, char **argv) {
    const char *dir = "bench-checkpoint.tmp";
    int layers = 12, width = 768, vocab = 50257, B = 1, K = 3, rounds = 5;
    for (int i = 1; i < argc; i++) {
        int *target = NULL;
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
            continue;
        }
        if (strcmp(argv[i], "--layers") == 0) target = &layers;
        else if (strcmp(argv[i], "--width") == 0) target = &width;
        else if (strcmp(argv[i], "--vocab") == 0) target = &vocab;
        else if (strcmp(argv[i], "--batch") == 0) target = &B;
        else if (strcmp(argv[i], "--steps") == 0) target = &K;
        else if (strcmp(argv[i], "--rounds") == 0) target = &rounds;
        if (target == NULL || i + 1 >= argc || (*target = atoi(argv[i + 1])) <= 0) {
            usage();
            return 2;
        }
        i++;
    }
    enum { MAXR = 16, T = 256 };
    if (rounds > MAXR || width % 64 != 0 || vocab > 65536) {
        usage();
        return 2;
    }
    ent_ckpt_library_init();
    ent_comm_t *comm = NULL;
    ent_grid *grid = NULL;
    check(ent_comm_init_threads(&argc, &argv, 1, &comm));
    check(ent_grid_new(comm, 1, &grid));
    int rank = ent_comm_rank(comm), ranks = ent_comm_size(comm);
    if (rank != 0 && freopen("/dev/null", "w", stdout) == NULL) return 1;
    if (rank == 0) check(ent_mkdirs(dir));
    ent_barrier(grid->world);
    ent_model_shape s = {.layers = layers, .heads = width / 64, .width = width, .context = 1024,
                         .vocab = vocab, .padded_vocab = (vocab + 63) / 64 * 64};
    loop l = {.B = B, .T = T};
    ent_backend_t *be = ent_backend_cpu_new(0);
    check(ent_model_new(be, &s, NULL, B, T, &l.model));
    check(ent_optim_new(l.model, NULL, 0, &l.optim));
    ent_model_init(l.model, 1);
    l.tok = malloc(sizeof(int32_t) * B * T);
    l.tgt = malloc(sizeof(int32_t) * B * T);
    if (l.tok == NULL || l.tgt == NULL) check(ent_fail(ENT_ERR_NOMEM, "out of memory"));
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < B * T; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        l.tok[i] = (int32_t)(x % (uint64_t)vocab);
        l.tgt[i] = (int32_t)((x >> 32) % (uint64_t)vocab);
    }
    ent_ckpt_shard sh = {.table = ent_model_table(l.model), .tp_size = 1,
                         .params = ent_model_arena(l.model, ENT_ARENA_PARAMS)};
    ent_optim_moments(l.optim, &sh.adam_m, &sh.adam_v);
    sh.state_count = ent_optim_state_floats(l.optim, &sh.state_first);
    sh.write_count = ent_model_arena_floats(l.model) / (size_t)ranks; // the trainer's DP share
    sh.write_first = sh.write_count * (size_t)rank;
    sh.replicas = grid->dp; // the ranks share the reading, as the trainer's DP replicas do
    size_t n = sh.table->total;
    double bytes = 3.0 * 4.0 * (double)n, mib = bytes / 1048576.0;
    ent_ckpt_attr attrs[] = {{.name = "step", .type = ENT_ATTR_I64, .i = 1}};
    printf("bench_checkpoint: GPT model %d layers, width %d, vocab %d: %.1fM parameters; state "
           "(params + AdamW m, v) %.0f MiB; directory %s\n", layers, width, vocab, n / 1e6, mib,
           dir);
    if (ranks == 1)
        printf("                  training loop: batch %d x %d tokens, %d steps after each async "
               "save; %s\n", B, T, K, ent_backend_cpu_describe());
    else
        printf("                  %d ranks, each writing 1/%d of the state (collective MPI-IO), "
               "reading 1/%d and broadcasting it; no training loop\n", ranks, ranks, ranks);
    train_steps(&l, 2, NULL); // warm-up: every buffer touched, moments no longer zero

    // Rounds of: synchronous save, dd write, load, dd read, and the training
    // loop with and without an asynchronous save (in turn first).
    enum { READS = 3 }; // load and dd-read pairs per round: reads are cheap, and a
                        // shared disk's speed jumps from one read to the next
    double t_save[MAXR], t_ddw[MAXR], t_load[MAXR * READS], t_ddr[MAXR * READS],
        t_ddc[MAXR * READS], t_blocked[MAXR],
        t_waited[MAXR], t_plain[MAXR], t_slow[MAXR], t_async[MAXR];
    char cmd[8192], ddfile[4200], ckfile[4200];
    snprintf(ddfile, sizeof ddfile, "%s/bench_dd.bin", dir);
    snprintf(ckfile, sizeof ckfile, "%s/bench_a.h5", dir);
    long count = (long)(bytes / (16.0 * 1048576.0) + 0.5);
    ent_ckpt_saver_opts sync_opts = {.dir = dir, .keep = 0, .async = 0};
    ent_ckpt_saver_opts async_opts = {.dir = dir, .keep = 0, .async = 1};
    ent_ckpt_saver_t *sync_saver = NULL, *async_saver = NULL;
    check(ent_ckpt_saver_new(grid->world, &sync_opts, &sync_saver));
    if (ranks == 1) {
        check(ent_ckpt_saver_new(grid->world, &async_opts, &async_saver));
        check(ent_ckpt_saver_prepare(async_saver, &sh)); // as the trainer does, before training
    }
    enum { PROBES = 4096 };
    float *expect = malloc(sizeof(float) * PROBES);
    int ok = expect != NULL;
    for (int r = 0; r < rounds && ok; r++) {
        // the save and dd write in turn first: a virtual disk's host may
        // still cache what was written last, and the reads below should find
        // the two files alike
        snprintf(cmd, sizeof cmd, "dd if=/dev/zero of='%s' bs=16M count=%ld conv=fsync status=none",
                 ddfile, count);
        double t0 = 0;
        for (int turn = 0; turn < 2; turn++) {
            ent_barrier(grid->world);
            if ((turn + r) % 2 == 1) {
                if (rank == 0) t_ddw[r] = timed(cmd);
                continue;
            }
            t0 = bench_now();
            check(ent_ckpt_save(sync_saver, "bench_a.h5", attrs, 1, &sh));
            t_save[r] = bench_now() - t0;
        }

        // load what was just saved over parameters set to zero, and dd read,
        // READS times each; which goes first alternates (the first read
        // follows the writes closely: a virtual disk may still be writing
        // them back)
        char ckcmd[8192];
        snprintf(cmd, sizeof cmd, "dd if='%s' of=/dev/null bs=16M status=none", ddfile);
        snprintf(ckcmd, sizeof ckcmd, "dd if='%s' of=/dev/null bs=16M status=none", ckfile);
        for (int turn = 0; turn < 2 * READS; turn++) {
            int at = r * READS + turn / 2;
            if ((turn + r) % 2 == 1) {
                if (rank == 0) {
                    drop_from_cache(ddfile);
                    t_ddr[at] = timed(cmd);
                    drop_from_cache(ckfile);
                    t_ddc[at] = timed(ckcmd);
                }
                ent_barrier(grid->world);
                continue;
            }
            for (int i = 0; i < PROBES; i++) expect[i] = sh.params[(size_t)i * (n / PROBES)];
            if (rank == 0) drop_from_cache(ckfile);
            memset(sh.params, 0, sizeof(float) * n);
            ent_barrier(grid->world);
            t0 = bench_now();
            ent_ckpt_t *ck = NULL;
            check(ent_ckpt_open(ckfile, grid->world, &ck));
            check(ent_ckpt_read(ck, &sh));
            ent_ckpt_close(&ck);
            ent_barrier(grid->world);
            t_load[at] = bench_now() - t0;
            for (int i = 0; i < PROBES; i++) ok = ok && sh.params[(size_t)i * (n / PROBES)] == expect[i];
        }

        for (int turn = 0; turn < 2 && ranks == 1; turn++) {
            if ((turn + r) % 2 == 0) {
                t_plain[r] = train_steps(&l, K, NULL);
                continue;
            }
            t0 = bench_now();
            check(ent_ckpt_save(async_saver, "bench_b.h5", attrs, 1, &sh));
            double call = ent_ckpt_last_blocked_seconds(async_saver);
            t_slow[r] = train_steps(&l, K, async_saver);
            t_blocked[r] = ent_ckpt_last_blocked_seconds(async_saver);
            t_waited[r] = t_blocked[r] - call;
            check(ent_ckpt_wait(async_saver));
            t_async[r] = bench_now() - t0;
        }
        if (ranks == 1) t_slow[r] -= t_plain[r];
    }
    ent_ckpt_saver_free(&sync_saver);
    ent_ckpt_saver_free(&async_saver);
    double save = bench_median(t_save, rounds), ddw = bench_median(t_ddw, rounds);
    double load = bench_median(t_load, rounds * READS), ddr = bench_median(t_ddr, rounds * READS);
    double ddc = bench_median(t_ddc, rounds * READS);
    printf("\n%-56s %10s %12s   (median of %d rounds; reads: of %d)\n", "measurement", "seconds",
           "MiB/s", rounds, rounds * READS);
    printf("%-56s %10.2f %12.0f\n", "save (HDF5, checksums, fsync, rename)", save, mib / save);
    printf("%-56s %10.2f %12.0f\n", "dd bs=16M conv=fsync, same bytes (baseline)", ddw, mib / ddw);
    printf("%-56s %10.2f %12.0f\n", ranks == 1 ? "load (read + verify checksums), from disk"
                                              : "load (read 1/N + broadcast), from disk",
           load, mib / load);
    printf("%-56s %10.2f %12.0f\n", "dd read, same bytes, from disk (baseline)", ddr, mib / ddr);
    printf("%-56s %10.2f %12.0f\n", "  dd read of the checkpoint file itself", ddc, mib / ddc);
    double blocked = 0, slow = 0;
    if (ranks == 1) {
        blocked = bench_median(t_blocked, rounds);
        slow = bench_median(t_slow, rounds);
        double waited = bench_median(t_waited, rounds), plain = bench_median(t_plain, rounds);
        double async = bench_median(t_async, rounds);
        printf("%-56s %10.2f\n", "training step, no save", plain / K);
        printf("%-56s %10.3f\n", "async save: training blocked (call + wait for the copy)",
               blocked);
        printf("%-56s %10.3f\n", "  of which the update waited for the copy", waited);
        char label[96];
        snprintf(label, sizeof label, "async save: %d steps after it minus %d without", K, K);
        printf("%-56s %10.2f\n", label, slow);
        printf("%-56s %10.2f\n", "async save: written and committed after", async);
    }
    printf("\n%-56s %9.1f%%\n", "save / dd write", 100 * ddw / save);
    printf("%-56s %9.1f%%\n", "load / dd read", 100 * ddr / load);
    printf("%-56s %9.1f%%\n", "load / dd read of the checkpoint file", 100 * ddc / load);
    if (ranks == 1) {
        printf("%-56s %9.1f%%\n", "async blocked / synchronous save", 100 * blocked / save);
        printf("%-56s %9.1f%%\n", "async step slowdown / synchronous save", 100 * slow / save);
    }
    size_t sum_bytes = sizeof(float) * n < ((size_t)64 << 20) ? sizeof(float) * n : (size_t)64 << 20;
    checksum_fn hdf5_own = (checksum_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "H5_checksum_fletcher32");
    double fast = checksum_rate(ckpt_fletcher32, sh.params, sum_bytes);
    double portable = checksum_rate(ckpt_fletcher32_portable, sh.params, sum_bytes);
    printf("\n%-56s %9.1f GB/s\n", "Fletcher32, one core, as loads check it"
#ifdef __AVX2__
           " (AVX2)"
#endif
           , fast);
    printf("%-56s %9.1f GB/s\n", "  portable closed form (all builds before)", portable);
    if (hdf5_own != NULL)
        printf("%-56s %9.1f GB/s\n", "  HDF5's own (H5_checksum_fletcher32)",
               checksum_rate(hdf5_own, sh.params, sum_bytes));
    int all_ok = 0;
    MPI_Comm world;
    ent_group_mpi_comm(grid->world, &world);
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, world);
    ok = all_ok;
    if (!ok) printf("WARNING: the state read back differs from the state saved\n");

    char path[4300];
    const char *names[] = {"bench_a.h5", "bench_b.h5", "bench_dd.bin", "latest"};
    for (int i = 0; i < 4 && rank == 0; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    if (rank == 0) rmdir(dir);
    free(expect);
    free(l.tok);
    free(l.tgt);
    ent_optim_free(&l.optim);
    ent_model_free(&l.model);
    ent_backend_free(&be);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    return ok ? 0 : 1;
}
