/* tls.c: TLS 1.3 with a pinned self-signed server certificate, TCP sockets, and framed
 * I/O (common/p2v-tls.h), and the content hashes (p2v_hash, p2v_digest_*: p2v-proto.h).
 * Every OpenSSL call of p2vkit lives here.
 *
 * - Identity: an EC P-256 key and a self-signed X.509 certificate (SHA-256 signature,
 *   random 127-bit serial, 10 years), written through a temporary file and a rename.
 * - Trust: no CA. The client replaces OpenSSL's chain verification with a callback that
 *   accepts the handshake exactly when the leaf certificate's SHA-256 fingerprint (over
 *   its DER encoding) equals the pinned one; TLS 1.3's CertificateVerify then proves the
 *   server holds the key. Both sides speak TLS 1.3 and nothing else.
 * - Sockets are non-blocking under the SSL object and every wait is a poll() bounded by
 *   the connection's timeout (the handshake's, then p2v_conn_set_timeout()'s): a peer
 *   that stops talking costs a timeout, never a hung thread.
 * - The SSL object talks to the socket through our own small BIO: it sends with
 *   MSG_NOSIGNAL (a peer that vanishes gives EPIPE, not SIGPIPE, so programs need not
 *   ignore the signal for this code's sake) and counts the bytes that cross the socket.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "p2v-proto.h"
#include "p2v-tls.h"

#define FP_PREFIX "SHA256:"
#define CERT_DAYS 3650
#define DEFAULT_TIMEOUT_MS 60000
#define PEER_MAX 64 /* "[" INET6_ADDRSTRLEN "]:" port */

struct p2v_tls_ctx {
    SSL_CTX *ssl;
    bool server;
    char fp[P2V_FINGERPRINT_LEN]; /* client: the pinned fingerprint */
};

struct p2v_conn {
    SSL *ssl;
    int fd;
    int timeout_ms;
    char peer[PEER_MAX];
    uint64_t bytes_in, bytes_out; /* updated by the BIO, read with __atomic */
    bool eof;                     /* the socket returned end of file */
    int sock_errno;               /* the last error of send()/recv() */
    bool fp_checked;              /* client: the verify callback saw the leaf */
    bool fp_mismatch;
    char presented[P2V_FINGERPRINT_LEN];
};

/* ---------------------------------------------------------------- OpenSSL errors */

/* The reason of the earliest error queued by OpenSSL on this thread, and its code. */
static unsigned long ssl_err_reason(char *buf, size_t len)
{
    unsigned long e = ERR_get_error(), first = e;
    while (ERR_get_error() != 0)
        ;
    if (!first) {
        snprintf(buf, len, "unknown error");
        return 0;
    }
    const char *r = ERR_reason_error_string(first);
    if (r)
        snprintf(buf, len, "%s", r);
    else
        ERR_error_string_n(first, buf, len);
    return first;
}

/* p2v_err_set() with ": REASON" of OpenSSL's queued error appended. */
__attribute__((format(printf, 3, 4))) static int ssl_fail(struct p2v_err *err, int code,
                                                          const char *fmt, ...)
{
    char msg[P2V_ERR_MSG_MAX], reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ssl_err_reason(reason, sizeof reason);
    return p2v_err_set(err, code, "%s: %s", msg, reason);
}

/* ---------------------------------------------------------------- fingerprints */

static void fp_format(const unsigned char md[32], char fp[P2V_FINGERPRINT_LEN])
{
    static const char hex[] = "0123456789abcdef";
    memcpy(fp, FP_PREFIX, sizeof FP_PREFIX - 1);
    char *p = fp + sizeof FP_PREFIX - 1;
    for (int i = 0; i < 32; i++) {
        *p++ = hex[md[i] >> 4];
        *p++ = hex[md[i] & 15];
    }
    *p = '\0';
}

static int x509_fingerprint(X509 *x, char fp[P2V_FINGERPRINT_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!X509_digest(x, EVP_sha256(), md, &n) || n != 32)
        return -1;
    fp_format(md, fp);
    return 0;
}

