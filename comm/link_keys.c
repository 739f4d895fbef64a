// link_keys.c: CURVE key pairs for the coalition link, their files, and the
// coordinator's allowlist.
//
// A key file is a few lines of text, so that an operator can read, mail and
// diff it:
//
//   # Entente CURVE key pair of 'a': keep this file secret
//   name = a
//   public = <40 characters of Z85>
//   secret = <40 characters of Z85>
//
//   check = <8 hex digits>
//
// NAME.pub has no secret. `check` is the CRC32C of the other fields' values
// (each followed by a newline, the secret's empty in a .pub), so that a
// damaged name or key (Z85 decodes any 40 characters of its alphabet) is
// found, not read as another valid one. Reading is strict: every line is a
// comment, blank, or one of those fields exactly once; a key must decode
// (Z85, 32 bytes), and a secret must be the one its public key belongs to.
#include "link_impl.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

const char *ent_link_key_fingerprint(const char *public_key, char *buf, size_t cap) {
    uint8_t raw[32];
    if (public_key == NULL || strlen(public_key) != ENT_LINK_KEY_TEXT ||
        zmq_z85_decode(raw, public_key) == NULL) {
        snprintf(buf, cap, "(invalid key)");
        return buf;
    }
    snprintf(buf, cap, "%.8s..%08x", public_key, ent_link_crc32c(0, raw, sizeof raw));
    return buf;
}

// 1 when text is 40 characters of Z85 that decode to 32 bytes.
static uint32_t key_check(const char *name, const char *public_key, const char *secret_key) {
    char text[256];
    int n = snprintf(text, sizeof text, "%s\n%s\n%s\n", name, public_key, secret_key);
    return ent_link_crc32c(0, text, (size_t)n);
}

static int key_text_ok(const char *text) {
    uint8_t raw[32];
    return strlen(text) == ENT_LINK_KEY_TEXT && zmq_z85_decode(raw, text) != NULL;
}

ent_status ent_link_keygen(const char *name, ent_link_keypair *out) {
    memset(out, 0, sizeof *out);
    if (!ent_link_name_ok(name))
        return ent_fail(ENT_ERR_USAGE, "key name '%s': a key is named after its site: 1-%d "
                        "characters of A-Z a-z 0-9 . _ -, not starting with '.'",
                        name ? name : "", ENT_LINK_NAME_MAX);
    if (!zmq_has("curve"))
        return ent_fail(ENT_ERR_INTERNAL, "this libzmq was built without CURVE: no keys");
    snprintf(out->name, sizeof out->name, "%s", name);
    if (zmq_curve_keypair(out->public_key, out->secret_key) != 0)
        return ent_fail(ENT_ERR_INTERNAL, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
    return ENT_OK;
}

ent_status ent_link_key_write(const char *dir, const ent_link_keypair *kp, int force) {
    if (!ent_link_name_ok(kp->name) || !key_text_ok(kp->public_key) ||
        !key_text_ok(kp->secret_key))
        return ent_fail(ENT_ERR_USAGE, "not a complete key pair: nothing written to %s", dir);
    ENT_CHECK(ent_mkdirs(dir));
    char key_path[4096], pub_path[4096], text[512];
    snprintf(key_path, sizeof key_path, "%s/%s.key", dir, kp->name);
    snprintf(pub_path, sizeof pub_path, "%s/%s.pub", dir, kp->name);
    struct stat st;
    if (!force && (lstat(key_path, &st) == 0 || lstat(pub_path, &st) == 0))
        return ent_fail(ENT_ERR_USAGE, "%s exists: refusing to overwrite a key (pass --force "
                        "to replace it; every member holding the old public key must then get "
                        "the new one)", lstat(key_path, &st) == 0 ? key_path : pub_path);
    snprintf(text, sizeof text,
             "# Entente CURVE key pair of '%s': keep this file secret (mode 0600)\n"
             "name = %s\npublic = %s\nsecret = %s\ncheck = %08x\n",
             kp->name, kp->name, kp->public_key, kp->secret_key,
             key_check(kp->name, kp->public_key, kp->secret_key));
    // the secret is never readable by others, not even as the .tmp
    mode_t old = umask(077);
    ent_status s = ent_write_file_atomic(key_path, text, strlen(text));
    umask(old);
    if (s != ENT_OK) return s;
    snprintf(text, sizeof text,
             "# Entente CURVE public key of '%s': give this file to the coordinator's "
             "operator\nname = %s\npublic = %s\ncheck = %08x\n",
             kp->name, kp->name, kp->public_key, key_check(kp->name, kp->public_key, ""));
    return ent_write_file_atomic(pub_path, text, strlen(text));
}

// Trims spaces and tabs at both ends, in place.
static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r')) s[--n] = '\0';
    return s;
}

