//! Crash test with real processes: a child process appends under load (many concurrent
//! appenders, Durable and Written acks) and prints every acknowledgement the moment it
//! resolves; the parent SIGKILLs it after a random number of acks, reopens the shard and
//! checks that
//! - every acknowledged batch is there at its acknowledged offsets, byte-identical (a SIGKILL
//!   keeps completed O_DIRECT writes, so Written acks must survive as well as Durable ones);
//! - each queue is dense from 0 to its end, every visible batch is one the child sent (no torn
//!   or garbage entry past the last valid one becomes visible), and the stored CRCs validate;
//! - the next append after recovery gets the next dense offset;
//! - no segment index file needed rebuilding (a SIGKILL loses nothing a checkpoint counted).
//!
//! Several rounds run on the same directory, so recovery also meets its own earlier repairs.
//!
//! The child is this test binary re-executed with `RINGMQ_KILL_CHILD_DIR` set (no extra
//! binary to build). The kill moments come from `RINGMQ_KILL_SEED` (printed on failure).
//!
//! Catches: acks sent before the write (or fdatasync) completed, recovery that truncates valid
//! entries or accepts a torn one, offsets reassigned after a crash, segment rolls that lose
//! the head of the new segment, a checkpoint that counts index records it has not written.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringmq_engine::{Durability, Offset, QueueId, Shard, ShardConfig};
use ringmq_wire::record_batch::validate;

use common::{make_batch, record_count, run_glommio, sent_checksum, small_config};

const CHILD_ENV: &str = "RINGMQ_KILL_CHILD_DIR";
const ROUND_ENV: &str = "RINGMQ_KILL_ROUND";
const SEED_ENV: &str = "RINGMQ_KILL_SEED";
const TEST_NAME: &str = "sigkill_under_load_loses_no_acknowledged_batch";

/// Kill rounds per test run.
const ROUNDS: u64 = 5;
/// Concurrent appenders in the child (group commit has company).
const APPENDERS: u64 = 24;
/// Queues the child spreads its appends over.
const QUEUES: u32 = 6;
/// The longest a child may take to reach its kill point.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounded channel between the stdout reader thread and the parent.
const LINE_CHANNEL_DEPTH: usize = 4096;

fn config(dir: &Path) -> ShardConfig {
    // 1 MiB segments: with ~2 KiB-20 KiB batches every round crosses a few rolls.
    small_config(dir.join("shard"), 1 << 20, 64 << 10)
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_batch() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var(ROUND_ENV)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child_main(PathBuf::from(dir), round);
        return;
    }
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(time_seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = seed;
    let mut acked: Vec<Ack> = Vec::new();
    let mut sent: HashMap<u32, HashSet<u32>> = HashMap::new();
    for round in 0..ROUNDS {
        let kill_after = 10 + next_rand(&mut rng) % 600;
        let (round_acks, round_sent) = run_child_until(dir.path(), round, kill_after)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
        let durable = round_acks.iter().filter(|a| a.durable).count();
        eprintln!(
            "round {round}: killed after {} acks ({durable} Durable), {} batches sent",
            round_acks.len(),
            round_sent.len()
        );
        acked.extend(round_acks);
        for (q, crc) in round_sent {
            sent.entry(q).or_default().insert(crc);
        }
        let cfg = config(dir.path());
        let acked_now = acked.clone();
        let sent_now = sent.clone();
        let verdict =
            run_glommio(move || async move { verify(cfg, &acked_now, &sent_now, round).await });
        match verdict {
            Ok(extra) => {
                sent.entry(extra.queue).or_default().insert(extra.checksum);
                acked.push(extra);
            }
            Err(e) => panic!("seed {seed} round {round} (killed after {kill_after} acks): {e}"),
        }
    }
}

/// One acknowledgement the child printed.
#[derive(Debug, Clone, Copy)]
struct Ack {
    queue: u32,
    base: u64,
    last: u64,
    checksum: u32,
    durable: bool,
}

