/* kvm.c: the VM core. One KVM VM with the in-kernel irqchip (PIC, IOAPIC, local APICs) and
 * PIT, guest RAM as one anonymous mapping at guest-physical 0, one thread per vCPU that
 * runs KVM_RUN and hands port and MMIO exits to the buses, and a stop path (a device's
 * poweroff/reset request, a triple fault, or vmm_vm_kick from the supervisor).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"

#define KVM_DEV "/dev/kvm"
#define VMM_TSS_ADDR 0xfffbd000ul
#define VMM_IDENTITY_MAP_ADDR 0xfffbc000ul
#define VMM_CPUID_MAX_ENTRIES 256 /* KVM reports ~60 leaves; E2BIG tells us if not enough */
#define VMM_KICK_SIGNAL SIGUSR1

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void kick_handler(int sig)
{
    (void)sig; /* only interrupts KVM_RUN */
}

static void kick_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(VMM_KICK_SIGNAL, &sa, NULL); /* no SA_RESTART: KVM_RUN returns EINTR */
}

int vmm_kvm_available(struct p2v_err *err)
{
    int fd = open(KVM_DEV, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open '%s'", KVM_DEV);
    int v = ioctl(fd, KVM_GET_API_VERSION, 0);
    close(fd);
    if (v != KVM_API_VERSION)
        return p2v_err_set(err, ENOTSUP, "'%s' speaks KVM API %d, not %d", KVM_DEV, v,
                           KVM_API_VERSION);
    return 0;
}

static void irq_line(void *opaque, unsigned gsi, int level)
{
    struct vmm_vm *vm = opaque;
    struct kvm_irq_level l = {.irq = gsi, .level = level ? 1 : 0};
    if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0)
        p2v_debug("KVM_IRQ_LINE gsi %u level %d: %s", gsi, level, strerror(errno));
}

static void stop_notify(void *opaque)
{
    vmm_vm_kick(opaque);
}

static void vm_fail(struct vmm_vm *vm, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void vm_fail(struct vmm_vm *vm, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&vm->errlock);
    if (!vm->error[0]) {
        va_start(ap, fmt);
        vsnprintf(vm->error, sizeof vm->error, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&vm->errlock);
    vmm_vm_kick(vm);
}

/* CPUID for vCPU @id: what KVM supports, with the APIC id and topology fixed up. */
static int vcpu_set_cpuid(struct vmm_vm *vm, unsigned id, struct p2v_err *err)
{
    int r = -1;
    size_t sz = sizeof(struct kvm_cpuid2) + VMM_CPUID_MAX_ENTRIES *
                                                 sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = calloc(1, sz);
    if (!c)
        return p2v_err_errno(err, "cpuid table");
    c->nent = VMM_CPUID_MAX_ENTRIES;
    if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
        p2v_err_errno(err, "KVM_GET_SUPPORTED_CPUID");
        goto out;
    }
    for (unsigned i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        switch (e->function) {
        case 1:
            /* APIC id, logical processor count; the hypervisor bit */
            e->ebx = (e->ebx & 0x0000ffffu) | (id << 24) | ((vm->ncpus & 0xffu) << 16);
            e->ecx |= 1u << 31;
            if (vm->ncpus > 1)
                e->edx |= 1u << 28; /* HTT: the count in EBX is valid */
            break;
        case 0xb:
        case 0x1f:
            e->edx = id; /* x2APIC id */
            break;
        default:
            break;
        }
    }
    if (ioctl(vm->vcpu[id].fd, KVM_SET_CPUID2, c) < 0) {
        p2v_err_errno(err, "KVM_SET_CPUID2 (vcpu %u)", id);
        goto out;
    }
    r = 0;
out:
    free(c);
    return r;
}

/* Local APIC LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as firmware leaves it. */
static int vcpu_set_lint(struct vmm_vcpu *v, struct p2v_err *err)
{
    struct kvm_lapic_state st;
    if (ioctl(v->fd, KVM_GET_LAPIC, &st) < 0)
        return p2v_err_errno(err, "KVM_GET_LAPIC (vcpu %u)", v->id);
    uint32_t lvt0 = p2v_get_u32le((uint8_t *)st.regs + 0x350);
    uint32_t lvt1 = p2v_get_u32le((uint8_t *)st.regs + 0x360);
    lvt0 = (lvt0 & ~0x700u) | (7u << 8); /* ExtINT */
    lvt1 = (lvt1 & ~0x700u) | (4u << 8); /* NMI */
    p2v_put_u32le((uint8_t *)st.regs + 0x350, lvt0);
    p2v_put_u32le((uint8_t *)st.regs + 0x360, lvt1);
    if (ioctl(v->fd, KVM_SET_LAPIC, &st) < 0)
        return p2v_err_errno(err, "KVM_SET_LAPIC (vcpu %u)", v->id);
    return 0;
}

