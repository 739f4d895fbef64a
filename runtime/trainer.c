// trainer.c: the trainer object, everything one site's inner loop holds.
//
// `entente train` (train.c) is a short loop over it, and an outer loop (the
// coalition's rounds of inner steps, then a merge that replaces the
// parameters and keeps or resets the optimizer) drives the same object:
// ent_trainer_step, _eval, _sample, _save, _sync, _set_params and
// _reset_optimizer are the whole vocabulary.
//
// The world is a DP x TP grid (comm/). Each step, every data-parallel rank
// takes its own micro-batches of the global batch from the shared data cursor,
// accumulates gradients, and the optimizer reduces them over the DP group
// (bucket by bucket during the last backward pass, or by reduce-scatter for
// ZeRO-1); then global-norm clipping and AdamW with the warm-up + cosine
// schedule. World rank 0 prints progress and writes the run directory.
//
// Ranks agree at every step: on any error (a rank that cannot write its
// files fails the whole job cleanly, not half of it) and on a stop request
// (SIGTERM, SIGUSR1 or SIGINT on any rank stops every rank after the same
// step, saves a checkpoint, and exits with code 75 for the batch script to
// requeue). Checkpoints are saved every checkpoint.every steps and at the end;
// a run resumed from one continues exactly where it stopped, on any layout.
#include "runtime_impl.h"
#include "ent_ckpt.h"
#include "ent_version.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double ent_lr_schedule(const ent_config *cfg, int step, int horizon) {
    double lr = cfg->lr, floor_lr = cfg->lr * cfg->lr_floor;
    if (step <= cfg->warmup_steps) return lr * ((double)step / cfg->warmup_steps);
    int decay_steps = horizon - cfg->warmup_steps;
    if (decay_steps <= 0) return lr;
    double progress = (double)(step - cfg->warmup_steps) / decay_steps;
    if (progress > 1.0) progress = 1.0;
    return floor_lr + 0.5 * (lr - floor_lr) * (1.0 + cos(M_PI * progress));
}

static void format_duration(double s, char *buf, size_t n) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, n, "%lds", t);
}

void ent_eta_add(ent_eta *eta, double step_seconds) {
    eta->seconds[eta->next] = step_seconds;
    eta->next = (eta->next + 1) % ENT_ETA_WINDOW;
    if (eta->count < ENT_ETA_WINDOW) eta->count++;
}

double ent_eta_remaining(const ent_eta *eta, int steps_left) {
    if (eta->count == 0) return NAN;
    double sum = 0.0;
    for (int i = 0; i < eta->count; i++) sum += eta->seconds[i];
    return sum / eta->count * steps_left;
}

// ---------------------------------------------------------------------------
// stop requests

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) {
    stop_signal = sig;
    // a second Ctrl-C ends the process at once
    if (sig == SIGINT) signal(SIGINT, SIG_DFL);
}

static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static const char *signal_name(int sig) {
    return sig == SIGTERM ? "SIGTERM" : sig == SIGUSR1 ? "SIGUSR1" : sig == SIGINT ? "SIGINT"
                                                                                     : "a signal";
}

// ---------------------------------------------------------------------------
// state of one training run

struct ent_trainer {
    const ent_config *cfg;
    ent_comm_t *comm;
    ent_grid *grid;
    ent_backend_t *be;
    ent_model_t *model;
    ent_optim_t *optim;
    ent_dataset_t *train, *val;
    ent_data_cursor cursor;
    uint64_t data_seed;
    int micro, accum, T, threads;
    int leader;  // world rank 0: prints and writes the run directory
    int tty;     // the leader's stdout is a terminal
    int32_t *inputs, *targets; // (micro, T) host
    FILE *metrics, *samples;
    const char *run_dir;
    const ent_train_opts *opts;
    int32_t *prompt;
    int nprompt;
    ent_tokenizer_t *tok; // data.tokenizer (NULL: bytes)
    double t_start;
    ent_ckpt_saver_t *saver;
    char ckpt_dir[ENT_PATH_MAX];
    int ckpt_unlogged;   // the step of a save whose metrics record waits for its
                         // blocked time (an async save: until its copy is made)
    int start_step;      // the step a resumed run continues from (0: a new run)
    const char *resumed; // the checkpoint it was resumed from
    int step;            // optimizer steps done
    int horizon;         // the step the learning-rate schedule ends at
    int saved;           // the step of the last save, if the state has not changed
                         // since (-1: none, or new parameters or a reset after it)
    ent_status io;       // first failure writing the run directory since the last sync
    size_t nparams;
    double val_loss;     // the last evaluation's (NaN before one)
    double train_time;   // seconds inside steps
    double t_mark;       // the last progress line (for the ETA)
    ent_eta eta;
    // a backend whose memory the host must not touch: host copies of the
    // parameters and this rank's AdamW moments, which the checkpoint writes
    // from and reads into (NULL on a host-memory backend)
    float *host_params, *host_m, *host_v;
    // a coalition's site: its state for checkpoints, and the site and round
    // every step record names (NULL: training alone)
    const ent_ckpt_coalition *coalition;
    const char *site;
    int round;
};

typedef struct ent_trainer trainer;

// A launcher (mpirun, srun) hands each rank a pseudo-terminal even when its
// output goes to a file, so only a process started directly counts.
static int stdout_is_terminal(void) {
    const char *launched[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof launched / sizeof launched[0]; i++)
        if (getenv(launched[i]) != NULL) return 0;
    const char *term = getenv("TERM");
    return isatty(STDOUT_FILENO) && !(term != NULL && strcmp(term, "dumb") == 0);
}

// CPU threads per rank: system.threads, else OMP_NUM_THREADS, else the cores
// this rank is bound to, else the node's cores shared by its ranks.
static int choose_threads(const ent_config *cfg, const ent_comm_t *comm) {
    if (cfg->threads > 0) return cfg->threads;
    if (getenv("OMP_NUM_THREADS") != NULL) return 0; // OpenMP reads it
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < online)
        return CPU_COUNT(&set);
    long per_rank = online / ent_comm_local_size(comm);
    return per_rank > 0 ? (int)per_rank : 1;
}

