/* vmdk-parse.c: the VMDK driver's parsers and encoders of on-disk metadata, from and to
 * memory, with no file I/O: the sparse extent header (VDF "Hosted Sparse Extents"),
 * markers (VDF "Stream-Optimized Compressed Sparse Extents") and the text descriptor (VDF
 * "The Descriptor File"), plus the descriptor we write and its geometry. Every byte comes
 * through `struct p2v_rd`; every number is checked against a named cap in vmdk.h before
 * it is used in arithmetic, so that hostile images end in a clear error. / */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fallocate, O_DIRECTORY, strndup (the build defines it too) */
#endif
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vmdk.h"

/* ------------------------------------------------------------------ header */

int vmdk_header_parse(const uint8_t *buf, size_t len, const char *path, uint64_t where,
                      struct vmdk_header *out, struct p2v_err *err)
{
    struct p2v_rd r;
    struct vmdk_header h;
    uint32_t magic;
    uint8_t nl[4];
    unsigned long long at = (unsigned long long)where;

    memset(&h, 0, sizeof h);
    p2v_rd_init(&r, buf, len);
    if (p2v_rd_left(&r) < sizeof(struct vmdk_header_disk))
        return p2v_err_set(err, EINVAL, "'%s': sparse extent header at offset %llu is "
                           "truncated (%zu of 512 bytes)", path, at, len);
    /* VDF "Hosted Sparse Extents": fields in this order, little-endian, packed (see
     * vmdk_header_disk) */
    if (p2v_rd_u32le(&r, &magic) < 0 || p2v_rd_u32le(&r, &h.version) < 0 ||
        p2v_rd_u32le(&r, &h.flags) < 0 || p2v_rd_u64le(&r, &h.capacity) < 0 ||
        p2v_rd_u64le(&r, &h.grain_size) < 0 || p2v_rd_u64le(&r, &h.desc_offset) < 0 ||
        p2v_rd_u64le(&r, &h.desc_size) < 0 || p2v_rd_u32le(&r, &h.gtes_per_gt) < 0 ||
        p2v_rd_u64le(&r, &h.rgd_offset) < 0 || p2v_rd_u64le(&r, &h.gd_offset) < 0 ||
        p2v_rd_u64le(&r, &h.overhead) < 0 || p2v_rd_u8(&r, &h.unclean) < 0 ||
        p2v_rd_bytes(&r, nl, sizeof nl) < 0 || p2v_rd_u16le(&r, &h.compress) < 0)
        return p2v_err_set(err, EINVAL, "'%s': sparse extent header at offset %llu is "
                           "truncated", path, at);
    if (magic != VMDK_MAGIC)
        return p2v_err_set(err, EINVAL, "'%s': no VMDK sparse extent magic 'KDMV' at "
                           "offset %llu", path, at);
    /* VDF "Hosted Sparse Extents": version 1; 2 adds zeroed-grain GTEs (Virtual Disk
     * Format 5.0); 3 is stream-optimized or changed-block tracking, readable as 1 */
    if (h.version < 1 || h.version > 3)
        return p2v_err_set(err, ENOTSUP, "'%s': unsupported sparse extent version %u at "
                           "offset %llu", path, h.version, at);
    if ((h.flags & VMDK_FLAG_NL_DETECT) &&
        (nl[0] != '\n' || nl[1] != ' ' || nl[2] != '\r' || nl[3] != '\n'))
        return p2v_err_set(err, EINVAL, "'%s': the newline test bytes of the header at "
                           "offset %llu are wrong (the file went through a text-mode "
                           "transfer)", path, at);
    if (h.compress != VMDK_COMPRESS_NONE && h.compress != VMDK_COMPRESS_DEFLATE)
        return p2v_err_set(err, ENOTSUP, "'%s': unknown compression algorithm %u in the "
                           "header at offset %llu", path, h.compress, at);
    if ((h.flags & VMDK_FLAG_COMPRESSED) && h.compress != VMDK_COMPRESS_DEFLATE)
        return p2v_err_set(err, EINVAL, "'%s': header at offset %llu says grains are "
                           "compressed but names no algorithm", path, at);
    /* VDF "Stream-Optimized Compressed Sparse Extents": compressed grains carry their
     * length in a grain marker; without markers there is no way to know where a
     * compressed grain ends */
    if (h.compress == VMDK_COMPRESS_DEFLATE && !(h.flags & VMDK_FLAG_MARKERS))
        return p2v_err_set(err, ENOTSUP, "'%s': compressed grains without markers are not "
                           "supported (header at offset %llu)", path, at);
    if (h.capacity > VMDK_CAPACITY_MAX)
        return p2v_err_set(err, EFBIG, "'%s': capacity %llu sectors in the header at "
                           "offset %llu is larger than %llu", path,
                           (unsigned long long)h.capacity, at,
                           (unsigned long long)VMDK_CAPACITY_MAX);
    if (!p2v_is_pow2(h.grain_size) || h.grain_size > VMDK_GRAIN_SECTORS_MAX)
        return p2v_err_set(err, EINVAL, "'%s': grain size %llu sectors in the header at "
                           "offset %llu is not a power of two up to %u", path,
                           (unsigned long long)h.grain_size, at, VMDK_GRAIN_SECTORS_MAX);
    if (h.gtes_per_gt == 0 || h.gtes_per_gt > VMDK_GTES_MAX)
        return p2v_err_set(err, EINVAL, "'%s': %u grain table entries per table in the "
                           "header at offset %llu (1..%u allowed)", path, h.gtes_per_gt,
                           at, VMDK_GTES_MAX);
    if (h.desc_size) {
        if (h.desc_size > VMDK_DESC_MAX / VMDK_SECTOR)
            return p2v_err_set(err, EFBIG, "'%s': embedded descriptor of %llu sectors in "
                               "the header at offset %llu is larger than %u bytes", path,
                               (unsigned long long)h.desc_size, at, VMDK_DESC_MAX);
        if (h.desc_offset == 0 || h.desc_offset > VMDK_CAPACITY_MAX)
            return p2v_err_set(err, EINVAL, "'%s': embedded descriptor at sector %llu in "
                               "the header at offset %llu overlaps the header or lies "
                               "past any possible file end", path,
                               (unsigned long long)h.desc_offset, at);
    }
    *out = h;
    return 0;
}

