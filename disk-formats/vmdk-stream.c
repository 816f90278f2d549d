/* vmdk-stream.c: the streamOptimized writer of the VMDK driver (VDF "Stream-Optimized
 * Compressed Sparse Extents"), written append-only in one pass.
 *
 * The caller's thread cuts writes into grains, skips all-zero grains (they stay
 * unallocated and read as zeros), copies the others into a bounded ring of jobs and
 * returns; worker threads deflate the jobs (zlib stream format, as VMware and qemu write
 * it). The caller's thread then appends finished jobs strictly in ring order, each a
 * grain marker (LBA, compressed length) with its data padded to a sector, keeps the grain
 * table of the grains it is writing and appends that table behind a grain-table marker
 * once the stream moves past it. Memory is the ring plus one grain table and the grain
 * directory, whatever the disk size.
 *
 * Compression: zlib level 1 (deflate's "fast" strategy: ~1.7x faster than qemu's
 * default level 6 for 7 % more output on text); grains whose sample looks random are
 * written as deflate stored blocks (level 0: still a deflate stream any inflater reads,
 * at memory speed instead of ~65 MB/s for an attempt that would not shrink them).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fallocate, O_DIRECTORY, strndup (the build defines it too) */
#endif
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "diskfmt-int.h"
#include "vmdk.h"

/* Grains in flight between the caller and the compressors: enough to keep two cores busy
 * while the caller copies and writes; capped in bytes for large grains. */
#define STREAM_JOBS_MAX 32u
#define STREAM_JOBS_BYTES_MAX (8u << 20)
/* Output is gathered and written in pieces of this size (fewer, larger writes). */
#define STREAM_OUTBUF (1u << 20)
/* Compression threads at most (one per core is what helps). */
#define STREAM_THREADS_MAX 8u

enum job_state { JOB_FREE, JOB_QUEUED, JOB_DONE, JOB_FAILED };

struct job {
    uint64_t grain;
    size_t in_len;   /* bytes of real data (the rest of the grain is zero padding) */
    uint8_t *in;     /* grain_bytes */
    uint8_t *out;    /* marker + deflate stream + padding to a sector */
    size_t out_len;
    enum job_state state;
};

struct vmdk_stream {
    int fd;
    const char *path;
    struct vmdk_header h;
    struct vmdk_layout l;
    int level;

    /* the ring: [tail, next) being compressed or done, [next, head) queued */
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    struct job *jobs;
    unsigned njobs;
    uint64_t head, next, tail;
    bool quit;
    pthread_t th[STREAM_THREADS_MAX];
    unsigned nth;
    size_t out_cap;

    /* writer state, touched only by the caller's thread */
    uint64_t frontier;  /* first grain a write may still go to */
    uint64_t pos;       /* next sector of the file */
    uint32_t *gt;       /* the grain table being filled (host order) */
    uint64_t gt_index;
    bool gt_used;
    uint32_t *gd;       /* the grain directory (host order) */
    uint8_t *obuf;      /* output gathered before a write */
    size_t olen;
    uint64_t obuf_sector; /* the sector where obuf starts */
    uint64_t grains_written;
    bool failed;
};


static int deflate_job(z_stream *fast, z_stream *store, struct job *j, size_t grain_bytes,
                       uint64_t grain_sectors, size_t out_cap)
{
    z_stream *z = diskfmt_looks_incompressible(j->in, j->in_len) ? store : fast;
    if (deflateReset(z) != Z_OK)
        return -1;
    z->next_in = j->in;
    z->avail_in = (uInt)grain_bytes;
    z->next_out = j->out + VMDK_GRAIN_MARKER_SIZE;
    z->avail_out = (uInt)(out_cap - VMDK_GRAIN_MARKER_SIZE);
    if (deflate(z, Z_FINISH) != Z_STREAM_END)
        return -1;
    size_t clen = (size_t)z->total_out;
    /* VDF "Stream-Optimized Compressed Sparse Extents" grain marker: the grain's first
     * sector (LBA) and the compressed size */
    p2v_put_u64le(j->out, j->grain * grain_sectors);
    p2v_put_u32le(j->out + 8, (uint32_t)clen);
    size_t used = VMDK_GRAIN_MARKER_SIZE + clen;
    size_t padded = (used + VMDK_SECTOR - 1) & ~(size_t)(VMDK_SECTOR - 1);
    memset(j->out + used, 0, padded - used);
    j->out_len = padded;
    return 0;
}

