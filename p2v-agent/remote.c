/* remote.c: streaming the disks to p2v-server (wire protocol v1, docs/protocol.md).
 *
 * One session: TCP connect, TLS 1.3 handshake pinning the server's certificate
 * fingerprint, HELLO → WELCOME, FACTS, then per disk DISK → HAVE (what the server already
 * has committed: those chunks are not read again) → DATA in increasing order → DISK_END →
 * DISK_OK, and finally DONE → FINISHED once the server has written the images.
 *
 * Flow control: the agent never has more than WELCOME.window non-zero DATA bytes sent and
 * not yet COMMITTED. It drains COMMITTED frames whenever some are waiting and blocks for
 * one when the next chunk would go past the window. So a broken session loses at most
 * one window, which is what the next session sends again.
 *
 * Compression (--compress-level auto, the default): the send loop times, per window of
 * AGENT_ADAPT_WINDOW_S, how long it waited for the read pipeline (imager_pipeline_next
 * blocking: the CPU that hashes and compresses is the bottleneck) and how long it was
 * blocked sending (wall time minus this thread's CPU time over the window wait, the socket
 * writes, the --max-rate pause and the COMMITTED drain, so that the TLS encryption this
 * thread does is not mistaken for a slow link), and reads the machine's idle CPU share
 * from /proc/stat. adapt.c turns those into a level that the pipeline's workers pick up
 * for the next chunks; the controller's state lives in the agent and carries over disks
 * and sessions.
 *
 * Failures: a network error or a retryable ERROR (NOSPACE, BUSY, INTERNAL, SHUTDOWN) ends
 * the session and a new one starts after a back-off of 1, 2, 4 ... 30 s; every session
 * re-declares the disks and resumes through HAVE. The agent gives up after --retry-time
 * seconds without progress (bytes committed or a disk finished). A fatal ERROR (AUTH,
 * VERSION, NAME, PROTO, DISK, HASH) or a fingerprint mismatch ends the run (exit 3), as
 * does an unreadable sector without --skip-bad-sectors (exit 4).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "p2v-proto.h"
#include "p2v-tls.h"
#include "session.h"

#define CONNECT_TIMEOUT_MS 30000
#define IO_TIMEOUT_MS 120000           /* the server's idle timeout */
#define FINISH_TIMEOUT_MIN_S 3600      /* DONE → FINISHED: the server converts the disks */
#define BACKOFF_MAX_S 30
#define SKIP_RANGES_MAX (4u << 20)     /* HAVE ranges per disk we accept: 64 MiB of list */

int sess_set(struct sess *s, enum sess_rc rc, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->msg, sizeof s->msg, fmt, ap);
    va_end(ap);
    snprintf(s->code, sizeof s->code, "%s", code);
    s->rc = rc;
    return -1;
}

void progress_made(struct sess *s)
{
    *s->last_progress = p2v_now();
    s->progressed = true;
}

/* ------------------------------------------------------------------ frames */

int sess_send(struct sess *s)
{
    struct p2v_err err = {0};
    if (p2v_conn_send(s->conn, &s->out, &err) < 0) {
        p2v_buf_reset(&s->out);
        return sess_set(s, SESS_RETRY, "network", "sending to %s: %s", s->a->o.server,
                        err.msg);
    }
    return 0;
}

int sess_encode_failed(struct sess *s, const char *what)
{
    p2v_buf_reset(&s->out);
    return sess_set(s, SESS_FAIL, "internal", "cannot encode the %s frame", what);
}

static int server_error(struct sess *s, const struct p2v_msg *m)
{
    uint16_t code = m->u.error.code;
    const char *name = p2v_proto_err_name(code);
    int tl = m->u.error.text.len;
    const char *tp = m->u.error.text.p;
    if (p2v_proto_err_retryable(code))
        return sess_set(s, SESS_RETRY, name, "server error %s: %.*s", name, tl, tp);
    return sess_set(s, SESS_REFUSED, name, "server refused: %.*s", tl, tp);
}

static int on_committed(struct sess *s, const struct p2v_msg *m)
{
    uint64_t b = m->u.committed.bytes;
    if (b < s->committed || b > s->sent_nz || m->u.committed.frames > s->frames)
        return sess_set(s, SESS_FAIL, "protocol",
                        "the server committed %llu bytes of %llu sent (before: %llu)",
                        (unsigned long long)b, (unsigned long long)s->sent_nz,
                        (unsigned long long)s->committed);
    if (b > s->committed)
        progress_made(s);
    s->committed = b;
    return 0;
}

