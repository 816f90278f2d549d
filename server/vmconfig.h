/* vmconfig.h: the server's VM configuration generator — from a captured machine's facts
 * (facts.json from p2v-agent) and its disks, the configurations that run it elsewhere:
 *
 *   libvirt   NAME.xml    a libvirt domain (KVM, virtio disks and NICs, serial console)
 *   qemu      NAME.sh     a runnable qemu-system-x86_64 command (KVM, else TCG)
 *   vmx       NAME.vmx    VMware (SATA disks, e1000e NICs), with VMDK disks
 *   ovf       NAME.ovf    an OVF 1.0 envelope + NAME.mf + streamOptimized VMDKs
 *   ova       NAME.ova    the same packed in one ustar archive (.ovf, .mf, then disks)
 *
 * Everything taken from the network (names, MACs, OS strings) is validated or escaped
 * here: file names are sanitised (vmconfig_sanitise_name), XML and shell text escaped.
 * Outputs are written under temporary names and renamed only once every requested output
 * is complete, so a failure leaves nothing half-written in the output folder.
 * Server-internal: nothing outside server/ and tests/unit/server/ includes it.
 */
#ifndef P2V_VMCONFIG_H
#define P2V_VMCONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

#define VM_NAME_MAX 64       /* a sanitised VM name (and file name stem) */
#define VM_NICS_MAX 8        /* NICs kept from the facts; more are dropped */
#define VM_DISKS_MAX 16      /* as many as a job has (P2V_PROTO_DISKS_MAX) */
#define VM_FACTS_MAX 65535u  /* the FACTS frame's cap */

/* Defaults (no facts, or a fact missing) and clamps applied to facts (a machine with
 * 512 GiB or 256 CPUs still gets a VM that starts on an ordinary host). Explicit
 * overrides are checked against the wider VM_*_MAX_OVERRIDE bounds instead. */
#define VM_DEFAULT_CPUS 2
#define VM_DEFAULT_MEMORY_MIB 2048
#define VM_FACTS_CPUS_MAX 16
#define VM_FACTS_MEMORY_MIB_MIN 512
#define VM_FACTS_MEMORY_MIB_MAX (64u * 1024)
#define VM_CPUS_MAX_OVERRIDE 255
#define VM_MEMORY_MIB_MIN_OVERRIDE 64
#define VM_MEMORY_MIB_MAX_OVERRIDE (1024u * 1024)

enum vm_firmware { VM_FW_BIOS, VM_FW_UEFI };

/* The outputs, as a mask. */
enum vm_output {
    VM_OUT_LIBVIRT = 1 << 0,
    VM_OUT_QEMU = 1 << 1,
    VM_OUT_VMX = 1 << 2,
    VM_OUT_OVF = 1 << 3,
    VM_OUT_OVA = 1 << 4,
};
#define VM_OUT_DEFAULT (VM_OUT_LIBVIRT | VM_OUT_QEMU)
#define VM_OUT_ALL (VM_OUT_LIBVIRT | VM_OUT_QEMU | VM_OUT_VMX | VM_OUT_OVF | VM_OUT_OVA)

struct vm_nic {
    char mac[18];            /* "52:54:00:12:34:56", lower case, a valid unicast MAC */
};

struct vm_disk {
    char *path;              /* absolute */
    char format[8];          /* "raw", "qcow2", "vmdk", "vhd", "vhdx" */
    uint64_t size;           /* virtual size in bytes */
};

struct vm_spec {
    char name[VM_NAME_MAX + 1];      /* sanitised: [A-Za-z0-9._-], no leading '.' or '-' */
    char *title;                     /* the name as given (may be NULL): escaped where shown */
    unsigned cpus;
    uint64_t memory_mib;
    enum vm_firmware firmware;
    char os_id[32], os_version[32];  /* from facts "os" (sanitised), may be empty */
    bool os_64bit;
    unsigned nnics;
    struct vm_nic nics[VM_NICS_MAX];
    unsigned ndisks;
    struct vm_disk disks[VM_DISKS_MAX];
};

/* Fill @spec with the defaults: VM_DEFAULT_CPUS, VM_DEFAULT_MEMORY_MIB, BIOS, name "vm",
 * no NIC, no disk. */
void vm_spec_init(struct vm_spec *spec);
/* Free what a spec holds (disk paths, title); the spec is then as after vm_spec_init. */
void vm_spec_release(struct vm_spec *spec);

/* Read facts JSON (@len bytes) into @spec (initialised): "name" (else "hostname") as the
 * name, "cpus", "memory-bytes" (rounded up to 128 MiB, from 2 GiB on to 1 GiB), "firmware" ("bios" | "uefi"),
 * "nics" [{"mac", "driver"}], "os" {"id", "version-id", "arch"}. A missing or null
 * member keeps the default; a member of the wrong type or an impossible value (0 CPUs,
 * an unknown firmware, a MAC that is not six hex pairs) fails with the member named.
 * Large values are clamped (VM_FACTS_*). NICs without a driver (virtual: bridges, veth,
 * tun) or without a MAC are skipped, as are duplicates and those past VM_NICS_MAX; with
 * none left, one NIC with a random MAC (vm_mac_random) is made. 0 / -1. */
int vm_spec_from_facts(struct vm_spec *spec, const char *json, size_t len,
                       struct p2v_err *err);
