/* di_inject(): the libguestfs side of driver-inject. One appliance launch per run:
 *
 *   launch (TCG where KVM is missing or a slow software layer) → inspect → mount →
 *   plan (read only: every file read, every new content computed) → apply (each file
 *   written to a temporary name and renamed over; initrds backed up before a guest tool
 *   rebuilds them) → verify (each rebuilt initrd is read back and must now hold the
 *   modules) → on any failure, undo what was applied, in reverse.
 *
 * A dry run adds the drive read-only and stops after planning.
 */
#include <errno.h>
#include <fcntl.h>
#include <guestfs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "di-int.h"
#include "di-report.h"
#include "diskfmt.h"

/* The drivers a guest needs on a KVM machine with virtio devices (the disk on
 * virtio-blk or virtio-scsi, the NIC on virtio-net, the console on virtio-serial). */
static const char *const wanted_modules[] = {
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "virtio_console",
};

/* RAID / multipath drivers that tie a boot to hardware the VM will not have. */
static const char *const hw_raid_modules[] = {
    "cciss", "hpsa", "megaraid", "megaraid_sas", "mpt3sas", "aacraid", "smartpqi", "dm_multipath",
};

enum action_kind { A_WRITE, A_REMOVE, A_UPLOAD, A_RUN };

struct action {
    enum action_kind kind;
    char *path;      /* guest path (A_RUN: a label) */
    char *data;      /* A_WRITE: new content; A_UPLOAD: host file; A_RUN: shell command */
    size_t len;
    /* undo */
    bool orig_exists, orig_link;
    char *orig;      /* content, or a symlink's target */
    size_t orig_len;
    struct di_strv backups; /* A_RUN: initrds copied aside before the tool runs */
    bool done;
};

struct inj {
    guestfs_h *g;
    const struct di_options *o;
    struct di_report *r;
    struct p2v_err *err;
    struct action *acts;
    size_t n_acts;
    char **devices, **partitions;
    struct di_strv cache; /* name, replacement, name, replacement ... */
    char tmpdir[64];
    unsigned tmpn;
};

/* ---------------------------------------------------------------- helpers */

