/* p2v-server: the conversion server's command line — `init` (make a store and its TLS
 * identity and join token), `run` (receive captures from agents; run.c, session.c) and
 * `status` (the jobs of a store; status.c). Exit codes: 0 ok, 1 failure, 2 usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfmt.h"
#include "p2v-tls.h"
#include "server.h"
#include "vmconfig.h"

#define EXIT_USAGE 2

static void usage_main(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-server COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  init --store DIR [--json] [--force]     make a store: TLS key, certificate, "
            "join token\n"
            "  run --store DIR [--listen HOST:PORT] ... receive captures from p2v-agent\n"
            "  status --store DIR [--json] [JOB]        show the jobs of a store\n"
            "  retry --store DIR JOB                    run a job's failed stage again\n"
            "  cutover --store DIR JOB                  end a live capture's sync: cut over\n"
            "  batch add --store DIR MANIFEST [--json]  a join token for each machine of a wave\n"
            "  batch status --store DIR [--json]        the wave: each machine's state\n"
            "  vmconfig --disk PATH --out DIR ...       VM configurations for captured disks\n"
            "\n"
            "'p2v-server COMMAND --help' describes a command's options. See p2v-server(1).\n"
            "exit status: 0 ok, 1 failure, 2 usage error.\n");
}

static void usage_init(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-server init --store DIR [--json] [--force]\n"
            "\n"
            "Make the store DIR (mode 0700) with the server's TLS key and self-signed\n"
            "certificate and a random join token, then print the certificate's fingerprint,\n"
            "the token and an example agent command. An existing store keeps its identity\n"
            "(and it is printed again) unless --force makes a new one.\n"
            "\n"
            "  --store DIR   the store folder\n"
            "  --json        print {\"store\", \"fingerprint\", \"token\"} as JSON\n"
            "  --force       make a new key, certificate and token (agents given the old\n"
            "                ones are refused)\n");
}

static void usage_run(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-server run --store DIR [--listen HOST:PORT] [--format FMT]\n"
            "                      [--window SIZE] [--max-sessions N] [--port-file FILE]\n"
            "                      [--until STATE] [--no-inject] [--max-inject N]\n"
            "                      [--max-verify N] [--verify-engine E] [--verify-timeout S]\n"
            "                      [--http ADDR:PORT] [--http-port-file FILE] [-v] [-q]\n"
            "\n"
            "Receive disk captures from p2v-agent over TLS 1.3 into DIR/jobs/JOB/, then\n"
            "convert each received job: virtio drivers injected into its boot disk, VM\n"
            "configurations written, a verification boot, report.json (job states:\n"
            "received, injecting, configured, verifying, verified or failed). A restarted\n"
            "server resumes every job at its stage.\n"
            "SIGTERM or SIGINT: stop accepting, commit and end every session, exit 0.\n"
            "\n"
            "  --store DIR          an initialised store (p2v-server init)\n"
            "  --listen HOST:PORT   address to listen on (default 0.0.0.0:7878; port 0: any)\n"
            "  --format LIST        the outputs of new jobs: the disks received as qcow2\n"
            "                       (default), vmdk or raw (the first of those named), and\n"
            "                       once converted also any of vmdk (+ .vmx, .ovf), ova,\n"
            "                       qcow2, raw, vhd; e.g. qcow2,vmdk,ova\n"
            "  --window SIZE        journal window: the most un-committed data an agent may\n"
            "                       have in flight (default 64M; 1M..1G)\n"
            "  --max-sessions N     concurrent sessions (default 64); more get ERROR BUSY\n"
            "  --port-file FILE     write the port listened on to FILE once listening\n"
            "  --http ADDR:PORT     serve a read-only status page and JSON API over plain\n"
            "                       HTTP (e.g. 127.0.0.1:8080, [::1]:8080; port 0: any)\n"
            "  --http-port-file FILE  write the status page's port to FILE\n"
            "  --until STATE        the last state a job is taken to: received (no\n"
            "                       conversion), configured (no verification boot) or\n"
            "                       verified (default)\n"
            "  --no-inject          skip driver injection (the disks stay as captured)\n"
            "  --max-inject N       driver injections at once (default 2)\n"
            "  --max-verify N       verification boots at once (default 2)\n"
            "  --verify-engine E    p2v-vmm engine: auto (default), kvm or qemu\n"
            "  --verify-timeout S   seconds a verification boot may take (default 300)\n"
            "  -v, -q               more or less logging\n");
}

static void usage_batch(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-server batch add --store DIR MANIFEST [--json]\n"
            "       p2v-server batch status --store DIR [--json]\n"
            "\n"
            "A batch is a wave of machines to migrate. The manifest is a text file with one\n"
            "machine per line (# starts a comment):\n"
            "\n"
            "    NAME [format=LIST] [memory=MiB] [cpus=N]\n"
            "\n"
            "format: as run --format (e.g. qcow2,ova); memory and cpus override the\n"
            "machine's facts in its VM configurations. 'add' checks the whole manifest,\n"
            "then gives each machine its own join token (kept in DIR/batch/NAME.json; a\n"
            "machine added again keeps its token) and prints them: the agent of that\n"
            "machine presents it with --token and --name NAME (the token is valid for that\n"
            "name only). 'status' shows each machine's job: state, progress, verdict.\n"
            "\n"
            "  --store DIR   the store folder\n"
            "  --json        print JSON\n");
}

static void usage_retry(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-server retry --store DIR JOB\n"
            "\n"
            "A job that failed while injecting or verifying goes back to the state before\n"
            "that stage; a running server takes it up within a second, else the next one\n"
            "started on the store. The capture is not repeated. (A job that failed while\n"
            "receiving resumes when its agent runs again.)\n"
            "\n"
            "  --store DIR   the store folder\n");
}

static void usage_status(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-server status --store DIR [--json] [JOB]\n"
            "\n"
            "Show the store's jobs (JOB, STATE, DONE/TOTAL, PCT, RATE, ETA), or one job in\n"
            "detail. Works whether or not a server is running; a '*' after the state marks\n"
            "a job with a live session.\n"
            "\n"
            "  --store DIR   the store folder\n"
            "  --json        print {\"jobs\": [job.json objects]} (with JOB: that object)\n");
}

static void usage_cutover(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-server cutover --store DIR JOB\n"
            "\n"
            "Ask the agent of a live capture kept in sync (p2v-agent --live --continuous) to\n"
            "cut over: after its current pass it freezes the file systems, sends the last\n"
            "delta and finishes the job. The request is a file, jobs/JOB/cutover, that the\n"
            "server reads at the agent's next pass or heartbeat (every few seconds), so it\n"
            "works whether or not the agent is connected now.\n"
            "\n"
            "  --store DIR   the store folder\n");
}

static void usage_vmconfig(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-server vmconfig --disk PATH [--disk PATH ...] --out DIR\n"
            "                           [--facts FILE] [--format FMT] [--name NAME]\n"
            "                           [--memory MIB] [--cpus N] [--outputs LIST] [--json]\n"
            "\n"
            "Write the configurations that run a captured machine: from its facts (the\n"
            "agent's facts.json: CPUs, memory, firmware, NICs and their MACs, OS) and its\n"
            "disks. Files are named after the machine (sanitised); they are written under\n"
            "temporary names and renamed at the end, so a failure leaves none.\n"
            "\n"
            "  --disk PATH     a disk image, in boot order (repeatable, up to 16)\n"
            "  --format FMT    the format of the --disk options that follow it: raw, qcow2,\n"
            "                  vmdk, vhd, vhdx, or auto (default: probed by content)\n"
            "  --out DIR       the output folder (made when missing)\n"
            "  --facts FILE    the machine's facts (without: 2 CPUs, 2048 MiB, BIOS and one\n"
            "                  NIC with a random 52:54:00 MAC)\n"
            "  --name NAME     the VM's name (default: the facts' name, else \"vm\")\n"
            "  --memory MIB    memory in MiB (64..1048576), instead of the facts'\n"
            "  --cpus N        virtual CPUs (1..255), instead of the facts'\n"
            "  --outputs LIST  comma-separated: libvirt (NAME.xml), qemu (NAME.sh), vmx\n"
            "                  (NAME.vmx + VMDKs), ovf (NAME.ovf, NAME.mf, streamOptimized\n"
            "                  VMDKs), ova (NAME.ova), or all (default: libvirt,qemu)\n"
            "  --json          print {\"name\", \"out\", \"files\"} as JSON\n");
}

static int usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A usage error: the message, a pointer to --help, exit code 2. */
static int usage_error(const char *cmd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p2v_error("%s", msg);
    fprintf(stderr, "Try 'p2v-server %s--help'.\n", cmd);
    return EXIT_USAGE;
}

