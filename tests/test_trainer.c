// test_trainer.c: the trainer object is what an outer loop drives: rounds of
// N steps, then a merge that replaces the parameters and keeps or resets the
// optimizer.
//  - Kept: two rounds with a merge between them (the parameters replaced by
//    themselves through ent_trainer_set_params) give the losses, gradient
//    norms and parameters of one run of 2N steps, bit for bit.
//  - Reset: the second round equals, bit for bit, a fresh trainer (a new
//    optimizer: zero moments, AdamW's update count 0) given the first round's
//    parameters, on the data the second round reads (the shards shifted by
//    N batches; a constant learning rate and data in order, so that step N + i
//    and step i see the same rate and sequences), and differs from the kept
//    run. On the cpu backend and on cpu-guarded, whose memory faults when
//    touched from outside.
//  - A checkpoint saved after a reset holds AdamW's update count apart from
//    the step (optim.updates), and a run resumed from it reproduces the
//    uninterrupted run bit for bit (the count decides the bias correction:
//    not restored, the losses differ); a reset after a save is saved again
//    at the end.
//  - The learning-rate horizon is the outer loop's to set; the sync point
//    agrees on a failure of one part.
// Runs as one MPI rank (unit_trainer) and as two with ZeRO-1 (mpi_trainer_2:
// each rank resets its own shard of the moments).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ent_ckpt.h"
#include "ent_runtime.h"
#include "ref.h"

#define N 5 // steps per round

static ent_comm_t *comm;
static ent_grid *grid;
static char dir[256];
static ent_config cfg;     // warm-up, cosine decay, shuffled data: training as configured
static ent_config flat;    // a constant learning rate, data in order
static ent_config shifted; // flat, on the training data without its first N batches

// Copies a shard without its first `skip` tokens (llm.c layout: a header of
// 256 int32, then uint16 tokens).
static int copy_shard(const char *src, const char *dst, size_t skip) {
    size_t n = 0;
    if (ent_shard_check_header(src, &n) != ENT_OK || n <= skip) return 1;
    uint16_t *tok = malloc(sizeof(uint16_t) * n);
    FILE *f = fopen(src, "rb");
    int bad = tok == NULL || f == NULL ||
              fseek(f, ENT_SHARD_HEADER_INTS * (long)sizeof(int32_t), SEEK_SET) != 0 ||
              fread(tok, sizeof(uint16_t), n, f) != n;
    if (f != NULL) fclose(f);
    if (!bad) bad = ent_shard_write(dst, tok + skip, n - skip) != ENT_OK;
    free(tok);
    return bad;
}