static void *worker_main(void *arg)
{
    struct vmdk_stream *s = arg;
    z_stream fast, store;
    memset(&fast, 0, sizeof fast);
    memset(&store, 0, sizeof store);
    /* zlib stream format (window 15), as VMware and qemu write it */
    bool ok = deflateInit(&fast, s->level) == Z_OK;
    ok = deflateInit(&store, Z_NO_COMPRESSION) == Z_OK && ok;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->next == s->head && !s->quit)
            pthread_cond_wait(&s->work, &s->mu);
        if (s->quit)
            break;
        struct job *j = &s->jobs[s->next % s->njobs];
        s->next++;
        pthread_mutex_unlock(&s->mu);
        int r = ok ? deflate_job(&fast, &store, j, (size_t)s->l.grain_bytes,
                                 s->h.grain_size, s->out_cap)
                   : -1;
        pthread_mutex_lock(&s->mu);
        j->state = r == 0 ? JOB_DONE : JOB_FAILED;
        pthread_cond_broadcast(&s->done);
    }
    pthread_mutex_unlock(&s->mu);
    deflateEnd(&fast);
    deflateEnd(&store);
    return NULL;
}

/* ------------------------------------------------------------------ output */

static int out_flush(struct vmdk_stream *s, struct p2v_err *err)
{
    if (s->olen == 0)
        return 0;
    uint64_t off = s->obuf_sector * VMDK_SECTOR;
    if (p2v_pwrite_full(s->fd, s->obuf, s->olen, off) < 0)
        return p2v_err_errno(err, "'%s': write error at offset %llu", s->path,
                             (unsigned long long)off);
    s->obuf_sector += s->olen / VMDK_SECTOR;
    s->olen = 0;
    return 0;
}

/* Append @len bytes (a multiple of the sector) at s->pos. */
static int out_put(struct vmdk_stream *s, const uint8_t *p, size_t len, struct p2v_err *err)
{
    uint64_t sectors = len / VMDK_SECTOR;
    /* grain table entries and directory entries are 32-bit sector numbers */
    if (s->pos + sectors > UINT32_MAX)
        return p2v_err_set(err, EFBIG, "'%s': the stream grew past 2 TiB, the limit of a "
                           "sparse extent", s->path);
    while (len) {
        if (s->olen == STREAM_OUTBUF && out_flush(s, err) < 0)
            return -1;
        size_t n = P2V_MIN(len, (size_t)STREAM_OUTBUF - s->olen);
        memcpy(s->obuf + s->olen, p, n);
        s->olen += n;
        p += n;
        len -= n;
    }
    s->pos += sectors;
    return 0;
}

static int put_marker(struct vmdk_stream *s, uint64_t val, uint32_t type,
                      struct p2v_err *err)
{
    uint8_t m[512];
    vmdk_marker_encode(m, val, 0, type);
    return out_put(s, m, sizeof m, err);
}

/* A table of host-order entries as little-endian sectors behind its marker. */
static int put_table(struct vmdk_stream *s, const uint32_t *e, uint32_t n, uint64_t sectors,
                     uint32_t type, uint64_t *where, struct p2v_err *err)
{
    if (put_marker(s, sectors, type, err) < 0)
        return -1;
    *where = s->pos;
    uint8_t sec[512];
    uint32_t i = 0;
    for (uint64_t k = 0; k < sectors; k++) {
        memset(sec, 0, sizeof sec);
        for (unsigned b = 0; b < 128 && i < n; b++, i++)
            p2v_put_u32le(sec + 4 * b, e[i]);
        if (out_put(s, sec, sizeof sec, err) < 0)
            return -1;
    }
    return 0;
}

/* VDF "Stream-Optimized Compressed Sparse Extents": the grain table follows the grains it
 * maps; a table without grains is not written and its directory entry stays 0. */
static int flush_gt(struct vmdk_stream *s, struct p2v_err *err)
{
    if (!s->gt_used)
        return 0;
    uint64_t at;
    if (put_table(s, s->gt, s->h.gtes_per_gt, s->l.gt_sectors, VMDK_MARKER_GT, &at, err) < 0)
        return -1;
    s->gd[s->gt_index] = (uint32_t)at;
    memset(s->gt, 0, s->l.gt_bytes);
    s->gt_used = false;
    return 0;
}

static int write_job(struct vmdk_stream *s, struct job *j, struct p2v_err *err)
{
    uint64_t t = j->grain / s->h.gtes_per_gt;
    if (s->gt_used && t != s->gt_index && flush_gt(s, err) < 0)
        return -1;
    s->gt_index = t;
    uint64_t at = s->pos;
    if (out_put(s, j->out, j->out_len, err) < 0)
        return -1;
    s->gt[j->grain % s->h.gtes_per_gt] = (uint32_t)at;
    s->gt_used = true;
    s->grains_written++;
    return 0;
}

