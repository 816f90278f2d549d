/* fuzz-vhdx.c: libFuzzer harness of the VHDX driver (disk-formats/vhdx.c, vhd-parse.c).
 * Each input becomes a file in a private folder under /dev/shm, is probed, opened
 * read-only as "vhdx" (so that our checks, then libvhdi or our reader, see it), then
 * walked: block status over the whole disk, pread of the data runs (capped so large
 * virtual sizes stay fast), the last byte, check and info, close. The parsers of
 * vhd-parse.c also get the header, region table and metadata table bytes directly.
 *
 * libFuzzer keeps inputs under 1 MiB, and every VHDX structure but the header section
 * lies at 1 MiB or further (MS-VHDX 2.1): written as it is, no input would get past
 * "too small". So an input is laid out in the file as its first 320 KiB (identifier,
 * headers, region tables) at offset 0, then 128 KiB slices, each at the start of the
 * next MiB of the file (1 MiB, 2 MiB, ...); the file ends at the end of the last MiB
 * used. seeds-vhdx.sh packs its seeds the same way.
 * A mutation almost always breaks a CRC-32C, which ends the walk at once: inputs of an
 * even size get the CRCs of both headers and both region tables repaired before they
 * are written, so that mutations reach the metadata, the BAT and the readers; odd sizes
 * (inserted or erased bytes) keep them as they come, so that the CRC checks are fuzzed
 * too.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Idisk-formats \
 * tests/fuzz/fuzz-vhdx.c common/\*.c disk-formats/\*.c -lvhdi ... (see run-fuzzers) */
#include "fuzz-diskfmt.h"
#include "vhd.h"

/* The layout of an input in the file (see the top). */
#define PACK_HEAD (320u * 1024)
#define PACK_SLICE (128u * 1024)

/* Where file offset @off came from in the input, or SIZE_MAX. */
static size_t input_pos(uint64_t off, size_t size)
{
    uint64_t pos;
    if (off < PACK_HEAD)
        pos = off;
    else if (off >= VHDX_MIB && off % VHDX_MIB < PACK_SLICE)
        pos = PACK_HEAD + (off / VHDX_MIB - 1) * PACK_SLICE + off % VHDX_MIB;
    else
        return SIZE_MAX;
    return pos < size ? (size_t)pos : SIZE_MAX;
}

static void repair(uint8_t *p, size_t size)
{
    static const struct {
        uint32_t at, len;
    } s[] = {{VHDX_HEADER1_OFFSET, VHDX_HEADER_SIZE}, {VHDX_HEADER2_OFFSET, VHDX_HEADER_SIZE},
             {VHDX_REGION1_OFFSET, VHDX_REGION_TABLE_SIZE},
             {VHDX_REGION2_OFFSET, VHDX_REGION_TABLE_SIZE}};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (size >= (size_t)s[i].at + s[i].len)
            p2v_put_u32le(p + s[i].at + 4, vhdx_checksum(p + s[i].at, s[i].len, 4));
}

/* Write the input into the file, laid out as the top says. */
static int write_input(const uint8_t *data, size_t size)
{
    static uint8_t head[PACK_HEAD];
    size_t n = size < PACK_HEAD ? size : PACK_HEAD;
    int fd = open(fuzz_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    memcpy(head, data, n);
    if (size % 2 == 0)
        repair(head, n);
    int r = n && pwrite(fd, head, n, 0) != (ssize_t)n ? -1 : 0;
    uint64_t end = n;
    for (size_t pos = PACK_HEAD, k = 1; r == 0 && pos < size; pos += PACK_SLICE, k++) {
        size_t m = size - pos < PACK_SLICE ? size - pos : PACK_SLICE;
        if (pwrite(fd, data + pos, m, (off_t)(k * VHDX_MIB)) != (ssize_t)m)
            r = -1;
        end = (k + 1) * VHDX_MIB;
    }
    if (r == 0 && ftruncate(fd, (off_t)end) < 0)
        r = -1;
    close(fd);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    static struct vhdx_region_table rt;
    if (!ready) {
        fuzz_setup("vhdx", "vhdx");
        ready = 1;
    }
    /* the parsers alone, on the bytes where they would be */
    struct vhdx_header h;
    if (size >= VHDX_HEADER1_OFFSET + VHDX_HEADER_SIZE)
        vhdx_header_parse(data + VHDX_HEADER1_OFFSET, size - VHDX_HEADER1_OFFSET, "t", 0,
                          &h, NULL);
    if (size >= VHDX_REGION1_OFFSET + VHDX_REGION_TABLE_SIZE &&
        vhdx_region_table_parse(data + VHDX_REGION1_OFFSET, VHDX_REGION_TABLE_SIZE, "t", 0,
                                &rt, NULL) == 0) {
        const struct vhdx_region *m = &rt.e[rt.metadata];
        size_t at = input_pos(m->offset, size);
        struct vhdx_meta_table mt;
        if (at != SIZE_MAX && size - at >= VHDX_METADATA_TABLE_SIZE)
            vhdx_meta_table_parse(data + at, size - at, m->length, "t", 0, &mt, NULL);
    }
    if (write_input(data, size) < 0)
        return 0;
    const char *probed = NULL;
    struct p2v_err err;
    diskfmt_probe(fuzz_path, &probed, &err);
    fuzz_walk("vhdx", 0);
    return 0;
}
