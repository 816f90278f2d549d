/* vmdk.c: the VMDK driver of libdiskfmt (VMware "Virtual Disk Format 1.1", VDF below).
 *
 * Reads monolithicSparse and streamOptimized files (a sparse extent header with an
 * embedded descriptor: VDF "Hosted Sparse Extents", "Stream-Optimized Compressed Sparse
 * Extents"), and text descriptors (VDF "The Descriptor File") naming FLAT / VMFS /
 * SPARSE / ZERO extents: monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat and the
 * like.
 * Writes monolithicSparse (grain tables allocated on demand, grains appended, a bounded
 * grain table cache, the header's uncleanShutdown byte set while open), streamOptimized
 * (vmdk-stream.c) and monolithicFlat (the descriptor written last, at close).
 *
 * Untrusted bytes (headers, descriptors, tables, markers) are parsed from memory by
 * vmdk-parse.c; this file does the I/O and checks every offset against the file before
 * using it. Extent names are plain names opened relative to the descriptor's folder.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fallocate, O_DIRECTORY, strndup (the build defines it too) */
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "diskfmt-int.h"
#include "vmdk.h"

/* Grain tables cached in memory, shared by all extents: 256 x 2 KiB = 512 KiB whatever
 * the disk size (a 2 TiB disk has 65536 tables). */
#define VMDK_GT_CACHE 256u
/* Size of the descriptor area we reserve in sparse files: 20 sectors, as qemu and
 * VMware do (10 KiB holds far more than our one-extent descriptor). */
#define VMDK_DESC_SECTORS 20u
/* Default grain: VDF "Hosted Sparse Extents" recommends 128 sectors (64 KiB). */
#define VMDK_DEFAULT_GRAIN (64u * 1024)
#define VMDK_GRAIN_MIN 4096u
/* Largest disk we create: a sparse extent's grain table entries are 32-bit sectors
 * (2 TiB of file); flat extents are only bound by the disk cap. */
#define VMDK_SPARSE_CREATE_MAX (UINT64_C(1) << 41)
/* Intervals the overlap check of `check` keeps in memory (16 bytes each, 64 MiB): enough
 * for 256 GiB of allocated 64 KiB grains; larger images skip the overlap test. */
#define VMDK_CHECK_INTERVALS_MAX (1u << 22)
/* zlib level for compressible grains and compression threads (see vmdk-stream.c for
 * the measurements); a build may override them to measure again. */
#ifndef VMDK_STREAM_LEVEL
#define VMDK_STREAM_LEVEL 1
#endif
#ifndef VMDK_STREAM_THREADS
#define VMDK_STREAM_THREADS 2u
#endif

/* A metadata region of a sparse extent, in sectors. */
struct region {
    uint64_t start, count;
    const char *what;
};

struct sparse {
    struct vmdk_header h; /* the effective header (the footer for a stream) */
    struct vmdk_layout l;
    bool compressed;
    bool zero_gte;
    bool has_rgd;
    bool footer;          /* the tables came from a stream footer */
    uint32_t *gd;         /* host order; 0: no grain table */
    uint32_t *rgd;        /* NULL without a redundant directory */
    struct region meta[4];
    unsigned n_meta;
    bool gd_dirty;
    uint64_t alloc;       /* writer: next free sector */
    bool unclean_set;     /* writer: we set uncleanShutdown */
};

struct extent {
    enum vmdk_ext_type type;
    enum vmdk_access access;
    char type_name[16];
    char *path;           /* for messages: the folder joined with the name */
    char *name;           /* as in the descriptor */
    int fd;               /* -1 for ZERO */
    bool own_fd;
    uint64_t vstart, vsize;
    uint64_t flat_off;    /* FLAT: bytes */
    uint64_t file_size;
    struct sparse *sp;
};

struct gt_slot {
    size_t ext;
    uint32_t gt;
    bool valid, dirty;
    uint64_t used;
    uint32_t *e;
};

enum wmode { W_NONE, W_SPARSE, W_STREAM, W_FLAT_CREATE, W_FLAT };

struct vmdk {
    int fd;               /* the file at d->path */
    int dirfd;            /* its folder */
    char *dir;
    char create_type[64];
    char adapter[32];
    char hw_version[16];
    uint32_t cid;
    bool has_cid;
    bool monolithic;      /* one sparse file, descriptor embedded */
    size_t n_ext;
    struct extent *ext;

    struct gt_slot slots[VMDK_GT_CACHE];
    uint32_t *slot_mem;
    uint64_t tick;
    size_t last;

    uint8_t *gbuf;        /* one decompressed grain */
    size_t gbuf_ext;
    uint64_t gbuf_grain;
    bool gbuf_ok;
    uint8_t *cbuf;        /* its compressed bytes */
    size_t cbuf_cap;
    z_stream zin;
    bool zin_ok;
    uint8_t *tmp;         /* a grain for partial writes */
    size_t tmp_cap;

    enum wmode wmode;
    struct vmdk_stream *st;
    uint64_t capacity;    /* sectors, creating */
};

/* ------------------------------------------------------------------ helpers */

static char *join_path(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static const char *base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}



static uint64_t sectors_of(uint64_t bytes)
{
    return bytes / VMDK_SECTOR + (bytes % VMDK_SECTOR ? 1 : 0);
}

static bool overlaps(uint64_t a, uint64_t an, uint64_t b, uint64_t bn)
{
    return a < b + bn && b < a + an;
}

static void sparse_free(struct sparse *sp)
{
    if (!sp)
        return;
    free(sp->gd);
    free(sp->rgd);
    free(sp);
}

static void vmdk_free(struct vmdk *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n_ext; i++) {
        struct extent *e = &v->ext[i];
        if (e->own_fd && e->fd >= 0)
            close(e->fd);
        free(e->path);
        free(e->name);
        sparse_free(e->sp);
    }
    free(v->ext);
    free(v->slot_mem);
    free(v->gbuf);
    free(v->cbuf);
    free(v->tmp);
    if (v->zin_ok)
        inflateEnd(&v->zin);
    if (v->fd >= 0)
        close(v->fd);
    if (v->dirfd >= 0)
        close(v->dirfd);
    free(v->dir);
    free(v);
}

