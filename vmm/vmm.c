/* vmm.c: vmm_verify(): read the boot configuration, choose the engine, boot, decide.
 * The KVM engine is ours (kvm.c and the devices); the QEMU engine runs
 * qemu-system-x86_64 -accel tcg on the same kernel, initrd, command line and disk (through
 * a qcow2 overlay in a temporary folder, so the image is never written).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "diskfmt.h"

extern char **environ;

#define VMM_DEFAULT_MEMORY_MIB 1024
#define VMM_DEFAULT_TIMEOUT_S 300.0
#define VMM_MAX_RESETS 3           /* resets before the verdict is "reset loop" */
#define VMM_HOST_FILE_MAX (1ull << 30) /* --kernel / --initrd files: 1 GiB at most */
#define VMM_POLL_MS 50
#define VMM_QBOOT "/usr/share/qemu/qboot.rom"

const char *vmm_result_name(enum vmm_result r)
{
    switch (r) {
    case VMM_RESULT_SUCCESS: return "success";
    case VMM_RESULT_NO_BOOT_CONFIG: return "no-boot-config";
    case VMM_RESULT_KERNEL_MISSING: return "kernel-missing";
    case VMM_RESULT_PANIC: return "kernel-panic";
    case VMM_RESULT_ROOT_NOT_FOUND: return "root-not-found";
    case VMM_RESULT_RESET_LOOP: return "reset-loop";
    case VMM_RESULT_TIMEOUT: return "timeout";
    case VMM_RESULT_STOPPED: return "stopped";
    case VMM_RESULT_ENGINE_ERROR: return "engine-error";
    }
    return "unknown";
}

const char *vmm_engine_name(enum vmm_engine e)
{
    switch (e) {
    case VMM_ENGINE_AUTO: return "auto";
    case VMM_ENGINE_KVM: return "kvm";
    case VMM_ENGINE_QEMU: return "qemu-tcg";
    }
    return "unknown";
}

/* Copy @src into @dst of @n bytes, cut if need be. */
static void copy_str(char *dst, size_t n, const char *src)
{
    size_t l = strnlen(src, n - 1);
    memcpy(dst, src, l);
    dst[l] = 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ the boot material */

struct boot_material {
    uint8_t *kernel, *initrd;
    size_t kernel_len, initrd_len;
    char *cmdline; /* as the guest gets it */
};

static void material_release(struct boot_material *b)
{
    free(b->kernel);
    free(b->initrd);
    free(b->cmdline);
    memset(b, 0, sizeof *b);
}

static int read_host_file(const char *path, uint8_t **out, size_t *len, struct p2v_err *err)
{
    int r = -1;
    uint8_t *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return p2v_err_errno(err, "cannot open '%s'", path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        p2v_err_errno(err, "cannot stat '%s'", path);
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > VMM_HOST_FILE_MAX) {
        p2v_err_set(err, EINVAL, "'%s' is not a regular file of at most 1 GiB", path);
        goto out;
    }
    buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    if (!buf) {
        p2v_err_errno(err, "'%s'", path);
        goto out;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            p2v_err_set(err, n < 0 ? errno : EIO, "cannot read '%s' at offset %zu", path, got);
            goto out;
        }
        got += (size_t)n;
    }
    *out = buf;
    *len = got;
    buf = NULL;
    r = 0;
out:
    free(buf);
    close(fd);
    return r;
}

/* The guest's command line: the configuration's, without "quiet" and "splash" (the verdict
 * needs the kernel's log), with console=ttyS0 added unless it is there. */
static char *compose_cmdline(const char *base)
{
    struct p2v_buf b;
    p2v_buf_init(&b, VMM_CMDLINE_MAX);
    bool has_console = false;
    const char *p = base ? base : "";
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        const char *e = p;
        bool quoted = false;
        while (*e && (quoted || (*e != ' ' && *e != '\t'))) {
            if (*e == '"')
                quoted = !quoted;
            e++;
        }
        size_t n = (size_t)(e - p);
        bool drop = (n == 5 && !strncmp(p, "quiet", 5)) || (n == 6 && !strncmp(p, "splash", 6));
        if (n >= 13 && !strncmp(p, "console=ttyS0", 13))
            has_console = true;
        if (!drop) {
            if (b.len)
                p2v_buf_put(&b, " ", 1);
            p2v_buf_put(&b, p, n);
        }
        p = e;
    }
    if (!has_console)
        p2v_buf_printf(&b, "%sconsole=ttyS0,115200", b.len ? " " : "");
    char *s = strdup(p2v_buf_cstr(&b));
    p2v_buf_release(&b);
    return s;
}

