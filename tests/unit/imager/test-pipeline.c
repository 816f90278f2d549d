/* test-pipeline.c: TAP unit test of libimager's read pipeline (imager/pipeline.c) on temp
 * files. Every chunk is checked against the file's bytes and outside oracles: the hash
 * against OpenSSL's one-shot EVP_Digest (the legacy EVP_sha256 / EVP_blake2b512 getters,
 * not the pipeline's fetched digests), the zstd frame against ZSTD_decompress. The chunk
 * list is compared with one computed here the slow way (every chunk_size cell of every
 * extent, dropped when wholly inside a skip range): in order, covering exactly the extents
 * minus the skipped chunks, aligned to chunk_size, never crossing an extent's end. Also:
 * zero chunks, incompressible chunks sent raw, a tiny chunk size, threads 1 / 2 / 4 give
 * the same results, byte counters, free at any moment (before, during, after), a read
 * error that is not a media error, a source shorter than its declared size, bounded
 * memory over a large file, the holes of a sparse file handed out as zero chunks without
 * a read (/proc/self/io's rchar), a plan of scattered extents read ahead of the reads
 * (mincore), and bad arguments refused with a message.
 * (Real unreadable sectors: test-bad-sectors.sh.)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "imager.h"
#include "tap.h"

#define KIB 1024u
#define MIB (1024u * 1024u)

static char tmpdir[] = "/tmp/test-pipeline.XXXXXX";

/* ------------------------------------------------------------------ data */

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fill_random(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(rnd() >> 24);
}

static void fill_text(uint8_t *p, size_t n)
{
    static const char *words[] = {"chunk", "extent", "sector", "pipeline", "zstd",
                                  "hash", "reader", "worker", "offset", "disk"};
    size_t i = 0;
    while (i < n) {
        const char *w = words[rnd() % P2V_ARRAY_SIZE(words)];
        for (size_t k = 0; w[k] && i < n; k++)
            p[i++] = (uint8_t)w[k];
        if (i < n)
            p[i++] = rnd() % 8 ? ' ' : '\n';
    }
}

/* A source image in memory and on disk: 1 MiB stripes of random, zeros, text, zeros with
 * one byte set, text, random, ... and a tail that is not a multiple of anything. */
struct src {
    char path[256];
    int fd;
    uint8_t *data;
    uint64_t size;
};

static void src_make(struct src *s, const char *name, uint64_t size, bool sparse_only)
{
    snprintf(s->path, sizeof(s->path), "%s/%s", tmpdir, name);
    s->size = size;
    s->data = calloc(1, size ? size : 1);
    if (!s->data)
        abort();
    if (!sparse_only) {
        for (uint64_t off = 0, i = 0; off < size; off += MIB, i++) {
            size_t n = (size_t)P2V_MIN((uint64_t)MIB, size - off);
            switch (i % 5) {
            case 0:
                fill_random(s->data + off, n);
                break;
            case 2:
            case 4:
                fill_text(s->data + off, n);
                break;
            case 3: /* zeros with one byte set in its middle */
                s->data[off + n / 2] = 1;
                break;
            default:
                break;
            }
        }
    }
    int fd = open(s->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0 ||
        (!sparse_only && p2v_pwrite_full(fd, s->data, size, 0) != (ssize_t)size))
        abort();
    close(fd);
    s->fd = open(s->path, O_RDONLY);
    if (s->fd < 0)
        abort();
}

static void src_free(struct src *s)
{
    close(s->fd);
    unlink(s->path);
    free(s->data);
}

/* ------------------------------------------------------------------ running */

struct rec {
    uint64_t off;
    uint32_t len;
    bool zero, zstd;
    uint8_t hash[32];
};

struct run {
    struct rec *r;
    size_t n;
    int rc;               /* imager_pipeline_next's last result */
    struct p2v_err err;
    size_t bad_data;      /* chunks whose data differs from the source */
    size_t bad_zero;      /* zero flag wrong */
    size_t bad_hash;      /* hash differs from the one-shot digest */
    size_t bad_zstd;      /* zdata does not decompress to the data */
    size_t bad_misc;      /* zlen >= len, data NULL for non-zero, ... */
    uint64_t bytes_read, bytes_skipped;
};

