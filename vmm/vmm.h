/* libvmm: p2vkit's verification VMM. It boots a converted disk's own Linux kernel,
 * initramfs and command line (read from the disk's boot loader configuration) on a
 * minimal KVM virtual machine — or, where /dev/kvm is missing or slow, on QEMU TCG with the
 * same kernel, initrd, command line and disk — and says whether the guest came up: its
 * root file system mounted from the virtio disk and the expected text on its console.
 *
 * The disk is read through libdiskfmt (raw, qcow2, VMDK, VHD, VHDX) under a copy-on-write
 * overlay: the image is opened read-only and is byte-identical afterwards.
 *
 * This header is the library's whole contract.
 */
#ifndef VMM_H
#define VMM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "p2v-common.h"

enum vmm_engine {
    VMM_ENGINE_AUTO = 0, /* our VMM where /dev/kvm is fast, else QEMU TCG */
    VMM_ENGINE_KVM,      /* our VMM, whatever the calibration says */
    VMM_ENGINE_QEMU,     /* QEMU TCG */
};

/* Verdicts. The values are p2v-vmm's exit codes less VMM_EXIT_BASE (0 for success). */
enum vmm_result {
    VMM_RESULT_SUCCESS = 0,
    VMM_RESULT_NO_BOOT_CONFIG,  /* no partition table, no boot loader configuration */
    VMM_RESULT_KERNEL_MISSING,  /* the kernel or initrd is missing, or not bootable */
    VMM_RESULT_PANIC,           /* kernel panic (other than a missing root) */
    VMM_RESULT_ROOT_NOT_FOUND,  /* the kernel or initramfs could not find the root */
    VMM_RESULT_RESET_LOOP,      /* the guest reset before it came up */
    VMM_RESULT_TIMEOUT,         /* nothing decisive within the time limit */
    VMM_RESULT_STOPPED,         /* the guest powered off before it came up */
    VMM_RESULT_ENGINE_ERROR,    /* the engine failed (KVM error, QEMU missing) */
};
#define VMM_EXIT_BASE 10 /* p2v-vmm exits 10 + result for a failed verdict */

const char *vmm_result_name(enum vmm_result r); /* "success", "root-not-found", ... */
const char *vmm_engine_name(enum vmm_engine e);

/* The calibration of /dev/kvm: a tiny guest's instruction rate and cost of an exit. */
struct vmm_calibration {
    bool kvm_present;
    bool fast;              /* >= VMM_FAST_MIPS and exits <= VMM_FAST_EXIT_US */
    double mips;            /* guest instructions per second, millions (0: unmeasured) */
    double exit_us;         /* microseconds per exit to user space */
    char note[256];         /* why not fast / why not measured */
};
#define VMM_FAST_MIPS 1000.0
#define VMM_FAST_EXIT_US 20.0

/* Write @c as one JSON object (with "engine": what engine auto makes of it). */
void vmm_calibration_json(const struct vmm_calibration *c, struct p2v_json *j);

/* Time a calibration guest on /dev/kvm (bounded to about a second). Never fails: a missing
 * or failing /dev/kvm is reported in @c. */
void vmm_calibrate(struct vmm_calibration *c);

struct vmm_opts {
    const char *disk;      /* the image (required) */
    const char *format;    /* NULL: probe */
    uint64_t memory_mib;   /* guest RAM (default 1024) */
    unsigned cpus;         /* default 1 */
    double timeout_s;      /* default 300 */
    const char *expect;    /* POSIX extended regex; NULL: vmm_default_expect */
    const char *kernel;    /* host files overriding the disk's boot configuration */
    const char *initrd;
    const char *append;    /* replaces the configuration's command line */
    const char *log_path;  /* the console log (appended as it comes) */
    FILE *echo;            /* if set, the console is copied here as it comes */
    bool interactive;      /* boot: standard input goes to the guest's UART */
    enum vmm_engine engine;
    const char *qemu;      /* qemu-system-x86_64 to use (default: from PATH) */
    bool until_poweroff;   /* boot: run until the guest stops, not until a verdict */
};

#define VMM_VERDICT_LINES 20

struct vmm_verdict {
    enum vmm_result result;
    char reason[512];            /* one line: what was seen or not seen */
    enum vmm_engine engine;      /* the engine that ran (KVM or QEMU) */
    struct vmm_calibration cal;  /* for engine auto (and kvm) */
    double seconds;              /* power-on to verdict */
    double load_seconds;         /* reading the boot configuration, kernel and initrd */
    /* the boot */
    char config[256];            /* e.g. "partition 1: /boot/grub/grub.cfg (grub)" */
    char kernel[256], initrd[256];
    char cmdline[1024];          /* the command line the guest got */
    char kernel_version[128];
    /* what was seen */
    char matched[512];           /* the console line that matched the expected pattern */
    char root_line[512];         /* the kernel's line about mounting the root */
    char root_device[32];        /* e.g. "vda1" */
    char last_lines[VMM_VERDICT_LINES][512]; /* the console's last lines */
    unsigned n_last;
    /* figures */
    uint64_t console_bytes;
    double first_output_s;       /* power-on to the console's first byte (decompression) */
    uint64_t exits;              /* KVM engine: exits to user space */
    uint64_t disk_read_bytes, disk_requests;
    uint64_t overlay_bytes;
    uint64_t vmm_rss_kib;        /* KVM engine: our RSS less the guest RAM it holds */
    unsigned resets;
};

/* Boot the disk and decide. Returns 0 with @v filled (whatever the verdict), or -1 with
 * @err set when no verdict can be had (bad options, unreadable disk). */
int vmm_verify(const struct vmm_opts *o, struct vmm_verdict *v, struct p2v_err *err);

/* Read the disk's boot configuration and its kernel and initrd, and boot nothing: @v gets
 * the boot fields (config, kernel, initrd, cmdline as the guest would get it, kernel
 * version) and result SUCCESS, NO_BOOT_CONFIG or KERNEL_MISSING. With @extract_dir, the
 * kernel, initrd and command line are written there as files "kernel", "initrd" (when there
 * is one) and "cmdline". -1 with @err when the disk cannot be read or the files written. */
int vmm_inspect(const struct vmm_opts *o, struct vmm_verdict *v, const char *extract_dir,
                struct p2v_err *err);

/* Write @v as one JSON object. */
void vmm_verdict_json(const struct vmm_verdict *v, const struct vmm_opts *o,
                      struct p2v_json *j);

#endif
