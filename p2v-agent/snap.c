/* snap.c: LVM snapshots for a live capture's cutover (see snap.h).
 *
 * The volumes' layout comes from device-mapper (`dmsetup table`: linear segments onto the
 * disk or its partitions), the metadata areas from the physical volume's label (the LVM2
 * on-disk label: "LABELONE" in one of the first four sectors, then the pv_header's lists
 * of data and metadata areas), and the snapshots are made and removed with lvcreate and
 * lvremove, so that LVM's own metadata stays LVM's business.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "freeze.h"
#include "snap.h"

#define SNAP_MDA_MAX 8
#define SNAP_MDA_BYTES_MAX (64ull << 20) /* saved metadata, all volumes */
#define SNAP_OUT_MAX 8192

/* ------------------------------------------------------------------ names */

int snap_split_dm_name(const char *dm, char *vg, size_t vglen, char *lv, size_t lvlen)
{
    /* the separator is the first '-' that is not part of a "--" pair */
    size_t i = 0, o = 0;
    for (; dm[i]; i++) {
        if (dm[i] == '-') {
            if (dm[i + 1] == '-') {
                if (o + 1 >= vglen)
                    return -1;
                vg[o++] = '-';
                i++;
                continue;
            }
            break;
        }
        if (o + 1 >= vglen)
            return -1;
        vg[o++] = dm[i];
    }
    vg[o] = 0;
    if (dm[i] != '-' || o == 0)
        return -1;
    o = 0;
    for (i++; dm[i]; i++) {
        if (dm[i] == '-') {
            if (dm[i + 1] != '-')
                return -1; /* a third part: a -cow, -real, -tpool ... device */
            i++;
        }
        if (o + 1 >= lvlen)
            return -1;
        lv[o++] = dm[i];
    }
    lv[o] = 0;
    return o ? 0 : -1;
}

static size_t dm_escape(const char *s, char *out, size_t len, size_t o)
{
    for (; *s && o + 2 < len; s++) {
        out[o++] = *s;
        if (*s == '-')
            out[o++] = '-';
    }
    out[o] = 0;
    return o;
}

void snap_dm_name(const char *vg, const char *lv, char *out, size_t len)
{
    if (!len)
        return;
    out[0] = 0;
    size_t o = dm_escape(vg, out, len, 0);
    if (o + 2 < len) {
        out[o++] = '-';
        out[o] = 0;
    }
    dm_escape(lv, out, len, o);
}

bool snap_is_lv(const char *sysroot, dev_t dev, char *vg, size_t vglen, char *lv,
                size_t lvlen)
{
    char path[512], uuid[256], name[256];
    snprintf(path, sizeof path, "%s/dev/block/%u:%u/dm/uuid", sysroot, major(dev), minor(dev));
    if (!freeze_sys_read(path, uuid, sizeof uuid))
        return false;
    /* "LVM-" + the volume group's uuid + the volume's (32 + 32): a plain volume; a suffix
     * (-real, -cow, -pool, -tpool, -tdata...) is one of LVM's internal devices */
    if (strncmp(uuid, "LVM-", 4) != 0 || strlen(uuid) != 4 + 64)
        return false;
    snprintf(path, sizeof path, "%s/dev/block/%u:%u/dm/name", sysroot, major(dev), minor(dev));
    if (!freeze_sys_read(path, name, sizeof name))
        return false;
    return snap_split_dm_name(name, vg, vglen, lv, lvlen) == 0;
}

/* ------------------------------------------------------------------ tables */

