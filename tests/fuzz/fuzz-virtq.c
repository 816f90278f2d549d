/* fuzz-virtq.c: libFuzzer harness of the virtio-blk device's virtqueue processing
 * (vmm/virtio-blk.c over vmm/disk.c). Guest memory is 64 KiB, filled from the input: the
 * descriptor table at 0x0000, the avail ring at 0x1000, the used ring at 0x2000 and
 * everything the descriptors point at. A fresh device is brought up through its BAR as a
 * driver would (queue size and, optionally, ring addresses chosen by the input), then the
 * avail index is set to input-chosen values and queue 0 notified, up to four times, with
 * the ISR read in between. The disk is a 1 MiB raw image under /dev/shm (its overlay is
 * thereby capped at 1 MiB). Nothing may crash or reach outside guest memory (ASan).
 *
 * Input: [0] queue size log2 (mod 9); [1] bits 0-1 rounds - 1, bit 7 ring addresses from
 * [10..33]; [2..9] avail idx per round (u16 LE); then guest memory from address 0.
 */
// fuzz-sources: vmm/disk.c vmm/virtio-blk.c
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../vmm/vmm-int.h"

#define FUZZ_RAM (64u << 10)
#define FUZZ_DISK (1u << 20)
#define FUZZ_HDR 34u

static uint8_t ram[FUZZ_RAM] __attribute__((aligned(4096)));
static struct vmm_mem mem = {ram, FUZZ_RAM};
static struct vmm_disk *disk;
static char dir[64], path[96];

static void irq_set(void *opaque, unsigned gsi, int level)
{
    (void)opaque, (void)gsi, (void)level;
}

static void cleanup(void)
{
    vmm_disk_close(disk);
    unlink(path);
    rmdir(dir);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/dev/shm/fuzz-virtq-%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/disk.raw", dir);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    for (unsigned i = 0; i < FUZZ_DISK; i++)
        fputc((int)(i * 131 % 251), f);
    if (fclose(f) != 0)
        abort();
    disk = vmm_disk_open(path, "raw", NULL);
    if (!disk)
        abort();
    atexit(cleanup);
}

static void bar_wr(struct vmm_pci_dev *d, uint32_t off, unsigned len, uint64_t v)
{
    uint8_t b[8];
    for (unsigned i = 0; i < len; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    d->bar_access(d->opaque, 0, off, b, len, true);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!disk)
        setup();
    if (size < FUZZ_HDR)
        return 0;
    memset(ram, 0, sizeof ram);
    memcpy(ram, data + FUZZ_HDR, P2V_MIN(size - FUZZ_HDR, sizeof ram));

    struct vmm_irq irq = {irq_set, NULL};
    struct vmm_virtio_blk *b = vmm_virtio_blk_new(disk, &mem, &irq, NULL);
    if (!b)
        abort();
    struct vmm_pci_dev *d = vmm_virtio_blk_pci(b);
    uint64_t desc = 0x0, avail = 0x1000, used = 0x2000;
    if (data[1] & 0x80) {
        desc = p2v_get_u64le(data + 10);
        avail = p2v_get_u64le(data + 18);
        used = p2v_get_u64le(data + 26);
    }
    bar_wr(d, 0x14, 1, 0);
    bar_wr(d, 0x14, 1, 3);
    bar_wr(d, 0x08, 4, 1);
    bar_wr(d, 0x0c, 4, 1);
    bar_wr(d, 0x14, 1, 0xb);
    bar_wr(d, 0x16, 2, 0);
    bar_wr(d, 0x18, 2, 1u << (data[0] % 9));
    bar_wr(d, 0x20, 8, desc);
    bar_wr(d, 0x28, 8, avail);
    bar_wr(d, 0x30, 8, used);
    bar_wr(d, 0x1c, 2, 1);
    bar_wr(d, 0x14, 1, 0xf);
    unsigned rounds = 1 + (data[1] & 3);
    for (unsigned r = 0; r < rounds; r++) {
        if (avail % 2 == 0 && avail <= FUZZ_RAM - 4)
            memcpy(ram + avail + 2, data + 2 + 2 * r, 2);
        bar_wr(d, 0x3000, 2, 0);
        uint8_t isr;
        d->bar_access(d->opaque, 0, 0x1000, &isr, 1, false);
    }
    vmm_virtio_blk_free(b);
    return 0;
}
