# Helpers shared by the benchmark scripts; sourced, not run. The caller sets BIN (the folder of
# the release binaries), OUT_DIR, SUMMARY, REPS, BROKER_CPU and LOADGEN_CPU before using them.

say() { echo "$*" | tee -a "$SUMMARY"; }
log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# build_release REPO TIMEOUT_S: `cargo build --release` of the broker and loadgen unless
# SKIP_BUILD=1; exits 2 if either binary is missing afterwards.
build_release() {
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "building release binaries (cargo build --release -p ringmq-broker -p ringmq-loadgen)"
        (cd "$1" && timeout "$2" cargo build --release -p ringmq-broker -p ringmq-loadgen)
    fi
    [[ -x "$BIN/ringmq" && -x "$BIN/ringmq-loadgen" ]] || {
        echo "missing $BIN/ringmq or $BIN/ringmq-loadgen" >&2
        exit 2
    }
}

# broker_port LOG PID SECONDS: the port a starting broker prints in LOG, once it listens;
# empty if it exits or SECONDS pass first.
broker_port() {
    local port="" _
    for _ in $(seq 1 $(($3 * 10))); do
        port=$(grep -o 'listening on [0-9.]*:[0-9]*' "$1" | head -1 | awk -F: '{print $NF}' || true)
        [[ -n "$port" ]] && break
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "$port"
}

# start_broker NAME DATA_DIR [RINGMQ ARGS...]: one shard pinned to $BROKER_CPU on DATA_DIR (kept
# if it exists); sets BROKER_PID and PORT. Up to 60 s to start (recovery of a large log). The
# binary is $RINGMQ_BIN if set (A/B comparisons), else $BIN/ringmq.
BROKER_PID=""
PORT=""
start_broker() {
    local name=$1 dir=$2 logf="$OUT_DIR/broker-$1.log"
    shift 2
    taskset -c "$BROKER_CPU" "${RINGMQ_BIN:-$BIN/ringmq}" --cores 1 --listen 127.0.0.1:0 --data-dir "$dir" \
        "$@" >"$logf" 2>&1 &
    BROKER_PID=$!
    PORT=$(broker_port "$logf" "$BROKER_PID" 60)
    if [[ -z "$PORT" ]]; then
        echo "broker did not start; log:" >&2
        cat "$logf" >&2
        exit 2
    fi
    log "broker $name $* pid $BROKER_PID on port $PORT"
}
# wait_zero_ahead DATA_DIR [BROKER ARGS...]: wait (up to 120 s) until every shard's newest
# segment file under DATA_DIR is written to its end (lseek SEEK_HOLE finds no unwritten extent:
# the engine zero-fills the active segment once the log has been quiet for 100 ms,
# engine/src/log/zero_ahead.rs; about a second for a fresh 1 GiB segment here), so that the
# measured appends land on written blocks as on a broker that has been up for a moment. Returns
# at once when the broker arguments turn zero-ahead off.
wait_zero_ahead() {
    local dir=$1 i
    shift
    [[ " $* " =~ [[:space:]]--zero-ahead([[:space:]]|=)false[[:space:]] ]] && return 0
    for ((i = 0; i < 1200; i++)); do
        python3 - "$dir" <<'PY' && return 0
import glob, os, sys
newest = [max(glob.glob(os.path.join(d, "*.log")), default=None)
          for d in glob.glob(os.path.join(sys.argv[1], "shard-*"))]
def written(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) >= os.fstat(fd).st_size
    finally:
        os.close(fd)
sys.exit(0 if newest and all(p and written(p) for p in newest) else 1)
PY
        sleep 0.1
    done
    echo "the broker's active segments were not zero-filled within 120 s; going on" >&2
}
# create_topic NAME PARTITIONS: CreateTopics on the broker at $PORT through loadgen ($LOADGEN if
# set, else $BIN/ringmq-loadgen; no records sent); its output goes to OUT_DIR.
create_topic() {
    timeout "${RUN_TIMEOUT:-120}" "${LOADGEN:-$BIN/ringmq-loadgen}" --bootstrap "127.0.0.1:$PORT" \
        --create-topic --topic "$1" --partitions "$2" --producers 0 --consumers 0 --quiet \
        >"$OUT_DIR/create-$1-$2.txt" 2>&1
}
stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    timeout 60 tail --pid="$BROKER_PID" -f /dev/null || kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}
# kill_broker: for an EXIT trap.
kill_broker() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
}

