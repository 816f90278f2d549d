#!/bin/bash
# A full store: the server's store is a small tmpfs. A job that does not fit fails with a
# clear reason (agent and job.json), a job captured before is unharmed, and once space is
# freed (the tmpfs grows) the failed job resumes and completes.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (mounts a tmpfs)"
require_tool qemu-img python3
. "$top_srcdir/tests/capture-lib.sh"
plan 9

work=$(tmpdir)
store=$work/store
mkdir -p "$store"
mount -t tmpfs -o size=40M p2vkit-test "$store" || skip_all "cannot mount a tmpfs"
_mounts+=("$store")
store_init "$store"
# a window well under the room left for the big job: it commits some before the store fills
server_start "$store" 0 --window 8M

mkdisk "$work/small.raw" 8 3 0
mkdisk "$work/big.raw" 96 5 0
ok "a small job fits" agent --name small --disk "$work/small.raw"

if agent --name big --disk "$work/big.raw" --retry-time 3 >"$work/big.out" 2>&1; then
    not_ok "the big job failed on a full store"
else
    ok "the big job failed on a full store (exit $?)"
fi
ok "the agent says the store is full" grep -qi "full\|no space" "$work/big.out"
diag "$(grep -i "full\|no space" "$work/big.out" | head -2)"
is "$(job_field "$store" big state)" failed "job.json: state failed"
ok "job.json names the reason" sh -c "grep -qi 'no space\|full' '$store/jobs/big/job.json'"
ok "the earlier job is unharmed" same_image "$work/small.raw" "$store/jobs/small/disk0.qcow2"

mount -o remount,size=400M "$store" || bail "cannot grow the tmpfs"
agent --name big --disk "$work/big.raw" --json >"$work/big.ev" 2>"$work/big.err"
is "$?" 0 "after space is freed the big job completes"
had=$(json_field "$work/big.ev" server-has)
if [ "${had:-0}" -gt 0 ]; then ok "it resumed (the server had $had bytes)"; else
    not_ok "it did not resume"; fi
ok "the big job is identical to its source" same_image "$work/big.raw" "$store/jobs/big/disk0.qcow2"
server_stop
