/* test-qcow2.c: TAP unit test of the qcow2 driver (disk-formats/qcow2*.c) against outside
 * oracles. Our writer, in each mode (random writes at 64 KiB, 512-byte, 4 KiB and 2 MiB
 * clusters; compressed zlib and zstd at several cluster sizes): create, write a mixed
 * pattern (random data, text, zero clusters, zeroing, a partial tail; random offsets and
 * overwrites where the mode allows them), read back through the open handle, close, then
 * `qemu-img check` (no errors, no leaks), `qemu-img compare` against a raw file of the
 * same bytes, our reader and our check. Images that qemu-img writes (v2 and v3, zlib and
 * zstd, zero clusters with and without preallocation, 512 B and 2 MiB clusters) must read
 * back identical, with zero clusters reported as such. Hostile input (truncated files,
 * huge or overflowing sizes, tables past the end of the file or into the header, backing
 * files, encryption, unknown features, corrupt compressed data) is refused with a clear
 * error naming the file; a writer killed or abandoned leaves an image our open refuses
 * and qemu-img check reports. Skips (TAP `1..0 # SKIP`) only when qemu-img is missing.
 */
/* fill_text's words (see dftest.h) */
#define DFTEST_WORDS \
    "qcow2", "cluster", "table", "refcount", "header", "snapshot", "zlib", "zstd", \
    "l1", "l2"
#include "dftest.h"
#include "qcow2.h"

static bool have_qemu_io;

/* ------------------------------------------------------------------ helpers */

/* Random, text or zeros, by the draw. */
static void fill_mixed(uint8_t *p, size_t n)
{
    switch (rnd() % 3) {
    case 0:
        fill_random(p, n);
        break;
    case 1:
        fill_text(p, n);
        break;
    default:
        memset(p, 0, n);
        break;
    }
}

static void check_own_read(const char *path, const uint8_t *ref, uint64_t n, const char *name)
{
    check_own_read_fmt(path, "qcow2", ref, n, name, true);
}

static void check_oracles(const char *path, const char *raw, const char *name)
{
    /* qemu-img check: exit 0 means neither errors nor leaks (leaks exit 3) */
    int r = sh("qemu-img check -f qcow2 '%s' >'%s' 2>&1", path, tpath("check.out"));
    if (!ok(r == 0, "%s: qemu-img check: no errors, no leaks", name))
        sh("head -5 '%s' | sed 's/^/# /'", tpath("check.out"));
    is_int(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s' >/dev/null 2>&1", raw, path), 0,
           "%s: qemu-img compare: identical to the raw file", name);
}

/* Open must fail, or reading everything must fail, with @sub in the message (and the
 * file's name). */
static void expect_bad(const char *path, unsigned flags, const char *sub, const char *name)
{
    expect_bad_fmt(path, "qcow2", flags, sub, name, DFTEST_NAME_NEEDED);
}

/* ------------------------------------------------------------------ parsers */

