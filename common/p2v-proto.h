/* The p2vkit wire protocol, versions 1 and 2: frame codec. Part of libp2vcommon; this header is
 * the codec's whole contract, and docs/protocol.md is its prose twin.
 *
 * A frame on the wire (all integers big-endian):
 *
 *     0   u32  body length L (0 <= L <= P2V_PROTO_BODY_MAX)
 *     4   u8   type (enum p2v_msg_type)
 *     5   u8   flags (per type; a bit not defined for the type is an error)
 *     6   u16  reserved, 0
 *     8   L    body
 *
 * Strings in bodies are `u16 length, bytes` (no NUL; length capped per field; bytes must
 * be printable ASCII 0x20..0x7e unless the field says otherwise). Bodies must be consumed
 * exactly: trailing bytes are an error.
 *
 * The encoders append a whole frame to a p2v_buf. The decoder is pure: it takes a
 * header and a body held in memory, checks every field against the caps below, and fills
 * a `struct p2v_msg` whose pointers borrow from the body. It never allocates. Checks that
 * need session state (was the disk declared? is the offset inside the disk?) are the
 * receiver's, done once before dispatch (p2v_proto_check_data()).
 */
#ifndef P2V_PROTO_H
#define P2V_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

#define P2V_PROTO_VERSION 2          /* the highest version this code speaks */
#define P2V_PROTO_VERSION_MIN 1      /* the lowest (v2 adds PASS / PASS_OK: live capture) */
#define P2V_PROTO_HDR_LEN 8
#define P2V_PROTO_CHUNK_MAX (1u << 20)      /* DATA: uncompressed length cap (1 MiB) */
/* DATA's compressed payload may be a little larger than its input (zstd bound of 1 MiB
 * is 1 MiB + 4 KiB + a few bytes); every other body is far smaller. */
#define P2V_PROTO_BODY_MAX (P2V_PROTO_CHUNK_MAX + 8192)
#define P2V_PROTO_HASH_LEN 32
#define P2V_PROTO_DISKS_MAX 16             /* disks per job */
#define P2V_PROTO_TOKEN_MAX 128
#define P2V_PROTO_NAME_MAX 64              /* machine name */
#define P2V_PROTO_SOURCE_ID_MAX 128
#define P2V_PROTO_VERSION_STR_MAX 64
#define P2V_PROTO_DISK_NAME_MAX 64
#define P2V_PROTO_DISK_ID_MAX 256
#define P2V_PROTO_FACTS_MAX (64u * 1024 - 1) /* FACTS: JSON text (fits a u16 length) */
#define P2V_PROTO_MSG_MAX 1024             /* ERROR / FINISHED text */
#define P2V_PROTO_JOB_MAX 80               /* job id (the job's folder name) */
#define P2V_PROTO_RANGES_MAX 4096          /* HAVE / WANT ranges per frame */
#define P2V_PROTO_HASHES_MAX 1024          /* HASHES entries per frame */

enum p2v_msg_type {
    P2V_MSG_HELLO = 0x01,     /* A->S: first frame after the TLS handshake */
    P2V_MSG_WELCOME = 0x02,   /* S->A: answer to HELLO */
    P2V_MSG_FACTS = 0x03,     /* A->S: the machine's facts, JSON */
    P2V_MSG_DISK = 0x04,      /* A->S: declare a disk */
    P2V_MSG_HAVE = 0x05,      /* S->A: ranges of a disk the server has committed */
    P2V_MSG_DATA = 0x06,      /* A->S: one chunk of a disk */
    P2V_MSG_DISK_END = 0x07,  /* A->S: every chunk of a disk has been sent */
    P2V_MSG_DISK_OK = 0x08,   /* S->A: the disk is committed */
    P2V_MSG_DONE = 0x09,      /* A->S: every disk has been sent; finish the job */
    P2V_MSG_FINISHED = 0x0a,  /* S->A: the job's disks are written */
    P2V_MSG_HASHES = 0x0b,    /* A->S: re-sync: hashes of ranges the agent has */
    P2V_MSG_WANT = 0x0c,      /* S->A: re-sync: ranges whose hash differs */
    P2V_MSG_COMMITTED = 0x0d, /* S->A: this session's DATA up to here is durable */
    P2V_MSG_PASS = 0x0e,      /* A->S (v2): a live capture's pass ended, or a heartbeat */
    P2V_MSG_PASS_OK = 0x0f,   /* S->A (v2): answer to PASS: go on, or cut over now */
    P2V_MSG_ERROR = 0x7f,     /* either way: the session ends */
};

