//! Damaged files on disk: torn tails, garbage tails, flipped bits and crafted huge lengths in
//! segments, segment index files (`<start>.idx`) and the checkpoint. For every damage:
//! - `Shard::open` never panics and never makes an allocation larger than
//!   [`LARGEST_ALLOCATION_BYTES`] (a global allocator in this test binary records the largest
//!   request); it succeeds or returns a typed `Corrupt`/`Io` error;
//! - when it succeeds, every batch it serves is one we sent, at the offset it was assigned,
//!   byte-identical; queues are dense; no queue appears that was never written; a read may stop
//!   at damaged bytes with `Corrupt`, but never return them;
//! - damage that lies entirely after the Durable-acknowledged data ("after A") loses none of it
//!   and opens successfully; damage to derived files (segment index files: flipped bits, torn
//!   or garbage tails, missing files, a checkpoint counting absurdly many index records;
//!   `checkpoint.tmp`) loses nothing either and never fails the open;
//! - recovery is idempotent: the next append gets the next dense offset, and a second reopen
//!   sees the same data.
//!
//! The on-disk layout is taken from engine/FORMAT.md (64-byte entry header, `payload_len` at
//! byte 56, padding kind 3), which this test walks itself to find where the acknowledged data
//! ends. Damage is pseudo-random from `RINGMQ_CORRUPTION_SEED` (printed on failure).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ringmq_engine::{Durability, EngineError, Offset, QueueId, Shard, ShardConfig};

use common::{make_batch, record_count, run_glommio, small_config, stored_mismatch};

/// The largest single allocation any test here may make: the executor's registered I/O
/// memory (4 MiB) and the engine's largest read (16 MiB) fit; a length read from a damaged
/// file (up to 4 GiB) does not.
const LARGEST_ALLOCATION_BYTES: usize = 24 << 20;

/// Damage cases per test (each on a fresh copy of the image); `RINGMQ_CORRUPTION_CASES`.
const CASES: u64 = 40;
const SEGMENT_BYTES: u64 = 64 << 10;
const MAX_BATCH_BYTES: u32 = 16 << 10;
const QUEUES: u32 = 3;
const ENTRY_HEADER_BYTES: u64 = 64;
const ENTRY_MAGIC: [u8; 4] = *b"RMQE";

struct TrackingAlloc;

static LARGEST_ALLOCATION: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: TrackingAlloc = TrackingAlloc;

/// What was appended, per queue: (base offset, batch as sent).
type Sent = BTreeMap<u32, Vec<(u64, Bytes)>>;

/// A shard directory plus what it should contain.
struct Image {
    dir: tempfile::TempDir,
    sent: Sent,
    /// Per queue, the end offset of the Durable-acknowledged data ("A").
    durable_end: BTreeMap<u32, u64>,
    /// Log position just past A's last entry.
    durable_log_end: u64,
}

fn config(dir: &Path) -> ShardConfig {
    small_config(dir.to_path_buf(), SEGMENT_BYTES, MAX_BATCH_BYTES)
}

/// Appends A (Durable) and then B (Written, never flushed) and ends the executor without
/// closing when `crashed`, else closes cleanly (checkpoint written) after A only. The crashed
/// image is closed and reopened once half-way through A, so it has segment index files and a
/// checkpoint in the middle of its log too.
fn build_image(crashed: bool) -> Image {
    let dir = tempfile::tempdir().expect("temp dir");
    let shard_dir = dir.path().to_path_buf();
    let (sent, durable_end) = run_glommio(move || async move {
        let mut shard = Shard::open(config(&shard_dir))
            .await
            .expect("open a fresh shard");
        let mut sent: Sent = BTreeMap::new();
        let mut seed = 0u64;
        for i in 0..30u32 {
            if crashed && i == 15 {
                shard.close().await.expect("close half-way");
                drop(shard);
                shard = Shard::open(config(&shard_dir)).await.expect("reopen");
            }
            let (q, base, b) = append_one(&shard, &mut seed, i % QUEUES, Durability::Durable).await;
            sent.entry(q).or_default().push((base, b));
        }
        let durable_end: BTreeMap<u32, u64> = (0..QUEUES)
            .map(|q| (q, shard.end_offset(QueueId(q)).0))
            .collect();
        if crashed {
            for i in 0..12u32 {
                let (q, base, b) =
                    append_one(&shard, &mut seed, i % QUEUES, Durability::Written).await;
                sent.entry(q).or_default().push((base, b));
            }
            // Dropping the executor with the shard open is a process death.
        } else {
            shard.close().await.expect("close");
        }
        (sent, durable_end)
    });
    let durable_log_end = log_end_of(dir.path(), &sent, &durable_end);
    Image {
        dir,
        sent,
        durable_end,
        durable_log_end,
    }
}

