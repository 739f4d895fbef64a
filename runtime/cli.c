// cli.c: the `entente` command line. Every subcommand has --help; errors are
// one line on stderr ("entente: error: ...") and the exit code says what kind:
// 0 success, 1 a runtime failure (data, files, memory), 2 a usage or config error.
#include "runtime_impl.h"
#include "ent_ckpt.h"
#include "ent_version.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char *main_help =
    "entente: train a GPT language model with MPI on one site's CPUs, alone or as\n"
    "one site of a coalition (sites that train one model and exchange only\n"
    "compressed deltas through a coordinator), and check, export and sample its\n"
    "checkpoints.\n"
    "\n"
    "Usage: entente COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n";

static const char *main_help_end =
    "\n"
    "train is an MPI program: run it directly for one rank, or under mpirun /\n"
    "srun for many (Open MPI's mpirun needs --allow-run-as-root as root, and\n"
    "--oversubscribe for more ranks than cores). 'entente COMMAND --help'\n"
    "describes each command.\n"
    "\n"
    "Options:\n"
    "  -h, --help     this help\n"
    "  --version      version and source revision\n"
    "\n"
    "Exit codes: 0 success, 1 runtime failure (data, files, memory, a damaged\n"
    "checkpoint), 2 usage or configuration error, 3 a peer rank lost, 75 stopped\n"
    "by a signal after saving (requeue to go on).\n";

static const char *train_help =
    "Usage: entente train --config FILE [--set SECTION.KEY=VALUE ...] [--run-dir DIR]\n"
    "                     [--resume FILE|latest|auto | --force] [--print-config]\n"
    "\n"
    "Trains the GPT model that FILE describes on the token shards in data.dir,\n"
    "printing a progress line per step, the validation loss at intervals and a\n"
    "generated sample at the end.\n"
    "\n"
    "Options:\n"
    "  --config FILE        INI configuration (see configs/ and docs/config.md)\n"
    "  --set S.K=V          override one key, e.g. --set train.steps=100 (repeatable)\n"
    "  --run-dir DIR        where metrics.jsonl, config.ini, run.json and samples.txt\n"
    "                       go (default: runs/<config name>-<date>-<time>)\n"
    "  --resume FILE        continue from a checkpoint, on any number of ranks; without\n"
    "                       --config the checkpoint's own configuration is used\n"
    "                       (--set still applies), except the layout: parallel.tp\n"
    "                       and parallel.zero come from --set (default 1 and 0)\n"
    "  --resume latest      the newest checkpoint of the run's checkpoint directory\n"
    "  --resume auto        latest if there is one, else start from the beginning\n"
    "                       (what a requeued batch job wants); a 'latest' that\n"
    "                       points to a missing file is an error\n"
    "  --force              start over in a run directory that holds a run: its\n"
    "                       metrics.jsonl and samples.txt are truncated, config.ini\n"
    "                       and run.json rewritten, and the checkpoints in its\n"
    "                       checkpoint directory (and 'latest') removed before step 1\n"
    "  --print-config       print the effective configuration and exit\n"
    "  --insecure           a coalition site only: join over plaintext, without\n"
    "                       CurveZMQ keys (for experiments on one machine)\n"
    "  -h, --help           this help\n"
    "\n"
    "A run directory holds one run. Without --resume or --force, train refuses a\n"
    "run directory (or checkpoint directory) that already holds one (exit code 2).\n"
    "A resumed run appends to metrics.jsonl and samples.txt (a step redone after\n"
    "the checkpoint appears again; its last record counts), and checkpoint.keep\n"
    "only ever removes checkpoints of this run. Before step 1, train checks that\n"
    "the checkpoint directory can be created and written and has room for one\n"
    "checkpoint (exit code 1 otherwise).\n"
    "\n"
    "With coalition.coordinator set (a [coalition] section, or --set), the job is\n"
    "a site of that coalition: its leader rank joins the coordinator (entente\n"
    "coordinator --help), every rank starts from the coalition's anchor, and it\n"
    "trains coalition.rounds rounds of planned inner steps, exchanging compressed\n"
    "deltas; train.steps and --resume are then not used (docs/coalition.md).\n"
    "The link is encrypted and authenticated with CurveZMQ: the site needs its\n"
    "key pair (coalition.key, from 'entente keygen') and the coordinator's public\n"
    "key (coalition.coordinator_key), unless --insecure.\n"
    "\n"
    "Environment: OMP_NUM_THREADS sets CPU threads per rank unless system.threads does.\n"
    "\n"
    "Configuration keys (section.key, default, accepted values):\n";

static const char *prepare_help =
    "Usage: entente data prepare --input FILE [FILE ...] --output DIR\n"
    "                            [--val-fraction F] [--shard-tokens N] [--force]\n"
    "                            [--tokenizer DIR [--eot TOKEN]]\n"
    "\n"
    "Tokenizes the input files byte by byte (256 byte values + an end-of-text\n"
    "token that precedes each file: vocabulary 257), or with the byte-level BPE\n"
    "of a Hugging Face tokenizer.json (GPT-2, Llama 3, Qwen2 style), and writes\n"
    "token shards in llm.c's .bin layout: DIR/train_000000.bin, ...,\n"
    "DIR/val_000000.bin, ... (uint32 tokens, shard version 2, when the\n"
    "vocabulary exceeds 65536). Any bytes are accepted, text or binary.\n"
    "\n"
    "Options:\n"
    "  --input FILE ...     one or more input files (the option may repeat)\n"
    "  --output DIR         directory for the shards (created if missing)\n"
    "  --val-fraction F     share of tokens held out for validation, in [0, 0.5]\n"
    "                       (default 0.1), taken as blocks spread through the data\n"
    "  --shard-tokens N     tokens per shard at most (default 100000000)\n"
    "  --force              replace shards already in DIR\n"
    "  --tokenizer DIR      DIR/tokenizer.json (or the file itself): BPE tokens;\n"
    "                       prints the model.vocab the shards need\n"
    "  --eot TOKEN          the token put before each file (default: the first of\n"
    "                       <|begin_of_text|>, <|endoftext|>, <s>, <|end_of_text|>)\n"
    "  -h, --help           this help\n";

