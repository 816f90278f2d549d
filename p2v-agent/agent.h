/* p2v-agent private header: the options, the disks being captured, the run's counters,
 * and the functions shared by the agent's sources (main.c parses the command line and
 * opens the disks; facts.c describes the machine; remote.c streams to p2v-server;
 * local.c writes one disk into an image file; events.c prints events and the report).
 */
#ifndef P2V_AGENT_H
#define P2V_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapt.h"
#include "freeze.h"
#include "imager.h"
#include "p2v-common.h"

/* Exit codes (p2v-agent(1)). */
enum agent_exit {
    AGENT_EXIT_OK = 0,
    AGENT_EXIT_FAIL = 1,      /* I/O failure, or gave up retrying */
    AGENT_EXIT_USAGE = 2,
    AGENT_EXIT_REFUSED = 3,   /* wrong token, fingerprint mismatch, other fatal ERROR */
    AGENT_EXIT_BADSECTOR = 4, /* unreadable sectors without --skip-bad-sectors */
};

enum agent_mode {
    AGENT_MODE_REMOTE,
    AGENT_MODE_LOCAL,
    AGENT_MODE_FACTS,
    AGENT_MODE_PLAN,
};

#define AGENT_DISKS_MAX 16 /* P2V_PROTO_DISKS_MAX: the most disks in one job */

struct agent_opts {
    enum agent_mode mode;
    const char *server;           /* HOST:PORT */
    char fingerprint[80];         /* normalised "SHA256:..." */
    char token[160];
    char name[80];                /* the machine name (validated) */
    const char *disks[AGENT_DISKS_MAX];
    size_t ndisks;                /* 0: every local disk */
    bool all_blocks;
    bool skip_bad_sectors;
    unsigned retry_time;          /* seconds without progress before giving up */
    uint64_t max_rate;            /* --max-rate: payload bytes per second, 0 = no limit */
    int compress_level;           /* zstd level, 0: none (auto: the level to start at) */
    bool compress_auto;           /* --compress-level auto: adapt to the bottleneck */
    const char *hash;             /* "auto", "sha256", "blake2b" */
    int threads;                  /* 0: number of CPUs */
    enum p2v_progress_mode progress;
    bool json;                    /* JSON events on stdout */
    const char *report;           /* --report FILE */
    const char *output;           /* --output FILE (local mode) */
    const char *format;           /* qcow2 | vmdk | raw */
    const char *subformat;        /* vmdk subformat, or NULL */
    /* live capture (live.c) */
    bool live;                    /* --live: copy while the machine runs, then cut over */
    unsigned continuous;          /* --continuous SECS: stay in sync (0: converge and cut) */
    double freeze_timeout;        /* --freeze-timeout: the watchdog's bound, seconds */
    unsigned max_passes;          /* --max-passes: delta passes before the cutover */
    bool force;                   /* --force: capture mounted writable file systems anyway */
    enum agent_snapshot {
        AGENT_SNAPSHOT_AUTO,      /* an LVM snapshot when one volume is mounted writable */
        AGENT_SNAPSHOT_LVM,       /* a snapshot of every writable LVM volume */
        AGENT_SNAPSHOT_NONE,      /* FIFREEZE only */
    } snapshot;                   /* --snapshot */
};

struct agent_disk {
    char path[4096];
    int fd;                       /* read-only (with --live: O_DIRECT where it can be) */
    struct imager_disk *info;     /* heap: the struct is large */
    struct imager_plan plan;
    uint64_t resumed;             /* server-has bytes of the plan at its last DISK */
};

struct agent_bad {
    uint32_t disk;
    uint64_t off;
};

struct agent_stats {
    uint64_t bytes_planned;
    uint64_t bytes_read;
    uint64_t bytes_sent;      /* non-zero DATA bytes, uncompressed, all sessions */
    uint64_t payload_bytes;   /* after compression */
    uint64_t wire_bytes;      /* TLS bytes out */
    uint64_t resumed_bytes;
    uint64_t lost_max;        /* most un-committed non-zero bytes at one interruption */
    uint64_t bytes_written;   /* local mode: bytes handed to the image writer */
    unsigned reconnects;
    double start;
    /* non-zero DATA bytes (uncompressed) by the zstd level they were compressed at
     * (0: stored), in order of first use */
    struct agent_level_bytes {
        int level;
        uint64_t bytes;
    } levels[8];
    size_t nlevels;
    int level_final;          /* the level in effect at the end */
    unsigned level_changes;   /* steps of the adaptive level */
};

