/* local.c: --output mode — one disk through the read pipeline (no compression, no hash)
 * into a new image file written by libdiskfmt. Chunks that read as zeros are not written
 * (a new image reads zeros), nor are zero blocks inside a chunk, so the image holds only
 * data. The image is built under a temporary name in the destination's folder
 * (".NAME.p2v-tmp-PID") and renamed into place once finished; a failure or a signal
 * removes it, so FILE is either the whole copy or untouched.
 *
 * Writers that can only append whole blocks (streamOptimized VMDK) get every block once,
 * in increasing order: pieces of a block that come from different chunks (a plan's
 * extents need not be block aligned) are assembled in one block-sized buffer, the gaps
 * filled with zeros (unplanned bytes read as zeros in the copy anyway).
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "diskfmt.h"

#define LOCAL_CHUNK (1u << 20)

/* The temporary image, removed by the signal handler (unlink is async-signal-safe). */
static char local_tmp[PATH_MAX];
static volatile sig_atomic_t local_tmp_active;

static void local_on_signal(int sig)
{
    if (local_tmp_active)
        unlink(local_tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void local_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = local_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

/* ------------------------------------------------------------------ the sink */

struct sink {
    struct diskfmt *df;
    uint64_t size;
    uint32_t grain;      /* unit of zero skipping and of assembly: a power of two */
    uint8_t *pend;       /* a block being assembled */
    uint64_t pend_off;
    bool pend_valid;
    uint64_t written;
};

static int sink_init(struct sink *s, struct diskfmt *df, uint64_t size, struct p2v_err *err)
{
    memset(s, 0, sizeof *s);
    s->df = df;
    s->size = size;
    uint32_t align = diskfmt_write_align(df), bs = diskfmt_block_size(df);
    uint32_t g = P2V_MAX(P2V_MAX(align, bs), 512u);
    if (!p2v_is_pow2(g) || g > (64u << 20))
        return p2v_err_set(err, EINVAL, "'%s': unusable block size %u", diskfmt_path(df), g);
    s->grain = g;
    s->pend = malloc(g);
    if (!s->pend)
        return p2v_err_set(err, ENOMEM, "out of memory");
    return 0;
}

static int sink_write(struct sink *s, const uint8_t *buf, uint64_t len, uint64_t off,
                      struct p2v_err *err)
{
    if (diskfmt_pwrite(s->df, buf, len, off, err) < 0)
        return -1;
    s->written += len;
    return 0;
}

static int sink_flush(struct sink *s, struct p2v_err *err)
{
    if (!s->pend_valid)
        return 0;
    s->pend_valid = false;
    uint64_t n = P2V_MIN((uint64_t)s->grain, s->size - s->pend_off);
    if (p2v_is_zero(s->pend, n))
        return 0;
    return sink_write(s, s->pend, n, s->pend_off, err);
}

/* Hand over @len bytes at @off; calls come in increasing, non-overlapping order. */
static int sink_put(struct sink *s, const uint8_t *data, uint64_t len, uint64_t off,
                    struct p2v_err *err)
{
    uint64_t pos = off, end = off + len, g = s->grain;
    while (pos < end) {
        uint64_t gstart = pos - pos % g;
        uint64_t gend = P2V_MIN(gstart + g, s->size);
        uint64_t n = P2V_MIN(end, gend) - pos;
        if (s->pend_valid && s->pend_off != gstart && sink_flush(s, err) < 0)
            return -1;
        if (!s->pend_valid && pos == gstart && pos + n == gend) {
            /* whole blocks straight from the chunk: a run of non-zero ones per write */
            const uint8_t *p = data + (pos - off);
            if (p2v_is_zero(p, n)) {
                pos += n;
                continue;
            }
            uint64_t run = gend;
            while (run < end) {
                uint64_t next = P2V_MIN(run + g, s->size);
                if (next > end || p2v_is_zero(data + (run - off), next - run))
                    break;
                run = next;
            }
            if (sink_write(s, p, run - pos, pos, err) < 0)
                return -1;
            pos = run;
            continue;
        }
        if (!s->pend_valid) {
            memset(s->pend, 0, g);
            s->pend_off = gstart;
            s->pend_valid = true;
        }
        memcpy(s->pend + (pos - gstart), data + (pos - off), n);
        pos += n;
        if (pos == gend && sink_flush(s, err) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ local mode */

static void local_extra(struct agent *a, struct p2v_json *j)
{
    p2v_json_kv_string(j, "output", a->o.output);
    p2v_json_kv_string(j, "format", a->o.format);
    if (a->o.subformat)
        p2v_json_kv_string(j, "subformat", a->o.subformat);
}

static int tmp_name(const char *output, char *out, size_t len, struct p2v_err *err)
{
    char a[PATH_MAX], b[PATH_MAX];
    if (strlen(output) >= sizeof a)
        return p2v_err_set(err, ENAMETOOLONG, "output name '%s' is too long", output);
    snprintf(a, sizeof a, "%s", output);
    snprintf(b, sizeof b, "%s", output);
    int n = snprintf(out, len, "%s/.%s.p2v-tmp-%ld", dirname(a), basename(b), (long)getpid());
    if (n < 0 || (size_t)n >= len)
        return p2v_err_set(err, ENAMETOOLONG, "output name '%s' is too long", output);
    return 0;
}

static void sync_dir_of(const char *path)
{
    char a[PATH_MAX];
    snprintf(a, sizeof a, "%s", path);
    int fd = open(dirname(a), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int agent_local(struct agent *a)
{
    struct agent_disk *d = &a->disks[0];
    const char *out = a->o.output;
    struct p2v_err err = {0};
    struct diskfmt *df = NULL;
    struct imager_pipeline *pl = NULL;
    struct sink sk = {0};
    int ret = AGENT_EXIT_FAIL;
    a->hash_name = "none";

    struct stat ost, dst;
    if (stat(out, &ost) == 0) {
        if (!S_ISREG(ost.st_mode))
            return agent_fail(a, AGENT_EXIT_FAIL, "output",
                              "output '%s' exists and is not a regular file", out);
        if (fstat(d->fd, &dst) == 0 && dst.st_dev == ost.st_dev && dst.st_ino == ost.st_ino)
            return agent_fail(a, AGENT_EXIT_FAIL, "output",
                              "output '%s' is the disk being captured", out);
    }
    if (tmp_name(out, local_tmp, sizeof local_tmp, &err) < 0)
        return agent_fail(a, AGENT_EXIT_FAIL, "output", "%s", err.msg);

    struct agent_event e;
    agent_event_begin(&e, "start");
    p2v_json_kv_string(&e.j, "mode", "local");
    p2v_json_kv_string(&e.j, "output", out);
    p2v_json_kv_string(&e.j, "format", a->o.format);
    p2v_json_kv_string(&e.j, "disk", d->path);
    p2v_json_kv_u64(&e.j, "size", d->info->size);
    p2v_json_kv_u64(&e.j, "bytes-planned", d->plan.bytes);
    agent_event_end(a, &e);

    local_signals();
    local_tmp_active = 1;
    struct diskfmt_create_opts co = {0};
    co.size = d->info->size;
    co.subformat = a->o.subformat;
    df = diskfmt_create(local_tmp, a->o.format, &co, &err);
    if (!df) {
        ret = agent_fail(a, AGENT_EXIT_FAIL, "output", "%s", err.msg);
        goto out;
    }
    if (sink_init(&sk, df, co.size, &err) < 0) {
        ret = agent_fail(a, AGENT_EXIT_FAIL, "output", "%s", err.msg);
        goto out;
    }

    struct imager_pipeline_opts po;
    agent_pipeline_opts(a, d, LOCAL_CHUNK, &po); /* no hash, no compression */
    pl = imager_pipeline_start(&po, &err);
    if (!pl) {
        ret = agent_fail(a, AGENT_EXIT_FAIL, "read", "%s", err.msg);
        goto out;
    }
    struct agent_progress pg;
    agent_progress_init(&pg, a, 0, d->info->name, d->plan.bytes, 0);
    uint64_t done = 0;
    for (;;) {
        struct imager_chunk c;
        int r = imager_pipeline_next(pl, &c, &err);
        if (r < 0) {
            agent_progress_finish(&pg, false);
            ret = err.code == EIO ? agent_fail(a, AGENT_EXIT_BADSECTOR, "bad-sector",
                                               "%s (--skip-bad-sectors reads such sectors "
                                               "as zeros)",
                                               err.msg)
                                  : agent_fail(a, AGENT_EXIT_FAIL, "read", "%s", err.msg);
            goto out;
        }
        if (r == 0)
            break;
        if (!c.zero && sink_put(&sk, c.data, c.len, c.off, &err) < 0) {
            agent_progress_finish(&pg, false);
            ret = agent_fail(a, AGENT_EXIT_FAIL, "write", "%s", err.msg);
            goto out;
        }
        done += c.len;
        agent_progress_update(&pg, done);
    }
    if (sink_flush(&sk, &err) < 0) {
        agent_progress_finish(&pg, false);
        ret = agent_fail(a, AGENT_EXIT_FAIL, "write", "%s", err.msg);
        goto out;
    }
    a->st.bytes_read = imager_pipeline_bytes_read(pl) - imager_pipeline_bytes_skipped(pl);
    a->st.bytes_written = sk.written;
    size_t nbad = 0;
    const uint64_t *bad = imager_pipeline_bad_sectors(pl, &nbad);
    agent_add_bad(a, 0, bad, nbad);
    imager_pipeline_free(pl);
    pl = NULL;

    struct diskfmt *closing = df;
    df = NULL;
    if (diskfmt_close(closing, &err) < 0) {
        agent_progress_finish(&pg, false);
        ret = agent_fail(a, AGENT_EXIT_FAIL, "write", "%s", err.msg);
        goto out;
    }
    if (rename(local_tmp, out) < 0) {
        agent_progress_finish(&pg, false);
        ret = agent_fail(a, AGENT_EXIT_FAIL, "write", "cannot rename '%s' to '%s': %s",
                         local_tmp, out, strerror(errno));
        goto out;
    }
    local_tmp_active = 0;
    sync_dir_of(out);
    agent_progress_finish(&pg, true);

    agent_event_begin(&e, "disk-done");
    p2v_json_kv_u64(&e.j, "disk", 0);
    agent_event_end(a, &e);
    if (a->nbad)
        p2v_warn("%zu unreadable sectors were read as zeros (listed in the report)", a->nbad);
    char s1[32], s2[32];
    p2v_info("wrote '%s' (%s): %s of %s read in %.1f s", out, a->o.format,
             p2v_format_size(a->st.bytes_read, s1, sizeof s1),
             p2v_format_size(d->info->size, s2, sizeof s2), p2v_now() - a->st.start);
    ret = agent_finish(a, NULL, local_extra);
out:
    imager_pipeline_free(pl);
    if (df)
        diskfmt_abandon(df);
    free(sk.pend);
    if (local_tmp_active) {
        unlink(local_tmp);
        local_tmp_active = 0;
    }
    return ret;
}
