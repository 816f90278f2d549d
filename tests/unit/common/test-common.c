/* Unit tests of libp2vcommon: errors, the bounds-checked reader, the capped buffer,
 * overflow helpers, size parsing, the JSON writer, zero detection. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "p2v-common.h"
#include "tap.h"

static void test_err(void)
{
    struct p2v_err err = {0};
    int r = p2v_err_set(&err, EINVAL, "bad header in '%s' at offset %d", "x.img", 512);
    is_int(r, -1, "p2v_err_set returns -1");
    is_int(err.code, EINVAL, "error code kept");
    is_str(err.msg, "bad header in 'x.img' at offset 512", "message formatted");
    p2v_err_prefix(&err, "open '%s'", "x.img");
    is_str(err.msg, "open 'x.img': bad header in 'x.img' at offset 512", "prefix prepended");
    ok(p2v_err_set(NULL, 1, "ignored") == -1, "NULL err accepted");
    errno = ENOENT;
    p2v_err_errno(&err, "cannot open '%s'", "nope");
    is_str(err.msg, "cannot open 'nope': No such file or directory", "errno message");
    is_int(err.code, ENOENT, "errno code");
    /* a very long message is truncated, not overflowed */
    char big[4096];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    p2v_err_set(&err, 0, "%s", big);
    is_int(strlen(err.msg), P2V_ERR_MSG_MAX - 1, "long message truncated");
    p2v_err_prefix(&err, "%s", big);
    is_int(strlen(err.msg), P2V_ERR_MSG_MAX - 1, "long prefix truncated");
}

static void test_reader(void)
{
    const uint8_t data[] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a};
    struct p2v_rd r;
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;

    p2v_rd_init(&r, data, sizeof data);
    ok(p2v_rd_u8(&r, &u8) == 0 && u8 == 1, "u8");
    ok(p2v_rd_u16be(&r, &u16) == 0 && u16 == 0x0203, "u16be");
    ok(p2v_rd_u16le(&r, &u16) == 0 && u16 == 0x0504, "u16le");
    ok(p2v_rd_u32be(&r, &u32) == 0 && u32 == 0x06070809, "u32be");
    is_int(p2v_rd_left(&r), 1, "one byte left");
    u32 = 0xdeadbeef;
    ok(p2v_rd_u32le(&r, &u32) == -1, "u32 past the end fails");
    ok(u32 == 0xdeadbeef, "failed getter leaves its output untouched");
    is_int(p2v_rd_left(&r), 1, "failed getter consumes nothing");
    ok(p2v_rd_skip(&r, 2) == -1, "skip past end fails");
    ok(p2v_rd_skip(&r, 1) == 0 && p2v_rd_left(&r) == 0, "skip to end");
    ok(p2v_rd_u8(&r, &u8) == -1, "u8 at end fails");

    p2v_rd_init(&r, data, sizeof data);
    ok(p2v_rd_u64le(&r, &u64) == 0 && u64 == 0x0807060504030201ULL, "u64le");
    p2v_rd_init(&r, data, sizeof data);
    ok(p2v_rd_u64be(&r, &u64) == 0 && u64 == 0x0102030405060708ULL, "u64be");

    ok(p2v_rd_u32le_at(&r, 6, &u32) == 0 && u32 == 0x0a090807, "u32le_at in range");
    ok(p2v_rd_u32le_at(&r, 7, &u32) == -1, "u32le_at straddling the end fails");
    ok(p2v_rd_u32le_at(&r, SIZE_MAX - 1, &u32) == -1, "u32le_at at a huge offset fails");
    const uint8_t *p;
    ok(p2v_rd_ptr_at(&r, 2, &p, SIZE_MAX) == -1, "ptr_at with a huge length fails");
    ok(p2v_rd_ptr_at(&r, 10, &p, 0) == 0, "ptr_at of zero bytes at the end is fine");

    struct p2v_rd sub;
    p2v_rd_init(&r, data, sizeof data);
    ok(p2v_rd_sub(&r, &sub, 4) == 0 && p2v_rd_left(&sub) == 4 && p2v_rd_pos(&r) == 4,
       "sub-reader");
    ok(p2v_rd_u64le(&sub, &u64) == -1, "sub-reader bounded by its own length");
    ok(p2v_rd_sub(&r, &sub, 7) == -1, "sub-reader past the end fails");
    ok(p2v_rd_seek(&r, 11) == -1, "seek past end fails");
    ok(p2v_rd_seek(&r, 10) == 0, "seek to end");

    p2v_rd_init(&r, NULL, 100);
    is_int(p2v_rd_left(&r), 0, "NULL data is an empty reader");
}

static void test_buf(void)
{
    struct p2v_buf b;
    p2v_buf_init(&b, 16);
    ok(p2v_buf_put_u32be(&b, 0x01020304) == 0, "put u32be");
    ok(p2v_buf_put_u64le(&b, 0x1122334455667788ULL) == 0, "put u64le");
    is_int(b.len, 12, "length 12");
    ok(memcmp(b.data, "\x01\x02\x03\x04\x88\x77\x66\x55\x44\x33\x22\x11", 12) == 0,
       "byte order");
    ok(p2v_buf_put_u64be(&b, 1) == -1 && errno == ENOBUFS, "cap enforced");
    is_int(b.len, 12, "failed put leaves length alone");
    ok(p2v_buf_put_u32le(&b, 7) == 0, "fill to cap exactly");
    p2v_buf_reset(&b);
    ok(p2v_buf_printf(&b, "%s-%d", "abc", 42) == 0, "printf");
    is_str(p2v_buf_cstr(&b), "abc-42", "cstr");
    p2v_buf_release(&b);
    p2v_buf_release(&b);
    ok(b.data == NULL && b.len == 0, "release twice is safe");
    struct p2v_buf big;
    p2v_buf_init(&big, 0);
    ok(p2v_buf_reserve(&big, SIZE_MAX) == -1, "reserve SIZE_MAX fails cleanly");
    p2v_buf_release(&big);
}