/* DATA flags. */
#define P2V_DATA_ZERO 0x01       /* no payload: the range reads as zeros */
#define P2V_DATA_ZSTD 0x02       /* the payload is one zstd frame of exactly `len` bytes */
/* HAVE / WANT / HASHES flags. */
#define P2V_RANGES_MORE 0x01     /* more frames of this kind follow for the same disk */
/* PASS_OK flags. */
#define P2V_PASS_CUTOVER 0x01    /* the operator asked for the cutover (p2v-server cutover) */
/* DISK flags. */
#define P2V_DISK_ALL_BLOCKS 0x01 /* the agent sends every block (byte-identical copy) */

/* PASS phases. */
enum p2v_pass_phase {
    P2V_PASS_IDLE = 0,  /* no pass: a heartbeat while waiting (--continuous) */
    P2V_PASS_COPY = 1,  /* the first copy of every used block */
    P2V_PASS_DELTA = 2, /* only what changed, while the machine runs */
    P2V_PASS_FINAL = 3, /* the last delta, under the freeze */
};

enum p2v_hash_algo {
    P2V_HASH_SHA256 = 1,
    P2V_HASH_BLAKE2B = 2, /* BLAKE2b-512, first 32 bytes */
};

enum p2v_welcome_state {
    P2V_JOB_NEW = 0,      /* a new job folder was made */
    P2V_JOB_RESUME = 1,   /* an unfinished job with this name and source id: resume */
    P2V_JOB_COMPLETE = 2, /* this job is already received; nothing to send */
};

/* ERROR codes. */
enum p2v_err_code {
    P2V_E_PROTO = 1,     /* malformed frame or a frame out of order */
    P2V_E_VERSION = 2,   /* no common protocol version */
    P2V_E_AUTH = 3,      /* wrong join token */
    P2V_E_NAME = 4,      /* machine name refused */
    P2V_E_DISK = 5,      /* undeclared disk, range outside the disk, disk changed */
    P2V_E_HASH = 6,      /* a chunk's content does not match its hash */
    P2V_E_NOSPACE = 7,   /* the server's store is full (retryable) */
    P2V_E_BUSY = 8,      /* the job is held by another session (retryable) */
    P2V_E_INTERNAL = 9,  /* the server failed (retryable) */
    P2V_E_SHUTDOWN = 10, /* the server is stopping (retryable) */
};

/* A decoded frame. Pointers borrow from the body given to p2v_proto_decode(). */
struct p2v_str {
    const char *p; /* not NUL-terminated */
    uint16_t len;
};

struct p2v_range {
    uint64_t off;
    uint64_t len;
};

