/* plan.c: which bytes of a discovered disk to read.
 *
 * The disk is cut into regions: each partition (an MBR extended container is not one:
 * the logical partitions inside it are), and the spans outside every partition (boot
 * code, the tables, the EBRs of an extended container, gaps, the backup GPT). Outside
 * spans are read whole (runs of zeros are dropped later by the pipeline). A partition is
 * planned by its file system:
 *   ext2/3/4  the blocks set in the block bitmaps (libext2fs, read-only), plus the boot
 *             block and superblock;
 *   swap      its header page only (the page size is where the signature sits);
 *   ntfs      the clusters set in $Bitmap (ntfs.c) and the boot sectors;
 *   others    everything.
 * A file system that cannot be read (corrupt, an unknown feature, a journal that needs
 * replaying) is planned whole, with the reason in its region's note: the plan never fails
 * for a file system's sake. Extents are rounded outward to the disk's sector size, clipped
 * to the disk, sorted and merged.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <et/com_err.h>
#include <ext2fs/ext2_err.h>
#include <ext2fs/ext2fs.h>

#include "imager-int.h"

/* Swap: the header is one page; the signature ends the page, and pages of up to 64 KiB
 * exist (ppc64, arm64). */
#define PLAN_SWAP_PAGE_MIN 4096u
#define PLAN_SWAP_PAGE_MAX 65536u

/* ------------------------------------------------------------------ extent lists */

struct extvec {
    struct imager_extent *v;
    size_t n, cap;
    size_t region_first; /* the current region's first extent */
    uint64_t merge_gap;  /* runs of the current region closer than this join */
    uint64_t align;      /* the sector size: extents are rounded outward to it */
    uint64_t limit;      /* the disk size: extents are clipped to it */
};

/* A region's note: cut to fit, as notes quote messages of any length. */
__attribute__((format(printf, 3, 4))) static void notef(char *note, size_t cap,
                                                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(note, cap, fmt, ap);
    va_end(ap);
}

static int ext_cmp(const void *a, const void *b)
{
    const struct imager_extent *x = a, *y = b;
    return (x->off > y->off) - (x->off < y->off);
}

/* Sort and merge v[from..n), joining runs closer than @gap. */
static void extvec_merge(struct extvec *x, size_t from, uint64_t gap)
{
    size_t n = x->n - from, out = 0;
    struct imager_extent *v = x->v + from;
    if (n == 0)
        return;
    qsort(v, n, sizeof *v, ext_cmp);
    for (size_t i = 1; i < n; i++) {
        uint64_t end = v[out].off + v[out].len; /* <= limit: no overflow */
        if (v[i].off <= end || v[i].off - end <= gap) {
            uint64_t iend = v[i].off + v[i].len;
            if (iend > end)
                v[out].len = iend - v[out].off;
        } else {
            v[++out] = v[i];
        }
    }
    x->n = from + out + 1;
}

static int extvec_add(struct extvec *x, uint64_t off, uint64_t len)
{
    uint64_t end;
    if (len == 0 || off >= x->limit)
        return 0;
    if (P2V_ADD_OVERFLOW(off, len, &end) || end > x->limit)
        end = x->limit;
    off &= ~(x->align - 1);
    if (!p2v_align_up(end, x->align, &end) || end > x->limit)
        end = x->limit;
    if (x->n > x->region_first) {
        struct imager_extent *last = &x->v[x->n - 1];
        uint64_t lend = last->off + last->len;
        if (off >= last->off && (off <= lend || off - lend <= x->merge_gap)) {
            if (end > lend)
                last->len = end - last->off;
            return 0;
        }
    }
    if (x->n - x->region_first >= IMAGER_REGION_EXTENTS_MAX) {
        /* too fragmented to list run by run: join nearby runs, coarser until it fits */
        if (!x->merge_gap)
            x->merge_gap = IMAGER_COALESCE_GAP;
        do {
            extvec_merge(x, x->region_first, x->merge_gap);
            if (x->n - x->region_first > IMAGER_REGION_EXTENTS_MAX / 2)
                x->merge_gap *= 2;
        } while (x->n - x->region_first > IMAGER_REGION_EXTENTS_MAX / 2);
    }
    if (x->n == x->cap) {
        size_t ncap = x->cap ? x->cap * 2 : 256;
        struct imager_extent *nv = realloc(x->v, ncap * sizeof *nv);
        if (!nv)
            return -1;
        x->v = nv;
        x->cap = ncap;
    }
    x->v[x->n].off = off;
    x->v[x->n].len = end - off;
    x->n++;
    return 0;
}