static void test_parsers(void)
{
    struct qcow2_centry c;
    const char *why = NULL;
    ok(qcow2_l2_decode(0, 16, 3, &c, &why) == 0 && c.type == QCOW2_UNALLOCATED,
       "L2 decode: 0 is unallocated");
    ok(qcow2_l2_decode(1, 16, 3, &c, &why) == 0 && c.type == QCOW2_ZERO_PLAIN,
       "L2 decode: bit 0 alone is a zero cluster");
    ok(qcow2_l2_decode(QCOW2_OFLAG_COPIED | 0x50000 | 1, 16, 3, &c, &why) == 0 &&
           c.type == QCOW2_ZERO_ALLOC && c.off == 0x50000 && c.copied,
       "L2 decode: zero cluster with preallocation");
    ok(qcow2_l2_decode(QCOW2_OFLAG_COPIED | 0x50000, 16, 3, &c, &why) == 0 &&
           c.type == QCOW2_NORMAL && c.off == 0x50000,
       "L2 decode: standard cluster");
    ok(qcow2_l2_decode(0x50200, 16, 3, &c, &why) < 0 && strstr(why, "aligned"),
       "L2 decode: misaligned host offset refused");
    ok(qcow2_l2_decode(0x50000 | 2, 16, 3, &c, &why) < 0 && strstr(why, "reserved"),
       "L2 decode: reserved bits refused");
    ok(qcow2_l2_decode(1, 16, 2, &c, &why) < 0 && strstr(why, "version 2"),
       "L2 decode: zero flag refused in version 2");
    /* compressed at 64 KiB clusters: x = 54; 3 more sectors at byte offset 0x12345 */
    uint64_t ce = QCOW2_OFLAG_COMPRESSED | (UINT64_C(3) << 54) | 0x12345;
    ok(qcow2_l2_decode(ce, 16, 3, &c, &why) == 0 && c.type == QCOW2_COMPRESSED &&
           c.off == 0x12345 && c.nsec == 4,
       "L2 decode: compressed descriptor");
    /* at 512-byte clusters the offset field has bits past 55, which must be 0 */
    ok(qcow2_l2_decode(QCOW2_OFLAG_COMPRESSED | (UINT64_C(1) << 57), 9, 3, &c, &why) < 0,
       "L2 decode: compressed offset past bit 55 refused");

    uint8_t blk[16] = {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0};
    is_int(qcow2_refcount_get(blk, 1, 4), 0x5678, "refcount: 16-bit big-endian");
    is_int(qcow2_refcount_get(blk, 0, 0), 0, "refcount: 1-bit, least significant first");
    is_int(qcow2_refcount_get(blk, 1, 0), 1, "refcount: 1-bit entry 1");
    is_int(qcow2_refcount_get(blk, 1, 2), 0x1, "refcount: 4-bit entry 1 (high nibble)");
    ok(qcow2_refcount_get(blk, 0, 6) == 0x123456789abcdef0ull, "refcount: 64-bit");

    /* a minimal header: the encoder's output parses back */
    struct qcow2_header h = {0}, g;
    h.cluster_bits = 16;
    h.size = 1 << 30;
    h.l1_size = 2;
    h.l1_table_offset = 3 << 16;
    h.refcount_table_offset = 1 << 16;
    h.refcount_table_clusters = 1;
    h.refcount_order = 4;
    h.incompatible = QCOW2_INCOMPAT_COMPRESSION;
    h.compression_type = QCOW2_COMPRESSION_ZSTD;
    uint8_t *buf = calloc(1, 65536);
    struct p2v_err err = {0};
    qcow2_header_encode(&h, buf);
    ok(qcow2_header_parse(buf, 65536, "hdr", &g, &err) == 0 && g.version == 3 &&
           g.size == h.size && g.compression_type == 1 && g.header_length == 112,
       "header: encode then parse");
    struct qcow2_layout l;
    ok(qcow2_layout_check(&g, 4 << 16, "hdr", &l, &err) == 0 && l.l1_needed == 2 &&
           l.l2_entries == 8192,
       "header: layout of a 1 GiB image");
    memcpy(buf + 104, "\0", 1);
    ok(qcow2_header_parse(buf, 65536, "hdr", &g, &err) < 0 && strstr(err.msg, "zlib"),
       "header: compression bit without a compression type refused");
    buf[104] = 1;
    p2v_put_u64be(buf + 72, 1ull << 40);
    ok(qcow2_header_parse(buf, 65536, "hdr", &g, &err) < 0 &&
           strstr(err.msg, "unknown incompatible"),
       "header: unknown incompatible feature refused");
    p2v_put_u64be(buf + 72, QCOW2_INCOMPAT_COMPRESSION);
    /* an extension claiming more bytes than the cluster holds */
    p2v_put_u32be(buf + 112, 0x12345678);
    p2v_put_u32be(buf + 116, 70000);
    ok(qcow2_header_parse(buf, 65536, "hdr", &g, &err) < 0 && strstr(err.msg, "extension"),
       "header: oversized extension refused");
    /* the same header cut short: the extensions run past the file */
    p2v_put_u32be(buf + 116, 400);
    ok(qcow2_header_parse(buf, 300, "hdr", &g, &err) < 0 && strstr(err.msg, "past the end"),
       "header: extension past the end of a short file refused");
    memset(buf + 112, 0, 8);
    p2v_put_u32be(buf + 100, 200000);
    ok(qcow2_header_parse(buf, 65536, "hdr", &g, &err) < 0 &&
           strstr(err.msg, "header_length"),
       "header: header_length past the cluster refused");
    free(buf);
    uint8_t rnd_buf[65536];
    fill_random(rnd_buf, sizeof rnd_buf);
    ok(diskfmt_looks_incompressible(rnd_buf, sizeof rnd_buf), "random data looks incompressible");
    fill_text(rnd_buf, sizeof rnd_buf);
    ok(!diskfmt_looks_incompressible(rnd_buf, sizeof rnd_buf), "text does not");
}

/* ------------------------------------------------------------------ writers */

/* The random-write mode: random offsets and lengths (partial clusters, overwrites,
 * zero data, zero(), whole clusters), a reference copy kept in memory. */
