#!/bin/bash
# live-lvm-inner.sh WORK AGENT SERVER SRCDIR: the LVM part of the live-capture tests, run
# inside tests/kvm/nest (a Debian kernel under QEMU, with device-mapper: this machine's
# kernel has none) by tests/integration/capture-live-lvm.sh, which checks what it leaves
# in WORK (a folder shared with the host):
#   results     key=value lines (below);
#   *.ev *.err  the agents' JSON events and messages;  w*.log  the writers' logs;
#   *.check     live-check.sh's output.
# The physical disk: a loop device over a file, an MBR partition (type 8e) from 1 MiB
# holding an LVM physical volume, volume group vgp2v, logical volume "data" (ext4, mounted)
# and "spare" (unmounted, a known pattern). A writer (live-writer.py) writes and fsyncs
# files there at about 2 MB/s while p2v-agent --live captures the disk through p2v-server
# on the nested machine's loopback. Then the source is taken down, the captured image is
# attached in its place, and LVM itself reads it.
# Exit status: 0 when it ran to the end (the checks are the host's), 125 when the nested
# machine lacks something (the reason in WORK/results as setup=...).
set -u
W=$1 AGENT=$2 SERVER=$3 SRC=$4
R=$W/results
: >"$R"
res() { echo "$1=$2" >>"$R"; }
T0=$(date +%s)
mark() { res "t_$1" $(( $(date +%s) - T0 )); }
setup_fail() { res setup "$*"; exit 125; }

for m in dm_mod dm_snapshot loop ext4; do
    modprobe "$m" 2>/dev/null || setup_fail "modprobe $m failed"
done
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up 2>/dev/null ||
    setup_fail "cannot bring up the loopback interface"
# LVM without udev, and with this machine's /etc read-only: a configuration of our own
mkdir -p /tmp/lvm /tmp/lvm-run
cat >/tmp/lvm/lvm.conf <<'EOF'
global { locking_dir = "/tmp/lvm-run" }
backup { backup = 0 archive = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { obtain_device_list_from_udev = 0 }
EOF
export LVM_SYSTEM_DIR=/tmp/lvm
# Debian's python3 rather than a version manager's shim: its start is slow under TCG
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# ---- the source disk: 192 MiB, MBR, an LVM PV in partition 1
img=/tmp/disk.raw
truncate -s 192M "$img"
echo 'start=2048, type=8e' | sfdisk -q "$img" || setup_fail "sfdisk failed"
dev=$(losetup -f --show -P "$img") || setup_fail "losetup failed"
part=${dev}p1
for _ in $(seq 50); do [ -b "$part" ] && break; sleep 0.1; done
[ -b "$part" ] || setup_fail "no partition node $part"
pvcreate -q "$part" >/dev/null && vgcreate -q vgp2v "$part" >/dev/null &&
    lvcreate -q -y -n data -L 80M vgp2v >/dev/null &&
    lvcreate -q -y -n spare -L 8M vgp2v >/dev/null || setup_fail "LVM set-up failed"
# the spare volume: a pattern that must come through unchanged
$PY -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * (8 * 4096))' >/dev/vgp2v/spare
spare_sum=$(sha256sum </dev/vgp2v/spare | cut -c1-64)
mkfs.ext4 -q /dev/vgp2v/data || setup_fail "mkfs.ext4 failed"
mkdir -p /tmp/mnt
mount /dev/vgp2v/data /tmp/mnt || setup_fail "mount failed"
# where the data volume starts in the disk: partition start + its linear segment's offset
seg=$(dmsetup table vgp2v-data)
res data_table "$seg"
data_off=$(( (2048 + $(awk '{print $5}' <<<"$seg")) * 512 ))
res data_offset "$data_off"

