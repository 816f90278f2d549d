/* server.h: p2v-server's private header — the pieces of the server that are shared between
 * its files and its unit tests: committed-range sets, the per-disk journal, a small JSON
 * reader (for job.json), the job store (names, jobs, job.json), sessions and the
 * listener. Nothing outside server/ and tests/unit/server/ includes it.
 */
#ifndef P2V_SERVER_H
#define P2V_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "p2v-common.h"
#include "p2v-proto.h"

struct diskfmt; /* diskfmt.h */

/* ---------------------------------------------------------------- ranges */

/* A set of byte ranges kept sorted and merged (adjacent or overlapping ranges become one),
 * so that its size follows the number of holes, not the size of the disk. */
struct srv_ranges {
    struct p2v_range *v;
    size_t n, cap;
};

/* Add [off, off+len) (len > 0, no overflow). 0 / -1 (ENOMEM). */
int srv_ranges_add(struct srv_ranges *r, uint64_t off, uint64_t len);
/* Total bytes covered. */
uint64_t srv_ranges_bytes(const struct srv_ranges *r);
/* True when [off, off+len) is wholly covered. */
bool srv_ranges_covers(const struct srv_ranges *r, uint64_t off, uint64_t len);
void srv_ranges_clear(struct srv_ranges *r);
void srv_ranges_free(struct srv_ranges *r);

/* ---------------------------------------------------------------- journal */

/* diskN.journal: a 64-byte header then 64-byte records, little-endian:
 *
 *   header  0 magic "P2VJRNL1"   8 u32 version (2)   12 u32 sector size
 *          16 u64 disk size     24 u8 hash algo of the first session   25..59 zero
 *          60 u32 CRC-32 (zlib) of bytes 0..59
 *   record  0 u64 off   8 u32 len   12 u8 flags   13..15 zero
 *          16 hash[32] (zeros for a ZERO record)   48 u64 session number
 *          56 u8 hash algo of this record's hash   57..59 zero
 *          60 u32 CRC-32 of bytes 0..59
 *   mark    a record with flags MARK (| DURABLE): off = the image's checkpoint mark
 *          (diskfmt_checkpoint), len 0, hash[0..15] = the boot id of the machine that
 *          wrote it (/proc/sys/kernel/random/boot_id), the rest of hash zero
 *
 * A commit writes the chunks into the in-progress image (diskN.part), takes a checkpoint
 * of the image, then appends the chunks' records followed by a mark, in one write that
 * is fdatasync'd. The image itself is not synced at each commit: a server that was
 * killed finds it whole in the page cache. Only a restart of the machine can lose it,
 * so a mark counts at open only when it was written since this boot, or when it is
 * DURABLE (the image was fdatasync'd before it was written, done every
 * SRV_DURABLE_INTERVAL seconds and at the end). The committed ranges are the records
 * before the last mark that counts; everything after it is dropped (the file is cut
 * there) and the image is reopened at that mark. A record that is short, fails its CRC or
 * names a range outside the disk ends the journal in the same way, so a torn append
 * costs only its own records.
 */
#define JRNL_MAGIC "P2VJRNL1"
#define JRNL_VERSION 2
#define JRNL_HDR_LEN 64
#define JRNL_REC_LEN 64
#define JRNL_REC_ZERO 0x01
#define JRNL_REC_MARK 0x02
#define JRNL_REC_DURABLE 0x04 /* only with MARK */
#define JRNL_BOOT_LEN 16
/* Seconds between durable checkpoints of an image being received. */
#define SRV_DURABLE_INTERVAL 30.0

struct jrnl_rec {
    uint64_t off;      /* MARK: the image's mark */
    uint32_t len;      /* MARK: 0 */
    uint8_t flags;     /* JRNL_REC_* */
    uint8_t hash_algo; /* enum p2v_hash_algo */
    uint8_t hash[P2V_PROTO_HASH_LEN]; /* MARK: the boot id, then zeros */
    uint64_t session;
};