int vmdk_layout_compute(const struct vmdk_header *h, const char *path,
                        struct vmdk_layout *l, struct p2v_err *err)
{
    struct vmdk_layout o;
    /* the caps checked in vmdk_header_parse keep every product below 2^64:
     * capacity < 2^37, grain <= 2^11, gtes <= 2^9 */
    if (h->capacity == 0)
        return p2v_err_set(err, EINVAL, "'%s': sparse extent of capacity 0", path);
    o.grain_bytes = h->grain_size * VMDK_SECTOR;
    o.grains = P2V_DIV_ROUND_UP(h->capacity, h->grain_size);
    uint64_t tables = P2V_DIV_ROUND_UP(o.grains, (uint64_t)h->gtes_per_gt);
    if (tables > VMDK_GD_ENTRIES_MAX)
        return p2v_err_set(err, EFBIG, "'%s': %llu grain tables (capacity %llu sectors, "
                           "grain %llu sectors) are more than %u", path,
                           (unsigned long long)tables, (unsigned long long)h->capacity,
                           (unsigned long long)h->grain_size, VMDK_GD_ENTRIES_MAX);
    o.gd_entries = (uint32_t)tables;
    o.gt_bytes = h->gtes_per_gt * 4u;
    o.gt_sectors = P2V_DIV_ROUND_UP((uint64_t)o.gt_bytes, VMDK_SECTOR);
    o.gd_sectors = P2V_DIV_ROUND_UP((uint64_t)o.gd_entries * 4, VMDK_SECTOR);
    *l = o;
    return 0;
}

void vmdk_header_encode(const struct vmdk_header *h, uint8_t out[512])
{
    memset(out, 0, 512);
    p2v_put_u32le(out + 0, VMDK_MAGIC);
    p2v_put_u32le(out + 4, h->version);
    p2v_put_u32le(out + 8, h->flags);
    p2v_put_u64le(out + 12, h->capacity);
    p2v_put_u64le(out + 20, h->grain_size);
    p2v_put_u64le(out + 28, h->desc_offset);
    p2v_put_u64le(out + 36, h->desc_size);
    p2v_put_u32le(out + 44, h->gtes_per_gt);
    p2v_put_u64le(out + 48, h->rgd_offset);
    p2v_put_u64le(out + 56, h->gd_offset);
    p2v_put_u64le(out + 64, h->overhead);
    out[VMDK_HEADER_UNCLEAN_OFFSET] = h->unclean;
    out[73] = '\n'; /* VDF "Hosted Sparse Extents" newline detection bytes */
    out[74] = ' ';
    out[75] = '\r';
    out[76] = '\n';
    p2v_put_u16le(out + 77, h->compress);
}

