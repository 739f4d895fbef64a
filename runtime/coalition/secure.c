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
        ENT_CHECK(ent_link_key_read(cfg->coal_coordinator_key, 0, &k->server));
        lo->server_key = k->server.public_key;
    }
    lo->curve = &k->self;
    return ENT_OK;
}

void coal_keys_free(coal_keys *k) {
    free(k->allow);
    memset(k, 0, sizeof *k); // the secret key too
}
