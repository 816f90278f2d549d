#!/bin/bash
# test-discover-plan.sh: libimager's discovery and planning on real disks, checked against
# outside tools. Disks built here: an MBR disk (ext4 with 1 KiB blocks, swap, an extended
# partition holding NTFS and random bytes), a GPT disk (ext4, NTFS, random bytes, free
# space and the backup GPT at the end), a disk with no partition table (ext4 with 4 KiB
# blocks on the whole disk) and copies of it with a corrupt superblock and with a journal
# to replay, a 4 GiB NTFS with every other cluster in use; then the mini-bios fixture as
# an image file and as a read-only loop device.
# Discovery must match blkid(8) and sfdisk(8); a copy holding only the planned extents of
# each disk (plan-tool copy: everything else reads as zeros) must pass e2fsck -fn and
# ntfsfix -n and give the same file trees (debugfs rdump, ntfscat) as the source.
. "$top_srcdir/tests/functions.sh"

[ "$(id -u)" -eq 0 ] || skip_all "needs root (loop devices, the mini-bios fixture)"
require_tool sfdisk mke2fs mkswap mkntfs ntfscp ntfscat ntfsls ntfsfix ntfsinfo debugfs e2fsck \
    blkid losetup python3 sha256sum cmp
tool=$top_builddir/tests/unit/imager/plan-tool
[ -x "$tool" ] || bail "plan-tool is not built (make check builds it)"

plan 44

t=$(tmpdir)
export LC_ALL=C
MiB=1048576

# facts FILE: "plan-tool show" lines; disk FILE FIELD and part FILE NUMBER FIELD read them
# (disk: 2 name 3 block 4 size 5 sector 6 pttype 7 whole-fstype; part: 3 start 4 size
# 5 fstype 6 label 7 uuid 8 type 9 extended 10 name)
facts() { "$tool" show "$2" >"$1" 2>&1; }
disk() { awk -F'\t' -v f="$2" '$1=="disk"{print $f}' "$1"; }
part() { awk -F'\t' -v n="$2" -v f="$3" '$1=="part" && $2==n {print $f}' "$1"; }
col() { awk -F'\t' -v f="$2" '$1=="part"{printf "%s%s", s, $f; s=" "} END{print ""}' "$1"; }

# a file tree to put on each file system
tree=$t/tree
mkdir -p "$tree/sub/deeper"
head -c 1500000 /dev/urandom >"$tree/big.bin"
head -c 70000 /dev/urandom >"$tree/sub/mid.bin"
echo "p2vkit plan test" >"$tree/sub/deeper/small.txt"
: >"$tree/empty"
ln -s sub/deeper/small.txt "$tree/link"
truncate -s 5M "$tree/sparse"
printf 'tail' >>"$tree/sparse"
mkdir "$tree/many"
for i in $(seq 0 39); do head -c 5000 /dev/urandom >"$tree/many/f$i"; done
# holes FS-SPEC: delete every other file of many/ so that the used blocks come in runs
holes() {
    for i in $(seq 1 2 39); do echo "rm /many/f$i"; done >"$t/holes.cmd"
    debugfs -w -f "$t/holes.cmd" "$1" >/dev/null 2>&1
}
# extents_in PLANFILE START SIZE: how many extents start inside [START, START + SIZE)
extents_in() {
    awk -v s="$2" -v n="$3" '$1=="extent" && $2 >= s && $2 < s + n {c++} END{print c+0}' "$1"
}