static int is_help(const char *a) { return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0; }

static int report(ent_status st) {
    fflush(stdout); // what was printed before comes before the message
    if (st == ENT_STOPPED) ent_log_notice("%s", ent_last_error());
    else ent_log_error("%s", ent_last_error());
    return ent_exit_code(st);
}

static int usage_error(const char *cmd, const char *fmt, const char *arg) {
    fprintf(stderr, "entente: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'entente %s --help'.\n", cmd);
    return 2;
}

// Reads a numeric option's value (the same strict reading as config values):
// returns 0, or prints the usage error naming the option, its value and what
// it accepts, and returns 2.
static int int_option(const char *cmd, const char *opt, const char *text, long long lo,
                      long long hi, long long *out) {
    long long v;
    if (ent_parse_i64(text, &v) == 0 && v >= lo && v <= hi) {
        *out = v;
        return 0;
    }
    char msg[ENT_PATH_MAX + 128];
    snprintf(msg, sizeof msg, "%s '%.4000s' is not an integer in %lld..%lld", opt, text, lo, hi);
    return usage_error(cmd, "%s", msg);
}

static int u64_option(const char *cmd, const char *opt, const char *text, uint64_t *out) {
    if (ent_parse_u64(text, out) == 0) return 0;
    char msg[ENT_PATH_MAX + 128];
    snprintf(msg, sizeof msg, "%s '%.4000s' is not an integer in 0..%llu", opt, text,
             (unsigned long long)UINT64_MAX);
    return usage_error(cmd, "%s", msg);
}

static int float_option(const char *cmd, const char *opt, const char *text, double lo, double hi,
                        double *out) {
    double v;
    if (ent_parse_f64(text, &v) == 0 && v >= lo && v <= hi) {
        *out = v;
        return 0;
    }
    char msg[ENT_PATH_MAX + 128];
    snprintf(msg, sizeof msg, "%s '%.4000s' is not a number in [%g, %g]", opt, text, lo, hi);
    return usage_error(cmd, "%s", msg);
}

// A checkpoint argument (a file, or a directory and its 'latest') as the
// path of a regular file: a FIFO or a device named as a checkpoint, or a
// 'latest' that points at one, is refused before HDF5 would open it.
static ent_status checkpoint_path(const char *arg, char *path, size_t n) {
    struct stat st;
    if (stat(arg, &st) != 0)
        return ent_fail(ENT_ERR_INPUT, "cannot open checkpoint %s: %s", arg, strerror(errno));
    if (!S_ISDIR(st.st_mode)) ENT_CHECK(ent_check_regular(arg, "checkpoint", ENT_ERR_INPUT));
    ENT_CHECK(ent_ckpt_resolve_latest(arg, path, n));
    return ent_check_regular(path, "checkpoint", ENT_ERR_INPUT);
}

// ---------------------------------------------------------------------------
// entente train

// The configuration stored in a checkpoint, with --set overrides. The layout
// (parallel.tp, parallel.zero) is not the checkpoint's: it comes from --set
// or the defaults, since any layout resumes any checkpoint and the one it was
// saved with need not fit the ranks at hand.
static ent_status config_from_checkpoint(ent_config *cfg, const char *path, const char **sets,
                                         int nsets) {
    ent_config defaults;
    ent_config_defaults(&defaults);
    char tp[32], zero[32];
    snprintf(tp, sizeof tp, "parallel.tp=%d", defaults.tp);
    snprintf(zero, sizeof zero, "parallel.zero=%d", defaults.zero);
    const char **all = calloc((size_t)nsets + 2, sizeof *all);
    if (all == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
    all[0] = tp;
    all[1] = zero;
    for (int i = 0; i < nsets; i++) all[i + 2] = sets[i];
    ent_status st = ent_config_from_checkpoint(cfg, path, all, nsets + 2);
    free(all);
    return st;
}

// The options train and coordinator share: --config FILE, --set S.K=V
// (repeatable), --run-dir DIR, --force, --insecure.
typedef struct {
    const char *config, *run_dir;
    const char **sets; // argc entries
    int nsets, force, insecure;
} run_args;

// Takes argv[*i] (and its value) when it is one of run_args' options: 1 when
// taken, 0 when it is another argument, -1 after a usage error (an option
// without its value; rc holds the exit code).
static int take_run_arg(const char *cmd, int argc, char **argv, int *i, run_args *ra, int *rc) {
    const char *a = argv[*i];
    const char **slot = strcmp(a, "--config") == 0    ? &ra->config
                        : strcmp(a, "--run-dir") == 0 ? &ra->run_dir
                                                      : NULL;
    if (strcmp(a, "--force") == 0 || strcmp(a, "--insecure") == 0) {
        *(a[2] == 'f' ? &ra->force : &ra->insecure) = 1;
        return 1;
    }
    if (slot == NULL && strcmp(a, "--set") != 0) return 0;
    if (*i + 1 >= argc) {
        *rc = usage_error(cmd, "%s needs a value", a);
        return -1;
    }
    const char *v = argv[++*i];
    if (slot != NULL) *slot = v;
    else ra->sets[ra->nsets++] = v;
    return 1;
}

// "runs/<stem of name's file name>-<date>-<time>" into out; returns out.
static const char *default_run_dir(const char *name, char out[ENT_PATH_MAX]) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    size_t stem = strcspn(base, ".");
    time_t now = time(NULL);
    char when[32];
    strftime(when, sizeof when, "%Y%m%d-%H%M%S", localtime(&now));
    snprintf(out, ENT_PATH_MAX, "runs/%.*s-%s", (int)stem, base, when);
    return out;
}