/* Read one frame. COMMITTED is accounted here (returns 1); ERROR ends the session (-1);
 * any other frame is left in @m (returns 0). */
static int sess_read_one(struct sess *s, struct p2v_msg *m)
{
    struct p2v_err err = {0};
    int r = p2v_conn_read_frame(s->conn, &s->body, m, &err);
    if (r < 0)
        return sess_set(s, SESS_RETRY, "network", "receiving from %s: %s", s->a->o.server,
                        err.msg);
    if (r == 0)
        return sess_set(s, SESS_RETRY, "network", "%s closed the connection",
                        s->a->o.server);
    if (m->type == P2V_MSG_ERROR)
        return server_error(s, m);
    if (m->type == P2V_MSG_COMMITTED)
        return on_committed(s, m) < 0 ? -1 : 1;
    return 0;
}

/* The next frame that is not COMMITTED; it must be of @type. */
int sess_expect(struct sess *s, uint8_t type, struct p2v_msg *m)
{
    int r;
    while ((r = sess_read_one(s, m)) == 1)
        ;
    if (r < 0)
        return -1;
    if (m->type != type)
        return sess_set(s, SESS_FAIL, "protocol", "the server sent %s where %s was due",
                        p2v_proto_type_name(m->type), p2v_proto_type_name(type));
    return 0;
}

/* Read one frame that must be COMMITTED (sess_read_one takes it). 0 / -1. */
static int sess_take_committed(struct sess *s)
{
    struct p2v_msg m;
    int r = sess_read_one(s, &m);
    if (r < 0)
        return -1;
    if (r == 0)
        return sess_set(s, SESS_FAIL, "protocol", "the server sent %s during DATA",
                        p2v_proto_type_name(m.type));
    return 0;
}

/* Take every COMMITTED frame already waiting, without blocking. */
int sess_drain(struct sess *s)
{
    while (p2v_conn_readable(s->conn))
        if (sess_take_committed(s) < 0)
            return -1;
    return 0;
}

/* Block until @len more non-zero bytes fit in the window. */
int sess_window(struct sess *s, uint64_t len)
{
    while (s->sent_nz > s->committed && s->sent_nz - s->committed + len > s->window)
        if (sess_take_committed(s) < 0)
            return -1;
    return 0;
}

/* ------------------------------------------------------------------ ranges */

static int ext_cmp(const void *x, const void *y)
{
    const struct imager_extent *p = x, *q = y;
    return p->off < q->off ? -1 : p->off > q->off;
}

/* Sort and merge @v (overlapping or touching ranges become one). Returns the count. */
static size_t ext_merge(struct imager_extent *v, size_t n)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, ext_cmp);
    size_t w = 0;
    for (size_t i = 1; i < n; i++) {
        uint64_t end = v[w].off + v[w].len;
        if (v[i].off <= end) {
            uint64_t e2 = v[i].off + v[i].len;
            if (e2 > end)
                v[w].len = e2 - v[w].off;
        } else {
            v[++w] = v[i];
        }
    }
    return w + 1;
}

/* Bytes of @plan that lie inside the sorted, merged ranges @have. */
static uint64_t ext_overlap(const struct imager_extent *plan, size_t np,
                            const struct imager_extent *have, size_t nh)
{
    uint64_t sum = 0;
    size_t i = 0, k = 0;
    while (i < np && k < nh) {
        uint64_t a0 = plan[i].off, a1 = a0 + plan[i].len;
        uint64_t b0 = have[k].off, b1 = b0 + have[k].len;
        uint64_t lo = P2V_MAX(a0, b0), hi = P2V_MIN(a1, b1);
        if (lo < hi)
            sum += hi - lo;
        if (a1 < b1)
            i++;
        else
            k++;
    }
    return sum;
}

/* ------------------------------------------------------------------ one disk */

static const char *welcome_state_name(uint8_t st)
{
    switch (st) {
    case P2V_JOB_NEW: return "new";
    case P2V_JOB_RESUME: return "resume";
    case P2V_JOB_COMPLETE: return "complete";
    default: return "unknown";
    }
}

static void printable(char *out, size_t len, const char *in)
{
    size_t w = 0;
    for (; *in && w + 1 < len; in++)
        out[w++] = (unsigned char)*in >= 0x20 && (unsigned char)*in <= 0x7e ? *in : '?';
    out[w] = '\0';
}

