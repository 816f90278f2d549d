/* The newc ("070701") cpio format, as the kernel reads an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst, init/initramfs.c):
 * a 110-byte ASCII header of thirteen 8-digit hex fields, the name with its NUL padded
 * to 4 bytes, the body padded to 4 bytes, "TRAILER!!!" last. An initrd is a run of such
 * archives, each plain or compressed, separated by zero padding; a plain archive must
 * start at a 4-byte aligned offset of the whole image.
 *
 * The builder writes the archive we append to an initrd; the reader walks a guest's
 * initrd (untrusted bytes: every field is checked through p2v_rd, decompression capped
 * by DI_INITRD_MAX).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>
#include <zstd.h>

#include "di-int.h"

#define NEWC_HDR 110
#define TRAILER "TRAILER!!!"

static int put_hdr(struct p2v_buf *out, uint32_t ino, uint32_t mode, uint32_t nlink,
                   uint32_t mtime, uint32_t size, uint32_t namesize)
{
    return p2v_buf_printf(out, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
                          ino, mode, 0u, 0u, nlink, mtime, size, 0u, 0u, 0u, 0u, namesize, 0u);
}

static int pad4(struct p2v_buf *out)
{
    static const uint8_t zeros[4];
    return p2v_buf_put(out, zeros, (4 - (out->len & 3)) & 3);
}

int di_cpio_build(const struct di_cpio_file *files, size_t n, uint32_t mtime,
                  struct p2v_buf *out, struct p2v_err *err)
{
    size_t start = out->len;
    /* padding is relative to the archive's start: make it start aligned */
    if ((start & 3) != 0)
        return p2v_err_set(err, EINVAL, "cpio archive must start at a 4-byte boundary");
    for (size_t i = 0; i < n; i++) {
        const struct di_cpio_file *f = &files[i];
        size_t nl = strlen(f->name);
        if (nl == 0 || nl >= DI_CPIO_NAME_MAX || f->name[0] == '/')
            goto bad;
        if (f->len > UINT32_MAX)
            return p2v_err_set(err, EFBIG, "cpio: '%s' is too large for newc", f->name);
        uint32_t nlink = S_ISDIR(f->mode) ? 2 : 1;
        if (put_hdr(out, (uint32_t)(i + 1), f->mode, nlink, mtime, (uint32_t)f->len,
                    (uint32_t)nl + 1) < 0 ||
            p2v_buf_put(out, f->name, nl + 1) < 0 || pad4(out) < 0 ||
            p2v_buf_put(out, f->data, f->len) < 0 || pad4(out) < 0)
            goto nomem;
    }
    if (put_hdr(out, 0, 0, 1, 0, 0, sizeof TRAILER) < 0 ||
        p2v_buf_put(out, TRAILER, sizeof TRAILER) < 0 || pad4(out) < 0)
        goto nomem;
    return 0;
bad:
    out->len = start;
    return p2v_err_set(err, EINVAL, "cpio: bad file name");
nomem:
    out->len = start;
    return p2v_err_errno(err, "cpio: cannot grow the archive");
}

/* ---------------------------------------------------------------- reading */

