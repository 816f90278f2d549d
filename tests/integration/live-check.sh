#!/bin/bash
# live-check.sh IMAGE LOG CUTOVER_TIME [PART_OFFSET_BYTES]
# Checks a captured raw image against the log of tests/integration/live-writer.py for the
# guarantee of p2v-agent --live: every write fsync'd before the cutover instant is in the
# image. (The log and WAL record formats are described once, in live-writer.py.)
#   - e2fsck -fn of the ext4 at PART_OFFSET_BYTES (default 0) is clean (exit 0);
#   - it mounts read-only: `-o ro`, else `-o ro,noload` (reported: a captured file system
#     should have a clean journal);
#   - every `file` logged before CUTOVER_TIME (and with no `unlink` logged before it) is
#     there, with its size and SHA-256;
#   - wal.log holds records 0..S intact (magic, consecutive seqs, CRC), S the largest seq of
#     a `wal` line before CUTOVER_TIME; what follows S may be missing or torn.
# CUTOVER_TIME: seconds since the epoch (e.g. `date +%s.%N`), or ISO 8601; or an interval
# T1..T2 when the consistent instant is known only to lie in it (an LVM snapshot: somewhere
# inside lvcreate's run): writes before T1 are required, except files unlinked before T2.
# Prints `live-check: N files required, N present, WAL seq S required, S2 found`, then the
# first problems. Exit 0: all good; 1: a check failed; 2: usage error.
# Root: it attaches the image read-only (losetup -r) and mounts it; both undone at exit.

usage() { echo "usage: $0 IMAGE LOG CUTOVER_TIME [PART_OFFSET_BYTES]" >&2; exit 2; }
if [ $# -lt 3 ] || [ $# -gt 4 ]; then usage; fi
image=$1 log=$2 cutover=$3 offset=${4:-0}
[ -f "$image" ] || { echo "live-check: no image $image" >&2; usage; }
[ -r "$log" ] || { echo "live-check: cannot read the log $log" >&2; usage; }
[[ $offset =~ ^[0-9]+$ ]] || { echo "live-check: bad offset $offset" >&2; usage; }
to_epoch() {
    python3 -c '
import sys, datetime
s = sys.argv[1].strip().lstrip("@")
try:
    t = float(s)
except ValueError:
    try:
        d = datetime.datetime.fromisoformat(s)
    except ValueError:
        sys.exit(1)
    if d.tzinfo is None:
        d = d.astimezone()
    t = d.timestamp()
print("%.9f" % t)' "$1"
}
case $cutover in
    *..*) c1=$(to_epoch "${cutover%%..*}") && c2=$(to_epoch "${cutover#*..}") ||
              { echo "live-check: bad cutover interval $3" >&2; usage; } ;;
    *) c1=$(to_epoch "$cutover") || { echo "live-check: bad cutover time $3" >&2; usage; }
       c2=$c1 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "live-check: needs root (losetup, mount)" >&2; exit 2; }

loop='' mnt=''
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    if [ -n "$mnt" ]; then
        mountpoint -q "$mnt" && umount "$mnt"
        rmdir "$mnt"
    fi
    [ -n "$loop" ] && losetup -d "$loop"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

fail=0
loop=$(losetup -r -f --show --offset "$offset" "$image") || {
    echo "live-check: losetup of $image at offset $offset failed"; exit 1; }

fsck_bad=0
fsck_out=$(e2fsck -fn "$loop" 2>&1)
rc=$?
if [ $rc -eq 0 ]; then
    echo "live-check: e2fsck -fn: clean"
else
    echo "live-check: FAIL e2fsck -fn exit $rc (its output below)"
    fail=1 fsck_bad=1
fi
# after the summary: what e2fsck found
fsck_details() {
    [ $fsck_bad -eq 1 ] || return 0
    echo "live-check: e2fsck -fn said:"
    printf '%s\n' "$fsck_out" | grep -v -e '^Pass [0-9]' -e '^$' | head -n 15 | sed 's/^/live-check:   /'
}

mnt=$(mktemp -d "${TMPDIR:-/var/tmp}/live-check.XXXXXX") || exit 1
if mount_err=$(mount -t ext4 -o ro "$loop" "$mnt" 2>&1); then
    echo "live-check: mounted with -o ro"
elif mount_err2=$(mount -t ext4 -o ro,noload "$loop" "$mnt" 2>&1); then
    echo "live-check: mounted with -o ro,noload (plain ro failed: ${mount_err//$'\n'/ })"
