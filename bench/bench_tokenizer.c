// bench_tokenizer: the BPE tokenizer's encoding speed in MB/s of text on one
// core (runtime/tokenizer.c, one thread), beside Hugging Face `tokenizers`
// encoding the same text with the same tokenizer.json in the same run (one
// thread: RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false), when a Python
// that imports it is found ($ENT_PYTHON, else python3); otherwise it says so.
// Each side encodes the whole text as one document (what data prepare does
// with a file), REPS times; the median counts; it checks that both gave the
// same number of ids. The library is also timed on the text's lines through
// encode_batch (its usual way, also on one thread).
// Figures only: it never passes or fails on time.
//
// usage: bench_tokenizer TOKENIZER(DIR or tokenizer.json) TEXT_FILE [REPS]
//   e.g. bench_tokenizer tests/tokenizer/gpt2 kjv.txt   (kjv.txt: bible -l0 "Gen1:1-Rev22:21")
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench_util.h"
#include "ent_runtime.h"

#define MAX_REPS 64

static ent_status count_ids(void *ctx, const uint32_t *ids, size_t n) {
    (void)ids;
    *(size_t *)ctx += n;
    return ENT_OK;
}

// The same measurement with the tokenizers library, in a child Python.
static void bench_hf(const char *tok_path, const char *text_path, int reps, double mb,
                     size_t ours) {
    const char *py = getenv("ENT_PYTHON") ? getenv("ENT_PYTHON") : "python3";
    struct stat st;
    char json[4096];
    if (stat(tok_path, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(json, sizeof json, "%s/tokenizer.json", tok_path);
    else
        snprintf(json, sizeof json, "%s", tok_path);
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false %s -c '\n"
             "import sys, time\n"
             "try:\n"
             "    import tokenizers\n"
             "except ImportError:\n"
             "    print(\"none\"); sys.exit(0)\n"
             "tok = tokenizers.Tokenizer.from_file(sys.argv[1])\n"
             "text = open(sys.argv[2], \"rb\").read().decode(\"utf-8\", \"replace\")\n"
             "lines = text.splitlines(keepends=True)\n"
             "def whole():\n"
             "    return len(tok.encode(text, add_special_tokens=False).ids)\n"
             "def by_lines():\n"
             "    return sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))\n"
             "out = [tokenizers.__version__]\n"
             "for f in (whole, by_lines):\n"
             "    times = []\n"
             "    for _ in range(int(sys.argv[3])):\n"
             "        t0 = time.perf_counter()\n"
             "        n = f()\n"
             "        times.append(time.perf_counter() - t0)\n"
             "    times.sort()\n"
             "    out += [n, times[len(times) // 2]]\n"
             "print(*out)\n"
             "' '%s' '%s' %d 2>&1",
             py, json, text_path, reps);
    FILE *p = popen(cmd, "r");
    char line[512] = "";
    if (p == NULL || fgets(line, sizeof line, p) == NULL) line[0] = '\0';
    if (p) pclose(p);
    char version[64];
    size_t n, n2;
    double sec, sec2;
    if (sscanf(line, "%63s %zu %lf %zu %lf", version, &n, &sec, &n2, &sec2) == 5) {
        printf("HF tokenizers %s, same text as one document (1 thread): %8.2f MB/s  (%.3f s, %zu "
               "ids%s)\n", version, mb / sec, sec, n,
               n == ours ? ", the same count" : ", A DIFFERENT COUNT");
        printf("HF tokenizers %s, encode_batch of its lines (1 thread):  %8.2f MB/s  (%.3f s, %zu "
               "ids)\n", version, mb / sec2, sec2, n2);
    } else {
        printf("HF tokenizers: not measured: %s cannot import it (pip install tokenizers, or "
               "set ENT_PYTHON)%s%s", py, line[0] && strcmp(line, "none\n") ? ": " : "\n",
               line[0] && strcmp(line, "none\n") ? line : "");
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER TEXT_FILE [REPS]\n", argv[0]);
        return 2;
    }
    int reps = argc > 3 ? atoi(argv[3]) : 5;
    if (reps < 1 || reps > MAX_REPS) reps = 5;
    ent_tokenizer_t *tok = NULL;
    double t0 = bench_now();
    if (ent_tokenizer_load(argv[1], &tok) != ENT_OK) {
        fprintf(stderr, "bench_tokenizer: %s\n", ent_last_error());
        return 1;
    }
    double load = bench_now() - t0;
    FILE *f = fopen(argv[2], "rb");
    if (f == NULL) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc(n + 1);
    if (text == NULL || fread(text, 1, n, f) != n) {
        fprintf(stderr, "bench_tokenizer: cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    double times[MAX_REPS], mb = (double)n / 1e6;
    size_t ids = 0;
    for (int r = 0; r < reps; r++) {
        // a fresh tokenizer each time: the word cache starts empty, as in a
        // preparation that starts
        ent_tokenizer_free(&tok);
        ent_tokenizer_load(argv[1], &tok);
        ids = 0;
        t0 = bench_now();
        ent_status st = ent_tokenizer_encode_to(tok, text, n, count_ids, &ids);
        times[r] = bench_now() - t0;
        if (st != ENT_OK) {
            fprintf(stderr, "bench_tokenizer: %s\n", ent_last_error());
            return 1;
        }
    }
    double sec = bench_median(times, reps);
    printf("text: %s, %.2f MB; tokenizer %s (vocabulary %u, loaded in %.3f s)\n", argv[2], mb,
           ent_tokenizer_path(tok), ent_tokenizer_vocab(tok), load);
    printf("entente, the text as one document (1 thread):              %8.2f MB/s  (%.3f s, %zu ids, %.2f bytes/id, median of %d)\n",
           mb / sec, sec, ids, (double)n / (double)ids, reps);
    fflush(stdout);
    bench_hf(argv[1], argv[2], reps, mb, ids);
    ent_tokenizer_free(&tok);
    free(text);
    return 0;
}
