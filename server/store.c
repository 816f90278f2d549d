/* store.c: the server's store on disk — its identity files, the lock that keeps one
 * server per store, server.log, and the jobs under STORE/jobs/: machine-name rules, how a
 * job is found or made for (name, source id), job.json (written atomically, read back
 * with the JSON reader) and each disk's in-progress image and journal.
 *
 * A job folder's name is built only from a validated machine name and a number; every
 * file of a job is opened relative to the job folder's descriptor with O_NOFOLLOW, so
 * nothing the network says can point a write outside jobs/JOB.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "diskfmt.h"
#include "server.h"

/* ---------------------------------------------------------------- names */

int srv_name_check(const char *name, size_t len, struct p2v_err *err)
{
    if (len == 0)
        return p2v_err_set(err, EINVAL, "the name is empty");
    if (len > P2V_PROTO_NAME_MAX)
        return p2v_err_set(err, EINVAL, "the name is longer than %d characters",
                           P2V_PROTO_NAME_MAX);
    if (!isalnum((unsigned char)name[0]) || (unsigned char)name[0] >= 0x80)
        return p2v_err_set(err, EINVAL, "the name must start with a letter or a digit");
    for (size_t i = 1; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 0x80 || !(isalnum(c) || c == '.' || c == '_' || c == '-'))
            return p2v_err_set(err, EINVAL,
                               "the name may hold only letters, digits, '.', '_' and '-'");
    }
    return 0;
}

bool srv_job_id_ok(const char *id)
{
    size_t len = strnlen(id, P2V_PROTO_JOB_MAX + 1);
    if (len == 0 || len > P2V_PROTO_JOB_MAX)
        return false;
    /* NAME or NAME-N: a valid name is itself a valid id whatever it ends with, as long
     * as it is not longer than a name may be; a longer id must end in "-N". */
    if (srv_name_check(id, len, NULL) == 0)
        return true;
    const char *dash = strrchr(id, '-');
    if (!dash || dash == id || !dash[1] || dash[1] == '0')
        return false;
    for (const char *p = dash + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return srv_name_check(id, (size_t)(dash - id), NULL) == 0;
}

/* ---------------------------------------------------------------- small files */

int srv_write_file_at(int dirfd, const char *name, const void *data, size_t len, int mode,
                      struct p2v_err *err)
{
    char tmp[NAME_MAX + 1];
    int r = -1, fd = -1;
    if ((size_t)snprintf(tmp, sizeof tmp, ".%s.tmp", name) >= sizeof tmp)
        return p2v_err_set(err, ENAMETOOLONG, "file name '%s' is too long", name);
    if (unlinkat(dirfd, tmp, 0) < 0 && errno != ENOENT)
        return p2v_err_errno(err, "cannot remove '%s'", tmp);
    fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return p2v_err_errno(err, "cannot create '%s'", tmp);
    if (p2v_pwrite_full(fd, data, len, 0) < 0 || fsync(fd) < 0) {
        p2v_err_errno(err, "cannot write '%s'", tmp);
        goto out;
    }
    if (close(fd) < 0) {
        fd = -1;
        p2v_err_errno(err, "cannot write '%s'", tmp);
        goto out;
    }
    fd = -1;
    if (renameat(dirfd, tmp, dirfd, name) < 0) {
        p2v_err_errno(err, "cannot rename '%s' to '%s'", tmp, name);
        goto out;
    }
    if (fsync(dirfd) < 0) {
        p2v_err_errno(err, "cannot sync the folder of '%s'", name);
        goto out;
    }
    r = 0;
out:
    if (fd >= 0)
        close(fd);
    if (r < 0) {
        int e = errno;
        unlinkat(dirfd, tmp, 0);
        errno = e;
    }
    return r;
}

int srv_read_file_at(int dirfd, const char *name, size_t max, struct p2v_buf *out,
                     struct p2v_err *err)
{
    struct stat sb;
    int r = -1;
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open '%s'", name);
    if (fstat(fd, &sb) < 0) {
        p2v_err_errno(err, "cannot stat '%s'", name);
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) {
        p2v_err_set(err, EINVAL, "'%s' is not a regular file", name);
        goto out;
    }
    if ((uint64_t)sb.st_size > max) {
        p2v_err_set(err, EFBIG, "'%s' is larger than %zu bytes", name, max);
        goto out;
    }
    p2v_buf_reset(out);
    uint8_t *p = p2v_buf_extend(out, (size_t)sb.st_size);
    if (!p) {
        p2v_err_set(err, ENOMEM, "out of memory reading '%s'", name);
        goto out;
    }
    ssize_t got = p2v_pread_full(fd, p, (size_t)sb.st_size, 0);
    if (got < 0) {
        p2v_err_errno(err, "cannot read '%s'", name);
        goto out;
    }
    out->len = (size_t)got;
    r = 0;
out:
    close(fd);
    return r;
}

void srv_iso_time(time_t t, char out[32])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static bool parse_iso_time(const char *s, time_t *t)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = s ? strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm) : NULL;
    if (!end || *end)
        return false;
    *t = timegm(&tm);
    return true;
}

/* ---------------------------------------------------------------- logging */

static void store_vlog(struct srv_store *st, enum p2v_log_level level, const char *fmt,
                       va_list ap)
{
    static const char *const names[] = {"error: ", "warning: ", "", "debug: "};
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    p2v_log(level, "%s", msg);
    enum p2v_log_level file_level = P2V_MAX(p2v_log_get_level(), P2V_LOG_INFO);
    if (st && st->logfd >= 0 && level <= file_level) {
        char ts[32], line[2200];
        srv_iso_time(time(NULL), ts);
        int n = snprintf(line, sizeof line, "%s %s%s\n", ts, names[level], msg);
        if (n > 0) {
            size_t len = P2V_MIN((size_t)n, sizeof line - 1);
            line[len - 1] = '\n';
            /* O_APPEND: one write per line keeps lines whole between threads */
            ssize_t w = write(st->logfd, line, len);
            (void)w;
        }
    }
}

void srv_store_log(struct srv_store *st, enum p2v_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_vlog(st, level, fmt, ap);
    va_end(ap);
}

