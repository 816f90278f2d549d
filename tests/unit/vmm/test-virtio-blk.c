/* test-virtio-blk.c: vmm/virtio-blk.c driven as a guest driver would, without KVM. Guest
 * memory is 16 MiB of host memory with guard bytes after it; the interrupt line is
 * recorded. The test walks the PCI capability list, negotiates features, sets up queue 0
 * (size 16) and submits requests through the split ring: reads compared with the image,
 * a write read back, flush, GET_ID, an unsupported type, a header split over two
 * descriptors, notification suppression. Then hostile drivers: descriptor indices beyond
 * the queue, a loop, buffers outside guest memory or whose end overflows, an indirect
 * descriptor, a sector beyond the capacity, a short header, a read-only status byte, an
 * avail index far ahead, rings outside guest memory, accesses of the wrong width. Each is
 * answered without a crash, and the guard bytes after guest memory stay intact.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "vmm-int.h"

#define MIB (1024u * 1024u)
#define RAM_SIZE (16u * MIB)
#define GUARD 4096u
#define DISK_SIZE (4u * MIB)
#define QSIZE 16u
#define GSI 17u

/* BAR 0 offsets as the capabilities should describe them (checked below). */
static uint32_t common_off, isr_off, dev_off, notify_off, notify_mult;

/* Guest-physical layout of the driver's structures. */
#define DESC_GPA 0x10000ull
#define AVAIL_GPA 0x11000ull
#define USED_GPA 0x12000ull
#define HDR_GPA 0x20000ull
#define STATUS_GPA 0x21000ull
#define DATA_GPA 0x100000ull

/* Status bits, features and request types. */
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

static uint8_t *ram;
static struct vmm_mem mem;
static uint8_t ref[DISK_SIZE];
static struct vmm_virtio_blk *blk;
static struct vmm_pci_dev *pdev;
static uint16_t avail_idx, used_seen;

struct irq_rec {
    int level;
    unsigned gsi;
    int raises;
};
static struct irq_rec irq_rec;

static void irq_set(void *opaque, unsigned gsi, int level)
{
    struct irq_rec *r = opaque;
    if (level && !r->level)
        r->raises++;
    r->level = level;
    r->gsi = gsi;
}

static uint64_t bar_rd(uint32_t off, unsigned len)
{
    uint8_t d[8] = {0};
    pdev->bar_access(pdev->opaque, 0, off, d, len, false);
    uint64_t v = 0;
    for (unsigned i = 0; i < len; i++)
        v |= (uint64_t)d[i] << (8 * i);
    return v;
}

static void bar_wr(uint32_t off, unsigned len, uint64_t v)
{
    uint8_t d[8];
    for (unsigned i = 0; i < len; i++)
        d[i] = (uint8_t)(v >> (8 * i));
    pdev->bar_access(pdev->opaque, 0, off, d, len, true);
}

static uint8_t status_rd(void)
{
    return (uint8_t)bar_rd(common_off + 0x14, 1);
}

static void status_wr(uint8_t v)
{
    bar_wr(common_off + 0x14, 1, v);
}

static void set_desc(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    uint8_t *d = ram + DESC_GPA + 16 * i;
    p2v_put_u64le(d, addr);
    p2v_put_u32le(d + 8, len);
    p2v_put_u16le(d + 12, flags);
    p2v_put_u16le(d + 14, next);
}

static void set_hdr(uint64_t gpa, uint32_t type, uint64_t sector)
{
    p2v_put_u32le(ram + gpa, type);
    p2v_put_u32le(ram + gpa + 4, 0);
    p2v_put_u64le(ram + gpa + 8, sector);
}

/* Make @head available, bump avail idx by @step (1 normally) and notify queue 0. */
static void kick(uint16_t head, uint16_t step)
{
    p2v_put_u16le(ram + AVAIL_GPA + 4 + 2 * (avail_idx % QSIZE), head);
    avail_idx = (uint16_t)(avail_idx + step);
    p2v_put_u16le(ram + AVAIL_GPA + 2, avail_idx);
    bar_wr(notify_off + notify_mult * (uint32_t)bar_rd(common_off + 0x1e, 2), 2, 0);
}

