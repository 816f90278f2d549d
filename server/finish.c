/* finish.c: the end of a capture — each disk's in-progress image becomes its final image.
 *
 * qcow2 and raw were written in their final format while receiving: closing the image
 * (qcow2: refcounts, fdatasync, the dirty bit cleared; raw: fdatasync) and renaming it is
 * all that is left. Other formats (VMDK) are converted from the raw in-progress image
 * through libdiskfmt: only its data runs are read (SEEK_DATA / SEEK_HOLE), in chunks of
 * 4 MiB, and blocks that are all zeros are not written, so the work follows the data, not
 * the disk's size; the image is written under a temporary name and renamed once complete.
 * The journals (and in-progress images) are removed only after every rename and after
 * job.json says "received", so a server that dies on the way redoes the step at the next
 * DONE (a closed but not yet renamed image is recognised and only renamed).
 * Between the renames and job.json, the VM configurations are written into the job's
 * vm/ folder (vmconfig.h); their failure is recorded, never fatal: the disks are what
 * the capture was for.
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
#include "vmconfig.h"

#define FINISH_CHUNK (4u << 20)

/* Copy the data runs of @fd (a raw in-progress image of @size bytes) into @df. */
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
            if (diskfmt_pwrite_data(df, buf, n, off, (uint32_t)grain, err) < 0)
                return -1;
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

/* Convert the raw in-progress image @part of disk @i into @tmp (format job->format). */
static int convert(struct srv_store *st, struct srv_job *job, unsigned i, const char *part,
                   const char *tmp, uint8_t *buf, const atomic_bool *stop, struct p2v_err *err)
{
    struct srv_disk *d = &job->disks[i];
    char path[PATH_MAX];
    int r = -1;
    if ((size_t)snprintf(path, sizeof path, "%s/jobs/%s/%s", st->path, job->id, tmp) >=
        sizeof path)
        return p2v_err_set(err, ENAMETOOLONG, "job '%s': path too long", job->id);
    if (unlinkat(job->dirfd, tmp, 0) < 0 && errno != ENOENT)
        return p2v_err_errno(err, "job '%s': cannot remove '%s'", job->id, tmp);
    int fd = openat(job->dirfd, part, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "job '%s': cannot open '%s'", job->id, part);
    struct diskfmt_create_opts opts = {.size = d->size};
    struct diskfmt *df = diskfmt_create(path, job->format, &opts, err);
    if (!df)
        goto out;
    if (copy_runs(fd, d->size, df, buf, stop, part, err) < 0) {
        diskfmt_abandon(df);
        goto out;
    }
    if (diskfmt_close(df, err) < 0)
        goto out;
    r = 0;
out:
    close(fd);
    if (r < 0)
        unlinkat(job->dirfd, tmp, 0);
    return r;
}

/* The job's VM spec (its facts.json, else the defaults; named after the job id; its final
 * images as disks) written into STORE/jobs/ID/vm/. 0 / -1. */
static int job_vmconfig(struct srv_store *st, struct srv_job *job, const atomic_bool *stop,
                        bool exports, struct p2v_err *err)
{
    struct vm_spec spec;
    struct p2v_buf facts = P2V_BUF_INIT;
    char dir[PATH_MAX], path[PATH_MAX];
    struct p2v_err e = {0};
    int r = -1;
    vm_spec_init(&spec);
    p2v_buf_init(&facts, VM_FACTS_MAX + 1);
    if (srv_read_file_at(job->dirfd, "facts.json", VM_FACTS_MAX, &facts, &e) == 0) {
        if (vm_spec_from_facts(&spec, (const char *)facts.data, facts.len, &e) < 0) {
            srv_job_log(job, "vm: facts.json is not usable, using defaults: %s", e.msg);
            vm_spec_release(&spec);
        }
    } else {
        srv_job_log(job, "vm: no facts (%s), using defaults", e.msg);
    }
    if (spec.nnics == 0 && vm_spec_add_random_nic(&spec, err) < 0)
        goto out;
    if (job->memory_mib) /* the batch manifest's overrides */
        spec.memory_mib = job->memory_mib;
    if (job->cpus)
        spec.cpus = job->cpus;
    if (vm_spec_set_name(&spec, job->id, err) < 0)
        goto out;
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        if (!job->disks[i].known)
            continue;
        if ((size_t)snprintf(path, sizeof path, "%s/jobs/%s/disk%u.%s", st->path, job->id, i,
                             job->format) >= sizeof path) {
            p2v_err_set(err, ENAMETOOLONG, "path too long");
            goto out;
        }
        if (vm_spec_add_disk(&spec, path, job->format, err) < 0)
            goto out;
    }
    if ((size_t)snprintf(dir, sizeof dir, "%s/jobs/%s/vm", st->path, job->id) >= sizeof dir) {
        p2v_err_set(err, ENAMETOOLONG, "path too long");
        goto out;
    }
    struct stat sb;
    if (mkdirat(job->dirfd, "vm", 0700) < 0 && errno != EEXIST) {
        p2v_err_errno(err, "cannot make '%s'", dir);
        goto out;
    }
    /* written by path from here on: it must be our folder, not a link out of the job */
    if (fstatat(job->dirfd, "vm", &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(sb.st_mode)) {
        p2v_err_set(err, ENOTDIR, "'%s' is not a folder", dir);
        goto out;
    }
    struct vmconfig_opts o = {
        .outputs = VM_OUT_LIBVIRT | VM_OUT_QEMU,
        .use_vmdk_in_place = true,
        .stop = stop,
    };
    if (strcmp(job->format, "vmdk") == 0)
        o.outputs |= VM_OUT_VMX | VM_OUT_OVF;
    /* the job's other outputs (--format): a VMware VM and an OVA, converted from the
     * disks as they are now */
    for (const char *p = exports ? job->outputs : ""; *p;) {
        size_t n = strcspn(p, ",");
        if (n == 4 && strncmp(p, "vmdk", 4) == 0)
            o.outputs |= VM_OUT_VMX | VM_OUT_OVF;
        else if (n == 3 && strncmp(p, "ova", 3) == 0)
            o.outputs |= VM_OUT_OVA;
        p += n + (p[n] == ',');
    }
    struct p2v_buf written = P2V_BUF_INIT;
    p2v_buf_init(&written, 0);
    r = vmconfig_write(&spec, dir, &o, &written, err);
    if (r == 0) {
        const char *list = p2v_buf_cstr(&written);
        for (const char *p = list; p && *p;) {
            size_t n = strcspn(p, "\n");
            srv_job_log(job, "vm: wrote 'vm/%.*s'", (int)n, p);
            p += n + (p[n] == '\n');
        }
    }
    p2v_buf_release(&written);
out:
    p2v_buf_release(&facts);
    vm_spec_release(&spec);
    return r;
}

