/* pipeline.c: what happens to a job after its last disk is received — nothing is left for
 * the operator but reading the result.
 *
 *   received → injecting → configured → verifying → verified | failed(stage, reason)
 *
 * injecting: libdriverinject on the boot disk (disk0) in place: virtio drivers into the
 *   initramfs, fstab and boot loader fixes; its report goes to inject.json.
 * configured: the VM configurations are written again into vm/ (libvirt XML, QEMU
 *   script, .vmx/.ovf for VMDK) now that the disk is the converted one.
 * verifying: libvmm boots disk0 (our VMM where /dev/kvm is fast, else QEMU TCG, the image
 *   under a copy-on-write overlay); the console goes to verify/serial.log, the verdict
 *   to verify/verdict.json. Success → verified, anything else → failed(verifying, why).
 * Then report.json gathers the facts, the disks (sizes, SHA-256), the changes, the
 * verdict and the time each stage took.
 *
 * Each stage writes its state into job.json before it starts, so a server that is killed
 * resumes the job at that stage when it starts again (injection and verification can be
 * run again: a second injection finds nothing to change). A scanner thread looks at the
 * store every second and takes up any job in a pipeline state that no one works on, so
 * the same path serves a job just received, a restarted server and `p2v-server retry`.
 * Each job gets a thread of its own; the heavy stages wait on counting semaphores
 * (--max-inject, --max-verify), so 32 captures that end together do not start 32
 * appliances. A job is held (srv_job_hold) while its thread works on it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "diskfmt.h"
#include "driverinject.h"
#include "server.h"
#include "vmm.h"

#define VERIFY_MEMORY_MIB 1024
#define SCAN_INTERVAL_MS 1000
#define REPORT_PART_MAX (4u << 20)

struct sem {
    pthread_mutex_t m;
    pthread_cond_t c;
    unsigned free;
};

static void sem_init_n(struct sem *s, unsigned n)
{
    pthread_mutex_init(&s->m, NULL);
    pthread_cond_init(&s->c, NULL);
    s->free = n ? n : 1;
}

static void sem_take(struct sem *s)
{
    pthread_mutex_lock(&s->m);
    while (s->free == 0)
        pthread_cond_wait(&s->c, &s->m);
    s->free--;
    pthread_mutex_unlock(&s->m);
}

static void sem_give(struct sem *s)
{
    pthread_mutex_lock(&s->m);
    s->free++;
    pthread_cond_signal(&s->c);
    pthread_mutex_unlock(&s->m);
}

struct srv_pipeline {
    struct srv_store *st;
    struct srv_pipeline_opts o;
    pthread_t scanner;
    atomic_bool stop;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* a worker ended; the scanner's sleep */
    struct sem inject, verify;
    char running[SRV_PIPELINE_WORKERS_MAX][P2V_PROTO_JOB_MAX + 1];
    unsigned nrunning;
};

/* ---------------------------------------------------------------- helpers */

static double elapsed_ms(double t0)
{
    return (p2v_now() - t0) * 1000.0 + 0.5;
}

static int job_file_path(const struct srv_job *job, const char *name, char *out, size_t cap,
                         struct p2v_err *err)
{
    if ((size_t)snprintf(out, cap, "%s/jobs/%s/%s", job->store->path, job->id, name) >= cap)
        return p2v_err_set(err, ENAMETOOLONG, "job '%s': path too long", job->id);
    return 0;
}

static void job_fail(struct srv_job *job, const char *stage, const char *reason)
{
    job->state = JOB_FAILED;
    snprintf(job->failed_stage, sizeof job->failed_stage, "%s", stage);
    snprintf(job->reason, sizeof job->reason, "%s", reason);
    srv_job_log(job, "failed (%s): %s", stage, reason);
    srv_store_log(job->store, P2V_LOG_WARN, "job %s: failed (%s): %s", job->id, stage, reason);
}

/* Write @j's text as @name in the job's folder (or its verify/ folder). */
static int save_json(struct srv_job *job, int dirfd, const char *name, struct p2v_buf *b,
                     struct p2v_err *err)
{
    if (p2v_buf_put(b, "\n", 1) < 0)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (srv_write_file_at(dirfd, name, b->data, b->len, 0600, err) < 0) {
        p2v_err_prefix(err, "job '%s'", job->id);
        return -1;
    }
    return 0;
}

