/* batch.c: migrating a wave of machines — `p2v-server batch add MANIFEST` and
 * `p2v-server batch status`.
 *
 * The manifest is a text file, one machine per line (docs/man/p2v-server.1):
 *
 *     # NAME  [format=LIST] [memory=MiB] [cpus=N]
 *     web01   format=qcow2,ova memory=4096 cpus=2
 *     db01    format=vmdk
 *
 * `batch add` checks the whole file first (nothing is written when a line is wrong),
 * then gives every machine its own join token, kept with its options in
 * STORE/batch/NAME.json (0600). A machine already in the batch keeps its token (its
 * options are updated), so adding the same manifest twice changes nothing for agents
 * already handed a token. An agent that presents a machine's token may only send that
 * machine (the token is bound to the name); its job takes the machine's formats and
 * memory / CPU overrides (store.c, job_create). `batch status` shows the wave: one row
 * per machine with its job's state, progress and verdict.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "p2v-tls.h"
#include "server.h"

#define MANIFEST_MAX (1u << 20)
#define MANIFEST_LINE_MAX 1024
#define BATCH_MAX 10000

/* ---------------------------------------------------------------- the manifest */

/* One line's words: NAME then KEY=VALUE options. 0, 1 (blank or comment), -1. */
static int parse_line(char *line, unsigned lineno, struct srv_batch_entry *e,
                      struct p2v_err *err)
{
    char *save = NULL, *w = strtok_r(line, " \t\r", &save);
    memset(e, 0, sizeof *e);
    if (!w || w[0] == '#')
        return 1;
    if (srv_name_check(w, strlen(w), err) < 0)
        return p2v_err_prefix(err, "line %u: machine name '%.64s'", lineno, w);
    snprintf(e->name, sizeof e->name, "%s", w);
    snprintf(e->format, sizeof e->format, "qcow2");
    while ((w = strtok_r(NULL, " \t\r", &save))) {
        if (w[0] == '#')
            break;
        char *eq = strchr(w, '=');
        unsigned long long n;
        if (!eq)
            return p2v_err_set(err, EINVAL, "line %u: '%.64s' is not KEY=VALUE (format, "
                               "memory, cpus)", lineno, w);
        *eq = '\0';
        const char *k = w, *v = eq + 1;
        if (strcmp(k, "format") == 0) {
            if (srv_parse_formats(v, e->format, e->outputs, err) < 0)
                return p2v_err_prefix(err, "line %u: format", lineno);
            snprintf(e->formats, sizeof e->formats, "%s", v);
        } else if (strcmp(k, "memory") == 0) {
            if (p2v_parse_uint(v, 64, 1024 * 1024, &n) < 0)
                return p2v_err_set(err, EINVAL, "line %u: memory '%.32s' is not a number of "
                                   "MiB from 64 to 1048576", lineno, v);
            e->memory_mib = n;
        } else if (strcmp(k, "cpus") == 0) {
            if (p2v_parse_uint(v, 1, 255, &n) < 0)
                return p2v_err_set(err, EINVAL, "line %u: cpus '%.32s' is not a number from "
                                   "1 to 255", lineno, v);
            e->cpus = (unsigned)n;
        } else {
            return p2v_err_set(err, EINVAL, "line %u: unknown option '%.32s' (format, memory, "
                               "cpus)", lineno, k);
        }
    }
    return 0;
}

int srv_batch_parse(const char *text, size_t len, struct srv_batch_entry **out, size_t *n,
                    struct p2v_err *err)
{
    struct srv_batch_entry *v = NULL;
    size_t cnt = 0, cap = 0;
    unsigned lineno = 0;
    *out = NULL;
    *n = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - (text + pos)) : len - pos;
        char line[MANIFEST_LINE_MAX + 1];
        lineno++;
        if (ll > MANIFEST_LINE_MAX) {
            p2v_err_set(err, EINVAL, "line %u: longer than %u bytes", lineno, MANIFEST_LINE_MAX);
            goto fail;
        }
        if (memchr(text + pos, '\0', ll)) {
            p2v_err_set(err, EINVAL, "line %u: a NUL byte (not a text file)", lineno);
            goto fail;
        }
        memcpy(line, text + pos, ll);
        line[ll] = '\0';
        pos += ll + (nl != NULL);
        struct srv_batch_entry e;
        int r = parse_line(line, lineno, &e, err);
        if (r < 0)
            goto fail;
        if (r > 0)
            continue;
        for (size_t i = 0; i < cnt; i++)
            if (strcmp(v[i].name, e.name) == 0) {
                p2v_err_set(err, EINVAL, "line %u: machine '%s' is listed twice", lineno,
                            e.name);
                goto fail;
            }
        if (cnt == BATCH_MAX) {
            p2v_err_set(err, EINVAL, "more than %u machines", BATCH_MAX);
            goto fail;
        }
        if (cnt == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct srv_batch_entry *nv = realloc(v, nc * sizeof *v);
            if (!nv) {
                p2v_err_set(err, ENOMEM, "out of memory");
                goto fail;
            }
            v = nv;
            cap = nc;
        }
        v[cnt++] = e;
    }
    if (cnt == 0) {
        p2v_err_set(err, EINVAL, "no machine listed");
        goto fail;
    }
    *out = v;
    *n = cnt;
    return 0;
