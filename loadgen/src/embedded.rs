//! `--embedded`: a ringmq broker started for the run, on a free port and a temporary data
//! directory, with `--cores N` (it pins itself to cores 0..N; loadgen takes the cores above);
//! stopped (SIGTERM, then SIGKILL) at the end.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// How long the broker may take to print its listening line.
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker may take to exit after SIGTERM before it is killed.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The line the broker prints once it accepts connections.
const LISTENING_PREFIX: &str = "ringmq listening on ";

/// A running broker; stopped on drop.
pub struct EmbeddedBroker {
    child: Child,
    pub addr: String,
    _data_dir: tempfile::TempDir,
}

impl EmbeddedBroker {
    /// Starts `bin` (or `ringmq` next to this executable) and waits for its listening line.
    pub fn start(bin: Option<&Path>, cores: usize) -> anyhow::Result<EmbeddedBroker> {
        let bin = match bin {
            Some(b) => b.to_path_buf(),
            None => default_broker_bin()?,
        };
        let data_dir = tempfile::Builder::new()
            .prefix("ringmq-loadgen-")
            .tempdir()
            .context("creating a data dir")?;
        let mut child = Command::new(&bin)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--cores")
            .arg(cores.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the broker {}", bin.display()))?;
        let stdout = child.stdout.take().context("broker stdout")?;
        let addr = match wait_for_listening(stdout, BROKER_START_TIMEOUT) {
            Ok(addr) => addr,
            Err(e) => {
                stop(&mut child);
                return Err(e.context(format!("broker {} did not start", bin.display())));
            }
        };
        Ok(EmbeddedBroker {
            child,
            addr,
            _data_dir: data_dir,
        })
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// `ringmq` in the directory of the running executable (or its parent, for test binaries in
/// `target/<profile>/deps`).
pub fn default_broker_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    for candidate in [dir.join("ringmq"), dir.join("../ringmq")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no `ringmq` binary next to {} (build it with `cargo build -p ringmq-broker`, or pass --broker-bin)", exe.display())
}

/// Reads stdout lines until the listening line; the rest of stdout is drained in the
/// background so the broker never blocks on a full pipe.
pub fn wait_for_listening<R: Read + Send + 'static>(
    stdout: R,
    timeout: Duration,
) -> anyhow::Result<String> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(addr) = line.trim().strip_prefix(LISTENING_PREFIX) {
                    let _ = tx.send(Ok(addr.trim().to_owned()));
                    sent = true;
                }
            }
        }
        if !sent {
            let _ = tx.send(Err(anyhow::anyhow!(
                "broker exited before printing `{LISTENING_PREFIX}ADDR`"
            )));
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => bail!("no `{LISTENING_PREFIX}ADDR` line within {timeout:?}"),
    }
}

fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = std::time::Instant::now() + BROKER_STOP_TIMEOUT;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_line_among_others() {
        let out = b"starting\nringmq listening on 127.0.0.1:4567\nmore\n".to_vec();
        let addr = wait_for_listening(std::io::Cursor::new(out), Duration::from_secs(5)).unwrap();
        assert_eq!(addr, "127.0.0.1:4567");
        let none = wait_for_listening(
            std::io::Cursor::new(b"oops\n".to_vec()),
            Duration::from_secs(5),
        );
        assert!(none.unwrap_err().to_string().contains("exited before"));
    }
}
