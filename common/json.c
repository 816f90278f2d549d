/* json.c: a small streaming JSON writer (RFC 8259) for --json outputs and reports.
 * Allocation failures inside the writer abort: its outputs are small and bounded. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "p2v-common.h"

static void json_raw(struct p2v_json *j, const char *s, size_t n)
{
    if (p2v_buf_put(j->out, s, n) < 0)
        abort();
}

static void json_rawz(struct p2v_json *j, const char *s)
{
    json_raw(j, s, strlen(s));
}

static void json_indent(struct p2v_json *j)
{
    if (!j->pretty)
        return;
    json_raw(j, "\n", 1);
    for (int i = 0; i < j->depth; i++)
        json_raw(j, "  ", 2);
}

/* Called before every value or key: commas, indentation, and misuse checks. */
static void json_before_value(struct p2v_json *j, bool is_key)
{
    if (j->after_key) {
        if (is_key)
            abort(); /* a key after a key */
        j->after_key = false;
        return;
    }
    if (j->depth > 0) {
        if (j->in_object[j->depth - 1] && !is_key)
            abort(); /* a value in an object needs a key first */
        if (!j->first[j->depth - 1])
            json_raw(j, ",", 1);
        j->first[j->depth - 1] = false;
        json_indent(j);
    } else if (is_key) {
        abort();
    }
}

void p2v_json_init(struct p2v_json *j, struct p2v_buf *out, bool pretty)
{
    memset(j, 0, sizeof *j);
    j->out = out;
    j->pretty = pretty;
}

static void json_open(struct p2v_json *j, bool object)
{
    json_before_value(j, false);
    if (j->depth >= P2V_JSON_DEPTH_MAX)
        abort();
    json_raw(j, object ? "{" : "[", 1);
    j->first[j->depth] = true;
    j->in_object[j->depth] = object;
    j->depth++;
}

static void json_close(struct p2v_json *j, bool object)
{
    if (j->depth == 0 || j->in_object[j->depth - 1] != object || j->after_key)
        abort();
    j->depth--;
    if (!j->first[j->depth])
        json_indent(j);
    json_raw(j, object ? "}" : "]", 1);
}

void p2v_json_object_begin(struct p2v_json *j) { json_open(j, true); }
void p2v_json_object_end(struct p2v_json *j) { json_close(j, true); }
void p2v_json_array_begin(struct p2v_json *j) { json_open(j, false); }
void p2v_json_array_end(struct p2v_json *j) { json_close(j, false); }

static void json_escaped(struct p2v_json *j, const char *s, size_t n)
{
    json_raw(j, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        switch (c) {
        case '"': json_raw(j, "\\\"", 2); break;
        case '\\': json_raw(j, "\\\\", 2); break;
        case '\n': json_raw(j, "\\n", 2); break;
        case '\r': json_raw(j, "\\r", 2); break;
        case '\t': json_raw(j, "\\t", 2); break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                json_rawz(j, esc);
            } else {
                json_raw(j, (const char *)&s[i], 1);
            }
        }
    }
    json_raw(j, "\"", 1);
}

void p2v_json_key(struct p2v_json *j, const char *key)
{
    json_before_value(j, true);
    json_escaped(j, key, strlen(key));
    json_raw(j, j->pretty ? ": " : ":", j->pretty ? 2 : 1);
    j->after_key = true;
}

void p2v_json_stringn(struct p2v_json *j, const char *s, size_t n)
{
    json_before_value(j, false);
    json_escaped(j, s, n);
}

void p2v_json_string(struct p2v_json *j, const char *s)
{
    if (!s) {
        p2v_json_null(j);
        return;
    }
    p2v_json_stringn(j, s, strlen(s));
}

void p2v_json_u64(struct p2v_json *j, uint64_t v)
{
    char tmp[32];
    json_before_value(j, false);
    snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    json_rawz(j, tmp);
}

void p2v_json_i64(struct p2v_json *j, int64_t v)
{
    char tmp[32];
    json_before_value(j, false);
    snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    json_rawz(j, tmp);
}

void p2v_json_double(struct p2v_json *j, double v)
{
    char tmp[64];
    json_before_value(j, false);
    if (!isfinite(v))
        json_rawz(j, "null"); /* JSON has no NaN or infinity */
    else {
        /* 6 significant digits, but whole seconds and microseconds for a time of day
         * (Unix times are about 1.8e9) */
        snprintf(tmp, sizeof tmp, fabs(v) >= 1e6 ? "%.6f" : "%.6g", v);
        json_rawz(j, tmp);
    }
}

void p2v_json_bool(struct p2v_json *j, bool v)
{
    json_before_value(j, false);
    json_rawz(j, v ? "true" : "false");
}

void p2v_json_null(struct p2v_json *j)
{
    json_before_value(j, false);
    json_rawz(j, "null");
}

void p2v_json_kv_string(struct p2v_json *j, const char *k, const char *v)
{
    p2v_json_key(j, k);
    p2v_json_string(j, v);
}

void p2v_json_kv_u64(struct p2v_json *j, const char *k, uint64_t v)
{
    p2v_json_key(j, k);
    p2v_json_u64(j, v);
}

void p2v_json_kv_i64(struct p2v_json *j, const char *k, int64_t v)
{
    p2v_json_key(j, k);
    p2v_json_i64(j, v);
}

void p2v_json_kv_double(struct p2v_json *j, const char *k, double v)
{
    p2v_json_key(j, k);
    p2v_json_double(j, v);
}

void p2v_json_kv_bool(struct p2v_json *j, const char *k, bool v)
{
    p2v_json_key(j, k);
    p2v_json_bool(j, v);
}

bool p2v_json_complete(const struct p2v_json *j)
{
    return j->depth == 0 && !j->after_key;
}
