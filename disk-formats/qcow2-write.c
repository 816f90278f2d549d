/* qcow2-write.c: the qcow2 writer (version 3, QEMU's docs/interop/qcow2.txt, "the spec").
 *
 * Layout: cluster 0 the header, 1 the refcount table, 2 the first refcount block, then
 * the L1 table (as qemu-img lays them out); every later cluster is appended at the end of
 * the file: data, L2 tables, and at close the remaining refcount blocks (and a larger
 * refcount table when one cluster of it no longer suffices). Nothing is ever freed or
 * moved, so the file is a sequence of clusters each used once — except those holding
 * compressed data, which several compressed clusters may share — and the refcounts can be
 * computed at close from that fact alone, without keeping a count per cluster while
 * writing (memory stays bounded whatever the disk size: the L1 table, a small L2 cache,
 * one refcount block).
 *
 * Crash safety: the header carries the dirty bit (incompatible feature bit 0) from
 * create; close writes the L2 tables, the L1 table and the refcounts, fdatasyncs, and
 * only then rewrites the header without the dirty bit and fdatasyncs again. A writer that
 * dies leaves an image whose refcounts disagree with its tables, which qemu-img check
 * reports and our reader refuses.
 *
 * Resuming (random writes only): a checkpoint writes the L2 tables and the L1 table, so
 * that the tables on disk describe every cluster below the end, which it returns as the
 * mark. A writer killed later is resumed at the mark: the file is cut there and every
 * entry pointing at or past it cleared, which leaves the clusters below it used once
 * each, as the refcounts at close assume (see qcow2_resume).
 *
 * Random writes (no compression): whole clusters of a request that need new storage are
 * allocated contiguously and written with one pwrite from the caller's buffer; partial
 * clusters are read-modify-written; all-zero clusters become zero clusters (the L2 zero
 * flag, keeping a host cluster already allocated so that nothing leaks).
 * Compressed writes are sequential (write_align = cluster): the caller's thread cuts
 * requests into clusters, hands non-zero ones to compression threads through a bounded
 * ring and appends finished clusters strictly in guest order, packed at byte granularity
 * (as qemu does), through an output buffer written in large pieces. A cluster that does
 * not shrink, or whose sample looks random, is stored as it is.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sync_file_range (the build defines it too) */
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "qcow2.h"

#define QCOW2_DEFAULT_CLUSTER (64u * 1024)
#define QCOW2_CREATE_CLUSTER_MIN 512u
#define QCOW2_CREATE_CLUSTER_MAX (2u << 20)
/* refcount_order 4: 16-bit refcounts, qemu's default */
#define QCOW2_REFCOUNT_ORDER 4u
/* Spec "Standard Cluster Descriptor": host offsets are bits 9-55. */
#define QCOW2_HOST_MAX (UINT64_C(1) << 56)
/* Compression jobs in flight: enough to keep the threads busy while the caller copies and
 * writes, at most 16 MiB of buffers for large clusters. */
#define QCOW2_JOBS_MAX 32u
#define QCOW2_JOBS_MIN 4u
#define QCOW2_JOBS_BYTES (16u << 20)
#define QCOW2_THREADS 2u
/* Appended output gathered before a write (fewer, larger writes). */
#define QCOW2_OUTBUF (2u << 20)
/* Writeback of appended data is started every this many bytes (see kick_writeback). */
#define QCOW2_WRITEBACK_STEP (64u << 20)
/* Compression levels: zlib 1 (deflate's fast strategy: ~1.7x faster than qemu's level 6
 * for a few per cent more output on text), zstd 1; a build may override them. */
#ifndef QCOW2_ZLIB_LEVEL
#define QCOW2_ZLIB_LEVEL 1
#endif
#ifndef QCOW2_ZSTD_LEVEL
#define QCOW2_ZSTD_LEVEL 1
#endif

enum job_state { JOB_FREE, JOB_QUEUED, JOB_DONE, JOB_FAILED };

struct cjob {
    uint64_t gc;        /* guest cluster */
    uint8_t *in;        /* a cluster, zero-padded */
    uint8_t *out;       /* its compressed bytes */
    size_t out_len;     /* 0: store @in as it is */
    enum job_state state;
};

struct qcow2_writer {
    uint32_t cs;
    enum diskfmt_compress compress;
    bool seq;
    uint64_t end;        /* next free byte of the file */
    uint64_t frontier;   /* seq: the first guest cluster that may still be written */
    bool failed;         /* an error left the image inconsistent: close refuses */
    uint64_t ncompressed;
    uint8_t *tmp;        /* one cluster for partial writes */
    uint8_t *obuf;       /* seq: appended output not yet written */
    size_t olen;
    uint64_t obuf_off;   /* where obuf starts in the file (obuf_off + olen == end) */
    uint64_t wb_start;   /* writeback started for the file below this offset */

    pthread_mutex_t mu;
    pthread_cond_t work, done;
    bool sync_ok;
    struct cjob *jobs;
    unsigned njobs;
    uint64_t head, next, tail; /* [tail, next) taken or done, [next, head) queued */
    bool quit;
    pthread_t th[QCOW2_THREADS];
    unsigned nth;
};

/* ------------------------------------------------------------------ compression */

struct compressor {
    enum diskfmt_compress kind;
    z_stream z;
    bool z_ok;
    ZSTD_CCtx *zc;
};

static int compressor_init(struct compressor *c, enum diskfmt_compress kind)
{
    memset(c, 0, sizeof *c);
    c->kind = kind;
    if (kind == DISKFMT_COMPRESS_ZSTD) {
        c->zc = ZSTD_createCCtx();
        if (!c->zc ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c->zc, ZSTD_c_compressionLevel,
                                                QCOW2_ZSTD_LEVEL)))
            return -1;
        return 0;
    }
    /* raw deflate with a 4 KiB window (window bits -12) and memLevel 9, as qemu writes
     * it: qemu inflates with window bits -12 and would refuse a wider window */
    if (deflateInit2(&c->z, QCOW2_ZLIB_LEVEL, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    c->z_ok = true;
    return 0;
}

static void compressor_end(struct compressor *c)
{
    if (c->z_ok)
        deflateEnd(&c->z);
    if (c->zc)
        ZSTD_freeCCtx(c->zc);
}

/* Compress one cluster; out_len 0 when it does not fit in less than a cluster (qemu's
 * rule: the compressed form must be smaller than the cluster). */
static int compress_job(struct compressor *c, struct cjob *j, uint32_t cs)
{
    j->out_len = 0;
    if (diskfmt_looks_incompressible(j->in, cs))
        return 0;
    if (c->kind == DISKFMT_COMPRESS_ZSTD) {
        size_t r = ZSTD_compress2(c->zc, j->out, cs - 1, j->in, cs);
        if (ZSTD_isError(r))
            return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? 0 : -1;
        j->out_len = r;
        return 0;
    }
    if (deflateReset(&c->z) != Z_OK)
        return -1;
    c->z.next_in = j->in;
    c->z.avail_in = cs;
    c->z.next_out = j->out;
    c->z.avail_out = cs - 1;
    int r = deflate(&c->z, Z_FINISH);
    if (r == Z_STREAM_END)
        j->out_len = (size_t)c->z.total_out;
    else if (r != Z_OK && r != Z_BUF_ERROR)
        return -1;
    return 0;
}

static void *worker_main(void *arg)
{
    struct qcow2_writer *w = arg;
    struct compressor c;
    bool ok = compressor_init(&c, w->compress) == 0;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->next == w->head && !w->quit)
            pthread_cond_wait(&w->work, &w->mu);
        if (w->quit)
            break;
        struct cjob *j = &w->jobs[w->next % w->njobs];
        w->next++;
        pthread_mutex_unlock(&w->mu);
        int r = ok ? compress_job(&c, j, w->cs) : -1;
        pthread_mutex_lock(&w->mu);
        j->state = r == 0 ? JOB_DONE : JOB_FAILED;
        pthread_cond_broadcast(&w->done);
    }
    pthread_mutex_unlock(&w->mu);
    compressor_end(&c);
    return NULL;
}

