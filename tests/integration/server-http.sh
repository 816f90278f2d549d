#!/bin/bash
# The status page of `p2v-server run --http`: the page and the JSON API answer, and
# everything else is refused without harm — unknown paths, paths that climb out of a
# job's folder, bad job ids, symlinks in a job folder (404), other methods (405), malformed
# heads (400), an over-long head (431), a connection over the cap of 16 (503) — and the
# server still serves after all that. Then, in headless Chromium, a paced capture's row
# shows its bar moving, and 100 % once the capture is done.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool python3 chromium
. "$top_srcdir/tests/capture-lib.sh"
plan 47

work=$(tmpdir)
store=$work/store
store_init "$store"
# server_start adds `--until received` (capture-lib.sh): no conversion after the capture
server_start "$store" 0 --http 127.0.0.1:0 --http-port-file "$work/http.port"
for i in $(seq 50); do [ -s "$work/http.port" ] && break; sleep 0.1; done
HPORT=$(cat "$work/http.port") || bail "p2v-server wrote no --http-port-file"
ok "the log names the status page" grep -q "status page on http://127.0.0.1:$HPORT/" "$store.log"

# h.py: an HTTP client (http.client, raw sockets) that runs a batch of requests, one a
# line on stdin ("req METHOD PATH [BODY]", "raw PYTHON-BYTES", "cap"), printing a line for
# each and keeping the bodies in PREFIX.N; and a reader of the DOM that Chromium dumps.
# (One Python run for many requests: its start-up is what costs here.)
cat >"$work/h.py" <<'PYEOF'
import html.parser, http.client, json, shlex, socket, sys, time
port = int(sys.argv[1])
cmd = sys.argv[2]