/* Append every finished job at the tail, in order; with @wait_all, wait for all. With
 * @wait_one, wait until at least one slot is free. */
static int drain(struct vmdk_stream *s, bool wait_all, bool wait_one, struct p2v_err *err)
{
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (s->tail == s->head) {
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
        struct job *j = &s->jobs[s->tail % s->njobs];
        bool must_wait = wait_all || (wait_one && s->head - s->tail == s->njobs);
        while (j->state == JOB_QUEUED && must_wait)
            pthread_cond_wait(&s->done, &s->mu);
        enum job_state st = j->state;
        pthread_mutex_unlock(&s->mu);
        if (st == JOB_QUEUED)
            return 0;
        if (st == JOB_FAILED)
            return p2v_err_set(err, EIO, "'%s': deflate failed for the grain at offset %llu",
                               s->path,
                               (unsigned long long)(j->grain * s->l.grain_bytes));
        if (write_job(s, j, err) < 0)
            return -1;
        pthread_mutex_lock(&s->mu);
        j->state = JOB_FREE;
        s->tail++;
        pthread_mutex_unlock(&s->mu);
    }
}

static void stop_threads(struct vmdk_stream *s)
{
    pthread_mutex_lock(&s->mu);
    s->quit = true;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
    for (unsigned i = 0; i < s->nth; i++)
        pthread_join(s->th[i], NULL);
    s->nth = 0;
}

static void stream_free(struct vmdk_stream *s)
{
    if (!s)
        return;
    stop_threads(s);
    if (s->jobs)
        for (unsigned i = 0; i < s->njobs; i++) {
            free(s->jobs[i].in);
            free(s->jobs[i].out);
        }
    free(s->jobs);
    free(s->gt);
    free(s->gd);
    free(s->obuf);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->done);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int vmdk_stream_start(const struct vmdk_stream_params *p, struct vmdk_stream **out,
                      struct p2v_err *err)
{
    struct vmdk_stream *s = calloc(1, sizeof *s);
    if (!s)
        return p2v_err_set(err, ENOMEM, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->done, NULL);
    s->fd = p->fd;
    s->path = p->path;
    s->h = p->header;
    s->level = p->level;
    s->pos = s->obuf_sector = p->start_sector;
    if (vmdk_layout_compute(&s->h, p->path, &s->l, err) < 0)
        goto fail;
    s->njobs = (unsigned)P2V_MIN((uint64_t)STREAM_JOBS_MAX,
                                 STREAM_JOBS_BYTES_MAX / s->l.grain_bytes);
    if (s->njobs < 4)
        s->njobs = 4;
    /* deflate's bound for the zlib format, plus the marker and a sector of padding */
    s->out_cap = (size_t)compressBound((uLong)s->l.grain_bytes) + VMDK_GRAIN_MARKER_SIZE +
                 VMDK_SECTOR;
    s->jobs = calloc(s->njobs, sizeof *s->jobs);
    s->gt = calloc(s->h.gtes_per_gt, sizeof *s->gt);
    s->gd = calloc(s->l.gd_entries, sizeof *s->gd);
    s->obuf = malloc(STREAM_OUTBUF);
    if (!s->jobs || !s->gt || !s->gd || !s->obuf)
        goto nomem;
    for (unsigned i = 0; i < s->njobs; i++) {
        s->jobs[i].in = malloc((size_t)s->l.grain_bytes);
        s->jobs[i].out = malloc(s->out_cap);
        if (!s->jobs[i].in || !s->jobs[i].out)
            goto nomem;
    }
    unsigned want = P2V_MAX(1u, P2V_MIN(p->threads, STREAM_THREADS_MAX));
    for (unsigned i = 0; i < want; i++) {
        if (pthread_create(&s->th[i], NULL, worker_main, s) != 0) {
            if (s->nth > 0)
                break; /* fewer compressors is slower, not wrong */
            p2v_err_set(err, EAGAIN, "'%s': cannot start a compression thread", p->path);
            goto fail;
        }
        s->nth++;
    }
    *out = s;
    return 0;
nomem:
    p2v_err_set(err, ENOMEM, "out of memory");
fail:
    stream_free(s);
    return -1;
}

