/* vmconfig.c: what a VM configuration is made of — the spec read from a captured machine's
 * facts (validated: every value comes from the network), the names and escapes that keep
 * that text harmless in file names, XML, shell and .vmx files, and the configuration
 * texts themselves (libvirt domain XML, the QEMU script, the .vmx, the OVF envelope),
 * built in memory. Writing files, converting disks and packing the OVA are ova.c's.
 *
 * References: libvirt's domain XML format (formatdomain); QEMU's invocation docs; the
 * VMware .vmx keys as VMware products write them; DMTF DSP0243 (OVF 1.0) with the CIM
 * RASD / VSSD schemas (DSP8023 ...) for the VirtualHardwareSection items, whose members
 * the schemas order alphabetically.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "diskfmt.h"
#include "server.h"
#include "vmconfig.h"

/* ---------------------------------------------------------------- spec */

void vm_spec_init(struct vm_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    snprintf(spec->name, sizeof spec->name, "vm");
    spec->cpus = VM_DEFAULT_CPUS;
    spec->memory_mib = VM_DEFAULT_MEMORY_MIB;
    spec->firmware = VM_FW_BIOS;
    spec->os_64bit = true;
}

void vm_spec_release(struct vm_spec *spec)
{
    for (unsigned i = 0; i < spec->ndisks; i++)
        free(spec->disks[i].path);
    free(spec->title);
    vm_spec_init(spec);
}

void vmconfig_sanitise_name(const char *in, char *out, size_t size)
{
    size_t n = 0, max = P2V_MIN(size ? size - 1 : 0, (size_t)VM_NAME_MAX);
    if (size == 0)
        return;
    for (const char *p = in ? in : ""; *p && n < max; p++) {
        unsigned char c = (unsigned char)*p;
        bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
        if (n == 0 && (c == '.' || c == '-'))
            continue; /* no hidden files, nothing that reads as an option */
        /* one '_' for a run of unsafe bytes (a UTF-8 character is one run) */
        if (!keep && n > 0 && out[n - 1] == '_')
            continue;
        out[n++] = keep ? (char)c : '_';
    }
    out[n] = '\0';
    if (n == 0)
        snprintf(out, size, "%s", size > 2 ? "vm" : "");
}

int vm_spec_set_name(struct vm_spec *spec, const char *title, struct p2v_err *err)
{
    char *t = NULL;
    if (title && !(t = strdup(title)))
        return p2v_err_set(err, ENOMEM, "out of memory");
    free(spec->title);
    spec->title = t;
    vmconfig_sanitise_name(title, spec->name, sizeof spec->name);
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int vm_mac_parse(const char *s, char out[18], struct p2v_err *err)
{
    uint8_t m[6];
    if (!s || strlen(s) != 17)
        return p2v_err_set(err, EINVAL, "MAC address '%.40s' is not six hex pairs (xx:xx:...)",
                           s ? s : "");
    for (int i = 0; i < 6; i++) {
        int hi = hexval(s[3 * i]), lo = hexval(s[3 * i + 1]);
        char sep = i < 5 ? s[3 * i + 2] : '\0';
        if (hi < 0 || lo < 0 || (i < 5 && sep != ':' && sep != '-') ||
            (i < 5 && sep != s[2]))
            return p2v_err_set(err, EINVAL,
                               "MAC address '%s' is not six hex pairs (xx:xx:...)", s);
        m[i] = (uint8_t)(hi << 4 | lo);
    }
    if (m[0] & 1)
        return p2v_err_set(err, EINVAL, "MAC address '%s' is multicast", s);
    if (!(m[0] | m[1] | m[2] | m[3] | m[4] | m[5]))
        return p2v_err_set(err, EINVAL, "MAC address '%s' is all zeros", s);
    snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
    return 0;
}

int vm_mac_random(char out[18], struct p2v_err *err)
{
    uint8_t r[3];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return p2v_err_errno(err, "cannot make a MAC address: getrandom");
        }
        got += (size_t)n;
    }
    snprintf(out, 18, "52:54:00:%02x:%02x:%02x", r[0], r[1], r[2]);
    return 0;
}

int vm_spec_add_nic(struct vm_spec *spec, const char *mac, struct p2v_err *err)
{
    char m[18];
    if (spec->nnics >= VM_NICS_MAX)
        return p2v_err_set(err, E2BIG, "more than %d NICs", VM_NICS_MAX);
    if (vm_mac_parse(mac, m, err) < 0)
        return -1;
    memcpy(spec->nics[spec->nnics++].mac, m, sizeof m);
    return 0;
}

int vm_spec_add_random_nic(struct vm_spec *spec, struct p2v_err *err)
{
    char m[18];
    if (spec->nnics >= VM_NICS_MAX)
        return p2v_err_set(err, E2BIG, "more than %d NICs", VM_NICS_MAX);
    if (vm_mac_random(m, err) < 0)
        return -1;
    memcpy(spec->nics[spec->nnics++].mac, m, sizeof m);
    return 0;
}

