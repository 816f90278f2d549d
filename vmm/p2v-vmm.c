/* p2v-vmm: the command line of libvmm (see p2v-vmm(1)).
 *   p2v-vmm verify DISK ...   boot the disk's own kernel and say whether it came up
 *   p2v-vmm boot DISK ...     the same boot with the console on the terminal
 *   p2v-vmm calibrate         is /dev/kvm fast enough for our VMM?
 * Exit codes: 0 success (calibrate: fast), 1 error (calibrate: slow or missing), 2 usage,
 * 10 + the verdict for a failed verdict (11 no boot configuration, 12 kernel missing, 13
 * kernel panic, 14 root not found, 15 reset loop, 16 timeout, 17 stopped, 18 engine error).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vmm.h"

#define EXIT_USAGE 2

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-vmm verify DISK [options]     boot DISK's own kernel and give a verdict\n"
            "       p2v-vmm boot DISK [options]       boot it with the console on this terminal\n"
            "       p2v-vmm inspect DISK [--json] [--extract DIR]\n"
            "                                         what would boot: the configuration, kernel,\n"
            "                                         initrd and command line (DIR: as files)\n"
            "       p2v-vmm calibrate [--json] [-q]   is /dev/kvm fast enough for our VMM?\n"
            "\n"
            "The kernel, initrd and command line come from the disk's boot loader\n"
            "configuration (grub.cfg, extlinux.conf, syslinux.cfg on ext2/3/4); the disk\n"
            "(raw, qcow2, VMDK, VHD, VHDX) is opened read-only under a copy-on-write overlay.\n"
            "\n"
            "  -f, --format FMT       the image format (default: probe)\n"
            "  -m, --memory MiB       guest memory (default 1024; 16-3072)\n"
            "  -c, --cpus N           vCPUs (default 1)\n"
            "  -t, --timeout S        seconds to a verdict (verify: default 300; boot: none)\n"
            "  -e, --expect REGEX     what the console must show (default: a login prompt or a\n"
            "                         p2vkit fixture marker)\n"
            "      --kernel FILE      boot this host file instead of the disk's kernel\n"
            "      --initrd FILE      and this initrd\n"
            "      --append CMDLINE   and this command line (console=ttyS0 is added)\n"
            "      --log FILE         append the guest's console to FILE\n"
            "      --engine E         auto (default: our VMM where /dev/kvm is fast, else QEMU\n"
            "                         TCG), kvm (our VMM), qemu (QEMU TCG)\n"
            "      --qemu PATH        the qemu-system-x86_64 to run\n"
            "      --json             the verdict (verify, calibrate) as JSON on stdout\n"
            "  -v, --verbose          more messages; -q, --quiet: fewer\n"
            "  -h, --help             this help;  --version: the version\n"
            "\n"
            "boot: Ctrl-] leaves; the exit code is 0 when the guest powered off.\n"
            "exit codes: 0 success, 1 error, 2 usage, 11 no boot configuration, 12 kernel\n"
            "missing or not bootable, 13 kernel panic, 14 root not found, 15 reset loop,\n"
            "16 timeout, 17 stopped before it came up, 18 engine error\n");
}

static int parse_u64(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        fprintf(stderr, "p2v-vmm: %s: '%s' is not a number\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* JSON on standard output: json_begin(), write through .j, json_print(). */
struct json_out {
    struct p2v_buf b;
    struct p2v_json j;
};

static void json_begin(struct json_out *o)
{
    p2v_buf_init(&o->b, 1 << 20);
    p2v_json_init(&o->j, &o->b, true);
}

static void json_print(struct json_out *o)
{
    fwrite(o->b.data, 1, o->b.len, stdout);
    fputc('\n', stdout);
    p2v_buf_release(&o->b);
}

