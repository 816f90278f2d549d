/* qcow2.c: the qcow2 driver of libdiskfmt (QEMU's docs/interop/qcow2.txt, "the spec").
 *
 * Reads versions 2 and 3 as qemu-img writes them: L1/L2 tables, standard, zero (with or
 * without a preallocated host cluster) and compressed clusters (zlib raw deflate, zstd),
 * header extensions skipped, cluster sizes 512 bytes to 2 MiB. Refuses, each with its own
 * message: encryption, backing files, external data files, extended L2 entries, unknown
 * incompatible features, and a dirty image (a writer died) unless DISKFMT_ALLOW_DIRTY.
 * Writes version 3 images (qcow2-write.c); checks them like qemu-img check
 * (qcow2-check.c). Existing images are opened read-only: we convert, never patch (the
 * one exception: an image our writer left incomplete is resumed, see qcow2-write.c).
 *
 * Untrusted bytes are parsed by qcow2-parse.c; this file does the I/O and checks every
 * offset before using it: the L1 table once at open (every L2 table aligned, inside the
 * file, clear of the header, the L1 and refcount tables, and of each other — so that the
 * work a reader does is bounded by the file's size, not by what a header claims), and
 * each L2 entry when it is used (inside the file, not into metadata).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2.h"

/* L2 tables cached: 32 at 64 KiB clusters (2 MiB), fewer for larger clusters so that
 * the cache stays within 8 MiB whatever the disk size (a 2 MiB table maps 512 GiB). */
#define QCOW2_CACHE_BYTES (8u << 20)
#define QCOW2_CACHE_MAX 32u
#define QCOW2_CACHE_MIN 4u
/* The largest zstd window a compressed cluster may ask for: a cluster is at most 2 MiB,
 * so a frame that wants more is hostile; this bounds the decoder's memory. */
#define QCOW2_ZSTD_WINDOW_LOG_MAX 25

/* ------------------------------------------------------------------ helpers */

int qcow2_read_exact(struct qcow2 *q, void *buf, size_t len, uint64_t off,
                     struct p2v_err *err)
{
    ssize_t n = p2v_pread_full(q->fd, buf, len, off);
    if (n < 0)
        return p2v_err_errno(err, "'%s': read error at offset %llu", q->path,
                             (unsigned long long)off);
    if ((size_t)n < len)
        return p2v_err_set(err, EIO, "'%s': unexpected end of file at offset %llu", q->path,
                           (unsigned long long)(off + (uint64_t)n));
    return 0;
}

int qcow2_write_exact(struct qcow2 *q, const void *buf, size_t len, uint64_t off,
                      struct p2v_err *err)
{
    if (p2v_pwrite_full(q->fd, buf, len, off) < 0)
        return p2v_err_errno(err, "'%s': write error at offset %llu", q->path,
                             (unsigned long long)off);
    return 0;
}

void qcow2_free(struct qcow2 *q)
{
    if (!q)
        return;
    if (q->w)
        qcow2_w_free(q->w);
    free(q->l1);
    free(q->l2_sorted);
    free(q->slots);
    free(q->slot_mem);
    free(q->tbuf);
    free(q->cbuf);
    free(q->dbuf);
    if (q->zin) {
        inflateEnd(q->zin);
        free(q->zin);
    }
    if (q->zd)
        ZSTD_freeDCtx(q->zd);
    if (q->fd >= 0)
        close(q->fd);
    free(q);
}

int qcow2_alloc_state(struct qcow2 *q, struct p2v_err *err)
{
    q->l1 = calloc(q->h.l1_size ? q->h.l1_size : 1, sizeof *q->l1);
    q->nslots = (unsigned)P2V_MAX(QCOW2_CACHE_MIN, P2V_MIN(QCOW2_CACHE_MAX,
                                                           QCOW2_CACHE_BYTES / q->cs));
    q->slots = calloc(q->nslots, sizeof *q->slots);
    q->slot_mem = malloc((size_t)q->nslots * q->cs);
    q->tbuf = malloc(q->cs);
    if (!q->l1 || !q->slots || !q->slot_mem || !q->tbuf)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (unsigned i = 0; i < q->nslots; i++)
        q->slots[i].e = q->slot_mem + (size_t)i * q->l.l2_entries;
    return 0;
}