/* The used element the last kick produced: true when exactly one came, with id @head. */
static bool used_one(uint16_t head, uint32_t *len)
{
    uint16_t idx = p2v_get_u16le(ram + USED_GPA + 2);
    if (idx != (uint16_t)(used_seen + 1))
        return false;
    const uint8_t *e = ram + USED_GPA + 4 + 8 * (used_seen % QSIZE);
    used_seen = idx;
    *len = p2v_get_u32le(e + 4);
    return p2v_get_u32le(e) == head;
}

/* One request in three descriptors 0 (header), 1 (data), 2 (status). Returns the
 * status byte (0xee when the device did not write it) and the used length in *ulen, or
 * -1 when the used ring did not get the element. */
static int request(uint32_t type, uint64_t sector, uint64_t data, uint32_t dlen, bool in,
                   uint32_t *ulen)
{
    set_hdr(HDR_GPA, type, sector);
    ram[STATUS_GPA] = 0xee;
    set_desc(0, HDR_GPA, 16, F_NEXT, 1);
    if (dlen) {
        set_desc(1, data, dlen, (uint16_t)(F_NEXT | (in ? F_WRITE : 0)), 2);
        set_desc(2, STATUS_GPA, 1, F_WRITE, 0);
    } else {
        set_desc(0, HDR_GPA, 16, F_NEXT, 2);
        set_desc(2, STATUS_GPA, 1, F_WRITE, 0);
    }
    kick(0, 1);
    if (!used_one(0, ulen))
        return -1;
    return ram[STATUS_GPA];
}