static void test_random_writer(uint32_t cluster_opt, uint64_t size, const char *name)
{
    uint32_t cluster = cluster_opt ? cluster_opt : 65536;
    char img[64], raw[64];
    snprintf(img, sizeof img, "w-%s.qcow2", name);
    snprintf(raw, sizeof raw, "w-%s.raw", name);
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = size, .cluster_size = cluster_opt};
    struct diskfmt *d = diskfmt_create(tpath(img), "qcow2", &o, &err);
    if (!ok(d != NULL, "%s: created", name)) {
        diag("  %s", err.msg);
        return;
    }
    uint64_t vsize = diskfmt_size(d);
    ok(vsize == ((size + 511) & ~511ull) && diskfmt_block_size(d) == cluster &&
           !diskfmt_sequential_writes(d) && diskfmt_write_align(d) == 1,
       "%s: size rounded to sectors, block size is the cluster, random writes", name);
    uint8_t *ref = calloc(1, vsize);
    uint8_t *buf = malloc(4 * MIB);
    bool wok = true;
    for (int i = 0; i < 300 && wok; i++) {
        uint64_t off, len;
        switch (rnd() % 4) {
        case 0: /* whole clusters */
            len = cluster * (1 + rnd() % P2V_MAX(1u, (4 * MIB) / cluster / 2));
            len = P2V_MIN(len, vsize);
            off = (rnd() % (vsize / cluster)) * cluster;
            break;
        case 1: /* anything */
            len = 1 + rnd() % (3 * (uint64_t)cluster);
            off = rnd() % vsize;
            break;
        default: /* a few bytes */
            len = 1 + rnd() % 700;
            off = rnd() % vsize;
            break;
        }
        len = P2V_MIN(len, vsize - off);
        len = P2V_MIN(len, (uint64_t)4 * MIB);
        if (rnd() % 5 == 0) {
            wok = diskfmt_zero(d, off, len, &err) == 0;
            memset(ref + off, 0, len);
        } else {
            fill_mixed(buf, len);
            wok = diskfmt_pwrite(d, buf, len, off, &err) == 0;
            memcpy(ref + off, buf, len);
        }
    }
    /* an all-zero whole cluster over data: becomes a zero cluster */
    memset(buf, 0, cluster);
    fill_text(ref, 3 * cluster);
    wok = wok && diskfmt_pwrite(d, ref, 3 * cluster, 0, &err) == 0;
    memset(ref + cluster, 0, cluster);
    wok = wok && diskfmt_pwrite(d, buf, cluster, cluster, &err) == 0;
    /* the tail, partial */
    fill_random(ref + vsize - 100, 100);
    wok = wok && diskfmt_pwrite(d, ref + vsize - 100, 100, vsize - 100, &err) == 0;
    if (!ok(wok, "%s: random writes and zeroing", name))
        diag("  %s", err.msg);
    char why[P2V_ERR_MSG_MAX + 128] = "";
    uint64_t zb = 0;
    if (!ok(read_back(d, ref, vsize, &zb, why, sizeof why) == 0,
            "%s: reads back identical before close", name))
        diag("  %s", why);
    uint64_t run;
    unsigned flags;
    ok(diskfmt_block_status(d, cluster, cluster, &run, &flags, &err) == 0 &&
           flags == DISKFMT_STATUS_ZERO && run == cluster,
       "%s: a zero cluster reports ZERO without HOLE", name);
    struct p2v_buf jb = P2V_BUF_INIT;
    struct p2v_json j;
    p2v_json_init(&j, &jb, false);
    p2v_json_object_begin(&j);
    diskfmt_info(d, &j, &err);
    p2v_json_object_end(&j);
    ok(strstr(p2v_buf_cstr(&jb), "\"dirty\":true") != NULL,
       "%s: info says dirty while writing", name);
    p2v_buf_release(&jb);
    ok(diskfmt_flush(d, &err) == 0, "%s: flush", name);
    if (!ok(diskfmt_close(d, &err) == 0, "%s: closed", name))
        diag("  %s", err.msg);
    write_file(tpath(raw), ref, vsize);
    check_oracles(tpath(img), tpath(raw), name);
    check_own_read(tpath(img), ref, vsize, name);
    free(ref);
    free(buf);
}

/* The compressed mode: in order, whole clusters, zero clusters, gaps, a partial tail. */
static void test_compressed_writer(enum diskfmt_compress kind, uint32_t cluster,
                                   uint64_t size, const char *name)
{
    char img[64], raw[64];
    snprintf(img, sizeof img, "c-%s.qcow2", name);
    snprintf(raw, sizeof raw, "c-%s.raw", name);
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = size, .cluster_size = cluster, .compress = kind};
    struct diskfmt *d = diskfmt_create(tpath(img), "qcow2", &o, &err);
    if (!ok(d != NULL, "%s: created", name)) {
        diag("  %s", err.msg);
        return;
    }
    uint64_t vsize = diskfmt_size(d);
    uint32_t cs = cluster ? cluster : 65536;
    ok(diskfmt_sequential_writes(d) && diskfmt_write_align(d) == cs,
       "%s: sequential, aligned to the cluster", name);
    uint8_t *ref = calloc(1, vsize);
    bool wok = true;
    uint64_t off = 0;
    while (off < vsize && wok) {
        uint64_t len = P2V_MIN(vsize - off, (uint64_t)cs * (1 + rnd() % 16));
        int what = (int)(rnd() % 5);
        if (what == 0) { /* a gap: never written */
        } else if (what == 1) {
            wok = diskfmt_zero(d, off, len, &err) == 0;
        } else {
            fill_mixed(ref + off, len);
            wok = diskfmt_pwrite(d, ref + off, len, off, &err) == 0;
        }
        off += len;
    }
    if (!ok(wok, "%s: in-order writes", name))
        diag("  %s", err.msg);
    ok(diskfmt_pwrite(d, ref, cs, 0, &err) < 0 && strstr(err.msg, "in order"),
       "%s: a write behind what was written is refused", name);
    char why[P2V_ERR_MSG_MAX + 128] = "";
    if (!ok(read_back(d, ref, vsize, NULL, why, sizeof why) == 0,
            "%s: reads back identical before close", name))
        diag("  %s", why);
    if (!ok(diskfmt_close(d, &err) == 0, "%s: closed", name))
        diag("  %s", err.msg);
    write_file(tpath(raw), ref, vsize);
    check_oracles(tpath(img), tpath(raw), name);
    check_own_read(tpath(img), ref, vsize, name);
    int r = sh("qemu-img info '%s' | grep -q 'compression type: %s'", tpath(img),
               kind == DISKFMT_COMPRESS_ZSTD ? "zstd" : "zlib");
    is_int(r, 0, "%s: qemu-img info names the compression type", name);
    /* compressed clusters are really there */
    r = sh("qemu-img check '%s' | grep -qv ' 0.00%% compressed'", tpath(img));
    is_int(r, 0, "%s: qemu-img counts compressed clusters", name);
    free(ref);
}

