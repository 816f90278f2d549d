/* verdict.c: the console scanner. Both engines feed it the guest's serial output; it keeps
 * the last lines and decides: success when the expected pattern has been seen and the
 * kernel has mounted a file system from a virtio disk (vdX); a named failure on a kernel
 * panic, an initramfs that cannot find the root, or when the engine reports a stop.
 */
#include <errno.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

const char vmm_default_expect[] =
    "(^|[^A-Za-z])login: *$|P2VKIT-[A-Z0-9-]+-READY";

/* The kernel's lines about mounting a file system from a virtio disk. */
static const char *const root_patterns[] = {
    "EXT[234]-fs \\((vd[a-z]+[0-9]*)\\): mounted filesystem",
    "XFS \\((vd[a-z]+[0-9]*)\\): (Ending clean mount|Mounting V)",
    "BTRFS info \\(device (vd[a-z]+[0-9]*)\\)",
    "F2FS-fs \\((vd[a-z]+[0-9]*)\\): Mounted",
};

/* Initramfs and kernel messages that say the root device is not there. */
static const char *const missing_patterns[] = {
    "ALERT!.*(does not exist|not found)",
    "Gave up waiting for root",
    "VFS: Unable to mount root fs",
    "Cannot open root device",
    "Warning: .* does not exist",
    "Could not boot",
};

static const char *const panic_pattern = "Kernel panic - not syncing";
static const char *const poweroff_patterns[] = {
    "reboot: Power down",
    "reboot: System halted",
};

#define N_ROOT (sizeof root_patterns / sizeof root_patterns[0])
#define N_MISSING (sizeof missing_patterns / sizeof missing_patterns[0])
#define N_POWEROFF (sizeof poweroff_patterns / sizeof poweroff_patterns[0])

/* Compiled once; the patterns are constant. */
static regex_t root_re[N_ROOT], missing_re[N_MISSING];
static pthread_once_t compile_once = PTHREAD_ONCE_INIT;
static int compile_status;

static void compile_patterns(void)
{
    for (size_t i = 0; i < N_ROOT; i++)
        compile_status |= regcomp(&root_re[i], root_patterns[i], REG_EXTENDED);
    for (size_t i = 0; i < N_MISSING; i++)
        compile_status |= regcomp(&missing_re[i], missing_patterns[i], REG_EXTENDED | REG_NOSUB);
}

int vmm_scan_init(struct vmm_scan *s, const char *expect, struct p2v_err *err)
{
    memset(s, 0, sizeof *s);
    pthread_once(&compile_once, compile_patterns);
    if (compile_status)
        return p2v_err_set(err, EINVAL, "internal: a built-in console pattern does not compile");
    regex_t *re = malloc(sizeof *re);
    if (!re)
        return p2v_err_errno(err, "expected pattern");
    int rc = regcomp(re, expect ? expect : vmm_default_expect, REG_EXTENDED | REG_NOSUB);
    if (rc) {
        char msg[128];
        regerror(rc, re, msg, sizeof msg);
        free(re);
        return p2v_err_set(err, EINVAL, "expected pattern '%s': %s", expect, msg);
    }
    s->expect_re = re;
    s->result = VMM_RESULT_TIMEOUT;
    pthread_mutex_init(&s->lock, NULL);
    return 0;
}

void vmm_scan_release(struct vmm_scan *s)
{
    if (s->expect_re) {
        regfree(s->expect_re);
        free(s->expect_re);
        s->expect_re = NULL;
        pthread_mutex_destroy(&s->lock);
    }
}

static void copy_line(char *dst, const char *src)
{
    snprintf(dst, VMM_SCAN_LINE_MAX, "%s", src);
}

static void decide(struct vmm_scan *s, enum vmm_result r)
{
    if (s->state == VMM_SCAN_DONE)
        return;
    s->state = VMM_SCAN_DONE;
    s->result = r;
}

