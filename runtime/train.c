// train.c: `entente train`, the inner training loop of one site.
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
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double ent_lr_schedule(const ent_config *cfg, int step) {
    double lr = cfg->lr, floor_lr = cfg->lr * cfg->lr_floor;
    if (step <= cfg->warmup_steps) return lr * ((double)step / cfg->warmup_steps);
    int decay_steps = cfg->steps - cfg->warmup_steps;
    if (decay_steps <= 0) return lr;
    double progress = (double)(step - cfg->warmup_steps) / decay_steps;
    if (progress > 1.0) progress = 1.0;
    return floor_lr + 0.5 * (lr - floor_lr) * (1.0 + cos(M_PI * progress));
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void format_duration(double s, char *buf, size_t n) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, n, "%lds", t);
}

// JSON number, or null for NaN/Inf (which JSON cannot hold).
static void json_number(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, "\"%s\":%.8g", key, v);
    else fprintf(f, "\"%s\":null", key);
}

static void json_string(FILE *f, const char *s) {
    if (s == NULL) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
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

typedef struct {
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
    int32_t *prompt;
    int nprompt;
    double t_start;
    ent_ckpt_saver_t *saver;
    char ckpt_dir[ENT_PATH_MAX];
    int ckpt_unlogged;   // the step of a save whose metrics record waits for its
                         // blocked time (an async save: until its copy is made)
    int start_step;      // the step a resumed run continues from (0: a new run)
    const char *resumed; // the checkpoint it was resumed from
} trainer;

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

// Mean validation loss over the first eval.batches x batch_size validation
// sequences (fewer if there are fewer): the same set whatever the number of
// ranks, shared out among the DP ranks in micro-batch chunks.
static ent_status eval_loss(trainer *tr, double *out) {
    int64_t nseq = ent_dataset_num_sequences(tr->val);
    int64_t want = (int64_t)tr->cfg->eval_batches * tr->cfg->batch_size;
    if (want > nseq) want = nseq;
    int D = tr->grid->dp_size, r = tr->grid->dp_rank;
    ent_data_cursor start = {0};
    double sums[2] = {0.0, 0.0}; // loss x sequences, sequences
    // rank r evaluates the r-th of every D consecutive chunks of micro sequences;
    // every rank runs the same number of forward passes (TP needs that)
    int64_t chunk = tr->micro, rounds = (want + chunk * D - 1) / (chunk * D);
    for (int64_t k = 0; k < rounds; k++) {
        int64_t first = (k * D + r) * chunk;
        int b = first >= want ? 0 : (int)(want - first < chunk ? want - first : chunk);
        int run = b > 0 ? b : 1; // a rank without data still joins the TP collectives
        ent_dataset_fill(tr->val, &start, b > 0 ? first : 0, run, 0, 0, tr->inputs, tr->targets);
        float loss = 0.0f;
        ENT_CHECK(ent_model_forward(tr->model, tr->inputs, tr->targets, run, tr->T, &loss));
        sums[0] += b > 0 ? (double)loss * b : 0.0;
        sums[1] += b;
    }
    ENT_CHECK(ent_allreduce(tr->grid->dp, sums, sums, 2, ENT_F64, ENT_SUM));
    *out = sums[0] / sums[1];
    return ENT_OK;
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
        ent_tokens_print(f, tr->prompt + 1, tr->nprompt - 1, cfg->vocab);
        ent_tokens_print(f, out, cfg->sample_tokens, cfg->vocab);
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
    if (!tr->leader) return ENT_OK;
    fputc('{', tr->metrics);
    fprintf(tr->metrics, "\"step\":%d,", step);
    json_number(tr->metrics, "val_loss", loss);
    fputc(',', tr->metrics);
    json_number(tr->metrics, "elapsed_s", now_seconds() - tr->t_start);
    fputs("}\n", tr->metrics);
    return flush_run_file(tr, tr->metrics, "metrics.jsonl");
}

// One optimizer step: this rank's micro-batches of the global batch, the DP
// reduction, clipping, AdamW. Returns the global mean loss and gradient norm.
static ent_status train_step(trainer *tr, int step, double lr, double *loss_out,
                             double *norm_out) {
    const ent_config *cfg = tr->cfg;
    int D = tr->grid->dp_size;
    ent_model_zero_grad(tr->model);
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
    return ent_optim_step(tr->optim, &hp, scale, step);
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

static void write_topology_json(const trainer *tr, FILE *f) {
    const ent_grid *g = tr->grid;
    fprintf(f, "\"world_size\":%d,\"dp\":%d,\"tp\":%d,\"zero\":%d,\"nodes\":%d,"
            "\"ranks_per_node\":%d,\"threads_per_rank\":%d,\"slurm_job_id\":",
            ent_comm_size(tr->comm), g->dp_size, g->tp_size, tr->cfg->zero,
            ent_comm_num_nodes(tr->comm), ent_comm_local_size(tr->comm), tr->be->threads);
    json_string(f, getenv("SLURM_JOB_ID"));
    fputs(",\"slurm_nodelist\":", f);
    json_string(f, getenv("SLURM_JOB_NODELIST"));
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
    fprintf(mem, "{\"entente_version\":\"%s\",\"revision\":\"%s\",\"started\":\"%s\",\"host\":",
            ENT_VERSION, ENT_GIT_REVISION, when);
    json_string(mem, host);
    fprintf(mem, ",\"config\":");
    json_string(mem, tr->cfg->path);
    fputc(',', mem);
    write_topology_json(tr, mem);
    fprintf(mem, ",\"backend\":\"%s\",\"blas\":", tr->be->iface->name);
    json_string(mem, ent_backend_cpu_describe());
    fprintf(mem, ",\"parameters\":%zu,\"micro_batch\":%d,\"grad_accum\":%d}\n", nparams,
            tr->micro, tr->accum);
    fclose(mem);
    st = ent_write_file_atomic(path, text, len);
    free(text);
    return st;
}

static ent_status open_run_file(const trainer *tr, const char *name, FILE **out) {
    char path[ENT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", tr->run_dir, name);
    // a resumed run continues its files (a step redone after the checkpoint
    // appears again; the last record of a step is the one that counts)
    *out = fopen(path, tr->resumed ? "a" : "w");
    if (*out == NULL) return ent_fail(ENT_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return ENT_OK;
}

// The leader's run directory: files, and the start record of metrics.jsonl.
static ent_status open_run_dir(trainer *tr, size_t nparams) {
    ENT_CHECK(ent_mkdirs(tr->run_dir));
    ENT_CHECK(write_run_files(tr, nparams));
    ENT_CHECK(open_run_file(tr, "metrics.jsonl", &tr->metrics));
    ENT_CHECK(open_run_file(tr, "samples.txt", &tr->samples));
    fputs("{\"event\":\"start\",", tr->metrics);
    write_topology_json(tr, tr->metrics);
    if (tr->resumed) {
        fputs(",\"resumed_from\":", tr->metrics);
        json_string(tr->metrics, tr->resumed);
        fprintf(tr->metrics, ",\"resumed_step\":%d", tr->start_step);
    }
    fputs("}\n", tr->metrics);
    return flush_run_file(tr, tr->metrics, "metrics.jsonl");
}

static ent_status prepare_model(trainer *tr) {
    const ent_config *cfg = tr->cfg;
    tr->be = ent_backend_cpu_new(tr->threads);
    if (tr->be == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory creating the CPU backend");
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    ent_model_opts opts = {
        .tp = tr->grid->tp_size > 1 ? tr->grid->tp : NULL,
        .arena_multiple = 16 * (size_t)tr->grid->dp_size,
    };
    ENT_CHECK(ent_model_new(tr->be, &shape, &opts, tr->micro, tr->T, &tr->model));
    ent_model_init(tr->model, cfg->seed);
    ENT_CHECK(ent_optim_new(tr->model, tr->grid, cfg->zero, &tr->optim));
    tr->inputs = malloc(sizeof(int32_t) * (size_t)tr->micro * tr->T);
    tr->targets = malloc(sizeof(int32_t) * (size_t)tr->micro * tr->T);
    size_t plen = strlen(cfg->sample_prompt);
    tr->prompt = malloc(sizeof(int32_t) * (plen + 1));
    if (tr->inputs == NULL || tr->targets == NULL || tr->prompt == NULL)
        return ent_fail(ENT_ERR_NOMEM, "out of memory for batch buffers");
    tr->prompt[0] = ENT_TOKEN_EOT;
    for (size_t i = 0; i < plen; i++) tr->prompt[i + 1] = (unsigned char)cfg->sample_prompt[i];
    tr->nprompt = (int)plen + 1;
    return ENT_OK;
}

static ent_status open_data(trainer *tr) {
    const ent_config *cfg = tr->cfg;
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
    const float *p = ent_model_arena(tr->model, ENT_ARENA_PARAMS);
    uint64_t h = ent_hash_bytes(p, sizeof(float) * ent_model_arena_floats(tr->model), 0), lo, hi;
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
// (under ZeRO-1 exactly its AdamW shard).
static ent_ckpt_shard rank_shard(trainer *tr) {
    ent_ckpt_shard sh = {0};
    sh.table = ent_model_table(tr->model);
    sh.tp_rank = tr->grid->tp_rank;
    sh.tp_size = tr->grid->tp_size;
    sh.params = ent_model_arena(tr->model, ENT_ARENA_PARAMS);
    ent_optim_moments(tr->optim, &sh.adam_m, &sh.adam_v);
    sh.state_count = ent_optim_state_floats(tr->optim, &sh.state_first);
    size_t share = ent_model_arena_floats(tr->model) / (size_t)tr->grid->dp_size;
    sh.write_first = share * (size_t)tr->grid->dp_rank;
    sh.write_count = share;
    sh.replicas = tr->grid->dp;
    return sh;
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
    fprintf(tr->metrics, "{\"event\":\"checkpoint\",\"step\":%d,\"file\":", step);
    json_string(tr->metrics, path);
    fprintf(tr->metrics, ",\"async\":%s,", tr->cfg->ckpt_async ? "true" : "false");
    json_number(tr->metrics, "blocked_s", ent_ckpt_last_blocked_seconds(tr->saver));
    fputs("}\n", tr->metrics);
    return flush_run_file(tr, tr->metrics, "metrics.jsonl");
}

static ent_status save_checkpoint(trainer *tr, int step) {
    const ent_config *cfg = tr->cfg;
    char *config = ent_config_text(cfg, NULL);
    if (config == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    int64_t nseq = ent_dataset_num_sequences(tr->train);
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    ent_ckpt_attr attrs[] = {
        {.name = "step", .type = ENT_ATTR_I64, .i = step},
        {.name = "tokens", .type = ENT_ATTR_I64, .i = tr->cursor.consumed * tr->T},
        {.name = "data.consumed", .type = ENT_ATTR_I64, .i = tr->cursor.consumed},
        {.name = "data.epoch", .type = ENT_ATTR_I64, .i = tr->cursor.consumed / nseq},
        {.name = "data.sequences", .type = ENT_ATTR_I64, .i = nseq},
        {.name = "rng.train_seed", .type = ENT_ATTR_U64, .u = cfg->seed},
        {.name = "rng.data_order_key", .type = ENT_ATTR_U64, .u = tr->data_seed},
        {.name = "model.architecture", .type = ENT_ATTR_STR, .s = "gpt2"},
        {.name = "model.layers", .type = ENT_ATTR_I64, .i = cfg->layers},
        {.name = "model.heads", .type = ENT_ATTR_I64, .i = cfg->heads},
        {.name = "model.width", .type = ENT_ATTR_I64, .i = cfg->width},
        {.name = "model.context", .type = ENT_ATTR_I64, .i = cfg->context},
        {.name = "model.vocab", .type = ENT_ATTR_I64, .i = cfg->vocab},
        {.name = "model.padded_vocab", .type = ENT_ATTR_I64, .i = shape.padded_vocab},
        {.name = "model.parameters", .type = ENT_ATTR_I64, .i = (int64_t)ent_model_shape_num_params(&shape)},
        {.name = "model.shape_hash", .type = ENT_ATTR_U64, .u = ent_model_shape_hash(cfg)},
        {.name = "saved_by.world_size", .type = ENT_ATTR_I64, .i = ent_comm_size(tr->comm)},
        {.name = "saved_by.dp", .type = ENT_ATTR_I64, .i = tr->grid->dp_size},
        {.name = "saved_by.tp", .type = ENT_ATTR_I64, .i = tr->grid->tp_size},
        {.name = "saved_by.zero", .type = ENT_ATTR_I64, .i = cfg->zero},
        {.name = "entente_version", .type = ENT_ATTR_STR, .s = ENT_VERSION},
        {.name = "revision", .type = ENT_ATTR_STR, .s = ENT_GIT_REVISION},
        {.name = "config", .type = ENT_ATTR_STR, .s = config},
    };
    ent_ckpt_shard sh = rank_shard(tr);
    char name[64];
    ent_ckpt_name(step, name, sizeof name);
    ent_status st = ent_ckpt_save(tr->saver, name, attrs, (int)(sizeof attrs / sizeof attrs[0]), &sh);
    free(config);
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

// Compares the checkpoint's model (its stored configuration's, checked
// against its model.* attributes) with this run's: every difference is named.
static ent_status check_same_model(trainer *tr, const char *path, const ent_config *theirs) {
    const ent_config *cfg = tr->cfg;
    const char *keys[] = {"model.layers", "model.heads", "model.width", "model.context",
                          "model.vocab"};
    int64_t mine[] = {cfg->layers, cfg->heads, cfg->width, cfg->context, cfg->vocab};
    int64_t saved[] = {theirs->layers, theirs->heads, theirs->width, theirs->context, theirs->vocab};
    char diff[1024] = "";
    size_t used = 0;
    for (int i = 0; i < 5; i++) {
        if (saved[i] != mine[i])
            used += (size_t)snprintf(diff + used, sizeof diff - used, "%s%s: checkpoint %lld, this "
                                     "run %lld", used ? "; " : "", keys[i], (long long)saved[i],
                                     (long long)mine[i]);
        if (used >= sizeof diff) used = sizeof diff - 1;
    }
    if (used)
        return ent_fail(ENT_ERR_USAGE, "%s holds another model than this run trains: %s", path, diff);
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
        st = ent_ckpt_read(ck, &sh);
    }
    ent_ckpt_close(&ck);
    if (st == ENT_OK) {
        tr->start_step = (int)saved->step; // within the stored train.steps, an int
        tr->cursor.consumed = saved->consumed;
        tr->resumed = path;
    }
    free(saved);
    return st;
}

static void trainer_free(trainer *tr) {
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
}

// ---------------------------------------------------------------------------

ent_status ent_train(const ent_config *cfg, const char *run_dir, const char *resume,
                     ent_comm_t *comm) {
    trainer tr = {.cfg = cfg, .comm = comm, .run_dir = run_dir};
    ent_status st = ENT_OK;
    tr.leader = ent_comm_rank(comm) == 0;
    tr.tty = tr.leader && stdout_is_terminal();
    tr.T = cfg->context;
    tr.data_seed = ent_data_order_key(cfg->seed);
    tr.threads = choose_threads(cfg, comm);
    ent_comm_set_timeout(comm, cfg->timeout);
    install_stop_handlers();

    // every rank reaches the same verdict on these, so none is left waiting
    ENT_CHECK_GOTO(ent_grid_new(comm, cfg->tp, &tr.grid), done);
    ENT_CHECK_GOTO(check_same_config(cfg, comm, tr.grid), done);
    ENT_CHECK_GOTO(batch_geometry(cfg, tr.grid->dp_size, &tr.micro, &tr.accum), done);
    // data first: a bad shard fails before any memory is committed
    ENT_CHECK_GOTO(ent_comm_agree(comm, open_data(&tr)), done);
    ENT_CHECK_GOTO(ent_comm_agree(comm, prepare_model(&tr)), done);
    if (resume != NULL) ENT_CHECK_GOTO(ent_comm_agree(comm, resume_from(&tr, resume)), done);
    ent_checkpoint_dir(cfg, run_dir, tr.ckpt_dir, sizeof tr.ckpt_dir);
    ent_ckpt_saver_opts sopts = {.dir = tr.ckpt_dir, .keep = cfg->ckpt_keep,
                                 .async = cfg->ckpt_async};
    ENT_CHECK_GOTO(ent_comm_agree(comm, ent_ckpt_saver_new(tr.grid->world, &sopts, &tr.saver)),
                   done);
    {
        ent_ckpt_shard sh = rank_shard(&tr);
        ENT_CHECK_GOTO(ent_comm_agree(comm, ent_ckpt_saver_prepare(tr.saver, &sh)), done);
    }
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    size_t nparams = ent_model_shape_num_params(&shape);
    ENT_CHECK_GOTO(ent_comm_agree(comm, tr.leader ? open_run_dir(&tr, nparams) : ENT_OK), done);

    if (tr.leader) {
        char mem[32];
        size_t tokens_per_step = (size_t)cfg->batch_size * tr.T;
        ent_log_info("entente %s (%s): %d rank(s) on %d node(s), DP %d x TP %d%s, %d thread(s) "
                     "per rank; %s", ENT_VERSION, ENT_GIT_REVISION, ent_comm_size(comm),
                     ent_comm_num_nodes(comm), tr.grid->dp_size, tr.grid->tp_size,
                     cfg->zero && tr.grid->dp_size > 1 ? " with ZeRO-1" : "", tr.be->threads,
                     ent_backend_cpu_describe());
        const char *blas = ent_backend_cpu_warning();
        if (blas != NULL) ent_log_warn("%s", blas);
        ent_log_info("model: %d layers, %d heads, width %d, context %d, vocab %d: %.2fM "
                     "parameters, %s per rank", cfg->layers, cfg->heads, cfg->width, cfg->context,
                     cfg->vocab, nparams / 1e6,
                     ent_format_bytes((double)ent_model_memory_bytes(&shape, tr.grid->tp_size,
                                                                     tr.micro, tr.T),
                                      mem, sizeof mem));
        ent_log_info("data: %s: train %lld tokens in %d shard(s) (%lld sequences); val %lld "
                     "tokens", cfg->data_dir, (long long)ent_dataset_num_tokens(tr.train),
                     ent_dataset_num_shards(tr.train),
                     (long long)ent_dataset_num_sequences(tr.train),
                     tr.val ? (long long)ent_dataset_num_tokens(tr.val) : 0LL);
        ent_log_info("batch: %d sequences x %d tokens = %zu tokens/step (micro-batch %d per "
                     "rank, %d accumulation steps); %d steps = %.2f epochs",
                     cfg->batch_size, tr.T, tokens_per_step, tr.micro, tr.accum, cfg->steps,
                     (double)cfg->steps * cfg->batch_size /
                         (double)ent_dataset_num_sequences(tr.train));
        char every[48] = "";
        if (cfg->ckpt_every > 0) snprintf(every, sizeof every, "every %d steps, ", cfg->ckpt_every);
        char keep[32] = "keep all";
        if (cfg->ckpt_keep > 0) snprintf(keep, sizeof keep, "keep %d", cfg->ckpt_keep);
        ent_log_info("run dir: %s; checkpoints: %s (%sat the end and on SIGTERM/SIGUSR1; %s%s)",
                     run_dir, tr.ckpt_dir, every, keep, cfg->ckpt_async ? "; asynchronous" : "");
        if (tr.resumed)
            ent_log_info("resumed from %s at step %d (%lld sequences consumed)", tr.resumed,
                         tr.start_step, (long long)tr.cursor.consumed);
    }

    size_t tokens_per_step = (size_t)cfg->batch_size * tr.T;
    tr.t_start = now_seconds();
    double val_loss = NAN, train_time = 0.0, step_avg = 0.0;
    int step = tr.start_step, stopped_by = 0, saved = -1;
    if (!tr.resumed) ENT_CHECK_GOTO(ent_comm_agree(comm, run_eval(&tr, 0, &val_loss)), done);
    for (step = tr.start_step + 1; step <= cfg->steps; step++) {
        double lr = ent_lr_schedule(cfg, step);
        double t0 = now_seconds(), loss, norm;
        ENT_CHECK_GOTO(train_step(&tr, step, lr, &loss, &norm), done);
        double dt = now_seconds() - t0;
        ent_status io = log_checkpoint(&tr);
        train_time += dt;
        step_avg = step == 1 ? dt : 0.9 * step_avg + 0.1 * dt;
        double tok_s = tokens_per_step / dt;

        if (io == ENT_OK && tr.leader) {
            fputc('{', tr.metrics);
            fprintf(tr.metrics, "\"step\":%d,", step);
            json_number(tr.metrics, "loss", loss);
            fputc(',', tr.metrics);
            json_number(tr.metrics, "lr", lr);
            fputc(',', tr.metrics);
            json_number(tr.metrics, "grad_norm", norm);
            fputc(',', tr.metrics);
            json_number(tr.metrics, "tokens_per_s", tok_s);
            fprintf(tr.metrics, ",\"tokens\":%lld,\"epoch\":%lld,",
                    (long long)(tr.cursor.consumed * tr.T),
                    (long long)(tr.cursor.consumed / ent_dataset_num_sequences(tr.train)));
            json_number(tr.metrics, "elapsed_s", now_seconds() - tr.t_start);
            fputs("}\n", tr.metrics);
            io = flush_run_file(&tr, tr.metrics, "metrics.jsonl");
        }
        char eta[32];
        format_duration(step_avg * (cfg->steps - step), eta, sizeof eta);
        progress(&tr, step % cfg->log_every == 0 || step == cfg->steps,
                 "step %6d/%d | loss %.4f | lr %.2e | grad norm %.3f | %.1fk tok/s | "
                 "%.0f ms/step | eta %s",
                 step, cfg->steps, loss, lr, norm, tok_s / 1e3, dt * 1e3, eta);
        int last = step == cfg->steps;
        if (io == ENT_OK && ((cfg->eval_every > 0 && step % cfg->eval_every == 0) || last))
            io = run_eval(&tr, step, &val_loss);
        if (io == ENT_OK && ((cfg->sample_every > 0 && step % cfg->sample_every == 0) || last))
            io = write_sample(&tr, step);
        ENT_CHECK_GOTO(ent_comm_agree(comm, io), done);
        // a stop request on any rank stops every rank after this step
        int64_t sig = stop_signal, any = 0;
        ENT_CHECK_GOTO(ent_allreduce(tr.grid->world, &sig, &any, 1, ENT_I64, ENT_MAX), done);
        if (any != 0 && !last) {
            stopped_by = (int)any;
            break;
        }
        if (cfg->ckpt_every > 0 && step % cfg->ckpt_every == 0 && !last) {
            ENT_CHECK_GOTO(save_checkpoint(&tr, step), done);
            saved = step;
        }
    }
    if (step > cfg->steps) step = cfg->steps;
    // the last step, or the one a signal stopped at, is always saved
    if (saved != step) ENT_CHECK_GOTO(save_checkpoint(&tr, step), done);
    st = ent_ckpt_wait(tr.saver);
    if (st != ENT_OK && strcmp(cfg->ckpt_on_error, "stop") == 0) goto done;
    if (st != ENT_OK && tr.leader)
        ent_log_warn("checkpoint failed: %s", ent_last_error());
    if (st != ENT_OK) tr.ckpt_unlogged = 0; // not written: no record
    ENT_CHECK_GOTO(ent_comm_agree(comm, log_checkpoint(&tr)), done);
    st = ENT_OK;

    int same = 0;
    ENT_CHECK_GOTO(replicas_identical(&tr, &same), done);
    if (tr.leader) {
        double elapsed = now_seconds() - tr.t_start;
        fprintf(tr.metrics, "{\"event\":\"end\",\"step\":%d,\"reason\":\"%s\","
                "\"replicas_identical\":%s,", step, stopped_by ? "signal" : "completed",
                same ? "true" : "false");
        json_number(tr.metrics, "elapsed_s", elapsed);
        fputs("}\n", tr.metrics);
        st = flush_run_file(&tr, tr.metrics, "metrics.jsonl");
        if (!same)
            ent_log_warn("the data-parallel replicas do not hold identical parameters at step %d",
                         step);
        char t_train[32], t_all[32];
        format_duration(train_time, t_train, sizeof t_train);
        format_duration(elapsed, t_all, sizeof t_all);
        if (stopped_by)
            ent_log_info("stopped by %s after step %d of %d (exit code %d: requeue to go on)",
                         signal_name(stopped_by), step, cfg->steps, ENT_EXIT_REQUEUE);
        else if (tr.val != NULL)
            ent_log_info("done: %d steps in %s (training %s, %.1fk tok/s); final val loss %.4f",
                         step - tr.start_step, t_all, t_train,
                         tokens_per_step * (double)(step - tr.start_step) / train_time / 1e3,
                         val_loss);
        else
            ent_log_info("done: %d steps in %s (training %s, %.1fk tok/s)", step - tr.start_step,
                         t_all, t_train,
                         tokens_per_step * (double)(step - tr.start_step) / train_time / 1e3);
    }
    ENT_CHECK_GOTO(ent_comm_agree(comm, st), done);
    if (stopped_by) st = ent_fail(ENT_STOPPED, "stopped by %s after step %d",
                                  signal_name(stopped_by), step);
done:
    trainer_free(&tr);
    return st;
}
