#!/usr/bin/env bash
# Issue 5 benchmark: the consume path of the `ringmq` broker, driven by `ringmq-loadgen`. Not a
# test: it prints figures, it asserts nothing.
#
# Broker: 1 shard (`--cores 1`) pinned to CPU $BROKER_CPU; loadgen pinned to CPU $LOADGEN_CPU;
# 1 KiB records, $PARTITIONS partitions. Phases:
#   0. raw loopback TCP baseline (`ringmq-loadgen --raw` on both CPUs), $REPS times.
#   a. tail reads: the max produce rate (acks=1, producers only), then open loop at half of it
#      with 1 and with 8 consumers reading the tail: end-to-end p50/p99/p99.9; then two floors
#      in the same run: the disk alone writing the same bytes/s (`ringmq-disk-write --no-sync`,
#      no broker, after each rep) and the same tail load on `--storage memory` (no disk).
#   b. catch-up: fill a backlog of $BACKLOG_BYTES (producers only, closed loop), then for each
#      backlog-read mode in $MODES and $REPS times: stop the broker, drop the page cache, start
#      it again on the same data (the tail cache is empty after a restart, so every byte comes
#      from disk) and read everything from the earliest offset with one consumer
#      (`--until-end`). MB/s = value bytes read / time to read them; ratio = that / the median
#      loopback baseline of this run, and / the disk's own read rate: before each rep's
#      catch-ups, `ringmq-disk-read` reads the backlog's segment files (page cache dropped
#      before each shape) with O_DIRECT reads ($DISK_DEPTHS deep, of $DISK_READS) into 4 KiB
#      pages and into huge pages (direct+thp: the engine's readahead buffers), and buffered
#      (kernel readahead, POSIX_FADV_SEQUENTIAL), $DISK_LIMIT bytes per shape; "raw disk read"
#      = the best shape of each way (kernel-notes/o-direct-reads.md). Broker CPU seconds per GiB read come from /proc (all
#      its threads: in `sendfile` mode the blocking-pool threads that send, pinned to the
#      broker's CPU, are included).
#   c. appends on the same core: open-loop acks=1 produce at
#      $SIDE_RATE rec/s into another topic, alone and during a catch-up read: produce latency.
# Every figure is a median [min..max] with the 1-minute load average at each run's start,
# because the machine is shared.
#
# Usage: benches/scripts/consume.sh                 (builds release binaries first)
#        SKIP_BUILD=1 BACKLOG_BYTES=$((2<<30)) benches/scripts/consume.sh
# Knobs (environment): BACKLOG_BYTES (10 GiB), MODES ("direct readahead sendfile"), REPS (3),
# PARTITIONS (16), WARMUP (2s), DURATION (5s, max-rate runs), LAT_DURATION (10s, tail runs),
# CATCHUP_FETCH_BYTES (16777216: one fetch asks for 1 MiB of each of 16 partitions),
# SIDE_RATE (10000 rec/s) and SIDE_DURATION (3s) for phase c,
# DISK_DEPTHS ("1,4"), DISK_READS ("2M,4M"), DISK_LIMIT (2G) for the raw disk read, SKIP_DISK (0),
# SEND_MODES ("copy"; e.g. "copy zc": phases a and b alternate the broker's --fetch-send modes
# run by run, restarting the broker for each; figures of a mode other than copy are named
# "<mode>+<send>"),
# BROKER_CPU (0), LOADGEN_CPU (1), OUT_DIR (a fresh /tmp dir), DATA_ROOT (OUT_DIR; the
# backlog lives there), SKIP_TAIL (0), SKIP_CATCHUP (0), BUILD_TIMEOUT (1500 s).
# Needs: jq, taskset, root (to drop the page cache; without it the drop is skipped and said).
# The data directory is removed at the end, whatever happens.
set -euo pipefail

