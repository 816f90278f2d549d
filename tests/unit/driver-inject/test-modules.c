/* Unit tests of driver-inject's module handling: names from paths (.ko, .ko.xz, .ko.zst,
 * dashes), modules.dep parsing, the dependency closure in load order, modules.builtin,
 * and the policy that refuses Windows and other systems. */
#include <string.h>

#include "di-int.h"
#include "tap.h"

/* a modules.dep as depmod writes it for Debian 6.1 (virtio part), with compressed names */
static const char dep[] =
    "kernel/drivers/virtio/virtio.ko:\n"
    "kernel/drivers/virtio/virtio_ring.ko:\n"
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n"
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n"
    "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko "
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko "
    "kernel/drivers/virtio/virtio.ko\n"
    "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"
    "kernel/drivers/scsi/scsi_common.ko.xz:\n"
    "kernel/drivers/scsi/scsi_mod.ko.xz: kernel/drivers/scsi/scsi_common.ko.xz\n"
    "kernel/drivers/scsi/virtio_scsi.ko.zst: kernel/drivers/scsi/scsi_mod.ko.xz "
    "kernel/drivers/scsi/scsi_common.ko.xz kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"
    "kernel/net/core/failover.ko:\n"
    "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
    "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko "
    "kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"
    "kernel/drivers/ata/ata-piix.ko:\n";

static int pos(const char **v, size_t n, const char *path)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i], path))
            return (int)i;
    return -1;
}

