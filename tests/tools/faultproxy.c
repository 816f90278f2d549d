/* faultproxy: a loopback TCP relay that cuts connections at chosen points, for tests of
 * the agent's reconnect and the server's resume.
 *
 *     faultproxy --listen 127.0.0.1:PORT|0 --to HOST:PORT [--port-file F]
 *                [--cut-after BYTES[,BYTES...]] [--cut-random MIN:MAX --seed N [--cuts K]]
 *                [--max-conns N]
 *
 * Connection k (counting from 1, in accept order) is cut after exactly the k-th listed
 * number of bytes has been relayed client->server: both sockets are closed abruptly
 * (SO_LINGER 0, so each peer sees a reset, not an orderly end). With --cut-random each
 * connection is cut after a number of bytes drawn from [MIN, MAX] by a PRNG seeded with N
 * (the same seed gives the same cut points), for the first K connections (default every
 * connection). Connections beyond the list relay without cuts. --max-conns N accepts N
 * connections, then stops listening and exits once they have ended.
 *
 * One poll() loop relays both directions of every connection; a half close (EOF) is
 * passed on with shutdown(SHUT_WR). Each connection, cut and end is logged on stderr.
 * The bound port goes to --port-file (written to a temporary name, then renamed, so a
 * test that polls for the file never reads half of it). SIGTERM or SIGINT: exit 0.
 * Only loopback addresses are accepted on either side.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "p2v-common.h"

#define PROXY_BUF 65536
#define PROXY_CUTS_MAX 256
#define PROXY_CONNS_MAX 64
#define NO_CUT UINT64_MAX
/* A cut waits this long at most for the server to acknowledge the bytes before it. */
#define PROXY_DRAIN_SECS 5.0

/* One direction of a relayed connection: bytes read from `from`, not yet written to `to`. */
struct pipe_dir {
    uint8_t buf[PROXY_BUF];
    size_t len, pos;
    bool eof;      /* `from` reached end of file */
    bool shut;     /* shutdown(to, SHUT_WR) done */
    uint64_t done; /* bytes written to `to` */
};

struct conn {
    unsigned id;
    int cfd, sfd;
    uint64_t cut; /* cut once this many bytes went client->server; NO_CUT: never */
    double cutting; /* the cut is due: since when we wait for the server's ACKs (0: not) */
    struct pipe_dir up;   /* client -> server */
    struct pipe_dir down; /* server -> client */
    char peer[64];
};

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

/* splitmix64: small, seedable, identical everywhere. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int parse_u64(const char *s, uint64_t *out, struct p2v_err *err)
{
    return p2v_parse_size(s, out, err);
}

/* "HOST:PORT" → a loopback sockaddr. */
static int parse_loopback(const char *hostport, struct sockaddr_storage *ss, socklen_t *sslen,
                          struct p2v_err *err)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || (size_t)(colon - hostport) >= sizeof host)
        return p2v_err_set(err, EINVAL, "address '%s' is not HOST:PORT", hostport);
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    if (host[0] == '[') {
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']')
            return p2v_err_set(err, EINVAL, "address '%s' is not HOST:PORT", hostport);
        memmove(host, host + 1, n - 2);
        host[n - 2] = '\0';
    }
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port > 65535)
        return p2v_err_set(err, EINVAL, "port in '%s' is not a number 0..65535", hostport);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0)
        return p2v_err_set(err, EINVAL, "cannot resolve '%s': %s", host, gai_strerror(rc));
    bool loop = false;
    if (res->ai_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)res->ai_addr;
        loop = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    } else if (res->ai_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)res->ai_addr;
        loop = IN6_IS_ADDR_LOOPBACK(&a->sin6_addr);
    }
    if (loop) {
        memcpy(ss, res->ai_addr, res->ai_addrlen);
        *sslen = res->ai_addrlen;
    }
    freeaddrinfo(res);
    if (!loop)
        return p2v_err_set(err, EINVAL, "address '%s' is not a loopback address", hostport);
    return 0;
}

