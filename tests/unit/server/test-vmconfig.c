/* test-vmconfig: the VM configuration generator's pure parts — facts read into a spec
 * (missing members give defaults, wrong types and impossible values are refused, large
 * values clamped, virtual and duplicate NICs skipped), MAC validation, file name
 * sanitising, XML / shell / .vmx escaping of a hostile name (the shell quoting is checked
 * by running sh on it), the guest OS names, the ustar header and its checksum, manifest
 * lines — and vmconfig_write's all-or-nothing promise.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server.h"
#include "tap.h"
#include "vmconfig.h"

static const char hostile[] = "x'\"<&>$(touch /tmp/p2v-pwned)`id`;\n\\ é\x01\xff";

static int facts(struct vm_spec *s, const char *json, struct p2v_err *err)
{
    vm_spec_init(s);
    return vm_spec_from_facts(s, json, strlen(json), err);
}

static void test_facts_defaults(void)
{
    struct vm_spec s;
    struct p2v_err err = {0};
    int r = facts(&s, "{}", &err);
    ok(r == 0 && s.cpus == VM_DEFAULT_CPUS && s.memory_mib == VM_DEFAULT_MEMORY_MIB &&
           s.firmware == VM_FW_BIOS && strcmp(s.name, "vm") == 0 && !s.title,
       "empty facts: 2 CPUs, 2048 MiB, BIOS, name vm");
    ok(s.nnics == 1 && strncmp(s.nics[0].mac, "52:54:00:", 9) == 0,
       "empty facts: one NIC with a generated 52:54:00 MAC (%s)", s.nics[0].mac);
    vm_spec_release(&s);
    r = facts(&s,
              "{\"name\":null,\"cpus\":null,\"memory-bytes\":null,\"firmware\":null,"
              "\"nics\":null,\"os\":null,\"dmi\":{}}",
              &err);
    ok(r == 0 && s.cpus == VM_DEFAULT_CPUS && s.memory_mib == VM_DEFAULT_MEMORY_MIB &&
           s.firmware == VM_FW_BIOS && s.nnics == 1,
       "null members: defaults");
    vm_spec_release(&s);
    r = facts(&s, "{\"hostname\":\"pc7.example\"}", &err);
    is_str(r == 0 ? s.name : "", "pc7.example", "no name: the hostname");
    vm_spec_release(&s);
}

static void test_facts_full(void)
{
    struct vm_spec s;
    struct p2v_err err = {0};
    int r = facts(&s,
                  "{\"name\":\"web01\",\"hostname\":\"h\",\"cpus\":4,\"memory-bytes\":4012345678,"
                  "\"firmware\":\"uefi\",\"nics\":["
                  "{\"name\":\"eth0\",\"mac\":\"52:54:00:AA:BB:01\",\"driver\":\"e1000e\"},"
                  "{\"name\":\"br0\",\"mac\":\"52:54:00:aa:bb:09\",\"driver\":null},"
                  "{\"name\":\"bond\",\"mac\":\"52:54:00:aa:bb:01\",\"driver\":\"igb\"},"
                  "{\"name\":\"ib0\",\"mac\":\"80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03"
                  ":00:0a:0b:0c\",\"driver\":\"mlx4\"},"
                  "{\"name\":\"wwan0\",\"mac\":\"00:00:00:00:00:00\",\"driver\":\"x\"},"
                  "{\"name\":\"eth1\",\"mac\":\"52-54-00-aa-bb-02\"}],"
                  "\"os\":{\"id\":\"debian\",\"version-id\":\"12\",\"arch\":\"x86_64\"},"
                  "\"disks\":[]}",
                  &err);
    ok(r == 0, "facts of a real machine read%s%s", r ? ": " : "", r ? err.msg : "");
    is_str(s.name, "web01", "name");
    is_int(s.cpus, 4, "cpus");
    is_int(s.memory_mib, 4096, "memory: 3.7 GiB of MemTotal rounds up to 4096 MiB");
    is_int(s.firmware, VM_FW_UEFI, "firmware uefi");
    ok(s.nnics == 2 && strcmp(s.nics[0].mac, "52:54:00:aa:bb:01") == 0 &&
           strcmp(s.nics[1].mac, "52:54:00:aa:bb:02") == 0,
       "NICs: MACs kept (lower case); bridge, duplicate, InfiniBand and zero MAC skipped");
    is_str(vmconfig_vmx_guest_os(&s), "debian12-64", "vmx guestOS from the OS facts");
    is_int(vmconfig_ovf_os_id(&s), 96, "OVF OS id: Debian 64-bit");
    vm_spec_release(&s);

    r = facts(&s, "{\"cpus\":1000,\"memory-bytes\":1099511627776}", &err);
    ok(r == 0 && s.cpus == VM_FACTS_CPUS_MAX && s.memory_mib == VM_FACTS_MEMORY_MIB_MAX,
       "clamped: 1000 CPUs -> %u, 1 TiB -> %llu MiB", s.cpus,
       (unsigned long long)s.memory_mib);
    vm_spec_release(&s);
    r = facts(&s, "{\"memory-bytes\":104857600}", &err);
    ok(r == 0 && s.memory_mib == VM_FACTS_MEMORY_MIB_MIN, "100 MiB -> at least %u MiB",
       VM_FACTS_MEMORY_MIB_MIN);
    vm_spec_release(&s);
    r = facts(&s, "{\"memory-bytes\":1000000000}", &err);
    ok(r == 0 && s.memory_mib == 1024, "954 MiB rounds up to 1024 MiB (%llu)",
       (unsigned long long)s.memory_mib);
    vm_spec_release(&s);

    char many[2048] = "{\"nics\":[";
    for (int i = 0; i < VM_NICS_MAX + 3; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many),
                 "%s{\"mac\":\"52:54:00:00:00:%02x\",\"driver\":\"e1000\"}", i ? "," : "",
                 i + 1);
    strcat(many, "]}");
    r = facts(&s, many, &err);
    ok(r == 0 && s.nnics == VM_NICS_MAX, "NICs past %d dropped", VM_NICS_MAX);
    vm_spec_release(&s);
}

static void test_facts_bad(void)
{
    static const struct {
        const char *json, *want;
    } bad[] = {
        {"{\"cpus\":0}", "\"cpus\""},
        {"{\"cpus\":\"4\"}", "\"cpus\""},
        {"{\"cpus\":-2}", "\"cpus\""},
        {"{\"cpus\":1.5}", "\"cpus\""},
        {"{\"memory-bytes\":0}", "\"memory-bytes\""},
        {"{\"memory-bytes\":true}", "\"memory-bytes\""},
        {"{\"firmware\":\"coreboot\"}", "firmware"},
        {"{\"firmware\":1}", "firmware"},
        {"{\"name\":5}", "\"name\""},
        {"{\"nics\":{}}", "\"nics\""},
        {"{\"nics\":[1]}", "nics[0]"},
        {"{\"nics\":[{\"mac\":\"zz:54:00:aa:bb:01\",\"driver\":\"e1000\"}]}", "nics[0]"},
        {"{\"nics\":[{\"mac\":\"01:00:5e:00:00:01\",\"driver\":\"e1000\"}]}", "multicast"},
        {"{\"nics\":[{\"mac\":42}]}", "\"mac\""},
        {"{\"nics\":[{\"mac\":\"52:54:00:aa:bb:01\",\"driver\":7}]}", "\"driver\""},
        {"{\"os\":\"linux\"}", "\"os\""},
        {"{\"os\":{\"id\":[]}}", "\"id\""},
        {"[1,2]", "not a JSON object"},
        {"{\"cpus\":", "invalid JSON"},
        {"", "invalid JSON"},
    };
    bool all = true;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(bad); i++) {
        struct vm_spec s;
        struct p2v_err err = {0};
        int r = facts(&s, bad[i].json, &err);
        bool good = r < 0 && strstr(err.msg, bad[i].want) && strncmp(err.msg, "facts", 5) == 0;
        if (!good)
            diag("%s: r=%d '%s' (want '%s')", bad[i].json, r, err.msg, bad[i].want);
        all &= good;
        vm_spec_release(&s);
    }
    ok(all, "%zu bad facts refused, naming the member", P2V_ARRAY_SIZE(bad));

    /* a failure leaves the spec (and its disks) as it was */
    struct vm_spec s;
    struct p2v_err err = {0};
    vm_spec_init(&s);
    s.cpus = 7;
    ok(vm_spec_from_facts(&s, "{\"cpus\":0}", 10, &err) < 0 && s.cpus == 7,
       "a refused facts document changes nothing");
    char big[VM_FACTS_MAX + 2];
    memset(big, ' ', sizeof big);
    big[0] = '{';
    big[sizeof big - 1] = '}';
    ok(vm_spec_from_facts(&s, big, sizeof big, &err) < 0 && err.code == EFBIG,
       "facts over 64 KiB refused");
    vm_spec_release(&s);
}