BACKLOG_BYTES=${BACKLOG_BYTES:-$((10 << 30))}
MODES=${MODES:-"direct readahead sendfile"}
SEND_MODES=${SEND_MODES:-copy}
# Run-name suffix of a --fetch-send mode: none for copy (the names of earlier runs).
send_sfx() { [[ $1 == copy ]] && echo "" || echo "+$1"; }
REPS=${REPS:-3}
PARTITIONS=${PARTITIONS:-16}
WARMUP=${WARMUP:-2s}
DURATION=${DURATION:-5s}
LAT_DURATION=${LAT_DURATION:-10s}
CATCHUP_FETCH_BYTES=${CATCHUP_FETCH_BYTES:-16777216}
SIDE_RATE=${SIDE_RATE:-10000}
SIDE_DURATION=${SIDE_DURATION:-3s}
DISK_DEPTHS=${DISK_DEPTHS:-1,4}
DISK_READS=${DISK_READS:-2M,4M}
DISK_LIMIT=${DISK_LIMIT:-2G}
BROKER_CPU=${BROKER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1500}
RUN_TIMEOUT=120
CATCHUP_LIMIT_S=900 # a catch-up read slower than ~12 MB/s for 10 GiB is cut off (and said)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$REPO/target/release"
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ringmq-consume.XXXXXX)}
DATA_ROOT=${DATA_ROOT:-$OUT_DIR}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

# shellcheck source=lib.sh
source "$REPO/benches/scripts/lib.sh"
cleanup() {
    kill_broker
    rm -rf "$DATA_ROOT"/data-*
}
trap cleanup EXIT

say "ringmq issue-5 consume benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "machine: nproc=$(nproc) kernel=$(uname -r) mem=$(awk '/MemTotal/{print $2" kB"}' /proc/meminfo)"
say "uptime at start: $(uptime)"
say "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') (working tree may be dirty)"
say "settings: BACKLOG_BYTES=$BACKLOG_BYTES MODES='$MODES' REPS=$REPS PARTITIONS=$PARTITIONS CATCHUP_FETCH_BYTES=$CATCHUP_FETCH_BYTES; out dir $OUT_DIR"

build_release "$REPO" "$BUILD_TIMEOUT"
build_disk_write "$REPO" "$BUILD_TIMEOUT"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    (cd "$REPO" && timeout "$BUILD_TIMEOUT" cargo build --release -p ringmq-benches --bin ringmq-disk-read)
fi
DISK_BIN=${DISK_BIN:-$BIN/ringmq-disk-read}
if [[ "${SKIP_DISK:-0}" != 1 && ! -x "$DISK_BIN" ]]; then
    say "missing $DISK_BIN: no raw disk read (SKIP_DISK=1 to run without it)"
    exit 2
fi
SECONDS=0

# ---- helpers ---------------------------------------------------------------------------------
drop_caches() {
    sync
    if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        echo dropped
    else
        echo "NOT dropped (not root?)"
    fi
}
# ---- 0. loopback baseline --------------------------------------------------------------------
for i in $(seq 1 "$REPS"); do
    l=$(load1)
    timeout 60 "$BIN/ringmq-loadgen" --raw --cores "$BROKER_CPU,$LOADGEN_CPU" --warmup 1s \
        --duration 3s --json "$OUT_DIR/raw_$i.json" >"$OUT_DIR/raw_$i.txt" 2>&1 || true
    echo "load1=$l rc=0 broker_cpu_ms=0" >"$OUT_DIR/raw_$i.meta"
    log "raw $i: $(jq -r '.raw.mb_per_s' "$OUT_DIR/raw_$i.json" 2>/dev/null) MB/s"
done
RAWM=$(median raw '.raw.mb_per_s')

FIRST_MODE=${MODES%% *}
P='.results.produce'
E='.results.end_to_end'