void srv_job_log(struct srv_job *job, const char *fmt, ...)
{
    char msg[2048], ts[32], line[2200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_iso_time(time(NULL), ts);
    int n = snprintf(line, sizeof line, "%s %s\n", ts, msg);
    if (n <= 0 || job->dirfd < 0)
        return;
    size_t len = P2V_MIN((size_t)n, sizeof line - 1);
    line[len - 1] = '\n';
    int fd = openat(job->dirfd, "job.log",
                    O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t w = write(fd, line, len);
    (void)w;
    close(fd);
}

/* ---------------------------------------------------------------- the store */

static int rm_tree_at(int dirfd, const char *name);

int srv_store_open(struct srv_store *st, const char *path, bool for_run, struct p2v_err *err)
{
    struct p2v_buf tok = P2V_BUF_INIT;
    int r = -1;

    memset(st, 0, sizeof *st);
    st->dirfd = st->jobsfd = st->logfd = st->lockfd = st->reservefd = -1;
    pthread_mutex_init(&st->lock, NULL);
    snprintf(st->format, sizeof st->format, "qcow2");
    st->window = 64u << 20;

    st->path = realpath(path, NULL);
    if (!st->path) {
        p2v_err_errno(err, "store '%s'", path);
        goto out;
    }
    st->dirfd = open(st->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->dirfd < 0) {
        p2v_err_errno(err, "cannot open store '%s'", path);
        goto out;
    }
    static const char *const need[] = {"server.key", "server.crt", "token"};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(need); i++) {
        if (faccessat(st->dirfd, need[i], R_OK, AT_SYMLINK_NOFOLLOW) < 0) {
            p2v_err_set(err, ENOENT,
                        "store '%s' is not initialised ('%s' is missing): run "
                        "'p2v-server init --store %s'",
                        path, need[i], path);
            goto out;
        }
    }
    p2v_buf_init(&tok, 0);
    if (srv_read_file_at(st->dirfd, "token", 4096, &tok, err) < 0) {
        p2v_err_prefix(err, "store '%s'", path);
        goto out;
    }
    while (tok.len && isspace(tok.data[tok.len - 1]))
        tok.len--;
    if (tok.len == 0 || tok.len > P2V_PROTO_TOKEN_MAX) {
        p2v_err_set(err, EINVAL, "store '%s': the token file is empty or too long", path);
        goto out;
    }
    for (size_t i = 0; i < tok.len; i++) {
        if (tok.data[i] < 0x21 || tok.data[i] > 0x7e) {
            p2v_err_set(err, EINVAL, "store '%s': the token file holds a bad character",
                        path);
            goto out;
        }
    }
    memcpy(st->token, tok.data, tok.len);
    st->token[tok.len] = '\0';

    if (mkdirat(st->dirfd, "jobs", 0700) < 0 && errno != EEXIST) {
        p2v_err_errno(err, "cannot make '%s/jobs'", st->path);
        goto out;
    }
    st->jobsfd = openat(st->dirfd, "jobs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (st->jobsfd < 0) {
        p2v_err_errno(err, "cannot open '%s/jobs'", st->path);
        goto out;
    }
    if (for_run) {
        st->lockfd = openat(st->dirfd, "server.lock",
                            O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (st->lockfd < 0) {
            p2v_err_errno(err, "cannot open '%s/server.lock'", st->path);
            goto out;
        }
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        if (fcntl(st->lockfd, F_OFD_SETLK, &fl) < 0) {
            if (errno == EAGAIN || errno == EACCES)
                p2v_err_set(err, EBUSY, "store '%s' is in use by another p2v-server", path);
            else
                p2v_err_errno(err, "cannot lock '%s/server.lock'", st->path);
            goto out;
        }
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
        if (ftruncate(st->lockfd, 0) == 0)
            (void)!p2v_pwrite_full(st->lockfd, pid, (size_t)n, 0);
        st->logfd = openat(st->dirfd, "server.log",
                           O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (st->logfd < 0) {
            p2v_err_errno(err, "cannot open '%s/server.log'", st->path);
            goto out;
        }
        st->reservefd = openat(st->dirfd, ".reserve",
                               O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        srv_store_reserve_refill(st);
        /* half-made job folders of a server that died while making one */
        DIR *d = fdopendir(dup(st->jobsfd));
        if (d) {
            struct dirent *de;
            while ((de = readdir(d)))
                if (strncmp(de->d_name, ".new-", 5) == 0)
                    rm_tree_at(st->jobsfd, de->d_name);
            closedir(d);
        }
    }
    r = 0;
out:
    p2v_buf_release(&tok);
    if (r < 0)
        srv_store_close(st);
    return r;
}

void srv_store_close(struct srv_store *st)
{
    if (st->dirfd >= 0)
        close(st->dirfd);
    if (st->jobsfd >= 0)
        close(st->jobsfd);
    if (st->logfd >= 0)
        close(st->logfd);
    if (st->reservefd >= 0)
        close(st->reservefd);
    if (st->lockfd >= 0)
        close(st->lockfd); /* drops the OFD lock */
    st->dirfd = st->jobsfd = st->logfd = st->lockfd = st->reservefd = -1;
    free(st->path);
    st->path = NULL;
    while (st->held) {
        struct srv_held *h = st->held;
        st->held = h->next;
        free(h);
    }
    pthread_mutex_destroy(&st->lock);
}

bool srv_store_reserve_release(struct srv_store *st)
{
    struct stat sb;
    bool freed = false;
    if (!st || st->reservefd < 0)
        return false;
    pthread_mutex_lock(&st->lock);
    if (fstat(st->reservefd, &sb) == 0 && sb.st_size > 0) {
        off_t size = sb.st_size > (off_t)SRV_RESERVE_STEP ? sb.st_size - SRV_RESERVE_STEP : 0;
        freed = ftruncate(st->reservefd, size) == 0;
    }
    pthread_mutex_unlock(&st->lock);
    if (freed)
        srv_store_log(st, P2V_LOG_WARN, "store '%s' is full: used %u KiB of its reserve",
                      st->path, SRV_RESERVE_STEP >> 10);
    return freed;
}

void srv_store_reserve_refill(struct srv_store *st)
{
    if (st->reservefd < 0)
        return;
    pthread_mutex_lock(&st->lock);
    /* fallocate allocates the blocks: the reserve really holds the space */
    if (fallocate(st->reservefd, 0, 0, SRV_RESERVE_BYTES) < 0 && errno == EOPNOTSUPP) {
        static const char zeros[4096];
        for (off_t o = 0; o < (off_t)SRV_RESERVE_BYTES; o += (off_t)sizeof zeros)
            if (p2v_pwrite_full(st->reservefd, zeros, sizeof zeros, (uint64_t)o) < 0)
                break;
    }
    pthread_mutex_unlock(&st->lock);
}

bool srv_store_in_use(const char *path)
{
    char p[PATH_MAX];
    if ((size_t)snprintf(p, sizeof p, "%s/server.lock", path) >= sizeof p)
        return false;
    int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    bool held = fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
    close(fd);
    return held;
}

int srv_make_token(char out[2 * SRV_TOKEN_BYTES + 1])
{
    uint8_t raw[SRV_TOKEN_BYTES];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
    return 0;
}

bool srv_token_equal(const struct srv_store *st, const char *tok, size_t len)
{
    return srv_secret_equal(st->token, tok, len);
}

bool srv_secret_equal(const char *secret, const char *tok, size_t len)
{
    /* compare digests, so that neither the position of the first difference nor the
     * token's length shows in the time taken */
    uint8_t a[P2V_PROTO_HASH_LEN], b[P2V_PROTO_HASH_LEN];
    if (p2v_hash(P2V_HASH_SHA256, secret, strlen(secret), a) < 0 ||
        p2v_hash(P2V_HASH_SHA256, tok, len, b) < 0)
        return false;
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < sizeof a; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

/* Remove a folder we made (one level of plain files). */
static int rm_tree_at(int dirfd, const char *name)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        DIR *d = fdopendir(fd);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                    unlinkat(fd, de->d_name, 0);
            closedir(d);
        } else {
            close(fd);
        }
    }
    return unlinkat(dirfd, name, AT_REMOVEDIR);
}

/* ---------------------------------------------------------------- jobs */

static const char *const state_names[] = {
    [JOB_RECEIVING] = "receiving", [JOB_RECEIVED] = "received",
    [JOB_INJECTING] = "injecting", [JOB_CONFIGURED] = "configured",
    [JOB_VERIFYING] = "verifying", [JOB_VERIFIED] = "verified",
    [JOB_FAILED] = "failed",
};

const char *const srv_stage_names[4] = {"writing", "injecting", "configuring", "verifying"};

const char *srv_job_state_name(enum srv_job_state s)
{
    return (unsigned)s < P2V_ARRAY_SIZE(state_names) ? state_names[s] : "?";
}

int srv_job_state_parse(const char *name)
{
    for (unsigned i = 0; i < P2V_ARRAY_SIZE(state_names); i++)
        if (strcmp(name, state_names[i]) == 0)
            return (int)i;
    return -1;
}

int srv_parse_formats(const char *list, char primary[8], char outputs[SRV_OUTPUTS_MAX],
                      struct p2v_err *err)
{
    static const char *const known[] = {"qcow2", "vmdk", "raw", "vhd", "ova"};
    bool seen[P2V_ARRAY_SIZE(known)] = {false};
    int prim = -1;
    primary[0] = outputs[0] = '\0';
    for (const char *p = list;;) {
        size_t n = strcspn(p, ",");
        unsigned k;
        for (k = 0; k < P2V_ARRAY_SIZE(known); k++)
            if (strlen(known[k]) == n && strncmp(p, known[k], n) == 0)
                break;
        if (k == P2V_ARRAY_SIZE(known))
            return p2v_err_set(err, EINVAL, "unknown format '%.*s' (qcow2, vmdk, raw, vhd "
                               "or ova)", (int)P2V_MIN(n, (size_t)32), p);
        if (seen[k])
            return p2v_err_set(err, EINVAL, "format '%s' named twice", known[k]);
        seen[k] = true;
        if (prim < 0 && k <= 2)
            prim = (int)k;
        if (!p[n])
            break;
        p += n + 1;
    }
    if (prim < 0)
        prim = 0;
    snprintf(primary, 8, "%s", known[prim]);
    for (unsigned k = 0; k < P2V_ARRAY_SIZE(known); k++)
        if (seen[k] && (int)k != prim)
            snprintf(outputs + strlen(outputs), SRV_OUTPUTS_MAX - strlen(outputs), "%s%s",
                     outputs[0] ? "," : "", known[k]);
    return 0;
}

bool srv_job_captured(const struct srv_job *job)
{
    if (job->state == JOB_FAILED)
        return job->failed_stage[0] && strcmp(job->failed_stage, "receiving") != 0;
    return job->state != JOB_RECEIVING;
}

uint64_t srv_job_bytes_total(const struct srv_job *job)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++)
        if (job->disks[i].known)
            t += job->disks[i].planned;
    return t;
}

