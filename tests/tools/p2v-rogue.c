/* p2v-rogue: a client that breaks the protocol on purpose, one way per --case, to test
 * that p2v-server refuses it the expected way and keeps serving everyone else.
 *
 *     p2v-rogue --server HOST:PORT --fingerprint FP --token TOKEN --case NAME
 *               [--name NAME] [--timeout SECS]
 *
 * It prints one line, `result: <what the server did>` ("error AUTH: <text>", "handshake
 * failed: ...", "closed", ...), and exits 0 when the server refused the way the case
 * expects (the right ERROR code, or a failed handshake), 1 otherwise, 2 on a usage error.
 *
 * Cases (the expected refusal in brackets; see cases[] below):
 *   plaintext, tls12, wrong-fingerprint      [the TLS handshake fails]
 *   wrong-token [AUTH]   bad-name [NAME] (--name: default "../../etc")
 *   bad-version [VERSION]   garbage-frame, oversized-frame [PROTO]
 *   undeclared-disk, past-end [DISK]   bad-hash [HASH]
 *   zstd-bomb, second-hello, done-early [PROTO]
 * Every other case's machine name is "rogue-CASE" unless --name says otherwise.
 *
 * Frames are built with the codec's encoders where they can express the fault, and as
 * raw bytes where they cannot (a header announcing too long a body, random bytes, an
 * unsupported version). The tls12 case is the only code outside common/tls.c that calls
 * OpenSSL: it has to break our own rule (TLS 1.3 only) to check that the server keeps it.
 * DATA payloads are filled with "p2v-rogue CASE payload " so that a test can grep the
 * store for bytes that must never have been written.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <zstd.h>

#include "p2v-common.h"
#include "p2v-proto.h"
#include "p2v-tls.h"

#define ROGUE_DISK_SIZE (1u << 20) /* the one disk the DATA cases declare: 1 MiB */
#define ROGUE_CHUNK 4096
#define ROGUE_VERSION "p2v-rogue 1"

struct rogue {
    const char *server, *fingerprint, *token, *name, *source_id;
    const char *case_name;
    int timeout_ms;
};

struct rogue_case {
    const char *name;
    uint16_t code; /* the ERROR code expected; 0: the TLS handshake must fail */
    int (*run)(const struct rogue *r, const struct rogue_case *rc);
    const char *default_name; /* machine name in HELLO unless --name */
};

