/* test-resume.c: TAP unit test of the resumable writers (diskfmt_checkpoint and
 * diskfmt_resume; raw and qcow2). A qcow2 writer writes, checkpoints, writes more —
 * overwrites in place, new clusters in tables that existed at the checkpoint, new L2
 * tables, enough tables to evict the cache so that tables holding entries past the mark
 * reach the disk — and is then abandoned (its page cache intact, as after SIGKILL) or
 * killed with SIGKILL in a child. Resumed at the mark, the image must read what the
 * checkpoint held, plus the overwrites in place (clusters allocated before the mark), and
 * zeros where the lost writes went; written on and closed, `qemu-img check` must find it
 * clean (no errors, no leaks), `qemu-img compare` identical to a raw file of the expected
 * bytes, and our reader and check agree. Resuming twice in a row works the same. Bad
 * marks, foreign, complete and compressed images and formats without checkpoints are
 * refused, each with its own error code, leaving the image resumable. The qemu-img
 * oracles are skipped (TAP # SKIP) only when qemu-img is missing.
 */
#define DFTEST_WORDS "resume", "checkpoint", "mark", "cluster", "table"
#include "dftest.h"
#include "qcow2.h"

static bool have_qemu_img;

/* ------------------------------------------------------------------ the model */

/* What the image must hold: the writes in order, each with the data a seed makes. A
 * write after the last checkpoint survives a resume only when it overwrote, in place,
 * clusters allocated before the checkpoint (@in_place, which the test's layout decides;
 * such writes are never zeros, which may or may not reach the disk as a zero flag). */
struct wr {
    uint64_t off, len, seed;
    bool zero, in_place, live;
};

#define MODEL_MAX 512
struct model {
    struct wr w[MODEL_MAX];
    int n;
    int cp; /* writes before the last checkpoint: w[0, cp) */
    uint64_t size;
};

static void gen(const struct wr *w, uint8_t *p)
{
    if (w->zero) {
        memset(p, 0, w->len);
        return;
    }
    uint64_t x = w->seed | 1;
    for (uint64_t i = 0; i < w->len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 32);
    }
}

/* Record a write (and do it when @d is not NULL). */
static int mwrite(struct model *m, struct diskfmt *d, uint64_t off, uint64_t len,
                  bool in_place, bool zero, struct p2v_err *err)
{
    if (m->n == MODEL_MAX)
        return p2v_err_set(err, ENOSPC, "model full");
    struct wr *w = &m->w[m->n++];
    *w = (struct wr){off, len, rnd(), zero, in_place, true};
    if (!d)
        return 0;
    if (zero)
        return diskfmt_zero(d, off, len, err);
    uint8_t *p = malloc(len);
    if (!p)
        return p2v_err_set(err, ENOMEM, "out of memory");
    gen(w, p);
    int r = diskfmt_pwrite(d, p, len, off, err);
    free(p);
    return r;
}

static void model_checkpoint(struct model *m)
{
    m->cp = m->n;
}

/* A resume at the last checkpoint: what was written after it is lost, but overwrites in
 * place. */
static void model_resume(struct model *m)
{
    for (int i = m->cp; i < m->n; i++)
        if (!m->w[i].in_place)
            m->w[i].live = false;
}

/* The expected bytes of [off, off + len). */
static void expected(const struct model *m, uint64_t off, uint64_t len, uint8_t *out)
{
    memset(out, 0, len);
    for (int i = 0; i < m->n; i++) {
        const struct wr *w = &m->w[i];
        if (!w->live || w->off >= off + len || off >= w->off + w->len)
            continue;
        uint8_t *p = malloc(w->len);
        gen(w, p);
        uint64_t a = P2V_MAX(off, w->off), b = P2V_MIN(off + len, w->off + w->len);
        memcpy(out + (a - off), p + (a - w->off), b - a);
        free(p);
    }
}

/* Read every range the model ever wrote (live or lost), 4 KiB either side, and a few
 * places never written, through @d: 1 TAP result. */
