/* vmm-int.h: libvmm's private interfaces between the VM core (kvm.c), the boot loader
 * (loader.c, mptable.c), the boot configuration finder (bootcfg.c, bootparse.c,
 * ext2io.c), the devices (pci.c, virtio-blk.c, uart.c, rtc.c, misc.c) and the disk backend
 * (disk.c). Nothing here is part of vmm.h's contract.
 *
 * Everything a guest hands a device (ports, addresses, lengths, ring indices) is untrusted:
 * devices check each value before use, and reach guest memory only through vmm_mem_ptr().
 */
#ifndef VMM_INT_H
#define VMM_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

struct diskfmt;

/* ------------------------------------------------------------ the guest's address map */

/* Guest RAM is one slot from guest-physical 0 (the legacy hole 0xa0000-0xfffff is RAM in
 * the slot but reserved in the e820 map). RAM is capped below the PCI window. */
#define VMM_RAM_MIN (16ull << 20)
#define VMM_RAM_MAX (3072ull << 20)
#define VMM_PCI_MMIO_BASE 0xc0000000ull /* BARs are pre-assigned from here */
#define VMM_PCI_MMIO_SIZE 0x10000000ull
#define VMM_IOAPIC_BASE 0xfec00000ull
#define VMM_LAPIC_BASE 0xfee00000ull

/* Fixed low-memory layout used by the loader (all below 1 MiB). */
#define VMM_GDT_ADDR 0x500ull
#define VMM_BOOT_PARAMS_ADDR 0x7000ull /* the zero page */
#define VMM_BOOT_STACK_TOP 0x8ff0ull
#define VMM_PML4_ADDR 0x9000ull        /* then PDPT at 0xa000, PDs at 0xb000.. 0xe000 */
#define VMM_CMDLINE_ADDR 0x20000ull
#define VMM_CMDLINE_MAX 0x10000u       /* bytes, with the NUL */
#define VMM_EBDA_ADDR 0x9fc00ull       /* e820: RAM below, reserved to 1 MiB */
#define VMM_MPTABLE_ADDR 0xf0000ull    /* MP floating pointer + configuration table */
#define VMM_KERNEL_ADDR 0x100000ull    /* the protected-mode kernel is loaded here */

/* Legacy interrupt lines (GSIs, identity-mapped to IOAPIC pins and PIC lines). */
#define VMM_GSI_COM1 4
#define VMM_GSI_PCI_FIRST 16 /* PCI INTx: slot s pin A uses GSI 16 + (s % 8) */
#define VMM_GSI_COUNT 24

/* Ports of our own. */
#define VMM_PORT_POWEROFF 0x604  /* 16-bit write with bit 13 (0x2000) set: power off */
#define VMM_PORT_DEBUG_EXIT 0x501 /* any write: power off, the value is the guest's code */
#define VMM_PORT_CALIBRATE 0x510 /* the calibration guest's marks */

/* Guest memory: host mapping of guest-physical [0, size). */
struct vmm_mem {
    uint8_t *host;
    uint64_t size;
};

/* A host pointer to guest-physical [gpa, gpa+len), or NULL when any byte of the range is
 * outside guest RAM (overflow-safe; len 0 is allowed when gpa <= size). */
static inline void *vmm_mem_ptr(const struct vmm_mem *m, uint64_t gpa, uint64_t len)
{
    if (gpa > m->size || len > m->size - gpa)
        return NULL;
    return m->host + gpa;
}

/* ------------------------------------------------------------------- buses and irqs */

/* An access to a device region: @off is relative to the region's base, @data holds @len
 * (1, 2, 4 or 8) bytes in guest (little-endian) order; a read fills it. */
typedef void vmm_io_fn(void *opaque, uint64_t off, uint8_t *data, unsigned len, bool is_write);

#define VMM_BUS_MAX_REGIONS 32

struct vmm_bus_region {
    uint64_t base, len;
    vmm_io_fn *fn;
    void *opaque;
    const char *name;
};

