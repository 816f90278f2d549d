#!/bin/sh
# seeds-vhdx.sh DIR: a small seed corpus for fuzz-vhdx: dynamic and fixed VHDXs made by
# qemu-img (1 MiB blocks and log), packed the way fuzz-vhdx.c lays inputs out: the
# file's first 320 KiB (identifier, headers, region tables), then the first 128 KiB of
# each MiB from 1 MiB on. qemu puts the log at 1 MiB, the BAT at 2 MiB, the metadata at
# 3 MiB and blocks from 8 MiB: the first two allocated blocks are moved to 4 and 5 MiB
# (their first 128 KiB; the BAT, which has no checksum, is patched to match), so that a
# packed seed of about 1 MiB unpacks to a 6 MiB VHDX that reads back as the original's
# first 128 KiB of each block.
set -eu
out=$1
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v qemu-img >/dev/null || { echo "seeds-vhdx: qemu-img missing" >&2; exit 1; }
MiB=1048576
K128=131072

# le64 N: N as 8 little-endian bytes
le64() {
    n=$1 i=0
    while [ $i -lt 8 ]; do
        printf "\\$(printf %o $((n & 255)))"
        n=$((n >> 8))
        i=$((i + 1))
    done
}

# pack SRC DST: the header section's first 320 KiB, the slices at 1, 2, 3 MiB, and the
# first two allocated blocks as the slices at 4 and 5 MiB
pack() {
    src=$1 dst=$2
    dd if="$src" of="$dst" bs=64K count=5 2>/dev/null
    for k in 1 2 3; do
        dd if="$src" bs=128K skip=$((k * 8)) count=1 2>/dev/null >> "$dst"
    done
    bat=$(( 320 * 1024 + K128 ))  # where the BAT (at 2 MiB) lies in the packed file
    slot=4 i=0
    while [ $i -lt 64 ] && [ $slot -le 5 ]; do
        e=$(od -An -tu8 -j $((2 * MiB + 8 * i)) -N8 "$src" | tr -d ' ')
        if [ $((e & 7)) -eq 6 ]; then
            dd if="$src" bs=128K skip=$(((e >> 20) * 8)) count=1 2>/dev/null >> "$dst"
            le64 $(((slot << 20) | 6)) | dd of="$dst" bs=1 seek=$((bat + 8 * i)) conv=notrunc 2>/dev/null
            slot=$((slot + 1))
        fi
        i=$((i + 1))
    done
}

raw=$tmp/src.raw
head -c 20000 /dev/urandom > "$raw"
yes 'vhdx region metadata bat' | head -c 30000 >> "$raw"
truncate -s 1M "$raw"
head -c 4096 /dev/urandom >> "$raw"
truncate -s 3M "$raw"
opts=block_size=1M,log_size=1M
qemu-img convert -f raw -O vhdx -o subformat=dynamic,$opts "$raw" "$tmp/dynamic.vhdx"
qemu-img create -q -f vhdx -o subformat=dynamic,$opts "$tmp/empty.vhdx" 5M
qemu-img create -q -f vhdx -o subformat=fixed,$opts "$tmp/fixed.vhdx" 2M
for f in dynamic empty fixed; do
    pack "$tmp/$f.vhdx" "$out/q-$f.pack"
done
if command -v qemu-io >/dev/null; then
    cp "$tmp/dynamic.vhdx" "$tmp/zero.vhdx"
    if qemu-io -f vhdx -c 'write -z 0 1M' "$tmp/zero.vhdx" >/dev/null 2>&1; then
        pack "$tmp/zero.vhdx" "$out/q-zero.pack"
    fi
fi