static bool check_content(struct diskfmt *d, const struct model *m, const char *name)
{
    char why[P2V_ERR_MSG_MAX + 128] = "";
    bool good = d != NULL;
    int nprobe = m->n + 3;
    for (int i = 0; i < nprobe && good; i++) {
        uint64_t off, len;
        if (i < m->n) {
            off = m->w[i].off > 4096 ? m->w[i].off - 4096 : 0;
            len = P2V_MIN(m->w[i].off + m->w[i].len + 4096, m->size) - off;
        } else {
            /* the first and last bytes, and the middle */
            off = i == m->n ? 0 : i == m->n + 1 ? m->size - 8192 : m->size / 2;
            len = 8192;
        }
        uint8_t *got = malloc(len), *want = malloc(len);
        struct p2v_err err = {0};
        if (diskfmt_pread(d, got, len, off, &err) < 0) {
            snprintf(why, sizeof why, "pread at %llu: %s", (unsigned long long)off, err.msg);
            good = false;
        } else {
            expected(m, off, len, want);
            for (uint64_t k = 0; k < len; k++)
                if (got[k] != want[k]) {
                    snprintf(why, sizeof why, "byte %llu is %02x, want %02x",
                             (unsigned long long)(off + k), got[k], want[k]);
                    good = false;
                    break;
                }
        }
        free(got);
        free(want);
    }
    if (!ok(good, "%s", name))
        diag("  %s", d ? why : "no handle");
    return good;
}

/* A raw file of the expected bytes (sparse). */
static int write_expected_raw(const struct model *m, const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int r = fd < 0 || ftruncate(fd, (off_t)m->size) < 0 ? -1 : 0;
    for (int i = 0; i < m->n && r == 0; i++) {
        const struct wr *w = &m->w[i];
        if (!w->live)
            continue;
        uint8_t *p = malloc(w->len);
        gen(w, p);
        r = p2v_pwrite_full(fd, p, w->len, w->off) < 0 ? -1 : 0;
        free(p);
    }
    if (fd >= 0)
        close(fd);
    return r;
}

/* The finished image: qemu-img check clean, identical to the expected raw file for
 * qemu-img compare, and for our reader; our check clean. 4 TAP results. */
static void check_finished(const char *img, const struct model *m, const char *name)
{
    char raw[512];
    snprintf(raw, sizeof raw, "%s.expected", img);
    write_expected_raw(m, raw);
    if (have_qemu_img) {
        int r = sh("qemu-img check -f qcow2 '%s' >'%s' 2>&1", img, tpath("check.out"));
        if (!ok(r == 0, "%s: qemu-img check: no errors, no leaks", name))
            sh("head -8 '%s' | sed 's/^/# /'", tpath("check.out"));
        is_int(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s' >/dev/null 2>&1", raw, img),
               0, "%s: qemu-img compare: identical to the expected raw file", name);
    } else {
        ok(1, "%s: qemu-img check # SKIP qemu-img missing", name);
        ok(1, "%s: qemu-img compare # SKIP qemu-img missing", name);
    }
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(img, NULL, DISKFMT_RDONLY, &err);
    char label[128];
    snprintf(label, sizeof label, "%s: our reader reads the expected bytes", name);
    if (!d)
        diag("  open: %s", err.msg);
    check_content(d, m, label);
    struct diskfmt_check res = {0};
    int cr = d ? diskfmt_check(d, &res, &err) : -1;
    if (!ok(cr == 0 && res.errors == 0 && res.leaks == 0, "%s: our check is clean", name))
        diag("  %s %s (errors %llu leaks %llu)", cr ? err.msg : "", res.first_error,
             (unsigned long long)res.errors, (unsigned long long)res.leaks);
    diskfmt_close(d, NULL);
}

/* The host offset an L1 entry of @path holds on disk (cluster size @cs). */
static uint64_t disk_l1(const char *path, uint32_t cs, uint64_t l1i)
{
    return read_be64(path, 3 * (uint64_t)cs + 8 * l1i) & QCOW2_OFFSET_MASK;
}

