/* vhd.c: the VHD driver of libdiskfmt (Microsoft "Virtual Hard Disk Image Format
 * Specification", VHDSPEC below; see vhd.h).
 *
 * Reads fixed and dynamic VHDs. The footer, the dynamic disk header and the block
 * allocation table are read and checked here first (checksums, sizes, every block inside
 * the file and apart from the others and from the metadata); only then is data read.
 * Differencing disks are refused: their data lives partly in a parent.
 * The data of fixed disks is read through libvhdi (vhd-vhdi.c). That of dynamic disks is
 * read here, from the checked BAT and each block's sector bitmap (VHDSPEC "Block Bitmap":
 * a sector whose bit is clear reads as zeros): libvhdi 20210425 decodes VHD sector
 * bitmaps without masking the bit it shifts down, which makes one range of every sector
 * of a block (reads run sector by sector, through a linear search: 1 GiB took 42 s where
 * qemu takes 5) and takes a clear bit after a set one in the same byte for a set one.
 *
 * Writes fixed VHDs (what Azure and Hyper-V import): the raw data, then the footer, which
 * is written only at a successful close, after the data is on disk, so that a writer that
 * dies leaves no footer and no reader takes the file for a VHD. And dynamic VHDs: the
 * footer copy at offset 0, then (at close) the dynamic header at 512, the BAT, blocks
 * appended as they are first written (an all-zero block is not allocated), each a sector
 * bitmap and 2 MiB of data, and the footer at the end, last. The BAT is kept in memory
 * and written at close; until then the dynamic header is missing, so that neither we
 * (no footer at the end), libvhdi (idem) nor qemu (no "cxsparse" where the copy of the
 * footer points) take an unfinished file for a disk.
 *
 * The size is written exactly as asked (in whole sectors; qemu's force_size=on): the
 * geometry is VHDSPEC's "CHS Calculation" when it covers the disk exactly, else the
 * largest geometry, which readers that size disks by geometry read as "use Current
 * Size" (qemu does; VHDSPEC's own algorithm gives it for disks of 127 GiB or more).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fallocate */
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "diskfmt-int.h"
#include "vhd.h"

/* VHDSPEC "Hard Disk Footer Format": Creator Application and Host OS. "Wi2k" (Windows)
 * is what qemu and Hyper-V write; there is no code for Linux, and Windows tools check
 * it. The creator version is p2vkit's format writer version (1.0). */
#define VHD_CREATOR_APP "p2vk"
#define VHD_CREATOR_OS "Wi2k"
#define VHD_CREATOR_VERSION 0x00010000u
/* VHDSPEC "Hard Disk Footer Format": Time Stamp counts from 2000-01-01 00:00:00 UTC. */
#define VHD_EPOCH 946684800
/* Where our dynamic images put their metadata: the footer copy, the header, the BAT. */
#define VHD_DYN_HEADER_AT VHD_FOOTER_SIZE
#define VHD_BAT_AT (VHD_DYN_HEADER_AT + VHD_DYN_HEADER_SIZE)

/* What the checks found: the structures of a VHD, in host order. */
struct vhd_meta {
    struct vhd_footer f;
    bool dynamic;
    struct vhd_dyn_header h;
    uint32_t *bat;      /* host order, n_bat entries: the blocks covering the disk */
    uint32_t n_bat;
    uint32_t bitmap_size;
    uint64_t allocated; /* blocks in use */
};

struct vhd {
    int fd;
    uint64_t file_size;
    struct vhd_meta m;
    struct vhd_vhdi *vhdi; /* reading a fixed image through libvhdi */
    bool direct;           /* ... or directly (see vhd_open) */
    uint8_t *bmp;          /* reading a dynamic image: the sector bitmap of block */
    uint64_t bmp_block;    /* ... (UINT64_MAX: none yet) */
    bool creating;
    uint64_t next_free;    /* dynamic writer: where the next block's bitmap goes */
    uint64_t bat_area;     /* dynamic writer: bytes reserved for the BAT */
    uint8_t *bitmap;       /* dynamic writer: a full sector bitmap (all ones) */
};

/* ------------------------------------------------------------------ helpers */



static void vhd_free(struct vhd *v)
{
    if (!v)
        return;
    vhd_vhdi_close(v->vhdi);
    if (v->fd >= 0)
        close(v->fd);
    free(v->m.bat);
    free(v->bitmap);
    free(v->bmp);
    free(v);
}

/* The size of an open file or block device. */
static int file_size_of(int fd, const char *path, uint64_t *size, struct p2v_err *err)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return p2v_err_errno(err, "cannot stat '%s'", path);
    if (S_ISBLK(st.st_mode)) {
        uint64_t bytes;
        if (ioctl(fd, BLKGETSIZE64, &bytes) < 0)
            return p2v_err_errno(err, "cannot get the size of block device '%s'", path);
        *size = bytes;
        return 0;
    }
    if (!S_ISREG(st.st_mode))
        return p2v_err_set(err, EINVAL, "'%s' is neither a regular file nor a block device",
                           path);
    *size = (uint64_t)st.st_size;
    return 0;
}

