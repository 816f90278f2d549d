#!/bin/bash
# Live capture (p2v-agent --live) of a mounted ext4 file system that a writer process keeps
# writing and fsync'ing (tests/integration/live-writer.py: new files and a WAL, each
# logged only once fsync returned). The disk is a loop device with an MBR partition table;
# its partition is mounted through the partition's own node, as /dev/sda1 would be.
#   - without --live the agent refuses the mounted, writable file system (exit 3);
#   - --live: a copy pass, delta passes, a cutover under FIFREEZE; the image passes
#     e2fsck and holds every file and WAL record fsync'd before the freeze
#     (tests/integration/live-check.sh), and the writer never saw an error;
#   - SIGKILL of the agent inside the freeze: the watchdog thaws at once;
#   - --continuous: the job's lag stays bounded while the writer runs, and
#     `p2v-server cutover` ends it with a consistent image;
#   - a file system the kernel cannot freeze (NTFS through FUSE) is refused, clearly.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (loop devices, mounts, FIFREEZE)"
require_tool qemu-img python3 losetup sfdisk mke2fs e2fsck
. "$top_srcdir/tests/capture-lib.sh"
plan 30

writer=$top_srcdir/tests/integration/live-writer.py
check=$top_srcdir/tests/integration/live-check.sh
work=$(tmpdir)
store=$work/store
store_init "$store"
server_start "$store"

# ---- the "physical" disk: 384 MiB, MBR, ext4 in partition 1 from 1 MiB
img=$work/disk.raw
truncate -s 384M "$img"
echo 'start=2048, type=83' | sfdisk -q "$img" || bail "sfdisk failed"
mke2fs -q -t ext4 -F -E offset=$((2048 * 512)) "$img" $((383 * 1024))k || bail "mke2fs failed"
dev=$(losetup -f --show -P "$img") || bail "losetup failed"
_loops+=("$dev")
part=${dev}p1
# the partition scan may not have happened: add the partitions
[ -e "/sys/block/$(basename "$dev")/$(basename "$dev")p1" ] || partx -a "$dev" 2>/dev/null || true
if [ ! -b "$part" ]; then
    # no udev here: make the partition's node from sysfs
    mm=$(cat "/sys/block/$(basename "$dev")/$(basename "$dev")p1/dev" 2>/dev/null) ||
        bail "the kernel shows no partition 1 of $dev"
    mknod "$part" b "${mm%%:*}" "${mm##*:}" || bail "mknod $part failed"
    made_node=$part
fi
mnt=$work/mnt
mkdir -p "$mnt"
mount "$part" "$mnt" || bail "cannot mount $part"
_mounts+=("$mnt")
cleanup_live() {
    fsfreeze -u "$mnt" 2>/dev/null
    [ -n "${wpid:-}" ] && kill "$wpid" 2>/dev/null
    [ -n "${made_node:-}" ] && rm -f "$made_node"
}
trap 'cleanup_live; _capture_cleanup; _tap_exit' EXIT

# start_writer NAME: the writer at 4 MB/s, logging to $work/NAME.log
start_writer() {
    rm -f "$work/$1.stop"
    python3 "$writer" "$mnt" "$work/$1.log" --rate 4 --stop "$work/$1.stop" \
        --max-seconds 300 --seed "$2" >"$work/$1.out" 2>&1 &
    wpid=$!
}
stop_writer() {
    touch "$work/$1.stop"
    wait "$wpid"
    local rc=$?
    wpid=
    return $rc
}
# the image of job $1 as raw, checked against writer log $2 at cutover time $3
check_image() {
    qemu-img convert -O raw "$store/jobs/$1/disk0.qcow2" "$work/$1.raw" || return 1
    bash "$check" "$work/$1.raw" "$work/$2.log" "$3" $((2048 * 512)) >"$work/$1.check" 2>&1
    local rc=$?
    diag "$(cat "$work/$1.check" | head -5)"
    rm -f "$work/$1.raw"
    return $rc
}
frozen_at() { json_field "$1" frozen-at; }

