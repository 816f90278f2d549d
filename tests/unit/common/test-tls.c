/* Unit tests of the TLS layer (common/tls.c) over real sockets on 127.0.0.1: identity
 * files, fingerprint parsing, frames both ways over TLS 1.3, pinning (a wrong fingerprint
 * fails with EPERM and shows both), refusal of TLS 1.2 and of plain text without a hang,
 * clean close vs truncated frame, the body cap enforced before allocating, timeouts,
 * byte counters, a vanished peer giving an error rather than SIGPIPE (SIGPIPE is left at
 * its default here on purpose), and the TCP helpers. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "p2v-common.h"
#include "p2v-proto.h"
#include "p2v-tls.h"
#include "tap.h"

static char dir[] = "/tmp/test-tls.XXXXXX";
static char key_path[256], cert_path[256], fp[P2V_FINGERPRINT_LEN];
static int lfd, port;
static char addr[64];
static struct p2v_tls_ctx *sctx;

/* ---------------------------------------------------------------- the server thread */

enum srv_mode {
    SRV_EXCHANGE,    /* read HELLO, answer WELCOME, read a DATA, answer it back, expect close */
    SRV_HANDSHAKE,   /* handshake only: record the result */
    SRV_CLOSE,       /* handshake, then close cleanly */
    SRV_TRUNCATED,   /* handshake, then half a frame, then close */
    SRV_HUGE,        /* handshake, then a header claiming BODY_MAX + 1 */
    SRV_SILENT,      /* handshake, then wait for the client to go */
    SRV_READ_ONE,    /* handshake, then read one frame: record its result */
};

struct srv {
    enum srv_mode mode;
    int handshake_ms;
    pthread_t th;
    int accepted;      /* handshake result: 0 / -1 */
    struct p2v_err err;
    int read_r;        /* SRV_EXCHANGE / SRV_READ_ONE: result of the last read */
    double seconds;    /* how long the handshake took */
    uint64_t out, in;  /* byte counters at the end */
    bool exchange_ok;
};

static void *srv_main(void *arg)
{
    struct srv *s = arg;
    struct p2v_buf body = P2V_BUF_INIT, out = P2V_BUF_INIT;
    struct p2v_msg m;
    int fd = accept(lfd, NULL, NULL);
    double t0 = p2v_now();
    struct p2v_conn *c = p2v_conn_accept(sctx, fd, s->handshake_ms, &s->err);
    s->seconds = p2v_now() - t0;
    s->accepted = c ? 0 : -1;
    if (!c)
        return NULL;
    p2v_conn_set_timeout(c, 5000);
    switch (s->mode) {
    case SRV_EXCHANGE:
        if (p2v_conn_read_frame(c, &body, &m, &s->err) != 1 || m.type != P2V_MSG_HELLO ||
            m.u.hello.name.len != 6 || memcmp(m.u.hello.name.p, "web-01", 6) != 0)
            break;
        if (p2v_proto_put_welcome(&out, P2V_JOB_NEW, 1u << 20, "web-01") < 0 ||
            p2v_conn_send(c, &out, &s->err) < 0)
            break;
        if (p2v_conn_read_frame(c, &body, &m, &s->err) != 1 || m.type != P2V_MSG_DATA)
            break;
        /* answer with the same DATA: a 1 MiB frame each way */
        if (p2v_proto_put_data(&out, m.flags, m.u.data.disk, m.u.data.off, m.u.data.len,
                               m.u.data.hash, m.u.data.payload, m.u.data.payload_len) < 0 ||
            p2v_conn_send(c, &out, &s->err) < 0)
            break;
        s->read_r = p2v_conn_read_frame(c, &body, &m, &s->err);
        s->exchange_ok = s->read_r == 0;
        break;
    case SRV_TRUNCATED: {
        uint8_t half[P2V_PROTO_HDR_LEN + 10];
        p2v_proto_put_finished(&out, "a summary that will be cut");
        memcpy(half, out.data, sizeof half);
        p2v_conn_write(c, half, sizeof half, &s->err);
        break;
    }
    case SRV_HUGE: {
        uint8_t h[P2V_PROTO_HDR_LEN] = {0};
        p2v_put_u32be(h, P2V_PROTO_BODY_MAX + 1);
        h[4] = P2V_MSG_DATA;
        p2v_conn_write(c, h, sizeof h, &s->err);
        p2v_conn_read_frame(c, &body, &m, NULL); /* until the client goes */
        break;
    }
    case SRV_SILENT:
    case SRV_READ_ONE:
        s->read_r = p2v_conn_read_frame(c, &body, &m, &s->err);
        break;
    case SRV_HANDSHAKE:
    case SRV_CLOSE:
        break;
    }
    s->out = p2v_conn_bytes_out(c);
    s->in = p2v_conn_bytes_in(c);
    p2v_conn_close(c);
    p2v_buf_release(&body);
    p2v_buf_release(&out);
    return NULL;
}