/* The bytes of block @b that the disk uses: a last block may extend past the disk. */
static uint64_t block_used(const struct vhd_meta *m, uint64_t b)
{
    uint64_t start = b * m->h.block_size;
    return P2V_MIN((uint64_t)m->h.block_size, m->f.current_size - start);
}

/* ------------------------------------------------------------------ validation */

/* Read and check the structures of the VHD open on @fd (@fsize bytes) into @m (bat
 * allocated; the caller frees it). Problems go to @is: open stops at the first, check
 * counts them and goes on where it can. Returns 0 (checked; with @is counting, problems
 * may have been counted), -1 when a problem stopped it, -2 on an I/O or memory error (in
 * is->err). */
static int vhd_validate(int fd, uint64_t fsize, const char *path, struct vhd_meta *m,
                        struct vhd_issues *is)
{
    uint8_t tail[VHD_FOOTER_SIZE], head[VHD_FOOTER_SIZE], hbuf[VHD_DYN_HEADER_SIZE];
    struct p2v_err perr = {0};
    struct vhd_extent *ext = NULL;
    uint8_t *raw = NULL;
    int ret = -1;

    memset(m, 0, sizeof *m);
    if (fsize < VHD_FOOTER_SIZE) {
        vhd_issue(is, EINVAL, "'%s': file of %llu bytes is too small for a VHD (the footer "
                  "alone is 512)", path, (unsigned long long)fsize);
        return -1;
    }
    /* VHDSPEC "Hard Disk Footer Format": the footer is the file's last 512 bytes */
    uint64_t at = fsize - VHD_FOOTER_SIZE;
    if (diskfmt_read_exact(fd, tail, sizeof tail, at, path, is->err) < 0)
        return -2;
    if (vhd_footer_parse(tail, sizeof tail, path, at, &m->f, &perr) < 0) {
        /* a dynamic disk starts with a copy of its footer: if that is intact, the end of
         * the file is what went missing */
        if (at >= VHD_FOOTER_SIZE &&
            p2v_pread_full(fd, head, sizeof head, 0) == (ssize_t)sizeof head &&
            vhd_footer_valid(head, sizeof head) && p2v_get_u32be(head + 60) == VHD_TYPE_DYNAMIC)
            vhd_issue(is, EINVAL, "%s; the copy of the footer at offset 0 is intact: the "
                      "dynamic VHD is truncated or its writer did not finish", perr.msg);
        else
            vhd_issue(is, perr.code, "%s", perr.msg);
        return -1;
    }
    if (m->f.disk_type == VHD_TYPE_FIXED) {
        if (m->f.current_size > at) {
            vhd_issue(is, EINVAL, "'%s': fixed VHD is truncated: the footer at offset %llu "
                      "gives %llu bytes of data, the file holds %llu before it", path,
                      (unsigned long long)at, (unsigned long long)m->f.current_size,
                      (unsigned long long)at);
            return -1;
        }
        return 0;
    }