int snap_parse_table(const char *text, struct snap_seg *seg, size_t max, size_t *n,
                     struct p2v_err *err)
{
    *n = 0;
    for (const char *l = text; *l;) {
        const char *e = strchr(l, '\n');
        size_t ll = e ? (size_t)(e - l) : strlen(l);
        char line[512];
        if (ll >= sizeof line)
            return p2v_err_set(err, EINVAL, "device-mapper table line too long");
        memcpy(line, l, ll);
        line[ll] = 0;
        l += ll + (e ? 1 : 0);
        if (!line[strspn(line, " \t")])
            continue;
        unsigned long long start, len, off;
        unsigned maj, min;
        char target[32];
        int used = 0;
        if (sscanf(line, "%llu %llu %31s%n", &start, &len, target, &used) != 3)
            return p2v_err_set(err, EINVAL, "malformed device-mapper table line '%s'", line);
        if (strcmp(target, "linear") != 0)
            return p2v_err_set(err, ENOTSUP,
                               "a segment is of type '%s' (only linear volumes are "
                               "snapshotted here)",
                               target);
        char extra;
        if (sscanf(line + used, " %u:%u %llu %c", &maj, &min, &off, &extra) != 3)
            return p2v_err_set(err, EINVAL, "malformed linear segment '%s'", line);
        if (*n == max)
            return p2v_err_set(err, E2BIG, "more than %zu segments", max);
        if (len == 0 || start > UINT64_MAX / 512 || len > UINT64_MAX / 512 - start ||
            off > UINT64_MAX / 512 - len)
            return p2v_err_set(err, EINVAL, "segment out of range '%s'", line);
        seg[*n] = (struct snap_seg){start * 512, len * 512, makedev(maj, min), off * 512};
        (*n)++;
    }
    return *n ? 0 : p2v_err_set(err, EINVAL, "empty device-mapper table");
}

/* ------------------------------------------------------------------ the label */

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

int snap_parse_label(const uint8_t *buf, size_t len, uint64_t pv_size, uint64_t *mda_off,
                     uint64_t *mda_len, size_t max, size_t *n, struct p2v_err *err)
{
    *n = 0;
    for (size_t sec = 0; sec < 4 && (sec + 1) * 512 <= len; sec++) {
        const uint8_t *l = buf + sec * 512;
        /* label_header: id[8] "LABELONE", sector u64, crc u32, offset u32, type[8] */
        if (memcmp(l, "LABELONE", 8) != 0)
            continue;
        if (le64(l + 8) != sec || memcmp(l + 24, "LVM2 001", 8) != 0)
            return p2v_err_set(err, EINVAL, "not an LVM2 label in sector %zu", sec);
        uint32_t hoff = le32(l + 20);
        /* pv_header: uuid[32], device size u64, then {offset u64, size u64} lists */
        if (hoff < 32 || hoff > 512 - 40)
            return p2v_err_set(err, EINVAL, "LVM2 label: pv_header at %u", hoff);
        size_t p = hoff + 40;
        unsigned list = 0; /* 0: data areas, 1: metadata areas */
        while (list < 2) {
            if (p + 16 > 512)
                return p2v_err_set(err, EINVAL, "LVM2 label: area lists run past the sector");
            uint64_t o = le64(l + p), s = le64(l + p + 8);
            p += 16;
            if (o == 0 && s == 0) {
                list++;
                continue;
            }
            if (list == 0)
                continue;
            if (s == 0 || o < 512 || o > pv_size || s > pv_size - o)
                return p2v_err_set(err, EINVAL,
                                   "LVM2 label: metadata area %llu+%llu outside the %llu-byte "
                                   "volume",
                                   (unsigned long long)o, (unsigned long long)s,
                                   (unsigned long long)pv_size);
            if (*n == max)
                return p2v_err_set(err, E2BIG, "LVM2 label: more than %zu metadata areas", max);
            mda_off[*n] = o;
            mda_len[*n] = s;
            (*n)++;
        }
        return 0;
    }
    return p2v_err_set(err, ENOENT, "no LVM2 label in the first four sectors");
}

/* ------------------------------------------------------------------ commands */

/* Run @argv (a system tool: PATH, then /usr/sbin and /sbin), stdin /dev/null, stdout into
 * @out (may be NULL), stderr into @errout. The exit status, or -1 (could not run). */