/* Fill @b from the disk's boot configuration and the overrides; on failure set the verdict
 * (no boot configuration, kernel missing) and return -1. */
static int load_material(const struct vmm_opts *o, struct vmm_disk *disk,
                         struct boot_material *b, struct vmm_verdict *v)
{
    struct p2v_err e = {0};
    struct vmm_bootcfg cfg;
    memset(&cfg, 0, sizeof cfg);
    bool have_cfg = false;
    int r = -1;

    if (!o->kernel || !o->append) {
        if (vmm_bootcfg_find(vmm_disk_image(disk), &cfg, &e) == 0) {
            have_cfg = true;
            snprintf(v->config, sizeof v->config, "partition %d: %s (%s)", cfg.config_part,
                     cfg.config_path ? cfg.config_path : "?", cfg.loader ? cfg.loader : "?");
        } else if (!o->kernel) {
            v->result = (e.code == ENOENT && (strstr(e.msg, "kernel") || strstr(e.msg, "initrd")))
                            ? VMM_RESULT_KERNEL_MISSING
                            : VMM_RESULT_NO_BOOT_CONFIG;
            copy_str(v->reason, sizeof v->reason, e.msg);
            goto out;
        }
    }
    if (o->kernel) {
        if (read_host_file(o->kernel, &b->kernel, &b->kernel_len, &e) < 0) {
            v->result = VMM_RESULT_KERNEL_MISSING;
            copy_str(v->reason, sizeof v->reason, e.msg);
            goto out;
        }
        snprintf(v->kernel, sizeof v->kernel, "%s (host)", o->kernel);
    } else {
        b->kernel = cfg.kernel;
        b->kernel_len = cfg.kernel_len;
        cfg.kernel = NULL;
        snprintf(v->kernel, sizeof v->kernel, "partition %d: %s", cfg.kernel_part,
                 cfg.kernel_path ? cfg.kernel_path : "?");
    }
    if (o->initrd) {
        if (read_host_file(o->initrd, &b->initrd, &b->initrd_len, &e) < 0) {
            v->result = VMM_RESULT_KERNEL_MISSING;
            copy_str(v->reason, sizeof v->reason, e.msg);
            goto out;
        }
        snprintf(v->initrd, sizeof v->initrd, "%s (host)", o->initrd);
    } else if (!o->kernel && cfg.initrd) {
        b->initrd = cfg.initrd;
        b->initrd_len = cfg.initrd_len;
        cfg.initrd = NULL;
        snprintf(v->initrd, sizeof v->initrd, "partition %d: %s", cfg.kernel_part,
                 cfg.initrd_path ? cfg.initrd_path : "?");
    }
    if (vmm_bzimage_check(b->kernel, b->kernel_len, &e) < 0) {
        v->result = VMM_RESULT_KERNEL_MISSING;
        copy_str(v->reason, sizeof v->reason, e.msg);
        goto out;
    }
    b->cmdline = compose_cmdline(o->append ? o->append : have_cfg ? cfg.cmdline : "");
    if (!b->cmdline) {
        v->result = VMM_RESULT_ENGINE_ERROR;
        snprintf(v->reason, sizeof v->reason, "out of memory");
        goto out;
    }
    snprintf(v->cmdline, sizeof v->cmdline, "%s", b->cmdline);
    vmm_bzimage_version(b->kernel, b->kernel_len, v->kernel_version, sizeof v->kernel_version);
    r = 0;
out:
    vmm_bootcfg_release(&cfg);
    return r;
}

/* ------------------------------------------------------------------ console output */

struct console {
    struct vmm_scan scan;
    FILE *log;
    FILE *echo;
    double power_on;     /* set by the engine */
    double first_output; /* seconds from power-on, 0 until the first byte */
};

static void console_out(void *opaque, const uint8_t *p, size_t n)
{
    struct console *c = opaque;
    if (c->first_output == 0 && n)
        c->first_output = now_s() - c->power_on;
    if (c->log)
        fwrite(p, 1, n, c->log);
    if (c->echo) { /* unbuffered: a prompt has no newline */
        fwrite(p, 1, n, c->echo);
        fflush(c->echo);
    }
    vmm_scan_feed(&c->scan, p, n);
}

/* ---------------------------------------------------------------------- KVM engine */

static uint64_t guest_resident_kib(const struct vmm_mem *m)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t pages = (size_t)(m->size / (uint64_t)page);
    unsigned char *vec = malloc(pages);
    uint64_t n = 0;
    if (vec && mincore(m->host, m->size, vec) == 0)
        for (size_t i = 0; i < pages; i++)
            n += vec[i] & 1;
    free(vec);
    return n * (uint64_t)page / 1024;
}