/* Reset and bring the device up with queue 0 at our rings, size QSIZE. */
static bool driver_init(void)
{
    status_wr(0);
    if (status_rd() != 0)
        return false;
    memset(ram + DESC_GPA, 0, 0x3000);
    avail_idx = used_seen = 0;
    status_wr(S_ACK | S_DRIVER);
    bar_wr(common_off + 0x08, 4, 0);
    bar_wr(common_off + 0x0c, 4, (1u << 9) | (1u << 6) | (1u << 2));
    bar_wr(common_off + 0x08, 4, 1);
    bar_wr(common_off + 0x0c, 4, 1); /* VIRTIO_F_VERSION_1 */
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(status_rd() & S_FEATURES_OK))
        return false;
    bar_wr(common_off + 0x16, 2, 0);
    bar_wr(common_off + 0x18, 2, QSIZE);
    bar_wr(common_off + 0x20, 4, (uint32_t)DESC_GPA);
    bar_wr(common_off + 0x24, 4, 0);
    bar_wr(common_off + 0x28, 4, (uint32_t)AVAIL_GPA);
    bar_wr(common_off + 0x2c, 4, 0);
    bar_wr(common_off + 0x30, 8, USED_GPA); /* one 64-bit access works too */
    bar_wr(common_off + 0x1c, 2, 1);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    return status_rd() == (S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

static bool guard_intact(void)
{
    for (unsigned i = 0; i < GUARD; i++)
        if (ram[RAM_SIZE + i] != 0xa5)
            return false;
    return true;
}

static void test_pci_caps(void)
{
    const uint8_t *cfg = pdev->cfg;
    is_int(p2v_get_u16le(cfg), 0x1af4, "vendor id");
    is_int(p2v_get_u16le(cfg + 2), 0x1042, "device id (modern block)");
    is_int(cfg[8], 1, "revision 1");
    is_int(cfg[0x0b] << 16 | cfg[0x0a] << 8 | cfg[0x09], 0x018000, "class code");
    is_int(p2v_get_u16le(cfg + 0x2e), 2, "subsystem id");
    ok(p2v_get_u16le(cfg + 6) & 0x10, "status has the capability list bit");
    is_int(pdev->bar_size[0], 0x4000, "BAR 0 is 16 KiB");
    ok(pdev->cfg_wmask[4] & 0x02, "memory space enable is writable");
    unsigned seen = 0, hops = 0;
    for (unsigned p = cfg[0x34]; p && hops < 48; p = cfg[p + 1], hops++) {
        if (p < 0x40 || p > 0xf0 || cfg[p] != 0x09)
            break;
        unsigned type = cfg[p + 3];
        uint32_t off = p2v_get_u32le(cfg + p + 8), len = p2v_get_u32le(cfg + p + 12);
        if (cfg[p + 4] != 0 || off + len > pdev->bar_size[0] || type < 1 || type > 4)
            break;
        seen |= 1u << type;
        if (type == 1 && len >= 0x38)
            common_off = off;
        if (type == 3)
            isr_off = off;
        if (type == 4 && len >= 24)
            dev_off = off;
        if (type == 2 && cfg[p + 2] >= 20) {
            notify_off = off;
            notify_mult = p2v_get_u32le(cfg + p + 16);
        }
    }
    is_int(seen, 0x1e, "the four virtio capabilities are in the list");
    ok(isr_off != common_off && dev_off != common_off && notify_off != common_off,
       "the structures are apart (common 0x%x isr 0x%x device 0x%x notify 0x%x * %u)",
       common_off, isr_off, dev_off, notify_off, notify_mult);
}

static void test_setup(void)
{
    status_wr(0);
    is_int(status_rd(), 0, "status reads 0 after reset");
    status_wr(S_ACK | S_DRIVER);
    bar_wr(common_off + 0x00, 4, 0);
    uint32_t lo = (uint32_t)bar_rd(common_off + 0x04, 4);
    bar_wr(common_off + 0x00, 4, 1);
    uint32_t hi = (uint32_t)bar_rd(common_off + 0x04, 4);
    ok(hi & 1, "VIRTIO_F_VERSION_1 offered");
    ok((lo & (1u << 9)) && (lo & (1u << 6)) && (lo & (1u << 2)),
       "FLUSH, BLK_SIZE and SEG_MAX offered (0x%x)", lo);
    ok(!(lo & (1u << 28)) && !(lo & (1u << 29)), "INDIRECT_DESC and EVENT_IDX not offered");
    bar_wr(common_off + 0x00, 4, 7);
    is_int(bar_rd(common_off + 0x04, 4), 0, "feature word 7 is 0");
    /* Without VERSION_1 the device refuses FEATURES_OK. */
    bar_wr(common_off + 0x08, 4, 0);
    bar_wr(common_off + 0x0c, 4, lo);
    bar_wr(common_off + 0x08, 4, 1);
    bar_wr(common_off + 0x0c, 4, 0);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK);
    ok(!(status_rd() & S_FEATURES_OK), "FEATURES_OK refused without VERSION_1");
    /* Features the device did not offer are refused too. */
    status_wr(0);
    status_wr(S_ACK | S_DRIVER);
    bar_wr(common_off + 0x08, 4, 0);
    bar_wr(common_off + 0x0c, 4, lo | (1u << 28));
    bar_wr(common_off + 0x08, 4, 1);
    bar_wr(common_off + 0x0c, 4, 1);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK);
    ok(!(status_rd() & S_FEATURES_OK), "FEATURES_OK refused with INDIRECT_DESC accepted");

    is_int(bar_rd(common_off + 0x12, 2), 1, "one queue");
    is_int(bar_rd(common_off + 0x10, 2), 0xffff, "msix_config is NO_VECTOR");
    bar_wr(common_off + 0x16, 2, 0);
    is_int(bar_rd(common_off + 0x18, 2), 256, "queue 0's maximum size");
    is_int(bar_rd(common_off + 0x1a, 2), 0xffff, "queue_msix_vector is NO_VECTOR");
    bar_wr(common_off + 0x18, 2, 12);
    bar_wr(common_off + 0x18, 2, 512);
    bar_wr(common_off + 0x18, 2, 0);
    is_int(bar_rd(common_off + 0x18, 2), 256, "sizes 12, 512, 0 refused");
    bar_wr(common_off + 0x16, 2, 1);
    is_int(bar_rd(common_off + 0x18, 2), 0, "queue 1 does not exist");
    bar_wr(common_off + 0x16, 2, 0);
    /* The wrong access widths. */
    ok(bar_rd(common_off + 0x04, 1) == 0 && bar_rd(common_off + 0x14, 2) == 0 &&
           bar_rd(common_off + 0x12, 4) == 0,
       "reads of the wrong width return 0");
    bar_wr(common_off + 0x16, 1, 5);
    bar_wr(common_off + 0x16, 4, 5);
    is_int(bar_rd(common_off + 0x16, 2), 0, "writes of the wrong width are ignored");

    ok(driver_init(), "driver initialisation reaches DRIVER_OK");
    bar_wr(common_off + 0x18, 2, 4);
    bar_wr(common_off + 0x20, 4, 0x5000);
    ok(bar_rd(common_off + 0x18, 2) == QSIZE && bar_rd(common_off + 0x20, 4) == DESC_GPA,
       "queue fields are frozen once enabled");
    is_int(bar_rd(common_off + 0x30, 8), USED_GPA, "64-bit read of queue_used");
    is_int(bar_rd(common_off + 0x1c, 2), 1, "queue enabled");
    /* Device configuration. */
    is_int(bar_rd(dev_off + 0, 8), DISK_SIZE / 512, "capacity in sectors");
    is_int(bar_rd(dev_off + 0, 4) | bar_rd(dev_off + 4, 4) << 32, DISK_SIZE / 512,
           "capacity as two 32-bit reads");
    is_int(bar_rd(dev_off + 20, 4), 512, "blk_size");
    is_int(bar_rd(dev_off + 12, 4), 126, "seg_max");
    is_int(bar_rd(dev_off + 0x800, 4), 0, "beyond the configuration reads 0");
}

