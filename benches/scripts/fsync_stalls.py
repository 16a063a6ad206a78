#!/usr/bin/env python3
"""How often the disk stalls a durable append: 4 KiB pwrite + fdatasync, one at a time, front to
back through a fallocated file, for a number of seconds. Prints p50/p99/p99.9/max in us and
every call slower than the threshold with its wall-clock time, so stalls can be matched against
a loadgen run's per-second intervals. Not a test; the file is deleted at the end.

Usage: benches/scripts/fsync_stalls.py DIR [SECONDS=15] [THRESHOLD_MS=5]
"""
import os
import sys
import time

FILE_BYTES = 1 << 30
BLOCK = 4096


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    path = os.path.join(sys.argv[1], "fsync_stalls.dat")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0
    threshold_us = 1000 * float(sys.argv[3]) if len(sys.argv) > 3 else 5000.0
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, FILE_BYTES)
        os.fsync(fd)
        buf = b"x" * BLOCK
        lat, stalls, pos = [], [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end and pos + BLOCK <= FILE_BYTES:
            t0 = time.perf_counter()
            os.pwrite(fd, buf, pos)
            os.fdatasync(fd)
            us = (time.perf_counter() - t0) * 1e6
            lat.append(us)
            pos += BLOCK
            if us > threshold_us:
                stalls.append(f"{time.strftime('%H:%M:%S', time.gmtime())} {us / 1000:.1f}ms")
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    n = len(lat)
    q = lambda f: lat[min(n - 1, int(n * f))]
    print(
        f"{n} write+fdatasync in {seconds:.0f} s: p50 {q(0.5):.0f} p99 {q(0.99):.0f} "
        f"p99.9 {q(0.999):.0f} max {lat[-1]:.0f} us; > {threshold_us / 1000:.0f} ms: "
        f"{len(stalls)} ({', '.join(stalls) or 'none'})"
    )


if __name__ == "__main__":
    main()
