/* vhd.h: private to the VHD and VHDX drivers (disk-formats/vhd*.c, vhdx.c), their unit
 * test and their fuzz harnesses.
 *
 * VHD: Microsoft's "Virtual Hard Disk Image Format Specification" 1.0 (called VHDSPEC
 * below, its sections cited by title): a 512-byte big-endian "Hard Disk Footer" at the
 * end of the file (fixed disks: raw data, then the footer), and for dynamic disks a copy
 * of the footer at offset 0, a "Dynamic Disk Header", a "Block Allocation Table" of
 * 32-bit sector numbers and blocks, each a sector bitmap followed by the data.
 * VHDX: [MS-VHDX] "Virtual Hard Disk v2 (VHDX) File Format" (MS-VHDX below, its sections
 * by number): little-endian, a 1 MiB header section (file identifier, two headers, two
 * region tables), a metadata region and a BAT region of 64-bit entries, all located
 * through the region table, 1 MiB aligned.
 *
 * The parsers here turn untrusted bytes held in memory into checked host values (no file
 * I/O), so that each one can be fuzzed and unit-tested on its own; the drivers check
 * every offset against the file before reading there, and only then read the data:
 * through libvhdi (not hardened against hostile input) where it reads right, else from
 * the checked tables (vhd.c and vhdx.c say where and why).
 */
#ifndef DISKFMT_VHD_H
#define DISKFMT_VHD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

/* ------------------------------------------------------------------ VHD */

#define VHD_SECTOR 512u
#define VHD_FOOTER_SIZE 512u
#define VHD_DYN_HEADER_SIZE 1024u

/* VHDSPEC "Hard Disk Footer Format": disk types. */
#define VHD_TYPE_FIXED 2u
#define VHD_TYPE_DYNAMIC 3u
#define VHD_TYPE_DIFF 4u

/* VHDSPEC "Hard Disk Footer Format": Features bit 1 is "reserved, must always be set";
 * File Format Version and Header Version are 1.0. */
#define VHD_FEATURES_RESERVED 0x00000002u
#define VHD_VERSION_1_0 0x00010000u
/* Data Offset of a fixed disk: "should be set to 0xFFFFFFFF" (every writer uses all 64
 * bits set). */
#define VHD_NO_DATA_OFFSET UINT64_MAX
/* VHDSPEC "Block Allocation Table": an unused entry. */
#define VHD_BAT_UNUSED 0xffffffffu

/* Block sizes we accept in a dynamic header: VHDSPEC "Dynamic Disk Header Format" says
 * 2 MiB by default (what Virtual PC, Hyper-V and qemu write) and allows other powers of
 * two; we take 512 KiB to 256 MiB, beyond which no writer goes and a block's bitmap
 * alone (read whole) would pass 64 KiB. */
#define VHD_BLOCK_MIN (512u * 1024)
#define VHD_BLOCK_MAX (256u << 20)
#define VHD_BLOCK_DEFAULT (2u << 20)
/* The largest VHD: VHDSPEC's BAT holds 32-bit sector numbers (a 2 TiB file), and
 * Hyper-V and qemu stop at 2040 GiB (0xff000000 sectors); we write no more, and read no
 * larger dynamic disk. */
#define VHD_MAX_BYTES (UINT64_C(0xff000000) * VHD_SECTOR)

/* VHDSPEC "CHS Calculation": the largest geometry, 65535 cylinders x 16 heads x 255
 * sectors per track. Readers that size a disk by its geometry (Virtual PC, qemu for
 * unknown creators) take this value to mean "use Current Size". */
#define VHD_CHS_MAX_SECTORS (UINT64_C(65535) * 16 * 255)

