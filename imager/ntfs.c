/* ntfs.c: which clusters of an NTFS volume hold data, read from its $Bitmap.
 *
 * The parser does no I/O of its own: it reads the partition through the caller's
 * `imager_read_fn`, so the planner hands it a window of a real disk and the fuzz harness
 * (tests/fuzz/fuzz-ntfs.c) a byte buffer. Every on-disk byte goes through `struct p2v_rd`;
 * every count is capped (imager-int.h) and every sum overflow-checked.
 *
 * The walk, per the NTFS on-disk format (as ntfs-3g's layout.h documents it):
 *  1. boot sector: bytes per sector (0x0b), sectors per cluster (0x0d), total sectors
 *     (0x28), $MFT LCN (0x30), clusters per MFT record (0x40);
 *  2. MFT record 3 ($Volume): a volume flagged dirty is refused (its bitmap may lag);
 *  3. MFT record 6 ($Bitmap): update sequence fixups, then its unnamed $DATA attribute,
 *     resident or non-resident (mapping pairs decoded into runs);
 *  4. the bitmap, streamed in IMAGER_NTFS_BITMAP_CHUNK pieces: one bit per cluster, set
 *     when used; runs of set bits become byte ranges.
 * The boot sector and the backup boot sectors (after the volume's last sector and in the
 * partition's last sector) are always added. The first 16 MFT records are contiguous at
 * the $MFT LCN on every volume Windows or mkntfs makes, which is what lets records 3 and
 * 6 be read without decoding $MFT's own runlist.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "imager-int.h"

#define NTFS_SECTOR 512u             /* update sequence stride (NTFS_BLOCK_SIZE) */
#define NTFS_MFT_VOLUME 3u
#define NTFS_MFT_BITMAP 6u
#define NTFS_AT_ATTRIBUTE_LIST 0x20u
#define NTFS_AT_VOLUME_INFORMATION 0x70u
#define NTFS_AT_DATA 0x80u
#define NTFS_AT_END 0xffffffffu
#define NTFS_ATTR_COMPRESSION_MASK 0x00ffu
#define NTFS_ATTR_ENCRYPTED 0x4000u
#define NTFS_MFT_RECORD_IN_USE 0x0001u
#define NTFS_VOLUME_IS_DIRTY 0x0001u

struct ntfs_vol {
    uint32_t bps;          /* bytes per sector */
    uint32_t cluster;      /* bytes per cluster */
    uint64_t sectors;      /* the volume's sectors (the backup boot sector follows) */
    uint64_t clusters;
    uint64_t mft_off;      /* byte offset of $MFT */
    uint32_t rec_size;     /* MFT record size */
    uint64_t part_size;
};

/* An attribute found in a record: where its bytes are inside the record buffer. */
struct ntfs_attr {
    bool found;
    bool resident;
    uint16_t flags;
    size_t off, len;       /* the whole attribute */
    /* resident */
    size_t value_off, value_len;
    /* non-resident */
    uint64_t lowest_vcn, data_size, init_size;
    size_t runs_off;       /* mapping pairs, up to off + len */
};

struct ntfs_emit {
    imager_add_fn add;
    void *opaque;
    uint64_t cluster;
    uint64_t run_start, run_len; /* clusters; run_len 0: no open run */
    uint64_t used;
};

static int ntfs_boot_parse(const uint8_t *bs, size_t len, uint64_t part_size,
                           struct ntfs_vol *out, struct p2v_err *err)
{
    struct p2v_rd r;
    const uint8_t *oem, *spc_p, *cpr_p;
    uint16_t bps;
    uint8_t spc_raw, cpr_raw;
    uint64_t sectors, mft_lcn;
    struct ntfs_vol v = {.part_size = part_size};