/// What a child printed: its acknowledgements, and (queue, checksum) of every batch it sent.
type ChildLog = (Vec<Ack>, Vec<(u32, u32)>);

/// Starts a child, reads its acks until `kill_after` of them arrived, SIGKILLs it, then drains
/// what it printed before dying. Returns the acks and the (queue, checksum) of every batch sent.
fn run_child_until(dir: &Path, round: u64, kill_after: u64) -> Result<ChildLog, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let (tx, rx) = mpsc::sync_channel::<String>(LINE_CHANNEL_DEPTH);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acks = Vec::new();
    let mut sent = Vec::new();
    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut killed = false;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(line) => parse_line(&line, &mut acks, &mut sent)?,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "child gave only {} acks in {ROUND_TIMEOUT:?}",
                    acks.len()
                ));
            }
        }
        if !killed && acks.len() as u64 >= kill_after {
            // Child::kill sends SIGKILL on Unix: no destructor, no flush, no close.
            child.kill().map_err(|e| format!("SIGKILL: {e}"))?;
            killed = true;
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = reader.join();
    if !killed {
        return Err(format!(
            "child exited by itself ({status}) after {} acks",
            acks.len()
        ));
    }
    Ok((acks, sent))
}

fn parse_line(line: &str, acks: &mut Vec<Ack>, sent: &mut Vec<(u32, u32)>) -> Result<(), String> {
    // libtest prints "test <name> ... " without a newline before running the child's test, so
    // the first line of ours may follow it: start at our tag wherever it is.
    let tagged = ["SEND ", "ACK ", "FAIL "]
        .iter()
        .filter_map(|t| line.find(t))
        .min();
    let Some(start) = tagged else { return Ok(()) };
    let line = &line[start..];
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad child line {line:?}"))
    };
    match f.first() {
        Some(&"SEND") => sent.push((num(1)? as u32, num(2)? as u32)),
        Some(&"ACK") => acks.push(Ack {
            queue: num(1)? as u32,
            base: num(2)?,
            last: num(3)?,
            checksum: num(4)? as u32,
            durable: f.get(5) == Some(&"D"),
        }),
        Some(&"FAIL") => return Err(format!("child reported: {line}")),
        _ => {} // libtest chatter
    }
    Ok(())
}