/// Appends the next pseudo-random batch to queue `q`; returns (queue, base offset, batch).
async fn append_one(shard: &Shard, seed: &mut u64, q: u32, d: Durability) -> (u32, u64, Bytes) {
    *seed += 1;
    let batch = make_batch(
        *seed,
        1 + (*seed % 4) as usize,
        300 + (*seed * 977 % 3000) as usize,
    );
    let a = shard
        .append(QueueId(q), batch.clone(), d)
        .await
        .expect("append");
    (q, a.base_offset.0, batch)
}

/// One entry found by walking the segments per FORMAT.md.
#[derive(Debug, Clone)]
struct EntryAt {
    log_pos: u64,
    len: u64,
    queue: u32,
    base_offset: u64,
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .expect("list shard dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
        .collect();
    v.sort();
    v
}

/// Walks every segment's entries (batch and padding) until the first non-entry.
fn walk_entries(dir: &Path) -> Vec<EntryAt> {
    let mut out = Vec::new();
    for (start, path) in segments(dir) {
        let data = std::fs::read(&path).expect("read segment");
        let mut at = 0u64;
        while at + ENTRY_HEADER_BYTES <= data.len() as u64 {
            let h = &data[at as usize..(at + ENTRY_HEADER_BYTES) as usize];
            if h[0..4] != ENTRY_MAGIC {
                break;
            }
            let kind = h[5];
            let payload = u64::from(u32::from_le_bytes(h[56..60].try_into().expect("4 bytes")));
            let len = ENTRY_HEADER_BYTES + payload;
            if kind == 1 {
                out.push(EntryAt {
                    log_pos: start + at,
                    len,
                    queue: u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")),
                    base_offset: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
                });
            }
            at += len;
        }
    }
    out
}

/// Log position just past the last entry of A.
fn log_end_of(dir: &Path, sent: &Sent, durable_end: &BTreeMap<u32, u64>) -> u64 {
    let entries = walk_entries(dir);
    let mut end = 0;
    for (q, batches) in sent {
        for (base, _) in batches.iter().filter(|(b, _)| *b < durable_end[q]) {
            let e = entries
                .iter()
                .find(|e| e.queue == *q && e.base_offset == *base)
                .unwrap_or_else(|| panic!("entry q{q}@{base} not found by walking the segments"));
            end = end.max(e.log_pos + e.len);
        }
    }
    end
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).expect("copy file");
        }
    }
}