static void test_requests(void)
{
    uint32_t ulen = 0;
    struct vmm_virtio_blk_stats st;
    irq_rec.level = 0;
    int raises = irq_rec.raises;
    is_int(request(0, 8, DATA_GPA, 4096, true, &ulen), 0, "read of 8 sectors: OK");
    ok(memcmp(ram + DATA_GPA, ref + 8 * 512, 4096) == 0, "read data matches the image");
    is_int(ulen, 4097, "used length is data + status");
    ok(irq_rec.level == 1 && irq_rec.gsi == GSI && irq_rec.raises == raises + 1,
       "the interrupt line is raised on GSI %u", GSI);
    is_int(bar_rd(isr_off, 1), 1, "ISR shows a used buffer");
    is_int(irq_rec.level, 0, "reading the ISR lowers the line");
    is_int(bar_rd(isr_off, 1), 0, "and clears it");

    /* Data in two descriptors, the header split over two. */
    set_hdr(HDR_GPA, 0, 1000);
    set_desc(3, HDR_GPA, 8, F_NEXT, 4);
    set_desc(4, HDR_GPA + 8, 8, F_NEXT, 5);
    set_desc(5, DATA_GPA, 1536, F_NEXT | F_WRITE, 6);
    set_desc(6, DATA_GPA + 8192, 512, F_NEXT | F_WRITE, 7);
    set_desc(7, STATUS_GPA, 1, F_WRITE, 0);
    ram[STATUS_GPA] = 0xee;
    kick(3, 1);
    ok(used_one(3, &ulen) && ram[STATUS_GPA] == 0 && ulen == 2049 &&
           memcmp(ram + DATA_GPA, ref + 1000 * 512, 1536) == 0 &&
           memcmp(ram + DATA_GPA + 8192, ref + 1000 * 512 + 1536, 512) == 0,
       "split header and scattered data");

    uint8_t pat[4096];
    for (unsigned i = 0; i < sizeof pat; i++)
        pat[i] = (uint8_t)(i * 7 + 3);
    memcpy(ram + DATA_GPA + 65536, pat, sizeof pat);
    is_int(request(1, 37, DATA_GPA + 65536, 4096, false, &ulen), 0, "write: OK");
    is_int(ulen, 1, "write's used length is the status byte");
    memset(ram + DATA_GPA, 0, 8192);
    is_int(request(0, 36, DATA_GPA, 8192, true, &ulen), 0, "read over the write");
    ok(memcmp(ram + DATA_GPA + 512, pat, 4096) == 0 &&
           memcmp(ram + DATA_GPA, ref + 36 * 512, 512) == 0 &&
           memcmp(ram + DATA_GPA + 4608, ref + 45 * 512, 3584) == 0,
       "the write reads back, its neighbours unchanged");
    is_int(request(4, 0, 0, 0, false, &ulen), 0, "flush: OK");
    memset(ram + DATA_GPA, 0xff, 64);
    is_int(request(8, 0, DATA_GPA, 20, true, &ulen), 0, "GET_ID: OK");
    ok(memcmp(ram + DATA_GPA, "p2vkit-vmm\0\0\0\0\0\0\0\0\0\0", 20) == 0 && ulen == 21 &&
           ram[DATA_GPA + 20] == 0xff,
       "GET_ID returns 'p2vkit-vmm', NUL-padded to 20 bytes");
    is_int(request(11, 0, DATA_GPA, 512, false, &ulen), 2, "unknown type 11: UNSUPP");
    is_int(request(0, DISK_SIZE / 512 - 1, DATA_GPA, 1024, true, &ulen), 1,
           "read past the capacity: IOERR");
    is_int(request(1, UINT64_MAX / 512 + 5, DATA_GPA, 512, false, &ulen), 1,
           "write at a sector whose offset overflows: IOERR");
    is_int(request(0, 0, DATA_GPA, 100, true, &ulen), 1,
           "read of a length not a multiple of 512: IOERR");
    is_int(request(0, DISK_SIZE / 512 - 1, DATA_GPA, 512, true, &ulen), 0,
           "read of the last sector: OK");

    /* Notification suppression. */
    bar_rd(isr_off, 1);
    p2v_put_u16le(ram + AVAIL_GPA, 1);
    is_int(request(0, 0, DATA_GPA, 512, true, &ulen), 0, "read with NO_INTERRUPT");
    ok(irq_rec.level == 0 && bar_rd(isr_off, 1) == 0, "no interrupt when suppressed");
    p2v_put_u16le(ram + AVAIL_GPA, 0);

    vmm_virtio_blk_stats(blk, &st);
    ok(st.requests == 12 && st.flushes == 1 && st.write_bytes == 4096 && st.notifies == 12 &&
           st.bad_requests == 4,
       "stats: %llu requests, %llu bad, %llu read, %llu written",
       (unsigned long long)st.requests, (unsigned long long)st.bad_requests,
       (unsigned long long)st.read_bytes, (unsigned long long)st.write_bytes);
}