else
    echo "live-check: FAIL cannot mount: ${mount_err//$'\n'/ }; ro,noload: ${mount_err2//$'\n'/ }"
    echo "live-check: 0 files required, 0 present, WAL seq ? required, ? found"
    fsck_details
    exit 1
fi

python3 - "$mnt" "$log" "$c1" "$c2" <<'EOF' || fail=1
import hashlib, os, struct, sys, zlib

root, log = sys.argv[1], sys.argv[2]
# the instant lies in [cutover, cutover_end]: a write fsync'd before cutover must be there,
# unless an unlink logged before cutover_end may have removed it first
cutover, cutover_end = float(sys.argv[3]), float(sys.argv[4])
# the WAL record, as documented in live-writer.py
REC_SIZE = 512
REC_MAGIC = b"P2VW"
REC_HEAD = struct.Struct("<4sQd")
REC_CRC = struct.Struct("<I")

files = {}          # name -> (time, size, sha256), logged before the cutover
unlinked = set()    # names with an unlink line before the cutover's end
wal_required = -1
errors = []
with open(log, errors="replace") as f:
    for line in f:
        if not line.endswith("\n"):
            break                         # a line being written: not yet logged
        w = line.split()
        if len(w) < 2:
            continue
        try:
            t = float(w[1])
        except ValueError:
            continue
        if w[0] == "error":
            errors.append(line.strip())
        if w[0] == "unlink" and len(w) == 3 and t < cutover_end:
            unlinked.add(w[2])
        if t >= cutover:
            continue
        if w[0] == "file" and len(w) == 5:
            files[w[2]] = (t, int(w[3]), w[4])
        elif w[0] == "wal" and len(w) == 3:
            wal_required = max(wal_required, int(w[2]))

problems = []
required = [n for n in files if n not in unlinked]
required.sort(key=lambda n: files[n][0])
present = 0
for name in required:
    t, size, sha = files[name]
    path = os.path.join(root, name)
    when = "fsync'd %.3f s before the cutover" % (cutover - t)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        problems.append("MISSING %s (%d bytes, %s)" % (name, size, when))
        continue
    except OSError as e:
        problems.append("UNREADABLE %s: %s (%s)" % (name, e, when))
        continue
    if len(data) != size:
        problems.append("BAD %s: %d bytes, want %d (%s)" % (name, len(data), size, when))
    elif hashlib.sha256(data).hexdigest() != sha:
        problems.append("BAD %s: SHA-256 differs (%s)" % (name, when))
    else:
        present += 1

# WAL: the intact, consecutive records from seq 0
found = -1
why = ""
walpath = os.path.join(root, "wal.log")
try:
    with open(walpath, "rb") as f:
        wal = f.read()
except FileNotFoundError:
    wal, why = b"", "wal.log is missing"
except OSError as e:
    wal, why = b"", "wal.log unreadable: %s" % e
k = 0
while not why:
    rec = wal[k * REC_SIZE:(k + 1) * REC_SIZE]
    if not rec:
        why = "ends after record %d" % (k - 1)
        break
    if len(rec) < REC_SIZE:
        why = "record %d torn (%d of %d bytes)" % (k, len(rec), REC_SIZE)
        break
    magic, seq, _ = REC_HEAD.unpack_from(rec)
    (crc,) = REC_CRC.unpack_from(rec, REC_SIZE - REC_CRC.size)
    if magic != REC_MAGIC:
        why = "record %d: bad magic %r" % (k, magic)
        break
    if seq != k:
        why = "record %d: holds seq %d" % (k, seq)
        break
    if crc != zlib.crc32(rec[:REC_SIZE - REC_CRC.size]):
        why = "record %d: bad CRC" % k
        break
    found = k
    k += 1
if found < wal_required:
    problems.append("WAL: records 0..%d required, intact only up to %d (%s)"
                    % (wal_required, found, why))

print("live-check: %d files required, %d present, WAL seq %d required, %d found"
      % (len(required), present, wal_required, found))
for e in errors[:3]:
    print("live-check: note: the writer logged: %s" % e)
for p in problems[:8]:
    print("live-check: FAIL " + p)
if len(problems) > 8:
    print("live-check: ... and %d more" % (len(problems) - 8))
sys.exit(1 if problems else 0)
EOF
fsck_details
exit $fail
