//! Broker configuration: command-line flags, environment variables (`RINGMQ_*`) and an
//! optional TOML file. Precedence: flag or environment variable, then the file, then the
//! built-in default.

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Kafka's own default for `socket.request.max.bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 << 20;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_INFLIGHT_BYTES_PER_CONNECTION: usize = 128 << 20;
pub const DEFAULT_MAX_INFLIGHT_REQUESTS_PER_CONNECTION: usize = 64;
/// Largest fetch response one request may ask for (the client's `max_bytes` is capped to it).
pub const DEFAULT_MAX_FETCH_RESPONSE_BYTES: usize = 64 << 20;

/// The `ringmq` command line. Every flag can also be set with the environment variable shown,
/// or in the TOML file given with `--config` (keys are the flag names with `_` for `-`).
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "ringmq",
    version,
    about = "A Kafka-compatible message broker, thread-per-core on io_uring"
)]
pub struct Cli {
    /// TOML file with any of the settings below (flags and environment variables win).
    #[arg(long, env = "RINGMQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the bound port is printed).
    #[arg(long, env = "RINGMQ_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Host name given to clients in Metadata (default: the listen address's IP).
    #[arg(long, env = "RINGMQ_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Port given to clients in Metadata (default: the bound port).
    #[arg(long, env = "RINGMQ_ADVERTISED_PORT")]
    pub advertised_port: Option<u16>,
    /// Data directory (default ./ringmq-data).
    #[arg(long, env = "RINGMQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards (executors pinned one per CPU; default: available CPUs).
    #[arg(long, env = "RINGMQ_CORES")]
    pub cores: Option<usize>,
    /// Largest request frame accepted; larger frames close the connection.
    #[arg(long, env = "RINGMQ_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Connections served at once, all cores together; more are closed at accept.
    #[arg(long, env = "RINGMQ_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Bytes in flight per connection: request frames not yet answered plus the response
    /// space reserved by fetches (back-pressure beyond it).
    #[arg(long, env = "RINGMQ_MAX_INFLIGHT_BYTES_PER_CONNECTION")]
    pub max_inflight_bytes_per_connection: Option<usize>,
    /// Requests read but not yet answered, per connection.
    #[arg(long, env = "RINGMQ_MAX_INFLIGHT_REQUESTS_PER_CONNECTION")]
    pub max_inflight_requests_per_connection: Option<usize>,
    /// Create unknown topics when clients ask for them in Metadata (true/false).
    #[arg(long, env = "RINGMQ_AUTO_CREATE_TOPICS", action = clap::ArgAction::Set)]
    pub auto_create_topics: Option<bool>,
    /// Partitions of an auto-created topic (or CreateTopics with -1).
    #[arg(long, env = "RINGMQ_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<i32>,
    /// Size of each commit-log segment file (preallocated).
    #[arg(long, env = "RINGMQ_SEGMENT_SIZE_BYTES")]
    pub segment_size_bytes: Option<u64>,
    /// Zero-fill the active commit-log segment ahead of the write head while the log is quiet
    /// (true/false, default true), so that later appends overwrite written blocks: on ext4
    /// their writes and fdatasyncs then change no extent metadata (kernel-notes/
    /// fdatasync-and-group-commit.md).
    #[arg(long, env = "RINGMQ_ZERO_AHEAD", action = clap::ArgAction::Set)]
    pub zero_ahead: Option<bool>,
    /// Reuse the segment files retention removes as later segments (true/false, default true),
    /// so that appends overwrite written blocks under constant load too; at most two spare
    /// files per core are kept beyond the retention limit.
    #[arg(long, env = "RINGMQ_RECYCLE_SEGMENTS", action = clap::ArgAction::Set)]
    pub recycle_segments: Option<bool>,
    /// Background flush interval: acks=1 data becomes durable within this time (default 500,
    /// RocketMQ's async flush; 0 turns it off, leaving acks=1 data to the periodic checkpoint).
    #[arg(long, env = "RINGMQ_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Delete whole commit-log segments once their newest record is older than this (default
    /// 604800000, Kafka's 7 days; -1 keeps everything). Per core, for all its partitions.
    #[arg(long, env = "RINGMQ_RETENTION_MS", allow_negative_numbers = true)]
    pub retention_ms: Option<i64>,
    /// Delete the oldest whole segments of a core once its commit log exceeds this many bytes
    /// (default -1: no size limit). Per core, not per partition.
    #[arg(long, env = "RINGMQ_RETENTION_BYTES", allow_negative_numbers = true)]
    pub retention_bytes: Option<i64>,
    /// Delay before the first rebalance of a new consumer group (Kafka default 3000).
    #[arg(long, env = "RINGMQ_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Smallest session timeout a group member may ask for.
    #[arg(long, env = "RINGMQ_GROUP_MIN_SESSION_TIMEOUT_MS")]
    pub group_min_session_timeout_ms: Option<i32>,
    /// Largest session timeout a group member may ask for.
    #[arg(long, env = "RINGMQ_GROUP_MAX_SESSION_TIMEOUT_MS")]
    pub group_max_session_timeout_ms: Option<i32>,
    /// Storage: `engine` (the durable commit log) or `memory` (test double; nothing persists).
    #[arg(long, env = "RINGMQ_STORAGE")]
    pub storage: Option<StorageKind>,
    /// How fetches read data no longer in the tail cache: `readahead` (default: 1 MiB O_DIRECT
    /// chunks, cached, CRC-checked and sliced), `sendfile` (sealed log data sent from the page
    /// cache with sendfile(2) by a blocking-thread pool; not CRC-checked by the broker,
    /// consumers check each batch's CRC) or `direct` (one O_DIRECT read per run of the
    /// partition's nearby batches). See kernel-notes/sendfile-and-splice.md and
    /// kernel-notes/o-direct-reads.md.
    #[arg(long, env = "RINGMQ_FETCH_BACKLOG_READ")]
    pub fetch_backlog_read: Option<FetchBacklogRead>,
    /// I/O scheduling class of the disk reads behind fetches of data no longer in the tail
    /// cache (`readahead` chunks, and the page-cache reads of `sendfile` sends): `idle`
    /// (default: the block layer serves them when no write of the log waits, so a catch-up
    /// consumer does not delay appends; with mq-deadline a read waits at most 10 s) or
    /// `normal` (the same class as the log's writes). See kernel-notes/the-disk.md.
    #[arg(long, env = "RINGMQ_FETCH_READ_PRIORITY")]
    pub fetch_read_priority: Option<FetchReadPriority>,
    /// How fetch responses leave: `copy` (default: socket writes, sendfile for file ranges)
    /// or `zc` (io_uring SEND_ZC from a blocking-pool thread for file-range responses and
    /// responses of at least 64 KiB; kernel-notes/send-zc.md: on loopback the kernel copies
    /// anyway).
    #[arg(long, env = "RINGMQ_FETCH_SEND")]
    pub fetch_send: Option<FetchSend>,
    /// Where each core's io_uring worker threads (io-wq: every fdatasync, writes that would
    /// block) may run: `inherit` (default: the kernel starts them on the core's own CPU),
    /// `others` (every online CPU but the core's), or a CPU list such as `2,3` (a housekeeping
    /// set). See kernel-notes/io-uring-iowq.md for the trade-off.
    #[arg(long, env = "RINGMQ_IOWQ_CPUS")]
    pub iowq_cpus: Option<crate::iowq::IowqCpus>,
    /// Most io-wq workers per core for file I/O (0: the kernel's default, 4 per CPU).
    #[arg(long, env = "RINGMQ_IOWQ_MAX_WORKERS")]
    pub iowq_max_workers: Option<u32>,
}

