/* test-pipeline-level.c: TAP unit test of the read pipeline's changeable compression level
 * (imager_pipeline_set_level, opts.adaptive, imager_chunk.level), on a temp file of
 * compressible text. The oracle for "compressed at level L" is zstd itself: a chunk's
 * frame must be byte for byte what a one-shot ZSTD_compress() at L makes of the chunk's
 * data (the test first checks that levels 1, 3 and -5 make frames of different lengths
 * for this data, so the comparison tells the levels apart). A level change must reach
 * every chunk past those in flight: with 256 KiB chunks and 2 workers the pipeline holds
 * 16 (one read batch) + 8 (4 per worker) + 1 chunks, so every chunk 32 or more after the
 * call must carry the new level; the chunks in between may carry either.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zstd.h>

#include "imager.h"
#include "tap.h"

#define KIB 1024u
#define CS (256u * KIB)
#define NCHUNKS 160u
#define LAG 32u /* chunks that may still carry the old level after a change */

static char tmpdir[] = "/tmp/test-pipeline-level.XXXXXX";
static uint8_t *src;
static char path[256];

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Words with numbers: compressible, but not so much that every level makes the same. */
static void fill_text(uint8_t *p, size_t n)
{
    static const char *words[] = {"chunk", "extent", "sector", "pipeline", "zstd", "hash",
                                  "reader", "worker", "offset", "disk", "level", "adapt"};
    size_t i = 0;
    while (i < n) {
        char w[32];
        int k = snprintf(w, sizeof w, "%s%u", words[rnd() % 12], (unsigned)(rnd() % 1000));
        for (int j = 0; j < k && i < n; j++)
            p[i++] = (uint8_t)w[j];
        if (i < n)
            p[i++] = rnd() % 8 ? ' ' : '\n';
    }
}

/* The frame length one-shot zstd makes of chunk @k at @level. */
static size_t oracle_len(size_t k, int level)
{
    static uint8_t out[CS + CS / 8 + 1024];
    size_t z = ZSTD_compress(out, sizeof out, src + (size_t)k * CS, CS, level);
    if (ZSTD_isError(z))
        abort();
    return z;
}

/* Per chunk: the level it says, and whether its payload is what that level makes. */
struct got {
    int level;
    bool zstd;   /* zdata given */
    bool right;  /* data right; zdata NULL at level 0, else ZSTD_compress(level)'s frame */
};

static bool chunk_right(const struct imager_chunk *c)
{
    static uint8_t out[CS + CS / 8 + 1024];
    if (c->zero || !c->data || c->len != CS || c->off % CS ||
        memcmp(c->data, src + c->off, CS) != 0)
        return false;
    if (c->level == 0)
        return c->zdata == NULL && c->zlen == 0;
    if (!c->zdata)
        return false;
    size_t z = ZSTD_compress(out, sizeof out, c->data, c->len, c->level);
    return !ZSTD_isError(z) && z == c->zlen && memcmp(out, c->zdata, z) == 0;
}

/* Run an adaptive pipeline from @start, switching to sw_level[i] when chunk sw_at[i] is
 * in hand. */
static int run(int start, const size_t *sw_at, const int *sw_level, size_t nsw,
               struct got *g, struct p2v_err *err)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        abort();
    struct imager_extent whole = {0, (uint64_t)NCHUNKS * CS};
    struct imager_pipeline_opts o = {.fd = fd, .path = path, .disk_size = whole.len,
                                     .ext = &whole, .count = 1, .chunk_size = CS,
                                     .threads = 2, .hash = IMAGER_HASH_SHA256,
                                     .zstd_level = start, .adaptive = true};
    struct imager_pipeline *p = imager_pipeline_start(&o, err);
    int rc = -2;
    size_t n = 0, si = 0;
    struct imager_chunk c;
    while (p && (rc = imager_pipeline_next(p, &c, err)) == 1 && n < NCHUNKS) {
        g[n].level = c.level;
        g[n].zstd = c.zdata != NULL;
        g[n].right = chunk_right(&c);
        if (si < nsw && sw_at[si] == n) {
            if (imager_pipeline_set_level(p, sw_level[si]) < 0 ||
                imager_pipeline_level(p) != sw_level[si])
                rc = -3;
            si++;
        }
        n++;
    }
    imager_pipeline_free(p);
    close(fd);
    return rc == 0 && n == NCHUNKS ? 0 : rc == 1 ? -4 : rc;
}

/* Chunks [from, to) all at @level with the payload that level makes. */
static bool all_at(const struct got *g, size_t from, size_t to, int level)
{
    for (size_t k = from; k < to; k++) {
        if (g[k].level != level || !g[k].right || g[k].zstd != (level != 0)) {
            diag("chunk %zu: level %d (want %d), zstd %d, payload %s", k, g[k].level, level,
                 g[k].zstd, g[k].right ? "right" : "WRONG");
            return false;
        }
    }
    return true;
}

/* Chunks [from, to) each at @a or @b, with the right payload. */
static bool either(const struct got *g, size_t from, size_t to, int a, int b)
{
    for (size_t k = from; k < to; k++)
        if ((g[k].level != a && g[k].level != b) || !g[k].right) {
            diag("chunk %zu: level %d (want %d or %d), payload %s", k, g[k].level, a, b,
                 g[k].right ? "right" : "WRONG");
            return false;
        }
    return true;
}

