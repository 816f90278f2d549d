/* Unit tests of the wire protocol v1 codec (common/proto.c): every frame type encoded
 * and decoded back, the frame header's checks, a table of malformed bodies each refused
 * with its expected message, the encoders' caps, the DATA range check at a disk's end,
 * and the content hashes against known digests. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "p2v-common.h"
#include "p2v-proto.h"
#include "tap.h"

/* Decode the one frame held in @b (header + body). 0 / -1. */
static int decode_frame(const struct p2v_buf *b, struct p2v_msg *m, struct p2v_err *err)
{
    uint8_t type, flags;
    uint32_t len;
    if (b->len < P2V_PROTO_HDR_LEN)
        return p2v_err_set(err, EPROTO, "short frame");
    if (p2v_proto_header(b->data, &type, &flags, &len, err) < 0)
        return -1;
    if (len != b->len - P2V_PROTO_HDR_LEN)
        return p2v_err_set(err, EPROTO, "header length %u, body %zu", len,
                           b->len - P2V_PROTO_HDR_LEN);
    return p2v_proto_decode(type, flags, b->data + P2V_PROTO_HDR_LEN, len, m, err);
}

static bool str_is(struct p2v_str s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

static void test_roundtrip(void)
{
    struct p2v_buf b = P2V_BUF_INIT;
    struct p2v_msg m;
    struct p2v_err err = {0};
    uint8_t hash[P2V_PROTO_HASH_LEN];
    for (int i = 0; i < P2V_PROTO_HASH_LEN; i++)
        hash[i] = (uint8_t)(i * 7 + 1);

    ok(p2v_proto_put_hello(&b, P2V_HASH_BLAKE2B, "tok", "web-01", "abc123", "0.1.0") == 0 &&
           decode_frame(&b, &m, &err) == 0,
       "HELLO round trip");
    ok(m.type == P2V_MSG_HELLO && m.u.hello.version_min == 1 && m.u.hello.version_max == 2 &&
           m.u.hello.hash_algo == P2V_HASH_BLAKE2B && str_is(m.u.hello.token, "tok") &&
           str_is(m.u.hello.name, "web-01") && str_is(m.u.hello.source_id, "abc123") &&
           str_is(m.u.hello.agent_version, "0.1.0"),
       "HELLO fields");
    p2v_buf_reset(&b);

    ok(p2v_proto_put_welcome(&b, P2V_JOB_RESUME, 32u << 20, "web-01-2") == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_WELCOME &&
           m.u.welcome.version == 2 && m.u.welcome.state == P2V_JOB_RESUME &&
           m.u.welcome.window == 32u << 20 && str_is(m.u.welcome.job, "web-01-2"),
       "WELCOME round trip");
    p2v_buf_reset(&b);

    const char *json = "{\"name\":\"h\u00e9\"}"; /* UTF-8 is fine in FACTS */
    ok(p2v_proto_put_facts(&b, json, strlen(json)) == 0 && decode_frame(&b, &m, &err) == 0 &&
           m.type == P2V_MSG_FACTS && str_is(m.u.facts.json, json),
       "FACTS round trip");
    p2v_buf_reset(&b);

    ok(p2v_proto_put_disk(&b, 15, 1ull << 40, 4096, 12345 * 512, P2V_DISK_ALL_BLOCKS, "sda",
                          "ATA-QEMU_HARDDISK_QM00001") == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_DISK &&
           m.flags == P2V_DISK_ALL_BLOCKS && m.u.disk.disk == 15 &&
           m.u.disk.size == 1ull << 40 && m.u.disk.sector_size == 4096 &&
           m.u.disk.planned == 12345 * 512 && str_is(m.u.disk.name, "sda") &&
           str_is(m.u.disk.id, "ATA-QEMU_HARDDISK_QM00001"),
       "DISK round trip");
    p2v_buf_reset(&b);

    struct p2v_range rs[3] = {{0, 512}, {512, 4096}, {UINT64_MAX - 1024, 1024}}, r;
    ok(p2v_proto_put_ranges(&b, P2V_MSG_HAVE, P2V_RANGES_MORE, 2, rs, 3) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_HAVE &&
           m.flags == P2V_RANGES_MORE && m.u.ranges.disk == 2 && m.u.ranges.count == 3,
       "HAVE round trip");
    bool same = true;
    for (uint32_t i = 0; i < 3; i++) {
        p2v_proto_range(&m, i, &r);
        same = same && r.off == rs[i].off && r.len == rs[i].len;
    }
    ok(same, "HAVE ranges (adjacent ones, one ending at 2^64)");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_ranges(&b, P2V_MSG_WANT, 0, 0, NULL, 0) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_WANT && m.u.ranges.count == 0,
       "WANT with no range");
    p2v_buf_reset(&b);

    uint8_t *chunk = malloc(P2V_PROTO_CHUNK_MAX);
    for (size_t i = 0; i < P2V_PROTO_CHUNK_MAX; i++)
        chunk[i] = (uint8_t)(i * 31 + (i >> 9));
    ok(p2v_proto_put_data(&b, 0, 3, 1ull << 39, P2V_PROTO_CHUNK_MAX, hash, chunk,
                          P2V_PROTO_CHUNK_MAX) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_DATA && m.flags == 0 &&
           m.u.data.disk == 3 && m.u.data.off == 1ull << 39 &&
           m.u.data.len == P2V_PROTO_CHUNK_MAX && memcmp(m.u.data.hash, hash, 32) == 0 &&
           m.u.data.payload_len == P2V_PROTO_CHUNK_MAX &&
           memcmp(m.u.data.payload, chunk, P2V_PROTO_CHUNK_MAX) == 0,
       "DATA (plain, 1 MiB) round trip");
    p2v_buf_reset(&b);

    size_t bound = ZSTD_compressBound(P2V_PROTO_CHUNK_MAX);
    uint8_t *z = malloc(bound);
    size_t zn = ZSTD_compress(z, bound, chunk, P2V_PROTO_CHUNK_MAX, 1);
    ok(!ZSTD_isError(zn) && p2v_proto_put_data(&b, P2V_DATA_ZSTD, 0, 512, P2V_PROTO_CHUNK_MAX,
                                               hash, z, zn) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.flags == P2V_DATA_ZSTD &&
           m.u.data.payload_len == zn && memcmp(m.u.data.payload, z, zn) == 0,
       "DATA (zstd) round trip");
    p2v_buf_reset(&b);
    /* incompressible data at the bound: the largest body there is */
    memset(z, 0xa5, bound);
    ok(p2v_proto_put_data(&b, P2V_DATA_ZSTD, 0, 0, P2V_PROTO_CHUNK_MAX, hash, z, bound) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.u.data.payload_len == bound,
       "DATA (zstd) at the compress bound of 1 MiB fits the body cap");
    p2v_buf_reset(&b);
    free(z);
    free(chunk);

    ok(p2v_proto_put_data(&b, P2V_DATA_ZERO, 1, 4096, 65536, NULL, NULL, 0) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.flags == P2V_DATA_ZERO &&
           m.u.data.payload_len == 0 && p2v_is_zero(m.u.data.hash, 32) &&
           b.len == P2V_PROTO_DATA_HDR_LEN,
       "DATA (zero) round trip, header only");
    p2v_buf_reset(&b);

    uint8_t dh[P2V_PROTO_DATA_HDR_LEN];
    uint8_t payload[1024];
    memset(payload, 0x5a, sizeof payload);
    p2v_proto_data_header(dh, 0, 4, 1024, 1024, hash, sizeof payload);
    p2v_buf_put(&b, dh, sizeof dh);
    p2v_buf_put(&b, payload, sizeof payload);
    ok(decode_frame(&b, &m, &err) == 0 && m.u.data.disk == 4 && m.u.data.off == 1024 &&
           m.u.data.len == 1024 && m.u.data.payload_len == 1024,
       "p2v_proto_data_header + payload decodes");
    p2v_buf_reset(&b);

    ok(p2v_proto_put_disk_end(&b, P2V_MSG_DISK_END, 7, 999) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_DISK_END &&
           m.u.disk_end.disk == 7 && m.u.disk_end.bytes == 999,
       "DISK_END round trip");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_disk_end(&b, P2V_MSG_DISK_OK, 0, UINT64_MAX) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_DISK_OK &&
           m.u.disk_end.bytes == UINT64_MAX,
       "DISK_OK round trip");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_done(&b) == 0 && b.len == P2V_PROTO_HDR_LEN &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_DONE,
       "DONE round trip");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_finished(&b, "job web-01: 2 disks received") == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_FINISHED &&
           str_is(m.u.finished.text, "job web-01: 2 disks received"),
       "FINISHED round trip");
    p2v_buf_reset(&b);

    uint64_t offs[2] = {0, 1ull << 20};
    uint32_t lens[2] = {1u << 20, 4096};
    uint8_t hs[2][P2V_PROTO_HASH_LEN];
    memset(hs[0], 1, 32);
    memset(hs[1], 2, 32);
    ok(p2v_proto_put_hashes(&b, P2V_RANGES_MORE, 9, offs, lens, (const uint8_t(*)[32])hs, 2) ==
               0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_HASHES &&
           m.flags == P2V_RANGES_MORE && m.u.hashes.disk == 9 && m.u.hashes.count == 2,
       "HASHES round trip");
    uint64_t off;
    uint32_t len;
    const uint8_t *h;
    p2v_proto_hash_entry(&m, 1, &off, &len, &h);
    ok(off == 1ull << 20 && len == 4096 && memcmp(h, hs[1], 32) == 0, "HASHES entry 1");
    p2v_buf_reset(&b);

    ok(p2v_proto_put_committed(&b, 12, 12u << 20) == 0 && decode_frame(&b, &m, &err) == 0 &&
           m.type == P2V_MSG_COMMITTED && m.u.committed.frames == 12 &&
           m.u.committed.bytes == 12u << 20,
       "COMMITTED round trip");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_welcome_version(&b, 1, P2V_JOB_NEW, 1u << 20, "j") == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.u.welcome.version == 1,
       "WELCOME naming version 1");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_pass(&b, 3, P2V_PASS_DELTA, 5u << 20, 1u << 20, 1234, 0) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_PASS &&
           m.u.pass.pass == 3 && m.u.pass.phase == P2V_PASS_DELTA &&
           m.u.pass.bytes_read == 5u << 20 && m.u.pass.bytes_sent == 1u << 20 &&
           m.u.pass.duration_ms == 1234 && m.u.pass.freeze_ms == 0,
       "PASS round trip");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_pass(&b, 9, P2V_PASS_FINAL, 7, 7, 10, 250) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.u.pass.freeze_ms == 250,
       "PASS final with its freeze window");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_pass(&b, 0, P2V_PASS_IDLE, 0, 0, 0, 0) == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.u.pass.phase == P2V_PASS_IDLE,
       "PASS heartbeat");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_pass_ok(&b, P2V_PASS_CUTOVER) == 0 && decode_frame(&b, &m, &err) == 0 &&
           m.type == P2V_MSG_PASS_OK && m.flags == P2V_PASS_CUTOVER,
       "PASS_OK round trip (cutover)");
    p2v_buf_reset(&b);
    errno = 0;
    ok(p2v_proto_put_pass(&b, 2, P2V_PASS_DELTA, 1, 2, 0, 0) == -1 && errno == EINVAL &&
           b.len == 0,
       "PASS: more sent than read is refused by the encoder");
    p2v_buf_reset(&b);
    ok(p2v_proto_put_error(&b, P2V_E_BUSY, "job 'web-01' is busy") == 0 &&
           decode_frame(&b, &m, &err) == 0 && m.type == P2V_MSG_ERROR &&
           m.u.error.code == P2V_E_BUSY && str_is(m.u.error.text, "job 'web-01' is busy"),
       "ERROR round trip");
    p2v_buf_reset(&b);

    /* two frames in one buffer: encoders append */
    ok(p2v_proto_put_done(&b) == 0 && p2v_proto_put_committed(&b, 1, 2) == 0 &&
           b.len == 2 * P2V_PROTO_HDR_LEN + 16,
       "encoders append to the buffer");
    p2v_buf_release(&b);
}

