/* fatio.c: read-only access to a FAT12/16/32 file system (an EFI system partition, a
 * syslinux boot partition) inside a disk image, over a partition window [off, off + size)
 * of a libdiskfmt image: open (the BIOS parameter block checked), look a path up, read a
 * whole file, list a directory. Nothing is mounted, nothing is written, no tool is run.
 *
 * Everything read from the image is untrusted. The boot sector is parsed from memory
 * (fat_bpb_parse) into a checked geometry before any other read; every cluster number is
 * checked against the cluster count before use; a cluster chain is walked with Brent's
 * cycle finder and capped by the cluster count and by what it must hold (a file's size, a
 * directory's 65536 entries), so a loop ends as an error; a file whose size disagrees with
 * its chain is refused. Directory entries are parsed from memory (fat_dir_next).
 *
 * Specification: Microsoft, "FAT: General Overview of On-Disk Format" (fatgen103, 2000):
 * §3 the boot sector and BPB, §3.5 the FAT type from the cluster count, §4 the FAT and its
 * end-of-chain marks, §6 directory entries, §7 long names. The NT case flags (byte 12 of a
 * short entry: 0x08 lower-case base, 0x10 lower-case extension) are Windows NT's.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bootcfg-int.h"
#include "diskfmt.h"

#define FAT_BOOT_SECTOR 512u         /* bytes of the boot sector parsed (the BPB is in it) */
#define FAT_FATS_MAX 4u              /* copies of the FAT (2 usual, 1 allowed by §3.1) */
#define FAT_DIR_ENTRIES_MAX 65536u   /* entries in one directory (§6: 16-bit entry index) */
#define FAT_PATH_DEPTH_MAX 32        /* components in a path looked up */
#define FAT_PATH_MAX 4096u           /* bytes of a path looked up */
#define FAT_LFN_SLOTS_MAX 20u        /* long-name entries of one name (§7: 255 / 13) */
#define FAT_LFN_UNITS (FAT_LFN_SLOTS_MAX * 13u)
#define FAT_NAME_MAX (FAT_LFN_UNITS * 3u + 1u) /* UTF-8 bytes of a name, with its NUL */
#define FAT_CACHE 4096u              /* bytes of the FAT cached */
#define FAT_RUN_MAX (4u << 20)       /* bytes of contiguous clusters read at once */

#define FAT_ATTR_VOLUME 0x08
#define FAT_ATTR_DIR 0x10
#define FAT_ATTR_LFN 0x0f /* read-only | hidden | system | volume (§7) */
#define FAT_NT_LOWER_BASE 0x08
#define FAT_NT_LOWER_EXT 0x10

/* ------------------------------------------------------------------ on-disk structures */

/* The BPB common to all FAT types (§3.1), at offset 0 of the boot sector. */
struct fat_bpb {
    uint8_t jump[3];
    uint8_t oem[8];
    uint16_t bytes_per_sector;   /* 11 */
    uint8_t sectors_per_cluster; /* 13 */
    uint16_t reserved_sectors;   /* 14 */
    uint8_t fats;                /* 16 */
    uint16_t root_entries;       /* 17 */
    uint16_t sectors16;          /* 19 */
    uint8_t media;               /* 21 */
    uint16_t fat_size16;         /* 22 */
    uint16_t sectors_per_track;  /* 24 */
    uint16_t heads;              /* 26 */
    uint32_t hidden_sectors;     /* 28 */
    uint32_t sectors32;          /* 32 */
} __attribute__((packed));
_Static_assert(sizeof(struct fat_bpb) == 36, "fatgen103 §3.1: the BPB is 36 bytes");

/* FAT12/16 (§3.2), at offset 36. */
struct fat_ext16 {
    uint8_t drive;
    uint8_t reserved;
    uint8_t boot_sig; /* 38: 0x29 (or 0x28): the volume id follows */
    uint32_t volume_id;
    uint8_t label[11];
    uint8_t fs_type[8];
} __attribute__((packed));
_Static_assert(sizeof(struct fat_ext16) == 26, "fatgen103 §3.2: 26 bytes from offset 36");

/* FAT32 (§3.3), at offset 36. */
struct fat_ext32 {
    uint32_t fat_size32;   /* 36 */
    uint16_t ext_flags;    /* 40: bit 7 set: only FAT number (bits 0-3) is active */
    uint16_t version;      /* 42 */
    uint32_t root_cluster; /* 44 */
    uint16_t fsinfo;
    uint16_t backup_boot;
    uint8_t reserved[12];
    uint8_t drive;
    uint8_t reserved1;
    uint8_t boot_sig; /* 66 */
    uint32_t volume_id;
    uint8_t label[11];
    uint8_t fs_type[8];
} __attribute__((packed));
_Static_assert(sizeof(struct fat_ext32) == 54, "fatgen103 §3.3: 54 bytes from offset 36");

