/* bootcfg.c: find what a converted disk boots, without mounting it. Reads the partition
 * table (MBR with its extended partition chain, or GPT behind a protective MBR), opens every
 * ext2/3/4 partition through ext2io.c and every FAT12/16/32 one (an EFI system partition)
 * through fatio.c, looks for a GRUB or extlinux/syslinux configuration in the usual places,
 * parses its default entry (bootparse.c) and reads the kernel and the initrd it names.
 *
 * The ext2/3/4 partitions are searched first: a Debian or Ubuntu UEFI install keeps a stub
 * grub.cfg on the ESP (/EFI/debian/grub.cfg) that only loads /boot/grub/grub.cfg from the
 * root file system, and that one holds the menu. The FAT partitions come next:
 * /EFI/<dir>/grub.cfg for each directory under /EFI (BOOT, the removable-media fallback,
 * last), then the usual places (syslinux on FAT).
 *
 * Partition tables are untrusted: every table, count and range is checked against the
 * disk's size and capped (UEFI 2.10 §5.3 for GPT; the MBR layout as documented by the
 * de-facto standard). Sectors are 512 bytes: disk images have no other sector size here.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "bootcfg-int.h"
#include "diskfmt.h"
#include "vmm-int.h"

#define BOOTCFG_SECTOR 512u
#define BOOTCFG_LOGICAL_MAX 64        /* logical partitions in an EBR chain (loops) */
#define BOOTCFG_GPT_ENTRIES_MAX 1024u /* GPT entries read (128 is the usual count) */
#define BOOTCFG_GPT_ENTRY_MAX 4096u   /* bytes of one GPT entry (128 is the usual size) */
#define BOOTCFG_PARTS_MAX (4 + BOOTCFG_LOGICAL_MAX > 128 ? 4 + BOOTCFG_LOGICAL_MAX : 128)
#define BOOTCFG_CONFIG_MAX (1u << 20)      /* a configuration file */
#define BOOTCFG_KERNEL_MAX (64ull << 20)   /* a bzImage */
#define BOOTCFG_INITRD_MAX (1ull << 30)    /* an initramfs */
#define BOOTCFG_PATH_MAX 4096u

struct bootcfg_part {
    int num;           /* 1-based; logical MBR partitions from 5 */
    uint64_t off, size; /* bytes */
    bool vfat;          /* typed or signed as FAT */
    struct vmm_ext2 *fs; /* when it holds ext2/3/4 */
    struct vmm_fat *fat; /* when it holds FAT12/16/32 */
};

struct bootcfg_disk {
    struct diskfmt *img;
    uint64_t size;
    const char *table; /* "mbr" | "gpt" */
    struct bootcfg_part parts[BOOTCFG_PARTS_MAX];
    int n;
    int fat_bad;       /* the first FAT-looking partition that would not open (0: none) */
    char fat_why[P2V_ERR_MSG_MAX]; /* and why */
};

static const char *const bootcfg_configs[] = {
    "/boot/grub/grub.cfg",          "/grub/grub.cfg",
    "/boot/grub2/grub.cfg",         "/grub2/grub.cfg",
    "/boot/extlinux/extlinux.conf", "/extlinux/extlinux.conf",
    "/boot/syslinux/syslinux.cfg",  "/syslinux/syslinux.cfg",
    "/syslinux.cfg",                "/extlinux.conf",
};

/* C12A7328-F81F-11D2-BA4B-00A0C93EC93B as stored (mixed endian) */
static const uint8_t gpt_type_esp[16] = {0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11,
                                         0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b};

void vmm_bootcfg_release(struct vmm_bootcfg *c)
{
    if (!c)
        return;
    free(c->config_path);
    free(c->loader);
    free(c->title);
    free(c->kernel_path);
    free(c->initrd_path);
    free(c->cmdline);
    free(c->kernel);
    free(c->initrd);
    free(c->partition_table);
    memset(c, 0, sizeof(*c));
}

/* ------------------------------------------------------------------ partition tables */