__attribute__((format(printf, 1, 2))) static void result(const char *fmt, ...)
{
    va_list ap;
    printf("result: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

/* splitmix64, for reproducible garbage. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void fill_marker(uint8_t *p, size_t len, const char *case_name)
{
    char marker[128];
    int n = snprintf(marker, sizeof marker, "p2v-rogue %s payload ", case_name);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)marker[i % (size_t)n];
}

/* ---------------------------------------------------------------- TLS connections */

static struct p2v_tls_ctx *rogue_ctx;

static void rogue_conn_free(void)
{
    p2v_tls_ctx_free(rogue_ctx);
    rogue_ctx = NULL;
}

/* Connect and handshake, pinning @fingerprint. NULL on failure (err set; err->code EPERM
 * for a fingerprint mismatch, and `*tcp_ok` tells whether TCP connected at all). */
static struct p2v_conn *rogue_connect(const struct rogue *r, const char *fingerprint,
                                      bool *tcp_ok, struct p2v_err *err)
{
    *tcp_ok = false;
    rogue_conn_free();
    rogue_ctx = p2v_tls_client_ctx(fingerprint, err);
    if (!rogue_ctx)
        return NULL;
    int fd = p2v_tcp_connect(r->server, r->timeout_ms, err);
    if (fd < 0)
        return NULL;
    *tcp_ok = true;
    struct p2v_conn *c = p2v_conn_connect(rogue_ctx, fd, r->timeout_ms, err);
    if (c)
        p2v_conn_set_timeout(c, r->timeout_ms);
    return c;
}

/* Read frames until the session ends, and judge how it ended: 0 when it ended with an
 * ERROR frame carrying @code, 1 otherwise. HAVE and COMMITTED frames on the way are
 * skipped (a server may still be answering what came before the fault). */
static int await_error(struct p2v_conn *c, uint16_t code)
{
    struct p2v_buf body = P2V_BUF_INIT;
    struct p2v_msg m;
    struct p2v_err err = {0};
    int rc = 1;
    p2v_buf_init(&body, P2V_PROTO_BODY_MAX);
    for (;;) {
        int n = p2v_conn_read_frame(c, &body, &m, &err);
        if (n == 0) {
            result("closed");
            break;
        }
        if (n < 0) {
            result("connection failed: %s", err.msg);
            break;
        }
        if (m.type == P2V_MSG_HAVE || m.type == P2V_MSG_COMMITTED)
            continue;
        if (m.type == P2V_MSG_ERROR) {
            result("error %s: %.*s", p2v_proto_err_name(m.u.error.code),
                   (int)m.u.error.text.len, m.u.error.text.p);
            rc = m.u.error.code == code ? 0 : 1;
            break;
        }
        result("unexpected %s frame", p2v_proto_type_name(m.type));
        break;
    }
    p2v_buf_release(&body);
    return rc;
}

/* Send a frame; a failed write is not the end (the server may have answered and closed
 * before reading it all): the answer is still read. */
static void send_frame(struct p2v_conn *c, struct p2v_buf *frame)
{
    struct p2v_err err = {0};
    if (p2v_conn_send(c, frame, &err) < 0) {
        fprintf(stderr, "p2v-rogue: write failed: %s\n", err.msg);
        p2v_buf_reset(frame);
    }
}

/* Connect, HELLO, WELCOME. NULL after printing the result when anything else happened. */
static struct p2v_conn *rogue_session(const struct rogue *r, struct p2v_buf *out)
{
    struct p2v_err err = {0};
    struct p2v_buf body = P2V_BUF_INIT;
    struct p2v_msg m;
    bool tcp_ok;
    struct p2v_conn *c = rogue_connect(r, r->fingerprint, &tcp_ok, &err);
    if (!c) {
        result("%s: %s", tcp_ok ? "handshake failed" : "cannot connect", err.msg);
        return NULL;
    }
    if (p2v_proto_put_hello(out, P2V_HASH_SHA256, r->token, r->name, r->source_id,
                            ROGUE_VERSION) < 0) {
        result("cannot encode HELLO");
        goto fail;
    }
    send_frame(c, out);

    p2v_buf_init(&body, P2V_PROTO_BODY_MAX);
    int n = p2v_conn_read_frame(c, &body, &m, &err);
    if (n == 1 && m.type == P2V_MSG_WELCOME) {
        fprintf(stderr, "p2v-rogue: welcome: job '%.*s', state %u\n", (int)m.u.welcome.job.len,
                m.u.welcome.job.p, m.u.welcome.state);
        p2v_buf_release(&body);
        return c;
    }
    if (n == 1 && m.type == P2V_MSG_ERROR)
        result("error %s at HELLO: %.*s", p2v_proto_err_name(m.u.error.code),
               (int)m.u.error.text.len, m.u.error.text.p);
    else if (n == 1)
        result("unexpected %s frame instead of WELCOME", p2v_proto_type_name(m.type));
    else
        result("%s before WELCOME", n == 0 ? "closed" : err.msg);
fail:
    p2v_buf_release(&body);
    p2v_conn_close(c);
    return NULL;
}

/* Declare disk 0 (1 MiB) and read the server's HAVE answer. -1 after printing the result. */
static int declare_disk(struct p2v_conn *c, struct p2v_buf *out)
{
    struct p2v_err err = {0};
    struct p2v_buf body = P2V_BUF_INIT;
    struct p2v_msg m;
    int rc = -1;
    if (p2v_proto_put_disk(out, 0, ROGUE_DISK_SIZE, 512, ROGUE_DISK_SIZE, 0, "sda",
                           "rogue-disk-0") < 0) {
        result("cannot encode DISK");
        return -1;
    }
    send_frame(c, out);
    p2v_buf_init(&body, P2V_PROTO_BODY_MAX);
    for (;;) {
        int n = p2v_conn_read_frame(c, &body, &m, &err);
        if (n == 1 && m.type == P2V_MSG_HAVE) {
            if (m.flags & P2V_RANGES_MORE)
                continue;
            rc = 0;
        } else if (n == 1 && m.type == P2V_MSG_ERROR) {
            result("error %s at DISK: %.*s", p2v_proto_err_name(m.u.error.code),
                   (int)m.u.error.text.len, m.u.error.text.p);
        } else if (n == 1) {
            result("unexpected %s frame instead of HAVE", p2v_proto_type_name(m.type));
        } else {
            result("%s before HAVE", n == 0 ? "closed" : err.msg);
        }
        break;
    }
    p2v_buf_release(&body);
    return rc;
}

/* ---------------------------------------------------------------- cases */

/* No TLS: a plain-text HELLO frame and some text, as an agent without TLS would send. The
 * server must close (a TLS alert before is fine) and must not answer with a frame. */
static int case_plaintext(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_err err = {0};
    struct p2v_buf out = P2V_BUF_INIT;
    int fd = p2v_tcp_connect(r->server, r->timeout_ms, &err);
    if (fd < 0) {
        result("cannot connect: %s", err.msg);
        return 1;
    }
    p2v_proto_put_hello(&out, P2V_HASH_SHA256, r->token, r->name, r->source_id,
                        ROGUE_VERSION);
    p2v_buf_put(&out, "GET / HTTP/1.0\r\n\r\n", 18);
    ssize_t w = send(fd, out.data, out.len, MSG_NOSIGNAL);
    p2v_buf_release(&out);
    if (w < 0)
        fprintf(stderr, "p2v-rogue: write failed: %s\n", strerror(errno));

    uint8_t got[4096];
    size_t have = 0;
    const char *end = NULL;
    double deadline = p2v_now() + r->timeout_ms / 1000.0;
    while (!end) {
        int left = (int)((deadline - p2v_now()) * 1000);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, left) == 0) {
            end = "timeout";
            break;
        }
        ssize_t n = recv(fd, got + have, sizeof got - have, 0);
        if (n == 0)
            end = "closed";
        else if (n < 0 && errno != EINTR)
            end = "reset";
        else if (n > 0 && (have += (size_t)n) == sizeof got)
            end = "too much";
    }
    close(fd);
    /* A TLS record starts with its content type: 0x15 is an alert. */
    const char *what = have == 0 ? "nothing" : got[0] == 0x15 ? "a TLS alert" : "bytes";
    if (strcmp(end, "closed") == 0 || strcmp(end, "reset") == 0) {
        result("handshake failed: the server sent %zu bytes (%s), then the connection was %s",
               have, what, end);
        return have == 0 || got[0] == 0x15 ? 0 : 1;
    }
    result("%s: the server sent %zu bytes (%s) and kept the connection open", end, have, what);
    return 1;
}

