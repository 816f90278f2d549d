/* ext2io.c: read-only access to an ext2/3/4 file system inside a disk image, through
 * libext2fs with an io_manager of our own ("p2vdisk") whose reads go to libdiskfmt's
 * diskfmt_pread() within a partition window [offset, offset + size). Nothing is mounted
 * and nothing is written: every write entry point fails with EXT2_ET_RO_FILSYS.
 *
 * libext2fs opens a channel by name only. vmm_ext2_open() puts (image, window) in a small
 * mutex-protected registry under a unique name "p2vdisk:<slot>:<serial>", calls
 * ext2fs_open2() with that name, and removes the entry once the open returns: the channel
 * then holds its own copy of the window. So opens from several threads are safe; each
 * open file system must be used by one thread at a time, like the image under it.
 *
 * A file system whose journal needs recovery is read as it is on disk (no replay): what
 * boot files the last transactions changed may be stale; boot files rarely are.
 */
#include <errno.h>
#include <et/com_err.h>
#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootcfg-int.h"
#include "diskfmt.h"

#define EXT2IO_SLOTS 16          /* concurrent opens in progress */
#define EXT2IO_LINK_HOPS 8       /* symbolic links followed at a path's end */
#define EXT2IO_LINK_MAX 4096u    /* bytes of a symbolic link's target (PATH_MAX) */
#define EXT2IO_PATH_MAX 8192u    /* bytes of a path built while following links */

struct ext2io_window {
    struct diskfmt *img;
    uint64_t off, size;
};

static pthread_mutex_t ext2io_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    bool used;
    unsigned serial;
    struct ext2io_window w;
} ext2io_reg[EXT2IO_SLOTS];
static unsigned ext2io_serial;

struct vmm_ext2 {
    ext2_filsys fs;
    char uuid[37];
};

/* ------------------------------------------------------------------ the io_manager */

static errcode_t p2vdisk_open(const char *name, int flags, io_channel *channel);
static errcode_t p2vdisk_close(io_channel ch);
static errcode_t p2vdisk_set_blksize(io_channel ch, int blksize);
static errcode_t p2vdisk_read_blk(io_channel ch, unsigned long block, int count, void *buf);
static errcode_t p2vdisk_read_blk64(io_channel ch, unsigned long long block, int count,
                                    void *buf);
static errcode_t p2vdisk_write_blk(io_channel ch, unsigned long block, int count,
                                   const void *buf);
static errcode_t p2vdisk_write_blk64(io_channel ch, unsigned long long block, int count,
                                     const void *buf);
static errcode_t p2vdisk_flush(io_channel ch);
static errcode_t p2vdisk_set_option(io_channel ch, const char *option, const char *arg);

static struct struct_io_manager p2vdisk_manager = {
    .magic = EXT2_ET_MAGIC_IO_MANAGER,
    .name = "p2vkit diskfmt read-only I/O manager",
    .open = p2vdisk_open,
    .close = p2vdisk_close,
    .set_blksize = p2vdisk_set_blksize,
    .read_blk = p2vdisk_read_blk,
    .write_blk = p2vdisk_write_blk,
    .flush = p2vdisk_flush,
    .set_option = p2vdisk_set_option,
    .read_blk64 = p2vdisk_read_blk64,
    .write_blk64 = p2vdisk_write_blk64,
};

