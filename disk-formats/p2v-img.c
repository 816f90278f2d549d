/* p2v-img: inspect, convert, check and compare disk images through libdiskfmt, following
 * qemu-img's conventions wherever it has one (options, exit codes, messages).
 *
 * convert never leaves a half-written DST: it writes into a private folder beside DST and
 * renames the finished files into place (the descriptor last), so a convert that is
 * killed leaves at most that folder (".DST.p2v-img-XXXXXX"), never a DST that looks whole.
 * Reading and writing overlap: a reader thread fills a small ring of chunk buffers (memory
 * is bounded whatever the disk size) while the main thread writes.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfmt.h"
#include "p2v-common.h"

#define CHUNK_SIZE (4u << 20) /* bytes per read: large sequential I/O */
#define RING_SLOTS 4          /* chunks in flight: bounds memory to 16 MiB */

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-img [-v|-q] COMMAND [OPTIONS] ...\n"
            "\n"
            "commands:\n"
            "  info [-f FMT] [--json] FILE\n"
            "  convert [-f FMT] -O FMT [-o OPTIONS] [-c] [-p] [-t CACHE] [--json-progress] SRC DST\n"
            "  check [-f FMT] [--json] FILE\n"
            "  compare [-f FMT] [-F FMT] [-p] A B\n"
            "\n"
            "formats: raw, qcow2, vmdk, vhd (alias vpc), vhdx (read only)\n"
            "convert -o options (comma-separated):\n"
            "  subformat=monolithicSparse|streamOptimized|monolithicFlat   (vmdk)\n"
            "  subformat=fixed|dynamic                                     (vhd)\n"
            "  compression_type=zlib|zstd   (qcow2, with -c)\n"
            "  cluster_size=SIZE            (qcow2 cluster, vmdk grain)\n"
            "  adapter_type=ide|lsilogic|buslogic|pvscsi                   (vmdk)\n"
            "convert -t CACHE: writeback (default: data synced before the image is\n"
            "  marked complete) or unsafe (no sync, as qemu-img convert's default)\n"
            "\n"
            "exit status: info/convert 0 ok, 1 error; check 0 clean, 1 error, 2 corrupt,\n"
            "3 leaks only; compare 0 identical, 1 different, 2 error.\n"
            "See p2v-img(1).\n");
}

/* ------------------------------------------------------------------ info */

