#!/bin/bash
# bench-inject: p2v-inject beside the anchor, virt-v2v, on the debian12-bios fixture.
#   ours:   p2v-inject -f qcow2 on a qcow2 copy (in place; one appliance launch)
#   anchor: virt-v2v -i disk COPY -o local -os DIR -of qcow2 on another qcow2 copy
# Both under TCG (LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg for
# virt-v2v; p2v-inject chooses TCG by itself on machines without a fast KVM). One run
# each (P2V_BENCH_RUNS=N for medians), alternating; prints both times, the ratio
# ours/anchor (target <= 0.5) and what each changed: our report's change count and
# changes, virt-v2v's output lines. virt-v2v also copies the disk out (a qcow2 write of
# ~1 GiB of data, 2 s here); its time is kept whole, as a user would see it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src_dir=${top_srcdir:-$here/../..}
build=${top_builddir:-$src_dir}
cache=${P2V_BENCH_CACHE:-/var/tmp/p2vkit-bench}
runs=${P2V_BENCH_RUNS:-1}
for t in qemu-img virt-v2v python3; do
    command -v $t >/dev/null || { echo "bench-inject: $t missing (scripts/setup-deps)"; exit 1; }
done
inject=$build/p2v-inject
[ -x "$inject" ] || { echo "bench-inject: $inject is not built"; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/inject.XXXXXX")
trap 'rm -rf "$work"' EXIT
img=$("$src_dir/tests/fixtures/fixture" debian12-bios)
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f\n", b - a}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

: >"$work/ours.t"; : >"$work/v2v.t"
for r in $(seq 1 "$runs"); do
    qemu-img convert -O qcow2 "$img" "$work/ours.qcow2"
    qemu-img convert -O qcow2 "$img" "$work/v2v.qcow2"
    t0=$(now)
    "$inject" -f qcow2 --json "$work/ours.qcow2" >"$work/ours.json" 2>"$work/ours.err" ||
        { echo "bench-inject: p2v-inject failed:"; cat "$work/ours.err"; exit 1; }
    elapsed "$t0" >>"$work/ours.t"
    rm -rf "$work/out"; mkdir -p "$work/out"
    t0=$(now)
    LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg \
        virt-v2v -i disk "$work/v2v.qcow2" -o local -os "$work/out" -of qcow2 \
        >"$work/v2v.out" 2>&1 || { echo "bench-inject: virt-v2v failed:"; tail -n 20 "$work/v2v.out"; exit 1; }
    elapsed "$t0" >>"$work/v2v.t"
    echo "run $r: p2v-inject $(tail -n 1 "$work/ours.t") s, virt-v2v $(tail -n 1 "$work/v2v.t") s"
done
ours=$(median <"$work/ours.t")
v2v=$(median <"$work/v2v.t")
ratio=$(awk -v a="$ours" -v b="$v2v" 'BEGIN {printf "%.2f", a / b}')
echo "bench-inject: debian12-bios (qcow2), TCG, median of $runs"
printf '  %-10s %8s s\n' p2v-inject "$ours" virt-v2v "$v2v"
echo "  ratio p2v-inject / virt-v2v: $ratio (target <= 0.5)"
echo "  p2v-inject changed: $(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["change_count"], "changes:", "; ".join(c["kind"] + " " + c["path"] + " (" + c.get("detail", c.get("after", ""))[:70] + ")" for c in j["changes"]))' "$work/ours.json")"
echo "  virt-v2v said:"
grep -aE '^\[ *[0-9.]+\]' "$work/v2v.out" | sed 's/^/    /'
awk -v r="$ratio" 'BEGIN {exit !(r <= 0.5)}' || echo "  (ratio above the 0.5 target)"