    m->dynamic = true;
    if (m->f.current_size > VHD_MAX_BYTES) {
        vhd_issue(is, EFBIG, "'%s': dynamic VHD of %llu bytes is larger than the VHD "
                  "maximum of %llu", path, (unsigned long long)m->f.current_size,
                  (unsigned long long)VHD_MAX_BYTES);
        return -1;
    }
    /* VHDSPEC "Dynamic Disk Header Format": the footer copy at 0 must match the footer;
     * readers use the one at the end, so a bad copy only matters to check */
    if (is->count) {
        if (diskfmt_read_exact(fd, head, sizeof head, 0, path, is->err) < 0)
            return -2;
        if (!vhd_footer_valid(head, sizeof head))
            vhd_issue(is, EINVAL, "'%s': the copy of the footer at offset 0 is missing or "
                      "corrupt", path);
        else if (memcmp(head, tail, sizeof head) != 0)
            vhd_issue(is, EINVAL, "'%s': the copy of the footer at offset 0 differs from "
                      "the footer at offset %llu", path, (unsigned long long)at);
    }
    uint64_t hoff = m->f.data_offset;
    if (hoff < VHD_FOOTER_SIZE || !p2v_range_ok(hoff, VHD_DYN_HEADER_SIZE, at)) {
        vhd_issue(is, EINVAL, "'%s': the footer at offset %llu places the dynamic disk "
                  "header at offset %llu, outside the file (%llu bytes)", path,
                  (unsigned long long)at, (unsigned long long)hoff,
                  (unsigned long long)fsize);
        return -1;
    }
    if (diskfmt_read_exact(fd, hbuf, sizeof hbuf, hoff, path, is->err) < 0)
        return -2;
    if (vhd_dyn_header_parse(hbuf, sizeof hbuf, path, hoff, &m->h, &perr) < 0) {
        vhd_issue(is, perr.code, "%s", perr.msg);
        return -1;
    }
    /* current_size <= 2040 GiB and block_size >= 512 KiB: fewer than 2^23 blocks */
    uint64_t needed = P2V_DIV_ROUND_UP(m->f.current_size, (uint64_t)m->h.block_size);
    if (m->h.max_entries < needed) {
        vhd_issue(is, EINVAL, "'%s': the BAT of %u entries of %u bytes (header at offset "
                  "%llu) covers less than the disk's %llu bytes", path, m->h.max_entries,
                  m->h.block_size, (unsigned long long)hoff,
                  (unsigned long long)m->f.current_size);
        return -1;
    }
    uint64_t bat_len = (uint64_t)m->h.max_entries * 4;
    if (!p2v_range_ok(m->h.table_offset, bat_len, at)) {
        vhd_issue(is, EINVAL, "'%s': the BAT at offset %llu (%u entries) lies outside the "
                  "file (%llu bytes before the footer)", path,
                  (unsigned long long)m->h.table_offset, m->h.max_entries,
                  (unsigned long long)at);
        return -1;
    }
    /* the metadata apart first: a BAT over the header would be read as entries */
    struct vhd_extent meta[3] = {
        {0, VHD_FOOTER_SIZE, "copy of the footer", 0},
        {hoff, VHD_DYN_HEADER_SIZE, "dynamic disk header", 0},
        {m->h.table_offset, bat_len, "BAT", 0},
    };
    if (vhd_extents_disjoint(meta, P2V_ARRAY_SIZE(meta), path, is) < 0)
        return -1;
    m->n_bat = (uint32_t)needed;
    m->bitmap_size = vhd_bitmap_size(m->h.block_size);
    m->bat = malloc((size_t)needed * sizeof *m->bat);
    raw = malloc((size_t)needed * 4);
    if (!m->bat || !raw) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        ret = -2;
        goto out;
    }
    if (diskfmt_read_exact(fd, raw, (size_t)needed * 4, m->h.table_offset, path, is->err) < 0) {
        ret = -2;
        goto out;
    }
    struct p2v_rd r;
    p2v_rd_init(&r, raw, (size_t)needed * 4);
    for (uint64_t i = 0; i < needed; i++)
        if (p2v_rd_u32be(&r, &m->bat[i]) < 0)
            abort(); /* the buffer holds exactly @needed entries */

    /* every block inside the file, and no two things claiming the same bytes: reads can
     * then trust the BAT, and the data they return is bounded by the file's size. More
     * blocks than fit in the file (all but the last are whole) cannot be disjoint. */
    uint64_t fit = at / ((uint64_t)m->bitmap_size + m->h.block_size) + 1, n_alloc = 0;
    for (uint64_t i = 0; i < needed; i++)
        if (m->bat[i] != VHD_BAT_UNUSED)
            n_alloc++;
    if (n_alloc > fit) {
        vhd_issue(is, EINVAL, "'%s': the BAT at offset %llu allocates %llu blocks; the "
                  "file holds at most %llu: they overlap", path,
                  (unsigned long long)m->h.table_offset, (unsigned long long)n_alloc,
                  (unsigned long long)fit);
        ret = is->count ? 0 : -1;
        goto out;
    }
    size_t n_ext = 0;
    ext = malloc((size_t)(n_alloc + 3) * sizeof *ext);
    if (!ext) {
        p2v_err_set(is->err, ENOMEM, "out of memory");
        ret = -2;
        goto out;
    }
    memcpy(ext, meta, sizeof meta); /* sorted by now, the same three */
    n_ext = P2V_ARRAY_SIZE(meta);
    for (uint64_t i = 0; i < needed; i++) {
        if (m->bat[i] == VHD_BAT_UNUSED)
            continue;
        uint64_t off = (uint64_t)m->bat[i] * VHD_SECTOR;
        uint64_t len = m->bitmap_size + block_used(m, i);
        if (!p2v_range_ok(off, len, at)) {
            if (vhd_issue(is, EINVAL, "'%s': BAT entry %llu points outside the file (block "
                          "of %llu bytes at offset %llu; the data ends at offset %llu)",
                          path, (unsigned long long)i, (unsigned long long)len,
                          (unsigned long long)off, (unsigned long long)at) < 0)
                goto out;
            continue;
        }
        ext[n_ext++] = (struct vhd_extent){off, len, "block", i};
    }
    m->allocated = n_ext - P2V_ARRAY_SIZE(meta); /* blocks that hold data in the file */
    if (vhd_extents_disjoint(ext, n_ext, path, is) < 0)
        goto out;
    ret = 0;
out:
    free(raw);
    free(ext);
    return ret;
}

/* ------------------------------------------------------------------ probe and open */