static void srv_start(struct srv *s, enum srv_mode mode, int handshake_ms)
{
    memset(s, 0, sizeof *s);
    s->mode = mode;
    s->handshake_ms = handshake_ms;
    s->read_r = 99;
    pthread_create(&s->th, NULL, srv_main, s);
}

static void srv_join(struct srv *s)
{
    pthread_join(s->th, NULL);
}

/* ---------------------------------------------------------------- tests */

static bool is_fp(const char *s)
{
    if (strncmp(s, "SHA256:", 7) != 0 || strlen(s) != 71)
        return false;
    return strspn(s + 7, "0123456789abcdef") == 64;
}

static void test_identity(void)
{
    struct p2v_err err = {0};
    char fp2[P2V_FINGERPRINT_LEN], k2[300], c2[300];
    struct stat st;

    snprintf(key_path, sizeof key_path, "%s/server.key", dir);
    snprintf(cert_path, sizeof cert_path, "%s/server.crt", dir);
    ok(p2v_tls_make_identity(key_path, cert_path, fp, &err) == 0, "identity made");
    ok(is_fp(fp), "fingerprint is SHA256: + 64 lower-case hex digits (%s)", fp);
    ok(stat(key_path, &st) == 0 && (st.st_mode & 0777) == 0600, "key file mode 0600");
    ok(stat(cert_path, &st) == 0 && (st.st_mode & 0077) == 0044, "certificate readable");
    ok(p2v_tls_cert_fingerprint(cert_path, fp2, &err) == 0 && strcmp(fp, fp2) == 0,
       "the certificate file's fingerprint matches");
    FILE *f = fopen(cert_path, "r");
    char line[80] = "";
    ok(f && fgets(line, sizeof line, f) && strstr(line, "BEGIN CERTIFICATE"),
       "PEM certificate");
    if (f)
        fclose(f);
    snprintf(k2, sizeof k2, "%s/b.key", dir);
    snprintf(c2, sizeof c2, "%s/b.crt", dir);
    ok(p2v_tls_make_identity(k2, c2, fp2, &err) == 0 && strcmp(fp, fp2) != 0,
       "a second identity has another fingerprint");
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "openssl x509 -in %s -noout -text 2>/dev/null | grep -q 'Signature Algorithm: "
             "ecdsa-with-SHA256' && openssl x509 -in %s -noout -subject | grep -q "
             "p2vkit-server && openssl x509 -in %s -noout -checkend 315000000 >/dev/null && "
             "! openssl x509 -in %s -noout -checkend 316000000 >/dev/null",
             cert_path, cert_path, cert_path, cert_path);
    if (system("command -v openssl >/dev/null 2>&1") == 0)
        ok(system(cmd) == 0, "openssl x509: ecdsa-with-SHA256, CN p2vkit-server, 10 years");
    else
        ok(1, "# SKIP openssl command missing");
    ok(p2v_tls_cert_fingerprint("/nonexistent/x.crt", fp2, &err) == -1 && err.code == ENOENT &&
           strstr(err.msg, "'/nonexistent/x.crt'"),
       "missing certificate: ENOENT naming the file");
    ok(p2v_tls_make_identity("/nonexistent/k", "/nonexistent/c", fp2, &err) == -1 &&
           strstr(err.msg, "/nonexistent/k"),
       "identity into a missing folder fails naming it");
    struct p2v_tls_ctx *c = p2v_tls_server_ctx(k2, cert_path, &err);
    ok(!c && strstr(err.msg, "does not match the certificate"), "mismatched key refused: %s",
       err.msg);
}

