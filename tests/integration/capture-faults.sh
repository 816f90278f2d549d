#!/bin/bash
# Faults during a capture, each at P2V_FAULT_POINTS (default 10) random points: SIGKILL
# the agent (then run it again), SIGKILL the server (then start it again; the same agent
# reconnects), and cut the TCP link through a fault proxy (the agent reconnects). Every
# time the job resumes (the server says it has part of the disk), the result is identical
# to the source, and the bytes sent again stay within one journal window (the figure is
# printed). The first run of each capture is paced with --max-rate so that the random
# points fall inside the transfer on any machine.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool qemu-img python3
. "$top_srcdir/tests/capture-lib.sh"
PROXY=$(p2v_bin faultproxy) || bail "tests/tools/faultproxy is not built (make check builds it)"

points=${P2V_FAULT_POINTS:-10}
window_mib=8
plan $((3 * points * 3 + 2))

work=$(tmpdir)
store=$work/store
store_init "$store"
port=$(free_port)
server_start "$store" "$port" --window ${window_mib}M
src=$work/src.raw
mkdisk "$src" 64 7 20
window=$((window_mib << 20))
rate=6M

# one clean paced run: how long does a capture take (kill points are spread over it)?
t0=$(date +%s%N)
agent --name calib --disk "$src" --max-rate $rate --json >"$work/calib.ev" 2>&1 ||
    bail "a clean capture failed"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
# the data bytes a whole capture sends (non-zero chunks)
planned=$(job_field "$store" calib bytes-received)
diag "a clean capture takes ${ms} ms and sends $planned data bytes; window $window bytes"

# a random point of a paced capture: once the server has committed something of job $1
# (job.json, rewritten every second), a further random 0-30 % of a capture's time
rand_delay() { awk -v m="$ms" -v s="$RANDOM$2" 'BEGIN {srand(s); printf "%.3f", rand() * 0.3 * m / 1000}'; }
wait_started() {
    local i
    for i in $(seq 300); do
        [ -s "$store/jobs/$1/job.json" ] && [ "$(job_field "$store" "$1" bytes-done 2>/dev/null)" != 0 ] &&
            [ -n "$(job_field "$store" "$1" bytes-done 2>/dev/null)" ] && return 0
        sleep 0.1
    done
    return 1
}
# server_had EVENTS: the bytes the server said it had at the resume (0: no resume)
server_had() {
    python3 - "$1" <<'EOF2'
import json, sys
n = 0
for line in open(sys.argv[1], errors="replace"):
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if o.get("event") == "resume":
        n = max(n, int(o.get("server-has", 0)))
print(n)
EOF2
}

# check NAME EVENTS RESENT: resumed, identical, resent <= window
check() {
    local name=$1 ev=$2 resent=$3
    local had
    had=$(server_had "$ev")
    if [ "$had" -gt 0 ]; then
        ok "$name: resumed (the server had $had bytes of the disk committed)"
        resumed=$((resumed + 1))
    elif [ "$resent" -eq 0 ]; then
        # nothing resumed and nothing sent twice: the fault fell after the last data byte
        # was committed (a loaded machine can be that late), so there was nothing to lose
        ok "$name: the fault fell after every byte was committed: no resume needed, nothing sent again"
        late=$((late + 1))
    else
        not_ok "$name: did not resume (the server had nothing) and sent $resent bytes again"
        diag "$(tail -5 "$ev")"
    fi
    ok "$name: result identical to the source" same_image "$src" "$store/jobs/$name/disk0.qcow2"
    if [ "$resent" -le "$window" ]; then
        ok "$name: sent again after the resume: $resent bytes <= one window ($window)"
    else
        not_ok "$name: sent again $resent bytes > one window ($window)"
    fi
}

max_resent=0 resumed=0 late=0
note() { [ "$1" -gt "$max_resent" ] && max_resent=$1; }

# The three kinds run at the same time (the paced transfers mostly wait), each against a
# server of its own: kind 1 on the first store's server, kinds 2 and 3 on their own
# stores. Each writes NAME RESENT lines to $work/KIND.results; the checks come after, in
# order.
store_for() { case $1 in ka*) echo "$main_store" ;; ks*) echo "$work/store-ks" ;; kl*) echo "$work/store-kl" ;; esac; }
main_store=$store
clone_store() { # a second store with the same identity and token (the agent's FP/TOKEN)
    mkdir -p "$1/jobs" && cp -p "$main_store/server.key" "$main_store/server.crt" \
        "$main_store/token" "$1/" && chmod 700 "$1"
}

