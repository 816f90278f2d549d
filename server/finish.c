/* finish.c: the end of a capture — each disk's sparse staging file becomes its final
 * image (qcow2, VMDK or raw) through libdiskfmt.
 *
 * Only the staging file's data runs are read (SEEK_DATA / SEEK_HOLE), in chunks of 4 MiB,
 * and blocks that are all zeros are not written, so the work follows the data, not the
 * disk's size. Each image is written under a temporary name in the job folder and renamed
 * into place once complete; the staging files and journals are removed only after every
 * rename and after job.json says "received", so a server that dies on the way redoes the
 * whole step at the next DONE.
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
#include <unistd.h>

#include "diskfmt.h"
#include "server.h"

#define FINISH_CHUNK (4u << 20)

/* Copy the data runs of @fd (a staging file of @size bytes) into @df. */
static int copy_runs(int fd, uint64_t size, struct diskfmt *df, uint8_t *buf,
                     const atomic_bool *stop, const char *part, struct p2v_err *err)
{
    uint64_t grain = P2V_MAX(P2V_MAX(diskfmt_block_size(df), diskfmt_write_align(df)), 4096u);
    if (!p2v_is_pow2(grain) || grain > FINISH_CHUNK)
        grain = 4096;
    uint64_t pos = 0;
    while (pos < size) {
        if (stop && atomic_load(stop))
            return p2v_err_set(err, ECANCELED, "the server is stopping");
        off_t data = lseek(fd, (off_t)pos, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO)
                break; /* only holes from here on */
            return p2v_err_errno(err, "cannot seek in '%s'", part);
        }
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0)
            return p2v_err_errno(err, "cannot seek in '%s'", part);
        uint64_t start = (uint64_t)data - (uint64_t)data % grain, end;
        if (start < pos)
            start = pos;
        if (!p2v_align_up((uint64_t)hole, grain, &end) || end > size)
            end = size;
        for (uint64_t off = start; off < end;) {
            if (stop && atomic_load(stop))
                return p2v_err_set(err, ECANCELED, "the server is stopping");
            size_t n = (size_t)P2V_MIN((uint64_t)FINISH_CHUNK, end - off);
            ssize_t got = p2v_pread_full(fd, buf, n, off);
            if (got < 0 || (size_t)got != n)
                return p2v_err_errno(err, "cannot read '%s' at offset %llu", part,
                                     (unsigned long long)off);
            /* write runs of blocks that are not all zeros */
            size_t i = 0;
            while (i < n) {
                size_t b = (size_t)P2V_MIN(grain, (uint64_t)(n - i));
                if (p2v_is_zero(buf + i, b)) {
                    i += b;
                    continue;
                }
                size_t j = i + b;
                while (j < n) {
                    size_t b2 = (size_t)P2V_MIN(grain, (uint64_t)(n - j));
                    if (p2v_is_zero(buf + j, b2))
                        break;
                    j += b2;
                }
                if (diskfmt_pwrite(df, buf + i, j - i, off + i, err) < 0)
                    return -1;
                i = j;
            }
            off += n;
        }
        pos = end;
    }
    return 0;
}

static bool no_space(int code)
{
    return code == ENOSPC || code == EDQUOT;
}

int srv_job_remove_staging(struct srv_job *job)
{
    srv_job_close_files(job);
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        char name[32];
        snprintf(name, sizeof name, "disk%u.part", i);
        unlinkat(job->dirfd, name, 0);
        snprintf(name, sizeof name, "disk%u.journal", i);
        unlinkat(job->dirfd, name, 0);
    }
    return fsync(job->dirfd);
}

int srv_job_finish(struct srv_store *st, struct srv_job *job, const atomic_bool *stop,
                   struct p2v_err *err)
{
    uint8_t *buf = malloc(FINISH_CHUNK);
    char tmp[64], final[64] = "job.json", path[PATH_MAX];
    int r = -1;
    if (!buf)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        struct srv_disk *d = &job->disks[i];
        if (!d->known)
            continue;
        char part[32];
        snprintf(part, sizeof part, "disk%u.part", i);
        if (d->part_fd < 0) {
            p2v_err_set(err, EINVAL, "job '%s': '%s' is not open", job->id, part);
            goto out;
        }
        snprintf(final, sizeof final, "disk%u.%s", i, job->format);
        snprintf(tmp, sizeof tmp, ".disk%u.%s.tmp", i, job->format);
        if ((size_t)snprintf(path, sizeof path, "%s/jobs/%s/%s", st->path, job->id, tmp) >=
            sizeof path) {
            p2v_err_set(err, ENAMETOOLONG, "job '%s': path too long", job->id);
            goto out;
        }
        if (unlinkat(job->dirfd, tmp, 0) < 0 && errno != ENOENT) {
            p2v_err_errno(err, "job '%s': cannot remove '%s'", job->id, tmp);
            goto out;
        }
        struct diskfmt_create_opts opts = {.size = d->size};
        struct diskfmt *df = diskfmt_create(path, job->format, &opts, err);
        if (!df)
            goto out;
        if (copy_runs(d->part_fd, d->size, df, buf, stop, part, err) < 0) {
            diskfmt_abandon(df);
            unlinkat(job->dirfd, tmp, 0);
            goto out;
        }
        if (diskfmt_close(df, err) < 0) {
            unlinkat(job->dirfd, tmp, 0);
            goto out;
        }
        if (fchmodat(job->dirfd, tmp, 0600, 0) < 0) {
            p2v_err_errno(err, "job '%s': cannot set the mode of '%s'", job->id, tmp);
            unlinkat(job->dirfd, tmp, 0);
            goto out;
        }
        if (renameat(job->dirfd, tmp, job->dirfd, final) < 0) {
            p2v_err_errno(err, "job '%s': cannot rename '%s' to '%s'", job->id, tmp, final);
            unlinkat(job->dirfd, tmp, 0);
            goto out;
        }
        srv_job_log(job, "disk %u: wrote '%s' (%llu bytes committed)", i, final,
                    (unsigned long long)d->committed);
    }
    if (fsync(job->dirfd) < 0) {
        p2v_err_errno(err, "job '%s': cannot sync the job folder", job->id);
        goto out;
    }
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++)
        if (job->disks[i].jr.fd >= 0)
            job->disks[i].committed = srv_ranges_bytes(&job->disks[i].jr.committed);
    snprintf(final, sizeof final, "job.json");
    job->state = JOB_RECEIVED;
    job->failed_stage[0] = job->reason[0] = '\0';
    if (srv_job_save(job, err) < 0) {
        job->state = JOB_RECEIVING;
        goto out;
    }
    srv_job_remove_staging(job);
    r = 0;
out:
    if (r < 0 && err && no_space(err->code))
        p2v_err_set(err, err->code,
                    "server store is full (no space left on device writing '%s')", final);
    free(buf);
    return r;
}
