/* proto.c: the wire protocol v1 frame codec (common/p2v-proto.h; docs/protocol.md).
 *
 * The decoder is the one place where a peer's frame is checked: every byte of a body is
 * read through `struct p2v_rd`, every length and count is compared with its named cap
 * before it is used, counts are checked against the bytes left before multiplying, and a
 * body must be consumed exactly. The session logic may then trust a decoded frame, but
 * for the checks that need its state (p2v_proto_check_data()).
 *
 * The encoders append a header, the body, then patch the header's length and run the
 * decoder over what they wrote: an encoder never emits a frame its own decoder refuses
 * (it rolls the buffer back and fails with EINVAL instead). The cost is a walk over the
 * fields, never over a DATA payload.
 *
 * p2v_hash() uses OpenSSL EVP digests fetched once (thread-safe; the server hashes from
 * many threads at once).
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>

#include <zstd.h>

#include "p2v-proto.h"

/* DATA: u32 disk, u64 off, u32 len, hash[32] */
#define DATA_FIELDS_LEN (4 + 8 + 4 + P2V_PROTO_HASH_LEN)
_Static_assert(P2V_PROTO_DATA_HDR_LEN == P2V_PROTO_HDR_LEN + DATA_FIELDS_LEN,
               "DATA header length");
/* A compressed chunk of the largest size still fits in the largest body. */
_Static_assert(DATA_FIELDS_LEN + ZSTD_COMPRESSBOUND(P2V_PROTO_CHUNK_MAX) <=
                   P2V_PROTO_BODY_MAX,
               "BODY_MAX holds a compressed chunk");
#define RANGE_LEN 16       /* u64 off, u64 len */
#define HASH_ENTRY_LEN 44  /* u64 off, u32 len, hash[32] */
#define WINDOW_MIN (1ull << 20)
#define WINDOW_MAX (1ull << 30)

/* ---------------------------------------------------------------- names */

const char *p2v_proto_type_name(uint8_t type)
{
    switch (type) {
    case P2V_MSG_HELLO: return "HELLO";
    case P2V_MSG_WELCOME: return "WELCOME";
    case P2V_MSG_FACTS: return "FACTS";
    case P2V_MSG_DISK: return "DISK";
    case P2V_MSG_HAVE: return "HAVE";
    case P2V_MSG_DATA: return "DATA";
    case P2V_MSG_DISK_END: return "DISK_END";
    case P2V_MSG_DISK_OK: return "DISK_OK";
    case P2V_MSG_DONE: return "DONE";
    case P2V_MSG_FINISHED: return "FINISHED";
    case P2V_MSG_HASHES: return "HASHES";
    case P2V_MSG_WANT: return "WANT";
    case P2V_MSG_COMMITTED: return "COMMITTED";
    case P2V_MSG_PASS: return "PASS";
    case P2V_MSG_PASS_OK: return "PASS_OK";
    case P2V_MSG_ERROR: return "ERROR";
    default: return "unknown";
    }
}

const char *p2v_proto_pass_phase_name(uint8_t phase)
{
    switch (phase) {
    case P2V_PASS_IDLE: return "idle";
    case P2V_PASS_COPY: return "copy";
    case P2V_PASS_DELTA: return "delta";
    case P2V_PASS_FINAL: return "final";
    default: return "unknown";
    }
}

const char *p2v_proto_err_name(uint16_t code)
{
    switch (code) {
    case P2V_E_PROTO: return "PROTO";
    case P2V_E_VERSION: return "VERSION";
    case P2V_E_AUTH: return "AUTH";
    case P2V_E_NAME: return "NAME";
    case P2V_E_DISK: return "DISK";
    case P2V_E_HASH: return "HASH";
    case P2V_E_NOSPACE: return "NOSPACE";
    case P2V_E_BUSY: return "BUSY";
    case P2V_E_INTERNAL: return "INTERNAL";
    case P2V_E_SHUTDOWN: return "SHUTDOWN";
    default: return "UNKNOWN";
    }
}

bool p2v_proto_err_retryable(uint16_t code)
{
    switch (code) {
    case P2V_E_NOSPACE:
    case P2V_E_BUSY:
    case P2V_E_INTERNAL:
    case P2V_E_SHUTDOWN:
        return true;
    default:
        return false;
    }
}

const char *p2v_hash_name(enum p2v_hash_algo algo)
{
    switch (algo) {
    case P2V_HASH_SHA256: return "sha256";
    case P2V_HASH_BLAKE2B: return "blake2b";
    default: return "unknown";
    }
}

/* ---------------------------------------------------------------- header */