// --resume latest|auto: the checkpoint the run's checkpoint directory's
// 'latest' names, into path; with auto (and a configuration given), "" when
// nothing was saved yet (the run starts from the beginning, appending).
static ent_status resolve_pointer(const ent_config *cfg, const char *run_dir, const char *resume,
                                  int have_config, char *path, size_t n) {
    char dir[ENT_PATH_MAX];
    ent_checkpoint_dir(cfg, run_dir, dir, sizeof dir);
    char link[ENT_PATH_MAX + 16];
    snprintf(link, sizeof link, "%s/latest", dir);
    struct stat sb;
    path[0] = '\0';
    if (strcmp(resume, "auto") == 0 && have_config && lstat(link, &sb) != 0 && errno == ENOENT) {
        // nothing saved yet: the run starts (or, killed before its first
        // checkpoint, starts again) from the beginning, appending to its files
        ent_log_notice("no checkpoint in %s yet: starting from the beginning", dir);
        return ENT_OK;
    }
    ent_status st = ent_ckpt_resolve_latest(dir, path, n);
    // a 'latest' that names no file is never taken for "none yet"
    if (st != ENT_OK && strcmp(resume, "auto") == 0)
        st = ent_fail(st, "--resume auto: %s (restore the checkpoint it names or point it at "
                      "another; to start over instead, give --force without --resume)",
                      ent_last_error());
    return st;
}

static int cmd_train(int argc, char **argv) {
    const char *resume = NULL;
    int print_config = 0, rc = 0;
    run_args ra = {.sets = calloc((size_t)argc + 1, sizeof(char *))};
    if (ra.sets == NULL) return report(ent_fail(ENT_ERR_NOMEM, "out of memory"));
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int taken = take_run_arg("train", argc, argv, &i, &ra, &rc);
        if (taken < 0) goto out;
        if (taken) continue;
        if (is_help(a)) {
            fputs(train_help, stdout);
            ent_config_describe_keys(stdout);
            goto out;
        } else if (strcmp(a, "--resume") == 0 && i + 1 < argc) {
            resume = argv[++i];
        } else if (strcmp(a, "--print-config") == 0) {
            print_config = 1;
        } else if (strcmp(a, "--resume") == 0) {
            rc = usage_error("train", "%s needs a value", a);
            goto out;
        } else {
            rc = usage_error("train", "unknown argument '%s'", a);
            goto out;
        }
    }
    const char *config = ra.config, *run_dir = ra.run_dir, **sets = ra.sets;
    int force = ra.force, nsets = ra.nsets;
    if (force && resume != NULL) {
        rc = usage_error("train", "%s", "--force starts a run over and --resume continues one: "
                         "give one of them");
        goto out;
    }
    int by_pointer = resume != NULL && (strcmp(resume, "latest") == 0 || strcmp(resume, "auto") == 0);
    if (config == NULL && (resume == NULL || (by_pointer && run_dir == NULL))) {
        rc = usage_error("train", "%s", "--config FILE is required (or --resume FILE, which "
                         "carries its configuration, or --run-dir DIR --resume latest)");
        goto out;
    }
    char default_dir[ENT_PATH_MAX];
    if (run_dir == NULL) run_dir = default_run_dir(config != NULL ? config : resume, default_dir);
    ent_config cfg;
    ent_status st = ENT_OK;
    char resume_path[ENT_PATH_MAX] = "";
    if (config != NULL) {
        st = ent_config_load(&cfg, config, sets, nsets);
    } else if (!by_pointer) {
        st = config_from_checkpoint(&cfg, resume, sets, nsets);
    } else {
        ent_config_defaults(&cfg); // only checkpoint.dir's default matters here
    }
    if (st == ENT_OK && by_pointer) {
        st = resolve_pointer(&cfg, run_dir, resume, config != NULL, resume_path,
                             sizeof resume_path);
        if (st == ENT_OK && resume_path[0] && config == NULL) {
            st = config_from_checkpoint(&cfg, resume_path, sets, nsets);
        }
    } else if (st == ENT_OK && resume != NULL) {
        snprintf(resume_path, sizeof resume_path, "%s", resume);
    }
    if (st != ENT_OK) {
        rc = report(st);
        goto out;
    }
    cfg.coal_insecure = ra.insecure;
    if (print_config) {
        ent_config_write(&cfg, stdout);
        goto out;
    }
    ent_comm_t *comm = NULL;
    ent_ckpt_library_init(); // before MPI: see ent_ckpt.h
    st = ent_comm_init_threads(NULL, NULL, cfg.ckpt_async, &comm);
    ent_train_opts topts = {.run_dir = run_dir, .resume = resume_path[0] ? resume_path : NULL,
                            .continues = resume != NULL, .force = force};
    if (st == ENT_OK) st = ent_train(&cfg, &topts, comm);
    if (st != ENT_OK) rc = report(st);
    ent_comm_finalize(&comm);
