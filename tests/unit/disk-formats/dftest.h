/* dftest.h: helpers shared by the format drivers' unit tests (test-vmdk.c, test-qcow2.c,
 * test-vhd.c): a seeded xorshift generator and the fills built on it, paths in the
 * test's private folder, shell commands, small file edits, reading an image back
 * through block status + pread, the checks every image gets from our own reader, hostile
 * input that must be refused, a writer killed mid-write, and the folder set up and
 * removed around main(). Everything is static (inline, so that a test need not use all
 * of it); include it once, from the test's own .c file.
 */
#ifndef P2V_TESTS_DFTEST_H
#define P2V_TESTS_DFTEST_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "diskfmt.h"
#include "tap.h"

#define KIB 1024u
#define MIB (1024u * 1024u)

/* The test's private folder (dftest_begin makes it, dftest_end removes it). */
static char tmpdir[256];

/* ------------------------------------------------------------------ data */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static inline uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static inline void fill_random(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rnd();
}

/* Words, spaces and line breaks: data that compresses like text. The words are the
 * including test's DFTEST_WORDS (defined before the #include), so that each test keeps
 * its own stream of draws: some results depend on what rnd() draws after a fill. */
#ifndef DFTEST_WORDS
#define DFTEST_WORDS "disk", "block", "sector", "table", "header", "footer"
#endif
static inline void fill_text(uint8_t *p, size_t n)
{
    static const char *const words[] = {DFTEST_WORDS};
    size_t i = 0;
    while (i < n) {
        const char *w = words[rnd() % (sizeof words / sizeof words[0])];
        for (size_t k = 0; w[k] && i < n; k++)
            p[i++] = (uint8_t)w[k];
        if (i < n)
            p[i++] = rnd() % 8 ? ' ' : '\n';
    }
}

/* A run written by a test: where, how long and with what. */
struct seg {
    uint64_t off, len;
    int kind; /* 0 random, 1 explicit zeros, 2 text, 3 half zero half random */
};

/* Fill @ref at @off with @len bytes of @kind (as struct seg says), then write them. */
static inline int do_write(struct diskfmt *d, uint8_t *ref, uint64_t off, uint64_t len,
                           int kind, struct p2v_err *err)
{
    uint8_t *p = ref + off;
    switch (kind) {
    case 0: fill_random(p, len); break;
    case 1: memset(p, 0, len); break;
    case 2: fill_text(p, len); break;
    default:
        memset(p, 0, len / 2);
        fill_random(p + len / 2, len - len / 2);
        break;
    }
    return diskfmt_pwrite(d, p, len, off, err);
}

/* ------------------------------------------------------------------ files */

/* @name in the private folder; the last 8 results stay valid. */
static inline const char *tpath(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

/* Run a shell command; its exit status, or -1 when it did not exit. */
__attribute__((format(printf, 1, 2))) static inline int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int r = system(cmd);
    if (r == -1 || !WIFEXITED(r))
        return -1;
    return WEXITSTATUS(r);
}

static inline int write_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    int r = p2v_pwrite_full(fd, p, n, 0) < 0 ? -1 : 0;
    close(fd);
    return r;
}

/* Overwrite @n bytes at @off of an existing file. */
static inline int patch(const char *path, uint64_t off, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -1;
    int r = p2v_pwrite_full(fd, p, n, off) < 0 ? -1 : 0;
    close(fd);
    return r;
}

/* Read exactly @n bytes at @off; -1 when the file is shorter. */
static inline int get(const char *path, uint64_t off, void *p, size_t n)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    int r = p2v_pread_full(fd, p, n, off) == (ssize_t)n ? 0 : -1;
    close(fd);
    return r;
}

/* Overwrite the @n-byte integer at @off with @v, big-endian with @be, else little. */
static inline int patch_uint(const char *path, uint64_t off, uint64_t v, unsigned n, bool be)
{
    uint8_t b[8];
    for (unsigned i = 0; i < n && i < 8; i++)
        b[be ? n - 1 - i : i] = (uint8_t)(v >> (8 * i));
    return patch(path, off, b, n);
}
static inline int patch_u32(const char *path, uint64_t off, uint32_t v)
{
    return patch_uint(path, off, v, 4, false);
}
static inline int patch_u64(const char *path, uint64_t off, uint64_t v)
{
    return patch_uint(path, off, v, 8, false);
}
static inline int patch_be32(const char *path, uint64_t off, uint32_t v)
{
    return patch_uint(path, off, v, 4, true);
}
static inline int patch_be64(const char *path, uint64_t off, uint64_t v)
{
    return patch_uint(path, off, v, 8, true);
}