static struct vmdk *vmdk_new(const char *path, struct p2v_err *err)
{
    struct vmdk *v = calloc(1, sizeof *v);
    if (!v) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    v->fd = v->dirfd = -1;
    v->dir = dir_of(path);
    v->slot_mem = calloc(VMDK_GT_CACHE, VMDK_GTES_MAX * sizeof(uint32_t));
    if (!v->dir || !v->slot_mem) {
        vmdk_free(v);
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    for (unsigned i = 0; i < VMDK_GT_CACHE; i++)
        v->slots[i].e = v->slot_mem + (size_t)i * VMDK_GTES_MAX;
    v->dirfd = open(v->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (v->dirfd < 0) {
        p2v_err_errno(err, "cannot open the folder '%s'", v->dir);
        vmdk_free(v);
        return NULL;
    }
    return v;
}

static int grow_tmp(struct vmdk *v, size_t n, struct p2v_err *err)
{
    if (v->tmp_cap >= n)
        return 0;
    uint8_t *p = realloc(v->tmp, n);
    if (!p)
        return p2v_err_set(err, ENOMEM, "out of memory");
    v->tmp = p;
    v->tmp_cap = n;
    return 0;
}

/* ------------------------------------------------------------------ sparse extents */

/* Load a table of @n little-endian u32 at @sector into @out (host order). */
static int read_table(int fd, const char *path, uint64_t sector, uint32_t n, uint32_t *out,
                      struct p2v_err *err)
{
    size_t bytes = (size_t)n * 4;
    uint8_t *raw = malloc(bytes ? bytes : 1);
    struct p2v_rd r;
    int ret = -1;
    if (!raw)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (diskfmt_read_exact(fd, raw, bytes, sector * VMDK_SECTOR, path, err) < 0)
        goto out;
    p2v_rd_init(&r, raw, bytes);
    for (uint32_t i = 0; i < n; i++)
        if (p2v_rd_u32le(&r, &out[i]) < 0)
            abort(); /* the buffer holds exactly n entries */
    ret = 0;
out:
    free(raw);
    return ret;
}

static int write_table(int fd, const char *path, uint64_t sector, uint32_t n,
                       uint64_t sectors, const uint32_t *in, struct p2v_err *err)
{
    size_t bytes = (size_t)(sectors * VMDK_SECTOR);
    uint8_t *raw = calloc(1, bytes);
    if (!raw)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++)
        p2v_put_u32le(raw + 4 * (size_t)i, in[i]);
    int r = diskfmt_write_exact(fd, raw, bytes, sector * VMDK_SECTOR, path, err);
    free(raw);
    return r;
}

static int meta_add(struct sparse *sp, uint64_t start, uint64_t count, const char *what,
                    uint64_t file_sectors, const char *path, struct p2v_err *err)
{
    if (!p2v_range_ok(start, count, file_sectors))
        return p2v_err_set(err, EINVAL, "'%s': %s at sector %llu (%llu sectors) lies "
                           "outside the file (%llu sectors)", path, what,
                           (unsigned long long)start, (unsigned long long)count,
                           (unsigned long long)file_sectors);
    for (unsigned i = 0; i < sp->n_meta; i++)
        if (overlaps(start, count, sp->meta[i].start, sp->meta[i].count))
            return p2v_err_set(err, EINVAL, "'%s': %s at sector %llu overlaps the %s at "
                               "sector %llu", path, what, (unsigned long long)start,
                               sp->meta[i].what, (unsigned long long)sp->meta[i].start);
    sp->meta[sp->n_meta].start = start;
    sp->meta[sp->n_meta].count = count;
    sp->meta[sp->n_meta].what = what;
    sp->n_meta++;
    return 0;
}

/* Which metadata region [start, start+count) touches, or NULL. */
static const char *meta_hit(const struct sparse *sp, uint64_t start, uint64_t count)
{
    for (unsigned i = 0; i < sp->n_meta; i++)
        if (overlaps(start, count, sp->meta[i].start, sp->meta[i].count))
            return sp->meta[i].what;
    return NULL;
}

/* VDF "Stream-Optimized Compressed Sparse Extents": a stream-optimized extent whose
 * header says VMDK_GD_AT_END keeps its real header in the footer: footer marker, footer,
 * end-of-stream marker, the file's last three sectors. Without them the writer did not
 * finish. */
static int read_footer(int fd, const char *path, uint64_t file_size, struct vmdk_header *h,
                       struct p2v_err *err)
{
    uint8_t buf[1536];
    struct vmdk_marker fm, eos;
    uint64_t end = file_size & ~(uint64_t)(VMDK_SECTOR - 1);
    if (end < 4 * VMDK_SECTOR)
        return p2v_err_set(err, EINVAL, "'%s': streamOptimized image of %llu bytes is "
                           "truncated: no footer and end-of-stream marker", path,
                           (unsigned long long)file_size);
    uint64_t at = end - sizeof buf;
    if (diskfmt_read_exact(fd, buf, sizeof buf, at, path, err) < 0)
        return -1;
    if (vmdk_marker_parse(buf, 512, &fm) < 0 || fm.size != 0 ||
        fm.type != VMDK_MARKER_FOOTER || vmdk_marker_parse(buf + 1024, 512, &eos) < 0 ||
        eos.val != 0 || eos.size != 0 || eos.type != VMDK_MARKER_EOS)
        return p2v_err_set(err, EINVAL, "'%s': streamOptimized image is truncated or "
                           "unfinished: no footer marker at offset %llu and end-of-stream "
                           "marker at offset %llu", path, (unsigned long long)at,
                           (unsigned long long)(at + 1024));
    struct vmdk_header f;
    if (vmdk_header_parse(buf + 512, 512, path, at + 512, &f, err) < 0)
        return -1;
    if (f.gd_offset == VMDK_GD_AT_END)
        return p2v_err_set(err, EINVAL, "'%s': the footer at offset %llu has no grain "
                           "directory offset", path, (unsigned long long)(at + 512));
    if (f.capacity != h->capacity || f.grain_size != h->grain_size ||
        f.gtes_per_gt != h->gtes_per_gt || f.compress != h->compress)
        return p2v_err_set(err, EINVAL, "'%s': the footer at offset %llu disagrees with "
                           "the header (capacity, grain or compression)", path,
                           (unsigned long long)(at + 512));
    f.unclean = h->unclean;
    *h = f;
    return 0;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* No two grain tables (of the directory and its redundant copy) may share sectors: a
 * hostile directory pointing every entry at one table would otherwise make readers and
 * `check` do work without bound in a small file. With disjoint tables inside the file,
 * the work is bounded by the file's size. */
static int tables_disjoint(const struct sparse *sp, const char *path, struct p2v_err *err)
{
    size_t n = 0, cap = (size_t)sp->l.gd_entries * (sp->has_rgd ? 2 : 1);
    uint32_t *all = malloc(cap * sizeof *all);
    int ret = -1;
    if (!all)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (uint32_t i = 0; i < sp->l.gd_entries; i++) {
        if (sp->gd[i])
            all[n++] = sp->gd[i];
        if (sp->has_rgd && sp->rgd[i])
            all[n++] = sp->rgd[i];
    }
    qsort(all, n, sizeof *all, u32_cmp);
    for (size_t i = 1; i < n; i++)
        if ((uint64_t)all[i] < (uint64_t)all[i - 1] + sp->l.gt_sectors) {
            p2v_err_set(err, EINVAL, "'%s': grain tables at sectors %u and %u overlap", path,
                        all[i - 1], all[i]);
            goto out;
        }
    ret = 0;
out:
    free(all);
    return ret;
}

/* Open the sparse extent in @e (fd and file_size set) from its first sector @head. */
static int sparse_open(struct extent *e, const uint8_t *head, size_t head_len,
                       unsigned flags, bool writable, struct p2v_err *err)
{
    struct sparse *sp = calloc(1, sizeof *sp);
    int ret = -1;
    if (!sp)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (vmdk_header_parse(head, head_len, e->path, 0, &sp->h, err) < 0)
        goto out;
    uint8_t unclean = sp->h.unclean;
    if (sp->h.capacity == 0) {
        p2v_err_set(err, EINVAL, "'%s': sparse extent of capacity 0", e->path);
        goto out;
    }
    if (sp->h.gd_offset == VMDK_GD_AT_END) {
        if (read_footer(e->fd, e->path, e->file_size, &sp->h, err) < 0)
            goto out;
        sp->footer = true;
    }
    if (vmdk_layout_compute(&sp->h, e->path, &sp->l, err) < 0)
        goto out;
    sp->compressed = sp->h.compress == VMDK_COMPRESS_DEFLATE;
    sp->zero_gte = (sp->h.flags & VMDK_FLAG_ZERO_GTE) != 0;
    /* the redundant directory mirrors the tables; a stream has none worth reading */
    sp->has_rgd = (sp->h.flags & VMDK_FLAG_RGD) && !sp->compressed;
    if (unclean && !(flags & DISKFMT_ALLOW_DIRTY)) {
        p2v_err_set(err, EINVAL, "'%s': the image was not shut down cleanly (a writer "
                    "died or still has it open): its contents cannot be trusted; open it "
                    "with DISKFMT_ALLOW_DIRTY to read it anyway", e->path);
        goto out;
    }
    if (writable && sp->compressed) {
        p2v_err_set(err, ENOTSUP, "'%s': a streamOptimized image cannot be changed in "
                    "place (convert it instead)", e->path);
        goto out;
    }
    uint64_t fsec = sectors_of(e->file_size);
    if (meta_add(sp, 0, 1, "header", fsec, e->path, err) < 0)
        goto out;
    if (sp->h.desc_size &&
        meta_add(sp, sp->h.desc_offset, sp->h.desc_size, "embedded descriptor", fsec,
                 e->path, err) < 0)
        goto out;
    if (meta_add(sp, sp->h.gd_offset, sp->l.gd_sectors, "grain directory", fsec, e->path,
                 err) < 0)
        goto out;
    if (sp->has_rgd && meta_add(sp, sp->h.rgd_offset, sp->l.gd_sectors,
                                "redundant grain directory", fsec, e->path, err) < 0)
        goto out;
    sp->gd = calloc(sp->l.gd_entries, sizeof *sp->gd);
    if (sp->has_rgd)
        sp->rgd = calloc(sp->l.gd_entries, sizeof *sp->rgd);
    if (!sp->gd || (sp->has_rgd && !sp->rgd)) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    if (read_table(e->fd, e->path, sp->h.gd_offset, sp->l.gd_entries, sp->gd, err) < 0 ||
        (sp->has_rgd &&
         read_table(e->fd, e->path, sp->h.rgd_offset, sp->l.gd_entries, sp->rgd, err) < 0))
        goto out;
    /* every grain table inside the file and clear of the header, descriptor and
     * directories, checked once here so that reads can trust the directory */
    for (int which = 0; which < (sp->has_rgd ? 2 : 1); which++) {
        const uint32_t *dir = which ? sp->rgd : sp->gd;
        for (uint32_t i = 0; i < sp->l.gd_entries; i++) {
            if (dir[i] == 0)
                continue;
            const char *hit = meta_hit(sp, dir[i], sp->l.gt_sectors);
            if (!p2v_range_ok(dir[i], sp->l.gt_sectors, fsec) || hit) {
                p2v_err_set(err, EINVAL, "'%s': %sgrain directory entry %u points %s "
                            "(sector %u)", e->path, which ? "redundant " : "", i,
                            hit ? "into metadata" : "outside the file", dir[i]);
                if (hit)
                    p2v_err_prefix(err, "%s", hit);
                goto out;
            }
        }
    }
    if (tables_disjoint(sp, e->path, err) < 0)
        goto out;
    e->sp = sp;
    sp = NULL;
    ret = 0;
out:
    sparse_free(sp);
    return ret;
}

/* ------------------------------------------------------------------ grain table cache */

static int slot_write(struct vmdk *v, struct gt_slot *s, struct p2v_err *err)
{
    struct extent *e = &v->ext[s->ext];
    struct sparse *sp = e->sp;
    if (write_table(e->fd, e->path, sp->gd[s->gt], sp->h.gtes_per_gt, sp->l.gt_sectors,
                    s->e, err) < 0)
        return -1;
    if (sp->has_rgd && sp->rgd[s->gt] &&
        write_table(e->fd, e->path, sp->rgd[s->gt], sp->h.gtes_per_gt, sp->l.gt_sectors,
                    s->e, err) < 0)
        return -1;
    s->dirty = false;
    return 0;
}

/* The cached grain table @t of extent @ei, loading it (or, with @create, making an empty
 * one for a table just allocated). */
static int gt_get(struct vmdk *v, size_t ei, uint32_t t, bool create, struct gt_slot **out,
                  struct p2v_err *err)
{
    struct gt_slot *s = &v->slots[v->last];
    if (s->valid && s->ext == ei && s->gt == t) {
        s->used = ++v->tick;
        *out = s;
        return 0;
    }
    size_t victim = 0;
    uint64_t oldest = UINT64_MAX;
    for (size_t i = 0; i < VMDK_GT_CACHE; i++) {
        s = &v->slots[i];
        if (s->valid && s->ext == ei && s->gt == t) {
            s->used = ++v->tick;
            v->last = i;
            *out = s;
            return 0;
        }
        uint64_t age = s->valid ? s->used : 0;
        if (age < oldest) {
            oldest = age;
            victim = i;
        }
    }
    s = &v->slots[victim];
    if (s->valid && s->dirty && slot_write(v, s, err) < 0)
        return -1;
    s->valid = false;
    struct extent *e = &v->ext[ei];
    struct sparse *sp = e->sp;
    if (create)
        memset(s->e, 0, sp->l.gt_bytes);
    else if (read_table(e->fd, e->path, sp->gd[t], sp->h.gtes_per_gt, s->e, err) < 0)
        return -1;
    s->ext = ei;
    s->gt = t;
    s->valid = true;
    s->dirty = create;
    s->used = ++v->tick;
    v->last = victim;
    *out = s;
    return 0;
}

/* The grain table entry of grain @g of sparse extent @ei (0: not allocated). */
static int gte_get(struct vmdk *v, size_t ei, uint64_t g, uint32_t *gte, struct p2v_err *err)
{
    struct sparse *sp = v->ext[ei].sp;
    uint32_t t = (uint32_t)(g / sp->h.gtes_per_gt);
    struct gt_slot *s;
    if (sp->gd[t] == 0) {
        *gte = 0;
        return 0;
    }
    if (gt_get(v, ei, t, false, &s, err) < 0)
        return -1;
    *gte = s->e[g % sp->h.gtes_per_gt];
    return 0;
}

enum grain_kind { G_HOLE, G_ZERO, G_DATA };

/* Classify a grain table entry and check where it points. */
static int gte_check(struct vmdk *v, size_t ei, uint64_t g, uint32_t gte,
                     enum grain_kind *kind, struct p2v_err *err)
{
    struct extent *e = &v->ext[ei];
    struct sparse *sp = e->sp;
    if (gte == 0) {
        *kind = G_HOLE;
        return 0;
    }
    if (gte == VMDK_GTE_ZEROED && sp->zero_gte) {
        *kind = G_ZERO;
        return 0;
    }
    uint64_t len = sp->compressed ? 1 : sp->h.grain_size;
    const char *hit = meta_hit(sp, gte, len);
    uint64_t end = P2V_MAX(e->file_size, sp->alloc * VMDK_SECTOR);
    if (hit)
        return p2v_err_set(err, EINVAL, "'%s': grain table entry of grain %llu points into "
                           "the %s (sector %u)", e->path, (unsigned long long)g, hit, gte);
    if ((uint64_t)gte * VMDK_SECTOR >= end)
        return p2v_err_set(err, EINVAL, "'%s': grain table entry of grain %llu points "
                           "outside the file (sector %u, file of %llu bytes)", e->path,
                           (unsigned long long)g, gte, (unsigned long long)end);
    *kind = G_DATA;
    return 0;
}

/* ------------------------------------------------------------------ reading */

/* Read and inflate compressed grain @g (at sector @gte) into v->gbuf. */
static int load_compressed(struct vmdk *v, size_t ei, uint64_t g, uint32_t gte,
                           struct p2v_err *err)
{
    struct extent *e = &v->ext[ei];
    struct sparse *sp = e->sp;
    uint64_t gb = sp->l.grain_bytes;
    uint64_t off = (uint64_t)gte * VMDK_SECTOR;
    if (v->gbuf_ok && v->gbuf_ext == ei && v->gbuf_grain == g)
        return 0;
    v->gbuf_ok = false;
    if (!v->gbuf && !(v->gbuf = malloc((size_t)(VMDK_GRAIN_SECTORS_MAX * VMDK_SECTOR))))
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (!v->zin_ok) {
        if (inflateInit(&v->zin) != Z_OK)
            return p2v_err_set(err, ENOMEM, "cannot initialise zlib");
        v->zin_ok = true;
    }
    uint8_t mhead[VMDK_GRAIN_MARKER_SIZE];
    struct vmdk_marker m = {0, 0, 0};
    if (!p2v_range_ok(off, sizeof mhead, e->file_size))
        return p2v_err_set(err, EINVAL, "'%s': grain marker at offset %llu lies past the "
                           "end of the file", e->path, (unsigned long long)off);
    if (diskfmt_read_exact(e->fd, mhead, sizeof mhead, off, e->path, err) < 0)
        return -1;
    uint64_t lba = g * sp->h.grain_size;
    /* a size of 0 makes it a metadata marker (whose type does not fit in 12 bytes) */
    if (vmdk_marker_parse(mhead, sizeof mhead, &m) < 0 || m.size == 0)
        return p2v_err_set(err, EINVAL, "'%s': a metadata marker at offset %llu where "
                           "the grain marker of sector %llu was expected", e->path,
                           (unsigned long long)off, (unsigned long long)lba);
    if (m.val != lba)
        return p2v_err_set(err, EINVAL, "'%s': grain marker at offset %llu is for sector "
                           "%llu (length %u), expected a grain at sector %llu", e->path,
                           (unsigned long long)off, (unsigned long long)m.val, m.size,
                           (unsigned long long)lba);
    if (m.size > VMDK_COMPRESSED_MAX(gb))
        return p2v_err_set(err, EINVAL, "'%s': compressed grain at offset %llu claims %u "
                           "bytes, more than %llu", e->path, (unsigned long long)off,
                           m.size, (unsigned long long)VMDK_COMPRESSED_MAX(gb));
    if (!p2v_range_ok(off + sizeof mhead, m.size, e->file_size))
        return p2v_err_set(err, EINVAL, "'%s': compressed grain at offset %llu (%u bytes) "
                           "runs past the end of the file", e->path,
                           (unsigned long long)off, m.size);
    if (v->cbuf_cap < m.size) {
        uint8_t *p = realloc(v->cbuf, m.size);
        if (!p)
            return p2v_err_set(err, ENOMEM, "out of memory");
        v->cbuf = p;
        v->cbuf_cap = m.size;
    }
    if (diskfmt_read_exact(e->fd, v->cbuf, m.size, off + sizeof mhead, e->path, err) < 0)
        return -1;
    /* the part of the grain inside the capacity must come out of the stream */
    uint64_t gstart = g * gb;
    uint64_t need = P2V_MIN(gb, sp->h.capacity * VMDK_SECTOR - gstart);
    inflateReset(&v->zin);
    v->zin.next_in = v->cbuf;
    v->zin.avail_in = m.size;
    v->zin.next_out = v->gbuf;
    v->zin.avail_out = (uInt)gb;
    int zr = inflate(&v->zin, Z_FINISH);
    uint64_t got = v->zin.total_out;
    if (zr != Z_STREAM_END)
        return p2v_err_set(err, EINVAL, "'%s': compressed grain at offset %llu is corrupt "
                           "(%s)", e->path, (unsigned long long)off,
                           zr == Z_BUF_ERROR && v->zin.avail_out == 0
                               ? "it inflates to more than a grain"
                               : (v->zin.msg ? v->zin.msg : "truncated deflate stream"));
    if (got < need)
        return p2v_err_set(err, EINVAL, "'%s': compressed grain at offset %llu inflates to "
                           "%llu bytes, %llu expected", e->path, (unsigned long long)off,
                           (unsigned long long)got, (unsigned long long)need);
    memset(v->gbuf + got, 0, (size_t)(gb - got));
    v->gbuf_ok = true;
    v->gbuf_ext = ei;
    v->gbuf_grain = g;
    return 0;
}

static int sparse_read(struct vmdk *v, size_t ei, uint8_t *buf, size_t len, uint64_t xoff,
                       struct p2v_err *err)
{
    struct extent *e = &v->ext[ei];
    struct sparse *sp = e->sp;
    uint64_t gb = sp->l.grain_bytes;
    while (len) {
        uint64_t g = xoff / gb, in = xoff % gb;
        size_t n = (size_t)P2V_MIN((uint64_t)len, gb - in);
        uint32_t gte;
        enum grain_kind kind;
        if (gte_get(v, ei, g, &gte, err) < 0 || gte_check(v, ei, g, gte, &kind, err) < 0)
            return -1;
        if (kind != G_DATA) {
            memset(buf, 0, n);
        } else if (sp->compressed) {
            if (load_compressed(v, ei, g, gte, err) < 0)
                return -1;
            memcpy(buf, v->gbuf + in, n);
        } else {
            /* extend over following grains stored right after this one: one read */
            uint32_t next_gte = gte;
            while (n < len) {
                uint64_t ng = g + (n + in) / gb;
                uint32_t ngte;
                enum grain_kind nk;
                if ((n + in) % gb || ng / sp->h.gtes_per_gt != g / sp->h.gtes_per_gt)
                    break;
                if (gte_get(v, ei, ng, &ngte, err) < 0 ||
                    gte_check(v, ei, ng, ngte, &nk, err) < 0)
                    return -1;
                if (nk != G_DATA || (uint64_t)ngte != (uint64_t)next_gte + sp->h.grain_size)
                    break;
                next_gte = ngte;
                n += (size_t)P2V_MIN((uint64_t)(len - n), gb);
            }
            uint64_t at = (uint64_t)gte * VMDK_SECTOR + in;
            ssize_t r = p2v_pread_full(e->fd, buf, n, at);
            if (r < 0)
                return p2v_err_errno(err, "'%s': read error at offset %llu", e->path,
                                     (unsigned long long)at);
            /* a last grain that was written only in part may end before the file's
             * end of grain: the rest reads as zeros, as for qemu */
            memset(buf + r, 0, n - (size_t)r);
        }
        buf += n;
        len -= n;
        xoff += n;
    }
    return 0;
}

static size_t find_extent(const struct vmdk *v, uint64_t off)
{
    size_t lo = 0, hi = v->n_ext;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->ext[mid].vstart <= off)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static int vmdk_pread(struct diskfmt *d, void *buf, size_t len, uint64_t off,
                      struct p2v_err *err)
{
    struct vmdk *v = d->priv;
    uint8_t *p = buf;
    if (v->wmode == W_STREAM)
        return p2v_err_set(err, ENOTSUP, "'%s': a streamOptimized image being written "
                           "cannot be read", d->path);
    while (len) {
        size_t ei = find_extent(v, off);
        struct extent *e = &v->ext[ei];
        uint64_t x = off - e->vstart;
        size_t n = (size_t)P2V_MIN((uint64_t)len, e->vsize - x);
        switch (e->type) {
        case VMDK_EXT_ZERO:
            memset(p, 0, n);
            break;
        case VMDK_EXT_FLAT:
            if (diskfmt_read_exact(e->fd, p, n, e->flat_off + x, e->path, err) < 0)
                return -1;
            break;
        case VMDK_EXT_SPARSE:
            if (sparse_read(v, ei, p, n, x, err) < 0)
                return -1;
            break;
        }
        p += n;
        len -= n;
        off += n;
    }
    return 0;
}

static int vmdk_block_status(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                             unsigned *flags, struct p2v_err *err)
{
    struct vmdk *v = d->priv;
    if (v->wmode == W_STREAM)
        return diskfmt_status_all_data(d, off, len, run, flags, err);
    size_t ei = find_extent(v, off);
    struct extent *e = &v->ext[ei];
    uint64_t x = off - e->vstart;
    uint64_t n = P2V_MIN(len, e->vsize - x);
    if (e->type == VMDK_EXT_ZERO) {
        *run = n;
        *flags = DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
        return 0;
    }
    if (e->type == VMDK_EXT_FLAT) {
        uint64_t at = e->flat_off + x, end = at + n;
        off_t data = lseek(e->fd, (off_t)at, SEEK_DATA);
        if (data < 0 && errno == ENXIO) {
            *run = n;
            *flags = DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
            return 0;
        }
        if (data >= 0 && (uint64_t)data > at) {
            *run = P2V_MIN((uint64_t)data, end) - at;
            *flags = DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
            return 0;
        }
        off_t hole = data < 0 ? -1 : lseek(e->fd, (off_t)at, SEEK_HOLE);
        if (hole < 0 || (uint64_t)hole <= at)
            hole = (off_t)end;
        *run = P2V_MIN((uint64_t)hole, end) - at;
        *flags = 0;
        return 0;
    }
    struct sparse *sp = e->sp;
    uint64_t gb = sp->l.grain_bytes;
    uint64_t done = 0;
    unsigned f0 = 0;
    uint64_t span = gb * sp->h.gtes_per_gt; /* bytes one grain table maps */
    while (done < n) {
        uint64_t g = (x + done) / gb;
        uint32_t gte;
        enum grain_kind kind;
        uint64_t step = gb - (x + done) % gb;
        if (sp->gd[g / sp->h.gtes_per_gt] == 0) {
            /* no grain table: its whole span is a hole */
            kind = G_HOLE;
            step = span - (x + done) % span;
        } else if (gte_get(v, ei, g, &gte, err) < 0 ||
                   gte_check(v, ei, g, gte, &kind, err) < 0) {
            return -1;
        }
        unsigned f = kind == G_HOLE ? DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE
                     : kind == G_ZERO ? DISKFMT_STATUS_ZERO
                                      : 0;
        if (done == 0)
            f0 = f;
        else if (f != f0)
            break;
        done += P2V_MIN(n - done, step);
    }
    *run = done;
    *flags = f0;
    return 0;
}

/* ------------------------------------------------------------------ opening */

static int open_extent_file(struct vmdk *v, struct extent *e, bool writable,
                            struct p2v_err *err)
{
    /* plain names only (checked by the parser), opened inside the descriptor's folder,
     * never through a symbolic link */
    e->fd = openat(v->dirfd, e->name,
                   (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC);
    if (e->fd < 0)
        return p2v_err_errno(err, "cannot open extent file '%s'", e->path);
    e->own_fd = true;
    struct stat st;
    if (fstat(e->fd, &st) < 0)
        return p2v_err_errno(err, "cannot stat '%s'", e->path);
    if (!S_ISREG(st.st_mode))
        return p2v_err_set(err, EINVAL, "extent '%s' is not a regular file", e->path);
    e->file_size = (uint64_t)st.st_size;
    return 0;
}

static int open_extents(struct diskfmt *d, struct vmdk *v, const struct vmdk_desc *desc,
                        unsigned flags, struct p2v_err *err)
{
    bool writable = (flags & DISKFMT_RDWR) != 0;
    uint64_t vstart = 0;
    if (desc->n_extents == 0)
        return p2v_err_set(err, EINVAL, "'%s': the descriptor names no extent", d->path);
    v->ext = calloc(desc->n_extents, sizeof *v->ext);
    if (!v->ext)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < desc->n_extents; i++) {
        const struct vmdk_desc_extent *de = &desc->extents[i];
        struct extent *e = &v->ext[i];
        v->n_ext++;
        e->fd = -1;
        e->type = de->type;
        e->access = de->access;
        memcpy(e->type_name, de->type_name, sizeof e->type_name);
        e->vstart = vstart;
        e->vsize = de->sectors * VMDK_SECTOR; /* sectors <= 2^37: no overflow */
        if (P2V_ADD_OVERFLOW(vstart, e->vsize, &vstart) ||
            vstart > VMDK_DISK_SECTORS_MAX * VMDK_SECTOR)
            return p2v_err_set(err, EFBIG, "'%s': the extents add up to more than %llu "
                               "sectors", d->path,
                               (unsigned long long)VMDK_DISK_SECTORS_MAX);
        e->name = strdup(de->name);
        e->path = join_path(v->dir, de->name);
        if (!e->name || !e->path)
            return p2v_err_set(err, ENOMEM, "out of memory");
        if (e->type == VMDK_EXT_ZERO)
            continue;
        bool w = writable && e->access == VMDK_ACCESS_RW;
        if (open_extent_file(v, e, w, err) < 0)
            return -1;
        if (e->type == VMDK_EXT_FLAT) {
            e->flat_off = de->offset * VMDK_SECTOR;
            if (!p2v_range_ok(e->flat_off, e->vsize, e->file_size))
                return p2v_err_set(err, EINVAL, "extent file '%s' (%llu bytes) is shorter "
                                   "than its extent (%llu bytes at offset %llu)", e->path,
                                   (unsigned long long)e->file_size,
                                   (unsigned long long)e->vsize,
                                   (unsigned long long)e->flat_off);
            continue;
        }
        uint8_t head[512];
        ssize_t n = p2v_pread_full(e->fd, head, sizeof head, 0);
        if (n < 0)
            return p2v_err_errno(err, "'%s': read error at offset 0", e->path);
        if (n >= 4 && p2v_get_u32le(head) == VMDK_COWD_MAGIC)
            return p2v_err_set(err, ENOTSUP, "'%s': vmfsSparse (COWD) extents are not "
                               "supported", e->path);
        if (sparse_open(e, head, (size_t)n, flags, w, err) < 0)
            return -1;
        if (e->sp->h.capacity < de->sectors)
            return p2v_err_set(err, EINVAL, "'%s': sparse extent of %llu sectors is "
                               "smaller than the descriptor's %llu", e->path,
                               (unsigned long long)e->sp->h.capacity,
                               (unsigned long long)de->sectors);
    }
    d->size = vstart;
    return 0;
}

static void take_desc_facts(struct vmdk *v, const struct vmdk_desc *desc)
{
    snprintf(v->create_type, sizeof v->create_type, "%s", desc->create_type);
    snprintf(v->adapter, sizeof v->adapter, "%s", desc->adapter_type);
    snprintf(v->hw_version, sizeof v->hw_version, "%s", desc->hw_version);
    v->cid = desc->cid;
    v->has_cid = desc->has_cid;
}

/* A single sparse file (monolithicSparse, streamOptimized): the file is the extent. */
static int open_monolithic(struct diskfmt *d, struct vmdk *v, const uint8_t *head,
                           uint64_t fsize, unsigned flags, struct p2v_err *err)
{
    struct vmdk_header h;
    struct vmdk_desc desc;
    uint8_t *text = NULL;
    int ret = -1;
    memset(&desc, 0, sizeof desc);
    if (vmdk_header_parse(head, 512, d->path, 0, &h, err) < 0)
        return -1;
    if (h.desc_size) {
        size_t dlen = (size_t)(h.desc_size * VMDK_SECTOR);
        if (!p2v_range_ok(h.desc_offset, h.desc_size, sectors_of(fsize)))
            return p2v_err_set(err, EINVAL, "'%s': embedded descriptor at sector %llu "
                               "lies outside the file", d->path,
                               (unsigned long long)h.desc_offset);
        text = malloc(dlen);
        if (!text)
            return p2v_err_set(err, ENOMEM, "out of memory");
        ssize_t n = p2v_pread_full(v->fd, text, dlen, h.desc_offset * VMDK_SECTOR);
        if (n < 0) {
            p2v_err_errno(err, "'%s': read error at offset %llu", d->path,
                          (unsigned long long)(h.desc_offset * VMDK_SECTOR));
            goto out;
        }
        if (vmdk_desc_parse(text, (size_t)n, d->path, &desc, err) < 0) {
            p2v_err_prefix(err, "embedded descriptor");
            goto out;
        }
        take_desc_facts(v, &desc);
        if (h.capacity == 0) {
            /* VDF "The Descriptor File": a descriptor in a sparse file's clothes; its
             * extents are files */
            ret = open_extents(d, v, &desc, flags, err);
            goto out;
        }
    }
    v->monolithic = true;
    v->ext = calloc(1, sizeof *v->ext);
    if (!v->ext) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    v->n_ext = 1;
    struct extent *e = &v->ext[0];
    e->type = VMDK_EXT_SPARSE;
    e->access = VMDK_ACCESS_RW;
    snprintf(e->type_name, sizeof e->type_name, "SPARSE");
    e->fd = v->fd;
    e->file_size = fsize;
    e->name = strdup(base_of(d->path));
    e->path = strdup(d->path);
    if (!e->name || !e->path) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    if (sparse_open(e, head, 512, flags, (flags & DISKFMT_RDWR) != 0, err) < 0)
        goto out;
    e->vsize = e->sp->h.capacity * VMDK_SECTOR;
    d->size = e->vsize;
    if (!v->create_type[0])
        snprintf(v->create_type, sizeof v->create_type, "%s",
                 e->sp->compressed ? "streamOptimized" : "monolithicSparse");
    ret = 0;
out:
    vmdk_desc_release(&desc);
    free(text);
    return ret;
}

/* Writers of existing sparse extents: find the end of everything allocated (a foreign
 * writer may have left a last grain written only in part), then mark them unclean. */
static int sparse_begin_writing(struct vmdk *v, size_t ei, struct p2v_err *err)
{
    struct extent *e = &v->ext[ei];
    struct sparse *sp = e->sp;
    uint64_t end = sectors_of(e->file_size);
    uint32_t *gt = malloc(sp->l.gt_bytes);
    int ret = -1;
    if (!gt)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (uint32_t t = 0; t < sp->l.gd_entries; t++) {
        for (int which = 0; which < 2; which++) {
            const uint32_t *dir = which ? sp->rgd : sp->gd;
            if (dir && dir[t])
                end = P2V_MAX(end, (uint64_t)dir[t] + sp->l.gt_sectors);
        }
        if (!sp->gd[t])
            continue;
        if (read_table(e->fd, e->path, sp->gd[t], sp->h.gtes_per_gt, gt, err) < 0)
            goto out;
        for (uint32_t i = 0; i < sp->h.gtes_per_gt; i++)
            if (gt[i] > 1 || (gt[i] == 1 && !sp->zero_gte))
                end = P2V_MAX(end, (uint64_t)gt[i] + sp->h.grain_size);
    }
    for (unsigned i = 0; i < sp->n_meta; i++)
        end = P2V_MAX(end, sp->meta[i].start + sp->meta[i].count);
    sp->alloc = end;
    /* VDF "Hosted Sparse Extents" uncleanShutdown: set and on disk before any data
     * changes */
    uint8_t one = 1;
    if (diskfmt_write_exact(e->fd, &one, 1, VMDK_HEADER_UNCLEAN_OFFSET, e->path, err) < 0)
        goto out;
    if (diskfmt_fdatasync(e->fd) < 0) {
        p2v_err_errno(err, "cannot flush '%s'", e->path);
        goto out;
    }
    sp->unclean_set = true;
    ret = 0;
out:
    free(gt);
    return ret;
}

static int vmdk_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    struct vmdk *v = vmdk_new(d->path, err);
    struct vmdk_desc desc;
    uint8_t *text = NULL;
    int ret = -1;
    bool writable = (flags & DISKFMT_RDWR) != 0;
    memset(&desc, 0, sizeof desc);
    if (!v)
        return -1;
    v->fd = open(d->path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (v->fd < 0) {
        p2v_err_errno(err, "cannot open '%s'", d->path);
        goto out;
    }
    struct stat st;
    if (fstat(v->fd, &st) < 0) {
        p2v_err_errno(err, "cannot stat '%s'", d->path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        p2v_err_set(err, EINVAL, "'%s' is not a regular file", d->path);
        goto out;
    }
    uint64_t fsize = (uint64_t)st.st_size;
    uint8_t head[512];
    ssize_t n = p2v_pread_full(v->fd, head, sizeof head, 0);
    if (n < 0) {
        p2v_err_errno(err, "'%s': read error at offset 0", d->path);
        goto out;
    }
    if (n >= 4 && p2v_get_u32le(head) == VMDK_MAGIC) {
        if ((size_t)n < sizeof head) {
            p2v_err_set(err, EINVAL, "'%s': sparse extent header truncated (%zd of 512 "
                        "bytes)", d->path, n);
            goto out;
        }
        if (open_monolithic(d, v, head, fsize, flags, err) < 0)
            goto out;
    } else if (n >= 4 && p2v_get_u32le(head) == VMDK_COWD_MAGIC) {
        p2v_err_set(err, ENOTSUP, "'%s': vmfsSparse (COWD) images are not supported",
                    d->path);
        goto out;
    } else {
        if (fsize > VMDK_DESC_MAX) {
            p2v_err_set(err, EINVAL, "'%s': not a VMDK image (no sparse header, and too "
                        "large for a descriptor)", d->path);
            goto out;
        }
        text = malloc(fsize ? (size_t)fsize : 1);
        if (!text) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out;
        }
        if (diskfmt_read_exact(v->fd, text, (size_t)fsize, 0, d->path, err) < 0)
            goto out;
        if (vmdk_desc_parse(text, (size_t)fsize, d->path, &desc, err) < 0)
            goto out;
        take_desc_facts(v, &desc);
        if (open_extents(d, v, &desc, flags, err) < 0)
            goto out;
    }
    if (d->size == 0) {
        p2v_err_set(err, EINVAL, "'%s': disk of size 0", d->path);
        goto out;
    }
    d->block_size = 4096;
    for (size_t i = 0; i < v->n_ext; i++)
        if (v->ext[i].sp) {
            d->block_size = (uint32_t)v->ext[i].sp->l.grain_bytes;
            break;
        }
    if (writable) {
        v->wmode = W_FLAT;
        for (size_t i = 0; i < v->n_ext; i++)
            if (v->ext[i].sp && v->ext[i].access == VMDK_ACCESS_RW) {
                v->wmode = W_SPARSE;
                if (sparse_begin_writing(v, i, err) < 0)
                    goto out;
            }
    }
    d->priv = v;
    v = NULL;
    ret = 0;
out:
    vmdk_desc_release(&desc);
    free(text);
    if (v) {
        /* a failed open leaves what it found; it changed nothing unless it set
         * uncleanShutdown, which then stays set: the image was opened for writing */
        vmdk_free(v);
    }
    return ret;
}

static int vmdk_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                      uint64_t file_size)
{
    static const char sig[] = "# Disk DescriptorFile";
    if (head_len >= 4 && p2v_get_u32le(head) == VMDK_MAGIC)
        return 100;
    if (head_len >= 4 && p2v_get_u32le(head) == VMDK_COWD_MAGIC)
        return 90;
    if (head_len >= sizeof sig - 1 && memcmp(head, sig, sizeof sig - 1) == 0)
        return 100;
    return 0;
}

/* ------------------------------------------------------------------ sparse writing */

static int sparse_alloc(struct sparse *sp, uint64_t sectors, const char *path,
                        uint64_t *at, struct p2v_err *err)
{
    /* grain table and directory entries are 32-bit sector numbers */
    if (sp->alloc + sectors > UINT32_MAX)
        return p2v_err_set(err, ENOSPC, "'%s': the sparse extent file would grow past "
                           "2 TiB, the limit of its 32-bit grain table entries", path);
    *at = sp->alloc;
    sp->alloc += sectors;
    return 0;
}

/* The cached grain table for grain @g, allocating the table when it has none. */
static int gt_for_write(struct vmdk *v, size_t ei, uint64_t g, struct gt_slot **out,
                        struct p2v_err *err)
{
    struct extent *e = &v->ext[ei];
    struct sparse *sp = e->sp;
    uint32_t t = (uint32_t)(g / sp->h.gtes_per_gt);
    if (sp->gd[t])
        return gt_get(v, ei, t, false, out, err);
    uint64_t at = 0, rat = 0;
    if (sparse_alloc(sp, sp->l.gt_sectors, e->path, &at, err) < 0 ||
        (sp->has_rgd && sparse_alloc(sp, sp->l.gt_sectors, e->path, &rat, err) < 0))
        return -1;
    sp->gd[t] = (uint32_t)at;
    if (sp->has_rgd)
        sp->rgd[t] = (uint32_t)rat;
    sp->gd_dirty = true;
    return gt_get(v, ei, t, true, out, err);
}

static int sparse_write(struct vmdk *v, size_t ei, const uint8_t *buf, size_t len,
                        uint64_t xoff, struct p2v_err *err)
{
    struct extent *e = &v->ext[ei];
    struct sparse *sp = e->sp;
    uint64_t gb = sp->l.grain_bytes;
    while (len) {
        uint64_t g = xoff / gb, in = xoff % gb;
        size_t n = (size_t)P2V_MIN((uint64_t)len, gb - in);
        uint32_t gte;
        enum grain_kind kind;
        if (gte_get(v, ei, g, &gte, err) < 0 || gte_check(v, ei, g, gte, &kind, err) < 0)
            return -1;
        if (kind == G_DATA) {
            if (diskfmt_write_exact(e->fd, buf, n, (uint64_t)gte * VMDK_SECTOR + in, e->path,
                            err) < 0)
                return -1;
        } else if (!p2v_is_zero(buf, n)) {
            /* a new grain: whole grains of the request go out in one write, in a run of
             * grains allocated one after another in the same grain table */
            struct gt_slot *s;
            if (gt_for_write(v, ei, g, &s, err) < 0)
                return -1;
            if (in == 0 && n == gb) {
                size_t run = n;
                uint32_t t = (uint32_t)(g / sp->h.gtes_per_gt);
                while (run + gb <= len) {
                    uint64_t ng = g + run / gb;
                    if (ng / sp->h.gtes_per_gt != t || s->e[ng % sp->h.gtes_per_gt] != 0 ||
                        p2v_is_zero(buf + run, (size_t)gb))
                        break;
                    run += (size_t)gb;
                }
                uint64_t at = 0;
                if (sparse_alloc(sp, run / VMDK_SECTOR, e->path, &at, err) < 0)
                    return -1;
                if (diskfmt_write_exact(e->fd, buf, run, at * VMDK_SECTOR, e->path, err) < 0)
                    return -1;
                for (size_t k = 0; k < run / gb; k++)
                    s->e[(g + k) % sp->h.gtes_per_gt] =
                        (uint32_t)(at + k * sp->h.grain_size);
                n = run;
            } else {
                /* part of a grain that reads as zeros: write it whole */
                uint64_t at = 0;
                if (grow_tmp(v, (size_t)gb, err) < 0 ||
                    sparse_alloc(sp, sp->h.grain_size, e->path, &at, err) < 0)
                    return -1;
                memset(v->tmp, 0, (size_t)gb);
                memcpy(v->tmp + in, buf, n);
                if (diskfmt_write_exact(e->fd, v->tmp, (size_t)gb, at * VMDK_SECTOR, e->path,
                                err) < 0)
                    return -1;
                s->e[g % sp->h.gtes_per_gt] = (uint32_t)at;
            }
            s->dirty = true;
        }
        /* else: zeros over a grain that reads as zeros: nothing to store */
        buf += n;
        len -= n;
        xoff += n;
    }
    return 0;
}

static int sparse_flush(struct vmdk *v, struct p2v_err *err)
{
    for (size_t i = 0; i < VMDK_GT_CACHE; i++) {
        struct gt_slot *s = &v->slots[i];
        if (s->valid && s->dirty && slot_write(v, s, err) < 0)
            return -1;
    }
    for (size_t i = 0; i < v->n_ext; i++) {
        struct extent *e = &v->ext[i];
        struct sparse *sp = e->sp;
        if (!sp || !sp->gd_dirty)
            continue;
        if (write_table(e->fd, e->path, sp->h.gd_offset, sp->l.gd_entries, sp->l.gd_sectors,
                        sp->gd, err) < 0 ||
            (sp->has_rgd && write_table(e->fd, e->path, sp->h.rgd_offset, sp->l.gd_entries,
                                        sp->l.gd_sectors, sp->rgd, err) < 0))
            return -1;
        sp->gd_dirty = false;
    }
    return 0;
}

/* ------------------------------------------------------------------ writing */

static int check_writable(struct extent *e, struct p2v_err *err)
{
    if (e->type == VMDK_EXT_ZERO)
        return p2v_err_set(err, EPERM, "'%s': cannot write to a ZERO extent", e->path);
    if (e->access != VMDK_ACCESS_RW)
        return p2v_err_set(err, EPERM, "'%s': the extent is read-only (%s)", e->path,
                           e->access == VMDK_ACCESS_RDONLY ? "RDONLY" : "NOACCESS");
    return 0;
}

static int vmdk_pwrite(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                       struct p2v_err *err)
{
    struct vmdk *v = d->priv;
    const uint8_t *p = buf;
    if (v->wmode == W_STREAM)
        return vmdk_stream_write(v->st, buf, len, off, err);
    while (len) {
        size_t ei = find_extent(v, off);
        struct extent *e = &v->ext[ei];
        uint64_t x = off - e->vstart;
        size_t n = (size_t)P2V_MIN((uint64_t)len, e->vsize - x);
        if (check_writable(e, err) < 0)
            return -1;
        if (e->type == VMDK_EXT_FLAT) {
            if (diskfmt_write_exact(e->fd, p, n, e->flat_off + x, e->path, err) < 0)
                return -1;
        } else if (sparse_write(v, ei, p, n, x, err) < 0) {
            return -1;
        }
        p += n;
        len -= n;
        off += n;
    }
    return 0;
}

static int vmdk_zero(struct diskfmt *d, uint64_t off, uint64_t len, struct p2v_err *err)
{
    struct vmdk *v = d->priv;
    static const uint8_t zeros[65536];
    if (v->wmode == W_STREAM)
        return vmdk_stream_zero(v->st, off, len, err);
    while (len) {
        size_t ei = find_extent(v, off);
        struct extent *e = &v->ext[ei];
        uint64_t x = off - e->vstart;
        uint64_t n = P2V_MIN(len, e->vsize - x);
        if (e->type == VMDK_EXT_ZERO) {
            /* already zeros */
        } else if (check_writable(e, err) < 0) {
            return -1;
        } else if (e->type == VMDK_EXT_FLAT) {
            if (fallocate(e->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          (off_t)(e->flat_off + x), (off_t)n) < 0) {
                for (uint64_t k = 0; k < n;) {
                    size_t m = (size_t)P2V_MIN(n - k, (uint64_t)sizeof zeros);
                    if (diskfmt_write_exact(e->fd, zeros, m, e->flat_off + x + k, e->path, err) < 0)
                        return -1;
                    k += m;
                }
            }
        } else {
            /* sparse: zeros over unallocated grains store nothing (sparse_write skips
             * them); allocated grains get zeros written */
            for (uint64_t k = 0; k < n;) {
                size_t m = (size_t)P2V_MIN(n - k, (uint64_t)sizeof zeros);
                if (sparse_write(v, ei, zeros, m, x + k, err) < 0)
                    return -1;
                k += m;
            }
        }
        len -= n;
        off += n;
    }
    return 0;
}

static int sync_all(struct vmdk *v, struct p2v_err *err)
{
    for (size_t i = 0; i < v->n_ext; i++) {
        struct extent *e = &v->ext[i];
        if (e->fd >= 0 && diskfmt_fdatasync(e->fd) < 0)
            return p2v_err_errno(err, "cannot flush '%s'", e->path);
    }
    return 0;
}

static int vmdk_flush(struct diskfmt *d, struct p2v_err *err)
{
    struct vmdk *v = d->priv;
    if (v->wmode == W_STREAM)
        return 0; /* nothing is complete before the footer */
    if (v->wmode == W_SPARSE && sparse_flush(v, err) < 0)
        return -1;
    return sync_all(v, err);
}

/* ------------------------------------------------------------------ creating */

static int random_cid(uint32_t *cid, struct p2v_err *err)
{
    uint32_t c;
    do {
        if (getrandom(&c, sizeof c, 0) != (ssize_t)sizeof c)
            return p2v_err_errno(err, "cannot get random bytes for the CID");
    } while (c == 0xffffffffu || c == 0xfffffffeu);
    *cid = c;
    return 0;
}

/* The sparse header and embedded descriptor of a new monolithicSparse or
 * streamOptimized file. */
static int write_head(struct diskfmt *d, struct vmdk *v, const struct vmdk_header *h,
                      const char *create_type, struct p2v_err *err)
{
    struct p2v_buf desc = P2V_BUF_INIT;
    struct vmdk_desc_out_extent x = {
        .sectors = h->capacity, .type = "SPARSE", .name = base_of(d->path)};
    uint8_t *area = NULL;
    int ret = -1;
    size_t area_len = (size_t)((1 + VMDK_DESC_SECTORS) * VMDK_SECTOR);
    if (vmdk_desc_format(&desc, v->cid, create_type, &x, 1, h->capacity, v->adapter, err) < 0)
        goto out;
    if (desc.len > VMDK_DESC_SECTORS * VMDK_SECTOR) {
        p2v_err_set(err, ENAMETOOLONG, "'%s': the descriptor does not fit its %u sectors",
                    d->path, VMDK_DESC_SECTORS);
        goto out;
    }
    area = calloc(1, area_len);
    if (!area) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    vmdk_header_encode(h, area);
    memcpy(area + VMDK_SECTOR, desc.data, desc.len);
    if (diskfmt_write_exact(v->fd, area, area_len, 0, d->path, err) < 0)
        goto out;
    ret = 0;
out:
    free(area);
    p2v_buf_release(&desc);
    return ret;
}

static int create_sparse(struct diskfmt *d, struct vmdk *v, uint64_t grain_sectors,
                         struct p2v_err *err)
{
    struct vmdk_header h;
    struct vmdk_layout l;
    memset(&h, 0, sizeof h);
    h.version = 1;
    h.flags = VMDK_FLAG_NL_DETECT | VMDK_FLAG_RGD;
    h.capacity = v->capacity;
    h.grain_size = grain_sectors;
    h.desc_offset = 1;
    h.desc_size = VMDK_DESC_SECTORS;
    h.gtes_per_gt = VMDK_GTES_MAX;
    if (vmdk_layout_compute(&h, d->path, &l, err) < 0)
        return -1;
    /* VDF "Hosted Sparse Extents" layout: header, descriptor, redundant directory,
     * directory; grain tables and grains are appended as they are needed */
    h.rgd_offset = 1 + VMDK_DESC_SECTORS;
    h.gd_offset = h.rgd_offset + l.gd_sectors;
    if (!p2v_align_up(h.gd_offset + l.gd_sectors, grain_sectors, &h.overhead))
        abort(); /* bounded by the capacity cap */
    /* VDF "Hosted Sparse Extents" uncleanShutdown: set from the first byte on, cleared
     * last at close */
    h.unclean = 1;
    if (write_head(d, v, &h, "monolithicSparse", err) < 0)
        return -1;
    if (ftruncate(v->fd, (off_t)(h.overhead * VMDK_SECTOR)) < 0)
        return p2v_err_errno(err, "cannot set the size of '%s'", d->path);
    if (diskfmt_fdatasync(v->fd) < 0)
        return p2v_err_errno(err, "cannot flush '%s'", d->path);
    struct extent *e = &v->ext[0];
    struct sparse *sp = calloc(1, sizeof *sp);
    if (!sp)
        return p2v_err_set(err, ENOMEM, "out of memory");
    e->sp = sp;
    sp->h = h;
    sp->l = l;
    sp->has_rgd = true;
    sp->gd = calloc(l.gd_entries, sizeof *sp->gd);
    sp->rgd = calloc(l.gd_entries, sizeof *sp->rgd);
    if (!sp->gd || !sp->rgd)
        return p2v_err_set(err, ENOMEM, "out of memory");
    sp->n_meta = 4;
    sp->meta[0] = (struct region){0, 1, "header"};
    sp->meta[1] = (struct region){1, VMDK_DESC_SECTORS, "embedded descriptor"};
    sp->meta[2] = (struct region){h.rgd_offset, l.gd_sectors, "redundant grain directory"};
    sp->meta[3] = (struct region){h.gd_offset, l.gd_sectors, "grain directory"};
    sp->alloc = h.overhead;
    sp->gd_dirty = true;
    sp->unclean_set = true;
    e->file_size = h.overhead * VMDK_SECTOR;
    v->wmode = W_SPARSE;
    d->block_size = (uint32_t)l.grain_bytes;
    return 0;
}

static int create_stream(struct diskfmt *d, struct vmdk *v, uint64_t grain_sectors,
                         struct p2v_err *err)
{
    struct vmdk_header h;
    memset(&h, 0, sizeof h);
    h.version = 3;
    h.flags = VMDK_FLAG_NL_DETECT | VMDK_FLAG_COMPRESSED | VMDK_FLAG_MARKERS;
    h.capacity = v->capacity;
    h.grain_size = grain_sectors;
    h.desc_offset = 1;
    h.desc_size = VMDK_DESC_SECTORS;
    h.gtes_per_gt = VMDK_GTES_MAX;
    h.gd_offset = VMDK_GD_AT_END; /* stream-optimized: the footer says where */
    h.compress = VMDK_COMPRESS_DEFLATE;
    if (!p2v_align_up(1 + VMDK_DESC_SECTORS, grain_sectors, &h.overhead))
        abort();
    if (write_head(d, v, &h, "streamOptimized", err) < 0)
        return -1;
    if (ftruncate(v->fd, (off_t)(h.overhead * VMDK_SECTOR)) < 0)
        return p2v_err_errno(err, "cannot set the size of '%s'", d->path);
    struct vmdk_stream_params p = {
        .fd = v->fd,
        .path = d->path,
        .header = h,
        .start_sector = h.overhead,
        .threads = VMDK_STREAM_THREADS,
        .level = VMDK_STREAM_LEVEL,
    };
    if (vmdk_stream_start(&p, &v->st, err) < 0)
        return -1;
    v->wmode = W_STREAM;
    d->sequential = true;
    d->write_align = (uint32_t)(grain_sectors * VMDK_SECTOR);
    d->block_size = d->write_align;
    return 0;
}

static int create_flat(struct diskfmt *d, struct vmdk *v, struct p2v_err *err)
{
    const char *base = base_of(d->path);
    size_t bl = strlen(base);
    if (bl > 5 && strcasecmp(base + bl - 5, ".vmdk") == 0)
        bl -= 5;
    char name[VMDK_NAME_MAX + 1];
    int n = snprintf(name, sizeof name, "%.*s-flat.vmdk", (int)bl, base);
    if (n < 0 || (size_t)n >= sizeof name)
        return p2v_err_set(err, ENAMETOOLONG, "'%s': name too long for its flat extent",
                           d->path);
    struct extent *e = &v->ext[0];
    e->type = VMDK_EXT_FLAT;
    snprintf(e->type_name, sizeof e->type_name, "FLAT");
    free(e->name);
    free(e->path);
    e->name = strdup(name);
    e->path = join_path(v->dir, name);
    if (!e->name || !e->path)
        return p2v_err_set(err, ENOMEM, "out of memory");
    e->fd = openat(v->dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (e->fd < 0)
        return p2v_err_errno(err, "cannot create extent file '%s'", e->path);
    e->own_fd = true;
    if (ftruncate(e->fd, (off_t)e->vsize) < 0)
        return p2v_err_errno(err, "cannot set the size of '%s' to %llu", e->path,
                             (unsigned long long)e->vsize);
    e->file_size = e->vsize;
    v->wmode = W_FLAT_CREATE;
    return 0;
}

static int vmdk_create(struct diskfmt *d, const struct diskfmt_create_opts *opts,
                       struct p2v_err *err)
{
    const char *sub = opts->subformat ? opts->subformat : "monolithicSparse";
    const char *ad = vmdk_adapter_canonical(opts->adapter_type, NULL);
    uint64_t grain = opts->cluster_size ? opts->cluster_size : VMDK_DEFAULT_GRAIN;
    int ret = -1;
    enum { S_SPARSE, S_STREAM, S_FLAT } kind;
    if (strcasecmp(sub, "monolithicSparse") == 0)
        kind = S_SPARSE;
    else if (strcasecmp(sub, "streamOptimized") == 0)
        kind = S_STREAM;
    else if (strcasecmp(sub, "monolithicFlat") == 0)
        kind = S_FLAT;
    else
        return p2v_err_set(err, ENOTSUP, "'%s': cannot create vmdk subformat '%s' "
                           "(monolithicSparse, streamOptimized or monolithicFlat)",
                           d->path, sub);
    if (!ad)
        return p2v_err_set(err, EINVAL, "'%s': unknown adapter type '%s' (ide, lsilogic, "
                           "buslogic or pvscsi)", d->path, opts->adapter_type);
    if (!p2v_is_pow2(grain) || grain < VMDK_GRAIN_MIN ||
        grain > VMDK_GRAIN_SECTORS_MAX * VMDK_SECTOR)
        return p2v_err_set(err, EINVAL, "'%s': grain size %llu is not a power of two "
                           "between %u and %u", d->path, (unsigned long long)grain,
                           VMDK_GRAIN_MIN, VMDK_GRAIN_SECTORS_MAX * VMDK_SECTOR);
    uint64_t max = kind == S_FLAT ? VMDK_DISK_SECTORS_MAX * VMDK_SECTOR
                                  : VMDK_SPARSE_CREATE_MAX;
    if (opts->size == 0 || opts->size > max)
        return p2v_err_set(err, EINVAL, "'%s': size %llu is not between 1 and %llu bytes "
                           "for %s", d->path, (unsigned long long)opts->size,
                           (unsigned long long)max, sub);
    struct vmdk *v = vmdk_new(d->path, err);
    if (!v)
        return -1;
    snprintf(v->adapter, sizeof v->adapter, "%s", ad);
    snprintf(v->create_type, sizeof v->create_type, "%s",
             kind == S_SPARSE ? "monolithicSparse"
             : kind == S_STREAM ? "streamOptimized"
                                : "monolithicFlat");
    snprintf(v->hw_version, sizeof v->hw_version, "4");
    /* VMDK sizes are whole sectors: round up, as qemu does */
    v->capacity = sectors_of(opts->size);
    if (random_cid(&v->cid, err) < 0)
        goto out;
    v->has_cid = true;
    v->fd = open(d->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (v->fd < 0) {
        p2v_err_errno(err, "cannot create '%s'", d->path);
        goto out;
    }
    v->ext = calloc(1, sizeof *v->ext);
    if (!v->ext) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    v->n_ext = 1;
    struct extent *e = &v->ext[0];
    e->type = VMDK_EXT_SPARSE;
    e->access = VMDK_ACCESS_RW;
    snprintf(e->type_name, sizeof e->type_name, "SPARSE");
    e->fd = v->fd;
    e->vsize = v->capacity * VMDK_SECTOR;
    e->name = strdup(base_of(d->path));
    e->path = strdup(d->path);
    if (!e->name || !e->path) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    d->size = e->vsize;
    v->monolithic = kind != S_FLAT;
    int r = kind == S_SPARSE ? create_sparse(d, v, grain / VMDK_SECTOR, err)
            : kind == S_STREAM ? create_stream(d, v, grain / VMDK_SECTOR, err)
                               : create_flat(d, v, err);
    if (r < 0)
        goto out;
    d->priv = v;
    v = NULL;
    ret = 0;
out:
    vmdk_free(v);
    return ret;
}

/* monolithicFlat: the descriptor is written only now, after the data is on disk, so
 * that a writer that dies leaves an empty descriptor that no reader takes for a disk. */
static int finish_flat(struct diskfmt *d, struct vmdk *v, struct p2v_err *err)
{
    struct p2v_buf desc = P2V_BUF_INIT;
    struct extent *e = &v->ext[0];
    struct vmdk_desc_out_extent x = {.sectors = v->capacity, .type = "FLAT", .name = e->name};
    int ret = -1;
    if (diskfmt_fdatasync(e->fd) < 0) {
        p2v_err_errno(err, "cannot flush '%s'", e->path);
        goto out;
    }
    if (vmdk_desc_format(&desc, v->cid, "monolithicFlat", &x, 1, v->capacity, v->adapter,
                         err) < 0)
        goto out;
    if (diskfmt_write_exact(v->fd, desc.data, desc.len, 0, d->path, err) < 0)
        goto out;
    if (ftruncate(v->fd, (off_t)desc.len) < 0 || diskfmt_fdatasync(v->fd) < 0) {
        p2v_err_errno(err, "cannot write the descriptor '%s'", d->path);
        goto out;
    }
    ret = 0;
out:
    p2v_buf_release(&desc);
    return ret;
}

/* monolithicSparse (and sparse extents opened for writing): tables out, data synced,
 * then uncleanShutdown cleared and synced: the last change made. */
static int finish_sparse(struct vmdk *v, struct p2v_err *err)
{
    if (sparse_flush(v, err) < 0 || sync_all(v, err) < 0)
        return -1;
    for (size_t i = 0; i < v->n_ext; i++) {
        struct extent *e = &v->ext[i];
        if (!e->sp || !e->sp->unclean_set)
            continue;
        uint8_t zero = 0;
        if (diskfmt_write_exact(e->fd, &zero, 1, VMDK_HEADER_UNCLEAN_OFFSET, e->path, err) < 0)
            return -1;
        if (diskfmt_fdatasync(e->fd) < 0)
            return p2v_err_errno(err, "cannot flush '%s'", e->path);
        e->sp->unclean_set = false;
    }
    return 0;
}

static int vmdk_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    struct vmdk *v = d->priv;
    int ret = 0;
    if (!v)
        return 0;
    if (v->wmode == W_STREAM) {
        if (finish)
            ret = vmdk_stream_finish(v->st, err);
        else
            vmdk_stream_abandon(v->st);
        v->st = NULL;
    } else if (finish && v->wmode == W_SPARSE) {
        ret = finish_sparse(v, err);
    } else if (finish && v->wmode == W_FLAT_CREATE) {
        ret = finish_flat(d, v, err);
    } else if (finish && v->wmode == W_FLAT) {
        ret = sync_all(v, err);
    }
    vmdk_free(v);
    d->priv = NULL;
    return ret;
}

/* ------------------------------------------------------------------ info */

static const char *access_name(enum vmdk_access a)
{
    return a == VMDK_ACCESS_RW ? "RW" : a == VMDK_ACCESS_RDONLY ? "RDONLY" : "NOACCESS";
}

static int vmdk_info(struct diskfmt *d, struct p2v_json *j, struct p2v_err *err)
{
    struct vmdk *v = d->priv;
    char cid[16];
    p2v_json_kv_string(j, "subformat", v->create_type[0] ? v->create_type : "unknown");
    if (v->adapter[0])
        p2v_json_kv_string(j, "adapter-type", v->adapter);
    if (v->hw_version[0])
        p2v_json_kv_string(j, "hw-version", v->hw_version);
    if (v->has_cid) {
        snprintf(cid, sizeof cid, "%08x", v->cid);
        p2v_json_kv_string(j, "cid", cid);
    }
    p2v_json_kv_string(j, "parent-cid", "ffffffff");
    for (size_t i = 0; i < v->n_ext; i++)
        if (v->ext[i].sp) {
            p2v_json_kv_u64(j, "grain-size", v->ext[i].sp->l.grain_bytes);
            break;
        }
    p2v_json_key(j, "extents");
    p2v_json_array_begin(j);
    for (size_t i = 0; i < v->n_ext; i++) {
        struct extent *e = &v->ext[i];
        p2v_json_object_begin(j);
        if (e->type != VMDK_EXT_ZERO)
            p2v_json_kv_string(j, "file", e->name);
        p2v_json_kv_string(j, "type", e->type_name);
        p2v_json_kv_string(j, "access", access_name(e->access));
        p2v_json_kv_u64(j, "virtual-offset", e->vstart);
        p2v_json_kv_u64(j, "size", e->vsize);
        if (e->type == VMDK_EXT_FLAT)
            p2v_json_kv_u64(j, "offset", e->flat_off);
        if (e->sp) {
            p2v_json_kv_u64(j, "version", e->sp->h.version);
            p2v_json_kv_bool(j, "compressed", e->sp->compressed);
            p2v_json_kv_u64(j, "grain-size", e->sp->l.grain_bytes);
            p2v_json_kv_bool(j, "zeroed-grain-entries", e->sp->zero_gte);
            p2v_json_kv_bool(j, "redundant-grain-directory", e->sp->has_rgd);
        }
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    return 0;
}

/* ------------------------------------------------------------------ check */

struct interval {
    uint64_t start;
    uint32_t count;
    uint32_t kind; /* 0 metadata, 1 grain table, 2 grain */
};

static int interval_cmp(const void *a, const void *b)
{
    const struct interval *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

struct checker {
    struct diskfmt_check *res;
    struct interval *iv;
    size_t n, cap;
    bool overflow;
};

static void check_error(struct checker *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void check_error(struct checker *c, const char *fmt, ...)
{
    c->res->errors++;
    if (c->res->errors == 1) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->res->first_error, sizeof c->res->first_error, fmt, ap);
        va_end(ap);
    }
}

static int iv_add(struct checker *c, uint64_t start, uint64_t count, uint32_t kind)
{
    if (c->overflow)
        return 0;
    if (c->n == c->cap) {
        if (c->cap >= VMDK_CHECK_INTERVALS_MAX) {
            c->overflow = true; /* too many to hold: skip the overlap test */
            return 0;
        }
        size_t nc = c->cap ? c->cap * 2 : 1024;
        struct interval *p = realloc(c->iv, nc * sizeof *p);
        if (!p)
            return -1;
        c->iv = p;
        c->cap = nc;
    }
    c->iv[c->n++] = (struct interval){start, (uint32_t)P2V_MIN(count, UINT32_MAX), kind};
    return 0;
}

static int check_sparse(struct vmdk *v, size_t ei, struct checker *c, struct p2v_err *err)
{
    struct extent *e = &v->ext[ei];
    struct sparse *sp = e->sp;
    uint32_t gtes = sp->h.gtes_per_gt;
    uint64_t fsec = sectors_of(e->file_size);
    uint32_t *gt = malloc(sp->l.gt_bytes), *rgt = malloc(sp->l.gt_bytes);
    int ret = -1;
    if (!gt || !rgt) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    c->n = 0;
    c->overflow = false;
    for (unsigned i = 0; i < sp->n_meta; i++)
        if (iv_add(c, sp->meta[i].start, sp->meta[i].count, 0) < 0)
            goto nomem;
    for (uint32_t t = 0; t < sp->l.gd_entries; t++) {
        bool has = sp->gd[t] != 0, rhas = sp->has_rgd && sp->rgd[t] != 0;
        if (sp->has_rgd && has != rhas) {
            check_error(c, "'%s': grain directory entry %u and its redundant copy disagree "
                        "(%u vs %u)", e->path, t, sp->gd[t], sp->rgd[t]);
            continue;
        }
        if (!has)
            continue;
        if (iv_add(c, sp->gd[t], sp->l.gt_sectors, 1) < 0 ||
            (rhas && iv_add(c, sp->rgd[t], sp->l.gt_sectors, 1) < 0))
            goto nomem;
        if (read_table(e->fd, e->path, sp->gd[t], gtes, gt, err) < 0)
            goto out;
        if (rhas) {
            if (read_table(e->fd, e->path, sp->rgd[t], gtes, rgt, err) < 0)
                goto out;
            if (memcmp(gt, rgt, sp->l.gt_bytes) != 0)
                check_error(c, "'%s': grain table %u (sector %u) differs from its redundant "
                            "copy (sector %u)", e->path, t, sp->gd[t], sp->rgd[t]);
        }
        for (uint32_t i = 0; i < gtes; i++) {
            uint64_t g = (uint64_t)t * gtes + i;
            uint32_t x = gt[i];
            if (x == 0 || (x == VMDK_GTE_ZEROED && sp->zero_gte))
                continue;
            if (g >= sp->l.grains) {
                check_error(c, "'%s': grain table %u maps grain %llu past the capacity",
                            e->path, t, (unsigned long long)g);
                continue;
            }
            uint64_t len = sp->h.grain_size;
            if (sp->compressed) {
                uint8_t mh[VMDK_GRAIN_MARKER_SIZE];
                struct vmdk_marker m = {0, 0, 0};
                if (!p2v_range_ok((uint64_t)x * VMDK_SECTOR, sizeof mh, e->file_size) ||
                    p2v_pread_full(e->fd, mh, sizeof mh, (uint64_t)x * VMDK_SECTOR) !=
                        (ssize_t)sizeof mh) {
                    check_error(c, "'%s': grain %llu points outside the file (sector %u)",
                                e->path, (unsigned long long)g, x);
                    continue;
                }
                if (vmdk_marker_parse(mh, sizeof mh, &m) < 0 || m.size == 0 ||
                    m.val != g * sp->h.grain_size ||
                    m.size > VMDK_COMPRESSED_MAX(sp->l.grain_bytes)) {
                    check_error(c, "'%s': grain %llu at sector %u has a bad grain marker "
                                "(sector %llu, %u bytes)", e->path, (unsigned long long)g,
                                x, (unsigned long long)m.val, m.size);
                    continue;
                }
                len = sectors_of(VMDK_GRAIN_MARKER_SIZE + (uint64_t)m.size);
            }
            const char *hit = meta_hit(sp, x, len);
            if (hit) {
                check_error(c, "'%s': grain %llu points into the %s (sector %u)", e->path,
                            (unsigned long long)g, hit, x);
                continue;
            }
            if (x >= fsec || (sp->compressed && !p2v_range_ok(x, len, fsec))) {
                check_error(c, "'%s': grain %llu points outside the file (sector %u)",
                            e->path, (unsigned long long)g, x);
                continue;
            }
            c->res->allocated += sp->l.grain_bytes;
            if (iv_add(c, x, len, 2) < 0)
                goto nomem;
        }
    }
    if (!c->overflow && c->n > 1) {
        qsort(c->iv, c->n, sizeof *c->iv, interval_cmp);
        uint64_t end = c->iv[0].start + c->iv[0].count;
        size_t last = 0;
        for (size_t i = 1; i < c->n; i++) {
            const struct interval *a = &c->iv[last], *b = &c->iv[i];
            static const char *const kinds[] = {"metadata", "grain table", "grain"};
            if (b->start < end)
                check_error(c, "'%s': %s at sector %llu overlaps %s at sector %llu",
                            e->path, kinds[b->kind], (unsigned long long)b->start,
                            kinds[a->kind], (unsigned long long)a->start);
            if (b->start + b->count > end) {
                end = b->start + b->count;
                last = i;
            }
        }
    }
    ret = 0;
    goto out;
nomem:
    p2v_err_set(err, ENOMEM, "out of memory");
out:
    free(gt);
    free(rgt);
    return ret;
}

static int vmdk_check(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err)
{
    struct vmdk *v = d->priv;
    struct checker c = {.res = res};
    int ret = -1;
    if (v->wmode == W_STREAM)
        return p2v_err_set(err, ENOTSUP, "'%s': cannot check a streamOptimized image "
                           "being written", d->path);
    if (v->wmode == W_SPARSE && sparse_flush(v, err) < 0)
        return -1;
    for (size_t i = 0; i < v->n_ext; i++) {
        struct extent *e = &v->ext[i];
        if (e->type == VMDK_EXT_FLAT)
            res->allocated += P2V_MIN(diskfmt_file_allocated(e->fd), e->vsize);
        else if (e->type == VMDK_EXT_SPARSE && check_sparse(v, i, &c, err) < 0)
            goto out;
    }
    ret = 0;
out:
    free(c.iv);
    return ret;
}

const struct diskfmt_ops diskfmt_vmdk_ops = {
    .name = "vmdk",
    .probe = vmdk_probe,
    .open = vmdk_open,
    .create = vmdk_create,
    .pread = vmdk_pread,
    .pwrite = vmdk_pwrite,
    .zero = vmdk_zero,
    .block_status = vmdk_block_status,
    .flush = vmdk_flush,
    .close = vmdk_close,
    .info = vmdk_info,
    .check = vmdk_check,
};
