// train.c: `entente train`, the inner training loop of one site.
//
// Each step: gradient accumulation over micro-batches, global-norm clipping,
// AdamW with the warm-up + cosine schedule, a progress line and a metrics
// record; validation loss and generated samples at the configured intervals.
#include "runtime_impl.h"
#include "ent_version.h"

#include <errno.h>
#include <math.h>
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
// state of one training run

typedef struct {
    const ent_config *cfg;
    ent_backend_t *be;
    ent_model_t *model;
    ent_dataset_t *train, *val;
    ent_data_cursor cursor;
    uint64_t data_seed;
    int micro, accum, T;
    int32_t *inputs, *targets; // (micro, T) host
    FILE *metrics, *samples;
    const char *run_dir;
    int tty; // stdout is a terminal
    int32_t *prompt;
    int nprompt;
    double t_start;
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

// Terminal output. On a terminal every step rewrites one status line and the
// lines of every log_every-th step (and evaluations) stay; elsewhere (a Slurm
// log, a pipe) only the lines that stay are written.
static void progress(const trainer *tr, int keep, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void progress(const trainer *tr, int keep, const char *fmt, ...) {
    if (!keep && !tr->tty) return;
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

static ent_status eval_loss(trainer *tr, double *out) {
    int64_t nseq = ent_dataset_num_sequences(tr->val);
    int64_t want = (int64_t)tr->cfg->eval_batches * tr->micro;
    if (want > nseq) want = nseq;
    ent_data_cursor start = {0};
    double sum = 0.0;
    int64_t done = 0;
    while (done < want) {
        int b = (int)(want - done < tr->micro ? want - done : tr->micro);
        ent_dataset_fill(tr->val, &start, done, b, 0, 0, tr->inputs, tr->targets);
        float loss = 0.0f;
        ent_model_forward(tr->model, tr->inputs, tr->targets, b, tr->T, &loss);
        sum += (double)loss * b;
        done += b;
    }
    *out = sum / (double)want;
    return ENT_OK;
}

static ent_status write_sample(trainer *tr, int step) {
    const ent_config *cfg = tr->cfg;
    if (cfg->sample_tokens == 0) return ENT_OK;
    int32_t *out = malloc(sizeof(int32_t) * (size_t)cfg->sample_tokens);
    if (out == NULL) {
        ent_log_warn("out of memory for a sample of %d tokens; skipped", cfg->sample_tokens);
        return ENT_OK;
    }
    ent_sample(tr->model, tr->prompt, tr->nprompt, cfg->sample_tokens, cfg->sample_temperature,
               cfg->sample_seed, out);
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
    fputc('{', tr->metrics);
    fprintf(tr->metrics, "\"step\":%d,", step);
    json_number(tr->metrics, "val_loss", loss);
    fputc(',', tr->metrics);
    json_number(tr->metrics, "elapsed_s", now_seconds() - tr->t_start);
    fputs("}\n", tr->metrics);
    return flush_run_file(tr, tr->metrics, "metrics.jsonl");
}

// One optimizer step: accumulate gradients over the micro-batches of the global
// batch, clip, update. Returns the mean loss and the (unclipped) gradient norm.
static ent_status train_step(trainer *tr, int step, double lr, double *loss_out,
                             double *norm_out) {
    const ent_config *cfg = tr->cfg;
    ent_model_zero_grad(tr->model);
    float dloss = 1.0f / ((float)tr->micro * (float)tr->T * (float)tr->accum);
    double loss_sum = 0.0;
    for (int a = 0; a < tr->accum; a++) {
        ent_dataset_fill(tr->train, &tr->cursor, (int64_t)a * tr->micro, tr->micro,
                         cfg->shuffle, tr->data_seed, tr->inputs, tr->targets);
        float loss = 0.0f;
        ent_model_forward(tr->model, tr->inputs, tr->targets, tr->micro, tr->T, &loss);
        ent_model_backward(tr->model, dloss);
        loss_sum += loss;
    }
    tr->cursor.consumed += (int64_t)cfg->batch_size;
    double norm = ent_model_grad_norm(tr->model);
    *loss_out = loss_sum / tr->accum;
    *norm_out = norm;
    if (!isfinite(*loss_out) || !isfinite(norm))
        return ent_fail(ENT_ERR_INPUT,
                        "training diverged at step %d: loss %g, gradient norm %g (lower train.lr "
                        "or train.grad_clip)", step, *loss_out, norm);
    float scale = 1.0f;
    if (cfg->grad_clip > 0 && norm > cfg->grad_clip) scale = (float)(cfg->grad_clip / norm);
    ent_model_adamw(tr->model, (float)lr, (float)cfg->beta1, (float)cfg->beta2, (float)cfg->eps,
                    (float)cfg->weight_decay, scale, step);
    return ENT_OK;
}

static ent_status write_run_files(const trainer *tr, const char *run_dir, ent_comm_t *comm,
                                  size_t nparams) {
    char path[ENT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/config.ini", run_dir);
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

    snprintf(path, sizeof path, "%s/run.json", run_dir);
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
    fprintf(mem, ",\"world_size\":%d,\"threads\":%d,\"backend\":\"%s\",\"blas\":",
            ent_comm_size(comm), tr->be->threads, tr->be->iface->name);
    json_string(mem, ent_backend_cpu_describe());
    fprintf(mem, ",\"parameters\":%zu,\"micro_batch\":%d,\"grad_accum\":%d}\n", nparams,
            tr->micro, tr->accum);
    fclose(mem);
    st = ent_write_file_atomic(path, text, len);
    free(text);
    return st;
}

static ent_status open_run_file(const char *run_dir, const char *name, FILE **out) {
    char path[ENT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", run_dir, name);
    *out = fopen(path, "w");
    if (*out == NULL) return ent_fail(ENT_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return ENT_OK;
}

static void trainer_free(trainer *tr) {
    ent_model_free(&tr->model);
    ent_dataset_close(&tr->train);
    ent_dataset_close(&tr->val);
    ent_backend_free(&tr->be);
    if (tr->metrics) fclose(tr->metrics);
    if (tr->samples) fclose(tr->samples);
    free(tr->inputs);
    free(tr->targets);
    free(tr->prompt);
}

ent_status ent_train(const ent_config *cfg, const char *run_dir, ent_comm_t *comm) {
    if (ent_comm_size(comm) != 1)
        return ent_fail(ENT_ERR_USAGE,
                        "started with %d ranks, but this version trains on one rank only "
                        "(data and tensor parallelism are not implemented yet)",
                        ent_comm_size(comm));
    if (cfg->tp != 1 || cfg->zero != 0)
        return ent_fail(ENT_ERR_USAGE, "parallel.tp = %d, parallel.zero = %d: this version "
                        "trains on one rank only (tp = 1, zero = 0)", cfg->tp, cfg->zero);

    trainer tr = {.cfg = cfg, .run_dir = run_dir, .tty = stdout_is_terminal()};
    ent_status st = ENT_OK;
    tr.T = cfg->context;
    tr.micro = cfg->micro_batch > 0 ? cfg->micro_batch : cfg->batch_size;
    tr.accum = cfg->batch_size / tr.micro;
    tr.data_seed = ent_hash64(cfg->seed ^ 0xda7aULL);

    // data first: a bad shard fails before any memory is committed
    ENT_CHECK_GOTO(ent_dataset_open(cfg->data_dir, cfg->train_pattern, cfg->vocab, tr.T,
                                    &tr.train), done);
    char **vals = NULL;
    int nval = ent_glob_shards(cfg->data_dir, cfg->val_pattern, &vals);
    ent_free_paths(vals, nval > 0 ? nval : 0);
    if (nval > 0) {
        ENT_CHECK_GOTO(ent_dataset_open(cfg->data_dir, cfg->val_pattern, cfg->vocab, tr.T,
                                        &tr.val), done);
    } else {
        ent_log_warn("no validation shards match %s/%s: training without validation loss",
                     cfg->data_dir, cfg->val_pattern);
    }

    tr.be = ent_backend_cpu_new(cfg->threads);
    if (tr.be == NULL) {
        st = ent_fail(ENT_ERR_NOMEM, "out of memory creating the CPU backend");
        goto done;
    }
    ent_model_shape shape = ent_model_shape_from_config(cfg);
    ENT_CHECK_GOTO(ent_model_new(tr.be, &shape, tr.micro, tr.T, &tr.model), done);
    ent_model_init(tr.model, cfg->seed);

    tr.inputs = malloc(sizeof(int32_t) * (size_t)tr.micro * tr.T);
    tr.targets = malloc(sizeof(int32_t) * (size_t)tr.micro * tr.T);
    size_t plen = strlen(cfg->sample_prompt);
    tr.prompt = malloc(sizeof(int32_t) * (plen + 1));
    if (tr.inputs == NULL || tr.targets == NULL || tr.prompt == NULL) {
        st = ent_fail(ENT_ERR_NOMEM, "out of memory for batch buffers");
        goto done;
    }
    tr.prompt[0] = ENT_TOKEN_EOT;
    for (size_t i = 0; i < plen; i++) tr.prompt[i + 1] = (unsigned char)cfg->sample_prompt[i];
    tr.nprompt = (int)plen + 1;

    ENT_CHECK_GOTO(ent_mkdirs(run_dir), done);
    size_t nparams = ent_model_shape_num_params(&shape);
    ENT_CHECK_GOTO(write_run_files(&tr, run_dir, comm, nparams), done);
    ENT_CHECK_GOTO(open_run_file(run_dir, "metrics.jsonl", &tr.metrics), done);
    ENT_CHECK_GOTO(open_run_file(run_dir, "samples.txt", &tr.samples), done);

    char mem[32];
    size_t tokens_per_step = (size_t)cfg->batch_size * tr.T;
    ent_log_info("entente %s (%s): %d rank x %d threads, %s", ENT_VERSION, ENT_GIT_REVISION,
                 ent_comm_size(comm), tr.be->threads, ent_backend_cpu_describe());
    ent_log_info("model: %d layers, %d heads, width %d, context %d, vocab %d: %.2fM parameters, "
                 "%s in memory", cfg->layers, cfg->heads, cfg->width, cfg->context, cfg->vocab,
                 nparams / 1e6, ent_format_bytes((double)ent_model_memory_bytes(&shape, tr.micro, tr.T), mem, sizeof mem));
    ent_log_info("data: %s: train %lld tokens in %d shard(s) (%lld sequences); val %lld tokens",
                 cfg->data_dir, (long long)ent_dataset_num_tokens(tr.train),
                 ent_dataset_num_shards(tr.train), (long long)ent_dataset_num_sequences(tr.train),
                 tr.val ? (long long)ent_dataset_num_tokens(tr.val) : 0LL);
    ent_log_info("batch: %d sequences x %d tokens = %zu tokens/step (micro-batch %d, %d "
                 "accumulation steps); %d steps = %.2f epochs",
                 cfg->batch_size, tr.T, tokens_per_step, tr.micro, tr.accum, cfg->steps,
                 (double)cfg->steps * cfg->batch_size / (double)ent_dataset_num_sequences(tr.train));
    ent_log_info("run dir: %s", run_dir);

    tr.t_start = now_seconds();
    double val_loss = NAN, train_time = 0.0, step_avg = 0.0;
    ENT_CHECK_GOTO(run_eval(&tr, 0, &val_loss), done);
    for (int step = 1; step <= cfg->steps; step++) {
        double lr = ent_lr_schedule(cfg, step);
        double t0 = now_seconds(), loss, norm;
        ENT_CHECK_GOTO(train_step(&tr, step, lr, &loss, &norm), done);
        double dt = now_seconds() - t0;
        train_time += dt;
        step_avg = step == 1 ? dt : 0.9 * step_avg + 0.1 * dt;
        double tok_s = tokens_per_step / dt;

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
                (long long)(tokens_per_step * (size_t)step),
                (long long)(tr.cursor.consumed / ent_dataset_num_sequences(tr.train)));
        json_number(tr.metrics, "elapsed_s", now_seconds() - tr.t_start);
        fputs("}\n", tr.metrics);
        ENT_CHECK_GOTO(flush_run_file(&tr, tr.metrics, "metrics.jsonl"), done);

        char eta[32];
        format_duration(step_avg * (cfg->steps - step), eta, sizeof eta);
        progress(&tr, step % cfg->log_every == 0 || step == cfg->steps,
                 "step %6d/%d | loss %.4f | lr %.2e | grad norm %.3f | %.1fk tok/s | "
                 "%.0f ms/step | eta %s",
                 step, cfg->steps, loss, lr, norm, tok_s / 1e3, dt * 1e3, eta);
        int last = step == cfg->steps;
        if ((cfg->eval_every > 0 && step % cfg->eval_every == 0) || last)
            ENT_CHECK_GOTO(run_eval(&tr, step, &val_loss), done);
        if ((cfg->sample_every > 0 && step % cfg->sample_every == 0) || last)
            ENT_CHECK_GOTO(write_sample(&tr, step), done);
    }
    double elapsed = now_seconds() - tr.t_start;
    char t_train[32], t_all[32];
    format_duration(train_time, t_train, sizeof t_train);
    format_duration(elapsed, t_all, sizeof t_all);
    if (tr.val != NULL)
        ent_log_info("done: %d steps in %s (training %s, %.1fk tok/s); final val loss %.4f",
                     cfg->steps, t_all, t_train,
                     tokens_per_step * (double)cfg->steps / train_time / 1e3, val_loss);
    else
        ent_log_info("done: %d steps in %s (training %s, %.1fk tok/s)", cfg->steps, t_all,
                     t_train, tokens_per_step * (double)cfg->steps / train_time / 1e3);
done:
    trainer_free(&tr);
    return st;
}