static void test_mac(void)
{
    static const struct {
        const char *in, *out;
    } good[] = {
        {"52:54:00:12:34:56", "52:54:00:12:34:56"},
        {"00:1A:2b:3C:4d:5E", "00:1a:2b:3c:4d:5e"},
        {"02-00-00-00-00-01", "02:00:00:00:00:01"},
    };
    static const char *const bad[] = {
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5g",
        "52:54:00-12:34:56",
        "5254.0012.3456",
        "52:54:00:12:34:56 ",
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
        "52:54:00:12:34:56\n",
        "'52:54:00:12:34:56",
    };
    bool all = true;
    char out[18];
    for (size_t i = 0; i < P2V_ARRAY_SIZE(good); i++) {
        bool g = vm_mac_parse(good[i].in, out, NULL) == 0 && strcmp(out, good[i].out) == 0;
        if (!g)
            diag("refused or changed '%s'", good[i].in);
        all &= g;
    }
    ok(all, "valid MACs accepted and normalised");
    all = true;
    for (size_t i = 0; i < P2V_ARRAY_SIZE(bad); i++) {
        struct p2v_err err = {0};
        bool refused = vm_mac_parse(bad[i], out, &err) < 0 && err.msg[0];
        if (!refused)
            diag("accepted '%s'", bad[i]);
        all &= refused;
    }
    ok(all, "%zu invalid MACs refused (bad form, multicast, broadcast, zero)",
       P2V_ARRAY_SIZE(bad));
    all = true;
    for (int i = 0; i < 50; i++) {
        char m[18], n[18];
        all &= vm_mac_random(m, NULL) == 0 && strncmp(m, "52:54:00:", 9) == 0 &&
               vm_mac_parse(m, n, NULL) == 0 && strcmp(m, n) == 0;
    }
    ok(all, "random MACs are valid 52:54:00 addresses");
}