/// Which damage, and what must survive it.
#[derive(Debug, Clone)]
enum Damage {
    /// Flip one bit of a segment at log position >= A's end.
    FlipAfterDurable { log_pos: u64, bit: u8 },
    /// Random bytes over [log_pos, log_pos + len), after A.
    GarbageAfterDurable { log_pos: u64, len: u64 },
    /// Zeroes from log_pos to the end of its segment (a torn tail: never written), after A.
    ZeroTailAfterDurable { log_pos: u64 },
    /// A plausible entry header after A whose payload length is ~4 GiB.
    HugeLengthAfterDurable { log_pos: u64 },
    /// Flip one bit anywhere in any file (segment, index, checkpoint).
    FlipAnywhere { file: PathBuf, byte: u64, bit: u8 },
    /// Random bytes appended to an index file (leftovers of an interrupted checkpoint).
    IndexGarbageTail { file: PathBuf, len: u64 },
    /// Flip one bit of a segment index file.
    IndexFlip { file: PathBuf, byte: u64, bit: u8 },
    /// A segment index file cut to `keep` bytes (a torn write, or lost on power failure).
    IndexTornTail { file: PathBuf, keep: u64 },
    /// A segment index file deleted.
    IndexMissing { file: PathBuf },
    /// A checkpoint (with a valid CRC) counting ~17.6 trillion records in its first segment's
    /// index file: recovery must bound the count before reading.
    IndexHugeCount,
    /// Random bytes as `checkpoint.tmp` (a checkpoint write that never got renamed).
    StaleCheckpointTmp { len: u64 },
    /// A checkpoint claiming ~268 million queue records (CRC left wrong).
    CheckpointHugeCount,
}

impl Damage {
    /// Whether all of A must survive (and open must succeed).
    fn keeps_durable(&self) -> bool {
        !matches!(
            self,
            Damage::FlipAnywhere { .. } | Damage::CheckpointHugeCount
        )
    }
}

fn pick_damage(img: &Image, dir: &Path, rng: &mut u64) -> Damage {
    let segs = segments(dir);
    let log_total: u64 = segs.last().map_or(0, |(s, _)| s + SEGMENT_BYTES);
    let written_end = walk_entries(dir)
        .iter()
        .map(|e| e.log_pos + e.len)
        .max()
        .unwrap_or(0);
    // Mostly within the written tail (where a torn write would be), sometimes past it.
    let after = |rng: &mut u64| {
        let span = (written_end + 8192)
            .min(log_total)
            .saturating_sub(img.durable_log_end)
            .max(1);
        img.durable_log_end + next(rng) % span
    };
    let idx: Vec<PathBuf> = all_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    match next(rng) % 10 {
        0 => Damage::FlipAfterDurable {
            log_pos: after(rng),
            bit: (next(rng) % 8) as u8,
        },
        1 => Damage::GarbageAfterDurable {
            log_pos: after(rng),
            len: 1 + next(rng) % 6000,
        },
        2 => Damage::ZeroTailAfterDurable {
            log_pos: after(rng),
        },
        3 => Damage::HugeLengthAfterDurable {
            log_pos: written_end.max(img.durable_log_end),
        },
        4 | 5 => {
            let files = all_files(dir);
            let file = files[(next(rng) % files.len() as u64) as usize].clone();
            let size = std::fs::metadata(&file)
                .map(|m| m.len())
                .unwrap_or(1)
                .max(1);
            // Segments are mostly preallocated zeroes: aim at the written part.
            let limit = if file.extension().is_some_and(|x| x == "log") {
                size.min(written_end.max(1))
            } else {
                size
            };
            Damage::FlipAnywhere {
                file,
                byte: next(rng) % limit.max(1),
                bit: (next(rng) % 8) as u8,
            }
        }
        6 => {
            if idx.is_empty() {
                Damage::StaleCheckpointTmp {
                    len: 1 + next(rng) % 300,
                }
            } else {
                Damage::IndexGarbageTail {
                    file: idx[(next(rng) % idx.len() as u64) as usize].clone(),
                    len: 1 + next(rng) % 200,
                }
            }
        }
        8 if !idx.is_empty() => {
            let file = idx[(next(rng) % idx.len() as u64) as usize].clone();
            let size = std::fs::metadata(&file).map_or(1, |m| m.len()).max(1);
            match next(rng) % 3 {
                0 => Damage::IndexFlip {
                    file,
                    byte: next(rng) % size,
                    bit: (next(rng) % 8) as u8,
                },
                1 => Damage::IndexTornTail {
                    file,
                    keep: next(rng) % size,
                },
                _ => Damage::IndexMissing { file },
            }
        }
        9 if !idx.is_empty() => Damage::IndexHugeCount,
        _ => {
            if next(rng) % 2 == 0 {
                Damage::StaleCheckpointTmp {
                    len: 1 + next(rng) % 300,
                }
            } else {
                Damage::CheckpointHugeCount
            }
        }
    }
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(all_files(&p));
        } else {
            v.push(p);
        }
    }
    v.sort();
    v
}

