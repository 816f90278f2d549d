/* test-vhd.c: TAP unit test of the VHD and VHDX drivers (disk-formats/vhd*.c, vhdx.c)
 * against outside oracles. For each VHD subformat we write (fixed, dynamic; and dynamic
 * with 512 KiB blocks): create, write a mixed pattern (random data, zero runs, a block
 * never written, text, a tail that is not block-aligned, random-offset writes, zeroing),
 * close, then `qemu-img compare -f raw -F vpc`, `qemu-img info -f vpc` (the size),
 * `vhdiinfo`, and our own reader (probe, read back, block status, check). Images written
 * by `qemu-img convert` (vpc fixed with and without force_size, dynamic; vhdx dynamic and
 * fixed, one past the first 4 GiB chunk) must read back identical. Hostile input (bad
 * checksums, tables and blocks outside the file or overlapping, overflowing counts, bad
 * block sizes, truncated files, VHDX regions outside the file, a log to replay,
 * differencing disks) is refused with a clear error; a writer killed mid-write leaves a
 * file no reader takes for a disk. Skips (TAP `1..0 # SKIP`) only when qemu-img is
 * missing.
 */
#include <time.h>

/* fill_text's words (see dftest.h) */
#define DFTEST_WORDS \
    "disk", "footer", "block", "sector", "bitmap", "header", "region", "table", \
    "hyperv", "azure"
#include "dftest.h"
#include "vhd.h"

static bool have_vhdiinfo;

/* ------------------------------------------------------------------ helpers */

static int qemu_size(const char *path, const char *fmt, uint64_t *size)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "qemu-img info -f %s --output=json '%s' 2>/dev/null", fmt,
             path);
    FILE *p = popen(cmd, "r");
    char line[512];
    int found = -1;
    if (!p)
        return -1;
    while (fgets(line, sizeof line, p))
        if (found < 0 && sscanf(line, " \"virtual-size\": %lu", (unsigned long *)size) == 1)
            found = 0;
    pclose(p);
    return found;
}

static void check_own_read(const char *path, const char *fmt, const uint8_t *ref,
                           uint64_t n, const char *name)
{
    check_own_read_fmt(path, fmt, ref, n, name, false);
}

/* Open must fail, or reading everything must fail, with @sub in the message. */
static void expect_bad(const char *path, const char *fmt, const char *sub, const char *name)
{
    expect_bad_fmt(path, fmt, 0, sub, name, DFTEST_NAME_NOTED);
}

/* check() must count at least one error mentioning @sub. */
static void expect_check_error(const char *path, const char *fmt, const char *sub,
                               const char *name)
{
    struct p2v_err err = {0};
    struct diskfmt_check res;
    struct diskfmt *d = diskfmt_open(path, fmt, 0, &err);
    int r = d ? diskfmt_check(d, &res, &err) : -1;
    if (!ok(r == 0 && res.errors > 0 && strstr(res.first_error, sub), "check finds: %s",
            name))
        diag("  %s / %s", err.msg, r == 0 ? res.first_error : "");
    diskfmt_close(d, NULL);
}

/* ------------------------------------------------------------------ VHD patching */

/* Recompute the checksum of the VHD footer at @at. */
static void fix_footer(const char *path, uint64_t at)
{
    uint8_t b[512];
    if (get(path, at, b, sizeof b) == 0) {
        p2v_put_u32be(b + 64, vhd_checksum(b, sizeof b, 64));
        patch(path, at, b, sizeof b);
    }
}

static void fix_dyn(const char *path, uint64_t at)
{
    uint8_t b[1024];
    if (get(path, at, b, sizeof b) == 0) {
        p2v_put_u32be(b + 36, vhd_checksum(b, sizeof b, 36));
        patch(path, at, b, sizeof b);
    }
}

/* Patch both footers (end and, for dynamic, the copy at 0) and fix their checksums. */
static void patch_footer_be32(const char *path, unsigned field, uint32_t v, bool copy)
{
    uint64_t end = fsize(path) - 512;
    patch_be32(path, end + field, v);
    fix_footer(path, end);
    if (copy) {
        patch_be32(path, field, v);
        fix_footer(path, 0);
    }
}

/* ------------------------------------------------------------------ writers */

/* Read the whole image with libvhdi itself and compare with the file @raw. */
static int libvhdi_same(const char *path, const char *raw, uint64_t vsize, char *why,
                        size_t wl)
{
    struct p2v_err err = {0};
    struct vhd_vhdi *v = NULL;
    int fd = open(path, O_RDONLY), rfd = open(raw, O_RDONLY), r = -1;
    uint8_t *a = malloc(MIB), *b = malloc(MIB);
    if (fd < 0 || rfd < 0 || vhd_vhdi_open(fd, path, vsize, &v, &err) < 0) {
        snprintf(why, wl, "open: %s", err.msg);
        goto out;
    }
    for (uint64_t off = 0; off < vsize; off += MIB) {
        size_t n = (size_t)P2V_MIN((uint64_t)MIB, vsize - off);
        if (vhd_vhdi_read(v, a, n, off, path, &err) < 0 ||
            p2v_pread_full(rfd, b, n, off) != (ssize_t)n) {
            snprintf(why, wl, "read at %llu: %s", (unsigned long long)off, err.msg);
            goto out;
        }
        if (memcmp(a, b, n) != 0) {
            snprintf(why, wl, "data differ in the MiB at %llu", (unsigned long long)off);
            goto out;
        }
    }
    r = 0;
out:
    vhd_vhdi_close(v);
    if (fd >= 0)
        close(fd);
    if (rfd >= 0)
        close(rfd);
    free(a);
    free(b);
    return r;
}

static void check_oracles(const char *path, const char *raw, uint64_t vsize,
                          const char *name)
{
    char why[P2V_ERR_MSG_MAX + 64] = "";
    uint64_t qs = 0;
    is_int(sh("qemu-img compare -q -f raw -F vpc '%s' '%s' >/dev/null 2>&1", raw, path), 0,
           "%s: qemu-img compare: identical to the raw file", name);
    ok(qemu_size(path, "vpc", &qs) == 0 && qs == vsize,
       "%s: qemu-img info -f vpc: virtual size %llu", name, (unsigned long long)vsize);
    if (qs != vsize)
        diag("  qemu-img says %llu", (unsigned long long)qs);
    if (have_vhdiinfo)
        is_int(sh("vhdiinfo '%s' 2>/dev/null | grep -q 'Media size.*(%llu bytes)'", path,
                  (unsigned long long)vsize), 0, "%s: vhdiinfo opens it, right size", name);
    else
        ok(1, "%s: vhdiinfo opens it # SKIP vhdiinfo missing", name);
    if (!ok(libvhdi_same(path, raw, vsize, why, sizeof why) == 0,
            "%s: libvhdi reads back the raw file's bytes", name))
        diag("  %s", why);
}

