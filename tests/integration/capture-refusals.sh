#!/bin/bash
# p2v-server against misbehaving clients (tests/tools/p2v-rogue, one way to break the
# protocol per case): each is refused the expected way (the right ERROR code, or a failed
# TLS handshake), the server's log names the reason, the server keeps serving, nothing
# is written outside STORE/jobs/ and no job folder is made for a refused HELLO. A proper
# p2v-agent run, with rogues refused beside it, then receives a disk image that qemu-img
# finds identical to its source.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-img
server=$(p2v_bin p2v-server)
rogue=$top_builddir/tests/tools/p2v-rogue
[ -x "$rogue" ] || bail "tests/tools/p2v-rogue is not built (make check builds it)"
agent=""
for c in "$top_builddir/p2v-agent/p2v-agent" "$top_builddir/p2v-agent"; do
    if [ -f "$c" ] && [ -x "$c" ]; then agent=$c; break; fi
done

# case|expected result (ERE on the rogue's "result:" line)|--name or empty|job folder made
cases=(
    "plaintext|^result: handshake failed||"
    "tls12|^result: handshake failed||"
    "wrong-fingerprint|^result: handshake failed: .*fingerprint||"
    "wrong-token|^result: error AUTH: ||"
    "bad-name|^result: error NAME: |../../etc|"
    "bad-name|^result: error NAME: |a/b|"
    "bad-name|^result: error NAME: |..|"
    "bad-name|^result: error NAME: |.hidden|"
    "bad-name|^result: error NAME: |-dash|"
    "bad-version|^result: error VERSION: ||"
    "garbage-frame|^result: error PROTO: ||"
    "oversized-frame|^result: error PROTO: ||rogue-oversized-frame"
    "undeclared-disk|^result: error DISK: ||rogue-undeclared-disk"
    "past-end|^result: error DISK: ||rogue-past-end"
    "bad-hash|^result: error HASH: ||rogue-bad-hash"
    "zstd-bomb|^result: error PROTO: ||rogue-zstd-bomb"
    "second-hello|^result: error PROTO: ||rogue-second-hello"
    "done-early|^result: error PROTO: ||rogue-done-early"
)
plan $(( ${#cases[@]} * 6 + 6 ))

# $top holds the store and nothing else, so that a write beside the store shows (a name
# like ../../etc would land in $top); the test's own files live in $work.
top=$(tmpdir)
store=$top/store
work=$(tmpdir)
pids=()
stop_all() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    pids=()
}
trap 'stop_all; _tap_exit' EXIT

"$server" init --store "$store" >"$work/init.out" 2>&1 || bail "p2v-server init failed: $(cat "$work/init.out")"
fp=$(sed -n 's/^fingerprint: *//p' "$work/init.out" | head -1)
token=$(sed -n 's/^token: *//p' "$work/init.out" | head -1)
[ -n "$fp" ] && [ -n "$token" ] || bail "no fingerprint or token in: $(cat "$work/init.out")"

"$server" run --store "$store" --listen 127.0.0.1:0 --port-file "$work/port" -v --until received \
    >"$work/server.out" 2>&1 &
spid=$!
pids+=($spid)
for i in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || bail "p2v-server did not write its port file: $(tail -5 "$work/server.out")"
port=$(cat "$work/port")
addr=127.0.0.1:$port

# The source disk for the final proper run: 4 MiB of data and holes.
src=$work/src.raw
truncate -s 4M "$src"
for off in 0 65536 1048576 3149824; do
    head -c 40000 /dev/urandom | dd of="$src" bs=40000 seek="$off" oflag=seek_bytes conv=notrunc status=none
done

server_log() { cat "$store/server.log" "$work/server.out" 2>/dev/null; }
snapshot() { (cd "$store" && find . | LC_ALL=C sort); }
# job folders a rogue may make: only the names of cases that reach WELCOME
allowed_jobs=" "
for c in "${cases[@]}"; do
    IFS='|' read -r _ _ _ job <<<"$c"
    [ -n "$job" ] && allowed_jobs+="$job "
done
allowed_jobs+="good "
outside_before=$(ls -A "$top" | LC_ALL=C sort)

n=0
for c in "${cases[@]}"; do
    IFS='|' read -r cname want name job <<<"$c"
    n=$((n + 1))
    label="$cname${name:+ ($name)}"
    before=$(snapshot)
    logn=$(server_log | wc -l)
    args=(--server "$addr" --fingerprint "$fp" --token "$token" --case "$cname" --timeout 20)
    [ -n "$name" ] && args+=(--name "$name")
    out=$("$rogue" "${args[@]}" 2>"$work/rogue-$n.err"); rc=$?
    res=$(grep '^result:' <<<"$out")
    if [ $rc -eq 0 ] && grep -Eq -- "$want" <<<"$res"; then
        ok "$label: refused as expected ($res)"
    else
        not_ok "$label: rogue exit $rc, $res"
        diag "$(cat "$work/rogue-$n.err")"
    fi

    # the reason in the server's log: the ERROR text sent, or the failed handshake
    text=$(sed -n 's/^result: error [A-Z]*: //p' <<<"$res")
    if [ -n "$text" ]; then
        frag=${text:0:40}
    else
        frag="handshake failed"
    fi
    found=""
    for i in $(seq 20); do
        newlog=$(server_log | tail -n +$((logn + 1)))
        if grep -Fqi -- "$frag" <<<"$newlog"; then found=1; break; fi
        sleep 0.1
    done
    if [ -n "$found" ]; then
        ok "$label: the server's log names the reason ('$frag')"
    else
        not_ok "$label: the server's log does not name '$frag'"
        diag "new log lines: $newlog"
    fi

    ok "$label: the server still runs and answers status" \
        bash -c "kill -0 $spid && '$server' status --store '$store' >/dev/null"

    # nothing written outside the store's job folders of allowed names
    after=$(snapshot)
    bad=$(comm -13 <(echo "$before") <(echo "$after") | grep -v '^\./server\.log$' |
        while read -r p; do
            rel=${p#./}
            first=${rel#jobs/}; first=${first%%/*}
            if [ "$rel" = jobs ] || { [[ $rel == jobs/* ]] && [[ $allowed_jobs == *" $first "* ]]; }; then
                continue
            fi
            echo "$rel"
        done)
    if [ -z "$bad" ]; then
        ok "$label: nothing new in the store outside allowed job folders"
    else
        not_ok "$label: unexpected paths in the store"
        diag "$bad"
    fi
    outside=$(ls -A "$top" | LC_ALL=C sort)
    strays=$(find "$top" \( -name etc -o -name .hidden -o -name b -o -name -dash \) -print)
    if [ "$outside" = "$outside_before" ] && [ -z "$strays" ]; then
        ok "$label: nothing written outside the store, no file named like a bad name"
    else
        not_ok "$label: something was written outside the store"
        diag "before: $outside_before"
        diag "after: $outside"
        diag "strays: $strays"
    fi

    if [ -n "$job" ]; then
        marker="p2v-rogue $cname payload"
        if [ -d "$store/jobs/$job" ] && ! grep -rqF -- "$marker" "$store"; then
            ok "$label: its job folder exists and holds none of the refused bytes"
        else
            not_ok "$label: job folder missing or refused DATA bytes written"
            diag "$(ls -la "$store/jobs/$job" 2>&1; grep -rlF -- "$marker" "$store")"
        fi
    else
        jobs_now=$(ls -A "$store/jobs" 2>/dev/null | tr '\n' ' ')
        unexpected=""
        for j in $jobs_now; do
            [[ $allowed_jobs == *" $j "* ]] || unexpected+="$j "
        done
        if [ -z "$unexpected" ] && [ ! -e "$store/jobs/rogue-$cname" ]; then
            ok "$label: no job folder made"
        else
            not_ok "$label: job folders made for a refused client: $unexpected"
        fi
    fi
done

# ---- a proper run while rogues are refused beside it
if [ -z "$agent" ]; then
    for i in 1 2 3 4 5; do ok "proper run $i # SKIP p2v-agent is not built"; done
    diag "p2v-agent is not built: the proper-run assertions were skipped"
else
    "$agent" --server "$addr" --fingerprint "$fp" --token "$token" --disk "$src" \
        --name good --progress none --json >"$work/agent.out" 2>"$work/agent.err" &
    apid=$!
    pids+=($apid)
    rpids=()
    for cname in wrong-token garbage-frame bad-hash plaintext; do
        "$rogue" --server "$addr" --fingerprint "$fp" --token "$token" --case "$cname" \
            --name "rogue-$cname" >"$work/side-$cname.out" 2>&1 &
        rpids+=($!)
    done
    rfail=0
    for p in "${rpids[@]}"; do wait "$p" || rfail=$((rfail + 1)); done
    ok "rogues beside the proper run were all refused" test "$rfail" = 0 ||
        diag "$(cat "$work"/side-*.out)"
    wait "$apid"; arc=$?
    pids=("$spid")
    if [ $arc -eq 0 ]; then
        ok "p2v-agent completes its job beside the rogues"
    else
        not_ok "p2v-agent exit $arc"
        diag "$(tail -20 "$work/agent.err")"
    fi
    img=$(ls "$store"/jobs/good/disk0.* 2>/dev/null | grep -v -e '\.journal$' -e '\.part$' | head -1)
    ok "the received image is identical to the source (qemu-img compare)" \
        qemu-img compare -q "$src" "${img:-$store/jobs/good/disk0.qcow2}"
    ok "the job is reported received" grep -q '"received"' "$store/jobs/good/job.json"
    ok "nothing beside the store, no stray paths" \
        test "$(ls -A "$top")" = store -a -z "$(find "$top" -name etc -o -name .hidden)"
fi

kill -TERM "$spid"
wait "$spid"; src_rc=$?
pids=()
is "$src_rc" 0 "p2v-server exits 0 on SIGTERM"