int vm_spec_add_disk(struct vm_spec *spec, const char *path, const char *format,
                     struct p2v_err *err)
{
    const char *fmt = format;
    char *abs = NULL;
    int r = -1;
    if (spec->ndisks >= VM_DISKS_MAX)
        return p2v_err_set(err, E2BIG, "more than %d disks", VM_DISKS_MAX);
    if (!(abs = realpath(path, NULL)))
        return p2v_err_errno(err, "disk '%s'", path);
    if (fmt) {
        bool known = false;
        for (const char *const *n = diskfmt_format_names(); *n; n++)
            known |= strcmp(*n, fmt) == 0;
        if (!known) {
            p2v_err_set(err, EINVAL, "disk '%s': unknown format '%s'", path, fmt);
            goto out;
        }
    } else if (diskfmt_probe(abs, &fmt, err) < 0) {
        goto out;
    }
    struct diskfmt *df = diskfmt_open(abs, fmt, DISKFMT_RDONLY, err);
    if (!df)
        goto out;
    struct vm_disk *d = &spec->disks[spec->ndisks];
    d->size = diskfmt_size(df);
    diskfmt_close(df, NULL);
    snprintf(d->format, sizeof d->format, "%s", fmt);
    d->path = abs;
    abs = NULL;
    spec->ndisks++;
    r = 0;
out:
    free(abs);
    return r;
}

/* Keep [a-z0-9._-] of an OS fact, lower case (it only ever selects a guest OS name). */
static void os_word(const char *in, char *out, size_t size)
{
    size_t n = 0;
    for (; in && *in && n + 1 < size; in++) {
        char c = *in;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
            c == '-')
            out[n++] = c;
    }
    out[n] = '\0';
}

/* A member that may be missing or null (*v NULL) or must be a string. */
static int opt_str(const struct jv *obj, const char *key, const char **v, const char *where,
                   struct p2v_err *err)
{
    const struct jv *m = jv_get(obj, key);
    *v = NULL;
    if (!m || m->type == JV_NULL)
        return 0;
    if (m->type != JV_STR)
        return p2v_err_set(err, EINVAL, "facts: %s\"%s\" is not a string", where, key);
    *v = m->s;
    return 0;
}

/* A member that may be missing or null (*present false) or must be a positive integer. */
static int opt_count(const struct jv *obj, const char *key, uint64_t *v, bool *present,
                     struct p2v_err *err)
{
    const struct jv *m = jv_get(obj, key);
    *present = false;
    if (!m || m->type == JV_NULL)
        return 0;
    if (!jv_u64(m, v) || *v == 0)
        return p2v_err_set(err, EINVAL, "facts: \"%s\" is not a positive integer", key);
    *present = true;
    return 0;
}

/* True when @s looks like a hardware address of another link type (colon-separated hex
 * pairs, but not six of them) or is all zeros: such NICs are not Ethernet, skip them. */
static bool other_link_address(const char *s)
{
    size_t n = strlen(s);
    bool zero = true;
    if (n < 2 || (n + 1) % 3)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (i % 3 == 2) {
            if (s[i] != ':')
                return false;
        } else if (hexval(s[i]) < 0) {
            return false;
        } else if (s[i] != '0') {
            zero = false;
        }
    }
    return n != 17 || zero;
}

static int facts_nics(struct vm_spec *spec, const struct jv *nics, struct p2v_err *err)
{
    if (nics->type != JV_ARR)
        return p2v_err_set(err, EINVAL, "facts: \"nics\" is not an array");
    for (size_t i = 0; i < nics->n; i++) {
        const struct jv *o = &nics->items[i];
        const char *mac, *name;
        char where[48], m[18];
        snprintf(where, sizeof where, "nics[%zu].", i);
        if (o->type != JV_OBJ)
            return p2v_err_set(err, EINVAL, "facts: nics[%zu] is not an object", i);
        if (opt_str(o, "mac", &mac, where, err) < 0 || opt_str(o, "name", &name, where, err) < 0)
            return -1;
        const struct jv *drv = jv_get(o, "driver");
        if (drv && drv->type != JV_NULL && drv->type != JV_STR)
            return p2v_err_set(err, EINVAL, "facts: nics[%zu].\"driver\" is not a string", i);
        /* no driver: a virtual interface (bridge, veth, tun) the VM does not need */
        if (!mac || (drv && drv->type == JV_NULL) || other_link_address(mac))
            continue;
        if (vm_mac_parse(mac, m, err) < 0)
            return p2v_err_prefix(err, "facts: nics[%zu]", i);
        bool dup = false;
        for (unsigned k = 0; k < spec->nnics; k++)
            dup |= strcmp(spec->nics[k].mac, m) == 0;
        if (dup || spec->nnics >= VM_NICS_MAX)
            continue; /* bonded ports share a MAC; past the cap: dropped */
        memcpy(spec->nics[spec->nnics++].mac, m, sizeof m);
    }
    return 0;
}

int vm_spec_from_facts(struct vm_spec *spec, const char *json, size_t len,
                       struct p2v_err *err)
{
    struct vm_spec x;
    struct jv *v = NULL;
    const char *s;
    uint64_t n;
    bool have;
    int r = -1;

    vm_spec_init(&x);
    if (len > VM_FACTS_MAX) {
        p2v_err_set(err, EFBIG, "facts: %zu bytes is more than %u", len, VM_FACTS_MAX);
        goto out;
    }
    if (!(v = jv_parse(json, len, err))) {
        p2v_err_prefix(err, "facts");
        goto out;
    }
    if (v->type != JV_OBJ) {
        p2v_err_set(err, EINVAL, "facts: not a JSON object");
        goto out;
    }
    if (opt_str(v, "name", &s, "", err) < 0)
        goto out;
    if (!s && opt_str(v, "hostname", &s, "", err) < 0)
        goto out;
    if (s && vm_spec_set_name(&x, s, err) < 0)
        goto out;