/* A TLS 1.2-only client. Our rules say TLS 1.3 everywhere, so this builds its own
 * context; no certificate check, since the handshake must fail before it matters. */
static int case_tls12(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_err err = {0};
    int fd = p2v_tcp_connect(r->server, r->timeout_ms, &err);
    if (fd < 0) {
        result("cannot connect: %s", err.msg);
        return 1;
    }
    struct timeval tv = {.tv_sec = r->timeout_ms / 1000, .tv_usec = (r->timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    int ret = 1;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION)) {
        result("cannot make a TLS 1.2 context");
        goto out;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    ssl = SSL_new(ctx);
    if (!ssl || !SSL_set_fd(ssl, fd)) {
        result("cannot make a TLS 1.2 connection");
        goto out;
    }
    ERR_clear_error();
    if (SSL_connect(ssl) == 1) {
        result("handshake succeeded with %s", SSL_get_version(ssl));
        goto out;
    }
    unsigned long e = ERR_get_error();
    char buf[256];
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    else
        snprintf(buf, sizeof buf, "%s", errno ? strerror(errno) : "connection closed");
    result("handshake failed: %s", buf);
    ret = 0;
out:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return ret;
}

/* Pin a fingerprint that differs from the server's in its last digit. */
static int case_wrong_fingerprint(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_err err = {0};
    char fp[P2V_FINGERPRINT_LEN];
    if (p2v_tls_parse_fingerprint(r->fingerprint, fp, &err) < 0) {
        result("bad --fingerprint: %s", err.msg);
        return 1;
    }
    size_t last = strlen(fp) - 1;
    fp[last] = fp[last] == '0' ? '1' : '0';
    bool tcp_ok;
    struct p2v_conn *c = rogue_connect(r, fp, &tcp_ok, &err);
    if (c) {
        result("handshake succeeded with the wrong fingerprint %s", fp);
        p2v_conn_close(c);
        return 1;
    }
    result("%s: %s", tcp_ok ? "handshake failed" : "cannot connect", err.msg);
    return tcp_ok && err.code == EPERM ? 0 : 1;
}

/* HELLO itself is the fault (token, name): the answer to it is judged. */
static int case_hello(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_err err = {0};
    struct p2v_buf out = P2V_BUF_INIT;
    bool tcp_ok;
    struct rogue rr = *r;
    char token[P2V_PROTO_TOKEN_MAX + 1];
    if (strcmp(rc->name, "wrong-token") == 0) {
        /* same length, last character changed: a constant-time compare must still see it */
        snprintf(token, sizeof token, "%s", r->token);
        size_t n = strlen(token);
        if (n == 0)
            snprintf(token, sizeof token, "x");
        else
            token[n - 1] = token[n - 1] == 'a' ? 'b' : 'a';
        rr.token = token;
    }
    struct p2v_conn *c = rogue_connect(&rr, rr.fingerprint, &tcp_ok, &err);
    if (!c) {
        result("%s: %s", tcp_ok ? "handshake failed" : "cannot connect", err.msg);
        return 1;
    }
    if (p2v_proto_put_hello(&out, P2V_HASH_SHA256, rr.token, rr.name, rr.source_id,
                            ROGUE_VERSION) < 0) {
        result("cannot encode HELLO with name '%s'", rr.name);
        p2v_conn_close(c);
        return 1;
    }
    send_frame(c, &out);
    int ret = await_error(c, rc->code);
    p2v_buf_release(&out);
    p2v_conn_close(c);
    return ret;
}

/* HELLO whose version range (ours + 1 .. ours + 7) leaves out every version the server
 * speaks; raw bytes, since the encoder always offers our own range. */
static int case_bad_version(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_err err = {0};
    struct p2v_buf out = P2V_BUF_INIT;
    bool tcp_ok;
    struct p2v_conn *c = rogue_connect(r, r->fingerprint, &tcp_ok, &err);
    if (!c) {
        result("%s: %s", tcp_ok ? "handshake failed" : "cannot connect", err.msg);
        return 1;
    }
    const char *strs[] = {r->token, r->name, r->source_id, ROGUE_VERSION};
    size_t blen = 6;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(strs); i++)
        blen += 2 + strlen(strs[i]);
    p2v_buf_put_u32be(&out, (uint32_t)blen);
    p2v_buf_put_u8(&out, P2V_MSG_HELLO);
    p2v_buf_put_u8(&out, 0);
    p2v_buf_put_u16be(&out, 0);
    p2v_buf_put_u16be(&out, P2V_PROTO_VERSION + 1); /* only versions after ours */
    p2v_buf_put_u16be(&out, P2V_PROTO_VERSION + 7);
    p2v_buf_put_u8(&out, P2V_HASH_SHA256);
    p2v_buf_put_u8(&out, 0);
    for (size_t i = 0; i < P2V_ARRAY_SIZE(strs); i++) {
        p2v_buf_put_u16be(&out, (uint16_t)strlen(strs[i]));
        p2v_buf_put(&out, strs[i], strlen(strs[i]));
    }
    send_frame(c, &out);
    int ret = await_error(c, rc->code);
    p2v_buf_release(&out);
    p2v_conn_close(c);
    return ret;
}

