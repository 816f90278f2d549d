/* tests/kvm/guest/guest.c: a freestanding 64-bit test guest for p2v-vmm. Entered from
 * head.S with boot_params (the zero page) of the Linux boot protocol. It reads `sectors=N`
 * (default 2048) and `start=S` (default 0) from the command line, says hello on COM1, lists
 * PCI bus 0, drives the first virtio-blk (1af4:1042, virtio 1.0 modern, polled), reads N
 * sectors from S, prints their SHA-256 and the disk's capacity, and powers off (ACPI PM1a at
 * 0x604, then isa-debug-exit at 0x501 with 0 for success, 1 for an error). With `reset` on
 * the command line it resets the machine through the i8042 at once instead.
 *
 * Output lines (COM1):
 *   p2vkit-testguest: hello
 *   p2vkit-testguest: pci 00:DD.F VVVV:DDDD class CC.SS.PP
 *   p2vkit-testguest: sha256 <64 hex> sectors=<N>
 *   p2vkit-testguest: capacity <sectors>
 *   p2vkit-testguest: error <what>          (instead of sha256/capacity, on any failure)
 */
#include <stdint.h>
#include <stddef.h>

#define P "p2vkit-testguest: "

/* ---- port and memory access ------------------------------------------------------------ */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline uint8_t mmio_r8(uint64_t a) { return *(volatile uint8_t *)(uintptr_t)a; }
static inline uint16_t mmio_r16(uint64_t a) { return *(volatile uint16_t *)(uintptr_t)a; }
static inline uint32_t mmio_r32(uint64_t a) { return *(volatile uint32_t *)(uintptr_t)a; }
static inline void mmio_w8(uint64_t a, uint8_t v) { *(volatile uint8_t *)(uintptr_t)a = v; }
static inline void mmio_w16(uint64_t a, uint16_t v) { *(volatile uint16_t *)(uintptr_t)a = v; }
static inline void mmio_w32(uint64_t a, uint32_t v) { *(volatile uint32_t *)(uintptr_t)a = v; }

/* the compiler may emit calls to these */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}
void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

/* ---- COM1 ------------------------------------------------------------------------------ */
#define COM1 0x3f8