out:
    free(ra.sets);
    return rc;
}

// ---------------------------------------------------------------------------
// entente coordinator

static const char *coordinator_help =
    "Usage: entente coordinator --config FILE [--set SECTION.KEY=VALUE ...] [--run-dir DIR]\n"
    "                           [--resume FILE|latest|auto | --force] [--standby]\n"
    "                           [--insecure]\n"
    "\n"
    "Runs a coalition's coordinator: a ZeroMQ service that the leader rank of each\n"
    "site connects to (sites are 'entente train' jobs whose configuration sets\n"
    "coalition.coordinator and coalition.site). It listens on coalition.bind (or\n"
    "coalition.coordinator; port * picks a free one) and writes the endpoint it\n"
    "bound to RUN_DIR/endpoint; waits for coalition.sites sites; runs\n"
    "coalition.rounds rounds: each site trains its planned inner steps and sends\n"
    "its compressed delta, the coordinator merges them by tokens, takes the outer\n"
    "Nesterov step and sends every site the same compressed update. It evaluates\n"
    "the anchor on the validation shards of data.dir (if any) each round, writes\n"
    "RUN_DIR/metrics.jsonl, and saves the anchor as a checkpoint in\n"
    "RUN_DIR/checkpoints (entente sample --checkpoint RUN_DIR/checkpoints/latest).\n"
    "One process; no mpirun needed. docs/coalition.md describes the rounds.\n"
    "\n"
    "The link is encrypted and authenticated with CurveZMQ: the coordinator\n"
    "needs its key pair (coalition.key) and admits only the sites whose public\n"
    "keys are in coalition.allow (a directory of NAME.pub files, from 'entente\n"
    "keygen'), each under its key's name; an unknown key is refused and logged\n"
    "with its fingerprint. docs/operations.md says how keys are exchanged.\n"
    "\n"
    "Options:\n"
    "  --config FILE        INI configuration: the model and the [coalition] section\n"
    "                       every site uses (configs/coalition.ini)\n"
    "  --set S.K=V          override one key (repeatable)\n"
    "  --run-dir DIR        default: runs/coordinator-<date>-<time>\n"
    "  --force              start over in a run directory that holds a run\n"
    "  --resume FILE        continue the coalition from a coordinator's checkpoint\n"
    "                       (its anchor, outer momentum, residual, round and\n"
    "                       ledger; model and coalition settings must match): the\n"
    "                       sites, cut off meanwhile, come back and carry their\n"
    "                       progress on; the checkpoint's round is merged empty\n"
    "  --resume latest      the newest checkpoint in RUN_DIR's checkpoint directory\n"
    "  --resume auto        latest if there is one, else start from the beginning\n"
    "  --standby            a standby coordinator: binds coalition.bind, takes the\n"
    "                       state the primary streams to it (the primary's\n"
    "                       coalition.standby names this endpoint; its key is\n"
    "                       coalition.primary_key), answers sites that the primary\n"
    "                       serves, and takes the coalition over when the primary's\n"
    "                       connection closes or it is silent for\n"
    "                       coalition.takeover_after; with coalition.standby, it\n"
    "                       streams its state there once it has taken over (a\n"
    "                       chain: that standby's coalition.primary_key is this\n"
    "                       one's key)\n"
    "  --insecure           no CurveZMQ: plaintext, any site admitted (for\n"
    "                       experiments on one machine)\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit codes: 0 the rounds are done; 1 a site failed, left or fell silent for\n"
    "coalition.timeout, or a file could not be written; 2 a usage or configuration\n"
    "error.\n";

