/* vhd-parse.c: the VHD and VHDX drivers' parsers and encoders of on-disk metadata, from
 * and to memory, with no file I/O: the VHD footer and dynamic disk header (VHDSPEC), the
 * VHDX headers, region table and metadata (MS-VHDX), their checksums, the VHD geometry,
 * and the validation helpers both drivers share. Every byte comes through
 * `struct p2v_rd`; every number is checked against a named cap in vhd.h before it is used
 * in arithmetic, so that hostile images end in a clear error. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vhd.h"

/* ------------------------------------------------------------------ VHD footer */

uint32_t vhd_checksum(const uint8_t *p, size_t len, size_t skip)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < skip || i >= skip + 4)
            sum += p[i];
    return ~sum;
}

bool vhd_footer_cookie(const uint8_t *buf, size_t len)
{
    return len >= VHD_FOOTER_SIZE && memcmp(buf, "conectix", 8) == 0;
}

bool vhd_footer_valid(const uint8_t *buf, size_t len)
{
    return vhd_footer_cookie(buf, len) &&
           p2v_get_u32be(buf + 64) == vhd_checksum(buf, VHD_FOOTER_SIZE, 64);
}

int vhd_footer_parse(const uint8_t *buf, size_t len, const char *path, uint64_t where,
                     struct vhd_footer *out, struct p2v_err *err)
{
    struct p2v_rd r;
    struct vhd_footer f;
    uint8_t cookie[8];
    uint16_t geo_c;
    unsigned long long at = (unsigned long long)where;

    memset(&f, 0, sizeof f);
    p2v_rd_init(&r, buf, len);
    /* VHDSPEC "Hard Disk Footer Format": fields in this order, big-endian */
    if (len < VHD_FOOTER_SIZE || p2v_rd_bytes(&r, cookie, 8) < 0 ||
        p2v_rd_u32be(&r, &f.features) < 0 ||
        p2v_rd_u32be(&r, &f.version) < 0 || p2v_rd_u64be(&r, &f.data_offset) < 0 ||
        p2v_rd_u32be(&r, &f.timestamp) < 0 || p2v_rd_bytes(&r, f.creator_app, 4) < 0 ||
        p2v_rd_u32be(&r, &f.creator_version) < 0 ||
        p2v_rd_bytes(&r, f.creator_os, 4) < 0 || p2v_rd_u64be(&r, &f.original_size) < 0 ||
        p2v_rd_u64be(&r, &f.current_size) < 0 || p2v_rd_u16be(&r, &geo_c) < 0 ||
        p2v_rd_u8(&r, &f.heads) < 0 || p2v_rd_u8(&r, &f.sectors_per_track) < 0 ||
        p2v_rd_u32be(&r, &f.disk_type) < 0 || p2v_rd_u32be(&r, &f.checksum) < 0 ||
        p2v_rd_bytes(&r, f.unique_id, 16) < 0 || p2v_rd_u8(&r, &f.saved_state) < 0)
        return p2v_err_set(err, EINVAL, "'%s': VHD footer at offset %llu is truncated "
                           "(%zu of 512 bytes)", path, at, len);
    f.cylinders = geo_c;
    if (memcmp(cookie, "conectix", 8) != 0)
        return p2v_err_set(err, EINVAL, "'%s': no VHD footer (cookie 'conectix') at offset "
                           "%llu", path, at);
    uint32_t sum = vhd_checksum(buf, VHD_FOOTER_SIZE, 64);
    if (sum != f.checksum)
        return p2v_err_set(err, EINVAL, "'%s': the VHD footer at offset %llu is corrupt: "
                           "checksum 0x%08x, the bytes sum to 0x%08x", path, at, f.checksum,
                           sum);
    /* VHDSPEC: "the major version ... is incremented when the format changes in a way
     * that older readers cannot handle" */
    if ((f.version >> 16) != 1)
        return p2v_err_set(err, ENOTSUP, "'%s': VHD footer at offset %llu has format "
                           "version %u.%u; only 1.x is known", path, at, f.version >> 16,
                           f.version & 0xffff);
    if (f.disk_type == VHD_TYPE_DIFF)
        return p2v_err_set(err, ENOTSUP, "'%s': differencing VHD needs its parent (footer "
                           "at offset %llu): merge or convert the chain with the tool that "
                           "made it first", path, at);
    if (f.disk_type != VHD_TYPE_FIXED && f.disk_type != VHD_TYPE_DYNAMIC)
        return p2v_err_set(err, ENOTSUP, "'%s': unknown VHD disk type %u in the footer at "
                           "offset %llu (2 fixed and 3 dynamic are known)", path,
                           f.disk_type, at);
    if (f.current_size == 0 || f.current_size % VHD_SECTOR)
        return p2v_err_set(err, EINVAL, "'%s': VHD footer at offset %llu gives a disk size "
                           "of %llu bytes, not a positive number of 512-byte sectors", path,
                           at, (unsigned long long)f.current_size);
    *out = f;
    return 0;
}