/// How the engine reads fetched data that is no longer in its tail cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum FetchBacklogRead {
    #[default]
    Readahead,
    Direct,
    Sendfile,
}

/// I/O scheduling class of backlog reads (`ringmq_engine::ReadPriority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum FetchReadPriority {
    #[default]
    Idle,
    Normal,
}

impl From<FetchReadPriority> for ringmq_engine::ReadPriority {
    fn from(p: FetchReadPriority) -> Self {
        match p {
            FetchReadPriority::Idle => ringmq_engine::ReadPriority::Idle,
            FetchReadPriority::Normal => ringmq_engine::ReadPriority::Normal,
        }
    }
}

impl From<FetchBacklogRead> for ringmq_engine::BacklogRead {
    fn from(m: FetchBacklogRead) -> Self {
        match m {
            FetchBacklogRead::Readahead => ringmq_engine::BacklogRead::Readahead,
            FetchBacklogRead::Direct => ringmq_engine::BacklogRead::Direct,
            FetchBacklogRead::Sendfile => ringmq_engine::BacklogRead::Sendfile,
        }
    }
}

/// How fetch responses are sent (`send_zc` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum FetchSend {
    #[default]
    Copy,
    Zc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Engine,
    Memory,
}

/// The same settings as read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    advertised_host: Option<String>,
    advertised_port: Option<u16>,
    data_dir: Option<PathBuf>,
    cores: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_inflight_bytes_per_connection: Option<usize>,
    max_inflight_requests_per_connection: Option<usize>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    segment_size_bytes: Option<u64>,
    zero_ahead: Option<bool>,
    recycle_segments: Option<bool>,
    flush_interval_ms: Option<u64>,
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    group_initial_rebalance_delay_ms: Option<u64>,
    group_min_session_timeout_ms: Option<i32>,
    group_max_session_timeout_ms: Option<i32>,
    storage: Option<StorageKind>,
    fetch_backlog_read: Option<FetchBacklogRead>,
    fetch_read_priority: Option<FetchReadPriority>,
    fetch_send: Option<FetchSend>,
    iowq_cpus: Option<crate::iowq::IowqCpus>,
    iowq_max_workers: Option<u32>,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub advertised_host: Option<String>,
    pub advertised_port: Option<u16>,
    pub data_dir: PathBuf,
    pub cores: usize,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_inflight_bytes_per_connection: usize,
    pub max_inflight_requests_per_connection: usize,
    pub max_fetch_response_bytes: usize,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub segment_size_bytes: u64,
    pub zero_ahead: bool,
    pub recycle_segments: bool,
    pub flush_interval_ms: Option<u64>,
    /// Segment retention by age and by size, per core (None: keep).
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub storage: StorageKind,
    pub fetch_backlog_read: FetchBacklogRead,
    pub fetch_read_priority: FetchReadPriority,
    pub fetch_send: FetchSend,
    pub iowq_cpus: crate::iowq::IowqCpus,
    pub iowq_max_workers: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid setting {name}: {why}")]
    Invalid { name: &'static str, why: String },
}

