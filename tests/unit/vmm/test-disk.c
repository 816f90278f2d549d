/* test-disk.c: vmm/disk.c, the guest's copy-on-write disk. A 64 MiB raw image with known
 * content (data and zero runs) and its qcow2 copy made by qemu-img: reads through the disk
 * match the content; writes (aligned, unaligned, straddling blocks, interleaved with
 * untouched blocks, at the end of a disk whose size is not a multiple of 4 KiB) are seen
 * by later reads, while the image files' SHA-256 stays the same; the overlay's memory
 * grows; ranges beyond the end (and offsets that overflow) are refused with an error that
 * names the offset.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diskfmt.h"
#include "tap.h"
#include "vmm-int.h"

#define MIB (1024u * 1024u)
#define DISK_SIZE (64u * MIB)
#define SMALL_SIZE 10000u /* not a multiple of the overlay's 4 KiB blocks */
#define IMAGE_TESTS 27 /* the checks test_image() makes */

static char tmpdir[64];

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Each MiB: random bytes, except every third MiB which is zeros (holes in qcow2). */
static void fill_ref(uint8_t *ref, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ref[i] = (i / MIB) % 3 == 1 ? 0 : (uint8_t)rnd();
}

static int write_file(const char *path, const uint8_t *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* The file's SHA-256 in hex through sha256sum, or "" when that failed. */
static void sha256_file(const char *path, char out[65])
{
    char cmd[512];
    out[0] = 0;
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    if (fscanf(p, "%64s", out) != 1)
        out[0] = 0;
    pclose(p);
}

/* Compare the whole disk against @ref, reading in chunks of uneven sizes. */
static bool whole_matches(struct vmm_disk *d, const uint8_t *ref, uint64_t size)
{
    static uint8_t buf[3 * MIB + 777];
    uint64_t off = 0;
    while (off < size) {
        size_t n = (size_t)P2V_MIN((uint64_t)sizeof buf, size - off);
        if (vmm_disk_read(d, buf, n, off, NULL) < 0 || memcmp(buf, ref + off, n) != 0) {
            diag("mismatch in the %zu bytes at %llu", n, (unsigned long long)off);
            return false;
        }
        off += n;
    }
    return true;
}

static bool range_matches(struct vmm_disk *d, const uint8_t *ref, uint64_t off, size_t n)
{
    uint8_t *buf = malloc(n ? n : 1);
    bool good = buf && vmm_disk_read(d, buf, n, off, NULL) == 0 && memcmp(buf, ref + off, n) == 0;
    free(buf);
    return good;
}

/* Write @n random bytes at @off through the disk and into @ref. */
static int put(struct vmm_disk *d, uint8_t *ref, uint64_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ref[off + i] = (uint8_t)rnd();
    return vmm_disk_write(d, ref + off, n, off, NULL);
}

static void test_image(const char *path, const char *fmt, const uint8_t *ref0)
{
    struct p2v_err err;
    char before[65], after[65];
    sha256_file(path, before);
    ok(strlen(before) == 64, "%s: sha256 of the image before", fmt);

    uint8_t *ref = malloc(DISK_SIZE);
    memcpy(ref, ref0, DISK_SIZE);
    struct vmm_disk *d = vmm_disk_open(path, NULL, &err);
    if (!ok(d != NULL, "%s: open", fmt)) {
        diag("%s", err.msg);
        free(ref);
        return;
    }
    is_str(vmm_disk_format(d), fmt, "%s: format", fmt);
    is_int(vmm_disk_size(d), DISK_SIZE, "%s: size", fmt);
    ok(vmm_disk_image(d) != NULL, "%s: image handle", fmt);
    is_int(vmm_disk_overlay_bytes(d), 0, "%s: overlay empty at first", fmt);
    ok(whole_matches(d, ref, DISK_SIZE), "%s: whole disk reads back", fmt);
    ok(range_matches(d, ref, 12345, 77) && range_matches(d, ref, MIB - 3, 4099),
       "%s: unaligned reads", fmt);

    is_int(put(d, ref, 8192, 4096), 0, "%s: aligned block write", fmt);
    uint64_t ov1 = vmm_disk_overlay_bytes(d);
    ok(ov1 >= 4096, "%s: overlay grew to %llu bytes", fmt, (unsigned long long)ov1);
    is_int(put(d, ref, 4090, 100), 0, "%s: unaligned write straddling two blocks", fmt);
    is_int(put(d, ref, 5 * MIB - 1000, 3 * 4096 + 2000), 0,
           "%s: write over several blocks, from a zero run into data", fmt);
    is_int(put(d, ref, 40 * 4096 + 7, 1), 0, "%s: one byte", fmt);
    is_int(put(d, ref, 42 * 4096, 4096), 0, "%s: block after an untouched one", fmt);
    is_int(put(d, ref, 42 * 4096 + 100, 50), 0, "%s: rewrite inside an overlay block", fmt);
    is_int(put(d, ref, DISK_SIZE - 1, 1), 0, "%s: the last byte", fmt);
    ok(vmm_disk_overlay_bytes(d) > ov1, "%s: overlay grew again (%llu bytes)", fmt,
       (unsigned long long)vmm_disk_overlay_bytes(d));
    ok(range_matches(d, ref, 38 * 4096 + 5, 6 * 4096),
       "%s: read mixing overlay blocks and image runs", fmt);
    ok(range_matches(d, ref, 4000, 200) && range_matches(d, ref, 4090, 100),
       "%s: the straddling write reads back", fmt);
    ok(range_matches(d, ref, DISK_SIZE - 4096, 4096), "%s: the last block reads back", fmt);
    /* Many scattered writes: the table grows past its first size. */
    int bad = 0;
    for (int i = 0; i < 3000; i++) {
        uint64_t off = rnd() % (DISK_SIZE - 9000);
        if (put(d, ref, off, 1 + rnd() % 9000) < 0)
            bad++;
    }
    is_int(bad, 0, "%s: 3000 random writes", fmt);
    ok(whole_matches(d, ref, DISK_SIZE), "%s: whole disk reads back after writes", fmt);

    memset(&err, 0, sizeof err);
    uint8_t b[8];
    ok(vmm_disk_read(d, b, 2, DISK_SIZE - 1, &err) < 0 && strstr(err.msg, "offset"),
       "%s: read across the end refused (%s)", fmt, err.msg);
    memset(&err, 0, sizeof err);
    ok(vmm_disk_write(d, b, 1, DISK_SIZE, &err) < 0 && strstr(err.msg, "offset"),
       "%s: write past the end refused (%s)", fmt, err.msg);
    ok(vmm_disk_read(d, b, 8, UINT64_MAX - 3, NULL) < 0 &&
           vmm_disk_write(d, b, 8, UINT64_MAX - 3, NULL) < 0,
       "%s: offsets that overflow refused", fmt);
    is_int(vmm_disk_read(d, b, 0, DISK_SIZE, NULL), 0, "%s: empty read at the end", fmt);
    vmm_disk_close(d);

    sha256_file(path, after);
    is_str(after, before, "%s: the image file is unchanged", fmt);
    free(ref);
}

static void test_small(void)
{
    char path[128];
    uint8_t ref[SMALL_SIZE], buf[SMALL_SIZE];
    for (size_t i = 0; i < sizeof ref; i++)
        ref[i] = (uint8_t)rnd();
    snprintf(path, sizeof path, "%s/small.raw", tmpdir);
    if (!ok(write_file(path, ref, sizeof ref) == 0, "small: image written"))
        return;
    struct vmm_disk *d = vmm_disk_open(path, "raw", NULL);
    if (!ok(d != NULL, "small: open"))
        return;
    is_int(put(d, ref, SMALL_SIZE - 10, 10), 0, "small: write in the short last block");
    is_int(put(d, ref, 8192, SMALL_SIZE - 8192), 0, "small: write the whole short block");
    is_int(put(d, ref, 8000, 500), 0, "small: write straddling into the short block");
    ok(vmm_disk_read(d, buf, sizeof buf, 0, NULL) == 0 && memcmp(buf, ref, sizeof ref) == 0,
       "small: reads back");
    vmm_disk_close(d);
}

int main(void)
{
    char raw[128], qcow[128], cmd[512];
    plan(1 + 2 * IMAGE_TESTS + 6 + 1);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test-vmm-disk-XXXXXX");
    if (!mkdtemp(tmpdir))
        skip_all("cannot make a temporary folder");
    snprintf(raw, sizeof raw, "%s/disk.raw", tmpdir);
    snprintf(qcow, sizeof qcow, "%s/disk.qcow2", tmpdir);
    uint8_t *ref = malloc(DISK_SIZE);
    fill_ref(ref, DISK_SIZE);
    ok(write_file(raw, ref, DISK_SIZE) == 0, "raw image written");
    test_image(raw, "raw", ref);
    snprintf(cmd, sizeof cmd, "qemu-img convert -f raw -O qcow2 '%s' '%s' 2>/dev/null", raw,
             qcow);
    if (system(cmd) == 0) {
        test_image(qcow, "qcow2", ref);
    } else {
        for (int i = 0; i < IMAGE_TESTS; i++)
            ok(1, "# SKIP qemu-img is missing");
    }
    test_small();
    struct p2v_err err;
    ok(vmm_disk_open("/nonexistent/disk.img", NULL, &err) == NULL, "missing file refused (%s)",
       err.msg);
    free(ref);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        diag("cannot remove %s", tmpdir);
    return exit_status();
}
