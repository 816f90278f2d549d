/* diskfmt.c: the core of libdiskfmt — the table of formats, probing by content, and the
 * checks every request passes once (range inside the virtual size, handle writable,
 * alignment) before a format's handler runs. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfmt-int.h"

static const struct diskfmt_ops *const formats[] = {
    &diskfmt_qcow2_ops, &diskfmt_vmdk_ops, &diskfmt_vhdx_ops, &diskfmt_vhd_ops,
    &diskfmt_raw_ops,
};

const char *const *diskfmt_format_names(void)
{
    static const char *const names[] = {"raw", "qcow2", "vmdk", "vhd", "vhdx", NULL};
    return names;
}

static const struct diskfmt_ops *find_format(const char *name)
{
    for (size_t i = 0; i < P2V_ARRAY_SIZE(formats); i++)
        if (strcmp(formats[i]->name, name) == 0)
            return formats[i];
    /* qemu's name for VHD */
    if (strcmp(name, "vpc") == 0)
        return &diskfmt_vhd_ops;
    return NULL;
}

int diskfmt_probe(const char *path, const char **name, struct p2v_err *err)
{
    uint8_t head[DISKFMT_PROBE_HEAD], tail[512];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open '%s'", path);
    struct stat st;
    int r = -1;
    if (fstat(fd, &st) < 0) {
        p2v_err_errno(err, "cannot stat '%s'", path);
        goto out;
    }
    uint64_t fsize = (uint64_t)st.st_size;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(fd, 0, SEEK_END);
        fsize = end > 0 ? (uint64_t)end : 0;
    }
    ssize_t n = p2v_pread_full(fd, head, sizeof head, 0);
    if (n < 0) {
        p2v_err_errno(err, "cannot read '%s' at offset 0", path);
        goto out;
    }
    const uint8_t *tailp = NULL;
    if (fsize >= 512) {
        if (p2v_pread_full(fd, tail, 512, fsize - 512) != 512) {
            p2v_err_errno(err, "cannot read '%s' at offset %llu", path,
                          (unsigned long long)(fsize - 512));
            goto out;
        }
        tailp = tail;
    }
    int best = 0;
    const struct diskfmt_ops *winner = NULL;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(formats); i++) {
        int score = formats[i]->probe(head, (size_t)n, tailp, fsize);
        if (score > best) {
            best = score;
            winner = formats[i];
        }
    }
    if (!winner) {
        p2v_err_set(err, EINVAL, "'%s': unknown image format", path);
        goto out;
    }
    *name = winner->name;
    r = 0;
out:
    close(fd);
    return r;
}

static struct diskfmt *handle_new(const struct diskfmt_ops *ops, const char *path,
                                  struct p2v_err *err)
{
    struct diskfmt *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(path))) {
        free(d);
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    d->ops = ops;
    d->write_align = 1;
    d->block_size = 4096;
    return d;
}

static void handle_free(struct diskfmt *d)
{
    free(d->path);
    free(d);
}

struct diskfmt *diskfmt_open(const char *path, const char *format, unsigned flags,
                             struct p2v_err *err)
{
    if (!format && diskfmt_probe(path, &format, err) < 0)
        return NULL;
    const struct diskfmt_ops *ops = find_format(format);
    if (!ops) {
        p2v_err_set(err, EINVAL, "unknown image format '%s'", format);
        return NULL;
    }
    struct diskfmt *d = handle_new(ops, path, err);
    if (!d)
        return NULL;
    d->writable = (flags & DISKFMT_RDWR) != 0;
    if (ops->open(d, flags, err) < 0) {
        handle_free(d);
        return NULL;
    }
    return d;
}

/* A writable handle for a create (@resume false) or a resume of @format at @path, before
 * the format's own create or resume sets what it knows. */
static struct diskfmt *writer_handle(const char *path, const char *format, bool resume,
                                     struct p2v_err *err)
{
    const struct diskfmt_ops *ops = find_format(format);
    if (!ops) {
        p2v_err_set(err, EINVAL, "unknown image format '%s'", format);
        return NULL;
    }
    if (resume ? !ops->resume : !ops->create) {
        p2v_err_set(err, ENOTSUP, resume ?
                    "'%s': resuming the writing of %s images is not supported" :
                    "'%s': creating %s images is not supported", path, ops->name);
        return NULL;
    }
    struct diskfmt *d = handle_new(ops, path, err);
    if (d)
        d->writable = true;
    return d;
}

struct diskfmt *diskfmt_create(const char *path, const char *format,
                               const struct diskfmt_create_opts *opts, struct p2v_err *err)
{
    struct diskfmt *d = writer_handle(path, format, false, err);
    if (d && d->ops->create(d, opts, err) < 0) {
        handle_free(d);
        return NULL;
    }
    return d;
}