# check_ext IMG OFFSET: e2fsck -fn clean on the ext file system at OFFSET
check_ext() {
    e2fsck -fn "$1?offset=$2" >"$t/e2fsck.log" 2>&1 || { cat "$t/e2fsck.log"; return 1; }
}
# same_tree SRC COPY OFFSET: debugfs rdump of both gives identical, non-empty trees
same_tree() {
    local a b
    a=$(mktemp -d "$t/rd.XXXXXX") b=$(mktemp -d "$t/rd.XXXXXX")
    debugfs -R "rdump / $a" "$1?offset=$3" >/dev/null 2>&1 &&
        debugfs -R "rdump / $b" "$2?offset=$3" >/dev/null 2>&1 &&
        [ -d "$a/lost+found" ] && diff -r --no-dereference "$a" "$b"
}
# extract IMG OFFSET SIZE OUT: a partition's bytes as a file of its own (sparse)
extract() {
    dd if="$1" of="$4" bs=1M iflag=skip_bytes,count_bytes skip="$2" count="$3" conv=sparse \
        status=none
}
# check_plan PLANFILE DISKSIZE SECTOR: extents sorted, disjoint, aligned, inside the disk,
# summing to "bytes"
check_plan() {
    awk -v size="$2" -v sector="$3" '
        $1=="extent" { off=$2; len=$3
            if (len <= 0 || off < prev || off % sector || (len % sector && off + len != size) ||
                off + len > size) { print "bad extent", off, len; bad=1 }
            prev = off + len + 1; sum += len }
        $1=="bytes" { total=$2 }
        END { if (sum != total) { print "sum", sum, "!= bytes", total; bad=1 }; exit bad }' "$1"
}
# region PLANFILE KIND PART FIELD: a field of a region line (4 start, 5 size, 6 planned)
region() {
    awk -v k="$2" -v p="$3" -v f="$4" '$1=="region" && $2==k && $3==p {print $f; exit}' "$1"
}
# same_ranges SRC COPY PLANFILE KIND...: the regions of these kinds are byte-identical
same_ranges() {
    local src=$1 copy=$2 pf=$3 kind k p off size rest; shift 3
    while read -r k kind p off size rest; do
        [ "$k" = region ] || continue
        case " $* " in *" $kind "*) ;; *) continue ;; esac
        cmp -i "$off:$off" -n "$size" "$src" "$copy" || return 1
    done <"$pf"
}
# blkid_matches FACTS IMG: every non-extended partition's fstype|label|uuid is blkid's
blkid_matches() {
    local tag n start size fs label uuid type ext name want
    while IFS=$'\t' read -r tag n start size fs label uuid type ext name; do
        [ "$tag" = part ] && [ "$ext" = 0 ] || continue
        want=$(blkid -p -O "$start" -S "$size" -o export "$2" 2>/dev/null |
            awk -F= '$1=="TYPE"{t=$2} $1=="LABEL"{l=$2} $1=="UUID"{u=$2} END{print t"|"l"|"u}')
        [ "$want" = "$fs|$label|$uuid" ] ||
            { echo "partition $n: blkid '$want', discovery '$fs|$label|$uuid'"; return 1; }
    done <"$1"
}
# table_matches FACTS IMG: number, start, size, type (MBR byte or GPT GUID) and GPT name
# of each partition as sfdisk -d says
table_matches() {
    sfdisk -d "$2" | awk -v OFS='\t' '
        function val(line, key,   v) {
            if (!match(line, key "= *[^,]*")) return ""
            v = substr(line, RSTART + length(key) + 1, RLENGTH - length(key) - 1)
            gsub(/ /, "", v); return v }
        function hex(s,   i, n) {
            n = 0; s = tolower(s)
            for (i = 1; i <= length(s); i++)
                n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
            return n }
        /^\// { no = $1; sub(/.*[^0-9]/, "", no)
            type = val($0, "type"); name = ""
            if (match($0, /name="[^"]*"/)) name = substr($0, RSTART + 6, RLENGTH - 7)
            type = length(type) <= 2 ? sprintf("0x%02x", hex(type)) : tolower(type)
            print no, val($0, "start") * 512, val($0, "size") * 512, type, name }' |
        sort >"$t/want.tab"
    awk -F'\t' -v OFS='\t' '$1=="part"{print $2, $3, $4, $8, $10}' "$1" | sort >"$t/got.tab"
    diff "$t/want.tab" "$t/got.tab"
}

