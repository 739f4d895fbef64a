// cli.c: the `entente` command line. Every subcommand has --help; errors are
// one line on stderr ("entente: error: ...") and the exit code says what kind:
// 0 success, 1 a runtime failure (data, files, memory), 2 a usage or config error.
#include "runtime_impl.h"
#include "ent_version.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *main_help =
    "entente: train one language model on compute pooled by several HPC sites.\n"
    "\n"
    "Usage: entente COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  train          train a GPT model from an INI configuration\n"
    "  data prepare   turn raw files into token shards (byte-level tokenizer)\n"
    "\n"
    "Every command is an MPI program: run it directly for one rank, or under\n"
    "mpirun / srun. 'entente COMMAND --help' describes each command.\n"
    "\n"
    "Options:\n"
    "  -h, --help     this help\n"
    "  --version      version and source revision\n"
    "\n"
    "Exit codes: 0 success, 1 runtime failure (data, files, memory), 2 usage or\n"
    "configuration error.\n";

static const char *train_help =
    "Usage: entente train --config FILE [--set SECTION.KEY=VALUE ...] [--run-dir DIR]\n"
    "                     [--print-config]\n"
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
    "  --print-config       print the effective configuration and exit\n"
    "  -h, --help           this help\n"
    "\n"
    "Environment: OMP_NUM_THREADS sets CPU threads per rank unless system.threads does.\n"
    "\n"
    "Configuration keys (section.key, default, accepted values):\n";

static const char *prepare_help =
    "Usage: entente data prepare --input FILE [FILE ...] --output DIR\n"
    "                            [--val-fraction F] [--shard-tokens N] [--force]\n"
    "\n"
    "Tokenizes the input files byte by byte (256 byte values + an end-of-text\n"
    "token that precedes each file: vocabulary 257) and writes token shards in\n"
    "llm.c's .bin layout: DIR/train_000000.bin, ..., DIR/val_000000.bin, ...\n"
    "Any bytes are accepted, text or binary.\n"
    "\n"
    "Options:\n"
    "  --input FILE ...     one or more input files (the option may repeat)\n"
    "  --output DIR         directory for the shards (created if missing)\n"
    "  --val-fraction F     share of tokens held out for validation, in [0, 0.5]\n"
    "                       (default 0.1), taken as blocks spread through the data\n"
    "  --shard-tokens N     tokens per shard at most (default 100000000)\n"
    "  --force              replace shards already in DIR\n"
    "  -h, --help           this help\n";

static int is_help(const char *a) { return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0; }

static int report(ent_status st) {
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

// ---------------------------------------------------------------------------
// entente train

static int cmd_train(int argc, char **argv) {
    const char *config = NULL, *run_dir = NULL;
    int print_config = 0;
    const char **sets = calloc((size_t)argc, sizeof *sets);
    int nsets = 0, rc = 0;
    if (sets == NULL) return report(ent_fail(ENT_ERR_NOMEM, "out of memory"));
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            fputs(train_help, stdout);
            ent_config_describe_keys(stdout);
            goto out;
        } else if (strcmp(a, "--config") == 0 && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(a, "--set") == 0 && i + 1 < argc) {
            sets[nsets++] = argv[++i];
        } else if (strcmp(a, "--run-dir") == 0 && i + 1 < argc) {
            run_dir = argv[++i];
        } else if (strcmp(a, "--print-config") == 0) {
            print_config = 1;
        } else if (strcmp(a, "--config") == 0 || strcmp(a, "--set") == 0 ||
                   strcmp(a, "--run-dir") == 0) {
            rc = usage_error("train", "%s needs a value", a);
            goto out;
        } else {
            rc = usage_error("train", "unknown argument '%s'", a);
            goto out;
        }
    }
    if (config == NULL) {
        rc = usage_error("train", "%s", "--config FILE is required");
        goto out;
    }
    ent_config cfg;
    ent_status st = ent_config_load(&cfg, config, sets, nsets);
    if (st != ENT_OK) {
        rc = report(st);
        goto out;
    }
    if (print_config) {
        ent_config_write(&cfg, stdout);
        goto out;
    }
    char default_dir[ENT_PATH_MAX];
    if (run_dir == NULL) {
        const char *base = strrchr(config, '/');
        base = base ? base + 1 : config;
        size_t stem = strcspn(base, ".");
        time_t now = time(NULL);
        char when[32];
        strftime(when, sizeof when, "%Y%m%d-%H%M%S", localtime(&now));
        snprintf(default_dir, sizeof default_dir, "runs/%.*s-%s", (int)stem, base, when);
        run_dir = default_dir;
    }
    ent_comm_t *comm = NULL;
    st = ent_comm_init(NULL, NULL, &comm);
    if (st == ENT_OK) st = ent_train(&cfg, run_dir, comm);
    if (st != ENT_OK) rc = report(st);
    ent_comm_finalize(&comm);
out:
    free(sets);
    return rc;
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
        char *end = NULL;
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
            args.val_fraction = strtod(argv[++i], &end);
            if (*end != '\0' || end == argv[i]) {
                rc = usage_error("data prepare", "--val-fraction '%s' is not a number", argv[i]);
                goto out;
            }
        } else if (strcmp(a, "--shard-tokens") == 0 && i + 1 < argc) {
            long long n = strtoll(argv[++i], &end, 10);
            if (*end != '\0' || end == argv[i] || n < 1) {
                rc = usage_error("data prepare", "--shard-tokens '%s' is not a positive integer",
                                 argv[i]);
                goto out;
            }
            args.shard_tokens = (size_t)n;
        } else if (strcmp(a, "--force") == 0) {
            args.force = 1;
        } else if (strcmp(a, "--output") == 0 || strcmp(a, "--val-fraction") == 0 ||
                   strcmp(a, "--shard-tokens") == 0) {
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
    size_t ntrain = 0, nval = 0;
    ent_status st = ent_data_prepare(&args, &ntrain, &nval);
    if (st != ENT_OK) {
        rc = report(st);
        goto out;
    }
    printf("entente: wrote %zu train and %zu val tokens to %s (vocabulary %d)\n", ntrain, nval,
           args.outdir, ENT_BYTE_VOCAB);
out:
    free(inputs);
    return rc;
}

// ---------------------------------------------------------------------------

int ent_cli_main(int argc, char **argv) {
    // A file-size limit (ulimit -f) then fails the write with EFBIG, which is
    // reported with the file's name, instead of killing the process.
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        fputs(main_help, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (is_help(cmd) || strcmp(cmd, "help") == 0) {
        if (strcmp(cmd, "help") == 0 && argc > 2) {
            char *help[] = {"--help"};
            if (strcmp(argv[2], "train") == 0) return cmd_train(1, help);
            if (strcmp(argv[2], "data") == 0) return cmd_data_prepare(1, help);
        }
        fputs(main_help, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("entente %s (%s)\n", ENT_VERSION, ENT_GIT_REVISION);
        return 0;
    }
    if (strcmp(cmd, "train") == 0) return cmd_train(argc - 2, argv + 2);
    if (strcmp(cmd, "data") == 0) {
        if (argc >= 3 && strcmp(argv[2], "prepare") == 0) return cmd_data_prepare(argc - 3, argv + 3);
        if (argc >= 3 && is_help(argv[2])) {
            printf("Usage: entente data prepare ...\n\n");
            fputs(prepare_help, stdout);
            return 0;
        }
        return usage_error("data", "%s", "expected 'entente data prepare'");
    }
    fprintf(stderr, "entente: error: unknown command '%s'\nTry 'entente --help'.\n", cmd);
    return 2;
}
