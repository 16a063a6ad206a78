#!/usr/bin/env bash
# Issue 3 benchmark: produce throughput, latency, 10,000 partitions and resident memory of the
# `ringmq` broker, driven by `ringmq-loadgen`. Not a test: it prints figures, it asserts nothing.
#
# Broker: 1 shard (`--cores 1`) pinned to CPU $BROKER_CPU; loadgen: 1 producer pinned to CPU
# $LOADGEN_CPU; 1 KiB records; producers only (`--consumers 0`). Every figure is taken $REPS
# times and reported as median [min..max], with the 1-minute load average of each run, because
# the machine is shared and the figures are noisy. Phases: raw loopback TCP; 16 partitions (max
# acks=1/all, then open loop at half of each max, each open-loop run once the active segment is
# zero-filled (`wait_zero_ahead` in lib.sh), each acks=all one followed by the disk alone at the
# same byte rate (`ringmq-disk-write`, no broker: the floor under it), then one extra acks=all run traced with perf's
# io_uring tracepoints to show where appends wait); 10,000 partitions (creation time, idle RSS,
# max acks=1 interleaved with 16-partition runs on the same broker); the 16-partition acks=1
# load on `--storage memory` (no disk); an fdatasync probe of the disk at start and end.
#
# Usage: benches/scripts/broker_produce.sh            (builds release binaries first)
#        SKIP_BUILD=1 benches/scripts/broker_produce.sh
# Knobs (environment): REPS (3), WARMUP (2s), DURATION (5s, closed-loop runs), LAT_DURATION
# (10s, open-loop runs), LAT_LINGER_MS (0: linger of the open-loop runs), BROKER_CPU (0),
# LOADGEN_CPU (1), IDLE_SECONDS (5), OUT_DIR (a fresh /tmp dir), MAX_SECONDS (900: no new run
# starts past this; each run has its own 120 s timeout), BUILD_TIMEOUT (1500 s), IOU_TRACE (1),
# BROKER_ARGS (extra flags for every broker started, e.g. "--iowq-cpus others").
# Needs: jq, taskset, python3; perf (root) for the io_uring trace (optional).
# Everything it writes (loadgen --json reports, stdout, broker logs, summary.txt) is in OUT_DIR.
set -euo pipefail

REPS=${REPS:-3}
WARMUP=${WARMUP:-2s}
DURATION=${DURATION:-5s}
LAT_DURATION=${LAT_DURATION:-10s}
LAT_LINGER_MS=${LAT_LINGER_MS:-0} # open-loop runs: no deliberate client-side batching delay
BROKER_CPU=${BROKER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
MAX_SECONDS=${MAX_SECONDS:-900}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1500}
RUN_TIMEOUT=120 # one loadgen run: warm-up + duration + drain is well under this
IDLE_SECONDS=${IDLE_SECONDS:-5}  # idle time before reading VmRSS
IOU_TRACE=${IOU_TRACE:-1} # 0: skip the io_uring trace of one extra acks=all run (needs perf, root)
BIG_PARTITIONS=10000

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$REPO/target/release"
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ringmq-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

# shellcheck source=lib.sh
source "$REPO/benches/scripts/lib.sh"
cleanup() {
    kill_broker
    rm -rf "$OUT_DIR"/data-*
}
trap cleanup EXIT

check_deadline() {
    if ((SECONDS > MAX_SECONDS)); then
        say "ABORTED: past MAX_SECONDS=$MAX_SECONDS (figures so far are in $OUT_DIR)"
        exit 3
    fi
}

# ---- machine ---------------------------------------------------------------------------------
say "ringmq issue-3 produce benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "machine: nproc=$(nproc) kernel=$(uname -r) cpu='$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')' mem=$(awk '/MemTotal/{print $2" kB"}' /proc/meminfo)"
say "uptime at start: $(uptime)"
say "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') (working tree may be dirty)"
say "broker args: ${BROKER_ARGS:-none}"
say "out dir: $OUT_DIR"