int vmm_vm_create(struct vmm_vm *vm, uint64_t ram, unsigned ncpus, struct p2v_err *err)
{
    memset(vm, 0, sizeof *vm);
    vm->kvm_fd = vm->vm_fd = -1;
    for (unsigned i = 0; i < VMM_MAX_CPUS; i++)
        vm->vcpu[i].fd = -1;
    pthread_mutex_init(&vm->devlock, NULL);
    pthread_mutex_init(&vm->errlock, NULL);
    pthread_mutex_init(&vm->stop.lock, NULL);
    vm->stop.notify = stop_notify;
    vm->stop.notify_opaque = vm;
    vm->pio.name = "pio";
    vm->mmio.name = "mmio";
    vm->irq.set = irq_line;
    vm->irq.opaque = vm;
    vm->ncpus = ncpus;
    pthread_once(&kick_once, kick_install);

    if (ncpus < 1 || ncpus > VMM_MAX_CPUS)
        return p2v_err_set(err, EINVAL, "%u vCPUs asked for: 1 to %d are possible", ncpus,
                           VMM_MAX_CPUS);
    if (ram < VMM_RAM_MIN || ram > VMM_RAM_MAX || ram % (2u << 20))
        return p2v_err_set(err, EINVAL,
                           "guest memory of %llu MiB: 16 to 3072 MiB in steps of 2 MiB",
                           (unsigned long long)(ram >> 20));
    vm->kvm_fd = open(KVM_DEV, O_RDWR | O_CLOEXEC);
    if (vm->kvm_fd < 0)
        return p2v_err_errno(err, "cannot open '%s'", KVM_DEV);
    if (ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        return p2v_err_set(err, ENOTSUP, "'%s': unexpected KVM API version", KVM_DEV);
    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0)
        return p2v_err_errno(err, "KVM_CREATE_VM");
    /* Intel needs these three pages out of the guest's way; AMD ignores them. */
    if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, VMM_TSS_ADDR) < 0)
        return p2v_err_errno(err, "KVM_SET_TSS_ADDR");
    uint64_t idmap = VMM_IDENTITY_MAP_ADDR;
    if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0 && errno != EINVAL)
        p2v_debug("KVM_SET_IDENTITY_MAP_ADDR: %s", strerror(errno));
    if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return p2v_err_errno(err, "KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return p2v_err_errno(err, "KVM_CREATE_PIT2");

    /* Guest RAM at a 2 MiB-aligned host address: KVM maps guest memory with huge pages
     * only where the host and guest addresses agree modulo 2 MiB (measured nested: 33k
     * page faults to boot mini-bios unaligned, 600 aligned) */
    size_t align = 2u << 20;
    void *map = mmap(NULL, ram + align, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED)
        return p2v_err_errno(err, "cannot map %llu MiB of guest memory",
                             (unsigned long long)(ram >> 20));
    vm->map_base = map;
    vm->map_len = ram + align;
    uint8_t *host = (uint8_t *)(((uintptr_t)map + align - 1) & ~(uintptr_t)(align - 1));
    if (getenv("P2V_VMM_NO_THP") == NULL)
        madvise(host, ram, MADV_HUGEPAGE);
    vm->mem.host = host;
    vm->mem.size = ram;
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .guest_phys_addr = 0,
        .memory_size = ram,
        .userspace_addr = (uintptr_t)host,
    };
    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        return p2v_err_errno(err, "KVM_SET_USER_MEMORY_REGION");

    int mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < (int)sizeof(struct kvm_run))
        return p2v_err_errno(err, "KVM_GET_VCPU_MMAP_SIZE");
    vm->run_size = (size_t)mmap_size;
    for (unsigned i = 0; i < ncpus; i++) {
        struct vmm_vcpu *v = &vm->vcpu[i];
        v->vm = vm;
        v->id = i;
        v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
        if (v->fd < 0)
            return p2v_err_errno(err, "KVM_CREATE_VCPU %u", i);
        void *run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
        if (run == MAP_FAILED)
            return p2v_err_errno(err, "mmap of vcpu %u's run area", i);
        v->run = run;
        if (vcpu_set_cpuid(vm, i, err) < 0 || vcpu_set_lint(v, err) < 0)
            return -1;
    }
    return 0;
}