# ---------------------------------------------------------------- an MBR disk
mbr=$t/mbr.img
truncate -s 64M "$mbr"
sfdisk -q "$mbr" <<'EOF' >/dev/null
label: dos
start=2048, size=40960, type=83
size=16384, type=82
type=5
size=32768, type=7
size=8192, type=83
EOF
# start or size (FIELD 1 or 2) of partition N in bytes, from sfdisk
psect() { sfdisk -d "$mbr" | sed -n "s|^$mbr$1 : start= *\([0-9]*\), size= *\([0-9]*\).*|\\$2|p"; }
P1=$(($(psect 1 1) * 512)) P2=$(($(psect 2 1) * 512)) P5=$(($(psect 5 1) * 512))
P6=$(($(psect 6 1) * 512)) S5=$(($(psect 5 2) * 512)) S6=$(($(psect 6 2) * 512))
mke2fs -q -t ext4 -b 1024 -E "offset=$P1,nodiscard" -d "$tree" -L mbr-root \
    -U 6d627200-0000-4000-8000-000000000001 "$mbr" 20M
holes "$mbr?offset=$P1"
truncate -s 8M "$t/swap.img"
mkswap -q -L mbr-swap -U 6d627200-0000-4000-8000-000000000002 "$t/swap.img" >/dev/null
dd if="$t/swap.img" of="$mbr" bs=1M seek="$P2" oflag=seek_bytes conv=notrunc,sparse status=none
# NTFS made in a file of its own, filled with ntfscp, then placed into the partition
mkntfs_in() { # FILE SIZE LABEL
    truncate -s "$2" "$1"
    mkntfs -F -Q -q -L "$3" "$1" >/dev/null 2>&1 &&
        ntfscp -f "$1" "$tree/big.bin" big.bin >/dev/null 2>&1 &&
        ntfscp -f "$1" "$tree/sub/deeper/small.txt" small.txt >/dev/null 2>&1
}
mkntfs_in "$t/ntfs1.img" "$S5" mbr-ntfs || bail "mkntfs/ntfscp failed"
dd if="$t/ntfs1.img" of="$mbr" bs=1M seek="$P5" oflag=seek_bytes conv=notrunc,sparse status=none
head -c "$S6" /dev/urandom | dd of="$mbr" bs=1M seek="$P6" oflag=seek_bytes conv=notrunc status=none
mbr_sum=$(sha256sum <"$mbr")

"$tool" discover "$mbr" >"$t/mbr.json" 2>&1
ok "mbr: discovery JSON parses" \
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$t/mbr.json"
facts "$t/mbr.tab" "$mbr"
is "$(disk "$t/mbr.tab" 6) $(col "$t/mbr.tab" 2)" "dos 1 2 3 5 6" \
    "mbr: pttype dos, partitions 1 2 3 5 6"
ok "mbr: starts, sizes and type bytes as sfdisk says" table_matches "$t/mbr.tab" "$mbr"
is "$(col "$t/mbr.tab" 9)" "0 0 1 0 0" "mbr: partition 3 is the extended container"
ok "mbr: fstype, label, uuid as blkid says" blkid_matches "$t/mbr.tab" "$mbr"
is "$(col "$t/mbr.tab" 5)" "ext4 swap  ntfs " "mbr: ext4, swap, ntfs found"

"$tool" plan "$mbr" >"$t/mbr.plan"
ok "mbr: plan extents sorted, aligned, inside the disk" check_plan "$t/mbr.plan" 67108864 512
is "$(region "$t/mbr.plan" swap 2 6)" 4096 "mbr: swap planned as its 4096-byte header"
ext_planned=$(region "$t/mbr.plan" ext 1 6)
n=$(extents_in "$t/mbr.plan" "$P1" $((20 * MiB)))
ok "mbr: ext4 planned ${ext_planned:-?} of 20 MiB (under half) in $n runs" \
    test "${ext_planned:-0}" -gt 0 -a "${ext_planned:-0}" -lt $((10 * MiB)) -a "$n" -ge 10
ntfs_planned=$(region "$t/mbr.plan" ntfs 5 6)
ok "mbr: ntfs planned ${ntfs_planned:-?} of $S5 (under half)" \
    test "${ntfs_planned:-0}" -gt 1500000 -a "${ntfs_planned:-0}" -lt $((S5 / 2))