static uint64_t self_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t kib = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %llu", (unsigned long long *)&kib) == 1)
            break;
    fclose(f);
    return kib;
}

struct stdin_pump {
    pthread_t thread;
    struct vmm_uart *uart;
    int quit_pipe[2];
    volatile int quit_requested;
};

static void *stdin_pump_thread(void *arg)
{
    struct stdin_pump *sp = arg;
    uint8_t buf[256];
    for (;;) {
        struct pollfd pf[2] = {{.fd = 0, .events = POLLIN}, {.fd = sp->quit_pipe[0], .events = POLLIN}};
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            break;
        if (pf[1].revents)
            break;
        if (!(pf[0].revents & (POLLIN | POLLHUP)))
            continue;
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] == 0x1d) { /* Ctrl-] leaves */
                sp->quit_requested = 1;
                return NULL;
            }
        vmm_uart_input(sp->uart, buf, (size_t)n);
    }
    return NULL;
}

/* One power-on of the KVM machine; returns the stop reason (or NONE on timeout/verdict). */
static int kvm_boot_once(const struct vmm_opts *o, const struct boot_material *b,
                         struct console *con, struct vmm_disk *disk, double deadline,
                         struct vmm_verdict *v, enum vmm_stop_reason *why,
                         struct p2v_err *err)
{
    int r = -1;
    struct vmm_vm vm;
    struct vmm_pci pci;
    struct vmm_virtio_blk *blk = NULL;
    struct vmm_uart *uart = NULL;
    struct vmm_loaded loaded;
    struct stdin_pump pump = {.quit_pipe = {-1, -1}};
    bool pumping = false;
    struct termios saved_tio;
    bool tio_saved = false;

    *why = VMM_STOP_NONE;
    memset(&pci, 0, sizeof pci);
    if (vmm_vm_create(&vm, o->memory_mib << 20, o->cpus, err) < 0)
        goto out;
    if (vmm_boot_load(&vm.mem, b->kernel, b->kernel_len, b->initrd, b->initrd_len, b->cmdline,
                      &loaded, err) < 0 ||
        vmm_mptable_write(&vm.mem, o->cpus, err) < 0)
        goto out;
    if (vmm_pci_init(&pci, &vm.pio, &vm.mmio, err) < 0)
        goto out;
    blk = vmm_virtio_blk_new(disk, &vm.mem, &vm.irq, err);
    if (!blk || vmm_pci_add(&pci, vmm_virtio_blk_pci(blk), err) < 0)
        goto out;
    uart = vmm_uart_new(0x3f8, VMM_GSI_COM1, &vm.irq, console_out, con, err);
    if (!uart || vmm_uart_attach(uart, &vm.pio, err) < 0)
        goto out;
    if (vmm_rtc_attach(&vm.pio, vm.mem.size, err) < 0 ||
        vmm_misc_attach(&vm.pio, &vm.stop, err) < 0)
        goto out;
    if (vmm_vm_setup_boot(&vm, &loaded, err) < 0)
        goto out;
    if (o->interactive) {
        if (pipe(pump.quit_pipe) < 0) {
            p2v_err_errno(err, "pipe");
            goto out;
        }
        if (isatty(0) && tcgetattr(0, &saved_tio) == 0) {
            struct termios raw = saved_tio;
            cfmakeraw(&raw);
            raw.c_oflag |= OPOST | ONLCR;
            tcsetattr(0, TCSANOW, &raw);
            tio_saved = true;
        }
        pump.uart = uart;
        if (pthread_create(&pump.thread, NULL, stdin_pump_thread, &pump) == 0)
            pumping = true;
    }
    con->power_on = now_s();
    if (vmm_vm_start(&vm, err) < 0)
        goto out;