static int run(char *const argv[], char *out, size_t outlen, char *errout, size_t errlen)
{
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(pe, O_CLOEXEC) < 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(po[0]);
        close(po[1]);
        close(pe[0]);
        close(pe[1]);
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        setenv("LVM_SUPPRESS_FD_WARNINGS", "1", 1);
        execvp(argv[0], argv);
        char p[256];
        snprintf(p, sizeof p, "/usr/sbin/%s", argv[0]);
        execv(p, argv);
        snprintf(p, sizeof p, "/sbin/%s", argv[0]);
        execv(p, argv);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    /* both at once (poll): a child that fills one pipe while we wait on the other would
     * never end */
    struct pollfd pf[2] = {{.fd = po[0], .events = POLLIN}, {.fd = pe[0], .events = POLLIN}};
    char *buf[2] = {out, errout};
    size_t cap[2] = {outlen, errlen}, got[2] = {0, 0};
    char sink[512];
    while (pf[0].fd >= 0 || pf[1].fd >= 0) {
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int k = 0; k < 2; k++) {
            if (pf[k].fd < 0 || !(pf[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            bool room = buf[k] && got[k] + 1 < cap[k];
            char *dst = room ? buf[k] + got[k] : sink;
            ssize_t r = read(pf[k].fd, dst, room ? cap[k] - 1 - got[k] : sizeof sink);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                close(pf[k].fd);
                pf[k].fd = -1;
            } else if (room) {
                got[k] += (size_t)r;
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        if (pf[k].fd >= 0)
            close(pf[k].fd);
        if (buf[k] && cap[k])
            buf[k][got[k]] = 0;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* The last non-empty line of a command's stderr that is not a WARNING, for messages. */
static const char *last_error_line(char *errout)
{
    const char *best = "";
    for (char *l = strtok(errout, "\n"); l; l = strtok(NULL, "\n")) {
        l += strspn(l, " \t");
        if (*l && strncmp(l, "WARNING", 7) != 0)
            best = l;
    }
    return best;
}

static int dm_table(char *const argv[], struct snap_seg *seg, size_t max, size_t *n,
                    struct p2v_err *err)
{
    char out[SNAP_OUT_MAX], eo[1024];
    int rc = run(argv, out, sizeof out, eo, sizeof eo);
    if (rc != 0)
        return p2v_err_set(err, EIO, "dmsetup table failed (%d): %s", rc, last_error_line(eo));
    return snap_parse_table(out, seg, max, n, err);
}

/* ------------------------------------------------------------------ the snapshots */

/* Where @dev is on the captured disks: the disk's index and the byte offset of @dev's
 * start on it. -1: not on a captured disk. */
static int dev_on_disk(const struct agent *a, const dev_t *disk_dev, dev_t dev, uint64_t *base)
{
    for (size_t i = 0; i < a->ndisks; i++) {
        if (disk_dev[i] && disk_dev[i] == dev) {
            *base = 0;
            return (int)i;
        }
    }
    dev_t parent;
    char path[512], line[64];
    unsigned long long start;
    if (!freeze_partition_parent("/sys", dev, &parent))
        return -1;
    snprintf(path, sizeof path, "/sys/dev/block/%u:%u/start", major(dev), minor(dev));
    if (!freeze_sys_read(path, line, sizeof line) ||
        p2v_parse_uint(line, 0, UINT64_MAX / 512, &start) < 0)
        return -1;
    for (size_t i = 0; i < a->ndisks; i++) {
        if (disk_dev[i] && disk_dev[i] == parent) {
            *base = start * 512;
            return (int)i;
        }
    }
    return -1;
}

static int add_piece(struct snap_set *ss, uint32_t disk, struct snap_piece p,
                     struct p2v_err *err)
{
    if (ss->npc == SNAP_MAX_PIECES)
        return p2v_err_set(err, E2BIG, "more than %d mapped ranges", SNAP_MAX_PIECES);
    ss->pc[ss->npc] = p;
    ss->pc_disk[ss->npc++] = disk;
    return 0;
}

/* The device node of the device-mapper device named @name, opened O_DIRECT read-only. */
static int open_dm(const char *name, struct p2v_err *err)
{
    DIR *d = opendir("/sys/block");
    if (!d)
        return p2v_err_errno(err, "cannot list /sys/block");
    char node[300] = "";
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "dm-", 3) != 0)
            continue;
        char path[300], n[256];
        snprintf(path, sizeof path, "/sys/block/%s/dm/name", e->d_name);
        if (freeze_sys_read(path, n, sizeof n) && strcmp(n, name) == 0) {
            snprintf(node, sizeof node, "/dev/%s", e->d_name);
            break;
        }
    }
    closedir(d);
    if (!node[0])
        snprintf(node, sizeof node, "/dev/mapper/%.250s", name);
    int fd = open(node, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0 && errno == EINVAL)
        fd = open(node, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open the snapshot %s (%s)", name, node);
    return fd;
}

/* Copy [off, off + len) of @fd (O_DIRECT: 4 KiB-aligned) to the end of @memfd. */
static int save_range(int fd, uint64_t off, uint64_t len, int memfd, uint64_t *pos,
                      struct p2v_err *err)
{
    const size_t step = 1u << 20;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, step))
        return p2v_err_set(err, ENOMEM, "out of memory");
    int ret = 0;
    for (uint64_t d = 0; d < len;) {
        size_t n = (size_t)P2V_MIN((uint64_t)step, len - d);
        /* an O_DIRECT read needs whole blocks: read up, keep n */
        size_t rn = (n + 4095) & ~(size_t)4095;
        ssize_t r = p2v_pread_full(fd, buf, rn, off + d);
        if (r < (ssize_t)n) {
            ret = r < 0 ? p2v_err_errno(err, "cannot read the LVM metadata at %llu",
                                        (unsigned long long)(off + d))
                        : p2v_err_set(err, ENXIO, "short read of the LVM metadata");
            break;
        }
        if (pwrite(memfd, buf, n, (off_t)*pos) != (ssize_t)n) {
            ret = p2v_err_errno(err, "cannot keep the LVM metadata in memory");
            break;
        }
        *pos += n;
        d += n;
    }
    free(buf);
    return ret;
}

/* Sort the pieces by disk, then offset, and check that a disk's do not overlap. */
static int sort_pieces(struct snap_set *ss, struct p2v_err *err)
{
    /* insertion sort: a few dozen at most */
    for (size_t i = 1; i < ss->npc; i++) {
        struct snap_piece p = ss->pc[i];
        uint32_t d = ss->pc_disk[i];
        size_t j = i;
        while (j > 0 && (ss->pc_disk[j - 1] > d ||
                         (ss->pc_disk[j - 1] == d && ss->pc[j - 1].off > p.off))) {
            ss->pc[j] = ss->pc[j - 1];
            ss->pc_disk[j] = ss->pc_disk[j - 1];
            j--;
        }
        ss->pc[j] = p;
        ss->pc_disk[j] = d;
    }
    for (size_t i = 1; i < ss->npc; i++)
        if (ss->pc_disk[i] == ss->pc_disk[i - 1] &&
            ss->pc[i - 1].off + ss->pc[i - 1].len > ss->pc[i].off)
            return p2v_err_set(err, EINVAL,
                               "the snapshot's ranges overlap on disk %u at %llu (an LVM "
                               "layout not understood here)",
                               ss->pc_disk[i], (unsigned long long)ss->pc[i].off);
    return 0;
}

/* The reaper (see snap.h). Forked while no other thread runs (between two passes), so the
 * child may use what it likes before its exec()s. */
static int reaper_start(struct snap_set *ss, struct p2v_err *err)
{
    char names[SNAP_MAX_LV][300];
    for (size_t k = 0; k < ss->nlv; k++)
        snprintf(names[k], sizeof names[k], "%s/%s", ss->lv[k].vg, ss->lv[k].snap);
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return p2v_err_errno(err, "pipe");
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return p2v_err_errno(err, "fork");
    }
    if (pid == 0) {
        setsid();
        struct sigaction sa = {.sa_handler = SIG_IGN};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
        sigaction(SIGPIPE, &sa, NULL);
        /* keep nothing of the agent's open (its socket must close when it dies) */
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        if (dup2(p[0], 3) < 0)
            _exit(1);
        for (int fd = 4; fd < 1024; fd++)
            close(fd);
        char c;
        ssize_t r;
        do
            r = read(3, &c, 1);
        while (r < 0 && errno == EINTR);
        if (r == 1 && c == 'd')
            _exit(0);
        /* the agent is gone without removing them */
        for (size_t k = 0; k < ss->nlv; k++) {
            char *argv[] = {"lvremove", "-q", "-f", names[k], NULL};
            for (int t = 0; t < 5; t++) {
                char eo[256];
                if (run(argv, NULL, 0, eo, sizeof eo) == 0)
                    break;
                nanosleep(&(struct timespec){0, 500 * 1000 * 1000}, NULL);
            }
        }
        _exit(0);
    }
    close(p[0]);
    ss->reaper = pid;
    ss->reaper_fd = p[1];
    return 0;
}