is "$(region "$t/mbr.plan" all 6 6)" "$S6" "mbr: unknown content planned whole"
ok "mbr: the EBR area of the extended partition is read" \
    grep -q "^region outside 0 $((P5 - MiB)) $MiB $MiB inside extended partition 3" "$t/mbr.plan"

"$tool" copy "$mbr" "$t/mbr.copy"
ok "mbr: copy of the planned extents passes e2fsck -fn" check_ext "$t/mbr.copy" "$P1"
ok "mbr: ext4 tree of the copy is the source's" same_tree "$mbr" "$t/mbr.copy" "$P1"
extract "$t/mbr.copy" "$P5" "$S5" "$t/ntfs1.copy"
ok "mbr: ntfsfix -n passes on the copy's NTFS" ntfsfix -n "$t/ntfs1.copy"
ok "mbr: ntfscat of the copy gives the files written" \
    bash -c "ntfscat '$t/ntfs1.copy' big.bin | cmp - '$tree/big.bin' &&
             ntfscat '$t/ntfs1.copy' small.txt | cmp - '$tree/sub/deeper/small.txt' &&
             diff <(ntfsls -a -l '$t/ntfs1.img') <(ntfsls -a -l '$t/ntfs1.copy')"
is "$(blkid -p -O "$P2" -S $((8 * MiB)) -o value -s UUID "$t/mbr.copy")" \
    6d627200-0000-4000-8000-000000000002 "mbr: the copy's swap header is intact"
ok "mbr: tables, EBRs and unknown content copied byte for byte" \
    same_ranges "$mbr" "$t/mbr.copy" "$t/mbr.plan" outside all

"$tool" plan --all-blocks "$mbr" >"$t/mbr-all.plan"
is "$(grep -c '^extent' "$t/mbr-all.plan") $(grep '^extent' "$t/mbr-all.plan")" \
    "1 extent 0 67108864" "mbr: --all-blocks is one extent of the whole disk"
is "$(sha256sum <"$mbr")" "$mbr_sum" "mbr: the source is unchanged"
if command -v strace >/dev/null; then
    strace -f -o "$t/strace.log" -e trace=open,openat "$tool" plan "$mbr" >/dev/null 2>&1
    is "$(grep -F "$mbr" "$t/strace.log" | grep -c -E 'O_WRONLY|O_RDWR')" 0 \
        "mbr: the source is never opened for writing (strace)"
else
    ok "mbr: the source is never opened for writing # SKIP strace is not installed"
fi

# NTFS whose $Bitmap record is unreadable: blkid still sees NTFS, the region is read whole
le() { od -An -t"u$2" -j "$1" -N "$2" "$mbr" | tr -d ' '; } # OFFSET SIZE: a little-endian integer
cluster=$(($(le $((P5 + 11)) 2) * $(le $((P5 + 13)) 1)))
cp --sparse=always "$mbr" "$t/badntfs.img"
rec6=$((P5 + $(le $((P5 + 48)) 8) * cluster + 6 * 1024)) # MFT record 6 (1 KiB records)
printf 'BAAD' | dd of="$t/badntfs.img" bs=1 seek="$rec6" conv=notrunc status=none
"$tool" plan "$t/badntfs.img" >"$t/badntfs.plan" 2>&1
ok "mbr: NTFS with a broken \$Bitmap record is read whole, the note says why" \
    grep -q "^region all 5 $P5 $S5 $S5 NTFS: MFT record 6 has no FILE signature" "$t/badntfs.plan"