int p2v_proto_header(const uint8_t hdr[P2V_PROTO_HDR_LEN], uint8_t *type, uint8_t *flags,
                     uint32_t *body_len, struct p2v_err *err)
{
    uint32_t len = p2v_get_u32be(hdr);
    uint16_t reserved = p2v_get_u16be(hdr + 6);
    if (reserved != 0)
        return p2v_err_set(err, EPROTO, "frame header: reserved field is 0x%04x, not 0",
                           reserved);
    if (len > P2V_PROTO_BODY_MAX)
        return p2v_err_set(err, EPROTO,
                           "frame header: %s frame: body length %u exceeds the maximum %u",
                           p2v_proto_type_name(hdr[4]), len, (unsigned)P2V_PROTO_BODY_MAX);
    *type = hdr[4];
    *flags = hdr[5];
    *body_len = len;
    return 0;
}

/* ---------------------------------------------------------------- decoder */

struct dec {
    struct p2v_rd r;
    const char *type; /* "HELLO" */
    struct p2v_err *err;
};

__attribute__((format(printf, 2, 3))) static int dec_fail(struct dec *d, const char *fmt, ...)
{
    char msg[P2V_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return p2v_err_set(d->err, EPROTO, "%s frame: %s", d->type, msg);
}

static int dec_short(struct dec *d, const char *field)
{
    return dec_fail(d, "truncated: the body (%zu bytes) ends before %s", d->r.len, field);
}

static int get_u8(struct dec *d, const char *field, uint8_t *v)
{
    return p2v_rd_u8(&d->r, v) < 0 ? dec_short(d, field) : 0;
}

static int get_u16(struct dec *d, const char *field, uint16_t *v)
{
    return p2v_rd_u16be(&d->r, v) < 0 ? dec_short(d, field) : 0;
}

static int get_u32(struct dec *d, const char *field, uint32_t *v)
{
    return p2v_rd_u32be(&d->r, v) < 0 ? dec_short(d, field) : 0;
}

static int get_u64(struct dec *d, const char *field, uint64_t *v)
{
    return p2v_rd_u64be(&d->r, v) < 0 ? dec_short(d, field) : 0;
}

static int get_ptr(struct dec *d, const char *field, const uint8_t **p, size_t n)
{
    return p2v_rd_ptr(&d->r, p, n) < 0 ? dec_short(d, field) : 0;
}

static bool is_printable(uint8_t c)
{
    return c >= 0x20 && c <= 0x7e;
}

/* A string: u16 length (min..max), then printable ASCII bytes. */
static int get_str(struct dec *d, const char *field, uint16_t min, uint16_t max,
                   struct p2v_str *s)
{
    uint16_t n;
    const uint8_t *p;
    if (get_u16(d, field, &n) < 0)
        return -1;
    if (n > max)
        return dec_fail(d, "%s: length %u exceeds the maximum %u", field, n, max);
    if (n < min)
        return n == 0 ? dec_fail(d, "%s: empty", field)
                      : dec_fail(d, "%s: length %u is below the minimum %u", field, n, min);
    if (get_ptr(d, field, &p, n) < 0)
        return -1;
    for (uint16_t i = 0; i < n; i++)
        if (!is_printable(p[i]))
            return dec_fail(d, "%s: byte %u (0x%02x) is not printable ASCII", field, i, p[i]);
    s->p = (const char *)p;
    s->len = n;
    return 0;
}

static int check_flags(struct dec *d, uint8_t flags, uint8_t defined)
{
    if (flags & ~defined)
        return dec_fail(d, "undefined flags 0x%02x", flags & ~defined);
    return 0;
}

static int check_disk(struct dec *d, uint32_t disk)
{
    if (disk >= P2V_PROTO_DISKS_MAX)
        return dec_fail(d, "disk index %u is not below %u", disk, P2V_PROTO_DISKS_MAX);
    return 0;
}

static int check_zero_byte(struct dec *d, const char *field, uint8_t v)
{
    if (v != 0)
        return dec_fail(d, "%s is 0x%02x, not 0", field, v);
    return 0;
}

static int dec_hello(struct dec *d, struct p2v_msg *m)
{
    uint8_t reserved;
    if (get_u16(d, "version_min", &m->u.hello.version_min) < 0 ||
        get_u16(d, "version_max", &m->u.hello.version_max) < 0 ||
        get_u8(d, "the hash algorithm", &m->u.hello.hash_algo) < 0 ||
        get_u8(d, "the reserved byte", &reserved) < 0)
        return -1;
    if (m->u.hello.version_min == 0)
        return dec_fail(d, "version_min is 0");
    if (m->u.hello.version_min > m->u.hello.version_max)
        return dec_fail(d, "version range %u..%u is empty", m->u.hello.version_min,
                        m->u.hello.version_max);
    if (m->u.hello.hash_algo != P2V_HASH_SHA256 && m->u.hello.hash_algo != P2V_HASH_BLAKE2B)
        return dec_fail(d, "unknown hash algorithm %u", m->u.hello.hash_algo);
    if (check_zero_byte(d, "the reserved byte", reserved) < 0)
        return -1;
    /* token and name may be empty here: the server refuses them with AUTH and NAME */
    return get_str(d, "token", 0, P2V_PROTO_TOKEN_MAX, &m->u.hello.token) < 0 ||
                   get_str(d, "name", 0, P2V_PROTO_NAME_MAX, &m->u.hello.name) < 0 ||
                   get_str(d, "source id", 1, P2V_PROTO_SOURCE_ID_MAX,
                           &m->u.hello.source_id) < 0 ||
                   get_str(d, "agent version", 0, P2V_PROTO_VERSION_STR_MAX,
                           &m->u.hello.agent_version) < 0
               ? -1
               : 0;
}

static int dec_welcome(struct dec *d, struct p2v_msg *m)
{
    uint8_t reserved;
    if (get_u16(d, "version", &m->u.welcome.version) < 0 ||
        get_u8(d, "state", &m->u.welcome.state) < 0 ||
        get_u8(d, "the reserved byte", &reserved) < 0 ||
        get_u64(d, "window", &m->u.welcome.window) < 0)
        return -1;
    if (m->u.welcome.version == 0)
        return dec_fail(d, "version is 0");
    if (m->u.welcome.state > P2V_JOB_COMPLETE)
        return dec_fail(d, "unknown state %u", m->u.welcome.state);
    if (check_zero_byte(d, "the reserved byte", reserved) < 0)
        return -1;
    if (m->u.welcome.window < WINDOW_MIN || m->u.welcome.window > WINDOW_MAX)
        return dec_fail(d, "window %llu is outside %llu..%llu",
                        (unsigned long long)m->u.welcome.window, WINDOW_MIN, WINDOW_MAX);
    return get_str(d, "job", 1, P2V_PROTO_JOB_MAX, &m->u.welcome.job);
}

/* struct p2v_str holds the FACTS text's length in a u16 */
_Static_assert(P2V_PROTO_FACTS_MAX <= UINT16_MAX, "FACTS length fits struct p2v_str");

static int dec_facts(struct dec *d, struct p2v_msg *m)
{
    size_t n = p2v_rd_left(&d->r);
    const uint8_t *p;
    if (n == 0)
        return dec_fail(d, "empty");
    if (n > P2V_PROTO_FACTS_MAX)
        return dec_fail(d, "length %zu exceeds the maximum %u", n,
                        (unsigned)P2V_PROTO_FACTS_MAX);
    if (get_ptr(d, "the JSON text", &p, n) < 0)
        return -1;
    const uint8_t *nul = memchr(p, 0, n);
    if (nul)
        return dec_fail(d, "NUL byte at %zu", (size_t)(nul - p));
    m->u.facts.json.p = (const char *)p;
    m->u.facts.json.len = (uint16_t)n;
    return 0;
}

static int dec_disk(struct dec *d, struct p2v_msg *m)
{
    if (get_u32(d, "disk", &m->u.disk.disk) < 0 || get_u64(d, "size", &m->u.disk.size) < 0 ||
        get_u32(d, "sector size", &m->u.disk.sector_size) < 0 ||
        get_u64(d, "planned", &m->u.disk.planned) < 0)
        return -1;
    if (check_disk(d, m->u.disk.disk) < 0)
        return -1;
    if (m->u.disk.size == 0 || m->u.disk.size % 512)
        return dec_fail(d, "size %llu is not a positive multiple of 512",
                        (unsigned long long)m->u.disk.size);
    if (m->u.disk.sector_size != 512 && m->u.disk.sector_size != 4096)
        return dec_fail(d, "sector size %u is neither 512 nor 4096", m->u.disk.sector_size);
    if (m->u.disk.planned > m->u.disk.size)
        return dec_fail(d, "planned %llu exceeds the size %llu",
                        (unsigned long long)m->u.disk.planned,
                        (unsigned long long)m->u.disk.size);
    return get_str(d, "name", 1, P2V_PROTO_DISK_NAME_MAX, &m->u.disk.name) < 0 ||
                   get_str(d, "id", 0, P2V_PROTO_DISK_ID_MAX, &m->u.disk.id) < 0
               ? -1
               : 0;
}

static int dec_ranges(struct dec *d, struct p2v_msg *m)
{
    uint32_t count;
    if (get_u32(d, "disk", &m->u.ranges.disk) < 0 || get_u32(d, "count", &count) < 0)
        return -1;
    if (check_disk(d, m->u.ranges.disk) < 0)
        return -1;
    if (count > P2V_PROTO_RANGES_MAX)
        return dec_fail(d, "count %u exceeds the maximum %u", count, P2V_PROTO_RANGES_MAX);
    /* count <= 4096: the product cannot overflow */
    if (p2v_rd_left(&d->r) < (size_t)count * RANGE_LEN)
        return dec_fail(d, "truncated: %u ranges need %zu bytes, %zu left", count,
                        (size_t)count * RANGE_LEN, p2v_rd_left(&d->r));
    const uint8_t *p;
    if (get_ptr(d, "the ranges", &p, (size_t)count * RANGE_LEN) < 0)
        return -1;
    uint64_t prev_end = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t off = p2v_get_u64be(p + (size_t)i * RANGE_LEN);
        uint64_t len = p2v_get_u64be(p + (size_t)i * RANGE_LEN + 8);
        uint64_t end;
        if (len == 0)
            return dec_fail(d, "range %u: length 0", i);
        if (P2V_ADD_OVERFLOW(off, len, &end))
            return dec_fail(d, "range %u: offset %llu + length %llu overflows", i,
                            (unsigned long long)off, (unsigned long long)len);
        if (i > 0 && off < prev_end)
            return dec_fail(d, "range %u: offset %llu is before the end %llu of range %u "
                               "(ranges must be sorted and not overlap)",
                            i, (unsigned long long)off, (unsigned long long)prev_end, i - 1);
        prev_end = end;
    }
    m->u.ranges.count = count;
    m->u.ranges.ranges = p;
    return 0;
}

