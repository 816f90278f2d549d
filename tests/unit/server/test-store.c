/* test-store: p2v-server's job store — machine-name and job-id rules, the JSON reader,
 * job.json written and read back, the store lock, finding and making jobs for
 * (name, source id) including BUSY, NAME-2 and folders that cannot be trusted (no
 * job.json, a symlink), staging files and journals (made, reopened, reset when the
 * journal is gone), and the final images written from a staging file (qcow2 and raw,
 * read back through libdiskfmt).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfmt.h"
#include "server.h"
#include "tap.h"

static char root[] = "/tmp/p2v-test-store.XXXXXX";
static char store[256];

static void test_names(void)
{
    static const char *const good[] = {"pc1", "A", "9", "web-01.example_2", "a.b", "x-"};
    static const char *const bad[] = {"", ".", "..", ".hidden", "-x", "_x", "a/b", "a b",
                                      "a\\b", "caf\xc3\xa9", "a\n", "a:b", "../etc"};
    struct p2v_err err = {0};
    bool all = true;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(good); i++)
        all &= srv_name_check(good[i], strlen(good[i]), NULL) == 0;
    ok(all, "valid machine names accepted");
    all = true;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(bad); i++) {
        bool refused = srv_name_check(bad[i], strlen(bad[i]), NULL) < 0;
        if (!refused)
            diag("accepted '%s'", bad[i]);
        all &= refused;
    }
    ok(all, "invalid machine names refused");
    char n64[65], n65[66];
    memset(n64, 'a', 64);
    n64[64] = '\0';
    memset(n65, 'a', 65);
    n65[65] = '\0';
    ok(srv_name_check(n64, 64, NULL) == 0, "64 characters accepted");
    ok(srv_name_check(n65, 65, &err) < 0 && strstr(err.msg, "64"),
       "65 characters refused: %s", err.msg);
    ok(srv_name_check("a\0b", 3, NULL) < 0, "an embedded NUL refused");

    char id[80];
    snprintf(id, sizeof id, "%s-12", n64);
    ok(srv_job_id_ok("pc1") && srv_job_id_ok("pc1-2") && srv_job_id_ok(id),
       "job ids: NAME and NAME-N");
    ok(!srv_job_id_ok("") && !srv_job_id_ok("..") && !srv_job_id_ok(".new-pc1") &&
           !srv_job_id_ok(n65) && !srv_job_id_ok("a/b-2"),
       "bad job ids refused");
}

static void test_json_reader(void)
{
    struct p2v_err err = {0};
    const char *doc = " {\"a\": [1, 2.5, -3, true, false, null], \"s\": \"x\\u00e9\\n\\ud83d\\ude00\","
                      " \"big\": 18446744073709551615, \"o\": {}} ";
    struct jv *v = jv_parse(doc, strlen(doc), &err);
    ok(v != NULL, "parse a document");
    uint64_t u = 0;
    const struct jv *a = jv_get(v, "a");
    ok(a && a->type == JV_ARR && a->n == 6 && jv_u64(&a->items[0], &u) && u == 1 &&
           !a->items[1].is_u64 && a->items[1].num == 2.5 && !jv_u64(&a->items[2], &u) &&
           a->items[3].b && !a->items[4].b && a->items[5].type == JV_NULL,
       "array members");
    is_str(jv_str(jv_get(v, "s")), "x\xc3\xa9\n\xf0\x9f\x98\x80", "escapes and surrogates");
    ok(jv_u64(jv_get(v, "big"), &u) && u == UINT64_MAX, "u64 max");
    ok(jv_get(v, "o") && jv_get(v, "o")->type == JV_OBJ && !jv_get(v, "nope"), "lookup");
    jv_free(v);

    static const char *const bad[] = {
        "", "{", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "\"abc", "01", "1.", "-", "tru",
        "\"\\u0000\"", "\"\\ud800\"", "\"a\tb\"", "{} x", "[1,]", "\"\\q\"",
        "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]",
    };
    bool all = true;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(bad); i++) {
        struct jv *x = jv_parse(bad[i], strlen(bad[i]), &err);
        if (x) {
            diag("accepted: %s", bad[i]);
            jv_free(x);
            all = false;
        }
    }
    ok(all, "malformed documents refused");
    v = jv_parse("[1, ", 4, &err);
    ok(!v && strstr(err.msg, "offset"), "errors name the offset: %s", err.msg);
}

/* Two empty jobs; @a named @id (machine @name, source @src) in @format. */
static void two_jobs(struct srv_job *a, struct srv_job *b, const char *id, const char *name,
                     const char *src, const char *format)
{
    memset(a, 0, sizeof *a);
    memset(b, 0, sizeof *b);
    a->dirfd = b->dirfd = -1;
    snprintf(a->id, sizeof a->id, "%s", id);
    snprintf(a->name, sizeof a->name, "%s", name);
    snprintf(a->source_id, sizeof a->source_id, "%s", src);
    snprintf(a->format, sizeof a->format, "%s", format);
}

