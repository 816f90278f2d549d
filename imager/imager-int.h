/* imager private header: what the imager sources share and nothing outside uses.
 *
 *  - the caps on what discovery and planning accept from a disk (named, with why);
 *  - `struct imager_fdreader`: an `imager_read_fn` over a window [base, base + size) of a
 *    file descriptor, so that the NTFS parser (ntfs.c, which does no I/O of its own and is
 *    fuzzed from memory) reads a partition of a real disk.
 */
#ifndef IMAGER_INT_H
#define IMAGER_INT_H

#include "imager.h"

/* A plan region whose used blocks come out in more runs than this is coalesced: runs
 * closer than IMAGER_COALESCE_GAP are joined, so that a pathologically fragmented file
 * system (every other block used) cannot make the plan take gigabytes of memory. 4 Mi
 * extents are 64 MiB of plan. */
#define IMAGER_REGION_EXTENTS_MAX (4u << 20)
#define IMAGER_COALESCE_GAP (1u << 20)

/* NTFS (ntfs.c). Sizes per the NTFS on-disk format as ntfs-3g's layout.h documents it. */
#define IMAGER_NTFS_RECORD_MAX 4096u   /* MFT record size: 1 KiB in practice, 4 KiB on
                                        * 4Kn disks; larger is not a real volume */
#define IMAGER_NTFS_RUNS_MAX 65536u    /* mapping pairs of one attribute: one record
                                        * cannot hold more than ~2000, a cap regardless */
#define IMAGER_NTFS_CLUSTER_MAX (2u << 20) /* 2 MiB clusters: the largest Windows makes */
#define IMAGER_NTFS_CLUSTERS_MAX 0xffffffffull /* 2^32 - 1 clusters per volume */
#define IMAGER_NTFS_BITMAP_CHUNK (256u << 10)  /* $Bitmap is streamed in pieces of this */

/* ------------------------------------------------------------------ fd reader */

struct imager_fdreader {
    int fd;
    uint64_t base, size; /* the window: a partition */
};

/* imager_read_fn over an imager_fdreader: reads all of [off, off + len) of the window
 * or fails (-1, errno EIO for a short read, EINVAL outside the window). */
int imager_fdreader_read(void *opaque, void *buf, size_t len, uint64_t off);

#endif /* IMAGER_INT_H */
