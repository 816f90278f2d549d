/* bootparse.c: the parsers of boot loader configuration text, from memory (fuzzed by
 * tests/fuzz/fuzz-bootparse.c). They find the default entry's kernel, initrd, command line
 * and (grub) the UUID of the file system GRUB searches for; bootcfg.c reads the files.
 *
 * grub.cfg is a shell-like script. We do not run it: we tokenize it as GRUB's lexer does
 * (quotes, escapes, comments, line continuation, `;`, variable expansion from earlier `set`s)
 * and walk the statements, ignoring conditionals (the commands inside `if`/`else` branches
 * are all taken; for a `linux`/`initrd`/`search` the first one in an entry wins, and an
 * assignment of an empty value does not override a non-empty one, which keeps the useful
 * branch of grub-mkconfig's `if` blocks). Function bodies are skipped.
 *
 * extlinux.conf / syslinux.cfg is line based with case-insensitive keywords (syslinux's
 * doc/syslinux.txt): DEFAULT names a LABEL, or when none matches is itself a command line.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vmm-int.h"

/* Caps on untrusted configuration text: real files are a few KiB. */
#define BOOTPARSE_TEXT_MAX (1u << 20)   /* bytes of configuration text */
#define BOOTPARSE_LINE_MAX 4096u        /* characters on one physical line */
#define BOOTPARSE_ENTRIES_MAX 256       /* menu entries and submenus */
#define BOOTPARSE_STMT_MAX (64u << 10)  /* bytes of one statement after expansion */
#define BOOTPARSE_WORDS_MAX 512         /* words in one statement */
#define BOOTPARSE_VARS_MAX 64           /* grub variables remembered */
#define BOOTPARSE_VALUE_MAX 4096u       /* bytes of one variable's value */
#define BOOTPARSE_DEPTH_MAX 32          /* nested submenus and functions */

void vmm_bootentry_release(struct vmm_bootentry *e)
{
    if (!e)
        return;
    free(e->title);
    free(e->kernel);
    free(e->initrd);
    free(e->cmdline);
    free(e->root_uuid);
    memset(e, 0, sizeof(*e));
}

/* ------------------------------------------------------------------ common helpers */

/* The text must be within the cap and hold no NUL (a NUL would cut strings short). */
static int text_check(const char *what, const char *text, size_t len, struct p2v_err *err)
{
    if (len > BOOTPARSE_TEXT_MAX)
        return p2v_err_set(err, EFBIG, "%s: %zu bytes is over the %u byte limit", what, len,
                           BOOTPARSE_TEXT_MAX);
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        size_t line = 1;
        for (const char *p = text; p < nul; p++)
            line += *p == '\n';
        return p2v_err_set(err, EINVAL, "%s: line %zu: a NUL byte (at offset %zu)", what,
                           line, (size_t)(nul - text));
    }
    /* physical line length */
    size_t line = 1, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || text[i] == '\n') {
            if (i - start > BOOTPARSE_LINE_MAX)
                return p2v_err_set(err, EINVAL,
                                   "%s: line %zu: longer than %u characters (%zu)", what, line,
                                   BOOTPARSE_LINE_MAX, i - start);
            start = i + 1;
            line++;
        }
    }
    return 0;
}

static char *xstrndup(const char *s, size_t n, struct p2v_err *err)
{
    char *r = strndup(s, n);
    if (!r)
        p2v_err_set(err, ENOMEM, "out of memory");
    return r;
}

/* Strip a GRUB device prefix "(hd0,msdos1)", "($root)" expanded, "()" from a path. */
static const char *strip_device(const char *p)
{
    if (p[0] == '(') {
        const char *close = strchr(p, ')');
        if (close)
            return close + 1;
    }
    return p;
}

/* ------------------------------------------------------------------ grub: lexer */

struct grub_var {
    char *name, *value;
};

struct grub_lex {
    const char *text;
    size_t len, pos;
    size_t line;              /* current physical line (1-based) */
    char *buf;                /* the statement's words, NUL-separated */
    size_t blen;
    size_t word_off[BOOTPARSE_WORDS_MAX];
    bool word_quoted[BOOTPARSE_WORDS_MAX];
    int nwords;
    size_t stmt_line;         /* line where the statement began */
    struct grub_var vars[BOOTPARSE_VARS_MAX];
    int nvars;
};

static const char *grub_var_get(const struct grub_lex *lx, const char *name, size_t n)
{
    for (int i = 0; i < lx->nvars; i++)
        if (strlen(lx->vars[i].name) == n && memcmp(lx->vars[i].name, name, n) == 0)
            return lx->vars[i].value;
    return NULL;
}

