#!/bin/bash
# tests/kvm/nest, the nested-KVM harness: a command inside sees /dev/kvm (a character
# device) and its output comes back; its exit status comes back (7); a file it writes into a
# --rw folder shows up here; an environment variable named in P2V_NEST_ENV is exported into
# it; --timeout ends a command that hangs with 124 in about that time; --stall ends a nested
# machine that stops as a whole (its QEMU stopped with SIGSTOP here) with 124 soon after.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-system-x86_64 cpio gzip timeout
[ "$(id -u)" = 0 ] || skip_all "needs root (9p shares of the whole file system)"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip_all "no kernel under /boot"
nest=$top_srcdir/tests/kvm/nest
work=$(tmpdir)
t0=$SECONDS
plan 9

out=$(cd "$work" && "$nest" -- sh -c 'test -c /dev/kvm && echo KVM-OK' 2>"$work/err1")
rc=$?
is "$rc" 0 "nest: /dev/kvm is a character device inside, exit 0"
is "$out" KVM-OK "nest: the command's output comes back, without console noise"
[ "$rc" = 0 ] || diag "$(tail -n 15 "$work/err1")"

(cd "$work" && "$nest" -- sh -c 'exit 7') >/dev/null 2>&1
is "$?" 7 "nest: the command's exit status comes back"

mkdir "$work/rw"
(cd / && "$nest" --rw "$work/rw" -- sh -c "echo written-inside >'$work/rw/f' && echo err >&2") \
    >"$work/out3" 2>&1
is "$?" 0 "nest --rw: the command writing into the share succeeded"
is "$(cat "$work/rw/f" 2>/dev/null)" written-inside "nest --rw: the file written inside is here"
is "$(cat "$work/out3")" err "nest: stderr comes back too"

out=$(cd "$work" && NEST_SELFTEST_VAR='a b$c' P2V_NEST_ENV=NEST_SELFTEST_VAR "$nest" -- \
      sh -c 'printf "%s" "$NEST_SELFTEST_VAR"' 2>/dev/null)
is "$out" 'a b$c' "nest: variables named in P2V_NEST_ENV are exported"

s=$SECONDS
(cd "$work" && "$nest" --timeout 20 -- sleep 1000) >/dev/null 2>&1
rc=$? d=$((SECONDS - s))
is "$rc:$([ "$d" -le 25 ] && echo fast || echo "slow ($d s)")" "124:fast" "nest --timeout 20: 124 within 25 s"

# a nested machine that stops as a whole: its QEMU (the one whose pid file is in a job
# folder of this run's) stopped once the command runs
s=$SECONDS
(cd "$work" && "$nest" --stall 20 --timeout 300 -- sh -c "touch '$work/rw/running'; sleep 1000") \
    >/dev/null 2>"$work/err5" &
npid=$!
for _ in $(seq 120); do [ -e "$work/rw/running" ] && break; sleep 0.5; done
qpid=$(pgrep -f -n "^qemu-system-x86_64 -accel tcg -cpu max .*-virtfs local,path=$work")
[ -n "$qpid" ] && kill -STOP "$qpid"
wait "$npid"
rc=$? d=$((SECONDS - s))
is "$rc:$([ "$d" -le 90 ] && echo soon || echo "late ($d s)"):$(grep -c 'no line of life' "$work/err5")" \
    "124:soon:1" "nest --stall 20: a stopped nested machine ends with 124, said so, within 90 s"
diag "kvm-nest-selftest: $((SECONDS - t0)) s in all"