static int cmd_coordinator(int argc, char **argv) {
    int rc = 0, standby = 0;
    const char *resume = NULL;
    run_args ra = {.sets = calloc((size_t)argc + 1, sizeof(char *))};
    if (ra.sets == NULL) return report(ent_fail(ENT_ERR_NOMEM, "out of memory"));
    for (int i = 0; i < argc; i++) {
        int taken = take_run_arg("coordinator", argc, argv, &i, &ra, &rc);
        if (taken < 0) goto out;
        if (taken) continue;
        if (is_help(argv[i])) {
            fputs(coordinator_help, stdout);
            goto out;
        }
        if (strcmp(argv[i], "--resume") == 0 && i + 1 < argc) {
            resume = argv[++i];
            continue;
        }
        if (strcmp(argv[i], "--standby") == 0) {
            standby = 1;
            continue;
        }
        rc = usage_error("coordinator", strcmp(argv[i], "--resume") == 0
                         ? "%s needs a value" : "unknown argument '%s'", argv[i]);
        goto out;
    }
    const char *config = ra.config, *run_dir = ra.run_dir, **sets = ra.sets;
    int force = ra.force, nsets = ra.nsets;
    if (config == NULL) {
        rc = usage_error("coordinator", "%s", "--config FILE is required");
        goto out;
    }
    if (force && resume != NULL) {
        rc = usage_error("coordinator", "%s", "--force starts a run over and --resume continues "
                         "one: give one of them");
        goto out;
    }
    if (standby && resume != NULL) {
        rc = usage_error("coordinator", "%s", "--standby takes its state from the primary, not "
                         "from a checkpoint: give one of --standby and --resume");
        goto out;
    }
    char default_dir[ENT_PATH_MAX];
    if (run_dir == NULL) run_dir = default_run_dir("coordinator", default_dir);
    ent_config cfg;
    ent_status st = ent_config_load(&cfg, config, sets, nsets);
    if (st != ENT_OK) {
        rc = report(st);
        goto out;
    }
    cfg.coal_insecure = ra.insecure;
    cfg.coal_standby_mode = standby;
    char resume_path[ENT_PATH_MAX] = "";
    if (resume != NULL && (strcmp(resume, "latest") == 0 || strcmp(resume, "auto") == 0))
        st = resolve_pointer(&cfg, run_dir, resume, 1, resume_path, sizeof resume_path);
    else if (resume != NULL)
        snprintf(resume_path, sizeof resume_path, "%s", resume);
    if (st != ENT_OK) {
        rc = report(st);
        goto out;
    }
    ent_comm_t *comm = NULL;
    ent_ckpt_library_init(); // before MPI: see ent_ckpt.h
    // its checkpoints are written on a thread of their own, the only one
    // that calls MPI while it runs (docs/coalition.md, "Checkpoints")
    st = ent_comm_init_threads(NULL, NULL, ENT_COMM_SERIALIZED, &comm);
    ent_train_opts copts = {.run_dir = run_dir, .resume = resume_path[0] ? resume_path : NULL,
                            .continues = resume != NULL, .force = force};
    if (st == ENT_OK) st = ent_coordinator_run(&cfg, &copts);
    if (st != ENT_OK) rc = report(st);
    ent_comm_finalize(&comm);
out:
    free(ra.sets);
    return rc;
}

// ---------------------------------------------------------------------------
// entente keygen

static const char *keygen_help =
    "Usage: entente keygen NAME [NAME ...] [--dir DIR] [--force]\n"
    "\n"
    "Writes a CurveZMQ key pair for each NAME: DIR/NAME.key, the secret (mode\n"
    "0600: it never leaves the machine that uses it), and DIR/NAME.pub, the\n"
    "public key to hand to the other side. A site's NAME is its coalition.site;\n"
    "the coordinator's may be any name (say 'coordinator').\n"
    "\n"
    "  coordinator: coalition.key = its NAME.key, coalition.allow = a directory\n"
    "               holding every admitted site's NAME.pub\n"
    "  site:        coalition.key = its NAME.key, coalition.coordinator_key =\n"
    "               the coordinator's NAME.pub\n"
    "\n"
    "Options:\n"
    "  --dir DIR            where the files go (default: the current directory)\n"
    "  --force              replace existing key files (every holder of the old\n"
    "                       public key then needs the new one)\n"
    "  -h, --help           this help\n";

static int cmd_keygen(int argc, char **argv) {
    const char *dir = ".";
    int force = 0, nnames = 0;
    for (int i = 0; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(keygen_help, stdout);
            return 0;
        } else if (strcmp(argv[i], "--dir") == 0) {
            if (i + 1 >= argc) return usage_error("keygen", "%s needs a value", argv[i]);
            dir = argv[++i];
        } else if (strcmp(argv[i], "--force") == 0) {
            force = 1;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            return usage_error("keygen", "unknown argument '%s'", argv[i]);
        } else if (!ent_link_name_ok(argv[i])) {
            return usage_error("keygen", "NAME '%s': 1-64 characters of A-Z a-z 0-9 . _ -, not "
                               "starting with '.' (a site's NAME is its coalition.site)",
                               argv[i]);
        } else {
            nnames++;
        }
    }
    if (nnames == 0) return usage_error("keygen", "%s", "give at least one NAME");
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0) {
            i++; // its value
            continue;
        }
        if (strncmp(argv[i], "--", 2) == 0) continue;
        ent_link_keypair kp;
        ent_status st = ent_link_keygen(argv[i], &kp);
        if (st == ENT_OK) st = ent_link_key_write(dir, &kp, force);
        memset(&kp, 0, sizeof kp);
        if (st != ENT_OK) return report(st);
        char fp[32];
        ent_link_keypair pub;
        char path[ENT_PATH_MAX + 80];
        snprintf(path, sizeof path, "%s/%s.pub", dir, argv[i]);
        if ((st = ent_link_key_read(path, 0, &pub)) != ENT_OK) return report(st);
        printf("entente: %s/%s.key (secret) and %s (public), key %s\n", dir, argv[i], path,
               ent_link_key_fingerprint(pub.public_key, fp, sizeof fp));
    }
    return 0;
}

// ---------------------------------------------------------------------------
// entente ckpt info|verify|export, entente sample

static const char *ckpt_help =
    "Usage: entente ckpt info FILE\n"
    "       entente ckpt verify FILE\n"
    "       entente ckpt export FILE --format safetensors --out DIR\n"
    "       entente ckpt import --from DIR --out FILE [--force]\n"
    "\n"
    "  info     step, tokens, data cursor, model, topology it was saved with, sizes,\n"
    "           creation time and the configuration it was trained with\n"
    "  verify   checks the metadata (HDF5 checksums, the metadata digest), every\n"
    "           attribute and dataset against the configuration stored in it (what\n"
    "           --resume checks), then reads every dataset: Fletcher32 checksums, no\n"
    "           NaN or Inf; exit 0 when all is well, 1 naming the attribute or the\n"
    "           first damaged dataset\n"
    "  export   writes DIR/model.safetensors (Hugging Face tensor names and layout)\n"
    "           and DIR/config.json, which transformers' GPT2LMHeadModel or\n"
    "           LlamaForCausalLM loads\n"
    "  import   reads a Hugging Face model directory (config.json, model.safetensors\n"
    "           or model.safetensors.index.json and its shards; F32, BF16 or F16\n"
    "           tensors; GPT-2 or Llama) and writes FILE, a checkpoint at step 0 that\n"
    "           train --resume, eval and sample take; --force replaces an existing\n"
    "           FILE. It converts tensors on all cores (OMP_NUM_THREADS: how many)\n"
    "\n"
    "FILE may also be a checkpoint directory: its 'latest' checkpoint is used.\n";

