/* test-bootcfg.c: vmm_bootcfg_find() (vmm/bootcfg.c, ext2io.c, bootparse.c) on the real
 * fixtures in /var/tmp/p2vkit-fixtures (each part skipped when its fixture is absent), on
 * a qcow2 copy of one (through diskfmt), and on synthetic images made here: no partition
 * table, an ext4 partition (mke2fs -d, no mount) with a broken grub.cfg, one whose grub.cfg
 * names a missing kernel, and one with a separate-/boot layout and symlinks. */
#include <errno.h>
#include <glob.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    snprintf(pat, sizeof(pat), "/var/tmp/p2vkit-fixtures/%s-*/disk.img", name);
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
    plan(38);
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

    /* --- mini-uefi: GPT; its grub.cfg is on the vfat ESP only, which we do not read */
    if (!uefi) {
        for (int i = 0; i < 3; i++)
            ok(1, "# SKIP no mini-uefi fixture");
    } else {
        is_int(find(uefi, "raw", &c, &err), -1, "mini-uefi: no configuration on ext4");
        ok(HAS(err.msg, "no boot loader configuration found") && HAS(err.msg, "partition 2"),
           "mini-uefi: the gpt was read and partition 2 searched (%s)", err.msg);
        ok(HAS(err.msg, "vfat") && HAS(err.msg, "partition 1"),
           "mini-uefi: the error names the vfat ESP");
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
    sh("rm -rf '%s'", tmp);
    free(bios);
    free(uefi);
    free(deb);
    return exit_status();
}