/* ------------------------------------------------------------------ L2 cache */

int qcow2_table_write(struct qcow2 *q, const uint64_t *e, size_t n, uint64_t off,
                      struct p2v_err *err)
{
    /* through tbuf, one cluster at a time (the L1 table may span many) */
    size_t per = q->cs / 8;
    for (size_t i = 0; i < n; i += per) {
        size_t k = P2V_MIN(per, n - i);
        for (size_t j = 0; j < k; j++)
            p2v_put_u64be(q->tbuf + 8 * j, e[i + j]);
        if (qcow2_write_exact(q, q->tbuf, 8 * k, off + 8 * (uint64_t)i, err) < 0)
            return -1;
    }
    return 0;
}

static int slot_writeback(struct qcow2 *q, struct qcow2_l2slot *s, struct p2v_err *err)
{
    uint64_t off = q->l1[s->l1i] & QCOW2_OFFSET_MASK;
    if (qcow2_table_write(q, s->e, q->l.l2_entries, off, err) < 0)
        return -1;
    s->dirty = false;
    return 0;
}

int qcow2_l2_flush_all(struct qcow2 *q, struct p2v_err *err)
{
    for (unsigned i = 0; i < q->nslots; i++) {
        struct qcow2_l2slot *s = &q->slots[i];
        if (s->valid && s->dirty && slot_writeback(q, s, err) < 0)
            return -1;
    }
    return 0;
}

int qcow2_l2_get(struct qcow2 *q, uint64_t l1i, bool alloc, struct qcow2_l2slot **out,
                 struct p2v_err *err)
{
    uint64_t l2off = q->l1[l1i] & QCOW2_OFFSET_MASK;
    *out = NULL;
    if (!l2off && !alloc)
        return 0;
    struct qcow2_l2slot *s = &q->slots[q->last];
    if (s->valid && s->l1i == l1i) {
        s->used = ++q->tick;
        *out = s;
        return 0;
    }
    unsigned victim = 0;
    uint64_t oldest = UINT64_MAX;
    for (unsigned i = 0; i < q->nslots; i++) {
        s = &q->slots[i];
        if (s->valid && s->l1i == l1i) {
            s->used = ++q->tick;
            q->last = i;
            *out = s;
            return 0;
        }
        uint64_t age = s->valid ? s->used : 0;
        if (age < oldest) {
            oldest = age;
            victim = i;
        }
    }
    s = &q->slots[victim];
    if (s->valid && s->dirty && slot_writeback(q, s, err) < 0)
        return -1;
    s->valid = false;
    if (!l2off) {
        if (qcow2_w_alloc_table(q, l1i, err) < 0)
            return -1;
        memset(s->e, 0, q->cs);
        s->dirty = true;
    } else {
        if (qcow2_read_exact(q, q->tbuf, q->cs, l2off, err) < 0) {
            p2v_err_prefix(err, "L2 table of L1 entry %llu", (unsigned long long)l1i);
            return -1;
        }
        for (uint32_t i = 0; i < q->l.l2_entries; i++)
            s->e[i] = p2v_get_u64be(q->tbuf + 8 * (size_t)i);
        s->dirty = false;
    }
    s->l1i = l1i;
    s->valid = true;
    s->used = ++q->tick;
    q->last = victim;
    *out = s;
    return 0;
}

/* ------------------------------------------------------------------ entries */

/* Which metadata the host range [off, off+len) touches, or NULL. */
static const char *meta_hit(const struct qcow2 *q, uint64_t off, uint64_t len)
{
    if (off < q->cs)
        return "header";
    for (unsigned i = 0; i < q->n_meta; i++) {
        const struct qcow2_region *m = &q->meta[i];
        if (m->len && off < m->start + m->len && m->start < off + len)
            return m->what;
    }
    /* the L2 tables: the last one starting at or before the range's end */
    size_t lo = 0, hi = q->n_l2;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (q->l2_sorted[mid] < off + len)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && q->l2_sorted[lo - 1] + q->cs > off)
        return "an L2 table";
    return NULL;
}