static int hex8(const uint8_t *p, uint32_t *v)
{
    uint32_t r = 0;
    for (int i = 0; i < 8; i++) {
        uint8_t c = p[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        r = (r << 4) | d;
    }
    *v = r;
    return 0;
}

/* field @i (0 = ino ... 12 = check) of the header at @h */
static int hdr_field(const uint8_t *h, int i, uint32_t *v)
{
    return hex8(h + 6 + 8 * i, v);
}

static size_t align4(size_t v)
{
    return (v + 3) & ~(size_t)3;
}

int di_cpio_parse(const uint8_t *p, size_t len, size_t *consumed, di_cpio_cb cb,
                  void *opaque, struct p2v_err *err)
{
    struct p2v_rd r;
    p2v_rd_init(&r, p, len);
    for (size_t n = 0;; n++) {
        const uint8_t *h, *name, *data;
        uint32_t mode, size, namesize;
        size_t at = p2v_rd_pos(&r);
        if (n > DI_CPIO_ENTRIES_MAX)
            return p2v_err_set(err, E2BIG, "cpio: more than %zu entries", (size_t)DI_CPIO_ENTRIES_MAX);
        if (p2v_rd_ptr(&r, &h, NEWC_HDR) < 0)
            return p2v_err_set(err, EINVAL, "cpio: truncated header at offset %zu", at);
        if (memcmp(h, "070701", 6) != 0 && memcmp(h, "070702", 6) != 0)
            return p2v_err_set(err, EINVAL, "cpio: no newc magic at offset %zu", at);
        if (hdr_field(h, 1, &mode) < 0 || hdr_field(h, 6, &size) < 0 ||
            hdr_field(h, 11, &namesize) < 0)
            return p2v_err_set(err, EINVAL, "cpio: bad header field at offset %zu", at);
        if (namesize == 0 || namesize > DI_CPIO_NAME_MAX)
            return p2v_err_set(err, EINVAL, "cpio: name size %u at offset %zu", namesize, at);
        if (p2v_rd_ptr(&r, &name, namesize) < 0)
            return p2v_err_set(err, EINVAL, "cpio: truncated name at offset %zu", at);
        if (name[namesize - 1] != 0)
            return p2v_err_set(err, EINVAL, "cpio: name not terminated at offset %zu", at);
        size_t pos = align4(p2v_rd_pos(&r));
        if (p2v_rd_seek(&r, pos) < 0)
            return p2v_err_set(err, EINVAL, "cpio: truncated after name at offset %zu", at);
        if (namesize == sizeof TRAILER && memcmp(name, TRAILER, sizeof TRAILER) == 0) {
            *consumed = P2V_MIN(align4(p2v_rd_pos(&r)), len);
            return 0;
        }
        if (p2v_rd_ptr(&r, &data, size) < 0)
            return p2v_err_set(err, EINVAL, "cpio: '%.*s' body truncated at offset %zu",
                               (int)P2V_MIN(namesize - 1, 200u), name, at);
        pos = align4(p2v_rd_pos(&r));
        if (pos > len)
            pos = len;
        p2v_rd_seek(&r, pos);
        struct di_cpio_entry e = {(const char *)name, namesize - 1, mode, data, size};
        if (cb) {
            int rc = cb(opaque, &e);
            if (rc)
                return rc;
        }
    }
}

/* inflate one gzip member at @p into @out; *used is the member's compressed length */
static int gunzip_member(const uint8_t *p, size_t len, struct p2v_buf *out, size_t *used,
                         struct p2v_err *err)
{
    z_stream zs;
    int rc, ret = -1;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
        return p2v_err_set(err, ENOMEM, "initrd: zlib init failed");
    zs.next_in = (Bytef *)p;
    zs.avail_in = (uInt)P2V_MIN(len, (size_t)UINT32_MAX);
    do {
        if (p2v_buf_reserve(out, 1 << 20) < 0) {
            p2v_err_set(err, EFBIG, "initrd: more than %zu bytes decompressed", DI_INITRD_MAX);
            goto out;
        }
        zs.next_out = out->data + out->len;
        zs.avail_out = (uInt)(out->cap - out->len - 1);
        rc = inflate(&zs, Z_NO_FLUSH);
        out->len = out->cap - 1 - zs.avail_out;
        if (rc != Z_OK && rc != Z_STREAM_END) {
            p2v_err_set(err, EINVAL, "initrd: gzip data is corrupt (%s)", zs.msg ? zs.msg : "inflate failed");
            goto out;
        }
        if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
            p2v_err_set(err, EINVAL, "initrd: gzip data is truncated");
            goto out;
        }
    } while (rc != Z_STREAM_END);
    *used = zs.total_in;
    ret = 0;
out:
    inflateEnd(&zs);
    return ret;
}

static int unzstd_frame(const uint8_t *p, size_t len, struct p2v_buf *out, size_t *used,
                        struct p2v_err *err)
{
    size_t fl = ZSTD_findFrameCompressedSize(p, len);
    if (ZSTD_isError(fl))
        return p2v_err_set(err, EINVAL, "initrd: zstd frame is corrupt (%s)", ZSTD_getErrorName(fl));
    ZSTD_DStream *ds = ZSTD_createDStream();
    int ret = -1;
    if (!ds)
        return p2v_err_set(err, ENOMEM, "initrd: zstd init failed");
    ZSTD_inBuffer in = {p, fl, 0};
    size_t rc = 1;
    while (in.pos < in.size || rc != 0) {
        if (p2v_buf_reserve(out, 1 << 20) < 0) {
            p2v_err_set(err, EFBIG, "initrd: more than %zu bytes decompressed", DI_INITRD_MAX);
            goto out;
        }
        ZSTD_outBuffer ob = {out->data + out->len, out->cap - out->len - 1, 0};
        rc = ZSTD_decompressStream(ds, &ob, &in);
        out->len += ob.pos;
        if (ZSTD_isError(rc)) {
            p2v_err_set(err, EINVAL, "initrd: zstd data is corrupt (%s)", ZSTD_getErrorName(rc));
            goto out;
        }
        if (in.pos == in.size && rc != 0 && ob.pos == 0) {
            p2v_err_set(err, EINVAL, "initrd: zstd data is truncated");
            goto out;
        }
    }
    *used = fl;
    ret = 0;
out:
    ZSTD_freeDStream(ds);
    return ret;
}