/* The host offset entry @idx of the L2 table of L1 entry @l1i holds on disk. */
static uint64_t disk_l2(const char *path, uint32_t cs, uint64_t l1i, uint64_t idx)
{
    uint64_t t = disk_l1(path, cs, l1i);
    return t ? read_be64(path, t + 8 * idx) & QCOW2_OFFSET_MASK : 0;
}

static struct diskfmt *create_qcow2(const char *path, uint64_t size, uint32_t cs,
                                    struct p2v_err *err)
{
    struct diskfmt_create_opts o = {.size = size, .cluster_size = cs};
    return diskfmt_create(path, "qcow2", &o, err);
}

/* ------------------------------------------------------------------ 64 KiB clusters */

/* 3 GiB at 64 KiB clusters: 6 L2 tables of 512 MiB. After the checkpoint: overwrites in
 * place (whole clusters and part of one), new clusters in a table of the checkpoint, new
 * tables (their L1 entries reach the disk at once), a partial last cluster. */
static void test_qcow2_64k(void)
{
    const char *img = tpath("r64.qcow2");
    const uint64_t G = 1024 * (uint64_t)MIB;
    struct model m = {.size = 3 * G};
    struct p2v_err err = {0};
    struct diskfmt *d = create_qcow2(img, m.size, 0, &err);
    bool wok = d != NULL;
    /* A: table 0, table 1 (partial clusters at both ends), table 2 */
    wok = wok && mwrite(&m, d, 0, MIB, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, 700 * (uint64_t)MIB + 12345, 300000, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, G + 64 * KIB, 2 * MIB, false, false, &err) == 0;
    uint64_t mark = 0;
    wok = wok && diskfmt_checkpoint(d, &mark, &err) == 0;
    model_checkpoint(&m);
    if (!ok(wok, "64k: created, written, checkpoint"))
        diag("  %s", err.msg);
    ok(mark % (64 * KIB) == 0 && mark > 4 * 64 * KIB && mark <= fsize(img),
       "64k: the mark (%llu) is cluster-aligned, past the metadata, inside the file",
       (unsigned long long)mark);
    /* B: in place (whole clusters; part of a cluster), then lost */
    wok = wok && mwrite(&m, d, 256 * KIB, 128 * KIB, true, false, &err) == 0;
    wok = wok && mwrite(&m, d, 700 * (uint64_t)MIB + 17345, 3000, true, false, &err) == 0;
    wok = wok && mwrite(&m, d, 10 * (uint64_t)MIB, 512 * KIB, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, 1600 * (uint64_t)MIB, MIB, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, 2600 * (uint64_t)MIB + 5000, 100 * KIB, false, false,
                        &err) == 0;
    wok = wok && mwrite(&m, d, m.size - 4096, 4096, false, false, &err) == 0;
    if (!ok(wok, "64k: written after the checkpoint"))
        diag("  %s", err.msg);
    diskfmt_abandon(d);
    /* the case to handle: a table allocated after the checkpoint, its L1 entry on disk */
    ok(disk_l1(img, 64 * KIB, 3) >= mark, "64k: an L1 entry on disk points past the mark");

    d = diskfmt_resume(img, "qcow2", mark, &err);
    if (!ok(d != NULL, "64k: resumed"))
        diag("  %s", err.msg);
    model_resume(&m);
    ok(fsize(img) == mark, "64k: the file is cut at the mark");
    ok(d && diskfmt_size(d) == m.size && diskfmt_block_size(d) == 64 * KIB &&
           !diskfmt_sequential_writes(d) && diskfmt_write_align(d) == 1,
       "64k: the resumed handle is like a created one");
    check_content(d, &m, "64k: reads the checkpoint's data, the overwrites, zeros elsewhere");
    /* C: where lost writes were, in a table cut away, new ones; zeroing in place */
    wok = d != NULL;
    wok = wok && mwrite(&m, d, 10 * (uint64_t)MIB + 64 * KIB, 256 * KIB, false, false,
                        &err) == 0;
    wok = wok && mwrite(&m, d, 1600 * (uint64_t)MIB + 4096, 8192, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, 2 * G, MIB, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, 512 * KIB, 64 * KIB, false, true, &err) == 0;
    wok = wok && mwrite(&m, d, G + 100 * KIB, 1000, false, false, &err) == 0;
    if (!ok(wok, "64k: written after the resume"))
        diag("  %s", err.msg);
    check_content(d, &m, "64k: reads back before close");
    if (!ok(d && diskfmt_close(d, &err) == 0, "64k: closed"))
        diag("  %s", err.msg);
    check_finished(img, &m, "64k");
}