static void test_sanitise(void)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"web01", "web01"},
        {"web-01.example_2", "web-01.example_2"},
        {"../../etc/passwd", "_.._etc_passwd"},
        {"/etc/passwd", "_etc_passwd"},
        {".hidden", "hidden"},
        {"..", "vm"},
        {"-rf", "rf"},
        {"", "vm"},
        {"a b$(rm -rf ~)", "a_b_rm_-rf_"},
        {"caf\xc3\xa9", "caf_"},
        {"x\ny", "x_y"},
    };
    bool all = true;
    char out[VM_NAME_MAX + 1];
    for (size_t i = 0; i < P2V_ARRAY_SIZE(cases); i++) {
        vmconfig_sanitise_name(cases[i].in, out, sizeof out);
        if (strcmp(out, cases[i].out) != 0) {
            diag("'%s' -> '%s', want '%s'", cases[i].in, out, cases[i].out);
            all = false;
        }
    }
    ok(all, "file names sanitised");
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    vmconfig_sanitise_name(longname, out, sizeof out);
    is_int(strlen(out), VM_NAME_MAX, "a long name is cut to %d characters", VM_NAME_MAX);
    vmconfig_sanitise_name(hostile, out, sizeof out);
    ok(!strchr(out, '/') && out[0] != '.' && out[0] != '-' && strlen(out) > 0 &&
           strspn(out, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
               strlen(out),
       "the hostile name becomes '%s'", out);
}

