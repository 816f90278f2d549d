#!/bin/bash
# Capture the "physical machines" (mini-bios and debian12-bios fixtures), as image files
# and as loop devices, through p2v-server into qcow2: the partition table, the boot areas
# and every used block are identical to the source (tests/compare-used.py: an oracle
# built on sfdisk, blkid and dumpe2fs), the copy's ext4 passes e2fsck -fn, and the file
# trees are identical. With --all-blocks the copy is byte-identical (qemu-img compare);
# local capture (--output) gives the same image as the server.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (loop devices, mounts)"
require_tool qemu-img losetup e2fsck dumpe2fs sfdisk blkid python3
. "$top_srcdir/tests/capture-lib.sh"

work=$(tmpdir)
store=$work/store
store_init "$store"
server_start "$store"

mini=$(fixture mini-bios)
deb=$(fixture debian12-bios)

# ext_parts IMG: "OFFSET SIZE" of each ext2/3/4 partition
ext_parts() {
    sfdisk --json "$1" | python3 -c '
import json, subprocess, sys
t = json.load(sys.stdin)["partitiontable"]; ss = t.get("sectorsize", 512)
for p in t["partitions"]:
    off, size = p["start"] * ss, p["size"] * ss
    ty = subprocess.run(["blkid", "-p", "-O", str(off), "-S", str(size), "-o", "value",
                         "-s", "TYPE", sys.argv[1]], capture_output=True, text=True).stdout.strip()
    if ty.startswith("ext"):
        print(off, size)' "$1"
}

# tree_digest DIR: one digest of every path, type, mode, size, link target and content
tree_digest() {
    python3 - "$1" <<'EOF'
import hashlib, os, stat, sys
root = sys.argv[1]; h = hashlib.sha256(); n = 0
for d, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files):
        p = os.path.join(d, name); st = os.lstat(p); rel = os.path.relpath(p, root)
        h.update(f"{rel} {stat.S_IFMT(st.st_mode)} {st.st_mode & 0o7777} {st.st_size}\n".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(p).encode())
        elif stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
        n += 1
print(h.hexdigest(), n)
EOF
}

# check_copy DESC SRCIMG COPY.qcow2
check_copy() {
    local desc=$1 src=$2 copy=$3 raw=$work/copy.raw
    ok "$desc: qemu-img check" qemu-img check -q "$copy"
    rm -f "$raw"
    qemu-img convert -O raw "$copy" "$raw" || { not_ok "$desc: convert to raw"; return; }
    ok "$desc: partition table, boot areas and every used block identical" \
        python3 "$top_srcdir/tests/compare-used.py" "$src" "$raw"
    local off size a b da db i=0
    while read -r off size; do
        i=$((i + 1))
        loop_ro "$raw" "$off" "$size" || { not_ok "$desc: loop device"; continue; }
        b=$LOOP
        ok "$desc: ext partition $i of the copy passes e2fsck -fn" e2fsck -fn "$b"
        loop_ro "$src" "$off" "$size"; a=$LOOP
        mount_ro "$a" "$work/ma" && mount_ro "$b" "$work/mb" || { not_ok "$desc: mount"; continue; }
        da=$(tree_digest "$work/ma"); db=$(tree_digest "$work/mb")
        umount "$work/ma" "$work/mb"
        is "$db" "$da" "$desc: file tree of partition $i identical (digest, entries)"
    done < <(ext_parts "$src")
    rm -f "$raw"
}

nmini=$(ext_parts "$mini" | wc -l)
ndeb=$(ext_parts "$deb" | wc -l)
per_mini=$((3 + 2 * nmini)) per_deb=$((3 + 2 * ndeb))
plan $((2 * per_mini + 2 * per_deb + 4 + 4 + 1))

run_case() {   # run_case NAME SOURCE ORIGINAL-IMAGE PER
    local name=$1 src=$2 orig=$3 t0 t1
    t0=$(date +%s.%N)
    if agent --name "$name" --disk "$src" --json >"$work/$name.events" 2>"$work/$name.err"; then
        t1=$(date +%s.%N)
        ok "$name: agent finished ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s, $(json_field "$work/$name.events" bytes-sent) bytes sent)"
        check_copy "$name" "$orig" "$store/jobs/$name/disk0.qcow2"
    else
        not_ok "$name: agent failed"; diag "$(tail -5 "$work/$name.err")"
        for i in $(seq $(($4 - 1))); do not_ok "$name: (no copy)"; done
    fi
}

run_case mini-file "$mini" "$mini" $per_mini
loop_ro "$mini"; run_case mini-loop "$LOOP" "$mini" $per_mini
run_case deb-file "$deb" "$deb" $per_deb
# the sanitizer pass: the 3 GiB machine once (its loop device, --all-blocks and local
# runs are the same code on 3 GiB more each: the normal build's pass runs them)
big=deb; sanitizer_run && big=
if [ -n "$big" ]; then
    loop_ro "$deb"; run_case deb-loop "$LOOP" "$deb" $per_deb
else
    skip $per_deb "deb-loop: not in the sanitizer pass"
fi

for f in mini $big; do
    [ $f = mini ] && src=$mini || src=$deb
    ok "$f --all-blocks: agent finished" agent --name "$f-all" --all-blocks --disk "$src"
    ok "$f --all-blocks: qemu-img compare identical" same_image "$src" "$store/jobs/$f-all/disk0.qcow2"
done

# local capture: the same image as the server's (qemu-img compare of the two qcow2)
for f in mini $big; do
    [ $f = mini ] && src=$mini || src=$deb
    ok "$f: local --output capture" "$AGENT" --progress none --output "$work/$f-local.qcow2" --disk "$src"
    ok "$f: local capture equals the server's copy" \
        same_image "$work/$f-local.qcow2" "$store/jobs/$f-file/disk0.qcow2"
done

[ -n "$big" ] || skip 4 "deb --all-blocks and local capture: not in the sanitizer pass"
server_stop; is "$?" 0 "server stops cleanly on SIGTERM"