static void seg_flat(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code64)
{
    memset(s, 0, sizeof *s);
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = type;
    s->present = 1;
    s->dpl = 0;
    s->s = 1;
    s->g = 1;
    s->l = code64 ? 1 : 0;
    s->db = code64 ? 0 : 1;
}

int vmm_vm_setup_boot(struct vmm_vm *vm, const struct vmm_loaded *l, struct p2v_err *err)
{
    struct vmm_vcpu *v = &vm->vcpu[0];
    struct kvm_sregs sregs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        return p2v_err_errno(err, "KVM_GET_SREGS");
    seg_flat(&sregs.cs, VMM_BOOT_CS, 0xb, true); /* execute/read, accessed */
    seg_flat(&sregs.ds, VMM_BOOT_DS, 0x3, false); /* read/write, accessed */
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    sregs.gdt.base = l->gdt_base;
    sregs.gdt.limit = l->gdt_limit;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    memset(&sregs.tr, 0, sizeof sregs.tr);
    sregs.tr.limit = 0xffff;
    sregs.tr.type = 0xb; /* busy 64-bit TSS */
    sregs.tr.present = 1;
    memset(&sregs.ldt, 0, sizeof sregs.ldt);
    sregs.ldt.limit = 0xffff;
    sregs.ldt.type = 0x2;
    sregs.ldt.present = 1;
    sregs.cr3 = l->cr3;
    sregs.cr4 = 1u << 5;                              /* PAE */
    sregs.cr0 = (1u << 0) | (1u << 4) | (1u << 31);   /* PE, ET, PG */
    sregs.efer = (1u << 8) | (1u << 10);              /* LME, LMA */
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        return p2v_err_errno(err, "KVM_SET_SREGS");

    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rflags = 0x2;
    regs.rip = l->entry;
    regs.rsi = l->boot_params;
    regs.rsp = l->stack;
    regs.rbp = 0;
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
        return p2v_err_errno(err, "KVM_SET_REGS");

    struct kvm_fpu fpu;
    memset(&fpu, 0, sizeof fpu);
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    if (ioctl(v->fd, KVM_SET_FPU, &fpu) < 0)
        return p2v_err_errno(err, "KVM_SET_FPU");
    return 0;
}

int vmm_vm_setup_realmode(struct vmm_vm *vm, uint16_t ip, struct p2v_err *err)
{
    struct vmm_vcpu *v = &vm->vcpu[0];
    struct kvm_sregs sregs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        return p2v_err_errno(err, "KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        return p2v_err_errno(err, "KVM_SET_SREGS");
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rflags = 0x2;
    regs.rip = ip;
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
        return p2v_err_errno(err, "KVM_SET_REGS");
    return 0;
}

static void vcpu_io(struct vmm_vcpu *v)
{
    struct kvm_run *run = v->run;
    unsigned size = run->io.size;
    uint64_t count = run->io.count;
    bool wr = run->io.direction == KVM_EXIT_IO_OUT;
    /* KVM's own data area is inside the run mapping; check it all the same */
    if (size == 0 || size > 4 || run->io.data_offset > v->vm->run_size ||
        count > (v->vm->run_size - run->io.data_offset) / size) {
        vm_fail(v->vm, "vcpu %u: port I/O exit with size %u count %llu out of range", v->id,
                size, (unsigned long long)count);
        return;
    }
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    pthread_mutex_lock(&v->vm->devlock);
    for (uint64_t i = 0; i < count; i++)
        vmm_bus_access(&v->vm->pio, run->io.port, data + i * size, size, wr);
    pthread_mutex_unlock(&v->vm->devlock);
}

static void vcpu_mmio(struct vmm_vcpu *v)
{
    struct kvm_run *run = v->run;
    unsigned len = run->mmio.len;
    if (len == 0 || len > sizeof run->mmio.data) {
        vm_fail(v->vm, "vcpu %u: MMIO exit of %u bytes", v->id, len);
        return;
    }
    pthread_mutex_lock(&v->vm->devlock);
    vmm_bus_access(&v->vm->mmio, run->mmio.phys_addr, run->mmio.data, len,
                   run->mmio.is_write);
    pthread_mutex_unlock(&v->vm->devlock);
}

static void *vcpu_thread(void *arg)
{
    struct vmm_vcpu *v = arg;
    struct vmm_vm *vm = v->vm;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, VMM_KICK_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);

    while (!__atomic_load_n(&vm->stopping, __ATOMIC_ACQUIRE)) {
        int rc = ioctl(v->fd, KVM_RUN, 0);
        if (rc < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                v->run->immediate_exit = 0;
                continue;
            }
            vm_fail(vm, "vcpu %u: KVM_RUN: %s", v->id, strerror(errno));
            break;
        }
        v->exits++;
        switch (v->run->exit_reason) {
        case KVM_EXIT_IO:
            v->io_exits++;
            vcpu_io(v);
            break;
        case KVM_EXIT_MMIO:
            v->mmio_exits++;
            vcpu_mmio(v);
            break;
        case KVM_EXIT_SHUTDOWN: /* triple fault */
            p2v_debug("vcpu %u: shutdown (triple fault)", v->id);
            vmm_stop_request(&vm->stop, VMM_STOP_RESET, 0);
            break;
        case KVM_EXIT_SYSTEM_EVENT:
            vmm_stop_request(&vm->stop,
                             v->run->system_event.type == KVM_SYSTEM_EVENT_RESET
                                 ? VMM_STOP_RESET
                                 : VMM_STOP_POWEROFF,
                             0);
            break;
        case KVM_EXIT_HLT:
            /* only without the in-kernel APIC; a halted boot CPU here means stopped */
            vmm_stop_request(&vm->stop, VMM_STOP_POWEROFF, 0);
            break;
        case KVM_EXIT_INTR:
            break;
        case KVM_EXIT_FAIL_ENTRY:
            vm_fail(vm, "vcpu %u: entry failed, hardware reason 0x%llx", v->id,
                    (unsigned long long)v->run->fail_entry.hardware_entry_failure_reason);
            break;
        case KVM_EXIT_INTERNAL_ERROR:
            vm_fail(vm, "vcpu %u: KVM internal error, suberror %u", v->id,
                    v->run->internal.suberror);
            break;
        default:
            vm_fail(vm, "vcpu %u: unexpected exit reason %u", v->id, v->run->exit_reason);
            break;
        }
    }
    return NULL;
}