/* The port-I/O or MMIO bus. Regions do not overlap. An access that no region claims reads
 * as all ones, is ignored when written, and is logged at debug level. */
struct vmm_bus {
    const char *name; /* "pio" or "mmio" */
    unsigned n;
    struct vmm_bus_region r[VMM_BUS_MAX_REGIONS];
    uint64_t unclaimed; /* count of unclaimed accesses */
};

/* 0 or -1 (overlap, full, len 0) with @err set. */
int vmm_bus_register(struct vmm_bus *bus, uint64_t base, uint64_t len, vmm_io_fn *fn,
                     void *opaque, const char *name, struct p2v_err *err);
/* Move an existing region (a PCI BAR the guest reprogrammed); -1 on overlap. */
int vmm_bus_move(struct vmm_bus *bus, void *opaque, uint64_t old_base, uint64_t new_base);
/* Dispatch one access (accesses that straddle a region's end are unclaimed). */
void vmm_bus_access(struct vmm_bus *bus, uint64_t addr, uint8_t *data, unsigned len,
                    bool is_write);

/* Interrupt lines: set GSI @gsi to @level (1 asserted). kvm.c's sink calls KVM_IRQ_LINE;
 * unit tests record. Edge-triggered lines are raised by a 0 -> 1 change. */
struct vmm_irq {
    void (*set)(void *opaque, unsigned gsi, int level);
    void *opaque;
};

static inline void vmm_irq_set(const struct vmm_irq *irq, unsigned gsi, int level)
{
    if (irq && irq->set)
        irq->set(irq->opaque, gsi, level);
}

/* ------------------------------------------------------------------------ PCI (pci.c) */

#define VMM_PCI_MAX_SLOTS 8

struct vmm_pci_dev {
    uint8_t cfg[256];       /* the device's configuration space, set up by the device */
    uint8_t cfg_wmask[256]; /* bits the guest may write (BARs are handled by pci.c) */
    uint32_t bar_size[6];   /* power of two >= 16, 0 = no BAR; 32-bit memory BARs only */
    /* An access to BAR @bar at @off from its start (checked against bar_size by pci.c). */
    void (*bar_access)(void *opaque, int bar, uint64_t off, uint8_t *data, unsigned len,
                       bool is_write);
    void *opaque;
    /* set by vmm_pci_add(): */
    unsigned slot, gsi;
    uint64_t bar_addr[6];
    bool mmio_enabled;
    struct vmm_pci *pci;
};

struct vmm_pci {
    uint32_t cf8;                   /* configuration address register */
    struct vmm_pci_dev host_bridge; /* 00:00.0, class 0x0600 */
    struct vmm_pci_dev *dev[VMM_PCI_MAX_SLOTS];
    struct vmm_bus *mmio;
    uint64_t next_mmio;
};

/* Set up the host bridge and register ports 0xcf8-0xcff on @pio. */
int vmm_pci_init(struct vmm_pci *pci, struct vmm_bus *pio, struct vmm_bus *mmio,
                 struct p2v_err *err);
/* Put @dev in the next free slot (1, 2, ...): assign its BARs from the PCI window, register
 * them on the MMIO bus, set the interrupt line and pin registers (pin A, GSI per slot). */
int vmm_pci_add(struct vmm_pci *pci, struct vmm_pci_dev *dev, struct p2v_err *err);

/* ------------------------------------------------------------------ disk (disk.c) */

/* The guest's disk: an image read through libdiskfmt (opened read-only, never written)
 * under a copy-on-write overlay in memory. */
struct vmm_disk;

struct vmm_disk *vmm_disk_open(const char *path, const char *format, struct p2v_err *err);
uint64_t vmm_disk_size(const struct vmm_disk *d);
const char *vmm_disk_format(const struct vmm_disk *d);
int vmm_disk_read(struct vmm_disk *d, void *buf, size_t len, uint64_t off,
                  struct p2v_err *err);
int vmm_disk_write(struct vmm_disk *d, const void *buf, size_t len, uint64_t off,
                   struct p2v_err *err);