/* Set the name (sanitised) and remember @title as given. 0 / -1 (ENOMEM). */
int vm_spec_set_name(struct vm_spec *spec, const char *title, struct p2v_err *err);
/* Add a NIC (validated with vm_mac_parse) / one with a random MAC. 0 / -1. */
int vm_spec_add_nic(struct vm_spec *spec, const char *mac, struct p2v_err *err);
int vm_spec_add_random_nic(struct vm_spec *spec, struct p2v_err *err);
/* Add a disk: @path made absolute; @format NULL probes it (diskfmt_probe); the image is
 * opened to learn its virtual size. 0 / -1. */
int vm_spec_add_disk(struct vm_spec *spec, const char *path, const char *format,
                     struct p2v_err *err);

/* A MAC address "xx:xx:xx:xx:xx:xx" (hex, any case; '-' separators accepted) that is
 * unicast and not all zeros, normalised to lower case with ':' into @out. 0 / -1. */
int vm_mac_parse(const char *s, char out[18], struct p2v_err *err);
/* A random locally-administered unicast MAC 52:54:00:xx:xx:xx (QEMU's prefix). */
int vm_mac_random(char out[18], struct p2v_err *err);

/* Turn @in into a safe file name stem of at most @size - 1 (<= VM_NAME_MAX) characters:
 * [A-Za-z0-9._-] kept, anything else '_', no leading '.' or '-', "vm" when nothing is
 * left. Always NUL-terminates. */
void vmconfig_sanitise_name(const char *in, char *out, size_t size);

/* Escapers appending to @b: XML character data and attribute values (& < > " ' and
 * control characters other than tab; bytes that are not valid UTF-8 become '?'), a shell
 * word in single quotes, a VMware .vmx value (| and " and control bytes as |XX).
 * 0 / -1 (ENOBUFS). */
int vmconfig_xml_escape(struct p2v_buf *b, const char *s);
int vmconfig_sh_quote(struct p2v_buf *b, const char *s);
int vmconfig_vmx_escape(struct p2v_buf *b, const char *s);

/* Parse "libvirt,qemu,vmx,ovf,ova" or "all" into a mask. 0 / -1. */
int vmconfig_parse_outputs(const char *s, unsigned *mask, struct p2v_err *err);

/* The guest OS names the targets know, from the facts' os id / version / arch. */
const char *vmconfig_vmx_guest_os(const struct vm_spec *spec);
unsigned vmconfig_ovf_os_id(const struct vm_spec *spec);

/* Build the texts in memory (pure; the unit tests read them): @outdir is the folder the
 * files go into, from which the QEMU script refers to disks beside it (or in its parent)
 * by relative path. @vmdk_names (vmx): the VMDK file of each disk as the .vmx names it. */
int vmconfig_libvirt_text(const struct vm_spec *spec, struct p2v_buf *out,
                          struct p2v_err *err);
int vmconfig_qemu_text(const struct vm_spec *spec, const char *outdir, struct p2v_buf *out,
                       struct p2v_err *err);
int vmconfig_vmx_text(const struct vm_spec *spec, const char *const *vmdk_names,
                      struct p2v_buf *out, struct p2v_err *err);

/* An OVF disk file: its href (relative to the .ovf), size in bytes and format URI. */
struct vm_ovf_file {
    const char *href;
    uint64_t file_size;
    const char *format_uri;
};
#define VM_OVF_STREAM_URI \
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
#define VM_OVF_SPARSE_URI "http://www.vmware.com/specifications/vmdk.html#sparse"
int vmconfig_ovf_text(const struct vm_spec *spec, const struct vm_ovf_file *files,
                      struct p2v_buf *out, struct p2v_err *err);

/* ustar: fill one 512-byte header for a regular file (mode 0644, owner 0:0) of @size
 * bytes (>= 8 GiB: GNU base-256 size) and its checksum. @name <= 99 bytes. 0 / -1. */
#define VM_TAR_BLOCK 512
int vmconfig_tar_header(uint8_t hdr[VM_TAR_BLOCK], const char *name, uint64_t size,
                        uint64_t mtime, struct p2v_err *err);
/* The checksum a header should carry (sum of its bytes, the checksum field as spaces). */
unsigned vmconfig_tar_checksum(const uint8_t hdr[VM_TAR_BLOCK]);
/* One manifest line "SHA256(FILE)= hex\n" appended to @b. */
int vmconfig_mf_line(struct p2v_buf *b, const char *file, const uint8_t sha256[32]);

/* Write the outputs in @opts->outputs into @outdir (which must exist), each named after
 * spec->name. The vmx output converts every disk to a monolithicSparse NAME-diskN.vmdk
 * beside the .vmx; ovf and ova to streamOptimized NAME-diskN-stream.vmdk (ova: packed,
 * not left beside it). With @use_vmdk_in_place, disks that are VMDK already are used as
 * they are: the .vmx names them and the .ovf refers to them (sparse format URI, no
 * manifest) — the server's job folder, whose disks are not copied. @stop (may be NULL)
 * is polled during conversions (ECANCELED). Every file is written under a temporary name
 * and renamed at the end; on failure none is left. On success @written (may be NULL)
 * receives the final file names, one per line. 0 / -1. */
struct vmconfig_opts {
    unsigned outputs;
    bool use_vmdk_in_place;
    const atomic_bool *stop;
};
int vmconfig_write(const struct vm_spec *spec, const char *outdir,
                   const struct vmconfig_opts *opts, struct p2v_buf *written,
                   struct p2v_err *err);

#endif /* P2V_VMCONFIG_H */
