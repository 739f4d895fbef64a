// link_impl.h: private to comm/'s coalition link (link_*.c) and its tests.
// Unlike comm_impl.h it needs no MPI.
#ifndef ENT_LINK_IMPL_H
#define ENT_LINK_IMPL_H

#include "ent_comm.h"

#include <stddef.h>
#include <stdint.h>

// CRC32C without the SSE4.2 instruction (table-driven, 8 bytes a step), the
// same function as ent_link_crc32c; kept callable so the tests check both.
uint32_t link_crc32c_portable(uint32_t crc, const void *data, size_t n);

// Copies src into dst (cap bytes) as an ERROR or LEAVE text: at most
// ENT_LINK_TEXT_MAX bytes and cap - 1, each control byte as '?'.
void link_text_sanitize(char *dst, size_t cap, const char *src);

#endif // ENT_LINK_IMPL_H
