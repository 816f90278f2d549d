/* driver-inject private header: the pure functions (no libguestfs, no I/O) that the
 * injector is built from, so that each is unit-tested on its own:
 *  - device names (/dev/sdXN, /dev/hdXN, /dev/cciss/cXdYpZ) and the rewriter of
 *    configuration text (fstab, crypttab, grub.cfg, /etc/default/grub, menu.lst,
 *    extlinux.conf, initramfs-tools resume);
 *  - the newc cpio builder, the initrd reader (concatenated segments: plain cpio, gzip,
 *    zstd) and the detection of our appended archive (its marker);
 *  - modules.dep parsing and dependency closure, modules.builtin look-ups;
 *  - the policy that refuses guests we cannot convert.
 */
#ifndef P2V_DI_INT_H
#define P2V_DI_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "driverinject.h"
#include "p2v-common.h"

/* ---------------------------------------------------------------- device names */

/* A guest block device name that changes on virtio: disk index (sda, hda, cciss c0d0 = 0)
 * and partition (0: the whole disk). */
struct di_devname {
    unsigned disk;
    unsigned part;
};

/* Parse exactly @len bytes at @s as /dev/sdX[N], /dev/hdX[N] or /dev/cciss/cXdY[pZ].
 * 0 on success, -1 when it is anything else (then *out is untouched). */
int di_devname_parse(const char *s, size_t len, struct di_devname *out);
/* The virtio name of @d: "/dev/vdb2". */
void di_devname_virtio(const struct di_devname *d, char *buf, size_t len);

/* The replacement for guest device @dev ("UUID=...", "/dev/vda1") or NULL: leave it. */
typedef const char *(*di_dev_lookup_fn)(void *opaque, const char *dev);

enum di_conf_kind {
    DI_CONF_FSTAB,         /* first field */
    DI_CONF_CRYPTTAB,      /* second field */
    DI_CONF_GRUB_CFG,      /* root= / resume= on linux, linux16, linuxefi, kernel lines */
    DI_CONF_DEFAULT_GRUB,  /* root= / resume= in GRUB_CMDLINE_LINUX[_DEFAULT]= */
    DI_CONF_MENU_LST,      /* root= / resume= on kernel lines */
    DI_CONF_EXTLINUX,      /* root= / resume= on APPEND lines */
    DI_CONF_RESUME,        /* RESUME= (initramfs-tools conf.d/resume) */
};

struct di_line_change {
    unsigned line;  /* 1-based */
    char *before;   /* the line without its newline */
    char *after;
};

struct di_rewrite {
    char *text; /* the new text (NUL-terminated; len bytes) */
    size_t len;
    struct di_line_change *changes;
    size_t n_changes;
};

/* Rewrite the device names of @text (a file of @kind) through @lookup. Comments, spacing
 * and every other line stay byte for byte. *out is set on success (release it with
 * di_rewrite_release); n_changes 0 means the text is unchanged. */
int di_rewrite_devices(enum di_conf_kind kind, const char *text, size_t len,
                       di_dev_lookup_fn lookup, void *opaque, struct di_rewrite *out,
                       struct p2v_err *err);
void di_rewrite_release(struct di_rewrite *r);

/* ---------------------------------------------------------------- cpio (newc) */

/* Caps on what we decompress and parse from a guest's initrd (a hostile guest must not
 * make us allocate without bound): real initramfs images are tens of MiB. */
#define DI_INITRD_MAX ((size_t)1 << 30)      /* 1 GiB decompressed, all segments */
#define DI_CPIO_NAME_MAX 4096                /* PATH_MAX */
#define DI_CPIO_ENTRIES_MAX 1000000

struct di_cpio_file {
    const char *name;  /* without a leading "/" */
    uint32_t mode;     /* S_IFREG / S_IFDIR / S_IFLNK | permissions */
    const void *data;  /* file contents; a symlink's target */
    size_t len;
};