uint64_t vmm_disk_overlay_bytes(const struct vmm_disk *d); /* memory held by the overlay */
void vmm_disk_close(struct vmm_disk *d);
/* The underlying image, for read-only use by the boot configuration finder. */
struct diskfmt *vmm_disk_image(struct vmm_disk *d);

/* ------------------------------------------------------- virtio-blk (virtio-blk.c) */

struct vmm_virtio_blk;

/* A virtio 1.0 (modern, device id 0x1042) block device over PCI, INTx interrupts. */
struct vmm_virtio_blk *vmm_virtio_blk_new(struct vmm_disk *disk, const struct vmm_mem *mem,
                                          const struct vmm_irq *irq, struct p2v_err *err);
struct vmm_pci_dev *vmm_virtio_blk_pci(struct vmm_virtio_blk *b);
struct vmm_virtio_blk_stats {
    uint64_t requests, read_bytes, write_bytes, flushes, bad_requests, notifies;
};
void vmm_virtio_blk_stats(const struct vmm_virtio_blk *b, struct vmm_virtio_blk_stats *st);
void vmm_virtio_blk_free(struct vmm_virtio_blk *b);

/* ------------------------------------------------------------------- UART (uart.c) */

struct vmm_uart;

/* A 16550A at @base (0x3f8) on GSI @gsi. Every byte the guest transmits is passed to @out. */
struct vmm_uart *vmm_uart_new(uint16_t base, unsigned gsi, const struct vmm_irq *irq,
                              void (*out)(void *opaque, const uint8_t *p, size_t n),
                              void *out_opaque, struct p2v_err *err);
int vmm_uart_attach(struct vmm_uart *u, struct vmm_bus *pio, struct p2v_err *err);
/* Queue bytes for the guest to receive (the console's input); thread-safe. */
void vmm_uart_input(struct vmm_uart *u, const uint8_t *p, size_t n);
void vmm_uart_free(struct vmm_uart *u);

/* --------------------------------------------------- CMOS/RTC, reset, poweroff (misc) */

enum vmm_stop_reason {
    VMM_STOP_NONE = 0,
    VMM_STOP_POWEROFF, /* the poweroff or debug-exit port */
    VMM_STOP_RESET,    /* i8042 pulse (0xfe to port 0x64), port 0xcf9, or a triple fault */
};

/* Shared stop flag: devices request a stop; the core watches it. */
struct vmm_stop {
    pthread_mutex_t lock;
    enum vmm_stop_reason reason;
    int code;                       /* debug-exit value */
    void (*notify)(void *opaque);   /* called (once) when a stop is first requested */
    void *notify_opaque;
};
void vmm_stop_request(struct vmm_stop *s, enum vmm_stop_reason reason, int code);

/* rtc.c: MC146818 CMOS at 0x70/0x71 (time from the host clock, memory size registers). */
int vmm_rtc_attach(struct vmm_bus *pio, uint64_t ram_bytes, struct p2v_err *err);
/* misc.c: i8042 (0x60, 0x64: reset pulse), 0xcf9 reset, the poweroff and debug-exit ports,
 * port 0x80 (POST codes), 0x61 (NMI status / speaker), VGA/LPT/COM2-4 probes, ... */
int vmm_misc_attach(struct vmm_bus *pio, struct vmm_stop *stop, struct p2v_err *err);

/* ---------------------------------------------------------------- boot (loader.c) */

struct vmm_loaded {
    uint64_t entry;        /* 64-bit entry point (RIP) */
    uint64_t boot_params;  /* RSI */
    uint64_t stack;        /* RSP */
    uint64_t cr3;
    uint64_t gdt_base;
    uint16_t gdt_limit;
    uint64_t initrd_addr, initrd_size;
    uint16_t protocol;     /* the kernel's boot protocol version */
    char kernel_version[128]; /* from the setup header's kernel_version string, or "" */
};