/* Tell the reaper whether the snapshots are gone (@removed) or are its job, and reap it. */
static void reaper_end(struct snap_set *ss, bool removed)
{
    if (ss->reaper_fd >= 0) {
        if (removed) {
            ssize_t w;
            do
                w = write(ss->reaper_fd, "d", 1);
            while (w < 0 && errno == EINTR);
        }
        close(ss->reaper_fd);
        ss->reaper_fd = -1;
    }
    if (ss->reaper > 0) {
        int st;
        while (waitpid(ss->reaper, &st, 0) < 0 && errno == EINTR)
            ;
        ss->reaper = 0;
    }
}

const struct snap_piece *snap_pieces(const struct snap_set *ss, uint32_t disk, size_t *n)
{
    *n = 0;
    if (!ss)
        return NULL;
    size_t i = 0;
    while (i < ss->npc && ss->pc_disk[i] != disk)
        i++;
    size_t j = i;
    while (j < ss->npc && ss->pc_disk[j] == disk)
        j++;
    *n = j - i;
    return *n ? &ss->pc[i] : NULL;
}

int snap_take(struct agent *a, const dev_t *dev, size_t n, struct snap_set *ss,
              struct p2v_err *err)
{
    memset(ss, 0, sizeof *ss);
    ss->memfd = -1;
    ss->reaper_fd = -1;
    for (size_t k = 0; k < SNAP_MAX_LV; k++)
        ss->lv[k].fd = -1;
    if (n > SNAP_MAX_LV)
        return p2v_err_set(err, E2BIG, "more than %d volumes to snapshot", SNAP_MAX_LV);

