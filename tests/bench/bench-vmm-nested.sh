#!/bin/bash
# bench-vmm-nested.sh WORK RUNS: the KVM half of bench-vmm.sh, run where real KVM is (inside
# tests/kvm/nest here). WORK holds disk.raw, kernel, initrd, cmdline. Per run, alternating:
# p2v-vmm boot --engine kvm (reads the kernel and initrd from the disk itself) and
# qemu-system-x86_64 -enable-kvm with direct kernel boot (the files handed to it), both
# with virtio-blk-pci on the same disk (copy-on-write) and the same command line, timed to
# the login prompt by boot-timer.py, which also reads KVM's exit counters for the VM
# (debugfs) at that moment. Writes WORK/ours.N.json and WORK/qemu.N.json.
set -u
work=$1 runs=$2
here=$(cd "$(dirname "$0")" && pwd)
vmm=${P2V_VMM:?}
mem=512
cmdline=$(cat "$work/cmdline")
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null

measure() { # measure NAME.N CMD...: boot-timer (time, memory and KVM's exit counters)
    local out=$1; shift
    python3 "$here/boot-timer.py" --pattern 'login: *$' --timeout 600 --guest-mib $mem -- "$@" \
        >"$work/$out.json"
    echo "$out: $(cat "$work/$out.json")"
}

for r in $(seq 1 "$runs"); do
    measure "ours.$r" "$vmm" boot --engine kvm --memory $mem --append "$cmdline" "$work/disk.raw"
    measure "qemu.$r" qemu-system-x86_64 -enable-kvm -cpu host -m $mem -smp 1 -nodefaults \
        -display none -no-reboot -monitor none -serial stdio \
        -kernel "$work/kernel" -initrd "$work/initrd" -append "$cmdline" \
        -drive "file=$work/disk.raw,format=raw,if=none,id=d0,snapshot=on" \
        -device virtio-blk-pci,drive=d0
done
