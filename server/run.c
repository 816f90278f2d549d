/* run.c: `p2v-server run` — the listener. It opens the store (taking its lock), loads the
 * TLS identity, listens, and accepts connections in a poll loop that also watches a
 * self-pipe written by the SIGTERM / SIGINT handler. Each connection gets a detached
 * thread (session.c) that does the TLS handshake itself, so a slow or hostile client
 * never holds up the accept loop.
 *
 * Stopping: stop accepting, tell every session (a pipe that is written once and never
 * drained, so every session's poll sees it), let them commit and send ERROR SHUTDOWN,
 * then wait for them; sessions stuck in I/O are unblocked with shutdown(2) after a grace
 * period.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "p2v-tls.h"
#include "server.h"

#define REJECT_MAX 16          /* sessions over --max-sessions that get an ERROR BUSY */
#define STOP_GRACE_S 3         /* seconds before stuck sessions are shut down */
#define STOP_WAIT_S 10

static int sig_pipe[2] = {-1, -1};
static volatile sig_atomic_t sig_caught;

static void on_signal(int sig)
{
    int e = errno;
    sig_caught = sig;
    if (sig_pipe[1] >= 0) {
        ssize_t w = write(sig_pipe[1], "x", 1);
        (void)w;
    }
    errno = e;
}

void srv_log(struct srv_server *srv, enum p2v_log_level level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_store_log(srv ? &srv->store : NULL, level, "%s", msg);
}

static void peer_name(const struct sockaddr_storage *ss, socklen_t len, char *out, size_t size)
{
    char host[48], serv[8]; /* numeric forms only */
    if (getnameinfo((const struct sockaddr *)ss, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, size, "?");
        return;
    }
    if (ss->ss_family == AF_INET6)
        snprintf(out, size, "[%s]:%s", host, serv);
    else
        snprintf(out, size, "%s:%s", host, serv);
}

static int write_port_file(const char *path, int port, struct p2v_err *err)
{
    char tmp[4096], text[16];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return p2v_err_set(err, ENAMETOOLONG, "port file name '%s' is too long", path);
    int n = snprintf(text, sizeof text, "%d\n", port);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return p2v_err_errno(err, "cannot create '%s'", tmp);
    if (p2v_pwrite_full(fd, text, (size_t)n, 0) < 0 || close(fd) < 0) {
        p2v_err_errno(err, "cannot write '%s'", tmp);
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) < 0) {
        p2v_err_errno(err, "cannot rename '%s' to '%s'", tmp, path);
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void accept_one(struct srv_server *srv)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char peer[80];
    int fd = accept4(srv->listen_fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            srv_log(srv, P2V_LOG_ERROR, "accept: %s", strerror(errno));
            struct timespec ts = {0, 100 * 1000 * 1000}; /* do not spin */
            nanosleep(&ts, NULL);
        }
        return;
    }
    peer_name(&ss, len, peer, sizeof peer);
    pthread_mutex_lock(&srv->lock);
    bool busy = srv->nsessions >= srv->max_sessions;
    bool drop = busy && srv->nrejecting >= REJECT_MAX;
    pthread_mutex_unlock(&srv->lock);
    if (drop) {
        srv_log(srv, P2V_LOG_WARN, "%s: server busy (%u sessions): connection closed", peer,
                srv->max_sessions);
        close(fd);
        return;
    }
    struct srv_session *s = srv_session_new(srv, fd, peer, busy);
    if (!s) {
        srv_log(srv, P2V_LOG_ERROR, "%s: out of memory", peer);
        close(fd);
        return;
    }
    pthread_attr_t attr;
    pthread_t tid;
    sigset_t block, old;
    /* the session thread inherits a mask without SIGTERM / SIGINT: they go to the accept
     * loop, whose poll they interrupt */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&tid, &attr, srv_session_main, s);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        srv_log(srv, P2V_LOG_ERROR, "%s: cannot start a session thread: %s", peer, strerror(e));
        srv_session_free(s); /* closes fd */
        return;
    }
    srv_log(srv, P2V_LOG_DEBUG, "%s: connection accepted%s", peer, busy ? " (busy)" : "");
}

/* Wait until no session is left or @secs have passed. true when none is left. */
static bool wait_sessions(struct srv_server *srv, int secs)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += secs;
    pthread_mutex_lock(&srv->lock);
    while (srv->nsessions + srv->nrejecting > 0) {
        if (pthread_cond_timedwait(&srv->cond, &srv->lock, &dl) == ETIMEDOUT)
            break;
    }
    bool none = srv->nsessions + srv->nrejecting == 0;
    pthread_mutex_unlock(&srv->lock);
    return none;
}