# ---------------------------------------------------------------- a GPT disk
gpt=$t/gpt.img
truncate -s 64M "$gpt"
sfdisk -q "$gpt" <<'EOF' >/dev/null
label: gpt
start=2048, size=16M, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="linux root"
size=20M, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="basic data"
size=4M, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=random
EOF
G1=$((2048 * 512)) G2=$(((2048 + 32768) * 512)) G3=$(((2048 + 32768 + 40960) * 512))
mke2fs -q -t ext4 -E "offset=$G1,nodiscard" -d "$tree" -L gpt-root "$gpt" 16M
holes "$gpt?offset=$G1"
mkntfs_in "$t/ntfs2.img" $((20 * MiB)) gpt-ntfs || bail "mkntfs/ntfscp failed"
dd if="$t/ntfs2.img" of="$gpt" bs=1M seek="$G2" oflag=seek_bytes conv=notrunc,sparse status=none
head -c $((4 * MiB)) /dev/urandom |
    dd of="$gpt" bs=1M seek="$G3" oflag=seek_bytes conv=notrunc status=none

facts "$t/gpt.tab" "$gpt"
is "$(disk "$t/gpt.tab" 6) $(col "$t/gpt.tab" 5)" "gpt ext4 ntfs " \
    "gpt: pttype gpt, ext4, ntfs, unknown"
ok "gpt: starts, sizes, type GUIDs and names as sfdisk says" table_matches "$t/gpt.tab" "$gpt"
ok "gpt: fstype, label, uuid as blkid says" blkid_matches "$t/gpt.tab" "$gpt"
"$tool" plan "$gpt" >"$t/gpt.plan"
"$tool" copy "$gpt" "$t/gpt.copy"
ok "gpt: plan extents sorted, aligned, inside the disk" check_plan "$t/gpt.plan" 67108864 512
ok "gpt: copy passes e2fsck -fn and has the source's tree" \
    eval "check_ext '$t/gpt.copy' '$G1' && same_tree '$gpt' '$t/gpt.copy' '$G1'"
extract "$t/gpt.copy" "$G2" $((20 * MiB)) "$t/ntfs2.copy"
ok "gpt: the copy's NTFS passes ntfsfix -n and holds the files" \
    bash -c "ntfsfix -n '$t/ntfs2.copy' && ntfscat '$t/ntfs2.copy' big.bin | cmp - '$tree/big.bin'"
ok "gpt: both GPTs, free space and unknown content copied byte for byte" \
    same_ranges "$gpt" "$t/gpt.copy" "$t/gpt.plan" outside all
e=$(region "$t/gpt.plan" ext 1 6) n=$(region "$t/gpt.plan" ntfs 2 6)
ok "gpt: ext4 planned ${e:-?} of 16 MiB, ntfs ${n:-?} of 20 MiB" \
    test "${e:-0}" -gt 0 -a "${e:-0}" -lt $((8 * MiB)) -a \
        "${n:-0}" -gt 0 -a "${n:-0}" -lt $((10 * MiB))

# ---------------------------------------------------------------- no partition table
whole=$t/whole.img
truncate -s 48M "$whole"
mke2fs -q -t ext4 -b 4096 -E nodiscard -d "$tree" -L whole "$whole"
holes "$whole"
facts "$t/whole.tab" "$whole"
is "[$(disk "$t/whole.tab" 6)] $(disk "$t/whole.tab" 7) $(grep -c '^part' "$t/whole.tab")" \
    "[] ext4 0" "whole disk: no table, ext4 on the whole disk"
"$tool" plan "$whole" >"$t/whole.plan"
planned=$(region "$t/whole.plan" ext 0 6)
n=$(extents_in "$t/whole.plan" 0 $((48 * MiB)))
ok "whole disk: ext4 planned ${planned:-?} of 48 MiB in $n runs" \
    test "${planned:-0}" -gt 0 -a "${planned:-0}" -lt $((16 * MiB)) -a "$n" -ge 10
"$tool" copy "$whole" "$t/whole.copy"
ok "whole disk: copy passes e2fsck -fn and has the source's tree" \
    eval "check_ext '$t/whole.copy' 0 && same_tree '$whole' '$t/whole.copy' 0"

