/* test-bootcfg.c: vmm_bootcfg_find() (vmm/bootcfg.c, ext2io.c, bootparse.c) on the real
 * fixtures in $P2V_FIXTURE_CACHE or /var/tmp/p2vkit-fixtures (each part skipped when its
 * fixture is absent), on a qcow2 copy of one (through diskfmt), and on synthetic images
 * made here: no partition table, an ext4 partition (mke2fs -d, no mount) with a broken
 * grub.cfg, one whose grub.cfg names a missing kernel, and one with a separate-/boot layout
 * and symlinks; and EFI system
 * partitions (FAT12, FAT16, FAT32 made by mkfs.vfat and filled by mtools, no mount) beside an
 * ext4 one, read through vmm/fatio.c, with hostile copies patched after mkfs. */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bootcfg-int.h"
#include "diskfmt.h"
#include "tap.h"
#include "vmm-int.h"

static char tmp[256];

#define HAS(hay, needle) ((hay) && strstr((hay), (needle)) != NULL)

static char *fixture(const char *name)
{
    char pat[256];
    glob_t g;
    char *r = NULL;
    const char *cache = getenv("P2V_FIXTURE_CACHE");
    snprintf(pat, sizeof(pat), "%s/%s-*/disk.img",
             cache && *cache ? cache : "/var/tmp/p2vkit-fixtures", name);
    if (glob(pat, 0, NULL, &g) == 0 && g.gl_pathc)
        r = strdup(g.gl_pathv[g.gl_pathc - 1]);
    globfree(&g);
    return r;
}

static int find(const char *path, const char *fmt, struct vmm_bootcfg *c, struct p2v_err *err)
{
    memset(c, 0, sizeof(*c));
    memset(err, 0, sizeof(*err));
    struct diskfmt *d = diskfmt_open(path, fmt, 0, err);
    if (!d) {
        diag("cannot open %s: %s", path, err->msg);
        return -2;
    }
    int r = vmm_bootcfg_find(d, c, err);
    diskfmt_close(d, NULL);
    if (r < 0)
        diag("%s: %s", path, err->msg);
    return r;
}

static bool is_bzimage(const struct vmm_bootcfg *c)
{
    return c->kernel_len > 0x210 && memcmp(c->kernel + 0x202, "HdrS", 4) == 0;
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int r = system(cmd);
    if (r != 0)
        diag("command failed (%d): %s", r, cmd);
    return r;
}

/* A 16 MiB disk with an MBR: partition 1 at 1 MiB, type 0x83, holding an ext4 made from
 * @dir (mke2fs -d, offset, no mount). */