/* Remember `name=value`. An empty value does not replace a non-empty one (see the file's
 * comment: branches of ignored conditionals). A full table drops new names. */
static int grub_var_set(struct grub_lex *lx, const char *name, const char *value,
                        struct p2v_err *err)
{
    if (strlen(value) > BOOTPARSE_VALUE_MAX)
        return 0; /* not something we need: leave it unset */
    for (int i = 0; i < lx->nvars; i++) {
        if (strcmp(lx->vars[i].name, name) == 0) {
            if (!*value && *lx->vars[i].value)
                return 0;
            char *v = strdup(value);
            if (!v)
                return p2v_err_set(err, ENOMEM, "out of memory");
            free(lx->vars[i].value);
            lx->vars[i].value = v;
            return 0;
        }
    }
    if (lx->nvars == BOOTPARSE_VARS_MAX)
        return 0;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return p2v_err_set(err, ENOMEM, "out of memory");
    }
    lx->vars[lx->nvars].name = n;
    lx->vars[lx->nvars].value = v;
    lx->nvars++;
    return 0;
}

static int lex_putc(struct grub_lex *lx, char c, struct p2v_err *err)
{
    if (lx->blen >= BOOTPARSE_STMT_MAX)
        return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: statement longer than %u bytes",
                           lx->stmt_line, BOOTPARSE_STMT_MAX);
    lx->buf[lx->blen++] = c;
    return 0;
}

static bool is_name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/* Expand the variable reference at lx->pos (just after '$'). */
static int lex_dollar(struct grub_lex *lx, struct p2v_err *err)
{
    const char *t = lx->text;
    size_t start, n;
    if (lx->pos < lx->len && t[lx->pos] == '{') {
        const char *close = memchr(t + lx->pos, '}', lx->len - lx->pos);
        const char *nl = memchr(t + lx->pos, '\n', lx->len - lx->pos);
        if (!close || (nl && nl < close))
            return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: unterminated '${'", lx->line);
        start = lx->pos + 1;
        n = (size_t)(close - (t + start));
        lx->pos = (size_t)(close - t) + 1;
    } else if (lx->pos < lx->len && (is_name_char(t[lx->pos]) || t[lx->pos] == '?' ||
                                     t[lx->pos] == '#' || t[lx->pos] == '@' ||
                                     t[lx->pos] == '*')) {
        start = lx->pos;
        if (is_name_char(t[lx->pos]))
            while (lx->pos < lx->len && is_name_char(t[lx->pos]))
                lx->pos++;
        else
            lx->pos++;
        n = lx->pos - start;
    } else {
        return lex_putc(lx, '$', err); /* a lone '$' is literal */
    }
    const char *v = grub_var_get(lx, t + start, n);
    for (; v && *v; v++)
        if (lex_putc(lx, *v, err) < 0)
            return -1;
    return 0;
}

static int lex_end_word(struct grub_lex *lx, bool *in_word, struct p2v_err *err)
{
    if (!*in_word)
        return 0;
    if (lex_putc(lx, '\0', err) < 0)
        return -1;
    *in_word = false;
    lx->nwords++;
    return 0;
}

static int lex_begin_word(struct grub_lex *lx, bool *in_word, struct p2v_err *err)
{
    if (*in_word)
        return 0;
    if (lx->nwords == BOOTPARSE_WORDS_MAX)
        return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: more than %d words",
                           lx->stmt_line, BOOTPARSE_WORDS_MAX);
    lx->word_off[lx->nwords] = lx->blen;
    lx->word_quoted[lx->nwords] = false;
    *in_word = true;
    return 0;
}

static const char *lex_word(const struct grub_lex *lx, int i);

/* Read the next statement into lx's words. Returns 1 with a statement (possibly of no
 * words: the caller skips those), 0 at the end of the text, -1 on a lexical error. */