    p2v_rd_init(&r, bs, len);
    if (p2v_rd_ptr_at(&r, 3, &oem, 8) < 0 || memcmp(oem, "NTFS    ", 8) != 0)
        return p2v_err_set(err, EINVAL, "no NTFS boot sector (OEM id is not 'NTFS')");
    if (p2v_rd_u16le_at(&r, 0x0b, &bps) < 0 || p2v_rd_ptr_at(&r, 0x0d, &spc_p, 1) < 0 ||
        p2v_rd_u64le_at(&r, 0x28, &sectors) < 0 || p2v_rd_u64le_at(&r, 0x30, &mft_lcn) < 0 ||
        p2v_rd_ptr_at(&r, 0x40, &cpr_p, 1) < 0)
        return p2v_err_set(err, EINVAL, "NTFS boot sector truncated");
    spc_raw = *spc_p;
    cpr_raw = *cpr_p;
    if (!p2v_is_pow2(bps) || bps < 256 || bps > 4096)
        return p2v_err_set(err, EINVAL, "NTFS: bad bytes per sector %u (offset 0x0b)", bps);
    v.bps = bps;
    /* Sectors per cluster: 1..128, or above 0x80 a negative power of two (clusters of
     * 128 KiB and more, Windows 10). */
    uint64_t spc;
    if (spc_raw == 0)
        return p2v_err_set(err, EINVAL, "NTFS: zero sectors per cluster (offset 0x0d)");
    if (spc_raw <= 0x80) {
        spc = spc_raw;
    } else {
        unsigned shift = 256u - spc_raw;
        if (shift > 20)
            return p2v_err_set(err, EINVAL, "NTFS: bad sectors per cluster 0x%02x", spc_raw);
        spc = 1ull << shift;
    }
    if (!p2v_is_pow2(spc) || spc * bps > IMAGER_NTFS_CLUSTER_MAX)
        return p2v_err_set(err, EINVAL, "NTFS: bad cluster size (%llu sectors of %u)",
                           (unsigned long long)spc, bps);
    v.cluster = (uint32_t)(spc * bps);

    uint64_t vol_bytes;
    if (sectors == 0 || P2V_MUL_OVERFLOW(sectors, (uint64_t)bps, &vol_bytes) ||
        vol_bytes > part_size)
        return p2v_err_set(err, EINVAL,
                           "NTFS: volume of %llu sectors does not fit its partition of "
                           "%llu bytes",
                           (unsigned long long)sectors, (unsigned long long)part_size);
    v.sectors = sectors;
    v.clusters = sectors / spc;
    if (v.clusters == 0 || v.clusters > IMAGER_NTFS_CLUSTERS_MAX)
        return p2v_err_set(err, EINVAL, "NTFS: bad cluster count %llu",
                           (unsigned long long)v.clusters);

    /* Clusters per MFT record: positive, or negative for 2^-n bytes. */
    int8_t cpr = (int8_t)cpr_raw;
    uint64_t rec;
    if (cpr > 0)
        rec = (uint64_t)cpr * v.cluster;
    else if (cpr < 0 && -cpr <= 31)
        rec = 1ull << (-cpr);
    else
        return p2v_err_set(err, EINVAL, "NTFS: bad MFT record size code %d (offset 0x40)",
                           cpr);
    if (!p2v_is_pow2(rec) || rec < NTFS_SECTOR || rec > IMAGER_NTFS_RECORD_MAX)
        return p2v_err_set(err, EINVAL, "NTFS: unsupported MFT record size %llu",
                           (unsigned long long)rec);
    v.rec_size = (uint32_t)rec;

    if (mft_lcn >= v.clusters)
        return p2v_err_set(err, EINVAL, "NTFS: $MFT LCN %llu outside the volume",
                           (unsigned long long)mft_lcn);
    v.mft_off = mft_lcn * v.cluster; /* < clusters * cluster <= vol_bytes: no overflow */
    /* the records read here must lie inside the volume */
    uint64_t end;
    if (P2V_ADD_OVERFLOW(v.mft_off, (uint64_t)(NTFS_MFT_BITMAP + 1) * v.rec_size, &end) ||
        end > vol_bytes)
        return p2v_err_set(err, EINVAL, "NTFS: $MFT at %llu runs past the volume's end",
                           (unsigned long long)v.mft_off);
    *out = v;
    return 0;
}