static int dec_data(struct dec *d, struct p2v_msg *m)
{
    uint32_t disk, len;
    uint64_t off, end;
    const uint8_t *hash;
    if (get_u32(d, "disk", &disk) < 0 || get_u64(d, "offset", &off) < 0 ||
        get_u32(d, "length", &len) < 0 || get_ptr(d, "the hash", &hash, P2V_PROTO_HASH_LEN) < 0)
        return -1;
    if ((m->flags & P2V_DATA_ZERO) && (m->flags & P2V_DATA_ZSTD))
        return dec_fail(d, "flags ZERO and ZSTD are both set");
    if (check_disk(d, disk) < 0)
        return -1;
    if (off % 512)
        return dec_fail(d, "offset %llu is not a multiple of 512", (unsigned long long)off);
    if (len == 0)
        return dec_fail(d, "length 0");
    if (len % 512)
        return dec_fail(d, "length %u is not a multiple of 512", len);
    if (len > P2V_PROTO_CHUNK_MAX)
        return dec_fail(d, "length %u exceeds the maximum %u", len, P2V_PROTO_CHUNK_MAX);
    if (P2V_ADD_OVERFLOW(off, (uint64_t)len, &end))
        return dec_fail(d, "offset %llu + length %u overflows", (unsigned long long)off, len);
    size_t plen = p2v_rd_left(&d->r);
    if (m->flags & P2V_DATA_ZERO) {
        if (plen)
            return dec_fail(d, "ZERO chunk with a payload of %zu bytes", plen);
        if (!p2v_is_zero(hash, P2V_PROTO_HASH_LEN))
            return dec_fail(d, "ZERO chunk with a non-zero hash");
    } else if (m->flags & P2V_DATA_ZSTD) {
        size_t bound = ZSTD_compressBound(len);
        if (plen == 0)
            return dec_fail(d, "ZSTD chunk with an empty payload");
        if (plen > bound)
            return dec_fail(d, "ZSTD payload of %zu bytes exceeds the bound %zu for "
                               "length %u", plen, bound, len);
    } else if (plen != len) {
        return dec_fail(d, "payload of %zu bytes, not the length %u", plen, len);
    }
    const uint8_t *payload = NULL;
    if (plen && get_ptr(d, "the payload", &payload, plen) < 0)
        return -1;
    m->u.data.disk = disk;
    m->u.data.off = off;
    m->u.data.len = len;
    m->u.data.hash = hash;
    m->u.data.payload = payload;
    m->u.data.payload_len = plen;
    return 0;
}

