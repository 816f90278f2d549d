/* session.c: one agent's session, from the TLS handshake to FINISHED (wire protocol v1,
 * docs/protocol.md; the server's steps are numbered as there).
 *
 * Every frame is decoded and checked by the codec (p2v_conn_read_frame), then checked
 * once here against the session's state — order, declared disks, ranges inside the disk,
 * the zstd payload's size and the content hash — before any handler writes a byte. A
 * violation ends the session with an ERROR frame naming what was wrong; it touches
 * nothing outside the job's folder and no other session.
 *
 * Durability (step 6): verified DATA goes into the disk's in-progress image at once; it
 * becomes "committed" when the image has been checkpointed and the chunk's record and
 * the checkpoint's mark have been appended to the disk's journal and fdatasync'd — then
 * COMMITTED tells the agent (server.h, the journal, says why the image itself is synced
 * only every SRV_DURABLE_INTERVAL seconds). A commit happens when half the journal window
 * is pending, after a second with anything pending, at DISK_END, DONE and HASHES, and
 * when the session ends cleanly. The first two run on the session's committer thread
 * while more frames are read and written (the journal's fdatasync waits for the image's
 * writeback on ext4, tens of milliseconds): one batch at a time, its COMMITTED sent when
 * it is done; every other frame, and the session's end, waits for it first.
 *
 * DATA runs through three threads, so that decrypting, hashing and writing overlap: the
 * session thread reads a frame, makes the checks that need no payload work (its disk, its
 * range, its payload's size) and queues it, body and all; the session's verifier thread
 * decompresses it and checks its hash; the session's writer thread writes it into the
 * image if it passed; the session thread then collects it (the journal record pending,
 * the commit when one is due) or reports why it was refused. Each stage takes the frames
 * in the order they came, and the writer writes nothing after a refused frame. The session
 * thread drains the queue (every frame collected, or the first refused one reported)
 * before any other frame, before it waits on the socket, and before the session ends.
 * So a frame is still written only after its hash checks, the replies keep the wire's
 * order, and the image is touched by one thread at a time (iolock: the writer, or a
 * commit's checkpoint).
 *
 * Memory per session is bounded: SESS_INFLIGHT + 1 frame bodies (<= P2V_PROTO_BODY_MAX
 * each), SESS_INFLIGHT 1 MiB decompression buffers (allocated when a compressed frame
 * comes), and at most SESS_PEND_MAX pending journal records and as many being committed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zstd.h>

#include "p2v-tls.h"
#include "server.h"

#define SESS_PEND_MAX 4096        /* pending journal records before a forced commit */
#define SESS_COMMIT_INTERVAL 1.0  /* seconds with something pending */
#define SESS_SAVE_INTERVAL 1.0    /* job.json while active */
#define SESS_IO_TIMEOUT_MS 60000  /* a frame once started must arrive within this */
#define SESS_HANDSHAKE_MS 10000
#define SESS_LINGER_S 2.0         /* reading what the agent still sends after our close */
#define SESS_INFLIGHT 4           /* DATA frames between the reading and the collecting */
#define SESS_VERR_MAX 400

struct sess_pend {
    uint32_t disk;
    struct jrnl_rec rec;
};

/* A DATA frame between the reading and the collecting. A slot belongs to the stage whose
 * counter points at it (struct srv_session): queued, then the verifier's, then the
 * writer's, then the session thread's again. */
struct sess_slot {
    struct p2v_buf body;  /* the frame's body: m's payload points into it */
    struct p2v_msg m;
    uint8_t *zbuf;        /* decompressed content (allocated on the first compressed frame) */
    const uint8_t *data;  /* verified content: the payload or zbuf (NULL for ZERO) */
    uint16_t ecode;       /* 0, or why the frame is refused */
    char emsg[SESS_VERR_MAX];
    int werr;             /* the writer's errno when the write failed (ecode 0) */
};

struct srv_session {
    struct srv_session *next, *prev;
    struct srv_server *srv;
    int fd;                 /* our own descriptor of the socket (poll, shutdown) */
    char peer[80];
    bool reject_busy;
    struct p2v_conn *conn;
    struct srv_job *job;
    uint8_t hash_algo;
    uint16_t version;       /* the protocol version WELCOME chose */
    bool declared[P2V_PROTO_DISKS_MAX];
    uint64_t sent[P2V_PROTO_DISKS_MAX]; /* non-zero DATA bytes received this session */
    bool facts_seen, disk_seen;
    bool dead;              /* the connection is gone: send nothing more */
    struct p2v_buf body, out;
    ZSTD_DCtx *dctx;        /* the verifier's */
    /* the DATA queue: frames counted queued >= verified >= wrote >= written; frame k is in
     * slot[k % SESS_INFLIGHT]; the counters under vlock */
    struct sess_slot slot[SESS_INFLIGHT];
    uint64_t queued, verified, wrote, written;
    pthread_mutex_t vlock;
    pthread_cond_t vwork, wwork, vdone; /* verifier, writer, session thread */
    pthread_mutex_t iolock;             /* the job's images: writer or commit */
    pthread_t verifier, writer;
    bool vstarted, vstop;
    bool wfailed;                       /* the writer's: nothing more is written */
    struct sess_pend *pend;
    size_t npend;
    uint64_t pend_bytes;    /* non-zero bytes pending */
    double pend_since;
    /* the batch with the committer thread (records taken from pend), and its result */
    struct sess_pend *cpend;
    size_t ncpend;
    uint64_t cpend_bytes;
    struct jrnl_rec *recs;  /* the committer's scratch: one disk's records */
    bool cbusy;             /* the session thread's: a batch is out */
    bool cready, cdone;     /* under vlock: a batch waits for the committer; it is done */
    int cerr;               /* errno of a failed commit, 0 */
    unsigned cerr_disk;
    bool cdisk[P2V_PROTO_DISKS_MAX];       /* the disks in the batch */
    uint64_t ccommitted[P2V_PROTO_DISKS_MAX]; /* their committed bytes after it */
    pthread_t committer;
    pthread_cond_t cwork, cdone_cv;
    int cefd;               /* eventfd: the committer wakes the session thread's poll() */
    uint64_t c_frames, c_bytes; /* committed this session (cumulative, as in COMMITTED) */
    uint64_t c_told;        /* c_frames in the last COMMITTED sent */
    uint64_t frames;
};

/* ---------------------------------------------------------------- helpers */

static bool no_space(int e)
{
    return e == ENOSPC || e == EDQUOT;
}

static const char *job_id(const struct srv_session *s)
{
    return s->job ? s->job->id : "-";
}

/* Send the frame in s->out. */
static int sess_send(struct srv_session *s)
{
    struct p2v_err err = {0};
    if (s->dead) {
        p2v_buf_reset(&s->out);
        return -1;
    }
    if (p2v_conn_send(s->conn, &s->out, &err) < 0) {
        srv_log(s->srv, P2V_LOG_WARN, "%s: job %s: connection lost: %s", s->peer, job_id(s),
                err.msg);
        s->dead = true;
        p2v_buf_reset(&s->out);
        return -1;
    }
    return 0;
}