/// Default interval of the background flusher (RocketMQ's async-flush interval).
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 500;
/// Kafka's `log.retention.hours` default, 168.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// A retention limit as Kafka spells it: a negative value keeps everything, none given is the
/// default.
fn limit(given: Option<i64>, default: Option<u64>) -> Option<u64> {
    match given {
        Some(v) => u64::try_from(v).ok(),
        None => default,
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_host: None,
            advertised_port: None,
            data_dir: PathBuf::from("ringmq-data"),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_inflight_bytes_per_connection: DEFAULT_MAX_INFLIGHT_BYTES_PER_CONNECTION,
            max_inflight_requests_per_connection: DEFAULT_MAX_INFLIGHT_REQUESTS_PER_CONNECTION,
            max_fetch_response_bytes: DEFAULT_MAX_FETCH_RESPONSE_BYTES,
            auto_create_topics: true,
            default_partitions: 1,
            segment_size_bytes: 1 << 30,
            zero_ahead: true,
            recycle_segments: true,
            flush_interval_ms: Some(DEFAULT_FLUSH_INTERVAL_MS),
            retention_ms: Some(DEFAULT_RETENTION_MS),
            retention_bytes: None,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            storage: StorageKind::Engine,
            fetch_backlog_read: FetchBacklogRead::default(),
            fetch_read_priority: FetchReadPriority::default(),
            fetch_send: FetchSend::default(),
            iowq_cpus: crate::iowq::IowqCpus::default(),
            iowq_max_workers: 0,
        }
    }
}

