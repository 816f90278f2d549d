#!/bin/bash
# Media without settings ask for them on the console: booted on BIOS from a CD under QEMU
# TCG with the serial line on a pipe, the init asks for the server, the fingerprint and
# the token; answers are typed through the pipe (a malformed server and fingerprint first,
# which are refused with an explanation), then the capture completes unattended.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (the kernel in /boot is 0600; loop devices)"
require_tool qemu-system-x86_64 qemu-img xorriso mformat mcopy busybox e2fsck sfdisk python3 openssl mkfifo
. "$top_srcdir/tests/capture-lib.sh"
. "$top_srcdir/tests/integration/media-lib.sh"

plan 11
work=$(tmpdir)
store=$work/store
media_store "$store"
server_start "$store"
img=$(fixture mini-bios)
sum0=$(sha256sum <"$img")

media_build plain --console serial --poweroff
media_net
mkfifo "$work/ser.in" "$work/ser.out"
log=$work/ask.log
: >"$log"
cat "$work/ser.out" >"$log" &
_media_bg+=("$!")
media_answer "$log" "$work/ser.in" \
    'server (HOST:PORT): ' 'no-port-here' \
    'server (HOST:PORT): ' '10.0.2.100:7878' \
    'fingerprint (SHA256:...): ' 'SHA256:1234' \
    'want SHA256: and 64 hex digits' "$FP" \
    'join token: ' "$TOKEN"
MEDIA_JOB=p2v-525400123456 MEDIA_LOG=$log
boot_ok "BIOS, settings typed on the serial console: the guest captured and powered off" ask 500 \
    -chardev "pipe,id=s0,path=$work/ser" -serial chardev:s0 \
    -cdrom "$plain" -boot d -drive "file=$img,if=none,id=d0,format=raw,snapshot=on" \
    -device ich9-ahci,id=ahci -device ide-hd,drive=d0,bus=ahci.0 "${NET[@]}"
MEDIA_LOG=""
ok "console: says which settings are missing" serial_has "$log" 'settings missing: please enter them'
ok "console: a malformed server is refused with an example" serial_has "$log" 'want HOST:PORT'
ok "console: a malformed fingerprint is refused" serial_has "$log" 'want SHA256: and 64 hex digits'
ok "console: capture complete" serial_has "$log" 'P2V-CAPTURE-COMPLETE'
ok "the job is named after the MAC address" test -d "$store/jobs/p2v-525400123456"
check_job "asked" p2v-525400123456 "$img"
is "$(sha256sum <"$img")" "$sum0" "the fixture image is unchanged"
[ "$_tap_fail" -eq 0 ] || { diag "serial log:"; diag "$(grep -av '^ ' "$log" | tail -40)"; }
server_stop || diag "p2v-server exited with $?"