static void stop_threads(struct qcow2_writer *w)
{
    if (!w->sync_ok)
        return;
    pthread_mutex_lock(&w->mu);
    w->quit = true;
    pthread_cond_broadcast(&w->work);
    pthread_mutex_unlock(&w->mu);
    for (unsigned i = 0; i < w->nth; i++)
        pthread_join(w->th[i], NULL);
    w->nth = 0;
}

void qcow2_w_free(struct qcow2_writer *w)
{
    if (!w)
        return;
    stop_threads(w);
    if (w->jobs)
        for (unsigned i = 0; i < w->njobs; i++) {
            free(w->jobs[i].in);
            free(w->jobs[i].out);
        }
    free(w->jobs);
    free(w->tmp);
    free(w->obuf);
    if (w->sync_ok) {
        pthread_cond_destroy(&w->work);
        pthread_cond_destroy(&w->done);
        pthread_mutex_destroy(&w->mu);
    }
    free(w);
}

const char *qcow2_w_compression(const struct qcow2 *q)
{
    switch (q->w->compress) {
    case DISKFMT_COMPRESS_ZLIB:
        return "zlib";
    case DISKFMT_COMPRESS_ZSTD:
        return "zstd";
    default:
        return "none";
    }
}

/* ------------------------------------------------------------------ allocation */

/* Close must fdatasync everything before it clears the dirty bit; left to then, that
 * waits for the whole image to reach the disk (over a second for a few GiB). Starting the
 * writeback of what was appended as the end moves on (without waiting for it) lets the
 * disk work while we convert, so that close waits only for the last part. Allocation is
 * append-only: the range below the end written so far is final except for tables and
 * clusters rewritten in place, which close's fdatasync takes care of. A failure here is
 * harmless (fdatasync still does all of it), so it is ignored. */
static void kick_writeback(struct qcow2 *q, uint64_t written_to)
{
    struct qcow2_writer *w = q->w;
    if (written_to < w->wb_start + QCOW2_WRITEBACK_STEP)
        return;
    (void)sync_file_range(q->fd, (off64_t)w->wb_start, (off64_t)(written_to - w->wb_start),
                          SYNC_FILE_RANGE_WRITE);
    w->wb_start = written_to;
}

static int obuf_flush(struct qcow2 *q, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    if (w->olen == 0)
        return 0;
    if (qcow2_write_exact(q, w->obuf, w->olen, w->obuf_off, err) < 0)
        return -1;
    w->obuf_off += w->olen;
    w->olen = 0;
    kick_writeback(q, w->obuf_off);
    return 0;
}

static void set_end(struct qcow2 *q, uint64_t end)
{
    q->w->end = end;
    if (end > q->file_size)
        q->file_size = end;
}

/* Reserve @n whole clusters at the end of the file. The output buffer goes out first:
 * what is reserved here is written by its owner later and must not be overwritten when
 * the buffer is. */
static int alloc_clusters(struct qcow2 *q, uint64_t n, uint64_t *off, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    uint64_t at, bytes, end;
    if (obuf_flush(q, err) < 0)
        return -1;
    if (!p2v_align_up(w->end, q->cs, &at) || P2V_MUL_OVERFLOW(n, (uint64_t)q->cs, &bytes) ||
        P2V_ADD_OVERFLOW(at, bytes, &end) || end > QCOW2_HOST_MAX)
        return p2v_err_set(err, EFBIG, "'%s': the image would grow past %llu bytes, the "
                           "largest host offset qcow2 tables can hold", q->path,
                           (unsigned long long)QCOW2_HOST_MAX);
    *off = at;
    set_end(q, end);
    w->obuf_off = end;
    return 0;
}

/* The L1 entry goes to disk at once, not at close with the rest of the table: the table
 * it names has refcount 0 until close, so from the first table on, an image whose writer
 * died shows a referenced cluster without a refcount, which qemu-img check reports as an
 * error (a dirty bit alone it does not report). */
int qcow2_w_alloc_table(struct qcow2 *q, uint64_t l1i, struct p2v_err *err)
{
    uint64_t off;
    uint8_t be[8];
    if (!q->w) /* the reader never allocates: a broken caller */
        return p2v_err_set(err, EBADF, "'%s': image is open read-only", q->path);
    if (alloc_clusters(q, 1, &off, err) < 0)
        return -1;
    /* spec "Cluster mapping": the copied flag says the table's refcount is 1 */
    q->l1[l1i] = off | QCOW2_OFLAG_COPIED;
    p2v_put_u64be(be, q->l1[l1i]);
    return qcow2_write_exact(q, be, sizeof be, q->h.l1_table_offset + 8 * l1i, err);
}

/* Append @len bytes at the end through the output buffer (sequential mode). */
static int out_put(struct qcow2 *q, const uint8_t *p, size_t len, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    if (w->end + len > QCOW2_HOST_MAX)
        return p2v_err_set(err, EFBIG, "'%s': the image would grow past %llu bytes", q->path,
                           (unsigned long long)QCOW2_HOST_MAX);
    while (len) {
        if (w->olen == QCOW2_OUTBUF && obuf_flush(q, err) < 0)
            return -1;
        size_t n = P2V_MIN(len, (size_t)QCOW2_OUTBUF - w->olen);
        memcpy(w->obuf + w->olen, p, n);
        w->olen += n;
        p += n;
        len -= n;
        set_end(q, w->end + n);
    }
    return 0;
}

/* Zeros up to the next cluster boundary (they pad a cluster holding compressed data). */
static int out_pad(struct qcow2 *q, struct p2v_err *err)
{
    static const uint8_t zeros[4096];
    uint64_t rem = q->w->end % q->cs;
    if (rem == 0)
        return 0;
    for (uint64_t left = q->cs - rem; left;) {
        size_t n = (size_t)P2V_MIN(left, (uint64_t)sizeof zeros);
        if (out_put(q, zeros, n, err) < 0)
            return -1;
        left -= n;
    }
    return 0;
}

/* ------------------------------------------------------------------ sequential writes */

/* Store a finished job: the compressed bytes packed right after what precedes them, or
 * the cluster as it is at the next cluster boundary. */
static int place_job(struct qcow2 *q, struct cjob *j, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    struct qcow2_l2slot *s;
    /* the table first: allocating it moves the end */
    if (qcow2_l2_get(q, j->gc / q->l.l2_entries, true, &s, err) < 0)
        return -1;
    uint64_t entry;
    if (j->out_len) {
        uint64_t host = w->end;
        unsigned shift = qcow2_csize_shift(q->cb);
        uint64_t last = (host + j->out_len - 1) / QCOW2_SECTOR;
        uint64_t nsec = last - host / QCOW2_SECTOR + 1;
        /* spec "Compressed Clusters Descriptor": the offset field is @shift bits wide */
        if (host + j->out_len >= (UINT64_C(1) << P2V_MIN(shift, 56u)))
            return p2v_err_set(err, EFBIG, "'%s': compressed data past offset %llu cannot "
                               "be described at %u-byte clusters", q->path,
                               (unsigned long long)host, q->cs);
        if (out_put(q, j->out, j->out_len, err) < 0)
            return -1;
        entry = QCOW2_OFLAG_COMPRESSED | ((nsec - 1) << shift) | host;
        w->ncompressed++;
    } else {
        if (out_pad(q, err) < 0)
            return -1;
        uint64_t host = w->end;
        if (out_put(q, j->in, q->cs, err) < 0)
            return -1;
        entry = host | QCOW2_OFLAG_COPIED;
    }
    s->e[j->gc % q->l.l2_entries] = entry;
    s->dirty = true;
    return 0;
}

