/* p2v-agent: capture a machine's disks — stream them over TLS to p2v-server, or write one
 * into a local image file — and describe the machine (--facts) or the capture plan
 * (--plan). This file owns the command line, its checks (usage errors exit 2 before
 * anything is opened) and the opening, discovery and planning of the disks; the modes
 * live in remote.c, local.c and facts.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "p2v-proto.h"
#include "p2v-tls.h"

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-agent --server HOST:PORT --fingerprint SHA256:... --token TOKEN\n"
            "                 [--disk DEV]... [--name NAME] [--all-blocks]\n"
            "                 [--skip-bad-sectors] [--retry-time SECS] [--max-rate RATE]\n"
            "                 [--compress-level auto|N]\n"
            "                 [--hash auto|sha256|blake2b] [--threads N]\n"
            "                 [--progress auto|bar|lines|json|none] [--json] [--report FILE]\n"
            "                 [--live [--continuous SECS] [--freeze-timeout SECS]\n"
            "                 [--max-passes N] [--snapshot MODE]] [--force] [-v] [-q]\n"
            "       p2v-agent --output FILE [--format qcow2|vmdk|raw] [--subformat SUB]\n"
            "                 --disk DEV [--all-blocks] [--skip-bad-sectors] [--threads N]\n"
            "                 [--progress MODE] [--json] [--report FILE]\n"
            "       p2v-agent --facts [--disk DEV]...\n"
            "       p2v-agent --plan [--all-blocks] [--disk DEV]...\n"
            "\n"
            "Capture this machine's disks (default: every local disk) and stream them over\n"
            "TLS 1.3 to p2v-server, pinning the server's certificate fingerprint, or write\n"
            "one disk into a local image file (--output). Only blocks that file systems use\n"
            "are read (ext2/3/4, NTFS, swap headers) unless --all-blocks is given.\n"
            "\n"
            "  --server HOST:PORT      the p2v-server to send to\n"
            "  --fingerprint FP        the server certificate's SHA-256 fingerprint\n"
            "  --token TOKEN           the store's join token (--token-file FILE reads it)\n"
            "  --disk DEV              a disk or image file to capture (repeatable)\n"
            "  --name NAME             the machine name (default: the host name)\n"
            "  --all-blocks            read every block (a byte-identical copy)\n"
            "  --skip-bad-sectors      read unreadable sectors as zeros and list them\n"
            "  --retry-time SECS       give up after SECS without progress (default 600)\n"
            "  --max-rate RATE         send at most RATE bytes per second (e.g. 40M)\n"
            "  --compress-level L      auto (default): adapt the zstd level to the bottleneck,\n"
            "                          from none (CPU-bound) to 3 (link-bound, --max-rate);\n"
            "                          starting at 1 (at none for a server on loopback);\n"
            "                          or a fixed level: 1..19, 0 = none, -1.. = zstd's fast\n"
            "                          levels\n"
            "  --hash ALGO             chunk hash: auto (the faster here), sha256, blake2b\n"
            "  --threads N             hash/compress workers (default: the CPUs)\n"
            "  --output FILE           write the disk into FILE instead of to a server\n"
            "  --format FMT            qcow2 (default), vmdk or raw, with --output\n"
            "  --subformat SUB         vmdk: monolithicSparse (default) or streamOptimized\n"
            "  --live                  capture a running machine: copy while it runs, then\n"
            "                          delta passes of what changed, then freeze its file\n"
            "                          systems briefly (FIFREEZE) for the last delta\n"
            "  --continuous SECS       with --live: a delta pass every SECS seconds until\n"
            "                          'p2v-server cutover JOB', SIGUSR1 or typing 'cutover'\n"
            "                          asks for the cutover\n"
            "  --freeze-timeout SECS   the watchdog thaws after SECS (default 10)\n"
            "  --max-passes N          delta passes before the cutover at most (default 8)\n"
            "  --snapshot MODE         with --live, at the cutover: auto (an LVM snapshot\n"
            "                          when one LVM volume is mounted writable, else\n"
            "                          freeze), lvm (a snapshot of each LVM volume), none\n"
            "                          (freeze only)\n"
            "  --force                 capture mounted writable file systems without --live\n"
            "                          (the copy is crash-inconsistent)\n"
            "  --facts                 print the machine's facts as JSON and exit\n"
            "  --plan                  print the disks' discovery and plan as JSON and exit\n"
            "  --progress MODE         auto (bar on a TTY), bar, lines, json, none\n"
            "  --json                  one JSON event per line on stdout\n"
            "  --report FILE           write the final event (statistics) to FILE\n"
            "  -v, -q                  more or less logging\n"
            "\n"
            "exit status: 0 ok; 1 failure (I/O, gave up retrying); 2 usage; 3 refused (wrong\n"
            "token, fingerprint mismatch, other fatal server error); 4 unreadable sectors.\n"
            "See p2v-agent(1).\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p2v_error("%s", msg);
    fprintf(stderr, "Try 'p2v-agent --help'.\n");
    return AGENT_EXIT_USAGE;
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

/* A fixed zstd level: 0, 1..19, or a negative fast level zstd knows. */
static int parse_level(const char *s, int *out)
{
    char *end;
    if (!s || !*s || *s == '+')
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v > 19 || v < INT_MIN || !imager_zstd_level_ok((int)v))
        return -1;
    *out = (int)v;
    return 0;
}