static int disk_add(struct bootcfg_disk *d, int num, uint64_t lba, uint64_t sectors,
                    bool vfat)
{
    uint64_t off, size;
    if (P2V_MUL_OVERFLOW(lba, BOOTCFG_SECTOR, &off) ||
        P2V_MUL_OVERFLOW(sectors, BOOTCFG_SECTOR, &size) || !p2v_range_ok(off, size, d->size)) {
        p2v_log(P2V_LOG_DEBUG, "partition %d (sector %" PRIu64 ", %" PRIu64
                " sectors) is outside the disk: skipped", num, lba, sectors);
        return 0;
    }
    if (d->n == (int)BOOTCFG_PARTS_MAX)
        return 0;
    d->parts[d->n++] = (struct bootcfg_part){num, off, size, vfat, NULL, NULL};
    return 0;
}

static bool mbr_type_vfat(uint8_t t)
{
    return t == 0x01 || t == 0x04 || t == 0x06 || t == 0x0b || t == 0x0c || t == 0x0e ||
           t == 0xef;
}

static bool mbr_type_extended(uint8_t t)
{
    return t == 0x05 || t == 0x0f || t == 0x85;
}

/* The logical partitions of the extended partition at @ext_lba (@ext_sectors long): a chain
 * of EBRs, each with the logical partition (relative to itself) and the link to the next
 * (relative to the extended partition). */
static int mbr_logical(struct bootcfg_disk *d, uint64_t ext_lba, uint64_t ext_sectors,
                       struct p2v_err *err)
{
    uint8_t s[BOOTCFG_SECTOR];
    uint64_t ebr = ext_lba;
    for (int i = 0; i < BOOTCFG_LOGICAL_MAX; i++) {
        uint64_t off;
        if (P2V_MUL_OVERFLOW(ebr, BOOTCFG_SECTOR, &off) ||
            !p2v_range_ok(off, BOOTCFG_SECTOR, d->size))
            return p2v_err_set(err, EINVAL, "mbr: extended boot record at sector %" PRIu64
                               " is outside the disk", ebr);
        if (diskfmt_pread(d->img, s, sizeof(s), off, err) < 0)
            return -1;
        if (s[510] != 0x55 || s[511] != 0xaa)
            return p2v_err_set(err, EINVAL, "mbr: extended boot record at sector %" PRIu64
                               " has no 0x55aa signature", ebr);
        const uint8_t *e0 = s + 446, *e1 = s + 446 + 16;
        uint32_t rel = p2v_get_u32le(e0 + 8), cnt = p2v_get_u32le(e0 + 12);
        if (e0[4] && cnt)
            disk_add(d, 5 + i, ebr + rel, cnt, mbr_type_vfat(e0[4]));
        uint32_t next = p2v_get_u32le(e1 + 8);
        if (!mbr_type_extended(e1[4]) || next == 0)
            return 0;
        if (next >= ext_sectors)
            return p2v_err_set(err, EINVAL, "mbr: extended boot record at sector %" PRIu64
                               " links outside its extended partition (%" PRIu32 ")", ebr,
                               next);
        ebr = ext_lba + next;
    }
    p2v_log(P2V_LOG_DEBUG, "mbr: more than %d logical partitions: the rest ignored",
            BOOTCFG_LOGICAL_MAX);
    return 0;
}