/* Compressed, the last cluster only partly inside the disk; and a tiny disk. */
static void test_compressed_tail(void)
{
    struct p2v_err err = {0};
    uint64_t size = 3 * 65536 + 4096 + 1000;
    struct diskfmt_create_opts o = {.size = size, .compress = DISKFMT_COMPRESS_ZLIB};
    struct diskfmt *d = diskfmt_create(tpath("tail.qcow2"), "qcow2", &o, &err);
    uint64_t vsize = d ? diskfmt_size(d) : 0;
    uint8_t *ref = calloc(1, vsize ? vsize : 1);
    fill_text(ref, vsize);
    bool wok = d && diskfmt_pwrite(d, ref, vsize, 0, &err) == 0 && diskfmt_close(d, &err) == 0;
    if (!ok(wok, "partial tail: written in one request and closed"))
        diag("  %s", err.msg);
    write_file(tpath("tail.raw"), ref, vsize);
    check_oracles(tpath("tail.qcow2"), tpath("tail.raw"), "partial tail");
    check_own_read(tpath("tail.qcow2"), ref, vsize, "partial tail");
    free(ref);

    o.size = 1000;
    o.compress = DISKFMT_COMPRESS_ZSTD;
    d = diskfmt_create(tpath("tiny.qcow2"), "qcow2", &o, &err);
    uint8_t t[1024] = {0};
    fill_text(t, 1000);
    wok = d && diskfmt_pwrite(d, t, 1000, 0, &err) == 0 && diskfmt_close(d, &err) == 0;
    ok(wok, "tiny disk: 1000 bytes, zstd");
    write_file(tpath("tiny.raw"), t, 1024);
    check_oracles(tpath("tiny.qcow2"), tpath("tiny.raw"), "tiny disk");

    /* an empty disk of size 0 */
    o.size = 0;
    o.compress = DISKFMT_COMPRESS_NONE;
    d = diskfmt_create(tpath("empty.qcow2"), "qcow2", &o, &err);
    ok(d && diskfmt_close(d, &err) == 0 &&
           sh("qemu-img check -q '%s' >/dev/null 2>&1", tpath("empty.qcow2")) == 0,
       "empty disk: created, qemu-img check clean");
}

/* Many L2 tables through a small cache: 512-byte clusters map 32 KiB per table, so a
 * 64 MiB disk has 2048 tables; writes in a scattered order evict and reload them. */
static void test_l2_eviction(void)
{
    struct p2v_err err = {0};
    uint64_t size = 64 * (uint64_t)MIB;
    struct diskfmt_create_opts o = {.size = size, .cluster_size = 512};
    struct diskfmt *d = diskfmt_create(tpath("ev.qcow2"), "qcow2", &o, &err);
    uint8_t *ref = calloc(1, size);
    bool wok = d != NULL;
    for (int i = 0; i < 4000 && wok; i++) {
        uint64_t off = (rnd() % (size / 512)) * 512;
        size_t len = (size_t)P2V_MIN(size - off, (uint64_t)(512 + rnd() % 2048));
        fill_random(ref + off, len);
        wok = diskfmt_pwrite(d, ref + off, len, off, &err) == 0;
    }
    wok = wok && diskfmt_close(d, &err) == 0;
    if (!ok(wok, "eviction: 4000 scattered writes over 2048 L2 tables"))
        diag("  %s", err.msg);
    write_file(tpath("ev.raw"), ref, size);
    check_oracles(tpath("ev.qcow2"), tpath("ev.raw"), "eviction");
    check_own_read(tpath("ev.qcow2"), ref, size, "eviction");
    free(ref);
}

static void test_create_errors(void)
{
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = MIB, .cluster_size = 3000};
    ok(diskfmt_create(tpath("x.qcow2"), "qcow2", &o, &err) == NULL &&
           strstr(err.msg, "cluster_size"),
       "create: a cluster size that is not a power of two refused");
    o.cluster_size = 256;
    ok(diskfmt_create(tpath("x.qcow2"), "qcow2", &o, &err) == NULL,
       "create: 256-byte clusters refused");
    o.cluster_size = 512;
    o.size = UINT64_C(1) << 40;
    ok(diskfmt_create(tpath("x.qcow2"), "qcow2", &o, &err) == NULL &&
           strstr(err.msg, "too large"),
       "create: 1 TiB at 512-byte clusters refused (L1 past 32 MiB)");
    o.cluster_size = 0;
    o.size = UINT64_MAX - 10;
    ok(diskfmt_create(tpath("x.qcow2"), "qcow2", &o, &err) == NULL,
       "create: a size near 2^64 refused");
}

/* ------------------------------------------------------------------ qemu's images */