static bool token_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > P2V_PROTO_TOKEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (t[i] < 0x20 || t[i] > 0x7e)
            return false;
    return true;
}

static int read_token_file(const char *path, char *out, size_t len)
{
    FILE *fp = fopen(path, "re");
    if (!fp)
        return usage_error("cannot read the token file '%s': %s", path, strerror(errno));
    char line[512];
    bool got = fgets(line, sizeof line, fp) != NULL;
    fclose(fp);
    if (!got)
        return usage_error("the token file '%s' is empty", path);
    line[strcspn(line, "\r\n")] = '\0';
    if (strlen(line) >= len)
        return usage_error("the token in '%s' is too long", path);
    snprintf(out, len, "%s", line);
    return 0;
}

enum {
    OPT_SERVER = 256,
    OPT_FINGERPRINT,
    OPT_TOKEN,
    OPT_TOKEN_FILE,
    OPT_DISK,
    OPT_NAME,
    OPT_ALL_BLOCKS,
    OPT_SKIP_BAD,
    OPT_RETRY_TIME,
    OPT_MAX_RATE,
    OPT_COMPRESS,
    OPT_HASH,
    OPT_THREADS,
    OPT_PROGRESS,
    OPT_JSON,
    OPT_REPORT,
    OPT_OUTPUT,
    OPT_FORMAT,
    OPT_SUBFORMAT,
    OPT_FACTS,
    OPT_PLAN,
    OPT_VERSION,
    OPT_LIVE,
    OPT_CONTINUOUS,
    OPT_FREEZE_TIMEOUT,
    OPT_MAX_PASSES,
    OPT_SNAPSHOT,
    OPT_FORCE,
};

/* Parse the command line into @o. 0, or an exit code (AGENT_EXIT_USAGE; -1 for a
 * successful --help / --version). */
