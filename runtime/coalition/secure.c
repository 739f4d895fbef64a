// secure.c: the coalition link's CURVE settings from the configuration: the
// key files a coordinator or a site needs, checked before anything connects,
// or plaintext when the command line said --insecure.
#include "coalition_impl.h"

#include <stdlib.h>
#include <string.h>

static ent_status missing(const ent_config *cfg, const char *key, const char *what) {
    return ent_fail(ENT_ERR_USAGE,
                    "%s: coalition.%s is not set: the coalition's link is encrypted and "
                    "authenticated (CurveZMQ) unless the command line says --insecure. %s "
                    "('entente keygen --help' shows how keys are made and exchanged; "
                    "docs/operations.md)",
                    cfg->path[0] ? cfg->path : "configuration", key, what);
}

ent_status coal_keys_load(const ent_config *cfg, int coordinator, coal_keys *k,
                          ent_link_opts *lo) {
    memset(k, 0, sizeof *k);
    if (cfg->coal_insecure) {
        ent_log_warn("%s: --insecure: the coalition's link is neither encrypted nor "
                     "authenticated; anyone who reaches it can %s. Use it for experiments on "
                     "one machine only.", coordinator ? "coordinator" : "site",
                     coordinator ? "join as any site, read the model and send deltas"
                                 : "read this site's deltas or pose as the coordinator");
        return ENT_OK;
    }
    if (cfg->coal_key[0] == '\0')
        return missing(cfg, "key", coordinator
                       ? "Set it to the coordinator's key pair (NAME.key)."
                       : "Set it to this site's key pair (NAME.key, NAME = coalition.site).");
    ENT_CHECK(ent_link_key_read(cfg->coal_key, 1, &k->self));
    if (coordinator) {
        if (cfg->coal_allow[0] == '\0')
            return missing(cfg, "allow", "Set it to a directory of the sites' public keys "
                           "(their NAME.pub files).");
        ENT_CHECK(ent_link_allowlist_load(cfg->coal_allow, &k->allow, &k->nallow));
        if (cfg->coal_standby_mode) {
            // the primary's stream comes in on the same endpoint, under its key
            if (cfg->coal_primary_key[0] == '\0')
                return missing(cfg, "primary_key", "A standby takes the state only from the "
                               "primary: set it to the primary's public key (its NAME.pub).");
            ENT_CHECK(ent_link_key_read(cfg->coal_primary_key, 0, &k->primary));
            int known = 0;
            for (int i = 0; i < k->nallow; i++) {
                if (strcmp(k->allow[i].public_key, k->primary.public_key) == 0) known = 1;
                else if (strcmp(k->allow[i].name, k->primary.name) == 0)
                    return ent_fail(ENT_ERR_USAGE, "%s: the primary's key is named '%s', as a "
                                    "site's key in %s: give it another name", cfg->coal_primary_key,
                                    k->primary.name, cfg->coal_allow);
            }
            if (!known) {
                ent_link_keypair *more = realloc(k->allow, sizeof *more * (size_t)(k->nallow + 1));
                if (more == NULL) return ent_fail(ENT_ERR_NOMEM, "out of memory");
                k->allow = more;
                k->allow[k->nallow++] = k->primary;
            }
        }
        // a primary, or a standby with a standby of its own (a chain: it
        // streams to that one once it has taken over)
        if (cfg->coal_standby[0] != '\0') {
            if (cfg->coal_standby_key[0] == '\0')
                return missing(cfg, "standby_key", "The primary streams its state to the standby "
                               "over CurveZMQ: set it to the standby's public key (its NAME.pub).");
            ENT_CHECK(ent_link_key_read(cfg->coal_standby_key, 0, &k->standby));
            if (strcmp(k->standby.public_key, k->self.public_key) == 0)
                return ent_fail(ENT_ERR_USAGE, "%s: coalition.standby_key = %s is this "
                                "coordinator's own public key (coalition.key = %s): the standby "
                                "is another coordinator, with a key pair of its own",
                                cfg->path[0] ? cfg->path : "configuration",
                                cfg->coal_standby_key, cfg->coal_key);
            if (cfg->coal_standby_mode &&
                strcmp(k->standby.public_key, k->primary.public_key) == 0)
                return ent_fail(ENT_ERR_USAGE, "%s: coalition.standby_key is the key of this "
                                "standby's primary (coalition.primary_key = %s): a standby streams "
                                "to the next standby down the chain, never back to its primary",
                                cfg->path[0] ? cfg->path : "configuration",
                                cfg->coal_primary_key);
        }
        lo->allow = k->allow;
        lo->nallow = k->nallow;
        ent_log_info("coordinator: CURVE on, %d site key(s) admitted from %s", k->nallow,
                     cfg->coal_allow);
    } else {
        if (strcmp(k->self.name, cfg->coal_site) != 0)
            return ent_fail(ENT_ERR_USAGE, "coalition.key = %s is the key of site '%s', but "
                            "coalition.site = '%s': a site joins under its own key's name",
                            cfg->coal_key, k->self.name, cfg->coal_site);
        if (cfg->coal_coordinator_key[0] == '\0')
            return missing(cfg, "coordinator_key", "Set it to the coordinator's public key "
                           "(its NAME.pub, from the coordinator's operator).");
        char files[ENT_COAL_ENDPOINTS_MAX][256], eps[ENT_COAL_ENDPOINTS_MAX][256];
        int n = ent_coal_split_list(cfg->coal_coordinator_key, files);
        int nep = ent_coal_split_list(cfg->coal_coordinator, eps);
        if (n < 1 || (n > 1 && n != nep))
            return ent_fail(ENT_ERR_USAGE, "coalition.coordinator_key = '%s': give one public "
                            "key file for every coordinator endpoint, or one per endpoint in "
                            "coalition.coordinator's order (%d endpoint(s))",
                            cfg->coal_coordinator_key, nep);
        for (int i = 0; i < n; i++) ENT_CHECK(ent_link_key_read(files[i], 0, &k->server[i]));
        k->nserver = n;
        lo->server_key = k->server[0].public_key;
    }
    lo->curve = &k->self;
    return ENT_OK;
}

void coal_keys_free(coal_keys *k) {
    free(k->allow);
    memset(k, 0, sizeof *k); // the secret key too
}
