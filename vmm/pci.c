/* pci.c: PCI bus 0 through configuration mechanism #1 (ports 0xcf8-0xcff).
 *
 * Port 0xcf8 is the 32-bit configuration address register (only 4-byte accesses reach it:
 * Linux's type-2 probe uses byte accesses there and must fail); 0xcfc-0xcff is the data
 * window onto the addressed register. Bus 0 only, function 0 only, slots 0 (the host bridge,
 * an i440FX look-alike so that Linux's pci_sanity_check() accepts the mechanism) to
 * VMM_PCI_MAX_SLOTS - 1; everything else reads all ones.
 *
 * Devices bring their own configuration space; this file owns the parts a bus owns: the
 * BARs (32-bit memory BARs, pre-assigned from the PCI window, sized and moved by the guest),
 * the command register (memory decode gates the device's BAR handler), the interrupt line
 * and pin. Other bytes change only where the device's cfg_wmask allows.
 *
 * A BAR that holds no usable address (0, or the all-ones sizing probe) keeps its region on
 * the MMIO bus where it was, but the region does not decode until the BAR holds its
 * address again (or a new address the bus accepts): the trampolines check that the BAR
 * register and the region agree.
 *
 * struct vmm_pci has no lock, so one mutex in this file guards every configuration space;
 * it is not held while a device's BAR handler runs.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "vmm-int.h"

static pthread_mutex_t pci_lock = PTHREAD_MUTEX_INITIALIZER;

#define PCI_PORT_BASE 0xcf8
#define PCI_PORT_LEN 8
#define PCI_DATA_OFF 4 /* 0xcfc within the region */

#define PCI_CF8_ENABLE 0x80000000u
#define PCI_CF8_MASK 0x80fffffcu /* enable, bus, device, function, register */

#define PCI_CFG_SIZE 256

/* Configuration space offsets. */
#define PCI_VENDOR_ID 0x00
#define PCI_DEVICE_ID 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION 0x08
#define PCI_CLASS_PROG 0x09
#define PCI_CACHE_LINE 0x0c
#define PCI_LATENCY 0x0d
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_BAR_END 0x28 /* after BAR5 */
#define PCI_CAP_PTR 0x34
#define PCI_INT_LINE 0x3c
#define PCI_INT_PIN 0x3d

#define PCI_COMMAND_MEMORY 0x0002
#define PCI_COMMAND_MASTER 0x0004
#define PCI_COMMAND_INTX_DISABLE 0x0400
#define PCI_COMMAND_WRITABLE \
    (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE)

#define PCI_BAR_TYPE_MASK 0xfu /* 32-bit, non-prefetchable memory: all zero */

#define PCI_HOST_VENDOR 0x8086 /* Intel */
#define PCI_HOST_DEVICE 0x1237 /* 82441FX (i440FX) */
#define PCI_HOST_REVISION 0x02

static const char *const pci_bar_names[6] = {
    "pci bar0", "pci bar1", "pci bar2", "pci bar3", "pci bar4", "pci bar5",
};

/* --------------------------------------------------------------------- BAR regions */

/* An MMIO access to BAR @bar of @d: handed to the device when memory decode is on and the
 * BAR register holds the address the region sits at. */
static void pci_bar_io(struct vmm_pci_dev *d, int bar, uint64_t off, uint8_t *data,
                       unsigned len, bool is_write)
{
    bool decode;

    pthread_mutex_lock(&pci_lock);
    decode = d->mmio_enabled &&
             (p2v_get_u32le(&d->cfg[PCI_BAR0 + 4 * bar]) & ~PCI_BAR_TYPE_MASK) ==
                 d->bar_addr[bar];
    pthread_mutex_unlock(&pci_lock);

    if (!decode || !d->bar_access || !p2v_range_ok(off, len, d->bar_size[bar])) {
        if (!is_write)
            memset(data, 0xff, len);
        return;
    }
    d->bar_access(d->opaque, bar, off, data, len, is_write);
}

/* One bus handler per BAR index: the region's opaque is the device (so that vmm_bus_move
 * finds it by device and address) and the handler tells the BAR. */
#define PCI_BAR_TRAMPOLINE(n)                                                             \
    static void pci_bar##n##_io(void *opaque, uint64_t off, uint8_t *data, unsigned len,  \
                                bool is_write)                                            \
    {                                                                                     \
        pci_bar_io(opaque, n, off, data, len, is_write);                                  \
    }