static void test_parse_fingerprint(void)
{
    struct p2v_err err = {0};
    char out[P2V_FINGERPRINT_LEN], in[200];
    const char *hex = fp + 7;

    ok(p2v_tls_parse_fingerprint(fp, out, &err) == 0 && strcmp(out, fp) == 0, "canonical form");
    ok(p2v_tls_parse_fingerprint(hex, out, &err) == 0 && strcmp(out, fp) == 0, "bare hex");
    /* "sha256:AB:CD:..." upper case with colons */
    size_t n = (size_t)snprintf(in, sizeof in, "sha256:");
    for (int i = 0; i < 64; i += 2)
        n += (size_t)snprintf(in + n, sizeof in - n, "%s%c%c", i ? ":" : "",
                              hex[i] >= 'a' ? hex[i] - 32 : hex[i],
                              hex[i + 1] >= 'a' ? hex[i + 1] - 32 : hex[i + 1]);
    ok(p2v_tls_parse_fingerprint(in, out, &err) == 0 && strcmp(out, fp) == 0,
       "upper case with colons and a lower-case prefix");
    snprintf(in, sizeof in, "  %s\n", fp);
    ok(p2v_tls_parse_fingerprint(in, out, &err) == 0 && strcmp(out, fp) == 0,
       "surrounding blanks");
    snprintf(in, sizeof in, "SHA256:%.62s", hex);
    ok(p2v_tls_parse_fingerprint(in, out, &err) == -1 && err.code == EINVAL &&
           strstr(err.msg, "62 hex digits, expected 64"),
       "62 digits refused");
    snprintf(in, sizeof in, "%s00", fp);
    ok(p2v_tls_parse_fingerprint(in, out, &err) == -1 && strstr(err.msg, "more than 64"),
       "66 digits refused");
    snprintf(in, sizeof in, "SHA256:%.63sg", hex);
    ok(p2v_tls_parse_fingerprint(in, out, &err) == -1 && strstr(err.msg, "'g' is not a hex"),
       "a non-hex digit refused");
    ok(p2v_tls_parse_fingerprint("MD5:00", out, &err) == -1 && strstr(err.msg, "'M'"),
       "another digest refused");
    ok(p2v_tls_parse_fingerprint("", out, &err) == -1 && strstr(err.msg, "0 hex digits"),
       "empty refused");
    snprintf(in, sizeof in, "%s junk", fp);
    ok(p2v_tls_parse_fingerprint(in, out, &err) == -1 && strstr(err.msg, "unexpected text"),
       "trailing text refused");
    ok(p2v_tls_client_ctx("SHA256:12", &err) == NULL && err.code == EINVAL,
       "client context with a bad fingerprint refused");
}

/* Connect a client pinned to @pin; NULL on failure (err filled). */
static struct p2v_conn *client(const char *pin, struct p2v_err *err)
{
    struct p2v_tls_ctx *ctx = p2v_tls_client_ctx(pin, err);
    if (!ctx)
        return NULL;
    int fd = p2v_tcp_connect(addr, 5000, err);
    struct p2v_conn *c = fd < 0 ? NULL : p2v_conn_connect(ctx, fd, 5000, err);
    p2v_tls_ctx_free(ctx); /* the connection keeps its own reference to the SSL_CTX */
    return c;
}