/// Applies the damage to the files in `dir`.
fn apply(damage: &Damage, dir: &Path, rng: &mut u64) {
    use std::os::unix::fs::FileExt;
    let at_log_pos = |log_pos: u64| -> Option<(PathBuf, u64)> {
        segments(dir)
            .into_iter()
            .rev()
            .find(|(s, _)| *s <= log_pos)
            .map(|(s, p)| (p, log_pos - s))
    };
    let open_rw = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .expect("open for damage")
    };
    match damage {
        Damage::FlipAfterDurable { log_pos, bit } => {
            if let Some((p, off)) = at_log_pos(*log_pos) {
                flip(&p, off, *bit);
            }
        }
        Damage::GarbageAfterDurable { log_pos, len } => {
            if let Some((p, off)) = at_log_pos(*log_pos) {
                let bytes: Vec<u8> = (0..*len).map(|_| next(rng) as u8).collect();
                let keep = bytes
                    .len()
                    .min((SEGMENT_BYTES.saturating_sub(off)) as usize);
                open_rw(&p)
                    .write_all_at(&bytes[..keep], off)
                    .expect("write garbage");
            }
        }
        Damage::ZeroTailAfterDurable { log_pos } => {
            if let Some((p, off)) = at_log_pos(*log_pos) {
                let len = SEGMENT_BYTES.saturating_sub(off) as usize;
                open_rw(&p)
                    .write_all_at(&vec![0; len], off)
                    .expect("zero tail");
            }
        }
        Damage::HugeLengthAfterDurable { log_pos } => {
            if let Some((p, off)) = at_log_pos(*log_pos) {
                if off + ENTRY_HEADER_BYTES <= SEGMENT_BYTES {
                    let mut h = [0u8; 64];
                    h[0..4].copy_from_slice(&ENTRY_MAGIC);
                    h[4] = 1; // version
                    h[5] = 1; // batch
                    h[56..60].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                    open_rw(&p).write_all_at(&h, off).expect("write header");
                }
            }
        }
        Damage::FlipAnywhere { file, byte, bit } => flip(file, *byte, *bit),
        Damage::IndexGarbageTail { file, len } => {
            let size = std::fs::metadata(file).expect("stat").len();
            let bytes: Vec<u8> = (0..*len).map(|_| next(rng) as u8).collect();
            open_rw(file)
                .write_all_at(&bytes, size)
                .expect("append garbage");
        }
        Damage::IndexFlip { file, byte, bit } => flip(file, *byte, *bit),
        Damage::IndexTornTail { file, keep } => {
            open_rw(file).set_len(*keep).expect("truncate index file");
        }
        Damage::IndexMissing { file } => std::fs::remove_file(file).expect("remove index file"),
        Damage::IndexHugeCount => {
            let p = dir.join("checkpoint");
            let mut b = std::fs::read(&p).expect("read checkpoint");
            let le32 = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
            // FORMAT.md: queue_count at 32, producer_count at 36, segment_count at 44; records
            // of 24 (queue), 176 (producer) and 24 (segment) bytes after the 48-byte header.
            let (queues, producers, segs) = (le32(32), le32(36), le32(44));
            if segs > 0 {
                let at = 48 + 24 * queues as usize + 176 * producers as usize;
                b[at + 8..at + 16].copy_from_slice(&0x0000_0FFF_FFFF_FFFFu64.to_le_bytes());
                let end = b.len() - 4;
                let crc = crc32c::crc32c(&b[..end]);
                b[end..].copy_from_slice(&crc.to_le_bytes());
                std::fs::write(&p, b).expect("write checkpoint");
            }
        }
        Damage::StaleCheckpointTmp { len } => {
            let bytes: Vec<u8> = (0..*len).map(|_| next(rng) as u8).collect();
            std::fs::write(dir.join("checkpoint.tmp"), bytes).expect("write checkpoint.tmp");
        }
        Damage::CheckpointHugeCount => {
            let p = dir.join("checkpoint");
            if p.exists() {
                let f = open_rw(&p);
                f.write_all_at(&0x0FFF_FFFFu32.to_le_bytes(), 32)
                    .expect("queue_count");
                f.write_all_at(&(0x0FFF_FFFFu32.wrapping_mul(24)).to_le_bytes(), 40)
                    .expect("body_len");
            }
        }
    }
}

