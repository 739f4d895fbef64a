// export.c: `entente ckpt export --format safetensors`: the parameters as
// Hugging Face lays them out, under the parameter table's names (Hugging
// Face's), the vocabulary's rows cut to the real vocabulary (the padding
// dropped) and the tensors the architecture stores (in, out) transposed from
// entente's (out, in); config.json as the caller (runtime/, which knows the
// architecture) wrote it.
#include "ckpt_impl.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[96];
    float *data;
    int64_t shape[2];
    int ndim;
} tensor;

typedef struct {
    ent_ckpt_t *ck;
    const ent_ckpt_export *how;
    tensor *t;
    int n, cap;
    int64_t vocab;
    ent_status st;
} collect_state;

static herr_t collect(hid_t grp, const char *name, const H5L_info_t *info, void *data) {
    (void)grp;
    (void)info;
    collect_state *c = data;
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        tensor *grown = realloc(c->t, sizeof *grown * (size_t)c->cap);
        if (grown == NULL) {
            c->st = ent_fail(ENT_ERR_NOMEM, "out of memory exporting");
            return -1;
        }
        c->t = grown;
    }
    tensor *t = &c->t[c->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    char full[160];
    snprintf(full, sizeof full, "params/%s", name);
    c->st = ent_ckpt_read_dataset(c->ck, full, &t->data, t->shape, &t->ndim);
    if (c->st != ENT_OK) return -1;
    c->n++;
    if (c->how->vocab_rows(name) && c->vocab < t->shape[0]) t->shape[0] = c->vocab;
    if (t->ndim == 2 && c->how->transposed(name)) {
        int64_t rows = t->shape[0], cols = t->shape[1];
        float *tr = malloc(sizeof(float) * (size_t)(rows * cols));
        if (tr == NULL) {
            c->st = ent_fail(ENT_ERR_NOMEM, "out of memory exporting");
            return -1;
        }
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) tr[j * rows + i] = t->data[i * cols + j];
        free(t->data);
        t->data = tr;
        t->shape[0] = cols;
        t->shape[1] = rows;
    }
    return 0;
}

ent_status ent_ckpt_export_safetensors(const char *path, const char *outdir,
                                       const ent_ckpt_export *how, FILE *out) {
    ent_ckpt_t *ck = NULL;
    ENT_CHECK(ent_ckpt_open(path, NULL, &ck));
    collect_state c = {.ck = ck, .how = how};
    int64_t step = 0;
    ent_status st = ent_ckpt_attr_i64(ck, "model.vocab", &c.vocab);
    if (st == ENT_OK) st = ent_ckpt_attr_i64(ck, "step", &step);
    char *json = NULL;
    size_t json_len = 0;
    const void **parts = NULL;
    size_t *lens = NULL;
    if (st != ENT_OK) goto done;
    hid_t grp = H5Gopen2(ck->file, "params", H5P_DEFAULT);
    if (grp < 0) {
        st = ckpt_h5_fail(ENT_ERR_INPUT, "%s: no params group", path);
        goto done;
    }
    H5Literate(grp, H5_INDEX_NAME, H5_ITER_INC, NULL, collect, &c);
    H5Gclose(grp);
    if ((st = c.st) != ENT_OK) goto done;

    // header: JSON with each tensor's dtype, shape and byte range, padded to 8 bytes
    FILE *mem = open_memstream(&json, &json_len);
    fprintf(mem, "{\"__metadata__\":{\"format\":\"pt\",\"source\":\"entente\",\"step\":\"%lld\"}",
            (long long)step);
    size_t offset = 0;
    for (int i = 0; i < c.n; i++) {
        tensor *t = &c.t[i];
        size_t bytes = sizeof(float) * (size_t)(t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1));
        if (t->ndim == 2)
            fprintf(mem, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}",
                    t->name, (long long)t->shape[0], (long long)t->shape[1], offset, offset + bytes);
        else
            fprintf(mem, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],\"data_offsets\":[%zu,%zu]}",
                    t->name, (long long)t->shape[0], offset, offset + bytes);
        offset += bytes;
    }
    fputc('}', mem);
    fclose(mem);
    while (json_len % 8 != 0) {
        char *grown = realloc(json, json_len + 2);
        if (grown == NULL) {
            st = ent_fail(ENT_ERR_NOMEM, "out of memory exporting");
            goto done;
        }
        json = grown;
        json[json_len++] = ' ';
        json[json_len] = '\0';
    }
    uint64_t header_len = json_len; // little-endian on every platform we build for
    parts = calloc((size_t)c.n + 2, sizeof *parts);
    lens = calloc((size_t)c.n + 2, sizeof *lens);
    if (parts == NULL || lens == NULL) {
        st = ent_fail(ENT_ERR_NOMEM, "out of memory exporting");
        goto done;
    }
    parts[0] = &header_len;
    lens[0] = 8;
    parts[1] = json;
    lens[1] = json_len;
    for (int i = 0; i < c.n; i++) {
        parts[i + 2] = c.t[i].data;
        lens[i + 2] = sizeof(float) * (size_t)(c.t[i].shape[0] * (c.t[i].ndim == 2 ? c.t[i].shape[1] : 1));
    }
    if ((st = ent_mkdirs(outdir)) != ENT_OK) goto done;
    char file[4200];
    snprintf(file, sizeof file, "%s/model.safetensors", outdir);
    if ((st = ent_write_file_parts_atomic(file, parts, lens, c.n + 2)) != ENT_OK) goto done;

    snprintf(file, sizeof file, "%s/config.json", outdir);
    if ((st = ent_write_file_atomic(file, how->config_json, strlen(how->config_json))) != ENT_OK)
        goto done;
    fprintf(out, "wrote %s/model.safetensors (%d tensors, %.1f MiB) and %s/config.json\n", outdir,
            c.n, offset / 1048576.0, outdir);
done:
    for (int i = 0; i < c.n; i++) free(c.t[i].data);
    free(c.t);
    free(json);
    free(parts);
    free(lens);
    ent_ckpt_close(&ck);
    return st;
}
