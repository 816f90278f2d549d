#!/bin/bash
# SIGKILL during p2v-img convert at random points: the destination never claims to be
# complete. Either the convert finished (exit 0) and the output is identical to the
# source, or DST does not exist, and the half-written image in the staging folder is not
# accepted as complete by our reader nor called clean by qemu-img check.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-img
img=$(p2v_bin p2v-img)
work=$(tmpdir)
kills=${P2V_KILL_POINTS:-10}
formats=(qcow2 "vmdk -o subformat=streamOptimized" "vmdk -o subformat=monolithicSparse" raw)
plan $(( ${#formats[@]} * (kills + 1) ))

src=$work/src.raw
python3 "$top_srcdir/tests/bench/mkmixed.py" $((192 << 20)) "$src"

for fmt in "${formats[@]}"; do
    set -- $fmt; base=$1
    # how long does one convert take? kill points are spread over it
    t0=$(date +%s%N)
    $img convert -O $fmt "$src" "$work/full.$base" || bail "convert to $fmt failed"
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    rm -rf "$work/full.$base"
    complete=0 killed=0 bad=0
    for k in $(seq "$kills"); do
        dst=$work/out-$k.$base
        delay=$(awk -v m="$ms" -v s="$RANDOM" 'BEGIN {srand(s); printf "%.3f", rand() * m * 0.8 / 1000}')
        $img convert -O $fmt "$src" "$dst" 2>/dev/null &
        pid=$!
        sleep "$delay"
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null; rc=$?
        staged=$(ls -d "$work"/.out-$k.$base.p2v-img-* 2>/dev/null | head -1)
        # DST appears only by the final rename, so if it exists it must be whole — also
        # when the kill came after the rename but before the process exited (an ASan
        # build spends a while in its exit-time leak check).
        if [ $rc -eq 0 ] || [ -e "$dst" ]; then
            complete=$((complete + 1))
            if qemu-img compare -q "$src" "$dst"; then
                ok "$fmt kill $k: DST complete (exit $rc), output identical"
            else
                not_ok "$fmt kill $k (after ${delay}s, exit $rc): DST exists but differs"; bad=1
            fi
        else
            killed=$((killed + 1))
            why=""
            if [ -n "$staged" ] && [ "$base" != raw ]; then
                part=$staged/out-$k.$base
                if [ -s "$part" ] && $img convert -O raw "$part" "$work/x.raw" 2>/dev/null &&
                   ! qemu-img compare -q "$src" "$work/x.raw" 2>/dev/null; then
                    why="our reader accepted the half-written image"
                fi
                rm -f "$work/x.raw"
            fi
            if [ -z "$why" ]; then
                ok "$fmt kill $k (after ${delay}s): no DST, staged image not taken as complete"
            else
                not_ok "$fmt kill $k: $why"; bad=1
            fi
        fi
        rm -rf "$dst" "$work"/.out-$k.* "$work"/out-$k*
    done
    ok "$fmt: $killed killed mid-way, $complete finished first (convert takes ${ms} ms)" test "$killed" -gt 0 -a "$bad" = 0
done