static int parse_args(int argc, char **argv, struct agent_opts *o)
{
    static const struct option opts[] = {
        {"server", required_argument, NULL, OPT_SERVER},
        {"fingerprint", required_argument, NULL, OPT_FINGERPRINT},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
        {"disk", required_argument, NULL, OPT_DISK},
        {"name", required_argument, NULL, OPT_NAME},
        {"all-blocks", no_argument, NULL, OPT_ALL_BLOCKS},
        {"skip-bad-sectors", no_argument, NULL, OPT_SKIP_BAD},
        {"retry-time", required_argument, NULL, OPT_RETRY_TIME},
        {"max-rate", required_argument, NULL, OPT_MAX_RATE},
        {"compress-level", required_argument, NULL, OPT_COMPRESS},
        {"hash", required_argument, NULL, OPT_HASH},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"progress", required_argument, NULL, OPT_PROGRESS},
        {"json", no_argument, NULL, OPT_JSON},
        {"report", required_argument, NULL, OPT_REPORT},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"subformat", required_argument, NULL, OPT_SUBFORMAT},
        {"facts", no_argument, NULL, OPT_FACTS},
        {"plan", no_argument, NULL, OPT_PLAN},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {"live", no_argument, NULL, OPT_LIVE},
        {"continuous", required_argument, NULL, OPT_CONTINUOUS},
        {"freeze-timeout", required_argument, NULL, OPT_FREEZE_TIMEOUT},
        {"max-passes", required_argument, NULL, OPT_MAX_PASSES},
        {"snapshot", required_argument, NULL, OPT_SNAPSHOT},
        {"force", no_argument, NULL, OPT_FORCE},
        {NULL, 0, NULL, 0},
    };
    const char *fingerprint = NULL, *token = NULL, *token_file = NULL, *name = NULL;
    const char *progress = NULL;
    bool facts = false, plan = false, progress_given = false;
    int verbose = 0, quiet = 0, c;
    unsigned long v;

    o->retry_time = 600;
    o->compress_level = AGENT_ADAPT_START;
    o->compress_auto = true;
    o->hash = "auto";
    o->format = "qcow2";
    o->progress = P2V_PROGRESS_AUTO;
    o->freeze_timeout = 10;
    o->max_passes = 8;
    bool live_opts = false;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":vqh", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SERVER: o->server = optarg; break;
        case OPT_FINGERPRINT: fingerprint = optarg; break;
        case OPT_TOKEN: token = optarg; break;
        case OPT_TOKEN_FILE: token_file = optarg; break;
        case OPT_DISK:
            if (o->ndisks >= AGENT_DISKS_MAX)
                return usage_error("too many --disk options (at most %d disks per job)",
                                   AGENT_DISKS_MAX);
            if (!*optarg)
                return usage_error("--disk needs a path");
            o->disks[o->ndisks++] = optarg;
            break;
        case OPT_NAME: name = optarg; break;
        case OPT_ALL_BLOCKS: o->all_blocks = true; break;
        case OPT_SKIP_BAD: o->skip_bad_sectors = true; break;
        case OPT_RETRY_TIME:
            if (parse_uint(optarg, 7 * 86400, &v) < 0)
                return usage_error("invalid --retry-time '%s' (seconds, 0..604800)", optarg);
            o->retry_time = (unsigned)v;
            break;
        case OPT_MAX_RATE: {
            struct p2v_err perr = {0};
            if (p2v_parse_size(optarg, &o->max_rate, &perr) < 0 || o->max_rate == 0)
                return usage_error("invalid --max-rate '%s' (bytes per second, e.g. 40M)",
                                   optarg);
            break;
        }
        case OPT_COMPRESS:
            if (strcmp(optarg, "auto") == 0) {
                o->compress_level = AGENT_ADAPT_START;
                o->compress_auto = true;
                break;
            }
            if (parse_level(optarg, &o->compress_level) < 0)
                return usage_error("invalid --compress-level '%s' (auto, 0 = none, 1..19, or "
                                   "a fast level -1..%d)",
                                   optarg, imager_zstd_min_level());
            o->compress_auto = false;
            break;
        case OPT_HASH:
            if (strcmp(optarg, "auto") && strcmp(optarg, "sha256") && strcmp(optarg, "blake2b"))
                return usage_error("invalid --hash '%s' (auto, sha256 or blake2b)", optarg);
            o->hash = optarg;
            break;
        case OPT_THREADS:
            if (parse_uint(optarg, 256, &v) < 0)
                return usage_error("invalid --threads '%s' (0..256, 0 = the CPUs)", optarg);
            o->threads = (int)v;
            break;
        case OPT_PROGRESS: progress = optarg; progress_given = true; break;
        case OPT_JSON: o->json = true; break;
        case OPT_REPORT:
            if (!*optarg)
                return usage_error("--report needs a file name");
            o->report = optarg;
            break;
        case OPT_OUTPUT:
            if (!*optarg)
                return usage_error("--output needs a file name");
            o->output = optarg;
            break;
        case OPT_FORMAT: o->format = optarg; break;
        case OPT_SUBFORMAT: o->subformat = optarg; break;
        case OPT_FACTS: facts = true; break;
        case OPT_PLAN: plan = true; break;
        case OPT_LIVE: o->live = true; break;
        case OPT_CONTINUOUS:
            if (parse_uint(optarg, 86400, &v) < 0 || v == 0)
                return usage_error("invalid --continuous '%s' (seconds, 1..86400)", optarg);
            o->continuous = (unsigned)v;
            live_opts = true;
            break;
        case OPT_FREEZE_TIMEOUT:
            if (parse_uint(optarg, 600, &v) < 0 || v == 0)
                return usage_error("invalid --freeze-timeout '%s' (seconds, 1..600)", optarg);
            o->freeze_timeout = (double)v;
            live_opts = true;
            break;
        case OPT_MAX_PASSES:
            if (parse_uint(optarg, 1000, &v) < 0)
                return usage_error("invalid --max-passes '%s' (0..1000)", optarg);
            o->max_passes = (unsigned)v;
            live_opts = true;
            break;
        case OPT_SNAPSHOT:
            if (strcmp(optarg, "auto") == 0)
                o->snapshot = AGENT_SNAPSHOT_AUTO;
            else if (strcmp(optarg, "lvm") == 0)
                o->snapshot = AGENT_SNAPSHOT_LVM;
            else if (strcmp(optarg, "none") == 0)
                o->snapshot = AGENT_SNAPSHOT_NONE;
            else
                return usage_error("invalid --snapshot '%s' (auto, lvm or none)", optarg);
            live_opts = true;
            break;
        case OPT_FORCE: o->force = true; break;
        case 'v': verbose++; break;
        case 'q': quiet++; break;
        case 'h': usage(stdout); return -1;
        case OPT_VERSION: printf("p2v-agent (p2vkit) %s\n", PACKAGE_VERSION); return -1;
        case ':': return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            if (optopt)
                return usage_error("unknown option '-%c'", optopt);
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s' (disks are given with --disk)",
                           argv[optind]);
    p2v_log_adjust(verbose, quiet);

    int modes = (o->server != NULL) + (o->output != NULL) + facts + plan;
    if (modes == 0)
        return usage_error("say what to do: --server, --output, --facts or --plan");
    if (modes > 1)
        return usage_error("--server, --output, --facts and --plan exclude each other");
    o->mode = o->server ? AGENT_MODE_REMOTE
              : o->output ? AGENT_MODE_LOCAL
              : facts    ? AGENT_MODE_FACTS
                         : AGENT_MODE_PLAN;

    if (progress) {
        static const struct {
            const char *name;
            enum p2v_progress_mode mode;
        } modes_tab[] = {
            {"auto", P2V_PROGRESS_AUTO}, {"bar", P2V_PROGRESS_BAR},
            {"lines", P2V_PROGRESS_LINES}, {"json", P2V_PROGRESS_JSON},
            {"none", P2V_PROGRESS_NONE},
        };
        size_t i = 0;
        while (i < P2V_ARRAY_SIZE(modes_tab) && strcmp(modes_tab[i].name, progress))
            i++;
        if (i == P2V_ARRAY_SIZE(modes_tab))
            return usage_error("invalid --progress '%s' (auto, bar, lines, json or none)",
                               progress);
        o->progress = modes_tab[i].mode;
    }
    if (!progress_given && quiet > 0)
        o->progress = P2V_PROGRESS_NONE;
    if (o->json)
        o->progress = P2V_PROGRESS_NONE; /* events carry the progress */

    if (o->mode == AGENT_MODE_REMOTE) {
        if (!fingerprint)
            return usage_error("--server needs --fingerprint (printed by 'p2v-server init')");
        struct p2v_err err = {0};
        if (p2v_tls_parse_fingerprint(fingerprint, o->fingerprint, &err) < 0)
            return usage_error("invalid --fingerprint: %s", err.msg);
        if (token && token_file)
            return usage_error("--token and --token-file exclude each other");
        if (token_file) {
            int r = read_token_file(token_file, o->token, sizeof o->token);
            if (r)
                return r;
        } else if (token) {
            if (strlen(token) >= sizeof o->token)
                return usage_error("--token is too long (at most %d characters)",
                                   P2V_PROTO_TOKEN_MAX);
            snprintf(o->token, sizeof o->token, "%s", token);
        } else {
            return usage_error("--server needs --token (printed by 'p2v-server init')");
        }
        if (!token_ok(o->token))
            return usage_error("invalid token: 1..%d printable ASCII characters",
                               P2V_PROTO_TOKEN_MAX);
        const char *colon = strrchr(o->server, ':');
        char *end = NULL;
        unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
        if (!colon || colon == o->server || !end || end == colon + 1 || *end != '\0' ||
            port == 0 || port > 65535)
            return usage_error("invalid --server '%s' (HOST:PORT, PORT 1..65535)", o->server);
        if (name) {
            const char *why = agent_name_invalid(name);
            if (why)
                return usage_error("invalid --name '%s': %s", name, why);
            snprintf(o->name, sizeof o->name, "%s", name);
        } else {
            agent_default_name(o->name, sizeof o->name);
        }
    } else {
        if (fingerprint || token || token_file)
            return usage_error("--fingerprint and --token go with --server");
        if (name) {
            const char *why = agent_name_invalid(name);
            if (why)
                return usage_error("invalid --name '%s': %s", name, why);
            snprintf(o->name, sizeof o->name, "%s", name);
        } else {
            agent_default_name(o->name, sizeof o->name);
        }
    }

    if (o->mode == AGENT_MODE_LOCAL) {
        if (o->ndisks != 1)
            return usage_error("--output needs exactly one --disk");
        if (strcmp(o->format, "qcow2") && strcmp(o->format, "vmdk") && strcmp(o->format, "raw"))
            return usage_error("invalid --format '%s' (qcow2, vmdk or raw)", o->format);
        if (o->subformat) {
            if (strcmp(o->format, "vmdk"))
                return usage_error("--subformat goes with --format vmdk");
            if (strcmp(o->subformat, "monolithicSparse") &&
                strcmp(o->subformat, "streamOptimized"))
                return usage_error("invalid --subformat '%s' (monolithicSparse or "
                                   "streamOptimized)",
                                   o->subformat);
        }
    } else if (o->subformat || strcmp(o->format, "qcow2")) {
        return usage_error("--format and --subformat go with --output");
    }
    if ((o->mode == AGENT_MODE_FACTS || o->mode == AGENT_MODE_PLAN) && o->report)
        return usage_error("--report goes with --server or --output");
    if (o->live && o->mode != AGENT_MODE_REMOTE)
        return usage_error("--live goes with --server (its delta passes re-sync with the "
                           "server's journal)");
    if (live_opts && !o->live)
        return usage_error("--continuous, --freeze-timeout, --max-passes and --snapshot go "
                           "with --live");
    if (o->live && o->force)
        return usage_error("--live and --force exclude each other");
    return 0;
}

