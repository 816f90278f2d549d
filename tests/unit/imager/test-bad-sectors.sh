#!/bin/bash
# test-bad-sectors.sh: the read pipeline against real I/O errors. nbdkit serves an image
# through its ddrescue filter, whose mapfile marks two ranges unreadable (reads touching
# them fail with EIO), and nbdfuse turns that NBD export into a local file: the kernel's
# read() of those ranges then fails with EIO for real, as on a disk with bad sectors.
# The ranges are 4 KiB aligned because FUSE reads whole pages. One range lies inside a
# chunk, the other straddles a chunk boundary.
#
# Without --skip-bad-sectors pipeline-run must exit 4 naming the first bad offset; with
# it, exit 0, list exactly the bad ranges' sectors, and give every chunk the same hash as
# the source image with those ranges zeroed (so every chunk that does not touch them
# hashes as in the source). Skips when nbdkit (with the ddrescue filter), nbdfuse or
# /dev/fuse is missing.
. "${top_srcdir:-$(cd "$(dirname "$0")/../../.." && pwd)}/tests/functions.sh"

require_tool nbdkit nbdfuse fusermount3 cmp
[ -c /dev/fuse ] || skip_all "/dev/fuse is missing"
filterdir=$(nbdkit --dump-config 2>/dev/null | sed -n 's/^filterdir=//p')
[ -e "$filterdir/nbdkit-ddrescue-filter.so" ] || skip_all "nbdkit has no ddrescue filter"
run=$top_builddir/tests/unit/imager/pipeline-run
[ -x "$run" ] || bail "$run is not built (make check builds it)"

d=$(tmpdir)
nbdkit_pid=""
nbdfuse_pid=""
cleanup() {
    if [ -n "$nbdfuse_pid" ]; then
        fusermount3 -u "$d/mnt" 2>/dev/null
        kill "$nbdfuse_pid" 2>/dev/null
        wait "$nbdfuse_pid" 2>/dev/null
        nbdfuse_pid=""
    fi
    if [ -n "$nbdkit_pid" ]; then
        kill "$nbdkit_pid" 2>/dev/null
        wait "$nbdkit_pid" 2>/dev/null
        nbdkit_pid=""
    fi
}
# unmount before functions.sh removes the temporary folders
# shellcheck disable=SC2154 # _rc is set inside the trap
trap '_rc=$?; cleanup; (exit $_rc); _tap_exit' EXIT

MIB=$((1024 * 1024))
size=$((8 * MIB + 3 * 512))
bad1=$((3 * MIB + 64 * 1024)) len1=4096         # inside the chunk [3 MiB, 4 MiB)
bad2=$((5 * MIB - 4096)) len2=8192              # across the chunk boundary at 5 MiB

# the source: random data with a run of zeros and some text
head -c "$size" /dev/urandom >"$d/src.img"
dd if=/dev/zero of="$d/src.img" bs=64K seek=16 count=16 conv=notrunc status=none
yes "the quick brown fox jumps over the lazy dog" | head -c $MIB |
    dd of="$d/src.img" bs=1M seek=6 conv=notrunc status=none
# the expected result: the source with the bad ranges read as zeros
cp "$d/src.img" "$d/expect.img"
dd if=/dev/zero of="$d/expect.img" bs=4096 seek=$((bad1 / 4096)) count=$((len1 / 4096)) \
    conv=notrunc status=none
dd if=/dev/zero of="$d/expect.img" bs=4096 seek=$((bad2 / 4096)) count=$((len2 / 4096)) \
    conv=notrunc status=none
{
    echo "# Mapfile. Created by GNU ddrescue version 1.27"
    echo "# current_pos  current_status  current_pass"
    echo "0x00000000     +               1"
    echo "#      pos        size  status"
    printf '0x%08x  0x%08x  +\n' 0 "$bad1"
    printf '0x%08x  0x%08x  -\n' "$bad1" "$len1"
    printf '0x%08x  0x%08x  +\n' $((bad1 + len1)) $((bad2 - bad1 - len1))
    printf '0x%08x  0x%08x  -\n' "$bad2" "$len2"
    printf '0x%08x  0x%08x  +\n' $((bad2 + len2)) $((size - bad2 - len2))
} >"$d/src.map"
want_bad=""
for ((o = bad1; o < bad1 + len1; o += 512)); do want_bad="$want_bad $o"; done
for ((o = bad2; o < bad2 + len2; o += 512)); do want_bad="$want_bad $o"; done
nwant=$(((len1 + len2) / 512))