/* A folder of the job (made if missing) that is really a folder of ours, not a link. */
static int sub_dir(struct srv_job *job, const char *name, struct p2v_err *err)
{
    if (mkdirat(job->dirfd, name, 0700) < 0 && errno != EEXIST)
        return p2v_err_errno(err, "job '%s': cannot make '%s'", job->id, name);
    int fd = openat(job->dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "job '%s': cannot open '%s'", job->id, name);
    return fd;
}

/* The QEMU processes whose command line names @disk: counted, and with @job SIGKILLed
 * (and logged in the job's log). */
static unsigned qemu_on(const char *disk, struct srv_job *job)
{
    static __thread char cmd[65536];
    DIR *d = opendir("/proc");
    unsigned n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));) {
        char *end, path[64], exe[PATH_MAX];
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 1 || pid == (long)getpid())
            continue;
        snprintf(path, sizeof path, "/proc/%ld/exe", pid);
        ssize_t el = readlink(path, exe, sizeof exe - 1);
        if (el <= 0)
            continue;
        exe[el] = '\0';
        const char *base = strrchr(exe, '/');
        if (strncmp(base ? base + 1 : exe, "qemu", 4) != 0)
            continue;
        snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t got = read(fd, cmd, sizeof cmd - 1);
        close(fd);
        if (got <= 0)
            continue;
        for (ssize_t i = 0; i < got; i++)
            if (!cmd[i])
                cmd[i] = ' ';
        cmd[got] = '\0';
        if (!strstr(cmd, disk))
            continue;
        n++;
        if (job && kill((pid_t)pid, SIGKILL) == 0)
            srv_job_log(job, "killed QEMU %ld, left running on '%s' by a server that was "
                        "stopped", pid, disk);
    }
    closedir(d);
    return n;
}

/* An appliance (or guest) left running on the job's disk by a server that was killed
 * (libguestfs' recovery process acts only when it is orphaned to PID 1, not under a
 * subreaper) must not write the image while the stage runs again: killed, and waited
 * for (up to 5 s). */
static void kill_leftovers(struct srv_job *job, const char *disk)
{
    if (!qemu_on(disk, job))
        return;
    for (int i = 0; i < 50 && qemu_on(disk, NULL); i++)
        nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
}

/* Enter @state (written to job.json) once a slot of @sem is ours. */
static void enter(struct sem *sem, struct srv_job *job, enum srv_job_state state)
{
    struct p2v_err err = {0};
    sem_take(sem);
    job->state = state;
    if (srv_job_save(job, &err) < 0)
        srv_store_log(job->store, P2V_LOG_ERROR, "%s", err.msg);
    srv_job_log(job, "state: %s", srv_job_state_name(state));
}

/* Copy the data of @src into @dst, a new image of the same size: only the runs that hold
 * data are read (block status), and all-zero blocks are not written. */
static int copy_image(struct diskfmt *src, struct diskfmt *dst, const atomic_bool *stop,
                      struct p2v_err *err)
{
    enum { CHUNK = 4 << 20 };
    uint64_t size = diskfmt_size(src), grain = diskfmt_block_size(dst);
    uint8_t *buf = malloc(CHUNK);
    int r = -1;
    if (!p2v_is_pow2(grain) || grain > CHUNK)
        grain = 4096;
    if (!buf)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (uint64_t off = 0; off < size;) {
        uint64_t run;
        unsigned flags;
        if (stop && atomic_load(stop)) {
            p2v_err_set(err, ECANCELED, "the server is stopping");
            goto out;
        }
        if (diskfmt_block_status(src, off, P2V_MIN(size - off, (uint64_t)1 << 30), &run,
                                 &flags, err) < 0)
            goto out;
        if (!(flags & (DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE))) {
            for (uint64_t o = off; o < off + run;) {
                size_t n = (size_t)P2V_MIN((uint64_t)CHUNK, off + run - o);
                if (diskfmt_pread(src, buf, n, o, err) < 0 ||
                    diskfmt_pwrite_data(dst, buf, n, o, (uint32_t)grain, err) < 0)
                    goto out;
                o += n;
            }
        }
        off += run;
    }
    r = 0;
out:
    free(buf);
    return r;
}