/* End the session with an ERROR frame: log it, and for errors that say the capture went
 * wrong, mark the job failed in the "receiving" stage. Always -1. */
__attribute__((format(printf, 3, 4))) static int sess_error(struct srv_session *s,
                                                           uint16_t code, const char *fmt,
                                                           ...)
{
    char msg[P2V_PROTO_MSG_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++) /* the ERROR text is printable ASCII */
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    p2v_buf_reset(&s->out);
    if (p2v_proto_put_error(&s->out, code, msg) == 0)
        sess_send(s);
    srv_log(s->srv, code == P2V_E_SHUTDOWN || code == P2V_E_BUSY ? P2V_LOG_INFO : P2V_LOG_WARN,
            "%s: job %s: ERROR %s: %s", s->peer, job_id(s), p2v_proto_err_name(code), msg);
    if (s->job) {
        srv_job_log(s->job, "session %llu: ERROR %s: %s", (unsigned long long)s->job->sessions,
                    p2v_proto_err_name(code), msg);
        if (code == P2V_E_NOSPACE || code == P2V_E_HASH || code == P2V_E_DISK ||
            code == P2V_E_PROTO || code == P2V_E_INTERNAL) {
            struct p2v_err err = {0};
            s->job->state = JOB_FAILED;
            snprintf(s->job->failed_stage, sizeof s->job->failed_stage, "receiving");
            snprintf(s->job->reason, sizeof s->job->reason, "%.1000s", msg);
            if (srv_job_save(s->job, &err) < 0)
                srv_log(s->srv, P2V_LOG_ERROR, "%s", err.msg);
        }
    }
    return -1;
}

/* An I/O error writing @file: NOSPACE when the store is full, INTERNAL otherwise. */
static int sess_io_error(struct srv_session *s, int e, const char *file, const char *what)
{
    if (no_space(e))
        return sess_error(s, P2V_E_NOSPACE,
                          "server store is full (no space left on device writing '%s')", file);
    return sess_error(s, P2V_E_INTERNAL, "cannot %s '%s': %s", what, file, strerror(e));
}

static void save_job(struct srv_session *s)
{
    struct p2v_err err = {0};
    srv_job_rate_sample(s->job, p2v_now());
    if (srv_job_save(s->job, &err) < 0)
        srv_log(s->srv, P2V_LOG_WARN, "%s", err.msg);
}

/* ---------------------------------------------------------------- commit */

/* The committer's work on the batch in cpend (step 6): per disk, the image's checkpoint
 * (@lock: under iolock, the writer waits meanwhile), then the records and the mark
 * appended to the journal and fdatasync'd, while the writer goes on. On failure the
 * images are closed and cerr says why. */
static void commit_run(struct srv_session *s, bool lock)
{
    struct srv_job *job = s->job;
    struct p2v_err err = {0};
    double now = p2v_now();
    s->cerr = 0;
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        size_t n = 0;
        for (size_t k = 0; k < s->ncpend; k++)
            if (s->cpend[k].disk == i)
                s->recs[n++] = s->cpend[k].rec;
        s->cdisk[i] = n > 0;
        if (n == 0)
            continue;
        struct srv_disk *d = &job->disks[i];
        if (d->durable_at == 0)
            d->durable_at = now;
        bool durable = now - d->durable_at >= SRV_DURABLE_INTERVAL;
        uint64_t mark;
        if (lock)
            pthread_mutex_lock(&s->iolock);
        int r = srv_disk_checkpoint(job, i, durable, &mark, &err);
        if (lock)
            pthread_mutex_unlock(&s->iolock);
        if (r == 0)
            r = srv_disk_log(job, i, s->recs, n, mark, durable, job->sessions, &err);
        if (r < 0) {
            /* the image may hold writes no checkpoint covers: reopen it at its last mark
             * (what was pending is sent again after the agent reconnects); the writer
             * then finds it closed and writes nothing more */
            if (lock)
                pthread_mutex_lock(&s->iolock);
            srv_job_close_files(job);
            if (lock)
                pthread_mutex_unlock(&s->iolock);
            s->cerr = err.code ? err.code : EIO;
            s->cerr_disk = i;
            return;
        }
        if (durable)
            d->durable_at = now;
        s->ccommitted[i] = srv_ranges_bytes(&d->jr.committed);
    }
}

static void *committer_main(void *arg)
{
    struct srv_session *s = arg;
    uint64_t one = 1;
    pthread_mutex_lock(&s->vlock);
    for (;;) {
        while (!s->vstop && !s->cready)
            pthread_cond_wait(&s->cwork, &s->vlock);
        if (!s->cready)
            break; /* stopping, nothing handed over */
        s->cready = false;
        pthread_mutex_unlock(&s->vlock);
        commit_run(s, true);
        pthread_mutex_lock(&s->vlock);
        s->cdone = true;
        pthread_cond_signal(&s->cdone_cv);
        if (write(s->cefd, &one, sizeof one) < 0) {
            /* the counter cannot overflow: the session thread reads it each time */
        }
    }
    pthread_mutex_unlock(&s->vlock);
    return NULL;
}

/* Hand the pending records to the committer (the session thread made them; it is idle:
 * commit_collect came first). Without the verifier's pipeline the commit runs here. */
static void commit_begin(struct srv_session *s)
{
    struct sess_pend *t = s->cpend;
    s->cpend = s->pend;
    s->pend = t;
    s->ncpend = s->npend;
    s->cpend_bytes = s->pend_bytes;
    s->npend = 0;
    s->pend_bytes = 0;
    s->cbusy = true;
    if (!s->vstarted) {
        commit_run(s, false);
        s->cdone = true;
        return;
    }
    pthread_mutex_lock(&s->vlock);
    s->cready = true;
    pthread_cond_signal(&s->cwork);
    pthread_mutex_unlock(&s->vlock);
}

/* True when the batch handed to the committer is done (commit_collect will not wait). */
static bool commit_ready(struct srv_session *s)
{
    if (!s->cbusy)
        return false;
    if (!s->vstarted)
        return true;
    pthread_mutex_lock(&s->vlock);
    bool done = s->cdone;
    pthread_mutex_unlock(&s->vlock);
    return done;
}

/* Wait for the batch with the committer, if any, and take its result: the disks'
 * committed bytes and the session's counts, or the ERROR frame when it failed. 0 / -1. */
static int commit_collect(struct srv_session *s)
{
    if (!s->cbusy)
        return 0;
    if (s->vstarted) {
        uint64_t v;
        pthread_mutex_lock(&s->vlock);
        while (!s->cdone)
            pthread_cond_wait(&s->cdone_cv, &s->vlock);
        pthread_mutex_unlock(&s->vlock);
        if (read(s->cefd, &v, sizeof v) < 0) {
            /* EAGAIN: already read with an earlier batch's */
        }
    }
    s->cbusy = s->cdone = false;
    if (s->cerr) {
        char name[32];
        snprintf(name, sizeof name, "disk%u.journal", s->cerr_disk);
        return sess_io_error(s, s->cerr, name, "commit to");
    }
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++)
        if (s->cdisk[i])
            s->job->disks[i].committed = s->ccommitted[i];
    s->c_frames += s->ncpend;
    s->c_bytes += s->cpend_bytes;
    s->ncpend = 0;
    s->cpend_bytes = 0;
    return 0;
}

