#!/bin/bash
# The media's errors, booted on BIOS from a CD under QEMU TCG with settings in p2v.conf:
# no network card (-nic none), a server that does not answer (the agent retries, then the
# console says what to check and offers to retry), and a server whose certificate does
# not have the configured fingerprint (refused at once). Each time the console says so
# plainly and the server holds no disk data. Then a wrong token: refused, the settings
# are entered again on the serial console, and the capture completes.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (the kernel in /boot is 0600)"
require_tool qemu-system-x86_64 xorriso mformat mcopy busybox python3 openssl
. "$top_srcdir/tests/capture-lib.sh"
. "$top_srcdir/tests/integration/media-lib.sh"

plan 17
work=$(tmpdir)
store=$work/store
media_store "$store"
server_start "$store"
img=$(fixture mini-bios)
sum0=$(sha256sum <"$img")
media_build plain --console serial --poweroff

# boot_case NAME CONF-LINES... : a copy of the media with this p2v.conf
mk_case() {
    local name=$1; shift
    cp "$plain" "$work/$name.iso"
    printf '%s\n' "$@" >"$work/$name.conf"
    put_conf "$work/$name.iso" "$work/$name.conf" || bail "mcopy failed"
}
disk=(-drive "file=$img,if=none,id=d0,format=raw,snapshot=on" -device ich9-ahci,id=ahci
      -device ide-hd,drive=d0,bus=ahci.0)

# ---- no network card
mk_case nonet server=10.0.2.100:7878 "fingerprint=$FP" "token=$TOKEN" name=media-nonet
boot_until "no network card: the console says so" nonet 300 'trying the network again' \
    -cdrom "$work/nonet.iso" -boot d "${disk[@]}" -nic none
ok "no network card: it says what to check" serial_has "$work/nonet.log" 'no network: no network card found'
ok "no network card: ... and what to check" serial_has "$work/nonet.log" 'check: is the network card supported'
ok "no network card: nothing on the server" no_job_data

# ---- the server does not answer (nothing behind 10.0.2.100:7879); the agent gives up after 5 s
mk_case noserver server=10.0.2.100:7879 "fingerprint=$FP" "token=$TOKEN" name=media-noserver retry=5
media_net
boot_until "server unreachable: the capture fails and the console offers to retry" noserver 400 \
    '\[r\]etry, \[e\]nter' -cdrom "$work/noserver.iso" -boot d "${disk[@]}" "${NET[@]}"
ok "server unreachable: the agent's reason is shown" serial_has "$work/noserver.log" 'p2v-agent: .*(connect|reconnect|unreachable|refused|timed out)'
ok "server unreachable: it says what to check" serial_has "$work/noserver.log" 'check: is the server reachable from here'
ok "server unreachable: nothing on the server" no_job_data

# ---- a wrong fingerprint
wrong=SHA256:$(printf '%064d' 0)
mk_case wrongfp server=10.0.2.100:7878 "fingerprint=$wrong" "token=$TOKEN" name=media-wrongfp
media_net
boot_until "wrong fingerprint: refused, the console offers to retry or re-enter" wrongfp 400 \
    '\[r\]etry, \[e\]nter' -cdrom "$work/wrongfp.iso" -boot d "${disk[@]}" "${NET[@]}"
ok "wrong fingerprint: the console says so plainly" serial_has "$work/wrongfp.log" 'P2V-CAPTURE-REFUSED: wrong fingerprint'
ok "wrong fingerprint: the agent names the fingerprint" serial_has "$work/wrongfp.log" 'p2v-agent: .*fingerprint'
ok "wrong fingerprint: nothing on the server" no_job_data

# ---- a wrong token: refused; the settings are entered again on the serial console
# ("e", then server, fingerprint, token) and the capture then completes
mk_case badtoken server=10.0.2.100:7878 "fingerprint=$FP" token=not-the-token name=media-badtoken
media_net
mkfifo "$work/ser.in" "$work/ser.out"
: >"$work/badtoken.log"
cat "$work/ser.out" >"$work/badtoken.log" &
_media_bg+=("$!")
media_answer "$work/badtoken.log" "$work/ser.in" \
    '[r]etry, [e]nter' e \
    'server (HOST:PORT): ' 10.0.2.100:7878 \
    'fingerprint (SHA256:...): ' "$FP" \
    'join token: ' "$TOKEN"
MEDIA_LOG=$work/badtoken.log MEDIA_JOB=media-badtoken
boot_ok "wrong token, then re-entered on the console: the capture completes" badtoken 500 \
    -chardev "pipe,id=s0,path=$work/ser" -serial chardev:s0 \
    -cdrom "$work/badtoken.iso" -boot d "${disk[@]}" "${NET[@]}"
MEDIA_LOG=""
ok "wrong token: the console says so plainly" serial_has "$work/badtoken.log" 'P2V-CAPTURE-REFUSED: the server refused the join token'
ok "wrong token, re-entered: capture complete" serial_has "$work/badtoken.log" 'P2V-CAPTURE-COMPLETE'
ok "wrong token, re-entered: the server has the job" test "$(job_field "$store" media-badtoken state)" = received
is "$(sha256sum <"$img")" "$sum0" "the fixture image is unchanged"
for c in nonet noserver wrongfp badtoken; do
    diag "--- $c:"; diag "$(grep -av '^ ' "$work/$c.log" | grep -a -E '^p2v|p2v-agent' | tail -8)"
done
server_stop || diag "p2v-server exited with $?"
