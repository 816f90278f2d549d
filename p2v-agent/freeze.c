/* freeze.c: the file systems mounted from the disks being captured (from
 * /proc/self/mountinfo and /sys/dev/block), and the freeze watchdog (see freeze.h).
 *
 * The watchdog is a forked child, not a thread: a thread dies with the agent, and a
 * frozen file system whose freezer is gone stays frozen until someone runs fsfreeze -u by
 * hand. The child talks with the agent over two pipes:
 *   - commands, agent to child: one byte, FREEZE_CMD_THAW; end of file means the agent is
 *     gone, which thaws as well;
 *   - reports, child to agent: fixed-size `struct wd_report` records, each written in one
 *     write() shorter than PIPE_BUF, so that a reader never sees half of one.
 * Everything the child needs is prepared before fork(): the agent may be multi-threaded,
 * so after fork() the child calls only system calls, never malloc() or stdio.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "freeze.h"

/* ------------------------------------------------------------------ finding the mounts */

/* One line of /proc/self/mountinfo, the strings pointing into the (unescaped) line. */
struct mi_line {
    unsigned maj, min;
    char *target;
    char *opts;    /* per-mount options */
    char *fstype;
    char *source;
    char *super;   /* super-block options */
};

/* Undo mountinfo's octal escapes (\040 for a space, \011, \012, \134) in place. */
static void mi_unescape(char *s)
{
    char *w = s;
    for (const char *r = s; *r;) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)(((r[1] - '0') << 6) | ((r[2] - '0') << 3) | (r[3] - '0'));
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* Split @line (modified in place) into its fields: "id parent MAJ:MIN root target opts
 * [optional fields...] - fstype source super". 0, or -1 when the line is not of that
 * shape (a kernel newer than this parser would still give these fields in this order). */
static int mi_parse(char *line, struct mi_line *ml)
{
    char *f[6];
    char *save = NULL;
    char *tok = strtok_r(line, " \n", &save);
    for (int i = 0; i < 6; i++) {
        if (!tok)
            return -1;
        f[i] = tok;
        tok = strtok_r(NULL, " \n", &save);
    }
    /* optional fields ("shared:1", "master:2", ...) until the lone "-" */
    while (tok && strcmp(tok, "-") != 0)
        tok = strtok_r(NULL, " \n", &save);
    if (!tok)
        return -1;
    char *fstype = strtok_r(NULL, " \n", &save);
    char *source = strtok_r(NULL, " \n", &save);
    char *super = strtok_r(NULL, " \n", &save);
    if (!fstype || !source || !super)
        return -1;

    char *colon = strchr(f[2], ':');
    if (!colon)
        return -1;
    *colon = '\0';
    unsigned long long maj, min;
    if (p2v_parse_uint(f[2], 0, UINT_MAX, &maj) < 0 ||
        p2v_parse_uint(colon + 1, 0, UINT_MAX, &min) < 0)
        return -1;

    mi_unescape(f[4]);
    mi_unescape(fstype);
    mi_unescape(source);
    ml->maj = (unsigned)maj;
    ml->min = (unsigned)min;
    ml->target = f[4];
    ml->opts = f[5];
    ml->fstype = fstype;
    ml->source = source;
    ml->super = super;
    return 0;
}