/* Instead of HELLO, a frame of random bytes: a HELLO header over a random body that the
 * decoder must refuse (checked here first, so the case never sends a valid frame). */
static int case_garbage_frame(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_err err = {0};
    struct p2v_buf out = P2V_BUF_INIT;
    uint8_t body[200];
    uint64_t seed = 0x726f677565;
    struct p2v_msg m;
    do {
        for (size_t i = 0; i < sizeof body; i += 8) {
            uint64_t v = rng_next(&seed);
            memcpy(body + i, &v, P2V_MIN(8, sizeof body - i));
        }
    } while (p2v_proto_decode(P2V_MSG_HELLO, 0, body, sizeof body, &m, &err) == 0);

    bool tcp_ok;
    struct p2v_conn *c = rogue_connect(r, r->fingerprint, &tcp_ok, &err);
    if (!c) {
        result("%s: %s", tcp_ok ? "handshake failed" : "cannot connect", err.msg);
        return 1;
    }
    p2v_buf_put_u32be(&out, sizeof body);
    p2v_buf_put_u8(&out, P2V_MSG_HELLO);
    p2v_buf_put_u8(&out, 0);
    p2v_buf_put_u16be(&out, 0);
    p2v_buf_put(&out, body, sizeof body);
    send_frame(c, &out);
    int ret = await_error(c, rc->code);
    p2v_buf_release(&out);
    p2v_conn_close(c);
    return ret;
}