static int gpt_read(struct bootcfg_disk *d, struct p2v_err *err)
{
    uint8_t h[BOOTCFG_SECTOR];
    uint8_t *ents = NULL;
    int r = -1;

    d->table = "gpt";
    if (!p2v_range_ok(BOOTCFG_SECTOR, BOOTCFG_SECTOR, d->size))
        return p2v_err_set(err, EINVAL, "gpt: the disk ends before the header at sector 1");
    if (diskfmt_pread(d->img, h, sizeof(h), BOOTCFG_SECTOR, err) < 0)
        return -1;
    if (memcmp(h, "EFI PART", 8) != 0)
        return p2v_err_set(err, EINVAL,
                           "gpt: protective mbr but no 'EFI PART' signature at sector 1");
    uint32_t hsize = p2v_get_u32le(h + 12), hcrc = p2v_get_u32le(h + 16);
    if (hsize < 92 || hsize > BOOTCFG_SECTOR)
        return p2v_err_set(err, EINVAL, "gpt: header size %" PRIu32 " (92 to 512)", hsize);
    uint8_t tmp[BOOTCFG_SECTOR];
    memcpy(tmp, h, hsize);
    memset(tmp + 16, 0, 4);
    uint32_t crc = (uint32_t)crc32(0, tmp, hsize);
    if (crc != hcrc)
        return p2v_err_set(err, EINVAL, "gpt: header crc32 0x%08" PRIx32 ", computed 0x%08"
                           PRIx32, hcrc, crc);
    uint64_t elba = p2v_get_u64le(h + 72);
    uint32_t count = p2v_get_u32le(h + 80), esize = p2v_get_u32le(h + 84);
    uint32_t ecrc = p2v_get_u32le(h + 88);
    if (esize < 128 || esize > BOOTCFG_GPT_ENTRY_MAX || esize % 8)
        return p2v_err_set(err, EINVAL, "gpt: entry size %" PRIu32 " (128 to %u, 8-aligned)",
                           esize, BOOTCFG_GPT_ENTRY_MAX);
    if (count > BOOTCFG_GPT_ENTRIES_MAX)
        return p2v_err_set(err, EINVAL, "gpt: %" PRIu32 " entries (at most %u)", count,
                           BOOTCFG_GPT_ENTRIES_MAX);
    size_t bytes = (size_t)count * esize; /* <= 4 MiB by the caps */
    uint64_t eoff;
    if (P2V_MUL_OVERFLOW(elba, BOOTCFG_SECTOR, &eoff) || !p2v_range_ok(eoff, bytes, d->size))
        return p2v_err_set(err, EINVAL, "gpt: entry array at sector %" PRIu64
                           " (%zu bytes) is outside the disk", elba, bytes);
    if (bytes && !(ents = malloc(bytes)))
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (bytes && diskfmt_pread(d->img, ents, bytes, eoff, err) < 0)
        goto out;
    crc = (uint32_t)crc32(0, ents, (uInt)bytes);
    if (crc != ecrc) {
        p2v_err_set(err, EINVAL, "gpt: entry array crc32 0x%08" PRIx32 ", computed 0x%08" PRIx32,
                    ecrc, crc);
        goto out;
    }
    static const uint8_t zero[16];
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = ents + (size_t)i * esize;
        if (memcmp(e, zero, 16) == 0)
            continue;
        uint64_t first = p2v_get_u64le(e + 32), last = p2v_get_u64le(e + 40);
        if (last < first || last == UINT64_MAX) {
            p2v_log(P2V_LOG_DEBUG, "gpt: entry %" PRIu32 ": last lba %" PRIu64
                    " before first %" PRIu64 ": skipped", i + 1, last, first);
            continue;
        }
        disk_add(d, (int)i + 1, first, last - first + 1, memcmp(e, gpt_type_esp, 16) == 0);
    }
    r = 0;
out:
    free(ents);
    return r;
}

static int disk_read_table(struct bootcfg_disk *d, struct p2v_err *err)
{
    uint8_t s[BOOTCFG_SECTOR];
    if (d->size < BOOTCFG_SECTOR)
        return p2v_err_set(err, EINVAL, "no partition table (the disk is %" PRIu64 " bytes)",
                           d->size);
    if (diskfmt_pread(d->img, s, sizeof(s), 0, err) < 0)
        return -1;
    if (s[510] != 0x55 || s[511] != 0xaa)
        return p2v_err_set(err, EINVAL, "no partition table (no MBR signature at 0x1fe)");
    for (int i = 0; i < 4; i++)
        if (s[446 + 16 * i + 4] == 0xee)
            return gpt_read(d, err);
    d->table = "mbr";
    for (int i = 0; i < 4; i++) {
        const uint8_t *e = s + 446 + 16 * i;
        uint32_t lba = p2v_get_u32le(e + 8), cnt = p2v_get_u32le(e + 12);
        if (!e[4] || !cnt)
            continue;
        if (mbr_type_extended(e[4])) {
            if (mbr_logical(d, lba, cnt, err) < 0)
                return -1;
            continue;
        }
        disk_add(d, i + 1, lba, cnt, mbr_type_vfat(e[4]));
    }
    /* logical partitions were added as met; list them after the primaries */
    for (int i = 1; i < d->n; i++)
        for (int j = i; j > 0 && d->parts[j - 1].num > d->parts[j].num; j--) {
            struct bootcfg_part t = d->parts[j];
            d->parts[j] = d->parts[j - 1];
            d->parts[j - 1] = t;
        }
    return 0;
}

