/* disk.c: the guest's disk. An image opened read-only through libdiskfmt, under a
 * copy-on-write overlay held in memory: the guest's writes land in 4 KiB blocks kept in an
 * open-addressing hash table (block number -> buffer), so the image itself is never
 * written. A write that covers part of a block first reads the rest of that block from the
 * image; a read takes each block from the overlay when it is there and reads the runs of
 * blocks that are not from the image, one diskfmt_pread per run.
 *
 * Not thread-safe: the one user (virtio-blk.c) calls it under its own lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "diskfmt.h"
#include "vmm-int.h"

#define VMM_DISK_BLOCK 4096u
#define VMM_DISK_BLOCK_SHIFT 12

/* The overlay's cap: a guest that writes more than this (its data blocks, not counting the
 * table) gets write errors rather than making the VMM use host memory without bound. The
 * boot of a converted system writes far less (logs, journal replay, a few package caches). */
#define VMM_DISK_OVERLAY_MAX (1ull << 30)

/* The hash table's first size (slots, a power of two); it doubles past 70 % load. */
#define VMM_DISK_TABLE_MIN 1024u

struct vmm_disk_slot {
    uint64_t block;  /* block number, valid when data != NULL */
    uint8_t *data;   /* VMM_DISK_BLOCK bytes, NULL for an empty slot */
};

struct vmm_disk {
    struct diskfmt *img;
    uint64_t size;
    struct vmm_disk_slot *slots;
    size_t nslots;   /* a power of two, or 0 before the first write */
    size_t nblocks;  /* blocks in the overlay */
};

/* Fibonacci hashing of the block number onto a table of 2^k slots. */
static size_t vmm_disk_hash(uint64_t block, size_t nslots)
{
    return (size_t)((block * 0x9e3779b97f4a7c15ull) >> 32) & (nslots - 1);
}

static uint8_t *vmm_disk_lookup(const struct vmm_disk *d, uint64_t block)
{
    if (d->nslots == 0)
        return NULL;
    for (size_t i = vmm_disk_hash(block, d->nslots);; i = (i + 1) & (d->nslots - 1)) {
        if (!d->slots[i].data)
            return NULL;
        if (d->slots[i].block == block)
            return d->slots[i].data;
    }
}

/* Put (block, data) in a table known not to hold @block and to have a free slot. */
static void vmm_disk_slot_put(struct vmm_disk_slot *slots, size_t nslots, uint64_t block,
                              uint8_t *data)
{
    size_t i = vmm_disk_hash(block, nslots);
    while (slots[i].data)
        i = (i + 1) & (nslots - 1);
    slots[i].block = block;
    slots[i].data = data;
}

/* Make room for one more block: the table stays under 70 % full. */
static int vmm_disk_table_reserve(struct vmm_disk *d, struct p2v_err *err)
{
    if (d->nslots && (d->nblocks + 1) * 10 <= d->nslots * 7)
        return 0;
    size_t n = d->nslots ? d->nslots * 2 : VMM_DISK_TABLE_MIN;
    struct vmm_disk_slot *s = calloc(n, sizeof *s);
    if (!s)
        return p2v_err_set(err, ENOMEM, "cannot grow the disk overlay's table to %zu slots",
                           n);
    for (size_t i = 0; i < d->nslots; i++)
        if (d->slots[i].data)
            vmm_disk_slot_put(s, n, d->slots[i].block, d->slots[i].data);
    free(d->slots);
    d->slots = s;
    d->nslots = n;
    return 0;
}

struct vmm_disk *vmm_disk_open(const char *path, const char *format, struct p2v_err *err)
{
    struct vmm_disk *d = calloc(1, sizeof *d);
    if (!d) {
        p2v_err_set(err, ENOMEM, "out of memory opening '%s'", path);
        return NULL;
    }
    d->img = diskfmt_open(path, format, DISKFMT_RDONLY, err);
    if (!d->img) {
        free(d);
        return NULL;
    }
    d->size = diskfmt_size(d->img);
    return d;
}

uint64_t vmm_disk_size(const struct vmm_disk *d)
{
    return d->size;
}

const char *vmm_disk_format(const struct vmm_disk *d)
{
    return diskfmt_format(d->img);
}

struct diskfmt *vmm_disk_image(struct vmm_disk *d)
{
    return d->img;
}

uint64_t vmm_disk_overlay_bytes(const struct vmm_disk *d)
{
    return (uint64_t)d->nblocks * VMM_DISK_BLOCK + (uint64_t)d->nslots * sizeof *d->slots;
}

/* Read the image's part of block @block (the disk's last block may be short) into @buf,
 * zero-filling the rest. */
