/* snap.c: LVM snapshots for a live capture's cutover (p2v-agent --live --snapshot).
 *
 * A file system on a (thick, linear) LVM logical volume of the captured disks need not stay
 * frozen for the final pass: lvcreate -s suspends the volume for the instant of the
 * snapshot (device-mapper freezes the file system for it), and the final pass then reads
 * the volume's extents from the snapshot while the machine runs on. The rest of the disk
 * is read as usual, except for two kinds of range the snapshot itself changes on the disk:
 *   - the metadata areas of the physical volumes under the snapshotted volumes (lvcreate
 *     writes the snapshot into the volume group's metadata): they are saved, read from the
 *     disk before the first lvcreate, and sent as saved, so the image's metadata is the
 *     volume group as it was, without the snapshot;
 *   - the snapshot's copy-on-write extents (free space in the saved metadata): not read;
 *     the server keeps what the earlier passes sent there.
 * The snapshots are removed (lvremove) when the final pass ends, on success or error, and
 * if the agent dies first (SIGKILL included) by a reaper process forked before the first
 * lvcreate: in its own session, deaf to SIGINT/SIGTERM/SIGHUP, it waits on a pipe and
 * removes them when the pipe closes without the agent having said they are gone.
 * Nothing here writes to the captured disks except the lvcreate and lvremove commands, in
 * the volume group's free space and metadata, as any LVM snapshot does.
 */
#ifndef P2V_AGENT_SNAP_H
#define P2V_AGENT_SNAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "p2v-common.h"

#define SNAP_MAX_LV 8      /* snapshots in one cutover */
#define SNAP_MAX_PIECES 64 /* mapped ranges per disk */

/* A range of a captured disk read from elsewhere in the final pass: [off, off + len) of
 * the disk is read from @fd at src + (x - off); fd -1: not read at all. */
struct snap_piece {
    uint64_t off, len;
    int fd;
    uint64_t src;
    uint64_t src_size; /* the size of what @fd reads (for the pipeline's checks) */
};

struct snap_lv {
    char vg[128], lv[128];
    char snap[128];     /* the snapshot's LV name (p2v-PID-K) */
    dev_t origin;       /* the volume's device */
    uint64_t size;      /* bytes */
    int fd;             /* the snapshot, read-only (O_DIRECT), -1 before it is made */
    bool made;
    double create_s;    /* how long lvcreate took (the volume's freeze is inside it) */
};

struct snap_set {
    struct snap_lv lv[SNAP_MAX_LV];
    size_t nlv;
    struct snap_piece pc[SNAP_MAX_PIECES]; /* all disks', by disk and offset */
    uint32_t pc_disk[SNAP_MAX_PIECES];
    size_t npc;
    int memfd;          /* the saved metadata areas */
    double window;      /* the longest lvcreate, seconds */
    double taken_at;    /* wall clock when the first lvcreate started */
    pid_t reaper;       /* removes the snapshots if the agent dies first, or 0 */
    int reaper_fd;      /* its pipe: 'd' = removed, nothing to do; EOF = do it */
};

/* True when @dev is an LVM logical volume that can be snapshotted: device-mapper with an
 * LVM uuid of a plain volume (not a snapshot's -cow/-real, a pool, ...); @vg and @lv get
 * its names (from the device-mapper name). @sysroot: "/sys", or a test's tree. */
bool snap_is_lv(const char *sysroot, dev_t dev, char *vg, size_t vglen, char *lv,
                size_t lvlen);

/* Split a device-mapper name "VG-LV" (a '-' inside a name is doubled) into its two names.
 * 0 / -1 (not such a name). */
int snap_split_dm_name(const char *dm, char *vg, size_t vglen, char *lv, size_t lvlen);

/* The device-mapper name of VG/LV. */
void snap_dm_name(const char *vg, const char *lv, char *out, size_t len);

/* One segment of a device-mapper table: @len bytes at @start of the device map to @dev
 * at @off (linear segments only). */
struct snap_seg {
    uint64_t start, len;
    dev_t dev;
    uint64_t off;
};
/* Parse `dmsetup table` output of one device (lines "START LEN TARGET ARGS", sectors).
 * -1 with @err when a segment is not linear (a mirror, raid, thin, crypt volume: not
 * snapshotted here) or a line is malformed. */
int snap_parse_table(const char *text, struct snap_seg *seg, size_t max, size_t *n,
                     struct p2v_err *err);

/* The metadata areas of an LVM physical volume from its first 2048 bytes (the label is
 * in one of the first four sectors): byte offsets and sizes, relative to the volume's
 * start, checked against @pv_size. 0 / -1 (no valid LVM2 label). */
int snap_parse_label(const uint8_t *buf, size_t len, uint64_t pv_size, uint64_t *mda_off,
                     uint64_t *mda_len, size_t max, size_t *n, struct p2v_err *err);

struct agent;

/* Take a snapshot of each of the @n volumes @dev (snap_is_lv() true), on the disks of @a:
 * save the metadata areas, lvcreate, open the snapshots, and fill @ss's pieces. On failure
 * whatever was made is removed, and @err says why (lvcreate's own message: no free space
 * in the volume group, ...). */
int snap_take(struct agent *a, const dev_t *dev, size_t n, struct snap_set *ss,
              struct p2v_err *err);

/* The pieces of disk @disk in @ss, sorted and disjoint: *n of them (NULL @ss: none). */
const struct snap_piece *snap_pieces(const struct snap_set *ss, uint32_t disk, size_t *n);

/* Remove the snapshots (lvremove) and close what snap_take() opened. 0, or -1 with @err
 * naming a snapshot that could not be removed (it is left for the operator). */
int snap_drop(struct snap_set *ss, struct p2v_err *err);

#endif /* P2V_AGENT_SNAP_H */