static void oracle_hash(enum imager_hash h, const uint8_t *p, size_t n, uint8_t out[32])
{
    uint8_t full[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    memset(out, 0, 32);
    if (h == 0)
        return;
    const EVP_MD *md = h == IMAGER_HASH_SHA256 ? EVP_sha256() : EVP_blake2b512();
    if (EVP_Digest(p, n, full, &len, md, NULL) != 1 || len < 32)
        abort();
    memcpy(out, full, 32);
}

/* Run the pipeline to its end (or @stop_after chunks) and check every chunk. */
static void run_opts(const struct src *s, struct imager_pipeline_opts *o, struct run *out)
{
    static uint8_t dbuf[MIB];
    memset(out, 0, sizeof(*out));
    o->fd = s->fd;
    o->path = s->path;
    o->disk_size = s->size;
    struct imager_pipeline *p = imager_pipeline_start(o, &out->err);
    if (!p) {
        out->rc = -2;
        return;
    }
    struct imager_chunk c;
    size_t cap = 0;
    while ((out->rc = imager_pipeline_next(p, &c, &out->err)) == 1) {
        if (out->n == cap) {
            cap = cap ? cap * 2 : 256;
            out->r = realloc(out->r, cap * sizeof(*out->r));
            if (!out->r)
                abort();
        }
        struct rec *r = &out->r[out->n++];
        r->off = c.off;
        r->len = c.len;
        r->zero = c.zero;
        r->zstd = c.zdata != NULL;
        memcpy(r->hash, c.hash, 32);
        if (c.off > s->size || c.len > s->size - c.off || c.len == 0) {
            out->bad_misc++;
            continue;
        }
        const uint8_t *want = s->data + c.off;
        bool z = p2v_is_zero(want, c.len);
        if (z != c.zero)
            out->bad_zero++;
        if (c.zero) {
            static const uint8_t zh[32];
            if (c.data || c.zdata || memcmp(c.hash, zh, 32) != 0)
                out->bad_misc++;
            continue;
        }
        if (!c.data || memcmp(c.data, want, c.len) != 0)
            out->bad_data++;
        uint8_t h[32];
        oracle_hash(o->hash, want, c.len, h);
        if (memcmp(h, c.hash, 32) != 0)
            out->bad_hash++;
        if (c.zdata) {
            if (c.zlen == 0 || c.zlen >= c.len || o->zstd_level == 0)
                out->bad_misc++;
            size_t d = ZSTD_decompress(dbuf, sizeof(dbuf), c.zdata, c.zlen);
            if (ZSTD_isError(d) || d != c.len || memcmp(dbuf, want, c.len) != 0)
                out->bad_zstd++;
        } else if (c.zlen) {
            out->bad_misc++;
        }
    }
    out->bytes_read = imager_pipeline_bytes_read(p);
    out->bytes_skipped = imager_pipeline_bytes_skipped(p);
    imager_pipeline_free(p);
}

static void run_free(struct run *r)
{
    free(r->r);
    r->r = NULL;
}

/* The chunk list computed the slow way. Returns the count; *skipped gets the bytes. */
static size_t expect_chunks(const struct imager_extent *ext, size_t count,
                            const struct imager_extent *skip, size_t nskip, uint32_t cs,
                            struct rec *out, size_t max, uint64_t *skipped)
{
    size_t n = 0;
    *skipped = 0;
    for (size_t e = 0; e < count; e++) {
        uint64_t pos = ext[e].off, end = ext[e].off + ext[e].len;
        while (pos < end) {
            uint64_t cend = P2V_MIN((pos / cs + 1) * cs, end);
            bool in_skip = false;
            for (size_t k = 0; k < nskip; k++)
                if (skip[k].off <= pos && cend <= skip[k].off + skip[k].len)
                    in_skip = true;
            if (in_skip) {
                *skipped += cend - pos;
            } else {
                if (n == max)
                    abort();
                out[n].off = pos;
                out[n].len = (uint32_t)(cend - pos);
                n++;
            }
            pos = cend;
        }
    }
    return n;
}

static bool run_clean(const struct run *r)
{
    if (r->rc != 0)
        diag("run ended with %d: %s", r->rc, r->err.msg);
    if (r->bad_data || r->bad_zero || r->bad_hash || r->bad_zstd || r->bad_misc)
        diag("bad: data %zu zero %zu hash %zu zstd %zu misc %zu", r->bad_data, r->bad_zero,
             r->bad_hash, r->bad_zstd, r->bad_misc);
    return r->rc == 0 && !r->bad_data && !r->bad_zero && !r->bad_hash && !r->bad_zstd &&
           !r->bad_misc;
}

static bool same_chunks(const struct run *r, const struct rec *want, size_t n)
{
    if (r->n != n) {
        diag("got %zu chunks, want %zu", r->n, n);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (r->r[i].off != want[i].off || r->r[i].len != want[i].len) {
            diag("chunk %zu: got %llu+%u, want %llu+%u", i, (unsigned long long)r->r[i].off,
                 r->r[i].len, (unsigned long long)want[i].off, want[i].len);
            return false;
        }
    }
    return true;
}

static bool same_runs(const struct run *a, const struct run *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const struct rec *x = &a->r[i], *y = &b->r[i];
        if (x->off != y->off || x->len != y->len || x->zero != y->zero ||
            x->zstd != y->zstd || memcmp(x->hash, y->hash, 32) != 0)
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------ tests */

static void test_whole(const struct src *s)
{
    struct imager_extent whole = {0, s->size};
    struct imager_pipeline_opts o = {.ext = &whole, .count = 1, .chunk_size = MIB,
                                     .threads = 2, .hash = IMAGER_HASH_SHA256,
                                     .zstd_level = 3};
    struct run r;
    run_opts(s, &o, &r);
    ok(run_clean(&r), "whole file, 1 MiB chunks: data, zero flags, sha256, zstd all right");
    struct rec want[64];
    uint64_t sk;
    size_t n = expect_chunks(&whole, 1, NULL, 0, MIB, want, 64, &sk);
    ok(same_chunks(&r, want, n), "whole file: %zu chunks in order, covering it exactly", n);
    size_t zero = 0, zstd = 0, rawrand = 0, rawother = 0;
    for (size_t i = 0; i < r.n; i++) {
        zero += r.r[i].zero;
        zstd += r.r[i].zstd;
        bool random_stripe = (r.r[i].off / MIB) % 5 == 0;
        if (!r.r[i].zero && !r.r[i].zstd) {
            if (random_stripe)
                rawrand++;
            else
                rawother++;
        }
    }
    /* stripes: 0 random, 1 zero, 2 text, 3 one byte, 4 text (the short tail: text) */
    size_t nstripes = (size_t)P2V_DIV_ROUND_UP(s->size, MIB);
    size_t want_zero = 0, want_rand = 0;
    for (size_t i = 0; i < nstripes; i++) {
        want_zero += i % 5 == 1;
        want_rand += i % 5 == 0;
    }
    is_int(zero, want_zero, "whole file: the all-zero chunks are flagged zero");
    is_int(rawrand, want_rand, "whole file: random chunks come uncompressed (zdata NULL)");
    is_int(rawother, 0, "whole file: every text / sparse chunk comes compressed");
    ok(zstd > 0, "whole file: %zu chunks compressed", zstd);
    is_int(r.bytes_read, s->size, "bytes_read counts the whole file");
    is_int(r.bytes_skipped, 0, "nothing skipped");
    run_free(&r);
}

static void test_extents_skip(const struct src *s)
{
    /* extents that do not start or end on a chunk boundary, one ending at the unaligned
     * end of the file; skip ranges covering whole chunks, parts of chunks, an extent's
     * head and one crossing two extents */
    const uint32_t cs = 64 * KIB;
    uint64_t sz = s->size;
    struct imager_extent ext[] = {
        {3 * 512, MIB + 7 * 512},
        {3 * MIB - 512, 5 * 512},
        {4 * MIB + 4096, 2 * MIB},
        {7 * MIB + 512, 3 * MIB},
        {sz - 70 * KIB - (sz % 512), 70 * KIB + (sz % 512)},
    };
    struct imager_extent skip[] = {
        {0, 100 * 512},                            /* the first extent's head */
        {MIB / 2 + 5 * 512, 3 * cs},               /* two whole chunks and parts */
        {4 * MIB + 4096 + 2 * cs, 5 * cs + 512},   /* whole chunks + a part */
        {6 * MIB, MIB + 100 * KIB},                /* the end of one extent, head of next */
        {sz - 64 * KIB, 64 * KIB},                 /* the tail */
    };
    for (int variant = 0; variant < 2; variant++) {
        struct imager_pipeline_opts o = {.ext = ext, .count = P2V_ARRAY_SIZE(ext),
                                         .chunk_size = cs, .threads = 2,
                                         .hash = IMAGER_HASH_BLAKE2B, .zstd_level = 1};
        if (variant) {
            o.skip = skip;
            o.nskip = P2V_ARRAY_SIZE(skip);
        }
        struct run r;
        run_opts(s, &o, &r);
        static struct rec want[1024];
        uint64_t sk, planned = 0;
        size_t n = expect_chunks(ext, P2V_ARRAY_SIZE(ext), o.skip, o.nskip, cs, want, 1024,
                                 &sk);
        for (size_t i = 0; i < P2V_ARRAY_SIZE(ext); i++)
            planned += ext[i].len;
        const char *v = variant ? "with skip ranges" : "no skip";
        ok(run_clean(&r), "unaligned extents, %s: data, blake2b, zstd all right", v);
        ok(same_chunks(&r, want, n), "unaligned extents, %s: the %zu expected chunks", v, n);
        bool aligned = true, inside = true;
        for (size_t i = 0; i < r.n; i++) {
            uint64_t a = r.r[i].off, b = a + r.r[i].len;
            if ((a / cs) != ((b - 1) / cs))
                aligned = false;
            bool in = false;
            for (size_t e = 0; e < P2V_ARRAY_SIZE(ext); e++)
                in |= a >= ext[e].off && b <= ext[e].off + ext[e].len;
            inside &= in;
        }
        ok(aligned && inside,
           "unaligned extents, %s: no chunk crosses a chunk_size boundary or an extent end", v);
        is_int(r.bytes_skipped, sk, "unaligned extents, %s: bytes skipped", v);
        is_int(r.bytes_read, planned, "unaligned extents, %s: read + skipped = planned", v);
        if (variant)
            ok(sk > 0 && n > 0, "skip ranges dropped %llu bytes", (unsigned long long)sk);
        run_free(&r);
    }
}

static void test_tiny_and_threads(const struct src *s)
{
    struct imager_extent ext[] = {{MIB - 8 * KIB, 40 * KIB}, {2 * MIB + 512, 100 * KIB}};
    struct imager_pipeline_opts o = {.ext = ext, .count = 2, .chunk_size = 512, .threads = 2,
                                     .hash = IMAGER_HASH_SHA256, .zstd_level = 3};
    struct run r;
    run_opts(s, &o, &r);
    static struct rec want[1024];
    uint64_t sk;
    size_t n = expect_chunks(ext, 2, NULL, 0, 512, want, 1024, &sk);
    ok(run_clean(&r), "512-byte chunks: data, hashes, zstd all right");
    ok(same_chunks(&r, want, n), "512-byte chunks: %zu chunks in order", n);
    run_free(&r);

    /* the same work with 1, 2 and 4 workers (more workers than CPUs shakes the order),
     * and with 4 KiB chunks: many chunks in flight, handed out in order all the same */
    struct imager_extent whole = {0, s->size};
    struct run t[3];
    const int threads[3] = {1, 2, 4};
    for (int i = 0; i < 3; i++) {
        struct imager_pipeline_opts oi = {.ext = &whole, .count = 1, .chunk_size = 4 * KIB,
                                          .threads = threads[i], .hash = IMAGER_HASH_BLAKE2B,
                                          .zstd_level = 3};
        run_opts(s, &oi, &t[i]);
        ok(run_clean(&t[i]), "4 KiB chunks, %d threads: every chunk right", threads[i]);
    }
    ok(t[0].n == (size_t)P2V_DIV_ROUND_UP(s->size, 4 * KIB) && same_runs(&t[0], &t[1]) &&
           same_runs(&t[0], &t[2]),
       "threads 1, 2 and 4 give identical chunks (%zu)", t[0].n);
    for (int i = 0; i < 3; i++)
        run_free(&t[i]);

    /* a 4 KiB random chunk is too short for the sample test: zstd tries and it does not
     * shrink, so it goes out raw all the same */
    struct imager_extent rnd_ext = {0, 4 * KIB};
    struct imager_pipeline_opts ot = {.ext = &rnd_ext, .count = 1, .chunk_size = 4 * KIB,
                                      .threads = 1, .hash = IMAGER_HASH_SHA256,
                                      .zstd_level = 19};
    run_opts(s, &ot, &r);
    ok(run_clean(&r) && r.n == 1 && !r.r[0].zstd && !r.r[0].zero,
       "a short random chunk that zstd cannot shrink comes uncompressed");
    run_free(&r);

    /* no hash, no compression */
    struct imager_pipeline_opts on = {.ext = &whole, .count = 1, .threads = 0};
    run_opts(s, &on, &r);
    bool any_zstd = false;
    for (size_t i = 0; i < r.n; i++)
        any_zstd |= r.r[i].zstd;
    ok(run_clean(&r) && !any_zstd && r.n == (size_t)P2V_DIV_ROUND_UP(s->size, MIB),
       "hash 0, zstd level 0, default chunk size and threads: plain chunks, zero hashes");
    run_free(&r);

    /* no extents at all: the end at once */
    struct imager_pipeline_opts oe = {.ext = NULL, .count = 0, .hash = IMAGER_HASH_SHA256};
    run_opts(s, &oe, &r);
    ok(r.rc == 0 && r.n == 0, "no extents: no chunk, the end");
    run_free(&r);
}

static void test_free_anytime(const struct src *s)
{
    struct imager_extent whole = {0, s->size};
    struct imager_pipeline_opts o = {.fd = s->fd, .path = s->path, .disk_size = s->size,
                                     .ext = &whole, .count = 1, .chunk_size = 64 * KIB,
                                     .threads = 2, .hash = IMAGER_HASH_SHA256,
                                     .zstd_level = 3};
    struct p2v_err err;
    bool all = true;
    for (int i = 0; i < 40; i++) {
        struct imager_pipeline *p = imager_pipeline_start(&o, &err);
        if (!p) {
            all = false;
            break;
        }
        struct imager_chunk c;
        int stop_after = i % 4 == 0 ? 0 : i % 4 == 1 ? 1 : i % 4 == 2 ? 7 : 30;
        if (i % 8 == 5) {
            /* let the reader fill every slot and block */
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        for (int k = 0; k < stop_after; k++)
            if (imager_pipeline_next(p, &c, &err) != 1 || c.off != (uint64_t)k * 64 * KIB)
                all = false;
        imager_pipeline_free(p);
    }
    ok(all, "free right after start, after 1, 7 and 30 chunks, with the reader blocked: "
            "no hang (leaks: the ASan build)");

    /* after the end, next keeps saying 0; free after that */
    struct imager_extent small = {0, 128 * KIB};
    o.ext = &small;
    struct imager_pipeline *p = imager_pipeline_start(&o, &err);
    struct imager_chunk c;
    int n = 0, r;
    while (p && (r = imager_pipeline_next(p, &c, &err)) == 1)
        n++;
    ok(p && n == 2 && imager_pipeline_next(p, &c, &err) == 0 &&
           imager_pipeline_next(p, &c, &err) == 0,
       "after the end imager_pipeline_next keeps returning 0");
    imager_pipeline_free(p);
    imager_pipeline_free(NULL);
    ok(1, "imager_pipeline_free(NULL) is a no-op");
}

static void test_errors(const struct src *s)
{
    /* an fd open for writing only: pread fails with EBADF, which is not a media error and
     * ends the pipeline even with skip_bad_sectors */
    int wfd = open(s->path, O_WRONLY);
    struct imager_extent ext = {MIB, 256 * KIB};
    struct imager_pipeline_opts o = {.fd = wfd, .path = s->path, .disk_size = s->size,
                                     .ext = &ext, .count = 1, .chunk_size = 64 * KIB,
                                     .threads = 2, .hash = IMAGER_HASH_SHA256,
                                     .skip_bad_sectors = true, .retries = -1};
    struct p2v_err err = {0};
    struct imager_pipeline *p = imager_pipeline_start(&o, &err);
    struct imager_chunk c;
    int r = p ? imager_pipeline_next(p, &c, &err) : -2;
    ok(r == -1 && err.code == EBADF && strstr(err.msg, "offset 1048576") &&
           strstr(err.msg, "cannot read") &&
           strstr(err.msg, s->path),
       "a read failing with EBADF ends the pipeline naming the path and offset");
    diag("%s", err.msg);
    int r2 = p ? imager_pipeline_next(p, &c, &err) : -2;
    ok(r2 == -1 && err.code == EBADF, "and imager_pipeline_next keeps failing");
    size_t nbad = 99;
    imager_pipeline_bad_sectors(p, &nbad);
    is_int(nbad, 0, "no bad sector listed for it");
    imager_pipeline_free(p);
    close(wfd);

    /* a source shorter than the disk size it claims: the chunks before come out, then an
     * error naming the end */
    uint64_t fake = s->size + 3 * MIB;
    fake -= fake % 512;
    uint64_t from = s->size - s->size % MIB - MIB;
    struct imager_extent tail = {from, fake - from};
    struct imager_pipeline_opts os = {.fd = s->fd, .path = s->path, .disk_size = fake,
                                      .ext = &tail, .count = 1, .threads = 1,
                                      .hash = IMAGER_HASH_SHA256};
    memset(&err, 0, sizeof(err));
    p = imager_pipeline_start(&os, &err);
    int good = 0;
    while (p && (r = imager_pipeline_next(p, &c, &err)) == 1)
        good++;
    ok(p && r == -1 && err.code == ENXIO && strstr(err.msg, "unexpected end") && good == 1,
       "a source shorter than disk_size: %d chunk, then an error", good);
    diag("%s", err.msg);
    imager_pipeline_free(p);
}

static void test_bad_args(const struct src *s)
{
    struct imager_extent whole = {0, s->size};
    struct imager_extent unsorted[] = {{MIB, 512}, {0, 512}};
    struct imager_extent overlap[] = {{0, 4096}, {2048, 4096}};
    struct imager_extent empty[] = {{0, 0}};
    struct imager_extent outside[] = {{s->size - s->size % 512, 4096}};
    struct imager_extent unaligned[] = {{100, 4096}};
    struct imager_extent wrap[] = {{512, UINT64_MAX - 100}};
    struct {
        const char *what;
        struct imager_pipeline_opts o;
    } cases[] = {
        {"fd -1", {.fd = -1, .ext = &whole, .count = 1}},
        {"chunk size 1000", {.ext = &whole, .count = 1, .chunk_size = 1000}},
        {"chunk size 2 MiB", {.ext = &whole, .count = 1, .chunk_size = 2 * MIB}},
        {"threads -1", {.ext = &whole, .count = 1, .threads = -1}},
        {"threads 1000", {.ext = &whole, .count = 1, .threads = 1000}},
        {"hash 7", {.ext = &whole, .count = 1, .hash = 7}},
        {"zstd level 99", {.ext = &whole, .count = 1, .zstd_level = 99}},
        {"extents NULL with count 1", {.ext = NULL, .count = 1}},
        {"unsorted extents", {.ext = unsorted, .count = 2}},
        {"overlapping extents", {.ext = overlap, .count = 2}},
        {"an empty extent", {.ext = empty, .count = 1}},
        {"an extent past the disk's end", {.ext = outside, .count = 1}},
        {"an extent not sector aligned", {.ext = unaligned, .count = 1}},
        {"an extent that wraps", {.ext = wrap, .count = 1}},
        {"unsorted skip ranges", {.ext = &whole, .count = 1, .skip = unsorted, .nskip = 2}},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(cases); i++) {
        struct imager_pipeline_opts o = cases[i].o;
        if (o.fd == 0)
            o.fd = s->fd;
        o.path = s->path;
        o.disk_size = s->size;
        struct p2v_err err = {0};
        struct imager_pipeline *p = imager_pipeline_start(&o, &err);
        ok(!p && err.code != 0 && err.msg[0] && strstr(err.msg, s->path), "refused: %s (%s)",
           cases[i].what, err.msg);
        imager_pipeline_free(p);
    }
    struct p2v_err err = {0};
    ok(imager_pipeline_start(NULL, &err) == NULL && err.code == EINVAL, "refused: no options");
    struct imager_chunk c;
    ok(imager_pipeline_next(NULL, &c, &err) == -1 && err.code == EINVAL,
       "imager_pipeline_next(NULL) fails with EINVAL");
    size_t n = 9;
    ok(imager_pipeline_bad_sectors(NULL, &n) == NULL && n == 0 &&
           imager_pipeline_bytes_read(NULL) == 0,
       "NULL pipeline: no bad sectors, no bytes");
}

static void test_memory_bound(void)
{
    /* 128 MiB read: the pipeline's memory stays a fixed pool of slots. */
    struct src s;
    src_make(&s, "dense.img", 128ull * MIB, false);
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    struct imager_extent whole = {0, s.size};
    struct imager_pipeline_opts o = {.fd = s.fd, .path = s.path, .disk_size = s.size,
                                     .ext = &whole, .count = 1, .threads = 2,
                                     .hash = IMAGER_HASH_SHA256, .zstd_level = 1};
    struct p2v_err err;
    struct imager_pipeline *p = imager_pipeline_start(&o, &err);
    struct imager_chunk c;
    size_t n = 0;
    while (p && imager_pipeline_next(p, &c, &err) == 1)
        n++;
    imager_pipeline_free(p);
    getrusage(RUSAGE_SELF, &ru1);
    long grew_mib = (ru1.ru_maxrss - ru0.ru_maxrss) / 1024;
    ok(n == 128, "128 MiB: 128 chunks");
    ok(grew_mib < 64, "memory grew by %ld MiB reading 128 MiB (fixed slot pool)", grew_mib);
    src_free(&s);
}

/* Bytes this process has read (rchar of /proc/self/io); 0 when unknown. */
static uint64_t rchar(void)
{
    unsigned long long v = 0;
    char line[128];
    FILE *f = fopen("/proc/self/io", "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "rchar: %llu", &v) == 1)
            break;
    fclose(f);
    return v;
}

/* A sparse image file: the chunks wholly inside its holes come out as zero chunks and are
 * not read; a chunk partly in a hole, and one written into a hole since (dirty in the
 * page cache: SEEK_DATA must see it), are read and right. */
static void test_holes(void)
{
    struct src s;
    src_make(&s, "holes.img", 10 * MIB + 512, false);
    int fd = open(s.path, O_RDWR);
    /* stripes 1 and 6 (zeros), the second half of 2 (text), the first half of 3 (its set
     * byte is in the middle: kept) */
    const uint64_t punch[][2] = {{1 * MIB, MIB}, {6 * MIB, MIB}, {2 * MIB + MIB / 2, MIB}};
    bool punched = fd >= 0;
    for (size_t i = 0; punched && i < 3; i++) {
        punched = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            (off_t)punch[i][0], (off_t)punch[i][1]) == 0;
        memset(s.data + punch[i][0], 0, punch[i][1]);
    }
    if (!punched) {
        for (int i = 0; i < 4; i++)
            ok(1, "# SKIP no hole punching in %s: %s", tmpdir, strerror(errno));
        if (fd >= 0)
            close(fd);
        src_free(&s);
        return;
    }
    /* stripe 8's middle: data in what was a hole (stripe 8 is "one byte": punch it, then
     * write) */
    uint8_t blk[4096];
    memset(blk, 0xab, sizeof blk);
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8 * (off_t)MIB, MIB) < 0 ||
        p2v_pwrite_full(fd, blk, sizeof blk, 8 * MIB + 8192) != (ssize_t)sizeof blk)
        abort();
    memset(s.data + 8 * MIB, 0, MIB);
    memcpy(s.data + 8 * MIB + 8192, blk, sizeof blk);
    close(fd);

    struct imager_extent whole = {0, s.size};
    struct imager_pipeline_opts o = {.ext = &whole, .count = 1, .chunk_size = MIB,
                                     .threads = 2, .hash = IMAGER_HASH_SHA256,
                                     .zstd_level = 1};
    struct run r;
    uint64_t r0 = rchar();
    run_opts(&s, &o, &r);
    uint64_t got = rchar() - r0;
    ok(run_clean(&r), "sparse file: data, zero flags and hashes right (a dirty page in a "
       "hole included)");
    size_t zero = 0;
    for (size_t i = 0; i < r.n; i++)
        zero += r.r[i].zero;
    is_int(zero, 2, "sparse file: its two whole-hole chunks are zero chunks");
    is_int(r.bytes_read, s.size, "sparse file: bytes_read counts the holes");
    ok(r0 && got <= s.size - 2 * MIB + 64 * KIB,
       "sparse file: %llu bytes read of %llu: the two whole-hole chunks were not read",
       (unsigned long long)got, (unsigned long long)s.size);
    run_free(&r);
    src_free(&s);
}

/* Pages of [off, off + len) of @fd in the page cache (mincore); -1 when unknown. */
static long resident(int fd, uint64_t off, uint64_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)off);
    unsigned char *v = malloc(len / (uint64_t)pg + 1);
    long n = -1;
    if (m != MAP_FAILED && v && mincore(m, len, v) == 0) {
        n = 0;
        for (uint64_t i = 0; i < len / (uint64_t)pg; i++)
            n += v[i] & 1;
    }
    if (m != MAP_FAILED)
        munmap(m, len);
    free(v);
    return n;
}