    dev_t disk_dev[AGENT_DISKS_MAX] = {0};
    for (size_t i = 0; i < a->ndisks; i++) {
        struct stat st;
        if (fstat(a->disks[i].fd, &st) == 0 && S_ISBLK(st.st_mode))
            disk_dev[i] = st.st_rdev;
    }
    /* the physical volumes under the volumes: (disk, offset) */
    struct {
        uint32_t disk;
        uint64_t base;
        dev_t dev;
    } pv[SNAP_MAX_PIECES];
    size_t npv = 0;
    struct {
        uint32_t disk;
        uint64_t off, len, lvoff;
        size_t lv;
    } og[SNAP_MAX_PIECES];
    size_t nog = 0;

    for (size_t k = 0; k < n; k++) {
        struct snap_lv *v = &ss->lv[k];
        v->origin = dev[k];
        if (!snap_is_lv("/sys", dev[k], v->vg, sizeof v->vg, v->lv, sizeof v->lv))
            return p2v_err_set(err, EINVAL, "device %u:%u is not an LVM logical volume",
                               major(dev[k]), minor(dev[k]));
        snprintf(v->snap, sizeof v->snap, "p2v-%d-%zu", (int)getpid(), k);
        char mj[16], mn[16];
        snprintf(mj, sizeof mj, "%u", major(dev[k]));
        snprintf(mn, sizeof mn, "%u", minor(dev[k]));
        char *argv[] = {"dmsetup", "table", "-j", mj, "-m", mn, NULL};
        struct snap_seg seg[SNAP_MAX_PIECES];
        size_t nseg;
        if (dm_table(argv, seg, SNAP_MAX_PIECES, &nseg, err) < 0)
            return p2v_err_prefix(err, "%s/%s", v->vg, v->lv);
        ss->nlv = k + 1;
        for (size_t g = 0; g < nseg; g++) {
            v->size = P2V_MAX(v->size, seg[g].start + seg[g].len);
            uint64_t base;
            int di = dev_on_disk(a, disk_dev, seg[g].dev, &base);
            if (di < 0)
                continue; /* on a disk not captured */
            if (nog == SNAP_MAX_PIECES)
                return p2v_err_set(err, E2BIG, "%s/%s: too many segments", v->vg, v->lv);
            og[nog++] = (typeof(og[0])){(uint32_t)di, base + seg[g].off, seg[g].len,
                                        seg[g].start, k};
            bool seen = false;
            for (size_t x = 0; x < npv; x++)
                seen |= pv[x].dev == seg[g].dev;
            if (!seen && npv < SNAP_MAX_PIECES)
                pv[npv++] = (typeof(pv[0])){(uint32_t)di, base, seg[g].dev};
        }
    }