static int dec_disk_end(struct dec *d, struct p2v_msg *m)
{
    if (get_u32(d, "disk", &m->u.disk_end.disk) < 0 ||
        get_u64(d, "bytes", &m->u.disk_end.bytes) < 0)
        return -1;
    return check_disk(d, m->u.disk_end.disk);
}

static int dec_hashes(struct dec *d, struct p2v_msg *m)
{
    uint32_t count;
    if (get_u32(d, "disk", &m->u.hashes.disk) < 0 || get_u32(d, "count", &count) < 0)
        return -1;
    if (check_disk(d, m->u.hashes.disk) < 0)
        return -1;
    if (count > P2V_PROTO_HASHES_MAX)
        return dec_fail(d, "count %u exceeds the maximum %u", count, P2V_PROTO_HASHES_MAX);
    if (p2v_rd_left(&d->r) < (size_t)count * HASH_ENTRY_LEN)
        return dec_fail(d, "truncated: %u entries need %zu bytes, %zu left", count,
                        (size_t)count * HASH_ENTRY_LEN, p2v_rd_left(&d->r));
    const uint8_t *p;
    if (get_ptr(d, "the entries", &p, (size_t)count * HASH_ENTRY_LEN) < 0)
        return -1;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t off = p2v_get_u64be(p + (size_t)i * HASH_ENTRY_LEN), end;
        uint32_t len = p2v_get_u32be(p + (size_t)i * HASH_ENTRY_LEN + 8);
        if (off % 512)
            return dec_fail(d, "entry %u: offset %llu is not a multiple of 512", i,
                            (unsigned long long)off);
        if (len == 0 || len % 512)
            return dec_fail(d, "entry %u: length %u is not a positive multiple of 512", i,
                            len);
        if (P2V_ADD_OVERFLOW(off, (uint64_t)len, &end))
            return dec_fail(d, "entry %u: offset %llu + length %u overflows", i,
                            (unsigned long long)off, len);
    }
    m->u.hashes.count = count;
    m->u.hashes.entries = p;
    return 0;
}