static void test_writer(const char *sub, uint32_t block)
{
    char name[64], file[64], raw[64];
    snprintf(name, sizeof name, "%s%s", sub, block ? "/512K" : "");
    snprintf(file, sizeof file, "w-%s%s.vhd", sub, block ? "-512k" : "");
    snprintf(raw, sizeof raw, "w-%s.raw", sub);
    const uint64_t size = 12 * MIB + 3000; /* not block- or sector-aligned */
    struct diskfmt_create_opts o = {.size = size, .subformat = sub, .cluster_size = block};
    struct p2v_err err = {0};
    bool dynamic = strcmp(sub, "dynamic") == 0;
    struct diskfmt *d = diskfmt_create(tpath(file), "vhd", &o, &err);
    if (!ok(d != NULL, "%s: create", name)) {
        diag("  %s", err.msg);
        return;
    }
    uint64_t vsize = diskfmt_size(d);
    ok(vsize == 12 * MIB + 3072, "%s: size rounded up to whole sectors", name);
    ok(diskfmt_write_align(d) == 1 && !diskfmt_sequential_writes(d),
       "%s: writes anywhere, any alignment", name);
    ok(diskfmt_block_size(d) == (dynamic ? (block ? block : 2 * MIB) : 4096),
       "%s: block size %u", name, diskfmt_block_size(d));
    uint8_t *ref = calloc(1, vsize);
    const struct seg plan[] = {
        {0, 256 * KIB, 0},
        {256 * KIB, 256 * KIB, 1},          /* zeros written */
        {1 * MIB, 300 * KIB, 2},            /* ends inside a block */
        {1536 * KIB, 64 * KIB, 3},
        /* [2M, 4M): never written: a hole for both subformats */
        {4 * MIB, 100, 0},                  /* a tiny write opening a block */
        {5 * MIB, 3 * MIB, 1},              /* whole blocks of zeros: not allocated */
        {9 * MIB, 1 * MIB, 0},
        {12 * MIB - 64 * KIB, 64 * KIB + 3072, 0}, /* the tail, to the end */
    };
    bool wok = true;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(plan) && wok; i++)
        if (do_write(d, ref, plan[i].off, plan[i].len, plan[i].kind, &err) < 0)
            wok = false;
    /* random-offset writes of any length and alignment, above 4 MiB + 1 MiB */
    for (int i = 0; i < 80 && wok; i++) {
        uint64_t len = 1 + rnd() % (300 * KIB);
        uint64_t off = 9 * MIB + rnd() % (vsize - 9 * MIB - len);
        if (rnd() % 3 == 0)
            off = 4 * MIB + rnd() % MIB;
        if (do_write(d, ref, off, len, (int)(rnd() % 4), &err) < 0)
            wok = false;
    }
    /* zeroing across allocated data, unaligned */
    uint64_t zoff = 100 * KIB + 7, zlen = 700 * KIB;
    if (wok && diskfmt_zero(d, zoff, zlen, &err) < 0)
        wok = false;
    memset(ref + zoff, 0, zlen);
    if (wok && diskfmt_flush(d, &err) < 0)
        wok = false;
    if (wok && do_write(d, ref, 9 * MIB + 5, 70000, 0, &err) < 0)
        wok = false;
    uint8_t *back = malloc(vsize);
    if (wok && diskfmt_pread(d, back, vsize, 0, &err) == 0)
        ok(memcmp(back, ref, vsize) == 0, "%s: reads its own writes before close", name);
    else
        ok(0, "%s: reads its own writes before close", name);
    free(back);
    struct diskfmt_check res;
    ok(diskfmt_check(d, &res, &err) == 0 && res.errors == 0, "%s: check while writing",
       name);
    if (!ok(wok, "%s: writes", name))
        diag("  %s", err.msg);
    if (!ok(diskfmt_close(d, &err) == 0, "%s: close", name))
        diag("  %s", err.msg);
    write_file(tpath(raw), ref, vsize);
    check_oracles(tpath(file), tpath(raw), vsize, name);
    check_own_read(tpath(file), "vhd", ref, vsize, name);
    /* the block never written is a hole; whole zero blocks were not allocated */
    d = diskfmt_open(tpath(file), "vhd", DISKFMT_RDONLY, &err);
    uint64_t run = 0;
    unsigned f = 0;
    if (d && diskfmt_block_status(d, 2 * MIB, 2 * MIB, &run, &f, &err) == 0)
        ok((f & DISKFMT_STATUS_HOLE) && (f & DISKFMT_STATUS_ZERO) && run == 2 * MIB,
           "%s: the block never written is a hole", name);
    else
        ok(0, "%s: reopen: %s", name, err.msg);
    if (d && dynamic) {
        f = 0;
        ok(diskfmt_block_status(d, 6 * MIB, 2 * MIB, &run, &f, &err) == 0 &&
               (f & DISKFMT_STATUS_HOLE) && run == 2 * MIB,
           "%s: zeros written over whole blocks allocated nothing", name);
    }
    struct p2v_buf jb = P2V_BUF_INIT;
    struct p2v_json j;
    p2v_json_init(&j, &jb, false);
    p2v_json_object_begin(&j);
    if (d)
        diskfmt_info(d, &j, &err);
    p2v_json_object_end(&j);
    const char *js = p2v_buf_cstr(&jb);
    char want[64];
    snprintf(want, sizeof want, "\"subformat\":\"%s\"", sub);
    ok(js && strstr(js, "\"creator-app\":\"p2vk\"") && strstr(js, want),
       "%s: info: creator p2vk, subformat", name);
    if (dynamic)
        ok(js && strstr(js, block ? "\"block-size\":524288" : "\"block-size\":2097152"),
           "%s: info: block size", name);
    p2v_buf_release(&jb);
    diskfmt_close(d, NULL);
    /* the footer: creator, time, geometry, the copy at 0 for dynamic */
    uint8_t foot[512], head[512];
    uint64_t fs = fsize(tpath(file));
    get(tpath(file), fs - 512, foot, 512);
    get(tpath(file), 0, head, 512);
    uint32_t ts = p2v_get_u32be(foot + 24);
    time_t now = time(NULL) - 946684800;
    ok(memcmp(foot + 28, "p2vk", 4) == 0 && ts <= (uint32_t)now && ts + 600 >= (uint32_t)now,
       "%s: footer: creator p2vk, time stamp since 2000", name);
    ok(p2v_get_u16be(foot + 56) == 65535 && foot[58] == 16 && foot[59] == 255,
       "%s: footer: a size CHS cannot express gets the largest geometry", name);
    if (dynamic)
        ok(memcmp(head, foot, 512) == 0, "%s: the footer copy at 0 equals the footer", name);
    else
        ok(fs == vsize + 512, "%s: data then footer: %llu bytes", name,
           (unsigned long long)fs);
    free(ref);
}