static int grub_lex_next(struct grub_lex *lx, struct p2v_err *err)
{
    const char *t = lx->text;
    bool in_word = false;
    lx->blen = 0;
    lx->nwords = 0;
    /* skip blank space and empty statements */
    while (lx->pos < lx->len && (t[lx->pos] == ' ' || t[lx->pos] == '\t' ||
                                 t[lx->pos] == '\r'))
        lx->pos++;
    if (lx->pos >= lx->len)
        return 0;
    lx->stmt_line = lx->line;
    while (lx->pos < lx->len) {
        char c = t[lx->pos];
        if (c == '\n' || c == ';') {
            lx->pos++;
            if (c == '\n')
                lx->line++;
            break;
        }
        if (c == ' ' || c == '\t' || c == '\r') {
            lx->pos++;
            if (lex_end_word(lx, &in_word, err) < 0)
                return -1;
            /* `menuentry 'x' { linux ...`: an opening brace ends the statement */
            if (lx->nwords && !lx->word_quoted[lx->nwords - 1] &&
                strcmp(lex_word(lx, lx->nwords - 1), "{") == 0)
                break;
            continue;
        }
        /* `... initrd /x }`: a closing brace starts a statement of its own */
        if (c == '}' && !in_word && lx->nwords &&
            (lx->pos + 1 == lx->len || strchr(" \t\r\n;", t[lx->pos + 1])))
            break;
        if (c == '#' && !in_word) {
            while (lx->pos < lx->len && t[lx->pos] != '\n')
                lx->pos++;
            continue;
        }
        if (lex_begin_word(lx, &in_word, err) < 0)
            return -1;
        lx->pos++;
        if (c == '\\') {
            if (lx->pos >= lx->len)
                break;
            char d = t[lx->pos++];
            if (d == '\n') { /* line continuation */
                lx->line++;
                continue;
            }
            if (lex_putc(lx, d, err) < 0)
                return -1;
        } else if (c == '\'') {
            size_t open_line = lx->line;
            lx->word_quoted[lx->nwords] = true;
            while (lx->pos < lx->len && t[lx->pos] != '\'') {
                if (t[lx->pos] == '\n')
                    lx->line++;
                if (lex_putc(lx, t[lx->pos++], err) < 0)
                    return -1;
            }
            if (lx->pos >= lx->len)
                return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: unterminated quote (')",
                                   open_line);
            lx->pos++;
        } else if (c == '"') {
            size_t open_line = lx->line;
            lx->word_quoted[lx->nwords] = true;
            for (;;) {
                if (lx->pos >= lx->len)
                    return p2v_err_set(err, EINVAL,
                                       "grub.cfg: line %zu: unterminated quote (\")",
                                       open_line);
                char d = t[lx->pos++];
                if (d == '"')
                    break;
                if (d == '\n')
                    lx->line++;
                if (d == '\\' && lx->pos < lx->len) {
                    char e = t[lx->pos];
                    if (e == '$' || e == '"' || e == '\\') {
                        lx->pos++;
                        if (lex_putc(lx, e, err) < 0)
                            return -1;
                        continue;
                    }
                    if (e == '\n') {
                        lx->pos++;
                        lx->line++;
                        continue;
                    }
                }
                if (d == '$') {
                    if (lex_dollar(lx, err) < 0)
                        return -1;
                    continue;
                }
                if (lex_putc(lx, d, err) < 0)
                    return -1;
            }
        } else if (c == '$') {
            if (lex_dollar(lx, err) < 0)
                return -1;
        } else {
            if (lex_putc(lx, c, err) < 0)
                return -1;
        }
    }
    if (lex_end_word(lx, &in_word, err) < 0)
        return -1;
    return 1;
}

static const char *lex_word(const struct grub_lex *lx, int i)
{
    return lx->buf + lx->word_off[i];
}

/* An unquoted word that is exactly @s (a reserved word or brace). */
static bool lex_is(const struct grub_lex *lx, int i, const char *s)
{
    return i < lx->nwords && !lx->word_quoted[i] && strcmp(lex_word(lx, i), s) == 0;
}

/* ------------------------------------------------------------------ grub: parser */

struct grub_item {
    char *title, *id;
    int parent;       /* index of the enclosing submenu, -1 at the top */
    bool submenu;
    size_t line;
    char *kernel, *initrd, *cmdline, *root_uuid;
};

struct grub_parse {
    struct grub_item items[BOOTPARSE_ENTRIES_MAX];
    int nitems;
    /* block stack: an item index, or -2 for a function body / other brace block */
    int stack[BOOTPARSE_DEPTH_MAX];
    int depth;
    char *default_value;  /* the last non-empty `set default=` at any level */
    char *global_uuid;    /* a `search --set=root` outside any entry (the first) */
};

static void grub_parse_release(struct grub_parse *gp)
{
    for (int i = 0; i < gp->nitems; i++) {
        struct grub_item *it = &gp->items[i];
        free(it->title);
        free(it->id);
        free(it->kernel);
        free(it->initrd);
        free(it->cmdline);
        free(it->root_uuid);
    }
    free(gp->default_value);
    free(gp->global_uuid);
}

/* The innermost menu entry we are in (not a submenu), or -1. */
static int grub_cur_entry(const struct grub_parse *gp)
{
    for (int d = gp->depth - 1; d >= 0; d--) {
        if (gp->stack[d] == -2)
            return -1; /* in a function body: not part of any entry */
        if (gp->stack[d] >= 0)
            return gp->items[gp->stack[d]].submenu ? -1 : gp->stack[d];
    }
    return -1;
}