/* The decoded, checked L2 entry of guest cluster @gc. */
static int entry_at(struct qcow2 *q, uint64_t gc, struct qcow2_centry *c,
                    struct p2v_err *err)
{
    uint64_t l1i = gc / q->l.l2_entries;
    uint32_t idx = (uint32_t)(gc % q->l.l2_entries);
    struct qcow2_l2slot *s;
    if (qcow2_l2_get(q, l1i, false, &s, err) < 0)
        return -1;
    if (!s) {
        memset(c, 0, sizeof *c);
        c->type = QCOW2_UNALLOCATED;
        return 0;
    }
    uint64_t e = s->e[idx];
    uint64_t l2off = q->l1[l1i] & QCOW2_OFFSET_MASK;
    uint64_t guest = gc << q->cb;
    const char *why = NULL;
    if (qcow2_l2_decode(e, q->cb, q->h.version, c, &why) < 0)
        return p2v_err_set(err, EINVAL, "'%s': L2 entry %u of the table at offset %llu "
                           "(guest offset %llu) %s (0x%016llx)", q->path, idx,
                           (unsigned long long)l2off, (unsigned long long)guest, why,
                           (unsigned long long)e);
    if (q->w)
        return 0; /* our own tables, being written */
    if (c->type != QCOW2_NORMAL && c->type != QCOW2_COMPRESSED)
        return 0; /* nothing is read from a zero cluster's preallocation */
    const char *hit = meta_hit(q, c->off, c->type == QCOW2_NORMAL ? q->cs : 1);
    if (hit)
        return p2v_err_set(err, EINVAL, "'%s': L2 entry %u of the table at offset %llu "
                           "(guest offset %llu) points into the %s (host offset %llu)",
                           q->path, idx, (unsigned long long)l2off,
                           (unsigned long long)guest, hit, (unsigned long long)c->off);
    if (c->off >= q->file_size)
        return p2v_err_set(err, EINVAL, "'%s': L2 entry %u of the table at offset %llu "
                           "(guest offset %llu) points past the end of the file (host "
                           "offset %llu, file of %llu bytes)", q->path, idx,
                           (unsigned long long)l2off, (unsigned long long)guest,
                           (unsigned long long)c->off, (unsigned long long)q->file_size);
    return 0;
}

/* ------------------------------------------------------------------ reading */

static int inflate_cluster(struct qcow2 *q, size_t in_len, uint64_t where,
                           struct p2v_err *err)
{
    z_stream *z = q->zin;
    if (!z) {
        z = calloc(1, sizeof *z);
        /* raw deflate (qemu writes window bits -12; the widest window reads them all) */
        if (!z || inflateInit2(z, -15) != Z_OK) {
            free(z);
            return p2v_err_set(err, ENOMEM, "cannot initialise zlib");
        }
        q->zin = z;
    }
    inflateReset(z);
    z->next_in = q->cbuf;
    z->avail_in = (uInt)in_len;
    z->next_out = q->dbuf;
    z->avail_out = q->cs;
    int zr = inflate(z, Z_FINISH);
    /* as qemu: a full cluster out is success; what follows it in the last sector is
     * another cluster's data or padding */
    if (z->avail_out == 0 && (zr == Z_STREAM_END || zr == Z_OK || zr == Z_BUF_ERROR))
        return 0;
    if (zr == Z_STREAM_END)
        return p2v_err_set(err, EINVAL, "'%s': compressed cluster at offset %llu inflates "
                           "to %lu bytes, less than a cluster (%u)", q->path,
                           (unsigned long long)where, (unsigned long)z->total_out, q->cs);
    return p2v_err_set(err, EINVAL, "'%s': compressed cluster at offset %llu is corrupt "
                       "(%s)", q->path, (unsigned long long)where,
                       zr == Z_BUF_ERROR ? "truncated deflate stream"
                       : z->msg         ? z->msg
                                        : "inflate failed");
}

