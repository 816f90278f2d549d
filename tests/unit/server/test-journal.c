/* test-journal: p2v-server's committed-range sets and per-disk journal — range merging
 * against a bitmap model, the 64-byte codecs and their CRCs, append and reopen, a torn
 * tail and a corrupt record dropped at open, a failed append leaving nothing behind,
 * marks (records count only before the last mark written since this boot or durable),
 * and the re-sync comparison (HASHES) against the journal's records.
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
static const uint8_t boot_a[JRNL_BOOT_LEN] = {0xa1, 0xa2, 0xa3, 0xa4, 5, 6, 7, 8,
                                              9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t boot_b[JRNL_BOOT_LEN] = {0xb1, 0xb2, 0xb3, 0xb4, 5, 6, 7, 8,
                                              9, 10, 11, 12, 13, 14, 15, 16};

static struct jrnl_rec mark_rec(uint64_t mark, const uint8_t boot[JRNL_BOOT_LEN], bool durable)
{
    struct jrnl_rec m;
    memset(&m, 0, sizeof m);
    m.off = mark;
    m.flags = JRNL_REC_MARK | (durable ? JRNL_REC_DURABLE : 0);
    memcpy(m.hash, boot, JRNL_BOOT_LEN);
    m.session = 7;
    return m;
}

/* append @n records then a mark of boot A (one commit) */
static int commit(struct jrnl *j, const struct jrnl_rec *recs, size_t n, uint64_t mark)
{
    struct jrnl_rec v[8];
    struct p2v_err err = {0};
    memcpy(v, recs, n * sizeof *v);
    v[n] = mark_rec(mark, boot_a, false);
    return jrnl_append(j, v, n + 1, &err);
}

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

    /* marks: any offset (an image's end), no length, the boot id, nothing else */
    r = mark_rec(UINT64_C(5) << 40, boot_a, true);
    jrnl_encode_rec(b, &r);
    ok(jrnl_decode_rec(b, 1 << 20, &r2, &err) == 0 && memcmp(&r, &r2, sizeof r) == 0,
       "mark round trip (its offset may pass the disk's size)");
    r.len = 512;
    jrnl_encode_rec(b, &r);
    ok(jrnl_decode_rec(b, 1 << 20, &r2, &err) < 0, "a mark with a length refused");
    r = mark_rec(4096, boot_a, false);
    r.hash[20] = 1;
    jrnl_encode_rec(b, &r);
    ok(jrnl_decode_rec(b, 1 << 20, &r2, &err) < 0, "a mark with bytes past the boot id refused");
    make_rec(&r, 4096, 512, 1, false);
    r.flags |= JRNL_REC_DURABLE;
    jrnl_encode_rec(b, &r);
    ok(jrnl_decode_rec(b, 1 << 20, &r2, &err) < 0, "DURABLE on a chunk record refused");
    r.flags = 0x40;
    jrnl_encode_rec(b, &r);
    ok(jrnl_decode_rec(b, 1 << 20, &r2, &err) < 0, "unknown flags refused");
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
    ok(commit(&j, recs, 2, 100) == 0 && commit(&j, recs + 2, 2, 200) == 0,
       "append four records in two commits, each with its mark");
    ok(j.marked && j.mark == 200, "the last mark is the journal's");
    is_int(j.committed.n, 2, "committed ranges merged: [0,2M) and [3M,4M+4K)");
    is_int(srv_ranges_bytes(&j.committed), (3u << 20) + 4096, "committed bytes");
    jrnl_close(&j);

    ok(jrnl_open(dirfd_, "d0.journal", boot_a, &j, &err) == 0, "reopen");
    ok(j.records == 6 && j.dropped == 0 && j.disk_size == size && j.marked && j.mark == 200 &&
           srv_ranges_bytes(&j.committed) == (3u << 20) + 4096,
       "reopened journal has the four records");
    jrnl_close(&j);

    /* a torn append: half a record at the end */
    int fd = openat(dirfd_, "d0.journal", O_WRONLY | O_APPEND);
    uint8_t half[30] = {1, 2, 3};
    ok(write(fd, half, sizeof half) == (ssize_t)sizeof half, "tear the tail");
    close(fd);
    ok(jrnl_open(dirfd_, "d0.journal", boot_a, &j, &err) == 0 && j.records == 6 &&
           j.dropped == 1 && j.lost == 0,
       "torn tail dropped at open");
    is_int(file_size("d0.journal"), JRNL_HDR_LEN + 6 * JRNL_REC_LEN,
           "file cut back to its last good record");
    struct jrnl_rec more;
    make_rec(&more, 6u << 20, 512, 6, false);
    ok(commit(&j, &more, 1, 300) == 0, "append after the cut");
    jrnl_close(&j);
    ok(jrnl_open(dirfd_, "d0.journal", boot_a, &j, &err) == 0 && j.records == 8 &&
           j.dropped == 0 && j.mark == 300,
       "the appended record follows the good ones");
    jrnl_close(&j);

    /* a corrupt record in the middle: it and everything after it go, and the records
     * before it count only up to the last mark before it */
    fd = openat(dirfd_, "d0.journal", O_RDWR);
    uint8_t x = 0xff;
    ok(pwrite(fd, &x, 1, JRNL_HDR_LEN + 4 * JRNL_REC_LEN + 20) == 1, "corrupt record 5");
    close(fd);
    ok(jrnl_open(dirfd_, "d0.journal", boot_a, &j, &err) == 0 && j.records == 3 &&
           j.dropped == 5 && j.lost == 1 && j.mark == 100,
       "bad CRC: records from the bad one on dropped, and the one after the last mark");
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
    ok(jrnl_open(dirfd_, "d0.journal", boot_a, &j, &err) < 0 && strstr(err.msg, "d0.journal"),
       "bad header refused, naming the file: %s", err.msg);
    ok(jrnl_open(dirfd_, "nope.journal", boot_a, &j, &err) < 0 && err.code == ENOENT,
       "missing journal: ENOENT");
    symlinkat("d0.journal", dirfd_, "link.journal");
    ok(jrnl_open(dirfd_, "link.journal", boot_a, &j, &err) < 0 && err.code == ELOOP,
       "a symlink is not followed");
}

