#!/bin/bash
# p2v-inject on the mini-bios fixture: an initramfs built by no tool (busybox, a shell
# /init) and /dev/sda names in fstab and on extlinux's APPEND line. QEMU is the oracle:
# after the injection the guest reaches its marker on virtio-blk (that the untouched
# fixture does not, its initramfs saying "ALERT! root device", is fixture-mini-bios.sh's
# proof). A second run writes nothing (the dry run on this fixture is inject-errors.sh's).
# First the copy gets leftovers of a machine that once was a VMware guest (written with
# debugfs): a udev rule binding eth0 to a MAC, an enabled open-vm-tools unit; both go.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-system-x86_64 sfdisk e2fsck debugfs sha256sum python3
plan 15

inject=$(p2v_bin p2v-inject)
src=$(fixture mini-bios)
. "$(dirname "$src")/fixture.env"
work=$(tmpdir)
img=$work/disk.img
cp --sparse=always "$src" "$img"
p1_start=$(sfdisk -d "$img" | awk -F'[=,]' '/img1 :/ {gsub(/ /, ""); print $2}')
root="$img?offset=$(( p1_start * 512 ))"
echo 'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="00:11:22:33:44:55", NAME="eth0"' >"$work/rules"
echo '[Unit]' >"$work/vmt.service"
wants=/etc/systemd/system/multi-user.target.wants
debugfs -w -f - "$root" >"$work/debugfs.log" 2>&1 <<EOF
mkdir /etc/udev
mkdir /etc/udev/rules.d
write $work/rules /etc/udev/rules.d/70-persistent-net.rules
mkdir /etc/systemd
mkdir /etc/systemd/system
mkdir $wants
mkdir /lib/systemd
mkdir /lib/systemd/system
write $work/vmt.service /lib/systemd/system/open-vm-tools.service
symlink $wants/open-vm-tools.service /lib/systemd/system/open-vm-tools.service
EOF
# present PATH...: every PATH exists in the root file system
present() {
    local p
    for p in "$@"; do debugfs -R "stat $p" "$root" 2>/dev/null | grep -q "Inode:" || return 1; done
}
ok "setup: a persistent-net rule and an open-vm-tools wants link" present \
    /etc/udev/rules.d/70-persistent-net.rules "$wants/open-vm-tools.service"
sum0=$(sha256sum "$img" | cut -d' ' -f1)

# jq-less JSON look-ups: jget FILE PYTHON-EXPRESSION-ON-j
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

boot() {
    local name=$1 to=$2 pat=$3 t0=$SECONDS rc=0
    qemu_boot_expect "$work/$name.log" "$to" "$pat" \
        -drive "file=$img,format=raw,if=virtio,snapshot=on" || rc=$?
    diag "$name: $(( SECONDS - t0 )) s to /$pat/ ($([ $rc -eq 0 ] && echo seen || echo NOT seen))"
    [ $rc -eq 0 ] || diag "$(tail -n 15 "$work/$name.log" | tr -d '\r' | cut -c1-160)"
    return $rc
}

# ---- the injection
t0=$SECONDS; rc=0
"$inject" --remove-vmware-tools --json "$img" >"$work/run1.json" 2>"$work/run1.err" || rc=$?
diag "p2v-inject: $(( SECONDS - t0 )) s"
is "$rc" 0 "p2v-inject: exit 0"
[ $rc -eq 0 ] || diag "$(cat "$work/run1.err")"
is "$(jget "$work/run1.json" '[k["method"] + ":" + k["status"] for k in j["inspection"]["kernels"]]')" \
    "['generic-append:added']" "report: the kernel took the generic path, modules added"
is "$(jget "$work/run1.json" 'sorted(set(c["path"] for c in j["changes"] if c["kind"] == "device-name"))')" \
    "['/boot/extlinux/extlinux.conf', '/etc/fstab']" "report: device names rewritten in fstab and extlinux.conf"
ok "report: root=/dev/sda1 became root=UUID=$FIXTURE_ROOT_UUID on the APPEND line" test \
    "$(jget "$work/run1.json" '[c["after"].split()[1] for c in j["changes"] if c["path"].endswith("extlinux.conf")]')" \
    = "['root=UUID=$FIXTURE_ROOT_UUID']"
ok "report: virtio_blk and virtio_pci among the modules added" bash -c '
    python3 -c "import json,sys; k=json.load(open(sys.argv[1]))[\"inspection\"][\"kernels\"][0]
assert {\"virtio_blk\",\"virtio_pci\",\"virtio_scsi\",\"virtio_net\"} <= set(k[\"modules_added\"]), k" "$1"' \
    _ "$work/run1.json"
is "$(jget "$work/run1.json" '[(c["kind"], c["path"]) for c in j["changes"] if c["method"] == "remove"]')" \
    "[('remove-file', '/etc/udev/rules.d/70-persistent-net.rules'), ('disable-service', '$wants/open-vm-tools.service')]" \
    "report: the MAC-bound udev rule removed, open-vm-tools disabled"
cleaned() {
    ! present /etc/udev/rules.d/70-persistent-net.rules && ! present "$wants/open-vm-tools.service" &&
        present /lib/systemd/system/open-vm-tools.service
}
ok "root: the rule and the link are gone, the unit file itself stays" cleaned
sum1=$(sha256sum "$img" | cut -d' ' -f1)
ok "the image changed" test "$sum1" != "$sum0"

# ---- QEMU: now it boots on virtio
ready="$FIXTURE_MARKER root=/dev/vda1"
rc=0; boot virtio 90 "$FIXTURE_MARKER|reboot: Power down" || rc=$?
ok "virtio-blk: boots to the marker '$ready'" grep -aq "$ready" "$work/virtio.log"
ok "virtio-blk: swap on by UUID" grep -aq "swap on UUID=" "$work/virtio.log"

# ---- a second run changes nothing (human lines this time)
rc=0
"$inject" "$img" >"$work/run2.out" 2>"$work/run2.err" || rc=$?
diag "$(cat "$work/run2.out")"
is "$rc" 0 "second run: exit 0"
ok "second run: 'nothing to change ... (0 changes)', the kernel's modules present" bash -c '
    grep -q "^nothing to change: .*(0 changes)" "$1" && grep -q "^kernel .*generic-append: present" "$1" &&
    ! grep -q "^changed:" "$1"' _ "$work/run2.out"
is "$(sha256sum "$img" | cut -d' ' -f1)" "$sum1" "second run: the image is unchanged (sha256)"

# ---- the root file system is clean
read -r p1_start p1_size < <(sfdisk -d "$img" | awk -F'[=,]' '/img1 :/ {gsub(/ /, ""); print $2, $4}')
dd if="$img" of="$work/p1.img" bs=1M iflag=skip_bytes,count_bytes skip=$(( p1_start * 512 )) \
    count=$(( p1_size * 512 )) conv=sparse status=none
ok "root partition: e2fsck -fn finds it clean" e2fsck -fn "$work/p1.img"
