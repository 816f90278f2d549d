/* raw.c: raw images and block devices. Zero runs become holes (fallocate punch-hole on
 * files); block status comes from SEEK_DATA / SEEK_HOLE. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfmt-int.h"

struct raw {
    int fd;
    bool is_blockdev;
};

static int raw_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                     uint64_t file_size)
{
    return 1; /* anything can be raw; every real format outbids it */
}

static int raw_setup(struct diskfmt *d, int fd, struct p2v_err *err)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return p2v_err_errno(err, "cannot stat '%s'", d->path);
    struct raw *r = calloc(1, sizeof *r);
    if (!r)
        return p2v_err_set(err, ENOMEM, "out of memory");
    r->fd = fd;
    if (S_ISBLK(st.st_mode)) {
        uint64_t bytes;
        if (ioctl(fd, BLKGETSIZE64, &bytes) < 0) {
            free(r);
            return p2v_err_errno(err, "cannot get the size of block device '%s'", d->path);
        }
        d->size = bytes;
        r->is_blockdev = true;
    } else {
        d->size = (uint64_t)st.st_size;
    }
    d->priv = r;
    return 0;
}

static int raw_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    int fd = open(d->path, ((flags & DISKFMT_RDWR) ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open '%s'", d->path);
    if (raw_setup(d, fd, err) < 0) {
        close(fd);
        return -1;
    }
    return 0;
}

static int raw_create(struct diskfmt *d, const struct diskfmt_create_opts *opts,
                      struct p2v_err *err)
{
    int fd = open(d->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return p2v_err_errno(err, "cannot create '%s'", d->path);
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        /* drop old contents: what we do not write must read as zeros. Truncating an
         * empty file is skipped: on ext4 a truncate to 0 arms auto_da_alloc, which makes
         * close() start writeback of everything written (0.25 s per GiB measured). */
        if ((st.st_size != 0 && ftruncate(fd, 0) < 0) ||
            ftruncate(fd, (off_t)opts->size) < 0) {
            p2v_err_errno(err, "cannot set the size of '%s' to %llu", d->path,
                          (unsigned long long)opts->size);
            close(fd);
            return -1;
        }
    }
    if (raw_setup(d, fd, err) < 0) {
        close(fd);
        return -1;
    }
    if (((struct raw *)d->priv)->is_blockdev && d->size < opts->size) {
        p2v_err_set(err, ENOSPC, "block device '%s' (%llu bytes) is smaller than %llu",
                    d->path, (unsigned long long)d->size, (unsigned long long)opts->size);
        close(fd);
        free(d->priv);
        return -1;
    }
    return 0;
}

/* A raw image holds nothing but its data: a checkpoint has no tables to write, and the
 * point to reopen at is the virtual size, which resume checks against the file. */
static int raw_checkpoint(struct diskfmt *d, uint64_t *mark, struct p2v_err *err)
{
    *mark = d->size;
    return 0;
}

static int raw_resume(struct diskfmt *d, uint64_t mark, struct p2v_err *err)
{
    /* no O_TRUNC: what the writer wrote before it stopped is the image */
    int fd = open(d->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open '%s'", d->path);
    if (raw_setup(d, fd, err) < 0) {
        close(fd);
        return -1;
    }
    if (d->size != mark) {
        /* another size than the checkpoint's: another file, or one cut or grown since */
        p2v_err_set(err, EINVAL, "'%s': cannot resume at %llu: the image is %llu bytes, "
                    "and a raw image is resumed at its size", d->path,
                    (unsigned long long)mark, (unsigned long long)d->size);
        close(fd);
        free(d->priv);
        d->priv = NULL;
        return -1;
    }
    return 0;
}

static int raw_pread(struct diskfmt *d, void *buf, size_t len, uint64_t off,
                     struct p2v_err *err)
{
    struct raw *r = d->priv;
    ssize_t n = p2v_pread_full(r->fd, buf, len, off);
    if (n < 0)
        return p2v_err_errno(err, "'%s': read error at offset %llu", d->path,
                             (unsigned long long)off);
    if ((size_t)n < len) /* the file shrank under us */
        return p2v_err_set(err, EIO, "'%s': unexpected end of file at offset %llu",
                           d->path, (unsigned long long)(off + (uint64_t)n));
    return 0;
}

static int raw_pwrite(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                      struct p2v_err *err)
{
    struct raw *r = d->priv;
    if (p2v_pwrite_full(r->fd, buf, len, off) < 0)
        return p2v_err_errno(err, "'%s': write error at offset %llu", d->path,
                             (unsigned long long)off);
    return 0;
}

static int raw_zero(struct diskfmt *d, uint64_t off, uint64_t len, struct p2v_err *err)
{
    struct raw *r = d->priv;
    if (!r->is_blockdev &&
        fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) == 0)
        return 0;
    if (r->is_blockdev) {
        uint64_t range[2] = {off, len};
        if (ioctl(r->fd, BLKZEROOUT, range) == 0)
            return 0;
    }
    return diskfmt_zero_by_writing(d, off, len, err);
}

static int raw_block_status(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                            unsigned *flags, struct p2v_err *err)
{
    struct raw *r = d->priv;
    uint64_t end = off + len;
    if (r->is_blockdev)
        return diskfmt_status_all_data(d, off, len, run, flags, err);
    off_t data = lseek(r->fd, (off_t)off, SEEK_DATA);
    if (data < 0 && errno == ENXIO) { /* a hole to the end of the file */
        *run = len;
        *flags = DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
        return 0;
    }
    if (data < 0) /* SEEK_DATA unsupported: everything is data */
        return diskfmt_status_all_data(d, off, len, run, flags, err);
    if ((uint64_t)data > off) {
        *run = P2V_MIN((uint64_t)data, end) - off;
        *flags = DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE;
        return 0;
    }
    off_t hole = lseek(r->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off)
        hole = (off_t)end;
    *run = P2V_MIN((uint64_t)hole, end) - off;
    *flags = 0;
    return 0;
}

static int raw_flush(struct diskfmt *d, struct p2v_err *err)
{
    struct raw *r = d->priv;
    if (diskfmt_fdatasync(r->fd) < 0)
        return p2v_err_errno(err, "cannot flush '%s'", d->path);
    return 0;
}

static int raw_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    struct raw *r = d->priv;
    int ret = 0;
    if (finish && d->writable && diskfmt_fdatasync(r->fd) < 0 && errno != EINVAL)
        ret = p2v_err_errno(err, "cannot flush '%s'", d->path);
    if (close(r->fd) < 0 && ret == 0 && finish)
        ret = p2v_err_errno(err, "cannot close '%s'", d->path);
    free(r);
    return ret;
}

static int raw_check(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err)
{
    struct raw *r = d->priv;
    res->allocated = diskfmt_file_allocated(r->fd);
    return 0;
}

const struct diskfmt_ops diskfmt_raw_ops = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .create = raw_create,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .zero = raw_zero,
    .block_status = raw_block_status,
    .flush = raw_flush,
    .close = raw_close,
    .check = raw_check,
    .checkpoint = raw_checkpoint,
    .resume = raw_resume,
};
