/* pipeline.c: libimager's read pipeline (the "pipeline" part of imager.h).
 *
 * One reader thread walks the plan's extents, cuts them into chunks (aligned to
 * chunk_size in disk coordinates, never crossing an extent's end), drops the chunks that
 * lie wholly inside a skip range, and reads runs of contiguous chunks with one large
 * preadv (up to PIPE_READ_MAX bytes, ending on a PIPE_READ_MAX boundary) straight into
 * the chunk slots. When the source is a regular file (an image file), a chunk that lies
 * wholly in a hole of it (SEEK_DATA / SEEK_HOLE) is handed out as a zero chunk without
 * a read, as qemu-img does; holes count as read. Ahead of the reads, the next
 * PIPE_PREFETCH bytes of the plan are asked for with POSIX_FADV_WILLNEED, so that the
 * disk reads while the workers hash (a physical disk is read once, never from the page
 * cache, and one synchronous read at a time leaves it idle in between).
 *
 * Worker threads take the slots from a FIFO and do the CPU work: zero
 * detection, the content hash (common's p2v_digest: one context per worker) and zstd compression (one ZSTD_CCtx per worker; a cheap sample test keeps random
 * data from costing a compression attempt). The level is an atomic that each worker reads
 * once per chunk, so an adaptive pipeline's caller can change it at any time
 * (imager_pipeline_set_level(); 0 stores chunks uncompressed); the chunk says which
 * level it got. The caller's imager_pipeline_next() hands the
 * results out strictly in offset order: every slot carries a sequence number and the
 * consumer waits for the next one (order[seq % nslots] finds it).
 *
 * Memory is a fixed pool of slots (PIPE_SLOTS_PER_WORKER per worker, plus one large read
 * and the slot the caller holds), each with a data buffer and a ZSTD_compressBound()
 * buffer (when the pipeline compresses or is adaptive); nothing grows with the disk's size except the bad-sector list, which is capped.
 *
 * Unreadable sectors: a large read that fails falls back to one read per chunk, each
 * tried 1 + retries times; a chunk that still fails is read again sector by sector. A
 * sector that fails ends the pipeline (EIO, "unreadable sector at offset N of 'PATH'")
 * when it reaches the caller in order, or, with skip_bad_sectors, reads as zeros and is
 * listed. The list is kept by the consumer side, so imager_pipeline_bad_sectors() shows
 * the sectors of the chunks handed out so far and needs no lock.
 *
 * Locking: one mutex guards the slot states, the free list, the work queue and the
 * sequence counters; a slot's buffers belong to whichever thread moved it to its current
 * state (reader: READING, worker: WORKING, consumer: HELD), so they are used unlocked.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <zstd.h>

#include "imager.h"
#include "p2v-proto.h"

#define PIPE_READ_MAX (4u << 20)      /* bytes per large read */
#define PIPE_PREFETCH (16u << 20)     /* planned bytes asked for ahead of the reads */
#define PIPE_PREFETCH_GAP (256u << 10) /* extents closer than this: asked for as one */
#define PIPE_BATCH_MAX 256            /* chunks per large read (iovecs; < IOV_MAX) */
#define PIPE_SLOTS_PER_WORKER 4
#define PIPE_THREADS_MAX 64           /* opts.threads above this is refused */
#define PIPE_THREADS_AUTO_MAX 16      /* threads = 0 uses the online CPUs, up to this */
#define PIPE_RETRIES_DEFAULT 3
#define PIPE_CHUNK_DEFAULT (1u << 20)
#define PIPE_CHUNK_MAX (1u << 20)     /* the protocol's DATA length limit */
#define PIPE_ALIGN 512u               /* offsets and lengths on the wire: sector multiples */
/* The bad-sector list is the only thing that grows with the disk: at 8 bytes a sector
 * this cap keeps it under 8 MB; a disk with more unreadable sectors than that is not
 * worth copying around its holes. */
#define PIPE_BAD_MAX 1000000
#define PIPE_HASH_LEN 32

_Static_assert(PIPE_READ_MAX / PIPE_ALIGN >= 1, "read size");
_Static_assert(PIPE_BATCH_MAX <= 1024, "batch must fit IOV_MAX");

enum pipe_slot_state {
    SLOT_FREE = 0, /* on the free list */
    SLOT_READING,  /* taken by the reader, being filled */
    SLOT_QUEUED,   /* on the work queue */
    SLOT_WORKING,  /* a worker is hashing / compressing it */
    SLOT_DONE,     /* ready for the consumer */
    SLOT_HELD,     /* handed out by imager_pipeline_next() until its next call */
};

struct pipe_slot {
    struct pipe_slot *next; /* free list or work queue link */
    enum pipe_slot_state state;
    uint64_t seq;
    uint64_t off;
    uint32_t len;
    bool zero;
    bool failed; /* err holds why; the consumer stops here */
    uint8_t hash[PIPE_HASH_LEN];
    uint8_t *data;
    uint8_t *zbuf; /* NULL when compression is off */
    size_t zlen;   /* 0: not compressed */
    int level;     /* the level the worker used (0: none) */
    uint64_t *bad; /* offsets of this chunk's unreadable sectors (allocated on demand) */
    size_t nbad, bad_cap;
    struct p2v_err err;
};