/* A short (8.3) directory entry (§6). */
struct fat_dirent_raw {
    uint8_t name[11];
    uint8_t attr;
    uint8_t nt_flags;
    uint8_t ctime_tenth;
    uint16_t ctime, cdate, adate;
    uint16_t cluster_hi; /* FAT32 only */
    uint16_t mtime, mdate;
    uint16_t cluster_lo;
    uint32_t size;
} __attribute__((packed));
_Static_assert(sizeof(struct fat_dirent_raw) == 32, "fatgen103 §6: entries are 32 bytes");

/* A long-name entry (§7): 13 UCS-2 units in three pieces. */
struct fat_lfn_raw {
    uint8_t ord; /* sequence 1..20, 0x40 on the last (first stored) */
    uint16_t name1[5];
    uint8_t attr; /* FAT_ATTR_LFN */
    uint8_t type; /* 0 */
    uint8_t checksum;
    uint16_t name2[6];
    uint16_t cluster; /* 0 */
    uint16_t name3[2];
} __attribute__((packed));
_Static_assert(sizeof(struct fat_lfn_raw) == 32, "fatgen103 §7: entries are 32 bytes");

/* ------------------------------------------------------------------ geometry */

/* What the BPB says, checked: every offset is from the start of the partition window. */
struct fat_geom {
    unsigned bits;            /* 12, 16 or 32 */
    uint32_t bytes_per_sector;
    uint32_t cluster_bytes;
    uint32_t clusters;        /* data clusters, numbered 2 .. clusters + 1 */
    uint64_t fat_off;         /* the active FAT */
    uint64_t fat_bytes;
    uint64_t root_off;        /* FAT12/16: the fixed root directory */
    uint32_t root_entries;
    uint32_t root_cluster;    /* FAT32 */
    uint64_t data_off;        /* cluster 2 */
    char volid[10];           /* "ABCD-1234", or "" without one */
};

struct vmm_fat {
    struct diskfmt *img;
    uint64_t off, size; /* the partition window */
    struct fat_geom g;
    uint8_t cache[FAT_CACHE + 4]; /* a piece of the FAT; +4: an entry across its end */
    uint64_t cache_off;
    size_t cache_len; /* 0: empty */
};

/* Parse and check the boot sector @bs (@len bytes, at least 90) of a file system in a
 * window of @window bytes. Pure: from memory only. */
static int fat_bpb_parse(const uint8_t *bs, size_t len, uint64_t window, struct fat_geom *out,
                         struct p2v_err *err)
{
    struct fat_bpb b;
    struct fat_ext16 e16;
    struct fat_ext32 e32;
    struct fat_geom g = {0};

    if (len < sizeof(b) + sizeof(e32))
        return p2v_err_set(err, EINVAL, "fat: boot sector of %zu bytes", len);
    memcpy(&b, bs, sizeof(b));
    memcpy(&e16, bs + sizeof(b), sizeof(e16));
    memcpy(&e32, bs + sizeof(b), sizeof(e32));

    uint32_t bps = le16toh(b.bytes_per_sector), spc = b.sectors_per_cluster;
    uint32_t rsvd = le16toh(b.reserved_sectors), nfats = b.fats;
    uint32_t root_ents = le16toh(b.root_entries);
    uint32_t total = le16toh(b.sectors16) ? le16toh(b.sectors16) : le32toh(b.sectors32);
    uint32_t fatsz = le16toh(b.fat_size16) ? le16toh(b.fat_size16) : le32toh(e32.fat_size32);

