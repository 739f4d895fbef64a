// metrics.c: one writer for every JSON line Entente writes (metrics.jsonl's
// records, run.json): a list of typed fields in, one object on one line out,
// strings escaped, NaN and Inf as null (which JSON cannot hold otherwise).
#include "runtime_impl.h"

#include <math.h>

static void json_string(FILE *f, const char *s) {
    if (s == NULL) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

void ent_json_line(FILE *f, const ent_json_field *fields, int n) {
    fputc('{', f);
    for (int i = 0; i < n; i++) {
        const ent_json_field *x = &fields[i];
        if (i > 0) fputc(',', f);
        json_string(f, x->key);
        fputc(':', f);
        switch (x->kind) {
        case ENT_JSON_NUMBER:
            if (isfinite(x->num)) fprintf(f, "%.8g", x->num);
            else fputs("null", f);
            break;
        case ENT_JSON_INT: fprintf(f, "%lld", x->i); break;
        case ENT_JSON_STRING: json_string(f, x->s); break;
        case ENT_JSON_BOOL: fputs(x->i ? "true" : "false", f); break;
        case ENT_JSON_RAW: fputs(x->s, f); break;
        }
    }
    fputs("}\n", f);
}