int vmdk_stream_write(struct vmdk_stream *s, const void *buf, size_t len, uint64_t off,
                      struct p2v_err *err)
{
    const uint8_t *p = buf;
    uint64_t gb = s->l.grain_bytes;
    uint64_t g = off / gb;
    if (s->failed)
        return p2v_err_set(err, EIO, "'%s': an earlier write failed", s->path);
    if (off % gb)
        return p2v_err_set(err, EINVAL, "'%s': streamOptimized write at offset %llu is not "
                           "aligned to the grain (%llu bytes)", s->path,
                           (unsigned long long)off, (unsigned long long)gb);
    if (g < s->frontier)
        return p2v_err_set(err, EINVAL, "'%s': streamOptimized images are written in "
                           "order: offset %llu comes after offset %llu was written",
                           s->path, (unsigned long long)off,
                           (unsigned long long)(s->frontier * gb));
    while (len) {
        size_t n = (size_t)P2V_MIN((uint64_t)len, gb);
        /* VDF "Stream-Optimized Compressed Sparse Extents": grains that read as zeros
         * need no storage */
        if (!p2v_is_zero(p, n)) {
            if (drain(s, false, true, err) < 0)
                goto fail;
            struct job *j = &s->jobs[s->head % s->njobs];
            memcpy(j->in, p, n);
            if (n < gb)
                memset(j->in + n, 0, (size_t)(gb - n));
            j->grain = g;
            j->in_len = n;
            pthread_mutex_lock(&s->mu);
            j->state = JOB_QUEUED;
            s->head++;
            pthread_cond_signal(&s->work);
            pthread_mutex_unlock(&s->mu);
        }
        g++;
        s->frontier = g; /* a grain written only in part is finished: zeros pad it */
        p += n;
        len -= n;
    }
    if (drain(s, false, false, err) < 0)
        goto fail;
    return 0;
fail:
    s->failed = true;
    return -1;
}

int vmdk_stream_zero(struct vmdk_stream *s, uint64_t off, uint64_t len,
                     struct p2v_err *err)
{
    if (off / s->l.grain_bytes < s->frontier)
        return p2v_err_set(err, EINVAL, "'%s': streamOptimized images are written in "
                           "order: cannot zero offset %llu after offset %llu was written",
                           s->path, (unsigned long long)off,
                           (unsigned long long)(s->frontier * s->l.grain_bytes));
    return 0; /* never written grains read as zeros */
}

int vmdk_stream_finish(struct vmdk_stream *s, struct p2v_err *err)
{
    int r = -1;
    uint64_t gd_at;
    uint8_t sec[512];
    if (s->failed) {
        p2v_err_set(err, EIO, "'%s': an earlier write failed; the image is incomplete",
                    s->path);
        goto out;
    }
    if (drain(s, true, false, err) < 0 || flush_gt(s, err) < 0)
        goto out;
    /* VDF "Stream-Optimized Compressed Sparse Extents": the grain directory behind its
     * marker */
    if (put_table(s, s->gd, s->l.gd_entries, s->l.gd_sectors, VMDK_MARKER_GD, &gd_at, err) < 0)
        goto out;
    if (out_flush(s, err) < 0)
        goto out;
    /* everything the footer vouches for is on disk before the footer is */
    if (diskfmt_fdatasync(s->fd) < 0) {
        p2v_err_errno(err, "cannot flush '%s'", s->path);
        goto out;
    }
    /* VDF "Stream-Optimized Compressed Sparse Extents": footer marker, footer (the header
     * with the real gdOffset), end of stream */
    struct vmdk_header f = s->h;
    f.gd_offset = gd_at;
    if (put_marker(s, 1, VMDK_MARKER_FOOTER, err) < 0)
        goto out;
    vmdk_header_encode(&f, sec);
    if (out_put(s, sec, sizeof sec, err) < 0)
        goto out;
    vmdk_marker_encode(sec, 0, 0, VMDK_MARKER_EOS);
    if (out_put(s, sec, sizeof sec, err) < 0 || out_flush(s, err) < 0)
        goto out;
    if (ftruncate(s->fd, (off_t)(s->pos * VMDK_SECTOR)) < 0) {
        p2v_err_errno(err, "cannot set the size of '%s'", s->path);
        goto out;
    }
    if (diskfmt_fdatasync(s->fd) < 0) {
        p2v_err_errno(err, "cannot flush '%s'", s->path);
        goto out;
    }
    r = 0;
out:
    stream_free(s);
    return r;
}

void vmdk_stream_abandon(struct vmdk_stream *s)
{
    stream_free(s);
}

uint64_t vmdk_stream_grains_written(const struct vmdk_stream *s)
{
    return s->grains_written;
}
