/* fuzz-bootparse.c: libFuzzer harness of the boot configuration parsers (vmm/bootparse.c).
 * The first byte picks the parser (even: grub.cfg, odd: extlinux.conf); the rest is the
 * configuration text. A parsed entry must have a kernel and a command line.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Ivmm \
 * tests/fuzz/fuzz-bootparse.c vmm/bootparse.c common/\*.c (see run-fuzzers) */
// fuzz-sources: vmm/bootparse.c
#include <stdlib.h>

#include "../../vmm/vmm-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vmm_bootentry e = {0};
    struct p2v_err err;
    if (size < 1)
        return 0;
    const char *text = (const char *)data + 1;
    int r = data[0] & 1 ? vmm_extlinux_parse(text, size - 1, &e, &err)
                        : vmm_grub_parse(text, size - 1, &e, &err);
    if (r == 0 && (!e.kernel || !e.cmdline))
        abort();
    vmm_bootentry_release(&e);
    return 0;
}