# ---- without --live: refused
agent --name plain --disk "$dev" >"$work/plain.out" 2>&1
is "$?" 3 "without --live a mounted writable file system is refused (exit 3)"
ok "the refusal names the mount and suggests --live" \
    sh -c "grep -q '$mnt' '$work/plain.out' && grep -q -- '--live' '$work/plain.out'"
diag "$(grep -m1 -- --live "$work/plain.out")"

# ---- --force: captured, marked crash-inconsistent
agent --force --name forced --disk "$dev" --json >"$work/forced.ev" 2>"$work/forced.err"
is "$?" 0 "--force captures it anyway"
ok "the report marks it crash-inconsistent" grep -q '"consistency":"crash-inconsistent"' "$work/forced.ev"

# ---- --live under a write load
start_writer w1 1
sleep 3
agent --live --name live1 --disk "$dev" --json >"$work/live1.ev" 2>"$work/live1.err"
rc=$?
sleep 1
stop_writer w1
wrc=$?
is "$rc" 0 "--live capture under a write load completes"
[ "$rc" = 0 ] || diag "$(tail -5 "$work/live1.err")"
is "$wrc" 0 "the writer saw no error"
ok "the writer logged no error" sh -c "! grep -q '^error' '$work/w1.log'"
ok "a copy pass, then delta passes" sh -c "grep -q '\"phase\":\"copy\"' '$work/live1.ev' && grep -q '\"phase\":\"delta\"' '$work/live1.ev'"
ok "a final pass under the freeze" grep -q '"phase":"final"' "$work/live1.ev"
fw=$(json_field "$work/live1.ev" freeze-window)
diag "freeze window ${fw:-?} s; passes: $(grep '"event":"pass"' "$work/live1.ev" |
    grep -o '"phase":"[a-z]*","bytes-read":[0-9]*,"bytes-sent":[0-9]*' | tr '\n' ' ')"
ok "the freeze window is under 5 s (${fw:-none})" awk -v f="${fw:-99}" 'BEGIN {exit !(f > 0 && f < 5)}'
ok "the report says the copy is consistent by freeze" grep -q '"consistency":"frozen"' "$work/live1.ev"
ok "the writer wrote files during the capture" sh -c "[ \$(grep -c '^file' '$work/w1.log') -gt 20 ]"
ok "the image is clean and holds every write fsync'd before the freeze" \
    check_image live1 w1 "$(frozen_at "$work/live1.ev")"
diag "$(head -1 "$work/live1.check")"
ok "the server logged the passes and the freeze window" \
    grep -q "frozen for" "$store/jobs/live1/job.log"

# ---- SIGKILL inside the freeze: the watchdog thaws
start_writer w2 2
sleep 1
# the agent itself in the background (not the shell function: its subshell is not the agent)
P2V_AGENT_FREEZE_HOLD_MS=60000 "$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" \
    --token "$TOKEN" --progress none --live --name killed --disk "$dev" --freeze-timeout 120 \
    >/dev/null 2>"$work/killed.err" &
apid=$!
for _ in $(seq 600); do grep -q "frozen:" "$work/killed.err" && break; sleep 0.1; done
ok "the agent froze the file system" grep -q "frozen:" "$work/killed.err"
# a probe write blocks while frozen
python3 -c 'import os,sys; f=os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT); os.write(f, b"x"); os.fsync(f)' \
    "$mnt/probe" &
probe=$!
sleep 1
ok "a write blocks while frozen" kill -0 "$probe"
t0=$(date +%s.%N)
kill -KILL "$apid"
wait "$apid" 2>/dev/null
for _ in $(seq 100); do kill -0 "$probe" 2>/dev/null || break; sleep 0.05; done
t1=$(date +%s.%N)
ok "after SIGKILL the file system is writable again" sh -c "! kill -0 $probe 2>/dev/null"
wait "$probe"
thaw=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
diag "writable again $thaw s after the SIGKILL"
ok "within 2 s of the SIGKILL ($thaw s)" awk -v t="$thaw" 'BEGIN {exit !(t < 2)}'
sleep 1
stop_writer w2
is "$?" 0 "the writer saw no error through the killed freeze"
ok "no agent or watchdog is left behind" sh -c "! pgrep -f '[p]2v-agent.*--name killed' >/dev/null"