static const char *sample_help =
    "Usage: entente sample --checkpoint FILE [--prompt TEXT] [--tokens N]\n"
    "                      [--temperature T] [--seed S] [--logits FILE]\n"
    "                      [--tokenizer DIR]\n"
    "\n"
    "Generates text with the model of a checkpoint (any layout it was saved\n"
    "with), on this machine's CPU.\n"
    "\n"
    "  --checkpoint FILE    a checkpoint, or a checkpoint directory (its latest)\n"
    "  --prompt TEXT        text to continue (default: the start of a document)\n"
    "  --tokens N           tokens to generate (default 256)\n"
    "  --temperature T      softmax temperature; 0 = most likely token (default 0.8)\n"
    "  --seed S             sampler seed (default 42)\n"
    "  --tokenizer DIR      encode the prompt and decode the text with DIR/tokenizer.json\n"
    "                       (default: the checkpoint's data.tokenizer; \"\" = bytes)\n"
    "  --logits FILE        also write the logits of every prompt position (end-of-\n"
    "                       text token first), one line of vocabulary-size numbers\n"
    "                       each: to compare an export with another implementation\n";

static int ckpt_import(int argc, char **argv) {
    const char *from = NULL, *out = NULL;
    int force = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--force") == 0) force = 1;
        else if (strcmp(argv[i], "--from") == 0 && i + 1 < argc) from = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out = argv[++i];
        else return usage_error("ckpt", "unknown or incomplete argument '%s'", argv[i]);
    }
    if (from == NULL || out == NULL)
        return usage_error("ckpt", "%s", "import needs --from DIR and --out FILE");
    ent_status st = ent_import_hf(from, out, force, stdout);
    return st == ENT_OK ? 0 : report(st);
}

static int cmd_ckpt(int argc, char **argv) {
    if (argc >= 1 && is_help(argv[0])) {
        fputs(ckpt_help, stdout);
        return 0;
    }
    if (argc < 1)
        return usage_error("ckpt", "%s", "expected 'ckpt info|verify|export FILE' or 'ckpt import'");
    const char *what = argv[0];
    if (argc >= 2 && is_help(argv[1])) {
        fputs(ckpt_help, stdout);
        return 0;
    }
    if (strcmp(what, "import") == 0) return ckpt_import(argc - 1, argv + 1);
    if (argc < 2) return usage_error("ckpt", "'ckpt %s' needs a checkpoint FILE", what);
    if (strcmp(what, "info") != 0 && strcmp(what, "verify") != 0 && strcmp(what, "export") != 0)
        return usage_error("ckpt", "unknown command 'ckpt %s'", what);
    char path[ENT_PATH_MAX];
    ent_status st = checkpoint_path(argv[1], path, sizeof path);
    if (st != ENT_OK) return report(st);
    if (strcmp(what, "info") == 0 && argc == 2) {
        st = ent_ckpt_info(path, stdout);
    } else if (strcmp(what, "verify") == 0 && argc == 2) {
        st = ent_ckpt_verify(path, ent_checkpoint_expect, NULL, stdout);
    } else if (strcmp(what, "export") == 0) {
        const char *format = NULL, *outdir = NULL;
        for (int i = 2; i < argc; i++) {
            if (strcmp(argv[i], "--format") == 0 && i + 1 < argc) format = argv[++i];
            else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) outdir = argv[++i];
            else return usage_error("ckpt", "unknown or incomplete argument '%s'", argv[i]);
        }
        if (outdir == NULL) return usage_error("ckpt", "%s", "export needs --out DIR");
        if (format != NULL && strcmp(format, "safetensors") != 0)
            return usage_error("ckpt", "--format %s: only safetensors is supported", format);
        st = ent_export_hf(path, outdir, stdout);
    } else {
        return usage_error("ckpt", "unknown or incomplete command 'ckpt %s'", what);
    }
    return st == ENT_OK ? 0 : report(st);
}

// ---------------------------------------------------------------------------
// entente ledger

static const char *ledger_help =
    "Usage: entente ledger FILE [--json]\n"
    "\n"
    "Prints the coalition ledger a checkpoint holds (its /coalition/ledger): a\n"
    "coordinator's, or a site's (the last ledger the coordinator sent it, with\n"
    "the update of the round before; none before its first merged round).\n"
    "One row per site with the tokens of its deltas merged, the inner steps and\n"
    "compute seconds it reported, the rounds it was a member of, its deltas\n"
    "accepted and rejected (by reason: undecodable, wrong_anchor, norm, stale,\n"
    "loss, tokens), its loss-change score, and when it was first and last seen\n"
    "(UTC, and the round). docs/coalition.md (\"The ledger\") says what each\n"
    "number means and how to recompute it from the coordinator's metrics.jsonl.\n"
    "\n"
    "  FILE      a checkpoint, or a checkpoint directory (its latest)\n"
    "  --json    print the stored JSON instead of the table\n"
    "\n"
    "Exit codes: 0 printed; 1 the file cannot be read, holds no ledger, or its\n"
    "ledger is malformed (the message names the file); 2 usage error.\n";

