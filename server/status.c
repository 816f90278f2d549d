/* status.c: `p2v-server status` — the jobs of a store, read from their job.json files
 * (the running server rewrites them every second while a session is active), so it works
 * whether or not a server runs. When no server holds the store's lock, nothing is active
 * whatever a job.json left by a killed server says. The JSON of `status --json` is built by
 * srv_status_json(), which the status page (http.c) serves too.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server.h"

struct status_job {
    struct jv *doc;        /* job.json as written */
    struct srv_job job;    /* the same, parsed */
};

static int cmp_job(const void *a, const void *b)
{
    const struct status_job *x = a, *y = b;
    return strcmp(x->job.id, y->job.id);
}

/* Read one job's job.json: 0, -1 when there is no such job, -2 (with a warning when
 * @warn) when its job.json is unreadable. */
static int load_one(struct srv_store *st, const char *id, bool warn, struct status_job *out)
{
    struct p2v_buf text;
    struct p2v_err err = {0};
    int r = -2;
    p2v_buf_init(&text, JV_TEXT_MAX);
    int dfd = openat(st->jobsfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        if (errno == ENOENT)
            r = -1;
        else if (warn)
            p2v_warn("job '%s': %s", id, strerror(errno));
        goto out;
    }
    memset(out, 0, sizeof *out);
    if (srv_read_file_at(dfd, "job.json", JV_TEXT_MAX, &text, &err) < 0 ||
        !(out->doc = jv_parse((const char *)text.data, text.len, &err)) ||
        srv_job_from_json((const char *)text.data, text.len, &out->job, &err) < 0) {
        if (warn)
            p2v_warn("job '%s': job.json: %s", id, err.msg);
        jv_free(out->doc);
        out->doc = NULL;
        goto out;
    }
    out->job.dirfd = -1;
    r = 0;
out:
    if (dfd >= 0)
        close(dfd);
    p2v_buf_release(&text);
    return r;
}

/* A live capture's lag: seconds since the source was last read in full (the start of its
 * last pass), while a session holds the job. */
static bool live_lag(const struct jv *doc, bool live, uint64_t *lag)
{
    const struct jv *lv = jv_get(doc, "live"), *act = jv_get(doc, "active");
    uint64_t synced;
    if (!live || !lv || !act || act->type != JV_BOOL || !act->b ||
        !jv_u64(jv_get(lv, "synced-ms"), &synced))
        return false;
    uint64_t now = (uint64_t)(p2v_wall_now() * 1000);
    *lag = now > synced ? (now - synced) / 1000 : 0;
    return true;
}

/* The job.json object, with "active", "rate" and "eta" corrected when no server runs, and
 * "lag-s" added for a live capture in sync. */
static void write_doc(struct p2v_json *j, const struct jv *doc, bool live)
{
    p2v_json_object_begin(j);
    for (size_t i = 0; i < doc->n; i++) {
        const char *k = doc->keys[i];
        p2v_json_key(j, k);
        if (!live && strcmp(k, "active") == 0)
            p2v_json_bool(j, false);
        else if (!live && strcmp(k, "rate") == 0)
            p2v_json_u64(j, 0);
        else if (!live && strcmp(k, "eta") == 0)
            p2v_json_null(j);
        else
            jv_write(j, &doc->items[i]);
    }
    uint64_t lag;
    if (live_lag(doc, live, &lag))
        p2v_json_kv_u64(j, "lag-s", lag);
    p2v_json_object_end(j);
}

static void free_jobs(struct status_job *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        jv_free(v[i].doc);
    free(v);
}

/* Load job @want, or every job of the store sorted by id (@want NULL); jobs whose
 * job.json cannot be read are left out. 0 / -1 (ENOENT: no job @want). */
static int load_jobs(struct srv_store *st, const char *want, bool warn,
                     struct status_job **vp, size_t *np, struct p2v_err *err)
{
    struct status_job *v = NULL;
    size_t n = 0, cap = 0;
    DIR *d = NULL;
    int r = -1;