/* Append a newc archive of @files (in order, inode numbers from 1, owner 0:0, @mtime)
 * and its trailer to @out. Every header and body is padded to 4 bytes. */
int di_cpio_build(const struct di_cpio_file *files, size_t n, uint32_t mtime,
                  struct p2v_buf *out, struct p2v_err *err);

struct di_cpio_entry {
    const char *name;     /* not NUL-terminated: namelen bytes, leading "./" or "/" kept */
    size_t namelen;
    uint32_t mode;
    const uint8_t *data;  /* borrowed from the archive */
    size_t len;
};

/* Called for each entry (not the trailer); a non-zero return stops the walk with it. */
typedef int (*di_cpio_cb)(void *opaque, const struct di_cpio_entry *e);

/* Parse one newc archive at the start of @p (to its trailer); *consumed is its length. */
int di_cpio_parse(const uint8_t *p, size_t len, size_t *consumed, di_cpio_cb cb,
                  void *opaque, struct p2v_err *err);

/* Walk every entry of an initrd: concatenated segments, each a plain newc archive, a gzip
 * member or a zstd frame holding one, separated by zero padding (as the kernel reads it:
 * init/initramfs.c). Other compressions fail with a message naming them. */
int di_initrd_walk(const uint8_t *p, size_t len, di_cpio_cb cb, void *opaque,
                   struct p2v_err *err);

/* The name of the marker file our appended archive ends with (before its trailer). */
#define DI_MARKER_NAME "p2vkit-inject.stamp"
/* How many bytes from the end of an initrd di_initrd_has_marker needs. */
#define DI_MARKER_TAIL 1024

/* True when the last bytes of an initrd (@tail, @len of them) end with our archive: a
 * newc header naming DI_MARKER_NAME followed by the trailer. @tail must start at a
 * 4-byte aligned offset of the initrd (our archive starts aligned, as the kernel needs). */
bool di_initrd_has_marker(const uint8_t *tail, size_t len);

/* ---------------------------------------------------------------- modules */

/* A module's name from a path or file name: basename, .ko[.xz|.zst|.gz] dropped, '-' as
 * '_'. */
void di_modname(const char *path, char *buf, size_t len);

struct di_moddep;

/* Parse a modules.dep text ("path: dep dep ...", paths relative to /lib/modules/KVER). */
int di_moddep_parse(const char *text, size_t len, struct di_moddep **out,
                    struct p2v_err *err);
void di_moddep_free(struct di_moddep *m);
/* The path of module @name, or NULL. */
const char *di_moddep_path(const struct di_moddep *m, const char *name);

/* The closure of @names (module names) in load order: every module after the modules
 * it depends on, each once. Names not in modules.dep are skipped (the caller checks them
 * against modules.builtin). *paths is a NULL-terminated array of borrowed strings (free
 * the array only). Fails on a dependency cycle or depth past the cap. */
int di_moddep_closure(const struct di_moddep *m, const char *const *names, size_t n,
                      const char ***paths, size_t *n_paths, struct p2v_err *err);

/* True when modules.builtin (@text) lists module @name. */
bool di_modbuiltin_has(const char *text, size_t len, const char *name);

/* A module list, one name a line (/etc/initramfs-tools/modules, an initrd's
 * /conf/modules, modules-load.d): copy @text to @out and add each of @names whose name is
 * not the first word of a line yet, one a line, after @header (a comment line; NULL:
 * none) when any is added. A missing final newline is supplied first. Returns how many
 * names were added (0: @out holds @text unchanged), -1 when out of memory. */
int di_modlist_merge(const char *text, size_t len, const char *const *names, size_t n,
                     const char *header, struct p2v_buf *out);

/* ---------------------------------------------------------------- policy */

/* Whether we can convert a guest that inspection calls @type / @distro: DI_OK,
 * DI_WINDOWS or DI_UNSUPPORTED_OS (with @why filled). */
enum di_status di_os_policy(const char *type, const char *distro, char *why, size_t len);

#endif /* P2V_DI_INT_H */