ent_status ent_link_key_read(const char *path, int need_secret, ent_link_keypair *out) {
    memset(out, 0, sizeof *out);
    struct stat st;
    if (stat(path, &st) != 0)
        return ent_fail(ENT_ERR_INPUT, "key file %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return ent_fail(ENT_ERR_INPUT, "key file %s is not a regular file", path);
    if (st.st_size > 4096)
        return ent_fail(ENT_ERR_INPUT, "key file %s: %lld bytes, too large for a key file "
                        "(at most 4096)", path, (long long)st.st_size);
    FILE *f = fopen(path, "r");
    if (f == NULL) return ent_fail(ENT_ERR_INPUT, "key file %s: %s", path, strerror(errno));
    char line[4200];
    int lineno = 0, have_name = 0, have_pub = 0, have_sec = 0, have_check = 0;
    uint32_t check = 0;
    ent_status s = ENT_OK;
    while (fgets(line, sizeof line, f) != NULL) {
        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            s = ent_fail(ENT_ERR_INPUT, "key file %s:%d: line too long", path, lineno);
            goto done;
        }
        line[strcspn(line, "\n")] = '\0';
        char *l = trim(line);
        if (*l == '\0' || *l == '#') continue;
        char *eq = strchr(l, '=');
        if (eq == NULL) {
            s = ent_fail(ENT_ERR_INPUT, "key file %s:%d: expected 'field = value'", path, lineno);
            goto done;
        }
        *eq = '\0';
        char *field = trim(l), *value = trim(eq + 1);
        int *seen = strcmp(field, "name") == 0     ? &have_name
                    : strcmp(field, "public") == 0 ? &have_pub
                    : strcmp(field, "secret") == 0 ? &have_sec
                    : strcmp(field, "check") == 0  ? &have_check
                                                   : NULL;
        if (seen == NULL) {
            s = ent_fail(ENT_ERR_INPUT, "key file %s:%d: unknown field '%.40s' (a key file "
                         "has name, public, check and, for a secret key, secret)", path, lineno,
                         field);
            goto done;
        }
        if (*seen) {
            s = ent_fail(ENT_ERR_INPUT, "key file %s:%d: '%s' given twice", path, lineno, field);
            goto done;
        }
        *seen = 1;
        if (seen == &have_name) {
            if (!ent_link_name_ok(value)) {
                s = ent_fail(ENT_ERR_INPUT, "key file %s:%d: name '%.80s' is not a site name "
                             "(1-%d characters of A-Z a-z 0-9 . _ -)", path, lineno, value,
                             ENT_LINK_NAME_MAX);
                goto done;
            }
            snprintf(out->name, sizeof out->name, "%s", value);
        } else if (seen == &have_check) {
            char *end = NULL;
            unsigned long v = strtoul(value, &end, 16);
            if (strlen(value) != 8 || *end != '\0' || v > 0xffffffffUL) {
                s = ent_fail(ENT_ERR_INPUT, "key file %s:%d: check is not 8 hex digits", path,
                             lineno);
                goto done;
            }
            check = (uint32_t)v;
        } else {
            if (!key_text_ok(value)) {
                s = ent_fail(ENT_ERR_INPUT, "key file %s:%d: the %s key is not 40 characters "
                             "of Z85 (a damaged or truncated key file?)", path, lineno, field);
                goto done;
            }
            snprintf(seen == &have_pub ? out->public_key : out->secret_key,
                     ENT_LINK_KEY_TEXT + 1, "%s", value);
        }
    }
    if (ferror(f)) {
        s = ent_fail(ENT_ERR_INPUT, "key file %s: read error", path);
        goto done;
    }
    if (!have_name || !have_pub || !have_check) {
        s = ent_fail(ENT_ERR_INPUT, "key file %s: no '%s' line: not an Entente key file "
                     "(or a damaged one)", path,
                     !have_name ? "name" : !have_pub ? "public" : "check");
        goto done;
    }
    if (key_check(out->name, out->public_key, out->secret_key) != check) {
        s = ent_fail(ENT_ERR_INPUT, "key file %s: its check value does not match its name "
                     "and keys (a damaged or edited key file)", path);
        goto done;
    }
    if (need_secret && !have_sec) {
        s = ent_fail(ENT_ERR_INPUT, "key file %s holds a public key only; this needs the "
                     "secret key pair (NAME.key, written by 'entente keygen')", path);
        goto done;
    }
    if (have_sec) {
        char derived[ENT_LINK_KEY_TEXT + 1];
        if (zmq_curve_public(derived, out->secret_key) != 0 ||
            strcmp(derived, out->public_key) != 0) {
            s = ent_fail(ENT_ERR_INPUT, "key file %s: its secret key does not belong to its "
                         "public key (a damaged or edited key file)", path);
            goto done;
        }
        if ((st.st_mode & 077) != 0)
            ent_log_warn("key file %s holds a secret key but others may read it (mode %03o): "
                         "chmod 600 %s", path, (unsigned)(st.st_mode & 0777), path);
    }
done:
    fclose(f);
    if (s != ENT_OK) memset(out, 0, sizeof *out);
    return s;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const ent_link_keypair *)a)->name, ((const ent_link_keypair *)b)->name);
}

