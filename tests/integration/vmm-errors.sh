#!/bin/bash
# p2v-vmm on bad input: each case gets its verdict or error, named, with its exit code, and
# nothing is written to the disk given. No guest boots here (runs in the sanitizer build).
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool sfdisk mke2fs
vmm=$(p2v_bin p2v-vmm)
work=$(tmpdir)
plan 23

# run NAME ARGS...: p2v-vmm with --json; sets rc, out (stdout), err (stderr)
run() {
    "$vmm" "$@" >"$work/out" 2>"$work/err"
    rc=$?
    out=$(cat "$work/out")
    err=$(cat "$work/err")
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval("d"+sys.argv[2]))' "$work/out" "$1" 2>/dev/null; }

# ---- usage ---------------------------------------------------------------------------------
run --help
is "$rc" 0 "--help exits 0"
ok "--help names the commands" grep -q "p2v-vmm verify DISK" "$work/out"
run frobnicate x.img
is "$rc" 2 "an unknown command is a usage error"
run verify
is "$rc" 2 "verify without a disk is a usage error"
run verify --engine warp x.img
ok "--engine warp is refused, named" bash -c "[ $rc = 2 ] && grep -q \"'warp'\" '$work/err'"
run verify --initrd /etc/hostname x.img
is "$rc" 2 "--initrd without --kernel is a usage error"

# ---- a missing disk, memory out of range -----------------------------------------------------
run verify --json "$work/nope.img"
ok "a missing disk: exit 1, the path named" bash -c "[ $rc = 1 ] && grep -q 'nope.img' '$work/err'"
is "$(jget "['verdict']")" error "the JSON says error"
truncate -s 64M "$work/zero.img"
run verify --memory 8 "$work/zero.img"
ok "--memory 8 is refused" bash -c "[ $rc = 1 ] && grep -q 'memory' '$work/err'"

# ---- no partition table ----------------------------------------------------------------------
sum0=$(sha256sum <"$work/zero.img")
run verify --json --engine qemu "$work/zero.img"
is "$rc" 11 "a blank disk: exit 11"
is "$(jget "['result']")" no-boot-config "verdict no-boot-config"
ok "the reason names the partition table" bash -c "grep -qi 'partition table' '$work/out'"
is "$(sha256sum <"$work/zero.img")" "$sum0" "the disk is unchanged"

# ---- an ext4 partition with a garbage grub.cfg, then one naming a missing kernel -------------
mkdisk() { # mkdisk IMG GRUBCFG-CONTENT
    local img=$1 d=$work/root.$$
    rm -rf "$d" "$img"; mkdir -p "$d/boot/grub"
    printf '%s\n' "$2" >"$d/boot/grub/grub.cfg"
    truncate -s 64M "$img"
    printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q --no-reread --no-tell-kernel "$img" >/dev/null
    mke2fs -q -F -t ext4 -E offset=$((2048 * 512)) -d "$d" "$img" 60M
}
mkdisk "$work/garbage.img" $'menuentry "broken" {\n  set x=1\n}\n}}} {{{'
run verify --json --engine qemu "$work/garbage.img"
is "$rc" 11 "a grub.cfg without a kernel line: exit 11"
ok "the reason names grub.cfg" bash -c "grep -q 'grub.cfg' '$work/out'"
mkdisk "$work/nokernel.img" $'menuentry "Debian" {\n  linux /boot/vmlinuz-9.9 root=/dev/vda1\n  initrd /boot/initrd.img-9.9\n}'
run verify --json --engine qemu "$work/nokernel.img"
is "$rc" 12 "a grub.cfg naming a missing kernel: exit 12"
ok "the reason names the kernel's path" bash -c "grep -q 'vmlinuz-9.9' '$work/out'"

# ---- a garbage kernel; an initrd larger than the guest's memory -------------------------------
head -c 300000 /dev/urandom >"$work/garbage-kernel"
run verify --json --engine qemu --kernel "$work/garbage-kernel" --append "root=/dev/vda1" "$work/zero.img"
is "$rc" 12 "a garbage kernel: exit 12 (kernel missing or not bootable)"
ok "the reason says it is not a bzImage" bash -c "grep -qi 'bzimage\|HdrS' '$work/out'"
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
if [ -n "$kernel" ]; then
    truncate -s 100M "$work/big-initrd"
    run verify --engine qemu --memory 128 --kernel "$kernel" --initrd "$work/big-initrd" "$work/zero.img"
    ok "an initrd larger than the guest's memory: exit 1, a clear error" \
        bash -c "[ $rc = 1 ] && grep -q 'initrd' '$work/err' && grep -q 'memory' '$work/err'"
else
    ok "an initrd larger than memory # SKIP no kernel under /boot"
fi

# ---- engines ---------------------------------------------------------------------------------
run calibrate --json
if [ -e /dev/kvm ]; then
    ok "calibrate measured /dev/kvm: $(jget "['note']")" test -n "$(jget "['note']")"
    ok "calibrate exit code matches 'fast'" bash -c "[ \"$(jget "['fast']")\" = True ] && [ $rc = 0 ] || [ $rc = 1 ]"
    ok "--engine kvm with /dev/kvm present # SKIP only meaningful where /dev/kvm is missing"
else
    ok "calibrate without /dev/kvm: exit 1" test "$rc" = 1
    is "$(jget "['kvm_present']")" False "calibrate reports /dev/kvm missing"
    run verify --engine kvm --kernel "${kernel:-/nonexistent}" --append "root=/dev/vda1" "$work/zero.img"
    ok "--engine kvm without /dev/kvm: exit 1 naming /dev/kvm" \
        bash -c "[ $rc = 1 ] && grep -q '/dev/kvm' '$work/err'"
fi