struct pipe_worker {
    struct imager_pipeline *p;
    pthread_t tid;
    bool started;
    struct p2v_digest *dg; /* NULL: no hashing */
    ZSTD_CCtx *cctx;
};

struct imager_pipeline {
    /* options (the extent arrays are the caller's and must outlive the pipeline) */
    int fd;
    char *path;
    uint64_t disk_size;
    const struct imager_extent *ext;
    size_t count;
    const struct imager_extent *skip;
    size_t nskip;
    uint32_t chunk_size;
    uint32_t sector_size;
    int nworkers;
    enum imager_hash hash;
    int level;     /* atomic: the caller sets, the workers read once per chunk */
    bool adaptive; /* the level may change: compression buffers always allocated */
    int retries;
    bool skip_bad;
    size_t batch_max;

    /* the reader's: holes of a regular source file (pipe_in_hole) */
    bool sparse;
    uint64_t file_size;
    uint64_t h_from, h_data, h_data_end; /* [h_from, h_data) hole, then data to h_data_end */
    uint64_t pf_mark;                    /* the reader's: asked for up to here */

    /* shared, under lock */
    pthread_mutex_t lock;
    pthread_cond_t cond_free; /* the reader waits for a free slot */
    pthread_cond_t cond_work; /* workers wait for work */
    pthread_cond_t cond_done; /* the consumer waits for its next slot */
    bool sync_ready;          /* lock and conditions initialised */
    struct pipe_slot *slots;
    size_t nslots;
    struct pipe_slot **order; /* order[seq % nslots]: the slot given that seq */
    struct pipe_slot *free_list;
    struct pipe_slot *work_head, *work_tail;
    uint64_t seq_assign; /* the reader's next sequence number */
    uint64_t next_seq;   /* the consumer's next sequence number */
    uint64_t end_seq;    /* valid once reader_done: one past the last seq to hand out */
    bool reader_done;
    bool stop;

    pthread_t reader;
    bool reader_started;
    struct pipe_worker *workers;

    /* consumer side (the thread calling imager_pipeline_next) */
    struct pipe_slot *held;
    int state; /* 0 running, 1 ended, -1 failed */
    struct p2v_err fail;
    uint64_t *bad;
    size_t nbad, bad_cap;

    /* counters, atomic (the reader adds, anyone reads) */
    uint64_t bytes_read;
    uint64_t bytes_skipped;
};

/* ------------------------------------------------------------------ hashes */

/* The first 32 bytes of the digest of @len bytes (enum imager_hash and enum
 * p2v_hash_algo share their values). */
static int pipe_digest(struct p2v_digest *dg, const void *data, size_t len,
                       uint8_t out[PIPE_HASH_LEN])
{
    return p2v_digest_update(dg, data, len) < 0 || p2v_digest_final(dg, out) < 0 ? -1 : 0;
}

/* Seconds one digest of @len bytes takes (the best of two runs); < 0 on failure. */
static double pipe_hash_time(enum imager_hash h, const uint8_t *buf, size_t len)
{
    double best = -1;
    uint8_t out[PIPE_HASH_LEN];
    struct p2v_digest *dg = p2v_digest_new((enum p2v_hash_algo)h);
    if (!dg || pipe_digest(dg, buf, 64 * 1024, out) < 0) /* warm up */
        goto out;
    for (int i = 0; i < 2; i++) {
        double t0 = p2v_now();
        if (pipe_digest(dg, buf, len, out) < 0) {
            best = -1;
            goto out;
        }
        double t = p2v_now() - t0;
        if (best < 0 || t < best)
            best = t;
    }
out:
    p2v_digest_free(dg);
    return best;
}

enum imager_hash imager_hash_pick(void)
{
    const size_t len = 4u << 20; /* two runs each: 8 MiB per hash */
    enum imager_hash pick = IMAGER_HASH_SHA256;
    uint8_t *buf = malloc(len);
    if (!buf)
        return pick;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i + 8 <= len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
    double ts = pipe_hash_time(IMAGER_HASH_SHA256, buf, len);
    double tb = pipe_hash_time(IMAGER_HASH_BLAKE2B, buf, len);
    if (tb >= 0 && (ts < 0 || tb < ts))
        pick = IMAGER_HASH_BLAKE2B;
    free(buf);
    return pick;
}

/* ------------------------------------------------------------------ compression */

/* True when @p looks like random bytes, judged from a few small windows spread over it:
 * both the byte values and the differences between neighbours are close to uniformly
 * spread (their collision probability under 1.5 / 256). Text, tables, code and counting
 * patterns fail one of the two; a compressed or encrypted file passes both, and is sent
 * as it is without a zstd attempt. Short inputs are never judged (they are cheap). */
