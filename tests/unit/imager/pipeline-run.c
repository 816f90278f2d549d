/* pipeline-run.c: run libimager's read pipeline over a whole file or device and print
 * what came out. A test driver (tests/unit/imager/test-bad-sectors.sh) and a way to
 * measure the pipeline's throughput by hand.
 *
 *   pipeline-run [--skip-bad-sectors] [--threads N] [--chunk BYTES] [--level N]
 *                [--hash sha256|blake2b|none|auto] [--retries N] [--lines] FILE
 *
 * --lines prints one line per chunk: "OFFSET LENGTH zero|raw|zstd ZLEN HASH". The summary
 * follows: bytes, chunks, zero-chunks, zstd-chunks, payload-bytes (bytes to send after
 * compression), bad-sectors (a count then the offsets), seconds, cpu-seconds (user +
 * system, all threads) and MB/s.
 * Exit: 0 done; 1 failure; 2 usage; 4 an unreadable sector (without --skip-bad-sectors,
 * or too many of them).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imager.h"

static void usage(void)
{
    fprintf(stderr, "usage: pipeline-run [--skip-bad-sectors] [--threads N] [--chunk BYTES] "
                    "[--level N] [--hash sha256|blake2b|none|auto] [--retries N] [--lines] "
                    "FILE\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"skip-bad-sectors", no_argument, NULL, 's'}, {"threads", required_argument, NULL, 't'},
        {"chunk", required_argument, NULL, 'c'},      {"level", required_argument, NULL, 'l'},
        {"hash", required_argument, NULL, 'H'},       {"retries", required_argument, NULL, 'r'},
        {"lines", no_argument, NULL, 'L'},            {NULL, 0, NULL, 0},
    };
    struct imager_pipeline_opts o = {.hash = IMAGER_HASH_SHA256, .zstd_level = 3};
    bool lines = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 's':
            o.skip_bad_sectors = true;
            break;
        case 't':
            o.threads = atoi(optarg);
            break;
        case 'c': {
            uint64_t v;
            if (p2v_parse_size(optarg, &v, NULL) < 0 || v > UINT32_MAX)
                usage();
            o.chunk_size = (uint32_t)v;
            break;
        }
        case 'l':
            o.zstd_level = atoi(optarg);
            break;
        case 'H':
            if (strcmp(optarg, "sha256") == 0)
                o.hash = IMAGER_HASH_SHA256;
            else if (strcmp(optarg, "blake2b") == 0)
                o.hash = IMAGER_HASH_BLAKE2B;
            else if (strcmp(optarg, "none") == 0)
                o.hash = 0;
            else if (strcmp(optarg, "auto") == 0)
                o.hash = imager_hash_pick();
            else
                usage();
            break;
        case 'r':
            o.retries = atoi(optarg);
            break;
        case 'L':
            lines = true;
            break;
        default:
            usage();
        }
    }
    if (optind != argc - 1)
        usage();
    p2v_log_init("pipeline-run");
    o.path = argv[optind];

    int fd = open(o.path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "pipeline-run: cannot open '%s': %s\n", o.path, strerror(errno));
        return 1;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &size) < 0) {
        fprintf(stderr, "pipeline-run: '%s': cannot read the size: %s\n", o.path,
                strerror(errno));
        return 1;
    }
    struct imager_extent whole = {0, size};
    o.fd = fd;
    o.disk_size = size;
    o.ext = &whole;
    o.count = size ? 1 : 0;

    struct p2v_err err = {0};
    double t0 = p2v_now();
    struct imager_pipeline *p = imager_pipeline_start(&o, &err);
    if (!p) {
        fprintf(stderr, "pipeline-run: %s\n", err.msg);
        return 1;
    }
    uint64_t bytes = 0, chunks = 0, zchunks = 0, zstd = 0, payload = 0;
    struct imager_chunk c;
    int r;
    while ((r = imager_pipeline_next(p, &c, &err)) == 1) {
        bytes += c.len;
        chunks++;
        zchunks += c.zero;
        zstd += c.zdata != NULL;
        payload += c.zero ? 0 : c.zdata ? c.zlen : c.len;
        if (lines) {
            char hex[65];
            for (int i = 0; i < 32; i++)
                snprintf(hex + 2 * i, 3, "%02x", c.hash[i]);
            printf("%llu %u %s %zu %s\n", (unsigned long long)c.off, c.len,
                   c.zero ? "zero" : c.zdata ? "zstd" : "raw", c.zdata ? c.zlen : 0, hex);
        }
    }
    double secs = p2v_now() - t0;
    int rc = 0;
    if (r < 0) {
        fprintf(stderr, "pipeline-run: %s\n", err.msg);
        rc = err.code == EIO ? 4 : 1;
    } else {
        size_t nbad;
        const uint64_t *bad = imager_pipeline_bad_sectors(p, &nbad);
        printf("bytes %llu\nchunks %llu\nzero-chunks %llu\nzstd-chunks %llu\n"
               "payload-bytes %llu\nbad-sectors %zu",
               (unsigned long long)bytes, (unsigned long long)chunks,
               (unsigned long long)zchunks, (unsigned long long)zstd,
               (unsigned long long)payload, nbad);
        for (size_t i = 0; i < nbad; i++)
            printf(" %llu", (unsigned long long)bad[i]);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
        printf("\nseconds %.3f\ncpu-seconds %.3f\nrate %.1f MB/s\n", secs, cpu,
               secs > 0 ? (double)bytes / secs / 1e6 : 0.0);
    }
    imager_pipeline_free(p);
    close(fd);
    return rc;
}
