/* fuzz-qcow2.c: libFuzzer harness of the qcow2 driver (disk-formats/qcow2*.c). Each input
 * is written as a file into a private folder under /dev/shm, opened read-only as "qcow2"
 * (allowing a dirty image, to reach further), then walked: block status over the whole
 * disk, pread of the data runs (capped so large virtual sizes stay fast), the last byte,
 * check and info, close. The header parser also runs on the raw input on its own.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Idisk-formats \
 * tests/fuzz/fuzz-qcow2.c common/\*.c disk-formats/\*.c ... / */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* the build defines it too */
#endif
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfmt.h"
#include "qcow2.h"

/* Bytes read per input at most, and block status calls at most: keeps each run short. */
#define FUZZ_READ_MAX (8u << 20)
#define FUZZ_STATUS_CALLS_MAX 4096

static char dir[128], path[160];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/dev/shm/fuzz-qcow2-%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/input.qcow2", dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    struct p2v_err err;
    struct qcow2_header h;
    if (qcow2_header_parse(data, size, "input", &h, &err) == 0) {
        struct qcow2_layout l;
        qcow2_layout_check(&h, size, "input", &l, &err);
    }

    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    close(fd);

    struct diskfmt *d = diskfmt_open(path, "qcow2", DISKFMT_ALLOW_DIRTY, &err);
    if (!d)
        return 0;
    uint64_t disk = diskfmt_size(d), budget = FUZZ_READ_MAX;
    uint8_t *buf = malloc(1u << 20);
    for (uint64_t off = 0, calls = 0; buf && off < disk && calls < FUZZ_STATUS_CALLS_MAX;
         calls++) {
        uint64_t run;
        unsigned flags;
        if (diskfmt_block_status(d, off, disk - off, &run, &flags, &err) < 0)
            break;
        if (!(flags & DISKFMT_STATUS_ZERO) && budget > 0) {
            uint64_t n = run < (1u << 20) ? run : (1u << 20);
            n = n < budget ? n : budget;
            if (diskfmt_pread(d, buf, n, off, &err) < 0)
                break;
            budget -= n;
        }
        off += run;
    }
    /* the last byte too: the tail cluster is the one most often special */
    if (buf && disk)
        diskfmt_pread(d, buf, 1, disk - 1, &err);
    free(buf);
    struct diskfmt_check res;
    diskfmt_check(d, &res, &err);
    struct p2v_buf out = P2V_BUF_INIT;
    struct p2v_json j;
    p2v_json_init(&j, &out, false);
    p2v_json_object_begin(&j);
    diskfmt_info(d, &j, &err);
    p2v_json_object_end(&j);
    p2v_buf_release(&out);
    diskfmt_close(d, NULL);
    return 0;
}