/* A size the VHDSPEC geometry covers exactly keeps that geometry; ids are unique. */
static void test_geometry(void)
{
    uint16_t c;
    uint8_t h, s;
    vhd_geometry(20480, &c, &h, &s);
    ok(c == 301 && h == 4 && s == 17, "CHS of 10 MiB: 301/4/17 (VHDSPEC algorithm)");
    vhd_geometry(UINT64_C(300) << 21, &c, &h, &s);
    ok(c == 65535 && h == 16 && s == 255, "CHS of 300 GiB: capped at 65535/16/255");
    vhd_geometry(UINT64_C(40) << 21, &c, &h, &s);
    ok(h == 16 && s == 255 && (uint64_t)c * h * s <= (UINT64_C(40) << 21),
       "CHS of 40 GiB: 16 heads, 255 sectors, within the disk (%u/%u/%u)", c, h, s);

    struct p2v_err err = {0};
    const uint64_t exact = 302ull * 4 * 17 * 512; /* qemu's rounding of 10 MiB */
    struct diskfmt_create_opts o = {.size = exact, .subformat = "fixed"};
    struct diskfmt *d = diskfmt_create(tpath("g1.vhd"), "vhd", &o, &err);
    ok(d && diskfmt_close(d, &err) == 0, "fixed VHD of a CHS-exact size");
    uint8_t foot[512], foot2[512];
    get(tpath("g1.vhd"), exact, foot, 512);
    ok(p2v_get_u16be(foot + 56) == 302 && foot[58] == 4 && foot[59] == 17,
       "CHS-exact size: the VHDSPEC geometry is kept (302/4/17)");
    uint64_t qs = 0;
    ok(qemu_size(tpath("g1.vhd"), "vpc", &qs) == 0 && qs == exact,
       "qemu-img agrees on the size");
    o.subformat = "dynamic";
    d = diskfmt_create(tpath("g2.vhd"), "vhd", &o, &err);
    ok(d && diskfmt_close(d, &err) == 0, "empty dynamic VHD");
    get(tpath("g2.vhd"), 0, foot2, 512);
    ok(memcmp(foot + 68, foot2 + 68, 16) != 0, "unique ids differ");
    ok(fsize(tpath("g2.vhd")) == 512 + 1024 + 512 + 512, "empty dynamic: metadata only (%llu)",
       (unsigned long long)fsize(tpath("g2.vhd")));
    /* a large dynamic disk: creation costs nothing, the BAT is written at close */
    o.size = 2040ull << 30;
    d = diskfmt_create(tpath("g3.vhd"), "vhd", &o, &err);
    ok(d && diskfmt_close(d, &err) == 0, "2040 GiB dynamic VHD");
    ok(qemu_size(tpath("g3.vhd"), "vpc", &qs) == 0 && qs == (2040ull << 30),
       "2040 GiB: qemu-img agrees");
    unlink(tpath("g3.vhd"));

    /* refused options */
    static const struct {
        uint64_t size;
        const char *sub;
        uint32_t cluster;
        enum diskfmt_compress c;
        const char *want;
    } bad[] = {
        {0, "fixed", 0, DISKFMT_COMPRESS_NONE, "size"},
        {(2040ull << 30) + 512, "fixed", 0, DISKFMT_COMPRESS_NONE, "2040 GiB"},
        {MIB, "differencing", 0, DISKFMT_COMPRESS_NONE, "subformat"},
        {MIB, "fixed", 0, DISKFMT_COMPRESS_ZLIB, "compressed"},
        {MIB, "fixed", 2 * MIB, DISKFMT_COMPRESS_NONE, "no block size"},
        {MIB, "dynamic", 3 * MIB, DISKFMT_COMPRESS_NONE, "power of two"},
        {MIB, "dynamic", 4096, DISKFMT_COMPRESS_NONE, "power of two"},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(bad); i++) {
        struct diskfmt_create_opts b = {.size = bad[i].size, .subformat = bad[i].sub,
                                        .cluster_size = bad[i].cluster,
                                        .compress = bad[i].c};
        d = diskfmt_create(tpath("g4.vhd"), "vhd", &b, &err);
        if (!ok(!d && strstr(err.msg, bad[i].want), "create refused: %s", bad[i].want))
            diag("  %s", d ? "created" : err.msg);
        diskfmt_abandon(d);
    }
}

/* ------------------------------------------------------------------ killed writers */

static void killed_writer(const char *sub)
{
    char file[64];
    snprintf(file, sizeof file, "k-%s.vhd", sub);
    struct diskfmt_create_opts o = {.size = 256ull << 20, .subformat = sub};
    ok(kill_writer(tpath(file), "vhd", &o, 256ull << 20, true), "%s: writer killed mid-write",
       sub);
    char name[96];
    snprintf(name, sizeof name, "%s killed mid-write", sub);
    bool dynamic = strcmp(sub, "dynamic") == 0;
    const char *probed = NULL;
    struct p2v_err err = {0};
    diskfmt_probe(tpath(file), &probed, &err);
    if (dynamic)
        ok(probed && strcmp(probed, "vhd") == 0, "%s: probed as vhd (the footer copy)", name);
    else
        ok(probed && strcmp(probed, "raw") == 0, "%s: no footer: not probed as vhd (%s)",
           name, probed ? probed : "-");
    expect_bad(tpath(file), "vhd", dynamic ? "did not finish" : "no VHD footer", name);
    ok(sh("qemu-img info -f vpc '%s' >/dev/null 2>&1", tpath(file)) != 0,
       "%s: qemu-img refuses it too", name);
    if (have_vhdiinfo)
        ok(sh("vhdiinfo '%s' >/dev/null 2>&1", tpath(file)) != 0, "%s: vhdiinfo refuses it",
           name);
    unlink(tpath(file));
}

static void abandoned_writer(void)
{
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = 4 * MIB, .subformat = "fixed"};
    struct diskfmt *d = diskfmt_create(tpath("ab.vhd"), "vhd", &o, &err);
    uint8_t buf[4096];
    fill_random(buf, sizeof buf);
    if (d)
        diskfmt_pwrite(d, buf, sizeof buf, 0, &err);
    diskfmt_abandon(d);
    ok(fsize(tpath("ab.vhd")) == 4 * MIB, "abandoned fixed writer: no footer written");
    expect_bad(tpath("ab.vhd"), "vhd", "no VHD footer", "abandoned fixed VHD");
}

/* ------------------------------------------------------------------ foreign images */

