#!/bin/sh
# seeds-virtq.sh DIR: a seed corpus for fuzz-virtq (layout in fuzz-virtq.c's header): a
# well-formed read, a write and a flush on a 16-entry queue, and a chain with a loop.
set -eu
out=$1
mkdir -p "$out"
python3 - "$out" <<'X'
import struct, sys
out = sys.argv[1]
def seed(name, reqs, loop=False):
    hdr = bytes([4, 0]) + struct.pack("<HHHH", len(reqs), 0, 0, 0) + bytes(24)
    mem = bytearray(0x8000)
    d = 0
    for i, (typ, sector, length, write) in enumerate(reqs):
        base = 0x4000 + i * 0x1000
        struct.pack_into("<IIQ", mem, base, typ, 0, sector)
        descs = [(base, 16, 1, d + 1)]
        if length:
            descs.append((base + 0x100, length, 1 | (2 if write else 0), d + 2))
        descs.append((base + 0xf00, 1, 2, 0))
        for j, (a, l, f, n) in enumerate(descs):
            if loop and j == len(descs) - 1:
                f, n = f | 1, d
            struct.pack_into("<QIHH", mem, (d + j) * 16, a, l, f, n)
        struct.pack_into("<H", mem, 0x1004 + 2 * i, d)
        d += len(descs)
    struct.pack_into("<HH", mem, 0x1000, 0, len(reqs))
    open(f"{out}/{name}", "wb").write(hdr + bytes(mem))
seed("read", [(0, 0, 512, True)])
seed("write-flush", [(1, 8, 1024, False), (4, 0, 0, True)])
seed("loop", [(0, 2, 512, True)], loop=True)
X
