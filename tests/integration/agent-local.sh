#!/bin/bash
# p2v-agent's local mode, --facts and --plan, judged by outside oracles. The mini-bios
# fixture (MBR, ext4 root, swap) is captured from the image file and from a read-only loop
# device into qcow2, VMDK (monolithicSparse and streamOptimized) and raw: qemu-img check
# passes, the first MiB (boot code, partition table) is identical, e2fsck -fn finds the
# copy's ext4 clean, and the file trees (every file's SHA-256) are identical. With
# --all-blocks qemu-img compare calls the copy identical to the source. --facts / --plan
# print valid JSON with the expected keys; usage errors exit 2; a missing disk is named.
# When p2v-server is built, a remote smoke test sends the same disk over TLS on loopback.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-img python3 e2fsck losetup mount sha256sum
[ "$(id -u)" -eq 0 ] || skip_all "loop devices and mounts need root"
agent=$(p2v_bin p2v-agent)
# libparted 3.5's GPT module runs strchr() over a getdelim() buffer in its constructor,
# which ASan's strchr interceptor reports before main(); our code is not involved.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}intercept_strchr=0"
src=$(fixture mini-bios)
work=$(tmpdir)
# a plain interpreter: a version manager's shim costs a second per call
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

server=""
for c in "$top_builddir/p2v-server" "$top_builddir"/*/p2v-server; do
    [ -x "$c" ] && [ -f "$c" ] && { server=$c; break; }
done
[ -n "$server" ] && remote_tests=6 || remote_tests=0
plan $((50 + remote_tests))

# ---- cleanup of loop devices, mounts and the server, then the TAP summary -----------------
MOUNTS=() LOOPS=() PIDS=()
cleanup() {
    local m l p
    for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null; done
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
}
trap '_rc=$?; cleanup; (exit $_rc); _tap_exit' EXIT

# loop_ro FILE [OFFSET SIZE]: a read-only loop device in $LOOP_DEV (detached at exit; not
# to be called in a subshell, which would lose the record)
loop_ro() {
    local dev
    if [ $# -eq 3 ]; then
        dev=$(losetup -f --show -r -o "$2" --sizelimit "$3" "$1") || return 1
    else
        dev=$(losetup -f --show -r "$1") || return 1
    fi
    LOOPS+=("$dev")
    LOOP_DEV=$dev
}
# loop_detach DEV: detach now and forget it (its number may go to someone else later)
loop_detach() {
    local l keep=()
    losetup -d "$1"
    for l in "${LOOPS[@]}"; do [ "$l" = "$1" ] || keep+=("$l"); done
    LOOPS=("${keep[@]}")
}
# tree_sums FILE OFFSET SIZE OUT: every file's SHA-256 in the ext4 at OFFSET, sorted
tree_sums() {
    local mnt rc
    loop_ro "$1" "$2" "$3" || return 1
    mnt=$(tmpdir)
    mount -t ext4 -o ro,noload "$LOOP_DEV" "$mnt" || return 1
    MOUNTS+=("$mnt")
    (cd "$mnt" && find . -xdev -type f -print0 | sort -z | xargs -0 -r sha256sum) >"$4"
    rc=$?
    umount "$mnt" && loop_detach "$LOOP_DEV"
    return $rc
}
json_get() { # FILE PYTHON-EXPR (d is the document)
    $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"
}

# ---- --plan and --facts -------------------------------------------------------------------
"$agent" --plan --disk "$src" >"$work/plan.json" 2>"$work/plan.err"
ok "--plan exits 0" test $? -eq 0
ok "--plan prints valid JSON" $PY -m json.tool "$work/plan.json"
ok "--plan: disks, planned, extents, regions, bytes-planned" $PY -c '
import json, sys
d = json.load(open(sys.argv[1]))
disk = d["disks"][0]
for k in ("path", "size", "partitions", "planned", "extents", "regions"):
    assert k in disk, k
assert d["bytes-planned"] == disk["planned"] > 0
assert disk["size"] == 268435456
assert 0 < disk["planned"] < disk["size"], "ext4 free space and swap are not planned"
kinds = {r["kind"] for r in disk["regions"]}
assert len(kinds) >= 2, kinds
' "$work/plan.json"
# the ext4 partition's place, from the plan (the oracle below checks it is right)
read -r p_off p_size < <(json_get "$work/plan.json" \
    '" ".join(str(p[k]) for p in d["disks"][0]["partitions"] if p["fstype"] == "ext4" for k in ("start", "size"))')
is "$p_off $p_size" "$((2048 * 512)) $((368640 * 512))" "--plan: the ext4 partition's start and size"
planned=$(json_get "$work/plan.json" 'd["bytes-planned"]')
"$agent" --plan --all-blocks --disk "$src" >"$work/plan-all.json"
is "$(json_get "$work/plan-all.json" 'd["bytes-planned"]')" 268435456 "--plan --all-blocks plans the whole disk"

"$agent" --facts --disk "$src" >"$work/facts.json" 2>"$work/facts.err"
ok "--facts exits 0" test $? -eq 0
ok "--facts prints valid JSON" $PY -m json.tool "$work/facts.json"
ok "--facts: the machine's keys, an image file is not live (os null)" $PY -c '
import json, sys
d = json.load(open(sys.argv[1]))
for k in ("name", "hostname", "cpus", "memory-bytes", "firmware", "dmi", "nics", "os", "live", "disks"):
    assert k in d, k
assert d["firmware"] in ("bios", "uefi")
assert d["cpus"] >= 1 and d["memory-bytes"] > 0
assert d["live"] is False and d["os"] is None
assert all(n["name"] != "lo" for n in d["nics"])
assert set(d["dmi"]) == {"vendor", "product", "serial", "uuid"}
assert d["disks"][0]["planned"] == int(sys.argv[2])
assert d["disks"][0]["pttype"] == "dos"
' "$work/facts.json" "$planned"
"$agent" --facts --disk "$src" --name "my.host_01" >"$work/facts2.json"
is "$(json_get "$work/facts2.json" 'd["name"]')" "my.host_01" "--facts --name sets the name"

# ---- usage errors exit 2; a missing disk is named ----------------------------------------
usage_rc() { "$agent" "$@" >/dev/null 2>"$work/usage.err"; echo $?; }
is "$(usage_rc)" 2 "no mode: exit 2"
is "$(usage_rc --output "$work/x.qcow2")" 2 "--output without --disk: exit 2"
is "$(usage_rc --output "$work/x.qcow2" --disk "$src" --format vhdx)" 2 "--format vhdx: exit 2"
is "$(usage_rc --server 127.0.0.1:1 --token t --disk "$src")" 2 "--server without --fingerprint: exit 2"
is "$(usage_rc --server 127.0.0.1:1 --token t --fingerprint SHA256:zz --disk "$src")" 2 \
    "a malformed fingerprint: exit 2"
is "$(usage_rc --facts --name '-bad name' --disk "$src")" 2 "an invalid --name: exit 2"
ok "an invalid --name: the message says why" grep -q "invalid --name '-bad name'" "$work/usage.err"
is "$(usage_rc --plan --bogus)" 2 "an unknown option: exit 2"
"$agent" --output "$work/x.qcow2" --disk "$work/nonexistent.img" >/dev/null 2>"$work/missing.err"
rc=$?
ok "a missing disk exits non-zero ($rc), naming it" bash -c \
    '[ "$1" -ne 0 ] && grep -q "nonexistent.img" "$2"' _ "$rc" "$work/missing.err"
ok "a failed capture leaves no file behind" bash -c '! ls -A "$1" | grep -q "x.qcow2"' _ "$work"

# ---- local captures: image file and read-only loop device, three formats -----------------
src_sums=$work/src.sums
tree_sums "$src" "$p_off" "$p_size" "$src_sums" || bail "cannot mount the fixture's ext4"
ok "the source tree has files" test "$(wc -l <"$src_sums")" -gt 20
loop_ro "$src" || bail "losetup -r failed"
src_loop=$LOOP_DEV

# check_copy NAME FILE QEMU-FMT: qemu-img check, first MiB, e2fsck, file tree
check_copy() {
    local name=$1 out=$2 fmt=$3 raw=$work/$1.raw
    if [ "$fmt" = raw ]; then
        ok "$name: qemu-img info reads it as raw" qemu-img info -f raw "$out"
        raw=$out
    else
        ok "$name: qemu-img check passes" qemu-img check -q -f "$fmt" "$out"
        qemu-img convert -f "$fmt" -O raw "$out" "$raw" || bail "qemu-img convert $out"
    fi
    ok "$name: the first MiB (boot code, partition table) is identical" \
        cmp -n 1048576 "$src" "$raw"
    loop_ro "$raw" "$p_off" "$p_size" || bail "losetup -r $raw failed"
    ok "$name: e2fsck -fn finds the copy's ext4 clean" e2fsck -fn "$LOOP_DEV"
    loop_detach "$LOOP_DEV"
    tree_sums "$raw" "$p_off" "$p_size" "$work/$name.sums"
    ok "$name: the file tree is identical (every file's SHA-256)" cmp "$src_sums" "$work/$name.sums"
    [ "$raw" = "$out" ] || rm -f "$raw"
}

t0=$(date +%s.%N)
ok "file → qcow2: capture succeeds" "$agent" -q --output "$work/file.qcow2" --disk "$src"
t1=$(date +%s.%N)
check_copy file-qcow2 "$work/file.qcow2" qcow2
ok "file → qcow2: no temporary file left" bash -c '! ls -A "$1" | grep -q p2v-tmp' _ "$work"
ok "loop → vmdk: capture succeeds" "$agent" -q --output "$work/loop.vmdk" --format vmdk --disk "$src_loop"
check_copy loop-vmdk "$work/loop.vmdk" vmdk
ok "loop → raw: capture succeeds" "$agent" -q --output "$work/loop.raw" --format raw --disk "$src_loop"
check_copy loop-raw "$work/loop.raw" raw
ok "file → streamOptimized vmdk: capture succeeds" "$agent" -q --output "$work/stream.vmdk" \
    --format vmdk --subformat streamOptimized --disk "$src"
ok "streamOptimized: qemu-img check passes" qemu-img check -q -f vmdk "$work/stream.vmdk"
ok "streamOptimized: the same content as the qcow2 copy" \
    qemu-img compare -q -f vmdk -F qcow2 "$work/stream.vmdk" "$work/file.qcow2"
ok "the raw copy equals the qcow2 copy" qemu-img compare -q -f raw -F qcow2 "$work/loop.raw" "$work/file.qcow2"
ok "the qcow2 copy holds about the planned bytes, not the whole disk" $PY -c '
import json, subprocess, sys
info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", sys.argv[1]]))
assert info["actual-size"] < 268435456 // 2, info["actual-size"]
' "$work/file.qcow2"

# ---- --all-blocks: byte-identical ---------------------------------------------------------
ok "--all-blocks loop → qcow2: capture succeeds" "$agent" -q --all-blocks \
    --output "$work/all.qcow2" --disk "$src_loop"
ok "--all-blocks: qemu-img compare says identical" qemu-img compare -q -f raw -F qcow2 "$src" "$work/all.qcow2"
ok "--all-blocks → streamOptimized: identical" bash -c '
    "$1" -q --all-blocks --output "$2" --format vmdk --subformat streamOptimized --disk "$3" &&
    qemu-img compare -q -f raw -F vmdk "$3" "$2"' _ "$agent" "$work/all-stream.vmdk" "$src"

# ---- --json events and --report -----------------------------------------------------------
"$agent" --json --report "$work/report.json" --output "$work/j.qcow2" --format qcow2 \
    --disk "$src" >"$work/events.jsonl" 2>"$work/events.err"
ok "--json capture exits 0" test $? -eq 0
ok "--json: every line is a JSON event; start, progress, disk-done, finished" $PY -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
names = [e["event"] for e in ev]
assert names[0] == "start" and names[-1] == "finished", names
assert "disk-done" in names and "progress" in names, names
f = ev[-1]
assert f["bytes-planned"] == int(sys.argv[2]), f
assert 0 < f["bytes-read"] <= f["bytes-planned"], f
assert f["bytes-written"] > 0 and f["bad-sectors"] == [] and f["seconds"] > 0, f
' "$work/events.jsonl" "$planned"
ok "--report holds the finished event" $PY -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["event"] == "finished" and r["output"].endswith("j.qcow2") and "bytes-read" in r
' "$work/report.json"

# ---- failures: an unwritable destination, an existing directory ---------------------------
"$agent" -q --output "$work/nodir/x.qcow2" --disk "$src" 2>"$work/nodir.err"
rc=$?
ok "an output folder that does not exist: exit 1 with a message" bash -c \
    '[ "$1" -eq 1 ] && grep -q "nodir" "$2"' _ "$rc" "$work/nodir.err"
mkdir "$work/isdir"
"$agent" -q --output "$work/isdir" --disk "$src" 2>"$work/isdir.err"
ok "an output that is a directory: exit 1" test $? -eq 1

# ---- SIGTERM mid-capture: no output, no temporary file ------------------------------------
"$agent" -q --all-blocks --output "$work/killed.qcow2" --disk "$src" --threads 1 &
kpid=$!
sleep 0.2
kill -TERM "$kpid" 2>/dev/null
wait "$kpid"
krc=$?
if [ "$krc" -eq 0 ]; then
    ok "SIGTERM came after the capture finished: the output is whole" \
        qemu-img compare -q -f raw -F qcow2 "$src" "$work/killed.qcow2"
else
    ok "SIGTERM mid-capture: no output and no temporary file (exit $krc)" bash -c \
        '! ls -A "$1" | grep -Eq "killed.qcow2"' _ "$work"
fi

# ---- timing figure: local capture vs qemu-img convert of the same image -------------------
t2=$(date +%s.%N)
qemu-img convert -f raw -O qcow2 "$src" "$work/qemu.qcow2"
t3=$(date +%s.%N)
diag "$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" \
    'BEGIN { printf "p2v-agent --output qcow2 %.2f s; qemu-img convert -O qcow2 %.2f s", b - a, d - c }')"

# ---- a remote smoke test (when p2v-server is built) ---------------------------------------
if [ -n "$server" ]; then
    store=$work/store
    "$server" init --store "$store" >"$work/init.out" 2>&1
    ok "p2v-server init" test $? -eq 0
    fp=$(sed -n 's/^fingerprint: *//p' "$work/init.out" | head -1)
    token=$(cat "$store/token")
    "$server" run --store "$store" --listen 127.0.0.1:0 --port-file "$work/port" -q --until received \
        >"$work/server.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
    port=$(cat "$work/port" 2>/dev/null)
    "$agent" --json --report "$work/remote.json" --server "127.0.0.1:$port" \
        --fingerprint "$fp" --token "$token" --name smoke --disk "$src" \
        >"$work/remote.jsonl" 2>"$work/remote.err"
    rc=$?
    ok "remote capture exits 0" test $rc -eq 0 || diag "$(tail -5 "$work/remote.err")"
    ok "remote: the report says finished with the job and the hash" $PY -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["event"] == "finished" and r["job"] == "smoke", r
assert r["hash"] in ("sha256", "blake2b") and r["bytes-sent"] > 0 and r["reconnects"] == 0, r
' "$work/remote.json"
    got=$store/jobs/smoke/disk0.qcow2
    ok "remote: the received image equals the local capture" \
        qemu-img compare -q -f qcow2 -F qcow2 "$got" "$work/file.qcow2"
    "$agent" --server "127.0.0.1:$port" --fingerprint "$fp" --token "$token" --name smoke \
        --disk "$src" >"$work/again.out" 2>&1
    ok "remote: sending again says already received (exit 0)" bash -c \
        '[ "$1" -eq 0 ] && grep -q "already received" "$2"' _ $? "$work/again.out"
    "$agent" --server "127.0.0.1:$port" --fingerprint "$fp" --token wrong-token --name smoke2 \
        --disk "$src" >/dev/null 2>"$work/badtoken.err"
    ok "remote: a wrong token exits 3" test $? -eq 3
fi