def raw(data, timeout=12):
    """Send @data, read until the server closes: the status code, or "closed"."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
    except OSError:
        pass
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except OSError:
        pass
    s.close()
    return got.split(b" ")[1].decode() if got.startswith(b"HTTP/1.1 ") else "closed"

def req(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body.encode() if body is not None else None)
    r = c.getresponse()
    data = r.read()
    return "%s %s|%s|%s" % (r.status, r.getheader("Content-Type"), r.getheader("Connection"),
                            r.getheader("Allow")), data

if cmd == "batch":                     # batch PREFIX < requests
    for n, line in enumerate(sys.stdin, 1):
        w = shlex.split(line) if line.startswith("req ") else line.split(None, 1)
        data = b""
        if w[0] == "req":
            out, data = req(*w[1:])
        elif w[0] == "raw":
            out = raw(eval(w[1]))
        elif w[0] == "cap":            # 16 idle connections, then a 17th
            idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(16)]
            time.sleep(0.3)
            out = raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
            for s in idle:
                s.close()
        open("%s.%d" % (sys.argv[3], n), "wb").write(data)
        print(out, flush=True)
elif cmd == "wait-job":                # wait-job ID SECS: until the job has a size
    end = time.time() + float(sys.argv[4])
    while time.time() < end:
        try:
            out, data = req("GET", "/api/jobs/" + sys.argv[3])
            if out.startswith("200 ") and json.loads(data).get("bytes-total", 0) > 0:
                sys.exit(0)
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(1)
elif cmd == "rows":                    # rows ID DUMP...: "data-pct|stage|pct text|verdict"
    class P(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.row, self.cell, self.done, self.cells = None, None, False, {}
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "tr" and a.get("id") == "job-" + sys.argv[3]:
                self.row = a
            elif self.row is not None and not self.done and tag == "td":
                self.cell = (a.get("class") or "?").split()[0]
                self.cells[self.cell] = ""
        def handle_endtag(self, tag):
            if tag == "td":
                self.cell = None
            elif tag == "tr" and self.row is not None:
                self.done = True
        def handle_data(self, d):
            if self.cell:
                self.cells[self.cell] += d
    for f in sys.argv[4:]:
        p = P()
        p.feed(open(f, encoding="utf-8", errors="replace").read())
        c = p.cells
        print("no row" if p.row is None else "%s|%s|%s|%s" % (
            p.row.get("data-pct"), c.get("stage", "?").strip(), c.get("pct", "?").strip(),
            c.get("verdict", "?").strip()))
PYEOF
h() { python3 "$work/h.py" "$HPORT" "$@"; }
# dump URL-PATH FILE: the DOM once the page's script has run (HOME: Chromium's own files
# stay in the test's folder)
dump() {
    HOME=$work timeout 60 chromium --headless --no-sandbox --disable-gpu \
        --user-data-dir="$work/chromium" --virtual-time-budget=2500 \
        --dump-dom "http://127.0.0.1:$HPORT$1" >"$2" 2>"$work/chromium.err"
}
# check DESC REQUEST WANT: queue a request for run_checks and what it must print
checks=()
check() { checks+=("$1"$'\t'"$2"$'\t'"$3"); }
# run_checks PREFIX: run the queued requests, a TAP line each; the bodies in PREFIX.N
run_checks() {
    local i
    printf '%s\n' "${checks[@]}" | cut -f2 | h batch "$1" >"$1.out"
    for i in "${!checks[@]}"; do
        is "$(sed -n "$((i + 1))p" "$1.out")" "$(cut -f3 <<<"${checks[$i]}")" \
            "$(cut -f1 <<<"${checks[$i]}")"
    done
    checks=()
}
html='text/html; charset=utf-8|close|None'
json='application/json|close|None'
text='text/plain; charset=utf-8|close|None'
allow='text/plain; charset=utf-8|close|GET, HEAD'

# ---- the endpoints, then refusals
check "GET /: HTML, Connection: close" "req GET /" "200 $html"
check "HEAD /: the same headers" "req HEAD /" "200 $html"
check "GET /api/jobs: JSON" "req GET /api/jobs" "200 $json"
for path in /nope /index.html /api/jobs/ /api/jobs/nope /api/job /jobs/nope/report.json \
    /jobs/../../etc/passwd /jobs/..%2F..%2Fetc/passwd /api/jobs/.. /api/jobs/a/b \
    /jobs/a/b/report.json /jobs/.hidden/report.json /jobs/nope/job.json; do
    check "GET $path: 404" "req GET $path" "404 $text"
done
check "POST /: 405 with Allow" "req POST / x" "405 $allow"
check "DELETE /api/jobs: 405" "req DELETE /api/jobs" "405 $allow"
check "garbage bytes: 400" 'raw b"\x00\x01\x02 garbage\r\n\r\n"' 400
check "a request line without a version: 400" 'raw b"GET /\r\n\r\n"' 400
check "HTTP/1.1 without Host: 400" 'raw b"GET / HTTP/1.1\r\n\r\n"' 400
check "a header line without a colon: 400" \
    'raw b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n"' 400
check "a target that is not a path: 400" 'raw b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"' 400
check "HTTP/2.0 in a request line: 505" 'raw b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"' 505
check "a request head over 8 KiB: 431" \
    'raw b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"' 431
check "a 17th connection while 16 are open: 503" cap 503
check "still serving after all that" "req GET /api/jobs" "200 $json"
run_checks "$work/b"
ok "GET /: the jobs table" grep -q '<tbody id="rows">' "$work/b.1"
is "$(stat -c %s "$work/b.2")" 0 "HEAD /: no body"
"$SERVER" status --store "$store" --json >"$work/status.json"
ok "GET /api/jobs on an empty store is what status --json prints" \
    cmp "$work/b.3" "$work/status.json"

# ---- a paced capture, watched in Chromium
mkdisk "$work/disk.raw" 64 7 0
agent --name web1 --disk "$work/disk.raw" --max-rate 3M >"$work/agent.out" 2>&1 &
apid=$!
ok "the job shows up in /api/jobs with its size" h wait-job web1 20
dump / "$work/dom1"
sleep 2
dump / "$work/dom2"
wait "$apid"; ok "the capture ends" test $? -eq 0 || diag "$(tail -5 "$work/agent.out")"
dump / "$work/dom3"
mapfile -t rows < <(h rows web1 "$work/dom1" "$work/dom2" "$work/dom3")
diag "the row in three dumps (data-pct|stage|pct|verdict): ${rows[*]}"
p1=${rows[0]%%|*} p2=${rows[1]%%|*}
ok "Chromium renders a row for the job (id=job-web1)" test "${rows[0]}" != "no row"
is "$(cut -d'|' -f2 <<<"${rows[0]}")" receiving "the row's stage while the capture runs: receiving"
ok "the row's data-pct grows while the capture runs ($p1 -> $p2)" \
    python3 -c 'import sys; a, b = map(float, sys.argv[1:]); assert 0 <= a < b < 100.1' "$p1" "$p2"
is "$(cut -d'|' -f1-3 <<<"${rows[2]}")" "100|received|100 %" \
    "after the capture the row shows 100 % and 'received'"
is "$(cut -d'|' -f4 <<<"${rows[2]}")" "-" "no verdict yet: '-'"

# ---- one job's object; the files of a job folder: only report.json and
# verify/serial.log, never through a symlink (scratch files in the received job's folder,
# removed afterwards)
jd=$store/jobs/web1
mkdir "$work/elsewhere" && echo secret >"$work/elsewhere/serial.log"
mkdir "$work/v" && printf 'boot line\n' >"$work/v/serial.log"
check "GET /api/jobs/web1: JSON" "req GET /api/jobs/web1" "200 $json"
check "no report.json yet: 404" "req GET /jobs/web1/report.json" "404 $text"
run_checks "$work/c"
"$SERVER" status --store "$store" --json web1 >"$work/status1.json"
ok "GET /api/jobs/web1 is what status --json web1 prints" cmp "$work/c.1" "$work/status1.json"
ln -s "$work/elsewhere/serial.log" "$jd/report.json"
ln -s "$work/elsewhere" "$jd/verify"
check "report.json as a symlink: 404" "req GET /jobs/web1/report.json" "404 $text"
check "verify/ as a symlink: 404" "req GET /jobs/web1/serial.log" "404 $text"
run_checks "$work/d"
rm "$jd/report.json" "$jd/verify"
mv "$work/v" "$jd/verify"
check "verify/serial.log served as text" "req GET /jobs/web1/serial.log" "200 $text"
run_checks "$work/e"
is "$(cat "$work/e.1")" "boot line" "verify/serial.log: its content"
rm -r "$jd/verify"

server_stop; is "$?" 0 "server stops cleanly on SIGTERM"
ok "the status page is gone with the server" \
    bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$HPORT) 2>/dev/null"

# ---- a verified job shows its verdict
# A verified job's row (its verdict, the links to its report and serial log) is checked in
# Chromium by tests/e2e/pipeline.sh, which has real verified jobs.
