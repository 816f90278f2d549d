#!/bin/bash
# p2v-inject on the debian12-bios fixture, converted to qcow2 first (so that -f qcow2 is
# what runs): initramfs-tools with MODULES=list and no virtio, GRUB, root by UUID. QEMU
# is the oracle: on virtio-blk the control never reaches login:, after the injection it
# boots to its marker (/etc/issue, shown before login:). A second run changes nothing.
# The default --initramfs auto appends to the current initrd in initramfs-tools' layout
# (modules, module index, /conf/modules) and edits /etc/initramfs-tools/modules, without
# running update-initramfs (minutes under TCG); --initramfs rebuild is checked as a plan
# (dry run) only.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-system-x86_64 qemu-img sha256sum python3
plan 15

inject=$(p2v_bin p2v-inject)
src=$(fixture debian12-bios)
. "$(dirname "$src")/fixture.env"
work=$(tmpdir)
img=$work/disk.qcow2
boot_timeout=${P2V_BOOT_TIMEOUT:-150}
qemu-img convert -O qcow2 "$src" "$img" || bail "qemu-img convert failed"
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

boot() {
    local name=$1 pat=$2 t0=$SECONDS rc=0
    qemu_boot_expect "$work/$name.log" "$boot_timeout" "$pat" \
        -drive "file=$img,format=qcow2,if=virtio,snapshot=on" || rc=$?
    diag "$name: $(( SECONDS - t0 )) s to /$pat/ ($([ $rc -eq 0 ] && echo seen || echo NOT seen))"
    return $rc
}

# ---- control: on virtio the initramfs cannot find the root
boot control '\(initramfs\)|login:' || true
ok "control: on virtio-blk the initramfs gives up (ALERT!), no login:" bash -c \
    'grep -aq "ALERT!" "$1" && ! grep -aq "login:" "$1"' _ "$work/control.log"
sum0=$(sha256sum "$img" | cut -d' ' -f1)

# ---- --initramfs rebuild, planned only (dry run: read-only, no boot)
t0=$SECONDS; rc=0
"$inject" -f qcow2 --initramfs rebuild --dry-run --json "$img" >"$work/dry.json" 2>"$work/dry.err" || rc=$?
diag "dry run --initramfs rebuild: $(( SECONDS - t0 )) s"
ok "--initramfs rebuild --dry-run: plans update-initramfs -u -k all for the kernel" bash -c '
    [ "$2" = 0 ] && python3 -c "import json,sys; j=json.load(open(sys.argv[1])); c=j[\"changes\"]
assert [(k[\"method\"], k[\"status\"]) for k in j[\"inspection\"][\"kernels\"]] == [(\"initramfs-tools\", \"would-add\")], j[\"inspection\"][\"kernels\"]
assert any(x[\"method\"] == \"initramfs-tools\" and \"update-initramfs -u -k all\" in x[\"detail\"] for x in c), c" "$1"' \
    _ "$work/dry.json" "$rc"
is "$(sha256sum "$img" | cut -d' ' -f1)" "$sum0" "dry run: the image is unchanged (sha256)"

# ---- the injection (-f qcow2)
t0=$SECONDS; rc=0
"$inject" -f qcow2 --json "$img" >"$work/run1.json" 2>"$work/run1.err" || rc=$?
diag "p2v-inject: $(( SECONDS - t0 )) s"
is "$rc" 0 "p2v-inject -f qcow2: exit 0"
[ $rc -eq 0 ] || diag "$(cat "$work/run1.err")"
is "$(jget "$work/run1.json" '(j["format"], j["inspection"]["distro"], j["inspection"]["major_version"], j["inspection"]["bootloader"], j["inspection"]["initramfs_tool"])')" \
    "('qcow2', 'debian', 12, 'grub2', 'initramfs-tools')" "inspection: qcow2, Debian 12, GRUB 2, initramfs-tools"
is "$(jget "$work/run1.json" '[(k["version"], k["method"], k["status"]) for k in j["inspection"]["kernels"]]')" \
    "[('$FIXTURE_KERNEL', 'initramfs-tools-append', 'added')]" "report: the kernel's initrd was extended (initramfs-tools-append)"
ok "report: /etc/initramfs-tools/modules gained virtio_blk; the initrd appended to, update-initramfs not run" bash -c '
    python3 -c "import json,sys; c=json.load(open(sys.argv[1]))[\"changes\"]
assert any(x[\"path\"] == \"/etc/initramfs-tools/modules\" and \"virtio_blk\" in x[\"detail\"] for x in c), c
assert any(x[\"method\"] == \"initramfs-tools-append\" and \"/conf/modules\" in x[\"detail\"] for x in c), c
assert not any(\"update-initramfs\" in (x.get(\"detail\") or \"\") for x in c), c" "$1"' \
    _ "$work/run1.json"
ok "report: no device-name change (the fixture already uses UUID=)" test \
    "$(jget "$work/run1.json" 'len([c for c in j["changes"] if c["kind"] == "device-name"])')" = 0
ok "qemu-img check: the qcow2 is consistent" qemu-img check -q "$img"

# ---- QEMU: now it boots on virtio
boot virtio "$FIXTURE_MARKER|login:|\(initramfs\)" || true
ok "virtio-blk: boots to the marker ($FIXTURE_MARKER)" grep -aq "$FIXTURE_MARKER" "$work/virtio.log"
ok "virtio-blk: root found on vda" grep -aqE "vda|virtio_blk" "$work/virtio.log"

# ---- a second run changes nothing
sum1=$(sha256sum "$img" | cut -d' ' -f1)
t0=$SECONDS; rc=0
"$inject" -f qcow2 --json "$img" >"$work/run2.json" 2>"$work/run2.err" || rc=$?
diag "second run: $(( SECONDS - t0 )) s"
is "$rc/$(jget "$work/run2.json" 'j["change_count"]')" "0/0" "second run: exit 0, 0 changes"
is "$(jget "$work/run2.json" '[k["status"] for k in j["inspection"]["kernels"]]')" "['present']" \
    "second run: the modules are found in the initrd"
is "$(sha256sum "$img" | cut -d' ' -f1)" "$sum1" "second run: the image is unchanged (sha256)"

# ---- the tool's configuration: future update-initramfs runs include virtio
LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg \
    virt-cat --format=qcow2 -a "$img" /etc/initramfs-tools/modules >"$work/modules.txt" 2>"$work/virt-cat.err" || true
ok "/etc/initramfs-tools/modules lists virtio_pci, virtio_blk, virtio_scsi, virtio_net" bash -c '
    for m in virtio_pci virtio_blk virtio_scsi virtio_net; do grep -qx "$m" "$1" || { cat "$1" "$2"; exit 1; }; done' \
    _ "$work/modules.txt" "$work/virt-cat.err"
