/* qcow2.h: private to the qcow2 driver (disk-formats/qcow2*.c), its unit test and its fuzz
 * harness. The on-disk layout of QEMU's qcow2 format (versions 2 and 3, "docs/interop/
 * qcow2.txt" in QEMU, called "the spec" below, its sections cited by title), the named
 * caps every value read from an image is checked against, the parsers that turn untrusted
 * header bytes and table entries into checked host values (qcow2-parse.c, free of I/O so
 * that they can be tested and fuzzed on their own), and the driver state shared by the
 * reader (qcow2.c), the writer (qcow2-write.c) and the checker (qcow2-check.c).
 */
#ifndef DISKFMT_QCOW2_H
#define DISKFMT_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diskfmt-int.h"

/* Spec "Header": the file starts with "QFI\xfb". */
#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_V2_HEADER_LEN 72u
#define QCOW2_V3_HEADER_MIN 104u
/* What we write: the version 3 fields, compression_type (byte 104) and the padding that
 * makes header_length a multiple of 8 (spec "Header padding"). */
#define QCOW2_V3_HEADER_LEN 112u
#define QCOW2_HEADER_COMPRESSION_TYPE 104u
/* Byte offset of incompatible_features in a version 3 header (the dirty bit lives here). */
#define QCOW2_HEADER_INCOMPAT 72u

/* Spec "Header", cluster_bits: at least 9; qemu's implementation limit is 2 MiB. */
#define QCOW2_CLUSTER_BITS_MIN 9u
#define QCOW2_CLUSTER_BITS_MAX 21u

/* Spec "Header", incompatible_features. */
#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1full
/* compatible_features / autoclear_features bits we name in `info`. */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)

/* Spec "Additional fields", compression_type. */
#define QCOW2_COMPRESSION_ZLIB 0u
#define QCOW2_COMPRESSION_ZSTD 1u

/* Spec "Header extensions": types. */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_NAMES 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u
/* Spec "Feature name table": one entry is type, bit, 46 bytes of name. */
#define QCOW2_FEATURE_NAME_ENTRY 48u
#define QCOW2_FEATURE_NAME_LEN 46u

/* Spec "Cluster mapping": L1 and L2 entries. */
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)
#define QCOW2_OFFSET_MASK 0x00fffffffffffe00ull     /* bits 9-55 */
#define QCOW2_L1_RESERVED 0x7f000000000001ffull     /* bits 0-8 and 56-62 */
#define QCOW2_L2_STD_RESERVED 0x3f000000000001feull /* bits 1-8 and 56-61 */
/* Spec "Host cluster management": refcount table entries. */
#define QCOW2_REFT_RESERVED 0x1ffull
#define QCOW2_SECTOR 512u

/* ------------------------------------------------------------------ named caps */

/* The active L1 table in bytes: qemu's implementation limit (spec "Header", size), which
 * also caps the virtual size (2 EiB at 2 MiB clusters, 128 GiB at 512-byte clusters). The
 * table is held in memory, so a header cannot make us allocate more. */
#define QCOW2_L1_MAX_BYTES (32u << 20)
/* The refcount table in bytes: qemu's limit is 8 MiB; allow more for foreign writers. */
#define QCOW2_REFT_MAX_BYTES (64u << 20)
/* Internal snapshots: qemu's limit (QCOW_MAX_SNAPSHOTS). */
#define QCOW2_SNAPSHOTS_MAX 65536u
/* The snapshot table in bytes (qemu caps it at 64 MiB too). */
#define QCOW2_SNAPSHOT_TABLE_MAX (64u << 20)
/* Spec "Header", backing_file_size: at most 1023 bytes. */
#define QCOW2_BACKING_NAME_MAX 1023u
/* Persistent bitmaps (spec "Bitmaps extension"): qemu's limits. */
#define QCOW2_BITMAPS_MAX 65535u
#define QCOW2_BITMAP_DIR_MAX (64u << 20)

/* ------------------------------------------------------------------ header */

/* A header in host order, checked by qcow2_header_parse. Version 2 fields that version 3
 * added read as the spec says they default: no features, refcount_order 4, zlib. */
struct qcow2_header {
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible;
    uint64_t compatible;
    uint64_t autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    /* from the header extensions */
    bool has_bitmaps;
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_size;
    uint64_t bitmap_dir_offset;
};