int p2v_tls_parse_fingerprint(const char *in, char out[P2V_FINGERPRINT_LEN],
                              struct p2v_err *err)
{
    unsigned char md[32];
    size_t digits = 0;
    const char *p = in ? in : "";

    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, FP_PREFIX, sizeof FP_PREFIX - 1) == 0)
        p += sizeof FP_PREFIX - 1;
    for (; *p && *p != ' ' && *p != '\t' && *p != '\n'; p++) {
        int v;
        if (*p == ':')
            continue;
        if (*p >= '0' && *p <= '9')
            v = *p - '0';
        else if (*p >= 'a' && *p <= 'f')
            v = *p - 'a' + 10;
        else if (*p >= 'A' && *p <= 'F')
            v = *p - 'A' + 10;
        else
            return p2v_err_set(err, EINVAL,
                               "fingerprint '%s': '%c' is not a hex digit (expected "
                               "SHA256: and 64 hex digits)",
                               in, *p);
        if (digits >= 64)
            return p2v_err_set(err, EINVAL,
                               "fingerprint '%s': more than 64 hex digits", in);
        if (digits % 2 == 0)
            md[digits / 2] = (unsigned char)(v << 4);
        else
            md[digits / 2] |= (unsigned char)v;
        digits++;
    }
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    if (*p)
        return p2v_err_set(err, EINVAL, "fingerprint '%s': unexpected text after the digits",
                           in);
    if (digits != 64)
        return p2v_err_set(err, EINVAL,
                           "fingerprint '%s': %zu hex digits, expected 64 (SHA256:...)",
                           in ? in : "", digits);
    fp_format(md, out);
    return 0;
}

/* ---------------------------------------------------------------- identity */

static X509 *read_cert(const char *path, struct p2v_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        p2v_err_errno(err, "cannot open certificate '%s'", path);
        return NULL;
    }
    ERR_clear_error();
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x)
        ssl_fail(err, EINVAL, "cannot read certificate '%s'", path);
    return x;
}

int p2v_tls_cert_fingerprint(const char *cert_path, char fp[P2V_FINGERPRINT_LEN],
                             struct p2v_err *err)
{
    X509 *x = read_cert(cert_path, err);
    if (!x)
        return -1;
    int r = x509_fingerprint(x, fp);
    X509_free(x);
    if (r < 0)
        return p2v_err_set(err, EIO, "cannot hash certificate '%s'", cert_path);
    return 0;
}

/* fsync the folder holding @path, so that a rename into it is durable. */
static void sync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

/* Write @path through "@path.XXXXXX" + fsync + rename, with @mode. @write_pem returns 1
 * on success (OpenSSL's convention). */
static int write_pem_file(const char *path, mode_t mode, int (*write_pem)(FILE *, void *),
                          void *obj, struct p2v_err *err)
{
    size_t n = strlen(path);
    char *tmp = malloc(n + 8);
    int fd = -1, r = -1;
    FILE *f = NULL;
    if (!tmp)
        return p2v_err_errno(err, "cannot write '%s'", path);
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".XXXXXX", 8);
    if ((fd = mkstemp(tmp)) < 0) { /* mode 0600 from the start */
        p2v_err_errno(err, "cannot create '%s'", tmp);
        goto out;
    }
    if (fchmod(fd, mode) < 0) {
        p2v_err_errno(err, "cannot set the mode of '%s'", tmp);
        goto out;
    }
    if (!(f = fdopen(fd, "w"))) {
        p2v_err_errno(err, "cannot write '%s'", tmp);
        goto out;
    }
    fd = -1;
    ERR_clear_error();
    if (write_pem(f, obj) != 1) {
        ssl_fail(err, EIO, "cannot write '%s'", tmp);
        goto out;
    }
    if (fflush(f) != 0 || fsync(fileno(f)) < 0) {
        p2v_err_errno(err, "cannot write '%s'", tmp);
        goto out;
    }
    int rc = fclose(f);
    f = NULL;
    if (rc != 0) {
        p2v_err_errno(err, "cannot write '%s'", tmp);
        goto out;
    }
    if (rename(tmp, path) < 0) {
        p2v_err_errno(err, "cannot rename '%s' to '%s'", tmp, path);
        goto out;
    }
    sync_dir_of(path);
    r = 0;
out:
    if (f)
        fclose(f);
    if (fd >= 0)
        close(fd);
    if (r < 0)
        unlink(tmp);
    free(tmp);
    return r;
}

static int pem_key(FILE *f, void *obj)
{
    return PEM_write_PrivateKey(f, obj, NULL, NULL, 0, NULL, NULL);
}

static int pem_cert(FILE *f, void *obj)
{
    return PEM_write_X509(f, obj);
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!e)
        return -1;
    int r = X509_add_ext(x, e, -1) ? 0 : -1;
    X509_EXTENSION_free(e);
    return r;
}

