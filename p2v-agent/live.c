/* live.c: live capture of a running Linux machine (p2v-agent --live).
 *
 * The session, after FACTS:
 *   1. the copy: every disk as a cold capture sends it (sess_disk, without DISK_END; on a
 *      resumed job only what the server's HAVE does not cover);
 *   2. delta passes while the machine runs: each disk is planned again (files come and
 *      go), every planned chunk is read and hashed, the hashes go to the server in HASHES
 *      frames, and its WANT answer names the chunks whose content differs from its
 *      journal; those are read again and sent. A pass that sends at most LIVE_CONVERGED
 *      bytes (or --max-passes) ends the sync; with --continuous the passes go on every
 *      SECS seconds until the operator asks for the cutover;
 *   3. the cutover: the writable file systems mounted from the disks are frozen
 *      (FIFREEZE, through freeze.c's watchdog), a final pass runs exactly as a delta pass
 *      (the bitmaps and the journal are on disk now: the plan is exact), and they are
 *      thawed. The copy is then what a power cut at the freeze would have left, with every
 *      write that was fsync'd before it. A freeze that outlives --freeze-timeout is thawed
 *      by the watchdog; that attempt does not count, and after another delta pass the
 *      cutover is tried again (three attempts);
 *   4. DISK_END for every disk, DONE.
 * Every pass is reported (event "pass", a PASS frame: bytes read, bytes sent, duration);
 * the cutover reports its freeze window.
 *
 * How changes are found: by re-reading and re-hashing, compared with the server's journal.
 * It needs nothing from the kernel (no device-mapper, no tracing), survives an agent or
 * server restart (the journal is the reference), and reads at the pipeline's speed; its
 * cost is a full read of the used blocks per pass, which is also what bounds the freeze
 * window (tests/bench/bench-live.sh measures both).
 *
 * Reads go around the page cache (the disks are opened O_DIRECT in main.c): a file
 * system's data writes bypass its block device's cache, so a cached read could return
 * old data.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "session.h"
#include "snap.h"

#define LIVE_CONVERGED (32ull << 20) /* a delta pass this small ends the sync */
#define LIVE_HEARTBEAT_S 5.0         /* --continuous: PASS heartbeats while waiting */
#define LIVE_FREEZE_ATTEMPTS 3

static volatile sig_atomic_t cutover_signal;

static void on_sigusr1(int sig)
{
    (void)sig;
    cutover_signal = 1;
}

/* ------------------------------------------------------------------ mounts */

static bool type_freezable(const char *fstype)
{
    /* FUSE has no freeze; the kernel answers EOPNOTSUPP */
    return strncmp(fstype, "fuse", 4) != 0;
}

int agent_check_mounts(struct agent *a)
{
    struct p2v_err err = {0};
    for (size_t i = 0; i < a->ndisks; i++) {
        struct freeze_mount *m = NULL;
        size_t n = 0;
        if (freeze_find_mounts(a->disks[i].path, &m, &n, &err) < 0)
            return agent_fail(a, AGENT_EXIT_FAIL, "mounts", "disk '%s': %s",
                              a->disks[i].path, err.msg);
        for (size_t k = 0; k < n; k++) {
            bool dup = false;
            for (size_t x = 0; x < a->nmounts; x++)
                dup |= a->mounts[x].dev == m[k].dev;
            if (dup)
                continue;
            struct freeze_mount *nv = realloc(a->mounts, (a->nmounts + 1) * sizeof *nv);
            if (!nv) {
                free(m);
                return agent_fail(a, AGENT_EXIT_FAIL, "internal", "out of memory");
            }
            a->mounts = nv;
            a->mounts[a->nmounts++] = m[k];
        }
        free(m);
    }
    for (size_t k = 0; k < a->nmounts; k++) {
        const struct freeze_mount *m = &a->mounts[k];
        if (!m->rw)
            continue;
        if (a->o.live && !type_freezable(m->fstype))
            return agent_fail(a, AGENT_EXIT_REFUSED, "unfreezable",
                              "%s is mounted read-write at %s, and the kernel cannot freeze "
                              "%s file systems: a live capture could not make it "
                              "consistent. Stop its writers and remount it read-only "
                              "(mount -o remount,ro %s), or unmount it, then run again",
                              m->source, m->target, m->fstype, m->target);
        if (!a->o.live && !a->o.force)
            return agent_fail(a, AGENT_EXIT_REFUSED, "mounted",
                              "%s is mounted read-write at %s (%s): a copy taken while it "
                              "changes would not be consistent. Use --live (copy while it "
                              "runs, then freeze it briefly for the last changes), unmount "
                              "it or remount it read-only, or --force for a "
                              "crash-inconsistent copy",
                              m->source, m->target, m->fstype);
        if (!a->o.live) {
            p2v_warn("--force: %s is mounted read-write at %s (%s); the copy is "
                     "crash-inconsistent",
                     m->source, m->target, m->fstype);
            a->crash_inconsistent = true;
        }
    }
    a->lv.freeze_window = -1;
    return 0;
}

