/* qcow2-parse.c: the qcow2 parsers that turn untrusted bytes held in memory into checked
 * host values — the header and its extensions, the layout that follows from the header
 * and the file's size, L2 entries, refcount entries — and the header encoder of the
 * writer. No I/O here, so that each one can be unit-tested and fuzzed on its own. Section
 * names are those of QEMU's docs/interop/qcow2.txt ("the spec").
 */
#include <errno.h>
#include <string.h>

#include "qcow2.h"

/* A printable copy of up to @n untrusted bytes for an error message. */
static void printable(char *out, size_t cap, const uint8_t *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        out[k++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    out[k] = '\0';
}

static const char *crypt_name(uint32_t m)
{
    return m == 1 ? "AES" : m == 2 ? "LUKS" : "an unknown method";
}

/* Spec "Header extensions": walk [start, end) of the header cluster held in @buf (@len
 * bytes). Stops at the end marker or at the end of the cluster. */
static int parse_extensions(const uint8_t *buf, size_t len, size_t start, size_t end,
                            const char *path, struct qcow2_header *h,
                            char names[64][QCOW2_FEATURE_NAME_LEN + 1],
                            struct p2v_err *err)
{
    size_t pos = start;
    for (;;) {
        if (end - pos < 8)
            return 0; /* the cluster ends without an end marker: qemu stops there too */
        if (pos > len || len - pos < 8)
            return p2v_err_set(err, EINVAL, "'%s': qcow2 header extensions truncated at "
                               "offset %zu (file of %zu bytes)", path, pos, len);
        uint32_t type = p2v_get_u32be(buf + pos);
        uint32_t elen = p2v_get_u32be(buf + pos + 4);
        size_t at = pos;
        pos += 8;
        if (type == QCOW2_EXT_END)
            return 0;
        if (elen > end - pos)
            return p2v_err_set(err, EINVAL, "'%s': qcow2 header extension 0x%08x at offset "
                               "%zu claims %u bytes, past the end of the header cluster "
                               "(%zu bytes)", path, type, at, elen, end);
        if (elen > len - pos)
            return p2v_err_set(err, EINVAL, "'%s': qcow2 header extension 0x%08x at offset "
                               "%zu (%u bytes) runs past the end of the file", path, type,
                               at, elen);
        /* a hostile header may hold thousands of tiny extensions: harmless, each step
         * moves at least 8 bytes through at most 2 MiB */
        const uint8_t *p = buf + pos;
        switch (type) {
        case QCOW2_EXT_FEATURE_NAMES:
            for (size_t i = 0; i + QCOW2_FEATURE_NAME_ENTRY <= elen;
                 i += QCOW2_FEATURE_NAME_ENTRY) {
                if (p[i] == 0 && p[i + 1] < 64)
                    printable(names[p[i + 1]], QCOW2_FEATURE_NAME_LEN + 1, p + i + 2,
                              strnlen((const char *)p + i + 2, QCOW2_FEATURE_NAME_LEN));
            }
            break;
        case QCOW2_EXT_BITMAPS:
            /* spec "Bitmaps extension": nb_bitmaps, reserved, directory size, offset */
            if (elen < 24)
                return p2v_err_set(err, EINVAL, "'%s': qcow2 bitmaps extension at offset "
                                   "%zu is %u bytes, less than 24", path, at, elen);
            h->has_bitmaps = true;
            h->nb_bitmaps = p2v_get_u32be(p);
            h->bitmap_dir_size = p2v_get_u64be(p + 8);
            h->bitmap_dir_offset = p2v_get_u64be(p + 16);
            break;
        default:
            /* backing format, encryption header pointer and data file name belong to
             * features refused elsewhere; unknown extensions are ignored (spec) */
            break;
        }
        size_t padded = ((size_t)elen + 7) & ~(size_t)7;
        if (padded > end - pos)
            return 0; /* the padding would pass the end of the cluster: nothing follows */
        pos += padded;
    }
}

int qcow2_header_parse(const uint8_t *buf, size_t len, const char *path,
                       struct qcow2_header *h, struct p2v_err *err)
{
    char names[64][QCOW2_FEATURE_NAME_LEN + 1];
    memset(h, 0, sizeof *h);
    if (len < 4 || p2v_get_u32be(buf) != QCOW2_MAGIC)
        return p2v_err_set(err, EINVAL, "'%s': not a qcow2 image (no QFI\\xfb magic at "
                           "offset 0)", path);
    if (len < 8)
        return p2v_err_set(err, EINVAL, "'%s': qcow2 header truncated (%zu bytes)", path,
                           len);
    h->version = p2v_get_u32be(buf + 4);
    if (h->version == 1)
        return p2v_err_set(err, ENOTSUP, "'%s': qcow version 1 images are not supported "
                           "(only qcow2 versions 2 and 3)", path);
    if (h->version != 2 && h->version != 3)
        return p2v_err_set(err, ENOTSUP, "'%s': unsupported qcow2 version %u (header "
                           "offset 4; versions 2 and 3 are)", path, h->version);
    size_t need = h->version == 2 ? QCOW2_V2_HEADER_LEN : QCOW2_V3_HEADER_MIN;
    if (len < need)
        return p2v_err_set(err, EINVAL, "'%s': qcow2 header truncated (%zu of %zu bytes)",
                           path, len, need);
    h->backing_file_offset = p2v_get_u64be(buf + 8);
    h->backing_file_size = p2v_get_u32be(buf + 16);
    h->cluster_bits = p2v_get_u32be(buf + 20);
    h->size = p2v_get_u64be(buf + 24);
    h->crypt_method = p2v_get_u32be(buf + 32);
    h->l1_size = p2v_get_u32be(buf + 36);
    h->l1_table_offset = p2v_get_u64be(buf + 40);
    h->refcount_table_offset = p2v_get_u64be(buf + 48);
    h->refcount_table_clusters = p2v_get_u32be(buf + 56);
    h->nb_snapshots = p2v_get_u32be(buf + 60);
    h->snapshots_offset = p2v_get_u64be(buf + 64);
    if (h->version == 2) {
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LEN;
    } else {
        h->incompatible = p2v_get_u64be(buf + 72);
        h->compatible = p2v_get_u64be(buf + 80);
        h->autoclear = p2v_get_u64be(buf + 88);
        h->refcount_order = p2v_get_u32be(buf + 96);
        h->header_length = p2v_get_u32be(buf + 100);
    }
    if (h->cluster_bits < QCOW2_CLUSTER_BITS_MIN || h->cluster_bits > QCOW2_CLUSTER_BITS_MAX)
        return p2v_err_set(err, EINVAL, "'%s': qcow2 cluster_bits %u (header offset 20) is "
                           "outside %u..%u (512 bytes to 2 MiB)", path, h->cluster_bits,
                           QCOW2_CLUSTER_BITS_MIN, QCOW2_CLUSTER_BITS_MAX);
    size_t cs = (size_t)1 << h->cluster_bits;
    if (h->version == 3) {
        if (h->header_length < QCOW2_V3_HEADER_MIN)
            return p2v_err_set(err, EINVAL, "'%s': qcow2 header_length %u (header offset "
                               "100) is less than %u", path, h->header_length,
                               QCOW2_V3_HEADER_MIN);
        if (h->header_length > cs)
            return p2v_err_set(err, EINVAL, "'%s': qcow2 header_length %u (header offset "
                               "100) exceeds the cluster size %zu", path, h->header_length,
                               cs);
        if (h->header_length > len)
            return p2v_err_set(err, EINVAL, "'%s': qcow2 header truncated (%zu of %u "
                               "bytes)", path, len, h->header_length);
        if (h->refcount_order > 6)
            return p2v_err_set(err, EINVAL, "'%s': qcow2 refcount_order %u (header offset "
                               "96) is more than 6", path, h->refcount_order);
        if (h->header_length > QCOW2_HEADER_COMPRESSION_TYPE)
            h->compression_type = buf[QCOW2_HEADER_COMPRESSION_TYPE];
    }
    if (h->crypt_method != 0)
        return p2v_err_set(err, ENOTSUP, "'%s': the image is encrypted (%s, crypt_method "
                           "%u at header offset 32): encrypted qcow2 images are not "
                           "supported", path, crypt_name(h->crypt_method), h->crypt_method);
    if (h->backing_file_offset != 0) {
        char name[QCOW2_BACKING_NAME_MAX + 1] = "";
        if (h->backing_file_size <= QCOW2_BACKING_NAME_MAX &&
            p2v_range_ok(h->backing_file_offset, h->backing_file_size, len))
            printable(name, sizeof name, buf + h->backing_file_offset,
                      h->backing_file_size);
        return p2v_err_set(err, ENOTSUP, "'%s': the image has a backing file%s%s%s (header "
                           "offset 8): backing chains are not supported; flatten it first "
                           "(qemu-img convert -O qcow2)", path, name[0] ? " '" : "", name,
                           name[0] ? "'" : "");
    }
    memset(names, 0, sizeof names);
    size_t ext_end = cs;
    if (parse_extensions(buf, len, h->header_length, ext_end, path, h, names, err) < 0)
        return -1;
    if (h->incompatible & QCOW2_INCOMPAT_DATA_FILE)
        return p2v_err_set(err, ENOTSUP, "'%s': the image keeps its data in an external "
                           "data file (incompatible feature bit 2), which is not supported",
                           path);
    if (h->incompatible & QCOW2_INCOMPAT_EXTL2)
        return p2v_err_set(err, ENOTSUP, "'%s': the image uses extended L2 entries "
                           "(subclusters, incompatible feature bit 4), which are not "
                           "supported", path);
    uint64_t unknown = h->incompatible & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown) {
        unsigned bit = (unsigned)__builtin_ctzll(unknown);
        return p2v_err_set(err, ENOTSUP, "'%s': the image uses unknown incompatible "
                           "features 0x%llx (bit %u%s%s%s)", path,
                           (unsigned long long)unknown, bit, names[bit][0] ? ": '" : "",
                           names[bit], names[bit][0] ? "'" : "");
    }
    if (h->incompatible & QCOW2_INCOMPAT_COMPRESSION) {
        if (h->compression_type == QCOW2_COMPRESSION_ZLIB)
            return p2v_err_set(err, EINVAL, "'%s': the compression type bit is set but "
                               "compression_type (header offset 104) is zlib or absent",
                               path);
    } else if (h->compression_type != QCOW2_COMPRESSION_ZLIB) {
        return p2v_err_set(err, EINVAL, "'%s': compression_type %u (header offset 104) "
                           "without the compression type bit (incompatible feature bit 3)",
                           path, h->compression_type);
    }
    if (h->compression_type > QCOW2_COMPRESSION_ZSTD)
        return p2v_err_set(err, ENOTSUP, "'%s': unknown compression_type %u (header offset "
                           "104; 0 zlib and 1 zstd are known)", path, h->compression_type);
    return 0;
}

