//! One real `ringmq` process: built once, started on a free port over a temporary data
//! directory, restarted, SIGTERMed or SIGKILLed; its output kept for the failure report; and the
//! librdkafka clients pointed at it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::BaseProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::clients::{DeliveryLog, Record, RecordingContext};
use crate::{wait_until, DEADLINE};

/// A test still running this long after starting its broker is hung (a client waiting on a
/// broker that never answers can block without a deadline of its own, e.g. a consumer's close).
/// The watchdog then prints the broker's output and aborts the test process, so CI fails with
/// a reason instead of running into its own time limit.
const HUNG_TEST_LIMIT: Duration = Duration::from_secs(300);

/// Lines of broker output kept for the failure report (the oldest are dropped first).
const MAX_LOG_LINES: usize = 4000;

/// The broker's flag for Kafka's `group.initial.rebalance.delay.ms`.
const GROUP_DELAY_FLAG: &str = "--group-initial-rebalance-delay-ms";

/// The line the broker prints once every core is accepting connections.
const LISTENING_MARKER: &str = "ringmq listening on ";

/// The broker's flag for the port it gives clients in Metadata (the host stays the listen IP).
pub const ADVERTISED_PORT_FLAG: &str = "--advertised-port";

/// Builds the broker binary once per test process and returns its path.
///
/// Runs `cargo build -p ringmq-broker --bin ringmq` with the cargo that built the tests and
/// reads the executable's path from cargo's JSON messages, so the path is right whatever the
/// target directory or profile layout is.
pub fn broker_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_broker_binary)
}

fn build_broker_binary() -> PathBuf {
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent folder");
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace_root)
        .args([
            "build",
            "-p",
            "ringmq-broker",
            "--bin",
            "ringmq",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo to build the broker");
    assert!(
        output.status.success(),
        "cargo build -p ringmq-broker failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "ringmq")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no executable for the `ringmq` binary")
}

/// How to start a broker. `Default` is one core and auto-created topics with one partition.
/// The broker also inherits the test's environment, so `RINGMQ_*` variables reach it (for
/// example `RINGMQ_STORAGE=memory` runs every test on the non-durable store: the restart tests
/// must then fail, which shows they can).
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    pub cores: u32,
    pub default_partitions: u32,
    /// Commit-log segment size. Small by default (the broker's own default is 1 GiB,
    /// preallocated per core): tests then take little disk, and the ones that write more than a
    /// segment cross segment boundaries.
    pub segment_size_bytes: u64,
    /// Extra command-line arguments, appended last.
    pub extra_args: Vec<String>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            cores: 1,
            default_partitions: 1,
            segment_size_bytes: 16 << 20,
            extra_args: Vec::new(),
        }
    }
}

impl BrokerOptions {
    pub fn cores(mut self, cores: u32) -> Self {
        self.cores = cores;
        self
    }

    pub fn default_partitions(mut self, partitions: u32) -> Self {
        self.default_partitions = partitions;
        self
    }

    pub fn segment_size_bytes(mut self, bytes: u64) -> Self {
        self.segment_size_bytes = bytes;
        self
    }