uint64_t srv_job_bytes_done(const struct srv_job *job)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++)
        if (job->disks[i].known)
            t += job->disks[i].committed;
    return t;
}

void srv_job_rate_sample(struct srv_job *job, double now)
{
    if (job->rate_n == SRV_RATE_SAMPLES) {
        memmove(job->rate_t, job->rate_t + 1, sizeof job->rate_t[0] * (SRV_RATE_SAMPLES - 1));
        memmove(job->rate_b, job->rate_b + 1, sizeof job->rate_b[0] * (SRV_RATE_SAMPLES - 1));
        job->rate_n--;
    }
    job->rate_t[job->rate_n] = now;
    job->rate_b[job->rate_n] = srv_job_bytes_done(job);
    job->rate_n++;
}

double srv_job_rate(const struct srv_job *job)
{
    if (job->rate_n < 2)
        return 0;
    double dt = job->rate_t[job->rate_n - 1] - job->rate_t[0];
    uint64_t b0 = job->rate_b[0], b1 = job->rate_b[job->rate_n - 1];
    if (dt <= 0 || b1 <= b0)
        return 0;
    return (double)(b1 - b0) / dt;
}

static void disk_file_name(const struct srv_job *job, unsigned i, char *out, size_t len)
{
    if (srv_job_captured(job))
        snprintf(out, len, "disk%u.%s", i, job->format);
    else
        snprintf(out, len, "disk%u.part", i);
}

