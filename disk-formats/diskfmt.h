/* libdiskfmt: reading and writing disk images — raw, qcow2 (v3), VMDK (monolithicSparse,
 * streamOptimized, monolithicFlat, split twoGbMaxExtent sets), VHD and VHDX. This header
 * is the library's whole contract; formats live behind one private ops table each.
 *
 * A handle is used by one thread at a time. Images are probed by content, never by name.
 * Every error names the file, the offset where there is one, and what was wrong.
 */
#ifndef DISKFMT_H
#define DISKFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

struct diskfmt;

/* Open flags. */
enum diskfmt_open_flags {
    DISKFMT_RDONLY = 0,
    DISKFMT_RDWR = 1 << 0,
    /* qcow2: open an image whose dirty bit is set (a writer died) for reading; without it
     * such an image is refused as incomplete. */
    DISKFMT_ALLOW_DIRTY = 1 << 1,
};

/* Block status of a run (like NBD's): neither flag = data stored in the image. */
enum diskfmt_status_flags {
    DISKFMT_STATUS_ZERO = 1 << 0, /* the run reads as zeros */
    DISKFMT_STATUS_HOLE = 1 << 1, /* no storage is allocated for the run */
};

/* Compression for formats that have it (qcow2: zlib or zstd; streamOptimized VMDK is
 * always deflate). */
enum diskfmt_compress {
    DISKFMT_COMPRESS_NONE = 0,
    DISKFMT_COMPRESS_ZLIB,
    DISKFMT_COMPRESS_ZSTD,
};

struct diskfmt_create_opts {
    uint64_t size;             /* virtual size in bytes (required) */
    const char *subformat;     /* vmdk: monolithicSparse (default) | streamOptimized |
                                *       monolithicFlat; vhd: fixed (default) | dynamic */
    enum diskfmt_compress compress; /* qcow2: write compressed clusters */
    uint32_t cluster_size;     /* qcow2 cluster / vmdk grain size; 0: the format's default */
    const char *adapter_type;  /* vmdk: ide (default) | lsilogic | buslogic | pvscsi */
};

/* The names of the formats (for -f / -O): "raw", "qcow2", "vmdk", "vhd", "vhdx". */
const char *const *diskfmt_format_names(void);

/* Probe @path by content; on success *name is a static format name. */
int diskfmt_probe(const char *path, const char **name, struct p2v_err *err);

/* Open an existing image; @format NULL probes. */
struct diskfmt *diskfmt_open(const char *path, const char *format, unsigned flags,
                             struct p2v_err *err);

/* Create a new image (truncating an existing file). */
struct diskfmt *diskfmt_create(const char *path, const char *format,
                               const struct diskfmt_create_opts *opts, struct p2v_err *err);

/* Facts about an open image. */
uint64_t diskfmt_size(const struct diskfmt *d);
const char *diskfmt_format(const struct diskfmt *d);
const char *diskfmt_path(const struct diskfmt *d);
/* Writes must start at a multiple of this (1: any offset) and, for formats that can only
 * append (streamOptimized VMDK, compressed qcow2), come in increasing order of offset. */
uint32_t diskfmt_write_align(const struct diskfmt *d);
bool diskfmt_sequential_writes(const struct diskfmt *d);
/* The granularity in which block status is reported (cluster or grain size; raw: 4096). */
uint32_t diskfmt_block_size(const struct diskfmt *d);

/* Read @len bytes at @off; the range must lie inside the virtual size. */
int diskfmt_pread(struct diskfmt *d, void *buf, size_t len, uint64_t off,
                  struct p2v_err *err);
/* Write @len bytes at @off (see diskfmt_write_align). */
int diskfmt_pwrite(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                   struct p2v_err *err);
/* Write only the data of @len bytes at @off into an image that reads zeros there (a new
 * one): runs of @grain-byte blocks (aligned to the image's offsets) that are not all
 * zeros, each in one write; all-zero blocks are skipped. @grain: a multiple of the
 * image's write alignment (diskfmt_block_size is a good choice). */
int diskfmt_pwrite_data(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                        uint32_t grain, struct p2v_err *err);
/* Make [off, off+len) read as zeros, deallocating where the format can. */
int diskfmt_zero(struct diskfmt *d, uint64_t off, uint64_t len, struct p2v_err *err);
/* The status of the run that starts at @off: *run (1..len bytes) share *flags. */
int diskfmt_block_status(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                         unsigned *flags, struct p2v_err *err);
int diskfmt_flush(struct diskfmt *d, struct p2v_err *err);
/* Finish the image (tables, refcounts, footers) and free the handle, whatever happens.
 * -1 when finishing failed: the image is then not complete. NULL is accepted. */
int diskfmt_close(struct diskfmt *d, struct p2v_err *err);
/* Free the handle without finishing a writable image (it stays marked incomplete). */
void diskfmt_abandon(struct diskfmt *d);

/* Resumable writers (raw; qcow2 written without compression). A checkpoint writes what
 * the image needs to be reopened as it is now — qcow2: the L2 tables and the L1 table —
 * without syncing (diskfmt_flush syncs), and sets *mark to the point to reopen at
 * (qcow2: the allocated end of the file; raw: the virtual size). ENOTSUP for other
 * formats or a compressed qcow2 writer; EIO after an earlier write failed. */
int diskfmt_checkpoint(struct diskfmt *d, uint64_t *mark, struct p2v_err *err);
/* Reopen for writing an image that a writer left incomplete (killed or abandoned after
 * diskfmt_checkpoint returned @mark), as it was at that checkpoint: what was written
 * after it may be lost (qcow2: the file is cut at @mark and every L1/L2 entry that points
 * at or past @mark is cleared, so the image reads as zeros there; raw: @mark must be the
 * file's size, which becomes the virtual size). Only images this library created are
 * accepted (qcow2: its own layout, dirty bit set). EALREADY when the image is complete
 * (qcow2: dirty bit clear); ENOTSUP for other formats; EINVAL naming what is wrong
 * otherwise. The handle is then like one from diskfmt_create. @format NULL probes. */
struct diskfmt *diskfmt_resume(const char *path, const char *format, uint64_t mark,
                               struct p2v_err *err);

/* Format details as members of the JSON object being written (the caller opens and
 * closes the object). Always includes "format", "virtual-size", "actual-size". */
int diskfmt_info(struct diskfmt *d, struct p2v_json *j, struct p2v_err *err);

/* Durability (process-wide, default on). On: every writer fdatasyncs its data before it
 * marks an image complete (qcow2 dirty bit cleared, VMDK footer / descriptor, VHD
 * footer), so the image is complete after a power loss too. Off (p2v-img -t unsafe, as
 * qemu-img convert's default): nothing is synced; the ordering in the page cache still
 * means a killed writer never leaves an image that passes as complete. */
void diskfmt_set_sync(bool on);

/* Consistency check (like qemu-img check). */
struct diskfmt_check {
    uint64_t errors;     /* corruptions: the image cannot be trusted */
    uint64_t leaks;      /* allocated, unreferenced clusters: harmless */
    uint64_t allocated;  /* bytes of data allocated */
    char first_error[512];
};
int diskfmt_check(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err);

#endif /* DISKFMT_H */
