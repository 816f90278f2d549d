/* test-vmdk.c: TAP unit test of the VMDK driver (disk-formats/vmdk*.c) against outside
 * oracles. For each subformat we write (monolithicSparse, streamOptimized,
 * monolithicFlat): create, write a mixed pattern (random data, zero runs, holes, text, a
 * tail that is not grain-aligned; random-offset writes and zeroing where the subformat
 * allows it), close, then `qemu-img check`, `qemu-img compare` against a raw file of the
 * same bytes, `vmdkinfo`, and our own reader. Images written by `qemu-img convert` in all
 * five subformats (with multi-extent split sets) must read back identical. Hostile input
 * (truncated or out-of-file headers and tables, overflowing sizes, `..` and absolute
 * extent paths, a missing extent, a stream cut before its footer, an unclean image) is
 * refused with a clear error; a writer killed mid-write leaves an image our open refuses.
 * Skips (TAP `1..0 # SKIP`) only when qemu-img is missing.
 */
/* fill_text's words (see dftest.h) */
#define DFTEST_WORDS \
    "disk", "grain", "table", "sector", "extent", "marker", "footer", "stream", \
    "vmware", "qemu"
#include "dftest.h"
#include "vmdk.h"

#define GRAIN (64u * KIB)

static bool have_vmdkinfo;

/* ------------------------------------------------------------------ helpers */

static int read_header(const char *path, struct vmdk_header *h)
{
    uint8_t b[512];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = p2v_pread_full(fd, b, sizeof b, 0);
    close(fd);
    return n == 512 ? vmdk_header_parse(b, 512, path, 0, h, NULL) : -1;
}

static void check_own_read(const char *path, const uint8_t *ref, uint64_t n, const char *name)
{
    check_own_read_fmt(path, "vmdk", ref, n, name, false);
}

static void check_oracles(const char *path, const char *raw, const char *name)
{
    is_int(sh("qemu-img check -q -f vmdk '%s' >/dev/null 2>&1", path), 0,
           "%s: qemu-img check is clean", name);
    is_int(sh("qemu-img compare -q -f raw -F vmdk '%s' '%s' >/dev/null 2>&1", raw, path), 0,
           "%s: qemu-img compare: identical to the raw file", name);
    if (have_vmdkinfo)
        is_int(sh("vmdkinfo '%s' >/dev/null 2>&1", path), 0, "%s: vmdkinfo opens it", name);
    else
        ok(1, "%s: vmdkinfo opens it # SKIP vmdkinfo missing", name);
}

/* Open must fail, or reading everything must fail, with @sub in the message. */
static void expect_bad(const char *path, unsigned flags, const char *sub, const char *name)
{
    expect_bad_fmt(path, "vmdk", flags, sub, name, DFTEST_NAME_IGNORE);
}

/* ------------------------------------------------------------------ writers */