/* True when the comma-separated option list @opts holds exactly @opt. */
static bool opt_has(const char *opts, const char *opt)
{
    size_t n = strlen(opt);
    for (const char *p = opts; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && memcmp(p, opt, n) == 0)
            return true;
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

bool freeze_sys_read(const char *path, char *out, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t r;
    do
        r = read(fd, out, len - 1);
    while (r < 0 && errno == EINTR);
    close(fd);
    if (r < 0)
        return false;
    out[r] = '\0';
    if (r > 0 && out[r - 1] == '\n')
        out[r - 1] = '\0';
    return true;
}

/* "MAJ:MIN" as sysfs writes it into a dev_t. */
static bool parse_dev(char *v, dev_t *dev)
{
    char *colon = strchr(v, ':');
    unsigned long long maj, min;
    if (!colon)
        return false;
    *colon = '\0';
    if (p2v_parse_uint(v, 0, UINT_MAX, &maj) < 0 ||
        p2v_parse_uint(colon + 1, 0, UINT_MAX, &min) < 0)
        return false;
    *dev = makedev((unsigned)maj, (unsigned)min);
    return true;
}

bool freeze_partition_parent(const char *sys, dev_t dev, dev_t *parent)
{
    char path[PATH_MAX], v[64];
    snprintf(path, sizeof path, "%s/dev/block/%u:%u/partition", sys, major(dev), minor(dev));
    if (access(path, F_OK) != 0)
        return false;
    /* the kernel follows the MAJ:MIN symbolic link before "..": the disk's directory */
    snprintf(path, sizeof path, "%s/dev/block/%u:%u/../dev", sys, major(dev), minor(dev));
    return freeze_sys_read(path, v, sizeof v) && parse_dev(v, parent);
}

/* True when @dev is a loop device whose backing file is @image (a real path). */
static bool loop_of(dev_t dev, const char *image)
{
    char path[128], backing[PATH_MAX + 32];
    snprintf(path, sizeof path, "/sys/dev/block/%u:%u/loop/backing_file", major(dev),
             minor(dev));
    if (!freeze_sys_read(path, backing, sizeof backing))
        return false;
    if (strcmp(backing, image) == 0)
        return true;
    /* The kernel shows the file's name as it was opened, with " (deleted)" once that name
     * is unlinked (the image replaced in place, say). Such a loop device may still hold
     * the file system we are asked about: freezing one file system too many costs a short
     * pause, missing one costs a capture that is not consistent. */
    static const char deleted[] = " (deleted)";
    size_t n = strlen(backing), d = sizeof deleted - 1;
    if (n > d && strcmp(backing + n - d, deleted) == 0) {
        backing[n - d] = '\0';
        return strcmp(backing, image) == 0;
    }
    return false;
}

/* What a mount must be on to be ours: the disk (a block device) or a loop device of the
 * image file, either one whole or one of its partitions. */
struct disk_id {
    bool image;
    dev_t dev;              /* !image: the disk */
    char real[PATH_MAX];    /* image: its real path */
};

static bool dev_is_disk(const struct disk_id *d, dev_t dev)
{
    if (!d->image)
        return dev == d->dev;
    return loop_of(dev, d->real);
}

/* Stacked devices (device-mapper: LVM, dm-crypt; md) go no deeper than this. */
#define STACK_DEPTH_MAX 8

/* True when block device @dev lies on the disk: it is the disk, a partition of it, or a
 * device stacked on them (its sysfs "slaves", followed down): a logical volume whose
 * physical volume is on the disk holds a file system of the disk as much as a partition
 * does. */
static bool on_disk(const char *sys, const struct disk_id *d, dev_t dev, int depth)
{
    dev_t parent;
    if (dev_is_disk(d, dev) ||
        (freeze_partition_parent(sys, dev, &parent) && dev_is_disk(d, parent)))
        return true;
    if (depth >= STACK_DEPTH_MAX)
        return false;
    char path[PATH_MAX], v[64];
    snprintf(path, sizeof path, "%s/dev/block/%u:%u/slaves", sys, major(dev), minor(dev));
    DIR *dir = opendir(path);
    if (!dir)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(dir))) {
        char p2[PATH_MAX + 300];
        dev_t slave;
        if (e->d_name[0] == '.')
            continue;
        snprintf(p2, sizeof p2, "%s/%s/dev", path, e->d_name);
        if (freeze_sys_read(p2, v, sizeof v) && parse_dev(v, &slave) && slave != dev)
            found = on_disk(sys, d, slave, depth + 1);
    }
    closedir(dir);
    return found;
}

static bool mount_matches(const struct disk_id *d, dev_t dev)
{
    return on_disk("/sys", d, dev, 0);
}

bool freeze_dev_on_disk(const char *sysroot, dev_t dev, dev_t disk)
{
    struct disk_id d = {.dev = disk};
    return on_disk(sysroot, &d, dev, 0);
}

