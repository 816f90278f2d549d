# tests/capture-lib.sh: sourced by the capture tests (after tests/functions.sh).
#
#   store_init STORE           p2v-server init; sets FP and TOKEN
#   server_start STORE [PORT] [ARGS...]
#                              starts p2v-server run on 127.0.0.1 (PORT 0 or omitted: any);
#                              sets SERVER_PID and PORT; the log is STORE.log
#   server_stop                SIGTERM, then SIGKILL after 10 s; returns the exit status
#   server_kill                SIGKILL
#   free_port                  prints a free TCP port on 127.0.0.1
#   agent ARGS...              p2v-agent --server 127.0.0.1:$PORT --fingerprint $FP
#                              --token $TOKEN --progress none ARGS...
#   job_field STORE JOB KEY    a top-level field of jobs/JOB/job.json
#   json_field FILE KEY        a field of the last JSON object in FILE having KEY
#   mkdisk FILE MIB SEED [ZEROPCT]
#                              a raw "disk" of MIB MiB: pseudo-random 1 MiB blocks, some
#                              all-zero (ZEROPCT %, default 25), no partition table
#   same_image A B             qemu-img compare (any formats) says identical

SERVER=$(p2v_bin p2v-server)
AGENT=$(p2v_bin p2v-agent)
_servers=()
_loops=()
_mounts=()
_capture_cleanup() {
    local p m l
    for p in "${_servers[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for m in "${_mounts[@]}"; do umount "$m" 2>/dev/null; done
    for l in "${_loops[@]}"; do losetup -d "$l" 2>/dev/null; done
}
trap '_capture_cleanup; _tap_exit' EXIT

store_init() {
    local out
    out=$("$SERVER" init --store "$1" --json) || bail "p2v-server init failed"
    FP=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["fingerprint"])' <<<"$out")
    TOKEN=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$out")
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

server_start() {
    local store=$1 port=${2:-0}; shift; [ $# -gt 0 ] && shift
    rm -f "$store.port"
    # the capture tests stop at "received" (no conversion) unless they say otherwise
    "$SERVER" run --store "$store" --listen "127.0.0.1:$port" --port-file "$store.port" \
        --until "${SERVER_UNTIL:-received}" "$@" \
        >>"$store.log" 2>&1 &
    SERVER_PID=$!
    _servers+=("$SERVER_PID")
    local i
    for i in $(seq 100); do
        [ -s "$store.port" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$store.log" >&2; bail "p2v-server exited at start"; }
        sleep 0.1
    done
    PORT=$(cat "$store.port") || bail "p2v-server wrote no port file"
}

server_stop() {
    local i rc
    kill -TERM "$SERVER_PID" 2>/dev/null
    for i in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null; rc=$?
    return $rc
}

server_kill() {
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    return 0
}

agent() {
    "$AGENT" --server "127.0.0.1:$PORT" --fingerprint "$FP" --token "$TOKEN" \
        --progress none "$@"
}

job_field() {
    python3 - "$1/jobs/$2/job.json" "$3" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1])).get(sys.argv[2])
print("" if v is None else v)
EOF
}

json_field() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
val = ""
for line in open(sys.argv[1], errors="replace"):
    line = line.strip()
    if not line.startswith("{"):
        continue
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if sys.argv[2] in o:
        val = o[sys.argv[2]]
print(val)
EOF
}

mkdisk() {
    python3 - "$1" "$2" "$3" "${4:-25}" <<'EOF'
import random, sys
path, mib, seed, zpct = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for i in range(mib):
        if rnd.randrange(100) < zpct:
            continue
        f.seek(i << 20)
        if rnd.randrange(3) == 0:   # compressible
            line = b"p2vkit test block %d of seed %d\n" % (i, seed)
            f.write((line * ((1 << 20) // len(line) + 1))[:1 << 20])
        else:
            f.write(rnd.randbytes(1 << 20))
EOF
}

same_image() {
    qemu-img compare -q "$1" "$2"
}

# loop_ro IMG [OFFSET SIZE]: a read-only loop device in LOOP (detached at exit; call it
# outside $(...) so that the cleanup list sees it)
loop_ro() {
    if [ $# -gt 1 ]; then
        LOOP=$(losetup -f --show -r --offset "$2" --sizelimit "$3" "$1") || return 1
    else
        LOOP=$(losetup -f --show -r "$1") || return 1
    fi
    _loops+=("$LOOP")
}

# mount_ro DEV DIR
mount_ro() {
    mkdir -p "$2" && mount -o ro,noload "$1" "$2" 2>/dev/null || mount -o ro "$1" "$2" || return 1
    _mounts+=("$2")
}
