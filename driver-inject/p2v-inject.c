/* p2v-inject: the command line of libdriverinject. Makes the Linux system on a disk
 * image bootable on virtio hardware (see p2v-inject(1)); the exit code is the library's
 * enum di_status.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driverinject.h"

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: p2v-inject [-f FMT] [--dry-run] [--initramfs MODE] [--json] [--remove-vmware-tools] [-v|-q] DISK\n"
            "Make the Linux system on DISK boot on virtio hardware: virtio drivers into every\n"
            "kernel's initramfs, device names in fstab and the boot loader as UUID=, hardware\n"
            "leftovers removed. One libguestfs appliance run (TCG where KVM is not usable).\n"
            "\n"
            "  -f, --format FMT          the image format (raw, qcow2, vmdk, ...; default: probe)\n"
            "  -n, --dry-run             list the changes, write nothing (the disk is opened read-only)\n"
            "      --json                the report as JSON on stdout\n"
            "      --remove-vmware-tools disable VMware tools services\n"
            "      --accel kvm|tcg       the appliance's accelerator (default: auto; env P2V_INJECT_ACCEL)\n"
            "      --initramfs auto|rebuild|append\n"
            "                            guests with an initramfs tool: append the drivers to the\n"
            "                            current initrd, or run the tool (default: auto)\n"
            "  -v, --verbose             more messages (twice: libguestfs' own)\n"
            "  -q, --quiet               fewer messages\n"
            "  -h, --help                this help\n"
            "\n"
            "exit codes: 0 done (or nothing to do), 1 error, 2 usage, 3 Windows guest (not\n"
            "supported yet), 4 unsupported operating system, 5 no operating system found\n");
}

int main(int argc, char **argv)
{
    enum { OPT_JSON = 256, OPT_VMW, OPT_ACCEL, OPT_INITRAMFS };
    static const struct option opts[] = {
        {"format", required_argument, NULL, 'f'},
        {"dry-run", no_argument, NULL, 'n'},
        {"json", no_argument, NULL, OPT_JSON},
        {"remove-vmware-tools", no_argument, NULL, OPT_VMW},
        {"accel", required_argument, NULL, OPT_ACCEL},
        {"initramfs", required_argument, NULL, OPT_INITRAMFS},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct di_options o = {0};
    struct di_report *r = NULL;
    struct p2v_err err = {0};
    bool json = false;
    int c, verbose = 0, quiet = 0;

    p2v_log_init("p2v-inject");
    while ((c = getopt_long(argc, argv, "f:nvqh", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            o.format = optarg;
            break;
        case 'n':
            o.dry_run = true;
            break;
        case OPT_JSON:
            json = true;
            break;
        case OPT_VMW:
            o.remove_vmware_tools = true;
            break;
        case OPT_ACCEL:
            if (strcmp(optarg, "kvm") == 0)
                o.accel = DI_ACCEL_KVM;
            else if (strcmp(optarg, "tcg") == 0)
                o.accel = DI_ACCEL_TCG;
            else if (strcmp(optarg, "auto") != 0) {
                fprintf(stderr, "p2v-inject: --accel: '%s' is not kvm, tcg or auto\n", optarg);
                return DI_USAGE;
            }
            break;
        case OPT_INITRAMFS:
            if (strcmp(optarg, "auto") == 0)
                o.initramfs = DI_INITRAMFS_AUTO;
            else if (strcmp(optarg, "rebuild") == 0)
                o.initramfs = DI_INITRAMFS_REBUILD;
            else if (strcmp(optarg, "append") == 0)
                o.initramfs = DI_INITRAMFS_APPEND;
            else {
                fprintf(stderr, "p2v-inject: --initramfs: '%s' is not auto, rebuild or append\n", optarg);
                return DI_USAGE;
            }
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
        default:
            usage(stderr);
            return DI_USAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "p2v-inject: %s\n", optind >= argc ? "no DISK given" : "one DISK only");
        usage(stderr);
        return DI_USAGE;
    }
    o.disk = argv[optind];
    o.verbose = verbose;
    p2v_log_adjust(verbose, quiet);

    enum di_status st = di_inject(&o, &r, &err);
    if (st != DI_OK) {
        p2v_error("%s", err.msg);
        if (json) {
            struct p2v_buf b = P2V_BUF_INIT;
            struct p2v_json j;
            p2v_json_init(&j, &b, true);
            p2v_json_object_begin(&j);
            p2v_json_kv_string(&j, "disk", o.disk);
            p2v_json_kv_string(&j, "error", err.msg);
            p2v_json_kv_i64(&j, "status", st);
            p2v_json_kv_u64(&j, "change_count", 0);
            p2v_json_object_end(&j);
            if (p2v_buf_cstr(&b))
                printf("%s\n", (char *)b.data);
            p2v_buf_release(&b);
        }
        return st;
    }
    if (json) {
        struct p2v_buf b = P2V_BUF_INIT;
        struct p2v_json j;
        p2v_json_init(&j, &b, true);
        di_report_json(r, &j);
        if (p2v_buf_cstr(&b))
            printf("%s\n", (char *)b.data);
        p2v_buf_release(&b);
    } else {
        di_report_print(r, stdout);
    }
    di_report_free(r);
    return fflush(stdout) == 0 ? DI_OK : DI_ERROR;
}
