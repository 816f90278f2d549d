/* Device names that change on virtio, and the rewriter of configuration text that names
 * them. A physical machine's /dev/sda1 is /dev/vda1 on virtio-blk: whatever names a
 * disk by its kernel name must name it by UUID instead. The rewriter is a pure function
 * over lines: it touches only a token that is exactly such a device name in the one
 * place each file kind names devices, and keeps every other byte (comments, spacing,
 * other lines) as it was.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "di-int.h"

/* a digit run without leading zero, < 1000 (partition numbers, cciss controller/disk) */
static int parse_num(const char *s, size_t len, size_t *pos, unsigned *out)
{
    size_t i = *pos;
    unsigned v = 0;
    if (i >= len || !isdigit((unsigned char)s[i]))
        return -1;
    if (s[i] == '0' && i + 1 < len && isdigit((unsigned char)s[i + 1]))
        return -1;
    while (i < len && isdigit((unsigned char)s[i])) {
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v >= 1000)
            return -1;
        i++;
    }
    *pos = i;
    *out = v;
    return 0;
}

int di_devname_parse(const char *s, size_t len, struct di_devname *out)
{
    struct di_devname d = {0, 0};
    size_t i;

    if (len > 11 && memcmp(s, "/dev/cciss/", 11) == 0) {
        unsigned ctl;
        i = 11;
        if (i >= len || s[i] != 'c')
            return -1;
        i++;
        if (parse_num(s, len, &i, &ctl) < 0 || i >= len || s[i] != 'd')
            return -1;
        i++;
        if (parse_num(s, len, &i, &d.disk) < 0)
            return -1;
        if (i < len) {
            if (s[i] != 'p')
                return -1;
            i++;
            if (parse_num(s, len, &i, &d.part) < 0 || d.part == 0)
                return -1;
        }
        if (i != len)
            return -1;
        *out = d;
        return 0;
    }
    if (len < 8 || memcmp(s, "/dev/", 5) != 0 ||
        !((s[5] == 's' || s[5] == 'h') && s[6] == 'd'))
        return -1;
    i = 7;
    /* sda..sdz, sdaa..sdzz (bijective base 26, as the kernel names them) */
    size_t letters = 0;
    unsigned idx = 0;
    while (i < len && s[i] >= 'a' && s[i] <= 'z') {
        idx = idx * 26 + (unsigned)(s[i] - 'a' + 1);
        letters++;
        i++;
    }
    if (letters == 0 || letters > 2)
        return -1;
    d.disk = idx - 1;
    if (i < len) {
        if (parse_num(s, len, &i, &d.part) < 0 || d.part == 0)
            return -1;
    }
    if (i != len)
        return -1;
    *out = d;
    return 0;
}

void di_devname_virtio(const struct di_devname *d, char *buf, size_t len)
{
    char letters[4];
    unsigned n = d->disk;
    if (n < 26) {
        letters[0] = (char)('a' + n);
        letters[1] = 0;
    } else {
        letters[0] = (char)('a' + n / 26 - 1);
        letters[1] = (char)('a' + n % 26);
        letters[2] = 0;
    }
    if (d->part)
        snprintf(buf, len, "/dev/vd%s%u", letters, d->part);
    else
        snprintf(buf, len, "/dev/vd%s", letters);
}

/* ---------------------------------------------------------------- rewriting */

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* A token of a device name ends at white space, a quote or the end of the line. */
static size_t token_end(const char *l, size_t len, size_t i)
{
    while (i < len && !is_space(l[i]) && l[i] != '"' && l[i] != '\'' && l[i] != '\r')
        i++;
    return i;
}

/* One line being rebuilt: @out receives the line with replacements. */
struct line_edit {
    struct p2v_buf *out;
    di_dev_lookup_fn lookup;
    void *opaque;
    bool changed;
};

/* If [a, b) of @l is a device name with a replacement, emit the replacement; else emit
 * the bytes as they are. */