/* The expected pattern in @line (a whole line, or the partial last line: a prompt). */
static void check_expect(struct vmm_scan *s, const char *line)
{
    if (s->expect_seen || regexec(s->expect_re, line, 0, NULL, 0) != 0)
        return;
    s->expect_seen = true;
    copy_line(s->matched, line);
    if (s->root_virtio)
        decide(s, VMM_RESULT_SUCCESS);
    else
        /* user space came up, but not from a virtio disk as far as the kernel said */
        decide(s, VMM_RESULT_ROOT_NOT_FOUND);
}

static void end_line(struct vmm_scan *s)
{
    s->line[s->line_len] = 0;
    const char *line = s->line;
    copy_line(s->last[s->last_head], line);
    s->last_head = (s->last_head + 1) % VMM_SCAN_LAST_LINES;
    if (s->last_n < VMM_SCAN_LAST_LINES)
        s->last_n++;

    if (s->state == VMM_SCAN_DONE)
        goto out;
    regmatch_t m[2];
    for (size_t i = 0; !s->root_virtio && i < N_ROOT; i++) {
        if (regexec(&root_re[i], line, 2, m, 0) == 0 && m[1].rm_so >= 0) {
            size_t n = (size_t)(m[1].rm_eo - m[1].rm_so);
            if (n >= sizeof s->root_device)
                n = sizeof s->root_device - 1;
            memcpy(s->root_device, line + m[1].rm_so, n);
            s->root_device[n] = 0;
            s->root_virtio = true;
            copy_line(s->root_line, line);
        }
    }
    for (size_t i = 0; i < N_MISSING; i++) {
        if (regexec(&missing_re[i], line, 0, NULL, 0) == 0) {
            s->root_missing = true;
            copy_line(s->failure_line, line);
            decide(s, VMM_RESULT_ROOT_NOT_FOUND);
            goto out;
        }
    }
    if (strstr(line, panic_pattern)) {
        s->panic = true;
        copy_line(s->failure_line, line);
        decide(s, strstr(line, "Unable to mount root") || s->root_missing
                      ? VMM_RESULT_ROOT_NOT_FOUND
                      : VMM_RESULT_PANIC);
        goto out;
    }
    for (size_t i = 0; i < N_POWEROFF; i++)
        if (strstr(line, poweroff_patterns[i]))
            s->powered_off_text = true;
    check_expect(s, line);
out:
    s->line_len = 0;
}

bool vmm_scan_feed(struct vmm_scan *s, const uint8_t *p, size_t n)
{
    pthread_mutex_lock(&s->lock);
    s->bytes += n;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (s->in_escape) { /* ESC [ params final-byte */
            if (c >= 0x40 && c <= 0x7e && c != '[')
                s->in_escape = false;
            continue;
        }
        if (c == 0x1b) {
            s->in_escape = true;
            continue;
        }
        if (c == '\n') {
            end_line(s);
            continue;
        }
        if (c == '\r' || c == 0)
            continue;
        if (c == '\t')
            c = ' ';
        if (c < 0x20 || c == 0x7f)
            c = '?';
        s->line[s->line_len++] = (char)c;
        if (s->line_len >= VMM_SCAN_LINE_MAX - 1)
            end_line(s);
    }
    if (s->line_len && s->state != VMM_SCAN_DONE) {
        s->line[s->line_len] = 0;
        check_expect(s, s->line);
    }
    bool done = s->state == VMM_SCAN_DONE;
    pthread_mutex_unlock(&s->lock);
    return done;
}

void vmm_scan_finish(struct vmm_scan *s, enum vmm_result why)
{
    pthread_mutex_lock(&s->lock);
    if (s->line_len) { /* keep the partial last line */
        s->line[s->line_len] = 0;
        copy_line(s->last[s->last_head], s->line);
        s->last_head = (s->last_head + 1) % VMM_SCAN_LAST_LINES;
        if (s->last_n < VMM_SCAN_LAST_LINES)
            s->last_n++;
        s->line_len = 0;
    }
    decide(s, why);
    pthread_mutex_unlock(&s->lock);
}
