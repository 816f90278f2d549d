/* qcow2-check.c: the consistency check of the qcow2 driver, done the way qemu-img check
 * does it: count the references to every host cluster — the header, the L1 and refcount
 * tables, the refcount blocks, the snapshot table and each snapshot's tables, persistent
 * bitmaps, the L2 tables and the data they map (compressed data by the sectors they span)
 * — then compare with the refcounts stored. A cluster referenced more often than its
 * refcount says is an error (it could be freed while in use); one whose refcount is
 * higher than its references is a leak (harmless: space lost). Entries that point past
 * the end of the file, malformed entries and copied flags that disagree with the
 * refcount are errors too.
 *
 * Memory: one 16-bit counter per host cluster of the file (saturating), as qemu keeps.
 * Work: every table walked is read once; budgets on the L2 tables walked and on the L1 and
 * bitmap table entries scanned (a few times what the file can hold) stop images whose
 * snapshots or bitmaps share tables from making the walk unbounded.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* Host clusters the check keeps a counter for: 2^28 (512 MiB of counters) covers a
 * 16 TiB file at 64 KiB clusters; past that we refuse rather than allocate. */
#define QCOW2_CHECK_CLUSTERS_MAX (UINT64_C(1) << 28)
/* Snapshot table entries carry at most this much extra data (qemu's limit). */
#define QCOW2_SNAPSHOT_EXTRA_MAX 1024u

struct chk {
    struct qcow2 *q;
    struct diskfmt_check *res;
    uint16_t *ref;       /* references counted, then (for the copied checks) refcounts */
    uint64_t ncl;        /* clusters of the file */
    uint64_t budget;     /* L2 tables that may still be walked */
    uint64_t entries;    /* L1 and bitmap table entries that may still be scanned */
    uint8_t *buf;        /* one cluster */
    uint8_t *buf2;       /* another */
};

static void chk_error(struct chk *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void chk_error(struct chk *c, const char *fmt, ...)
{
    c->res->errors++;
    if (c->res->errors == 1) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->res->first_error, sizeof c->res->first_error, fmt, ap);
        va_end(ap);
    }
}

/* One more reference to each cluster of [off, off + len). */
static void add_ref(struct chk *c, uint64_t off, uint64_t len, const char *what)
{
    struct qcow2 *q = c->q;
    if (len == 0)
        return;
    uint64_t first = off >> q->cb, last;
    if (P2V_ADD_OVERFLOW(off, len - 1, &last) || (last >> q->cb) >= c->ncl) {
        chk_error(c, "'%s': %s at offset %llu (%llu bytes) lies past the end of the file "
                  "(%llu bytes)", q->path, what, (unsigned long long)off,
                  (unsigned long long)len, (unsigned long long)q->file_size);
        return;
    }
    for (uint64_t i = first; i <= last >> q->cb; i++)
        if (c->ref[i] < UINT16_MAX)
            c->ref[i]++;
}

/* A cluster-aligned table entry: inside the file? */
static bool cluster_ok(struct chk *c, uint64_t off)
{
    return off % c->q->cs == 0 && (off >> c->q->cb) < c->ncl;
}

/* Walk one L2 table at @l2 (cluster-aligned, inside the file). @active: the table of the
 * active L1 (count data, check copied flags in the second pass). */