    if (opt_count(v, "cpus", &n, &have, err) < 0)
        goto out;
    if (have)
        x.cpus = (unsigned)P2V_MIN(n, (uint64_t)VM_FACTS_CPUS_MAX);
    if (opt_count(v, "memory-bytes", &n, &have, err) < 0)
        goto out;
    if (have) {
        /* MemTotal is below the installed memory (firmware and kernel reservations,
         * a few percent): round up to 128 MiB, and from 2 GiB on to whole GiB (a 4 GiB
         * machine reports about 3.8), then clamp */
        uint64_t step = n < (2ull << 30) ? 128u << 20 : 1u << 30;
        uint64_t mib = n / step + (n % step != 0);
        mib = mib > UINT64_MAX / 1024 ? UINT64_MAX : mib * (step >> 20);
        x.memory_mib = P2V_MAX(P2V_MIN(mib, (uint64_t)VM_FACTS_MEMORY_MIB_MAX),
                               (uint64_t)VM_FACTS_MEMORY_MIB_MIN);
    }
    if (opt_str(v, "firmware", &s, "", err) < 0)
        goto out;
    if (s && strcmp(s, "bios") == 0)
        x.firmware = VM_FW_BIOS;
    else if (s && strcmp(s, "uefi") == 0)
        x.firmware = VM_FW_UEFI;
    else if (s) {
        p2v_err_set(err, EINVAL, "facts: \"firmware\" '%.32s' is neither bios nor uefi", s);
        goto out;
    }

    const struct jv *os = jv_get(v, "os");
    if (os && os->type != JV_NULL) {
        const char *id, *ver, *arch;
        if (os->type != JV_OBJ) {
            p2v_err_set(err, EINVAL, "facts: \"os\" is not an object");
            goto out;
        }
        if (opt_str(os, "id", &id, "os.", err) < 0 ||
            opt_str(os, "version-id", &ver, "os.", err) < 0 ||
            opt_str(os, "arch", &arch, "os.", err) < 0)
            goto out;
        os_word(id, x.os_id, sizeof x.os_id);
        os_word(ver, x.os_version, sizeof x.os_version);
        if (arch && (strcmp(arch, "i386") == 0 || strcmp(arch, "i486") == 0 ||
                     strcmp(arch, "i586") == 0 || strcmp(arch, "i686") == 0))
            x.os_64bit = false;
    }

    const struct jv *nics = jv_get(v, "nics");
    if (nics && nics->type != JV_NULL && facts_nics(&x, nics, err) < 0)
        goto out;
    if (x.nnics == 0 && vm_spec_add_random_nic(&x, err) < 0)
        goto out;

    /* keep the caller's disks; everything else comes from the facts */
    x.ndisks = spec->ndisks;
    memcpy(x.disks, spec->disks, sizeof x.disks);
    spec->ndisks = 0;
    free(spec->title);
    *spec = x;
    x.title = NULL;
    r = 0;
out:
    free(x.title);
    jv_free(v);
    return r;
}

/* ---------------------------------------------------------------- escaping */

/* The length of the valid UTF-8 sequence at @p (1..4), or 0 when it is not one (overlong
 * forms, surrogates, past U+10FFFF and U+FFFE / U+FFFF, which XML does not allow). */
static size_t utf8_len(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f))
            return 0;
        if (c == 0xef && p[1] == 0xbf && (p[2] == 0xbe || p[2] == 0xbf))
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))
            return 0;
        return 4;
    }
    return 0;
}

int vmconfig_xml_escape(struct p2v_buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        int r;
        size_t n = utf8_len(p);
        switch (*p) {
        case '&': r = p2v_buf_put(b, "&amp;", 5); break;
        case '<': r = p2v_buf_put(b, "&lt;", 4); break;
        case '>': r = p2v_buf_put(b, "&gt;", 4); break;
        case '"': r = p2v_buf_put(b, "&quot;", 6); break;
        case '\'': r = p2v_buf_put(b, "&apos;", 6); break;
        case '\t': r = p2v_buf_put(b, "&#9;", 4); break;
        case '\n': r = p2v_buf_put(b, "&#10;", 5); break;
        case '\r': r = p2v_buf_put(b, "&#13;", 5); break;
        default:
            /* other control characters cannot appear in XML 1.0 even as references */
            if (n == 0 || *p < 0x20 || *p == 0x7f) {
                r = p2v_buf_put_u8(b, '?');
                n = 1;
            } else {
                r = p2v_buf_put(b, p, n);
            }
        }
        if (r < 0)
            return -1;
        p += n ? n : 1;
    }
    return 0;
}

int vmconfig_sh_quote(struct p2v_buf *b, const char *s)
{
    /* inside single quotes every byte is literal but the quote itself: 'it'\''s' */
    if (p2v_buf_put_u8(b, '\'') < 0)
        return -1;
    for (const char *p = s ? s : ""; *p; p++) {
        int r = *p == '\'' ? p2v_buf_put(b, "'\\''", 4) : p2v_buf_put_u8(b, (uint8_t)*p);
        if (r < 0)
            return -1;
    }
    return p2v_buf_put_u8(b, '\'');
}

int vmconfig_vmx_escape(struct p2v_buf *b, const char *s)
{
    /* .vmx values are double-quoted; VMware writes '"', '|', '#' and control bytes as
     * |XX (hex), and the file is UTF-8 (.encoding) */
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        size_t n = utf8_len(p);
        int r;
        if (n == 0) {
            r = p2v_buf_put_u8(b, '?');
            n = 1;
        } else if (*p < 0x20 || *p == 0x7f || *p == '"' || *p == '|' || *p == '#' ||
                   *p == '\\') {
            r = p2v_buf_printf(b, "|%02X", *p);
        } else {
            r = p2v_buf_put(b, p, n);
        }
        if (r < 0)
            return -1;
        p += n;
    }
    return 0;
}