int main(void)
{
    char b[64];
    struct di_moddep *m = NULL;
    struct p2v_err err = {0};
    const char **paths = NULL;
    size_t n = 0;

    di_modname("kernel/drivers/block/virtio_blk.ko", b, sizeof b);
    is_str(b, "virtio_blk", "name of .ko");
    di_modname("kernel/drivers/scsi/virtio_scsi.ko.zst", b, sizeof b);
    is_str(b, "virtio_scsi", "name of .ko.zst");
    di_modname("x/scsi_mod.ko.xz", b, sizeof b);
    is_str(b, "scsi_mod", "name of .ko.xz");
    di_modname("ata-piix.ko", b, sizeof b);
    is_str(b, "ata_piix", "dashes become underscores");

    ok(di_moddep_parse(dep, sizeof dep - 1, &m, &err) == 0, "parse modules.dep (%s)", err.msg);
    is_str(di_moddep_path(m, "virtio_scsi"), "kernel/drivers/scsi/virtio_scsi.ko.zst", "path of virtio_scsi");
    is_str(di_moddep_path(m, "ata-piix"), "kernel/drivers/ata/ata-piix.ko", "look-up by dashed name");
    ok(di_moddep_path(m, "virtio_console") == NULL, "virtio_console not listed");

    const char *want[] = {"virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "virtio_console"};
    ok(di_moddep_closure(m, want, 5, &paths, &n, &err) == 0, "closure (%s)", err.msg);
    is_int(n, 12, "closure: 12 modules (virtio_console absent, each once)");
    ok(paths && paths[n] == NULL, "NULL-terminated");
    bool order = true;
    /* every module after each of its dependencies */
    static const char *const pairs[][2] = {
        {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_pci.ko"},
        {"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/block/virtio_blk.ko"},
        {"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci.ko"},
        {"kernel/drivers/scsi/scsi_common.ko.xz", "kernel/drivers/scsi/scsi_mod.ko.xz"},
        {"kernel/drivers/scsi/scsi_mod.ko.xz", "kernel/drivers/scsi/virtio_scsi.ko.zst"},
        {"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko"},
        {"kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(pairs); i++) {
        int a = pos(paths, n, pairs[i][0]), c = pos(paths, n, pairs[i][1]);
        if (a < 0 || c < 0 || a > c) {
            order = false;
            diag("%s (%d) must come before %s (%d)", pairs[i][0], a, pairs[i][1], c);
        }
    }
    ok(order, "load order: dependencies first");
    ok(pos(paths, n, "kernel/drivers/ata/ata-piix.ko") < 0, "unrelated module not pulled in");
    free(paths);
    di_moddep_free(m);

    /* a cycle is refused, not looped on */
    static const char cyc[] = "a.ko: b.ko\nb.ko: a.ko\n";
    ok(di_moddep_parse(cyc, sizeof cyc - 1, &m, &err) == 0, "parse a cyclic modules.dep");
    const char *wa[] = {"a"};
    ok(di_moddep_closure(m, wa, 1, &paths, &n, &err) < 0 && strstr(err.msg, "cycle"), "cycle refused (%s)", err.msg);
    di_moddep_free(m);
    static const char bad[] = "no colon here\n";
    ok(di_moddep_parse(bad, sizeof bad - 1, &m, &err) < 0, "a line without 'path:' refused (%s)", err.msg);

    static const char builtin[] = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n"
                                  "kernel/drivers/char/virtio_console.ko\n";
    ok(di_modbuiltin_has(builtin, sizeof builtin - 1, "virtio_console"), "modules.builtin: virtio_console built in");
    ok(!di_modbuiltin_has(builtin, sizeof builtin - 1, "virtio_blk"), "modules.builtin: virtio_blk not");
    ok(!di_modbuiltin_has(builtin, sizeof builtin - 1, "virtio_"), "modules.builtin: no prefix match");

    /* module lists: /conf/modules of an initrd, /etc/initramfs-tools/modules */
    {
        static const char *const names[] = {"virtio_pci", "virtio_blk", "virtio_net", "virtio_blk"};
        static const char conf[] = "# comment\ndm_mod\n  virtio_pci opt=1\nvirtio_blkx";
        struct p2v_buf o = P2V_BUF_INIT;
        is_int(di_modlist_merge(conf, sizeof conf - 1, names, 4, NULL, &o), 2, "merge: 2 names added (one listed with options, one twice)");
        is_str(p2v_buf_cstr(&o), "# comment\ndm_mod\n  virtio_pci opt=1\nvirtio_blkx\nvirtio_blk\nvirtio_net\n",
               "merge: text kept, final newline supplied, names one a line");
        p2v_buf_release(&o);
        is_int(di_modlist_merge("", 0, names, 2, "# hdr", &o), 2, "merge into nothing: 2 added");
        is_str(p2v_buf_cstr(&o), "# hdr\nvirtio_pci\nvirtio_blk\n", "merge into nothing: header, then the names");
        p2v_buf_release(&o);
        static const char full[] = "virtio_pci\nvirtio_blk\n";
        is_int(di_modlist_merge(full, sizeof full - 1, names, 2, "# hdr", &o), 0, "merge: nothing to add");
        is_str(p2v_buf_cstr(&o), full, "merge: nothing to add, text unchanged (no header)");
        p2v_buf_release(&o);
        static const char hash[] = "#virtio_pci\n";
        is_int(di_modlist_merge(hash, sizeof hash - 1, names, 1, NULL, &o), 1, "merge: a commented-out name is not listed");
        p2v_buf_release(&o);
    }

    char why[256];
    is_int(di_os_policy("windows", "windows", why, sizeof why), DI_WINDOWS, "Windows refused");
    is_str(why, "Windows guests are not supported yet", "Windows message");
    is_int(di_os_policy("freebsd", "freebsd", why, sizeof why), DI_UNSUPPORTED_OS, "FreeBSD refused");
    ok(strstr(why, "freebsd") != NULL, "the message names the type (%s)", why);
    is_int(di_os_policy("hurd", NULL, why, sizeof why), DI_UNSUPPORTED_OS, "Hurd refused");
    is_int(di_os_policy(NULL, NULL, why, sizeof why), DI_UNSUPPORTED_OS, "unknown type refused");
    is_int(di_os_policy("linux", "debian", why, sizeof why), DI_OK, "Linux accepted");
    return exit_status();
}