static void putc_(char c)
{
    /* LSR bit 5: THR empty; a bounded wait, so a missing UART cannot hang us */
    for (uint32_t i = 0; i < 1000000 && !(inb(COM1 + 5) & 0x20); i++)
        pause();
    outb(COM1, (uint8_t)c);
}
static void puts_(const char *s)
{
    while (*s)
        putc_(*s++);
}
static void put_hex(uint64_t v, int digits)
{
    static const char hx[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--)
        putc_(hx[(v >> (i * 4)) & 0xf]);
}
static void put_dec(uint64_t v)
{
    char b[24];
    int n = 0;
    do {
        b[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        putc_(b[--n]);
}

static void power_off(uint8_t code)
{
    outw(0x604, 0x2000); /* ACPI PM1a_CNT: SLP_EN | SLP_TYP 0 */
    outb(0x501, code);   /* QEMU isa-debug-exit */
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void fail(const char *what)
{
    puts_(P "error ");
    puts_(what);
    puts_("\n");
    power_off(1);
}

/* ---- SHA-256 (FIPS 180-4) -------------------------------------------------------------- */
struct sha256 {
    uint32_t h[8];
    uint8_t buf[64];
    uint32_t nbuf;
    uint64_t len;
};

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(struct sha256 *s, const uint8_t *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, h;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3];
    e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha256_init(struct sha256 *s)
{
    static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
    for (int i = 0; i < 8; i++)
        s->h[i] = iv[i];
    s->nbuf = 0;
    s->len = 0;
}

static void sha256_update(struct sha256 *s, const uint8_t *p, size_t n)
{
    s->len += n;
    while (n) {
        if (s->nbuf == 0 && n >= 64) {
            sha256_block(s, p);
            p += 64;
            n -= 64;
            continue;
        }
        s->buf[s->nbuf++] = *p++;
        n--;
        if (s->nbuf == 64) {
            sha256_block(s, s->buf);
            s->nbuf = 0;
        }
    }
}

static void sha256_final(struct sha256 *s, uint8_t out[32])
{
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    sha256_update(s, &pad, 1);
    while (s->nbuf != 56)
        sha256_update(s, &zero, 1);
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(s, lenb, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

#ifndef GUEST_HOST_TEST /* everything below needs the machine */

/* ---- command line ---------------------------------------------------------------------- */
#define CMDLINE_MAX 4096 /* our setup header says 0x7ff; never scan further than this */

static int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (*s < '0' || *s > '9')
        return -1;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (*s != 0 && *s != ' ')
        return -1;
    *out = v;
    return 0;
}

static int starts_with(const char *s, const char *pre)
{
    while (*pre)
        if (*s++ != *pre++)
            return 0;
    return 1;
}

static void parse_cmdline(const uint8_t *bp, uint64_t *sectors, uint64_t *start)
{
    uint32_t ptr = *(const volatile uint32_t *)(bp + 0x228);
    static char cl[CMDLINE_MAX + 1];
    size_t n = 0;
    if (ptr == 0)
        return;
    for (const volatile char *c = (const volatile char *)(uintptr_t)ptr; n < CMDLINE_MAX && c[n]; n++)
        cl[n] = c[n];
    cl[n] = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && cl[i - 1] != ' ')
            continue;
        if (starts_with(cl + i, "sectors=")) {
            if (parse_u64(cl + i + 8, sectors) < 0)
                fail("bad sectors= on the command line");
        } else if (starts_with(cl + i, "start=")) {
            if (parse_u64(cl + i + 6, start) < 0)
                fail("bad start= on the command line");
        } else if (starts_with(cl + i, "reset") && (cl[i + 5] == ' ' || cl[i + 5] == 0)) {
            /* a guest that resets at once, as a kernel with panic=1 would: the VMM's
             * reset-loop verdict is tested with it */
            puts_("p2vkit-testguest: resetting through the i8042\n");
            outb(0x64, 0xfe);
            for (;;)
                __asm__ volatile("cli; hlt");
        }
    }
}

/* ---- PCI (configuration mechanism 1) --------------------------------------------------- */
static uint32_t pci_r32(uint32_t dev, uint32_t fn, uint32_t off)
{
    outl(0xcf8, 0x80000000u | dev << 11 | fn << 8 | (off & 0xfc));
    return inl(0xcfc);
}
static void pci_w32(uint32_t dev, uint32_t fn, uint32_t off, uint32_t v)
{
    outl(0xcf8, 0x80000000u | dev << 11 | fn << 8 | (off & 0xfc));
    outl(0xcfc, v);
}
static uint8_t pci_r8(uint32_t dev, uint32_t fn, uint32_t off)
{
    return (uint8_t)(pci_r32(dev, fn, off) >> ((off & 3) * 8));
}

/* ---- virtio 1.0 modern, block ---------------------------------------------------------- */
#define VIRTIO_STATUS_ACK 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* common configuration offsets */
#define CC_DFSELECT 0x00
#define CC_DF 0x04
#define CC_GFSELECT 0x08
#define CC_GF 0x0c
#define CC_STATUS 0x14
#define CC_Q_SELECT 0x16
#define CC_Q_SIZE 0x18
#define CC_Q_ENABLE 0x1c
#define CC_Q_NOFF 0x1e
#define CC_Q_DESC 0x20
#define CC_Q_AVAIL 0x28
#define CC_Q_USED 0x30

#define QSZ_MAX 16
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define CHUNK_SECTORS 128 /* 64 KiB per request */

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[QSZ_MAX];
    uint16_t used_event;
};
struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};
struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[QSZ_MAX];
    uint16_t avail_event;
};
struct blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct vring_desc q_desc[QSZ_MAX] __attribute__((aligned(4096)));
static struct vring_avail q_avail __attribute__((aligned(4096)));
static struct vring_used q_used __attribute__((aligned(4096)));
static struct blk_req_hdr req_hdr __attribute__((aligned(64)));
static volatile uint8_t req_status __attribute__((aligned(64)));
static uint8_t data[CHUNK_SECTORS * 512] __attribute__((aligned(4096)));

