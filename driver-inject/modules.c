/* Kernel modules of the guest: modules.dep (written by depmod: "path: dep dep ...", paths
 * relative to /lib/modules/KVER, each line's dependencies being every module it needs)
 * and modules.builtin (one path per line for what is built into the kernel). The
 * closure gives the insmod order: a depth-first walk that emits a module after all it
 * depends on. Also the refusal policy for guests we do not convert.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "di-int.h"

/* depmod's lines are short; a deeper dependency chain than this is a corrupt file */
#define DI_MODDEP_DEPTH_MAX 64
#define DI_MODDEP_LINES_MAX 200000

struct di_moddep_entry {
    char *path;
    char name[64];
    char **deps; /* paths */
    size_t n_deps;
};

struct di_moddep {
    struct di_moddep_entry *e;
    size_t n;
};

void di_modname(const char *path, char *buf, size_t len)
{
    static const char *const exts[] = {".ko.xz", ".ko.zst", ".ko.gz", ".ko"};
    const char *b = strrchr(path, '/');
    size_t n, i;
    b = b ? b + 1 : path;
    n = strlen(b);
    for (i = 0; i < P2V_ARRAY_SIZE(exts); i++) {
        size_t el = strlen(exts[i]);
        if (n > el && strcmp(b + n - el, exts[i]) == 0) {
            n -= el;
            break;
        }
    }
    if (len == 0)
        return;
    if (n >= len)
        n = len - 1;
    for (i = 0; i < n; i++)
        buf[i] = b[i] == '-' ? '_' : b[i];
    buf[n] = 0;
}

void di_moddep_free(struct di_moddep *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->e[i].path);
        for (size_t k = 0; k < m->e[i].n_deps; k++)
            free(m->e[i].deps[k]);
        free(m->e[i].deps);
    }
    free(m->e);
    free(m);
}

static int add_word(char ***v, size_t *n, const char *s, size_t len)
{
    char **nv = realloc(*v, (*n + 1) * sizeof **v);
    if (!nv)
        return -1;
    *v = nv;
    if (!(nv[*n] = strndup(s, len)))
        return -1;
    (*n)++;
    return 0;
}

int di_moddep_parse(const char *text, size_t len, struct di_moddep **out,
                    struct p2v_err *err)
{
    struct di_moddep *m = calloc(1, sizeof *m);
    size_t cap = 0, lineno = 0;
    if (!m)
        return p2v_err_errno(err, "modules.dep");
    for (size_t pos = 0; pos < len;) {
        const char *l = text + pos, *nl = memchr(l, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - l) : len - pos;
        pos += ll + (nl ? 1 : 0);
        lineno++;
        if (lineno > DI_MODDEP_LINES_MAX) {
            di_moddep_free(m);
            return p2v_err_set(err, E2BIG, "modules.dep: more than %d lines", DI_MODDEP_LINES_MAX);
        }
        if (ll == 0 || l[0] == '#')
            continue;
        const char *colon = memchr(l, ':', ll);
        if (!colon || colon == l) {
            di_moddep_free(m);
            return p2v_err_set(err, EINVAL, "modules.dep: line %zu has no 'path:'", lineno);
        }
        if (m->n == cap) {
            size_t ncap = cap ? cap * 2 : 256;
            struct di_moddep_entry *ne = realloc(m->e, ncap * sizeof *ne);
            if (!ne)
                goto nomem;
            m->e = ne;
            cap = ncap;
        }
        struct di_moddep_entry *e = &m->e[m->n];
        memset(e, 0, sizeof *e);
        m->n++;
        if (!(e->path = strndup(l, (size_t)(colon - l))))
            goto nomem;
        di_modname(e->path, e->name, sizeof e->name);
        for (const char *s = colon + 1, *end = l + ll; s < end;) {
            while (s < end && (*s == ' ' || *s == '\t' || *s == '\r'))
                s++;
            const char *w = s;
            while (s < end && *s != ' ' && *s != '\t' && *s != '\r')
                s++;
            if (s > w && add_word(&e->deps, &e->n_deps, w, (size_t)(s - w)) < 0)
                goto nomem;
        }
    }
    *out = m;
    return 0;
nomem:
    di_moddep_free(m);
    return p2v_err_set(err, ENOMEM, "modules.dep: out of memory");
}

static const struct di_moddep_entry *find_name(const struct di_moddep *m, const char *name)
{
    char want[64];
    di_modname(name, want, sizeof want);
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->e[i].name, want) == 0)
            return &m->e[i];
    return NULL;
}

static const struct di_moddep_entry *find_path(const struct di_moddep *m, const char *path)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->e[i].path, path) == 0)
            return &m->e[i];
    return NULL;
}

