/* discover.c: what a source disk is. Size and logical sector size (ioctls for block
 * devices, fstat for image files), model and serial (sysfs, best effort), the partition
 * table (libparted), each partition's type code (libblkid's partition list: libparted
 * 3.5 does not expose MBR type bytes or GPT type GUIDs) and file system, label and UUID
 * (libblkid probing at the partition's offset). Also the list of the machine's disks
 * (/sys/block) and discovery as JSON.
 *
 * Nothing here opens a source for writing. libparted's own Linux device code opens a
 * disk O_RDWR and each of its partition nodes O_WRONLY (to flush their buffer caches,
 * which on a live system makes udev re-read them): so libparted reads the disk through a
 * device back end of ours, installed only while we call it, whose reads are pread()s on
 * our read-only descriptor and whose writes fail.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <blkid.h>
#include <parted/parted.h>

#include "imager-int.h"

/* ------------------------------------------------------------------ small helpers */

/* Copy what fits (labels and names longer than our fields are cut). */
static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strnlen(src, cap - 1) : 0;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Keep printable ASCII, trim surrounding blanks: model and serial strings from firmware. */
static void clean_str(char *s)
{
    size_t n = 0;
    for (size_t i = 0; s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f)
            s[n++] = (char)c;
    }
    s[n] = '\0';
    while (n && s[n - 1] == ' ')
        s[--n] = '\0';
    size_t lead = 0;
    while (s[lead] == ' ')
        lead++;
    memmove(s, s + lead, n - lead + 1);
}

/* Read a small sysfs attribute; 0 / -1. */
static int sysfs_read(const char *dir, const char *attr, char *out, size_t cap)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, attr) >= (int)sizeof path)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, out, cap - 1);
    close(fd);
    if (n <= 0)
        return -1;
    out[n] = '\0';
    return 0;
}

/* SCSI VPD page 0x80 (unit serial number): a 4-byte header, then the serial (SPC-4
 * 7.8.19). */
static int sysfs_vpd_serial(const char *dir, char *out, size_t cap)
{
    char path[PATH_MAX];
    uint8_t page[260];
    if (snprintf(path, sizeof path, "%s/device/vpd_pg80", dir) >= (int)sizeof path)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, page, sizeof page);
    close(fd);
    if (n < 4 || page[1] != 0x80)
        return -1;
    size_t len = p2v_get_u16be(page + 2);
    if (len > (size_t)n - 4)
        len = (size_t)n - 4;
    if (len >= cap)
        len = cap - 1;
    memcpy(out, page + 4, len);
    out[len] = '\0';
    return 0;
}

static void sysfs_identity(dev_t rdev, struct imager_disk *d)
{
    char link[64], dir[PATH_MAX], buf[256];
    snprintf(link, sizeof link, "/sys/dev/block/%u:%u", major(rdev), minor(rdev));
    if (!realpath(link, dir))
        return;
    const char *base = strrchr(dir, '/');
    copy_str(d->name, sizeof d->name, base ? base + 1 : dir);
    if (sysfs_read(dir, "device/model", buf, sizeof buf) == 0) {
        clean_str(buf);
        copy_str(d->model, sizeof d->model, buf);
    }
    /* serial: SATA/NVMe/MMC through device/serial, virtio-blk through serial, SCSI
     * through its VPD page */
    if (sysfs_read(dir, "device/serial", buf, sizeof buf) == 0 ||
        sysfs_read(dir, "serial", buf, sizeof buf) == 0 ||
        sysfs_vpd_serial(dir, buf, sizeof buf) == 0) {
        clean_str(buf);
        copy_str(d->serial, sizeof d->serial, buf);
    }
}

/* ------------------------------------------------------------------ libparted back end */

/* libparted's PedArchitecture (its architecture.h is not installed): the disk and device
 * operation tables. Its layout has been these two pointers since parted 1.x. */
struct ped_arch {
    const void *disk_ops;
    const PedDeviceArchOps *dev_ops;
};
extern const struct ped_arch *ped_architecture;

struct pdev {
    int fd;
    uint64_t size;
    uint32_t sector;
};

static pthread_mutex_t pdev_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pdev *pdev_current; /* the disk being read, under pdev_lock */

