/* test-freeze.c: TAP test of p2v-agent/freeze.c on real file systems: a 64 MiB ext4
 * image on a loop device, mounted in a temporary folder (root only). Checked:
 *   - freeze_find_mounts() finds the mount from the loop device and from the image file
 *     (the loop device's backing file), and nothing for a file that is not attached;
 *   - under freeze_begin() a write + fsync in the mount blocks, and completes once
 *     freeze_end() thawed; the window the watchdog measured is plausible;
 *   - the watchdog's bound: with max_s = 1 it thaws on its own, freeze_holding() says so
 *     and freeze_end() fails saying the capture would not be consistent;
 *   - an agent killed with SIGKILL inside the freeze: its watchdog thaws at once;
 *   - a file system the kernel cannot freeze (NTFS through ntfs-3g, fuseblk) is refused by
 *     name and left writable (skipped without ntfs-3g, mkntfs or /dev/fuse).
 * Whatever happens, the mounts are thawed (fsfreeze -u as a last resort), unmounted and
 * detached: at exit, and from a SIGALRM guard if anything hangs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../../p2v-agent/freeze.h"
#include "p2v-common.h"
#include "tap.h"

#define GUARD_S 90 /* the whole test; a normal run takes about 8 s */
#define MAX_KIDS 16

/* What cleanup() must undo; filled as it is made. */
static struct {
    pid_t main_pid;
    char dir[PATH_MAX];
    char img[PATH_MAX + 32], mnt[PATH_MAX + 32], loop[64];
    char nimg[PATH_MAX + 32], nmnt[PATH_MAX + 32], nloop[64];
    bool mounted, nmounted;
    pid_t kids[MAX_KIDS]; /* writers that may still be blocked */
} T;

__attribute__((format(printf, 1, 2))) static int sh(const char *fmt, ...)
{
    char cmd[3 * PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    fflush(stdout);
    int st = system(cmd);
    return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

/* `losetup -f --show FILE` into @out. */
static bool loop_attach(const char *file, char *out, size_t len)
{
    char cmd[PATH_MAX + 96];
    snprintf(cmd, sizeof cmd, "losetup -f --show '%s'", file);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p)
        return false;
    bool got = fgets(out, (int)len, p) != NULL;
    int st = pclose(p);
    if (!got || st != 0)
        return false;
    out[strcspn(out, "\n")] = '\0';
    return strncmp(out, "/dev/loop", 9) == 0;
}

static void cleanup(void)
{
    if (getpid() != T.main_pid)
        return; /* a forked writer or agent never undoes the parent's set-up */
    /* thaw first: a writer blocked in the frozen file system would keep it busy */
    if (T.mounted)
        sh("fsfreeze -u '%s' 2>/dev/null", T.mnt);
    for (int i = 0; i < MAX_KIDS; i++) {
        if (T.kids[i] > 0) {
            kill(T.kids[i], SIGKILL);
            waitpid(T.kids[i], NULL, 0);
            T.kids[i] = 0;
        }
    }
    if (T.nmounted && sh("umount '%s'", T.nmnt) == 0)
        T.nmounted = false;
    if (T.mounted && sh("umount '%s'", T.mnt) == 0)
        T.mounted = false;
    if (*T.nloop && sh("losetup -d '%s'", T.nloop) == 0)
        *T.nloop = '\0';
    if (*T.loop && sh("losetup -d '%s'", T.loop) == 0)
        *T.loop = '\0';
    if (*T.dir && !T.mounted && !T.nmounted) {
        sh("rm -rf '%s'", T.dir);
        *T.dir = '\0';
    }
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "Bail out! test-freeze: timed out; thawing and cleaning up\n";
    if (write(STDOUT_FILENO, msg, sizeof msg - 1) < 0) {
        /* nothing more to say */
    }
    cleanup(); /* not async-signal-safe, but the test is stuck anyway */
    _exit(1);
}

static void kid_track(pid_t pid)
{
    for (int i = 0; i < MAX_KIDS; i++)
        if (T.kids[i] == 0) {
            T.kids[i] = pid;
            return;
        }
}

static void kid_forget(pid_t pid)
{
    for (int i = 0; i < MAX_KIDS; i++)
        if (T.kids[i] == pid)
            T.kids[i] = 0;
}

/* A process that writes 64 KiB to a file in @dir and fsyncs it; exits 0 on success. */
static pid_t writer_start(const char *dir)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char path[PATH_MAX + 64], buf[65536];
        memset(buf, 'x', sizeof buf);
        snprintf(path, sizeof path, "%s/w.%d", dir, (int)getpid());
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            _exit(2);
        bool good = write(fd, buf, sizeof buf) == (ssize_t)sizeof buf && fsync(fd) == 0;
        close(fd);
        _exit(good ? 0 : 3);
    }
    if (pid > 0)
        kid_track(pid);
    return pid;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Wait up to @s seconds for @pid: its exit status, -1 while it still runs, -2 when it
 * was killed by a signal (*sig gets it when not NULL). */
