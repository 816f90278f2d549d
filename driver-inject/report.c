/* The injection report: what inspection found, every change (made or, in a dry run,
 * planned), each kernel's initramfs path, and warnings; as JSON or as human lines. */
#include <stdlib.h>
#include <string.h>

#include "di-report.h"

void di_strv_free(struct di_strv *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->v[i]);
    free(v->v);
    v->v = NULL;
    v->n = 0;
}

int di_strv_push(struct di_strv *v, const char *fmt, ...)
{
    va_list ap;
    char *s;
    char **nv = realloc(v->v, (v->n + 2) * sizeof *nv);
    if (!nv)
        return -1;
    v->v = nv;
    va_start(ap, fmt);
    int rc = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (rc < 0)
        return -1;
    v->v[v->n++] = s;
    v->v[v->n] = NULL;
    return 0;
}

bool di_strv_has(const struct di_strv *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->v[i], s) == 0)
            return true;
    return false;
}

static void change_release(struct di_change *c)
{
    free(c->kind);
    free(c->path);
    free(c->before);
    free(c->after);
    free(c->detail);
    free(c->method);
}

struct di_change *di_report_add_change(struct di_report *r, const char *kind, const char *path,
                                       const char *method)
{
    struct di_change *nc = realloc(r->changes, (r->n_changes + 1) * sizeof *nc);
    if (!nc)
        return NULL;
    r->changes = nc;
    struct di_change *c = &nc[r->n_changes];
    memset(c, 0, sizeof *c);
    c->kind = strdup(kind);
    c->path = strdup(path);
    c->method = strdup(method);
    if (!c->kind || !c->path || !c->method) {
        change_release(c);
        return NULL;
    }
    r->n_changes++;
    return c;
}

void di_report_free(struct di_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_changes; i++)
        change_release(&r->changes[i]);
    free(r->changes);
    for (size_t i = 0; i < r->n_kernels; i++) {
        struct di_kernel *k = &r->kernels[i];
        free(k->version);
        free(k->vmlinuz);
        free(k->initrd);
        free(k->method);
        free(k->status);
        di_strv_free(&k->wanted);
        di_strv_free(&k->added);
        di_strv_free(&k->builtin);
        di_strv_free(&k->unavailable);
    }
    free(r->kernels);
    free(r->disk);
    free(r->format);
    free(r->accel_why);
    free(r->os_type);
    free(r->distro);
    free(r->product);
    free(r->hostname);
    free(r->root);
    free(r->bootloader);
    free(r->initramfs_tool);
    di_strv_free(&r->mountpoints);
    di_strv_free(&r->bootloader_configs);
    di_strv_free(&r->warnings);
    free(r);
}

size_t di_report_change_count(const struct di_report *r)
{
    return r->n_changes;
}

static void kv_str(struct p2v_json *j, const char *k, const char *v)
{
    if (v)
        p2v_json_kv_string(j, k, v);
    else {
        p2v_json_key(j, k);
        p2v_json_null(j);
    }
}

static void strv_json(struct p2v_json *j, const char *k, const struct di_strv *v)
{
    p2v_json_key(j, k);
    p2v_json_array_begin(j);
    for (size_t i = 0; i < v->n; i++)
        p2v_json_string(j, v->v[i]);
    p2v_json_array_end(j);
}