static void test_qemu_images(void)
{
    const uint64_t n = 10 * MIB + 12800;
    uint8_t *src = calloc(1, n);
    fill_random(src, 70000);
    fill_text(src + 3 * MIB, 5000);
    fill_random(src + 4 * MIB + 100, 2 * MIB + 5000);
    fill_text(src + 10 * MIB, 12800);
    write_file(tpath("q-src.raw"), src, n);
    static const struct {
        const char *fmt, *opts, *ours;
    } imgs[] = {
        {"vpc", "subformat=fixed", "vhd"},
        {"vpc", "subformat=fixed,force_size=on", "vhd"},
        {"vpc", "subformat=dynamic", "vhd"},
        {"vpc", "subformat=dynamic,force_size=on", "vhd"},
        {"vhdx", "subformat=dynamic", "vhdx"},
        {"vhdx", "subformat=fixed", "vhdx"},
        {"vhdx", "subformat=dynamic,block_size=1M", "vhdx"},
        {"vhdx", "subformat=dynamic,block_state_zero=off", "vhdx"},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(imgs); i++) {
        char file[64], name[96];
        snprintf(file, sizeof file, "q-%zu.%s", i, imgs[i].ours);
        snprintf(name, sizeof name, "qemu-img %s %s", imgs[i].fmt, imgs[i].opts);
        int r = sh("qemu-img convert -f raw -O %s -o %s '%s' '%s' >/dev/null 2>&1",
                   imgs[i].fmt, imgs[i].opts, tpath("q-src.raw"), tpath(file));
        if (!ok(r == 0, "%s: qemu-img made it", name))
            continue;
        check_own_read(tpath(file), imgs[i].ours, src, n, name);
        if (strcmp(imgs[i].ours, "vhd") == 0) {
            /* our dynamic reader and libvhdi agree (qemu's bitmaps are all ones) */
            char why[P2V_ERR_MSG_MAX + 64] = "", raw[64];
            snprintf(raw, sizeof raw, "q-%zu.raw", i);
            sh("qemu-img convert -f vpc -O raw '%s' '%s'", tpath(file), tpath(raw));
            uint64_t qsz = fsize(tpath(raw));
            if (!ok(libvhdi_same(tpath(file), tpath(raw), qsz, why, sizeof why) == 0,
                    "%s: libvhdi reads what qemu reads", name))
                diag("  %s", why);
            unlink(tpath(raw));
        }
        uint64_t qs = 0, ours = 0;
        struct p2v_err err = {0};
        struct diskfmt *d = diskfmt_open(tpath(file), NULL, 0, &err);
        if (d)
            ours = diskfmt_size(d);
        diskfmt_close(d, NULL);
        qemu_size(tpath(file), imgs[i].fmt, &qs);
        /* qemu sizes a VHD of creator "qemu" by its geometry, which qemu-img rounds the
         * disk up to: the current size then agrees */
        ok(ours == qs, "%s: same virtual size as qemu (%llu)", name,
           (unsigned long long)ours);
    }
    free(src);

    /* a fixed VHDX past its first chunk (4 GiB with 1 MiB blocks): libvhdi would read
     * the wrong blocks there */
    const uint64_t big = (4ull << 30) + 8 * MIB;
    uint8_t chunk[64 * KIB];
    fill_random(chunk, sizeof chunk);
    int fd = open(tpath("q-big.raw"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    bool made = fd >= 0 && ftruncate(fd, (off_t)big) == 0 &&
                p2v_pwrite_full(fd, chunk, sizeof chunk, 10 * MIB) >= 0 &&
                p2v_pwrite_full(fd, chunk, sizeof chunk, (4ull << 30) + 3 * MIB) >= 0;
    if (fd >= 0)
        close(fd);
    for (int fixed = 0; fixed < 2 && made; fixed++) {
        const char *sub = fixed ? "fixed" : "dynamic";
        int r = sh("qemu-img convert -f raw -O vhdx -o subformat=%s,block_size=1M '%s' "
                   "'%s' >/dev/null 2>&1", sub, tpath("q-big.raw"), tpath("q-big.vhdx"));
        struct p2v_err err = {0};
        struct diskfmt *d = r == 0 ? diskfmt_open(tpath("q-big.vhdx"), NULL, 0, &err) : NULL;
        uint8_t back[sizeof chunk];
        ok(d && diskfmt_pread(d, back, sizeof back, (4ull << 30) + 3 * MIB, &err) == 0 &&
               memcmp(back, chunk, sizeof chunk) == 0 &&
               diskfmt_pread(d, back, sizeof back, 10 * MIB, &err) == 0 &&
               memcmp(back, chunk, sizeof chunk) == 0,
           "%s VHDX of 4 GiB + 8 MiB, 1 MiB blocks: data past the first chunk", sub);
        diskfmt_close(d, NULL);
        unlink(tpath("q-big.vhdx"));
    }
    unlink(tpath("q-big.raw"));

    /* a fixed VHD whose disk starts with a VHDX image: a VHD, read as its raw bytes */
    sh("qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on '%s' '%s' "
       ">/dev/null 2>&1", tpath("q-4.vhdx"), tpath("nest.vhd"));
    const char *probed = NULL;
    struct p2v_err err = {0};
    ok(diskfmt_probe(tpath("nest.vhd"), &probed, &err) == 0 && probed &&
           strcmp(probed, "vhd") == 0,
       "a fixed VHD holding a VHDX: probed as vhd");
    struct diskfmt *d = diskfmt_open(tpath("nest.vhd"), NULL, 0, &err);
    uint64_t inner = fsize(tpath("q-4.vhdx"));
    uint8_t *a = malloc(inner), *b = malloc(inner);
    ok(d && a && b && diskfmt_size(d) == inner &&
           diskfmt_pread(d, a, inner, 0, &err) == 0 && get(tpath("q-4.vhdx"), 0, b, inner) == 0 &&
           memcmp(a, b, inner) == 0,
       "a fixed VHD holding a VHDX: reads back the VHDX's bytes");
    free(a);
    free(b);
    diskfmt_close(d, NULL);
}

/* ------------------------------------------------------------------ hostile VHD */

static void make_dynamic(const char *file, uint64_t size)
{
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = size, .subformat = "dynamic"};
    struct diskfmt *d = diskfmt_create(tpath(file), "vhd", &o, &err);
    uint8_t *buf = malloc(3 * MIB);
    fill_random(buf, 3 * MIB);
    if (d) {
        diskfmt_pwrite(d, buf, 3 * MIB, 0, &err);       /* blocks 0 and 1 */
        diskfmt_pwrite(d, buf, 4096, 6 * MIB, &err);     /* block 3 */
        diskfmt_close(d, &err);
    }
    free(buf);
}

static void test_bad_vhd(void)
{
    make_dynamic("good.vhd", 8 * MIB);
    char g[512]; /* tpath() recycles its buffers */
    snprintf(g, sizeof g, "%s", tpath("good.vhd"));
    uint64_t end = fsize(g) - 512;
    uint8_t hdr[1024];
    ok(get(g, 512, hdr, sizeof hdr) == 0 && memcmp(hdr, "cxsparse", 8) == 0,
       "good dynamic image: header at 512");
    uint64_t table = p2v_get_u64be(hdr + 16);
    uint32_t bat0 = 0, bat1 = 0;
    uint8_t e[4];
    get(g, table, e, 4);
    bat0 = p2v_get_u32be(e);
    get(g, table + 4, e, 4);
    bat1 = p2v_get_u32be(e);
    ok(bat0 != VHD_BAT_UNUSED && bat1 != VHD_BAT_UNUSED, "good image: blocks 0 and 1 in the BAT");
    struct diskfmt *d = diskfmt_open(g, NULL, 0, NULL);
    ok(d != NULL, "good image opens");
    diskfmt_close(d, NULL);

#define CASE(file) (copy_file(g, tpath(file)), tpath(file))
    /* footer */
    const char *p = CASE("b-sum.vhd");
    patch(p, end + 100, "x", 1);
    expect_bad(p, "vhd", "checksum", "footer checksum wrong");
    p = CASE("b-cookie.vhd");
    patch(p, end, "conectiz", 8);
    patch(p, 0, "conectiz", 8);
    expect_bad(p, "vhd", "no VHD footer", "no cookie anywhere");
    p = CASE("b-diff.vhd");
    patch_footer_be32(p, 60, VHD_TYPE_DIFF, true);
    expect_bad(p, "vhd", "differencing VHD needs its parent", "differencing disk");
    p = CASE("b-type.vhd");
    patch_footer_be32(p, 60, 7, true);
    expect_bad(p, "vhd", "unknown VHD disk type", "unknown disk type");
    p = CASE("b-size0.vhd");
    patch_be64(p, end + 48, 0);
    fix_footer(p, end);
    expect_bad(p, "vhd", "disk size", "disk size 0");
    p = CASE("b-size1.vhd");
    patch_be64(p, end + 48, 8 * MIB + 1);
    fix_footer(p, end);
    expect_bad(p, "vhd", "512-byte sectors", "disk size not whole sectors");
    p = CASE("b-sizebig.vhd");
    patch_be64(p, end + 48, 8 * MIB + 512);
    fix_footer(p, end);
    expect_bad(p, "vhd", "covers less", "disk larger than its BAT");
    p = CASE("b-size2t.vhd");
    patch_be64(p, end + 48, 4ull << 40);
    fix_footer(p, end);
    expect_bad(p, "vhd", "larger than the VHD maximum", "disk of 4 TiB");
    p = CASE("b-hdroff.vhd");
    patch_be64(p, end + 16, UINT64_MAX - 100);
    fix_footer(p, end);
    expect_bad(p, "vhd", "outside the file", "header offset near 2^64");
    p = CASE("b-ver.vhd");
    patch_footer_be32(p, 12, 0x00020000, false);
    expect_bad(p, "vhd", "version", "footer version 2.0");

    /* dynamic header */
    p = CASE("b-dsum.vhd");
    patch(p, 512 + 700, "x", 1);
    expect_bad(p, "vhd", "checksum", "dynamic header checksum wrong");
    p = CASE("b-dcookie.vhd");
    patch(p, 512, "cxsparsf", 8);
    fix_dyn(p, 512);
    expect_bad(p, "vhd", "cxsparse", "dynamic header cookie");
    static const struct {
        uint32_t v;
        const char *name;
    } blocks[] = {{0, "block size 0"}, {0x80000000u, "block size 2 GiB"},
                  {3 * MIB, "block size 3 MiB"}, {4096, "block size 4 KiB"}};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(blocks); i++) {
        p = CASE("b-bs.vhd");
        patch_be32(p, 512 + 32, blocks[i].v);
        fix_dyn(p, 512);
        expect_bad(p, "vhd", "block size", blocks[i].name);
    }
    p = CASE("b-bsbig.vhd");
    patch_be32(p, 512 + 32, 256 * MIB); /* valid, and then the BAT covers 1 GiB */
    fix_dyn(p, 512);
    expect_bad(p, "vhd", "outside the file", "256 MiB blocks: BAT entries past the end");
    p = CASE("b-maxent.vhd");
    patch_be32(p, 512 + 28, 0xffffffffu);
    fix_dyn(p, 512);
    expect_bad(p, "vhd", "outside the file", "max entries 2^32-1: BAT past the end");
    p = CASE("b-maxent0.vhd");
    patch_be32(p, 512 + 28, 0);
    fix_dyn(p, 512);
    expect_bad(p, "vhd", "empty block allocation table", "max entries 0");
    p = CASE("b-maxent1.vhd");
    patch_be32(p, 512 + 28, 1);
    fix_dyn(p, 512);
    expect_bad(p, "vhd", "covers less", "max entries too few for the size");
    p = CASE("b-table.vhd");
    patch_be64(p, 512 + 16, 1ull << 40);
    fix_dyn(p, 512);
    expect_bad(p, "vhd", "outside the file", "BAT offset past the end");
    p = CASE("b-table2.vhd");
    patch_be64(p, 512 + 16, UINT64_MAX - 3);
    fix_dyn(p, 512);
    expect_bad(p, "vhd", "outside the file", "BAT offset near 2^64");
    p = CASE("b-table3.vhd");
    patch_be64(p, 512 + 16, 0);
    fix_dyn(p, 512);
    expect_bad(p, "vhd", "overlaps", "BAT over the footer copy");

    /* BAT entries */
    p = CASE("b-bat.vhd");
    patch_be32(p, table, 0x7fffffff);
    expect_bad(p, "vhd", "points outside", "BAT entry past the end");
    p = CASE("b-batend.vhd");
    patch_be32(p, table + 12, (uint32_t)(end / 512)); /* block 3 over the footer */
    expect_bad(p, "vhd", "points outside", "BAT entry over the footer");
    p = CASE("b-batdup.vhd");
    patch_be32(p, table + 4, bat0);
    expect_bad(p, "vhd", "overlaps", "two BAT entries on one block");
    p = CASE("b-batmeta.vhd");
    patch_be32(p, table, 1); /* sector 1: the dynamic header */
    expect_bad(p, "vhd", "overlaps", "BAT entry on the header");
    p = CASE("b-bathalf.vhd");
    patch_be32(p, table + 4, bat0 + 1024);
    expect_bad(p, "vhd", "overlaps", "BAT entry half over another block");

    /* truncated files */
    p = CASE("b-cut.vhd");
    ok(truncate(p, (off_t)(end - 100 * KIB)) == 0, "dynamic image cut");
    expect_bad(p, "vhd", "truncated", "dynamic image cut short");
    p = CASE("b-cut2.vhd");
    ok(truncate(p, 3000) == 0, "dynamic image cut in its BAT");
    expect_bad(p, "vhd", "truncated", "dynamic image cut in its BAT");
    write_file(tpath("b-tiny.vhd"), "conectix", 8);
    expect_bad(tpath("b-tiny.vhd"), "vhd", "too small", "8-byte file");
    {
        struct p2v_err err = {0};
        struct diskfmt_create_opts o = {.size = 4 * MIB, .subformat = "fixed"};
        d = diskfmt_create(tpath("fx.vhd"), "vhd", &o, &err);
        diskfmt_close(d, &err);
        uint8_t foot[512];
        get(tpath("fx.vhd"), 4 * MIB, foot, 512);
        ok(truncate(tpath("fx.vhd"), 2 * MIB) == 0 &&
               patch(tpath("fx.vhd"), 2 * MIB, foot, 512) == 0,
           "fixed image cut, footer kept");
        expect_bad(tpath("fx.vhd"), "vhd", "truncated", "fixed image shorter than its size");
    }

    /* VHDSPEC "Block Bitmap": sectors whose bit is clear read as zeros */
    p = CASE("b-bitmap.vhd");
    {
        uint8_t bits[2] = {0x7f, 0x00}; /* sector 0 absent, 1..7 present, 8..15 absent */
        patch(p, (uint64_t)bat0 * 512, bits, 2);
        struct p2v_err err = {0};
        struct diskfmt *dg = diskfmt_open(g, "vhd", 0, &err);
        struct diskfmt *db = diskfmt_open(p, "vhd", 0, &err);
        uint8_t want[20 * 512], got[20 * 512];
        bool same = dg && db && diskfmt_pread(dg, want, sizeof want, 0, &err) == 0 &&
                    diskfmt_pread(db, got, sizeof got, 0, &err) == 0;
        memset(want, 0, 512);
        memset(want + 8 * 512, 0, 8 * 512);
        ok(same && memcmp(want, got, sizeof want) == 0,
           "sectors with a clear bitmap bit read as zeros, the others as data");
        /* and across a block boundary, unaligned */
        uint8_t w2[5000], g2[5000];
        ok(dg && db && diskfmt_pread(dg, w2, sizeof w2, 2 * MIB - 3000, &err) == 0 &&
               diskfmt_pread(db, g2, sizeof g2, 2 * MIB - 3000, &err) == 0 &&
               memcmp(w2, g2, sizeof w2) == 0,
           "an unaligned read across blocks");
        diskfmt_close(dg, NULL);
        diskfmt_close(db, NULL);
    }

    /* check counts what open lets pass */
    p = CASE("c-copy.vhd");
    patch(p, 100, "x", 1);
    expect_check_error(p, "vhd", "copy of the footer", "a corrupt footer copy");
    p = CASE("c-copy2.vhd");
    patch_be32(p, 24, 12345);
    fix_footer(p, 0);
    expect_check_error(p, "vhd", "differs", "a footer copy that differs");
    /* check reads the file again and counts every problem, not only the first */
    p = CASE("c-many.vhd");
    {
        struct p2v_err err = {0};
        struct diskfmt_check res;
        struct diskfmt *dc = diskfmt_open(p, "vhd", 0, &err);
        patch_be32(p, table + 4, 0x7fffffff);  /* block 1 outside */
        patch_be32(p, table + 12, bat0);       /* block 3 on block 0 */
        patch(p, 100, "x", 1);                 /* the footer copy */
        memset(&res, 0, sizeof res);
        if (!ok(dc && diskfmt_check(dc, &res, &err) == 0 && res.errors == 3,
                "check counts 3 errors in an image damaged after opening (%llu)",
                (unsigned long long)res.errors))
            diag("  %s / %s", err.msg, res.first_error);
        diskfmt_close(dc, NULL);
    }
#undef CASE

    /* parsers on their own */
    struct vhd_footer f;
    uint8_t buf[512];
    memset(&f, 0, sizeof f);
    f.version = VHD_VERSION_1_0;
    f.disk_type = VHD_TYPE_FIXED;
    f.current_size = MIB;
    vhd_footer_encode(&f, buf);
    struct vhd_footer back;
    ok(vhd_footer_parse(buf, sizeof buf, "t", 0, &back, NULL) == 0 &&
           back.current_size == MIB && vhd_footer_valid(buf, sizeof buf),
       "footer encode/parse round trip");
    ok(vhd_footer_parse(buf, 100, "t", 0, &back, NULL) < 0, "short footer refused");
    ok(vhd_bitmap_size(2 * MIB) == 512 && vhd_bitmap_size(512 * KIB) == 512 &&
           vhd_bitmap_size(8 * MIB) == 2048,
       "sector bitmap sizes");
}

