// eval.c: the validation loss, the same computation for the trainer's
// evaluations and for `entente eval` on a checkpoint.
//
// The set is the first `want` sequences of the validation shards, in order,
// whatever the number of ranks: the same set for every run of a
// configuration. Data-parallel ranks share it out in chunks of `micro`
// sequences, rank r taking the r-th of every D consecutive chunks, and every
// rank runs the same number of forward passes (tensor parallelism needs
// them all). The loss of each chunk is weighted by its sequences.
#include "runtime_impl.h"

#include <stdlib.h>
#include <string.h>

ent_status ent_eval_loss(ent_model_t *model, const ent_dataset_t *val, int64_t want, int micro,
                         ent_group_t *dp, int32_t *inputs, int32_t *targets, double *out) {
    int64_t nseq = ent_dataset_num_sequences(val);
    if (want > nseq) want = nseq;
    int D = dp != NULL ? ent_group_size(dp) : 1, r = dp != NULL ? ent_group_rank(dp) : 0;
    int T = ent_model_get_shape(model)->context;
    ent_data_cursor start = {0};
    double sums[2] = {0.0, 0.0}; // loss x sequences, sequences
    int64_t chunk = micro, rounds = (want + chunk * D - 1) / (chunk * D);
    for (int64_t k = 0; k < rounds; k++) {
        int64_t first = (k * D + r) * chunk;
        int b = first >= want ? 0 : (int)(want - first < chunk ? want - first : chunk);
        int run = b > 0 ? b : 1; // a rank without data still joins the TP collectives
        ent_dataset_fill(val, &start, b > 0 ? first : 0, run, 0, 0, inputs, targets);
        float loss = 0.0f;
        ENT_CHECK(ent_model_forward(model, inputs, targets, run, T, &loss));
        sums[0] += b > 0 ? (double)loss * b : 0.0;
        sums[1] += b;
    }
    if (dp != NULL) ENT_CHECK(ent_allreduce(dp, sums, sums, 2, ENT_F64, ENT_SUM));
    *out = sums[0] / sums[1];
    return ENT_OK;
}

ent_status ent_eval_checkpoint(const char *path, const char *data_dir, int batches, FILE *out) {
    ent_config cfg;
    ent_backend_t *be = NULL;
    ent_model_t *m = NULL;
    ent_dataset_t *val = NULL;
    int32_t *inputs = NULL, *targets = NULL;
    // the micro-batch a one-rank run of the checkpoint's configuration takes,
    // so that the figure is the one its training run logged at that step
    ENT_CHECK(ent_config_from_checkpoint(&cfg, path, NULL, 0));
    int micro = cfg.micro_batch > 0 ? cfg.micro_batch : cfg.batch_size;
    const char *dir = data_dir != NULL ? data_dir : cfg.data_dir;
    if (batches <= 0) batches = cfg.eval_batches;
    ent_status st = ent_model_from_checkpoint(path, micro, &be, &m);
    if (st == ENT_OK) {
        char **vals = NULL;
        int nval = ent_glob_shards(dir, cfg.val_pattern, &vals);
        ent_free_paths(vals, nval > 0 ? nval : 0);
        if (nval < 0) st = ent_fail(ENT_ERR_INPUT, "%s", ent_last_error());
        else if (nval == 0)
            st = ent_fail(ENT_ERR_INPUT, "no validation shards match %s/%s (data.val_pattern of "
                          "the checkpoint's configuration; --data DIR names another directory)",
                          dir, cfg.val_pattern);
    }
    if (st == ENT_OK) st = ent_dataset_open(dir, cfg.val_pattern, cfg.vocab, cfg.context, &val);
    if (st == ENT_OK) {
        inputs = malloc(sizeof(int32_t) * (size_t)micro * (size_t)cfg.context);
        targets = malloc(sizeof(int32_t) * (size_t)micro * (size_t)cfg.context);
        if (inputs == NULL || targets == NULL)
            st = ent_fail(ENT_ERR_NOMEM, "out of memory for %d sequences of %d tokens", micro,
                          cfg.context);
    }
    double loss = 0.0;
    int64_t want = (int64_t)batches * cfg.batch_size;
    if (st == ENT_OK) st = ent_eval_loss(m, val, want, micro, NULL, inputs, targets, &loss);
    if (st == ENT_OK) {
        int64_t used = want < ent_dataset_num_sequences(val) ? want : ent_dataset_num_sequences(val);
        fprintf(out, "val loss %.6f over %lld sequences of %d tokens (%d batches x %d) from %s\n",
                loss, (long long)used, cfg.context, batches, cfg.batch_size, dir);
    }
    free(inputs);
    free(targets);
    ent_dataset_close(&val);
    ent_model_free(&m);
    ent_backend_free(&be);
    return st;
}