int vmconfig_parse_outputs(const char *s, unsigned *mask, struct p2v_err *err)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {
        {"libvirt", VM_OUT_LIBVIRT}, {"qemu", VM_OUT_QEMU}, {"vmx", VM_OUT_VMX},
        {"ovf", VM_OUT_OVF},         {"ova", VM_OUT_OVA},   {"all", VM_OUT_ALL},
    };
    unsigned m = 0;
    const char *p = s;
    while (*p) {
        size_t n = strcspn(p, ",");
        bool found = false;
        for (size_t i = 0; i < P2V_ARRAY_SIZE(names); i++) {
            if (strlen(names[i].name) == n && strncmp(names[i].name, p, n) == 0) {
                m |= names[i].bit;
                found = true;
            }
        }
        if (!found)
            return p2v_err_set(err, EINVAL,
                               "unknown output '%.*s' (libvirt, qemu, vmx, ovf, ova or all)",
                               (int)P2V_MIN(n, (size_t)32), p);
        p += n;
        if (*p == ',')
            p++;
    }
    if (!m)
        return p2v_err_set(err, EINVAL, "no output named");
    *mask = m;
    return 0;
}

/* ---------------------------------------------------------------- guest OS names */

const char *vmconfig_vmx_guest_os(const struct vm_spec *spec)
{
    static const struct {
        const char *id, *ver, *gos64, *gos32;
    } map[] = {
        {"debian", "12", "debian12-64", "debian12"}, {"debian", "11", "debian11-64", "debian11"},
        {"debian", "10", "debian10-64", "debian10"}, {"debian", NULL, "debian10-64", "debian10"},
        {"ubuntu", NULL, "ubuntu-64", "ubuntu"},     {"rhel", "9", "rhel9-64", "rhel9-64"},
        {"rhel", "8", "rhel8-64", "rhel8-64"},       {"rhel", "7", "rhel7-64", "rhel7"},
        {"centos", "9", "centos9-64", "centos9-64"}, {"centos", "8", "centos8-64", "centos8-64"},
        {"centos", "7", "centos7-64", "centos7"},    {"rocky", NULL, "rockylinux-64", "rockylinux-64"},
        {"almalinux", NULL, "almalinux-64", "almalinux-64"},
        {"fedora", NULL, "fedora-64", "fedora"},     {"sles", "15", "sles15-64", "sles15-64"},
        {"sles", "12", "sles12-64", "sles12"},       {"opensuse-leap", NULL, "opensuse-64", "opensuse"},
    };
    size_t vl;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(map); i++) {
        if (strcmp(spec->os_id, map[i].id) != 0)
            continue;
        /* "12" matches VERSION_ID "12" and "12.4" */
        if (map[i].ver && (strncmp(spec->os_version, map[i].ver, vl = strlen(map[i].ver)) ||
                           (spec->os_version[vl] && spec->os_version[vl] != '.')))
            continue;
        return spec->os_64bit ? map[i].gos64 : map[i].gos32;
    }
    return spec->os_64bit ? "other5xlinux-64" : "other5xlinux";
}

unsigned vmconfig_ovf_os_id(const struct vm_spec *spec)
{
    /* CIM_OperatingSystem.OSType (DSP0243's OperatingSystemSection ovf:id) */
    bool b64 = spec->os_64bit;
    if (strcmp(spec->os_id, "debian") == 0)
        return b64 ? 96 : 95;
    if (strcmp(spec->os_id, "ubuntu") == 0)
        return b64 ? 94 : 93;
    if (strcmp(spec->os_id, "rhel") == 0 || strcmp(spec->os_id, "centos") == 0)
        return b64 ? 80 : 79;
    if (strcmp(spec->os_id, "sles") == 0)
        return b64 ? 85 : 84;
    return b64 ? 101 : 36; /* Linux 64-Bit / LINUX */
}

/* ---------------------------------------------------------------- texts */

#define PUT(...)                                                                          \
    do {                                                                                  \
        if (p2v_buf_printf(out, __VA_ARGS__) < 0)                                         \
            goto nomem;                                                                   \
    } while (0)
#define XML(s)                                                                            \
    do {                                                                                  \
        if (vmconfig_xml_escape(out, (s)) < 0)                                            \
            goto nomem;                                                                   \
    } while (0)
#define SHQ(s)                                                                            \
    do {                                                                                  \
        if (vmconfig_sh_quote(out, (s)) < 0)                                              \
            goto nomem;                                                                   \
    } while (0)
#define VMX(s)                                                                            \
    do {                                                                                  \
        if (vmconfig_vmx_escape(out, (s)) < 0)                                            \
            goto nomem;                                                                   \
    } while (0)

static int check_spec(const struct vm_spec *spec, struct p2v_err *err)
{
    if (spec->cpus == 0 || spec->memory_mib == 0)
        return p2v_err_set(err, EINVAL, "VM '%s': no CPU or no memory", spec->name);
    return 0;
}

/* The virtio disk name of disk @i: vda .. vdp. */
static void vd_name(unsigned i, char out[8])
{
    snprintf(out, 8, "vd%c", 'a' + (char)i);
}

