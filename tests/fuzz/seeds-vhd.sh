#!/bin/sh
# seeds-vhd.sh DIR: a small seed corpus for fuzz-vhd: fixed and dynamic VHDs made by
# qemu-img from a small mixed raw disk (fixed: 64 KiB of data and the footer), empty
# dynamic ones (metadata only: what the fuzzer mutates best), and ours when p2v-img is
# at hand (512 KiB blocks). libFuzzer keeps inputs under 1 MiB, and qemu's dynamic image
# holds a whole 2 MiB block: it is cut after the part of its block that the 64 KiB disk
# uses, its footer appended again (a block may end with the disk).
set -eu
out=$1
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v qemu-img >/dev/null || { echo "seeds-vhd: qemu-img missing" >&2; exit 1; }
raw=$tmp/src.raw
head -c 20000 /dev/urandom > "$raw"
yes 'vhd footer block bitmap' | head -c 30000 >> "$raw"
truncate -s 65536 "$raw"
qemu-img convert -f raw -O vpc -o subformat=fixed "$raw" "$out/q-fixed.vhd"
qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on "$raw" "$out/q-fixed-force.vhd"
qemu-img convert -f raw -O vpc -o subformat=dynamic "$raw" "$tmp/dynamic.vhd"
d=$tmp/dynamic.vhd
size=$(stat -c %s "$d")
be() { od -An -tx1 -j "$1" -N "$2" "$d" | tr -d ' \n'; }
cur=$((0x$(be $((size - 512 + 48)) 8)))   # the footer's current size
table=$((0x$(be $((512 + 16)) 8)))        # the dynamic header's table offset
first=$((0x$(be "$table" 4)))             # BAT entry 0: the block's sector
head -c $((first * 512 + 512 + cur)) "$d" > "$out/q-dynamic-cut.vhd"
tail -c 512 "$d" >> "$out/q-dynamic-cut.vhd"
qemu-img create -q -f vpc -o subformat=dynamic "$out/q-empty.vhd" 8M
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$out/q-empty-force.vhd" 3M
if command -v p2v-img >/dev/null 2>&1; then
    p2v-img convert -f raw -O vhd -o subformat=fixed "$raw" "$out/p-fixed.vhd" >/dev/null 2>&1 || true
    p2v-img convert -f raw -O vhd -o subformat=dynamic,cluster_size=512K "$raw" \
        "$out/p-dynamic-512k.vhd" >/dev/null 2>&1 || true
fi
