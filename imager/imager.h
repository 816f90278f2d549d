/* libimager: what is on a source machine's disks, which of their blocks hold data, and the
 * read pipeline that turns those blocks into hashed, compressed chunks. This header is
 * the library's whole contract.
 *
 * Sources are block devices or image files (raw bytes: an image in another format is read
 * as it is stored). Nothing here writes to a source.
 */
#ifndef IMAGER_H
#define IMAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

/* ------------------------------------------------------------------ discovery */

#define IMAGER_PARTS_MAX 128

struct imager_part {
    int number;            /* 1.. as the partition table numbers it */
    uint64_t start, size;  /* bytes */
    char fstype[32];       /* blkid TYPE ("ext4", "swap", "ntfs", "vfat", ...) or "" */
    char label[128];
    char uuid[64];
    char part_type[64];    /* MBR type "0x83" or GPT type GUID; "" when unknown */
    char part_name[72];    /* GPT partition name, or "" */
    bool extended;         /* an MBR extended-partition container */
};

struct imager_disk {
    char path[4096];       /* as given */
    char name[64];         /* "sda", or the image file's base name */
    bool is_block_device;
    uint64_t size;          /* bytes */
    uint32_t sector_size;   /* logical sector size (512 for image files) */
    char pttype[16];        /* "dos", "gpt" or "" (no partition table) */
    char model[128];        /* from sysfs for block devices, else "" */
    char serial[128];
    char whole_fstype[32];  /* a file system on the whole disk (no partition table), or "" */
    int nparts;
    struct imager_part parts[IMAGER_PARTS_MAX];
};

/* Discover one disk: open @path read-only, read its size, partition table (libparted)
 * and each partition's file system, label and UUID (libblkid). 0 / -1. */
int imager_disk_discover(const char *path, struct imager_disk *d, struct p2v_err *err);

/* The local machine's disks: /dev/NAME for every /sys/block entry that is a real disk
 * (not loop, ram, zram, dm-, md, sr, fd, nbd with no size, or size 0). @paths is a NULL
 * terminated array that the caller frees with imager_free_list(). 0 / -1. */
int imager_list_local_disks(char ***paths, struct p2v_err *err);
void imager_free_list(char **list);

/* Discovery as JSON members of the object being written (path, name, size, sector-size,
 * pttype, model, serial, partitions[]: number, start, size, fstype, label, uuid). */
void imager_disk_json(const struct imager_disk *d, struct p2v_json *j);

/* ------------------------------------------------------------------ planning */

/* How a region of the disk was planned (for reports and tests). */
enum imager_region_kind {
    IMAGER_REGION_OUTSIDE = 0, /* outside every partition (boot code, tables, gaps) */
    IMAGER_REGION_EXT,         /* ext2/3/4: only blocks marked used in the bitmaps */
    IMAGER_REGION_SWAP,        /* swap: only its header page */
    IMAGER_REGION_NTFS,        /* NTFS: only clusters marked used in $Bitmap */
    IMAGER_REGION_ALL,         /* unknown or unsupported content: read all */
};

struct imager_extent {
    uint64_t off, len; /* bytes; sector aligned */
};

/* The plan: sorted, non-overlapping, merged extents to read. Everything outside them is
 * known to be unused and is not read (it will read as zeros in the copy). */
struct imager_plan {
    struct imager_extent *ext;
    size_t count;
    uint64_t bytes;    /* sum of the extents' lengths */
    /* One summary line per region, for reports: kind, partition number (0 = outside),
     * bytes in the region and bytes planned. */
    struct imager_plan_region {
        enum imager_region_kind kind;
        int part;
        uint64_t start, size, planned;
        char note[96]; /* e.g. "ext4: 1234 of 65536 blocks used" or why it fell back */
    } *regions;
    size_t nregions;
};

/* Plan @d. @all_blocks: one extent covering the whole disk (a byte-identical copy). A file
 * system whose metadata cannot be read (corrupt, unsupported feature) falls back to
 * IMAGER_REGION_ALL with a note saying why, rather than failing. 0 / -1. */
int imager_plan(const struct imager_disk *d, bool all_blocks, struct imager_plan *plan,
                struct p2v_err *err);
/* The same with flags: IMAGER_PLAN_ALL_BLOCKS (as @all_blocks), IMAGER_PLAN_LIVE (the
 * disk's file systems are mounted and changing, as in a live capture's passes before its
 * freeze: an ext file system whose journal needs recovery, as a mounted one always does,
 * is planned from its on-disk bitmaps instead of read whole; the plan is then a close
 * guess, and only a plan made with the file systems frozen or unmounted is exact). */
#define IMAGER_PLAN_ALL_BLOCKS 0x1u
#define IMAGER_PLAN_LIVE 0x2u
int imager_plan_flags(const struct imager_disk *d, unsigned flags, struct imager_plan *plan,
                      struct p2v_err *err);
void imager_plan_release(struct imager_plan *plan);
const char *imager_region_kind_name(enum imager_region_kind k);

/* NTFS $Bitmap planning from memory, for the fuzz harness: given the boot sector (512
 * bytes) and a reader callback over the partition, append the used clusters' byte ranges
 * (relative to the partition) via @add. 0 / -1 (a malformed volume: EINVAL). Ranges
 * come in no particular order and may overlap; the boot sector and its backups are
 * always among them; a volume flagged dirty is refused (EINVAL). On failure some ranges
 * may already have been added: the caller drops them. */
