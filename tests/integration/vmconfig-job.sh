#!/bin/bash
# The server writes each finished job's VM configurations into its vm/ folder: a small raw
# image captured by p2v-agent over 127.0.0.1 (qcow2 job, then a vmdk job), then the job's
# vm/JOB.xml validates with virt-xml-validate and carries the MACs of the agent's facts
# (the NICs that have a driver), its disks are the job's images by absolute path, vm/JOB.sh
# is valid sh referring to them relative to itself, the vmdk job also has a .vmx and an
# .ovf naming its own VMDK (no copy), job.json says received and job.log lists the files.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool virt-xml-validate python3 qemu-img
. "$top_srcdir/tests/capture-lib.sh"
work=$(tmpdir)
store=$work/store
plan 14

store_init "$store"
mkdisk "$work/d.raw" 16 7
server_start "$store"

# expected_macs FACTS: the MACs a VM should keep (NICs with a driver and an Ethernet MAC)
expected_macs() {
    python3 - "$1" <<'EOF'
import json, re, sys
seen = []
for n in json.load(open(sys.argv[1])).get("nics") or []:
    mac, drv = n.get("mac"), n.get("driver", "x")
    if not mac or drv is None or not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", mac):
        continue
    mac = mac.lower()
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00" or mac in seen:
        continue
    seen.append(mac)
print(" ".join(seen[:8]))
EOF
}

agent --name vmjob --disk "$work/d.raw" >"$work/a1.out" 2>&1
is "$?" 0 "agent captured a 16 MiB raw disk (qcow2 job)"
job=$store/jobs/vmjob
is "$(job_field "$store" vmjob state)" received "job.json: received"
ok "vm/ holds the libvirt XML and the QEMU script" test -f "$job/vm/vmjob.xml" -a -x "$job/vm/vmjob.sh"
ok "virt-xml-validate: the job's XML is a valid domain" virt-xml-validate "$job/vm/vmjob.xml" domain
want=$(expected_macs "$job/facts.json")
got=$(sed -n "s/.*<mac address='\([^']*\)'.*/\1/p" "$job/vm/vmjob.xml" | tr '\n' ' ' | sed 's/ $//')
if [ -n "$want" ]; then
    is "$got" "$want" "the XML keeps the MACs of the agent's facts ($want)"
else
    ok "no NIC with a driver in the facts: one generated MAC ($got)" grep -qE '^52:54:00:[0-9a-f:]{8}$' <<<"$got"
fi
ok "the XML's disk is the job's image by absolute path" \
    grep -q "<source file='$(cd "$job" && pwd -P)/disk0.qcow2'/>" "$job/vm/vmjob.xml"
ok "the QEMU script is valid sh and names the image beside its folder" bash -c "
    sh -n '$job/vm/vmjob.sh' && grep -qF \"disk0=\$(qpath \\\"\\\$dir\\\"/../'disk0.qcow2')\" '$job/vm/vmjob.sh'"
ok "job.log lists the files written" grep -q "vm: wrote 'vm/vmjob.xml'" "$job/job.log"

# ---- a vmdk job: .vmx and .ovf name the job's own VMDK -------------------------------------
server_stop
server_start "$store" 0 --format vmdk
agent --name vmdkjob --disk "$work/d.raw" >"$work/a2.out" 2>&1
is "$?" 0 "agent captured the disk again (vmdk job)"
job=$store/jobs/vmdkjob
ok "vm/ of a vmdk job: .xml, .sh, .vmx and .ovf" bash -c "
    [ \"\$(ls '$job/vm' | tr '\n' ' ')\" = 'vmdkjob.ovf vmdkjob.sh vmdkjob.vmx vmdkjob.xml ' ]"
ok "the .vmx names ../disk0.vmdk on SATA" grep -qx 'sata0:0.fileName = "../disk0.vmdk"' "$job/vm/vmdkjob.vmx"
ok "the .ovf refers to ../disk0.vmdk with its size" bash -c "
    grep -q \"ovf:href=\\\"../disk0.vmdk\\\" ovf:size=\\\"\$(stat -c %s '$job/disk0.vmdk')\\\"\" '$job/vm/vmdkjob.ovf'"
ok "the vmdk job's XML validates (driver type vmdk)" bash -c "
    virt-xml-validate '$job/vm/vmdkjob.xml' domain && grep -q \"type='vmdk'\" '$job/vm/vmdkjob.xml'"
ok "the captured image is intact (qemu-img compare with the source)" \
    qemu-img compare -q -f raw "$work/d.raw" "$job/disk0.vmdk"
server_stop