static int wait_for(pid_t pid, double s, int *sig)
{
    double end = p2v_now() + s;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            kid_forget(pid);
            if (WIFSIGNALED(st)) {
                if (sig)
                    *sig = WTERMSIG(st);
                return -2;
            }
            return WEXITSTATUS(st);
        }
        if (r < 0 && errno != EINTR)
            return -3;
        if (p2v_now() >= end)
            return -1;
        sleep_s(0.01);
    }
}

/* A write + fsync in @dir completes within @s seconds. */
static bool writable_within(const char *dir, double s)
{
    pid_t pid = writer_start(dir);
    return pid > 0 && wait_for(pid, s, NULL) == 0;
}

static void skip(int count, const char *reason)
{
    for (int i = 0; i < count; i++)
        printf("ok %d # SKIP %s\n", ++tap_n, reason);
    fflush(stdout);
}

static bool have(const char *prog)
{
    return sh("command -v %s >/dev/null 2>&1", prog) == 0;
}

static void setup(void)
{
    if (geteuid() != 0)
        skip_all("needs root (loop devices, mount, FIFREEZE)");
    if (!have("losetup") || !have("mke2fs") || !have("mount"))
        skip_all("needs losetup, mke2fs and mount");
    const char *tmp = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof tmpl, "%s/p2v-freeze-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpl) || !realpath(tmpl, T.dir))
        skip_all("cannot make a temporary folder");
    snprintf(T.img, sizeof T.img, "%s/ext4.img", T.dir);
    snprintf(T.mnt, sizeof T.mnt, "%s/mnt", T.dir);
    int fd = open(T.img, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    if (mkdir(T.mnt, 0755) < 0 || fd < 0 || truncate(T.img, 64 << 20) < 0)
        skip_all("cannot make a 64 MiB image and its mount point");
    if (sh("mke2fs -q -F -t ext4 '%s' >/dev/null 2>&1", T.img) != 0)
        skip_all("mke2fs -t ext4 failed");
    if (!loop_attach(T.img, T.loop, sizeof T.loop)) {
        *T.loop = '\0';
        skip_all("cannot attach a loop device (losetup -f --show)");
    }
    if (sh("mount -t ext4 '%s' '%s'", T.loop, T.mnt) != 0)
        skip_all("cannot mount the ext4 image");
    T.mounted = true;
}

static void test_find(void)
{
    struct p2v_err err = {0};
    struct freeze_mount *m = NULL;
    size_t n = 99;
    int r = freeze_find_mounts(T.loop, &m, &n, &err);
    ok(r == 0, "freeze_find_mounts('%s') succeeds%s%s", T.loop, r ? ": " : "",
       r ? err.msg : "");
    is_int(r == 0 ? n : 99, 1, "the loop device has one mount");
    if (r == 0 && n == 1) {
        is_str(m[0].target, T.mnt, "its mount point");
        is_str(m[0].fstype, "ext4", "its type");
        ok(m[0].rw && strcmp(m[0].source, T.loop) == 0, "read-write, source %s",
           m[0].source);
    } else {
        for (int i = 0; i < 3; i++)
            ok(0, "(no mount found)");
    }
    free(m);

    m = NULL;
    r = freeze_find_mounts(T.img, &m, &n, &err);
    ok(r == 0 && n == 1 && strcmp(m[0].target, T.mnt) == 0,
       "the image file finds the mount of its loop device");
    free(m);

    char other[PATH_MAX + 32];
    snprintf(other, sizeof other, "%s/unattached.img", T.dir);
    int fd = open(other, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    m = NULL;
    n = 99;
    r = freeze_find_mounts(other, &m, &n, &err);
    ok(r == 0 && n == 0 && m == NULL, "a file that is not attached has no mounts");
    free(m);
}

static struct freeze_mount the_mount(void)
{
    struct freeze_mount m = {0};
    struct freeze_mount *v = NULL;
    size_t n = 0;
    struct p2v_err err = {0};
    if (freeze_find_mounts(T.loop, &v, &n, &err) == 0 && n == 1)
        m = v[0];
    free(v);
    return m;
}

static void test_freeze(const struct freeze_mount *m)
{
    struct p2v_err err = {0};
    struct freeze_set *f = freeze_begin(m, 1, 30, &err);
    if (!ok(f != NULL, "freeze_begin freezes %s", T.mnt)) {
        diag("  %s", err.msg);
        for (int i = 0; i < 5; i++)
            ok(0, "(not frozen)");
        return;
    }
    pid_t w = writer_start(T.mnt);
    ok(w > 0 && wait_for(w, 0.5, NULL) == -1, "a write + fsync blocks under the freeze");
    ok(freeze_holding(f), "freeze_holding: the watchdog holds the freeze");
    double window = -1;
    int r = freeze_end(f, &window, &err);
    if (!ok(r == 0, "freeze_end thaws"))
        diag("  %s", err.msg);
    ok(window > 0.4 && window < 5, "the window the watchdog measured: %.3f s", window);
    ok(w > 0 && wait_for(w, 2, NULL) == 0, "the blocked write completes after the thaw");
}

static void test_bound(const struct freeze_mount *m)
{
    struct p2v_err err = {0};
    struct freeze_set *f = freeze_begin(m, 1, 1, &err);
    if (!ok(f != NULL, "freeze_begin with a bound of 1 s")) {
        diag("  %s", err.msg);
        for (int i = 0; i < 4; i++)
            ok(0, "(not frozen)");
        return;
    }
    sleep_s(2);
    ok(writable_within(T.mnt, 2), "after 2 s the watchdog has thawed: a write completes");
    ok(!freeze_holding(f), "freeze_holding: the freeze is no longer held");
    double window = -1;
    int r = freeze_end(f, &window, &err);
    ok(r == -1, "freeze_end fails: the bound was reached");
    if (!ok(r == -1 && strstr(err.msg, "thawed on its own") && strstr(err.msg, "bound"),
            "the message says the watchdog thawed at its bound"))
        diag("  message: %s", r == -1 ? err.msg : "(none)");
    else
        diag("%s", err.msg);
}

static void test_agent_killed(const struct freeze_mount *m)
{
    int sync[2];
    if (pipe(sync) < 0) {
        for (int i = 0; i < 3; i++)
            ok(0, "pipe: %s", strerror(errno));
        return;
    }
    fflush(stdout);
    pid_t agent = fork();
    if (agent == 0) {
        close(sync[0]);
        struct p2v_err err = {0};
        struct freeze_set *f = freeze_begin(m, 1, 30, &err);
        if (!f)
            _exit(2);
        if (write(sync[1], "F", 1) != 1)
            _exit(3);
        kill(getpid(), SIGKILL);
        _exit(4);
    }
    close(sync[1]);
    char c = 0;
    bool frozen = agent > 0 && read(sync[0], &c, 1) == 1 && c == 'F';
    close(sync[0]);
    ok(frozen, "an agent froze the mount");
    int sig = 0;
    int st = agent > 0 ? wait_for(agent, 10, &sig) : -3;
    ok(st == -2 && sig == SIGKILL, "the agent was killed with SIGKILL inside the freeze");
    ok(writable_within(T.mnt, 2), "its watchdog thawed: a write completes within 2 s");
}

/* A sysfs tree of our own (the host has no device-mapper or md to make real ones): a
 * disk 8:0 with partition 8:2, a logical volume 253:0 on that partition, a dm-crypt
 * device 253:1 on the LV, an LV 253:2 on another disk 8:16, and a loop of devices that
 * point at each other. Checks the rule freeze_find_mounts applies to each mount. */
static void test_stacked(void)
{
    char root[PATH_MAX + 8];
    snprintf(root, sizeof root, "%s/sys", T.dir);
    int r = sh("set -e; r='%s'; d=\"$r/devices\"; b=\"$r/dev/block\"; mkdir -p \"$b\"\n"
               "mk() { mkdir -p \"$d/$1\"; echo \"$2\" > \"$d/$1/dev\"; "
               "ln -s \"$d/$1\" \"$b/$2\"; }\n"
               "mk sda 8:0; mk sda/sda2 8:2; touch \"$d/sda/sda2/partition\"; mk sdb 8:16\n"
               "mk dm-0 253:0; mkdir \"$d/dm-0/slaves\"; ln -s \"$d/sda/sda2\" \"$d/dm-0/slaves/sda2\"\n"
               "mk dm-1 253:1; mkdir \"$d/dm-1/slaves\"; ln -s \"$d/dm-0\" \"$d/dm-1/slaves/dm-0\"\n"
               "mk dm-2 253:2; mkdir \"$d/dm-2/slaves\"; ln -s \"$d/sdb\" \"$d/dm-2/slaves/sdb\"\n"
               "mk dm-3 253:3; mkdir \"$d/dm-3/slaves\"; mk dm-4 253:4; mkdir \"$d/dm-4/slaves\"\n"
               "ln -s \"$d/dm-4\" \"$d/dm-3/slaves/dm-4\"; ln -s \"$d/dm-3\" \"$d/dm-4/slaves/dm-3\"\n",
               root);
    if (r != 0) {
        skip(5, "cannot build a sysfs tree");
        return;
    }
    const dev_t sda = makedev(8, 0), sdb = makedev(8, 16);
    ok(freeze_dev_on_disk(root, makedev(8, 2), sda), "stacked: a partition is on its disk");
    ok(freeze_dev_on_disk(root, makedev(253, 0), sda),
       "stacked: a logical volume on the disk's partition is on the disk");
    ok(freeze_dev_on_disk(root, makedev(253, 1), sda),
       "stacked: dm-crypt on that logical volume is on the disk too");
    ok(!freeze_dev_on_disk(root, makedev(253, 2), sda) &&
           freeze_dev_on_disk(root, makedev(253, 2), sdb),
       "stacked: a logical volume on another disk is not on this one");
    ok(!freeze_dev_on_disk(root, makedev(253, 3), sda),
       "stacked: devices that name each other end (depth bound), not on the disk");
}

static void test_refusal(void)
{
    if (!have("ntfs-3g") || !have("mkntfs") || access("/dev/fuse", R_OK | W_OK) != 0) {
        skip(4, "needs ntfs-3g, mkntfs and /dev/fuse for a file system the kernel cannot "
                "freeze");
        return;
    }
    snprintf(T.nimg, sizeof T.nimg, "%s/ntfs.img", T.dir);
    snprintf(T.nmnt, sizeof T.nmnt, "%s/ntfs", T.dir);
    int fd = open(T.nimg, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    if (fd < 0 || truncate(T.nimg, 16 << 20) < 0 || mkdir(T.nmnt, 0755) < 0 ||
        sh("mkntfs -q -F -Q '%s' >/dev/null 2>&1", T.nimg) != 0) {
        skip(4, "mkntfs failed");
        return;
    }
    if (!loop_attach(T.nimg, T.nloop, sizeof T.nloop)) {
        *T.nloop = '\0';
        skip(4, "cannot attach a second loop device");
        return;
    }
    if (sh("ntfs-3g '%s' '%s' >/dev/null 2>&1", T.nloop, T.nmnt) != 0) {
        skip(4, "ntfs-3g cannot mount here (FUSE)");
        return;
    }
    T.nmounted = true;

    struct p2v_err err = {0};
    struct freeze_mount *m = NULL;
    size_t n = 0;
    int r = freeze_find_mounts(T.nloop, &m, &n, &err);
    if (!ok(r == 0 && n == 1 && strcmp(m[0].fstype, "fuseblk") == 0,
            "freeze_find_mounts finds the ntfs-3g mount as fuseblk")) {
        skip(3, "no fuseblk mount to freeze");
        free(m);
        return;
    }
    struct freeze_set *f = freeze_begin(m, 1, 5, &err);
    ok(f == NULL, "freeze_begin refuses it");
    if (f)
        freeze_end(f, NULL, NULL);
    if (!ok(!f && strstr(err.msg, "cannot freeze") && strstr(err.msg, "fuseblk"),
            "the message names it"))
        diag("  message: %s", f ? "(none)" : err.msg);
    else
        diag("%s", err.msg);
    ok(writable_within(T.nmnt, 5), "it is still writable");
    free(m);
}

int main(void)
{
    T.main_pid = getpid();
    atexit(cleanup);
    struct sigaction sa = {.sa_handler = on_alarm};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarm(GUARD_S);

    setup();
    plan(31);
    test_find();
    struct freeze_mount m = the_mount();
    test_freeze(&m);
    test_bound(&m);
    test_agent_killed(&m);
    test_refusal();
    test_stacked();
    cleanup();
    if (!ok(!T.mounted && !*T.loop, "cleaned up: unmounted and detached"))
        diag("  left: %s %s", T.mounted ? T.mnt : "", T.loop);
    return exit_status();
}
