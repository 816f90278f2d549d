#!/bin/bash
# vmm-cases.sh WORK: the p2v-vmm runs of tests/integration/vmm-kvm.sh, run where real KVM is
# (inside tests/kvm/nest on machines without it). WORK holds the prepared disks and
# receives, per case NAME: NAME.rc (exit status), NAME.out (stdout: JSON or the console),
# NAME.err, NAME.secs (wall time). The assertions are the outer test's.
#   P2V_VMM: the p2v-vmm binary; P2V_CASES: the cases to run (default: all, in order).
work=${1:?usage: vmm-cases.sh WORK}
vmm=${P2V_VMM:?P2V_VMM is not set}
cd "$work" || exit 1

run() { # run NAME P2V-VMM-ARGS...
    local name=$1 t0 t1; shift
    case " ${P2V_CASES:-all} " in *" all "*|*" $name "*) ;; *) return 0 ;; esac
    t0=$(date +%s.%N)
    timeout -k 5 600 "$vmm" "$@" >"$name.out" 2>"$name.err" </dev/null
    echo $? >"$name.rc"
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc >"$name.secs"
    echo "case $name: exit $(cat "$name.rc") in $(cat "$name.secs") s"
}

[ -c /dev/kvm ] || { echo "vmm-cases: no /dev/kvm here" >&2; exit 3; }
# verdict timeouts: 2 to 3 times what a case takes under TCG on a loaded 2-core machine
common="--engine kvm --memory 512 --timeout 240"

# our freestanding guest reads the disk over virtio-blk-pci and prints the hash of what it
# read: through every format the VMM reads (libdiskfmt under the COW overlay)
for f in raw qcow2 vmdk-stream vmdk-sparse vhd vhdx; do
    run guest-$f boot --engine kvm --memory 64 --timeout 60 --kernel testguest.bz \
        --append "sectors=$(cat guest.sectors)" "guest.$f"
done
# the mini-bios fixture made bootable on virtio, from its own extlinux.conf: raw with two
# vCPUs (MP table, APs started through the in-kernel APIC), and as streamOptimized VMDK,
# monolithicSparse VMDK and VHDX (the format found by libdiskfmt's probe)
run mini-raw verify --json $common --cpus 2 --log mini-raw.log mini.raw
run mini-vmdk-stream verify --json $common -f vmdk mini-stream.vmdk
run mini-vmdk-sparse verify --json $common mini-sparse.vmdk
run mini-vhdx verify --json $common mini.vhdx
# the untouched fixture cannot find its root; a garbage kernel; a guest that resets at once
# (reset loop); a guest that never shows the pattern (the verdict must come within
# timeout + 1 s)
run plain verify --json $common plain.raw
run garbage verify --json $common --kernel garbage.bin --append root=/dev/vda1 mini.raw
run reset verify --json --engine kvm --memory 64 --timeout 30 --kernel testguest.bz \
    --append reset guest.raw
run hung verify --json --engine kvm --memory 512 --timeout 5 --expect 'NEVER-SHOWN-[0-9]{9}' mini.raw
# the debian12 fixture made bootable (as qcow2): its own grub.cfg, up to the login prompt
run debian verify --json --engine kvm --memory 1024 --timeout 480 --log debian.log \
    --expect '(^|[^A-Za-z])login: *$' debian.qcow2
# the debian12 fixture untouched (read-only, straight from the fixture cache): its
# initramfs gives up waiting for the root device (its own command line with rootdelay=3,
# so that it waits 3 s, not 30)
run debian-plain verify --json --engine kvm --memory 1024 --timeout 480 --log debian-plain.log \
    --append "$(cat debian-plain.cmdline)" debian-plain.raw
exit 0