# ---- build -----------------------------------------------------------------------------------
build_release "$REPO" "$BUILD_TIMEOUT"
build_disk_write "$REPO" "$BUILD_TIMEOUT"
SECONDS=0 # the benchmark's own time budget starts after the build
say "binaries: $(ls -l --time-style=+%H:%M "$BIN/ringmq" "$BIN/ringmq-loadgen" | awk '{print $7, $6}' | tr '\n' ' ')"

# ---- helpers ---------------------------------------------------------------------------------
STORAGE_ARGS=()
read -r -a EXTRA_BROKER_ARGS <<<"${BROKER_ARGS:-}"
# start_fresh NAME: a broker on an empty OUT_DIR/data-NAME, with STORAGE_ARGS and BROKER_ARGS.
start_fresh() {
    rm -rf "$OUT_DIR/data-$1"
    start_broker "$1" "$OUT_DIR/data-$1" "${STORAGE_ARGS[@]}" "${EXTRA_BROKER_ARGS[@]}"
}
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$BROKER_PID/status"; }
# fdatasync latency of 4 KiB writes in the data directory's file system, right now: the disk is
# shared too, and acks=all latency cannot beat it.
fsync_probe() {
    python3 - "$OUT_DIR/fsync-probe.dat" <<'PY' 2>/dev/null || echo "fsync probe: python3 unavailable"
import os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
lat = []
for i in range(200):
    os.pwrite(fd, b"x" * 4096, (i % 64) * 4096)
    t = time.perf_counter()
    os.fdatasync(fd)
    lat.append((time.perf_counter() - t) * 1e6)
os.close(fd)
os.unlink(path)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"fdatasync 4 KiB x200: p50 {q(.5):.0f} us, p99 {q(.99):.0f} us, max {lat[-1]:.0f} us")
PY
}

# lg NAME ARGS...: one loadgen run against the current broker, producers only, pinned.
# Writes NAME.json, NAME.txt and NAME.meta (load average, broker CPU and run-queue wait).
lg() {
    local name=$1
    shift
    check_deadline
    loadgen_run "$name" "$RUN_TIMEOUT" --producers 1 --consumers 0 --warmup "$WARMUP" "$@"
    log "$name: $(jq -r '.results.produce | "\(.mb_per_s) MB/s \(.records_per_s) rec/s p99 \(.latency.p99_us)us"' "$OUT_DIR/$name.json" 2>/dev/null || echo 'no report') ($(cat "$OUT_DIR/$name.meta"))"
}

cpus() { for i in $(seq 1 "$REPS"); do sed -E 's/.*broker_cpu_ms=([0-9-]+) broker_runq_wait_ms=([0-9-]+).*/\1\/\2/' "$OUT_DIR/${1}_$i.meta"; done | tr '\n' ' '; }

FSYNC_START=$(fsync_probe)
# ---- 1. loopback baseline --------------------------------------------------------------------
for i in $(seq 1 "$REPS"); do
    check_deadline
    l=$(load1)
    timeout 60 "$BIN/ringmq-loadgen" --raw --cores "$BROKER_CPU,$LOADGEN_CPU" --warmup 1s \
        --duration 3s --json "$OUT_DIR/raw_$i.json" >"$OUT_DIR/raw_$i.txt" 2>&1 || true
    echo "load1=$l rc=0 wall_ms=0 broker_cpu_ms=0 broker_runq_wait_ms=0" >"$OUT_DIR/raw_$i.meta"
    log "raw $i: $(jq -r '.raw.mb_per_s' "$OUT_DIR/raw_$i.json" 2>/dev/null) MB/s"
done

