/* core.h: the VM core (kvm.c) — a KVM virtual machine with its buses, vCPU threads and the
 * stop path — and the console scanner that turns a boot log into a verdict (verdict.c).
 * Private to libvmm. */
#ifndef VMM_CORE_H
#define VMM_CORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm-int.h"
#include "vmm.h"

#define VMM_MAX_CPUS 32

/* Selectors of the GDT that loader.c builds (the 64-bit boot protocol's __BOOT_CS/DS). */
#define VMM_BOOT_CS 0x10
#define VMM_BOOT_DS 0x18

struct vmm_vm;

struct vmm_vcpu {
    struct vmm_vm *vm;
    unsigned id;
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    bool started;
    uint64_t exits, io_exits, mmio_exits;
};

struct vmm_vm {
    int kvm_fd, vm_fd;
    struct vmm_mem mem;
    void *map_base;  /* the mapping that holds guest RAM (2 MiB-aligned inside it) */
    size_t map_len;
    unsigned ncpus;
    size_t run_size;
    struct vmm_vcpu vcpu[VMM_MAX_CPUS];
    struct vmm_bus pio, mmio;
    pthread_mutex_t devlock; /* one device access at a time */
    struct vmm_irq irq;
    struct vmm_stop stop;
    volatile int stopping; /* set by vmm_vm_kick: vCPU threads leave their loop */
    pthread_mutex_t errlock;
    char error[P2V_ERR_MSG_MAX]; /* the first vCPU failure, "" if none */
};

/* Open /dev/kvm, create the VM with @ram bytes of RAM, the in-kernel irqchip and PIT and
 * @ncpus vCPUs (CPUID from KVM_GET_SUPPORTED_CPUID, APIC ids 0..n-1). */
int vmm_vm_create(struct vmm_vm *vm, uint64_t ram, unsigned ncpus, struct p2v_err *err);
/* Put the boot CPU at the 64-bit entry described by @l; the others wait for INIT/SIPI. */
int vmm_vm_setup_boot(struct vmm_vm *vm, const struct vmm_loaded *l, struct p2v_err *err);
/* Point the boot CPU at real-mode code at @ip (the calibration guest). */
int vmm_vm_setup_realmode(struct vmm_vm *vm, uint16_t ip, struct p2v_err *err);
/* Start one thread per vCPU. */
int vmm_vm_start(struct vmm_vm *vm, struct p2v_err *err);
/* Make every vCPU leave KVM_RUN and its loop; safe from any thread, repeatable. */
void vmm_vm_kick(struct vmm_vm *vm);
/* Wait for the vCPU threads (after vmm_vm_kick or a stop). */
void vmm_vm_join(struct vmm_vm *vm);
uint64_t vmm_vm_exits(const struct vmm_vm *vm);
void vmm_vm_destroy(struct vmm_vm *vm);
/* /dev/kvm's presence: 0 usable, -1 with @err saying why not. */
int vmm_kvm_available(struct p2v_err *err);

/* ------------------------------------------------------------- verdict.c */

#define VMM_SCAN_LAST_LINES 20
#define VMM_SCAN_LINE_MAX 512

enum vmm_scan_state { VMM_SCAN_RUNNING = 0, VMM_SCAN_DONE };

/* The console scanner: fed the guest's serial output, it decides success (the expected
 * pattern seen and the root file system mounted from a virtio disk) or a named failure. */
struct vmm_scan {
    pthread_mutex_t lock;
    void *expect_re;           /* regex_t */
    char line[VMM_SCAN_LINE_MAX];
    size_t line_len;
    bool in_escape;
    char last[VMM_SCAN_LAST_LINES][VMM_SCAN_LINE_MAX];
    unsigned last_n, last_head;
    bool expect_seen, root_virtio, panic, root_missing;
    char matched[VMM_SCAN_LINE_MAX];
    char root_line[VMM_SCAN_LINE_MAX];
    char root_device[32];
    char failure_line[VMM_SCAN_LINE_MAX];
    bool powered_off_text; /* "reboot: Power down" / "System halted" */
    enum vmm_scan_state state;
    enum vmm_result result;
    uint64_t bytes;
};

int vmm_scan_init(struct vmm_scan *s, const char *expect, struct p2v_err *err);
/* Feed console bytes; returns true once a verdict is reached (see s->result). */
bool vmm_scan_feed(struct vmm_scan *s, const uint8_t *p, size_t n);
/* The verdict so far when the guest stops or time runs out (@why: the stop). */
void vmm_scan_finish(struct vmm_scan *s, enum vmm_result why);
void vmm_scan_release(struct vmm_scan *s);
/* The default expected pattern: a login prompt or a p2vkit fixture marker. */
extern const char vmm_default_expect[];

#endif
