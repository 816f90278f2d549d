#!/bin/bash
# p2v-mkmedia without booting anything: --help, usage errors (exit 2), missing inputs named
# with the package to install (exit 1), no half-written media after a failure or SIGTERM;
# the hybrid image's layout (MBR with an EFI system partition, FAT labelled P2VKIT holding
# BOOTX64.EFI and p2v.conf, ISOLINUX and GRUB configurations with the settings), the
# initramfs's contents (init, p2v-agent and its libraries, busybox, the storage / network /
# FAT modules, the built-in settings, /dev/console) and that the agent runs from it; the
# same inputs give byte-identical media.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (the kernel in /boot is 0600; chroot)"
require_tool xorriso mformat mcopy mdir mlabel mtype cpio xz sfdisk python3 openssl busybox
. "$top_srcdir/tests/capture-lib.sh"
. "$top_srcdir/tests/integration/media-lib.sh"

plan 42
work=$(tmpdir)
out=$work/out
mkdir -p "$out" "$work/tmp"
export TMPDIR=$work/tmp

# ---- command line
ok "--help" "$MKMEDIA" --help
ok "--help names every format" bash -c "'$MKMEDIA' --help | grep -q 'iso (default), usb (the same hybrid image), or pxe'"
ok "--version" bash -c "'$MKMEDIA' --version | grep -q '^p2v-mkmedia (p2vkit) '"
usage() {   # usage DESC PATTERN ARGS...: exit 2 and PATTERN on stderr
    local desc=$1 pat=$2 rc; shift 2
    "$MKMEDIA" "$@" >/dev/null 2>"$work/err"; rc=$?
    if [ $rc -eq 2 ] && grep -q -- "$pat" "$work/err"; then ok "usage: $desc"
    else not_ok "usage: $desc"; diag "exit $rc: $(cat "$work/err")"; fi
}
usage "no --out" '--out is required'
usage "unknown format" "--format must be iso, usb or pxe" --out "$out/x.iso" --format floppy
usage "malformed fingerprint" 'SHA256: and 64 hex digits' --out "$out/x.iso" --fingerprint SHA256:12
usage "server without port" 'HOST:PORT' --out "$out/x.iso" --server example
usage "bad name" "a letter or digit" --out "$out/x.iso" --name '-x'
usage "bad static address" 'ADDR/PREFIX,GATEWAY' --out "$out/x.iso" --ip 10.0.0.1
usage "unknown option" "unknown option '--frobnicate'" --out "$out/x.iso" --frobnicate
fails() {   # fails DESC PATTERN ARGS...: exit 1 and PATTERN on stderr
    local desc=$1 pat=$2 rc; shift 2
    "$MKMEDIA" "$@" >/dev/null 2>"$work/err"; rc=$?
    if [ $rc -eq 1 ] && grep -q -- "$pat" "$work/err"; then ok "error: $desc"
    else not_ok "error: $desc"; diag "exit $rc: $(cat "$work/err")"; fi
}
fails "missing agent named" "the agent '/nonexistent/p2v-agent' is not an executable" \
    --out "$out/x.iso" --agent /nonexistent/p2v-agent
cp /bin/true "$work/vmlinuz-9.9.9-none"
fails "kernel without modules named" "no modules for the kernel '$work/vmlinuz-9.9.9-none'" \
    --out "$out/x.iso" --kernel "$work/vmlinuz-9.9.9-none"
P2V_BUSYBOX=/nonexistent/busybox fails "missing busybox names its package" \
    'apt-get install busybox-static' --out "$out/x.iso"
fails "unknown module named" "has no module 'no_such_driver'" --out "$out/x.iso" --modules no_such_driver
is "$(ls -A "$out" "$work/tmp" | grep -v ':$' | grep -c .)" 0 "no media and no staging left after the failures"

# SIGTERM while building: nothing under the output name, no temporary file, no staging
"$MKMEDIA" -q --out "$out/killed.iso" &
pid=$!
sleep 4
kill -TERM "$pid"; wait "$pid"; rc=$?
ok "SIGTERM stops the build (exit $rc)" test "$rc" -ne 0
is "$(ls -A "$out" "$work/tmp" | grep -v ':$' | grep -c .)" 0 "no media and no staging left after SIGTERM"

# ---- the hybrid image
media_build iso --server 192.0.2.10:7878 --fingerprint "SHA256:$(printf '%064x' 7)" \
    --token media-build-token --name web01 --poweroff --append "p2v.test=1"
diag "image: $(du -k "$iso" | cut -f1) KiB"
ok "MBR: partition 2 is an EFI system partition (type ef)" \
    bash -c "sfdisk --json '$iso' | python3 -c 'import json,sys; p=json.load(sys.stdin)[\"partitiontable\"][\"partitions\"]; sys.exit(not (len(p) >= 2 and p[1][\"type\"] == \"ef\"))'"
