/* events.c: what the agent tells its caller — JSON events on stdout (--json, one object
 * per line), the per-disk progress (a bar, lines, or progress events), the final
 * statistics (the "finished" event and the --report file) and errors (a log line, an
 * "error" event, and the report with the error in it).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

void agent_event_begin(struct agent_event *e, const char *name)
{
    p2v_buf_init(&e->buf, 0);
    p2v_json_init(&e->j, &e->buf, false);
    p2v_json_object_begin(&e->j);
    p2v_json_kv_string(&e->j, "event", name);
}

void agent_event_end(const struct agent *a, struct agent_event *e)
{
    p2v_json_object_end(&e->j);
    if (a->o.json) {
        p2v_buf_put(&e->buf, "\n", 1);
        fwrite(e->buf.data, 1, e->buf.len, stdout);
        fflush(stdout);
    }
    p2v_buf_release(&e->buf);
}

/* The statistics shared by the finished event, the error event's report and the local
 * mode. */
static void stats_json(const struct agent *a, struct p2v_json *j)
{
    const struct agent_stats *s = &a->st;
    p2v_json_kv_u64(j, "bytes-planned", s->bytes_planned);
    p2v_json_kv_u64(j, "bytes-read", s->bytes_read);
    if (a->o.mode == AGENT_MODE_REMOTE) {
        p2v_json_kv_u64(j, "bytes-sent", s->bytes_sent);
        p2v_json_kv_u64(j, "payload-bytes", s->payload_bytes);
        p2v_json_kv_u64(j, "wire-bytes", s->wire_bytes);
        p2v_json_kv_u64(j, "resumed-bytes", s->resumed_bytes);
        p2v_json_kv_u64(j, "reconnects", s->reconnects);
        p2v_json_kv_u64(j, "lost-max", s->lost_max);
        p2v_json_kv_string(j, "compress-mode", a->o.compress_auto ? "auto" : "fixed");
        p2v_json_key(j, "compress-levels");
        p2v_json_object_begin(j);
        for (size_t i = 0; i < s->nlevels; i++) {
            char name[16];
            p2v_json_kv_u64(j, agent_level_name(s->levels[i].level, name, sizeof name),
                            s->levels[i].bytes);
        }
        p2v_json_object_end(j);
        p2v_json_kv_i64(j, "compress-level-final", s->level_final);
        p2v_json_kv_u64(j, "compress-level-changes", s->level_changes);
    } else {
        p2v_json_kv_u64(j, "bytes-written", s->bytes_written);
    }
    p2v_json_key(j, "bad-sectors");
    p2v_json_array_begin(j);
    for (size_t i = 0; i < a->nbad; i++) {
        p2v_json_object_begin(j);
        p2v_json_kv_u64(j, "disk", a->bad[i].disk);
        p2v_json_kv_u64(j, "offset", a->bad[i].off);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    p2v_json_kv_double(j, "seconds", p2v_now() - s->start);
    p2v_json_kv_string(j, "hash", a->hash_name ? a->hash_name : "none");
}

/* Write @text to @path through a temporary file and a rename. */
static int write_report(const char *path, const struct p2v_buf *text)
{
    char tmp[4200];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp) {
        p2v_error("report file name '%s' is too long", path);
        return -1;
    }
    FILE *fp = fopen(tmp, "we");
    if (!fp) {
        p2v_error("cannot write the report '%s': %s", tmp, strerror(errno));
        return -1;
    }
    bool ok = fwrite(text->data, 1, text->len, fp) == text->len;
    ok = fflush(fp) == 0 && ok;
    ok = fsync(fileno(fp)) == 0 && ok;
    ok = fclose(fp) == 0 && ok;
    if (!ok || rename(tmp, path) < 0) {
        p2v_error("cannot write the report '%s': %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* The event object (finished or error), on stdout with --json and into --report. */
static int emit_final(struct agent *a, const char *event, const char *job,
                      void (*extra)(struct agent *, struct p2v_json *), const char *code,
                      int exit_code, const char *message)
{
    int r = 0;
    for (int pass = 0; pass < 2; pass++) {
        bool report = pass == 1;
        if (report && !a->o.report)
            break;
        if (!report && !a->o.json)
            continue;
        struct p2v_buf buf = P2V_BUF_INIT;
        struct p2v_json j;
        p2v_json_init(&j, &buf, report);
        p2v_json_object_begin(&j);
        p2v_json_kv_string(&j, "event", event);
        if (code) {
            p2v_json_kv_string(&j, "code", code);
            p2v_json_kv_i64(&j, "exit", exit_code);
            p2v_json_kv_string(&j, "message", message);
        }
        if (a->o.mode == AGENT_MODE_REMOTE) {
            p2v_json_kv_string(&j, "job", job && *job ? job : NULL);
            p2v_json_kv_string(&j, "name", a->o.name);
        }
        if (!code || report)
            stats_json(a, &j);
        if (extra)
            extra(a, &j);
        if (a->o.live || a->crash_inconsistent)
            agent_live_json(a, &j);
        p2v_json_object_end(&j);
        p2v_buf_put(&buf, "\n", 1);
        if (report) {
            if (write_report(a->o.report, &buf) < 0)
                r = -1;
        } else {
            fwrite(buf.data, 1, buf.len, stdout);
            fflush(stdout);
        }
        p2v_buf_release(&buf);
    }
    return r;
}

int agent_finish(struct agent *a, const char *job,
                 void (*extra)(struct agent *, struct p2v_json *))
{
    return emit_final(a, "finished", job, extra, NULL, 0, NULL) < 0 ? AGENT_EXIT_FAIL : 0;
}

int agent_fail(struct agent *a, int exit_code, const char *code, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p2v_error("%s", msg);
    if (a->o.mode == AGENT_MODE_REMOTE || a->o.mode == AGENT_MODE_LOCAL)
        emit_final(a, "error", a->job, NULL, code, exit_code, msg);
    else if (a->o.json)
        emit_final(a, "error", NULL, NULL, code, exit_code, msg);
    return exit_code;
}

static int bad_cmp(const void *x, const void *y)
{
    const struct agent_bad *p = x, *q = y;
    if (p->disk != q->disk)
        return p->disk < q->disk ? -1 : 1;
    return p->off < q->off ? -1 : p->off > q->off;
}

void agent_add_bad(struct agent *a, uint32_t disk, const uint64_t *offs, size_t n)
{
    if (n == 0)
        return;
    size_t need;
    if (P2V_ADD_OVERFLOW(a->nbad, n, &need))
        abort();
    if (need > a->bad_cap) {
        size_t cap = P2V_MAX(need, a->bad_cap * 2);
        struct agent_bad *nb = realloc(a->bad, cap * sizeof *nb);
        if (!nb) {
            p2v_warn("out of memory recording %zu bad sectors", n);
            return;
        }
        a->bad = nb;
        a->bad_cap = cap;
    }
    for (size_t i = 0; i < n; i++)
        a->bad[a->nbad++] = (struct agent_bad){disk, offs[i]};
    /* a sector met again after a resume is listed once */
    qsort(a->bad, a->nbad, sizeof *a->bad, bad_cmp);
    size_t w = 0;
    for (size_t i = 0; i < a->nbad; i++)
        if (w == 0 || bad_cmp(&a->bad[w - 1], &a->bad[i]) != 0)
            a->bad[w++] = a->bad[i];
    a->nbad = w;
}

/* ------------------------------------------------------------------ progress */

void agent_progress_init(struct agent_progress *p, const struct agent *a, uint32_t disk,
                         const char *label, uint64_t total, uint64_t base)
{
    enum p2v_progress_mode m = a->o.json ? P2V_PROGRESS_NONE : a->o.progress;
    p2v_progress_init(&p->pg, m, m == P2V_PROGRESS_JSON ? stdout : stderr, label, total);
    p->a = a;
    p->disk = disk;
    p->t0 = p2v_now();
    p->last = p->t0;
    p->base = base;
    p->pg.done = base;
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    p->has_level = false;
    p->level = 0;
}

void agent_progress_level(struct agent_progress *p, int level)
{
    p->has_level = true;
    p->level = level;
    if (level == 0)
        snprintf(p->pg.label, sizeof p->pg.label, "%.50s zstd none", p->label);
    else
        snprintf(p->pg.label, sizeof p->pg.label, "%.50s zstd %d", p->label, level);
}

void agent_count_level(struct agent *a, int level, uint64_t bytes)
{
    struct agent_stats *s = &a->st;
    size_t i = 0;
    while (i < s->nlevels && s->levels[i].level != level)
        i++;
    if (i == s->nlevels) {
        if (i == P2V_ARRAY_SIZE(s->levels))
            return; /* only a fixed level or the adaptive ladder's few are ever used */
        s->levels[i] = (struct agent_level_bytes){level, 0};
        s->nlevels++;
    }
    s->levels[i].bytes += bytes;
}

static void progress_event(struct agent_progress *p, double now)
{
    struct agent_event e;
    double el = now - p->t0;
    uint64_t done = p->pg.done, total = p->pg.total;
    double rate = el > 0 && done > p->base ? (double)(done - p->base) / el : 0;
    agent_event_begin(&e, "progress");
    p2v_json_kv_u64(&e.j, "disk", p->disk);
    p2v_json_kv_u64(&e.j, "done", done);
    p2v_json_kv_u64(&e.j, "total", total);
    p2v_json_kv_double(&e.j, "rate", rate);
    if (p->has_level)
        p2v_json_kv_i64(&e.j, "compress-level", p->level);
    p2v_json_key(&e.j, "eta");
    if (done >= total)
        p2v_json_double(&e.j, 0);
    else if (rate > 0)
        p2v_json_double(&e.j, (double)(total - done) / rate);
    else
        p2v_json_null(&e.j);
    agent_event_end(p->a, &e);
}

void agent_progress_update(struct agent_progress *p, uint64_t done)
{
    p2v_progress_update(&p->pg, done);
    if (!p->a->o.json)
        return;
    double now = p2v_now();
    if (now - p->last < 1.0)
        return;
    p->last = now;
    progress_event(p, now);
}

void agent_progress_finish(struct agent_progress *p, bool ok)
{
    p2v_progress_finish(&p->pg, ok);
    if (p->a->o.json && ok)
        progress_event(p, p2v_now());
}