/* Check the record header and apply the update sequence fixups in place. */
static int ntfs_record_fixup(uint8_t *rec, size_t size, unsigned recno, struct p2v_err *err)
{
    struct p2v_rd r;
    uint16_t usa_ofs, usa_count, flags;
    const uint8_t *magic;

    p2v_rd_init(&r, rec, size);
    if (p2v_rd_ptr_at(&r, 0, &magic, 4) < 0 || memcmp(magic, "FILE", 4) != 0)
        return p2v_err_set(err, EINVAL, "NTFS: MFT record %u has no FILE signature", recno);
    if (p2v_rd_u16le_at(&r, 4, &usa_ofs) < 0 || p2v_rd_u16le_at(&r, 6, &usa_count) < 0 ||
        p2v_rd_u16le_at(&r, 0x16, &flags) < 0)
        return p2v_err_set(err, EINVAL, "NTFS: MFT record %u truncated", recno);
    if (!(flags & NTFS_MFT_RECORD_IN_USE))
        return p2v_err_set(err, EINVAL, "NTFS: MFT record %u is not in use", recno);
    /* One USN plus one saved pair per 512-byte stride. */
    if (usa_count != size / NTFS_SECTOR + 1 || (usa_ofs & 1) ||
        !p2v_range_ok(usa_ofs, (uint64_t)usa_count * 2, NTFS_SECTOR))
        return p2v_err_set(err, EINVAL,
                           "NTFS: MFT record %u: bad update sequence (offset %u, count %u)",
                           recno, usa_ofs, usa_count);
    uint16_t usn, saved, tail;
    p2v_rd_u16le_at(&r, usa_ofs, &usn);
    for (size_t i = 1; i < usa_count; i++) {
        size_t at = i * NTFS_SECTOR - 2;
        if (p2v_rd_u16le_at(&r, at, &tail) < 0 ||
            p2v_rd_u16le_at(&r, usa_ofs + 2 * i, &saved) < 0)
            return p2v_err_set(err, EINVAL, "NTFS: MFT record %u truncated", recno);
        if (tail != usn)
            return p2v_err_set(err, EINVAL,
                               "NTFS: MFT record %u: torn write (update sequence mismatch "
                               "in sector %zu)",
                               recno, i - 1);
        p2v_put_u16le(rec + at, saved);
    }
    return 0;
}

/* Find the first unnamed attribute of @type in a fixed-up record. */
static int ntfs_find_attr(const uint8_t *rec, size_t size, unsigned recno, uint32_t type,
                          struct ntfs_attr *out, bool *has_list, struct p2v_err *err)
{
    struct p2v_rd r;
    uint16_t attrs_off;
    uint32_t in_use;
    struct ntfs_attr a = {0};

    p2v_rd_init(&r, rec, size);
    if (p2v_rd_u16le_at(&r, 0x14, &attrs_off) < 0 || p2v_rd_u32le_at(&r, 0x18, &in_use) < 0)
        return p2v_err_set(err, EINVAL, "NTFS: MFT record %u truncated", recno);
    if (in_use > size || attrs_off >= in_use)
        return p2v_err_set(err, EINVAL, "NTFS: MFT record %u: bad sizes (%u of %zu used)",
                           recno, in_use, size);
    *has_list = false;
    size_t pos = attrs_off;
    /* each attribute is at least 16 bytes long, so this ends within size / 16 steps */
    for (;;) {
        uint32_t atype, alen;
        if (p2v_rd_u32le_at(&r, pos, &atype) < 0 || pos >= in_use)
            return p2v_err_set(err, EINVAL, "NTFS: MFT record %u: attributes run past the "
                                            "record's end",
                               recno);
        if (atype == NTFS_AT_END)
            break;
        if (p2v_rd_u32le_at(&r, pos + 4, &alen) < 0 || alen < 24 || (alen & 7) ||
            !p2v_range_ok(pos, alen, in_use))
            return p2v_err_set(err, EINVAL, "NTFS: MFT record %u: bad attribute length at "
                                            "offset %zu",
                               recno, pos);
        if (atype == NTFS_AT_ATTRIBUTE_LIST)
            *has_list = true;
        uint8_t nonres = rec[pos + 8], name_len = rec[pos + 9];
        if (atype == type && name_len == 0) {
            struct p2v_rd ar;
            p2v_rd_init(&ar, rec + pos, alen);
            a.found = true;
            a.off = pos;
            a.len = alen;
            a.resident = nonres == 0;
            p2v_rd_u16le_at(&ar, 0x0c, &a.flags);
            if (a.resident) {
                uint32_t vlen;
                uint16_t voff;
                if (p2v_rd_u32le_at(&ar, 0x10, &vlen) < 0 ||
                    p2v_rd_u16le_at(&ar, 0x14, &voff) < 0 || !p2v_range_ok(voff, vlen, alen))
                    return p2v_err_set(err, EINVAL, "NTFS: MFT record %u: bad resident "
                                                    "value at offset %zu",
                                       recno, pos);
                a.value_off = pos + voff;
                a.value_len = vlen;
            } else {
                uint16_t roff;
                if (p2v_rd_u64le_at(&ar, 0x10, &a.lowest_vcn) < 0 ||
                    p2v_rd_u16le_at(&ar, 0x20, &roff) < 0 ||
                    p2v_rd_u64le_at(&ar, 0x30, &a.data_size) < 0 ||
                    p2v_rd_u64le_at(&ar, 0x38, &a.init_size) < 0 || roff < 0x40 || roff >= alen)
                    return p2v_err_set(err, EINVAL, "NTFS: MFT record %u: bad non-resident "
                                                    "attribute at offset %zu",
                                       recno, pos);
                a.runs_off = pos + roff;
            }
            break;
        }
        pos += alen;
    }
    *out = a;
    return 0;
}