static int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"format", required_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL;
    bool json = false;
    int c;
    while ((c = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'j': json = true; break;
        case 'o':
            if (strcmp(optarg, "json") == 0)
                json = true;
            else if (strcmp(optarg, "human") != 0) {
                p2v_error("unknown output format '%s'", optarg);
                return 1;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind + 1 != argc) {
        p2v_error("info needs exactly one FILE");
        return 1;
    }
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(argv[optind], fmt, DISKFMT_ALLOW_DIRTY, &err);
    if (!d) {
        p2v_error("%s", err.msg);
        return 1;
    }
    struct p2v_buf out;
    p2v_buf_init(&out, 0);
    struct p2v_json j;
    p2v_json_init(&j, &out, true);
    p2v_json_object_begin(&j);
    int r = diskfmt_info(d, &j, &err);
    p2v_json_object_end(&j);
    uint64_t size = diskfmt_size(d);
    char fmt_name[16];
    snprintf(fmt_name, sizeof fmt_name, "%s", diskfmt_format(d));
    diskfmt_close(d, NULL);
    if (r < 0) {
        p2v_error("%s", err.msg);
        p2v_buf_release(&out);
        return 1;
    }
    if (json) {
        printf("%s\n", p2v_buf_cstr(&out));
    } else {
        struct stat st;
        char vs[32], ds[32];
        printf("image: %s\n", argv[optind]);
        printf("file format: %s\n", fmt_name);
        printf("virtual size: %s (%llu bytes)\n", p2v_format_size(size, vs, sizeof vs),
               (unsigned long long)size);
        if (stat(argv[optind], &st) == 0)
            printf("disk size: %s\n",
                   p2v_format_size((uint64_t)st.st_blocks * 512, ds, sizeof ds));
        /* everything the driver knows, as the JSON above without the outer braces */
        printf("details: %s\n", p2v_buf_cstr(&out));
    }
    p2v_buf_release(&out);
    return 0;
}

/* ------------------------------------------------------------------ convert */

/* One chunk travelling from the reader thread to the writer. */
struct chunk {
    uint64_t off;
    uint64_t len;
    bool zero; /* the whole run reads as zeros: nothing to write */
    uint8_t *buf;
};

struct pipeline {
    struct diskfmt *src;
    uint64_t size;
    uint32_t grain; /* zero detection granularity: the destination's block size */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct chunk ring[RING_SLOTS];
    unsigned head, tail; /* head: next to fill; tail: next to write */
    bool done, failed, stop;
    struct p2v_err err;
};

static void *reader_main(void *arg)
{
    struct pipeline *pl = arg;
    uint64_t off = 0;
    struct p2v_err err = {0};
    bool failed = false;

    while (off < pl->size) {
        uint64_t run;
        unsigned flags;
        uint64_t want = P2V_MIN((uint64_t)CHUNK_SIZE, pl->size - off);
        if (diskfmt_block_status(pl->src, off, want, &run, &flags, &err) < 0) {
            failed = true;
            break;
        }
        pthread_mutex_lock(&pl->lock);
        while (pl->head - pl->tail == RING_SLOTS && !pl->stop)
            pthread_cond_wait(&pl->cond, &pl->lock);
        bool stop = pl->stop;
        pthread_mutex_unlock(&pl->lock);
        if (stop)
            break;
        /* Chunks start and end on the destination's grain boundaries (all but the
         * last), so that formats that take whole clusters (compressed qcow2,
         * streamOptimized VMDK) see aligned writes. A run that ends inside a grain is
         * cut back to the boundary; one that does not even reach it is read up to the
         * boundary as data (zero-grain skipping in the writer still sees its zeros). */
        bool zero = (flags & DISKFMT_STATUS_ZERO) != 0;
        uint64_t end = off + run;
        if (end < pl->size && end % pl->grain) {
            uint64_t down = end - end % pl->grain;
            if (down > off) {
                end = down;
            } else {
                end = P2V_MIN(down + pl->grain, pl->size);
                zero = false;
            }
            run = end - off;
        }
        struct chunk *c = &pl->ring[pl->head % RING_SLOTS];
        c->off = off;
        c->len = run;
        c->zero = zero;
        if (!c->zero && diskfmt_pread(pl->src, c->buf, run, off, &err) < 0) {
            failed = true;
            break;
        }
        pthread_mutex_lock(&pl->lock);
        pl->head++;
        pthread_cond_broadcast(&pl->cond);
        pthread_mutex_unlock(&pl->lock);
        off += run;
    }
    pthread_mutex_lock(&pl->lock);
    pl->done = true;
    if (failed) {
        pl->failed = true;
        pl->err = err;
    }
    pthread_cond_broadcast(&pl->cond);
    pthread_mutex_unlock(&pl->lock);
    return NULL;
}

/* Write one chunk: data in runs, skipping grains that are all zero (a new image reads
 * zeros there already). */
static int write_chunk(struct diskfmt *dst, const struct chunk *c, uint32_t grain,
                       struct p2v_err *err)
{
    if (c->zero)
        return 0;
    return diskfmt_pwrite_data(dst, c->buf, c->len, c->off, grain, err);
}

static int run_pipeline(struct diskfmt *src, struct diskfmt *dst, struct p2v_progress *pg,
                        struct p2v_err *err)
{
    struct pipeline pl;
    memset(&pl, 0, sizeof pl);
    pl.src = src;
    pl.size = diskfmt_size(src);
    pl.grain = P2V_MAX(diskfmt_block_size(dst), diskfmt_write_align(dst));
    if (pl.grain == 0 || pl.grain > CHUNK_SIZE || CHUNK_SIZE % pl.grain)
        pl.grain = 4096;
    int r = -1;
    unsigned allocated = 0;
    for (; allocated < RING_SLOTS; allocated++) {
        pl.ring[allocated].buf = malloc(CHUNK_SIZE);
        if (!pl.ring[allocated].buf) {
            p2v_err_set(err, ENOMEM, "out of memory");
            goto out_free;
        }
    }
    pthread_mutex_init(&pl.lock, NULL);
    pthread_cond_init(&pl.cond, NULL);
    pthread_t tid;
    if (pthread_create(&tid, NULL, reader_main, &pl) != 0) {
        p2v_err_set(err, EAGAIN, "cannot start the reader thread");
        goto out_sync;
    }
    for (;;) {
        pthread_mutex_lock(&pl.lock);
        while (pl.head == pl.tail && !pl.done)
            pthread_cond_wait(&pl.cond, &pl.lock);
        bool empty = pl.head == pl.tail;
        pthread_mutex_unlock(&pl.lock);
        if (empty)
            break; /* reader finished (or failed) and everything is written */
        struct chunk *c = &pl.ring[pl.tail % RING_SLOTS];
        if (write_chunk(dst, c, pl.grain, err) < 0) {
            pthread_mutex_lock(&pl.lock);
            pl.stop = true;
            pthread_cond_broadcast(&pl.cond);
            pthread_mutex_unlock(&pl.lock);
            pthread_join(tid, NULL);
            goto out_sync;
        }
        if (pg)
            p2v_progress_update(pg, c->off + c->len);
        pthread_mutex_lock(&pl.lock);
        pl.tail++;
        pthread_cond_broadcast(&pl.cond);
        pthread_mutex_unlock(&pl.lock);
    }
    pthread_join(tid, NULL);
    if (pl.failed) {
        *err = pl.err;
        goto out_sync;
    }
    r = 0;
out_sync:
    pthread_cond_destroy(&pl.cond);
    pthread_mutex_destroy(&pl.lock);
out_free:
    for (unsigned i = 0; i < allocated; i++)
        free(pl.ring[i].buf);
    return r;
}

/* Parse "-o key=value,key=value" into create options. Strings point into @s. */
static int parse_create_opts(char *s, struct diskfmt_create_opts *o, struct p2v_err *err)
{
    char *save = NULL;
    for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq)
            return p2v_err_set(err, EINVAL, "option '%s' needs a value (key=value)", tok);
        *eq = '\0';
        const char *k = tok, *v = eq + 1;
        if (strcmp(k, "subformat") == 0) {
            o->subformat = v;
        } else if (strcmp(k, "adapter_type") == 0) {
            o->adapter_type = v;
        } else if (strcmp(k, "compression_type") == 0) {
            if (strcmp(v, "zlib") == 0)
                o->compress = DISKFMT_COMPRESS_ZLIB;
            else if (strcmp(v, "zstd") == 0)
                o->compress = DISKFMT_COMPRESS_ZSTD;
            else
                return p2v_err_set(err, EINVAL, "unknown compression_type '%s'", v);
        } else if (strcmp(k, "cluster_size") == 0 || strcmp(k, "grain_size") == 0) {
            uint64_t cs;
            if (p2v_parse_size(v, &cs, err) < 0)
                return -1;
            if (!p2v_is_pow2(cs) || cs < 512 || cs > (2u << 20))
                return p2v_err_set(err, EINVAL,
                                   "cluster_size %s is not a power of two from 512 to 2M", v);
            o->cluster_size = (uint32_t)cs;
        } else {
            return p2v_err_set(err, EINVAL, "unknown option '%s'", k);
        }
    }
    return 0;
}

