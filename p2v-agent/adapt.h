/* adapt.h: the agent's adaptive compression level (--compress-level auto), like
 * `zstd --adapt`. The sender measures, over windows of AGENT_ADAPT_WINDOW_S seconds, the
 * share of the time it spent waiting for the read pipeline (the CPU that hashes and
 * compresses is the bottleneck: compress less), the share it spent blocked sending (the
 * socket, the server's window, --max-rate: what lies downstream is the bottleneck), and
 * the share of the machine's CPU time that was idle, and feeds them to
 * agent_adapt_level(), a pure function of its state and inputs (no clock, no I/O) that
 * walks a ladder of levels:
 *
 *     none, -10, -5, -1, 1, 3     (none: stored; negative: zstd's fast levels)
 *
 * A window votes "down" when the pipeline wait is significant (AGENT_ADAPT_WAIT_MIN of
 * the window) and at least twice the send wait, and also whenever the machine's CPUs
 * are saturated (under AGENT_ADAPT_IDLE_BUSY of them idle): then whatever the sender
 * waits for is short of CPU, be it our pipeline, p2v-server on the same host (loopback)
 * or VM host, or the machine's own work, and compression is what this agent can give
 * back. It votes "up" when the sender is blocked sending (the mirror of "down") and the
 * machine has CPU to spare for harder compression (at least AGENT_ADAPT_IDLE_SPARE of it
 * idle, or unknown): a slow link, --max-rate. Anything else votes nothing.
 * Hysteresis: a step needs `need` votes in a row (2 to start with). A step that is
 * undone by votes that began within AGENT_ADAPT_REVERT windows of it was a failed probe
 * (the bottleneck flips between two neighbouring levels, one CPU-bound and the other
 * link-bound, or the votes are noise): `need` then doubles, up to AGENT_ADAPT_NEED_MAX,
 * so such levels are not swapped every other window and noise does not walk the level
 * along the ladder. A step in the same direction as the one before (a walk: conditions
 * did change) halves it again, down to 2.
 */
#ifndef P2V_AGENT_ADAPT_H
#define P2V_AGENT_ADAPT_H

#include <stddef.h>

#define AGENT_ADAPT_WINDOW_S 0.25 /* seconds per measurement window */
#define AGENT_ADAPT_START 1       /* the level auto mode starts at */
#define AGENT_ADAPT_WAIT_MIN 0.10 /* a wait under this share of the window is no signal */
#define AGENT_ADAPT_IDLE_SPARE 0.50 /* idle CPU share that can pay for harder compression */
#define AGENT_ADAPT_IDLE_BUSY 0.20  /* idle CPU share under which the machine is busy */
#define AGENT_ADAPT_NEED 2        /* votes in a row for a step, at first */
#define AGENT_ADAPT_NEED_MAX 32   /* ... and at most, after failed probes (8 s) */
#define AGENT_ADAPT_REVERT 8      /* contrary votes this soon after a step: a failed probe */

struct agent_adapt {
    int step;            /* index into the ladder */
    int streak;          /* votes in a row: > 0 up (link-bound), < 0 down (CPU-bound) */
    int need;            /* votes in a row a step needs now */
    int last_dir;        /* the last step: +1 up, -1 down, 0 none yet */
    unsigned since;      /* windows since the last step (or the start) */
    unsigned windows;    /* windows seen */
    unsigned steps;      /* steps taken */
};

/* Start at the ladder's level nearest to @level from below (AGENT_ADAPT_START: 1). */
void agent_adapt_init(struct agent_adapt *a, int level);
/* One window: @wait_pipeline and @wait_send are the shares (0..1) of the window's wall
 * time the sender spent waiting for the pipeline and blocked sending; @idle the share of
 * the machine's CPU time that was idle (negative: unknown). Returns the level to
 * compress at from now on (0: none). */
int agent_adapt_level(struct agent_adapt *a, double wait_pipeline, double wait_send,
                      double idle);
/* The window's vote alone: -1 (compress less), 0, +1 (compress more). */
int agent_adapt_vote(double wait_pipeline, double wait_send, double idle);
/* The current level (0: none). */
int agent_adapt_current(const struct agent_adapt *a);
/* The ladder, fastest first, and its length. */
const int *agent_adapt_ladder(size_t *n);
/* "none" for 0, else the number; @buf needs 12 bytes. */
const char *agent_level_name(int level, char *buf, size_t len);

#endif /* P2V_AGENT_ADAPT_H */
