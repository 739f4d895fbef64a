// cli.c: the `entente` command line. Every subcommand has --help; errors are
// one line on stderr ("entente: error: ...") and the exit code says what kind:
// 0 success, 1 a runtime failure (data, files, memory), 2 a usage or config error.
#include "runtime_impl.h"
#include "ent_ckpt.h"
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
    "  train          train a GPT model from an INI configuration (or resume one)\n"
    "  data prepare   turn raw files into token shards (byte-level tokenizer)\n"
    "  ckpt info      describe a checkpoint\n"
    "  ckpt verify    check a checkpoint's metadata, attributes and every dataset\n"
    "  ckpt export    write a checkpoint as Hugging Face safetensors\n"
    "  sample         generate text from a checkpoint\n"
    "\n"
    "train is an MPI program: run it directly for one rank, or under mpirun /\n"
    "srun for many. 'entente COMMAND --help' describes each command.\n"
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
    "                     [--resume FILE|latest|auto] [--print-config]\n"
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
    "                       (--set still applies)\n"
    "  --resume latest      the newest checkpoint of the run's checkpoint directory\n"
    "  --resume auto        latest if there is one, else start from the beginning\n"
    "                       (what a requeued batch job wants)\n"
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

// ---------------------------------------------------------------------------
// entente train

// The configuration stored in a checkpoint, with --set overrides.
static ent_status config_from_checkpoint(ent_config *cfg, const char *path, const char **sets,
                                         int nsets) {
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    char *text = NULL;
    ent_status st = ent_ckpt_attr_text(ck, "config", &text);
    ent_ckpt_close(&ck);
    ENT_CHECK(st);
    char origin[ENT_PATH_MAX];
    snprintf(origin, sizeof origin, "%.4080s:config", path);
    st = ent_config_load_text(cfg, text, origin, sets, nsets);
    free(text);
    return st;
}

static int cmd_train(int argc, char **argv) {
    const char *config = NULL, *run_dir = NULL, *resume = NULL;
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
        } else if (strcmp(a, "--resume") == 0 && i + 1 < argc) {
            resume = argv[++i];
        } else if (strcmp(a, "--print-config") == 0) {
            print_config = 1;
        } else if (strcmp(a, "--config") == 0 || strcmp(a, "--set") == 0 ||
                   strcmp(a, "--run-dir") == 0 || strcmp(a, "--resume") == 0) {
            rc = usage_error("train", "%s needs a value", a);
            goto out;
        } else {
            rc = usage_error("train", "unknown argument '%s'", a);
            goto out;
        }
    }
    int by_pointer = resume != NULL && (strcmp(resume, "latest") == 0 || strcmp(resume, "auto") == 0);
    if (config == NULL && (resume == NULL || (by_pointer && run_dir == NULL))) {
        rc = usage_error("train", "%s", "--config FILE is required (or --resume FILE, which "
                         "carries its configuration, or --run-dir DIR --resume latest)");
        goto out;
    }
    char default_dir[ENT_PATH_MAX];
    if (run_dir == NULL) {
        const char *name = config != NULL ? config : resume;
        const char *base = strrchr(name, '/');
        base = base ? base + 1 : name;
        size_t stem = strcspn(base, ".");
        time_t now = time(NULL);
        char when[32];
        strftime(when, sizeof when, "%Y%m%d-%H%M%S", localtime(&now));
        snprintf(default_dir, sizeof default_dir, "runs/%.*s-%s", (int)stem, base, when);
        run_dir = default_dir;
    }
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
        char dir[ENT_PATH_MAX];
        ent_checkpoint_dir(&cfg, run_dir, dir, sizeof dir);
        st = ent_ckpt_resolve_latest(dir, resume_path, sizeof resume_path);
        if (st != ENT_OK && strcmp(resume, "auto") == 0 && config != NULL) {
            ent_log_notice("no checkpoint in %s yet: starting from the beginning", dir);
            st = ENT_OK;
            resume_path[0] = '\0';
        } else if (st == ENT_OK && config == NULL) {
            st = config_from_checkpoint(&cfg, resume_path, sets, nsets);
        }
    } else if (st == ENT_OK && resume != NULL) {
        snprintf(resume_path, sizeof resume_path, "%s", resume);
    }
    if (st != ENT_OK) {
        rc = report(st);
        goto out;
    }
    if (print_config) {
        ent_config_write(&cfg, stdout);
        goto out;
    }
    ent_comm_t *comm = NULL;
    ent_ckpt_library_init(); // before MPI: see ent_ckpt.h
    st = ent_comm_init_threads(NULL, NULL, cfg.ckpt_async, &comm);
    if (st == ENT_OK) st = ent_train(&cfg, run_dir, resume_path[0] ? resume_path : NULL, comm);
    if (st != ENT_OK) rc = report(st);
    ent_comm_finalize(&comm);
