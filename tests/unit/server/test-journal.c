/* test-journal: p2v-server's committed-range sets and per-disk journal — range merging
 * against a bitmap model, the 64-byte codecs and their CRCs, append and reopen, a torn
 * tail and a corrupt record dropped at open, a failed append leaving nothing behind, and
 * the re-sync comparison (HASHES) against the journal's records.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server.h"
#include "tap.h"

static char dir[] = "/tmp/p2v-test-journal.XXXXXX";
static int dirfd_;

static off_t file_size(const char *name)
{
    struct stat sb;
    return fstatat(dirfd_, name, &sb, 0) == 0 ? sb.st_size : -1;
}

/* ---------------------------------------------------------------- ranges */

#define MODEL_UNITS 256 /* model disk: 256 units of 512 bytes */

static bool ranges_match_model(const struct srv_ranges *r, const bool *model)
{
    bool bits[MODEL_UNITS] = {false};
    for (size_t i = 0; i < r->n; i++) {
        if (r->v[i].len == 0 || (i && r->v[i - 1].off + r->v[i - 1].len >= r->v[i].off))
            return false; /* not merged / not sorted */
        for (uint64_t u = r->v[i].off / 512; u < (r->v[i].off + r->v[i].len) / 512; u++)
            bits[u] = true;
    }
    return memcmp(bits, model, sizeof bits) == 0;
}

static void test_ranges(void)
{
    struct srv_ranges r = {0};
    ok(srv_ranges_add(&r, 1024, 512) == 0 && r.n == 1, "add one range");
    srv_ranges_add(&r, 0, 512);
    is_int(r.n, 2, "a range before, not touching: two ranges");
    srv_ranges_add(&r, 512, 512);
    is_int(r.n, 1, "the gap filled: merged into one");
    is_int(srv_ranges_bytes(&r), 1536, "bytes covered");
    srv_ranges_add(&r, 4096, 1024);
    srv_ranges_add(&r, 8192, 512);
    srv_ranges_add(&r, 1000, 4000); /* overlaps the first two */
    is_int(r.n, 2, "an overlapping range swallows its neighbours");
    ok(r.v[0].off == 0 && r.v[0].len == 5120, "merged range is [0, 5120)");
    ok(srv_ranges_covers(&r, 512, 4096) && !srv_ranges_covers(&r, 4608, 1024) &&
           srv_ranges_covers(&r, 8192, 512) && !srv_ranges_covers(&r, 9000, 1),
       "covers");
    ok(srv_ranges_add(&r, UINT64_MAX - 10, 100) < 0 && srv_ranges_add(&r, 0, 0) < 0,
       "overflowing and empty ranges refused");
    srv_ranges_free(&r);

    /* random adds against a bitmap */
    bool model[MODEL_UNITS] = {false};
    bool good = true;
    srand(42);
    for (int i = 0; i < 2000 && good; i++) {
        unsigned a = (unsigned)rand() % MODEL_UNITS;
        unsigned n = 1 + (unsigned)rand() % 8;
        if (a + n > MODEL_UNITS)
            n = MODEL_UNITS - a;
        srv_ranges_add(&r, (uint64_t)a * 512, (uint64_t)n * 512);
        for (unsigned u = a; u < a + n; u++)
            model[u] = true;
        good = ranges_match_model(&r, model);
    }
    ok(good, "2000 random adds match a bitmap model (sorted, merged)");
    is_int(r.n, 1, "a fully covered disk is one range");
    srv_ranges_free(&r);
}

/* ---------------------------------------------------------------- codecs */

static void make_rec(struct jrnl_rec *r, uint64_t off, uint32_t len, uint8_t fill, bool zero)
{
    memset(r, 0, sizeof *r);
    r->off = off;
    r->len = len;
    r->flags = zero ? JRNL_REC_ZERO : 0;
    r->hash_algo = P2V_HASH_SHA256;
    r->session = 7;
    if (!zero) {
        uint8_t *buf = malloc(len);
        memset(buf, fill, len);
        p2v_hash(P2V_HASH_SHA256, buf, len, r->hash);
        free(buf);
    }
}