/* PASS: u32 pass, u8 phase, u8 reserved, u64 bytes_read, u64 bytes_sent, u32 duration_ms,
 * u32 freeze_ms. */
static int dec_pass(struct dec *d, struct p2v_msg *m)
{
    uint8_t reserved;
    if (get_u32(d, "pass", &m->u.pass.pass) < 0 || get_u8(d, "phase", &m->u.pass.phase) < 0 ||
        get_u8(d, "reserved", &reserved) < 0 ||
        get_u64(d, "bytes_read", &m->u.pass.bytes_read) < 0 ||
        get_u64(d, "bytes_sent", &m->u.pass.bytes_sent) < 0 ||
        get_u32(d, "duration_ms", &m->u.pass.duration_ms) < 0 ||
        get_u32(d, "freeze_ms", &m->u.pass.freeze_ms) < 0)
        return -1;
    if (reserved)
        return dec_fail(d, "reserved byte is %u, not 0", reserved);
    if (m->u.pass.phase > P2V_PASS_FINAL)
        return dec_fail(d, "unknown phase %u", m->u.pass.phase);
    if ((m->u.pass.phase == P2V_PASS_IDLE) != (m->u.pass.pass == 0))
        return dec_fail(d, "pass %u with phase %u (pass 0 is the idle heartbeat only)",
                        m->u.pass.pass, m->u.pass.phase);
    if (m->u.pass.bytes_sent > m->u.pass.bytes_read)
        return dec_fail(d, "bytes_sent %llu exceeds bytes_read %llu",
                        (unsigned long long)m->u.pass.bytes_sent,
                        (unsigned long long)m->u.pass.bytes_read);
    if (m->u.pass.freeze_ms && m->u.pass.phase != P2V_PASS_FINAL)
        return dec_fail(d, "freeze_ms in a phase-%u pass", m->u.pass.phase);
    return 0;
}

int p2v_proto_decode(uint8_t type, uint8_t flags, const uint8_t *body, size_t len,
                     struct p2v_msg *m, struct p2v_err *err)
{
    struct dec d = {.type = p2v_proto_type_name(type), .err = err};
    struct p2v_msg tmp;
    uint8_t defined = 0;
    int r;