static void test_job_json(void)
{
    struct srv_job a, b;
    struct p2v_buf buf;
    struct p2v_err err = {0};
    two_jobs(&a, &b, "pc1-2", "pc1", "abc \"quoted\"", "vmdk");
    a.state = JOB_FAILED;
    snprintf(a.failed_stage, sizeof a.failed_stage, "receiving");
    snprintf(a.reason, sizeof a.reason, "server store is full");
    a.created = 1700000000;
    a.sessions = 3;
    a.bytes_received = 12345;
    a.disks[2].known = true;
    snprintf(a.disks[2].name, sizeof a.disks[2].name, "sda");
    snprintf(a.disks[2].id, sizeof a.disks[2].id, "ata-X");
    a.disks[2].size = 1 << 30;
    a.disks[2].sector_size = 4096;
    a.disks[2].planned = 1 << 29;
    a.disks[2].committed = 1 << 28;
    a.disks[2].complete = true;
    p2v_buf_init(&buf, 0);
    ok(srv_job_to_json(&a, &buf) == 0, "job.json written");
    const char *text = p2v_buf_cstr(&buf);
    ok(strstr(text, "\"state\": \"failed\"") && strstr(text, "\"bytes-total\": 536870912") &&
           strstr(text, "\"bytes-done\": 268435456") && strstr(text, "\"eta\": null") &&
           strstr(text, "\"file\": \"disk2.part\""),
       "job.json has state, totals, eta and file");
    ok(srv_job_from_json(text, buf.len, &b, &err) == 0, "job.json read back");
    ok(strcmp(b.id, a.id) == 0 && strcmp(b.source_id, a.source_id) == 0 &&
           b.state == JOB_FAILED && strcmp(b.reason, a.reason) == 0 &&
           strcmp(b.format, "vmdk") == 0 && b.created == a.created && b.sessions == 3 &&
           b.bytes_received == 12345,
       "job fields survive");
    ok(b.disks[2].known && !b.disks[0].known && b.disks[2].size == 1 << 30 &&
           b.disks[2].sector_size == 4096 && b.disks[2].complete &&
           b.disks[2].committed == 1 << 28 && strcmp(b.disks[2].id, "ata-X") == 0,
       "disk fields survive");

    static const char *const bad[] = {
        "{\"job\":\"../x\",\"name\":\"x\"}",
        "[]",
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(bad); i++)
        ok(srv_job_from_json(bad[i], strlen(bad[i]), &b, &err) < 0, "bad job.json %zu refused",
           i);
    /* a disk whose size is not a multiple of 512 */
    char *t = strdup(text);
    char *p = strstr(t, "1073741824");
    memcpy(p, "1073741825", 10);
    ok(srv_job_from_json(t, strlen(t), &b, &err) < 0, "bad disk size refused: %s", err.msg);
    free(t);
    p2v_buf_release(&buf);
}