static void test_codecs(void)
{
    uint8_t b[64];
    uint64_t size;
    uint32_t ss;
    uint8_t algo;
    struct p2v_err err = {0};
    jrnl_encode_header(b, 1 << 20, 4096, 2);
    ok(memcmp(b, "P2VJRNL1", 8) == 0, "header magic");
    ok(jrnl_decode_header(b, &size, &ss, &algo, &err) == 0 && size == 1 << 20 && ss == 4096 &&
           algo == 2,
       "header round trip");
    b[20] ^= 1;
    ok(jrnl_decode_header(b, &size, &ss, &algo, &err) < 0 && strstr(err.msg, "checksum"),
       "header with a flipped bit refused: %s", err.msg);

    struct jrnl_rec r, r2;
    make_rec(&r, 4096, 65536, 0xab, false);
    jrnl_encode_rec(b, &r);
    ok(jrnl_decode_rec(b, 1 << 20, &r2, &err) == 0 && memcmp(&r, &r2, sizeof r) == 0,
       "record round trip");
    ok(jrnl_decode_rec(b, 4096 + 32768, &r2, &err) < 0, "record past the disk refused");
    b[5] ^= 0x10;
    ok(jrnl_decode_rec(b, 1 << 20, &r2, &err) < 0 && strstr(err.msg, "checksum"),
       "record with a flipped bit refused");
    make_rec(&r, 100, 512, 0, true); /* unaligned offset */
    jrnl_encode_rec(b, &r);
    ok(jrnl_decode_rec(b, 1 << 20, &r2, &err) < 0, "unaligned record refused");
}

/* ---------------------------------------------------------------- files */

static void test_files(void)
{
    struct jrnl j;
    struct p2v_err err = {0};
    struct jrnl_rec recs[4];
    const uint64_t size = 8u << 20;

    ok(jrnl_create(dirfd_, "d0.journal", size, 512, P2V_HASH_SHA256, &j, &err) == 0,
       "create a journal");
    is_int(file_size("d0.journal"), JRNL_HDR_LEN, "a new journal is its header");
    make_rec(&recs[0], 0, 1 << 20, 1, false);
    make_rec(&recs[1], 1 << 20, 1 << 20, 0, true);
    make_rec(&recs[2], 3u << 20, 1 << 20, 3, false);
    make_rec(&recs[3], 4u << 20, 4096, 4, false);
    ok(jrnl_append(&j, recs, 2, &err) == 0 && jrnl_append(&j, recs + 2, 2, &err) == 0,
       "append four records in two commits");
    is_int(j.committed.n, 2, "committed ranges merged: [0,2M) and [3M,4M+4K)");
    is_int(srv_ranges_bytes(&j.committed), (3u << 20) + 4096, "committed bytes");
    jrnl_close(&j);

    ok(jrnl_open(dirfd_, "d0.journal", &j, &err) == 0, "reopen");
    ok(j.records == 4 && j.dropped == 0 && j.disk_size == size &&
           srv_ranges_bytes(&j.committed) == (3u << 20) + 4096,
       "reopened journal has the four records");
    jrnl_close(&j);

    /* a torn append: half a record at the end */
    int fd = openat(dirfd_, "d0.journal", O_WRONLY | O_APPEND);
    uint8_t half[30] = {1, 2, 3};
    ok(write(fd, half, sizeof half) == (ssize_t)sizeof half, "tear the tail");
    close(fd);
    ok(jrnl_open(dirfd_, "d0.journal", &j, &err) == 0 && j.records == 4 && j.dropped == 1,
       "torn tail dropped at open");
    is_int(file_size("d0.journal"), JRNL_HDR_LEN + 4 * JRNL_REC_LEN,
           "file cut back to its last good record");
    struct jrnl_rec more;
    make_rec(&more, 6u << 20, 512, 6, false);
    ok(jrnl_append(&j, &more, 1, &err) == 0, "append after the cut");
    jrnl_close(&j);
    ok(jrnl_open(dirfd_, "d0.journal", &j, &err) == 0 && j.records == 5 && j.dropped == 0,
       "the appended record follows the good ones");
    jrnl_close(&j);

    /* a corrupt record in the middle: it and everything after it go */
    fd = openat(dirfd_, "d0.journal", O_RDWR);
    uint8_t x = 0xff;
    ok(pwrite(fd, &x, 1, JRNL_HDR_LEN + 2 * JRNL_REC_LEN + 20) == 1, "corrupt record 3");
    close(fd);
    ok(jrnl_open(dirfd_, "d0.journal", &j, &err) == 0 && j.records == 2 && j.dropped == 3,
       "bad CRC: records from the bad one on dropped");
    is_int(srv_ranges_bytes(&j.committed), 2u << 20, "only the first two records count");

    /* a failed append (read-only descriptor): nothing is added */
    int rw = j.fd;
    j.fd = openat(dirfd_, "d0.journal", O_RDONLY);
    uint64_t before = j.end;
    ok(jrnl_append(&j, &more, 1, &err) < 0 && err.code != 0, "append on a failing file fails");
    ok(j.end == before && srv_ranges_bytes(&j.committed) == 2u << 20,
       "a failed append adds nothing");
    close(j.fd);
    j.fd = rw;
    jrnl_close(&j);

    /* a bad header is an error, a missing journal ENOENT */
    fd = openat(dirfd_, "d0.journal", O_RDWR);
    ok(pwrite(fd, "X", 1, 0) == 1, "corrupt the magic");
    close(fd);
    ok(jrnl_open(dirfd_, "d0.journal", &j, &err) < 0 && strstr(err.msg, "d0.journal"),
       "bad header refused, naming the file: %s", err.msg);
    ok(jrnl_open(dirfd_, "nope.journal", &j, &err) < 0 && err.code == ENOENT,
       "missing journal: ENOENT");
    symlinkat("d0.journal", dirfd_, "link.journal");
    ok(jrnl_open(dirfd_, "link.journal", &j, &err) < 0 && err.code == ELOOP,
       "a symlink is not followed");
}