# ---- 2. 16 partitions: max throughput, acks=1 and acks=all (interleaved) ---------------------
start_fresh p16
create_topic t16 16
sleep "$IDLE_SECONDS"
RSS16_IDLE=$(rss_kib)
for i in $(seq 1 "$REPS"); do
    lg max16_acks1_$i --topic t16 --rate max --acks 1 --duration "$DURATION"
    lg max16_acksall_$i --topic t16 --rate max --acks all --duration "$DURATION"
done

# ---- 3. latency at half the max rate (each acks level at half its own max), open loop --------
MAX1=$(median max16_acks1 '.results.produce.records_per_s')
MAXALL=$(median max16_acksall '.results.produce.records_per_s')
HALF1=$(awk -v m="$MAX1" 'BEGIN {printf "%d", m / 2}')
HALFALL=$(awk -v m="$MAXALL" 'BEGIN {printf "%d", m / 2}')
for i in $(seq 1 "$REPS"); do
    # Each run on a zero-filled active segment, as on a broker up for a moment (lib.sh).
    wait_zero_ahead "$OUT_DIR/data-p16" "${EXTRA_BROKER_ARGS[@]}"
    lg lat16_acksall_$i --topic t16 --rate "$HALFALL" --acks all --duration "$LAT_DURATION" --linger-ms "$LAT_LINGER_MS"
    # The disk alone at the same byte rate, in the same minutes: the floor under that run.
    disk_floor disk_acksall_$i "$HALFALL" "$LAT_DURATION"
    wait_zero_ahead "$OUT_DIR/data-p16" "${EXTRA_BROKER_ARGS[@]}"
    lg lat16_acks1_$i --topic t16 --rate "$HALF1" --acks 1 --duration "$LAT_DURATION" --linger-ms "$LAT_LINGER_MS"
done
# One more acks=all run at half max, not among the measured ones: io_uring tracepoints show
# where an append waits (its write, the fdatasync in flight, then the one that covers it).
IOU_SUMMARY="skipped (IOU_TRACE=0, or perf missing)"
if [[ "$IOU_TRACE" != 0 ]] && command -v perf >/dev/null; then
    lg iou16_acksall --topic t16 --rate "$HALFALL" --acks all --duration "$LAT_DURATION" --linger-ms "$LAT_LINGER_MS" &
    IOU_LG=$!
    sleep 4 # past the warm-up
    perf record -a -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete \
        -o "$OUT_DIR/iou16.data" -- sleep 4 >/dev/null 2>&1 || true
    wait "$IOU_LG" || true
    IOU_SUMMARY=$(perf script -i "$OUT_DIR/iou16.data" -F pid,time,event,trace 2>/dev/null |
        python3 "$REPO/benches/scripts/iou_waits.py" "$BROKER_PID" 2>&1 | sed 's/^/  /') || true
    rm -f "$OUT_DIR/iou16.data"
fi
sleep "$IDLE_SECONDS"
RSS16_LOADED=$(rss_kib)
stop_broker

# ---- 4/5. 10,000 partitions: creation time, idle RSS, max throughput acks=1 -------------------
start_fresh p10k
RSS10K_EMPTY=$(rss_kib)
t0=$(date +%s%N)
create_topic t10k "$BIG_PARTITIONS"
CREATE10K_MS=$((($(date +%s%N) - t0) / 1000000))
sleep "$IDLE_SECONDS"
RSS10K_IDLE=$(rss_kib)
# Interleave the 16-partition control on the same broker so the ratio shares the machine's mood.
create_topic t16 16
for i in $(seq 1 "$REPS"); do
    lg max10k_acks1_$i --topic t10k --rate max --acks 1 --duration "$DURATION"
    lg max16b_acks1_$i --topic t16 --rate max --acks 1 --duration "$DURATION"
done
sleep "$IDLE_SECONDS"
RSS10K_TOUCHED=$(rss_kib)
stop_broker