static bool pipe_looks_random(const uint8_t *p, size_t len)
{
    enum { WINDOWS = 8, WIN = 512 };
    uint32_t cv[256] = {0}, cd[256] = {0};
    if (len < 8 * WINDOWS * WIN)
        return false;
    size_t stride = len / WINDOWS;
    uint32_t n = 0;
    for (size_t w = 0; w < WINDOWS; w++) {
        const uint8_t *q = p + w * stride;
        for (size_t i = 1; i < WIN; i++) {
            cv[q[i]]++;
            cd[(uint8_t)(q[i] - q[i - 1])]++;
        }
        n += WIN - 1;
    }
    uint64_t sv = 0, sd = 0;
    for (int i = 0; i < 256; i++) {
        sv += (uint64_t)cv[i] * cv[i];
        sd += (uint64_t)cd[i] * cd[i];
    }
    /* sum(c^2) / n^2 < 1.5 / 256  <=>  512 * sum(c^2) < 3 * n^2 */
    uint64_t lim = 3 * (uint64_t)n * n;
    return 512 * sv < lim && 512 * sd < lim;
}

/* ------------------------------------------------------------------ slots */

/* Take a free slot for the reader and give it the next sequence number; NULL when the
 * pipeline is stopping. */
static struct pipe_slot *pipe_slot_take(struct imager_pipeline *p)
{
    struct pipe_slot *s = NULL;
    pthread_mutex_lock(&p->lock);
    while (!p->stop && !p->free_list)
        pthread_cond_wait(&p->cond_free, &p->lock);
    if (!p->stop) {
        s = p->free_list;
        p->free_list = s->next;
        s->next = NULL;
        s->state = SLOT_READING;
        s->seq = p->seq_assign++;
        s->zero = s->failed = false;
        s->zlen = 0;
        s->level = 0;
        s->nbad = 0;
        p->order[s->seq % p->nslots] = s;
    }
    pthread_mutex_unlock(&p->lock);
    return s;
}

static void pipe_slot_free_locked(struct imager_pipeline *p, struct pipe_slot *s)
{
    s->state = SLOT_FREE;
    s->next = p->free_list;
    p->free_list = s;
    pthread_cond_signal(&p->cond_free);
}

/* ------------------------------------------------------------------ reading */

/* Program errors, not media errors: a sector read failing with these ends the pipeline
 * whatever skip_bad_sectors says. */
static bool pipe_errno_fatal(int e)
{
    return e == EBADF || e == EINVAL || e == EFAULT || e == EISDIR || e == ENOMEM;
}

static int pipe_slot_add_bad(struct imager_pipeline *p, struct pipe_slot *s, uint64_t off)
{
    if (s->nbad == s->bad_cap) {
        size_t cap = s->bad_cap ? s->bad_cap * 2 : 16;
        uint64_t *n = realloc(s->bad, cap * sizeof(*n));
        if (!n)
            return p2v_err_set(&s->err, ENOMEM, "out of memory listing bad sectors of '%s'",
                               p->path);
        s->bad = n;
        s->bad_cap = cap;
    }
    s->bad[s->nbad++] = off;
    return 0;
}

/* Read one slot's chunk: 1 + retries whole reads, then sector by sector. 0, or -1 with
 * s->err set (an unreadable sector without skip_bad_sectors, end of file, ...). */
static int pipe_read_chunk(struct imager_pipeline *p, struct pipe_slot *s)
{
    const uint64_t end = s->off + s->len;
    int e = 0;
    for (int t = 0; t <= p->retries; t++) {
        ssize_t r = p2v_pread_full(p->fd, s->data, s->len, s->off);
        if (r == (ssize_t)s->len)
            return 0;
        if (r >= 0)
            return p2v_err_set(&s->err, ENXIO,
                               "unexpected end of '%s' at offset %llu (the source is "
                               "shorter than %llu bytes)",
                               p->path, (unsigned long long)(s->off + (uint64_t)r),
                               (unsigned long long)p->disk_size);
        e = errno;
        if (pipe_errno_fatal(e))
            return p2v_err_set(&s->err, e, "cannot read %u bytes at offset %llu of '%s': %s",
                               s->len, (unsigned long long)s->off, p->path, strerror(e));
    }
    /* Sector pieces, aligned to the sector size in disk coordinates. */
    for (uint64_t pos = s->off; pos < end;) {
        /* a failing disk can take seconds a sector: let imager_pipeline_free() in */
        if (__atomic_load_n(&p->stop, __ATOMIC_RELAXED))
            return p2v_err_set(&s->err, ECANCELED, "reading '%s' stopped", p->path);
        uint64_t pend = pos - pos % p->sector_size + p->sector_size;
        if (pend > end)
            pend = end;
        size_t n = (size_t)(pend - pos);
        uint8_t *dst = s->data + (pos - s->off);
        ssize_t r = p2v_pread_full(p->fd, dst, n, pos);
        if (r >= 0 && (size_t)r < n)
            return p2v_err_set(&s->err, ENXIO,
                               "unexpected end of '%s' at offset %llu (the source is "
                               "shorter than %llu bytes)",
                               p->path, (unsigned long long)(pos + (uint64_t)r),
                               (unsigned long long)p->disk_size);
        if (r < 0) {
            e = errno;
            if (pipe_errno_fatal(e))
                return p2v_err_set(&s->err, e,
                                   "cannot read %zu bytes at offset %llu of '%s': %s", n,
                                   (unsigned long long)pos, p->path, strerror(e));
            if (!p->skip_bad)
                return p2v_err_set(&s->err, EIO,
                                   "unreadable sector at offset %llu of '%s': %s",
                                   (unsigned long long)pos, p->path, strerror(e));
            memset(dst, 0, n);
            if (pipe_slot_add_bad(p, s, pos) < 0)
                return -1;
        }
        pos = pend;
    }
    return 0;
}