struct vdev {
    uint64_t common, notify, isr, device;
    uint32_t notify_mult;
    int have; /* bit per cfg_type 1..4 */
};

static uint64_t bar_address(uint32_t dev, uint32_t fn, uint8_t bar)
{
    uint32_t lo, hi = 0;
    if (bar > 5)
        fail("virtio capability names a bar beyond 5");
    lo = pci_r32(dev, fn, 0x10 + 4u * bar);
    if (lo & 1)
        fail("virtio capability names an i/o bar");
    if (((lo >> 1) & 3) == 2) {
        if (bar == 5)
            fail("64-bit bar 5");
        hi = pci_r32(dev, fn, 0x14 + 4u * bar);
    }
    uint64_t a = (uint64_t)hi << 32 | (lo & ~0xfu);
    if (a == 0)
        fail("virtio bar is not assigned");
    if (a >= 0x100000000ull)
        fail("virtio bar above 4 GiB (not mapped)");
    return a;
}

static void virtio_find_caps(uint32_t dev, uint32_t fn, struct vdev *v)
{
    uint32_t status = pci_r32(dev, fn, 0x04) >> 16;
    if (!(status & 0x10))
        fail("virtio-blk has no capability list");
    uint8_t ptr = pci_r8(dev, fn, 0x34) & 0xfc;
    /* at most 48 capabilities fit in the 192 bytes after the header: stops a loop */
    for (int guard = 0; ptr >= 0x40 && guard < 48; guard++) {
        uint8_t id = pci_r8(dev, fn, ptr), next = pci_r8(dev, fn, ptr + 1u) & 0xfc;
        if (id == 0x09 && ptr <= 0x100 - 16) {
            uint8_t type = pci_r8(dev, fn, ptr + 3u), bar = pci_r8(dev, fn, ptr + 4u);
            uint32_t off = pci_r32(dev, fn, ptr + 8u);
            if (type >= 1 && type <= 4 && !(v->have & (1 << type))) {
                uint64_t a = bar_address(dev, fn, bar) + off;
                v->have |= 1 << type;
                switch (type) {
                case 1: v->common = a; break;
                case 2:
                    v->notify = a;
                    if (ptr > 0x100 - 20)
                        fail("virtio notify capability too short");
                    v->notify_mult = pci_r32(dev, fn, ptr + 16u);
                    break;
                case 3: v->isr = a; break;
                case 4: v->device = a; break;
                }
            }
        }
        ptr = next;
    }
    if ((v->have & 0x1e) != 0x1e)
        fail("virtio-blk lacks a common, notify, isr or device capability");
}

static void set_status(const struct vdev *v, uint8_t bits)
{
    mmio_w8(v->common + CC_STATUS, mmio_r8(v->common + CC_STATUS) | bits);
}