bool qcow2_l1_entries_for(uint64_t size, unsigned cluster_bits, uint64_t *out)
{
    /* one L2 table maps (cluster / 8) clusters: 2^(2 * cluster_bits - 3) bytes */
    unsigned span_bits = 2 * cluster_bits - 3;
    *out = (size >> span_bits) + ((size & ((UINT64_C(1) << span_bits) - 1)) != 0);
    return true;
}

static bool overlaps(uint64_t a, uint64_t an, uint64_t b, uint64_t bn)
{
    return an && bn && a < b + bn && b < a + an;
}

int qcow2_layout_check(const struct qcow2_header *h, uint64_t file_size, const char *path,
                       struct qcow2_layout *l, struct p2v_err *err)
{
    memset(l, 0, sizeof *l);
    uint64_t cs = UINT64_C(1) << h->cluster_bits;
    l->cluster_size = (uint32_t)cs;
    l->l2_entries = (uint32_t)(cs / 8);
    l->l2_span = cs * (cs / 8);
    l->refcount_bits = 1u << h->refcount_order;
    qcow2_l1_entries_for(h->size, h->cluster_bits, &l->l1_needed);
    if (l->l1_needed > QCOW2_L1_MAX_BYTES / 8)
        return p2v_err_set(err, EFBIG, "'%s': virtual size %llu (header offset 24) needs "
                           "%llu L1 entries at %llu-byte clusters, more than the %u qemu "
                           "allows", path, (unsigned long long)h->size,
                           (unsigned long long)l->l1_needed, (unsigned long long)cs,
                           QCOW2_L1_MAX_BYTES / 8);
    if (h->l1_size < l->l1_needed)
        return p2v_err_set(err, EINVAL, "'%s': the L1 table (%u entries, header offset 36) "
                           "is too small for the virtual size %llu (%llu entries needed)",
                           path, h->l1_size, (unsigned long long)h->size,
                           (unsigned long long)l->l1_needed);
    if (h->l1_size > QCOW2_L1_MAX_BYTES / 8)
        return p2v_err_set(err, EFBIG, "'%s': the L1 table of %u entries (header offset 36) "
                           "is larger than %u MiB", path, h->l1_size,
                           QCOW2_L1_MAX_BYTES >> 20);
    l->l1_bytes = (uint64_t)h->l1_size * 8;
    if (h->l1_size) {
        if (h->l1_table_offset % cs)
            return p2v_err_set(err, EINVAL, "'%s': L1 table offset %llu (header offset 40) "
                               "is not aligned to the cluster size %llu", path,
                               (unsigned long long)h->l1_table_offset,
                               (unsigned long long)cs);
        if (h->l1_table_offset < cs)
            return p2v_err_set(err, EINVAL, "'%s': the L1 table at offset %llu (header "
                               "offset 40) overlaps the header", path,
                               (unsigned long long)h->l1_table_offset);
        if (!p2v_range_ok(h->l1_table_offset, l->l1_bytes, file_size))
            return p2v_err_set(err, EINVAL, "'%s': the L1 table at offset %llu (%llu bytes, "
                               "header offset 40) lies past the end of the file (%llu "
                               "bytes)", path, (unsigned long long)h->l1_table_offset,
                               (unsigned long long)l->l1_bytes,
                               (unsigned long long)file_size);
    }
    if (h->refcount_table_clusters == 0)
        return p2v_err_set(err, EINVAL, "'%s': the image has no refcount table (header "
                           "offset 56)", path);
    if (h->refcount_table_clusters > QCOW2_REFT_MAX_BYTES / cs)
        return p2v_err_set(err, EFBIG, "'%s': the refcount table of %u clusters (header "
                           "offset 56) is larger than %u MiB", path,
                           h->refcount_table_clusters, QCOW2_REFT_MAX_BYTES >> 20);
    l->reft_bytes = (uint64_t)h->refcount_table_clusters * cs;
    if (h->refcount_table_offset % cs || h->refcount_table_offset < cs)
        return p2v_err_set(err, EINVAL, "'%s': refcount table offset %llu (header offset "
                           "48) is %s", path, (unsigned long long)h->refcount_table_offset,
                           h->refcount_table_offset < cs ? "inside the header"
                                                         : "not aligned to the cluster size");
    if (!p2v_range_ok(h->refcount_table_offset, l->reft_bytes, file_size))
        return p2v_err_set(err, EINVAL, "'%s': the refcount table at offset %llu (%llu "
                           "bytes, header offset 48) lies past the end of the file (%llu "
                           "bytes)", path, (unsigned long long)h->refcount_table_offset,
                           (unsigned long long)l->reft_bytes, (unsigned long long)file_size);
    if (overlaps(h->l1_table_offset, l->l1_bytes, h->refcount_table_offset, l->reft_bytes))
        return p2v_err_set(err, EINVAL, "'%s': the L1 table at offset %llu overlaps the "
                           "refcount table at offset %llu", path,
                           (unsigned long long)h->l1_table_offset,
                           (unsigned long long)h->refcount_table_offset);
    if (h->nb_snapshots > QCOW2_SNAPSHOTS_MAX)
        return p2v_err_set(err, EINVAL, "'%s': %u snapshots (header offset 60), more than "
                           "%u", path, h->nb_snapshots, QCOW2_SNAPSHOTS_MAX);
    if (h->nb_snapshots &&
        (h->snapshots_offset % cs || h->snapshots_offset < cs ||
         h->snapshots_offset >= file_size))
        return p2v_err_set(err, EINVAL, "'%s': snapshot table offset %llu (header offset "
                           "64) is misaligned, inside the header or past the end of the "
                           "file", path, (unsigned long long)h->snapshots_offset);
    if (h->has_bitmaps && (h->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
        if (h->nb_bitmaps == 0 || h->nb_bitmaps > QCOW2_BITMAPS_MAX ||
            h->bitmap_dir_size > QCOW2_BITMAP_DIR_MAX || h->bitmap_dir_offset % cs ||
            h->bitmap_dir_offset < cs ||
            !p2v_range_ok(h->bitmap_dir_offset, h->bitmap_dir_size, file_size))
            return p2v_err_set(err, EINVAL, "'%s': the bitmaps extension is malformed (%u "
                               "bitmaps, directory of %llu bytes at offset %llu)", path,
                               h->nb_bitmaps, (unsigned long long)h->bitmap_dir_size,
                               (unsigned long long)h->bitmap_dir_offset);
    }
    return 0;
}

void qcow2_header_encode(const struct qcow2_header *h, uint8_t *out)
{
    memset(out, 0, QCOW2_ENCODED_HEADER_LEN);
    p2v_put_u32be(out, QCOW2_MAGIC);
    p2v_put_u32be(out + 4, 3);
    p2v_put_u32be(out + 20, h->cluster_bits);
    p2v_put_u64be(out + 24, h->size);
    p2v_put_u32be(out + 36, h->l1_size);
    p2v_put_u64be(out + 40, h->l1_table_offset);
    p2v_put_u64be(out + 48, h->refcount_table_offset);
    p2v_put_u32be(out + 56, h->refcount_table_clusters);
    p2v_put_u64be(out + 72, h->incompatible);
    p2v_put_u64be(out + 80, h->compatible);
    p2v_put_u64be(out + 88, h->autoclear);
    p2v_put_u32be(out + 96, h->refcount_order);
    p2v_put_u32be(out + 100, QCOW2_V3_HEADER_LEN);
    out[QCOW2_HEADER_COMPRESSION_TYPE] = h->compression_type;
    /* bytes 105..111: padding; 112..119: the end-of-extensions marker (type 0, length 0) */
}

int qcow2_l2_decode(uint64_t e, unsigned cluster_bits, unsigned version,
                    struct qcow2_centry *c, const char **why)
{
    memset(c, 0, sizeof *c);
    c->copied = (e & QCOW2_OFLAG_COPIED) != 0;
    if (e & QCOW2_OFLAG_COMPRESSED) {
        /* spec "Compressed Clusters Descriptor" */
        unsigned shift = qcow2_csize_shift(cluster_bits);
        uint64_t off = e & ((UINT64_C(1) << shift) - 1);
        if (off >> 56) {
            *why = "has reserved bits set in its compressed offset";
            return -1;
        }
        c->type = QCOW2_COMPRESSED;
        c->off = off;
        c->nsec = ((e >> shift) & ((UINT64_C(1) << (cluster_bits - 8)) - 1)) + 1;
        return 0;
    }
    /* spec "Standard Cluster Descriptor" */
    if (e & QCOW2_L2_STD_RESERVED) {
        *why = "has reserved bits set";
        return -1;
    }
    uint64_t off = e & QCOW2_OFFSET_MASK;
    if (off & ((UINT64_C(1) << cluster_bits) - 1)) {
        *why = "has a host offset not aligned to the cluster size";
        return -1;
    }
    bool zero = (e & QCOW2_OFLAG_ZERO) != 0;
    if (zero && version < 3) {
        *why = "has the zero flag, which version 2 images do not have";
        return -1;
    }
    c->off = off;
    c->type = zero ? (off ? QCOW2_ZERO_ALLOC : QCOW2_ZERO_PLAIN)
                   : (off ? QCOW2_NORMAL : QCOW2_UNALLOCATED);
    return 0;
}

uint64_t qcow2_refcount_get(const uint8_t *blk, uint64_t index, unsigned order)
{
    unsigned bits = 1u << order;
    switch (bits) {
    case 1:
    case 2:
    case 4: {
        /* spec "Host cluster management": sub-byte widths start at the least
         * significant bit */
        uint64_t bit = index * bits;
        return (uint64_t)(blk[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    case 8:
        return blk[index];
    case 16:
        return p2v_get_u16be(blk + 2 * index);
    case 32:
        return p2v_get_u32be(blk + 4 * index);
    default:
        return p2v_get_u64be(blk + 8 * index);
    }
}

