/* loader.c: load a Linux bzImage through the x86 boot protocol's 64-bit entry
 * (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL").
 *
 * We check the setup header, copy the protected-mode kernel to VMM_KERNEL_ADDR, place the
 * initrd as high as the kernel allows, and build in low memory what the 64-bit entry needs:
 *
 *   0x00500  GDT: 0x00 null, 0x08 null, 0x10 flat 64-bit code (__BOOT_CS),
 *            0x18 flat data (__BOOT_DS), 0x20 a 64-bit TSS descriptor (16 bytes)
 *   0x07000  boot_params (the "zero page"), the setup header copied at 0x1f1
 *   0x08ff0  the boot stack's top (the page 0x8000-0x8fff)
 *   0x09000  PML4, 0x0a000 PDPT, 0x0b000-0x0efff four PDs: 0-4 GiB identity, 2 MiB pages
 *   0x20000  the command line (VMM_CMDLINE_MAX bytes with the NUL)
 *   0x100000 the protected-mode kernel, entered at +0x200
 *
 * What the core (kvm.c) must set on the boot vCPU before running it, from struct vmm_loaded:
 *   RIP = entry, RSI = boot_params, RSP = stack, RFLAGS = 0x2 (interrupts disabled),
 *   CR3 = cr3, CR0 = PE | ET | PG (0x80000011), CR4 = PAE (0x20), EFER = LME | LMA (0x500),
 *   GDTR = { gdt_base, gdt_limit }, IDTR = { 0, 0 },
 *   CS  = VMM_BOOT_CS  (0x10): base 0, limit 0xfffff pages, type 0xb, S, P, L = 1, D = 0, G,
 *   DS = ES = SS (and FS, GS) = VMM_BOOT_DS (0x18): base 0, limit 0xfffff pages, type 0x3,
 *        S, P, D/B = 1, G,
 *   TR  = VMM_BOOT_TSS (0x20): base 0, limit 0x67, type 0xb (busy 64-bit TSS), P,
 *   LDTR unusable (or selector 0, type 0x2, P).
 * (The three selector constants below are local; they could move to vmm-int.h.)
 */
#include <errno.h>
#include <string.h>

#include "vmm-int.h"

#define VMM_BOOT_CS 0x10  /* __BOOT_CS: execute/read, 4 GiB flat, 64-bit */
#define VMM_BOOT_DS 0x18  /* __BOOT_DS: read/write, 4 GiB flat */
#define VMM_BOOT_TSS 0x20 /* a 16-byte system descriptor: entries 4 and 5 */
#define GDT_ENTRIES 6

/* Offsets in the bzImage file, which are also offsets in boot_params (the setup header
 * sits at 0x1f1 in both). */
#define BZ_SETUP_SECTS 0x1f1    /* u8: 512-byte sectors of real-mode setup; 0 means 4 */
#define BZ_SYSSIZE 0x1f4        /* u32: protected-mode code size in 16-byte paragraphs */
#define BZ_BOOT_FLAG 0x1fe      /* u16: 0xaa55 */
#define BZ_JUMP 0x200           /* u16: a short jump; its byte at 0x201 sizes the header */
#define BZ_HEADER 0x202         /* "HdrS" */
#define BZ_VERSION 0x206        /* u16: boot protocol version */
#define BZ_KERNEL_VERSION 0x20e /* u16: the version string's offset, less 0x200 */
#define BZ_TYPE_OF_LOADER 0x210
#define BZ_LOADFLAGS 0x211
#define BZ_RAMDISK_IMAGE 0x218
#define BZ_RAMDISK_SIZE 0x21c
#define BZ_HEAP_END_PTR 0x224
#define BZ_CMD_LINE_PTR 0x228
#define BZ_INITRD_ADDR_MAX 0x22c
#define BZ_KERNEL_ALIGNMENT 0x230
#define BZ_RELOCATABLE 0x234
#define BZ_XLOADFLAGS 0x236
#define BZ_CMDLINE_SIZE 0x238
#define BZ_PREF_ADDRESS 0x258
#define BZ_INIT_SIZE 0x260
#define BZ_INIT_SIZE_END 0x264 /* the last field we read ends here */
#define BZ_HDR_MAX_END 0x290   /* boot_params.edd_mbr_sig_buffer follows the header */

