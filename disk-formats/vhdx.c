/* vhdx.c: the VHDX driver of libdiskfmt (read only; [MS-VHDX], "MS-VHDX" below, its
 * sections by number; see vhd.h).
 *
 * Before any data is read, the file's structures are read and checked here: the file
 * identifier, both headers (CRC-32C, the current one by sequence number), the log (an
 * image whose log still holds entries to replay is refused: its metadata may be stale),
 * both region tables (CRC-32C; the regions inside the file, apart from each other and
 * from the header section and the log), the metadata (every item inside its region;
 * block size, sector sizes and virtual size sane; differencing disks refused: their data
 * lives partly in a parent) and the whole BAT (every allocated block inside the file and
 * apart from every other block and structure). Only then does libvhdi (vhd-vhdi.c) read
 * the data, since it trusts what it reads.
 *
 * libvhdi 20210425 finds the BAT entries of a "fixed" VHDX (LeaveBlockAllocated set)
 * without skipping the sector bitmap entries that MS-VHDX 2.5 interleaves for every
 * disk type, so that it reads the wrong blocks past the first chunk (4 GiB with 1 MiB
 * blocks); and it refuses a file whose first or second header is damaged, which
 * MS-VHDX 2.2.2 allows (the other header is then current). Such images are read here,
 * straight from the checked BAT.
 *
 * Block status comes from the BAT: blocks NOT_PRESENT, UNDEFINED, ZERO and UNMAPPED read
 * as zeros (MS-VHDX 2.5.1.1 allows it, and libvhdi does it), FULLY_PRESENT ones are data.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfmt-int.h"
#include "vhd.h"

/* Bytes of the log read at a time while looking for entries. */
#define VHDX_LOG_CHUNK VHDX_MIB

/* What the checks found. */
struct vhdx_state {
    struct vhdx_header hdr;
    unsigned cur;            /* the current header: 1 or 2 */
    bool header_damaged;     /* the other one is not valid */
    struct vhdx_region bat_r, meta_r;
    struct vhdx_meta m;
    struct vhdx_layout l;
    uint64_t *bat;           /* the payload blocks' entries, l.payload_blocks */
    uint64_t allocated;      /* blocks FULLY_PRESENT */
};

struct vhdx {
    int fd;
    uint64_t file_size;
    struct vhdx_state s;
    struct vhd_vhdi *vhdi;   /* NULL: read directly from the BAT */
};


/* ------------------------------------------------------------------ validation */

/* MS-VHDX 2.2.2: the current header is the valid one, or of two valid ones the one with
 * the greater sequence number (equal: the first, as libvhdi does). A header of a version
 * we do not know (checksum right) takes part: if it is current, the file is refused. */
static int pick_header(int fd, const char *path, struct vhdx_state *s, struct vhd_issues *is)
{
    uint8_t buf[2][VHDX_HEADER_SIZE]; /* 8 KiB */
    struct vhdx_header h[2];
    struct p2v_err e[2] = {{0}, {0}};
    bool ok[2], cand[2];
    uint64_t seq[2];
    static const uint64_t where[2] = {VHDX_HEADER1_OFFSET, VHDX_HEADER2_OFFSET};
    for (int i = 0; i < 2; i++) {
        if (diskfmt_read_exact(fd, buf[i], sizeof buf[i], where[i], path, is->err) < 0)
            return -2;
        ok[i] = vhdx_header_parse(buf[i], sizeof buf[i], path, where[i], &h[i], &e[i]) == 0;
        /* ENOTSUP comes only once signature and checksum are right */
        cand[i] = ok[i] || e[i].code == ENOTSUP;
        seq[i] = p2v_get_u64le(buf[i] + 8);
    }
    if (!cand[0] && !cand[1]) {
        /* the second message without its "'path': " prefix */
        const char *second = strstr(e[1].msg, "': ");
        vhd_issue(is, e[0].code ? e[0].code : EINVAL, "%s; %s", e[0].msg,
                  second ? second + 3 : e[1].msg);
        return -1;
    }
    int c = !cand[0] ? 1 : !cand[1] ? 0 : seq[1] > seq[0] ? 1 : 0;
    if (!ok[c]) {
        vhd_issue(is, e[c].code, "%s", e[c].msg);
        return -1;
    }
    s->hdr = h[c];
    s->cur = (unsigned)c + 1;
    s->header_damaged = !ok[0] || !ok[1];
    return 0;
}