/* ---------------------------------------------------------------- malformed frames */

struct body {
    uint8_t d[512];
    size_t n;
};
static void b8(struct body *b, uint8_t v) { b->d[b->n++] = v; }
static void b16(struct body *b, uint16_t v) { p2v_put_u16be(b->d + b->n, v); b->n += 2; }
static void b32(struct body *b, uint32_t v) { p2v_put_u32be(b->d + b->n, v); b->n += 4; }
static void b64(struct body *b, uint64_t v) { p2v_put_u64be(b->d + b->n, v); b->n += 8; }
static void bstr(struct body *b, const char *s)
{
    b16(b, (uint16_t)strlen(s));
    memcpy(b->d + b->n, s, strlen(s));
    b->n += strlen(s);
}
static void bfill(struct body *b, uint8_t v, size_t n)
{
    memset(b->d + b->n, v, n);
    b->n += n;
}

static void refused(uint8_t type, uint8_t flags, const struct body *b, size_t len,
                    const char *fragment, const char *what)
{
    struct p2v_msg m;
    struct p2v_err err = {0};
    int r = p2v_proto_decode(type, flags, b->d, len, &m, &err);
    if (!ok(r == -1 && err.code == EPROTO && strstr(err.msg, fragment), "refused: %s", what))
        diag("  r=%d code=%d msg '%s', want '%s'", r, err.code, err.msg, fragment);
}

