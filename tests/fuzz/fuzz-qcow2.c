/* fuzz-qcow2.c: libFuzzer harness of the qcow2 driver (disk-formats/qcow2*.c). Each input
 * is written as a file into a private folder under /dev/shm, opened read-only as "qcow2"
 * (allowing a dirty image, to reach further), then walked: block status over the whole
 * disk, pread of the data runs (capped so large virtual sizes stay fast), the last byte,
 * check and info, close. The header parser also runs on the raw input on its own.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Idisk-formats \
 * tests/fuzz/fuzz-qcow2.c common/\*.c disk-formats/\*.c ... / */
#include "fuzz-diskfmt.h"
#include "qcow2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        fuzz_setup("qcow2", "qcow2");
        ready = 1;
    }
    struct p2v_err err;
    struct qcow2_header h;
    if (qcow2_header_parse(data, size, "input", &h, &err) == 0) {
        struct qcow2_layout l;
        qcow2_layout_check(&h, size, "input", &l, &err);
    }
    if (fuzz_write_input(data, size) < 0)
        return 0;
    fuzz_walk("qcow2", DISKFMT_ALLOW_DIRTY);
    return 0;
}