static void test_ints(void)
{
    uint64_t r;
    ok(P2V_ADD_OVERFLOW(UINT64_MAX, (uint64_t)1, &r), "add overflow detected");
    ok(!P2V_ADD_OVERFLOW((uint64_t)1, (uint64_t)2, &r) && r == 3, "add without overflow");
    ok(P2V_MUL_OVERFLOW((uint64_t)1 << 40, (uint64_t)1 << 30, &r), "mul overflow detected");
    ok(p2v_range_ok(0, 10, 10), "range at start");
    ok(!p2v_range_ok(1, 10, 10), "range one past");
    ok(!p2v_range_ok(UINT64_MAX, 2, UINT64_MAX), "range near 2^64");
    ok(!p2v_range_ok(2, UINT64_MAX, 10), "huge length");
    ok(p2v_align_up(4097, 4096, &r) && r == 8192, "align up");
    ok(!p2v_align_up(UINT64_MAX - 1, 4096, &r), "align up overflow");
    ok(p2v_is_pow2(65536) && !p2v_is_pow2(0) && !p2v_is_pow2(65537), "is_pow2");
}

static void test_sizes(void)
{
    uint64_t v = 0;
    struct p2v_err err = {0};
    unsigned long long u;
    ok(p2v_parse_uint("64", 1, 64, &u) == 0 && u == 64, "parse_uint: the upper bound is in");
    ok(p2v_parse_uint("65", 1, 64, &u) < 0 && p2v_parse_uint("0", 1, 64, &u) < 0,
       "parse_uint: out of range refused");
    ok(p2v_parse_uint("-1", 0, ~0ULL, &u) < 0 && p2v_parse_uint(" 5", 0, 9, &u) < 0 &&
           p2v_parse_uint("+5", 0, 9, &u) < 0 && p2v_parse_uint("5x", 0, 9, &u) < 0 &&
           p2v_parse_uint("", 0, 9, &u) < 0 && p2v_parse_uint("99999999999999999999", 0, ~0ULL, &u) < 0,
       "parse_uint: signs, spaces, trailing text, empty and overflow refused");
    ok(p2v_parse_size("4096", &v, &err) == 0 && v == 4096, "plain size");
    ok(p2v_parse_size("64K", &v, &err) == 0 && v == 65536, "64K");
    ok(p2v_parse_size("2G", &v, &err) == 0 && v == 2ULL << 30, "2G");
    ok(p2v_parse_size("1.5GiB", &v, &err) == 0 && v == 3ULL << 29, "1.5GiB");
    ok(p2v_parse_size("8M", &v, &err) == 0 && v == 8ULL << 20, "8M");
    ok(p2v_parse_size("-1", &v, &err) == -1, "negative refused");
    ok(p2v_parse_size("12Q", &v, &err) == -1 && strstr(err.msg, "12Q"), "bad suffix named");
    ok(p2v_parse_size("99999999P", &v, &err) == -1, "too large refused");
    ok(p2v_parse_size("", &v, &err) == -1, "empty refused");
    char s[32];
    is_str(p2v_format_size(1536, s, sizeof s), "1.5 KiB", "format 1.5 KiB");
    is_str(p2v_format_size(17, s, sizeof s), "17 B", "format bytes");
}

static void test_json(void)
{
    struct p2v_buf b;
    struct p2v_json j;
    p2v_buf_init(&b, 0);
    p2v_json_init(&j, &b, false);
    p2v_json_object_begin(&j);
    p2v_json_kv_string(&j, "name", "a\"b\\c\n\x01");
    p2v_json_kv_u64(&j, "size", 18446744073709551615ULL);
    p2v_json_key(&j, "list");
    p2v_json_array_begin(&j);
    p2v_json_i64(&j, -5);
    p2v_json_bool(&j, true);
    p2v_json_null(&j);
    p2v_json_double(&j, 0.5);
    p2v_json_array_end(&j);
    p2v_json_key(&j, "empty");
    p2v_json_object_begin(&j);
    p2v_json_object_end(&j);
    ok(!p2v_json_complete(&j), "incomplete before the last end");
    p2v_json_object_end(&j);
    ok(p2v_json_complete(&j), "complete");
    is_str(p2v_buf_cstr(&b),
           "{\"name\":\"a\\\"b\\\\c\\n\\u0001\",\"size\":18446744073709551615,"
           "\"list\":[-5,true,null,0.5],\"empty\":{}}",
           "json text");
    p2v_buf_release(&b);
}

static void test_zero(void)
{
    static uint8_t buf[4096 + 7];
    ok(p2v_is_zero(buf, sizeof buf), "all zero");
    ok(p2v_is_zero(buf + 3, 100), "unaligned all zero");
    for (size_t i = 0; i < sizeof buf; i += 97) {
        buf[i] = 1;
        if (p2v_is_zero(buf, sizeof buf)) {
            ok(0, "non-zero byte at %zu missed", i);
            return;
        }
        buf[i] = 0;
    }
    ok(1, "every probed non-zero byte detected");
    buf[sizeof buf - 1] = 1;
    ok(!p2v_is_zero(buf, sizeof buf), "last byte non-zero");
    ok(p2v_is_zero(buf, 0), "empty is zero");
}

int main(void)
{
    test_err();
    test_reader();
    test_buf();
    test_ints();
    test_sizes();
    test_json();
    test_zero();
    return exit_status();
}