/* Read a batch of contiguous chunks with one preadv, fall back to pipe_read_chunk for
 * what it did not deliver, and queue them for the workers. Returns -1 when the pipeline
 * must end here (a failed chunk, or stop): the slots after a failed one are released. */
static int pipe_read_batch(struct imager_pipeline *p, struct pipe_slot **batch, size_t nb)
{
    struct iovec iov[PIPE_BATCH_MAX];
    for (size_t i = 0; i < nb; i++) {
        iov[i].iov_base = batch[i]->data;
        iov[i].iov_len = batch[i]->len;
    }
    ssize_t r;
    do
        r = preadv(p->fd, iov, (int)nb, (off_t)batch[0]->off);
    while (r < 0 && errno == EINTR);
    uint64_t got = r > 0 ? (uint64_t)r : 0;

    size_t nfail = nb; /* index of the first failed chunk, nb when none */
    uint64_t nread = 0;
    for (size_t i = 0; i < nb; i++) {
        struct pipe_slot *s = batch[i];
        uint64_t rel = s->off - batch[0]->off;
        if (got < rel + s->len) {
            if (__atomic_load_n(&p->stop, __ATOMIC_RELAXED) || pipe_read_chunk(p, s) < 0) {
                nfail = i;
                break;
            }
        }
        nread += s->len;
    }
    __atomic_fetch_add(&p->bytes_read, nread, __ATOMIC_RELAXED);

    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < nb; i++) {
        struct pipe_slot *s = batch[i];
        if (i < nfail) {
            s->state = SLOT_QUEUED;
            if (p->work_tail)
                p->work_tail->next = s;
            else
                p->work_head = s;
            p->work_tail = s;
            pthread_cond_signal(&p->cond_work);
        } else if (i == nfail && !p->stop) {
            s->failed = true;
            s->state = SLOT_DONE;
            pthread_cond_signal(&p->cond_done);
        } else {
            pipe_slot_free_locked(p, s);
        }
    }
    if (nfail < nb) {
        /* hand out nothing past the failed chunk */
        p->end_seq = batch[nfail]->seq + 1;
        p->reader_done = true;
        pthread_cond_broadcast(&p->cond_work);
        pthread_cond_broadcast(&p->cond_done);
    }
    pthread_mutex_unlock(&p->lock);
    return nfail < nb ? -1 : 0;
}

/* True when [@pos, @end) lies wholly in a hole of the source file, so it reads as zeros.
 * The hole and the data run after @pos are found with SEEK_DATA and SEEK_HOLE and kept:
 * a run of data or of holes costs two lseeks, not two a chunk. A failing lseek (a file
 * system without them reports all data, which is never a hole) turns the probing off. */
static bool pipe_in_hole(struct imager_pipeline *p, uint64_t pos, uint64_t end)
{
    if (!p->sparse || end > p->file_size)
        return false;
    if (pos < p->h_from || pos >= p->h_data_end) {
        off_t d = lseek(p->fd, (off_t)pos, SEEK_DATA), h;
        if (d < 0 && errno == ENXIO) /* nothing but holes to the end */
            d = h = (off_t)p->file_size;
        else if (d < 0 || (h = lseek(p->fd, d, SEEK_HOLE)) < 0 || h < d) {
            p->sparse = false;
            return false;
        }
        p->h_from = pos;
        p->h_data = (uint64_t)d;
        p->h_data_end = P2V_MAX((uint64_t)h, pos + 1);
    }
    return end <= p->h_data;
}

/* Ask the kernel to read ahead the planned extents in the PIPE_PREFETCH bytes from (extent
 * @ei, offset @pos) that were not asked for yet (readahead is advice: errors are
 * ignored). */
static void pipe_prefetch(struct imager_pipeline *p, size_t ei, uint64_t pos)
{
    uint64_t left = PIPE_PREFETCH, rs = 0, re = 0; /* [rs, re): the range being built */
    for (size_t i = ei; i < p->count && left > 0; i++) {
        uint64_t a = i == ei ? pos : p->ext[i].off, b = p->ext[i].off + p->ext[i].len;
        if (a >= b)
            continue;
        uint64_t e = a + P2V_MIN(b - a, left);
        left -= e - a;
        a = P2V_MAX(a, p->pf_mark);
        if (a >= e)
            continue;
        if (re > rs && a - re > PIPE_PREFETCH_GAP) {
            (void)posix_fadvise(p->fd, (off_t)rs, (off_t)(re - rs), POSIX_FADV_WILLNEED);
            rs = re = 0;
        }
        if (re == rs)
            rs = a;
        re = e;
    }
    if (re > rs) {
        (void)posix_fadvise(p->fd, (off_t)rs, (off_t)(re - rs), POSIX_FADV_WILLNEED);
        p->pf_mark = re;
    }
}