static void hello_base(struct body *b, uint16_t vmin, uint16_t vmax, uint8_t algo,
                       uint8_t reserved)
{
    b->n = 0;
    b16(b, vmin);
    b16(b, vmax);
    b8(b, algo);
    b8(b, reserved);
}

static void data_base(struct body *b, uint32_t disk, uint64_t off, uint32_t len)
{
    b->n = 0;
    b32(b, disk);
    b64(b, off);
    b32(b, len);
    bfill(b, 0, P2V_PROTO_HASH_LEN);
}

static void test_malformed(void)
{
    struct body b;
    struct p2v_msg m;
    struct p2v_err err = {0};

    /* HELLO */
    hello_base(&b, 1, 1, 1, 0);
    bstr(&b, "tok"), bstr(&b, "name"), bstr(&b, "src"), bstr(&b, "0.1");
    ok(p2v_proto_decode(P2V_MSG_HELLO, 0, b.d, b.n, &m, &err) == 0, "the HELLO base is valid");
    for (size_t cut = 0; cut < b.n; cut += 3)
        refused(P2V_MSG_HELLO, 0, &b, cut, "HELLO frame: truncated", "HELLO truncated");
    b8(&b, 0);
    refused(P2V_MSG_HELLO, 0, &b, b.n, "HELLO frame: 1 trailing bytes", "HELLO trailing byte");
    refused(P2V_MSG_HELLO, 0x01, &b, b.n - 1, "HELLO frame: undefined flags 0x01",
            "HELLO with a flag");
    hello_base(&b, 0, 1, 1, 0);
    refused(P2V_MSG_HELLO, 0, &b, b.n, "HELLO frame: version_min is 0", "HELLO version 0");
    hello_base(&b, 3, 2, 1, 0);
    refused(P2V_MSG_HELLO, 0, &b, b.n, "version range 3..2 is empty", "HELLO empty range");
    hello_base(&b, 1, 1, 3, 0);
    refused(P2V_MSG_HELLO, 0, &b, b.n, "unknown hash algorithm 3", "HELLO hash algo");
    hello_base(&b, 1, 1, 1, 9);
    refused(P2V_MSG_HELLO, 0, &b, b.n, "the reserved byte is 0x09, not 0", "HELLO reserved");
    hello_base(&b, 1, 1, 1, 0);
    b16(&b, P2V_PROTO_TOKEN_MAX + 1);
    bfill(&b, 'a', P2V_PROTO_TOKEN_MAX + 1);
    refused(P2V_MSG_HELLO, 0, &b, b.n, "HELLO frame: token: length 129 exceeds the maximum 128",
            "HELLO token too long");
    hello_base(&b, 1, 1, 1, 0);
    bstr(&b, "t"), bstr(&b, "we\nb"), bstr(&b, "s"), bstr(&b, "");
    refused(P2V_MSG_HELLO, 0, &b, b.n, "name: byte 2 (0x0a) is not printable ASCII",
            "HELLO name with a newline");
    hello_base(&b, 1, 1, 1, 0);
    bstr(&b, "t"), bstr(&b, "n"), bstr(&b, "s\x80"), bstr(&b, "");
    refused(P2V_MSG_HELLO, 0, &b, b.n, "source id: byte 1 (0x80) is not printable",
            "HELLO source id with a high byte");
    hello_base(&b, 1, 1, 1, 0);
    bstr(&b, "t"), bstr(&b, "n"), bstr(&b, ""), bstr(&b, "");
    refused(P2V_MSG_HELLO, 0, &b, b.n, "source id: empty", "HELLO empty source id");
    hello_base(&b, 1, 1, 1, 0);
    bstr(&b, "t"), b16(&b, 10), bstr(&b, "n");
    refused(P2V_MSG_HELLO, 0, &b, b.n, "HELLO frame: truncated", "HELLO string past the end");

    /* WELCOME */
    b.n = 0, b16(&b, 1), b8(&b, 3), b8(&b, 0), b64(&b, 1u << 20), bstr(&b, "j");
    refused(P2V_MSG_WELCOME, 0, &b, b.n, "WELCOME frame: unknown state 3", "WELCOME state");
    b.n = 0, b16(&b, 1), b8(&b, 0), b8(&b, 0), b64(&b, 4096), bstr(&b, "j");
    refused(P2V_MSG_WELCOME, 0, &b, b.n, "WELCOME frame: window 4096 is outside",
            "WELCOME window too small");
    b.n = 0, b16(&b, 1), b8(&b, 0), b8(&b, 0), b64(&b, 1u << 20), bstr(&b, "");
    refused(P2V_MSG_WELCOME, 0, &b, b.n, "WELCOME frame: job: empty", "WELCOME empty job");
    b.n = 0, b16(&b, 0), b8(&b, 0), b8(&b, 0), b64(&b, 1u << 20), bstr(&b, "j");
    refused(P2V_MSG_WELCOME, 0, &b, b.n, "WELCOME frame: version is 0", "WELCOME version 0");

    /* FACTS */
    refused(P2V_MSG_FACTS, 0, &b, 0, "FACTS frame: empty", "FACTS empty");
    b.n = 0, bstr(&b, "{\"a\":1}"), b8(&b, 0), bstr(&b, "x");
    refused(P2V_MSG_FACTS, 0, &b, b.n, "FACTS frame: NUL byte at", "FACTS with a NUL");
    {
        uint8_t *big = calloc(1, 70000);
        memset(big, ' ', 70000);
        ok(p2v_proto_decode(P2V_MSG_FACTS, 0, big, 70000, &m, &err) == -1 &&
               strstr(err.msg, "FACTS frame: length 70000 exceeds the maximum"),
           "refused: FACTS over its cap");
        ok(p2v_proto_decode(P2V_MSG_FACTS, 0, big, P2V_PROTO_FACTS_MAX, &m, &err) == 0 &&
               m.u.facts.json.len == P2V_PROTO_FACTS_MAX,
           "FACTS at its cap (65535 bytes) accepted");
        ok(p2v_proto_decode(P2V_MSG_FACTS, 0, big, P2V_PROTO_FACTS_MAX + 1, &m, &err) == -1,
           "refused: FACTS one byte over its cap");
        free(big);
    }

    /* DISK */
#define DISK(disk, size, ss, planned, name)                                                \
    (b.n = 0, b32(&b, disk), b64(&b, size), b32(&b, ss), b64(&b, planned), bstr(&b, name),   \
     bstr(&b, "id"))
    DISK(16, 1 << 20, 512, 0, "sda");
    refused(P2V_MSG_DISK, 0, &b, b.n, "DISK frame: disk index 16 is not below 16",
            "DISK index 16");
    DISK(0, 1000, 512, 0, "sda");
    refused(P2V_MSG_DISK, 0, &b, b.n, "DISK frame: size 1000 is not a positive multiple of 512",
            "DISK size not aligned");
    DISK(0, 0, 512, 0, "sda");
    refused(P2V_MSG_DISK, 0, &b, b.n, "size 0 is not a positive", "DISK size 0");
    DISK(0, 1 << 20, 1024, 0, "sda");
    refused(P2V_MSG_DISK, 0, &b, b.n, "sector size 1024 is neither 512 nor 4096",
            "DISK sector size");
    DISK(0, 1 << 20, 512, (1 << 20) + 512, "sda");
    refused(P2V_MSG_DISK, 0, &b, b.n, "planned 1049088 exceeds the size 1048576",
            "DISK planned > size");
    DISK(0, 1 << 20, 512, 0, "");
    refused(P2V_MSG_DISK, 0, &b, b.n, "DISK frame: name: empty", "DISK empty name");
    DISK(0, 1 << 20, 512, 0, "sda");
    refused(P2V_MSG_DISK, 0x02, &b, b.n, "DISK frame: undefined flags 0x02", "DISK flag 0x02");
    ok(p2v_proto_decode(P2V_MSG_DISK, P2V_DISK_ALL_BLOCKS, b.d, b.n, &m, &err) == 0,
       "DISK base with ALL_BLOCKS valid");
#undef DISK

    /* HAVE / WANT */
    b.n = 0, b32(&b, 0), b32(&b, 2), b64(&b, 0), b64(&b, 4096), b64(&b, 1024), b64(&b, 512);
    refused(P2V_MSG_HAVE, 0, &b, b.n, "HAVE frame: range 1: offset 1024 is before the end 4096",
            "HAVE overlapping ranges");
    b.n = 0, b32(&b, 0), b32(&b, 2), b64(&b, 8192), b64(&b, 512), b64(&b, 0), b64(&b, 512);
    refused(P2V_MSG_WANT, 0, &b, b.n, "WANT frame: range 1: offset 0 is before",
            "WANT unsorted ranges");
    b.n = 0, b32(&b, 0), b32(&b, 1), b64(&b, 512), b64(&b, 0);
    refused(P2V_MSG_HAVE, 0, &b, b.n, "HAVE frame: range 0: length 0", "HAVE empty range");
    b.n = 0, b32(&b, 0), b32(&b, 1), b64(&b, UINT64_MAX - 511), b64(&b, 1024);
    refused(P2V_MSG_HAVE, 0, &b, b.n,
            "range 0: offset 18446744073709551104 + length 1024 overflows",
            "HAVE off+len overflow");
    b.n = 0, b32(&b, 0), b32(&b, 3), b64(&b, 0), b64(&b, 512);
    refused(P2V_MSG_HAVE, 0, &b, b.n, "HAVE frame: truncated: 3 ranges need 48 bytes, 16 left",
            "HAVE count past the body");
    b.n = 0, b32(&b, 0), b32(&b, P2V_PROTO_RANGES_MAX + 1);
    refused(P2V_MSG_HAVE, 0, &b, b.n, "HAVE frame: count 4097 exceeds the maximum 4096",
            "HAVE count over the cap");
    b.n = 0, b32(&b, 0), b32(&b, UINT32_MAX);
    refused(P2V_MSG_WANT, 0, &b, b.n, "count 4294967295 exceeds", "WANT count 2^32-1");
    b.n = 0, b32(&b, 0), b32(&b, 0), b8(&b, 0);
    refused(P2V_MSG_HAVE, 0, &b, b.n, "HAVE frame: 1 trailing bytes", "HAVE trailing byte");
    b.n = 0, b32(&b, 0), b32(&b, 0);
    refused(P2V_MSG_HAVE, 0x02, &b, b.n, "HAVE frame: undefined flags 0x02", "HAVE flag 0x02");
    b.n = 0, b32(&b, 99), b32(&b, 0);
    refused(P2V_MSG_WANT, 0, &b, b.n, "WANT frame: disk index 99", "WANT disk 99");

    /* DATA */
    data_base(&b, 0, 0, 3);
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n,
            "DATA frame: length 3 is not a multiple of 512",
            "DATA length 3");
    data_base(&b, 0, 100, 512);
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n, "DATA frame: offset 100 is not a multiple",
            "DATA offset 100");
    data_base(&b, 0, 0, 0);
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n, "DATA frame: length 0", "DATA length 0");
    data_base(&b, 0, 0, P2V_PROTO_CHUNK_MAX + 512);
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n,
            "DATA frame: length 1049088 exceeds the maximum 1048576", "DATA length over 1 MiB");
    data_base(&b, 0, UINT64_MAX - 511, 1024);
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n, "overflows", "DATA off+len overflow");
    data_base(&b, 16, 0, 512);
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n, "DATA frame: disk index 16", "DATA disk 16");
    data_base(&b, 0, 0, 512);
    refused(P2V_MSG_DATA, P2V_DATA_ZERO | P2V_DATA_ZSTD, &b, b.n,
            "DATA frame: flags ZERO and ZSTD are both set", "DATA ZERO|ZSTD");
    refused(P2V_MSG_DATA, 0x04, &b, b.n, "DATA frame: undefined flags 0x04", "DATA flag 0x04");
    refused(P2V_MSG_DATA, 0, &b, b.n, "DATA frame: payload of 0 bytes, not the length 512",
            "DATA plain without a payload");
    refused(P2V_MSG_DATA, P2V_DATA_ZSTD, &b, b.n,
            "DATA frame: ZSTD chunk with an empty payload",
            "DATA ZSTD without a payload");
    ok(p2v_proto_decode(P2V_MSG_DATA, P2V_DATA_ZERO, b.d, b.n, &m, &err) == 0,
       "the DATA ZERO base is valid");
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n - 1, "DATA frame: truncated",
            "DATA truncated hash");
    b.d[30] = 1;
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n, "ZERO chunk with a non-zero hash",
            "DATA ZERO with a hash");
    data_base(&b, 0, 0, 512);
    bfill(&b, 0, 4);
    refused(P2V_MSG_DATA, P2V_DATA_ZERO, &b, b.n, "ZERO chunk with a payload of 4 bytes",
            "DATA ZERO with a payload");
    refused(P2V_MSG_DATA, 0, &b, b.n, "payload of 4 bytes, not the length 512",
            "DATA plain short payload");
    {
        size_t bound = ZSTD_compressBound(512);
        uint8_t *big = calloc(1, 48 + bound + 1);
        memcpy(big, b.d, 48);
        ok(p2v_proto_decode(P2V_MSG_DATA, P2V_DATA_ZSTD, big, 48 + bound, &m, &err) == 0,
           "DATA ZSTD payload at the bound accepted");
        ok(p2v_proto_decode(P2V_MSG_DATA, P2V_DATA_ZSTD, big, 48 + bound + 1, &m, &err) == -1 &&
               strstr(err.msg, "DATA frame: ZSTD payload of") &&
               strstr(err.msg, "exceeds the bound"),
           "refused: DATA ZSTD payload over the bound");
        free(big);
    }

    /* DISK_END / DISK_OK / DONE / COMMITTED */
    b.n = 0, b32(&b, 0), b64(&b, 1);
    refused(P2V_MSG_DISK_END, 0, &b, b.n - 1, "DISK_END frame: truncated",
            "DISK_END truncated");
    refused(P2V_MSG_DISK_OK, 0x80, &b, b.n, "DISK_OK frame: undefined flags 0x80",
            "DISK_OK flag");
    refused(P2V_MSG_DONE, 0, &b, 1, "DONE frame: 1 trailing bytes", "DONE with a body");
    refused(P2V_MSG_COMMITTED, 0, &b, 15, "COMMITTED frame: truncated", "COMMITTED truncated");

    /* PASS / PASS_OK */
    b.n = 0, b32(&b, 1), b8(&b, 4), b8(&b, 0), b64(&b, 0), b64(&b, 0), b32(&b, 0), b32(&b, 0);
    refused(P2V_MSG_PASS, 0, &b, b.n, "PASS frame: unknown phase 4", "PASS phase 4");
    refused(P2V_MSG_PASS, 0, &b, b.n - 1, "PASS frame: truncated", "PASS truncated");
    b.n = 0, b32(&b, 0), b8(&b, 2), b8(&b, 0), b64(&b, 0), b64(&b, 0), b32(&b, 0), b32(&b, 0);
    refused(P2V_MSG_PASS, 0, &b, b.n, "pass 0 with phase 2", "PASS number 0 in a delta");
    b.n = 0, b32(&b, 2), b8(&b, 2), b8(&b, 1), b64(&b, 0), b64(&b, 0), b32(&b, 0), b32(&b, 0);
    refused(P2V_MSG_PASS, 0, &b, b.n, "reserved byte is 1", "PASS reserved byte");
    b.n = 0, b32(&b, 2), b8(&b, 2), b8(&b, 0), b64(&b, 1), b64(&b, 0), b32(&b, 0), b32(&b, 9);
    refused(P2V_MSG_PASS, 0, &b, b.n, "freeze_ms in a phase-2 pass", "PASS freeze outside final");
    refused(P2V_MSG_PASS, 0x01, &b, b.n, "undefined flags", "PASS flag");
    refused(P2V_MSG_PASS_OK, 0x02, &b, 0, "undefined flags 0x02", "PASS_OK flag 0x02");
    refused(P2V_MSG_PASS_OK, 0, &b, 1, "1 trailing bytes", "PASS_OK with a body");

    /* HASHES */
    b.n = 0, b32(&b, 0), b32(&b, 1), b64(&b, 0), b32(&b, 1000), bfill(&b, 1, 32);
    refused(P2V_MSG_HASHES, 0, &b, b.n, "HASHES frame: entry 0: length 1000 is not a positive "
                                        "multiple of 512", "HASHES length 1000");
    b.n = 0, b32(&b, 0), b32(&b, 1), b64(&b, 0), b32(&b, 0), bfill(&b, 1, 32);
    refused(P2V_MSG_HASHES, 0, &b, b.n, "entry 0: length 0", "HASHES length 0");
    b.n = 0, b32(&b, 0), b32(&b, 1), b64(&b, 7), b32(&b, 512), bfill(&b, 1, 32);
    refused(P2V_MSG_HASHES, 0, &b, b.n, "entry 0: offset 7 is not a multiple",
            "HASHES offset 7");
    b.n = 0, b32(&b, 0), b32(&b, 1), b64(&b, UINT64_MAX - 511), b32(&b, 1024), bfill(&b, 1, 32);
    refused(P2V_MSG_HASHES, 0, &b, b.n, "entry 0: offset 18446744073709551104 + length 1024 "
                                        "overflows", "HASHES overflow");
    b.n = 0, b32(&b, 0), b32(&b, P2V_PROTO_HASHES_MAX + 1);
    refused(P2V_MSG_HASHES, 0, &b, b.n, "HASHES frame: count 1025 exceeds the maximum 1024",
            "HASHES count over the cap");
    b.n = 0, b32(&b, 0), b32(&b, 2), b64(&b, 0), b32(&b, 512), bfill(&b, 1, 32);
    refused(P2V_MSG_HASHES, 0, &b, b.n, "HASHES frame: truncated: 2 entries need 88 bytes",
            "HASHES count past the body");

    /* FINISHED / ERROR */
    b.n = 0, b16(&b, 5), bfill(&b, 'x', 4);
    refused(P2V_MSG_FINISHED, 0, &b, b.n, "FINISHED frame: truncated", "FINISHED short text");
    b.n = 0, b16(&b, P2V_ERR_MSG_MAX + 1), bfill(&b, 'x', 8);
    refused(P2V_MSG_ERROR, 0, &b, 2, "ERROR frame: truncated", "ERROR without text");
    b.n = 0, b16(&b, 9), b16(&b, P2V_PROTO_MSG_MAX + 1);
    refused(P2V_MSG_ERROR, 0, &b, b.n,
            "ERROR frame: text: length 1025 exceeds the maximum 1024",
            "ERROR text over the cap");
    b.n = 0, b16(&b, 9), bstr(&b, "tab\there");
    refused(P2V_MSG_ERROR, 0, &b, b.n, "ERROR frame: text: byte 3 (0x09) is not printable",
            "ERROR text with a tab");

    /* unknown types */
    refused(0x00, 0, &b, 0, "unknown frame type 0x00", "type 0x00");
    refused(0x10, 0, &b, 0, "unknown frame type 0x10", "type 0x10");
    refused(0xff, 0, &b, 0, "unknown frame type 0xff", "type 0xff");

    /* a failed decode leaves the output untouched */
    memset(&m, 0x77, sizeof m);
    data_base(&b, 0, 0, 3);
    p2v_proto_decode(P2V_MSG_DATA, P2V_DATA_ZERO, b.d, b.n, &m, &err);
    ok(m.type == 0x77 && m.flags == 0x77, "a failed decode does not touch the message");
}