static bool grub_in_function(const struct grub_parse *gp)
{
    for (int d = 0; d < gp->depth; d++)
        if (gp->stack[d] == -2)
            return true;
    return false;
}

static int grub_parent(const struct grub_parse *gp)
{
    for (int d = gp->depth - 1; d >= 0; d--)
        if (gp->stack[d] >= 0)
            return gp->stack[d];
    return -1;
}

/* `menuentry|submenu [options] TITLE [ID] {` (the `{` may be on the next statement). */
static int grub_open_item(struct grub_lex *lx, int w0, struct grub_parse *gp, bool submenu,
                          struct p2v_err *err)
{
    const char *kw = submenu ? "submenu" : "menuentry";
    int last = lx->nwords - 1;
    if (!lex_is(lx, last, "{"))
        return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: %s without '{' on its line",
                           lx->stmt_line, kw);
    if (gp->nitems == BOOTPARSE_ENTRIES_MAX)
        return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: more than %d menu entries",
                           lx->stmt_line, BOOTPARSE_ENTRIES_MAX);
    if (gp->depth == BOOTPARSE_DEPTH_MAX)
        return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: blocks nested deeper than %d",
                           lx->stmt_line, BOOTPARSE_DEPTH_MAX);
    struct grub_item *it = &gp->items[gp->nitems];
    memset(it, 0, sizeof(*it));
    it->parent = grub_parent(gp);
    it->submenu = submenu;
    it->line = lx->stmt_line;
    const char *title = NULL, *id = NULL;
    for (int i = w0 + 1; i < last; i++) {
        const char *w = lex_word(lx, i);
        if (strncmp(w, "--", 2) == 0) {
            if (strncmp(w, "--id=", 5) == 0)
                id = w + 5;
            else if (strcmp(w, "--id") == 0 && i + 1 < last)
                id = lex_word(lx, ++i);
            else if (!strchr(w, '=') &&
                     (strcmp(w, "--class") == 0 || strcmp(w, "--users") == 0 ||
                      strcmp(w, "--hotkey") == 0 || strcmp(w, "--source") == 0) &&
                     i + 1 < last)
                i++;
            continue;
        }
        if (!title)
            title = w;
        else if (!id)
            id = w; /* grub-mkconfig's `$menuentry_id_option 'id'` when the option is "" */
    }
    if (!title)
        return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: %s without a title",
                           lx->stmt_line, kw);
    it->title = xstrndup(title, strlen(title), err);
    if (!it->title)
        return -1;
    if (id && !(it->id = xstrndup(id, strlen(id), err))) {
        free(it->title);
        return -1;
    }
    gp->stack[gp->depth++] = gp->nitems++;
    return 0;
}

/* Join words [from, to) with single spaces. */
static char *join_words(const struct grub_lex *lx, int from, int to, struct p2v_err *err)
{
    size_t n = 0;
    for (int i = from; i < to; i++)
        n += strlen(lex_word(lx, i)) + 1;
    char *s = malloc(n + 1);
    if (!s) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    size_t o = 0;
    for (int i = from; i < to; i++) {
        const char *w = lex_word(lx, i);
        if (!*w)
            continue; /* an expansion to nothing */
        if (o)
            s[o++] = ' ';
        size_t l = strlen(w);
        memcpy(s + o, w, l);
        o += l;
    }
    s[o] = '\0';
    return s;
}

/* `search [opts] [--set=root|--set root] UUID`: the UUID when it sets root by fs-uuid. */
static const char *grub_search_uuid(const struct grub_lex *lx, int w0)
{
    bool by_uuid = false, sets_root = false;
    const char *arg = NULL;
    for (int i = w0 + 1; i < lx->nwords; i++) {
        const char *w = lex_word(lx, i);
        if (strcmp(w, "--fs-uuid") == 0 || strcmp(w, "-u") == 0)
            by_uuid = true;
        else if (strcmp(w, "--set=root") == 0)
            sets_root = true;
        else if ((strcmp(w, "--set") == 0 || strcmp(w, "-s") == 0) && i + 1 < lx->nwords) {
            sets_root = strcmp(lex_word(lx, ++i), "root") == 0;
        } else if (strncmp(w, "--hint", 6) == 0) {
            if (!strchr(w, '=') && i + 1 < lx->nwords)
                i++;
        } else if (w[0] == '-') {
            continue;
        } else if (!arg && *w) {
            arg = w;
        }
    }
    /* grub-mkconfig writes `search ... --set=root UUID`; a bare `search.fs_uuid` too */
    if (strcmp(lex_word(lx, w0), "search.fs_uuid") == 0) {
        by_uuid = true;
        if (!sets_root) {
            /* search.fs_uuid UUID VAR */
            sets_root = true;
        }
    }
    return by_uuid && sets_root ? arg : NULL;
}

