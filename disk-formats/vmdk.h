/* vmdk.h: private to the VMDK driver (disk-formats/vmdk*.c), its unit test and its fuzz
 * harness. The on-disk structures of VMware's "Virtual Disk Format 1.1" (called VDF
 * below, its sections cited by title), the named caps every value read from an
 * image is checked against, and the parsers that turn untrusted header, marker and
 * descriptor bytes held in memory into checked host values (vmdk-parse.c), kept apart
 * from file I/O so that each one can be fuzzed on its own.
 */
#ifndef DISKFMT_VMDK_H
#define DISKFMT_VMDK_H

#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

#define VMDK_SECTOR 512u

/* VDF "Hosted Sparse Extents" "Header": the magic number is the four characters "KDMV"
 * read as a little-endian uint32 (the file starts with the bytes 'K' 'D' 'M' 'V'). */
#define VMDK_MAGIC 0x564d444bu
/* The older vmfsSparse / hosted "COWD" sparse extents (VDF "ESX Server Sparse Extents");
 * recognised, refused. */
#define VMDK_COWD_MAGIC 0x44574f43u

/* VDF "Hosted Sparse Extents" flags. */
#define VMDK_FLAG_NL_DETECT (1u << 0)  /* the newline test bytes are valid */
#define VMDK_FLAG_RGD (1u << 1)        /* a redundant grain directory is kept */
#define VMDK_FLAG_ZERO_GTE (1u << 2)   /* GTE 1 is a zeroed grain (Virtual Disk Format 5.0) */
#define VMDK_FLAG_COMPRESSED (1u << 16) /* grains are compressed */
#define VMDK_FLAG_MARKERS (1u << 17)   /* metadata framed by markers (stream-optimized) */

/* VDF "Stream-Optimized Compressed Sparse Extents": in a stream-optimized extent the
 * header's gdOffset says "look in the footer". */
#define VMDK_GD_AT_END UINT64_MAX
#define VMDK_COMPRESS_NONE 0
#define VMDK_COMPRESS_DEFLATE 1

/* VDF "Stream-Optimized Compressed Sparse Extents" marker types (a marker with size 0 is
 * a metadata marker). */
#define VMDK_MARKER_EOS 0
#define VMDK_MARKER_GT 1
#define VMDK_MARKER_GD 2
#define VMDK_MARKER_FOOTER 3

/* VDF "Hosted Sparse Extents": a grain table entry of 1 is a zeroed grain when
 * VMDK_FLAG_ZERO_GTE is set. */
#define VMDK_GTE_ZEROED 1u

/* ------------------------------------------------------------------ named caps */

/* VDF "Hosted Sparse Extents" fixes numGTEsPerGT at 512; qemu accepts less, no writer
 * uses more. Caps a grain table at 2 KiB. */
#define VMDK_GTES_MAX 512u
/* Grain size in sectors: VDF "Hosted Sparse Extents" asks for a power of two; 64 KiB is
 * the norm, ESXi goes to 1 MiB. A larger grain only serves to make us allocate large
 * buffers. */
#define VMDK_GRAIN_SECTORS_MAX 2048u
/* Virtual size of one sparse extent in sectors: grain table entries are 32-bit sector
 * numbers, so a sparse extent file cannot usefully exceed 2 TiB; VMware's hosted sparse
 * limit is 2 TiB minus a sector. Allow some slack for sparse data (64 TiB). */
#define VMDK_CAPACITY_MAX (UINT64_C(64) << 31)
/* The whole disk (sum of the extents) in sectors: VMware's largest disk is 62 TiB. */
#define VMDK_DISK_SECTORS_MAX (UINT64_C(64) << 31)
/* Grain directory entries held in memory: 2^20 entries (4 MiB) cover 32 TiB at the
 * standard 64 KiB grain with 512-entry tables; more is a hostile header. */
#define VMDK_GD_ENTRIES_MAX (1u << 20)
/* Embedded or separate descriptors: qemu reads at most 1 MiB; real ones are < 10 KiB. */
#define VMDK_DESC_MAX (1u << 20)
/* One descriptor line; real ones are < 200 bytes (a long file name fits in 4 KiB). */
#define VMDK_DESC_LINE_MAX 4096u
/* Extents in one descriptor: a 64 TiB twoGbMaxExtent set has 32768 files. */
#define VMDK_EXTENTS_MAX 32768u
/* An extent file name: a plain name (NAME_MAX). */
#define VMDK_NAME_MAX 255u
/* A compressed grain's stored length: deflate never expands more than a few bytes per
 * 16 KiB block; twice the grain is qemu's read buffer and plenty. */
#define VMDK_COMPRESSED_MAX(grain_bytes) (2 * (uint64_t)(grain_bytes) + 4096)

/* ------------------------------------------------------------------ on-disk header */