struct diskfmt *diskfmt_resume(const char *path, const char *format, uint64_t mark,
                               struct p2v_err *err)
{
    if (!format && diskfmt_probe(path, &format, err) < 0)
        return NULL;
    /* the handle a create makes: the format's resume sets what its create sets */
    struct diskfmt *d = writer_handle(path, format, true, err);
    if (d && d->ops->resume(d, mark, err) < 0) {
        handle_free(d);
        return NULL;
    }
    return d;
}

int diskfmt_checkpoint(struct diskfmt *d, uint64_t *mark, struct p2v_err *err)
{
    if (!d->writable)
        return p2v_err_set(err, EBADF, "'%s': image is open read-only", d->path);
    if (!d->ops->checkpoint)
        return p2v_err_set(err, ENOTSUP, "'%s': %s images cannot be resumed, so they have "
                           "no checkpoints", d->path, d->ops->name);
    return d->ops->checkpoint(d, mark, err);
}

uint64_t diskfmt_size(const struct diskfmt *d) { return d->size; }
const char *diskfmt_format(const struct diskfmt *d) { return d->ops->name; }
const char *diskfmt_path(const struct diskfmt *d) { return d->path; }
uint32_t diskfmt_write_align(const struct diskfmt *d) { return d->write_align; }
bool diskfmt_sequential_writes(const struct diskfmt *d) { return d->sequential; }
uint32_t diskfmt_block_size(const struct diskfmt *d) { return d->block_size; }

static int check_range(struct diskfmt *d, uint64_t off, uint64_t len, bool write,
                       struct p2v_err *err)
{
    if (!p2v_range_ok(off, len, d->size))
        return p2v_err_set(err, EINVAL,
                           "'%s': request at offset %llu length %llu is past the end "
                           "of the disk (%llu bytes)",
                           d->path, (unsigned long long)off, (unsigned long long)len,
                           (unsigned long long)d->size);
    if (write && !d->writable)
        return p2v_err_set(err, EBADF, "'%s': image is open read-only", d->path);
    if (write && d->write_align > 1 && off % d->write_align)
        return p2v_err_set(err, EINVAL, "'%s': write at offset %llu is not aligned to %u",
                           d->path, (unsigned long long)off, d->write_align);
    return 0;
}

int diskfmt_pread(struct diskfmt *d, void *buf, size_t len, uint64_t off,
                  struct p2v_err *err)
{
    if (check_range(d, off, len, false, err) < 0)
        return -1;
    if (len == 0)
        return 0;
    return d->ops->pread(d, buf, len, off, err);
}

int diskfmt_pwrite(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                   struct p2v_err *err)
{
    if (check_range(d, off, len, true, err) < 0)
        return -1;
    if (len == 0)
        return 0;
    return d->ops->pwrite(d, buf, len, off, err);
}

int diskfmt_pwrite_data(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                        uint32_t grain, struct p2v_err *err)
{
    const uint8_t *p = buf;
    if (grain == 0)
        return p2v_err_set(err, EINVAL, "'%s': a write grain of 0 bytes", d->path);
    size_t pos = 0;
    while (pos < len) {
        /* grains are aligned to the image's offsets, not the buffer's */
        size_t n = (size_t)P2V_MIN((uint64_t)grain - (off + pos) % grain, (uint64_t)(len - pos));
        if (p2v_is_zero(p + pos, n)) {
            pos += n;
            continue;
        }
        /* extend the run over the following grains that hold data */
        size_t end = pos + n;
        while (end < len) {
            size_t m = (size_t)P2V_MIN((uint64_t)grain, (uint64_t)(len - end));
            if (p2v_is_zero(p + end, m))
                break;
            end += m;
        }
        if (diskfmt_pwrite(d, p + pos, end - pos, off + pos, err) < 0)
            return -1;
        pos = end;
    }
    return 0;
}

int diskfmt_zero(struct diskfmt *d, uint64_t off, uint64_t len, struct p2v_err *err)
{
    if (check_range(d, off, len, true, err) < 0)
        return -1;
    if (len == 0)
        return 0;
    if (!d->ops->zero)
        return diskfmt_zero_by_writing(d, off, len, err);
    return d->ops->zero(d, off, len, err);
}

int diskfmt_block_status(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                         unsigned *flags, struct p2v_err *err)
{
    if (check_range(d, off, len, false, err) < 0)
        return -1;
    if (len == 0)
        return p2v_err_set(err, EINVAL, "'%s': block status of an empty range", d->path);
    uint64_t r = 0;
    unsigned f = 0;
    if (!d->ops->block_status) {
        r = len;
    } else if (d->ops->block_status(d, off, len, &r, &f, err) < 0) {
        return -1;
    }
    if (r == 0 || r > len)
        abort(); /* a format broke its contract */
    *run = r;
    *flags = f;
    return 0;
}

