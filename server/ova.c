/* ova.c: writing a VM's configurations into a folder — the files of every requested
 * output under temporary names, renamed together at the end (or all removed on failure);
 * disks converted to VMDK through libdiskfmt (zero runs skipped, in increasing order as a
 * streamOptimized writer needs); the OVF's manifest (SHA-256 of each file, computed by
 * reading it back in chunks) and the OVA, a ustar archive streamed from the files: the
 * .ovf first, then the .mf, then the disks (DSP0243 section 5.3), never a whole disk in
 * memory.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


#include "diskfmt.h"
#include "server.h"
#include "vmconfig.h"

#define VM_COPY_CHUNK (4u << 20)
/* files one vmconfig_write may make: 5 texts + a manifest + 2 VMDKs per disk */
#define VM_TXN_MAX (8 + 2 * VM_DISKS_MAX)
#define VM_FILE_MAX (VM_NAME_MAX + 32)

/* ---------------------------------------------------------------- transaction */

struct vm_txn {
    int dirfd;
    const char *outdir;
    unsigned n;
    struct {
        char tmp[VM_FILE_MAX];
        char final[VM_FILE_MAX]; /* "" for an intermediate file, removed at the end */
    } f[VM_TXN_MAX];
};

/* Reserve a temporary name for @final (NULL: an intermediate file named after @stem). */
static const char *txn_add(struct vm_txn *t, const char *final, const char *stem,
                           struct p2v_err *err)
{
    if (t->n >= VM_TXN_MAX) {
        p2v_err_set(err, E2BIG, "too many output files");
        return NULL;
    }
    const char *base = final ? final : stem;
    if ((size_t)snprintf(t->f[t->n].tmp, VM_FILE_MAX, ".%s.tmp", base) >= VM_FILE_MAX) {
        p2v_err_set(err, ENAMETOOLONG, "file name '%s' is too long", base);
        return NULL;
    }
    snprintf(t->f[t->n].final, VM_FILE_MAX, "%s", final ? final : "");
    /* a stale temporary file of an earlier run */
    unlinkat(t->dirfd, t->f[t->n].tmp, 0);
    return t->f[t->n++].tmp;
}

static void txn_abort(struct vm_txn *t)
{
    for (unsigned i = 0; i < t->n; i++)
        unlinkat(t->dirfd, t->f[i].tmp, 0);
    t->n = 0;
}

static int txn_commit(struct vm_txn *t, struct p2v_buf *written, struct p2v_err *err)
{
    unsigned i;
    for (i = 0; i < t->n; i++) {
        if (!t->f[i].final[0]) {
            unlinkat(t->dirfd, t->f[i].tmp, 0);
            continue;
        }
        if (renameat(t->dirfd, t->f[i].tmp, t->dirfd, t->f[i].final) < 0) {
            p2v_err_errno(err, "cannot rename '%s/%s'", t->outdir, t->f[i].tmp);
            /* take back what was renamed, so that the folder has all or nothing */
            for (unsigned k = 0; k < i; k++)
                if (t->f[k].final[0])
                    unlinkat(t->dirfd, t->f[k].final, 0);
            txn_abort(t);
            return -1;
        }
        if (written && p2v_buf_printf(written, "%s\n", t->f[i].final) < 0)
            written = NULL;
    }
    t->n = 0;
    if (fsync(t->dirfd) < 0)
        return p2v_err_errno(err, "cannot sync '%s'", t->outdir);
    return 0;
}