static int make_disk(const char *img, const char *dir)
{
    uint8_t mbr[512] = {0};
    uint8_t *e = mbr + 446;
    e[4] = 0x83;
    p2v_put_u32le(e + 8, 2048);
    p2v_put_u32le(e + 12, 30720);
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    FILE *f = fopen(img, "wb");
    if (!f || fwrite(mbr, 1, sizeof(mbr), f) != sizeof(mbr) || fclose(f) != 0)
        return -1;
    if (truncate(img, 16 << 20) < 0)
        return -1;
    return sh("mke2fs -q -F -t ext4 -b 1024 -E offset=1048576 -d '%s' '%s' 15360k 2>&1", dir,
              img);
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* ------------------------------------------------------------------ FAT (the ESP) */

#define FAT_TESTS 45
#define EXT_UUID "0e5b7a1c-5eed-4fa7-9b1d-000000000002"

static int read_all(const char *path, uint8_t **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    long n;
    if (!f || fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0 ||
        !(*buf = malloc((size_t)n + 1)) || fread(*buf, 1, (size_t)n, f) != (size_t)n) {
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    *len = (size_t)n;
    return 0;
}

static int write_all(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(buf, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

/* @len bytes no two runs of which look alike (xorshift from @seed). */
static uint8_t *pattern(uint32_t seed, size_t len)
{
    uint8_t *p = malloc(len);
    for (size_t i = 0; p && i < len; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        p[i] = (uint8_t)seed;
    }
    return p;
}

static bool same(const uint8_t *got, size_t glen, const uint8_t *want, size_t wlen)
{
    return got && glen == wlen && memcmp(got, want, wlen) == 0;
}

/* An MBR disk: partition 1 at 1 MiB, type 0xef, holding the FAT image @fat; partition 2
 * after it, a 16 MiB ext4 made from @extdir (none when NULL) with UUID EXT_UUID. */
static int make_esp_disk(const char *img, const uint8_t *fat, size_t fat_len, const char *extdir)
{
    uint8_t mbr[512] = {0};
    uint32_t fat_sectors = (uint32_t)(fat_len / 512);
    uint32_t p2 = (2048 + fat_sectors + 2047) / 2048 * 2048;
    mbr[446 + 4] = 0xef;
    p2v_put_u32le(mbr + 446 + 8, 2048);
    p2v_put_u32le(mbr + 446 + 12, fat_sectors);
    if (extdir) {
        mbr[462 + 4] = 0x83;
        p2v_put_u32le(mbr + 462 + 8, p2);
        p2v_put_u32le(mbr + 462 + 12, 32768);
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    unlink(img);
    if (write_all(img, mbr, sizeof(mbr)) < 0 || truncate(img, ((off_t)p2 + 32768) * 512) < 0)
        return -1;
    if (extdir && sh("mke2fs -q -F -t ext4 -b 1024 -U %s -E offset=%llu -d '%s' '%s' 16384k "
                     "2>&1", EXT_UUID, (unsigned long long)p2 * 512, extdir, img) != 0)
        return -1;
    int fd = open(img, O_WRONLY);
    if (fd < 0)
        return -1;
    ssize_t w = pwrite(fd, fat, fat_len, 1 << 20);
    return close(fd) == 0 && w == (ssize_t)fat_len ? 0 : -1;
}

/* The geometry of a FAT image made here, to patch it. */
struct tgeom {
    unsigned bits;
    size_t fat_off, data_off, cluster_bytes;
};

static struct tgeom tgeom(const uint8_t *b)
{
    struct tgeom g;
    size_t bps = p2v_get_u16le(b + 11), rsvd = p2v_get_u16le(b + 14), nfats = b[16];
    size_t root = p2v_get_u16le(b + 17), fatsz = p2v_get_u16le(b + 22);
    g.bits = fatsz ? (memcmp(b + 54, "FAT12", 5) == 0 ? 12 : 16) : 32;
    if (!fatsz)
        fatsz = p2v_get_u32le(b + 36);
    g.fat_off = rsvd * bps;
    g.data_off = g.fat_off + nfats * fatsz * bps + (root * 32 + bps - 1) / bps * bps;
    g.cluster_bytes = bps * b[13];
    return g;
}

/* The offset of the directory entry with the 11-byte short name @n83 (first found). */
static size_t tentry(const uint8_t *b, size_t len, const char *n83)
{
    for (size_t o = 512; o + 32 <= len; o += 32)
        if (memcmp(b + o, n83, 11) == 0 && b[o + 11] != 0x0f)
            return o;
    return 0;
}

static uint32_t tcluster(const uint8_t *b, size_t e)
{
    return p2v_get_u16le(b + e + 26) | (uint32_t)p2v_get_u16le(b + e + 20) << 16;
}

/* Set the FAT16/FAT32 entry of cluster @c (the first FAT). */
static void tset_fat(uint8_t *b, const struct tgeom *g, uint32_t c, uint32_t v)
{
    if (g->bits == 16)
        p2v_put_u16le(b + g->fat_off + 2 * c, (uint16_t)v);
    else
        p2v_put_u32le(b + g->fat_off + 4 * c, v);
}

static int mkfat(const char *fat, int bits, unsigned kib, unsigned spc, const char *volid)
{
    unlink(fat);
    return sh("mkfs.vfat -C -F %d -s %u -i %s '%s' %u >/dev/null 2>&1", bits, spc, volid, fat,
              kib);
}

static int mput(const char *fat, const char *host, const char *dest)
{
    return sh("mcopy -o -i '%s' '%s' '::%s'", fat, host, dest);
}

static struct vmm_fat *fat_open_disk(const char *img, struct diskfmt **d, struct p2v_err *err)
{
    memset(err, 0, sizeof(*err));
    *d = diskfmt_open(img, "raw", 0, err);
    if (!*d)
        return NULL;
    return vmm_fat_open(*d, 1 << 20, diskfmt_size(*d) - (1 << 20), err);
}

static bool has_dir(const struct vmm_fat_dirent *e, size_t n, const char *name, bool dir)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, name) == 0 && e[i].dir == dir)
            return true;
    return false;
}

/* Read @path from the ESP of @img: the call's result, the bytes in *@data. */
/* Close what fat_open_disk() opened (either may be NULL) and clear both. */
static void fat_close_disk(struct vmm_fat **fs, struct diskfmt **d)
{
    vmm_fat_close(*fs);
    *fs = NULL;
    if (*d)
        diskfmt_close(*d, NULL);
    *d = NULL;
}

static int fat_read(const char *img, const char *path, size_t cap, uint8_t **data, size_t *len,
                    struct p2v_err *err)
{
    struct diskfmt *d = NULL;
    struct vmm_fat *fs = fat_open_disk(img, &d, err);
    int r = -2;
    *data = NULL;
    *len = 0;
    if (fs)
        r = vmm_fat_read_file(fs, path, cap, data, len, err);
    else
        diag("%s: %s", img, err->msg);
    if (r == -1)
        diag("%s: %s", path, err->msg);
    fat_close_disk(&fs, &d);
    return r;
}

/* Write the patched FAT @h (@blen bytes) as the ESP of @img, read @path from it: the read
 * must fail with a message holding @want1 and (unless NULL) @want2. */
static void hostile_read(const char *img, const uint8_t *h, size_t blen, const char *path,
                         const char *want1, const char *want2, const char *what)
{
    struct p2v_err err = {0};
    uint8_t *data = NULL;
    size_t dlen = 0;
    make_esp_disk(img, h, blen, NULL);
    int r = fat_read(img, path, 1 << 20, &data, &dlen, &err);
    ok(r == -1 && HAS(err.msg, want1) && (!want2 || HAS(err.msg, want2)), "hostile: %s (%s)",
       what, err.msg);
    free(data);
}

static void fat_tests(void)
{
    struct vmm_bootcfg c;
    struct p2v_err err;
    char img[300], fat[300], ext[300], host[300], p[400];
    const size_t klen = 100000, ilen = 5000;
    uint8_t *kern = pattern(1, klen), *init = pattern(2, ilen), *buf = NULL, *data = NULL;
    size_t blen = 0, dlen = 0;
    struct diskfmt *d = NULL;
    struct vmm_fat *fs = NULL;
    struct vmm_fat_dirent *ents = NULL;
    size_t n = 0;

    if (system("command -v mkfs.vfat >/dev/null 2>&1") != 0 ||
        system("command -v mcopy >/dev/null 2>&1") != 0 ||
        system("command -v mmd >/dev/null 2>&1") != 0 ||
        system("command -v mke2fs >/dev/null 2>&1") != 0) {
        for (int i = 0; i < FAT_TESTS; i++)
            ok(1, "# SKIP needs mkfs.vfat (dosfstools), mcopy and mmd (mtools) and mke2fs");
        goto out;
    }
    setenv("MTOOLS_SKIP_CHECK", "1", 1);
    snprintf(img, sizeof(img), "%s/esp-disk.img", tmp);
    snprintf(fat, sizeof(fat), "%s/esp.img", tmp);
    snprintf(ext, sizeof(ext), "%s/extroot", tmp);
    snprintf(host, sizeof(host), "%s/hostfiles", tmp);
    sh("rm -rf '%s' '%s' && mkdir -p '%s/boot' '%s'", ext, host, ext, host);
    snprintf(p, sizeof(p), "%s/boot/vmlinuz-t", ext);
    write_all(p, kern, klen);
    snprintf(p, sizeof(p), "%s/boot/initrd.img-t", ext);
    write_all(p, init, ilen);
    snprintf(p, sizeof(p), "%s/vmlinuz", host);
    write_all(p, kern, klen);
    snprintf(p, sizeof(p), "%s/initrd", host);
    write_all(p, init, ilen);
    snprintf(p, sizeof(p), "%s/hole", host);
    write_all(p, init, 4096);
    snprintf(p, sizeof(p), "%s/small", host);
    write_all(p, "small file\n", 11);
    snprintf(p, sizeof(p), "%s/two", host);
    write_all(p, init, 1000);
    snprintf(p, sizeof(p), "%s/long.txt", host);
    write_all(p, "a long file name\n", 17);
    snprintf(p, sizeof(p), "%s/lower.txt", host);
    write_all(p, "lower case 8.3\n", 15);
    snprintf(p, sizeof(p), "%s/grub-t.cfg", host);
    write_file(p, "search --no-floppy --fs-uuid --set=root " EXT_UUID "\n"
                 "menuentry 'esp' {\n  linux /boot/vmlinuz-t root=/dev/sda2 ro\n"
                 "  initrd /boot/initrd.img-t\n}\n");
    snprintf(p, sizeof(p), "%s/grub-f.cfg", host);
    write_file(p, "search --no-floppy --fs-uuid --set=root 1234-abcd\n"
                 "menuentry 'on the esp' {\n  linux /boot/vmlinuz-f root=/dev/sda2\n"
                 "  initrd /boot/initrd.img-f\n}\n");
    snprintf(p, sizeof(p), "%s/grub-nosearch.cfg", host);
    write_file(p, "menuentry 'x' {\n  linux /boot/vmlinuz-t root=/dev/sda2\n"
                 "  initrd /boot/initrd.img-t\n}\n");
    snprintf(p, sizeof(p), "%s/grub-stub.cfg", host);
    write_file(p, "search.fs_uuid " EXT_UUID " root\nset prefix=($root)'/boot/grub'\n"
                 "configfile $prefix/grub.cfg\n");

    /* --- FAT12: /EFI/BOOT/grub.cfg; the kernel on ext4 by the search UUID */
    bool made = mkfat(fat, 12, 2048, 4, "0bad1212") == 0 &&
                sh("mmd -i '%s' ::/EFI ::/EFI/BOOT", fat) == 0 &&
                mput(fat, strcat(strcpy(p, host), "/grub-t.cfg"), "/EFI/BOOT/grub.cfg") == 0 &&
                read_all(fat, &buf, &blen) == 0 && make_esp_disk(img, buf, blen, ext) == 0;
    ok(made, "fat12: ESP + ext4 disk made");
    is_int(find(img, "raw", &c, &err), 0, "fat12: found");
    ok(c.config_part == 1 && HAS(c.config_path, "/EFI/BOOT/grub.cfg") && HAS(c.loader, "grub"),
       "fat12: /EFI/BOOT/grub.cfg on partition 1 (%s)", c.config_path ? c.config_path : "null");
    ok(c.kernel_part == 2 && HAS(c.kernel_path, "/boot/vmlinuz-t") &&
           same(c.kernel, c.kernel_len, kern, klen),
       "fat12: the kernel from ext4 partition 2, byte-exact (%zu bytes)", c.kernel_len);
    ok(same(c.initrd, c.initrd_len, init, ilen), "fat12: the initrd byte-exact");
    vmm_bootcfg_release(&c);
    fs = fat_open_disk(img, &d, &err);
    ok(fs && vmm_fat_bits(fs) == 12 && strcmp(vmm_fat_uuid(fs), "0BAD-1212") == 0,
       "fat12: opened as FAT12, volume id %s", fs ? vmm_fat_uuid(fs) : err.msg);
    fat_close_disk(&fs, &d);
    free(buf);
    buf = NULL;

    /* --- FAT16, 512-byte clusters: /EFI/debian/grub.cfg; the kernel on the ESP itself (the
     * search names its volume id), in /boot, its chain split around a freed hole */
    made = mkfat(fat, 16, 16384, 1, "1234ABCD") == 0 &&
           sh("mmd -i '%s' ::/EFI ::/EFI/BOOT ::/EFI/debian ::/boot", fat) == 0 &&
           mput(fat, strcat(strcpy(p, host), "/small"), "/EFI/BOOT/BOOTX64.EFI") == 0 &&
           mput(fat, strcat(strcpy(p, host), "/grub-f.cfg"), "/EFI/debian/grub.cfg") == 0 &&
           mput(fat, strcat(strcpy(p, host), "/hole"), "/boot/hole.bin") == 0 &&
           mput(fat, strcat(strcpy(p, host), "/small"), "/boot/b.bin") == 0 &&
           sh("mdel -i '%s' ::/boot/hole.bin", fat) == 0 &&
           mput(fat, strcat(strcpy(p, host), "/vmlinuz"), "/boot/vmlinuz-f") == 0 &&
           mput(fat, strcat(strcpy(p, host), "/initrd"), "/boot/initrd.img-f") == 0 &&
           mput(fat, strcat(strcpy(p, host), "/long.txt"), "/EFI/debian/A Long File Name.txt") ==
               0 &&
           mput(fat, strcat(strcpy(p, host), "/lower.txt"), "/EFI/debian/lower.txt") == 0 &&
           mput(fat, strcat(strcpy(p, host), "/two"), "/LOOP.BIN") == 0 &&
           mput(fat, strcat(strcpy(p, host), "/two"), "/BEYOND.BIN") == 0 &&
           mput(fat, strcat(strcpy(p, host), "/small"), "/SMALL.BIN") == 0 &&
           read_all(fat, &buf, &blen) == 0 && make_esp_disk(img, buf, blen, ext) == 0;
    ok(made, "fat16: ESP + ext4 disk made");
    is_int(find(img, "raw", &c, &err), 0, "fat16: found");
    ok(c.config_part == 1 && HAS(c.config_path, "/EFI/debian/grub.cfg"),
       "fat16: /EFI/debian/grub.cfg (%s)", c.config_path ? c.config_path : "null");
    ok(c.kernel_part == 1 && HAS(c.kernel_path, "/boot/vmlinuz-f") &&
           same(c.kernel, c.kernel_len, kern, klen),
       "fat16: the kernel (%zu bytes, 196 clusters in two runs) from the ESP by its volume id, "
       "byte-exact", c.kernel_len);
    ok(same(c.initrd, c.initrd_len, init, ilen) && HAS(c.initrd_path, "/boot/initrd.img-f"),
       "fat16: the initrd byte-exact");
    vmm_bootcfg_release(&c);

    fs = fat_open_disk(img, &d, &err);
    ok(fs && vmm_fat_bits(fs) == 16 && strcmp(vmm_fat_uuid(fs), "1234-ABCD") == 0,
       "fat16: opened as FAT16, volume id %s", fs ? vmm_fat_uuid(fs) : err.msg);
    if (!fs) {
        for (int i = 0; i < 8; i++)
            ok(0, "fat16: not opened");
    } else {
        ok(vmm_fat_list(fs, "/efi", &ents, &n, &err) == 0 && has_dir(ents, n, "BOOT", true) &&
               has_dir(ents, n, "debian", true),
           "fat16: /EFI lists BOOT and debian (%zu entries)", n);
        vmm_fat_dirents_free(ents, n);
        ents = NULL;
        ok(vmm_fat_list(fs, "/EFI/debian", &ents, &n, &err) == 0 &&
               has_dir(ents, n, "A Long File Name.txt", false) &&
               has_dir(ents, n, "lower.txt", false) && has_dir(ents, n, "grub.cfg", false),
           "fat16: /EFI/debian lists the long name and 'lower.txt' (NT lower-case flags)");
        vmm_fat_dirents_free(ents, n);
        ents = NULL;
        ok(vmm_fat_read_file(fs, "/efi/DEBIAN/a long file name.TXT", 100, &data, &dlen, &err) ==
                   0 && same(data, dlen, (const uint8_t *)"a long file name\n", 17),
           "fat16: a long file name resolves without case");
        free(data);
        data = NULL;
        ok(vmm_fat_read_file(fs, "/EFI/Debian/./../debian/LOWER.TXT", 100, &data, &dlen, &err) ==
                   0 && same(data, dlen, (const uint8_t *)"lower case 8.3\n", 15),
           "fat16: a lower-case 8.3 name resolves (upper case, '.' and '..' in the path)");
        free(data);
        data = NULL;
        ok(vmm_fat_read_file(fs, "/EFI/debian/ALONGF~1.TXT", 100, &data, &dlen, &err) == 0 &&
               dlen == 17,
           "fat16: the long name's 8.3 alias resolves too");
        free(data);
        data = NULL;
        int r1 = vmm_fat_read_file(fs, "/EFI/debian/nothere", 100, &data, &dlen, &err);
        int e1 = err.code;
        int r2 = vmm_fat_read_file(fs, "/nodir/grub.cfg", 100, &data, &dlen, &err);
        ok(r1 == -1 && e1 == ENOENT && r2 == -1 && err.code == ENOENT && HAS(err.msg, "/nodir"),
           "fat16: missing file and directory: ENOENT (%s)", err.msg);
        ok(vmm_fat_read_file(fs, "/boot/vmlinuz-f", 4096, &data, &dlen, &err) == -1 &&
               err.code == EFBIG && HAS(err.msg, "/boot/vmlinuz-f") && HAS(err.msg, "100000"),
           "fat16: over the cap: EFBIG naming file and size (%s)", err.msg);
        ok(vmm_fat_read_file(fs, "/EFI", 4096, &data, &dlen, &err) == -1 &&
               HAS(err.msg, "directory"),
           "fat16: a directory is not read as a file (%s)", err.msg);
    }
    fat_close_disk(&fs, &d);

    /* --- hostile copies of the FAT16 ESP (buf), patched after mkfs */
    struct tgeom g = tgeom(buf);
    size_t eloop = tentry(buf, blen, "LOOP    BIN"), ebeyond = tentry(buf, blen, "BEYOND  BIN");
    size_t esmall = tentry(buf, blen, "SMALL   BIN"), edeb = tentry(buf, blen, "DEBIAN     ");
    ok(g.bits == 16 && g.cluster_bytes == 512 && eloop && ebeyond && esmall && edeb,
       "hostile: the FAT16 entries to patch found");
    uint8_t *h = malloc(blen);
    uint32_t cl;

    memcpy(h, buf, blen);
    p2v_put_u16le(h + 11, 0);
    make_esp_disk(img, h, blen, NULL);
    ok(!fat_open_disk(img, &d, &err) && HAS(err.msg, "bytes per sector 0"),
       "hostile: bytes per sector 0 refused (%s)", err.msg);
    diskfmt_close(d, NULL);
    is_int(find(img, "raw", &c, &err), -1, "hostile: bytes per sector 0: no configuration");
    ok(HAS(err.msg, "partition 1") && HAS(err.msg, "cannot be read") &&
           HAS(err.msg, "bytes per sector 0") && !HAS(err.msg, "kernel"),
       "hostile: the search says why the ESP was not read (%s)", err.msg);

    p2v_put_u16le(h + 11, 3000);
    make_esp_disk(img, h, blen, NULL);
    ok(!fat_open_disk(img, &d, &err) && HAS(err.msg, "bytes per sector 3000"),
       "hostile: bytes per sector 3000 refused (%s)", err.msg);
    diskfmt_close(d, NULL);

    memcpy(h, buf, blen);
    h[13] = 3;
    make_esp_disk(img, h, blen, NULL);
    ok(!fat_open_disk(img, &d, &err) && HAS(err.msg, "sectors per cluster 3"),
       "hostile: 3 sectors per cluster refused (%s)", err.msg);
    diskfmt_close(d, NULL);

    memcpy(h, buf, blen);
    p2v_put_u16le(h + 19, 0);
    p2v_put_u32le(h + 32, 0x7fffffff);
    make_esp_disk(img, h, blen, NULL);
    ok(!fat_open_disk(img, &d, &err) && HAS(err.msg, "larger than its partition"),
       "hostile: a file system larger than its partition refused (%s)", err.msg);
    diskfmt_close(d, NULL);

    memcpy(h, buf, blen);
    cl = tcluster(h, eloop);
    tset_fat(h, &g, cl, cl);
    make_esp_disk(img, h, blen, NULL);
    ok(fat_read(img, "/LOOP.BIN", 1 << 20, &data, &dlen, &err) == -1 && err.code == EINVAL &&
           HAS(err.msg, "loops") && HAS(err.msg, "/LOOP.BIN"),
       "hostile: a FAT entry pointing to itself: a loop (%s)", err.msg);
    free(data);

    memcpy(h, buf, blen);
    tset_fat(h, &g, cl + 1, cl);
    hostile_read(img, h, blen, "/LOOP.BIN", "loops", NULL,
                 "the second cluster pointing back to the first");

    memcpy(h, buf, blen);
    cl = tcluster(h, ebeyond);
    tset_fat(h, &g, cl, 0xfff0);
    hostile_read(img, h, blen, "/BEYOND.BIN", "65520", "beyond the cluster count",
                 "a FAT entry beyond the cluster count");

    memcpy(h, buf, blen);
    p2v_put_u16le(h + ebeyond + 26, 0xfff0);
    hostile_read(img, h, blen, "/BEYOND.BIN", "first cluster 65520", "beyond the cluster count",
                 "a directory entry's cluster beyond the count");

    memcpy(h, buf, blen);
    p2v_put_u32le(h + esmall + 28, 5000);
    hostile_read(img, h, blen, "/SMALL.BIN", "size 5000 is larger than its cluster chain", NULL,
                 "a directory entry size larger than its chain");

    memcpy(h, buf, blen);
    p2v_put_u32le(h + eloop + 28, 100);
    hostile_read(img, h, blen, "/LOOP.BIN", "longer than the directory entry size 100", NULL,
                 "a chain longer than its entry's size");

    memcpy(h, buf, blen);
    cl = tcluster(h, edeb);
    tset_fat(h, &g, cl, cl);
    make_esp_disk(img, h, blen, ext);
    is_int(find(img, "raw", &c, &err), -1, "hostile: /EFI/debian's chain loops: an error");
    ok(HAS(err.msg, "partition 1") && HAS(err.msg, "loops") && !HAS(err.msg, "kernel"),
       "hostile: ... naming the partition and the loop (%s)", err.msg);
    vmm_bootcfg_release(&c);
    free(h);
    free(buf);
    buf = NULL;

    /* --- FAT32: an Ubuntu-style stub on the ESP, the real grub.cfg on ext4: ext4 wins */
    snprintf(p, sizeof(p), "%s/boot/grub", ext);
    sh("mkdir -p '%s'", p);
    snprintf(p, sizeof(p), "%s/boot/grub/grub.cfg", ext);
    write_file(p, "menuentry 'ext4' {\n  linux /boot/vmlinuz-t root=/dev/sda2 from-ext4\n"
                 "  initrd /boot/initrd.img-t\n}\n");
    made = mkfat(fat, 32, 36864, 1, "32323232") == 0 &&
           sh("mmd -i '%s' ::/EFI ::/EFI/BOOT ::/EFI/ubuntu", fat) == 0 &&
           mput(fat, strcat(strcpy(p, host), "/grub-stub.cfg"), "/EFI/ubuntu/grub.cfg") == 0 &&
           read_all(fat, &buf, &blen) == 0 && make_esp_disk(img, buf, blen, ext) == 0;
    ok(made, "fat32: ESP stub + ext4 grub.cfg disk made");
    is_int(find(img, "raw", &c, &err), 0, "fat32 stub: found");
    ok(c.config_part == 2 && HAS(c.config_path, "/boot/grub/grub.cfg") &&
           HAS(c.cmdline, "from-ext4") && same(c.kernel, c.kernel_len, kern, klen),
       "fat32 stub: the ext4 /boot/grub/grub.cfg wins over the ESP stub (%s on %d)",
       c.config_path ? c.config_path : "null", c.config_part);
    vmm_bootcfg_release(&c);
    free(buf);
    buf = NULL;

    /* --- FAT32: a grub.cfg on the ESP naming no UUID; the kernel only on ext4 */
    sh("rm -rf '%s/boot/grub'", ext);
    made = mkfat(fat, 32, 36864, 1, "32323232") == 0 &&
           sh("mmd -i '%s' ::/EFI ::/EFI/BOOT", fat) == 0 &&
           mput(fat, strcat(strcpy(p, host), "/grub-nosearch.cfg"), "/EFI/BOOT/grub.cfg") == 0 &&
           read_all(fat, &buf, &blen) == 0 && make_esp_disk(img, buf, blen, ext) == 0;
    ok(made, "fat32: ESP grub.cfg + ext4 kernel disk made");
    is_int(find(img, "raw", &c, &err), 0, "fat32: found");
    ok(c.config_part == 1 && HAS(c.config_path, "/EFI/BOOT/grub.cfg") && c.kernel_part == 2 &&
           same(c.kernel, c.kernel_len, kern, klen) && same(c.initrd, c.initrd_len, init, ilen),
       "fat32: no search UUID: the kernel and initrd found on ext4 after the ESP (%d)",
       c.kernel_part);
    vmm_bootcfg_release(&c);
    fs = fat_open_disk(img, &d, &err);
    ok(fs && vmm_fat_bits(fs) == 32 && strcmp(vmm_fat_uuid(fs), "3232-3232") == 0,
       "fat32: opened as FAT32 (%s)", fs ? vmm_fat_uuid(fs) : err.msg);
    fat_close_disk(&fs, &d);

    /* its root directory's chain looping */
    g = tgeom(buf);
    uint32_t root = p2v_get_u32le(buf + 44);
    tset_fat(buf, &g, root, root);
    make_esp_disk(img, buf, blen, NULL);
    fs = fat_open_disk(img, &d, &err);
    ok(fs && vmm_fat_list(fs, "/", &ents, &n, &err) == -1 && HAS(err.msg, "loops"),
       "fat32: a root directory chain loop (%s)", err.msg);
    fat_close_disk(&fs, &d);
    free(buf);
    buf = NULL;

    /* nothing to boot on either: the error says where it looked */
    made = mkfat(fat, 32, 36864, 1, "32323232") == 0 &&
           sh("mmd -i '%s' ::/EFI ::/EFI/BOOT", fat) == 0 && read_all(fat, &buf, &blen) == 0 &&
           make_esp_disk(img, buf, blen, ext) == 0;
    is_int(find(img, "raw", &c, &err), -1, "no configuration on ESP nor ext4: an error");
    ok(HAS(err.msg, "no boot loader configuration found") &&
           HAS(err.msg, "ext2/3/4 partition 2") && HAS(err.msg, "/EFI/*/grub.cfg") &&
           HAS(err.msg, "FAT partition 1") && !HAS(err.msg, "not searched"),
       "... naming both partitions (%s)", err.msg);
    vmm_bootcfg_release(&c);

out:
    free(buf);
    free(kern);
    free(init);
}

int main(void)
{
    struct vmm_bootcfg c;
    struct p2v_err err;
    char *bios = fixture("mini-bios"), *uefi = fixture("mini-uefi"),
         *deb = fixture("debian12-bios");
    bool have_mke2fs = system("command -v mke2fs >/dev/null 2>&1") == 0;
    bool have_qemu_img = system("command -v qemu-img >/dev/null 2>&1") == 0;

    if (!have_mke2fs && !bios && !deb)
        skip_all("no fixture in /var/tmp/p2vkit-fixtures and no mke2fs");
    plan(38 + FAT_TESTS);
    snprintf(tmp, sizeof(tmp), "/tmp/test-bootcfg.XXXXXX");
    if (!mkdtemp(tmp))
        return 99;

    /* --- mini-bios: MBR, extlinux */
    if (!bios) {
        for (int i = 0; i < 9; i++)
            ok(1, "# SKIP no mini-bios fixture");
    } else {
        is_int(find(bios, "raw", &c, &err), 0, "mini-bios: found");
        is_str(c.partition_table, "mbr", "mini-bios: mbr");
        is_str(c.loader, "extlinux", "mini-bios: extlinux");
        is_str(c.config_path, "/boot/extlinux/extlinux.conf", "mini-bios: config path");
        ok(is_bzimage(&c), "mini-bios: kernel is a bzImage ('HdrS' at 0x202, %zu bytes)",
           c.kernel_len);
        ok(c.initrd && c.initrd_len > 0, "mini-bios: initrd read (%zu bytes)", c.initrd_len);
        ok(HAS(c.cmdline, "root=/dev/sda1"), "mini-bios: cmdline '%s'", c.cmdline);
        is_int(c.kernel_part, 1, "mini-bios: kernel on partition 1");
        is_str(c.kernel_path, "/boot/vmlinuz-6.1.0-56-amd64", "mini-bios: kernel path");
        size_t klen = c.kernel_len, ilen = c.initrd_len;
        vmm_bootcfg_release(&c);

        /* the same through a qcow2 copy */
        char q[300];
        snprintf(q, sizeof(q), "%s/bios.qcow2", tmp);
        if (have_qemu_img && sh("qemu-img convert -O qcow2 '%s' '%s'", bios, q) == 0) {
            is_int(find(q, NULL, &c, &err), 0, "mini-bios qcow2: found");
            ok(c.kernel_len == klen && c.initrd_len == ilen && is_bzimage(&c),
               "mini-bios qcow2: same kernel and initrd sizes");
            vmm_bootcfg_release(&c);
            unlink(q);
        } else {
            ok(1, "# SKIP no qemu-img");
            ok(1, "# SKIP no qemu-img");
        }
    }
    if (!bios) {
        ok(1, "# SKIP no mini-bios fixture");
        ok(1, "# SKIP no mini-bios fixture");
    }

    /* --- mini-uefi: GPT; its grub.cfg is on the FAT32 ESP only, the kernel on ext4 p2 */
    if (!uefi) {
        for (int i = 0; i < 3; i++)
            ok(1, "# SKIP no mini-uefi fixture");
    } else {
        is_int(find(uefi, "raw", &c, &err), 0, "mini-uefi: found on the ESP");
        ok(c.config_part == 1 && HAS(c.config_path, "/EFI/BOOT/grub.cfg") &&
               HAS(c.partition_table, "gpt"),
           "mini-uefi: gpt, partition 1: %s", c.config_path ? c.config_path : "null");
        ok(c.kernel_part == 2 && is_bzimage(&c) && c.initrd_len > 0 &&
               HAS(c.cmdline, "root=/dev/sda2"),
           "mini-uefi: the kernel (a bzImage) and initrd from partition 2 by the grub search "
           "UUID (%s)", c.kernel_path ? c.kernel_path : "null");
        vmm_bootcfg_release(&c);
    }

    /* --- debian12-bios: MBR, hand-written grub.cfg, /boot/vmlinuz symlinks */
    if (!deb) {
        for (int i = 0; i < 7; i++)
            ok(1, "# SKIP no debian12-bios fixture");
    } else {
        is_int(find(deb, "raw", &c, &err), 0, "debian12: found");
        is_str(c.loader, "grub", "debian12: grub");
        is_str(c.config_path, "/boot/grub/grub.cfg", "debian12: config path");
        is_str(c.kernel_path, "/boot/vmlinuz-6.1.0-50-amd64",
               "debian12: /boot/vmlinuz followed to the Debian kernel");
        ok(is_bzimage(&c), "debian12: kernel is a bzImage (%zu bytes)", c.kernel_len);
        ok(c.initrd_len > 1000000, "debian12: initrd %zu bytes", c.initrd_len);
        ok(HAS(c.cmdline, "root=UUID=d12b1050-5eed-4d12-8b10-500000000001"),
           "debian12: cmdline '%s'", c.cmdline);
        vmm_bootcfg_release(&c);
    }

    /* --- synthetic images */
    char img[300], dir[300], p[400];
    snprintf(img, sizeof(img), "%s/disk.img", tmp);
    snprintf(dir, sizeof(dir), "%s/root", tmp);

    /* zero-filled: no partition table */
    FILE *f = fopen(img, "wb");
    ok(f && fclose(f) == 0 && truncate(img, 1 << 20) == 0, "zero disk made");
    is_int(find(img, "raw", &c, &err), -1, "zero disk: error");
    ok(HAS(err.msg, "no partition table") && HAS(err.msg, "0x1fe"), "zero disk: says so (%s)",
       err.msg);

    if (!have_mke2fs) {
        for (int i = 0; i < 14; i++)
            ok(1, "# SKIP no mke2fs");
        goto done;
    }
    /* a broken grub.cfg */
    sh("mkdir -p '%s/boot/grub'", dir);
    snprintf(p, sizeof(p), "%s/boot/grub/grub.cfg", dir);
    write_file(p, "set default=0\nmenuentry 'x' {\n  linux /boot/vmlinuz\n}\n}\n");
    ok(make_disk(img, dir) == 0, "ext4 disk with a broken grub.cfg made");
    is_int(find(img, "raw", &c, &err), -1, "broken grub.cfg: error");
    ok(HAS(err.msg, "/boot/grub/grub.cfg") && HAS(err.msg, "partition 1") &&
           HAS(err.msg, "line 5"),
       "broken grub.cfg: names file, partition and line (%s)", err.msg);

    /* a grub.cfg naming a missing kernel */
    write_file(p, "menuentry 'x' {\n  linux /boot/vmlinuz-x root=/dev/sda1\n"
                  "  initrd /boot/initrd-x\n}\n");
    ok(make_disk(img, dir) == 0, "ext4 disk with a grub.cfg naming a missing kernel made");
    is_int(find(img, "raw", &c, &err), -1, "missing kernel: error");
    ok(HAS(err.msg, "kernel '/boot/vmlinuz-x'") && HAS(err.msg, "not found on partition 1"),
       "missing kernel: named (%s)", err.msg);

    /* the kernel there, the initrd missing */
    snprintf(p, sizeof(p), "%s/boot/vmlinuz-x", dir);
    write_file(p, "not really a kernel");
    ok(make_disk(img, dir) == 0, "disk with kernel but no initrd made");
    is_int(find(img, "raw", &c, &err), -1, "missing initrd: error");
    ok(HAS(err.msg, "initrd '/boot/initrd-x'") && HAS(err.msg, "not found"),
       "missing initrd: named (%s)", err.msg);

    /* separate /boot layout: config at /extlinux/extlinux.conf, relative paths and a
     * symlink; "/boot/..." in the file is looked up relative to this fs */
    sh("rm -rf '%s' && mkdir -p '%s/extlinux' '%s/k'", dir, dir, dir);
    snprintf(p, sizeof(p), "%s/extlinux/extlinux.conf", dir);
    write_file(p, "DEFAULT l\nLABEL l\n  KERNEL ../k/vmlinuz\n  INITRD /boot/initrd.img\n"
                  "  APPEND root=LABEL=r\n");
    snprintf(p, sizeof(p), "%s/k/vmlinuz-1", dir);
    write_file(p, "KERNEL-BYTES");
    snprintf(p, sizeof(p), "%s/initrd.img-1", dir);
    write_file(p, "INITRD");
    sh("ln -s vmlinuz-1 '%s/k/vmlinuz' && ln -s /initrd.img-1 '%s/initrd.img'", dir, dir);
    ok(make_disk(img, dir) == 0, "separate-/boot disk made");
    is_int(find(img, "raw", &c, &err), 0, "separate /boot: found");
    is_str(c.kernel_path, "/extlinux/../k/vmlinuz-1", "relative kernel path, link followed");
    ok(c.kernel_len == 12 && memcmp(c.kernel, "KERNEL-BYTES", 12) == 0, "kernel bytes");
    ok(c.initrd_len == 6 && c.initrd_path && strcmp(c.initrd_path, "/initrd.img-1") == 0,
       "/boot/initrd.img found as /initrd.img on a separate /boot (%s)",
       c.initrd_path ? c.initrd_path : "null");
    vmm_bootcfg_release(&c);
    vmm_bootcfg_release(&c);

done:
    fat_tests();
    sh("rm -rf '%s'", tmp);
    free(bios);
    free(uefi);
    free(deb);
    return exit_status();
}