/* The little-endian u32 at @off, or 0 when it cannot be read. */
static inline uint32_t read_u32(const char *path, uint64_t off)
{
    uint8_t b[4] = {0};
    if (get(path, off, b, 4) < 0)
        memset(b, 0, 4);
    return p2v_get_u32le(b);
}

/* The big-endian u64 at @off, or 0 when it cannot be read. */
static inline uint64_t read_be64(const char *path, uint64_t off)
{
    uint8_t b[8] = {0};
    if (get(path, off, b, 8) < 0)
        memset(b, 0, 8);
    return p2v_get_u64be(b);
}

static inline uint64_t fsize(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static inline int copy_file(const char *from, const char *to)
{
    return sh("cp '%s' '%s'", from, to);
}

/* ------------------------------------------------------------------ our reader */

/* Read the whole image through block status + pread and compare with @ref (@n bytes;
 * past it, zeros). Counts the bytes reported as zero in *zero_bytes (when not NULL). */
static inline int read_back(struct diskfmt *d, const uint8_t *ref, uint64_t n,
                            uint64_t *zero_bytes, char *why, size_t wl)
{
    struct p2v_err err = {0};
    uint64_t size = diskfmt_size(d);
    uint8_t *buf = malloc(4 * MIB);
    int r = -1;
    if (zero_bytes)
        *zero_bytes = 0;
    if (size < n) {
        snprintf(why, wl, "size %llu < %llu", (unsigned long long)size,
                 (unsigned long long)n);
        goto out;
    }
    for (uint64_t off = 0; off < size;) {
        uint64_t run;
        unsigned flags;
        uint64_t want = P2V_MIN((uint64_t)4 * MIB, size - off);
        if (diskfmt_block_status(d, off, want, &run, &flags, &err) < 0) {
            snprintf(why, wl, "block status at %llu: %s", (unsigned long long)off, err.msg);
            goto out;
        }
        if (diskfmt_pread(d, buf, run, off, &err) < 0) {
            snprintf(why, wl, "pread at %llu: %s", (unsigned long long)off, err.msg);
            goto out;
        }
        if ((flags & DISKFMT_STATUS_ZERO) && !p2v_is_zero(buf, run)) {
            snprintf(why, wl, "run at %llu says zero but is not", (unsigned long long)off);
            goto out;
        }
        if (flags & DISKFMT_STATUS_ZERO && zero_bytes)
            *zero_bytes += run;
        for (uint64_t k = 0; k < run; k++) {
            uint8_t want_b = off + k < n ? ref[off + k] : 0;
            if (buf[k] != want_b) {
                snprintf(why, wl, "byte %llu differs (%02x, want %02x)",
                         (unsigned long long)(off + k), buf[k], want_b);
                goto out;
            }
        }
        off += run;
    }
    r = 0;
out:
    free(buf);
    return r;
}

/* Probed as @fmt, opened by our reader, reads back @ref (@n bytes), our check finds no
 * errors (and, with @no_leaks, no leaks either): 4 TAP results. */
static inline void check_own_read_fmt(const char *path, const char *fmt, const uint8_t *ref,
                                      uint64_t n, const char *name, bool no_leaks)
{
    struct p2v_err err = {0};
    const char *probed = NULL;
    int pr = diskfmt_probe(path, &probed, &err);
    ok(pr == 0 && probed && strcmp(probed, fmt) == 0, "%s: probed as %s", name, fmt);
    struct diskfmt *d = diskfmt_open(path, NULL, DISKFMT_RDONLY, &err);
    if (!ok(d != NULL, "%s: our reader opens it", name)) {
        diag("  %s", err.msg);
        ok(0, "%s: reads back identical", name);
        ok(0, "%s: our check is clean", name);
        return;
    }
    char why[P2V_ERR_MSG_MAX + 128] = "";
    if (!ok(read_back(d, ref, n, NULL, why, sizeof why) == 0, "%s: reads back identical",
            name))
        diag("  %s", why);
    struct diskfmt_check res;
    int cr = diskfmt_check(d, &res, &err);
    if (!ok(cr == 0 && res.errors == 0 && (!no_leaks || res.leaks == 0),
            "%s: our check is clean", name))
        diag("  %s %s (errors %llu leaks %llu)", cr ? err.msg : "", res.first_error,
             (unsigned long long)res.errors, (unsigned long long)res.leaks);
    diskfmt_close(d, NULL);
}

/* How expect_bad_fmt looks for the file's name in the error message. */
enum dftest_name_check {
    DFTEST_NAME_IGNORE, /* not at all */
    DFTEST_NAME_NEEDED, /* the file's base name must be in it (part of the result) */
    DFTEST_NAME_NOTED,  /* a diag line when the path is not in it */
};

/* Opening @path as @fmt with @flags must fail, or reading everything must fail, with
 * @sub in the message: 1 TAP result. */
static inline void expect_bad_fmt(const char *path, const char *fmt, unsigned flags,
                                  const char *sub, const char *name,
                                  enum dftest_name_check naming)
{
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(path, fmt, flags, &err);
    bool refused = d == NULL;
    if (d) {
        uint8_t *buf = malloc(MIB);
        uint64_t size = diskfmt_size(d);
        for (uint64_t off = 0; off < size && !refused;) {
            uint64_t run;
            unsigned f;
            if (diskfmt_block_status(d, off, P2V_MIN((uint64_t)MIB, size - off), &run, &f,
                                     &err) < 0 ||
                diskfmt_pread(d, buf, run, off, &err) < 0)
                refused = true;
            else
                off += run;
        }
        free(buf);
        diskfmt_close(d, NULL);
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    bool named = naming != DFTEST_NAME_NEEDED || strstr(err.msg, base) != NULL;
    if (!ok(refused && strstr(err.msg, sub) != NULL && named, "bad input refused: %s", name))
        diag("  refused=%d message '%s', want '%s'", refused, err.msg, sub);
    else if (naming == DFTEST_NAME_NOTED && !strstr(err.msg, path))
        diag("  (message does not name the file: '%s')", err.msg);
}

/* ------------------------------------------------------------------ killed writers */

/* In a child, create @path as @fmt with @o and write text to it, 1 MiB at a time over the
 * first @span bytes (from the start again past them, with @wrap; else waiting there),
 * then kill it with SIGKILL some time after its 9th write. True when it was writing and
 * the signal killed it. */
static inline bool kill_writer(const char *path, const char *fmt,
                               const struct diskfmt_create_opts *o, uint64_t span, bool wrap)
{
    int pfd[2];
    if (pipe(pfd) < 0)
        return false;
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        struct p2v_err err = {0};
        struct diskfmt *d = diskfmt_create(path, fmt, o, &err);
        uint8_t *buf = malloc(MIB);
        if (!d || !buf)
            _exit(1);
        for (uint64_t off = 0, i = 0; wrap || off < span; i++) {
            fill_text(buf, MIB);
            if (diskfmt_pwrite(d, buf, MIB, off, &err) < 0)
                _exit(2);
            if (i == 8 && write(pfd[1], "x", 1) != 1)
                _exit(3);
            off = wrap ? (off + MIB) % span : off + MIB;
        }
        for (;;)
            pause();
    }
    close(pfd[1]);
    char c;
    bool started = read(pfd[0], &c, 1) == 1;
    close(pfd[0]);
    usleep(20000);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    return started && WIFSIGNALED(status);
}

/* ------------------------------------------------------------------ main */

/* Skip all unless qemu-img is there; make the private folder TMPDIR/@name.XXXXXX. */
static inline void dftest_begin(const char *name)
{
    if (sh("qemu-img --version >/dev/null 2>&1") != 0)
        skip_all("qemu-img is missing (apt-get install qemu-utils)");
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/%s.XXXXXX", base, name);
    if (!mkdtemp(tmpdir))
        skip_all("cannot create a temporary folder");
}

/* Remove the private folder; main's exit status. */
static inline int dftest_end(void)
{
    sh("rm -rf '%s'", tmpdir);
    return exit_status();
}

#endif