/* Hand out the chunk in @s as zeros: it lies in a hole (pipe_in_hole); nothing to read or
 * hash. */
static void pipe_put_hole(struct imager_pipeline *p, struct pipe_slot *s)
{
    __atomic_fetch_add(&p->bytes_read, s->len, __ATOMIC_RELAXED);
    memset(s->hash, 0, sizeof(s->hash));
    s->zero = true;
    pthread_mutex_lock(&p->lock);
    s->state = SLOT_DONE;
    if (s->seq == p->next_seq)
        pthread_cond_signal(&p->cond_done);
    pthread_mutex_unlock(&p->lock);
}

static void *pipe_reader_main(void *arg)
{
    struct imager_pipeline *p = arg;
    struct pipe_slot *batch[PIPE_BATCH_MAX];
    size_t nb = 0, si = 0;
    uint64_t batch_end = 0;
    const uint64_t cs = p->chunk_size;

    if (p->count)
        pipe_prefetch(p, 0, p->ext[0].off);
    for (size_t ei = 0; ei < p->count; ei++) {
        uint64_t pos = p->ext[ei].off, end = p->ext[ei].off + p->ext[ei].len;
        while (pos < end) {
            /* validated: end <= disk_size, so the next boundary cannot overflow far */
            uint64_t cend = pos - pos % cs;
            if (P2V_ADD_OVERFLOW(cend, cs, &cend) || cend > end)
                cend = end;
            while (si < p->nskip && p->skip[si].off + p->skip[si].len <= pos)
                si++;
            if (si < p->nskip && p->skip[si].off <= pos &&
                cend <= p->skip[si].off + p->skip[si].len) {
                /* Wholly skipped: jump over every chunk up to the skip range's end. */
                uint64_t lim = P2V_MIN(p->skip[si].off + p->skip[si].len, end);
                uint64_t np = lim == end ? end : lim - lim % cs;
                if (np < cend)
                    np = cend;
                __atomic_fetch_add(&p->bytes_skipped, np - pos, __ATOMIC_RELAXED);
                pos = np;
                continue;
            }
            bool hole = pipe_in_hole(p, pos, cend);
            if (nb && (batch_end != pos || hole)) {
                pipe_prefetch(p, ei, pos);
                if (pipe_read_batch(p, batch, nb) < 0)
                    goto out;
                nb = 0;
            }
            struct pipe_slot *s = pipe_slot_take(p);
            if (!s)
                goto release;
            s->off = pos;
            s->len = (uint32_t)(cend - pos);
            if (hole) {
                pipe_put_hole(p, s);
                pos = cend;
                continue;
            }
            batch[nb++] = s;
            batch_end = cend;
            pos = cend;
            if (nb == p->batch_max || cend % PIPE_READ_MAX == 0) {
                pipe_prefetch(p, ei, pos);
                if (pipe_read_batch(p, batch, nb) < 0)
                    goto out;
                nb = 0;
            }
        }
    }
    if (nb && pipe_read_batch(p, batch, nb) < 0)
        goto out;
    nb = 0;

release:
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < nb; i++)
        pipe_slot_free_locked(p, batch[i]);
    if (!p->reader_done) {
        p->end_seq = p->seq_assign - nb;
        p->reader_done = true;
    }
    pthread_cond_broadcast(&p->cond_work);
    pthread_cond_broadcast(&p->cond_done);
    pthread_mutex_unlock(&p->lock);
out:
    return NULL;
}

/* ------------------------------------------------------------------ workers */

static void pipe_process(struct pipe_worker *w, struct pipe_slot *s)
{
    struct imager_pipeline *p = w->p;
    memset(s->hash, 0, sizeof(s->hash));
    s->zlen = 0;
    s->level = 0;
    s->zero = p2v_is_zero(s->data, s->len);
    if (s->zero)
        return;
    /* one read per chunk: the caller may change it meanwhile (adaptive pipelines) */
    const int level = __atomic_load_n(&p->level, __ATOMIC_RELAXED);
    s->level = level;
    if (w->dg && pipe_digest(w->dg, s->data, s->len, s->hash) < 0) {
        s->failed = true;
        p2v_err_set(&s->err, ENOMEM, "cannot hash %u bytes at offset %llu of '%s' (openssl)",
                    s->len, (unsigned long long)s->off, p->path);
        return;
    }
    if (level != 0 && w->cctx && !pipe_looks_random(s->data, s->len)) {
        size_t z = ZSTD_compressCCtx(w->cctx, s->zbuf, ZSTD_compressBound(s->len), s->data,
                                     s->len, level);
        /* a zstd failure is not fatal: the chunk goes out as it is */
        if (!ZSTD_isError(z) && z > 0 && z < s->len)
            s->zlen = z;
    }
}