/* Store finished jobs in ring order; with @wait_all wait for every job, with @wait_one
 * until at least one slot is free. */
static int drain(struct qcow2 *q, bool wait_all, bool wait_one, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        if (w->tail == w->head) {
            pthread_mutex_unlock(&w->mu);
            return 0;
        }
        struct cjob *j = &w->jobs[w->tail % w->njobs];
        bool must_wait = wait_all || (wait_one && w->head - w->tail == w->njobs);
        while (j->state == JOB_QUEUED && must_wait)
            pthread_cond_wait(&w->done, &w->mu);
        enum job_state st = j->state;
        pthread_mutex_unlock(&w->mu);
        if (st == JOB_QUEUED)
            return 0;
        if (st == JOB_FAILED)
            return p2v_err_set(err, EIO, "'%s': compression failed for the cluster at guest "
                               "offset %llu", q->path,
                               (unsigned long long)(j->gc << q->cb));
        if (place_job(q, j, err) < 0)
            return -1;
        pthread_mutex_lock(&w->mu);
        j->state = JOB_FREE;
        w->tail++;
        pthread_mutex_unlock(&w->mu);
    }
}

int qcow2_w_settle(struct qcow2 *q, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    if (!w->seq)
        return 0;
    if (drain(q, true, false, err) < 0 || obuf_flush(q, err) < 0) {
        w->failed = true;
        return -1;
    }
    return 0;
}

/* Mark guest cluster @gc a zero cluster when its L2 table exists (without a table it is
 * unallocated, which reads as zeros too: no table is allocated just to say so). */
static int mark_zero(struct qcow2 *q, uint64_t gc, struct p2v_err *err)
{
    struct qcow2_l2slot *s;
    if (qcow2_l2_get(q, gc / q->l.l2_entries, false, &s, err) < 0)
        return -1;
    if (!s)
        return 0;
    uint64_t *e = &s->e[gc % q->l.l2_entries];
    struct qcow2_centry c;
    const char *why;
    if (qcow2_l2_decode(*e, q->cb, 3, &c, &why) < 0)
        return p2v_err_set(err, EIO, "'%s': internal error: bad L2 entry 0x%016llx", q->path,
                           (unsigned long long)*e);
    uint64_t ne = *e;
    if (c.type == QCOW2_UNALLOCATED)
        ne = QCOW2_OFLAG_ZERO;
    else if (c.type == QCOW2_NORMAL) /* keep the host cluster: it stays referenced */
        ne = *e | QCOW2_OFLAG_ZERO;
    else if (c.type == QCOW2_COMPRESSED)
        return p2v_err_set(err, ENOTSUP, "'%s': cannot zero the compressed cluster at guest "
                           "offset %llu", q->path, (unsigned long long)(gc << q->cb));
    if (ne != *e) {
        *e = ne;
        s->dirty = true;
    }
    return 0;
}

static int seq_order_error(struct qcow2 *q, uint64_t off, const char *what,
                           struct p2v_err *err)
{
    return p2v_err_set(err, EINVAL, "'%s': compressed qcow2 images are written in order: "
                       "cannot %s offset %llu after offset %llu was written", q->path, what,
                       (unsigned long long)off,
                       (unsigned long long)(q->w->frontier << q->cb));
}

static int seq_pwrite(struct qcow2 *q, const uint8_t *p, size_t len, uint64_t off,
                      struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    uint64_t gc = off >> q->cb;
    while (len) {
        size_t n = P2V_MIN(len, (size_t)q->cs);
        if (p2v_is_zero(p, n)) {
            if (mark_zero(q, gc, err) < 0)
                return -1;
        } else {
            if (drain(q, false, true, err) < 0)
                return -1;
            struct cjob *j = &w->jobs[w->head % w->njobs];
            memcpy(j->in, p, n);
            /* a last cluster written in part is padded: it is finished */
            if (n < q->cs)
                memset(j->in + n, 0, q->cs - n);
            j->gc = gc;
            pthread_mutex_lock(&w->mu);
            j->state = JOB_QUEUED;
            w->head++;
            pthread_cond_signal(&w->work);
            pthread_mutex_unlock(&w->mu);
        }
        gc++;
        w->frontier = gc;
        p += n;
        len -= n;
    }
    return drain(q, false, false, err);
}

/* ------------------------------------------------------------------ random writes */

static bool is_allocated(const struct qcow2_centry *c)
{
    return c->type == QCOW2_NORMAL || c->type == QCOW2_ZERO_ALLOC;
}

static bool is_free(const struct qcow2_centry *c)
{
    return c->type == QCOW2_UNALLOCATED || c->type == QCOW2_ZERO_PLAIN;
}

static int decode_own(struct qcow2 *q, uint64_t e, struct qcow2_centry *c,
                      struct p2v_err *err)
{
    const char *why;
    if (qcow2_l2_decode(e, q->cb, 3, c, &why) < 0)
        return p2v_err_set(err, EIO, "'%s': internal error: bad L2 entry 0x%016llx (%s)",
                           q->path, (unsigned long long)e, why);
    if (c->type == QCOW2_COMPRESSED)
        return p2v_err_set(err, ENOTSUP, "'%s': cannot rewrite a compressed cluster in "
                           "place", q->path);
    return 0;
}

/* Whole clusters starting at guest cluster @gc (entry @idx of table @s), @len >= one
 * cluster. Returns the bytes handled in *done. */
static int write_whole(struct qcow2 *q, struct qcow2_l2slot *s, uint32_t idx,
                       const uint8_t *p, size_t len, size_t *done, struct p2v_err *err)
{
    uint32_t cs = q->cs;
    struct qcow2_centry c;
    if (decode_own(q, s->e[idx], &c, err) < 0)
        return -1;
    *done = cs;
    if (p2v_is_zero(p, cs)) {
        /* spec "Standard Cluster Descriptor" bit 0: a zero cluster; an allocated one
         * keeps its host cluster (still referenced: no leak) */
        if (c.type == QCOW2_UNALLOCATED)
            s->e[idx] = QCOW2_OFLAG_ZERO;
        else if (c.type == QCOW2_NORMAL)
            s->e[idx] |= QCOW2_OFLAG_ZERO;
        s->dirty = true;
        return 0;
    }
    size_t k = 1;
    uint32_t room = q->l.l2_entries - idx;
    if (is_allocated(&c)) {
        /* overwrite in place, over following clusters stored right after this one */
        while (k < room && (k + 1) * (size_t)cs <= len) {
            struct qcow2_centry nc;
            if (decode_own(q, s->e[idx + k], &nc, err) < 0)
                return -1;
            if (!is_allocated(&nc) || nc.off != c.off + k * (uint64_t)cs)
                break;
            k++;
        }
        if (qcow2_write_exact(q, p, k * (size_t)cs, c.off, err) < 0)
            return -1;
        for (size_t i = 0; i < k; i++)
            s->e[idx + i] = (c.off + i * (uint64_t)cs) | QCOW2_OFLAG_COPIED;
    } else {
        /* new storage for a run of clusters that need it and hold data: one allocation,
         * one write straight from the caller's buffer */
        while (k < room && (k + 1) * (size_t)cs <= len) {
            struct qcow2_centry nc;
            if (decode_own(q, s->e[idx + k], &nc, err) < 0)
                return -1;
            if (!is_free(&nc) || p2v_is_zero(p + k * (size_t)cs, cs))
                break;
            k++;
        }
        uint64_t host;
        if (alloc_clusters(q, k, &host, err) < 0 ||
            qcow2_write_exact(q, p, k * (size_t)cs, host, err) < 0)
            return -1;
        kick_writeback(q, host + k * (uint64_t)cs);
        for (size_t i = 0; i < k; i++)
            s->e[idx + i] = (host + i * (uint64_t)cs) | QCOW2_OFLAG_COPIED;
    }
    s->dirty = true;
    *done = k * (size_t)cs;
    return 0;
}

