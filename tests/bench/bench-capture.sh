#!/bin/bash
# bench-capture: a capture through p2vkit (p2v-agent -> TLS 1.3 on loopback -> p2v-server
# -> qcow2, timed until the agent exits, i.e. the server's qcow2 is complete) beside
#   - `qemu-img convert -O qcow2` run locally on the same source, and
#   - a virt-p2v-style transfer: nbdkit's file plugin serving the source, an ssh port
#     forward on loopback (sshd started here with its own config), `qemu-img convert`
#     reading NBD through the tunnel into qcow2.
# qemu-img convert's default (cache=unsafe) syncs nothing, while p2v-server makes the image
# durable before it tells the agent it is received; so the table also gives qemu-img with
# -t writeback (its data flushed at the end) as the like-for-like anchor ("qsync").
# Sources: a 4 GiB mixed raw disk (a third random, a third zeros, a third text) and an
# 8 GiB disk holding one ext4 file system 10% full whose free blocks hold old garbage (as
# on a used physical disk). Medians of P2V_BENCH_RUNS (default 3) runs, alternating;
# ratios ours/anchor. Also: peak RSS of agent and server, bytes on the wire, and the CPU
# seconds (user + system) agent and server spent per capture (medians): their sum over
# the machine's CPUs is the least time the capture can take here.
# Targets: 4 GiB mixed <= 1.0x local qemu-img and <= 0.5x virt-p2v-style; 8 GiB ext4 10%
# full <= 0.2x qemu-img; agent and server peak RSS <= 64 MiB.
# P2V_BENCH_COLD=1 (root): the page cache is dropped before every timed command, so each
# reads its source from the disk, as a capture of a physical disk does (by default the
# sources stay in the page cache between runs, and whoever reads more pays little for it).
#   P2V_BENCH_CASES="mixed4g ext8g" P2V_BENCH_RUNS=3 bench-capture.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${top_builddir:-$here/../..}
cache=${P2V_BENCH_CACHE:-/var/tmp/p2vkit-bench}
runs=${P2V_BENCH_RUNS:-3}
cases=${P2V_BENCH_CASES:-mixed4g ext8g}
mkdir -p "$cache"
work=$(mktemp -d "$cache/capture.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
for t in qemu-img nbdkit sshd ssh ssh-keygen python3 mke2fs sfdisk; do
    command -v $t >/dev/null || { echo "bench-capture: $t missing (scripts/setup-deps)"; exit 1; }
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }
# before a timed command: written data on disk; with P2V_BENCH_COLD, the page cache empty
settle() {
    sync
    if [ -n "${P2V_BENCH_COLD:-}" ] && ! echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then
        echo "bench-capture: P2V_BENCH_COLD: cannot drop the page cache (needs root)"; exit 1
    fi
}
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f\n", b - a}'; }

# ---- sources (cached)
mixed=$cache/mixed-4G.raw
if [[ " $cases " == *" mixed4g "* ]] && [ ! -s "$mixed" ]; then
    python3 "$here/mkmixed.py" $((4 << 30)) "$mixed"
fi
ext8=$cache/ext4-8G-10pct-v2.raw
if [[ " $cases " == *" ext8g "* ]] && [ ! -s "$ext8" ]; then
    echo "bench-capture: building $ext8 (once)"
    python3 - "$ext8.tmp" <<'EOF'
import os, random, sys
# 8 GiB of old garbage: a 64 MiB random pattern repeated (incompressible per MiB)
rng = random.Random(8); pat = rng.randbytes(64 << 20)
with open(sys.argv[1], "wb") as f:
    for _ in range(128):
        f.write(pat)
EOF
    # files for ~10% of 8 GiB: 820 MiB, a mix of random and text files
    rm -rf "$cache/ext8-tree"; mkdir -p "$cache/ext8-tree"
    python3 - "$cache/ext8-tree" <<'EOF'
