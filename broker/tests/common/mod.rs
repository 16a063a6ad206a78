//! Runs the real `ringmq` binary on a free port and talks the Kafka protocol to it.
#![allow(dead_code)]

pub mod backlog;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::protocol::{Decodable, Request};
use ringmq_wire::frame::{decode_response_header, encode_request};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a test waits for the broker to answer before failing.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker with `args` (plus a free port and a temp data dir) and waits for its
    /// "listening" line.
    pub fn start(args: &[&str]) -> Broker {
        Broker::start_in(tempfile::tempdir().unwrap(), args)
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Broker {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
        command
            .args([
                "--segment-size-bytes",
                "16777216",
                "--group-initial-rebalance-delay-ms",
                "0",
            ])
            .args(args)
            .stderr(Stdio::inherit());
        let mut child = spawn(command, dir.path());
        let addr = listening_addr(&mut child);
        Broker { child, addr, dir }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn stop(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        // SAFETY: signalling our own child process by its id.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (status, dir)
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Starts `command` (a `ringmq` with its own arguments and stderr) listening on a free port
/// with its data in `dir`; [`listening_addr`] then waits for its address.
pub fn spawn(mut command: Command, dir: &std::path::Path) -> Child {
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ringmq")
}

/// Waits for the "listening" line a broker started by [`spawn`] prints first.
pub fn listening_addr(child: &mut Child) -> SocketAddr {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("ringmq listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap()
}

pub fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// A fetch of one partition from `offset`, up to 1 MiB.
pub fn fetch_req(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

pub fn create_topic(c: &mut Client, topic: &str, partitions: i32) {
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)]);
    let resp: CreateTopicsResponse = c.call(7, &req);
    assert_eq!(
        resp.topics[0].error_code, 0,
        "create {topic}: {:?}",
        resp.topics[0].error_message
    );
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub stream: TcpStream,
    next_cid: i32,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            next_cid: 1,
        }
    }

    pub fn send<R: Request>(&mut self, version: i16, body: &R) -> i32 {
        let cid = self.next_cid;
        self.next_cid += 1;
        let frame = encode_request(cid, "ringmq-test", version, body).unwrap();
        self.stream.write_all(&frame).unwrap();
        cid
    }

    /// Reads one response frame: (correlation id, body bytes after the header).
    pub fn recv_raw(&mut self, key: ApiKey, version: i16) -> std::io::Result<(i32, Bytes)> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut buf = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut buf)?;
        let mut frame = Bytes::from(buf);
        let cid = decode_response_header(&mut frame, key, version).unwrap();
        Ok((cid, frame))
    }

    pub fn recv<D: Decodable>(&mut self, key: ApiKey, version: i16) -> (i32, D) {
        let (cid, mut body) = self.recv_raw(key, version).unwrap();
        let decoded = D::decode(&mut body, version).unwrap();
        assert!(
            !body.has_remaining(),
            "{key:?} v{version} response has trailing bytes"
        );
        (cid, decoded)
    }

    pub fn call<R: Request, D: Decodable>(&mut self, version: i16, body: &R) -> D {
        let cid = self.send(version, body);
        let (got, resp) = self.recv::<D>(R::KEY.try_into().unwrap(), version);
        assert_eq!(got, cid, "responses must come back in request order");
        resp
    }

    /// True once the broker closed this connection (read returns EOF or reset).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}