/* The pipeline's job.json members, --format lists and batch manifests. */
static void test_pipeline_fields(void)
{
    struct srv_job a, b;
    struct p2v_buf buf;
    struct p2v_err err = {0};
    two_jobs(&a, &b, "web01", "web01", "s", "qcow2");
    snprintf(a.outputs, sizeof a.outputs, "vmdk,ova");
    snprintf(a.verdict, sizeof a.verdict, "root-not-found");
    a.state = JOB_FAILED;
    snprintf(a.failed_stage, sizeof a.failed_stage, "verifying");
    a.has_report = a.has_serial_log = true;
    a.stage_ms[SRV_STAGE_INJECTING] = 41234;
    a.memory_mib = 768;
    a.cpus = 3;
    a.changes = 6;
    a.created = 1700000000;
    a.disks[0].known = true;
    a.disks[0].size = 1 << 20;
    a.disks[0].sector_size = 512;
    a.disks[0].complete = true;
    p2v_buf_init(&buf, 0);
    ok(srv_job_to_json(&a, &buf) == 0 && srv_job_from_json(p2v_buf_cstr(&buf), buf.len, &b, &err) == 0,
       "a failed(verifying) job's job.json read back: %s", err.msg);
    ok(srv_job_captured(&b) && strcmp(b.outputs, "vmdk,ova") == 0 &&
           strcmp(b.verdict, "root-not-found") == 0 && b.has_report && b.has_serial_log &&
           b.stage_ms[SRV_STAGE_INJECTING] == 41234 && b.memory_mib == 768 && b.cpus == 3 &&
           b.changes == 6 && strstr(p2v_buf_cstr(&buf), "\"file\": \"disk0.qcow2\""),
       "outputs, verdict, report, stage times, overrides survive; the disk is the final one");
    for (int s = JOB_RECEIVING; s <= JOB_FAILED; s++)
        ok(srv_job_state_parse(srv_job_state_name((enum srv_job_state)s)) == s, "state %s",
           srv_job_state_name((enum srv_job_state)s));
    ok(srv_job_state_parse("converted") < 0, "an unknown state is refused");
    a.state = JOB_FAILED;
    snprintf(a.failed_stage, sizeof a.failed_stage, "receiving");
    ok(!srv_job_captured(&a), "failed while receiving: not captured (the agent resumes it)");
    p2v_buf_release(&buf);

    char prim[8], outs[SRV_OUTPUTS_MAX];
    static const struct { const char *in, *prim, *outs; } good[] = {
        {"qcow2", "qcow2", ""},
        {"ova", "qcow2", "ova"},
        {"vmdk,ova", "vmdk", "ova"},
        {"vhd,raw,qcow2", "raw", "qcow2,vhd"},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(good); i++)
        ok(srv_parse_formats(good[i].in, prim, outs, &err) == 0 &&
               strcmp(prim, good[i].prim) == 0 && strcmp(outs, good[i].outs) == 0,
           "--format %s: received as %s, then '%s' (got %s, '%s')", good[i].in, good[i].prim,
           good[i].outs, prim, outs);
    static const char *const badf[] = {"", "qcow2,", "iso", "raw,raw", "qcow2,,vmdk"};
    for (size_t i = 0; i < P2V_ARRAY_SIZE(badf); i++)
        ok(srv_parse_formats(badf[i], prim, outs, &err) < 0, "--format '%s' refused: %s",
           badf[i], err.msg);

    struct srv_batch_entry *v = NULL;
    size_t n = 0;
    const char *m = "# wave\n\nweb01 format=vmdk,ova memory=4096 cpus=2 # web\r\ndb01\n";
    ok(srv_batch_parse(m, strlen(m), &v, &n, &err) == 0 && n == 2 &&
           strcmp(v[0].name, "web01") == 0 && strcmp(v[0].format, "vmdk") == 0 &&
           strcmp(v[0].outputs, "ova") == 0 && v[0].memory_mib == 4096 && v[0].cpus == 2 &&
           strcmp(v[1].name, "db01") == 0 && strcmp(v[1].format, "qcow2") == 0 &&
           v[1].memory_mib == 0,
       "a manifest: two machines, options, comments and CRLF");
    free(v);
    static const struct { const char *text, *msg; } badm[] = {
        {"", "no machine"},
        {"web01 cpus=0", "line 1: cpus"},
        {"web01\nweb01", "line 2: machine 'web01' is listed twice"},
        {"a/b", "line 1: machine name"},
        {"web01 memory", "line 1: 'memory' is not KEY=VALUE"},
        {"web01\n\x01x", "line 2"},
        {"web01 format=qcow2,qcow2", "named twice"},
    };
    for (size_t i = 0; i < P2V_ARRAY_SIZE(badm); i++) {
        v = NULL;
        int r = srv_batch_parse(badm[i].text, strlen(badm[i].text), &v, &n, &err);
        ok(r < 0 && !v && strstr(err.msg, badm[i].msg), "bad manifest %zu refused: %s", i,
           err.msg);
    }
    char nul[] = "web01\0db01";
    ok(srv_batch_parse(nul, sizeof nul - 1, &v, &n, &err) < 0 && strstr(err.msg, "NUL"),
       "a manifest with a NUL byte is refused: %s", err.msg);
    char *longl = malloc(2000);
    memset(longl, 'a', 1999);
    longl[1999] = '\0';
    ok(srv_batch_parse(longl, 1999, &v, &n, &err) < 0 && strstr(err.msg, "longer than"),
       "an over-long line is refused");
    free(longl);
}