/* ------------------------------------------------------------------ markers */

int vmdk_marker_parse(const uint8_t *buf, size_t len, struct vmdk_marker *m)
{
    struct p2v_rd r;
    struct vmdk_marker o;
    p2v_rd_init(&r, buf, len);
    if (p2v_rd_u64le(&r, &o.val) < 0 || p2v_rd_u32le(&r, &o.size) < 0)
        return -1;
    o.type = 0;
    /* the type field exists only in metadata markers (size 0) */
    if (o.size == 0 && p2v_rd_u32le(&r, &o.type) < 0)
        return -1;
    *m = o;
    return 0;
}

void vmdk_marker_encode(uint8_t out[512], uint64_t val, uint32_t size, uint32_t type)
{
    memset(out, 0, 512);
    p2v_put_u64le(out, val);
    p2v_put_u32le(out + 8, size);
    p2v_put_u32le(out + 12, type);
}

/* ------------------------------------------------------------------ descriptor */

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Parse a decimal number without sign; false on junk or overflow past @max. */
static bool parse_dec(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (P2V_MUL_OVERFLOW(v, 10, &v) || P2V_ADD_OVERFLOW(v, (uint64_t)(s[i] - '0'), &v))
            return false;
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_hex32(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    size_t n = strlen(s);
    if (n == 0 || n > 8)
        return false;
    for (size_t i = 0; i < n; i++) {
        int c = tolower((unsigned char)s[i]), d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return false;
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return true;
}

int vmdk_name_check(const char *name, const char *path, unsigned line, struct p2v_err *err)
{
    size_t n = strlen(name);
    if (n == 0)
        return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: empty extent file name",
                           path, line);
    if (name[0] == '/')
        return p2v_err_set(err, EPERM, "'%s': descriptor line %u: absolute extent path "
                           "'%s' refused (extents must be plain names beside the "
                           "descriptor)", path, line, name);
    if (strcmp(name, "..") == 0 || strncmp(name, "../", 3) == 0 || strstr(name, "/../") ||
        (n >= 3 && strcmp(name + n - 3, "/..") == 0))
        return p2v_err_set(err, EPERM, "'%s': descriptor line %u: extent path '%s' "
                           "climbs out of the descriptor's folder ('..' refused)", path,
                           line, name);
    if (strchr(name, '/') || strchr(name, '\\') || strcmp(name, ".") == 0)
        return p2v_err_set(err, EPERM, "'%s': descriptor line %u: extent path '%s' is not "
                           "a plain file name", path, line, name);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: control character "
                               "in extent file name", path, line);
    return 0;
}

/* The next blank-separated token of @s from *pos: [*tok, *tok + *tlen). */
static bool next_token(const char *s, size_t *pos, const char **tok, size_t *tlen)
{
    size_t p = *pos;
    while (s[p] && is_blank(s[p]))
        p++;
    if (!s[p])
        return false;
    size_t b = p;
    while (s[p] && !is_blank(s[p]))
        p++;
    *tok = s + b;
    *tlen = p - b;
    *pos = p;
    return true;
}

static bool tok_is(const char *tok, size_t tlen, const char *word)
{
    return strlen(word) == tlen && memcmp(tok, word, tlen) == 0;
}

/* VDF "The Descriptor File", extent descriptions: ACCESS SIZE TYPE ["FILENAME" [OFFSET]]
 */