/* getopt's '?' and ':' (opterr is off) as a usage error. */
static int bad_option(const char *cmd, int c, char **argv)
{
    const char *arg = argv[optind - 1];
    if (c == ':')
        return usage_error(cmd, "option '%s' needs an argument", arg);
    if (optopt && strncmp(arg, "--", 2) != 0)
        return usage_error(cmd, "unknown option '-%c'", optopt);
    return usage_error(cmd, "unknown option '%s'", arg);
}

/* ---------------------------------------------------------------- init */

static int cmd_init(int argc, char **argv)
{
    static const struct option opts[] = {
        {"store", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *store = NULL;
    bool json = false, force = false;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 's': store = optarg; break;
        case 'j': json = true; break;
        case 'f': force = true; break;
        case 'h': usage_init(stdout); return 0;
        default: return bad_option("init ", c, argv);
        }
    }
    if (optind != argc)
        return usage_error("init ", "unexpected argument '%s'", argv[optind]);
    if (!store)
        return usage_error("init ", "--store DIR is required");

    struct p2v_err err = {0};
    char *abs = NULL, key[PATH_MAX], crt[PATH_MAX], fp[P2V_FINGERPRINT_LEN];
    char token[P2V_PROTO_TOKEN_MAX + 1];
    struct p2v_buf tok = P2V_BUF_INIT;
    int dfd = -1, rc = 1;
    bool made = false;

    if (mkdir(store, 0700) == 0)
        made = true;
    else if (errno != EEXIST) {
        p2v_error("cannot make store '%s': %s", store, strerror(errno));
        goto out;
    }
    abs = realpath(store, NULL);
    dfd = abs ? open(abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd < 0) {
        p2v_error("cannot open store '%s': %s", store, strerror(errno));
        goto out;
    }
    if (fchmod(dfd, 0700) < 0) {
        p2v_error("cannot set the mode of store '%s': %s", store, strerror(errno));
        goto out;
    }
    snprintf(key, sizeof key, "%s/server.key", abs);
    snprintf(crt, sizeof crt, "%s/server.crt", abs);
    bool have_id = faccessat(dfd, "server.key", R_OK, AT_SYMLINK_NOFOLLOW) == 0 &&
                   faccessat(dfd, "server.crt", R_OK, AT_SYMLINK_NOFOLLOW) == 0;
    bool new_id = force || !have_id;
    if (new_id) {
        if (p2v_tls_make_identity(key, crt, fp, &err) < 0) {
            p2v_error("%s", err.msg);
            goto out;
        }
    } else if (p2v_tls_cert_fingerprint(crt, fp, &err) < 0) {
        p2v_error("%s (use --force to make a new identity)", err.msg);
        goto out;
    }
    p2v_buf_init(&tok, 0);
    bool have_token = !force && srv_read_file_at(dfd, "token", 4096, &tok, NULL) == 0;
    if (have_token) {
        while (tok.len && (tok.data[tok.len - 1] == '\n' || tok.data[tok.len - 1] == ' '))
            tok.len--;
        have_token = tok.len > 0 && tok.len <= P2V_PROTO_TOKEN_MAX;
    }
    if (have_token) {
        memcpy(token, tok.data, tok.len);
        token[tok.len] = '\0';
    } else {
        char line[P2V_PROTO_TOKEN_MAX + 2];
        if (srv_make_token(token) < 0) {
            p2v_error("cannot make a token: getrandom: %s", strerror(errno));
            goto out;
        }
        snprintf(line, sizeof line, "%s\n", token);
        if (srv_write_file_at(dfd, "token", line, strlen(line), 0600, &err) < 0) {
            p2v_error("store '%s': %s", store, err.msg);
            goto out;
        }
    }
    if (mkdirat(dfd, "jobs", 0700) < 0 && errno != EEXIST) {
        p2v_error("cannot make '%s/jobs': %s", abs, strerror(errno));
        goto out;
    }
    if (!new_id && have_token && !json)
        fprintf(stderr, "p2v-server: store '%s' is already initialised; its identity is "
                        "unchanged (--force makes a new one)\n", abs);

    if (json) {
        struct p2v_buf b;
        struct p2v_json j;
        p2v_buf_init(&b, 0);
        p2v_json_init(&j, &b, false);
        p2v_json_object_begin(&j);
        p2v_json_kv_string(&j, "store", abs);
        p2v_json_kv_string(&j, "fingerprint", fp);
        p2v_json_kv_string(&j, "token", token);
        p2v_json_object_end(&j);
        printf("%s\n", p2v_buf_cstr(&b));
        p2v_buf_release(&b);
    } else {
        char host[256] = "SERVER";
        if (gethostname(host, sizeof host) < 0 || !host[0])
            snprintf(host, sizeof host, "SERVER");
        host[sizeof host - 1] = '\0';
        printf("store: %s%s\n", abs, made ? " (new)" : "");
        printf("fingerprint: %s\n", fp);
        printf("token: %s\n", token);
        printf("\nOn each source machine:\n"
               "  p2v-agent --server %s:7878 --fingerprint %s --token %s\n",
               host, fp, token);
        printf("Start the server:\n  p2v-server run --store %s\n", abs);
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    p2v_buf_release(&tok);
    if (dfd >= 0)
        close(dfd);
    free(abs);
    return rc;
}

/* ---------------------------------------------------------------- run */

static int cmd_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"store", required_argument, NULL, 's'},
        {"listen", required_argument, NULL, 'l'},
        {"format", required_argument, NULL, 'f'},
        {"window", required_argument, NULL, 'w'},
        {"max-sessions", required_argument, NULL, 'm'},
        {"port-file", required_argument, NULL, 'p'},
        {"http", required_argument, NULL, 'H'},
        {"http-port-file", required_argument, NULL, 'P'},
        {"until", required_argument, NULL, 'U'},
        {"no-inject", no_argument, NULL, 'N'},
        {"max-inject", required_argument, NULL, 'I'},
        {"max-verify", required_argument, NULL, 'V'},
        {"verify-engine", required_argument, NULL, 'E'},
        {"verify-timeout", required_argument, NULL, 'T'},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct srv_run_opts o = {
        .listen = "0.0.0.0:7878",
        .format = "qcow2",
        .window = 64u << 20,
        .max_sessions = 64,
        .pipeline = {.until = JOB_VERIFIED, .inject = true, .max_inject = 2, .max_verify = 2,
                     .engine = "auto", .verify_timeout = 300},
    };
    struct p2v_err err = {0};
    unsigned long long n;
    char primary[8];
    int c, verbose = 0, quiet = 0;
    while ((c = getopt_long(argc, argv, ":vqh", opts, NULL)) != -1) {
        switch (c) {
        case 's': o.store = optarg; break;
        case 'l': o.listen = optarg; break;
        case 'f':
            if (srv_parse_formats(optarg, primary, o.outputs, &err) < 0)
                return usage_error("run ", "--format: %s", err.msg);
            o.format = primary;
            break;
        case 'w':
            if (p2v_parse_size(optarg, &o.window, &err) < 0)
                return usage_error("run ", "--window: %s", err.msg);
            if (o.window < (1u << 20) || o.window > (1u << 30))
                return usage_error("run ",
                                   "--window %s is out of range (1M..1G)", optarg);
            break;
        case 'm': {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (errno || end == optarg || *end || v == 0 || v > 100000)
                return usage_error("run ",
                                   "--max-sessions '%s' is not a number from 1 to 100000",
                                   optarg);
            o.max_sessions = (unsigned)v;
            break;
        }
        case 'p': o.port_file = optarg; break;
        case 'H': o.http = optarg; break;
        case 'P': o.http_port_file = optarg; break;
        case 'U': {
            int st = srv_job_state_parse(optarg);
            if (st != JOB_RECEIVED && st != JOB_CONFIGURED && st != JOB_VERIFIED)
                return usage_error("run ", "--until '%s' is not received, configured or "
                                   "verified", optarg);
            o.pipeline.until = (enum srv_job_state)st;
            break;
        }
        case 'N': o.pipeline.inject = false; break;
        case 'I':
        case 'V':
            if (p2v_parse_uint(optarg, 1, 64, &n) < 0)
                return usage_error("run ", "--max-%s '%s' is not a number from 1 to 64",
                                   c == 'I' ? "inject" : "verify", optarg);
            *(c == 'I' ? &o.pipeline.max_inject : &o.pipeline.max_verify) = (unsigned)n;
            break;
        case 'E':
            if (strcmp(optarg, "auto") && strcmp(optarg, "kvm") && strcmp(optarg, "qemu"))
                return usage_error("run ", "--verify-engine '%s' is not auto, kvm or qemu",
                                   optarg);
            o.pipeline.engine = optarg;
            break;
        case 'T':
            if (p2v_parse_uint(optarg, 5, 86400, &n) < 0)
                return usage_error("run ", "--verify-timeout '%s' is not a number of "
                                   "seconds from 5 to 86400", optarg);
            o.pipeline.verify_timeout = (double)n;
            break;
        case 'v': verbose++; break;
        case 'q': quiet++; break;
        case 'h': usage_run(stdout); return 0;
        default: return bad_option("run ", c, argv);
        }
    }
    if (optind != argc)
        return usage_error("run ", "unexpected argument '%s'", argv[optind]);
    if (!o.store)
        return usage_error("run ", "--store DIR is required");
    if (o.http_port_file && !o.http)
        return usage_error("run ", "--http-port-file needs --http ADDR:PORT");
    p2v_log_adjust(verbose, quiet);
    return srv_run(&o);
}

