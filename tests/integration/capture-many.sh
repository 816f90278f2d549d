#!/bin/bash
# Many agents at once: 8 agents capture 8 different disks into one server at the same
# time (8 correct jobs), then 32 agents with small disks at once (the server's promise).
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-img python3
. "$top_srcdir/tests/capture-lib.sh"
plan $((8 * 2 + 2 + 1))

work=$(tmpdir)
store=$work/store
store_init "$store"
server_start "$store"

for i in $(seq 8); do mkdisk "$work/d$i.raw" 48 $((i * 11)) 30; done
pids=()
for i in $(seq 8); do
    agent --name m$i --disk "$work/d$i.raw" >"$work/m$i.out" 2>&1 &
    pids+=($!)
done
for i in $(seq 8); do
    if wait "${pids[$((i - 1))]}"; then ok "agent $i of 8 finished"; else
        not_ok "agent $i of 8 failed"; diag "$(tail -3 "$work/m$i.out")"; fi
    ok "job m$i identical to its source" same_image "$work/d$i.raw" "$store/jobs/m$i/disk0.qcow2"
done

for i in $(seq 32); do mkdisk "$work/s$i.raw" 4 $((i * 7 + 1000)) 10; done
pids=()
for i in $(seq 32); do
    agent --name s$i --disk "$work/s$i.raw" >"$work/s$i.out" 2>&1 &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
is "$failed" 0 "32 agents at once: none failed"
bad=0
for i in $(seq 32); do same_image "$work/s$i.raw" "$store/jobs/s$i/disk0.qcow2" || bad=$((bad + 1)); done
is "$bad" 0 "32 agents at once: every job identical to its source"
server_stop; is "$?" 0 "server stops cleanly on SIGTERM"