# ---- the same 16-partition load on `--storage memory` (no disk: network + protocol + broker) ---
STORAGE_ARGS=(--storage memory)
start_fresh mem
STORAGE_ARGS=()
create_topic t16 16
for i in $(seq 1 "$REPS"); do
    lg memmax16_acks1_$i --topic t16 --rate max --acks 1 --duration "$DURATION"
    lg memlat16_acks1_$i --topic t16 --rate "$HALF1" --acks 1 --duration "$DURATION" --linger-ms "$LAT_LINGER_MS"
done
stop_broker
FSYNC_END=$(fsync_probe)

# ---- summary ---------------------------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
M10K=$(median max10k_acks1 '.results.produce.mb_per_s')
M16=$(median max16_acks1 '.results.produce.mb_per_s')
M16B=$(median max16b_acks1 '.results.produce.mb_per_s')
RAWM=$(median raw '.raw.mb_per_s')
P99ALL=$(median lat16_acksall '.results.produce.latency.p99_us')
P='.results.produce'
say ""
say "figures: median [min..max] over $REPS runs; load1 = 1-minute load average at each run's start;"
say "cpu/wait = broker CPU ms / broker run-queue wait ms during each run (schedstat). NOISY: shared machine."
say ""
printf '%-34s %-28s %-22s %s\n' "measurement" "MB/s" "records/s" "load1 | broker cpu/wait ms" | tee -a "$SUMMARY"
row() { printf '%-34s %-28s %-22s %s| %s\n' "$1" "$(stat "$2" "$3.mb_per_s")" "$(stat "$2" "$3.records_per_s")" "$(loads "$2")" "$(cpus "$2")" | tee -a "$SUMMARY"; }
printf '%-34s %-28s %-22s %s\n' "raw loopback TCP" "$(stat raw '.raw.mb_per_s')" "-" "$(loads raw)" | tee -a "$SUMMARY"
row "max 16p acks=1" max16_acks1 "$P"
row "max 16p acks=all" max16_acksall "$P"
row "max 10000p acks=1" max10k_acks1 "$P"
row "max 16p acks=1 (beside 10000p)" max16b_acks1 "$P"
row "max 16p acks=1, --storage memory" memmax16_acks1 "$P"
say ""
printf '%-34s %-18s %-24s %-24s %-24s %s\n' "latency (open loop)" "rate rec/s" "p50 us" "p99 us" "p99.9 us" "load1 | broker cpu/wait ms" | tee -a "$SUMMARY"
lrow() { printf '%-34s %-18s %-24s %-24s %-24s %s| %s\n' "$1" "$2" "$(stat "$3" "$P.latency.p50_us")" "$(stat "$3" "$P.latency.p99_us")" "$(stat "$3" "$P.latency.p999_us")" "$(loads "$3")" "$(cpus "$3")" | tee -a "$SUMMARY"; }
lrow "16p acks=all at half max" "$HALFALL" lat16_acksall
lrow "16p acks=1 at half max" "$HALF1" lat16_acks1
lrow "16p acks=1, --storage memory" "$HALF1" memlat16_acks1
DP='.disk'
printf '%-34s %-18s %-24s %-24s %-24s %s| stalls >=20/100 ms: %s\n' "disk alone (no broker), same bytes/s" "$HALFALL" \
    "$(stat disk_acksall "$DP.record_p50_us")" "$(stat disk_acksall "$DP.record_p99_us")" "$(stat disk_acksall "$DP.record_p999_us")" \
    "$(loads disk_acksall)" "$(for i in $(seq 1 "$REPS"); do jq -r '"\(.disk.stalls_20ms // "?")/\(.disk.stalls_100ms // "?")"' "$OUT_DIR/disk_acksall_$i.json"; done | tr '\n' ' ')" | tee -a "$SUMMARY"
say ""
say "second by second (loadgen JSON intervals; one line per run):"
for n in lat16_acksall lat16_acks1 memlat16_acks1; do
    for i in $(seq 1 "$REPS"); do
        say "  ${n}_$i: $(seconds_summary "$OUT_DIR/${n}_$i.json")"
    done
done
say ""
say "broker CPU per acknowledged record (whole run, us/record; median [min..max]):"
cpurec() { for i in $(seq 1 "$REPS"); do
    c=$(sed -E 's/.*broker_cpu_ms=([0-9-]+).*/\1/' "$OUT_DIR/${1}_$i.meta")
    n=$(jq -r '.results.counts.acknowledged' "$OUT_DIR/${1}_$i.json" 2>/dev/null || echo 0)
    awk -v c="$c" -v n="$n" 'BEGIN {if (n > 0) printf "%.2f\n", 1000 * c / n}'
done | sort -g | awk '{v[NR]=$1} END {if (NR) printf "%.2f [%.2f..%.2f]", v[int((NR+1)/2)], v[1], v[NR]; else printf "n/a"}'; }
for n in max16_acks1 max16_acksall max10k_acks1 max16b_acks1 memmax16_acks1; do
    printf '  %-18s %s\n' "$n" "$(cpurec "$n")" | tee -a "$SUMMARY"
done
say ""
say "16p acks=1 max as % of raw loopback: $(awk -v a="$M16" -v b="$RAWM" 'BEGIN {printf "%.0f%%", 100 * a / b}')"
say "10000 partitions created in ${CREATE10K_MS} ms (loadgen CreateTopics round trip incl. process start)"
say ""
say "targets:"
say "  acks=all p99 at half max <= 1000 us : median ${P99ALL} us -> $(awk -v p="$P99ALL" 'BEGIN {print (p <= 1000) ? "MET" : "MISSED"}')"
DISKP99=$(median disk_acksall "$DP.record_p99_us")
say "    the disk alone at that byte rate (ringmq-disk-write, interleaved): p99 ${DISKP99} us; broker / disk: $(ratio "$P99ALL" "$DISKP99")"
R1=$(ratio "$M10K" "$M16")
R2=$(ratio "$M10K" "$M16B")
say "  10000p / 16p max acks=1 >= 0.90    : $R1 (vs phase-2 16p) / $R2 (vs 16p on the same broker) -> $(awk -v r="$R2" 'BEGIN {print (r >= 0.9) ? "MET" : "MISSED"}')"
PAIRS=$(for i in $(seq 1 "$REPS"); do
    a=$(jq -r "$P.mb_per_s // 0" "$OUT_DIR/max10k_acks1_$i.json" 2>/dev/null || echo 0)
    b=$(jq -r "$P.mb_per_s // 0" "$OUT_DIR/max16b_acks1_$i.json" 2>/dev/null || echo 0)
    ratio "$a" "$b"
    echo
done | sort -g | tr '\n' ' ')
say "    per-pair ratios (10000p run i / the 16p run right after it), sorted: $PAIRS"
say "  RSS, 10000 idle partitions < 100 MiB: $(mib "$RSS10K_IDLE") MiB -> $(awk -v k="$RSS10K_IDLE" 'BEGIN {print (k < 102400) ? "MET" : "MISSED"}')"
say ""
say "RSS (VmRSS after ${IDLE_SECONDS}s idle): 16p idle $(mib "$RSS16_IDLE") MiB; 16p after the runs $(mib "$RSS16_LOADED") MiB;"
say "  fresh broker $(mib "$RSS10K_EMPTY") MiB; 10000p idle $(mib "$RSS10K_IDLE") MiB; 10000p after every partition was written $(mib "$RSS10K_TOUCHED") MiB"
say "where acks=all appends wait (io_uring trace of one extra run at half max, $HALFALL rec/s):"
say "$IOU_SUMMARY"
say "disk, start: $FSYNC_START"
say "disk, end:   $FSYNC_END"
say "uptime at end: $(uptime)"
say "benchmark time: ${SECONDS}s (after the build); reports in $OUT_DIR"