static uint64_t virtio_blk_setup(uint32_t dev, uint32_t fn, struct vdev *v, uint16_t *qsz,
                                 uint64_t *notify_addr)
{
    uint64_t c = v->common;
    mmio_w8(c + CC_STATUS, 0);
    for (uint32_t i = 0; mmio_r8(c + CC_STATUS) != 0; i++) {
        if (i > 10000000)
            fail("virtio reset does not complete");
        pause();
    }
    set_status(v, VIRTIO_STATUS_ACK);
    set_status(v, VIRTIO_STATUS_DRIVER);
    mmio_w32(c + CC_DFSELECT, 1);
    if (!(mmio_r32(c + CC_DF) & 1))
        fail("device does not offer VIRTIO_F_VERSION_1");
    mmio_w32(c + CC_GFSELECT, 0);
    mmio_w32(c + CC_GF, 0);
    mmio_w32(c + CC_GFSELECT, 1);
    mmio_w32(c + CC_GF, 1); /* bit 32: VIRTIO_F_VERSION_1, nothing else */
    set_status(v, VIRTIO_STATUS_FEATURES_OK);
    if (!(mmio_r8(c + CC_STATUS) & VIRTIO_STATUS_FEATURES_OK))
        fail("FEATURES_OK did not stick");

    mmio_w16(c + CC_Q_SELECT, 0);
    uint16_t max = mmio_r16(c + CC_Q_SIZE);
    if (max == 0)
        fail("queue 0 is not available");
    if (mmio_r16(c + CC_Q_ENABLE) != 0)
        fail("queue 0 is enabled after reset");
    *qsz = max < QSZ_MAX ? max : QSZ_MAX;
    mmio_w16(c + CC_Q_SIZE, *qsz);
    memset(q_desc, 0, sizeof(q_desc));
    memset(&q_avail, 0, sizeof(q_avail));
    memset(&q_used, 0, sizeof(q_used));
    q_avail.flags = 1; /* VIRTQ_AVAIL_F_NO_INTERRUPT: we poll */
    mmio_w32(c + CC_Q_DESC, (uint32_t)(uintptr_t)q_desc);
    mmio_w32(c + CC_Q_DESC + 4, 0);
    mmio_w32(c + CC_Q_AVAIL, (uint32_t)(uintptr_t)&q_avail);
    mmio_w32(c + CC_Q_AVAIL + 4, 0);
    mmio_w32(c + CC_Q_USED, (uint32_t)(uintptr_t)&q_used);
    mmio_w32(c + CC_Q_USED + 4, 0);
    uint16_t noff = mmio_r16(c + CC_Q_NOFF);
    *notify_addr = v->notify + (uint64_t)noff * v->notify_mult;
    mmio_w16(c + CC_Q_ENABLE, 1);
    set_status(v, VIRTIO_STATUS_DRIVER_OK);
    uint8_t st = mmio_r8(c + CC_STATUS);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
        fail("device status shows failure after DRIVER_OK");
    (void)dev;
    (void)fn;
    /* capacity: le64 at device config offset 0, read as two halves */
    return (uint64_t)mmio_r32(v->device + 4) << 32 | mmio_r32(v->device);
}