static int gfail(struct inj *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int gfail(struct inj *in, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const char *e = guestfs_last_error(in->g);
    return p2v_err_set(in->err, EIO, "%s: %s", what, e ? e : "libguestfs error");
}

static void free_strings(char **v)
{
    if (!v)
        return;
    for (size_t i = 0; v[i]; i++)
        free(v[i]);
    free(v);
}

static bool gexists(struct inj *in, const char *path)
{
    return guestfs_exists(in->g, path) > 0;
}

static bool gis_file(struct inj *in, const char *path)
{
    return guestfs_is_file(in->g, path) > 0;
}

static void warn(struct inj *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(struct inj *in, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!di_strv_has(&in->r->warnings, buf))
        di_strv_push(&in->r->warnings, "%s", buf);
}

/* Read a guest file whole; NULL with the error set. */
static char *gread(struct inj *in, const char *path, size_t *len)
{
    char *s = guestfs_read_file(in->g, path, len);
    if (!s)
        gfail(in, "cannot read '%s' in the guest", path);
    return s;
}

/* Download a guest file to a host temporary file and read it into memory. */
static uint8_t *gread_big(struct inj *in, const char *path, size_t *len)
{
    char host[128];
    uint8_t *data = NULL;
    struct stat st;
    int fd = -1;
    snprintf(host, sizeof host, "%s/dl.%u", in->tmpdir, in->tmpn++);
    if (guestfs_download(in->g, path, host) < 0) {
        gfail(in, "cannot read '%s' in the guest", path);
        return NULL;
    }
    fd = open(host, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        p2v_err_errno(in->err, "cannot open '%s'", host);
        goto out;
    }
    if ((uint64_t)st.st_size > DI_INITRD_MAX) {
        p2v_err_set(in->err, EFBIG, "'%s' in the guest is larger than %zu bytes", path, DI_INITRD_MAX);
        goto out;
    }
    data = malloc((size_t)st.st_size + 1);
    if (!data || p2v_pread_full(fd, data, (size_t)st.st_size, 0) != st.st_size) {
        p2v_err_errno(in->err, "cannot read '%s'", host);
        free(data);
        data = NULL;
        goto out;
    }
    *len = (size_t)st.st_size;
out:
    if (fd >= 0)
        close(fd);
    unlink(host);
    return data;
}

static struct action *add_action(struct inj *in, enum action_kind kind, const char *path)
{
    struct action *na = realloc(in->acts, (in->n_acts + 1) * sizeof *na);
    if (!na)
        return NULL;
    in->acts = na;
    struct action *a = &na[in->n_acts++];
    memset(a, 0, sizeof *a);
    a->kind = kind;
    a->path = strdup(path);
    return a;
}

/* Plan writing @text to @path (whose current content, if any, is @orig). */
static int plan_write(struct inj *in, const char *path, const char *text, size_t len,
                      const char *orig, size_t orig_len, bool orig_exists)
{
    struct action *a = add_action(in, A_WRITE, path);
    if (!a || !a->path || !(a->data = malloc(len + 1)) ||
        (orig_exists && !(a->orig = malloc(orig_len + 1))))
        return p2v_err_set(in->err, ENOMEM, "out of memory");
    memcpy(a->data, text, len);
    a->len = len;
    a->orig_exists = orig_exists;
    if (orig_exists) {
        memcpy(a->orig, orig, orig_len);
        a->orig_len = orig_len;
    }
    return 0;
}

/* ---------------------------------------------------------------- accelerator */

enum di_accel di_accel_choose(enum di_accel accel, const char **why)
{
    const char *env = getenv("P2V_INJECT_ACCEL");
    if (accel == DI_ACCEL_KVM || accel == DI_ACCEL_TCG) {
        *why = "requested";
        return accel;
    }
    if (env && strcmp(env, "kvm") == 0) {
        *why = "P2V_INJECT_ACCEL=kvm";
        return DI_ACCEL_KVM;
    }
    if (env && strcmp(env, "tcg") == 0) {
        *why = "P2V_INJECT_ACCEL=tcg";
        return DI_ACCEL_TCG;
    }
    if (access("/dev/kvm", R_OK | W_OK) != 0) {
        *why = "no usable /dev/kvm";
        return DI_ACCEL_TCG;
    }
    if (access("/sys/module/kvm_pvm", F_OK) == 0) {
        *why = "kvm_pvm loaded: /dev/kvm is a slow software layer";
        return DI_ACCEL_TCG;
    }
    *why = "/dev/kvm";
    return DI_ACCEL_KVM;
}

/* ---------------------------------------------------------------- device look-up */

/* Guest name → "UUID=..." of what the appliance finds on that device, or /dev/vdXN. */
static const char *dev_lookup(void *opaque, const char *name)
{
    struct inj *in = opaque;
    struct di_devname d;
    char adev[64], vname[32];
    size_t nd = 0;

    for (size_t i = 0; i + 1 < in->cache.n; i += 2)
        if (strcmp(in->cache.v[i], name) == 0)
            return in->cache.v[i + 1][0] ? in->cache.v[i + 1] : NULL;
    if (di_devname_parse(name, strlen(name), &d) < 0)
        return NULL;
    while (in->devices[nd])
        nd++;
    const char *rep = "";
    if (d.disk >= nd) {
        warn(in, "'%s' names disk %u, which is not part of this image: left as it is", name, d.disk + 1);
    } else {
        const char *base = in->devices[d.disk];
        bool found = d.part == 0;
        size_t bl = strlen(base);
        if (d.part)
            snprintf(adev, sizeof adev, "%s%s%u", base, bl && base[bl - 1] >= '0' && base[bl - 1] <= '9' ? "p" : "", d.part);
        else
            snprintf(adev, sizeof adev, "%s", base);
        for (size_t i = 0; !found && in->partitions[i]; i++)
            found = strcmp(in->partitions[i], adev) == 0;
        if (!found) {
            warn(in, "'%s': the image has no partition %u on that disk: left as it is", name, d.part);
        } else {
            char *uuid = guestfs_vfs_uuid(in->g, adev);
            char buf[128];
            if (uuid && uuid[0]) {
                snprintf(buf, sizeof buf, "UUID=%s", uuid);
            } else {
                di_devname_virtio(&d, vname, sizeof vname);
                snprintf(buf, sizeof buf, "%s", vname);
            }
            free(uuid);
            di_strv_push(&in->cache, "%s", name);
            di_strv_push(&in->cache, "%s", buf);
            return in->cache.v[in->cache.n - 1];
        }
    }
    di_strv_push(&in->cache, "%s", name);
    di_strv_push(&in->cache, "%s", rep);
    return NULL;
}

static int plan_rewrite(struct inj *in, const char *path, enum di_conf_kind kind)
{
    size_t len;
    struct di_rewrite rw;
    int ret = -1;
    if (!gis_file(in, path))
        return 0;
    char *text = gread(in, path, &len);
    if (!text)
        return -1;
    if (di_rewrite_devices(kind, text, len, dev_lookup, in, &rw, in->err) < 0)
        goto out;
    if (rw.n_changes) {
        for (size_t i = 0; i < rw.n_changes; i++) {
            struct di_change *c = di_report_add_change(in->r, "device-name", path, "edit");
            if (!c) {
                p2v_err_set(in->err, ENOMEM, "out of memory");
                goto out_rw;
            }
            c->line = rw.changes[i].line;
            c->before = strdup(rw.changes[i].before);
            c->after = strdup(rw.changes[i].after);
        }
        if (plan_write(in, path, rw.text, rw.len, text, len, true) < 0)
            goto out_rw;
    }
    ret = 0;
out_rw:
    di_rewrite_release(&rw);
out:
    free(text);
    return ret;
}

/* ---------------------------------------------------------------- boot loader */

static int plan_bootloader(struct inj *in)
{
    static const struct {
        const char *path, *loader;
        enum di_conf_kind kind;
    } cfgs[] = {
        {"/boot/grub/grub.cfg", "grub2", DI_CONF_GRUB_CFG},
        {"/boot/grub2/grub.cfg", "grub2", DI_CONF_GRUB_CFG},
        {"/boot/grub/menu.lst", "grub-legacy", DI_CONF_MENU_LST},
        {"/boot/grub/grub.conf", "grub-legacy", DI_CONF_MENU_LST},
        {"/boot/extlinux/extlinux.conf", "extlinux", DI_CONF_EXTLINUX},
        {"/boot/extlinux.conf", "extlinux", DI_CONF_EXTLINUX},
        {"/extlinux.conf", "extlinux", DI_CONF_EXTLINUX},
        {"/boot/syslinux/syslinux.cfg", "syslinux", DI_CONF_EXTLINUX},
        {"/boot/syslinux/extlinux.conf", "extlinux", DI_CONF_EXTLINUX},
        {"/syslinux.cfg", "syslinux", DI_CONF_EXTLINUX},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(cfgs); i++) {
        if (!gis_file(in, cfgs[i].path))
            continue;
        if (!in->r->bootloader)
            in->r->bootloader = strdup(cfgs[i].loader);
        di_strv_push(&in->r->bootloader_configs, "%s", cfgs[i].path);
        if (plan_rewrite(in, cfgs[i].path, cfgs[i].kind) < 0)
            return -1;
    }
    /* UEFI: GRUB's configuration on the EFI system partition (mounted from fstab), e.g.
     * /boot/efi/EFI/debian/grub.cfg or the removable path /boot/efi/EFI/BOOT/grub.cfg */
    static const char *const esp_globs[] = {"/boot/efi/EFI/*/grub.cfg",
                                            "/boot/efi/EFI/*/grub.conf"};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(esp_globs); i++) {
        char **paths = guestfs_glob_expand(in->g, esp_globs[i]);
        for (size_t k = 0; paths && paths[k]; k++) {
            if (!gis_file(in, paths[k]))
                continue;
            bool legacy = strstr(paths[k], "grub.conf") != NULL;
            if (!in->r->bootloader)
                in->r->bootloader = strdup(legacy ? "grub-legacy" : "grub2-efi");
            di_strv_push(&in->r->bootloader_configs, "%s", paths[k]);
            if (plan_rewrite(in, paths[k], legacy ? DI_CONF_MENU_LST : DI_CONF_GRUB_CFG) < 0) {
                free_strings(paths);
                return -1;
            }
        }
        free_strings(paths);
    }
    if (!in->r->bootloader)
        warn(in, "no boot loader configuration found (grub, extlinux, syslinux): the machine may need a kernel and command line given to it");
    if (plan_rewrite(in, "/etc/default/grub", DI_CONF_DEFAULT_GRUB) < 0 ||
        plan_rewrite(in, "/etc/fstab", DI_CONF_FSTAB) < 0 ||
        plan_rewrite(in, "/etc/crypttab", DI_CONF_CRYPTTAB) < 0 ||
        plan_rewrite(in, "/etc/initramfs-tools/conf.d/resume", DI_CONF_RESUME) < 0)
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- initramfs */

/* What an initrd holds, for our purposes. */
struct initrd_scan {
    struct di_strv modules;   /* module names */
    bool has_sh, has_insmod, has_busybox;
    char busybox[DI_CPIO_NAME_MAX + 2];
    const uint8_t *init;      /* the last /init (borrowed from a plain segment, or copied) */
    uint8_t *init_copy;
    size_t init_len;
    uint32_t init_mode;
    char lib_target[256];     /* "lib" as a symlink: its target */
    struct di_strv dirs;
    char *conf_modules;       /* the last /conf/modules (initramfs-tools), NUL-terminated */
    size_t conf_modules_len;
};

static int scan_cb(void *opaque, const struct di_cpio_entry *e)
{
    struct initrd_scan *s = opaque;
    const char *n = e->name;
    size_t nl = e->namelen;
    char name[DI_CPIO_NAME_MAX];
    while (nl && (n[0] == '/' || (nl > 1 && n[0] == '.' && n[1] == '/'))) {
        size_t skip = n[0] == '/' ? 1 : 2;
        n += skip;
        nl -= skip;
    }
    if (nl == 1 && n[0] == '.')
        return 0;
    if (nl == 0 || nl >= sizeof name)
        return 0;
    memcpy(name, n, nl);
    name[nl] = 0;
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    if (strstr(base, ".ko")) {
        char m[64];
        di_modname(base, m, sizeof m);
        if (!di_strv_has(&s->modules, m) && di_strv_push(&s->modules, "%s", m) < 0)
            return -1;
    }
    if (!strcmp(name, "bin/sh") || !strcmp(name, "usr/bin/sh"))
        s->has_sh = true;
    if (!strcmp(name, "sbin/insmod") || !strcmp(name, "bin/insmod") ||
        !strcmp(name, "usr/sbin/insmod") || !strcmp(name, "usr/bin/insmod"))
        s->has_insmod = true;
    if (!strcmp(base, "busybox") && S_ISREG(e->mode)) {
        s->has_busybox = true;
        snprintf(s->busybox, sizeof s->busybox, "/%s", name);
    }
    if (!strcmp(name, "init")) {
        free(s->init_copy);
        s->init_copy = malloc(e->len ? e->len : 1);
        if (!s->init_copy)
            return -1;
        memcpy(s->init_copy, e->data, e->len);
        s->init_len = e->len;
        s->init_mode = e->mode;
        s->init = s->init_copy;
    }
    if (!strcmp(name, "conf/modules") && S_ISREG(e->mode)) {
        free(s->conf_modules);
        s->conf_modules = malloc(e->len + 1);
        if (!s->conf_modules)
            return -1;
        memcpy(s->conf_modules, e->data, e->len);
        s->conf_modules[e->len] = 0;
        s->conf_modules_len = e->len;
    }
    if (!strcmp(name, "lib") && S_ISLNK(e->mode) && e->len < sizeof s->lib_target) {
        const char *t = (const char *)e->data;
        size_t tl = e->len;
        while (tl && *t == '/') {
            t++;
            tl--;
        }
        memcpy(s->lib_target, t, tl);
        s->lib_target[tl] = 0;
    }
    if (S_ISDIR(e->mode) && !di_strv_has(&s->dirs, name))
        di_strv_push(&s->dirs, "%s", name);
    return 0;
}

static void scan_release(struct initrd_scan *s)
{
    di_strv_free(&s->modules);
    di_strv_free(&s->dirs);
    free(s->init_copy);
    free(s->conf_modules);
    memset(s, 0, sizeof *s);
}

static int scan_initrd(struct inj *in, const uint8_t *data, size_t len, struct initrd_scan *s,
                       const char *path)
{
    memset(s, 0, sizeof *s);
    if (di_initrd_walk(data, len, scan_cb, s, in->err) != 0) {
        scan_release(s);
        return p2v_err_prefix(in->err, "'%s'", path);
    }
    return 0;
}

static bool tail_marker(const uint8_t *data, size_t len)
{
    size_t start = len > DI_MARKER_TAIL ? (len - DI_MARKER_TAIL) & ~(size_t)3 : 0;
    return di_initrd_has_marker(data + start, len - start);
}

static const char *initrd_for(struct inj *in, const char *kver, char *buf, size_t len)
{
    static const char *const pats[][2] = {
        {"/boot/initrd.img-", ""}, {"/boot/initramfs-", ".img"}, {"/boot/initrd-", ".img"},
        {"/boot/initrd-", ""},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(pats); i++) {
        snprintf(buf, len, "%s%s%s", pats[i][0], kver, pats[i][1]);
        if (gis_file(in, buf))
            return buf;
    }
    return NULL;
}

/* Build the archive appended by the generic path for kernel @k. */
/* The marker file that ends each appended archive (what a later run looks for): the
 * kernel, the method (NULL: the generic wrapper) and the modules added. -1: no memory. */
static int marker_file(const struct di_kernel *k, const char *method, struct p2v_buf *stamp,
                       struct di_cpio_file *f)
{
    p2v_buf_printf(stamp, "p2vkit driver-inject\nkernel %s\n", k->version);
    if (method)
        p2v_buf_printf(stamp, "method %s\n", method);
    p2v_buf_printf(stamp, "modules");
    for (size_t i = 0; i < k->added.n; i++)
        p2v_buf_printf(stamp, " %s", k->added.v[i]);
    p2v_buf_printf(stamp, "\n");
    if (!p2v_buf_cstr(stamp))
        return -1;
    *f = (struct di_cpio_file){DI_MARKER_NAME, S_IFREG | 0644, stamp->data, stamp->len};
    return 0;
}

static int build_generic(struct inj *in, struct di_kernel *k, const struct initrd_scan *s,
                         const char *const *paths, size_t n_paths, struct p2v_buf *out)
{
    struct di_cpio_file *files = NULL;
    struct di_strv names = {0}, dirs = {0};
    char **datas = NULL;
    size_t nf = 0, cap = 2 * n_paths + 64;
    struct p2v_buf init = P2V_BUF_INIT, stamp = P2V_BUF_INIT;
    const char *libdir = s->lib_target[0] ? s->lib_target : "lib";
    char insmod[DI_CPIO_NAME_MAX + 16];
    int ret = -1;

    if (!s->has_sh || !(s->has_insmod || s->has_busybox) || !s->init) {
        return p2v_err_set(in->err, ENOTSUP,
                           "'%s' (kernel %s) was built by no known tool and lacks %s: the generic path needs /init, a shell and insmod (busybox)",
                           k->initrd, k->version,
                           !s->init ? "/init" : !s->has_sh ? "a shell (/bin/sh)" : "insmod (or busybox)");
    }
    snprintf(insmod, sizeof insmod, "%s", s->has_insmod ? "insmod" : "");
    if (!s->has_insmod)
        snprintf(insmod, sizeof insmod, "%s insmod", s->busybox);

    files = calloc(cap, sizeof *files);
    datas = calloc(cap, sizeof *datas);
    if (!files || !datas)
        goto nomem;
    p2v_buf_printf(&init, "#!/bin/sh\n"
                          "# p2vkit driver-inject: load the virtio drivers of kernel %s, then run\n"
                          "# the original /init (kept as /init.p2v-orig).\n"
                          "for m in",
                   k->version);
    for (size_t i = 0; i < n_paths; i++) {
        char dst[DI_CPIO_NAME_MAX], src[DI_CPIO_NAME_MAX];
        size_t dl;
        snprintf(src, sizeof src, "/lib/modules/%s/%s", k->version, paths[i]);
        snprintf(dst, sizeof dst, "%s/modules/%s/%s", libdir, k->version, paths[i]);
        /* parent folders that the original archive does not have */
        for (char *sl = strchr(dst, '/'); sl; sl = strchr(sl + 1, '/')) {
            *sl = 0;
            if (!di_strv_has(&s->dirs, dst) && !di_strv_has(&dirs, dst)) {
                if (di_strv_push(&dirs, "%s", dst) < 0)
                    goto nomem;
            }
            *sl = '/';
        }
        char *data = gread(in, src, &dl);
        if (!data)
            goto out;
        if (di_strv_push(&names, "%s", dst) < 0) {
            free(data);
            goto nomem;
        }
        datas[i] = data;
        files[n_paths + i] = (struct di_cpio_file){NULL, S_IFREG | 0644, data, dl};
        p2v_buf_printf(&init, " \\\n    /%s", dst);
    }
    p2v_buf_printf(&init, "; do\n    [ -e \"$m\" ] && %s \"$m\" 2>/dev/null\ndone\n"
                          "exec /init.p2v-orig \"$@\"\n",
                   insmod);
    /* folders first (parents before children: the order they were found), then modules */
    for (size_t i = 0; i < dirs.n; i++)
        files[nf++] = (struct di_cpio_file){dirs.v[i], S_IFDIR | 0755, "", 0};
    for (size_t i = 0; i < n_paths; i++) {
        files[nf] = files[n_paths + i];
        files[nf++].name = names.v[i];
    }
    files[nf++] = (struct di_cpio_file){"init.p2v-orig", s->init_mode ? s->init_mode : (S_IFREG | 0755),
                                        s->init, s->init_len};
    if (!p2v_buf_cstr(&init))
        goto nomem;
    files[nf++] = (struct di_cpio_file){"init", S_IFREG | 0755, init.data, init.len};
    if (marker_file(k, NULL, &stamp, &files[nf++]) < 0)
        goto nomem;
    /* mtime: 0, so that the same input gives the same archive */
    if (di_cpio_build(files, nf, 0, out, in->err) < 0)
        goto out;
    ret = 0;
    goto out;
nomem:
    p2v_err_set(in->err, ENOMEM, "out of memory");
out:
    for (size_t i = 0; datas && i < n_paths; i++)
        free(datas[i]);
    free(datas);
    free(files);
    di_strv_free(&names);
    di_strv_free(&dirs);
    p2v_buf_release(&init);
    p2v_buf_release(&stamp);
    return ret;
}

/* The guest's module index files copied whole into a tool-append archive, so that the
 * initrd's modprobe and udev resolve (and autoload by modalias) the added modules. */
static const char *const index_files[] = {
    "modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
    "modules.softdep", "modules.symbols", "modules.symbols.bin", "modules.builtin",
    "modules.builtin.bin", "modules.builtin.modinfo", "modules.order", "modules.devname",
};

/* Build the archive appended, in the tool's own layout, to kernel @k's initrd: the
 * missing modules (@paths, relative to /lib/modules/KVER) at their place, the guest's
 * module index, and the tool's module list: initramfs-tools' /conf/modules (the
 * initrd's own plus @names), dracut's /etc/modules-load.d/p2vkit-virtio.conf. No wrapper
 * /init: the tool's init loads them. Ends with our marker. */
static int build_tool_append(struct inj *in, struct di_kernel *k, const struct initrd_scan *s,
                             const char *tool, const char *const *paths, size_t n_paths,
                             const struct di_strv *names, struct p2v_buf *out)
{
    size_t cap = n_paths + P2V_ARRAY_SIZE(index_files), nf = 0, nd = 0;
    struct di_cpio_file *files = NULL;
    struct di_cpio_file *body = calloc(cap, sizeof *body);
    struct di_strv names_dst = {0}, dirs = {0};
    void **datas = calloc(cap, sizeof *datas);
    struct p2v_buf list = P2V_BUF_INIT, stamp = P2V_BUF_INIT;
    const char *libdir = s->lib_target[0] ? s->lib_target : "lib";
    int ret = -1;

    if (!body || !datas)
        goto nomem;
    for (size_t i = 0; i < n_paths + P2V_ARRAY_SIZE(index_files); i++) {
        char src[DI_CPIO_NAME_MAX], dst[DI_CPIO_NAME_MAX];
        size_t dl = 0;
        uint8_t *data;
        const char *rel = i < n_paths ? paths[i] : index_files[i - n_paths];
        snprintf(src, sizeof src, "/lib/modules/%s/%s", k->version, rel);
        if (i >= n_paths && !gis_file(in, src))
            continue;
        snprintf(dst, sizeof dst, "%s/modules/%s/%s", libdir, k->version, rel);
        for (char *sl = strchr(dst, '/'); sl; sl = strchr(sl + 1, '/')) {
            *sl = 0;
            if (!di_strv_has(&s->dirs, dst) && !di_strv_has(&dirs, dst) && di_strv_push(&dirs, "%s", dst) < 0)
                goto nomem;
            *sl = '/';
        }
        if (!(data = gread_big(in, src, &dl)))
            goto out;
        datas[nd] = data;
        if (di_strv_push(&names_dst, "%s", dst) < 0)
            goto nomem;
        body[nd++] = (struct di_cpio_file){NULL, S_IFREG | 0644, data, dl};
    }
    if (!strcmp(tool, "initramfs-tools")) {
        if (!di_strv_has(&s->dirs, "conf") && di_strv_push(&dirs, "conf") < 0)
            goto nomem;
        if (di_modlist_merge(s->conf_modules ? s->conf_modules : "", s->conf_modules_len,
                             (const char *const *)names->v, names->n, NULL, &list) < 0)
            goto nomem;
    } else if (!strcmp(tool, "dracut")) {
        if (!di_strv_has(&s->dirs, "etc") && di_strv_push(&dirs, "etc") < 0)
            goto nomem;
        if (!di_strv_has(&s->dirs, "etc/modules-load.d") && di_strv_push(&dirs, "etc/modules-load.d") < 0)
            goto nomem;
        p2v_buf_printf(&list, "# p2vkit driver-inject: virtio drivers for the converted machine\n");
        for (size_t i = 0; i < names->n; i++)
            p2v_buf_printf(&list, "%s\n", names->v[i]);
    }
    if (!(files = calloc(dirs.n + nd + 2, sizeof *files)))
        goto nomem;
    for (size_t i = 0; i < dirs.n; i++)
        files[nf++] = (struct di_cpio_file){dirs.v[i], S_IFDIR | 0755, "", 0};
    for (size_t i = 0; i < nd; i++) {
        files[nf] = body[i];
        files[nf++].name = names_dst.v[i];
    }
    if (list.len || !strcmp(tool, "initramfs-tools")) {
        if (!p2v_buf_cstr(&list))
            goto nomem;
        files[nf++] = (struct di_cpio_file){!strcmp(tool, "initramfs-tools") ? "conf/modules" : "etc/modules-load.d/p2vkit-virtio.conf",
                                            S_IFREG | 0644, list.data, list.len};
    }
    if (marker_file(k, k->method, &stamp, &files[nf++]) < 0)
        goto nomem;
    if (di_cpio_build(files, nf, 0, out, in->err) < 0)
        goto out;
    ret = 0;
    goto out;
nomem:
    p2v_err_set(in->err, ENOMEM, "out of memory");
out:
    for (size_t i = 0; datas && i < nd; i++)
        free(datas[i]);
    free(datas);
    free(files);
    free(body);
    di_strv_free(&names_dst);
    di_strv_free(&dirs);
    p2v_buf_release(&list);
    p2v_buf_release(&stamp);
    return ret;
}

static int write_host_file(struct inj *in, const char *host, const void *a, size_t alen,
                           const void *b, size_t blen)
{
    int fd = open(host, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return p2v_err_errno(in->err, "cannot create '%s'", host);
    if (p2v_pwrite_full(fd, a, alen, 0) < 0 || p2v_pwrite_full(fd, b, blen, alen) < 0) {
        p2v_err_errno(in->err, "cannot write '%s'", host);
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* Plan replacing kernel @k's initrd (@idata) by itself, zeros to a 4-byte boundary and
 * @arch (uploaded under a temporary name and renamed; the original kept on the host for
 * undo). @detail: the report's description of the change. */
static int plan_upload(struct inj *in, struct di_kernel *k, size_t i, const uint8_t *idata,
                       size_t ilen, const struct p2v_buf *arch, struct p2v_buf *detail)
{
    static const uint8_t zeros[4];
    size_t pad = (4 - (ilen & 3)) & 3;
    char host[128], orig_host[128];
    struct p2v_buf tailb = P2V_BUF_INIT;
    int ret = -1;
    snprintf(host, sizeof host, "%s/initrd.%zu", in->tmpdir, i);
    snprintf(orig_host, sizeof orig_host, "%s/initrd.%zu.orig", in->tmpdir, i);
    if (p2v_buf_put(&tailb, zeros, pad) < 0 || p2v_buf_put(&tailb, arch->data, arch->len) < 0 ||
        !p2v_buf_cstr(detail)) {
        p2v_err_set(in->err, ENOMEM, "out of memory");
        goto out;
    }
    if (write_host_file(in, host, idata, ilen, tailb.data, tailb.len) < 0 ||
        write_host_file(in, orig_host, idata, ilen, "", 0) < 0)
        goto out;
    struct di_change *c = di_report_add_change(in->r, "initramfs", k->initrd, k->method);
    if (!c || !(c->detail = strdup((char *)detail->data))) {
        p2v_err_set(in->err, ENOMEM, "out of memory");
        goto out;
    }
    struct action *a = add_action(in, A_UPLOAD, k->initrd);
    if (!a || !a->path || !(a->data = strdup(host)) || !(a->orig = strdup(orig_host))) {
        p2v_err_set(in->err, ENOMEM, "out of memory");
        goto out;
    }
    a->orig_exists = true;
    ret = 0;
out:
    if (ret < 0) {
        unlink(host);
        unlink(orig_host);
    }
    p2v_buf_release(&tailb);
    return ret;
}

/* Which tool builds this guest's initramfs. */
static const char *initramfs_tool(struct inj *in)
{
    if (gexists(in, "/usr/sbin/update-initramfs") || gexists(in, "/sbin/update-initramfs"))
        return "initramfs-tools";
    if (gexists(in, "/usr/bin/dracut") || gexists(in, "/usr/sbin/dracut") || gexists(in, "/sbin/dracut"))
        return "dracut";
    if (gexists(in, "/usr/bin/mkinitcpio"))
        return "mkinitcpio";
    return "none";
}

/* Per kernel: which wanted modules are built in, which must be in the initramfs (the
 * closure, as paths in load order), which are not available at all. */
static int kernel_modules(struct inj *in, struct di_kernel *k, struct di_moddep **dep,
                          const char ***paths, size_t *n_paths)
{
    char p[512];
    size_t dl = 0, bl = 0;
    char *deptext, *builtin = NULL;
    const char *want[P2V_ARRAY_SIZE(wanted_modules)];
    size_t nw = 0;

    snprintf(p, sizeof p, "/lib/modules/%s/modules.dep", k->version);
    if (!gis_file(in, p))
        return p2v_err_set(in->err, ENOENT, "kernel %s has no %s (run depmod in the guest)", k->version, p);
    if (!(deptext = gread(in, p, &dl)))
        return -1;
    snprintf(p, sizeof p, "/lib/modules/%s/modules.builtin", k->version);
    if (gis_file(in, p) && !(builtin = gread(in, p, &bl))) {
        free(deptext);
        return -1;
    }
    if (di_moddep_parse(deptext, dl, dep, in->err) < 0) {
        free(deptext);
        free(builtin);
        return p2v_err_prefix(in->err, "kernel %s", k->version);
    }
    free(deptext);
    for (size_t i = 0; i < P2V_ARRAY_SIZE(wanted_modules); i++) {
        const char *m = wanted_modules[i];
        di_strv_push(&k->wanted, "%s", m);
        if (builtin && di_modbuiltin_has(builtin, bl, m))
            di_strv_push(&k->builtin, "%s", m);
        else if (di_moddep_path(*dep, m))
            want[nw++] = m;
        else
            di_strv_push(&k->unavailable, "%s", m);
    }
    free(builtin);
    if (k->unavailable.n)
        warn(in, "kernel %s: %zu virtio module(s) neither built in nor installed (%s%s)", k->version,
             k->unavailable.n, k->unavailable.v[0], k->unavailable.n > 1 ? ", ..." : "");
    if (di_moddep_closure(*dep, want, nw, paths, n_paths, in->err) < 0) {
        di_moddep_free(*dep);
        *dep = NULL;
        return p2v_err_prefix(in->err, "kernel %s", k->version);
    }
    return 0;
}

/* Modules listed for a tool: add missing @names to @path's list (one name a line). */
static int plan_modules_file(struct inj *in, const char *path, const struct di_strv *names,
                             const char *header)
{
    size_t len = 0;
    char *text = NULL;
    bool exists = gis_file(in, path);
    struct p2v_buf nb = P2V_BUF_INIT;
    int ret = -1, added;
    if (exists && !(text = gread(in, path, &len)))
        return -1;
    added = di_modlist_merge(text ? text : "", len, (const char *const *)names->v, names->n, header, &nb);
    if (added < 0 || !p2v_buf_cstr(&nb)) {
        p2v_err_set(in->err, ENOMEM, "out of memory");
        goto out;
    }
    if (added > 0) {
        struct di_change *c = di_report_add_change(in->r, "initramfs-config", path, "edit");
        if (!c)
            goto out;
        struct p2v_buf d = P2V_BUF_INIT;
        p2v_buf_printf(&d, "add");
        /* the names added are the last lines of the new text */
        for (const char *l = (const char *)nb.data + len; l < (const char *)nb.data + nb.len;) {
            const char *e = memchr(l, '\n', (size_t)((const char *)nb.data + nb.len - l));
            size_t ll = e ? (size_t)(e - l) : (size_t)((const char *)nb.data + nb.len - l);
            if (ll && l[0] != '#')
                p2v_buf_printf(&d, " %.*s", (int)ll, l);
            l += ll + 1;
        }
        c->detail = strdup(p2v_buf_cstr(&d) ? (char *)d.data : "add modules");
        p2v_buf_release(&d);
        if (plan_write(in, path, (char *)nb.data, nb.len, text, len, exists) < 0)
            goto out;
    }
    ret = 0;
out:
    free(text);
    p2v_buf_release(&nb);
    return ret;
}

/* mkinitcpio.conf: names into MODULES=(...) or MODULES="..." */
static int plan_mkinitcpio(struct inj *in, const struct di_strv *names)
{
    const char *path = "/etc/mkinitcpio.conf";
    size_t len;
    char *text;
    struct p2v_buf nb = P2V_BUF_INIT;
    int ret = -1;
    if (!gis_file(in, path))
        return p2v_err_set(in->err, ENOENT, "mkinitcpio is installed but %s is missing", path);
    if (!(text = gread(in, path, &len)))
        return -1;
    bool done = false;
    struct p2v_buf addb = P2V_BUF_INIT;
    for (size_t pos = 0; pos < len;) {
        const char *l = text + pos, *nl = memchr(l, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - l) : len - pos;
        if (!done && ll > 9 && memcmp(l, "MODULES=", 8) == 0 && (l[8] == '(' || l[8] == '"')) {
            char close = l[8] == '(' ? ')' : '"';
            const char *end = memchr(l + 9, close, ll - 9);
            if (end) {
                p2v_buf_reset(&addb);
                for (size_t i = 0; i < names->n; i++) {
                    /* already listed? */
                    char word[80];
                    snprintf(word, sizeof word, "%s", names->v[i]);
                    bool listed = false;
                    for (const char *w = l + 9; w < end && !listed;) {
                        while (w < end && (*w == ' ' || *w == '\t'))
                            w++;
                        const char *we = w;
                        while (we < end && *we != ' ' && *we != '\t')
                            we++;
                        listed = (size_t)(we - w) == strlen(word) && memcmp(w, word, strlen(word)) == 0;
                        w = we;
                    }
                    if (!listed)
                        p2v_buf_printf(&addb, "%s%s", (end > l + 9 || addb.len) ? " " : "", word);
                }
                p2v_buf_put(&nb, l, (size_t)(end - l));
                p2v_buf_put(&nb, addb.data, addb.len);
                p2v_buf_put(&nb, end, ll - (size_t)(end - l));
                done = true;
                if (nl)
                    p2v_buf_put_u8(&nb, '\n');
                pos += ll + (nl ? 1 : 0);
                continue;
            }
        }
        p2v_buf_put(&nb, l, ll + (nl ? 1 : 0));
        pos += ll + (nl ? 1 : 0);
    }
    if (!done) {
        p2v_err_set(in->err, EINVAL, "%s has no MODULES=(...) line", path);
        goto out;
    }
    if (addb.len) {
        struct di_change *c = di_report_add_change(in->r, "initramfs-config", path, "edit");
        if (!c || !p2v_buf_cstr(&addb))
            goto out;
        c->detail = strdup((char *)addb.data);
        if (plan_write(in, path, (char *)nb.data, nb.len, text, len, true) < 0)
            goto out;
    }
    ret = 0;
out:
    free(text);
    p2v_buf_release(&nb);
    p2v_buf_release(&addb);
    return ret;
}

static int plan_kernels(struct inj *in)
{
    struct di_report *r = in->r;
    char **ls = guestfs_ls(in->g, "/lib/modules");
    const char *tool = initramfs_tool(in);
    struct di_strv tool_names = {0}; /* module names the tool must add */
    ssize_t run_i = -1; /* the A_RUN action (an index: the array moves) */
    struct di_strv rebuild_kv = {0}; /* kernels the tool rebuilds */
    size_t n_append = 0;             /* kernels whose initrd we extend instead */
    bool need_config = false;
    int ret = -1;

    r->initramfs_tool = strdup(tool);
    if (!ls)
        return p2v_err_set(in->err, ENOENT, "the guest has no /lib/modules: no kernel to fix");
    for (size_t i = 0; ls[i]; i++) {
        char vml[512], ib[512], pkgbase[256] = "";
        const char *ir = NULL;
        snprintf(vml, sizeof vml, "/boot/vmlinuz-%s", ls[i]);
        if (!gexists(in, vml)) {
            /* Arch Linux names its kernel after the package: /lib/modules/KVER/pkgbase
             * holds "linux", the kernel is /boot/vmlinuz-linux */
            size_t pl = 0;
            snprintf(ib, sizeof ib, "/lib/modules/%s/pkgbase", ls[i]);
            char *pb = gis_file(in, ib) ? guestfs_read_file(in->g, ib, &pl) : NULL;
            while (pb && pl && (pb[pl - 1] == '\n' || pb[pl - 1] == ' '))
                pl--;
            if (pb && pl && pl < sizeof pkgbase && !memchr(pb, '/', pl))
                snprintf(pkgbase, sizeof pkgbase, "%.*s", (int)pl, pb);
            free(pb);
            if (!pkgbase[0])
                continue;
            snprintf(vml, sizeof vml, "/boot/vmlinuz-%s", pkgbase);
            if (!gexists(in, vml))
                continue;
            snprintf(ib, sizeof ib, "/boot/initramfs-%s.img", pkgbase);
            ir = gis_file(in, ib) ? ib : NULL;
        }
        struct di_kernel *nk = realloc(r->kernels, (r->n_kernels + 1) * sizeof *nk);
        if (!nk)
            goto nomem;
        r->kernels = nk;
        struct di_kernel *k = &nk[r->n_kernels++];
        memset(k, 0, sizeof *k);
        k->version = strdup(ls[i]);
        k->vmlinuz = strdup(vml);
        if (!pkgbase[0])
            ir = initrd_for(in, ls[i], ib, sizeof ib);
        k->initrd = ir ? strdup(ir) : NULL;
        k->method = strdup(strcmp(tool, "none") == 0 ? "generic-append" : tool);
    }
    if (r->n_kernels == 0) {
        p2v_err_set(in->err, ENOENT, "no installed kernel found (no /lib/modules/KVER with a /boot/vmlinuz-KVER)");
        goto out;
    }
    for (size_t i = 0; i < r->n_kernels; i++) {
        struct di_kernel *k = &r->kernels[i];
        struct di_moddep *dep = NULL;
        const char **paths = NULL;
        size_t n_paths = 0, ilen = 0;
        uint8_t *idata = NULL;
        struct initrd_scan s;
        struct di_strv missing = {0};
        bool scanned = false;
        int rc = -1;

        if (kernel_modules(in, k, &dep, &paths, &n_paths) < 0)
            goto out;
        if (!k->initrd) {
            if (!strcmp(tool, "none")) {
                p2v_err_set(in->err, ENOENT, "kernel %s has no initrd in /boot and no initramfs tool is installed", k->version);
                goto k_out;
            }
            warn(in, "kernel %s has no initrd in /boot; %s will not create one", k->version, tool);
            k->status = strdup("no-initrd");
            rc = 0;
            goto k_out;
        }
        if (!(idata = gread_big(in, k->initrd, &ilen)))
            goto k_out;
        k->marker = tail_marker(idata, ilen);
        if (scan_initrd(in, idata, ilen, &s, k->initrd) == 0) {
            scanned = true;
        } else if (!strcmp(tool, "none")) {
            goto k_out;
        } else {
            warn(in, "%s (kernel %s): %s; it is rebuilt without checking what it holds", k->initrd,
                 k->version, in->err->msg);
            p2v_err_clear(in->err);
        }
        for (size_t m = 0; m < n_paths; m++) {
            char name[64];
            di_modname(paths[m], name, sizeof name);
            if (!scanned || !di_strv_has(&s.modules, name))
                di_strv_push(&missing, "%s", name);
        }
        if (missing.n == 0) {
            k->status = strdup("present");
            rc = 0;
            goto k_out;
        }
        for (size_t m = 0; m < missing.n; m++)
            di_strv_push(&k->added, "%s", missing.v[m]);
        k->status = strdup(in->o->dry_run ? "would-add" : "added");
        if (!strcmp(tool, "none")) {
            struct p2v_buf arch = P2V_BUF_INIT;
            if (k->marker) {
                p2v_err_set(in->err, EEXIST, "%s (kernel %s) already ends with a p2vkit archive, yet lacks %s: refusing to append another",
                            k->initrd, k->version, missing.v[0]);
                goto k_out;
            }
            if (build_generic(in, k, &s, paths, n_paths, &arch) < 0) {
                p2v_buf_release(&arch);
                goto k_out;
            }
            struct p2v_buf d = P2V_BUF_INIT;
            p2v_buf_printf(&d, "append a %zu-byte cpio: wrapper /init (original kept as /init.p2v-orig) loading", arch.len);
            for (size_t m = 0; m < n_paths; m++) {
                char name[64];
                di_modname(paths[m], name, sizeof name);
                p2v_buf_printf(&d, " %s", name);
            }
            int urc = plan_upload(in, k, i, idata, ilen, &arch, &d);
            p2v_buf_release(&d);
            p2v_buf_release(&arch);
            if (urc < 0)
                goto k_out;
        } else {
            struct di_strv kwant = {0}; /* the names this kernel's tool list needs */
            bool append = false;
            for (size_t m = 0; m < P2V_ARRAY_SIZE(wanted_modules); m++) {
                const char *w = wanted_modules[m];
                if (!di_moddep_path(dep, w) || di_strv_has(&k->builtin, w))
                    continue;
                di_strv_push(&kwant, "%s", w);
                if (!di_strv_has(&tool_names, w))
                    di_strv_push(&tool_names, "%s", w);
            }
            need_config = true;
            if (in->o->initramfs == DI_INITRAMFS_APPEND) {
                if (!scanned || k->marker) {
                    p2v_err_set(in->err, EINVAL, "--initramfs append: %s (kernel %s) %s; use --initramfs rebuild",
                                k->initrd, k->version,
                                !scanned ? "cannot be read by our initrd reader" : "already ends with a p2vkit archive, yet lacks the modules");
                    di_strv_free(&kwant);
                    goto k_out;
                }
                append = true;
            } else if (in->o->initramfs == DI_INITRAMFS_AUTO) {
                /* a marker with modules still missing: let the tool start afresh */
                append = scanned && !k->marker &&
                         (!strcmp(tool, "initramfs-tools") || !strcmp(tool, "dracut"));
            }
            if (append) {
                struct p2v_buf arch = P2V_BUF_INIT, d = P2V_BUF_INIT;
                const char **mp = calloc(n_paths + 1, sizeof *mp);
                size_t nmp = 0;
                char meth[64];
                int arc;
                if (!mp) {
                    di_strv_free(&kwant);
                    goto nomem_k;
                }
                for (size_t m = 0; m < n_paths; m++) {
                    char name[64];
                    di_modname(paths[m], name, sizeof name);
                    if (di_strv_has(&missing, name))
                        mp[nmp++] = paths[m];
                }
                snprintf(meth, sizeof meth, "%s-append", tool);
                free(k->method);
                k->method = strdup(meth);
                arc = k->method ? build_tool_append(in, k, &s, tool, mp, nmp, &kwant, &arch)
                                : p2v_err_set(in->err, ENOMEM, "out of memory");
                if (arc == 0) {
                    p2v_buf_printf(&d, "append a %zu-byte cpio in %s's layout (its init loads them; no rebuild):", arch.len, tool);
                    for (size_t m = 0; m < nmp; m++) {
                        char name[64];
                        di_modname(mp[m], name, sizeof name);
                        p2v_buf_printf(&d, " %s", name);
                    }
                    p2v_buf_printf(&d, ", the module index%s", !strcmp(tool, "initramfs-tools") ? ", /conf/modules"
                                                              : !strcmp(tool, "dracut") ? ", /etc/modules-load.d/p2vkit-virtio.conf" : "");
                    arc = plan_upload(in, k, i, idata, ilen, &arch, &d);
                }
                free(mp);
                p2v_buf_release(&arch);
                p2v_buf_release(&d);
                di_strv_free(&kwant);
                if (arc < 0)
                    goto k_out;
                n_append++;
            } else {
                di_strv_free(&kwant);
                if (run_i < 0) {
                    if (!add_action(in, A_RUN, tool))
                        goto nomem_k;
                    run_i = (ssize_t)in->n_acts - 1;
                }
                struct action *run = &in->acts[run_i];
                di_strv_push(&run->backups, "%s", k->initrd);
                di_strv_push(&rebuild_kv, "%s", k->version);
                if (!strcmp(tool, "dracut")) {
                    struct p2v_buf cmd = P2V_BUF_INIT;
                    if (run->data)
                        p2v_buf_printf(&cmd, "%s && ", run->data);
                    p2v_buf_printf(&cmd, "dracut -f '%s' '%s'", k->initrd, k->version);
                    free(run->data);
                    run->data = p2v_buf_cstr(&cmd) ? strdup((char *)cmd.data) : NULL;
                    p2v_buf_release(&cmd);
                }
            }
        }
        rc = 0;
        goto k_out;
    nomem_k:
        p2v_err_set(in->err, ENOMEM, "out of memory");
    k_out:
        if (scanned)
            scan_release(&s);
        di_strv_free(&missing);
        free(idata);
        free(paths);
        di_moddep_free(dep);
        if (rc < 0)
            goto out;
    }
    if (need_config) {
        struct action *run;
        /* the tool's configuration goes before the tool runs (actions run in order, and
         * the A_RUN was added first: move it to the end) */
        if (!strcmp(tool, "initramfs-tools")) {
            if (plan_modules_file(in, "/etc/initramfs-tools/modules", &tool_names,
                                  "# p2vkit driver-inject: virtio drivers for the converted machine") < 0)
                goto out;
            if (run_i >= 0 && n_append == 0) {
                in->acts[run_i].data = strdup("update-initramfs -u -k all");
            } else if (run_i >= 0) {
                struct p2v_buf cmd = P2V_BUF_INIT;
                for (size_t m = 0; m < rebuild_kv.n; m++)
                    p2v_buf_printf(&cmd, "%supdate-initramfs -u -k '%s'", m ? " && " : "", rebuild_kv.v[m]);
                in->acts[run_i].data = p2v_buf_cstr(&cmd) ? strdup((char *)cmd.data) : NULL;
                p2v_buf_release(&cmd);
            }
        } else if (!strcmp(tool, "dracut")) {
            struct p2v_buf conf = P2V_BUF_INIT;
            const char *p = "/etc/dracut.conf.d/90-p2vkit-virtio.conf";
            p2v_buf_printf(&conf, "# p2vkit driver-inject: virtio drivers for the converted machine\nadd_drivers+=\"");
            for (size_t m = 0; m < tool_names.n; m++)
                p2v_buf_printf(&conf, " %s", tool_names.v[m]);
            p2v_buf_printf(&conf, " \"\n");
            if (!gexists(in, p)) {
                struct di_change *c = di_report_add_change(in->r, "initramfs-config", p, "create");
                if (!c || !p2v_buf_cstr(&conf)) {
                    p2v_buf_release(&conf);
                    goto nomem;
                }
                c->after = strdup((char *)conf.data);
                if (plan_write(in, p, (char *)conf.data, conf.len, NULL, 0, false) < 0) {
                    p2v_buf_release(&conf);
                    goto out;
                }
            }
            p2v_buf_release(&conf);
        } else if (!strcmp(tool, "mkinitcpio")) {
            if (plan_mkinitcpio(in, &tool_names) < 0)
                goto out;
            if (run_i >= 0)
                in->acts[run_i].data = strdup("mkinitcpio -P");
        }
        if (run_i < 0)
            goto done; /* every initrd extended: no tool run */
        /* move the A_RUN (and its pointer) to the end */
        size_t ri = (size_t)run_i;
        struct action tmp = in->acts[ri];
        memmove(&in->acts[ri], &in->acts[ri + 1], (in->n_acts - ri - 1) * sizeof tmp);
        in->acts[in->n_acts - 1] = tmp;
        run = &in->acts[in->n_acts - 1];
        if (!run->data)
            goto nomem;
        for (size_t i = 0; i < r->n_kernels; i++) {
            struct di_kernel *k = &r->kernels[i];
            struct p2v_buf d = P2V_BUF_INIT;
            if (!k->added.n || strcmp(k->method, tool) != 0)
                continue;
            struct di_change *c = di_report_add_change(in->r, "initramfs", k->initrd, tool);
            if (!c)
                goto nomem;
            p2v_buf_printf(&d, "%s: adds", run->data);
            for (size_t m = 0; m < k->added.n; m++)
                p2v_buf_printf(&d, " %s", k->added.v[m]);
            c->detail = p2v_buf_cstr(&d) ? strdup((char *)d.data) : NULL;
            p2v_buf_release(&d);
        }
    }
done:
    ret = 0;
    goto out;
nomem:
    p2v_err_set(in->err, ENOMEM, "out of memory");
out:
    di_strv_free(&tool_names);
    di_strv_free(&rebuild_kv);
    free_strings(ls);
    return ret;
}

/* ---------------------------------------------------------------- leftovers */

static int plan_remove(struct inj *in, const char *path, const char *kind, const char *why)
{
    struct action *a = add_action(in, A_REMOVE, path);
    if (!a || !a->path)
        return p2v_err_set(in->err, ENOMEM, "out of memory");
    a->orig_exists = true;
    if (guestfs_is_symlink(in->g, path) > 0) {
        a->orig_link = true;
        if (!(a->orig = guestfs_readlink(in->g, path)))
            return gfail(in, "cannot read the link '%s'", path);
    } else if (!(a->orig = gread(in, path, &a->orig_len))) {
        return -1;
    }
    struct di_change *c = di_report_add_change(in->r, kind, path, "remove");
    if (!c || !(c->detail = strdup(why)))
        return p2v_err_set(in->err, ENOMEM, "out of memory");
    return 0;
}

static int plan_cleanup(struct inj *in)
{
    static const char *const vmw_globs[] = {
        "/etc/systemd/system/*.wants/vmtoolsd.service",
        "/etc/systemd/system/*.wants/open-vm-tools.service",
        "/etc/systemd/system/*.wants/vmware-tools.service",
        "/etc/systemd/system/*.wants/vgauth.service",
        "/etc/systemd/system/*.wants/vmware-tools-thinprint.service",
        "/etc/rc[0-6S].d/[SK][0-9][0-9]vmware-tools*",
        "/etc/rc[0-6S].d/[SK][0-9][0-9]open-vm-tools*",
        "/etc/rc.d/rc[0-6].d/[SK][0-9][0-9]vmware-tools*",
    };
    char **g = guestfs_glob_expand(in->g, "/etc/udev/rules.d/*persistent-net*");
    if (!g)
        return gfail(in, "cannot list /etc/udev/rules.d");
    for (size_t i = 0; g[i]; i++) {
        size_t len = 0;
        const char *base = strrchr(g[i], '/') + 1;
        char *text = gis_file(in, g[i]) ? guestfs_read_file(in->g, g[i], &len) : NULL;
        bool mac = text && (memmem(text, len, "ATTR{address}", 13) || memmem(text, len, "SYSFS{address}", 14));
        free(text);
        if (strcmp(base, "70-persistent-net.rules") == 0 || mac) {
            if (plan_remove(in, g[i], "remove-file", "network interface names bound to the physical machine's MAC addresses") < 0) {
                free_strings(g);
                return -1;
            }
        }
    }
    free_strings(g);

    bool vmw = gexists(in, "/usr/bin/vmtoolsd") || gexists(in, "/etc/vmware-tools");
    size_t found = 0;
    for (size_t k = 0; k < P2V_ARRAY_SIZE(vmw_globs); k++) {
        g = guestfs_glob_expand(in->g, vmw_globs[k]);
        if (!g)
            return gfail(in, "cannot expand '%s'", vmw_globs[k]);
        for (size_t i = 0; g[i]; i++) {
            found++;
            if (in->o->remove_vmware_tools &&
                plan_remove(in, g[i], "disable-service", "VMware tools service start link") < 0) {
                free_strings(g);
                return -1;
            }
        }
        free_strings(g);
    }
    if ((vmw || found) && !in->o->remove_vmware_tools)
        warn(in, "VMware tools are installed%s: --remove-vmware-tools disables them",
             found ? " and enabled" : "");
    return 0;
}

static void raid_warnings(struct inj *in)
{
    static const char *const lists[] = {
        "/etc/initramfs-tools/modules", "/etc/modules", "/etc/mkinitcpio.conf", "/etc/dracut.conf",
    };
    if (gexists(in, "/etc/multipath.conf"))
        warn(in, "/etc/multipath.conf: multipath is configured; on the VM each disk has one path, check that boot does not wait for multipath devices");
    for (size_t i = 0; i + 1 < in->r->mountpoints.n; i += 2)
        if (strstr(in->r->mountpoints.v[i + 1], "/dev/mapper/mpath"))
            warn(in, "%s is mounted from the multipath device %s: the VM needs multipath in its initramfs or a plain device",
                 in->r->mountpoints.v[i], in->r->mountpoints.v[i + 1]);
    for (size_t i = 0; i < P2V_ARRAY_SIZE(lists); i++) {
        size_t len = 0;
        if (!gis_file(in, lists[i]))
            continue;
        char *t = guestfs_read_file(in->g, lists[i], &len);
        for (size_t m = 0; t && m < P2V_ARRAY_SIZE(hw_raid_modules); m++) {
            const char *w = hw_raid_modules[m];
            size_t wl = strlen(w);
            for (const char *p = t; (p = memmem(p, len - (size_t)(p - t), w, wl)); p += wl) {
                bool start = p == t || strchr(" \t\n(\"'", p[-1]);
                bool end = (size_t)(p - t) + wl == len || strchr(" \t\n)\"'", p[wl]);
                if (start && end) {
                    warn(in, "%s lists the hardware RAID/multipath driver %s: the VM has no such controller", lists[i], w);
                    break;
                }
            }
        }
        free(t);
    }
    if (gexists(in, "/dev/cciss"))
        warn(in, "the guest has /dev/cciss nodes: it booted from an HP Smart Array controller");
}

/* ---------------------------------------------------------------- apply and undo */

static int put_file(struct inj *in, const char *path, const char *data, size_t len, const char *host)
{
    char tmp[1024];
    const char *sl = strrchr(path, '/');
    struct guestfs_statns *st = guestfs_statns(in->g, path); /* NULL: a new file */
    snprintf(tmp, sizeof tmp, "%.*s/.p2vkit-inject.%u.tmp", (int)(sl - path), path, in->tmpn++);
    int rc = host ? guestfs_upload(in->g, host, tmp) : guestfs_write(in->g, tmp, data, len);
    if (rc < 0)
        rc = gfail(in, "cannot write '%s' in the guest", tmp);
    else if (st && (guestfs_chmod(in->g, (int)(st->st_mode & 07777), tmp) < 0 ||
                    guestfs_chown(in->g, (int)st->st_uid, (int)st->st_gid, tmp) < 0))
        rc = gfail(in, "cannot set the mode of '%s'", tmp);
    else if (!st && guestfs_chmod(in->g, 0644, tmp) < 0)
        rc = gfail(in, "cannot set the mode of '%s'", tmp);
    else if (guestfs_rename(in->g, tmp, path) < 0)
        rc = gfail(in, "cannot rename '%s' to '%s'", tmp, path);
    if (rc < 0)
        guestfs_rm_f(in->g, tmp);
    if (st)
        guestfs_free_statns(st);
    return rc;
}

static void undo(struct inj *in, struct action *a)
{
    switch (a->kind) {
    case A_WRITE:
    case A_REMOVE:
        if (a->orig_link) {
            guestfs_ln_sf(in->g, a->orig, a->path);
        } else if (a->orig_exists) {
            if (put_file(in, a->path, a->orig, a->orig_len, NULL) < 0)
                p2v_warn("undo: %s", guestfs_last_error(in->g));
        } else {
            guestfs_rm_f(in->g, a->path);
        }
        break;
    case A_UPLOAD: /* the original initrd was kept in a host file */
        if (put_file(in, a->path, NULL, 0, a->orig) < 0)
            p2v_warn("undo: %s", guestfs_last_error(in->g));
        break;
    case A_RUN:
        for (size_t i = 0; i < a->backups.n; i++) {
            char bak[1024];
            snprintf(bak, sizeof bak, "%s.p2vkit-orig", a->backups.v[i]);
            if (gexists(in, bak))
                guestfs_rename(in->g, bak, a->backups.v[i]);
        }
        break;
    }
}

/* Check that every kernel whose initrd changed now carries its modules. */
static int verify(struct inj *in)
{
    for (size_t i = 0; i < in->r->n_kernels; i++) {
        struct di_kernel *k = &in->r->kernels[i];
        size_t len;
        struct initrd_scan s;
        if (!k->added.n || !k->initrd)
            continue;
        uint8_t *d = gread_big(in, k->initrd, &len);
        if (!d)
            return -1;
        if (scan_initrd(in, d, len, &s, k->initrd) < 0) {
            free(d);
            size_t ml = strlen(k->method);
            if (in->err->code == ENOTSUP && (ml < 7 || strcmp(k->method + ml - 7, "-append") != 0)) {
                /* a compression our reader does not know: the tool's word is all we have */
                warn(in, "could not verify the rebuilt %s: %s", k->initrd, in->err->msg);
                p2v_err_clear(in->err);
                continue;
            }
            return p2v_err_prefix(in->err, "verifying the new initrd");
        }
        free(d);
        for (size_t m = 0; m < k->added.n; m++) {
            if (!di_strv_has(&s.modules, k->added.v[m])) {
                p2v_err_set(in->err, EIO, "the rebuilt %s (kernel %s) still lacks %s (%s did not add it)",
                            k->initrd, k->version, k->added.v[m], k->method);
                scan_release(&s);
                return -1;
            }
        }
        scan_release(&s);
    }
    return 0;
}

static int apply(struct inj *in)
{
    size_t i;
    for (i = 0; i < in->n_acts; i++) {
        struct action *a = &in->acts[i];
        int rc = 0;
        switch (a->kind) {
        case A_WRITE:
            rc = put_file(in, a->path, a->data, a->len, NULL);
            break;
        case A_REMOVE:
            if (guestfs_rm(in->g, a->path) < 0)
                rc = gfail(in, "cannot remove '%s'", a->path);
            break;
        case A_UPLOAD:
            rc = put_file(in, a->path, NULL, 0, a->data);
            break;
        case A_RUN: {
            for (size_t b = 0; b < a->backups.n && rc == 0; b++) {
                char bak[1024];
                snprintf(bak, sizeof bak, "%s.p2vkit-orig", a->backups.v[b]);
                if (guestfs_cp_a(in->g, a->backups.v[b], bak) < 0)
                    rc = gfail(in, "cannot back up '%s'", a->backups.v[b]);
            }
            if (rc == 0) {
                char cmd[4096];
                snprintf(cmd, sizeof cmd, "%s 2>&1", a->data);
                p2v_info("running '%s' in the guest", a->data);
                double t0 = p2v_now();
                char *out = guestfs_sh(in->g, cmd);
                p2v_info("'%s' took %.1f s", a->data, p2v_now() - t0);
                if (!out)
                    rc = gfail(in, "'%s' failed in the guest", a->data);
                else
                    p2v_debug("%s", out);
                free(out);
            }
            a->done = true; /* backups to put back even when the tool failed */
            if (rc == 0)
                rc = verify(in);
            break;
        }
        }
        if (rc < 0)
            goto undo;
        a->done = true;
    }
    for (i = 0; i < in->n_acts; i++)
        for (size_t b = 0; b < in->acts[i].backups.n; b++) {
            char bak[1024];
            snprintf(bak, sizeof bak, "%s.p2vkit-orig", in->acts[i].backups.v[b]);
            guestfs_rm_f(in->g, bak);
        }
    for (i = 0; i < in->n_acts; i++)
        if (in->acts[i].kind == A_UPLOAD)
            break;
    if (i < in->n_acts && verify(in) < 0)
        goto undo_all;
    return 0;
undo_all:
    i = in->n_acts;
undo:
    while (i-- > 0)
        if (in->acts[i].done)
            undo(in, &in->acts[i]);
    return -1;
}

/* ---------------------------------------------------------------- inspection */

static enum di_status no_os(struct inj *in)
{
    char **fs = guestfs_list_filesystems(in->g);
    struct p2v_buf d = P2V_BUF_INIT;
    for (size_t i = 0; fs && fs[i] && fs[i + 1]; i += 2)
        p2v_buf_printf(&d, "%s%s: %s", i ? ", " : "", fs[i],
                       strcmp(fs[i + 1], "unknown") == 0 ? "no readable file system" : fs[i + 1]);
    if (!fs || !fs[0])
        p2v_buf_printf(&d, "no partition or file system at all");
    p2v_err_set(in->err, ENOENT, "no operating system found on '%s' (%s)", in->o->disk,
                p2v_buf_cstr(&d) ? (char *)d.data : "?");
    p2v_buf_release(&d);
    free_strings(fs);
    return DI_NO_OS;
}

static int cmp_mp(const void *a, const void *b)
{
    const char *const *x = a, *const *y = b;
    size_t lx = strlen(x[0]), ly = strlen(y[0]);
    return lx < ly ? -1 : lx > ly ? 1 : strcmp(x[0], y[0]);
}

static enum di_status inspect(struct inj *in)
{
    struct di_report *r = in->r;
    char **roots = guestfs_inspect_os(in->g);
    char why[256];
    enum di_status st;
    if (!roots) {
        gfail(in, "inspection of '%s' failed", in->o->disk);
        return DI_ERROR;
    }
    if (!roots[0]) {
        free_strings(roots);
        return no_os(in);
    }
    const char *root = roots[0];
    if (roots[1])
        warn(in, "several operating systems found: converting the one on %s", root);
    r->root = strdup(root);
    r->os_type = guestfs_inspect_get_type(in->g, root);
    r->distro = guestfs_inspect_get_distro(in->g, root);
    r->product = guestfs_inspect_get_product_name(in->g, root);
    r->hostname = guestfs_inspect_get_hostname(in->g, root);
    r->major = guestfs_inspect_get_major_version(in->g, root);
    r->minor = guestfs_inspect_get_minor_version(in->g, root);
    free_strings(roots);
    st = di_os_policy(r->os_type, r->distro, why, sizeof why);
    if (st != DI_OK) {
        p2v_err_set(in->err, ENOTSUP, "%s (found %s on '%s', root %s)", why,
                    r->product ? r->product : r->os_type, in->o->disk, r->root);
        return st;
    }
    char **mps = guestfs_inspect_get_mountpoints(in->g, r->root);
    if (!mps) {
        gfail(in, "no mount points for %s", r->root);
        return DI_ERROR;
    }
    size_t n = 0;
    while (mps[n])
        n++;
    qsort(mps, n / 2, 2 * sizeof *mps, cmp_mp);
    for (size_t i = 0; i + 1 < n; i += 2) {
        /* read-only while planning: a run that changes nothing must not even update a
         * superblock's mount time (remount_rw() comes before the first write) */
        int rc = guestfs_mount_ro(in->g, mps[i + 1], mps[i]);
        di_strv_push(&r->mountpoints, "%s", mps[i]);
        di_strv_push(&r->mountpoints, "%s", mps[i + 1]);
        if (rc < 0) {
            gfail(in, "cannot mount %s on %s (is the file system damaged?)", mps[i + 1], mps[i]);
            free_strings(mps);
            return DI_ERROR;
        }
    }
    free_strings(mps);
    return DI_OK;
}

/* Mount again, read-write, what inspect() mounted read-only. */
static int remount_rw(struct inj *in)
{
    const struct di_strv *mp = &in->r->mountpoints;
    if (guestfs_umount_all(in->g) < 0)
        return gfail(in, "cannot unmount the guest's file systems");
    for (size_t i = 0; i + 1 < mp->n; i += 2)
        if (guestfs_mount(in->g, mp->v[i + 1], mp->v[i]) < 0)
            return gfail(in, "cannot mount %s on %s read-write", mp->v[i + 1], mp->v[i]);
    return 0;
}

/* ---------------------------------------------------------------- entry point */

static void inj_release(struct inj *in)
{
    for (size_t i = 0; i < in->n_acts; i++) {
        struct action *a = &in->acts[i];
        if (a->kind == A_UPLOAD && a->data)
            unlink(a->data);
        if (a->kind == A_UPLOAD && a->orig)
            unlink(a->orig);
        free(a->path);
        free(a->data);
        free(a->orig);
        di_strv_free(&a->backups);
    }
    free(in->acts);
    free_strings(in->devices);
    free_strings(in->partitions);
    di_strv_free(&in->cache);
    if (in->g)
        guestfs_close(in->g);
    if (in->tmpdir[0])
        rmdir(in->tmpdir);
}

/* A disk whose first MiB and last sector read as zeros has no partition table (MBR,
 * GPT or its backup header) and no whole-disk file system, LVM or LUKS label: inspection
 * could find nothing, so it is refused at once instead of after an appliance boot. 1:
 * blank, 0: not (or not readable here: the appliance decides). */
static int disk_is_blank(const char *path, const char *fmt)
{
    enum { HEAD = 1 << 20 };
    struct p2v_err e;
    struct diskfmt *d = diskfmt_open(path, fmt, DISKFMT_RDONLY, &e);
    unsigned char *buf = malloc(HEAD);
    int blank = 0;

    if (d && buf) {
        uint64_t size = diskfmt_size(d), head = size < HEAD ? size : HEAD;
        blank = size >= 512 && diskfmt_pread(d, buf, head, 0, &e) == 0 &&
                p2v_is_zero(buf, head) &&
                diskfmt_pread(d, buf, 512, size - 512, &e) == 0 && p2v_is_zero(buf, 512);
    }
    free(buf);
    if (d)
        diskfmt_close(d, &e);
    return blank;
}

enum di_status di_inject(const struct di_options *o, struct di_report **report,
                         struct p2v_err *err)
{
    struct inj in = {0};
    struct di_report *r = calloc(1, sizeof *r);
    enum di_status st = DI_ERROR;
    const char *fmt = o->format, *why;
    double t0 = p2v_now();
    struct p2v_err local;

    if (!err)
        err = &local;
    in.o = o;
    in.r = r;
    in.err = err;
    if (!r) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return DI_ERROR;
    }
    if (access(o->disk, R_OK | (o->dry_run ? 0 : W_OK)) != 0) {
        p2v_err_errno(err, "cannot open '%s'%s", o->disk, o->dry_run ? "" : " for writing");
        goto out;
    }
    struct stat sb;
    if (stat(o->disk, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size < 512) {
        p2v_err_set(err, EINVAL, "'%s' is not a disk image (%lld bytes)", o->disk, (long long)sb.st_size);
        st = DI_NO_OS;
        goto out;
    }
    if (!fmt && diskfmt_probe(o->disk, &fmt, err) < 0)
        goto out;
    if (disk_is_blank(o->disk, fmt)) {
        p2v_err_set(err, ENOENT, "no operating system found on '%s' (the disk is blank: its "
                    "first MiB and last sector read as zeros)", o->disk);
        st = DI_NO_OS;
        goto out;
    }
    r->disk = strdup(o->disk);
    r->format = strdup(fmt);
    r->dry_run = o->dry_run;
    r->accel = di_accel_choose(o->accel, &why);
    r->accel_why = strdup(why);

    snprintf(in.tmpdir, sizeof in.tmpdir, "/tmp/p2v-inject.XXXXXX");
    if (!mkdtemp(in.tmpdir)) {
        in.tmpdir[0] = 0;
        p2v_err_errno(err, "cannot create a temporary folder");
        goto out;
    }
    in.g = guestfs_create_flags(0);
    if (!in.g) {
        p2v_err_set(err, EIO, "cannot create a libguestfs handle");
        goto out;
    }
    guestfs_set_error_handler(in.g, NULL, NULL);
    if (o->verbose > 1) {
        guestfs_set_verbose(in.g, 1);
    }
    if (r->accel == DI_ACCEL_TCG) {
        char *settings[] = {(char *)"force_tcg", NULL};
        if (guestfs_set_backend(in.g, "direct") < 0 || guestfs_set_backend_settings(in.g, settings) < 0) {
            gfail(&in, "cannot select the TCG backend");
            goto out;
        }
    }
    if (guestfs_add_drive_opts(in.g, o->disk, GUESTFS_ADD_DRIVE_OPTS_FORMAT, fmt,
                               GUESTFS_ADD_DRIVE_OPTS_READONLY, o->dry_run ? 1 : 0, -1) < 0) {
        gfail(&in, "cannot add '%s'", o->disk);
        goto out;
    }
    p2v_info("starting the libguestfs appliance (%s: %s)", r->accel == DI_ACCEL_KVM ? "kvm" : "tcg", why);
    if (guestfs_launch(in.g) < 0) {
        gfail(&in, "cannot start the libguestfs appliance");
        goto out;
    }
    p2v_info("appliance up after %.1f s; inspecting", p2v_now() - t0);
    if (!(in.devices = guestfs_list_devices(in.g)) || !(in.partitions = guestfs_list_partitions(in.g))) {
        gfail(&in, "cannot list the devices of '%s'", o->disk);
        goto out;
    }
    st = inspect(&in);
    if (st != DI_OK)
        goto out;
    st = DI_ERROR;
    if (plan_bootloader(&in) < 0 || plan_kernels(&in) < 0 || plan_cleanup(&in) < 0) {
        /* a Linux we cannot fix (no usable initramfs path): refused, not failed */
        if (err->code == ENOTSUP)
            st = DI_UNSUPPORTED_OS;
        goto out;
    }
    p2v_info("planned after %.1f s: %zu change(s)", p2v_now() - t0, r->n_changes);
    raid_warnings(&in);
    if (!o->dry_run && in.n_acts) {
        p2v_info("applying %zu change(s)", r->n_changes);
        if (remount_rw(&in) < 0 || apply(&in) < 0)
            goto out;
        r->applied = true;
    }
    if (guestfs_umount_all(in.g) < 0 || guestfs_shutdown(in.g) < 0) {
        gfail(&in, "cannot close '%s' cleanly", o->disk);
        goto out;
    }
    r->seconds = p2v_now() - t0;
    *report = r;
    r = NULL;
    st = DI_OK;
out:
    inj_release(&in);
    di_report_free(r);
    return st;
}
