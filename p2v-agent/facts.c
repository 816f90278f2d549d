/* facts.c: what the agent tells about the machine (the FACTS frame and --facts): CPUs,
 * memory, firmware, DMI identity, network cards, the operating system when the disks are
 * the running system's, and each disk's discovery with its planned bytes; and --plan's
 * view of the disks. Everything is read best effort from /sys, /proc and /etc: a value
 * that cannot be read is null, never an error.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "agent.h"
#include "p2v-proto.h"

/* Read the first line of a small file into @out (trailing white space removed). */
static bool read_line(const char *path, char *out, size_t len)
{
    FILE *fp = fopen(path, "re");
    if (!fp)
        return false;
    bool ok = fgets(out, (int)len, fp) != NULL;
    fclose(fp);
    if (!ok)
        return false;
    size_t n = strlen(out);
    while (n > 0 && isspace((unsigned char)out[n - 1]))
        out[--n] = '\0';
    return true;
}

static void kv_file(struct p2v_json *j, const char *key, const char *path)
{
    char v[256];
    p2v_json_kv_string(j, key, read_line(path, v, sizeof v) && *v ? v : NULL);
}

/* ------------------------------------------------------------------ machine name */

const char *agent_name_invalid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return "it is empty";
    if (n > P2V_PROTO_NAME_MAX)
        return "it is longer than 64 characters";
    if (!isalnum((unsigned char)name[0]) || (unsigned char)name[0] > 0x7f)
        return "it must start with a letter or a digit";
    for (size_t i = 1; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c > 0x7f || !(isalnum(c) || c == '.' || c == '_' || c == '-'))
            return "only letters, digits, '.', '_' and '-' are allowed";
    }
    return NULL;
}

void agent_default_name(char *out, size_t len)
{
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) < 0)
        host[0] = '\0';
    host[sizeof host - 1] = '\0';
    /* the server's rule: ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ */
    size_t w = 0;
    const char *p = host;
    while (*p && !(isalnum((unsigned char)*p) && (unsigned char)*p < 0x80))
        p++;
    for (; *p && w < P2V_PROTO_NAME_MAX && w + 1 < len; p++) {
        unsigned char c = (unsigned char)*p;
        out[w++] = c < 0x80 && (isalnum(c) || c == '.' || c == '_' || c == '-') ? (char)c : '-';
    }
    out[w] = '\0';
    if (w == 0)
        snprintf(out, len, "machine");
}

/* ------------------------------------------------------------------ live system */

#define LIVE_DEVS_MAX 64

/* Add the whole disks under block device @dev (through partitions, device-mapper and md
 * slaves) to @devs. */
static void collect_disks(dev_t dev, dev_t *devs, size_t *n, int depth)
{
    if (depth > 8 || *n >= LIVE_DEVS_MAX)
        return;
    devs[(*n)++] = dev;
    char sys[128], path[PATH_MAX], buf[64];
    snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u", major(dev), minor(dev));
    if (!realpath(sys, path))
        return;
    char sub[PATH_MAX + 32];
    snprintf(sub, sizeof sub, "%s/slaves", path);
    DIR *dh = opendir(sub);
    if (dh) {
        struct dirent *de;
        while ((de = readdir(dh))) {
            if (de->d_name[0] == '.')
                continue;
            char dp[PATH_MAX + 300];
            unsigned ma, mi;
            snprintf(dp, sizeof dp, "%s/%s/dev", sub, de->d_name);
            if (read_line(dp, buf, sizeof buf) && sscanf(buf, "%u:%u", &ma, &mi) == 2)
                collect_disks(makedev(ma, mi), devs, n, depth + 1);
        }
        closedir(dh);
    }
    snprintf(sub, sizeof sub, "%s/partition", path);
    if (access(sub, F_OK) == 0) {
        unsigned ma, mi;
        snprintf(sub, sizeof sub, "%s/../dev", path);
        if (read_line(sub, buf, sizeof buf) && sscanf(buf, "%u:%u", &ma, &mi) == 2 &&
            *n < LIVE_DEVS_MAX)
            devs[(*n)++] = makedev(ma, mi);
    }
}

/* The block device that holds "/": the mount's source when it is a device node (btrfs
 * reports an anonymous st_dev), else st_dev of "/". 0 when there is none (tmpfs,
 * overlay: a live medium or a container). */