struct jrnl {
    int fd;               /* -1 when closed */
    uint64_t disk_size;
    uint32_t sector_size;
    uint8_t hash_algo;
    uint64_t records;     /* valid records (marks included) */
    uint64_t end;         /* file offset after the last valid record */
    uint64_t dropped;     /* records dropped from the tail at open */
    uint64_t lost;        /* of those, good records after the last mark that counts */
    bool marked;          /* a mark counts: the image reopens at `mark` */
    uint64_t mark;
    struct srv_ranges committed;
};

/* This machine's boot id (16 bytes); all zeros when it cannot be read, which no mark
 * matches (only DURABLE marks then count). */
void jrnl_boot_id(uint8_t out[JRNL_BOOT_LEN]);

/* Pure codecs (fuzzable): encode into 64 bytes; decode checks the CRC and the fields. */
void jrnl_encode_header(uint8_t out[JRNL_HDR_LEN], uint64_t disk_size, uint32_t sector_size,
                        uint8_t hash_algo);
int jrnl_decode_header(const uint8_t in[JRNL_HDR_LEN], uint64_t *disk_size,
                       uint32_t *sector_size, uint8_t *hash_algo, struct p2v_err *err);
void jrnl_encode_rec(uint8_t out[JRNL_REC_LEN], const struct jrnl_rec *r);
/* -1 when the CRC fails or a field is invalid for a disk of @disk_size. */
int jrnl_decode_rec(const uint8_t in[JRNL_REC_LEN], uint64_t disk_size, struct jrnl_rec *r,
                    struct p2v_err *err);

/* Create (truncating) @name in @dirfd with a header, synced. 0 / -1. */
int jrnl_create(int dirfd, const char *name, uint64_t disk_size, uint32_t sector_size,
                uint8_t hash_algo, struct jrnl *j, struct p2v_err *err);
/* Open an existing journal: check the header, read the records, keep those before the
 * last mark that counts on the machine whose boot id is @boot, drop the rest. */
int jrnl_open(int dirfd, const char *name, const uint8_t boot[JRNL_BOOT_LEN], struct jrnl *j,
              struct p2v_err *err);
/* Append @n records (marks among them) and fdatasync. On failure the file is cut back to
 * where it was and nothing is added to j->committed; err->code is the errno (ENOSPC,
 * EDQUOT, ...). */
int jrnl_append(struct jrnl *j, const struct jrnl_rec *recs, size_t n, struct p2v_err *err);
void jrnl_close(struct jrnl *j);

/* Re-sync: entries sorted by off, non-overlapping. Sets each entry's `same` to true when
 * the journal's latest record(s) over the entry's range are exactly one record with the
 * same (off, len, hash algo, hash) — a ZERO record matches the hash of @len zero bytes. */
struct jrnl_hash_entry {
    uint64_t off;
    uint32_t len;
    const uint8_t *hash;
    bool same;
};
int jrnl_match(struct jrnl *j, struct jrnl_hash_entry *e, size_t n, uint8_t hash_algo,
               struct p2v_err *err);

/* ---------------------------------------------------------------- JSON reader */

/* A small JSON (RFC 8259) reader for job.json and its tests: a whole document parsed
 * from memory into a tree. Depth and size are capped. */
enum jv_type { JV_NULL, JV_BOOL, JV_NUM, JV_STR, JV_ARR, JV_OBJ };

struct jv {
    enum jv_type type;
    bool b;
    double num;
    bool is_u64;      /* a non-negative integer that fits: u holds it */
    uint64_t u;
    char *s;          /* JV_STR: NUL-terminated (a \u0000 escape is refused) */
    size_t n;         /* JV_ARR / JV_OBJ: members */
    struct jv *items;
    char **keys;      /* JV_OBJ */
};

#define JV_TEXT_MAX (1u << 20)
#define JV_DEPTH_MAX 16