int vmconfig_libvirt_text(const struct vm_spec *spec, struct p2v_buf *out,
                          struct p2v_err *err)
{
    if (check_spec(spec, err) < 0)
        return -1;
    p2v_buf_reset(out);
    /* (no name in comments: a name may hold "--", which XML comments may not) */
    PUT("<!-- a libvirt domain generated by p2vkit: virsh define FILE, then virsh start -->\n");
    PUT("<domain type='kvm'>\n  <name>");
    XML(spec->name);
    PUT("</name>\n");
    if (spec->title) {
        PUT("  <description>captured by p2vkit from the machine '");
        XML(spec->title);
        PUT("'</description>\n");
    }
    PUT("  <memory unit='MiB'>%llu</memory>\n"
        "  <currentMemory unit='MiB'>%llu</currentMemory>\n"
        "  <vcpu placement='static'>%u</vcpu>\n",
        (unsigned long long)spec->memory_mib, (unsigned long long)spec->memory_mib,
        spec->cpus);
    if (spec->firmware == VM_FW_UEFI)
        PUT("  <os firmware='efi'>\n"
            "    <type arch='x86_64' machine='q35'>hvm</type>\n"
            "    <firmware>\n"
            "      <feature enabled='no' name='secure-boot'/>\n"
            "    </firmware>\n");
    else
        PUT("  <os>\n"
            "    <type arch='x86_64' machine='q35'>hvm</type>\n");
    PUT("    <boot dev='hd'/>\n"
        "  </os>\n"
        "  <features>\n"
        "    <acpi/>\n"
        "    <apic/>\n"
        "  </features>\n"
        "  <cpu mode='host-passthrough'/>\n"
        "  <clock offset='utc'/>\n"
        "  <on_poweroff>destroy</on_poweroff>\n"
        "  <on_reboot>restart</on_reboot>\n"
        "  <on_crash>destroy</on_crash>\n"
        "  <devices>\n");
    for (unsigned i = 0; i < spec->ndisks; i++) {
        const struct vm_disk *d = &spec->disks[i];
        char vd[8];
        vd_name(i, vd);
        /* libvirt's driver type for a VMDK, VHD (vpc) or VHDX is QEMU's name */
        const char *type = strcmp(d->format, "vhd") == 0 ? "vpc" : d->format;
        PUT("    <disk type='file' device='disk'>\n"
            "      <driver name='qemu' type='%s'/>\n"
            "      <source file='",
            type);
        XML(d->path);
        PUT("'/>\n"
            "      <target dev='%s' bus='virtio'/>\n",
            vd);
        if (i == 0)
            PUT("      <boot order='1'/>\n");
        PUT("    </disk>\n");
    }
    for (unsigned i = 0; i < spec->nnics; i++)
        PUT("    <interface type='network'>\n"
            "      <mac address='%s'/>\n"
            "      <source network='default'/>\n"
            "      <model type='virtio'/>\n"
            "    </interface>\n",
            spec->nics[i].mac);
    PUT("    <serial type='pty'>\n"
        "      <target port='0'/>\n"
        "    </serial>\n"
        "    <console type='pty'>\n"
        "      <target type='serial' port='0'/>\n"
        "    </console>\n"
        "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n"
        "    <video>\n"
        "      <model type='vga'/>\n"
        "    </video>\n"
        "  </devices>\n"
        "</domain>\n");
    return 0;
nomem:
    return p2v_err_set(err, ENOMEM, "VM '%s': the libvirt XML is too large", spec->name);
}

/* How the script names @path: "$dir"/'base' when it sits in @outdir, "$dir"/../'base' in
 * its parent (the job's disks beside its vm/ folder), else the absolute path quoted. */
static int sh_disk_path(struct p2v_buf *out, const char *path, const char *outdir)
{
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path) : 0, ol = strlen(outdir);
    while (ol > 1 && outdir[ol - 1] == '/')
        ol--;
    const char *oslash = memrchr(outdir, '/', ol);
    size_t pl = oslash ? (size_t)(oslash - outdir) : 0;
    if (slash && dl == ol && strncmp(path, outdir, dl) == 0) {
        if (p2v_buf_printf(out, "\"$dir\"/") < 0)
            return -1;
        return vmconfig_sh_quote(out, slash + 1);
    }
    if (slash && oslash && dl == pl && strncmp(path, outdir, dl) == 0) {
        if (p2v_buf_printf(out, "\"$dir\"/../") < 0)
            return -1;
        return vmconfig_sh_quote(out, slash + 1);
    }
    return vmconfig_sh_quote(out, path);
}