static int emit_token(struct line_edit *e, const char *l, size_t a, size_t b)
{
    struct di_devname d;
    if (b > a && b - a < 256 && di_devname_parse(l + a, b - a, &d) == 0) {
        char name[256];
        memcpy(name, l + a, b - a);
        name[b - a] = 0;
        const char *rep = e->lookup(e->opaque, name);
        if (rep && strcmp(rep, name) != 0) {
            e->changed = true;
            return p2v_buf_put(e->out, rep, strlen(rep));
        }
    }
    return p2v_buf_put(e->out, l + a, b - a);
}

/* The start of field @n (0-based) of a white-space separated line, or len. */
static size_t field_start(const char *l, size_t len, unsigned n)
{
    size_t i = 0;
    while (i < len && is_space(l[i]))
        i++;
    while (n-- > 0) {
        while (i < len && !is_space(l[i]))
            i++;
        while (i < len && is_space(l[i]))
            i++;
    }
    return i;
}

/* Rewrite the value of every root= and resume= word in l[from, len). A word starts the
 * range or follows white space or a quote. */
static int edit_cmdline(struct line_edit *e, const char *l, size_t len, size_t from)
{
    static const char *const keys[] = {"root=", "resume="};
    size_t done = 0, i = from;
    while (i < len) {
        bool word_start = i == from || is_space(l[i - 1]) || l[i - 1] == '"' || l[i - 1] == '\'';
        size_t k;
        for (k = 0; word_start && k < P2V_ARRAY_SIZE(keys); k++) {
            size_t kl = strlen(keys[k]);
            if (len - i > kl && memcmp(l + i, keys[k], kl) == 0)
                break;
        }
        if (!word_start || k == P2V_ARRAY_SIZE(keys)) {
            i++;
            continue;
        }
        size_t a = i + strlen(keys[k]);
        size_t b = token_end(l, len, a);
        if (p2v_buf_put(e->out, l + done, a - done) < 0 || emit_token(e, l, a, b) < 0)
            return -1;
        done = i = b;
    }
    return p2v_buf_put(e->out, l + done, len - done);
}

/* The first word of @l (after white space) equals one of @words (case-insensitively when
 * @nocase); *after is where the word ends. */
static bool first_word_is(const char *l, size_t len, const char *const *words, size_t n,
                          bool nocase, size_t *after)
{
    size_t a = field_start(l, len, 0), b = a;
    while (b < len && !is_space(l[b]))
        b++;
    for (size_t k = 0; k < n; k++) {
        size_t wl = strlen(words[k]);
        if (b - a == wl &&
            (nocase ? strncasecmp(l + a, words[k], wl) : strncmp(l + a, words[k], wl)) == 0) {
            *after = b;
            return true;
        }
    }
    return false;
}

