#!/bin/bash
# The mini-uefi fixture is the machine the conversion tests say it is: a GPT disk with an
# EFI system partition (FAT32, GRUB on the removable-media path), an ext4 root and a swap
# partition, whose initramfs carries only IDE/SATA drivers. Static checks (partition
# table, the ESP's files, a clean root, no virtio in the initramfs, virtio modules on the
# root for injection), then boots under QEMU TCG with OVMF: on AHCI it reaches its marker
# and login:, on virtio its initramfs gives up with "ALERT! root device" and powers off.
# The image never changes.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-system-x86_64 sfdisk e2fsck debugfs cpio zcat sha256sum mdir mtype minfo
OVMF=${P2V_OVMF:-/usr/share/ovmf/OVMF.fd}
[ -f "$OVMF" ] || skip_all "no OVMF firmware at $OVMF (apt-get install ovmf)"
plan 19

img=$(fixture mini-uefi)
# FIXTURE_MARKER, FIXTURE_ROOT_DEV, FIXTURE_ROOT_UUID, FIXTURE_KERNEL, FIXTURE_SHA256, ...
. "$(dirname "$img")/fixture.env"
work=$(tmpdir)
export MTOOLS_SKIP_CHECK=1
sum0=$(sha256sum "$img" | cut -d' ' -f1)
is "$sum0" "$FIXTURE_SHA256" "the cached image is the one that was built"
is "$FIXTURE_FIRMWARE/$FIXTURE_PARTITIONS/$FIXTURE_ROOT_DEV" "uefi/gpt//dev/sda2" \
    "fixture.env: firmware, partitions, root device"

# ---- static checks, no boot -------------------------------------------------------------
sfdisk -d "$img" >"$work/ptab" 2>&1
diag "$(grep -v '^$' "$work/ptab")"
ok "sfdisk: a GPT label" grep -q '^label: gpt' "$work/ptab"
ok "sfdisk: p1 EFI System, p2 Linux filesystem, p3 Linux swap" bash -c '
    [ "$(grep -c "start=" "$1")" -eq 3 ] &&
    grep -Eq "img1 : start= *2048, size= *[0-9]+, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B" "$1" &&
    grep -Eq "img2 : .*type=0FC63DAF-8483-4772-8E79-3D69D8477DE4" "$1" &&
    grep -Eq "img3 : .*type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" "$1"' _ "$work/ptab"
if command -v sgdisk >/dev/null; then
    ok "sgdisk -v: no problems (headers, protective MBR)" bash -c '
        sgdisk -v "$1" | grep -q "No problems found"' _ "$img"
else
    ok "sgdisk -v # SKIP sgdisk is not installed"
fi
# sectors after the last partition (the backup GPT takes the last 33)
tail_mib=$(awk -v total=$(( $(stat -c %s "$img") / 512 )) -F'[=,]' '/start=/ {
        e = $2 + $4; if (e > end) end = e } END { print int((total - end) / 2048) }' "$work/ptab")
ok "unpartitioned space at the end (${tail_mib} MiB)" test "$tail_mib" -ge 8

read -r p1_start _ < <(awk -F'[=,]' '/img1 :/ {gsub(/ /, ""); print $2, $4}' "$work/ptab")
read -r p2_start p2_size < <(awk -F'[=,]' '/img2 :/ {gsub(/ /, ""); print $2, $4}' "$work/ptab")
read -r p3_start _ < <(awk -F'[=,]' '/img3 :/ {gsub(/ /, ""); print $2, $4}' "$work/ptab")
esp="$img@@$(( p1_start * 512 ))"
ok "ESP: FAT32 with /EFI/BOOT/BOOTX64.EFI (a PE image)" bash -c '
    minfo -i "$1" :: | grep -q "FAT32" &&
    [ "$(mtype -i "$1" ::/EFI/BOOT/BOOTX64.EFI | head -c 2)" = MZ ]' _ "$esp"
ok "ESP: grub.cfg: serial console, root found by UUID, root=$FIXTURE_ROOT_DEV" bash -c '
    mtype -i "$1" ::/EFI/BOOT/grub.cfg >"$4/grub.cfg" &&
    grep -q "^serial " "$4/grub.cfg" && grep -q "^terminal_output serial" "$4/grub.cfg" &&
    grep -q -- "--fs-uuid --set=root $2" "$4/grub.cfg" &&
    grep -q "root=$3 console=ttyS0,115200" "$4/grub.cfg"' \
    _ "$esp" "$FIXTURE_ROOT_UUID" "$FIXTURE_ROOT_DEV" "$work"

p2=$work/p2.img
dd if="$img" of="$p2" bs=1M iflag=skip_bytes,count_bytes skip=$(( p2_start * 512 )) \
    count=$(( p2_size * 512 )) conv=sparse status=none
