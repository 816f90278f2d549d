/* freeze.c: the file systems mounted from the disks being captured, and freezing them for
 * a live capture's cutover with a watchdog that always thaws.
 *
 * The freeze is done by a watchdog process forked by freeze_begin(): it leaves the agent's
 * session (setsid) and ignores SIGINT/SIGTERM/SIGHUP, so a signal to the agent or to its
 * process group does not reach it. It freezes the mounts (FIFREEZE on each mount point,
 * in order) when told, reports each result, and then thaws them all (FITHAW) as soon as:
 *   - the agent asks (freeze_end()),
 *   - the agent's end of the pipe closes (the agent exited, crashed or was SIGKILLed), or
 *   - @max_s seconds have passed since the first freeze (a hung agent).
 * The agent never calls FIFREEZE or FITHAW itself. Nothing here writes to a disk.
 */
#ifndef P2V_AGENT_FREEZE_H
#define P2V_AGENT_FREEZE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "p2v-common.h"

struct freeze_mount {
    char target[4096];   /* the mount point (unescaped from mountinfo) */
    char source[4096];   /* the mount source as mountinfo names it ("/dev/loop3") */
    char fstype[32];     /* "ext4", "fuseblk", ... */
    dev_t dev;           /* the device the file system lives on */
    bool rw;             /* mounted read-write (per-mount and super options) */
};

/* The file systems mounted from @disk_path and from its partitions: mountinfo entries
 * whose device is the disk's block device or one of its partitions (through
 * /sys/dev/block/MAJ:MIN), or a device stacked on them (device-mapper: LVM logical
 * volumes, dm-crypt; md), followed down through sysfs "slaves"; and, when @disk_path is
 * an image file, loop devices whose backing file is that file (any offset), and their
 * partitions. A file system mounted at
 * several places (bind mounts) appears once, at its first mount point. *out is a heap
 * array (free()) of *n entries, NULL when none. 0 / -1 (mountinfo unreadable). */
int freeze_find_mounts(const char *disk_path, struct freeze_mount **out, size_t *n,
                       struct p2v_err *err);

/* The matching rule for a block device @dev and a disk @disk, reading sysfs under
 * @sysroot ("/sys"; a test gives a tree of its own). */
bool freeze_dev_on_disk(const char *sysroot, dev_t dev, dev_t disk);

/* Read a small sysfs file into @out, without its trailing newline. */
bool freeze_sys_read(const char *path, char *out, size_t len);

/* The whole disk a partition @dev belongs to, through @sysroot/dev/block/MAJ:MIN: a
 * partition has a "partition" file, and its sysfs directory sits inside its disk's, whose
 * "dev" file names the disk. False when @dev is not a partition (or sysfs does not say). */
bool freeze_partition_parent(const char *sysroot, dev_t dev, dev_t *parent);

struct freeze_set;

/* Fork the watchdog and freeze @n mounts through it. On success returns the set, with
 * every mount frozen. On failure (a mount point that cannot be opened, FIFREEZE refused:
 * EOPNOTSUPP for a file system the kernel cannot freeze, e.g. FUSE) whatever was frozen is
 * thawed, the watchdog is reaped, and NULL is returned with @err naming the mount point,
 * its type and the reason ("the kernel cannot freeze fuseblk at /mnt/x: Operation not
 * supported"). @max_s: the watchdog's bound (seconds, > 0). */
struct freeze_set *freeze_begin(const struct freeze_mount *m, size_t n, double max_s,
                                struct p2v_err *err);

/* Thaw through the watchdog, reap it and free @f. *window_s gets the time the mounts were
 * frozen (first freeze to last thaw, as the watchdog measured it). 0 when every mount was
 * frozen from freeze_begin() until now; -1 when the watchdog had thawed on its own before
 * (its bound was reached: the capture taken under the freeze is not consistent; @err says
 * so) or a thaw failed (@err names the mount). NULL @f: 0. */
int freeze_end(struct freeze_set *f, double *window_s, struct p2v_err *err);

/* True while the watchdog still holds the freeze (it has not thawed on its own). */
bool freeze_holding(struct freeze_set *f);

#endif /* P2V_AGENT_FREEZE_H */