# ---- a. tail reads at half the max produce rate -----------------------------------------------
if [[ "${SKIP_TAIL:-0}" != 1 ]]; then
    rm -rf "$DATA_ROOT/data-tail"
    start_broker tail "$DATA_ROOT/data-tail" --fetch-backlog-read "$FIRST_MODE"
    loadgen_run create_tail 60 --topic tail --create-topic --partitions "$PARTITIONS" --producers 0 --consumers 0
    for i in $(seq 1 "$REPS"); do
        loadgen_run max_$i "$RUN_TIMEOUT" --topic tail --producers 1 --consumers 0 --rate max --acks 1 \
            --warmup "$WARMUP" --duration "$DURATION"
        log "max $i: $(jq -r "$P.mb_per_s" "$OUT_DIR/max_$i.json" 2>/dev/null) MB/s"
    done
    MAXREC=$(median max "$P.records_per_s")
    HALF=$(awk -v m="$MAXREC" 'BEGIN {printf "%d", m / 2}')
    for i in $(seq 1 "$REPS"); do
        for send in $SEND_MODES; do
            if [[ "$SEND_MODES" != copy ]]; then
                stop_broker
                start_broker "tail-$send-$i" "$DATA_ROOT/data-tail" --fetch-backlog-read "$FIRST_MODE" --fetch-send "$send"
            fi
            for c in 1 8; do
                t="tail$c$(send_sfx "$send")"
                # As on a broker that has been up for a moment (lib.sh).
                wait_zero_ahead "$DATA_ROOT/data-tail"
                loadgen_run "${t}_$i" "$RUN_TIMEOUT" --topic tail --producers 1 --consumers "$c" \
                    --rate "$HALF" --acks 1 --linger-ms 0 --fetch-max-wait-ms 500 \
                    --warmup "$WARMUP" --duration "$LAT_DURATION"
                log "$t $i: e2e p99 $(jq -r "$E.latency.p99_us" "$OUT_DIR/${t}_$i.json" 2>/dev/null) us ($(cat "$OUT_DIR/${t}_$i.meta"))"
            done
        done
        # The disk alone at the same byte rate (writes only, as acks=1 and visibility wait for
        # the write), in the same minutes: the floor the disk sets under these runs.
        disk_floor taildisk_$i "$HALF" "$LAT_DURATION" --no-sync
    done
    stop_broker
    rm -rf "$DATA_ROOT/data-tail"
    # The same tail load with no disk at all (`--storage memory`): the floor this machine's CPUs
    # and loopback set (broker and load generator each on one core).
    start_broker tail-memory "$DATA_ROOT/data-tail-memory" --storage memory
    loadgen_run create_tail_memory 60 --topic tail --create-topic --partitions "$PARTITIONS" --producers 0 --consumers 0
    for i in $(seq 1 "$REPS"); do
        for c in 1 8; do
            loadgen_run "memtail${c}_$i" "$RUN_TIMEOUT" --topic tail --producers 1 --consumers "$c" \
                --rate "$HALF" --acks 1 --linger-ms 0 --fetch-max-wait-ms 500 \
                --warmup "$WARMUP" --duration "$LAT_DURATION"
        done
    done
    stop_broker
    rm -rf "$DATA_ROOT/data-tail-memory"
fi