static int walk_l2(struct chk *c, uint64_t l2, bool active, bool copied_pass,
                   struct p2v_err *err)
{
    struct qcow2 *q = c->q;
    if (c->budget == 0)
        return p2v_err_set(err, E2BIG, "'%s': too many L2 tables to walk (snapshots share "
                           "them without bound); check stopped", q->path);
    c->budget--;
    if (qcow2_read_exact(q, c->buf, q->cs, l2, err) < 0)
        return -1;
    for (uint32_t i = 0; i < q->l.l2_entries; i++) {
        uint64_t e = p2v_get_u64be(c->buf + 8 * (size_t)i);
        struct qcow2_centry ce;
        const char *why = NULL;
        if (e == 0)
            continue;
        if (qcow2_l2_decode(e, q->cb, q->h.version, &ce, &why) < 0) {
            if (!copied_pass)
                chk_error(c, "'%s': L2 entry %u of the table at offset %llu %s (0x%016llx)",
                          q->path, i, (unsigned long long)l2, why, (unsigned long long)e);
            continue;
        }
        if (copied_pass) {
            if ((ce.type == QCOW2_NORMAL || ce.type == QCOW2_ZERO_ALLOC) &&
                (ce.off >> q->cb) < c->ncl && (c->ref[ce.off >> q->cb] == 1) != ce.copied)
                chk_error(c, "'%s': L2 entry %u of the table at offset %llu: the copied flag "
                          "is %s but the refcount of its cluster (offset %llu) is %u",
                          q->path, i, (unsigned long long)l2, ce.copied ? "set" : "clear",
                          (unsigned long long)ce.off, c->ref[ce.off >> q->cb]);
            continue;
        }
        switch (ce.type) {
        case QCOW2_NORMAL:
        case QCOW2_ZERO_ALLOC:
            if (ce.off < q->cs) {
                chk_error(c, "'%s': L2 entry %u of the table at offset %llu points into the "
                          "header", q->path, i, (unsigned long long)l2);
                break;
            }
            add_ref(c, ce.off, q->cs, "a data cluster");
            if (active && ce.type == QCOW2_NORMAL)
                c->res->allocated += q->cs;
            break;
        case QCOW2_COMPRESSED:
            if (ce.copied && active)
                chk_error(c, "'%s': compressed L2 entry %u of the table at offset %llu has "
                          "the copied flag", q->path, i, (unsigned long long)l2);
            if (ce.off < q->cs) {
                chk_error(c, "'%s': compressed L2 entry %u of the table at offset %llu points "
                          "into the header", q->path, i, (unsigned long long)l2);
                break;
            }
            /* the sectors the data span, as qemu counts them */
            add_ref(c, ce.off & ~(uint64_t)(QCOW2_SECTOR - 1), ce.nsec * QCOW2_SECTOR,
                    "compressed data");
            if (active)
                c->res->allocated += q->cs;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* Walk an L1 table held on disk at @off with @n entries. */
static int walk_l1(struct chk *c, uint64_t off, uint64_t n, bool active, bool copied_pass,
                   const char *what, struct p2v_err *err)
{
    struct qcow2 *q = c->q;
    uint64_t per = q->cs / 8;
    if (n > c->entries)
        return p2v_err_set(err, E2BIG, "'%s': too many table entries to scan (snapshots "
                           "share tables without bound); check stopped", q->path);
    c->entries -= n;
    for (uint64_t k = 0; k < n; k += per) {
        size_t m = (size_t)P2V_MIN(per, n - k);
        /* buf2 holds this slice of the L1 table; walk_l2 reads into buf */
        if (qcow2_read_exact(q, c->buf2, 8 * m, off + 8 * k, err) < 0)
            return -1;
        for (size_t i = 0; i < m; i++) {
            uint64_t e = p2v_get_u64be(c->buf2 + 8 * i), l2 = e & QCOW2_OFFSET_MASK;
            uint64_t idx = k + i;
            if (e == 0)
                continue;
            if (e & QCOW2_L1_RESERVED) {
                if (!copied_pass)
                    chk_error(c, "'%s': %s entry %llu has reserved bits set (0x%016llx)",
                              q->path, what, (unsigned long long)idx, (unsigned long long)e);
                continue;
            }
            if (l2 == 0)
                continue;
            if (!cluster_ok(c, l2) || l2 < q->cs) {
                if (!copied_pass)
                    chk_error(c, "'%s': %s entry %llu points to offset %llu, misaligned, in "
                              "the header or past the end of the file", q->path, what,
                              (unsigned long long)idx, (unsigned long long)l2);
                continue;
            }
            if (copied_pass && active && (c->ref[l2 >> q->cb] == 1) != ((e >> 63) != 0))
                chk_error(c, "'%s': %s entry %llu: the copied flag is %s but the refcount of "
                          "its L2 table (offset %llu) is %u", q->path, what,
                          (unsigned long long)idx, (e >> 63) ? "set" : "clear",
                          (unsigned long long)l2, c->ref[l2 >> q->cb]);
            if (!copied_pass)
                add_ref(c, l2, q->cs, "an L2 table");
            if ((!copied_pass || active) && walk_l2(c, l2, active, copied_pass, err) < 0)
                return -1;
        }
    }
    return 0;
}

/* Spec "Snapshots": the table, and each snapshot's L1 table and what it maps. */
static int walk_snapshots(struct chk *c, struct p2v_err *err)
{
    struct qcow2 *q = c->q;
    uint64_t pos = q->h.snapshots_offset;
    for (uint32_t s = 0; s < q->h.nb_snapshots; s++) {
        uint8_t e[40];
        if (!p2v_range_ok(pos, sizeof e, q->file_size) ||
            pos - q->h.snapshots_offset > QCOW2_SNAPSHOT_TABLE_MAX) {
            chk_error(c, "'%s': snapshot table entry %u at offset %llu lies past the end of "
                      "the file or of the table", q->path, s, (unsigned long long)pos);
            return 0;
        }
        if (qcow2_read_exact(q, e, sizeof e, pos, err) < 0)
            return -1;
        uint64_t l1off = p2v_get_u64be(e);
        uint32_t l1n = p2v_get_u32be(e + 8);
        uint16_t id_len = p2v_get_u16be(e + 12), name_len = p2v_get_u16be(e + 14);
        uint32_t extra = p2v_get_u32be(e + 36);
        if (extra > QCOW2_SNAPSHOT_EXTRA_MAX) {
            chk_error(c, "'%s': snapshot %u claims %u bytes of extra data", q->path, s,
                      extra);
            return 0;
        }
        pos += sizeof e + extra + id_len + name_len;
        pos = (pos + 7) & ~(uint64_t)7;
        if (l1n > QCOW2_L1_MAX_BYTES / 8 || !cluster_ok(c, l1off) ||
            !p2v_range_ok(l1off, 8 * (uint64_t)l1n, q->file_size)) {
            chk_error(c, "'%s': the L1 table of snapshot %u (%u entries at offset %llu) is "
                      "too large, misaligned or past the end of the file", q->path, s, l1n,
                      (unsigned long long)l1off);
            continue;
        }
        add_ref(c, l1off, 8 * (uint64_t)l1n, "a snapshot's L1 table");
        if (walk_l1(c, l1off, l1n, false, false, "snapshot L1", err) < 0)
            return -1;
    }
    add_ref(c, q->h.snapshots_offset, pos - q->h.snapshots_offset, "the snapshot table");
    return 0;
}

/* Spec "Bitmaps": the directory, each bitmap table and the clusters it names. */
static int walk_bitmaps(struct chk *c, struct p2v_err *err)
{
    struct qcow2 *q = c->q;
    uint64_t dir = q->h.bitmap_dir_offset, size = q->h.bitmap_dir_size;
    uint8_t *d = malloc(size ? (size_t)size : 1);
    int ret = -1;
    if (!d)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (qcow2_read_exact(q, d, (size_t)size, dir, err) < 0)
        goto out;
    add_ref(c, dir, size, "the bitmap directory");
    uint64_t pos = 0;
    for (uint32_t b = 0; b < q->h.nb_bitmaps; b++) {
        if (pos > size || size - pos < 24) {
            chk_error(c, "'%s': bitmap directory entry %u runs past the directory", q->path,
                      b);
            break;
        }
        uint64_t toff = p2v_get_u64be(d + pos);
        uint32_t tn = p2v_get_u32be(d + pos + 8);
        uint16_t name_len = p2v_get_u16be(d + pos + 18);
        uint32_t extra = p2v_get_u32be(d + pos + 20);
        if (extra > QCOW2_SNAPSHOT_EXTRA_MAX) {
            chk_error(c, "'%s': bitmap %u claims %u bytes of extra data", q->path, b, extra);
            break;
        }
        pos = (pos + 24 + extra + name_len + 7) & ~(uint64_t)7;
        if (tn > QCOW2_L1_MAX_BYTES / 8 || !cluster_ok(c, toff) ||
            !p2v_range_ok(toff, 8 * (uint64_t)tn, q->file_size)) {
            chk_error(c, "'%s': the table of bitmap %u (%u entries at offset %llu) is too "
                      "large, misaligned or past the end of the file", q->path, b, tn,
                      (unsigned long long)toff);
            continue;
        }
        add_ref(c, toff, 8 * (uint64_t)tn, "a bitmap table");
        if (tn > c->entries) {
            p2v_err_set(err, E2BIG, "'%s': too many bitmap table entries to scan; check "
                        "stopped", q->path);
            goto out;
        }
        c->entries -= tn;
        uint64_t per = q->cs / 8;
        for (uint64_t k = 0; k < tn; k += per) {
            size_t m = (size_t)P2V_MIN(per, (uint64_t)tn - k);
            if (qcow2_read_exact(q, c->buf2, 8 * m, toff + 8 * k, err) < 0)
                goto out;
            for (size_t i = 0; i < m; i++) {
                uint64_t data = p2v_get_u64be(c->buf2 + 8 * i) & QCOW2_OFFSET_MASK;
                if (data)
                    add_ref(c, data, q->cs, "a bitmap data cluster");
            }
        }
    }
    ret = 0;
out:
    free(d);
    return ret;
}

/* Compare the stored refcounts with the references counted; leave the stored values in
 * c->ref for the copied-flag pass. */
static int compare_refcounts(struct chk *c, struct p2v_err *err)
{
    struct qcow2 *q = c->q;
    uint64_t per_block = (uint64_t)q->cs * 8 / q->l.refcount_bits;
    uint64_t nblocks = (c->ncl + per_block - 1) / per_block;
    uint64_t reft_entries = q->l.reft_bytes / 8;
    for (uint64_t b = 0; b < nblocks; b++) {
        uint64_t blk = 0;
        if (b < reft_entries) {
            uint8_t e8[8];
            if (qcow2_read_exact(q, e8, 8, q->h.refcount_table_offset + 8 * b, err) < 0)
                return -1;
            blk = p2v_get_u64be(e8) & ~QCOW2_REFT_RESERVED;
        }
        bool have = blk && cluster_ok(c, blk);
        if (have && qcow2_read_exact(q, c->buf, q->cs, blk, err) < 0)
            return -1;
        for (uint64_t i = 0; i < per_block; i++) {
            uint64_t cl = b * per_block + i;
            if (cl >= c->ncl)
                break;
            uint64_t stored = have ? qcow2_refcount_get(c->buf, i, q->h.refcount_order) : 0;
            uint64_t counted = c->ref[cl];
            if (stored < counted)
                chk_error(c, "'%s': cluster %llu (offset %llu) has refcount %llu but is "
                          "referenced %llu times", q->path, (unsigned long long)cl,
                          (unsigned long long)(cl << q->cb), (unsigned long long)stored,
                          (unsigned long long)counted);
            else if (stored > counted && counted < UINT16_MAX)
                c->res->leaks++;
            c->ref[cl] = (uint16_t)P2V_MIN(stored, (uint64_t)UINT16_MAX);
        }
    }
    return 0;
}

int qcow2_check(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err)
{
    struct qcow2 *q = d->priv;
    struct chk c = {.q = q, .res = res};
    int ret = -1;
    if (q->w)
        return p2v_err_set(err, ENOTSUP, "'%s': cannot check a qcow2 image being written "
                           "(its refcounts are written at close)", d->path);
    c.ncl = (q->file_size + q->cs - 1) >> q->cb;
    if (c.ncl > QCOW2_CHECK_CLUSTERS_MAX)
        return p2v_err_set(err, EFBIG, "'%s': too large to check (%llu clusters)", d->path,
                           (unsigned long long)c.ncl);
    c.budget = 4 * c.ncl + 65536;
    /* the active L1 table is scanned twice; snapshots and bitmaps add what the file holds */
    c.entries = 2 * (uint64_t)q->h.l1_size + 4 * (q->file_size / 8) + 65536;
    c.ref = calloc(c.ncl ? c.ncl : 1, sizeof *c.ref);
    c.buf = malloc(q->cs);
    c.buf2 = malloc(q->cs);
    if (!c.ref || !c.buf || !c.buf2) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    add_ref(&c, 0, q->cs, "the header");
    add_ref(&c, q->h.l1_table_offset, q->l.l1_bytes, "the L1 table");
    add_ref(&c, q->h.refcount_table_offset, q->l.reft_bytes, "the refcount table");
    /* the refcount blocks */
    for (uint64_t b = 0; b < q->l.reft_bytes / 8; b++) {
        uint64_t per = q->cs / 8;
        if (b % per == 0 && qcow2_read_exact(q, c.buf2, q->cs,
                                             q->h.refcount_table_offset + 8 * b, err) < 0)
            goto out;
        uint64_t e = p2v_get_u64be(c.buf2 + 8 * (b % per));
        if (e == 0)
            continue;
        uint64_t blk = e & ~QCOW2_REFT_RESERVED;
        if ((e & QCOW2_REFT_RESERVED) || !cluster_ok(&c, blk) || blk < q->cs) {
            chk_error(&c, "'%s': refcount table entry %llu (0x%016llx) is malformed, points "
                      "into the header or past the end of the file", d->path,
                      (unsigned long long)b, (unsigned long long)e);
            continue;
        }
        add_ref(&c, blk, q->cs, "a refcount block");
    }
    if (q->h.nb_snapshots && walk_snapshots(&c, err) < 0)
        goto out;
    if (q->h.has_bitmaps && (q->h.autoclear & QCOW2_AUTOCLEAR_BITMAPS) &&
        walk_bitmaps(&c, err) < 0)
        goto out;
    if (walk_l1(&c, q->h.l1_table_offset, q->h.l1_size, true, false, "L1", err) < 0 ||
        compare_refcounts(&c, err) < 0 ||
        walk_l1(&c, q->h.l1_table_offset, q->h.l1_size, true, true, "L1", err) < 0)
        goto out;
    ret = 0;
out:
    free(c.ref);
    free(c.buf);
    free(c.buf2);
    return ret;
}