static int cmd_ledger(int argc, char **argv) {
    const char *file = NULL;
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(ledger_help, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (argv[i][0] == '-' || file != NULL)
            return usage_error("ledger", "unknown argument '%s'", argv[i]);
        else file = argv[i];
    }
    if (file == NULL) return usage_error("ledger", "%s", "give a checkpoint FILE");
    char path[ENT_PATH_MAX];
    ent_status st = checkpoint_path(file, path, sizeof path);
    ent_ckpt_t *ck = NULL;
    char *ledger = NULL;
    int64_t round = 0;
    if (st == ENT_OK) st = ent_ckpt_open(path, NULL, &ck);
    if (st == ENT_OK && !ent_ckpt_has_coalition(ck))
        st = ent_fail(ENT_ERR_INPUT, "%s holds no ledger (no group /coalition): a coalition's "
                      "coordinator's and sites' checkpoints have one", path);
    if (st == ENT_OK) st = ent_ckpt_coalition_info(ck, &round, &ledger);
    if (st == ENT_OK) st = ent_ledger_print(path, ledger, json, stdout);
    free(ledger);
    ent_ckpt_close(&ck);
    return st == ENT_OK ? 0 : report(st);
}

static int cmd_sample(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = "", *logits = NULL, *tokenizer = NULL;
    long long tokens = 256;
    double temperature = 0.8;
    uint64_t seed = 42;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int rc = 0;
        if (is_help(a)) {
            fputs(sample_help, stdout);
            return 0;
        } else if (i + 1 >= argc) {
            return usage_error("sample", "unknown or incomplete argument '%s'", a);
        } else if (strcmp(a, "--checkpoint") == 0) {
            ckpt = argv[++i];
        } else if (strcmp(a, "--prompt") == 0) {
            prompt = argv[++i];
        } else if (strcmp(a, "--logits") == 0) {
            logits = argv[++i];
        } else if (strcmp(a, "--tokenizer") == 0) {
            tokenizer = argv[++i];
        } else if (strcmp(a, "--tokens") == 0) {
            rc = int_option("sample", a, argv[++i], 0, 1000000, &tokens);
        } else if (strcmp(a, "--temperature") == 0) {
            rc = float_option("sample", a, argv[++i], 0, 100, &temperature);
        } else if (strcmp(a, "--seed") == 0) {
            rc = u64_option("sample", a, argv[++i], &seed);
        } else {
            return usage_error("sample", "unknown argument '%s'", a);
        }
        if (rc != 0) return rc;
    }
    if (ckpt == NULL) return usage_error("sample", "%s", "--checkpoint FILE is required");
    char path[ENT_PATH_MAX];
    ent_status st = checkpoint_path(ckpt, path, sizeof path);
    if (st == ENT_OK)
        st = ent_sample_checkpoint(path, prompt, tokenizer, (int)tokens, temperature, seed, logits,
                                   stdout);
    return st == ENT_OK ? 0 : report(st);
}

static const char *eval_help =
    "Usage: entente eval --checkpoint FILE [--data DIR] [--batches N]\n"
    "\n"
    "The mean validation loss of a checkpoint's model, without training: over\n"
    "the first N x train.batch_size sequences of the validation shards\n"
    "(data.val_pattern), the set a training run of the checkpoint's\n"
    "configuration evaluates on, so at a step where that run evaluated it prints\n"
    "the loss the run logged. Runs on this machine's CPU, one process.\n"
    "\n"
    "  --checkpoint FILE    a checkpoint, or a checkpoint directory (its latest)\n"
    "  --data DIR           token shards to evaluate on (default: the checkpoint's\n"
    "                       data.dir)\n"
    "  --batches N          batches of train.batch_size sequences (default: the\n"
    "                       checkpoint's eval.batches)\n"
    "  -h, --help           this help\n";

static int cmd_eval(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL;
    long long batches = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int rc = 0;
        if (is_help(a)) {
            fputs(eval_help, stdout);
            return 0;
        } else if (i + 1 >= argc) {
            return usage_error("eval", "unknown or incomplete argument '%s'", a);
        } else if (strcmp(a, "--checkpoint") == 0) {
            ckpt = argv[++i];
        } else if (strcmp(a, "--data") == 0) {
            data = argv[++i];
        } else if (strcmp(a, "--batches") == 0) {
            rc = int_option("eval", a, argv[++i], 1, 1000000, &batches);
        } else {
            return usage_error("eval", "unknown argument '%s'", a);
        }
        if (rc != 0) return rc;
    }
    if (ckpt == NULL) return usage_error("eval", "%s", "--checkpoint FILE is required");
    char path[ENT_PATH_MAX];
    ent_status st = checkpoint_path(ckpt, path, sizeof path);
    if (st == ENT_OK) st = ent_eval_checkpoint(path, data, (int)batches, stdout);
    return st == ENT_OK ? 0 : report(st);
}

// ---------------------------------------------------------------------------
// entente data prepare