/* Parse and check the header cluster: @buf holds the file's first min(file size, cluster
 * size) bytes — or, before the cluster size is known, at least the header itself.
 * Checks what does not depend on the file's size: magic, version, cluster_bits,
 * header_length, refcount_order, the feature bits (refusing encryption, backing files,
 * external data files, extended L2 entries and unknown incompatible features, each with
 * its own message), the compression type, and walks the header extensions, which must
 * lie inside the header cluster. The dirty and corrupt bits are the caller's to judge.
 * Errors name @path and the offset. */
int qcow2_header_parse(const uint8_t *buf, size_t len, const char *path,
                       struct qcow2_header *h, struct p2v_err *err);

/* What follows from a checked header and the file's size: table sizes checked against
 * the caps, tables aligned and inside the file, the L1 table large enough for the
 * virtual size. */
struct qcow2_layout {
    uint32_t cluster_size;
    uint32_t l2_entries;     /* entries per L2 table (cluster_size / 8) */
    uint64_t l2_span;        /* virtual bytes one L2 table maps */
    uint64_t l1_needed;      /* L1 entries covering the virtual size */
    uint64_t l1_bytes;
    uint64_t reft_bytes;
    uint32_t refcount_bits;
};
int qcow2_layout_check(const struct qcow2_header *h, uint64_t file_size, const char *path,
                       struct qcow2_layout *l, struct p2v_err *err);

/* L1 entries covering @size bytes at @cluster_bits; false when it overflows. */
bool qcow2_l1_entries_for(uint64_t size, unsigned cluster_bits, uint64_t *out);

/* Write @h as the QCOW2_V3_HEADER_LEN bytes of a version 3 header followed by the
 * end-of-extensions marker (8 zero bytes) into @out (at least 120 bytes). */
#define QCOW2_ENCODED_HEADER_LEN (QCOW2_V3_HEADER_LEN + 8u)
void qcow2_header_encode(const struct qcow2_header *h, uint8_t *out);

/* ------------------------------------------------------------------ entries */

enum qcow2_ctype {
    QCOW2_UNALLOCATED,  /* reads as zeros (no backing file) */
    QCOW2_ZERO_PLAIN,   /* zero flag, no host cluster */
    QCOW2_ZERO_ALLOC,   /* zero flag with a preallocated host cluster */
    QCOW2_NORMAL,       /* data in a host cluster */
    QCOW2_COMPRESSED,   /* compressed data at a byte offset */
};

/* A decoded L2 entry (spec "Cluster mapping"). For compressed clusters @off is the byte
 * offset of the data and @nsec the number of 512-byte sectors it spans, counted from the
 * sector holding @off: the data are at most nsec * 512 - (off % 512) bytes. */
struct qcow2_centry {
    enum qcow2_ctype type;
    uint64_t off;
    uint64_t nsec;
    bool copied;
};

/* Decode an L2 entry. -1 with *why set (a static phrase) when the entry is malformed:
 * reserved bits set, a host offset not aligned to the cluster, a zero flag in a version 2
 * image. A compressed entry with the copied flag decodes (readers may ignore the flag;
 * `check` calls it an error). */
int qcow2_l2_decode(uint64_t e, unsigned cluster_bits, unsigned version,
                    struct qcow2_centry *c, const char **why);

/* The bit where a compressed descriptor's sector count starts (spec "Compressed Clusters
 * Descriptor": x = 62 - (cluster_bits - 8)). */
static inline unsigned qcow2_csize_shift(unsigned cluster_bits)
{
    return 62u - (cluster_bits - 8u);
}

/* A refcount block entry of @bits (1..64) at @index of the block @blk (big-endian for
 * 8 bits and up, least significant bit first below). */
uint64_t qcow2_refcount_get(const uint8_t *blk, uint64_t index, unsigned order);


/* ------------------------------------------------------------------ driver state */

/* One cached L2 table, in host order. */
struct qcow2_l2slot {
    uint64_t l1i;
    bool valid, dirty;
    uint64_t used;
    uint64_t *e;
};

/* A metadata region of the file that data clusters must not point into. */
struct qcow2_region {
    uint64_t start, len;
    const char *what;
};

struct qcow2_writer;

struct qcow2 {
    int fd;
    const char *path;          /* the handle's path (for messages) */
    struct qcow2_header h;
    struct qcow2_layout l;
    unsigned cb;               /* cluster_bits */
    uint32_t cs;               /* cluster size */
    uint64_t file_size;        /* the file's size at open (the writer's end while writing) */
    uint64_t *l1;              /* host order, h.l1_size entries */
    uint64_t *l2_sorted;       /* reader: offsets of the L2 tables, sorted */
    size_t n_l2;
    struct qcow2_region meta[4];
    unsigned n_meta;