# ---- b. catch-up read of a backlog after dropping the page cache --------------------------------
if [[ "${SKIP_CATCHUP:-0}" != 1 ]]; then
    DATA="$DATA_ROOT/data-backlog"
    rm -rf "$DATA"
    start_broker fill "$DATA" --fetch-backlog-read "$FIRST_MODE"
    loadgen_run create_backlog 60 --topic backlog --create-topic --partitions "$PARTITIONS" --producers 0 --consumers 0
    # Closed loop until the backlog holds BACKLOG_BYTES of record values (in slices of at most
    # 60 s, so one run's timeout stays short).
    filled=0
    k=0
    slice_s=2 # the first slice measures the fill rate; later ones aim at what is left
    while ((filled < BACKLOG_BYTES)); do
        k=$((k + 1))
        loadgen_run fill_$k "$RUN_TIMEOUT" --topic backlog --producers 2 --consumers 0 --rate max \
            --acks 1 --warmup 0s --duration "${slice_s}s" --max-in-flight 16
        got=$(jq -r '.results.counts.acknowledged // 0' "$OUT_DIR/fill_$k.json" 2>/dev/null || echo 0)
        ((got > 0)) || {
            say "ABORTED: the backlog fill acknowledged nothing (see $OUT_DIR/fill_$k.txt)"
            exit 3
        }
        filled=$((filled + got * 1024))
        # Aim at 3/4 of what is left at the last slice's rate (the rate grows as the
        # producers warm up, so aiming at all of it overshot by half).
        slice_s=$(awk -v left=$((BACKLOG_BYTES - filled)) -v rate=$((got * 1024 / slice_s)) \
            'BEGIN {s = int(0.75 * left / rate) + 1; print (s > 60) ? 60 : s}')
        log "backlog: $filled of $BACKLOG_BYTES bytes"
    done
    stop_broker
    say "backlog: $filled bytes of record values in $PARTITIONS partitions; on disk $(du -sh "$DATA" | cut -f1)"
    for i in $(seq 1 "$REPS"); do
        if [[ "${SKIP_DISK:-0}" != 1 ]]; then
            # The disk's own rate on the same files, minutes from the catch-ups it judges.
            l=$(load1)
            timeout 600 taskset -c "$BROKER_CPU" "$DISK_BIN" --dir "$DATA" --ways direct,direct+thp,buffered+seq \
                --depths "$DISK_DEPTHS" --reads "$DISK_READS" --limit "$DISK_LIMIT" --summary \
                >"$OUT_DIR/disk_$i.txt" 2>&1 || say "WARNING: disk read $i failed (see $OUT_DIR/disk_$i.txt)"
            for k in direct direct_thp buffered; do
                v=$(grep -o "best_${k}_mb_s=[0-9.]*" "$OUT_DIR/disk_$i.txt" | cut -d= -f2)
                echo "{\"mb_per_s\": ${v:-null}}" >"$OUT_DIR/disk${k}_$i.json"
                echo "load1=$l rc=0 broker_cpu_ms=0" >"$OUT_DIR/disk${k}_$i.meta"
            done
            log "raw disk read $i: direct $(jq -r .mb_per_s "$OUT_DIR/diskdirect_$i.json"), direct+thp $(jq -r .mb_per_s "$OUT_DIR/diskdirect_thp_$i.json"), buffered $(jq -r .mb_per_s "$OUT_DIR/diskbuffered_$i.json") MB/s"
        fi
        for mode in $MODES; do
            for send in $SEND_MODES; do
                m="$mode$(send_sfx "$send")"
                dropped=$(drop_caches)
                start_broker "catchup-$m-$i" "$DATA" --fetch-backlog-read "$mode" --fetch-send "$send"
                loadgen_run "catchup_${m}_$i" "$((CATCHUP_LIMIT_S + 60))" --topic backlog --producers 0 \
                    --consumers 1 --from earliest --until-end --warmup 0s \
                    --duration "${CATCHUP_LIMIT_S}s" --fetch-max-bytes "$CATCHUP_FETCH_BYTES"
                stop_broker
                log "catch-up $m $i (page cache $dropped): $(jq -r '.results.consume.mb_per_s' "$OUT_DIR/catchup_${m}_$i.json" 2>/dev/null) MB/s ($(cat "$OUT_DIR/catchup_${m}_$i.meta"))"
            done
        done
    done
    # ---- c. appends on the same core while a catch-up read runs ------------------------------
    # Open-loop acks=1 produce at SIDE_RATE into another topic of the same shard, alone and
    # then during a catch-up read of the backlog (page cache dropped first): the difference
    # in produce latency is what the backlog read costs the appends.
    for mode in $MODES; do
        dropped=$(drop_caches)
        start_broker "side-$mode" "$DATA" --fetch-backlog-read "$mode"
        loadgen_run create_side_$mode 60 --topic "side-$mode" --create-topic --partitions 4 --producers 0 --consumers 0
        for i in $(seq 1 "$REPS"); do
            loadgen_run sidealone_${mode}_$i "$RUN_TIMEOUT" --topic "side-$mode" --producers 1 --consumers 0 \
                --rate "$SIDE_RATE" --acks 1 --linger-ms 0 --warmup 1s --duration "$SIDE_DURATION"
        done
        loadgen_run sidecatchup_${mode} "$((CATCHUP_LIMIT_S + 60))" --topic backlog --producers 0 \
            --consumers 1 --from earliest --until-end --warmup 0s \
            --duration "${CATCHUP_LIMIT_S}s" --fetch-max-bytes "$CATCHUP_FETCH_BYTES" &
        CPID=$!
        sleep 2 # the catch-up read is under way
        for i in $(seq 1 "$REPS"); do
            # Only while the catch-up is still reading (a run that started after it ended
            # would measure appends alone).
            kill -0 "$CPID" 2>/dev/null || break
            loadgen_run sideduring_${mode}_$i "$RUN_TIMEOUT" --topic "side-$mode" --producers 1 --consumers 0 \
                --rate "$SIDE_RATE" --acks 1 --linger-ms 0 --warmup 1s --duration "$SIDE_DURATION"
        done
        still=$(kill -0 "$CPID" 2>/dev/null && echo "still reading" || echo "ALREADY DONE (figures overlap only partly)")
        wait "$CPID" || true
        stop_broker
        log "side $mode: alone p99 $(median sidealone_$mode "$P.latency.p99_us") us, during catch-up p99 $(median sideduring_$mode "$P.latency.p99_us") us (catch-up $still at the end)"
        echo "$still" >"$OUT_DIR/sidestate_$mode"
    done
    rm -rf "$DATA"