/* ------------------------------------------------------------------ evictions */

/* 512 MiB at 4 KiB clusters: 256 L2 tables of 2 MiB, 32 in the cache. After the
 * checkpoint, new clusters in ten tables of the checkpoint, then fifty new tables: the
 * ten are evicted, so that their tables on disk hold entries past the mark. */
static void test_qcow2_evict(void)
{
    const char *img = tpath("ev.qcow2");
    const uint32_t cs = 4096;
    const uint64_t span = 2 * (uint64_t)MIB; /* one L2 table's */
    struct model m = {.size = 512 * (uint64_t)MIB};
    struct p2v_err err = {0};
    struct diskfmt *d = create_qcow2(img, m.size, cs, &err);
    bool wok = d != NULL;
    /* A: 40 tables (evicting already), 64 KiB each, one partial cluster at the end */
    for (uint64_t t = 0; t < 40 && wok; t++)
        wok = mwrite(&m, d, t * span + 8192, 64 * KIB + (t == 39 ? 100 : 0), false, false,
                     &err) == 0;
    uint64_t mark = 0;
    wok = wok && diskfmt_checkpoint(d, &mark, &err) == 0;
    model_checkpoint(&m);
    if (!ok(wok && mark % cs == 0, "evict: written, checkpoint"))
        diag("  %s", err.msg);
    /* B: overwrites in place, new clusters in the checkpoint's tables, new tables */
    for (uint64_t t = 0; t < 10 && wok; t++) {
        wok = mwrite(&m, d, t * span + 8192 + 4096, 8192, true, false, &err) == 0 &&
              mwrite(&m, d, t * span + MIB, 16 * KIB, false, false, &err) == 0;
    }
    wok = wok && mwrite(&m, d, 5 * span + 8192 + 100, 50, true, false, &err) == 0;
    for (uint64_t t = 100; t < 150 && wok; t++)
        wok = mwrite(&m, d, t * span + 4096 * (t % 7), 8192, false, false, &err) == 0;
    if (!ok(wok, "evict: written after the checkpoint"))
        diag("  %s", err.msg);
    diskfmt_abandon(d);
    ok(disk_l2(img, cs, 0, MIB / cs) >= mark && disk_l2(img, cs, 9, MIB / cs) >= mark,
       "evict: tables of the checkpoint on disk hold entries past the mark (evicted)");
    ok(disk_l1(img, cs, 120) >= mark, "evict: L1 entries on disk point past the mark");

    d = diskfmt_resume(img, "qcow2", mark, &err);
    if (!ok(d != NULL, "evict: resumed"))
        diag("  %s", err.msg);
    model_resume(&m);
    ok(disk_l2(img, cs, 0, MIB / cs) == 0 && disk_l1(img, cs, 120) == 0 &&
           disk_l2(img, cs, 0, 8192 / cs) != 0,
       "evict: the entries past the mark are cleared, the others kept");
    check_content(d, &m, "evict: reads the checkpoint's data, the overwrites, zeros elsewhere");
    wok = d != NULL;
    for (uint64_t t = 0; t < 60 && wok; t += 3)
        wok = mwrite(&m, d, t * span + MIB - 2048, 8192, false, false, &err) == 0;
    for (uint64_t t = 110; t < 160 && wok; t += 2)
        wok = mwrite(&m, d, t * span, 4096, false, false, &err) == 0;
    uint64_t mark2 = 0;
    wok = wok && diskfmt_checkpoint(d, &mark2, &err) == 0 && diskfmt_flush(d, &err) == 0;
    if (!ok(wok && mark2 > mark, "evict: written after the resume, checkpoint, flush"))
        diag("  %s", err.msg);
    if (!ok(d && diskfmt_close(d, &err) == 0, "evict: closed"))
        diag("  %s", err.msg);
    check_finished(img, &m, "evict");
}