static int open_disk(struct agent *a, struct agent_disk *d, const char *path,
                     struct stat *st, struct p2v_err *err)
{
    snprintf(d->path, sizeof d->path, "%s", path);
    /* A live source changes under us: reads must see the device, not a page cache that
     * the file system's own writes go around (they do for a block device's cache). */
    d->fd = a->o.live ? open(path, O_RDONLY | O_CLOEXEC | O_DIRECT) : -1;
    if (d->fd < 0)
        d->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (d->fd < 0)
        return p2v_err_errno(err, "cannot open disk '%s'", path);
    if (fstat(d->fd, st) < 0)
        return p2v_err_errno(err, "cannot stat disk '%s'", path);
    if (!S_ISBLK(st->st_mode) && !S_ISREG(st->st_mode))
        return p2v_err_set(err, EINVAL, "disk '%s' is neither a block device nor a file",
                           path);
    d->info = calloc(1, sizeof *d->info);
    if (!d->info)
        return p2v_err_set(err, ENOMEM, "out of memory");
    if (imager_disk_discover(path, d->info, err) < 0) {
        if (!strstr(err ? err->msg : "", path))
            p2v_err_prefix(err, "disk '%s'", path);
        return -1;
    }
    unsigned pf = (a->o.all_blocks ? IMAGER_PLAN_ALL_BLOCKS : 0) |
                  (a->o.live ? IMAGER_PLAN_LIVE : 0);
    if (imager_plan_flags(d->info, pf, &d->plan, err) < 0) {
        if (!strstr(err ? err->msg : "", path))
            p2v_err_prefix(err, "disk '%s'", path);
        return -1;
    }
    return 0;
}