static int parse_extent_line(const char *s, const char *path, unsigned line,
                             struct vmdk_desc_extent *e, struct p2v_err *err)
{
    size_t pos = 0, tlen;
    const char *tok;
    memset(e, 0, sizeof *e);
    next_token(s, &pos, &tok, &tlen);
    if (tok_is(tok, tlen, "RW"))
        e->access = VMDK_ACCESS_RW;
    else if (tok_is(tok, tlen, "RDONLY"))
        e->access = VMDK_ACCESS_RDONLY;
    else
        e->access = VMDK_ACCESS_NOACCESS;
    if (!next_token(s, &pos, &tok, &tlen) ||
        !parse_dec(tok, tlen, VMDK_DISK_SECTORS_MAX, &e->sectors) || e->sectors == 0)
        return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: extent size missing, "
                           "zero or larger than %llu sectors", path, line,
                           (unsigned long long)VMDK_DISK_SECTORS_MAX);
    if (!next_token(s, &pos, &tok, &tlen) || tlen >= sizeof e->type_name)
        return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: extent type missing",
                           path, line);
    memcpy(e->type_name, tok, tlen);
    e->type_name[tlen] = '\0';
    bool needs_name = true, offset_ok = false, offset_needed = false;
    if (strcmp(e->type_name, "FLAT") == 0) {
        e->type = VMDK_EXT_FLAT;
        offset_ok = offset_needed = true;
    } else if (strcmp(e->type_name, "VMFS") == 0) {
        e->type = VMDK_EXT_FLAT; /* a flat file on VMFS: same bytes, offset optional */
        offset_ok = true;
    } else if (strcmp(e->type_name, "SPARSE") == 0) {
        e->type = VMDK_EXT_SPARSE;
    } else if (strcmp(e->type_name, "ZERO") == 0) {
        e->type = VMDK_EXT_ZERO;
        needs_name = false;
    } else if (strcmp(e->type_name, "VMFSSPARSE") == 0 ||
               strcmp(e->type_name, "SESPARSE") == 0 ||
               strcmp(e->type_name, "VMFSRDM") == 0 ||
               strcmp(e->type_name, "VMFSRAW") == 0) {
        return p2v_err_set(err, ENOTSUP, "'%s': descriptor line %u: extent type '%s' is "
                           "not supported (only FLAT, VMFS, SPARSE and ZERO)", path, line,
                           e->type_name);
    } else {
        return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: unknown extent type "
                           "'%s'", path, line, e->type_name);
    }
    if (e->access == VMDK_ACCESS_NOACCESS)
        return p2v_err_set(err, ENOTSUP, "'%s': descriptor line %u: NOACCESS extents are "
                           "not supported", path, line);
    if (needs_name) {
        while (s[pos] && is_blank(s[pos]))
            pos++;
        if (s[pos] != '"')
            return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: extent file name "
                               "missing (a quoted name is expected)", path, line);
        const char *b = s + pos + 1, *q = strchr(b, '"');
        if (!q)
            return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: unterminated "
                               "extent file name", path, line);
        size_t n = (size_t)(q - b);
        if (n > VMDK_NAME_MAX)
            return p2v_err_set(err, ENAMETOOLONG, "'%s': descriptor line %u: extent file "
                               "name longer than %u bytes", path, line, VMDK_NAME_MAX);
        memcpy(e->name, b, n);
        e->name[n] = '\0';
        if (vmdk_name_check(e->name, path, line, err) < 0)
            return -1;
        pos = (size_t)(q - s) + 1;
        if (next_token(s, &pos, &tok, &tlen)) {
            if (!offset_ok || !parse_dec(tok, tlen, VMDK_DISK_SECTORS_MAX, &e->offset))
                return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: unexpected or "
                                   "invalid extent offset", path, line);
            offset_needed = false;
        }
        if (offset_needed)
            return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: FLAT extent without "
                               "an offset", path, line);
    }
    if (next_token(s, &pos, &tok, &tlen))
        return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: trailing text after "
                           "the extent", path, line);
    return 0;
}

static int set_str(char *dst, size_t cap, const char *v, const char *key, const char *path,
                   unsigned line, struct p2v_err *err)
{
    size_t n = strlen(v);
    if (n >= cap)
        return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: value of '%s' longer "
                           "than %zu bytes", path, line, key, cap - 1);
    memcpy(dst, v, n + 1);
    return 0;
}