static void test_qemu_images(void)
{
    uint64_t size = 6 * (uint64_t)MIB + 3 * 512;
    uint8_t *ref = malloc(size);
    for (uint64_t off = 0; off < size; off += 256 * KIB)
        fill_mixed(ref + off, (size_t)P2V_MIN(size - off, (uint64_t)256 * KIB));
    write_file(tpath("q.raw"), ref, size);
    static const char *const variants[] = {
        "",
        "-c",
        "-c -o compression_type=zstd",
        "-o compat=0.10",
        "-c -o compat=0.10",
        "-o cluster_size=512",
        "-o cluster_size=2M",
        "-c -o cluster_size=512,compression_type=zstd",
        "-c -o cluster_size=2M",
        "-o refcount_bits=1",
        "-o refcount_bits=64,lazy_refcounts=on",
        "-o preallocation=metadata",
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(variants); i++) {
        char name[96];
        snprintf(name, sizeof name, "qemu-img %s", variants[i][0] ? variants[i] : "(default)");
        int r = sh("qemu-img convert -f raw -O qcow2 %s '%s' '%s' >/dev/null 2>&1",
                   variants[i], tpath("q.raw"), tpath("q.qcow2"));
        if (!ok(r == 0, "%s: made", name))
            continue;
        check_own_read(tpath("q.qcow2"), ref, size, name);
    }
    free(ref);

    /* zero clusters: plain (write -z -u: unmapped) and preallocated (write -z) */
    if (!have_qemu_io) {
        ok(1, "zero clusters # SKIP qemu-io missing");
        return;
    }
    sh("qemu-img create -q -f qcow2 '%s' 4M", tpath("z.qcow2"));
    int r = sh("qemu-io -f qcow2 -c 'write -P 0x55 0 2M' -c 'write -z 256k 256k' "
               "-c 'write -z -u 1M 128k' -c 'write -P 0x66 3M 4k' '%s' >/dev/null",
               tpath("z.qcow2"));
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(tpath("z.qcow2"), NULL, 0, &err);
    bool good = r == 0 && d;
    uint64_t run = 0;
    unsigned flags = 0;
    good = good && diskfmt_block_status(d, 256 * KIB, 256 * KIB, &run, &flags, &err) == 0 &&
           flags == DISKFMT_STATUS_ZERO && run == 256 * KIB;
    good = good && diskfmt_block_status(d, 1 * MIB, 128 * KIB, &run, &flags, &err) == 0 &&
           (flags & DISKFMT_STATUS_ZERO) && run == 128 * KIB;
    good = good && diskfmt_block_status(d, 0, MIB, &run, &flags, &err) == 0 && flags == 0 &&
           run == 256 * KIB;
    good = good && diskfmt_block_status(d, 2 * MIB, 2 * MIB, &run, &flags, &err) == 0 &&
           flags == (DISKFMT_STATUS_ZERO | DISKFMT_STATUS_HOLE) && run == MIB;
    if (!ok(good, "qemu-io zero clusters (with and without preallocation) report ZERO"))
        diag("  r=%d run=%llu flags=%u %s", r, (unsigned long long)run, flags, err.msg);
    uint8_t *zref = calloc(1, 4 * MIB);
    memset(zref, 0x55, 2 * MIB);
    memset(zref + 256 * KIB, 0, 256 * KIB);
    memset(zref + MIB, 0, 128 * KIB);
    memset(zref + 3 * MIB, 0x66, 4 * KIB);
    char why[P2V_ERR_MSG_MAX + 128] = "";
    if (!ok(d && read_back(d, zref, 4 * MIB, NULL, why, sizeof why) == 0,
            "qemu-io zero clusters: read back identical"))
        diag("  %s", why);
    diskfmt_close(d, NULL);
    free(zref);

    /* internal snapshots and a persistent bitmap: our check agrees with qemu-img */
    r = sh("qemu-img snapshot -c s1 '%s' && qemu-io -f qcow2 -c 'write -P 0x77 0 64k' '%s' "
           ">/dev/null && qemu-img bitmap --add '%s' bm && qemu-img check -q '%s'",
           tpath("z.qcow2"), tpath("z.qcow2"), tpath("z.qcow2"), tpath("z.qcow2"));
    d = diskfmt_open(tpath("z.qcow2"), NULL, 0, &err);
    struct diskfmt_check res = {0};
    ok(r == 0 && d && diskfmt_check(d, &res, &err) == 0 && res.errors == 0 && res.leaks == 0,
       "snapshots and bitmaps: our check is clean like qemu-img's");
    diskfmt_close(d, NULL);
}

/* ------------------------------------------------------------------ hostile input */

/* A small qemu-made image to damage: header, refcount table, block, L1 at 0x30000, one
 * L2 table, data. */
static void make_victim(void)
{
    uint8_t *b = malloc(MIB);
    fill_text(b, MIB);
    write_file(tpath("v.raw"), b, MIB);
    free(b);
    sh("qemu-img convert -f raw -O qcow2 '%s' '%s'", tpath("v.raw"), tpath("victim.qcow2"));
    sh("qemu-img convert -c -f raw -O qcow2 '%s' '%s'", tpath("v.raw"),
       tpath("victim-c.qcow2"));
}

static const char *victim(const char *name)
{
    copy_file(tpath("victim.qcow2"), tpath(name));
    return tpath(name);
}