int p2v_tls_make_identity(const char *key_path, const char *cert_path,
                          char fp[P2V_FINGERPRINT_LEN], struct p2v_err *err)
{
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    BIGNUM *bn = NULL;
    unsigned char serial[16];
    char out_fp[P2V_FINGERPRINT_LEN];
    int r = -1;

    ERR_clear_error();
    if (!(key = EVP_EC_gen("P-256"))) {
        ssl_fail(err, EIO, "cannot make a %s key", "P-256");
        goto out;
    }
    if (RAND_bytes(serial, sizeof serial) != 1) {
        ssl_fail(err, EIO, "cannot make a %s", "certificate serial");
        goto out;
    }
    serial[0] &= 0x7f; /* a positive INTEGER of at most 16 bytes (RFC 5280 4.1.2.2) */
    serial[0] |= 0x40;
    X509_NAME *name;
    if (!(x = X509_new()) || !X509_set_version(x, 2) ||
        !(bn = BN_bin2bn(serial, sizeof serial, NULL)) ||
        !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), 0) ||
        !X509_time_adj_ex(X509_getm_notAfter(x), CERT_DAYS, 0, NULL) ||
        !X509_set_pubkey(x, key) || !(name = X509_get_subject_name(x)) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                    (const unsigned char *)"p2vkit-server", -1, -1, 0) ||
        !X509_set_issuer_name(x, name) ||
        add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(x, NID_subject_key_identifier, "hash") < 0 ||
        !X509_sign(x, key, EVP_sha256())) {
        ssl_fail(err, EIO, "cannot make the %s", "server certificate");
        goto out;
    }
    if (x509_fingerprint(x, out_fp) < 0) {
        p2v_err_set(err, EIO, "cannot hash the server certificate");
        goto out;
    }
    if (write_pem_file(key_path, 0600, pem_key, key, err) < 0 ||
        write_pem_file(cert_path, 0644, pem_cert, x, err) < 0)
        goto out;
    memcpy(fp, out_fp, P2V_FINGERPRINT_LEN);
    r = 0;
out:
    BN_free(bn);
    X509_free(x);
    EVP_PKEY_free(key);
    return r;
}

/* ---------------------------------------------------------------- contexts */

#define TLS_READ_BUFFER (256u << 10)

static SSL_CTX *ctx_new(bool server, struct p2v_err *err)
{
    ERR_clear_error();
    SSL_CTX *s = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!s) {
        ssl_fail(err, EIO, "cannot make a TLS %s context", server ? "server" : "client");
        return NULL;
    }
    if (!SSL_CTX_set_min_proto_version(s, TLS1_3_VERSION) ||
        !SSL_CTX_set_max_proto_version(s, TLS1_3_VERSION)) {
        ssl_fail(err, EIO, "cannot restrict the TLS %s context to TLS 1.3",
                 server ? "server" : "client");
        SSL_CTX_free(s);
        return NULL;
    }
    /* AES-128-GCM first (TLS 1.3's mandatory suite): a third cheaper per byte than
     * AES-256-GCM, and every byte of a disk goes through it on both sides */
    if (!SSL_CTX_set_ciphersuites(s, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                     "TLS_CHACHA20_POLY1305_SHA256")) {
        ssl_fail(err, EIO, "cannot set the TLS 1.3 cipher suites");
        SSL_CTX_free(s);
        return NULL;
    }
    SSL_CTX_set_mode(s, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Bulk data: read ahead into a buffer of several records, so that a 1 MiB frame
     * costs a few dozen reads of the socket rather than two per 16 KiB record (header,
     * then body); SSL_has_pending() sees what is buffered (p2v_conn_readable). */
    SSL_CTX_set_read_ahead(s, 1);
    SSL_CTX_set_default_read_buffer_len(s, TLS_READ_BUFFER);
    /* every session is a fresh handshake: no tickets, no cache */
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
    if (server)
        SSL_CTX_set_num_tickets(s, 0);
    return s;
}

struct p2v_tls_ctx *p2v_tls_server_ctx(const char *key_path, const char *cert_path,
                                       struct p2v_err *err)
{
    struct p2v_tls_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        p2v_err_errno(err, "cannot make a TLS context");
        return NULL;
    }
    c->server = true;
    if (!(c->ssl = ctx_new(true, err)))
        goto fail;
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(c->ssl, cert_path) != 1) {
        ssl_fail(err, EINVAL, "cannot load the certificate '%s'", cert_path);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c->ssl, key_path, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            p2v_err_set(err, EINVAL, "the key '%s' does not match the certificate '%s'",
                        key_path, cert_path);
        } else {
            ssl_fail(err, EINVAL, "cannot load the key '%s'", key_path);
        }
        goto fail;
    }
    if (SSL_CTX_check_private_key(c->ssl) != 1) {
        ssl_fail(err, EINVAL, "the key '%s' does not match the certificate", key_path);
        goto fail;
    }
    return c;
fail:
    p2v_tls_ctx_free(c);
    return NULL;
}

/* The client's whole verification: the leaf's fingerprint must be the pinned one. The
 * chain is not built: a self-signed certificate is what we expect. */