fail:
    free(v);
    return -1;
}

/* ---------------------------------------------------------------- batch/NAME.json */

static int entry_to_json(const struct srv_batch_entry *e, struct p2v_buf *b)
{
    struct p2v_json j;
    p2v_buf_reset(b);
    p2v_json_init(&j, b, true);
    p2v_json_object_begin(&j);
    p2v_json_kv_string(&j, "name", e->name);
    p2v_json_kv_string(&j, "token", e->token);
    p2v_json_kv_string(&j, "formats", e->formats[0] ? e->formats : e->format);
    p2v_json_kv_u64(&j, "memory-mib", e->memory_mib);
    p2v_json_kv_u64(&j, "cpus", e->cpus);
    p2v_json_object_end(&j);
    if (!p2v_json_complete(&j) || p2v_buf_put(b, "\n", 1) < 0)
        return -1;
    return 0;
}

static int batch_dir(struct srv_store *st, bool make, struct p2v_err *err)
{
    if (make && mkdirat(st->dirfd, "batch", 0700) < 0 && errno != EEXIST)
        return p2v_err_errno(err, "cannot make '%s/batch'", st->path);
    int fd = openat(st->dirfd, "batch", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open '%s/batch'", st->path);
    return fd;
}

int srv_batch_lookup(struct srv_store *st, const char *name, struct srv_batch_entry *e)
{
    struct p2v_err err = {0};
    struct p2v_buf t;
    char file[P2V_PROTO_NAME_MAX + 8];
    int r = -1;
    if (srv_name_check(name, strlen(name), NULL) < 0)
        return -1;
    int fd = openat(st->dirfd, "batch", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    snprintf(file, sizeof file, "%s.json", name);
    p2v_buf_init(&t, 64 * 1024);
    struct jv *v = NULL;
    if (srv_read_file_at(fd, file, 64 * 1024, &t, &err) < 0 ||
        !(v = jv_parse((const char *)t.data, t.len, &err)) || v->type != JV_OBJ)
        goto out;
    const char *tok = jv_str(jv_get(v, "token")), *fm = jv_str(jv_get(v, "formats"));
    uint64_t mem = 0, cpus = 0;
    memset(e, 0, sizeof *e);
    if (!tok || strlen(tok) >= sizeof e->token || !fm ||
        srv_parse_formats(fm, e->format, e->outputs, &err) < 0 ||
        !jv_u64(jv_get(v, "memory-mib"), &mem) || !jv_u64(jv_get(v, "cpus"), &cpus) ||
        mem > 1024 * 1024 || cpus > 255)
        goto out;
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->token, sizeof e->token, "%s", tok);
    snprintf(e->formats, sizeof e->formats, "%s", fm);
    e->memory_mib = mem;
    e->cpus = (unsigned)cpus;
    r = 0;
out:
    jv_free(v);
    p2v_buf_release(&t);
    close(fd);
    return r;
}

bool srv_batch_token_ok(struct srv_store *st, const char *name, const char *tok, size_t len)
{
    struct srv_batch_entry e;
    if (srv_batch_lookup(st, name, &e) < 0)
        return false;
    return srv_secret_equal(e.token, tok, len);
}

/* ---------------------------------------------------------------- commands */

static int read_manifest(const char *path, struct p2v_buf *out, struct p2v_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open the manifest '%s'", path);
    int r = -1;
    for (;;) {
        uint8_t *p = p2v_buf_extend(out, 65536);
        if (!p) {
            p2v_err_set(err, EFBIG, "the manifest '%s' is larger than %u bytes", path,
                        MANIFEST_MAX);
            goto out;
        }
        ssize_t got = read(fd, p, 65536);
        if (got < 0 && errno == EINTR) {
            out->len -= 65536;
            continue;
        }
        if (got < 0) {
            p2v_err_errno(err, "cannot read the manifest '%s'", path);
            goto out;
        }
        out->len -= 65536 - (size_t)got;
        if (got == 0)
            break;
    }
    r = 0;
out:
    close(fd);
    return r;
}

int srv_batch_add(const char *store, const char *manifest, bool json)
{
    struct srv_store st;
    struct p2v_err err = {0};
    struct p2v_buf text, b = P2V_BUF_INIT;
    struct srv_batch_entry *v = NULL;
    size_t n = 0;
    int rc = 1, dfd = -1;
    char fp[P2V_FINGERPRINT_LEN], crt[4096];

    p2v_buf_init(&text, MANIFEST_MAX);
    p2v_buf_init(&b, 64 * 1024);
    if (read_manifest(manifest, &text, &err) < 0 ||
        srv_batch_parse((const char *)text.data, text.len, &v, &n, &err) < 0) {
        p2v_error("%s%s%s", strstr(err.msg, manifest) ? "" : manifest,
                  strstr(err.msg, manifest) ? "" : ": ", err.msg);
        goto out_nostore;
    }
    if (srv_store_open(&st, store, false, &err) < 0) {
        p2v_error("%s", err.msg);
        goto out_nostore;
    }
    snprintf(crt, sizeof crt, "%s/server.crt", st.path);
    if (p2v_tls_cert_fingerprint(crt, fp, &err) < 0) {
        p2v_error("%s", err.msg);
        goto out;
    }
    if ((dfd = batch_dir(&st, true, &err)) < 0) {
        p2v_error("%s", err.msg);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        struct srv_batch_entry old;
        char file[P2V_PROTO_NAME_MAX + 8];
        if (srv_batch_lookup(&st, v[i].name, &old) == 0) {
            snprintf(v[i].token, sizeof v[i].token, "%s", old.token);
        } else if (srv_make_token(v[i].token) < 0) {
            p2v_error("cannot get random bytes for a token: %s", strerror(errno));
            goto out;
        }
        snprintf(file, sizeof file, "%s.json", v[i].name);
        if (entry_to_json(&v[i], &b) < 0 ||
            srv_write_file_at(dfd, file, b.data, b.len, 0600, &err) < 0) {
            p2v_error("batch/%s: %s", file, err.msg[0] ? err.msg : "too large");
            goto out;
        }
    }
    if (json) {
        struct p2v_json j;
        p2v_buf_reset(&b);
        p2v_json_init(&j, &b, false);
        p2v_json_object_begin(&j);
        p2v_json_kv_string(&j, "store", st.path);
        p2v_json_kv_string(&j, "fingerprint", fp);
        p2v_json_key(&j, "machines");
        p2v_json_array_begin(&j);
        for (size_t i = 0; i < n; i++) {
            p2v_json_object_begin(&j);
            p2v_json_kv_string(&j, "name", v[i].name);
            p2v_json_kv_string(&j, "token", v[i].token);
            p2v_json_kv_string(&j, "formats", v[i].formats[0] ? v[i].formats : v[i].format);
            p2v_json_kv_u64(&j, "memory-mib", v[i].memory_mib);
            p2v_json_kv_u64(&j, "cpus", v[i].cpus);
            p2v_json_object_end(&j);
        }
        p2v_json_array_end(&j);
        p2v_json_object_end(&j);
        printf("%s\n", p2v_buf_cstr(&b));
    } else {
        printf("%zu machine(s) in the batch of %s; fingerprint %s\n", n, st.path, fp);
        printf("%-24s %-64s %s\n", "MACHINE", "TOKEN", "FORMATS");
        for (size_t i = 0; i < n; i++)
            printf("%-24s %-64s %s\n", v[i].name, v[i].token,
                   v[i].formats[0] ? v[i].formats : v[i].format);
        printf("each machine: p2v-agent --server HOST:PORT --fingerprint %s --token TOKEN "
               "--name MACHINE\n", fp);
    }
    rc = 0;
out:
    if (dfd >= 0)
        close(dfd);
    srv_store_close(&st);
out_nostore:
    free(v);
    p2v_buf_release(&text);
    p2v_buf_release(&b);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int srv_batch_status(const char *store, bool json)
{
    struct srv_store st;
    struct p2v_err err = {0};
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 1;
    if (srv_store_open(&st, store, false, &err) < 0) {
        p2v_error("%s", err.msg);
        return 1;
    }
    int dfd = openat(st.dirfd, "batch", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        p2v_error("no batch in '%s' (p2v-server batch add --store %s MANIFEST)", st.path,
                  store);
        goto out;
    }
    for (struct dirent *e; (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".json") != 0)
            continue;
        char *nm = strndup(e->d_name, l - 5);
        if (!nm || srv_name_check(nm, strlen(nm), NULL) < 0) {
            free(nm);
            continue;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 32;
            char **nv = realloc(names, nc * sizeof *nv);
            if (!nv) {
                free(nm);
                break;
            }
            names = nv;
            cap = nc;
        }
        names[n++] = nm;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    bool live = srv_store_in_use(store);
    unsigned counts[JOB_FAILED + 2] = {0}; /* by state; [JOB_FAILED + 1]: no job yet */
    struct p2v_buf b = P2V_BUF_INIT;
    struct p2v_json j;
    p2v_buf_init(&b, 0);
    p2v_json_init(&j, &b, false);
    p2v_json_object_begin(&j);
    p2v_json_kv_bool(&j, "server-running", live);
    p2v_json_key(&j, "machines");
    p2v_json_array_begin(&j);
    if (!json)
        printf("%-24s %-12s %6s  %-16s %s\n", "MACHINE", "STATE", "PCT", "VERDICT", "FORMATS");
    for (size_t i = 0; i < n; i++) {
        struct srv_batch_entry e;
        struct p2v_err e2 = {0};
        bool have = srv_batch_lookup(&st, names[i], &e) == 0;
        struct srv_job *job = srv_job_load(&st, names[i], &e2);
        const char *state = job ? srv_job_state_name(job->state) : "waiting";
        uint64_t total = job ? srv_job_bytes_total(job) : 0, done = job ? srv_job_bytes_done(job) : 0;
        unsigned pct = total ? (unsigned)(P2V_MIN(done, total) * 100 / total) : 0;
        if (job && srv_job_captured(job))
            pct = 100;
        counts[job ? job->state : JOB_FAILED + 1]++;
        const char *fm = have ? (e.formats[0] ? e.formats : e.format) : "?";
        if (json) {
            p2v_json_object_begin(&j);
            p2v_json_kv_string(&j, "name", names[i]);
            p2v_json_kv_string(&j, "state", state);
            p2v_json_kv_string(&j, "failed-stage",
                               job && job->state == JOB_FAILED ? job->failed_stage : NULL);
            p2v_json_kv_string(&j, "reason", job && job->state == JOB_FAILED ? job->reason : NULL);
            p2v_json_kv_string(&j, "verdict", job && job->verdict[0] ? job->verdict : NULL);
            p2v_json_kv_u64(&j, "bytes-done", done);
            p2v_json_kv_u64(&j, "bytes-total", total);
            p2v_json_kv_u64(&j, "percent", pct);
            p2v_json_kv_string(&j, "formats", fm);
            p2v_json_object_end(&j);
        } else {
            char stc[48];
            snprintf(stc, sizeof stc, "%s%s", state, live && job && job->active ? "*" : "");
            printf("%-24s %-12s %5u%%  %-16s %s\n", names[i], stc, pct,
                   job && job->verdict[0] ? job->verdict : "-", fm);
        }
        srv_job_free(job);
    }
    p2v_json_array_end(&j);
    p2v_json_key(&j, "counts");
    p2v_json_object_begin(&j);
    for (unsigned s = 0; s <= JOB_FAILED + 1; s++)
        if (counts[s])
            p2v_json_kv_u64(&j, s <= JOB_FAILED ? srv_job_state_name((enum srv_job_state)s)
                                                : "waiting", counts[s]);
    p2v_json_object_end(&j);
    p2v_json_object_end(&j);
    if (json) {
        printf("%s\n", p2v_buf_cstr(&b));
    } else {
        printf("%zu machine(s):", n);
        for (unsigned s = 0; s <= JOB_FAILED + 1; s++)
            if (counts[s])
                printf(" %u %s", counts[s],
                       s <= JOB_FAILED ? srv_job_state_name((enum srv_job_state)s) : "waiting");
        printf("\n");
    }
    p2v_buf_release(&b);
    rc = 0;
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    srv_store_close(&st);
    return rc;
}