int vmm_vm_start(struct vmm_vm *vm, struct p2v_err *err)
{
    /* vCPU threads get the kick signal; every other thread keeps it blocked */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, VMM_KICK_SIGNAL);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    for (unsigned i = 0; i < vm->ncpus; i++) {
        int rc = pthread_create(&vm->vcpu[i].thread, NULL, vcpu_thread, &vm->vcpu[i]);
        if (rc) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            vmm_vm_kick(vm);
            vmm_vm_join(vm);
            errno = rc;
            return p2v_err_errno(err, "cannot start vcpu %u's thread", i);
        }
        vm->vcpu[i].started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return 0;
}

void vmm_vm_kick(struct vmm_vm *vm)
{
    __atomic_store_n(&vm->stopping, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < vm->ncpus; i++) {
        struct vmm_vcpu *v = &vm->vcpu[i];
        if (v->run)
            __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_RELEASE);
        if (v->started && !pthread_equal(v->thread, pthread_self()))
            pthread_kill(v->thread, VMM_KICK_SIGNAL);
    }
}

void vmm_vm_join(struct vmm_vm *vm)
{
    for (unsigned i = 0; i < vm->ncpus; i++) {
        struct vmm_vcpu *v = &vm->vcpu[i];
        if (!v->started)
            continue;
        /* a vCPU blocked in a halted state is woken by repeated kicks */
        for (;;) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            if (pthread_timedjoin_np(v->thread, NULL, &ts) == 0)
                break;
            pthread_kill(v->thread, VMM_KICK_SIGNAL);
        }
        v->started = false;
    }
}

uint64_t vmm_vm_exits(const struct vmm_vm *vm)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < vm->ncpus; i++)
        n += vm->vcpu[i].exits;
    return n;
}

void vmm_vm_destroy(struct vmm_vm *vm)
{
    vmm_vm_kick(vm);
    vmm_vm_join(vm);
    for (unsigned i = 0; i < VMM_MAX_CPUS; i++) {
        struct vmm_vcpu *v = &vm->vcpu[i];
        if (v->run)
            munmap(v->run, vm->run_size);
        if (v->fd >= 0)
            close(v->fd);
        v->run = NULL;
        v->fd = -1;
    }
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->kvm_fd >= 0)
        close(vm->kvm_fd);
    if (vm->map_base)
        munmap(vm->map_base, vm->map_len);
    vm->map_base = NULL;
    vm->vm_fd = vm->kvm_fd = -1;
    vm->mem.host = NULL;
    pthread_mutex_destroy(&vm->devlock);
    pthread_mutex_destroy(&vm->errlock);
    pthread_mutex_destroy(&vm->stop.lock);
}
