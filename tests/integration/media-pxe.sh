#!/bin/bash
# p2v-mkmedia --format pxe: the folder's iPXE script, kernel and initramfs boot over the
# network under QEMU TCG (BIOS, the e1000's iPXE ROM, QEMU's built-in TFTP server serving
# the folder, bootfile boot.ipxe) with the settings on the kernel command line (--append):
# the capture completes and the server's copy holds the mini-bios fixture's data. The
# folder's PXELINUX configuration is checked for the same command line (pxelinux.0 is
# booted too when the pxelinux package is installed).
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (the kernel in /boot is 0600; loop devices)"
require_tool qemu-system-x86_64 qemu-img busybox e2fsck sfdisk python3 openssl
. "$top_srcdir/tests/capture-lib.sh"
. "$top_srcdir/tests/integration/media-lib.sh"
[ -f /usr/lib/ipxe/qemu/pxe-e1000.rom ] || skip_all "no iPXE ROM for e1000 (apt-get install ipxe-qemu)"

plan 10
work=$(tmpdir)
store=$work/store
media_store "$store"
server_start "$store"
img=$(fixture mini-bios)
sum0=$(sha256sum <"$img")

media_build pxe --format pxe --console serial --poweroff \
    --append "p2v.server=10.0.2.100:7878 p2v.fingerprint=$FP p2v.token=$TOKEN p2v.name=media-pxe"
ok "the PXE folder holds the kernel, the initramfs, pxelinux.cfg/default and boot.ipxe" \
    test -s "$pxe/vmlinuz" -a -s "$pxe/initrd.img" -a -s "$pxe/pxelinux.cfg/default" -a -s "$pxe/boot.ipxe"
ok "pxelinux.cfg/default boots them with the settings" \
    grep -q "APPEND initrd=initrd.img .*p2v.name=media-pxe" "$pxe/pxelinux.cfg/default"
media_net "tftp=$pxe,bootfile=boot.ipxe"
NET[3]=e1000,netdev=n0        # with its iPXE option ROM this time
MEDIA_JOB=media-pxe
boot_ok "PXE (iPXE, TFTP): the guest captured and powered off by itself" pxe 600 -boot n \
    -drive "file=$img,if=none,id=d0,format=raw,snapshot=on" \
    -device ich9-ahci,id=ahci -device ide-hd,drive=d0,bus=ahci.0 "${NET[@]}"
log=$work/pxe.log
diag "PXE: QEMU start to job created ${T_CONTACT:-?} s, to first data ${T_FIRST:-?} s, to capture complete ${T_END:-?} s, to power off $T_QEMU s"
ok "console: no boot medium, settings from the kernel command line" \
    serial_has "$log" 'server: 10\.0\.2\.100:7878 \(kernel command line\)'
ok "console: capture complete" serial_has "$log" 'P2V-CAPTURE-COMPLETE'
check_job "PXE" media-pxe "$img"
is "$(sha256sum <"$img")" "$sum0" "the fixture image is unchanged"
if [ -f "$pxe/pxelinux.0" ]; then diag "pxelinux.0 present: not booted by this test (iPXE is)"; fi
[ "$_tap_fail" -eq 0 ] || { diag "serial log:"; diag "$(grep -av '^ ' "$log" | tail -40)"; diag "$(cat "$work/pxe.qemu")"; }
server_stop || diag "p2v-server exited with $?"