static int cmd_data_prepare(int argc, char **argv) {
    const char **inputs = calloc((size_t)argc + 1, sizeof *inputs);
    int ninputs = 0, rc = 0;
    ent_prepare_args args = {.val_fraction = 0.1, .shard_tokens = 100000000};
    if (inputs == NULL) return report(ent_fail(ENT_ERR_NOMEM, "out of memory"));
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            fputs(prepare_help, stdout);
            goto out;
        } else if (strcmp(a, "--input") == 0) {
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
                rc = usage_error("data prepare", "%s needs at least one file", a);
                goto out;
            }
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) inputs[ninputs++] = argv[++i];
        } else if (strcmp(a, "--output") == 0 && i + 1 < argc) {
            args.outdir = argv[++i];
        } else if (strcmp(a, "--val-fraction") == 0 && i + 1 < argc) {
            if ((rc = float_option("data prepare", a, argv[++i], 0, 0.5, &args.val_fraction)))
                goto out;
        } else if (strcmp(a, "--shard-tokens") == 0 && i + 1 < argc) {
            long long n;
            if ((rc = int_option("data prepare", a, argv[++i], 1, INT32_MAX, &n))) goto out;
            args.shard_tokens = (size_t)n;
        } else if (strcmp(a, "--force") == 0) {
            args.force = 1;
        } else if (strcmp(a, "--tokenizer") == 0 && i + 1 < argc) {
            args.tokenizer = argv[++i];
        } else if (strcmp(a, "--eot") == 0 && i + 1 < argc) {
            args.eot = argv[++i];
        } else if (strcmp(a, "--output") == 0 || strcmp(a, "--val-fraction") == 0 ||
                   strcmp(a, "--shard-tokens") == 0 || strcmp(a, "--tokenizer") == 0 ||
                   strcmp(a, "--eot") == 0) {
            rc = usage_error("data prepare", "%s needs a value", a);
            goto out;
        } else {
            rc = usage_error("data prepare", "unknown argument '%s'", a);
            goto out;
        }
    }
    if (ninputs == 0 || args.outdir == NULL) {
        rc = usage_error("data prepare", "%s", "--input FILE and --output DIR are required");
        goto out;
    }
    args.inputs = inputs;
    args.n_inputs = ninputs;
    ent_prepare_result res;
    ent_status st = ent_data_prepare(&args, &res);
    if (st != ENT_OK) {
        rc = report(st);
        goto out;
    }
    printf("entente: wrote %zu train and %zu val tokens to %s (vocabulary %u, %d-byte tokens)\n",
           res.train_tokens, res.val_tokens, args.outdir, res.vocab, res.token_bytes);
    if (args.tokenizer != NULL)
        printf("entente: train with model.vocab = %u and data.tokenizer = %s\n", res.vocab,
               args.tokenizer);
out:
    free(inputs);
    return rc;
}

// `entente data SUBCOMMAND`: prepare is the only one.
static int cmd_data(int argc, char **argv) {
    if (argc >= 1 && strcmp(argv[0], "prepare") == 0) return cmd_data_prepare(argc - 1, argv + 1);
    if (argc >= 1 && is_help(argv[0])) {
        fputs(prepare_help, stdout);
        return 0;
    }
    return usage_error("data", "%s", "expected 'entente data prepare'");
}

// ---------------------------------------------------------------------------
// the command table: a new subcommand is one row

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv); // the arguments after the command's name
    const char *listing;               // its lines in 'entente --help'
} command;

static const command commands[] = {
    {"train", cmd_train,
     "  train          train a GPT model from an INI configuration (or resume one)\n"},
    {"coordinator", cmd_coordinator,
     "  coordinator    run a coalition's coordinator, which sites of 'train' join\n"},
    {"keygen", cmd_keygen,
     "  keygen         write CurveZMQ key pairs for a coordinator and its sites\n"},
    {"data", cmd_data,
     "  data prepare   turn raw files into token shards (byte-level tokenizer)\n"},
    {"eval", cmd_eval, "  eval           the validation loss of a checkpoint\n"},
    {"ckpt", cmd_ckpt,
     "  ckpt info      describe a checkpoint\n"
     "  ckpt verify    check a checkpoint's metadata, attributes and every dataset\n"
     "  ckpt export    write a checkpoint as Hugging Face safetensors\n"
     "  ckpt import    a Hugging Face model directory as a checkpoint at step 0\n"},
    {"sample", cmd_sample, "  sample         generate text from a checkpoint\n"},
    {"ledger", cmd_ledger,
     "  ledger         a coalition coordinator checkpoint's ledger: what each site gave\n"},
};

static const command *find_command(const char *name) {
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

static void print_main_help(FILE *f) {
    fputs(main_help, f);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fputs(commands[i].listing, f);
    fputs(main_help_end, f);
}

int ent_cli_main(int argc, char **argv) {
    // A file-size limit (ulimit -f) then fails the write with EFBIG, which is
    // reported with the file's name, instead of killing the process.
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        print_main_help(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (is_help(cmd) || strcmp(cmd, "help") == 0) {
        const command *c = strcmp(cmd, "help") == 0 && argc > 2 ? find_command(argv[2]) : NULL;
        if (c != NULL) {
            char *help[] = {"--help"};
            return c->run(1, help);
        }
        print_main_help(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("entente %s (%s)\n", ENT_VERSION, ENT_GIT_REVISION);
        return 0;
    }
    const command *c = find_command(cmd);
    if (c != NULL) return c->run(argc - 2, argv + 2);
    fprintf(stderr, "entente: error: unknown command '%s'\nTry 'entente --help'.\n", cmd);
    return 2;
}