/* COMMITTED, when commits were made since the last one was sent (and the agent is still
 * there to read it). 0 / -1. */
static int send_committed(struct srv_session *s)
{
    if (s->c_frames == s->c_told || s->dead)
        return 0;
    p2v_buf_reset(&s->out);
    if (p2v_proto_put_committed(&s->out, s->c_frames, s->c_bytes) < 0)
        return sess_error(s, P2V_E_INTERNAL, "cannot encode COMMITTED");
    s->c_told = s->c_frames;
    return sess_send(s);
}

/* Make every pending chunk durable and wait for it (step 6); @notify: then tell the agent
 * (COMMITTED). 0 / -1 (an ERROR frame was sent when the store failed). */
static int sess_commit(struct srv_session *s, bool notify)
{
    if (!s->job)
        return 0;
    if (commit_collect(s) < 0)
        return -1;
    if (s->npend) {
        commit_begin(s);
        if (commit_collect(s) < 0)
            return -1;
    }
    return notify ? send_committed(s) : 0;
}

/* Start a commit of what is pending and go on reading: the committer syncs the journal
 * while more frames come. One batch is out at a time: the one before is waited for
 * first, and its COMMITTED sent. 0 / -1. */
static int sess_commit_async(struct srv_session *s)
{
    if (commit_collect(s) < 0 || send_committed(s) < 0)
        return -1;
    if (s->npend)
        commit_begin(s);
    return 0;
}

/* ---------------------------------------------------------------- handlers */

static int on_hello(struct srv_session *s, const struct p2v_msg *m)
{
    struct srv_server *srv = s->srv;
    struct p2v_err err = {0};
    char name[P2V_PROTO_NAME_MAX + 1], source_id[P2V_PROTO_SOURCE_ID_MAX + 1];
    char agent[P2V_PROTO_VERSION_STR_MAX + 1];

    if (m->u.hello.version_min > P2V_PROTO_VERSION ||
        m->u.hello.version_max < P2V_PROTO_VERSION_MIN)
        return sess_error(s, P2V_E_VERSION,
                          "no common protocol version (the agent speaks %u..%u, the server "
                          "%u..%u)",
                          m->u.hello.version_min, m->u.hello.version_max,
                          P2V_PROTO_VERSION_MIN, P2V_PROTO_VERSION);
    s->version = P2V_MIN(m->u.hello.version_max, (uint16_t)P2V_PROTO_VERSION);
    /* the store's token, or the machine's own (a batch's: bound to its name) */
    const struct p2v_str *nm = &m->u.hello.name;
    bool named = srv_name_check(nm->p, nm->len, &err) == 0;
    if (named) {
        memcpy(name, nm->p, nm->len);
        name[nm->len] = '\0';
    }
    if (!srv_token_equal(&srv->store, m->u.hello.token.p, m->u.hello.token.len) &&
        !(named && srv_batch_token_ok(&srv->store, name, m->u.hello.token.p,
                                      m->u.hello.token.len)))
        return sess_error(s, P2V_E_AUTH, "wrong join token");
    if (m->u.hello.hash_algo != P2V_HASH_SHA256 && m->u.hello.hash_algo != P2V_HASH_BLAKE2B)
        return sess_error(s, P2V_E_PROTO, "HELLO: unknown hash algorithm %u",
                          m->u.hello.hash_algo);
    if (!named)
        return sess_error(s, P2V_E_NAME, "machine name '%.*s' refused: %s",
                          (int)P2V_MIN(nm->len, (uint16_t)P2V_PROTO_NAME_MAX), nm->p, err.msg);
    const struct p2v_str *si = &m->u.hello.source_id;
    if (si->len == 0 || si->len > P2V_PROTO_SOURCE_ID_MAX)
        return sess_error(s, P2V_E_PROTO, "HELLO: the source id is empty or too long");
    memcpy(source_id, si->p, si->len);
    source_id[si->len] = '\0';
    size_t alen = P2V_MIN((size_t)m->u.hello.agent_version.len, sizeof agent - 1);
    memcpy(agent, m->u.hello.agent_version.p, alen);
    agent[alen] = '\0';
    s->hash_algo = m->u.hello.hash_algo;

    bool is_new = false;
    struct srv_job *job = NULL;
    switch (srv_job_acquire(&srv->store, name, source_id, &job, &is_new, &err)) {
    case SRV_ACQ_OK: break;
    case SRV_ACQ_BUSY:
        return sess_error(s, P2V_E_BUSY,
                          "the job of machine '%s' is held by another session", name);
    case SRV_ACQ_ERROR:
        if (no_space(err.code))
            return sess_error(s, P2V_E_NOSPACE,
                              "server store is full (no space left on device making job '%s')",
                              name);
        return sess_error(s, P2V_E_INTERNAL, "cannot open a job for '%s': %s", name, err.msg);
    }
    s->job = job;
    job->sessions++;
    snprintf(job->agent, sizeof job->agent, "%s", s->peer);

    uint8_t state = is_new ? P2V_JOB_NEW : P2V_JOB_RESUME;
    if (srv_job_captured(job)) {
        state = P2V_JOB_COMPLETE;
        srv_job_remove_staging(job); /* leftovers of a server that died after the images */
    } else {
        job->active = true;
        if (job->state == JOB_FAILED) {
            job->state = JOB_RECEIVING;
            job->failed_stage[0] = job->reason[0] = '\0';
        }
        for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
            if (!job->disks[i].known)
                continue;
            if (srv_disk_open(job, i, s->hash_algo, &err) < 0) {
                char f[32];
                snprintf(f, sizeof f, "disk%u", i);
                return sess_io_error(s, err.code, f, "open the disk files of");
            }
        }
    }
    srv_job_log(job, "session %llu from %s (agent '%s', %s): %s",
                (unsigned long long)job->sessions, s->peer, agent,
                p2v_hash_name((enum p2v_hash_algo)s->hash_algo),
                state == P2V_JOB_NEW ? "new job" : state == P2V_JOB_RESUME ? "resumed"
                                                                           : "already received");
    srv_log(srv, P2V_LOG_INFO, "%s: job %s: session %llu (machine '%s'): %s", s->peer, job->id,
            (unsigned long long)job->sessions, name,
            state == P2V_JOB_NEW ? "new job" : state == P2V_JOB_RESUME ? "resumed"
                                                                       : "already received");
    save_job(s);
    p2v_buf_reset(&s->out);
    if (p2v_proto_put_welcome_version(&s->out, s->version, state, srv->store.window,
                                      job->id) < 0)
        return sess_error(s, P2V_E_INTERNAL, "cannot encode WELCOME");
    if (sess_send(s) < 0)
        return -1;
    return state == P2V_JOB_COMPLETE ? 1 : 0;
}