int srv_job_to_json(const struct srv_job *job, struct p2v_buf *out)
{
    struct p2v_json j;
    char created[32], updated[32], file[32];
    p2v_buf_reset(out);
    p2v_json_init(&j, out, true);
    srv_iso_time(job->created, created);
    srv_iso_time(time(NULL), updated);
    uint64_t total = srv_job_bytes_total(job), done = srv_job_bytes_done(job);
    double rate = job->active ? srv_job_rate(job) : 0;

    p2v_json_object_begin(&j);
    p2v_json_kv_string(&j, "job", job->id);
    p2v_json_kv_string(&j, "name", job->name);
    p2v_json_kv_string(&j, "source-id", job->source_id);
    p2v_json_kv_string(&j, "state", srv_job_state_name(job->state));
    p2v_json_kv_string(&j, "failed-stage",
                       job->state == JOB_FAILED ? job->failed_stage : NULL);
    p2v_json_kv_string(&j, "reason", job->state == JOB_FAILED ? job->reason : NULL);
    /* the VM configurations in vm/ (finish.c): "written", "failed" or null */
    p2v_json_kv_string(&j, "vmconfig", job->vmconfig[0] ? job->vmconfig : NULL);
    p2v_json_kv_string(&j, "vmconfig-error",
                       job->vmconfig_error[0] ? job->vmconfig_error : NULL);
    /* the pipeline (pipeline.c) */
    p2v_json_kv_string(&j, "verdict", job->verdict[0] ? job->verdict : NULL);
    p2v_json_kv_string(&j, "report", job->has_report ? "report.json" : NULL);
    p2v_json_kv_string(&j, "serial-log", job->has_serial_log ? "verify/serial.log" : NULL);
    p2v_json_kv_u64(&j, "changes", job->changes);
    if (job->live.pass) {
        p2v_json_key(&j, "live");
        p2v_json_object_begin(&j);
        p2v_json_kv_u64(&j, "pass", job->live.pass);
        p2v_json_kv_string(&j, "phase", p2v_proto_pass_phase_name(job->live.phase));
        p2v_json_kv_u64(&j, "bytes-read", job->live.bytes_read);
        p2v_json_kv_u64(&j, "bytes-sent", job->live.bytes_sent);
        p2v_json_kv_u64(&j, "duration-ms", job->live.duration_ms);
        p2v_json_kv_u64(&j, "freeze-ms", job->live.freeze_ms);
        p2v_json_kv_u64(&j, "synced-ms", job->live.synced_ms);
        p2v_json_kv_bool(&j, "cutover-requested", job->live.cutover_requested);
        p2v_json_object_end(&j);
    }
    p2v_json_key(&j, "stage-ms");
    p2v_json_object_begin(&j);
    for (unsigned i = 0; i < P2V_ARRAY_SIZE(job->stage_ms); i++)
        if (job->stage_ms[i])
            p2v_json_kv_u64(&j, srv_stage_names[i], job->stage_ms[i]);
    p2v_json_object_end(&j);
    p2v_json_kv_string(&j, "format", job->format);
    p2v_json_key(&j, "outputs");
    p2v_json_array_begin(&j);
    for (const char *o = job->outputs; *o;) {
        size_t n = strcspn(o, ",");
        p2v_json_stringn(&j, o, n);
        o += n + (o[n] == ',');
    }
    p2v_json_array_end(&j);
    /* a batch's overrides of the facts (0: none) */
    p2v_json_kv_u64(&j, "memory-mib", job->memory_mib);
    p2v_json_kv_u64(&j, "cpus", job->cpus);
    p2v_json_kv_string(&j, "created", created);
    p2v_json_kv_string(&j, "updated", updated);
    p2v_json_kv_string(&j, "agent", job->agent[0] ? job->agent : NULL);
    p2v_json_kv_u64(&j, "sessions", job->sessions);
    p2v_json_kv_bool(&j, "active", job->active);
    p2v_json_kv_u64(&j, "bytes-total", total);
    p2v_json_kv_u64(&j, "bytes-done", done);
    p2v_json_kv_u64(&j, "bytes-received", job->bytes_received);
    p2v_json_kv_u64(&j, "rate", (uint64_t)rate);
    p2v_json_key(&j, "eta");
    if (job->active && rate >= 1 && total > done)
        p2v_json_u64(&j, (uint64_t)((double)(total - done) / rate + 0.5));
    else
        p2v_json_null(&j);
    p2v_json_key(&j, "disks");
    p2v_json_array_begin(&j);
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        const struct srv_disk *d = &job->disks[i];
        if (!d->known)
            continue;
        disk_file_name(job, i, file, sizeof file);
        p2v_json_object_begin(&j);
        p2v_json_kv_u64(&j, "index", i);
        p2v_json_kv_string(&j, "name", d->name);
        p2v_json_kv_string(&j, "id", d->id);
        p2v_json_kv_u64(&j, "size", d->size);
        p2v_json_kv_u64(&j, "sector-size", d->sector_size);
        p2v_json_kv_u64(&j, "planned", d->planned);
        p2v_json_kv_bool(&j, "all-blocks", d->all_blocks);
        p2v_json_kv_u64(&j, "committed", d->committed);
        p2v_json_kv_bool(&j, "complete", d->complete);
        p2v_json_kv_string(&j, "file", file);
        p2v_json_object_end(&j);
    }
    p2v_json_array_end(&j);
    p2v_json_object_end(&j);
    if (p2v_buf_put(out, "\n", 1) < 0)
        return -1;
    return 0;
}

/* Copy a JSON string member into a fixed field; false when missing or too long. */
static bool get_str(const struct jv *o, const char *key, char *out, size_t size,
                    bool optional)
{
    const struct jv *v = jv_get(o, key);
    if (optional && (!v || v->type == JV_NULL)) {
        out[0] = '\0';
        return true;
    }
    const char *s = jv_str(v);
    if (!s || strlen(s) >= size)
        return false;
    memcpy(out, s, strlen(s) + 1);
    return true;
}

