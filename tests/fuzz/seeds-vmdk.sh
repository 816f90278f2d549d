#!/bin/sh
# seeds-vmdk.sh DIR: a small seed corpus for fuzz-vmdk: sparse and streamOptimized VMDKs
# made by qemu-img from a small mixed raw disk (a few KiB to a few hundred KiB each), and
# descriptor-only files (one naming the harness's fixed extent "flat.bin").
set -eu
out=$1
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v qemu-img >/dev/null || { echo "seeds-vmdk: qemu-img missing" >&2; exit 1; }
# 1 MiB + 3 sectors: random data, text, zeros and a tail that is not grain-aligned
raw=$tmp/src.raw
head -c 70000 /dev/urandom > "$raw"
yes 'vmdk grain table directory marker footer' | head -c 100000 >> "$raw"
truncate -s $((1024 * 1024 + 1536)) "$raw"
for sub in monolithicSparse streamOptimized; do
    qemu-img convert -f raw -O vmdk -o subformat=$sub "$raw" "$tmp/q-$sub.vmdk"
    cp "$tmp/q-$sub.vmdk" "$out/q-$sub.vmdk"
done
# an image with zeroed-grain entries (version 2)
qemu-img create -q -f vmdk -o zeroed_grain=on "$tmp/zg.vmdk" 1M
if command -v qemu-io >/dev/null; then
    qemu-io -f vmdk -c 'write -P 0x55 0 64k' -c 'write -z 64k 128k' "$tmp/zg.vmdk" >/dev/null
fi
cp "$tmp/zg.vmdk" "$out/q-zeroed-grain.vmdk"
# an empty sparse image (tables only)
qemu-img create -q -f vmdk "$out/q-empty.vmdk" 256K
# our own writers, when p2v-img is at hand
if command -v p2v-img >/dev/null 2>&1; then
    for sub in monolithicSparse streamOptimized; do
        p2v-img convert -f raw -O vmdk -o subformat=$sub "$raw" "$out/p-$sub.vmdk" >/dev/null 2>&1 || true
    done
fi
cat > "$out/desc-flat.vmdk" <<'D'
# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 64 FLAT "flat.bin" 0
RW 64 ZERO
RDONLY 32 FLAT "flat.bin" 64

# The Disk Data Base
#DDB
ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "1"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
D
printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\nRW 100 SPARSE "input.vmdk"\n' > "$out/desc-split.vmdk"