static int on_facts(struct srv_session *s, const struct p2v_msg *m)
{
    struct p2v_err err = {0};
    if (s->facts_seen)
        return sess_error(s, P2V_E_PROTO, "FACTS sent twice");
    if (s->disk_seen)
        return sess_error(s, P2V_E_PROTO, "FACTS after DISK");
    s->facts_seen = true;
    if (srv_write_file_at(s->job->dirfd, "facts.json", m->u.facts.json.p, m->u.facts.json.len,
                          0600, &err) < 0)
        return sess_io_error(s, err.code, "facts.json", "write");
    srv_job_log(s->job, "facts received (%u bytes)", m->u.facts.json.len);
    return 0;
}

static int send_have(struct srv_session *s, uint32_t disk)
{
    const struct srv_ranges *r = &s->job->disks[disk].jr.committed;
    size_t i = 0;
    do {
        uint32_t n = (uint32_t)P2V_MIN(r->n - i, (size_t)P2V_PROTO_RANGES_MAX);
        uint8_t flags = i + n < r->n ? P2V_RANGES_MORE : 0;
        p2v_buf_reset(&s->out);
        if (p2v_proto_put_ranges(&s->out, P2V_MSG_HAVE, flags, disk, r->v ? r->v + i : NULL,
                                 n) < 0)
            return sess_error(s, P2V_E_INTERNAL, "cannot encode HAVE");
        if (sess_send(s) < 0)
            return -1;
        i += n;
    } while (i < r->n);
    return 0;
}

static int on_disk(struct srv_session *s, const struct p2v_msg *m)
{
    struct srv_job *job = s->job;
    struct p2v_err err = {0};
    uint32_t i = m->u.disk.disk;
    if (i >= P2V_PROTO_DISKS_MAX)
        return sess_error(s, P2V_E_DISK, "disk index %u is out of range", i);
    if (s->declared[i])
        return sess_error(s, P2V_E_PROTO, "disk %u declared twice", i);
    struct srv_disk *d = &job->disks[i];
    if (d->known && (d->size != m->u.disk.size || d->sector_size != m->u.disk.sector_size))
        return sess_error(s, P2V_E_DISK,
                          "disk %u: source changed (%llu bytes, %u-byte sectors; the job has "
                          "%llu bytes, %u-byte sectors)",
                          i, (unsigned long long)m->u.disk.size, m->u.disk.sector_size,
                          (unsigned long long)d->size, d->sector_size);
    bool was_known = d->known;
    d->size = m->u.disk.size;
    d->sector_size = m->u.disk.sector_size;
    d->planned = P2V_MIN(m->u.disk.planned, m->u.disk.size);
    d->all_blocks = (m->flags & P2V_DISK_ALL_BLOCKS) != 0;
    size_t nl = P2V_MIN((size_t)m->u.disk.name.len, sizeof d->name - 1);
    memcpy(d->name, m->u.disk.name.p, nl);
    d->name[nl] = '\0';
    size_t il = P2V_MIN((size_t)m->u.disk.id.len, sizeof d->id - 1);
    memcpy(d->id, m->u.disk.id.p, il);
    d->id[il] = '\0';
    if (!was_known) {
        d->known = true;
        d->complete = false;
        d->committed = 0;
    }
    if (srv_disk_open(job, i, s->hash_algo, &err) < 0) {
        char f[32];
        snprintf(f, sizeof f, "disk%u.part", i);
        return sess_io_error(s, err.code, f, "create");
    }
    s->declared[i] = true;
    s->disk_seen = true;
    char sz[32], have[32];
    srv_job_log(job, "disk %u '%s' (%s, %u-byte sectors, %llu bytes planned%s): %s committed",
                i, d->name, p2v_format_size(d->size, sz, sizeof sz), d->sector_size,
                (unsigned long long)d->planned, d->all_blocks ? ", all blocks" : "",
                p2v_format_size(d->committed, have, sizeof have));
    save_job(s);
    return send_have(s, i);
}

/* The verifier's work on one frame: decompress, check the size and the hash. Sets the
 * slot's data, or its ecode and emsg. */
static void verify_slot(struct srv_session *s, struct sess_slot *sl)
{
    const struct p2v_msg *m = &sl->m;
    uint32_t i = m->u.data.disk, len = m->u.data.len;
    unsigned long long off = m->u.data.off;
    sl->ecode = 0;
    sl->data = NULL;
    if (m->flags & P2V_DATA_ZERO)
        return;
    const uint8_t *data = m->u.data.payload;
    if (m->flags & P2V_DATA_ZSTD) {
        if (!sl->zbuf && !(sl->zbuf = malloc(P2V_PROTO_CHUNK_MAX))) {
            sl->ecode = P2V_E_INTERNAL;
            snprintf(sl->emsg, sizeof sl->emsg, "out of memory");
            return;
        }
        size_t n = ZSTD_decompressDCtx(s->dctx, sl->zbuf, len, m->u.data.payload,
                                       m->u.data.payload_len);
        if (ZSTD_isError(n) || n != len) {
            sl->ecode = P2V_E_PROTO;
            if (ZSTD_isError(n))
                snprintf(sl->emsg, sizeof sl->emsg,
                         "DATA disk %u at offset %llu: the zstd payload does not decompress "
                         "to %u bytes: %s", i, off, len, ZSTD_getErrorName(n));
            else
                snprintf(sl->emsg, sizeof sl->emsg,
                         "DATA disk %u at offset %llu: the zstd payload decompresses to %zu "
                         "bytes, not %u", i, off, n, len);
            return;
        }
        data = sl->zbuf;
    }
    uint8_t h[P2V_PROTO_HASH_LEN];
    if (p2v_hash((enum p2v_hash_algo)s->hash_algo, data, len, h) < 0) {
        sl->ecode = P2V_E_INTERNAL;
        snprintf(sl->emsg, sizeof sl->emsg, "cannot compute a hash");
        return;
    }
    if (memcmp(h, m->u.data.hash, P2V_PROTO_HASH_LEN) != 0) {
        sl->ecode = P2V_E_HASH;
        snprintf(sl->emsg, sizeof sl->emsg,
                 "DATA disk %u at offset %llu (%u bytes): the content does not match its %s "
                 "hash", i, off, len, p2v_hash_name((enum p2v_hash_algo)s->hash_algo));
        return;
    }
    sl->data = data;
}

static void *verifier_main(void *arg)
{
    struct srv_session *s = arg;
    pthread_mutex_lock(&s->vlock);
    for (;;) {
        while (!s->vstop && s->verified == s->queued)
            pthread_cond_wait(&s->vwork, &s->vlock);
        if (s->vstop)
            break;
        struct sess_slot *sl = &s->slot[s->verified % SESS_INFLIGHT];
        pthread_mutex_unlock(&s->vlock);
        verify_slot(s, sl);
        pthread_mutex_lock(&s->vlock);
        s->verified++;
        pthread_cond_signal(&s->wwork);
    }
    pthread_mutex_unlock(&s->vlock);
    return NULL;
}

/* Write the verified frames into the images in order (step 6's first half). After a
 * refused frame or a failed write nothing more is written: the session ends there. */