void vhd_footer_encode(const struct vhd_footer *f, uint8_t out[VHD_FOOTER_SIZE])
{
    memset(out, 0, VHD_FOOTER_SIZE);
    memcpy(out, "conectix", 8);
    p2v_put_u32be(out + 8, f->features);
    p2v_put_u32be(out + 12, f->version);
    p2v_put_u64be(out + 16, f->data_offset);
    p2v_put_u32be(out + 24, f->timestamp);
    memcpy(out + 28, f->creator_app, 4);
    p2v_put_u32be(out + 32, f->creator_version);
    memcpy(out + 36, f->creator_os, 4);
    p2v_put_u64be(out + 40, f->original_size);
    p2v_put_u64be(out + 48, f->current_size);
    p2v_put_u16be(out + 56, f->cylinders);
    out[58] = f->heads;
    out[59] = f->sectors_per_track;
    p2v_put_u32be(out + 60, f->disk_type);
    memcpy(out + 68, f->unique_id, 16);
    out[84] = f->saved_state;
    p2v_put_u32be(out + 64, vhd_checksum(out, VHD_FOOTER_SIZE, 64));
}

/* ------------------------------------------------------------------ VHD dynamic header */

int vhd_dyn_header_parse(const uint8_t *buf, size_t len, const char *path, uint64_t where,
                         struct vhd_dyn_header *out, struct p2v_err *err)
{
    struct p2v_rd r;
    struct vhd_dyn_header h;
    uint8_t cookie[8];
    unsigned long long at = (unsigned long long)where;

    memset(&h, 0, sizeof h);
    p2v_rd_init(&r, buf, len);
    /* VHDSPEC "Dynamic Disk Header Format": fields in this order, big-endian */
    if (len < VHD_DYN_HEADER_SIZE || p2v_rd_bytes(&r, cookie, 8) < 0 ||
        p2v_rd_u64be(&r, &h.data_offset) < 0 || p2v_rd_u64be(&r, &h.table_offset) < 0 ||
        p2v_rd_u32be(&r, &h.version) < 0 || p2v_rd_u32be(&r, &h.max_entries) < 0 ||
        p2v_rd_u32be(&r, &h.block_size) < 0 || p2v_rd_u32be(&r, &h.checksum) < 0 ||
        p2v_rd_bytes(&r, h.parent_id, 16) < 0)
        return p2v_err_set(err, EINVAL, "'%s': VHD dynamic disk header at offset %llu is "
                           "truncated (%zu of 1024 bytes)", path, at, len);
    if (memcmp(cookie, "cxsparse", 8) != 0)
        return p2v_err_set(err, EINVAL, "'%s': no VHD dynamic disk header (cookie "
                           "'cxsparse') at offset %llu", path, at);
    uint32_t sum = vhd_checksum(buf, VHD_DYN_HEADER_SIZE, 36);
    if (sum != h.checksum)
        return p2v_err_set(err, EINVAL, "'%s': the VHD dynamic disk header at offset %llu "
                           "is corrupt: checksum 0x%08x, the bytes sum to 0x%08x", path, at,
                           h.checksum, sum);
    if ((h.version >> 16) != 1)
        return p2v_err_set(err, ENOTSUP, "'%s': VHD dynamic disk header at offset %llu has "
                           "version %u.%u; only 1.x is known", path, at, h.version >> 16,
                           h.version & 0xffff);
    if (!p2v_is_pow2(h.block_size) || h.block_size < VHD_BLOCK_MIN ||
        h.block_size > VHD_BLOCK_MAX)
        return p2v_err_set(err, EINVAL, "'%s': VHD dynamic disk header at offset %llu has a "
                           "block size of %u bytes, not a power of two from %u to %u",
                           path, at, h.block_size, VHD_BLOCK_MIN, VHD_BLOCK_MAX);
    if (h.max_entries == 0)
        return p2v_err_set(err, EINVAL, "'%s': VHD dynamic disk header at offset %llu has "
                           "an empty block allocation table", path, at);
    *out = h;
    return 0;
}