static PedDevice *pdev_new(const char *path)
{
    struct pdev *ctx = pdev_current;
    PedDevice *dev = calloc(1, sizeof *dev);
    if (!ctx || !dev || !(dev->path = strdup(path)) ||
        !(dev->model = strdup("p2vkit read-only source"))) {
        if (dev)
            free(dev->path);
        free(dev);
        return NULL;
    }
    dev->type = PED_DEVICE_FILE;
    dev->sector_size = dev->phys_sector_size = ctx->sector;
    dev->length = (PedSector)(ctx->size / ctx->sector);
    dev->read_only = 1;
    /* the conventional LBA geometry: only CHS fields of old MBRs refer to it */
    dev->bios_geom.heads = dev->hw_geom.heads = 255;
    dev->bios_geom.sectors = dev->hw_geom.sectors = 63;
    dev->bios_geom.cylinders = dev->hw_geom.cylinders = (int)P2V_MIN(
        (uint64_t)dev->length / (255 * 63), (uint64_t)INT_MAX);
    dev->arch_specific = ctx;
    return dev;
}

static void pdev_destroy(PedDevice *dev)
{
    free(dev->path);
    free(dev->model);
    free(dev);
}

static int pdev_is_busy(PedDevice *dev)
{
    (void)dev;
    return 0;
}

static int pdev_nop(PedDevice *dev)
{
    (void)dev;
    return 1;
}

static int pdev_read(const PedDevice *dev, void *buf, PedSector start, PedSector count)
{
    const struct pdev *ctx = dev->arch_specific;
    uint64_t off, len;
    if (start < 0 || count < 0 || P2V_MUL_OVERFLOW((uint64_t)start, ctx->sector, &off) ||
        P2V_MUL_OVERFLOW((uint64_t)count, ctx->sector, &len) ||
        !p2v_range_ok(off, len, ctx->size) || len > SIZE_MAX)
        return 0;
    return p2v_pread_full(ctx->fd, buf, (size_t)len, off) == (ssize_t)len;
}

static int pdev_write(PedDevice *dev, const void *buf, PedSector start, PedSector count)
{
    (void)dev, (void)buf, (void)start, (void)count;
    return 0; /* a source is never written */
}

static PedSector pdev_check(PedDevice *dev, void *buf, PedSector start, PedSector count)
{
    (void)dev, (void)buf, (void)start;
    return count;
}

static void pdev_probe_all(void) {}

static const PedDeviceArchOps pdev_ops = {
    ._new = pdev_new,
    .destroy = pdev_destroy,
    .is_busy = pdev_is_busy,
    .open = pdev_nop,
    .refresh_open = pdev_nop,
    .close = pdev_nop,
    .refresh_close = pdev_nop,
    .read = pdev_read,
    .write = pdev_write,
    .sync = pdev_nop,
    .sync_fast = pdev_nop,
    .check = pdev_check,
    .probe_all = pdev_probe_all,
};

/* libparted reports and asks through exceptions, which it would print: stay silent, and
 * never "fix" what can be ignored (nothing is written anyway). */
static PedExceptionOption pdev_exception(PedException *ex)
{
    static const PedExceptionOption prefer[] = {PED_EXCEPTION_IGNORE, PED_EXCEPTION_OK,
                                                PED_EXCEPTION_NO, PED_EXCEPTION_CANCEL};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(prefer); i++)
        if (ex->options & prefer[i])
            return prefer[i];
    return PED_EXCEPTION_UNHANDLED;
}

static int part_cmp(const void *a, const void *b)
{
    const struct imager_part *x = a, *y = b;
    return (x->number > y->number) - (x->number < y->number);
}

