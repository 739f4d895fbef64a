// test_trainer.c: the trainer object is what an outer loop drives. Two
// "rounds" of N steps with a merge in between (the parameters replaced by
// themselves through the backend's copies, the optimizer state kept) must
// give the losses, gradient norms and parameters of one run of 2N steps,
// bit for bit; the learning-rate horizon is the outer loop's to set; the sync
// point agrees on a failure of one part. Runs as one MPI rank.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ent_runtime.h"
#include "ref.h"

#define N 5 // steps per round

static ent_comm_t *comm;
static char dir[256];
static ent_config cfg;

static int setup(void **state) {
    (void)state;
    if (test_tmpdir_create(dir, sizeof dir, "trainer") != 0) return 1;
    // a corpus of seeded random words
    char text[512], data[300];
    snprintf(text, sizeof text, "%s/corpus.txt", dir);
    snprintf(data, sizeof data, "%s/data", dir);
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
    if (ent_data_prepare(&args, NULL, NULL) != ENT_OK) return 1;
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
    snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s", data);
    return ent_config_validate(&cfg) != ENT_OK;
}

static int teardown(void **state) {
    (void)state;
    test_tree_remove(dir);
    return 0;
}

static ent_trainer_t *new_trainer(const char *name, ent_train_opts *opts, char *run_dir,
                                  size_t n) {
    snprintf(run_dir, n, "%s/%s", dir, name);
    *opts = (ent_train_opts){.run_dir = run_dir};
    ent_trainer_t *tr = NULL;
    ent_status st = ent_trainer_new(&cfg, opts, comm, &tr);
    if (st != ENT_OK) fail_msg("ent_trainer_new: %s", ent_last_error());
    return tr;
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

static void test_rounds_equal_one_run(void **state) {
    (void)state;
    char run_dir[2][300];
    ent_train_opts opts[2];
    ent_step_stats one[2 * N], rounds[2 * N];
    // one run of 2N steps
    ent_trainer_t *tr = new_trainer("one", &opts[0], run_dir[0], sizeof run_dir[0]);
    for (int i = 0; i < 2 * N; i++) {
        assert_int_equal(ent_trainer_step(tr, &one[i]), ENT_OK);
        assert_int_equal(ent_trainer_sync(tr, ENT_OK, NULL), ENT_OK);
    }
    size_t count = 0, count2 = 0;
    float *p_one = params_of(tr, &count);
    assert_int_equal(ent_trainer_finish(tr, 0), ENT_OK);
    ent_trainer_free(&tr);
    assert_null(tr);

    // two rounds of N, a merge between them
    tr = new_trainer("rounds", &opts[1], run_dir[1], sizeof run_dir[1]);
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < N; i++) {
            assert_int_equal(ent_trainer_step(tr, &rounds[r * N + i]), ENT_OK);
            assert_int_equal(ent_trainer_sync(tr, ENT_OK, NULL), ENT_OK);
        }
        // the merge: new parameters (here the same) go in through the backend
        float *p = params_of(tr, &count2);
        ent_model_t *m = ent_trainer_model(tr);
        ent_backend_t *be = ent_model_backend(m);
        assert_int_equal(be->iface->to_device(be, ent_model_arena(m, ENT_ARENA_PARAMS), p,
                                              sizeof(float) * count2),
                         ENT_OK);
        free(p);
        int stop = -1;
        assert_int_equal(ent_trainer_sync(tr, ENT_OK, &stop), ENT_OK);
        assert_int_equal(stop, 0);
    }
    assert_int_equal(ent_trainer_steps_done(tr), 2 * N);
    float *p_rounds = params_of(tr, &count2);
    assert_int_equal(ent_trainer_finish(tr, 0), ENT_OK);
    ent_trainer_free(&tr);

    for (int i = 0; i < 2 * N; i++) {
        assert_int_equal(rounds[i].step, i + 1);
        assert_true(one[i].loss == rounds[i].loss);
        assert_true(one[i].grad_norm == rounds[i].grad_norm);
        assert_true(one[i].lr == rounds[i].lr);
    }
    assert_true(one[0].loss != one[2 * N - 1].loss); // it trained
    assert_int_equal(count, count2);
    assert_memory_equal(p_one, p_rounds, sizeof(float) * count);
    free(p_one);
    free(p_rounds);
}

// The outer loop sets the schedule's horizon; the sync point fails every
// rank when one part failed, and keeps the failing part's message.
static void test_horizon_and_sync(void **state) {
    (void)state;
    char run_dir[300];
    ent_train_opts opts;
    ent_trainer_t *tr = new_trainer("horizon", &opts, run_dir, sizeof run_dir);
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
    assert_int_equal(ent_trainer_finish(tr, 0), ENT_OK);
    ent_trainer_free(&tr);
}

int main(int argc, char **argv) {
    if (ent_comm_init(&argc, &argv, &comm) != ENT_OK) {
        fprintf(stderr, "test_trainer: %s\n", ent_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rounds_equal_one_run),
        cmocka_unit_test(test_horizon_and_sync),
    };
    int failed = cmocka_run_group_tests_name("trainer", tests, setup, teardown);
    ent_comm_finalize(&comm);
    return failed;
}
