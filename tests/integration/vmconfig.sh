#!/bin/bash
# p2v-server vmconfig: VM configurations from a machine's facts and its disks, checked by
# outside oracles. For a 64 MiB qcow2 and a copy of the mini-bios fixture, with BIOS and
# UEFI facts of two NICs: virt-xml-validate passes on the libvirt XML; the QEMU script is
# valid sh, holds the MACs and hands QEMU the right arguments (run with a stub QEMU); the
# .vmx has its keys and its monolithicSparse VMDKs equal the sources; the OVA unpacks with
# tar in the order .ovf, .mf, disks, every hash of its .mf checks with sha256sum, and its
# VMDKs are streamOptimized (qemu-img, vmdkinfo) and equal the sources (qemu-img
# compare). A hostile name stays inside --out and runs nothing; a bad facts file is a
# clear error that writes nothing.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-img qemu-io virt-xml-validate sha256sum tar python3
srv=$(p2v_bin p2v-server)
work=$(tmpdir)
plan 49

img=$(fixture mini-bios)
cp --sparse=always "$img" "$work/mini.img"
qemu-img create -q -f qcow2 "$work/small.qcow2" 64M
qemu-io -c 'write -P 0x5a 1M 3M' -c 'write -P 0xa5 40M 64k' "$work/small.qcow2" >/dev/null

cat >"$work/bios.json" <<'EOF'
{"name":"pc-bios","hostname":"pc-bios.example","cpus":3,"memory-bytes":3000000000,
 "firmware":"bios","dmi":{"vendor":"ACME"},
 "nics":[{"name":"eth0","mac":"00:1A:2B:3C:4D:5E","driver":"e1000e"},
         {"name":"eth1","mac":"00:1a:2b:3c:4d:5f","driver":"igb"},
         {"name":"docker0","mac":"02:42:00:00:00:01","driver":null}],
 "live":false,"os":{"id":"debian","version-id":"12","pretty-name":"Debian GNU/Linux 12",
 "kernel":"6.1.0","arch":"x86_64"},"all-blocks":false,"disks":[]}
EOF
sed -e 's/"bios"/"uefi"/' -e 's/pc-bios/pc-uefi/g' "$work/bios.json" >"$work/uefi.json"

# ---- BIOS, every output ------------------------------------------------------------------
out=$work/bios
"$srv" vmconfig --facts "$work/bios.json" --disk "$work/small.qcow2" --disk "$work/mini.img" \
    --out "$out" --outputs all --json >"$work/bios.out" 2>"$work/bios.err"
is "$?" 0 "vmconfig --outputs all (BIOS facts, qcow2 + raw disks)"
diag "$(cat "$work/bios.err")"
is "$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["name"], " ".join(d["files"]))' <"$work/bios.out")" \
    "pc-bios pc-bios.xml pc-bios.sh pc-bios-disk0.vmdk pc-bios-disk1.vmdk pc-bios.vmx pc-bios-disk0-stream.vmdk pc-bios-disk1-stream.vmdk pc-bios.ovf pc-bios.mf pc-bios.ova" \
    "--json names every file written"
is "$(ls -A "$out" | grep -c '\.tmp$')" 0 "no temporary file left"

xml=$out/pc-bios.xml
ok "virt-xml-validate: the libvirt XML is a valid domain" virt-xml-validate "$xml" domain
ok "XML: kvm, 3 vCPUs, 3 GiB, no UEFI" bash -c "grep -q \"<domain type='kvm'>\" '$xml' &&
    grep -q \"<vcpu placement='static'>3</vcpu>\" '$xml' &&
    grep -q \"<memory unit='MiB'>3072</memory>\" '$xml' && ! grep -q \"firmware='efi'\" '$xml'"