struct agent {
    struct agent_opts o;
    struct agent_disk disks[AGENT_DISKS_MAX];
    size_t ndisks;
    bool live;                    /* the disks hold the running system */
    struct agent_stats st;
    struct agent_bad *bad;        /* bad sectors met (with --skip-bad-sectors), sorted */
    size_t nbad, bad_cap;
    const char *hash_name;        /* the algorithm used ("sha256", "blake2b", "none") */
    char job[96];                 /* the server's job id */
    struct agent_adapt adapt;     /* --compress-level auto: the controller (all sessions) */
    /* the file systems mounted from the disks (live.c), and the live capture's record */
    struct freeze_mount *mounts;
    size_t nmounts;
    bool crash_inconsistent;      /* --force on mounted writable file systems */
    struct agent_live {
        uint32_t pass;            /* passes done, all sessions */
        struct agent_pass {
            uint32_t pass;
            uint8_t phase;        /* enum p2v_pass_phase */
            uint64_t bytes_read, bytes_sent;
            double secs;
        } passes[64];             /* the first 63 and the last */
        size_t npasses;
        double freeze_window;     /* the cutover's, seconds (< 0: none yet) */
        double frozen_at;         /* wall clock, when the freeze began */
        unsigned freeze_attempts;
        bool snapshot;            /* the cutover took LVM snapshots (snap.c) */
    } lv;
};

/* main.c */
void agent_close_disks(struct agent *a);
/* Pipeline options for reading disk @d's plan in @chunk-byte chunks (threads, retries and
 * --skip-bad-sectors from the options; no hash, no compression, no skip list). */
void agent_pipeline_opts(const struct agent *a, const struct agent_disk *d, uint32_t chunk,
                         struct imager_pipeline_opts *po);

/* facts.c: the facts object (FACTS frame and --facts); @brief leaves out the disks'
 * partitions (for a FACTS frame that would not fit). */
void agent_facts_json(const struct agent *a, struct p2v_json *j, bool brief);
/* Discovery and plan of every disk (--plan). */
void agent_plan_json(const struct agent *a, struct p2v_json *j);
/* True when one of the disks holds the running system's root file system. */
bool agent_disks_are_live(const struct agent *a);
/* The local host name made into a valid machine name. */
void agent_default_name(char *out, size_t len);
/* NULL when @name is a valid machine name, else why not. */
const char *agent_name_invalid(const char *name);

/* live.c: the mounted file systems of the disks (a->mounts), and the check that refuses a
 * mounted writable one without --live (or allows it, marked crash-inconsistent, with
 * --force). 0, or an exit code. */
int agent_check_mounts(struct agent *a);
/* The "live" report member. */
void agent_live_json(const struct agent *a, struct p2v_json *j);

/* remote.c */
int agent_remote(struct agent *a);
/* local.c */
int agent_local(struct agent *a);

/* events.c: one JSON object per line on stdout with --json. */
struct agent_event {
    struct p2v_buf buf;
    struct p2v_json j;
};
void agent_event_begin(struct agent_event *e, const char *name);
/* Print it (with --json) and release it. */
void agent_event_end(const struct agent *a, struct agent_event *e);
/* The finished event (and the report file); @extra adds mode-specific members. */
int agent_finish(struct agent *a, const char *job, void (*extra)(struct agent *,
                                                                   struct p2v_json *));
/* An error: the log line, the error event, the report; returns @exit_code. */
int agent_fail(struct agent *a, int exit_code, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Merge a pipeline's bad sectors for disk @disk into the run's list. */
void agent_add_bad(struct agent *a, uint32_t disk, const uint64_t *offs, size_t n);
/* A JSON progress event (with --json), at most once a second per call site unless
 * @force. */
struct agent_progress {
    struct p2v_progress pg;  /* bar / lines (or NONE with --json) */
    const struct agent *a;
    uint32_t disk;
    double t0, last;
    uint64_t base;           /* bytes done when this session started (not in rate) */
    char label[64];          /* without the level */
    bool has_level;
    int level;               /* the compression level now (shown when has_level) */
};
void agent_progress_init(struct agent_progress *p, const struct agent *a, uint32_t disk,
                         const char *label, uint64_t total, uint64_t base);
/* Show the compression level in use: "LABEL zstd N" (or "LABEL zstd none") and a
 * compress-level member in progress events. */
void agent_progress_level(struct agent_progress *p, int level);
/* Count @bytes sent at @level in the run's statistics. */
void agent_count_level(struct agent *a, int level, uint64_t bytes);
void agent_progress_update(struct agent_progress *p, uint64_t done);
void agent_progress_finish(struct agent_progress *p, bool ok);

#endif /* P2V_AGENT_H */