/* The job's other disk outputs (--format qcow2, raw, vhd besides the one received):
 * disk N.FMT beside the received disk, converted from it as it is after injection. */
static int export_disks(struct srv_job *job, const atomic_bool *stop, struct p2v_err *err)
{
    for (const char *p = job->outputs; *p;) {
        size_t n = strcspn(p, ",");
        char fmt[8];
        snprintf(fmt, sizeof fmt, "%.*s", (int)P2V_MIN(n, (size_t)7), p);
        p += n + (p[n] == ',');
        if (strcmp(fmt, "qcow2") && strcmp(fmt, "raw") && strcmp(fmt, "vhd"))
            continue; /* vmdk and ova: srv_job_write_vmconfig */
        for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
            char name[32], tmp[40], spath[PATH_MAX], tpath[PATH_MAX];
            if (!job->disks[i].known)
                continue;
            snprintf(name, sizeof name, "disk%u.%s", i, job->format);
            if (job_file_path(job, name, spath, sizeof spath, err) < 0)
                return -1;
            snprintf(name, sizeof name, "disk%u.%s", i, fmt);
            snprintf(tmp, sizeof tmp, ".%s.tmp", name);
            if (job_file_path(job, tmp, tpath, sizeof tpath, err) < 0)
                return -1;
            double t0 = p2v_now();
            struct diskfmt *src = diskfmt_open(spath, job->format, DISKFMT_RDONLY, err);
            if (!src)
                return -1;
            struct diskfmt_create_opts co = {
                .size = diskfmt_size(src),
                .subformat = strcmp(fmt, "vhd") == 0 ? "dynamic" : NULL,
            };
            struct diskfmt *dst = diskfmt_create(tpath, fmt, &co, err);
            int r = dst ? copy_image(src, dst, stop, err) : -1;
            if (dst && r < 0)
                diskfmt_abandon(dst);
            else if (dst && diskfmt_close(dst, err) < 0)
                r = -1;
            diskfmt_close(src, NULL);
            if (r == 0 && renameat(job->dirfd, tmp, job->dirfd, name) < 0)
                r = p2v_err_errno(err, "job '%s': cannot rename '%s'", job->id, tmp);
            if (r < 0) {
                unlinkat(job->dirfd, tmp, 0);
                p2v_err_prefix(err, "job '%s': %s", job->id, name);
                return -1;
            }
            srv_job_log(job, "configuring: wrote '%s' in %.1f s", name, p2v_now() - t0);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- the stages */

static int stage_inject(struct srv_pipeline *p, const struct srv_pipeline_opts *o,
                        struct srv_job *job)
{
    char disk[PATH_MAX];
    struct p2v_err err = {0};
    struct p2v_buf b = P2V_BUF_INIT;
    struct p2v_json j;
    struct di_report *rep = NULL;
    double t0 = p2v_now();

    enter(&p->inject, job, JOB_INJECTING);
    p2v_buf_init(&b, REPORT_PART_MAX);
    p2v_json_init(&j, &b, true);
    if (!o->inject) {
        srv_job_log(job, "injecting: skipped (--no-inject)");
        p2v_json_object_begin(&j);
        p2v_json_kv_bool(&j, "skipped", true);
        p2v_json_object_end(&j);
        job->changes = 0;
    } else {
        char name[32];
        snprintf(name, sizeof name, "disk0.%s", job->format);
        if (job_file_path(job, name, disk, sizeof disk, &err) < 0) {
            job_fail(job, "injecting", err.msg);
            goto out;
        }
        struct di_options dio = {.disk = disk, .format = job->format};
        srv_job_log(job, "injecting: p2v-inject on %s", name);
        srv_store_log(job->store, P2V_LOG_INFO, "job %s: injecting virtio drivers", job->id);
        enum di_status ds = di_inject(&dio, &rep, &err);
        if (ds != DI_OK) {
            job_fail(job, "injecting", err.msg[0] ? err.msg : "driver injection failed");
            goto out;
        }
        di_report_json(rep, &j);
        job->changes = di_report_change_count(rep);
        srv_job_log(job, "injecting: %llu change(s) in %.1f s", (unsigned long long)job->changes,
                    p2v_now() - t0);
    }
    if (!p2v_json_complete(&j) || save_json(job, job->dirfd, "inject.json", &b, &err) < 0) {
        job_fail(job, "injecting", err.msg[0] ? err.msg : "the injection report is too large");
        goto out;
    }
    job->stage_ms[SRV_STAGE_INJECTING] = (uint64_t)elapsed_ms(t0);
    /* the configurations, for the converted disk */
    t0 = p2v_now();
    srv_job_write_vmconfig(job->store, job, &p->stop, true);
    if (export_disks(job, &p->stop, &err) < 0) {
        job_fail(job, "configuring", err.msg);
        goto out;
    }
    job->stage_ms[SRV_STAGE_CONFIGURING] = (uint64_t)elapsed_ms(t0);
    job->state = JOB_CONFIGURED;
out:
    sem_give(&p->inject);
    di_report_free(rep);
    p2v_buf_release(&b);
    return job->state == JOB_FAILED ? -1 : 0;
}

static int stage_verify(struct srv_pipeline *p, const struct srv_pipeline_opts *o,
                        struct srv_job *job)
{
    char disk[PATH_MAX], log[PATH_MAX], name[32];
    struct p2v_err err = {0};
    struct p2v_buf b = P2V_BUF_INIT;
    struct p2v_json j;
    struct vmm_verdict *v = calloc(1, sizeof *v);
    double t0 = p2v_now();
    int vfd = -1;

    enter(&p->verify, job, JOB_VERIFYING);
    p2v_buf_init(&b, REPORT_PART_MAX);
    snprintf(name, sizeof name, "disk0.%s", job->format);
    if (!v) {
        job_fail(job, "verifying", "out of memory");
        goto out;
    }
    if (job_file_path(job, name, disk, sizeof disk, &err) < 0 ||
        job_file_path(job, "verify/serial.log", log, sizeof log, &err) < 0 ||
        (vfd = sub_dir(job, "verify", &err)) < 0) {
        job_fail(job, "verifying", err.msg);
        goto out;
    }
    unlinkat(vfd, "serial.log", 0); /* a new log per verification */
    struct vmm_opts vo = {
        .disk = disk,
        .format = job->format,
        .memory_mib = VERIFY_MEMORY_MIB,
        .cpus = 1,
        .timeout_s = o->verify_timeout > 0 ? o->verify_timeout : 300,
        .log_path = log,
        .engine = !o->engine || strcmp(o->engine, "auto") == 0 ? VMM_ENGINE_AUTO
                  : strcmp(o->engine, "kvm") == 0               ? VMM_ENGINE_KVM
                                                                 : VMM_ENGINE_QEMU,
    };
    srv_job_log(job, "verifying: booting %s", name);
    srv_store_log(job->store, P2V_LOG_INFO, "job %s: verification boot", job->id);
    int vr = vmm_verify(&vo, v, &err);
    job->has_serial_log = faccessat(vfd, "serial.log", F_OK, AT_SYMLINK_NOFOLLOW) == 0;
    if (vr < 0) {
        snprintf(job->verdict, sizeof job->verdict, "%s", vmm_result_name(VMM_RESULT_ENGINE_ERROR));
        job_fail(job, "verifying", err.msg);
        goto out;
    }
    p2v_json_init(&j, &b, true);
    vmm_verdict_json(v, &vo, &j);
    if (!p2v_json_complete(&j) || save_json(job, vfd, "verdict.json", &b, &err) < 0)
        srv_job_log(job, "verifying: verdict.json not written: %s", err.msg);
    snprintf(job->verdict, sizeof job->verdict, "%s", vmm_result_name(v->result));
    srv_job_log(job, "verifying: %s in %.1f s (%s): %s", job->verdict, v->seconds,
                vmm_engine_name(v->engine), v->reason);
    if (v->result == VMM_RESULT_SUCCESS) {
        job->state = JOB_VERIFIED;
        srv_store_log(job->store, P2V_LOG_INFO, "job %s: verified (%s)", job->id, v->reason);
    } else {
        char why[P2V_ERR_MSG_MAX];
        snprintf(why, sizeof why, "%s: %s", job->verdict, v->reason);
        job_fail(job, "verifying", why);
    }
out:
    sem_give(&p->verify);
    job->stage_ms[SRV_STAGE_VERIFYING] = (uint64_t)elapsed_ms(t0);
    if (vfd >= 0)
        close(vfd);
    free(v);
    p2v_buf_release(&b);
    return job->state == JOB_FAILED ? -1 : 0;
}

/* ---------------------------------------------------------------- report.json */

/* A JSON file of the job's folder, copied into the report as a value (null if absent). */
static void put_file_json(struct p2v_json *j, int dirfd, const char *name)
{
    struct p2v_buf t;
    struct p2v_err e = {0};
    struct jv *v = NULL;
    p2v_buf_init(&t, JV_TEXT_MAX);
    if (srv_read_file_at(dirfd, name, JV_TEXT_MAX, &t, &e) == 0)
        v = jv_parse((const char *)t.data, t.len, &e);
    if (v)
        jv_write(j, v);
    else
        p2v_json_null(j);
    jv_free(v);
    p2v_buf_release(&t);
}

/* SHA-256 of a file of the job's folder, streamed. 0 / -1. */
static int file_sha256(int dirfd, const char *name, char hex[65], struct stat *sb)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    enum { BUF = 1 << 20 };
    unsigned char *buf = malloc(BUF);
    uint8_t md[P2V_PROTO_HASH_LEN];
    struct p2v_digest *ctx = p2v_digest_new(P2V_HASH_SHA256);
    int r = -1;
    if (!buf || !ctx || fstat(fd, sb) < 0)
        goto out;
    for (;;) {
        ssize_t n = read(fd, buf, BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto out;
        if (n == 0)
            break;
        if (p2v_digest_update(ctx, buf, (size_t)n) < 0)
            goto out;
    }
    if (p2v_digest_final(ctx, md) < 0)
        goto out;
    for (unsigned i = 0; i < sizeof md; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    r = 0;
out:
    p2v_digest_free(ctx);
    free(buf);
    close(fd);
    return r;
}

static int write_report(struct srv_job *job, struct p2v_err *err)
{
    struct p2v_buf b;
    struct p2v_json j;
    int vfd = openat(job->dirfd, "verify", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    p2v_buf_init(&b, JV_TEXT_MAX * 4);
    p2v_json_init(&j, &b, true);
    p2v_json_object_begin(&j);
    p2v_json_kv_string(&j, "job", job->id);
    p2v_json_kv_string(&j, "name", job->name);
    p2v_json_kv_string(&j, "state", srv_job_state_name(job->state));
    p2v_json_kv_string(&j, "failed-stage", job->state == JOB_FAILED ? job->failed_stage : NULL);
    p2v_json_kv_string(&j, "reason", job->state == JOB_FAILED ? job->reason : NULL);
    p2v_json_kv_string(&j, "verdict", job->verdict[0] ? job->verdict : NULL);
    p2v_json_kv_string(&j, "serial-log", job->has_serial_log ? "verify/serial.log" : NULL);
    p2v_json_kv_string(&j, "format", job->format);
    p2v_json_key(&j, "facts");
    put_file_json(&j, job->dirfd, "facts.json");
    p2v_json_key(&j, "disks");
    p2v_json_array_begin(&j);
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        const struct srv_disk *d = &job->disks[i];
        char file[32], hex[65];
        struct stat sb;
        if (!d->known)
            continue;
        snprintf(file, sizeof file, "disk%u.%s", i, job->format);
        p2v_json_object_begin(&j);
        p2v_json_kv_u64(&j, "index", i);
        p2v_json_kv_string(&j, "name", d->name);
        p2v_json_kv_string(&j, "file", file);
        p2v_json_kv_u64(&j, "size", d->size);
        p2v_json_kv_u64(&j, "committed", d->committed);
        if (file_sha256(job->dirfd, file, hex, &sb) == 0) {
            p2v_json_kv_u64(&j, "file-bytes", (uint64_t)sb.st_size);
            p2v_json_kv_u64(&j, "allocated-bytes", (uint64_t)sb.st_blocks * 512);
            p2v_json_kv_string(&j, "sha256", hex);
        } else {
            p2v_json_kv_string(&j, "sha256", NULL);
        }
        p2v_json_object_end(&j);
    }
    p2v_json_array_end(&j);
    p2v_json_key(&j, "exports");
    p2v_json_array_begin(&j);
    for (const char *o = job->outputs; *o;) {
        size_t n = strcspn(o, ",");
        char fmt[8];
        snprintf(fmt, sizeof fmt, "%.*s", (int)P2V_MIN(n, (size_t)7), o);
        o += n + (o[n] == ',');
        for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX && (!strcmp(fmt, "qcow2") ||
                                                          !strcmp(fmt, "raw") || !strcmp(fmt, "vhd")); i++) {
            char file[32];
            struct stat sb;
            snprintf(file, sizeof file, "disk%u.%s", i, fmt);
            if (!job->disks[i].known || fstatat(job->dirfd, file, &sb, AT_SYMLINK_NOFOLLOW) < 0)
                continue;
            p2v_json_object_begin(&j);
            p2v_json_kv_string(&j, "file", file);
            p2v_json_kv_string(&j, "format", fmt);
            p2v_json_kv_u64(&j, "file-bytes", (uint64_t)sb.st_size);
            p2v_json_object_end(&j);
        }
    }
    p2v_json_array_end(&j);
    p2v_json_key(&j, "injection");
    put_file_json(&j, job->dirfd, "inject.json");
    p2v_json_key(&j, "vm-configurations");
    p2v_json_array_begin(&j);
    int vmfd = openat(job->dirfd, "vm", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *dir = vmfd >= 0 ? fdopendir(vmfd) : NULL;
    if (!dir && vmfd >= 0)
        close(vmfd);
    for (struct dirent *e; dir && (e = readdir(dir));) {
        if (e->d_name[0] == '.')
            continue;
        char rel[300];
        snprintf(rel, sizeof rel, "vm/%s", e->d_name);
        p2v_json_string(&j, rel);
    }
    if (dir)
        closedir(dir);
    p2v_json_array_end(&j);
    p2v_json_key(&j, "verification");
    if (vfd >= 0)
        put_file_json(&j, vfd, "verdict.json");
    else
        p2v_json_null(&j);
    p2v_json_key(&j, "stage-seconds");
    p2v_json_object_begin(&j);
    for (unsigned i = 0; i < P2V_ARRAY_SIZE(job->stage_ms); i++)
        if (job->stage_ms[i])
            p2v_json_kv_double(&j, srv_stage_names[i], (double)job->stage_ms[i] / 1000.0);
    p2v_json_object_end(&j);
    p2v_json_object_end(&j);
    if (vfd >= 0)
        close(vfd);
    int r = -1;
    if (!p2v_json_complete(&j))
        p2v_err_set(err, ENOBUFS, "job '%s': report.json is too large", job->id);
    else
        r = save_json(job, job->dirfd, "report.json", &b, err);
    p2v_buf_release(&b);
    if (r == 0)
        job->has_report = true;
    return r;
}

/* ---------------------------------------------------------------- one job */

static bool wants_work(const struct srv_job *job, const struct srv_pipeline_opts *o)
{
    return srv_job_captured(job) && job->state != JOB_FAILED && job->state != JOB_VERIFIED &&
           job->state < o->until;
}

static int save(struct srv_job *job)
{
    struct p2v_err err = {0};
    if (srv_job_save(job, &err) < 0) {
        srv_store_log(job->store, P2V_LOG_ERROR, "%s", err.msg);
        return -1;
    }
    return 0;
}

/* Run the stages of job @id from the one it is in. 0 when it was done or not ours to do. */
static int run_job(struct srv_pipeline *p, struct srv_store *st,
                   const struct srv_pipeline_opts *o, const char *id, struct p2v_err *err)
{
    struct srv_job *job = srv_job_load(st, id, err);
    if (!job)
        return -1;
    char source[P2V_PROTO_SOURCE_ID_MAX + 1];
    snprintf(source, sizeof source, "%s", job->source_id);
    srv_job_free(job);
    if (!srv_job_hold(st, id, source))
        return 0; /* a session has it: later */
    job = srv_job_load(st, id, err); /* as it is now that we hold it */
    if (!job) {
        srv_job_unhold(st, id);
        return -1;
    }
    int r = 0;
    bool stopping = false;
    while (wants_work(job, o) && !(stopping = atomic_load(&p->stop))) {
        enum srv_job_state was = job->state;
        switch (job->state) {
        case JOB_RECEIVED:
        case JOB_INJECTING: /* again, after a stop */
            stage_inject(p, o, job);
            break;
        case JOB_CONFIGURED:
        case JOB_VERIFYING:
            stage_verify(p, o, job);
            break;
        default:
            job_fail(job, "pipeline", "unexpected state");
            break;
        }
        if (job->state == JOB_FAILED || job->state == JOB_VERIFIED ||
            (job->state >= o->until && job->state != was))
            if (write_report(job, err) < 0)
                srv_job_log(job, "report.json not written: %s", err->msg);
        if (save(job) < 0) {
            r = -1;
            break;
        }
        if (job->state != was)
            srv_job_log(job, "state: %s", srv_job_state_name(job->state));
    }
    if (stopping)
        srv_job_log(job, "the server is stopping: the job resumes at '%s'",
                    srv_job_state_name(job->state));
    srv_job_free(job);
    srv_job_unhold(st, id);
    return r;
}

/* ---------------------------------------------------------------- the scanner */

struct worker {
    struct srv_pipeline *p;
    char id[P2V_PROTO_JOB_MAX + 1];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct srv_pipeline *p = w->p;
    struct p2v_err err = {0};
    if (run_job(p, p->st, &p->o, w->id, &err) < 0)
        srv_store_log(p->st, P2V_LOG_ERROR, "job %s: pipeline: %s", w->id, err.msg);
    pthread_mutex_lock(&p->lock);
    for (unsigned i = 0; i < p->nrunning; i++) {
        if (strcmp(p->running[i], w->id) == 0) {
            memmove(p->running[i], p->running[p->nrunning - 1], sizeof p->running[i]);
            p->nrunning--;
            break;
        }
    }
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    free(w);
    return NULL;
}

static bool is_running(struct srv_pipeline *p, const char *id)
{
    for (unsigned i = 0; i < p->nrunning; i++)
        if (strcmp(p->running[i], id) == 0)
            return true;
    return false;
}

static void start_worker(struct srv_pipeline *p, const char *id)
{
    struct worker *w = calloc(1, sizeof *w);
    pthread_attr_t attr;
    pthread_t tid;
    if (!w)
        return;
    w->p = p;
    if (strlen(id) >= sizeof w->id) {
        free(w);
        return;
    }
    memcpy(w->id, id, strlen(id) + 1);
    pthread_mutex_lock(&p->lock);
    if (is_running(p, id) || p->nrunning >= SRV_PIPELINE_WORKERS_MAX) {
        pthread_mutex_unlock(&p->lock);
        free(w);
        return;
    }
    memcpy(p->running[p->nrunning++], w->id, sizeof w->id);
    pthread_mutex_unlock(&p->lock);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&tid, &attr, worker_main, w) != 0) {
        pthread_mutex_lock(&p->lock);
        p->nrunning--;
        pthread_mutex_unlock(&p->lock);
        free(w);
    }
    pthread_attr_destroy(&attr);
}

static void scan(struct srv_pipeline *p)
{
    /* a descriptor of its own: a dup would share its reading position with the status
     * page's listing of the same folder */
    int fd = openat(p->st->jobsfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    for (struct dirent *e; (e = readdir(d)) && !atomic_load(&p->stop);) {
        if (!srv_job_id_ok(e->d_name))
            continue;
        pthread_mutex_lock(&p->lock);
        bool busy = is_running(p, e->d_name);
        pthread_mutex_unlock(&p->lock);
        if (busy)
            continue;
        struct p2v_err err = {0};
        struct srv_job *job = srv_job_load(p->st, e->d_name, &err);
        if (!job)
            continue;
        bool want = wants_work(job, &p->o);
        srv_job_free(job);
        if (want)
            start_worker(p, e->d_name);
    }
    closedir(d);
}

/* At start, before any appliance of ours runs: the appliances a killed server left on
 * the disks of jobs it was injecting are stopped (they would run on, and count against
 * --max-inject, until each job's turn came). */
static void reap_leftovers(struct srv_store *st)
{
    int fd = openat(st->jobsfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* own offset */
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    for (struct dirent *e; (e = readdir(d));) {
        struct p2v_err err = {0};
        char name[32], disk[PATH_MAX];
        if (!srv_job_id_ok(e->d_name))
            continue;
        struct srv_job *job = srv_job_load(st, e->d_name, &err);
        if (!job)
            continue;
        snprintf(name, sizeof name, "disk0.%s", job->format);
        if (job->state == JOB_INJECTING && job_file_path(job, name, disk, sizeof disk, &err) == 0)
            kill_leftovers(job, disk);
        srv_job_free(job);
    }
    closedir(d);
}

static void *scanner_main(void *arg)
{
    struct srv_pipeline *p = arg;
    while (!atomic_load(&p->stop)) {
        scan(p);
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_nsec += SCAN_INTERVAL_MS * 1000000L;
        dl.tv_sec += dl.tv_nsec / 1000000000L;
        dl.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&p->lock);
        if (!atomic_load(&p->stop))
            pthread_cond_timedwait(&p->cond, &p->lock, &dl);
        pthread_mutex_unlock(&p->lock);
    }
    return NULL;
}

struct srv_pipeline *srv_pipeline_start(struct srv_store *st, const struct srv_pipeline_opts *o,
                                        struct p2v_err *err)
{
    struct srv_pipeline *p = calloc(1, sizeof *p);
    if (!p) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    p->st = st;
    p->o = *o;
    atomic_init(&p->stop, false);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    sem_init_n(&p->inject, o->max_inject);
    sem_init_n(&p->verify, o->max_verify);
    reap_leftovers(st);
    int e = pthread_create(&p->scanner, NULL, scanner_main, p);
    if (e != 0) {
        errno = e;
        p2v_err_errno(err, "cannot start the pipeline thread");
        free(p);
        return NULL;
    }
    return p;
}

unsigned srv_pipeline_stop(struct srv_pipeline *p, int secs)
{
    if (!p)
        return 0;
    atomic_store(&p->stop, true);
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->scanner, NULL);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += secs;
    pthread_mutex_lock(&p->lock);
    while (p->nrunning > 0)
        if (pthread_cond_timedwait(&p->cond, &p->lock, &dl) == ETIMEDOUT)
            break;
    unsigned left = p->nrunning;
    pthread_mutex_unlock(&p->lock);
    if (left) {
        /* an appliance or a guest is still running: the process ends under it, and the
         * job resumes at its stage next time; the workers still use @p */
        srv_store_log(p->st, P2V_LOG_INFO, "pipeline: %u job(s) cut short, they resume at "
                      "the next start", left);
        return left;
    }
    free(p);
    return 0;
}

/* ---------------------------------------------------------------- retry */

int srv_retry(const char *store, const char *id)
{
    struct srv_store st;
    struct p2v_err err = {0};
    int rc = 1;
    if (srv_store_open(&st, store, false, &err) < 0) {
        p2v_error("%s", err.msg);
        return 1;
    }
    struct srv_job *job = srv_job_load(&st, id, &err);
    if (!job) {
        if (err.code == ENOENT)
            p2v_error("no job '%s' in '%s'", id, store);
        else
            p2v_error("%s", err.msg);
        goto out;
    }
    if (job->state != JOB_FAILED) {
        p2v_error("job '%s' is %s, not failed: nothing to retry", id,
                  srv_job_state_name(job->state));
        goto out;
    }
    enum srv_job_state back;
    if (strcmp(job->failed_stage, "injecting") == 0 || strcmp(job->failed_stage, "configuring") == 0 ||
        strcmp(job->failed_stage, "pipeline") == 0)
        back = JOB_RECEIVED;
    else if (strcmp(job->failed_stage, "verifying") == 0)
        back = JOB_CONFIGURED;
    else {
        p2v_error("job '%s' failed while %s: run the agent again to resume the capture", id,
                  job->failed_stage[0] ? job->failed_stage : "receiving");
        goto out;
    }
    job->state = back;
    job->failed_stage[0] = job->reason[0] = '\0';
    job->verdict[0] = '\0';
    job->has_report = false;
    unlinkat(job->dirfd, "report.json", 0);
    if (srv_job_save(job, &err) < 0) {
        p2v_error("%s", err.msg);
        goto out;
    }
    srv_job_log(job, "retry: back to '%s'", srv_job_state_name(back));
    printf("job %s: back to '%s'; %s\n", id, srv_job_state_name(back),
           srv_store_in_use(store) ? "the running server takes it up now"
                                   : "the server takes it up when it starts");
    rc = 0;
out:
    srv_job_free(job);
    srv_store_close(&st);
    return rc;
}