static int ntfs_read_record(imager_read_fn rd, void *opaque, const struct ntfs_vol *v,
                            unsigned recno, uint8_t *buf, struct p2v_err *err)
{
    uint64_t off = v->mft_off + (uint64_t)recno * v->rec_size; /* checked at boot parse */
    if (rd(opaque, buf, v->rec_size, off) < 0)
        return p2v_err_set(err, EIO, "NTFS: cannot read MFT record %u at offset %llu", recno,
                           (unsigned long long)off);
    return ntfs_record_fixup(buf, v->rec_size, recno, err);
}

/* Emitting runs of used clusters. */
static int emit_flush(struct ntfs_emit *e)
{
    if (e->run_len == 0)
        return 0;
    int r = e->add(e->opaque, e->run_start * e->cluster, e->run_len * e->cluster);
    e->used += e->run_len;
    e->run_len = 0;
    return r;
}

static int emit_used(struct ntfs_emit *e, uint64_t lcn, uint64_t n)
{
    if (e->run_len && e->run_start + e->run_len == lcn) {
        e->run_len += n;
        return 0;
    }
    if (emit_flush(e) < 0)
        return -1;
    e->run_start = lcn;
    e->run_len = n;
    return 0;
}

/* Bits of @bytes bitmap bytes describing clusters from @first on, up to @limit. */
static int emit_bitmap(struct ntfs_emit *e, const uint8_t *p, size_t bytes, uint64_t first,
                       uint64_t limit)
{
    for (size_t i = 0; i < bytes; i++) {
        uint64_t c = first + (uint64_t)i * 8;
        if (c >= limit)
            break;
        uint8_t b = p[i];
        if (b == 0)
            continue;
        if (b == 0xff && limit - c >= 8) {
            if (emit_used(e, c, 8) < 0)
                return -1;
            continue;
        }
        for (unsigned bit = 0; bit < 8 && c + bit < limit; bit++)
            if ((b >> bit) & 1)
                if (emit_used(e, c + bit, 1) < 0)
                    return -1;
    }
    return 0;
}

/* Decode one mapping pair at @pos (< @end): length and signed LCN delta. */
static int ntfs_run_next(const uint8_t *rec, size_t *pos, size_t end, uint64_t *len,
                         int64_t *delta, bool *sparse, bool *last)
{
    struct p2v_rd r;
    p2v_rd_init(&r, rec, end);
    if (p2v_rd_seek(&r, *pos) < 0)
        return -1;
    uint8_t h;
    if (p2v_rd_u8(&r, &h) < 0)
        return -1;
    if (h == 0) {
        *last = true;
        *pos = p2v_rd_pos(&r);
        return 0;
    }
    unsigned ls = h & 0x0f, os = h >> 4;
    if (ls == 0 || ls > 8 || os > 8)
        return -1;
    const uint8_t *lp, *op = NULL;
    if (p2v_rd_ptr(&r, &lp, ls) < 0 || (os && p2v_rd_ptr(&r, &op, os) < 0))
        return -1;
    uint64_t l = 0;
    for (unsigned i = 0; i < ls; i++)
        l |= (uint64_t)lp[i] << (8 * i);
    /* the length is a signed field: a set top bit is a negative, bad length */
    if (l == 0 || (lp[ls - 1] & 0x80))
        return -1;
    int64_t d = 0;
    if (os) {
        uint64_t u = 0;
        for (unsigned i = 0; i < os; i++)
            u |= (uint64_t)op[i] << (8 * i);
        if (os < 8 && (op[os - 1] & 0x80))
            u |= ~0ull << (8 * os); /* sign-extend */
        memcpy(&d, &u, sizeof d);
    }
    *len = l;
    *delta = d;
    *sparse = os == 0;
    *last = false;
    *pos = p2v_rd_pos(&r);
    return 0;
}

