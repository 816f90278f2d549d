#!/bin/bash
# The pipeline's light path (no appliance, no guest: it runs in the sanitizer pass too):
# a small disk (random data, no partition table) captured by p2v-agent into a server run
# with --format qcow2,vmdk,ova,raw,vhd --no-inject goes received → injecting (skipped) →
# configured → verifying → failed(verifying, no-boot-config) at once (nothing to boot),
# and the job's other outputs are there and right: disk0.raw and disk0.vhd with the same
# contents as disk0.qcow2 (qemu-img compare), a .vmx and .ovf with converted VMDKs, an OVA
# whose manifest matches its members; report.json lists them and the verdict; `retry`
# puts the job back to configured, where a server run --until configured leaves it; bad
# --format and --until values are refused; `retry` refuses what it cannot retry.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool python3 qemu-img tar sha256sum
. "$top_srcdir/tests/capture-lib.sh"
work=$(tmpdir)
store=$work/store
plan 17

store_init "$store"
expect_refused() { # DESC PATTERN ARGS...
    local desc=$1 pat=$2 out rc=0; shift 2
    out=$("$SERVER" "$@" 2>&1) || rc=$?
    ok "$desc" bash -c '[ "$1" = 2 ] && grep -q -- "$2" <<<"$3"' _ "$rc" "$pat" "$out"
}
expect_refused "--format with an unknown name: exit 2, named" "unknown format 'qcow3'" \
    run --store "$store" --format qcow2,qcow3
expect_refused "--format naming one twice: exit 2" "named twice" run --store "$store" --format vmdk,ova,vmdk
expect_refused "--until with a state that is not an end: exit 2" "not received, configured or verified" \
    run --store "$store" --until injecting

mkdisk "$work/d.raw" 24 7
server_start "$store" 0 --format qcow2,vmdk,ova,raw,vhd --no-inject --until verified
agent --name outs --disk "$work/d.raw" >"$work/agent.out" 2>&1
is "$?" 0 "agent captured a 24 MiB disk"
job=$store/jobs/outs
for i in $(seq 150); do [ "$(job_field "$store" outs state)" = failed ] && break; sleep 0.2; done
is "$(job_field "$store" outs state)/$(job_field "$store" outs failed-stage)/$(job_field "$store" outs verdict)" \
    failed/verifying/no-boot-config "no partition table: failed(verifying), verdict no-boot-config"
ok "job.json lists the outputs" bash -c \
    'python3 -c "import json,sys; assert json.load(open(sys.argv[1]))[\"outputs\"] == [\"vmdk\", \"raw\", \"vhd\", \"ova\"]" "$1"' \
    _ "$job/job.json"
ok "--no-inject: the injection is recorded as skipped" grep -q '"skipped": true' "$job/inject.json"
for f in raw vhd; do
    q=$f; [ $f = vhd ] && q=vpc
    ok "disk0.$f has the contents of disk0.qcow2 (qemu-img compare)" \
        qemu-img compare -f qcow2 -F "$q" "$job/disk0.qcow2" "$job/disk0.$f"
done
ok "vm/: a .vmx and an .ovf with their VMDKs, and an OVA" bash -c '
    ls "$1"/outs.vmx "$1"/outs.ovf "$1"/outs.ova "$1"/outs-disk0.vmdk >/dev/null' _ "$job/vm"
ok "the .vmx's VMDK has the disk's contents (qemu-img compare)" \
    qemu-img compare -f qcow2 -F vmdk "$job/disk0.qcow2" "$job/vm/outs-disk0.vmdk"
mkdir -p "$work/ova"
tar -xf "$job/vm/outs.ova" -C "$work/ova"
ok "the OVA's manifest matches its members" bash -c '
    cd "$1" && while read -r line; do
        f=$(sed -n "s/^SHA256(\(.*\))= .*/\1/p" <<<"$line"); h=${line##* }
        [ "$(sha256sum <"$f" | cut -d" " -f1)" = "$h" ] || exit 1
    done <outs.mf' _ "$work/ova"
ok "report.json lists the exports and the VM files" bash -c '
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))
assert sorted(e[\"format\"] for e in r[\"exports\"]) == [\"raw\", \"vhd\"], r[\"exports\"]
assert \"vm/outs.ova\" in r[\"vm-configurations\"], r[\"vm-configurations\"]
assert r[\"state\"] == \"failed\" and r[\"verification\"][\"result\"] == \"no-boot-config\"" "$1"' \
    _ "$job/report.json"
server_stop
"$SERVER" retry --store "$store" outs >"$work/retry.out" 2>&1
server_start "$store" 0 --until configured
sleep 1.5
ok "retry: back to configured, where a server run --until configured leaves it" \
    test "$(job_field "$store" outs state)" = configured
server_stop
out=$("$SERVER" retry --store "$store" outs 2>&1); rc=$?
ok "retry of a job that did not fail: refused, says why" bash -c '[ "$1" = 1 ] && grep -q "not failed" <<<"$2"' \
    _ "$rc" "$out"
out=$("$SERVER" retry --store "$store" nope 2>&1); rc=$?
ok "retry of a job that does not exist: refused, named" bash -c '[ "$1" = 1 ] && grep -q "no job .nope." <<<"$2"' \
    _ "$rc" "$out"
out=$("$SERVER" retry --store "$store" ../etc 2>&1); rc=$?
ok "retry with a name that is not a job's: usage error" bash -c '[ "$1" = 2 ] && grep -q "not a job name" <<<"$2"' \
    _ "$rc" "$out"