static int unzstd_cluster(struct qcow2 *q, size_t in_len, uint64_t where,
                          struct p2v_err *err)
{
    if (!q->zd) {
        q->zd = ZSTD_createDCtx();
        if (!q->zd)
            return p2v_err_set(err, ENOMEM, "cannot initialise zstd");
        ZSTD_DCtx_setParameter(q->zd, ZSTD_d_windowLogMax, QCOW2_ZSTD_WINDOW_LOG_MAX);
    }
    ZSTD_DCtx_reset(q->zd, ZSTD_reset_session_only);
    ZSTD_inBuffer in = {q->cbuf, in_len, 0};
    ZSTD_outBuffer out = {q->dbuf, q->cs, 0};
    size_t zr = 1;
    /* as qemu: the data may be several frames; every step must make progress (the
     * input is finite, so this ends), and the cluster must end a frame */
    while (out.pos < out.size) {
        size_t in0 = in.pos, out0 = out.pos;
        zr = ZSTD_decompressStream(q->zd, &out, &in);
        if (ZSTD_isError(zr))
            return p2v_err_set(err, EINVAL, "'%s': compressed cluster at offset %llu is "
                               "corrupt (zstd: %s)", q->path, (unsigned long long)where,
                               ZSTD_getErrorName(zr));
        if (in.pos == in0 && out.pos == out0)
            return p2v_err_set(err, EINVAL, "'%s': compressed cluster at offset %llu is "
                               "truncated (zstd data end after %zu of %u bytes)", q->path,
                               (unsigned long long)where, out.pos, q->cs);
    }
    if (zr != 0)
        return p2v_err_set(err, EINVAL, "'%s': compressed cluster at offset %llu "
                           "decompresses to more than a cluster (%u bytes)", q->path,
                           (unsigned long long)where, q->cs);
    return 0;
}

/* Read and decompress the compressed cluster @c into q->dbuf. */
static int load_compressed(struct qcow2 *q, const struct qcow2_centry *c,
                           struct p2v_err *err)
{
    if (q->dbuf_ok && q->dbuf_host == c->off)
        return 0;
    q->dbuf_ok = false;
    /* spec "Compressed Clusters Descriptor": from the offset to the end of its last
     * sector; at most two clusters by the field's width. The file may end inside that
     * sector. */
    size_t len = (size_t)(c->nsec * QCOW2_SECTOR - (c->off % QCOW2_SECTOR));
    len = (size_t)P2V_MIN((uint64_t)len, q->file_size - c->off);
    if (!q->dbuf && !(q->dbuf = malloc(q->cs)))
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (q->cbuf_cap < len) {
        uint8_t *p = realloc(q->cbuf, len);
        if (!p)
            return p2v_err_set(err, ENOMEM, "out of memory");
        q->cbuf = p;
        q->cbuf_cap = len;
    }
    if (qcow2_read_exact(q, q->cbuf, len, c->off, err) < 0)
        return -1;
    int r = q->h.compression_type == QCOW2_COMPRESSION_ZSTD
                ? unzstd_cluster(q, len, c->off, err)
                : inflate_cluster(q, len, c->off, err);
    if (r < 0)
        return -1;
    q->dbuf_ok = true;
    q->dbuf_host = c->off;
    return 0;
}

static int qcow2_pread(struct diskfmt *d, void *buf, size_t len, uint64_t off,
                       struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    uint8_t *p = buf;
    if (q->w && qcow2_w_settle(q, err) < 0)
        return -1;
    while (len) {
        uint64_t gc = off >> q->cb;
        size_t in = (size_t)(off & (q->cs - 1));
        size_t n = P2V_MIN(len, (size_t)q->cs - in);
        struct qcow2_centry c;
        if (entry_at(q, gc, &c, err) < 0)
            return -1;
        switch (c.type) {
        case QCOW2_UNALLOCATED:
        case QCOW2_ZERO_PLAIN:
        case QCOW2_ZERO_ALLOC:
            memset(p, 0, n);
            break;
        case QCOW2_COMPRESSED:
            if (load_compressed(q, &c, err) < 0)
                return -1;
            memcpy(p, q->dbuf + in, n);
            break;
        case QCOW2_NORMAL: {
            /* extend over the following clusters stored right after this one: one read
             * (qemu-img and our writer lay data out in guest order) */
            uint64_t host = c.off;
            while (n < len) {
                struct qcow2_centry nc;
                if (entry_at(q, gc + (in + n) / q->cs, &nc, err) < 0)
                    return -1;
                if (nc.type != QCOW2_NORMAL || nc.off != host + in + n)
                    break;
                n += P2V_MIN(len - n, (size_t)q->cs);
            }
            uint64_t at = host + in;
            ssize_t r = p2v_pread_full(q->fd, p, n, at);
            if (r < 0)
                return p2v_err_errno(err, "'%s': read error at offset %llu", q->path,
                                     (unsigned long long)at);
            /* a last cluster that a writer extended only in part: the rest reads as
             * zeros, as for qemu (its start was checked to lie inside the file) */
            memset(p + r, 0, n - (size_t)r);
            break;
        }
        }
        p += n;
        len -= n;
        off += n;
    }
    return 0;
}