import os, random, sys
root = sys.argv[1]; rng = random.Random(10); total = 0; i = 0
while total < (820 << 20):
    d = os.path.join(root, "d%03d" % (i // 100)); os.makedirs(d, exist_ok=True)
    n = rng.choice([4 << 10, 64 << 10, 1 << 20, 8 << 20])
    data = rng.randbytes(n) if i % 2 else (b"log line %d of a used disk\n" % i) * (n // 26 + 1)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(data[:n])
    total += n; i += 1
EOF
    echo 'start=2048, type=83' | sfdisk -q "$ext8.tmp"
    # nodiscard: mke2fs would otherwise punch the free space of a file into holes, and
    # a used disk's free blocks are not holes
    mke2fs -q -t ext4 -F -d "$cache/ext8-tree" -E offset=$((2048 * 512)),nodiscard "$ext8.tmp" \
        $(( (8 << 20) - 1024 ))k
    rm -rf "$cache/ext8-tree"
    mv "$ext8.tmp" "$ext8"
fi

[ -z "${P2V_BENCH_PREPARE_ONLY:-}" ] || exit 0
agent=$build/p2v-agent/p2v-agent server=$build/p2v-server
[ -x "$agent" ] && [ -x "$server" ] || { echo "bench-capture: build p2v-agent and p2v-server first"; exit 1; }

# ---- our server
# P2V_BENCH_STORE: where the server's store goes (e.g. a tmpfs, to see the CPU-bound
# figure without the disk's sync bandwidth); default: beside the sources
store=${P2V_BENCH_STORE:-$work/store}
"$server" init --store "$store" --json >"$work/init.json"
fp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' "$work/init.json")
token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$work/init.json")
# --until received: the capture alone is timed (no conversion of each job running beside
# the next capture)
"$server" run --store "$store" --listen 127.0.0.1:0 --port-file "$work/port" -q \
    --until received 2>"$work/server.log" &
spid=$!; pids+=($spid)
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")

# ---- the virt-p2v-style path: sshd + nbdkit + ssh -L
sshdir=$work/ssh; mkdir -p "$sshdir"; chmod 700 "$sshdir"
ssh-keygen -q -t ed25519 -N '' -f "$sshdir/host"
ssh-keygen -q -t ed25519 -N '' -f "$sshdir/user"
sport=$(free_port)
cat > "$sshdir/sshd_config" <<EOF
Port $sport
ListenAddress 127.0.0.1
HostKey $sshdir/host
AuthorizedKeysFile $sshdir/user.pub
PermitRootLogin prohibit-password
AllowTcpForwarding yes
PidFile $sshdir/sshd.pid
StrictModes no
UsePAM no
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -f "$sshdir/sshd_config" -D -E "$sshdir/sshd.log" &
pids+=($!)
sleep 0.5
SSH=(ssh -q -i "$sshdir/user" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
     -o BatchMode=yes -p "$sport" root@127.0.0.1)

# v2v_start SRC: nbdkit on the "source" side, the tunnel; sets NBDPORT (local end)
v2v_start() {
    local nport; nport=$(free_port); NBDPORT=$(free_port)
    nbdkit --readonly -p "$nport" -i 127.0.0.1 -f file "$1" &
    NBDKIT=$!; pids+=($NBDKIT)
    "${SSH[@]}" -N -L "$NBDPORT:127.0.0.1:$nport" &
    TUNNEL=$!; pids+=($TUNNEL)
    for _ in $(seq 50); do
        qemu-img info "nbd://127.0.0.1:$NBDPORT" >/dev/null 2>&1 && return 0; sleep 0.2
    done
    echo "bench-capture: the nbdkit/ssh tunnel did not come up"; return 1
}
v2v_stop() { kill "$TUNNEL" "$NBDKIT" 2>/dev/null || true; wait "$TUNNEL" "$NBDKIT" 2>/dev/null || true; }

# the CPU seconds (user + system) process PID has used so far
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

printf '%-8s %8s %8s %8s %8s %7s %7s %7s %10s %10s %9s %7s %7s\n' case "ours(s)" "qemu(s)" "qsync(s)" "v2v(s)" "o/qemu" "o/qsync" "o/v2v" "agent RSS" "srv RSS" "wire MiB" "a.cpu" "s.cpu"
fail=0
n=0
for c in $cases; do
    case $c in
    mixed4g) src=$mixed; do_v2v=1;;
    ext8g) src=$ext8; do_v2v=0;;
    *) echo "bench-capture: unknown case $c"; exit 2;;
    esac
    : >"$work/ours"; : >"$work/qemu"; : >"$work/qsync"; : >"$work/v2v"; : >"$work/acpu"; : >"$work/scpu"
    arss=0; wire=0
    for r in $(seq "$runs"); do
        n=$((n + 1))
        settle; t=$(now)
        s0=$(cpu_s $spid)
        /usr/bin/time -f '%M %U %S' -o "$work/arss" "$agent" --server "127.0.0.1:$port" --fingerprint "$fp" \
            --token "$token" --progress none --json --name "b$n" --disk "$src" >"$work/ev" 2>"$work/agent.err" ||
            { echo "bench-capture: agent failed:"; tail -3 "$work/agent.err"; exit 1; }
        elapsed "$t" >>"$work/ours"
        read -r a au as <"$work/arss"; [ "$a" -gt "$arss" ] && arss=$a
        awk -v u="$au" -v s="$as" 'BEGIN {printf "%.2f\n", u + s}' >>"$work/acpu"
        awk -v a="$s0" -v b="$(cpu_s $spid)" 'BEGIN {printf "%.2f\n", b - a}' >>"$work/scpu"
        wire=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    o = json.loads(l) if l.startswith("{") else {}
    if o.get("event") == "finished": print(o.get("wire-bytes", 0))' "$work/ev")
        out=$(ls "$store/jobs/b$n"/disk0.qcow2)
        # the mixed disk has no file system: every byte is copied; the ext4 disk's free
        # blocks are garbage that is (rightly) not copied, so only its used blocks agree
        if [ "$r" -eq "$runs" ] && [ $c = mixed4g ] && ! qemu-img compare -q "$src" "$out"; then
            echo "bench-capture: $c: our copy differs from the source"; fail=1
        fi
        rm -rf "$store/jobs/b$n"
        settle; t=$(now)
        qemu-img convert -f raw -O qcow2 "$src" "$work/q.qcow2"
        elapsed "$t" >>"$work/qemu"; rm -f "$work/q.qcow2"
        settle; t=$(now)
        qemu-img convert -t writeback -f raw -O qcow2 "$src" "$work/q.qcow2"
        elapsed "$t" >>"$work/qsync"; rm -f "$work/q.qcow2"
        if [ $do_v2v = 1 ]; then
            v2v_start "$src"
            settle; t=$(now)
            qemu-img convert -f raw -O qcow2 "nbd://127.0.0.1:$NBDPORT" "$work/v.qcow2"
            elapsed "$t" >>"$work/v2v"; rm -f "$work/v.qcow2"
            v2v_stop
        fi
    done
    ot=$(median <"$work/ours"); qt=$(median <"$work/qemu"); st=$(median <"$work/qsync")
    vt=-; rv=-
    if [ $do_v2v = 1 ]; then vt=$(median <"$work/v2v"); rv=$(awk -v a="$ot" -v b="$vt" 'BEGIN {printf "%.2f", a / b}'); fi
    rq=$(awk -v a="$ot" -v b="$qt" 'BEGIN {printf "%.2f", a / b}')
    rs=$(awk -v a="$ot" -v b="$st" 'BEGIN {printf "%.2f", a / b}')
    srss=$(peak_rss $spid)
    printf '%-8s %8s %8s %8s %8s %7s %7s %7s %6d MiB %6d MiB %9d %7s %7s\n' "$c" "$ot" "$qt" "$st" "$vt" \
        "$rq" "$rs" "$rv" $((arss / 1024)) $((srss / 1024)) $((wire >> 20)) \
        "$(median <"$work/acpu")" "$(median <"$work/scpu")"
done
echo "(median of $runs runs$([ -n "${P2V_BENCH_COLD:-}" ] && echo ", each from a cold page cache"); ours = agent start to exit, the server's qcow2 complete and"
echo " synced; qemu = qemu-img convert (no sync), qsync = with -t writeback; v2v = nbdkit +"
echo " ssh -L + qemu-img convert; o/X = ratio of medians; RSS = peak; wire = TLS bytes sent;"
echo " a.cpu, s.cpu = CPU seconds (user + system) of agent and server per capture, medians)"
exit $fail