static void extvec_region_begin(struct extvec *x)
{
    x->region_first = x->n;
    x->merge_gap = 0;
}

/* Close the region: sort and merge its extents; returns its bytes. */
static uint64_t extvec_region_end(struct extvec *x)
{
    uint64_t sum = 0;
    extvec_merge(x, x->region_first, x->merge_gap);
    for (size_t i = x->region_first; i < x->n; i++)
        sum += x->v[i].len;
    return sum;
}

static void extvec_region_drop(struct extvec *x)
{
    x->n = x->region_first;
    x->merge_gap = 0;
}

/* ------------------------------------------------------------------ readers */

int imager_fdreader_read(void *opaque, void *buf, size_t len, uint64_t off)
{
    const struct imager_fdreader *r = opaque;
    uint64_t at;
    if (!p2v_range_ok(off, len, r->size) || P2V_ADD_OVERFLOW(r->base, off, &at)) {
        errno = EINVAL;
        return -1;
    }
    ssize_t n = p2v_pread_full(r->fd, buf, len, at);
    if (n < 0)
        return -1;
    if ((size_t)n != len) {
        errno = EIO;
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ planning one region */

struct planner {
    const struct imager_disk *d;
    unsigned flags;     /* IMAGER_PLAN_* */
    int fd;
    struct extvec x;
    struct imager_plan_region *regions;
    size_t nregions, cap;
};

struct region_ctx {
    struct planner *pl;
    uint64_t base;  /* the region's offset on the disk */
    uint64_t added; /* bytes added, before rounding and joining */
};

static int region_add(void *opaque, uint64_t off, uint64_t len)
{
    struct region_ctx *c = opaque;
    uint64_t at;
    if (P2V_ADD_OVERFLOW(c->base, off, &at))
        return -1;
    c->added += len;
    return extvec_add(&c->pl->x, at, len);
}

static const char *ext2_message(errcode_t rc)
{
    if (rc > 0 && rc < 256)
        return strerror((int)rc);
    const struct error_table *t = &et_ext2_error_table;
    if (rc >= t->base && rc < t->base + t->n_msgs)
        return t->msgs[rc - t->base];
    return "unknown libext2fs error";
}

/* ext2/3/4: the blocks set in the block bitmaps. 0, or -1 with @note saying why. */
static int plan_ext(struct planner *pl, uint64_t off, uint64_t size, const char *fstype,
                    char *note, size_t note_cap)
{
    int ret = -1;
    ext2_filsys fs = NULL;
    char opts[64];
    struct region_ctx c = {pl, off, 0};
    errcode_t rc;

    snprintf(opts, sizeof opts, "offset=%llu", (unsigned long long)off);
    /* read-only (no EXT2_FLAG_RW): libext2fs opens the device O_RDONLY */
    rc = ext2fs_open2(pl->d->path, opts, EXT2_FLAG_64BITS | EXT2_FLAG_SKIP_MMP, 0, 0,
                      unix_io_manager, &fs);
    if (rc) {
        notef(note, note_cap, "%s unreadable (%s): read all", fstype, ext2_message(rc));
        fs = NULL;
        goto out;
    }
    /* Blocks allocated in journal transactions not yet replayed are free in the on-disk
     * bitmaps but used once the journal is replayed: such a file system is read whole.
     * A mounted one always says so; a live capture's passes before the freeze take its
     * bitmaps as they are (the final pass, under the freeze, finds the journal flushed and
     * the flag cleared, so its plan is exact). */
    if (ext2fs_has_feature_journal_needs_recovery(fs->super) &&
        !(pl->flags & IMAGER_PLAN_LIVE)) {
        notef(note, note_cap, "%s: journal needs recovery: read all", fstype);
        goto out;
    }
    blk64_t blocks = ext2fs_blocks_count(fs->super);
    uint64_t bs = fs->blocksize, fs_bytes;
    if (P2V_MUL_OVERFLOW((uint64_t)blocks, bs, &fs_bytes) || fs_bytes > size) {
        notef(note, note_cap, "%s: larger than its partition: read all", fstype);
        goto out;
    }
    if ((rc = ext2fs_read_block_bitmap(fs))) {
        notef(note, note_cap, "%s: bitmaps unreadable (%s): read all", fstype,
              ext2_message(rc));
        goto out;
    }
    /* the boot block and the primary superblock, whatever the block size */
    if (region_add(&c, 0, 2048) < 0)
        goto nomem;
    uint64_t used = 0;
    blk64_t start = fs->super->s_first_data_block, last = blocks - 1;
    while (blocks && start <= last) {
        blk64_t s, z;
        rc = ext2fs_find_first_set_block_bitmap2(fs->block_map, start, last, &s);
        if (rc == ENOENT)
            break;
        if (rc) {
            notef(note, note_cap, "%s: bitmap walk failed (%s): read all", fstype,
                  ext2_message(rc));
            goto out;
        }
        rc = ext2fs_find_first_zero_block_bitmap2(fs->block_map, s, last, &z);
        if (rc == ENOENT)
            z = last + 1;
        else if (rc) {
            notef(note, note_cap, "%s: bitmap walk failed (%s): read all", fstype,
                  ext2_message(rc));
            goto out;
        }
        if (region_add(&c, (uint64_t)s * bs, (uint64_t)(z - s) * bs) < 0)
            goto nomem;
        used += z - s;
        start = z;
    }
    notef(note, note_cap, "%s: %llu of %llu blocks used", fstype, (unsigned long long)used,
          (unsigned long long)blocks);
    ret = 0;
    goto out;
nomem:
    notef(note, note_cap, "%s: out of memory: read all", fstype);
out:
    if (fs)
        ext2fs_close_free(&fs);
    return ret;
}

/* swap: the header page, whose size is where the signature ends it. */
static int plan_swap(struct planner *pl, uint64_t off, uint64_t size, char *note,
                     size_t note_cap)
{
    size_t len = (size_t)P2V_MIN(size, (uint64_t)PLAN_SWAP_PAGE_MAX);
    uint8_t *buf = malloc(len ? len : 1);
    struct imager_fdreader r = {pl->fd, off, size};
    struct region_ctx c = {pl, off, 0};
    uint64_t page = P2V_MIN(size, (uint64_t)PLAN_SWAP_PAGE_MIN);
    int ret = -1;

    if (!buf) {
        notef(note, note_cap, "swap: out of memory: read all");
        return -1;
    }
    if (imager_fdreader_read(&r, buf, len, 0) < 0) {
        notef(note, note_cap, "swap: header unreadable (%s): read all", strerror(errno));
        goto out;
    }
    for (size_t ps = PLAN_SWAP_PAGE_MIN; ps <= len; ps *= 2) {
        if (memcmp(buf + ps - 10, "SWAPSPACE2", 10) == 0 ||
            memcmp(buf + ps - 10, "SWAP-SPACE", 10) == 0) {
            page = ps;
            break;
        }
    }
    if (region_add(&c, 0, page) < 0) {
        notef(note, note_cap, "swap: out of memory: read all");
        goto out;
    }
    notef(note, note_cap, "swap: header page of %llu bytes", (unsigned long long)page);
    ret = 0;
out:
    free(buf);
    return ret;
}

static int plan_ntfs(struct planner *pl, uint64_t off, uint64_t size, char *note,
                     size_t note_cap)
{
    struct imager_fdreader r = {pl->fd, off, size};
    struct region_ctx c = {pl, off, 0};
    struct p2v_err e = {0};
    char a[32], b[32];

    if (imager_ntfs_used(imager_fdreader_read, &r, size, region_add, &c, &e) < 0) {
        notef(note, note_cap, "%s: read all", e.msg);
        return -1;
    }
    notef(note, note_cap, "ntfs: %s of %s in use", p2v_format_size(c.added, a, sizeof a),
          p2v_format_size(size, b, sizeof b));
    return 0;
}

static struct imager_plan_region *region_new(struct planner *pl)
{
    if (pl->nregions == pl->cap) {
        size_t ncap = pl->cap ? pl->cap * 2 : 16;
        struct imager_plan_region *nr = realloc(pl->regions, ncap * sizeof *nr);
        if (!nr)
            return NULL;
        pl->regions = nr;
        pl->cap = ncap;
    }
    struct imager_plan_region *r = &pl->regions[pl->nregions++];
    memset(r, 0, sizeof *r);
    return r;
}

/* Plan [start, start + size) by the kind of its content. */
static int plan_region(struct planner *pl, int part, uint64_t start, uint64_t size,
                       const char *fstype, enum imager_region_kind outside_kind,
                       const char *outside_note, struct p2v_err *err)
{
    struct imager_plan_region *r = region_new(pl);
    if (!r)
        return p2v_err_set(err, ENOMEM, "out of memory");
    r->part = part;
    r->start = start;
    r->size = size;
    extvec_region_begin(&pl->x);

    bool whole = false; /* read the region whole */
    if (!fstype) {
        r->kind = outside_kind;
        notef(r->note, sizeof r->note, "%s", outside_note);
        whole = true;
    } else if (!strcmp(fstype, "ext2") || !strcmp(fstype, "ext3") || !strcmp(fstype, "ext4")) {
        r->kind = IMAGER_REGION_EXT;
        whole = plan_ext(pl, start, size, fstype, r->note, sizeof r->note) < 0;
    } else if (!strcmp(fstype, "swap")) {
        r->kind = IMAGER_REGION_SWAP;
        whole = plan_swap(pl, start, size, r->note, sizeof r->note) < 0;
    } else if (!strcmp(fstype, "ntfs")) {
        r->kind = IMAGER_REGION_NTFS;
        whole = plan_ntfs(pl, start, size, r->note, sizeof r->note) < 0;
    } else {
        r->kind = IMAGER_REGION_ALL;
        if (fstype[0])
            notef(r->note, sizeof r->note, "%s: not parsed: read all", fstype);
        else
            notef(r->note, sizeof r->note, "no file system recognized: read all");
        whole = true;
    }
    if (whole) {
        /* a file system that could not be planned is read whole (its note says why) */
        if (fstype)
            r->kind = IMAGER_REGION_ALL;
        extvec_region_drop(&pl->x);
        if (extvec_add(&pl->x, start, size) < 0)
            return p2v_err_set(err, ENOMEM, "out of memory");
    }
    if (pl->x.merge_gap) {
        size_t n = strlen(r->note);
        notef(r->note + n, sizeof r->note - n, " (fragmented: nearby runs joined)");
    }
    r->planned = extvec_region_end(&pl->x);
    return 0;
}

struct span {
    uint64_t start, end;
    int index; /* into d->parts */
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->start != y->start)
        return (x->start > y->start) - (x->start < y->start);
    return (x->end > y->end) - (x->end < y->end);
}

/* The note of an outside span: what it holds, as far as the table tells. */
static void outside_note(const struct imager_disk *d, uint64_t start, uint64_t end, char *note,
                         size_t cap)
{
    for (int i = 0; i < d->nparts; i++) {
        const struct imager_part *p = &d->parts[i];
        if (p->extended && start >= p->start && start - p->start < p->size) {
            notef(note, cap, "inside extended partition %d (EBRs)", p->number);
            return;
        }
    }
    if (start == 0)
        notef(note, cap, "partition table and boot area");
    else if (end == d->size)
        notef(note, cap, "unpartitioned space at the end%s",
              strcmp(d->pttype, "gpt") == 0 ? " (backup GPT)" : "");
    else
        notef(note, cap, "gap between partitions");
}

static int plan_partitions(struct planner *pl, struct p2v_err *err)
{
    const struct imager_disk *d = pl->d;
    struct span spans[IMAGER_PARTS_MAX];
    size_t n = 0;
    char note[96];

    for (int i = 0; i < d->nparts && i < IMAGER_PARTS_MAX; i++) {
        const struct imager_part *p = &d->parts[i];
        if (p->extended || p->size == 0 || p->start >= d->size)
            continue;
        spans[n].start = p->start;
        spans[n].end = p->start + P2V_MIN(p->size, d->size - p->start);
        spans[n].index = i;
        n++;
    }
    qsort(spans, n, sizeof spans[0], span_cmp);
    uint64_t cursor = 0;
    for (size_t i = 0; i < n; i++) {
        const struct imager_part *p = &d->parts[spans[i].index];
        if (spans[i].start > cursor) {
            outside_note(d, cursor, spans[i].start, note, sizeof note);
            if (plan_region(pl, 0, cursor, spans[i].start - cursor, NULL,
                            IMAGER_REGION_OUTSIDE, note, err) < 0)
                return -1;
        }
        if (plan_region(pl, p->number, spans[i].start, spans[i].end - spans[i].start,
                        p->fstype, IMAGER_REGION_ALL, "", err) < 0)
            return -1;
        cursor = P2V_MAX(cursor, spans[i].end);
    }
    if (cursor < d->size) {
        if (n == 0)
            notef(note, sizeof note, "%s partition table with no readable partition",
                  d->pttype);
        else
            outside_note(d, cursor, d->size, note, sizeof note);
        if (plan_region(pl, 0, cursor, d->size - cursor, NULL, IMAGER_REGION_OUTSIDE, note,
                        err) < 0)
            return -1;
    }
    return 0;
}

int imager_plan(const struct imager_disk *d, bool all_blocks, struct imager_plan *plan,
                struct p2v_err *err)
{
    return imager_plan_flags(d, all_blocks ? IMAGER_PLAN_ALL_BLOCKS : 0, plan, err);
}

int imager_plan_flags(const struct imager_disk *d, unsigned flags, struct imager_plan *plan,
                      struct p2v_err *err)
{
    int ret = -1;
    uint32_t sector = d->sector_size ? d->sector_size : 512;
    const bool all_blocks = flags & IMAGER_PLAN_ALL_BLOCKS;
    struct planner pl = {.d = d, .flags = flags, .fd = -1};

    if (!p2v_is_pow2(sector))
        return p2v_err_set(err, EINVAL, "'%s': bad sector size %u", d->path, sector);
    pl.x.align = sector;
    pl.x.limit = d->size;
    if (!all_blocks && (pl.fd = open(d->path, O_RDONLY | O_CLOEXEC)) < 0)
        return p2v_err_errno(err, "cannot open '%s'", d->path);

    if (all_blocks) {
        if (plan_region(&pl, 0, 0, d->size, NULL, IMAGER_REGION_ALL, "all blocks requested",
                        err) < 0)
            goto out;
    } else if (d->nparts == 0 && !d->pttype[0]) {
        if (plan_region(&pl, 0, 0, d->size, d->whole_fstype, IMAGER_REGION_ALL, "", err) < 0)
            goto out;
    } else if (plan_partitions(&pl, err) < 0) {
        goto out;
    }
    /* regions do not overlap unless partitions do, or sector rounding made them touch */
    extvec_merge(&pl.x, 0, 0);

    uint64_t bytes = 0;
    for (size_t i = 0; i < pl.x.n; i++)
        bytes += pl.x.v[i].len;
    if (pl.x.n && pl.x.n < pl.x.cap) {
        struct imager_extent *shrunk = realloc(pl.x.v, pl.x.n * sizeof *shrunk);
        if (shrunk)
            pl.x.v = shrunk;
    }
    plan->ext = pl.x.v;
    plan->count = pl.x.n;
    plan->bytes = bytes;
    plan->regions = pl.regions;
    plan->nregions = pl.nregions;
    pl.x.v = NULL;
    pl.regions = NULL;
    ret = 0;
out:
    if (pl.fd >= 0)
        close(pl.fd);
    free(pl.x.v);
    free(pl.regions);
    return ret;
}

void imager_plan_release(struct imager_plan *plan)
{
    if (!plan)
        return;
    free(plan->ext);
    free(plan->regions);
    memset(plan, 0, sizeof *plan);
}

const char *imager_region_kind_name(enum imager_region_kind k)
{
    switch (k) {
    case IMAGER_REGION_OUTSIDE: return "outside";
    case IMAGER_REGION_EXT: return "ext";
    case IMAGER_REGION_SWAP: return "swap";
    case IMAGER_REGION_NTFS: return "ntfs";
    case IMAGER_REGION_ALL: return "all";
    }
    return "unknown";
}
