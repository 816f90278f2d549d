#!/bin/bash
# p2v-mkmedia's hybrid image boots from a USB stick on UEFI (OVMF, GRUB) under QEMU TCG,
# with its settings in p2v.conf on the image's FAT partition (written with mtools into a
# copy of media built without settings; a static address), the mini-bios fixture on SATA (q35's AHCI,
# snapshot=on) and user networking whose only way out is guestfwd to p2v-server: the
# capture completes unattended, the stick itself is not captured, the server's copy
# holds the fixture's data, the fixture and the stick are unchanged.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (the kernel in /boot is 0600; loop devices)"
require_tool qemu-system-x86_64 qemu-img xorriso mformat mcopy busybox e2fsck sfdisk python3 openssl
. "$top_srcdir/tests/capture-lib.sh"
. "$top_srcdir/tests/integration/media-lib.sh"
[ -f "$OVMF_CODE" ] && [ -f "$OVMF_VARS" ] || skip_all "no OVMF at $OVMF_CODE (apt-get install ovmf)"

plan 14
work=$(tmpdir)
store=$work/store
media_store "$store"
server_start "$store"
img=$(fixture mini-bios)
sum0=$(sha256sum <"$img")

media_build plain --console serial --poweroff
stick=$work/stick.img
cp "$plain" "$stick"
cat >"$work/p2v.conf" <<CONF
# written by media-uefi.sh
server = 10.0.2.100:7878
fingerprint=$FP
token=$TOKEN
name=media-uefi
ip=10.0.2.20/24,10.0.2.2
CONF
ok "p2v.conf written on the image's FAT partition with mcopy" put_conf "$stick" "$work/p2v.conf"
stick_sum=$(sha256sum <"$stick")
media_net
uefi_args
MEDIA_JOB=media-uefi
boot_ok "UEFI, USB stick: the guest captured and powered off by itself" uefi 500 "${UEFI[@]}" \
    -device qemu-xhci,id=xhci \
    -drive "file=$stick,if=none,id=stick,format=raw,readonly=on" \
    -device usb-storage,bus=xhci.0,drive=stick,bootindex=0 \
    -drive "file=$img,if=none,id=d0,format=raw,snapshot=on" -device ide-hd,drive=d0,bus=ide.0 \
    "${NET[@]}"
log=$work/uefi.log
diag "UEFI: QEMU start to job created ${T_CONTACT:-?} s, to first data ${T_FIRST:-?} s, to capture complete ${T_END:-?} s, to power off $T_QEMU s"
ok "console: settings from p2v.conf" serial_has "$log" 'server: 10\.0\.2\.100:7878 \(p2v\.conf\)'
ok "console: firmware uefi" serial_has "$log" '"firmware": "uefi"'
ok "console: the static address of p2v.conf" serial_has "$log" 'eth0 +10\.0\.2\.20/24'
ok "console: the stick is found as the boot medium" serial_has "$log" 'boot medium: /dev/sd'
ok "console: only the machine's disk is captured" serial_has "$log" "capturing /dev/sda as 'media-uefi'"
ok "console: capture complete" serial_has "$log" 'P2V-CAPTURE-COMPLETE'
check_job "UEFI" media-uefi "$img"
is "$(sha256sum <"$img")" "$sum0" "the fixture image is unchanged"
is "$(sha256sum <"$stick")" "$stick_sum" "the stick is unchanged"
[ "$_tap_fail" -eq 0 ] || { diag "serial log:"; diag "$(grep -av '^ ' "$log" | tail -40)"; }
server_stop || diag "p2v-server exited with $?"