impl Config {
    /// Merges flags/environment over the file over the defaults, and checks the result.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let c = Config {
            listen: cli.listen.or(file.listen).unwrap_or(d.listen),
            advertised_host: cli.advertised_host.or(file.advertised_host),
            advertised_port: cli.advertised_port.or(file.advertised_port),
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            cores: cli.cores.or(file.cores).unwrap_or(d.cores),
            max_frame_bytes: cli
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(d.max_frame_bytes),
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            max_inflight_bytes_per_connection: cli
                .max_inflight_bytes_per_connection
                .or(file.max_inflight_bytes_per_connection)
                .unwrap_or(d.max_inflight_bytes_per_connection),
            max_inflight_requests_per_connection: cli
                .max_inflight_requests_per_connection
                .or(file.max_inflight_requests_per_connection)
                .unwrap_or(d.max_inflight_requests_per_connection),
            max_fetch_response_bytes: d.max_fetch_response_bytes,
            auto_create_topics: cli
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(d.auto_create_topics),
            default_partitions: cli
                .default_partitions
                .or(file.default_partitions)
                .unwrap_or(d.default_partitions),
            segment_size_bytes: cli
                .segment_size_bytes
                .or(file.segment_size_bytes)
                .unwrap_or(d.segment_size_bytes),
            zero_ahead: cli.zero_ahead.or(file.zero_ahead).unwrap_or(d.zero_ahead),
            recycle_segments: cli
                .recycle_segments
                .or(file.recycle_segments)
                .unwrap_or(d.recycle_segments),
            flush_interval_ms: cli
                .flush_interval_ms
                .or(file.flush_interval_ms)
                .or(d.flush_interval_ms)
                .filter(|&ms| ms > 0),
            retention_ms: limit(cli.retention_ms.or(file.retention_ms), d.retention_ms),
            retention_bytes: limit(
                cli.retention_bytes.or(file.retention_bytes),
                d.retention_bytes,
            ),
            group_initial_rebalance_delay_ms: cli
                .group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .unwrap_or(d.group_initial_rebalance_delay_ms),
            group_min_session_timeout_ms: cli
                .group_min_session_timeout_ms
                .or(file.group_min_session_timeout_ms)
                .unwrap_or(d.group_min_session_timeout_ms),
            group_max_session_timeout_ms: cli
                .group_max_session_timeout_ms
                .or(file.group_max_session_timeout_ms)
                .unwrap_or(d.group_max_session_timeout_ms),
            storage: cli.storage.or(file.storage).unwrap_or(d.storage),
            fetch_backlog_read: cli
                .fetch_backlog_read
                .or(file.fetch_backlog_read)
                .unwrap_or(d.fetch_backlog_read),
            fetch_read_priority: cli
                .fetch_read_priority
                .or(file.fetch_read_priority)
                .unwrap_or(d.fetch_read_priority),
            fetch_send: cli.fetch_send.or(file.fetch_send).unwrap_or(d.fetch_send),
            iowq_cpus: cli.iowq_cpus.or(file.iowq_cpus).unwrap_or(d.iowq_cpus),
            iowq_max_workers: cli
                .iowq_max_workers
                .or(file.iowq_max_workers)
                .unwrap_or(d.iowq_max_workers),
        };
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |name, why: &str| {
            Err(ConfigError::Invalid {
                name,
                why: why.to_owned(),
            })
        };
        if self.cores == 0 || self.cores > MAX_CORES {
            return bad("cores", &format!("must be 1..={MAX_CORES}"));
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > i32::MAX as usize {
            return bad("max-frame-bytes", "must be 1 KiB..2 GiB");
        }
        if self.max_inflight_bytes_per_connection < self.max_frame_bytes.min(1 << 20) {
            return bad(
                "max-inflight-bytes-per-connection",
                "must be at least 1 MiB or the frame limit",
            );
        }
        if self.max_inflight_requests_per_connection == 0 || self.max_connections == 0 {
            return bad("max-connections", "limits must be positive");
        }
        if self.default_partitions <= 0
            || self.default_partitions > crate::metadata::MAX_PARTITIONS_PER_TOPIC
        {
            return bad(
                "default-partitions",
                "must be positive and within the per-topic limit",
            );
        }
        Ok(())
    }

    /// Host advertised in Metadata/FindCoordinator.
    pub fn advertised_host(&self, bound: SocketAddr) -> String {
        self.advertised_host
            .clone()
            .unwrap_or_else(|| match bound.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
                ip => ip.to_string(),
            })
    }
}

