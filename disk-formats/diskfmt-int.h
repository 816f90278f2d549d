/* diskfmt-int.h: private to disk-formats/. The ops table each format fills, the handle
 * layout, and helpers shared by the formats. Nothing outside disk-formats/ includes it
 * (tests of a format's parser and fuzz harnesses may: they test this layer). */
#ifndef DISKFMT_INT_H
#define DISKFMT_INT_H

#include "diskfmt.h"

/* Bytes handed to probe(): the file's head and its last 512 bytes (VHD footer). */
#define DISKFMT_PROBE_HEAD 4096

struct diskfmt;

struct diskfmt_ops {
    const char *name;
    /* Confidence 0..100 that the content is this format (raw answers 1). @tail holds the
     * file's last 512 bytes when the file is at least that long, else NULL. */
    int (*probe)(const uint8_t *head, size_t head_len, const uint8_t *tail,
                 uint64_t file_size);
    /* Open @d->path; set d->size, d->priv, and optionally d->block_size. */
    int (*open)(struct diskfmt *d, unsigned flags, struct p2v_err *err);
    /* Create @d->path per @opts; set d->size, d->priv, d->write_align, d->sequential. */
    int (*create)(struct diskfmt *d, const struct diskfmt_create_opts *opts,
                  struct p2v_err *err);
    /* The core has checked that [off, off+len) lies inside d->size and that the handle
     * is writable for pwrite/zero; len > 0. */
    int (*pread)(struct diskfmt *d, void *buf, size_t len, uint64_t off,
                 struct p2v_err *err);
    int (*pwrite)(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                  struct p2v_err *err);
    int (*zero)(struct diskfmt *d, uint64_t off, uint64_t len, struct p2v_err *err);
    int (*block_status)(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                        unsigned *flags, struct p2v_err *err);
    int (*flush)(struct diskfmt *d, struct p2v_err *err);
    /* Finish (when writable) and free d->priv. @finish false: abandon, do not finish. */
    int (*close)(struct diskfmt *d, bool finish, struct p2v_err *err);
    /* Optional (resumable writers, see diskfmt_checkpoint): write what the image needs
     * to be reopened as it is now, without syncing, and set *mark. The core has checked
     * that the handle is writable. */
    int (*checkpoint)(struct diskfmt *d, uint64_t *mark, struct p2v_err *err);
    /* Optional: reopen @d->path for writing as it was at the checkpoint that returned
     * @mark (see diskfmt_resume); set what create sets. */
    int (*resume)(struct diskfmt *d, uint64_t mark, struct p2v_err *err);
    /* Optional: extra "key": value members for info. */
    int (*info)(struct diskfmt *d, struct p2v_json *j, struct p2v_err *err);
    /* Optional: consistency check. */
    int (*check)(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err);
};

struct diskfmt {
    const struct diskfmt_ops *ops;
    char *path;
    uint64_t size;        /* virtual size */
    bool writable;
    uint32_t write_align; /* default 1 */
    bool sequential;      /* default false */
    uint32_t block_size;  /* default 4096 */
    void *priv;
};

extern const struct diskfmt_ops diskfmt_raw_ops;
extern const struct diskfmt_ops diskfmt_qcow2_ops;
extern const struct diskfmt_ops diskfmt_vmdk_ops;
extern const struct diskfmt_ops diskfmt_vhd_ops;
extern const struct diskfmt_ops diskfmt_vhdx_ops;

/* Shared helpers (diskfmt.c). */

/* The allocated size of an open file (st_blocks * 512); 0 when unknown. */
uint64_t diskfmt_file_allocated(int fd);
/* fdatasync(fd) unless durability is off (diskfmt_set_sync); every driver syncs
 * through it. */
int diskfmt_fdatasync(int fd);
/* Read exactly @len bytes at @off of @fd (the file @path); a short read is an error
 * naming the offset where the file ended. */
int diskfmt_read_exact(int fd, void *buf, size_t len, uint64_t off, const char *path,
                       struct p2v_err *err);
int diskfmt_write_exact(int fd, const void *buf, size_t len, uint64_t off,
                        const char *path, struct p2v_err *err);
/* True when the @len bytes at @p look incompressible (Renyi order-2 entropy of a
 * sample), so that compressing writers store them as they are. */
bool diskfmt_looks_incompressible(const uint8_t *p, size_t len);
/* Generic zero: write zero buffers through ops->pwrite. */
int diskfmt_zero_by_writing(struct diskfmt *d, uint64_t off, uint64_t len,
                            struct p2v_err *err);
/* Generic block status for formats that know nothing: all data. */
int diskfmt_status_all_data(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                            unsigned *flags, struct p2v_err *err);

#endif /* DISKFMT_INT_H */
