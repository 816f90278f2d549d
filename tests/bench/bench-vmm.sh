#!/bin/bash
# bench-vmm: p2v-vmm beside its anchor, qemu-system-x86_64, on the mini-bios fixture made
# bootable on virtio (the copy p2v-inject makes for the tests), time to the login prompt.
#  1. KVM (where /dev/kvm is fast, else inside the nested machine of tests/kvm/nest, both
#     engines in the same nested machine, same run): `p2v-vmm boot --engine kvm` (it reads
#     the kernel and initrd from the disk itself) against `qemu-system-x86_64 -enable-kvm`
#     with direct kernel boot of the same kernel, initrd and command line (extracted by
#     `p2v-vmm inspect --extract`), virtio-blk-pci on the same disk. Also KVM's exit counts
#     (debugfs) and the memory each keeps besides the guest's RAM (RSS less the resident
#     part of the guest RAM mapping). Targets: time <= 0.7x QEMU's, our overhead <= 16 MiB.
#  2. This host: `p2v-vmm verify` (engine auto; QEMU TCG where /dev/kvm is missing or slow)
#     to its verdict at the login prompt, against a plain QEMU TCG boot of the same disk
#     (SeaBIOS, extlinux, the same kernel) to the login prompt. Target: <= 1.1x.
# P2V_BENCH_RUNS runs each (default 3), alternating; medians and ratios. P2V_BENCH_PARTS:
# "kvm host" (default), or one of them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src_dir=${top_srcdir:-$here/../..}
build=${top_builddir:-$src_dir}
runs=${P2V_BENCH_RUNS:-3}
vmm=$build/p2v-vmm
[ -x "$vmm" ] || { echo "bench-vmm: $vmm is not built"; exit 1; }
for t in qemu-system-x86_64 python3; do
    command -v $t >/dev/null || { echo "bench-vmm: $t missing (scripts/setup-deps)"; exit 1; }
done
# the cached injected fixture (tests/functions.sh's injected_fixture)
top_srcdir=$src_dir top_builddir=$build
. "$src_dir/tests/functions.sh"
trap - EXIT
img=$(injected_fixture mini-bios)
work=$(mktemp -d "$build/tests/bench-vmm.XXXXXX")   # under the build tree: shared when nested
trap 'rm -rf "$work" "$_tap_root"' EXIT
cp --sparse=always "$img" "$work/disk.raw"
"$vmm" inspect --extract "$work" "$work/disk.raw" >/dev/null
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { # field PREFIX KEY: the values of KEY in WORK/PREFIX.*.json, one per line
    for f in "$work/$1".*.json; do
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))' "$f" "$2"
    done
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b ? a / b : 0}'; }

parts=${P2V_BENCH_PARTS:-kvm host}
# ---- 1. KVM ----------------------------------------------------------------------------------
if [[ " $parts " == *" kvm "* ]]; then
echo "bench-vmm: KVM part ($runs runs each; nested when /dev/kvm is not fast)"
P2V_VMM=$vmm abs_top_builddir=$build abs_top_srcdir=$src_dir P2V_NEST_TIMEOUT=3600 \
    "$src_dir/tests/kvm/kvm-run" bash "$here/bench-vmm-nested.sh" "$work" "$runs" \
    >"$work/nested.log" 2>&1 || { echo "bench-vmm: the KVM part failed:"; tail -n 20 "$work/nested.log"; exit 1; }
for e in ours qemu; do
    n=$(ls "$work/$e".*.json | wc -l)
    [ "$n" = "$runs" ] || { echo "bench-vmm: $e ran $n of $runs times:"; cat "$work/nested.log"; exit 1; }
    if field "$e" matched | grep -q False; then
        echo "bench-vmm: $e did not reach the login prompt:"; cat "$work/nested.log"; exit 1
    fi
done
t_ours=$(field ours seconds | median); t_qemu=$(field qemu seconds | median)
x_ours=$(field ours kvm_exits | median); x_qemu=$(field qemu kvm_exits | median)
u_ours=$(( $(field ours io_exits | median) + $(field ours mmio_exits | median) ))
u_qemu=$(( $(field qemu io_exits | median) + $(field qemu mmio_exits | median) ))
m_ours=$(field ours overhead_kib | median); m_qemu=$(field qemu overhead_kib | median)
echo "bench-vmm: KVM, mini-bios to its login prompt, median of $runs"
printf '  %-28s %10s %12s %14s %14s\n' "" "seconds" "VM exits" "I/O+MMIO exits" "memory (KiB)"
printf '  %-28s %10s %12s %14s %14s\n' "p2v-vmm --engine kvm" "$t_ours" "$x_ours" "$u_ours" "$m_ours"
printf '  %-28s %10s %12s %14s %14s\n' "qemu-system-x86_64 -enable-kvm" "$t_qemu" "$x_qemu" "$u_qemu" "$m_qemu"
echo "  time ratio ours/qemu: $(ratio "$t_ours" "$t_qemu") (target <= 0.7); our overhead $(( ${m_ours%.*} / 1024 )) MiB (target <= 16)"
fi

# ---- 2. this host: engine auto against a plain QEMU TCG boot -----------------------------
[[ " $parts " == *" host "* ]] || exit 0
echo "bench-vmm: this host, engine auto to its verdict vs plain QEMU TCG to login ($runs runs each)"
for r in $(seq 1 "$runs"); do
    python3 "$here/boot-timer.py" --timeout 600 -- "$vmm" verify --json --memory 512 \
        --expect 'login: *$' "$work/disk.raw" >"$work/auto.$r.json"
    python3 "$here/boot-timer.py" --pattern 'login: *$' --timeout 600 -- \
        qemu-system-x86_64 -accel tcg -m 512 -nodefaults -display none -no-reboot \
        -monitor none -serial stdio \
        -drive "file=$work/disk.raw,format=raw,if=virtio,snapshot=on" >"$work/tcg.$r.json"
    echo "run $r: auto $(field auto seconds | tail -n 1) s, qemu tcg $(field tcg seconds | tail -n 1) s"
done
if field auto exit | grep -qv '^0$'; then echo "bench-vmm: p2v-vmm verify failed"; cat "$work"/auto.*.json; exit 1; fi
t_auto=$(field auto seconds | median); t_tcg=$(field tcg seconds | median)
engine=$("$vmm" calibrate --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["engine"])')
echo "bench-vmm: this host (engine auto chose $engine), median of $runs"
printf '  %-40s %8s s\n' "p2v-vmm verify (auto)" "$t_auto" "qemu-system-x86_64 -accel tcg (BIOS boot)" "$t_tcg"
echo "  ratio ours/qemu: $(ratio "$t_auto" "$t_tcg") (target <= 1.1)"