static int edit_line(enum di_conf_kind kind, struct line_edit *e, const char *l, size_t len)
{
    static const char *const grub_words[] = {"linux", "linux16", "linuxefi", "kernel"};
    static const char *const menu_words[] = {"kernel"};
    static const char *const extlinux_words[] = {"append"};
    size_t a = field_start(l, len, 0), b;

    if (a < len && l[a] == '#')
        return p2v_buf_put(e->out, l, len);
    switch (kind) {
    case DI_CONF_FSTAB:
    case DI_CONF_CRYPTTAB:
        a = field_start(l, len, kind == DI_CONF_FSTAB ? 0 : 1);
        if (a >= len)
            break;
        b = token_end(l, len, a);
        if (b < len && !is_space(l[b]) && l[b] != '\r')
            break; /* a quote inside the field: not a plain device name */
        if (p2v_buf_put(e->out, l, a) < 0 || emit_token(e, l, a, b) < 0)
            return -1;
        return p2v_buf_put(e->out, l + b, len - b);
    case DI_CONF_GRUB_CFG:
        if (first_word_is(l, len, grub_words, P2V_ARRAY_SIZE(grub_words), false, &b))
            return edit_cmdline(e, l, len, b);
        break;
    case DI_CONF_MENU_LST:
        if (first_word_is(l, len, menu_words, 1, false, &b))
            return edit_cmdline(e, l, len, b);
        break;
    case DI_CONF_EXTLINUX:
        if (first_word_is(l, len, extlinux_words, 1, true, &b))
            return edit_cmdline(e, l, len, b);
        break;
    case DI_CONF_DEFAULT_GRUB: {
        static const char *const vars[] = {"GRUB_CMDLINE_LINUX=", "GRUB_CMDLINE_LINUX_DEFAULT="};
        for (size_t k = 0; k < P2V_ARRAY_SIZE(vars); k++) {
            size_t vl = strlen(vars[k]);
            if (len - a >= vl && memcmp(l + a, vars[k], vl) == 0)
                return edit_cmdline(e, l, len, a + vl);
        }
        break;
    }
    case DI_CONF_RESUME: {
        static const char key[] = "RESUME=";
        size_t kl = sizeof(key) - 1;
        if (len - a >= kl && memcmp(l + a, key, kl) == 0) {
            size_t v = a + kl;
            if (v < len && (l[v] == '"' || l[v] == '\''))
                v++;
            b = token_end(l, len, v);
            if (p2v_buf_put(e->out, l, v) < 0 || emit_token(e, l, v, b) < 0)
                return -1;
            return p2v_buf_put(e->out, l + b, len - b);
        }
        break;
    }
    }
    return p2v_buf_put(e->out, l, len);
}

void di_rewrite_release(struct di_rewrite *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_changes; i++) {
        free(r->changes[i].before);
        free(r->changes[i].after);
    }
    free(r->changes);
    free(r->text);
    memset(r, 0, sizeof *r);
}

int di_rewrite_devices(enum di_conf_kind kind, const char *text, size_t len,
                       di_dev_lookup_fn lookup, void *opaque, struct di_rewrite *out,
                       struct p2v_err *err)
{
    struct p2v_buf nb = P2V_BUF_INIT, lb = P2V_BUF_INIT;
    struct di_rewrite r = {0};
    size_t cap = 0;
    unsigned lineno = 0;
    int ret = -1;

    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t l_len = nl ? (size_t)(nl - (text + pos)) : len - pos;
        struct line_edit e = {&lb, lookup, opaque, false};
        lineno++;
        p2v_buf_reset(&lb);
        if (edit_line(kind, &e, text + pos, l_len) < 0) {
            p2v_err_set(err, ENOMEM, "out of memory rewriting line %u", lineno);
            goto out;
        }
        if (e.changed) {
            if (r.n_changes == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                struct di_line_change *nc = realloc(r.changes, ncap * sizeof *nc);
                if (!nc) {
                    p2v_err_set(err, ENOMEM, "out of memory");
                    goto out;
                }
                r.changes = nc;
                cap = ncap;
            }
            struct di_line_change *c = &r.changes[r.n_changes];
            c->line = lineno;
            c->before = strndup(text + pos, l_len);
            c->after = strndup((const char *)lb.data, lb.len);
            r.n_changes++;
            if (!c->before || !c->after) {
                p2v_err_set(err, ENOMEM, "out of memory");
                goto out;
            }
        }
        if (p2v_buf_put(&nb, lb.data, lb.len) < 0 || (nl && p2v_buf_put_u8(&nb, '\n') < 0)) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out;
        }
        pos += l_len + (nl ? 1 : 0);
    }
    if (!p2v_buf_cstr(&nb)) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    r.len = nb.len;
    r.text = (char *)nb.data;
    nb.data = NULL;
    *out = r;
    memset(&r, 0, sizeof r);
    ret = 0;
out:
    di_rewrite_release(&r);
    p2v_buf_release(&nb);
    p2v_buf_release(&lb);
    return ret;
}