static void *pipe_worker_main(void *arg)
{
    struct pipe_worker *w = arg;
    struct imager_pipeline *p = w->p;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (!p->stop && !p->work_head && !p->reader_done)
            pthread_cond_wait(&p->cond_work, &p->lock);
        if (p->stop || !p->work_head) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        struct pipe_slot *s = p->work_head;
        p->work_head = s->next;
        if (!p->work_head)
            p->work_tail = NULL;
        s->next = NULL;
        s->state = SLOT_WORKING;
        pthread_mutex_unlock(&p->lock);

        pipe_process(w, s);

        pthread_mutex_lock(&p->lock);
        s->state = SLOT_DONE;
        if (s->seq == p->next_seq)
            pthread_cond_signal(&p->cond_done);
        pthread_mutex_unlock(&p->lock);
    }
    return NULL;
}

/* ------------------------------------------------------------------ start / free */

bool imager_zstd_level_ok(int level)
{
    return level == 0 || (level >= ZSTD_minCLevel() && level <= ZSTD_maxCLevel());
}

int imager_zstd_min_level(void)
{
    return ZSTD_minCLevel();
}

int imager_pipeline_set_level(struct imager_pipeline *p, int level)
{
    if (!p || !p->adaptive || !imager_zstd_level_ok(level)) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store_n(&p->level, level, __ATOMIC_RELAXED);
    return 0;
}

int imager_pipeline_level(const struct imager_pipeline *p)
{
    return p ? __atomic_load_n(&p->level, __ATOMIC_RELAXED) : 0;
}

static int pipe_check_ranges(const char *path, const char *what,
                             const struct imager_extent *r, size_t n, uint64_t disk_size,
                             bool aligned, struct p2v_err *err)
{
    if (n && !r)
        return p2v_err_set(err, EINVAL, "'%s': %zu %s ranges given without an array", path,
                           n, what);
    for (size_t i = 0; i < n; i++) {
        uint64_t end;
        if (r[i].len == 0 || P2V_ADD_OVERFLOW(r[i].off, r[i].len, &end))
            return p2v_err_set(err, EINVAL,
                               "'%s': %s range %zu (offset %llu, length %llu) is empty or "
                               "overflows",
                               path, what, i, (unsigned long long)r[i].off,
                               (unsigned long long)r[i].len);
        if (i > 0 && r[i].off < r[i - 1].off + r[i - 1].len)
            return p2v_err_set(err, EINVAL,
                               "'%s': %s range %zu (offset %llu) is not sorted or overlaps "
                               "the one before",
                               path, what, i, (unsigned long long)r[i].off);
        if (aligned) {
            if (!p2v_range_ok(r[i].off, r[i].len, disk_size))
                return p2v_err_set(err, EINVAL,
                                   "'%s': %s range %zu (offset %llu, length %llu) lies "
                                   "outside the disk (%llu bytes)",
                                   path, what, i, (unsigned long long)r[i].off,
                                   (unsigned long long)r[i].len,
                                   (unsigned long long)disk_size);
            if (r[i].off % PIPE_ALIGN || (end % PIPE_ALIGN && end != disk_size))
                return p2v_err_set(err, EINVAL,
                                   "'%s': %s range %zu (offset %llu, length %llu) is not "
                                   "aligned to %u bytes",
                                   path, what, i, (unsigned long long)r[i].off,
                                   (unsigned long long)r[i].len, PIPE_ALIGN);
        }
    }
    return 0;
}

static uint32_t pipe_sector_size(int fd)
{
    struct stat st;
    int ss = 0;
    if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode) && ioctl(fd, BLKSSZGET, &ss) == 0 &&
        ss >= (int)PIPE_ALIGN && ss <= 65536 && p2v_is_pow2((uint64_t)ss))
        return (uint32_t)ss;
    return PIPE_ALIGN;
}

void imager_pipeline_free(struct imager_pipeline *p)
{
    if (!p)
        return;
    if (p->sync_ready) {
        pthread_mutex_lock(&p->lock);
        __atomic_store_n(&p->stop, true, __ATOMIC_RELAXED);
        pthread_cond_broadcast(&p->cond_free);
        pthread_cond_broadcast(&p->cond_work);
        pthread_cond_broadcast(&p->cond_done);
        pthread_mutex_unlock(&p->lock);
    }
    if (p->reader_started)
        pthread_join(p->reader, NULL);
    if (p->workers) {
        for (int i = 0; i < p->nworkers; i++) {
            struct pipe_worker *w = &p->workers[i];
            if (w->started)
                pthread_join(w->tid, NULL);
            p2v_digest_free(w->dg);
            ZSTD_freeCCtx(w->cctx);
        }
        free(p->workers);
    }
    if (p->slots) {
        for (size_t i = 0; i < p->nslots; i++) {
            free(p->slots[i].data);
            free(p->slots[i].zbuf);
            free(p->slots[i].bad);
        }
        free(p->slots);
    }
    if (p->sync_ready) {
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->cond_free);
        pthread_cond_destroy(&p->cond_work);
        pthread_cond_destroy(&p->cond_done);
    }
    free(p->order);
    free(p->bad);
    free(p->path);
    free(p);
}