static void test_exchange(void)
{
    struct srv s;
    struct p2v_err err = {0};
    struct p2v_buf out = P2V_BUF_INIT, body = P2V_BUF_INIT;
    struct p2v_msg m;
    uint8_t hash[32];

    srv_start(&s, SRV_EXCHANGE, 5000);
    struct p2v_conn *c = client(fp, &err);
    ok(c != NULL, "client handshake with the pinned fingerprint");
    if (!c) {
        diag("  %s", err.msg);
        srv_join(&s);
        return;
    }
    ok(strncmp(p2v_conn_peer(c), "127.0.0.1:", 10) == 0, "peer %s", p2v_conn_peer(c));
    ok(!p2v_conn_readable(c), "nothing readable yet");
    ok(p2v_proto_put_hello(&out, P2V_HASH_SHA256, "token", "web-01", "src", "0.1") == 0 &&
           p2v_conn_send(c, &out, &err) == 0 && out.len == 0,
       "HELLO sent, buffer reset");
    int r = p2v_conn_read_frame(c, &body, &m, &err);
    ok(r == 1 && m.type == P2V_MSG_WELCOME && m.u.welcome.window == 1u << 20 &&
           m.u.welcome.job.len == 6,
       "WELCOME received");

    uint8_t *chunk = malloc(P2V_PROTO_CHUNK_MAX);
    for (size_t i = 0; i < P2V_PROTO_CHUNK_MAX; i++)
        chunk[i] = (uint8_t)(i ^ (i >> 11));
    p2v_hash(P2V_HASH_SHA256, chunk, P2V_PROTO_CHUNK_MAX, hash);
    /* the zero-copy path: DATA header, then the payload from our own buffer */
    uint8_t dh[P2V_PROTO_DATA_HDR_LEN];
    p2v_proto_data_header(dh, 0, 1, 1ull << 30, P2V_PROTO_CHUNK_MAX, hash, P2V_PROTO_CHUNK_MAX);
    ok(p2v_conn_write(c, dh, sizeof dh, &err) == 0 &&
           p2v_conn_write(c, chunk, P2V_PROTO_CHUNK_MAX, &err) == 0,
       "1 MiB DATA written as header + payload");
    double t0 = p2v_now();
    while (!p2v_conn_readable(c) && p2v_now() - t0 < 5)
        usleep(1000);
    ok(p2v_conn_readable(c), "the echo becomes readable");
    size_t cap_before = body.cap;
    r = p2v_conn_read_frame(c, &body, &m, &err);
    ok(r == 1 && m.type == P2V_MSG_DATA && m.u.data.off == 1ull << 30 &&
           m.u.data.payload_len == P2V_PROTO_CHUNK_MAX &&
           memcmp(m.u.data.payload, chunk, P2V_PROTO_CHUNK_MAX) == 0 &&
           memcmp(m.u.data.hash, hash, 32) == 0,
       "1 MiB DATA echoed back intact");
    ok(body.cap > cap_before && body.cap <= 2 * (size_t)P2V_PROTO_BODY_MAX,
       "the body buffer grew to hold it");
    uint64_t bo = p2v_conn_bytes_out(c), bi = p2v_conn_bytes_in(c);
    ok(bo > P2V_PROTO_CHUNK_MAX + 56 && bo < P2V_PROTO_CHUNK_MAX + 8192,
       "bytes out counts the socket: %llu", (unsigned long long)bo);
    ok(bi > P2V_PROTO_CHUNK_MAX + 56 && bi < P2V_PROTO_CHUNK_MAX + 16384,
       "bytes in counts the socket: %llu", (unsigned long long)bi);
    p2v_conn_close(c);
    srv_join(&s);
    ok(s.accepted == 0 && s.exchange_ok, "server: HELLO, DATA, then a clean close read as 0");
    if (!s.exchange_ok)
        diag("  server: %s", s.err.msg);
    ok(s.in >= bo - 100 && s.out >= bi - 100, "server counters match the client's (%llu/%llu)",
       (unsigned long long)s.in, (unsigned long long)s.out);
    free(chunk);
    p2v_buf_release(&out);
    p2v_buf_release(&body);
}