int freeze_find_mounts(const char *disk_path, struct freeze_mount **out, size_t *n,
                       struct p2v_err *err)
{
    int ret = -1;
    FILE *fp = NULL;
    char *line = NULL;
    size_t cap = 0;
    struct freeze_mount *v = NULL;
    size_t nv = 0;
    struct disk_id *d = calloc(1, sizeof *d);
    struct stat st;

    if (!d) {
        p2v_err_errno(err, "cannot look for the mounts of '%s'", disk_path);
        goto out;
    }
    if (stat(disk_path, &st) < 0) {
        p2v_err_errno(err, "cannot stat '%s'", disk_path);
        goto out;
    }
    if (S_ISBLK(st.st_mode)) {
        d->dev = st.st_rdev;
    } else if (S_ISREG(st.st_mode)) {
        d->image = true;
        if (!realpath(disk_path, d->real)) {
            p2v_err_errno(err, "cannot resolve '%s'", disk_path);
            goto out;
        }
    } else {
        /* neither a disk nor an image: nothing can be mounted from it */
        ret = 0;
        goto out;
    }

    fp = fopen("/proc/self/mountinfo", "re");
    if (!fp) {
        p2v_err_errno(err, "cannot open '/proc/self/mountinfo'");
        goto out;
    }
    for (;;) {
        errno = 0;
        if (getline(&line, &cap, fp) < 0) {
            if (errno) {
                p2v_err_errno(err, "cannot read '/proc/self/mountinfo'");
                goto out;
            }
            break;
        }
        struct mi_line ml;
        if (mi_parse(line, &ml) < 0)
            continue;
        dev_t dev = makedev(ml.maj, ml.min);
        /* btrfs (and others) show an anonymous 0:N device; the source names the disk */
        struct stat sst;
        if (ml.maj == 0 && ml.source[0] == '/' && stat(ml.source, &sst) == 0 &&
            S_ISBLK(sst.st_mode))
            dev = sst.st_rdev;
        if (!mount_matches(d, dev))
            continue;
        bool rw = opt_has(ml.opts, "rw") && opt_has(ml.super, "rw");
        bool seen = false;
        for (size_t k = 0; k < nv && !seen; k++) {
            if (v[k].dev != dev)
                continue;
            /* A bind mount, or a second mount of the same file system: it is frozen
             * once, at its first mount point. It can be written through any of its
             * mounts, so a read-only first mount (a read-only bind) does not make it
             * read-only. */
            seen = true;
            v[k].rw = v[k].rw || rw;
        }
        if (seen)
            continue;

        struct freeze_mount m = {.dev = dev, .rw = rw};
        if (strlen(ml.target) >= sizeof m.target || strlen(ml.source) >= sizeof m.source) {
            p2v_err_set(err, ENAMETOOLONG, "mount point '%.200s...' of '%s' is too long",
                        ml.target, disk_path);
            goto out;
        }
        strcpy(m.target, ml.target);
        strcpy(m.source, ml.source);
        snprintf(m.fstype, sizeof m.fstype, "%s", ml.fstype);

        struct freeze_mount *nvv = realloc(v, (nv + 1) * sizeof *nvv);
        if (!nvv) {
            p2v_err_errno(err, "cannot list the mounts of '%s'", disk_path);
            goto out;
        }
        v = nvv;
        v[nv++] = m;
    }
    ret = 0;
out:
    if (ret == 0) {
        *out = v;
        *n = nv;
        v = NULL;
    }
    free(v);
    free(line);
    if (fp)
        fclose(fp);
    free(d);
    return ret;
}

/* ------------------------------------------------------------------ the watchdog */

#define FREEZE_CMD_THAW 'T'

enum wd_kind {
    WD_FROZEN = 1, /* every mount is frozen */
    WD_FAILED,     /* nothing is frozen any more: opening or freezing @index failed */
    WD_THAWED,     /* every mount is thawed (final report) */
};