ok "p2: e2fsck -fn finds it clean" e2fsck -fn "$p2"
debugfs -R "dump /boot/initrd.img-$FIXTURE_KERNEL $work/initrd" "$p2" 2>/dev/null
zcat "$work/initrd" 2>/dev/null | cpio --quiet -t >"$work/initrd.list" 2>/dev/null
ok "initramfs: init, busybox, ahci, ata_piix, sd_mod, ext4" bash -c '
    for f in init bin/busybox ahci.ko ata_piix.ko sd_mod.ko ext4.ko; do
        grep -Eq "(^|/)$f\$" "$1" || { echo "no $f"; exit 1; }; done' _ "$work/initrd.list"
ok "initramfs: no virtio module" bash -c '! grep -i virtio "$1"' _ "$work/initrd.list"
ok "root: virtio modules under /lib/modules for injection, modules.dep" bash -c '
    m=/lib/modules/$2
    debugfs -R "cat $m/modules.dep" "$1" 2>/dev/null >"$3/dep"
    for v in virtio_blk virtio_scsi virtio_net virtio_pci virtio_console vfat; do
        grep -q "/$v.ko:" "$3/dep" || { echo "$v not in modules.dep"; exit 1; }; done
    debugfs -R "ls -p $m/kernel/drivers/block" "$1" 2>/dev/null | grep -q /virtio_blk.ko/' \
    _ "$p2" "$FIXTURE_KERNEL" "$work"
ok "root: /etc/fstab names /dev/sda2 (/), /dev/sda1 (/boot/efi), /dev/sda3 (swap)" bash -c '
    debugfs -R "cat /etc/fstab" "$1" 2>/dev/null >"$2/fstab"
    grep -Eq "^/dev/sda2[[:space:]]+/[[:space:]]+ext4" "$2/fstab" &&
    grep -Eq "^/dev/sda1[[:space:]]+/boot/efi[[:space:]]+vfat" "$2/fstab" &&
    grep -Eq "^/dev/sda3[[:space:]]+none[[:space:]]+swap" "$2/fstab"' _ "$p2" "$work"
ok "p3: a swap signature" bash -c '
    [ "$(dd if="$1" bs=1 skip=$(( $2 * 512 + 4086 )) count=10 status=none)" = SWAPSPACE2 ]' \
    _ "$img" "$p3_start"
rm -f "$p2"

# ---- boots (OVMF: -bios maps it read-only, so the image is the only thing written to,
# and snapshot=on keeps that off the image) -------------------------------------------
# boot NAME TIMEOUT PATTERN QEMU-ARGS...: qemu_boot_expect with a timing and, when PATTERN
# never shows, the tail of the serial log; the log is $work/NAME.log
boot() {
    local name=$1 to=$2 pat=$3 t0=$SECONDS rc=0
    shift 3
    qemu_boot_expect "$work/$name.log" "$to" "$pat" -bios "$OVMF" "$@" || rc=$?
    diag "$name: $(( SECONDS - t0 )) s to /$pat/ ($([ $rc -eq 0 ] && echo seen || echo NOT seen))"
    if [ $rc -ne 0 ]; then
        diag "the end of the serial log:"
        diag "$(tail -n 25 "$work/$name.log" | tr -d '\r' | sed 's/\x1b\[[0-9;?=]*[a-zA-Z]//g' | cut -c1-160)"
    fi
    return $rc
}
seen() { grep -aq -- "$1" "$2"; }
ready="$FIXTURE_MARKER root=$FIXTURE_ROOT_DEV"

rc=0; boot ahci 100 'login:' -device ahci,id=ahci \
    -drive "id=d0,file=$img,format=raw,if=none,snapshot=on" -device ide-hd,drive=d0,bus=ahci.0 || rc=$?
ok "SATA/AHCI: boots to login:" test $rc -eq 0
ok "SATA/AHCI: the marker '$ready', the ESP mounted, swap on" bash -c '
    grep -aq -- "$1" "$2" && grep -aq "/boot/efi mounted" "$2" &&
    grep -aq "swap on /dev/sda3" "$2"' _ "$ready" "$work/ahci.log"

# on virtio the initramfs waits ~10 s for the root, then powers the machine off
rc=0; boot virtio 100 "reboot: Power down|$FIXTURE_MARKER" \
    -drive "file=$img,format=raw,if=virtio,snapshot=on" || rc=$?
ok "virtio: the initramfs says 'ALERT! root device $FIXTURE_ROOT_DEV not found'" \
    seen "ALERT! root device $FIXTURE_ROOT_DEV not found" "$work/virtio.log"
ok "virtio: powered off, never the marker" bash -c '
    [ "$1" -eq 0 ] && grep -aq "reboot: Power down" "$3" && ! grep -aq -- "$2" "$3"' \
    _ "$rc" "$FIXTURE_MARKER" "$work/virtio.log"

is "$(sha256sum "$img" | cut -d' ' -f1)" "$sum0" "the image is unchanged after the boots"