    /* save the metadata areas before any lvcreate writes there */
    ss->memfd = memfd_create("p2v-lvm-metadata", MFD_CLOEXEC);
    if (ss->memfd < 0)
        return p2v_err_errno(err, "memfd_create");
    uint64_t pos = 0;
    for (size_t x = 0; x < npv; x++) {
        struct agent_disk *d = &a->disks[pv[x].disk];
        uint64_t pv_size = d->info->size - pv[x].base;
        char path[512], line[64];
        snprintf(path, sizeof path, "/sys/dev/block/%u:%u/size", major(pv[x].dev),
                 minor(pv[x].dev));
        unsigned long long sectors;
        if (freeze_sys_read(path, line, sizeof line) &&
            p2v_parse_uint(line, 0, UINT64_MAX / 512, &sectors) == 0)
            pv_size = sectors * 512;
        void *buf = NULL;
        if (posix_memalign(&buf, 4096, 4096))
            return p2v_err_set(err, ENOMEM, "out of memory");
        ssize_t r = p2v_pread_full(d->fd, buf, 4096, pv[x].base);
        uint64_t mo[SNAP_MDA_MAX], ml[SNAP_MDA_MAX];
        size_t nm = 0;
        int pr = r == 4096 ? snap_parse_label(buf, 4096, pv_size, mo, ml, SNAP_MDA_MAX, &nm, err)
                           : p2v_err_set(err, EIO, "cannot read the label");
        free(buf);
        if (pr < 0)
            return p2v_err_prefix(err, "the physical volume at %llu of '%s'",
                                  (unsigned long long)pv[x].base, d->path);
        for (size_t m = 0; m < nm; m++) {
            if (pos + ml[m] > SNAP_MDA_BYTES_MAX)
                return p2v_err_set(err, E2BIG, "LVM metadata areas over %llu MiB",
                                   SNAP_MDA_BYTES_MAX >> 20);
            if ((pv[x].base + mo[m]) % 4096 || ml[m] % 512)
                return p2v_err_set(err, EINVAL, "an LVM metadata area at %llu+%llu is not "
                                   "aligned", (unsigned long long)mo[m],
                                   (unsigned long long)ml[m]);
            uint64_t at = pos;
            if (save_range(d->fd, pv[x].base + mo[m], ml[m], ss->memfd, &pos, err) < 0 ||
                add_piece(ss, pv[x].disk,
                          (struct snap_piece){pv[x].base + mo[m], ml[m], ss->memfd, at, 0},
                          err) < 0)
                return -1;
        }
    }