#define BZ_MIN_FILE 1024u           /* the boot sector and at least one setup sector */
#define BZ_MIN_VERSION 0x020c       /* 2.12: xloadflags, hence a declared 64-bit entry */
#define BZ_LOADED_HIGH 0x01         /* loadflags: the kernel is loaded at 0x100000 */
#define BZ_CAN_USE_HEAP 0x80        /* loadflags: heap_end_ptr is valid */
#define BZ_XLF_KERNEL_64 0x0001     /* xloadflags: a 64-bit entry at +0x200 */
#define BZ_MAX_ALIGNMENT (1u << 30) /* kernel_alignment above 1 GiB is nonsense */
#define BZ_ENTRY_64 0x200           /* the 64-bit entry's offset in the loaded kernel */

/* boot_params fields outside the setup header. */
#define BP_SIZE 0x1000
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_ALT_MEM_K 0x1e0
#define BP_E820_ENTRIES 0x1e8
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128 /* E820_MAX_ENTRIES_ZEROPAGE */
#define E820_ENTRY_SIZE 20
#define E820_RAM 1
#define E820_RESERVED 2

/* Page tables. */
#define PT_PRESENT 0x001ull
#define PT_RW 0x002ull
#define PT_PS 0x080ull /* a 2 MiB page in a PD entry */
#define PT_PDPT_ADDR (VMM_PML4_ADDR + 0x1000)
#define PT_PD_ADDR (VMM_PML4_ADDR + 0x2000)
#define PT_PD_COUNT 4 /* 4 x 1 GiB: the first 4 GiB, which holds all of guest RAM */
#define PT_END (PT_PD_ADDR + PT_PD_COUNT * 0x1000ull)

#define PAGE_SIZE_4K 0x1000ull
#define MIB (1ull << 20)

_Static_assert(VMM_GDT_ADDR + GDT_ENTRIES * 8 <= VMM_BOOT_PARAMS_ADDR, "gdt overlaps");
_Static_assert(VMM_BOOT_PARAMS_ADDR + BP_SIZE < VMM_BOOT_STACK_TOP, "stack overlaps");
_Static_assert(VMM_BOOT_STACK_TOP <= VMM_PML4_ADDR, "stack overlaps page tables");
_Static_assert(PT_END <= 0x10000, "page tables must stay below 64 KiB");
_Static_assert(PT_END <= VMM_CMDLINE_ADDR, "page tables overlap the command line");
_Static_assert(VMM_CMDLINE_ADDR + VMM_CMDLINE_MAX <= VMM_EBDA_ADDR, "cmdline too high");
_Static_assert(VMM_RAM_MAX <= PT_PD_COUNT * (1ull << 30), "page tables do not map all RAM");
_Static_assert(BP_E820_TABLE + BP_E820_MAX * E820_ENTRY_SIZE <= BP_SIZE, "e820 table");

/* What we read from a bzImage's setup header, validated. */
struct bz_info {
    size_t setup_bytes; /* (setup_sects + 1) * 512: the payload starts here */
    size_t payload_len;
    size_t hdr_end; /* 0x202 + the byte at 0x201 */
    uint16_t version, xloadflags, kernel_version;
    uint8_t loadflags, relocatable;
    uint32_t syssize, initrd_addr_max, kernel_alignment, cmdline_size, init_size;
    uint64_t pref_address;
};