/* The footer in host order (VHDSPEC "Hard Disk Footer Format", field by field). */
struct vhd_footer {
    uint32_t features;
    uint32_t version;
    uint64_t data_offset;
    uint32_t timestamp;        /* seconds since 2000-01-01 00:00:00 UTC */
    char creator_app[4];
    uint32_t creator_version;
    char creator_os[4];
    uint64_t original_size;
    uint64_t current_size;
    uint16_t cylinders;
    uint8_t heads;
    uint8_t sectors_per_track;
    uint32_t disk_type;
    uint32_t checksum;
    uint8_t unique_id[16];
    uint8_t saved_state;
};

/* The dynamic disk header in host order (VHDSPEC "Dynamic Disk Header Format"). */
struct vhd_dyn_header {
    uint64_t data_offset;  /* unused: all ones */
    uint64_t table_offset; /* absolute byte offset of the BAT */
    uint32_t version;
    uint32_t max_entries;
    uint32_t block_size;
    uint32_t checksum;
    uint8_t parent_id[16];
};

/* VHDSPEC "Checksum": the one's complement of the sum of all bytes of @len, the four
 * bytes at @skip (the checksum field) counted as zero. */
uint32_t vhd_checksum(const uint8_t *p, size_t len, size_t skip);

/* True when @buf (@len >= 512) starts with the "conectix" cookie and its footer checksum
 * is right (for probing: cheap, no other check). */
bool vhd_footer_cookie(const uint8_t *buf, size_t len);
bool vhd_footer_valid(const uint8_t *buf, size_t len);

/* Parse and check a footer read at file offset @where. Checks the cookie, the checksum,
 * the format version, the disk type (differencing refused: its data lives partly in a
 * parent) and the current size (> 0, whole sectors). */
int vhd_footer_parse(const uint8_t *buf, size_t len, const char *path, uint64_t where,
                     struct vhd_footer *f, struct p2v_err *err);
/* Encode @f into 512 bytes, computing the checksum (f->checksum is ignored). */
void vhd_footer_encode(const struct vhd_footer *f, uint8_t out[VHD_FOOTER_SIZE]);

/* Parse and check a dynamic disk header read at @where: cookie "cxsparse", checksum,
 * version, block size (a power of two in VHD_BLOCK_MIN..VHD_BLOCK_MAX), max entries > 0.
 * Offsets are checked by the caller, against the file. */
int vhd_dyn_header_parse(const uint8_t *buf, size_t len, const char *path, uint64_t where,
                         struct vhd_dyn_header *h, struct p2v_err *err);
void vhd_dyn_header_encode(const struct vhd_dyn_header *h, uint8_t out[VHD_DYN_HEADER_SIZE]);

/* VHDSPEC "Dynamic Disk Header Format": a block's sector bitmap, one bit per sector,
 * padded to whole sectors. */
uint32_t vhd_bitmap_size(uint32_t block_size);

/* VHDSPEC "CHS Calculation" for @sectors (capped at VHD_CHS_MAX_SECTORS). */
void vhd_geometry(uint64_t sectors, uint16_t *cylinders, uint8_t *heads, uint8_t *spt);

/* ------------------------------------------------------------------ VHDX */

#define VHDX_MIB (UINT64_C(1) << 20)
#define VHDX_HEADER_SECTION VHDX_MIB  /* MS-VHDX 2.2: the first 1 MiB */
#define VHDX_HEADER1_OFFSET (64u * 1024)
#define VHDX_HEADER2_OFFSET (128u * 1024)
#define VHDX_HEADER_SIZE 4096u
#define VHDX_REGION1_OFFSET (192u * 1024)
#define VHDX_REGION2_OFFSET (256u * 1024)
#define VHDX_REGION_TABLE_SIZE (64u * 1024)
#define VHDX_METADATA_TABLE_SIZE (64u * 1024)
#define VHDX_ENTRIES_MAX 2047u        /* MS-VHDX 2.2.3.1, 2.6.1.1 */
#define VHDX_ITEM_MAX VHDX_MIB        /* MS-VHDX 2.6.1.2: a metadata item's length */
#define VHDX_BLOCK_MIN VHDX_MIB       /* MS-VHDX 2.6.2.1 */
#define VHDX_BLOCK_MAX (256u << 20)
#define VHDX_SIZE_MAX (UINT64_C(64) << 40) /* MS-VHDX 2.6.2.2: 64 TiB */
#define VHDX_LOG_ENTRY_ALIGN 4096u    /* MS-VHDX 2.3.1 */