enum wd_why {
    WD_OPEN = 1,   /* WD_FAILED: open() of the mount point */
    WD_FREEZE,     /* WD_FAILED: FIFREEZE */
    WD_REQUEST,    /* WD_THAWED: the agent asked */
    WD_TIMEOUT,    /* WD_THAWED: the bound was reached */
    WD_GONE,       /* WD_THAWED: the agent's end closed (never read by the agent) */
};

struct wd_report {
    int32_t kind;
    int32_t why;
    int32_t index;    /* WD_FAILED: the mount; WD_THAWED: the first that failed to thaw, or -1 */
    int32_t errnum;   /* its errno */
    double window;    /* WD_THAWED: seconds from before the first freeze to after the last thaw */
};
_Static_assert(sizeof(struct wd_report) <= PIPE_BUF, "a report must be one atomic write");

struct freeze_set {
    pid_t pid;
    int cmd_fd;       /* the write end of the command pipe */
    int res_fd;       /* the read end of the report pipe */
    double max_s;
    bool have_final;  /* final holds the watchdog's final report */
    bool lost;        /* the watchdog ended without a final report */
    struct wd_report final;
    size_t n;
    struct freeze_mount *m;  /* a copy, for the messages */
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* FITHAW, where EINVAL means "not frozen": someone else (fsfreeze -u) thawed it already,
 * which is what we wanted. */
static int wd_thaw(int fd)
{
    if (ioctl(fd, FITHAW, 0) == 0 || errno == EINVAL)
        return 0;
    return -1;
}

static void wd_write(int fd, const struct wd_report *r)
{
    ssize_t w;
    do
        w = write(fd, r, sizeof *r);
    while (w < 0 && errno == EINTR);
    /* EPIPE: the agent is gone, nobody to tell (SIGPIPE is ignored) */
}

/* The watchdog: runs in the forked child, calls only async-signal-safe functions, and
 * _exit()s. @fds has room for @n descriptors. */
static void __attribute__((noreturn))
wd_main(const struct freeze_mount *m, size_t n, double max_s, int cmd_fd, int res_fd, int *fds)
{
    struct wd_report r = {.index = -1};
    size_t opened = 0, frozen = 0;
    double t0 = 0;

    /* out of the agent's session and process group: ^C, a SIGTERM or SIGHUP to the group
     * must not kill the one process that can thaw */
    setsid();
    struct sigaction sa = {.sa_handler = SIG_IGN};
    sigemptyset(&sa.sa_mask);
    static const int ignored[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(ignored); i++)
        sigaction(ignored[i], &sa, NULL);
    /* Nothing may be written to the agent's stdout/stderr: a log on a frozen file system,
     * or a full terminal pipe, would block the one process that can thaw. */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        for (int i = 0; i <= 2; i++)
            if (null != i)
                dup2(null, i);
        if (null > 2)
            close(null);
    }

    for (; opened < n; opened++) {
        fds[opened] = open(m[opened].target, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fds[opened] < 0) {
            r = (struct wd_report){WD_FAILED, WD_OPEN, (int32_t)opened, errno, 0};
            goto fail;
        }
    }
    t0 = mono_now();
    for (; frozen < n; frozen++) {
        if (ioctl(fds[frozen], FIFREEZE, 0) < 0) {
            r = (struct wd_report){WD_FAILED, WD_FREEZE, (int32_t)frozen, errno, 0};
            goto fail;
        }
    }
    r.kind = WD_FROZEN;
    wd_write(res_fd, &r);

