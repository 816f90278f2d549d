#!/bin/bash
# p2v-mkmedia's hybrid image boots from a CD on BIOS (SeaBIOS, ISOLINUX) under QEMU TCG,
# with its settings on the kernel command line (--append), the mini-bios fixture on SATA
# (AHCI, snapshot=on) and user networking whose only way out is guestfwd to p2v-server
# on 127.0.0.1: the capture completes unattended and powers off, the console shows the
# machine, its disks, the network and the progress, the server's copy holds the
# fixture's data, and the fixture is unchanged. Prints the times to the first byte and to
# the end.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (the kernel in /boot is 0600; loop devices)"
require_tool qemu-system-x86_64 qemu-img xorriso mformat mcopy busybox e2fsck sfdisk python3 openssl
. "$top_srcdir/tests/capture-lib.sh"
. "$top_srcdir/tests/integration/media-lib.sh"

plan 12
work=$(tmpdir)
store=$work/store
media_store "$store"
server_start "$store"
img=$(fixture mini-bios)
sum0=$(sha256sum <"$img")

media_build iso --console serial --poweroff \
    --append "p2v.server=10.0.2.100:7878 p2v.fingerprint=$FP p2v.token=$TOKEN p2v.name=media-bios"
media_net
MEDIA_JOB=media-bios
boot_ok "BIOS, CD: the guest captured and powered off by itself" bios 400 -cdrom "$iso" -boot d \
    -drive "file=$img,if=none,id=d0,format=raw,snapshot=on" \
    -device ich9-ahci,id=ahci -device ide-hd,drive=d0,bus=ahci.0 "${NET[@]}"
log=$work/bios.log
diag "BIOS: QEMU start to job created ${T_CONTACT:-?} s, to first data ${T_FIRST:-?} s, to capture complete ${T_END:-?} s, to power off $T_QEMU s"
ok "console: settings from the kernel command line" \
    serial_has "$log" 'server: 10\.0\.2\.100:7878 \(kernel command line\)'
ok "console: the machine's facts" serial_has "$log" '"firmware": "bios"'
ok "console: the machine's disks" serial_has "$log" '/dev/sda +256 MiB'
ok "console: network by DHCP" serial_has "$log" 'eth0 has 10\.0\.2\.15/24'
ok "console: the agent's progress" serial_has "$log" 'disk0 sda .*100\.0%'
ok "console: capture complete" serial_has "$log" 'P2V-CAPTURE-COMPLETE'
check_job "BIOS" media-bios "$img"
is "$(sha256sum <"$img")" "$sum0" "the fixture image is unchanged"
[ "$_tap_fail" -eq 0 ] || { diag "serial log:"; diag "$(grep -av '^ ' "$log" | tail -40)"; }
server_stop || diag "p2v-server exited with $?"