static int bz_parse(const uint8_t *k, size_t klen, struct bz_info *out, struct p2v_err *err)
{
    struct p2v_rd r;
    const uint8_t *h;
    struct bz_info bz;
    unsigned setup_sects;

    memset(&bz, 0, sizeof(bz));
    if (!k || klen < BZ_MIN_FILE)
        return p2v_err_set(err, EINVAL,
                           "kernel is not a bzImage: %zu bytes is less than the %u-byte minimum",
                           k ? klen : 0, BZ_MIN_FILE);
    /* Every fixed field we read lies in [0, BZ_HDR_MAX_END), inside the minimum size. */
    p2v_rd_init(&r, k, klen);
    if (p2v_rd_ptr_at(&r, 0, &h, BZ_HDR_MAX_END) < 0)
        return p2v_err_set(err, EINVAL, "kernel is not a bzImage: truncated setup header");

    if (memcmp(h + BZ_HEADER, "HdrS", 4) != 0)
        return p2v_err_set(err, EINVAL, "kernel is not a bzImage: no 'HdrS' magic at 0x%x",
                           BZ_HEADER);
    if (p2v_get_u16le(h + BZ_BOOT_FLAG) != 0xaa55)
        return p2v_err_set(err, EINVAL,
                           "kernel is not a bzImage: boot_flag at 0x%x is 0x%04x, not 0xaa55",
                           BZ_BOOT_FLAG, p2v_get_u16le(h + BZ_BOOT_FLAG));
    bz.version = p2v_get_u16le(h + BZ_VERSION);
    if (bz.version < BZ_MIN_VERSION)
        return p2v_err_set(err, EINVAL,
                           "kernel boot protocol %u.%02u (0x%04x at 0x%x) is too old: the "
                           "64-bit entry needs 2.12 or newer",
                           bz.version >> 8, bz.version & 0xff, bz.version, BZ_VERSION);

    bz.hdr_end = BZ_HEADER + (size_t)h[BZ_JUMP + 1];
    if (bz.hdr_end < BZ_INIT_SIZE_END || bz.hdr_end > BZ_HDR_MAX_END)
        return p2v_err_set(err, EINVAL,
                           "kernel setup header ends at 0x%zx (from the jump byte 0x%02x at "
                           "0x%x), outside 0x%x..0x%x",
                           bz.hdr_end, h[BZ_JUMP + 1], BZ_JUMP + 1, BZ_INIT_SIZE_END,
                           BZ_HDR_MAX_END);

    bz.xloadflags = p2v_get_u16le(h + BZ_XLOADFLAGS);
    if (!(bz.xloadflags & BZ_XLF_KERNEL_64))
        return p2v_err_set(err, EINVAL,
                           "kernel has no 64-bit entry: xloadflags 0x%04x at 0x%x lacks "
                           "XLF_KERNEL_64",
                           bz.xloadflags, BZ_XLOADFLAGS);
    bz.loadflags = h[BZ_LOADFLAGS];
    if (!(bz.loadflags & BZ_LOADED_HIGH))
        return p2v_err_set(err, EINVAL,
                           "kernel is not a bzImage: loadflags 0x%02x at 0x%x lacks "
                           "LOADED_HIGH",
                           bz.loadflags, BZ_LOADFLAGS);

    setup_sects = h[BZ_SETUP_SECTS] ? h[BZ_SETUP_SECTS] : 4;
    bz.setup_bytes = ((size_t)setup_sects + 1) * 512; /* at most 256 * 512 */
    if (bz.setup_bytes >= klen)
        return p2v_err_set(err, EINVAL,
                           "kernel is truncated: %u setup sectors (0x%x) need more than the "
                           "file's %zu bytes",
                           setup_sects, BZ_SETUP_SECTS, klen);
    bz.payload_len = klen - bz.setup_bytes;

    bz.syssize = p2v_get_u32le(h + BZ_SYSSIZE);
    if (bz.syssize == 0 || (uint64_t)bz.syssize * 16 > bz.payload_len)
        return p2v_err_set(err, EINVAL,
                           "kernel is truncated: syssize at 0x%x says %llu bytes of "
                           "protected-mode code, the file holds %zu",
                           BZ_SYSSIZE, (unsigned long long)bz.syssize * 16, bz.payload_len);

    bz.relocatable = h[BZ_RELOCATABLE];
    bz.kernel_alignment = p2v_get_u32le(h + BZ_KERNEL_ALIGNMENT);
    if (bz.relocatable &&
        (!p2v_is_pow2(bz.kernel_alignment) || bz.kernel_alignment > BZ_MAX_ALIGNMENT))
        return p2v_err_set(err, EINVAL,
                           "kernel_alignment 0x%x at 0x%x is not a power of two up to 1 GiB",
                           bz.kernel_alignment, BZ_KERNEL_ALIGNMENT);

    bz.kernel_version = p2v_get_u16le(h + BZ_KERNEL_VERSION);
    bz.initrd_addr_max = p2v_get_u32le(h + BZ_INITRD_ADDR_MAX);
    bz.cmdline_size = p2v_get_u32le(h + BZ_CMDLINE_SIZE);
    bz.pref_address = p2v_get_u64le(h + BZ_PREF_ADDRESS);
    bz.init_size = p2v_get_u32le(h + BZ_INIT_SIZE);
    *out = bz;
    return 0;
}

