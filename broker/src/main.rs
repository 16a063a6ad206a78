//! `ringmq`: the broker binary.

use clap::Parser;
use ringmq_broker::alloc::LazyHugeAlloc;
use ringmq_broker::config::{Cli, Config};
use ringmq_broker::server;
use std::io::Write;
use std::process::ExitCode;

// Huge allocations (for example from a crafted array length) are mapped lazily instead of
// aborting the process; see `alloc.rs`.
#[global_allocator]
static ALLOCATOR: LazyHugeAlloc = LazyHugeAlloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::resolve(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringmq: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = server::block_signals() {
        eprintln!("ringmq: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!(?config, "starting");
    let running = match server::start(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringmq: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ringmq listening on {}", running.addr);
    let _ = std::io::stdout().flush();
    let sig = server::wait_for_signal(&running.shared);
    tracing::info!(signal = sig, "stopping");
    if running.shutdown() && sig != 0 {
        tracing::info!("stopped cleanly");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
