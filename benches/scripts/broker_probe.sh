#!/usr/bin/env bash
# Where one broker's CPU goes under a fixed produce load: one fresh broker ($BROKER_CPU), one
# loadgen run ($LOADGEN_CPU), and over 4 s in the middle of it the executor thread's CPU time,
# run-queue wait and involuntary context switches (schedstat/status), the whole process's CPU
# (io-wq workers included), loadgen's CPU, and io_uring_enter / membarrier calls per second
# (perf stat; one membarrier per park of the glommio executor). Not a test: prints one line.
# These counts hold up on a shared machine far better than latency percentiles do.
#
# Usage: benches/scripts/broker_probe.sh BIN RATE ACKS PARTITIONS [BROKER ARGS...]
#   e.g. benches/scripts/broker_probe.sh target/release/ringmq 20000 all 16 --iowq-cpus others
# Knobs (environment): DURATION (6s), LINGER_MS (0), BROKER_CPU (0), LOADGEN_CPU (1),
# LOADGEN (target/release/ringmq-loadgen), OUT_DIR (a fresh /tmp dir; the broker's data
# directory in it is deleted at the end). After creating the topic the script waits until the
# broker has zero-filled its active segment (`wait_zero_ahead` in lib.sh; not with
# `--zero-ahead false` among the broker args, which is how to measure appends into fallocated
# blocks). PREFILL (a loadgen duration, e.g. 8s; default none) first produces at the max rate
# (acks=1) for that long, so that with `--retention-bytes` among the broker args the measured
# run sees the steady state of a long-running broker (retention removing segments, and the
# rolls reusing them unless `--recycle-segments false`).
# Needs: jq, taskset, perf (root).
set -euo pipefail

[[ $# -ge 4 ]] || {
    sed -n '2,21p' "$0"
    exit 2
}
BIN_UNDER_TEST=$1 RATE=$2 ACKS=$3 PARTITIONS=$4
shift 4
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DURATION=${DURATION:-6s}
LINGER_MS=${LINGER_MS:-0}
BROKER_CPU=${BROKER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
LOADGEN=${LOADGEN:-$REPO/target/release/ringmq-loadgen}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ringmq-probe.XXXXXX)}
mkdir -p "$OUT_DIR"

# shellcheck source=lib.sh
source "$REPO/benches/scripts/lib.sh"
SUMMARY=/dev/null
cleanup() {
    kill_broker
    rm -rf "$OUT_DIR/data"
}
trap cleanup EXIT

RINGMQ_BIN=$BIN_UNDER_TEST start_broker probe "$OUT_DIR/data" "$@"
create_topic probe "$PARTITIONS"
if [[ -n "${PREFILL:-}" ]]; then
    taskset -c "$LOADGEN_CPU" "$LOADGEN" --bootstrap "127.0.0.1:$PORT" --cores "$LOADGEN_CPU" \
        --producers 1 --consumers 0 --record-size 1024 --topic probe --rate max --acks 1 \
        --warmup 0s --duration "$PREFILL" --quiet >"$OUT_DIR/prefill.txt" 2>&1
fi
wait_zero_ahead "$OUT_DIR/data" "$@"
executor=""
for t in /proc/"$BROKER_PID"/task/*; do
    if [[ "$(cat "$t/comm")" == ringmq-core-0* ]]; then
        executor=$t
        break
    fi
done
[[ -n "$executor" ]] || {
    echo "no ringmq-core-0 thread found" >&2
    exit 2
}
L0=$(load1)
taskset -c "$LOADGEN_CPU" "$LOADGEN" --bootstrap "127.0.0.1:$PORT" --cores "$LOADGEN_CPU" \
    --producers 1 --consumers 0 --record-size 1024 --topic probe --rate "$RATE" --acks "$ACKS" \
    --warmup 2s --duration "$DURATION" --linger-ms "$LINGER_MS" --quiet \
    --json "$OUT_DIR/loadgen.json" >"$OUT_DIR/loadgen.txt" 2>&1 &
LG=$!
sleep 2.5
# snapshot: executor run ns, run-queue wait ns, involuntary switches, process and loadgen ticks.
snap() {
    local s
    read -r -a s <"$executor/schedstat"
    echo "${s[0]} ${s[1]} $(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$executor/status") $(awk '{print $14 + $15}' "/proc/$BROKER_PID/stat") $(awk '{print $14 + $15}' "/proc/$LG/stat")"
}
read -r r0 w0 n0 c0 g0 <<<"$(snap)"
t0=$(date +%s%N)
perf stat -x, -e 'syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_membarrier' \
    -p "$BROKER_PID" -- sleep 4 2>"$OUT_DIR/perf.txt" >/dev/null
read -r r1 w1 n1 c1 g1 <<<"$(snap)"
ms=$((($(date +%s%N) - t0) / 1000000))
wait "$LG" || true
tick_ms=$((1000 / $(getconf CLK_TCK)))
enters=$(grep io_uring_enter "$OUT_DIR/perf.txt" | cut -d, -f1)
parks=$(grep membarrier "$OUT_DIR/perf.txt" | cut -d, -f1)
echo "$(jq -r '.results | "\(.produce.records_per_s | floor) rec/s p50 \(.produce.latency.p50_us) p99 \(.produce.latency.p99_us) p99.9 \(.produce.latency.p999_us) us (requests p50 \(.produce_request.p50_us // "-") p99 \(.produce_request.p99_us // "-"))"' "$OUT_DIR/loadgen.json") |" \
    "over ${ms} ms: executor cpu $(((r1 - r0) / 1000000)) ms, run-queue wait $(((w1 - w0) / 1000000)) ms," \
    "involuntary switches $((n1 - n0)); broker cpu $(((c1 - c0) * tick_ms)) ms; loadgen cpu $(((g1 - g0) * tick_ms)) ms;" \
    "io_uring_enter/s $((enters * 1000 / ms)), parks/s $((parks * 1000 / ms)) |" \
    "$(seconds_summary "$OUT_DIR/loadgen.json") | load1 $L0 | $*"