int vmm_bzimage_check(const uint8_t *k, size_t klen, struct p2v_err *err)
{
    struct bz_info bz;
    return bz_parse(k, klen, &bz, err);
}

/* The kernel's version string (header field 0x20e: offset less 0x200), if it lies NUL
 * terminated inside the setup code and is printable; else "". */
static void bz_version_string(const uint8_t *k, const struct bz_info *bz, char *out,
                              size_t outlen)
{
    size_t off = (size_t)bz->kernel_version + 0x200, n = 0, i;

    out[0] = '\0';
    if (bz->kernel_version == 0 || off >= bz->setup_bytes)
        return;
    for (i = off; i < bz->setup_bytes && k[i] != '\0'; i++)
        if (k[i] < 0x20 || k[i] > 0x7e)
            return;
    if (i == bz->setup_bytes) /* no NUL inside the setup code */
        return;
    n = P2V_MIN(i - off, outlen - 1);
    memcpy(out, k + off, n);
    out[n] = '\0';
}

void vmm_bzimage_version(const uint8_t *k, size_t klen, char *out, size_t outlen)
{
    struct bz_info bz;
    out[0] = '\0';
    if (bz_parse(k, klen, &bz, NULL) == 0)
        bz_version_string(k, &bz, out, outlen);
}

static uint8_t *e820_add(uint8_t *p, uint64_t addr, uint64_t size, uint32_t type)
{
    p2v_put_u64le(p, addr);
    p2v_put_u64le(p + 8, size);
    p2v_put_u32le(p + 16, type);
    return p + E820_ENTRY_SIZE;
}

static void gdt_put(uint8_t *gdt, unsigned sel, uint64_t desc)
{
    p2v_put_u64le(gdt + sel, desc);
}

int vmm_boot_load(const struct vmm_mem *mem, const uint8_t *k, size_t klen,
                  const uint8_t *initrd, size_t ilen, const char *cmdline,
                  struct vmm_loaded *out, struct p2v_err *err)
{
    struct bz_info bz;
    struct vmm_loaded ld;
    uint64_t payload_end, base, decomp_end, kernel_end, limit, iaddr = 0;
    size_t cmdlen, cmdmax;
    uint8_t *gdt, *bp, *stack, *pt, *cl, *kdst, *idst = NULL, *e;
    int ret = -1;

    if (!mem || !mem->host || !out) {
        p2v_err_set(err, EINVAL, "vmm_boot_load: no guest memory or output");
        goto out;
    }
    if (bz_parse(k, klen, &bz, err) < 0)
        goto out;
    if (mem->size > VMM_RAM_MAX) {
        p2v_err_set(err, EINVAL, "guest memory of %llu MiB is above the %llu MiB maximum",
                    (unsigned long long)(mem->size / MIB),
                    (unsigned long long)(VMM_RAM_MAX / MIB));
        goto out;
    }
    if (!cmdline)
        cmdline = "";

    /* Where the kernel lives until it has decompressed itself. The 64-bit entry
     * (arch/x86/boot/compressed/head_64.S) decompresses at the load address rounded up to
     * kernel_alignment, but no lower than LOAD_PHYSICAL_ADDR (pref_address) when
     * relocatable, and at pref_address when not; it then uses init_size bytes from there. */
    if (P2V_ADD_OVERFLOW(VMM_KERNEL_ADDR, (uint64_t)bz.payload_len, &payload_end))
        payload_end = UINT64_MAX;
    if (bz.relocatable) {
        if (!p2v_align_up(VMM_KERNEL_ADDR, bz.kernel_alignment, &base))
            base = UINT64_MAX;
        base = P2V_MAX(base, bz.pref_address);
    } else {
        base = bz.pref_address ? bz.pref_address : VMM_KERNEL_ADDR;
    }
    if (P2V_ADD_OVERFLOW(base, (uint64_t)bz.init_size, &decomp_end))
        decomp_end = UINT64_MAX;
    kernel_end = P2V_MAX(payload_end, decomp_end);
    if (kernel_end > mem->size) {
        p2v_err_set(err, ENOMEM,
                    "guest memory too small: the kernel needs %llu MiB (%zu bytes loaded at "
                    "0x%llx, init_size 0x%x from 0x%llx), the guest has %llu MiB",
                    (unsigned long long)P2V_DIV_ROUND_UP(kernel_end, MIB), bz.payload_len,
                    (unsigned long long)VMM_KERNEL_ADDR, bz.init_size,
                    (unsigned long long)base, (unsigned long long)(mem->size / MIB));
        goto out;
    }