struct imager_pipeline *imager_pipeline_start(const struct imager_pipeline_opts *opts,
                                              struct p2v_err *err)
{
    struct imager_pipeline *p = NULL, *ret = NULL;
    if (!opts)
        return p2v_err_set(err, EINVAL, "pipeline: no options"), NULL;
    const char *path = opts->path ? opts->path : "(source)";
    if (opts->fd < 0) {
        p2v_err_set(err, EBADF, "'%s': no open file descriptor", path);
        goto out;
    }
    uint32_t cs = opts->chunk_size ? opts->chunk_size : PIPE_CHUNK_DEFAULT;
    if (cs % PIPE_ALIGN || cs > PIPE_CHUNK_MAX) {
        p2v_err_set(err, EINVAL,
                    "'%s': chunk size %u is not a multiple of %u bytes up to %u bytes", path,
                    cs, PIPE_ALIGN, PIPE_CHUNK_MAX);
        goto out;
    }
    if (opts->threads < 0 || opts->threads > PIPE_THREADS_MAX) {
        p2v_err_set(err, EINVAL, "'%s': %d threads: give 0 (one per CPU) to %d", path,
                    opts->threads, PIPE_THREADS_MAX);
        goto out;
    }
    if (opts->hash != 0 && opts->hash != IMAGER_HASH_SHA256 &&
        opts->hash != IMAGER_HASH_BLAKE2B) {
        p2v_err_set(err, EINVAL, "'%s': unknown hash algorithm %d", path, (int)opts->hash);
        goto out;
    }
    if (!imager_zstd_level_ok(opts->zstd_level)) {
        p2v_err_set(err, EINVAL, "'%s': zstd level %d is outside %d..%d", path,
                    opts->zstd_level, ZSTD_minCLevel(), ZSTD_maxCLevel());
        goto out;
    }
    if (pipe_check_ranges(path, "extent", opts->ext, opts->count, opts->disk_size, true,
                          err) < 0 ||
        pipe_check_ranges(path, "skip", opts->skip, opts->nskip, opts->disk_size, false,
                          err) < 0)
        goto out;

    p = calloc(1, sizeof(*p));
    if (!p || !(p->path = strdup(path))) {
        p2v_err_set(err, ENOMEM, "'%s': out of memory starting the read pipeline", path);
        goto out;
    }
    p->fd = opts->fd;
    p->disk_size = opts->disk_size;
    p->ext = opts->ext;
    p->count = opts->count;
    p->skip = opts->skip;
    p->nskip = opts->nskip;
    p->chunk_size = cs;
    p->sector_size = pipe_sector_size(opts->fd);
    struct stat st;
    if (fstat(opts->fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        p->sparse = true;
        p->file_size = (uint64_t)st.st_size;
    }
    p->hash = opts->hash;
    p->level = opts->zstd_level;
    p->adaptive = opts->adaptive;
    p->retries = opts->retries < 0 ? 0 : opts->retries == 0 ? PIPE_RETRIES_DEFAULT
                                                             : opts->retries;
    p->skip_bad = opts->skip_bad_sectors;
    p->nworkers = opts->threads;
    if (p->nworkers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        p->nworkers = n < 1 ? 1 : n > PIPE_THREADS_AUTO_MAX ? PIPE_THREADS_AUTO_MAX : (int)n;
    }
    p->batch_max = P2V_MAX(1u, P2V_MIN(PIPE_BATCH_MAX, PIPE_READ_MAX / cs));
    /* a full batch for the reader, four per worker, and the one the caller holds */
    p->nslots = p->batch_max + (size_t)PIPE_SLOTS_PER_WORKER * (size_t)p->nworkers + 1;

    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        p2v_err_set(err, ENOMEM, "'%s': cannot create the pipeline's lock", path);
        goto out;
    }
    pthread_cond_init(&p->cond_free, NULL);
    pthread_cond_init(&p->cond_work, NULL);
    pthread_cond_init(&p->cond_done, NULL);
    p->sync_ready = true;

    p->slots = calloc(p->nslots, sizeof(*p->slots));
    p->order = calloc(p->nslots, sizeof(*p->order));
    p->workers = calloc((size_t)p->nworkers, sizeof(*p->workers));
    if (!p->slots || !p->order || !p->workers)
        goto nomem;
    size_t zcap = ZSTD_compressBound(cs);
    for (size_t i = 0; i < p->nslots; i++) {
        struct pipe_slot *s = &p->slots[i];
        void *d = NULL;
        if (posix_memalign(&d, 4096, cs) != 0)
            goto nomem;
        s->data = d;
        if ((p->level || p->adaptive) && !(s->zbuf = malloc(zcap)))
            goto nomem;
        s->next = p->free_list;
        p->free_list = s;
    }
    for (int i = 0; i < p->nworkers; i++) {
        struct pipe_worker *w = &p->workers[i];
        w->p = p;
        if (p->hash && !(w->dg = p2v_digest_new((enum p2v_hash_algo)p->hash))) {
            p2v_err_errno(err, "'%s': no %s digest", path,
                          p2v_hash_name((enum p2v_hash_algo)p->hash));
            goto out;
        }
        if ((p->level || p->adaptive) && !(w->cctx = ZSTD_createCCtx()))
            goto nomem;
    }