const char *di_moddep_path(const struct di_moddep *m, const char *name)
{
    const struct di_moddep_entry *e = find_name(m, name);
    return e ? e->path : NULL;
}

/* state per entry: 0 unseen, 1 on the stack, 2 emitted */
static int visit(const struct di_moddep *m, const struct di_moddep_entry *e, unsigned char *st,
                 const char **paths, size_t *n, unsigned depth, struct p2v_err *err)
{
    size_t idx = (size_t)(e - m->e);
    if (st[idx] == 2)
        return 0;
    if (st[idx] == 1)
        return p2v_err_set(err, ELOOP, "modules.dep: dependency cycle through '%s'", e->path);
    if (depth > DI_MODDEP_DEPTH_MAX)
        return p2v_err_set(err, ELOOP, "modules.dep: dependencies deeper than %d at '%s'",
                           DI_MODDEP_DEPTH_MAX, e->path);
    st[idx] = 1;
    for (size_t k = 0; k < e->n_deps; k++) {
        const struct di_moddep_entry *d = find_path(m, e->deps[k]);
        if (!d)
            continue; /* depmod lists only modules it knows; a stray name is not ours to fix */
        if (visit(m, d, st, paths, n, depth + 1, err) < 0)
            return -1;
    }
    st[idx] = 2;
    paths[(*n)++] = e->path;
    return 0;
}

int di_moddep_closure(const struct di_moddep *m, const char *const *names, size_t n,
                      const char ***paths, size_t *n_paths, struct p2v_err *err)
{
    unsigned char *st = calloc(m->n + 1, 1);
    const char **v = calloc(m->n + 1, sizeof *v);
    size_t cnt = 0;
    if (!st || !v) {
        free(st);
        free(v);
        return p2v_err_set(err, ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const struct di_moddep_entry *e = find_name(m, names[i]);
        if (e && visit(m, e, st, v, &cnt, 0, err) < 0) {
            free(st);
            free(v);
            return -1;
        }
    }
    free(st);
    v[cnt] = NULL;
    *paths = v;
    *n_paths = cnt;
    return 0;
}

bool di_modbuiltin_has(const char *text, size_t len, const char *name)
{
    char want[64], got[64], path[512];
    di_modname(name, want, sizeof want);
    for (size_t pos = 0; pos < len;) {
        const char *l = text + pos, *nl = memchr(l, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - l) : len - pos;
        pos += ll + (nl ? 1 : 0);
        if (ll == 0 || ll >= sizeof path)
            continue;
        memcpy(path, l, ll);
        path[ll] = 0;
        di_modname(path, got, sizeof got);
        if (strcmp(got, want) == 0)
            return true;
    }
    return false;
}

static bool modlist_has(const char *text, size_t len, const char *name)
{
    size_t nl_ = strlen(name);
    for (size_t pos = 0; pos < len;) {
        const char *l = text + pos, *nl = memchr(l, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - l) : len - pos, wl = 0;
        pos += ll + (nl ? 1 : 0);
        while (ll && (*l == ' ' || *l == '\t')) {
            l++;
            ll--;
        }
        while (wl < ll && l[wl] != ' ' && l[wl] != '\t' && l[wl] != '\r')
            wl++;
        if (wl == nl_ && memcmp(l, name, wl) == 0)
            return true;
    }
    return false;
}

int di_modlist_merge(const char *text, size_t len, const char *const *names, size_t n,
                     const char *header, struct p2v_buf *out)
{
    int added = 0;
    if (len && p2v_buf_put(out, text, len) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        bool dup = false;
        for (size_t k = 0; k < i && !dup; k++)
            dup = strcmp(names[k], names[i]) == 0;
        if (dup || !names[i][0] || modlist_has(text, len, names[i]))
            continue;
        if (added == 0) {
            if (out->len && out->data[out->len - 1] != '\n' && p2v_buf_put_u8(out, '\n') < 0)
                return -1;
            if (header && p2v_buf_printf(out, "%s\n", header) < 0)
                return -1;
        }
        if (p2v_buf_printf(out, "%s\n", names[i]) < 0)
            return -1;
        added++;
    }
    return added;
}

enum di_status di_os_policy(const char *type, const char *distro, char *why, size_t len)
{
    if (type && strcmp(type, "windows") == 0) {
        snprintf(why, len, "Windows guests are not supported yet");
        return DI_WINDOWS;
    }
    if (!type || strcmp(type, "linux") != 0) {
        snprintf(why, len, "unsupported operating system type '%s' (only Linux guests are converted)",
                 type ? type : "unknown");
        return DI_UNSUPPORTED_OS;
    }
    (void)distro; /* every Linux distribution goes through the same checks */
    return DI_OK;
}