# 1. SIGKILL the agent, run it again
kind_agent() {
    for k in $(seq "$points"); do
        name=ka$k
        d=$(rand_delay $name $k)
        # the program itself in the background (not the agent() function: its subshell
        # would take the SIGKILL and leave the agent running)
        "$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" --token "$TOKEN" --progress none \
            --name $name --disk "$src" --max-rate $rate >/dev/null 2>&1 &
        pid=$!
        wait_started $name || echo "$name: the server committed nothing within 30 s" >>"$work/ka.diag"
        sleep "$d"; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
        agent --name $name --disk "$src" --json >"$work/$name.ev" 2>"$work/$name.err" ||
            echo "$name: rerun failed: $(tail -2 "$work/$name.err")" >>"$work/ka.diag"
        # every data byte the server received for this job, over both runs, minus one copy
        echo "$name $(( $(job_field "$store" $name bytes-received) - planned ))" >>"$work/ka.results"
    done
}

# 2. SIGKILL the server, start it again on the same port; the agent reconnects
kind_server() {
    local store=$work/store-ks port
    clone_store "$store"
    port=$(free_port)
    server_start "$store" "$port" --window ${window_mib}M
    for k in $(seq "$points"); do
        name=ks$k
        d=$(rand_delay $name $((k + 100)))
        agent --name $name --disk "$src" --max-rate $rate --json >"$work/$name.ev" 2>"$work/$name.err" &
        pid=$!
        wait_started $name || echo "$name: the server committed nothing within 30 s" >>"$work/ks.diag"
        sleep "$d"; server_kill
        server_start "$store" "$port" --window ${window_mib}M
        wait $pid || echo "$name: agent failed: $(tail -2 "$work/$name.err")" >>"$work/ks.diag"
        # the agent's own count: data bytes sent over all its sessions, minus one copy
        echo "$name $(( $(json_field "$work/$name.ev" bytes-sent) - planned ))" >>"$work/ks.results"
    done
    server_stop
}

# 3. cut the TCP link through a fault proxy at a random byte count; the agent reconnects
kind_link() {
    local store=$work/store-kl port
    clone_store "$store"
    server_start "$store" 0 --window ${window_mib}M
    port=$PORT
    total_wire=$(json_field "$work/calib.ev" wire-bytes)   # TLS bytes of a whole capture
    for k in $(seq "$points"); do
        name=kl$k
        cut=$(awk -v t="$total_wire" -v s="$RANDOM$k" 'BEGIN {srand(s); printf "%d", (0.15 + rand() * 0.7) * t}')
        rm -f "$work/proxy.port"
        "$PROXY" --listen 127.0.0.1:0 --to "127.0.0.1:$port" --port-file "$work/proxy.port" \
            --cut-after "$cut" 2>"$work/proxy-$k.log" &
        ppid=$!
        for i in $(seq 50); do [ -s "$work/proxy.port" ] && break; sleep 0.1; done
        "$AGENT" --server "127.0.0.1:$(cat "$work/proxy.port")" --fingerprint "$FP" --token "$TOKEN" \
            --progress none --name $name --disk "$src" --max-rate $rate --json \
            >"$work/$name.ev" 2>"$work/$name.err" ||
            echo "$name: agent failed: $(tail -2 "$work/$name.err")" >>"$work/kl.diag"
        kill $ppid 2>/dev/null; wait $ppid 2>/dev/null
        echo "$name $(( $(json_field "$work/$name.ev" bytes-sent) - planned ))" >>"$work/kl.results"
    done
    server_stop
}

t0=$SECONDS
kind_agent & p1=$!
kind_server & p2=$!
kind_link & p3=$!
wait $p1 $p2 $p3
diag "the three kinds took $(( SECONDS - t0 )) s together"
for kind in ka ks kl; do
    [ -s "$work/$kind.diag" ] && diag "$(cat "$work/$kind.diag")"
    while read -r name resent; do
        [ "$resent" -lt 0 ] && resent=0
        note "$resent"
        store=$(store_for "$name") check "$name" "$work/$name.ev" "$resent"
    done <"$work/$kind.results"
done
store=$(store_for ka)

diag "largest amount sent again after one interruption: $max_resent bytes (window $window)"
# most faults must fall inside the transfer, or the resume path went untested
if [ "$resumed" -ge $((3 * points / 2)) ]; then
    ok "$resumed of $((3 * points)) faults fell inside the transfer and resumed ($late after it)"
else
    not_ok "only $resumed of $((3 * points)) faults resumed ($late fell after the transfer)"
fi
server_stop; is "$?" 0 "server stops cleanly on SIGTERM"
