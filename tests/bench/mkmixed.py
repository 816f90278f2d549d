#!/usr/bin/env python3
"""mkmixed.py SIZE PATH: a deterministic "mixed" raw disk for benchmarks and tests.

The disk is cut into 1 MiB stripes in a repeating pattern so every kind is spread over
the whole disk: a third random bytes (incompressible), a third zeros (half written
zeros, half holes), a third compressible text (words, ~3-4x with deflate). The size need
not be a multiple of anything: the tail is written too.
"""
import os
import random
import sys

MIB = 1 << 20


def main():
    size = int(sys.argv[1])
    path = sys.argv[2]
    rng = random.Random(20261125)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(2000)
    ]
    # 64 distinct 1 MiB text stripes, reused with an offset prefix so stripes differ
    texts = []
    for _ in range(64):
        out = []
        n = 0
        while n < MIB:
            line = " ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) + "\n"
            out.append(line)
            n += len(line)
        texts.append("".join(out).encode()[:MIB])
    with open(path + ".tmp", "wb") as f:
        f.truncate(size)
        off = 0
        i = 0
        while off < size:
            n = min(MIB, size - off)
            kind = i % 6
            if kind in (0, 3):  # random
                f.seek(off)
                f.write(rng.randbytes(n))
            elif kind == 1:  # written zeros
                f.seek(off)
                f.write(bytes(n))
            elif kind == 4:  # hole: nothing written
                pass
            else:  # text
                t = texts[(i // 6) % 64]
                stamp = b"stripe %d\n" % i
                f.seek(off)
                f.write((stamp + t)[:n])
            off += n
            i += 1
    os.rename(path + ".tmp", path)


if __name__ == "__main__":
    main()
