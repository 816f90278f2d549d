#!/bin/bash
# p2v-inject refuses what it cannot fix, with a clear message, its documented exit code,
# and the image unchanged: a blank disk (no OS), a disk whose ext4 superblock is zeroed
# (corrupt), files that are not disks, a missing file, a guest inspection calls FreeBSD
# (an ext4 with FreeBSD's marker files: unsupported OS), bad usage. Then a dry run on
# mini-bios lists the changes and writes nothing. This is the libguestfs test the
# sanitizer build repeats (it boots no guest of its own).
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
require_tool sha256sum sfdisk mke2fs python3 truncate
plan 23

inject=$(p2v_bin p2v-inject)
work=$(tmpdir)
sum() { sha256sum "$1" | cut -d' ' -f1; }

# run NAME ARGS...: p2v-inject with output in $work/NAME.{out,err}, exit code in $rc
run() {
    local name=$1 t0=$SECONDS; shift
    rc=0
    "$inject" "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
    diag "$name: exit $rc in $(( SECONDS - t0 )) s: $(grep -v '^p2v-inject: \(starting\|appliance\)' "$work/$name.err" | head -n 2)"
}

# ---- usage
run usage
is "$rc" 2 "no DISK: exit 2 (usage)"
run help --help
ok "--help: exit 0, documents the exit codes" bash -c '[ "$1" -eq 0 ] && grep -q "exit codes" "$2"' _ "$rc" "$work/help.out"
run badopt --accel warp "$work/x"
is "$rc" 2 "--accel warp: exit 2"
run badinitramfs --initramfs sometimes "$work/x"
ok "--initramfs sometimes: exit 2, names the modes" bash -c '[ "$1" -eq 2 ] && grep -q "auto, rebuild or append" "$2"' _ "$rc" "$work/badinitramfs.err"

# ---- a missing file, a file that is not a disk
run missing "$work/nope.img"
ok "missing file: exit 1, names the file" bash -c '[ "$1" -eq 1 ] && grep -q "nope.img" "$2"' _ "$rc" "$work/missing.err"
head -c 300 /etc/services >"$work/text.img"
s0=$(sum "$work/text.img")
run text "$work/text.img"
ok "a 300-byte text file: exit 5, 'not a disk image'" bash -c \
    '[ "$1" -eq 5 ] && grep -q "not a disk image" "$2"' _ "$rc" "$work/text.err"
is "$(sum "$work/text.img")" "$s0" "text file unchanged"

# ---- a blank disk: no OS
truncate -s 64M "$work/blank.img"
s0=$(sum "$work/blank.img")
run blank --json "$work/blank.img"
is "$rc" 5 "blank disk: exit 5 (no operating system)"
ok "blank disk: 'no operating system found' (stderr and JSON error)" bash -c '
    grep -q "no operating system found" "$1" &&
    python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert \"no operating system\" in j[\"error\"] and j[\"status\"] == 5" "$2"' \
    _ "$work/blank.err" "$work/blank.out"
ok "blank disk: refused without starting the appliance" bash -c '! grep -q "starting the libguestfs appliance" "$1"' \
    _ "$work/blank.err"
is "$(sum "$work/blank.img")" "$s0" "blank disk unchanged"

src=$(fixture mini-bios)
. "$(dirname "$src")/fixture.env"
if sanitizer_run; then
    # each is one more libguestfs appliance (half a minute) for a few lines of our code
    skip 5 "corrupt and unsupported guests: the normal build's pass runs them"
else
# ---- corrupt: mini-bios with its root superblock zeroed
cp --sparse=always "$src" "$work/corrupt.img"
p1_start=$(sfdisk -d "$work/corrupt.img" | awk -F'[=,]' '/img1 :/ {gsub(/ /, ""); print $2}')
dd if=/dev/zero of="$work/corrupt.img" bs=1024 seek=$(( p1_start / 2 + 1 )) count=1 conv=notrunc status=none
s0=$(sum "$work/corrupt.img")
run corrupt "$work/corrupt.img"
is "$rc" 5 "zeroed ext4 superblock: exit 5"
ok "corrupt: the message names the partition without a readable file system" \
    grep -q "/dev/sda1: no readable file system" "$work/corrupt.err"
is "$(sum "$work/corrupt.img")" "$s0" "corrupt disk unchanged"

# ---- an operating system we do not convert: inspection calls this FreeBSD
mkdir -p "$work/bsd/etc" "$work/bsd/bin" "$work/bsd/boot"
echo "# FreeBSD update" >"$work/bsd/etc/freebsd-update.conf"
echo "/dev/ada0p2 / ufs rw 1 1" >"$work/bsd/etc/fstab"
echo "FreeBSD" >"$work/bsd/bin/freebsd-version"
mke2fs -q -t ext4 -d "$work/bsd" "$work/bsd.img" 64M
s0=$(sum "$work/bsd.img")
run bsd "$work/bsd.img"
ok "FreeBSD-like guest: exit 4 (unsupported operating system), names the type" bash -c \
    '[ "$1" -eq 4 ] && grep -q "unsupported operating system type .freebsd." "$2"' _ "$rc" "$work/bsd.err"
is "$(sum "$work/bsd.img")" "$s0" "unsupported guest unchanged"

fi

# ---- dry run on mini-bios: the plan, nothing written
cp --sparse=always "$src" "$work/mini.img"
s0=$(sum "$work/mini.img")
run dry --dry-run --json "$work/mini.img"
is "$rc" 0 "dry run: exit 0"
is "$(sum "$work/mini.img")" "$s0" "dry run: the image is unchanged"
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
is "$(jget "$work/dry.out" '(j["dry_run"], j["applied"], j["change_count"])')" "(True, False, 4)" \
    "dry run: 4 changes planned, none applied"
is "$(jget "$work/dry.out" '(j["inspection"]["type"], j["inspection"]["root"], j["inspection"]["bootloader"], j["inspection"]["initramfs_tool"])')" \
    "('linux', '/dev/sda1', 'extlinux', 'none')" "dry run: inspection (linux, /dev/sda1, extlinux, no initramfs tool)"
is "$(jget "$work/dry.out" '[(k["version"], k["method"], k["status"]) for k in j["inspection"]["kernels"]]')" \
    "[('$FIXTURE_KERNEL', 'generic-append', 'would-add')]" "dry run: the kernel, generic path, would add"
is "$(jget "$work/dry.out" '[(c["before"].split()[0], c["after"].split()[0][:41]) for c in j["changes"] if c["path"] == "/etc/fstab"]')" \
    "[('/dev/sda1', 'UUID=$FIXTURE_ROOT_UUID'), ('/dev/sda2', 'UUID=${FIXTURE_ROOT_UUID%1}2')]" \
    "dry run: fstab's /dev/sda1 and /dev/sda2 (swap) by UUID"
is "$(jget "$work/dry.out" 'j["accel"]')" "tcg" "dry run: TCG chosen without being asked (no fast KVM here)"