struct p2v_msg {
    uint8_t type;
    uint8_t flags;
    union {
        struct {
            uint16_t version_min, version_max;
            uint8_t hash_algo;
            struct p2v_str token, name, source_id, agent_version;
        } hello;
        struct {
            uint16_t version;
            uint8_t state; /* enum p2v_welcome_state */
            uint64_t window; /* journal window: the most un-committed DATA bytes the agent
                              * may have in flight (1 MiB .. 1 GiB) */
            struct p2v_str job;
        } welcome;
        struct {
            struct p2v_str json; /* any bytes but NUL; the receiver stores them */
        } facts;
        struct {
            uint32_t disk; /* index < P2V_PROTO_DISKS_MAX */
            uint64_t size; /* > 0, a multiple of 512 */
            uint32_t sector_size; /* 512 or 4096 */
            uint64_t planned; /* bytes the agent plans to send (<= size), for progress */
            struct p2v_str name, id;
        } disk;
        struct {
            uint32_t disk;
            uint32_t count; /* <= P2V_PROTO_RANGES_MAX */
            const uint8_t *ranges; /* count x (u64 off, u64 len); use p2v_proto_range() */
        } ranges; /* HAVE and WANT */
        struct {
            uint32_t disk;
            uint64_t off; /* a multiple of 512 */
            uint32_t len; /* 1..P2V_PROTO_CHUNK_MAX, a multiple of 512 */
            const uint8_t *hash; /* P2V_PROTO_HASH_LEN bytes (zeros for ZERO) */
            const uint8_t *payload;
            size_t payload_len; /* 0 for ZERO; == len when not compressed */
        } data;
        struct {
            uint32_t disk;
            uint64_t bytes; /* DISK_END: bytes sent this session; DISK_OK: committed */
        } disk_end; /* DISK_END and DISK_OK */
        struct {
            uint64_t frames; /* DATA frames of this session now durable (cumulative) */
            uint64_t bytes;  /* their uncompressed bytes, ZERO frames excluded */
        } committed;
        struct {
            struct p2v_str text; /* FINISHED: a summary line */
        } finished;
        struct {
            uint32_t disk;
            uint32_t count; /* <= P2V_PROTO_HASHES_MAX */
            const uint8_t *entries; /* count x (u64 off, u32 len, hash[32]); see _hash_entry */
        } hashes;
        struct {
            uint32_t pass;        /* 1.. (the copy is pass 1); 0 for IDLE */
            uint8_t phase;        /* enum p2v_pass_phase */
            uint64_t bytes_read;  /* read from the source in the pass */
            uint64_t bytes_sent;  /* DATA bytes (uncompressed, ZERO excluded) in the pass */
            uint32_t duration_ms; /* the pass's duration */
            uint32_t freeze_ms;   /* FINAL: the freeze window; else 0 */
        } pass;
        struct {
            uint16_t code; /* enum p2v_err_code */
            struct p2v_str text;
        } error;
    } u;
};

/* Parse the 8-byte header: type, flags and body length, checking the reserved field
 * and the length cap (not the type). 0 / -1. */
int p2v_proto_header(const uint8_t hdr[P2V_PROTO_HDR_LEN], uint8_t *type, uint8_t *flags,
                     uint32_t *body_len, struct p2v_err *err);
/* Decode and validate a whole frame. 0 / -1 (err names the frame type and the field). */
int p2v_proto_decode(uint8_t type, uint8_t flags, const uint8_t *body, size_t len,
                     struct p2v_msg *m, struct p2v_err *err);
/* Entry @i (< count) of a HAVE/WANT frame, and of a HASHES frame. */
void p2v_proto_range(const struct p2v_msg *m, uint32_t i, struct p2v_range *r);
void p2v_proto_hash_entry(const struct p2v_msg *m, uint32_t i, uint64_t *off, uint32_t *len,
                          const uint8_t **hash);
/* The receiver's check of a DATA frame against a declared disk's size. 0 / -1. */
int p2v_proto_check_data(const struct p2v_msg *m, uint64_t disk_size, struct p2v_err *err);

/* Encoders: append one frame to @out. 0 / -1 (ENOBUFS past the buffer's cap, EINVAL for
 * an argument over its cap). Strings are NUL-terminated C strings. */
int p2v_proto_put_hello(struct p2v_buf *out, uint8_t hash_algo, const char *token,
                        const char *name, const char *source_id, const char *agent_version);
int p2v_proto_put_welcome(struct p2v_buf *out, uint8_t state, uint64_t window,
                          const char *job);
/* WELCOME naming @version (p2v_proto_put_welcome names P2V_PROTO_VERSION). */
int p2v_proto_put_welcome_version(struct p2v_buf *out, uint16_t version, uint8_t state,
                                  uint64_t window, const char *job);