# corrupt superblock: blkid still says ext4, libext2fs refuses it
cp --sparse=always "$whole" "$t/bad.img"
debugfs -w -R "ssv blocks_per_group 0" "$t/bad.img" >/dev/null 2>&1
"$tool" plan "$t/bad.img" >"$t/bad.plan" 2>&1
is "$(awk '$1=="region"{print $2, $3, $4, $5, $6}' "$t/bad.plan")" "all 0 0 50331648 50331648" \
    "corrupt ext4 superblock: the region falls back to reading all"
ok "corrupt ext4 superblock: the note says why" \
    grep -q "^region all 0 .*ext4 unreadable (.*superblock" "$t/bad.plan"

# a journal not replayed: blocks it allocated are free in the on-disk bitmaps
cp --sparse=always "$whole" "$t/recover.img"
debugfs -w -R "feature needs_recovery" "$t/recover.img" >/dev/null 2>&1
"$tool" plan "$t/recover.img" >"$t/recover.plan" 2>&1
ok "ext4 whose journal needs recovery: read all" \
    grep -q "^region all 0 0 50331648 50331648 ext4: journal needs recovery" "$t/recover.plan"

# ---------------------------------------------------------------- a fragmented volume
# NTFS of 4 GiB in 512-byte clusters with every other cluster in use: 4 Mi runs, more than
# a region may list (IMAGER_REGION_EXTENTS_MAX), so nearby runs are joined
frag=$t/frag.img
truncate -s 4G "$frag"
mkntfs -F -Q -q -c 512 "$frag" >/dev/null 2>&1
lcn=$(ntfsinfo -v -i 6 "$frag" | awk '/Runlist:/ {getline; print $2; exit}')
head -c $((1 << 20)) /dev/zero | tr '\0' 'U' |
    dd of="$frag" bs=1M seek=$((lcn * 512)) oflag=seek_bytes conv=notrunc status=none
"$tool" plan "$frag" >"$t/frag.plan"
is "$(awk '$1=="bytes"{print $2, $4}' "$t/frag.plan") $(grep -c 'fragmented' "$t/frag.plan")" \
    "4294967296 1 1" "fragmented ntfs: 4 Mi one-cluster runs joined into one extent"

# ---------------------------------------------------------------- the mini-bios fixture
fx=$(fixture mini-bios)
facts "$t/fx.tab" "$fx"
is "$(disk "$t/fx.tab" 6) $(col "$t/fx.tab" 5) $(col "$t/fx.tab" 6)" \
    "dos ext4 swap mini-root swap" \
    "mini-bios image: dos, ext4 + swap"
FP1=$(part "$t/fx.tab" 1 3)
"$tool" plan "$fx" >"$t/fx.plan"
"$tool" copy "$fx" "$t/fx.copy"
ok "mini-bios image: copy passes e2fsck -fn" check_ext "$t/fx.copy" "$FP1"
ok "mini-bios image: the copy's tree is the source's" same_tree "$fx" "$t/fx.copy" "$FP1"

loop=$(losetup -f --show -r "$fx") || bail "losetup failed"
trap 'losetup -d "$loop" 2>/dev/null; _tap_exit' EXIT
facts "$t/loop.tab" "$loop"
is "$(head -1 "$t/loop.tab" | cut -f2-6 | tr '\t' ' ') $(col "$t/loop.tab" 5)" \
    "${loop#/dev/} 1 268435456 512 dos ext4 swap" \
    "mini-bios loop device: block device, size, sector size, dos, ext4 + swap"
"$tool" plan "$loop" >"$t/loop.plan"
is "$(grep -v '^region' "$t/loop.plan" | sha256sum)" \
    "$(grep -v '^region' "$t/fx.plan" | sha256sum)" \
    "mini-bios loop device: the same extents as the image file"
"$tool" copy "$loop" "$t/loop.copy"
ok "mini-bios loop device: copy passes e2fsck -fn, tree is the source's" \
    eval "check_ext '$t/loop.copy' '$FP1' && same_tree '$fx' '$t/loop.copy' '$FP1'"
"$tool" list >"$t/list" 2>&1
ok "local disks: listed, without loop devices" eval "! grep -q '^/dev/loop' '$t/list'"
losetup -d "$loop"
trap _tap_exit EXIT