static int parse_kv(char *s, const char *path, unsigned line, struct vmdk_desc *d,
                    struct p2v_err *err)
{
    char *eq = strchr(s, '=');
    char *k = s, *v = eq + 1;
    *eq = '\0';
    for (char *e = eq; e > k && is_blank(e[-1]);)
        *--e = '\0';
    while (*v && is_blank(*v))
        v++;
    size_t vn = strlen(v);
    if (vn >= 2 && v[0] == '"' && v[vn - 1] == '"') {
        v[vn - 1] = '\0';
        v++;
    }
    if (!*k)
        return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: empty key", path, line);
    if (strcmp(k, "version") == 0) {
        uint64_t ver;
        if (!parse_dec(v, strlen(v), 3, &ver) || ver < 1)
            return p2v_err_set(err, ENOTSUP, "'%s': descriptor line %u: unsupported "
                               "descriptor version '%s'", path, line, v);
        d->version = (uint32_t)ver;
    } else if (strcmp(k, "CID") == 0) {
        if (!parse_hex32(v, &d->cid))
            return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: invalid CID '%s'",
                               path, line, v);
        d->has_cid = true;
    } else if (strcmp(k, "parentCID") == 0) {
        if (!parse_hex32(v, &d->parent_cid))
            return p2v_err_set(err, EINVAL, "'%s': descriptor line %u: invalid parentCID "
                               "'%s'", path, line, v);
        /* VDF "The Descriptor File": ffffffff means no parent; a delta link needs its
         * parent chain */
        if (d->parent_cid != 0xffffffffu)
            return p2v_err_set(err, ENOTSUP, "'%s': descriptor line %u: differencing disk "
                               "(parentCID %s): parent links are not supported", path,
                               line, v);
    } else if (strcmp(k, "createType") == 0) {
        return set_str(d->create_type, sizeof d->create_type, v, k, path, line, err);
    } else if (strcmp(k, "ddb.adapterType") == 0) {
        return set_str(d->adapter_type, sizeof d->adapter_type, v, k, path, line, err);
    } else if (strcmp(k, "ddb.virtualHWVersion") == 0) {
        return set_str(d->hw_version, sizeof d->hw_version, v, k, path, line, err);
    } else if (strcmp(k, "ddb.geometry.cylinders") == 0) {
        if (!parse_dec(v, strlen(v), UINT32_MAX, &d->cylinders))
            d->cylinders = 0; /* informational only */
    } else if (strcmp(k, "ddb.geometry.heads") == 0) {
        if (!parse_dec(v, strlen(v), 255, &d->heads))
            d->heads = 0;
    } else if (strcmp(k, "ddb.geometry.sectors") == 0) {
        if (!parse_dec(v, strlen(v), 63, &d->sectors))
            d->sectors = 0;
    }
    /* other keys (encoding, ddb.uuid, ddb.toolsVersion, ...) carry nothing we need */
    return 0;
}

int vmdk_desc_parse(const uint8_t *text, size_t len, const char *path,
                    struct vmdk_desc *out, struct p2v_err *err)
{
    struct vmdk_desc d;
    struct p2v_rd r;
    char *line = NULL;
    int ret = -1;
    unsigned lineno = 0;
    size_t cap_ext = 0;

    memset(&d, 0, sizeof d);
    d.parent_cid = 0xffffffffu;
    if (len > VMDK_DESC_MAX) {
        p2v_err_set(err, EFBIG, "'%s': descriptor of %zu bytes is larger than %u", path,
                    len, VMDK_DESC_MAX);
        goto out;
    }
    const uint8_t *nul = text ? memchr(text, '\0', len) : NULL;
    if (nul)
        len = (size_t)(nul - text);
    line = malloc(VMDK_DESC_LINE_MAX + 1);
    if (!line) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    p2v_rd_init(&r, text, len);
    while (p2v_rd_left(&r) > 0) {
        const uint8_t *p;
        size_t left = p2v_rd_left(&r);
        const uint8_t *start = text + p2v_rd_pos(&r);
        const uint8_t *nl = memchr(start, '\n', left);
        size_t n = nl ? (size_t)(nl - start) : left;
        lineno++;
        if (n > VMDK_DESC_LINE_MAX) {
            p2v_err_set(err, EINVAL, "'%s': descriptor line %u is longer than %u bytes",
                        path, lineno, VMDK_DESC_LINE_MAX);
            goto out;
        }
        if (p2v_rd_ptr(&r, &p, n) < 0 || (nl && p2v_rd_skip(&r, 1) < 0))
            abort(); /* the lengths come from memchr over the reader's own bytes */
        memcpy(line, p, n);
        line[n] = '\0';
        /* trim blanks (and the '\r' of "\r\n" line ends) */
        char *s = line;
        while (*s && is_blank(*s))
            s++;
        size_t sn = strlen(s);
        while (sn && is_blank(s[sn - 1]))
            s[--sn] = '\0';
        if (!*s || *s == '#')
            continue;
        for (size_t i = 0; i < sn; i++)
            if ((unsigned char)s[i] < 0x20 && s[i] != '\t') {
                p2v_err_set(err, EINVAL, "'%s': descriptor line %u holds a control "
                            "character (not a text descriptor)", path, lineno);
                goto out;
            }
        if (strncmp(s, "RW ", 3) == 0 || strncmp(s, "RDONLY ", 7) == 0 ||
            strncmp(s, "NOACCESS ", 9) == 0 || strncmp(s, "RW\t", 3) == 0) {
            if (d.n_extents == VMDK_EXTENTS_MAX) {
                p2v_err_set(err, EFBIG, "'%s': more than %u extents", path,
                            VMDK_EXTENTS_MAX);
                goto out;
            }
            if (d.n_extents == cap_ext) {
                size_t nc = cap_ext ? cap_ext * 2 : 8;
                struct vmdk_desc_extent *ne = realloc(d.extents, nc * sizeof *ne);
                if (!ne) {
                    p2v_err_set(err, ENOMEM, "out of memory");
                    goto out;
                }
                d.extents = ne;
                cap_ext = nc;
            }
            if (parse_extent_line(s, path, lineno, &d.extents[d.n_extents], err) < 0)
                goto out;
            d.n_extents++;
            continue;
        }
        if (strchr(s, '=')) {
            if (parse_kv(s, path, lineno, &d, err) < 0)
                goto out;
            continue;
        }
        p2v_err_set(err, EINVAL, "'%s': descriptor line %u is neither a setting nor an "
                    "extent", path, lineno);
        goto out;
    }
    if (d.version == 0) {
        p2v_err_set(err, EINVAL, "'%s': descriptor without 'version='", path);
        goto out;
    }
    *out = d;
    memset(&d, 0, sizeof d);
    ret = 0;
out:
    free(line);
    free(d.extents);
    return ret;
}