/* MS-VHDX 2.3: a log whose LogGuid is set may hold entries still to be replayed; an
 * entry starts on a 4 KiB boundary with "loge" and carries the LogGuid. Finding one,
 * we refuse the image: reading it without replaying could return stale metadata. */
static int check_log(int fd, uint64_t fsize, const char *path, struct vhdx_state *s,
                     struct vhd_issues *is)
{
    const struct vhdx_header *h = &s->hdr;
    if (vhdx_guid_is_zero(h->log_guid) || h->log_length == 0)
        return 0;
    if (!p2v_range_ok(h->log_offset, h->log_length, fsize)) {
        vhd_issue(is, EINVAL, "'%s': the VHDX log at offset %llu (%u bytes) lies outside "
                  "the file (%llu bytes)", path, (unsigned long long)h->log_offset,
                  h->log_length, (unsigned long long)fsize);
        return -1;
    }
    uint8_t *buf = malloc(VHDX_LOG_CHUNK);
    int ret = 0;
    if (!buf) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        return -2;
    }
    for (uint64_t pos = 0; pos < h->log_length && ret == 0; pos += VHDX_LOG_CHUNK) {
        size_t n = (size_t)P2V_MIN((uint64_t)VHDX_LOG_CHUNK, h->log_length - pos);
        if (diskfmt_read_exact(fd, buf, n, h->log_offset + pos, path, is->err) < 0) {
            ret = -2;
            break;
        }
        for (size_t k = 0; k + 64 <= n; k += VHDX_LOG_ENTRY_ALIGN)
            if (memcmp(buf + k, "loge", 4) == 0 && memcmp(buf + k + 32, h->log_guid, 16) == 0) {
                vhd_issue(is, ENOTSUP, "'%s': the VHDX log holds an entry to replay at "
                          "offset %llu (its writer did not close it): open and close it "
                          "read-write in Hyper-V, or run 'qemu-img check -r all', first",
                          path, (unsigned long long)(h->log_offset + pos + k));
                ret = -1;
                break;
            }
    }
    free(buf);
    return ret;
}

/* Both region tables: the first (which libvhdi uses) must be valid, and the second too
 * (libvhdi refuses a file without it); a difference between them only counts in check. */
static int read_regions(int fd, const char *path, struct vhdx_region_table *t,
                        struct vhd_issues *is)
{
    uint8_t *buf = malloc(2 * (size_t)VHDX_REGION_TABLE_SIZE);
    struct vhdx_region_table *t2 = malloc(sizeof *t2);
    struct p2v_err perr = {0};
    int ret = -1;
    if (!buf || !t2) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        ret = -2;
        goto out;
    }
    if (diskfmt_read_exact(fd, buf, 2 * (size_t)VHDX_REGION_TABLE_SIZE, VHDX_REGION1_OFFSET, path,
                   is->err) < 0) {
        ret = -2;
        goto out;
    }
    if (vhdx_region_table_parse(buf, VHDX_REGION_TABLE_SIZE, path, VHDX_REGION1_OFFSET, t,
                                &perr) < 0 ||
        vhdx_region_table_parse(buf + VHDX_REGION_TABLE_SIZE, VHDX_REGION_TABLE_SIZE, path,
                                VHDX_REGION2_OFFSET, t2, &perr) < 0) {
        vhd_issue(is, perr.code, "%s", perr.msg);
        goto out;
    }
    if (is->count && memcmp(buf + 8, buf + VHDX_REGION_TABLE_SIZE + 8, 8 + 32 * (size_t)t->n))
        vhd_issue(is, EINVAL, "'%s': the VHDX region tables at offsets %u and %u differ",
                  path, VHDX_REGION1_OFFSET, VHDX_REGION2_OFFSET);
    ret = 0;
out:
    free(buf);
    free(t2);
    return ret;
}