/* After a proper HELLO: a frame header announcing one byte more than any body may have.
 * Only the header is sent; the server must refuse it without waiting for the body. */
static int case_oversized(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_buf out = P2V_BUF_INIT;
    struct p2v_conn *c = rogue_session(r, &out);
    if (!c) {
        p2v_buf_release(&out);
        return 1;
    }
    p2v_buf_put_u32be(&out, P2V_PROTO_BODY_MAX + 1);
    p2v_buf_put_u8(&out, P2V_MSG_DATA);
    p2v_buf_put_u8(&out, 0);
    p2v_buf_put_u16be(&out, 0);
    send_frame(c, &out);
    int ret = await_error(c, rc->code);
    p2v_buf_release(&out);
    p2v_conn_close(c);
    return ret;
}

/* After HELLO and DISK 0 (1 MiB): one DATA frame that is well formed but wrong for the
 * session: for disk 3 (never declared), at the disk's end, with a wrong hash, or a zstd
 * payload that expands to the whole 1 MiB disk while the frame says 4096 bytes (its hash
 * is that of the first 4096 bytes, so only the length check can refuse it). */
static int case_data(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_buf out = P2V_BUF_INIT;
    uint8_t payload[ROGUE_CHUNK], hash[P2V_PROTO_HASH_LEN];
    uint32_t disk = 0;
    uint64_t off = 0;
    int ret = 1;
    struct p2v_conn *c = rogue_session(r, &out);
    if (!c)
        goto out;
    if (declare_disk(c, &out) < 0)
        goto out;
    fill_marker(payload, sizeof payload, rc->name);
    if (p2v_hash(P2V_HASH_SHA256, payload, sizeof payload, hash) < 0) {
        result("cannot hash");
        goto out;
    }
    if (strcmp(rc->name, "zstd-bomb") == 0) {
        size_t bound = ZSTD_compressBound(sizeof payload);
        uint8_t *big = malloc(ROGUE_DISK_SIZE), *z = malloc(bound);
        size_t zn = 0;
        if (big && z) {
            fill_marker(big, ROGUE_DISK_SIZE, rc->name);
            zn = ZSTD_compress(z, bound, big, ROGUE_DISK_SIZE, 19);
        }
        if (!big || !z || ZSTD_isError(zn) ||
            p2v_proto_put_data(&out, P2V_DATA_ZSTD, 0, 0, sizeof payload, hash, z, zn) < 0) {
            result("cannot build the zstd bomb");
            free(big);
            free(z);
            goto out;
        }
        free(big);
        free(z);
    } else {
        if (strcmp(rc->name, "undeclared-disk") == 0)
            disk = 3;
        else if (strcmp(rc->name, "past-end") == 0)
            off = ROGUE_DISK_SIZE;
        else
            hash[0] ^= 0x01; /* bad-hash */
        if (p2v_proto_put_data(&out, 0, disk, off, sizeof payload, hash, payload,
                               sizeof payload) < 0) {
            result("cannot encode DATA");
            goto out;
        }
    }
    send_frame(c, &out);
    ret = await_error(c, rc->code);
out:
    p2v_conn_close(c);
    p2v_buf_release(&out);
    return ret;
}

/* Out of order after a proper start: a second HELLO, or DONE before the declared disk's
 * DISK_END. */
