/* fuzz-diskfmt.h: what the format drivers' libFuzzer harnesses (fuzz-vmdk.c,
 * fuzz-qcow2.c, fuzz-vhd.c, fuzz-vhdx.c) share: a private folder under /dev/shm with the
 * input file in it, writing an input there, and the walk of an image through diskfmt
 * (block status over the whole disk, pread of the data runs capped so large virtual
 * sizes stay fast, the last byte, check and info, close). Included by a relative name
 * ("fuzz-diskfmt.h", found beside the harness), as run-fuzzers adds no -I for this
 * folder; all static, for one harness per program.
 */
#ifndef P2V_FUZZ_DISKFMT_H
#define P2V_FUZZ_DISKFMT_H

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

/* Bytes read per input at most, and block status calls at most: keeps each run short. */
#define FUZZ_READ_MAX (8u << 20)
#define FUZZ_STATUS_CALLS_MAX 4096

/* The private folder and the input file in it (fuzz_setup names them). */
static char fuzz_dir[128], fuzz_path[160];

static void fuzz_cleanup(void)
{
    unlink(fuzz_path);
    rmdir(fuzz_dir); /* fails, harmlessly, when the harness left other files there */
}

/* Make the folder /dev/shm/fuzz-@name-PID; the input will be input.@ext in it. */
static void fuzz_setup(const char *name, const char *ext)
{
    snprintf(fuzz_dir, sizeof fuzz_dir, "/dev/shm/fuzz-%s-%d", name, (int)getpid());
    mkdir(fuzz_dir, 0700);
    snprintf(fuzz_path, sizeof fuzz_path, "%s/input.%s", fuzz_dir, ext);
    atexit(fuzz_cleanup);
}

/* Make the input file hold @size bytes of @data. Overwrite, then cut: cheaper than
 * freeing and refilling the pages of a large file at every run. */
static int fuzz_write_input(const uint8_t *data, size_t size)
{
    int fd = open(fuzz_path, O_WRONLY | O_CREAT, 0600);
    if (fd < 0)
        return -1;
    int r = (size && pwrite(fd, data, size, 0) != (ssize_t)size) ||
                    ftruncate(fd, (off_t)size)
                ? -1
                : 0;
    close(fd);
    return r;
}

/* Open the input file as @format with @flags and walk it (see the top). */
static void fuzz_walk(const char *format, unsigned flags)
{
    struct p2v_err err;
    struct diskfmt *d = diskfmt_open(fuzz_path, format, flags, &err);
    if (!d)
        return;
    uint64_t disk = diskfmt_size(d), budget = FUZZ_READ_MAX;
    uint8_t *buf = malloc(disk < (1u << 20) ? (size_t)disk + 1 : 1u << 20);
    for (uint64_t off = 0, calls = 0; buf && off < disk && calls < FUZZ_STATUS_CALLS_MAX;
         calls++) {
        uint64_t run;
        unsigned f;
        if (diskfmt_block_status(d, off, disk - off, &run, &f, &err) < 0)
            break;
        if (!(f & DISKFMT_STATUS_ZERO) && budget > 0) {
            uint64_t n = run < (1u << 20) ? run : (1u << 20);
            n = n < budget ? n : budget;
            if (diskfmt_pread(d, buf, n, off, &err) < 0)
                break;
            budget -= n;
        }
        off += run;
    }
    /* the last byte too: the tail grain, cluster or block is the one most often special */
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

#endif