static int read_metadata(int fd, const char *path, struct vhdx_state *s,
                         struct vhd_issues *is)
{
    uint8_t *buf = malloc(VHDX_METADATA_TABLE_SIZE);
    struct vhdx_meta_table t;
    struct p2v_err perr = {0};
    uint64_t base = s->meta_r.offset;
    int ret = -1;
    if (!buf) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        return -2;
    }
    if (diskfmt_read_exact(fd, buf, VHDX_METADATA_TABLE_SIZE, base, path, is->err) < 0) {
        ret = -2;
        goto out;
    }
    if (vhdx_meta_table_parse(buf, VHDX_METADATA_TABLE_SIZE, s->meta_r.length, path, base,
                              &t, &perr) < 0)
        goto bad;
    memset(&s->m, 0, sizeof s->m);
    for (int id = VHDX_GUID_FILE_PARAMETERS; id < VHDX_GUID_PARENT_LOCATOR; id++) {
        const struct vhdx_item *it = &t.item[id];
        uint8_t item[16];
        if (!it->present)
            continue;
        /* the known items are at most 16 bytes: a longer one fails on its size alone */
        if (it->length <= sizeof item &&
            diskfmt_read_exact(fd, item, it->length, base + it->offset, path, is->err) < 0) {
            ret = -2;
            goto out;
        }
        if (vhdx_meta_item_parse((enum vhdx_guid_id)id, item, it->length, path,
                                 base + it->offset, &s->m, &perr) < 0)
            goto bad;
    }
    if (vhdx_meta_check(&t, &s->m, path, &perr) < 0)
        goto bad;
    ret = 0;
    goto out;
bad:
    vhd_issue(is, perr.code, "%s", perr.msg);
out:
    free(buf);
    return ret;
}

/* The BAT's payload entries into s->bat, and every one checked. */
static int read_bat(int fd, uint64_t fsize, const char *path, struct vhdx_state *s,
                    struct vhd_extent *meta, size_t n_meta, struct vhd_issues *is)
{
    const struct vhdx_layout *l = &s->l;
    uint64_t bs = s->m.block_size;
    struct vhd_extent *ext = NULL;
    uint8_t *raw = NULL;
    int ret = -1;
    if (l->bat_entries > s->bat_r.length / 8) {
        vhd_issue(is, EINVAL, "'%s': the VHDX BAT region at offset %llu (%u bytes) is too "
                  "small for the %llu entries of a %llu-byte disk in %llu-byte blocks", path,
                  (unsigned long long)s->bat_r.offset, s->bat_r.length,
                  (unsigned long long)l->bat_entries,
                  (unsigned long long)s->m.virtual_size, (unsigned long long)bs);
        return -1;
    }
    /* entries <= region length / 8 <= file size / 8: bounded by the file */
    s->bat = malloc((size_t)l->payload_blocks * sizeof *s->bat);
    raw = malloc((size_t)P2V_MIN(l->bat_entries * 8, (uint64_t)VHDX_MIB));
    if (!s->bat || !raw) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        ret = -2;
        goto out;
    }
    uint64_t b = 0;
    for (uint64_t i = 0; i < l->bat_entries; i += VHDX_MIB / 8) {
        uint64_t n = P2V_MIN(l->bat_entries - i, (uint64_t)VHDX_MIB / 8);
        if (diskfmt_read_exact(fd, raw, (size_t)n * 8, s->bat_r.offset + i * 8, path, is->err) < 0) {
            ret = -2;
            goto out;
        }
        for (uint64_t k = 0; k < n; k++) {
            /* every (chunk_ratio + 1)-th entry is a sector bitmap block's: not data */
            if ((i + k + 1) % (l->chunk_ratio + 1) == 0)
                continue;
            s->bat[b++] = p2v_get_u64le(raw + 8 * k);
        }
    }
    if (b != l->payload_blocks)
        abort(); /* bat_entries counts exactly the payload entries and bitmaps between */

    uint64_t fit = fsize / bs; /* disjoint whole blocks inside the file */
    s->allocated = 0;
    for (uint64_t i = 0; i < l->payload_blocks; i++) {
        unsigned st = VHDX_BAT_STATE(s->bat[i]);
        if (st == 4 || st == 5 || st == VHDX_PAYLOAD_PARTIALLY_PRESENT) {
            /* MS-VHDX 2.5.1.1: 4 and 5 are reserved; PARTIALLY_PRESENT needs a parent */
            if (vhd_issue(is, EINVAL, "'%s': VHDX BAT entry of block %llu has state %u, "
                          "invalid in a disk without a parent", path,
                          (unsigned long long)i, st) < 0)
                goto out;
            s->bat[i] &= ~(uint64_t)7; /* check goes on: read it as not present */
            continue;
        }
        if (st == VHDX_PAYLOAD_FULLY_PRESENT)
            s->allocated++;
    }
    if (s->allocated > fit) {
        vhd_issue(is, EINVAL, "'%s': the VHDX BAT allocates %llu blocks of %llu bytes; the "
                  "file holds at most %llu: they overlap", path,
                  (unsigned long long)s->allocated, (unsigned long long)bs,
                  (unsigned long long)fit);
        ret = is->count ? 0 : -1;
        goto out;
    }
    size_t n_ext = 0;
    ext = malloc((size_t)(s->allocated + n_meta) * sizeof *ext);
    if (!ext) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        ret = -2;
        goto out;
    }
    memcpy(ext, meta, n_meta * sizeof *ext);
    n_ext = n_meta;
    for (uint64_t i = 0; i < l->payload_blocks; i++) {
        if (VHDX_BAT_STATE(s->bat[i]) != VHDX_PAYLOAD_FULLY_PRESENT)
            continue;
        uint64_t off = VHDX_BAT_OFFSET(s->bat[i]);
        if (!p2v_range_ok(off, bs, fsize)) {
            if (vhd_issue(is, EINVAL, "'%s': VHDX BAT entry of block %llu points outside "
                          "the file (offset %llu, %llu bytes; the file has %llu)", path,
                          (unsigned long long)i, (unsigned long long)off,
                          (unsigned long long)bs, (unsigned long long)fsize) < 0)
                goto out;
            s->bat[i] &= ~(uint64_t)7;
            continue;
        }
        ext[n_ext++] = (struct vhd_extent){off, bs, "block", i};
    }
    s->allocated = n_ext - n_meta; /* blocks that hold data inside the file */
    if (vhd_extents_disjoint(ext, n_ext, path, is) < 0)
        goto out;
    ret = 0;
