#!/bin/bash
# faultproxy, the connection cutter the resume tests rely on: data relayed through it
# arrives intact, a connection with a cut delivers exactly the listed number of bytes
# client->server and then ends with a reset, connections past the list relay everything
# (both directions, half close passed on), random cuts are reproducible from the seed,
# --max-conns makes it exit by itself, SIGTERM stops it. The peers are a small Python
# echo server and client.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool python3
proxy=$top_builddir/tests/tools/faultproxy
[ -x "$proxy" ] || bail "tests/tools/faultproxy is not built (make check builds it)"
work=$(tmpdir)
plan 21

pids=()
cleanup_pids() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
}
trap 'cleanup_pids; _tap_exit' EXIT

# Echo server: one thread per connection; logs "ID BYTES eof|reset intact|corrupt" when
# a connection ends. Byte i of a stream is i % 251, so a reordered or altered stream
# shows as corrupt.
cat >"$work/echo.py" <<'EOF'
import socket, sys, threading
lock = threading.Lock()
log = open(sys.argv[2], "a", buffering=1)
s = socket.socket()
s.bind(("127.0.0.1", 0)); s.listen(16)
open(sys.argv[1] + ".tmp", "w").write("%d\n" % s.getsockname()[1])
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
def serve(c, n):
    # after a reset, recv() still returns what had arrived before it, then fails
    got, intact, end, echo = 0, True, "eof", True
    try:
        while True:
            b = c.recv(65536)
            if not b: break
            if any(x != (got + i) % 251 for i, x in enumerate(b)): intact = False
            got += len(b)
            try:
                if echo: c.sendall(b)
            except OSError:
                echo = False
        c.shutdown(socket.SHUT_WR)
    except OSError:
        end = "reset"
    c.close()
    with lock: log.write("%d %d %s %s\n" % (n, got, end, "intact" if intact else "corrupt"))
n = 0
while True:
    c, _ = s.accept(); n += 1
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
EOF
# Client: sends N pattern bytes, half-closes, reads the echo; prints "SENT ECHOED eof|reset
# intact|corrupt" (a reader thread keeps both directions moving).
cat >"$work/client.py" <<'EOF'
import socket, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
c = socket.create_connection(("127.0.0.1", port))
res = {"got": 0, "end": "eof", "intact": True}
def reader():
    try:
        while True:
            b = c.recv(65536)
            if not b: break
            if any(x != (res["got"] + i) % 251 for i, x in enumerate(b)): res["intact"] = False
            res["got"] += len(b)
    except OSError:
        res["end"] = "reset"
t = threading.Thread(target=reader); t.start()
data = bytes(i % 251 for i in range(n))
sent = 0
try:
    while sent < n:
        sent += c.send(data[sent:sent + 65536])
    c.shutdown(socket.SHUT_WR)
except OSError:
    res["end"] = "reset"
t.join(20)
print(sent, res["got"], res["end"], "intact" if res["intact"] else "corrupt")
EOF

wait_file() { # FILE: wait up to 10 s for it to exist
    local i
    for i in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done
    return 1
}
wait_lines() { # FILE N: wait up to 10 s for N lines
    local i
    for i in $(seq 100); do [ "$(wc -l <"$1" 2>/dev/null || echo 0)" -ge "$2" ] && return 0; sleep 0.1; done
    return 1
}
server_line() { sed -n "${2}p" "$1"; }

python3 "$work/echo.py" "$work/echo.port" "$work/echo.log" &
pids+=($!)
wait_file "$work/echo.port" || bail "the echo server did not start"
eport=$(cat "$work/echo.port")

# ---- listed cuts
"$proxy" --listen 127.0.0.1:0 --to "127.0.0.1:$eport" --port-file "$work/p1.port" \
    --cut-after 100000,4096 2>"$work/p1.log" &
ppid=$!
pids+=($ppid)
ok "the proxy writes its port file" wait_file "$work/p1.port"
pport=$(cat "$work/p1.port")

