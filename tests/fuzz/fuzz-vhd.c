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
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfmt.h"
#include "vhd.h"

/* Bytes read per input at most, and block status calls at most: keeps each run short. */
#define FUZZ_READ_MAX (8u << 20)
#define FUZZ_STATUS_CALLS_MAX 4096

static char dir[128], path[160];

static void cleanup(void)
{
    unlink(path);
    rmdir(dir);
}
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

static void walk(const char *format)
{
    struct p2v_err err;
    struct diskfmt *d = diskfmt_open(path, format, 0, &err);
    if (!d)
        return;
    uint64_t disk = diskfmt_size(d), budget = FUZZ_READ_MAX;
    uint8_t *buf = malloc(disk < (1u << 20) ? (size_t)disk + 1 : 1u << 20);
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
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        snprintf(dir, sizeof dir, "/dev/shm/fuzz-vhd-%d", (int)getpid());
        mkdir(dir, 0700);
        snprintf(path, sizeof path, "%s/input.vhd", dir);
        atexit(cleanup);
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
    /* overwrite, then cut: cheaper than freeing and refilling the pages of a large
     * file at every run */
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    if (fd < 0)
        return 0;
    if ((size && pwrite(fd, data, size, 0) != (ssize_t)size) || ftruncate(fd, (off_t)size)) {
        close(fd);
        return 0;
    }
    close(fd);
    const char *probed = NULL;
    struct p2v_err err;
    diskfmt_probe(path, &probed, &err);
    walk("vhd");
    return 0;
}