static int vhd_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                     uint64_t file_size)
{
    /* the footer ends every VHD; a dynamic one also starts with a copy (a dynamic image
     * cut short still probes as VHD, so that opening it says what is wrong). A bad
     * checksum is still most likely a damaged VHD. */
    if (tail && vhd_footer_cookie(tail, VHD_FOOTER_SIZE))
        return vhd_footer_valid(tail, VHD_FOOTER_SIZE) ? 100 : 60;
    if (head_len >= VHD_FOOTER_SIZE && vhd_footer_cookie(head, head_len))
        return vhd_footer_valid(head, VHD_FOOTER_SIZE) ? 100 : 60;
    return 0;
}

static struct vhd *vhd_new(struct p2v_err *err)
{
    struct vhd *v = calloc(1, sizeof *v);
    if (!v) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    v->fd = -1;
    return v;
}

static int vhd_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    struct vhd_issues is = {.err = err};
    struct vhd *v;
    int ret = -1;
    if (flags & DISKFMT_RDWR)
        return p2v_err_set(err, ENOTSUP, "'%s': changing a VHD image in place is not "
                           "supported (convert it instead)", d->path);
    if (!(v = vhd_new(err)))
        return -1;
    v->fd = open(d->path, O_RDONLY | O_CLOEXEC);
    if (v->fd < 0) {
        p2v_err_errno(err, "cannot open '%s'", d->path);
        goto out;
    }
    if (file_size_of(v->fd, d->path, &v->file_size, err) < 0)
        goto out;
    if (vhd_validate(v->fd, v->file_size, d->path, &v->m, &is) < 0)
        goto out;
    d->size = v->m.f.current_size;
    d->block_size = v->m.dynamic ? v->m.h.block_size : 4096;
    /* dynamic: read here (see the top of this file); fixed: through libvhdi, but for
     * one case: libvhdi takes a file that starts with "vhdxfile" for a VHDX, so a fixed
     * VHD whose disk starts with a VHDX image (nested virtualisation) is read directly,
     * as the raw bytes it is */
    uint8_t sig[8];
    if (v->m.dynamic) {
        v->bmp = malloc(v->m.bitmap_size);
        v->bmp_block = UINT64_MAX;
        if (!v->bmp) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out;
        }
    } else if (p2v_pread_full(v->fd, sig, sizeof sig, 0) == (ssize_t)sizeof sig &&
               memcmp(sig, "vhdxfile", 8) == 0) {
        v->direct = true;
    } else if (vhd_vhdi_open(v->fd, d->path, d->size, &v->vhdi, err) < 0) {
        goto out;
    }
    d->priv = v;
    v = NULL;
    ret = 0;
out:
    vhd_free(v);
    return ret;
}

/* ------------------------------------------------------------------ reading */

/* Read @len bytes at disk offset @off (inside one block; unallocated: zeros) of an image
 * being written. */
static int own_read(struct diskfmt *d, struct vhd *v, uint8_t *buf, size_t len,
                    uint64_t off, struct p2v_err *err)
{
    uint64_t at = off;
    if (v->m.dynamic) {
        uint64_t b = off / v->m.h.block_size;
        if (v->m.bat[b] == VHD_BAT_UNUSED) {
            memset(buf, 0, len);
            return 0;
        }
        at = (uint64_t)v->m.bat[b] * VHD_SECTOR + v->m.bitmap_size +
             off % v->m.h.block_size;
    }
    ssize_t n = p2v_pread_full(v->fd, buf, len, at);
    if (n < 0)
        return p2v_err_errno(err, "'%s': read error at offset %llu", d->path,
                             (unsigned long long)at);
    /* a block written only in part may end before the file does: the rest is zeros */
    memset(buf + n, 0, len - (size_t)n);
    return 0;
}

/* Read [in, in+len) of allocated block @b of an existing dynamic image: sector runs
 * whose bitmap bits are set from the file, the others as zeros. */
static int dyn_read(struct diskfmt *d, struct vhd *v, uint8_t *buf, size_t len,
                    uint64_t b, uint64_t in, struct p2v_err *err)
{
    uint64_t base = (uint64_t)v->m.bat[b] * VHD_SECTOR;
    if (v->bmp_block != b) {
        if (diskfmt_read_exact(v->fd, v->bmp, v->m.bitmap_size, base, d->path, err) < 0)
            return -1;
        v->bmp_block = b;
    }
    uint64_t data = base + v->m.bitmap_size, end = in + len;
    while (in < end) {
        /* VHDSPEC "Block Bitmap": bit 7 of byte 0 is the block's first sector */
        uint64_t s = in / VHD_SECTOR;
        bool set = (v->bmp[s / 8] >> (7 - s % 8)) & 1;
        uint64_t stop = (s + 1) * VHD_SECTOR;
        while (stop < end) {
            uint64_t t = stop / VHD_SECTOR;
            if ((bool)((v->bmp[t / 8] >> (7 - t % 8)) & 1) != set)
                break;
            stop += VHD_SECTOR;
        }
        size_t n = (size_t)(P2V_MIN(stop, end) - in);
        if (!set)
            memset(buf, 0, n);
        else if (diskfmt_read_exact(v->fd, buf, n, data + in, d->path, err) < 0)
            return -1;
        buf += n;
        in += n;
    }
    return 0;
}

