#!/usr/bin/env python3
"""compare-used.py SRC COPY: is every used block of the raw disk SRC identical in the raw
disk COPY? An oracle independent of p2vkit's planner: partitions from sfdisk --json,
file system types from blkid, ext2/3/4 used blocks from dumpe2fs's free-block lists
(complemented per group), swap = its first page; everything else (space outside
partitions, other file systems) is compared whole. Needs root (loop devices for
dumpe2fs). Prints a summary; exit 0 identical, 1 different, 2 could not check."""
import json
import os
import re
import subprocess
import sys

CHUNK = 1 << 20


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def partitions(path):
    try:
        out = run("sfdisk", "--json", path)
    except subprocess.CalledProcessError:
        return 512, []
    t = json.loads(out)["partitiontable"]
    ss = t.get("sectorsize", 512)
    parts = []
    for p in t.get("partitions", []):
        if str(p.get("type", "")).lower() in ("5", "f", "85"):  # extended container
            parts.append((p["start"] * ss, p["size"] * ss, "extended"))
        else:
            parts.append((p["start"] * ss, p["size"] * ss, None))
    return ss, parts


def fstype(path, off, size):
    r = subprocess.run(["blkid", "-p", "-O", str(off), "-S", str(size), "-o", "value",
                        "-s", "TYPE", path], capture_output=True, text=True)
    return r.stdout.strip()


def ext_used(path, off, size):
    """Used byte ranges (relative to the partition) from dumpe2fs on a loop device."""
    dev = run("losetup", "-f", "--show", "-r", "--offset", str(off), "--sizelimit",
              str(size), path).strip()
    try:
        out = run("dumpe2fs", dev)
    finally:
        subprocess.run(["losetup", "-d", dev])
    bs = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    used = []
    for m in re.finditer(r"^Group \d+: \(Blocks (\d+)-(\d+)\).*?^\s+Free blocks: ?([^\n]*)$",
                         out, re.M | re.S):
        lo, hi = int(m.group(1)), int(m.group(2))
        free = []
        for item in m.group(3).split(","):
            item = item.strip()
            if not item:
                continue
            a, _, b = item.partition("-")
            free.append((int(a), int(b or a)))
        cur = lo
        for a, b in sorted(free):
            if a > cur:
                used.append((cur * bs, (a - cur) * bs))
            cur = max(cur, b + 1)
        if cur <= hi:
            used.append((cur * bs, (hi + 1 - cur) * bs))
    return used


def main():
    src, copy = sys.argv[1], sys.argv[2]
    size = os.path.getsize(src)
    if os.path.getsize(copy) != size:
        print(f"sizes differ: {size} vs {os.path.getsize(copy)}")
        return 1
    ss, parts = partitions(src)
    ranges = []          # (off, len) absolute, to compare
    covered = []
    notes = []
    for off, psize, kind in parts:
        covered.append((off, psize))
        if kind == "extended":
            ranges.append((off, min(psize, 1 << 20)))   # its EBRs live at its start
            notes.append(f"extended@{off}")
            continue
        t = fstype(src, off, psize)
        if t in ("ext2", "ext3", "ext4"):
            u = ext_used(src, off, psize)
            ranges += [(off + a, n) for a, n in u]
            notes.append(f"{t}@{off}: {sum(n for _, n in u)} used bytes")
        elif t == "swap":
            ranges.append((off, min(4096, psize)))
            notes.append(f"swap@{off}: header")
        else:
            ranges.append((off, psize))
            notes.append(f"{t or 'unknown'}@{off}: whole")
    # everything outside the partitions
    cur = 0
    for off, psize in sorted(covered):
        if off > cur:
            ranges.append((cur, off - cur))
        cur = max(cur, off + psize)
    if cur < size:
        ranges.append((cur, size - cur))
    total = 0
    bad = []
    with open(src, "rb") as a, open(copy, "rb") as b:
        for off, n in sorted(ranges):
            pos = off
            while pos < off + n:
                k = min(CHUNK, off + n - pos)
                a.seek(pos)
                b.seek(pos)
                if a.read(k) != b.read(k):
                    bad.append(pos)
                    if len(bad) > 20:
                        break
                pos += k
                total += k
    print(f"compared {total} bytes in {len(ranges)} ranges ({'; '.join(notes)})")
    if bad:
        print("differ at offsets (MiB-granular): " + ", ".join(str(x) for x in bad[:20]))
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (subprocess.CalledProcessError, OSError, AttributeError) as e:
        print(f"compare-used: could not check: {e}")
        sys.exit(2)