static int verify_pinned(X509_STORE_CTX *xs, void *arg)
{
    struct p2v_tls_ctx *ctx = arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct p2v_conn *c = ssl ? SSL_get_app_data(ssl) : NULL;
    X509 *leaf = X509_STORE_CTX_get0_cert(xs);
    char fp[P2V_FINGERPRINT_LEN];

    if (!leaf || x509_fingerprint(leaf, fp) < 0) {
        X509_STORE_CTX_set_error(xs, X509_V_ERR_UNSPECIFIED);
        return 0;
    }
    bool match = CRYPTO_memcmp(fp, ctx->fp, sizeof fp) == 0;
    if (c) {
        memcpy(c->presented, fp, sizeof fp);
        c->fp_checked = true;
        c->fp_mismatch = !match;
    }
    if (!match) {
        X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
        return 0;
    }
    X509_STORE_CTX_set_error(xs, X509_V_OK);
    return 1;
}

struct p2v_tls_ctx *p2v_tls_client_ctx(const char *fingerprint, struct p2v_err *err)
{
    struct p2v_tls_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        p2v_err_errno(err, "cannot make a TLS context");
        return NULL;
    }
    if (p2v_tls_parse_fingerprint(fingerprint, c->fp, err) < 0)
        goto fail;
    if (!(c->ssl = ctx_new(false, err)))
        goto fail;
    SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(c->ssl, verify_pinned, c);
    return c;
fail:
    p2v_tls_ctx_free(c);
    return NULL;
}

void p2v_tls_ctx_free(struct p2v_tls_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl);
    free(ctx);
}

/* ---------------------------------------------------------------- the socket BIO */

static pthread_once_t bio_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *bio_method;

static int bio_sock_write(BIO *b, const char *buf, int len)
{
    struct p2v_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = send(c->fd, buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0) {
        c->sock_errno = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            BIO_set_retry_write(b);
        return -1;
    }
    __atomic_fetch_add(&c->bytes_out, (uint64_t)n, __ATOMIC_RELAXED);
    return (int)n;
}

static int bio_sock_read(BIO *b, char *buf, int len)
{
    struct p2v_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = recv(c->fd, buf, (size_t)len, 0);
    if (n < 0) {
        c->sock_errno = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            BIO_set_retry_read(b);
        return -1;
    }
    if (n == 0)
        c->eof = true;
    __atomic_fetch_add(&c->bytes_in, (uint64_t)n, __ATOMIC_RELAXED);
    return (int)n;
}

static long bio_sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct p2v_conn *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_EOF: return c && c->eof;
    case BIO_C_GET_FD:
        if (!c)
            return -1;
        if (ptr)
            *(int *)ptr = c->fd;
        return c->fd;
    default: return 0;
    }
}

static int bio_sock_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_init_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK |
                                     BIO_TYPE_DESCRIPTOR,
                                 "p2v socket");
    if (m && BIO_meth_set_write(m, bio_sock_write) && BIO_meth_set_read(m, bio_sock_read) &&
        BIO_meth_set_ctrl(m, bio_sock_ctrl) && BIO_meth_set_create(m, bio_sock_create))
        bio_method = m;
    else
        BIO_meth_free(m);
}

/* ---------------------------------------------------------------- connections */

static void format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
        port = ntohs(s->sin_port);
        snprintf(buf, len, "%s:%d", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof host);
        port = ntohs(s->sin6_port);
        snprintf(buf, len, "[%s]:%d", host, port);
    } else {
        snprintf(buf, len, "unknown");
    }
}

static int set_nonblock(int fd, bool on)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    fl = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
    return fcntl(fd, F_SETFL, fl);
}

/* Milliseconds left before @deadline (0: no deadline → -1, poll forever). */
static int ms_left(double deadline)
{
    if (deadline == 0)
        return -1;
    double left = (deadline - p2v_now()) * 1000.0;
    if (left <= 0)
        return 0;
    return left > 1e9 ? 1000000000 : (int)left + 1;
}

static double deadline_of(int timeout_ms)
{
    return timeout_ms > 0 ? p2v_now() + timeout_ms / 1000.0 : 0;
}

/* Wait until the socket can do what @sslerr asks (WANT_READ or WANT_WRITE). 0 / -1
 * (ETIMEDOUT, or the errno of poll). */