/* MS-VHDX 2.5.1.1 payload block states. */
#define VHDX_PAYLOAD_NOT_PRESENT 0u
#define VHDX_PAYLOAD_UNDEFINED 1u
#define VHDX_PAYLOAD_ZERO 2u
#define VHDX_PAYLOAD_UNMAPPED 3u
#define VHDX_PAYLOAD_FULLY_PRESENT 6u
#define VHDX_PAYLOAD_PARTIALLY_PRESENT 7u
#define VHDX_BAT_STATE(e) ((unsigned)((e) & 7u))
#define VHDX_BAT_OFFSET(e) (((e) >> 20) * VHDX_MIB) /* FileOffsetMB, in bytes */

/* GUIDs as they are stored (MS-VHDX 2: little-endian Data1..Data3, then 8 bytes). */
enum vhdx_guid_id {
    VHDX_GUID_BAT,
    VHDX_GUID_METADATA,
    VHDX_GUID_FILE_PARAMETERS,
    VHDX_GUID_VIRTUAL_DISK_SIZE,
    VHDX_GUID_VIRTUAL_DISK_ID,
    VHDX_GUID_LOGICAL_SECTOR_SIZE,
    VHDX_GUID_PHYSICAL_SECTOR_SIZE,
    VHDX_GUID_PARENT_LOCATOR,
    VHDX_GUID_COUNT,
};
extern const uint8_t vhdx_guids[VHDX_GUID_COUNT][16];

/* CRC-32C (Castagnoli), as MS-VHDX 2 asks for every checksum. */
uint32_t vhdx_crc32c(uint32_t crc, const void *p, size_t len);
/* The MS-VHDX checksum of @len bytes whose checksum field is at @at (taken as zero). */
uint32_t vhdx_checksum(const uint8_t *p, size_t len, size_t at);

/* MS-VHDX 2.2.2 header, host order. */
struct vhdx_header {
    uint64_t seq;
    uint8_t file_write_guid[16];
    uint8_t data_write_guid[16];
    uint8_t log_guid[16];
    uint16_t log_version;
    uint16_t version;
    uint32_t log_length;
    uint64_t log_offset;
};
/* Parse one header (@len >= 4096) read at @where: signature "head", checksum, version 1,
 * a log (when LogGuid is set) of whole MiB, at 1 MiB or later. */
int vhdx_header_parse(const uint8_t *buf, size_t len, const char *path, uint64_t where,
                      struct vhdx_header *h, struct p2v_err *err);
bool vhdx_guid_is_zero(const uint8_t g[16]);

/* MS-VHDX 2.2.3 region table, host order. */
struct vhdx_region {
    uint8_t guid[16];
    uint64_t offset;
    uint32_t length;
    bool required;
};
struct vhdx_region_table {
    uint32_t n;
    struct vhdx_region e[VHDX_ENTRIES_MAX];
    int bat, metadata; /* indexes of the two known regions */
};
/* Parse a region table (@len >= 64 KiB) read at @where: signature "regi", checksum,
 * entry count, entries of whole MiB at 1 MiB or later with no 32-bit wrap, GUIDs
 * unique, no unknown required region, BAT and metadata present. Placement in the file
 * is the caller's to check. */
int vhdx_region_table_parse(const uint8_t *buf, size_t len, const char *path,
                            uint64_t where, struct vhdx_region_table *t,
                            struct p2v_err *err);