static const char *compression_name(const uint8_t *p, size_t len)
{
    static const struct {
        const char *name;
        const char *magic;
        size_t n;
    } m[] = {
        {"xz", "\xfd" "7zXZ", 5}, {"lzma", "\x5d\x00\x00", 3}, {"bzip2", "BZh", 3},
        {"lz4", "\x02\x21\x4c\x18", 4}, {"lzop", "\x89LZO", 4},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(m); i++)
        if (len >= m[i].n && memcmp(p, m[i].magic, m[i].n) == 0)
            return m[i].name;
    return NULL;
}

int di_initrd_walk(const uint8_t *p, size_t len, di_cpio_cb cb, void *opaque,
                   struct p2v_err *err)
{
    size_t pos = 0, total = 0;
    struct p2v_buf dec;
    int segments = 0;
    p2v_buf_init(&dec, DI_INITRD_MAX);
    while (pos < len) {
        size_t used = 0, consumed = 0;
        int rc;
        if (p[pos] == 0) {
            pos++;
            continue;
        }
        segments++;
        if (len - pos >= 6 && memcmp(p + pos, "0707", 4) == 0) {
            if (pos & 3) {
                p2v_buf_release(&dec);
                return p2v_err_set(err, EINVAL, "initrd: cpio archive at unaligned offset %zu", pos);
            }
            rc = di_cpio_parse(p + pos, len - pos, &consumed, cb, opaque, err);
            if (rc) {
                p2v_buf_release(&dec);
                return rc < 0 ? p2v_err_prefix(err, "initrd segment at offset %zu", pos) : rc;
            }
            pos += consumed;
            continue;
        }
        p2v_buf_reset(&dec);
        dec.max = DI_INITRD_MAX - total;
        if (len - pos >= 2 && p[pos] == 0x1f && p[pos + 1] == 0x8b)
            rc = gunzip_member(p + pos, len - pos, &dec, &used, err);
        else if (len - pos >= 4 && p2v_get_u32le(p + pos) == 0xFD2FB528u)
            rc = unzstd_frame(p + pos, len - pos, &dec, &used, err);
        else {
            const char *c = compression_name(p + pos, len - pos);
            p2v_buf_release(&dec);
            if (c)
                return p2v_err_set(err, ENOTSUP, "initrd: %s compression at offset %zu is not supported", c, pos);
            return p2v_err_set(err, EINVAL, "initrd: unknown data at offset %zu (not cpio, gzip or zstd)", pos);
        }
        if (rc < 0) {
            p2v_buf_release(&dec);
            return p2v_err_prefix(err, "initrd segment at offset %zu", pos);
        }
        total += dec.len;
        /* a compressed segment may hold several archives, each padded */
        for (size_t dp = 0; dp < dec.len;) {
            if (dec.data[dp] == 0) {
                dp++;
                continue;
            }
            rc = di_cpio_parse(dec.data + dp, dec.len - dp, &consumed, cb, opaque, err);
            if (rc) {
                p2v_buf_release(&dec);
                return rc < 0 ? p2v_err_prefix(err, "initrd segment at offset %zu", pos) : rc;
            }
            dp += consumed;
        }
        pos += used;
    }
    p2v_buf_release(&dec);
    if (segments == 0)
        return p2v_err_set(err, EINVAL, "initrd: empty");
    return 0;
}

bool di_initrd_has_marker(const uint8_t *tail, size_t len)
{
    static const char name[] = DI_MARKER_NAME;
    /* the marker's header, its name, its body (short), then the trailer's header */
    for (size_t i = 0; len >= NEWC_HDR && i <= len - NEWC_HDR; i++) {
        const uint8_t *h = tail + i;
        uint32_t namesize, size, tnamesize;
        if (memcmp(h, "070701", 6) != 0 || hdr_field(h, 11, &namesize) < 0 ||
            hdr_field(h, 6, &size) < 0 || namesize != sizeof name)
            continue;
        if (len - i - NEWC_HDR < namesize || memcmp(h + NEWC_HDR, name, namesize) != 0)
            continue;
        size_t t = align4(i + NEWC_HDR + namesize);
        if (size > len || t > len - size)
            continue;
        t = align4(t + size);
        if (t > len || len - t < NEWC_HDR + sizeof TRAILER)
            continue;
        const uint8_t *th = tail + t;
        if (memcmp(th, "070701", 6) == 0 && hdr_field(th, 11, &tnamesize) == 0 &&
            tnamesize == sizeof TRAILER && memcmp(th + NEWC_HDR, TRAILER, sizeof TRAILER) == 0)
            return true;
    }
    return false;
}