void vhd_dyn_header_encode(const struct vhd_dyn_header *h, uint8_t out[VHD_DYN_HEADER_SIZE])
{
    memset(out, 0, VHD_DYN_HEADER_SIZE);
    memcpy(out, "cxsparse", 8);
    p2v_put_u64be(out + 8, h->data_offset);
    p2v_put_u64be(out + 16, h->table_offset);
    p2v_put_u32be(out + 24, h->version);
    p2v_put_u32be(out + 28, h->max_entries);
    p2v_put_u32be(out + 32, h->block_size);
    memcpy(out + 40, h->parent_id, 16);
    p2v_put_u32be(out + 36, vhd_checksum(out, VHD_DYN_HEADER_SIZE, 36));
}

uint32_t vhd_bitmap_size(uint32_t block_size)
{
    uint32_t bytes = block_size / VHD_SECTOR / 8;
    return (bytes + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
}

/* VHDSPEC "CHS Calculation", as written there. */
void vhd_geometry(uint64_t sectors, uint16_t *cylinders, uint8_t *heads, uint8_t *spt)
{
    uint64_t total = P2V_MIN(sectors, VHD_CHS_MAX_SECTORS);
    uint64_t s, h, cth;
    if (total >= UINT64_C(65535) * 16 * 63) {
        s = 255;
        h = 16;
        cth = total / s;
    } else {
        s = 17;
        cth = total / s;
        h = (cth + 1023) / 1024;
        if (h < 4)
            h = 4;
        if (cth >= h * 1024 || h > 16) {
            s = 31;
            h = 16;
            cth = total / s;
        }
        if (cth >= h * 1024) {
            s = 63;
            h = 16;
            cth = total / s;
        }
    }
    *cylinders = (uint16_t)(cth / h); /* total <= 65535*16*255: cth / h <= 65535 */
    *heads = (uint8_t)h;
    *spt = (uint8_t)s;
}

/* ------------------------------------------------------------------ VHDX */

#define GUID(a, b, c, d0, d1, d2, d3, d4, d5, d6, d7)                                     \
    {(uint8_t)(a), (uint8_t)((a) >> 8), (uint8_t)((a) >> 16), (uint8_t)((a) >> 24),       \
     (uint8_t)(b), (uint8_t)((b) >> 8), (uint8_t)(c), (uint8_t)((c) >> 8), d0, d1, d2, d3, \
     d4, d5, d6, d7}

/* MS-VHDX 2.2.3.2 and 2.6.2: the known regions and metadata items. */
const uint8_t vhdx_guids[VHDX_GUID_COUNT][16] = {
    [VHDX_GUID_BAT] = GUID(0x2DC27766u, 0xF623u, 0x4200u, 0x9D, 0x64, 0x11, 0x5E, 0x9B,
                           0xFD, 0x4A, 0x08),
    [VHDX_GUID_METADATA] = GUID(0x8B7CA206u, 0x4790u, 0x4B9Au, 0xB8, 0xFE, 0x57, 0x5F,
                                0x05, 0x0F, 0x88, 0x6E),
    [VHDX_GUID_FILE_PARAMETERS] = GUID(0xCAA16737u, 0xFA36u, 0x4D43u, 0xB3, 0xB6, 0x33,
                                       0xF0, 0xAA, 0x44, 0xE7, 0x6B),
    [VHDX_GUID_VIRTUAL_DISK_SIZE] = GUID(0x2FA54224u, 0xCD1Bu, 0x4876u, 0xB2, 0x11, 0x5D,
                                         0xBE, 0xD8, 0x3B, 0xF4, 0xB8),
    [VHDX_GUID_VIRTUAL_DISK_ID] = GUID(0xBECA12ABu, 0xB2E6u, 0x4523u, 0x93, 0xEF, 0xC3,
                                       0x09, 0xE0, 0x00, 0xC7, 0x46),
    [VHDX_GUID_LOGICAL_SECTOR_SIZE] = GUID(0x8141BF1Du, 0xA96Fu, 0x4709u, 0xBA, 0x47, 0xF2,
                                           0x33, 0xA8, 0xFA, 0xAB, 0x5F),
    [VHDX_GUID_PHYSICAL_SECTOR_SIZE] = GUID(0xCDA348C7u, 0x445Du, 0x4471u, 0x9C, 0xC9,
                                            0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56),
    [VHDX_GUID_PARENT_LOCATOR] = GUID(0xA8D35F2Du, 0xB30Bu, 0x454Du, 0xAB, 0xF7, 0xD3,
                                      0xD8, 0x48, 0x34, 0xAB, 0x0C),
};

static const char *const item_names[VHDX_GUID_COUNT] = {
    "BAT", "metadata", "file parameters", "virtual disk size", "virtual disk id",
    "logical sector size", "physical sector size", "parent locator",
};

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1; /* Castagnoli, reflected */
        crc_table[i] = c;
    }
}

