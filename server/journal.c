/* journal.c: committed-range sets and the per-disk journal (diskN.journal), the durable
 * record of which chunks of an in-progress image hold verified data, and up to which
 * checkpoint of the image. The format is described in
 * server.h; the codecs are pure functions over 64-byte blocks so that they can be tested
 * and fuzzed apart from the file I/O.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "server.h"

/* ---------------------------------------------------------------- ranges */

static int ranges_reserve(struct srv_ranges *r, size_t need)
{
    if (need <= r->cap)
        return 0;
    size_t cap = r->cap ? r->cap * 2 : 16;
    while (cap < need)
        cap *= 2;
    struct p2v_range *v = realloc(r->v, cap * sizeof *v);
    if (!v) {
        errno = ENOMEM;
        return -1;
    }
    r->v = v;
    r->cap = cap;
    return 0;
}

int srv_ranges_add(struct srv_ranges *r, uint64_t off, uint64_t len)
{
    uint64_t end;
    if (len == 0 || P2V_ADD_OVERFLOW(off, len, &end)) {
        errno = EINVAL;
        return -1;
    }
    /* first range whose end reaches off (could merge with the new one) */
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->v[mid].off + r->v[mid].len < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* ranges [lo, k) touch or overlap the new one */
    size_t k = lo;
    uint64_t nstart = off, nend = end;
    while (k < r->n && r->v[k].off <= end) {
        if (r->v[k].off < nstart)
            nstart = r->v[k].off;
        if (r->v[k].off + r->v[k].len > nend)
            nend = r->v[k].off + r->v[k].len;
        k++;
    }
    if (k == lo) { /* no merge: insert at lo */
        if (ranges_reserve(r, r->n + 1) < 0)
            return -1;
        memmove(&r->v[lo + 1], &r->v[lo], (r->n - lo) * sizeof *r->v);
        r->v[lo].off = off;
        r->v[lo].len = len;
        r->n++;
        return 0;
    }
    r->v[lo].off = nstart;
    r->v[lo].len = nend - nstart;
    memmove(&r->v[lo + 1], &r->v[k], (r->n - k) * sizeof *r->v);
    r->n -= k - lo - 1;
    return 0;
}

uint64_t srv_ranges_bytes(const struct srv_ranges *r)
{
    uint64_t t = 0;
    for (size_t i = 0; i < r->n; i++)
        t += r->v[i].len;
    return t;
}

