/* driver-inject private: the report's structure, shared by the injector (inject.c) that
 * fills it and report.c that prints it. */
#ifndef P2V_DI_REPORT_H
#define P2V_DI_REPORT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "driverinject.h"

/* A NULL-terminated, growable array of owned strings. */
struct di_strv {
    char **v;
    size_t n;
};

int di_strv_push(struct di_strv *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool di_strv_has(const struct di_strv *v, const char *s);
void di_strv_free(struct di_strv *v);

struct di_change {
    char *kind;   /* device-name, initramfs, initramfs-config, remove-file, disable-service */
    char *path;
    unsigned line; /* 0: not a line change */
    char *before, *after, *detail;
    char *method;
};

struct di_kernel {
    char *version, *vmlinuz, *initrd;
    char *method;  /* generic-append, initramfs-tools, dracut, mkinitcpio */
    char *status;  /* present, added, would-add, ... */
    bool marker;   /* our appended archive found */
    struct di_strv wanted, added, builtin, unavailable;
};

struct di_report {
    char *disk, *format;
    enum di_accel accel;
    char *accel_why;
    bool dry_run, applied;
    char *os_type, *distro, *product, *hostname, *root;
    int major, minor;
    struct di_strv mountpoints; /* path, device, path, device, ... */
    char *bootloader;
    struct di_strv bootloader_configs;
    char *initramfs_tool;
    struct di_kernel *kernels;
    size_t n_kernels;
    struct di_change *changes;
    size_t n_changes;
    struct di_strv warnings;
    double seconds;
};

struct di_change *di_report_add_change(struct di_report *r, const char *kind, const char *path,
                                       const char *method);

#endif /* P2V_DI_REPORT_H */