# serve_and_mount NBDKIT-ARGS...: nbdkit on a Unix socket, nbdfuse on $d/mnt/disk
serve_and_mount() {
    rm -f "$d/nbd.sock" "$d/nbdfuse.pid"
    nbdkit --exit-with-parent -f -U "$d/nbd.sock" "$@" 2>"$d/nbdkit.log" &
    nbdkit_pid=$!
    for _ in $(seq 100); do
        [ -S "$d/nbd.sock" ] || ! kill -0 "$nbdkit_pid" 2>/dev/null && break
        sleep 0.1
    done
    [ -S "$d/nbd.sock" ] || bail "nbdkit did not start: $(cat "$d/nbdkit.log")"
    mkdir -p "$d/mnt"
    nbdfuse -P "$d/nbdfuse.pid" "$d/mnt/disk" --unix "$d/nbd.sock" 2>"$d/nbdfuse.log" &
    nbdfuse_pid=$!
    for _ in $(seq 100); do
        [ -s "$d/nbdfuse.pid" ] || ! kill -0 "$nbdfuse_pid" 2>/dev/null && break
        sleep 0.1
    done
    [ -s "$d/nbdfuse.pid" ]
}
serve_and_mount --filter=ddrescue file "$d/src.img" ddrescue-mapfile="$d/src.map" ||
    skip_all "nbdfuse cannot mount here: $(cat "$d/nbdfuse.log")"
disk=$d/mnt/disk

plan 16

is "$(stat -c %s "$disk")" "$size" "the FUSE file has the image's size"
ok "reads outside the bad ranges succeed" cmp -n "$bad1" "$disk" "$d/src.img"
if dd if="$disk" of=/dev/null bs=4096 skip=$((bad1 / 4096)) count=1 status=none 2>"$d/dd.err"; then
    not_ok "a read of the first bad range fails"
else
    ok "a read of the first bad range fails ($(cat "$d/dd.err"))"
fi

# without --skip-bad-sectors: exit 4, the first bad sector named
"$run" "$disk" >"$d/fail.out" 2>"$d/fail.err"
is "$?" 4 "without --skip-bad-sectors: exit 4"
if grep -q "unreadable sector at offset $bad1 of '$disk'" "$d/fail.err"; then
    ok "the message names the offset and the file"
else
    not_ok "the message names the offset and the file"
    diag "$(cat "$d/fail.err")"
fi

# with it: exit 0, the bad sectors listed, every chunk as in the expected image
"$run" --skip-bad-sectors --lines "$disk" >"$d/skip.out" 2>"$d/skip.err"
is "$?" 0 "with --skip-bad-sectors: exit 0"
is "$(sed -n 's/^bad-sectors //p' "$d/skip.out")" "$nwant$want_bad" \
    "the listed bad sectors are exactly the bad ranges' $nwant sectors"
"$run" --lines "$d/expect.img" >"$d/expect.out" 2>&1
chunks() { grep -E '^[0-9]+ [0-9]+ (zero|raw|zstd) ' "$1"; }
if [ "$(chunks "$d/skip.out")" = "$(chunks "$d/expect.out")" ] && [ -n "$(chunks "$d/skip.out")" ]; then
    ok "every chunk's hash matches the source with the bad ranges zeroed"
else
    not_ok "every chunk's hash matches the source with the bad ranges zeroed"
    diag "$(diff <(chunks "$d/skip.out") <(chunks "$d/expect.out") | head -20)"