static void test_writer(const char *sub, const char *adapter)
{
    char name[64], file[64], raw[64];
    snprintf(name, sizeof name, "%s/%s", sub, adapter ? adapter : "ide");
    snprintf(file, sizeof file, "w-%s-%s.vmdk", sub, adapter ? adapter : "ide");
    snprintf(raw, sizeof raw, "w-%s.raw", sub);
    const uint64_t size = 8 * MIB + 3000; /* not grain- or sector-aligned */
    struct diskfmt_create_opts o = {.size = size, .subformat = sub, .adapter_type = adapter};
    struct p2v_err err = {0};
    bool stream = strcmp(sub, "streamOptimized") == 0;
    struct diskfmt *d = diskfmt_create(tpath(file), "vmdk", &o, &err);
    if (!ok(d != NULL, "%s: create", name)) {
        diag("  %s", err.msg);
        return;
    }
    uint64_t vsize = diskfmt_size(d);
    ok(vsize == 8 * MIB + 3072, "%s: size rounded up to whole sectors", name);
    ok(diskfmt_sequential_writes(d) == stream && diskfmt_write_align(d) == (stream ? GRAIN : 1),
       "%s: sequential/alignment as the subformat needs", name);
    uint8_t *ref = calloc(1, vsize);
    const struct seg plan[] = {
        {0, 256 * KIB, 0},
        {256 * KIB, 256 * KIB, 1},          /* zeros written: stay unallocated */
        /* [512K, 1M): a hole, never written */
        {1 * MIB, 300 * KIB, 2},            /* ends inside a grain */
        {1536 * KIB, 64 * KIB, 3},          /* a grain half zeros */
        {2 * MIB, 1 * MIB, 2},
        {4 * MIB, 100, 0},                  /* a tiny write */
        {5 * MIB, 1 * MIB, 0},
        {8 * MIB - 64 * KIB, 64 * KIB + 3072, 0}, /* the tail, to the end */
    };
    bool wok = true;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(plan) && wok; i++) {
        if (plan[i].off == 5 * MIB) {
            /* a zero grain inside a data write */
            if (do_write(d, ref, plan[i].off, 128 * KIB, 0, &err) < 0 ||
                do_write(d, ref, plan[i].off + 128 * KIB, 64 * KIB, 1, &err) < 0 ||
                do_write(d, ref, plan[i].off + 192 * KIB, plan[i].len - 192 * KIB, 0,
                         &err) < 0)
                wok = false;
            continue;
        }
        if (do_write(d, ref, plan[i].off, plan[i].len, plan[i].kind, &err) < 0)
            wok = false;
    }
    if (stream) {
        uint8_t junk[4096] = {1};
        struct p2v_err e2 = {0};
        ok(diskfmt_pwrite(d, junk, sizeof junk, 0, &e2) < 0 && strstr(e2.msg, "in order"),
           "%s: a write going back is refused", name);
    } else {
        /* random-offset overwrites, unaligned, then zeroing across data */
        for (int i = 0; i < 60 && wok; i++) {
            /* above 1 MiB: [512K, 1M) stays a hole */
            uint64_t len = 1 + rnd() % (200 * KIB);
            uint64_t off = MIB + rnd() % (vsize - MIB - len);
            if (do_write(d, ref, off, len, (int)(rnd() % 4), &err) < 0)
                wok = false;
        }
        uint64_t zoff = 100 * KIB, zlen = 700 * KIB;
        if (wok && diskfmt_zero(d, zoff, zlen, &err) < 0)
            wok = false;
        memset(ref + zoff, 0, zlen);
        /* rewrite one grain with data after a flush: the cache must stay coherent */
        if (wok && diskfmt_flush(d, &err) < 0)
            wok = false;
        if (wok && do_write(d, ref, 3 * MIB + 5, 70000, 0, &err) < 0)
            wok = false;
        uint8_t back[70000];
        if (wok && diskfmt_pread(d, back, sizeof back, 3 * MIB + 5, &err) == 0)
            ok(memcmp(back, ref + 3 * MIB + 5, sizeof back) == 0,
               "%s: reads its own writes before close", name);
        else
            ok(0, "%s: reads its own writes before close", name);
    }
    if (!ok(wok, "%s: writes", name))
        diag("  %s", err.msg);
    if (!ok(diskfmt_close(d, &err) == 0, "%s: close", name))
        diag("  %s", err.msg);
    write_file(tpath(raw), ref, vsize);
    check_oracles(tpath(file), tpath(raw), name);
    check_own_read(tpath(file), ref, vsize, name);
    if (!stream) {
        /* zeros written over unallocated grains stayed unallocated */
        d = diskfmt_open(tpath(file), "vmdk", DISKFMT_RDONLY, &err);
        uint64_t run = 0;
        unsigned f = 0;
        if (d && strcmp(sub, "monolithicSparse") == 0 &&
            diskfmt_block_status(d, 512 * KIB, 512 * KIB, &run, &f, &err) == 0)
            ok((f & DISKFMT_STATUS_HOLE) && run == 512 * KIB,
               "%s: the hole is reported as a hole", name);
        else if (d)
            ok(1, "%s: hole report (sparse only) # SKIP flat", name);
        else
            ok(0, "%s: reopen", name);
        diskfmt_close(d, NULL);
    }
    free(ref);
}