    if (len > P2V_PROTO_BODY_MAX)
        return p2v_err_set(err, EPROTO, "%s frame: body length %zu exceeds the maximum %u",
                           d.type, len, (unsigned)P2V_PROTO_BODY_MAX);
    if (type == 0 || (type > P2V_MSG_PASS_OK && type != P2V_MSG_ERROR))
        return p2v_err_set(err, EPROTO, "unknown frame type 0x%02x (body of %zu bytes)", type,
                           len);
    p2v_rd_init(&d.r, body, len);
    memset(&tmp, 0, sizeof tmp);
    tmp.type = type;
    tmp.flags = flags;
    switch (type) {
    case P2V_MSG_DISK: defined = P2V_DISK_ALL_BLOCKS; break;
    case P2V_MSG_HAVE:
    case P2V_MSG_WANT:
    case P2V_MSG_HASHES: defined = P2V_RANGES_MORE; break;
    case P2V_MSG_DATA: defined = P2V_DATA_ZERO | P2V_DATA_ZSTD; break;
    case P2V_MSG_PASS_OK: defined = P2V_PASS_CUTOVER; break;
    default: break;
    }
    if (check_flags(&d, flags, defined) < 0)
        return -1;
    switch (type) {
    case P2V_MSG_HELLO: r = dec_hello(&d, &tmp); break;
    case P2V_MSG_WELCOME: r = dec_welcome(&d, &tmp); break;
    case P2V_MSG_FACTS: r = dec_facts(&d, &tmp); break;
    case P2V_MSG_DISK: r = dec_disk(&d, &tmp); break;
    case P2V_MSG_HAVE:
    case P2V_MSG_WANT: r = dec_ranges(&d, &tmp); break;
    case P2V_MSG_DATA: r = dec_data(&d, &tmp); break;
    case P2V_MSG_DISK_END:
    case P2V_MSG_DISK_OK: r = dec_disk_end(&d, &tmp); break;
    case P2V_MSG_FINISHED:
        r = get_str(&d, "text", 0, P2V_PROTO_MSG_MAX, &tmp.u.finished.text);
        break;
    case P2V_MSG_HASHES: r = dec_hashes(&d, &tmp); break;
    case P2V_MSG_COMMITTED:
        r = get_u64(&d, "frames", &tmp.u.committed.frames) < 0 ||
                    get_u64(&d, "bytes", &tmp.u.committed.bytes) < 0
                ? -1
                : 0;
        break;
    case P2V_MSG_PASS: r = dec_pass(&d, &tmp); break;
    case P2V_MSG_ERROR:
        r = get_u16(&d, "code", &tmp.u.error.code) < 0 ||
                    get_str(&d, "text", 0, P2V_PROTO_MSG_MAX, &tmp.u.error.text) < 0
                ? -1
                : 0;
        break;
    default: r = 0; break; /* DONE, PASS_OK: an empty body */
    }
    if (r < 0)
        return -1;
    if (p2v_rd_left(&d.r))
        return dec_fail(&d, "%zu trailing bytes after the last field", p2v_rd_left(&d.r));
    *m = tmp;
    return 0;
}

void p2v_proto_range(const struct p2v_msg *m, uint32_t i, struct p2v_range *r)
{
    const uint8_t *p = m->u.ranges.ranges + (size_t)i * RANGE_LEN;
    r->off = p2v_get_u64be(p);
    r->len = p2v_get_u64be(p + 8);
}

void p2v_proto_hash_entry(const struct p2v_msg *m, uint32_t i, uint64_t *off, uint32_t *len,
                          const uint8_t **hash)
{
    const uint8_t *p = m->u.hashes.entries + (size_t)i * HASH_ENTRY_LEN;
    *off = p2v_get_u64be(p);
    *len = p2v_get_u32be(p + 8);
    *hash = p + 12;
}

int p2v_proto_check_data(const struct p2v_msg *m, uint64_t disk_size, struct p2v_err *err)
{
    if (m->type != P2V_MSG_DATA)
        return p2v_err_set(err, EINVAL, "%s frame: not a DATA frame",
                           p2v_proto_type_name(m->type));
    if (!p2v_range_ok(m->u.data.off, m->u.data.len, disk_size))
        return p2v_err_set(err, ERANGE,
                           "DATA frame: range %llu+%u of disk %u ends past the disk's size "
                           "%llu",
                           (unsigned long long)m->u.data.off, m->u.data.len, m->u.data.disk,
                           (unsigned long long)disk_size);
    return 0;
}

/* ---------------------------------------------------------------- encoders */

/* Start a frame: the header with a zero length, patched by frame_end(). */
static int frame_begin(struct p2v_buf *out, uint8_t type, uint8_t flags, size_t *start)
{
    uint8_t *h;
    *start = out->len;
    if (!(h = p2v_buf_extend(out, P2V_PROTO_HDR_LEN)))
        return -1;
    memset(h, 0, P2V_PROTO_HDR_LEN);
    h[4] = type;
    h[5] = flags;
    return 0;
}

/* Finish the frame begun at @start: patch its length, then decode it. On any failure
 * (@r < 0 from the fields' puts, or a frame our decoder refuses) the buffer is rolled
 * back and -1 returned with errno set. */
static int frame_end(struct p2v_buf *out, size_t start, int r)
{
    int saved = errno;
    if (r < 0)
        goto fail;
    size_t body = out->len - start - P2V_PROTO_HDR_LEN;
    if (body > P2V_PROTO_BODY_MAX) {
        saved = EINVAL;
        goto fail;
    }
    uint8_t *h = out->data + start;
    p2v_put_u32be(h, (uint32_t)body);
    struct p2v_msg m;
    if (p2v_proto_decode(h[4], h[5], h + P2V_PROTO_HDR_LEN, body, &m, NULL) < 0) {
        saved = EINVAL;
        goto fail;
    }
    return 0;
fail:
    out->len = start;
    errno = saved ? saved : EINVAL;
    return -1;
}

static int put_str(struct p2v_buf *out, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > UINT16_MAX) {
        errno = EINVAL;
        return -1;
    }
    if (p2v_buf_put_u16be(out, (uint16_t)n) < 0 || p2v_buf_put(out, s, n) < 0)
        return -1;
    return 0;
}

