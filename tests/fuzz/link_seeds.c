// link_seeds: writes one valid message of every link type into DIR, the
// seed corpus of fuzz_link (tests/fuzz/corpus/link/ holds its output):
//   link_seeds DIR
#include "ent_comm.h"

#include <stdio.h>
#include <string.h>

static int save(const char *dir, const char *name, const ent_link_buf *b) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(b->data, 1, b->len, f) != b->len) {
        fprintf(stderr, "link_seeds: cannot write %s\n", path);
        if (f) fclose(f);
        return 1;
    }
    return fclose(f) != 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: link_seeds DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    ent_link_buf b = {0};
    int bad = 0;
    ent_link_hello hello = {.max_version = 1, .shape_hash = 0x1234, .config_hash = 0x5678,
                            .dp_size = 2, .tp_size = 2, .tokens_per_s = 1500.5,
                            .tokens_per_step = 32768};
    snprintf(hello.name, sizeof hello.name, "north-1");
    bad |= ent_link_encode_hello(&b, 0, 0, &hello) != ENT_OK || save(dir, "hello", &b);
    ent_link_welcome w = {.anchor_hash = 0xabcdef, .inner_steps = 800, .round_seconds = 30,
                          .heartbeat_ms = 2000, .codec = ENT_LINK_CODEC_INT8,
                          .chunk_bytes = 1u << 22};
    bad |= ent_link_encode_welcome(&b, 3, 7, &w) != ENT_OK || save(dir, "welcome", &b);
    ent_link_heartbeat hb = {.time_ns = 123456789, .echo_ns = 12345, .steps_done = 40,
                             .tokens_per_s = 2000};
    bad |= ent_link_encode_heartbeat(&b, 3, 7, &hb) != ENT_OK || save(dir, "heartbeat", &b);
    ent_link_round_plan plan = {.inner_steps = 96, .deadline_ms = 600000};
    bad |= ent_link_encode_round_plan(&b, 3, 8, &plan) != ENT_OK || save(dir, "round_plan", &b);
    uint8_t bytes[64];
    for (int i = 0; i < 64; i++) bytes[i] = (uint8_t)(i * 37);
    ent_link_chunk ch = {.index = 1, .count = 3, .total = 1000, .offset = 300, .length = 300,
                         .codec = ENT_LINK_CODEC_INT8, .anchor_hash = 0x77, .tokens = 4096,
                         .data = bytes, .data_len = sizeof bytes};
    bad |= ent_link_encode_delta(&b, 3, 7, &ch) != ENT_OK || save(dir, "delta", &b);
    bad |= ent_link_encode_update(&b, 3, 7, &ch) != ENT_OK || save(dir, "update", &b);
    bad |= ent_link_encode_state(&b, 0, 7, &ch) != ENT_OK || save(dir, "state", &b);
    static const char text[] =
        "{\"format\":\"entente-ledger\",\"version\":3,\"rounds_merged\":4,\"sites\":[{\"site\":"
        "\"north\",\"tokens\":2555904,\"inner_steps\":156,\"compute_s\":44.8,\"rounds_joined\":4,"
        "\"accepted\":4,\"scored\":4,\"loss_gain\":0.8123,\"rejected\":{\"undecodable\":0,"
        "\"wrong_anchor\":0,\"norm\":0,\"stale\":0,\"loss\":0,\"tokens\":0},\"first_seen\":"
        "{\"time\":\"2026-05-04T10:30:21Z\",\"round\":0},\"last_seen\":{\"time\":"
        "\"2026-05-04T10:31:07Z\",\"round\":3}}]}";
    ent_link_ledger led = {.text = text, .len = sizeof text - 1};
    bad |= ent_link_encode_ledger(&b, 3, 4, &led) != ENT_OK || save(dir, "ledger", &b);
    ent_link_reason r = {.code = ENT_LINK_LEAVE_FINISHED};
    snprintf(r.text, sizeof r.text, "the coalition's rounds are done");
    bad |= ent_link_encode_leave(&b, 3, 9, &r) != ENT_OK || save(dir, "leave", &b);
    r.code = ENT_LINK_ERR_STALE_ROUND;
    snprintf(r.text, sizeof r.text, "a DELTA for round 3 while round 5 is being merged");
    bad |= ent_link_encode_error(&b, 3, 5, &r) != ENT_OK || save(dir, "error", &b);
    ent_link_buf_free(&b);
    if (bad) fprintf(stderr, "link_seeds: %s\n", ent_last_error());
    return bad;
}