static bool same_file(const struct stat *x, const struct stat *y)
{
    if (S_ISBLK(x->st_mode) && S_ISBLK(y->st_mode))
        return x->st_rdev == y->st_rdev;
    return x->st_dev == y->st_dev && x->st_ino == y->st_ino;
}

/* Open, discover and plan every disk (the named ones, or every local disk). */
static int open_disks(struct agent *a)
{
    char **list = NULL;
    const char *paths[AGENT_DISKS_MAX];
    size_t n = a->o.ndisks;
    struct p2v_err err = {0};
    int ret = AGENT_EXIT_FAIL;
    struct stat st[AGENT_DISKS_MAX];

    if (n == 0) {
        if (imager_list_local_disks(&list, &err) < 0) {
            ret = agent_fail(a, AGENT_EXIT_FAIL, "disk", "cannot list the local disks: %s",
                             err.msg);
            goto out;
        }
        for (char **p = list; *p; p++) {
            if (n == AGENT_DISKS_MAX) {
                ret = agent_fail(a, AGENT_EXIT_FAIL, "disk",
                                 "this machine has more than %d disks: choose them with "
                                 "--disk",
                                 AGENT_DISKS_MAX);
                goto out;
            }
            paths[n++] = *p;
        }
        if (n == 0 && (a->o.mode == AGENT_MODE_REMOTE || a->o.mode == AGENT_MODE_LOCAL)) {
            ret = agent_fail(a, AGENT_EXIT_FAIL, "disk",
                             "no local disks found: name them with --disk");
            goto out;
        }
    } else {
        memcpy(paths, a->o.disks, n * sizeof paths[0]);
    }
    for (size_t i = 0; i < n; i++) {
        struct agent_disk *d = &a->disks[i];
        a->ndisks = i + 1;
        if (open_disk(a, d, paths[i], &st[i], &err) < 0) {
            ret = agent_fail(a, AGENT_EXIT_FAIL, "disk", "%s", err.msg);
            goto out;
        }
        for (size_t k = 0; k < i; k++) {
            if (same_file(&st[k], &st[i])) {
                ret = agent_fail(a, AGENT_EXIT_USAGE, "usage", "disk '%s' is the same as '%s'",
                                 paths[i], paths[k]);
                goto out;
            }
        }
        a->st.bytes_planned += d->plan.bytes;
    }
    a->live = agent_disks_are_live(a);
    if (a->o.mode == AGENT_MODE_REMOTE || a->o.mode == AGENT_MODE_LOCAL) {
        ret = agent_check_mounts(a);
        if (ret)
            goto out;
    }
    ret = 0;
out:
    imager_free_list(list);
    return ret;
}