    double deadline = t0 + max_s;
    int why = 0;
    while (!why) {
        double left = deadline - mono_now();
        if (left <= 0) {
            why = WD_TIMEOUT;
            break;
        }
        /* rounded up: waking a millisecond early would only loop */
        double ms = left * 1000 + 1;
        struct pollfd p = {.fd = cmd_fd, .events = POLLIN};
        int pr = poll(&p, 1, ms >= INT_MAX ? INT_MAX : (int)ms);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            why = WD_GONE; /* cannot wait for the agent: do not hold the freeze blind */
        } else if (pr == 0) {
            continue; /* the deadline check above decides */
        } else if (p.revents & POLLIN) {
            char c;
            ssize_t rd = read(cmd_fd, &c, 1);
            if (rd < 0 && errno == EINTR)
                continue;
            /* any byte is taken as "thaw": thawing is always the safe side */
            why = rd == 1 ? WD_REQUEST : WD_GONE;
        } else {
            why = WD_GONE; /* POLLHUP / POLLERR: the agent's end is closed */
        }
    }

    r = (struct wd_report){WD_THAWED, why, -1, 0, 0};
    while (frozen > 0) {
        frozen--;
        if (wd_thaw(fds[frozen]) < 0 && r.index < 0) {
            r.index = (int32_t)frozen;
            r.errnum = errno;
        }
    }
    r.window = mono_now() - t0;
    wd_write(res_fd, &r);
    _exit(0);

fail:
    while (frozen > 0) {
        frozen--;
        wd_thaw(fds[frozen]); /* the report names the first failure; this one cannot help */
    }
    wd_write(res_fd, &r);
    _exit(0);
}

/* Read one report. 1, 0 at end of file (the watchdog is gone), -1 with errno. */
static int read_report(int fd, struct wd_report *r)
{
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t rd = read(fd, (char *)r + got, sizeof *r - got);
        if (rd < 0 && errno == EINTR)
            continue;
        if (rd < 0)
            return -1;
        if (rd == 0)
            return 0;
        got += (size_t)rd;
    }
    return 1;
}