static void test_hostile(void)
{
    make_victim();
    struct stat st;
    stat(tpath("victim.qcow2"), &st);
    uint64_t l1 = read_be64(tpath("victim.qcow2"), 40);
    uint64_t l2 = read_be64(tpath("victim.qcow2"), l1) & QCOW2_OFFSET_MASK;
    ok(l1 == 0x30000 && l2 >= 0x40000, "victim: L1 at 0x30000, an L2 table at %llu",
       (unsigned long long)l2);

    const char *p = victim("b-trunc.qcow2");
    ok(truncate(p, 1000) == 0, "truncated copy");
    expect_bad(p, 0, "past the end", "truncated file");
    p = victim("b-trunc50.qcow2");
    ok(truncate(p, 50) == 0, "a file of 50 bytes");
    expect_bad(p, 0, "truncated", "header cut short");
    write_file(tpath("b-empty.qcow2"), "", 0);
    expect_bad(tpath("b-empty.qcow2"), 0, "not a qcow2", "empty file");

    p = victim("b-l1size.qcow2");
    patch_be32(p, 36, 0xffffffffu);
    expect_bad(p, 0, "larger than", "huge L1 size");
    p = victim("b-l1off.qcow2");
    patch_be64(p, 40, 0x7fffffffffff0000ull);
    expect_bad(p, 0, "past the end", "L1 offset past the end of the file");
    p = victim("b-l1mis.qcow2");
    patch_be64(p, 40, 0x30200);
    expect_bad(p, 0, "not aligned", "misaligned L1 offset");
    p = victim("b-l1hdr.qcow2");
    patch_be64(p, 40, 0);
    expect_bad(p, 0, "header", "L1 table in the header");
    p = victim("b-size.qcow2");
    patch_be64(p, 24, 0xfffffffffffffe00ull);
    expect_bad(p, 0, "needs", "virtual size near 2^64");
    p = victim("b-size2.qcow2");
    patch_be64(p, 24, UINT64_C(1) << 40);
    expect_bad(p, 0, "too small", "virtual size past what the L1 table maps");
    p = victim("b-cb.qcow2");
    patch_be32(p, 20, 30);
    expect_bad(p, 0, "cluster_bits", "cluster_bits 30");
    p = victim("b-cb8.qcow2");
    patch_be32(p, 20, 8);
    expect_bad(p, 0, "cluster_bits", "cluster_bits 8");
    p = victim("b-crypt.qcow2");
    patch_be32(p, 32, 2);
    expect_bad(p, 0, "encrypted", "encryption (LUKS) set");
    p = victim("b-ver.qcow2");
    patch_be32(p, 4, 4);
    expect_bad(p, 0, "version", "version 4");
    p = victim("b-reft.qcow2");
    patch_be32(p, 56, 0x7fffffffu);
    expect_bad(p, 0, "refcount table", "huge refcount table");
    p = victim("b-reft0.qcow2");
    patch_be32(p, 56, 0);
    expect_bad(p, 0, "no refcount table", "no refcount table");
    p = victim("b-hlen.qcow2");
    patch_be32(p, 100, 100);
    expect_bad(p, 0, "header_length", "header_length below 104");
    p = victim("b-extl2.qcow2");
    patch_be64(p, 72, QCOW2_INCOMPAT_EXTL2);
    expect_bad(p, 0, "extended L2", "extended L2 entries");
    p = victim("b-datafile.qcow2");
    patch_be64(p, 72, QCOW2_INCOMPAT_DATA_FILE);
    expect_bad(p, 0, "external data file", "external data file");
    p = victim("b-unknown.qcow2");
    patch_be64(p, 72, UINT64_C(1) << 9);
    expect_bad(p, 0, "unknown incompatible", "unknown incompatible feature");
    p = victim("b-corrupt.qcow2");
    patch_be64(p, 72, QCOW2_INCOMPAT_CORRUPT);
    expect_bad(p, 0, "corrupt", "corrupt bit");
    p = victim("b-dirty.qcow2");
    patch_be64(p, 72, QCOW2_INCOMPAT_DIRTY);
    expect_bad(p, 0, "incomplete", "dirty bit");
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(p, NULL, DISKFMT_ALLOW_DIRTY, &err);
    ok(d != NULL, "dirty bit: opens with DISKFMT_ALLOW_DIRTY");
    diskfmt_close(d, NULL);
    p = victim("b-snap.qcow2");
    patch_be32(p, 60, 1000000);
    expect_bad(p, 0, "snapshots", "a million snapshots");
    ok(diskfmt_open(tpath("victim.qcow2"), "qcow2", DISKFMT_RDWR, &err) == NULL &&
           strstr(err.msg, "read-only"),
       "existing images are not opened for writing");

    /* a backing file, made by qemu-img */
    sh("qemu-img create -q -f qcow2 -b '%s' -F qcow2 '%s'", tpath("victim.qcow2"),
       tpath("b-backing.qcow2"));
    expect_bad(tpath("b-backing.qcow2"), 0, "backing file", "backing file");
    /* qemu-img times its key derivation by CPU usage and, on a loaded machine, can fail
     * with "Unable to get accurate CPU usage": retry a few times. */
    for (int i = 0; i < 5 && access(tpath("b-luks.qcow2"), F_OK) != 0; i++)
        sh("qemu-img create -q -f qcow2 --object secret,id=s0,data=pw -o encrypt.format=luks,"
           "encrypt.key-secret=s0,encrypt.iter-time=100 '%s' 1M", tpath("b-luks.qcow2"));
    expect_bad(tpath("b-luks.qcow2"), 0, "encrypted", "LUKS image made by qemu-img");

    /* L1 entries */
    p = victim("b-l1e-eof.qcow2");
    patch_be64(p, l1, QCOW2_OFLAG_COPIED | 0x7fff0000ull);
    expect_bad(p, 0, "past the end", "L1 entry past the end of the file");
    p = victim("b-l1e-l1.qcow2");
    patch_be64(p, l1, QCOW2_OFLAG_COPIED | l1);
    expect_bad(p, 0, "L1 table", "L1 entry pointing at the L1 table");
    p = victim("b-l1e-rt.qcow2");
    patch_be64(p, l1, QCOW2_OFLAG_COPIED | 0x10000);
    expect_bad(p, 0, "refcount table", "L1 entry pointing at the refcount table");
    p = victim("b-l1e-res.qcow2");
    patch_be64(p, l1, (UINT64_C(1) << 60) | l2);
    expect_bad(p, 0, "reserved", "L1 entry with reserved bits");

    /* L2 entries */
    p = victim("b-l2e-eof.qcow2");
    patch_be64(p, l2, QCOW2_OFLAG_COPIED | 0x7fff0000ull);
    expect_bad(p, 0, "past the end", "L2 entry past the end of the file");
    p = victim("b-l2e-l2.qcow2");
    patch_be64(p, l2 + 8, QCOW2_OFLAG_COPIED | l2);
    expect_bad(p, 0, "L2 table", "L2 entry pointing at its own table");
    p = victim("b-l2e-hdr.qcow2");
    patch_be64(p, l2, QCOW2_OFLAG_COMPRESSED | 100);
    expect_bad(p, 0, "header", "compressed L2 entry into the header");
    p = victim("b-l2e-mis.qcow2");
    patch_be64(p, l2, QCOW2_OFLAG_COPIED | (l2 + 4096));
    expect_bad(p, 0, "aligned", "misaligned L2 entry");

    /* compressed data damaged */
    copy_file(tpath("victim-c.qcow2"), tpath("b-cz.qcow2"));
    uint64_t cl1 = read_be64(tpath("b-cz.qcow2"), 40);
    uint64_t cl2 = read_be64(tpath("b-cz.qcow2"), cl1) & QCOW2_OFFSET_MASK;
    uint64_t ce = read_be64(tpath("b-cz.qcow2"), cl2);
    uint64_t coff = ce & ((UINT64_C(1) << 54) - 1);
    ok((ce & QCOW2_OFLAG_COMPRESSED) && coff > 0, "compressed victim: first cluster at %llu",
       (unsigned long long)coff);
    patch(tpath("b-cz.qcow2"), coff, "\xff\xff\xff\xff\xff\xff\xff\xff", 8);
    expect_bad(tpath("b-cz.qcow2"), 0, "corrupt", "corrupt deflate data");
    copy_file(tpath("victim-c.qcow2"), tpath("b-czlen.qcow2"));
    /* one sector claimed where the data need more: the stream ends early */
    patch_be64(tpath("b-czlen.qcow2"), cl2, QCOW2_OFLAG_COMPRESSED | coff);
    expect_bad(tpath("b-czlen.qcow2"), 0, "compressed cluster", "compressed data cut short");
    copy_file(tpath("victim-c.qcow2"), tpath("b-czeof.qcow2"));
    ok(truncate(tpath("b-czeof.qcow2"), (off_t)coff + 100) == 0, "compressed victim cut");
    expect_bad(tpath("b-czeof.qcow2"), 0, "offset", "compressed image cut in its data");

    /* our check finds damage: a refcount lowered (error) and raised (leak) */
    p = victim("b-rc-err.qcow2");
    uint64_t blk = read_be64(p, read_be64(p, 48));
    uint8_t zero2[2] = {0, 0}, two[2] = {0, 2};
    patch(p, blk + 2 * (l2 >> 16), zero2, 2);
    d = diskfmt_open(p, NULL, 0, &err);
    struct diskfmt_check res = {0};
    ok(d && diskfmt_check(d, &res, &err) == 0 && res.errors >= 1 &&
           strstr(res.first_error, "refcount 0"),
       "check: a refcount of 0 for a used cluster is an error");
    diskfmt_close(d, NULL);
    p = victim("b-rc-leak.qcow2");
    patch(p, blk + 2 * ((uint64_t)st.st_size >> 16) + 2 * 4, two, 2);
    d = diskfmt_open(p, NULL, 0, &err);
    int qr = sh("qemu-img check -q '%s' >/dev/null 2>&1", p);
    ok(d && diskfmt_check(d, &res, &err) == 0 && res.errors == 0 && res.leaks == 0 && qr == 0,
       "check: a refcount past the end of the file is not counted (as qemu)");
    diskfmt_close(d, NULL);
    p = victim("b-rc-leak2.qcow2");
    patch(p, blk + 2 * 5, two, 2);
    d = diskfmt_open(p, NULL, 0, &err);
    qr = sh("qemu-img check -q '%s' >/dev/null 2>&1", p);
    /* qemu-img: a leak, and an error since the copied flag then disagrees (exit 2) */
    ok(d && diskfmt_check(d, &res, &err) == 0 && res.leaks == 1 && res.errors == 1 &&
           strstr(res.first_error, "copied") && qr == 2,
       "check: a refcount of 2 for a data cluster used once: a leak and a copied-flag "
       "error, as for qemu-img");
    diskfmt_close(d, NULL);

    /* 65536 snapshots all naming one L1 table as large as the file: our check must stop
     * on its budget, not scan 65536 x 400K entries */
    p = victim("b-snapbomb.qcow2");
    stat(p, &st);
    uint64_t tab = ((uint64_t)st.st_size + 65535) & ~65535ull;
    size_t nsnap = 65536, tlen = nsnap * 40;
    uint8_t *t = calloc(1, tlen);
    uint64_t l1n = (tab + tlen - l1) / 8;
    for (size_t i = 0; i < nsnap; i++) {
        p2v_put_u64be(t + 40 * i, l1);
        p2v_put_u32be(t + 40 * i + 8, (uint32_t)l1n);
    }
    patch(p, tab, t, tlen);
    free(t);
    patch_be32(p, 60, (uint32_t)nsnap);
    patch_be64(p, 64, tab);
    d = diskfmt_open(p, NULL, 0, &err);
    double t0 = p2v_now();
    int cr = d ? diskfmt_check(d, &res, &err) : 0;
    ok(d && cr < 0 && strstr(err.msg, "too many") && p2v_now() - t0 < 20,
       "check: snapshots sharing a huge L1 table stop on the budget (%.1f s)",
       p2v_now() - t0);
    diskfmt_close(d, NULL);

    /* garbage forced as qcow2 */
    uint8_t g[65536];
    fill_random(g, sizeof g);
    write_file(tpath("b-garbage"), g, sizeof g);
    expect_bad(tpath("b-garbage"), 0, "not a qcow2", "garbage");
}