/* Part of one cluster: [in, in + n) of guest cluster @gc. */
static int write_partial(struct qcow2 *q, uint64_t gc, size_t in, const uint8_t *p,
                         size_t n, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    bool zero = p2v_is_zero(p, n);
    struct qcow2_l2slot *s;
    if (qcow2_l2_get(q, gc / q->l.l2_entries, !zero, &s, err) < 0)
        return -1;
    if (!s)
        return 0; /* zeros where nothing is allocated: already zeros */
    uint32_t idx = (uint32_t)(gc % q->l.l2_entries);
    struct qcow2_centry c;
    if (decode_own(q, s->e[idx], &c, err) < 0)
        return -1;
    if (c.type == QCOW2_NORMAL)
        return qcow2_write_exact(q, p, n, c.off + in, err);
    if (zero)
        return 0; /* the cluster reads as zeros already */
    /* the rest of the cluster must read as zeros: write it whole */
    uint64_t host = c.off;
    if (c.type != QCOW2_ZERO_ALLOC && alloc_clusters(q, 1, &host, err) < 0)
        return -1;
    memset(w->tmp, 0, q->cs);
    memcpy(w->tmp + in, p, n);
    if (qcow2_write_exact(q, w->tmp, q->cs, host, err) < 0)
        return -1;
    /* the allocation may not have evicted the table (it touches no cache), but be safe */
    if (qcow2_l2_get(q, gc / q->l.l2_entries, true, &s, err) < 0)
        return -1;
    s->e[idx] = host | QCOW2_OFLAG_COPIED;
    s->dirty = true;
    return 0;
}

static int random_pwrite(struct qcow2 *q, const uint8_t *p, size_t len, uint64_t off,
                         struct p2v_err *err)
{
    while (len) {
        uint64_t gc = off >> q->cb;
        size_t in = (size_t)(off & (q->cs - 1));
        size_t n = P2V_MIN(len, (size_t)q->cs - in);
        if (in == 0 && n == q->cs) {
            uint64_t l1i = gc / q->l.l2_entries;
            bool zero = (q->l1[l1i] & QCOW2_OFFSET_MASK) == 0 && p2v_is_zero(p, n);
            if (zero) {
                /* zeros where no table exists: unallocated reads as zeros already */
            } else {
                struct qcow2_l2slot *s;
                if (qcow2_l2_get(q, l1i, true, &s, err) < 0 ||
                    write_whole(q, s, (uint32_t)(gc % q->l.l2_entries), p, len, &n, err) < 0)
                    return -1;
            }
        } else if (write_partial(q, gc, in, p, n, err) < 0) {
            return -1;
        }
        p += n;
        len -= n;
        off += n;
    }
    return 0;
}

int qcow2_w_pwrite(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                   struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    struct qcow2_writer *w = q->w;
    if (w->failed)
        return p2v_err_set(err, EIO, "'%s': an earlier write failed; the image is "
                           "incomplete", d->path);
    /* refused before anything changes: the image stays good */
    if (w->seq && (off >> q->cb) < w->frontier)
        return seq_order_error(q, off, "write", err);
    int r = w->seq ? seq_pwrite(q, buf, len, off, err) : random_pwrite(q, buf, len, off, err);
    if (r < 0)
        w->failed = true; /* part of the request (or queued clusters) may be lost */
    return r;
}

int qcow2_w_zero(struct diskfmt *d, uint64_t off, uint64_t len, struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    struct qcow2_writer *w = q->w;
    if (w->failed)
        return p2v_err_set(err, EIO, "'%s': an earlier write failed; the image is "
                           "incomplete", d->path);
    if (w->seq && (off >> q->cb) < w->frontier)
        return seq_order_error(q, off, "zero", err);
    uint64_t end = off + len;
    while (off < end) {
        uint64_t gc = off >> q->cb;
        uint64_t l1i = gc / q->l.l2_entries;
        uint64_t in = off & (q->cs - 1);
        uint64_t n = P2V_MIN(end - off, (uint64_t)q->cs - in);
        if ((q->l1[l1i] & QCOW2_OFFSET_MASK) == 0) {
            /* no table: the whole span is unallocated and reads as zeros */
            n = P2V_MIN(end - off, q->l.l2_span - off % q->l.l2_span);
        } else if (in == 0 && n == q->cs) {
            if (mark_zero(q, gc, err) < 0)
                return -1;
        } else if (!w->seq) {
            /* part of a cluster: zeros written where data is stored */
            struct qcow2_l2slot *s;
            struct qcow2_centry c;
            if (qcow2_l2_get(q, l1i, false, &s, err) < 0 ||
                decode_own(q, s->e[gc % q->l.l2_entries], &c, err) < 0)
                return -1;
            if (c.type == QCOW2_NORMAL) {
                memset(w->tmp, 0, (size_t)n);
                if (qcow2_write_exact(q, w->tmp, (size_t)n, c.off + in, err) < 0)
                    return -1;
            }
        }
        off += n;
    }
    /* a cluster zeroed only in part may still be written (from its start) */
    if (w->seq && (end >> q->cb) > w->frontier)
        w->frontier = end >> q->cb;
    return 0;
}

int qcow2_w_flush(struct diskfmt *d, struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    if (!q->w)
        return 0;
    if (qcow2_w_settle(q, err) < 0 || qcow2_l2_flush_all(q, err) < 0 ||
        qcow2_table_write(q, q->l1, q->h.l1_size, q->h.l1_table_offset, err) < 0)
        return -1;
    if (diskfmt_fdatasync(q->fd) < 0)
        return p2v_err_errno(err, "cannot flush '%s'", q->path);
    return 0;
}

/* A checkpoint is a flush without the fdatasync. Every cluster below the end is then
 * referenced exactly once by the tables written (a data cluster's L2 entry is set, and a
 * table's L1 entry written, before the next allocation; a failed write sets w->failed),
 * which is what qcow2_resume relies on. The sequential writer has none: it packs
 * compressed data at byte granularity and holds clusters in flight, so its end is no
 * point to cut the file at. */