    for (;;) {
        struct timespec ts = {0, VMM_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&vm.stop.lock);
        enum vmm_stop_reason sr = vm.stop.reason;
        pthread_mutex_unlock(&vm.stop.lock);
        if (sr != VMM_STOP_NONE) {
            *why = sr;
            break;
        }
        if (vm.error[0] || pump.quit_requested)
            break;
        if (!o->until_poweroff && con->scan.state == VMM_SCAN_DONE)
            break;
        if (deadline > 0 && now_s() >= deadline)
            break;
    }
    vmm_vm_kick(&vm);
    vmm_vm_join(&vm);
    if (vm.error[0]) {
        p2v_err_set(err, EIO, "%s", vm.error);
        goto out;
    }
    v->exits += vmm_vm_exits(&vm);
    struct vmm_virtio_blk_stats st;
    vmm_virtio_blk_stats(blk, &st);
    v->disk_read_bytes += st.read_bytes;
    v->disk_requests += st.requests;
    uint64_t rss = self_rss_kib(), guest = guest_resident_kib(&vm.mem);
    v->vmm_rss_kib = rss > guest ? rss - guest : 0;
    r = 0;
out:
    if (pumping) {
        if (write(pump.quit_pipe[1], "q", 1) < 0)
            p2v_debug("stdin pump: %s", strerror(errno));
        pthread_join(pump.thread, NULL);
    }
    if (tio_saved)
        tcsetattr(0, TCSANOW, &saved_tio);
    if (pump.quit_pipe[0] >= 0) {
        close(pump.quit_pipe[0]);
        close(pump.quit_pipe[1]);
    }
    vmm_vm_destroy(&vm);
    vmm_virtio_blk_free(blk);
    vmm_uart_free(uart);
    return r;
}

static int run_kvm(const struct vmm_opts *o, const struct boot_material *b, struct console *con,
                   struct vmm_disk *disk, struct vmm_verdict *v, struct p2v_err *err)
{
    double start = now_s();
    double deadline = o->timeout_s > 0 ? start + o->timeout_s : 0;
    for (;;) {
        enum vmm_stop_reason why;
        struct p2v_err e = {0};
        if (kvm_boot_once(o, b, con, disk, deadline, v, &why, &e) < 0) {
            /* the guest's own inputs (kernel, initrd size) are errors of the run; KVM
             * failures after power-on are a verdict */
            if (con->scan.bytes == 0 && v->exits == 0 && e.code != EIO) {
                *err = e;
                return -1;
            }
            vmm_scan_finish(&con->scan, VMM_RESULT_ENGINE_ERROR);
            copy_str(v->reason, sizeof v->reason, e.msg);
            break;
        }
        if (why == VMM_STOP_RESET && con->scan.state != VMM_SCAN_DONE) {
            v->resets++;
            if (v->resets >= VMM_MAX_RESETS) {
                vmm_scan_finish(&con->scan, VMM_RESULT_RESET_LOOP);
                break;
            }
            p2v_info("the guest reset (%u); powering it on again", v->resets);
            continue;
        }
        if (why == VMM_STOP_POWEROFF || why == VMM_STOP_RESET)
            vmm_scan_finish(&con->scan, o->until_poweroff && why == VMM_STOP_POWEROFF
                                            ? VMM_RESULT_SUCCESS
                                            : why == VMM_STOP_RESET ? VMM_RESULT_RESET_LOOP
                                                                    : VMM_RESULT_STOPPED);
        else
            vmm_scan_finish(&con->scan, VMM_RESULT_TIMEOUT);
        break;
    }
    v->seconds = now_s() - start;
    return 0;
}

/* --------------------------------------------------------------------- QEMU engine */

static const char *qemu_format(const char *ours)
{
    if (!strcmp(ours, "vhd"))
        return "vpc";
    return ours; /* raw, qcow2, vmdk, vhdx */
}

static int write_file(const char *path, const uint8_t *p, size_t n, struct p2v_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return p2v_err_errno(err, "cannot create '%s'", path);
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        if (w <= 0) {
            close(fd);
            return p2v_err_errno(err, "cannot write '%s'", path);
        }
        done += (size_t)w;
    }
    if (close(fd) < 0)
        return p2v_err_errno(err, "cannot write '%s'", path);
    return 0;
}

static int run_wait(char *const argv[], struct p2v_err *err)
{
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ);
    if (rc) {
        errno = rc;
        return p2v_err_errno(err, "cannot run '%s'", argv[0]);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st))
        return p2v_err_set(err, EIO, "'%s' failed (status %d)", argv[0], st);
    return 0;
}