    int e;
    for (int i = 0; i < p->nworkers; i++) {
        struct pipe_worker *w = &p->workers[i];
        if ((e = pthread_create(&w->tid, NULL, pipe_worker_main, w)) != 0) {
            p2v_err_set(err, e, "'%s': cannot start a pipeline thread: %s", path,
                        strerror(e));
            goto out;
        }
        w->started = true;
    }
    if ((e = pthread_create(&p->reader, NULL, pipe_reader_main, p)) != 0) {
        p2v_err_set(err, e, "'%s': cannot start the pipeline's reader: %s", path,
                    strerror(e));
        goto out;
    }
    p->reader_started = true;
    /* advice only (a larger read-ahead on most kernels): its failure changes nothing */
    (void)posix_fadvise(p->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    ret = p;
    p = NULL;
    goto out;

nomem:
    p2v_err_set(err, ENOMEM, "'%s': out of memory for the read pipeline's %zu chunk buffers",
                path, p->nslots);
out:
    imager_pipeline_free(p);
    return ret;
}

/* ------------------------------------------------------------------ consumer */

static int pipe_bad_append(struct imager_pipeline *p, const struct pipe_slot *s)
{
    if (s->nbad > PIPE_BAD_MAX - p->nbad)
        return p2v_err_set(&p->fail, EIO,
                           "too many unreadable sectors in '%s' (more than %d, the last at "
                           "offset %llu)",
                           p->path, PIPE_BAD_MAX, (unsigned long long)s->bad[s->nbad - 1]);
    if (p->nbad + s->nbad > p->bad_cap) {
        size_t cap = p->bad_cap ? p->bad_cap : 64;
        while (cap < p->nbad + s->nbad)
            cap *= 2;
        uint64_t *n = realloc(p->bad, cap * sizeof(*n));
        if (!n)
            return p2v_err_set(&p->fail, ENOMEM, "out of memory listing bad sectors of '%s'",
                               p->path);
        p->bad = n;
        p->bad_cap = cap;
    }
    memcpy(p->bad + p->nbad, s->bad, s->nbad * sizeof(*s->bad));
    p->nbad += s->nbad;
    return 0;
}

int imager_pipeline_next(struct imager_pipeline *p, struct imager_chunk *c,
                         struct p2v_err *err)
{
    if (!p || !c)
        return p2v_err_set(err, EINVAL, "pipeline: no pipeline or chunk given");
    if (p->state > 0)
        return 0;
    if (p->state < 0)
        goto failed;

    pthread_mutex_lock(&p->lock);
    if (p->held) {
        pipe_slot_free_locked(p, p->held);
        p->held = NULL;
    }
    struct pipe_slot *s;
    for (;;) {
        if (p->reader_done && p->next_seq >= p->end_seq) {
            pthread_mutex_unlock(&p->lock);
            p->state = 1;
            return 0;
        }
        s = p->order[p->next_seq % p->nslots];
        if (s && s->seq == p->next_seq && s->state == SLOT_DONE)
            break;
        pthread_cond_wait(&p->cond_done, &p->lock);
    }
    p->next_seq++;
    s->state = SLOT_HELD;
    p->held = s;
    pthread_mutex_unlock(&p->lock);

    if (s->failed) {
        p->fail = s->err;
        p->state = -1;
        goto failed;
    }
    if (s->nbad && pipe_bad_append(p, s) < 0) {
        p->state = -1;
        goto failed;
    }
    c->off = s->off;
    c->len = s->len;
    c->zero = s->zero;
    memcpy(c->hash, s->hash, sizeof(c->hash));
    c->data = s->zero ? NULL : s->data;
    c->zdata = s->zlen ? s->zbuf : NULL;
    c->zlen = s->zlen;
    c->level = s->level;
    return 1;

failed:
    if (err)
        *err = p->fail;
    return -1;
}

uint64_t imager_pipeline_bytes_read(const struct imager_pipeline *p)
{
    if (!p)
        return 0;
    return __atomic_load_n(&p->bytes_read, __ATOMIC_RELAXED) +
           __atomic_load_n(&p->bytes_skipped, __ATOMIC_RELAXED);
}

uint64_t imager_pipeline_bytes_skipped(const struct imager_pipeline *p)
{
    return p ? __atomic_load_n(&p->bytes_skipped, __ATOMIC_RELAXED) : 0;
}

const uint64_t *imager_pipeline_bad_sectors(const struct imager_pipeline *p, size_t *n)
{
    if (n)
        *n = p ? p->nbad : 0;
    return p ? p->bad : NULL;
}