int p2v_proto_put_hello(struct p2v_buf *out, uint8_t hash_algo, const char *token,
                        const char *name, const char *source_id, const char *agent_version)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_HELLO, 0, &start) < 0)
        return -1;
    int r = p2v_buf_put_u16be(out, P2V_PROTO_VERSION_MIN) < 0 ||
                    p2v_buf_put_u16be(out, P2V_PROTO_VERSION) < 0 ||
                    p2v_buf_put_u8(out, hash_algo) < 0 || p2v_buf_put_u8(out, 0) < 0 ||
                    put_str(out, token) < 0 || put_str(out, name) < 0 ||
                    put_str(out, source_id) < 0 || put_str(out, agent_version) < 0
                ? -1
                : 0;
    return frame_end(out, start, r);
}

int p2v_proto_put_welcome_version(struct p2v_buf *out, uint16_t version, uint8_t state,
                                  uint64_t window, const char *job)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_WELCOME, 0, &start) < 0)
        return -1;
    int r = p2v_buf_put_u16be(out, version) < 0 || p2v_buf_put_u8(out, state) < 0 ||
                    p2v_buf_put_u8(out, 0) < 0 || p2v_buf_put_u64be(out, window) < 0 ||
                    put_str(out, job) < 0
                ? -1
                : 0;
    return frame_end(out, start, r);
}

int p2v_proto_put_welcome(struct p2v_buf *out, uint8_t state, uint64_t window,
                          const char *job)
{
    return p2v_proto_put_welcome_version(out, P2V_PROTO_VERSION, state, window, job);
}

int p2v_proto_put_facts(struct p2v_buf *out, const char *json, size_t len)
{
    size_t start;
    if (!json || len == 0 || len > P2V_PROTO_FACTS_MAX) {
        errno = EINVAL;
        return -1;
    }
    if (frame_begin(out, P2V_MSG_FACTS, 0, &start) < 0)
        return -1;
    return frame_end(out, start, p2v_buf_put(out, json, len));
}

int p2v_proto_put_disk(struct p2v_buf *out, uint32_t disk, uint64_t size,
                       uint32_t sector_size, uint64_t planned, uint8_t flags,
                       const char *name, const char *id)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_DISK, flags, &start) < 0)
        return -1;
    int r = p2v_buf_put_u32be(out, disk) < 0 || p2v_buf_put_u64be(out, size) < 0 ||
                    p2v_buf_put_u32be(out, sector_size) < 0 ||
                    p2v_buf_put_u64be(out, planned) < 0 || put_str(out, name) < 0 ||
                    put_str(out, id) < 0
                ? -1
                : 0;
    return frame_end(out, start, r);
}

int p2v_proto_put_ranges(struct p2v_buf *out, uint8_t type, uint8_t flags, uint32_t disk,
                         const struct p2v_range *ranges, uint32_t count)
{
    size_t start;
    if ((type != P2V_MSG_HAVE && type != P2V_MSG_WANT) || count > P2V_PROTO_RANGES_MAX ||
        (count && !ranges)) {
        errno = EINVAL;
        return -1;
    }
    if (frame_begin(out, type, flags, &start) < 0)
        return -1;
    uint8_t *p;
    int r = -1;
    if (p2v_buf_put_u32be(out, disk) == 0 && p2v_buf_put_u32be(out, count) == 0 &&
        (p = p2v_buf_extend(out, (size_t)count * RANGE_LEN))) {
        for (uint32_t i = 0; i < count; i++) {
            p2v_put_u64be(p + (size_t)i * RANGE_LEN, ranges[i].off);
            p2v_put_u64be(p + (size_t)i * RANGE_LEN + 8, ranges[i].len);
        }
        r = 0;
    }
    return frame_end(out, start, r);
}

void p2v_proto_data_header(uint8_t hdr[P2V_PROTO_DATA_HDR_LEN], uint8_t flags,
                           uint32_t disk, uint64_t off, uint32_t len,
                           const uint8_t hash[P2V_PROTO_HASH_LEN], size_t payload_len)
{
    p2v_put_u32be(hdr, (uint32_t)(DATA_FIELDS_LEN + payload_len));
    hdr[4] = P2V_MSG_DATA;
    hdr[5] = flags;
    p2v_put_u16be(hdr + 6, 0);
    p2v_put_u32be(hdr + 8, disk);
    p2v_put_u64be(hdr + 12, off);
    p2v_put_u32be(hdr + 20, len);
    if (hash)
        memcpy(hdr + 24, hash, P2V_PROTO_HASH_LEN);
    else
        memset(hdr + 24, 0, P2V_PROTO_HASH_LEN);
}