static int grub_statement(struct grub_lex *lx, struct grub_parse *gp, struct p2v_err *err)
{
    int w0 = 0;
    /* reserved words that lead a command: `then linux ...`, `else set ...`, `do ...` */
    while (w0 < lx->nwords && (lex_is(lx, w0, "then") || lex_is(lx, w0, "else") ||
                               lex_is(lx, w0, "do")))
        w0++;
    if (w0 >= lx->nwords)
        return 0;
    const char *cmd = lex_word(lx, w0);
    if (lex_is(lx, w0, "}")) {
        if (gp->depth == 0)
            return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: '}' without a block",
                               lx->stmt_line);
        gp->depth--;
        return 0;
    }
    if (lex_is(lx, w0, "if") || lex_is(lx, w0, "elif") || lex_is(lx, w0, "while") ||
        lex_is(lx, w0, "until") || lex_is(lx, w0, "for") || lex_is(lx, w0, "fi") ||
        lex_is(lx, w0, "done"))
        return 0; /* conditions and loop heads: ignored */
    if (lex_is(lx, w0, "function") ||
        (lex_is(lx, lx->nwords - 1, "{") &&
         (grub_in_function(gp) ||
          (strcmp(cmd, "menuentry") != 0 && strcmp(cmd, "submenu") != 0)))) {
        if (!lex_is(lx, lx->nwords - 1, "{"))
            return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: function without '{'",
                               lx->stmt_line);
        if (gp->depth == BOOTPARSE_DEPTH_MAX)
            return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: blocks nested deeper than %d",
                               lx->stmt_line, BOOTPARSE_DEPTH_MAX);
        gp->stack[gp->depth++] = -2;
        return 0;
    }
    if (grub_in_function(gp))
        return 0;
    if (strcmp(cmd, "menuentry") == 0 || strcmp(cmd, "submenu") == 0) {
        if (grub_cur_entry(gp) >= 0)
            return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: %s inside a menuentry",
                               lx->stmt_line, cmd);
        return grub_open_item(lx, w0, gp, cmd[0] == 's', err);
    }

    /* assignments: `set name=value` or `name=value` */
    const char *assign = NULL;
    if (strcmp(cmd, "set") == 0 && w0 + 1 < lx->nwords)
        assign = lex_word(lx, w0 + 1);
    else if (strchr(cmd, '=') && is_name_char(cmd[0])) /* `name="value"` is quoted too */
        assign = cmd;
    if (assign) {
        const char *eq = strchr(assign, '=');
        if (!eq)
            return 0;
        char name[64];
        size_t n = (size_t)(eq - assign);
        if (n == 0 || n >= sizeof(name))
            return 0;
        memcpy(name, assign, n);
        name[n] = '\0';
        if (grub_var_set(lx, name, eq + 1, err) < 0)
            return -1;
        if (strcmp(name, "default") == 0 && eq[1]) {
            char *v = xstrndup(eq + 1, strlen(eq + 1), err);
            if (!v)
                return -1;
            free(gp->default_value);
            gp->default_value = v;
        }
        return 0;
    }

    int cur = grub_cur_entry(gp);
    if (strcmp(cmd, "search") == 0 || strcmp(cmd, "search.fs_uuid") == 0) {
        const char *uuid = grub_search_uuid(lx, w0);
        if (!uuid)
            return 0;
        char **dst = cur >= 0 ? &gp->items[cur].root_uuid
                              : (gp->depth == 0 ? &gp->global_uuid : NULL);
        if (dst && !*dst && !(*dst = xstrndup(uuid, strlen(uuid), err)))
            return -1;
        return 0;
    }
    if (cur < 0)
        return 0;
    struct grub_item *it = &gp->items[cur];
    if (strcmp(cmd, "linux") == 0 || strcmp(cmd, "linux16") == 0 ||
        strcmp(cmd, "linuxefi") == 0) {
        if (it->kernel)
            return 0;
        if (w0 + 1 >= lx->nwords)
            return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: %s without a path",
                               lx->stmt_line, cmd);
        const char *path = strip_device(lex_word(lx, w0 + 1));
        if (!*path)
            return p2v_err_set(err, EINVAL, "grub.cfg: line %zu: %s with an empty path",
                               lx->stmt_line, cmd);
        if (!(it->kernel = xstrndup(path, strlen(path), err)))
            return -1;
        if (!(it->cmdline = join_words(lx, w0 + 2, lx->nwords, err)))
            return -1;
        return 0;
    }
    if (strcmp(cmd, "initrd") == 0 || strcmp(cmd, "initrd16") == 0 ||
        strcmp(cmd, "initrdefi") == 0) {
        if (it->initrd)
            return 0;
        for (int i = w0 + 1; i < lx->nwords; i++) {
            const char *w = lex_word(lx, i);
            if (strncmp(w, "--", 2) == 0 || !*w)
                continue; /* e.g. --nounzip */
            const char *path = strip_device(w);
            if (!*path)
                continue;
            return (it->initrd = xstrndup(path, strlen(path), err)) ? 0 : -1;
        }
        return 0;
    }
    return 0;
}