static int case_order(const struct rogue *r, const struct rogue_case *rc)
{
    struct p2v_buf out = P2V_BUF_INIT;
    int ret = 1;
    struct p2v_conn *c = rogue_session(r, &out);
    if (!c)
        goto out;
    if (strcmp(rc->name, "second-hello") == 0) {
        if (p2v_proto_put_hello(&out, P2V_HASH_SHA256, r->token, r->name, r->source_id,
                                ROGUE_VERSION) < 0) {
            result("cannot encode HELLO");
            goto out;
        }
    } else {
        if (declare_disk(c, &out) < 0)
            goto out;
        if (p2v_proto_put_done(&out) < 0) {
            result("cannot encode DONE");
            goto out;
        }
    }
    send_frame(c, &out);
    ret = await_error(c, rc->code);
out:
    p2v_conn_close(c);
    p2v_buf_release(&out);
    return ret;
}

static const struct rogue_case cases[] = {
    {"plaintext", 0, case_plaintext, "rogue-plaintext"},
    {"tls12", 0, case_tls12, "rogue-tls12"},
    {"wrong-fingerprint", 0, case_wrong_fingerprint,
     "rogue-wrong-fingerprint"},
    {"wrong-token", P2V_E_AUTH, case_hello, "rogue-wrong-token"},
    {"bad-name", P2V_E_NAME, case_hello, "../../etc"},
    {"bad-version", P2V_E_VERSION, case_bad_version, "rogue-bad-version"},
    {"garbage-frame", P2V_E_PROTO, case_garbage_frame, "rogue-garbage-frame"},
    {"oversized-frame", P2V_E_PROTO, case_oversized, "rogue-oversized-frame"},
    {"undeclared-disk", P2V_E_DISK, case_data, "rogue-undeclared-disk"},
    {"past-end", P2V_E_DISK, case_data, "rogue-past-end"},
    {"bad-hash", P2V_E_HASH, case_data, "rogue-bad-hash"},
    {"zstd-bomb", P2V_E_PROTO, case_data, "rogue-zstd-bomb"},
    {"second-hello", P2V_E_PROTO, case_order, "rogue-second-hello"},
    {"done-early", P2V_E_PROTO, case_order, "rogue-done-early"},
};

static void usage(FILE *fp)
{
    fprintf(fp, "usage: p2v-rogue --server HOST:PORT --fingerprint FP --token TOKEN --case NAME\n"
                "                 [--name NAME] [--timeout SECS]\n"
                "cases:");
    for (size_t i = 0; i < P2V_ARRAY_SIZE(cases); i++)
        fprintf(fp, " %s", cases[i].name);
    fprintf(fp, "\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"server", required_argument, NULL, 's'},
        {"fingerprint", required_argument, NULL, 'f'},
        {"token", required_argument, NULL, 't'},
        {"case", required_argument, NULL, 'c'},
        {"name", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rogue r = {.timeout_ms = 10000};
    const struct rogue_case *rc = NULL;
    const char *case_name = NULL;
    int opt;

    p2v_log_init("p2v-rogue");
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 's': r.server = optarg; break;
        case 'f': r.fingerprint = optarg; break;
        case 't': r.token = optarg; break;
        case 'c': case_name = optarg; break;
        case 'n': r.name = optarg; break;
        case 'T': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 3600) {
                fprintf(stderr, "p2v-rogue: --timeout wants 1..3600 seconds\n");
                return 2;
            }
            r.timeout_ms = (int)v * 1000;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    for (size_t i = 0; case_name && i < P2V_ARRAY_SIZE(cases); i++)
        if (strcmp(cases[i].name, case_name) == 0)
            rc = &cases[i];
    if (optind != argc || !r.server || !r.fingerprint || !r.token || !rc) {
        if (case_name && !rc)
            fprintf(stderr, "p2v-rogue: unknown case '%s'\n", case_name);
        usage(stderr);
        return 2;
    }
    if (strlen(r.token) > P2V_PROTO_TOKEN_MAX) {
        fprintf(stderr, "p2v-rogue: --token is longer than %d bytes\n", P2V_PROTO_TOKEN_MAX);
        return 2;
    }
    char source_id[64];
    snprintf(source_id, sizeof source_id, "p2v-rogue:%s", rc->name);
    r.source_id = source_id;
    r.case_name = rc->name;
    if (!r.name)
        r.name = rc->default_name;
    signal(SIGPIPE, SIG_IGN);

    int ret = rc->run(&r, rc);
    rogue_conn_free();
    return ret;
}
