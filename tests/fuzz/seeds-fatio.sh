#!/bin/sh
# seeds-fatio.sh DIR: a seed corpus for fuzz-fatio: FAT volumes made by mkfs.vfat and filled
# by mtools: FAT12 of 1 MiB (512-byte clusters and a one-sector root directory; 2 KiB
# sectors), FAT16 of 4 MiB, FAT32 of 33 MiB (the smallest mkfs.vfat makes; one FAT, and
# two), each holding /EFI/BOOT/grub.cfg, /EFI/BOOT/BOOTX64.EFI (several clusters), a long
# file name, a deep directory and a file fragmented by a deletion; an empty FAT12 volume,
# and a FAT32 one whose /EFI directory takes several clusters. The harness pads an input
# with zeros to its partition size, so each volume's trailing zeros are cut off: the
# FAT32 seeds keep their FATs and first clusters (~300 and ~550 KiB), the others a few KiB.
set -eu
out=$1
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v mkfs.vfat >/dev/null ||
    { echo "seeds-fatio: mkfs.vfat missing (apt-get install dosfstools)" >&2; exit 1; }
command -v mcopy >/dev/null || { echo "seeds-fatio: mtools missing (apt-get install mtools)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "seeds-fatio: python3 missing" >&2; exit 1; }
export MTOOLS_SKIP_CHECK=1 MTOOLS_NO_VFAT=0

cat > "$tmp/grub.cfg" <<'X'
search --no-floppy --fs-uuid --set=root d12b1050-5eed
set prefix=($root)'/boot/grub'
configfile $prefix/grub.cfg
X
head -c 5000 /dev/urandom > "$tmp/BOOTX64.EFI"
echo 'default vmlinuz root=/dev/sda2' > "$tmp/syslinux.cfg"
yes 'a fragmented file' | head -c 3000 > "$tmp/frag.txt"
printf 'x' > "$tmp/a"
head -c 1500 /dev/zero | tr '\0' b > "$tmp/b"

cut_zeros() { # SRC DST: SRC without its trailing zero bytes (at least one sector kept)
    python3 - "$1" "$2" <<'EOF'
import sys
img = open(sys.argv[1], 'rb').read()
open(sys.argv[2], 'wb').write(img[:max(len(img.rstrip(b'\0')), 512)])
EOF
}

fill() { # IMG: the usual tree
    i=$1
    mmd -i "$i" ::/EFI ::/EFI/BOOT ::/EFI/debian ::/syslinux ::/deep ::/deep/er ::/deep/er/est
    mcopy -i "$i" "$tmp/grub.cfg" ::/EFI/BOOT/grub.cfg
    mcopy -i "$i" "$tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$i" "$tmp/grub.cfg" "::/EFI/debian/A Long File Name, of Mixed Case.cfg"
    mcopy -i "$i" "$tmp/syslinux.cfg" ::/syslinux/syslinux.cfg
    mcopy -i "$i" "$tmp/a" ::/deep/er/est/empty-ish
    # a hole left by a deletion: the next file's chain jumps over live clusters
    mcopy -i "$i" "$tmp/b" ::/EFI/b1
    mcopy -i "$i" "$tmp/a" ::/EFI/keep
    mcopy -i "$i" "$tmp/b" ::/EFI/b2
    mdel -i "$i" ::/EFI/b1
    mcopy -i "$i" "$tmp/frag.txt" ::/EFI/frag.txt
    : > "$tmp/zero"
    mcopy -i "$i" "$tmp/zero" ::/EFI/zero.len
}

vol() { # NAME SIZE-KiB FILL MKFS-ARGS...: make, maybe fill, cut into the corpus
    name=$1 kib=$2 how=$3
    shift 3
    img=$tmp/$name.img
    rm -f "$img"
    mkfs.vfat -C "$@" -i 1234ABCD -n "$name" "$img" "$kib" >/dev/null
    [ "$how" = fill ] && fill "$img"
    cut_zeros "$img" "$out/$name.fat"
}

vol fat12 1024 fill -F 12 -s 1 -r 16
vol fat12s2k 1024 fill -F 12 -S 2048 -s 1 -r 64
vol fat12empty 1024 none -F 12 -s 4 -r 16
vol fat16 4096 fill -F 16 -s 1 -r 32
vol fat32 33792 fill -F 32 -s 1 -f 1
vol fat32f2 33792 fill -F 32 -s 1 -f 2
# a directory of several clusters: 40 long names in /EFI (3 entries each)
img=$tmp/fat32dir.img
rm -f "$img"
mkfs.vfat -C -F 32 -s 1 -f 1 -i 0BADF00D "$img" 33792 >/dev/null
mmd -i "$img" ::/EFI ::/EFI/BOOT
mcopy -i "$img" "$tmp/grub.cfg" ::/EFI/BOOT/grub.cfg
n=0
while [ $n -lt 40 ]; do
    mcopy -i "$img" "$tmp/a" "::/EFI/entry number $n.conf"
    n=$((n + 1))
done
cut_zeros "$img" "$out/fat32dir.fat"
