/* libp2vcommon: what every p2vkit component needs. This header is the library's whole
 * contract.
 *
 *  - errors: `struct p2v_err`, an out-parameter set only on failure, holding one message
 *    that names the subject, the file and the offset where they are known;
 *  - logging: levels, a program name, -v / -q;
 *  - overflow-checked integer arithmetic and range checks that cannot overflow;
 *  - `struct p2v_rd`: the one bounds-checked reader through which untrusted bytes (frames,
 *    image headers, tables, guest memory) are parsed; a getter consumes or fails;
 *  - `struct p2v_buf`: a growable byte buffer with a hard cap, and byte-order put helpers;
 *  - `struct p2v_json`: a small streaming JSON writer for `--json` outputs;
 *  - scoped cleanup helpers.
 */
#ifndef P2V_COMMON_H
#define P2V_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* ---------------------------------------------------------------- errors */

#define P2V_ERR_MSG_MAX 1024

/* An error: an errno-style code (0 when unknown) and a message. Functions that can fail
 * take `struct p2v_err *err` last and fill it only when they fail; it may be NULL. */
struct p2v_err {
    int code;
    char msg[P2V_ERR_MSG_MAX];
};

/* Fill @err (if not NULL) with @code and a formatted message; returns -1 so that callers
 * can write `return p2v_err_set(err, EINVAL, "...")`. */