ent_status ent_link_allowlist_load(const char *dir, ent_link_keypair **keys, int *n) {
    *keys = NULL;
    *n = 0;
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return ent_fail(ENT_ERR_INPUT, "allowlist %s: %s", dir, strerror(errno));
    ent_link_keypair *list = NULL;
    int count = 0, cap = 0;
    ent_status st = ENT_OK;
    if (!S_ISDIR(sb.st_mode)) {
        list = calloc(1, sizeof *list);
        ENT_ALLOC_CHECK(list, "the allowlist");
        st = ent_link_key_read(dir, 0, &list[0]);
        if (st != ENT_OK) {
            free(list);
            return st;
        }
        memset(list[0].secret_key, 0, sizeof list[0].secret_key); // only the public key
        *keys = list;
        *n = 1;
        return ENT_OK;
    }
    DIR *d = opendir(dir);
    if (d == NULL) return ent_fail(ENT_ERR_INPUT, "allowlist %s: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 5 || strcmp(e->d_name + len - 4, ".pub") != 0) continue;
        if (count == cap) {
            cap = cap ? 2 * cap : 8;
            ent_link_keypair *grown = realloc(list, sizeof *list * (size_t)cap);
            if (grown == NULL) {
                st = ent_fail(ENT_ERR_NOMEM, "out of memory for the allowlist %s", dir);
                goto done;
            }
            list = grown;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ENT_CHECK_GOTO(ent_link_key_read(path, 0, &list[count]), done);
        memset(list[count].secret_key, 0, sizeof list[count].secret_key);
        count++;
    }
    if (count == 0) {
        st = ent_fail(ENT_ERR_INPUT, "allowlist %s holds no NAME.pub key file: no site could "
                     "join (copy each site's NAME.pub, written by 'entente keygen', there)", dir);
        goto done;
    }
    qsort(list, (size_t)count, sizeof *list, by_name);
    for (int i = 0; i < count; i++)
        for (int j = i + 1; j < count; j++) {
            if (strcmp(list[i].name, list[j].name) == 0) {
                st = ent_fail(ENT_ERR_INPUT, "allowlist %s: two key files name the site '%s'",
                             dir, list[i].name);
                goto done;
            }
            if (strcmp(list[i].public_key, list[j].public_key) == 0) {
                st = ent_fail(ENT_ERR_INPUT, "allowlist %s: sites '%s' and '%s' have the same "
                             "public key", dir, list[i].name, list[j].name);
                goto done;
            }
        }
done:
    closedir(d);
    if (st != ENT_OK) {
        free(list);
        return st;
    }
    *keys = list;
    *n = count;
    return ENT_OK;
}