out:
    free(raw);
    free(ext);
    return ret;
}

/* Read and check everything (see the top of this file) into @s (s->bat allocated; the
 * caller frees it). Returns 0, -1 when a problem stopped it, -2 on an I/O or memory
 * error (in is->err); @is counting (check) goes on where it can. */
static int vhdx_validate(int fd, uint64_t fsize, const char *path, struct vhdx_state *s,
                         struct vhd_issues *is)
{
    uint8_t sig[8];
    struct vhdx_region_table *t = NULL;
    struct vhd_extent *meta = NULL;
    int r;

    memset(s, 0, sizeof *s);
    if (fsize < VHDX_HEADER_SECTION) {
        vhd_issue(is, EINVAL, "'%s': file of %llu bytes is too small for the 1 MiB VHDX "
                  "header section", path, (unsigned long long)fsize);
        return -1;
    }
    if (diskfmt_read_exact(fd, sig, sizeof sig, 0, path, is->err) < 0)
        return -2;
    if (memcmp(sig, "vhdxfile", 8) != 0) {
        vhd_issue(is, EINVAL, "'%s': no VHDX file identifier 'vhdxfile' at offset 0", path);
        return -1;
    }
    if ((r = pick_header(fd, path, s, is)) < 0 || (r = check_log(fd, fsize, path, s, is)) < 0)
        return r;
    if (!(t = malloc(sizeof *t))) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        return -2;
    }
    if ((r = read_regions(fd, path, t, is)) < 0)
        goto out;
    /* every structure inside the file, and none overlapping another (MS-VHDX 2.1) */
    r = -1;
    meta = malloc((t->n + 2) * sizeof *meta);
    if (!meta) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        r = -2;
        goto out;
    }
    size_t n_meta = 0;
    meta[n_meta++] = (struct vhd_extent){0, VHDX_HEADER_SECTION, "header section", 0};
    if (!vhdx_guid_is_zero(s->hdr.log_guid) && s->hdr.log_length)
        meta[n_meta++] = (struct vhd_extent){s->hdr.log_offset, s->hdr.log_length, "log", 0};
    for (uint32_t i = 0; i < t->n; i++) {
        const struct vhdx_region *e = &t->e[i];
        const char *what = (int)i == t->bat ? "BAT region"
                           : (int)i == t->metadata ? "metadata region"
                                                   : "region";
        if (!p2v_range_ok(e->offset, e->length, fsize)) {
            vhd_issue(is, EINVAL, "'%s': the VHDX %s at offset %llu (%u bytes) lies outside "
                      "the file (%llu bytes)", path, what, (unsigned long long)e->offset,
                      e->length, (unsigned long long)fsize);
            goto out;
        }
        meta[n_meta++] = (struct vhd_extent){e->offset, e->length, what, i};
    }
    s->bat_r = t->e[t->bat];
    s->meta_r = t->e[t->metadata];
    /* the structures must be sane before the BAT is read through them */
    struct vhd_extent *copy = malloc(n_meta * sizeof *copy);
    if (!copy) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        r = -2;
        goto out;
    }
    memcpy(copy, meta, n_meta * sizeof *copy);
    r = vhd_extents_disjoint(copy, n_meta, path, is);
    free(copy);
    if (r < 0)
        goto out;
    if ((r = read_metadata(fd, path, s, is)) < 0)
        goto out;
    vhdx_layout_compute(&s->m, &s->l);
    r = read_bat(fd, fsize, path, s, meta, n_meta, is);