    if (!p2v_is_pow2(bps) || bps < 512 || bps > 4096)
        return p2v_err_set(err, EINVAL, "fat: bytes per sector %" PRIu32 " (boot sector offset "
                           "11) is not a power of two from 512 to 4096", bps);
    if (!p2v_is_pow2(spc))
        return p2v_err_set(err, EINVAL, "fat: sectors per cluster %" PRIu32 " (boot sector "
                           "offset 13) is not a power of two", spc);
    if (rsvd == 0)
        return p2v_err_set(err, EINVAL, "fat: no reserved sectors (boot sector offset 14)");
    if (nfats < 1 || nfats > FAT_FATS_MAX)
        return p2v_err_set(err, EINVAL, "fat: %" PRIu32 " FATs (boot sector offset 16; 1 to "
                           "%u)", nfats, FAT_FATS_MAX);
    if (total == 0)
        return p2v_err_set(err, EINVAL, "fat: total sector count 0 (boot sector offsets 19 "
                           "and 32)");
    if (fatsz == 0)
        return p2v_err_set(err, EINVAL, "fat: FAT size 0 sectors (boot sector offsets 22 and "
                           "36)");
    /* 32-bit counts times a sector of at most 4096 bytes: no 64-bit overflow below */
    uint64_t fs_bytes = (uint64_t)total * bps;
    if (fs_bytes > window)
        return p2v_err_set(err, EINVAL, "fat: the file system (%" PRIu32 " sectors of %" PRIu32
                           " bytes) is larger than its partition (%" PRIu64 " bytes)", total,
                           bps, window);
    uint64_t root_sectors = P2V_DIV_ROUND_UP((uint64_t)root_ents * 32, bps);
    uint64_t meta = (uint64_t)rsvd + (uint64_t)nfats * fatsz + root_sectors;
    if (meta >= total)
        return p2v_err_set(err, EINVAL, "fat: reserved, FAT and root directory sectors (%"
                           PRIu64 ") leave no data area in %" PRIu32 " sectors", meta, total);
    uint64_t clusters = (total - meta) / spc;
    if (clusters == 0)
        return p2v_err_set(err, EINVAL, "fat: no whole cluster in the data area");
    /* §3.5: the type is the cluster count's, whatever the label says */
    g.bits = clusters < 4085 ? 12 : clusters < 65525 ? 16 : 32;
    if (g.bits == 32) {
        /* the highest cluster number must stay below the bad-cluster mark 0x0ffffff7 */
        if (clusters > 0x0ffffff5u)
            return p2v_err_set(err, EINVAL, "fat: %" PRIu64 " clusters (FAT32 holds at most "
                               "268435445)", clusters);
        if (root_ents != 0 || le16toh(b.fat_size16) != 0)
            return p2v_err_set(err, EINVAL, "fat: FAT32 by its cluster count (%" PRIu64 ") but "
                               "with %" PRIu32 " root directory entries and a 16-bit FAT size "
                               "of %" PRIu16, clusters, root_ents, le16toh(b.fat_size16));
    } else if (root_ents == 0) {
        return p2v_err_set(err, EINVAL, "fat: FAT%u by its cluster count (%" PRIu64 ") but no "
                           "root directory entries (boot sector offset 17)", g.bits, clusters);
    }
    uint64_t need = g.bits == 12   ? ((clusters + 2) * 3 + 1) / 2
                    : g.bits == 16 ? (clusters + 2) * 2
                                   : (clusters + 2) * 4;
    g.fat_bytes = (uint64_t)fatsz * bps;
    if (g.fat_bytes < need)
        return p2v_err_set(err, EINVAL, "fat: a FAT of %" PRIu64 " bytes is too small for %"
                           PRIu64 " FAT%u clusters (%" PRIu64 " bytes)", g.fat_bytes, clusters,
                           g.bits, need);
    uint32_t active = 0;
    if (g.bits == 32 && (le16toh(e32.ext_flags) & 0x80)) {
        active = le16toh(e32.ext_flags) & 0x0f;
        if (active >= nfats)
            return p2v_err_set(err, EINVAL, "fat: active FAT %" PRIu32 " (boot sector offset "
                               "40) of %" PRIu32, active, nfats);
    }
    g.bytes_per_sector = bps;
    g.cluster_bytes = bps * spc; /* at most 4096 * 128 */
    g.clusters = (uint32_t)clusters;
    g.fat_off = ((uint64_t)rsvd + (uint64_t)active * fatsz) * bps;
    g.root_off = ((uint64_t)rsvd + (uint64_t)nfats * fatsz) * bps;
    g.data_off = meta * bps;
    uint8_t sig;
    uint32_t id;
    if (g.bits == 32) {
        g.root_cluster = le32toh(e32.root_cluster) & 0x0fffffffu;
        if (g.root_cluster < 2 || g.root_cluster > g.clusters + 1)
            return p2v_err_set(err, EINVAL, "fat: root directory cluster %" PRIu32 " (boot "
                               "sector offset 44) is not a cluster (2 to %" PRIu32 ")",
                               g.root_cluster, g.clusters + 1);
        sig = e32.boot_sig;
        id = le32toh(e32.volume_id);
    } else {
        g.root_entries = root_ents;
        sig = e16.boot_sig;
        id = le32toh(e16.volume_id);
    }
    if (sig == 0x29 || sig == 0x28)
        snprintf(g.volid, sizeof(g.volid), "%04X-%04X", (unsigned)(id >> 16),
                 (unsigned)(id & 0xffff));
    *out = g;
    return 0;
}

/* ------------------------------------------------------------------ the FAT */