fi
# chunks that do not touch a bad range hash exactly as in the source
"$run" --lines "$d/src.img" >"$d/src.out" 2>&1
untouched_src=$(chunks "$d/src.out" | while read -r off len kind zl h; do
    if [ $((off + len)) -le "$bad1" ] || [ "$off" -ge $((bad2 + len2)) ] ||
        { [ "$off" -ge $((bad1 + len1)) ] && [ $((off + len)) -le "$bad2" ]; }; then
        echo "$off $len $kind $zl $h"
    fi
done)
untouched_fuse=$(chunks "$d/skip.out" | while read -r off len kind zl h; do
    if [ $((off + len)) -le "$bad1" ] || [ "$off" -ge $((bad2 + len2)) ] ||
        { [ "$off" -ge $((bad1 + len1)) ] && [ $((off + len)) -le "$bad2" ]; }; then
        echo "$off $len $kind $zl $h"
    fi
done)
is "$untouched_fuse" "$untouched_src" \
    "the $(echo "$untouched_src" | wc -l) chunks away from the bad ranges hash as in the source"

# the agent over the same disk (local capture): exit 4 naming the offset; with
# --skip-bad-sectors a complete image whose bad sectors read as zeros, listed in the report
agent=$top_builddir/p2v-agent/p2v-agent
"$agent" --progress none --output "$d/a.qcow2" --disk "$disk" >"$d/agent.out" 2>&1
is "$?" 4 "p2v-agent: an unreadable sector ends the capture with exit 4"
ok "p2v-agent names the offset" grep -q "unreadable sector at offset $bad1" "$d/agent.out"
"$agent" --progress none --skip-bad-sectors --report "$d/report.json" --output "$d/a.qcow2" \
    --disk "$disk" >"$d/agent.out" 2>&1
is "$?:$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["bad-sectors"]))' \
    "$d/report.json" 2>/dev/null)" "0:$nwant" \
    "p2v-agent --skip-bad-sectors: exit 0, the report lists the $nwant bad sectors"
ok "its image equals the source with the bad sectors zeroed" \
    qemu-img compare -q "$d/expect.img" "$d/a.qcow2"

# small chunks, one worker, no retries: the same sectors found
"$run" --skip-bad-sectors --chunk 64K --threads 1 --retries -1 "$disk" >"$d/small.out" 2>&1
is "$?:$(sed -n 's/^bad-sectors //p' "$d/small.out")" "0:$nwant$want_bad" \
    "64 KiB chunks, one thread, no retries: the same bad sectors"

# a transient error: an nbdkit sh plugin fails the first four reads that touch the first
# bad range, then serves it; the retries get the data and no sector is listed as bad
cleanup
cat >"$d/flaky.sh" <<EOF
#!/bin/bash
case "\$1" in
get_size) echo $size ;;
pread)
    if [ "\$4" -lt $((bad1 + len1)) ] && [ \$((\$4 + \$3)) -gt $bad1 ] &&
        [ "\$(stat -c %s "$d/fails")" -lt 8 ]; then
        echo x >>"$d/fails"
        echo "EIO transient failure" >&2
        exit 1
    fi
    dd if="$d/src.img" skip="\$4" count="\$3" iflag=skip_bytes,count_bytes status=none ;;
*) exit 2 ;;
esac
EOF
chmod +x "$d/flaky.sh"
: >"$d/fails"
serve_and_mount sh "$d/flaky.sh" || bail "nbdfuse failed: $(cat "$d/nbdfuse.log")"
"$run" --skip-bad-sectors --lines "$disk" >"$d/flaky.out" 2>&1
is "$?:$(sed -n 's/^bad-sectors //p' "$d/flaky.out"):$(stat -c %s "$d/fails")" "0:0:8" \
    "a range that fails four times, then reads: exit 0, no bad sector"
if [ "$(chunks "$d/flaky.out")" = "$(chunks "$d/src.out")" ]; then
    ok "and every chunk hashes as in the source"
else
    not_ok "and every chunk hashes as in the source"
    diag "$(diff <(chunks "$d/flaky.out") <(chunks "$d/src.out") | head -20)"
fi