// Rank 0 writes the data; every rank uses it.
static int make_data(void) {
    if (test_tmpdir_create(dir, sizeof dir, "trainer") != 0) return 1;
    // a corpus of seeded random words
    char text[512], data[300], shift[300], src[400], dst[400];
    snprintf(text, sizeof text, "%s/corpus.txt", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(shift, sizeof shift, "%s/shifted", dir);
    FILE *f = fopen(text, "w");
    if (f == NULL) return 1;
    static const char *words[] = {"the", "coalition", "trains", "one", "model", "and", "every",
                                  "site", "keeps", "its", "data", "at", "home", "."};
    test_rng_reset(test_seed() ^ 0x7a1);
    for (int i = 0; i < 40000; i++)
        fprintf(f, "%s ", words[test_rand_int(0, (int64_t)(sizeof words / sizeof *words) - 1)]);
    fclose(f);
    const char *inputs[] = {text};
    ent_prepare_args args = {.inputs = inputs, .n_inputs = 1, .outdir = data,
                             .val_fraction = 0.1, .shard_tokens = 1 << 20};
    if (ent_data_prepare(&args, NULL) != ENT_OK) return 1;
    // one training shard (sequence i is tokens i x T .. i x T + T): without
    // its first N batches, sequence i is the original's N x batch + i
    snprintf(src, sizeof src, "%s/train_000001.bin", data);
    if (access(src, F_OK) == 0 || ent_mkdirs(shift) != ENT_OK) return 1;
    const char *names[] = {"train_000000.bin", "val_000000.bin"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/%s", data, names[i]);
        snprintf(dst, sizeof dst, "%s/%s", shift, names[i]);
        if (copy_shard(src, dst, i == 0 ? (size_t)N * cfg.batch_size * cfg.context : 0) != 0)
            return 1;
    }
    return 0;
}

static int setup(void **state) {
    (void)state;
    ent_config_defaults(&cfg);
    cfg.layers = 2;
    cfg.heads = 2;
    cfg.width = 32;
    cfg.context = 32;
    cfg.steps = 2 * N;
    cfg.batch_size = 4;
    cfg.warmup_steps = 2;
    cfg.lr = 3e-3;
    cfg.eval_every = 0;
    cfg.eval_batches = 2;
    cfg.sample_every = 0;
    cfg.sample_tokens = 0;
    cfg.ckpt_every = 0;
    cfg.threads = 1;
    cfg.zero = ent_comm_size(comm) > 1; // each rank keeps its shard of the moments
    int rc = ent_comm_rank(comm) == 0 ? make_data() : 0;
    int64_t rc64 = rc;
    if (ent_broadcast(grid->world, &rc64, 1, ENT_I64, 0) != ENT_OK ||
        ent_broadcast(grid->world, dir, sizeof dir, ENT_U8, 0) != ENT_OK || rc64 != 0)
        return 1;
    snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s/data", dir);
    flat = cfg;
    flat.warmup_steps = 0; // lr at every step: lr_floor x lr + 0 = lr, exactly
    flat.lr_floor = 1.0;
    flat.shuffle = 0;
    shifted = flat;
    snprintf(shifted.data_dir, sizeof shifted.data_dir, "%s/shifted", dir);
    return ent_config_validate(&cfg) != ENT_OK || ent_config_validate(&flat) != ENT_OK;
}

static int teardown(void **state) {
    (void)state;
    ent_barrier(grid->world);
    if (ent_comm_rank(comm) == 0) test_tree_remove(dir);
    return 0;
}

static ent_trainer_t *new_trainer(const ent_config *c, const char *name, const char *resume) {
    static char run_dir[8][300];
    static ent_train_opts opts[8]; // the trainer keeps pointers to both
    static int next;
    int k = next++ % 8;
    snprintf(run_dir[k], sizeof run_dir[k], "%s/%s", dir, name);
    opts[k] = (ent_train_opts){.run_dir = run_dir[k], .resume = resume};
    ent_trainer_t *tr = NULL;
    ent_status st = ent_trainer_new(c, &opts[k], comm, &tr);
    if (st != ENT_OK) fail_msg("ent_trainer_new: %s", ent_last_error());
    return tr;
}

// n steps, their statistics into out.
static void steps(ent_trainer_t *tr, int n, ent_step_stats *out) {
    for (int i = 0; i < n; i++) {
        assert_int_equal(ent_trainer_step(tr, &out[i]), ENT_OK);
        assert_int_equal(ent_trainer_sync(tr, ENT_OK, NULL), ENT_OK);
    }
}

// The parameters, copied out through the backend.
static float *params_of(ent_trainer_t *tr, size_t *count) {
    ent_model_t *m = ent_trainer_model(tr);
    ent_backend_t *be = ent_model_backend(m);
    *count = ent_model_arena_floats(m);
    float *host = malloc(sizeof(float) * *count);
    assert_non_null(host);
    assert_int_equal(be->iface->to_host(be, host, ent_model_arena(m, ENT_ARENA_PARAMS),
                                        sizeof(float) * *count),
                     ENT_OK);
    return host;
}

// The merge of an outer loop: new parameters (here the same ones, or `with`),
// and the optimizer kept or reset.
static void merge(ent_trainer_t *tr, const float *with, int reset) {
    size_t count = 0;
    float *p = params_of(tr, &count);
    assert_int_equal(ent_trainer_set_params(tr, with != NULL ? with : p), ENT_OK);
    free(p);
    if (reset) assert_int_equal(ent_trainer_reset_optimizer(tr), ENT_OK);
    int stop = -1;
    assert_int_equal(ent_trainer_sync(tr, ENT_OK, &stop), ENT_OK);
    assert_int_equal(stop, 0);
}

static void finish(ent_trainer_t **tr) {
    assert_int_equal(ent_trainer_finish(*tr, 0), ENT_OK);
    ent_trainer_free(tr);
    assert_null(*tr);
}

static void same_steps(const ent_step_stats *a, const ent_step_stats *b, int n) {
    for (int i = 0; i < n; i++) {
        assert_true(a[i].loss == b[i].loss);
        assert_true(a[i].grad_norm == b[i].grad_norm);
        assert_true(a[i].lr == b[i].lr);
    }
}

static void test_rounds_equal_one_run(void **state) {
    (void)state;
    ent_step_stats one[2 * N], rounds[2 * N];
    // one run of 2N steps
    ent_trainer_t *tr = new_trainer(&cfg, "one", NULL);
    steps(tr, 2 * N, one);
    size_t count = 0, count2 = 0;
    float *p_one = params_of(tr, &count);
    finish(&tr);

    // two rounds of N, a merge that keeps the optimizer between them
    tr = new_trainer(&cfg, "rounds", NULL);
    for (int r = 0; r < 2; r++) {
        steps(tr, N, rounds + r * N);
        merge(tr, NULL, 0);
    }
    assert_int_equal(ent_trainer_steps_done(tr), 2 * N);
    float *p_rounds = params_of(tr, &count2);
    finish(&tr);

    for (int i = 0; i < 2 * N; i++) assert_int_equal(rounds[i].step, i + 1);
    same_steps(one, rounds, 2 * N);
    assert_true(one[0].loss != one[2 * N - 1].loss); // it trained
    assert_int_equal(count, count2);
    assert_memory_equal(p_one, p_rounds, sizeof(float) * count);
    free(p_one);
    free(p_rounds);
}

static void test_reset_is_a_fresh_optimizer(void **state) {
    const char *backend = *state;
    ent_config a = flat, b = shifted;
    snprintf(a.backend, sizeof a.backend, "%s", backend);
    snprintf(b.backend, sizeof b.backend, "%s", backend);
    char name[64];
    ent_step_stats kept[2 * N], reset[2 * N], fresh[N];
    size_t count = 0;

    snprintf(name, sizeof name, "kept-%s", backend);
    ent_trainer_t *tr = new_trainer(&a, name, NULL);
    steps(tr, N, kept);
    merge(tr, NULL, 0);
    steps(tr, N, kept + N);
    finish(&tr);

    snprintf(name, sizeof name, "reset-%s", backend);
    tr = new_trainer(&a, name, NULL);
    steps(tr, N, reset);
    float *round1 = params_of(tr, &count);
    merge(tr, NULL, 1);
    steps(tr, N, reset + N);
    float *p_reset = params_of(tr, &count);
    finish(&tr);

    // a new trainer (a new optimizer) given round 1's parameters, reading
    // what round 2 read, at the same (constant) learning rate
    snprintf(name, sizeof name, "fresh-%s", backend);
    tr = new_trainer(&b, name, NULL);
    merge(tr, round1, 0);
    steps(tr, N, fresh);
    float *p_fresh = params_of(tr, &count);
    finish(&tr);

    same_steps(reset + N, fresh, N);
    assert_memory_equal(p_reset, p_fresh, sizeof(float) * count);
    // round 1 and the first step of round 2 (taken from the same parameters)
    // are the same whether the merge resets or not; after that the reset shows
    same_steps(kept, reset, N + 1);
    for (int i = N + 1; i < 2 * N; i++) assert_true(kept[i].loss != reset[i].loss);
    assert_true(reset[0].loss != reset[N - 1].loss); // it trained
    free(round1);
    free(p_reset);
    free(p_fresh);
}

static void checkpoint_path(const char *run, int step, char *out, size_t n) {
    char file[64];
    ent_ckpt_name(step, file, sizeof file);
    snprintf(out, n, "%s/%s/checkpoints/%s", dir, run, file);
}

static int64_t attr_of(const char *path, const char *attr) {
    ent_ckpt_t *ck = NULL;
    int64_t v = -1;
    if (ent_ckpt_open(path, NULL, &ck) != ENT_OK) fail_msg("%s", ent_last_error());
    if (ent_ckpt_attr_i64(ck, attr, &v) != ENT_OK) fail_msg("%s", ent_last_error());
    ent_ckpt_close(&ck);
    return v;
}

#define K 2 // steps between the reset and the save

static void test_reset_saved_and_resumed(void **state) {
    const char *backend = *state;
    ent_config a = cfg;
    snprintf(a.backend, sizeof a.backend, "%s", backend);
    char name[64], resumed[64], ck_k[600], ck_end[600];
    snprintf(name, sizeof name, "saved-%s", backend);
    snprintf(resumed, sizeof resumed, "resumed-%s", backend);
    ent_step_stats run[2 * N], cont[2 * N];

    // a round, a reset, K steps, a save, the rest of the round; then a save,
    // a reset and the end of the run, which must save the reset again
    ent_trainer_t *tr = new_trainer(&a, name, NULL);
    steps(tr, N, run);
    merge(tr, NULL, 1);
    steps(tr, K, run + N);
    assert_int_equal(ent_trainer_save(tr), ENT_OK);
    steps(tr, N - K, run + N + K);
    assert_int_equal(ent_trainer_save(tr), ENT_OK);
    assert_int_equal(ent_trainer_reset_optimizer(tr), ENT_OK);
    finish(&tr);
    checkpoint_path(name, N + K, ck_k, sizeof ck_k);
    checkpoint_path(name, 2 * N, ck_end, sizeof ck_end);
    assert_int_equal(attr_of(ck_k, "step"), N + K);
    assert_int_equal(attr_of(ck_k, "optim.updates"), K);
    assert_int_equal(attr_of(ck_end, "step"), 2 * N);
    assert_int_equal(attr_of(ck_end, "optim.updates"), 0);

    // resumed after the reset: the same steps, bit for bit
    tr = new_trainer(&a, resumed, ck_k);
    assert_int_equal(ent_trainer_steps_done(tr), N + K);
    steps(tr, N - K, cont + N + K);
    finish(&tr);
    for (int i = N + K; i < 2 * N; i++) assert_int_equal(cont[i].step, i + 1);
    same_steps(run + N + K, cont + N + K, N - K);
}

// The outer loop sets the schedule's horizon; the sync point fails every
// rank when one part failed, and keeps the failing part's message.
static void test_horizon_and_sync(void **state) {
    (void)state;
    ent_trainer_t *tr = new_trainer(&cfg, "horizon", NULL);
    ent_trainer_set_horizon(tr, 1000);
    ent_step_stats s;
    for (int i = 0; i < 4; i++) assert_int_equal(ent_trainer_step(tr, &s), ENT_OK);
    assert_true(s.lr == ent_lr_schedule(&cfg, 4, 1000));
    assert_true(s.lr != ent_lr_schedule(&cfg, 4, cfg.steps));
    ent_status st = ent_trainer_sync(tr, ent_fail(ENT_ERR_IO, "a part failed here"), NULL);
    assert_int_equal(st, ENT_ERR_IO);
    assert_string_equal(ent_last_error(), "a part failed here");
    double val = 0.0;
    assert_int_equal(ent_trainer_eval(tr, &val), ENT_OK);
    assert_true(val > 0.0 && val < 10.0);
    finish(&tr);
}

// A test run on the backend named (its state), named after both.
#define ON_BACKEND(f, backend) \
    { #f " (" backend ")", f, NULL, NULL, backend }

int main(int argc, char **argv) {
    ent_ckpt_library_init();
    if (ent_comm_init(&argc, &argv, &comm) != ENT_OK || ent_grid_new(comm, 1, &grid) != ENT_OK) {
        fprintf(stderr, "test_trainer: %s\n", ent_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rounds_equal_one_run),
        ON_BACKEND(test_reset_is_a_fresh_optimizer, "cpu"),
        ON_BACKEND(test_reset_is_a_fresh_optimizer, "cpu-guarded"),
        ON_BACKEND(test_reset_saved_and_resumed, "cpu"),
        ON_BACKEND(test_reset_saved_and_resumed, "cpu-guarded"),
        cmocka_unit_test(test_horizon_and_sync),
    };
    int failed = cmocka_run_group_tests_name("trainer", tests, setup, teardown);
    ent_grid_free(&grid);
    ent_comm_finalize(&comm);
    return failed;
}