static size_t first_at(const struct got *g, size_t from, int level)
{
    for (size_t k = from; k < NCHUNKS; k++)
        if (g[k].level == level)
            return k;
    return NCHUNKS;
}

int main(void)
{
    if (!mkdtemp(tmpdir))
        skip_all("cannot make a temp folder");
    plan(17);
    size_t size = (size_t)NCHUNKS * CS;
    src = malloc(size);
    if (!src)
        abort();
    fill_text(src, size);
    snprintf(path, sizeof path, "%s/text.img", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || p2v_pwrite_full(fd, src, size, 0) != (ssize_t)size)
        abort();
    close(fd);

    size_t l1 = oracle_len(0, 1), l3 = oracle_len(0, 3), lm5 = oracle_len(0, -5);
    ok(l1 != l3 && l1 != lm5 && l3 != lm5 && l3 < CS && lm5 < CS,
       "this data tells the levels apart: %zu (1), %zu (3), %zu (-5) of %u bytes", l1, l3,
       lm5, CS);

    /* 1 -> none at chunk 8 -> 3 at 56 -> -5 at 104 */
    static struct got g[NCHUNKS];
    const size_t at[] = {8, 56, 104};
    const int lv[] = {0, 3, -5};
    struct p2v_err err = {0};
    int r = run(1, at, lv, 3, g, &err);
    ok(r == 0, "adaptive pipeline: %u chunks, three level changes (%d %s)", NCHUNKS, r,
       err.msg);
    ok(all_at(g, 0, 9, 1), "chunks 0..8 (before the first change): level 1, zstd frames");
    ok(either(g, 9, 8 + LAG, 1, 0), "chunks in flight at the change: level 1 or none");
    ok(all_at(g, 8 + LAG, 57, 0),
       "after set_level(0): chunks %u..56 are stored uncompressed (level 0, zdata NULL)",
       8 + LAG);
    diag("first stored chunk: %zu", first_at(g, 0, 0));
    ok(either(g, 57, 56 + LAG, 0, 3), "chunks in flight at the second change: none or 3");
    ok(all_at(g, 56 + LAG, 105, 3),
       "after set_level(3): chunks %u..104 compressed again, each the level-3 frame",
       56 + LAG);
    diag("first level-3 chunk: %zu", first_at(g, 56, 3));
    ok(either(g, 105, 104 + LAG, 3, -5), "chunks in flight at the third change: 3 or -5");
    ok(all_at(g, 104 + LAG, NCHUNKS, -5),
       "after set_level(-5): chunks %u..%u are zstd's fast level -5 frames", 104 + LAG,
       NCHUNKS - 1);

    /* an adaptive pipeline that starts stored has its buffers: switching on compresses */
    memset(g, 0, sizeof g);
    const size_t at2[] = {0};
    const int lv2[] = {2};
    r = run(0, at2, lv2, 1, g, &err);
    ok(r == 0 && g[0].level == 0 && !g[0].zstd, "adaptive, started at none: chunk 0 stored");
    ok(all_at(g, LAG, NCHUNKS, 2), "... then set_level(2): chunks %u.. are level-2 frames",
       LAG);

    /* refusals */
    int fd2 = open(path, O_RDONLY);
    struct imager_extent whole = {0, size};
    struct imager_pipeline_opts o = {.fd = fd2, .path = path, .disk_size = size,
                                     .ext = &whole, .count = 1, .chunk_size = CS,
                                     .threads = 1, .zstd_level = 1};
    struct imager_pipeline *p = imager_pipeline_start(&o, &err);
    errno = 0;
    ok(p && imager_pipeline_set_level(p, 0) == -1 && errno == EINVAL &&
           imager_pipeline_level(p) == 1,
       "a fixed-level pipeline refuses set_level (EINVAL) and keeps its level");
    imager_pipeline_free(p);
    o.adaptive = true;
    p = imager_pipeline_start(&o, &err);
    ok(p && imager_pipeline_set_level(p, 99) == -1 &&
           imager_pipeline_set_level(p, ZSTD_minCLevel() - 1) == -1 &&
           imager_pipeline_level(p) == 1,
       "set_level refuses 99 and a level below ZSTD_minCLevel()");
    ok(p && imager_pipeline_set_level(p, ZSTD_minCLevel()) == 0 &&
           imager_pipeline_level(p) == ZSTD_minCLevel(),
       "set_level takes ZSTD_minCLevel() (%d)", ZSTD_minCLevel());
    imager_pipeline_free(p);
    ok(imager_pipeline_set_level(NULL, 1) == -1, "set_level(NULL) fails");
    ok(imager_zstd_level_ok(0) && imager_zstd_level_ok(-5) && imager_zstd_level_ok(19) &&
           !imager_zstd_level_ok(ZSTD_maxCLevel() + 1) &&
           imager_zstd_min_level() == ZSTD_minCLevel(),
       "imager_zstd_level_ok: 0, -5, 19 yes; max+1 no; min level %d", imager_zstd_min_level());
    o.adaptive = false;
    o.zstd_level = -5;
    memset(&err, 0, sizeof err);
    p = imager_pipeline_start(&o, &err);
    struct imager_chunk c;
    ok(p && imager_pipeline_next(p, &c, &err) == 1 && c.level == -5 && chunk_right(&c),
       "a fixed negative level (-5) is accepted and used");
    imager_pipeline_free(p);
    close(fd2);

    unlink(path);
    rmdir(tmpdir);
    free(src);
    return exit_status();
}