/* The partition table through libparted; d->pttype stays "" when there is none. */
static int read_table(int fd, struct imager_disk *d, struct p2v_err *err)
{
    int ret = -1;
    struct pdev ctx = {.fd = fd, .size = d->size, .sector = d->sector_size};
    struct ped_arch arch;
    const struct ped_arch *saved_arch;
    PedExceptionHandler *saved_handler;
    PedDevice *dev = NULL;
    PedDisk *disk = NULL;

    if (d->size / d->sector_size < 2)
        return 0; /* too small for any table */
    pthread_mutex_lock(&pdev_lock);
    saved_arch = ped_architecture;
    arch.disk_ops = saved_arch->disk_ops;
    arch.dev_ops = &pdev_ops;
    ped_architecture = &arch;
    pdev_current = &ctx;
    saved_handler = ped_exception_get_handler();
    ped_exception_set_handler(pdev_exception);

    /* a made-up path: libparted's device cache is keyed by path, and this one cannot
     * collide with a real device another caller might hold */
    char key[64];
    snprintf(key, sizeof key, "/nonexistent/p2vkit-source-%p", (void *)&ctx);
    if (!(dev = ped_device_get(key))) {
        p2v_err_set(err, ENOMEM, "libparted cannot represent '%s'", d->path);
        goto out;
    }
    PedDiskType *type = ped_disk_probe(dev);
    if (!type || strcmp(type->name, "loop") == 0) {
        ret = 0; /* no table ("loop": libparted's name for a file system on the disk) */
        goto out;
    }
    copy_str(d->pttype, sizeof d->pttype,
             strcmp(type->name, "msdos") == 0 ? "dos" : type->name);
    if (!(disk = ped_disk_new(dev))) {
        /* A table libparted recognizes but cannot read: no partitions, so that planning
         * reads the whole disk (a correct copy, if not a small one) rather than refusing
         * the machine. */
        ret = 0;
        goto out;
    }
    bool names = ped_disk_type_check_feature(disk->type, PED_DISK_TYPE_PARTITION_NAME);
    for (PedPartition *p = ped_disk_next_partition(disk, NULL); p;
         p = ped_disk_next_partition(disk, p)) {
        if (p->num < 1 || (p->type & (PED_PARTITION_FREESPACE | PED_PARTITION_METADATA)))
            continue;
        if (d->nparts >= IMAGER_PARTS_MAX) {
            p2v_err_set(err, EOVERFLOW, "'%s' has more than %d partitions", d->path,
                        IMAGER_PARTS_MAX);
            goto out;
        }
        struct imager_part *ip = &d->parts[d->nparts++];
        ip->number = p->num;
        ip->start = (uint64_t)p->geom.start * d->sector_size;
        ip->size = (uint64_t)p->geom.length * d->sector_size;
        ip->extended = (p->type & PED_PARTITION_EXTENDED) != 0;
        if (names)
            copy_str(ip->part_name, sizeof ip->part_name, ped_partition_get_name(p));
    }
    qsort(d->parts, (size_t)d->nparts, sizeof d->parts[0], part_cmp);
    ret = 0;
out:
    if (disk)
        ped_disk_destroy(disk);
    if (dev)
        ped_device_destroy(dev);
    ped_exception_set_handler(saved_handler);
    pdev_current = NULL;
    ped_architecture = saved_arch;
    pthread_mutex_unlock(&pdev_lock);
    return ret;
}

/* libparted's constructor (ped_disk_gpt_init, parted 3.5) runs `dmidecode -s
 * system-manufacturer` and, when that prints nothing (no DMI table: containers, some
 * VMs), scans getline()'s buffer, which was never written. Sanitizer builds would stop
 * there, before main(), in every program that links libparted: suppress that one report.
 * Any other program linking libparted without discover.o needs the same. */
#if defined(__SANITIZE_ADDRESS__)
#define IMAGER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IMAGER_ASAN 1
#endif
#endif
#ifdef IMAGER_ASAN
const char *__asan_default_suppressions(void);
const char *__asan_default_suppressions(void)
{
    return "interceptor_via_fun:ped_disk_gpt_init\n";
}
#endif

/* ------------------------------------------------------------------ libblkid */

/* The type codes libparted keeps to itself: MBR type byte, GPT type GUID. */
static void read_type_codes(int fd, struct imager_disk *d)
{
    blkid_probe pr = blkid_new_probe();
    if (!pr)
        return;
    if (blkid_probe_set_device(pr, fd, 0, (blkid_loff_t)d->size) < 0)
        goto out;
    blkid_probe_enable_superblocks(pr, 0);
    blkid_probe_enable_partitions(pr, 1);
    blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
    blkid_partlist ls = blkid_probe_get_partitions(pr);
    if (!ls)
        goto out;
    int n = blkid_partlist_numof_partitions(ls);
    for (int i = 0; i < n; i++) {
        blkid_partition bp = blkid_partlist_get_partition(ls, i);
        if (!bp)
            continue;
        int no = blkid_partition_get_partno(bp);
        uint64_t start = (uint64_t)blkid_partition_get_start(bp) * 512; /* 512-byte units */
        for (int k = 0; k < d->nparts; k++) {
            struct imager_part *ip = &d->parts[k];
            if (ip->number != no || ip->start != start)
                continue;
            const char *ts = blkid_partition_get_type_string(bp);
            if (ts && ts[0])
                copy_str(ip->part_type, sizeof ip->part_type, ts);
            else
                snprintf(ip->part_type, sizeof ip->part_type, "0x%02x",
                         (unsigned)blkid_partition_get_type(bp) & 0xff);
            if (!ip->part_name[0])
                copy_str(ip->part_name, sizeof ip->part_name, blkid_partition_get_name(bp));
        }
    }
out:
    blkid_free_probe(pr);
}

