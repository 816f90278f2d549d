/* test-adapt.c: TAP unit test of p2v-agent's adaptive compression controller
 * (p2v-agent/adapt.c), driven as the pure function it is: windows of (share of the time
 * waiting for the pipeline, share blocked sending) in, a zstd level out. Checked: the
 * vote of one window; CPU-bound windows walk the level down the ladder to none and keep
 * it there; link-bound windows walk it up to 3 and no further; alternating windows never
 * move it; a simulated machine whose bottleneck flips between two neighbouring levels
 * (a pipeline and a link modelled from zstd's measured speeds and ratios) is stepped a
 * few times, not every other window; after a quiet spell the controller reacts at its
 * first speed again.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../../p2v-agent/adapt.h"
#include "p2v-common.h"
#include "tap.h"

#define CPU 0.70, 0.02, 0.05 /* waiting for the pipeline most of the time, CPUs busy */
#define NET 0.01, 0.90, 0.80 /* blocked sending most of the time, CPUs idle */

static const int ladder_want[] = {0, -10, -5, -1, 1, 3};

/* A level's place on the ladder (levels are not ordered as numbers: none is the fastest). */
static int pos(int level)
{
    for (int i = 0; i < 6; i++)
        if (ladder_want[i] == level)
            return i;
    return -1;
}

/* A machine: the pipeline makes uncompressed bytes at speed[l] MB/s, the link carries
 * link MB/s of payload, so link * ratio[l] MB/s of data. The sender waits for the
 * slower side; shares as the send loop would measure them, with a little noise. The
 * pipeline at full speed takes half the machine's CPU (the rest is idle). */
struct plant {
    double link;
    uint64_t rng;
};

static double noise(struct plant *p)
{
    p->rng ^= p->rng << 13;
    p->rng ^= p->rng >> 7;
    p->rng ^= p->rng << 17;
    return ((double)(p->rng % 1001) / 1000.0 - 0.5) * 0.06; /* +-0.03 */
}

static void plant_waits(struct plant *p, int level, double *wp, double *ws, double *idle)
{
    double speed, ratio;
    switch (level) {
    case 0: speed = 2400, ratio = 1.0; break;
    case -10: speed = 1800, ratio = 1.66; break;
    case -5: speed = 1280, ratio = 1.78; break;
    case -1: speed = 900, ratio = 1.95; break;
    case 1: speed = 560, ratio = 2.17; break;
    default: speed = 300, ratio = 2.3; break;
    }
    double cap = p->link * ratio;
    *wp = speed < cap ? 1 - speed / cap : 0;
    *ws = cap < speed ? 1 - cap / speed : 0;
    *idle = 1 - 0.5 * fmin(speed, cap) / speed;
    *wp = fmax(0, *wp + noise(p));
    *ws = fmax(0, *ws + noise(p));
    *idle = fmax(0, *idle + noise(p));
}

/* Run @n windows of @p from @a's state; count level changes; *lo / *hi the extremes seen
 * after window @settle. Returns the final level. */
static int plant_run(struct agent_adapt *a, struct plant *p, int n, int settle,
                     int *changes, int *lo, int *hi)
{
    int level = agent_adapt_current(a);
    *changes = 0;
    *lo = 3, *hi = 0; /* the ladder's ends, swapped */
    for (int w = 0; w < n; w++) {
        double wp, ws, idle;
        plant_waits(p, level, &wp, &ws, &idle);
        int nl = agent_adapt_level(a, wp, ws, idle);
        *changes += nl != level;
        level = nl;
        if (w >= settle) {
            *lo = pos(level) < pos(*lo) ? level : *lo;
            *hi = pos(level) > pos(*hi) ? level : *hi;
        }
    }
    return level;
}