/* ---------------------------------------------------------------- re-sync */

static void test_match(void)
{
    struct jrnl j;
    struct p2v_err err = {0};
    struct jrnl_rec recs[3];
    uint8_t h_other[32], h_zero[32];
    uint8_t *zeros = calloc(1, 1 << 20);
    p2v_hash(P2V_HASH_SHA256, zeros, 1 << 20, h_zero);
    memset(h_other, 0x5a, sizeof h_other);

    jrnl_create(dirfd_, "m.journal", 8u << 20, 512, P2V_HASH_SHA256, &j, &err);
    make_rec(&recs[0], 0, 1 << 20, 1, false);
    make_rec(&recs[1], 1 << 20, 1 << 20, 2, false);
    make_rec(&recs[2], 2u << 20, 1 << 20, 0, true);
    jrnl_append(&j, recs, 3, &err);

    struct jrnl_hash_entry e[4] = {
        {0, 1 << 20, recs[0].hash, false},
        {1 << 20, 1 << 20, h_other, false},
        {2u << 20, 1 << 20, h_zero, false},
        {3u << 20, 1 << 20, recs[0].hash, false},
    };
    ok(jrnl_match(&j, e, 4, P2V_HASH_SHA256, &err) == 0, "match");
    ok(e[0].same, "same range and hash: not wanted");
    ok(!e[1].same, "different hash: wanted");
    ok(e[2].same, "a ZERO record matches the hash of zeros");
    ok(!e[3].same, "no record: wanted");
    ok(jrnl_match(&j, e, 4, P2V_HASH_BLAKE2B, &err) == 0 && !e[0].same && !e[2].same,
       "another hash algorithm never matches");

    /* a later record over part of range 0 makes it wanted again */
    struct jrnl_rec later;
    make_rec(&later, 512 << 10, 4096, 9, false);
    jrnl_append(&j, &later, 1, &err);
    ok(jrnl_match(&j, e, 4, P2V_HASH_SHA256, &err) == 0 && !e[0].same && e[2].same,
       "the latest record decides");
    /* and a newer exact record makes it match again */
    jrnl_append(&j, &recs[0], 1, &err);
    ok(jrnl_match(&j, e, 1, P2V_HASH_SHA256, &err) == 0 && e[0].same,
       "an exact newer record matches again");
    jrnl_close(&j);
    free(zeros);
}

int main(void)
{
    if (!mkdtemp(dir))
        skip_all("mkdtemp failed");
    dirfd_ = open(dir, O_RDONLY | O_DIRECTORY);
    test_ranges();
    test_codecs();
    test_files();
    test_match();
    int rc = exit_status();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    close(dirfd_);
    return rc;
}