# Broker CPU time in ms (utime+stime of /proc/<pid>/stat, which counts exited threads too).
broker_cpu_ms() {
    awk -v t="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) * 1000 / t}' "/proc/$BROKER_PID/stat"
}
# Run-queue wait (ms) of the broker's executor thread(s): time they were ready to run but another
# thread had the CPU (the machine is shared; large values mean the figures are the machine's).
broker_wait_ms() {
    local w=0 t
    for t in /proc/"$BROKER_PID"/task/*; do
        if [[ "$(cat "$t/comm" 2>/dev/null)" == ringmq-core* ]]; then
            w=$(awk -v w="$w" '{printf "%.0f", w + $2 / 1e6}' "$t/schedstat" 2>/dev/null || echo "$w")
        fi
    done
    echo "$w"
}

# build_disk_write REPO TIMEOUT_S: builds `ringmq-disk-write` (benches/src/bin) unless SKIP_BUILD=1.
build_disk_write() {
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        (cd "$1" && timeout "$2" cargo build --release -p ringmq-benches --bin ringmq-disk-write)
    fi
}

# disk_floor NAME RECORDS_PER_S DURATION [--no-sync]: the disk alone at the byte rate of that many 1 KiB
# records a second (`ringmq-disk-write`: no broker; one thread writes every record due, as one
# O_DIRECT write, then fdatasyncs, open loop), pinned to $BROKER_CPU, its file in OUT_DIR: the
# floor under acks=all latency at that rate, right now (kernel-notes/the-disk.md). Writes
# OUT_DIR/NAME.txt, NAME.meta (load average) and NAME.json: {"disk": {"record_p50_us": ..,
# "record_p99_us": .., "record_p999_us": .., "record_max_us": .., "stalls_20ms": ..,
# "stalls_100ms": ..}} ({} if it failed). `--no-sync`: writes only (the floor under acks=1).
disk_floor() {
    local name=$1 rate=$(($2 * 1024)) dur=$3
    shift 3
    echo "load1=$(load1)" >"$OUT_DIR/$name.meta"
    RINGMQ_BENCH_DIR="$OUT_DIR" timeout 120 taskset -c "$BROKER_CPU" "$BIN/ringmq-disk-write" \
        --rate "$rate" --record 1K --duration "$dur" --summary "$@" >"$OUT_DIR/$name.txt" 2>&1 || true
    grep '^disk_write ' "$OUT_DIR/$name.txt" | tr ' ' '\n' |
        awk -F= 'NF == 2 { printf "%s\"%s\": %s", (n++ ? ", " : "{\"disk\": {"), $1, $2 }
                 END { print (n ? "}}" : "{}") }' >"$OUT_DIR/$name.json"
    log "$name: $(grep '^disk_write ' "$OUT_DIR/$name.txt" || echo 'no summary')"
}

# loadgen_run NAME TIMEOUT_S ARGS...: one loadgen run pinned to $LOADGEN_CPU against the broker
# on $PORT. Writes OUT_DIR/NAME.json (its report), NAME.txt (its output) and NAME.meta (load
# average at the start, exit code, wall time, broker CPU and run-queue wait during the run).
loadgen_run() {
    local name=$1 limit=$2
    shift 2
    local l0 c0 w0 t0 t1 rc=0
    l0=$(load1)
    c0=$(broker_cpu_ms)
    w0=$(broker_wait_ms)
    t0=$(date +%s%N)
    timeout "$limit" taskset -c "$LOADGEN_CPU" "$BIN/ringmq-loadgen" \
        --bootstrap "127.0.0.1:$PORT" --cores "$LOADGEN_CPU" --record-size 1024 --quiet \
        --json "$OUT_DIR/$name.json" "$@" >"$OUT_DIR/$name.txt" 2>&1 || rc=$?
    t1=$(date +%s%N)
    echo "load1=$l0 rc=$rc wall_ms=$(((t1 - t0) / 1000000)) broker_cpu_ms=$(($(broker_cpu_ms) - c0)) broker_runq_wait_ms=$(($(broker_wait_ms) - w0))" \
        >"$OUT_DIR/$name.meta"
    if ((rc != 0)); then
        say "WARNING: $name exited $rc (see $OUT_DIR/$name.txt)"
    fi
}

# stat PREFIX JQPATH: "median [min..max]" over the reports OUT_DIR/PREFIX_1..PREFIX_REPS.json.
stat() {
    local vals
    vals=$(for i in $(seq 1 "$REPS"); do jq -r "$2 // empty" "$OUT_DIR/${1}_$i.json" 2>/dev/null; done)
    if [[ -z "$vals" ]]; then
        echo "n/a"
        return
    fi
    echo "$vals" | sort -g | awk '{v[NR]=$1} END {m = (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "%.1f [%.1f..%.1f]", m, v[1], v[NR]}'
}
median() { stat "$1" "$2" | cut -d' ' -f1; }
# loads NAME: the load1 recorded in the .meta file of each run NAME_<i> that has one (a loop of
# runs may stop early).
loads() { for i in $(seq 1 "$REPS"); do if [[ -f "$OUT_DIR/${1}_$i.meta" ]]; then grep -o 'load1=[0-9.]*' "$OUT_DIR/${1}_$i.meta" | cut -d= -f2; fi; done | tr '\n' ' '; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }

# seconds_summary JSON [produce|e2e]: over the measured seconds of one loadgen report (warm-up
# skipped), "median per-second p99 <us> | seconds with max > 10 ms: <n>/<total>". A run's p99
# made by one stall of tens of milliseconds reads differently from one every second shares.
seconds_summary() {
    local kind=${2:-produce}
    jq -r --arg k "$kind" '
        (.config.warmup_s // 0) as $w
        | [.intervals[]? | select(.start_s + 0.5 >= $w and .length_s >= 0.5 and .[$k] != null) | .[$k]]
        | if length == 0 then "no intervals" else
            ([.[].p99_us] | sort | .[(length - 1) / 2 | floor]) as $med
            | ([.[] | select(.max_us > 10000)] | length) as $stalls
            | "median per-second p99 \($med) us | seconds with max > 10 ms: \($stalls)/\(length)"
          end' "$1" 2>/dev/null || echo "n/a"
}