static bool printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return false;
    return true;
}

int srv_job_from_json(const char *text, size_t len, struct srv_job *job, struct p2v_err *err)
{
    struct srv_job x;
    char state[16], created[32];
    int r = -1;
    struct jv *v = jv_parse(text, len, err);
    if (!v)
        return -1;
    memset(&x, 0, sizeof x);
    x.dirfd = -1;
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        x.disks[i].img = NULL;
        x.disks[i].jr.fd = -1;
    }
#define BAD(...)                                                                          \
    do {                                                                                  \
        p2v_err_set(err, EINVAL, __VA_ARGS__);                                            \
        goto out;                                                                         \
    } while (0)
    if (v->type != JV_OBJ)
        BAD("not a JSON object");
    if (!get_str(v, "job", x.id, sizeof x.id, false) || !srv_job_id_ok(x.id))
        BAD("bad \"job\"");
    if (!get_str(v, "name", x.name, sizeof x.name, false) ||
        srv_name_check(x.name, strlen(x.name), NULL) < 0)
        BAD("bad \"name\"");
    if (!get_str(v, "source-id", x.source_id, sizeof x.source_id, false) ||
        !printable(x.source_id))
        BAD("bad \"source-id\"");
    if (!get_str(v, "state", state, sizeof state, false))
        BAD("bad \"state\"");
    int sn = srv_job_state_parse(state);
    if (sn < 0)
        BAD("unknown state '%s'", state);
    x.state = (enum srv_job_state)sn;
    if (!get_str(v, "failed-stage", x.failed_stage, sizeof x.failed_stage, true) ||
        !get_str(v, "reason", x.reason, sizeof x.reason, true) ||
        !get_str(v, "agent", x.agent, sizeof x.agent, true) ||
        !get_str(v, "vmconfig", x.vmconfig, sizeof x.vmconfig, true) ||
        !get_str(v, "vmconfig-error", x.vmconfig_error, sizeof x.vmconfig_error, true))
        BAD("bad \"failed-stage\", \"reason\", \"agent\" or \"vmconfig\"");
    const struct jv *rep = jv_get(v, "report"), *slog = jv_get(v, "serial-log");
    if (!get_str(v, "verdict", x.verdict, sizeof x.verdict, true) ||
        (rep && rep->type != JV_NULL && rep->type != JV_STR) ||
        (slog && slog->type != JV_NULL && slog->type != JV_STR))
        BAD("bad \"verdict\", \"report\" or \"serial-log\"");
    x.has_report = rep && rep->type == JV_STR;
    x.has_serial_log = slog && slog->type == JV_STR;
    if (jv_get(v, "changes") && !jv_u64(jv_get(v, "changes"), &x.changes))
        BAD("bad \"changes\"");
    const struct jv *sms = jv_get(v, "stage-ms");
    if (sms && sms->type == JV_OBJ)
        for (unsigned i = 0; i < P2V_ARRAY_SIZE(x.stage_ms); i++)
            if (jv_get(sms, srv_stage_names[i]) && !jv_u64(jv_get(sms, srv_stage_names[i]), &x.stage_ms[i]))
                BAD("bad \"stage-ms\"");
    if (!get_str(v, "format", x.format, sizeof x.format, false) ||
        (strcmp(x.format, "qcow2") && strcmp(x.format, "vmdk") && strcmp(x.format, "raw")))
        BAD("bad \"format\"");
    const struct jv *outs = jv_get(v, "outputs");
    for (size_t k = 0; outs && outs->type == JV_ARR && k < outs->n; k++) {
        const char *o = jv_str(&outs->items[k]);
        size_t used = strlen(x.outputs);
        if (!o || (strcmp(o, "qcow2") && strcmp(o, "vmdk") && strcmp(o, "raw") &&
                   strcmp(o, "vhd") && strcmp(o, "ova")) ||
            strcmp(o, x.format) == 0 ||
            (size_t)snprintf(x.outputs + used, sizeof x.outputs - used, "%s%s",
                             used ? "," : "", o) >= sizeof x.outputs - used)
            BAD("bad \"outputs\"");
    }
    uint64_t cpus = 0;
    if ((jv_get(v, "memory-mib") && (!jv_u64(jv_get(v, "memory-mib"), &x.memory_mib) ||
                                     x.memory_mib > 1024 * 1024)) ||
        (jv_get(v, "cpus") && (!jv_u64(jv_get(v, "cpus"), &cpus) || cpus > 255)))
        BAD("bad \"memory-mib\" or \"cpus\"");
    x.cpus = (unsigned)cpus;
    if (!get_str(v, "created", created, sizeof created, false) ||
        !parse_iso_time(created, &x.created))
        BAD("bad \"created\"");
    if (!jv_u64(jv_get(v, "sessions"), &x.sessions) ||
        !jv_u64(jv_get(v, "bytes-received"), &x.bytes_received))
        BAD("bad \"sessions\" or \"bytes-received\"");
    const struct jv *active = jv_get(v, "active");
    x.active = active && active->type == JV_BOOL && active->b;
    const struct jv *disks = jv_get(v, "disks");
    if (!disks || disks->type != JV_ARR || disks->n > P2V_PROTO_DISKS_MAX)
        BAD("bad \"disks\"");
    for (size_t k = 0; k < disks->n; k++) {
        const struct jv *o = &disks->items[k];
        uint64_t idx, ss;
        const struct jv *complete = jv_get(o, "complete"), *ab = jv_get(o, "all-blocks");
        if (!jv_u64(jv_get(o, "index"), &idx) || idx >= P2V_PROTO_DISKS_MAX ||
            x.disks[idx].known)
            BAD("disk %zu: bad \"index\"", k);
        struct srv_disk *d = &x.disks[idx];
        if (!get_str(o, "name", d->name, sizeof d->name, false) ||
            !get_str(o, "id", d->id, sizeof d->id, false) ||
            !jv_u64(jv_get(o, "size"), &d->size) || d->size == 0 || d->size % 512 ||
            d->size > INT64_MAX || !jv_u64(jv_get(o, "sector-size"), &ss) ||
            (ss != 512 && ss != 4096) || !jv_u64(jv_get(o, "planned"), &d->planned) ||
            !jv_u64(jv_get(o, "committed"), &d->committed) || !complete ||
            complete->type != JV_BOOL)
            BAD("disk %llu: bad or missing member", (unsigned long long)idx);
        d->sector_size = (uint32_t)ss;
        d->complete = complete->b;
        d->all_blocks = ab && ab->type == JV_BOOL && ab->b;
        d->known = true;
    }