/* The reader asks for the plan ahead of its reads: with the file out of the page cache, a
 * plan of 1 MiB extents 2 MiB apart (the kernel's own readahead does not follow such a
 * plan) and the caller holding the first chunk (the reader stops once its slots are full,
 * about 13 extents in), an extent well past what it read is in the page cache. */
static void test_prefetch(void)
{
    struct src s;
    src_make(&s, "ahead.img", 96 * MIB, false);
    struct imager_extent ext[48];
    for (unsigned i = 0; i < 48; i++)
        ext[i] = (struct imager_extent){(uint64_t)i * 2 * MIB, MIB};
    const uint64_t at = 44 * MIB; /* extent 22 */
    (void)fdatasync(s.fd);
    (void)posix_fadvise(s.fd, 0, 0, POSIX_FADV_DONTNEED);
    long before = resident(s.fd, 0, s.size);
    if (before != 0) {
        ok(1, "# SKIP cannot take %s out of the page cache (%ld pages left)", s.path, before);
        src_free(&s);
        return;
    }
    struct imager_pipeline_opts o = {.fd = s.fd, .path = s.path, .disk_size = s.size,
                                     .ext = ext, .count = 48, .threads = 2,
                                     .hash = IMAGER_HASH_SHA256};
    struct p2v_err err;
    struct imager_pipeline *p = imager_pipeline_start(&o, &err);
    struct imager_chunk c;
    long got = -1;
    if (p && imager_pipeline_next(p, &c, &err) == 1) {
        for (int i = 0; i < 100 && (got = resident(s.fd, at, MIB)) < (long)(MIB / 4096); i++)
            usleep(20000);
    }
    imager_pipeline_free(p);
    ok(got > 0, "read ahead: %ld pages of the extent at 44 MiB in the page cache while the "
       "reader stopped near 26 MiB", got);
    src_free(&s);
}

int main(void)
{
    if (!mkdtemp(tmpdir))
        skip_all("cannot make a temp folder");
    plan(61);
    test_memory_bound();
    test_holes();
    test_prefetch();
    enum imager_hash pick = imager_hash_pick();
    ok(pick == IMAGER_HASH_SHA256 || pick == IMAGER_HASH_BLAKE2B,
       "imager_hash_pick picks %s", pick == IMAGER_HASH_SHA256 ? "sha256" : "blake2b");

    struct src s;
    src_make(&s, "mixed.img", 12 * MIB + 3 * 512 + 77, false);
    test_whole(&s);
    test_extents_skip(&s);
    test_tiny_and_threads(&s);
    test_free_anytime(&s);
    test_errors(&s);
    test_bad_args(&s);
    src_free(&s);
    rmdir(tmpdir);
    return exit_status();
}