/* ------------------------------------------------------------------ twice */

static void test_qcow2_twice(void)
{
    const char *img = tpath("tw.qcow2");
    const uint32_t cs = 4096;
    struct model m = {.size = 64 * (uint64_t)MIB};
    struct p2v_err err = {0};
    struct diskfmt *d = create_qcow2(img, m.size, cs, &err);
    uint64_t mark1 = 0, mark2 = 0;
    bool wok = d != NULL;
    wok = wok && mwrite(&m, d, 0, 256 * KIB, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, 20 * (uint64_t)MIB + 3, 10000, false, false, &err) == 0;
    wok = wok && diskfmt_checkpoint(d, &mark1, &err) == 0;
    model_checkpoint(&m);
    wok = wok && mwrite(&m, d, 64 * KIB, 64 * KIB, true, false, &err) == 0;
    wok = wok && mwrite(&m, d, 30 * (uint64_t)MIB, 200 * KIB, false, false, &err) == 0;
    if (!ok(wok, "twice: written, checkpoint, written"))
        diag("  %s", err.msg);
    diskfmt_abandon(d);

    d = diskfmt_resume(img, "qcow2", mark1, &err);
    if (!ok(d != NULL, "twice: resumed at the first mark"))
        diag("  %s", err.msg);
    model_resume(&m);
    check_content(d, &m, "twice: the first resume reads as expected");
    wok = d != NULL;
    wok = wok && mwrite(&m, d, 30 * (uint64_t)MIB + 4096, 100 * KIB, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, 40 * (uint64_t)MIB, 33 * KIB, false, false, &err) == 0;
    wok = wok && diskfmt_checkpoint(d, &mark2, &err) == 0;
    model_checkpoint(&m);
    /* in place over clusters of both the first and the second part */
    wok = wok && mwrite(&m, d, 128 * KIB, 8192, true, false, &err) == 0;
    wok = wok && mwrite(&m, d, 30 * (uint64_t)MIB + 8192, 4096, true, false, &err) == 0;
    wok = wok && mwrite(&m, d, 50 * (uint64_t)MIB, MIB, false, false, &err) == 0;
    wok = wok && mwrite(&m, d, 40 * (uint64_t)MIB + 36 * KIB, 4 * KIB, false, false,
                        &err) == 0;
    if (!ok(wok && mark2 > mark1, "twice: written, second checkpoint, written"))
        diag("  %s", err.msg);
    diskfmt_abandon(d);

    d = diskfmt_resume(img, "qcow2", mark2, &err);
    if (!ok(d != NULL, "twice: resumed at the second mark"))
        diag("  %s", err.msg);
    model_resume(&m);
    check_content(d, &m, "twice: the second resume reads as expected");
    wok = d != NULL && mwrite(&m, d, 60 * (uint64_t)MIB, 300 * KIB, false, false, &err) == 0;
    if (!ok(wok && diskfmt_close(d, &err) == 0, "twice: written, closed"))
        diag("  %s", err.msg);
    check_finished(img, &m, "twice");
}

/* ------------------------------------------------------------------ SIGKILL */

/* The child creates, writes, checkpoints, sends the mark through a pipe, writes more
 * (new tables, evictions, overwrites) and kills itself; the parent knows the writes from
 * the same model, built without writing. */