#undef BAD
    x.dirfd = job->dirfd;
    x.store = job->store;
    *job = x;
    r = 0;
out:
    jv_free(v);
    return r;
}

int srv_job_save(struct srv_job *job, struct p2v_err *err)
{
    struct p2v_buf b;
    p2v_buf_init(&b, JV_TEXT_MAX);
    int r = -1;
    if (srv_job_to_json(job, &b) < 0) {
        p2v_err_set(err, ENOBUFS, "job '%s': job.json is too large", job->id);
        goto out;
    }
    for (;;) {
        struct p2v_err e = {0};
        if (srv_write_file_at(job->dirfd, "job.json", b.data, b.len, 0600, &e) == 0)
            break;
        /* a full store: job.json matters more than a few blocks of reserve */
        if ((e.code == ENOSPC || e.code == EDQUOT) && srv_store_reserve_release(job->store))
            continue;
        if (err)
            *err = e;
        p2v_err_prefix(err, "job '%s'", job->id);
        goto out;
    }
    job->last_save = p2v_now();
    r = 0;
out:
    p2v_buf_release(&b);
    return r;
}

static struct srv_job *job_alloc(void)
{
    struct srv_job *job = calloc(1, sizeof *job);
    if (!job)
        return NULL;
    job->dirfd = -1;
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++) {
        job->disks[i].img = NULL;
        job->disks[i].jr.fd = -1;
    }
    return job;
}

struct srv_job *srv_job_load(struct srv_store *st, const char *id, struct p2v_err *err)
{
    struct p2v_buf text;
    struct srv_job *job = NULL;
    int dfd = -1;
    p2v_buf_init(&text, JV_TEXT_MAX);
    if (!srv_job_id_ok(id)) {
        p2v_err_set(err, EINVAL, "'%s' is not a job name", id);
        goto fail;
    }
    dfd = openat(st->jobsfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        p2v_err_errno(err, "job '%s'", id);
        goto fail;
    }
    if (srv_read_file_at(dfd, "job.json", JV_TEXT_MAX, &text, err) < 0) {
        err->code = EBADMSG; /* the folder exists: not a free name */
        p2v_err_prefix(err, "job '%s'", id);
        goto fail;
    }
    job = job_alloc();
    if (!job) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto fail;
    }
    job->dirfd = dfd;
    job->store = st;
    if (srv_job_from_json((const char *)text.data, text.len, job, err) < 0) {
        err->code = EBADMSG;
        p2v_err_prefix(err, "job '%s': job.json", id);
        goto fail;
    }
    if (strcmp(job->id, id) != 0) {
        p2v_err_set(err, EBADMSG, "job '%s': job.json names job '%s'", id, job->id);
        goto fail;
    }
    p2v_buf_release(&text);
    return job;
fail:
    p2v_buf_release(&text);
    free(job);
    if (dfd >= 0)
        close(dfd);
    return NULL;
}

/* Make jobs/ID for a new job: a hidden folder first, job.json in it, then a rename that
 * fails rather than replace anything, so that a job folder always has a job.json. */