/* Open every partition holding ext2/3/4 (superblock magic 0xef53 at 1024 + 56), and every
 * one typed FAT or whose boot sector says "FAT" as FAT. */
static void disk_probe(struct bootcfg_disk *d)
{
    for (int i = 0; i < d->n; i++) {
        struct bootcfg_part *p = &d->parts[i];
        uint8_t m[2];
        struct p2v_err e;
        if (p->size < 2048 || diskfmt_pread(d->img, m, 2, p->off + 1024 + 56, &e) < 0)
            continue;
        if (p2v_get_u16le(m) != 0xef53) {
            /* FAT boot sector: "FAT" at 54 (FAT12/16) or 82 (FAT32) */
            uint8_t b[90];
            if (!p->vfat && diskfmt_pread(d->img, b, sizeof(b), p->off, &e) == 0 &&
                (memcmp(b + 54, "FAT", 3) == 0 || memcmp(b + 82, "FAT", 3) == 0))
                p->vfat = true;
            if (!p->vfat)
                continue;
            p->fat = vmm_fat_open(d->img, p->off, p->size, &e);
            if (!p->fat) {
                p2v_log(P2V_LOG_DEBUG, "partition %d: %s", p->num, e.msg);
                if (!d->fat_bad) {
                    d->fat_bad = p->num;
                    memcpy(d->fat_why, e.msg, sizeof(d->fat_why));
                }
            }
            continue;
        }
        p->fs = vmm_ext2_open(d->img, p->off, p->size, &e);
        if (!p->fs)
            p2v_log(P2V_LOG_DEBUG, "partition %d: %s", p->num, e.msg);
    }
}

/* The file system's id for grub's `search --fs-uuid`: the ext2 UUID or the FAT volume id
 * ("ABCD-1234"); NULL when the partition was not opened. */
static const char *part_uuid(const struct bootcfg_part *p)
{
    return p->fs ? vmm_ext2_uuid(p->fs) : p->fat ? vmm_fat_uuid(p->fat) : NULL;
}

/* Read @path from whichever file system @p holds, as vmm_ext2_read_file() does; on FAT the
 * resolved path is @path as looked up (no links there). */
static int part_read(struct bootcfg_part *p, const char *path, size_t cap, uint8_t **data,
                     size_t *len, char **resolved, struct p2v_err *err)
{
    if (p->fs)
        return vmm_ext2_read_file(p->fs, path, cap, data, len, resolved, err);
    if (!p->fat)
        return p2v_err_set(err, ENOENT, "'%s': partition %d holds no file system read here",
                           path, p->num);
    uint8_t *buf = NULL;
    size_t n = 0;
    char *res = NULL;
    if (vmm_fat_read_file(p->fat, path, cap, &buf, &n, err) < 0)
        return -1;
    if (resolved && !(res = strdup(path))) {
        free(buf);
        return p2v_err_set(err, ENOMEM, "out of memory");
    }
    *data = buf;
    *len = n;
    if (resolved)
        *resolved = res;
    return 0;
}

/* ------------------------------------------------------------------ the search */

