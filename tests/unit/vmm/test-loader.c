/* test-loader.c: the bzImage loader (vmm/loader.c) against the host's real Debian kernel
 * and a synthetic bzImage, and the MP table (vmm/mptable.c). */
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "tap.h"
#include "vmm-int.h"

#define MIB (1ull << 20)

static int mem_new(struct vmm_mem *m, uint64_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    m->host = p;
    m->size = size;
    return 0;
}

static void mem_free(struct vmm_mem *m)
{
    if (m->host)
        munmap(m->host, m->size);
    m->host = NULL;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n;

    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        *len = (size_t)n;
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static int has(const struct p2v_err *e, const char *s)
{
    return strstr(e->msg, s) != NULL;
}

static uint8_t sum8(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    for (size_t i = 0; i < n; i++)
        s = (uint8_t)(s + p[i]);
    return s;
}

/* ---------------------------------------------------------------- synthetic bzImage */

#define SYN_SETUP 1024u /* setup_sects 1 */
#define SYN_PAYLOAD 8192u
#define SYN_LEN (SYN_SETUP + SYN_PAYLOAD)

static void syn_build(uint8_t *k)
{
    memset(k, 0, SYN_LEN);
    k[0x1f1] = 1;                               /* setup_sects */
    p2v_put_u32le(k + 0x1f4, SYN_PAYLOAD / 16); /* syssize */
    p2v_put_u16le(k + 0x1fe, 0xaa55);
    k[0x200] = 0xeb;
    k[0x201] = 0x6a; /* header ends at 0x26c */
    memcpy(k + 0x202, "HdrS", 4);
    p2v_put_u16le(k + 0x206, 0x020f);
    p2v_put_u16le(k + 0x20e, 0x100); /* version string at 0x300 */
    k[0x211] = 0x01;                 /* LOADED_HIGH */
    p2v_put_u32le(k + 0x214, 0x100000);
    p2v_put_u32le(k + 0x22c, 0x7fffffff);
    p2v_put_u32le(k + 0x230, 0x200000);
    k[0x234] = 1;
    p2v_put_u16le(k + 0x236, 0x0003); /* XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G */
    p2v_put_u32le(k + 0x238, 0x7ff);
    p2v_put_u64le(k + 0x258, 0x1000000);
    p2v_put_u32le(k + 0x260, 0x100000); /* init_size 1 MiB */
    strcpy((char *)k + 0x300, "6.99-synthetic (test@p2vkit)");
    for (unsigned i = 0; i < SYN_PAYLOAD; i++)
        k[SYN_SETUP + i] = (uint8_t)(i * 7 + 3);
}

static void test_synthetic(void)
{
    uint8_t k[SYN_LEN], bad[SYN_LEN];
    uint8_t initrd[100000];
    struct vmm_mem mem = {0};
    struct vmm_loaded ld;
    struct p2v_err err = {0};
    int r;

    syn_build(k);
    for (size_t i = 0; i < sizeof(initrd); i++)
        initrd[i] = (uint8_t)(i ^ 0x5a);
    if (!ok(mem_new(&mem, 64 * MIB) == 0, "synthetic: map 64 MiB of guest memory"))
        return;

    is_int(vmm_bzimage_check(k, SYN_LEN, &err), 0, "synthetic: bzimage check passes");
    r = vmm_boot_load(&mem, k, SYN_LEN, initrd, sizeof(initrd), "console=ttyS0", &ld, &err);
    if (!ok(r == 0, "synthetic: loads"))
        diag("  %s", err.msg);
    ok(memcmp(mem.host + VMM_KERNEL_ADDR, k + SYN_SETUP, SYN_PAYLOAD) == 0,
       "synthetic: payload at 1 MiB");
    is_str(ld.kernel_version, "6.99-synthetic (test@p2vkit)", "synthetic: kernel version");
    is_int(ld.protocol, 0x020f, "synthetic: protocol");
    is_int(ld.initrd_addr, (64 * MIB - sizeof(initrd)) & ~0xfffull,
           "synthetic: initrd at the top of RAM, page aligned");
    ok(memcmp(mem.host + ld.initrd_addr, initrd, sizeof(initrd)) == 0,
       "synthetic: initrd bytes");

    /* setup_sects 0 means 4: the payload starts at 2560. */
    memcpy(bad, k, SYN_LEN);
    bad[0x1f1] = 0;
    r = vmm_bzimage_check(bad, SYN_LEN, &err);
    ok(r == -1 && has(&err, "syssize"), "setup_sects 0 (4 sectors): syssize too big (%s)",
       err.msg);
    p2v_put_u32le(bad + 0x1f4, (SYN_LEN - 2560) / 16);
    r = vmm_boot_load(&mem, bad, SYN_LEN, NULL, 0, NULL, &ld, &err);
    ok(r == 0 && memcmp(mem.host + VMM_KERNEL_ADDR, bad + 2560, SYN_LEN - 2560) == 0,
       "setup_sects 0: payload from 2560");
    is_int(ld.initrd_addr + ld.initrd_size, 0, "no initrd: address and size 0");
    is_int(p2v_get_u32le(mem.host + VMM_BOOT_PARAMS_ADDR + 0x21c), 0,
           "no initrd: ramdisk_size 0");

    /* A version string that is not printable gives "". */
    memcpy(bad, k, SYN_LEN);
    bad[0x305] = 0x01;
    r = vmm_boot_load(&mem, bad, SYN_LEN, NULL, 0, "", &ld, &err);
    ok(r == 0 && ld.kernel_version[0] == '\0', "unprintable version string: \"\"");
    /* One with no NUL inside the setup code gives "" too. */
    memset(bad + 0x300, 'x', SYN_SETUP - 0x300);
    r = vmm_boot_load(&mem, bad, SYN_LEN, NULL, 0, "", &ld, &err);
    ok(r == 0 && ld.kernel_version[0] == '\0', "unterminated version string: \"\"");

    /* Errors. */
    memcpy(bad, k, SYN_LEN);
    bad[0x203] = 'x';
    r = vmm_bzimage_check(bad, SYN_LEN, &err);
    ok(r == -1 && has(&err, "no 'HdrS' magic at 0x202"), "no HdrS: %s", err.msg);

    memcpy(bad, k, SYN_LEN);
    p2v_put_u16le(bad + 0x206, 0x020b);
    r = vmm_bzimage_check(bad, SYN_LEN, &err);
    ok(r == -1 && has(&err, "2.11") && has(&err, "too old"), "old protocol: %s", err.msg);

    memcpy(bad, k, SYN_LEN);
    p2v_put_u16le(bad + 0x236, 0x0002);
    r = vmm_bzimage_check(bad, SYN_LEN, &err);
    ok(r == -1 && has(&err, "XLF_KERNEL_64"), "no 64-bit entry: %s", err.msg);

    memcpy(bad, k, SYN_LEN);
    bad[0x211] = 0;
    r = vmm_bzimage_check(bad, SYN_LEN, &err);
    ok(r == -1 && has(&err, "LOADED_HIGH"), "not loaded high: %s", err.msg);

    memcpy(bad, k, SYN_LEN);
    p2v_put_u16le(bad + 0x1fe, 0);
    r = vmm_bzimage_check(bad, SYN_LEN, &err);
    ok(r == -1 && has(&err, "boot_flag"), "no boot flag: %s", err.msg);

    memcpy(bad, k, SYN_LEN);
    bad[0x201] = 0x20;
    r = vmm_bzimage_check(bad, SYN_LEN, &err);
    ok(r == -1 && has(&err, "setup header ends at 0x222"), "short setup header: %s",
       err.msg);

    memcpy(bad, k, SYN_LEN);
    p2v_put_u32le(bad + 0x230, 0x300000);
    r = vmm_bzimage_check(bad, SYN_LEN, &err);
    ok(r == -1 && has(&err, "kernel_alignment"), "bad alignment: %s", err.msg);

    r = vmm_bzimage_check(k, 1000, &err);
    ok(r == -1 && has(&err, "1000 bytes"), "tiny file: %s", err.msg);
    r = vmm_bzimage_check(k, SYN_SETUP, &err);
    ok(r == -1 && has(&err, "truncated"), "setup only: %s", err.msg);
    r = vmm_bzimage_check(k, SYN_LEN - 16, &err);
    ok(r == -1 && has(&err, "syssize"), "payload shorter than syssize: %s", err.msg);

    /* A kernel that does not fit: 16 MiB + init_size 1 MiB in 16 MiB of RAM. */
    mem.size = 16 * MIB;
    memset(&ld, 0x55, sizeof(ld));
    r = vmm_boot_load(&mem, k, SYN_LEN, NULL, 0, "", &ld, &err);
    ok(r == -1 && has(&err, "guest memory too small") && ld.entry == 0x5555555555555555ull,
       "16 MiB guest: %s (output untouched)", err.msg);
    mem.size = 64 * MIB;

    /* The initrd must stay below initrd_addr_max. */
    memcpy(bad, k, SYN_LEN);
    p2v_put_u32le(bad + 0x22c, 0x2000000 - 1); /* 32 MiB */
    r = vmm_boot_load(&mem, bad, SYN_LEN, initrd, sizeof(initrd), "", &ld, &err);
    ok(r == 0 && ld.initrd_addr + ld.initrd_size <= 0x2000000 &&
           ld.initrd_addr == ((0x2000000 - sizeof(initrd)) & ~0xfffull),
       "initrd below initrd_addr_max");
    p2v_put_u32le(bad + 0x22c, 0x1100000); /* 17 MiB: the kernel's own end */
    r = vmm_boot_load(&mem, bad, SYN_LEN, initrd, sizeof(initrd), "", &ld, &err);
    ok(r == -1 && has(&err, "initrd of 100000 bytes does not fit in 64 MiB"),
       "initrd_addr_max at the kernel's end: %s", err.msg);
    mem_free(&mem);
}

/* ---------------------------------------------------------------- the real kernel */

static void test_real(const char *path, const uint8_t *k, size_t klen)
{
    struct vmm_mem mem = {0}, small = {0};
    struct vmm_loaded ld;
    struct p2v_err err = {0};
    const char *cmdline = "console=ttyS0 root=/dev/vda1 ro panic=-1";
    size_t ilen = 3 * MIB + 123, setup, payload, long_len;
    uint8_t *initrd = malloc(ilen), *bp;
    char *longcmd;
    unsigned n, ss;
    uint64_t ram = 0, prev_end = 0, kernel_end, init_size, imax;
    int sorted = 1, r;

    if (!ok(initrd != NULL && mem_new(&mem, 256 * MIB) == 0, "real: map 256 MiB"))
        goto out;
    for (size_t i = 0; i < ilen; i++)
        initrd[i] = (uint8_t)(i * 13 + (i >> 12));

    is_int(vmm_bzimage_check(k, klen, &err), 0, "real: '%s' passes the bzimage check", path);
    r = vmm_boot_load(&mem, k, klen, initrd, ilen, cmdline, &ld, &err);
    if (!ok(r == 0, "real: loads into 256 MiB"))
        diag("  %s", err.msg);
    if (r != 0)
        goto out;
    bp = mem.host + VMM_BOOT_PARAMS_ADDR;
    ss = k[0x1f1] ? k[0x1f1] : 4;
    setup = (ss + 1) * 512u;
    payload = klen - setup;

    /* boot_params */
    ok(memcmp(bp + 0x202, "HdrS", 4) == 0, "boot_params: HdrS copied");
    is_int(p2v_get_u16le(bp + 0x206), p2v_get_u16le(k + 0x206), "boot_params: version");
    ok(memcmp(bp + 0x1f1, k + 0x1f1, 0x210 - 0x1f1) == 0 &&
           memcmp(bp + 0x22c, k + 0x22c, 0x202 + k[0x201] - 0x22c) == 0,
       "boot_params: the rest of the setup header copied");
    is_int(bp[0x202 + k[0x201]], 0, "boot_params: nothing past the header's end");
    is_int(bp[0x210], 0xff, "boot_params: type_of_loader");
    is_int(bp[0x211], k[0x211] | 0x80, "boot_params: loadflags with CAN_USE_HEAP");
    is_int(p2v_get_u32le(bp + 0x228), VMM_CMDLINE_ADDR, "boot_params: cmd_line_ptr");
    is_str((char *)mem.host + VMM_CMDLINE_ADDR, cmdline, "command line string");
    is_int(p2v_get_u32le(bp + 0x218), ld.initrd_addr, "boot_params: ramdisk_image");
    is_int(p2v_get_u32le(bp + 0x21c), ilen, "boot_params: ramdisk_size");
    is_int(p2v_get_u32le(bp + 0xc0) | p2v_get_u32le(bp + 0xc4), 0,
           "boot_params: ext_ramdisk fields 0 below 4 GiB");
    is_int(bp[0x1ef], 0, "boot_params: sentinel 0");

    /* e820 */
    n = bp[0x1e8];
    ok(n >= 3 && n <= 128, "e820: %u entries", n);
    for (unsigned i = 0; i < n && i < 128; i++) {
        const uint8_t *e = bp + 0x2d0 + i * 20;
        uint64_t a = p2v_get_u64le(e), s = p2v_get_u64le(e + 8);
        uint32_t t = p2v_get_u32le(e + 16);
        diag("  e820 %u: 0x%llx-0x%llx type %u", i, (unsigned long long)a,
             (unsigned long long)(a + s), t);
        if (a < prev_end || s == 0)
            sorted = 0;
        prev_end = a + s;
        if (t == 1)
            ram += s;
        if (t == 1 && a < 0x100000 && a + s > 0x9fc00)
            sorted = 0; /* RAM over the EBDA/BIOS area */
    }
    ok(sorted, "e820: sorted, non-overlapping, BIOS area not RAM");
    is_int(ram, 256 * MIB - (0x100000 - 0x9fc00), "e820: RAM total");
    is_int(prev_end, 256 * MIB, "e820: ends at RAM's end");

    /* kernel and initrd */
    ok(memcmp(mem.host + VMM_KERNEL_ADDR, k + setup, payload) == 0,
       "kernel payload (%zu bytes) at 1 MiB", payload);
    ok(memcmp(mem.host + ld.initrd_addr, initrd, ilen) == 0, "initrd bytes");
    init_size = p2v_get_u32le(k + 0x260);
    imax = (uint64_t)p2v_get_u32le(k + 0x22c) + 1;
    kernel_end = (p2v_get_u64le(k + 0x258) > 0x200000 ? p2v_get_u64le(k + 0x258) : 0x200000) +
                 init_size;
    ok(ld.initrd_addr % 4096 == 0, "initrd page aligned (0x%llx)",
       (unsigned long long)ld.initrd_addr);
    ok(ld.initrd_addr + ilen <= 256 * MIB && ld.initrd_addr + ilen <= imax,
       "initrd ends below RAM's end and initrd_addr_max");
    ok(ld.initrd_addr >= kernel_end && ld.initrd_addr >= VMM_KERNEL_ADDR + payload,
       "initrd above the kernel's decompression area (0x%llx)",
       (unsigned long long)kernel_end);
    ok(256 * MIB - (ld.initrd_addr + ilen) < 4096, "initrd as high as possible");

    /* page tables */
    {
        const uint8_t *pml4 = mem.host + VMM_PML4_ADDR, *pdpt = pml4 + 0x1000;
        int good = 1;
        is_int(p2v_get_u64le(pml4), 0xa003, "PML4[0] -> PDPT, present, writable");
        is_int(p2v_get_u64le(pml4 + 8), 0, "PML4[1] empty");
        for (unsigned i = 0; i < 4; i++)
            if (p2v_get_u64le(pdpt + i * 8) != (0xb000ull + i * 0x1000) + 3)
                good = 0;
        ok(good, "PDPT[0..3] -> PDs");
        for (unsigned i = 0; i < 2048; i++)
            if (p2v_get_u64le(pml4 + 0x2000 + i * 8) != (((uint64_t)i << 21) | 0x83))
                good = 0;
        ok(good, "PDs identity-map 0-4 GiB with 2 MiB pages");
    }

    /* GDT and the rest of the output */
    is_int(p2v_get_u64le(mem.host + VMM_GDT_ADDR), 0, "GDT: null");
    is_int(p2v_get_u64le(mem.host + VMM_GDT_ADDR + 0x10), 0x00af9b000000ffffll,
           "GDT: 0x10 64-bit code");
    is_int(p2v_get_u64le(mem.host + VMM_GDT_ADDR + 0x18), 0x00cf93000000ffffll,
           "GDT: 0x18 data");
    is_int(ld.gdt_base, VMM_GDT_ADDR, "gdt_base");
    ok(ld.gdt_limit >= 0x1f && (ld.gdt_limit + 1) % 8 == 0, "gdt_limit %u", ld.gdt_limit);
    is_int(ld.entry, VMM_KERNEL_ADDR + 0x200, "entry at the 64-bit entry point");
    is_int(ld.boot_params, VMM_BOOT_PARAMS_ADDR, "boot_params address");
    is_int(ld.stack, VMM_BOOT_STACK_TOP, "stack");
    is_int(ld.cr3, VMM_PML4_ADDR, "cr3");
    is_int(ld.protocol, p2v_get_u16le(k + 0x206), "protocol");
    ok(strncmp(ld.kernel_version, "6.", 2) == 0, "kernel version '%s'", ld.kernel_version);

    /* errors */
    r = vmm_boot_load(&mem, k, 2000, NULL, 0, "", &ld, &err);
    ok(r == -1 && has(&err, "truncated"), "truncated to 2000 bytes: %s", err.msg);
    r = vmm_boot_load(&mem, k, setup + 4096, NULL, 0, "", &ld, &err);
    ok(r == -1 && has(&err, "syssize"), "truncated payload: %s", err.msg);

    long_len = p2v_get_u32le(k + 0x238) + 1; /* cmdline_size excludes the NUL */
    longcmd = malloc(long_len + 1);
    if (longcmd) {
        memset(longcmd, 'a', long_len);
        longcmd[long_len] = '\0';
        r = vmm_boot_load(&mem, k, klen, NULL, 0, longcmd, &ld, &err);
        ok(r == -1 && has(&err, "too long"), "command line of %zu bytes: %s", long_len,
           err.msg);
        longcmd[long_len - 1] = '\0';
        r = vmm_boot_load(&mem, k, klen, NULL, 0, longcmd, &ld, &err);
        ok(r == 0 && strlen((char *)mem.host + VMM_CMDLINE_ADDR) == long_len - 1,
           "command line of cmdline_size bytes loads");
        free(longcmd);
    }

    {
        size_t big = 200 * MIB;
        void *p = mmap(NULL, big, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            r = vmm_boot_load(&mem, k, klen, p, big, "", &ld, &err);
            ok(r == -1 && has(&err, "initrd of 209715200 bytes does not fit in 256 MiB"),
               "200 MiB initrd: %s", err.msg);
            munmap(p, big);
        }
    }

    if (mem_new(&small, 64 * MIB) == 0) {
        r = vmm_boot_load(&small, k, klen, NULL, 0, "", &ld, &err);
        ok(r == -1 && has(&err, "guest memory too small"), "64 MiB guest: %s", err.msg);
        mem_free(&small);
    }
out:
    mem_free(&mem);
    free(initrd);
}

/* ---------------------------------------------------------------- MP table */

static void test_mptable(void)
{
    struct vmm_mem mem = {0}, small = {0};
    struct p2v_err err = {0};
    const uint8_t *fps = NULL, *t;
    unsigned len, count, procs = 0, bsp = 0, buses = 0, isa = 0, pci = 0, lint = 0,
                         ioapics = 0, walked = 0, off, irq2 = 0, pci_pins_ok = 1;
    int r;

    if (!ok(mem_new(&mem, 16 * MIB) == 0, "mp: map 16 MiB"))
        return;
    memset(mem.host + 0xf0000, 0xee, 0x10000); /* stale bytes must be cleared */
    r = vmm_mptable_write(&mem, 4, &err);
    if (!ok(r == 0, "mp: written for 4 cpus"))
        diag("  %s", err.msg);
    for (uint64_t a = 0xf0000; a < 0x100000; a += 16)
        if (memcmp(mem.host + a, "_MP_", 4) == 0) {
            fps = mem.host + a;
            break;
        }
    if (!ok(fps != NULL, "mp: _MP_ found in 0xf0000-0xfffff"))
        goto out;
    is_int(sum8(fps, 16), 0, "mp: floating pointer checksum");
    is_int(fps[8], 1, "mp: floating pointer length");
    is_int(fps[9], 4, "mp: spec 1.4");
    ok(p2v_get_u32le(fps + 4) >= 0xf0000 && p2v_get_u32le(fps + 4) < 0x100000 - 44,
       "mp: config table address 0x%x", p2v_get_u32le(fps + 4));
    t = mem.host + p2v_get_u32le(fps + 4);
    ok(memcmp(t, "PCMP", 4) == 0, "mp: PCMP signature");
    len = p2v_get_u16le(t + 4);
    count = p2v_get_u16le(t + 34);
    ok(len >= 44 && p2v_get_u32le(fps + 4) + len <= 0x100000, "mp: table length %u", len);
    is_int(sum8(t, len), 0, "mp: table checksum");
    is_int(p2v_get_u32le(t + 36), 0xfee00000, "mp: local APIC address");
    ok(memcmp(t + 8, "P2VKIT", 6) == 0, "mp: OEM id");

    for (off = 44; off < len && walked < count; walked++) {
        const uint8_t *e = t + off;
        switch (e[0]) {
        case 0:
            procs++;
            if (e[3] & 2)
                bsp += e[1] == 0 ? 1 : 100;
            off += 20;
            break;
        case 1:
            buses++;
            if (!(e[1] == 0 && memcmp(e + 2, "PCI   ", 6) == 0) &&
                !(e[1] == 1 && memcmp(e + 2, "ISA   ", 6) == 0))
                buses += 100;
            off += 8;
            break;
        case 2:
            ioapics++;
            is_int(e[1], 4, "mp: IOAPIC id = ncpus");
            is_int(p2v_get_u32le(e + 4), 0xfec00000, "mp: IOAPIC address");
            off += 8;
            break;
        case 3:
            if (e[4] == 1) {
                isa++;
                if (e[5] == 2 || e[7] != e[5])
                    irq2++;
            } else if (e[4] == 0) {
                pci++;
                if (e[7] != 16 + (e[5] >> 2) % 8 || (e[5] & 3) != 0 ||
                    p2v_get_u16le(e + 2) != 0x0f || e[6] != 4)
                    pci_pins_ok = 0;
            }
            off += 8;
            break;
        case 4:
            lint++;
            off += 8;
            break;
        default:
            off = len; /* stop */
        }
    }
    is_int(walked, count, "mp: walked all %u entries", count);
    is_int(off, len, "mp: entries fill the table exactly");
    is_int(procs, 4, "mp: 4 processor entries");
    is_int(bsp, 1, "mp: cpu 0 alone is the BSP");
    is_int(buses, 2, "mp: buses PCI 0 and ISA 1");
    is_int(ioapics, 1, "mp: one IOAPIC");
    is_int(isa, 15, "mp: ISA IRQs 0-15 but 2");
    is_int(irq2, 0, "mp: ISA IRQs identity-mapped, no IRQ 2");
    is_int(pci, VMM_PCI_MAX_SLOTS, "mp: a PCI INTx entry per slot");
    ok(pci_pins_ok, "mp: PCI slot s pin A -> GSI 16 + s, level, active low");
    is_int(lint, 2, "mp: ExtINT and NMI local interrupts");

    r = vmm_mptable_write(&mem, 32, &err);
    t = mem.host + p2v_get_u32le(fps + 4);
    ok(r == 0 && sum8(t, p2v_get_u16le(t + 4)) == 0 && p2v_get_u16le(t + 34) == 32 + 28,
       "mp: 32 cpus");
    r = vmm_mptable_write(&mem, 0, &err);
    ok(r == -1 && has(&err, "0 cpus"), "mp: 0 cpus: %s", err.msg);
    r = vmm_mptable_write(&mem, 33, &err);
    ok(r == -1 && has(&err, "33 cpus"), "mp: 33 cpus: %s", err.msg);
    if (mem_new(&small, 0xf8000) == 0) {
        r = vmm_mptable_write(&small, 1, &err);
        ok(r == -1 && has(&err, "guest memory"), "mp: memory below 1 MiB: %s", err.msg);
        mem_free(&small);
    }
out:
    mem_free(&mem);
}

int main(void)
{
    glob_t g;
    int globbed;
    uint8_t *k = NULL;
    size_t klen = 0;
    const char *path = NULL;

    test_synthetic();
    test_mptable();

    memset(&g, 0, sizeof(g));
    globbed = glob("/boot/vmlinuz-*", 0, NULL, &g) == 0;
    if (globbed) {
        for (size_t i = 0; i < g.gl_pathc && !k; i++)
            if ((k = read_all(g.gl_pathv[i], &klen)))
                path = g.gl_pathv[i];
    }
    if (k)
        test_real(path, k, klen);
    else
        ok(1, "real kernel # SKIP no readable /boot/vmlinuz-*");
    free(k);
    if (globbed)
        globfree(&g);
    return exit_status();
}