/* The FAT entry of cluster @c (2 .. clusters + 1), masked to its width. */
static int fat_entry(struct vmm_fat *fs, uint32_t c, uint32_t *v, struct p2v_err *err)
{
    uint64_t o = fs->g.bits == 12 ? (uint64_t)c + c / 2
                 : fs->g.bits == 16 ? (uint64_t)c * 2
                                    : (uint64_t)c * 4;
    size_t w = fs->g.bits == 32 ? 4 : 2; /* a FAT12 entry is read as the 2 bytes holding it */

    if (c < 2 || c > fs->g.clusters + 1 || !p2v_range_ok(o, w, fs->g.fat_bytes))
        return p2v_err_set(err, EINVAL, "fat: cluster %" PRIu32 " is outside the FAT (%" PRIu32
                           " clusters)", c, fs->g.clusters);
    if (!fs->cache_len || o < fs->cache_off || o + w > fs->cache_off + fs->cache_len) {
        uint64_t start = o - o % FAT_CACHE;
        size_t n = (size_t)P2V_MIN((uint64_t)sizeof(fs->cache), fs->g.fat_bytes - start);
        fs->cache_len = 0;
        if (diskfmt_pread(fs->img, fs->cache, n, fs->off + fs->g.fat_off + start, err) < 0)
            return p2v_err_prefix(err, "fat: reading the FAT at partition offset %" PRIu64,
                                  fs->g.fat_off + start);
        fs->cache_off = start;
        fs->cache_len = n;
    }
    const uint8_t *p = fs->cache + (o - fs->cache_off);
    if (fs->g.bits == 12) {
        uint32_t x = p2v_get_u16le(p);
        *v = c & 1 ? x >> 4 : x & 0x0fff;
    } else if (fs->g.bits == 16) {
        *v = p2v_get_u16le(p);
    } else {
        *v = p2v_get_u32le(p) & 0x0fffffffu; /* §4: the top 4 bits are reserved */
    }
    return 0;
}

static uint32_t fat_bad_mark(const struct fat_geom *g)
{
    return g->bits == 12 ? 0xff7u : g->bits == 16 ? 0xfff7u : 0x0ffffff7u;
}

/* The cluster after @c in a chain: 0 and *@next, or 1 at the end of the chain; -1 when the
 * entry is free, reserved, bad or beyond the cluster count. @what names the chain. */
static int fat_chain_next(struct vmm_fat *fs, uint32_t c, uint32_t *next, const char *what,
                          struct p2v_err *err)
{
    uint32_t v = 0;
    if (fat_entry(fs, c, &v, err) < 0)
        return p2v_err_prefix(err, "'%s'", what);
    uint32_t bad = fat_bad_mark(&fs->g);
    if (v > bad)
        return 1; /* §4: 0xff8.. / 0xfff8.. / 0x0ffffff8.. end the chain */
    if (v == bad)
        return p2v_err_set(err, EIO, "fat: '%s': the chain reaches bad cluster %" PRIu32, what,
                           c);
    if (v < 2)
        return p2v_err_set(err, EINVAL, "fat: '%s': the FAT entry of cluster %" PRIu32 " is %s "
                           "inside a cluster chain", what, c, v ? "reserved (1)" : "free (0)");
    if (v > fs->g.clusters + 1)
        return p2v_err_set(err, EINVAL, "fat: '%s': cluster %" PRIu32 " (the FAT entry of "
                           "cluster %" PRIu32 ") is beyond the cluster count (%" PRIu32
                           " clusters, 2 to %" PRIu32 ")", what, v, c, fs->g.clusters,
                           fs->g.clusters + 1);
    *next = v;
    return 0;
}

/* Walk the chain from @first to its end: *@count clusters. More than @limit clusters (never
 * more than the cluster count, so a loop always ends) fails with @over_msg, unless a loop is
 * found by walking on a little (twice the limit): Brent's cycle finder (a mark moved to the
 * walker at each power of two steps) meets a loop within twice its length plus its tail. */
static int fat_chain_count(struct vmm_fat *fs, uint32_t first, uint64_t limit,
                           const char *what, const char *over_msg, uint64_t *count,
                           struct p2v_err *err)
{
    if (first < 2 || first > fs->g.clusters + 1)
        return p2v_err_set(err, EINVAL, "fat: '%s': first cluster %" PRIu32 " is beyond the "
                           "cluster count (%" PRIu32 " clusters, 2 to %" PRIu32 ")", what,
                           first, fs->g.clusters, fs->g.clusters + 1);
    limit = P2V_MIN(limit, (uint64_t)fs->g.clusters);
    uint64_t hard = P2V_MIN(limit * 2 + 16, (uint64_t)fs->g.clusters);
    uint32_t c = first, mark = first;
    uint64_t n = 1, power = 1, steps = 0;
    bool ended = false;
    for (;;) {
        uint32_t next;
        int r = fat_chain_next(fs, c, &next, what, err);
        if (r < 0)
            return -1;
        if (r == 1) {
            ended = true;
            break;
        }
        if (next == mark)
            return p2v_err_set(err, EINVAL, "fat: '%s': the cluster chain loops (cluster %"
                               PRIu32 " leads back to cluster %" PRIu32 ")", what, c, next);
        if (n >= hard)
            break;
        if (++steps == power) {
            mark = next;
            power *= 2;
            steps = 0;
        }
        c = next;
        n++;
    }
    if (!ended || n > limit)
        return p2v_err_set(err, EINVAL, "fat: '%s': %s", what, over_msg);
    *count = n;
    return 0;
}

/* Read the first @len bytes held by the chain from @first (already walked and counted),
 * each run of contiguous clusters (up to FAT_RUN_MAX bytes) in one read. */