    /* cmdline_size excludes the NUL; our buffer includes it. */
    cmdlen = strlen(cmdline);
    cmdmax = P2V_MIN((size_t)VMM_CMDLINE_MAX - 1, (size_t)bz.cmdline_size);
    if (cmdlen > cmdmax) {
        p2v_err_set(err, E2BIG,
                    "kernel command line of %zu bytes is too long: the limit is %zu "
                    "(cmdline_size 0x%x at 0x%x)",
                    cmdlen, cmdmax, bz.cmdline_size, BZ_CMDLINE_SIZE);
        goto out;
    }

    if (initrd && ilen > 0) {
        limit = P2V_MIN(mem->size, (uint64_t)bz.initrd_addr_max + 1);
        if (ilen > limit || ((limit - ilen) & ~(PAGE_SIZE_4K - 1)) < kernel_end) {
            p2v_err_set(err, ENOMEM,
                        "initrd of %zu bytes does not fit in %llu MiB of guest memory: it "
                        "must lie between the kernel's end 0x%llx and 0x%llx",
                        ilen, (unsigned long long)(mem->size / MIB),
                        (unsigned long long)kernel_end, (unsigned long long)limit);
            goto out;
        }
        iaddr = (limit - ilen) & ~(PAGE_SIZE_4K - 1);
        idst = vmm_mem_ptr(mem, iaddr, ilen);
    }

    gdt = vmm_mem_ptr(mem, VMM_GDT_ADDR, GDT_ENTRIES * 8);
    bp = vmm_mem_ptr(mem, VMM_BOOT_PARAMS_ADDR, BP_SIZE);
    stack = vmm_mem_ptr(mem, VMM_BOOT_STACK_TOP & ~(PAGE_SIZE_4K - 1), PAGE_SIZE_4K);
    pt = vmm_mem_ptr(mem, VMM_PML4_ADDR, PT_END - VMM_PML4_ADDR);
    cl = vmm_mem_ptr(mem, VMM_CMDLINE_ADDR, VMM_CMDLINE_MAX);
    kdst = vmm_mem_ptr(mem, VMM_KERNEL_ADDR, bz.payload_len);
    if (!gdt || !bp || !stack || !pt || !cl || !kdst || (ilen && initrd && !idst)) {
        /* Not reached: kernel_end <= mem->size covers all of these. */
        p2v_err_set(err, ENOMEM, "guest memory of %llu bytes is too small for the loader",
                    (unsigned long long)mem->size);
        goto out;
    }

    /* The kernel and the initrd. */
    memcpy(kdst, k + bz.setup_bytes, bz.payload_len);
    if (idst)
        memcpy(idst, initrd, ilen);

    /* The command line. */
    memset(cl, 0, VMM_CMDLINE_MAX);
    memcpy(cl, cmdline, cmdlen);

    /* boot_params: zeroed, then the setup header as the spec sizes it. */
    memset(bp, 0, BP_SIZE);
    memset(stack, 0, PAGE_SIZE_4K);
    memcpy(bp + BZ_SETUP_SECTS, k + BZ_SETUP_SECTS, bz.hdr_end - BZ_SETUP_SECTS);
    bp[BZ_TYPE_OF_LOADER] = 0xff; /* undefined loader */
    bp[BZ_LOADFLAGS] = (uint8_t)(bz.loadflags | BZ_CAN_USE_HEAP);
    p2v_put_u16le(bp + BZ_HEAP_END_PTR, 0xfe00); /* used only by real-mode setup */
    p2v_put_u32le(bp + BZ_CMD_LINE_PTR, (uint32_t)VMM_CMDLINE_ADDR);
    p2v_put_u32le(bp + BZ_RAMDISK_IMAGE, (uint32_t)iaddr);
    p2v_put_u32le(bp + BZ_RAMDISK_SIZE, idst ? (uint32_t)ilen : 0);
    p2v_put_u32le(bp + BP_EXT_RAMDISK_IMAGE, (uint32_t)(iaddr >> 32));
    p2v_put_u32le(bp + BP_EXT_RAMDISK_SIZE, idst ? (uint32_t)((uint64_t)ilen >> 32) : 0);
    p2v_put_u32le(bp + BP_ALT_MEM_K, (uint32_t)((mem->size - VMM_KERNEL_ADDR) >> 10));