static void test_header(void)
{
    uint8_t h[P2V_PROTO_HDR_LEN] = {0, 0, 0x10, 0, P2V_MSG_DATA, P2V_DATA_ZSTD, 0, 0};
    uint8_t type = 0, flags = 0;
    uint32_t len = 0;
    struct p2v_err err = {0};
    ok(p2v_proto_header(h, &type, &flags, &len, &err) == 0 && type == P2V_MSG_DATA &&
           flags == P2V_DATA_ZSTD && len == 0x1000,
       "header parsed");
    h[7] = 1;
    ok(p2v_proto_header(h, &type, &flags, &len, &err) == -1 && err.code == EPROTO &&
           strstr(err.msg, "frame header: reserved field is 0x0001, not 0"),
       "header with reserved != 0 refused");
    h[7] = 0;
    p2v_put_u32be(h, P2V_PROTO_BODY_MAX);
    ok(p2v_proto_header(h, &type, &flags, &len, &err) == 0 && len == P2V_PROTO_BODY_MAX,
       "body length at the cap accepted");
    p2v_put_u32be(h, P2V_PROTO_BODY_MAX + 1);
    len = 5;
    ok(p2v_proto_header(h, &type, &flags, &len, &err) == -1 && len == 5 &&
           strstr(err.msg, "DATA frame: body length 1056769 exceeds the maximum 1056768"),
       "body length over the cap refused");
    p2v_put_u32be(h, UINT32_MAX);
    ok(p2v_proto_header(h, &type, &flags, &len, &err) == -1, "body length 2^32-1 refused");
}