static unsigned status_of(enum qcow2_ctype t)
{
    switch (t) {
    case QCOW2_UNALLOCATED:
        return DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
    case QCOW2_ZERO_PLAIN:
    case QCOW2_ZERO_ALLOC:
        return DISKFMT_STATUS_ZERO;
    default:
        return 0;
    }
}

static int qcow2_block_status(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                              unsigned *flags, struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    uint64_t done = 0;
    unsigned f0 = 0;
    if (q->w && qcow2_w_settle(q, err) < 0)
        return -1;
    while (done < len) {
        uint64_t cur = off + done;
        uint64_t gc = cur >> q->cb;
        uint64_t l1i = gc / q->l.l2_entries;
        uint64_t step;
        unsigned f;
        if ((q->l1[l1i] & QCOW2_OFFSET_MASK) == 0) {
            /* no L2 table: its whole span is unallocated */
            f = DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
            step = q->l.l2_span - cur % q->l.l2_span;
        } else {
            struct qcow2_centry c;
            if (entry_at(q, gc, &c, err) < 0)
                return -1;
            f = status_of(c.type);
            step = q->cs - (cur & (q->cs - 1));
        }
        if (done == 0)
            f0 = f;
        else if (f != f0)
            break;
        done += P2V_MIN(len - done, step);
    }
    *run = done;
    *flags = f0;
    return 0;
}

/* ------------------------------------------------------------------ opening */

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Read the active L1 table and check each L2 table it names, once: aligned, inside the
 * file, clear of the header, the L1 and refcount tables, and of each other. */
static int load_l1(struct qcow2 *q, struct p2v_err *err)
{
    uint64_t n = q->h.l1_size;
    size_t k = 0;
    if (n == 0)
        return 0;
    uint8_t *raw = malloc((size_t)q->l.l1_bytes);
    int ret = -1;
    if (!raw)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (qcow2_read_exact(q, raw, (size_t)q->l.l1_bytes, q->h.l1_table_offset, err) < 0)
        goto out;
    q->l2_sorted = malloc((size_t)(q->l.l1_needed ? q->l.l1_needed : 1) * sizeof(uint64_t));
    if (!q->l2_sorted) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t e = p2v_get_u64be(raw + 8 * i);
        uint64_t at = q->h.l1_table_offset + 8 * i;
        /* entries past the virtual size (a snapshot's VM state) are never read */
        if (i >= q->l.l1_needed)
            continue;
        if (e & QCOW2_L1_RESERVED) {
            p2v_err_set(err, EINVAL, "'%s': L1 entry %llu (offset %llu) has reserved bits "
                        "set (0x%016llx)", q->path, (unsigned long long)i,
                        (unsigned long long)at, (unsigned long long)e);
            goto out;
        }
        uint64_t l2 = e & QCOW2_OFFSET_MASK;
        if (l2 == 0)
            continue;
        const char *what = NULL;
        if (l2 % q->cs)
            what = "to an offset not aligned to the cluster size";
        else if (!p2v_range_ok(l2, q->cs, q->file_size))
            what = "past the end of the file";
        if (!what) {
            const char *hit = meta_hit(q, l2, q->cs);
            if (hit) {
                p2v_err_set(err, EINVAL, "'%s': L1 entry %llu (offset %llu) points into the "
                            "%s (L2 table at offset %llu)", q->path, (unsigned long long)i,
                            (unsigned long long)at, hit, (unsigned long long)l2);
                goto out;
            }
        }
        if (what) {
            p2v_err_set(err, EINVAL, "'%s': L1 entry %llu (offset %llu) points %s (L2 table "
                        "at offset %llu, file of %llu bytes)", q->path, (unsigned long long)i,
                        (unsigned long long)at, what, (unsigned long long)l2,
                        (unsigned long long)q->file_size);
            goto out;
        }
        q->l1[i] = e;
        q->l2_sorted[k++] = l2;
    }
    /* meta_hit consults the list only once it is sorted */
    qsort(q->l2_sorted, k, sizeof *q->l2_sorted, u64_cmp);
    q->n_l2 = k;
    for (size_t i = 1; i < q->n_l2; i++)
        if (q->l2_sorted[i] == q->l2_sorted[i - 1]) {
            /* aligned tables of one cluster overlap only when equal; a table shared
             * would let a small file describe unbounded work */
            p2v_err_set(err, EINVAL, "'%s': two L1 entries share the L2 table at offset "
                        "%llu", q->path, (unsigned long long)q->l2_sorted[i]);
            goto out;
        }
    ret = 0;