static void *writer_main(void *arg)
{
    struct srv_session *s = arg;
    pthread_mutex_lock(&s->vlock);
    for (;;) {
        while (!s->vstop && s->wrote == s->verified)
            pthread_cond_wait(&s->wwork, &s->vlock);
        if (s->vstop)
            break;
        struct sess_slot *sl = &s->slot[s->wrote % SESS_INFLIGHT];
        pthread_mutex_unlock(&s->vlock);
        sl->werr = 0;
        if (sl->ecode || s->wfailed) {
            s->wfailed = true;
        } else {
            const struct p2v_msg *m = &sl->m;
            struct p2v_err err = {0};
            pthread_mutex_lock(&s->iolock);
            if (srv_disk_write(s->job, m->u.data.disk, sl->data, m->u.data.len,
                               m->u.data.off, (m->flags & P2V_DATA_ZERO) != 0, &err) < 0) {
                sl->werr = err.code ? err.code : EIO;
                s->wfailed = true;
            }
            pthread_mutex_unlock(&s->iolock);
        }
        pthread_mutex_lock(&s->vlock);
        s->wrote++;
        pthread_cond_signal(&s->vdone);
    }
    pthread_mutex_unlock(&s->vlock);
    return NULL;
}

/* Collect the oldest queued frame once the writer is done with it: its journal record
 * pending, a commit when one is due; or the reason it was refused. 0 / -1 (an ERROR frame
 * was sent). */
static int write_next(struct srv_session *s)
{
    struct srv_job *job = s->job;
    char name[32];
    pthread_mutex_lock(&s->vlock);
    while (s->wrote == s->written)
        pthread_cond_wait(&s->vdone, &s->vlock);
    pthread_mutex_unlock(&s->vlock);
    struct sess_slot *sl = &s->slot[s->written % SESS_INFLIGHT];
    s->written++;
    if (sl->ecode)
        return sess_error(s, sl->ecode, "%s", sl->emsg);
    const struct p2v_msg *m = &sl->m;
    uint32_t i = m->u.data.disk;
    uint64_t off = m->u.data.off;
    uint32_t len = m->u.data.len;
    bool zero = (m->flags & P2V_DATA_ZERO) != 0;
    if (sl->werr) {
        /* a failed commit closes the images, and the writer then fails: its cause first */
        if (commit_collect(s) < 0)
            return -1;
        snprintf(name, sizeof name, "disk%u.part", i);
        pthread_mutex_lock(&s->iolock);
        srv_job_close_files(job);
        pthread_mutex_unlock(&s->iolock);
        return sess_io_error(s, sl->werr, name, "write");
    }

    struct sess_pend *p = &s->pend[s->npend++];
    memset(p, 0, sizeof *p);
    p->disk = i;
    p->rec.off = off;
    p->rec.len = len;
    p->rec.flags = zero ? JRNL_REC_ZERO : 0;
    p->rec.hash_algo = s->hash_algo;
    if (!zero)
        memcpy(p->rec.hash, m->u.data.hash, P2V_PROTO_HASH_LEN);
    p->rec.session = job->sessions;
    if (s->npend == 1)
        s->pend_since = p2v_now();
    if (!zero) {
        s->pend_bytes += len;
        s->sent[i] += len;
        job->bytes_received += len;
    }
    s->frames++;
    if (s->pend_bytes >= s->srv->store.window / 2 || s->npend >= SESS_PEND_MAX)
        return sess_commit_async(s);
    return 0;
}

static void sess_stop_pipeline(struct srv_session *s);

/* Write every queued frame. 0 / -1 (an ERROR frame was sent, or the connection is gone
 * and nothing more is written). */
static int drain_frames(struct srv_session *s)
{
    while (s->written < s->queued)
        if (write_next(s) < 0) {
            sess_stop_pipeline(s); /* the rest is dropped: sent again after a reconnect */
            return -1;
        }
    return 0;
}

/* Write every queued frame and wait for the commit that is out, its COMMITTED sent. */
static int sess_drain(struct srv_session *s)
{
    if (drain_frames(s) < 0)
        return -1;
    if (commit_collect(s) < 0 || send_committed(s) < 0) {
        sess_stop_pipeline(s);
        return -1;
    }
    return 0;
}

/* Every frame queued and written, then an error: the wire's order of replies. */
#define sess_error_drained(s, ...) \
    (sess_drain(s) < 0 ? -1 : sess_error(s, __VA_ARGS__))

static void pipeline_sync_destroy(struct srv_session *s)
{
    close(s->cefd);
    s->cefd = -1;
    pthread_cond_destroy(&s->cdone_cv);
    pthread_cond_destroy(&s->cwork);
    pthread_cond_destroy(&s->vdone);
    pthread_cond_destroy(&s->wwork);
    pthread_cond_destroy(&s->vwork);
    pthread_mutex_destroy(&s->iolock);
    pthread_mutex_destroy(&s->vlock);
}