static void killed_plan(struct model *m, struct diskfmt *d, uint64_t *mark, int pfd,
                        struct p2v_err *err)
{
    const uint64_t span = 2 * (uint64_t)MIB;
    bool wok = true;
    for (uint64_t t = 0; t < 36 && wok; t++)
        wok = mwrite(m, d, t * span + 4096 * t, 12 * KIB + 7, false, false, err) == 0;
    if (d && (!wok || diskfmt_checkpoint(d, mark, err) < 0 ||
              write(pfd, mark, sizeof *mark) != (ssize_t)sizeof *mark))
        _exit(1);
    model_checkpoint(m);
    for (uint64_t t = 0; t < 36 && wok; t += 5)
        wok = mwrite(m, d, t * span + 4096 * t + 4096, 4096, true, false, err) == 0 &&
              mwrite(m, d, t * span + MIB, 4096, false, false, err) == 0;
    for (uint64_t t = 40; t < 100 && wok; t++)
        wok = mwrite(m, d, t * span + 512, 4096, false, false, err) == 0;
    if (d && !wok)
        _exit(2);
}

static void test_qcow2_killed(void)
{
    const char *img = tpath("k.qcow2");
    struct model m = {.size = 256 * (uint64_t)MIB};
    struct p2v_err err = {0};
    int pfd[2];
    if (pipe(pfd) < 0) {
        ok(0, "killed: pipe");
        return;
    }
    uint64_t seed = rng_state;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        struct diskfmt *d = create_qcow2(img, m.size, 4096, &err);
        uint64_t mk;
        if (!d)
            _exit(1);
        killed_plan(&m, d, &mk, pfd[1], &err);
        raise(SIGKILL);
        _exit(3);
    }
    close(pfd[1]);
    uint64_t mark = 0;
    bool got = read(pfd[0], &mark, sizeof mark) == (ssize_t)sizeof mark;
    close(pfd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    ok(got && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
       "killed: the child checkpointed, wrote on, died of SIGKILL");
    rng_state = seed; /* the child's draws */
    killed_plan(&m, NULL, NULL, -1, &err);
    model_resume(&m);
    struct diskfmt *d = diskfmt_resume(img, "qcow2", mark, &err);
    if (!ok(d != NULL, "killed: resumed at the child's mark"))
        diag("  %s", err.msg);
    check_content(d, &m, "killed: reads the checkpoint's data, the overwrites, zeros elsewhere");
    bool wok = d != NULL;
    for (uint64_t t = 30; t < 70 && wok; t += 4)
        wok = mwrite(&m, d, t * 2 * (uint64_t)MIB + 6000, 9000, false, false, &err) == 0;
    if (!ok(wok && diskfmt_close(d, &err) == 0, "killed: written, closed"))
        diag("  %s", err.msg);
    check_finished(img, &m, "killed");
}

/* ------------------------------------------------------------------ refusals */

/* Resuming @path at @mark must fail with @code and @sub in the message: 1 TAP result. */
static void expect_refused(const char *path, const char *fmt, uint64_t mark, int code,
                           const char *sub, const char *name)
{
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_resume(path, fmt, mark, &err);
    if (!ok(!d && err.code == code && strstr(err.msg, sub), "refused: %s", name))
        diag("  handle %p code %d message '%s', want %d '%s'", (void *)d, err.code, err.msg,
             code, sub);
    diskfmt_abandon(d);
}