/* The file system in [off, off + size): type, label, uuid ("" when none or ambiguous). */
static void probe_fs(int fd, uint64_t off, uint64_t size, char *type, size_t type_cap,
                     char *label, size_t label_cap, char *uuid, size_t uuid_cap)
{
    const char *v;
    blkid_probe pr = blkid_new_probe();
    if (!pr)
        return;
    if (size == 0 || off > INT64_MAX || size > INT64_MAX ||
        blkid_probe_set_device(pr, fd, (blkid_loff_t)off, (blkid_loff_t)size) < 0)
        goto out;
    blkid_probe_enable_partitions(pr, 0);
    blkid_probe_enable_superblocks(pr, 1);
    blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL |
                                              BLKID_SUBLKS_UUID);
    if (blkid_do_safeprobe(pr) != 0)
        goto out; /* nothing, ambiguous or an error: unknown content */
    if (blkid_probe_lookup_value(pr, "TYPE", &v, NULL) == 0)
        copy_str(type, type_cap, v);
    if (label && blkid_probe_lookup_value(pr, "LABEL", &v, NULL) == 0)
        copy_str(label, label_cap, v);
    if (uuid && blkid_probe_lookup_value(pr, "UUID", &v, NULL) == 0)
        copy_str(uuid, uuid_cap, v);
out:
    blkid_free_probe(pr);
}

/* ------------------------------------------------------------------ discovery */

int imager_disk_discover(const char *path, struct imager_disk *out, struct p2v_err *err)
{
    int ret = -1;
    int fd = -1;
    struct stat st;
    struct imager_disk *d = calloc(1, sizeof *d);

    if (!d)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (strlen(path) >= sizeof d->path) {
        p2v_err_set(err, ENAMETOOLONG, "path '%.64s...' is too long", path);
        goto out;
    }
    copy_str(d->path, sizeof d->path, path);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        p2v_err_errno(err, "cannot open '%s'", path);
        goto out;
    }
    if (fstat(fd, &st) < 0) {
        p2v_err_errno(err, "cannot stat '%s'", path);
        goto out;
    }
    if (S_ISBLK(st.st_mode)) {
        int ssz = 0;
        d->is_block_device = true;
        if (ioctl(fd, BLKGETSIZE64, &d->size) < 0) {
            p2v_err_errno(err, "cannot read the size of '%s' (BLKGETSIZE64)", path);
            goto out;
        }
        if (ioctl(fd, BLKSSZGET, &ssz) < 0) {
            p2v_err_errno(err, "cannot read the sector size of '%s' (BLKSSZGET)", path);
            goto out;
        }
        if (ssz < 512 || ssz > 65536 || !p2v_is_pow2((uint64_t)ssz)) {
            p2v_err_set(err, EINVAL, "'%s' reports a sector size of %d bytes", path, ssz);
            goto out;
        }
        d->sector_size = (uint32_t)ssz;
        sysfs_identity(st.st_rdev, d);
    } else if (S_ISREG(st.st_mode)) {
        d->size = (uint64_t)st.st_size;
        d->sector_size = 512;
    } else {
        p2v_err_set(err, EINVAL, "'%s' is neither a block device nor an image file", path);
        goto out;
    }
    if (!d->name[0]) {
        const char *base = strrchr(path, '/');
        copy_str(d->name, sizeof d->name, base && base[1] ? base + 1 : path);
    }

    if (read_table(fd, d, err) < 0)
        goto out;
    if (d->pttype[0]) {
        read_type_codes(fd, d);
        for (int i = 0; i < d->nparts; i++) {
            struct imager_part *ip = &d->parts[i];
            if (ip->extended || ip->start >= d->size)
                continue;
            uint64_t size = P2V_MIN(ip->size, d->size - ip->start);
            probe_fs(fd, ip->start, size, ip->fstype, sizeof ip->fstype, ip->label,
                     sizeof ip->label, ip->uuid, sizeof ip->uuid);
        }
    } else {
        probe_fs(fd, 0, d->size, d->whole_fstype, sizeof d->whole_fstype, NULL, 0, NULL, 0);
    }
    memcpy(out, d, sizeof *d);
    ret = 0;
