// train.c: `entente train`, a short loop over the trainer object (trainer.c).
//
// Each step: one optimizer step; the evaluation and the sample when due (and
// at the last step); one sync, where the ranks agree on any error and on a
// stop request (SIGTERM, SIGUSR1 or SIGINT on any rank stops every rank after
// the same step, saves a checkpoint, and exits with code 75 for the batch
// script to requeue); a checkpoint every checkpoint.every steps. The last
// step is always saved.
#include "runtime_impl.h"

ent_status ent_train(const ent_config *cfg, const ent_train_opts *opts, ent_comm_t *comm) {
    if (cfg->coal_coordinator[0] != '\0') return ent_coalition_site(cfg, opts, comm);
    ent_trainer_t *tr = NULL;
    ENT_CHECK(ent_trainer_new(cfg, opts, comm, &tr));
    ent_status st = ENT_OK;
    int stopped_by = 0;
    if (!ent_trainer_resumed(tr)) {
        ENT_CHECK_GOTO(ent_trainer_sync(tr, ent_trainer_eval(tr, NULL), NULL), done);
        // the model before its first update, for checking that update from outside
        if (cfg->ckpt_at_start) ENT_CHECK_GOTO(ent_trainer_save(tr), done);
    }
    while (ent_trainer_steps_done(tr) < cfg->steps) {
        ENT_CHECK_GOTO(ent_trainer_step(tr, NULL), done);
        int step = ent_trainer_steps_done(tr), last = step == cfg->steps;
        ent_status io = ENT_OK;
        if ((cfg->eval_every > 0 && step % cfg->eval_every == 0) || last)
            io = ent_trainer_eval(tr, NULL);
        if (io == ENT_OK && ((cfg->sample_every > 0 && step % cfg->sample_every == 0) || last))
            io = ent_trainer_sample(tr);
        int stop = 0;
        ENT_CHECK_GOTO(ent_trainer_sync(tr, io, &stop), done);
        if (stop != 0 && !last) {
            stopped_by = stop;
            break;
        }
        if (cfg->ckpt_every > 0 && step % cfg->ckpt_every == 0 && !last)
            ENT_CHECK_GOTO(ent_trainer_save(tr), done);
    }
    st = ent_trainer_finish(tr, stopped_by);
done:
    ent_trainer_free(&tr);
    return st;
}