int qcow2_w_checkpoint(struct diskfmt *d, uint64_t *mark, struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    struct qcow2_writer *w = q->w;
    if (!w)
        return p2v_err_set(err, EBADF, "'%s': image is open read-only", q->path);
    if (w->seq)
        return p2v_err_set(err, ENOTSUP, "'%s': a compressed qcow2 image is written in "
                           "order and cannot be resumed, so it has no checkpoints", q->path);
    if (w->failed)
        return p2v_err_set(err, EIO, "'%s': an earlier write failed; the image is "
                           "incomplete", q->path);
    if (qcow2_l2_flush_all(q, err) < 0 ||
        qcow2_table_write(q, q->l1, q->h.l1_size, q->h.l1_table_offset, err) < 0)
        return -1;
    *mark = w->end;
    return 0;
}

/* ------------------------------------------------------------------ refcounts at close */

/* The refcount blocks are produced in order, one in memory at a time: every cluster
 * below the end is used once (the default), except the clusters that compressed data
 * touch (counted by `touch`, in increasing order) and the initial refcount table when a
 * larger one replaces it (free). Blocks after the first are appended contiguously and
 * gathered into large writes. */
struct rc_gen {
    struct qcow2 *q;
    uint64_t per_block;   /* refcounts in a block */
    uint64_t used;        /* clusters in use before close: [0, used) */
    uint64_t total;       /* clusters in use after close */
    uint64_t nblocks;
    bool table_moved;     /* the table is appended; cluster 1 becomes free */
    uint64_t blk;         /* the block being filled */
    uint8_t *buf;         /* its refcounts */
    uint64_t last;        /* the last cluster touched */
    bool touched;
    uint8_t *stage;       /* appended blocks gathered */
    size_t stage_len, stage_cap;
    uint64_t stage_off;
};

static void gen_fill(struct rc_gen *g)
{
    uint64_t first = g->blk * g->per_block;
    for (uint64_t i = 0; i < g->per_block; i++) {
        uint64_t c = first + i;
        uint16_t v = c < g->total ? 1 : 0;
        if (c == 1 && g->table_moved)
            v = 0;
        p2v_put_u16be(g->buf + 2 * i, v);
    }
}

static int gen_stage_flush(struct rc_gen *g, struct p2v_err *err)
{
    if (g->stage_len == 0)
        return 0;
    if (qcow2_write_exact(g->q, g->stage, g->stage_len, g->stage_off, err) < 0)
        return -1;
    g->stage_off += g->stage_len;
    g->stage_len = 0;
    return 0;
}

static int gen_emit(struct rc_gen *g, struct p2v_err *err)
{
    struct qcow2 *q = g->q;
    if (g->blk == 0) /* the first block stays where create put it */
        return qcow2_write_exact(q, g->buf, q->cs, 2 * (uint64_t)q->cs, err);
    if (g->stage_len + q->cs > g->stage_cap && gen_stage_flush(g, err) < 0)
        return -1;
    memcpy(g->stage + g->stage_len, g->buf, q->cs);
    g->stage_len += q->cs;
    return 0;
}

/* Compressed data touch host cluster @c once more. */
static int gen_touch(struct rc_gen *g, uint64_t c, struct p2v_err *err)
{
    if ((g->touched && c < g->last) || c >= g->used)
        return p2v_err_set(err, EIO, "'%s': internal error: compressed data out of order at "
                           "host cluster %llu", g->q->path, (unsigned long long)c);
    while (c / g->per_block > g->blk) {
        if (gen_emit(g, err) < 0)
            return -1;
        g->blk++;
        gen_fill(g);
    }
    uint8_t *p = g->buf + 2 * (c % g->per_block);
    uint32_t v = (g->touched && c == g->last) ? p2v_get_u16be(p) + 1u : 1u;
    if (v > UINT16_MAX)
        return p2v_err_set(err, EFBIG, "'%s': host cluster %llu holds more compressed "
                           "clusters than a 16-bit refcount counts", g->q->path,
                           (unsigned long long)c);
    p2v_put_u16be(p, (uint16_t)v);
    g->last = c;
    g->touched = true;
    return 0;
}

/* Walk the L2 tables in guest order: compressed data were appended in that order. */
static int touch_compressed(struct rc_gen *g, struct p2v_err *err)
{
    struct qcow2 *q = g->q;
    for (uint64_t l1i = 0; l1i < q->h.l1_size; l1i++) {
        struct qcow2_l2slot *s;
        if (qcow2_l2_get(q, l1i, false, &s, err) < 0)
            return -1;
        for (uint32_t i = 0; s && i < q->l.l2_entries; i++) {
            struct qcow2_centry c;
            const char *why;
            if (!(s->e[i] & QCOW2_OFLAG_COMPRESSED))
                continue;
            if (qcow2_l2_decode(s->e[i], q->cb, 3, &c, &why) < 0)
                return p2v_err_set(err, EIO, "'%s': internal error: bad L2 entry", q->path);
            /* as qemu-img check counts them: the sectors the data span */
            uint64_t start = c.off & ~(uint64_t)(QCOW2_SECTOR - 1);
            uint64_t last = start + c.nsec * QCOW2_SECTOR - 1;
            for (uint64_t hc = start >> q->cb; hc <= last >> q->cb; hc++)
                if (gen_touch(g, hc, err) < 0)
                    return -1;
        }
    }
    return 0;
}

