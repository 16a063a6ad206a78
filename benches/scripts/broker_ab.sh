#!/usr/bin/env bash
# Paired A/B comparison of two `ringmq` binaries on a shared, noisy machine: both brokers run at
# the same time on the same core ($BROKER_CPU), each loaded by its own loadgen on $LOADGEN_CPU
# with the same workload, so both see the same noise. Compare within a pair, never across pairs;
# swap the order between reps. Not a test: prints one line per broker per rep.
# With ALTERNATE=1 the two brokers of a pair run one after the other instead (A alone, then B
# alone, order swapped each rep): needed for latency at a rate one core can serve only once,
# e.g. half the max rate; a pair then shares the minute, not the moment.
#
# Usage: benches/scripts/broker_ab.sh BIN_A BIN_B PARTITIONS ACKS RATE [LOADGEN ARGS...]
#   e.g. benches/scripts/broker_ab.sh /tmp/old/ringmq target/release/ringmq 16 all 10000 --linger-ms 0
# Knobs (environment): REPS (3), DURATION (8s), WARMUP (2s), BROKER_CPU (0), LOADGEN_CPU (1),
# LOADGEN (target/release/ringmq-loadgen), OUT_DIR (a fresh /tmp dir), ALTERNATE (0),
# BROKER_ARGS_A / BROKER_ARGS_B (extra broker flags per side, e.g. to A/B a setting with one
# binary).
# Needs: jq, taskset.
set -euo pipefail

[[ $# -ge 5 ]] || {
    sed -n '2,11p' "$0"
    exit 2
}
BIN_A=$1 BIN_B=$2 PARTITIONS=$3 ACKS=$4 RATE=$5
shift 5
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REPS=${REPS:-3}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
BROKER_CPU=${BROKER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
LOADGEN=${LOADGEN:-$REPO/target/release/ringmq-loadgen}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ringmq-ab.XXXXXX)}
ALTERNATE=${ALTERNATE:-0}
read -r -a ARGS_A <<<"${BROKER_ARGS_A:-}"
read -r -a ARGS_B <<<"${BROKER_ARGS_B:-}"
mkdir -p "$OUT_DIR"

# shellcheck source=lib.sh
source "$REPO/benches/scripts/lib.sh"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$OUT_DIR"/data-*
}
trap cleanup EXIT

# start NAME BIN [BROKER ARGS...]: starts a broker and creates the topic; sets PORT.
start() {
    local name=$1 bin=$2
    shift 2
    RINGMQ_BIN=$bin start_broker "$name" "$OUT_DIR/data-$name" "$@"
    PIDS+=("$BROKER_PID")
    create_topic ab "$PARTITIONS"
}

# load V I [LOADGEN ARGS...]: one loadgen run (in the background) against side V's broker.
load() {
    local v=$1 i=$2
    shift 2
    load1 >"$OUT_DIR/$v$i.load"
    taskset -c "$LOADGEN_CPU" "$LOADGEN" --bootstrap "127.0.0.1:${port[$v]}" \
        --cores "$LOADGEN_CPU" --producers 1 --consumers 0 --record-size 1024 --topic ab \
        --rate "$RATE" --acks "$ACKS" --warmup "$WARMUP" --duration "$DURATION" --quiet \
        --json "$OUT_DIR/$v$i.json" "$@" >"$OUT_DIR/$v$i.txt" 2>&1 &
}
# start_side V I: starts side V's broker for rep I.
start_side() {
    if [[ $1 == A ]]; then start "$1$2" "$BIN_A" "${ARGS_A[@]}"; else start "$1$2" "$BIN_B" "${ARGS_B[@]}"; fi
    port[$1]=$PORT
}

echo "A=$BIN_A ${ARGS_A[*]} B=$BIN_B ${ARGS_B[*]} partitions=$PARTITIONS acks=$ACKS rate=$RATE alternate=$ALTERNATE $* ($(uptime))"
for i in $(seq 1 "$REPS"); do
    order=(A B)
    ((i % 2 == 0)) && order=(B A)
    PIDS=()
    declare -A port=()
    if [[ $ALTERNATE == 1 ]]; then
        for v in "${order[@]}"; do
            start_side "$v" "$i"
            load "$v" "$i" "$@"
            wait $! || true
            for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
            wait 2>/dev/null || true
            PIDS=()
        done
    else
        for v in "${order[@]}"; do start_side "$v" "$i"; done
        lgs=()
        for v in "${order[@]}"; do
            load "$v" "$i" "$@"
            lgs+=($!)
        done
        wait "${lgs[@]}" || true
        for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
    fi
    for v in A B; do
        echo "rep $i $v: $(jq -r '.results.produce | "\(.mb_per_s | floor) MB/s \(.records_per_s | floor) rec/s p50 \(.latency.p50_us) us p99 \(.latency.p99_us) us p99.9 \(.latency.p999_us) us"' "$OUT_DIR/$v$i.json" 2>/dev/null || echo 'no report') load1 $(cat "$OUT_DIR/$v$i.load" 2>/dev/null)"
    done
    rm -rf "$OUT_DIR"/data-*
done