static struct srv_job *job_create(struct srv_store *st, const char *id, const char *name,
                                  const char *source_id, struct p2v_err *err)
{
    char tmp[P2V_PROTO_JOB_MAX + 16];
    struct srv_job *job = job_alloc();
    if (!job) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    job->store = st;
    snprintf(job->id, sizeof job->id, "%s", id);
    snprintf(job->name, sizeof job->name, "%s", name);
    snprintf(job->source_id, sizeof job->source_id, "%s", source_id);
    snprintf(job->format, sizeof job->format, "%s", st->format);
    snprintf(job->outputs, sizeof job->outputs, "%s", st->outputs);
    struct srv_batch_entry be;
    if (srv_batch_lookup(st, name, &be) == 0) {
        /* a machine of a batch: its own formats and overrides */
        snprintf(job->format, sizeof job->format, "%s", be.format);
        snprintf(job->outputs, sizeof job->outputs, "%s", be.outputs);
        job->memory_mib = be.memory_mib;
        job->cpus = be.cpus;
    }
    job->state = JOB_RECEIVING;
    job->created = time(NULL);
    snprintf(tmp, sizeof tmp, ".new-%s", id);
    rm_tree_at(st->jobsfd, tmp);
    if (mkdirat(st->jobsfd, tmp, 0700) < 0) {
        p2v_err_errno(err, "cannot make job folder '%s'", tmp);
        goto fail;
    }
    job->dirfd = openat(st->jobsfd, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (job->dirfd < 0) {
        p2v_err_errno(err, "cannot open job folder '%s'", tmp);
        goto fail_rm;
    }
    if (srv_job_save(job, err) < 0)
        goto fail_rm;
    if (renameat2(st->jobsfd, tmp, st->jobsfd, id, RENAME_NOREPLACE) < 0) {
        p2v_err_errno(err, "cannot rename job folder '%s' to '%s'", tmp, id);
        goto fail_rm;
    }
    if (fsync(st->jobsfd) < 0) {
        p2v_err_errno(err, "cannot sync '%s/jobs'", st->path);
        goto fail;
    }
    return job;
fail_rm:
    rm_tree_at(st->jobsfd, tmp);
fail:
    if (job->dirfd >= 0)
        close(job->dirfd);
    free(job);
    return NULL;
}

static struct srv_held *held_find(struct srv_store *st, const char *id)
{
    for (struct srv_held *h = st->held; h; h = h->next)
        if (strcmp(h->id, id) == 0)
            return h;
    return NULL;
}

#define JOB_SUFFIX_MAX 9999 /* NAME-2 .. NAME-9999 */

enum srv_acquire srv_job_acquire(struct srv_store *st, const char *name,
                                 const char *source_id, struct srv_job **jobp,
                                 bool *is_new, struct p2v_err *err)
{
    struct srv_job *job = NULL;
    char id[P2V_PROTO_JOB_MAX + 1];
    bool made = false;
    enum srv_acquire res = SRV_ACQ_ERROR;

    srv_store_reserve_refill(st);
    pthread_mutex_lock(&st->lock);
    for (unsigned k = 1; k <= JOB_SUFFIX_MAX && !job; k++) {
        if (k == 1)
            snprintf(id, sizeof id, "%s", name);
        else
            snprintf(id, sizeof id, "%s-%u", name, k);
        struct srv_held *h = held_find(st, id);
        if (h) {
            if (strcmp(h->source_id, source_id) == 0) {
                res = SRV_ACQ_BUSY;
                goto out;
            }
            continue;
        }
        struct p2v_err e = {0};
        job = srv_job_load(st, id, &e);
        if (!job && e.code == ENOENT) {
            job = job_create(st, id, name, source_id, err);
            if (!job)
                goto out;
            made = true;
        } else if (!job && (e.code == EBADMSG || e.code == ELOOP || e.code == ENOTDIR)) {
            /* not a job folder we can trust (no or bad job.json, a symlink, a file) */
            srv_store_log(st, P2V_LOG_WARN, "%s (name skipped)", e.msg);
        } else if (!job) {
            if (err)
                *err = e;
            goto out;
        } else if (strcmp(job->source_id, source_id) != 0) {
            srv_job_free(job);
            job = NULL;
        }
    }
    if (!job) {
        p2v_err_set(err, EMLINK, "too many jobs named '%s'", name);
        goto out;
    }
    struct srv_held *h = calloc(1, sizeof *h);
    if (!h) {
        p2v_err_set(err, ENOMEM, "out of memory");
        srv_job_free(job);
        job = NULL;
        goto out;
    }
    snprintf(h->id, sizeof h->id, "%s", job->id);
    snprintf(h->source_id, sizeof h->source_id, "%s", source_id);
    h->next = st->held;
    st->held = h;
    res = SRV_ACQ_OK;
out:
    pthread_mutex_unlock(&st->lock);
    if (res == SRV_ACQ_OK) {
        *jobp = job;
        *is_new = made;
    }
    return res;
}

bool srv_job_hold(struct srv_store *st, const char *id, const char *source_id)
{
    struct srv_held *h = calloc(1, sizeof *h);
    bool ok = false;
    if (!h)
        return false;
    snprintf(h->id, sizeof h->id, "%s", id);
    snprintf(h->source_id, sizeof h->source_id, "%s", source_id);
    pthread_mutex_lock(&st->lock);
    if (!held_find(st, id)) {
        h->next = st->held;
        st->held = h;
        ok = true;
    }
    pthread_mutex_unlock(&st->lock);
    if (!ok)
        free(h);
    return ok;
}

void srv_job_unhold(struct srv_store *st, const char *id)
{
    pthread_mutex_lock(&st->lock);
    for (struct srv_held **pp = &st->held; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->id, id) == 0) {
            struct srv_held *h = *pp;
            *pp = h->next;
            free(h);
            break;
        }
    }
    pthread_mutex_unlock(&st->lock);
}

void srv_job_release(struct srv_store *st, struct srv_job *job)
{
    struct p2v_err err = {0};
    if (!job)
        return;
    job->active = false;
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++)
        if (job->disks[i].jr.fd >= 0)
            job->disks[i].committed = srv_ranges_bytes(&job->disks[i].jr.committed);
    if (srv_job_save(job, &err) < 0)
        srv_store_log(st, P2V_LOG_ERROR, "%s", err.msg);
    srv_job_unhold(st, job->id);
    srv_job_free(job);
}

/* ---------------------------------------------------------------- disk files */

const char *srv_part_format(const struct srv_job *job)
{
    return strcmp(job->format, "qcow2") == 0 ? "qcow2" : "raw";
}

/* The path of @name in the job's folder, for libdiskfmt (which opens by path). */
static int job_path(const struct srv_job *job, const char *name, char *out, size_t cap,
                    struct p2v_err *err)
{
    int n = job->store ? snprintf(out, cap, "%s/jobs/%s/%s", job->store->path, job->id, name)
                       : snprintf(out, cap, "/proc/self/fd/%d/%s", job->dirfd, name);
    if (n < 0 || (size_t)n >= cap)
        return p2v_err_set(err, ENAMETOOLONG, "job '%s': path of '%s' too long", job->id, name);
    return 0;
}

static void disk_close(struct srv_disk *d)
{
    jrnl_close(&d->jr);
    diskfmt_abandon(d->img);
    d->img = NULL;
    d->img_done = false;
}

static int disk_reset(struct srv_job *job, unsigned i, uint8_t hash_algo, struct p2v_err *err)
{
    struct srv_disk *d = &job->disks[i];
    char part[32], jname[32], path[PATH_MAX];
    snprintf(part, sizeof part, "disk%u.part", i);
    snprintf(jname, sizeof jname, "disk%u.journal", i);
    disk_close(d);
    d->committed = 0;
    d->complete = false;
    /* the journal goes first: records must never describe an image that was recreated
     * under them */
    if (unlinkat(job->dirfd, jname, 0) < 0 && errno != ENOENT)
        return p2v_err_errno(err, "cannot remove '%s'", jname);
    if (fsync(job->dirfd) < 0)
        return p2v_err_errno(err, "cannot sync the job folder");
    /* a fresh file (never one that a link planted there would redirect) */
    if (unlinkat(job->dirfd, part, 0) < 0 && errno != ENOENT)
        return p2v_err_errno(err, "cannot remove '%s'", part);
    if (job_path(job, part, path, sizeof path, err) < 0)
        return -1;
    struct diskfmt_create_opts opts = {.size = d->size};
    d->img = diskfmt_create(path, srv_part_format(job), &opts, err);
    if (!d->img)
        return -1;
    if (fchmodat(job->dirfd, part, 0600, 0) < 0)
        return p2v_err_errno(err, "cannot set the mode of '%s'", part);
    if (jrnl_create(job->dirfd, jname, d->size, d->sector_size, hash_algo, &d->jr, err) < 0)
        return -1;
    if (fsync(job->dirfd) < 0)
        return p2v_err_errno(err, "cannot sync the job folder");
    return 0;
}

