/* libdriverinject: make a captured Linux system boot on virtio hardware. This header is
 * the library's whole contract (the server calls it; `p2v-inject` is its command line).
 *
 * One call, di_inject(), opens a disk image with libguestfs (one appliance launch),
 * inspects the operating system on it, plans every change, and then (unless dry_run)
 * applies them:
 *  - every installed kernel's initramfs gets virtio_pci, virtio_blk, virtio_scsi,
 *    virtio_net, virtio_console and their dependencies, through the guest's own tool
 *    (initramfs-tools, dracut, mkinitcpio) or, for an initramfs no tool built, a cpio
 *    archive appended to it (a wrapper /init loads the modules, then runs the original);
 *  - device names that change on virtio (/dev/sd*, /dev/hd*, /dev/cciss/...) in fstab,
 *    crypttab, the boot loader's configuration and resume settings become UUID=...;
 *  - hardware-bound leftovers (persistent-net udev rules; VMware tools on request) go.
 * Nothing is written before the whole plan is known; a failure while writing restores
 * what was already changed. A second run finds nothing to do.
 */
#ifndef P2V_DRIVERINJECT_H
#define P2V_DRIVERINJECT_H

#include <stdbool.h>
#include <stddef.h>

#include "p2v-common.h"

/* Results of di_inject() (also p2v-inject's exit codes, see p2v-inject(1)). */
enum di_status {
    DI_OK = 0,              /* done (changes made, or nothing to do, or dry run) */
    DI_ERROR = 1,           /* an error: unreadable image, guest tool failed, ... */
    DI_USAGE = 2,           /* (p2v-inject only) bad command line */
    DI_WINDOWS = 3,         /* a Windows guest: not supported yet */
    DI_UNSUPPORTED_OS = 4,  /* another operating system, or a Linux we cannot fix */
    DI_NO_OS = 5,           /* no operating system found (blank or corrupt disk) */
};

/* Which accelerator the libguestfs appliance uses. */
enum di_accel {
    DI_ACCEL_AUTO = 0, /* KVM only where /dev/kvm is real (P2V_INJECT_ACCEL overrides) */
    DI_ACCEL_KVM,
    DI_ACCEL_TCG,
};

/* How a guest whose initramfs a tool builds (initramfs-tools, dracut, mkinitcpio) gets
 * the drivers. The tool's configuration is edited in every case, so that the guest's own
 * later rebuilds (a kernel update) include virtio. */
enum di_initramfs {
    DI_INITRAMFS_AUTO = 0, /* append for initramfs-tools and dracut when our reader reads
                            * the current initrd; rebuild otherwise */
    DI_INITRAMFS_REBUILD,  /* run the tool in the appliance (minutes under TCG) */
    DI_INITRAMFS_APPEND,   /* do not run the tool: append a newc archive in the tool's
                            * layout (modules, module index, its module list) */
};

struct di_options {
    const char *disk;          /* the image (required) */
    const char *format;        /* NULL: probe with libdiskfmt */
    bool dry_run;              /* plan and report; the drive is added read-only */
    bool remove_vmware_tools;  /* disable VMware tools services */
    enum di_accel accel;
    enum di_initramfs initramfs;
    int verbose;               /* > 1: libguestfs' own verbose output on stderr */
};

struct di_report;

/* Inspect @opts->disk and inject. Returns DI_OK and sets *report (free it with
 * di_report_free) or another enum di_status with @err set (and *report untouched).
 * The image is unchanged unless DI_OK is returned without dry_run. */
enum di_status di_inject(const struct di_options *opts, struct di_report **report,
                         struct p2v_err *err);

/* How many changes were (or, in a dry run, would be) made. */
size_t di_report_change_count(const struct di_report *r);
/* Write the report as one JSON object (see p2v-inject(1) for its members). */
void di_report_json(const struct di_report *r, struct p2v_json *j);
/* Write the report as human lines. */
void di_report_print(const struct di_report *r, FILE *fp);
void di_report_free(struct di_report *r);

/* The accelerator di_inject() would choose for @accel here, and why ("no /dev/kvm",
 * "kvm_pvm: /dev/kvm is a software layer", "P2V_INJECT_ACCEL=tcg", ...). */
enum di_accel di_accel_choose(enum di_accel accel, const char **why);

#endif /* P2V_DRIVERINJECT_H */