static void test_encoder_caps(void)
{
    struct p2v_buf b = P2V_BUF_INIT;
    char long_name[P2V_PROTO_NAME_MAX + 2];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    uint8_t hash[32] = {0};

    errno = 0;
    ok(p2v_proto_put_hello(&b, 1, "t", long_name, "s", "v") == -1 && errno == EINVAL &&
           b.len == 0,
       "HELLO with a 65-byte name: EINVAL, nothing appended");
    ok(p2v_proto_put_hello(&b, 1, "t", "n", "s\n", "v") == -1 && errno == EINVAL,
       "HELLO with an unprintable source id: EINVAL");
    ok(p2v_proto_put_welcome(&b, 0, 1u << 10, "j") == -1 && errno == EINVAL,
       "WELCOME with a 1 KiB window: EINVAL");
    ok(p2v_proto_put_disk(&b, 16, 512, 512, 0, 0, "d", "") == -1 && errno == EINVAL,
       "DISK index 16: EINVAL");
    ok(p2v_proto_put_disk(&b, 0, 512, 512, 0, 0x80, "d", "") == -1 && errno == EINVAL,
       "DISK with an undefined flag: EINVAL");
    struct p2v_range rs[2] = {{512, 512}, {0, 512}};
    ok(p2v_proto_put_ranges(&b, P2V_MSG_HAVE, 0, 0, rs, 2) == -1 && errno == EINVAL,
       "HAVE unsorted: EINVAL");
    ok(p2v_proto_put_ranges(&b, P2V_MSG_DATA, 0, 0, rs, 1) == -1 && errno == EINVAL,
       "put_ranges of type DATA: EINVAL");
    ok(p2v_proto_put_ranges(&b, P2V_MSG_HAVE, 0, 0, rs, P2V_PROTO_RANGES_MAX + 1) == -1 &&
           errno == EINVAL,
       "HAVE over the range cap: EINVAL");
    uint8_t payload[512] = {0};
    ok(p2v_proto_put_data(&b, 0, 0, 0, 1024, hash, payload, 512) == -1 && errno == EINVAL,
       "DATA with a short payload: EINVAL");
    ok(p2v_proto_put_data(&b, P2V_DATA_ZERO, 0, 0, P2V_PROTO_CHUNK_MAX * 2, NULL, NULL, 0) ==
               -1 &&
           errno == EINVAL,
       "DATA over the chunk cap: EINVAL");
    ok(p2v_proto_put_facts(&b, "{}", 0) == -1 && errno == EINVAL, "empty FACTS: EINVAL");
    char *big = malloc(2000);
    memset(big, 'e', 1999);
    big[1999] = '\0';
    ok(p2v_proto_put_error(&b, P2V_E_PROTO, big) == -1 && errno == EINVAL,
       "ERROR text over 1024: EINVAL");
    free(big);
    ok(b.len == 0, "failed encoders appended nothing");

    /* the buffer's own cap: ENOBUFS, rolled back */
    struct p2v_buf small;
    p2v_buf_init(&small, 64);
    ok(p2v_proto_put_done(&small) == 0, "a frame fits a small buffer");
    errno = 0;
    ok(p2v_proto_put_data(&small, 0, 0, 0, 512, hash, payload, 512) == -1 && errno == ENOBUFS &&
           small.len == P2V_PROTO_HDR_LEN,
       "ENOBUFS past the buffer's cap, earlier frames kept");
    ok(p2v_proto_put_finished(&small, "a summary line longer than the rest of a small buffer "
                                      "can hold") == -1 &&
           errno == ENOBUFS && small.len == P2V_PROTO_HDR_LEN,
       "ENOBUFS in the middle of a string, rolled back");
    p2v_buf_release(&small);
    p2v_buf_release(&b);
}