/* ------------------------------------------------------------------ dirty images */

static void test_abandoned(void)
{
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = 8 * MIB};
    struct diskfmt *d = diskfmt_create(tpath("ab.qcow2"), "qcow2", &o, &err);
    uint8_t buf[65536];
    fill_text(buf, sizeof buf);
    ok(d && diskfmt_pwrite(d, buf, sizeof buf, MIB, &err) == 0, "abandoned: written");
    diskfmt_abandon(d);
    expect_bad(tpath("ab.qcow2"), 0, "incomplete", "an abandoned image (dirty)");
    ok(sh("qemu-img check -q '%s' >/dev/null 2>&1", tpath("ab.qcow2")) != 0,
       "abandoned: qemu-img check reports it");

    /* nothing written at all: still refused, still reported */
    d = diskfmt_create(tpath("ab0.qcow2"), "qcow2", &o, &err);
    diskfmt_abandon(d);
    expect_bad(tpath("ab0.qcow2"), 0, "incomplete", "an abandoned empty image");
    ok(sh("qemu-img check -q '%s' >/dev/null 2>&1", tpath("ab0.qcow2")) != 0,
       "abandoned empty: qemu-img check reports it");
}

static void killed_writer(enum diskfmt_compress kind, const char *name)
{
    char file[64];
    snprintf(file, sizeof file, "k-%s.qcow2", name);
    struct diskfmt_create_opts o = {.size = 1ull << 30, .compress = kind};
    ok(kill_writer(tpath(file), "qcow2", &o, 1ull << 30, false), "%s: writer killed mid-write",
       name);
    char label[96];
    snprintf(label, sizeof label, "%s: killed mid-write", name);
    expect_bad(tpath(file), 0, "incomplete", label);
    ok(sh("qemu-img check -q '%s' >/dev/null 2>&1", tpath(file)) != 0,
       "%s: qemu-img check reports the killed writer's image", name);
}