struct jv *jv_parse(const char *text, size_t len, struct p2v_err *err);
void jv_free(struct jv *v);
const struct jv *jv_get(const struct jv *obj, const char *key);
/* NULL unless @v is a string. */
const char *jv_str(const struct jv *v);
/* false unless @v is a non-negative integer. */
bool jv_u64(const struct jv *v, uint64_t *out);
/* Write @v through a JSON writer (for `status --json`). */
void jv_write(struct p2v_json *j, const struct jv *v);

/* ---------------------------------------------------------------- store and jobs */

/* A machine name: ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$. 0 / -1 with the reason. */
int srv_name_check(const char *name, size_t len, struct p2v_err *err);
/* A job id: a machine name optionally followed by "-N" (N >= 2), <= P2V_PROTO_JOB_MAX. */
bool srv_job_id_ok(const char *id);

/* Atomic small-file write in @dirfd: tmp + fsync + rename + fsync(dir). 0 / -1. */
int srv_write_file_at(int dirfd, const char *name, const void *data, size_t len, int mode,
                      struct p2v_err *err);
/* Read a whole small file (<= @max bytes) opened with O_NOFOLLOW. 0 / -1. */
int srv_read_file_at(int dirfd, const char *name, size_t max, struct p2v_buf *out,
                     struct p2v_err *err);
/* "2026-01-02T03:04:05Z" */
void srv_iso_time(time_t t, char out[32]);

struct srv_job;

#define SRV_OUTPUTS_MAX 40
/* Parse --format's list ("qcow2", "vmdk,ova", "raw,vhd,ova", ...): the first of qcow2,
 * vmdk and raw is the format the disks are received in (@primary, qcow2 when none is
 * named), the others go to @outputs (comma-separated, each once). 0 / -1. */
int srv_parse_formats(const char *list, char primary[8], char outputs[SRV_OUTPUTS_MAX],
                      struct p2v_err *err);

/* The job's state machine (DESIGN.md): receiving → received → injecting → configured →
 * verifying → verified, or failed (with the stage that failed and why). The states
 * after "received" belong to the post-capture pipeline (pipeline.c). */
enum srv_job_state {
    JOB_RECEIVING,
    JOB_RECEIVED,
    JOB_INJECTING,
    JOB_CONFIGURED,
    JOB_VERIFYING,
    JOB_VERIFIED,
    JOB_FAILED,
};
const char *srv_job_state_name(enum srv_job_state s);
/* Parse a state's name; -1 when unknown. */
int srv_job_state_parse(const char *name);
/* True when the job's disks were all received (its final images are in place): every
 * state after "received", and "failed" in a stage after receiving. */
bool srv_job_captured(const struct srv_job *job);

struct srv_disk {
    bool known;             /* declared in this or an earlier session */
    char name[P2V_PROTO_DISK_NAME_MAX + 1];
    char id[P2V_PROTO_DISK_ID_MAX + 1];
    uint64_t size;
    uint32_t sector_size;
    uint64_t planned;
    bool all_blocks;
    bool complete;          /* DISK_END received (in this or an earlier session) */
    uint64_t committed;     /* committed bytes (the journal's, kept after the job is done) */
    struct diskfmt *img;    /* the in-progress image diskN.part, NULL when not open */
    bool img_done;          /* diskN.part is complete, only its rename is left */
    double durable_at;      /* when its image was last synced (p2v_now) */
    struct jrnl jr;         /* jr.fd -1 when not open */
};

#define SRV_RATE_SAMPLES 6