    /// Consumer groups rebalance as soon as members join (Kafka waits 3 s for more by default).
    pub fn no_group_delay(self) -> Self {
        self.arg(GROUP_DELAY_FLAG).arg("0")
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// What the broker printed, shared with the threads that read its pipes.
#[derive(Default)]
struct LogState {
    lines: VecDeque<String>,
    dropped_lines: u64,
    /// The address from the listening line of the current run, if it was printed yet.
    listening: Option<SocketAddr>,
}

#[derive(Default)]
struct BrokerLog {
    state: Mutex<LogState>,
    changed: Condvar,
}

impl BrokerLog {
    fn push(&self, line: String) {
        let mut state = self.state.lock().expect("broker log lock");
        if state.listening.is_none() {
            state.listening = parse_listening_line(&line);
        }
        if state.lines.len() == MAX_LOG_LINES {
            state.lines.pop_front();
            state.dropped_lines += 1;
        }
        state.lines.push_back(line);
        drop(state);
        self.changed.notify_all();
    }

    fn dump(&self) -> String {
        let state = self.state.lock().expect("broker log lock");
        let mut out = String::new();
        if state.dropped_lines > 0 {
            out.push_str(&format!(
                "[{} earlier lines dropped]\n",
                state.dropped_lines
            ));
        }
        for line in &state.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Finds `ADDR` in a line containing `ringmq listening on ADDR`, tolerating a log prefix and
/// colour escapes around it.
fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let start = line.find(LISTENING_MARKER)? + LISTENING_MARKER.len();
    let addr: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// One `ringmq` process over a temporary data directory; killed when dropped.
pub struct Broker {
    options: BrokerOptions,
    data_dir: tempfile::TempDir,
    child: Option<Child>,
    addr: SocketAddr,
    log: Arc<BrokerLog>,
    starts: u32,
    /// The threads copying the current run's stdout and stderr into `log`; they end when the
    /// process closes its pipes, i.e. when it exits.
    pumps: Vec<thread::JoinHandle<()>>,
    /// Dropped with the broker, which stops its watchdog.
    _watchdog: std::sync::mpsc::SyncSender<()>,
}

impl Broker {
    /// Starts a broker with default options (see [`BrokerOptions`]).
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    pub fn start_with(options: BrokerOptions) -> Broker {
        // Build first: a cold build of the broker must not count against the hung-test limit.
        broker_binary();
        let data_dir = tempfile::Builder::new()
            .prefix("ringmq-systest-")
            .tempdir()
            .expect("creating the broker's data dir");
        let log = Arc::new(BrokerLog::default());
        let mut broker = Broker {
            options,
            data_dir,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _watchdog: start_watchdog(Arc::clone(&log)),
            log,
            starts: 0,
            pumps: Vec::new(),
        };
        broker.spawn();
        broker
    }

    /// The address clients connect to (changes on every restart: each run picks a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit();
    }

    /// Starts the broker again over the same data directory (after [`Broker::terminate`] or
    /// [`Broker::kill9`]; a still-running broker is killed first).
    pub fn restart(&mut self) {
        if self.is_running() {
            self.kill9();
        }
        self.spawn();
    }

    /// Everything the broker printed so far (bounded to the last lines).
    pub fn output(&self) -> String {
        self.log.dump()
    }

    /// The client configuration every helper starts from.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("client.id", "ringmq-system-tests")
            // Give up with an error well inside the test deadline rather than after 5 minutes.
            .set("message.timeout.ms", "45000")
            .set("socket.timeout.ms", "30000")
            .set("request.timeout.ms", "30000")
            .set("broker.address.family", "v4");
        config
    }

    /// A producer that records every delivery report in `deliveries`.
    pub fn producer(
        &self,
        settings: &[(&str, &str)],
        deliveries: &Arc<DeliveryLog>,
    ) -> BaseProducer<RecordingContext> {
        let mut config = self.client_config();
        for (key, value) in settings {
            config.set(*key, *value);
        }
        config
            .create_with_context(RecordingContext(Arc::clone(deliveries)))
            .expect("creating a librdkafka producer")
    }

    /// A consumer with the given settings. Unless the settings name a group, it gets a group id
    /// of its own (librdkafka refuses `assign` without one) that it never joins or commits to:
    /// partitions are assigned by hand.
    pub fn consumer(&self, settings: &[(&str, &str)]) -> BaseConsumer {
        static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let reader = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut config = self.client_config();
        config
            .set("group.id", format!("ringmq-systest-reader-{reader}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        config.create().expect("creating a librdkafka consumer")
    }

    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client_config()
            .create()
            .expect("creating a librdkafka admin client")
    }

    /// The partition count the broker reports for `topic`, auto-creating it if the broker does
    /// that.
    pub fn partition_count(&self, topic: &str) -> usize {
        self.metadata_partitions(topic, true)
    }

    /// The partition count of an existing topic; asks without auto-creation, so a topic the
    /// broker forgot is an error, not a new empty topic.
    pub fn existing_partition_count(&self, topic: &str) -> usize {
        self.metadata_partitions(topic, false)
    }

    /// Earliest and end offsets of one partition (ListOffsets through librdkafka).
    pub fn watermarks(&self, topic: &str, partition: i32) -> (i64, i64) {
        let consumer = self.consumer(&[("group.id", "watermarks")]);
        consumer
            .fetch_watermarks(topic, partition, DEADLINE)
            .expect("watermarks")
    }

    /// Into each partition of each topic: five records stamped `age_ms` ago ("old-0".."old-4"),
    /// then five stamped now ("new-0".."new-4"), the old ones acknowledged (acks=all) before
    /// the new ones are sent, so the two never share a batch. A retention limit between the
    /// two ages moves each partition's earliest offset from 0 to 5.
    pub fn produce_old_then_new(&self, topics: &[&str], partitions: i32, age_ms: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let log = DeliveryLog::new();
        let producer = self.producer(&[("acks", "all")], &log);
        for (stamp, tag) in [(now - age_ms, "old"), (now, "new")] {
            for topic in topics {
                for partition in 0..partitions {
                    for i in 0..5 {
                        let payload = format!("{tag}-{i}");
                        crate::send(
                            &producer,
                            rdkafka::producer::BaseRecord::to(topic)
                                .partition(partition)
                                .payload(payload.as_bytes())
                                .timestamp(stamp),
                        );
                    }
                }
            }
            crate::flush(&producer);
        }
        log.assert_no_failures();
    }

    fn metadata_partitions(&self, topic: &str, auto_create: bool) -> usize {
        let auto_create = if auto_create { "true" } else { "false" };
        let consumer = self.consumer(&[("allow.auto.create.topics", auto_create)]);
        let metadata = consumer
            .fetch_metadata(Some(topic), DEADLINE)
            .expect("fetching metadata");
        let topic_md = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .unwrap_or_else(|| panic!("metadata has no topic {topic}"));
        assert!(
            topic_md.error().is_none(),
            "metadata error for {topic}: {:?}",
            topic_md.error()
        );
        topic_md.partitions().len()
    }

    /// Reads every partition of `topic` from the beginning to its end (as seen when each
    /// partition reports end-of-partition) and returns the records in the order received.
    pub fn read_all(&self, topic: &str, partitions: usize) -> Vec<Record> {
        let consumer = self.consumer(&[("enable.partition.eof", "true")]);
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            let partition = i32::try_from(partition).expect("partition fits i32");
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("building the assignment");
        }
        consumer.assign(&assignment).expect("assigning partitions");
        let mut at_end = vec![false; partitions];
        let mut records = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while at_end.iter().any(|done| !done) {
            assert!(
                Instant::now() < deadline,
                "reading {topic}: only partitions {:?} reached their end after {DEADLINE:?}; {} records read",
                at_end
                    .iter()
                    .enumerate()
                    .filter(|(_, done)| **done)
                    .map(|(p, _)| p)
                    .collect::<Vec<_>>(),
                records.len()
            );
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(message)) => {
                    let index = usize::try_from(message.partition()).expect("partition >= 0");
                    // A record after the end was reported means the partition grew: keep reading.
                    at_end[index] = false;
                    records.push(Record::from_message(&message));
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end[usize::try_from(partition).expect("partition >= 0")] = true;
                }
                Some(Err(err)) => panic!("consumer error while reading {topic}: {err}"),
            }
        }
        records
    }

