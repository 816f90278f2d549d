/* Unit tests of driver-inject's device names and configuration rewriter: every file kind
 * (fstab, crypttab, grub.cfg, /etc/default/grub, menu.lst, extlinux.conf, resume), with
 * comments, spacing and lines that name something else left byte for byte. */
#include <string.h>

#include "di-int.h"
#include "tap.h"

/* a fixed table: sda1/sda2/sdb1 have UUIDs, sda3 has none (→ /dev/vda3), others unknown */
static const char *lookup(void *opaque, const char *dev)
{
    int *calls = opaque;
    (*calls)++;
    if (!strcmp(dev, "/dev/sda1") || !strcmp(dev, "/dev/hda1") || !strcmp(dev, "/dev/cciss/c0d0p1"))
        return "UUID=1111-aaaa";
    if (!strcmp(dev, "/dev/sda2"))
        return "UUID=2222-bbbb";
    if (!strcmp(dev, "/dev/sdb1"))
        return "UUID=3333-cccc";
    if (!strcmp(dev, "/dev/sda3"))
        return "/dev/vda3";
    return NULL;
}

static void check(enum di_conf_kind kind, const char *in, const char *want, size_t n_want,
                  const char *name)
{
    struct di_rewrite r;
    struct p2v_err err = {0};
    int calls = 0;
    int rc = di_rewrite_devices(kind, in, strlen(in), lookup, &calls, &r, &err);
    ok(rc == 0, "%s: rewrites (%s)", name, rc ? err.msg : "ok");
    if (rc)
        return;
    is_str(r.text, want, "%s: text", name);
    is_int(r.n_changes, n_want, "%s: %zu changed line(s)", name, n_want);
    is_int(r.len, strlen(want), "%s: length", name);
    di_rewrite_release(&r);
}

static void test_devnames(void)
{
    struct di_devname d;
    char buf[32];
    ok(di_devname_parse("/dev/sda1", 9, &d) == 0 && d.disk == 0 && d.part == 1, "sda1");
    ok(di_devname_parse("/dev/hdc", 8, &d) == 0 && d.disk == 2 && d.part == 0, "hdc: disk 2");
    ok(di_devname_parse("/dev/sdab12", 11, &d) == 0 && d.disk == 27 && d.part == 12, "sdab12: disk 27");
    ok(di_devname_parse("/dev/cciss/c0d1p3", 17, &d) == 0 && d.disk == 1 && d.part == 3,
       "cciss/c0d1p3: disk 1 part 3");
    ok(di_devname_parse("/dev/cciss/c1d0", 15, &d) == 0 && d.disk == 0 && d.part == 0, "cciss/c1d0");
    ok(di_devname_parse("/dev/sda0", 9, &d) < 0, "sda0 refused");
    ok(di_devname_parse("/dev/sda01", 10, &d) < 0, "sda01 refused");
    ok(di_devname_parse("/dev/vda1", 9, &d) < 0, "vda1 is not ours to change");
    ok(di_devname_parse("/dev/sda1x", 10, &d) < 0, "sda1x refused");
    ok(di_devname_parse("/dev/sd", 7, &d) < 0, "sd refused");
    ok(di_devname_parse("/dev/mapper/vg-root", 19, &d) < 0, "mapper refused");
    ok(di_devname_parse("/dev/cciss/c0d0p", 16, &d) < 0, "cciss without partition number");
    d = (struct di_devname){1, 2};
    di_devname_virtio(&d, buf, sizeof buf);
    is_str(buf, "/dev/vdb2", "virtio name of disk 1 part 2");
    d = (struct di_devname){27, 0};
    di_devname_virtio(&d, buf, sizeof buf);
    is_str(buf, "/dev/vdab", "virtio name of disk 27");
}