fn flip(path: &Path, byte: u64, bit: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flip");
    let mut b = [0u8; 1];
    if f.read_exact_at(&mut b, byte).is_ok() {
        b[0] ^= 1 << (bit % 8);
        f.write_all_at(&b, byte).expect("write flipped byte");
    }
}

/// Opens the damaged copy and checks it; then appends once, reopens and checks again.
async fn check_damaged(
    cfg: ShardConfig,
    sent: &Sent,
    durable_end: &BTreeMap<u32, u64>,
    must_keep: bool,
) -> Result<Outcome, String> {
    let shard = match Shard::open(cfg.clone()).await {
        Ok(s) => s,
        Err(EngineError::Corrupt { .. } | EngineError::Io { .. }) if !must_keep => {
            return Ok(Outcome::Refused);
        }
        Err(e) => return Err(format!("open failed: {e:?}")),
    };
    let ends = check_contents(&shard, sent, durable_end, must_keep).await?;
    let q0_end = shard.end_offset(QueueId(0));
    if !ends.get(&0).is_some_and(|(_, corrupt)| *corrupt) {
        let a = shard
            .append(QueueId(0), make_batch(9_999, 1, 50), Durability::Durable)
            .await
            .map_err(|e| format!("append after recovery: {e}"))?;
        if a.base_offset != q0_end {
            return Err(format!(
                "append after recovery got {:?}, end was {q0_end:?}",
                a.base_offset
            ));
        }
    }
    shard.close().await.map_err(|e| format!("close: {e}"))?;
    drop(shard);
    // Idempotence: a second recovery sees the same queues (q0 one batch longer).
    let shard = Shard::open(cfg)
        .await
        .map_err(|e| format!("second open: {e}"))?;
    for (q, (end, corrupt)) in &ends {
        let now = shard.end_offset(QueueId(*q)).0;
        let expected = if *q == 0 && !corrupt { end + 1 } else { *end };
        if now != expected {
            return Err(format!(
                "q{q}: second reopen end {now}, first {end} (expected {expected})"
            ));
        }
    }
    shard
        .close()
        .await
        .map_err(|e| format!("second close: {e}"))?;
    Ok(Outcome::Opened)
}