static dev_t root_device(void)
{
    dev_t dev = 0;
    FILE *fp = fopen("/proc/self/mountinfo", "re");
    if (fp) {
        char line[4096];
        while (fgets(line, sizeof line, fp)) {
            char mnt[1024], src[1024];
            unsigned ma, mi;
            char *dash = strstr(line, " - ");
            if (!dash || sscanf(line, "%*s %*s %u:%u %*s %1023s", &ma, &mi, mnt) != 3 ||
                strcmp(mnt, "/") != 0)
                continue;
            dev = makedev(ma, mi);
            struct stat st;
            if (sscanf(dash + 3, "%*s %1023s", src) == 1 && strncmp(src, "/dev/", 5) == 0 &&
                stat(src, &st) == 0 && S_ISBLK(st.st_mode))
                dev = st.st_rdev; /* the last "/" mount wins: it is the visible one */
        }
        fclose(fp);
    }
    if (dev == 0) {
        struct stat st;
        if (stat("/", &st) == 0)
            dev = st.st_dev;
    }
    return major(dev) == 0 ? 0 : dev;
}

bool agent_disks_are_live(const struct agent *a)
{
    dev_t root = root_device();
    if (!root)
        return false;
    dev_t devs[LIVE_DEVS_MAX];
    size_t n = 0;
    collect_disks(root, devs, &n, 0);
    for (size_t i = 0; i < a->ndisks; i++) {
        struct stat st;
        if (a->disks[i].fd < 0 || fstat(a->disks[i].fd, &st) < 0 || !S_ISBLK(st.st_mode))
            continue;
        for (size_t k = 0; k < n; k++)
            if (devs[k] == st.st_rdev)
                return true;
    }
    return false;
}

/* ------------------------------------------------------------------ facts */

static void os_json(struct p2v_json *j)
{
    char id[128] = "", ver[128] = "", pretty[256] = "";
    FILE *fp = fopen("/etc/os-release", "re");
    if (!fp)
        fp = fopen("/usr/lib/os-release", "re");
    if (fp) {
        char line[512];
        while (fgets(line, sizeof line, fp)) {
            line[strcspn(line, "\r\n")] = '\0';
            char *eq = strchr(line, '=');
            if (!eq)
                continue;
            *eq = '\0';
            char *v = eq + 1;
            size_t n = strlen(v);
            if (n >= 2 && (v[0] == '"' || v[0] == '\'') && v[n - 1] == v[0]) {
                v[n - 1] = '\0';
                v++;
            }
            if (strcmp(line, "ID") == 0)
                snprintf(id, sizeof id, "%s", v);
            else if (strcmp(line, "VERSION_ID") == 0)
                snprintf(ver, sizeof ver, "%s", v);
            else if (strcmp(line, "PRETTY_NAME") == 0)
                snprintf(pretty, sizeof pretty, "%s", v);
        }
        fclose(fp);
    }
    struct utsname u;
    bool have_u = uname(&u) == 0;
    p2v_json_object_begin(j);
    p2v_json_kv_string(j, "id", *id ? id : NULL);
    p2v_json_kv_string(j, "version-id", *ver ? ver : NULL);
    p2v_json_kv_string(j, "pretty-name", *pretty ? pretty : NULL);
    p2v_json_kv_string(j, "kernel", have_u ? u.release : NULL);
    p2v_json_kv_string(j, "arch", have_u ? u.machine : NULL);
    p2v_json_object_end(j);
}

static int name_cmp(const struct dirent **x, const struct dirent **y)
{
    return strcmp((*x)->d_name, (*y)->d_name);
}