static void rm_tree(const char *dir, const char *const names[], size_t n)
{
    char p[PATH_MAX + 64];
    for (size_t i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static int run_qemu(const struct vmm_opts *o, const struct boot_material *b,
                    struct console *con, const char *fmt, struct vmm_verdict *v,
                    struct p2v_err *err)
{
    static const char *const files[] = {"kernel", "initrd", "overlay.qcow2", "qemu.err"};
    int r = -1;
    char dir[PATH_MAX], kpath[PATH_MAX + 32], ipath[PATH_MAX + 32], opath[PATH_MAX + 32],
        epath[PATH_MAX + 32];
    char abs_disk[PATH_MAX], mem[32], smp[16], drive[PATH_MAX + 96];
    const char *tmp = getenv("TMPDIR");
    pid_t pid = -1;
    int pfd[2] = {-1, -1}, efd = -1;
    double start = now_s();

    snprintf(dir, sizeof dir, "%s/p2v-vmm.XXXXXX", tmp && *tmp ? tmp : "/var/tmp");
    if (!mkdtemp(dir))
        return p2v_err_errno(err, "cannot create a temporary folder '%s'", dir);
    snprintf(kpath, sizeof kpath, "%s/kernel", dir);
    snprintf(ipath, sizeof ipath, "%s/initrd", dir);
    snprintf(opath, sizeof opath, "%s/overlay.qcow2", dir);
    snprintf(epath, sizeof epath, "%s/qemu.err", dir);
    if (!realpath(o->disk, abs_disk)) {
        p2v_err_errno(err, "'%s'", o->disk);
        goto out;
    }
    if (write_file(kpath, b->kernel, b->kernel_len, err) < 0 ||
        (b->initrd && write_file(ipath, b->initrd, b->initrd_len, err) < 0))
        goto out;
    /* the overlay takes every write; the image stays as it is */
    {
        char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", "-F",
                        (char *)qemu_format(fmt), "-b", abs_disk, opath, NULL};
        if (run_wait(argv, err) < 0) {
            p2v_err_prefix(err, "overlay for '%s'", o->disk);
            goto out;
        }
    }
    snprintf(mem, sizeof mem, "%llu", (unsigned long long)o->memory_mib);
    snprintf(smp, sizeof smp, "%u", o->cpus);
    snprintf(drive, sizeof drive, "file=%s,format=qcow2,if=none,id=d0", opath);
    const char *qemu = o->qemu ? o->qemu : "qemu-system-x86_64";
    char *argv[40];
    int a = 0;
    argv[a++] = (char *)qemu;
    argv[a++] = "-accel";
    argv[a++] = "tcg";
    argv[a++] = "-m";
    argv[a++] = mem;
    argv[a++] = "-smp";
    argv[a++] = smp;
    argv[a++] = "-nodefaults";
    argv[a++] = "-display";
    argv[a++] = "none";
    argv[a++] = "-no-reboot";
    argv[a++] = "-monitor";
    argv[a++] = "none";
    argv[a++] = "-serial";
    argv[a++] = "stdio";
    /* qboot (QEMU's minimal firmware for direct kernel boot) starts the kernel about a
     * second sooner than SeaBIOS under TCG */
    if (access(VMM_QBOOT, R_OK) == 0) {
        argv[a++] = "-bios";
        argv[a++] = VMM_QBOOT;
    }
    argv[a++] = "-kernel";
    argv[a++] = kpath;
    if (b->initrd) {
        argv[a++] = "-initrd";
        argv[a++] = ipath;
    }
    argv[a++] = "-append";
    argv[a++] = b->cmdline;
    argv[a++] = "-drive";
    argv[a++] = drive;
    argv[a++] = "-device";
    argv[a++] = "virtio-blk-pci,drive=d0";
    argv[a] = NULL;

    if (o->interactive) {
        /* the terminal is QEMU's: no verdict scanning, the console goes straight through */
        pid_t p;
        int rc = posix_spawnp(&p, qemu, NULL, NULL, argv, environ);
        if (rc) {
            errno = rc;
            p2v_err_errno(err, "cannot run '%s'", qemu);
            goto out;
        }
        int st;
        while (waitpid(p, &st, 0) < 0 && errno == EINTR)
            ;
        vmm_scan_finish(&con->scan, VMM_RESULT_STOPPED);
        v->seconds = now_s() - start;
        r = 0;
        goto out;
    }

    if (pipe2(pfd, O_CLOEXEC) < 0) {
        p2v_err_errno(err, "pipe");
        goto out;
    }
    efd = open(epath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (efd < 0) {
        p2v_err_errno(err, "cannot create '%s'", epath);
        goto out;
    }
    con->power_on = now_s();
    pid_t parent = getpid();
    pid = fork();
    if (pid == 0) {
        /* QEMU dies with the thread that runs it: a verifier that is killed (a server
         * restarted in the middle of a verification) leaves no guest running */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int nul = open("/dev/null", O_RDONLY);
        if (nul < 0 || dup2(nul, 0) < 0 || dup2(pfd[1], 1) < 0 || dup2(efd, 2) < 0)
            _exit(127);
        execvp(qemu, argv);
        _exit(127);
    }
    if (pid < 0) {
        pid = -1;
        p2v_err_errno(err, "cannot run '%s'", qemu);
        goto out;
    }
    close(pfd[1]);
    pfd[1] = -1;

    double deadline = o->timeout_s > 0 ? start + o->timeout_s : 0;
    bool eof = false;
    while (!eof) {
        int ms = VMM_POLL_MS;
        struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
        int n = poll(&pf, 1, ms);
        if (n > 0) {
            uint8_t buf[4096];
            ssize_t got = read(pfd[0], buf, sizeof buf);
            if (got > 0)
                console_out(con, buf, (size_t)got);
            else if (got == 0 || errno != EINTR)
                eof = true;
        }
        if (!o->until_poweroff && con->scan.state == VMM_SCAN_DONE)
            break;
        if (deadline > 0 && now_s() >= deadline)
            break;
    }
    int st = 0;
    if (!eof) {
        kill(pid, SIGKILL);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        vmm_scan_finish(&con->scan, VMM_RESULT_TIMEOUT);
    } else {
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            char msg[256] = "";
            int fd = open(epath, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                ssize_t got = read(fd, msg, sizeof msg - 1);
                msg[got > 0 ? got : 0] = 0;
                close(fd);
                char *nl = strchr(msg, '\n');
                if (nl)
                    *nl = 0;
            }
            vmm_scan_finish(&con->scan, VMM_RESULT_ENGINE_ERROR);
            snprintf(v->reason, sizeof v->reason, "%s exited with status %d: %s", qemu,
                     WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), msg);
        } else {
            /* -no-reboot: QEMU ends on the guest's reset or power-off */
            vmm_scan_finish(&con->scan, con->scan.powered_off_text || o->until_poweroff
                                            ? (o->until_poweroff ? VMM_RESULT_SUCCESS
                                                                 : VMM_RESULT_STOPPED)
                                            : VMM_RESULT_RESET_LOOP);
            if (!con->scan.powered_off_text && !o->until_poweroff)
                v->resets++;
        }
    }
    pid = -1;
    v->seconds = now_s() - start;
    r = 0;
out:
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (pfd[1] >= 0)
        close(pfd[1]);
    if (efd >= 0)
        close(efd);
    rm_tree(dir, files, sizeof files / sizeof files[0]);
    return r;
}