typedef int (*imager_read_fn)(void *opaque, void *buf, size_t len, uint64_t off);
typedef int (*imager_add_fn)(void *opaque, uint64_t off, uint64_t len);
int imager_ntfs_used(imager_read_fn rd, void *rd_opaque, uint64_t part_size,
                     imager_add_fn add, void *add_opaque, struct p2v_err *err);

/* ------------------------------------------------------------------ pipeline */

enum imager_hash {
    IMAGER_HASH_SHA256 = 1,  /* same values as enum p2v_hash_algo */
    IMAGER_HASH_BLAKE2B = 2,
};

/* Time both hashes on this CPU over a few MiB and return the faster (the agent's default
 * choice). */
enum imager_hash imager_hash_pick(void);

struct imager_pipeline_opts {
    int fd;                        /* the source, opened read-only (not closed by us; its
                                    * file offset moves: the pipeline reads with pread) */
    const char *path;              /* for messages */
    uint64_t disk_size;
    const struct imager_extent *ext; /* what to read (a plan's extents), sorted */
    size_t count;
    /* Ranges to leave out (already committed on the server), sorted and merged; a chunk
     * that lies wholly inside one is not read. May be NULL. Both arrays are used in place:
     * they must stay valid until imager_pipeline_free(). */
    const struct imager_extent *skip;
    size_t nskip;
    uint32_t chunk_size;           /* bytes per chunk (default 1 MiB; <= 1 MiB) */
    int threads;                   /* hash/compress workers (0: number of CPUs) */
    enum imager_hash hash;         /* 0: no hash */
    /* zstd level: 1..ZSTD_maxCLevel(), or a negative "fast" level down to
     * ZSTD_minCLevel() (faster, larger); 0: no compression. */
    int zstd_level;
    /* The level may be changed while running (imager_pipeline_set_level()): the
     * compression buffers are then allocated even when zstd_level is 0. */
    bool adaptive;
    /* Unreadable sectors: each failed read is retried @retries times (0: the default 3;
     * negative: no retry), then
     * split down to sectors. Without @skip_bad_sectors the first bad sector ends the
     * pipeline with EIO naming the device and offset; with it, bad sectors read as zeros
     * and are listed (imager_pipeline_bad_sectors()). */
    int retries;
    bool skip_bad_sectors;
};

/* One chunk, handed out in increasing offset order. Chunks never cross an extent's end
 * and are aligned to chunk_size inside the disk where the extents allow it. */
struct imager_chunk {
    uint64_t off;
    uint32_t len;
    bool zero;                     /* every byte is zero: no data, no hash */
    uint8_t hash[32];              /* of the uncompressed bytes */
    const uint8_t *data;           /* the uncompressed bytes (NULL when zero) */
    const uint8_t *zdata;          /* the zstd frame (NULL when not compressed: chunks that
                                    * do not shrink are sent as they are) */
    size_t zlen;
    int level;                     /* the zstd level in effect when a worker took this chunk
                                    * (0: compression off; zdata may be NULL at any level:
                                    * random-looking data and chunks that do not shrink);
                                    * 0 for zero chunks */
};

struct imager_pipeline;

/* Start the reader and worker threads. Memory is bounded: a fixed number of chunks in
 * flight (about 4 per worker), whatever the disk size. NULL on failure. */
struct imager_pipeline *imager_pipeline_start(const struct imager_pipeline_opts *opts,
                                              struct p2v_err *err);
/* The next chunk. 1: *c is filled and valid until the next call; 0: the end; -1: error
 * (a read error, an unreadable sector: err->code EIO is used for unreadable sectors
 * only). */
int imager_pipeline_next(struct imager_pipeline *p, struct imager_chunk *c,
                         struct p2v_err *err);
/* Bytes read from the source so far (the holes of a sparse source file count, though they
 * are not read), and bytes of chunks skipped because of @skip. */
uint64_t imager_pipeline_bytes_read(const struct imager_pipeline *p);
/* Of those, the bytes of chunks skipped because of @skip (not read). */
uint64_t imager_pipeline_bytes_skipped(const struct imager_pipeline *p);
/* The bad sectors met with skip_bad_sectors: byte offsets of sectors, sorted (those in
 * the chunks handed out so far; the array is valid until the next call of
 * imager_pipeline_next or imager_pipeline_free). */
const uint64_t *imager_pipeline_bad_sectors(const struct imager_pipeline *p, size_t *n);
/* Stop the threads and free (safe at any point, also before the end). NULL accepted. */
void imager_pipeline_free(struct imager_pipeline *p);

/* True when @level is a zstd level the pipeline accepts: 0 (none), or
 * ZSTD_minCLevel()..ZSTD_maxCLevel() (negative: zstd's fast levels). */
bool imager_zstd_level_ok(int level);
/* ZSTD_minCLevel(): the fastest level zstd has (a large negative number). */
int imager_zstd_min_level(void);
/* Change the compression level of an adaptive pipeline (opts.adaptive) while it runs;
 * 0 stores the chunks uncompressed. Safe to call from the consumer's thread at any time:
 * each worker reads the level once per chunk, so the change shows in the chunks that
 * workers take from now on (those already compressed or being compressed keep their
 * level: a few per worker and one read batch). 0, or -1 (EINVAL: NULL, a pipeline that
 * is not adaptive, a level that imager_zstd_level_ok() refuses). */
int imager_pipeline_set_level(struct imager_pipeline *p, int level);
/* The level last set (or started with). */
int imager_pipeline_level(const struct imager_pipeline *p);

#endif /* IMAGER_H */