int vmconfig_qemu_text(const struct vm_spec *spec, const char *outdir, struct p2v_buf *out,
                       struct p2v_err *err)
{
    if (check_spec(spec, err) < 0)
        return -1;
    p2v_buf_reset(out);
    PUT("#!/bin/sh\n"
        "# %s.sh: run the machine captured as '%s' under QEMU (generated by p2vkit).\n"
        "#\n"
        "#   ./%s.sh [QEMU ARGUMENTS...]   extra arguments go to QEMU as they are\n"
        "#\n"
        "# The serial console is this terminal (Ctrl-A X quits, Ctrl-A C is QEMU's monitor).\n"
        "# Environment:\n"
        "#   P2V_QEMU        the QEMU program (default qemu-system-x86_64)\n"
        "#   P2V_QEMU_ACCEL  accelerators in order of preference (default \"kvm tcg\":\n"
        "#                   KVM when /dev/kvm is usable, else TCG emulation)\n",
        spec->name, spec->name, spec->name);
    if (spec->firmware == VM_FW_UEFI)
        PUT("#   P2V_OVMF_CODE, P2V_OVMF_VARS  the UEFI firmware and its variable store\n"
            "#                   template (default /usr/share/OVMF/OVMF_{CODE,VARS}_4M.fd);\n"
            "#                   the machine's own copy of the variables is %s_VARS.fd\n",
            spec->name);
    PUT("set -euf  # no globbing: P2V_QEMU_ACCEL is split into words below\n"
        "dir=$(CDPATH= cd -- \"$(dirname -- \"$0\")\" && pwd -P)\n"
        "# QEMU option values double their commas\n"
        "qpath() { printf '%%s\\n' \"$1\" | sed 's/,/,,/g'; }\n"
        "accel=\n"
        "for a in ${P2V_QEMU_ACCEL:-kvm tcg}; do\n"
        "    case $a in\n"
        "    *[!A-Za-z0-9_.=-]*) echo \"$0: bad accelerator '$a' in P2V_QEMU_ACCEL\" >&2; exit 2 ;;\n"
        "    esac\n"
        "    accel=\"$accel -accel $a\"\n"
        "done\n");
    for (unsigned i = 0; i < spec->ndisks; i++) {
        PUT("disk%u=$(qpath ", i);
        if (sh_disk_path(out, spec->disks[i].path, outdir) < 0)
            goto nomem;
        PUT(")\n");
    }
    if (spec->firmware == VM_FW_UEFI)
        PUT("code=$(qpath \"${P2V_OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}\")\n"
            "vars=\"$dir\"/'%s_VARS.fd'\n"
            "if [ ! -e \"$vars\" ]; then\n"
            "    cp -- \"${P2V_OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}\" \"$vars.tmp\"\n"
            "    mv -f -- \"$vars.tmp\" \"$vars\"\n"
            "fi\n"
            "vars=$(qpath \"$vars\")\n",
            spec->name);
    PUT("# $accel holds only checked words\n"
        "exec \"${P2V_QEMU:-qemu-system-x86_64}\" $accel \\\n"
        "    -name ");
    SHQ(spec->name);
    PUT(" -machine q35 -cpu max -m %llu -smp %u \\\n", (unsigned long long)spec->memory_mib,
        spec->cpus);
    if (spec->firmware == VM_FW_UEFI)
        PUT("    -drive \"if=pflash,format=raw,unit=0,readonly=on,file=$code\" \\\n"
            "    -drive \"if=pflash,format=raw,unit=1,file=$vars\" \\\n");
    for (unsigned i = 0; i < spec->ndisks; i++) {
        const char *f = spec->disks[i].format;
        PUT("    -drive \"file=$disk%u,format=%s,if=none,id=disk%u\" \\\n"
            "    -device virtio-blk-pci,drive=disk%u%s \\\n",
            i, strcmp(f, "vhd") == 0 ? "vpc" : f, i, i, i == 0 ? ",bootindex=1" : "");
    }
    for (unsigned i = 0; i < spec->nnics; i++)
        PUT("    -netdev user,id=net%u -device virtio-net-pci,netdev=net%u,mac=%s \\\n", i, i,
            spec->nics[i].mac);
    PUT("    -display none -serial mon:stdio \\\n"
        "    \"$@\"\n");
    return 0;
nomem:
    return p2v_err_set(err, ENOMEM, "VM '%s': the QEMU script is too large", spec->name);
}

int vmconfig_vmx_text(const struct vm_spec *spec, const char *const *vmdk_names,
                      struct p2v_buf *out, struct p2v_err *err)
{
    if (check_spec(spec, err) < 0)
        return -1;
    p2v_buf_reset(out);
    PUT(".encoding = \"UTF-8\"\n"
        "config.version = \"8\"\n"
        "virtualHW.version = \"14\"\n"
        "displayName = \"");
    VMX(spec->name);
    PUT("\"\n");
    if (spec->title) {
        PUT("annotation = \"captured by p2vkit from the machine '");
        VMX(spec->title);
        PUT("'\"\n");
    }
    PUT("guestOS = \"%s\"\n"
        "memsize = \"%llu\"\n"
        "numvcpus = \"%u\"\n",
        vmconfig_vmx_guest_os(spec), (unsigned long long)spec->memory_mib, spec->cpus);
    if (spec->firmware == VM_FW_UEFI)
        PUT("firmware = \"efi\"\n");
    /* PCIe root ports for the e1000e NICs, as VMware lays out hardware version 14 */
    PUT("pciBridge0.present = \"TRUE\"\n");
    for (int b = 4; b <= 7; b++)
        PUT("pciBridge%d.present = \"TRUE\"\n"
            "pciBridge%d.virtualDev = \"pcieRootPort\"\n"
            "pciBridge%d.functions = \"8\"\n",
            b, b, b);
    /* the captured guest booted from AHCI: keep its disks on SATA */
    PUT("sata0.present = \"TRUE\"\n");
    for (unsigned i = 0; i < spec->ndisks; i++) {
        PUT("sata0:%u.present = \"TRUE\"\n"
            "sata0:%u.fileName = \"",
            i, i);
        VMX(vmdk_names[i]);
        PUT("\"\n");
    }
    for (unsigned i = 0; i < spec->nnics; i++)
        PUT("ethernet%u.present = \"TRUE\"\n"
            "ethernet%u.virtualDev = \"e1000e\"\n"
            "ethernet%u.connectionType = \"nat\"\n"
            "ethernet%u.addressType = \"static\"\n"
            "ethernet%u.address = \"%s\"\n"
            /* the original MAC is outside VMware's static range 00:50:56:00-3f */
            "ethernet%u.checkMACAddress = \"FALSE\"\n",
            i, i, i, i, i, spec->nics[i].mac, i);
    PUT("serial0.present = \"TRUE\"\n"
        "serial0.fileType = \"file\"\n"
        "serial0.fileName = \"");
    VMX(spec->name);
    PUT("-serial.log\"\n"
        "serial0.tryNoRxLoss = \"FALSE\"\n");
    return 0;
nomem:
    return p2v_err_set(err, ENOMEM, "VM '%s': the .vmx is too large", spec->name);
}