// Terminal output of the leader. On a terminal every step rewrites one status
// line and the lines of every log_every-th step (and evaluations) stay;
// elsewhere (a Slurm log, a pipe) only the lines that stay are written.
static void progress(const trainer *tr, int keep, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void progress(const trainer *tr, int keep, const char *fmt, ...) {
    if (!tr->leader || (!keep && !tr->tty)) return;
    va_list ap;
    va_start(ap, fmt);
    if (tr->tty) fputs("\r\033[K", stdout);
    vprintf(fmt, ap);
    va_end(ap);
    if (keep) fputc('\n', stdout);
    fflush(stdout);
}

// Flushes a run file; a write that failed (a full disk, say) stops the run.
static ent_status flush_run_file(const trainer *tr, FILE *f, const char *name) {
    if (fflush(f) != 0 || ferror(f))
        return ent_fail(ENT_ERR_IO, "cannot write %s/%s: %s", tr->run_dir, name,
                        strerror(errno ? errno : EIO));
    return ENT_OK;
}

// The one writer of metrics.jsonl (the leader's): one record, flushed; a
// write that failed stops the run at the next sync.
static ent_status metrics_record(const trainer *tr, const ent_json_field *fields, int n) {
    if (!tr->leader) return ENT_OK;
    ent_json_line(tr->metrics, fields, n);
    return flush_run_file(tr, tr->metrics, "metrics.jsonl");
}

// Mean validation loss over the first eval.batches x batch_size validation
// sequences (fewer if there are fewer), shared out among the DP ranks (eval.c).
static ent_status eval_loss(trainer *tr, double *out) {
    int64_t want = (int64_t)tr->cfg->eval_batches * tr->cfg->batch_size;
    return ent_eval_loss(tr->model, tr->val, want, tr->micro, tr->grid->dp, tr->inputs,
                         tr->targets, out);
}

static ent_status write_sample(trainer *tr, int step) {
    const ent_config *cfg = tr->cfg;
    if (cfg->sample_tokens == 0) return ENT_OK;
    int32_t *out = malloc(sizeof(int32_t) * (size_t)cfg->sample_tokens);
    if (out == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory for a sample");
    // every rank samples (tensor parallelism needs them all); the leader writes
    ent_status st = ent_sample(tr->model, tr->prompt, tr->nprompt, cfg->sample_tokens,
                               cfg->sample_temperature, cfg->sample_seed, out);
    if (st != ENT_OK || !tr->leader) {
        free(out);
        return st;
    }
    if (tr->tty) fputs("\r\033[K", stdout); // over a status line left by progress()
    FILE *dests[2] = {stdout, tr->samples};
    for (int i = 0; i < 2; i++) {
        FILE *f = dests[i];
        fprintf(f, "---- sample at step %d (temperature %g) ----\n", step,
                cfg->sample_temperature);
        ent_tokens_print(f, tr->tok, tr->prompt + 1, tr->nprompt - 1, cfg->vocab);
        ent_tokens_print(f, tr->tok, out, cfg->sample_tokens, cfg->vocab);
        fprintf(f, "\n----\n");
    }
    free(out);
    fflush(stdout);
    return flush_run_file(tr, tr->samples, "samples.txt");
}

static ent_status run_eval(trainer *tr, int step, double *val_loss) {
    if (tr->val == NULL) return ENT_OK;
    double loss;
    ENT_CHECK(eval_loss(tr, &loss));
    *val_loss = loss;
    progress(tr, 1, "step %6d/%d | val loss %.4f", step, tr->cfg->steps, loss);
    ent_json_field rec[] = {ENT_JINT("step", step), ENT_JNUM("val_loss", loss),
                            ENT_JNUM("elapsed_s", ent_now_seconds() - tr->t_start)};
    return metrics_record(tr, rec, (int)(sizeof rec / sizeof rec[0]));
}

// One optimizer step: this rank's micro-batches of the global batch, the
// gradients' synchronisation over the DP group, clipping, AdamW. Returns the
// global mean loss and gradient norm.
static ent_status train_step(trainer *tr, int step, double lr, double *loss_out,
                             double *norm_out) {
    const ent_config *cfg = tr->cfg;
    int D = tr->grid->dp_size;
    ENT_CHECK(ent_model_zero_grad(tr->model));
    float dloss = 1.0f / ((float)tr->micro * (float)tr->T * (float)tr->accum * (float)D);
    double loss_sum = 0.0;
    for (int a = 0; a < tr->accum; a++) {
        // the step's global batch is micro-batch a of every rank in turn
        int64_t skip = ((int64_t)a * D + tr->grid->dp_rank) * tr->micro;
        ent_dataset_fill(tr->train, &tr->cursor, skip, tr->micro, cfg->shuffle, tr->data_seed,
                         tr->inputs, tr->targets);
        float loss = 0.0f;
        ENT_CHECK(ent_model_forward(tr->model, tr->inputs, tr->targets, tr->micro, tr->T, &loss));
        ent_optim_begin_backward(tr->optim, a == tr->accum - 1);
        ENT_CHECK(ent_model_backward(tr->model, dloss));
        loss_sum += loss;
    }
    tr->cursor.consumed += (int64_t)cfg->batch_size;
    ENT_CHECK(ent_optim_reduce_grads(tr->optim));
    double loss = loss_sum / tr->accum, norm;
    ENT_CHECK(ent_allreduce(tr->grid->dp, &loss, &loss, 1, ENT_F64, ENT_AVG));
    ENT_CHECK(ent_optim_grad_norm(tr->optim, &norm));
    *loss_out = loss;
    *norm_out = norm;
    // every rank sees the same loss and norm, so every rank stops here together
    if (!isfinite(loss) || !isfinite(norm))
        return ent_fail(ENT_ERR_INPUT,
                        "training diverged at step %d: loss %g, gradient norm %g (lower train.lr "
                        "or train.grad_clip)", step, loss, norm);
    float scale = 1.0f;
    if (cfg->grad_clip > 0 && norm > cfg->grad_clip) scale = (float)(cfg->grad_clip / norm);
    ent_adamw hp = {(float)lr, (float)cfg->beta1, (float)cfg->beta2, (float)cfg->eps,
                    (float)cfg->weight_decay};
    // an asynchronous save copies the state beside this step's forward and
    // backward; the update writes the state, so it waits for the copy
    ent_ckpt_wait_staged(tr->saver);
    ENT_CHECK(ent_optim_update(tr->optim, &hp, scale));
    return ent_optim_share_params(tr->optim);
}

// ---------------------------------------------------------------------------
// set-up

// Every rank must run the same configuration: compare a hash of its text.
static ent_status check_same_config(const ent_config *cfg, ent_comm_t *comm, ent_grid *grid) {
    size_t len = 0;
    char *text = ent_config_text(cfg, &len);
    if (text == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    uint64_t h = ent_hash_bytes(text, len, 0), lo = h, hi = h;
    free(text);
    ENT_CHECK(ent_allreduce(grid->world, &h, &lo, 1, ENT_U64, ENT_MIN));
    ENT_CHECK(ent_allreduce(grid->world, &h, &hi, 1, ENT_U64, ENT_MAX));
    if (lo != hi)
        return ent_fail(ENT_ERR_USAGE,
                        "the %d ranks do not run the same configuration (this rank's hash "
                        "%016llx, others range %016llx..%016llx): give every rank the same "
                        "--config file and --set options", ent_comm_size(comm),
                        (unsigned long long)h, (unsigned long long)lo, (unsigned long long)hi);
    return ENT_OK;
}

// Micro-batch and accumulation for dp ranks; errors name the keys.
static ent_status batch_geometry(const ent_config *cfg, int dp, int *micro, int *accum) {
    if (cfg->micro_batch == 0) {
        if (cfg->batch_size % dp != 0)
            return ent_fail(ENT_ERR_USAGE,
                            "train.batch_size = %d is not divisible by the %d data-parallel "
                            "ranks (world size / parallel.tp)", cfg->batch_size, dp);
        *micro = cfg->batch_size / dp;
    } else {
        *micro = cfg->micro_batch;
        if (cfg->batch_size % (cfg->micro_batch * dp) != 0)
            return ent_fail(ENT_ERR_USAGE,
                            "train.batch_size = %d is not a multiple of train.micro_batch x "
                            "data-parallel ranks = %d x %d", cfg->batch_size, cfg->micro_batch, dp);
    }
    *accum = cfg->batch_size / (*micro * dp);
    return ENT_OK;
}

#define TOPOLOGY_FIELDS 9

// The layout of the job, for the start record and run.json.
static void topology_fields(const trainer *tr, ent_json_field *f) {
    const ent_grid *g = tr->grid;
    f[0] = ENT_JINT("world_size", ent_comm_size(tr->comm));
    f[1] = ENT_JINT("dp", g->dp_size);
    f[2] = ENT_JINT("tp", g->tp_size);
    f[3] = ENT_JINT("zero", tr->cfg->zero);
    f[4] = ENT_JINT("nodes", ent_comm_num_nodes(tr->comm));
    f[5] = ENT_JINT("ranks_per_node", ent_comm_local_size(tr->comm));
    f[6] = ENT_JINT("threads_per_rank", tr->be->threads);
    f[7] = ENT_JSTR("slurm_job_id", getenv("SLURM_JOB_ID"));
    f[8] = ENT_JSTR("slurm_nodelist", getenv("SLURM_JOB_NODELIST"));
}

static ent_status write_run_files(const trainer *tr, size_t nparams) {
    char path[ENT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/config.ini", tr->run_dir);
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (mem == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    fprintf(mem, "; effective configuration of this run (source: %s)\n",
            tr->cfg->path[0] ? tr->cfg->path : "defaults");
    ent_config_write(tr->cfg, mem);
    fclose(mem);
    ent_status st = ent_write_file_atomic(path, text, len);
    free(text);
    ENT_CHECK(st);

    snprintf(path, sizeof path, "%s/run.json", tr->run_dir);
    mem = open_memstream(&text, &len);
    if (mem == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    time_t now = time(NULL);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S%z", localtime(&now));
    ent_json_field run[TOPOLOGY_FIELDS + 12] = {
        ENT_JSTR("entente_version", ENT_VERSION), ENT_JSTR("revision", ENT_GIT_REVISION),
        ENT_JSTR("started", when), ENT_JSTR("host", host), ENT_JSTR("config", tr->cfg->path)};
    int n = 5;
    topology_fields(tr, run + n);
    n += TOPOLOGY_FIELDS;
    run[n++] = ENT_JSTR("backend", tr->be->iface->name);
    run[n++] = ENT_JSTR("blas", tr->be->iface->describe(tr->be));
    run[n++] = ENT_JSTR("precision", ent_dtype_name(tr->be->act_dtype));
    run[n++] = ENT_JINT("parameters", nparams);
    run[n++] = ENT_JINT("micro_batch", tr->micro);
    run[n++] = ENT_JINT("grad_accum", tr->accum);
    ent_json_line(mem, run, n);
    fclose(mem);
    st = ent_write_file_atomic(path, text, len);
    free(text);
    return st;
}

static ent_status open_run_file(const trainer *tr, const char *name, FILE **out) {
    char path[ENT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", tr->run_dir, name);
    // a resumed run continues its files (a step redone after the checkpoint
    // appears again; the last record of a step is the one that counts); a new
    // run gets here only with a run directory that holds none, or --force
    *out = fopen(path, tr->opts->continues ? "a" : "w");
    if (*out == NULL) return ent_fail(ENT_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return ENT_OK;
}

// The leader's run directory: files, and the start record of metrics.jsonl.
static ent_status open_run_dir(trainer *tr, size_t nparams) {
    ENT_CHECK(ent_mkdirs(tr->run_dir));
    ENT_CHECK(write_run_files(tr, nparams));
    ENT_CHECK(open_run_file(tr, "metrics.jsonl", &tr->metrics));
    ENT_CHECK(open_run_file(tr, "samples.txt", &tr->samples));
    ent_json_field rec[TOPOLOGY_FIELDS + 3] = {ENT_JSTR("event", "start")};
    topology_fields(tr, rec + 1);
    int n = 1 + TOPOLOGY_FIELDS;
    if (tr->resumed) {
        rec[n++] = ENT_JSTR("resumed_from", tr->resumed);
        rec[n++] = ENT_JINT("resumed_step", tr->start_step);
    }
    return metrics_record(tr, rec, n);
}

// ---------------------------------------------------------------------------
// the run directory belongs to one run

static const char *const run_files[] = {"metrics.jsonl", "samples.txt", "config.ini", "run.json"};

// Is file in the directory dir (symbolic links resolved)?
static int same_dir(const char *dir, const char *file) {
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(dir, a) == NULL || realpath(file, b) == NULL) return 0;
    char *slash = strrchr(b, '/');
    if (slash == NULL) return 0;
    *slash = '\0';
    return strcmp(a, b[0] ? b : "/") == 0;
}

// The checkpoints in the checkpoint directory, for messages ("" when none).
static void describe_checkpoints(const char *dir, char *buf, size_t n) {
    buf[0] = '\0';
    int64_t *steps = NULL;
    int count = ent_ckpt_list_steps(dir, &steps);
    char link[ENT_PATH_MAX + 16], target[ENT_PATH_MAX];
    snprintf(link, sizeof link, "%s/latest", dir);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (count > 0) {
        char first[64], last[64];
        ent_ckpt_name(steps[0], first, sizeof first);
        ent_ckpt_name(steps[count - 1], last, sizeof last);
        snprintf(buf, n, "%d checkpoint(s), %s%s%s", count, first, count > 1 ? " .. " : "",
                 count > 1 ? last : "");
    } else if (len >= 0) {
        target[len] = '\0';
        snprintf(buf, n, "a 'latest' pointer to %s", target);
    }
    free(steps);
}

// Before anything is written (the leader): a new run needs a run directory
// and a checkpoint directory that hold no other run, unless --force; a run
// that continues (--resume) may only write checkpoints beside the ones it
// continues. Nothing is changed here.
static ent_status check_run_dir(const trainer *tr) {
    const ent_train_opts *o = tr->opts;
    if (o->force) return ENT_OK;
    char path[ENT_PATH_MAX + 64];
    if (!o->continues) {
        for (size_t i = 0; i < sizeof run_files / sizeof run_files[0]; i++) {
            snprintf(path, sizeof path, "%s/%s", tr->run_dir, run_files[i]);
            struct stat sb;
            if (lstat(path, &sb) == 0)
                return ent_fail(ENT_ERR_USAGE,
                                "run directory %s already holds a run (%s): continue it with "
                                "--resume latest, start over with --force (which replaces its "
                                "files and removes its checkpoints), or choose another --run-dir",
                                tr->run_dir, path);
        }
    }
    char held[ENT_PATH_MAX + 128];
    describe_checkpoints(tr->ckpt_dir, held, sizeof held);
    if (held[0] == '\0' || (o->resume != NULL && same_dir(tr->ckpt_dir, o->resume)))
        return ENT_OK;
    const char *key = tr->cfg->ckpt_dir[0] ? "checkpoint.dir" : "the run's checkpoint directory";
    if (o->resume != NULL)
        return ent_fail(ENT_ERR_USAGE,
                        "%s %s holds another run's checkpoints (%s): a run resumed from %s "
                        "would mix its checkpoints with them; choose another --run-dir or "
                        "checkpoint.dir", key, tr->ckpt_dir, held, o->resume);
    if (o->continues)
        return ent_fail(ENT_ERR_USAGE,
                        "%s %s holds %s but no 'latest' checkpoint to continue from: resume one "
                        "of them with --resume FILE, or start over with --force",
                        key, tr->ckpt_dir, held);
    return ent_fail(ENT_ERR_USAGE,
                    "%s %s already holds %s: continue that run with --resume latest, start over "
                    "with --force (which removes them), or choose another --run-dir or "
                    "checkpoint.dir", key, tr->ckpt_dir, held);
}

// --force (the leader, once every check has passed): the earlier run's
// checkpoints go, so that `latest` and retention only ever see this run's.
static ent_status remove_earlier_checkpoints(const trainer *tr) {
    int64_t *steps = NULL;
    int n = ent_ckpt_list_steps(tr->ckpt_dir, &steps), removed = 0;
    char path[ENT_PATH_MAX + 80], name[64];
    ent_status st = ENT_OK;
    for (int i = 0; i < n && st == ENT_OK; i++) {
        ent_ckpt_name(steps[i], name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", tr->ckpt_dir, name);
        if (unlink(path) == 0) removed++;
        else if (errno != ENOENT)
            st = ent_fail(ENT_ERR_IO, "--force: cannot remove %s: %s", path, strerror(errno));
    }
    free(steps);
    for (int i = 0; i < 2 && st == ENT_OK; i++) {
        snprintf(path, sizeof path, "%s/%s", tr->ckpt_dir, i ? "latest.tmp" : "latest");
        if (unlink(path) != 0 && errno != ENOENT)
            st = ent_fail(ENT_ERR_IO, "--force: cannot remove %s: %s", path, strerror(errno));
    }
    if (removed > 0)
        ent_log_notice("--force: removed %d checkpoint(s) of the earlier run from %s", removed,
                       tr->ckpt_dir);
    return st;
}

// The layout given (parallel.tp) must fit the world; a resume takes its
// layout from the command line and the world, never from the checkpoint.
static ent_status check_layout(const ent_config *cfg, const ent_comm_t *comm) {
    int world = ent_comm_size(comm);
    if (world % cfg->tp == 0) return ENT_OK;
    int fit = 1; // the largest tensor-parallel size these ranks allow
    for (int t = 1; t <= world; t++)
        if (world % t == 0 && cfg->heads % t == 0) fit = t;
    return ent_fail(ENT_ERR_USAGE,
                    "parallel.tp = %d does not divide the world size %d: start a multiple of %d "
                    "ranks, or give --set parallel.tp=%d (parallel.tp must divide both the world "
                    "size and model.heads = %d)", cfg->tp, world, cfg->tp, fit, cfg->heads);
}

static ent_status prepare_model(trainer *tr) {
    const ent_config *cfg = tr->cfg;
    // a GPU backend takes the node-local rank's GPU (modulo the GPUs visible)
    ent_backend_opts bopts = {.threads = tr->threads, .device = ent_comm_local_rank(tr->comm)};
    ENT_CHECK(ent_precision_parse(cfg->precision, &bopts.precision));
    ENT_CHECK(ent_backend_new(cfg->backend, &bopts, &tr->be));
    // the model's TP all-reduces and the optimizer's DP collectives run on
    // the backend's memory: groups that reach it
    ENT_CHECK(ent_grid_attach_device(tr->grid, tr->be));
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    ent_model_opts opts = {
        .tp = tr->grid->tp_size > 1 ? tr->grid->tp_dev : NULL,
        .arena_multiple = 16 * (size_t)tr->grid->dp_size,
    };
    ENT_CHECK(ent_model_new(tr->be, &shape, &opts, tr->micro, tr->T, &tr->model));
    ENT_CHECK(ent_model_init(tr->model, cfg->seed));
    ENT_CHECK(ent_optim_new(tr->model, tr->grid, cfg->zero, &tr->optim));
    if (!tr->be->iface->is_host) {
        size_t first, count = ent_optim_state_floats(tr->optim, &first);
        tr->host_params = malloc(sizeof(float) * ent_model_arena_floats(tr->model));
        tr->host_m = malloc(sizeof(float) * (count ? count : 1));
        tr->host_v = malloc(sizeof(float) * (count ? count : 1));
        if (tr->host_params == NULL || tr->host_m == NULL || tr->host_v == NULL)
            return ent_fail(ENT_ERR_NOMEM, "out of memory for the host copy of the state");
    }
    tr->inputs = malloc(sizeof(int32_t) * (size_t)tr->micro * tr->T);
    tr->targets = malloc(sizeof(int32_t) * (size_t)tr->micro * tr->T);
    if (tr->inputs == NULL || tr->targets == NULL)
        return ent_fail(ENT_ERR_NOMEM, "out of memory for batch buffers");
    if (cfg->data_tokenizer[0] != '\0') {
        ENT_CHECK(ent_tokenizer_load(cfg->data_tokenizer, &tr->tok));
        if (ent_tokenizer_vocab(tr->tok) > (uint32_t)cfg->vocab)
            return ent_fail(ENT_ERR_USAGE, "data.tokenizer %s has %u tokens: it needs "
                            "model.vocab = %u or more, not %d", cfg->data_tokenizer,
                            ent_tokenizer_vocab(tr->tok), ent_tokenizer_vocab(tr->tok), cfg->vocab);
    }
    return ent_prompt_encode(tr->tok, cfg->sample_prompt, cfg->vocab, &tr->prompt, &tr->nprompt);
}

static ent_status open_data(trainer *tr) {
    const ent_config *cfg = tr->cfg;
    ENT_CHECK(ent_data_check_split(cfg->data_dir, cfg->train_pattern, cfg->val_pattern));
    ENT_CHECK(ent_dataset_open(cfg->data_dir, cfg->train_pattern, cfg->vocab, tr->T, &tr->train));
    char **vals = NULL;
    int nval = ent_glob_shards(cfg->data_dir, cfg->val_pattern, &vals);
    ent_free_paths(vals, nval > 0 ? nval : 0);
    if (nval > 0)
        return ent_dataset_open(cfg->data_dir, cfg->val_pattern, cfg->vocab, tr->T, &tr->val);
    if (tr->leader)
        ent_log_warn("no validation shards match %s/%s: training without validation loss",
                     cfg->data_dir, cfg->val_pattern);
    return ENT_OK;
}

// Do all DP replicas hold bit-identical parameters? (They must: this catches
// silent divergence, e.g. non-deterministic reductions.)
static ent_status replicas_identical(trainer *tr, int *same) {
    size_t bytes = sizeof(float) * ent_model_arena_floats(tr->model);
    const float *p = ent_model_arena(tr->model, ENT_ARENA_PARAMS);
    // a backend whose memory the host must not touch: through the host copy
    // the checkpoint uses (no second copy of the parameters on the host)
    if (tr->host_params != NULL) {
        ENT_CHECK(tr->be->iface->to_host(tr->be, tr->host_params, p, bytes));
        p = tr->host_params;
    }
    uint64_t h = ent_hash_bytes(p, bytes, 0), lo, hi;
    ENT_CHECK(ent_allreduce(tr->grid->dp, &h, &lo, 1, ENT_U64, ENT_MIN));
    ENT_CHECK(ent_allreduce(tr->grid->dp, &h, &hi, 1, ENT_U64, ENT_MAX));
    int64_t ok = lo == hi, all = 0;
    ENT_CHECK(ent_allreduce(tr->grid->world, &ok, &all, 1, ENT_I64, ENT_MIN));
    *same = (int)all;
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// checkpoints

void ent_checkpoint_dir(const ent_config *cfg, const char *run_dir, char *out, size_t n) {
    if (cfg->ckpt_dir[0]) snprintf(out, n, "%s", cfg->ckpt_dir);
    else snprintf(out, n, "%s/checkpoints", run_dir);
}

// What this rank holds and which part it writes: its 1/DP share of the arena
// (under ZeRO-1 exactly its AdamW shard). The checkpoint reads and writes
// host memory: the backend's arenas, or their host copies (state_to_host,
// state_to_device) on a backend whose memory the host must not touch.
static ent_ckpt_shard rank_shard(trainer *tr) {
    ent_ckpt_shard sh = {0};
    sh.table = ent_model_table(tr->model);
    sh.tp_rank = tr->grid->tp_rank;
    sh.tp_size = tr->grid->tp_size;
    sh.params = ent_model_arena(tr->model, ENT_ARENA_PARAMS);
    ent_optim_moments(tr->optim, &sh.adam_m, &sh.adam_v);
    if (tr->host_params != NULL) {
        sh.params = tr->host_params;
        sh.adam_m = tr->host_m;
        sh.adam_v = tr->host_v;
    }
    sh.state_count = ent_optim_state_floats(tr->optim, &sh.state_first);
    size_t share = ent_model_arena_floats(tr->model) / (size_t)tr->grid->dp_size;
    sh.write_first = share * (size_t)tr->grid->dp_rank;
    sh.write_count = share;
    sh.replicas = tr->grid->dp;
    sh.coalition = tr->coalition;
    return sh;
}

// The state into its host copies (a save), or back from them (a resume);
// nothing to do on a host-memory backend.
static ent_status state_copy(trainer *tr, int to_device) {
    if (tr->host_params == NULL) return ENT_OK;
    ent_backend_t *be = tr->be;
    float *m = NULL, *v = NULL, *p = ent_model_arena(tr->model, ENT_ARENA_PARAMS);
    ent_optim_moments(tr->optim, &m, &v);
    size_t first, count = ent_optim_state_floats(tr->optim, &first);
    void *dev[3] = {p, m, v}, *host[3] = {tr->host_params, tr->host_m, tr->host_v};
    size_t bytes[3] = {sizeof(float) * ent_model_arena_floats(tr->model), sizeof(float) * count,
                       sizeof(float) * count};
    for (int i = 0; i < 3; i++)
        ENT_CHECK(to_device ? be->iface->to_device(be, dev[i], host[i], bytes[i])
                            : be->iface->to_host(be, host[i], dev[i], bytes[i]));
    return ENT_OK;
}

// The metrics record of the last save, once the time it held training is
// known: at once for a synchronous save, after the copy for an asynchronous
// one (the next step's update, or the end of the run).
static ent_status log_checkpoint(trainer *tr) {
    int step = tr->ckpt_unlogged;
    tr->ckpt_unlogged = 0;
    if (step == 0 || !tr->leader) return ENT_OK;
    char name[64], path[ENT_PATH_MAX + 80];
    ent_ckpt_name(step, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", tr->ckpt_dir, name);
    ent_json_field rec[] = {ENT_JSTR("event", "checkpoint"), ENT_JINT("step", step),
                            ENT_JSTR("file", path), ENT_JBOOL("async", tr->cfg->ckpt_async),
                            ENT_JNUM("blocked_s", ent_ckpt_last_blocked_seconds(tr->saver))};
    return metrics_record(tr, rec, (int)(sizeof rec / sizeof rec[0]));
}

static ent_status save_checkpoint(trainer *tr, int step) {
    const ent_config *cfg = tr->cfg;
    ent_run_state rs = {.step = step, .updates = ent_optim_updates(tr->optim),
                        .consumed = tr->cursor.consumed,
                        .sequences = ent_dataset_num_sequences(tr->train),
                        .world = ent_comm_size(tr->comm), .dp = tr->grid->dp_size,
                        .tp = tr->grid->tp_size};
    ent_run_attrs ra;
    ENT_CHECK(ent_run_attrs_build(&ra, cfg, &rs));
    const ent_ckpt_attr *attrs = ra.attrs;
    // the host copies may be refreshed once an earlier save has taken its own
    ent_ckpt_wait_staged(tr->saver);
    ent_status st = state_copy(tr, 0);
    ent_ckpt_shard sh = rank_shard(tr);
    char name[64];
    ent_ckpt_name(step, name, sizeof name);
    if (st == ENT_OK)
        st = ent_ckpt_save(tr->saver, name, attrs, ra.count, &sh);
    ent_run_attrs_free(&ra);
    if (st != ENT_OK) {
        if (strcmp(cfg->ckpt_on_error, "stop") == 0)
            return ent_fail(st, "checkpoint at step %d failed (the previous checkpoint is intact; "
                            "checkpoint.on_error = stop): %s", step, ent_last_error());
        if (tr->leader)
            ent_log_warn("checkpoint at step %d failed, training goes on (checkpoint.on_error = "
                         "continue): %s", step, ent_last_error());
        return ENT_OK;
    }
    tr->ckpt_unlogged = step;
    return cfg->ckpt_async ? ENT_OK : log_checkpoint(tr);
}

ent_status ent_check_same_model(const ent_config *cfg, const char *path, const ent_config *theirs) {
    const char *keys[] = {"model.layers", "model.heads", "model.width", "model.context",
                          "model.vocab"};
    int64_t mine[] = {cfg->layers, cfg->heads, cfg->width, cfg->context, cfg->vocab};
    int64_t saved[] = {theirs->layers, theirs->heads, theirs->width, theirs->context,
                       theirs->vocab};
    char diff[1024] = "";
    size_t used = 0;
    // a llama's positions are rotary, with no table: it resumes at any context
    int llama = strcmp(cfg->arch, "llama") == 0 && strcmp(theirs->arch, "llama") == 0;
    for (int i = 0; i < 5; i++) {
        if (llama && i == 3) continue;
        if (saved[i] != mine[i])
            used += (size_t)snprintf(diff + used, sizeof diff - used, "%s%s: checkpoint %lld, this "
                                     "run %lld", used ? "; " : "", keys[i], (long long)saved[i],
                                     (long long)mine[i]);
        if (used >= sizeof diff) used = sizeof diff - 1;
    }
    if (strcmp(theirs->arch, cfg->arch) != 0)
        used += (size_t)snprintf(diff + used, sizeof diff - used, "%smodel.arch: checkpoint %s, "
                                 "this run %s", used ? "; " : "", theirs->arch, cfg->arch);
    else if (!used) {
        ent_config *same = malloc(sizeof *same);
        if (same == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
        *same = *theirs;
        same->context = cfg->context;
        if (ent_model_shape_hash(same) != ent_model_shape_hash(cfg))
            used += (size_t)snprintf(diff + used, sizeof diff - used, "the llama keys differ "
                                     "(model.n_kv_heads, ffn_hidden, tie_embeddings, rope_*, "
                                     "rms_eps)");
        free(same);
    }
    if (used >= sizeof diff) used = sizeof diff - 1;
    if (used)
        return ent_fail(ENT_ERR_USAGE, "%s holds another model than this run trains: %s", path,
                        diff);
    return ENT_OK;
}

// Compares the checkpoint's model (its stored configuration's, checked
// against its model.* attributes) with this run's: every difference is named.
static ent_status check_same_model(trainer *tr, const char *path, const ent_config *theirs) {
    const ent_config *cfg = tr->cfg;
    ENT_CHECK(ent_check_same_model(cfg, path, theirs));
    if (theirs->seed != cfg->seed && tr->leader)
        ent_log_warn("train.seed = %llu differs from the checkpoint's %llu: the data order "
                     "changes from here on", (unsigned long long)cfg->seed,
                     (unsigned long long)theirs->seed);
    return ENT_OK;
}

// Every rank checks the file as `ckpt verify` does (ent_checkpoint_check, then
// ent_ckpt_read checks the datasets against this run's table) before anything
// of it is used; the ranks agree before they read together.
static ent_status resume_from(trainer *tr, const char *path) {
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, tr->grid->world, &ck));
    ent_ckpt_state *saved = calloc(1, sizeof *saved);
    ent_param_table table = {0};
    ent_status st = saved == NULL ? ent_fail(ENT_ERR_NOMEM, "out of memory") : ENT_OK;
    if (st == ENT_OK) st = ent_checkpoint_check(ck, saved, &table);
    ent_param_table_free(&table); // the same rows as this run's, once the model is the same
    if (st == ENT_OK) st = check_same_model(tr, path, &saved->cfg);
    if (st == ENT_OK && saved->step >= tr->cfg->steps)
        st = ent_fail(ENT_ERR_USAGE, "%s is at step %lld: train.steps = %d leaves nothing to do "
                      "(raise train.steps to train on)", path, (long long)saved->step,
                      tr->cfg->steps);
    st = ent_comm_agree(tr->comm, st);
    if (st == ENT_OK) {
        ent_ckpt_shard sh = rank_shard(tr);
        if (saved->updates == 0 && !ent_ckpt_has_moments(ck)) {
            // AdamW before its first update has zero moments, and a file
            // that stores none (an import) means those
            memset(sh.adam_m, 0, sizeof(float) * sh.state_count);
            memset(sh.adam_v, 0, sizeof(float) * sh.state_count);
            sh.adam_m = sh.adam_v = NULL;
        }
        st = ent_ckpt_read(ck, &sh);
    }
    if (st == ENT_OK) st = state_copy(tr, 1);
    if (st == ENT_OK) st = ent_model_params_changed(tr->model);
    ent_ckpt_close(&ck);
    if (st == ENT_OK) {
        tr->start_step = (int)saved->step; // within the stored train.steps, an int
        ent_optim_set_updates(tr->optim, (int)saved->updates); // at most the step
        tr->cursor.consumed = saved->consumed;
        tr->resumed = path;
    }
    free(saved);
    return st;
}

// ---------------------------------------------------------------------------
// the trainer object

// Everything before step 1. Every rank reaches the same verdict on each part,
// so none is left waiting.
static ent_status trainer_setup(trainer *tr) {
    const ent_config *cfg = tr->cfg;
    ent_comm_t *comm = tr->comm;
    const char *resume = tr->opts->resume;
    ENT_CHECK(check_layout(cfg, comm));
    ENT_CHECK(ent_grid_new(comm, cfg->tp, &tr->grid));
    ENT_CHECK(check_same_config(cfg, comm, tr->grid));
    ENT_CHECK(batch_geometry(cfg, tr->grid->dp_size, &tr->micro, &tr->accum));
    ENT_CHECK(ent_comm_agree(comm, tr->leader ? check_run_dir(tr) : ENT_OK));
    // data first: a bad shard fails before any memory is committed
    ENT_CHECK(ent_comm_agree(comm, open_data(tr)));
    ENT_CHECK(ent_comm_agree(comm, prepare_model(tr)));
    if (resume != NULL) ENT_CHECK(ent_comm_agree(comm, resume_from(tr, resume)));
    tr->step = tr->start_step;
    if (tr->opts->force)
        ENT_CHECK(ent_comm_agree(comm, tr->leader ? remove_earlier_checkpoints(tr) : ENT_OK));
    // the checkpoints already there are this run's when it resumes from one of them
    ent_ckpt_saver_opts sopts = {.dir = tr->ckpt_dir, .keep = cfg->ckpt_keep,
                                 .async = cfg->ckpt_async,
                                 .adopt = resume != NULL && same_dir(tr->ckpt_dir, resume)};
    ENT_CHECK(ent_comm_agree(comm, ent_ckpt_saver_new(tr->grid->world, &sopts, &tr->saver)));
    ent_ckpt_shard sh = rank_shard(tr);
    ENT_CHECK(ent_comm_agree(comm, ent_ckpt_saver_prepare(tr->saver, &sh)));
    // before step 1, not at the first save: a run whose checkpoints cannot
    // be written would otherwise train to its end and be lost
    ent_status st = ent_ckpt_saver_check(tr->saver, &sh);
    if (st != ENT_OK && strcmp(cfg->ckpt_on_error, "stop") == 0)
        return ent_fail(st, "checkpoints cannot be saved in %s (%s), checked before step 1: %s",
                        tr->ckpt_dir, cfg->ckpt_dir[0] ? "checkpoint.dir" : "checkpoint.dir "
                        "unset: RUN_DIR/checkpoints", ent_last_error());
    if (st != ENT_OK && tr->leader)
        ent_log_warn("checkpoints will fail, training goes on (checkpoint.on_error = "
                     "continue): %s", ent_last_error());
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    tr->nparams = ent_model_shape_num_params(&shape);
    return ent_comm_agree(comm, tr->leader ? open_run_dir(tr, tr->nparams) : ENT_OK);
}

// The leader's account of the run it starts.
static void log_start(const trainer *tr) {
    const ent_config *cfg = tr->cfg;
    ent_comm_t *comm = tr->comm;
    char mem[32];
    size_t tokens_per_step = (size_t)cfg->batch_size * tr->T;
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    ent_log_info("entente %s (%s): %d rank(s) on %d node(s), DP %d x TP %d%s, %d thread(s) "
                 "per rank; %s", ENT_VERSION, ENT_GIT_REVISION, ent_comm_size(comm),
                 ent_comm_num_nodes(comm), tr->grid->dp_size, tr->grid->tp_size,
                 cfg->zero && tr->grid->dp_size > 1 ? " with ZeRO-1" : "", tr->be->threads,
                 tr->be->iface->describe(tr->be));
    const char *blas = ent_backend_cpu_warning();
    if (blas != NULL) ent_log_warn("%s", blas);
    size_t need = ent_model_memory_bytes(tr->be, &shape, tr->grid->tp_size, tr->micro, tr->T);
    ent_log_info("model: %d layers, %d heads, width %d, context %d, vocab %d: %.2fM "
                 "parameters, %s per rank", cfg->layers, cfg->heads, cfg->width, cfg->context,
                 cfg->vocab, tr->nparams / 1e6, ent_format_bytes((double)need, mem, sizeof mem));
    ent_log_info("data: %s: train %lld tokens in %d shard(s) (%lld sequences); val %lld "
                 "tokens", cfg->data_dir, (long long)ent_dataset_num_tokens(tr->train),
                 ent_dataset_num_shards(tr->train),
                 (long long)ent_dataset_num_sequences(tr->train),
                 tr->val ? (long long)ent_dataset_num_tokens(tr->val) : 0LL);
    ent_log_info("batch: %d sequences x %d tokens = %zu tokens/step (micro-batch %d per "
                 "rank, %d accumulation steps); %d steps = %.2f epochs",
                 cfg->batch_size, tr->T, tokens_per_step, tr->micro, tr->accum, cfg->steps,
                 (double)cfg->steps * cfg->batch_size /
                     (double)ent_dataset_num_sequences(tr->train));
    char every[48] = "";
    if (cfg->ckpt_every > 0) snprintf(every, sizeof every, "every %d steps, ", cfg->ckpt_every);
    char keep[32] = "keep all";
    if (cfg->ckpt_keep > 0) snprintf(keep, sizeof keep, "keep %d", cfg->ckpt_keep);
    ent_log_info("run dir: %s; checkpoints: %s (%sat the end and on SIGTERM/SIGUSR1; %s%s)",
                 tr->run_dir, tr->ckpt_dir, every, keep, cfg->ckpt_async ? "; asynchronous" : "");
    if (tr->resumed)
        ent_log_info("resumed from %s at step %d (%lld sequences consumed)", tr->resumed,
                     tr->start_step, (long long)tr->cursor.consumed);
}

ent_status ent_trainer_new(const ent_config *cfg, const ent_train_opts *opts, ent_comm_t *comm,
                           ent_trainer_t **out) {
    *out = NULL;
    trainer *tr = calloc(1, sizeof *tr);
    if (tr == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating the trainer");
    tr->cfg = cfg;
    tr->comm = comm;
    tr->run_dir = opts->run_dir;
    tr->opts = opts;
    tr->leader = ent_comm_rank(comm) == 0;
    tr->tty = tr->leader && stdout_is_terminal();
    tr->T = cfg->context;
    tr->data_seed = ent_data_order_key(cfg->seed);
    tr->threads = choose_threads(cfg, comm);
    tr->horizon = cfg->steps;
    tr->saved = -1;
    tr->val_loss = NAN;
    ent_comm_set_timeout(comm, cfg->timeout);
    install_stop_handlers();
    ent_checkpoint_dir(cfg, opts->run_dir, tr->ckpt_dir, sizeof tr->ckpt_dir);
    ent_status st = trainer_setup(tr);
    if (st != ENT_OK) {
        ent_trainer_free(&tr);
        return st;
    }
    if (tr->leader) log_start(tr);
    tr->t_start = ent_now_seconds();
    tr->t_mark = tr->t_start;
    *out = tr;
    return ENT_OK;
}

void ent_trainer_free(ent_trainer_t **trp) {
    if (trp == NULL || *trp == NULL) return;
    trainer *tr = *trp;
    ent_ckpt_saver_free(&tr->saver);
    ent_optim_free(&tr->optim);
    ent_model_free(&tr->model);
    ent_dataset_close(&tr->train);
    ent_dataset_close(&tr->val);
    ent_backend_free(&tr->be);
    ent_grid_free(&tr->grid);
    if (tr->metrics) fclose(tr->metrics);
    if (tr->samples) fclose(tr->samples);
    free(tr->inputs);
    free(tr->targets);
    free(tr->prompt);
    ent_tokenizer_free(&tr->tok);
    free(tr->host_params);
    free(tr->host_m);
    free(tr->host_v);
    free(tr);
    *trp = NULL;
}

int ent_trainer_steps_done(const ent_trainer_t *tr) { return tr->step; }
int ent_trainer_resumed(const ent_trainer_t *tr) { return tr->resumed != NULL; }
ent_model_t *ent_trainer_model(ent_trainer_t *tr) { return tr->model; }

void ent_trainer_set_horizon(ent_trainer_t *tr, int total_steps) { tr->horizon = total_steps; }

ent_status ent_trainer_step(ent_trainer_t *tr, ent_step_stats *out) {
    const ent_config *cfg = tr->cfg;
    int step = tr->step + 1;
    double lr = ent_lr_schedule(cfg, step, tr->horizon);
    double t0 = ent_now_seconds(), loss, norm;
    ENT_CHECK(train_step(tr, step, lr, &loss, &norm));
    tr->step = step;
    double dt = ent_now_seconds() - t0;
    tr->train_time += dt;
    double tok_s = (double)cfg->batch_size * tr->T / dt;
    ent_status io = log_checkpoint(tr);
    if (io == ENT_OK) {
        ent_json_field rec[] = {
            ENT_JINT("step", step),
            ENT_JNUM("loss", loss),
            ENT_JNUM("lr", lr),
            ENT_JNUM("grad_norm", norm),
            ENT_JNUM("tokens_per_s", tok_s),
            ENT_JINT("tokens", tr->cursor.consumed * tr->T),
            ENT_JINT("epoch", tr->cursor.consumed / ent_dataset_num_sequences(tr->train)),
            ENT_JNUM("elapsed_s", ent_now_seconds() - tr->t_start),
            ENT_JSTR("site", tr->site),
            ENT_JINT("round", tr->round),
        };
        int n = (int)(sizeof rec / sizeof rec[0]);
        io = metrics_record(tr, rec, tr->site != NULL ? n : n - 2);
    }
    if (tr->io == ENT_OK) tr->io = io;
    // the wall-clock time since the last progress line: this step, and the
    // evaluation, sample and save of the one before
    double now = ent_now_seconds();
    ent_eta_add(&tr->eta, now - tr->t_mark);
    tr->t_mark = now;
    char eta_text[32];
    format_duration(ent_eta_remaining(&tr->eta, tr->horizon - step), eta_text, sizeof eta_text);
    progress(tr, step % cfg->log_every == 0 || step == cfg->steps,
             "step %6d/%d | loss %.4f | lr %.2e | grad norm %.3f | %.1fk tok/s | "
             "%.0f ms/step | eta %s",
             step, cfg->steps, loss, lr, norm, tok_s / 1e3, dt * 1e3, eta_text);
    if (out != NULL)
        *out = (ent_step_stats){.step = step, .loss = loss, .grad_norm = norm, .lr = lr,
                                .seconds = dt, .tokens_per_s = tok_s};
    return ENT_OK;
}

ent_status ent_trainer_eval(ent_trainer_t *tr, double *val_loss) {
    ENT_CHECK(run_eval(tr, tr->step, &tr->val_loss));
    if (val_loss != NULL) *val_loss = tr->val_loss;
    return ENT_OK;
}

ent_status ent_trainer_sample(ent_trainer_t *tr) { return write_sample(tr, tr->step); }

ent_status ent_trainer_sync(ent_trainer_t *tr, ent_status local, int *stop_signal_out) {
    if (local == ENT_OK) local = tr->io;
    tr->io = ENT_OK;
    ENT_CHECK(ent_comm_agree(tr->comm, local));
    // a stop request on any rank stops every rank at the same point
    int64_t sig = stop_signal, any = 0;
    ENT_CHECK(ent_allreduce(tr->grid->world, &sig, &any, 1, ENT_I64, ENT_MAX));
    if (stop_signal_out != NULL) *stop_signal_out = (int)any;
    return ENT_OK;
}

ent_status ent_trainer_set_params(ent_trainer_t *tr, const float *params) {
    // an asynchronous save may still be copying the parameters it saves
    ent_ckpt_wait_staged(tr->saver);
    ENT_CHECK(tr->be->iface->to_device(tr->be, ent_model_arena(tr->model, ENT_ARENA_PARAMS),
                                       params, sizeof(float) * ent_model_arena_floats(tr->model)));
    ENT_CHECK(ent_model_params_changed(tr->model));
    tr->saved = -1; // the state of this step changed since its save, if any
    return ENT_OK;
}

ent_status ent_trainer_reset_optimizer(ent_trainer_t *tr) {
    ent_ckpt_wait_staged(tr->saver); // as above, for the moments
    ENT_CHECK(ent_optim_reset(tr->optim));
    tr->saved = -1;
    return ENT_OK;
}

ent_status ent_trainer_save(ent_trainer_t *tr) {
    ENT_CHECK(save_checkpoint(tr, tr->step));
    tr->saved = tr->step;
    return ENT_OK;
}

ent_status ent_trainer_finish(ent_trainer_t *tr, int stopped_by) {
    const ent_config *cfg = tr->cfg;
    int step = tr->step;
    // the last step, or the one a signal stopped at, is always saved
    if (tr->saved != step) ENT_CHECK(ent_trainer_save(tr));
    ent_status st = ent_ckpt_wait(tr->saver);
    if (st != ENT_OK && strcmp(cfg->ckpt_on_error, "stop") == 0) return st;
    if (st != ENT_OK && tr->leader) ent_log_warn("checkpoint failed: %s", ent_last_error());
    if (st != ENT_OK) tr->ckpt_unlogged = 0; // not written: no record
    ENT_CHECK(ent_comm_agree(tr->comm, log_checkpoint(tr)));
    st = ENT_OK;

    int same = 0;
    ENT_CHECK(replicas_identical(tr, &same));
    if (tr->leader) {
        double elapsed = ent_now_seconds() - tr->t_start;
        ent_json_field rec[] = {ENT_JSTR("event", "end"), ENT_JINT("step", step),
                                ENT_JSTR("reason", stopped_by ? "signal" : "completed"),
                                ENT_JBOOL("replicas_identical", same),
                                ENT_JNUM("elapsed_s", elapsed)};
        st = metrics_record(tr, rec, (int)(sizeof rec / sizeof rec[0]));
        if (!same)
            ent_log_warn("the data-parallel replicas do not hold identical parameters at step %d",
                         step);
        char t_train[32], t_all[32];
        format_duration(tr->train_time, t_train, sizeof t_train);
        format_duration(elapsed, t_all, sizeof t_all);
        double tok_s = (double)cfg->batch_size * tr->T * (double)(step - tr->start_step) /
                       tr->train_time / 1e3;
        if (stopped_by)
            ent_log_info("stopped by %s after step %d of %d (exit code %d: requeue to go on)",
                         signal_name(stopped_by), step, cfg->steps, ENT_EXIT_REQUEUE);
        else if (tr->val != NULL)
            ent_log_info("done: %d steps in %s (training %s, %.1fk tok/s); final val loss %.4f",
                         step - tr->start_step, t_all, t_train, tok_s, tr->val_loss);
        else
            ent_log_info("done: %d steps in %s (training %s, %.1fk tok/s)", step - tr->start_step,
                         t_all, t_train, tok_s);
    }
    ENT_CHECK(ent_comm_agree(tr->comm, st));
    if (stopped_by)
        return ent_fail(ENT_STOPPED, "stopped by %s after step %d", signal_name(stopped_by), step);
    return ENT_OK;
}

// ---------------------------------------------------------------------------
// for the coalition's round driver (runtime_impl.h)

const ent_grid *ent_trainer_grid(const ent_trainer_t *tr) { return tr->grid; }
int ent_trainer_is_leader(const ent_trainer_t *tr) { return tr->leader; }
double ent_trainer_elapsed(const ent_trainer_t *tr) { return ent_now_seconds() - tr->t_start; }
int64_t ent_trainer_tokens(const ent_trainer_t *tr) { return tr->cursor.consumed * tr->T; }

ent_status ent_trainer_record(ent_trainer_t *tr, const ent_json_field *fields, int n) {
    if (!tr->leader) return ENT_OK;
    ent_status st = metrics_record(tr, fields, n);
    if (tr->io == ENT_OK) tr->io = st; // held for the next sync, as a step's
    return ENT_OK;
}

ent_status ent_trainer_params_to_host(ent_trainer_t *tr, float *host) {
    return tr->be->iface->to_host(tr->be, host, ent_model_arena(tr->model, ENT_ARENA_PARAMS),
                                  sizeof(float) * ent_model_arena_floats(tr->model));
}

void ent_trainer_set_coalition(ent_trainer_t *tr, const ent_ckpt_coalition *c, const char *site,
                               int round) {
    ent_ckpt_wait_staged(tr->saver); // a save in flight may still copy the arrays
    tr->coalition = c;
    tr->site = site;
    tr->round = round;
}