    if (want) {
        if (!srv_job_id_ok(want)) {
            p2v_err_set(err, ENOENT, "'%s' is not a job name", want);
            goto out;
        }
        v = calloc(1, sizeof *v);
        if (!v) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out;
        }
        int lr = load_one(st, want, warn, v);
        if (lr == -1) {
            p2v_err_set(err, ENOENT, "no job '%s' in store '%s'", want, st->path);
            goto out;
        }
        if (lr < 0) {
            p2v_err_set(err, EIO, "cannot read job '%s' in store '%s'", want, st->path);
            goto out;
        }
        n = 1;
    } else {
        /* a descriptor of its own: a dup() would share the directory offset of jobsfd */
        int fd = openat(st->jobsfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        d = fd >= 0 ? fdopendir(fd) : NULL;
        if (!d) {
            p2v_err_errno(err, "cannot list '%s/jobs'", st->path);
            if (fd >= 0)
                close(fd);
            goto out;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.' || !srv_job_id_ok(de->d_name))
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                struct status_job *nv = realloc(v, cap * sizeof *v);
                if (!nv) {
                    p2v_err_set(err, ENOMEM, "out of memory");
                    goto out;
                }
                v = nv;
            }
            if (load_one(st, de->d_name, warn, &v[n]) == 0)
                n++;
        }
        if (n)
            qsort(v, n, sizeof *v, cmp_job);
    }
    *vp = v;
    *np = n;
    v = NULL;
    n = 0;
    r = 0;
out:
    if (d)
        closedir(d);
    free_jobs(v, n);
    return r;
}

static void write_json(struct p2v_buf *out, const struct status_job *v, size_t n, bool one,
                       bool live)
{
    struct p2v_json j;
    p2v_json_init(&j, out, true);
    if (one) {
        write_doc(&j, v[0].doc, live);
    } else {
        p2v_json_object_begin(&j);
        p2v_json_key(&j, "jobs");
        p2v_json_array_begin(&j);
        for (size_t i = 0; i < n; i++)
            write_doc(&j, v[i].doc, live);
        p2v_json_array_end(&j);
        p2v_json_object_end(&j);
    }
}

int srv_status_json(struct srv_store *st, const char *job, bool live, bool warn,
                    struct p2v_buf *out, struct p2v_err *err)
{
    struct status_job *v = NULL;
    size_t n = 0;
    if (load_jobs(st, job, warn, &v, &n, err) < 0)
        return -1;
    write_json(out, v, n, job != NULL, live);
    free_jobs(v, n);
    return 0;
}

static void fmt_eta(const struct jv *doc, bool live, char *out, size_t len)
{
    uint64_t eta;
    if (!live || !jv_u64(jv_get(doc, "eta"), &eta)) {
        snprintf(out, len, "-");
        return;
    }
    snprintf(out, len, "%llu:%02llu:%02llu", (unsigned long long)(eta / 3600),
             (unsigned long long)(eta / 60 % 60), (unsigned long long)(eta % 60));
}

static void fmt_rate(const struct status_job *sj, bool live, char *out, size_t len)
{
    uint64_t rate;
    char b[32];
    if (!live || !sj->job.active || !jv_u64(jv_get(sj->doc, "rate"), &rate)) {
        snprintf(out, len, "-");
        return;
    }
    snprintf(out, len, "%s/s", p2v_format_size(rate, b, sizeof b));
}

static void fmt_pct(uint64_t done, uint64_t total, char *out, size_t len)
{
    if (total == 0)
        snprintf(out, len, "-");
    else
        snprintf(out, len, "%u%%", (unsigned)(P2V_MIN(done, total) * 100 / total));
}

static void print_table(struct status_job *v, size_t n, bool live)
{
    printf("%-24s %-10s %-23s %5s %12s %9s\n", "JOB", "STATE", "DONE/TOTAL", "PCT", "RATE",
           "ETA");
    for (size_t i = 0; i < n; i++) {
        const struct srv_job *job = &v[i].job;
        uint64_t done = srv_job_bytes_done(job), total = srv_job_bytes_total(job);
        char d[32], t[32], dt[70], pct[8], rate[40], eta[32];
        snprintf(dt, sizeof dt, "%s/%s", p2v_format_size(done, d, sizeof d),
                 p2v_format_size(total, t, sizeof t));
        fmt_pct(done, total, pct, sizeof pct);
        fmt_rate(&v[i], live, rate, sizeof rate);
        fmt_eta(v[i].doc, live && job->active, eta, sizeof eta);
        const char *state = srv_job_state_name(job->state);
        char st[24];
        snprintf(st, sizeof st, "%s%s", state, live && job->active ? "*" : "");
        printf("%-24s %-10s %-23s %5s %12s %9s\n", job->id, st, dt, pct, rate, eta);
    }
}