static void test_check_data(void)
{
    struct p2v_buf b = P2V_BUF_INIT;
    struct p2v_msg m;
    struct p2v_err err = {0};
    uint64_t size = 10ull << 20; /* 10 MiB */

    p2v_proto_put_data(&b, P2V_DATA_ZERO, 0, size - 4096, 4096, NULL, NULL, 0);
    decode_frame(&b, &m, &err);
    ok(p2v_proto_check_data(&m, size, &err) == 0, "chunk ending at the disk end accepted");
    ok(p2v_proto_check_data(&m, size - 512, &err) == -1 &&
           strstr(err.msg,
                  "DATA frame: range 10481664+4096 of disk 0 ends past the disk's size"),
       "chunk one sector past the end refused");
    p2v_buf_reset(&b);
    p2v_proto_put_data(&b, P2V_DATA_ZERO, 0, UINT64_MAX - 1023, 512, NULL, NULL, 0);
    ok(decode_frame(&b, &m, &err) == 0 && p2v_proto_check_data(&m, UINT64_MAX - 511, &err) == 0,
       "chunk at the end of a 2^64-512 byte disk accepted");
    ok(p2v_proto_check_data(&m, size, &err) == -1, "same chunk on a small disk refused");
    p2v_buf_reset(&b);
    p2v_proto_put_data(&b, P2V_DATA_ZERO, 0, size, 512, NULL, NULL, 0);
    decode_frame(&b, &m, &err);
    ok(p2v_proto_check_data(&m, size, &err) == -1, "chunk starting at the disk end refused");
    p2v_proto_put_done(&b);
    p2v_buf_release(&b);
}

