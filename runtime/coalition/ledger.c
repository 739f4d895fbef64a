// ledger.c: the coalition's ledger, the per-site record a coalition shares
// benefits by. The coordinator keeps one entry per site (coalition_impl.h),
// serialises the whole as JSON text into its checkpoint's /coalition/ledger,
// and `entente ledger` reads it back: a table, or the stored JSON. Every
// number is a sum of fields of the coordinator's metrics.jsonl records
// (docs/coalition.md, "The ledger"), so it can be recomputed from the log.
#include "coalition_impl.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LEDGER_FORMAT "entente-ledger"
#define LEDGER_VERSION 3 // 2 added the loss-change score and the "loss" rejections,
                         // 3 the "tokens" rejections

const char *const coal_reject_names[COAL_REJECT_KINDS] = {"undecodable", "wrong_anchor", "norm",
                                                          "stale", "loss", "tokens"};

void coal_utc_now(char out[32]) {
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "unknown");
}

double coal_utc_age(const char *iso) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (end == NULL || *end != '\0') return -1;
    time_t t = timegm(&tm);
    return t == (time_t)-1 ? -1 : difftime(time(NULL), t);
}

// ---------------------------------------------------------------------------
// writing

static cJSON *seen_json(const char *time, uint64_t round) {
    cJSON *o = cJSON_CreateObject();
    if (o == NULL) return NULL;
    cJSON_AddStringToObject(o, "time", time);
    cJSON_AddNumberToObject(o, "round", (double)round);
    return o;
}

char *coal_ledger_json(const coal_ledger_site *sites, int n, uint64_t rounds_merged) {
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    int ok = root != NULL && arr != NULL;
    if (ok) {
        cJSON_AddStringToObject(root, "format", LEDGER_FORMAT);
        cJSON_AddNumberToObject(root, "version", LEDGER_VERSION);
        cJSON_AddNumberToObject(root, "rounds_merged", (double)rounds_merged);
        cJSON_AddItemToObject(root, "sites", arr);
    } else {
        cJSON_Delete(arr);
    }
    for (int i = 0; ok && i < n; i++) {
        const coal_ledger_site *s = &sites[i];
        cJSON *o = cJSON_CreateObject(), *rej = cJSON_CreateObject();
        ok = o != NULL && rej != NULL;
        if (!ok) {
            cJSON_Delete(o);
            cJSON_Delete(rej);
            break;
        }
        cJSON_AddItemToArray(arr, o);
        cJSON_AddStringToObject(o, "site", s->name);
        cJSON_AddNumberToObject(o, "tokens", (double)s->tokens);
        cJSON_AddNumberToObject(o, "inner_steps", (double)s->inner_steps);
        cJSON_AddNumberToObject(o, "compute_s", s->compute_s);
        cJSON_AddNumberToObject(o, "rounds_joined", (double)s->rounds_joined);
        cJSON_AddNumberToObject(o, "accepted", (double)s->accepted);
        cJSON_AddNumberToObject(o, "scored", (double)s->scored);
        cJSON_AddNumberToObject(o, "loss_gain", s->loss_gain);
        for (int k = 0; k < COAL_REJECT_KINDS; k++)
            cJSON_AddNumberToObject(rej, coal_reject_names[k], (double)s->rejected[k]);
        cJSON_AddItemToObject(o, "rejected", rej);
        cJSON_AddItemToObject(o, "first_seen", seen_json(s->first_time, s->first_round));
        cJSON_AddItemToObject(o, "last_seen", seen_json(s->last_time, s->last_round));
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

// ---------------------------------------------------------------------------
// reading

static ent_status bad(const char *path, const char *what) {
    return ent_fail(ENT_ERR_INPUT, "%s: the ledger (/coalition/ledger) is malformed: %s", path,
                    what);
}

// A non-negative whole number (or any non-negative number when whole = 0).
static int number(const cJSON *o, const char *key, int whole, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble < 0) return 0;
    if (whole && j->valuedouble != floor(j->valuedouble)) return 0;
    *out = j->valuedouble;
    return 1;
}

// Any finite number (a score may be negative).
static int finite_number(const cJSON *o, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(j) && isfinite(j->valuedouble);
}

// The reject kinds a ledger of version v has: version 1 had no "loss",
// version 2 no "tokens".
static int kinds_of(double v) {
    return v >= 3 ? COAL_REJECT_KINDS : v >= 2 ? COAL_REJECT_TOKENS : COAL_REJECT_LOSS;
}

static int seen(const cJSON *o, const char *key, const char **time, double *round) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, key);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "time");
    if (!cJSON_IsObject(s) || !cJSON_IsString(t) || !number(s, "round", 1, round)) return 0;
    *time = t->valuestring;
    return 1;
}

