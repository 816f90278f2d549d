/* test-verdict: the console scanner decides from what real guests print. */
#include <string.h>

#include "core.h"
#include "tap.h"

static enum vmm_result feed_all(const char *expect, const char *text, bool *done, struct vmm_scan *out)
{
    struct vmm_scan s;
    if (vmm_scan_init(&s, expect, NULL) < 0)
        return VMM_RESULT_ENGINE_ERROR;
    /* byte by byte, as a UART delivers it */
    bool d = false;
    for (size_t i = 0; text[i]; i++)
        d = vmm_scan_feed(&s, (const uint8_t *)text + i, 1);
    *done = d;
    if (!d)
        vmm_scan_finish(&s, VMM_RESULT_TIMEOUT);
    enum vmm_result r = s.result;
    if (out)
        memcpy(out, &s, sizeof s);
    vmm_scan_release(&s);
    return r;
}

int main(void)
{
    plan(22);
    bool done;
    struct vmm_scan s;

    const char *mini_ok =
        "[    0.000000] Linux version 6.1.0-56-amd64\r\n"
        "[    1.2] virtio_blk virtio0: [vda] 524288 512-byte logical blocks\r\n"
        "[    1.3]  vda: vda1 vda2\r\n"
        "[    1.9] EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.\r\n"
        "P2VKIT-MINI-BIOS-READY root=UUID=6d696e69\r\n"
        "\r\np2v-mini-bios login: ";
    is_int(feed_all(NULL, mini_ok, &done, &s), VMM_RESULT_SUCCESS, "marker + vda1 mount: success");
    ok(done, "decided while running");
    is_str(s.root_device, "vda1", "root device vda1");
    ok(strstr(s.matched, "P2VKIT-MINI-BIOS-READY") != NULL, "matched line is the marker");

    const char *login_only =
        "[    2.0] EXT4-fs (vda1): mounted filesystem 1234 ro with ordered data mode.\n"
        "\x1b[0;32m  OK  \x1b[0m] Started getty\n"
        "Debian GNU/Linux 12 p2v-debian12 ttyS0\n\np2v-debian12 login: ";
    is_int(feed_all(NULL, login_only, &done, &s), VMM_RESULT_SUCCESS, "login prompt without newline");
    ok(strstr(s.matched, "login:") != NULL, "the partial line matched");

    const char *initramfs_missing =
        "[    1.0] ata_piix 0000:00:01.1: version 2.13\n"
        "mini-initramfs: ALERT! root device /dev/sda1 not found\n";
    is_int(feed_all(NULL, initramfs_missing, &done, &s), VMM_RESULT_ROOT_NOT_FOUND,
           "mini initramfs ALERT: root not found");
    ok(strstr(s.failure_line, "/dev/sda1") != NULL, "failure line kept");

    const char *debian_missing =
        "Begin: Waiting for root file system ... Begin: Running /scripts/local-block ... done.\n"
        "Gave up waiting for root file system device.  Common problems:\n"
        "ALERT!  UUID=0123 does not exist.  Dropping to a shell!\n";
    is_int(feed_all(NULL, debian_missing, &done, NULL), VMM_RESULT_ROOT_NOT_FOUND,
           "initramfs-tools: gave up waiting");

    const char *vfs_panic =
        "[    3.0] VFS: Cannot open root device \"sda1\" or unknown-block(0,0): error -6\n"
        "[    3.0] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n";
    is_int(feed_all(NULL, vfs_panic, &done, NULL), VMM_RESULT_ROOT_NOT_FOUND,
           "VFS unable to mount root: root not found");

    const char *panic = "[    0.5] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n";
    is_int(feed_all(NULL, panic, &done, &s), VMM_RESULT_PANIC, "other panic: kernel panic");
    ok(strstr(s.failure_line, "Attempted to kill init") != NULL, "panic line kept");

    const char *no_virtio =
        "[    2.0] EXT4-fs (sda1): mounted filesystem with ordered data mode.\n"
        "host login: ";
    is_int(feed_all(NULL, no_virtio, &done, NULL), VMM_RESULT_ROOT_NOT_FOUND,
           "login without a virtio root: not a success");

    const char *partial = "[    1.0] Linux version 6.1\n[    1.1] booting";
    is_int(feed_all(NULL, partial, &done, &s), VMM_RESULT_TIMEOUT, "nothing decisive: timeout");
    ok(!done, "not decided while running");
    is_int((int)s.last_n, 2, "the partial last line is kept at the end");

    is_int(feed_all("HELLO-[0-9]+", "[ 1.0] EXT4-fs (vdb): mounted filesystem x\nsay HELLO-42\n",
                    &done, &s),
           VMM_RESULT_SUCCESS, "custom pattern");
    is_str(s.root_device, "vdb", "whole-disk root device");

    struct vmm_scan bad;
    struct p2v_err err = {0};
    ok(vmm_scan_init(&bad, "(unclosed", &err) < 0 && strstr(err.msg, "(unclosed"),
       "a bad pattern is refused, named: %s", err.msg);

    /* a very long line does not overflow and still counts */
    char longline[3000];
    memset(longline, 'x', sizeof longline - 1);
    longline[sizeof longline - 1] = 0;
    feed_all(NULL, longline, &done, &s);
    ok(s.last_n >= 5, "long line split into bounded lines (%u)", s.last_n);

    const char *xfs = "XFS (vda2): Mounting V5 Filesystem\nxfs-host login: ";
    is_int(feed_all(NULL, xfs, &done, &s), VMM_RESULT_SUCCESS, "xfs root on vda2");
    is_str(s.root_device, "vda2", "xfs device");
    return exit_status();
}