static int cmd_calibrate(bool json, int quiet)
{
    struct vmm_calibration c;
    vmm_calibrate(&c);
    if (json) {
        struct json_out out;
        json_begin(&out);
        vmm_calibration_json(&c, &out.j);
        json_print(&out);
    } else if (!quiet) {
        printf("/dev/kvm: %s\nengine auto would use: %s\n", c.note,
               c.fast ? "our VMM on KVM" : "QEMU TCG");
    }
    return c.fast ? 0 : 1;
}

int main(int argc, char **argv)
{
    enum { OPT_KERNEL = 256, OPT_INITRD, OPT_APPEND, OPT_LOG, OPT_ENGINE, OPT_QEMU, OPT_JSON,
           OPT_VERSION, OPT_EXTRACT };
    static const struct option opts[] = {
        {"format", required_argument, NULL, 'f'},
        {"memory", required_argument, NULL, 'm'},
        {"cpus", required_argument, NULL, 'c'},
        {"timeout", required_argument, NULL, 't'},
        {"expect", required_argument, NULL, 'e'},
        {"kernel", required_argument, NULL, OPT_KERNEL},
        {"initrd", required_argument, NULL, OPT_INITRD},
        {"append", required_argument, NULL, OPT_APPEND},
        {"log", required_argument, NULL, OPT_LOG},
        {"engine", required_argument, NULL, OPT_ENGINE},
        {"qemu", required_argument, NULL, OPT_QEMU},
        {"json", no_argument, NULL, OPT_JSON},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {"extract", required_argument, NULL, OPT_EXTRACT},
        {NULL, 0, NULL, 0},
    };
    struct vmm_opts o = {0};
    struct vmm_verdict *v = NULL;
    struct p2v_err err = {0};
    bool json = false, timeout_set = false;
    const char *extract = NULL;
    int c, verbose = 0, quiet = 0, rc;
    uint64_t n;

    p2v_log_init("p2v-vmm");
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
            usage(stdout);
            return 0;
        }
        if (argc >= 2 && !strcmp(argv[1], "--version")) {
            printf("p2v-vmm (p2vkit) %s\n", PACKAGE_VERSION);
            return 0;
        }
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    argv++;
    argc--;
    while ((c = getopt_long(argc, argv, "f:m:c:t:e:vqh", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            o.format = optarg;
            break;
        case 'm':
            if (parse_u64("--memory", optarg, &n) < 0)
                return EXIT_USAGE;
            o.memory_mib = n;
            break;
        case 'c':
            if (parse_u64("--cpus", optarg, &n) < 0 || n == 0 || n > 32) {
                fprintf(stderr, "p2v-vmm: --cpus: 1 to 32\n");
                return EXIT_USAGE;
            }
            o.cpus = (unsigned)n;
            break;
        case 't': {
            char *end;
            o.timeout_s = strtod(optarg, &end);
            if (end == optarg || *end || o.timeout_s < 0) {
                fprintf(stderr, "p2v-vmm: --timeout: '%s' is not a number of seconds\n", optarg);
                return EXIT_USAGE;
            }
            timeout_set = true;
            break;
        }
        case 'e':
            o.expect = optarg;
            break;
        case OPT_KERNEL:
            o.kernel = optarg;
            break;
        case OPT_INITRD:
            o.initrd = optarg;
            break;
        case OPT_APPEND:
            o.append = optarg;
            break;
        case OPT_LOG:
            o.log_path = optarg;
            break;
        case OPT_ENGINE:
            if (!strcmp(optarg, "auto"))
                o.engine = VMM_ENGINE_AUTO;
            else if (!strcmp(optarg, "kvm"))
                o.engine = VMM_ENGINE_KVM;
            else if (!strcmp(optarg, "qemu") || !strcmp(optarg, "qemu-tcg"))
                o.engine = VMM_ENGINE_QEMU;
            else {
                fprintf(stderr, "p2v-vmm: --engine: '%s' is not auto, kvm or qemu\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case OPT_QEMU:
            o.qemu = optarg;
            break;
        case OPT_JSON:
            json = true;
            break;
        case 'v':
            verbose++;
            break;
        case 'q':
            quiet++;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("p2v-vmm (p2vkit) %s\n", PACKAGE_VERSION);
            return 0;
        case OPT_EXTRACT:
            extract = optarg;
            break;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    p2v_log_adjust(verbose, quiet);

    if (!strcmp(cmd, "calibrate")) {
        if (optind != argc) {
            fprintf(stderr, "p2v-vmm: calibrate takes no arguments\n");
            return EXIT_USAGE;
        }
        return cmd_calibrate(json, quiet);
    }
    bool boot = !strcmp(cmd, "boot"), inspect = !strcmp(cmd, "inspect");
    if (!boot && !inspect && strcmp(cmd, "verify")) {
        fprintf(stderr, "p2v-vmm: unknown command '%s' (verify, boot, inspect, calibrate)\n",
                cmd);
        return EXIT_USAGE;
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "p2v-vmm: %s needs one DISK\n", cmd);
        return EXIT_USAGE;
    }
    o.disk = argv[optind];
    if (!timeout_set)
        o.timeout_s = boot ? 0 : 300;
    if (o.initrd && !o.kernel) {
        fprintf(stderr, "p2v-vmm: --initrd needs --kernel\n");
        return EXIT_USAGE;
    }
    if (extract && !inspect) {
        fprintf(stderr, "p2v-vmm: --extract is for inspect\n");
        return EXIT_USAGE;
    }
    if (boot) {
        o.echo = stdout;
        o.interactive = true;
        o.until_poweroff = true;
    }
    /* a last guard: whatever happens inside (a guest or an engine that does not let go),
     * the command ends within its time limit plus a minute, with the alarm's status */
    if (o.timeout_s > 0 && !inspect)
        alarm((unsigned)o.timeout_s + 60);
    v = calloc(1, sizeof *v);
    if (!v) {
        fprintf(stderr, "p2v-vmm: out of memory\n");
        return 1;
    }
    if ((inspect ? vmm_inspect(&o, v, extract, &err) : vmm_verify(&o, v, &err)) < 0) {
        fprintf(stderr, "p2v-vmm: %s\n", err.msg);
        if (json) {
            struct json_out out;
            json_begin(&out);
            p2v_json_object_begin(&out.j);
            p2v_json_kv_string(&out.j, "verdict", "error");
            p2v_json_kv_string(&out.j, "disk", o.disk);
            p2v_json_kv_string(&out.j, "error", err.msg);
            p2v_json_object_end(&out.j);
            json_print(&out);
        }
        free(v);
        return 1;
    }
    rc = v->result == VMM_RESULT_SUCCESS ? 0 : VMM_EXIT_BASE + (int)v->result;
    if (json) {
        struct json_out out;
        json_begin(&out);
        vmm_verdict_json(v, &o, &out.j);
        json_print(&out);
    } else if (inspect) {
        if (v->result == VMM_RESULT_SUCCESS)
            printf("config:  %s\nkernel:  %s\n         %s\ninitrd:  %s\ncmdline: %s\n", v->config,
                   v->kernel, v->kernel_version, v->initrd[0] ? v->initrd : "(none)", v->cmdline);
        else
            printf("not bootable: %s: %s\n", vmm_result_name(v->result), v->reason);
    } else if (!boot || v->result != VMM_RESULT_SUCCESS) {
        FILE *out = boot ? stderr : stdout;
        fprintf(out, "%s%s: %s (engine %s, %.1f s)\n", boot ? "\n" : "",
                v->result == VMM_RESULT_SUCCESS ? "verified" : "FAILED",
                vmm_result_name(v->result), vmm_engine_name(v->engine), v->seconds);
        fprintf(out, "  %s\n", v->reason);
        if (v->result != VMM_RESULT_SUCCESS && v->n_last && !boot) {
            fprintf(out, "  last console lines:\n");
            for (unsigned i = 0; i < v->n_last; i++)
                fprintf(out, "    | %s\n", v->last_lines[i]);
        }
    }
    free(v);
    return rc;
}