# ---- --continuous: bounded lag, then p2v-server cutover
start_writer w3 3
sleep 1
"$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" --token "$TOKEN" --progress none \
    --live --continuous 2 --name cont --disk "$dev" --json >"$work/cont.ev" 2>"$work/cont.err" &
apid=$!
for _ in $(seq 300); do grep -q '"phase":"delta"' "$work/cont.ev" && break; sleep 0.1; done
lags=()
for _ in 1 2 3 4; do
    sleep 2
    lags+=("$("$SERVER" status --store "$store" --json cont |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("lag-s", "none"))')")
done
diag "lag samples (s): ${lags[*]}"
maxlag=$(printf '%s\n' "${lags[@]}" | sort -g | tail -1)
ok "the job shows its lag, bounded (max ${maxlag} s <= 10)" \
    awk -v l="$maxlag" 'BEGIN {exit !(l ~ /^[0-9]+$/ && l <= 10)}'
ok "status shows the live line" sh -c "'$SERVER' status --store '$store' cont | grep -q '^live: *pass'"
ok "p2v-server cutover asks for it" "$SERVER" cutover --store "$store" cont
for _ in $(seq 300); do kill -0 "$apid" 2>/dev/null || break; sleep 0.1; done
wait "$apid"
is "$?" 0 "the agent cut over and finished"
stop_writer w3
is "$?" 0 "the writer saw no error"
ok "the continuous image holds every write fsync'd before the freeze" \
    check_image cont w3 "$(frozen_at "$work/cont.ev")"
diag "$(head -1 "$work/cont.check")"

# ---- --continuous, the cutover asked on the agent's console (SIGUSR1)
"$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" --token "$TOKEN" --progress none \
    --live --continuous 30 --name usr1 --disk "$dev" --json >"$work/usr1.ev" 2>"$work/usr1.err" &
apid=$!
for _ in $(seq 300); do grep -q '"phase":"delta"' "$work/usr1.ev" && break; sleep 0.1; done
kill -USR1 "$apid"
for _ in $(seq 150); do kill -0 "$apid" 2>/dev/null || break; sleep 0.1; done
wait "$apid"
is "$?" 0 "SIGUSR1 cuts over at once (not 30 s later)"
ok "it cut over under a freeze" grep -q '"event":"cutover"' "$work/usr1.ev"

# ---- a file system the kernel cannot freeze
if command -v mkntfs >/dev/null && command -v ntfs-3g >/dev/null && [ -e /dev/fuse ]; then
    truncate -s 64M "$work/ntfs.raw"
    mkntfs -q -F -f "$work/ntfs.raw" >/dev/null 2>&1
    ndev=$(losetup -f --show "$work/ntfs.raw") && _loops+=("$ndev")
    mkdir -p "$work/nmnt"
    if ntfs-3g "$ndev" "$work/nmnt" 2>/dev/null; then
        _mounts+=("$work/nmnt")
        agent --live --name ntfs --disk "$ndev" >"$work/ntfs.out" 2>&1
        rc=$?
        is "$rc" 3 "--live on a file system that cannot be frozen is refused (exit 3)"
        ok "the refusal says why and what to do" \
            sh -c "grep -q 'cannot freeze' '$work/ntfs.out' && grep -q 'remount' '$work/ntfs.out'"
        diag "$(head -c 400 "$work/ntfs.out")"
        umount "$work/nmnt"
    else
        skip 2 "ntfs-3g cannot mount here"
    fi
else
    skip 2 "no ntfs-3g, mkntfs or /dev/fuse"
fi
