/* buf.c: the growable, capped byte buffer. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "p2v-common.h"

void p2v_buf_init(struct p2v_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max ? max : SIZE_MAX / 2;
}

void p2v_buf_release(struct p2v_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void p2v_buf_reset(struct p2v_buf *b)
{
    b->len = 0;
}

int p2v_buf_reserve(struct p2v_buf *b, size_t n)
{
    size_t max = b->max ? b->max : SIZE_MAX / 2;
    size_t need;
    /* +1 keeps room for the NUL of p2v_buf_cstr */
    if (P2V_ADD_OVERFLOW(b->len, n, &need) || need > max || need == SIZE_MAX) {
        errno = ENOBUFS;
        return -1;
    }
    need++;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

uint8_t *p2v_buf_extend(struct p2v_buf *b, size_t n)
{
    if (p2v_buf_reserve(b, n) < 0)
        return NULL;
    uint8_t *p = b->data + b->len;
    b->len += n;
    return p;
}

int p2v_buf_put(struct p2v_buf *b, const void *p, size_t n)
{
    uint8_t *d = p2v_buf_extend(b, n);
    if (!d)
        return -1;
    if (n)
        memcpy(d, p, n);
    return 0;
}

int p2v_buf_put_u8(struct p2v_buf *b, uint8_t v)
{
    return p2v_buf_put(b, &v, 1);
}

#define BUF_PUTTER(name, type, size)                                                      \
    int p2v_buf_put_##name(struct p2v_buf *b, type v)                                     \
    {                                                                                     \
        uint8_t *d = p2v_buf_extend(b, size);                                             \
        if (!d)                                                                           \
            return -1;                                                                    \
        p2v_put_##name(d, v);                                                             \
        return 0;                                                                         \
    }
BUF_PUTTER(u16be, uint16_t, 2)
BUF_PUTTER(u32be, uint32_t, 4)
BUF_PUTTER(u64be, uint64_t, 8)
BUF_PUTTER(u16le, uint16_t, 2)
BUF_PUTTER(u32le, uint32_t, 4)
BUF_PUTTER(u64le, uint64_t, 8)

int p2v_buf_printf(struct p2v_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || p2v_buf_reserve(b, (size_t)n) < 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

const char *p2v_buf_cstr(struct p2v_buf *b)
{
    if (p2v_buf_reserve(b, 0) < 0)
        return NULL;
    b->data[b->len] = '\0';
    return (const char *)b->data;
}