out:
    free(t);
    free(meta);
    return r;
}

/* ------------------------------------------------------------------ probe and open */

static int vhdx_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                      uint64_t file_size)
{
    if (head_len < 8 || memcmp(head, "vhdxfile", 8) != 0)
        return 0;
    /* a fixed VHD whose disk starts with a VHDX image (nested virtualisation) also
     * starts with "vhdxfile": its footer, a fixed disk exactly filling the file, says so */
    if (tail && vhd_footer_valid(tail, VHD_FOOTER_SIZE) &&
        p2v_get_u32be(tail + 60) == VHD_TYPE_FIXED &&
        p2v_get_u64be(tail + 48) + VHD_FOOTER_SIZE == file_size)
        return 50;
    return 100;
}

static void vhdx_free(struct vhdx *v)
{
    if (!v)
        return;
    vhd_vhdi_close(v->vhdi);
    if (v->fd >= 0)
        close(v->fd);
    free(v->s.bat);
    free(v);
}

static int vhdx_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    struct vhd_issues is = {.err = err};
    struct vhdx *v;
    struct stat st;
    int ret = -1;
    if (flags & DISKFMT_RDWR)
        return p2v_err_set(err, ENOTSUP, "'%s': writing VHDX images is not supported "
                           "(convert it instead)", d->path);
    if (!(v = calloc(1, sizeof *v)))
        return p2v_err_set(err, ENOMEM, "out of memory");
    v->fd = open(d->path, O_RDONLY | O_CLOEXEC);
    if (v->fd < 0) {
        p2v_err_errno(err, "cannot open '%s'", d->path);
        goto out;
    }
    if (fstat(v->fd, &st) < 0) {
        p2v_err_errno(err, "cannot stat '%s'", d->path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        p2v_err_set(err, EINVAL, "'%s' is not a regular file", d->path);
        goto out;
    }
    v->file_size = (uint64_t)st.st_size;
    if (vhdx_validate(v->fd, v->file_size, d->path, &v->s, &is) < 0)
        goto out;
    d->size = v->s.m.virtual_size;
    d->block_size = v->s.m.block_size;
    /* libvhdi misreads "fixed" images and refuses those with one damaged header (which
     * MS-VHDX 2.2.2 allows: the other is current): those we read from the checked BAT */
    if (!v->s.m.leave_allocated && !v->s.header_damaged &&
        vhd_vhdi_open(v->fd, d->path, d->size, &v->vhdi, err) < 0)
        goto out;
    d->priv = v;
    v = NULL;
    ret = 0;
out:
    vhdx_free(v);
    return ret;
}

/* ------------------------------------------------------------------ reading */