/* --------------------------------------------------------------------------- verify */

static void fill_reason(struct vmm_verdict *v, const struct vmm_scan *s, double timeout)
{
    if (v->reason[0])
        return;
    switch (v->result) {
    case VMM_RESULT_SUCCESS:
        snprintf(v->reason, sizeof v->reason, "root file system mounted from %s; console: %.400s",
                 s->root_device[0] ? s->root_device : "(the guest powered off)", s->matched);
        break;
    case VMM_RESULT_ROOT_NOT_FOUND:
        if (s->failure_line[0])
            snprintf(v->reason, sizeof v->reason, "%s", s->failure_line);
        else
            snprintf(v->reason, sizeof v->reason,
                     "the console showed '%.200s' but the kernel never mounted a file system "
                     "from a virtio disk",
                     s->matched);
        break;
    case VMM_RESULT_PANIC:
        snprintf(v->reason, sizeof v->reason, "%s", s->failure_line);
        break;
    case VMM_RESULT_TIMEOUT:
        snprintf(v->reason, sizeof v->reason,
                 "nothing decisive within %.0f s (root from virtio: %s; expected text: %s)",
                 timeout, s->root_virtio ? "seen" : "not seen",
                 s->expect_seen ? "seen" : "not seen");
        break;
    case VMM_RESULT_RESET_LOOP:
        snprintf(v->reason, sizeof v->reason, "the guest reset %u time(s) before it came up",
                 v->resets);
        break;
    case VMM_RESULT_STOPPED:
        snprintf(v->reason, sizeof v->reason, "the guest powered off before it came up");
        break;
    default:
        snprintf(v->reason, sizeof v->reason, "%s", vmm_result_name(v->result));
        break;
    }
}

