/* adapt.c: the adaptive compression level's decision (adapt.h). Pure: the sender in
 * remote.c does the measuring and applies the level to the pipeline. */
#include <stdio.h>

#include "adapt.h"

static const int ladder[] = {0, -10, -5, -1, 1, 3};
#define LADDER_N ((int)(sizeof ladder / sizeof ladder[0]))

const int *agent_adapt_ladder(size_t *n)
{
    if (n)
        *n = (size_t)LADDER_N;
    return ladder;
}

/* The ladder's position of @level: the highest step not above it, compression levels
 * ordered as speed (none is the fastest). */
static int ladder_step(int level)
{
    if (level == 0)
        return 0;
    int k = 1;
    for (int i = 1; i < LADDER_N; i++)
        if (ladder[i] <= level)
            k = i;
    return k;
}

void agent_adapt_init(struct agent_adapt *a, int level)
{
    *a = (struct agent_adapt){0};
    a->step = ladder_step(level);
    a->need = AGENT_ADAPT_NEED;
}

int agent_adapt_vote(double wait_pipeline, double wait_send, double idle)
{
    /* NaN or negative inputs (a clock oddity) count as no wait */
    double p = wait_pipeline > 0 ? wait_pipeline : 0;
    double s = wait_send > 0 ? wait_send : 0;
    if (p >= AGENT_ADAPT_WAIT_MIN && p >= 2 * s)
        return -1; /* the pipeline is slow */
    if (idle >= 0 && idle < AGENT_ADAPT_IDLE_BUSY)
        return -1; /* the CPUs are saturated: whatever waits, compression costs */
    if (s >= AGENT_ADAPT_WAIT_MIN && s >= 2 * p && !(idle >= 0 && idle < AGENT_ADAPT_IDLE_SPARE))
        return +1; /* downstream is slow and there is CPU to spare */
    return 0;
}

int agent_adapt_level(struct agent_adapt *a, double wait_pipeline, double wait_send,
                      double idle)
{
    int v = agent_adapt_vote(wait_pipeline, wait_send, idle);
    a->windows++;
    if (a->since < 1000000)
        a->since++;
    if (v == 0)
        a->streak = 0;
    else if (v > 0)
        a->streak = a->streak > 0 ? a->streak + 1 : 1;
    else
        a->streak = a->streak < 0 ? a->streak - 1 : -1;
    if (a->streak > AGENT_ADAPT_NEED_MAX)
        a->streak = AGENT_ADAPT_NEED_MAX;
    if (a->streak < -AGENT_ADAPT_NEED_MAX)
        a->streak = -AGENT_ADAPT_NEED_MAX;

    const int len = a->streak < 0 ? -a->streak : a->streak;
    const int dir = a->streak < 0 ? -1 : 1;
    if (len < a->need || (dir > 0 && a->step == LADDER_N - 1) || (dir < 0 && a->step == 0))
        return ladder[a->step];
    if (a->last_dir == -dir) {
        /* Undoing the last step. When the votes against it began right after it, it was
         * a failed probe: the bottleneck flips between these two levels (or the votes
         * are noise). Ask for twice the evidence before any next step, so as not to
         * swap them every other window nor drift along the ladder on noise. */
        if (a->since - (unsigned)len < AGENT_ADAPT_REVERT)
            a->need = a->need >= AGENT_ADAPT_NEED_MAX / 2 ? AGENT_ADAPT_NEED_MAX : 2 * a->need;
    } else if (a->last_dir == dir && a->need > AGENT_ADAPT_NEED) {
        /* a walk goes on: the conditions did change, follow faster */
        a->need /= 2;
    }
    a->step += dir;
    a->last_dir = dir;
    a->since = 0;
    a->streak = 0;
    a->steps++;
    return ladder[a->step];
}

int agent_adapt_current(const struct agent_adapt *a)
{
    return ladder[a->step];
}

const char *agent_level_name(int level, char *buf, size_t len)
{
    if (level == 0)
        snprintf(buf, len, "none");
    else
        snprintf(buf, len, "%d", level);
    return buf;
}
