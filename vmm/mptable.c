/* mptable.c: an Intel MultiProcessor Specification 1.4 table, which is how a guest without
 * ACPI learns its processors, its I/O APIC and the routing of ISA and PCI interrupts.
 *
 * At VMM_MPTABLE_ADDR (in the BIOS area 0xf0000-0xfffff that Linux scans, reserved in our
 * e820 map): the 16-byte floating pointer "_MP_", then the configuration table "PCMP" with
 * its 44-byte header and entries in the spec's order: processors, buses, the I/O APIC,
 * I/O interrupt assignments, local interrupt assignments.
 */
#include <errno.h>
#include <string.h>

#include "vmm-int.h"

/* Our own cap: xAPIC ids are 8 bits and the IOAPIC takes id ncpus, but the VMM runs a few
 * vCPUs only; 32 keeps the table small and well inside the BIOS area. */
#define MP_MAX_CPUS 32
#define MP_AREA_END 0x100000ull

#define MP_FPS_LEN 16
#define MP_HDR_LEN 44
#define MP_PROC_LEN 20
#define MP_ENTRY_LEN 8 /* bus, I/O APIC, I/O and local interrupt entries */

enum { MP_PROCESSOR = 0, MP_BUS = 1, MP_IOAPIC = 2, MP_IOINTR = 3, MP_LINTR = 4 };
enum { MP_INT = 0, MP_NMI = 1, MP_SMI = 2, MP_EXTINT = 3 };

#define MP_BUS_PCI 0
#define MP_BUS_ISA 1
#define MP_ISA_IRQS 16
#define MP_IRQ_CONFORM 0x0000     /* polarity and trigger conform to the bus */
#define MP_IRQ_PCI_FLAGS 0x000f   /* active low (bits 0-1 = 3), level (bits 2-3 = 3) */
#define MP_LAPIC_VERSION 0x14
#define MP_IOAPIC_VERSION 0x11
#define MP_CPU_ENABLED 0x01
#define MP_CPU_BSP 0x02
#define MP_CPU_SIGNATURE 0x0600 /* family 6, model 0, stepping 0 */
#define MP_CPU_FEATURES 0x0201  /* CPUID.1:EDX FPU (bit 0) and APIC (bit 9) */

#define MP_ENTRY_COUNT(n) ((n) + 2u + 1u + (MP_ISA_IRQS - 1u) + VMM_PCI_MAX_SLOTS + 2u)
#define MP_TABLE_LEN(n)                                                                   \
    (MP_HDR_LEN + (n) * MP_PROC_LEN + (MP_ENTRY_COUNT(n) - (n)) * MP_ENTRY_LEN)

_Static_assert(VMM_MPTABLE_ADDR % 16 == 0, "the floating pointer is 16-byte aligned");
_Static_assert(VMM_MPTABLE_ADDR + MP_FPS_LEN + MP_TABLE_LEN(MP_MAX_CPUS) <= MP_AREA_END,
               "the MP table must fit below 1 MiB");
_Static_assert(VMM_GSI_PCI_FIRST + 8 <= VMM_GSI_COUNT, "PCI GSIs beyond the IOAPIC");

static uint8_t mp_checksum(const uint8_t *p, size_t len)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + p[i]);
    return (uint8_t)(0x100 - sum);
}

static uint8_t *mp_irq(uint8_t *p, uint8_t type, uint8_t irqtype, uint16_t flags,
                       uint8_t bus, uint8_t busirq, uint8_t dst, uint8_t dstpin)
{
    p[0] = type;
    p[1] = irqtype;
    p2v_put_u16le(p + 2, flags);
    p[4] = bus;
    p[5] = busirq;
    p[6] = dst;
    p[7] = dstpin;
    return p + MP_ENTRY_LEN;
}

static uint8_t *mp_bus(uint8_t *p, uint8_t id, const char name[6])
{
    p[0] = MP_BUS;
    p[1] = id;
    memcpy(p + 2, name, 6);
    return p + MP_ENTRY_LEN;
}