uint32_t vhdx_crc32c(uint32_t crc, const void *p, size_t len)
{
    const uint8_t *b = p;
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint32_t vhdx_checksum(const uint8_t *p, size_t len, size_t at)
{
    static const uint8_t zero[4];
    uint32_t crc = vhdx_crc32c(0, p, at);
    crc = vhdx_crc32c(crc, zero, 4);
    return vhdx_crc32c(crc, p + at + 4, len - at - 4);
}

bool vhdx_guid_is_zero(const uint8_t g[16])
{
    for (int i = 0; i < 16; i++)
        if (g[i])
            return false;
    return true;
}

int vhdx_header_parse(const uint8_t *buf, size_t len, const char *path, uint64_t where,
                      struct vhdx_header *out, struct p2v_err *err)
{
    struct p2v_rd r;
    struct vhdx_header h;
    uint8_t sig[4];
    uint32_t crc;
    unsigned long long at = (unsigned long long)where;

    memset(&h, 0, sizeof h);
    p2v_rd_init(&r, buf, len);
    /* MS-VHDX 2.2.2: fields in this order, little-endian */
    if (len < VHDX_HEADER_SIZE || p2v_rd_bytes(&r, sig, 4) < 0 ||
        p2v_rd_u32le(&r, &crc) < 0 || p2v_rd_u64le(&r, &h.seq) < 0 ||
        p2v_rd_bytes(&r, h.file_write_guid, 16) < 0 ||
        p2v_rd_bytes(&r, h.data_write_guid, 16) < 0 ||
        p2v_rd_bytes(&r, h.log_guid, 16) < 0 || p2v_rd_u16le(&r, &h.log_version) < 0 ||
        p2v_rd_u16le(&r, &h.version) < 0 || p2v_rd_u32le(&r, &h.log_length) < 0 ||
        p2v_rd_u64le(&r, &h.log_offset) < 0)
        return p2v_err_set(err, EINVAL, "'%s': VHDX header at offset %llu is truncated",
                           path, at);
    if (memcmp(sig, "head", 4) != 0)
        return p2v_err_set(err, EINVAL, "'%s': no VHDX header signature 'head' at offset "
                           "%llu", path, at);
    uint32_t want = vhdx_checksum(buf, VHDX_HEADER_SIZE, 4);
    if (crc != want)
        return p2v_err_set(err, EINVAL, "'%s': the VHDX header at offset %llu is corrupt: "
                           "CRC-32C 0x%08x, computed 0x%08x", path, at, crc, want);
    if (h.version != 1)
        return p2v_err_set(err, ENOTSUP, "'%s': VHDX header at offset %llu has version %u; "
                           "only 1 is known", path, at, h.version);
    /* MS-VHDX 2.2.2: LogLength and LogOffset are whole MiB and the log lies after the
     * header section */
    if (h.log_length % VHDX_MIB || h.log_offset % VHDX_MIB ||
        (h.log_length && h.log_offset < VHDX_HEADER_SECTION))
        return p2v_err_set(err, EINVAL, "'%s': VHDX header at offset %llu places the log "
                           "at offset %llu, length %u: not whole MiB after the header "
                           "section", path, at, (unsigned long long)h.log_offset,
                           h.log_length);
    if (!vhdx_guid_is_zero(h.log_guid) && h.log_version != 0)
        return p2v_err_set(err, ENOTSUP, "'%s': VHDX header at offset %llu has a log of "
                           "unknown version %u", path, at, h.log_version);
    *out = h;
    return 0;
}

int vhdx_region_table_parse(const uint8_t *buf, size_t len, const char *path,
                            uint64_t where, struct vhdx_region_table *t,
                            struct p2v_err *err)
{
    struct p2v_rd r;
    uint8_t sig[4];
    uint32_t crc, n, reserved;
    unsigned long long at = (unsigned long long)where;

    p2v_rd_init(&r, buf, len);
    if (len < VHDX_REGION_TABLE_SIZE || p2v_rd_bytes(&r, sig, 4) < 0 ||
        p2v_rd_u32le(&r, &crc) < 0 || p2v_rd_u32le(&r, &n) < 0 ||
        p2v_rd_u32le(&r, &reserved) < 0)
        return p2v_err_set(err, EINVAL, "'%s': VHDX region table at offset %llu is "
                           "truncated", path, at);
    if (memcmp(sig, "regi", 4) != 0)
        return p2v_err_set(err, EINVAL, "'%s': no VHDX region table signature 'regi' at "
                           "offset %llu", path, at);
    uint32_t want = vhdx_checksum(buf, VHDX_REGION_TABLE_SIZE, 4);
    if (crc != want)
        return p2v_err_set(err, EINVAL, "'%s': the VHDX region table at offset %llu is "
                           "corrupt: CRC-32C 0x%08x, computed 0x%08x", path, at, crc, want);
    if (n > VHDX_ENTRIES_MAX)
        return p2v_err_set(err, EINVAL, "'%s': VHDX region table at offset %llu has %u "
                           "entries, more than %u", path, at, n, VHDX_ENTRIES_MAX);
    t->n = n;
    t->bat = t->metadata = -1;
    for (uint32_t i = 0; i < n; i++) {
        struct vhdx_region *e = &t->e[i];
        uint32_t req;
        uint64_t end;
        if (p2v_rd_bytes(&r, e->guid, 16) < 0 || p2v_rd_u64le(&r, &e->offset) < 0 ||
            p2v_rd_u32le(&r, &e->length) < 0 || p2v_rd_u32le(&r, &req) < 0)
            return p2v_err_set(err, EINVAL, "'%s': VHDX region table at offset %llu is "
                               "truncated at entry %u", path, at, i);
        e->required = (req & 1) != 0;
        if (e->offset % VHDX_MIB || e->offset < VHDX_HEADER_SECTION ||
            e->length % VHDX_MIB || e->length == 0 ||
            P2V_ADD_OVERFLOW(e->offset, (uint64_t)e->length, &end))
            return p2v_err_set(err, EINVAL, "'%s': VHDX region table at offset %llu: entry "
                               "%u at offset %llu, length %u is not whole MiB after the "
                               "header section", path, at, i,
                               (unsigned long long)e->offset, e->length);
        for (uint32_t k = 0; k < i; k++)
            if (memcmp(t->e[k].guid, e->guid, 16) == 0)
                return p2v_err_set(err, EINVAL, "'%s': VHDX region table at offset %llu "
                                   "lists a region twice (entries %u and %u)", path, at, k,
                                   i);
        if (memcmp(e->guid, vhdx_guids[VHDX_GUID_BAT], 16) == 0)
            t->bat = (int)i;
        else if (memcmp(e->guid, vhdx_guids[VHDX_GUID_METADATA], 16) == 0)
            t->metadata = (int)i;
        else if (e->required)
            /* MS-VHDX 2.2.3.2: "MUST refuse to load" a required region it does not know */
            return p2v_err_set(err, ENOTSUP, "'%s': VHDX region table at offset %llu: "
                               "entry %u is a required region of an unknown kind", path,
                               at, i);
    }
    if (t->bat < 0 || t->metadata < 0)
        return p2v_err_set(err, EINVAL, "'%s': VHDX region table at offset %llu has no %s "
                           "region", path, at, t->bat < 0 ? "BAT" : "metadata");
    return 0;
}

int vhdx_meta_table_parse(const uint8_t *buf, size_t len, uint64_t region_len,
                          const char *path, uint64_t where, struct vhdx_meta_table *t,
                          struct p2v_err *err)
{
    struct p2v_rd r;
    uint8_t sig[8];
    uint16_t reserved, n;
    unsigned long long at = (unsigned long long)where;

    memset(t, 0, sizeof *t);
    p2v_rd_init(&r, buf, len);
    if (len < VHDX_METADATA_TABLE_SIZE || p2v_rd_bytes(&r, sig, 8) < 0 ||
        p2v_rd_u16le(&r, &reserved) < 0 || p2v_rd_u16le(&r, &n) < 0 ||
        p2v_rd_skip(&r, 20) < 0)
        return p2v_err_set(err, EINVAL, "'%s': VHDX metadata table at offset %llu is "
                           "truncated", path, at);
    if (memcmp(sig, "metadata", 8) != 0)
        return p2v_err_set(err, EINVAL, "'%s': no VHDX metadata table signature "
                           "'metadata' at offset %llu", path, at);
    if (n > VHDX_ENTRIES_MAX)
        return p2v_err_set(err, EINVAL, "'%s': VHDX metadata table at offset %llu has %u "
                           "entries, more than %u", path, at, n, VHDX_ENTRIES_MAX);
    for (unsigned i = 0; i < n; i++) {
        uint8_t id[16];
        uint32_t off, ilen, flags, res2;
        if (p2v_rd_bytes(&r, id, 16) < 0 || p2v_rd_u32le(&r, &off) < 0 ||
            p2v_rd_u32le(&r, &ilen) < 0 || p2v_rd_u32le(&r, &flags) < 0 ||
            p2v_rd_u32le(&r, &res2) < 0)
            return p2v_err_set(err, EINVAL, "'%s': VHDX metadata table at offset %llu is "
                               "truncated at entry %u", path, at, i);
        bool is_user = flags & 1, required = (flags & 4) != 0;
        /* MS-VHDX 2.6.1.2: an item lies inside the region, after the table; length 0
         * means present but empty, with offset 0 */
        if (ilen == 0 ? off != 0
                      : (off < VHDX_METADATA_TABLE_SIZE || ilen > VHDX_ITEM_MAX ||
                         (uint64_t)off + ilen > region_len))
            return p2v_err_set(err, EINVAL, "'%s': VHDX metadata table at offset %llu: item "
                               "%u at offset %u, length %u lies outside its region (%llu "
                               "bytes)", path, at, i, off, ilen,
                               (unsigned long long)region_len);
        int known = -1;
        for (int k = VHDX_GUID_FILE_PARAMETERS; k < VHDX_GUID_COUNT && !is_user; k++)
            if (memcmp(id, vhdx_guids[k], 16) == 0)
                known = k;
        if (known < 0) {
            if (required)
                return p2v_err_set(err, ENOTSUP, "'%s': VHDX metadata table at offset %llu: "
                                   "item %u is required but of an unknown kind", path, at,
                                   i);
            continue; /* user metadata and optional items we do not use */
        }
        if (t->item[known].present)
            return p2v_err_set(err, EINVAL, "'%s': VHDX metadata table at offset %llu lists "
                               "the %s item twice", path, at, item_names[known]);
        t->item[known].present = true;
        t->item[known].offset = off;
        t->item[known].length = ilen;
    }
    return 0;
}

int vhdx_meta_item_parse(enum vhdx_guid_id id, const uint8_t *p, size_t len,
                         const char *path, uint64_t where, struct vhdx_meta *m,
                         struct p2v_err *err)
{
    static const size_t sizes[VHDX_GUID_COUNT] = {
        [VHDX_GUID_FILE_PARAMETERS] = 8, [VHDX_GUID_VIRTUAL_DISK_SIZE] = 8,
        [VHDX_GUID_VIRTUAL_DISK_ID] = 16, [VHDX_GUID_LOGICAL_SECTOR_SIZE] = 4,
        [VHDX_GUID_PHYSICAL_SECTOR_SIZE] = 4,
    };
    unsigned long long at = (unsigned long long)where;
    if (id < VHDX_GUID_FILE_PARAMETERS || id >= VHDX_GUID_PARENT_LOCATOR)
        return p2v_err_set(err, EINVAL, "'%s': no parser for VHDX metadata item %d", path,
                           (int)id);
    if (len != sizes[id])
        return p2v_err_set(err, EINVAL, "'%s': VHDX %s item at offset %llu is %zu bytes, "
                           "not %zu", path, item_names[id], at, len, sizes[id]);
    switch (id) {
    case VHDX_GUID_FILE_PARAMETERS: {
        uint32_t bs = p2v_get_u32le(p), flags = p2v_get_u32le(p + 4);
        if (!p2v_is_pow2(bs) || bs < VHDX_BLOCK_MIN || bs > VHDX_BLOCK_MAX)
            return p2v_err_set(err, EINVAL, "'%s': VHDX block size %u (item at offset %llu) "
                               "is not a power of two from 1 MiB to 256 MiB", path, bs, at);
        m->block_size = bs;
        m->leave_allocated = flags & 1;
        m->has_parent = (flags & 2) != 0;
        break;
    }
    case VHDX_GUID_VIRTUAL_DISK_SIZE:
        m->virtual_size = p2v_get_u64le(p);
        break;
    case VHDX_GUID_VIRTUAL_DISK_ID:
        memcpy(m->disk_id, p, 16);
        break;
    case VHDX_GUID_LOGICAL_SECTOR_SIZE:
    case VHDX_GUID_PHYSICAL_SECTOR_SIZE: {
        uint32_t v = p2v_get_u32le(p);
        if (v != 512 && v != 4096)
            return p2v_err_set(err, EINVAL, "'%s': VHDX %s %u (item at offset %llu) is "
                               "neither 512 nor 4096", path, item_names[id], v, at);
        if (id == VHDX_GUID_LOGICAL_SECTOR_SIZE)
            m->logical_sector = v;
        else
            m->physical_sector = v;
        break;
    }
    default:
        break;
    }
    return 0;
}

int vhdx_meta_check(const struct vhdx_meta_table *t, const struct vhdx_meta *m,
                    const char *path, struct p2v_err *err)
{
    if (m->has_parent || t->item[VHDX_GUID_PARENT_LOCATOR].present)
        return p2v_err_set(err, ENOTSUP, "'%s': differencing VHDX needs its parent: merge "
                           "or convert the chain with the tool that made it first", path);
    static const enum vhdx_guid_id required[] = {VHDX_GUID_FILE_PARAMETERS,
                                                 VHDX_GUID_VIRTUAL_DISK_SIZE,
                                                 VHDX_GUID_LOGICAL_SECTOR_SIZE};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(required); i++)
        if (!t->item[required[i]].present)
            return p2v_err_set(err, EINVAL, "'%s': the VHDX metadata has no %s item", path,
                               item_names[required[i]]);
    if (m->virtual_size == 0 || m->virtual_size > VHDX_SIZE_MAX ||
        m->virtual_size % m->logical_sector)
        return p2v_err_set(err, EINVAL, "'%s': VHDX virtual disk size %llu is not a "
                           "positive multiple of the %u-byte logical sector up to 64 TiB",
                           path, (unsigned long long)m->virtual_size, m->logical_sector);
    return 0;
}