int p2v_err_set(struct p2v_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int p2v_err_setv(struct p2v_err *err, int code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Like p2v_err_set with code = errno, appending ": strerror(errno)". */
int p2v_err_errno(struct p2v_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prepend context to an error already set: "context: old message". Returns -1. */
int p2v_err_prefix(struct p2v_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void p2v_err_clear(struct p2v_err *err);

/* ---------------------------------------------------------------- logging */

enum p2v_log_level {
    P2V_LOG_ERROR = 0,
    P2V_LOG_WARN = 1,
    P2V_LOG_INFO = 2,
    P2V_LOG_DEBUG = 3,
};

/* Set the program name printed before each line (default "p2vkit"). */
void p2v_log_init(const char *progname);
/* The threshold: lines above it are dropped. Default P2V_LOG_INFO. */
void p2v_log_set_level(enum p2v_log_level level);
enum p2v_log_level p2v_log_get_level(void);
/* Apply -v (+1) and -q (-1) counts to the default level. */
void p2v_log_adjust(int verbose, int quiet);
/* Send log lines to @fp (default stderr). Lines are written whole (thread-safe). */
void p2v_log_set_stream(FILE *fp);
void p2v_log(enum p2v_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
const char *p2v_log_progname(void);

#define p2v_error(...) p2v_log(P2V_LOG_ERROR, __VA_ARGS__)
#define p2v_warn(...) p2v_log(P2V_LOG_WARN, __VA_ARGS__)
#define p2v_info(...) p2v_log(P2V_LOG_INFO, __VA_ARGS__)
#define p2v_debug(...) p2v_log(P2V_LOG_DEBUG, __VA_ARGS__)

/* ---------------------------------------------------------------- integers */

/* Overflow-checked arithmetic: true when the result overflowed (then *r is unspecified). */
#define P2V_ADD_OVERFLOW(a, b, r) __builtin_add_overflow((a), (b), (r))
#define P2V_SUB_OVERFLOW(a, b, r) __builtin_sub_overflow((a), (b), (r))
#define P2V_MUL_OVERFLOW(a, b, r) __builtin_mul_overflow((a), (b), (r))

/* True when [off, off + len) lies inside [0, size), written so that it cannot overflow. */
static inline bool p2v_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

/* Round up to a multiple of @align (a power of two); false on overflow. */
static inline bool p2v_align_up(uint64_t v, uint64_t align, uint64_t *out)
{
    uint64_t r;
    if (P2V_ADD_OVERFLOW(v, align - 1, &r))
        return false;
    *out = r & ~(align - 1);
    return true;
}

static inline bool p2v_is_pow2(uint64_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

#define P2V_DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define P2V_MIN(a, b) ((a) < (b) ? (a) : (b))
#define P2V_MAX(a, b) ((a) > (b) ? (a) : (b))
#define P2V_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Parse a whole decimal number from @lo to @hi (no sign, no trailing text). 0 / -1. */
int p2v_parse_uint(const char *s, unsigned long long lo, unsigned long long hi,
                   unsigned long long *out);
/* Parse a size such as "4096", "64K", "2G", "1.5T" (binary units). 0 / -1. */
int p2v_parse_size(const char *s, uint64_t *out, struct p2v_err *err);
/* Format @bytes as "1.5 GiB" into @buf. Returns @buf. */
char *p2v_format_size(uint64_t bytes, char *buf, size_t len);

/* ---------------------------------------------------------------- byte order */

static inline void p2v_put_u16le(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void p2v_put_u32le(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void p2v_put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void p2v_put_u16be(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void p2v_put_u32be(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static inline void p2v_put_u64be(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static inline uint16_t p2v_get_u16le(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t p2v_get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static inline uint64_t p2v_get_u64le(const uint8_t *p)
{
    return (uint64_t)p2v_get_u32le(p) | ((uint64_t)p2v_get_u32le(p + 4) << 32);
}
static inline uint16_t p2v_get_u16be(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t p2v_get_u32be(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
           (uint32_t)p[3];
}
static inline uint64_t p2v_get_u64be(const uint8_t *p)
{
    return ((uint64_t)p2v_get_u32be(p) << 32) | (uint64_t)p2v_get_u32be(p + 4);
}

/* ---------------------------------------------------------------- reader */

/* A bounds-checked cursor over untrusted bytes held in memory. Every getter either
 * consumes exactly what it returns or fails (returns -1, consumes nothing, leaves its
 * output untouched). The `_at` getters read at an absolute offset without moving. */
struct p2v_rd {
    const uint8_t *data;
    size_t len;
    size_t pos;
};

void p2v_rd_init(struct p2v_rd *r, const void *data, size_t len);
size_t p2v_rd_left(const struct p2v_rd *r);
size_t p2v_rd_pos(const struct p2v_rd *r);
int p2v_rd_seek(struct p2v_rd *r, size_t pos);
int p2v_rd_skip(struct p2v_rd *r, size_t n);
int p2v_rd_u8(struct p2v_rd *r, uint8_t *v);
int p2v_rd_u16le(struct p2v_rd *r, uint16_t *v);
int p2v_rd_u32le(struct p2v_rd *r, uint32_t *v);
int p2v_rd_u64le(struct p2v_rd *r, uint64_t *v);
int p2v_rd_u16be(struct p2v_rd *r, uint16_t *v);
int p2v_rd_u32be(struct p2v_rd *r, uint32_t *v);
int p2v_rd_u64be(struct p2v_rd *r, uint64_t *v);
/* Copy @n bytes out. */
int p2v_rd_bytes(struct p2v_rd *r, void *out, size_t n);
/* Borrow a pointer to the next @n bytes (valid while the underlying data lives). */
int p2v_rd_ptr(struct p2v_rd *r, const uint8_t **out, size_t n);
/* A sub-reader over the next @n bytes; the parent advances past them. */
int p2v_rd_sub(struct p2v_rd *r, struct p2v_rd *sub, size_t n);
/* Absolute-offset getters, not moving the cursor. */
int p2v_rd_u16le_at(const struct p2v_rd *r, size_t off, uint16_t *v);
int p2v_rd_u32le_at(const struct p2v_rd *r, size_t off, uint32_t *v);
int p2v_rd_u64le_at(const struct p2v_rd *r, size_t off, uint64_t *v);
int p2v_rd_u16be_at(const struct p2v_rd *r, size_t off, uint16_t *v);
int p2v_rd_u32be_at(const struct p2v_rd *r, size_t off, uint32_t *v);
int p2v_rd_u64be_at(const struct p2v_rd *r, size_t off, uint64_t *v);
int p2v_rd_ptr_at(const struct p2v_rd *r, size_t off, const uint8_t **out, size_t n);

/* ---------------------------------------------------------------- buffer */

/* A growable byte buffer. `max` caps its length (0: SIZE_MAX / 2); growing past it fails
 * with ENOBUFS, so a peer cannot make us allocate without bound. */
struct p2v_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t max;
};

#define P2V_BUF_INIT {NULL, 0, 0, 0}

void p2v_buf_init(struct p2v_buf *b, size_t max);
void p2v_buf_release(struct p2v_buf *b); /* frees the storage; accepts a released buffer */
void p2v_buf_reset(struct p2v_buf *b);   /* len = 0, keeps storage */
/* Make room for @n more bytes. */
int p2v_buf_reserve(struct p2v_buf *b, size_t n);
/* Append @n bytes and return a pointer to them (NULL on failure) for the caller to fill. */
uint8_t *p2v_buf_extend(struct p2v_buf *b, size_t n);
int p2v_buf_put(struct p2v_buf *b, const void *p, size_t n);
int p2v_buf_put_u8(struct p2v_buf *b, uint8_t v);
int p2v_buf_put_u16be(struct p2v_buf *b, uint16_t v);
int p2v_buf_put_u32be(struct p2v_buf *b, uint32_t v);
int p2v_buf_put_u64be(struct p2v_buf *b, uint64_t v);
int p2v_buf_put_u16le(struct p2v_buf *b, uint16_t v);
int p2v_buf_put_u32le(struct p2v_buf *b, uint32_t v);
int p2v_buf_put_u64le(struct p2v_buf *b, uint64_t v);
int p2v_buf_printf(struct p2v_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A NUL-terminated view of the contents (a NUL is kept after len; NULL on failure). */
const char *p2v_buf_cstr(struct p2v_buf *b);

/* ---------------------------------------------------------------- JSON */

/* A streaming JSON writer into a p2v_buf. Nesting is tracked so that commas come out
 * right; keys and strings are escaped. Misuse (a value where a key is due) aborts. */
#define P2V_JSON_DEPTH_MAX 32
struct p2v_json {
    struct p2v_buf *out;
    int depth;
    bool first[P2V_JSON_DEPTH_MAX];
    bool in_object[P2V_JSON_DEPTH_MAX];
    bool after_key;
    bool pretty;
};

void p2v_json_init(struct p2v_json *j, struct p2v_buf *out, bool pretty);
void p2v_json_object_begin(struct p2v_json *j);
void p2v_json_object_end(struct p2v_json *j);
void p2v_json_array_begin(struct p2v_json *j);
void p2v_json_array_end(struct p2v_json *j);
void p2v_json_key(struct p2v_json *j, const char *key);
void p2v_json_string(struct p2v_json *j, const char *s);
void p2v_json_stringn(struct p2v_json *j, const char *s, size_t n);
void p2v_json_u64(struct p2v_json *j, uint64_t v);
void p2v_json_i64(struct p2v_json *j, int64_t v);
void p2v_json_double(struct p2v_json *j, double v);
void p2v_json_bool(struct p2v_json *j, bool v);
void p2v_json_null(struct p2v_json *j);
/* key + value shorthands */
void p2v_json_kv_string(struct p2v_json *j, const char *k, const char *v);
void p2v_json_kv_u64(struct p2v_json *j, const char *k, uint64_t v);
void p2v_json_kv_i64(struct p2v_json *j, const char *k, int64_t v);
void p2v_json_kv_double(struct p2v_json *j, const char *k, double v);
void p2v_json_kv_bool(struct p2v_json *j, const char *k, bool v);
/* True once every object and array begun has been ended. */
bool p2v_json_complete(const struct p2v_json *j);

/* ---------------------------------------------------------------- progress */

/* Progress of one long operation: a bar with bytes, rate and ETA on a TTY, a plain line
 * every few seconds otherwise, or JSON lines (one event object per line) for scripts. */
enum p2v_progress_mode {
    P2V_PROGRESS_NONE,
    P2V_PROGRESS_AUTO, /* bar on a TTY, plain lines elsewhere */
    P2V_PROGRESS_BAR,
    P2V_PROGRESS_LINES,
    P2V_PROGRESS_JSON,
};

struct p2v_progress {
    enum p2v_progress_mode mode;
    FILE *fp;
    char label[64];
    uint64_t total;
    uint64_t done;
    double start;
    double last_print;
    double interval; /* seconds between updates */
};

void p2v_progress_init(struct p2v_progress *p, enum p2v_progress_mode mode, FILE *fp,
                       const char *label, uint64_t total);
/* Record @done bytes so far; prints when the interval has passed. Cheap to call often. */
void p2v_progress_update(struct p2v_progress *p, uint64_t done);
/* Print the final state (100 % on success). */
void p2v_progress_finish(struct p2v_progress *p, bool ok);

/* ---------------------------------------------------------------- misc */

/* Monotonic clock in seconds. */
double p2v_now(void);
/* Wall-clock seconds since the Unix epoch (for times shown to people and other hosts). */
double p2v_wall_now(void);
/* pread/pwrite that loop over short transfers and EINTR; -1 with errno on failure, a
 * short count only at end of file (pread). */
ssize_t p2v_pread_full(int fd, void *buf, size_t len, uint64_t off);
ssize_t p2v_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
/* True when the @len bytes at @p are all zero (fast, word at a time). */
bool p2v_is_zero(const void *p, size_t len);

/* ---------------------------------------------------------------- cleanup */

void p2v_cleanup_free(void *ptr);
void p2v_cleanup_close(int *fd);
void p2v_cleanup_fclose(FILE **fp);
void p2v_cleanup_buf(struct p2v_buf *b);
#define P2V_CLEANUP_FREE __attribute__((cleanup(p2v_cleanup_free)))
#define P2V_CLEANUP_CLOSE __attribute__((cleanup(p2v_cleanup_close)))
#define P2V_CLEANUP_FCLOSE __attribute__((cleanup(p2v_cleanup_fclose)))
#define P2V_CLEANUP_BUF __attribute__((cleanup(p2v_cleanup_buf)))

#endif /* P2V_COMMON_H */
