/* session.h: one session with p2v-server, shared by remote.c (the session, the copy of
 * each disk) and live.c (a live capture's delta passes and cutover). Private to p2v-agent.
 */
#ifndef P2V_AGENT_SESSION_H
#define P2V_AGENT_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "agent.h"
#include "p2v-proto.h"
#include "p2v-tls.h"

#define CHUNK_SIZE (1u << 20)

/* How a session ended. */
enum sess_rc {
    SESS_OK,        /* FINISHED */
    SESS_COMPLETE,  /* WELCOME said the job was already received */
    SESS_RETRY,     /* network or retryable server error: try again */
    SESS_REFUSED,   /* fatal server error or fingerprint mismatch: exit 3 */
    SESS_FAIL,      /* local failure or a broken server: exit 1 */
    SESS_BADSECTOR, /* exit 4 */
};

struct sess {
    struct agent *a;
    struct p2v_tls_ctx *ctx;
    struct p2v_conn *conn;
    struct p2v_buf out;      /* frames being built */
    struct p2v_buf body;     /* frames being read */
    const char *source_id;
    const char *facts;       /* JSON text */
    size_t facts_len;
    uint8_t hash_algo;
    uint64_t window;
    uint64_t sent_nz;        /* non-zero DATA bytes sent this session (uncompressed) */
    uint64_t committed;      /* COMMITTED.bytes */
    uint64_t frames;         /* DATA frames sent this session */
    uint16_t version;        /* the protocol version WELCOME chose */
    uint64_t disk_sent[AGENT_DISKS_MAX]; /* DATA bytes (ZERO included) per disk, this
                                          * session, for DISK_END */
    uint64_t pass_read;      /* source bytes read by the pass running (live.c) */
    uint64_t pass_sent;      /* non-zero DATA bytes of the pass running */
    double *last_progress;   /* the run's clock of the last progress */
    bool progressed;         /* this session moved something forward */
    double rate_t0;          /* --max-rate: when this session began sending */
    uint64_t rate_bytes;     /* payload bytes sent since rate_t0 */
    /* the outcome */
    enum sess_rc rc;
    char code[32];
    char msg[1536];
};

/* Record how the session ends (code, message); returns -1. */
int sess_set(struct sess *s, enum sess_rc rc, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void progress_made(struct sess *s);
/* Send the frame built in s->out. 0 / -1. */
int sess_send(struct sess *s);
int sess_encode_failed(struct sess *s, const char *what);
/* The next frame that is not COMMITTED (those are accounted); it must be of @type. */
int sess_expect(struct sess *s, uint8_t type, struct p2v_msg *m);
/* Take every COMMITTED frame already waiting, without blocking. */
int sess_drain(struct sess *s);
/* Block until @len more non-zero bytes fit in the window. */
int sess_window(struct sess *s, uint64_t len);
/* --max-rate: sleep until the bytes sent this session fit the rate. */
void throttle(struct sess *s, size_t n);
/* Declare disk @i and send what the server does not have (the copy); with @end, then
 * DISK_END and DISK_OK. 0 / -1. */
int sess_disk(struct sess *s, uint32_t i, bool end);
/* DISK_END for disk @i and its DISK_OK. 0 / -1. */
int sess_disk_end(struct sess *s, uint32_t i);
/* Send one chunk of disk @i as DATA (ZERO, stored or zstd). 0 / -1. */
int sess_send_chunk(struct sess *s, uint32_t i, const struct imager_chunk *c);

/* live.c: after FACTS, a live capture's whole session: the copy of every disk (as
 * sess_disk without DISK_END), delta passes, the cutover under a freeze, the last delta,
 * then DISK_END for every disk. 0 / -1 (s->rc says why). */
int live_session(struct sess *s);

#endif /* P2V_AGENT_SESSION_H */
