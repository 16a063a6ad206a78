//! Harness for the system tests: the real `ringmq` binary, real Kafka clients (librdkafka linked
//! in, kcat and kafka-python run as programs).
//!
//! - [`broker_binary`] builds `ringmq` once per test process with the same cargo that runs the
//!   tests, and finds it wherever the target directory is (it asks cargo, so `CARGO_TARGET_DIR`
//!   is respected).
//! - [`Broker`] runs one broker process on a free port (`--listen 127.0.0.1:0`, the port is read
//!   back from its `ringmq listening on ADDR` line) over its own temporary data directory. It can
//!   be stopped with SIGTERM or SIGKILL and started again over the same directory. Its stdout and
//!   stderr are kept (bounded) and printed when a test fails, so a failure shows what the broker
//!   said.
//! - Client helpers build librdkafka producers, consumers and admin clients pointed at a broker,
//!   record every delivery report, and read a whole topic back.
//! - [`run_checked`], [`kafka_python`] and [`run_python_script`] run clients that are separate
//!   programs (kcat, kafka-python in a virtual environment built once under the target
//!   directory), each as a child process with a deadline; the scripts live in `tests/interop/`.
//!
//! Every wait is on a condition with a deadline ([`wait_until`]); nothing sleeps for correctness.

mod broker;
mod clients;
mod external;
mod proxy;

use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

/// Makes the kernel kill the program `command` starts if the test thread that started it dies
/// first (a panicking test leaves no broker or client behind).
pub(crate) fn dies_with_its_parent(command: &mut std::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub use broker::{broker_binary, Broker, BrokerOptions, ADVERTISED_PORT_FLAG};
pub use clients::{
    assert_offsets_increase, block_on, by_partition, flush, record, send, DeliveryLog, Record,
    RecordingContext,
};
pub use external::{kafka_python, require_program, run_checked, run_python_script, ToolOutput};
pub use proxy::ResponseDroppingProxy;

/// How long any single condition may take to become true. Generous: the tests must hold on a
/// loaded 2-core machine where a debug broker shares the CPU with the build of other crates.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Calls `check` until it returns `Some`, at most for `timeout`; panics naming `what` if the
/// deadline passes. Polls every 20 ms: the wait ends when the condition holds, not after a
/// fixed time.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