static bool all_digits(const char *s, size_t n)
{
    if (n == 0 || n > 6)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* The item under @parent selected by one component of a default: a number, a title or
 * an id; -1 when none. */
static int grub_find_child(const struct grub_parse *gp, int parent, const char *s, size_t n)
{
    if (all_digits(s, n)) {
        int want = atoi(s), k = 0;
        for (int i = 0; i < gp->nitems; i++)
            if (gp->items[i].parent == parent && k++ == want)
                return i;
        return -1;
    }
    for (int i = 0; i < gp->nitems; i++) {
        const struct grub_item *it = &gp->items[i];
        if (it->parent != parent)
            continue;
        if ((strlen(it->title) == n && memcmp(it->title, s, n) == 0) ||
            (it->id && strlen(it->id) == n && memcmp(it->id, s, n) == 0))
            return i;
    }
    return -1;
}

/* The first entry at or under item @i (a submenu's first child, recursively). */
static int grub_descend(const struct grub_parse *gp, int i)
{
    while (i >= 0 && gp->items[i].submenu) {
        int child = -1;
        for (int j = i + 1; j < gp->nitems; j++)
            if (gp->items[j].parent == i) {
                child = j;
                break;
            }
        i = child;
    }
    return i;
}

/* GRUB's `default`: "N", "title", "id", or a path "A>B>C" through submenus. Anything
 * else (empty, "saved", an unknown title) falls back to the first entry, as GRUB does. */
static int grub_select(const struct grub_parse *gp)
{
    const char *d = gp->default_value;
    int sel = -1;
    if (d && *d && strcmp(d, "saved") != 0) {
        int parent = -1;
        const char *p = d;
        for (;;) {
            const char *gt = strchr(p, '>');
            size_t n = gt ? (size_t)(gt - p) : strlen(p);
            sel = grub_find_child(gp, parent, p, n);
            if (sel < 0 || !gt)
                break;
            parent = sel;
            p = gt + 1;
        }
        if (sel < 0 && !strchr(d, '>')) {
            /* a title or id of an entry inside a submenu */
            for (int i = 0; i < gp->nitems && sel < 0; i++)
                if (!gp->items[i].submenu &&
                    (strcmp(gp->items[i].title, d) == 0 ||
                     (gp->items[i].id && strcmp(gp->items[i].id, d) == 0)))
                    sel = i;
        }
        if (sel < 0)
            p2v_log(P2V_LOG_DEBUG, "grub.cfg: default '%s' names no entry: taking the first",
                    d);
    }
    if (sel < 0)
        sel = grub_find_child(gp, -1, "0", 1);
    return grub_descend(gp, sel);
}

int vmm_grub_parse(const char *text, size_t len, struct vmm_bootentry *e, struct p2v_err *err)
{
    int r = -1;
    struct grub_lex *lx = NULL;
    struct grub_parse *gp = NULL;
    struct vmm_bootentry out = {0};

    if (text_check("grub.cfg", text, len, err) < 0)
        return -1;
    lx = calloc(1, sizeof(*lx));
    gp = calloc(1, sizeof(*gp));
    if (!lx || !gp || !(lx->buf = malloc(BOOTPARSE_STMT_MAX + 1))) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    lx->text = text;
    lx->len = len;
    lx->line = 1;
    for (;;) {
        int n = grub_lex_next(lx, err);
        if (n < 0)
            goto out;
        if (n == 0)
            break;
        if (lx->nwords && grub_statement(lx, gp, err) < 0)
            goto out;
    }
    if (gp->depth > 0) {
        int open = -1;
        for (int d = gp->depth - 1; d >= 0 && open < 0; d--)
            open = gp->stack[d];
        if (open >= 0)
            p2v_err_set(err, EINVAL, "grub.cfg: line %zu: %s '%s' is not closed by '}'",
                        gp->items[open].line, gp->items[open].submenu ? "submenu" : "menuentry",
                        gp->items[open].title);
        else
            p2v_err_set(err, EINVAL, "grub.cfg: line %zu: a block is not closed by '}'",
                        lx->line);
        goto out;
    }
    int sel = grub_select(gp);
    if (sel < 0) {
        p2v_err_set(err, ENOENT, "grub.cfg: no menuentry found (%zu lines)",
                    lx->line - (len && text[len - 1] == '\n'));
        goto out;
    }
    struct grub_item *it = &gp->items[sel];
    if (!it->kernel) {
        p2v_err_set(err, EINVAL, "grub.cfg: line %zu: menuentry '%s' has no linux command",
                    it->line, it->title);
        goto out;
    }
    const char *uuid = it->root_uuid ? it->root_uuid : gp->global_uuid;
    if (!(out.title = xstrndup(it->title, strlen(it->title), err)) ||
        !(out.kernel = xstrndup(it->kernel, strlen(it->kernel), err)) ||
        !(out.cmdline = xstrndup(it->cmdline, strlen(it->cmdline), err)) ||
        (it->initrd && !(out.initrd = xstrndup(it->initrd, strlen(it->initrd), err))) ||
        (uuid && !(out.root_uuid = xstrndup(uuid, strlen(uuid), err))))
        goto out;
    *e = out;
    memset(&out, 0, sizeof(out));
    r = 0;
out:
    vmm_bootentry_release(&out);
    if (lx) {
        for (int i = 0; i < lx->nvars; i++) {
            free(lx->vars[i].name);
            free(lx->vars[i].value);
        }
        free(lx->buf);
    }
    if (gp)
        grub_parse_release(gp);
    free(lx);
    free(gp);
    return r;
}

/* ------------------------------------------------------------------ extlinux */

struct ext_label {
    char *name, *kernel, *kernel_args, *initrd, *append;
    bool has_append;
    size_t line;
};

static char *trim_dup(const char *s, size_t n, struct p2v_err *err)
{
    while (n && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    return xstrndup(s, n, err);
}

/* Split "PATH ARGS" into its first word and the rest (both malloc'd). */
static int split_first(const char *s, char **first, char **rest, struct p2v_err *err)
{
    size_t n = strcspn(s, " \t");
    *first = xstrndup(s, n, err);
    *rest = *first ? trim_dup(s + n, strlen(s + n), err) : NULL;
    if (!*first || !*rest) {
        free(*first);
        *first = NULL;
        return -1;
    }
    return 0;
}

/* The first path of an `initrd=a,b` word in @append, or NULL. */
static char *append_initrd(const char *append, struct p2v_err *err, bool *failed)
{
    const char *p = append;
    *failed = false;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = strcspn(p, " \t");
        if (n > 7 && strncmp(p, "initrd=", 7) == 0) {
            size_t m = strcspn(p + 7, ", \t");
            if (m == 0)
                return NULL;
            char *r = xstrndup(p + 7, m, err);
            *failed = !r;
            return r;
        }
        p += n;
    }
    return NULL;
}

/* Join "a" and "b" with a space, either may be empty. */
static char *join2(const char *a, const char *b, struct p2v_err *err)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 2);
    if (!s) {
        p2v_err_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(s, a, la);
    size_t o = la;
    if (la && lb)
        s[o++] = ' ';
    memcpy(s + o, b, lb);
    s[o + lb] = '\0';
    return s;
}