void vmdk_desc_release(struct vmdk_desc *d)
{
    if (!d)
        return;
    free(d->extents);
    d->extents = NULL;
    d->n_extents = 0;
}

/* ------------------------------------------------------------------ writing */

const char *vmdk_adapter_canonical(const char *name, uint32_t *heads)
{
    /* VDF "The Descriptor File", ddb.adapterType: ide, buslogic, lsilogic, legacyESX;
     * ESXi adds pvscsi */
    static const struct {
        const char *name;
        uint32_t heads;
    } types[] = {
        {"ide", 16}, {"lsilogic", 255}, {"buslogic", 255}, {"pvscsi", 255},
        {"legacyESX", 255},
    };
    if (!name || !*name)
        name = "ide";
    for (size_t i = 0; i < P2V_ARRAY_SIZE(types); i++)
        if (strcasecmp(name, types[i].name) == 0) {
            if (heads)
                *heads = types[i].heads;
            return types[i].name;
        }
    return NULL;
}

void vmdk_geometry(uint64_t capacity, uint32_t heads, uint64_t *cylinders)
{
    uint64_t c = capacity / ((uint64_t)heads * 63);
    if (heads == 16 && c > 16383)
        c = 16383;
    if (c == 0)
        c = 1;
    *cylinders = c;
}

int vmdk_desc_format(struct p2v_buf *out, uint32_t cid, const char *create_type,
                     const struct vmdk_desc_out_extent *ext, size_t n, uint64_t capacity,
                     const char *adapter, struct p2v_err *err)
{
    uint32_t heads = 16;
    const char *ad = vmdk_adapter_canonical(adapter, &heads);
    uint64_t cyl;
    if (!ad)
        return p2v_err_set(err, EINVAL, "unknown adapter type '%s' (ide, lsilogic, "
                           "buslogic or pvscsi)", adapter);
    vmdk_geometry(capacity, heads, &cyl);
    int r = p2v_buf_printf(out,
                           "# Disk DescriptorFile\n"
                           "version=1\n"
                           "CID=%08x\n"
                           "parentCID=ffffffff\n"
                           "createType=\"%s\"\n"
                           "\n"
                           "# Extent description\n",
                           cid, create_type);
    for (size_t i = 0; i < n && r == 0; i++) {
        if (strcmp(ext[i].type, "FLAT") == 0)
            r = p2v_buf_printf(out, "RW %llu FLAT \"%s\" 0\n",
                               (unsigned long long)ext[i].sectors, ext[i].name);
        else
            r = p2v_buf_printf(out, "RW %llu %s \"%s\"\n",
                               (unsigned long long)ext[i].sectors, ext[i].type,
                               ext[i].name);
    }
    if (r == 0)
        r = p2v_buf_printf(out,
                           "\n"
                           "# The Disk Data Base\n"
                           "#DDB\n"
                           "\n"
                           "ddb.virtualHWVersion = \"4\"\n"
                           "ddb.geometry.cylinders = \"%llu\"\n"
                           "ddb.geometry.heads = \"%u\"\n"
                           "ddb.geometry.sectors = \"63\"\n"
                           "ddb.adapterType = \"%s\"\n",
                           (unsigned long long)cyl, heads, ad);
    if (r < 0)
        return p2v_err_set(err, ENOMEM, "out of memory formatting the descriptor");
    return 0;
}