out=$(python3 "$work/client.py" "$pport" 300000)
wait_lines "$work/echo.log" 1
read -r _ got end intact <<<"$(server_line "$work/echo.log" 1)"
is "$got" 100000 "connection 1: exactly 100000 bytes reached the server before the cut"
is "$intact" intact "connection 1: the bytes relayed are the client's, in order"
is "$end" reset "connection 1: the server saw a reset, not an orderly end"
read -r sent echoed cend _ <<<"$out"
ok "connection 1: the client saw the connection end early ($out)" \
    test "$echoed" -le 100000 -a "$cend" = reset

python3 "$work/client.py" "$pport" 300000 >/dev/null
wait_lines "$work/echo.log" 2
read -r _ got end intact <<<"$(server_line "$work/echo.log" 2)"
is "$got" 4096 "connection 2: exactly 4096 bytes reached the server before the cut"
is "$end" reset "connection 2: ended by a reset"

out=$(python3 "$work/client.py" "$pport" 3000000)
wait_lines "$work/echo.log" 3
read -r _ got end intact <<<"$(server_line "$work/echo.log" 3)"
is "$got $end $intact" "3000000 eof intact" "connection 3 (past the list): everything relayed, orderly end"
is "$out" "3000000 3000000 eof intact" "connection 3: the echo came back whole (both directions, half close)"

ok "the log names connection 1's cut" grep -q "conn 1: cut after 100000 bytes" "$work/p1.log"
ok "the log names connection 2's cut" grep -q "conn 2: cut after 4096 bytes" "$work/p1.log"
ok "the log has one line per connection" test "$(grep -c 'from .*relaying to' "$work/p1.log")" = 3

kill -TERM "$ppid"
wait "$ppid"; rc=$?
is "$rc" 0 "SIGTERM: the proxy exits 0"

# ---- random cuts, reproducible; --max-conns
nline=3
random_run() { # TAG: one proxy, two connections; prints the two cut points
    local tag=$1
    "$proxy" --listen 127.0.0.1:0 --to "127.0.0.1:$eport" --port-file "$work/$tag.port" \
        --cut-random 1000:50000 --seed 7 --cuts 1 --max-conns 2 2>"$work/$tag.log" &
    local p=$!
    pids+=($p)
    wait_file "$work/$tag.port" || return 1
    python3 "$work/client.py" "$(cat "$work/$tag.port")" 200000 >/dev/null
    python3 "$work/client.py" "$(cat "$work/$tag.port")" 200000 >/dev/null
    local i
    for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then echo "still running"; return 1; fi
    wait "$p"
}
random_run r1
ok "--max-conns 2: the proxy exits 0 by itself after two connections" test $? = 0
wait_lines "$work/echo.log" $((nline + 2))
read -r _ got1 end1 intact1 <<<"$(server_line "$work/echo.log" $((nline + 1)))"
read -r _ got2 end2 _ <<<"$(server_line "$work/echo.log" $((nline + 2)))"
ok "random cut: $got1 bytes, inside [1000, 50000]" test "$got1" -ge 1000 -a "$got1" -le 50000
is "$end1 $intact1" "reset intact" "random cut: ended by a reset, bytes intact"
ok "random cut: the log names the same byte count" grep -q "conn 1: cut after $got1 bytes" "$work/r1.log"
is "$got2 $end2" "200000 eof" "--cuts 1: the second connection is not cut"

random_run r2 >/dev/null
wait_lines "$work/echo.log" $((nline + 4))
read -r _ again _ <<<"$(server_line "$work/echo.log" $((nline + 3)))"
is "$again" "$got1" "the same seed cuts at the same byte"

# ---- refusals
"$proxy" --listen 10.0.0.1:0 --to "127.0.0.1:$eport" 2>"$work/bad.log"
is "$?" 2 "a listen address that is not loopback is refused (usage error)"
"$proxy" --listen 127.0.0.1:0 --to "192.0.2.1:80" 2>>"$work/bad.log"
is "$?" 2 "a target that is not loopback is refused"