int vmm_mptable_write(const struct vmm_mem *mem, unsigned ncpus, struct p2v_err *err)
{
    uint8_t *area, *fps, *hdr, *p;
    uint8_t ioapic_id;
    unsigned count = 0;
    size_t len;
    int ret = -1;

    if (ncpus < 1 || ncpus > MP_MAX_CPUS) {
        p2v_err_set(err, EINVAL, "mp table: %u cpus is outside 1..%u", ncpus, MP_MAX_CPUS);
        goto out;
    }
    area = mem ? vmm_mem_ptr(mem, VMM_MPTABLE_ADDR, MP_AREA_END - VMM_MPTABLE_ADDR) : NULL;
    if (!area) {
        p2v_err_set(err, EINVAL, "mp table: guest memory does not reach 0x%llx",
                    (unsigned long long)MP_AREA_END);
        goto out;
    }
    /* The whole BIOS area is ours: nothing else there can look like a table. */
    memset(area, 0, MP_AREA_END - VMM_MPTABLE_ADDR);
    fps = area;
    hdr = area + MP_FPS_LEN;
    ioapic_id = (uint8_t)ncpus;

    /* Configuration table header; length, count and checksum filled in at the end. */
    memcpy(hdr, "PCMP", 4);
    hdr[6] = 4; /* spec revision 1.4 */
    memcpy(hdr + 8, "P2VKIT  ", 8);
    memcpy(hdr + 16, "P2VKIT VMM  ", 12);
    p2v_put_u32le(hdr + 36, (uint32_t)VMM_LAPIC_BASE);
    p = hdr + MP_HDR_LEN;

    for (unsigned i = 0; i < ncpus; i++, count++) {
        p[0] = MP_PROCESSOR;
        p[1] = (uint8_t)i; /* local APIC id */
        p[2] = MP_LAPIC_VERSION;
        p[3] = MP_CPU_ENABLED | (i == 0 ? MP_CPU_BSP : 0);
        p2v_put_u32le(p + 4, MP_CPU_SIGNATURE);
        p2v_put_u32le(p + 8, MP_CPU_FEATURES);
        p += MP_PROC_LEN;
    }

    p = mp_bus(p, MP_BUS_PCI, "PCI   "), count++;
    p = mp_bus(p, MP_BUS_ISA, "ISA   "), count++;

    p[0] = MP_IOAPIC;
    p[1] = ioapic_id;
    p[2] = MP_IOAPIC_VERSION;
    p[3] = 0x01; /* enabled */
    p2v_put_u32le(p + 4, (uint32_t)VMM_IOAPIC_BASE);
    p += MP_ENTRY_LEN, count++;

    /* ISA IRQs identity-mapped to IOAPIC pins (KVM's default GSI routing), but 2: the
     * cascade. */
    for (unsigned irq = 0; irq < MP_ISA_IRQS; irq++) {
        if (irq == 2)
            continue;
        p = mp_irq(p, MP_IOINTR, MP_INT, MP_IRQ_CONFORM, MP_BUS_ISA, (uint8_t)irq, ioapic_id,
                   (uint8_t)irq);
        count++;
    }
    /* PCI INTx: the source irq is (device << 2) | pin, pin A = 0; as pci.c assigns. */
    for (unsigned s = 0; s < VMM_PCI_MAX_SLOTS; s++) {
        p = mp_irq(p, MP_IOINTR, MP_INT, MP_IRQ_PCI_FLAGS, MP_BUS_PCI, (uint8_t)(s << 2),
                   ioapic_id, (uint8_t)(VMM_GSI_PCI_FIRST + s % 8));
        count++;
    }
    /* Local interrupts: the 8259's ExtINT on LINT0, NMI on LINT1, of every CPU (0xff). */
    p = mp_irq(p, MP_LINTR, MP_EXTINT, MP_IRQ_CONFORM, MP_BUS_ISA, 0, 0xff, 0), count++;
    p = mp_irq(p, MP_LINTR, MP_NMI, MP_IRQ_CONFORM, MP_BUS_ISA, 0, 0xff, 1), count++;

    len = (size_t)(p - hdr);
    if (len != MP_TABLE_LEN(ncpus) || count != MP_ENTRY_COUNT(ncpus)) {
        p2v_err_set(err, EINVAL, "mp table: internal size mismatch (%zu bytes, %u entries)",
                    len, count);
        goto out;
    }
    p2v_put_u16le(hdr + 4, (uint16_t)len);
    p2v_put_u16le(hdr + 34, (uint16_t)count);
    hdr[7] = mp_checksum(hdr, len);

    /* The floating pointer. */
    memcpy(fps, "_MP_", 4);
    p2v_put_u32le(fps + 4, (uint32_t)(VMM_MPTABLE_ADDR + MP_FPS_LEN));
    fps[8] = 1; /* length in 16-byte units */
    fps[9] = 4; /* spec revision 1.4 */
    fps[11] = 0; /* a configuration table is present (no default configuration) */
    fps[12] = 0; /* no IMCR: virtual wire mode */
    fps[10] = mp_checksum(fps, MP_FPS_LEN);

    p2v_log(P2V_LOG_DEBUG, "mp table: %u cpus, %u entries, %zu bytes at 0x%llx", ncpus,
            count, len, (unsigned long long)(VMM_MPTABLE_ADDR + MP_FPS_LEN));
    ret = 0;
out:
    return ret;
}