/* Stream a non-resident $Bitmap: its runs, in VCN order, up to @need bytes. */
static int ntfs_bitmap_nonresident(imager_read_fn rd, void *opaque, const struct ntfs_vol *v,
                                   const uint8_t *rec, const struct ntfs_attr *a, uint64_t need,
                                   struct ntfs_emit *e, struct p2v_err *err)
{
    int ret = -1;
    uint8_t *buf = malloc(IMAGER_NTFS_BITMAP_CHUNK);
    if (!buf)
        return p2v_err_set(err, ENOMEM, "out of memory");
    size_t pos = a->runs_off, end = a->off + a->len;
    uint64_t done = 0; /* bitmap bytes consumed */
    int64_t lcn = 0;
    for (unsigned nruns = 0; done < need; nruns++) {
        uint64_t len;
        int64_t delta;
        bool sparse, last;
        if (nruns >= IMAGER_NTFS_RUNS_MAX) {
            p2v_err_set(err, EINVAL, "NTFS: $Bitmap has more than %u runs",
                        IMAGER_NTFS_RUNS_MAX);
            goto out;
        }
        if (ntfs_run_next(rec, &pos, end, &len, &delta, &sparse, &last) < 0) {
            p2v_err_set(err, EINVAL, "NTFS: $Bitmap: bad mapping pair at record offset %zu",
                        pos);
            goto out;
        }
        if (last) {
            p2v_err_set(err, EINVAL,
                        "NTFS: $Bitmap runlist covers %llu of its %llu bytes",
                        (unsigned long long)done, (unsigned long long)need);
            goto out;
        }
        if (sparse) {
            p2v_err_set(err, EINVAL, "NTFS: $Bitmap is sparse");
            goto out;
        }
        if (P2V_ADD_OVERFLOW(lcn, delta, &lcn) || lcn < 0 ||
            len > v->clusters || (uint64_t)lcn > v->clusters - len) {
            p2v_err_set(err, EINVAL, "NTFS: $Bitmap run of %llu clusters at LCN %lld lies "
                                     "outside the volume",
                        (unsigned long long)len, (long long)lcn);
            goto out;
        }
        /* bytes of this run, limited to what is still needed */
        uint64_t run_bytes = len * v->cluster; /* <= clusters * cluster: no overflow */
        uint64_t take = P2V_MIN(run_bytes, need - done);
        uint64_t base = (uint64_t)lcn * v->cluster;
        for (uint64_t got = 0; got < take;) {
            size_t n = (size_t)P2V_MIN((uint64_t)IMAGER_NTFS_BITMAP_CHUNK, take - got);
            if (rd(opaque, buf, n, base + got) < 0) {
                p2v_err_set(err, EIO, "NTFS: cannot read $Bitmap at offset %llu",
                            (unsigned long long)(base + got));
                goto out;
            }
            if (emit_bitmap(e, buf, n, (done + got) * 8, v->clusters) < 0) {
                p2v_err_set(err, ENOMEM, "NTFS: cannot record used clusters");
                goto out;
            }
            got += n;
        }
        done += take;
    }
    ret = 0;
out:
    free(buf);
    return ret;
}

/* Refuse a volume flagged dirty: after an unclean stop its bitmap may not be current. */
static int ntfs_check_volume(imager_read_fn rd, void *opaque, const struct ntfs_vol *v,
                             uint8_t *rec, struct p2v_err *err)
{
    struct ntfs_attr a;
    bool has_list;
    if (ntfs_read_record(rd, opaque, v, NTFS_MFT_VOLUME, rec, err) < 0 ||
        ntfs_find_attr(rec, v->rec_size, NTFS_MFT_VOLUME, NTFS_AT_VOLUME_INFORMATION, &a,
                       &has_list, err) < 0)
        return -1;
    if (!a.found || !a.resident || a.value_len < 12)
        return p2v_err_set(err, EINVAL, "NTFS: $Volume has no volume information");
    uint16_t flags = p2v_get_u16le(rec + a.value_off + 0x0a);
    if (flags & NTFS_VOLUME_IS_DIRTY)
        return p2v_err_set(err, EINVAL, "NTFS: the volume is marked dirty (not cleanly "
                                        "unmounted, or chkdsk pending)");
    return 0;
}