static void nics_json(struct p2v_json *j)
{
    struct dirent **ents = NULL;
    int n = scandir("/sys/class/net", &ents, NULL, name_cmp);
    p2v_json_array_begin(j);
    for (int i = 0; i < n; i++) {
        const char *nm = ents[i]->d_name;
        if (nm[0] == '.' || strcmp(nm, "lo") == 0)
            continue;
        char p[PATH_MAX], link[PATH_MAX];
        p2v_json_object_begin(j);
        p2v_json_kv_string(j, "name", nm);
        snprintf(p, sizeof p, "/sys/class/net/%s/address", nm);
        kv_file(j, "mac", p);
        snprintf(p, sizeof p, "/sys/class/net/%s/device/driver", nm);
        ssize_t l = readlink(p, link, sizeof link - 1);
        if (l > 0) {
            link[l] = '\0';
            const char *base = strrchr(link, '/');
            p2v_json_kv_string(j, "driver", base ? base + 1 : link);
        } else {
            p2v_json_kv_string(j, "driver", NULL); /* virtual (bridge, veth, tun) */
        }
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    for (int i = 0; i < n; i++)
        free(ents[i]);
    free(ents);
}

static uint64_t memory_bytes(void)
{
    FILE *fp = fopen("/proc/meminfo", "re");
    unsigned long long kb = 0;
    if (fp) {
        char line[256];
        while (fgets(line, sizeof line, fp))
            if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
                break;
        fclose(fp);
    }
    if (kb)
        return (uint64_t)kb * 1024;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 0;
}

void agent_facts_json(const struct agent *a, struct p2v_json *j, bool brief)
{
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) < 0)
        host[0] = '\0';
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    p2v_json_object_begin(j);
    p2v_json_kv_string(j, "name", a->o.name);
    p2v_json_kv_string(j, "hostname", *host ? host : NULL);
    p2v_json_kv_u64(j, "cpus", cpus > 0 ? (uint64_t)cpus : 1);
    p2v_json_kv_u64(j, "memory-bytes", memory_bytes());
    p2v_json_kv_string(j, "firmware", access("/sys/firmware/efi", F_OK) == 0 ? "uefi" : "bios");
    p2v_json_key(j, "dmi");
    p2v_json_object_begin(j);
    kv_file(j, "vendor", "/sys/class/dmi/id/sys_vendor");
    kv_file(j, "product", "/sys/class/dmi/id/product_name");
    kv_file(j, "serial", "/sys/class/dmi/id/product_serial"); /* root only */
    kv_file(j, "uuid", "/sys/class/dmi/id/product_uuid");     /* root only */
    p2v_json_object_end(j);
    p2v_json_key(j, "nics");
    nics_json(j);
    /* the running system's OS describes the disks only when they are its disks */
    p2v_json_kv_bool(j, "live", a->live);
    p2v_json_key(j, "os");
    if (a->live)
        os_json(j);
    else
        p2v_json_null(j);
    p2v_json_kv_bool(j, "all-blocks", a->o.all_blocks);
    p2v_json_key(j, "disks");
    p2v_json_array_begin(j);
    for (size_t i = 0; i < a->ndisks; i++) {
        const struct agent_disk *d = &a->disks[i];
        p2v_json_object_begin(j);
        if (brief) {
            p2v_json_kv_string(j, "path", d->info->path);
            p2v_json_kv_string(j, "name", d->info->name);
            p2v_json_kv_u64(j, "size", d->info->size);
            p2v_json_kv_string(j, "serial", d->info->serial);
        } else {
            imager_disk_json(d->info, j);
        }
        p2v_json_kv_u64(j, "planned", d->plan.bytes);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    p2v_json_object_end(j);
}

void agent_plan_json(const struct agent *a, struct p2v_json *j)
{
    uint64_t total = 0;
    p2v_json_object_begin(j);
    p2v_json_kv_bool(j, "all-blocks", a->o.all_blocks);
    p2v_json_key(j, "disks");
    p2v_json_array_begin(j);
    for (size_t i = 0; i < a->ndisks; i++) {
        const struct agent_disk *d = &a->disks[i];
        const struct imager_plan *pl = &d->plan;
        total += d->info->size;
        p2v_json_object_begin(j);
        imager_disk_json(d->info, j);
        p2v_json_kv_u64(j, "planned", pl->bytes);
        p2v_json_kv_u64(j, "extents", pl->count);
        p2v_json_key(j, "regions");
        p2v_json_array_begin(j);
        for (size_t r = 0; r < pl->nregions; r++) {
            const struct imager_plan_region *g = &pl->regions[r];
            p2v_json_object_begin(j);
            p2v_json_kv_string(j, "kind", imager_region_kind_name(g->kind));
            p2v_json_kv_i64(j, "part", g->part);
            p2v_json_kv_u64(j, "start", g->start);
            p2v_json_kv_u64(j, "size", g->size);
            p2v_json_kv_u64(j, "planned", g->planned);
            p2v_json_kv_string(j, "note", g->note);
            p2v_json_object_end(j);
        }
        p2v_json_array_end(j);
        p2v_json_object_end(j);
    }
    p2v_json_array_end(j);
    p2v_json_kv_u64(j, "bytes-total", total);
    p2v_json_kv_u64(j, "bytes-planned", a->st.bytes_planned);
    p2v_json_object_end(j);
}