int vmconfig_ovf_text(const struct vm_spec *spec, const struct vm_ovf_file *files,
                      struct p2v_buf *out, struct p2v_err *err)
{
    unsigned id = 1;
    if (check_spec(spec, err) < 0)
        return -1;
    p2v_buf_reset(out);
    PUT("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<!-- an OVF 1.0 (DMTF DSP0243) envelope generated by p2vkit -->\n"
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\""
        " xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\""
        " xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
        "CIM_ResourceAllocationSettingData\""
        " xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
        "CIM_VirtualSystemSettingData\""
        " xmlns:vmw=\"http://www.vmware.com/schema/ovf\""
        " xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n"
        "  <References>\n");
    for (unsigned i = 0; i < spec->ndisks; i++) {
        PUT("    <File ovf:id=\"file%u\" ovf:href=\"", i + 1);
        XML(files[i].href);
        PUT("\" ovf:size=\"%llu\"/>\n", (unsigned long long)files[i].file_size);
    }
    PUT("  </References>\n"
        "  <DiskSection>\n"
        "    <Info>Virtual disks</Info>\n");
    for (unsigned i = 0; i < spec->ndisks; i++) {
        PUT("    <Disk ovf:diskId=\"vmdisk%u\" ovf:fileRef=\"file%u\" ovf:capacity=\"%llu\""
            " ovf:capacityAllocationUnits=\"byte\" ovf:format=\"",
            i + 1, i + 1, (unsigned long long)spec->disks[i].size);
        XML(files[i].format_uri);
        PUT("\"/>\n");
    }
    PUT("  </DiskSection>\n"
        "  <NetworkSection>\n"
        "    <Info>Logical networks</Info>\n"
        "    <Network ovf:name=\"VM Network\">\n"
        "      <Description>The network the NICs connect to</Description>\n"
        "    </Network>\n"
        "  </NetworkSection>\n"
        "  <VirtualSystem ovf:id=\"");
    XML(spec->name);
    PUT("\">\n"
        "    <Info>The machine captured as '");
    XML(spec->name);
    PUT("'</Info>\n"
        "    <Name>");
    XML(spec->name);
    PUT("</Name>\n");
    if (spec->title) {
        PUT("    <AnnotationSection>\n"
            "      <Info>Where the machine comes from</Info>\n"
            "      <Annotation>captured by p2vkit from the machine '");
        XML(spec->title);
        PUT("'</Annotation>\n"
            "    </AnnotationSection>\n");
    }
    PUT("    <OperatingSystemSection ovf:id=\"%u\" vmw:osType=\"", vmconfig_ovf_os_id(spec));
    /* VMware's osType is its guestOS name in camel case with "Guest": debian12_64Guest */
    {
        const char *g = vmconfig_vmx_guest_os(spec);
        for (const char *p = g; *p; p++)
            PUT("%c", *p == '-' ? '_' : *p);
        PUT("Guest");
    }
    PUT("\">\n"
        "      <Info>The guest operating system</Info>\n"
        "    </OperatingSystemSection>\n"
        "    <VirtualHardwareSection>\n"
        "      <Info>Virtual hardware</Info>\n"
        "      <System>\n"
        "        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n"
        "        <vssd:InstanceID>0</vssd:InstanceID>\n"
        "        <vssd:VirtualSystemIdentifier>");
    XML(spec->name);
    PUT("</vssd:VirtualSystemIdentifier>\n"
        "        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>\n"
        "      </System>\n");
    /* RASD members in the schema's (alphabetical) order; ResourceType: 3 processor,
     * 4 memory, 20 other storage device (SATA), 17 disk drive, 10 Ethernet adapter */
    PUT("      <Item>\n"
        "        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>\n"
        "        <rasd:Description>Number of virtual CPUs</rasd:Description>\n"
        "        <rasd:ElementName>%u virtual CPU(s)</rasd:ElementName>\n"
        "        <rasd:InstanceID>%u</rasd:InstanceID>\n"
        "        <rasd:ResourceType>3</rasd:ResourceType>\n"
        "        <rasd:VirtualQuantity>%u</rasd:VirtualQuantity>\n"
        "      </Item>\n",
        spec->cpus, id, spec->cpus);
    id++;
    PUT("      <Item>\n"
        "        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>\n"
        "        <rasd:Description>Memory size</rasd:Description>\n"
        "        <rasd:ElementName>%llu MB of memory</rasd:ElementName>\n"
        "        <rasd:InstanceID>%u</rasd:InstanceID>\n"
        "        <rasd:ResourceType>4</rasd:ResourceType>\n"
        "        <rasd:VirtualQuantity>%llu</rasd:VirtualQuantity>\n"
        "      </Item>\n",
        (unsigned long long)spec->memory_mib, id, (unsigned long long)spec->memory_mib);
    unsigned sata = ++id;
    PUT("      <Item>\n"
        "        <rasd:Address>0</rasd:Address>\n"
        "        <rasd:Description>SATA controller</rasd:Description>\n"
        "        <rasd:ElementName>SATA controller 0</rasd:ElementName>\n"
        "        <rasd:InstanceID>%u</rasd:InstanceID>\n"
        "        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>\n"
        "        <rasd:ResourceType>20</rasd:ResourceType>\n"
        "      </Item>\n",
        sata);
    for (unsigned i = 0; i < spec->ndisks; i++)
        PUT("      <Item>\n"
            "        <rasd:AddressOnParent>%u</rasd:AddressOnParent>\n"
            "        <rasd:ElementName>Hard disk %u</rasd:ElementName>\n"
            "        <rasd:HostResource>ovf:/disk/vmdisk%u</rasd:HostResource>\n"
            "        <rasd:InstanceID>%u</rasd:InstanceID>\n"
            "        <rasd:Parent>%u</rasd:Parent>\n"
            "        <rasd:ResourceType>17</rasd:ResourceType>\n"
            "      </Item>\n",
            i, i + 1, i + 1, ++id, sata);
    for (unsigned i = 0; i < spec->nnics; i++)
        PUT("      <Item>\n"
            "        <rasd:Address>%s</rasd:Address>\n"
            "        <rasd:AddressOnParent>%u</rasd:AddressOnParent>\n"
            "        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>\n"
            "        <rasd:Connection>VM Network</rasd:Connection>\n"
            "        <rasd:Description>E1000e Ethernet adapter</rasd:Description>\n"
            "        <rasd:ElementName>Network adapter %u</rasd:ElementName>\n"
            "        <rasd:InstanceID>%u</rasd:InstanceID>\n"
            "        <rasd:ResourceSubType>E1000e</rasd:ResourceSubType>\n"
            "        <rasd:ResourceType>10</rasd:ResourceType>\n"
            "      </Item>\n",
            spec->nics[i].mac, i + 7, i + 1, ++id);
    if (spec->firmware == VM_FW_UEFI)
        PUT("      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>\n");
    PUT("    </VirtualHardwareSection>\n"
        "  </VirtualSystem>\n"
        "</Envelope>\n");
    return 0;
nomem:
    return p2v_err_set(err, ENOMEM, "VM '%s': the OVF is too large", spec->name);
}

