/* fuzz-proto.c: libFuzzer harness of the wire protocol codec (common/proto.c). An input
 * is a frame: its 8-byte header goes through p2v_proto_header(), the rest (whatever the
 * header's length says) through p2v_proto_decode(). What decodes is walked through the
 * accessors and p2v_proto_check_data(), then encoded again: the encoder must accept every
 * frame the decoder accepts and give back the same body, byte for byte.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon tests/fuzz/fuzz-proto.c
 * common/\*.c $(pkg-config --cflags --libs openssl libzstd) (see run-fuzzers) */
#include <stdlib.h>
#include <string.h>

#include "p2v-common.h"
#include "p2v-proto.h"

static char *cstr(struct p2v_str s, char *buf)
{
    memcpy(buf, s.p, s.len);
    buf[s.len] = '\0';
    return buf;
}

/* Encode @m again into @out. 0 / -1. */
static int reencode(const struct p2v_msg *m, struct p2v_buf *out)
{
    static char a[1100], b[1100], c[1100], d[1100];
    const struct p2v_msg *x = m;
    switch (m->type) {
    case P2V_MSG_HELLO:
        if (x->u.hello.version_min != P2V_PROTO_VERSION_MIN ||
            x->u.hello.version_max != P2V_PROTO_VERSION)
            return 1; /* the encoder offers exactly this range */
        return p2v_proto_put_hello(out, x->u.hello.hash_algo, cstr(x->u.hello.token, a),
                                   cstr(x->u.hello.name, b), cstr(x->u.hello.source_id, c),
                                   cstr(x->u.hello.agent_version, d));
    case P2V_MSG_WELCOME:
        return p2v_proto_put_welcome_version(out, x->u.welcome.version, x->u.welcome.state,
                                             x->u.welcome.window, cstr(x->u.welcome.job, a));
    case P2V_MSG_FACTS: return p2v_proto_put_facts(out, x->u.facts.json.p, x->u.facts.json.len);
    case P2V_MSG_DISK:
        return p2v_proto_put_disk(out, x->u.disk.disk, x->u.disk.size, x->u.disk.sector_size,
                                  x->u.disk.planned, x->flags, cstr(x->u.disk.name, a),
                                  cstr(x->u.disk.id, b));
    case P2V_MSG_HAVE:
    case P2V_MSG_WANT: {
        struct p2v_range *r = calloc(x->u.ranges.count + 1, sizeof *r);
        for (uint32_t i = 0; i < x->u.ranges.count; i++)
            p2v_proto_range(x, i, &r[i]);
        int ret = p2v_proto_put_ranges(out, x->type, x->flags, x->u.ranges.disk, r,
                                       x->u.ranges.count);
        free(r);
        return ret;
    }
    case P2V_MSG_DATA:
        return p2v_proto_put_data(out, x->flags, x->u.data.disk, x->u.data.off, x->u.data.len,
                                  x->u.data.hash, x->u.data.payload, x->u.data.payload_len);
    case P2V_MSG_DISK_END:
    case P2V_MSG_DISK_OK:
        return p2v_proto_put_disk_end(out, x->type, x->u.disk_end.disk, x->u.disk_end.bytes);
    case P2V_MSG_DONE: return p2v_proto_put_done(out);
    case P2V_MSG_FINISHED: return p2v_proto_put_finished(out, cstr(x->u.finished.text, a));
    case P2V_MSG_HASHES: {
        uint32_t n = x->u.hashes.count;
        uint64_t *offs = calloc(n + 1, sizeof *offs);
        uint32_t *lens = calloc(n + 1, sizeof *lens);
        uint8_t(*hs)[P2V_PROTO_HASH_LEN] = calloc(n + 1, sizeof *hs);
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *h;
            p2v_proto_hash_entry(x, i, &offs[i], &lens[i], &h);
            memcpy(hs[i], h, P2V_PROTO_HASH_LEN);
        }
        int ret = p2v_proto_put_hashes(out, x->flags, x->u.hashes.disk, offs, lens,
                                       (const uint8_t(*)[P2V_PROTO_HASH_LEN])hs, n);
        free(offs), free(lens), free(hs);
        return ret;
    }
    case P2V_MSG_COMMITTED:
        return p2v_proto_put_committed(out, x->u.committed.frames, x->u.committed.bytes);
    case P2V_MSG_PASS:
        return p2v_proto_put_pass(out, x->u.pass.pass, x->u.pass.phase, x->u.pass.bytes_read,
                                  x->u.pass.bytes_sent, x->u.pass.duration_ms,
                                  x->u.pass.freeze_ms);
    case P2V_MSG_PASS_OK: return p2v_proto_put_pass_ok(out, x->flags);
    case P2V_MSG_ERROR:
        return p2v_proto_put_error(out, x->u.error.code, cstr(x->u.error.text, a));
    default: abort(); /* the decoder accepted an unknown type */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t type, flags;
    uint32_t len;
    struct p2v_msg m;
    struct p2v_err err;
    if (size < P2V_PROTO_HDR_LEN || p2v_proto_header(data, &type, &flags, &len, &err) < 0)
        return 0;
    size_t n = P2V_MIN((size_t)len, size - P2V_PROTO_HDR_LEN);
    const uint8_t *body = data + P2V_PROTO_HDR_LEN;
    if (p2v_proto_decode(type, flags, body, n, &m, &err) < 0)
        return 0;
    if (m.type == P2V_MSG_DATA) {
        p2v_proto_check_data(&m, 1ull << 40, &err);
        /* touch the whole payload: ASan checks it lies inside the input */
        uint8_t sum = 0;
        for (size_t i = 0; i < m.u.data.payload_len; i++)
            sum ^= m.u.data.payload[i];
        __asm__ volatile("" : : "r"(sum));
    }
    struct p2v_buf out = P2V_BUF_INIT;
    int r = reencode(&m, &out);
    if (r < 0)
        abort(); /* the encoder refused what the decoder accepted */
    if (r == 0 && (out.len != P2V_PROTO_HDR_LEN + n || out.data[4] != type ||
                   out.data[5] != flags || memcmp(out.data + P2V_PROTO_HDR_LEN, body, n) != 0))
        abort(); /* decode then encode changed the frame */
    p2v_buf_release(&out);
    return 0;
}
