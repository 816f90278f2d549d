/* fuzz-ntfs.c: libFuzzer harness of the NTFS $Bitmap planner (imager/ntfs.c). Each input
 * is the first bytes of an NTFS partition of FUZZ_NTFS_PART bytes; reads past the input
 * give zeros, as the unwritten part of a fresh volume would. Every range the planner adds
 * must be non-empty and inside the partition, else the harness aborts.
 * Seeds (seeds-ntfs.sh): volumes made by mkntfs, compacted so that the boot sector, the
 * first MFT records and $Bitmap sit in the first few KiB where mutations reach them, and
 * one volume's real first 560 KiB.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Iimager \
 * tests/fuzz/fuzz-ntfs.c common/\*.c imager/ntfs.c (see run-fuzzers) */
// fuzz-sources: imager/ntfs.c
#include <stdlib.h>
#include <string.h>

#include "imager-int.h"

#define FUZZ_NTFS_PART (8u << 20)

struct input {
    const uint8_t *data;
    size_t size;
};

static int read_input(void *opaque, void *buf, size_t len, uint64_t off)
{
    const struct input *in = opaque;
    if (!p2v_range_ok(off, len, FUZZ_NTFS_PART))
        abort(); /* the planner must stay inside the partition it was given */
    size_t have = 0;
    if (off < in->size)
        have = (size_t)P2V_MIN((uint64_t)len, in->size - off);
    if (have)
        memcpy(buf, in->data + off, have);
    memset((uint8_t *)buf + have, 0, len - have);
    return 0;
}

static int check_range(void *opaque, uint64_t off, uint64_t len)
{
    uint64_t *total = opaque;
    if (len == 0 || !p2v_range_ok(off, len, FUZZ_NTFS_PART))
        abort();
    *total += len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = {data, size};
    struct p2v_err err;
    uint64_t total = 0;
    imager_ntfs_used(read_input, &in, FUZZ_NTFS_PART, check_range, &total, &err);
    return 0;
}