static void test_refusals(void)
{
    const char *img = tpath("bad.qcow2");
    const uint32_t cs = 65536;
    struct model m = {.size = 100 * (uint64_t)MIB};
    struct p2v_err err = {0};
    struct diskfmt *d = create_qcow2(img, m.size, cs, &err);
    uint64_t mark = 0;
    bool wok = d && mwrite(&m, d, MIB, MIB, false, false, &err) == 0 &&
               diskfmt_checkpoint(d, &mark, &err) == 0;
    model_checkpoint(&m);
    wok = wok && mwrite(&m, d, 50 * (uint64_t)MIB, MIB, false, false, &err) == 0;
    if (!ok(wok, "refusals: an image written, checkpointed, written"))
        diag("  %s", err.msg);
    diskfmt_abandon(d);
    uint64_t size = fsize(img);
    expect_refused(img, "qcow2", mark + 512, EINVAL, "cannot resume at", "mark not aligned");
    expect_refused(img, "qcow2", (size + cs) & ~(uint64_t)(cs - 1), EINVAL,
                   "size of the file", "mark past the end of the file");
    expect_refused(img, "qcow2", 2 * (uint64_t)cs, EINVAL, "end of the metadata",
                   "mark inside the metadata");
    ok(fsize(img) == size, "refusals leave the file as it was");
    /* still resumable at the right mark, by probing */
    d = diskfmt_resume(img, NULL, mark, &err);
    if (!ok(d != NULL && strcmp(diskfmt_format(d), "qcow2") == 0,
            "refusals: then resumed (format probed)"))
        diag("  %s", err.msg);
    model_resume(&m);
    check_content(d, &m, "refusals: reads as expected");
    if (!ok(d && diskfmt_close(d, &err) == 0, "refusals: closed"))
        diag("  %s", err.msg);
    expect_refused(img, "qcow2", mark, EALREADY, "is complete", "a complete image of ours");

    /* read-only handles have no checkpoints */
    d = diskfmt_open(img, NULL, DISKFMT_RDONLY, &err);
    uint64_t mk = 0;
    ok(d && diskfmt_checkpoint(d, &mk, &err) < 0 && err.code == EBADF,
       "refused: a checkpoint of a read-only handle");
    diskfmt_close(d, NULL);

    if (have_qemu_img) {
        sh("qemu-img create -q -f qcow2 '%s' 100M", tpath("qemu.qcow2"));
        expect_refused(tpath("qemu.qcow2"), "qcow2", 5 * (uint64_t)cs, EINVAL,
                       "not an incomplete image written by p2vkit",
                       "an image qemu-img created");
    } else {
        ok(1, "refused: an image qemu-img created # SKIP qemu-img missing");
    }

    /* an L2 entry pointing into the metadata (patched): refused, naming the L1 entry */
    const char *dm = tpath("damaged.qcow2");
    struct model dmm = {.size = 8 * (uint64_t)MIB};
    d = create_qcow2(dm, dmm.size, cs, &err);
    wok = d && mwrite(&dmm, d, 0, 128 * KIB, false, false, &err) == 0 &&
          diskfmt_checkpoint(d, &mark, &err) == 0 &&
          mwrite(&dmm, d, MIB, 128 * KIB, false, false, &err) == 0;
    diskfmt_abandon(d);
    uint64_t t0 = disk_l1(dm, cs, 0), dsize = fsize(dm);
    wok = wok && t0 && dsize > mark &&
          patch_be64(dm, t0 + 8, (uint64_t)cs | QCOW2_OFLAG_COPIED) == 0;
    ok(wok, "refusals: an image damaged");
    expect_refused(dm, "qcow2", mark, EINVAL, "L1 entry 0", "an L2 entry into the metadata");
    ok(fsize(dm) == dsize && disk_l2(dm, cs, 0, 1) == cs,
       "refusals: the damaged image is left as it was");

    /* compressed writers */
    struct diskfmt_create_opts o = {.size = 8 * (uint64_t)MIB,
                                    .compress = DISKFMT_COMPRESS_ZLIB};
    uint8_t *buf = calloc(1, MIB);
    fill_text(buf, MIB);
    d = diskfmt_create(tpath("z.qcow2"), "qcow2", &o, &err);
    ok(d && diskfmt_pwrite(d, buf, MIB, 0, &err) == 0 &&
           diskfmt_checkpoint(d, &mk, &err) < 0 && err.code == ENOTSUP,
       "refused: a checkpoint of a compressed (zlib) writer");
    ok(d && diskfmt_flush(d, &err) == 0, "refusals: the zlib image flushed");
    diskfmt_abandon(d);
    expect_refused(tpath("z.qcow2"), "qcow2", 5 * (uint64_t)cs, EINVAL, "is compressed",
                   "an abandoned zlib image");
    o.compress = DISKFMT_COMPRESS_ZSTD;
    d = diskfmt_create(tpath("zs.qcow2"), "qcow2", &o, &err);
    ok(d && diskfmt_checkpoint(d, &mk, &err) < 0 && err.code == ENOTSUP,
       "refused: a checkpoint of a compressed (zstd) writer");
    diskfmt_abandon(d);
    expect_refused(tpath("zs.qcow2"), "qcow2", 5 * (uint64_t)cs, EINVAL,
                   "not an incomplete image written by p2vkit", "an abandoned zstd image");

    /* formats without checkpoints */
    o = (struct diskfmt_create_opts){.size = 8 * (uint64_t)MIB};
    d = diskfmt_create(tpath("v.vmdk"), "vmdk", &o, &err);
    ok(d && diskfmt_pwrite(d, buf, MIB, 0, &err) == 0 &&
           diskfmt_checkpoint(d, &mk, &err) < 0 && err.code == ENOTSUP,
       "refused: a checkpoint of a vmdk writer");
    diskfmt_abandon(d);
    expect_refused(tpath("v.vmdk"), "vmdk", 65536, ENOTSUP, "not supported",
                   "resuming a vmdk");
    expect_refused(tpath("nothing.qcow2"), "qcow2", 65536, ENOENT, "cannot open",
                   "a file that does not exist");
    free(buf);
}

