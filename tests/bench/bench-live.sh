#!/bin/bash
# bench-live: live capture of a 2 GiB volume under a steady write load.
#   ours:   p2v-agent --live -> TLS on loopback -> p2v-server while
#           tests/integration/live-writer.py writes and fsyncs at P2V_BENCH_RATE MB/s
#           (default 8); the downtime is the cutover's freeze window;
#   anchor: a cold migration's downtime: the volume unmounted and copied whole by
#           `qemu-img convert -O qcow2` (the writer stopped for as long).
# Figures over P2V_BENCH_RUNS runs (default 10): the freeze window as a distribution
# (min, median, p90, max; target <= 2 s), the bytes sent over all passes against the
# volume's used size (target <= 1.2x), the convergence of the delta passes (bytes sent per
# pass), and the ratio of the median freeze window to the cold copy's median time.
#   P2V_BENCH_RUNS=10 P2V_BENCH_RATE=8 bench-live.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=${top_builddir:-$here/../..}
cache=${P2V_BENCH_CACHE:-/var/tmp/p2vkit-bench}
runs=${P2V_BENCH_RUNS:-10}
rate=${P2V_BENCH_RATE:-8}
[ "$(id -u)" -eq 0 ] || { echo "bench-live: needs root (loop devices, mounts)"; exit 1; }
for t in qemu-img python3 losetup sfdisk mke2fs; do
    command -v $t >/dev/null || { echo "bench-live: $t missing (scripts/setup-deps)"; exit 1; }
done
agent=$build/p2v-agent/p2v-agent server=$build/p2v-server
[ -x "$agent" ] && [ -x "$server" ] || { echo "bench-live: build p2v-agent and p2v-server first"; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/live.XXXXXX")
dev= mnt=$work/mnt wpid= spid=
cleanup() {
    [ -n "$wpid" ] && kill "$wpid" 2>/dev/null && wait "$wpid" 2>/dev/null
    fsfreeze -u "$mnt" 2>/dev/null || true
    umount "$mnt" 2>/dev/null || true
    [ -n "$dev" ] && losetup -d "$dev" 2>/dev/null
    [ -n "${node:-}" ] && rm -f "$node"
    [ -n "$spid" ] && kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }

# ---- the volume: 2 GiB, MBR, ext4 half full (a mix of random and text files)
img=$work/vol.raw
truncate -s 2G "$img"
echo 'start=2048, type=83' | sfdisk -q "$img"
mkdir -p "$work/tree"
python3 - "$work/tree" <<'EOF'
import os, random, sys
root = sys.argv[1]; rng = random.Random(7); total = 0; i = 0
while total < (1000 << 20):
    d = os.path.join(root, "d%03d" % (i // 100)); os.makedirs(d, exist_ok=True)
    n = rng.choice([16 << 10, 256 << 10, 1 << 20, 8 << 20])
    data = rng.randbytes(n) if i % 2 else (b"row %d of a table\n" % i) * (n // 18 + 1)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(data[:n])
    total += n; i += 1
EOF
mke2fs -q -t ext4 -F -d "$work/tree" -E offset=$((2048 * 512)) "$img" $(( (2 << 20) - 1024 ))k
rm -rf "$work/tree"
dev=$(losetup -f --show -P "$img")
part=${dev}p1
[ -e "/sys/block/$(basename "$dev")/$(basename "$dev")p1" ] || partx -a "$dev" 2>/dev/null || true
if [ ! -b "$part" ]; then
    mm=$(cat "/sys/block/$(basename "$dev")/$(basename "$dev")p1/dev")
    mknod "$part" b "${mm%%:*}" "${mm##*:}"; node=$part
fi
mkdir -p "$mnt"

# ---- the server
store=$work/store
"$server" init --store "$store" --json >"$work/init.json"
fp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' "$work/init.json")
token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$work/init.json")
"$server" run --store "$store" --listen 127.0.0.1:0 --port-file "$work/port" --until received \
    -q 2>"$work/server.log" &
spid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")

: >"$work/freeze"; : >"$work/ratio"; : >"$work/cold"; : >"$work/conv"
for r in $(seq "$runs"); do
    # the anchor: a cold copy, the volume unmounted
    sync; t=$(now)
    qemu-img convert -f raw -O qcow2 "$part" "$work/cold.qcow2"
    awk -v a="$t" -v b="$(now)" 'BEGIN {printf "%.3f\n", b - a}' >>"$work/cold"
    rm -f "$work/cold.qcow2"

    mount "$part" "$mnt"
    used=$(df -B1 --output=used "$mnt" | tail -1)
    rm -f "$work/stop"
    python3 "$src/tests/integration/live-writer.py" "$mnt" "$work/w.log" --rate "$rate" \
        --stop "$work/stop" --max-seconds 600 --seed "$r" >"$work/w.out" 2>&1 &
    wpid=$!
    sleep 2
    "$agent" --server "127.0.0.1:$port" --fingerprint "$fp" --token "$token" --progress none \
        --json --live --name "live$r" --disk "$dev" >"$work/ev" 2>"$work/agent.err" ||
        { echo "bench-live: agent failed:"; tail -5 "$work/agent.err"; exit 1; }
    touch "$work/stop"; wait "$wpid" || { echo "bench-live: the writer saw an error"; exit 1; }
    wpid=
    python3 - "$work/ev" "$used" "$work/freeze" "$work/ratio" "$work/conv" <<'EOF'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
passes = [e for e in ev if e.get("event") == "pass"]
cut = [e for e in ev if e.get("event") == "cutover"]
used = int(sys.argv[2])
sent = sum(p["bytes-sent"] for p in passes)
open(sys.argv[3], "a").write("%.3f\n" % cut[-1]["freeze-window"])
open(sys.argv[4], "a").write("%.3f\n" % (sent / used))
open(sys.argv[5], "a").write(" ".join("%s:%dM" % (p["phase"][0], p["bytes-sent"] >> 20)
                                      for p in passes) + "\n")
EOF
    rm -rf "$store/jobs/live$r"
    umount "$mnt"
done

fw=$(median <"$work/freeze"); cold=$(median <"$work/cold"); ratio=$(median <"$work/ratio")
sorted=$(sort -g "$work/freeze" | tr '\n' ' ')
p90=$(sort -g "$work/freeze" | awk '{a[NR]=$1} END {i=int(NR*0.9+0.999); if (i<1) i=1; print a[i]}')
echo "freeze window (s), $runs runs under a $rate MB/s write load: min $(sort -g "$work/freeze" | head -1)," \
    "median $fw, p90 $p90, max $(sort -g "$work/freeze" | tail -1)   [target <= 2]"
echo "  all: $sorted"
echo "bytes sent / used size: median $ratio (max $(sort -g "$work/ratio" | tail -1))   [target <= 1.2]"
echo "convergence (bytes sent per pass: c = copy, d = delta, f = final under the freeze):"
sed 's/^/  /' "$work/conv"
echo "downtime: ours (freeze window) $fw s; cold copy (qemu-img convert, unmounted) $cold s;" \
    "ratio $(awk -v a="$fw" -v b="$cold" 'BEGIN {printf "%.2f", a / b}')"
awk -v f="$p90" -v r="$ratio" 'BEGIN {exit !(f <= 2 && r <= 1.2)}' ||
    { echo "bench-live: a target is missed"; exit 1; }