void agent_live_json(const struct agent *a, struct p2v_json *j)
{
    const struct agent_live *lv = &a->lv;
    p2v_json_key(j, "live");
    p2v_json_object_begin(j);
    p2v_json_kv_string(j, "consistency",
                       a->crash_inconsistent ? "crash-inconsistent"
                       : lv->freeze_window >= 0 && lv->snapshot ? "snapshot"
                       : lv->freeze_window >= 0 ? "frozen"
                       : a->o.live && a->nmounts == 0 ? "unmounted"
                                                      : NULL);
    p2v_json_key(j, "mounts");
    p2v_json_array_begin(j);
    for (size_t k = 0; k < a->nmounts; k++) {
        p2v_json_object_begin(j);
        p2v_json_kv_string(j, "source", a->mounts[k].source);
        p2v_json_kv_string(j, "target", a->mounts[k].target);
        p2v_json_kv_string(j, "fstype", a->mounts[k].fstype);
        p2v_json_kv_bool(j, "rw", a->mounts[k].rw);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    p2v_json_key(j, "passes");
    p2v_json_array_begin(j);
    for (size_t k = 0; k < lv->npasses; k++) {
        const struct agent_pass *p = &lv->passes[k];
        p2v_json_object_begin(j);
        p2v_json_kv_u64(j, "pass", p->pass);
        p2v_json_kv_string(j, "phase", p2v_proto_pass_phase_name(p->phase));
        p2v_json_kv_u64(j, "bytes-read", p->bytes_read);
        p2v_json_kv_u64(j, "bytes-sent", p->bytes_sent);
        p2v_json_kv_double(j, "seconds", p->secs);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    if (lv->freeze_window >= 0) {
        p2v_json_kv_double(j, "freeze-window", lv->freeze_window);
        p2v_json_kv_double(j, "frozen-at", lv->frozen_at);
    } else {
        p2v_json_key(j, "freeze-window");
        p2v_json_null(j);
    }
    p2v_json_kv_u64(j, "freeze-attempts", lv->freeze_attempts);
    p2v_json_object_end(j);
}

/* ------------------------------------------------------------------ passes */

static void pass_begin(struct sess *s, double *t0)
{
    s->pass_read = s->pass_sent = 0;
    *t0 = p2v_now();
}

/* Record and report a pass; tell the server (PASS) and learn whether the operator asked
 * for the cutover (PASS_OK). 0 / -1. */
static int pass_end(struct sess *s, uint8_t phase, double t0, double freeze_s, bool *cutover)
{
    struct agent *a = s->a;
    struct agent_live *lv = &a->lv;
    double secs = p2v_now() - t0;
    lv->pass++;
    size_t slot = lv->npasses < P2V_ARRAY_SIZE(lv->passes) ? lv->npasses++ : lv->npasses - 1;
    lv->passes[slot] = (struct agent_pass){lv->pass, phase, s->pass_read, s->pass_sent, secs};
    char r[32], t[32];
    p2v_info("live pass %u (%s): read %s, sent %s in %.2f s%s", lv->pass, p2v_proto_pass_phase_name(phase),
             p2v_format_size(s->pass_read, r, sizeof r),
             p2v_format_size(s->pass_sent, t, sizeof t), secs,
             phase != P2V_PASS_FINAL ? ""
             : lv->snapshot        ? " (from the snapshot)"
                                   : " (under the freeze)");
    struct agent_event e;
    agent_event_begin(&e, "pass");
    p2v_json_kv_u64(&e.j, "pass", lv->pass);
    p2v_json_kv_string(&e.j, "phase", p2v_proto_pass_phase_name(phase));
    p2v_json_kv_u64(&e.j, "bytes-read", s->pass_read);
    p2v_json_kv_u64(&e.j, "bytes-sent", s->pass_sent);
    p2v_json_kv_double(&e.j, "seconds", secs);
    agent_event_end(a, &e);

    uint32_t ms = (uint32_t)P2V_MIN(secs * 1000, (double)UINT32_MAX);
    uint32_t fms = (uint32_t)P2V_MIN(freeze_s * 1000, (double)UINT32_MAX);
    if (phase == P2V_PASS_FINAL && fms == 0)
        fms = 1; /* a freeze happened: never report it as none */
    if (p2v_proto_put_pass(&s->out, lv->pass, phase, s->pass_read, s->pass_sent, ms,
                           phase == P2V_PASS_FINAL ? fms : 0) < 0)
        return sess_encode_failed(s, "PASS");
    struct p2v_msg m;
    if (sess_send(s) < 0 || sess_expect(s, P2V_MSG_PASS_OK, &m) < 0)
        return -1;
    *cutover = (m.flags & P2V_PASS_CUTOVER) != 0;
    progress_made(s);
    return 0;
}

/* A pipeline's failure ends the session: an unreadable sector (exit 4) or a read error. */
static int read_failed(struct sess *s, const struct p2v_err *err)
{
    return sess_set(s, err->code == EIO ? SESS_BADSECTOR : SESS_FAIL, "read", "%s", err->msg);
}

/* Count what pipeline @pl of disk @i read and the bad sectors it met (at source offsets:
 * disk offset = source offset - @psrc + @poff), and free it. */
static void pipeline_done(struct sess *s, uint32_t i, struct imager_pipeline *pl, uint64_t poff,
                          uint64_t psrc)
{
    uint64_t rd = imager_pipeline_bytes_read(pl);
    s->pass_read += rd;
    s->a->st.bytes_read += rd;
    size_t nbad = 0;
    const uint64_t *bad = imager_pipeline_bad_sectors(pl, &nbad);
    if (poff == psrc) {
        agent_add_bad(s->a, i, bad, nbad);
    } else {
        for (size_t k = 0; k < nbad; k++) {
            uint64_t off = bad[k] - psrc + poff;
            agent_add_bad(s->a, i, &off, 1);
        }
    }
    imager_pipeline_free(pl);
}

/* What to do with each chunk a pipeline hands out (in disk coordinates). */
typedef int (*chunk_fn)(struct sess *s, uint32_t i, const struct imager_chunk *c, void *ctx);

/* Read @ext[n] (in @fd's coordinates: disk offset x is read at x - @poff + @psrc) through
 * one pipeline, hashing, and compressing when @compress, and hand each chunk to @fn in
 * disk coordinates. 0 / -1. */
static int run_pipeline(struct sess *s, uint32_t i, int fd, uint64_t size, uint64_t poff,
                        uint64_t psrc, const struct imager_extent *ext, size_t n,
                        bool compress, chunk_fn fn, void *ctx)
{
    struct agent *a = s->a;
    struct p2v_err err = {0};
    if (n == 0)
        return 0;
    struct imager_pipeline_opts po;
    agent_pipeline_opts(a, &a->disks[i], CHUNK_SIZE, &po);
    po.fd = fd;
    po.disk_size = size;
    po.ext = ext;
    po.count = n;
    po.hash = (enum imager_hash)s->hash_algo;
    if (compress)
        po.zstd_level =
            a->o.compress_auto ? agent_adapt_current(&a->adapt) : a->o.compress_level;
    struct imager_pipeline *pl = imager_pipeline_start(&po, &err);
    if (!pl)
        return read_failed(s, &err);
    int ret = -1;
    for (;;) {
        struct imager_chunk c;
        int r = imager_pipeline_next(pl, &c, &err);
        if (r < 0) {
            read_failed(s, &err);
            break;
        }
        if (r == 0) {
            ret = 0;
            break;
        }
        c.off = c.off - psrc + poff;
        if (fn(s, i, &c, ctx) < 0)
            break;
    }
    pipeline_done(s, i, pl, poff, psrc);
    return ret;
}

/* One pipeline over @sub[ns] (in @src's coordinates). */
static int run_piece(struct sess *s, uint32_t i, const struct snap_piece *src,
                     const struct imager_extent *sub, size_t ns, bool compress, chunk_fn fn,
                     void *ctx)
{
    return run_pipeline(s, i, src->fd, src->src_size, src->off, src->src, sub, ns, compress,
                        fn, ctx);
}

/* Read @ext[n] of disk @i (sorted) from where this pass reads them: the disk, or, in a
 * cutover with LVM snapshots (@ss), each range from its snap_piece (a snapshot, the saved
 * metadata, or nowhere). Consecutive ranges from one source share a pipeline. 0 / -1. */
static int read_mapped(struct sess *s, uint32_t i, const struct imager_extent *ext, size_t n,
                       const struct snap_set *ss, bool compress, chunk_fn fn, void *ctx)
{
    struct agent_disk *d = &s->a->disks[i];
    /* the disk itself, as a piece that maps every offset to itself */
    const struct snap_piece disk = {0, d->info->size, d->fd, 0, d->info->size};
    size_t np;
    const struct snap_piece *pc = snap_pieces(ss, i, &np);
    if (np == 0)
        return run_piece(s, i, &disk, ext, n, compress, fn, ctx);
    struct imager_extent *sub = calloc(n + 2 * np + 1, sizeof *sub);
    if (!sub)
        return sess_set(s, SESS_FAIL, "internal", "out of memory");
    const struct snap_piece *cur = &disk; /* the source of sub[0..ns) */
    size_t ns = 0, k = 0;
    int ret = 0;
    for (size_t e = 0; e < n && ret == 0; e++) {
        uint64_t pos = ext[e].off, end = ext[e].off + ext[e].len;
        while (pos < end && ret == 0) {
            while (k < np && pc[k].off + pc[k].len <= pos)
                k++;
            const struct snap_piece *src = &disk;
            uint64_t send = k < np ? P2V_MIN(end, pc[k].off) : end;
            if (k < np && pc[k].off <= pos) {
                src = &pc[k];
                send = P2V_MIN(end, pc[k].off + pc[k].len);
            }
            if (src != cur) {
                ret = run_piece(s, i, cur, sub, ns, compress, fn, ctx);
                ns = 0;
                cur = src;
            }
            /* fd -1: not read (the snapshot's copy-on-write space) */
            if (src->fd >= 0)
                sub[ns++] = (struct imager_extent){pos - src->off + src->src, send - pos};
            pos = send;
        }
    }
    if (ret == 0)
        ret = run_piece(s, i, cur, sub, ns, compress, fn, ctx);
    free(sub);
    return ret;
}

static int send_chunk(struct sess *s, uint32_t i, const struct imager_chunk *c, void *ctx)
{
    (void)ctx;
    return sess_send_chunk(s, i, c) < 0 || sess_drain(s) < 0 ? -1 : 0;
}

/* Read, compress and send the chunks of @ext[n] of disk @i. 0 / -1. */
static int send_ranges(struct sess *s, uint32_t i, const struct imager_extent *ext, size_t n,
                       const struct snap_set *ss)
{
    return read_mapped(s, i, ext, n, ss, true, send_chunk, NULL);
}

/* One HASHES batch and the answer: send the chunks the server wants. */
struct hash_batch {
    uint64_t offs[P2V_PROTO_HASHES_MAX];
    uint32_t lens[P2V_PROTO_HASHES_MAX];
    uint8_t hashes[P2V_PROTO_HASHES_MAX][P2V_PROTO_HASH_LEN];
    uint32_t n;
    struct p2v_range want[P2V_PROTO_HASHES_MAX];
    struct imager_extent ext[P2V_PROTO_HASHES_MAX];
    const struct snap_set *ss;  /* the cutover's snapshots, or NULL */
    const uint8_t *zeros;       /* CHUNK_SIZE zero bytes */
    uint8_t zhash[P2V_PROTO_HASH_LEN];
    uint32_t zhash_len;
};

static int flush_batch(struct sess *s, uint32_t i, struct hash_batch *b, bool more)
{
    const uint64_t size = s->a->disks[i].info->size;
    if (p2v_proto_put_hashes(&s->out, more ? P2V_RANGES_MORE : 0, i, b->offs, b->lens,
                             (const uint8_t(*)[P2V_PROTO_HASH_LEN])b->hashes, b->n) < 0)
        return sess_encode_failed(s, "HASHES");
    struct p2v_msg m;
    if (sess_send(s) < 0 || sess_expect(s, P2V_MSG_WANT, &m) < 0)
        return -1;
    if (m.u.ranges.disk != i)
        return sess_set(s, SESS_FAIL, "protocol", "WANT for disk %u after HASHES of disk %u",
                        m.u.ranges.disk, i);
    uint32_t cnt = m.u.ranges.count;
    if (cnt > b->n)
        return sess_set(s, SESS_FAIL, "protocol", "WANT of %u ranges for %u hashes", cnt, b->n);
    /* every wanted range must be made of the chunks just hashed */
    uint64_t lo = b->n ? b->offs[0] : 0;
    uint64_t hi = b->n ? b->offs[b->n - 1] + b->lens[b->n - 1] : 0;
    for (uint32_t k = 0; k < cnt; k++) {
        struct p2v_range r;
        p2v_proto_range(&m, k, &r);
        if (!p2v_range_ok(r.off, r.len, size) || r.off < lo || r.off + r.len > hi ||
            (k && r.off < b->ext[k - 1].off + b->ext[k - 1].len))
            return sess_set(s, SESS_FAIL, "protocol",
                            "WANT range %llu+%llu of disk %u is not among the hashes sent",
                            (unsigned long long)r.off, (unsigned long long)r.len, i);
        b->ext[k] = (struct imager_extent){r.off, r.len};
    }
    b->n = 0;
    return send_ranges(s, i, b->ext, cnt, b->ss);
}

static int hash_chunk(struct sess *s, uint32_t i, const struct imager_chunk *c, void *ctx)
{
    struct hash_batch *b = ctx;
    b->offs[b->n] = c->off;
    b->lens[b->n] = c->len;
    if (c->zero) {
        /* the journal matches a ZERO record against the hash of zeros */
        if (b->zhash_len != c->len) {
            if (p2v_hash((enum p2v_hash_algo)s->hash_algo, b->zeros, c->len, b->zhash) < 0)
                return sess_set(s, SESS_FAIL, "internal", "cannot hash");
            b->zhash_len = c->len;
        }
        memcpy(b->hashes[b->n], b->zhash, sizeof b->zhash);
    } else {
        memcpy(b->hashes[b->n], c->hash, sizeof c->hash);
    }
    if (++b->n == P2V_PROTO_HASHES_MAX)
        return flush_batch(s, i, b, true);
    return 0;
}

/* A delta pass over disk @i: plan again, hash every planned chunk, send what the server's
 * journal does not match. 0 / -1. */
static int delta_disk(struct sess *s, uint32_t i, struct hash_batch *b, bool frozen)
{
    struct agent *a = s->a;
    struct agent_disk *d = &a->disks[i];
    struct p2v_err err = {0};
    struct imager_plan plan = {0};
    /* The planner reads the file system's bitmaps through the disk's page cache. When the
     * file system is mounted from a partition, that cache is not the one the kernel keeps
     * current (each partition's block device has its own), so what an earlier pass read
     * there may be stale now: drop it (clean pages only; the disk is not written). */
    int cfd = open(d->path, O_RDONLY | O_CLOEXEC);
    if (cfd >= 0) {
        (void)posix_fadvise(cfd, 0, 0, POSIX_FADV_DONTNEED);
        close(cfd);
    }
    /* with snapshots, the origin volumes stay live */
    bool exact = frozen && !b->ss;
    unsigned pf = (a->o.all_blocks ? IMAGER_PLAN_ALL_BLOCKS : 0) | (exact ? 0 : IMAGER_PLAN_LIVE);
    if (imager_plan_flags(d->info, pf, &plan, &err) < 0)
        return sess_set(s, SESS_FAIL, "plan", "planning disk '%s' again: %s", d->path, err.msg);
    imager_plan_release(&d->plan);
    d->plan = plan;

    /* hashes only: what is wanted is read again, compressed */
    b->n = 0;
    if (read_mapped(s, i, d->plan.ext, d->plan.count, b->ss, false, hash_chunk, b) < 0)
        return -1;
    return b->n ? flush_batch(s, i, b, false) : 0;
}

static int delta_pass(struct sess *s, struct hash_batch *b, bool frozen)
{
    for (uint32_t i = 0; i < s->a->ndisks; i++)
        if (delta_disk(s, i, b, frozen) < 0)
            return -1;
    return 0;
}

static void sleep_s(double secs)
{
    if (secs <= 0)
        return;
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    nanosleep(&ts, NULL); /* SIGUSR1 cuts it short: the caller looks at the flag */
}

/* The agent's console: on a terminal, a line starting with "c" ("cutover") asks for the
 * cutover. */
static bool console_asks(void)
{
    if (!isatty(STDIN_FILENO))
        return false;
    struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
        return false;
    char line[64];
    ssize_t n = read(STDIN_FILENO, line, sizeof line - 1);
    return n > 0 && (line[0] == 'c' || line[0] == 'C');
}

/* --continuous: wait until the next pass is due, with heartbeats that carry the
 * operator's cutover request back. 0 / -1. */
static int wait_next(struct sess *s, bool *cutover)
{
    double due = p2v_now() + s->a->o.continuous;
    while (!*cutover && !cutover_signal) {
        double now = p2v_now();
        if (now >= due)
            break;
        double beat = P2V_MIN(now + LIVE_HEARTBEAT_S, due);
        while (!cutover_signal && (now = p2v_now()) < beat) {
            sleep_s(P2V_MIN(0.2, beat - now));
            if (console_asks())
                cutover_signal = 1;
        }
        if (cutover_signal)
            break;
        if (p2v_proto_put_pass(&s->out, 0, P2V_PASS_IDLE, 0, 0, 0, 0) < 0)
            return sess_encode_failed(s, "PASS");
        struct p2v_msg m;
        if (sess_send(s) < 0 || sess_expect(s, P2V_MSG_PASS_OK, &m) < 0)
            return -1;
        *cutover = (m.flags & P2V_PASS_CUTOVER) != 0;
    }
    if (cutover_signal)
        *cutover = true;
    return 0;
}

/* The writable mounts, the ones a freeze is for. */
static size_t writable_mounts(const struct agent *a, struct freeze_mount **out)
{
    size_t n = 0;
    *out = calloc(a->nmounts ? a->nmounts : 1, sizeof **out);
    if (!*out)
        return 0;
    for (size_t k = 0; k < a->nmounts; k++)
        if (a->mounts[k].rw)
            (*out)[n++] = a->mounts[k];
    return n;
}

/* Which writable mounts an LVM snapshot takes (*lvdev, *nlv) and which are frozen (*fz,
 * *nfz: a heap array). --snapshot auto takes a snapshot when exactly one of them is on an
 * LVM volume (several snapshots would each be their own instant, where one freeze of all is
 * one instant); --snapshot lvm takes one of each; --snapshot none freezes them all. */
static int split_mounts(const struct agent *a, const struct freeze_mount *fm, size_t nfm,
                        dev_t *lvdev, size_t *nlv, struct freeze_mount **fz, size_t *nfz)
{
    *nlv = *nfz = 0;
    *fz = calloc(nfm ? nfm : 1, sizeof **fz);
    if (!*fz)
        return -1;
    for (size_t k = 0; k < nfm; k++) {
        char vg[128], lv[128];
        if (a->o.snapshot != AGENT_SNAPSHOT_NONE && *nlv < SNAP_MAX_LV &&
            snap_is_lv("/sys", fm[k].dev, vg, sizeof vg, lv, sizeof lv))
            lvdev[(*nlv)++] = fm[k].dev;
        else
            (*fz)[(*nfz)++] = fm[k];
    }
    if (*nlv > 1 && a->o.snapshot == AGENT_SNAPSHOT_AUTO) {
        p2v_info("%zu LVM volumes are mounted writable: they are frozen together, for one "
                 "instant (--snapshot lvm: a snapshot of each, each at its own instant)",
                 *nlv);
        *nlv = 0;
    }
    if (*nlv == 0) {
        memcpy(*fz, fm, nfm * sizeof *fm);
        *nfz = nfm;
    }
    if (a->o.snapshot == AGENT_SNAPSHOT_LVM && *nlv == 0 && nfm)
        p2v_warn("--snapshot lvm: no writable file system of the disks is on an LVM logical "
                 "volume; it is frozen instead");
    return 0;
}

static void cutover_event(struct agent *a, const struct freeze_mount *fz, size_t nfz,
                          const struct snap_set *ss, unsigned attempt, double window)
{
    struct agent_event e;
    agent_event_begin(&e, "cutover");
    p2v_json_kv_string(&e.j, "method", ss ? "lvm-snapshot" : "freeze");
    p2v_json_kv_double(&e.j, "frozen-at", a->lv.frozen_at);
    p2v_json_kv_double(&e.j, "freeze-window", window);
    p2v_json_kv_u64(&e.j, "attempt", attempt);
    p2v_json_key(&e.j, "mounts");
    p2v_json_array_begin(&e.j);
    for (size_t k = 0; k < nfz; k++)
        p2v_json_string(&e.j, fz[k].target);
    p2v_json_array_end(&e.j);
    if (ss) {
        p2v_json_key(&e.j, "snapshots");
        p2v_json_array_begin(&e.j);
        for (size_t k = 0; k < ss->nlv; k++) {
            p2v_json_object_begin(&e.j);
            char v[300];
            snprintf(v, sizeof v, "%s/%s", ss->lv[k].vg, ss->lv[k].lv);
            p2v_json_kv_string(&e.j, "volume", v);
            p2v_json_kv_string(&e.j, "snapshot", ss->lv[k].snap);
            p2v_json_kv_double(&e.j, "lvcreate-seconds", ss->lv[k].create_s);
            p2v_json_object_end(&e.j);
        }
        p2v_json_array_end(&e.j);
    }
    agent_event_end(a, &e);
}

static int cutover(struct sess *s, struct hash_batch *b)
{
    struct agent *a = s->a;
    struct freeze_mount *fm = NULL, *fz = NULL;
    size_t nfm = writable_mounts(a, &fm), nfz = 0, nlv = 0;
    dev_t lvdev[SNAP_MAX_LV];
    struct snap_set *ss = NULL;
    if (!fm || split_mounts(a, fm, nfm, lvdev, &nlv, &fz, &nfz) < 0) {
        free(fm);
        return sess_set(s, SESS_FAIL, "internal", "out of memory");
    }
    char why[P2V_ERR_MSG_MAX] = "";
    int ret = -1;
    for (unsigned attempt = 1; attempt <= LIVE_FREEZE_ATTEMPTS; attempt++) {
        struct p2v_err err = {0};
        struct freeze_set *f = NULL;
        double t0;
        bool cut;
        a->lv.freeze_attempts = attempt;
        if (nfz) {
            f = freeze_begin(fz, nfz, a->o.freeze_timeout, &err);
            if (!f) {
                sess_set(s, SESS_FAIL, "freeze", "cannot freeze for the cutover: %s", err.msg);
                goto out;
            }
            a->lv.frozen_at = p2v_wall_now();
            p2v_info("frozen: %zu file system%s (attempt %u); the final pass runs", nfz,
                     nfz == 1 ? "" : "s", attempt);
            /* a test hook: hold the freeze, so that a test can kill the agent inside it */
            const char *hold = getenv("P2V_AGENT_FREEZE_HOLD_MS");
            if (hold)
                sleep_s(atof(hold) / 1000);
        }
        if (nlv) {
            ss = calloc(1, sizeof *ss);
            if (!ss) {
                freeze_end(f, &(double){0}, &err);
                sess_set(s, SESS_FAIL, "internal", "out of memory");
                goto out;
            }
            if (snap_take(a, lvdev, nlv, ss, &err) < 0) {
                p2v_warn("cannot take an LVM snapshot for the cutover (%s): the file "
                         "systems are frozen instead", err.msg);
                free(ss);
                ss = NULL;
                struct p2v_err e2 = {0};
                if (freeze_end(f, &(double){0}, &e2) < 0)
                    p2v_warn("%s", e2.msg);
                memcpy(fz, fm, nfm * sizeof *fm);
                nfz = nfm;
                nlv = 0;
                attempt--;
                continue;
            }
            if (!nfz)
                a->lv.frozen_at = ss->taken_at;
            p2v_info("snapshot%s of %zu LVM volume%s taken (lvcreate %.3f s); the final pass "
                     "reads %s", nlv == 1 ? "" : "s", nlv, nlv == 1 ? "" : "s", ss->window,
                     nlv == 1 ? "it" : "them");
            /* the test hook again: hold the snapshot, for a SIGKILL inside the final pass */
            const char *hold = getenv("P2V_AGENT_FREEZE_HOLD_MS");
            if (hold && !nfz)
                sleep_s(atof(hold) / 1000);
            b->ss = ss;
        }
        pass_begin(s, &t0);
        int r = delta_pass(s, b, nfz > 0 || ss);
        double window = 0;
        int fr = freeze_end(f, &window, &err);
        if (ss) {
            struct p2v_err e2 = {0};
            b->ss = NULL;
            if (snap_drop(ss, &e2) < 0)
                p2v_warn("%s", e2.msg);
        }
        if (r < 0)
            goto out; /* thawed, snapshots removed; s->rc says why the pass failed */
        if (fr < 0) {
            snprintf(why, sizeof why, "%s", err.msg);
            p2v_warn("cutover attempt %u: %s; one more delta pass, then again", attempt,
                     err.msg);
            free(ss);
            ss = NULL;
            if (pass_end(s, P2V_PASS_DELTA, t0, 0, &cut) < 0)
                goto out;
            continue;
        }
        if (!nfz)
            window = 0;
        if (ss)
            window = P2V_MAX(window, ss->window);
        a->lv.freeze_window = window;
        a->lv.snapshot = ss != NULL;
        if (ss)
            p2v_info("cutover: LVM snapshot (longest lvcreate %.3f s)%s", ss->window,
                     nfz ? ", and the other file systems frozen" : "");
        if (nfz)
            p2v_info("cutover: %zu file system%s frozen for %.3f s", nfz, nfz == 1 ? "" : "s",
                     window);
        if (nfz || ss)
            cutover_event(a, fz, nfz, ss, attempt, window);
        else
            p2v_info("cutover: nothing of the disks is mounted writable; no freeze needed");
        ret = pass_end(s, P2V_PASS_FINAL, t0, window, &cut);
        goto out;
    }
    sess_set(s, SESS_FAIL, "freeze",
             "the cutover did not fit in --freeze-timeout %.0f s in %d attempts (%s): the "
             "final pass reads every used block under the freeze; raise --freeze-timeout",
             a->o.freeze_timeout, LIVE_FREEZE_ATTEMPTS, why);
out:
    free(ss);
    free(fm);
    free(fz);
    return ret;
}

int live_session(struct sess *s)
{
    struct agent *a = s->a;
    struct sigaction sa = {.sa_handler = on_sigusr1, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);

    struct hash_batch *b = calloc(1, sizeof *b);
    uint8_t *zeros = calloc(1, CHUNK_SIZE);
    int ret = -1;
    if (!b || !zeros) {
        sess_set(s, SESS_FAIL, "internal", "out of memory");
        goto out;
    }
    b->zeros = zeros;
    double t0;
    bool cut = false;
    pass_begin(s, &t0);
    for (uint32_t i = 0; i < a->ndisks; i++)
        if (sess_disk(s, i, false) < 0)
            goto out;
    if (pass_end(s, P2V_PASS_COPY, t0, 0, &cut) < 0)
        goto out;
    if (a->o.continuous)
        p2v_info("keeping job %s in sync, a pass every %u s; cut over with 'p2v-server "
                 "cutover --store DIR %s', 'kill -USR1 %d'%s",
                 a->job, a->o.continuous, a->job, (int)getpid(),
                 isatty(STDIN_FILENO) ? ", or by typing cutover here" : "");
    for (unsigned deltas = 0;;) {
        if (a->o.continuous) {
            if (wait_next(s, &cut) < 0)
                goto out;
        } else if (deltas >= a->o.max_passes) {
            break;
        }
        if (cut || cutover_signal)
            break;
        pass_begin(s, &t0);
        if (delta_pass(s, b, false) < 0)
            goto out;
        deltas++;
        if (pass_end(s, P2V_PASS_DELTA, t0, 0, &cut) < 0)
            goto out;
        if (!a->o.continuous && s->pass_sent <= LIVE_CONVERGED)
            break;
    }
    if (cutover(s, b) < 0)
        goto out;
    for (uint32_t i = 0; i < a->ndisks; i++)
        if (sess_disk_end(s, i) < 0)
            goto out;
    ret = 0;
out:
    free(b);
    free(zeros);
    return ret;
}
