#!/bin/bash
# The media's errors, booted on BIOS from a CD under QEMU TCG with settings in p2v.conf:
# no network card (-nic none). Then, in one boot, a server that does not answer (the
# agent retries, then the console says what to check and offers to retry), a server
# whose certificate does not have the fingerprint entered (refused at once) and a wrong
# token (refused), each time the settings entered again on the serial console; each
# refusal is said plainly and leaves nothing on the server, and the last settings
# complete the capture.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (the kernel in /boot is 0600)"
require_tool qemu-system-x86_64 xorriso mformat mcopy busybox python3 openssl
. "$top_srcdir/tests/capture-lib.sh"
. "$top_srcdir/tests/integration/media-lib.sh"

plan 15
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

# ---- one boot, three refusals in a row, each answered by entering the settings again on
# the serial console ("e", then server, fingerprint, token):
# 1. the server does not answer (nothing behind 10.0.2.100:7879; the agent gives up after
#    5 s); 2. a wrong fingerprint (refused at once); 3. a wrong token (refused); 4. the
# right settings: the capture completes
wrong=SHA256:$(printf '%064d' 0)
mk_case chain server=10.0.2.100:7879 "fingerprint=$FP" "token=$TOKEN" name=media-chain retry=5
media_net
mkfifo "$work/ser.in" "$work/ser.out"
: >"$work/chain.log"
cat "$work/ser.out" >"$work/chain.log" &
_media_bg+=("$!")
again() { # the answers to one "[r]etry, [e]nter" prompt: SERVER FINGERPRINT TOKEN
    echo '[r]etry, [e]nter'; echo e
    echo 'server (HOST:PORT): '; echo "$1"
    echo 'fingerprint (SHA256:...): '; echo "$2"
    echo 'join token: '; echo "$3"
}
mapfile -t answers < <(again 10.0.2.100:7878 "$wrong" "$TOKEN"; again 10.0.2.100:7878 "$FP" not-the-token
                       again 10.0.2.100:7878 "$FP" "$TOKEN")
media_answer "$work/chain.log" "$work/ser.in" "${answers[@]}"
MEDIA_LOG=$work/chain.log MEDIA_JOB=media-chain
boot_ok "server unreachable, wrong fingerprint, wrong token, each re-entered: the capture completes" \
    chain 600 -chardev "pipe,id=s0,path=$work/ser" -serial chardev:s0 \
    -cdrom "$work/chain.iso" -boot d "${disk[@]}" "${NET[@]}"
MEDIA_LOG=""
log=$work/chain.log
ok "server unreachable: the console offered to retry or re-enter, three times" \
    test "$(grep -a -o -F '[r]etry, [e]nter' "$log" | wc -l)" -ge 3
ok "server unreachable: the agent's reason is shown" serial_has "$log" 'p2v-agent: .*(connect|reconnect|unreachable|refused|timed out)'
ok "server unreachable: it says what to check" serial_has "$log" 'check: is the server reachable from here'
ok "wrong fingerprint: the console says so plainly" serial_has "$log" 'P2V-CAPTURE-REFUSED: wrong fingerprint'
ok "wrong fingerprint: the agent names the fingerprint" serial_has "$log" 'p2v-agent: .*fingerprint'
ok "wrong token: the console says so plainly" serial_has "$log" 'P2V-CAPTURE-REFUSED: the server refused the join token'
ok "re-entered: capture complete" serial_has "$log" 'P2V-CAPTURE-COMPLETE'
ok "re-entered: the server has the job" test "$(job_field "$store" media-chain state)" = received
ok "the refused attempts left nothing on the server (one session made the job)" \
    test "$(job_field "$store" media-chain sessions)" = 1
is "$(sha256sum <"$img")" "$sum0" "the fixture image is unchanged"
for c in nonet chain; do
    diag "--- $c:"; diag "$(grep -av '^ ' "$work/$c.log" | grep -a -E '^p2v|p2v-agent' | tail -8)"
done
server_stop || diag "p2v-server exited with $?"