/// Upper bound on shards (and mesh peers).
pub const MAX_CORES: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringmq.toml");
        std::fs::write(
            &path,
            "default_partitions = 4\ncores = 3\nauto_create_topics = false\n",
        )
        .unwrap();
        let cli =
            Cli::try_parse_from(["ringmq", "--config", path.to_str().unwrap(), "--cores", "2"])
                .unwrap();
        let c = Config::resolve(cli).unwrap();
        assert_eq!(
            (c.cores, c.default_partitions, c.auto_create_topics),
            (2, 4, false)
        );
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 9092)));
    }

    #[test]
    fn retention_defaults_to_kafkas_seven_days_and_minus_one_keeps_everything() {
        let c = Config::resolve(Cli::try_parse_from(["ringmq"]).unwrap()).unwrap();
        assert_eq!(
            (c.retention_ms, c.retention_bytes),
            (Some(DEFAULT_RETENTION_MS), None)
        );
        let cli = Cli::try_parse_from([
            "ringmq",
            "--retention-ms",
            "-1",
            "--retention-bytes",
            "1073741824",
        ])
        .unwrap();
        let c = Config::resolve(cli).unwrap();
        assert_eq!((c.retention_ms, c.retention_bytes), (None, Some(1 << 30)));
    }

    #[test]
    fn the_flusher_runs_by_default_and_zero_turns_it_off() {
        let c = Config::resolve(Cli::try_parse_from(["ringmq"]).unwrap()).unwrap();
        assert_eq!(c.flush_interval_ms, Some(DEFAULT_FLUSH_INTERVAL_MS));
        let cli = Cli::try_parse_from(["ringmq", "--flush-interval-ms", "0"]).unwrap();
        assert_eq!(Config::resolve(cli).unwrap().flush_interval_ms, None);
        let cli = Cli::try_parse_from(["ringmq", "--flush-interval-ms", "20"]).unwrap();
        assert_eq!(Config::resolve(cli).unwrap().flush_interval_ms, Some(20));
    }

    #[test]
    fn fetch_send_is_copy_by_default_and_comes_from_flag_or_file() {
        let d = Config::resolve(Cli::try_parse_from(["ringmq"]).unwrap()).unwrap();
        assert_eq!(d.fetch_send, FetchSend::Copy);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "fetch_send = \"zc\"\n").unwrap();
        let cli = Cli::try_parse_from(["ringmq", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(Config::resolve(cli).unwrap().fetch_send, FetchSend::Zc);
        let cli = Cli::try_parse_from([
            "ringmq",
            "--config",
            path.to_str().unwrap(),
            "--fetch-send",
            "copy",
        ])
        .unwrap();
        assert_eq!(Config::resolve(cli).unwrap().fetch_send, FetchSend::Copy);
        assert!(Cli::try_parse_from(["ringmq", "--fetch-send", "splice"]).is_err());
    }

    #[test]
    fn fetch_read_priority_is_idle_by_default_and_comes_from_flag_or_file() {
        let d = Config::resolve(Cli::try_parse_from(["ringmq"]).unwrap()).unwrap();
        assert_eq!(d.fetch_read_priority, FetchReadPriority::Idle);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "fetch_read_priority = \"normal\"\n").unwrap();
        let cli = Cli::try_parse_from(["ringmq", "--config", path.to_str().unwrap()]).unwrap();
        let c = Config::resolve(cli).unwrap();
        assert_eq!(c.fetch_read_priority, FetchReadPriority::Normal);
        assert_eq!(
            ringmq_engine::ReadPriority::from(c.fetch_read_priority),
            ringmq_engine::ReadPriority::Normal
        );
        let cli = Cli::try_parse_from([
            "ringmq",
            "--config",
            path.to_str().unwrap(),
            "--fetch-read-priority",
            "idle",
        ])
        .unwrap();
        assert_eq!(
            Config::resolve(cli).unwrap().fetch_read_priority,
            FetchReadPriority::Idle
        );
        assert!(Cli::try_parse_from(["ringmq", "--fetch-read-priority", "rt"]).is_err());
    }

    #[test]
    fn fetch_backlog_read_comes_from_flag_env_or_file() {
        let d = Config::resolve(Cli::try_parse_from(["ringmq"]).unwrap()).unwrap();
        assert_eq!(d.fetch_backlog_read, FetchBacklogRead::Readahead);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "fetch_backlog_read = \"direct\"\n").unwrap();
        let cli = Cli::try_parse_from(["ringmq", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(
            Config::resolve(cli).unwrap().fetch_backlog_read,
            FetchBacklogRead::Direct
        );
        let cli = Cli::try_parse_from([
            "ringmq",
            "--config",
            path.to_str().unwrap(),
            "--fetch-backlog-read",
            "readahead",
        ])
        .unwrap();
        assert_eq!(
            Config::resolve(cli).unwrap().fetch_backlog_read,
            FetchBacklogRead::Readahead
        );
        std::fs::write(&path, "fetch_backlog_read = \"sendfile\"\n").unwrap();
        let cli = Cli::try_parse_from(["ringmq", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(
            Config::resolve(cli).unwrap().fetch_backlog_read,
            FetchBacklogRead::Sendfile
        );
        let cli = Cli::try_parse_from(["ringmq", "--fetch-backlog-read", "sendfile"]).unwrap();
        assert_eq!(
            Config::resolve(cli).unwrap().fetch_backlog_read,
            FetchBacklogRead::Sendfile
        );
        assert!(Cli::try_parse_from(["ringmq", "--fetch-backlog-read", "splice"]).is_err());
    }

    #[test]
    fn io_worker_settings_come_from_flag_env_or_file() {
        use crate::iowq::IowqCpus;
        let d = Config::resolve(Cli::try_parse_from(["ringmq"]).unwrap()).unwrap();
        assert_eq!(
            (d.iowq_cpus.clone(), d.iowq_max_workers),
            (IowqCpus::Inherit, 0)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "iowq_cpus = \"1,3-4\"\niowq_max_workers = 2\n").unwrap();
        let cli = Cli::try_parse_from(["ringmq", "--config", path.to_str().unwrap()]).unwrap();
        let c = Config::resolve(cli).unwrap();
        assert_eq!(c.iowq_cpus, IowqCpus::List(vec![1, 3, 4]));
        assert_eq!(c.iowq_max_workers, 2);
        let cli = Cli::try_parse_from([
            "ringmq",
            "--config",
            path.to_str().unwrap(),
            "--iowq-cpus",
            "others",
        ])
        .unwrap();
        assert_eq!(Config::resolve(cli).unwrap().iowq_cpus, IowqCpus::Others);
        assert!(Cli::try_parse_from(["ringmq", "--iowq-cpus", "3-1"]).is_err());
        std::fs::write(&path, "iowq_cpus = \"x\"\n").unwrap();
        let cli = Cli::try_parse_from(["ringmq", "--config", path.to_str().unwrap()]).unwrap();
        assert!(matches!(
            Config::resolve(cli),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let cli = Cli::try_parse_from(["ringmq", "--config", path.to_str().unwrap()]).unwrap();
        assert!(matches!(
            Config::resolve(cli),
            Err(ConfigError::Parse { .. })
        ));
        let cli = Cli::try_parse_from(["ringmq", "--cores", "0"]).unwrap();
        assert!(matches!(
            Config::resolve(cli),
            Err(ConfigError::Invalid { name: "cores", .. })
        ));
    }
}
