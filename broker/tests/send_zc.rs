//! `--fetch-send zc` through the real binary on two cores: batches read back byte-exact from
//! the tail cache (in-memory `Bytes`, SENDMSG_ZC) and, after a restart, from the backlog
//! (`--fetch-backlog-read sendfile` file ranges, read into registered slots, SEND_ZC), with
//! pipelined small responses between the zero-copy ones; consumers that close their
//! connection in the middle of a zero-copy response.

mod common;

use bytes::Bytes;
use common::backlog::{check, fetch_from, fill, unread, varied_batch};
use common::{Broker, Client};
use kafka_protocol::messages::*;

const TOPIC: &str = "zc";
const PARTITIONS: i32 = 4;
/// Less than the engine's tail cache (64 MiB): before a restart every fetch is served from
/// memory.
const DATA_BYTES: usize = 40 << 20;
const ARGS: [&str; 6] = [
    "--cores",
    "2",
    "--fetch-send",
    "zc",
    "--fetch-backlog-read",
    "sendfile",
];

/// A batch whose size (a few KiB to ~300 KiB, so responses mix pieces below and above the
/// zero-copy thresholds) and contents depend on (partition, i).
fn batch(p: i32, i: usize) -> Vec<u8> {
    let records = 1 + (i * 5 + p as usize) % 4;
    let value_len = 1_000 + ((p as usize * 37 + i * 13) % 11) * 7_000 * (1 + i % 3);
    varied_batch(p, i, records, value_len)
}

/// Produces round-robin until [`DATA_BYTES`]; returns each partition's batches as stored.
fn fill_topic(c: &mut Client) -> Vec<Vec<Bytes>> {
    fill(c, TOPIC, PARTITIONS, DATA_BYTES, batch)
}

/// Reads every partition back byte for byte. Each round pipelines a large fetch, a small
/// request (ApiVersions, written by the executor through its buffer) and a fetch of the
/// same offsets: responses must arrive complete and in request order.
fn read_back(c: &mut Client, want: &[Vec<Bytes>], what: &str) {
    let mut next = vec![0i64; want.len()];
    let mut got = vec![0usize; want.len()];
    let mut rounds = 0;
    while unread(want, &got) {
        rounds += 1;
        assert!(rounds < 10_000, "{what}: no progress");
        let req = fetch_from(TOPIC, &next, 3 << 20, 8 << 20);
        let first = c.send(11, &req);
        let middle = c.send(3, &ApiVersionsRequest::default());
        let again = c.send(11, &req);
        let (cid, a): (i32, FetchResponse) = c.recv(ApiKey::Fetch, 11);
        assert_eq!(cid, first, "{what}: response order");
        let (cid, v): (i32, ApiVersionsResponse) = c.recv(ApiKey::ApiVersions, 3);
        assert_eq!((cid, v.error_code), (middle, 0), "{what}: response order");
        let (cid, b): (i32, FetchResponse) = c.recv(ApiKey::Fetch, 11);
        assert_eq!(cid, again, "{what}: response order");
        let (mut next_b, mut got_b) = (next.clone(), got.clone());
        check(&a, want, &mut next, &mut got, what);
        check(&b, want, &mut next_b, &mut got_b, what);
        assert_eq!(
            got, got_b,
            "{what}: the same fetch twice returned different batches"
        );
    }
}

/// io_uring instances `pid` has open (glommio's, plus one per pool thread that sent with
/// SEND_ZC).
fn rings(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.to_string_lossy().contains("io_uring"))
        .count()
}

#[test]
fn zero_copy_sends_read_back_byte_exact_from_the_tail_and_the_backlog() {
    let broker = Broker::start(&ARGS);
    let mut c = broker.client();
    let want = fill_topic(&mut c);
    let before = rings(broker.child.id());
    read_back(&mut c, &want, "zc, tail cache");
    // Catches a zc mode that silently copies: pool threads created their rings.
    assert!(
        rings(broker.child.id()) > before,
        "no SEND_ZC ring was created"
    );
    drop(c);
    let (status, dir) = broker.stop();
    assert!(status.success());
    // After a restart the tail cache is empty: file ranges, read into slots, SEND_ZC.
    let broker = Broker::start_in(dir, &ARGS);
    let mut c = broker.client();
    let before = rings(broker.child.id());
    read_back(&mut c, &want, "zc, backlog");
    assert!(
        rings(broker.child.id()) > before,
        "no SEND_ZC ring was created"
    );
    drop(c);
    let (status, _) = broker.stop();
    assert!(status.success());
}

#[test]
fn consumers_closing_mid_zero_copy_send_leave_the_broker_serving_others() {
    // Catches: a pool thread stuck on (or its pinned budget held by) a connection that is
    // gone, SIGPIPE, a kernel error turned into a panic, a failed send leaving the
    // connection's write loop or the core stuck; in both the tail (bytes) and backlog (file
    // ranges) paths.
    let broker = Broker::start(&ARGS);
    let mut c = broker.client();
    let want = fill_topic(&mut c);
    drop(c);
    let mut broker = broker;
    for phase in ["tail", "backlog"] {
        // One consumer stops reading mid-response and stays connected: its send holds a pool
        // thread (until the stall timeout) and pinned pages, and must hold nothing else.
        let mut staller = broker.client();
        staller.send(
            11,
            &fetch_from(TOPIC, &[0; PARTITIONS as usize], 16 << 20, 60 << 20),
        );
        let mut size = [0u8; 4];
        std::io::Read::read_exact(&mut staller.stream, &mut size).unwrap();
        for round in 0..8 {
            let mut quitter = broker.client();
            quitter.send(
                11,
                &fetch_from(TOPIC, &[0; PARTITIONS as usize], 16 << 20, 60 << 20),
            );
            // Tens of MiB cannot fit the socket buffers: the broker is mid-send when the
            // consumer goes.
            let mut size = [0u8; 4];
            std::io::Read::read_exact(&mut quitter.stream, &mut size).unwrap();
            let size = i32::from_be_bytes(size);
            assert!(
                size > 16 << 20,
                "{phase} round {round}: response of {size} bytes"
            );
            drop(quitter);
        }
        let mut c = broker.client();
        read_back(
            &mut c,
            &want,
            &format!("zc {phase}, after consumers left mid-response"),
        );
        assert!(broker.alive());
        drop(staller);
        drop(c);
        let (status, dir) = broker.stop();
        assert!(status.success());
        broker = Broker::start_in(dir, &ARGS);
    }
    let (status, _) = broker.stop();
    assert!(status.success());
}
