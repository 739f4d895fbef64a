// ckpt_tool.c: damages checkpoints on purpose, for the fault tests.
//
//   ckpt_tool flip FILE DATASET     flips one byte in the middle of the first
//                                   stored chunk of DATASET ("params/wte.weight")
//   ckpt_tool set-version FILE N    rewrites the format_version attribute
//   ckpt_tool fuzz FILE SEED N      changes every byte of FILE's metadata, one
//                                   at a time, and N bytes of its chunks drawn
//                                   with SEED, in a copy: each change must be
//                                   refused by `ckpt verify`'s checks or leave
//                                   the file reading back identical
//   ckpt_tool import-changes DIR LIST
//                                   for each line "OFFSET XOR" of LIST, that
//                                   byte of DIR/model.safetensors changed (then
//                                   put back), DIR imported as DIR.h5 in a
//                                   child process: each import must succeed
//                                   into a file `ckpt verify` passes or fail
//                                   with exit code 1 and a message, leaving no
//                                   file, within 20 s
//
// Test code only: it uses HDF5 to find where a dataset's bytes are, then
// changes them with plain file I/O, as a failing disk or a bit flip would.
#include "ent_ckpt.h"
#include "runtime_impl.h" // ent_checkpoint_check: the checks of --resume and ckpt verify

#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int flip(const char *path, const char *name) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f < 0 ? -1 : H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) {
        fprintf(stderr, "ckpt_tool: cannot open %s in %s\n", name, path);
        return 1;
    }
    hid_t space = H5Dget_space(d);
    hsize_t nchunks = 0, offset[2];
    unsigned mask;
    haddr_t addr = 0;
    hsize_t size = 0;
    H5Dget_num_chunks(d, space, &nchunks);
    herr_t rc = nchunks > 0 ? H5Dget_chunk_info(d, space, 0, offset, &mask, &addr, &size) : -1;
    H5Sclose(space);
    H5Dclose(d);
    H5Fclose(f);
    if (rc < 0 || size == 0) {
        fprintf(stderr, "ckpt_tool: %s has no stored chunk\n", name);
        return 1;
    }
    int fd = open(path, O_RDWR);
    unsigned char b;
    off_t at = (off_t)(addr + size / 2);
    if (fd < 0 || pread(fd, &b, 1, at) != 1) return 1;
    b ^= 0x5a;
    if (pwrite(fd, &b, 1, at) != 1) return 1;
    close(fd);
    printf("flipped byte %lld of %s (chunk of %llu bytes at %llu)\n", (long long)at, name,
           (unsigned long long)size, (unsigned long long)addr);
    return 0;
}

static int set_version(const char *path, long long version) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return 1;
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, H5T_NATIVE_LLONG, &version) < 0;
    if (a >= 0) H5Aclose(a);
    H5Fclose(f);
    return rc;
}

// ---------------------------------------------------------------------------
// fuzz

// What a checkpoint reads back as: its digest text (a SHA-256 over every
// attribute's value, checked at open: equal digests mean equal attributes),
// the resume state, and every arena's values.
typedef struct {
    char *digest;
    int64_t step, consumed, updates;
    ent_param_table table;
    float *arena[3]; // params, adam_m, adam_v
} contents;

static void contents_free(contents *c) {
    free(c->digest);
    for (int k = 0; k < 3; k++) free(c->arena[k]);
    ent_param_table_free(&c->table);
    memset(c, 0, sizeof *c);
}

// The resume path: open (format, digest), the attribute checks, then every
// arena through ent_ckpt_read (which checks the layout and every checksum).
static ent_status load(const char *path, contents *c) {
    memset(c, 0, sizeof *c);
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    ent_ckpt_state *s = calloc(1, sizeof *s);
    ent_status st = s == NULL ? ENT_ERR_NOMEM : ent_checkpoint_check(ck, s, &c->table);
    if (st == ENT_OK) st = ent_ckpt_attr_text(ck, "digest", &c->digest);
    if (st == ENT_OK) {
        c->step = s->step;
        c->consumed = s->consumed;
        c->updates = s->updates;
        for (int k = 0; k < 3; k++) c->arena[k] = calloc(c->table.total + 1, sizeof(float));
        ent_ckpt_shard sh = {.table = &c->table, .tp_size = 1, .params = c->arena[0],
                             .adam_m = c->arena[1], .adam_v = c->arena[2],
                             .state_count = c->table.total};
        st = c->arena[0] && c->arena[1] && c->arena[2] ? ent_ckpt_read(ck, &sh) : ENT_ERR_NOMEM;
    }
    free(s);
    ent_ckpt_close(&ck);
    return st;
}