/* "a/b" into @out; fails rather than truncating a path. */
static int join_path(char *out, size_t len, const char *a, const char *b,
                     struct p2v_err *err)
{
    int n = snprintf(out, len, "%s/%s", a, b);
    if (n < 0 || (size_t)n >= len)
        return p2v_err_set(err, ENAMETOOLONG, "path '%s/%s' is too long", a, b);
    return 0;
}

/* The private folder beside DST that receives the new image. */
static int make_staging(const char *dst, char *dir, size_t dirlen, char *file,
                        size_t filelen, struct p2v_err *err)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", dst);
    char *slash = strrchr(copy, '/');
    const char *parent = ".", *base = copy;
    if (slash) {
        *slash = '\0';
        parent = copy[0] ? copy : "/";
        base = slash + 1;
    }
    if (!*base)
        return p2v_err_set(err, EINVAL, "'%s' is not a file name", dst);
    int n = snprintf(dir, dirlen, "%s/.%s.p2v-img-XXXXXX", parent, base);
    if (n < 0 || (size_t)n >= dirlen)
        return p2v_err_set(err, ENAMETOOLONG, "'%s': name too long", dst);
    if (!mkdtemp(dir))
        return p2v_err_errno(err, "cannot create a folder beside '%s'", dst);
    return join_path(file, filelen, dir, base, err);
}

/* Move every file of the staging folder to DST's folder, the one named like DST last
 * (for VMDK descriptors: extents before the descriptor that names them). */