/* ------------------------------------------------------------------ hostile VHDX */

/* Patch @n bytes at @rel of the region table entry of @guid in both tables, fixing both
 * checksums. */
static void patch_region(const char *path, const uint8_t guid[16], size_t rel,
                         const void *v, size_t n)
{
    uint8_t *t = malloc(VHDX_REGION_TABLE_SIZE);
    for (int k = 0; k < 2; k++) {
        uint64_t at = k ? VHDX_REGION2_OFFSET : VHDX_REGION1_OFFSET;
        if (get(path, at, t, VHDX_REGION_TABLE_SIZE) < 0)
            break;
        uint32_t cnt = p2v_get_u32le(t + 8);
        for (uint32_t i = 0; i < cnt && i < VHDX_ENTRIES_MAX; i++)
            if (memcmp(t + 16 + 32 * i, guid, 16) == 0)
                memcpy(t + 16 + 32 * i + rel, v, n);
        p2v_put_u32le(t + 4, vhdx_checksum(t, VHDX_REGION_TABLE_SIZE, 4));
        patch(path, at, t, VHDX_REGION_TABLE_SIZE);
    }
    free(t);
}

static uint64_t region_offset(const char *path, enum vhdx_guid_id id)
{
    uint8_t *t = malloc(VHDX_REGION_TABLE_SIZE);
    struct vhdx_region_table *rt = malloc(sizeof *rt);
    uint64_t off = 0;
    if (get(path, VHDX_REGION1_OFFSET, t, VHDX_REGION_TABLE_SIZE) == 0 &&
        vhdx_region_table_parse(t, VHDX_REGION_TABLE_SIZE, path, 0, rt, NULL) == 0)
        off = rt->e[id == VHDX_GUID_BAT ? rt->bat : rt->metadata].offset;
    free(t);
    free(rt);
    return off;
}