int vmm_extlinux_parse(const char *text, size_t len, struct vmm_bootentry *e,
                       struct p2v_err *err)
{
    int r = -1, n = 0;
    struct ext_label *labels = NULL;
    char *deflt = NULL, *gappend = NULL, *line = NULL;
    size_t default_line = 0;
    struct vmm_bootentry out = {0};

    if (text_check("extlinux.conf", text, len, err) < 0)
        return -1;
    labels = calloc(BOOTPARSE_ENTRIES_MAX, sizeof(*labels));
    line = malloc(BOOTPARSE_LINE_MAX + 1);
    if (!labels || !line) {
        p2v_err_set(err, ENOMEM, "out of memory");
        goto out;
    }
    size_t lineno = 0, pos = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - (text + pos)) : len - pos;
        memcpy(line, text + pos, ll); /* ll <= BOOTPARSE_LINE_MAX: text_check */
        line[ll] = '\0';
        pos += ll + (nl != NULL);
        lineno++;
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#')
            continue;
        size_t kl = strcspn(p, " \t\r");
        char *arg = p + kl;
        while (isspace((unsigned char)*arg))
            arg++;
        size_t al = strlen(arg);
        while (al && isspace((unsigned char)arg[al - 1]))
            arg[--al] = '\0';
        struct ext_label *cur = n ? &labels[n - 1] : NULL;
