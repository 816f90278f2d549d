#!/bin/bash
# The whole path on real parts: p2v-agent captures fixture machines over TLS into
# p2v-server, whose pipeline injects virtio drivers (libguestfs), writes the VM
# configurations, boots each result for a verdict (p2v-vmm: QEMU TCG here) and writes
# report.json. (a) three machines captured at once by three agents (mini-bios twice, under
# two names, and the UEFI machine mini-uefi, whose grub.cfg is on its EFI system partition)
# end "verified", each with its report, with at most --max-inject appliances at a time;
# (b) meanwhile the server is killed while the UEFI job is injecting, and again while it
# is verifying: each time the restarted server
# resumes it at that stage, and nothing is left running; the status page (--http), in
# headless Chromium, shows a verified job's verdict and links; (c) with injection turned off the
# guest cannot find its root: the job ends failed(verifying, root-not-found) with the
# serial log, not verified, and `retry` puts it back to "configured".
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-system-x86_64 qemu-img python3 sha256sum chromium
. "$top_srcdir/tests/capture-lib.sh"
plan 28

mini=$(fixture mini-bios)
uefi=$(fixture mini-uefi)
work=$(tmpdir)
jf() { job_field "$1" "$2" "$3" 2>/dev/null; }
# wait_state STORE JOB SECONDS STATE...: until the job is in one of the states
wait_state() {
    local store=$1 job=$2 secs=$3 i s; shift 3
    for i in $(seq $((secs * 5))); do
        s=$(jf "$store" "$job" state)
        for w in "$@"; do [ "$s" = "$w" ] && return 0; done
        sleep 0.2
    done
    diag "job $job: still '$s' after $secs s (wanted $*)"
    return 1
}
report() { # report STORE JOB PYTHON-EXPR-ON-r
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
        "$1/jobs/$2/report.json" "$3" 2>/dev/null
}

# ---- (a) three machines at once; (b) the server killed while injecting and verifying ----
store=$work/a
store_init "$store"
run_a() { # (a)'s server, with the status page
    server_start "$store" 0 --until verified --max-inject 2 --max-verify 2 \
        --http 127.0.0.1:0 --http-port-file "$work/http.port"
}
run_a
t0=$SECONDS
agent --name alpha --disk "$mini" >"$work/alpha.log" 2>&1 & a1=$!
agent --name beta --disk "$mini" >"$work/beta.log" 2>&1 & a2=$!
agent --name gamma --disk "$uefi" >"$work/gamma.log" 2>&1 & a3=$!
rc=0; for p in $a1 $a2 $a3; do wait $p || rc=$?; done
is "$rc" 0 "three agents at once: every capture finished ($(( SECONDS - t0 )) s)"
# count the appliances running at once (QEMU whose command line names a job's disk: the
# verification boots run on an overlay elsewhere) while the jobs convert; kill the server
# once while gamma injects and once while it verifies
maxinj=0 killed_inj=0 killed_ver=0 restarts=0
while [ $(( SECONDS - t0 )) -lt 900 ]; do
    n=$(pgrep -fc "qemu-system.*$store/jobs/") done=0
    for k in alpha beta gamma; do
        case $(jf "$store" $k state) in verified|failed) done=$((done + 1)) ;; esac
    done
    [ $n -gt $maxinj ] && maxinj=$n
    [ $done -eq 3 ] && break
    g=$(jf "$store" gamma state)
    if [ "$g" = injecting ] && [ $killed_inj = 0 ]; then
        sleep 2; server_kill; killed_inj=$(jf "$store" gamma state)
        run_a; restarts=$((restarts + 1))
    elif [ "$g" = verifying ] && [ $killed_ver = 0 ]; then
        sleep 2; server_kill; killed_ver=$(jf "$store" gamma state)
        run_a; restarts=$((restarts + 1))
    fi
    sleep 0.5
done
diag "converted in $(( SECONDS - t0 )) s; at most $maxinj appliances at once; $restarts restarts"
is "$killed_inj" injecting "(b) killed while gamma was injecting: job.json still says injecting"
is "$killed_ver" verifying "(b) killed while gamma was verifying: job.json still says verifying"
for j in alpha beta gamma; do
    is "$(jf "$store" $j state)/$(jf "$store" $j verdict)" "verified/success" "$j: verified (success)"
    [ "$(jf "$store" $j state)" = verified ] ||
        diag "$(jf "$store" $j failed-stage): $(jf "$store" $j reason)"
done
ok "(b) gamma's job.log: injecting and verifying each started again after a restart" bash -c '
    [ "$(grep -c "state: injecting" "$1")" -ge 2 ] && [ "$(grep -c "state: verifying" "$1")" -ge 2 ]' \
    _ "$store/jobs/gamma/job.log"
ok "never more than --max-inject (2) appliances at once, and some ran (saw $maxinj)" \
    test "$maxinj" -le 2 -a "$maxinj" -ge 1