// Checks every field of the ledger before anything is printed.
static ent_status check_ledger(const char *path, const cJSON *root, const cJSON **sites) {
    if (!cJSON_IsObject(root)) return bad(path, "not a JSON object");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(f) || strcmp(f->valuestring, LEDGER_FORMAT) != 0)
        return bad(path, "its \"format\" is not \"" LEDGER_FORMAT "\"");
    double v = 0, x = 0;
    if (!number(root, "version", 1, &v)) return bad(path, "no \"version\" number");
    if (v < 1 || v > LEDGER_VERSION)
        return ent_fail(ENT_ERR_INPUT, "%s: the ledger's format version is %.0f; this entente "
                        "reads versions 1 to %d", path, v, LEDGER_VERSION);
    if (!number(root, "rounds_merged", 1, &x)) return bad(path, "no \"rounds_merged\" count");
    *sites = cJSON_GetObjectItemCaseSensitive(root, "sites");
    if (!cJSON_IsArray(*sites)) return bad(path, "no \"sites\" array");
    static const char *const counts[] = {"tokens", "inner_steps", "rounds_joined", "accepted"};
    int i = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, *sites) {
        char what[160];
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(s, "site");
        if (!cJSON_IsString(name)) {
            snprintf(what, sizeof what, "site %d has no \"site\" name", i);
            return bad(path, what);
        }
        const char *missing = NULL, *t = NULL;
        for (size_t k = 0; k < sizeof counts / sizeof counts[0] && !missing; k++)
            if (!number(s, counts[k], 1, &x)) missing = counts[k];
        if (!missing && !number(s, "compute_s", 0, &x)) missing = "compute_s";
        const cJSON *rej = cJSON_GetObjectItemCaseSensitive(s, "rejected");
        if (!missing && !cJSON_IsObject(rej)) missing = "rejected";
        for (int k = 0; k < kinds_of(v) && !missing; k++)
            if (!number(rej, coal_reject_names[k], 1, &x)) missing = "rejected";
        if (!missing && v >= 2 && !number(s, "scored", 1, &x)) missing = "scored";
        if (!missing && v >= 2 && !finite_number(s, "loss_gain")) missing = "loss_gain";
        if (!missing && !seen(s, "first_seen", &t, &x)) missing = "first_seen";
        if (!missing && !seen(s, "last_seen", &t, &x)) missing = "last_seen";
        if (missing) {
            snprintf(what, sizeof what, "site '%.64s': \"%s\" is missing or not a %s",
                     name->valuestring, missing,
                     strcmp(missing, "loss_gain") == 0 ? "finite number" : "count");
            return bad(path, what);
        }
        i++;
    }
    return ENT_OK;
}

static double num(const cJSON *o, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(o, key)->valuedouble;
}

static void print_table(const cJSON *root, const cJSON *sites, FILE *out) {
    double v = num(root, "version");
    fprintf(out, "rounds merged: %.0f\n", num(root, "rounds_merged"));
    fprintf(out, "%-16s %14s %11s %11s %6s %8s %-24s %6s %10s %-20s %-7s %-20s %s\n", "site",
            "tokens", "inner_steps", "compute_s", "rounds", "accepted", "rejected", "scored",
            "loss_gain", "first_seen", "round", "last_seen", "round");
    const cJSON *s;
    cJSON_ArrayForEach(s, sites) {
        const cJSON *rej = cJSON_GetObjectItemCaseSensitive(s, "rejected");
        char reasons[128] = "";
        size_t len = 0;
        for (int k = 0; k < kinds_of(v); k++) {
            double c = num(rej, coal_reject_names[k]);
            if (c > 0 && len < sizeof reasons)
                len += (size_t)snprintf(reasons + len, sizeof reasons - len, "%s%s %.0f",
                                        len ? ", " : "", coal_reject_names[k], c);
        }
        const cJSON *first = cJSON_GetObjectItemCaseSensitive(s, "first_seen");
        const cJSON *last = cJSON_GetObjectItemCaseSensitive(s, "last_seen");
        char scored[24] = "-", gain[32] = "-"; // version 1: no scores
        if (v >= 2) {
            snprintf(scored, sizeof scored, "%.0f", num(s, "scored"));
            snprintf(gain, sizeof gain, "%.4f", num(s, "loss_gain"));
        }
        fprintf(out, "%-16s %14.0f %11.0f %11.2f %6.0f %8.0f %-24s %6s %10s %-20s %-7.0f %-20s "
                "%.0f\n", cJSON_GetObjectItemCaseSensitive(s, "site")->valuestring,
                num(s, "tokens"), num(s, "inner_steps"), num(s, "compute_s"),
                num(s, "rounds_joined"), num(s, "accepted"), len ? reasons : "0", scored, gain,
                cJSON_GetObjectItemCaseSensitive(first, "time")->valuestring, num(first, "round"),
                cJSON_GetObjectItemCaseSensitive(last, "time")->valuestring, num(last, "round"));
    }
}