static int same(const contents *a, const contents *b) {
    if (strcmp(a->digest, b->digest) != 0 || a->step != b->step || a->consumed != b->consumed ||
        a->updates != b->updates ||
        a->table.total != b->table.total || a->table.nrows != b->table.nrows)
        return 0;
    for (int k = 0; k < 3; k++)
        if (memcmp(a->arena[k], b->arena[k], sizeof(float) * a->table.total) != 0) return 0;
    return 1;
}

enum { UNTRIED, REFUSED, HARMLESS, LIED, RESUME_ONLY, CRASHED };

// One changed file: REFUSED when `ckpt verify` fails it; otherwise the resume
// path must load it, identical to the original (HARMLESS), or it LIED (verify
// passed something that reads back otherwise) / RESUME_ONLY (resume refuses
// what verify passed).
static int judge(const char *copy, const contents *orig, FILE *devnull) {
    if (ent_ckpt_verify(copy, ent_checkpoint_expect, NULL, devnull) != ENT_OK) return REFUSED;
    contents c;
    ent_status st = load(copy, &c);
    int r = st != ENT_OK ? RESUME_ONLY : same(&c, orig) ? HARMLESS : LIED;
    contents_free(&c);
    return r;
}

static uint64_t next(uint64_t *x) { // splitmix64
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Marks the bytes of every stored chunk (the data region) in is_data.
static int mark_chunks(const char *path, unsigned char *is_data, size_t size) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return -1;
    const char *groups[] = {"params", "adam_m", "adam_v"};
    for (int g = 0; g < 3; g++) {
        hid_t grp = H5Gopen2(f, groups[g], H5P_DEFAULT);
        if (grp < 0) continue;
        H5G_info_t gi;
        H5Gget_info(grp, &gi);
        for (hsize_t i = 0; i < gi.nlinks; i++) {
            char name[256];
            H5Lget_name_by_idx(grp, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
            hid_t d = H5Dopen2(grp, name, H5P_DEFAULT), space = H5Dget_space(d);
            hsize_t n = 0;
            H5Dget_num_chunks(d, space, &n);
            for (hsize_t k = 0; k < n; k++) {
                hsize_t off[2], bytes = 0;
                unsigned mask;
                haddr_t addr = 0;
                if (H5Dget_chunk_info(d, space, k, off, &mask, &addr, &bytes) >= 0 && addr + bytes <= size)
                    memset(is_data + addr, 1, bytes);
            }
            H5Sclose(space);
            H5Dclose(d);
        }
        H5Gclose(grp);
    }
    H5Fclose(f);
    return 0;
}

static int fuzz(const char *path, uint64_t seed, long samples) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    FILE *in = fopen(path, "rb");
    struct stat sb;
    if (in == NULL || stat(path, &sb) != 0) {
        fprintf(stderr, "ckpt_tool: cannot read %s\n", path);
        return 1;
    }
    size_t size = (size_t)sb.st_size;
    unsigned char *orig = malloc(size), *is_data = calloc(size, 1);
    if (orig == NULL || is_data == NULL || fread(orig, 1, size, in) != size) return 1;
    fclose(in);
    char copy[256];
    snprintf(copy, sizeof copy, "%s/ckpt_fuzz_%d.h5", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp",
             (int)getpid());
    FILE *out = fopen(copy, "wb");
    if (out == NULL || fwrite(orig, 1, size, out) != size || fclose(out) != 0) {
        fprintf(stderr, "ckpt_tool: cannot write %s\n", copy);
        return 1;
    }
    contents base;
    if (load(copy, &base) != ENT_OK) {
        fprintf(stderr, "ckpt_tool: the untouched copy does not load: %s\n", ent_last_error());
        unlink(copy);
        return 1;
    }
    if (mark_chunks(copy, is_data, size) != 0) return 1;
    // the bytes to change: every metadata byte, then `samples` data bytes
    size_t nmeta = 0, ndata = 0;
    for (size_t i = 0; i < size; i++) nmeta += !is_data[i];
    ndata = size - nmeta;
    size_t n = nmeta + (ndata > 0 ? (size_t)samples : 0);
    size_t *at = malloc(sizeof *at * n);
    unsigned char *mask = malloc(n);
    uint64_t rng = seed;
    size_t k = 0;
    for (size_t i = 0; i < size; i++)
        if (!is_data[i]) at[k++] = i;
    while (k < n) {
        size_t i = (size_t)(next(&rng) % size);
        if (is_data[i]) at[k++] = i;
    }
    for (size_t j = 0; j < n; j++) mask[j] = (unsigned char)(1 + next(&rng) % 255);
    // the harness's own test: CKPT_FUZZ_ONLY=K tries the first K changes
    // only, and CKPT_FUZZ_CRASH_AT=J makes the checks die (SIGFPE) on change J
    const char *only = getenv("CKPT_FUZZ_ONLY"), *crash = getenv("CKPT_FUZZ_CRASH_AT");
    if (only != NULL && (size_t)atol(only) < n) n = (size_t)atol(only);
    if (nmeta > n) nmeta = n;
    long crash_at = crash != NULL ? atol(crash) : -1;
    // outcomes in shared memory: a child that HDF5 crashes (SIGFPE, SIGSEGV)
    // or hangs leaves the byte it was on UNTRIED; it is counted CRASHED and
    // the next child goes on after it. Two lanes (the cores of a small
    // machine), each on its own copy, take every other byte.
    unsigned char *res = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int *sig = mmap(NULL, n * sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED || sig == MAP_FAILED) return 1;
    memset(res, UNTRIED, n);
    enum { LANES = 2 };
    pid_t lanes[LANES];
    for (int lane = 0; lane < LANES; lane++) {
        lanes[lane] = fork();
        if (lanes[lane] != 0) continue;
        char mine[300];
        snprintf(mine, sizeof mine, "%s.%d", copy, lane);
        FILE *o = fopen(mine, "wb");
        if (o == NULL || fwrite(orig, 1, size, o) != size || fclose(o) != 0) _exit(2);
        int fd = open(mine, O_RDWR);
        size_t from = (size_t)lane;
        while (from < n) {
            pid_t pid = fork();
            if (pid == 0) {
                FILE *devnull = fopen("/dev/null", "w");
                for (size_t j = from; j < n; j += LANES) {
                    unsigned char b = orig[at[j]] ^ mask[j];
                    if (pwrite(fd, &b, 1, (off_t)at[j]) != 1) _exit(3);
                    alarm(10); // a hang is a failure too
                    if ((long)j == crash_at) raise(SIGFPE);
                    res[j] = (unsigned char)judge(mine, &base, devnull);
                    alarm(0);
                    if (pwrite(fd, &orig[at[j]], 1, (off_t)at[j]) != 1) _exit(3);
                }
                _exit(0);
            }
            int status = 0;
            waitpid(pid, &status, 0);
            size_t j = from;
            while (j < n && res[j] != UNTRIED) j += LANES;
            if (j >= n) break;
            if (pwrite(fd, &orig[at[j]], 1, (off_t)at[j]) != 1) _exit(3); // put back its change
            res[j] = CRASHED;
            sig[j] = WIFSIGNALED(status) ? WTERMSIG(status) : -WEXITSTATUS(status);
            from = j + LANES;
        }
        close(fd);
        unlink(mine);
        _exit(0);
    }
    for (int lane = 0; lane < LANES; lane++) waitpid(lanes[lane], NULL, 0);
    unlink(copy);
    size_t count[2][6] = {{0}};
    int failed = 0;
    for (size_t j = 0; j < n; j++) {
        count[j >= nmeta][res[j]]++;
        if (res[j] == LIED || res[j] == RESUME_ONLY) {
            if (failed++ < 20)
                printf("FAIL: byte %zu (%s, xor 0x%02x): %s\n", at[j], j >= nmeta ? "data" : "metadata",
                       mask[j], res[j] == LIED ? "ckpt verify passes it but it reads back otherwise"
                                               : "ckpt verify passes it but resume refuses it");
        }
    }
    for (size_t j = 0, shown = 0; j < n && shown < 20; j++)
        if (res[j] == CRASHED || res[j] == UNTRIED)
            printf("FAIL: byte %zu (xor 0x%02x): the checks died (%s %d)\n", at[j], mask[j],
                   sig[j] > 0 ? "signal" : "exit status", sig[j] > 0 ? sig[j] : -sig[j]), shown++;
    failed += (int)(count[0][CRASHED] + count[1][CRASHED] + count[0][UNTRIED] + count[1][UNTRIED]);
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("fuzz %s: seed %llu, %zu bytes: metadata %zu bytes, all changed: %zu refused, %zu "
           "harmless, %zu crashed; data %zu bytes, %ld changed: %zu refused, %zu harmless; %.1f s\n",
           path, (unsigned long long)seed, size, nmeta, count[0][REFUSED], count[0][HARMLESS],
           count[0][CRASHED], ndata, ndata > 0 ? samples : 0L, count[1][REFUSED], count[1][HARMLESS],
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    contents_free(&base);
    return failed ? 1 : 0;
}

// ---------------------------------------------------------------------------
// import-changes

// One forked child per change runs what `entente ckpt import` runs
// (ent_import_hf, then for a success what `ckpt verify` runs): the same
// checks as a new process each time, without starting the binary anew for
// each of the 216 changes (the import itself takes a few ms).
typedef struct {
    int done, code, verified;
    char msg[512];
} import_result;

static int import_changes(const char *dir, const char *list) {
    char st_path[ENT_PATH_MAX], out[ENT_PATH_MAX];
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
    snprintf(out, sizeof out, "%s.h5", dir);
    FILE *lf = fopen(list, "r");
    int fd = open(st_path, O_RDWR);
    struct stat sb;
    if (lf == NULL || fd < 0 || fstat(fd, &sb) != 0) {
        fprintf(stderr, "ckpt_tool: cannot open %s or %s\n", list, st_path);
        return 1;
    }
    import_result *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) return 1;
    long long at;
    unsigned mask;
    int failed = 0, tried = 0, refused = 0, imported = 0;
    while (fscanf(lf, "%lld %u", &at, &mask) == 2) {
        unsigned char orig, b;
        if (at < 0 || at >= (long long)sb.st_size || mask == 0 || mask > 255 ||
            pread(fd, &orig, 1, (off_t)at) != 1) {
            fprintf(stderr, "ckpt_tool: %s: bad change %lld %u\n", list, at, mask);
            return 1;
        }
        b = (unsigned char)(orig ^ mask);
        if (pwrite(fd, &b, 1, (off_t)at) != 1) return 1;
        unlink(out);
        memset(r, 0, sizeof *r);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20); // a hang is a failure too
            FILE *devnull = fopen("/dev/null", "w");
            ent_status st = ent_import_hf(dir, out, 0, NULL);
            r->code = ent_exit_code(st);
            if (st == ENT_OK)
                r->verified = ent_ckpt_verify(out, ent_checkpoint_expect, NULL, devnull) == ENT_OK;
            else
                snprintf(r->msg, sizeof r->msg, "%s", ent_last_error());
            r->done = 1;
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        tried++;
        if (!r->done || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            printf("FAIL byte %lld (xor 0x%02x): the import died (%s %d)\n", at, mask,
                   WIFSIGNALED(status) ? "signal" : "exit status",
                   WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            failed++;
        } else if (r->code == 0 && !r->verified) {
            printf("FAIL byte %lld (xor 0x%02x): imported, but the checkpoint does not verify\n", at, mask);
            failed++;
        } else if (r->code == 0) {
            imported++;
        } else if (r->code != 1 || r->msg[0] == '\0') {
            printf("FAIL byte %lld (xor 0x%02x): exit code %d: %s\n", at, mask, r->code, r->msg);
            failed++;
        } else if (access(out, F_OK) == 0) {
            printf("FAIL byte %lld (xor 0x%02x): a refused import left %s\n", at, mask, out);
            failed++;
        } else {
            refused++;
        }
        if (pwrite(fd, &orig, 1, (off_t)at) != 1) return 1;
    }
    fclose(lf);
    close(fd);
    unlink(out);
    munmap(r, sizeof *r);
    printf("%d single-byte changes: %d refused with an error, %d imported (then verified)\n", tried,
           refused, imported);
    return failed || tried == 0 ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "import-changes") == 0) return import_changes(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "fuzz") == 0) {
        ent_ckpt_library_init();
        return fuzz(argv[2], strtoull(argv[3], NULL, 10), atol(argv[4]));
    }
    if (argc == 4 && strcmp(argv[1], "flip") == 0) return flip(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "set-version") == 0) return set_version(argv[2], atoll(argv[3]));
    fprintf(stderr, "usage: ckpt_tool flip FILE DATASET | set-version FILE N | fuzz FILE SEED N | "
                    "import-changes DIR LIST\n");
    return 2;
}