PCI_BAR_TRAMPOLINE(0)
PCI_BAR_TRAMPOLINE(1)
PCI_BAR_TRAMPOLINE(2)
PCI_BAR_TRAMPOLINE(3)
PCI_BAR_TRAMPOLINE(4)
PCI_BAR_TRAMPOLINE(5)

static vmm_io_fn *const pci_bar_fns[6] = {
    pci_bar0_io, pci_bar1_io, pci_bar2_io, pci_bar3_io, pci_bar4_io, pci_bar5_io,
};

/* The guest wrote @val to BAR @bar. */
static void pci_bar_write_locked(struct vmm_pci *pci, struct vmm_pci_dev *d, int bar,
                                 uint32_t val)
{
    uint32_t size = d->bar_size[bar];
    uint32_t v, probe;

    if (size == 0) {
        p2v_put_u32le(&d->cfg[PCI_BAR0 + 4 * bar], 0); /* no BAR: hardwired to 0 */
        return;
    }
    v = val & ~(size - 1) & ~PCI_BAR_TYPE_MASK;
    p2v_put_u32le(&d->cfg[PCI_BAR0 + 4 * bar], v);
    probe = ~(size - 1) & ~PCI_BAR_TYPE_MASK;
    if (v == 0 || v == probe || v == d->bar_addr[bar])
        return; /* sizing, unassigned, or back where the region is */
    if (vmm_bus_move(pci->mmio, d, d->bar_addr[bar], v) == 0) {
        p2v_log(P2V_LOG_DEBUG, "pci: 00:%02x.0 bar%d moved from 0x%" PRIx64 " to 0x%" PRIx32,
                d->slot, bar, d->bar_addr[bar], v);
        d->bar_addr[bar] = v;
    } else {
        p2v_log(P2V_LOG_DEBUG,
                "pci: 00:%02x.0 bar%d cannot move to 0x%" PRIx32 ", not decoding", d->slot,
                bar, v);
    }
}

/* ------------------------------------------------------------ configuration space */

/* The device addressed by @cf8, or NULL (disabled, other bus, function or slot). */
static struct vmm_pci_dev *pci_addressed_locked(struct vmm_pci *pci, uint32_t cf8)
{
    unsigned bus = (cf8 >> 16) & 0xff, slot = (cf8 >> 11) & 0x1f, fn = (cf8 >> 8) & 0x7;

    if (!(cf8 & PCI_CF8_ENABLE) || bus != 0 || fn != 0 || slot >= VMM_PCI_MAX_SLOTS)
        return NULL;
    return pci->dev[slot];
}

static bool pci_cfg_read_only(unsigned o)
{
    return o < PCI_COMMAND ||                                  /* vendor, device */
           (o >= PCI_STATUS && o < PCI_CACHE_LINE) ||         /* status, revision, class */
           o == PCI_HEADER_TYPE || o == PCI_CAP_PTR || o == PCI_INT_PIN;
}

static void pci_cfg_write_locked(struct vmm_pci *pci, struct vmm_pci_dev *d, unsigned off,
                                 const uint8_t *data, unsigned len)
{
    uint8_t bars[6][4];
    unsigned touched = 0;

    for (unsigned i = 0; i < len; i++) {
        unsigned o = off + i;
        uint8_t b = data[i];

        if (o >= PCI_BAR0 && o < PCI_BAR_END) {
            unsigned bar = (o - PCI_BAR0) / 4;
            if (!(touched & (1u << bar)))
                memcpy(bars[bar], &d->cfg[PCI_BAR0 + 4 * bar], 4);
            touched |= 1u << bar;
            bars[bar][(o - PCI_BAR0) % 4] = b;
        } else if (o == PCI_COMMAND || o == PCI_COMMAND + 1) {
            uint8_t m = (uint8_t)(PCI_COMMAND_WRITABLE >> (8 * (o - PCI_COMMAND)));
            d->cfg[o] = (uint8_t)((d->cfg[o] & ~m) | (b & m));
        } else if (o == PCI_INT_LINE) {
            d->cfg[o] = b;
        } else if (!pci_cfg_read_only(o)) {
            d->cfg[o] = (uint8_t)((d->cfg[o] & ~d->cfg_wmask[o]) | (b & d->cfg_wmask[o]));
        }
    }
    d->mmio_enabled = (d->cfg[PCI_COMMAND] & PCI_COMMAND_MEMORY) != 0;
    for (int bar = 0; bar < 6; bar++) {
        if (touched & (1u << bar))
            pci_bar_write_locked(pci, d, bar, p2v_get_u32le(bars[bar]));
    }
}