    /* e820: low RAM, the EBDA and BIOS area (our MP table) reserved, RAM from 1 MiB. */
    e = bp + BP_E820_TABLE;
    e = e820_add(e, 0, VMM_EBDA_ADDR, E820_RAM);
    e = e820_add(e, VMM_EBDA_ADDR, VMM_KERNEL_ADDR - VMM_EBDA_ADDR, E820_RESERVED);
    e = e820_add(e, VMM_KERNEL_ADDR, mem->size - VMM_KERNEL_ADDR, E820_RAM);
    bp[BP_E820_ENTRIES] = (uint8_t)((size_t)(e - (bp + BP_E820_TABLE)) / E820_ENTRY_SIZE);

    /* Identity page tables for 0-4 GiB with 2 MiB pages. */
    memset(pt, 0, PT_END - VMM_PML4_ADDR);
    p2v_put_u64le(pt, PT_PDPT_ADDR | PT_PRESENT | PT_RW);
    for (unsigned i = 0; i < PT_PD_COUNT; i++) {
        uint8_t *pd = pt + (PT_PD_ADDR - VMM_PML4_ADDR) + i * 0x1000;
        p2v_put_u64le(pt + 0x1000 + i * 8,
                      (PT_PD_ADDR + i * 0x1000ull) | PT_PRESENT | PT_RW);
        for (unsigned j = 0; j < 512; j++)
            p2v_put_u64le(pd + j * 8, (((uint64_t)i * 512 + j) << 21) | PT_PRESENT | PT_RW |
                                          PT_PS);
    }

    /* The GDT. */
    memset(gdt, 0, GDT_ENTRIES * 8);
    gdt_put(gdt, VMM_BOOT_CS, 0x00af9b000000ffffull); /* G, L, P, code exec/read */
    gdt_put(gdt, VMM_BOOT_DS, 0x00cf93000000ffffull); /* G, D/B, P, data read/write */
    gdt_put(gdt, VMM_BOOT_TSS, 0x00008b0000000067ull); /* P, busy 64-bit TSS, limit 0x67 */
    gdt_put(gdt, VMM_BOOT_TSS + 8, 0);                 /* the TSS base's high half */

    memset(&ld, 0, sizeof(ld));
    ld.entry = VMM_KERNEL_ADDR + BZ_ENTRY_64;
    ld.boot_params = VMM_BOOT_PARAMS_ADDR;
    ld.stack = VMM_BOOT_STACK_TOP;
    ld.cr3 = VMM_PML4_ADDR;
    ld.gdt_base = VMM_GDT_ADDR;
    ld.gdt_limit = GDT_ENTRIES * 8 - 1;
    ld.initrd_addr = iaddr;
    ld.initrd_size = idst ? ilen : 0;
    ld.protocol = bz.version;
    bz_version_string(k, &bz, ld.kernel_version, sizeof(ld.kernel_version));
    p2v_log(P2V_LOG_DEBUG,
            "loader: kernel '%s' protocol %u.%02u, %zu bytes at 0x%llx (decompresses at "
            "0x%llx, init_size 0x%x), initrd %zu bytes at 0x%llx, cmdline %zu bytes",
            ld.kernel_version, bz.version >> 8, bz.version & 0xff, bz.payload_len,
            (unsigned long long)VMM_KERNEL_ADDR, (unsigned long long)base, bz.init_size,
            (size_t)ld.initrd_size, (unsigned long long)iaddr, cmdlen);
    *out = ld;
    ret = 0;
out:
    return ret;
}