static int publish_staging(const char *dir, const char *dst, struct p2v_err *err)
{
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", dst);
    char *slash = strrchr(parent, '/');
    const char *base = dst;
    if (slash) {
        *slash = '\0';
        base = dst + (slash - parent) + 1;
        if (!parent[0])
            snprintf(parent, sizeof parent, "/");
    } else {
        snprintf(parent, sizeof parent, ".");
    }
    DIR *dh = opendir(dir);
    if (!dh)
        return p2v_err_errno(err, "cannot read '%s'", dir);
    int r = 0;
    struct dirent *de;
    while ((de = readdir(dh))) {
        if (de->d_name[0] == '.' || strcmp(de->d_name, base) == 0)
            continue;
        char from[PATH_MAX], to[PATH_MAX];
        if (join_path(from, sizeof from, dir, de->d_name, err) < 0 ||
            join_path(to, sizeof to, parent, de->d_name, err) < 0) {
            r = -1;
            break;
        }
        if (rename(from, to) < 0) {
            r = p2v_err_errno(err, "cannot rename '%s' to '%s'", from, to);
            break;
        }
    }
    closedir(dh);
    if (r == 0) {
        char from[PATH_MAX];
        if (join_path(from, sizeof from, dir, base, err) < 0)
            r = -1;
        else if (rename(from, dst) < 0)
            r = p2v_err_errno(err, "cannot rename '%s' to '%s'", from, dst);
    }
    if (r == 0 && rmdir(dir) < 0)
        r = p2v_err_errno(err, "cannot remove '%s'", dir);
    return r;
}

static void remove_staging(const char *dir)
{
    DIR *dh = opendir(dir);
    if (!dh)
        return;
    struct dirent *de;
    while ((de = readdir(dh))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char p[PATH_MAX];
        if (join_path(p, sizeof p, dir, de->d_name, NULL) == 0)
            unlink(p);
    }
    closedir(dh);
    rmdir(dir);
}