void vhdx_layout_compute(const struct vhdx_meta *m, struct vhdx_layout *l)
{
    /* MS-VHDX 2.4: a sector bitmap block (1 MiB) has 2^23 bits, one per logical sector;
     * block size and sector size are checked powers of two, so this is exact and >= 16 */
    l->chunk_ratio = ((UINT64_C(1) << 23) * m->logical_sector) / m->block_size;
    l->payload_blocks = P2V_DIV_ROUND_UP(m->virtual_size, (uint64_t)m->block_size);
    /* MS-VHDX 2.5: fixed and dynamic BATs end with the last payload block's entry */
    l->bat_entries = l->payload_blocks + (l->payload_blocks - 1) / l->chunk_ratio;
}

/* ------------------------------------------------------------------ shared */

int vhd_issue(struct vhd_issues *is, int code, const char *fmt, ...)
{
    va_list ap;
    if (is->n++ == 0) {
        va_start(ap, fmt);
        vsnprintf(is->first, sizeof is->first, fmt, ap);
        va_end(ap);
        if (!is->count) {
            va_start(ap, fmt);
            p2v_err_setv(is->err, code, fmt, ap);
            va_end(ap);
        }
    }
    return is->count ? 0 : -1;
}

static int extent_cmp(const void *a, const void *b)
{
    const struct vhd_extent *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static void extent_name(const struct vhd_extent *e, char *buf, size_t len)
{
    if (strcmp(e->what, "block") == 0)
        snprintf(buf, len, "block %llu at offset %llu", (unsigned long long)e->index,
                 (unsigned long long)e->start);
    else
        snprintf(buf, len, "the %s at offset %llu", e->what, (unsigned long long)e->start);
}

int vhd_extents_disjoint(struct vhd_extent *v, size_t n, const char *path,
                         struct vhd_issues *is)
{
    if (n < 2)
        return 0;
    qsort(v, n, sizeof *v, extent_cmp);
    size_t last = 0; /* the extent reaching furthest so far */
    for (size_t i = 1; i < n; i++) {
        const struct vhd_extent *a = &v[last], *b = &v[i];
        if (b->start < a->start + a->len) {
            char an[96], bn[96];
            extent_name(a, an, sizeof an);
            extent_name(b, bn, sizeof bn);
            if (vhd_issue(is, EINVAL, "'%s': %s overlaps %s", path, bn, an) < 0)
                return -1;
        }
        if (b->start + b->len > a->start + a->len)
            last = i;
    }
    return 0;
}