/* VDF "Hosted Sparse Extents" SparseExtentHeader, exactly as on disk (little-endian).
 * Only its layout is used from this struct: vmdk_header_parse / vmdk_header_encode
 * convert it, field by field. */
struct vmdk_header_disk {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint64_t capacity;     /* sectors */
    uint64_t grain_size;   /* sectors */
    uint64_t desc_offset;  /* sectors */
    uint64_t desc_size;    /* sectors */
    uint32_t gtes_per_gt;
    uint64_t rgd_offset;   /* sectors */
    uint64_t gd_offset;    /* sectors */
    uint64_t overhead;     /* sectors */
    uint8_t unclean;
    uint8_t nl_single;     /* '\n' */
    uint8_t nl_non;        /* ' ' */
    uint8_t nl_double1;    /* '\r' */
    uint8_t nl_double2;    /* '\n' */
    uint16_t compress;
    uint8_t pad[433];
} __attribute__((packed));
_Static_assert(sizeof(struct vmdk_header_disk) == 512, "the header is one sector");
_Static_assert(__builtin_offsetof(struct vmdk_header_disk, unclean) == 72,
               "uncleanShutdown at byte 72");
_Static_assert(__builtin_offsetof(struct vmdk_header_disk, compress) == 77,
               "compressAlgorithm at byte 77");
#define VMDK_HEADER_UNCLEAN_OFFSET 72

/* VDF "Stream-Optimized Compressed Sparse Extents" marker: val (sectors of metadata that
 * follow, or the grain's LBA), size (0 for metadata markers, else the compressed length),
 * type (metadata markers only). */
struct vmdk_marker_disk {
    uint64_t val;
    uint32_t size;
    uint32_t type;
} __attribute__((packed));
_Static_assert(sizeof(struct vmdk_marker_disk) == 16, "a marker head is 16 bytes");
/* A grain marker is val + size, then the compressed bytes. */
#define VMDK_GRAIN_MARKER_SIZE 12u

/* The header in host order, checked by vmdk_header_parse. */
struct vmdk_header {
    uint32_t version;
    uint32_t flags;
    uint64_t capacity;
    uint64_t grain_size;
    uint64_t desc_offset;
    uint64_t desc_size;
    uint32_t gtes_per_gt;
    uint64_t rgd_offset;
    uint64_t gd_offset;
    uint64_t overhead;
    uint8_t unclean;
    uint16_t compress;
};

/* What follows from a checked header: table sizes and counts. */
struct vmdk_layout {
    uint64_t grain_bytes;
    uint64_t grains;      /* grains covering the capacity */
    uint32_t gd_entries;  /* grain tables covering the capacity */
    uint32_t gt_bytes;    /* gtes_per_gt * 4 */
    uint64_t gt_sectors;  /* a grain table rounded up to sectors */
    uint64_t gd_sectors;  /* the grain directory rounded up to sectors */
};

/* Parse and check a 512-byte header from @buf (@len >= 512). @what names it in errors
 * ("'file': header at offset N"). Checks every field that does not depend on the file's
 * size: magic, version, newline bytes, grain size, table sizes, counts, compression.
 * Capacity 0 passes (a descriptor wrapped in a sparse header): the caller decides. */
int vmdk_header_parse(const uint8_t *buf, size_t len, const char *path, uint64_t where,
                      struct vmdk_header *h, struct p2v_err *err);
/* The sizes that follow from a checked header (capacity > 0). */
int vmdk_layout_compute(const struct vmdk_header *h, const char *path,
                        struct vmdk_layout *l, struct p2v_err *err);
/* Write @h as the 512 bytes of a VDF "Hosted Sparse Extents" header (magic and newline
 * bytes included). */
void vmdk_header_encode(const struct vmdk_header *h, uint8_t out[512]);

/* A marker's 16 head bytes, from memory. */
struct vmdk_marker {
    uint64_t val;
    uint32_t size;
    uint32_t type;
};
int vmdk_marker_parse(const uint8_t *buf, size_t len, struct vmdk_marker *m);
void vmdk_marker_encode(uint8_t out[512], uint64_t val, uint32_t size, uint32_t type);

/* ------------------------------------------------------------------ descriptor */

enum vmdk_access {
    VMDK_ACCESS_RW,
    VMDK_ACCESS_RDONLY,
    VMDK_ACCESS_NOACCESS,
};

enum vmdk_ext_type {
    VMDK_EXT_FLAT,   /* FLAT and VMFS: the bytes as they are, at an offset in a file */
    VMDK_EXT_SPARSE, /* SPARSE: a file with a VDF "Hosted Sparse Extents" header */
    VMDK_EXT_ZERO,   /* ZERO: reads as zeros, no file */
};