esp="$iso@@$(esp_offset "$iso")"
export MTOOLS_SKIP_CHECK=1
ok "FAT partition labelled P2VKIT" bash -c "mlabel -s -i '$esp' :: | grep -q 'Volume label is P2VKIT'"
ok "FAT partition: EFI/BOOT/BOOTX64.EFI" mdir -i "$esp" ::/EFI/BOOT/BOOTX64.EFI
ok "FAT partition: a p2v.conf template" bash -c "mtype -i '$esp' ::/p2v.conf | grep -q '^#server='"
mkdir -p "$work/iso"
xorriso -osirrox on -indev "$iso" -extract / "$work/iso" >/dev/null 2>&1
ok "ISOLINUX: the kernel command line carries --append" grep -q 'APPEND initrd=/boot/initrd.img .*quiet p2v.test=1' "$work/iso/isolinux/isolinux.cfg"
ok "ISOLINUX: a serial console" grep -q '^SERIAL 0 115200' "$work/iso/isolinux/isolinux.cfg"
ok "GRUB: the same command line, and a serial terminal" \
    bash -c "grep -q 'linux /boot/vmlinuz .*quiet p2v.test=1' '$work/iso/boot/grub/grub.cfg' && grep -q 'terminal_output console serial' '$work/iso/boot/grub/grub.cfg'"
mkdir -p "$work/rd"
(cd "$work/rd" && xz -dc "$work/iso/boot/initrd.img" | cpio -id --quiet 2>/dev/null)
xz -dc "$work/iso/boot/initrd.img" | cpio -tv --quiet 2>/dev/null >"$work/rd.list"
ok "initramfs: xz-compressed with CRC32 checks (what the kernel accepts)" \
    bash -c "xz --robot -lv '$work/iso/boot/initrd.img' | grep -q CRC32"
ok "initramfs: /dev/console (5, 1)" grep -qE '^crw------- .* 5, +1 .* dev/console$' "$work/rd.list"
ok "initramfs: /init" test -x "$work/rd/init"
ok "initramfs: the init is valid sh" busybox sh -n "$work/rd/init"
ok "initramfs: the DHCP script is valid sh" busybox sh -n "$work/rd/etc/p2v/udhcpc.script"
ok "initramfs: p2v-agent runs there (chroot)" chroot "$work/rd" /usr/bin/p2v-agent --version
ok "initramfs: busybox is static" bash -c "! ldd '$work/rd/bin/busybox' >/dev/null 2>&1"
missing=""
for m in ahci ata_piix nvme sd_mod usb-storage megaraid_sas mpt3sas hpsa virtio_blk virtio_scsi \
         virtio_pci e1000 e1000e igb ixgbe r8169 tg3 bnxt_en virtio_net vfat fat nls_cp437 \
         nls_iso8859-1 nls_utf8 loop; do
    grep -q "/$m\.ko$" "$work/rd.list" || missing="$missing $m"
done
is "$missing" "" "initramfs: every storage, network and FAT module"
ok "initramfs: their dependencies (scsi_mod, libata, mdio)" \
    bash -c "grep -q '/scsi_mod\.ko$' '$work/rd.list' && grep -q '/libata\.ko$' '$work/rd.list' && grep -q '/mdio\.ko$' '$work/rd.list'"
ok "initramfs: modules.dep of the chosen kernel" bash -c "ls '$work'/rd/lib/modules/*/modules.dep"
ok "initramfs: built-in settings" bash -c "grep -qx 'server=192.0.2.10:7878' '$work/rd/etc/p2v/baked.conf' && grep -qx 'token=media-build-token' '$work/rd/etc/p2v/baked.conf' && grep -qx 'poweroff=1' '$work/rd/etc/p2v/baked.conf'"
ok "ISO volume id is the media id" \
    bash -c "test \"\$(cat '$work/rd/etc/p2v/media-id')\" = \"\$(xorriso -indev '$iso' -pvd_info 2>/dev/null | sed -n 's/^Volume Id *: //p')\""

# ---- reproducible: the same inputs give the same bytes (gzip: quicker)
args=(--compress gzip --server 192.0.2.10:7878 --console serial)
ok "build 1 (gzip)" "$MKMEDIA" -q --out "$out/r1.iso" "${args[@]}"
ok "build 2 (gzip)" "$MKMEDIA" -q --out "$out/r2.iso" "${args[@]}"
ok "the two images are byte-identical" cmp -s "$out/r1.iso" "$out/r2.iso"
ok "--format pxe (gzip)" "$MKMEDIA" -q --out "$out/pxe" --format pxe "${args[@]}"
ok "PXE folder: kernel, initramfs, pxelinux.cfg/default, boot.ipxe" \
    test -s "$out/pxe/vmlinuz" -a -s "$out/pxe/initrd.img" -a -s "$out/pxe/pxelinux.cfg/default" -a -s "$out/pxe/boot.ipxe"
xorriso -osirrox on -indev "$out/r1.iso" -extract /boot/initrd.img "$work/r1-initrd.img" >/dev/null 2>&1
ok "PXE: the same initramfs as the image's" cmp -s "$out/pxe/initrd.img" "$work/r1-initrd.img"
