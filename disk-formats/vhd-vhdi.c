/* vhd-vhdi.c: reading VHD and VHDX data through libvhdi, once the driver has validated
 * the file's structures itself (libvhdi is not hardened against hostile input: it
 * trusts the tables it reads). libvhdi opens files by name; we name our own validated
 * descriptor through /proc/self/fd, so that a file renamed or replaced after our checks
 * is not the one libvhdi reads. libvhdi's errors come back as one line: its backtrace,
 * innermost cause last. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <libvhdi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vhd.h"

struct vhd_vhdi {
    libvhdi_file_t *file;
};

/* libvhdi's error as one line (its backtrace, one frame a line, joined with "; "),
 * then freed. */
static void vhdi_message(libvhdi_error_t **e, char *buf, size_t len)
{
    char raw[1024];
    size_t n = 0;
    if (!e || !*e || libvhdi_error_backtrace_sprint(*e, raw, sizeof raw) < 0)
        snprintf(raw, sizeof raw, "unknown libvhdi error");
    if (e && *e)
        libvhdi_error_free(e);
    for (const char *p = raw; *p && n + 3 < len; p++) {
        if (*p == '\r')
            continue;
        if (*p == '\n') {
            if (p[1]) {
                buf[n++] = ';';
                buf[n++] = ' ';
            }
            continue;
        }
        buf[n++] = *p;
    }
    buf[n] = '\0';
}

int vhd_vhdi_open(int fd, const char *path, uint64_t expect_size, struct vhd_vhdi **out,
                  struct p2v_err *err)
{
    char fdpath[64], msg[768];
    libvhdi_error_t *e = NULL;
    struct vhd_vhdi *v = calloc(1, sizeof *v);
    if (!v)
        return p2v_err_set(err, ENOMEM, "out of memory");
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
    /* without /proc, the name is the best we have: the checks were made moments ago */
    const char *name = access(fdpath, R_OK) == 0 ? fdpath : path;
    if (libvhdi_file_initialize(&v->file, &e) != 1) {
        vhdi_message(&e, msg, sizeof msg);
        free(v);
        return p2v_err_set(err, ENOMEM, "'%s': cannot start libvhdi: %s", path, msg);
    }
    if (libvhdi_file_open(v->file, name, LIBVHDI_OPEN_READ, &e) != 1) {
        vhdi_message(&e, msg, sizeof msg);
        libvhdi_file_free(&v->file, NULL);
        free(v);
        return p2v_err_set(err, EINVAL, "'%s': libvhdi cannot open it: %s", path, msg);
    }
    size64_t media = 0;
    if (libvhdi_file_get_media_size(v->file, &media, &e) != 1) {
        vhdi_message(&e, msg, sizeof msg);
        vhd_vhdi_close(v);
        return p2v_err_set(err, EINVAL, "'%s': libvhdi cannot tell its size: %s", path, msg);
    }
    /* libvhdi and our checks must have read the same structures */
    if ((uint64_t)media != expect_size) {
        vhd_vhdi_close(v);
        return p2v_err_set(err, EINVAL, "'%s': libvhdi sees a disk of %llu bytes where the "
                           "metadata says %llu", path, (unsigned long long)media,
                           (unsigned long long)expect_size);
    }
    *out = v;
    return 0;
}

int vhd_vhdi_read(struct vhd_vhdi *v, void *buf, size_t len, uint64_t off,
                  const char *path, struct p2v_err *err)
{
    char msg[768];
    libvhdi_error_t *e = NULL;
    if (off > INT64_MAX)
        return p2v_err_set(err, EINVAL, "'%s': offset %llu out of range", path,
                           (unsigned long long)off);
    ssize_t n = libvhdi_file_read_buffer_at_offset(v->file, buf, len, (off64_t)off, &e);
    if (n < 0) {
        vhdi_message(&e, msg, sizeof msg);
        return p2v_err_set(err, EIO, "'%s': read error at offset %llu (libvhdi: %s)", path,
                           (unsigned long long)off, msg);
    }
    if ((size_t)n != len)
        return p2v_err_set(err, EIO, "'%s': libvhdi read %zd of %zu bytes at offset %llu",
                           path, n, len, (unsigned long long)off);
    return 0;
}

void vhd_vhdi_close(struct vhd_vhdi *v)
{
    if (!v)
        return;
    libvhdi_file_close(v->file, NULL);
    libvhdi_file_free(&v->file, NULL);
    free(v);
}