static int write_small(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void test_store(void)
{
    struct srv_store st, st2;
    struct p2v_err err = {0};
    struct stat sb;

    snprintf(store, sizeof store, "%s/store", root);
    mkdir(store, 0700);
    ok(srv_store_open(&st, store, false, &err) < 0 && strstr(err.msg, "not initialised"),
       "an empty folder is not a store: %s", err.msg);
    /* the store code checks that the identity files exist; TLS is not involved here */
    write_small(store, "server.key", "k");
    write_small(store, "server.crt", "c");
    write_small(store, "token", "0123456789abcdef\n");
    ok(srv_store_open(&st, store, true, &err) == 0, "open the store");
    ok(srv_store_in_use(store), "the store is locked while open for run");
    ok(srv_store_open(&st2, store, true, &err) < 0 && strstr(err.msg, "in use"),
       "a second server on the store refused: %s", err.msg);
    ok(srv_token_equal(&st, "0123456789abcdef", 16) &&
           !srv_token_equal(&st, "0123456789abcdeX", 16) &&
           !srv_token_equal(&st, "0123456789abcdef0", 17),
       "token comparison");

    /* a new job */
    struct srv_job *j1 = NULL, *j2 = NULL, *j3 = NULL;
    bool is_new = false;
    ok(srv_job_acquire(&st, "pc1", "src-a", &j1, &is_new, &err) == SRV_ACQ_OK && is_new &&
           strcmp(j1->id, "pc1") == 0,
       "new job pc1");
    char p[1100];
    snprintf(p, sizeof p, "%s/jobs/pc1", store);
    ok(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0700, "job folder mode 0700");
    snprintf(p, sizeof p, "%s/jobs/pc1/job.json", store);
    ok(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0600, "job.json mode 0600");
    ok(srv_job_acquire(&st, "pc1", "src-a", &j2, &is_new, &err) == SRV_ACQ_BUSY,
       "the same job while held: BUSY");
    ok(srv_job_acquire(&st, "pc1", "src-b", &j2, &is_new, &err) == SRV_ACQ_OK && is_new &&
           strcmp(j2->id, "pc1-2") == 0,
       "another source with the same name: pc1-2");

    /* disks: staging file and journal */
    j1->disks[0].known = true;
    j1->disks[0].size = 4u << 20;
    j1->disks[0].sector_size = 512;
    j1->disks[0].planned = 4u << 20;
    ok(srv_disk_open(j1, 0, P2V_HASH_SHA256, &err) == 0, "make disk 0's files");
    snprintf(p, sizeof p, "%s/jobs/pc1/disk0.part", store);
    {
        const char *fmt = NULL;
        ok(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0600 &&
               diskfmt_probe(p, &fmt, &err) == 0 && strcmp(fmt, "qcow2") == 0,
           "in-progress image: a qcow2 (the job's format), 0600");
    }
    uint8_t data[8192];
    memset(data, 0x77, sizeof data);
    struct jrnl_rec rec = {.off = 1 << 20, .len = sizeof data, .hash_algo = P2V_HASH_SHA256};
    p2v_hash(P2V_HASH_SHA256, data, sizeof data, rec.hash);
    ok(srv_disk_write(j1, 0, data, sizeof data, 1 << 20, false, &err) == 0 &&
           srv_disk_commit(j1, 0, &rec, 1, false, 1, &err) == 0,
       "write and commit a chunk");
    ok(j1->disks[0].jr.marked && j1->disks[0].committed == sizeof data,
       "the commit left a mark in the journal");
    j1->disks[0].complete = true;
    srv_job_release(&st, j1);
    j1 = NULL;
    srv_job_release(&st, j2);

    ok(srv_job_acquire(&st, "pc1", "src-a", &j1, &is_new, &err) == SRV_ACQ_OK && !is_new &&
           strcmp(j1->id, "pc1") == 0,
       "released job found again (resume)");
    ok(j1->disks[0].known && j1->disks[0].committed == sizeof data && j1->disks[0].complete,
       "job.json kept the disk, its committed bytes and completeness");
    ok(srv_disk_open(j1, 0, P2V_HASH_SHA256, &err) == 0 &&
           srv_ranges_covers(&j1->disks[0].jr.committed, 1 << 20, sizeof data),
       "the journal's ranges come back");

    /* the final image, qcow2 */
    ok(srv_job_finish(&st, j1, NULL, &err) == 0, "write the final image");
    ok(j1->state == JOB_RECEIVED, "state received");
    snprintf(p, sizeof p, "%s/jobs/pc1/disk0.part", store);
    ok(stat(p, &sb) < 0 && errno == ENOENT, "in-progress image gone (renamed)");
    snprintf(p, sizeof p, "%s/jobs/pc1/disk0.journal", store);
    ok(stat(p, &sb) < 0 && errno == ENOENT, "journal removed");
    snprintf(p, sizeof p, "%s/jobs/pc1/disk0.qcow2", store);
    struct diskfmt *d = diskfmt_open(p, NULL, 0, &err);
    uint8_t back[8192], z[4096] = {0}, zb[4096];
    ok(d && strcmp(diskfmt_format(d), "qcow2") == 0 && diskfmt_size(d) == 4u << 20,
       "disk0.qcow2 is a qcow2 of the disk's size");
    ok(d && diskfmt_pread(d, back, sizeof back, 1 << 20, &err) == 0 &&
           memcmp(back, data, sizeof data) == 0 &&
           diskfmt_pread(d, zb, sizeof zb, 0, &err) == 0 && memcmp(zb, z, sizeof z) == 0,
       "its content is what was written");
    diskfmt_close(d, NULL);
    ok(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0600, "final image mode 0600");
    srv_job_release(&st, j1);
    ok(srv_job_acquire(&st, "pc1", "src-a", &j1, &is_new, &err) == SRV_ACQ_OK &&
           j1->state == JOB_RECEIVED && j1->disks[0].committed == sizeof data,
       "received job found as received, committed bytes kept");
    srv_job_release(&st, j1);

    /* raw, and a disk whose journal went missing: it starts again */
    snprintf(st.format, sizeof st.format, "raw");
    ok(srv_job_acquire(&st, "rawpc", "s", &j3, &is_new, &err) == SRV_ACQ_OK, "raw job");
    j3->disks[1].known = true;
    j3->disks[1].size = 1 << 20;
    j3->disks[1].sector_size = 512;
    srv_disk_open(j3, 1, P2V_HASH_SHA256, &err);
    rec.off = 0;
    srv_disk_write(j3, 1, data, sizeof data, 0, false, &err);
    srv_disk_commit(j3, 1, &rec, 1, true, 1, &err);
    srv_job_close_files(j3);
    unlinkat(j3->dirfd, "disk1.journal", 0);
    ok(srv_disk_open(j3, 1, P2V_HASH_SHA256, &err) == 0 &&
           j3->disks[1].jr.committed.n == 0 && j3->disks[1].committed == 0,
       "journal gone: the disk starts again, nothing committed");
    snprintf(p, sizeof p, "%s/jobs/rawpc/disk1.part", store);
    ok(stat(p, &sb) == 0 && sb.st_blocks == 0, "...with an empty (raw) image");
    srv_disk_write(j3, 1, data, sizeof data, 65536, false, &err);
    j3->disks[1].complete = true;
    ok(srv_job_finish(&st, j3, NULL, &err) == 0, "raw image written");
    snprintf(p, sizeof p, "%s/jobs/rawpc/disk1.raw", store);
    int fd = open(p, O_RDONLY);
    ok(fd >= 0 && pread(fd, back, sizeof back, 65536) == sizeof back &&
           memcmp(back, data, sizeof data) == 0 && fstat(fd, &sb) == 0 &&
           sb.st_size == 1 << 20,
       "disk1.raw holds the data at its offset");
    if (fd >= 0)
        close(fd);
    srv_job_release(&st, j3);

    /* folders that cannot be trusted are skipped, never written into */
    snprintf(p, sizeof p, "%s/jobs/nojson", store);
    mkdir(p, 0700);
    ok(srv_job_acquire(&st, "nojson", "s", &j3, &is_new, &err) == SRV_ACQ_OK &&
           strcmp(j3->id, "nojson-2") == 0,
       "a folder without job.json is skipped: nojson-2");
    srv_job_release(&st, j3);
    char outside[512];
    snprintf(outside, sizeof outside, "%s/outside", root);
    mkdir(outside, 0700);
    snprintf(p, sizeof p, "%s/jobs/evil", store);
    ok(symlink(outside, p) == 0, "plant jobs/evil -> a folder outside the store");
    ok(srv_job_acquire(&st, "evil", "s", &j3, &is_new, &err) == SRV_ACQ_OK &&
           strcmp(j3->id, "evil-2") == 0,
       "the symlink is not followed: evil-2");
    srv_job_release(&st, j3);
    snprintf(p, sizeof p, "%s/job.json", outside);
    ok(stat(p, &sb) < 0, "nothing written through the symlink");

    struct srv_job *lj = srv_job_load(&st, "pc1", &err);
    ok(lj && lj->state == JOB_RECEIVED, "srv_job_load by id");
    srv_job_free(lj);
    ok(!srv_job_load(&st, "../store", &err), "srv_job_load refuses a path");
    srv_store_close(&st);
    ok(!srv_store_in_use(store), "lock released at close");
}

static void test_files(void)
{
    struct p2v_err err = {0};
    struct p2v_buf b;
    struct stat sb;
    int dfd = open(root, O_RDONLY | O_DIRECTORY);
    ok(srv_write_file_at(dfd, "f.json", "{}\n", 3, 0600, &err) == 0, "atomic write");
    ok(fstatat(dfd, "f.json", &sb, 0) == 0 && sb.st_size == 3 &&
           (sb.st_mode & 0777) == 0600 && fstatat(dfd, ".f.json.tmp", &sb, 0) < 0,
       "file in place, mode 0600, no temporary left");
    p2v_buf_init(&b, 0);
    ok(srv_read_file_at(dfd, "f.json", 100, &b, &err) == 0 && b.len == 3, "read back");
    ok(srv_read_file_at(dfd, "f.json", 2, &b, &err) < 0 && err.code == EFBIG,
       "size cap: %s", err.msg);
    symlinkat("f.json", dfd, "l.json");
    ok(srv_read_file_at(dfd, "l.json", 100, &b, &err) < 0, "symlink not followed");
    p2v_buf_release(&b);
    close(dfd);
}

int main(void)
{
    if (!mkdtemp(root))
        skip_all("mkdtemp failed");
    p2v_log_set_level(P2V_LOG_ERROR); /* the store warns about the skipped folders */
    test_names();
    test_json_reader();
    test_job_json();
    test_pipeline_fields();
    test_files();
    test_store();
    int rc = exit_status();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        diag("could not remove %s", root);
    return rc;
}