void agent_pipeline_opts(const struct agent *a, const struct agent_disk *d, uint32_t chunk,
                         struct imager_pipeline_opts *po)
{
    *po = (struct imager_pipeline_opts){
        .fd = d->fd,
        .path = d->path,
        .disk_size = d->info->size,
        .ext = d->plan.ext,
        .count = d->plan.count,
        .chunk_size = chunk,
        .threads = a->o.threads,
        .retries = 3,
        .skip_bad_sectors = a->o.skip_bad_sectors,
    };
}

void agent_close_disks(struct agent *a)
{
    for (size_t i = 0; i < a->ndisks; i++) {
        struct agent_disk *d = &a->disks[i];
        if (d->fd >= 0)
            close(d->fd);
        d->fd = -1;
        imager_plan_release(&d->plan);
        free(d->info);
        d->info = NULL;
    }
    a->ndisks = 0;
}

static int print_json(const struct agent *a, bool facts)
{
    struct p2v_buf buf = P2V_BUF_INIT;
    struct p2v_json j;
    p2v_json_init(&j, &buf, true);
    if (facts)
        agent_facts_json(a, &j, false);
    else
        agent_plan_json(a, &j);
    p2v_buf_put(&buf, "\n", 1);
    size_t w = fwrite(buf.data, 1, buf.len, stdout);
    int r = (w == buf.len && fflush(stdout) == 0) ? 0 : AGENT_EXIT_FAIL;
    if (r)
        p2v_error("cannot write to stdout: %s", strerror(errno));
    p2v_buf_release(&buf);
    return r;
}

int main(int argc, char **argv)
{
    p2v_log_init("p2v-agent");
    /* A closed connection or pipe must be an error we report, not a silent death. */
    signal(SIGPIPE, SIG_IGN);

    static struct agent a; /* large: the disks' descriptions */
    for (size_t i = 0; i < AGENT_DISKS_MAX; i++)
        a.disks[i].fd = -1;
    int r = parse_args(argc, argv, &a.o);
    if (r)
        return r < 0 ? 0 : r;
    a.st.start = p2v_now();

    r = open_disks(&a);
    if (r == 0) {
        switch (a.o.mode) {
        case AGENT_MODE_FACTS: r = print_json(&a, true); break;
        case AGENT_MODE_PLAN: r = print_json(&a, false); break;
        case AGENT_MODE_LOCAL: r = agent_local(&a); break;
        case AGENT_MODE_REMOTE: r = agent_remote(&a); break;
        }
    }
    agent_close_disks(&a);
    free(a.bad);
    free(a.mounts);
    return r;
}