    struct qcow2_l2slot *slots;
    unsigned nslots;
    uint64_t *slot_mem;
    uint64_t tick;
    unsigned last;
    uint8_t *tbuf;             /* one cluster: L2 tables in disk order, RMW */

    /* compressed reads: the compressed bytes and the last cluster inflated */
    uint8_t *cbuf;
    size_t cbuf_cap;
    uint8_t *dbuf;
    uint64_t dbuf_host;        /* the compressed entry dbuf holds */
    bool dbuf_ok;
    void *zin;                 /* z_stream, allocated on first use */
    void *zd;                  /* ZSTD_DCtx, allocated on first use */

    struct qcow2_writer *w;    /* NULL unless writing (created or resumed) */
};

/* qcow2.c: the L2 table cache shared by reader and writer. The table of L1 entry @l1i;
 * *out NULL when it has none and @alloc is false. With @alloc (writer only) a table is
 * allocated, zeroed, and its L1 entry set. */
int qcow2_l2_get(struct qcow2 *q, uint64_t l1i, bool alloc, struct qcow2_l2slot **out,
                 struct p2v_err *err);
/* Write every dirty cached table back. */
int qcow2_l2_flush_all(struct qcow2 *q, struct p2v_err *err);
/* Write one table (host-order entries) at @off. */
int qcow2_table_write(struct qcow2 *q, const uint64_t *e, size_t n, uint64_t off,
                      struct p2v_err *err);
/* Free everything (closing the file). */
void qcow2_free(struct qcow2 *q);
/* Allocate the state common to reading and writing: the L1 table of @l1_size entries and
 * the L2 cache. q->cs / q->cb / q->l must be set. */
int qcow2_alloc_state(struct qcow2 *q, struct p2v_err *err);
int qcow2_open_file(struct qcow2 *q, int oflags, bool allow_blk, struct p2v_err *err);
int qcow2_read_header_cluster(struct qcow2 *q, uint8_t **out, size_t *out_len,
                              struct p2v_err *err);
int qcow2_read_exact(struct qcow2 *q, void *buf, size_t len, uint64_t off,
                     struct p2v_err *err);
int qcow2_write_exact(struct qcow2 *q, const void *buf, size_t len, uint64_t off,
                      struct p2v_err *err);

/* qcow2-write.c */
int qcow2_create(struct diskfmt *d, const struct diskfmt_create_opts *opts,
                 struct p2v_err *err);
int qcow2_w_pwrite(struct diskfmt *d, const void *buf, size_t len, uint64_t off,
                   struct p2v_err *err);
int qcow2_w_zero(struct diskfmt *d, uint64_t off, uint64_t len, struct p2v_err *err);
int qcow2_w_flush(struct diskfmt *d, struct p2v_err *err);
/* Flush without the fdatasync; *mark the end (random writes only: ENOTSUP else). */
int qcow2_w_checkpoint(struct diskfmt *d, uint64_t *mark, struct p2v_err *err);
/* Reopen for writing an image of ours left dirty, as it was at the checkpoint that
 * returned @mark (the file cut at @mark, entries pointing at or past it cleared). */
int qcow2_resume(struct diskfmt *d, uint64_t mark, struct p2v_err *err);
/* Finish (@finish) or abandon the image being written; frees the writer. */
int qcow2_w_close(struct qcow2 *q, bool finish, struct p2v_err *err);
/* Make everything written so far visible to readers of the handle (compressed writes
 * are queued). */
int qcow2_w_settle(struct qcow2 *q, struct p2v_err *err);
/* Allocate one cluster for the L2 table of L1 entry @l1i, set the entry and write it to
 * disk at once (called by qcow2_l2_get; see qcow2-write.c on why at once). */
int qcow2_w_alloc_table(struct qcow2 *q, uint64_t l1i, struct p2v_err *err);
void qcow2_w_free(struct qcow2_writer *w);
/* info members of the writer (compression in use). */
const char *qcow2_w_compression(const struct qcow2 *q);

/* qcow2-check.c */
int qcow2_check(struct diskfmt *d, struct diskfmt_check *res, struct p2v_err *err);

#endif /* DISKFMT_QCOW2_H */