void di_report_json(const struct di_report *r, struct p2v_json *j)
{
    p2v_json_object_begin(j);
    kv_str(j, "disk", r->disk);
    kv_str(j, "format", r->format);
    p2v_json_kv_bool(j, "dry_run", r->dry_run);
    p2v_json_kv_string(j, "accel", r->accel == DI_ACCEL_KVM ? "kvm" : "tcg");
    kv_str(j, "accel_reason", r->accel_why);

    p2v_json_key(j, "inspection");
    p2v_json_object_begin(j);
    kv_str(j, "type", r->os_type);
    kv_str(j, "distro", r->distro);
    kv_str(j, "product_name", r->product);
    p2v_json_kv_i64(j, "major_version", r->major);
    p2v_json_kv_i64(j, "minor_version", r->minor);
    kv_str(j, "hostname", r->hostname);
    kv_str(j, "root", r->root);
    p2v_json_key(j, "mountpoints");
    p2v_json_array_begin(j);
    for (size_t i = 0; i + 1 < r->mountpoints.n; i += 2) {
        p2v_json_object_begin(j);
        p2v_json_kv_string(j, "path", r->mountpoints.v[i]);
        p2v_json_kv_string(j, "device", r->mountpoints.v[i + 1]);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    kv_str(j, "bootloader", r->bootloader);
    strv_json(j, "bootloader_configs", &r->bootloader_configs);
    kv_str(j, "initramfs_tool", r->initramfs_tool);
    p2v_json_key(j, "kernels");
    p2v_json_array_begin(j);
    for (size_t i = 0; i < r->n_kernels; i++) {
        const struct di_kernel *k = &r->kernels[i];
        p2v_json_object_begin(j);
        kv_str(j, "version", k->version);
        kv_str(j, "vmlinuz", k->vmlinuz);
        kv_str(j, "initrd", k->initrd);
        kv_str(j, "method", k->method);
        kv_str(j, "status", k->status);
        p2v_json_kv_bool(j, "p2vkit_archive", k->marker);
        strv_json(j, "modules_wanted", &k->wanted);
        strv_json(j, "modules_added", &k->added);
        strv_json(j, "modules_builtin", &k->builtin);
        strv_json(j, "modules_unavailable", &k->unavailable);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    p2v_json_object_end(j);

    p2v_json_key(j, "changes");
    p2v_json_array_begin(j);
    for (size_t i = 0; i < r->n_changes; i++) {
        const struct di_change *c = &r->changes[i];
        p2v_json_object_begin(j);
        p2v_json_kv_string(j, "kind", c->kind);
        p2v_json_kv_string(j, "path", c->path);
        if (c->line)
            p2v_json_kv_u64(j, "line", c->line);
        if (c->before)
            p2v_json_kv_string(j, "before", c->before);
        if (c->after)
            p2v_json_kv_string(j, "after", c->after);
        if (c->detail)
            p2v_json_kv_string(j, "detail", c->detail);
        p2v_json_kv_string(j, "method", c->method);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    p2v_json_kv_u64(j, "change_count", r->n_changes);
    p2v_json_kv_bool(j, "applied", r->applied);
    strv_json(j, "warnings", &r->warnings);
    p2v_json_kv_double(j, "seconds", r->seconds);
    p2v_json_object_end(j);
}

static void modlist(FILE *fp, const char *label, const struct di_strv *v)
{
    if (!v->n)
        return;
    fprintf(fp, "    %s:", label);
    for (size_t i = 0; i < v->n; i++)
        fprintf(fp, " %s", v->v[i]);
    fprintf(fp, "\n");
}

void di_report_print(const struct di_report *r, FILE *fp)
{
    fprintf(fp, "disk: %s (%s), appliance on %s (%s)\n", r->disk, r->format,
            r->accel == DI_ACCEL_KVM ? "kvm" : "tcg", r->accel_why ? r->accel_why : "");
    fprintf(fp, "guest: %s %s %d.%d (%s), root %s, hostname %s\n", r->os_type,
            r->distro ? r->distro : "?", r->major, r->minor, r->product ? r->product : "?",
            r->root ? r->root : "?", r->hostname ? r->hostname : "?");
    for (size_t i = 0; i + 1 < r->mountpoints.n; i += 2)
        fprintf(fp, "  mount %s on %s\n", r->mountpoints.v[i + 1], r->mountpoints.v[i]);
    fprintf(fp, "boot loader: %s", r->bootloader ? r->bootloader : "none found");
    for (size_t i = 0; i < r->bootloader_configs.n; i++)
        fprintf(fp, " %s", r->bootloader_configs.v[i]);
    fprintf(fp, "\ninitramfs tool: %s\n", r->initramfs_tool);
    for (size_t i = 0; i < r->n_kernels; i++) {
        const struct di_kernel *k = &r->kernels[i];
        fprintf(fp, "kernel %s: initrd %s, %s: %s\n", k->version, k->initrd ? k->initrd : "(none)",
                k->method ? k->method : "-", k->status ? k->status : "-");
        modlist(fp, "added", &k->added);
        modlist(fp, "built in", &k->builtin);
        modlist(fp, "unavailable", &k->unavailable);
    }
    const char *verb = r->dry_run ? "would change" : "changed";
    for (size_t i = 0; i < r->n_changes; i++) {
        const struct di_change *c = &r->changes[i];
        fprintf(fp, "%s: %s %s", verb, c->kind, c->path);
        if (c->line)
            fprintf(fp, ":%u", c->line);
        fprintf(fp, " (%s)\n", c->method);
        if (c->before)
            fprintf(fp, "  - %s\n", c->before);
        if (c->after)
            fprintf(fp, "  + %s\n", c->after);
        if (c->detail)
            fprintf(fp, "  %s\n", c->detail);
    }
    for (size_t i = 0; i < r->warnings.n; i++)
        fprintf(fp, "warning: %s\n", r->warnings.v[i]);
    if (r->n_changes == 0)
        fprintf(fp, "nothing to change: the guest is ready for virtio (0 changes)\n");
    else
        fprintf(fp, "%zu change%s %s\n", r->n_changes, r->n_changes == 1 ? "" : "s",
                r->dry_run ? "planned (dry run: nothing written)" : "made");
}