struct srv_job {
    char id[P2V_PROTO_JOB_MAX + 1];
    char name[P2V_PROTO_NAME_MAX + 1];
    char source_id[P2V_PROTO_SOURCE_ID_MAX + 1];
    int dirfd;                   /* STORE/jobs/ID */
    enum srv_job_state state;
    char failed_stage[32];
    char reason[P2V_ERR_MSG_MAX];
    char format[8];
    time_t created;
    char agent[80];
    uint64_t sessions;
    bool active;
    uint64_t bytes_received;
    struct srv_disk disks[P2V_PROTO_DISKS_MAX];
    /* rate: (time, bytes-done) samples about a second apart */
    double rate_t[SRV_RATE_SAMPLES];
    uint64_t rate_b[SRV_RATE_SAMPLES];
    unsigned rate_n;
    double last_save;
    struct srv_store *store;     /* for the space reserve (NULL in tests) */
    /* the VM configurations of a received job (vm/, finish.c): "written", "failed" or
     * "" (not tried), and why they failed */
    char vmconfig[16];
    char vmconfig_error[P2V_ERR_MSG_MAX];
    /* the pipeline (pipeline.c): the verification's result ("success", "root-not-found",
     * ... or "" before it), whether report.json and verify/serial.log were written, the
     * milliseconds each stage took (by enum srv_stage), the changes injected */
    char verdict[32];
    bool has_report, has_serial_log;
    /* more outputs than the disks in `format`, made once the job is configured:
     * a comma-separated list of vmdk (with a .vmx and .ovf), ova, qcow2, raw, vhd */
    char outputs[SRV_OUTPUTS_MAX];
    /* the batch's overrides of the machine's facts for its VM (0: the facts') */
    uint64_t memory_mib;
    unsigned cpus;
    uint64_t stage_ms[4];
    uint64_t changes;
    /* a live capture (PASS frames, protocol v2): its last pass, when the source was last
     * read in full (the start of the last pass, server clock, Unix ms: the copy lags the
     * source by now minus this), and whether `p2v-server cutover` asked for the cutover
     * (the file jobs/ID/cutover) */
    struct srv_live {
        uint32_t pass;
        uint8_t phase;
        uint64_t bytes_read, bytes_sent;
        uint32_t duration_ms, freeze_ms;
        uint64_t synced_ms;
        bool cutover_requested;
    } live;
};

/* The pipeline's timed stages (job.json "stage-ms"). */
enum srv_stage { SRV_STAGE_WRITING, SRV_STAGE_INJECTING, SRV_STAGE_CONFIGURING, SRV_STAGE_VERIFYING };
extern const char *const srv_stage_names[4];

uint64_t srv_job_bytes_total(const struct srv_job *job);
uint64_t srv_job_bytes_done(const struct srv_job *job);
/* Bytes per second over the last few seconds (0 when unknown). */
double srv_job_rate(const struct srv_job *job);
void srv_job_rate_sample(struct srv_job *job, double now);