static void test_wrong_fingerprint(void)
{
    struct srv s;
    struct p2v_err err = {0};
    char other[P2V_FINGERPRINT_LEN];
    snprintf(other, sizeof other, "SHA256:%064d", 0);
    other[sizeof other - 2] = '1';

    srv_start(&s, SRV_HANDSHAKE, 5000);
    struct p2v_conn *c = client(other, &err);
    srv_join(&s);
    char want[300];
    snprintf(want, sizeof want, "server fingerprint mismatch: expected %s, server presented %s",
             other, fp);
    ok(c == NULL && err.code == EPERM, "wrong pin: EPERM");
    ok(strstr(err.msg, want) != NULL, "message shows both fingerprints");
    if (!strstr(err.msg, want))
        diag("  got '%s'", err.msg);
    ok(s.accepted == -1, "the server's handshake fails too: %s", s.err.msg);
    p2v_conn_close(c);
}

static void test_tls12_refused(void)
{
    struct srv s;
    srv_start(&s, SRV_HANDSHAKE, 5000);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    struct p2v_err err = {0};
    int fd = p2v_tcp_connect(addr, 5000, &err);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    int r = SSL_connect(ssl);
    ERR_clear_error();
    srv_join(&s);
    ok(r != 1, "a TLS 1.2-only client cannot connect");
    ok(s.accepted == -1 && s.err.code == EPROTO &&
           strstr(s.err.msg, "TLS handshake with 127.0.0.1:") &&
           strstr(s.err.msg, "failed") && strstr(s.err.msg, "(not TLS 1.3?)"),
       "server: %s", s.err.msg);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
}

static void test_plaintext_refused(void)
{
    struct srv s;
    struct p2v_err err = {0};

    srv_start(&s, SRV_HANDSHAKE, 10000);
    int fd = p2v_tcp_connect(addr, 5000, &err);
    const char *req = "HELLO p2v server, this is not TLS at all\r\n\r\n";
    ok(write(fd, req, strlen(req)) == (ssize_t)strlen(req), "plain text written");
    srv_join(&s);
    ok(s.accepted == -1 && s.seconds < 3, "server refuses plain text quickly (%.3f s): %s",
       s.seconds, s.err.msg);
    ok(strstr(s.err.msg, "(not TLS 1.3?)") != NULL, "with the TLS 1.3 hint");
    close(fd);

    /* a client that connects and says nothing: the handshake's timeout ends it */
    srv_start(&s, SRV_HANDSHAKE, 300);
    fd = p2v_tcp_connect(addr, 5000, &err);
    srv_join(&s);
    ok(s.accepted == -1 && s.err.code == ETIMEDOUT && s.seconds >= 0.25 && s.seconds < 3,
       "silent client: handshake timed out (%.3f s): %s", s.seconds, s.err.msg);
    close(fd);

    /* a TLS client facing a plain-text server */
    int pair[2];
    int l2 = p2v_tcp_listen("127.0.0.1:0", &err);
    char a2[64];
    snprintf(a2, sizeof a2, "127.0.0.1:%d", p2v_tcp_local_port(l2));
    struct p2v_tls_ctx *cctx = p2v_tls_client_ctx(fp, &err);
    pair[0] = p2v_tcp_connect(a2, 5000, &err);
    pair[1] = accept(l2, NULL, NULL);
    ok(write(pair[1], "SSH-2.0-OpenSSH_9.2\r\n", 21) == 21, "the plain server speaks first");
    struct p2v_conn *c = p2v_conn_connect(cctx, pair[0], 3000, &err);
    ok(!c && strstr(err.msg, "TLS handshake with 127.0.0.1:") && strstr(err.msg, "failed"),
       "client facing plain text: %s", err.msg);
    p2v_tls_ctx_free(cctx);
    close(pair[1]);
    close(l2);
}