/* ---------------------------------------------------------------- ustar and manifest */

unsigned vmconfig_tar_checksum(const uint8_t hdr[VM_TAR_BLOCK])
{
    unsigned sum = 0;
    for (int i = 0; i < VM_TAR_BLOCK; i++)
        sum += (i >= 148 && i < 156) ? ' ' : hdr[i];
    return sum;
}

int vmconfig_tar_header(uint8_t hdr[VM_TAR_BLOCK], const char *name, uint64_t size,
                        uint64_t mtime, struct p2v_err *err)
{
    /* POSIX.1-1988 ustar: name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8]
     * typeflag linkname[100] magic "ustar\0" version "00" uname[32] gname[32]
     * devmajor[8] devminor[8] prefix[155]; numbers octal, NUL-terminated */
    size_t nl = strlen(name);
    if (nl == 0 || nl > 99)
        return p2v_err_set(err, ENAMETOOLONG, "tar member name '%s' is longer than 99 bytes",
                           name);
    memset(hdr, 0, VM_TAR_BLOCK);
    memcpy(hdr, name, nl);
    snprintf((char *)hdr + 100, 8, "%07o", 0644);
    snprintf((char *)hdr + 108, 8, "%07o", 0);
    snprintf((char *)hdr + 116, 8, "%07o", 0);
    if (size < (1ull << 33)) {
        char tmp[16];
        snprintf(tmp, sizeof tmp, "%011llo", (unsigned long long)size);
        memcpy(hdr + 124, tmp, 12); /* 11 digits and the NUL */
    } else {
        /* 8 GiB and more: GNU base-256 (the high bit of the first byte set, then the
         * size big-endian), which GNU tar, bsdtar and Python read */
        hdr[124] = 0x80;
        p2v_put_u64be(hdr + 124 + 4, size);
    }
    {
        char tmp[16];
        snprintf(tmp, sizeof tmp, "%011llo", (unsigned long long)(mtime & 077777777777ull));
        memcpy(hdr + 136, tmp, 12);
    }
    hdr[156] = '0';
    memcpy(hdr + 257, "ustar", 6);
    memcpy(hdr + 263, "00", 2);
    memcpy(hdr + 265, "root", 4);
    memcpy(hdr + 297, "root", 4);
    snprintf((char *)hdr + 329, 8, "%07o", 0);
    snprintf((char *)hdr + 337, 8, "%07o", 0);
    char ck[8];
    snprintf(ck, sizeof ck, "%06o", vmconfig_tar_checksum(hdr) & 0777777u);
    memcpy(hdr + 148, ck, 6);
    hdr[154] = '\0';
    hdr[155] = ' ';
    return 0;
}

int vmconfig_mf_line(struct p2v_buf *b, const char *file, const uint8_t sha256[32])
{
    if (p2v_buf_printf(b, "SHA256(%s)= ", file) < 0)
        return -1;
    for (int i = 0; i < 32; i++)
        if (p2v_buf_printf(b, "%02x", sha256[i]) < 0)
            return -1;
    return p2v_buf_put_u8(b, '\n');
}