static void test_adapter_types(void)
{
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = 40ull << 30, .subformat = "monolithicSparse",
                                    .adapter_type = "pvscsi"};
    struct diskfmt *d = diskfmt_create(tpath("ad.vmdk"), "vmdk", &o, &err);
    ok(d && diskfmt_close(d, &err) == 0, "40 GiB pvscsi sparse image created");
    is_int(sh("grep -aq 'ddb.adapterType = \"pvscsi\"' '%s'", tpath("ad.vmdk")), 0,
           "adapter type written in VMware's spelling");
    is_int(sh("grep -aq 'ddb.geometry.heads = \"255\"' '%s' && "
              "grep -aq 'ddb.geometry.cylinders = \"5221\"' '%s'",
              tpath("ad.vmdk"), tpath("ad.vmdk")),
           0, "SCSI geometry: 255 heads, 5221 cylinders for 40 GiB");
    is_int(sh("qemu-img check -q '%s' >/dev/null 2>&1", tpath("ad.vmdk")), 0,
           "qemu-img accepts the pvscsi descriptor");
    o.adapter_type = NULL;
    d = diskfmt_create(tpath("ad2.vmdk"), "vmdk", &o, &err);
    ok(d && diskfmt_close(d, &err) == 0, "40 GiB ide sparse image created");
    is_int(sh("grep -aq 'ddb.geometry.cylinders = \"16383\"' '%s' && grep -aq "
              "'ddb.adapterType = \"ide\"' '%s'", tpath("ad2.vmdk"), tpath("ad2.vmdk")),
           0, "IDE geometry capped at 16383 cylinders, adapter ide by default");
    o.adapter_type = "scsi-magic";
    d = diskfmt_create(tpath("ad3.vmdk"), "vmdk", &o, &err);
    ok(!d && strstr(err.msg, "adapter"), "unknown adapter type refused");
    o.adapter_type = NULL;
    o.subformat = "twoGbMaxExtentSparse";
    d = diskfmt_create(tpath("ad4.vmdk"), "vmdk", &o, &err);
    ok(!d && strstr(err.msg, "subformat"), "creating a split set is refused clearly");
}

/* Scattered writes over more grain tables than the cache holds (256): tables are written
 * back on eviction and read again, and the result is what was written. */