void srv_job_write_vmconfig(struct srv_store *st, struct srv_job *job,
                            const atomic_bool *stop, bool exports)
{
    struct p2v_err err = {0};
    if (job_vmconfig(st, job, stop, exports, &err) < 0) {
        snprintf(job->vmconfig, sizeof job->vmconfig, "failed");
        snprintf(job->vmconfig_error, sizeof job->vmconfig_error, "%s", err.msg);
        srv_job_log(job, "vm: the VM configurations were not written: %s", err.msg);
        srv_store_log(st, P2V_LOG_WARN, "job '%s': the VM configurations were not written: %s",
                      job->id, err.msg);
        return;
    }
    snprintf(job->vmconfig, sizeof job->vmconfig, "written");
    job->vmconfig_error[0] = '\0';
}

int srv_job_finish(struct srv_store *st, struct srv_job *job, const atomic_bool *stop,
                   struct p2v_err *err)
{
    uint8_t *buf = NULL;
    char tmp[64], final[64] = "job.json";
    int r = -1;
    double t0 = p2v_now();
    bool same = strcmp(srv_part_format(job), job->format) == 0;
    if (!same && !(buf = malloc(FINISH_CHUNK)))
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        struct srv_disk *d = &job->disks[i];
        if (!d->known)
            continue;
        char part[32];
        snprintf(part, sizeof part, "disk%u.part", i);
        snprintf(final, sizeof final, "disk%u.%s", i, job->format);
        if (!d->img && !d->img_done) {
            p2v_err_set(err, EINVAL, "job '%s': '%s' is not open", job->id, part);
            goto out;
        }
        if (same) {
            /* written in its final format: finish it, then it is renamed */
            if (d->img) {
                struct diskfmt *img = d->img;
                d->img = NULL;
                if (diskfmt_close(img, err) < 0) {
                    p2v_err_prefix(err, "job '%s'", job->id);
                    goto out;
                }
                d->img_done = true;
            }
            snprintf(tmp, sizeof tmp, "%s", part);
        } else {
            snprintf(tmp, sizeof tmp, ".disk%u.%s.tmp", i, job->format);
            if (d->img && diskfmt_checkpoint(d->img, &(uint64_t){0}, err) < 0)
                goto out;
            if (convert(st, job, i, part, tmp, buf, stop, err) < 0)
                goto out;
        }
        struct stat sb;
        if (same && fstatat(job->dirfd, tmp, &sb, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT &&
            fstatat(job->dirfd, final, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
            /* renamed already, before a stop (srv_disk_open found it so) */
            srv_job_log(job, "disk %u: '%s' was written before the server stopped", i, final);
            continue;
        }
        if (fchmodat(job->dirfd, tmp, 0600, 0) < 0) {
            p2v_err_errno(err, "job '%s': cannot set the mode of '%s'", job->id, tmp);
            goto out;
        }
        if (renameat(job->dirfd, tmp, job->dirfd, final) < 0) {
            p2v_err_errno(err, "job '%s': cannot rename '%s' to '%s'", job->id, tmp, final);
            if (!same)
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
    /* the images are in place: now the VM configurations (never fatal) */
    srv_job_write_vmconfig(st, job, stop, false);
    snprintf(final, sizeof final, "job.json");
    job->state = JOB_RECEIVED;
    job->failed_stage[0] = job->reason[0] = '\0';
    job->stage_ms[SRV_STAGE_WRITING] = (uint64_t)((p2v_now() - t0) * 1000.0 + 0.5);
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