static int conn_wait(struct p2v_conn *c, int sslerr, double deadline, const char *doing,
                     struct p2v_err *err)
{
    struct pollfd p = {.fd = c->fd, .events = sslerr == SSL_ERROR_WANT_WRITE ? POLLOUT
                                                                              : POLLIN};
    for (;;) {
        int left = ms_left(deadline);
        if (left == 0)
            break;
        int r = poll(&p, 1, left);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return p2v_err_errno(err, "%s %s", doing, c->peer);
    }
    return p2v_err_set(err, ETIMEDOUT, "%s %s: timed out", doing, c->peer);
}

/* Describe a failed SSL call's error into @err (code EIO unless the socket said). */
static int conn_fail(struct p2v_conn *c, int sslerr, const char *doing, struct p2v_err *err)
{
    char reason[256];
    unsigned long e = ssl_err_reason(reason, sizeof reason);
    if (sslerr == SSL_ERROR_SYSCALL && !e) {
        if (c->sock_errno)
            return p2v_err_set(err, c->sock_errno, "%s %s: %s", doing, c->peer,
                               strerror(c->sock_errno));
        return p2v_err_set(err, ECONNRESET, "%s %s: the connection was closed", doing,
                           c->peer);
    }
    return p2v_err_set(err, EIO, "%s %s: %s", doing, c->peer, reason);
}

static struct p2v_conn *conn_new(struct p2v_tls_ctx *ctx, int fd, struct p2v_err *err)
{
    struct p2v_conn *c = calloc(1, sizeof *c);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int one = 1;
    BIO *bio;