static int vmm_disk_read_image_block(struct vmm_disk *d, uint64_t block, uint8_t *buf,
                                     struct p2v_err *err)
{
    uint64_t start = block << VMM_DISK_BLOCK_SHIFT;
    size_t n = (size_t)P2V_MIN((uint64_t)VMM_DISK_BLOCK, d->size - start);
    memset(buf + n, 0, VMM_DISK_BLOCK - n);
    return diskfmt_pread(d->img, buf, n, start, err);
}

int vmm_disk_read(struct vmm_disk *d, void *buf, size_t len, uint64_t off,
                  struct p2v_err *err)
{
    if (!p2v_range_ok(off, len, d->size))
        return p2v_err_set(err, EINVAL,
                           "read of %zu bytes at offset %llu is beyond the end of '%s' "
                           "(%llu bytes)",
                           len, (unsigned long long)off, diskfmt_path(d->img),
                           (unsigned long long)d->size);
    if (d->nblocks == 0)
        return len ? diskfmt_pread(d->img, buf, len, off, err) : 0;
    uint8_t *out = buf;
    size_t done = 0;
    size_t run = 0; /* bytes pending from the image, starting at done - run */
    while (done < len) {
        uint64_t pos = off + done;
        uint64_t block = pos >> VMM_DISK_BLOCK_SHIFT;
        size_t in = (size_t)(pos & (VMM_DISK_BLOCK - 1));
        size_t n = P2V_MIN((size_t)VMM_DISK_BLOCK - in, len - done);
        const uint8_t *ov = vmm_disk_lookup(d, block);
        if (ov) {
            if (run && diskfmt_pread(d->img, out + done - run, run, pos - run, err) < 0)
                return -1;
            run = 0;
            memcpy(out + done, ov + in, n);
        } else {
            run += n;
        }
        done += n;
    }
    if (run && diskfmt_pread(d->img, out + len - run, run, off + len - run, err) < 0)
        return -1;
    return 0;
}

int vmm_disk_write(struct vmm_disk *d, const void *buf, size_t len, uint64_t off,
                   struct p2v_err *err)
{
    if (!p2v_range_ok(off, len, d->size))
        return p2v_err_set(err, EINVAL,
                           "write of %zu bytes at offset %llu is beyond the end of '%s' "
                           "(%llu bytes)",
                           len, (unsigned long long)off, diskfmt_path(d->img),
                           (unsigned long long)d->size);
    if (len == 0)
        return 0;
    uint64_t first = off >> VMM_DISK_BLOCK_SHIFT;
    uint64_t last = (off + len - 1) >> VMM_DISK_BLOCK_SHIFT;
    /* Check the cap before changing anything, so that a refused write leaves no trace. */
    uint64_t fresh = 0;
    for (uint64_t b = first; b <= last; b++)
        if (!vmm_disk_lookup(d, b))
            fresh++;
    if (fresh > VMM_DISK_OVERLAY_MAX / VMM_DISK_BLOCK - d->nblocks)
        return p2v_err_set(err, ENOSPC,
                           "write of %zu bytes at offset %llu: the overlay of '%s' would "
                           "exceed its cap of %llu bytes",
                           len, (unsigned long long)off, diskfmt_path(d->img),
                           (unsigned long long)VMM_DISK_OVERLAY_MAX);
    const uint8_t *in = buf;
    size_t done = 0;
    while (done < len) {
        uint64_t pos = off + done;
        uint64_t block = pos >> VMM_DISK_BLOCK_SHIFT;
        size_t boff = (size_t)(pos & (VMM_DISK_BLOCK - 1));
        size_t n = P2V_MIN((size_t)VMM_DISK_BLOCK - boff, len - done);
        uint8_t *ov = vmm_disk_lookup(d, block);
        if (!ov) {
            if (vmm_disk_table_reserve(d, err) < 0)
                return -1;
            ov = malloc(VMM_DISK_BLOCK);
            if (!ov)
                return p2v_err_set(err, ENOMEM, "out of memory for the disk overlay");
            /* The block's bytes outside the write come from the image (the whole block
             * is written when the write covers it, or reaches the disk's short end). */
            uint64_t bstart = block << VMM_DISK_BLOCK_SHIFT;
            bool whole = boff == 0 && (n == VMM_DISK_BLOCK || bstart + n == d->size);
            if (whole) {
                memset(ov + n, 0, VMM_DISK_BLOCK - n);
            } else if (vmm_disk_read_image_block(d, block, ov, err) < 0) {
                free(ov);
                return -1;
            }
            vmm_disk_slot_put(d->slots, d->nslots, block, ov);
            d->nblocks++;
        }
        memcpy(ov + boff, in + done, n);
        done += n;
    }
    return 0;
}

void vmm_disk_close(struct vmm_disk *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nslots; i++)
        free(d->slots[i].data);
    free(d->slots);
    diskfmt_close(d->img, NULL);
    free(d);
}