static void test_names_and_hash(void)
{
    is_str(p2v_proto_type_name(P2V_MSG_DISK_END), "DISK_END", "type name");
    is_str(p2v_proto_type_name(0x42), "unknown", "unknown type name");
    is_str(p2v_proto_err_name(P2V_E_NOSPACE), "NOSPACE", "error name");
    is_str(p2v_proto_pass_phase_name(P2V_PASS_FINAL), "final", "pass phase name");
    is_str(p2v_proto_pass_phase_name(9), "unknown", "unknown pass phase name");
    ok(p2v_proto_err_retryable(P2V_E_BUSY) && p2v_proto_err_retryable(P2V_E_SHUTDOWN) &&
           p2v_proto_err_retryable(P2V_E_NOSPACE) && p2v_proto_err_retryable(P2V_E_INTERNAL),
       "retryable codes");
    ok(!p2v_proto_err_retryable(P2V_E_AUTH) && !p2v_proto_err_retryable(P2V_E_HASH) &&
           !p2v_proto_err_retryable(P2V_E_PROTO) && !p2v_proto_err_retryable(0),
       "fatal codes");
    is_str(p2v_hash_name(P2V_HASH_BLAKE2B), "blake2b", "hash name");

    uint8_t out[32];
    char hex[65];
    /* SHA-256("abc") (FIPS 180-2 appendix B.1) */
    p2v_hash(P2V_HASH_SHA256, "abc", 3, out);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", out[i]);
    is_str(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
           "SHA-256 abc");
    /* BLAKE2b-512("abc") (RFC 7693 appendix A), first 32 bytes */
    p2v_hash(P2V_HASH_BLAKE2B, "abc", 3, out);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", out[i]);
    is_str(hex, "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1",
           "BLAKE2b-512 abc, truncated");
    p2v_hash(P2V_HASH_SHA256, NULL, 0, out);
    ok(out[0] == 0xe3 && out[1] == 0xb0, "SHA-256 of nothing");
    errno = 0;
    ok(p2v_hash(7, "a", 1, out) == -1 && errno == EINVAL, "unknown algorithm: EINVAL");
}

int main(void)
{
    test_roundtrip();
    test_malformed();
    test_header();
    test_encoder_caps();
    test_check_data();
    test_names_and_hash();
    return exit_status();
}