    if (!c) {
        p2v_err_errno(err, "cannot make a connection");
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->timeout_ms = DEFAULT_TIMEOUT_MS;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
        format_addr((struct sockaddr *)&ss, c->peer, sizeof c->peer);
    else
        snprintf(c->peer, sizeof c->peer, "unknown peer");
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    if (set_nonblock(fd, true) < 0) {
        p2v_err_errno(err, "connection with %s", c->peer);
        goto fail;
    }
    pthread_once(&bio_once, bio_init_method);
    ERR_clear_error();
    if (!bio_method || !(c->ssl = SSL_new(ctx->ssl)) || !(bio = BIO_new(bio_method))) {
        ssl_fail(err, ENOMEM, "connection with %s", c->peer);
        goto fail;
    }
    BIO_set_data(bio, c);
    SSL_set_bio(c->ssl, bio, bio); /* one reference, owned by the SSL */
    SSL_set_app_data(c->ssl, c);
    return c;
fail:
    p2v_conn_close(c);
    return NULL;
}

/* The handshake's failure, with a hint when the peer seems not to speak TLS 1.3. */
static int handshake_fail(struct p2v_conn *c, int sslerr, struct p2v_err *err)
{
    char reason[256];
    unsigned long e = ERR_peek_error();
    int r = ERR_GET_REASON(e);
    bool version = ERR_GET_LIB(e) == ERR_LIB_SSL &&
                   (r == SSL_R_WRONG_VERSION_NUMBER || r == SSL_R_UNSUPPORTED_PROTOCOL ||
                    r == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION ||
                    r == SSL_R_PACKET_LENGTH_TOO_LONG || r == SSL_R_HTTP_REQUEST ||
                    r == SSL_R_NO_PROTOCOLS_AVAILABLE ||
                    r == SSL_R_UNEXPECTED_EOF_WHILE_READING);
    if (sslerr == SSL_ERROR_SYSCALL && !e) {
        if (c->sock_errno)
            return p2v_err_set(err, c->sock_errno, "TLS handshake with %s failed: %s",
                               c->peer, strerror(c->sock_errno));
        return p2v_err_set(err, ECONNRESET,
                           "TLS handshake with %s failed: the peer closed the connection "
                           "(not TLS 1.3?)",
                           c->peer);
    }
    ssl_err_reason(reason, sizeof reason);
    return p2v_err_set(err, EPROTO, "TLS handshake with %s failed: %s%s", c->peer, reason,
                       version ? " (not TLS 1.3?)" : "");
}

static struct p2v_conn *conn_handshake(struct p2v_tls_ctx *ctx, int fd, bool server,
                                       int timeout_ms, struct p2v_err *err)
{
    struct p2v_conn *c = conn_new(ctx, fd, err);
    if (!c)
        return NULL;
    double deadline = deadline_of(timeout_ms);
    for (;;) {
        ERR_clear_error();
        c->sock_errno = 0;
        int r = server ? SSL_accept(c->ssl) : SSL_connect(c->ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (conn_wait(c, e, deadline, "TLS handshake with", err) < 0) {
                if (err && err->code == ETIMEDOUT)
                    p2v_err_set(err, ETIMEDOUT, "TLS handshake with %s timed out after %d ms",
                                c->peer, timeout_ms);
                goto fail;
            }
            continue;
        }
        if (!server && c->fp_mismatch) {
            ERR_clear_error();
            p2v_err_set(err, EPERM,
                        "server fingerprint mismatch: expected %s, server presented %s",
                        ctx->fp, c->presented);
            goto fail;
        }
        handshake_fail(c, e, err);
        goto fail;
    }
    if (SSL_version(c->ssl) != TLS1_3_VERSION) { /* cannot happen: both ends pin 1.3 */
        p2v_err_set(err, EPROTO, "TLS handshake with %s: not TLS 1.3", c->peer);
        goto fail;
    }
    if (!server) {
        /* belt and braces: the callback ran and the leaf is the pinned certificate */
        X509 *leaf = SSL_get0_peer_certificate(c->ssl);
        char fp[P2V_FINGERPRINT_LEN];
        if (!c->fp_checked || !leaf || x509_fingerprint(leaf, fp) < 0 ||
            strcmp(fp, ctx->fp) != 0) {
            p2v_err_set(err, EPERM, "server fingerprint mismatch: expected %s, server "
                                    "presented %s",
                        ctx->fp, leaf ? fp : "no certificate");
            goto fail;
        }
    }
    return c;
fail:
    SSL_free(c->ssl); /* no close_notify after a failed handshake */
    c->ssl = NULL;
    p2v_conn_close(c);
    return NULL;
}

struct p2v_conn *p2v_conn_accept(struct p2v_tls_ctx *ctx, int fd, int timeout_ms,
                                 struct p2v_err *err)
{
    return conn_handshake(ctx, fd, true, timeout_ms, err);
}

struct p2v_conn *p2v_conn_connect(struct p2v_tls_ctx *ctx, int fd, int timeout_ms,
                                  struct p2v_err *err)
{
    return conn_handshake(ctx, fd, false, timeout_ms, err);
}

const char *p2v_conn_peer(const struct p2v_conn *c)
{
    return c->peer;
}

void p2v_conn_set_timeout(struct p2v_conn *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

int p2v_conn_write(struct p2v_conn *c, const void *buf, size_t len, struct p2v_err *err)
{
    double deadline = deadline_of(c->timeout_ms);
    size_t done = 0;
    while (done < len) {
        size_t n = 0;
        ERR_clear_error();
        c->sock_errno = 0;
        int r = SSL_write_ex(c->ssl, (const uint8_t *)buf + done, len - done, &n);
        if (r == 1) {
            done += n;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (conn_wait(c, e, deadline, "writing to", err) < 0)
                return -1;
            continue;
        }
        return conn_fail(c, e, "writing to", err);
    }
    return 0;
}

int p2v_conn_send(struct p2v_conn *c, struct p2v_buf *frame, struct p2v_err *err)
{
    int r = p2v_conn_write(c, frame->data, frame->len, err);
    p2v_buf_reset(frame);
    return r;
}

/* Read exactly @n bytes. 1 = read, 0 = end of file (after *got bytes), -1 = error. */
static int conn_read_full(struct p2v_conn *c, void *buf, size_t n, size_t *got,
                          double deadline, struct p2v_err *err)
{
    *got = 0;
    while (*got < n) {
        size_t k = 0;
        ERR_clear_error();
        c->sock_errno = 0;
        int r = SSL_read_ex(c->ssl, (uint8_t *)buf + *got, n - *got, &k);
        if (r == 1) {
            *got += k;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        switch (e) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE:
            if (conn_wait(c, e, deadline, "reading from", err) < 0)
                return -1;
            continue;
        case SSL_ERROR_ZERO_RETURN: /* close_notify */
            return 0;
        case SSL_ERROR_SYSCALL:
            if (ERR_peek_error() == 0 && c->sock_errno == 0) /* EOF without close_notify */
                return 0;
            return conn_fail(c, e, "reading from", err);
        case SSL_ERROR_SSL:
            if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                ERR_clear_error();
                return 0;
            }
            return conn_fail(c, e, "reading from", err);
        default:
            return conn_fail(c, e, "reading from", err);
        }
    }
    return 1;
}

int p2v_conn_read_frame(struct p2v_conn *c, struct p2v_buf *body, struct p2v_msg *m,
                        struct p2v_err *err)
{
    double deadline = deadline_of(c->timeout_ms);
    uint8_t hdr[P2V_PROTO_HDR_LEN];
    uint8_t type, flags;
    uint32_t len;
    size_t got;
    int r;