static int vhdx_pread(struct diskfmt *d, void *buf, size_t len, uint64_t off,
                      struct p2v_err *err)
{
    struct vhdx *v = d->priv;
    uint64_t bs = v->s.m.block_size;
    uint8_t *p = buf;
    /* block by block: only FULLY_PRESENT blocks hold data */
    while (len) {
        uint64_t b = off / bs, in = off % bs;
        size_t n = (size_t)P2V_MIN((uint64_t)len, bs - in);
        uint64_t e = v->s.bat[b];
        int r = 0;
        if (VHDX_BAT_STATE(e) != VHDX_PAYLOAD_FULLY_PRESENT)
            memset(p, 0, n);
        else if (v->vhdi)
            r = vhd_vhdi_read(v->vhdi, p, n, off, d->path, err);
        else
            r = diskfmt_read_exact(v->fd, p, n, VHDX_BAT_OFFSET(e) + in, d->path, err);
        if (r < 0)
            return -1;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static unsigned entry_status(uint64_t e)
{
    switch (VHDX_BAT_STATE(e)) {
    case VHDX_PAYLOAD_FULLY_PRESENT:
        return 0;
    case VHDX_PAYLOAD_ZERO:
        /* zeros by definition; space may still be allocated for it */
        return VHDX_BAT_OFFSET(e) != 0 ? DISKFMT_STATUS_ZERO
                                  : DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
    default:
        return DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
    }
}

static int vhdx_block_status(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                             unsigned *flags, struct p2v_err *err)
{
    struct vhdx *v = d->priv;
    uint64_t bs = v->s.m.block_size, done = 0;
    unsigned f0 = 0;
    while (done < len) {
        unsigned f = entry_status(v->s.bat[(off + done) / bs]);
        if (done == 0)
            f0 = f;
        else if (f != f0)
            break;
        done += P2V_MIN(len - done, bs - (off + done) % bs);
    }
    *run = done;
    *flags = f0;
    return 0;
}

static int vhdx_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    vhdx_free(d->priv);
    d->priv = NULL;
    return 0;
}

/* ------------------------------------------------------------------ info and check */

static int vhdx_info(struct diskfmt *d, struct p2v_json *j, struct p2v_err *err)
{
    struct vhdx *v = d->priv;
    const struct vhdx_meta *m = &v->s.m;
    char id[40];
    const uint8_t *g = m->disk_id;
    p2v_json_kv_string(j, "subformat", m->leave_allocated ? "fixed" : "dynamic");
    p2v_json_kv_u64(j, "block-size", m->block_size);
    p2v_json_kv_u64(j, "logical-sector-size", m->logical_sector);
    if (m->physical_sector)
        p2v_json_kv_u64(j, "physical-sector-size", m->physical_sector);
    /* MS-VHDX 2: GUIDs are stored with Data1..Data3 little-endian */
    snprintf(id, sizeof id, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6],
             g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
    p2v_json_kv_string(j, "virtual-disk-id", id);
    p2v_json_kv_u64(j, "current-header", v->s.cur);
    p2v_json_kv_string(j, "reader", v->vhdi ? "libvhdi" : "direct");
    p2v_json_kv_u64(j, "allocated-blocks", v->s.allocated);
    return 0;
}

static int vhdx_check(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err)
{
    struct vhdx *v = d->priv;
    struct vhdx_state s;
    struct vhd_issues is = {.count = true, .err = err};
    struct stat st;
    if (fstat(v->fd, &st) < 0)
        return p2v_err_errno(err, "cannot stat '%s'", d->path);
    /* read everything again from the file, counting every problem */
    int r = vhdx_validate(v->fd, (uint64_t)st.st_size, d->path, &s, &is);
    free(s.bat);
    if (r == -2)
        return -1;
    res->errors = is.n;
    if (is.n)
        snprintf(res->first_error, sizeof res->first_error, "%s", is.first);
    res->allocated = s.allocated * s.m.block_size;
    return 0;
}

const struct diskfmt_ops diskfmt_vhdx_ops = {
    .name = "vhdx",
    .probe = vhdx_probe,
    .open = vhdx_open,
    .block_status = vhdx_block_status,
    .pread = vhdx_pread,
    .close = vhdx_close,
    .info = vhdx_info,
    .check = vhdx_check,
};