/* ---------------------------------------------------------------- status */

/* The options of status and batch: --store DIR (required), --json, --help. -1 when they
 * are parsed (optind at the first operand), else the exit code to return. */
static int store_json_opts(int argc, char **argv, const char *cmd, void (*usage)(FILE *),
                           const char **store, bool *json)
{
    static const struct option opts[] = {
        {"store", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 's': *store = optarg; break;
        case 'j': *json = true; break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(cmd, c, argv);
        }
    }
    if (!*store)
        return usage_error(cmd, "--store DIR is required");
    return -1;
}

static int cmd_status(int argc, char **argv)
{
    const char *store = NULL;
    bool json = false;
    int rc = store_json_opts(argc, argv, "status ", usage_status, &store, &json);
    if (rc >= 0)
        return rc;
    if (argc - optind > 1)
        return usage_error("status ", "unexpected argument '%s'",
                           argv[optind + 1]);
    return srv_status(store, json, optind < argc ? argv[optind] : NULL);
}

/* ---------------------------------------------------------------- batch */

static int cmd_batch(int argc, char **argv)
{
    const char *store = NULL;
    bool json = false;
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage_batch(stdout);
        return 0;
    }
    if (argc < 2 || (strcmp(argv[1], "add") && strcmp(argv[1], "status")))
        return usage_error("batch ", "a subcommand is required: add or status");
    const char *sub = argv[1];
    int rc = store_json_opts(argc - 1, argv + 1, "batch ", usage_batch, &store, &json);
    if (rc >= 0)
        return rc;
    argc--;
    argv++;
    if (strcmp(sub, "add") == 0) {
        if (argc - optind != 1)
            return usage_error("batch ", argc == optind ? "add: a MANIFEST is required"
                                                        : "add: one MANIFEST at a time");
        return srv_batch_add(store, argv[optind], json);
    }
    if (argc != optind)
        return usage_error("batch ", "status: unexpected argument '%s'", argv[optind]);
    return srv_batch_status(store, json);
}