/* A hostile chain starting at descriptor @head: the used element comes back with length
 * 0 and the status byte is left alone. */
static void expect_refused(uint16_t head, const char *what)
{
    uint32_t ulen = 99;
    ram[STATUS_GPA] = 0xee;
    kick(head, 1);
    ok(used_one(head, &ulen) && ulen == 0 && ram[STATUS_GPA] == 0xee &&
           !(status_rd() & S_NEEDS_RESET),
       "%s: refused", what);
}

static void test_hostile(void)
{
    uint32_t ulen;
    struct vmm_virtio_blk_stats st0, st1;
    vmm_virtio_blk_stats(blk, &st0);
    set_hdr(HDR_GPA, 0, 0);
    kick(QSIZE + 3, 1);
    ok(used_one(QSIZE + 3, &ulen) && ulen == 0, "head index beyond the queue: refused");
    set_desc(0, HDR_GPA, 16, F_NEXT, 40);
    expect_refused(0, "next index beyond the queue");
    set_desc(0, HDR_GPA, 16, F_NEXT, 1);
    set_desc(1, DATA_GPA, 512, F_NEXT | F_WRITE, 2);
    set_desc(2, DATA_GPA + 512, 512, F_NEXT | F_WRITE, 1);
    expect_refused(0, "a loop in the chain");
    set_desc(1, RAM_SIZE - 100, 4096, F_NEXT | F_WRITE, 2);
    set_desc(2, STATUS_GPA, 1, F_WRITE, 0);
    expect_refused(0, "a buffer running past guest memory");
    set_desc(1, RAM_SIZE + 4096, 512, F_NEXT | F_WRITE, 2);
    expect_refused(0, "a buffer beyond guest memory");
    set_desc(1, 0xfffffffffffff000ull, 0x2000, F_NEXT | F_WRITE, 2);
    expect_refused(0, "a buffer whose end overflows");
    set_desc(1, DATA_GPA, 512, F_NEXT | F_WRITE | F_INDIRECT, 2);
    expect_refused(0, "an indirect descriptor");
    set_desc(1, DATA_GPA, 512, F_NEXT | F_WRITE, 2);
    set_desc(2, STATUS_GPA, 1, 0, 0);
    expect_refused(0, "a read-only status byte");
    set_desc(1, DATA_GPA, 512, F_NEXT | F_WRITE, 2);
    set_desc(2, STATUS_GPA, 0, F_WRITE, 0);
    expect_refused(0, "an empty status descriptor");
    set_desc(0, HDR_GPA, 16, F_NEXT | F_WRITE, 1);
    set_desc(1, DATA_GPA, 512, F_NEXT, 2);
    set_desc(2, STATUS_GPA, 1, F_WRITE, 0);
    expect_refused(0, "a readable descriptor after a writable one");
    /* A ring whose whole table is one self-loop at the maximum chain length. */
    for (unsigned i = 0; i < QSIZE; i++)
        set_desc(i, DATA_GPA, 512, F_NEXT | F_WRITE, (uint16_t)((i + 1) % QSIZE));
    expect_refused(5, "a chain through the whole table and around");

    /* A short header: the status byte says IOERR. */
    set_desc(0, HDR_GPA, 8, F_NEXT, 1);
    set_desc(1, DATA_GPA, 512, F_NEXT | F_WRITE, 2);
    set_desc(2, STATUS_GPA, 1, F_WRITE, 0);
    ram[STATUS_GPA] = 0xee;
    kick(0, 1);
    ok(used_one(0, &ulen) && ram[STATUS_GPA] == 1 && ulen == 1,
       "a header shorter than 16 bytes: IOERR");
    /* A data buffer overlapping the descriptor table: in guest memory, so served. */
    set_desc(0, HDR_GPA, 16, F_NEXT, 1);
    set_desc(1, DESC_GPA, 512, F_NEXT | F_WRITE, 2);
    set_desc(2, STATUS_GPA, 1, F_WRITE, 0);
    set_hdr(HDR_GPA, 0, 0);
    kick(0, 1);
    ok(used_one(0, &ulen), "a read over the descriptor table is answered");
    vmm_virtio_blk_stats(blk, &st1);
    is_int(st1.bad_requests - st0.bad_requests, 12, "every hostile request is counted as bad");

    /* avail idx far ahead: the device needs a reset and serves nothing more. */
    set_desc(0, HDR_GPA, 16, F_NEXT, 1);
    set_desc(1, DATA_GPA, 512, F_NEXT | F_WRITE, 2);
    uint16_t used_before = p2v_get_u16le(ram + USED_GPA + 2);
    bar_rd(isr_off, 1);
    kick(0, QSIZE + 1);
    ok(status_rd() & S_NEEDS_RESET, "avail idx %u ahead: DEVICE_NEEDS_RESET", QSIZE + 1);
    is_int(p2v_get_u16le(ram + USED_GPA + 2), used_before, "nothing was served");
    is_int(bar_rd(isr_off, 1), 2, "a configuration interrupt tells the driver");
    avail_idx = (uint16_t)(avail_idx - QSIZE);
    kick(0, 0);
    is_int(p2v_get_u16le(ram + USED_GPA + 2), used_before, "still nothing after a reset-less kick");
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    ok(status_rd() & S_NEEDS_RESET, "the driver cannot clear DEVICE_NEEDS_RESET");

    /* A reset brings it back; a pending interrupt is lowered by the reset. */
    ok(driver_init() && !(status_rd() & S_NEEDS_RESET), "reset clears DEVICE_NEEDS_RESET");
    is_int(request(0, 2, DATA_GPA, 512, true, &ulen), 0, "served again after the reset");
    ok(irq_rec.level == 1, "interrupt pending");
    status_wr(0);
    is_int(irq_rec.level, 0, "a reset lowers the line");

    /* Rings outside guest memory. */
    status_wr(S_ACK | S_DRIVER);
    bar_wr(common_off + 0x08, 4, 1);
    bar_wr(common_off + 0x0c, 4, 1);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK);
    bar_wr(common_off + 0x18, 2, 256);
    bar_wr(common_off + 0x20, 8, RAM_SIZE - 0x800); /* 256 * 16 bytes do not fit */
    bar_wr(common_off + 0x28, 8, AVAIL_GPA);
    bar_wr(common_off + 0x30, 8, USED_GPA);
    bar_wr(common_off + 0x1c, 2, 1);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    p2v_put_u16le(ram + AVAIL_GPA + 2, 1);
    bar_wr(notify_off, 2, 0);
    ok(status_rd() & S_NEEDS_RESET, "descriptor table past guest memory: refused");
    status_wr(0);
    status_wr(S_ACK | S_DRIVER);
    bar_wr(common_off + 0x08, 4, 1);
    bar_wr(common_off + 0x0c, 4, 1);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK);
    bar_wr(common_off + 0x20, 8, DESC_GPA);
    bar_wr(common_off + 0x28, 8, AVAIL_GPA);
    bar_wr(common_off + 0x30, 8, UINT64_MAX - 7);
    bar_wr(common_off + 0x1c, 2, 1);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    bar_wr(notify_off, 2, 0);
    ok(status_rd() & S_NEEDS_RESET, "used ring at the top of the address space: refused");
    status_wr(0);
    status_wr(S_ACK | S_DRIVER);
    bar_wr(common_off + 0x08, 4, 1);
    bar_wr(common_off + 0x0c, 4, 1);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK);
    bar_wr(common_off + 0x20, 8, DESC_GPA);
    bar_wr(common_off + 0x28, 8, AVAIL_GPA + 1);
    bar_wr(common_off + 0x30, 8, USED_GPA);
    bar_wr(common_off + 0x1c, 2, 1);
    status_wr(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    bar_wr(notify_off, 2, 0);
    ok(status_rd() & S_NEEDS_RESET, "misaligned avail ring: refused");

    /* Before DRIVER_OK nothing is served. */
    status_wr(0);
    memset(ram + USED_GPA, 0, 16);
    p2v_put_u16le(ram + AVAIL_GPA + 2, 1);
    bar_wr(notify_off, 2, 0);
    is_int(p2v_get_u16le(ram + USED_GPA + 2), 0, "a notify before DRIVER_OK is ignored");

    /* Odd BAR accesses. */
    uint8_t d[8] = {0};
    pdev->bar_access(pdev->opaque, 0, 0x0ffe, d, 4, false);
    pdev->bar_access(pdev->opaque, 0, 0x3ffe, d, 8, true);
    pdev->bar_access(pdev->opaque, 2, 0, d, 4, true);
    pdev->bar_access(pdev->opaque, 0, 0x4000, d, 4, false);
    ok(1, "accesses straddling structures, past the BAR or to another BAR survive");
    ok(guard_intact(), "the bytes after guest memory are untouched");
}