/// Walks every queue: dense, identical to what was sent, no unknown queue; with `must_keep`
/// all of A readable. Returns per queue (end offset, whether a read stopped at `Corrupt`).
async fn check_contents(
    shard: &Shard,
    sent: &Sent,
    durable_end: &BTreeMap<u32, u64>,
    must_keep: bool,
) -> Result<BTreeMap<u32, (u64, bool)>, String> {
    for q in shard.queues() {
        if !sent.contains_key(&q.0) {
            return Err(format!("queues() lists {q:?}, never written"));
        }
    }
    let mut ends = BTreeMap::new();
    for (q, batches) in sent {
        let end = shard.end_offset(QueueId(*q)).0;
        let sent_end = batches
            .last()
            .map_or(0, |(b, batch)| b + record_count(batch));
        if end > sent_end {
            return Err(format!(
                "q{q}: end {end} beyond everything sent ({sent_end})"
            ));
        }
        if must_keep && end < durable_end[q] {
            return Err(format!(
                "q{q}: end {end} lost Durable data (A ends at {})",
                durable_end[q]
            ));
        }
        let mut at = 0;
        let mut corrupt = false;
        while at < end {
            let r = match shard.read(QueueId(*q), Offset(at), 64 << 10).await {
                Ok(r) => r,
                Err(EngineError::Corrupt { .. }) if !must_keep || at >= durable_end[q] => {
                    corrupt = true;
                    break;
                }
                Err(e) => return Err(format!("q{q}: read at {at} (end {end}): {e}")),
            };
            if r.batches.is_empty() {
                return Err(format!("q{q}: empty read at {at} < end {end}"));
            }
            for stored in &r.batches {
                let Some((base, batch)) = batches.iter().find(|(b, _)| *b == at) else {
                    return Err(format!("q{q}: no sent batch starts at {at}"));
                };
                if let Some(why) = stored_mismatch(stored, batch, Offset(*base)) {
                    return Err(format!(
                        "q{q}: batch at {at} served damaged or wrong: {why}"
                    ));
                }
                at += record_count(batch);
            }
        }
        ends.insert(*q, (end, corrupt));
    }
    Ok(ends)
}

fn run_cases(crashed: bool) {
    let seed: u64 = std::env::var("RINGMQ_CORRUPTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0000 + u64::from(crashed));
    let img = build_image(crashed);
    let cases = std::env::var("RINGMQ_CORRUPTION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    let mut rng = seed | 1;
    let mut outcomes: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for case in 0..cases {
        let copy = tempfile::tempdir().expect("temp dir");
        let dir = copy.path().join("shard");
        copy_dir(img.dir.path(), &dir);
        let damage = pick_damage(&img, &dir, &mut rng);
        apply(&damage, &dir, &mut rng);
        let must_keep = damage.keeps_durable();
        let (cfg, sent, durable_end) = (config(&dir), img.sent.clone(), img.durable_end.clone());
        let verdict =
            run_glommio(
                move || async move { check_damaged(cfg, &sent, &durable_end, must_keep).await },
            );
        let kind = damage_kind(&damage);
        let o = outcomes.entry(kind).or_default();
        match &verdict {
            Ok(Outcome::Opened) => o.0 += 1,
            Ok(Outcome::Refused) => o.1 += 1,
            Err(_) => {}
        }
        if let Err(e) = verdict {
            panic!("seed {seed} case {case} ({damage:?}, crashed image {crashed}, A ends at log pos {}): {e}", img.durable_log_end);
        }
        let largest = LARGEST_ALLOCATION.load(Ordering::Relaxed);
        assert!(
            largest <= LARGEST_ALLOCATION_BYTES,
            "seed {seed} case {case} ({damage:?}): an allocation of {largest} bytes > limit {LARGEST_ALLOCATION_BYTES}"
        );
    }
    // Visible with --nocapture: which damages were tried and how open answered (opened, refused).
    eprintln!(
        "corruption (crashed image {crashed}, seed {seed}): {outcomes:?}; largest allocation {} B",
        LARGEST_ALLOCATION.load(Ordering::Relaxed)
    );
}

/// The damage's name, with the file kind for bit flips anywhere.
fn damage_kind(damage: &Damage) -> String {
    let name = format!("{damage:?}");
    let name = name.split([' ', '{']).next().unwrap_or("?").to_string();
    match damage {
        Damage::FlipAnywhere { file, .. } | Damage::IndexFlip { file, .. } => {
            let ext = file
                .extension()
                .and_then(|x| x.to_str())
                .unwrap_or("checkpoint");
            format!("{name}({ext})")
        }
        _ => name,
    }
}

/// How a damaged shard answered.
enum Outcome {
    Opened,
    /// `open` returned a typed Corrupt/Io error (allowed where durable data was hit).
    Refused,
}

#[test]
fn damage_to_a_cleanly_closed_shard() {
    run_cases(false);
}

#[test]
fn damage_to_a_crashed_shard() {
    run_cases(true);
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}