/* Make "@dir/@path" (or @path when absolute) into @out. */
static int path_join(char *out, size_t outlen, const char *dir, const char *path)
{
    int n = path[0] == '/' ? snprintf(out, outlen, "%s", path)
                           : snprintf(out, outlen, "%s/%s", dir, path);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* The candidate (partition, path) pairs for a file named @path by the configuration at
 * @cfg_path on partition index @ci, in order of preference. */
struct bootcfg_cand {
    int pi;
    char path[BOOTCFG_PATH_MAX];
};
#define BOOTCFG_CANDS_MAX 16

static void cand_add(struct bootcfg_cand *c, int *n, int pi, const char *prefix,
                     const char *path)
{
    if (*n == BOOTCFG_CANDS_MAX)
        return;
    int w = snprintf(c[*n].path, BOOTCFG_PATH_MAX, "%s%s", prefix, path);
    if (w < 0 || w >= (int)BOOTCFG_PATH_MAX)
        return;
    c[(*n)++].pi = pi;
}

static int bootcfg_candidates(const struct bootcfg_disk *d, int ci, const char *cfg_path,
                              bool relative_to_cfg, const char *path, const char *uuid,
                              struct bootcfg_cand *c)
{
    int n = 0;
    char base[BOOTCFG_PATH_MAX];
    char dir[BOOTCFG_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", cfg_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    if (path_join(base, sizeof(base), relative_to_cfg ? dir : "", path) < 0)
        return 0;
    if (!relative_to_cfg && base[0] != '/') {
        int w = snprintf(base, sizeof(base), "/%s", path);
        if (w < 0 || w >= (int)sizeof(base))
            return 0;
    }
    /* grub: the file system found by `search --fs-uuid --set=root` first (an ext2 UUID
     * or a FAT volume id, compared without case); room is kept for the rest */
    if (uuid)
        for (int i = 0; i < d->n && n < BOOTCFG_CANDS_MAX / 2; i++) {
            const char *u = part_uuid(&d->parts[i]);
            if (u && u[0] && strcasecmp(u, uuid) == 0)
                cand_add(c, &n, i, "", base);
        }
    int by_uuid = n;
    cand_add(c, &n, ci, "", base);
    /* a separate /boot (configuration at /grub/...): "/boot/x" is "/x" there; and the other
     * way round, a path written for a separate /boot found on the root fs */
    bool cfg_in_boot = strncmp(cfg_path, "/boot/", 6) == 0;
    if (!cfg_in_boot && strncmp(base, "/boot/", 6) == 0)
        cand_add(c, &n, ci, "", base + 5);
    else if (cfg_in_boot && strncmp(base, "/boot/", 6) != 0)
        cand_add(c, &n, ci, "/boot", base);
    /* a configuration on FAT (the ESP) that named no file system by UUID: grub's root is the
     * ESP, but the files may well be on an ext2/3/4 partition it set by other means
     * (`set root=(hd0,gpt2)`, whose device part the parser drops) */
    if (d->parts[ci].fat && by_uuid == 0)
        for (int i = 0; i < d->n; i++)
            if (d->parts[i].fs)
                cand_add(c, &n, i, "", base);
    return n;
}

/* Read the file named @what (@path) by the configuration through the candidates; ENOENT
 * when no candidate holds it. */
static int bootcfg_read(struct bootcfg_disk *d, const struct bootcfg_cand *c, int nc,
                        const char *what, const char *path, const char *cfg_path, int cfg_num,
                        size_t cap, uint8_t **data, size_t *len, char **resolved, int *part,
                        struct p2v_err *err)
{
    struct p2v_err e;
    for (int i = 0; i < nc; i++) {
        struct bootcfg_part *p = &d->parts[c[i].pi];
        if (part_read(p, c[i].path, cap, data, len, resolved, &e) == 0) {
            *part = p->num;
            return 0;
        }
        if (e.code != ENOENT)
            return p2v_err_set(err, e.code, "%s named by %s on partition %d: partition %d: %s",
                               what, cfg_path, cfg_num, p->num, e.msg);
    }
    return p2v_err_set(err, ENOENT, "%s '%s' named by %s not found on partition %d", what, path,
                       cfg_path, cfg_num);
}

static char *dup_or_null(const char *s, bool *failed)
{
    if (!s)
        return NULL;
    char *r = strdup(s);
    if (!r)
        *failed = true;
    return r;
}

/* Parse the configuration @text found at @cfg on partition index @ci, read its files. */
static int bootcfg_use(struct bootcfg_disk *d, int ci, const char *cfg, const char *text,
                       size_t tlen, struct vmm_bootcfg *out, struct p2v_err *err)
{
    struct vmm_bootentry e = {0};
    struct vmm_bootcfg c = {0};
    struct bootcfg_cand *cands = NULL;
    bool grub = strstr(cfg, "grub.cfg") != NULL;
    int num = d->parts[ci].num, r = -1;
    const char *loader = grub ? "grub" : strstr(cfg, "extlinux") ? "extlinux" : "syslinux";

    int pr = grub ? vmm_grub_parse(text, tlen, &e, err) : vmm_extlinux_parse(text, tlen, &e, err);
    if (pr < 0) {
        /* "grub.cfg: line 12: x" becomes "'/boot/grub/grub.cfg' on partition 1: line 12: x" */
        if (err) {
            const char *m = err->msg, *colon = strstr(m, ": ");
            char rest[P2V_ERR_MSG_MAX];
            snprintf(rest, sizeof(rest), "%s",
                     colon && (strncmp(m, "grub.cfg:", 9) == 0 ||
                               strncmp(m, "extlinux.conf:", 14) == 0)
                         ? colon + 2
                         : m);
            p2v_err_set(err, err->code, "'%s' on partition %d: %s", cfg, num, rest);
        }
        return -1;
    }
    if (!(cands = calloc(BOOTCFG_CANDS_MAX, sizeof(*cands)))) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    int nc = bootcfg_candidates(d, ci, cfg, !grub, e.kernel, e.root_uuid, cands);
    if (bootcfg_read(d, cands, nc, "kernel", e.kernel, cfg, num, BOOTCFG_KERNEL_MAX, &c.kernel,
                     &c.kernel_len, &c.kernel_path, &c.kernel_part, err) < 0)
        goto out;
    if (e.initrd) {
        /* the initrd from the kernel's partition first */
        int kpi = 0;
        for (int i = 0; i < d->n; i++)
            if (d->parts[i].num == c.kernel_part)
                kpi = i;
        nc = bootcfg_candidates(d, ci, cfg, !grub, e.initrd, e.root_uuid, cands);
        for (int i = 0; i < nc; i++)
            if (cands[i].pi == kpi && i > 0) {
                struct bootcfg_cand t = cands[i];
                memmove(cands + 1, cands, (size_t)i * sizeof(*cands));
                cands[0] = t;
                break;
            }
        int ipart;
        if (bootcfg_read(d, cands, nc, "initrd", e.initrd, cfg, num, BOOTCFG_INITRD_MAX,
                         &c.initrd, &c.initrd_len, &c.initrd_path, &ipart, err) < 0)
            goto out;
    }
    bool failed = false;
    c.config_part = num;
    c.config_path = dup_or_null(cfg, &failed);
    c.loader = dup_or_null(loader, &failed);
    c.title = dup_or_null(e.title, &failed);
    c.cmdline = dup_or_null(e.cmdline ? e.cmdline : "", &failed);
    c.partition_table = dup_or_null(d->table, &failed);
    if (failed) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    *out = c;
    memset(&c, 0, sizeof(c));
    r = 0;
out:
    free(cands);
    vmm_bootentry_release(&e);
    vmm_bootcfg_release(&c);
    return r;
}

/* Read the configuration @cfg on partition index @i and use it: 1 when it is not there, 0
 * when used, -1 on error. */
static int bootcfg_try(struct bootcfg_disk *d, int i, const char *cfg, struct vmm_bootcfg *out,
                       struct p2v_err *err)
{
    uint8_t *text = NULL;
    size_t tlen = 0;
    struct p2v_err e;
    if (part_read(&d->parts[i], cfg, BOOTCFG_CONFIG_MAX, &text, &tlen, NULL, &e) < 0) {
        if (e.code == ENOENT)
            return 1;
        return p2v_err_set(err, e.code, "partition %d: %s", d->parts[i].num, e.msg);
    }
    p2v_log(P2V_LOG_DEBUG, "partition %d: found %s", d->parts[i].num, cfg);
    int r = bootcfg_use(d, i, cfg, text ? (const char *)text : "", tlen, out, err);
    free(text);
    return r;
}

/* The FAT partition at index @i: /EFI/<dir>/grub.cfg for each directory under /EFI (BOOT
 * last: it is the removable-media fallback, the vendor's directory says more), then the
 * usual places. Returns as bootcfg_try. */
static int bootcfg_search_fat(struct bootcfg_disk *d, int i, struct vmm_bootcfg *out,
                              struct p2v_err *err)
{
    struct vmm_fat_dirent *ents = NULL;
    size_t n = 0;
    struct p2v_err e;
    int r = 1;

    if (vmm_fat_list(d->parts[i].fat, "/EFI", &ents, &n, &e) < 0) {
        if (e.code != ENOENT && e.code != ENOTDIR)
            return p2v_err_set(err, e.code, "partition %d: %s", d->parts[i].num, e.msg);
        n = 0;
    }
    for (int pass = 0; pass < 2 && r == 1; pass++)
        for (size_t k = 0; k < n && r == 1; k++) {
            if (!ents[k].dir || (strcasecmp(ents[k].name, "BOOT") == 0) != (pass == 1))
                continue;
            char cfg[BOOTCFG_PATH_MAX];
            int w = snprintf(cfg, sizeof(cfg), "/EFI/%s/grub.cfg", ents[k].name);
            if (w < 0 || (size_t)w >= sizeof(cfg))
                continue;
            r = bootcfg_try(d, i, cfg, out, err);
        }
    vmm_fat_dirents_free(ents, n);
    for (size_t k = 0; k < P2V_ARRAY_SIZE(bootcfg_configs) && r == 1; k++)
        r = bootcfg_try(d, i, bootcfg_configs[k], out, err);
    return r;
}

int vmm_bootcfg_find(struct diskfmt *img, struct vmm_bootcfg *out, struct p2v_err *err)
{
    struct bootcfg_disk *d = calloc(1, sizeof(*d));
    int r = -1;
    if (!d)
        return p2v_err_set(err, ENOMEM, "out of memory");
    d->img = img;
    d->size = diskfmt_size(img);
    if (disk_read_table(d, err) < 0)
        goto out;
    disk_probe(d);

    /* ext2/3/4 first, then FAT (see the top of this file) */
    for (int i = 0; i < d->n; i++)
        for (size_t k = 0; d->parts[i].fs && k < P2V_ARRAY_SIZE(bootcfg_configs); k++) {
            int t = bootcfg_try(d, i, bootcfg_configs[k], out, err);
            if (t <= 0) {
                r = t;
                goto out;
            }
        }
    for (int i = 0; i < d->n; i++) {
        if (!d->parts[i].fat)
            continue;
        int t = bootcfg_search_fat(d, i, out, err);
        if (t <= 0) {
            r = t;
            goto out;
        }
    }
    /* nothing found: say where we looked */
    char ext[256] = "", fat[256] = "";
    size_t eo = 0, fo = 0;
    for (int i = 0; i < d->n; i++) {
        struct bootcfg_part *p = &d->parts[i];
        if (!p->fs && !p->fat)
            continue;
        char *b = p->fs ? ext : fat;
        size_t *o = p->fs ? &eo : &fo;
        int w = snprintf(b + *o, sizeof(ext) - *o, "%s%d", *o ? ", " : "", p->num);
        if (w > 0 && (size_t)w < sizeof(ext) - *o)
            *o += (size_t)w;
    }
    char bad[80] = "";
    if (d->fat_bad)
        snprintf(bad, sizeof(bad), "; partition %d looks like FAT but cannot be read: ",
                 d->fat_bad);
    if (!eo && !fo)
        p2v_err_set(err, ENOENT, "no ext2/3/4 or FAT partition in the %s partition table (%d "
                    "partitions)%s%s", d->table, d->n, bad, d->fat_bad ? d->fat_why : "");
    else
        p2v_err_set(err, ENOENT, "no boot loader configuration found (looked at "
                    "/boot/grub/grub.cfg, /grub/grub.cfg, /boot/grub2/grub.cfg, "
                    "/boot/extlinux/extlinux.conf, /boot/syslinux/syslinux.cfg and others%s%s"
                    "%s%s)%s%s", eo ? " on ext2/3/4 partition " : "", ext,
                    fo ? (eo ? "; /EFI/*/grub.cfg and the same on FAT partition "
                             : " and /EFI/*/grub.cfg on FAT partition ")
                       : "",
                    fat, bad, d->fat_bad ? d->fat_why : "");
out:
    for (int i = 0; i < d->n; i++) {
        vmm_ext2_close(d->parts[i].fs);
        vmm_fat_close(d->parts[i].fat);
    }
    free(d);
    return r;
}
