/* jsonr.c: a small JSON reader (RFC 8259) — enough to read back job.json, which the
 * server writes itself but which lives on disk where anything can happen to it. The whole
 * text is parsed from memory into a tree through common/'s bounds-checked reader, with
 * named caps on size and depth; any deviation from the grammar is an error naming the
 * offset.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

struct jparse {
    struct p2v_rd rd;
    struct p2v_err *err;
    int depth;
};

static int jp_fail(struct jparse *p, const char *what)
{
    return p2v_err_set(p->err, EINVAL, "invalid JSON at offset %zu: %s", p2v_rd_pos(&p->rd),
                       what);
}

static bool jp_peek(struct jparse *p, uint8_t *c)
{
    const uint8_t *q;
    if (p2v_rd_ptr_at(&p->rd, p2v_rd_pos(&p->rd), &q, 1) < 0)
        return false;
    *c = *q;
    return true;
}

static void jp_ws(struct jparse *p)
{
    uint8_t c;
    while (jp_peek(p, &c) && (c == ' ' || c == '\t' || c == '\n' || c == '\r'))
        p2v_rd_skip(&p->rd, 1);
}

static int jp_lit(struct jparse *p, const char *lit)
{
    size_t n = strlen(lit);
    const uint8_t *q;
    if (p2v_rd_ptr(&p->rd, &q, n) < 0 || memcmp(q, lit, n) != 0)
        return jp_fail(p, "unknown literal");
    return 0;
}

static int jp_hex4(struct jparse *p, unsigned *out)
{
    const uint8_t *q;
    unsigned v = 0;
    if (p2v_rd_ptr(&p->rd, &q, 4) < 0)
        return jp_fail(p, "truncated \\u escape");
    for (int i = 0; i < 4; i++) {
        unsigned d;
        if (q[i] >= '0' && q[i] <= '9')
            d = q[i] - '0';
        else if (q[i] >= 'a' && q[i] <= 'f')
            d = q[i] - 'a' + 10u;
        else if (q[i] >= 'A' && q[i] <= 'F')
            d = q[i] - 'A' + 10u;
        else
            return jp_fail(p, "bad \\u escape");
        v = v * 16 + d;
    }
    *out = v;
    return 0;
}

static int jp_utf8(struct p2v_buf *b, unsigned cp)
{
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (uint8_t)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (uint8_t)(0xc0 | (cp >> 6));
        u[1] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (uint8_t)(0xe0 | (cp >> 12));
        u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (uint8_t)(0xf0 | (cp >> 18));
        u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return p2v_buf_put(b, u, n);
}

/* After the opening quote; the result is malloc'd and NUL-terminated. */
static int jp_string(struct jparse *p, char **out)
{
    struct p2v_buf b;
    int r = -1;
    p2v_buf_init(&b, JV_TEXT_MAX);
    for (;;) {
        uint8_t c;
        if (p2v_rd_u8(&p->rd, &c) < 0) {
            jp_fail(p, "unterminated string");
            goto out;
        }
        if (c == '"')
            break;
        if (c < 0x20) {
            jp_fail(p, "control character in a string");
            goto out;
        }
        if (c != '\\') {
            if (p2v_buf_put_u8(&b, c) < 0)
                goto nomem;
            continue;
        }
        if (p2v_rd_u8(&p->rd, &c) < 0) {
            jp_fail(p, "unterminated escape");
            goto out;
        }
        static const char esc_in[] = "\"\\/bfnrt", esc_out[] = "\"\\/\b\f\n\r\t";
        const char *simple = c ? strchr(esc_in, c) : NULL;
        if (simple) {
            if (p2v_buf_put_u8(&b, (uint8_t)esc_out[simple - esc_in]) < 0)
                goto nomem;
            continue;
        }
        if (c != 'u') {
            jp_fail(p, "bad escape");
            goto out;
        }
        unsigned cp, lo;
        if (jp_hex4(p, &cp) < 0)
            goto out;
        if (cp >= 0xd800 && cp < 0xdc00) {
            const uint8_t *q;
            if (p2v_rd_ptr(&p->rd, &q, 2) < 0 || q[0] != '\\' || q[1] != 'u' ||
                jp_hex4(p, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff) {
                jp_fail(p, "bad surrogate pair");
                goto out;
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else if (cp >= 0xdc00 && cp < 0xe000) {
            jp_fail(p, "lone low surrogate");
            goto out;
        }
        if (cp == 0) {
            jp_fail(p, "\\u0000 in a string");
            goto out;
        }
        if (jp_utf8(&b, cp) < 0)
            goto nomem;
    }
    if (!p2v_buf_cstr(&b))
        goto nomem;
    *out = (char *)b.data;
    b.data = NULL;
    r = 0;
    goto out;
nomem:
    p2v_err_set(p->err, ENOMEM, "out of memory parsing JSON");
out:
    p2v_buf_release(&b);
    return r;
}

static int jp_number(struct jparse *p, struct jv *v)
{
    size_t start = p2v_rd_pos(&p->rd);
    uint8_t c;
    bool integer = true, neg = false;
    if (jp_peek(p, &c) && c == '-') {
        neg = true;
        p2v_rd_skip(&p->rd, 1);
    }
    size_t digits = 0;
    bool lead_zero = jp_peek(p, &c) && c == '0';
    while (jp_peek(p, &c) && c >= '0' && c <= '9') {
        p2v_rd_skip(&p->rd, 1);
        digits++;
    }
    if (digits == 0 || (lead_zero && digits > 1))
        return jp_fail(p, "bad number");
    if (jp_peek(p, &c) && c == '.') {
        integer = false;
        p2v_rd_skip(&p->rd, 1);
        digits = 0;
        while (jp_peek(p, &c) && c >= '0' && c <= '9') {
            p2v_rd_skip(&p->rd, 1);
            digits++;
        }
        if (!digits)
            return jp_fail(p, "bad fraction");
    }
    if (jp_peek(p, &c) && (c == 'e' || c == 'E')) {
        integer = false;
        p2v_rd_skip(&p->rd, 1);
        if (jp_peek(p, &c) && (c == '+' || c == '-'))
            p2v_rd_skip(&p->rd, 1);
        digits = 0;
        while (jp_peek(p, &c) && c >= '0' && c <= '9') {
            p2v_rd_skip(&p->rd, 1);
            digits++;
        }
        if (!digits)
            return jp_fail(p, "bad exponent");
    }
    size_t len = p2v_rd_pos(&p->rd) - start;
    char tmp[64];
    if (len >= sizeof tmp)
        return jp_fail(p, "number too long");
    memcpy(tmp, p->rd.data + start, len);
    tmp[len] = '\0';
    v->type = JV_NUM;
    v->num = strtod(tmp, NULL);
    if (integer && !neg) {
        errno = 0;
        unsigned long long u = strtoull(tmp, NULL, 10);
        if (errno == 0) {
            v->is_u64 = true;
            v->u = u;
        }
    }
    return 0;
}

static int jp_value(struct jparse *p, struct jv *v);

static int jp_push(struct jparse *p, struct jv *v, char *key)
{
    size_t n = v->n + 1;
    struct jv *items = realloc(v->items, n * sizeof *items);
    if (!items)
        goto nomem;
    v->items = items;
    memset(&items[v->n], 0, sizeof *items);
    if (v->type == JV_OBJ) {
        char **keys = realloc(v->keys, n * sizeof *keys);
        if (!keys)
            goto nomem;
        v->keys = keys;
        keys[v->n] = key;
    }
    v->n = n;
    return 0;
nomem:
    free(key);
    return p2v_err_set(p->err, ENOMEM, "out of memory parsing JSON");
}

static int jp_container(struct jparse *p, struct jv *v, bool object)
{
    uint8_t c;
    v->type = object ? JV_OBJ : JV_ARR;
    if (++p->depth > JV_DEPTH_MAX)
        return jp_fail(p, "nested too deeply");
    jp_ws(p);
    if (jp_peek(p, &c) && c == (object ? '}' : ']')) {
        p2v_rd_skip(&p->rd, 1);
        p->depth--;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        jp_ws(p);
        if (object) {
            if (p2v_rd_u8(&p->rd, &c) < 0 || c != '"')
                return jp_fail(p, "expected a key");
            if (jp_string(p, &key) < 0)
                return -1;
            jp_ws(p);
            if (p2v_rd_u8(&p->rd, &c) < 0 || c != ':') {
                free(key);
                return jp_fail(p, "expected ':'");
            }
        }
        if (jp_push(p, v, key) < 0)
            return -1;
        if (jp_value(p, &v->items[v->n - 1]) < 0)
            return -1;
        jp_ws(p);
        if (p2v_rd_u8(&p->rd, &c) < 0)
            return jp_fail(p, "unterminated container");
        if (c == ',')
            continue;
        if (c == (object ? '}' : ']'))
            break;
        return jp_fail(p, "expected ',' or the end of the container");
    }
    p->depth--;
    return 0;
}

static int jp_value(struct jparse *p, struct jv *v)
{
    uint8_t c;
    jp_ws(p);
    if (!jp_peek(p, &c))
        return jp_fail(p, "expected a value");
    switch (c) {
    case '{':
        p2v_rd_skip(&p->rd, 1);
        return jp_container(p, v, true);
    case '[':
        p2v_rd_skip(&p->rd, 1);
        return jp_container(p, v, false);
    case '"':
        p2v_rd_skip(&p->rd, 1);
        v->type = JV_STR;
        return jp_string(p, &v->s);
    case 't':
        v->type = JV_BOOL;
        v->b = true;
        return jp_lit(p, "true");
    case 'f':
        v->type = JV_BOOL;
        return jp_lit(p, "false");
    case 'n':
        v->type = JV_NULL;
        return jp_lit(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return jp_number(p, v);
        return jp_fail(p, "unexpected character");
    }
}

static void jv_release(struct jv *v)
{
    free(v->s);
    for (size_t i = 0; i < v->n; i++) {
        jv_release(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

void jv_free(struct jv *v)
{
    if (!v)
        return;
    jv_release(v);
    free(v);
}

struct jv *jv_parse(const char *text, size_t len, struct p2v_err *err)
{
    if (len > JV_TEXT_MAX) {
        p2v_err_set(err, EFBIG, "JSON text is larger than %u bytes", JV_TEXT_MAX);
        return NULL;
    }
    struct jv *v = calloc(1, sizeof *v);
    if (!v) {
        p2v_err_set(err, ENOMEM, "out of memory parsing JSON");
        return NULL;
    }
    struct jparse p = {.err = err};
    p2v_rd_init(&p.rd, text, len);
    if (jp_value(&p, v) < 0)
        goto fail;
    jp_ws(&p);
    if (p2v_rd_left(&p.rd)) {
        jp_fail(&p, "trailing characters");
        goto fail;
    }
    return v;
fail:
    jv_free(v);
    return NULL;
}

const struct jv *jv_get(const struct jv *obj, const char *key)
{
    if (!obj || obj->type != JV_OBJ)
        return NULL;
    for (size_t i = obj->n; i-- > 0;) /* the last duplicate wins */
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

const char *jv_str(const struct jv *v)
{
    return v && v->type == JV_STR ? v->s : NULL;
}

bool jv_u64(const struct jv *v, uint64_t *out)
{
    if (!v || v->type != JV_NUM || !v->is_u64)
        return false;
    *out = v->u;
    return true;
}

void jv_write(struct p2v_json *j, const struct jv *v)
{
    switch (v->type) {
    case JV_NULL: p2v_json_null(j); break;
    case JV_BOOL: p2v_json_bool(j, v->b); break;
    case JV_NUM:
        if (v->is_u64)
            p2v_json_u64(j, v->u);
        else
            p2v_json_double(j, v->num);
        break;
    case JV_STR: p2v_json_string(j, v->s); break;
    case JV_ARR:
        p2v_json_array_begin(j);
        for (size_t i = 0; i < v->n; i++)
            jv_write(j, &v->items[i]);
        p2v_json_array_end(j);
        break;
    case JV_OBJ:
        p2v_json_object_begin(j);
        for (size_t i = 0; i < v->n; i++) {
            p2v_json_key(j, v->keys[i]);
            jv_write(j, &v->items[i]);
        }
        p2v_json_object_end(j);
        break;
    }
}
