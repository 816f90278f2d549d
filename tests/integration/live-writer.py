#!/usr/bin/env python3
"""live-writer.py: a small "database server" writing to a mounted file system, for the
tests of p2v-agent --live (tests/integration/capture-live.sh).

usage: live-writer.py DIR LOG [--rate MBPS] [--stop FILE] [--max-seconds S] [--seed N]
                              [--keep-mb MB]

It writes to the file system mounted at DIR, and appends to LOG (which must live OUTSIDE
that file system) one line per durable write, only once fsync has returned, so that
"every write fsync'd before instant T is in an image frozen at T" can be checked
(tests/integration/live-check.sh IMAGE LOG T [PART_OFFSET_BYTES]).

What it writes
  DIR/w/NNNNNN  new files, 4 KiB .. 1 MiB (uniform, unaligned sizes), random content from
                a seeded RNG; each is written, fsync'd, closed, then the folder is fsync'd.
                Numbering continues after the highest file already in DIR/w.
  DIR/wal.log   fixed-size records appended in groups of 1..4 about every 50 ms, fsync'd
                after each group. A run on an existing wal.log continues its sequence
                (a torn tail is cut off first).
  To stay within the file system, the oldest files of DIR/w are deleted when they hold
  more than --keep-mb MB (default: 40% of the file system) or when less than 10% of it is
  free: the freed blocks get reused, as a live copy must handle.
  Paced to about --rate MB/s (10^6 bytes; default 4) in total; after a stall (a freeze)
  it resumes at that rate without a burst. A write to a frozen file system just blocks
  in the kernel until the thaw: nothing here times out.

WAL record format (512 bytes, little-endian; live-check.sh checks exactly this):
  offset  size  field
       0     4  magic b"P2VW"
       4     8  seq, u64: 0, 1, 2, ... consecutive from the start of wal.log
                (record k is at byte offset k * 512)
      12     8  time, f64: time.time() when the record was built
      20   488  padding: bytes from the seeded RNG
     508     4  CRC-32 (zlib.crc32, the gzip/PNG CRC) of bytes 0..507, u32

LOG format (one line each, fields separated by one space, times are time.time() with 6
decimals; the line is written and flushed at once):
  file <time-after-fsync> <name> <size> <sha256>
                name relative to DIR (w/NNNNNN); logged once the file and the folder
                were fsync'd
  wal <time-after-fsync> <seq>
                seq: the last record of a group, durable with all before it
  unlink <time-before-unlink> <name>
                logged BEFORE the file is deleted: a file with an unlink line before the
                cutover may be missing from the image; any other file logged before the
                cutover must be in it
  error <time> <message>
                a write, fsync, open... failed (EIO, EROFS, ENOSPC...): exit status 1
  stop <time> files=N wal=SEQ
                a clean stop (--stop FILE exists, --max-seconds passed, SIGTERM or
                SIGINT): exit status 0. N files written by this run, SEQ the last durable
                WAL seq (-1: none).
Nothing is printed on stdout.
"""

import argparse
import hashlib
import os
import random
import signal
import struct
import sys
import time
import zlib

REC_SIZE = 512
REC_MAGIC = b"P2VW"
REC_HEAD = struct.Struct("<4sQd")       # magic, seq, time: 20 bytes
REC_CRC = struct.Struct("<I")           # at REC_SIZE - 4
PAD_SIZE = REC_SIZE - REC_HEAD.size - REC_CRC.size
MIN_FILE = 4 * 1024
MAX_FILE = 1024 * 1024
WAL_INTERVAL = 0.05
CHUNK = 64 * 1024


def record(seq, rng):
    body = REC_HEAD.pack(REC_MAGIC, seq, time.time()) + rng.randbytes(PAD_SIZE)
    return body + REC_CRC.pack(zlib.crc32(body))


def record_ok(rec, seq):
    if len(rec) != REC_SIZE:
        return False
    magic, s, _ = REC_HEAD.unpack_from(rec)
    (crc,) = REC_CRC.unpack_from(rec, REC_SIZE - REC_CRC.size)
    return magic == REC_MAGIC and s == seq and crc == zlib.crc32(rec[:REC_SIZE - REC_CRC.size])


class Stop(Exception):
    pass