static int write_refcounts(struct qcow2 *q, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    uint64_t cs = q->cs;
    struct rc_gen g;
    int ret = -1;
    memset(&g, 0, sizeof g);
    g.q = q;
    g.per_block = cs * 8 / (1u << QCOW2_REFCOUNT_ORDER);
    g.used = (w->end + cs - 1) / cs;
    /* blocks beyond the first and a larger table, if needed, are appended: find the
     * counts that cover themselves (a few rounds at most) */
    uint64_t n = 1, t = 1;
    for (;;) {
        t = (n * 8 + cs - 1) / cs;
        uint64_t total = g.used + (n - 1) + (t > 1 ? t : 0);
        uint64_t need = (total + g.per_block - 1) / g.per_block;
        if (need <= n) {
            g.total = total;
            break;
        }
        n = need;
    }
    if (t * cs > QCOW2_REFT_MAX_BYTES)
        return p2v_err_set(err, EFBIG, "'%s': the image needs a refcount table of %llu "
                           "clusters, more than %u MiB", q->path, (unsigned long long)t,
                           QCOW2_REFT_MAX_BYTES >> 20);
    if (g.total * cs > QCOW2_HOST_MAX)
        return p2v_err_set(err, EFBIG, "'%s': the image would grow past %llu bytes", q->path,
                           (unsigned long long)QCOW2_HOST_MAX);
    g.nblocks = n;
    g.table_moved = t > 1;
    g.stage_cap = (size_t)P2V_MAX(cs, (uint64_t)QCOW2_OUTBUF);
    g.stage_off = g.used * cs;
    g.buf = malloc(cs);
    g.stage = malloc(g.stage_cap);
    if (!g.buf || !g.stage) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    gen_fill(&g);
    if (w->ncompressed && touch_compressed(&g, err) < 0)
        goto out;
    for (;;) {
        if (gen_emit(&g, err) < 0)
            goto out;
        if (++g.blk >= g.nblocks)
            break;
        gen_fill(&g);
    }
    if (gen_stage_flush(&g, err) < 0)
        goto out;
    /* the table: block 0 at cluster 2, the others appended from `used` */
    uint64_t table_off = g.table_moved ? (g.used + n - 1) * cs : cs;
    uint64_t per = cs / 8;
    for (uint64_t k = 0; k < t; k++) {
        memset(q->tbuf, 0, cs);
        for (uint64_t i = 0; i < per && k * per + i < n; i++) {
            uint64_t b = k * per + i;
            p2v_put_u64be(q->tbuf + 8 * i, b == 0 ? 2 * cs : (g.used + b - 1) * cs);
        }
        if (qcow2_write_exact(q, q->tbuf, cs, table_off + k * cs, err) < 0)
            goto out;
    }
    q->h.refcount_table_offset = table_off;
    q->h.refcount_table_clusters = (uint32_t)t;
    /* every cluster the refcounts count exists in the file (the last may hold only
     * compressed data that end mid-cluster): a hole at most a cluster long */
    struct stat st;
    if (fstat(q->fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_size < g.total * cs && ftruncate(q->fd, (off_t)(g.total * cs)) < 0) {
        p2v_err_errno(err, "cannot set the size of '%s'", q->path);
        goto out;
    }
    set_end(q, g.total * cs);
    ret = 0;
out:
    free(g.buf);
    free(g.stage);
    return ret;
}

int qcow2_w_close(struct qcow2 *q, bool finish, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    int ret = -1;
    if (!finish) {
        /* abandoned: the header keeps its dirty bit */
        ret = 0;
        goto out;
    }
    if (w->failed) {
        p2v_err_set(err, EIO, "'%s': an earlier write failed; the image is incomplete (its "
                    "dirty bit stays set)", q->path);
        goto out;
    }
    if (w->seq && drain(q, true, false, err) < 0)
        goto out;
    stop_threads(w);
    if (obuf_flush(q, err) < 0 || qcow2_l2_flush_all(q, err) < 0 ||
        qcow2_table_write(q, q->l1, q->h.l1_size, q->h.l1_table_offset, err) < 0 ||
        write_refcounts(q, err) < 0)
        goto out;
    /* everything the clean header vouches for is on disk before it is */
    if (diskfmt_fdatasync(q->fd) < 0) {
        p2v_err_errno(err, "cannot flush '%s'", q->path);
        goto out;
    }
    uint8_t hdr[QCOW2_ENCODED_HEADER_LEN];
    q->h.incompatible &= ~QCOW2_INCOMPAT_DIRTY;
    qcow2_header_encode(&q->h, hdr);
    if (qcow2_write_exact(q, hdr, sizeof hdr, 0, err) < 0)
        goto out;
    if (diskfmt_fdatasync(q->fd) < 0) {
        p2v_err_errno(err, "cannot flush '%s'", q->path);
        goto out;
    }
    ret = 0;
out:
    qcow2_w_free(w);
    q->w = NULL;
    return ret;
}

/* ------------------------------------------------------------------ create */

static int start_threads(struct qcow2 *q, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work, NULL);
    pthread_cond_init(&w->done, NULL);
    w->sync_ok = true;
    w->njobs = (unsigned)P2V_MAX((uint64_t)QCOW2_JOBS_MIN,
                                 P2V_MIN((uint64_t)QCOW2_JOBS_MAX,
                                         QCOW2_JOBS_BYTES / (2 * (uint64_t)q->cs)));
    w->jobs = calloc(w->njobs, sizeof *w->jobs);
    w->obuf = malloc(QCOW2_OUTBUF);
    if (!w->jobs || !w->obuf)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (unsigned i = 0; i < w->njobs; i++) {
        w->jobs[i].in = malloc(q->cs);
        w->jobs[i].out = malloc(q->cs);
        if (!w->jobs[i].in || !w->jobs[i].out)
            return p2v_err_set(err, ENOMEM, "out of memory");
    }
    for (unsigned i = 0; i < QCOW2_THREADS; i++) {
        if (pthread_create(&w->th[i], NULL, worker_main, w) != 0) {
            if (w->nth > 0)
                break; /* fewer compressors is slower, not wrong */
            return p2v_err_set(err, EAGAIN, "'%s': cannot start a compression thread",
                               q->path);
        }
        w->nth++;
    }
    return 0;
}

/* The writer's own state (create and resume). */
static int writer_new(struct qcow2 *q, enum diskfmt_compress compress, struct p2v_err *err)
{
    struct qcow2_writer *w = q->w = calloc(1, sizeof *q->w);
    if (!w || !(w->tmp = malloc(q->cs)))
        return p2v_err_set(err, ENOMEM, "out of memory");
    w->cs = q->cs;
    w->compress = compress;
    w->seq = compress != DISKFMT_COMPRESS_NONE;
    return 0;
}