int imager_ntfs_used(imager_read_fn rd, void *rd_opaque, uint64_t part_size, imager_add_fn add,
                     void *add_opaque, struct p2v_err *err)
{
    int ret = -1;
    uint8_t bs[NTFS_SECTOR];
    uint8_t *rec = NULL;
    struct ntfs_vol v;
    struct ntfs_attr a;
    bool has_list;

    if (part_size < NTFS_SECTOR)
        return p2v_err_set(err, EINVAL, "NTFS: partition of %llu bytes is too small",
                           (unsigned long long)part_size);
    if (rd(rd_opaque, bs, sizeof bs, 0) < 0)
        return p2v_err_set(err, EIO, "NTFS: cannot read the boot sector");
    if (ntfs_boot_parse(bs, sizeof bs, part_size, &v, err) < 0)
        return -1;
    if (!(rec = malloc(v.rec_size)))
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (ntfs_check_volume(rd, rd_opaque, &v, rec, err) < 0)
        goto out;
    if (ntfs_read_record(rd, rd_opaque, &v, NTFS_MFT_BITMAP, rec, err) < 0 ||
        ntfs_find_attr(rec, v.rec_size, NTFS_MFT_BITMAP, NTFS_AT_DATA, &a, &has_list, err) < 0)
        goto out;
    if (!a.found) {
        p2v_err_set(err, EINVAL, "NTFS: $Bitmap has no $DATA attribute%s",
                    has_list ? " in its base record (attribute list not followed)" : "");
        goto out;
    }
    if (a.flags & (NTFS_ATTR_COMPRESSION_MASK | NTFS_ATTR_ENCRYPTED)) {
        p2v_err_set(err, EINVAL, "NTFS: $Bitmap is compressed or encrypted (flags 0x%04x)",
                    a.flags);
        goto out;
    }

    uint64_t need = (v.clusters + 7) / 8;
    struct ntfs_emit e = {.add = add, .opaque = add_opaque, .cluster = v.cluster};
    if (a.resident) {
        if (a.value_len < need) {
            p2v_err_set(err, EINVAL, "NTFS: $Bitmap holds %zu bytes, %llu clusters need %llu",
                        a.value_len, (unsigned long long)v.clusters, (unsigned long long)need);
            goto out;
        }
        if (emit_bitmap(&e, rec + a.value_off, (size_t)need, 0, v.clusters) < 0) {
            p2v_err_set(err, ENOMEM, "NTFS: cannot record used clusters");
            goto out;
        }
    } else {
        if (a.lowest_vcn != 0 || a.data_size < need || a.init_size < need) {
            p2v_err_set(err, EINVAL,
                        "NTFS: $Bitmap of %llu bytes (%llu initialized, from VCN %llu) does "
                        "not cover %llu clusters",
                        (unsigned long long)a.data_size, (unsigned long long)a.init_size,
                        (unsigned long long)a.lowest_vcn, (unsigned long long)v.clusters);
            goto out;
        }
        if (ntfs_bitmap_nonresident(rd, rd_opaque, &v, rec, &a, need, &e, err) < 0)
            goto out;
    }
    if (emit_flush(&e) < 0) {
        p2v_err_set(err, ENOMEM, "NTFS: cannot record used clusters");
        goto out;
    }
    if (e.used == 0) { /* $Boot, $MFT and $Bitmap itself are always in use */
        p2v_err_set(err, EINVAL, "NTFS: $Bitmap marks no cluster used");
        goto out;
    }
    /* the boot sector and its backups, whatever the bitmap says */
    uint64_t vol_bytes = v.sectors * v.bps; /* checked at boot parse */
    if (add(add_opaque, 0, v.bps) < 0 ||
        (vol_bytes <= part_size - v.bps && add(add_opaque, vol_bytes, v.bps) < 0) ||
        add(add_opaque, (part_size - v.bps) / v.bps * v.bps, v.bps) < 0) {
        p2v_err_set(err, ENOMEM, "NTFS: cannot record used clusters");
        goto out;
    }
    ret = 0;
out:
    free(rec);
    return ret;
}