int main(void)
{
    test_devnames();

    check(DI_CONF_FSTAB,
          "# /etc/fstab: /dev/sda1 was the root\n"
          "/dev/sda1       /             ext4   errors=remount-ro  0      1\n"
          "\t/dev/sda2\tnone\tswap\tsw\t0 0\n"
          "/dev/sda3 /srv ext4 defaults 0 2\n"
          "/dev/sdc1 /mnt ext4 defaults 0 2\n"
          "UUID=9 /boot ext4 defaults 0 2\n"
          "tmpfs /tmp tmpfs defaults,x=/dev/sda1 0 0\n"
          "/dev/sda1x /x ext4 defaults 0 0\n"
          "/dev/cciss/c0d0p1 /c ext4 defaults 0 0",
          "# /etc/fstab: /dev/sda1 was the root\n"
          "UUID=1111-aaaa       /             ext4   errors=remount-ro  0      1\n"
          "\tUUID=2222-bbbb\tnone\tswap\tsw\t0 0\n"
          "/dev/vda3 /srv ext4 defaults 0 2\n"
          "/dev/sdc1 /mnt ext4 defaults 0 2\n"
          "UUID=9 /boot ext4 defaults 0 2\n"
          "tmpfs /tmp tmpfs defaults,x=/dev/sda1 0 0\n"
          "/dev/sda1x /x ext4 defaults 0 0\n"
          "UUID=1111-aaaa /c ext4 defaults 0 0",
          4, "fstab");

    check(DI_CONF_CRYPTTAB,
          "# <target> <source> <key> <options>\n"
          "cryptroot /dev/sda2 none luks\n"
          "/dev/sda1 /dev/sdc1 none luks\n",
          "# <target> <source> <key> <options>\n"
          "cryptroot UUID=2222-bbbb none luks\n"
          "/dev/sda1 /dev/sdc1 none luks\n",
          1, "crypttab (second field only)");

    check(DI_CONF_GRUB_CFG,
          "set root='hd0,msdos1'\n"
          "menuentry 'Debian' {\n"
          "\tlinux\t/boot/vmlinuz-6.1 root=/dev/sda1 ro quiet resume=/dev/sda2\n"
          "\tinitrd\t/boot/initrd.img-6.1\n"
          "}\n"
          "# linux /boot/vmlinuz root=/dev/sda1\n"
          "\tlinux16 /vmlinuz root=/dev/sda3 noroot=/dev/sda1 myroot=/dev/sda1\n"
          "\tlinux /vmlinuz root=UUID=x rootdelay=/dev/sda1\n"
          "echo root=/dev/sda1\n",
          "set root='hd0,msdos1'\n"
          "menuentry 'Debian' {\n"
          "\tlinux\t/boot/vmlinuz-6.1 root=UUID=1111-aaaa ro quiet resume=UUID=2222-bbbb\n"
          "\tinitrd\t/boot/initrd.img-6.1\n"
          "}\n"
          "# linux /boot/vmlinuz root=/dev/sda1\n"
          "\tlinux16 /vmlinuz root=/dev/vda3 noroot=/dev/sda1 myroot=/dev/sda1\n"
          "\tlinux /vmlinuz root=UUID=x rootdelay=/dev/sda1\n"
          "echo root=/dev/sda1\n",
          2, "grub.cfg");

    check(DI_CONF_DEFAULT_GRUB,
          "GRUB_DEFAULT=0\n"
          "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet resume=/dev/sda2\"\n"
          "GRUB_CMDLINE_LINUX=\"root=/dev/sda1 console=ttyS0\"\n"
          "#GRUB_CMDLINE_LINUX=\"root=/dev/sda1\"\n"
          "GRUB_DISABLE_LINUX_UUID=true\n"
          "GRUB_CMDLINE_XEN=\"root=/dev/sda1\"\n",
          "GRUB_DEFAULT=0\n"
          "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet resume=UUID=2222-bbbb\"\n"
          "GRUB_CMDLINE_LINUX=\"root=UUID=1111-aaaa console=ttyS0\"\n"
          "#GRUB_CMDLINE_LINUX=\"root=/dev/sda1\"\n"
          "GRUB_DISABLE_LINUX_UUID=true\n"
          "GRUB_CMDLINE_XEN=\"root=/dev/sda1\"\n",
          2, "/etc/default/grub");

    check(DI_CONF_MENU_LST,
          "default 0\n"
          "title Debian\n"
          "root (hd0,0)\n"
          "kernel /boot/vmlinuz root=/dev/hda1 ro\n"
          "initrd /boot/initrd.img\n"
          "# kernel /boot/vmlinuz root=/dev/hda1 ro\n",
          "default 0\n"
          "title Debian\n"
          "root (hd0,0)\n"
          "kernel /boot/vmlinuz root=UUID=1111-aaaa ro\n"
          "initrd /boot/initrd.img\n"
          "# kernel /boot/vmlinuz root=/dev/hda1 ro\n",
          1, "menu.lst");

    check(DI_CONF_EXTLINUX,
          "# p2vkit mini\n"
          "DEFAULT linux\n"
          "LABEL linux\n"
          "    KERNEL /boot/vmlinuz\n"
          "    APPEND root=/dev/sda1 console=ttyS0,115200 rw\n"
          "  append initrd=/boot/initrd.img root=/dev/sdb1\r\n"
          "    APPEND root=/dev/sdz9\n",
          "# p2vkit mini\n"
          "DEFAULT linux\n"
          "LABEL linux\n"
          "    KERNEL /boot/vmlinuz\n"
          "    APPEND root=UUID=1111-aaaa console=ttyS0,115200 rw\n"
          "  append initrd=/boot/initrd.img root=UUID=3333-cccc\r\n"
          "    APPEND root=/dev/sdz9\n",
          2, "extlinux.conf (APPEND any case, CRLF kept, unknown device kept)");

    check(DI_CONF_RESUME, "RESUME=/dev/sda2\n# RESUME=/dev/sda2\n",
          "RESUME=UUID=2222-bbbb\n# RESUME=/dev/sda2\n", 1, "initramfs-tools resume");
    check(DI_CONF_RESUME, "RESUME=\"/dev/sda2\"\n", "RESUME=\"UUID=2222-bbbb\"\n", 1,
          "resume, quoted");
    check(DI_CONF_FSTAB, "", "", 0, "empty file");
    check(DI_CONF_FSTAB, "UUID=1111-aaaa / ext4 defaults 0 1\n",
          "UUID=1111-aaaa / ext4 defaults 0 1\n", 0, "already by UUID: unchanged (idempotent)");

    /* the change list carries line numbers and both versions */
    {
        struct di_rewrite r;
        int calls = 0;
        const char *t = "# x\n/dev/sda2 none swap sw 0 0\n";
        ok(di_rewrite_devices(DI_CONF_FSTAB, t, strlen(t), lookup, &calls, &r, NULL) == 0 &&
               r.n_changes == 1 && r.changes[0].line == 2 &&
               !strcmp(r.changes[0].before, "/dev/sda2 none swap sw 0 0") &&
               !strcmp(r.changes[0].after, "UUID=2222-bbbb none swap sw 0 0"),
           "change record: line 2, before and after");
        di_rewrite_release(&r);
    }
    return exit_status();
}