class Writer:
    def __init__(self, args):
        self.dir = args.dir
        self.wdir = os.path.join(args.dir, "w")
        self.rate = args.rate * 1e6
        self.stop_file = args.stop
        self.deadline = time.monotonic() + args.max_seconds
        self.rng = random.Random(args.seed)
        self.keep_mb = args.keep_mb
        self.log = open(args.log, "a", buffering=1)
        self.doing = "starting"
        self.stopping = False
        self.files = 0
        self.seq = -1              # last durable WAL seq
        self.live = []             # [(number, size)] of DIR/w, oldest first
        self.live_bytes = 0

    def say(self, kind, *fields):
        self.log.write(" ".join([kind, "%.6f" % time.time()] + [str(f) for f in fields]) + "\n")
        self.log.flush()

    def should_stop(self):
        return (self.stopping or time.monotonic() >= self.deadline
                or (self.stop_file is not None and os.path.exists(self.stop_file)))

    def fsync_dir(self, path):
        self.doing = "fsync of folder " + path
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_all(self, fd, data):
        view = memoryview(data)
        while view:
            n = os.write(fd, view[:CHUNK])
            view = view[n:]

    def setup(self):
        self.doing = "statvfs of " + self.dir
        st = os.statvfs(self.dir)
        self.capacity = st.f_blocks * st.f_frsize
        self.keep = (self.keep_mb * 1e6 if self.keep_mb is not None else 0.4 * self.capacity)
        if not os.path.isdir(self.wdir):
            self.doing = "mkdir " + self.wdir
            os.mkdir(self.wdir)
            self.fsync_dir(self.dir)
        self.doing = "listing " + self.wdir
        for name in os.listdir(self.wdir):
            if name.isdigit():
                self.live.append((int(name), os.stat(os.path.join(self.wdir, name)).st_size))
        self.live.sort()
        self.live_bytes = sum(s for _, s in self.live)
        self.next_file = self.live[-1][0] + 1 if self.live else 0

        wal = os.path.join(self.dir, "wal.log")
        self.doing = "open " + wal
        existed = os.path.exists(wal)
        self.wal = os.open(wal, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if not existed:
            self.fsync_dir(self.dir)
        # continue an existing WAL after its last intact record
        self.doing = "reading " + wal
        size = os.fstat(self.wal).st_size
        n = 0
        while (n + 1) * REC_SIZE <= size and record_ok(os.pread(self.wal, REC_SIZE, n * REC_SIZE), n):
            n += 1
        if n * REC_SIZE != size:
            self.doing = "truncating the torn tail of " + wal
            os.ftruncate(self.wal, n * REC_SIZE)
            os.fsync(self.wal)
        self.next_seq = n

    def new_file(self):
        num = self.next_file
        self.next_file += 1
        name = "w/%06d" % num
        path = os.path.join(self.dir, name)
        size = self.rng.randint(MIN_FILE, MAX_FILE)
        data = self.rng.randbytes(size)
        self.doing = "create " + path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self.doing = "write " + path
            self.write_all(fd, data)
            self.doing = "fsync " + path
            os.fsync(fd)
        finally:
            os.close(fd)
        self.fsync_dir(self.wdir)
        self.say("file", name, size, hashlib.sha256(data).hexdigest())
        self.files += 1
        self.live.append((num, size))
        self.live_bytes += size
        return size

    def wal_group(self):
        first = self.next_seq
        recs = b"".join(record(first + i, self.rng) for i in range(self.rng.randint(1, 4)))
        self.doing = "write wal.log"
        self.write_all(self.wal, recs)
        self.doing = "fsync wal.log"
        os.fsync(self.wal)
        self.next_seq = first + len(recs) // REC_SIZE
        self.seq = self.next_seq - 1
        self.say("wal", self.seq)
        return len(recs)

    def trim(self):
        deleted = False
        while self.live and (self.live_bytes > self.keep or self.avail() < 0.1 * self.capacity):
            num, size = self.live.pop(0)
            name = "w/%06d" % num
            self.say("unlink", name)
            self.doing = "unlink " + os.path.join(self.dir, name)
            os.unlink(os.path.join(self.dir, name))
            self.live_bytes -= size
            deleted = True
        if deleted:
            self.fsync_dir(self.wdir)

    def avail(self):
        self.doing = "statvfs of " + self.dir
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def sleep_until(self, when):
        while True:
            if self.should_stop():
                raise Stop()
            left = when - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def run(self):
        self.setup()
        t0 = time.monotonic()
        done = 0                       # bytes written since t0
        next_wal = t0
        while not self.should_stop():
            now = time.monotonic()
            due = t0 + done / self.rate      # when the byte budget allows the next write
            if due < now - 0.25:             # far behind (a freeze): no catch-up burst
                t0 += now - 0.25 - due
                due = now - 0.25
            if now >= next_wal:
                done += self.wal_group()
                next_wal = max(next_wal + WAL_INTERVAL, now)
            elif now >= due:
                self.trim()
                done += self.new_file()
            else:
                self.sleep_until(min(next_wal, due))


def main():
    p = argparse.ArgumentParser(description="a writer for the live-capture tests "
                                "(see the docstring for the log and WAL formats)")
    p.add_argument("dir")
    p.add_argument("log")
    p.add_argument("--rate", type=float, default=4.0, help="MB/s in total (default 4)")
    p.add_argument("--stop", metavar="FILE", help="stop once FILE exists")
    p.add_argument("--max-seconds", type=float, default=120.0, help="default 120")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-mb", type=float, help="delete the oldest files beyond this "
                   "(default: 40%% of the file system)")
    args = p.parse_args()
    if args.rate <= 0:
        p.error("--rate must be positive")
    if not os.path.isdir(args.dir):
        p.error("%s is not a folder" % args.dir)

    w = Writer(args)

    def on_signal(signum, frame):
        w.stopping = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        w.run()
    except Stop:
        pass
    except Exception as e:           # OSError mostly: EIO, EROFS, ENOSPC...
        msg = "%s: %s: %s" % (w.doing, type(e).__name__, e)
        w.say("error", " ".join(msg.split()))
        return 1
    w.say("stop", "files=%d" % w.files, "wal=%d" % w.seq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