    r = conn_read_full(c, hdr, sizeof hdr, &got, deadline, err);
    if (r < 0)
        goto io_error;
    if (r == 0) {
        if (got == 0)
            return 0; /* closed between frames; a frame boundary is a safe place to stop */
        return p2v_err_set(err, EPROTO,
                           "%s closed the connection in a frame header (%zu of %d bytes)",
                           c->peer, got, P2V_PROTO_HDR_LEN);
    }
    if (p2v_proto_header(hdr, &type, &flags, &len, err) < 0)
        return p2v_err_prefix(err, "from %s", c->peer);
    /* len <= P2V_PROTO_BODY_MAX: checked before anything is allocated */
    p2v_buf_reset(body);
    if (p2v_buf_reserve(body, len) < 0)
        return p2v_err_errno(err, "from %s: %s frame of %u bytes", c->peer,
                             p2v_proto_type_name(type), len);
    r = conn_read_full(c, body->data, len, &got, deadline, err);
    if (r < 0)
        goto io_error;
    if (r == 0)
        return p2v_err_set(err, EPROTO,
                           "%s closed the connection in a %s frame (%zu of %u body bytes)",
                           c->peer, p2v_proto_type_name(type), got, len);
    body->len = len;
    if (p2v_proto_decode(type, flags, body->data, len, m, err) < 0)
        return p2v_err_prefix(err, "from %s", c->peer);
    return 1;
io_error:
    if (err && err->code == ETIMEDOUT)
        p2v_err_set(err, ETIMEDOUT, "reading from %s: no frame within %d ms", c->peer,
                    c->timeout_ms);
    return -1;
}

bool p2v_conn_readable(struct p2v_conn *c)
{
    if (SSL_has_pending(c->ssl))
        return true;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

void p2v_conn_close(struct p2v_conn *c)
{
    if (!c)
        return;
    if (c->ssl) {
        ERR_clear_error();
        SSL_shutdown(c->ssl); /* best effort: one non-blocking try */
        SSL_free(c->ssl);
        ERR_clear_error();
    }
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

uint64_t p2v_conn_bytes_out(const struct p2v_conn *c)
{
    return __atomic_load_n(&c->bytes_out, __ATOMIC_RELAXED);
}

uint64_t p2v_conn_bytes_in(const struct p2v_conn *c)
{
    return __atomic_load_n(&c->bytes_in, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- TCP */

/* Split "HOST:PORT" or "[V6]:PORT" into @host (may become "") and @port. */
static int split_hostport(const char *in, char *host, size_t hlen, char *port, size_t plen,
                          struct p2v_err *err)
{
    const char *h, *p, *colon;
    size_t hn;
    if (in[0] == '[') {
        const char *close_br = strchr(in, ']');
        if (!close_br || close_br[1] != ':')
            return p2v_err_set(err, EINVAL, "address '%s': expected [ADDRESS]:PORT", in);
        h = in + 1;
        hn = (size_t)(close_br - h);
        p = close_br + 2;
    } else {
        colon = strrchr(in, ':');
        if (!colon)
            return p2v_err_set(err, EINVAL, "address '%s': expected HOST:PORT", in);
        h = in;
        hn = (size_t)(colon - in);
        if (memchr(in, ':', hn))
            return p2v_err_set(err, EINVAL,
                               "address '%s': write an IPv6 address as [ADDRESS]:PORT", in);
        p = colon + 1;
    }
    size_t pn = strlen(p);
    if (pn == 0 || pn > 5 || strspn(p, "0123456789") != pn || atoi(p) > 65535)
        return p2v_err_set(err, EINVAL, "address '%s': port '%s' is not 0..65535", in, p);
    if (hn >= hlen || pn >= plen)
        return p2v_err_set(err, EINVAL, "address '%s' is too long", in);
    memcpy(host, h, hn);
    host[hn] = '\0';
    memcpy(port, p, pn + 1);
    return 0;
}

static int resolve(const char *hostport, bool passive, struct addrinfo **res,
                   struct p2v_err *err)
{
    char host[256], port[8];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    if (split_hostport(hostport, host, sizeof host, port, sizeof port, err) < 0)
        return -1;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    bool any = host[0] == '\0' || strcmp(host, "*") == 0;
    if (any && !passive)
        return p2v_err_set(err, EINVAL, "address '%s': no host", hostport);
    int r = getaddrinfo(any ? NULL : host, port, &hints, res);
    if (r != 0)
        return p2v_err_set(err, r == EAI_SYSTEM ? errno : ENOENT, "cannot resolve '%s': %s",
                           hostport, r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
    return 0;
}

/* Connect @fd (non-blocking) to @ai within @deadline. 0 / -1 with errno. */
static int connect_one(int fd, const struct addrinfo *ai, double deadline)
{
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return -1;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    for (;;) {
        int left = ms_left(deadline);
        if (left == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        int r = poll(&p, 1, left);
        if (r > 0)
            break;
        if (r < 0 && errno != EINTR)
            return -1;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        return -1;
    if (soerr) {
        errno = soerr;
        return -1;
    }
    return 0;
}

int p2v_tcp_connect(const char *hostport, int timeout_ms, struct p2v_err *err)
{
    struct addrinfo *res = NULL;
    double deadline = deadline_of(timeout_ms);
    int fd = -1, last = ECONNREFUSED;
    if (resolve(hostport, false, &res, err) < 0)
        return -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect_one(fd, ai, deadline) == 0 && set_nonblock(fd, false) == 0) {
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
            break;
        }
        last = errno;
        close(fd);
        fd = -1;
        if (last == ETIMEDOUT)
            break;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (last == ETIMEDOUT)
            return p2v_err_set(err, ETIMEDOUT, "cannot connect to '%s': timed out after %d ms",
                               hostport, timeout_ms);
        return p2v_err_set(err, last, "cannot connect to '%s': %s", hostport, strerror(last));
    }
    return fd;
}

static bool sockaddr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a6) || (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
    }
    return false;
}

bool p2v_addr_is_loopback(const char *hostport)
{
    struct addrinfo *res = NULL;
    struct p2v_err err = {0};
    if (resolve(hostport, false, &res, &err) < 0)
        return false;
    bool all = res != NULL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        all = all && sockaddr_is_loopback(ai->ai_addr);
    freeaddrinfo(res);
    return all;
}

int p2v_tcp_listen(const char *hostport, struct p2v_err *err)
{
    struct addrinfo *res = NULL;
    int fd = -1, last = EADDRNOTAVAIL;
    if (resolve(hostport, true, &res, err) < 0)
        return -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int one = 1;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0)
            break;
        last = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return p2v_err_set(err, last, "cannot listen on '%s': %s", hostport, strerror(last));
    return fd;
}

int p2v_tcp_local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

/* ---------------------------------------------------------------- hashes */

/* Fetched once: an implicit fetch per call (EVP_sha256()) would look the provider up
 * every time, under a lock shared by every hashing thread. */
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_sha256, *md_blake2b;

static void md_init(void)
{
    md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    md_blake2b = EVP_MD_fetch(NULL, "BLAKE2B-512", NULL);
}

static const EVP_MD *md_type(enum p2v_hash_algo algo)
{
    pthread_once(&md_once, md_init);
    switch (algo) {
    case P2V_HASH_SHA256: return md_sha256 ? md_sha256 : EVP_sha256();
    case P2V_HASH_BLAKE2B: return md_blake2b ? md_blake2b : EVP_blake2b512();
    default: return NULL;
    }
}

int p2v_hash(enum p2v_hash_algo algo, const void *data, size_t len,
             uint8_t out[P2V_PROTO_HASH_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    const EVP_MD *type = md_type(algo);
    if (!type) {
        errno = EINVAL;
        return -1;
    }
    if (!EVP_Digest(len ? data : "", len, md, &n, type, NULL) || n < P2V_PROTO_HASH_LEN) {
        errno = EIO;
        return -1;
    }
    memcpy(out, md, P2V_PROTO_HASH_LEN);
    return 0;
}

struct p2v_digest {
    EVP_MD_CTX *ctx;
    const EVP_MD *type;
};

struct p2v_digest *p2v_digest_new(enum p2v_hash_algo algo)
{
    const EVP_MD *type = md_type(algo);
    if (!type) {
        errno = EINVAL;
        return NULL;
    }
    struct p2v_digest *d = calloc(1, sizeof *d);
    if (!d || !(d->ctx = EVP_MD_CTX_new())) {
        free(d);
        errno = ENOMEM;
        return NULL;
    }
    d->type = type;
    if (EVP_DigestInit_ex(d->ctx, type, NULL) != 1) {
        p2v_digest_free(d);
        errno = EIO;
        return NULL;
    }
    return d;
}

int p2v_digest_update(struct p2v_digest *d, const void *data, size_t len)
{
    if (EVP_DigestUpdate(d->ctx, data, len) != 1) {
        errno = EIO;
        return -1;
    }
    return 0;
}

int p2v_digest_final(struct p2v_digest *d, uint8_t out[P2V_PROTO_HASH_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(d->ctx, md, &n) != 1 || n < P2V_PROTO_HASH_LEN ||
        EVP_DigestInit_ex(d->ctx, d->type, NULL) != 1) {
        errno = EIO;
        return -1;
    }
    memcpy(out, md, P2V_PROTO_HASH_LEN);
    return 0;
}

void p2v_digest_free(struct p2v_digest *d)
{
    if (!d)
        return;
    EVP_MD_CTX_free(d->ctx);
    free(d);
}