/* Check that @k is a bzImage we can boot: "HdrS", protocol >= 2.06, a 64-bit entry
 * (XLF_KERNEL_64), sizes consistent with the file. */
int vmm_bzimage_check(const uint8_t *k, size_t klen, struct p2v_err *err);
/* The setup header's kernel version string into @out ("" when there is none or @k is not a
 * bzImage we can boot). */
void vmm_bzimage_version(const uint8_t *k, size_t klen, char *out, size_t outlen);

/* Load the bzImage @k, the initrd @initrd (may be NULL/0) and @cmdline into @mem; build
 * boot_params (e820 map from the RAM size and our reserved ranges), the identity page tables
 * (all of guest RAM, 2 MiB pages, plus the first 4 GiB), the GDT. The initrd is placed as high
 * as allowed (below initrd_addr_max and RAM's end, page aligned). */
int vmm_boot_load(const struct vmm_mem *mem, const uint8_t *k, size_t klen,
                  const uint8_t *initrd, size_t ilen, const char *cmdline,
                  struct vmm_loaded *out, struct p2v_err *err);

/* mptable.c: an MP table (spec 1.4) at VMM_MPTABLE_ADDR: @ncpus processors (APIC ids
 * 0..n-1), buses PCI (0) and ISA (1), the IOAPIC (id ncpus), ISA IRQs 0-15 identity-mapped,
 * PCI INTx for slots 0..VMM_PCI_MAX_SLOTS-1 pin A to their GSIs, local interrupts. */
int vmm_mptable_write(const struct vmm_mem *mem, unsigned ncpus, struct p2v_err *err);

/* ------------------------------------------- boot configuration (bootcfg.c and co.) */

/* What a boot loader configuration says to boot (its default entry). */
struct vmm_bootentry {
    char *title;   /* menu title or label, may be NULL */
    char *kernel;  /* path as written, with any (hdX,Y) or $root prefix removed */
    char *initrd;  /* may be NULL; only the first initrd */
    char *cmdline; /* may be "" */
    char *root_uuid; /* grub: UUID from a `search --fs-uuid --set=root` in the entry */
};
void vmm_bootentry_release(struct vmm_bootentry *e);

/* Parsers of configuration text (bootparse.c; from memory, fuzzed). The default entry:
 * grub: `set default=N` or a title/id, else the first menuentry (submenus followed);
 * extlinux/syslinux: DEFAULT label (or the first LABEL). 0, or -1 with @err naming what was
 * wrong (no entry, no kernel line, the line number). */
int vmm_grub_parse(const char *text, size_t len, struct vmm_bootentry *e, struct p2v_err *err);
int vmm_extlinux_parse(const char *text, size_t len, struct vmm_bootentry *e,
                       struct p2v_err *err);

/* What vmm_bootcfg_find() found on a disk: kernel and initrd bytes, the command line. */
struct vmm_bootcfg {
    char *config_path;  /* e.g. "/boot/grub/grub.cfg" */
    int config_part;    /* partition number (1-based) that holds it */
    char *loader;       /* "grub" | "extlinux" | "syslinux" */
    char *title;
    char *kernel_path, *initrd_path; /* as resolved on the disk */
    int kernel_part;
    char *cmdline;      /* as in the configuration */
    uint8_t *kernel; size_t kernel_len;  /* malloc'd */
    uint8_t *initrd; size_t initrd_len;  /* malloc'd, may be NULL */
    char *partition_table; /* "mbr" | "gpt" */
};
/* Read the partition table (MBR or GPT; protective MBR followed), find a boot loader
 * configuration on an ext2/3/4 partition (through libext2fs over @img, no mount), else on a
 * FAT partition (the EFI system partition's /EFI/<dir>/grub.cfg, through fatio.c), parse its
 * default entry and read the kernel and the initrd. Caps: kernel 64 MiB, initrd 1 GiB. */
int vmm_bootcfg_find(struct diskfmt *img, struct vmm_bootcfg *out, struct p2v_err *err);
void vmm_bootcfg_release(struct vmm_bootcfg *c);

#endif