out:
    free(sets);
    return rc;
}

// ---------------------------------------------------------------------------
// entente ckpt info|verify|export, entente sample

static const char *ckpt_help =
    "Usage: entente ckpt info FILE\n"
    "       entente ckpt verify FILE\n"
    "       entente ckpt export FILE --format safetensors --out DIR\n"
    "\n"
    "  info     step, tokens, data cursor, model, topology it was saved with, sizes,\n"
    "           creation time and the configuration it was trained with\n"
    "  verify   checks the metadata (HDF5 checksums, the metadata digest), every\n"
    "           attribute and dataset against the configuration stored in it (what\n"
    "           --resume checks), then reads every dataset: Fletcher32 checksums, no\n"
    "           NaN or Inf; exit 0 when all is well, 1 naming the attribute or the\n"
    "           first damaged dataset\n"
    "  export   writes DIR/model.safetensors (Hugging Face GPT-2 tensor names and\n"
    "           layout) and DIR/config.json, which transformers' GPT2LMHeadModel loads\n"
    "\n"
    "FILE may also be a checkpoint directory: its 'latest' checkpoint is used.\n";

static const char *sample_help =
    "Usage: entente sample --checkpoint FILE [--prompt TEXT] [--tokens N]\n"
    "                      [--temperature T] [--seed S] [--logits FILE]\n"
    "\n"
    "Generates text with the model of a checkpoint (any layout it was saved\n"
    "with), on this machine's CPU.\n"
    "\n"
    "  --checkpoint FILE    a checkpoint, or a checkpoint directory (its latest)\n"
    "  --prompt TEXT        text to continue (default: the start of a document)\n"
    "  --tokens N           tokens to generate (default 256)\n"
    "  --temperature T      softmax temperature; 0 = most likely token (default 0.8)\n"
    "  --seed S             sampler seed (default 42)\n"
    "  --logits FILE        also write the logits of every prompt position (end-of-\n"
    "                       text token first), one line of vocabulary-size numbers\n"
    "                       each: to compare an export with another implementation\n";

static int cmd_ckpt(int argc, char **argv) {
    if (argc >= 1 && is_help(argv[0])) {
        fputs(ckpt_help, stdout);
        return 0;
    }
    if (argc < 1) return usage_error("ckpt", "%s", "expected 'ckpt info|verify|export FILE'");
    const char *what = argv[0];
    if (argc >= 2 && is_help(argv[1])) {
        fputs(ckpt_help, stdout);
        return 0;
    }
    if (argc < 2) return usage_error("ckpt", "'ckpt %s' needs a checkpoint FILE", what);
    char path[ENT_PATH_MAX];
    ent_status st = ent_ckpt_resolve_latest(argv[1], path, sizeof path);
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
        st = ent_ckpt_export_safetensors(path, outdir, stdout);
    } else {
        return usage_error("ckpt", "unknown or incomplete command 'ckpt %s'", what);
    }
    return st == ENT_OK ? 0 : report(st);
}

static int cmd_sample(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = "", *logits = NULL;
    long long tokens = 256;
    double temperature = 0.8;
    unsigned long long seed = 42;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        char *end = NULL;
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
        } else if (strcmp(a, "--tokens") == 0) {
            tokens = strtoll(argv[++i], &end, 10);
            if (*end != '\0' || tokens < 0 || tokens > 1000000)
                return usage_error("sample", "--tokens '%s' is not an integer in 0..1000000", argv[i]);
        } else if (strcmp(a, "--temperature") == 0) {
            temperature = strtod(argv[++i], &end);
            if (*end != '\0' || !(temperature >= 0 && temperature <= 100))
                return usage_error("sample", "--temperature '%s' is not a number in [0, 100]", argv[i]);
        } else if (strcmp(a, "--seed") == 0) {
            seed = strtoull(argv[++i], &end, 10);
            if (*end != '\0') return usage_error("sample", "--seed '%s' is not an integer", argv[i]);
        } else {
            return usage_error("sample", "unknown argument '%s'", a);
        }
    }
    if (ckpt == NULL) return usage_error("sample", "%s", "--checkpoint FILE is required");
    char path[ENT_PATH_MAX];
    ent_status st = ent_ckpt_resolve_latest(ckpt, path, sizeof path);
    if (st == ENT_OK)
        st = ent_sample_checkpoint(path, prompt, (int)tokens, temperature, seed, logits, stdout);
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
        if (strcmp(argv[2], "ckpt") == 0) return cmd_ckpt(1, help);
        if (strcmp(argv[2], "sample") == 0) return cmd_sample(1, help);
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
    if (strcmp(cmd, "ckpt") == 0) return cmd_ckpt(argc - 2, argv + 2);
    if (strcmp(cmd, "sample") == 0) return cmd_sample(argc - 2, argv + 2);
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
