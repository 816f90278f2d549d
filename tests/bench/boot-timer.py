#!/usr/bin/env python3
"""boot-timer: run a command that boots a guest, time it to a console pattern, measure it.

  boot-timer.py [--pattern REGEX] [--timeout S] [--guest-mib N] -- COMMAND [ARG...]

The command's stdout is read as it comes (the guest's console). With --pattern, the clock
stops when the pattern shows (searched in the last 4 KiB, so a prompt without a newline
counts); the process's memory is read from /proc/PID/smaps at that moment; then the process
group is killed. Without --pattern the clock stops when the command exits. Prints one JSON
object: seconds, matched, exit (when it exited), rss_kib, guest_rss_kib (the resident part
of the largest private mapping of at least --guest-mib MiB: the guest's RAM),
overhead_kib (the rest) and, where debugfs shows the process's KVM VMs
(/sys/kernel/debug/kvm/PID-FD/), their counters kvm_exits, io_exits, mmio_exits.
"""
import json
import os
import re
import select
import signal
import subprocess
import sys
import time


def smaps(pid, guest_mib):
    total = guest = 0
    best = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            size = rss = 0
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    if size >= guest_mib * 1024 and size > best:
                        best, guest = size, rss
                    a, b = line.split()[0].split("-")
                    size = (int(b, 16) - int(a, 16)) // 1024
                    rss = 0
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
                    total += rss
            if size >= guest_mib * 1024 and size > best:
                best, guest = size, rss
    except OSError:
        pass
    return total, guest


def kvm_stats(pid):
    base = "/sys/kernel/debug/kvm"
    out = {}
    try:
        vms = [d for d in os.listdir(base) if d.startswith(f"{pid}-")]
    except OSError:
        return out
    for name, key in (("exits", "kvm_exits"), ("io_exits", "io_exits"),
                      ("mmio_exits", "mmio_exits")):
        total = 0
        for vm in vms:
            try:
                with open(os.path.join(base, vm, name)) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        if vms:
            out[key] = total
    return out


def main():
    args = sys.argv[1:]
    pattern, timeout, guest_mib = None, 600.0, 64
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt == "--pattern":
            pattern = re.compile(args.pop(0).encode())
        elif opt == "--timeout":
            timeout = float(args.pop(0))
        elif opt == "--guest-mib":
            guest_mib = int(args.pop(0))
        else:
            sys.exit(f"boot-timer: unknown option {opt}")
    if not args or args[0] != "--" or len(args) < 2:
        sys.exit("usage: boot-timer.py [--pattern RE] [--timeout S] [--guest-mib N] -- CMD...")
    cmd = args[1:]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    tail = b""
    res = {"matched": False}
    fd = p.stdout.fileno()
    while True:
        left = t0 + timeout - time.monotonic()
        if left <= 0:
            res["timeout"] = True
            break
        r, _, _ = select.select([fd], [], [], min(left, 0.05))
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                p.wait()
                res["exit"] = p.returncode
                break
            tail = (tail + chunk)[-4096:]
            if pattern and pattern.search(tail):
                res["matched"] = True
                break
    res["seconds"] = round(time.monotonic() - t0, 3)
    if p.poll() is None:
        total, guest = smaps(p.pid, guest_mib)
        res.update(rss_kib=total, guest_rss_kib=guest, overhead_kib=total - guest)
        res.update(kvm_stats(p.pid))
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    print(json.dumps(res))
    return 0 if (res["matched"] or (pattern is None and res.get("exit") is not None)) else 1


if __name__ == "__main__":
    sys.exit(main())