static void print_one(const struct status_job *sj, bool live)
{
    const struct srv_job *job = &sj->job;
    uint64_t done = srv_job_bytes_done(job), total = srv_job_bytes_total(job);
    char d[32], t[32], pct[8], rate[40], eta[32], created[32];
    const char *updated = jv_str(jv_get(sj->doc, "updated"));
    fmt_pct(done, total, pct, sizeof pct);
    fmt_rate(sj, live, rate, sizeof rate);
    fmt_eta(sj->doc, live && job->active, eta, sizeof eta);
    srv_iso_time(job->created, created);
    printf("job:        %s\n", job->id);
    printf("machine:    %s\n", job->name);
    printf("source id:  %s\n", job->source_id);
    if (job->state == JOB_FAILED)
        printf("state:      failed (stage %s: %s)\n", job->failed_stage, job->reason);
    else
        printf("state:      %s\n", srv_job_state_name(job->state));
    printf("active:     %s\n", live && job->active ? "yes" : "no");
    printf("progress:   %s / %s (%s)\n", p2v_format_size(done, d, sizeof d),
           p2v_format_size(total, t, sizeof t), pct);
    printf("rate:       %s\n", rate);
    printf("eta:        %s\n", eta);
    const struct jv *lv = jv_get(sj->doc, "live");
    uint64_t pass = 0, rd = 0, sent = 0, dur = 0, frz = 0, lag;
    if (lv && jv_u64(jv_get(lv, "pass"), &pass)) {
        const char *phase = jv_str(jv_get(lv, "phase"));
        const struct jv *cr = jv_get(lv, "cutover-requested");
        jv_u64(jv_get(lv, "bytes-read"), &rd);
        jv_u64(jv_get(lv, "bytes-sent"), &sent);
        jv_u64(jv_get(lv, "duration-ms"), &dur);
        jv_u64(jv_get(lv, "freeze-ms"), &frz);
        printf("live:       pass %llu (%s): %s read, %s sent in %.1f s", (unsigned long long)pass,
               phase ? phase : "?", p2v_format_size(rd, d, sizeof d),
               p2v_format_size(sent, t, sizeof t), (double)dur / 1000);
        if (frz)
            printf("; frozen %llu ms", (unsigned long long)frz);
        if (live_lag(sj->doc, live, &lag))
            printf("; lag %llu s", (unsigned long long)lag);
        if (cr && cr->type == JV_BOOL && cr->b)
            printf("; cutover requested");
        printf("\n");
    }
    printf("received:   %s of data over %llu session(s)\n",
           p2v_format_size(job->bytes_received, d, sizeof d),
           (unsigned long long)job->sessions);
    printf("agent:      %s\n", job->agent[0] ? job->agent : "-");
    printf("format:     %s\n", job->format);
    printf("created:    %s\n", created);
    printf("updated:    %s\n", updated ? updated : "-");
    const struct jv *disks = jv_get(sj->doc, "disks");
    for (size_t i = 0; disks && disks->type == JV_ARR && i < disks->n; i++) {
        const struct jv *o = &disks->items[i];
        uint64_t idx = 0, size = 0, committed = 0, planned = 0;
        jv_u64(jv_get(o, "index"), &idx);
        jv_u64(jv_get(o, "size"), &size);
        jv_u64(jv_get(o, "planned"), &planned);
        jv_u64(jv_get(o, "committed"), &committed);
        const struct jv *c = jv_get(o, "complete");
        const char *file = jv_str(jv_get(o, "file"));
        char s1[32], s2[32], s3[32];
        printf("disk %llu:     %s (%s), %s planned, %s committed%s, %s\n",
               (unsigned long long)idx, jv_str(jv_get(o, "name")) ?: "?",
               p2v_format_size(size, s1, sizeof s1), p2v_format_size(planned, s2, sizeof s2),
               p2v_format_size(committed, s3, sizeof s3),
               c && c->type == JV_BOOL && c->b ? ", complete" : "", file ? file : "?");
    }
}

int srv_status(const char *store, bool json, const char *want)
{
    struct srv_store st;
    struct p2v_err err = {0};
    struct status_job *v = NULL;
    size_t n = 0;
    int rc = 1;

    if (srv_store_open(&st, store, false, &err) < 0) {
        p2v_error("%s", err.msg);
        return 1;
    }
    bool live = srv_store_in_use(st.path);
    if (json) {
        struct p2v_buf b;
        p2v_buf_init(&b, 0);
        if (srv_status_json(&st, want, live, true, &b, &err) < 0) {
            p2v_error("%s", err.msg);
            p2v_buf_release(&b);
            goto out;
        }
        printf("%s\n", p2v_buf_cstr(&b));
        p2v_buf_release(&b);
    } else {
        if (load_jobs(&st, want, true, &v, &n, &err) < 0) {
            p2v_error("%s", err.msg);
            goto out;
        }
        if (want)
            print_one(&v[0], live);
        else if (n == 0)
            printf("no jobs in store '%s'%s\n", st.path, live ? "" : " (no server running)");
        else
            print_table(v, n, live);
        if (!want && n > 0 && !live)
            printf("(no server is running on this store)\n");
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    free_jobs(v, n);
    srv_store_close(&st);
    return rc;
}