ok "XML: both MACs (docker0 left out), virtio, network default" bash -c "
    grep -q \"<mac address='00:1a:2b:3c:4d:5e'/>\" '$xml' &&
    grep -q \"<mac address='00:1a:2b:3c:4d:5f'/>\" '$xml' && ! grep -q 02:42 '$xml' &&
    [ \$(grep -c \"<model type='virtio'/>\" '$xml') -eq 2 ] &&
    grep -q \"<source network='default'/>\" '$xml'"
ok "XML: virtio disks with their formats and absolute paths" bash -c "
    grep -q \"<source file='$work/small.qcow2'/>\" '$xml' &&
    grep -q \"<source file='$work/mini.img'/>\" '$xml' &&
    grep -q \"type='qcow2'\" '$xml' && grep -q \"type='raw'\" '$xml' &&
    grep -q \"<target dev='vdb' bus='virtio'/>\" '$xml'"
ok "XML: serial console" bash -c "grep -q \"<console type='pty'>\" '$xml'"

sh=$out/pc-bios.sh
ok "QEMU script: executable, valid sh" bash -c "[ -x '$sh' ] && sh -n '$sh'"
ok "QEMU script: both MACs on virtio-net-pci" bash -c "
    grep -q 'virtio-net-pci,netdev=net0,mac=00:1a:2b:3c:4d:5e' '$sh' &&
    grep -q 'virtio-net-pci,netdev=net1,mac=00:1a:2b:3c:4d:5f' '$sh'"
# a stub QEMU prints its arguments, one per line
cat >"$work/stub" <<'EOF'
#!/bin/sh
for a in "$@"; do printf '%s\n' "$a"; done
EOF
chmod +x "$work/stub"
P2V_QEMU=$work/stub "$sh" -S "extra arg" >"$work/args" 2>&1
is "$?" 0 "the script runs (stub QEMU)"
ok "QEMU args: -accel kvm then tcg, q35, -cpu max, -m 3072, -smp 3" bash -c "
    tr '\n' ' ' <'$work/args' | grep -q -- '^-accel kvm -accel tcg -name pc-bios -machine q35 -cpu max -m 3072 -smp 3 '"
ok "QEMU args: disks relative to the script's folder, explicit formats, virtio-blk" bash -c "
    grep -qx 'file=$out/../small.qcow2,format=qcow2,if=none,id=disk0' '$work/args' &&
    grep -qx 'file=$out/../mini.img,format=raw,if=none,id=disk1' '$work/args' &&
    grep -qx 'virtio-blk-pci,drive=disk0,bootindex=1' '$work/args'"
ok "QEMU args: user networking, serial on stdio, extra arguments last" bash -c "
    grep -qx 'user,id=net1' '$work/args' && grep -qx mon:stdio '$work/args' &&
    tail -n 2 '$work/args' | tr '\n' '|' | grep -qx -- '-S|extra arg|'"
is "$(P2V_QEMU=$work/stub P2V_QEMU_ACCEL=tcg "$sh" | head -n 3 | tr '\n' ' ')" "-accel tcg -name " \
    "P2V_QEMU_ACCEL=tcg: TCG only"
P2V_QEMU=$work/stub P2V_QEMU_ACCEL='kvm;touch x' "$sh" >/dev/null 2>&1
is "$?" 2 "P2V_QEMU_ACCEL with shell text refused"

vmx=$out/pc-bios.vmx
ok ".vmx: the expected keys" bash -c "
    grep -qx 'config.version = \"8\"' '$vmx' && grep -q '^virtualHW.version = \"[0-9]*\"$' '$vmx' &&
    grep -qx 'displayName = \"pc-bios\"' '$vmx' && grep -qx 'guestOS = \"debian12-64\"' '$vmx' &&
    grep -qx 'memsize = \"3072\"' '$vmx' && grep -qx 'numvcpus = \"3\"' '$vmx' &&
    ! grep -q firmware '$vmx'"
ok ".vmx: disks on SATA, e1000e NICs with the original MACs (static)" bash -c "
    grep -qx 'sata0.present = \"TRUE\"' '$vmx' &&
    grep -qx 'sata0:0.fileName = \"pc-bios-disk0.vmdk\"' '$vmx' &&
    grep -qx 'sata0:1.fileName = \"pc-bios-disk1.vmdk\"' '$vmx' &&
    grep -qx 'ethernet1.virtualDev = \"e1000e\"' '$vmx' &&
    grep -qx 'ethernet0.addressType = \"static\"' '$vmx' &&
    grep -qx 'ethernet0.address = \"00:1a:2b:3c:4d:5e\"' '$vmx' &&
    grep -qx 'ethernet1.address = \"00:1a:2b:3c:4d:5f\"' '$vmx'"
ok ".vmx disks: monolithicSparse VMDKs" bash -c "
    qemu-img info '$out/pc-bios-disk0.vmdk' | grep -q 'create type: monolithicSparse' &&
    qemu-img info '$out/pc-bios-disk1.vmdk' | grep -q 'create type: monolithicSparse'"
ok ".vmx disks equal their sources (qemu-img compare)" bash -c "
    qemu-img compare -q '$work/small.qcow2' '$out/pc-bios-disk0.vmdk' &&
    qemu-img compare -q -f raw '$work/mini.img' '$out/pc-bios-disk1.vmdk'"

# ---- the OVA -----------------------------------------------------------------------------
ova=$out/pc-bios.ova
is "$(tar tf "$ova" | tr '\n' ' ')" \
    "pc-bios.ovf pc-bios.mf pc-bios-disk0-stream.vmdk pc-bios-disk1-stream.vmdk " \
    "OVA: a tar of .ovf, .mf, then the disks, in that order"
mkdir "$work/x"
ok "OVA unpacks with tar" tar xf "$ova" -C "$work/x"
sed -nE 's/^SHA256\((.*)\)= ([0-9a-f]{64})$/\2  \1/p' "$work/x/pc-bios.mf" >"$work/sums"
is "$(wc -l <"$work/sums")" 3 ".mf: a SHA256(FILE)= line for the .ovf and each disk"
ok "every hash of the .mf checks with sha256sum" bash -c "cd '$work/x' && sha256sum -c --quiet '$work/sums'"
ok "the OVA's .mf is the .mf beside the .ovf" cmp "$work/x/pc-bios.mf" "$out/pc-bios.mf"
ok "OVA disks: streamOptimized (qemu-img info)" bash -c "
    qemu-img info '$work/x/pc-bios-disk0-stream.vmdk' | grep -q 'create type: streamOptimized' &&
    qemu-img info '$work/x/pc-bios-disk1-stream.vmdk' | grep -q 'create type: streamOptimized'"
if command -v vmdkinfo >/dev/null; then
    ok "OVA disks: vmdkinfo says stream optimized" bash -c "
        vmdkinfo '$work/x/pc-bios-disk1-stream.vmdk' | grep -q 'Disk type:.*Stream optimized'"
else
    ok "vmdkinfo not installed # SKIP"
fi
ok "OVA disks equal their sources (qemu-img compare)" bash -c "
    qemu-img compare -q '$work/small.qcow2' '$work/x/pc-bios-disk0-stream.vmdk' &&
    qemu-img compare -q -f raw '$work/mini.img' '$work/x/pc-bios-disk1-stream.vmdk'"
ovf=$work/x/pc-bios.ovf
ok "OVF: well-formed XML (xmllint or python)" python3 -c "import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])" "$ovf"
ok "OVF: References with sizes, DiskSection with capacity and the streamOptimized URI" python3 - "$ovf" "$work/x" <<'EOF'
import os, sys, xml.etree.ElementTree as ET
O = "{http://schemas.dmtf.org/ovf/envelope/1}"
R = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
t = ET.parse(sys.argv[1]).getroot()
files = t.find(O + "References").findall(O + "File")
assert len(files) == 2, files
for f in files:
    assert int(f.get(O + "size")) == os.path.getsize(os.path.join(sys.argv[2], f.get(O + "href")))
disks = t.find(O + "DiskSection").findall(O + "Disk")
assert [int(d.get(O + "capacity")) for d in disks] == [64 << 20, 256 << 20], disks
assert all(d.get(O + "format").endswith("vmdk.html#streamOptimized") for d in disks)
vs = t.find(O + "VirtualSystem")
assert vs.find(O + "OperatingSystemSection") is not None
items = vs.find(O + "VirtualHardwareSection").findall(O + "Item")
types = [i.find(R + "ResourceType").text for i in items]
assert types == ["3", "4", "20", "17", "17", "10", "10"], types
assert items[0].find(R + "VirtualQuantity").text == "3"
assert items[1].find(R + "VirtualQuantity").text == "3072"
macs = [i.find(R + "Address").text for i in items if i.find(R + "ResourceType").text == "10"]
assert macs == ["00:1a:2b:3c:4d:5e", "00:1a:2b:3c:4d:5f"], macs
assert t.find(O + "NetworkSection") is not None
EOF

# ---- UEFI --------------------------------------------------------------------------------
out=$work/uefi
"$srv" vmconfig --facts "$work/uefi.json" --disk "$work/small.qcow2" --out "$out" \
    --outputs libvirt,qemu,vmx >/dev/null 2>"$work/uefi.err"
is "$?" 0 "vmconfig with UEFI facts"
ok "UEFI XML validates and asks for EFI firmware" bash -c "
    virt-xml-validate '$out/pc-uefi.xml' domain && grep -q \"<os firmware='efi'>\" '$out/pc-uefi.xml'"
P2V_QEMU=$work/stub "$out/pc-uefi.sh" >"$work/uargs" 2>&1
ok "UEFI script: OVMF code read-only, a private copy of the variables" bash -c "
    grep -qx 'if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd' '$work/uargs' &&
    grep -qx 'if=pflash,format=raw,unit=1,file=$out/pc-uefi_VARS.fd' '$work/uargs' &&
    cmp -s '$out/pc-uefi_VARS.fd' /usr/share/OVMF/OVMF_VARS_4M.fd"
ok "UEFI .vmx: firmware efi" grep -qx 'firmware = "efi"' "$out/pc-uefi.vmx"

# ---- defaults and overrides ----------------------------------------------------------------
out=$work/plain
"$srv" vmconfig --disk "$work/small.qcow2" --out "$out" --cpus 5 --memory 1536 >"$work/plain.out" 2>&1
is "$?" 0 "no facts: defaults"
ok "no facts: libvirt and qemu only, named vm, one NIC 52:54:00, overrides applied" bash -c "
    [ \"\$(ls '$out' | tr '\n' ' ')\" = 'vm.sh vm.xml ' ] &&
    grep -q \"<mac address='52:54:00:\" '$out/vm.xml' &&
    grep -q \"<vcpu placement='static'>5</vcpu>\" '$out/vm.xml' &&
    grep -q \"<memory unit='MiB'>1536</memory>\" '$out/vm.xml' &&
    virt-xml-validate '$out/vm.xml' domain"

# ---- hostile names -------------------------------------------------------------------------
out=$work/h/out
mkdir -p "$work/h"
hostile=$'../../x\'"<&>$(touch pwned)`touch pwned2`\nname'
(cd "$work/h" && "$srv" vmconfig --name "$hostile" --facts "$work/bios.json" \
    --disk "$work/small.qcow2" --out "$out" --outputs all >/dev/null 2>"$work/h.err")
is "$?" 0 "a hostile --name is accepted (sanitised)"
is "$(cd "$work/h" && find . -mindepth 1 | grep -v '^./out/[^/]*$' | grep -v '^./out$' | wc -l)" 0 \
    "every file stays directly inside --out"
ok "file names: no leading dot, only safe characters" bash -c "
    ls -A '$out' | grep -v '^[A-Za-z0-9_][A-Za-z0-9._-]*\$' | grep . && exit 1 || exit 0"
x=$(ls "$out"/*.xml)
ok "hostile name: the XML still validates, the name escaped in <description>" bash -c "
    virt-xml-validate '$x' domain && grep -q '&lt;&amp;&gt;\$(touch pwned)' '$x'"
s=$(ls "$out"/*.sh)
(cd "$work/h" && P2V_QEMU=$work/stub "$s" >/dev/null 2>&1)
ok "hostile name: the script is valid sh and running it runs nothing" bash -c "
    sh -n '$s' && [ ! -e '$work/h/pwned' ] && [ ! -e '$work/h/pwned2' ] && [ ! -e '$out/pwned' ]"
ok "hostile name: the OVF is well-formed" python3 -c "import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])" "$(ls "$out"/*.ovf)"

# ---- errors write nothing ----------------------------------------------------------------
printf '{"cpus": 0, "nics": []}' >"$work/bad.json"
"$srv" vmconfig --facts "$work/bad.json" --disk "$work/small.qcow2" --out "$work/bad" \
    >/dev/null 2>"$work/bad.err"
is "$?" 1 "bad facts: exit 1"
ok "bad facts: a clear error naming the file and the member" \
    grep -q "'$work/bad.json': facts: \"cpus\" is not a positive integer" "$work/bad.err"
ok "bad facts: nothing written (no output folder)" test ! -e "$work/bad"
printf 'not json' >"$work/bad2.json"
mkdir "$work/bad2"
"$srv" vmconfig --facts "$work/bad2.json" --disk "$work/small.qcow2" --out "$work/bad2" \
    >/dev/null 2>"$work/bad2.err"
ok "facts that are not JSON: exit 1, offset named, the folder left empty" bash -c "
    grep -qF \"'$work/bad2.json': facts: invalid JSON at offset 4\" '$work/bad2.err' &&
    [ -z \"\$(ls -A '$work/bad2')\" ]"
"$srv" vmconfig --disk "$work/missing.img" --out "$work/bad3" >/dev/null 2>"$work/bad3.err"
ok "a missing disk: exit 1, named, nothing written" bash -c "
    [ $? -eq 1 ] && grep -q 'missing.img' '$work/bad3.err' && [ ! -e '$work/bad3' ]"
"$srv" vmconfig --out "$work/bad4" >/dev/null 2>"$work/bad4.err"
is "$?" 2 "no --disk: usage error (exit 2)"
"$srv" vmconfig --disk "$work/small.qcow2" --out "$work/bad5" --outputs libvirt,iso \
    >/dev/null 2>"$work/bad5.err"
ok "an unknown output: exit 2, named" bash -c "[ $? -eq 2 ] && grep -q \"unknown output 'iso'\" '$work/bad5.err'"