int srv_disk_open(struct srv_job *job, unsigned i, uint8_t hash_algo, struct p2v_err *err)
{
    struct srv_disk *d = &job->disks[i];
    char part[32], jname[32], path[PATH_MAX];
    uint8_t boot[JRNL_BOOT_LEN];
    struct p2v_err e = {0};
    struct stat sb;
    snprintf(part, sizeof part, "disk%u.part", i);
    snprintf(jname, sizeof jname, "disk%u.journal", i);
    if (d->jr.fd >= 0 && (d->img || d->img_done))
        return 0;
    disk_close(d);

    jrnl_boot_id(boot);
    if (jrnl_open(job->dirfd, jname, boot, &d->jr, &e) < 0) {
        if (e.code != ENOENT)
            srv_job_log(job, "disk %u: journal unusable (%s): starting the disk again", i,
                        e.msg);
        return disk_reset(job, i, hash_algo, err);
    }
    if (d->jr.dropped > d->jr.lost)
        srv_job_log(job, "disk %u: dropped %llu torn or corrupt journal record(s)", i,
                    (unsigned long long)(d->jr.dropped - d->jr.lost));
    if (d->jr.lost)
        srv_job_log(job, "disk %u: %llu journal record(s) after the last checkpoint that "
                    "holds (the machine restarted since) are sent again", i,
                    (unsigned long long)d->jr.lost);
    if (d->jr.disk_size != d->size) {
        srv_job_log(job, "disk %u: journal is for %llu bytes, job.json says %llu: "
                    "starting the disk again", i, (unsigned long long)d->jr.disk_size,
                    (unsigned long long)d->size);
        return disk_reset(job, i, hash_algo, err);
    }
    if (!d->jr.marked) {
        /* nothing committed that still holds */
        return disk_reset(job, i, hash_algo, err);
    }
    char final[32];
    snprintf(final, sizeof final, "disk%u.%s", i, job->format);
    if (d->complete && strcmp(srv_part_format(job), job->format) == 0 &&
        fstatat(job->dirfd, part, &sb, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT &&
        fstatat(job->dirfd, final, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode)) {
        /* finished and renamed when the server stopped before job.json said so */
        d->img_done = true;
        d->committed = srv_ranges_bytes(&d->jr.committed);
        return 0;
    }
    if (fstatat(job->dirfd, part, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(sb.st_mode) ||
        job_path(job, part, path, sizeof path, &e) < 0) {
        srv_job_log(job, "disk %u: image '%s' missing or unusable: starting the disk again",
                    i, part);
        return disk_reset(job, i, hash_algo, err);
    }
    d->img = diskfmt_resume(path, srv_part_format(job), d->jr.mark, &e);
    if (!d->img && e.code == EALREADY && d->complete) {
        /* finished but not yet renamed when the server stopped: finish renames it */
        d->img_done = true;
    } else if (!d->img || diskfmt_size(d->img) < d->size) {
        srv_job_log(job, "disk %u: cannot reopen '%s' at its checkpoint (%s): starting the "
                    "disk again", i, part, d->img ? "smaller than the disk" : e.msg);
        return disk_reset(job, i, hash_algo, err);
    }
    d->committed = srv_ranges_bytes(&d->jr.committed);
    return 0;
}

int srv_disk_write(struct srv_job *job, unsigned i, const void *data, uint32_t len,
                   uint64_t off, bool zero, struct p2v_err *err)
{
    struct srv_disk *d = &job->disks[i];
    if (!d->img)
        return p2v_err_set(err, EBADF, "disk %u: its image is not open for writing", i);
    return zero ? diskfmt_zero(d->img, off, len, err) : diskfmt_pwrite(d->img, data, len, off, err);
}

int srv_disk_checkpoint(struct srv_job *job, unsigned i, bool durable, uint64_t *mark,
                        struct p2v_err *err)
{
    struct srv_disk *d = &job->disks[i];
    if (!d->img)
        return p2v_err_set(err, EBADF, "disk %u: its image is not open for writing", i);
    if (diskfmt_checkpoint(d->img, mark, err) < 0 || (durable && diskfmt_flush(d->img, err) < 0))
        return -1;
    return 0;
}

int srv_disk_log(struct srv_job *job, unsigned i, const struct jrnl_rec *recs, size_t n,
                 uint64_t mark, bool durable, uint64_t session, struct p2v_err *err)
{
    struct srv_disk *d = &job->disks[i];
    struct jrnl_rec *v = malloc((n + 1) * sizeof *v);
    if (!v)
        return p2v_err_set(err, ENOMEM, "out of memory");
    memcpy(v, recs, n * sizeof *v);
    memset(&v[n], 0, sizeof v[n]);
    v[n].off = mark;
    v[n].flags = JRNL_REC_MARK | (durable ? JRNL_REC_DURABLE : 0);
    jrnl_boot_id(v[n].hash);
    v[n].session = session;
    int r = jrnl_append(&d->jr, v, n + 1, err);
    free(v);
    return r;
}

int srv_disk_commit(struct srv_job *job, unsigned i, const struct jrnl_rec *recs, size_t n,
                    bool durable, uint64_t session, struct p2v_err *err)
{
    uint64_t mark;
    /* the image first: the records and the mark must never run ahead of it */
    if (srv_disk_checkpoint(job, i, durable, &mark, err) < 0 ||
        srv_disk_log(job, i, recs, n, mark, durable, session, err) < 0)
        return -1;
    job->disks[i].committed = srv_ranges_bytes(&job->disks[i].jr.committed);
    return 0;
}

void srv_job_close_files(struct srv_job *job)
{
    for (unsigned i = 0; i < P2V_PROTO_DISKS_MAX; i++)
        disk_close(&job->disks[i]);
}

void srv_job_free(struct srv_job *job)
{
    if (!job)
        return;
    srv_job_close_files(job);
    if (job->dirfd >= 0)
        close(job->dirfd);
    free(job);
}