/* Declare disk @i, collect HAVE into *skip. */
static int sess_declare(struct sess *s, uint32_t i, struct imager_extent **skip,
                        size_t *nskip)
{
    struct agent_disk *d = &s->a->disks[i];
    char name[P2V_PROTO_DISK_NAME_MAX + 1], id[P2V_PROTO_DISK_ID_MAX + 1];
    printable(name, sizeof name, d->info->name[0] ? d->info->name : "disk");
    printable(id, sizeof id, d->info->serial[0] ? d->info->serial : d->path);
    uint8_t flags = s->a->o.all_blocks ? P2V_DISK_ALL_BLOCKS : 0;
    if (p2v_proto_put_disk(&s->out, i, d->info->size, d->info->sector_size, d->plan.bytes,
                           flags, name, id) < 0)
        return sess_encode_failed(s, "DISK");
    if (sess_send(s) < 0)
        return -1;

    struct imager_extent *v = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        struct p2v_msg m;
        if (sess_expect(s, P2V_MSG_HAVE, &m) < 0)
            goto fail;
        if (m.u.ranges.disk != i) {
            sess_set(s, SESS_FAIL, "protocol", "HAVE for disk %u while declaring disk %u",
                     m.u.ranges.disk, i);
            goto fail;
        }
        uint32_t cnt = m.u.ranges.count;
        if (n + cnt > SKIP_RANGES_MAX) {
            sess_set(s, SESS_FAIL, "protocol", "the server sent more than %u HAVE ranges",
                     SKIP_RANGES_MAX);
            goto fail;
        }
        if (n + cnt > cap) {
            size_t nc = P2V_MAX(n + cnt, cap * 2);
            struct imager_extent *nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                sess_set(s, SESS_FAIL, "internal", "out of memory");
                goto fail;
            }
            v = nv;
            cap = nc;
        }
        for (uint32_t k = 0; k < cnt; k++) {
            struct p2v_range r;
            p2v_proto_range(&m, k, &r);
            if (!p2v_range_ok(r.off, r.len, d->info->size)) {
                sess_set(s, SESS_FAIL, "protocol", "HAVE range past the end of disk %u", i);
                goto fail;
            }
            v[n++] = (struct imager_extent){r.off, r.len};
        }
        if (!(m.flags & P2V_RANGES_MORE))
            break;
    }
    *nskip = ext_merge(v, n);
    *skip = v;
    return 0;
fail:
    free(v);
    return -1;
}

/* This thread's CPU time in seconds (0 when the clock is missing: every wait then
 * counts whole). */
static double thread_cpu(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0)
        return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The machine's CPU time in clock ticks from /proc/stat's first line: *idle (idle and
 * iowait) and *total. 0 / -1 (no /proc). */
static int host_cpu_ticks(uint64_t *idle, uint64_t *total)
{
    char buf[512];
    int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    /* cpu  user nice system idle iowait irq softirq steal (guest time is in user) */
    unsigned long long v[8] = {0};
    if (sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
               &v[3], &v[4], &v[5], &v[6], &v[7]) < 4)
        return -1;
    *idle = v[3] + v[4];
    *total = 0;
    for (int i = 0; i < 8; i++)
        *total += v[i];
    return 0;
}

/* One measurement window of the adaptive level (see the top of this file). */
struct adapt_clock {
    double t0;        /* when it began */
    double pipe;      /* seconds waiting for the pipeline */
    double send;      /* seconds blocked sending */
    bool cpu_ok;      /* the /proc/stat reading at its start worked */
    uint64_t idle0, total0;
};

static void adapt_clock_start(struct adapt_clock *ac, double now)
{
    *ac = (struct adapt_clock){.t0 = now};
    ac->cpu_ok = host_cpu_ticks(&ac->idle0, &ac->total0) == 0;
}