int diskfmt_flush(struct diskfmt *d, struct p2v_err *err)
{
    if (!d->writable || !d->ops->flush)
        return 0;
    return d->ops->flush(d, err);
}

int diskfmt_close(struct diskfmt *d, struct p2v_err *err)
{
    if (!d)
        return 0;
    int r = d->ops->close(d, true, err);
    handle_free(d);
    return r;
}

void diskfmt_abandon(struct diskfmt *d)
{
    if (!d)
        return;
    d->ops->close(d, false, NULL);
    handle_free(d);
}

int diskfmt_info(struct diskfmt *d, struct p2v_json *j, struct p2v_err *err)
{
    p2v_json_kv_string(j, "filename", d->path);
    p2v_json_kv_string(j, "format", d->ops->name);
    p2v_json_kv_u64(j, "virtual-size", d->size);
    struct stat st;
    if (stat(d->path, &st) == 0)
        p2v_json_kv_u64(j, "actual-size", (uint64_t)st.st_blocks * 512);
    if (d->ops->info)
        return d->ops->info(d, j, err);
    return 0;
}

int diskfmt_check(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err)
{
    memset(res, 0, sizeof *res);
    if (!d->ops->check)
        return 0;
    return d->ops->check(d, res, err);
}

uint64_t diskfmt_file_allocated(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    return (uint64_t)st.st_blocks * 512;
}

int diskfmt_zero_by_writing(struct diskfmt *d, uint64_t off, uint64_t len,
                            struct p2v_err *err)
{
    static const uint8_t zeros[65536];
    while (len) {
        size_t n = len < sizeof zeros ? (size_t)len : sizeof zeros;
        if (d->ops->pwrite(d, zeros, n, off, err) < 0)
            return -1;
        off += n;
        len -= n;
    }
    return 0;
}

int diskfmt_status_all_data(struct diskfmt *d, uint64_t off, uint64_t len, uint64_t *run,
                            unsigned *flags, struct p2v_err *err)
{
    *run = len;
    *flags = 0;
    return 0;
}

/* Durability of finished images (see diskfmt_set_sync). One setting per process, as a
 * tool's cache mode is; atomic so that threads may read it while main sets it early. */
static _Atomic bool sync_enabled = true;

void diskfmt_set_sync(bool on)
{
    sync_enabled = on;
}

int diskfmt_fdatasync(int fd)
{
    return sync_enabled ? fdatasync(fd) : 0;
}

int diskfmt_read_exact(int fd, void *buf, size_t len, uint64_t off, const char *path,
                       struct p2v_err *err)
{
    ssize_t n = p2v_pread_full(fd, buf, len, off);
    if (n < 0)
        return p2v_err_errno(err, "'%s': read error at offset %llu", path,
                             (unsigned long long)off);
    if ((size_t)n < len)
        return p2v_err_set(err, EIO, "'%s': unexpected end of file at offset %llu", path,
                           (unsigned long long)(off + (uint64_t)n));
    return 0;
}

int diskfmt_write_exact(int fd, const void *buf, size_t len, uint64_t off,
                        const char *path, struct p2v_err *err)
{
    if (p2v_pwrite_full(fd, buf, len, off) < 0)
        return p2v_err_errno(err, "'%s': write error at offset %llu", path,
                             (unsigned long long)off);
    return 0;
}

/* Renyi order-2 entropy on two 4 KiB samples, integer only: for N bytes with counts c[i],
 * sum c^2 is ~N^2/256 for random data and far larger for anything deflate or zstd
 * shrinks. Below 1.5x the random value (H2 > 7.4 bits per byte) the block is called
 * incompressible. A wrong guess costs only size or time, never correctness. */
bool diskfmt_looks_incompressible(const uint8_t *p, size_t len)
{
    uint32_t c[256] = {0};
    size_t n = 0, sample = 4096;
    if (len < 2 * sample) {
        for (size_t i = 0; i < len; i++)
            c[p[i]]++;
        n = len;
    } else {
        for (size_t i = 0; i < sample; i++)
            c[p[i]]++;
        const uint8_t *m = p + len / 2;
        for (size_t i = 0; i < sample; i++)
            c[m[i]]++;
        n = 2 * sample;
    }
    if (n < 512)
        return false;
    uint64_t sq = 0;
    for (int i = 0; i < 256; i++)
        sq += (uint64_t)c[i] * c[i];
    /* sq < 1.5 * n^2 / 256  <=>  512 * sq < 3 * n^2 */
    return 512 * sq < 3 * (uint64_t)n * n;
}