/* ---------------------------------------------------------------- retry, cutover */

/* The options of retry and cutover: --store DIR and one JOB. -1 when they are parsed
 * (*store and *id set), else the exit code to return. */
static int store_job_opts(int argc, char **argv, const char *cmd, void (*usage)(FILE *),
                          const char **store, const char **id)
{
    static const struct option opts[] = {
        {"store", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 's': *store = optarg; break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(cmd, c, argv);
        }
    }
    if (!*store)
        return usage_error(cmd, "--store DIR is required");
    if (argc - optind != 1)
        return usage_error(cmd, argc == optind ? "a JOB is required" : "one JOB at a time");
    if (!srv_job_id_ok(argv[optind]))
        return usage_error(cmd, "'%s' is not a job name", argv[optind]);
    *id = argv[optind];
    return -1;
}

static int cmd_retry(int argc, char **argv)
{
    const char *store = NULL, *id = NULL;
    int rc = store_job_opts(argc, argv, "retry ", usage_retry, &store, &id);
    return rc >= 0 ? rc : srv_retry(store, id);
}

static int cmd_cutover(int argc, char **argv)
{
    const char *store = NULL, *id = NULL;
    int rc = store_job_opts(argc, argv, "cutover ", usage_cutover, &store, &id);
    if (rc >= 0)
        return rc;
    char path[4096];
    snprintf(path, sizeof path, "%s/jobs/%s/job.json", store, id);
    if (access(path, F_OK) < 0) {
        p2v_error("no job '%s' in the store %s", id, store);
        return 1;
    }
    snprintf(path, sizeof path, "%s/jobs/%s/cutover", store, id);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        p2v_error("cannot write %s: %s", path, strerror(errno));
        return 1;
    }
    close(fd);
    printf("cutover requested for job %s: its agent cuts over after its current pass\n", id);
    return 0;
}