static int vhd_pread(struct diskfmt *d, void *buf, size_t len, uint64_t off,
                     struct p2v_err *err)
{
    struct vhd *v = d->priv;
    uint8_t *p = buf;
    if (!v->m.dynamic) {
        if (v->creating)
            return own_read(d, v, p, len, off, err);
        if (v->direct)
            return diskfmt_read_exact(v->fd, p, len, off, d->path, err);
        return vhd_vhdi_read(v->vhdi, p, len, off, d->path, err);
    }
    while (len) {
        uint64_t b = off / v->m.h.block_size;
        size_t n = (size_t)P2V_MIN((uint64_t)len, v->m.h.block_size - off % v->m.h.block_size);
        int r;
        if (v->m.bat[b] == VHD_BAT_UNUSED) {
            memset(p, 0, n);
            r = 0;
        } else if (v->creating) {
            r = own_read(d, v, p, n, off, err);
        } else {
            r = dyn_read(d, v, p, n, b, off % v->m.h.block_size, err);
        }
        if (r < 0)
            return -1;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int vhd_block_status(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                            unsigned *flags, struct p2v_err *err)
{
    struct vhd *v = d->priv;
    if (!v->m.dynamic) {
        /* the data of a fixed VHD is a raw image at offset 0: its holes are holes */
        uint64_t end = off + len;
        off_t data = lseek(v->fd, (off_t)off, SEEK_DATA);
        if ((data < 0 && errno == ENXIO) || (data >= 0 && (uint64_t)data >= end)) {
            *run = len;
            *flags = DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
            return 0;
        }
        if (data < 0) /* SEEK_DATA unsupported, or a block device: all data */
            return diskfmt_status_all_data(d, off, len, run, flags, err);
        if ((uint64_t)data > off) {
            *run = (uint64_t)data - off;
            *flags = DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
            return 0;
        }
        off_t hole = lseek(v->fd, (off_t)off, SEEK_HOLE);
        if (hole < 0 || (uint64_t)hole <= off)
            hole = (off_t)end;
        *run = P2V_MIN((uint64_t)hole, end) - off;
        *flags = 0;
        return 0;
    }
    uint64_t bs = v->m.h.block_size, done = 0;
    unsigned f0 = 0;
    while (done < len) {
        uint64_t b = (off + done) / bs;
        unsigned f = v->m.bat[b] == VHD_BAT_UNUSED ? DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE
                                                   : 0;
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

/* ------------------------------------------------------------------ creating */

static int random_bytes(uint8_t *p, size_t n, struct p2v_err *err)
{
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return p2v_err_errno(err, "cannot get random bytes");
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The footer of a new image of @size bytes (whole sectors). */
static int footer_new(struct vhd_footer *f, uint64_t size, uint32_t type,
                      struct p2v_err *err)
{
    memset(f, 0, sizeof *f);
    f->features = VHD_FEATURES_RESERVED;
    f->version = VHD_VERSION_1_0;
    f->data_offset = type == VHD_TYPE_DYNAMIC ? VHD_DYN_HEADER_AT : VHD_NO_DATA_OFFSET;
    time_t now = time(NULL);
    f->timestamp = now > VHD_EPOCH ? (uint32_t)(now - VHD_EPOCH) : 0;
    memcpy(f->creator_app, VHD_CREATOR_APP, 4);
    f->creator_version = VHD_CREATOR_VERSION;
    memcpy(f->creator_os, VHD_CREATOR_OS, 4);
    f->original_size = f->current_size = size;
    uint64_t sectors = size / VHD_SECTOR;
    vhd_geometry(sectors, &f->cylinders, &f->heads, &f->sectors_per_track);
    if ((uint64_t)f->cylinders * f->heads * f->sectors_per_track != sectors) {
        /* the geometry cannot say the size: the largest one tells readers to use
         * Current Size (see the top of this file) */
        f->cylinders = 65535;
        f->heads = 16;
        f->sectors_per_track = 255;
    }
    f->disk_type = type;
    if (random_bytes(f->unique_id, sizeof f->unique_id, err) < 0)
        return -1;
    f->unique_id[6] = (uint8_t)((f->unique_id[6] & 0x0f) | 0x40); /* RFC 4122 version 4 */
    f->unique_id[8] = (uint8_t)((f->unique_id[8] & 0x3f) | 0x80);
    return 0;
}

static int vhd_create(struct diskfmt *d, const struct diskfmt_create_opts *opts,
                      struct p2v_err *err)
{
    const char *sub = opts->subformat ? opts->subformat : "fixed";
    bool dynamic;
    if (strcasecmp(sub, "fixed") == 0)
        dynamic = false;
    else if (strcasecmp(sub, "dynamic") == 0)
        dynamic = true;
    else
        return p2v_err_set(err, ENOTSUP, "'%s': cannot create vhd subformat '%s' (fixed or "
                           "dynamic)", d->path, sub);
    if (opts->compress != DISKFMT_COMPRESS_NONE)
        return p2v_err_set(err, ENOTSUP, "'%s': VHD images cannot be compressed", d->path);
    uint32_t block = opts->cluster_size ? opts->cluster_size : VHD_BLOCK_DEFAULT;
    if (!dynamic && opts->cluster_size)
        return p2v_err_set(err, EINVAL, "'%s': a fixed VHD has no block size", d->path);
    if (!p2v_is_pow2(block) || block < VHD_BLOCK_MIN || block > VHD_BLOCK_MAX)
        return p2v_err_set(err, EINVAL, "'%s': VHD block size %u is not a power of two from "
                           "%u to %u", d->path, block, VHD_BLOCK_MIN, VHD_BLOCK_MAX);
    /* VHD sizes are whole sectors: round up, as qemu does */
    uint64_t size;
    if (!p2v_align_up(opts->size, VHD_SECTOR, &size) || size == 0 || size > VHD_MAX_BYTES)
        return p2v_err_set(err, EINVAL, "'%s': size %llu is not between 1 and %llu bytes "
                           "(2040 GiB, the VHD maximum)", d->path,
                           (unsigned long long)opts->size, (unsigned long long)VHD_MAX_BYTES);
    struct vhd *v = vhd_new(err);
    int ret = -1;
    if (!v)
        return -1;
    v->creating = true;
    v->m.dynamic = dynamic;
    if (footer_new(&v->m.f, size, dynamic ? VHD_TYPE_DYNAMIC : VHD_TYPE_FIXED, err) < 0)
        goto out;
    v->fd = open(d->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (v->fd < 0) {
        p2v_err_errno(err, "cannot create '%s'", d->path);
        goto out;
    }
    struct stat st;
    if (fstat(v->fd, &st) < 0) {
        p2v_err_errno(err, "cannot stat '%s'", d->path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        /* the footer goes after the data: there is no room for it on a device */
        p2v_err_set(err, EINVAL, "'%s': VHD images are created as regular files", d->path);
        goto out;
    }
    if (!dynamic) {
        /* the data area, all holes: what is not written reads as zeros. No footer yet:
         * until close, this is no VHD */
        if (ftruncate(v->fd, (off_t)size) < 0) {
            p2v_err_errno(err, "cannot set the size of '%s' to %llu", d->path,
                          (unsigned long long)size);
            goto out;
        }
        d->block_size = 4096;
    } else {
        struct vhd_dyn_header *h = &v->m.h;
        h->data_offset = UINT64_MAX;
        h->table_offset = VHD_BAT_AT;
        h->version = VHD_VERSION_1_0;
        h->block_size = block;
        h->max_entries = (uint32_t)P2V_DIV_ROUND_UP(size, (uint64_t)block);
        v->m.n_bat = h->max_entries;
        v->m.bitmap_size = vhd_bitmap_size(block);
        v->bat_area = P2V_DIV_ROUND_UP((uint64_t)h->max_entries * 4, VHD_SECTOR) * VHD_SECTOR;
        v->next_free = VHD_BAT_AT + v->bat_area;
        v->m.bat = malloc((size_t)v->m.n_bat * sizeof *v->m.bat);
        v->bitmap = malloc(v->m.bitmap_size);
        if (!v->m.bat || !v->bitmap) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out;
        }
        memset(v->m.bat, 0xff, (size_t)v->m.n_bat * sizeof *v->m.bat);
        /* every sector of an allocated block is in the file: unwritten ones read zeros */
        memset(v->bitmap, 0xff, v->m.bitmap_size);
        uint8_t copy[VHD_FOOTER_SIZE];
        vhd_footer_encode(&v->m.f, copy);
        if (diskfmt_write_exact(v->fd, copy, sizeof copy, 0, d->path, err) < 0)
            goto out;
        d->block_size = block;
    }
    d->size = size;
    d->priv = v;
    v = NULL;
    ret = 0;
out:
    vhd_free(v);
    return ret;
}

/* A block for block @b of a dynamic image being written: appended, its bitmap first. */
static int alloc_block(struct diskfmt *d, struct vhd *v, uint64_t b, struct p2v_err *err)
{
    uint64_t at = v->next_free;
    uint64_t end = at + v->m.bitmap_size + v->m.h.block_size;
    /* VHDSPEC "Block Allocation Table": entries are 32-bit sector numbers (the size cap
     * keeps a full disk below this; the check is for safety) */
    if (at / VHD_SECTOR >= VHD_BAT_UNUSED)
        return p2v_err_set(err, EFBIG, "'%s': no room for block %llu: the file reached the "
                           "VHD limit of 2 TiB", d->path, (unsigned long long)b);
    if (diskfmt_write_exact(v->fd, v->bitmap, v->m.bitmap_size, at, d->path, err) < 0)
        return -1;
    v->m.bat[b] = (uint32_t)(at / VHD_SECTOR);
    v->m.allocated++;
    v->next_free = end;
    return 0;
}

static int vhd_pwrite(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                      struct p2v_err *err)
{
    struct vhd *v = d->priv;
    const uint8_t *p = buf;
    if (!v->creating)
        return p2v_err_set(err, EBADF, "'%s': image is open read-only", d->path);
    if (!v->m.dynamic)
        return diskfmt_write_exact(v->fd, p, len, off, d->path, err);
    uint64_t bs = v->m.h.block_size;
    while (len) {
        uint64_t b = off / bs, in = off % bs;
        size_t n = (size_t)P2V_MIN((uint64_t)len, bs - in);
        if (v->m.bat[b] == VHD_BAT_UNUSED) {
            /* an unallocated block already reads as zeros */
            if (p2v_is_zero(p, n))
                goto next;
            if (alloc_block(d, v, b, err) < 0)
                return -1;
        }
        uint64_t at = (uint64_t)v->m.bat[b] * VHD_SECTOR + v->m.bitmap_size + in;
        if (diskfmt_write_exact(v->fd, p, n, at, d->path, err) < 0)
            return -1;
    next:
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Make [at, at+len) of the file read as zeros: a hole where the file system can. */
static int zero_file(struct diskfmt *d, struct vhd *v, uint64_t at, uint64_t len,
                     struct p2v_err *err)
{
    static const uint8_t zeros[65536];
    if (fallocate(v->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)at,
                  (off_t)len) == 0)
        return 0;
    while (len) {
        size_t n = (size_t)P2V_MIN(len, (uint64_t)sizeof zeros);
        if (diskfmt_write_exact(v->fd, zeros, n, at, d->path, err) < 0)
            return -1;
        at += n;
        len -= n;
    }
    return 0;
}

static int vhd_zero(struct diskfmt *d, uint64_t off, uint64_t len, struct p2v_err *err)
{
    struct vhd *v = d->priv;
    if (!v->creating)
        return p2v_err_set(err, EBADF, "'%s': image is open read-only", d->path);
    if (!v->m.dynamic)
        return zero_file(d, v, off, len, err);
    uint64_t bs = v->m.h.block_size;
    while (len) {
        uint64_t b = off / bs, in = off % bs, n = P2V_MIN(len, bs - in);
        /* unallocated blocks read as zeros already; allocated ones keep their place */
        if (v->m.bat[b] != VHD_BAT_UNUSED &&
            zero_file(d, v, (uint64_t)v->m.bat[b] * VHD_SECTOR + v->m.bitmap_size + in, n,
                      err) < 0)
            return -1;
        off += n;
        len -= n;
    }
    return 0;
}

static int vhd_flush(struct diskfmt *d, struct p2v_err *err)
{
    struct vhd *v = d->priv;
    /* the data only: the image becomes valid at close, not before */
    if (v->creating && diskfmt_fdatasync(v->fd) < 0)
        return p2v_err_errno(err, "cannot flush '%s'", d->path);
    return 0;
}

/* Fixed: the data on disk first, then the footer after it, then that on disk. */
static int finish_fixed(struct diskfmt *d, struct vhd *v, struct p2v_err *err)
{
    uint8_t foot[VHD_FOOTER_SIZE];
    if (diskfmt_fdatasync(v->fd) < 0)
        return p2v_err_errno(err, "cannot flush '%s'", d->path);
    vhd_footer_encode(&v->m.f, foot);
    if (diskfmt_write_exact(v->fd, foot, sizeof foot, v->m.f.current_size, d->path, err) < 0)
        return -1;
    if (diskfmt_fdatasync(v->fd) < 0)
        return p2v_err_errno(err, "cannot flush '%s'", d->path);
    return 0;
}

/* Dynamic: the BAT, everything on disk, then the header and the footer, on disk. */
static int finish_dynamic(struct diskfmt *d, struct vhd *v, struct p2v_err *err)
{
    uint8_t *bat = malloc(v->bat_area);
    uint8_t hdr[VHD_DYN_HEADER_SIZE], foot[VHD_FOOTER_SIZE];
    int ret = -1;
    if (!bat)
        return p2v_err_set(err, ENOMEM, "out of memory");
    memset(bat, 0xff, v->bat_area); /* entries past the last block: unused */
    for (uint32_t i = 0; i < v->m.n_bat; i++)
        p2v_put_u32be(bat + 4 * (size_t)i, v->m.bat[i]);
    if (diskfmt_write_exact(v->fd, bat, v->bat_area, VHD_BAT_AT, d->path, err) < 0)
        goto out;
    if (diskfmt_fdatasync(v->fd) < 0) {
        p2v_err_errno(err, "cannot flush '%s'", d->path);
        goto out;
    }
    vhd_dyn_header_encode(&v->m.h, hdr);
    vhd_footer_encode(&v->m.f, foot);
    if (diskfmt_write_exact(v->fd, hdr, sizeof hdr, VHD_DYN_HEADER_AT, d->path, err) < 0 ||
        diskfmt_write_exact(v->fd, foot, sizeof foot, v->next_free, d->path, err) < 0)
        goto out;
    if (diskfmt_fdatasync(v->fd) < 0) {
        p2v_err_errno(err, "cannot flush '%s'", d->path);
        goto out;
    }
    ret = 0;
out:
    free(bat);
    return ret;
}

static int vhd_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    struct vhd *v = d->priv;
    int ret = 0;
    if (!v)
        return 0;
    if (finish && v->creating)
        ret = v->m.dynamic ? finish_dynamic(d, v, err) : finish_fixed(d, v, err);
    if (v->fd >= 0 && close(v->fd) < 0 && ret == 0 && finish && v->creating)
        ret = p2v_err_errno(err, "cannot close '%s'", d->path);
    v->fd = -1;
    vhd_free(v);
    d->priv = NULL;
    return ret;
}

/* ------------------------------------------------------------------ info and check */

/* A four-character code as text: non-printable bytes as '.', trailing NULs and spaces
 * dropped. */
static void fourcc(const char in[4], char out[5])
{
    int n = 0;
    for (int i = 0; i < 4; i++)
        out[n++] = in[i] >= 0x20 && in[i] < 0x7f ? in[i] : in[i] ? '.' : ' ';
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

static int vhd_info(struct diskfmt *d, struct p2v_json *j, struct p2v_err *err)
{
    struct vhd *v = d->priv;
    const struct vhd_footer *f = &v->m.f;
    char buf[64], cc[5];
    p2v_json_kv_string(j, "subformat", v->m.dynamic ? "dynamic" : "fixed");
    fourcc(f->creator_app, cc);
    p2v_json_kv_string(j, "creator-app", cc);
    snprintf(buf, sizeof buf, "%u.%u", f->creator_version >> 16, f->creator_version & 0xffff);
    p2v_json_kv_string(j, "creator-version", buf);
    fourcc(f->creator_os, cc);
    p2v_json_kv_string(j, "creator-host-os", cc);
    p2v_json_kv_u64(j, "timestamp", (uint64_t)f->timestamp + VHD_EPOCH);
    const uint8_t *u = f->unique_id;
    snprintf(buf, sizeof buf, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
             u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    p2v_json_kv_string(j, "unique-id", buf);
    p2v_json_key(j, "geometry");
    p2v_json_object_begin(j);
    p2v_json_kv_u64(j, "cylinders", f->cylinders);
    p2v_json_kv_u64(j, "heads", f->heads);
    p2v_json_kv_u64(j, "sectors-per-track", f->sectors_per_track);
    p2v_json_object_end(j);
    if (v->m.dynamic) {
        p2v_json_kv_u64(j, "block-size", v->m.h.block_size);
        p2v_json_kv_u64(j, "allocated-blocks", v->m.allocated);
    }
    return 0;
}

static int vhd_check(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err)
{
    struct vhd *v = d->priv;
    if (v->creating) {
        /* nothing on disk is final yet: report what the writer holds */
        res->allocated = v->m.dynamic ? v->m.allocated * v->m.h.block_size
                                      : P2V_MIN(diskfmt_file_allocated(v->fd), d->size);
        return 0;
    }
    /* read everything again from the file, counting every problem */
    struct vhd_meta m;
    struct vhd_issues is = {.count = true, .err = err};
    uint64_t fsize;
    if (file_size_of(v->fd, d->path, &fsize, err) < 0)
        return -1;
    int r = vhd_validate(v->fd, fsize, d->path, &m, &is);
    free(m.bat);
    if (r == -2)
        return -1;
    res->errors = is.n;
    if (is.n)
        snprintf(res->first_error, sizeof res->first_error, "%s", is.first);
    res->allocated = m.dynamic ? m.allocated * m.h.block_size
                               : P2V_MIN(diskfmt_file_allocated(v->fd), d->size);
    return 0;
}

const struct diskfmt_ops diskfmt_vhd_ops = {
    .name = "vhd",
    .probe = vhd_probe,
    .open = vhd_open,
    .create = vhd_create,
    .pread = vhd_pread,
    .pwrite = vhd_pwrite,
    .zero = vhd_zero,
    .block_status = vhd_block_status,
    .flush = vhd_flush,
    .close = vhd_close,
    .info = vhd_info,
    .check = vhd_check,
};
