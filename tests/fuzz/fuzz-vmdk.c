/* fuzz-vmdk.c: libFuzzer harness of the VMDK driver (disk-formats/vmdk*.c). Each input is
 * written as a file into a private folder under /dev/shm (beside a small fixed extent
 * file "flat.bin" that descriptors may name), opened read-only as "vmdk" (allowing an
 * unclean image, to reach further), then walked: block status over the whole disk, pread
 * of the data runs (capped so large virtual sizes stay fast), check and info, close.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Idisk-formats \
 * tests/fuzz/fuzz-vmdk.c common/\*.c disk-formats/\*.c ... / */
#include "fuzz-diskfmt.h"

static char flat[200];

static void remove_flat(void)
{
    unlink(flat);
}

/* A small fixed extent file "flat.bin" beside the input, that descriptors may name. */
static void setup(void)
{
    fuzz_setup("vmdk", "vmdk");
    snprintf(flat, sizeof flat, "%s/flat.bin", fuzz_dir);
    atexit(remove_flat); /* before fuzz_setup's clean-up, which removes the folder */
    int fd = open(flat, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
        static uint8_t block[65536];
        for (size_t i = 0; i < sizeof block; i++)
            block[i] = (uint8_t)(i * 7);
        if (write(fd, block, sizeof block) < 0)
            abort();
        close(fd);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (fuzz_write_input(data, size) < 0)
        return 0;
    fuzz_walk("vmdk", DISKFMT_ALLOW_DIRTY);
    return 0;
}
