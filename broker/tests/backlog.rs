//! Backlog reads through the real binary: a backlog larger than the engine's tail cache
//! (64 MiB), read back byte-exact before a restart (its oldest part from disk) and after
//! restarts (all from disk) with each `--fetch-backlog-read` mode, on two cores (so part of
//! every fetch is read on the other core; in `sendfile` mode its file ranges cross cores).
//! Consumers that close their connection in the middle of a sendfile response.

mod common;

use kafka_protocol::messages::{FetchRequest, FetchResponse};

use common::backlog::{check, fetch_from, fill, unread, varied_batch};
use common::{Broker, Client};

const TOPIC: &str = "backlog";
const PARTITIONS: i32 = 4;
/// More than the engine's default tail cache (64 MiB).
const BACKLOG_BYTES: usize = 72 << 20;

/// Batches of 1-9 records of 2-110 KB.
fn batch(p: i32, i: usize) -> Vec<u8> {
    let records = 1 + (i * 7 + p as usize) % 9;
    let value_len = 2_000 + ((p as usize * 31 + i * 17) % 13) * 9_000;
    varied_batch(p, i, records, value_len)
}

fn fill_backlog(c: &mut Client) -> Vec<Vec<bytes::Bytes>> {
    fill(c, TOPIC, PARTITIONS, BACKLOG_BYTES, batch)
}

/// A fetch of every partition from offset 0.
fn fetch_everything(partition_max_bytes: i32, max_bytes: i32) -> FetchRequest {
    fetch_from(
        TOPIC,
        &[0; PARTITIONS as usize],
        partition_max_bytes,
        max_bytes,
    )
}

/// Fetches every partition from offset 0 to its high watermark (all partitions in each
/// request) and checks every batch byte for byte.
fn read_back(c: &mut Client, want: &[Vec<bytes::Bytes>], what: &str) {
    let mut next = vec![0i64; want.len()];
    let mut got = vec![0usize; want.len()];
    let mut fetches = 0;
    while unread(want, &got) {
        fetches += 1;
        assert!(fetches < 10_000, "{what}: no progress");
        let resp: FetchResponse = c.call(11, &fetch_from(TOPIC, &next, 3 << 20, 8 << 20));
        check(&resp, want, &mut next, &mut got, what);
    }
}

#[test]
fn a_backlog_larger_than_the_tail_cache_reads_back_byte_exact_in_every_mode() {
    let broker = Broker::start(&["--cores", "2", "--fetch-backlog-read", "readahead"]);
    let mut c = broker.client();
    let want = fill_backlog(&mut c);
    // Before a restart: the oldest batches were evicted from the tail cache (disk), the rest
    // come from memory.
    read_back(&mut c, &want, "readahead, before restart");
    drop(c);
    let (status, mut dir) = broker.stop();
    assert!(status.success());
    // After a restart the tail cache is empty: everything comes from disk.
    for mode in ["direct", "readahead", "sendfile"] {
        let broker = Broker::start_in(dir, &["--cores", "2", "--fetch-backlog-read", mode]);
        let mut c = broker.client();
        read_back(&mut c, &want, &format!("{mode}, after restart"));
        if mode == "sendfile" {
            // Catches a sendfile mode that silently reads instead, or ranges that do not
            // cross cores: both cores' shards opened a buffered descriptor of a segment to
            // send from. (The engine's own descriptors are O_DIRECT; glommio sets that flag
            // just after opening, so other modes may show one briefly: not checked.)
            let buffered = buffered_segment_fds(broker.child.id());
            let shards: std::collections::BTreeSet<_> = buffered
                .iter()
                .filter_map(|f| f.split('/').find(|c| c.starts_with("shard-")))
                .collect();
            assert_eq!(
                shards.len(),
                2,
                "buffered segment descriptors: {buffered:?}"
            );
        }
        drop(c);
        let (status, d) = broker.stop();
        assert!(status.success());
        dir = d;
    }
}

#[test]
fn consumers_closing_mid_sendfile_leave_the_broker_serving_others() {
    // Catches: a send thread that keeps writing to (or waiting on) a closed connection, so
    // its send slot is never freed (after MAX_FILE_SENDS_PER_CORE such consumers every later
    // file response waits forever); SIGPIPE killing the broker; a failed send leaving the
    // connection's write loop or the core stuck.
    let broker = Broker::start(&["--cores", "2", "--fetch-backlog-read", "sendfile"]);
    let mut c = broker.client();
    let want = fill_backlog(&mut c);
    drop(c);
    let (status, dir) = broker.stop();
    assert!(status.success());
    let mut broker = Broker::start_in(dir, &["--cores", "2", "--fetch-backlog-read", "sendfile"]);
    for round in 0..8 {
        let mut quitter = broker.client();
        quitter.send(11, &fetch_everything(16 << 20, 60 << 20));
        // The response (tens of MiB) cannot fit in the socket buffers: the broker is in the
        // middle of sending it when the consumer goes.
        let mut size = [0u8; 4];
        std::io::Read::read_exact(&mut quitter.stream, &mut size).unwrap();
        let size = i32::from_be_bytes(size);
        assert!(size > 16 << 20, "round {round}: response of {size} bytes");
        drop(quitter);
    }
    let mut c = broker.client();
    read_back(&mut c, &want, "sendfile, after consumers left mid-response");
    assert!(broker.alive());
    drop(c);
    let (status, _) = broker.stop();
    assert!(status.success());
}

/// Descriptors of `pid` open on commit-log segments without O_DIRECT (the engine's own are
/// all O_DIRECT; sendfile mode opens buffered ones), as "path flags".
fn buffered_segment_fds(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & libc::O_DIRECT as u32 == 0 {
            found.push(format!("{} {flags:o}", target.display()));
        }
    }
    found
}