static void virtio_blk_read(const struct vdev *v, uint16_t qsz, uint64_t notify_addr,
                            uint64_t sector, uint32_t count)
{
    static uint16_t last_used;
    req_hdr.type = 0; /* VIRTIO_BLK_T_IN */
    req_hdr.reserved = 0;
    req_hdr.sector = sector;
    req_status = 0xff;
    q_desc[0] = (struct vring_desc){ (uint64_t)(uintptr_t)&req_hdr, sizeof(req_hdr), VRING_DESC_F_NEXT, 1 };
    q_desc[1] = (struct vring_desc){ (uint64_t)(uintptr_t)data, count * 512u,
                                     VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
    q_desc[2] = (struct vring_desc){ (uint64_t)(uintptr_t)&req_status, 1, VRING_DESC_F_WRITE, 0 };
    q_avail.ring[q_avail.idx % qsz] = 0;
    mb();
    *(volatile uint16_t *)&q_avail.idx = (uint16_t)(q_avail.idx + 1);
    mb();
    mmio_w16(notify_addr, 0);
    uint64_t spins = 0;
    while (*(volatile uint16_t *)&q_used.idx == last_used) {
        if (++spins > 4000000000ull)
            fail("virtio-blk request timed out");
        if ((spins & 0xfffff) == 0 && (mmio_r8(v->common + CC_STATUS) & VIRTIO_STATUS_NEEDS_RESET))
            fail("device needs reset");
        pause();
    }
    mb();
    struct vring_used_elem e = ((volatile struct vring_used_elem *)q_used.ring)[last_used % qsz];
    last_used++;
    if (*(volatile uint16_t *)&q_used.idx != last_used)
        fail("more used entries than requests");
    if (e.id != 0)
        fail("used ring returned an unknown descriptor");
    if (req_status != 0) {
        puts_(P "error read status ");
        put_dec(req_status);
        puts_(" at sector ");
        put_dec(sector);
        puts_("\n");
        power_off(1);
    }
}

void main(uint8_t *boot_params);
void main(uint8_t *boot_params)
{
    uint64_t sectors = 2048, start = 0;
    int found = 0;
    uint32_t bdev = 0, bfn = 0;

    puts_(P "hello\n");
    parse_cmdline(boot_params, &sectors, &start);

    for (uint32_t dev = 0; dev < 32; dev++) {
        for (uint32_t fn = 0; fn < 8; fn++) {
            uint32_t id = pci_r32(dev, fn, 0);
            if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0) {
                if (fn == 0)
                    break;
                continue;
            }
            uint32_t cls = pci_r32(dev, fn, 0x08) >> 8;
            puts_(P "pci 00:");
            put_hex(dev, 2);
            putc_('.');
            put_hex(fn, 1);
            putc_(' ');
            put_hex(id & 0xffff, 4);
            putc_(':');
            put_hex(id >> 16, 4);
            puts_(" class ");
            put_hex(cls >> 16, 2);
            putc_('.');
            put_hex((cls >> 8) & 0xff, 2);
            putc_('.');
            put_hex(cls & 0xff, 2);
            puts_("\n");
            if (id == 0x10421af4 && !found) {
                found = 1;
                bdev = dev;
                bfn = fn;
            }
            if (fn == 0 && !(pci_r8(dev, fn, 0x0e) & 0x80))
                break; /* not multi-function */
        }
    }
    if (!found)
        fail("no virtio-blk (1af4:1042) on bus 0");

    struct vdev v = { 0 };
    virtio_find_caps(bdev, bfn, &v);
    uint32_t cmd = pci_r32(bdev, bfn, 0x04) & 0xffff;
    if ((cmd & 0x6) != 0x6)
        pci_w32(bdev, bfn, 0x04, cmd | 0x6); /* memory space, bus master */

    uint16_t qsz;
    uint64_t notify_addr;
    uint64_t capacity = virtio_blk_setup(bdev, bfn, &v, &qsz, &notify_addr);
    if (start > capacity || sectors > capacity - start) {
        puts_(P "error range start=");
        put_dec(start);
        puts_(" sectors=");
        put_dec(sectors);
        puts_(" beyond capacity ");
        put_dec(capacity);
        puts_("\n");
        power_off(1);
    }

    struct sha256 s;
    sha256_init(&s);
    for (uint64_t done = 0; done < sectors;) {
        uint32_t n = sectors - done < CHUNK_SECTORS ? (uint32_t)(sectors - done) : CHUNK_SECTORS;
        virtio_blk_read(&v, qsz, notify_addr, start + done, n);
        sha256_update(&s, data, (size_t)n * 512);
        done += n;
    }
    uint8_t dig[32];
    sha256_final(&s, dig);
    puts_(P "sha256 ");
    for (int i = 0; i < 32; i++)
        put_hex(dig[i], 2);
    puts_(" sectors=");
    put_dec(sectors);
    puts_("\n" P "capacity ");
    put_dec(capacity);
    puts_("\n");
    mmio_w8(v.common + CC_STATUS, 0); /* leave the device reset */
    power_off(0);
}
#endif /* GUEST_HOST_TEST */