static int write_port_file(const char *path, int port, struct p2v_err *err)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return p2v_err_set(err, ENAMETOOLONG, "port file name '%s' is too long", path);
    FILE *fp = fopen(tmp, "w");
    if (!fp)
        return p2v_err_errno(err, "cannot create '%s'", tmp);
    fprintf(fp, "%d\n", port);
    if (fclose(fp) != 0) {
        unlink(tmp);
        return p2v_err_errno(err, "cannot write '%s'", tmp);
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return p2v_err_errno(err, "cannot rename '%s' to '%s'", tmp, path);
    }
    return 0;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Close with SO_LINGER 0: the kernel drops unsent data and sends RST. */
static void close_abruptly(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void conn_end(struct conn *c, bool abrupt, const char *why)
{
    p2v_info("conn %u: %s %s (client->server %llu bytes, server->client %llu bytes)", c->id,
             abrupt ? "reset" : "closed", why, (unsigned long long)c->up.done,
             (unsigned long long)c->down.done);
    if (abrupt) {
        close_abruptly(c->cfd);
        close_abruptly(c->sfd);
    } else {
        close(c->cfd);
        close(c->sfd);
    }
    c->cfd = c->sfd = -1;
}

/* Read into an empty direction buffer, at most what the cut still allows. -1 on error. */
static int dir_fill(struct pipe_dir *d, int from, uint64_t allow)
{
    size_t want = sizeof d->buf;
    if (allow < want)
        want = (size_t)allow;
    if (want == 0)
        return 0;
    ssize_t r = recv(from, d->buf, want, 0);
    if (r < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    if (r == 0)
        d->eof = true;
    d->pos = 0;
    d->len = (size_t)r;
    return 0;
}

static int dir_flush(struct pipe_dir *d, int to)
{
    while (d->pos < d->len) {
        ssize_t w = send(to, d->buf + d->pos, d->len - d->pos, MSG_NOSIGNAL);
        if (w < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
        d->pos += (size_t)w;
        d->done += (uint64_t)w;
    }
    d->pos = d->len = 0;
    if (d->eof && !d->shut) {
        shutdown(to, SHUT_WR);
        d->shut = true;
    }
    return 0;
}

/* Bytes written to @fd that its peer has not acknowledged yet (-1: unknown). */
static int unacked(int fd)
{
    int n;
    return ioctl(fd, SIOCOUTQ, &n) == 0 ? n : -1;
}

/* The cut is due: once the server's kernel has acknowledged every byte before it (a
 * reset throws away what is still in our send queue), reset both sockets. Relays
 * nothing more meanwhile. 1 when done. */
static int conn_cut(struct conn *c)
{
    if (c->cutting == 0)
        c->cutting = p2v_now();
    int left = unacked(c->sfd);
    bool late = p2v_now() - c->cutting > PROXY_DRAIN_SECS;
    if (left > 0 && !late)
        return 0;
    if (left > 0)
        p2v_info("conn %u: %d bytes before the cut still unacknowledged after %.0f s", c->id,
                 left, PROXY_DRAIN_SECS);
    p2v_info("conn %u: cut after %llu bytes client->server", c->id,
             (unsigned long long)c->up.done);
    conn_end(c, true, "by the cut");
    return 1;
}

/* Relay what poll() says is ready; 1 when the connection has ended (closed here). */
static int conn_step(struct conn *c, short crev, short srev)
{
    if (c->cutting != 0)
        return conn_cut(c);
    uint64_t allow = c->cut == NO_CUT ? UINT64_MAX : c->cut - c->up.done;
    if (c->up.len == 0 && !c->up.eof && (crev & (POLLIN | POLLHUP | POLLERR))) {
        if (dir_fill(&c->up, c->cfd, allow) < 0) {
            conn_end(c, true, "after a client error");
            return 1;
        }
    }
    if (c->down.len == 0 && !c->down.eof && (srev & (POLLIN | POLLHUP | POLLERR))) {
        if (dir_fill(&c->down, c->sfd, UINT64_MAX) < 0) {
            conn_end(c, true, "after a server error");
            return 1;
        }
    }
    if (dir_flush(&c->up, c->sfd) < 0) {
        conn_end(c, true, "after a server write error");
        return 1;
    }
    if (dir_flush(&c->down, c->cfd) < 0) {
        conn_end(c, true, "after a client write error");
        return 1;
    }
    if (c->cut != NO_CUT && c->up.done >= c->cut)
        return conn_cut(c);
    if (c->up.shut && c->down.shut) {
        conn_end(c, false, "by both peers");
        return 1;
    }
    return 0;
}

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: faultproxy --listen 127.0.0.1:PORT --to HOST:PORT [--port-file FILE]\n"
            "                  [--cut-after BYTES[,BYTES...]]\n"
            "                  [--cut-random MIN:MAX --seed N [--cuts K]] [--max-conns N]\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"to", required_argument, NULL, 't'},
        {"port-file", required_argument, NULL, 'p'},
        {"cut-after", required_argument, NULL, 'c'},
        {"cut-random", required_argument, NULL, 'r'},
        {"seed", required_argument, NULL, 's'},
        {"cuts", required_argument, NULL, 'k'},
        {"max-conns", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *listen_at = NULL, *to = NULL, *port_file = NULL;
    uint64_t cuts[PROXY_CUTS_MAX];
    size_t ncuts = 0;
    bool random_cuts = false, have_seed = false;
    uint64_t rmin = 0, rmax = 0, seed = 0, rcount = UINT64_MAX, max_conns = UINT64_MAX;
    struct p2v_err err = {0};
    int opt;

    p2v_log_init("faultproxy");
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'l': listen_at = optarg; break;
        case 't': to = optarg; break;
        case 'p': port_file = optarg; break;
        case 'c': {
            char *list = strdup(optarg), *save = NULL;
            if (!list)
                return 1;
            for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (ncuts == PROXY_CUTS_MAX || parse_u64(tok, &cuts[ncuts], &err) < 0) {
                    fprintf(stderr, "faultproxy: --cut-after: %s\n",
                            ncuts == PROXY_CUTS_MAX ? "too many cut points" : err.msg);
                    free(list);
                    return 2;
                }
                ncuts++;
            }
            free(list);
            break;
        }
        case 'r': {
            char *colon = strchr(optarg, ':');
            if (!colon) {
                fprintf(stderr, "faultproxy: --cut-random wants MIN:MAX\n");
                return 2;
            }
            *colon = '\0';
            if (parse_u64(optarg, &rmin, &err) < 0 || parse_u64(colon + 1, &rmax, &err) < 0 ||
                rmin > rmax) {
                fprintf(stderr, "faultproxy: --cut-random: %s\n",
                        err.msg[0] ? err.msg : "MIN is greater than MAX");
                return 2;
            }
            random_cuts = true;
            break;
        }
        case 's':
        case 'k':
        case 'm': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 0);
            if (errno || end == optarg || *end || optarg[0] == '-') {
                fprintf(stderr, "faultproxy: '%s' is not a number\n", optarg);
                return 2;
            }
            if (opt == 's') {
                seed = v;
                have_seed = true;
            } else if (opt == 'k') {
                rcount = v;
            } else {
                max_conns = v;
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || !listen_at || !to || (random_cuts && ncuts) ||
        (random_cuts && !have_seed) || max_conns == 0) {
        usage(stderr);
        return 2;
    }

    struct sockaddr_storage laddr, taddr;
    socklen_t llen, tlen;
    if (parse_loopback(listen_at, &laddr, &llen, &err) < 0 ||
        parse_loopback(to, &taddr, &tlen, &err) < 0) {
        fprintf(stderr, "faultproxy: %s\n", err.msg);
        return 2;
    }

    int lfd = socket(laddr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&laddr, llen) < 0 || listen(lfd, 16) < 0) {
        fprintf(stderr, "faultproxy: cannot listen on '%s': %s\n", listen_at, strerror(errno));
        return 1;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    getsockname(lfd, (struct sockaddr *)&bound, &blen);
    int port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                                : ((struct sockaddr_in6 *)&bound)->sin6_port);
    if (port_file && write_port_file(port_file, port, &err) < 0) {
        fprintf(stderr, "faultproxy: %s\n", err.msg);
        return 1;
    }
    p2v_info("listening on port %d, relaying to %s", port, to);
    set_nonblock(lfd);

    /* Signals are blocked except inside ppoll(), so none is lost between checks. */
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    static struct conn conns[PROXY_CONNS_MAX];
    size_t nconns = 0;
    uint64_t accepted = 0;
    uint64_t rng = seed;
    struct pollfd pfd[1 + 2 * PROXY_CONNS_MAX];

    while (!stop_signal) {
        if (lfd < 0 && nconns == 0)
            break; /* --max-conns reached and every connection has ended */
        size_t n = 0;
        bool draining = false;
        if (lfd >= 0)
            pfd[n++] = (struct pollfd){.fd = lfd,
                                       .events = nconns < PROXY_CONNS_MAX ? POLLIN : 0};
        for (size_t i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            short ce = 0, se = 0;
            if (c->cutting != 0)
                draining = true;
            else if (c->up.len == 0 && !c->up.eof)
                ce |= POLLIN;
            if (c->cutting == 0 && c->down.len > c->down.pos)
                ce |= POLLOUT;
            if (c->cutting == 0 && c->down.len == 0 && !c->down.eof)
                se |= POLLIN;
            if (c->cutting == 0 && c->up.len > c->up.pos)
                se |= POLLOUT;
            /* A socket with nothing to wait for is left out (fd -1): a hung-up peer
             * would otherwise wake poll() at once, again and again. */
            pfd[n++] = (struct pollfd){.fd = ce ? c->cfd : -1, .events = ce};
            pfd[n++] = (struct pollfd){.fd = se ? c->sfd : -1, .events = se};
        }
        /* A connection waiting to be cut is looked at every 2 ms. */
        struct timespec tick = {0, 2000000};
        int r = ppoll(pfd, n, draining ? &tick : NULL, &waitmask);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "faultproxy: poll: %s\n", strerror(errno));
            return 1;
        }
        size_t base = 0;
        bool accept_ready = false;
        if (lfd >= 0) {
            accept_ready = pfd[0].revents & POLLIN;
            base = 1;
        }
        /* Relay first (indexes into pfd match conns[] as it was when polled). */
        size_t kept = 0;
        for (size_t i = 0; i < nconns; i++) {
            short crev = pfd[base + 2 * i].revents, srev = pfd[base + 2 * i + 1].revents;
            if (conn_step(&conns[i], crev, srev) == 0) {
                if (kept != i)
                    conns[kept] = conns[i];
                kept++;
            }
        }
        nconns = kept;
        if (!accept_ready)
            continue;

        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int cfd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
        if (cfd < 0)
            continue;
        accepted++;
        struct conn *c = &conns[nconns];
        memset(c, 0, sizeof *c);
        c->id = (unsigned)accepted;
        c->cfd = cfd;
        char host[INET6_ADDRSTRLEN] = "?";
        int pport = 0;
        if (peer.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, host, sizeof host);
            pport = ntohs(((struct sockaddr_in *)&peer)->sin_port);
        } else if (peer.ss_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, host, sizeof host);
            pport = ntohs(((struct sockaddr_in6 *)&peer)->sin6_port);
        }
        snprintf(c->peer, sizeof c->peer, "%s:%d", host, pport);
        if (accepted <= ncuts)
            c->cut = cuts[accepted - 1];
        else if (random_cuts && accepted <= rcount)
            c->cut = rmin + rng_next(&rng) % (rmax - rmin + 1 ? rmax - rmin + 1 : UINT64_MAX);
        else
            c->cut = NO_CUT;
        if (accepted >= max_conns) {
            close(lfd); /* later clients are refused by the kernel */
            lfd = -1;
        }

        c->sfd = socket(taddr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->sfd < 0 || connect(c->sfd, (struct sockaddr *)&taddr, tlen) < 0) {
            p2v_info("conn %u from %s: cannot connect to %s: %s", c->id, c->peer, to,
                     strerror(errno));
            if (c->sfd >= 0)
                close(c->sfd);
            close_abruptly(cfd);
            continue;
        }
        setsockopt(c->cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(c->sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_nonblock(c->cfd);
        set_nonblock(c->sfd);
        if (c->cut == NO_CUT)
            p2v_info("conn %u from %s: relaying to %s, no cut", c->id, c->peer, to);
        else
            p2v_info("conn %u from %s: relaying to %s, cut after %llu bytes", c->id, c->peer,
                     to, (unsigned long long)c->cut);
        nconns++;
        if (c->cut == 0 && conn_step(c, 0, 0) == 1)
            nconns--;
    }
    for (size_t i = 0; i < nconns; i++)
        conn_end(&conns[i], false, "at exit");
    if (lfd >= 0)
        close(lfd);
    if (stop_signal)
        p2v_info("stopped by signal %d", (int)stop_signal);
    return 0;
}