/* ---------------------------------------------------------------- vmconfig */

/* A whole small file (facts), at most @max bytes. 0 / -1. */
static int read_small_file(const char *path, size_t max, struct p2v_buf *out,
                           struct p2v_err *err)
{
    FILE *fp = fopen(path, "rbe");
    int r = -1;
    if (!fp)
        return p2v_err_errno(err, "cannot open '%s'", path);
    for (;;) {
        uint8_t *p = p2v_buf_extend(out, 4096);
        if (!p) {
            p2v_err_set(err, EFBIG, "'%s' is larger than %zu bytes", path, max);
            goto out;
        }
        size_t n = fread(p, 1, 4096, fp);
        out->len -= 4096 - n;
        if (n < 4096) {
            if (ferror(fp)) {
                p2v_err_errno(err, "cannot read '%s'", path);
                goto out;
            }
            break;
        }
    }
    if (out->len > max) {
        p2v_err_set(err, EFBIG, "'%s' is larger than %zu bytes", path, max);
        goto out;
    }
    r = 0;
out:
    fclose(fp);
    return r;
}


static int cmd_vmconfig(int argc, char **argv)
{
    static const struct option opts[] = {
        {"facts", required_argument, NULL, 'F'},
        {"disk", required_argument, NULL, 'd'},
        {"format", required_argument, NULL, 'f'},
        {"out", required_argument, NULL, 'o'},
        {"name", required_argument, NULL, 'n'},
        {"memory", required_argument, NULL, 'm'},
        {"cpus", required_argument, NULL, 'c'},
        {"outputs", required_argument, NULL, 'O'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *facts = NULL, *out = NULL, *name = NULL, *format = NULL;
    const char *disks[VM_DISKS_MAX], *formats[VM_DISKS_MAX];
    unsigned ndisks = 0, outputs = VM_OUT_DEFAULT;
    unsigned long long memory = 0, cpus = 0;
    bool json = false, made = false;
    struct p2v_err err = {0};
    int c, rc = 1;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'F': facts = optarg; break;
        case 'd':
            if (ndisks >= VM_DISKS_MAX)
                return usage_error("vmconfig ", "more than %d --disk", VM_DISKS_MAX);
            formats[ndisks] = format;
            disks[ndisks++] = optarg;
            break;
        case 'f': {
            bool known = strcmp(optarg, "auto") == 0;
            for (const char *const *n = diskfmt_format_names(); *n; n++)
                known |= strcmp(*n, optarg) == 0;
            if (!known)
                return usage_error("vmconfig ", "unknown format '%s'", optarg);
            format = strcmp(optarg, "auto") == 0 ? NULL : optarg;
            break;
        }
        case 'o': out = optarg; break;
        case 'n': name = optarg; break;
        case 'm':
            if (p2v_parse_uint(optarg, VM_MEMORY_MIB_MIN_OVERRIDE, VM_MEMORY_MIB_MAX_OVERRIDE,
                           &memory) < 0)
                return usage_error("vmconfig ", "--memory '%s' is not a number of MiB from %u "
                                   "to %u", optarg, VM_MEMORY_MIB_MIN_OVERRIDE,
                                   VM_MEMORY_MIB_MAX_OVERRIDE);
            break;
        case 'c':
            if (p2v_parse_uint(optarg, 1, VM_CPUS_MAX_OVERRIDE, &cpus) < 0)
                return usage_error("vmconfig ", "--cpus '%s' is not a number from 1 to %d",
                                   optarg, VM_CPUS_MAX_OVERRIDE);
            break;
        case 'O':
            if (vmconfig_parse_outputs(optarg, &outputs, &err) < 0)
                return usage_error("vmconfig ", "--outputs: %s", err.msg);
            break;
        case 'j': json = true; break;
        case 'h': usage_vmconfig(stdout); return 0;
        default: return bad_option("vmconfig ", c, argv);
        }
    }
    if (optind != argc)
        return usage_error("vmconfig ", "unexpected argument '%s'", argv[optind]);
    if (!out)
        return usage_error("vmconfig ", "--out DIR is required");
    if (ndisks == 0)
        return usage_error("vmconfig ", "at least one --disk PATH is required");

    struct vm_spec spec;
    struct p2v_buf text = P2V_BUF_INIT, written = P2V_BUF_INIT;
    vm_spec_init(&spec);
    p2v_buf_init(&text, VM_FACTS_MAX + 4096);
    p2v_buf_init(&written, 0);
    /* everything is checked before the output folder is touched */
    if (facts) {
        if (read_small_file(facts, VM_FACTS_MAX, &text, &err) < 0) {
            p2v_error("%s", err.msg);
            goto out;
        }
        if (vm_spec_from_facts(&spec, (const char *)text.data, text.len, &err) < 0) {
            p2v_error("'%s': %s", facts, err.msg);
            goto out;
        }
    } else if (vm_spec_add_random_nic(&spec, &err) < 0) {
        p2v_error("%s", err.msg);
        goto out;
    }
    if (name && vm_spec_set_name(&spec, name, &err) < 0) {
        p2v_error("%s", err.msg);
        goto out;
    }
    if (memory)
        spec.memory_mib = memory;
    if (cpus)
        spec.cpus = (unsigned)cpus;
    for (unsigned i = 0; i < ndisks; i++) {
        if (vm_spec_add_disk(&spec, disks[i], formats[i], &err) < 0) {
            p2v_error("%s", err.msg);
            goto out;
        }
    }
    if (mkdir(out, 0755) == 0)
        made = true;
    else if (errno != EEXIST) {
        p2v_error("cannot make the output folder '%s': %s", out, strerror(errno));
        goto out;
    }
    struct vmconfig_opts o = {.outputs = outputs};
    if (vmconfig_write(&spec, out, &o, &written, &err) < 0) {
        p2v_error("%s", err.msg);
        if (made)
            rmdir(out);
        goto out;
    }
    const char *list = p2v_buf_cstr(&written);
    if (json) {
        struct p2v_buf b;
        struct p2v_json j;
        char *abs = realpath(out, NULL);
        p2v_buf_init(&b, 0);
        p2v_json_init(&j, &b, false);
        p2v_json_object_begin(&j);
        p2v_json_kv_string(&j, "name", spec.name);
        p2v_json_kv_string(&j, "out", abs ? abs : out);
        p2v_json_key(&j, "files");
        p2v_json_array_begin(&j);
        for (const char *p = list; p && *p;) {
            size_t n = strcspn(p, "\n");
            p2v_json_stringn(&j, p, n);
            p += n + (p[n] == '\n');
        }
        p2v_json_array_end(&j);
        p2v_json_object_end(&j);
        printf("%s\n", p2v_buf_cstr(&b));
        p2v_buf_release(&b);
        free(abs);
    } else {
        for (const char *p = list; p && *p;) {
            size_t n = strcspn(p, "\n");
            printf("%s/%.*s\n", out, (int)n, p);
            p += n + (p[n] == '\n');
        }
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    p2v_buf_release(&text);
    p2v_buf_release(&written);
    vm_spec_release(&spec);
    return rc;
}

int main(int argc, char **argv)
{
    p2v_log_init("p2v-server");
    opterr = 0;
    if (argc < 2)
        return usage_error("", "a command is required (init, run, status, retry, cutover, "
                           "batch or vmconfig)");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage_main(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("p2v-server (p2vkit) %s, wire protocol %d\n", PACKAGE_VERSION,
               P2V_PROTO_VERSION);
        return 0;
    }
    /* getopt sees the command's arguments with the command as argv[0] */
    if (strcmp(cmd, "init") == 0)
        return cmd_init(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(argc - 1, argv + 1);
    if (strcmp(cmd, "vmconfig") == 0)
        return cmd_vmconfig(argc - 1, argv + 1);
    if (strcmp(cmd, "retry") == 0)
        return cmd_retry(argc - 1, argv + 1);
    if (strcmp(cmd, "batch") == 0)
        return cmd_batch(argc - 1, argv + 1);
    if (strcmp(cmd, "cutover") == 0)
        return cmd_cutover(argc - 1, argv + 1);
    return usage_error("", "unknown command '%s'", cmd);
}