out:
    free(raw);
    return ret;
}

static int qcow2_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                       uint64_t file_size)
{
    if (head_len < 8 || p2v_get_u32be(head) != QCOW2_MAGIC)
        return 0;
    uint32_t v = p2v_get_u32be(head + 4);
    /* other versions are still ours to refuse, with a message better than raw's */
    return v == 2 || v == 3 ? 100 : 60;
}

/* Open q->path with @oflags (O_RDONLY or O_RDWR), set q->fd and q->file_size. Regular
 * files, and block devices when @allow_blk. */
int qcow2_open_file(struct qcow2 *q, int oflags, bool allow_blk, struct p2v_err *err)
{
    q->fd = open(q->path, oflags | O_CLOEXEC);
    if (q->fd < 0)
        return p2v_err_errno(err, "cannot open '%s'", q->path);
    struct stat st;
    if (fstat(q->fd, &st) < 0)
        return p2v_err_errno(err, "cannot stat '%s'", q->path);
    if (allow_blk && S_ISBLK(st.st_mode)) {
        off_t end = lseek(q->fd, 0, SEEK_END);
        q->file_size = end > 0 ? (uint64_t)end : 0;
    } else if (S_ISREG(st.st_mode)) {
        q->file_size = (uint64_t)st.st_size;
    } else {
        return p2v_err_set(err, EINVAL, allow_blk ?
                           "'%s' is neither a regular file nor a block device" :
                           "'%s' is not a regular file", q->path);
    }
    return 0;
}

/* Read the header cluster (its first bytes say how large it is; at most the file) into a
 * buffer the caller frees. */
int qcow2_read_header_cluster(struct qcow2 *q, uint8_t **out, size_t *out_len,
                              struct p2v_err *err)
{
    size_t hlen = (size_t)P2V_MIN(q->file_size, (uint64_t)4096);
    uint8_t *head = malloc(4096);
    if (!head)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (qcow2_read_exact(q, head, hlen, 0, err) < 0)
        goto fail;
    if (hlen >= 24) {
        uint32_t cb = p2v_get_u32be(head + 20);
        if (cb > 12 && cb <= QCOW2_CLUSTER_BITS_MAX) {
            size_t want = (size_t)P2V_MIN(q->file_size, (uint64_t)1 << cb);
            uint8_t *p = realloc(head, want);
            if (!p) {
                p2v_err_set(err, ENOMEM, "out of memory");
                goto fail;
            }
            head = p;
            if (qcow2_read_exact(q, head + hlen, want - hlen, hlen, err) < 0)
                goto fail;
            hlen = want;
        }
    }
    *out = head;
    *out_len = hlen;
    return 0;
fail:
    free(head);
    return -1;
}