r=$store/jobs/gamma
ok "gamma: report.json names the verdict, the engine and the serial log" bash -c '
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))
assert r[\"state\"] == \"verified\" and r[\"verdict\"] == \"success\", r[\"state\"]
assert r[\"verification\"][\"engine\"] in (\"qemu-tcg\", \"kvm\"), r[\"verification\"]
assert r[\"serial-log\"] == \"verify/serial.log\"" "$1"' _ "$r/report.json"
ok "gamma: the serial log shows the guest up (its marker), booted from the ESP's grub.cfg" bash -c '
    grep -aq P2VKIT-MINI-UEFI-READY "$1/verify/serial.log" &&
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))
assert \"/EFI/\" in r[\"verification\"][\"boot\"][\"config\"], r[\"verification\"][\"boot\"]" "$1/report.json"' \
    _ "$r"
ok "gamma: report.json lists the injected changes (the ESP's grub.cfg, the initramfs)" bash -c '
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); c=r[\"injection\"][\"changes\"]
assert any(x[\"method\"] == \"generic-append\" for x in c), c
assert any(x.get(\"path\", \"\").endswith(\"EFI/BOOT/grub.cfg\") for x in c), c" "$1"' \
    _ "$r/report.json"
is "$(report "$store" gamma 'r["disks"][0]["sha256"]')" "$(sha256sum <"$r/disk0.qcow2" | cut -d' ' -f1)" \
    "gamma: the disk's SHA-256 in the report is the file's"
ok "gamma: report.json has the facts and the time of each stage" bash -c '
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); s=r[\"stage-seconds\"]
assert r[\"facts\"][\"cpus\"] >= 1, r[\"facts\"]
assert all(k in s for k in (\"writing\", \"injecting\", \"configuring\", \"verifying\")), s" "$1"' \
    _ "$r/report.json"
ok "gamma: the VM configurations were written (libvirt XML, QEMU script)" \
    test -s "$r/vm/gamma.xml" -a -s "$r/vm/gamma.sh"
ok "alpha: root on the virtio disk (the verdict's root device is vda1)" \
    test "$(report "$store" alpha 'r["verification"]["root_device"]')" = vda1
qemu-img check -q "$store/jobs/alpha/disk0.qcow2"
is "$?" 0 "alpha: qemu-img check of the converted disk"
ok "p2v-server status shows the verdicts" bash -c '"$1" status --store "$2" | grep -q "verified"' \
    _ "$SERVER" "$store"
ok "the agent's rerun on a verified job: already received, nothing sent" bash -c '
    "$@" 2>&1 | grep -qi "already"' _ "$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" \
    --token "$TOKEN" --progress none --name alpha --disk "$mini"
# the status page, in headless Chromium: a verified job shows its verdict and its files
HOME=$work timeout 60 chromium --headless --no-sandbox --disable-gpu --user-data-dir="$work/chromium" \
    --virtual-time-budget=2500 --dump-dom "http://127.0.0.1:$(cat "$work/http.port")/" \
    >"$work/dom.html" 2>"$work/chromium.err"
ok "status page (Chromium): alpha's row says verified, verdict success, links its report and serial log" \
    python3 -c '
import re, sys
m = re.search(r"<tr[^>]*id=\"job-alpha\"[^>]*>(.*?)</tr>", open(sys.argv[1]).read(), re.S)
row = m.group(1) if m else ""
assert "verified" in row and "success" in row, row or "no row for job-alpha"
assert "/jobs/alpha/report.json" in row and "/jobs/alpha/serial.log" in row, row' "$work/dom.html"
ok "status page: the report behind the link is alpha's report.json" python3 -c '
import json, sys, urllib.request
r = json.load(urllib.request.urlopen("http://127.0.0.1:%s/jobs/alpha/report.json" % sys.argv[1], timeout=10))
assert r["job"] == "alpha" and r["verdict"] == "success", r["verdict"]' "$(cat "$work/http.port")"
server_stop
is "$?" 0 "the server stops cleanly (SIGTERM)"
ok "(b) no appliance or guest is left running on the jobs' disks" bash -c '! pgrep -f "qemu-system.*$1/jobs/"' _ "$store"

# ---- (c) no injection: the guest cannot boot on virtio ----------------------------------------
store=$work/c
store_init "$store"
server_start "$store" 0 --until verified --no-inject --verify-timeout 120
agent --name omega --disk "$mini" >"$work/omega.log" 2>&1
is "$?" 0 "omega: captured"
wait_state "$store" omega 180 verified failed
is "$(jf "$store" omega state)/$(jf "$store" omega failed-stage)/$(jf "$store" omega verdict)" \
    failed/verifying/root-not-found "no injection: failed(verifying), verdict root-not-found"
ok "the reason quotes the initramfs" bash -c 'grep -q "ALERT\|root" <<<"$1"' _ "$(jf "$store" omega reason)"
ok "the serial log is kept and the report points at it" bash -c \
    'test -s "$1/verify/serial.log" && grep -q "verify/serial.log" "$1/report.json"' _ "$store/jobs/omega"
server_stop
"$SERVER" retry --store "$store" omega >"$work/retry.out" 2>&1
is "$?/$(cat "$work/retry.out")" "0/job omega: back to 'configured'; the server takes it up when it starts" \
    "p2v-server retry (no server running): back to configured"
is "$(jf "$store" omega state)/$(jf "$store" omega failed-stage)" "configured/" \
    "job.json: configured, no failed stage (a server resumes it as after a restart)"
