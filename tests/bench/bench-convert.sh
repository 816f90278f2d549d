#!/bin/bash
# bench-convert: p2v-img convert against qemu-img convert on mixed raw sources (a third
# random, a third zeros, a third compressible text), for raw→qcow2, raw→vmdk
# streamOptimized and qcow2→raw. Ours and the anchor alternate in the same run; the table
# gives each one's median wall time and peak RSS and the ratio of medians (ours/qemu-img).
# Targets: ratio ≤ 1.0, our peak RSS ≤ 64 MiB whatever the disk size.
#   P2V_BENCH_SIZES="2G 8G" P2V_BENCH_RUNS=3 bench-convert.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
img=${top_builddir:-$here/../..}/p2v-img
[ -x "$img" ] || img=$(command -v p2v-img)
cache=${P2V_BENCH_CACHE:-/var/tmp/p2vkit-bench}
runs=${P2V_BENCH_RUNS:-3}
sizes=${P2V_BENCH_SIZES:-2G 8G}
work=$(mktemp -d "$cache/run.XXXXXX" 2>/dev/null || { mkdir -p "$cache"; mktemp -d "$cache/run.XXXXXX"; })
trap 'rm -rf "$work"' EXIT
command -v qemu-img >/dev/null || { echo "bench-convert: qemu-img missing"; exit 1; }

# time_cmd CMD...: print the wall seconds and peak RSS (KiB) of one run
time_cmd() {
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/err" ||
        { echo "bench-convert: failed: $*"; cat "$work/err"; return 1; }
    cat "$work/time"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf '%-6s %-26s %10s %10s %8s %12s %12s\n' size case "ours(s)" "qemu(s)" ratio "ours RSS" "qemu RSS"
for size in $sizes; do
    src=$cache/mixed-$size.raw
    if [ ! -s "$src" ]; then
        bytes=$(numfmt --from=iec "$size")
        python3 "$here/mkmixed.py" "$bytes" "$src"
    fi
    qsrc=$cache/mixed-$size.qcow2
    [ -s "$qsrc" ] || qemu-img convert -f raw -O qcow2 "$src" "$qsrc"
    # Like for like: qemu-img convert's default cache mode syncs nothing, so ours runs
    # with -t unsafe there; the "synced" case compares both with the data synced before
    # the image is complete (our default, qemu-img -t writeback).
    for case in raw-qcow2 raw-vmdk-stream qcow2-raw raw-qcow2-synced; do
        case $case in
        raw-qcow2) ours=("$img" convert -t unsafe -f raw -O qcow2 "$src" "$work/o.qcow2")
                   anchor=(qemu-img convert -f raw -O qcow2 "$src" "$work/a.qcow2");;
        raw-vmdk-stream) ours=("$img" convert -t unsafe -f raw -O vmdk -o subformat=streamOptimized "$src" "$work/o.vmdk")
                   anchor=(qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$src" "$work/a.vmdk");;
        qcow2-raw) ours=("$img" convert -t unsafe -f qcow2 -O raw "$qsrc" "$work/o.raw")
                   anchor=(qemu-img convert -f qcow2 -O raw "$qsrc" "$work/a.raw");;
        raw-qcow2-synced) ours=("$img" convert -f raw -O qcow2 "$src" "$work/o.qcow2")
                   anchor=(qemu-img convert -t writeback -f raw -O qcow2 "$src" "$work/a.qcow2");;
        esac
        : > "$work/ours"; : > "$work/anchor"
        for _ in $(seq "$runs"); do
            rm -f "$work"/o.* "$work"/a.*
            time_cmd "${ours[@]}" >> "$work/ours"
            time_cmd "${anchor[@]}" >> "$work/anchor"
        done
        # the outputs must agree before a time means anything
        qemu-img compare -q "$src" "${ours[-1]}" ||
            { echo "bench-convert: $case output differs from the source"; exit 1; }
        ot=$(cut -d' ' -f1 "$work/ours" | median); at=$(cut -d' ' -f1 "$work/anchor" | median)
        om=$(cut -d' ' -f2 "$work/ours" | sort -n | tail -1); am=$(cut -d' ' -f2 "$work/anchor" | sort -n | tail -1)
        ratio=$(awk -v a="$ot" -v b="$at" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
        printf '%-6s %-26s %10s %10s %8s %9d MiB %9d MiB\n' "$size" "$case" "$ot" "$at" "$ratio" $((om / 1024)) $((am / 1024))
    done
done
echo "(median of $runs runs each, ours and qemu-img alternating; ratio = ours/qemu-img)"
