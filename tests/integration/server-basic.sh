#!/bin/bash
# p2v-server without an agent: init (twice, --json, --force), usage errors, status on an
# empty store, run on 127.0.0.1 port 0 with --port-file, one server per store, connections
# that are not TLS 1.3 logged and survived, SIGTERM exits 0.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
srv=$(p2v_bin p2v-server)
work=$(tmpdir)
store=$work/store
plan 32

# expect_rc NAME RC PATTERN CMD...: the exit status is RC and stderr matches PATTERN
expect_rc() {
    local name=$1 want=$2 pat=$3; shift 3
    "$@" >"$work/out" 2>"$work/err"; local rc=$?
    if [ "$rc" -eq "$want" ] && grep -qiE -- "$pat" "$work/err"; then
        ok "$name"
    else
        not_ok "$name"; diag "exit $rc (want $want): $(head -c 600 "$work/err")"
    fi
}

# ---- init
"$srv" init --store "$store" >"$work/init1" 2>"$work/init1.err"
is "$?" 0 "init makes a store"
fp1=$(sed -n 's/^fingerprint: //p' "$work/init1")
tok1=$(sed -n 's/^token: //p' "$work/init1")
ok "fingerprint printed" grep -qE '^SHA256:[0-9a-f]{64}$' <<<"$fp1"
ok "token is 64 hex digits" grep -qE '^[0-9a-f]{64}$' <<<"$tok1"
ok "an example agent command" grep -q -- "p2v-agent --server .*--fingerprint $fp1 --token $tok1" "$work/init1"
is "$(stat -c %a "$store")" 700 "store folder mode 0700"
is "$(stat -c %a "$store/server.key") $(stat -c %a "$store/token")" "600 600" "key and token mode 0600"

"$srv" init --store "$store" >"$work/init2" 2>"$work/init2.err"
is "$?" 0 "init again exits 0"
is "$(sed -n 's/^fingerprint: //p' "$work/init2") $(sed -n 's/^token: //p' "$work/init2")" "$fp1 $tok1" \
    "init again prints the same identity"
ok "init again says the identity is unchanged" grep -q "already initialised" "$work/init2.err"

json=$("$srv" init --store "$store" --json)
abs=$(cd "$store" && pwd -P)
ok "init --json has store, fingerprint and token" \
    grep -qE "^\{\"store\":\"$abs\",\"fingerprint\":\"$fp1\",\"token\":\"$tok1\"\}$" <<<"$json"

"$srv" init --store "$work/store2" --json >"$work/s2a" && "$srv" init --store "$work/store2" --force --json >"$work/s2b"
ok "init --force makes a new identity" test "$(cat "$work/s2a")" != "$(cat "$work/s2b")"

# ---- usage and errors
expect_rc "no command: exit 2" 2 "command is required" "$srv"
expect_rc "unknown command: exit 2" 2 "unknown command 'frob'" "$srv" frob
expect_rc "run without --store: exit 2" 2 "--store DIR is required" "$srv" run
expect_rc "run with a bad format: exit 2" 2 "unknown format 'qcow3'" "$srv" run --store "$store" --format qcow3
expect_rc "run with a bad window: exit 2" 2 "window" "$srv" run --store "$store" --window 12K
expect_rc "unknown option: exit 2" 2 "unknown option '--bogus'" "$srv" status --store "$store" --bogus
ok "help of every command exits 0" bash -c "'$srv' --help >/dev/null && '$srv' init --help | grep -q -- --force && '$srv' run --help | grep -q -- --port-file && '$srv' status --help | grep -q -- --json"
mkdir "$work/empty"
expect_rc "run on a folder that is not a store: exit 1" 1 "not initialised.*p2v-server init" \
    "$srv" run --store "$work/empty" --listen 127.0.0.1:0
expect_rc "status of an unknown job: exit 1" 1 "no job 'ghost'" "$srv" status --store "$store" ghost

# ---- status on an empty store
out=$("$srv" status --store "$store")
is "$?" 0 "status on an empty store exits 0"
ok "status says there are no jobs" grep -q "no jobs" <<<"$out"
is "$("$srv" status --store "$store" --json | tr -d ' \n')" '{"jobs":[]}' "status --json on an empty store"

# ---- run
"$srv" run --store "$store" --listen 127.0.0.1:0 --port-file "$work/port" 2>"$work/run.err" &
pid=$!
for i in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port" 2>/dev/null)
ok "port file written" grep -qE '^[0-9]+$' <<<"$port"
expect_rc "a second server on the same store: exit 1" 1 "in use by another p2v-server" \
    "$srv" run --store "$store" --listen 127.0.0.1:0

# not TLS: plain text, then (if openssl is here) TLS 1.2
exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'HELLO plain text\r\n\r\n' >&3
cat <&3 >/dev/null 2>&1
exec 3<&-
if command -v openssl >/dev/null; then
    openssl s_client -connect "127.0.0.1:$port" -tls1_2 </dev/null >/dev/null 2>&1
fi
for i in $(seq 50); do grep -q "TLS handshake failed" "$work/run.err" && break; sleep 0.1; done
ok "a plain-text connection is logged with its address" \
    grep -qE "127\.0\.0\.1:[0-9]+: TLS handshake failed: " "$work/run.err"
ok "...in server.log too" grep -qE "127\.0\.0\.1:[0-9]+: TLS handshake failed: " "$store/server.log"
ok "the server goes on" kill -0 "$pid"
ok "status with a running server" "$srv" status --store "$store"

t0=$(date +%s)
kill -TERM "$pid"
wait "$pid"
rc=$?
t1=$(date +%s)
is "$rc" 0 "SIGTERM: exit 0"
ok "...within a few seconds" test $((t1 - t0)) -le 5
ok "server.log records listening and stopping" \
    bash -c "grep -q 'listening on 127.0.0.1:$port' '$store/server.log' && grep -q 'stopped' '$store/server.log'"