int qcow2_create(struct diskfmt *d, const struct diskfmt_create_opts *opts,
                 struct p2v_err *err)
{
    uint64_t cs = opts->cluster_size ? opts->cluster_size : QCOW2_DEFAULT_CLUSTER;
    uint64_t size, l1n;
    if (!p2v_is_pow2(cs) || cs < QCOW2_CREATE_CLUSTER_MIN || cs > QCOW2_CREATE_CLUSTER_MAX)
        return p2v_err_set(err, EINVAL, "'%s': cluster_size %llu is not a power of two "
                           "between %u and %u", d->path, (unsigned long long)cs,
                           QCOW2_CREATE_CLUSTER_MIN, QCOW2_CREATE_CLUSTER_MAX);
    if (opts->compress != DISKFMT_COMPRESS_NONE && opts->compress != DISKFMT_COMPRESS_ZLIB &&
        opts->compress != DISKFMT_COMPRESS_ZSTD)
        return p2v_err_set(err, EINVAL, "'%s': unknown compression %d", d->path,
                           (int)opts->compress);
    unsigned cb = (unsigned)__builtin_ctzll(cs);
    /* qemu keeps qcow2 sizes in whole sectors: round up, as qemu-img does */
    if (!p2v_align_up(opts->size, QCOW2_SECTOR, &size))
        return p2v_err_set(err, EFBIG, "'%s': size %llu is too large", d->path,
                           (unsigned long long)opts->size);
    qcow2_l1_entries_for(size, cb, &l1n);
    if (l1n > QCOW2_L1_MAX_BYTES / 8)
        return p2v_err_set(err, EFBIG, "'%s': a virtual size of %llu bytes is too large for "
                           "qcow2 with %llu-byte clusters (the L1 table would pass %u MiB; "
                           "use a larger cluster_size)", d->path, (unsigned long long)size,
                           (unsigned long long)cs, QCOW2_L1_MAX_BYTES >> 20);
    struct qcow2 *q = calloc(1, sizeof *q);
    uint8_t *head = NULL;
    int ret = -1;
    if (!q)
        return p2v_err_set(err, ENOMEM, "out of memory");
    q->fd = -1;
    q->path = d->path;
    q->cb = cb;
    q->cs = (uint32_t)cs;
    struct qcow2_header *h = &q->h;
    h->version = 3;
    h->cluster_bits = cb;
    h->size = size;
    h->l1_size = (uint32_t)l1n;
    h->refcount_table_offset = cs;
    h->refcount_table_clusters = 1;
    h->l1_table_offset = 3 * cs;
    h->refcount_order = QCOW2_REFCOUNT_ORDER;
    h->header_length = QCOW2_V3_HEADER_LEN;
    h->incompatible = QCOW2_INCOMPAT_DIRTY;
    if (opts->compress == DISKFMT_COMPRESS_ZSTD) {
        h->incompatible |= QCOW2_INCOMPAT_COMPRESSION;
        h->compression_type = QCOW2_COMPRESSION_ZSTD;
    }
    q->l.cluster_size = (uint32_t)cs;
    q->l.l2_entries = (uint32_t)(cs / 8);
    q->l.l2_span = cs * (cs / 8);
    q->l.l1_needed = l1n;
    q->l.l1_bytes = l1n * 8;
    q->l.reft_bytes = cs;
    q->l.refcount_bits = 1u << QCOW2_REFCOUNT_ORDER;
    if (qcow2_alloc_state(q, err) < 0)
        goto out;
    if (writer_new(q, opts->compress, err) < 0)
        goto out;
    struct qcow2_writer *w = q->w;
    q->fd = open(d->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (q->fd < 0) {
        p2v_err_errno(err, "cannot create '%s'", d->path);
        goto out;
    }
    /* header, refcount table, first refcount block (the header, the tables and the L1
     * table counted), then the L1 table: zeros, left as a hole until close */
    uint64_t l1_clusters = (q->l.l1_bytes + cs - 1) / cs;
    uint64_t meta = 3 + l1_clusters;
    head = calloc(3, cs);
    if (!head) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    qcow2_header_encode(h, head);
    p2v_put_u64be(head + cs, 2 * cs);
    uint64_t per_block = cs * 8 / (1u << QCOW2_REFCOUNT_ORDER);
    for (uint64_t i = 0; i < P2V_MIN(meta, per_block); i++)
        p2v_put_u16be(head + 2 * cs + 2 * i, 1);
    if (qcow2_write_exact(q, head, 3 * cs, 0, err) < 0)
        goto out;
    struct stat st;
    if (fstat(q->fd, &st) == 0 && S_ISREG(st.st_mode) &&
        ftruncate(q->fd, (off_t)(meta * cs)) < 0) {
        p2v_err_errno(err, "cannot set the size of '%s'", d->path);
        goto out;
    }
    set_end(q, meta * cs);
    w->obuf_off = w->end;
    /* the first L2 table now, so that even an image whose writer died before writing
     * anything is reported by qemu-img check (see qcow2_w_alloc_table) */
    struct qcow2_l2slot *s;
    if (h->l1_size && qcow2_l2_get(q, 0, true, &s, err) < 0)
        goto out;
    if (w->seq) {
        if (start_threads(q, err) < 0)
            goto out;
        d->sequential = true;
        d->write_align = (uint32_t)cs;
    }
    d->size = size;
    d->block_size = (uint32_t)cs;
    d->priv = q;
    q = NULL;
    ret = 0;
out:
    free(head);
    qcow2_free(q);
    return ret;
}

/* ------------------------------------------------------------------ resume */

/* Resume refuses what it did not write: another writer's layout may put anything below
 * the mark, and the refcounts close computes would then be wrong. */
__attribute__((format(printf, 3, 4))) static int not_ours(const char *path, struct p2v_err *err,
                                                          const char *fmt, ...)
{
    char why[P2V_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return p2v_err_set(err, EINVAL, "'%s' is not an incomplete image written by p2vkit (%s)",
                       path, why);
}

/* The message of @e without the "'path': " the parsers start theirs with. */
static const char *msg_of(const struct p2v_err *e, const char *path)
{
    size_t n = strlen(path);
    if (e->msg[0] == '\'' && strncmp(e->msg + 1, path, n) == 0 &&
        strncmp(e->msg + 1 + n, "': ", 3) == 0)
        return e->msg + n + 4;
    return e->msg;
}

/* Read and check the header: the layout qcow2_create writes and nothing else (version 3,
 * its header length without extensions, 16-bit refcounts, the refcount table in cluster
 * 1, the L1 table from cluster 3 sized for the virtual size, no snapshots, no features
 * but the dirty bit, which must be set). */
static int resume_header(struct qcow2 *q, struct p2v_err *err)
{
    const char *path = q->path;
    struct qcow2_header *h = &q->h;
    struct p2v_err e = {0};
    uint64_t fsize = q->file_size;
    uint8_t *head = NULL;
    size_t hlen;
    int ret = -1;
    if (qcow2_read_header_cluster(q, &head, &hlen, err) < 0)
        goto out;
    if (qcow2_header_parse(head, hlen, path, h, &e) < 0) {
        not_ours(path, err, "%s", msg_of(&e, path));
        goto out;
    }
    if (h->version != 3) {
        not_ours(path, err, "qcow2 version %u, not 3", h->version);
        goto out;
    }
    if (h->header_length != QCOW2_V3_HEADER_LEN || hlen < QCOW2_ENCODED_HEADER_LEN ||
        !p2v_is_zero(head + QCOW2_V3_HEADER_LEN, 8)) {
        not_ours(path, err, "header_length %u or header extensions at offset %u",
                 h->header_length, QCOW2_V3_HEADER_LEN);
        goto out;
    }
    if (h->refcount_order != QCOW2_REFCOUNT_ORDER || h->nb_snapshots ||
        h->snapshots_offset || h->compatible || h->autoclear ||
        (h->incompatible & ~QCOW2_INCOMPAT_DIRTY)) {
        not_ours(path, err, "refcount_order %u, %u snapshots, features 0x%llx/0x%llx/0x%llx",
                 h->refcount_order, h->nb_snapshots, (unsigned long long)h->incompatible,
                 (unsigned long long)h->compatible, (unsigned long long)h->autoclear);
        goto out;
    }
    if (!(h->incompatible & QCOW2_INCOMPAT_DIRTY)) {
        p2v_err_set(err, EALREADY, "'%s' is complete (its dirty bit is clear): there is "
                    "nothing to resume", path);
        goto out;
    }
    uint64_t cs = UINT64_C(1) << h->cluster_bits;
    if (h->refcount_table_offset != cs || h->refcount_table_clusters != 1 ||
        h->l1_table_offset != 3 * cs || h->size % QCOW2_SECTOR) {
        not_ours(path, err, "refcount table at offset %llu (%u clusters), L1 table at offset "
                 "%llu, virtual size %llu", (unsigned long long)h->refcount_table_offset,
                 h->refcount_table_clusters, (unsigned long long)h->l1_table_offset,
                 (unsigned long long)h->size);
        goto out;
    }
    if (qcow2_layout_check(h, fsize, path, &q->l, &e) < 0) {
        not_ours(path, err, "%s", msg_of(&e, path));
        goto out;
    }
    if (h->l1_size != q->l.l1_needed) {
        not_ours(path, err, "an L1 table of %u entries for %llu needed", h->l1_size,
                 (unsigned long long)q->l.l1_needed);
        goto out;
    }
    ret = 0;
out:
    free(head);
    return ret;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* What resume does to an L1 entry. */
enum { FIX_NONE, FIX_L2, FIX_L1 };

/* Check the L1 table and every L2 table below @mark, reading only, so that an image
 * refused is left as it was: the L1 table into q->l1 with the entries of tables at or
 * past @mark cleared (fix[i] FIX_L1), and fix[i] FIX_L2 for tables below @mark holding
 * entries at or past it. Below @mark every table and data cluster must lie past the
 * metadata (@meta_end), aligned, and no data cluster on a table; compressed clusters are
 * refused (this writer resumes only what it wrote uncompressed). */
static int resume_scan(struct qcow2 *q, uint64_t mark, uint64_t meta_end, uint8_t *fix,
                       struct p2v_err *err)
{
    uint64_t n = q->h.l1_size, cs = q->cs;
    uint64_t *tables = malloc((size_t)(n ? n : 1) * sizeof *tables);
    uint8_t *raw = malloc((size_t)(q->l.l1_bytes ? q->l.l1_bytes : 1));
    size_t nt = 0;
    int ret = -1;
    if (!tables || !raw) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    if (qcow2_read_exact(q, raw, (size_t)q->l.l1_bytes, q->h.l1_table_offset, err) < 0)
        goto out;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t e = p2v_get_u64be(raw + 8 * i), l2 = e & QCOW2_OFFSET_MASK;
        uint64_t at = q->h.l1_table_offset + 8 * i;
        const char *what = NULL;
        if (e & QCOW2_L1_RESERVED)
            what = "has reserved bits set";
        else if (l2 % cs)
            what = "points to an offset not aligned to the cluster size";
        else if (l2 && l2 < meta_end)
            what = "points into the metadata";
        if (what) {
            p2v_err_set(err, EINVAL, "'%s': L1 entry %llu (offset %llu) %s (0x%016llx)",
                        q->path, (unsigned long long)i, (unsigned long long)at, what,
                        (unsigned long long)e);
            goto out;
        }
        if (l2 >= mark) {
            /* a table allocated after the checkpoint: its entry went to disk at once */
            q->l1[i] = 0;
            fix[i] = FIX_L1;
            continue;
        }
        q->l1[i] = e;
        if (l2)
            tables[nt++] = l2;
    }
    qsort(tables, nt, sizeof *tables, u64_cmp);
    for (size_t k = 1; k < nt; k++)
        if (tables[k] == tables[k - 1]) {
            p2v_err_set(err, EINVAL, "'%s': two L1 entries share the L2 table at offset %llu",
                        q->path, (unsigned long long)tables[k]);
            goto out;
        }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t l2 = q->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        if (qcow2_read_exact(q, q->tbuf, q->cs, l2, err) < 0) {
            p2v_err_prefix(err, "L2 table of L1 entry %llu", (unsigned long long)i);
            goto out;
        }
        for (uint32_t j = 0; j < q->l.l2_entries; j++) {
            uint64_t e = p2v_get_u64be(q->tbuf + 8 * (size_t)j);
            struct qcow2_centry c;
            const char *why = NULL;
            if (qcow2_l2_decode(e, q->cb, 3, &c, &why) == 0) {
                if (c.type == QCOW2_COMPRESSED)
                    why = "is compressed";
                else if (c.off >= mark)
                    fix[i] = FIX_L2; /* data allocated after the checkpoint */
                else if (c.off && c.off < meta_end)
                    why = "points into the metadata";
                else if (c.off && bsearch(&c.off, tables, nt, sizeof *tables, u64_cmp))
                    why = "points at an L2 table";
            }
            if (why) {
                p2v_err_set(err, EINVAL, "'%s': L2 entry %u of L1 entry %llu (table at "
                            "offset %llu) %s (0x%016llx)", q->path, j, (unsigned long long)i,
                            (unsigned long long)l2, why, (unsigned long long)e);
                goto out;
            }
        }
    }
    ret = 0;
out:
    free(tables);
    free(raw);
    return ret;
}

/* Cut the file at @mark and clear what points at or past it (as resume_scan found). */
static int resume_cut(struct qcow2 *q, uint64_t mark, const uint8_t *fix,
                      struct p2v_err *err)
{
    bool l1_changed = false;
    if (ftruncate(q->fd, (off_t)mark) < 0)
        return p2v_err_errno(err, "cannot cut '%s' at %llu", q->path,
                             (unsigned long long)mark);
    for (uint64_t i = 0; i < q->h.l1_size; i++) {
        if (fix[i] == FIX_L1)
            l1_changed = true;
        if (fix[i] != FIX_L2)
            continue;
        uint64_t l2 = q->l1[i] & QCOW2_OFFSET_MASK;
        if (qcow2_read_exact(q, q->tbuf, q->cs, l2, err) < 0)
            return -1;
        for (uint32_t j = 0; j < q->l.l2_entries; j++) {
            uint8_t *p = q->tbuf + 8 * (size_t)j;
            /* checked by resume_scan: a standard entry, its host offset aligned; a zero
             * flag without a host cluster stays */
            if ((p2v_get_u64be(p) & QCOW2_OFFSET_MASK) >= mark)
                p2v_put_u64be(p, 0);
        }
        if (qcow2_write_exact(q, q->tbuf, q->cs, l2, err) < 0)
            return -1;
    }
    if (l1_changed &&
        qcow2_table_write(q, q->l1, q->h.l1_size, q->h.l1_table_offset, err) < 0)
        return -1;
    return 0;
}

/* Reopen an image this writer left dirty, as it was when qcow2_w_checkpoint returned
 * @mark. The tables on disk then are the checkpoint's, changed since only by what the
 * writer did after it: L1 entries written for new tables (at or past the mark), L2
 * tables written back on eviction, whose entries below the mark still name the clusters
 * the checkpoint's did (an allocated guest cluster keeps its host cluster: overwrites and
 * zeroing happen in place) and whose other entries point at or past the mark, and data
 * overwritten in place. Cutting the file at the mark and clearing every entry that
 * points at or past it leaves every cluster below the mark referenced exactly once, as
 * at the checkpoint: the state close computes the refcounts from. Resuming again at the
 * same mark after a failure half-way gives the same result. */
int qcow2_resume(struct diskfmt *d, uint64_t mark, struct p2v_err *err)
{
    struct qcow2 *q = calloc(1, sizeof *q);
    uint8_t *fix = NULL;
    int ret = -1;
    if (!q)
        return p2v_err_set(err, ENOMEM, "out of memory");
    q->path = d->path;
    /* the cut needs ftruncate: a regular file */
    if (qcow2_open_file(q, O_RDWR, false, err) < 0)
        goto out;
    uint64_t fsize = q->file_size;
    if (resume_header(q, err) < 0)
        goto out;
    q->cb = q->h.cluster_bits;
    q->cs = q->l.cluster_size;
    uint64_t cs = q->cs;
    uint64_t meta_end = q->h.l1_table_offset + (q->l.l1_bytes + cs - 1) / cs * cs;
    if (mark % cs || mark < meta_end || mark > fsize) {
        p2v_err_set(err, EINVAL, "'%s': cannot resume at %llu: the mark must be a multiple "
                    "of the cluster size (%llu) from the end of the metadata (%llu) to the "
                    "size of the file (%llu bytes)", d->path, (unsigned long long)mark,
                    (unsigned long long)cs, (unsigned long long)meta_end,
                    (unsigned long long)fsize);
        goto out;
    }
    if (qcow2_alloc_state(q, err) < 0)
        goto out;
    fix = calloc(q->h.l1_size ? q->h.l1_size : 1, 1);
    if (!fix) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    if (resume_scan(q, mark, meta_end, fix, err) < 0 || resume_cut(q, mark, fix, err) < 0)
        goto out;
    /* the writer as create leaves it, its end at the mark */
    if (writer_new(q, DISKFMT_COMPRESS_NONE, err) < 0)
        goto out;
    q->w->end = q->w->obuf_off = q->w->wb_start = mark;
    q->file_size = mark;
    /* no table left (a mark at the end of the metadata): one now, as create makes one,
     * so that qemu-img check keeps reporting the image if this writer dies too */
    bool any = false;
    for (uint64_t i = 0; i < q->h.l1_size && !any; i++)
        any = (q->l1[i] & QCOW2_OFFSET_MASK) != 0;
    struct qcow2_l2slot *s;
    if (!any && q->h.l1_size && qcow2_l2_get(q, 0, true, &s, err) < 0)
        goto out;
    d->size = q->h.size;
    d->block_size = q->cs;
    d->priv = q;
    q = NULL;
    ret = 0;
out:
    free(fix);
    qcow2_free(q);
    return ret;
}