int p2v_proto_put_facts(struct p2v_buf *out, const char *json, size_t len);
int p2v_proto_put_disk(struct p2v_buf *out, uint32_t disk, uint64_t size,
                       uint32_t sector_size, uint64_t planned, uint8_t flags,
                       const char *name, const char *id);
/* HAVE or WANT (type), ranges[count], flags P2V_RANGES_MORE or 0. */
int p2v_proto_put_ranges(struct p2v_buf *out, uint8_t type, uint8_t flags, uint32_t disk,
                         const struct p2v_range *ranges, uint32_t count);
/* DATA: header fields then payload (payload_len 0 and payload NULL for P2V_DATA_ZERO). */
int p2v_proto_put_data(struct p2v_buf *out, uint8_t flags, uint32_t disk, uint64_t off,
                       uint32_t len, const uint8_t hash[P2V_PROTO_HASH_LEN],
                       const void *payload, size_t payload_len);
/* Only the 8-byte frame header and the DATA fields before the payload (8+48 bytes into
 * @hdr), so that a sender can write the payload from its own buffer without a copy. */
#define P2V_PROTO_DATA_HDR_LEN (P2V_PROTO_HDR_LEN + 48)
void p2v_proto_data_header(uint8_t hdr[P2V_PROTO_DATA_HDR_LEN], uint8_t flags,
                           uint32_t disk, uint64_t off, uint32_t len,
                           const uint8_t hash[P2V_PROTO_HASH_LEN], size_t payload_len);
int p2v_proto_put_disk_end(struct p2v_buf *out, uint8_t type, uint32_t disk, uint64_t bytes);
int p2v_proto_put_done(struct p2v_buf *out);
int p2v_proto_put_committed(struct p2v_buf *out, uint64_t frames, uint64_t bytes);
int p2v_proto_put_finished(struct p2v_buf *out, const char *text);
/* HASHES: entries as (off, len, hash) triples. */
int p2v_proto_put_hashes(struct p2v_buf *out, uint8_t flags, uint32_t disk,
                         const uint64_t *offs, const uint32_t *lens,
                         const uint8_t (*hashes)[P2V_PROTO_HASH_LEN], uint32_t count);
int p2v_proto_put_pass(struct p2v_buf *out, uint32_t pass, uint8_t phase, uint64_t bytes_read,
                       uint64_t bytes_sent, uint32_t duration_ms, uint32_t freeze_ms);
/* PASS_OK, flags P2V_PASS_CUTOVER or 0. */
int p2v_proto_put_pass_ok(struct p2v_buf *out, uint8_t flags);
int p2v_proto_put_error(struct p2v_buf *out, uint16_t code, const char *text);

const char *p2v_proto_type_name(uint8_t type);
/* "idle", "copy", "delta", "final" (enum p2v_pass_phase), "unknown" otherwise. */
const char *p2v_proto_pass_phase_name(uint8_t phase);
const char *p2v_proto_err_name(uint16_t code);
/* True for error codes after which a later retry may succeed. */
bool p2v_proto_err_retryable(uint16_t code);

/* Content hashes (OpenSSL): one-shot digest of @len bytes into 32 bytes. 0 / -1. */
int p2v_hash(enum p2v_hash_algo algo, const void *data, size_t len,
             uint8_t out[P2V_PROTO_HASH_LEN]);
const char *p2v_hash_name(enum p2v_hash_algo algo);
/* The same digests over a stream: new, update as often as needed, final (which writes
 * the first 32 bytes and makes the context ready for the next stream), free. NULL or -1
 * with errno on failure. */
struct p2v_digest;
struct p2v_digest *p2v_digest_new(enum p2v_hash_algo algo);
int p2v_digest_update(struct p2v_digest *d, const void *data, size_t len);
int p2v_digest_final(struct p2v_digest *d, uint8_t out[P2V_PROTO_HASH_LEN]);
void p2v_digest_free(struct p2v_digest *d);

#endif /* P2V_PROTO_H */