/* MS-VHDX 2.6.1 metadata table: the known items located, their values decoded. */
struct vhdx_item {
    bool present;
    uint32_t offset, length; /* relative to the metadata region */
};
struct vhdx_meta_table {
    struct vhdx_item item[VHDX_GUID_COUNT]; /* indexed by enum vhdx_guid_id */
};
/* Parse the 64 KiB metadata table at the start of a metadata region of @region_len
 * bytes (read at @where): signature "metadata", entry count, every item inside the
 * region (offset >= 64 KiB, length <= 1 MiB), no duplicate, no unknown required item. */
int vhdx_meta_table_parse(const uint8_t *buf, size_t len, uint64_t region_len,
                          const char *path, uint64_t where, struct vhdx_meta_table *t,
                          struct p2v_err *err);

/* The values of the known items (MS-VHDX 2.6.2). */
struct vhdx_meta {
    uint32_t block_size;
    bool leave_allocated; /* "fixed" VHDX */
    bool has_parent;
    uint64_t virtual_size;
    uint32_t logical_sector;
    uint32_t physical_sector; /* 0 when absent */
    uint8_t disk_id[16];
};
/* Decode the item @id from its @len bytes @p into @m, checking its size and value. */
int vhdx_meta_item_parse(enum vhdx_guid_id id, const uint8_t *p, size_t len,
                         const char *path, uint64_t where, struct vhdx_meta *m,
                         struct p2v_err *err);
/* Final checks once every item is decoded: required items present, no parent,
 * virtual size a multiple of the logical sector and at most 64 TiB. */
int vhdx_meta_check(const struct vhdx_meta_table *t, const struct vhdx_meta *m,
                    const char *path, struct p2v_err *err);

/* MS-VHDX 2.5 BAT layout that follows from the metadata. */
struct vhdx_layout {
    uint64_t chunk_ratio;    /* payload blocks per sector bitmap block */
    uint64_t payload_blocks; /* blocks covering the virtual size */
    uint64_t bat_entries;    /* entries of a fixed/dynamic BAT, bitmap entries included */
};
void vhdx_layout_compute(const struct vhdx_meta *m, struct vhdx_layout *l);
/* The BAT index of payload block @b (MS-VHDX 2.5: a sector bitmap entry follows each
 * chunk of chunk_ratio payload entries). */
static inline uint64_t vhdx_bat_index(const struct vhdx_layout *l, uint64_t b)
{
    return b + b / l->chunk_ratio;
}

/* ------------------------------------------------------------------ shared */

/* Problems found while validating: open stops at the first (and fills @err); check
 * counts them all and keeps the first message. */
struct vhd_issues {
    bool count;
    uint64_t n;
    char first[512];
    struct p2v_err *err;
};
/* Record one problem. Returns -1 when the caller must stop (open), 0 to go on. */
int vhd_issue(struct vhd_issues *is, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A piece of the file that something claims: metadata or a data block. */
struct vhd_extent {
    uint64_t start, len;
    const char *what; /* "BAT", "block", ... (static) */
    uint64_t index;   /* block number for blocks */
};
/* Report every pair of overlapping extents of @v (sorted in place). Every extent must
 * already lie inside the file, so that start + len cannot wrap. */
int vhd_extents_disjoint(struct vhd_extent *v, size_t n, const char *path,
                         struct vhd_issues *is);

/* ------------------------------------------------------------------ libvhdi */

/* libvhdi opened on a file that we have validated. libvhdi reads by path; we give it
 * /proc/self/fd/N of our own descriptor, so that it reads the very file we checked. */
struct vhd_vhdi;
int vhd_vhdi_open(int fd, const char *path, uint64_t expect_size, struct vhd_vhdi **out,
                  struct p2v_err *err);
/* Read @len bytes at @off; @len > 0 and the range inside the media. */
int vhd_vhdi_read(struct vhd_vhdi *v, void *buf, size_t len, uint64_t off,
                  const char *path, struct p2v_err *err);
void vhd_vhdi_close(struct vhd_vhdi *v);

#endif /* DISKFMT_VHD_H */
