/* test-devices.c: libvmm's buses and small devices without KVM: the bus table, PCI
 * configuration mechanism #1 and BAR handling, the 16550A, the CMOS/RTC and the misc ports
 * (reset, poweroff, debug exit). Interrupt lines are recorded instead of raised. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tap.h"
#include "vmm-int.h"

/* ------------------------------------------------------------------ helpers */

struct irq_rec {
    int level[VMM_GSI_COUNT];
    int calls[VMM_GSI_COUNT];
};

static void irq_record(void *opaque, unsigned gsi, int level)
{
    struct irq_rec *r = opaque;
    if (gsi < VMM_GSI_COUNT) {
        r->level[gsi] = level;
        r->calls[gsi]++;
    }
}

static uint64_t rd(struct vmm_bus *bus, uint64_t addr, unsigned len)
{
    uint8_t b[8];
    uint64_t v = 0;
    memset(b, 0x5a, sizeof(b));
    vmm_bus_access(bus, addr, b, len, false);
    for (unsigned i = 0; i < len; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

static void wr(struct vmm_bus *bus, uint64_t addr, uint64_t v, unsigned len)
{
    uint8_t b[8];
    for (unsigned i = 0; i < len; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    vmm_bus_access(bus, addr, b, len, true);
}

/* A device region that records its last access and reads as 0x11 0x22 ... */
struct rec_dev {
    int calls;
    uint64_t off;
    unsigned len;
    bool is_write;
    uint8_t last[8];
};

static void rec_io(void *opaque, uint64_t off, uint8_t *data, unsigned len, bool is_write)
{
    struct rec_dev *d = opaque;
    d->calls++;
    d->off = off;
    d->len = len;
    d->is_write = is_write;
    if (is_write)
        memcpy(d->last, data, len);
    else
        for (unsigned i = 0; i < len; i++)
            data[i] = (uint8_t)(0x11 * (i + 1));
}

/* --------------------------------------------------------------------- bus */

static void test_bus(void)
{
    static struct vmm_bus bus = { .name = "pio" }, full = { .name = "mmio" };
    struct rec_dev a = { 0 }, b = { 0 };
    struct p2v_err err = { 0 };
    char logbuf[65536] = "";
    FILE *log;
    int lines = 0;

    ok(vmm_bus_register(&bus, 0x100, 0x10, rec_io, &a, "a", &err) == 0, "bus: register a");
    ok(vmm_bus_register(&bus, 0x10f, 1, rec_io, &b, "b", &err) == -1,
       "bus: overlap rejected");
    ok(strstr(err.msg, "overlaps") != NULL, "bus: overlap error names it ('%s')", err.msg);
    ok(vmm_bus_register(&bus, 0x200, 0, rec_io, &b, "b", NULL) == -1, "bus: len 0 rejected");
    ok(vmm_bus_register(&bus, UINT64_MAX - 3, 8, rec_io, &b, "b", NULL) == -1,
       "bus: wrapping region rejected");
    ok(vmm_bus_register(&bus, 0x110, 0x10, rec_io, &b, "b", NULL) == 0,
       "bus: adjacent region accepted");

    is_int(rd(&bus, 0x104, 2), 0x2211, "bus: read dispatched");
    is_int(a.off, 4, "bus: offset is relative to the base");
    wr(&bus, 0x111, 0xabcd, 2);
    ok(b.calls == 1 && b.is_write && b.off == 1 && b.last[0] == 0xcd && b.last[1] == 0xab,
       "bus: write dispatched with its bytes");

    uint64_t before = bus.unclaimed;
    is_int(rd(&bus, 0x300, 4), 0xffffffff, "bus: unclaimed read is all ones");
    is_int(rd(&bus, 0x10e, 4), 0xffffffff, "bus: straddling read is unclaimed");
    int acalls = a.calls;
    wr(&bus, 0x10e, 0x12345678, 4);
    is_int(a.calls, acalls, "bus: straddling write reaches nobody");
    is_int(bus.unclaimed - before, 3, "bus: unclaimed accesses counted");

    ok(vmm_bus_move(&bus, &a, 0x100, 0x118) == -1, "bus: move onto another region fails");
    ok(vmm_bus_move(&bus, &a, 0x999, 0x400) == -1, "bus: move of an unknown region fails");
    ok(vmm_bus_move(&bus, &a, 0x100, 0x400) == 0, "bus: move");
    acalls = a.calls;
    is_int(rd(&bus, 0x100, 1), 0xff, "bus: old address unclaimed after move");
    rd(&bus, 0x40f, 1);
    ok(a.calls == acalls + 1 && a.off == 0xf, "bus: new address reaches the device");

    for (unsigned i = 0; i < VMM_BUS_MAX_REGIONS; i++)
        vmm_bus_register(&full, 0x1000 * i, 0x10, rec_io, &a, "x", NULL);
    is_int(full.n, VMM_BUS_MAX_REGIONS, "bus: filled");
    ok(vmm_bus_register(&full, 0x100000, 0x10, rec_io, &a, "x", &err) == -1,
       "bus: full bus rejects ('%s')", err.msg);

    /* The unclaimed log is rate-limited: the first 32, then every 1000th. */
    log = fmemopen(logbuf, sizeof(logbuf) - 1, "w");
    if (log) {
        enum p2v_log_level old = p2v_log_get_level();
        full.unclaimed = 0;
        p2v_log_set_stream(log);
        p2v_log_set_level(P2V_LOG_DEBUG);
        for (int i = 0; i < 2500; i++)
            rd(&full, 0x900000, 1);
        p2v_log_set_level(old);
        p2v_log_set_stream(NULL);
        fclose(log);
        for (char *p = logbuf; (p = strstr(p, "unclaimed 1-byte read at 0x900000")); p++)
            lines++;
    }
    is_int(lines, 34, "bus: unclaimed log rate-limited (32 + 1000th + 2000th)");
}

/* --------------------------------------------------------------------- PCI */

struct dummy_dev {
    struct vmm_pci_dev pci;
    int calls, bar;
    uint64_t off;
    unsigned len;
    bool is_write;
};

static void dummy_bar(void *opaque, int bar, uint64_t off, uint8_t *data, unsigned len,
                      bool is_write)
{
    struct dummy_dev *d = opaque;
    d->calls++;
    d->bar = bar;
    d->off = off;
    d->len = len;
    d->is_write = is_write;
    if (!is_write)
        memset(data, 0x42, len);
}

static void cf8(struct vmm_bus *pio, unsigned bus, unsigned slot, unsigned fn, unsigned reg)
{
    wr(pio, 0xcf8, 0x80000000u | bus << 16 | slot << 11 | fn << 8 | (reg & 0xfc), 4);
}

static uint32_t cfg_rd(struct vmm_bus *pio, unsigned slot, unsigned reg, unsigned len)
{
    cf8(pio, 0, slot, 0, reg);
    return (uint32_t)rd(pio, 0xcfc + (reg & 3), len);
}

static void cfg_wr(struct vmm_bus *pio, unsigned slot, unsigned reg, uint32_t v, unsigned len)
{
    cf8(pio, 0, slot, 0, reg);
    wr(pio, 0xcfc + (reg & 3), v, len);
}

static void dummy_init(struct dummy_dev *d, uint32_t size0, uint32_t size1)
{
    memset(d, 0, sizeof(*d));
    p2v_put_u16le(&d->pci.cfg[0], 0x1af4);
    p2v_put_u16le(&d->pci.cfg[2], 0x1042);
    d->pci.cfg[0x0b] = 0x01; /* mass storage */
    d->pci.cfg_wmask[0x40] = 0x0f;
    d->pci.bar_size[0] = size0;
    d->pci.bar_size[1] = size1;
    d->pci.bar_access = dummy_bar;
    d->pci.opaque = d;
}

static void test_pci(void)
{
    static struct vmm_bus pio = { .name = "pio" }, mmio = { .name = "mmio" };
    static struct vmm_pci pci;
    static struct dummy_dev d, extra[VMM_PCI_MAX_SLOTS], bad;
    struct p2v_err err = { 0 };
    uint64_t a0, a1, old;
    int calls;

    ok(vmm_pci_init(&pci, &pio, &mmio, &err) == 0, "pci: init (%s)", err.msg);
    is_int(cfg_rd(&pio, 0, 0, 4), 0x12378086, "pci: host bridge vendor/device");
    is_int(cfg_rd(&pio, 0, 0x0a, 2), 0x0600, "pci: host bridge class");
    is_int(cfg_rd(&pio, 0, 0x0e, 1), 0, "pci: host bridge header type 0");
    is_int(cfg_rd(&pio, 5, 0, 4), 0xffffffff, "pci: absent slot reads all ones");
    cf8(&pio, 1, 0, 0, 0);
    is_int(rd(&pio, 0xcfc, 4), 0xffffffff, "pci: bus 1 reads all ones");
    cf8(&pio, 0, 0, 1, 0);
    is_int(rd(&pio, 0xcfc, 4), 0xffffffff, "pci: function 1 reads all ones");
    wr(&pio, 0xcf8, 0x00000000, 4);
    is_int(rd(&pio, 0xcfc, 4), 0xffffffff, "pci: disabled cf8 reads all ones");

    /* Linux's type-1 check: byte write to 0xcfb, then cf8 round trip. */
    wr(&pio, 0xcf8, 0x80000000, 4);
    wr(&pio, 0xcfb, 0x01, 1);
    wr(&pio, 0xcf8, 0x01, 1);
    is_int(rd(&pio, 0xcf8, 4), 0x80000000, "pci: byte writes don't corrupt cf8");
    is_int(rd(&pio, 0xcf8, 1), 0xff, "pci: byte read of 0xcf8 floats (no mechanism #2)");
    wr(&pio, 0xcf8, 0xff000003, 4);
    is_int(rd(&pio, 0xcf8, 4), 0x80000000, "pci: cf8 reserved bits read 0");

    dummy_init(&d, 0x1000, 0x4000);
    ok(vmm_pci_add(&pci, &d.pci, &err) == 0, "pci: add device (%s)", err.msg);
    is_int(d.pci.slot, 1, "pci: device in slot 1");
    is_int(d.pci.gsi, VMM_GSI_PCI_FIRST + 1, "pci: gsi 17");
    a0 = d.pci.bar_addr[0];
    a1 = d.pci.bar_addr[1];
    ok(a0 >= VMM_PCI_MMIO_BASE && a0 + 0x1000 <= VMM_PCI_MMIO_BASE + VMM_PCI_MMIO_SIZE &&
           a0 % 0x1000 == 0,
       "pci: bar0 0x%llx aligned, in the window", (unsigned long long)a0);
    ok(a1 >= VMM_PCI_MMIO_BASE && a1 + 0x4000 <= VMM_PCI_MMIO_BASE + VMM_PCI_MMIO_SIZE &&
           a1 % 0x4000 == 0 && (a1 >= a0 + 0x1000 || a1 + 0x4000 <= a0),
       "pci: bar1 0x%llx aligned, in the window, apart", (unsigned long long)a1);
    is_int(cfg_rd(&pio, 1, 0x10, 4), a0, "pci: bar0 register holds its address");
    is_int(cfg_rd(&pio, 1, 0x14, 4), a1, "pci: bar1 register holds its address");
    is_int(cfg_rd(&pio, 1, 0x18, 4), 0, "pci: unused bar2 reads 0");
    is_int(cfg_rd(&pio, 1, 0x3d, 1), 1, "pci: interrupt pin A");
    is_int(cfg_rd(&pio, 1, 0x3c, 1), 17, "pci: interrupt line = gsi");
    ok(cfg_rd(&pio, 1, 0x04, 2) & 0x2, "pci: memory decode pre-enabled");

    /* MMIO reaches the device at the BAR's address. */
    is_int(rd(&mmio, a1 + 8, 4), 0x42424242, "pci: bar1 read reaches the device");
    ok(d.calls == 1 && d.bar == 1 && d.off == 8 && d.len == 4 && !d.is_write,
       "pci: bar handler sees bar 1, offset 8, len 4");
    wr(&mmio, a0 + 0xffc, 1, 4);
    ok(d.calls == 2 && d.bar == 0 && d.off == 0xffc && d.is_write, "pci: bar0 write");
    is_int(rd(&mmio, a0 + 0xffe, 4), 0xffffffff, "pci: access past a bar's end unclaimed");

    /* Sizing: all ones reads back ~(size - 1); the region stops decoding meanwhile. */
    cfg_wr(&pio, 1, 0x14, 0xffffffff, 4);
    is_int(cfg_rd(&pio, 1, 0x14, 4), 0xffffc000, "pci: bar1 sizing");
    calls = d.calls;
    is_int(rd(&mmio, a1, 4), 0xffffffff, "pci: bar1 does not decode while sized");
    is_int(d.calls, calls, "pci: device not called while sized");
    cfg_wr(&pio, 1, 0x14, (uint32_t)a1, 4);
    is_int(cfg_rd(&pio, 1, 0x14, 4), a1, "pci: bar1 restored");
    rd(&mmio, a1, 4);
    is_int(d.calls, calls + 1, "pci: bar1 decodes again after restore");
    cfg_wr(&pio, 1, 0x10, 0xffffffff, 4);
    is_int(cfg_rd(&pio, 1, 0x10, 4), 0xfffff000, "pci: bar0 sizing");
    cfg_wr(&pio, 1, 0x10, (uint32_t)a0, 4);
    cfg_wr(&pio, 1, 0x18, 0xffffffff, 4);
    is_int(cfg_rd(&pio, 1, 0x18, 4), 0, "pci: unused bar sizes as 0");

    /* Moving a BAR moves its region. */
    old = a1;
    cfg_wr(&pio, 1, 0x14, 0xd0000000 + 0x123, 4);
    is_int(cfg_rd(&pio, 1, 0x14, 4), 0xd0000000, "pci: bar1 low bits masked on write");
    is_int(d.pci.bar_addr[1], 0xd0000000, "pci: bar1 moved");
    calls = d.calls;
    is_int(rd(&mmio, old, 4), 0xffffffff, "pci: old address no longer decodes");
    is_int(d.calls, calls, "pci: old address does not reach the device");
    rd(&mmio, 0xd0000010, 2);
    ok(d.calls == calls + 1 && d.bar == 1 && d.off == 0x10, "pci: new address reaches bar1");
    /* A move onto bar0 fails: the bar stops decoding but nothing breaks. */
    cfg_wr(&pio, 1, 0x14, (uint32_t)a0 & ~0x3fffu, 4);
    is_int(d.pci.bar_addr[1], 0xd0000000, "pci: overlapping move refused");
    calls = d.calls;
    rd(&mmio, 0xd0000000, 4);
    is_int(d.calls, calls, "pci: bar1 not decoding after a refused move");
    cfg_wr(&pio, 1, 0x14, 0xd0000000, 4);
    rd(&mmio, 0xd0000000, 4);
    is_int(d.calls, calls + 1, "pci: bar1 decodes again at its address");

    /* Command register: memory decode gates the device. */
    cfg_wr(&pio, 1, 0x04, 0x0000, 2);
    ok(!d.pci.mmio_enabled, "pci: memory decode off");
    calls = d.calls;
    is_int(rd(&mmio, a0, 4), 0xffffffff, "pci: decode off reads all ones");
    wr(&mmio, a0, 0, 4);
    is_int(d.calls, calls, "pci: decode off does not reach the device");
    cfg_wr(&pio, 1, 0x04, 0x0406, 2);
    is_int(cfg_rd(&pio, 1, 0x04, 2), 0x0406, "pci: command memory|master|intx-disable");
    rd(&mmio, a0, 4);
    is_int(d.calls, calls + 1, "pci: decode on reaches the device");
    cfg_wr(&pio, 1, 0x04, 0xffff, 2);
    is_int(cfg_rd(&pio, 1, 0x04, 2), 0x0406, "pci: other command bits read-only");

    /* Read-only and masked bytes. */
    cfg_wr(&pio, 1, 0x00, 0xdeadbeef, 4);
    is_int(cfg_rd(&pio, 1, 0x00, 4), 0x10421af4, "pci: vendor/device read-only");
    cfg_wr(&pio, 1, 0x08, 0xffffffff, 4);
    is_int(cfg_rd(&pio, 1, 0x08, 4), 0x01000000, "pci: class read-only");
    cfg_wr(&pio, 1, 0x3c, 0x0000ff0b, 2);
    is_int(cfg_rd(&pio, 1, 0x3c, 1), 0x0b, "pci: interrupt line writable");
    is_int(cfg_rd(&pio, 1, 0x3d, 1), 1, "pci: interrupt pin read-only");
    cfg_wr(&pio, 1, 0x40, 0xff, 1);
    is_int(cfg_rd(&pio, 1, 0x40, 1), 0x0f, "pci: cfg_wmask honoured");
    cfg_wr(&pio, 1, 0x44, 0xffffffff, 4);
    is_int(cfg_rd(&pio, 1, 0x44, 4), 0, "pci: unmasked bytes not writable");

    /* Misaligned and malformed accesses are harmless. */
    is_int(cfg_rd(&pio, 1, 0x01, 2), 0xffff, "pci: misaligned word read floats");
    cfg_wr(&pio, 1, 0x3d, 0xffff, 2);
    is_int(cfg_rd(&pio, 1, 0x3c, 2), 0x010b, "pci: misaligned word write ignored");
    cf8(&pio, 0, 1, 0, 0xfc);
    is_int(rd(&pio, 0xcfe, 2), 0x0000, "pci: last word of the space readable");
    is_int(rd(&pio, 0xcfe, 4), 0xffffffff, "pci: dword past the data window unclaimed");
    is_int(rd(&pio, 0xcfd, 4), 0xffffffff, "pci: dword at 0xcfd rejected");

    /* Slots run out; bad BAR sizes are refused. */
    dummy_init(&bad, 24, 0);
    ok(vmm_pci_add(&pci, &bad.pci, &err) == -1, "pci: bar size not a power of two refused");
    dummy_init(&bad, 8, 0);
    ok(vmm_pci_add(&pci, &bad.pci, NULL) == -1, "pci: bar size below 16 refused");
    int added = 0;
    for (int i = 0; i < VMM_PCI_MAX_SLOTS; i++) {
        dummy_init(&extra[i], 0x100, 0);
        if (vmm_pci_add(&pci, &extra[i].pci, &err) == 0)
            added++;
    }
    is_int(added, VMM_PCI_MAX_SLOTS - 2, "pci: slots fill up");
    is_int(extra[VMM_PCI_MAX_SLOTS - 3].pci.gsi,
           VMM_GSI_PCI_FIRST + (VMM_PCI_MAX_SLOTS - 1) % 8, "pci: gsi of the last slot");
    is_int(cfg_rd(&pio, VMM_PCI_MAX_SLOTS - 1, 0, 2), 0x1af4, "pci: last slot visible");
}

/* -------------------------------------------------------------------- UART */

static uint8_t out_buf[4096];
static size_t out_len;

static void uart_out(void *opaque, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n && out_len < sizeof(out_buf); i++)
        out_buf[out_len++] = p[i];
}

#define COM1 0x3f8
#define UART_FEED 1000 /* below the receive queue's 1024: none may be dropped */

static void *uart_feeder(void *opaque)
{
    const uint8_t b = 7;
    for (int i = 0; i < UART_FEED; i++)
        vmm_uart_input(opaque, &b, 1);
    return NULL;
}

static void test_uart(void)
{
    static struct vmm_bus pio = { .name = "pio" };
    struct irq_rec rec = { { 0 }, { 0 } };
    struct vmm_irq irq = { irq_record, &rec };
    struct p2v_err err = { 0 };
    struct vmm_uart *u;
    uint8_t big[1100];
    int n, calls;

    u = vmm_uart_new(COM1, VMM_GSI_COM1, &irq, uart_out, NULL, &err);
    ok(u != NULL, "uart: new (%s)", err.msg);
    if (!u)
        return;
    ok(vmm_uart_new(0xfffc, 4, &irq, uart_out, NULL, NULL) == NULL,
       "uart: base too high refused");
    ok(vmm_uart_attach(u, &pio, &err) == 0, "uart: attach");

    wr(&pio, COM1, 'h', 1);
    wr(&pio, COM1, 'i', 1);
    ok(out_len == 2 && memcmp(out_buf, "hi", 2) == 0, "uart: THR bytes reach out()");
    is_int(rd(&pio, COM1 + 5, 1), 0x60, "uart: LSR THRE|TEMT, no data");

    /* Existence tests Linux's autoconfig makes. */
    wr(&pio, COM1 + 1, 0, 1);
    is_int(rd(&pio, COM1 + 1, 1), 0, "uart: IER cleared");
    wr(&pio, COM1 + 1, 0xff, 1);
    is_int(rd(&pio, COM1 + 1, 1), 0x0f, "uart: IER keeps the low four bits");
    wr(&pio, COM1 + 1, 0, 1);
    wr(&pio, COM1 + 7, 0xa5, 1);
    is_int(rd(&pio, COM1 + 7, 1), 0xa5, "uart: scratch register");

    /* Divisor latch. */
    wr(&pio, COM1 + 3, 0x83, 1);
    wr(&pio, COM1, 0x01, 1);
    wr(&pio, COM1 + 1, 0x02, 1);
    is_int(rd(&pio, COM1, 1), 0x01, "uart: DLL");
    is_int(rd(&pio, COM1 + 1, 1), 0x02, "uart: DLM");
    is_int(out_len, 2, "uart: DLL write is not transmitted");
    wr(&pio, COM1 + 3, 0x03, 1);
    is_int(rd(&pio, COM1 + 1, 1), 0, "uart: IER back after DLAB cleared");
    is_int(rd(&pio, COM1 + 3, 1), 0x03, "uart: LCR");

    /* Loopback. */
    wr(&pio, COM1 + 4, 0x10 | 0x0a, 1);
    is_int(rd(&pio, COM1 + 6, 1) & 0xf0, 0x90, "uart: loopback MSR = DCD|CTS");
    wr(&pio, COM1, 'x', 1);
    is_int(out_len, 2, "uart: loopback byte not transmitted");
    is_int(rd(&pio, COM1 + 5, 1) & 1, 1, "uart: loopback byte received (DR)");
    is_int(rd(&pio, COM1, 1), 'x', "uart: loopback byte read back");
    wr(&pio, COM1 + 4, 0, 1);
    is_int(rd(&pio, COM1 + 6, 1), 0xb0, "uart: MSR outside loopback");

    /* FIFOs: "16550A". */
    is_int(rd(&pio, COM1 + 2, 1), 0x01, "uart: IIR without FIFO");
    wr(&pio, COM1 + 2, 0xc7, 1);
    is_int(rd(&pio, COM1 + 2, 1), 0xc1, "uart: IIR with FIFO enabled");

    /* THR empty interrupt, gated by OUT2. */
    wr(&pio, COM1 + 1, 0x02, 1);
    is_int(rec.calls[VMM_GSI_COM1], 0, "uart: no irq without OUT2");
    wr(&pio, COM1 + 1, 0x00, 1);
    wr(&pio, COM1 + 4, 0x0b, 1); /* DTR RTS OUT2 */
    wr(&pio, COM1 + 1, 0x02, 1);
    is_int(rec.level[VMM_GSI_COM1], 1, "uart: IER.THRI raises the line");
    is_int(rd(&pio, COM1 + 2, 1), 0xc2, "uart: IIR reports THRI");
    is_int(rec.level[VMM_GSI_COM1], 0, "uart: IIR read clears THRI, line low");
    is_int(rd(&pio, COM1 + 2, 1), 0xc1, "uart: then IIR reports nothing");
    wr(&pio, COM1, '!', 1);
    is_int(rec.level[VMM_GSI_COM1], 1, "uart: THR write makes THRI pending again");
    calls = rec.calls[VMM_GSI_COM1];
    wr(&pio, COM1, '!', 1);
    is_int(rec.calls[VMM_GSI_COM1], calls, "uart: line set only on changes");
    wr(&pio, COM1 + 1, 0x00, 1);
    is_int(rec.level[VMM_GSI_COM1], 0, "uart: IER cleared, line low");
    /* The 8250's THRE re-assertion test: THRI off then on re-raises it. */
    wr(&pio, COM1 + 1, 0x02, 1);
    ok(!(rd(&pio, COM1 + 2, 1) & 1), "uart: THRI asserted");
    wr(&pio, COM1 + 1, 0x00, 1);
    wr(&pio, COM1 + 1, 0x02, 1);
    ok(!(rd(&pio, COM1 + 2, 1) & 1), "uart: THRI re-asserted after IER toggle");
    wr(&pio, COM1 + 1, 0x00, 1);

    /* Receive. */
    wr(&pio, COM1 + 1, 0x01, 1);
    is_int(rec.level[VMM_GSI_COM1], 0, "uart: RDI alone, no data, line low");
    vmm_uart_input(u, (const uint8_t *)"ab", 2);
    is_int(rec.level[VMM_GSI_COM1], 1, "uart: input raises RDI");
    is_int(rd(&pio, COM1 + 2, 1), 0xc4, "uart: IIR reports RDI");
    is_int(rd(&pio, COM1 + 5, 1), 0x61, "uart: LSR DR");
    is_int(rd(&pio, COM1, 1), 'a', "uart: RBR a");
    is_int(rd(&pio, COM1, 1), 'b', "uart: RBR b");
    is_int(rd(&pio, COM1 + 5, 1), 0x60, "uart: LSR empty again");
    is_int(rec.level[VMM_GSI_COM1], 0, "uart: drained, line low");

    memset(big, 'z', sizeof(big));
    vmm_uart_input(u, big, sizeof(big));
    for (n = 0; n < 5000 && (rd(&pio, COM1 + 5, 1) & 1); n++)
        rd(&pio, COM1, 1);
    is_int(n, 1024, "uart: queue keeps 1024 bytes, drops the rest");
    vmm_uart_input(u, big, 10);
    wr(&pio, COM1 + 2, 0x03, 1);
    is_int(rd(&pio, COM1 + 5, 1) & 1, 0, "uart: FCR clears the receive queue");
    is_int(rd(&pio, COM1 + 8, 1), 0xff, "uart: port past the uart unclaimed");

    /* Input from another thread while the guest side reads: nothing lost or duplicated. */
    pthread_t th;
    int got = 0, sum = 0;
    wr(&pio, COM1 + 2, 0x01, 1);
    ok(pthread_create(&th, NULL, uart_feeder, u) == 0, "uart: feeder thread started");
    for (long spins = 0; got < UART_FEED && spins < 100000000L; spins++) {
        if (rd(&pio, COM1 + 5, 1) & 1) {
            sum += (int)rd(&pio, COM1, 1);
            got++;
        }
    }
    pthread_join(th, NULL);
    ok(got == UART_FEED && sum == UART_FEED * 7, "uart: %d bytes from the input thread", got);

    vmm_uart_free(u);
}

/* --------------------------------------------------------------------- RTC */

static unsigned bcd(uint64_t v)
{
    return (unsigned)((v >> 4) * 10 + (v & 0xf));
}

static uint64_t cmos(struct vmm_bus *pio, unsigned idx)
{
    wr(pio, 0x70, idx, 1);
    return rd(pio, 0x71, 1);
}

static void test_rtc(void)
{
    static struct vmm_bus pio = { .name = "pio" }, pio2 = { .name = "pio" };
    struct tm tm = { 0 };
    time_t before, after, t;

    ok(vmm_rtc_attach(&pio, 512ull << 20, NULL) == 0, "rtc: attach 512 MiB");
    before = time(NULL);
    tm.tm_sec = (int)bcd(cmos(&pio, 0x00));
    tm.tm_min = (int)bcd(cmos(&pio, 0x02));
    tm.tm_hour = (int)bcd(cmos(&pio, 0x04));
    tm.tm_mday = (int)bcd(cmos(&pio, 0x07));
    tm.tm_mon = (int)bcd(cmos(&pio, 0x08)) - 1;
    tm.tm_year = (int)(bcd(cmos(&pio, 0x32)) * 100 + bcd(cmos(&pio, 0x09))) - 1900;
    after = time(NULL);
    t = timegm(&tm);
    ok(t >= before - 2 && t <= after + 2, "rtc: BCD time %lld within 2 s of the host's %lld",
       (long long)t, (long long)before);
    uint64_t wday = cmos(&pio, 0x06);
    ok(wday >= 1 && wday <= 7, "rtc: weekday 1-7");
    is_int(cmos(&pio, 0x0a) & 0x80, 0, "rtc: no update in progress");
    is_int(cmos(&pio, 0x0b), 0x02, "rtc: status B 24 h BCD");
    is_int(cmos(&pio, 0x0d), 0x80, "rtc: status D valid");
    is_int(cmos(&pio, 0x8d), 0x80, "rtc: NMI mask bit ignored");
    is_int(cmos(&pio, 0x15) | cmos(&pio, 0x16) << 8, 640, "rtc: base memory 640 KiB");
    is_int(cmos(&pio, 0x17) | cmos(&pio, 0x18) << 8, 0xffff, "rtc: extended memory capped");
    is_int(cmos(&pio, 0x30) | cmos(&pio, 0x31) << 8, 0xffff, "rtc: extended memory (0x30)");
    is_int(cmos(&pio, 0x34) | cmos(&pio, 0x35) << 8, (512 - 16) * 16,
           "rtc: 64 KiB blocks above 16 MiB");
    wr(&pio, 0x70, 0x40, 1);
    wr(&pio, 0x71, 0x5c, 1);
    is_int(cmos(&pio, 0x40), 0x5c, "rtc: CMOS RAM writable");
    wr(&pio, 0x70, 0x0d, 1);
    wr(&pio, 0x71, 0x00, 1);
    is_int(cmos(&pio, 0x0d), 0x80, "rtc: status D not writable");
    uint64_t year = cmos(&pio, 0x09);
    wr(&pio, 0x70, 0x09, 1);
    wr(&pio, 0x71, year ^ 0x11, 1);
    is_int(cmos(&pio, 0x09), year, "rtc: year write ignored");

    ok(vmm_rtc_attach(&pio2, 16ull << 20, NULL) == 0, "rtc: attach again, 16 MiB");
    is_int(cmos(&pio2, 0x17) | cmos(&pio2, 0x18) << 8, 15 * 1024, "rtc: 15 MiB extended");
    is_int(cmos(&pio2, 0x34) | cmos(&pio2, 0x35) << 8, 0, "rtc: none above 16 MiB");
    is_int(cmos(&pio2, 0x40), 0, "rtc: CMOS RAM reset by attach");
}

/* -------------------------------------------------------------------- misc */

static int notified;
static void on_stop(void *opaque)
{
    notified++;
}

static void stop_init(struct vmm_stop *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->notify = on_stop;
    notified = 0;
}

static void test_misc(void)
{
    static struct vmm_bus pio = { .name = "pio" }, pio2 = { .name = "pio" },
                          pio3 = { .name = "pio" };
    struct vmm_stop stop;
    struct p2v_err err = { 0 };
    uint64_t before;

    stop_init(&stop);
    ok(vmm_misc_attach(&pio, &stop, &err) == 0, "misc: attach (%s)", err.msg);
    is_int(rd(&pio, 0x64, 1) & 0x02, 0, "misc: i8042 input buffer empty");
    before = pio.unclaimed;
    is_int(rd(&pio, 0x2f8 + 5, 1), 0xff, "misc: COM2 floats");
    is_int(rd(&pio, 0x3da, 1), 0xff, "misc: VGA floats");
    wr(&pio, 0x80, 0x55, 1);
    wr(&pio, 0xed, 0x55, 1);
    is_int(pio.unclaimed, before, "misc: probes are claimed");
    rd(&pio, 0x61, 1);
    rd(&pio, 0x40, 1);
    is_int(pio.unclaimed, before + 2, "misc: PIT ports left to KVM");

    wr(&pio, 0x64, 0xd1, 1);
    is_int(stop.reason, VMM_STOP_NONE, "misc: other i8042 commands accepted");
    wr(&pio, 0x64, 0xfe, 1);
    is_int(stop.reason, VMM_STOP_RESET, "misc: 0xfe to 0x64 resets");
    is_int(notified, 1, "misc: notified");
    wr(&pio, VMM_PORT_POWEROFF, 0x2000, 2);
    is_int(stop.reason, VMM_STOP_RESET, "misc: first reason kept");
    is_int(notified, 1, "misc: notified once");
    pthread_mutex_destroy(&stop.lock);

    stop_init(&stop);
    ok(vmm_misc_attach(&pio2, &stop, NULL) == 0, "misc: attach 2");
    wr(&pio2, VMM_PORT_POWEROFF, 0x0001, 2);
    is_int(stop.reason, VMM_STOP_NONE, "misc: poweroff port without SLP_EN ignored");
    wr(&pio2, VMM_PORT_POWEROFF, 0x2000, 2);
    is_int(stop.reason, VMM_STOP_POWEROFF, "misc: 0x2000 to 0x604 powers off");
    is_int(notified, 1, "misc: poweroff notified");
    pthread_mutex_destroy(&stop.lock);

    stop_init(&stop);
    ok(vmm_misc_attach(&pio3, &stop, NULL) == 0, "misc: attach 3");
    ok(vmm_misc_attach(&pio3, &stop, &err) == -1, "misc: attaching twice fails");
    wr(&pio3, VMM_PORT_DEBUG_EXIT, 3, 1);
    ok(stop.reason == VMM_STOP_POWEROFF && stop.code == 3, "misc: debug exit code 3");
    is_int(notified, 1, "misc: debug exit notified");
    pthread_mutex_destroy(&stop.lock);
}

int main(void)
{
    test_bus();
    test_pci();
    test_uart();
    test_rtc();
    test_misc();
    return exit_status();
}
