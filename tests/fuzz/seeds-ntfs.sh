#!/bin/sh
# seeds-ntfs.sh DIR: a seed corpus for fuzz-ntfs. mkntfs makes small volumes (4 MiB, with
# 512-byte, 1 KiB and 4 KiB clusters, and one 2 MiB volume holding a few files written by
# ntfscp). A fresh volume's $Bitmap lies ~550 KiB in, behind $LogFile, where few mutations
# reach: each volume is also compacted by a short Python step into a ~20 KiB seed (the boot
# sector, the first 16 MFT records moved to 8 KiB in, $Bitmap moved behind them, the $MFT
# LCN and $Bitmap's runlist rewritten, the update sequence fixups redone), which is all the
# planner reads. One volume's real first 560 KiB is kept as it is.
set -eu
out=$1
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v mkntfs >/dev/null ||
    { echo "seeds-ntfs: mkntfs missing (apt-get install ntfs-3g)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "seeds-ntfs: python3 missing" >&2; exit 1; }

compact() { # SRC DST
    python3 - "$1" "$2" <<'EOF'
import struct, sys
src, dst = sys.argv[1], sys.argv[2]
img = open(src, 'rb').read()
bps = struct.unpack_from('<H', img, 0x0b)[0]
cl = bps * img[0x0d]
mft_lcn = struct.unpack_from('<Q', img, 0x30)[0]
cpr = struct.unpack_from('<b', img, 0x40)[0]
rec = cpr * cl if cpr > 0 else 1 << -cpr
mft = bytearray(img[mft_lcn * cl:mft_lcn * cl + 16 * rec])

def fixups(r, undo):
    ofs, cnt = struct.unpack_from('<HH', r, 4)
    usn = bytes(r[ofs:ofs + 2])
    for i in range(1, cnt):
        end, sav = i * 512 - 2, ofs + 2 * i
        if undo:
            r[end:end + 2] = r[sav:sav + 2]
        else:
            r[sav:sav + 2] = r[end:end + 2]
            r[end:end + 2] = usn

r6 = bytearray(mft[6 * rec:7 * rec])
fixups(r6, True)
pos = struct.unpack_from('<H', r6, 0x14)[0]
while True:
    t, l = struct.unpack_from('<II', r6, pos)
    if t == 0x80 and r6[pos + 9] == 0:
        break
    pos += l
runs = pos + struct.unpack_from('<H', r6, pos + 0x20)[0]
size = struct.unpack_from('<Q', r6, pos + 0x30)[0]
# the bitmap's bytes, through its runlist
data, p, lcn = b'', runs, 0
while r6[p]:
    ls, os_ = r6[p] & 15, r6[p] >> 4
    n = int.from_bytes(r6[p + 1:p + 1 + ls], 'little')
    lcn += int.from_bytes(r6[p + 1 + ls:p + 1 + ls + os_], 'little', signed=True)
    data += img[lcn * cl:(lcn + n) * cl]
    p += 1 + ls + os_
data = data[:size]
new_mft = -(-8192 // cl)
new_bmp = new_mft + -(-16 * rec // cl)
nclus = -(-len(data) // cl)
def le(v):
    b = v.to_bytes(8, 'little').rstrip(b'\0') or b'\0'
    return b + b'\0' if b[-1] & 0x80 else b
lb, ob = le(nclus), le(new_bmp)
rl = bytes([len(ob) << 4 | len(lb)]) + lb + ob + b'\0'
r6[runs:pos + l] = rl + bytes(pos + l - runs - len(rl))
fixups(r6, False)
mft[6 * rec:7 * rec] = r6
boot = bytearray(img[:bps])
struct.pack_into('<Q', boot, 0x30, new_mft)
o = bytearray(new_bmp * cl + nclus * cl)
o[0:bps] = boot
o[new_mft * cl:new_mft * cl + len(mft)] = mft
o[new_bmp * cl:new_bmp * cl + len(data)] = data
open(dst, 'wb').write(o)
EOF
}

for c in 512 1024 4096; do
    img=$tmp/v$c.img
    truncate -s 4M "$img"
    mkntfs -F -Q -q -c "$c" -L "seed$c" "$img" >/dev/null 2>&1
    compact "$img" "$out/compact-c$c.ntfs"
done
head -c $((560 * 1024)) "$tmp/v4096.img" > "$out/raw-c4096-head.ntfs"
# a volume with files: resident and non-resident data, a fuller bitmap
img=$tmp/files.img
truncate -s 2M "$img"
mkntfs -F -Q -q -c 512 -L files "$img" >/dev/null 2>&1
if command -v ntfscp >/dev/null; then
    echo small > "$tmp/small"
    head -c 300000 /dev/urandom > "$tmp/big"
    ntfscp -f "$img" "$tmp/small" small >/dev/null 2>&1 || true
    ntfscp -f "$img" "$tmp/big" big >/dev/null 2>&1 || true
fi
compact "$img" "$out/compact-files.ntfs"
