#!/bin/bash
# A batch (a wave of machines): `p2v-server batch add MANIFEST` checks the whole manifest
# (a bad line is named and nothing is written), gives each machine its own join token
# (kept when the manifest is added again); an agent with a machine's token may send that
# machine only; the machine's job takes the manifest's formats and memory / CPU
# overrides (its VM configurations and its other outputs show them); `batch status` shows
# the wave. The server runs --no-inject --until configured: no appliance, no guest (this
# test runs in the sanitizer pass too).
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool python3 qemu-img
. "$top_srcdir/tests/capture-lib.sh"
work=$(tmpdir)
store=$work/store
plan 18

store_init "$store"
cat >"$work/wave.txt" <<'EOF'
# wave 1: the web tier
web01   format=qcow2,ova memory=768 cpus=1
db01    format=vmdk      # a VMware target
spare
EOF
refused() { # DESC MANIFEST-TEXT PATTERN
    printf '%s\n' "$2" >"$work/bad.txt"
    local out rc=0
    out=$("$SERVER" batch add --store "$store" "$work/bad.txt" 2>&1) || rc=$?
    ok "$1" bash -c '[ "$1" = 1 ] && grep -q -- "$2" <<<"$3"' _ "$rc" "$3" "$out"
}
refused "a manifest with an unknown option: refused, the line named" $'web01\nweb02 disk=2' "line 2: unknown option 'disk'"
refused "a machine listed twice: refused" $'web01\nweb01 cpus=2' "line 2: machine 'web01' is listed twice"
refused "a name with a slash: refused" '../etc format=raw' "line 1: machine name"
refused "an unknown format: refused" 'web01 format=qcow2,iso' "unknown format 'iso'"
refused "memory out of range: refused" 'web01 memory=12' "memory '12' is not a number"
refused "an empty manifest: refused" '# nothing' "no machine listed"
ok "nothing was written by the refused manifests" test ! -e "$store/batch"

"$SERVER" batch add --store "$store" --json "$work/wave.txt" >"$work/add.json" 2>"$work/add.err"
is "$?" 0 "batch add: exit 0"
tok() { python3 -c 'import json,sys; print({m["name"]: m["token"] for m in json.load(open(sys.argv[1]))["machines"]}[sys.argv[2]])' "$work/add.json" "$1"; }
ok "three machines, each its own 64-hex-digit token, the store's token among none" bash -c '
    python3 -c "import json,re,sys; m=json.load(open(sys.argv[1]))[\"machines\"]; t=[x[\"token\"] for x in m]
assert [x[\"name\"] for x in m] == [\"web01\", \"db01\", \"spare\"], m
assert all(re.fullmatch(\"[0-9a-f]{64}\", x) for x in t) and len(set(t)) == 3 and sys.argv[2] not in t" "$1" "$2"' \
    _ "$work/add.json" "$TOKEN"
ok "batch/web01.json is readable by its owner only" test "$(stat -c %a "$store/batch/web01.json")" = 600
"$SERVER" batch add --store "$store" --json "$work/wave.txt" >"$work/add2.json" 2>&1
is "$(python3 -c 'import json,sys; print([m["token"] for m in json.load(open(sys.argv[1]))["machines"]])' "$work/add2.json")" \
   "$(python3 -c 'import json,sys; print([m["token"] for m in json.load(open(sys.argv[1]))["machines"]])' "$work/add.json")" \
   "added again: every machine keeps its token"

mkdisk "$work/d.raw" 16 7
server_start "$store" 0 --no-inject --until configured
run_agent() { # NAME TOKEN
    "$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" --token "$2" --progress none \
        --name "$1" --disk "$work/d.raw" >"$work/$1.out" 2>&1
}
run_agent db01 "$(tok web01)"
ok "web01's token presented for db01: refused (wrong join token), no job" bash -c \
    'grep -qi "token" "$1" && [ ! -e "$2/jobs/db01" ]' _ "$work/db01.out" "$store"
run_agent web01 "$(tok web01)"
is "$?" 0 "web01 with its own token: captured"
run_agent db01 "$(tok db01)"
is "$?" 0 "db01 with its own token: captured"
for i in $(seq 100); do
    [ "$(job_field "$store" web01 state)$(job_field "$store" db01 state)" = configuredconfigured ] && break
    sleep 0.2
done
is "$(job_field "$store" web01 format)/$(job_field "$store" web01 memory-mib)/$(job_field "$store" web01 cpus)" \
    "qcow2/768/1" "web01's job: qcow2, memory 768 MiB, 1 CPU from the manifest"
ok "web01's VM: 768 MiB and 1 vCPU in the libvirt XML, and its OVA" bash -c '
    grep -q "<memory unit=.MiB.>768</memory>" "$1/vm/web01.xml" && grep -q "<vcpu[^>]*>1</vcpu>" "$1/vm/web01.xml" &&
    test -s "$1/vm/web01.ova"' _ "$store/jobs/web01"
ok "db01's job is received as VMDK (the manifest's format)" \
    qemu-img compare -f raw -F vmdk "$work/d.raw" "$store/jobs/db01/disk0.vmdk"
"$SERVER" batch status --store "$store" --json >"$work/status.json" 2>&1
ok "batch status: web01 and db01 configured, spare waiting" bash -c '
    python3 -c "import json,sys; s=json.load(open(sys.argv[1])); m={x[\"name\"]: x[\"state\"] for x in s[\"machines\"]}
assert m == {\"web01\": \"configured\", \"db01\": \"configured\", \"spare\": \"waiting\"}, m
assert s[\"counts\"] == {\"configured\": 2, \"waiting\": 1}, s[\"counts\"]" "$1"' _ "$work/status.json"
server_stop
