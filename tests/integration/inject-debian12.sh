#!/bin/bash
# p2v-inject on the debian12-bios fixture as qcow2 (so that -f qcow2 is what runs):
# initramfs-tools with MODULES=list and no virtio, GRUB, root by UUID. The injection is the
# one tests/functions.sh's injected_fixture caches; here its report is checked, and a
# second run changes nothing. That the injected guest boots on virtio-blk to its login
# prompt is proved by QEMU in tests/e2e/pipeline.sh (the server's verification of the
# captured debian12 machine) and by our VMM in vmm-kvm.sh (this very copy); that the
# untouched fixture does not, by fixture-debian12-bios.sh.
# The default --initramfs auto appends to the current initrd in initramfs-tools' layout
# (modules, module index, /conf/modules) and edits /etc/initramfs-tools/modules, without
# running update-initramfs (minutes under TCG); --initramfs rebuild is checked as a plan
# (dry run) only.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-img sha256sum python3
plan 12

inject=$(p2v_bin p2v-inject)
src=$(fixture debian12-bios)
. "$(dirname "$src")/fixture.env"
work=$(tmpdir)
img=$work/disk.qcow2
qemu-img convert -O qcow2 "$src" "$img" || bail "qemu-img convert failed"
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

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

# ---- the injection (-f qcow2), cached: the untouched qcow2 above is no longer needed
rc=0
injected=$(injected_fixture debian12-bios qcow2) || rc=$?
is "$rc" 0 "p2v-inject -f qcow2: exit 0"
[ $rc -eq 0 ] || bail "p2v-inject failed on the debian12 fixture"
diag "p2v-inject: $(cat "$(dirname "$injected")/inject.secs") s (cached in $(dirname "$injected"))"
cp "$(dirname "$injected")/report.json" "$work/run1.json"
cp "$injected" "$img"
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