static void test_escape(void)
{
    struct p2v_buf b;
    p2v_buf_init(&b, 0);
    vmconfig_xml_escape(&b, hostile);
    is_str(p2v_buf_cstr(&b),
           "x&apos;&quot;&lt;&amp;&gt;$(touch /tmp/p2v-pwned)`id`;&#10;\\ é??",
           "XML escaping: quotes, <, &, >, newline; control and invalid bytes become ?");
    p2v_buf_reset(&b);
    vmconfig_xml_escape(&b, "a\xed\xa0\x80z\xef\xbf\xbe\xf4\x90\x80\x80");
    is_str(p2v_buf_cstr(&b), "a???z???????",
           "XML: surrogates, U+FFFE and past U+10FFFF: each byte becomes ?");
    p2v_buf_reset(&b);
    vmconfig_vmx_escape(&b, "a\"b|c#d\ne");
    is_str(p2v_buf_cstr(&b), "a|22b|7Cc|23d|0Ae", ".vmx escaping");
    p2v_buf_reset(&b);
    vmconfig_sh_quote(&b, "it's");
    is_str(p2v_buf_cstr(&b), "'it'\\''s'", "shell quoting of a quote");

    /* the real test of shell quoting: sh reads the word back as it was */
    char dir[] = "/tmp/p2v-test-vmconfig-sh.XXXXXX", file[128], got[256];
    ok(mkdtemp(dir) != NULL, "temporary folder");
    snprintf(file, sizeof file, "%s/word", dir);
    p2v_buf_reset(&b);
    p2v_buf_printf(&b, "printf '%%s' ");
    vmconfig_sh_quote(&b, hostile);
    p2v_buf_printf(&b, " >'%s'\n", file);
    FILE *sh = popen("/bin/sh -s", "w");
    if (sh) {
        fwrite(b.data, 1, b.len, sh);
        pclose(sh);
    }
    int fd = open(file, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, got, sizeof got - 1) : -1;
    if (fd >= 0)
        close(fd);
    got[n > 0 ? n : 0] = '\0';
    ok(n == (ssize_t)strlen(hostile) && memcmp(got, hostile, strlen(hostile)) == 0,
       "sh reads the quoted hostile name back unchanged");
    ok(access("/tmp/p2v-pwned", F_OK) != 0, "and runs nothing from it");
    unlink(file);
    rmdir(dir);
    p2v_buf_release(&b);
}