int srv_run(const struct srv_run_opts *o)
{
    static struct srv_server srv; /* sessions may outlive a failed stop: never on the stack */
    struct p2v_err err = {0};
    char key[4096], crt[4096], fp[P2V_FINGERPRINT_LEN];
    int rc = 1;
    struct srv_http *http = NULL; /* --http: the status page */

    memset(&srv, 0, sizeof srv);
    srv.listen_fd = -1;
    srv.stop_pipe[0] = srv.stop_pipe[1] = -1;
    srv.max_sessions = o->max_sessions;
    srv.hello_timeout_ms = 30000;
    srv.idle_timeout_ms = 120000;
    atomic_init(&srv.stopping, false);
    pthread_mutex_init(&srv.lock, NULL);
    pthread_cond_init(&srv.cond, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (srv_store_open(&srv.store, o->store, true, &err) < 0) {
        p2v_error("%s", err.msg);
        return 1;
    }
    snprintf(srv.store.format, sizeof srv.store.format, "%s", o->format);
    snprintf(srv.store.outputs, sizeof srv.store.outputs, "%s", o->outputs);
    srv.store.window = o->window;
    snprintf(key, sizeof key, "%s/server.key", srv.store.path);
    snprintf(crt, sizeof crt, "%s/server.crt", srv.store.path);
    if (p2v_tls_cert_fingerprint(crt, fp, &err) < 0) {
        srv_log(&srv, P2V_LOG_ERROR, "%s", err.msg);
        goto out;
    }
    srv.tls = p2v_tls_server_ctx(key, crt, &err);
    if (!srv.tls) {
        srv_log(&srv, P2V_LOG_ERROR, "%s", err.msg);
        goto out;
    }
    if (pipe2(srv.stop_pipe, O_CLOEXEC) < 0 || pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        srv_log(&srv, P2V_LOG_ERROR, "pipe: %s", strerror(errno));
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    srv.listen_fd = p2v_tcp_listen(o->listen, &err);
    if (srv.listen_fd < 0) {
        srv_log(&srv, P2V_LOG_ERROR, "%s", err.msg);
        goto out;
    }
    int port = p2v_tcp_local_port(srv.listen_fd);
    if (o->port_file && write_port_file(o->port_file, port, &err) < 0) {
        srv_log(&srv, P2V_LOG_ERROR, "%s", err.msg);
        goto out;
    }
    char win[32];
    const char *colon = strrchr(o->listen, ':');
    int hlen = colon ? (int)(colon - o->listen) : (int)strlen(o->listen);
    srv_log(&srv, P2V_LOG_INFO,
            "listening on %.*s:%d; store %s; format %s; window %s; fingerprint %s", hlen,
            o->listen, port, srv.store.path, srv.store.format,
            p2v_format_size(srv.store.window, win, sizeof win), fp);
    if (o->http) {
        char url[300];
        if (srv_http_start(&http, &srv.store, o->http, &err) < 0 ||
            (o->http_port_file &&
             write_port_file(o->http_port_file, srv_http_port(http), &err) < 0)) {
            srv_log(&srv, P2V_LOG_ERROR, "%s", err.msg);
            goto out;
        }
        srv_http_url(http, url, sizeof url);
        srv_log(&srv, P2V_LOG_INFO, "status page on %s", url);
    }
    struct srv_pipeline *pipe_line = NULL;
    if (o->pipeline.until > JOB_RECEIVED) {
        pipe_line = srv_pipeline_start(&srv.store, &o->pipeline, &err);
        if (!pipe_line) {
            srv_log(&srv, P2V_LOG_ERROR, "%s", err.msg);
            goto out;
        }
        srv_log(&srv, P2V_LOG_INFO, "pipeline: up to '%s'%s; %u injection(s) and %u "
                "verification(s) at once", srv_job_state_name(o->pipeline.until),
                o->pipeline.inject ? "" : " (no injection)", o->pipeline.max_inject,
                o->pipeline.max_verify);
    }

    while (!sig_caught) {
        struct pollfd pfd[2] = {{.fd = srv.listen_fd, .events = POLLIN},
                                {.fd = sig_pipe[0], .events = POLLIN}};
        int pr = poll(pfd, 2, -1);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            srv_log(&srv, P2V_LOG_ERROR, "poll: %s", strerror(errno));
            break;
        }
        if (pfd[1].revents)
            break;
        if (pfd[0].revents & POLLIN)
            accept_one(&srv);
    }

    /* stop: no new sessions; every live one commits, sends ERROR SHUTDOWN and ends */
    pthread_mutex_lock(&srv.lock);
    unsigned live = srv.nsessions;
    pthread_mutex_unlock(&srv.lock);
    srv_log(&srv, P2V_LOG_INFO, "stopping (%s): %u session(s) to end",
            sig_caught == SIGINT ? "SIGINT" : sig_caught == SIGTERM ? "SIGTERM" : "error", live);
    close(srv.listen_fd);
    srv.listen_fd = -1;
    srv_http_stop(http);
    http = NULL;
    atomic_store(&srv.stopping, true);
    ssize_t w = write(srv.stop_pipe[1], "x", 1);
    (void)w;
    if (!wait_sessions(&srv, STOP_GRACE_S)) {
        srv_sessions_kick_all(&srv);
        if (!wait_sessions(&srv, STOP_WAIT_S - STOP_GRACE_S)) {
            srv_log(&srv, P2V_LOG_ERROR, "%u session(s) did not end: exiting anyway",
                    srv.nsessions + srv.nrejecting);
            return sig_caught ? 0 : 1; /* the threads still use srv: leave it be */
        }
    }
    if (pipe_line && srv_pipeline_stop(pipe_line, STOP_GRACE_S) > 0)
        return sig_caught ? 0 : 1; /* its workers still use the store: leave it be */
    srv_log(&srv, P2V_LOG_INFO, "stopped");
    rc = sig_caught ? 0 : 1;
out:
    if (srv.listen_fd >= 0)
        close(srv.listen_fd);
    p2v_tls_ctx_free(srv.tls);
    for (int i = 0; i < 2; i++) {
        if (srv.stop_pipe[i] >= 0)
            close(srv.stop_pipe[i]);
        if (sig_pipe[i] >= 0)
            close(sig_pipe[i]);
        sig_pipe[i] = -1;
    }
    srv_http_stop(http);
    srv_store_close(&srv.store);
    pthread_cond_destroy(&srv.cond);
    pthread_mutex_destroy(&srv.lock);
    return rc;
}