    fn spawn(&mut self) {
        let binary = broker_binary();
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--cores")
            .arg(self.options.cores.to_string())
            .arg("--default-partitions")
            .arg(self.options.default_partitions.to_string())
            .arg("--segment-size-bytes")
            .arg(self.options.segment_size_bytes.to_string())
            .args(&self.options.extra_args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::dies_with_its_parent(&mut command);
        self.starts += 1;
        {
            let mut state = self.log.state.lock().expect("broker log lock");
            state.listening = None;
        }
        self.log.push(format!(
            "=== ringmq start #{} ({}) ===",
            self.starts,
            binary.display()
        ));
        let mut child = command.spawn().expect("spawning the ringmq binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        self.pumps = vec![
            pump_lines(stdout, Arc::clone(&self.log)),
            pump_lines(stderr, Arc::clone(&self.log)),
        ];
        self.child = Some(child);
        self.addr = self.wait_listening();
    }

    fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + DEADLINE;
        let mut state = self.log.state.lock().expect("broker log lock");
        loop {
            if let Some(addr) = state.listening {
                return addr;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                drop(state);
                self.drain_output();
                panic!(
                    "ringmq exited ({status}) before printing '{LISTENING_MARKER}ADDR'; output:\n{}",
                    self.output()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                panic!(
                    "ringmq printed no '{LISTENING_MARKER}ADDR' line within {DEADLINE:?}; output:\n{}",
                    self.output()
                );
            }
            // Woken by every new line; the timeout only bounds how late an exit is noticed.
            let wait = (deadline - now).min(Duration::from_millis(100));
            state = self
                .log
                .changed
                .wait_timeout(state, wait)
                .expect("broker log lock")
                .0;
        }
    }

    /// After the process exited: waits until its last lines are in the log.
    fn drain_output(&mut self) {
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
    }

    fn signal(&mut self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("broker was started");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain syscall on our own child's pid; the child is not reaped yet (we hold it
        // un-waited), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("broker was started");
        let status = wait_until(DEADLINE, "ringmq to exit", || {
            child.try_wait().expect("waiting for ringmq")
        });
        self.drain_output();
        self.log.push(format!(
            "=== ringmq run #{} ended: {status} ===",
            self.starts
        ));
        status
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.drain_output();
        if thread::panicking() {
            eprintln!(
                "----- ringmq output (data dir {}) -----\n{}----- end of ringmq output -----",
                self.data_dir.path().display(),
                self.output()
            );
        }
    }
}

fn start_watchdog(log: Arc<BrokerLog>) -> std::sync::mpsc::SyncSender<()> {
    let (alive, watched) = std::sync::mpsc::sync_channel::<()>(1);
    let test = thread::current().name().unwrap_or("<unnamed>").to_string();
    thread::spawn(move || {
        // Nothing is ever sent: the wait ends when the Broker is dropped (disconnect) or when
        // the limit passes.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            watched.recv_timeout(HUNG_TEST_LIMIT)
        {
            eprintln!(
                "test {test} is hung: still running {HUNG_TEST_LIMIT:?} after starting its broker; \
                 aborting. ringmq output:\n{}",
                log.dump()
            );
            std::process::abort();
        }
    });
    alive
}

fn pump_lines(pipe: impl Read + Send + 'static, log: Arc<BrokerLog>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    log.push(text.trim_end().to_string());
                }
            }
        }
    })
}
