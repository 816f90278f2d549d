/* test-snap.c: TAP test of the parsers of p2v-agent/snap.c (LVM snapshots for a live
 * capture's cutover): device-mapper names, `dmsetup table` output, the LVM2 physical
 * volume label, and the sysfs test of "an LVM volume a snapshot can take" on a sysfs tree
 * of the test's own. The snapshots themselves (lvcreate, the final pass, lvremove) are
 * tested on real LVM by tests/integration/capture-live-lvm.sh.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "../../../p2v-agent/snap.h"
#include "p2v-common.h"
#include "tap.h"

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* An LVM2 label in sector @sec of @buf (2048 bytes): one data area from @pe_start, and
 * the metadata areas @mo/@ml[n]. */
static void make_label(uint8_t *buf, unsigned sec, uint64_t pe_start, const uint64_t *mo,
                       const uint64_t *ml, size_t n)
{
    memset(buf, 0, 2048);
    uint8_t *l = buf + sec * 512;
    memcpy(l, "LABELONE", 8);
    put64(l + 8, sec);
    put32(l + 16, 0x12345678); /* crc: not checked here, LVM checks it */
    put32(l + 20, 32);
    memcpy(l + 24, "LVM2 001", 8);
    uint8_t *h = l + 32;
    memset(h, 'u', 32);
    put64(h + 32, 1u << 30);
    size_t p = 40;
    put64(h + p, pe_start); /* data area: size 0 means "to the end" in LVM; ours: 4096 */
    put64(h + p + 8, 4096);
    p += 16;
    p += 16; /* end of the data areas */
    for (size_t i = 0; i < n; i++, p += 16) {
        put64(h + p, mo[i]);
        put64(h + p + 8, ml[i]);
    }
    /* end of the metadata areas: already zero */
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void test_names(void)
{
    char vg[64], lv[64], dm[128];
    ok(snap_split_dm_name("vg0-root", vg, sizeof vg, lv, sizeof lv) == 0 &&
           !strcmp(vg, "vg0") && !strcmp(lv, "root"),
       "vg0-root is vg0 / root");
    ok(snap_split_dm_name("my--vg-my--lv", vg, sizeof vg, lv, sizeof lv) == 0 &&
           !strcmp(vg, "my-vg") && !strcmp(lv, "my-lv"),
       "doubled dashes: my--vg-my--lv is my-vg / my-lv (%s / %s)", vg, lv);
    ok(snap_split_dm_name("vg0-data-real", vg, sizeof vg, lv, sizeof lv) < 0,
       "vg0-data-real (a snapshot's internal device) is not a volume name");
    ok(snap_split_dm_name("vg0-p2v--1-cow", vg, sizeof vg, lv, sizeof lv) < 0,
       "a -cow device is not a volume name");
    ok(snap_split_dm_name("novolume", vg, sizeof vg, lv, sizeof lv) < 0,
       "a name without a separator is refused");
    ok(snap_split_dm_name("-lv", vg, sizeof vg, lv, sizeof lv) < 0 &&
           snap_split_dm_name("vg-", vg, sizeof vg, lv, sizeof lv) < 0,
       "empty volume group or volume names are refused");
    ok(snap_split_dm_name("vgname-lvname", vg, 4, lv, sizeof lv) < 0,
       "a name longer than the buffer is refused");
    snap_dm_name("my-vg", "p2v-12-0", dm, sizeof dm);
    is_str(dm, "my--vg-p2v--12--0", "snap_dm_name doubles the dashes");
    ok(snap_split_dm_name(dm, vg, sizeof vg, lv, sizeof lv) == 0 && !strcmp(vg, "my-vg") &&
           !strcmp(lv, "p2v-12-0"),
       "and snap_split_dm_name undoes it");
}

static void test_tables(void)
{
    struct snap_seg seg[4];
    size_t n = 0;
    struct p2v_err err = {0};
    ok(snap_parse_table("0 196608 linear 259:0 2048\n", seg, 4, &n, &err) == 0 && n == 1 &&
           seg[0].start == 0 && seg[0].len == 196608ull * 512 &&
           seg[0].dev == makedev(259, 0) && seg[0].off == 2048ull * 512,
       "one linear segment, in bytes");
    ok(snap_parse_table("0 100 linear 8:2 2048\n100 50 linear 8:3 4096\n\n", seg, 4, &n,
                        &err) == 0 &&
           n == 2 && seg[1].start == 100 * 512 && seg[1].dev == makedev(8, 3),
       "two segments on two devices");
    ok(snap_parse_table("0 524288 snapshot-origin 254:1\n", seg, 4, &n, &err) < 0 &&
           err.code == ENOTSUP && strstr(err.msg, "snapshot-origin"),
       "a non-linear segment is refused by name: %s", err.msg);
    ok(snap_parse_table("0 100 linear 8:2\n", seg, 4, &n, &err) < 0,
       "a linear segment without its offset is refused");
    ok(snap_parse_table("0 100 linear 8:2 10 extra\n", seg, 4, &n, &err) < 0,
       "a linear segment with trailing words is refused");
    ok(snap_parse_table("", seg, 4, &n, &err) < 0, "an empty table is refused");
    ok(snap_parse_table("0 18446744073709551615 linear 8:2 0\n", seg, 4, &n, &err) < 0,
       "a segment whose length overflows in bytes is refused");
    ok(snap_parse_table("0 1 linear 8:0 0\n1 1 linear 8:0 1\n2 1 linear 8:0 2\n", seg, 2,
                        &n, &err) < 0 &&
           err.code == E2BIG,
       "more segments than room is refused");
}

static void test_label(void)
{
    uint8_t buf[2048];
    uint64_t mo[8], ml[8];
    size_t n = 0;
    struct p2v_err err = {0};
    const uint64_t pv = 256ull << 20;
    uint64_t a_o[] = {4096}, a_l[] = {(1u << 20) - 4096};
    make_label(buf, 1, 1u << 20, a_o, a_l, 1);
    ok(snap_parse_label(buf, sizeof buf, pv, mo, ml, 8, &n, &err) == 0 && n == 1 &&
           mo[0] == 4096 && ml[0] == (1u << 20) - 4096,
       "the label in sector 1: one metadata area at 4096 (%s)", err.msg);
    uint64_t b_o[] = {4096, pv - (1u << 20)}, b_l[] = {(1u << 20) - 4096, 1u << 20};
    make_label(buf, 0, 1u << 20, b_o, b_l, 2);
    ok(snap_parse_label(buf, sizeof buf, pv, mo, ml, 8, &n, &err) == 0 && n == 2 &&
           mo[1] == pv - (1u << 20),
       "two metadata areas, the second at the end of the volume");
    ok(snap_parse_label(buf, sizeof buf, pv, mo, ml, 1, &n, &err) < 0,
       "more metadata areas than room is refused");
    make_label(buf, 1, 1u << 20, b_o, b_l, 2);
    ok(snap_parse_label(buf, sizeof buf, pv / 2, mo, ml, 8, &n, &err) < 0 &&
           strstr(err.msg, "outside"),
       "a metadata area past the volume's end is refused: %s", err.msg);
    make_label(buf, 1, 1u << 20, a_o, a_l, 1);
    memcpy(buf + 512 + 24, "LVM1 001", 8);
    ok(snap_parse_label(buf, sizeof buf, pv, mo, ml, 8, &n, &err) < 0,
       "a label of another type is refused");
    make_label(buf, 2, 1u << 20, a_o, a_l, 1);
    put64(buf + 2 * 512 + 8, 5);
    ok(snap_parse_label(buf, sizeof buf, pv, mo, ml, 8, &n, &err) < 0,
       "a label that names another sector than its own is refused");
    make_label(buf, 1, 1u << 20, a_o, a_l, 1);
    put32(buf + 512 + 20, 500);
    ok(snap_parse_label(buf, sizeof buf, pv, mo, ml, 8, &n, &err) < 0,
       "a pv_header offset past the sector is refused");
    /* area lists that never end */
    make_label(buf, 1, 1u << 20, a_o, a_l, 1);
    for (size_t p = 32 + 40; p + 16 <= 512; p += 16) {
        put64(buf + 512 + p, 8192);
        put64(buf + 512 + p + 8, 512);
    }
    ok(snap_parse_label(buf, sizeof buf, pv, mo, ml, 8, &n, &err) < 0,
       "area lists that run past the sector are refused");
    memset(buf, 0, sizeof buf);
    ok(snap_parse_label(buf, sizeof buf, pv, mo, ml, 8, &n, &err) < 0 && err.code == ENOENT,
       "no label: refused (%s)", err.msg);
}

static void test_is_lv(void)
{
    char root[] = "/tmp/p2v-test-snap.XXXXXX";
    if (!mkdtemp(root)) {
        ok(0, "mkdtemp");
        return;
    }
    char path[512], vg[64], lv[64];
    const char *uuid = "LVM-6BtnHd2v1T78yGu4o5pS0ih3a5uPgcx10lL6e6XVlcWa58nY2W4R7zLKhxFt4NUp";
    struct {
        const char *dev, *name, *uuid;
    } d[] = {
        {"254:0", "vgt-data", uuid},
        {"254:1", "vgt-data-real", "LVM-6BtnHd2v1T78yGu4o5pS0ih3a5uPgcx10lL6e6XVlcWa58nY2W4R7zLKhxFt4NUp-real"},
        {"254:2", "luks", "CRYPT-LUKS2-0123456789abcdef0123456789abcdef-luks"},
        {"254:3", "vgt-weird-name-x", uuid},
    };
    for (size_t i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/dev", root);
        mkdir(path, 0755);
        snprintf(path, sizeof path, "%s/dev/block", root);
        mkdir(path, 0755);
        snprintf(path, sizeof path, "%s/dev/block/%s", root, d[i].dev);
        mkdir(path, 0755);
        snprintf(path, sizeof path, "%s/dev/block/%s/dm", root, d[i].dev);
        mkdir(path, 0755);
        char f[600], text[300];
        snprintf(f, sizeof f, "%s/name", path);
        snprintf(text, sizeof text, "%s\n", d[i].name);
        write_file(f, text);
        snprintf(f, sizeof f, "%s/uuid", path);
        snprintf(text, sizeof text, "%s\n", d[i].uuid);
        write_file(f, text);
    }
    ok(snap_is_lv(root, makedev(254, 0), vg, sizeof vg, lv, sizeof lv) && !strcmp(vg, "vgt") &&
           !strcmp(lv, "data"),
       "an LVM volume is one (vgt/data)");
    ok(!snap_is_lv(root, makedev(254, 1), vg, sizeof vg, lv, sizeof lv),
       "a snapshot's -real device is not");
    ok(!snap_is_lv(root, makedev(254, 2), vg, sizeof vg, lv, sizeof lv),
       "a dm-crypt device is not");
    ok(!snap_is_lv(root, makedev(254, 3), vg, sizeof vg, lv, sizeof lv),
       "a name that does not split into VG-LV is not");
    ok(!snap_is_lv(root, makedev(8, 1), vg, sizeof vg, lv, sizeof lv),
       "a device that is not device-mapper is not");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        diag("could not remove %s", root);
}

int main(void)
{
    plan(32);
    test_names();
    test_tables();
    test_label();
    test_is_lv();
    ok(snap_pieces(NULL, 0, &(size_t){0}) == NULL, "no snapshot set: no pieces");
    return exit_status();
}