out:
    if (fd >= 0)
        close(fd);
    free(d);
    return ret;
}

/* ------------------------------------------------------------------ local disks */

static bool skip_block_name(const char *n)
{
    static const char *const prefixes[] = {"loop", "ram", "zram", "dm-", "md", "sr",
                                           "fd",   "nbd", "zd"};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(prefixes); i++)
        if (strncmp(n, prefixes[i], strlen(prefixes[i])) == 0)
            return true;
    /* eMMC hardware boot partitions and replay-protected blocks are not the disk */
    if (strncmp(n, "mmcblk", 6) == 0 && (strstr(n, "boot") || strstr(n, "rpmb")))
        return true;
    return false;
}

static int name_cmp(const void *a, const void *b)
{
    return strverscmp(*(char *const *)a, *(char *const *)b);
}

int imager_list_local_disks(char ***paths, struct p2v_err *err)
{
    int ret = -1;
    DIR *dir = opendir("/sys/block");
    char **list = NULL;
    size_t n = 0, cap = 0;

    if (!dir)
        return p2v_err_errno(err, "cannot list '/sys/block'");
    for (struct dirent *e; (e = readdir(dir));) {
        char dirpath[PATH_MAX], buf[64];
        if (e->d_name[0] == '.' || skip_block_name(e->d_name))
            continue;
        snprintf(dirpath, sizeof dirpath, "/sys/block/%s", e->d_name);
        if (sysfs_read(dirpath, "size", buf, sizeof buf) < 0 || strtoull(buf, NULL, 10) == 0)
            continue;
        if (n + 2 > cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **nl = realloc(list, ncap * sizeof *nl);
            if (!nl) {
                p2v_err_set(err, ENOMEM, "out of memory");
                goto out;
            }
            list = nl;
            cap = ncap;
        }
        /* sysfs writes '/' in a device's name as '!' (cciss!c0d0) */
        char *p = malloc(strlen(e->d_name) + 6);
        if (!p) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out;
        }
        sprintf(p, "/dev/%s", e->d_name);
        for (char *c = p + 5; *c; c++)
            if (*c == '!')
                *c = '/';
        list[n++] = p;
        list[n] = NULL;
    }
    if (!list && !(list = calloc(1, sizeof *list))) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    qsort(list, n, sizeof *list, name_cmp);
    *paths = list;
    list = NULL;
    ret = 0;
out:
    closedir(dir);
    imager_free_list(list);
    return ret;
}

void imager_free_list(char **list)
{
    if (!list)
        return;
    for (char **p = list; *p; p++)
        free(*p);
    free(list);
}

/* ------------------------------------------------------------------ JSON */

void imager_disk_json(const struct imager_disk *d, struct p2v_json *j)
{
    p2v_json_kv_string(j, "path", d->path);
    p2v_json_kv_string(j, "name", d->name);
    p2v_json_kv_bool(j, "block-device", d->is_block_device);
    p2v_json_kv_u64(j, "size", d->size);
    p2v_json_kv_u64(j, "sector-size", d->sector_size);
    p2v_json_kv_string(j, "pttype", d->pttype);
    p2v_json_kv_string(j, "model", d->model);
    p2v_json_kv_string(j, "serial", d->serial);
    p2v_json_kv_string(j, "whole-fstype", d->whole_fstype);
    p2v_json_key(j, "partitions");
    p2v_json_array_begin(j);
    for (int i = 0; i < d->nparts; i++) {
        const struct imager_part *p = &d->parts[i];
        p2v_json_object_begin(j);
        p2v_json_kv_i64(j, "number", p->number);
        p2v_json_kv_u64(j, "start", p->start);
        p2v_json_kv_u64(j, "size", p->size);
        p2v_json_kv_string(j, "fstype", p->fstype);
        p2v_json_kv_string(j, "label", p->label);
        p2v_json_kv_string(j, "uuid", p->uuid);
        p2v_json_kv_string(j, "part-type", p->part_type);
        p2v_json_kv_string(j, "part-name", p->part_name);
        p2v_json_kv_bool(j, "extended", p->extended);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
}