static int cmd_convert(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json-progress", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *src_fmt = NULL, *dst_fmt = NULL;
    char *o_arg = NULL;
    bool compress = false, progress = false, json_progress = false;
    int c;
    while ((c = getopt_long(argc, argv, "f:O:o:cpnt:h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            /* qemu-img's cache modes, reduced to what they mean for a finished image */
            if (!strcmp(optarg, "unsafe")) {
                diskfmt_set_sync(false);
            } else if (!strcmp(optarg, "writeback") || !strcmp(optarg, "none") ||
                       !strcmp(optarg, "writethrough") || !strcmp(optarg, "directsync")) {
                diskfmt_set_sync(true);
            } else {
                p2v_error("unknown cache mode '%s' (writeback or unsafe)", optarg);
                return 1;
            }
            break;
        case 'f': src_fmt = optarg; break;
        case 'O': dst_fmt = optarg; break;
        case 'o': o_arg = optarg; break;
        case 'c': compress = true; break;
        case 'p': progress = true; break;
        case 'n': break; /* qemu-img's "no create": we always create; accepted, ignored */
        case 'J': json_progress = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind + 2 != argc || !dst_fmt) {
        p2v_error("convert needs -O FMT, SRC and DST");
        return 1;
    }
    const char *srcp = argv[optind], *dstp = argv[optind + 1];
    struct p2v_err err = {0};
    struct diskfmt_create_opts co = {0};
    if (o_arg && parse_create_opts(o_arg, &co, &err) < 0) {
        p2v_error("%s", err.msg);
        return 1;
    }
    if (compress && co.compress == DISKFMT_COMPRESS_NONE)
        co.compress = DISKFMT_COMPRESS_ZLIB;
    if (!compress && co.compress != DISKFMT_COMPRESS_NONE && strcmp(dst_fmt, "qcow2") == 0)
        compress = true; /* compression_type= alone implies -c */
    if (!compress)
        co.compress = DISKFMT_COMPRESS_NONE;

    struct diskfmt *src = diskfmt_open(srcp, src_fmt, DISKFMT_RDONLY, &err);
    if (!src) {
        p2v_error("%s", err.msg);
        return 1;
    }
    co.size = diskfmt_size(src);

    /* A block device is written in place; a file goes through the staging folder. */
    struct stat st;
    bool blockdev = stat(dstp, &st) == 0 && S_ISBLK(st.st_mode);
    char dir[PATH_MAX] = "", file[PATH_MAX];
    const char *target = dstp;
    if (!blockdev) {
        if (make_staging(dstp, dir, sizeof dir, file, sizeof file, &err) < 0) {
            p2v_error("%s", err.msg);
            diskfmt_close(src, NULL);
            return 1;
        }
        target = file;
    }
    int ret = 1;
    struct diskfmt *dst = diskfmt_create(target, dst_fmt, &co, &err);
    if (!dst) {
        p2v_error("%s", err.msg);
        goto out;
    }
    struct p2v_progress pg;
    p2v_progress_init(&pg,
                      json_progress ? P2V_PROGRESS_JSON
                      : progress    ? P2V_PROGRESS_AUTO
                                    : P2V_PROGRESS_NONE,
                      json_progress ? stdout : stderr, "convert", co.size);
    if (run_pipeline(src, dst, &pg, &err) < 0) {
        p2v_error("%s", err.msg);
        diskfmt_abandon(dst);
        goto out;
    }
    if (diskfmt_close(dst, &err) < 0) {
        p2v_error("%s", err.msg);
        goto out;
    }
    p2v_progress_finish(&pg, true);
    if (!blockdev && publish_staging(dir, dstp, &err) < 0) {
        p2v_error("%s", err.msg);
        goto out;
    }
    dir[0] = '\0';
    ret = 0;
out:
    if (dir[0])
        remove_staging(dir);
    diskfmt_close(src, NULL);
    return ret;
}

/* ------------------------------------------------------------------ check */

static int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {
        {"format", required_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL;
    bool json = false;
    int c;
    while ((c = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'j': json = true; break;
        case 'o': json = strcmp(optarg, "json") == 0; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind + 1 != argc) {
        p2v_error("check needs exactly one FILE");
        return 1;
    }
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(argv[optind], fmt, DISKFMT_RDONLY, &err);
    if (!d) {
        p2v_error("%s", err.msg);
        return 1;
    }
    struct diskfmt_check res;
    int r = diskfmt_check(d, &res, &err);
    char fmt_name[16];
    snprintf(fmt_name, sizeof fmt_name, "%s", diskfmt_format(d));
    diskfmt_close(d, NULL);
    if (r < 0) {
        p2v_error("%s", err.msg);
        return 1;
    }
    if (json) {
        struct p2v_buf out;
        struct p2v_json j;
        p2v_buf_init(&out, 0);
        p2v_json_init(&j, &out, true);
        p2v_json_object_begin(&j);
        p2v_json_kv_string(&j, "filename", argv[optind]);
        p2v_json_kv_string(&j, "format", fmt_name);
        p2v_json_kv_u64(&j, "corruptions", res.errors);
        p2v_json_kv_u64(&j, "leaks", res.leaks);
        p2v_json_kv_u64(&j, "allocated-bytes", res.allocated);
        if (res.errors)
            p2v_json_kv_string(&j, "first-error", res.first_error);
        p2v_json_object_end(&j);
        printf("%s\n", p2v_buf_cstr(&out));
        p2v_buf_release(&out);
    } else if (res.errors) {
        printf("%llu errors were found on the image; the first: %s\n",
               (unsigned long long)res.errors, res.first_error);
    } else if (res.leaks) {
        printf("%llu leaked clusters were found on the image.\n"
               "This means waste of disk space, but no harm to data.\n",
               (unsigned long long)res.leaks);
    } else {
        printf("No errors were found on the image.\n");
    }
    return res.errors ? 2 : res.leaks ? 3 : 0;
}

/* ------------------------------------------------------------------ compare */

static int cmd_compare(int argc, char **argv)
{
    const char *fa = NULL, *fb = NULL;
    bool progress = false;
    int c;
    while ((c = getopt(argc, argv, "f:F:psh")) != -1) {
        switch (c) {
        case 'f': fa = optarg; break;
        case 'F': fb = optarg; break;
        case 'p': progress = true; break;
        case 's': break; /* qemu-img's strict mode: sizes are always reported */
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind + 2 != argc) {
        p2v_error("compare needs two images");
        return 2;
    }
    if (!fb)
        fb = fa;
    struct p2v_err err = {0};
    struct diskfmt *a = diskfmt_open(argv[optind], fa, DISKFMT_RDONLY, &err);
    if (!a) {
        p2v_error("%s", err.msg);
        return 2;
    }
    struct diskfmt *b = diskfmt_open(argv[optind + 1], fb, DISKFMT_RDONLY, &err);
    if (!b) {
        p2v_error("%s", err.msg);
        diskfmt_close(a, NULL);
        return 2;
    }
    uint64_t sa = diskfmt_size(a), sb = diskfmt_size(b);
    uint64_t common = P2V_MIN(sa, sb);
    if (sa != sb)
        printf("Warning: Image size mismatch!\n");
    uint8_t *ba = malloc(CHUNK_SIZE), *bb = malloc(CHUNK_SIZE);
    int ret = 2;
    struct p2v_progress pg;
    p2v_progress_init(&pg, progress ? P2V_PROGRESS_AUTO : P2V_PROGRESS_NONE, stderr,
                      "compare", P2V_MAX(sa, sb));
    if (!ba || !bb) {
        p2v_error("out of memory");
        goto out;
    }
    /* Walk both images by block status: runs that read as zeros on both sides are
     * equal without reading; a longer image's tail must read as zeros. */
    for (uint64_t off = 0; off < P2V_MAX(sa, sb);) {
        struct diskfmt *only = NULL;
        uint64_t limit = P2V_MIN((uint64_t)CHUNK_SIZE, P2V_MAX(sa, sb) - off);
        if (off >= common)
            only = sa > sb ? a : b;
        else
            limit = P2V_MIN(limit, common - off);
        uint64_t ra, rb;
        unsigned fa_, fb_;
        if (only) {
            if (diskfmt_block_status(only, off, limit, &ra, &fa_, &err) < 0)
                goto err;
            if (!(fa_ & DISKFMT_STATUS_ZERO)) {
                if (diskfmt_pread(only, ba, ra, off, &err) < 0)
                    goto err;
                for (uint64_t i = 0; i < ra; i++)
                    if (ba[i]) {
                        printf("Content mismatch at offset %llu!\n",
                               (unsigned long long)(off + i));
                        ret = 1;
                        goto out;
                    }
            }
            off += ra;
            continue;
        }
        if (diskfmt_block_status(a, off, limit, &ra, &fa_, &err) < 0 ||
            diskfmt_block_status(b, off, limit, &rb, &fb_, &err) < 0)
            goto err;
        uint64_t n = P2V_MIN(ra, rb);
        bool za = fa_ & DISKFMT_STATUS_ZERO, zb = fb_ & DISKFMT_STATUS_ZERO;
        if (!(za && zb)) {
            if ((!za && diskfmt_pread(a, ba, n, off, &err) < 0) ||
                (!zb && diskfmt_pread(b, bb, n, off, &err) < 0))
                goto err;
            if (za)
                memset(ba, 0, n);
            if (zb)
                memset(bb, 0, n);
            if (memcmp(ba, bb, n) != 0) {
                uint64_t i = 0;
                while (ba[i] == bb[i])
                    i++;
                printf("Content mismatch at offset %llu!\n", (unsigned long long)(off + i));
                ret = 1;
                goto out;
            }
        }
        off += n;
        p2v_progress_update(&pg, off);
    }
    p2v_progress_finish(&pg, true);
    printf("Images are identical.\n");
    ret = 0;
    goto out;
err:
    p2v_error("%s", err.msg);
    ret = 2;
out:
    free(ba);
    free(bb);
    diskfmt_close(a, NULL);
    diskfmt_close(b, NULL);
    return ret;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    p2v_log_init("p2v-img");
    int verbose = 0, quiet = 0, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0)
            verbose++;
        else if (strcmp(argv[i], "-q") == 0 || strcmp(argv[i], "--quiet") == 0)
            quiet++;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("p2v-img (p2vkit) %s\n", PACKAGE_VERSION);
            return 0;
        } else {
            p2v_error("unknown option '%s'", argv[i]);
            usage(stderr);
            return 1;
        }
    }
    p2v_log_adjust(verbose, quiet);
    if (i >= argc) {
        usage(stderr);
        return 1;
    }
    /* A closed pipe on stdout must not kill us mid-write without a message. */
    signal(SIGPIPE, SIG_IGN);
    const char *cmd = argv[i];
    argc -= i;
    argv += i;
    optind = 1;
    if (strcmp(cmd, "info") == 0)
        return cmd_info(argc, argv);
    if (strcmp(cmd, "convert") == 0)
        return cmd_convert(argc, argv);
    if (strcmp(cmd, "check") == 0)
        return cmd_check(argc, argv);
    if (strcmp(cmd, "compare") == 0)
        return cmd_compare(argc, argv);
    p2v_error("unknown command '%s'", cmd);
    usage(stderr);
    return 1;
}