int vmm_verify(const struct vmm_opts *oin, struct vmm_verdict *v, struct p2v_err *err)
{
    int r = -1;
    struct vmm_opts o = *oin;
    struct vmm_disk *disk = NULL;
    struct boot_material b;
    struct console con;
    bool scan_ok = false;
    memset(&b, 0, sizeof b);
    memset(&con, 0, sizeof con);
    memset(v, 0, sizeof *v);

    if (!o.disk)
        return p2v_err_set(err, EINVAL, "no disk given");
    if (!o.memory_mib)
        o.memory_mib = VMM_DEFAULT_MEMORY_MIB;
    if (!o.cpus)
        o.cpus = 1;
    if (o.timeout_s < 0)
        return p2v_err_set(err, EINVAL, "timeout of %g s", o.timeout_s);
    if (o.memory_mib < (VMM_RAM_MIN >> 20) || o.memory_mib > (VMM_RAM_MAX >> 20) ||
        o.memory_mib % 2)
        return p2v_err_set(err, EINVAL, "--memory %llu: 16 to 3072 MiB, an even number",
                           (unsigned long long)o.memory_mib);
    if (o.cpus > VMM_MAX_CPUS)
        return p2v_err_set(err, EINVAL, "--cpus %u: at most %d", o.cpus, VMM_MAX_CPUS);
    if (vmm_scan_init(&con.scan, o.expect, err) < 0)
        return -1;
    scan_ok = true;
    if (o.log_path) {
        con.log = fopen(o.log_path, "a");
        if (!con.log) {
            p2v_err_errno(err, "cannot open the log '%s'", o.log_path);
            goto out;
        }
    }
    con.echo = o.echo;

    disk = vmm_disk_open(o.disk, o.format, err);
    if (!disk)
        goto out;

    double t0 = now_s();
    if (load_material(&o, disk, &b, v) < 0) {
        v->engine = o.engine == VMM_ENGINE_AUTO ? VMM_ENGINE_QEMU : o.engine;
        r = 0;
        goto out;
    }
    v->load_seconds = now_s() - t0;
    /* the time limit counts from the command's start: reading the boot files is in it */
    double timeout = o.timeout_s;
    if (o.timeout_s > 0)
        o.timeout_s = o.timeout_s - v->load_seconds > 0.1 ? o.timeout_s - v->load_seconds : 0.1;
    if (b.initrd_len >= (o.memory_mib << 20) / 2) {
        p2v_err_set(err, EFBIG, "the initrd (%zu MiB) does not fit in %llu MiB of guest memory "
                    "(it must stay under half of it; see --memory)",
                    b.initrd_len >> 20, (unsigned long long)o.memory_mib);
        goto out;
    }

    enum vmm_engine engine = o.engine;
    if (engine == VMM_ENGINE_AUTO) {
        vmm_calibrate(&v->cal);
        engine = v->cal.fast ? VMM_ENGINE_KVM : VMM_ENGINE_QEMU;
    } else if (engine == VMM_ENGINE_KVM) {
        struct p2v_err e;
        if (vmm_kvm_available(&e) < 0) {
            p2v_err_set(err, e.code, "--engine kvm: %s", e.msg);
            goto out;
        }
        v->cal.kvm_present = true;
        snprintf(v->cal.note, sizeof v->cal.note, "not calibrated (--engine kvm)");
    } else {
        snprintf(v->cal.note, sizeof v->cal.note, "not calibrated (--engine qemu)");
    }
    v->engine = engine;
    int rc = engine == VMM_ENGINE_KVM
                 ? run_kvm(&o, &b, &con, disk, v, err)
                 : run_qemu(&o, &b, &con, vmm_disk_format(disk), v, err);
    if (rc < 0)
        goto out;
    v->result = con.scan.result;
    v->console_bytes = con.scan.bytes;
    v->first_output_s = con.first_output;
    v->overlay_bytes = vmm_disk_overlay_bytes(disk);
    snprintf(v->matched, sizeof v->matched, "%s", con.scan.matched);
    snprintf(v->root_line, sizeof v->root_line, "%s", con.scan.root_line);
    snprintf(v->root_device, sizeof v->root_device, "%s", con.scan.root_device);
    unsigned n = con.scan.last_n < VMM_VERDICT_LINES ? con.scan.last_n : VMM_VERDICT_LINES;
    for (unsigned i = 0; i < n; i++) {
        unsigned idx = (con.scan.last_head + VMM_SCAN_LAST_LINES - n + i) % VMM_SCAN_LAST_LINES;
        snprintf(v->last_lines[i], sizeof v->last_lines[i], "%s", con.scan.last[idx]);
    }
    v->n_last = n;
    fill_reason(v, &con.scan, timeout);
    r = 0;
out:
    if (con.log)
        fclose(con.log);
    if (con.echo)
        fflush(con.echo);
    if (scan_ok)
        vmm_scan_release(&con.scan);
    material_release(&b);
    if (disk)
        vmm_disk_close(disk);
    return r;
}