    /* the snapshots: each lvcreate suspends its volume (and freezes its file system) for
     * the instant of the snapshot; the reaper first, so that none outlives the agent */
    if (reaper_start(ss, err) < 0)
        return p2v_err_prefix(err, "cannot start the snapshots' reaper");
    for (size_t k = 0; k < ss->nlv; k++) {
        struct snap_lv *v = &ss->lv[k];
        char origin[300], eo[2048];
        snprintf(origin, sizeof origin, "%s/%s", v->vg, v->lv);
        char *argv1[] = {"lvcreate", "-q", "-s", "-n", v->snap, "-l", "100%ORIGIN", origin, NULL};
        char *argv2[] = {"lvcreate", "-q", "-s", "-n", v->snap, "-l", "100%FREE", origin, NULL};
        double t0 = p2v_now();
        if (k == 0)
            ss->taken_at = p2v_wall_now();
        int rc = run(argv1, NULL, 0, eo, sizeof eo);
        if (rc != 0 && strstr(eo, "nsufficient"))
            rc = run(argv2, NULL, 0, eo, sizeof eo);
        v->create_s = p2v_now() - t0;
        if (rc != 0) {
            p2v_err_set(err, EIO, "lvcreate -s of %s failed (%d): %s", origin, rc,
                        last_error_line(eo));
            goto fail;
        }
        v->made = true;
        ss->window = P2V_MAX(ss->window, v->create_s);
        char name[300];
        snap_dm_name(v->vg, v->snap, name, sizeof name);
        if ((v->fd = open_dm(name, err)) < 0)
            goto fail;
        /* the copy-on-write extents: free space in the saved metadata, not read */
        char cow[320];
        snprintf(cow, sizeof cow, "%.299s-cow", name);
        char *argv3[] = {"dmsetup", "table", cow, NULL};
        struct snap_seg seg[SNAP_MAX_PIECES];
        size_t nseg;
        if (dm_table(argv3, seg, SNAP_MAX_PIECES, &nseg, err) < 0) {
            p2v_err_prefix(err, "the snapshot's %s", cow);
            goto fail;
        }
        for (size_t g = 0; g < nseg; g++) {
            uint64_t base;
            int di = dev_on_disk(a, disk_dev, seg[g].dev, &base);
            if (di >= 0 && add_piece(ss, (uint32_t)di,
                                     (struct snap_piece){base + seg[g].off, seg[g].len, -1, 0, 0},
                                     err) < 0)
                goto fail;
        }
    }
    for (size_t g = 0; g < nog; g++) {
        const struct snap_lv *v = &ss->lv[og[g].lv];
        if (add_piece(ss, og[g].disk,
                      (struct snap_piece){og[g].off, og[g].len, v->fd, og[g].lvoff, v->size},
                      err) < 0)
            goto fail;
    }
    for (size_t i = 0; i < ss->npc; i++)
        if (ss->pc[i].fd == ss->memfd)
            ss->pc[i].src_size = pos;
    if (sort_pieces(ss, err) < 0)
        goto fail;
    return 0;
fail:;
    struct p2v_err e2 = {0};
    snap_drop(ss, &e2);
    if (e2.msg[0])
        p2v_warn("%s", e2.msg);
    return -1;
}

int snap_drop(struct snap_set *ss, struct p2v_err *err)
{
    int ret = 0;
    bool removed = true;
    for (size_t k = 0; k < ss->nlv; k++) {
        struct snap_lv *v = &ss->lv[k];
        if (v->fd >= 0)
            close(v->fd);
        v->fd = -1;
        if (!v->made)
            continue;
        char name[300], eo[2048] = "";
        snprintf(name, sizeof name, "%s/%s", v->vg, v->snap);
        char *argv[] = {"lvremove", "-q", "-f", name, NULL};
        int rc = -1;
        /* right after the last close the device can still be busy for a moment */
        for (int t = 0; t < 5 && rc != 0; t++) {
            if (t)
                nanosleep(&(struct timespec){0, 300 * 1000 * 1000}, NULL);
            rc = run(argv, NULL, 0, eo, sizeof eo);
        }
        if (rc != 0) {
            ret = p2v_err_set(err, EIO, "cannot remove the snapshot %s (%s): remove it with "
                              "lvremove %s", name, last_error_line(eo), name);
            removed = false;
            continue;
        }
        v->made = false;
    }
    /* what could not be removed here, the reaper tries again */
    reaper_end(ss, removed);
    if (ss->memfd >= 0)
        close(ss->memfd);
    ss->memfd = -1;
    return ret;
}
