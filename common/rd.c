/* rd.c: the bounds-checked reader for untrusted bytes. Every check is written as
 * `n > len - pos` (pos <= len always holds), so no sum can overflow. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "p2v-common.h"

void p2v_rd_init(struct p2v_rd *r, const void *data, size_t len)
{
    r->data = data;
    r->len = data ? len : 0;
    r->pos = 0;
}

size_t p2v_rd_left(const struct p2v_rd *r)
{
    return r->len - r->pos;
}

size_t p2v_rd_pos(const struct p2v_rd *r)
{
    return r->pos;
}

static inline bool rd_has(const struct p2v_rd *r, size_t n)
{
    if (r->pos > r->len)
        abort(); /* corrupt internal state: never limp on */
    return n <= r->len - r->pos;
}

static inline bool rd_has_at(const struct p2v_rd *r, size_t off, size_t n)
{
    return off <= r->len && n <= r->len - off;
}

int p2v_rd_seek(struct p2v_rd *r, size_t pos)
{
    if (pos > r->len)
        return -1;
    r->pos = pos;
    return 0;
}

int p2v_rd_skip(struct p2v_rd *r, size_t n)
{
    if (!rd_has(r, n))
        return -1;
    r->pos += n;
    return 0;
}

int p2v_rd_bytes(struct p2v_rd *r, void *out, size_t n)
{
    if (!rd_has(r, n))
        return -1;
    if (n)
        memcpy(out, r->data + r->pos, n);
    r->pos += n;
    return 0;
}

int p2v_rd_ptr(struct p2v_rd *r, const uint8_t **out, size_t n)
{
    if (!rd_has(r, n))
        return -1;
    *out = r->data + r->pos;
    r->pos += n;
    return 0;
}

int p2v_rd_sub(struct p2v_rd *r, struct p2v_rd *sub, size_t n)
{
    if (!rd_has(r, n))
        return -1;
    p2v_rd_init(sub, r->data + r->pos, n);
    r->pos += n;
    return 0;
}

int p2v_rd_u8(struct p2v_rd *r, uint8_t *v)
{
    if (!rd_has(r, 1))
        return -1;
    *v = r->data[r->pos++];
    return 0;
}

#define RD_GETTER(name, type, size, conv)                                                 \
    int p2v_rd_##name(struct p2v_rd *r, type *v)                                          \
    {                                                                                     \
        if (!rd_has(r, size))                                                             \
            return -1;                                                                    \
        *v = conv(r->data + r->pos);                                                      \
        r->pos += size;                                                                   \
        return 0;                                                                         \
    }                                                                                     \
    int p2v_rd_##name##_at(const struct p2v_rd *r, size_t off, type *v)                   \
    {                                                                                     \
        if (!rd_has_at(r, off, size))                                                     \
            return -1;                                                                    \
        *v = conv(r->data + off);                                                         \
        return 0;                                                                         \
    }

RD_GETTER(u16le, uint16_t, 2, p2v_get_u16le)
RD_GETTER(u32le, uint32_t, 4, p2v_get_u32le)
RD_GETTER(u64le, uint64_t, 8, p2v_get_u64le)
RD_GETTER(u16be, uint16_t, 2, p2v_get_u16be)
RD_GETTER(u32be, uint32_t, 4, p2v_get_u32be)
RD_GETTER(u64be, uint64_t, 8, p2v_get_u64be)

int p2v_rd_ptr_at(const struct p2v_rd *r, size_t off, const uint8_t **out, size_t n)
{
    if (!rd_has_at(r, off, n))
        return -1;
    *out = r->data + off;
    return 0;
}