static void reap(pid_t pid)
{
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/* Send the thaw command. The watchdog may be gone already (its bound reached): the agent
 * may not ignore SIGPIPE, so it is blocked around the write and a SIGPIPE that this
 * write raised is taken off before it is unblocked. */
static void send_thaw(int fd)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    sigpending(&pending);
    bool was_pending = sigismember(&pending, SIGPIPE);
    char c = FREEZE_CMD_THAW;
    ssize_t w;
    do
        w = write(fd, &c, 1);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

struct freeze_set *freeze_begin(const struct freeze_mount *m, size_t n, double max_s,
                                struct p2v_err *err)
{
    struct freeze_set *f = NULL;
    int *fds = NULL;
    int cmd[2] = {-1, -1}, res[2] = {-1, -1};
    pid_t pid = -1;
    bool ok = false;

    if (n == 0 || !(max_s > 0)) {
        p2v_err_set(err, EINVAL, "cannot freeze %zu file systems with a bound of %g s", n,
                    max_s);
        goto out;
    }
    f = calloc(1, sizeof *f);
    fds = calloc(n, sizeof *fds);
    if (f)
        f->m = calloc(n, sizeof *f->m);
    if (!f || !fds || !f->m) {
        p2v_err_errno(err, "cannot freeze %zu file systems", n);
        goto out;
    }
    memcpy(f->m, m, n * sizeof *m);
    f->n = n;
    f->max_s = max_s;
    /* O_CLOEXEC: a program the agent runs (ssh) must not hold the command pipe open, or
     * the watchdog would not see the agent go */
    if (pipe2(cmd, O_CLOEXEC) < 0 || pipe2(res, O_CLOEXEC) < 0) {
        p2v_err_errno(err, "cannot make the freeze watchdog's pipes");
        goto out;
    }
    pid = fork();
    if (pid < 0) {
        p2v_err_errno(err, "cannot fork the freeze watchdog");
        goto out;
    }
    if (pid == 0) {
        /* its copy of the agent's end would keep the command pipe open after the agent
         * died, and the watchdog would wait for its bound instead */
        close(cmd[1]);
        close(res[0]);
        wd_main(m, n, max_s, cmd[0], res[1], fds);
    }
    close(cmd[0]);
    close(res[1]);
    cmd[0] = res[1] = -1;

    /* FIFREEZE syncs each file system first, which takes what it takes: the watchdog is
     * not killed meanwhile, since a watchdog killed in the middle would leave the mounts
     * it froze frozen */
    struct wd_report r;
    int rr = read_report(res[0], &r);
    if (rr <= 0) {
        if (rr < 0)
            p2v_err_errno(err, "cannot read the freeze watchdog's report");
        else
            p2v_err_set(err, EPIPE, "the freeze watchdog ended without a report");
        close(cmd[1]);
        cmd[1] = -1;
        reap(pid);
        goto out;
    }
    if (r.kind != WD_FROZEN) {
        const struct freeze_mount *fm =
            r.kind == WD_FAILED && r.index >= 0 && (size_t)r.index < n ? &m[r.index] : NULL;
        if (!fm)
            p2v_err_set(err, EPROTO, "the freeze watchdog sent a report of kind %d",
                        (int)r.kind);
        else if (r.why == WD_OPEN)
            p2v_err_set(err, r.errnum, "cannot open the mount point '%s' (%s) to freeze it: %s",
                        fm->target, fm->fstype, strerror(r.errnum));
        else if (r.errnum == EOPNOTSUPP)
            p2v_err_set(err, r.errnum, "the kernel cannot freeze %s at %s: %s", fm->fstype,
                        fm->target, strerror(r.errnum));
        else
            p2v_err_set(err, r.errnum, "cannot freeze %s at %s: %s", fm->fstype, fm->target,
                        strerror(r.errnum));
        close(cmd[1]);
        cmd[1] = -1;
        reap(pid);
        goto out;
    }
    f->pid = pid;
    f->cmd_fd = cmd[1];
    f->res_fd = res[0];
    ok = true;
out:
    if (!ok) {
        for (int i = 0; i < 2; i++) {
            if (cmd[i] >= 0)
                close(cmd[i]);
            if (res[i] >= 0)
                close(res[i]);
        }
        if (f)
            free(f->m);
        free(f);
        f = NULL;
    }
    free(fds);
    return f;
}

/* Take the final report if the watchdog has written it, without blocking (@block false)
 * or waiting for it (@block true). */
static void take_final(struct freeze_set *f, bool block)
{
    if (f->have_final || f->lost)
        return;
    if (!block) {
        struct pollfd p = {.fd = f->res_fd, .events = POLLIN};
        int pr;
        do
            pr = poll(&p, 1, 0);
        while (pr < 0 && errno == EINTR);
        if (pr <= 0)
            return;
    }
    /* the report was written whole in one write (< PIPE_BUF): when any of it is readable,
     * all of it is, so this does not block when !block */
    int rr = read_report(f->res_fd, &f->final);
    if (rr == 1 && f->final.kind == WD_THAWED)
        f->have_final = true;
    else
        f->lost = true;
}

bool freeze_holding(struct freeze_set *f)
{
    if (!f)
        return false;
    take_final(f, false);
    return !f->have_final && !f->lost;
}

int freeze_end(struct freeze_set *f, double *window_s, struct p2v_err *err)
{
    int ret = -1;
    if (!f) {
        if (window_s)
            *window_s = 0;
        return 0;
    }
    take_final(f, false);
    if (!f->have_final && !f->lost)
        send_thaw(f->cmd_fd);
    take_final(f, true);
    close(f->cmd_fd);
    close(f->res_fd);
    reap(f->pid);

    const struct wd_report *r = &f->final;
    if (f->lost) {
        p2v_err_set(err, EPIPE,
                    "the freeze watchdog ended without reporting the thaw of %zu file "
                    "system%s (the first at %s)",
                    f->n, f->n == 1 ? "" : "s", f->m[0].target);
    } else if (r->index >= 0 && (size_t)r->index < f->n) {
        const struct freeze_mount *fm = &f->m[r->index];
        p2v_err_set(err, r->errnum, "cannot thaw %s at %s: %s (run fsfreeze -u %s)",
                    fm->fstype, fm->target, strerror(r->errnum), fm->target);
    } else if (r->why != WD_REQUEST) {
        p2v_err_set(err, ETIMEDOUT,
                    "the freeze watchdog thawed on its own after %.3f s, its bound of %g s "
                    "reached: what was read under the freeze is not consistent",
                    r->window, f->max_s);
    } else {
        if (window_s)
            *window_s = r->window;
        ret = 0;
    }
    free(f->m);
    free(f);
    return ret;
}