int p2v_proto_put_data(struct p2v_buf *out, uint8_t flags, uint32_t disk, uint64_t off,
                       uint32_t len, const uint8_t hash[P2V_PROTO_HASH_LEN],
                       const void *payload, size_t payload_len)
{
    size_t start = out->len;
    if (payload_len > P2V_PROTO_BODY_MAX - DATA_FIELDS_LEN || (payload_len && !payload)) {
        errno = EINVAL;
        return -1;
    }
    uint8_t *p = p2v_buf_extend(out, P2V_PROTO_DATA_HDR_LEN + payload_len);
    if (!p)
        return -1;
    p2v_proto_data_header(p, flags, disk, off, len, hash, payload_len);
    if (payload_len)
        memcpy(p + P2V_PROTO_DATA_HDR_LEN, payload, payload_len);
    return frame_end(out, start, 0);
}

int p2v_proto_put_disk_end(struct p2v_buf *out, uint8_t type, uint32_t disk, uint64_t bytes)
{
    size_t start;
    if (type != P2V_MSG_DISK_END && type != P2V_MSG_DISK_OK) {
        errno = EINVAL;
        return -1;
    }
    if (frame_begin(out, type, 0, &start) < 0)
        return -1;
    int r = p2v_buf_put_u32be(out, disk) < 0 || p2v_buf_put_u64be(out, bytes) < 0 ? -1 : 0;
    return frame_end(out, start, r);
}

int p2v_proto_put_done(struct p2v_buf *out)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_DONE, 0, &start) < 0)
        return -1;
    return frame_end(out, start, 0);
}

int p2v_proto_put_committed(struct p2v_buf *out, uint64_t frames, uint64_t bytes)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_COMMITTED, 0, &start) < 0)
        return -1;
    int r = p2v_buf_put_u64be(out, frames) < 0 || p2v_buf_put_u64be(out, bytes) < 0 ? -1 : 0;
    return frame_end(out, start, r);
}

int p2v_proto_put_pass(struct p2v_buf *out, uint32_t pass, uint8_t phase, uint64_t bytes_read,
                       uint64_t bytes_sent, uint32_t duration_ms, uint32_t freeze_ms)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_PASS, 0, &start) < 0)
        return -1;
    int r = p2v_buf_put_u32be(out, pass) < 0 || p2v_buf_put_u8(out, phase) < 0 ||
                    p2v_buf_put_u8(out, 0) < 0 || p2v_buf_put_u64be(out, bytes_read) < 0 ||
                    p2v_buf_put_u64be(out, bytes_sent) < 0 ||
                    p2v_buf_put_u32be(out, duration_ms) < 0 ||
                    p2v_buf_put_u32be(out, freeze_ms) < 0
                ? -1
                : 0;
    return frame_end(out, start, r);
}

int p2v_proto_put_pass_ok(struct p2v_buf *out, uint8_t flags)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_PASS_OK, flags, &start) < 0)
        return -1;
    return frame_end(out, start, 0);
}

int p2v_proto_put_finished(struct p2v_buf *out, const char *text)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_FINISHED, 0, &start) < 0)
        return -1;
    return frame_end(out, start, put_str(out, text));
}

int p2v_proto_put_hashes(struct p2v_buf *out, uint8_t flags, uint32_t disk,
                         const uint64_t *offs, const uint32_t *lens,
                         const uint8_t (*hashes)[P2V_PROTO_HASH_LEN], uint32_t count)
{
    size_t start;
    if (count > P2V_PROTO_HASHES_MAX || (count && (!offs || !lens || !hashes))) {
        errno = EINVAL;
        return -1;
    }
    if (frame_begin(out, P2V_MSG_HASHES, flags, &start) < 0)
        return -1;
    uint8_t *p;
    int r = -1;
    if (p2v_buf_put_u32be(out, disk) == 0 && p2v_buf_put_u32be(out, count) == 0 &&
        (p = p2v_buf_extend(out, (size_t)count * HASH_ENTRY_LEN))) {
        for (uint32_t i = 0; i < count; i++) {
            uint8_t *e = p + (size_t)i * HASH_ENTRY_LEN;
            p2v_put_u64be(e, offs[i]);
            p2v_put_u32be(e + 8, lens[i]);
            memcpy(e + 12, hashes[i], P2V_PROTO_HASH_LEN);
        }
        r = 0;
    }
    return frame_end(out, start, r);
}

int p2v_proto_put_error(struct p2v_buf *out, uint16_t code, const char *text)
{
    size_t start;
    if (frame_begin(out, P2V_MSG_ERROR, 0, &start) < 0)
        return -1;
    int r = p2v_buf_put_u16be(out, code) < 0 || put_str(out, text) < 0 ? -1 : 0;
    return frame_end(out, start, r);
}