static errcode_t p2vdisk_open(const char *name, int flags, io_channel *channel)
{
    unsigned slot, serial;
    struct ext2io_window w;
    bool found = false;

    if (flags & IO_FLAG_RW)
        return EXT2_ET_RO_FILSYS;
    if (!name || sscanf(name, "p2vdisk:%u:%u", &slot, &serial) != 2 || slot >= EXT2IO_SLOTS)
        return EXT2_ET_BAD_DEVICE_NAME;
    pthread_mutex_lock(&ext2io_lock);
    if (ext2io_reg[slot].used && ext2io_reg[slot].serial == serial) {
        w = ext2io_reg[slot].w;
        found = true;
    }
    pthread_mutex_unlock(&ext2io_lock);
    if (!found)
        return EXT2_ET_BAD_DEVICE_NAME;

    io_channel ch = calloc(1, sizeof(*ch));
    struct ext2io_window *priv = malloc(sizeof(*priv));
    char *n = strdup(name);
    if (!ch || !priv || !n) {
        free(ch);
        free(priv);
        free(n);
        return EXT2_ET_NO_MEMORY;
    }
    *priv = w;
    ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
    ch->manager = &p2vdisk_manager;
    ch->name = n;
    ch->block_size = 1024;
    ch->refcount = 1;
    ch->private_data = priv;
    *channel = ch;
    return 0;
}

static errcode_t p2vdisk_close(io_channel ch)
{
    if (ch->magic != EXT2_ET_MAGIC_IO_CHANNEL)
        return EXT2_ET_MAGIC_IO_CHANNEL;
    if (--ch->refcount > 0)
        return 0;
    free(ch->private_data);
    free(ch->name);
    free(ch);
    return 0;
}

static errcode_t p2vdisk_set_blksize(io_channel ch, int blksize)
{
    if (blksize <= 0)
        return EXT2_ET_INVALID_ARGUMENT;
    ch->block_size = blksize;
    return 0;
}

static errcode_t p2vdisk_read_blk64(io_channel ch, unsigned long long block, int count,
                                    void *buf)
{
    const struct ext2io_window *w = ch->private_data;
    uint64_t len, off;

    /* count < 0 means -count bytes (the superblock), as for unix_io */
    if (count < 0)
        len = (uint64_t)(-(int64_t)count);
    else if (P2V_MUL_OVERFLOW((uint64_t)count, (uint64_t)ch->block_size, &len))
        return EXT2_ET_INVALID_ARGUMENT;
    if (P2V_MUL_OVERFLOW((uint64_t)block, (uint64_t)ch->block_size, &off) ||
        !p2v_range_ok(off, len, w->size) || len > SIZE_MAX)
        return EXT2_ET_SHORT_READ; /* outside the partition */
    if (len == 0)
        return 0;
    struct p2v_err e;
    if (diskfmt_pread(w->img, buf, (size_t)len, w->off + off, &e) < 0) {
        p2v_log(P2V_LOG_DEBUG, "ext2io: read of %" PRIu64 " bytes at partition offset %" PRIu64
                ": %s", len, off, e.msg);
        return EXT2_ET_SHORT_READ;
    }
    return 0;
}

static errcode_t p2vdisk_read_blk(io_channel ch, unsigned long block, int count, void *buf)
{
    return p2vdisk_read_blk64(ch, block, count, buf);
}

static errcode_t p2vdisk_write_blk(io_channel ch, unsigned long block, int count,
                                   const void *buf)
{
    return EXT2_ET_RO_FILSYS;
}

static errcode_t p2vdisk_write_blk64(io_channel ch, unsigned long long block, int count,
                                     const void *buf)
{
    return EXT2_ET_RO_FILSYS;
}

static errcode_t p2vdisk_flush(io_channel ch)
{
    return 0;
}

static errcode_t p2vdisk_set_option(io_channel ch, const char *option, const char *arg)
{
    return EXT2_ET_INVALID_ARGUMENT;
}

/* ------------------------------------------------------------------ file system */

struct vmm_ext2 *vmm_ext2_open(struct diskfmt *img, uint64_t off, uint64_t size,
                               struct p2v_err *err)
{
    struct vmm_ext2 *r = NULL;
    int slot = -1;
    unsigned serial = 0;
    char name[64];
    ext2_filsys fs = NULL;