fi

# ---- summary ---------------------------------------------------------------------------------
say ""
say "figures: median [min..max] over $REPS runs; load1 = 1-minute load average at each run's start. NOISY: shared machine."
say "raw loopback TCP: $(stat raw '.raw.mb_per_s') MB/s (load1 $(loads raw))"
if [[ "${SKIP_TAIL:-0}" != 1 ]]; then
    say "max produce, acks=1, $PARTITIONS partitions: $(stat max "$P.mb_per_s") MB/s, $(stat max "$P.records_per_s") rec/s (load1 $(loads max))"
    say "tail reads at half the max rate ($HALF rec/s), acks=1, end-to-end latency (us):"
    for send in $SEND_MODES; do
        for c in 1 8; do
            t="tail$c$(send_sfx "$send")"
            say "  $c consumer(s) $send: p50 $(stat "$t" "$E.latency.p50_us")  p99 $(stat "$t" "$E.latency.p99_us")  p99.9 $(stat "$t" "$E.latency.p999_us")  consumed $(stat "$t" "$E.mb_per_s") MB/s; produce requests p99 $(stat "$t" ".results.produce_request.p99_us") (the broker's share; the rest is the client's wait) (load1 $(loads "$t"))"
        done
    done
    P99=$(median tail1 "$E.latency.p99_us")
    P99_8=$(median tail8 "$E.latency.p99_us")
    say "  target tail e2e p99 <= 1000 us: 1 consumer $P99 us, 8 consumers $P99_8 us -> $(awk -v a="$P99" -v b="$P99_8" 'BEGIN {print (a <= 1000 && b <= 1000) ? "MET" : "MISSED"}')"
    say "  floors measured in the same run:"
    for c in 1 8; do
        say "    no disk (--storage memory), $c consumer(s): e2e p50 $(stat "memtail$c" "$E.latency.p50_us")  p99 $(stat "memtail$c" "$E.latency.p99_us")  p99.9 $(stat "memtail$c" "$E.latency.p999_us") (load1 $(loads "memtail$c"))"
    done
    DISK99=$(median taildisk .disk.record_p99_us)
    say "    the disk alone, writes of the same bytes/s, no broker (ringmq-disk-write --no-sync): record p50 $(stat taildisk .disk.record_p50_us)  p99 $(stat taildisk .disk.record_p99_us)  p99.9 $(stat taildisk .disk.record_p999_us); writes >= 20/100 ms: $(for i in $(seq 1 "$REPS"); do jq -r '"\(.disk.stalls_20ms // "?")/\(.disk.stalls_100ms // "?")"' "$OUT_DIR/taildisk_$i.json" 2>/dev/null; done | tr '\n' ' ')"
    higher() { awk -v a="$1" -v b="$2" 'BEGIN {print (a + 0 > b + 0) ? a : b}'; }
    say "    e2e p99 / the higher floor's p99: 1 consumer $(ratio "$P99" "$(higher "$(median memtail1 "$E.latency.p99_us")" "$DISK99")"), 8 consumers $(ratio "$P99_8" "$(higher "$(median memtail8 "$E.latency.p99_us")" "$DISK99")")"
fi
if [[ "${SKIP_CATCHUP:-0}" != 1 ]]; then
    say "catch-up read of the backlog after dropping the page cache (1 consumer, from earliest):"
    DISKD=n/a
    DISKT=n/a
    DISKB=n/a
    if [[ "${SKIP_DISK:-0}" != 1 ]]; then
        DISKD=$(median diskdirect '.mb_per_s')
        DISKT=$(median diskdirect_thp '.mb_per_s')
        DISKB=$(median diskbuffered '.mb_per_s')
        say "  raw disk read of the backlog's files (best shape of O_DIRECT $DISK_DEPTHS deep x $DISK_READS; buffered+seq x $DISK_READS): direct $(stat diskdirect '.mb_per_s'), direct+thp $(stat diskdirect_thp '.mb_per_s'), buffered $(stat diskbuffered '.mb_per_s') MB/s (load1 $(loads diskdirect)); 0.8 x loopback = $(awk -v r="$RAWM" 'BEGIN {printf "%.0f", 0.8 * r}') MB/s"
    fi
    for mode in $(for m in $MODES; do for s in $SEND_MODES; do echo "$m$(send_sfx "$s")"; done; done); do
        cpu_per_gib=$(for i in $(seq 1 "$REPS"); do
            c=$(sed -E 's/.*broker_cpu_ms=([0-9-]+).*/\1/' "$OUT_DIR/catchup_${mode}_$i.meta")
            b=$(jq -r '.results.consume.bytes // 0' "$OUT_DIR/catchup_${mode}_$i.json" 2>/dev/null || echo 0)
            awk -v c="$c" -v b="$b" 'BEGIN {if (b > 0) printf "%.2f\n", c / 1000 / (b / 1073741824)}'
        done | sort -g | awk '{v[NR]=$1} END {if (NR) printf "%.2f [%.2f..%.2f]", v[int((NR+1)/2)], v[1], v[NR]; else printf "n/a"}')
        M=$(median "catchup_$mode" '.results.consume.mb_per_s')
        waits=$(for i in $(seq 1 "$REPS"); do grep -o 'broker_runq_wait_ms=[0-9-]*' "$OUT_DIR/catchup_${mode}_$i.meta" | cut -d= -f2; done | tr '\n' ' ')
        say "  $mode: $(stat "catchup_$mode" '.results.consume.mb_per_s') MB/s, ratio to loopback $(ratio "$M" "$RAWM"), to raw disk read direct $(ratio "$M" "$DISKD") / direct+thp $(ratio "$M" "$DISKT") / buffered $(ratio "$M" "$DISKB"), broker CPU s/GiB $cpu_per_gib (load1 $(loads "catchup_$mode"); broker run-queue wait ms $waits)"
    done
    say "  target catch-up >= 0.8 of loopback"
    say "appends on the same core (acks=1, $SIDE_RATE rec/s open loop, 4 partitions), produce latency us, alone vs during a catch-up read:"
    for mode in $MODES; do
        say "  $mode: alone p50 $(stat sidealone_$mode "$P.latency.p50_us") p99 $(stat sidealone_$mode "$P.latency.p99_us") | during p50 $(stat sideduring_$mode "$P.latency.p50_us") p99 $(stat sideduring_$mode "$P.latency.p99_us") (load1 $(loads sideduring_$mode); catch-up $(cat "$OUT_DIR/sidestate_$mode" 2>/dev/null) when the last run ended)"
    done
fi
say "uptime at end: $(uptime)"
say "benchmark time: ${SECONDS}s (after the build); reports in $OUT_DIR"