/* A window has passed: let the controller pick the level and apply it. */
static void adapt_window(struct sess *s, uint32_t disk, struct imager_pipeline *pl,
                         struct agent_progress *pg, struct adapt_clock *ac, double now)
{
    struct agent *a = s->a;
    double el = now - ac->t0;
    double idle = -1;
    uint64_t i1, t1;
    if (ac->cpu_ok && host_cpu_ticks(&i1, &t1) == 0 && t1 > ac->total0 && i1 >= ac->idle0)
        idle = (double)(i1 - ac->idle0) / (double)(t1 - ac->total0);
    int old = agent_adapt_current(&a->adapt);
    int level = agent_adapt_level(&a->adapt, ac->pipe / el, ac->send / el, idle);
    if (level != old && imager_pipeline_set_level(pl, level) == 0) {
        char from[16], to[16];
        agent_level_name(old, from, sizeof from);
        agent_level_name(level, to, sizeof to);
        p2v_debug("disk %u: zstd level %s -> %s (last %.2f s: %.0f%% waiting for the "
                  "pipeline, %.0f%% blocked sending, %.0f%% of the CPUs idle)",
                  disk, from, to, el, 100 * ac->pipe / el, 100 * ac->send / el, 100 * idle);
        a->st.level_changes++;
        a->st.level_final = level;
        agent_progress_level(pg, level);
        struct agent_event e;
        agent_event_begin(&e, "compress-level");
        p2v_json_kv_u64(&e.j, "disk", disk);
        p2v_json_kv_i64(&e.j, "level", level);
        p2v_json_kv_i64(&e.j, "from", old);
        p2v_json_kv_double(&e.j, "wait-pipeline", ac->pipe / el);
        p2v_json_kv_double(&e.j, "wait-send", ac->send / el);
        if (idle >= 0)
            p2v_json_kv_double(&e.j, "cpu-idle", idle);
        agent_event_end(a, &e);
    }
    adapt_clock_start(ac, now);
}

