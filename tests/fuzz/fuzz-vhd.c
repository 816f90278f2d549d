/* fuzz-vhd.c: libFuzzer harness of the VHD driver (disk-formats/vhd*.c). Each input is
 * written as a file into a private folder under /dev/shm, probed, opened read-only as
 * "vhd" (so that our checks, then our dynamic reader or libvhdi, see it), then walked:
 * block status over the whole disk, pread of the data runs (capped so large virtual
 * sizes stay fast), the last byte, check and info, close. The parsers of vhd-parse.c
 * also get the input's first and last bytes directly, as a footer and a dynamic disk
 * header.
 * A mutation almost always breaks a checksum, which ends the walk at once: inputs of an
 * even size get their footer and dynamic header checksums repaired before they are
 * written, so that mutations reach the BAT checks and the readers; odd sizes (inserted
 * or erased bytes) keep them as they come, so that the checksum checks are fuzzed too.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Idisk-formats \
 * tests/fuzz/fuzz-vhd.c common/\*.c disk-formats/\*.c -lvhdi ... (see run-fuzzers) */
#include "fuzz-diskfmt.h"
#include "vhd.h"

static uint8_t *copy;
static size_t copy_cap;

/* VHDSPEC "Checksum" of the footer at @at and of the dynamic header it points to. */
static void repair(uint8_t *p, size_t size)
{
    if (size < VHD_FOOTER_SIZE)
        return;
    uint8_t *foot = p + size - VHD_FOOTER_SIZE;
    uint64_t hdr = p2v_get_u64be(foot + 16);
    p2v_put_u32be(foot + 64, vhd_checksum(foot, VHD_FOOTER_SIZE, 64));
    if (memcmp(p, "conectix", 8) == 0 && size >= 2 * VHD_FOOTER_SIZE)
        p2v_put_u32be(p + 64, vhd_checksum(p, VHD_FOOTER_SIZE, 64));
    if (hdr <= size && size - hdr >= VHD_DYN_HEADER_SIZE)
        p2v_put_u32be(p + hdr + 36, vhd_checksum(p + hdr, VHD_DYN_HEADER_SIZE, 36));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        fuzz_setup("vhd", "vhd");
        ready = 1;
    }
    /* the parsers alone, on the bytes as they come */
    struct vhd_footer f;
    struct vhd_dyn_header h;
    if (size >= VHD_FOOTER_SIZE)
        vhd_footer_parse(data + size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE, "t", 0, &f, NULL);
    vhd_footer_parse(data, size, "t", 0, &f, NULL);
    if (size > VHD_FOOTER_SIZE)
        vhd_dyn_header_parse(data + VHD_FOOTER_SIZE, size - VHD_FOOTER_SIZE, "t", 512, &h,
                             NULL);

    if (size % 2 == 0 && size) {
        if (copy_cap < size) {
            free(copy);
            copy_cap = 0;
            if (!(copy = malloc(size)))
                return 0;
            copy_cap = size;
        }
        memcpy(copy, data, size);
        repair(copy, size);
        data = copy;
    }
    if (fuzz_write_input(data, size) < 0)
        return 0;
    const char *probed = NULL;
    struct p2v_err err;
    diskfmt_probe(fuzz_path, &probed, &err);
    fuzz_walk("vhd", 0);
    return 0;
}