int main(void)
{
    struct p2v_err err;
    char dir[] = "/tmp/test-vmm-vblk-XXXXXX", path[64], cmd[128];
    plan(86);
    if (!mkdtemp(dir))
        skip_all("cannot make a temporary folder");
    snprintf(path, sizeof path, "%s/disk.raw", dir);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (unsigned i = 0; i < DISK_SIZE; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ref[i] = (uint8_t)x;
    }
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(ref, 1, DISK_SIZE, f) != DISK_SIZE || fclose(f) != 0)
        skip_all("cannot write the image");
    struct vmm_disk *disk = vmm_disk_open(path, "raw", &err);
    if (!disk)
        skip_all("cannot open the image");
    ram = aligned_alloc(4096, RAM_SIZE + GUARD);
    memset(ram, 0, RAM_SIZE);
    memset(ram + RAM_SIZE, 0xa5, GUARD);
    mem = (struct vmm_mem){ram, RAM_SIZE};
    struct vmm_irq irq = {irq_set, &irq_rec};
    blk = vmm_virtio_blk_new(disk, &mem, &irq, &err);
    if (!blk)
        skip_all("cannot make the device");
    pdev = vmm_virtio_blk_pci(blk);
    pdev->gsi = GSI; /* what vmm_pci_add() would set */

    test_pci_caps();
    test_setup();
    test_requests();
    test_hostile();

    vmm_virtio_blk_free(blk);
    vmm_disk_close(disk);
    free(ram);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        diag("cannot remove %s", dir);
    return exit_status();
}