/* ------------------------------------------------------------------ raw */

static void test_raw(void)
{
    const char *img = tpath("r.raw");
    struct model m = {.size = 8 * (uint64_t)MIB + 1000};
    struct p2v_err err = {0};
    struct diskfmt_create_opts o = {.size = m.size};
    struct diskfmt *d = diskfmt_create(img, "raw", &o, &err);
    uint64_t mark = 0;
    bool wok = d && mwrite(&m, d, 4096, MIB, false, false, &err) == 0 &&
               mwrite(&m, d, m.size - 10, 10, false, false, &err) == 0 &&
               diskfmt_checkpoint(d, &mark, &err) == 0;
    if (!ok(wok && mark == m.size, "raw: written, checkpoint at the virtual size"))
        diag("  %s", err.msg);
    diskfmt_abandon(d);
    expect_refused(img, "raw", mark + 1, EINVAL, "cannot resume at", "raw: another size");
    d = diskfmt_resume(img, "raw", mark, &err);
    if (!ok(d && diskfmt_size(d) == m.size, "raw: resumed"))
        diag("  %s", err.msg);
    check_content(d, &m, "raw: reads what was written");
    wok = d && mwrite(&m, d, 2 * (uint64_t)MIB, 3 * MIB, false, false, &err) == 0 &&
          mwrite(&m, d, 4096 + 100, 100, false, true, &err) == 0 &&
          diskfmt_close(d, &err) == 0;
    if (!ok(wok, "raw: written after the resume, closed"))
        diag("  %s", err.msg);
    ok(fsize(img) == m.size, "raw: the size is unchanged");
    d = diskfmt_open(img, "raw", DISKFMT_RDONLY, &err);
    check_content(d, &m, "raw: the file holds every write");
    diskfmt_close(d, NULL);
}

int main(void)
{
    have_qemu_img = sh("qemu-img --version >/dev/null 2>&1") == 0;
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/test-resume.XXXXXX", base);
    if (!mkdtemp(tmpdir))
        skip_all("cannot create a temporary folder");

    test_qcow2_64k();
    test_qcow2_evict();
    test_qcow2_twice();
    test_qcow2_killed();
    test_refusals();
    test_raw();

    return dftest_end();
}