static void test_texts(void)
{
    struct vm_spec s;
    struct p2v_buf b;
    struct p2v_err err = {0};
    vm_spec_init(&s);
    p2v_buf_init(&b, 0);
    ok(vm_spec_set_name(&s, hostile, &err) == 0, "set a hostile name");
    vm_spec_add_nic(&s, "52:54:00:00:00:01", NULL);
    s.ndisks = 1;
    s.disks[0].path = strdup("/srv/it's a <disk> & $(x),1.qcow2");
    snprintf(s.disks[0].format, sizeof s.disks[0].format, "qcow2");
    s.disks[0].size = 1 << 20;

    ok(vmconfig_libvirt_text(&s, &b, &err) == 0, "libvirt XML");
    const char *x = p2v_buf_cstr(&b);
    ok(strstr(x, "<name>") && !strstr(x, "<&") && !strstr(x, "\"<") &&
           strstr(x, "&lt;&amp;&gt;$(touch") &&
           strstr(x, "<source file='/srv/it&apos;s a &lt;disk&gt; &amp; $(x),1.qcow2'/>"),
       "libvirt XML: the title and the path escaped");
    ok(strstr(x, "<mac address='52:54:00:00:00:01'/>") && strstr(x, "bus='virtio'") &&
           strstr(x, "type='qcow2'") && !strstr(x, "firmware='efi'"),
       "libvirt XML: MAC, virtio, qcow2, BIOS");

    ok(vmconfig_qemu_text(&s, "/other/vm", &b, &err) == 0, "QEMU script");
    x = p2v_buf_cstr(&b);
    ok(strstr(x, "disk0=$(qpath '/srv/it'\\''s a <disk> & $(x),1.qcow2')") &&
           strstr(x, "mac=52:54:00:00:00:01") && strstr(x, "\"$@\"") &&
           strstr(x, "format=qcow2") && !strstr(x, "pflash"),
       "QEMU script: the path quoted, MAC, format, \"$@\", no pflash for BIOS");

    s.firmware = VM_FW_UEFI;
    free(s.disks[0].path);
    s.disks[0].path = strdup("/srv/job/disk0.qcow2");
    vmconfig_qemu_text(&s, "/srv/job/vm", &b, &err);
    x = p2v_buf_cstr(&b);
    ok(strstr(x, "disk0=$(qpath \"$dir\"/../'disk0.qcow2')") && strstr(x, "pflash") &&
           strstr(x, "OVMF_CODE_4M.fd") && strstr(x, "readonly=on"),
       "QEMU script: a disk in the parent folder relative to the script; UEFI pflash");
    vmconfig_qemu_text(&s, "/srv/job", &b, &err);
    ok(strstr(p2v_buf_cstr(&b), "disk0=$(qpath \"$dir\"/'disk0.qcow2')") != NULL,
       "QEMU script: a disk beside the script");
    vmconfig_libvirt_text(&s, &b, &err);
    ok(strstr(p2v_buf_cstr(&b), "<os firmware='efi'>") != NULL, "libvirt XML: UEFI");

    const char *names[] = {"vm-disk0.vmdk"};
    ok(vmconfig_vmx_text(&s, names, &b, &err) == 0, ".vmx");
    x = p2v_buf_cstr(&b);
    ok(strstr(x, "firmware = \"efi\"") && strstr(x, "sata0:0.fileName = \"vm-disk0.vmdk\"") &&
           strstr(x, "ethernet0.virtualDev = \"e1000e\"") &&
           strstr(x, "ethernet0.address = \"52:54:00:00:00:01\"") &&
           strstr(x, "annotation = \"captured by p2vkit from the machine 'x'|22<&>$(touch") &&
           !strstr(x, "\n\\"),
       ".vmx: efi, SATA disk, e1000e with the MAC, the annotation escaped");

    struct vm_ovf_file f = {"vm-disk0-stream.vmdk", 12345, VM_OVF_STREAM_URI};
    ok(vmconfig_ovf_text(&s, &f, &b, &err) == 0, "OVF");
    x = p2v_buf_cstr(&b);
    ok(strstr(x, "ovf:href=\"vm-disk0-stream.vmdk\" ovf:size=\"12345\"") &&
           strstr(x, "ovf:capacity=\"1048576\"") && strstr(x, "#streamOptimized") &&
           strstr(x, "<rasd:Address>52:54:00:00:00:01</rasd:Address>") &&
           strstr(x, "vmw:key=\"firmware\" vmw:value=\"efi\"") && strstr(x, "&lt;&amp;&gt;"),
       "OVF: file, capacity, format, MAC, efi, the annotation escaped");
    vm_spec_release(&s);
    p2v_buf_release(&b);

    vm_spec_init(&s);
    snprintf(s.os_id, sizeof s.os_id, "debian");
    snprintf(s.os_version, sizeof s.os_version, "12.4");
    is_str(vmconfig_vmx_guest_os(&s), "debian12-64", "guestOS: debian 12.4");
    snprintf(s.os_version, sizeof s.os_version, "120");
    is_str(vmconfig_vmx_guest_os(&s), "debian10-64", "guestOS: debian 120 is not 12");
    snprintf(s.os_id, sizeof s.os_id, "ubuntu");
    is_str(vmconfig_vmx_guest_os(&s), "ubuntu-64", "guestOS: ubuntu");
    snprintf(s.os_id, sizeof s.os_id, "p2vkit-mini");
    is_str(vmconfig_vmx_guest_os(&s), "other5xlinux-64", "guestOS: unknown Linux");
    s.os_64bit = false;
    is_str(vmconfig_vmx_guest_os(&s), "other5xlinux", "guestOS: 32-bit");
    vm_spec_release(&s);
}

/* The octal number in a header field. */
static unsigned long long octal(const uint8_t *p, size_t n)
{
    unsigned long long v = 0;
    for (size_t i = 0; i < n && p[i] >= '0' && p[i] <= '7'; i++)
        v = v * 8 + (p[i] - '0');
    return v;
}