static int fat_chain_read(struct vmm_fat *fs, uint32_t first, uint8_t *buf, size_t len,
                          const char *what, struct p2v_err *err)
{
    const size_t cb = fs->g.cluster_bytes;
    uint32_t c = first;
    size_t done = 0;
    while (done < len) {
        uint32_t run_first = c, last = c;
        size_t run = P2V_MIN(cb, len - done);
        while (done + run < len) {
            uint32_t next;
            int r = fat_chain_next(fs, last, &next, what, err);
            if (r < 0)
                return -1;
            if (r == 1)
                return p2v_err_set(err, EIO, "fat: '%s': the cluster chain ended early", what);
            if (next != last + 1 || run + cb > FAT_RUN_MAX) {
                c = next; /* the next run starts there */
                break;
            }
            last = next;
            run += P2V_MIN(cb, len - done - run);
        }
        uint64_t off = fs->g.data_off + (uint64_t)(run_first - 2) * cb;
        if (!p2v_range_ok(off, run, fs->size))
            return p2v_err_set(err, EINVAL, "fat: '%s': cluster %" PRIu32 " lies outside the "
                               "partition", what, run_first);
        if (diskfmt_pread(fs->img, buf + done, run, fs->off + off, err) < 0)
            return p2v_err_prefix(err, "fat: '%s': reading cluster %" PRIu32, what, run_first);
        done += run;
    }
    return 0;
}

/* ------------------------------------------------------------------ directories */

/* One directory entry, decoded. */
struct fat_dirent {
    char name[FAT_NAME_MAX]; /* the long name when it is valid, else the short one */
    char short_name[13];     /* "NAME.EXT", NT case flags applied */
    uint8_t attr;
    uint32_t cluster;
    uint32_t size;
};

/* The state of fat_dir_next over one directory. */
struct fat_dir_iter {
    struct p2v_rd rd;
    bool fat32;
    uint16_t lfn[FAT_LFN_UNITS];
    unsigned lfn_expect; /* the sequence number the next long-name entry must carry */
    unsigned lfn_slots;  /* entries in the name being gathered; 0: none */
    uint8_t lfn_sum;
};

static void fat_dir_iter_init(struct fat_dir_iter *it, const uint8_t *dir, size_t len,
                              bool fat32)
{
    memset(it, 0, sizeof(*it));
    p2v_rd_init(&it->rd, dir, len);
    it->fat32 = fat32;
}

/* §7: the checksum of a short name, which each of its long-name entries carries. */
static uint8_t fat_lfn_checksum(const uint8_t name[11])
{
    uint8_t s = 0;
    for (int i = 0; i < 11; i++)
        s = (uint8_t)(((s & 1) << 7) + (s >> 1) + name[i]);
    return s;
}

/* Decode the gathered long name into @out (UTF-8); false when it is not a usable name
 * (empty, "." or "..", holding a control character, '/', '\\' or a broken surrogate
 * pair): a path naming it would not reach it. */