int main(void)
{
    dftest_begin("test-qcow2");
    have_qemu_io = sh("qemu-io --version >/dev/null 2>&1") == 0;

    test_parsers();
    test_random_writer(0, 24 * (uint64_t)MIB + 12345, "default");
    test_random_writer(512, 3 * (uint64_t)MIB + 77, "512");
    test_random_writer(4096, 9 * (uint64_t)MIB + 513, "4k");
    test_random_writer(2 * MIB, 13 * (uint64_t)MIB + 1, "2m");
    test_compressed_writer(DISKFMT_COMPRESS_ZLIB, 0, 20 * (uint64_t)MIB + 4097, "zlib");
    test_compressed_writer(DISKFMT_COMPRESS_ZSTD, 0, 20 * (uint64_t)MIB + 4097, "zstd");
    test_compressed_writer(DISKFMT_COMPRESS_ZLIB, 512, 2 * (uint64_t)MIB + 1000, "zlib-512");
    test_compressed_writer(DISKFMT_COMPRESS_ZSTD, 4096, 5 * (uint64_t)MIB, "zstd-4k");
    test_compressed_writer(DISKFMT_COMPRESS_ZSTD, 2 * MIB, 11 * (uint64_t)MIB + 3, "zstd-2m");
    test_compressed_tail();
    test_l2_eviction();
    test_create_errors();
    test_qemu_images();
    test_hostile();
    test_abandoned();
    killed_writer(DISKFMT_COMPRESS_NONE, "plain");
    killed_writer(DISKFMT_COMPRESS_ZSTD, "zstd");

    return dftest_end();
}
