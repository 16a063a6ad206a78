#!/usr/bin/env python3
"""Where an acks=all append waits: reads `perf script -F pid,time,event,trace` output of the
io_uring:io_uring_submit_req and io_uring:io_uring_complete tracepoints on stdin and prints,
for the process PID, the latency of its log writes and fdatasyncs, the share of time an
fdatasync was in flight, and for each write how long it waited from its completion until the
completion of the first fdatasync that STARTED after it (the engine's durability rule), and how
much of that was waiting for an fdatasync already in flight.

usage: perf script -i iou.data -F pid,time,event,trace | iou_waits.py PID
Log writes are the WRITE and WRITE_FIXED operations (glommio DMA writes from unregistered and
registered buffers); a broker's socket I/O does not go through them.
"""
import bisect
import re
import sys

pid = sys.argv[1]
WRITE_OPS = ("WRITE", "WRITE_FIXED")
submit_re = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+io_uring:io_uring_submit_req: .*req (\S+),.*opcode (\w+)")
complete_re = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+io_uring:io_uring_complete: .*req (\S+),")
submitted = {}
ops = []  # (opcode, submit s, complete s)
for line in sys.stdin:
    m = submit_re.match(line)
    if m:
        if m.group(1) == pid:
            submitted[m.group(3)] = (float(m.group(2)), m.group(4))
        continue
    m = complete_re.match(line)
    if m and m.group(3) in submitted:
        t0, op = submitted.pop(m.group(3))
        ops.append((op, t0, float(m.group(2))))


def q(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


def line(name, us):
    return f"{name}: n={len(us)} p50 {q(us, .5):.0f} us, p90 {q(us, .9):.0f} us, p99 {q(us, .99):.0f} us"


syncs = sorted((s, c) for op, s, c in ops if op == "FSYNC")
writes = sorted((s, c) for op, s, c in ops if op in WRITE_OPS)
if not syncs or not writes:
    print(f"iou_waits: no log writes and fdatasyncs traced for pid {pid}")
    sys.exit(0)
print(line("log writes", [(c - s) * 1e6 for s, c in writes]))
print(line("fdatasync", [(c - s) * 1e6 for s, c in syncs]))
span = max(c for _, c in syncs + writes) - min(s for s, _ in syncs + writes)
print(f"fdatasync in flight {100 * sum(c - s for s, c in syncs) / span:.0f}% of {span:.1f} s")
starts = [s for s, _ in syncs]
to_durable, behind = [], []
for _, done in writes:
    i = bisect.bisect_left(starts, done)
    if i == len(syncs):
        continue
    to_durable.append((syncs[i][1] - done) * 1e6)
    if i > 0 and syncs[i - 1][1] > done:
        behind.append((syncs[i - 1][1] - done) * 1e6)
print(line("write done -> covering fdatasync done", to_durable))
print(
    f"writes done while an earlier fdatasync was in flight: {len(behind)}/{len(to_durable)} "
    f"({100 * len(behind) / max(1, len(to_durable)):.0f}%); " + line("their wait for it", behind)
)