static int write_all_fd(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A new file @tmp in the output folder. */
static int create_at(struct vm_txn *t, const char *tmp, int mode, struct p2v_err *err)
{
    int fd = openat(t->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return p2v_err_errno(err, "cannot create '%s/%s'", t->outdir, tmp);
    /* the mode whatever the umask: the QEMU script must be executable */
    if (fchmod(fd, (mode_t)mode) < 0) {
        p2v_err_errno(err, "cannot set the mode of '%s/%s'", t->outdir, tmp);
        close(fd);
        return -1;
    }
    return fd;
}

static int txn_write_text(struct vm_txn *t, const char *final, const struct p2v_buf *b,
                          int mode, struct p2v_err *err)
{
    const char *tmp = txn_add(t, final, NULL, err);
    if (!tmp)
        return -1;
    int fd = create_at(t, tmp, mode, err);
    if (fd < 0)
        return -1;
    if (write_all_fd(fd, b->data, b->len) < 0 || fsync(fd) < 0) {
        p2v_err_errno(err, "cannot write '%s/%s'", t->outdir, tmp);
        close(fd);
        return -1;
    }
    if (close(fd) < 0)
        return p2v_err_errno(err, "cannot write '%s/%s'", t->outdir, tmp);
    return 0;
}

/* ---------------------------------------------------------------- conversion */

static bool stopped(const atomic_bool *stop)
{
    return stop && atomic_load(stop);
}

/* Copy [start, end) of @src into @dst, leaving out grains that are all zeros. */
static int copy_range(struct diskfmt *src, struct diskfmt *dst, uint64_t start, uint64_t end,
                      uint64_t grain, uint8_t *buf, const atomic_bool *stop,
                      struct p2v_err *err)
{
    for (uint64_t off = start; off < end;) {
        if (stopped(stop))
            return p2v_err_set(err, ECANCELED, "stopped");
        size_t n = (size_t)P2V_MIN((uint64_t)VM_COPY_CHUNK, end - off);
        if (diskfmt_pread(src, buf, n, off, err) < 0)
            return -1;
        if (diskfmt_pwrite_data(dst, buf, n, off, (uint32_t)grain, err) < 0)
            return -1;
        off += n;
    }
    return 0;
}

/* Convert @d into a new VMDK @path (subformat @sub). Runs the source reports as zeros are
 * skipped; the others are copied grain-aligned and in increasing order. */
static int convert_vmdk(const struct vm_disk *d, const char *path, const char *sub,
                        const atomic_bool *stop, struct p2v_err *err)
{
    struct diskfmt *src = NULL, *dst = NULL;
    uint8_t *buf = NULL;
    int r = -1;
    if (!(buf = malloc(VM_COPY_CHUNK))) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    if (!(src = diskfmt_open(d->path, d->format, DISKFMT_RDONLY, err)))
        goto out;
    struct diskfmt_create_opts o = {.size = d->size, .subformat = sub};
    if (!(dst = diskfmt_create(path, "vmdk", &o, err)))
        goto out;
    uint64_t grain = P2V_MAX(P2V_MAX(diskfmt_block_size(dst), diskfmt_write_align(dst)), 512u);
    if (!p2v_is_pow2(grain) || grain > VM_COPY_CHUNK)
        grain = 65536;
    uint64_t pos = 0, done = 0, size = d->size;
    while (pos < size) {
        uint64_t run;
        unsigned flags;
        if (stopped(stop)) {
            p2v_err_set(err, ECANCELED, "stopped");
            goto out;
        }
        if (diskfmt_block_status(src, pos, P2V_MIN(size - pos, (uint64_t)1 << 30), &run,
                                 &flags, err) < 0)
            goto out;
        if (run == 0)
            run = 1; /* cannot happen (1..len); never loop forever */
        if (flags & DISKFMT_STATUS_ZERO) {
            pos += run;
            continue;
        }
        uint64_t start = P2V_MAX(pos - pos % grain, done), end;
        if (!p2v_align_up(pos + run, grain, &end) || end > size)
            end = size;
        if (start < end && copy_range(src, dst, start, end, grain, buf, stop, err) < 0)
            goto out;
        done = P2V_MAX(done, end);
        pos = P2V_MAX(pos + run, end);
    }
    struct diskfmt *tmp = dst;
    dst = NULL;
    if (diskfmt_close(tmp, err) < 0)
        goto out;
    r = 0;
out:
    if (r < 0 && err)
        p2v_err_prefix(err, "converting '%s' to VMDK", d->path);
    if (dst)
        diskfmt_abandon(dst);
    diskfmt_close(src, NULL);
    free(buf);
    return r;
}

/* SHA-256 and size of the file @name in the output folder, read in chunks. */
static int sha256_file(struct vm_txn *t, const char *name, uint8_t out[32], uint64_t *size,
                       struct p2v_err *err)
{
    int fd = openat(t->dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), r = -1;
    struct p2v_digest *ctx = p2v_digest_new(P2V_HASH_SHA256);
    uint8_t *buf = malloc(VM_COPY_CHUNK);
    uint64_t total = 0;
    if (fd < 0 || !ctx || !buf) {
        p2v_err_errno(err, "cannot read '%s/%s'", t->outdir, name);
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, VM_COPY_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            p2v_err_errno(err, "cannot read '%s/%s'", t->outdir, name);
            goto out;
        }
        if (n == 0)
            break;
        if (p2v_digest_update(ctx, buf, (size_t)n) < 0) {
            p2v_err_set(err, EIO, "SHA-256 failed");
            goto out;
        }
        total += (uint64_t)n;
    }
    if (p2v_digest_final(ctx, out) < 0) {
        p2v_err_set(err, EIO, "SHA-256 failed");
        goto out;
    }
    *size = total;
    r = 0;
out:
    free(buf);
    p2v_digest_free(ctx);
    if (fd >= 0)
        close(fd);
    return r;
}

/* ---------------------------------------------------------------- OVA */

static const uint8_t zero_block[VM_TAR_BLOCK];

static int tar_member_mem(int fd, const char *name, const struct p2v_buf *b, uint64_t mtime,
                          struct p2v_err *err)
{
    uint8_t hdr[VM_TAR_BLOCK];
    if (vmconfig_tar_header(hdr, name, b->len, mtime, err) < 0)
        return -1;
    size_t pad = (VM_TAR_BLOCK - b->len % VM_TAR_BLOCK) % VM_TAR_BLOCK;
    if (write_all_fd(fd, hdr, sizeof hdr) < 0 || write_all_fd(fd, b->data, b->len) < 0 ||
        write_all_fd(fd, zero_block, pad) < 0)
        return p2v_err_errno(err, "cannot write the OVA");
    return 0;
}

/* Append the file @src of the output folder as member @name, @size bytes (as hashed). */
static int tar_member_file(struct vm_txn *t, int fd, const char *name, const char *src,
                           uint64_t size, uint64_t mtime, uint8_t *buf,
                           const atomic_bool *stop, struct p2v_err *err)
{
    uint8_t hdr[VM_TAR_BLOCK];
    int in = -1, r = -1;
    if (vmconfig_tar_header(hdr, name, size, mtime, err) < 0)
        return -1;
    if ((in = openat(t->dirfd, src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0)
        return p2v_err_errno(err, "cannot read '%s/%s'", t->outdir, src);
    if (write_all_fd(fd, hdr, sizeof hdr) < 0) {
        p2v_err_errno(err, "cannot write the OVA");
        goto out;
    }
    for (uint64_t off = 0; off < size;) {
        if (stopped(stop)) {
            p2v_err_set(err, ECANCELED, "stopped");
            goto out;
        }
        size_t n = (size_t)P2V_MIN((uint64_t)VM_COPY_CHUNK, size - off);
        ssize_t got = p2v_pread_full(in, buf, n, off);
        if (got < 0 || (size_t)got != n) {
            p2v_err_errno(err, "cannot read '%s/%s' at offset %llu", t->outdir, src,
                          (unsigned long long)off);
            goto out;
        }
        if (write_all_fd(fd, buf, n) < 0) {
            p2v_err_errno(err, "cannot write the OVA");
            goto out;
        }
        off += n;
    }
    if (write_all_fd(fd, zero_block, (VM_TAR_BLOCK - size % VM_TAR_BLOCK) % VM_TAR_BLOCK) < 0) {
        p2v_err_errno(err, "cannot write the OVA");
        goto out;
    }
    r = 0;
out:
    close(in);
    return r;
}

/* ---------------------------------------------------------------- all outputs */

struct vm_writer {
    const struct vm_spec *spec;
    const struct vmconfig_opts *o;
    struct vm_txn t;
    struct p2v_buf text;
};

static int w_file(struct vm_writer *w, const char *ext, char out[VM_FILE_MAX],
                  struct p2v_err *err)
{
    if ((size_t)snprintf(out, VM_FILE_MAX, "%s%s", w->spec->name, ext) >= VM_FILE_MAX)
        return p2v_err_set(err, ENAMETOOLONG, "VM name '%s' is too long", w->spec->name);
    return 0;
}

static int outdir_path(struct vm_writer *w, const char *name, char out[PATH_MAX],
                       struct p2v_err *err)
{
    if ((size_t)snprintf(out, PATH_MAX, "%s/%s", w->t.outdir, name) >= PATH_MAX)
        return p2v_err_set(err, ENAMETOOLONG, "'%s/%s': path too long", w->t.outdir, name);
    return 0;
}

static bool in_place(const struct vm_writer *w, unsigned i)
{
    return w->o->use_vmdk_in_place && strcmp(w->spec->disks[i].format, "vmdk") == 0;
}

/* A relative reference from the output folder to a disk beside it or in its parent. */
static const char *rel_ref(const struct vm_writer *w, const char *path, char out[PATH_MAX])
{
    const char *slash = strrchr(path, '/');
    size_t ol = strlen(w->t.outdir);
    const char *oslash = strrchr(w->t.outdir, '/');
    if (slash && (size_t)(slash - path) == ol && strncmp(path, w->t.outdir, ol) == 0)
        return slash + 1;
    if (slash && oslash && slash - path == oslash - w->t.outdir &&
        strncmp(path, w->t.outdir, (size_t)(slash - path)) == 0 &&
        (size_t)snprintf(out, PATH_MAX, "../%s", slash + 1) < PATH_MAX)
        return out;
    return path;
}

static int write_vmx(struct vm_writer *w, struct p2v_err *err)
{
    const struct vm_spec *s = w->spec;
    char names[VM_DISKS_MAX][VM_FILE_MAX], refs[VM_DISKS_MAX][PATH_MAX], file[VM_FILE_MAX];
    const char *ptrs[VM_DISKS_MAX];
    for (unsigned i = 0; i < s->ndisks; i++) {
        if (in_place(w, i)) {
            ptrs[i] = rel_ref(w, s->disks[i].path, refs[i]);
            continue;
        }
        char path[PATH_MAX];
        snprintf(names[i], VM_FILE_MAX, "%s-disk%u.vmdk", s->name, i);
        const char *tmp = txn_add(&w->t, names[i], NULL, err);
        if (!tmp || outdir_path(w, tmp, path, err) < 0 ||
            convert_vmdk(&s->disks[i], path, "monolithicSparse", w->o->stop, err) < 0)
            return -1;
        ptrs[i] = names[i];
    }
    if (vmconfig_vmx_text(s, ptrs, &w->text, err) < 0 || w_file(w, ".vmx", file, err) < 0)
        return -1;
    return txn_write_text(&w->t, file, &w->text, 0644, err);
}

/* ovf and / or ova. */
static int write_ovf(struct vm_writer *w, struct p2v_err *err)
{
    const struct vm_spec *s = w->spec;
    bool want_ovf = w->o->outputs & VM_OUT_OVF, want_ova = w->o->outputs & VM_OUT_OVA;
    struct vm_ovf_file files[VM_DISKS_MAX];
    char names[VM_DISKS_MAX][VM_FILE_MAX], refs[VM_DISKS_MAX][PATH_MAX];
    const char *tmps[VM_DISKS_MAX];
    uint8_t sums[VM_DISKS_MAX][32];
    char ovf[VM_FILE_MAX], mf[VM_FILE_MAX], ova[VM_FILE_MAX];
    struct p2v_buf mft = P2V_BUF_INIT;
    uint8_t *buf = NULL;
    int fd = -1, r = -1;
    /* the job's own VMDKs, referred to in place: an OVF without a manifest (hashing the
     * disks again is the export's job), and no OVA */
    bool place = w->o->use_vmdk_in_place;
    for (unsigned i = 0; i < s->ndisks && place; i++)
        place = in_place(w, i);
    if (w_file(w, ".ovf", ovf, err) < 0 || w_file(w, ".mf", mf, err) < 0 ||
        w_file(w, ".ova", ova, err) < 0)
        goto out;
    p2v_buf_init(&mft, 0);
    for (unsigned i = 0; i < s->ndisks; i++) {
        char path[PATH_MAX];
        struct stat sb;
        if (place) {
            if (stat(s->disks[i].path, &sb) < 0) {
                p2v_err_errno(err, "disk '%s'", s->disks[i].path);
                goto out;
            }
            files[i] = (struct vm_ovf_file){rel_ref(w, s->disks[i].path, refs[i]),
                                            (uint64_t)sb.st_size, VM_OVF_SPARSE_URI};
            continue;
        }
        snprintf(names[i], VM_FILE_MAX, "%s-disk%u-stream.vmdk", s->name, i);
        /* the VMDK stays beside the .ovf, or is only packed into the OVA */
        tmps[i] = txn_add(&w->t, want_ovf ? names[i] : NULL, names[i], err);
        if (!tmps[i] || outdir_path(w, tmps[i], path, err) < 0 ||
            convert_vmdk(&s->disks[i], path, "streamOptimized", w->o->stop, err) < 0 ||
            sha256_file(&w->t, tmps[i], sums[i], &files[i].file_size, err) < 0)
            goto out;
        files[i].href = names[i];
        files[i].format_uri = VM_OVF_STREAM_URI;
    }
    if (vmconfig_ovf_text(s, files, &w->text, err) < 0)
        goto out;
    if (place) {
        r = want_ovf ? txn_write_text(&w->t, ovf, &w->text, 0644, err) : 0;
        goto out;
    }
    /* the manifest (DSP0243 5.1): ovf first, then the disks */
    {
        uint8_t sum[32];
        if (p2v_hash(P2V_HASH_SHA256, w->text.data, w->text.len, sum) < 0) {
            p2v_err_set(err, EIO, "SHA-256 failed");
            goto out;
        }
        if (vmconfig_mf_line(&mft, ovf, sum) < 0)
            goto nomem;
        for (unsigned i = 0; i < s->ndisks; i++)
            if (vmconfig_mf_line(&mft, names[i], sums[i]) < 0)
                goto nomem;
    }
    if (want_ovf && (txn_write_text(&w->t, ovf, &w->text, 0644, err) < 0 ||
                     txn_write_text(&w->t, mf, &mft, 0644, err) < 0))
        goto out;
    if (want_ova) {
        uint64_t now = (uint64_t)time(NULL);
        const char *tmp = txn_add(&w->t, ova, NULL, err);
        if (!tmp || (fd = create_at(&w->t, tmp, 0644, err)) < 0)
            goto out;
        if (!(buf = malloc(VM_COPY_CHUNK)))
            goto nomem;
        if (tar_member_mem(fd, ovf, &w->text, now, err) < 0 ||
            tar_member_mem(fd, mf, &mft, now, err) < 0)
            goto out;
        for (unsigned i = 0; i < s->ndisks; i++)
            if (tar_member_file(&w->t, fd, names[i], tmps[i], files[i].file_size, now, buf,
                                w->o->stop, err) < 0)
                goto out;
        /* the end of the archive: two zero blocks */
        if (write_all_fd(fd, zero_block, sizeof zero_block) < 0 ||
            write_all_fd(fd, zero_block, sizeof zero_block) < 0 || fsync(fd) < 0) {
            p2v_err_errno(err, "cannot write '%s/%s'", w->t.outdir, tmp);
            goto out;
        }
        int c = close(fd);
        fd = -1;
        if (c < 0) {
            p2v_err_errno(err, "cannot write '%s/%s'", w->t.outdir, tmp);
            goto out;
        }
    }
    r = 0;
    goto out;
nomem:
    p2v_err_set(err, ENOMEM, "out of memory");
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    p2v_buf_release(&mft);
    return r;
}

int vmconfig_write(const struct vm_spec *spec, const char *outdir,
                   const struct vmconfig_opts *opts, struct p2v_buf *written,
                   struct p2v_err *err)
{
    struct vm_writer w = {.spec = spec, .o = opts};
    char file[VM_FILE_MAX], *abs = NULL;
    int r = -1;
    w.t.dirfd = -1;
    p2v_buf_init(&w.text, 16u << 20);
    if (!(abs = realpath(outdir, NULL))) {
        p2v_err_errno(err, "output folder '%s'", outdir);
        goto out;
    }
    w.t.outdir = abs;
    if ((w.t.dirfd = open(abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        p2v_err_errno(err, "cannot open the output folder '%s'", abs);
        goto out;
    }
    if (!spec->name[0] || strchr(spec->name, '/') || spec->name[0] == '.') {
        p2v_err_set(err, EINVAL, "VM name '%s' is not a file name", spec->name);
        goto out;
    }
    if (opts->outputs & VM_OUT_LIBVIRT) {
        if (vmconfig_libvirt_text(spec, &w.text, err) < 0 || w_file(&w, ".xml", file, err) < 0 ||
            txn_write_text(&w.t, file, &w.text, 0644, err) < 0)
            goto out;
    }
    if (opts->outputs & VM_OUT_QEMU) {
        if (vmconfig_qemu_text(spec, abs, &w.text, err) < 0 || w_file(&w, ".sh", file, err) < 0 ||
            txn_write_text(&w.t, file, &w.text, 0755, err) < 0)
            goto out;
    }
    if ((opts->outputs & VM_OUT_VMX) && write_vmx(&w, err) < 0)
        goto out;
    if ((opts->outputs & (VM_OUT_OVF | VM_OUT_OVA)) && write_ovf(&w, err) < 0)
        goto out;
    if (txn_commit(&w.t, written, err) < 0)
        goto out;
    r = 0;
out:
    if (r < 0 && w.t.dirfd >= 0)
        txn_abort(&w.t);
    if (w.t.dirfd >= 0)
        close(w.t.dirfd);
    p2v_buf_release(&w.text);
    free(abs);
    return r;
}