static void test_close_and_truncation(void)
{
    struct srv s;
    struct p2v_err err = {0};
    struct p2v_buf body = P2V_BUF_INIT;
    struct p2v_msg m;

    srv_start(&s, SRV_CLOSE, 5000);
    struct p2v_conn *c = client(fp, &err);
    int r = c ? p2v_conn_read_frame(c, &body, &m, &err) : -2;
    ok(r == 0, "clean close between frames reads as 0");
    p2v_conn_close(c);
    srv_join(&s);

    srv_start(&s, SRV_TRUNCATED, 5000);
    c = client(fp, &err);
    r = c ? p2v_conn_read_frame(c, &body, &m, &err) : -2;
    ok(r == -1 && err.code == EPROTO &&
           strstr(err.msg, "closed the connection in a FINISHED frame (10 of"),
       "truncated frame: %s", err.msg);
    p2v_conn_close(c);
    srv_join(&s);

    srv_start(&s, SRV_HUGE, 5000);
    c = client(fp, &err);
    struct p2v_buf fresh = P2V_BUF_INIT;
    r = c ? p2v_conn_read_frame(c, &fresh, &m, &err) : -2;
    ok(r == -1 && err.code == EPROTO && strstr(err.msg, "exceeds the maximum") &&
           fresh.cap == 0,
       "too-large length refused before allocating: %s", err.msg);
    p2v_conn_close(c);
    srv_join(&s);

    /* a peer that vanishes without close_notify: between frames, and within one */
    for (int cut = 0; cut < 2; cut++) {
        srv_start(&s, SRV_READ_ONE, 5000);
        SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        int fd = p2v_tcp_connect(addr, 5000, &err);
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        r = SSL_connect(ssl);
        if (cut)
            SSL_write(ssl, "\0\0\0\x10\x09\0\0\0abc", 11);
        SSL_free(ssl); /* no SSL_shutdown: just the TCP FIN */
        close(fd);
        SSL_CTX_free(ctx);
        srv_join(&s);
        if (cut)
            ok(r == 1 && s.read_r == -1 && s.err.code == EPROTO &&
                   strstr(s.err.msg, "closed the connection in a DONE frame (3 of 16"),
               "EOF without close_notify inside a frame: %s", s.err.msg);
        else
            ok(r == 1 && s.read_r == 0, "EOF without close_notify between frames reads as 0");
    }

    /* a malformed frame from the peer: EPROTO naming the peer and the frame */
    srv_start(&s, SRV_READ_ONE, 5000);
    c = client(fp, &err);
    uint8_t bad[P2V_PROTO_HDR_LEN + 1] = {0, 0, 0, 1, P2V_MSG_DONE, 0, 0, 0, 'x'};
    ok(c && p2v_conn_write(c, bad, sizeof bad, &err) == 0, "a DONE with a body written");
    p2v_conn_close(c);
    srv_join(&s);
    ok(s.read_r == -1 && s.err.code == EPROTO && strstr(s.err.msg, "from 127.0.0.1:") &&
           strstr(s.err.msg, "DONE frame: 1 trailing bytes"),
       "server: %s", s.err.msg);
    p2v_buf_release(&body);
}

static void test_timeouts_and_sigpipe(void)
{
    struct srv s;
    struct p2v_err err = {0};
    struct p2v_buf body = P2V_BUF_INIT, out = P2V_BUF_INIT;
    struct p2v_msg m;

    srv_start(&s, SRV_SILENT, 5000);
    struct p2v_conn *c = client(fp, &err);
    p2v_conn_set_timeout(c, 200);
    double t0 = p2v_now();
    int r = c ? p2v_conn_read_frame(c, &body, &m, &err) : -2;
    double dt = p2v_now() - t0;
    ok(r == -1 && err.code == ETIMEDOUT && dt >= 0.15 && dt < 2,
       "read times out after 200 ms (%.3f s): %s", dt, err.msg);
    p2v_conn_close(c);
    srv_join(&s);
    ok(s.read_r == 0, "the silent server then sees a clean close");

    /* writing to a peer that has gone: an error, not SIGPIPE (left at SIG_DFL here) */
    srv_start(&s, SRV_CLOSE, 5000);
    c = client(fp, &err);
    srv_join(&s);
    uint8_t *chunk = calloc(1, P2V_PROTO_CHUNK_MAX);
    r = 0;
    for (int i = 0; i < 50 && r == 0 && c; i++) {
        p2v_proto_put_data(&out, 0, 0, 0, P2V_PROTO_CHUNK_MAX, NULL, chunk,
                           P2V_PROTO_CHUNK_MAX);
        r = p2v_conn_send(c, &out, &err);
        usleep(10000);
    }
    ok(r == -1 && (err.code == EPIPE || err.code == ECONNRESET),
       "writing to a closed peer fails with EPIPE/ECONNRESET: %s", err.msg);
    p2v_conn_close(c);
    free(chunk);
    p2v_buf_release(&body);
    p2v_buf_release(&out);
}

