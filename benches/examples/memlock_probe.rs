//! Shows what glommio's `io_memory` does against `RLIMIT_MEMLOCK`: for each size given (KiB,
//! default 1024 2048 4096 6144 8192 10240), builds an executor with that much registered I/O memory, writes one
//! 4 KiB block with O_DIRECT, reads it back, and prints both outcomes and the memory the
//! process has pinned. Quoted in kernel-notes/io-uring-memlock.md.
//!
//! `cargo run -p ringmq-benches --example memlock_probe -- 4096 10240`

use glommio::io::DmaFile;

fn main() {
    let sizes_kib: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![1024, 2048, 4096, 6144, 8192, 10240]
        } else {
            args
        }
    };
    println!(
        "RLIMIT_MEMLOCK soft = {:?} B",
        ringmq_benches::executor::memlock_limit_bytes()
    );
    println!("CapEff: {}", proc_status_field("CapEff"));
    let dir = tempfile::tempdir_in(".").expect("temp dir");
    for kib in sizes_kib {
        let path = dir.path().join(format!("probe-{kib}.dat"));
        let line = ringmq_benches::executor::run_with_io_memory(kib << 10, move || async move {
            probe(&path).await
        });
        println!("io_memory={kib:>5} KiB: {line}");
    }
}

async fn probe(path: &std::path::Path) -> String {
    let file = match DmaFile::create(path).await {
        Ok(f) => f,
        Err(e) => return format!("create failed: {e}"),
    };
    let pinned = proc_status_field("VmPin");
    let mut buf = file.alloc_dma_buffer(4096);
    buf.as_bytes_mut().fill(0xA5);
    let write = match file.write_at(buf, 0).await {
        Ok(n) => format!("write ok ({n} B)"),
        Err(e) => format!("write FAILED: {e}"),
    };
    let _ = file.close().await;
    let file = match DmaFile::open(path).await {
        Ok(f) => f,
        Err(e) => return format!("{write}; reopen failed: {e}"),
    };
    let read = match file.read_at_aligned(0, 4096).await {
        Ok(r) if r.len() == 4096 && r.iter().all(|&b| b == 0xA5) => "read ok".to_string(),
        Ok(r) => format!("read returned {} B, wrong bytes", r.len()),
        Err(e) => format!("read FAILED: {e}"),
    };
    let _ = file.close().await;
    format!("{write}; {read}; VmPin while running: {pinned}")
}

fn proc_status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .map(|l| l[name.len() + 1..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}