/// Reopens the shard and checks it against everything the children acknowledged and sent.
/// Ends with one more Durable append (returned, so later rounds expect it too).
async fn verify(
    cfg: ShardConfig,
    acked: &[Ack],
    sent: &HashMap<u32, HashSet<u32>>,
    round: u64,
) -> Result<Ack, String> {
    let shard = Shard::open(cfg).await.map_err(|e| format!("reopen: {e}"))?;
    // A process death keeps every completed write, so every index file prefix that a
    // checkpoint counts must verify; a rebuild means a checkpoint counted unwritten records.
    if shard.rebuilt_index_segments() != 0 {
        return Err(format!(
            "{} segment index file(s) had to be rebuilt after a SIGKILL",
            shard.rebuilt_index_segments()
        ));
    }
    // Walk every queue from 0: dense, valid, and made only of batches the child sent.
    let mut stored: BTreeMap<u32, BTreeMap<u64, (u64, u32)>> = BTreeMap::new();
    for q in 0..QUEUES {
        let end = shard.end_offset(QueueId(q)).0;
        let start = shard.log_start_offset(QueueId(q)).0;
        if start != 0 {
            return Err(format!("q{q}: log start {start} without retention"));
        }
        let mut at = 0;
        while at < end {
            let r = shard
                .read(QueueId(q), Offset(at), 256 << 10)
                .await
                .map_err(|e| format!("q{q} read {at}: {e}"))?;
            if r.batches.is_empty() {
                return Err(format!("q{q}: no batch at {at} < end {end}"));
            }
            for b in &r.batches {
                let h =
                    validate(b).map_err(|e| format!("q{q}: stored batch at {at} invalid: {e}"))?;
                if h.base_offset != at as i64 {
                    return Err(format!(
                        "q{q}: batch at {at} has base offset {} (hole or overlap)",
                        h.base_offset
                    ));
                }
                let crc = sent_checksum(b);
                if !sent.get(&q).is_some_and(|s| s.contains(&crc)) {
                    let elsewhere: Vec<u32> = sent
                        .iter()
                        .filter(|(_, s)| s.contains(&crc))
                        .map(|(q, _)| *q)
                        .collect();
                    return Err(format!(
                        "q{q}: batch at {at} is not one the child sent to q{q} (checksum {crc}, \
                         sent to queues {elsewhere:?}, header {h:?})"
                    ));
                }
                let n = record_count(b);
                stored.entry(q).or_default().insert(at, (at + n - 1, crc));
                at += n;
            }
        }
        if at != end {
            return Err(format!("q{q}: batches end at {at}, end offset says {end}"));
        }
    }
    for a in acked {
        let found = stored.get(&a.queue).and_then(|m| m.get(&a.base));
        match found {
            Some(&(last, crc)) if last == a.last && crc == a.checksum => {}
            Some(&(last, crc)) => {
                return Err(format!(
                    "q{}: acked {:?} differs from stored (last {last}, checksum {crc})",
                    a.queue, a
                ))
            }
            None => return Err(format!("q{}: acknowledged batch {a:?} is missing", a.queue)),
        }
    }
    // Offsets continue densely after recovery.
    let end = shard.end_offset(QueueId(0));
    let batch = make_batch(u64::MAX - round, 1, 10);
    let checksum = sent_checksum(&batch);
    let a = shard
        .append(QueueId(0), batch, Durability::Durable)
        .await
        .map_err(|e| format!("append after recovery: {e}"))?;
    if a.base_offset != end {
        return Err(format!(
            "append after recovery got {:?}, end was {end:?}",
            a.base_offset
        ));
    }
    shard.close().await.map_err(|e| format!("close: {e}"))?;
    Ok(Ack {
        queue: 0,
        base: a.base_offset.0,
        last: a.last_offset.0,
        checksum,
        durable: true,
    })
}

/// The child: appends forever from many tasks, printing SEND before and ACK after each append.
fn child_main(dir: PathBuf, round: u64) {
    run_glommio(move || async move {
        let shard = match Shard::open(config(&dir)).await {
            Ok(s) => s,
            Err(e) => {
                println!("FAIL open: {e}");
                return;
            }
        };
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|i| glommio::spawn_local(appender(shard.clone(), round, i)))
            .collect();
        for t in tasks {
            t.await;
        }
    });
}

async fn appender(shard: Rc<Shard>, round: u64, id: u64) {
    let mut out = std::io::stdout();
    for n in 0u64.. {
        let seed = round << 48 | id << 32 | n;
        let queue = ((id + n) % u64::from(QUEUES)) as u32;
        let batch = make_batch(seed, 1 + (seed % 7) as usize, 200 + (seed % 2800) as usize);
        let checksum = sent_checksum(&batch);
        let durable = n % 3 != 0;
        // SEND goes out before the append starts, so the parent knows every batch that may
        // legitimately appear, acknowledged or not.
        let _ = writeln!(out, "SEND {queue} {checksum}");
        let _ = out.flush();
        let d = if durable {
            Durability::Durable
        } else {
            Durability::Written
        };
        match shard.append(QueueId(queue), batch, d).await {
            Ok(a) => {
                let tag = if durable { "D" } else { "W" };
                let _ = writeln!(
                    out,
                    "ACK {queue} {} {} {checksum} {tag}",
                    a.base_offset.0, a.last_offset.0
                );
                let _ = out.flush();
            }
            Err(e) => {
                let _ = writeln!(out, "FAIL append: {e}");
                let _ = out.flush();
                return;
            }
        }
    }
}

fn time_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()) << 20) | 1
}

fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}