/* An access to the data window at @off (0-3 from 0xcfc). */
static void pci_data_io_locked(struct vmm_pci *pci, unsigned off, uint8_t *data,
                               unsigned len, bool is_write)
{
    struct vmm_pci_dev *d = pci_addressed_locked(pci, pci->cf8);
    unsigned reg = (pci->cf8 & 0xfc) + off;

    /* Whole, naturally aligned registers inside the 256-byte space only. */
    if (!d || (len != 1 && len != 2 && len != 4) || reg % len != 0 ||
        !p2v_range_ok(reg, len, PCI_CFG_SIZE)) {
        if (!is_write)
            memset(data, 0xff, len);
        return;
    }
    if (is_write)
        pci_cfg_write_locked(pci, d, reg, data, len);
    else
        memcpy(data, &d->cfg[reg], len);
}

static void pci_port_io(void *opaque, uint64_t off, uint8_t *data, unsigned len,
                        bool is_write)
{
    struct vmm_pci *pci = opaque;

    pthread_mutex_lock(&pci_lock);
    if (off == 0 && len == 4) {
        if (is_write)
            pci->cf8 = p2v_get_u32le(data) & PCI_CF8_MASK;
        else
            p2v_put_u32le(data, pci->cf8);
    } else if (off >= PCI_DATA_OFF && off < PCI_PORT_LEN) {
        pci_data_io_locked(pci, (unsigned)(off - PCI_DATA_OFF), data, len, is_write);
    } else if (!is_write) {
        /* Byte and word accesses to 0xcf8-0xcfb (mechanism #2 probes, 0xcf9 reset
         * control): not emulated. */
        memset(data, 0xff, len);
    }
    pthread_mutex_unlock(&pci_lock);
}

/* ------------------------------------------------------------------------ set-up */

int vmm_pci_init(struct vmm_pci *pci, struct vmm_bus *pio, struct vmm_bus *mmio,
                 struct p2v_err *err)
{
    struct vmm_pci_dev *hb = &pci->host_bridge;

    memset(pci, 0, sizeof(*pci));
    pci->mmio = mmio;
    pci->next_mmio = VMM_PCI_MMIO_BASE;