static int start_pipeline(struct srv_session *s)
{
    if (s->vstarted)
        return 0;
    if ((s->cefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        return -1;
    pthread_mutex_init(&s->vlock, NULL);
    pthread_mutex_init(&s->iolock, NULL);
    pthread_cond_init(&s->vwork, NULL);
    pthread_cond_init(&s->wwork, NULL);
    pthread_cond_init(&s->vdone, NULL);
    pthread_cond_init(&s->cwork, NULL);
    pthread_cond_init(&s->cdone_cv, NULL);
    int started = 0;
    if (pthread_create(&s->verifier, NULL, verifier_main, s) != 0)
        goto fail;
    started++;
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0)
        goto fail;
    started++;
    if (pthread_create(&s->committer, NULL, committer_main, s) != 0)
        goto fail;
    s->vstarted = true;
    return 0;
fail:
    pthread_mutex_lock(&s->vlock);
    s->vstop = true;
    pthread_cond_signal(&s->vwork);
    pthread_cond_signal(&s->wwork);
    pthread_mutex_unlock(&s->vlock);
    if (started > 0)
        pthread_join(s->verifier, NULL);
    if (started > 1)
        pthread_join(s->writer, NULL);
    s->vstop = false;
    pipeline_sync_destroy(s);
    return -1;
}

/* Stop the verifier and the writer (each after the frame it works on) and the committer
 * (after the batch it has, whose result is dropped: the journal tells the next session);
 * what is still queued is dropped. The session ends after this. */
static void sess_stop_pipeline(struct srv_session *s)
{
    if (!s->vstarted)
        return;
    pthread_mutex_lock(&s->vlock);
    s->vstop = true;
    pthread_cond_signal(&s->vwork);
    pthread_cond_signal(&s->wwork);
    pthread_cond_signal(&s->cwork);
    pthread_mutex_unlock(&s->vlock);
    pthread_join(s->verifier, NULL);
    pthread_join(s->writer, NULL);
    pthread_join(s->committer, NULL);
    pipeline_sync_destroy(s);
    s->vstarted = s->vstop = s->wfailed = false;
    s->queued = s->verified = s->wrote = s->written = 0;
    s->cbusy = s->cready = s->cdone = false;
    s->ncpend = 0;
    s->cpend_bytes = 0;
}

/* Step 5: a DATA frame read into s->body. The checks that need no payload work happen
 * here; then the frame goes to the verifier with its body (s->body gets the slot's empty
 * one), the oldest frame written first when SESS_INFLIGHT are queued. */
static int on_data(struct srv_session *s, const struct p2v_msg *m)
{
    struct srv_job *job = s->job;
    struct p2v_err err = {0};
    uint32_t i = m->u.data.disk;
    if (i >= P2V_PROTO_DISKS_MAX || !s->declared[i])
        return sess_error_drained(s, P2V_E_DISK, "DATA for disk %u, which was not declared", i);
    struct srv_disk *d = &job->disks[i];
    if (p2v_proto_check_data(m, d->size, &err) < 0)
        return sess_error_drained(s, P2V_E_DISK, "disk %u: %s", i, err.msg);
    uint32_t len = m->u.data.len;
    bool zero = (m->flags & P2V_DATA_ZERO) != 0;
    if (!zero && !(m->flags & P2V_DATA_ZSTD) && m->u.data.payload_len != len)
        return sess_error_drained(s, P2V_E_PROTO, "DATA disk %u at offset %llu: payload is "
                                  "%zu bytes, not %u", i,
                                  (unsigned long long)m->u.data.off, m->u.data.payload_len,
                                  len);
    if (start_pipeline(s) < 0)
        return sess_error_drained(s, P2V_E_INTERNAL, "cannot start the verifier and the "
                                  "writer: out of memory or threads");
    if (s->queued - s->written == SESS_INFLIGHT && write_next(s) < 0) {
        sess_stop_pipeline(s);
        return -1;
    }
    struct sess_slot *sl = &s->slot[s->queued % SESS_INFLIGHT];
    struct p2v_buf t = sl->body;
    sl->body = s->body; /* m's payload points into this storage, which moves with it */
    s->body = t;
    sl->m = *m;
    pthread_mutex_lock(&s->vlock);
    s->queued++;
    pthread_cond_signal(&s->vwork);
    pthread_mutex_unlock(&s->vlock);
    return 0;
}

static int on_disk_end(struct srv_session *s, const struct p2v_msg *m)
{
    uint32_t i = m->u.disk_end.disk;
    if (i >= P2V_PROTO_DISKS_MAX || !s->declared[i])
        return sess_error(s, P2V_E_DISK, "DISK_END for disk %u, which was not declared", i);
    if (sess_commit(s, true) < 0)
        return -1;
    struct srv_disk *d = &s->job->disks[i];
    d->complete = true;
    d->committed = srv_ranges_bytes(&d->jr.committed);
    srv_job_log(s->job, "disk %u: DISK_END (agent sent %llu bytes, server received %llu this "
                "session); %llu bytes committed", i, (unsigned long long)m->u.disk_end.bytes,
                (unsigned long long)s->sent[i], (unsigned long long)d->committed);
    /* the disk's completeness is durable (job.json) before DISK_OK says so */
    struct p2v_err err = {0};
    srv_job_rate_sample(s->job, p2v_now());
    if (srv_job_save(s->job, &err) < 0)
        return sess_io_error(s, err.code, "job.json", "write");
    p2v_buf_reset(&s->out);
    if (p2v_proto_put_disk_end(&s->out, P2V_MSG_DISK_OK, i, d->committed) < 0)
        return sess_error(s, P2V_E_INTERNAL, "cannot encode DISK_OK");
    return sess_send(s);
}

static int on_done(struct srv_session *s)
{
    struct srv_job *job = s->job;
    struct p2v_err err = {0};
    unsigned ndisks = 0;
    if (sess_commit(s, true) < 0)
        return -1;
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        if (!job->disks[i].known)
            continue;
        if (!job->disks[i].complete)
            return sess_error(s, P2V_E_PROTO, "DONE before disk %u was finished (no DISK_END)",
                              i);
        ndisks++;
    }
    if (ndisks == 0)
        return sess_error(s, P2V_E_PROTO, "DONE without any disk");
    double t0 = p2v_now();
    save_job(s);
    srv_job_log(job, "DONE: writing %u %s image(s)", ndisks, job->format);
    if (srv_job_finish(&s->srv->store, job, &s->srv->stopping, &err) < 0) {
        if (err.code == ECANCELED)
            return sess_error(s, P2V_E_SHUTDOWN, "the server is stopping; the images will be "
                              "written at the next DONE");
        if (no_space(err.code))
            return sess_error(s, P2V_E_NOSPACE, "%s", err.msg);
        return sess_error(s, P2V_E_INTERNAL, "%s", err.msg);
    }
    char total[32], text[P2V_PROTO_MSG_MAX];
    p2v_format_size(srv_job_bytes_done(job), total, sizeof total);
    snprintf(text, sizeof text, "job %s: %u disk%s received, %s (%s)", job->id, ndisks,
             ndisks == 1 ? "" : "s", total, job->format);
    srv_job_log(job, "received: %s (images written in %.1f s)", text, p2v_now() - t0);
    if (unlinkat(job->dirfd, "cutover", 0) == 0) /* a live job's request is spent */
        job->live.cutover_requested = false;
    srv_log(s->srv, P2V_LOG_INFO, "%s: %s", s->peer, text);
    p2v_buf_reset(&s->out);
    if (p2v_proto_put_finished(&s->out, text) < 0)
        return sess_error(s, P2V_E_INTERNAL, "cannot encode FINISHED");
    sess_send(s);
    return 1;
}