/* --max-rate: sleep until the bytes sent this session fit the rate. */
void throttle(struct sess *s, size_t n)
{
    uint64_t rate = s->a->o.max_rate;
    if (rate == 0)
        return;
    double now = p2v_now();
    if (s->rate_bytes == 0)
        s->rate_t0 = now;
    s->rate_bytes += n;
    double due = s->rate_t0 + (double)s->rate_bytes / (double)rate;
    if (due > now) {
        struct timespec ts = {(time_t)(due - now), (long)((due - now - (double)(time_t)(due - now)) * 1e9)};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
}

int sess_send_chunk(struct sess *s, uint32_t i, const struct imager_chunk *c)
{
    struct agent *a = s->a;
    uint8_t hdr[P2V_PROTO_DATA_HDR_LEN];
    struct p2v_err werr = {0};
    if (c->zero) {
        static const uint8_t zero_hash[P2V_PROTO_HASH_LEN];
        p2v_proto_data_header(hdr, P2V_DATA_ZERO, i, c->off, c->len, zero_hash, 0);
        if (p2v_conn_write(s->conn, hdr, sizeof hdr, &werr) < 0)
            goto write_failed;
    } else {
        const uint8_t *payload = c->zdata ? c->zdata : c->data;
        size_t plen = c->zdata ? c->zlen : c->len;
        if (sess_window(s, c->len) < 0)
            return -1;
        p2v_proto_data_header(hdr, c->zdata ? P2V_DATA_ZSTD : 0, i, c->off, c->len, c->hash,
                              plen);
        if (p2v_conn_write(s->conn, hdr, sizeof hdr, &werr) < 0 ||
            p2v_conn_write(s->conn, payload, plen, &werr) < 0)
            goto write_failed;
        s->sent_nz += c->len;
        s->pass_sent += c->len;
        throttle(s, sizeof hdr + plen);
        a->st.bytes_sent += c->len;
        a->st.payload_bytes += plen;
        agent_count_level(a, c->level, c->len);
    }
    s->frames++;
    s->disk_sent[i] += c->len;
    return 0;
write_failed:
    return sess_set(s, SESS_RETRY, "network", "sending to %s: %s", a->o.server, werr.msg);
}

int sess_disk_end(struct sess *s, uint32_t i)
{
    struct agent *a = s->a;
    if (p2v_proto_put_disk_end(&s->out, P2V_MSG_DISK_END, i, s->disk_sent[i]) < 0)
        return sess_encode_failed(s, "DISK_END");
    if (sess_send(s) < 0)
        return -1;
    struct p2v_msg m;
    if (sess_expect(s, P2V_MSG_DISK_OK, &m) < 0)
        return -1;
    if (m.u.disk_end.disk != i)
        return sess_set(s, SESS_FAIL, "protocol", "DISK_OK for disk %u after disk %u's DISK_END",
                        m.u.disk_end.disk, i);
    progress_made(s);
    struct agent_event e;
    agent_event_begin(&e, "disk-done");
    p2v_json_kv_u64(&e.j, "disk", i);
    p2v_json_kv_u64(&e.j, "committed", m.u.disk_end.bytes);
    agent_event_end(a, &e);
    return 0;
}

int sess_disk(struct sess *s, uint32_t i, bool end)
{
    struct agent *a = s->a;
    struct agent_disk *d = &a->disks[i];
    struct imager_extent *skip = NULL;
    size_t nskip = 0;
    struct imager_pipeline *pl = NULL;
    struct p2v_err err = {0};
    int ret = -1;
    bool pg_open = false;
    struct agent_progress pg;

    if (sess_declare(s, i, &skip, &nskip) < 0)
        return -1;
    uint64_t have = ext_overlap(d->plan.ext, d->plan.count, skip, nskip);
    d->resumed = have;
    if (have > 0) {
        char h[32], t[32];
        p2v_info("disk %u (%s): the server has %s of %s planned; resuming", i, d->info->name,
                 p2v_format_size(have, h, sizeof h),
                 p2v_format_size(d->plan.bytes, t, sizeof t));
        struct agent_event e;
        agent_event_begin(&e, "resume");
        p2v_json_kv_u64(&e.j, "disk", i);
        p2v_json_kv_u64(&e.j, "server-has", have);
        agent_event_end(a, &e);
    }

    struct imager_pipeline_opts po;
    agent_pipeline_opts(a, d, CHUNK_SIZE, &po);
    po.skip = skip;
    po.nskip = nskip;
    po.hash = (enum imager_hash)s->hash_algo;
    po.zstd_level = a->o.compress_auto ? agent_adapt_current(&a->adapt) : a->o.compress_level;
    po.adaptive = a->o.compress_auto;
    pl = imager_pipeline_start(&po, &err);
    if (!pl) {
        sess_set(s, err.code == EIO ? SESS_BADSECTOR : SESS_FAIL, "read", "%s", err.msg);
        goto out;
    }
    char label[96];
    snprintf(label, sizeof label, "disk%u %s", i, d->info->name);
    agent_progress_init(&pg, a, i, label, d->plan.bytes, have);
    agent_progress_level(&pg, po.zstd_level);
    pg_open = true;

    const bool adaptive = a->o.compress_auto;
    struct adapt_clock ac = {0};
    if (adaptive)
        adapt_clock_start(&ac, p2v_now());
    uint64_t done = have;
    for (;;) {
        struct imager_chunk c;
        double t_next = adaptive ? p2v_now() : 0;
        int r = imager_pipeline_next(pl, &c, &err);
        double t_got = 0, cpu_got = 0;
        if (adaptive) {
            t_got = p2v_now();
            cpu_got = thread_cpu();
            ac.pipe += t_got - t_next;
        }
        if (r < 0) {
            if (err.code == EIO)
                sess_set(s, SESS_BADSECTOR, "bad-sector",
                         "%s (--skip-bad-sectors reads such sectors as zeros)", err.msg);
            else
                sess_set(s, SESS_FAIL, "read", "%s", err.msg);
            goto out;
        }
        if (r == 0)
            break;
        if (sess_send_chunk(s, i, &c) < 0)
            goto out;
        done += c.len;
        agent_progress_update(&pg, P2V_MIN(done, d->plan.bytes));
        if (sess_drain(s) < 0)
            goto out;
        if (adaptive) {
            double now = p2v_now();
            double blocked = (now - t_got) - (thread_cpu() - cpu_got);
            if (blocked > 0)
                ac.send += blocked;
            if (now - ac.t0 >= AGENT_ADAPT_WINDOW_S)
                adapt_window(s, i, pl, &pg, &ac, now);
        }
    }

    agent_progress_finish(&pg, true);
    pg_open = false;
    if (end && sess_disk_end(s, i) < 0)
        goto out;
    ret = 0;
out:
    if (pg_open)
        agent_progress_finish(&pg, false);
    if (pl) {
        uint64_t rd = imager_pipeline_bytes_read(pl) - imager_pipeline_bytes_skipped(pl);
        a->st.bytes_read += rd;
        s->pass_read += rd;
        size_t nbad = 0;
        const uint64_t *bad = imager_pipeline_bad_sectors(pl, &nbad);
        agent_add_bad(a, i, bad, nbad);
        imager_pipeline_free(pl);
    }
    free(skip);
    return ret;
}

/* ------------------------------------------------------------------ one session */

/* Enable TCP keepalive so that a server that vanished during the long wait for FINISHED
 * is noticed in minutes. Best effort. */
static void tcp_keepalive(int fd)
{
    int on = 1, idle = 60, intvl = 10, cnt = 6;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

static int sess_run(struct sess *s)
{
    struct agent *a = s->a;
    struct p2v_err err = {0};
    struct p2v_msg m;

    int fd = p2v_tcp_connect(a->o.server, CONNECT_TIMEOUT_MS, &err);
    if (fd < 0)
        return sess_set(s, SESS_RETRY, "network", "%s", err.msg);
    tcp_keepalive(fd);
    s->conn = p2v_conn_connect(s->ctx, fd, CONNECT_TIMEOUT_MS, &err);
    if (!s->conn) {
        if (err.code == EPERM) {
            /* the TLS layer's message shows the fingerprint the server presented */
            if (strstr(err.msg, a->o.fingerprint))
                return sess_set(s, SESS_REFUSED, "fingerprint", "%s", err.msg);
            return sess_set(s, SESS_REFUSED, "fingerprint", "%s (expected %s)", err.msg,
                            a->o.fingerprint);
        }
        return sess_set(s, SESS_RETRY, "network", "TLS handshake with %s: %s", a->o.server,
                        err.msg);
    }
    p2v_conn_set_timeout(s->conn, IO_TIMEOUT_MS);

    if (p2v_proto_put_hello(&s->out, s->hash_algo, a->o.token, a->o.name, s->source_id,
                            "p2v-agent " PACKAGE_VERSION) < 0)
        return sess_encode_failed(s, "HELLO");
    if (sess_send(s) < 0 || sess_expect(s, P2V_MSG_WELCOME, &m) < 0)
        return -1;
    if (m.u.welcome.version < P2V_PROTO_VERSION_MIN || m.u.welcome.version > P2V_PROTO_VERSION)
        return sess_set(s, SESS_REFUSED, "VERSION", "the server chose protocol version %u",
                        m.u.welcome.version);
    s->version = m.u.welcome.version;
    snprintf(a->job, sizeof a->job, "%.*s", (int)m.u.welcome.job.len, m.u.welcome.job.p);
    s->window = m.u.welcome.window;
    uint8_t state = m.u.welcome.state;
    struct agent_event e;
    agent_event_begin(&e, "welcome");
    p2v_json_kv_string(&e.j, "job", a->job);
    p2v_json_kv_string(&e.j, "state", welcome_state_name(state));
    p2v_json_kv_u64(&e.j, "window", s->window);
    agent_event_end(a, &e);
    if (state == P2V_JOB_COMPLETE) {
        s->rc = SESS_COMPLETE;
        return 0;
    }
    p2v_info("connected to %s: job %s (%s)", p2v_conn_peer(s->conn), a->job,
             welcome_state_name(state));

    if (p2v_proto_put_facts(&s->out, s->facts, s->facts_len) < 0)
        return sess_encode_failed(s, "FACTS");
    if (sess_send(s) < 0)
        return -1;
    if (a->o.live) {
        if (s->version < 2)
            return sess_set(s, SESS_REFUSED, "VERSION",
                            "the server speaks protocol version %u; a live capture needs "
                            "version 2 (a newer p2v-server)",
                            s->version);
        if (live_session(s) < 0)
            return -1;
    } else {
        for (uint32_t i = 0; i < a->ndisks; i++)
            if (sess_disk(s, i, true) < 0)
                return -1;
    }

    if (p2v_proto_put_done(&s->out) < 0)
        return sess_encode_failed(s, "DONE");
    if (sess_send(s) < 0)
        return -1;
    /* the server writes the final images now: minutes for big disks */
    uint64_t total = 0;
    for (size_t i = 0; i < a->ndisks; i++)
        total += a->disks[i].info->size;
    uint64_t wait_s = FINISH_TIMEOUT_MIN_S + total / (100u << 20);
    p2v_conn_set_timeout(s->conn, (int)P2V_MIN(wait_s * 1000, (uint64_t)INT32_MAX));
    p2v_info("every disk is committed; waiting for the server to write the images");
    if (sess_expect(s, P2V_MSG_FINISHED, &m) < 0)
        return -1;
    if (a->o.json) {
        /* the text goes into the log; the finished event follows */
        p2v_info("%.*s", (int)m.u.finished.text.len, m.u.finished.text.p);
    } else {
        printf("%.*s\n", (int)m.u.finished.text.len, m.u.finished.text.p);
        fflush(stdout);
    }
    s->rc = SESS_OK;
    return 0;
}

/* ------------------------------------------------------------------ the run */

/* Hex SHA-256 over each disk's path, size and serial, and the --all-blocks flag: the
 * server keys jobs by (name, source id), so the same disks resume the same job. The path
 * is made canonical (symbolic links such as /dev/disk/by-id/..., relative names), so that
 * naming a disk another way does not start a new job. */
static int source_id(const struct agent *a, char out[65])
{
    struct p2v_buf b = P2V_BUF_INIT;
    for (size_t i = 0; i < a->ndisks; i++) {
        const struct agent_disk *d = &a->disks[i];
        char *canon = realpath(d->path, NULL);
        p2v_buf_printf(&b, "disk %zu\npath %s\nsize %llu\nserial %s\n", i,
                       canon ? canon : d->path, (unsigned long long)d->info->size,
                       d->info->serial);
        free(canon);
    }
    p2v_buf_printf(&b, "all-blocks %d\n", a->o.all_blocks ? 1 : 0);
    uint8_t h[P2V_PROTO_HASH_LEN];
    int r = b.data ? p2v_hash(P2V_HASH_SHA256, b.data, b.len, h) : -1;
    p2v_buf_release(&b);
    if (r < 0)
        return -1;
    for (int i = 0; i < P2V_PROTO_HASH_LEN; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
    return 0;
}

static void sleep_s(double secs)
{
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int build_facts(struct agent *a, struct p2v_buf *out)
{
    struct p2v_json j;
    p2v_json_init(&j, out, false);
    agent_facts_json(a, &j, false);
    if (out->len <= P2V_PROTO_FACTS_MAX)
        return 0;
    /* many partitions on many disks: send the short form */
    p2v_warn("the facts are %zu bytes, over the %u-byte cap: sending them without the "
             "partition lists",
             out->len, P2V_PROTO_FACTS_MAX);
    p2v_buf_reset(out);
    p2v_json_init(&j, out, false);
    agent_facts_json(a, &j, true);
    return out->len <= P2V_PROTO_FACTS_MAX ? 0 : -1;
}

int agent_remote(struct agent *a)
{
    struct p2v_err err = {0};
    struct p2v_buf facts = P2V_BUF_INIT;
    char sid[65];
    int ret = AGENT_EXIT_FAIL;
    struct sess s;
    memset(&s, 0, sizeof s);

    for (size_t i = 0; i < a->ndisks; i++) {
        const struct imager_disk *di = a->disks[i].info;
        if (di->size == 0 || di->size % 512)
            return agent_fail(a, AGENT_EXIT_FAIL, "disk",
                              "disk '%s': its size (%llu bytes) is not a whole number of "
                              "512-byte sectors",
                              di->path, (unsigned long long)di->size);
    }
    if (source_id(a, sid) < 0)
        return agent_fail(a, AGENT_EXIT_FAIL, "internal", "cannot hash the source id");
    if (strcmp(a->o.hash, "sha256") == 0)
        s.hash_algo = P2V_HASH_SHA256;
    else if (strcmp(a->o.hash, "blake2b") == 0)
        s.hash_algo = P2V_HASH_BLAKE2B;
    else
        s.hash_algo = (uint8_t)imager_hash_pick();
    a->hash_name = s.hash_algo == P2V_HASH_BLAKE2B ? "blake2b" : "sha256";
    /* Auto compression with the server on this machine: the "link" is a memory copy and
     * the server shares our CPUs, so compressing only costs CPU on both sides. Start at
     * none (the controller still climbs if sending ever becomes the wait); --max-rate
     * says the link is slow after all, and keeps the usual start. */
    agent_adapt_init(&a->adapt, a->o.compress_auto && a->o.max_rate == 0 &&
                                        p2v_addr_is_loopback(a->o.server)
                                    ? 0
                                    : a->o.compress_level);
    a->st.level_final =
        a->o.compress_auto ? agent_adapt_current(&a->adapt) : a->o.compress_level;
    if (build_facts(a, &facts) < 0) {
        ret = agent_fail(a, AGENT_EXIT_FAIL, "internal", "the facts do not fit in a frame");
        goto out;
    }
    s.ctx = p2v_tls_client_ctx(a->o.fingerprint, &err);
    if (!s.ctx) {
        ret = agent_fail(a, AGENT_EXIT_FAIL, "tls", "%s", err.msg);
        goto out;
    }
    s.a = a;
    s.source_id = sid;
    s.facts = (const char *)facts.data;
    s.facts_len = facts.len;

    struct agent_event e;
    agent_event_begin(&e, "start");
    p2v_json_kv_string(&e.j, "mode", "remote");
    p2v_json_kv_string(&e.j, "server", a->o.server);
    p2v_json_kv_string(&e.j, "name", a->o.name);
    p2v_json_kv_string(&e.j, "source-id", sid);
    p2v_json_kv_string(&e.j, "hash", a->hash_name);
    p2v_json_kv_string(&e.j, "compress-mode", a->o.compress_auto ? "auto" : "fixed");
    p2v_json_kv_i64(&e.j, "compress-level", a->st.level_final);
    p2v_json_kv_u64(&e.j, "bytes-planned", a->st.bytes_planned);
    p2v_json_key(&e.j, "disks");
    p2v_json_array_begin(&e.j);
    for (size_t i = 0; i < a->ndisks; i++) {
        p2v_json_object_begin(&e.j);
        p2v_json_kv_u64(&e.j, "index", i);
        p2v_json_kv_string(&e.j, "path", a->disks[i].path);
        p2v_json_kv_u64(&e.j, "size", a->disks[i].info->size);
        p2v_json_kv_u64(&e.j, "planned", a->disks[i].plan.bytes);
        p2v_json_object_end(&e.j);
    }
    p2v_json_array_end(&e.j);
    agent_event_end(a, &e);
    char ps[32];
    p2v_info("capturing %zu disk%s (%s planned) as '%s' to %s", a->ndisks,
             a->ndisks == 1 ? "" : "s", p2v_format_size(a->st.bytes_planned, ps, sizeof ps),
             a->o.name, a->o.server);

    double last_progress = p2v_now();
    unsigned delay = 1, attempt = 0;
    for (;;) {
        p2v_buf_init(&s.out, 0);
        p2v_buf_init(&s.body, P2V_PROTO_BODY_MAX);
        s.conn = NULL;
        s.sent_nz = s.committed = s.frames = 0;
        memset(s.disk_sent, 0, sizeof s.disk_sent);
        s.version = 0;
        s.rate_bytes = 0;
        s.window = 0;
        s.last_progress = &last_progress;
        s.progressed = false;
        s.rc = SESS_FAIL;
        s.code[0] = s.msg[0] = '\0';
        sess_run(&s);
        if (s.conn) {
            a->st.wire_bytes += p2v_conn_bytes_out(s.conn);
            p2v_conn_close(s.conn);
            s.conn = NULL;
        }
        p2v_buf_release(&s.out);
        p2v_buf_release(&s.body);
        if (s.rc == SESS_OK || s.rc == SESS_COMPLETE) {
            for (size_t i = 0; i < a->ndisks; i++)
                a->st.resumed_bytes += a->disks[i].resumed;
            if (s.rc == SESS_COMPLETE) {
                if (a->o.json)
                    p2v_info("job %s already received", a->job);
                else
                    printf("job %s already received\n", a->job);
                fflush(stdout);
            }
            if (a->nbad)
                p2v_warn("%zu unreadable sectors were read as zeros (listed in the report)",
                         a->nbad);
            ret = agent_finish(a, a->job, NULL);
            goto out;
        }
        if (s.rc != SESS_RETRY) {
            int code = s.rc == SESS_REFUSED     ? AGENT_EXIT_REFUSED
                       : s.rc == SESS_BADSECTOR ? AGENT_EXIT_BADSECTOR
                                                : AGENT_EXIT_FAIL;
            ret = agent_fail(a, code, s.code, "%s", s.msg);
            goto out;
        }
        /* what this interruption lost: sent but never committed */
        uint64_t lost = s.sent_nz - s.committed;
        if (lost > a->st.lost_max)
            a->st.lost_max = lost;
        if (s.progressed)
            delay = 1;
        double idle = p2v_now() - last_progress;
        if (idle >= (double)a->o.retry_time) {
            ret = agent_fail(a, AGENT_EXIT_FAIL, s.code,
                             "giving up after %u s without progress: %s", a->o.retry_time,
                             s.msg);
            goto out;
        }
        double wait = P2V_MIN((double)delay, ceil((double)a->o.retry_time - idle));
        attempt++;
        a->st.reconnects++;
        p2v_warn("%s; retrying in %.0f s (attempt %u)", s.msg, wait, attempt);
        agent_event_begin(&e, "reconnect");
        p2v_json_kv_u64(&e.j, "attempt", attempt);
        p2v_json_kv_double(&e.j, "delay", wait);
        p2v_json_kv_string(&e.j, "reason", s.msg);
        agent_event_end(a, &e);
        sleep_s(wait);
        delay = P2V_MIN(delay * 2, (unsigned)BACKOFF_MAX_S);
    }
out:
    p2v_tls_ctx_free(s.ctx);
    p2v_buf_release(&facts);
    return ret;
}