int vmm_inspect(const struct vmm_opts *o, struct vmm_verdict *v, const char *extract_dir,
                struct p2v_err *err)
{
    int r = -1;
    struct boot_material b;
    char path[PATH_MAX];
    memset(&b, 0, sizeof b);
    memset(v, 0, sizeof *v);
    if (!o->disk)
        return p2v_err_set(err, EINVAL, "no disk given");
    struct vmm_disk *disk = vmm_disk_open(o->disk, o->format, err);
    if (!disk)
        return -1;
    if (load_material(o, disk, &b, v) < 0) {
        r = 0; /* the verdict says what is missing */
        goto out;
    }
    v->result = VMM_RESULT_SUCCESS;
    snprintf(v->reason, sizeof v->reason, "bootable: %s", v->kernel);
    if (extract_dir) {
        if (mkdir(extract_dir, 0755) < 0 && errno != EEXIST) {
            p2v_err_errno(err, "cannot create '%s'", extract_dir);
            goto out;
        }
        snprintf(path, sizeof path, "%s/kernel", extract_dir);
        if (write_file(path, b.kernel, b.kernel_len, err) < 0)
            goto out;
        if (b.initrd) {
            snprintf(path, sizeof path, "%s/initrd", extract_dir);
            if (write_file(path, b.initrd, b.initrd_len, err) < 0)
                goto out;
        }
        snprintf(path, sizeof path, "%s/cmdline", extract_dir);
        if (write_file(path, (const uint8_t *)b.cmdline, strlen(b.cmdline), err) < 0)
            goto out;
    }
    r = 0;
out:
    material_release(&b);
    vmm_disk_close(disk);
    return r;
}

void vmm_calibration_json(const struct vmm_calibration *c, struct p2v_json *j)
{
    p2v_json_object_begin(j);
    p2v_json_kv_bool(j, "kvm_present", c->kvm_present);
    p2v_json_kv_bool(j, "fast", c->fast);
    p2v_json_kv_double(j, "mips", c->mips);
    p2v_json_kv_double(j, "exit_us", c->exit_us);
    p2v_json_kv_string(j, "note", c->note);
    p2v_json_kv_string(j, "engine", c->fast ? "kvm" : "qemu-tcg");
    p2v_json_object_end(j);
}

void vmm_verdict_json(const struct vmm_verdict *v, const struct vmm_opts *o, struct p2v_json *j)
{
    p2v_json_object_begin(j);
    p2v_json_kv_string(j, "verdict", v->result == VMM_RESULT_SUCCESS ? "success" : "failure");
    p2v_json_kv_string(j, "result", vmm_result_name(v->result));
    p2v_json_kv_string(j, "reason", v->reason);
    p2v_json_kv_string(j, "disk", o->disk);
    p2v_json_kv_string(j, "engine", vmm_engine_name(v->engine));
    p2v_json_key(j, "calibration");
    vmm_calibration_json(&v->cal, j);
    p2v_json_kv_double(j, "seconds", v->seconds);
    p2v_json_kv_double(j, "load_seconds", v->load_seconds);
    p2v_json_key(j, "boot");
    p2v_json_object_begin(j);
    p2v_json_kv_string(j, "config", v->config);
    p2v_json_kv_string(j, "kernel", v->kernel);
    p2v_json_kv_string(j, "kernel_version", v->kernel_version);
    p2v_json_kv_string(j, "initrd", v->initrd);
    p2v_json_kv_string(j, "cmdline", v->cmdline);
    p2v_json_object_end(j);
    p2v_json_kv_string(j, "root_device", v->root_device);
    p2v_json_kv_string(j, "root_line", v->root_line);
    p2v_json_kv_string(j, "matched", v->matched);
    p2v_json_key(j, "last_lines");
    p2v_json_array_begin(j);
    for (unsigned i = 0; i < v->n_last; i++)
        p2v_json_string(j, v->last_lines[i]);
    p2v_json_array_end(j);
    p2v_json_key(j, "figures");
    p2v_json_object_begin(j);
    p2v_json_kv_u64(j, "console_bytes", v->console_bytes);
    p2v_json_kv_double(j, "first_output_seconds", v->first_output_s);
    p2v_json_kv_u64(j, "exits", v->exits);
    p2v_json_kv_u64(j, "disk_requests", v->disk_requests);
    p2v_json_kv_u64(j, "disk_read_bytes", v->disk_read_bytes);
    p2v_json_kv_u64(j, "overlay_bytes", v->overlay_bytes);
    p2v_json_kv_u64(j, "vmm_rss_kib", v->vmm_rss_kib);
    p2v_json_kv_u64(j, "resets", v->resets);
    p2v_json_object_end(j);
    p2v_json_object_end(j);
}