/* The file offset of metadata item @id. */
static uint64_t item_offset(const char *path, enum vhdx_guid_id id)
{
    uint64_t base = region_offset(path, VHDX_GUID_METADATA);
    uint8_t *t = malloc(VHDX_METADATA_TABLE_SIZE);
    struct vhdx_meta_table mt;
    uint64_t off = 0;
    if (get(path, base, t, VHDX_METADATA_TABLE_SIZE) == 0 &&
        vhdx_meta_table_parse(t, VHDX_METADATA_TABLE_SIZE, MIB, path, base, &mt, NULL) == 0 &&
        mt.item[id].present)
        off = base + mt.item[id].offset;
    free(t);
    return off;
}

/* Rewrite the header at @at through @fn, fixing its checksum. */
static void patch_header(const char *path, uint64_t at, size_t rel, const void *v, size_t n)
{
    uint8_t h[VHDX_HEADER_SIZE];
    if (get(path, at, h, sizeof h) < 0)
        return;
    memcpy(h + rel, v, n);
    p2v_put_u32le(h + 4, vhdx_checksum(h, sizeof h, 4));
    patch(path, at, h, sizeof h);
}

static void test_bad_vhdx(void)
{
    /* 12 MiB, 1 MiB blocks, data in blocks 0, 1 and 5 */
    uint8_t *src = calloc(1, 12 * MIB);
    fill_random(src, 2 * MIB);
    fill_text(src + 5 * MIB, 4096);
    write_file(tpath("x-src.raw"), src, 12 * MIB);
    sh("qemu-img convert -f raw -O vhdx -o subformat=dynamic,block_size=1M '%s' '%s' "
       ">/dev/null 2>&1", tpath("x-src.raw"), tpath("good.vhdx"));
    char g[512];
    snprintf(g, sizeof g, "%s", tpath("good.vhdx"));
    uint64_t bat = region_offset(g, VHDX_GUID_BAT);
    uint64_t fp = item_offset(g, VHDX_GUID_FILE_PARAMETERS);
    uint64_t vs = item_offset(g, VHDX_GUID_VIRTUAL_DISK_SIZE);
    uint8_t e0[8], e1[8];
    get(g, bat, e0, 8);
    get(g, bat + 8, e1, 8);
    ok(bat && fp && vs && VHDX_BAT_STATE(p2v_get_u64le(e0)) == 6 &&
           VHDX_BAT_STATE(p2v_get_u64le(e1)) == 6,
       "good VHDX: BAT, metadata, blocks 0 and 1 found");
    check_own_read(g, "vhdx", src, 12 * MIB, "good VHDX");
    free(src);

#define CASE(file) (copy_file(g, tpath(file)), tpath(file))
    const char *p = CASE("x-sig.vhdx");
    patch(p, 0, "vhdxfilf", 8);
    expect_bad(p, "vhdx", "vhdxfile", "no file identifier");
    p = CASE("x-hdr.vhdx");
    patch(p, VHDX_HEADER1_OFFSET + 100, "x", 1);
    patch(p, VHDX_HEADER2_OFFSET + 100, "x", 1);
    expect_bad(p, "vhdx", "header at offset 65536 is corrupt", "both headers corrupt");
    p = CASE("x-hdr1.vhdx");
    patch(p, VHDX_HEADER1_OFFSET, "xxxx", 4);
    {
        /* one damaged header is what a crash during an update leaves: the other serves */
        struct p2v_err err = {0};
        struct diskfmt *d = diskfmt_open(p, "vhdx", 0, &err);
        uint64_t run;
        unsigned f;
        ok(d != NULL && diskfmt_block_status(d, 0, MIB, &run, &f, &err) == 0,
           "one damaged header: the other one is current");
        diskfmt_close(d, NULL);
    }
    p = CASE("x-ver.vhdx");
    uint16_t two = 2;
    uint8_t v2[2];
    p2v_put_u16le(v2, two);
    patch_header(p, VHDX_HEADER1_OFFSET, 66, v2, 2);
    patch_header(p, VHDX_HEADER2_OFFSET, 66, v2, 2);
    expect_bad(p, "vhdx", "version 2", "header version 2");
    {
        /* a header of an unknown version counts when it is current, not otherwise */
        uint8_t h1[VHDX_HEADER_SIZE], h2[VHDX_HEADER_SIZE];
        get(g, VHDX_HEADER1_OFFSET, h1, sizeof h1);
        get(g, VHDX_HEADER2_OFFSET, h2, sizeof h2);
        bool second = p2v_get_u64le(h2 + 8) > p2v_get_u64le(h1 + 8);
        p = CASE("x-ver2.vhdx");
        patch_header(p, second ? VHDX_HEADER2_OFFSET : VHDX_HEADER1_OFFSET, 66, v2, 2);
        expect_bad(p, "vhdx", "version 2", "the current header of version 2");
        p = CASE("x-ver3.vhdx");
        patch_header(p, second ? VHDX_HEADER1_OFFSET : VHDX_HEADER2_OFFSET, 66, v2, 2);
        struct diskfmt *dv = diskfmt_open(p, "vhdx", 0, NULL);
        ok(dv != NULL, "the older header of version 2: the current one serves");
        diskfmt_close(dv, NULL);
    }
    p = CASE("x-rsum.vhdx");
    patch(p, VHDX_REGION1_OFFSET + 40000, "x", 1);
    expect_bad(p, "vhdx", "region table at offset 196608 is corrupt", "region table CRC");
    uint8_t b8[8];
    p2v_put_u64le(b8, 1ull << 40);
    p = CASE("x-rout.vhdx");
    patch_region(p, vhdx_guids[VHDX_GUID_BAT], 16, b8, 8);
    expect_bad(p, "vhdx", "BAT region at offset 1099511627776", "BAT region outside the file");
    p = CASE("x-rout2.vhdx");
    patch_region(p, vhdx_guids[VHDX_GUID_METADATA], 16, b8, 8);
    expect_bad(p, "vhdx", "outside the file", "metadata region outside the file");
    p = CASE("x-rlen.vhdx");
    uint8_t b4[4];
    p2v_put_u32le(b4, 0xfff00000u);
    patch_region(p, vhdx_guids[VHDX_GUID_BAT], 24, b4, 4);
    expect_bad(p, "vhdx", "outside the file", "BAT region of 4 GiB");
    p = CASE("x-rhuge.vhdx");
    p2v_put_u64le(b8, UINT64_MAX - VHDX_MIB + 1);
    patch_region(p, vhdx_guids[VHDX_GUID_BAT], 16, b8, 8);
    expect_bad(p, "vhdx", "not whole MiB", "region offset wrapping 2^64");
    p = CASE("x-rover.vhdx");
    p2v_put_u64le(b8, region_offset(g, VHDX_GUID_METADATA));
    patch_region(p, vhdx_guids[VHDX_GUID_BAT], 16, b8, 8);
    expect_bad(p, "vhdx", "overlaps", "BAT region over the metadata region");
    p = CASE("x-rhead.vhdx");
    p2v_put_u64le(b8, 0);
    patch_region(p, vhdx_guids[VHDX_GUID_BAT], 16, b8, 8);
    expect_bad(p, "vhdx", "header section", "BAT region in the header section");
    p = CASE("x-runk.vhdx");
    {
        uint8_t bogus[16] = {1, 2, 3};
        uint8_t req[4] = {1, 0, 0, 0};
        patch_region(p, vhdx_guids[VHDX_GUID_METADATA], 0, bogus, 16);
        patch_region(p, bogus, 28, req, 4);
    }
    expect_bad(p, "vhdx", "required region of an unknown kind", "unknown required region");

    /* metadata */
    static const struct {
        uint32_t v;
        const char *name;
    } bss[] = {{0, "VHDX block size 0"}, {3 * MIB, "VHDX block size 3 MiB"},
               {512 * MIB, "VHDX block size 512 MiB"}, {4096, "VHDX block size 4 KiB"}};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(bss); i++) {
        p = CASE("x-bs.vhdx");
        p2v_put_u32le(b4, bss[i].v);
        patch(p, fp, b4, 4);
        expect_bad(p, "vhdx", "block size", bss[i].name);
    }
    p = CASE("x-parent.vhdx");
    p2v_put_u32le(b4, 2);
    patch(p, fp + 4, b4, 4);
    expect_bad(p, "vhdx", "differencing VHDX needs its parent", "HasParent set");
    p = CASE("x-vsize.vhdx");
    p2v_put_u64le(b8, 1ull << 62);
    patch(p, vs, b8, 8);
    expect_bad(p, "vhdx", "virtual disk size", "virtual size 2^62");
    p = CASE("x-vsize0.vhdx");
    p2v_put_u64le(b8, 0);
    patch(p, vs, b8, 8);
    expect_bad(p, "vhdx", "virtual disk size", "virtual size 0");
    p = CASE("x-vsize2.vhdx");
    p2v_put_u64le(b8, 1ull << 40);
    patch(p, vs, b8, 8);
    expect_bad(p, "vhdx", "too small", "virtual size of 1 TiB beyond the BAT");
    p = CASE("x-mtab.vhdx");
    patch(p, region_offset(g, VHDX_GUID_METADATA), "metadatx", 8);
    expect_bad(p, "vhdx", "metadata", "metadata table signature");

    /* BAT entries */
    p = CASE("x-bout.vhdx");
    p2v_put_u64le(b8, (UINT64_C(1) << 40) | 6);
    patch(p, bat, b8, 8);
    expect_bad(p, "vhdx", "points outside", "BAT entry outside the file");
    p = CASE("x-bdup.vhdx");
    patch(p, bat + 8, e0, 8);
    expect_bad(p, "vhdx", "overlaps", "two BAT entries on one block");
    p = CASE("x-bhdr.vhdx");
    p2v_put_u64le(b8, 6);
    patch(p, bat, b8, 8);
    expect_bad(p, "vhdx", "header section", "BAT entry in the header section");
    p = CASE("x-bbat.vhdx");
    p2v_put_u64le(b8, (bat / MIB) << 20 | 6);
    patch(p, bat, b8, 8);
    expect_bad(p, "vhdx", "overlaps", "BAT entry on the BAT");
    p = CASE("x-b7.vhdx");
    p2v_put_u64le(b8, (p2v_get_u64le(e0) & ~7ull) | 7);
    patch(p, bat, b8, 8);
    expect_bad(p, "vhdx", "invalid in a disk without a parent", "partially present block");
    p = CASE("x-b5.vhdx");
    p2v_put_u64le(b8, 5);
    patch(p, bat + 8, b8, 8);
    expect_bad(p, "vhdx", "state 5", "reserved block state");
    p = CASE("x-bzero.vhdx");
    p2v_put_u64le(b8, 2);
    patch(p, bat + 8, b8, 8);
    {
        struct p2v_err err = {0};
        struct diskfmt *d = diskfmt_open(p, "vhdx", 0, &err);
        uint64_t run = 0;
        unsigned f = 0;
        ok(d && diskfmt_block_status(d, MIB, MIB, &run, &f, &err) == 0 &&
               (f & DISKFMT_STATUS_ZERO) && run == MIB,
           "a ZERO block reads as zeros");
        diskfmt_close(d, NULL);
    }

    /* the log */
    p = CASE("x-log.vhdx");
    {
        uint8_t h[VHDX_HEADER_SIZE], guid[16] = {9, 8, 7, 6, 5, 4, 3, 2, 1};
        struct vhdx_header hh;
        get(p, VHDX_HEADER1_OFFSET, h, sizeof h);
        vhdx_header_parse(h, sizeof h, p, 0, &hh, NULL);
        uint8_t entry[64] = "loge";
        memcpy(entry + 32, guid, 16);
        patch(p, hh.log_offset + 8192, entry, sizeof entry);
        patch_header(p, VHDX_HEADER1_OFFSET, 48, guid, 16);
        patch_header(p, VHDX_HEADER2_OFFSET, 48, guid, 16);
        expect_bad(p, "vhdx", "log holds an entry to replay", "log to replay");
        p = CASE("x-log2.vhdx");
        patch_header(p, VHDX_HEADER1_OFFSET, 48, guid, 16);
        patch_header(p, VHDX_HEADER2_OFFSET, 48, guid, 16);
        struct diskfmt *d = diskfmt_open(p, "vhdx", 0, NULL);
        ok(d != NULL, "a log GUID with no entry in the log: nothing to replay");
        diskfmt_close(d, NULL);
    }

    /* truncated */
    p = CASE("x-cut.vhdx");
    ok(truncate(p, 2 * MIB + 5) == 0, "VHDX cut");
    expect_bad(p, "vhdx", "outside the file", "VHDX cut after its header section");
    p = CASE("x-cut2.vhdx");
    ok(truncate(p, 100 * KIB) == 0, "VHDX cut in its headers");
    expect_bad(p, "vhdx", "too small", "VHDX cut in its headers");

    /* check counts what open lets pass */
    p = CASE("x-many.vhdx");
    {
        struct p2v_err err = {0};
        struct diskfmt_check res;
        struct diskfmt *dc = diskfmt_open(p, "vhdx", 0, &err);
        p2v_put_u64le(b8, (UINT64_C(1) << 40) | 6);
        patch(p, bat, b8, 8);      /* block 0 outside */
        patch(p, bat + 40, e1, 8); /* block 5 on block 1 */
        memset(&res, 0, sizeof res);
        if (!ok(dc && diskfmt_check(dc, &res, &err) == 0 && res.errors == 2 &&
                    res.allocated == 2 * MIB,
                "check counts 2 errors in a VHDX damaged after opening (%llu)",
                (unsigned long long)res.errors))
            diag("  %s / %s / allocated %llu", err.msg, res.first_error,
                 (unsigned long long)res.allocated);
        diskfmt_close(dc, NULL);
    }
    p = CASE("x-c2.vhdx");
    patch(p, VHDX_REGION2_OFFSET + 40000, "x", 1);
    expect_bad(p, "vhdx", "262144", "second region table corrupt: refused too");
#undef CASE

    /* parsers on their own */
    ok(vhdx_crc32c(0, "123456789", 9) == 0xE3069283u, "CRC-32C check value");
    struct vhdx_meta m = {.block_size = 32 * MIB, .logical_sector = 512,
                          .virtual_size = 127ull << 30};
    struct vhdx_layout l;
    vhdx_layout_compute(&m, &l);
    ok(l.chunk_ratio == 128 && l.payload_blocks == 4064 && l.bat_entries == 4064 + 31,
       "VHDX BAT layout: chunk ratio 128, bitmap entries interleaved");
    ok(vhdx_bat_index(&l, 127) == 127 && vhdx_bat_index(&l, 128) == 129,
       "VHDX BAT index skips the bitmap entry");
}

int main(void)
{
    dftest_begin("test-vhd");
    have_vhdiinfo = sh("vhdiinfo -V >/dev/null 2>&1") == 0;

    test_writer("fixed", 0);
    test_writer("dynamic", 0);
    test_writer("dynamic", 512 * KIB);
    test_geometry();
    killed_writer("fixed");
    killed_writer("dynamic");
    abandoned_writer();
    test_qemu_images();
    test_bad_vhd();
    test_bad_vhdx();

    return dftest_end();
}