/* job.json: build the text; parse it back into a job (disk files not opened). */
int srv_job_to_json(const struct srv_job *job, struct p2v_buf *out);
int srv_job_from_json(const char *text, size_t len, struct srv_job *job, struct p2v_err *err);
/* Write job.json atomically (and note the time). 0 / -1. */
int srv_job_save(struct srv_job *job, struct p2v_err *err);
/* Append one timestamped line to the job's job.log (best effort). */
void srv_job_log(struct srv_job *job, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Disk files of a job: the in-progress image diskN.part — the final format when that is
 * qcow2 or raw, else raw (converted at the end) — and the journal. Open (or create) them
 * for a known disk: the image is reopened at the journal's last mark that counts; a
 * missing or unusable journal or image resets the disk (nothing committed). 0 / -1. */
int srv_disk_open(struct srv_job *job, unsigned index, uint8_t hash_algo, struct p2v_err *err);
/* The format of the in-progress images: "qcow2" or "raw". */
const char *srv_part_format(const struct srv_job *job);
/* Write verified chunk data (@zero: make the range read as zeros) into the image. */
int srv_disk_write(struct srv_job *job, unsigned index, const void *data, uint32_t len,
                   uint64_t off, bool zero, struct p2v_err *err);
/* Commit: checkpoint the image (@durable: and fdatasync it), then append @recs and a mark
 * to the journal, and update the disk's committed bytes. On failure nothing is committed
 * and the image must be reopened (srv_job_close_files, srv_disk_open) before more is
 * written. */
int srv_disk_commit(struct srv_job *job, unsigned index, const struct jrnl_rec *recs,
                    size_t n, bool durable, uint64_t session, struct p2v_err *err);
/* The two halves of srv_disk_commit, for a caller that lets writes into the image go on
 * while the journal is synced: the checkpoint (the only part that uses the image; no
 * write may run beside it) sets @mark; then the journal append (@recs and the mark, one
 * fdatasync'd write), which leaves the disk's committed bytes to the caller. */
int srv_disk_checkpoint(struct srv_job *job, unsigned index, bool durable, uint64_t *mark,
                        struct p2v_err *err);
int srv_disk_log(struct srv_job *job, unsigned index, const struct jrnl_rec *recs, size_t n,
                 uint64_t mark, bool durable, uint64_t session, struct p2v_err *err);
void srv_job_close_files(struct srv_job *job);
void srv_job_free(struct srv_job *job);

struct srv_store {
    char *path;          /* absolute */
    int dirfd;
    int jobsfd;
    int logfd;           /* server.log, -1 when not open */
    int lockfd;
    char token[P2V_PROTO_TOKEN_MAX + 1];
    char format[8];      /* for new jobs */
    char outputs[SRV_OUTPUTS_MAX]; /* for new jobs: srv_job.outputs */
    uint64_t window;
    pthread_mutex_t lock; /* the held-jobs list */
    struct srv_held *held;
    int reservefd;       /* STORE/.reserve, -1 when none */
};

/* The store keeps a small preallocated file (.reserve, SRV_RESERVE_BYTES) so that when
 * the store's file system is full, job.json can still be written: a write that fails
 * with ENOSPC shrinks the reserve by one step and is tried again. The reserve is grown
 * back (best effort) when a session starts. */
#define SRV_RESERVE_BYTES (4u << 20)
#define SRV_RESERVE_STEP (256u << 10)
/* Give back one step of the reserve. true when something was freed. */
bool srv_store_reserve_release(struct srv_store *st);
void srv_store_reserve_refill(struct srv_store *st);

struct srv_held {
    struct srv_held *next;
    char id[P2V_PROTO_JOB_MAX + 1];
    char source_id[P2V_PROTO_SOURCE_ID_MAX + 1];
};

/* Open an initialised store (key, cert, token, jobs/). @for_run also takes the store's
 * lock (one server per store) and opens server.log. 0 / -1. */
int srv_store_open(struct srv_store *st, const char *path, bool for_run, struct p2v_err *err);
void srv_store_close(struct srv_store *st);
/* True when a running server holds the store's lock. */
bool srv_store_in_use(const char *path);
/* A new join token: SRV_TOKEN_BYTES from getrandom(2) as lower-case hex. 0 / -1. */
#define SRV_TOKEN_BYTES 32
int srv_make_token(char out[2 * SRV_TOKEN_BYTES + 1]);
/* Constant-time comparison of a presented token with the store's (or any secret). */
bool srv_token_equal(const struct srv_store *st, const char *tok, size_t len);
bool srv_secret_equal(const char *secret, const char *tok, size_t len);

/* ---------------------------------------------------------------- batch (batch.c) */

/* One machine of a batch manifest (STORE/batch/NAME.json once added). */
struct srv_batch_entry {
    char name[P2V_PROTO_NAME_MAX + 1];
    char token[P2V_PROTO_TOKEN_MAX + 1];
    char formats[SRV_OUTPUTS_MAX + 8]; /* as written in the manifest ("" : qcow2) */
    char format[8];                    /* srv_parse_formats of it */
    char outputs[SRV_OUTPUTS_MAX];
    uint64_t memory_mib;               /* 0: from the facts */
    unsigned cpus;                     /* 0: from the facts */
};
/* Parse a manifest (text, one machine per line: NAME [format=LIST] [memory=MiB]
 * [cpus=N], # comments); *out (free it) holds *n >= 1 entries, tokens empty. Every error
 * names its line. 0 / -1. */
int srv_batch_parse(const char *text, size_t len, struct srv_batch_entry **out, size_t *n,
                    struct p2v_err *err);
/* The batch entry of machine @name, if the store has one. 0 / -1. */
int srv_batch_lookup(struct srv_store *st, const char *name, struct srv_batch_entry *e);
/* True when @tok is machine @name's own join token. */
bool srv_batch_token_ok(struct srv_store *st, const char *name, const char *tok, size_t len);
/* `p2v-server batch add MANIFEST` and `batch status`: exit codes. */
int srv_batch_add(const char *store, const char *manifest, bool json);
int srv_batch_status(const char *store, bool json);

enum srv_acquire {
    SRV_ACQ_OK,
    SRV_ACQ_BUSY,   /* held by a live session */
    SRV_ACQ_ERROR,  /* err set */
};
/* Find or make the job for (name, source_id) (names validated by the caller) and hold it
 * for one session. *jobp is loaded from job.json with its journals open (unless it is
 * received); *is_new tells a new job. */
enum srv_acquire srv_job_acquire(struct srv_store *st, const char *name,
                                 const char *source_id, struct srv_job **jobp,
                                 bool *is_new, struct p2v_err *err);
/* Save (inactive), close and free the job and let other sessions have it. */
void srv_job_release(struct srv_store *st, struct srv_job *job);
/* Load a job folder's job.json by id (status, tests). NULL when missing / unreadable. */
struct srv_job *srv_job_load(struct srv_store *st, const char *id, struct p2v_err *err);
/* Hold job @id for the pipeline (sessions of its machine then get BUSY): true when it
 * was free and is now held. srv_job_unhold lets it go. */
bool srv_job_hold(struct srv_store *st, const char *id, const char *source_id);
void srv_job_unhold(struct srv_store *st, const char *id);

/* Write the final images of a received job from its in-progress images (see finish.c).
 * @stop is polled between blocks: when it turns true the function fails with ECANCELED.
 * Once the images are in place, the VM configurations are written into the job's vm/
 * folder (srv_job_write_vmconfig). On success the journals (and leftover images) are
 * removed and the state is "received". */
int srv_job_finish(struct srv_store *st, struct srv_job *job, const atomic_bool *stop,
                   struct p2v_err *err);

/* Write the VM configurations of a job whose final images are in place into
 * STORE/jobs/ID/vm/: NAME.xml (libvirt) and NAME.sh (QEMU), plus NAME.vmx and NAME.ovf
 * referring to the job's own VMDKs when its format is vmdk; NAME is the job id. With
 * @exports, the job's other outputs too: vmdk (NAME.vmx and NAME.ovf with converted
 * VMDKs) and ova (NAME.ova). The machine's facts.json is used when it is there and valid
 * (else the defaults). Never fails the job: the outcome goes to job->vmconfig /
 * vmconfig_error and job.log. */
void srv_job_write_vmconfig(struct srv_store *st, struct srv_job *job,
                            const atomic_bool *stop, bool exports);

/* Close and remove a job's in-progress images and journals (after its images are
 * written). */
int srv_job_remove_staging(struct srv_job *job);

/* ---------------------------------------------------------------- pipeline */

/* After the last disk of a job is received, the pipeline (pipeline.c) runs driver
 * injection on the boot disk (libdriverinject), writes the VM configurations, boots the
 * result for a verdict (libvmm) and writes report.json. Each step first records its state
 * in job.json, so a server that is restarted resumes every job at the stage it was in. */
struct srv_pipeline_opts {
    enum srv_job_state until; /* the last state to reach: JOB_RECEIVED (no pipeline),
                               * JOB_CONFIGURED (no verification) or JOB_VERIFIED */
    bool inject;              /* false: --no-inject (the stage is recorded as skipped) */
    unsigned max_inject;      /* injections at once (libguestfs appliances) */
    unsigned max_verify;      /* verification boots at once */
    const char *engine;       /* p2v-vmm engine: auto, kvm or qemu */
    double verify_timeout;    /* seconds */
};
#define SRV_PIPELINE_WORKERS_MAX 64

struct srv_pipeline;
/* Start the pipeline's scanner (a thread): it looks at the store's jobs every second and
 * takes up any job in a pipeline state not yet at @o->until. NULL with @err on failure. */
struct srv_pipeline *srv_pipeline_start(struct srv_store *st, const struct srv_pipeline_opts *o,
                                        struct p2v_err *err);
/* Stop taking up jobs and wait up to @secs for the running ones (a job cut short resumes
 * at its stage next time). Returns how many are still running (then @p is left to them
 * and the store must stay open). */
unsigned srv_pipeline_stop(struct srv_pipeline *p, int secs);
/* `p2v-server retry JOB`: a job that failed in a pipeline stage goes back to the state
 * before that stage (a running server takes it up within a second). Exit code. */
int srv_retry(const char *store, const char *id);

/* ---------------------------------------------------------------- server */

struct srv_session;

struct srv_server {
    struct srv_store store;
    struct p2v_tls_ctx *tls;
    int listen_fd;
    int stop_pipe[2];       /* written once at shutdown and never drained */
    atomic_bool stopping;
    unsigned max_sessions;
    int hello_timeout_ms;
    int idle_timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct srv_session *sessions; /* live sessions (for shutdown) */
    unsigned nsessions;
    unsigned nrejecting;
};

/* Log a line to stderr and to STORE/server.log. */
void srv_log(struct srv_server *srv, enum p2v_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void srv_store_log(struct srv_store *st, enum p2v_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One session on an accepted socket, linked into srv->sessions (which counts it);
 * srv_session_main (a thread) runs the handshake and the session, then frees it. */
struct srv_session *srv_session_new(struct srv_server *srv, int fd, const char *peer,
                                    bool reject_busy);
void *srv_session_main(void *arg);
/* Unlink, close and free a session that never ran. */
void srv_session_free(struct srv_session *s);
/* Unblock every session stuck in I/O (shutdown(2) of its socket). */
void srv_sessions_kick_all(struct srv_server *srv);

struct srv_run_opts {
    const char *store;
    const char *listen;
    const char *format;
    uint64_t window;
    unsigned max_sessions;
    const char *port_file;
    const char *http;           /* --http ADDR:PORT: the status page (http.c), or NULL */
    const char *http_port_file;
    char outputs[SRV_OUTPUTS_MAX]; /* --format's other outputs */
    struct srv_pipeline_opts pipeline;
};
int srv_run(const struct srv_run_opts *o);

/* `p2v-server status`: a table, one job (@job), or JSON. Exit code. */
int srv_status(const char *store, bool json, const char *job);

/* ---- status page (http.c) */

/* The JSON `status --json` prints (without a final newline): {"jobs": [...]} with every
 * job's job.json sorted by id, or the one object of job @job (NULL: every job); "active",
 * "rate" and "eta" corrected when !@live (no server runs). Jobs whose job.json cannot be
 * read are left out (@warn: with a warning). 0 / -1 (ENOENT: no job @job). (status.c) */
int srv_status_json(struct srv_store *st, const char *job, bool live, bool warn,
                    struct p2v_buf *out, struct p2v_err *err);

/* `run --http ADDR:PORT`: a read-only HTTP/1.1 status page on its own thread — GET / (the
 * page), /api/jobs, /api/jobs/ID, /jobs/ID/report.json, /jobs/ID/serial.log. @st must
 * stay open until srv_http_stop. 0 / -1. */
struct srv_http;
int srv_http_start(struct srv_http **out, struct srv_store *st, const char *addr,
                   struct p2v_err *err);
/* The port listened on (for PORT 0), and "http://ADDR:PORT/" for the log. */
int srv_http_port(const struct srv_http *h);
void srv_http_url(const struct srv_http *h, char *out, size_t len);
/* Close every connection, end the thread and free @h (NULL accepted). */
void srv_http_stop(struct srv_http *h);

#endif /* P2V_SERVER_H */