// A ledger's text (from a checkpoint, or a primary's state stream) back into
// entries, after check_ledger: a coordinator that resumes carries it on.
ent_status coal_ledger_parse(const char *path, const char *text, coal_ledger_site **out, int *n,
                             uint64_t *rounds_merged) {
    *out = NULL;
    *n = 0;
    if (text == NULL || text[0] == '\0')
        return ent_fail(ENT_ERR_INPUT, "%s holds no ledger (dataset /coalition/ledger): a "
                        "coordinator's checkpoint has one, and a site's once the coordinator "
                        "has sent it one (after the site's first merged round)", path);
    cJSON *root = cJSON_ParseWithOpts(text, NULL, 1);
    if (root == NULL) return bad(path, "not JSON");
    const cJSON *sites = NULL, *s;
    ent_status st = check_ledger(path, root, &sites);
    int count = st == ENT_OK ? cJSON_GetArraySize(sites) : 0;
    coal_ledger_site *led = st == ENT_OK ? calloc((size_t)count + 1, sizeof *led) : NULL;
    if (st == ENT_OK && led == NULL) st = ent_fail(ENT_ERR_NOMEM, "out of memory for the ledger");
    int i = 0;
    if (st != ENT_OK) sites = NULL;
    double v = st == ENT_OK ? num(root, "version") : 0;
    cJSON_ArrayForEach(s, sites) {
        coal_ledger_site *e = &led[i++];
        const char *name = cJSON_GetObjectItemCaseSensitive(s, "site")->valuestring;
        if (!ent_link_name_ok(name)) {
            st = bad(path, "a site name that is not a valid name");
            break;
        }
        snprintf(e->name, sizeof e->name, "%s", name);
        e->tokens = (uint64_t)num(s, "tokens");
        e->inner_steps = (uint64_t)num(s, "inner_steps");
        e->compute_s = num(s, "compute_s");
        e->rounds_joined = (uint64_t)num(s, "rounds_joined");
        e->accepted = (uint64_t)num(s, "accepted");
        const cJSON *rej = cJSON_GetObjectItemCaseSensitive(s, "rejected");
        for (int k = 0; k < kinds_of(v); k++) e->rejected[k] = (uint64_t)num(rej, coal_reject_names[k]);
        if (v >= 2) { // version 1 had no scores: none counted before
            e->scored = (uint64_t)num(s, "scored");
            e->loss_gain = num(s, "loss_gain");
        }
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(s, "first_seen");
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(s, "last_seen");
        snprintf(e->first_time, sizeof e->first_time, "%s",
                 cJSON_GetObjectItemCaseSensitive(f, "time")->valuestring);
        snprintf(e->last_time, sizeof e->last_time, "%s",
                 cJSON_GetObjectItemCaseSensitive(l, "time")->valuestring);
        e->first_round = (uint64_t)num(f, "round");
        e->last_round = (uint64_t)num(l, "round");
    }
    if (st == ENT_OK) *rounds_merged = (uint64_t)num(root, "rounds_merged");
    cJSON_Delete(root);
    if (st != ENT_OK) {
        free(led);
        return st;
    }
    *out = led;
    *n = count;
    return ENT_OK;
}

ent_status ent_ledger_print(const char *path, const char *text, int json, FILE *out) {
    if (text == NULL || text[0] == '\0')
        return ent_fail(ENT_ERR_INPUT, "%s holds no ledger (dataset /coalition/ledger): a "
                        "coordinator's checkpoint has one, and a site's once the coordinator "
                        "has sent it one (after the site's first merged round)", path);
    const char *at = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &at, 1); // nothing may follow the object
    if (root == NULL) {
        char what[96];
        snprintf(what, sizeof what, "not JSON (at byte %lld)",
                 at != NULL && at >= text ? (long long)(at - text) : -1LL);
        return bad(path, what);
    }
    const cJSON *sites = NULL;
    ent_status st = check_ledger(path, root, &sites);
    if (st == ENT_OK && json) fprintf(out, "%s\n", text);
    else if (st == ENT_OK) print_table(root, sites, out);
    cJSON_Delete(root);
    if (st == ENT_OK && (fflush(out) != 0 || ferror(out)))
        st = ent_fail(ENT_ERR_IO, "cannot write the ledger of %s", path);
    return st;
}