struct vmdk_desc_extent {
    enum vmdk_access access;
    enum vmdk_ext_type type;
    char type_name[16];       /* as written: "FLAT", "VMFS", ... */
    uint64_t sectors;
    uint64_t offset;          /* FLAT: start in the file, sectors */
    char name[VMDK_NAME_MAX + 1]; /* checked plain name; empty for ZERO */
};

/* A parsed descriptor (VDF "The Descriptor File"). */
struct vmdk_desc {
    uint32_t version;
    uint32_t cid;
    uint32_t parent_cid;
    bool has_cid;
    char create_type[64];
    char adapter_type[32];
    char hw_version[16];
    uint64_t cylinders, heads, sectors; /* 0 when absent */
    size_t n_extents;
    struct vmdk_desc_extent *extents;
};

/* Parse descriptor text (VDF "The Descriptor File") from @text/@len: stops at the first
 * NUL (embedded descriptors are zero-padded). Every extent line is checked: access, a
 * size in sectors (> 0, capped), a known type, a plain file name (no '/', not "." or
 * "..", no control characters), an offset for FLAT. Refuses parent links (parentCID other
 * than ffffffff) and extent types we cannot read. */
int vmdk_desc_parse(const uint8_t *text, size_t len, const char *path,
                    struct vmdk_desc *d, struct p2v_err *err);
void vmdk_desc_release(struct vmdk_desc *d);
/* Check an extent file name from a descriptor: 0 when it is a plain name. */
int vmdk_name_check(const char *name, const char *path, unsigned line, struct p2v_err *err);

/* The adapter types we write (VDF "The Descriptor File", ddb.adapterType), from a user's
 * spelling. NULL for an unknown one. heads: 16 for IDE, 255 for SCSI (VMware's
 * convention). */
const char *vmdk_adapter_canonical(const char *name, uint32_t *heads);

/* Append the descriptor we write (VDF "The Descriptor File"): version 1, @cid, parentCID
 * ffffffff, createType, one extent line per @n extents, the disk database with the
 * geometry computed from @capacity (sectors) for @adapter. */
struct vmdk_desc_out_extent {
    uint64_t sectors;
    const char *type; /* "SPARSE" or "FLAT" */
    const char *name;
};
int vmdk_desc_format(struct p2v_buf *out, uint32_t cid, const char *create_type,
                     const struct vmdk_desc_out_extent *ext, size_t n, uint64_t capacity,
                     const char *adapter, struct p2v_err *err);
/* Geometry the way VMware/qemu compute it: 63 sectors per track, 16 heads (IDE) or 255
 * (SCSI), cylinders = capacity / (heads * 63), IDE capped at 16383 (the ATA CHS limit
 * VMware writes for large IDE disks), at least 1. */
void vmdk_geometry(uint64_t capacity, uint32_t heads, uint64_t *cylinders);

/* ------------------------------------------------------------------ stream writer */

/* The streamOptimized writer (vmdk-stream.c, VDF "Stream-Optimized Compressed Sparse
 * Extents"): grains arrive in increasing order, all-zero grains are skipped, the rest are
 * deflated on worker threads (a bounded queue, so memory does not grow with the disk) and
 * appended, each behind its grain marker; a grain table (behind its marker) follows the
 * grains it maps; at the end come the grain directory, the footer and the end-of-stream
 * marker. Nothing before them says the image is complete: the head header's gdOffset is
 * VMDK_GD_AT_END. */
struct vmdk_stream;

struct vmdk_stream_params {
    int fd;
    const char *path;
    struct vmdk_header header; /* as written at offset 0; the footer copies it */
    uint64_t start_sector;     /* where the first grain goes (header.overhead) */
    unsigned threads;          /* compression threads (>= 1) */
    int level;                 /* zlib level for compressible grains */
};

int vmdk_stream_start(const struct vmdk_stream_params *p, struct vmdk_stream **out,
                      struct p2v_err *err);
/* @off is grain-aligned and not below the end of the previous write. */
int vmdk_stream_write(struct vmdk_stream *s, const void *buf, size_t len, uint64_t off,
                      struct p2v_err *err);
/* Zeros need nothing written; they only must not go back before what was written. */
int vmdk_stream_zero(struct vmdk_stream *s, uint64_t off, uint64_t len,
                     struct p2v_err *err);
/* Write the last grain table, the grain directory, fdatasync, then the footer and the
 * end-of-stream marker, fdatasync. Frees @s whatever happens. */
int vmdk_stream_finish(struct vmdk_stream *s, struct p2v_err *err);
/* Stop the threads and free @s without finishing (the image stays incomplete). */
void vmdk_stream_abandon(struct vmdk_stream *s);
/* Grains written so far (for tests). */
uint64_t vmdk_stream_grains_written(const struct vmdk_stream *s);


#endif /* DISKFMT_VMDK_H */