static void test_gt_eviction(void)
{
    const uint64_t size = 16ull << 30; /* 512 grain tables of 32 MiB */
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = size, .subformat = "monolithicSparse"};
    struct diskfmt *d = diskfmt_create(tpath("ev.vmdk"), "vmdk", &o, &err);
    int rfd = open(tpath("ev.raw"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    bool good = d && rfd >= 0 && ftruncate(rfd, (off_t)size) == 0;
    uint8_t buf[5000];
    for (int pass = 0; pass < 2 && good; pass++)
        for (uint64_t t = 0; t < 512 && good; t++) {
            /* pass 0 walks the tables forwards, pass 1 backwards, at new offsets */
            uint64_t gt = pass ? 511 - t : t;
            uint64_t off = gt * (32ull << 20) + rnd() % ((32ull << 20) - sizeof buf);
            fill_random(buf, sizeof buf);
            good = diskfmt_pwrite(d, buf, sizeof buf, off, &err) == 0 &&
                   p2v_pwrite_full(rfd, buf, sizeof buf, off) >= 0;
        }
    if (rfd >= 0)
        close(rfd);
    if (!ok(good && diskfmt_close(d, &err) == 0, "1024 writes over 512 grain tables"))
        diag("  %s", err.msg);
    is_int(sh("qemu-img check -q '%s' >/dev/null 2>&1", tpath("ev.vmdk")), 0,
           "evicted tables: qemu-img check is clean");
    is_int(sh("qemu-img compare -q -f raw -F vmdk '%s' '%s' >/dev/null 2>&1",
              tpath("ev.raw"), tpath("ev.vmdk")), 0,
           "evicted tables: qemu-img compare: identical");
    d = diskfmt_open(tpath("ev.vmdk"), "vmdk", DISKFMT_RDWR, &err);
    ok(d != NULL, "reopened for writing");
    if (d) {
        /* rewrite in place, then a new grain: the allocator must start past the end */
        uint8_t back[5000];
        fill_random(buf, sizeof buf);
        bool w = diskfmt_pwrite(d, buf, sizeof buf, 7ull << 30, &err) == 0 &&
                 diskfmt_close(d, &err) == 0;
        d = w ? diskfmt_open(tpath("ev.vmdk"), "vmdk", 0, &err) : NULL;
        ok(d && diskfmt_pread(d, back, sizeof back, 7ull << 30, &err) == 0 &&
               memcmp(back, buf, sizeof buf) == 0,
           "a write after reopening reads back");
        struct diskfmt_check res;
        ok(d && diskfmt_check(d, &res, &err) == 0 && res.errors == 0,
           "our check is clean after reopening");
        diskfmt_close(d, NULL);
    }
    unlink(tpath("ev.raw"));
}

/* ------------------------------------------------------------------ foreign images */

static void test_qemu_images(void)
{
    const uint64_t n = 5 * MIB + 12800;
    uint8_t *src = calloc(1, n);
    fill_random(src, 70000);
    fill_text(src + 3 * MIB, 5000);
    fill_random(src + 4 * MIB + 100, 200 * KIB);
    fill_text(src + 5 * MIB, 12800);
    write_file(tpath("q-src.raw"), src, n);
    static const char *const subs[] = {"monolithicSparse", "streamOptimized",
                                       "monolithicFlat", "twoGbMaxExtentSparse",
                                       "twoGbMaxExtentFlat"};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(subs); i++) {
        char file[64], name[80];
        snprintf(file, sizeof file, "q-%s.vmdk", subs[i]);
        snprintf(name, sizeof name, "qemu-img %s", subs[i]);
        int r = sh("qemu-img convert -f raw -O vmdk -o subformat=%s '%s' '%s' >/dev/null 2>&1",
                   subs[i], tpath("q-src.raw"), tpath(file));
        if (!ok(r == 0, "%s: qemu-img made it", name))
            continue;
        check_own_read(tpath(file), src, n, name);
    }
    free(src);

    /* split sets with several extents: 2 GiB + 1 MiB, data across the 2 GiB boundary */
    const uint64_t big = (2ull << 30) + MIB;
    uint8_t chunk[64 * KIB];
    fill_random(chunk, sizeof chunk);
    int fd = open(tpath("q-big.raw"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    bool made = fd >= 0 && ftruncate(fd, (off_t)big) == 0 &&
                p2v_pwrite_full(fd, chunk, sizeof chunk, 0) >= 0 &&
                p2v_pwrite_full(fd, chunk, sizeof chunk, (2ull << 30) - 32 * KIB) >= 0 &&
                p2v_pwrite_full(fd, chunk, 4096, big - 4096) >= 0;
    if (fd >= 0)
        close(fd);
    for (int flat = 0; flat < 2 && made; flat++) {
        const char *sub = flat ? "twoGbMaxExtentFlat" : "twoGbMaxExtentSparse";
        char file[64];
        snprintf(file, sizeof file, "q-big-%d.vmdk", flat);
        int r = sh("qemu-img convert -f raw -O vmdk -o subformat=%s '%s' '%s' >/dev/null 2>&1",
                   sub, tpath("q-big.raw"), tpath(file));
        struct p2v_err err = {0};
        struct diskfmt *d = r == 0 ? diskfmt_open(tpath(file), NULL, 0, &err) : NULL;
        struct diskfmt *raw = diskfmt_open(tpath("q-big.raw"), "raw", 0, &err);
        if (!ok(d && raw, "%s, 2 extents: opened", sub)) {
            diag("  %s", err.msg);
            diskfmt_close(d, NULL);
            diskfmt_close(raw, NULL);
            continue;
        }
        bool same = diskfmt_size(d) == big;
        uint8_t *a = malloc(4 * MIB), *b = malloc(4 * MIB);
        for (uint64_t off = 0; same && off < big;) {
            uint64_t run;
            unsigned f;
            if (diskfmt_block_status(d, off, P2V_MIN((uint64_t)4 * MIB, big - off), &run, &f,
                                     &err) < 0 ||
                diskfmt_pread(raw, b, run, off, &err) < 0) {
                same = false;
                break;
            }
            if (f & DISKFMT_STATUS_ZERO)
                same = p2v_is_zero(b, run);
            else
                same = diskfmt_pread(d, a, run, off, &err) == 0 && memcmp(a, b, run) == 0;
            off += run;
        }
        if (!ok(same, "%s, 2 extents: reads back identical", sub))
            diag("  %s", err.msg);
        free(a);
        free(b);
        diskfmt_close(d, NULL);
        diskfmt_close(raw, NULL);
    }
    unlink(tpath("q-big.raw"));
}

/* A hand-written descriptor mixing FLAT, ZERO and SPARSE extents. */
static void test_mixed_descriptor(void)
{
    uint8_t a[64 * KIB], b[128 * KIB];
    fill_random(a, sizeof a);
    fill_text(b, sizeof b);
    uint8_t *pre = calloc(1, 4096 + sizeof a);
    memcpy(pre + 4096, a, sizeof a);
    write_file(tpath("mx-a.bin"), pre, 4096 + sizeof a); /* FLAT at offset 8 sectors */
    free(pre);
    write_file(tpath("mx-b.raw"), b, sizeof b);
    sh("qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse '%s' '%s' "
       ">/dev/null 2>&1", tpath("mx-b.raw"), tpath("mx-b.vmdk"));
    const char *desc = "# Disk DescriptorFile\nversion=1\nCID=12345678\n"
                       "parentCID=ffffffff\ncreateType=\"custom\"\n\n"
                       "RW 128 FLAT \"mx-a.bin\" 8\r\n"
                       "RW 64 ZERO\n"
                       "RDONLY 256 SPARSE \"mx-b.vmdk\"\n"
                       "ddb.adapterType = \"lsilogic\"\n";
    write_file(tpath("mx.vmdk"), desc, strlen(desc));
    uint8_t ref[64 * KIB + 32 * KIB + 128 * KIB];
    memcpy(ref, a, sizeof a);
    memset(ref + sizeof a, 0, 32 * KIB);
    memcpy(ref + sizeof a + 32 * KIB, b, sizeof b);
    check_own_read(tpath("mx.vmdk"), ref, sizeof ref, "FLAT+ZERO+SPARSE descriptor");
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(tpath("mx.vmdk"), "vmdk", DISKFMT_RDWR, &err);
    bool refused = false;
    if (d) {
        refused = diskfmt_pwrite(d, a, 512, 100 * KIB, &err) < 0 &&
                  strstr(err.msg, "read-only");
        diskfmt_close(d, NULL);
    }
    ok(refused, "a write to a RDONLY extent is refused");
}

/* ------------------------------------------------------------------ hostile input */

static void make_sparse(const char *file, uint64_t size)
{
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = size, .subformat = "monolithicSparse"};
    struct diskfmt *d = diskfmt_create(tpath(file), "vmdk", &o, &err);
    uint8_t buf[256 * KIB];
    fill_random(buf, sizeof buf);
    if (d) {
        diskfmt_pwrite(d, buf, sizeof buf, 0, &err);
        diskfmt_close(d, &err);
    }
}

static void test_bad_input(void)
{
    struct vmdk_header h;
    char b[512];
    make_sparse("good.vmdk", 4 * MIB);
    if (!ok(read_header(tpath("good.vmdk"), &h) == 0, "good sparse image header parses"))
        return;

    /* truncated header */
    memcpy(b, "KDMV\1\0\0\0", 8);
    write_file(tpath("b-trunc.vmdk"), b, 100);
    expect_bad(tpath("b-trunc.vmdk"), 0, "truncated", "truncated header");

    copy_file(tpath("good.vmdk"), tpath("b-gd.vmdk"));
    patch_u64(tpath("b-gd.vmdk"), 56, 1u << 30);
    expect_bad(tpath("b-gd.vmdk"), 0, "outside the file", "grain directory outside the file");

    copy_file(tpath("good.vmdk"), tpath("b-gdhuge.vmdk"));
    patch_u64(tpath("b-gdhuge.vmdk"), 56, UINT64_MAX - 3);
    expect_bad(tpath("b-gdhuge.vmdk"), 0, "outside the file", "grain directory offset near 2^64");

    copy_file(tpath("good.vmdk"), tpath("b-gdover.vmdk"));
    patch_u64(tpath("b-gdover.vmdk"), 56, h.rgd_offset);
    expect_bad(tpath("b-gdover.vmdk"), 0, "overlaps", "grain directory overlapping the redundant one");

    copy_file(tpath("good.vmdk"), tpath("b-cap.vmdk"));
    patch_u64(tpath("b-cap.vmdk"), 12, UINT64_MAX / 2);
    expect_bad(tpath("b-cap.vmdk"), 0, "capacity", "capacity that overflows 64 bits in bytes");

    copy_file(tpath("good.vmdk"), tpath("b-grain.vmdk"));
    patch_u64(tpath("b-grain.vmdk"), 20, 3);
    expect_bad(tpath("b-grain.vmdk"), 0, "grain size", "grain size not a power of two");

    copy_file(tpath("good.vmdk"), tpath("b-gtes.vmdk"));
    patch_u32(tpath("b-gtes.vmdk"), 44, 1u << 30);
    expect_bad(tpath("b-gtes.vmdk"), 0, "grain table entries", "huge grain table");

    copy_file(tpath("good.vmdk"), tpath("b-nl.vmdk"));
    patch(tpath("b-nl.vmdk"), 75, "\n", 1);
    expect_bad(tpath("b-nl.vmdk"), 0, "text-mode", "newline bytes mangled");

    /* grain directory entry 0 pointing at the header area (the descriptor) */
    uint32_t gt0 = read_u32(tpath("good.vmdk"), h.gd_offset * 512);
    ok(gt0 != 0, "good image has its first grain table");
    copy_file(tpath("good.vmdk"), tpath("b-gtmeta.vmdk"));
    patch_u32(tpath("b-gtmeta.vmdk"), h.gd_offset * 512, 1);
    expect_bad(tpath("b-gtmeta.vmdk"), 0, "metadata", "grain table at the header/descriptor");

    /* a grain table entry pointing at the header sector / descriptor, and far away */
    copy_file(tpath("good.vmdk"), tpath("b-gtehdr.vmdk"));
    patch_u32(tpath("b-gtehdr.vmdk"), (uint64_t)gt0 * 512, 1);
    expect_bad(tpath("b-gtehdr.vmdk"), 0, "points into", "grain at the descriptor");
    copy_file(tpath("good.vmdk"), tpath("b-gtehuge.vmdk"));
    patch_u32(tpath("b-gtehuge.vmdk"), (uint64_t)gt0 * 512 + 4, 0xfffffff0u);
    expect_bad(tpath("b-gtehuge.vmdk"), 0, "outside the file", "grain far past the end");

    /* overlapping grains, and a redundant directory that disagrees: check finds them */
    copy_file(tpath("good.vmdk"), tpath("b-overlap.vmdk"));
    uint32_t rgt0 = read_u32(tpath("good.vmdk"), h.rgd_offset * 512);
    patch_u32(tpath("b-overlap.vmdk"), (uint64_t)gt0 * 512 + 4,
              read_u32(tpath("good.vmdk"), (uint64_t)gt0 * 512));
    patch_u32(tpath("b-overlap.vmdk"), (uint64_t)rgt0 * 512 + 4,
              read_u32(tpath("good.vmdk"), (uint64_t)gt0 * 512));
    copy_file(tpath("good.vmdk"), tpath("b-rgd.vmdk"));
    patch_u32(tpath("b-rgd.vmdk"), h.rgd_offset * 512, 0);
    const char *cases[][2] = {{"b-overlap.vmdk", "overlaps"}, {"b-rgd.vmdk", "redundant"}};
    for (int i = 0; i < 2; i++) {
        struct p2v_err err = {0};
        struct diskfmt_check res;
        struct diskfmt *d = diskfmt_open(tpath(cases[i][0]), "vmdk", 0, &err);
        int r = d ? diskfmt_check(d, &res, &err) : -1;
        if (!ok(r == 0 && res.errors > 0 && strstr(res.first_error, cases[i][1]),
                "check finds: %s", cases[i][1]))
            diag("  %s / %s", err.msg, r == 0 ? res.first_error : "");
        diskfmt_close(d, NULL);
    }

    /* uncleanly shut down */
    copy_file(tpath("good.vmdk"), tpath("b-dirty.vmdk"));
    patch(tpath("b-dirty.vmdk"), 72, "\1", 1);
    expect_bad(tpath("b-dirty.vmdk"), 0, "not shut down cleanly", "unclean shutdown flag");
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(tpath("b-dirty.vmdk"), "vmdk", DISKFMT_ALLOW_DIRTY, &err);
    ok(d != NULL, "DISKFMT_ALLOW_DIRTY opens it anyway");
    diskfmt_close(d, NULL);

    /* descriptors */
    sh("qemu-img convert -f raw -O vmdk -o subformat=monolithicFlat '%s' '%s' >/dev/null 2>&1",
       tpath("q-src.raw"), tpath("fl.vmdk"));
    static const struct {
        const char *line, *sub, *name;
    } descs[] = {
        {"RW 10265 FLAT \"../fl-flat.vmdk\" 0", "'..'", "extent path with ../"},
        {"RW 10265 FLAT \"/etc/passwd\" 0", "absolute", "absolute extent path"},
        {"RW 10265 FLAT \"sub/fl-flat.vmdk\" 0", "plain", "extent path with a folder"},
        {"RW 10265 FLAT \"missing-flat.vmdk\" 0", "cannot open extent", "missing extent file"},
        {"RW 99999999999999999999 FLAT \"fl-flat.vmdk\" 0", "extent size", "size overflowing 64 bits"},
        {"RW 10265 FLAT \"fl-flat.vmdk\" 18446744073709551615", "offset", "offset near 2^64"},
        {"RW 20000 FLAT \"fl-flat.vmdk\" 0", "shorter", "flat file shorter than its extent"},
        {"RW 10265 VMFSSPARSE \"fl-flat.vmdk\"", "not supported", "unsupported extent type"},
        {"RW 10265 FLAT \"fl-flat.vmdk\"", "offset", "FLAT without offset"},
        {"RW 10265 FLAT fl-flat.vmdk 0", "quoted", "unquoted name"},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(descs); i++) {
        char text[1024];
        snprintf(text, sizeof text, "# Disk DescriptorFile\nversion=1\nCID=1\n"
                 "parentCID=ffffffff\ncreateType=\"monolithicFlat\"\n%s\n", descs[i].line);
        write_file(tpath("b-desc.vmdk"), text, strlen(text));
        expect_bad(tpath("b-desc.vmdk"), 0, descs[i].sub, descs[i].name);
    }
    {
        char text[1024];
        snprintf(text, sizeof text, "# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\n"
                 "RW 68719476736 ZERO\nRW 68719476736 ZERO\nRW 68719476736 ZERO\n");
        write_file(tpath("b-desc.vmdk"), text, strlen(text));
        expect_bad(tpath("b-desc.vmdk"), 0, "add up", "extents adding up past the cap");
        snprintf(text, sizeof text, "# Disk DescriptorFile\nversion=1\nparentCID=12345678\n"
                 "RW 8 ZERO\n");
        write_file(tpath("b-desc.vmdk"), text, strlen(text));
        expect_bad(tpath("b-desc.vmdk"), 0, "parent", "differencing disk");
    }

    /* streamOptimized cut before its footer, and a corrupt compressed grain */
    struct diskfmt_create_opts o = {.size = 4 * MIB, .subformat = "streamOptimized"};
    d = diskfmt_create(tpath("st.vmdk"), "vmdk", &o, &err);
    uint8_t buf[256 * KIB];
    fill_text(buf, sizeof buf);
    if (d) {
        diskfmt_pwrite(d, buf, sizeof buf, 0, &err);
        diskfmt_close(d, &err);
    }
    struct stat st;
    stat(tpath("st.vmdk"), &st);
    copy_file(tpath("st.vmdk"), tpath("b-stcut.vmdk"));
    ok(truncate(tpath("b-stcut.vmdk"), st.st_size - 1536) == 0, "stream image cut");
    expect_bad(tpath("b-stcut.vmdk"), 0, "truncated", "stream cut before its footer");
    copy_file(tpath("st.vmdk"), tpath("b-stcut2.vmdk"));
    ok(truncate(tpath("b-stcut2.vmdk"), 65536 + 5000) == 0, "stream image cut mid-grain");
    expect_bad(tpath("b-stcut2.vmdk"), 0, "truncated", "stream cut in its first grain");
    copy_file(tpath("st.vmdk"), tpath("b-stz.vmdk"));
    patch(tpath("b-stz.vmdk"), 65536 + 40, "garbage!garbage!", 16);
    expect_bad(tpath("b-stz.vmdk"), 0, "corrupt", "corrupt deflate data");
    copy_file(tpath("st.vmdk"), tpath("b-stsize.vmdk"));
    patch_u32(tpath("b-stsize.vmdk"), 65536 + 8, 0x7fffffff);
    expect_bad(tpath("b-stsize.vmdk"), 0, "claims", "compressed length too large");
    copy_file(tpath("st.vmdk"), tpath("b-stlba.vmdk"));
    patch_u64(tpath("b-stlba.vmdk"), 65536, 12345);
    expect_bad(tpath("b-stlba.vmdk"), 0, "grain marker", "grain marker for another grain");

    /* parsers on their own */
    struct vmdk_desc dd;
    const char *good = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                       "createType=\"twoGbMaxExtentSparse\"\nRW 4192256 SPARSE \"a-s001.vmdk\"\n"
                       "RW 100 SPARSE \"a-s002.vmdk\"\nddb.adapterType = \"buslogic\"\n";
    int pr = vmdk_desc_parse((const uint8_t *)good, strlen(good), "t", &dd, &err);
    ok(pr == 0 && dd.n_extents == 2 && dd.cid == 0xfffffffe &&
           strcmp(dd.adapter_type, "buslogic") == 0 && dd.extents[1].sectors == 100,
       "descriptor parser: a split set");
    if (pr == 0)
        vmdk_desc_release(&dd);
    ok(vmdk_desc_parse((const uint8_t *)"garbage\n", 8, "t", &dd, &err) < 0,
       "descriptor parser: garbage refused");
}

/* ------------------------------------------------------------------ killed writers */

static void killed_writer(const char *sub, const char *expect)
{
    char file[64];
    snprintf(file, sizeof file, "k-%s.vmdk", sub);
    struct diskfmt_create_opts o = {.size = 1ull << 30, .subformat = sub};
    ok(kill_writer(tpath(file), "vmdk", &o, 1ull << 30, true), "%s: writer killed mid-write",
       sub);
    char name[96];
    snprintf(name, sizeof name, "%s killed mid-write", sub);
    expect_bad(tpath(file), 0, expect, name);
}

int main(void)
{
    dftest_begin("test-vmdk");
    have_vmdkinfo = sh("vmdkinfo -V >/dev/null 2>&1") == 0;

    test_writer("monolithicSparse", NULL);
    test_writer("streamOptimized", NULL);
    test_writer("monolithicFlat", "lsilogic");
    test_adapter_types();
    test_gt_eviction();
    test_qemu_images();
    test_mixed_descriptor();
    test_bad_input();
    killed_writer("monolithicSparse", "not shut down cleanly");
    killed_writer("streamOptimized", "truncated");
    killed_writer("monolithicFlat", "descriptor without");

    return dftest_end();
}
