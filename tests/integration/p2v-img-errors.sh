#!/bin/bash
# p2v-img on bad input and bad usage: a clear error naming what was wrong, a non-zero
# exit, no crash (the sanitizer build runs this too), nothing half-written.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-img
img=$(p2v_bin p2v-img)
work=$(tmpdir)
plan 21

head -c 3M /dev/urandom > "$work/src.raw"
qemu-img convert -f raw -O qcow2 "$work/src.raw" "$work/good.qcow2"
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$work/src.raw" "$work/good.vmdk"
qemu-img convert -f raw -O vpc -o subformat=dynamic "$work/src.raw" "$work/good.vhd"

# expect_fail NAME PATTERN CMD...: exit status 1 or 2 (not a signal), stderr matches
expect_fail() {
    local name=$1 pat=$2; shift 2
    "$@" >"$work/out" 2>"$work/err"; local rc=$?
    if [ $rc -ge 1 ] && [ $rc -le 3 ] && grep -qiE "$pat" "$work/err"; then
        ok "$name"
    else
        not_ok "$name"; diag "exit $rc: $(head -c 600 "$work/err")"
    fi
}

expect_fail "missing file named" "nope.img" $img info "$work/nope.img"
expect_fail "unknown command" "unknown command" $img frobnicate
expect_fail "unknown output format" "unknown image format 'qcow3'" $img convert -O qcow3 "$work/src.raw" "$work/x"
expect_fail "unknown -o option" "unknown option 'bogus'" $img convert -O qcow2 -o bogus=1 "$work/src.raw" "$work/x"
expect_fail "bad cluster size" "cluster_size" $img convert -O qcow2 -o cluster_size=3000 "$work/src.raw" "$work/x"
ok "nothing left behind by failed converts" test -z "$(ls -A "$work" | grep -v -e '^src.raw$' -e '^good' -e '^out$' -e '^err$')"

# truncated images
for f in qcow2 vmdk vhd; do
    head -c 1000 "$work/good.$f" > "$work/trunc.$f"
done
expect_fail "truncated qcow2 refused" "trunc.qcow2" $img convert -f qcow2 -O raw "$work/trunc.qcow2" "$work/x.raw"
expect_fail "truncated vmdk refused" "trunc.vmdk" $img convert -f vmdk -O raw "$work/trunc.vmdk" "$work/x.raw"
expect_fail "truncated vhd refused" "trunc.vhd" $img convert -f vhd -O raw "$work/trunc.vhd" "$work/x.raw"
ok "no x.raw after the failed converts" test ! -e "$work/x.raw"

# a qcow2 whose L1 table offset points past the end of the file (header offset 40)
cp "$work/good.qcow2" "$work/l1.qcow2"
printf '\x7f\xff\xff\xff\xff\xff\x00\x00' | dd of="$work/l1.qcow2" bs=1 seek=40 conv=notrunc status=none
expect_fail "qcow2 L1 past the end refused" "l1.qcow2" $img convert -O raw "$work/l1.qcow2" "$work/x.raw"
# a qcow2 with a virtual size near 2^64 (header offset 24)
cp "$work/good.qcow2" "$work/size.qcow2"
printf '\xff\xff\xff\xff\xff\xff\xfe\x00' | dd of="$work/size.qcow2" bs=1 seek=24 conv=notrunc status=none
expect_fail "qcow2 huge virtual size refused" "size.qcow2" $img info "$work/size.qcow2"
# a qcow2 with a backing file (qemu-img made)
qemu-img create -q -f qcow2 -b "$work/good.qcow2" -F qcow2 "$work/backed.qcow2"
expect_fail "qcow2 backing file refused" "backing" $img info "$work/backed.qcow2"
# a sparse VMDK whose grain directory offset (header offset 56, in sectors) is far away
qemu-img convert -f raw -O vmdk "$work/src.raw" "$work/gd.vmdk"
printf '\x00\x00\x00\x00\x00\x00\x00\x7f' | dd of="$work/gd.vmdk" bs=1 seek=56 conv=notrunc status=none
expect_fail "vmdk grain directory past the end refused" "gd.vmdk" $img convert -O raw "$work/gd.vmdk" "$work/x.raw"
# a descriptor naming an extent outside its folder
cat > "$work/evil.vmdk" <<'DESC'
# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="monolithicFlat"
RW 6144 FLAT "../../../../etc/passwd" 0
ddb.adapterType = "ide"
DESC
expect_fail "vmdk extent path with .. refused" "evil.vmdk|\.\." $img convert -O raw "$work/evil.vmdk" "$work/x.raw"
sed -i 's|"../../../../etc/passwd"|"/etc/passwd"|' "$work/evil.vmdk"
expect_fail "vmdk absolute extent path refused" "evil.vmdk|absolute|/etc/passwd" $img convert -O raw "$work/evil.vmdk" "$work/x.raw"
# a VHD footer with a bad checksum (checksum at footer offset 64)
cp "$work/good.vhd" "$work/sum.vhd"
sz=$(stat -c %s "$work/sum.vhd")
printf '\x01\x02\x03\x04' | dd of="$work/sum.vhd" bs=1 seek=$((sz - 512 + 64)) conv=notrunc status=none
printf '\x01\x02\x03\x04' | dd of="$work/sum.vhd" bs=1 seek=64 conv=notrunc status=none
expect_fail "vhd bad footer checksum refused" "sum.vhd" $img convert -f vhd -O raw "$work/sum.vhd" "$work/x.raw"
# random garbage forced as each format
head -c 65536 /dev/urandom > "$work/garbage"
expect_fail "garbage as qcow2 refused" "garbage" $img info -f qcow2 "$work/garbage"
expect_fail "garbage as vmdk refused" "garbage" $img info -f vmdk "$work/garbage"
expect_fail "garbage as vhdx refused" "garbage" $img info -f vhdx "$work/garbage"
ok "no x.raw after any refused input" test ! -e "$work/x.raw"