static int cmp_entry(const void *a, const void *b)
{
    const struct jrnl_hash_entry *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int on_hashes(struct srv_session *s, const struct p2v_msg *m)
{
    struct p2v_err err = {0};
    uint32_t i = m->u.hashes.disk, n = m->u.hashes.count;
    struct jrnl_hash_entry *e = NULL;
    struct p2v_range *want = NULL;
    int r = -1;
    if (i >= P2V_PROTO_DISKS_MAX || !s->declared[i])
        return sess_error(s, P2V_E_DISK, "HASHES for disk %u, which was not declared", i);
    if (sess_commit(s, true) < 0)
        return -1;
    struct srv_disk *d = &s->job->disks[i];
    e = calloc(n ? n : 1, sizeof *e);
    want = calloc(n ? n : 1, sizeof *want);
    if (!e || !want) {
        r = sess_error(s, P2V_E_INTERNAL, "out of memory");
        goto out;
    }
    for (uint32_t k = 0; k < n; k++) {
        const uint8_t *h;
        p2v_proto_hash_entry(m, k, &e[k].off, &e[k].len, &h);
        e[k].hash = h;
        if (e[k].len == 0 || e[k].len > P2V_PROTO_CHUNK_MAX || e[k].len % 512 ||
            e[k].off % 512 || !p2v_range_ok(e[k].off, e[k].len, d->size)) {
            r = sess_error(s, P2V_E_DISK, "HASHES disk %u: entry %u (%llu+%u) is not a valid "
                           "range of the disk", i, k, (unsigned long long)e[k].off, e[k].len);
            goto out;
        }
    }
    qsort(e, n, sizeof *e, cmp_entry);
    for (uint32_t k = 1; k < n; k++) {
        if (e[k - 1].off + e[k - 1].len > e[k].off) {
            r = sess_error(s, P2V_E_PROTO, "HASHES disk %u: entries overlap at offset %llu", i,
                           (unsigned long long)e[k].off);
            goto out;
        }
    }
    if (jrnl_match(&d->jr, e, n, s->hash_algo, &err) < 0) {
        r = sess_error(s, P2V_E_INTERNAL, "disk %u: %s", i, err.msg);
        goto out;
    }
    uint32_t nw = 0;
    uint64_t wanted = 0;
    for (uint32_t k = 0; k < n; k++) {
        if (e[k].same)
            continue;
        wanted += e[k].len;
        if (nw && want[nw - 1].off + want[nw - 1].len == e[k].off)
            want[nw - 1].len += e[k].len;
        else
            want[nw++] = (struct p2v_range){e[k].off, e[k].len};
    }
    srv_job_log(s->job, "disk %u: HASHES of %u range(s): %llu bytes wanted", i, n,
                (unsigned long long)wanted);
    p2v_buf_reset(&s->out);
    if (p2v_proto_put_ranges(&s->out, P2V_MSG_WANT, m->flags & P2V_RANGES_MORE, i, want, nw) <
        0) {
        r = sess_error(s, P2V_E_INTERNAL, "cannot encode WANT");
        goto out;
    }
    r = sess_send(s);
out:
    free(e);
    free(want);
    return r;
}

/* PASS (v2): a live capture's pass ended, or a heartbeat while the agent waits. Kept in
 * job.json for status (the lag); answered with PASS_OK, flagged CUTOVER once
 * `p2v-server cutover` has left jobs/ID/cutover. */
static int on_pass(struct srv_session *s, const struct p2v_msg *m)
{
    struct srv_job *job = s->job;
    if (s->version < 2)
        return sess_error(s, P2V_E_PROTO, "PASS in a protocol version %u session", s->version);
    job->live.cutover_requested = faccessat(job->dirfd, "cutover", F_OK, 0) == 0;
    if (m->u.pass.phase != P2V_PASS_IDLE) {
        uint64_t now_ms = (uint64_t)(p2v_wall_now() * 1000);
        job->live.pass = m->u.pass.pass;
        job->live.phase = m->u.pass.phase;
        job->live.bytes_read = m->u.pass.bytes_read;
        job->live.bytes_sent = m->u.pass.bytes_sent;
        job->live.duration_ms = m->u.pass.duration_ms;
        job->live.freeze_ms = m->u.pass.freeze_ms;
        job->live.synced_ms = now_ms > m->u.pass.duration_ms ? now_ms - m->u.pass.duration_ms
                                                             : 0;
        srv_job_log(job, "live pass %u (%s): %llu bytes read, %llu sent, %u ms",
                    m->u.pass.pass, p2v_proto_pass_phase_name(m->u.pass.phase),
                    (unsigned long long)m->u.pass.bytes_read,
                    (unsigned long long)m->u.pass.bytes_sent, m->u.pass.duration_ms);
        if (m->u.pass.freeze_ms)
            srv_job_log(job, "cutover: the file systems were frozen for %u ms",
                        m->u.pass.freeze_ms);
        save_job(s);
    }
    p2v_buf_reset(&s->out);
    if (p2v_proto_put_pass_ok(&s->out, job->live.cutover_requested ? P2V_PASS_CUTOVER : 0) < 0)
        return sess_error(s, P2V_E_INTERNAL, "cannot encode PASS_OK");
    return sess_send(s);
}

/* Step 2..9: one frame in the session's state. 0 go on, 1 the session is over (done), -1
 * the session failed (already reported). */
static int sess_dispatch(struct srv_session *s, const struct p2v_msg *m)
{
    if (m->type != P2V_MSG_DATA && sess_drain(s) < 0)
        return -1;
    if (!s->job) {
        if (m->type != P2V_MSG_HELLO)
            return sess_error(s, P2V_E_PROTO, "expected HELLO, got %s",
                              p2v_proto_type_name(m->type));
        return on_hello(s, m);
    }
    switch (m->type) {
    case P2V_MSG_FACTS: return on_facts(s, m);
    case P2V_MSG_DISK: return on_disk(s, m);
    case P2V_MSG_DATA: return on_data(s, m);
    case P2V_MSG_DISK_END: return on_disk_end(s, m);
    case P2V_MSG_DONE: return on_done(s);
    case P2V_MSG_HASHES: return on_hashes(s, m);
    case P2V_MSG_PASS: return on_pass(s, m);
    case P2V_MSG_ERROR: {
        int n = (int)m->u.error.text.len;
        srv_log(s->srv, P2V_LOG_WARN, "%s: job %s: the agent reported ERROR %s: %.*s", s->peer,
                job_id(s), p2v_proto_err_name(m->u.error.code), n, m->u.error.text.p);
        srv_job_log(s->job, "session %llu: the agent reported ERROR %s: %.*s",
                    (unsigned long long)s->job->sessions, p2v_proto_err_name(m->u.error.code),
                    n, m->u.error.text.p);
        s->dead = true; /* the agent closes after an ERROR */
        return sess_commit(s, false) < 0 ? -1 : 1;
    }
    case P2V_MSG_HELLO: return sess_error(s, P2V_E_PROTO, "HELLO sent twice");
    default:
        return sess_error(s, P2V_E_PROTO, "unexpected %s from an agent",
                          p2v_proto_type_name(m->type));
    }
}

/* ---------------------------------------------------------------- the loop */

static void sess_periodic(struct srv_session *s)
{
    double now = p2v_now();
    if (s->job && s->job->active && now - s->job->last_save >= SESS_SAVE_INTERVAL)
        save_job(s);
}

static void sess_loop(struct srv_session *s)
{
    struct srv_server *srv = s->srv;
    struct p2v_err err = {0};
    struct p2v_msg m;
    double last_frame = p2v_now();

    for (;;) {
        if (atomic_load(&srv->stopping)) {
            if (sess_drain(s) == 0 && sess_commit(s, true) == 0)
                sess_error(s, P2V_E_SHUTDOWN, "the server is shutting down");
            return;
        }
        double now = p2v_now();
        double limit = (s->job ? srv->idle_timeout_ms : srv->hello_timeout_ms) / 1000.0;
        if (now - last_frame >= limit) {
            srv_log(srv, P2V_LOG_WARN, "%s: job %s: no frame for %.0f s: closing", s->peer,
                    job_id(s), limit);
            if (s->job)
                srv_job_log(s->job, "session %llu: idle for %.0f s: closed",
                            (unsigned long long)s->job->sessions, limit);
            if (sess_drain(s) == 0)
                sess_commit(s, false);
            return;
        }
        if (commit_ready(s) && (commit_collect(s) < 0 || send_committed(s) < 0))
            return;
        if (s->npend && now - s->pend_since >= SESS_COMMIT_INTERVAL) {
            if (sess_commit_async(s) < 0)
                return;
        }
        sess_periodic(s);
        bool readable = p2v_conn_readable(s->conn);
        if (!readable && s->written < s->queued) {
            /* nothing to read yet: write what is verified rather than wait idle (the
             * agent may be waiting for the COMMITTED these writes bring) */
            if (drain_frames(s) < 0)
                return;
            continue;
        }
        if (!readable) {
            double wait = last_frame + limit - now;
            if (s->npend)
                wait = P2V_MIN(wait, s->pend_since + SESS_COMMIT_INTERVAL - now);
            if (s->job && s->job->active)
                wait = P2V_MIN(wait, SESS_SAVE_INTERVAL);
            int ms = wait <= 0 ? 0 : (int)(wait * 1000) + 1;
            /* the committer's eventfd too: the agent may wait for its COMMITTED */
            struct pollfd pfd[3] = {{.fd = s->fd, .events = POLLIN},
                                    {.fd = srv->stop_pipe[0], .events = POLLIN},
                                    {.fd = s->cbusy && s->vstarted ? s->cefd : -1,
                                     .events = POLLIN}};
            int pr = poll(pfd, 3, ms);
            if (pr < 0 && errno != EINTR) {
                srv_log(srv, P2V_LOG_ERROR, "%s: poll: %s", s->peer, strerror(errno));
                return;
            }
            if (pr <= 0 || !(pfd[0].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
        }
        int r = p2v_conn_read_frame(s->conn, &s->body, &m, &err);
        if (r == 0) {
            srv_log(srv, P2V_LOG_INFO, "%s: job %s: the agent closed the connection", s->peer,
                    job_id(s));
            s->dead = true;
            if (sess_drain(s) == 0)
                sess_commit(s, false);
            return;
        }
        if (r < 0) {
            if (err.code == EPROTO) {
                sess_error_drained(s, P2V_E_PROTO, "%s", err.msg);
            } else {
                srv_log(srv, P2V_LOG_WARN, "%s: job %s: connection lost: %s", s->peer,
                        job_id(s), err.msg);
                s->dead = true;
                if (sess_drain(s) == 0)
                    sess_commit(s, false);
            }
            return;
        }
        last_frame = p2v_now();
        r = sess_dispatch(s, &m);
        if (r != 0)
            return;
    }
}

/* ---------------------------------------------------------------- life cycle */

struct srv_session *srv_session_new(struct srv_server *srv, int fd, const char *peer,
                                    bool reject_busy)
{
    struct srv_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->srv = srv;
    s->fd = fd;
    s->cefd = -1;
    s->reject_busy = reject_busy;
    snprintf(s->peer, sizeof s->peer, "%s", peer);
    p2v_buf_init(&s->body, P2V_PROTO_BODY_MAX);
    for (unsigned k = 0; k < SESS_INFLIGHT; k++)
        p2v_buf_init(&s->slot[k].body, P2V_PROTO_BODY_MAX);
    p2v_buf_init(&s->out, P2V_PROTO_BODY_MAX);
    pthread_mutex_lock(&srv->lock);
    s->next = srv->sessions;
    if (srv->sessions)
        srv->sessions->prev = s;
    srv->sessions = s;
    if (reject_busy)
        srv->nrejecting++;
    else
        srv->nsessions++;
    pthread_mutex_unlock(&srv->lock);
    return s;
}

void srv_sessions_kick_all(struct srv_server *srv)
{
    /* under srv->lock, every listed session's fd stays open */
    pthread_mutex_lock(&srv->lock);
    for (struct srv_session *s = srv->sessions; s; s = s->next)
        if (s->fd >= 0)
            shutdown(s->fd, SHUT_RDWR);
    pthread_mutex_unlock(&srv->lock);
}

/* Half-close and read until the peer closes (bounded): closing a socket with unread
 * input makes the kernel send a reset, which can destroy the ERROR frame we just sent
 * before the agent reads it. */
static void linger_close(struct srv_session *s)
{
    char sink[4096];
    double end = p2v_now() + (atomic_load(&s->srv->stopping) ? 0.5 : SESS_LINGER_S);
    shutdown(s->fd, SHUT_WR);
    for (;;) {
        double left = end - p2v_now();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        ssize_t n = read(s->fd, sink, sizeof sink);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break;
    }
}

void srv_session_free(struct srv_session *s)
{
    struct srv_server *srv = s->srv;
    sess_stop_pipeline(s); /* before the job goes: the writer uses it */
    if (s->job) {
        srv_job_log(s->job, "session %llu ended: %llu DATA frames, %llu bytes committed",
                    (unsigned long long)s->job->sessions, (unsigned long long)s->c_frames,
                    (unsigned long long)s->c_bytes);
        srv_job_release(&srv->store, s->job);
        s->job = NULL;
    }
    p2v_conn_close(s->conn); /* close_notify; our own descriptor keeps the socket open */
    s->conn = NULL;
    if (s->fd >= 0 && !s->dead)
        linger_close(s);
    for (unsigned k = 0; k < SESS_INFLIGHT; k++) {
        p2v_buf_release(&s->slot[k].body);
        free(s->slot[k].zbuf);
    }
    p2v_buf_release(&s->body);
    p2v_buf_release(&s->out);
    free(s->pend);
    free(s->cpend);
    free(s->recs);
    ZSTD_freeDCtx(s->dctx);
    pthread_mutex_lock(&srv->lock);
    if (s->prev)
        s->prev->next = s->next;
    else
        srv->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->reject_busy)
        srv->nrejecting--;
    else
        srv->nsessions--;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
    free(s);
}

void *srv_session_main(void *arg)
{
    struct srv_session *s = arg;
    struct srv_server *srv = s->srv;
    struct p2v_err err = {0};

    /* the connection gets its own descriptor of the socket: ours stays valid for poll()
     * and for shutdown() at server stop until srv_session_free closes it */
    int cfd = fcntl(s->fd, F_DUPFD_CLOEXEC, 0);
    if (cfd < 0) {
        srv_log(srv, P2V_LOG_ERROR, "%s: %s", s->peer, strerror(errno));
        goto out;
    }
    s->conn = p2v_conn_accept(srv->tls, cfd, SESS_HANDSHAKE_MS, &err);
    if (!s->conn) {
        /* the TLS layer's message names the handshake and the peer already */
        const char *why = err.msg, *p = strstr(why, " failed: ");
        if (strncmp(why, "TLS handshake with ", 19) == 0 && p)
            why = p + 9;
        srv_log(srv, P2V_LOG_WARN, "%s: TLS handshake failed: %s", s->peer, why);
        goto out;
    }
    p2v_conn_set_timeout(s->conn, SESS_IO_TIMEOUT_MS);
    if (s->reject_busy) {
        sess_error(s, P2V_E_BUSY, "the server is busy (%u sessions); try again later",
                   srv->max_sessions);
        goto out;
    }
    s->pend = calloc(SESS_PEND_MAX, sizeof *s->pend);
    s->cpend = calloc(SESS_PEND_MAX, sizeof *s->cpend);
    s->recs = calloc(SESS_PEND_MAX, sizeof *s->recs);
    s->dctx = ZSTD_createDCtx();
    if (!s->pend || !s->cpend || !s->recs || !s->dctx) {
        sess_error(s, P2V_E_INTERNAL, "out of memory");
        goto out;
    }
    sess_loop(s);
out:
    srv_session_free(s);
    return NULL;
}