    p2v_put_u16le(&hb->cfg[PCI_VENDOR_ID], PCI_HOST_VENDOR);
    p2v_put_u16le(&hb->cfg[PCI_DEVICE_ID], PCI_HOST_DEVICE);
    p2v_put_u16le(&hb->cfg[PCI_COMMAND], PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    hb->cfg[PCI_REVISION] = PCI_HOST_REVISION;
    hb->cfg[PCI_CLASS_PROG] = 0x00;
    hb->cfg[PCI_CLASS_PROG + 1] = 0x00; /* subclass: host bridge */
    hb->cfg[PCI_CLASS_PROG + 2] = 0x06; /* class: bridge */
    hb->cfg[PCI_HEADER_TYPE] = 0x00;
    hb->cfg_wmask[PCI_CACHE_LINE] = 0xff;
    hb->cfg_wmask[PCI_LATENCY] = 0xff;
    hb->slot = 0;
    hb->mmio_enabled = true;
    hb->pci = pci;
    pci->dev[0] = hb;

    return vmm_bus_register(pio, PCI_PORT_BASE, PCI_PORT_LEN, pci_port_io, pci,
                            "pci config", err);
}

/* Room for @need more regions on @bus (set-up time: no vCPU runs yet). */
static bool pci_bus_has_room(const struct vmm_bus *bus, unsigned need)
{
    return bus->n <= VMM_BUS_MAX_REGIONS && need <= VMM_BUS_MAX_REGIONS - bus->n;
}

/* No region of @bus overlaps [base, base + len). */
static bool pci_bus_is_free(const struct vmm_bus *bus, uint64_t base, uint64_t len)
{
    for (unsigned i = 0; i < bus->n && i < VMM_BUS_MAX_REGIONS; i++) {
        if (base < bus->r[i].base + bus->r[i].len && bus->r[i].base < base + len)
            return false;
    }
    return true;
}

int vmm_pci_add(struct vmm_pci *pci, struct vmm_pci_dev *dev, struct p2v_err *err)
{
    const uint64_t win_end = VMM_PCI_MMIO_BASE + VMM_PCI_MMIO_SIZE;
    uint64_t addr[6] = { 0 }, next = pci->next_mmio;
    unsigned slot = 0, nbars = 0;
    int r = -1;

    pthread_mutex_lock(&pci_lock);
    for (unsigned s = 1; s < VMM_PCI_MAX_SLOTS; s++) {
        if (!pci->dev[s]) {
            slot = s;
            break;
        }
    }
    if (slot == 0) {
        p2v_err_set(err, ENOSPC, "pci bus 0 is full (%d slots)", VMM_PCI_MAX_SLOTS);
        goto out;
    }

    /* Place every BAR before registering any, so that a failure leaves nothing behind. */
    for (int bar = 0; bar < 6; bar++) {
        uint32_t size = dev->bar_size[bar];
        uint64_t a;

        if (size == 0)
            continue;
        if (!p2v_is_pow2(size) || size < 16 || size > VMM_PCI_MMIO_SIZE) {
            p2v_err_set(err, EINVAL, "pci bar%d size 0x%" PRIx32
                        " is not a power of two from 16 to 0x%llx", bar, size,
                        (unsigned long long)VMM_PCI_MMIO_SIZE);
            goto out;
        }
        if (!p2v_align_up(next, size, &a) || a < VMM_PCI_MMIO_BASE || a > win_end ||
            size > win_end - a) {
            p2v_err_set(err, ENOSPC, "pci window [0x%llx, 0x%llx) has no room for bar%d "
                        "(0x%" PRIx32 " bytes)", (unsigned long long)VMM_PCI_MMIO_BASE,
                        (unsigned long long)win_end, bar, size);
            goto out;
        }
        if (!pci_bus_is_free(pci->mmio, a, size)) {
            p2v_err_set(err, EEXIST, "pci bar%d at 0x%" PRIx64 " overlaps an mmio region",
                        bar, a);
            goto out;
        }
        addr[bar] = a;
        next = a + size;
        nbars++;
    }
    if (!pci_bus_has_room(pci->mmio, nbars)) {
        p2v_err_set(err, ENOSPC, "mmio bus has no room for %u bars", nbars);
        goto out;
    }
    for (int bar = 0; bar < 6; bar++) {
        if (dev->bar_size[bar] == 0) {
            p2v_put_u32le(&dev->cfg[PCI_BAR0 + 4 * bar], 0);
            dev->bar_addr[bar] = 0;
            continue;
        }
        if (vmm_bus_register(pci->mmio, addr[bar], dev->bar_size[bar], pci_bar_fns[bar], dev,
                             pci_bar_names[bar], err) < 0)
            goto out; /* not expected after the checks above */
        dev->bar_addr[bar] = addr[bar];
        p2v_put_u32le(&dev->cfg[PCI_BAR0 + 4 * bar], (uint32_t)addr[bar]);
    }

    dev->slot = slot;
    dev->gsi = VMM_GSI_PCI_FIRST + slot % 8;
    dev->cfg[PCI_INT_LINE] = (uint8_t)dev->gsi;
    dev->cfg[PCI_INT_PIN] = 1; /* INTA# */
    /* Memory decode on from the start: Linux keeps valid pre-assigned BARs. */
    dev->cfg[PCI_COMMAND] |= PCI_COMMAND_MEMORY;
    dev->mmio_enabled = true;
    dev->pci = pci;
    pci->dev[slot] = dev;
    pci->next_mmio = next;
    p2v_log(P2V_LOG_DEBUG, "pci: device %04x:%04x at 00:%02x.0, gsi %u",
            p2v_get_u16le(&dev->cfg[PCI_VENDOR_ID]), p2v_get_u16le(&dev->cfg[PCI_DEVICE_ID]),
            slot, dev->gsi);
    r = 0;
out:
    pthread_mutex_unlock(&pci_lock);
    return r;
}
