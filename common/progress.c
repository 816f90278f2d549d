/* progress.c: progress of long work — a bar on a TTY, a plain line every few seconds
 * elsewhere, or one JSON event per line for scripts. */
#include <string.h>
#include <unistd.h>

#include "p2v-common.h"

void p2v_progress_init(struct p2v_progress *p, enum p2v_progress_mode mode, FILE *fp,
                       const char *label, uint64_t total)
{
    memset(p, 0, sizeof *p);
    p->fp = fp ? fp : stderr;
    if (mode == P2V_PROGRESS_AUTO)
        mode = isatty(fileno(p->fp)) ? P2V_PROGRESS_BAR : P2V_PROGRESS_LINES;
    p->mode = mode;
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    p->total = total;
    p->start = p2v_now();
    p->last_print = p->start;
    p->interval = mode == P2V_PROGRESS_BAR ? 0.2 : 5.0;
}

static void progress_print(struct p2v_progress *p, double now, bool final)
{
    double elapsed = now - p->start;
    double rate = elapsed > 0 ? (double)p->done / elapsed : 0;
    double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 100.0;
    if (pct > 100.0)
        pct = 100.0;
    double eta = rate > 0 && p->total > p->done ? (double)(p->total - p->done) / rate : 0;
    char done_s[32], total_s[32], rate_s[32];
    p2v_format_size(p->done, done_s, sizeof done_s);
    p2v_format_size(p->total, total_s, sizeof total_s);
    p2v_format_size((uint64_t)rate, rate_s, sizeof rate_s);

    switch (p->mode) {
    case P2V_PROGRESS_BAR: {
        char bar[31];
        int fill = (int)(pct * 30 / 100);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '-';
        bar[30] = '\0';
        fprintf(p->fp, "\r%s [%s] %5.1f%% %s/%s %s/s ETA %02d:%02d%s", p->label, bar, pct,
                done_s, total_s, rate_s, (int)eta / 60, (int)eta % 60, final ? "\n" : "");
        break;
    }
    case P2V_PROGRESS_LINES:
        fprintf(p->fp, "%s: %.1f%% %s of %s, %s/s, ETA %d s\n", p->label, pct, done_s,
                total_s, rate_s, (int)eta);
        break;
    case P2V_PROGRESS_JSON:
        fprintf(p->fp,
                "{\"event\":\"%s\",\"label\":\"%s\",\"done\":%llu,\"total\":%llu,"
                "\"rate\":%.0f,\"eta\":%.0f,\"elapsed\":%.3f}\n",
                final ? "done" : "progress", p->label, (unsigned long long)p->done,
                (unsigned long long)p->total, rate, eta, elapsed);
        break;
    default:
        break;
    }
    fflush(p->fp);
}

void p2v_progress_update(struct p2v_progress *p, uint64_t done)
{
    p->done = done;
    if (p->mode == P2V_PROGRESS_NONE)
        return;
    double now = p2v_now();
    if (now - p->last_print < p->interval)
        return;
    p->last_print = now;
    progress_print(p, now, false);
}

void p2v_progress_finish(struct p2v_progress *p, bool ok)
{
    if (ok)
        p->done = p->total > p->done ? p->total : p->done;
    if (p->mode == P2V_PROGRESS_NONE)
        return;
    progress_print(p, p2v_now(), true);
}
