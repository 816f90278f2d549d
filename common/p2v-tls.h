/* TLS 1.3 for p2vkit (OpenSSL 3), and framed I/O over it. Part of libp2vcommon; every
 * OpenSSL call of the project's network code lives in common/tls.c behind this header.
 *
 * The server has a key and a self-signed certificate made by p2v_tls_make_identity().
 * The agent pins the certificate's SHA-256 fingerprint ("SHA256:" and 64 hex digits; the
 * agent also accepts the digits with colons or upper case): no CA is involved, and a
 * certificate with any other fingerprint fails the handshake. Both sides accept TLS 1.3
 * only.
 *
 * Sockets are written with MSG_NOSIGNAL: a vanished peer gives EPIPE, never SIGPIPE. A
 * connection is used by one thread at a time; a context may be shared by many threads
 * and must outlive the handshakes made with it. After any -1 from a connection's I/O
 * the stream is out of step: close it.
 */
#ifndef P2V_TLS_H
#define P2V_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"
#include "p2v-proto.h"

#define P2V_FINGERPRINT_LEN 72 /* "SHA256:" + 64 hex digits + NUL */

struct p2v_tls_ctx;  /* an SSL_CTX: a server's or a client's */
struct p2v_conn;     /* one TLS connection over a TCP socket */

/* Make a new P-256 key and a self-signed certificate (CN "p2vkit-server", 10 years),
 * written to @key_path (mode 0600) and @cert_path, each through a temporary file and a
 * rename. The fingerprint goes to @fp. 0 / -1. */
int p2v_tls_make_identity(const char *key_path, const char *cert_path,
                          char fp[P2V_FINGERPRINT_LEN], struct p2v_err *err);
/* The fingerprint of the certificate in @cert_path. 0 / -1. */
int p2v_tls_cert_fingerprint(const char *cert_path, char fp[P2V_FINGERPRINT_LEN],
                             struct p2v_err *err);
/* Normalise a user's fingerprint ("SHA256:AB:CD..." or "sha256:abcd..." or bare hex) into
 * "SHA256:" + 64 lower-case hex digits. 0 / -1 (EINVAL, naming what is wrong). */
int p2v_tls_parse_fingerprint(const char *in, char out[P2V_FINGERPRINT_LEN],
                              struct p2v_err *err);

struct p2v_tls_ctx *p2v_tls_server_ctx(const char *key_path, const char *cert_path,
                                       struct p2v_err *err);
/* A client context that accepts only a server whose certificate has @fingerprint. */
struct p2v_tls_ctx *p2v_tls_client_ctx(const char *fingerprint, struct p2v_err *err);
void p2v_tls_ctx_free(struct p2v_tls_ctx *ctx);

/* Handshake on a connected socket (the connection owns @fd from then on, also when this
 * fails: the socket is closed). @timeout_ms bounds the handshake. For a client, a wrong
 * fingerprint fails with EPERM and a message that shows the fingerprint the server
 * presented. NULL on failure. */
struct p2v_conn *p2v_conn_accept(struct p2v_tls_ctx *ctx, int fd, int timeout_ms,
                                 struct p2v_err *err);
struct p2v_conn *p2v_conn_connect(struct p2v_tls_ctx *ctx, int fd, int timeout_ms,
                                  struct p2v_err *err);
/* Connect a TCP socket to "HOST:PORT" ("[::1]:PORT" for IPv6) within @timeout_ms. fd / -1. */
int p2v_tcp_connect(const char *hostport, int timeout_ms, struct p2v_err *err);
/* Does @hostport resolve to loopback addresses only (127.0.0.0/8, ::1): a server on this
 * machine? false when it does not resolve. */
bool p2v_addr_is_loopback(const char *hostport);
/* Listen on "HOST:PORT" (SO_REUSEADDR). fd / -1. The bound port (for PORT 0) via
 * p2v_tcp_local_port(). */
int p2v_tcp_listen(const char *hostport, struct p2v_err *err);
int p2v_tcp_local_port(int fd);
/* "ADDR:PORT" of the peer, for log lines. */
const char *p2v_conn_peer(const struct p2v_conn *c);

/* Every read and write waits at most this long (default 60 s); 0 = forever. The bound is
 * per call: p2v_conn_read_frame() must get a whole frame, p2v_conn_write() must write
 * all its bytes, within it. */
void p2v_conn_set_timeout(struct p2v_conn *c, int timeout_ms);
/* Write bytes whole (used for frames built in a p2v_buf, or a DATA header then its
 * payload). 0 / -1. */
int p2v_conn_write(struct p2v_conn *c, const void *buf, size_t len, struct p2v_err *err);
/* Write a p2v_buf whole and reset it. 0 / -1. */
int p2v_conn_send(struct p2v_conn *c, struct p2v_buf *frame, struct p2v_err *err);
/* Read one frame: header, then the body into @body (grown up to P2V_PROTO_BODY_MAX),
 * then decode it into @m (which borrows from @body). 1 = a frame, 0 = the peer closed
 * cleanly between frames, -1 = error (a malformed frame: EPROTO; timeout: ETIMEDOUT). A
 * close at a frame boundary counts as clean with or without a TLS close_notify (frames
 * delimit themselves); a close inside a frame is EPROTO. The length in the header is
 * checked against P2V_PROTO_BODY_MAX before anything is allocated. */
int p2v_conn_read_frame(struct p2v_conn *c, struct p2v_buf *body, struct p2v_msg *m,
                        struct p2v_err *err);
/* True when bytes are waiting to be read (without blocking). */
bool p2v_conn_readable(struct p2v_conn *c);
/* Send a TLS close_notify (best effort) and free. NULL is accepted. */
void p2v_conn_close(struct p2v_conn *c);
/* Bytes written and read on the socket (TLS records included). */
uint64_t p2v_conn_bytes_out(const struct p2v_conn *c);
uint64_t p2v_conn_bytes_in(const struct p2v_conn *c);

#endif /* P2V_TLS_H */