/* ---------------------------------------------------------------- marks and boots */

static void test_marks(void)
{
    struct jrnl j;
    struct p2v_err err = {0};
    struct jrnl_rec r[6], v[2];
    static const uint8_t unknown[JRNL_BOOT_LEN];
    for (unsigned i = 0; i < 6; i++)
        make_rec(&r[i], (uint64_t)i << 20, 1 << 20, (uint8_t)(i + 1), false);

    /* records without a mark never count */
    jrnl_create(dirfd_, "k.journal", 8u << 20, 512, P2V_HASH_SHA256, &j, &err);
    jrnl_append(&j, r, 2, &err);
    jrnl_close(&j);
    ok(jrnl_open(dirfd_, "k.journal", boot_a, &j, &err) == 0 && !j.marked &&
           j.committed.n == 0 && j.lost == 2 && j.end == JRNL_HDR_LEN,
       "records after the last mark are dropped (none here: nothing committed)");
    jrnl_close(&j);

    /* boot A: durable mark after r0, r1; plain marks after r2 and after r3 */
    jrnl_create(dirfd_, "k.journal", 8u << 20, 512, P2V_HASH_SHA256, &j, &err);
    v[0] = r[0];
    v[1] = r[1];
    jrnl_append(&j, v, 2, &err);
    v[0] = mark_rec(1000, boot_a, true);
    jrnl_append(&j, v, 1, &err);
    commit(&j, &r[2], 1, 2000);
    commit(&j, &r[3], 1, 3000);
    jrnl_close(&j);
    ok(jrnl_open(dirfd_, "k.journal", boot_a, &j, &err) == 0 && j.mark == 3000 &&
           srv_ranges_bytes(&j.committed) == 4u << 20 && j.lost == 0,
       "same boot: the last mark counts, all four chunks committed");
    jrnl_close(&j);
    ok(jrnl_open(dirfd_, "k.journal", boot_b, &j, &err) == 0 && j.mark == 1000 &&
           srv_ranges_bytes(&j.committed) == 2u << 20 && j.lost == 4,
       "after a restart of the machine: back to the durable mark (chunks after it lost)");
    is_int(file_size("k.journal"), JRNL_HDR_LEN + 3 * JRNL_REC_LEN,
           "the journal is cut after the durable mark");
    /* boot B goes on from there */
    commit(&j, &r[4], 1, 4000);
    jrnl_close(&j);
    /* (commit writes boot A's id: rewrite that last mark as boot B's) */
    jrnl_open(dirfd_, "k.journal", boot_a, &j, &err);
    ok(j.mark == 4000 && srv_ranges_bytes(&j.committed) == 3u << 20,
       "records appended after the cut follow the durable mark");
    jrnl_close(&j);

    /* an unknown boot id matches no mark: only durable ones count */
    ok(jrnl_open(dirfd_, "k.journal", unknown, &j, &err) == 0 && j.mark == 1000,
       "unknown boot id: only durable marks count");
    jrnl_close(&j);

    /* no durable mark and another boot: nothing */
    jrnl_create(dirfd_, "k.journal", 8u << 20, 512, P2V_HASH_SHA256, &j, &err);
    commit(&j, r, 2, 500);
    jrnl_close(&j);
    ok(jrnl_open(dirfd_, "k.journal", boot_b, &j, &err) == 0 && !j.marked &&
           j.committed.n == 0 && j.lost == 3,
       "another boot, no durable mark: nothing committed");
    jrnl_close(&j);

    uint8_t id[JRNL_BOOT_LEN];
    jrnl_boot_id(id);
    ok(memcmp(id, unknown, sizeof id) != 0, "this machine's boot id is read");
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
    commit(&j, recs, 3, 100);

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
    test_marks();
    test_match();
    int rc = exit_status();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    close(dirfd_);
    return rc;
}