    pthread_mutex_lock(&ext2io_lock);
    for (int i = 0; i < EXT2IO_SLOTS; i++)
        if (!ext2io_reg[i].used) {
            slot = i;
            serial = ++ext2io_serial;
            ext2io_reg[i].used = true;
            ext2io_reg[i].serial = serial;
            ext2io_reg[i].w = (struct ext2io_window){img, off, size};
            break;
        }
    pthread_mutex_unlock(&ext2io_lock);
    if (slot < 0) {
        p2v_err_set(err, EBUSY, "ext2: more than %d file systems being opened at once",
                    EXT2IO_SLOTS);
        return NULL;
    }
    snprintf(name, sizeof(name), "p2vdisk:%d:%u", slot, serial);
    errcode_t rc = ext2fs_open2(name, NULL, EXT2_FLAG_64BITS, 0, 0, &p2vdisk_manager, &fs);
    pthread_mutex_lock(&ext2io_lock);
    ext2io_reg[slot].used = false;
    pthread_mutex_unlock(&ext2io_lock);
    if (rc) {
        p2v_err_set(err, EINVAL, "ext2: cannot open the file system at offset %" PRIu64
                    " (%" PRIu64 " bytes): %s", off, size, error_message(rc));
        return NULL;
    }
    if (!(r = calloc(1, sizeof(*r)))) {
        ext2fs_close_free(&fs);
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    r->fs = fs;
    const uint8_t *u = fs->super->s_uuid;
    snprintf(r->uuid, sizeof(r->uuid),
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
    return r;
}

void vmm_ext2_close(struct vmm_ext2 *fs)
{
    if (!fs)
        return;
    ext2fs_close_free(&fs->fs);
    free(fs);
}

const char *vmm_ext2_uuid(const struct vmm_ext2 *fs)
{
    return fs->uuid;
}

static int ext2_err(struct p2v_err *err, errcode_t rc, const char *path, const char *what)
{
    int code = rc == EXT2_ET_FILE_NOT_FOUND || rc == EXT2_ET_NO_DIRECTORY ? ENOENT : EIO;
    return p2v_err_set(err, code, "'%s': %s: %s", path, what, error_message(rc));
}

/* Read a file's first @len bytes (its whole content, @len being its size). */
static int read_inode_data(ext2_filsys fs, ext2_ino_t ino, uint8_t *buf, size_t len,
                           const char *path, struct p2v_err *err)
{
    ext2_file_t f = NULL;
    errcode_t rc = ext2fs_file_open(fs, ino, 0, &f);
    if (rc)
        return ext2_err(err, rc, path, "cannot open");
    size_t done = 0;
    int r = 0;
    while (done < len) {
        unsigned int want = len - done > (1u << 30) ? (1u << 30) : (unsigned int)(len - done);
        unsigned int got = 0;
        rc = ext2fs_file_read(f, buf + done, want, &got);
        if (rc) {
            r = ext2_err(err, rc, path, "read error");
            break;
        }
        if (got == 0) {
            r = p2v_err_set(err, EIO, "'%s': short read (%zu of %zu bytes)", path, done, len);
            break;
        }
        done += got;
    }
    ext2fs_file_close(f);
    return r;
}

/* The target of the symbolic link @ino (malloc'd). */
static char *read_link(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode *inode,
                       const char *path, struct p2v_err *err)
{
    uint64_t size = EXT2_I_SIZE(inode);
    char *t = NULL;
    if (size == 0 || size > EXT2IO_LINK_MAX) {
        p2v_err_set(err, EINVAL, "'%s': symbolic link of %" PRIu64 " bytes", path, size);
        return NULL;
    }
    /* room for inline data, which may report more than i_size */
    size_t room = EXT2IO_LINK_MAX + sizeof(inode->i_block) + 1;
    if (!(t = calloc(1, room))) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    if (inode->i_flags & EXT4_INLINE_DATA_FL) {
        size_t got = 0;
        errcode_t rc = ext2fs_inline_data_size(fs, ino, &got);
        if (!rc && got > room - 1)
            rc = EXT2_ET_INVALID_ARGUMENT;
        if (!rc)
            rc = ext2fs_inline_data_get(fs, ino, inode, t, &got);
        if (rc) {
            ext2_err(err, rc, path, "cannot read the symbolic link");
            goto fail;
        }
    } else if (ext2fs_is_fast_symlink(inode)) {
        if (size > sizeof(inode->i_block)) {
            p2v_err_set(err, EINVAL, "'%s': fast symbolic link of %" PRIu64 " bytes", path,
                        size);
            goto fail;
        }
        memcpy(t, inode->i_block, size);
    } else if (read_inode_data(fs, ino, (uint8_t *)t, size, path, err) < 0) {
        goto fail;
    }
    t[size] = '\0';
    if (strlen(t) != size) {
        p2v_err_set(err, EINVAL, "'%s': symbolic link target holds a NUL", path);
        goto fail;
    }
    return t;
fail:
    free(t);
    return NULL;
}

int vmm_ext2_read_file(struct vmm_ext2 *xfs, const char *path, size_t cap, uint8_t **data,
                       size_t *len, char **resolved, struct p2v_err *err)
{
    ext2_filsys fs = xfs->fs;
    char *cur = strdup(path);
    uint8_t *buf = NULL;
    int r = -1;
    ext2_ino_t ino = 0;
    struct ext2_inode inode;

    if (!cur)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (int hop = 0;; hop++) {
        /* namei follows links inside the path; the last component's we follow here, to
         * know the final path */
        errcode_t rc = ext2fs_namei(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, cur, &ino);
        if (!rc)
            rc = ext2fs_read_inode(fs, ino, &inode);
        if (rc) {
            ext2_err(err, rc, cur, "not found");
            goto out;
        }
        if (!LINUX_S_ISLNK(inode.i_mode))
            break;
        if (hop == EXT2IO_LINK_HOPS) {
            p2v_err_set(err, ELOOP, "'%s': more than %d symbolic links", path,
                        EXT2IO_LINK_HOPS);
            goto out;
        }
        char *target = read_link(fs, ino, &inode, cur, err);
        if (!target)
            goto out;
        char *next;
        if (target[0] == '/') {
            next = target;
        } else {
            const char *slash = strrchr(cur, '/');
            size_t dl = slash ? (size_t)(slash - cur) : 0;
            size_t tl = strlen(target);
            if (dl + tl + 2 > EXT2IO_PATH_MAX) {
                free(target);
                p2v_err_set(err, ENAMETOOLONG, "'%s': path too long following links", path);
                goto out;
            }
            next = malloc(dl + tl + 2);
            if (!next) {
                free(target);
                p2v_err_set(err, ENOMEM, "out of memory");
                goto out;
            }
            memcpy(next, cur, dl);
            next[dl] = '/';
            memcpy(next + dl + 1, target, tl + 1);
            free(target);
        }
        free(cur);
        cur = next;
    }
    if (!LINUX_S_ISREG(inode.i_mode)) {
        p2v_err_set(err, EINVAL, "'%s': not a regular file (mode 0%o)", cur, inode.i_mode);
        goto out;
    }
    uint64_t size = EXT2_I_SIZE(&inode);
    if (size > cap) {
        p2v_err_set(err, EFBIG, "'%s': %" PRIu64 " bytes is over the %zu byte limit", cur, size,
                    cap);
        goto out;
    }
    if (size && !(buf = malloc((size_t)size))) {
        p2v_err_set(err, ENOMEM, "'%s': cannot allocate %" PRIu64 " bytes", cur, size);
        goto out;
    }
    if (read_inode_data(fs, ino, buf, (size_t)size, cur, err) < 0)
        goto out;
    *data = buf;
    *len = (size_t)size;
    buf = NULL;
    if (resolved) {
        *resolved = cur;
        cur = NULL;
    }
    r = 0;
out:
    free(buf);
    free(cur);
    return r;
}