static int qcow2_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    if (flags & DISKFMT_RDWR)
        return p2v_err_set(err, ENOTSUP, "'%s': existing qcow2 images are opened read-only "
                           "(convert into a new image to change one)", d->path);
    struct qcow2 *q = calloc(1, sizeof *q);
    uint8_t *head = NULL;
    int ret = -1;
    if (!q)
        return p2v_err_set(err, ENOMEM, "out of memory");
    q->path = d->path;
    size_t hlen;
    if (qcow2_open_file(q, O_RDONLY, true, err) < 0 ||
        qcow2_read_header_cluster(q, &head, &hlen, err) < 0)
        goto out;
    if (qcow2_header_parse(head, hlen, d->path, &q->h, err) < 0)
        goto out;
    if ((q->h.incompatible & QCOW2_INCOMPAT_DIRTY) && !(flags & DISKFMT_ALLOW_DIRTY)) {
        p2v_err_set(err, EINVAL, "'%s': the image is incomplete: its dirty bit is set "
                    "(incompatible feature bit 0), so a writer died before finishing it or "
                    "still has it open, and its metadata cannot be trusted; allow dirty "
                    "images to read it anyway", d->path);
        goto out;
    }
    if ((q->h.incompatible & QCOW2_INCOMPAT_CORRUPT) && !(flags & DISKFMT_ALLOW_DIRTY)) {
        p2v_err_set(err, EINVAL, "'%s': the image is marked corrupt (incompatible feature "
                    "bit 1): qemu found its metadata inconsistent; repair a copy with "
                    "qemu-img check -r all, or allow dirty images to read it anyway",
                    d->path);
        goto out;
    }
    if (qcow2_layout_check(&q->h, q->file_size, d->path, &q->l, err) < 0)
        goto out;
    q->cb = q->h.cluster_bits;
    q->cs = q->l.cluster_size;
    q->meta[q->n_meta++] = (struct qcow2_region){q->h.l1_table_offset, q->l.l1_bytes,
                                                 "L1 table"};
    q->meta[q->n_meta++] = (struct qcow2_region){q->h.refcount_table_offset,
                                                 q->l.reft_bytes, "refcount table"};
    if (qcow2_alloc_state(q, err) < 0 || load_l1(q, err) < 0)
        goto out;
    d->size = q->h.size;
    d->block_size = q->cs;
    d->priv = q;
    q = NULL;
    ret = 0;
out:
    free(head);
    qcow2_free(q);
    return ret;
}

/* ------------------------------------------------------------------ the rest */

static int qcow2_flush(struct diskfmt *d, struct p2v_err *err)
{
    return qcow2_w_flush(d, err);
}

static int qcow2_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    int ret = 0;
    if (!q)
        return 0;
    if (q->w) {
        ret = qcow2_w_close(q, finish, err);
        q->w = NULL;
    }
    qcow2_free(q);
    d->priv = NULL;
    return ret;
}

static int qcow2_info(struct diskfmt *d, struct p2v_json *j, struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    p2v_json_kv_u64(j, "cluster-size", q->cs);
    p2v_json_kv_u64(j, "qcow2-version", q->h.version);
    p2v_json_kv_string(j, "compat", q->h.version == 2 ? "0.10" : "1.1");
    p2v_json_kv_string(j, "compression-type",
                       q->h.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    if (q->w)
        p2v_json_kv_string(j, "compressed-writes", qcow2_w_compression(q));
    p2v_json_kv_bool(j, "dirty", (q->h.incompatible & QCOW2_INCOMPAT_DIRTY) != 0);
    p2v_json_kv_bool(j, "corrupt", (q->h.incompatible & QCOW2_INCOMPAT_CORRUPT) != 0);
    p2v_json_kv_bool(j, "lazy-refcounts",
                     (q->h.compatible & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
    p2v_json_kv_u64(j, "refcount-bits", q->l.refcount_bits);
    p2v_json_kv_u64(j, "l1-size", q->h.l1_size);
    p2v_json_kv_u64(j, "snapshots", q->h.nb_snapshots);
    p2v_json_kv_bool(j, "bitmaps", q->h.has_bitmaps);
    return 0;
}

const struct diskfmt_ops diskfmt_qcow2_ops = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .create = qcow2_create,
    .pread = qcow2_pread,
    .pwrite = qcow2_w_pwrite,
    .zero = qcow2_w_zero,
    .block_status = qcow2_block_status,
    .flush = qcow2_flush,
    .close = qcow2_close,
    .info = qcow2_info,
    .check = qcow2_check,
    .checkpoint = qcow2_w_checkpoint,
    .resume = qcow2_resume,
};