static bool fat_lfn_decode(const struct fat_dir_iter *it, char *out, size_t outlen)
{
    size_t units = it->lfn_slots * 13u, o = 0;
    for (size_t i = 0; i < units; i++) {
        uint32_t u = it->lfn[i];
        if (u == 0 || u == 0xffff)
            break; /* §7: the name ends with 0x0000, the rest is 0xffff */
        if (u >= 0xd800 && u <= 0xdbff) {
            if (i + 1 >= units || it->lfn[i + 1] < 0xdc00 || it->lfn[i + 1] > 0xdfff)
                return false;
            u = 0x10000 + ((u - 0xd800) << 10) + (it->lfn[++i] - 0xdc00u);
        } else if (u >= 0xdc00 && u <= 0xdfff) {
            return false;
        }
        if (u < 0x20 || u == '/' || u == '\\' || u == 0x7f)
            return false;
        if (o + 5 > outlen)
            return false;
        if (u < 0x80) {
            out[o++] = (char)u;
        } else if (u < 0x800) {
            out[o++] = (char)(0xc0 | (u >> 6));
            out[o++] = (char)(0x80 | (u & 0x3f));
        } else if (u < 0x10000) {
            out[o++] = (char)(0xe0 | (u >> 12));
            out[o++] = (char)(0x80 | ((u >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (u & 0x3f));
        } else {
            out[o++] = (char)(0xf0 | (u >> 18));
            out[o++] = (char)(0x80 | ((u >> 12) & 0x3f));
            out[o++] = (char)(0x80 | ((u >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (u & 0x3f));
        }
    }
    out[o] = '\0';
    return o > 0 && strcmp(out, ".") != 0 && strcmp(out, "..") != 0;
}

/* "NAME.EXT" from the 11 bytes of a short entry; bytes of the OEM code page (0x80 up) and
 * control characters become '?', so that a name is always plain ASCII. */
static void fat_short_decode(const struct fat_dirent_raw *e, char out[13])
{
    size_t o = 0;
    int last = 7;
    while (last >= 0 && e->name[last] == ' ')
        last--;
    for (int i = 0; i <= last; i++) {
        uint8_t ch = i == 0 && e->name[0] == 0x05 ? 0xe5 : e->name[i]; /* §6: 0x05 is 0xe5 */
        if (ch >= 'A' && ch <= 'Z' && (e->nt_flags & FAT_NT_LOWER_BASE))
            ch = (uint8_t)(ch - 'A' + 'a');
        out[o++] = ch < 0x20 || ch >= 0x7f || ch == '/' || ch == '\\' ? '?' : (char)ch;
    }
    int elast = 10;
    while (elast >= 8 && e->name[elast] == ' ')
        elast--;
    if (elast >= 8) {
        out[o++] = '.';
        for (int i = 8; i <= elast; i++) {
            uint8_t ch = e->name[i];
            if (ch >= 'A' && ch <= 'Z' && (e->nt_flags & FAT_NT_LOWER_EXT))
                ch = (uint8_t)(ch - 'A' + 'a');
            out[o++] = ch < 0x20 || ch >= 0x7f || ch == '/' || ch == '\\' ? '?' : (char)ch;
        }
    }
    out[o] = '\0';
}

/* The next file or directory entry of the directory (volume labels, deleted entries and
 * "." / ".." skipped): 1 and *@de; 0 at the end. Pure: from memory only. */
static int fat_dir_next(struct fat_dir_iter *it, struct fat_dirent *de)
{
    const uint8_t *p;
    while (p2v_rd_ptr(&it->rd, &p, 32) == 0) {
        if (p[0] == 0x00)
            return 0; /* §6: this and all later entries are free */
        if (p[0] == 0xe5) {
            it->lfn_slots = 0; /* deleted */
            continue;
        }
        if ((p[11] & 0x3f) == FAT_ATTR_LFN) {
            struct fat_lfn_raw l;
            memcpy(&l, p, sizeof(l));
            unsigned seq = l.ord & 0x1f;
            if (l.ord & 0x40) {
                if (seq < 1 || seq > FAT_LFN_SLOTS_MAX || (l.ord & 0xa0)) {
                    it->lfn_slots = 0;
                    continue;
                }
                it->lfn_slots = seq;
                it->lfn_expect = seq;
                it->lfn_sum = l.checksum;
            } else if (!it->lfn_slots || seq != it->lfn_expect || seq == 0 ||
                       l.checksum != it->lfn_sum) {
                it->lfn_slots = 0; /* out of order: the name is dropped */
                continue;
            }
            uint16_t *u = it->lfn + (seq - 1) * 13u;
            for (int i = 0; i < 5; i++)
                u[i] = le16toh(l.name1[i]);
            for (int i = 0; i < 6; i++)
                u[5 + i] = le16toh(l.name2[i]);
            for (int i = 0; i < 2; i++)
                u[11 + i] = le16toh(l.name3[i]);
            it->lfn_expect = seq - 1;
            continue;
        }
        struct fat_dirent_raw e;
        memcpy(&e, p, sizeof(e));
        /* the long name belongs to this entry when complete and its checksum matches */
        bool have_lfn = it->lfn_slots && it->lfn_expect == 0 &&
                        fat_lfn_checksum(e.name) == it->lfn_sum;
        bool dots = e.name[0] == '.' &&
                    (memcmp(e.name + 1, "          ", 10) == 0 ||
                     (e.name[1] == '.' && memcmp(e.name + 2, "         ", 9) == 0));
        if ((e.attr & FAT_ATTR_VOLUME) || dots) {
            it->lfn_slots = 0;
            continue;
        }
        memset(de, 0, sizeof(*de));
        fat_short_decode(&e, de->short_name);
        if (!have_lfn || !fat_lfn_decode(it, de->name, sizeof(de->name)))
            memcpy(de->name, de->short_name, sizeof(de->short_name));
        it->lfn_slots = 0;
        if (!de->name[0])
            continue; /* §6: a short name of spaces only is invalid, and no path names it */
        de->attr = e.attr;
        de->cluster = le16toh(e.cluster_lo);
        if (it->fat32) /* FAT12/16 leave the high word to other uses (OS/2 EA) */
            de->cluster |= (uint32_t)le16toh(e.cluster_hi) << 16;
        de->size = le32toh(e.size);
        return 1;
    }
    return 0;
}

/* Read the whole directory at @cluster (0: the root) into *@buf (*@len bytes). */
static int fat_dir_load(struct vmm_fat *fs, uint32_t cluster, const char *path, uint8_t **buf,
                        size_t *len, struct p2v_err *err)
{
    uint8_t *b = NULL;
    size_t n;
    if (cluster == 0 && fs->g.bits != 32) {
        n = (size_t)fs->g.root_entries * 32;
        if (!(b = malloc(n)))
            return p2v_err_set(err, ENOMEM, "out of memory");
        if (diskfmt_pread(fs->img, b, n, fs->off + fs->g.root_off, err) < 0) {
            free(b);
            return p2v_err_prefix(err, "fat: reading the root directory at partition offset %"
                                  PRIu64, fs->g.root_off);
        }
    } else {
        if (cluster == 0)
            cluster = fs->g.root_cluster;
        uint64_t count;
        uint64_t limit = P2V_DIV_ROUND_UP((uint64_t)FAT_DIR_ENTRIES_MAX * 32,
                                          fs->g.cluster_bytes);
        if (fat_chain_count(fs, cluster, limit, path, "the directory is longer than 65536 "
                            "entries (a cluster chain loop?)", &count, err) < 0)
            return -1;
        n = (size_t)(count * fs->g.cluster_bytes); /* at most 2 MiB + a cluster */
        if (!(b = malloc(n)))
            return p2v_err_set(err, ENOMEM, "out of memory");
        if (fat_chain_read(fs, cluster, b, n, path, err) < 0) {
            free(b);
            return -1;
        }
    }
    *buf = b;
    *len = n;
    return 0;
}

/* Find the entry at the absolute @path (lexically normalised: "." and ".." resolved in the
 * text, FAT having no links). The root is a directory entry of cluster 0. ENOENT when a
 * component is missing or not a directory. */
static int fat_lookup(struct vmm_fat *fs, const char *path, struct fat_dirent *out,
                      struct p2v_err *err)
{
    char copy[FAT_PATH_MAX];
    char *comp[FAT_PATH_DEPTH_MAX];
    int depth = 0;
    uint8_t *dir = NULL;
    size_t dlen = 0;
    int r = -1;

    if (strlen(path) >= sizeof(copy))
        return p2v_err_set(err, ENAMETOOLONG, "fat: '%.64s...': path longer than %u bytes",
                           path, FAT_PATH_MAX);
    strcpy(copy, path);
    for (char *save = NULL, *t = strtok_r(copy, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        if (strcmp(t, ".") == 0)
            continue;
        if (strcmp(t, "..") == 0) {
            if (depth)
                depth--;
            continue;
        }
        if (depth == FAT_PATH_DEPTH_MAX)
            return p2v_err_set(err, ENAMETOOLONG, "fat: '%s': more than %d path components",
                               path, FAT_PATH_DEPTH_MAX);
        comp[depth++] = t;
    }
    struct fat_dirent cur = {.name = "/", .short_name = "/", .attr = FAT_ATTR_DIR};
    char dpath[FAT_PATH_MAX] = "/"; /* the directory being searched, for messages */
    size_t dl = 1;
    for (int i = 0; i < depth; i++) {
        if (i > 0) {
            /* the components fit: they come from @path, shorter than FAT_PATH_MAX */
            int w = snprintf(dpath + dl, sizeof(dpath) - dl, "%s%s", i > 1 ? "/" : "",
                             comp[i - 1]);
            if (w > 0)
                dl = P2V_MIN(dl + (size_t)w, sizeof(dpath) - 1);
        }
        if (!(cur.attr & FAT_ATTR_DIR)) {
            p2v_err_set(err, ENOENT, "fat: '%s': '%s' is not a directory", path, cur.name);
            goto out;
        }
        if (i > 0 && cur.cluster == 0) {
            p2v_err_set(err, EINVAL, "fat: '%s': directory '%s' has no cluster", path, cur.name);
            goto out;
        }
        free(dir);
        dir = NULL;
        if (fat_dir_load(fs, cur.cluster, dpath, &dir, &dlen, err) < 0)
            goto out;
        struct fat_dir_iter it;
        bool found = false;
        fat_dir_iter_init(&it, dir, dlen, fs->g.bits == 32);
        while (fat_dir_next(&it, out) == 1)
            if (strcasecmp(out->name, comp[i]) == 0 || strcasecmp(out->short_name, comp[i]) == 0) {
                found = true;
                break;
            }
        if (!found) {
            p2v_err_set(err, ENOENT, "fat: '%s': not found", path);
            goto out;
        }
        cur = *out;
    }
    *out = cur;
    r = 0;
out:
    free(dir);
    return r;
}

/* ------------------------------------------------------------------ the interface */

struct vmm_fat *vmm_fat_open(struct diskfmt *img, uint64_t off, uint64_t size,
                             struct p2v_err *err)
{
    uint8_t bs[FAT_BOOT_SECTOR];
    struct vmm_fat *fs;

    if (size < sizeof(bs)) {
        p2v_err_set(err, EINVAL, "fat: the partition at offset %" PRIu64 " is %" PRIu64
                    " bytes", off, size);
        return NULL;
    }
    if (diskfmt_pread(img, bs, sizeof(bs), off, err) < 0)
        return NULL;
    if (!(fs = calloc(1, sizeof(*fs)))) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    if (fat_bpb_parse(bs, sizeof(bs), size, &fs->g, err) < 0) {
        free(fs);
        p2v_err_prefix(err, "partition at offset %" PRIu64, off);
        return NULL;
    }
    fs->img = img;
    fs->off = off;
    fs->size = size;
    return fs;
}

void vmm_fat_close(struct vmm_fat *fs)
{
    free(fs);
}

const char *vmm_fat_uuid(const struct vmm_fat *fs)
{
    return fs->g.volid;
}

unsigned vmm_fat_bits(const struct vmm_fat *fs)
{
    return fs->g.bits;
}

int vmm_fat_read_file(struct vmm_fat *fs, const char *path, size_t cap, uint8_t **data,
                      size_t *len, struct p2v_err *err)
{
    struct fat_dirent *de = malloc(sizeof(*de));
    uint8_t *buf = NULL;
    int r = -1;

    if (!de)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (fat_lookup(fs, path, de, err) < 0)
        goto out;
    if (de->attr & FAT_ATTR_DIR) {
        p2v_err_set(err, EINVAL, "fat: '%s': a directory, not a file", path);
        goto out;
    }
    if (de->size > cap) {
        p2v_err_set(err, EFBIG, "fat: '%s': %" PRIu32 " bytes is over the %zu byte limit", path,
                    de->size, cap);
        goto out;
    }
    uint64_t need = P2V_DIV_ROUND_UP((uint64_t)de->size, fs->g.cluster_bytes);
    if (de->size == 0 || de->cluster == 0) {
        if (de->size != 0 || de->cluster != 0) {
            p2v_err_set(err, EINVAL, "fat: '%s': directory entry size %" PRIu32 " disagrees "
                        "with its first cluster %" PRIu32, path, de->size, de->cluster);
            goto out;
        }
    } else {
        if (need > fs->g.clusters) {
            p2v_err_set(err, EINVAL, "fat: '%s': directory entry size %" PRIu32 " is more than "
                        "the data area (%" PRIu32 " clusters of %" PRIu32 " bytes)", path,
                        de->size, fs->g.clusters, fs->g.cluster_bytes);
            goto out;
        }
        char over[160];
        uint64_t count;
        snprintf(over, sizeof(over), "the cluster chain is longer than the directory entry "
                 "size %" PRIu32 " (%" PRIu64 " clusters) allows", de->size, need);
        if (fat_chain_count(fs, de->cluster, need, path, over, &count, err) < 0)
            goto out;
        if (count < need) {
            p2v_err_set(err, EINVAL, "fat: '%s': directory entry size %" PRIu32 " is larger "
                        "than its cluster chain (%" PRIu64 " clusters of %" PRIu32 " bytes)",
                        path, de->size, count, fs->g.cluster_bytes);
            goto out;
        }
        if (!(buf = malloc(de->size))) {
            p2v_err_set(err, ENOMEM, "fat: '%s': cannot allocate %" PRIu32 " bytes", path,
                        de->size);
            goto out;
        }
        if (fat_chain_read(fs, de->cluster, buf, de->size, path, err) < 0)
            goto out;
    }
    *data = buf;
    *len = de->size;
    buf = NULL;
    r = 0;
out:
    free(buf);
    free(de);
    return r;
}

void vmm_fat_dirents_free(struct vmm_fat_dirent *ents, size_t n)
{
    if (!ents)
        return;
    for (size_t i = 0; i < n; i++)
        free(ents[i].name);
    free(ents);
}

int vmm_fat_list(struct vmm_fat *fs, const char *path, struct vmm_fat_dirent **ents,
                 size_t *n, struct p2v_err *err)
{
    struct fat_dirent *de = malloc(sizeof(*de));
    uint8_t *dir = NULL;
    size_t dlen = 0, cnt = 0;
    struct vmm_fat_dirent *v = NULL;
    int r = -1;

    if (!de)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (fat_lookup(fs, path, de, err) < 0)
        goto out;
    if (!(de->attr & FAT_ATTR_DIR)) {
        p2v_err_set(err, ENOTDIR, "fat: '%s': not a directory", path);
        goto out;
    }
    if (strcmp(de->name, "/") != 0 && de->cluster == 0) {
        p2v_err_set(err, EINVAL, "fat: '%s': directory with no cluster", path);
        goto out;
    }
    if (fat_dir_load(fs, de->cluster, path, &dir, &dlen, err) < 0)
        goto out;
    /* at most dlen / 32 entries, itself at most 65536 + a cluster's worth */
    if (!(v = calloc(dlen / 32 + 1, sizeof(*v)))) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    struct fat_dir_iter it;
    fat_dir_iter_init(&it, dir, dlen, fs->g.bits == 32);
    while (fat_dir_next(&it, de) == 1) {
        if (!(v[cnt].name = strdup(de->name))) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out;
        }
        v[cnt].dir = (de->attr & FAT_ATTR_DIR) != 0;
        v[cnt].size = de->size;
        cnt++;
    }
    *ents = v;
    *n = cnt;
    v = NULL;
    r = 0;
out:
    vmm_fat_dirents_free(v, cnt);
    free(dir);
    free(de);
    return r;
}