int main(void)
{
    plan(31);
    struct agent_adapt a;
    char buf[16];

    size_t n = 0;
    const int *lad = agent_adapt_ladder(&n);
    ok(n == 6 && memcmp(lad, ladder_want, sizeof ladder_want) == 0,
       "the ladder is none, -10, -5, -1, 1, 3");
    is_str(agent_level_name(0, buf, sizeof buf), "none", "level 0 is named none");
    is_str(agent_level_name(-5, buf, sizeof buf), "-5", "level -5 is named -5");

    /* where it starts */
    agent_adapt_init(&a, AGENT_ADAPT_START);
    is_int(agent_adapt_current(&a), 1, "auto starts at level 1");
    int inits[][2] = {{0, 0}, {2, 1}, {19, 3}, {-3, -5}, {-200, -10}};
    bool init_ok = true;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(inits); i++) {
        agent_adapt_init(&a, inits[i][0]);
        if (agent_adapt_current(&a) != inits[i][1]) {
            diag("init(%d) gives %d, want %d", inits[i][0], agent_adapt_current(&a),
                 inits[i][1]);
            init_ok = false;
        }
    }
    ok(init_ok, "init snaps a level to the ladder step at or below it");

    /* one window's vote */
    ok(agent_adapt_vote(0.5, 0.1, 0.5) == -1 && agent_adapt_vote(0.5, 0.1, 0.05) == -1,
       "vote: pipeline wait 50%%, send 10%%: compress less, whatever the idle CPU");
    ok(agent_adapt_vote(0.05, 0.6, 0.5) == +1,
       "vote: send wait 60%%, pipeline 5%%, half the CPU idle: compress more");
    ok(agent_adapt_vote(0.05, 0.6, -1) == +1 && agent_adapt_vote(0.05, 0.6, NAN) == +1,
       "vote: blocked sending, idle CPU unknown: compress more");
    ok(agent_adapt_vote(0.05, 0.6, 0.10) == -1,
       "vote: blocked sending with 10%% of the CPU idle (a receiver sharing it): less");
    ok(agent_adapt_vote(0.05, 0.6, 0.25) == 0,
       "vote: blocked sending with 25%% idle (neither spare nor busy): nothing");
    ok(agent_adapt_vote(0.08, 0.0, 0.5) == 0 && agent_adapt_vote(0.0, 0.08, 0.5) == 0,
       "vote: waits under 10%% of the window say nothing");
    ok(agent_adapt_vote(0.4, 0.3, 0.5) == 0 && agent_adapt_vote(0.3, 0.4, 0.5) == 0,
       "vote: comparable waits (neither twice the other) say nothing");
    ok(agent_adapt_vote(0.3, 0.4, 0.05) == -1 && agent_adapt_vote(0.02, 0.03, 0.05) == -1,
       "vote: saturated CPUs (5%% idle): compress less, whatever the waits");
    ok(agent_adapt_vote(NAN, 0.5, 0.5) == +1 && agent_adapt_vote(-1, 0, 0.5) == 0,
       "vote: NaN or negative waits count as none");

    /* CPU-bound: down the ladder to none, one step per AGENT_ADAPT_NEED windows */
    agent_adapt_init(&a, 1);
    int seq[64], ns = 0, prev = 1;
    bool mono = true;
    int w_none = -1;
    for (int w = 0; w < 60; w++) {
        int l = agent_adapt_level(&a, CPU);
        if (l != prev)
            seq[ns++] = l;
        mono &= pos(l) <= pos(prev) && pos(l) >= 0;
        prev = l;
        if (l == 0 && w_none < 0)
            w_none = w + 1;
    }
    ok(mono && ns == 4 && seq[0] == -1 && seq[1] == -5 && seq[2] == -10 && seq[3] == 0,
       "CPU-bound windows: 1 -> -1 -> -5 -> -10 -> none, never back up");
    ok(w_none == 4 * AGENT_ADAPT_NEED, "... none after %d windows (4 steps x %d)", w_none,
       AGENT_ADAPT_NEED);
    ok(agent_adapt_current(&a) == 0 && a.steps == 4, "... and it stays at none (%u steps)",
       a.steps);

    /* link-bound: up the ladder to 3, not past it */
    int top = 0, w_top = -1;
    ns = 0, prev = 0, mono = true;
    for (int w = 0; w < 60; w++) {
        int l = agent_adapt_level(&a, NET);
        if (l != prev)
            seq[ns++] = l;
        mono &= pos(l) >= pos(prev) && pos(l) >= 0;
        prev = l;
        top = pos(l) > pos(top) ? l : top;
        if (l == 3 && w_top < 0)
            w_top = w + 1;
    }
    ok(mono && ns == 5 && seq[0] == -10 && seq[1] == -5 && seq[2] == -1 && seq[3] == 1 &&
           seq[4] == 3,
       "link-bound windows: none -> -10 -> -5 -> -1 -> 1 -> 3");
    ok(top == 3 && agent_adapt_current(&a) == 3, "... and never above 3");
    ok(w_top > 0 && w_top <= 5 * AGENT_ADAPT_NEED, "... 3 after %d windows", w_top);

    /* alternating: nothing moves */
    agent_adapt_init(&a, 1);
    int moved = 0;
    for (int w = 0; w < 200; w++)
        moved += (w % 2 ? agent_adapt_level(&a, NET) : agent_adapt_level(&a, CPU)) != 1;
    ok(moved == 0 && a.steps == 0, "alternating CPU/link windows: level 1 for 200 windows");
    agent_adapt_init(&a, -5);
    moved = 0;
    for (int w = 0; w < 200; w++)
        moved += agent_adapt_level(&a, 0.3, 0.3, 0.5) != -5 ||
                 agent_adapt_level(&a, 0.05, 0.02, 0.5) != -5;
    ok(moved == 0, "balanced or tiny waits: no step in 400 windows");

    /* a pair of windows each way: the first swaps are taken, then the failed probes make
     * each direction need more windows, so the swaps thin out */
    agent_adapt_init(&a, 1);
    int changes = 0, level = 1;
    int last_change = 0;
    for (int w = 0; w < 400; w++) {
        int k = w % 4;
        int l = k < 2 ? agent_adapt_level(&a, CPU) : agent_adapt_level(&a, NET);
        if (l != level) {
            changes++;
            last_change = w;
        }
        level = l;
    }
    ok(changes <= 2 && level == 1,
       "two CPU-bound then two link-bound windows, 100 times: %d steps, back at %d", changes,
       level);
    ok(a.need > AGENT_ADAPT_NEED, "... the failed probe raised the windows a step needs to %d",
       a.need);
    diag("last step at window %d", last_change);

    /* p2v-server on the same 2-CPU machine, over loopback: the sender is blocked sending
     * (the server is slow) while the CPUs are busy, most of all when compressing */
    agent_adapt_init(&a, 1);
    level = 1;
    changes = 0;
    int w_low = -1;
    for (int w = 0; w < 200; w++) {
        double idle = level == 0 ? 0.27 : 0.12;
        int l = agent_adapt_level(&a, 0.03, 0.75, idle);
        changes += l != level;
        level = l;
        if (l == 0 && w_low < 0)
            w_low = w + 1;
    }
    ok(level == 0 && changes == 4,
       "blocked sending on busy CPUs (a co-located server): down to none in %d windows, "
       "stays (%d steps)",
       w_low, changes);

    /* simulated machines */
    struct plant slow = {.link = 100, .rng = 1};   /* a WAN: 100 MB/s */
    struct plant fast = {.link = 10000, .rng = 2}; /* loopback-like */
    struct plant mid = {.link = 600, .rng = 3};    /* -5 link-bound, -1 CPU-bound */
    int lo, hi;
    agent_adapt_init(&a, 1);
    int fin = plant_run(&a, &slow, 100, 20, &changes, &lo, &hi);
    ok(fin == 3 && lo == 3 && changes == 1, "100 MB/s link: up to 3 and stays (%d steps)",
       changes);
    agent_adapt_init(&a, 1);
    fin = plant_run(&a, &fast, 100, 20, &changes, &lo, &hi);
    ok(fin == 0 && hi == 0 && changes == 4, "10 GB/s link: down to none and stays (%d steps)",
       changes);
    agent_adapt_init(&a, 1);
    fin = plant_run(&a, &mid, 400, 10, &changes, &lo, &hi);
    ok(lo == -5 && hi == -1, "600 MB/s link: between -5 (link-bound) and -1 (CPU-bound)");
    ok(changes <= 24, "... %d steps in 400 windows (every 2nd window without hysteresis)",
       changes);
    int late = 0;
    fin = plant_run(&a, &mid, 200, 0, &late, &lo, &hi);
    ok(late <= 8, "... %d steps in the next 200 windows (failed probes back off)", late);

    /* the link then slows down for good: the controller follows, a walk that speeds up
     * as it goes (each step in the same direction halves the windows needed) */
    int need_before = a.need, from = agent_adapt_current(&a);
    struct plant wan = {.link = 100, .rng = 4};
    int w3 = -1;
    level = from;
    for (int w = 0; w < 200; w++) {
        double wp, ws, idle;
        plant_waits(&wan, level, &wp, &ws, &idle);
        level = agent_adapt_level(&a, wp, ws, idle);
        if (level == 3 && w3 < 0)
            w3 = w + 1;
    }
    ok(need_before >= 16 && w3 > 0 && w3 <= need_before + need_before / 2 + need_before / 4 &&
           level == 3,
       "then a 100 MB/s link: from %d (needing %d windows a step) to 3 in %d windows",
       from, need_before, w3);
    return exit_status();
}