static void test_tar_mf(void)
{
    uint8_t h[VM_TAR_BLOCK];
    struct p2v_err err = {0};
    ok(vmconfig_tar_header(h, "vm.ovf", 1234, 1700000000, &err) == 0, "ustar header");
    ok(memcmp(h, "vm.ovf\0", 7) == 0 && memcmp(h + 257, "ustar\0" "00", 8) == 0 &&
           h[156] == '0' && octal(h + 100, 8) == 0644,
       "name, magic, version, type, mode");
    is_int(octal(h + 124, 12), 1234, "size in octal");
    ok(memcmp(h + 124, "00000002322\0", 12) == 0, "size field 00000002322");
    is_int(octal(h + 136, 12), 1700000000, "mtime");
    is_int(octal(h + 148, 8), vmconfig_tar_checksum(h), "checksum field matches");
    unsigned sum = 0;
    for (int i = 0; i < VM_TAR_BLOCK; i++)
        sum += (i >= 148 && i < 156) ? 0x20 : h[i];
    ok(sum == octal(h + 148, 8) && h[154] == '\0' && h[155] == ' ',
       "checksum: the bytes summed with the field as spaces, then NUL and space");
    ok(vmconfig_tar_header(h, "big.vmdk", 10ull << 30, 0, &err) == 0 && h[124] == 0x80 &&
           p2v_get_u64be(h + 128) == 10ull << 30,
       "10 GiB: base-256 size");
    char name[101];
    memset(name, 'n', 100);
    name[100] = '\0';
    ok(vmconfig_tar_header(h, name, 1, 0, &err) < 0, "a name of 100 bytes refused");

    struct p2v_buf b;
    p2v_buf_init(&b, 0);
    /* SHA-256("abc") */
    static const uint8_t abc[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
        0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
        0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    vmconfig_mf_line(&b, "vm.ovf", abc);
    is_str(p2v_buf_cstr(&b),
           "SHA256(vm.ovf)= ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n",
           "manifest line");
    p2v_buf_release(&b);

    unsigned m = 0;
    ok(vmconfig_parse_outputs("libvirt,qemu", &m, NULL) == 0 &&
           m == (VM_OUT_LIBVIRT | VM_OUT_QEMU),
       "outputs libvirt,qemu");
    ok(vmconfig_parse_outputs("all", &m, NULL) == 0 && m == VM_OUT_ALL, "outputs all");
    ok(vmconfig_parse_outputs("vmx,bogus", &m, &err) < 0 && strstr(err.msg, "'bogus'"),
       "unknown output refused");
    ok(vmconfig_parse_outputs("", &m, NULL) < 0, "no output refused");
}

static int count_entries(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

static void test_write(void)
{
    char dir[] = "/tmp/p2v-test-vmconfig.XXXXXX", disk[128], out[128], path[192];
    struct vm_spec s;
    struct p2v_err err = {0};
    struct p2v_buf w;
    ok(mkdtemp(dir) != NULL, "temporary folder");
    snprintf(disk, sizeof disk, "%s/disk0.raw", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    int fd = open(disk, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ok(fd >= 0 && ftruncate(fd, 1 << 20) == 0 && pwrite(fd, "boot", 4, 0) == 4, "a 1 MiB raw disk");
    if (fd >= 0)
        close(fd);
    mkdir(out, 0755);
    vm_spec_init(&s);
    vm_spec_add_random_nic(&s, NULL);
    vm_spec_set_name(&s, "pc1", NULL);
    ok(vm_spec_add_disk(&s, disk, NULL, &err) == 0 && strcmp(s.disks[0].format, "raw") == 0 &&
           s.disks[0].size == 1 << 20,
       "add the disk: probed raw, 1 MiB");
    p2v_buf_init(&w, 0);
    struct vmconfig_opts o = {.outputs = VM_OUT_ALL};
    int r = vmconfig_write(&s, out, &o, &w, &err);
    ok(r == 0, "write every output%s%s", r ? ": " : "", r ? err.msg : "");
    is_str(p2v_buf_cstr(&w),
           "pc1.xml\npc1.sh\npc1-disk0.vmdk\npc1.vmx\npc1-disk0-stream.vmdk\npc1.ovf\npc1.mf\n"
           "pc1.ova\n",
           "the files written");
    is_int(count_entries(out), 8, "nothing else in the folder (no temporary file)");
    struct stat sb;
    snprintf(path, sizeof path, "%s/pc1.sh", out);
    ok(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0755, "the script is executable");

    /* a failure at the end (the .ova cannot be renamed into place): nothing is left */
    char out2[160];
    snprintf(out2, sizeof out2, "%s/out2", dir);
    mkdir(out2, 0755);
    snprintf(path, sizeof path, "%s/pc1.ova", out2);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/pc1.ova/x", out2);
    fd = open(path, O_WRONLY | O_CREAT, 0600);
    if (fd >= 0)
        close(fd);
    p2v_buf_reset(&w);
    r = vmconfig_write(&s, out2, &o, &w, &err);
    ok(r < 0 && strstr(err.msg, "rename"), "a rename that fails fails the whole: %s", err.msg);
    is_int(count_entries(out2), 1, "nothing was left but what was there");
    /* a missing disk: nothing written either */
    free(s.disks[0].path);
    s.disks[0].path = strdup("/nonexistent/disk.raw");
    r = vmconfig_write(&s, out2, &o, &w, &err);
    ok(r < 0 && count_entries(out2) == 1, "a disk that cannot be read: nothing written");
    vm_spec_release(&s);
    p2v_buf_release(&w);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        diag("cannot remove %s", dir);
}

/* srv_job_write_vmconfig: a received job's vm/ folder, and a failure that keeps the job. */
static void test_job(void)
{
    char dir[] = "/tmp/p2v-test-vmconfig-job.XXXXXX", path[256], cmd[300];
    struct srv_store st;
    struct srv_job *job = calloc(1, sizeof *job);
    ok(mkdtemp(dir) != NULL && job, "temporary store");
    memset(&st, 0, sizeof st);
    st.path = dir;
    st.logfd = -1;
    snprintf(path, sizeof path, "%s/jobs", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/jobs/j1", dir);
    mkdir(path, 0700);
    job->dirfd = open(path, O_RDONLY | O_DIRECTORY);
    snprintf(job->id, sizeof job->id, "j1");
    snprintf(job->format, sizeof job->format, "raw");
    job->disks[0].known = true;
    job->disks[0].size = 1 << 20;
    int fd = openat(job->dirfd, "disk0.raw", O_WRONLY | O_CREAT, 0600);
    if (fd >= 0) {
        if (ftruncate(fd, 1 << 20) < 0)
            diag("ftruncate failed");
        close(fd);
    }
    static const char facts_json[] =
        "{\"name\":\"j1\",\"firmware\":\"uefi\",\"nics\":[{\"mac\":\"00:11:22:33:44:55\","
        "\"driver\":\"igb\"}]}";
    fd = openat(job->dirfd, "facts.json", O_WRONLY | O_CREAT, 0600);
    if (fd >= 0) {
        if (write(fd, facts_json, sizeof facts_json - 1) < 0)
            diag("write failed");
        close(fd);
    }
    /* a file where vm/ should be: the configuration fails, the job does not */
    fd = openat(job->dirfd, "vm", O_WRONLY | O_CREAT, 0600);
    if (fd >= 0)
        close(fd);
    srv_job_write_vmconfig(&st, job, NULL, false);
    ok(strcmp(job->vmconfig, "failed") == 0 && strstr(job->vmconfig_error, "/vm") &&
           faccessat(job->dirfd, "disk0.raw", F_OK, 0) == 0,
       "a failure is recorded (%s) and the disk kept", job->vmconfig_error);
    unlinkat(job->dirfd, "vm", 0);
    srv_job_write_vmconfig(&st, job, NULL, false);
    struct p2v_buf b;
    p2v_buf_init(&b, 0);
    srv_read_file_at(job->dirfd, "vm/j1.xml", 1 << 20, &b, NULL);
    ok(strcmp(job->vmconfig, "written") == 0 && !job->vmconfig_error[0] &&
           strstr(p2v_buf_cstr(&b), "<mac address='00:11:22:33:44:55'/>") &&
           strstr(p2v_buf_cstr(&b), "firmware='efi'") &&
           faccessat(job->dirfd, "vm/j1.sh", X_OK, 0) == 0,
       "written: vm/j1.xml with the facts' MAC and UEFI, vm/j1.sh");
    p2v_buf_reset(&b);
    srv_read_file_at(job->dirfd, "job.log", 1 << 20, &b, NULL);
    ok(strstr(p2v_buf_cstr(&b), "vm: the VM configurations were not written") &&
           strstr(p2v_buf_cstr(&b), "vm: wrote 'vm/j1.sh'"),
       "job.log tells both");
    fd = openat(job->dirfd, "facts.json", O_WRONLY | O_TRUNC, 0600);
    if (fd >= 0) {
        if (write(fd, "{\"cpus\":0}", 10) < 0)
            diag("write failed");
        close(fd);
    }
    srv_job_write_vmconfig(&st, job, NULL, false);
    p2v_buf_reset(&b);
    srv_read_file_at(job->dirfd, "job.log", 1 << 20, &b, NULL);
    ok(strcmp(job->vmconfig, "written") == 0 &&
           strstr(p2v_buf_cstr(&b), "facts.json is not usable, using defaults"),
       "unusable facts: written with the defaults, noted in job.log");
    p2v_buf_release(&b);
    close(job->dirfd);
    free(job);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        diag("cannot remove %s", dir);
}

int main(void)
{
    plan(79);
    test_facts_defaults();
    test_facts_full();
    test_facts_bad();
    test_mac();
    test_sanitise();
    test_escape();
    test_texts();
    test_tar_mf();
    test_write();
    test_job();
    return exit_status();
}