bool srv_ranges_covers(const struct srv_ranges *r, uint64_t off, uint64_t len)
{
    size_t lo = 0, hi = r->n;
    while (lo < hi) { /* last range starting at or before off */
        size_t mid = lo + (hi - lo) / 2;
        if (r->v[mid].off <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return false;
    const struct p2v_range *x = &r->v[lo - 1];
    return off - x->off <= x->len && len <= x->len - (off - x->off);
}

void srv_ranges_clear(struct srv_ranges *r)
{
    r->n = 0;
}

void srv_ranges_free(struct srv_ranges *r)
{
    free(r->v);
    r->v = NULL;
    r->n = r->cap = 0;
}

/* ---------------------------------------------------------------- codecs */

_Static_assert(sizeof(JRNL_MAGIC) - 1 == 8, "journal magic is 8 bytes");

static uint32_t crc60(const uint8_t *p)
{
    return (uint32_t)crc32(0L, p, 60);
}

void jrnl_encode_header(uint8_t out[JRNL_HDR_LEN], uint64_t disk_size, uint32_t sector_size,
                        uint8_t hash_algo)
{
    memset(out, 0, JRNL_HDR_LEN);
    memcpy(out, JRNL_MAGIC, 8);
    p2v_put_u32le(out + 8, JRNL_VERSION);
    p2v_put_u32le(out + 12, sector_size);
    p2v_put_u64le(out + 16, disk_size);
    out[24] = hash_algo;
    p2v_put_u32le(out + 60, crc60(out));
}

int jrnl_decode_header(const uint8_t in[JRNL_HDR_LEN], uint64_t *disk_size,
                       uint32_t *sector_size, uint8_t *hash_algo, struct p2v_err *err)
{
    if (memcmp(in, JRNL_MAGIC, 8) != 0)
        return p2v_err_set(err, EINVAL, "bad magic");
    if (p2v_get_u32le(in + 60) != crc60(in))
        return p2v_err_set(err, EINVAL, "header checksum mismatch");
    uint32_t version = p2v_get_u32le(in + 8);
    if (version != JRNL_VERSION)
        return p2v_err_set(err, EINVAL, "unsupported version %u", version);
    uint32_t ss = p2v_get_u32le(in + 12);
    uint64_t size = p2v_get_u64le(in + 16);
    if (ss != 512 && ss != 4096)
        return p2v_err_set(err, EINVAL, "bad sector size %u", ss);
    if (size == 0 || size % 512 || size > INT64_MAX)
        return p2v_err_set(err, EINVAL, "bad disk size %llu", (unsigned long long)size);
    *disk_size = size;
    *sector_size = ss;
    *hash_algo = in[24];
    return 0;
}

void jrnl_encode_rec(uint8_t out[JRNL_REC_LEN], const struct jrnl_rec *r)
{
    memset(out, 0, JRNL_REC_LEN);
    p2v_put_u64le(out, r->off);
    p2v_put_u32le(out + 8, r->len);
    out[12] = r->flags;
    memcpy(out + 16, r->hash, P2V_PROTO_HASH_LEN);
    p2v_put_u64le(out + 48, r->session);
    out[56] = r->hash_algo;
    p2v_put_u32le(out + 60, crc60(out));
}

int jrnl_decode_rec(const uint8_t in[JRNL_REC_LEN], uint64_t disk_size, struct jrnl_rec *r,
                    struct p2v_err *err)
{
    if (p2v_get_u32le(in + 60) != crc60(in))
        return p2v_err_set(err, EINVAL, "record checksum mismatch");
    struct jrnl_rec x;
    x.off = p2v_get_u64le(in);
    x.len = p2v_get_u32le(in + 8);
    x.flags = in[12];
    memcpy(x.hash, in + 16, P2V_PROTO_HASH_LEN);
    x.session = p2v_get_u64le(in + 48);
    x.hash_algo = in[56];
    if (x.flags & ~(JRNL_REC_ZERO | JRNL_REC_MARK | JRNL_REC_DURABLE))
        return p2v_err_set(err, EINVAL, "record has unknown flags 0x%02x", x.flags);
    if (x.flags & JRNL_REC_MARK) {
        static const uint8_t zeros[P2V_PROTO_HASH_LEN - JRNL_BOOT_LEN];
        if ((x.flags & JRNL_REC_ZERO) || x.len != 0 || x.off > INT64_MAX ||
            memcmp(x.hash + JRNL_BOOT_LEN, zeros, sizeof zeros) != 0)
            return p2v_err_set(err, EINVAL, "mark record is invalid");
        *r = x;
        return 0;
    }
    if (x.flags & JRNL_REC_DURABLE)
        return p2v_err_set(err, EINVAL, "a chunk record has the DURABLE flag");
    if (x.len == 0 || x.len > P2V_PROTO_CHUNK_MAX || x.len % 512 || x.off % 512 ||
        !p2v_range_ok(x.off, x.len, disk_size))
        return p2v_err_set(err, EINVAL, "record range %llu+%u is invalid",
                           (unsigned long long)x.off, x.len);
    *r = x;
    return 0;
}

/* ---------------------------------------------------------------- files */

static void jrnl_init(struct jrnl *j)
{
    memset(j, 0, sizeof *j);
    j->fd = -1;
}

int jrnl_create(int dirfd, const char *name, uint64_t disk_size, uint32_t sector_size,
                uint8_t hash_algo, struct jrnl *j, struct p2v_err *err)
{
    uint8_t hdr[JRNL_HDR_LEN];
    jrnl_init(j);
    int fd = openat(dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return p2v_err_errno(err, "cannot create '%s'", name);
    jrnl_encode_header(hdr, disk_size, sector_size, hash_algo);
    if (p2v_pwrite_full(fd, hdr, sizeof hdr, 0) < 0 || fdatasync(fd) < 0) {
        p2v_err_errno(err, "cannot write '%s'", name);
        close(fd);
        return -1;
    }
    j->fd = fd;
    j->disk_size = disk_size;
    j->sector_size = sector_size;
    j->hash_algo = hash_algo;
    j->end = JRNL_HDR_LEN;
    return 0;
}

#define JRNL_READ_RECS 1024 /* records per read at open */

void jrnl_boot_id(uint8_t out[JRNL_BOOT_LEN])
{
    char text[64];
    memset(out, 0, JRNL_BOOT_LEN);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return;
    text[n] = '\0';
    /* 36 characters: hex digits and dashes */
    uint8_t v[JRNL_BOOT_LEN];
    size_t k = 0;
    for (const char *p = text; *p && *p != '\n' && k < 2 * JRNL_BOOT_LEN; p++) {
        int d;
        if (*p == '-')
            continue;
        if (*p >= '0' && *p <= '9')
            d = *p - '0';
        else if (*p >= 'a' && *p <= 'f')
            d = *p - 'a' + 10;
        else
            return;
        if (k % 2 == 0)
            v[k / 2] = (uint8_t)(d << 4);
        else
            v[k / 2] |= (uint8_t)d;
        k++;
    }
    if (k == 2 * JRNL_BOOT_LEN)
        memcpy(out, v, JRNL_BOOT_LEN);
}

static bool mark_counts(const struct jrnl_rec *m, const uint8_t boot[JRNL_BOOT_LEN])
{
    static const uint8_t none[JRNL_BOOT_LEN];
    if (m->flags & JRNL_REC_DURABLE)
        return true;
    return memcmp(boot, none, JRNL_BOOT_LEN) != 0 &&
           memcmp(m->hash, boot, JRNL_BOOT_LEN) == 0;
}

/* Read the good records of @x from the header on, up to @limit (file offset), calling
 * @fn on each. Sets *good_end to the offset after the last good record read. */
static int scan(struct jrnl *x, const char *name, uint8_t *buf, uint64_t limit,
                int (*fn)(struct jrnl *x, const struct jrnl_rec *r, uint64_t next, void *arg),
                void *arg, uint64_t *good_end, struct p2v_err *err)
{
    uint64_t pos = JRNL_HDR_LEN;
    bool bad = false;
    while (!bad && pos < limit) {
        size_t want = (size_t)P2V_MIN((uint64_t)JRNL_READ_RECS * JRNL_REC_LEN, limit - pos);
        ssize_t got = p2v_pread_full(x->fd, buf, want, pos);
        if (got < 0)
            return p2v_err_errno(err, "cannot read '%s' at offset %llu", name,
                                 (unsigned long long)pos);
        if (got == 0)
            break;
        size_t nrec = (size_t)got / JRNL_REC_LEN;
        for (size_t i = 0; i < nrec; i++) {
            struct jrnl_rec rec;
            if (jrnl_decode_rec(buf + i * JRNL_REC_LEN, x->disk_size, &rec, NULL) < 0) {
                bad = true;
                break;
            }
            pos += JRNL_REC_LEN;
            if (fn(x, &rec, pos, arg) < 0)
                return p2v_err_set(err, ENOMEM, "out of memory reading '%s'", name);
        }
        if ((size_t)got % JRNL_REC_LEN)
            break; /* a torn record at the end */
    }
    *good_end = pos;
    return 0;
}

struct find_mark {
    const uint8_t *boot;
    uint64_t end;    /* offset after the last mark that counts (header length: none) */
    uint64_t mark;
    bool found;
};

static int on_find(struct jrnl *x, const struct jrnl_rec *r, uint64_t next, void *arg)
{
    struct find_mark *f = arg;
    (void)x;
    if ((r->flags & JRNL_REC_MARK) && mark_counts(r, f->boot)) {
        f->end = next;
        f->mark = r->off;
        f->found = true;
    }
    return 0;
}

static int on_fold(struct jrnl *x, const struct jrnl_rec *r, uint64_t next, void *arg)
{
    (void)next;
    (void)arg;
    x->records++;
    if (r->flags & JRNL_REC_MARK)
        return 0;
    return srv_ranges_add(&x->committed, r->off, r->len);
}

int jrnl_open(int dirfd, const char *name, const uint8_t boot[JRNL_BOOT_LEN], struct jrnl *j,
              struct p2v_err *err)
{
    uint8_t hdr[JRNL_HDR_LEN];
    uint8_t *buf = NULL;
    struct jrnl x;
    struct stat sb;
    int r = -1;

    jrnl_init(&x);
    x.fd = openat(dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (x.fd < 0) {
        p2v_err_errno(err, "cannot open '%s'", name);
        goto out;
    }
    if (fstat(x.fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        p2v_err_set(err, EINVAL, "'%s' is not a regular file", name);
        goto out;
    }
    ssize_t got = p2v_pread_full(x.fd, hdr, sizeof hdr, 0);
    if (got < 0) {
        p2v_err_errno(err, "cannot read '%s'", name);
        goto out;
    }
    if (got != JRNL_HDR_LEN) {
        p2v_err_set(err, EINVAL, "'%s': header is truncated", name);
        goto out;
    }
    if (jrnl_decode_header(hdr, &x.disk_size, &x.sector_size, &x.hash_algo, err) < 0) {
        p2v_err_prefix(err, "'%s'", name);
        goto out;
    }
    buf = malloc((size_t)JRNL_READ_RECS * JRNL_REC_LEN);
    if (!buf) {
        p2v_err_set(err, ENOMEM, "out of memory reading '%s'", name);
        goto out;
    }
    /* two passes: find the last mark that counts, then fold the records before it */
    uint64_t file_size = (uint64_t)sb.st_size, good_end, pos;
    struct find_mark f = {.boot = boot, .end = JRNL_HDR_LEN};
    if (scan(&x, name, buf, file_size, on_find, &f, &good_end, err) < 0 ||
        scan(&x, name, buf, f.end, on_fold, NULL, &pos, err) < 0)
        goto out;
    x.marked = f.found;
    x.mark = f.mark;
    if (pos < file_size) {
        /* drop the tail so that appends follow the last mark that counts */
        x.dropped = (file_size - pos + JRNL_REC_LEN - 1) / JRNL_REC_LEN;
        x.lost = (good_end - pos) / JRNL_REC_LEN;
        if (ftruncate(x.fd, (off_t)pos) < 0 || fdatasync(x.fd) < 0) {
            p2v_err_errno(err, "cannot truncate '%s' to its last good record", name);
            goto out;
        }
    }
    x.end = pos;
    *j = x;
    jrnl_init(&x);
    r = 0;
out:
    free(buf);
    if (x.fd >= 0)
        close(x.fd);
    srv_ranges_free(&x.committed);
    return r;
}

int jrnl_append(struct jrnl *j, const struct jrnl_rec *recs, size_t n, struct p2v_err *err)
{
    if (n == 0)
        return 0;
    size_t bytes;
    if (P2V_MUL_OVERFLOW(n, (size_t)JRNL_REC_LEN, &bytes))
        return p2v_err_set(err, EOVERFLOW, "too many journal records");
    uint8_t *buf = malloc(bytes);
    if (!buf)
        return p2v_err_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        jrnl_encode_rec(buf + i * JRNL_REC_LEN, &recs[i]);
    int r = -1;
    if (p2v_pwrite_full(j->fd, buf, bytes, j->end) < 0 || fdatasync(j->fd) < 0) {
        int e = errno;
        /* cut off what may have landed, so that the next append follows good records */
        if (ftruncate(j->fd, (off_t)j->end) == 0)
            (void)fdatasync(j->fd);
        errno = e;
        p2v_err_errno(err, "cannot append to the journal");
        goto out;
    }
    j->end += bytes;
    j->records += n;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].flags & JRNL_REC_MARK) {
            j->marked = true;
            j->mark = recs[i].off;
            continue;
        }
        if (srv_ranges_add(&j->committed, recs[i].off, recs[i].len) < 0) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out;
        }
    }
    r = 0;
out:
    free(buf);
    return r;
}

void jrnl_close(struct jrnl *j)
{
    if (j->fd >= 0)
        close(j->fd);
    srv_ranges_free(&j->committed);
    jrnl_init(j);
}

/* ---------------------------------------------------------------- re-sync */

int jrnl_match(struct jrnl *j, struct jrnl_hash_entry *e, size_t n, uint8_t hash_algo,
               struct p2v_err *err)
{
    uint8_t *buf = NULL, *zeros = NULL;
    uint8_t zhash[P2V_PROTO_HASH_LEN];
    uint32_t zhash_len = 0; /* the length zhash is for (0: none) */
    int r = -1;

    for (size_t i = 0; i < n; i++)
        e[i].same = false;
    if (n == 0)
        return 0;
    buf = malloc((size_t)JRNL_READ_RECS * JRNL_REC_LEN);
    if (!buf) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    /* Records in append order: a later record over an entry's range decides whether the
     * entry still matches (the latest write wins). */
    for (uint64_t pos = JRNL_HDR_LEN; pos < j->end;) {
        size_t want = (size_t)P2V_MIN((uint64_t)JRNL_READ_RECS * JRNL_REC_LEN, j->end - pos);
        ssize_t got = p2v_pread_full(j->fd, buf, want, pos);
        if (got < 0 || (size_t)got != want) {
            p2v_err_errno(err, "cannot read the journal at offset %llu",
                          (unsigned long long)pos);
            goto out;
        }
        for (size_t k = 0; k < want / JRNL_REC_LEN; k++) {
            struct jrnl_rec rec;
            if (jrnl_decode_rec(buf + k * JRNL_REC_LEN, j->disk_size, &rec, err) < 0) {
                p2v_err_prefix(err, "journal record at offset %llu",
                               (unsigned long long)(pos + k * JRNL_REC_LEN));
                goto out;
            }
            if (rec.flags & JRNL_REC_MARK)
                continue;
            uint64_t rend = rec.off + rec.len;
            /* first entry that ends after rec.off (entries are sorted, disjoint) */
            size_t lo = 0, hi = n;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (e[mid].off + e[mid].len <= rec.off)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            for (size_t i = lo; i < n && e[i].off < rend; i++) {
                bool same = rec.off == e[i].off && rec.len == e[i].len &&
                            rec.hash_algo == hash_algo;
                if (same && (rec.flags & JRNL_REC_ZERO)) {
                    if (zhash_len != rec.len) {
                        if (!zeros && !(zeros = calloc(1, P2V_PROTO_CHUNK_MAX))) {
                            p2v_err_set(err, ENOMEM, "out of memory");
                            goto out;
                        }
                        if (p2v_hash((enum p2v_hash_algo)hash_algo, zeros, rec.len,
                                     zhash) < 0) {
                            p2v_err_set(err, EINVAL, "cannot hash");
                            goto out;
                        }
                        zhash_len = rec.len;
                    }
                    same = memcmp(zhash, e[i].hash, P2V_PROTO_HASH_LEN) == 0;
                } else if (same) {
                    same = memcmp(rec.hash, e[i].hash, P2V_PROTO_HASH_LEN) == 0;
                }
                e[i].same = same;
            }
        }
        pos += want;
    }
    r = 0;
out:
    free(buf);
    free(zeros);
    return r;
}