static void test_tcp(void)
{
    struct p2v_err err = {0};
    int fd;

    /* a port that was just free */
    int l = p2v_tcp_listen("127.0.0.1:0", &err);
    char a[64];
    snprintf(a, sizeof a, "127.0.0.1:%d", p2v_tcp_local_port(l));
    close(l);
    fd = p2v_tcp_connect(a, 2000, &err);
    ok(fd == -1 && err.code == ECONNREFUSED && strstr(err.msg, a), "refused: %s", err.msg);
    ok(p2v_tcp_connect("localhost", 1000, &err) == -1 && err.code == EINVAL &&
           strstr(err.msg, "HOST:PORT"),
       "no port: %s", err.msg);
    ok(p2v_tcp_connect("::1:80", 1000, &err) == -1 && strstr(err.msg, "[ADDRESS]:PORT"),
       "bare IPv6: %s", err.msg);
    ok(p2v_tcp_connect("127.0.0.1:70000", 1000, &err) == -1 && strstr(err.msg, "70000"),
       "port out of range: %s", err.msg);
    ok(p2v_tcp_connect("no-such-host.invalid:80", 3000, &err) == -1 &&
           strstr(err.msg, "cannot resolve"),
       "unknown host: %s", err.msg);
    l = p2v_tcp_listen("127.0.0.1:0", &err);
    ok(l >= 0 && p2v_tcp_local_port(l) > 0, "listen on port 0");
    close(l);
    char busy[64];
    snprintf(busy, sizeof busy, "127.0.0.1:%d", port);
    ok(p2v_tcp_listen(busy, &err) == -1 && err.code == EADDRINUSE, "port in use: %s", err.msg);

    l = p2v_tcp_listen("[::1]:0", &err);
    if (l < 0) {
        ok(1, "# SKIP no IPv6 loopback: %s", err.msg);
        ok(1, "# SKIP no IPv6 loopback");
        return;
    }
    snprintf(a, sizeof a, "[::1]:%d", p2v_tcp_local_port(l));
    fd = p2v_tcp_connect(a, 2000, &err);
    int afd = accept(l, NULL, NULL);
    ok(fd >= 0 && afd >= 0, "IPv6 [::1] connect");
    /* a TLS handshake over it, to see the peer's name in brackets */
    struct p2v_tls_ctx *cctx = p2v_tls_client_ctx(fp, &err);
    struct p2v_conn *c = p2v_conn_connect(cctx, fd, 300, &err); /* nobody answers: timeout */
    ok(!c && err.code == ETIMEDOUT && strstr(err.msg, "TLS handshake with [::1]:"),
       "IPv6 peer named in brackets: %s", err.msg);
    p2v_tls_ctx_free(cctx);
    close(afd);
    close(l);
}

int main(void)
{
    struct p2v_err err = {0};
    if (!mkdtemp(dir))
        skip_all("cannot make a temporary folder");
    test_identity();
    test_parse_fingerprint();

    sctx = p2v_tls_server_ctx(key_path, cert_path, &err);
    ok(sctx != NULL, "server context loads the identity");
    if (!sctx)
        diag("  %s", err.msg);
    lfd = p2v_tcp_listen("127.0.0.1:0", &err);
    port = p2v_tcp_local_port(lfd);
    ok(lfd >= 0 && port > 0, "listening on 127.0.0.1:%d", port);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    if (sctx && lfd >= 0) {
        test_exchange();
        test_wrong_fingerprint();
        test_tls12_refused();
        test_plaintext_refused();
        test_close_and_truncation();
        test_timeouts_and_sigpipe();
        test_tcp();
    }
    close(lfd);
    p2v_tls_ctx_free(sctx);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    return exit_status();
}
