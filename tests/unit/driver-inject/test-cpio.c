/* Unit tests of driver-inject's newc cpio builder and initrd reader. The builder's output
 * is checked by GNU cpio (`cpio -t`, `cpio -i` in a temporary folder), the outside oracle;
 * the reader walks concatenated plain, gzip and zstd segments; the marker is found only
 * where our archive really ends an initrd. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "di-int.h"
#include "tap.h"

static const char init_sh[] = "#!/bin/sh\nexec /init.p2v-orig \"$@\"\n";
static const char orig_sh[] = "#!/bin/sh\necho original\n";
static const char ko[] = "\x7f" "ELF fake module bytes, 37 long.....";

static const struct di_cpio_file files[] = {
    {"lib", S_IFDIR | 0755, "", 0},
    {"lib/modules", S_IFDIR | 0755, "", 0},
    {"lib/modules/6.1/kernel", S_IFDIR | 0755, "", 0},
    {"lib/modules/6.1/kernel/virtio_blk.ko", S_IFREG | 0644, ko, sizeof ko - 1},
    {"init.p2v-orig", S_IFREG | 0755, orig_sh, sizeof orig_sh - 1},
    {"init", S_IFREG | 0755, init_sh, sizeof init_sh - 1},
    {"bin/sh", S_IFLNK | 0777, "busybox", 7},
    {"empty", S_IFREG | 0600, "", 0},
    {DI_MARKER_NAME, S_IFREG | 0644, "p2vkit\n", 7},
};

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    static char buf[65536];
    if (!f)
        return NULL;
    *n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

struct seen {
    char names[64][128];
    int n;
    int init_len;
};

static int collect(void *opaque, const struct di_cpio_entry *e)
{
    struct seen *s = opaque;
    if (s->n < 64 && e->namelen < 128) {
        memcpy(s->names[s->n], e->name, e->namelen);
        s->names[s->n][e->namelen] = 0;
        if (!strcmp(s->names[s->n], "init"))
            s->init_len = (int)e->len;
        s->n++;
    }
    return 0;
}

static bool seen_has(const struct seen *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name))
            return true;
    return false;
}

static size_t gzip_buf(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)n;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    int rc = deflate(&zs, Z_FINISH);
    size_t got = zs.total_out;
    deflateEnd(&zs);
    return rc == Z_STREAM_END ? got : 0;
}

int main(void)
{
    struct p2v_buf b = P2V_BUF_INIT;
    struct p2v_err err = {0};
    char dir[] = "/tmp/test-cpio.XXXXXX", cmd[512], path[256];
    size_t n;

    if (!mkdtemp(dir))
        bail_out:
        return 99;
    ok(di_cpio_build(files, P2V_ARRAY_SIZE(files), 1700000000, &b, &err) == 0, "build (%s)", err.msg);
    ok(b.len % 4 == 0, "archive length %zu is a multiple of 4", b.len);
    ok(b.len >= 10 && memcmp(b.data, "070701", 6) == 0, "newc magic");
    snprintf(path, sizeof path, "%s/a.cpio", dir);
    if (write_file(path, b.data, b.len) < 0)
        goto bail_out;

    /* the oracle: GNU cpio lists and extracts it */
    snprintf(cmd, sizeof cmd, "cpio --quiet -t <%s/a.cpio >%s/list 2>%s/list.err", dir, dir, dir);
    int rc = system(cmd);
    if (rc != 0 && system("command -v cpio >/dev/null") != 0) {
        skip_all("cpio is not installed");
    }
    ok(rc == 0, "cpio -t reads the archive");
    snprintf(path, sizeof path, "%s/list", dir);
    char *list = slurp(path, &n);
    ok(list && n > 0 &&
           !strcmp(list, "lib\nlib/modules\nlib/modules/6.1/kernel\nlib/modules/6.1/kernel/virtio_blk.ko\n"
                         "init.p2v-orig\ninit\nbin/sh\nempty\n" DI_MARKER_NAME "\n"),
       "cpio -t lists every entry in order");
    snprintf(cmd, sizeof cmd, "mkdir -p %s/x/bin && cd %s/x && cpio --quiet -i -d --no-absolute-filenames <../a.cpio 2>../x.err", dir, dir);
    ok(system(cmd) == 0, "cpio -i extracts it");
    snprintf(path, sizeof path, "%s/x/init", dir);
    char *got = slurp(path, &n);
    ok(got && n == sizeof init_sh - 1 && memcmp(got, init_sh, n) == 0, "extracted /init is byte-exact");
    struct stat st;
    ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0755, "/init mode 0755");
    snprintf(path, sizeof path, "%s/x/lib/modules/6.1/kernel/virtio_blk.ko", dir);
    got = slurp(path, &n);
    ok(got && n == sizeof ko - 1 && memcmp(got, ko, n) == 0, "extracted module is byte-exact");
    snprintf(path, sizeof path, "%s/x/bin/sh", dir);
    char lt[32] = {0};
    ok(readlink(path, lt, sizeof lt - 1) == 7 && !strcmp(lt, "busybox"), "symlink bin/sh -> busybox");
    snprintf(path, sizeof path, "%s/x/empty", dir);
    ok(stat(path, &st) == 0 && st.st_size == 0, "empty file");

    /* our own reader agrees */
    struct seen s = {0};
    size_t consumed = 0;
    ok(di_cpio_parse(b.data, b.len, &consumed, collect, &s, &err) == 0 && consumed == b.len,
       "di_cpio_parse reads to the trailer, all %zu bytes", b.len);
    is_int(s.n, (int)P2V_ARRAY_SIZE(files), "di_cpio_parse: every entry");

    /* marker: found in the tail of an initrd ending with our archive, not elsewhere */
    ok(di_initrd_has_marker(b.data, b.len), "marker found in the archive");
    size_t start = b.len > DI_MARKER_TAIL ? (b.len - DI_MARKER_TAIL) & ~(size_t)3 : 0;
    ok(di_initrd_has_marker(b.data + start, b.len - start), "marker found in the last %d bytes", DI_MARKER_TAIL);
    ok(!di_initrd_has_marker(b.data, b.len - 4), "a truncated trailer: no marker");
    {
        struct p2v_buf c = P2V_BUF_INIT;
        di_cpio_build(files, P2V_ARRAY_SIZE(files) - 1, 0, &c, NULL);
        ok(!di_initrd_has_marker(c.data, c.len), "an archive without the marker file: no marker");
        /* the marker file not last: a later file follows it */
        struct di_cpio_file f2[] = {files[8], files[5]};
        p2v_buf_reset(&c);
        di_cpio_build(f2, 2, 0, &c, NULL);
        ok(!di_initrd_has_marker(c.data, c.len), "marker file not last before the trailer: no marker");
        p2v_buf_release(&c);
    }

    /* an initrd: gzip(archive without marker) + zeros + plain archive; then zstd */
    {
        struct p2v_buf a = P2V_BUF_INIT, img = P2V_BUF_INIT;
        struct di_cpio_file first[] = {
            {"init", S_IFREG | 0755, orig_sh, sizeof orig_sh - 1},
            {"bin", S_IFDIR | 0755, "", 0},
            {"bin/busybox", S_IFREG | 0755, "BB", 2},
        };
        static uint8_t gz[8192];
        di_cpio_build(first, 3, 0, &a, NULL);
        size_t gl = gzip_buf(a.data, a.len, gz, sizeof gz);
        ok(gl > 0, "gzip the first segment (%zu bytes)", gl);
        p2v_buf_put(&img, gz, gl);
        while (img.len % 4)
            p2v_buf_put_u8(&img, 0);
        p2v_buf_put(&img, b.data, b.len);
        memset(&s, 0, sizeof s);
        ok(di_initrd_walk(img.data, img.len, collect, &s, &err) == 0, "walk gzip + plain (%s)", err.msg);
        is_int(s.n, 3 + (int)P2V_ARRAY_SIZE(files), "walk: entries of both segments");
        ok(seen_has(&s, "bin/busybox") && seen_has(&s, "lib/modules/6.1/kernel/virtio_blk.ko"),
           "walk: names from both");
        is_int(s.init_len, (int)sizeof init_sh - 1, "walk: the last /init wins (the wrapper)");
        ok(di_initrd_has_marker(img.data + (img.len - 1024) / 4 * 4, img.len - (img.len - 1024) / 4 * 4),
           "marker in the tail of the concatenated initrd");
        /* a plain segment at an unaligned offset is refused, as the kernel would skip it */
        struct p2v_buf bad = P2V_BUF_INIT;
        p2v_buf_put(&bad, gz, gl);
        p2v_buf_put(&bad, "\xff\xfe", 2);
        ok(di_initrd_walk(bad.data, bad.len, collect, &s, &err) < 0, "garbage after gzip: error (%s)", err.msg);
        p2v_buf_release(&bad);

        /* zstd */
        size_t zcap = ZSTD_compressBound(a.len);
        uint8_t *z = malloc(zcap);
        size_t zl = ZSTD_compress(z, zcap, a.data, a.len, 3);
        memset(&s, 0, sizeof s);
        ok(!ZSTD_isError(zl) && di_initrd_walk(z, zl, collect, &s, &err) == 0 && s.n == 3,
           "walk a zstd initrd (%s)", err.msg);
        /* a corrupt gzip, a truncated archive, an xz header */
        gz[gl / 2] ^= 0x55;
        ok(di_initrd_walk(gz, gl, collect, &s, &err) < 0, "corrupt gzip: error (%s)", err.msg);
        ok(di_initrd_walk(b.data, b.len - 8, collect, &s, &err) < 0, "truncated cpio: error (%s)", err.msg);
        static const uint8_t xz[] = {0xfd, '7', 'z', 'X', 'Z', 0, 0, 0};
        ok(di_initrd_walk(xz, sizeof xz, collect, &s, &err) < 0 && strstr(err.msg, "xz"),
           "xz: not supported, named (%s)", err.msg);
        /* a hostile name size */
        struct p2v_buf h = P2V_BUF_INIT;
        p2v_buf_put(&h, b.data, b.len);
        memcpy(h.data + 6 + 8 * 11, "FFFFFFFF", 8);
        ok(di_cpio_parse(h.data, h.len, &consumed, collect, &s, &err) < 0, "name size 0xFFFFFFFF: error (%s)", err.msg);
        p2v_buf_release(&h);
        free(z);
        p2v_buf_release(&a);
        p2v_buf_release(&img);
    }
    p2v_buf_release(&b);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    return exit_status();
}
