/* util.c: sizes, clocks, whole-buffer I/O, zero detection and cleanup helpers. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "p2v-common.h"

int p2v_parse_uint(const char *s, unsigned long long lo, unsigned long long hi,
                   unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || !isdigit((unsigned char)s[0]) || v < lo ||
        v > hi)
        return -1;
    *out = v;
    return 0;
}

int p2v_parse_size(const char *s, uint64_t *out, struct p2v_err *err)
{
    char *end;
    if (!s || !*s || *s == '-')
        return p2v_err_set(err, EINVAL, "invalid size '%s'", s ? s : "");
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0 || !isfinite(v))
        return p2v_err_set(err, EINVAL, "invalid size '%s'", s);
    double mult = 1;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'B': mult = 1; break;
    case 'K': mult = 1024.0; break;
    case 'M': mult = 1024.0 * 1024; break;
    case 'G': mult = 1024.0 * 1024 * 1024; break;
    case 'T': mult = 1024.0 * 1024 * 1024 * 1024; break;
    case 'P': mult = 1024.0 * 1024 * 1024 * 1024 * 1024; break;
    default: return p2v_err_set(err, EINVAL, "invalid size suffix in '%s'", s);
    }
    if (*end) {
        end++;
        if (toupper((unsigned char)*end) == 'I' && toupper((unsigned char)end[1]) == 'B')
            end += 2;
        else if (toupper((unsigned char)*end) == 'B')
            end++;
    }
    if (*end)
        return p2v_err_set(err, EINVAL, "invalid size suffix in '%s'", s);
    double r = v * mult;
    if (r >= 18446744073709551616.0)
        return p2v_err_set(err, ERANGE, "size '%s' is too large", s);
    if (r != floor(r))
        return p2v_err_set(err, EINVAL, "size '%s' is not a whole number of bytes", s);
    *out = (uint64_t)r;
    return 0;
}

char *p2v_format_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1024 && u + 1 < P2V_ARRAY_SIZE(units)) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

double p2v_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double p2v_wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

ssize_t p2v_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

ssize_t p2v_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        done += (size_t)r;
    }
    return (ssize_t)done;
}

bool p2v_is_zero(const void *p, size_t len)
{
    const unsigned char *c = p;
    /* Check the head byte-wise until aligned, then compare 64-byte blocks. */
    while (len && ((uintptr_t)c & 7)) {
        if (*c)
            return false;
        c++;
        len--;
    }
    const uint64_t *w = (const uint64_t *)(const void *)c;
    while (len >= 64) {
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return false;
        w += 8;
        len -= 64;
    }
    c = (const unsigned char *)w;
    while (len--) {
        if (*c++)
            return false;
    }
    return true;
}

void p2v_cleanup_free(void *ptr)
{
    free(*(void **)ptr);
}

void p2v_cleanup_close(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}

void p2v_cleanup_fclose(FILE **fp)
{
    if (*fp)
        fclose(*fp);
}

void p2v_cleanup_buf(struct p2v_buf *b)
{
    p2v_buf_release(b);
}