# ---- the server
store=/tmp/store
out=$("$SERVER" init --store "$store" --json) || setup_fail "p2v-server init failed"
FP=$($PY -c 'import json,sys; print(json.load(sys.stdin)["fingerprint"])' <<<"$out")
TOKEN=$($PY -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$out")
"$SERVER" run --store "$store" --listen 127.0.0.1:0 --port-file "$store.port" \
    --until received >"$W/server.log" 2>&1 &
spid=$!
for _ in $(seq 100); do [ -s "$store.port" ] && break; sleep 0.1; done
[ -s "$store.port" ] || setup_fail "p2v-server did not start"
PORT=$(cat "$store.port")

writer() { # NAME SEED: the writer at 2 MB/s
    rm -f "/tmp/$1.stop"
    # its log on the nested machine's own tmpfs (appends over 9p are not reliable)
    "$PY" "$SRC/tests/integration/live-writer.py" /tmp/mnt "/tmp/$1.log" --rate 2 \
        --stop "/tmp/$1.stop" --max-seconds 600 --seed "$2" >"$W/$1.out" 2>&1 &
    wpid=$!
    # going: a few files written
    for _ in $(seq 300); do
        n=$(grep -c '^file' "/tmp/$1.log" 2>/dev/null)
        [ "${n:-0}" -ge 5 ] && break
        sleep 0.1
    done
}
writer_stop() { touch "/tmp/$1.stop"; wait "$wpid"; res "$1_rc" $?; cp "/tmp/$1.log" "$W/"; }
agent() { # NAME ARGS...
    local n=$1; shift
    "$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" --token "$TOKEN" \
        --progress none --json --name "$n" --disk "$dev" "$@" >"$W/$n.ev" 2>"$W/$n.err"
    res "${n}_rc" $?
}

mark setup
# ---- 1: --live, the default --snapshot auto: one LVM volume mounted writable. At most
# two delta passes: under the writer a delta pass sends 33 to 70 MiB depending on how
# fast the nested machine runs, so whether one reaches the 32 MiB that ends the sync is
# chance, and each pass more costs 15 to 60 s under TCG
writer w1 1
agent snap --live --max-passes 2
writer_stop w1
res snap_fs_writable "$(touch /tmp/mnt/after && echo yes || echo no)"
res snap_leftover "$(lvs --noheadings -o lv_name vgp2v 2>&1 | grep -c p2v-)"

mark snap
# ---- 2: SIGKILL of the agent while its snapshot exists: the reaper removes it (one pass
# before the cutover: the delta passes would not converge under the writer, and cost time)
writer w2 2
P2V_AGENT_FREEZE_HOLD_MS=60000 "$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" \
    --token "$TOKEN" --progress none --name killed --disk "$dev" --live --max-passes 1 \
    >/dev/null 2>/tmp/killed.err &
apid=$!
for _ in $(seq 1200); do grep -q "LVM volume taken" /tmp/killed.err && break; sleep 0.1; done
cp /tmp/killed.err "$W/"
lvsnaps() { lvs --noheadings -o lv_name vgp2v 2>/dev/null | grep -c p2v-; }
res killed_snap_seen "$(lvsnaps)"
kill -KILL "$apid"
wait "$apid" 2>/dev/null
k0=$(date +%s.%N)
for _ in $(seq 150); do [ "$(lvsnaps)" = 0 ] && break; sleep 0.2; done
res killed_leftover "$(lvsnaps)"
res killed_secs "$(awk -v a="$k0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
writer_stop w2
mark killed
# ---- 3: a snapshot that cannot be taken (no free space left): frozen instead, said so
lvcreate -q -y -n filler -l 100%FREE vgp2v >/dev/null 2>&1
writer w3 3
agent full --live --max-passes 1 --freeze-timeout 60
writer_stop w3
lvremove -q -f vgp2v/filler >/dev/null 2>&1

mark full
kill "$spid" 2>/dev/null
wait "$spid" 2>/dev/null

# ---- the source down, the captured image up: what LVM and e2fsck make of it (the
# fallback's image is not checked here: that is the freeze path, capture-live.sh's)
umount /tmp/mnt
vgchange -q -an vgp2v >/dev/null 2>&1
losetup -d "$dev"
for n in snap; do
    q=$store/jobs/$n/disk0.qcow2
    [ -f "$q" ] || { res "${n}_image" missing; continue; }
    qemu-img convert -O raw "$q" "/tmp/$n.raw" || { res "${n}_image" unconvertible; continue; }
    res "${n}_image" ok
    d=$(losetup -r -f --show -P "/tmp/$n.raw") || { res "${n}_lvs" "losetup failed"; continue; }
    for _ in $(seq 50); do [ -b "${d}p1" ] && break; sleep 0.1; done
    vgscan --mknodes >/dev/null 2>&1
    res "${n}_lvs" "$(lvs --noheadings -o lv_name vgp2v 2>/dev/null | tr -d ' ' | sort | tr '\n' ' ')"
    res "${n}_vgck" "$(vgck vgp2v >/dev/null 2>&1 && echo ok || echo bad)"
    if vgchange -q -ay vgp2v >/dev/null 2>&1; then
        res "${n}_spare" "$( [ "$(sha256sum </dev/vgp2v/spare | cut -c1-64)" = "$spare_sum" ] && echo same || echo differs)"
        vgchange -q -an vgp2v >/dev/null 2>&1
    else
        res "${n}_spare" "vgchange failed"
    fi
    losetup -d "$d"
    # the consistent instant: the freeze's start, or somewhere inside lvcreate's run
    at=$($PY -c 'import json,sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e.get("event") == "cutover":
        t = e["frozen-at"]
        print("%.6f..%.6f" % (t, t + e["freeze-window"]) if e["method"] == "lvm-snapshot" else t)' "$W/$n.ev")
    res "${n}_cutover_at" "${at:-none}"
    log=w1
    bash "$SRC/tests/integration/live-check.sh" "/tmp/$n.raw" "/tmp/$log.log" "${at:-0}" \
        "$data_off" >"$W/$n.check" 2>&1
    res "${n}_check" $?
    rm -f "/tmp/$n.raw"
    mark "check_$n"
done
exit 0
