#!/bin/sh
# seeds-qcow2.sh DIR: a small seed corpus for fuzz-qcow2: qcow2 images made by qemu-img from
# a small mixed raw disk (random data, text, zeros, a tail that is not cluster-aligned):
# default (v3, 64 KiB clusters), compressed zlib and zstd, 4 KiB clusters, zero clusters
# (plain and preallocated), v2 (compat=0.10), 512-byte and 2 MiB clusters, an internal
# snapshot, 1-bit refcounts; and our own writer's images when p2v-img is at hand.
set -eu
out=$1
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v qemu-img >/dev/null || { echo "seeds-qcow2: qemu-img missing" >&2; exit 1; }
# 72 KiB + 3 sectors: small inputs run fast (most variants use 4 KiB clusters, so that
# metadata does not dwarf the data)
raw=$tmp/src.raw
head -c 9000 /dev/urandom > "$raw"
yes 'qcow2 cluster refcount table l1 l2 snapshot' | head -c 30000 >> "$raw"
truncate -s $((72 * 1024 + 1536)) "$raw"
n=0
seed() { # seed NAME QEMU-IMG-CONVERT-ARGS...
    name=$1; shift
    qemu-img convert -f raw -O qcow2 "$@" "$raw" "$tmp/$name.qcow2"
    cp "$tmp/$name.qcow2" "$out/q-$name.qcow2"
    n=$((n + 1))
}
seed default
seed zlib -c
seed zstd -c -o compression_type=zstd
seed c4k -o cluster_size=4k
seed c4k-zlib -c -o cluster_size=4k
seed c4k-zstd -c -o cluster_size=4k,compression_type=zstd
seed v2 -o compat=0.10,cluster_size=4k
seed v2-zlib -c -o compat=0.10,cluster_size=4k
seed c512 -o cluster_size=512
seed c512-zstd -c -o cluster_size=512,compression_type=zstd
seed c4k-refcount1 -o cluster_size=4k,refcount_bits=1
# 2 MiB clusters: the file holds four metadata clusters before any data (libFuzzer may
# cut such a seed to its input size limit; its header still steers the mutations)
seed c2m -o cluster_size=2M
# zero clusters, with (write -z) and without (write -z -u) a preallocated host cluster
qemu-img create -q -f qcow2 -o cluster_size=4k "$tmp/zero.qcow2" 128K
if command -v qemu-io >/dev/null; then
    qemu-io -f qcow2 -c 'write -P 0x55 0 64k' -c 'write -z 16k 8k' \
        -c 'write -z -u 32k 8k' "$tmp/zero.qcow2" >/dev/null
fi
cp "$tmp/zero.qcow2" "$out/q-zero.qcow2"
# an internal snapshot (a snapshot table and a second L1 table)
cp "$tmp/c4k.qcow2" "$tmp/snap.qcow2"
qemu-img snapshot -c s1 "$tmp/snap.qcow2"
cp "$tmp/snap.qcow2" "$out/q-snapshot.qcow2"
# an empty image (tables only)
qemu-img create -q -f qcow2 -o cluster_size=4k "$out/q-empty.qcow2" 256K
# our own writer, when p2v-img is at hand
if command -v p2v-img >/dev/null 2>&1; then
    p2v-img convert -f raw -O qcow2 -o cluster_size=4k "$raw" "$out/p-c4k.qcow2" \
        >/dev/null 2>&1 || true
    p2v-img convert -f raw -O qcow2 -c -o cluster_size=4k "$raw" "$out/p-zlib.qcow2" \
        >/dev/null 2>&1 || true
    p2v-img convert -f raw -O qcow2 -c -o compression_type=zstd,cluster_size=4k "$raw" \
        "$out/p-zstd.qcow2" >/dev/null 2>&1 || true
fi