#define KW(s) (kl == strlen(s) && strncasecmp(p, s, kl) == 0)
        if (KW("label")) {
            if (n == BOOTPARSE_ENTRIES_MAX) {
                p2v_err_set(err, EINVAL, "extlinux.conf: line %zu: more than %d labels",
                            lineno, BOOTPARSE_ENTRIES_MAX);
                goto out;
            }
            if (!al) {
                p2v_err_set(err, EINVAL, "extlinux.conf: line %zu: LABEL without a name",
                            lineno);
                goto out;
            }
            labels[n].line = lineno;
            if (!(labels[n++].name = xstrndup(arg, al, err)))
                goto out;
        } else if (KW("default")) {
            free(deflt);
            default_line = lineno;
            if (!(deflt = xstrndup(arg, al, err)))
                goto out;
        } else if (KW("kernel") || KW("linux")) {
            if (!al) {
                p2v_err_set(err, EINVAL, "extlinux.conf: line %zu: %.*s without a path",
                            lineno, (int)kl, p);
                goto out;
            }
            if (cur && !cur->kernel &&
                split_first(arg, &cur->kernel, &cur->kernel_args, err) < 0)
                goto out;
        } else if (KW("initrd")) {
            if (cur && !cur->initrd && al) {
                size_t m = strcspn(arg, ",");
                if (!(cur->initrd = xstrndup(arg, m, err)))
                    goto out;
            }
        } else if (KW("append")) {
            /* "APPEND -": no options at all (not even the global ones) */
            char **dst = cur ? &cur->append : &gappend;
            if (cur)
                cur->has_append = true;
            if (strcmp(arg, "-") == 0)
                al = 0;
            free(*dst);
            if (!(*dst = xstrndup(arg, al, err)))
                goto out;
        }
        /* UI, MENU, PROMPT, TIMEOUT, SERIAL, SAY, ONTIMEOUT, INCLUDE, ...: ignored */
#undef KW
    }

    const struct ext_label *sel = NULL;
    bool default_is_cmd = false;
    if (deflt && *deflt) {
        for (int i = 0; i < n && !sel; i++)
            if (strcmp(labels[i].name, deflt) == 0)
                sel = &labels[i];
        for (int i = 0; i < n && !sel; i++)
            if (strcasecmp(labels[i].name, deflt) == 0)
                sel = &labels[i];
        /* no LABEL of that name: DEFAULT is a command line, unless it names a menu module */
        size_t dl = strcspn(deflt, " \t");
        if (!sel && !(dl > 4 && strncasecmp(deflt + dl - 4, ".c32", 4) == 0))
            default_is_cmd = true;
    }
    if (!sel && !default_is_cmd && n)
        sel = &labels[0];
    if (default_is_cmd) {
        char *args = NULL;
        bool failed;
        if (split_first(deflt, &out.kernel, &args, err) < 0)
            goto out;
        out.cmdline = join2(args, gappend ? gappend : "", err);
        free(args);
        if (!out.cmdline)
            goto out;
        out.initrd = append_initrd(out.cmdline, err, &failed);
        if (failed)
            goto out;
        p2v_log(P2V_LOG_DEBUG, "extlinux.conf: line %zu: DEFAULT is a command line",
                default_line);
    } else if (sel) {
        if (!sel->kernel) {
            p2v_err_set(err, EINVAL,
                        "extlinux.conf: line %zu: label '%s' has no KERNEL or LINUX line",
                        sel->line, sel->name);
            goto out;
        }
        const char *app = sel->has_append ? sel->append : (gappend ? gappend : "");
        bool failed;
        if (!(out.title = xstrndup(sel->name, strlen(sel->name), err)) ||
            !(out.kernel = xstrndup(sel->kernel, strlen(sel->kernel), err)) ||
            !(out.cmdline = join2(sel->kernel_args, app, err)))
            goto out;
        if (sel->initrd) {
            if (!(out.initrd = xstrndup(sel->initrd, strlen(sel->initrd), err)))
                goto out;
        } else {
            out.initrd = append_initrd(out.cmdline, err, &failed);
            if (failed)
                goto out;
        }
    } else {
        p2v_err_set(err, ENOENT, "extlinux.conf: no LABEL or DEFAULT found (%zu lines)",
                    lineno);
        goto out;
    }
    *e = out;
    memset(&out, 0, sizeof(out));
    r = 0;
out:
    vmm_bootentry_release(&out);
    if (labels)
        for (int i = 0; i < n; i++) {
            free(labels[i].name);
            free(labels[i].kernel);
            free(labels[i].kernel_args);
            free(labels[i].initrd);
            free(labels[i].append);
        }
    free(labels);
    free(deflt);
    free(gappend);
    free(line);
    return r;
}
