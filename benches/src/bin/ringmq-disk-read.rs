//! The disk's sequential read ceiling after dropping the page cache: O_DIRECT reads at several
//! depths and sizes (a private io_uring, and through glommio), and buffered reads with the
//! kernel's readahead. Notes: kernel-notes/o-direct-reads.md ("The disk's read ceiling").
//!
//! `cargo run --release -p ringmq-benches --bin ringmq-disk-read -- [--dir DIR | --file PATH]
//!  [--size 4G] [--limit 2G] [--depths 1,2,4,8,16] [--reads 256K,1M,4M] [--ways direct,direct+thp,glommio,buffered,buffered+seq]
//!  [--reps 1] [--summary]`
//! Without `--dir`/`--file` a file of `--size` is written to `RINGMQ_BENCH_DIR` (default: the
//! system temp dir) and deleted after. `--dir` reads the `*.log` files of a directory in name
//! order (a broker's data directory: the bytes a catch-up reads). `--summary` ends with
//! `disk_read best_direct_mb_s=… best_direct_thp_mb_s=… best_glommio_mb_s=… best_buffered_mb_s=…`
//! for scripts (0 for a way not run).
//! The page cache is dropped (as root; else the files' own pages) before every run.

use std::path::PathBuf;

use ringmq_benches::disk_read::{self, Cold, Shape, Way};
use ringmq_benches::fetch_paths::parse_size;
use ringmq_benches::quick_mode_requested;

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn log_files(dir: &PathBuf) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for d in walk(dir)? {
        if d.extension().is_some_and(|e| e == "log") {
            files.push(d);
        }
    }
    files.sort();
    Ok(files)
}

/// Files under `dir`, recursively (a broker's data dir holds one directory per shard).
fn walk(dir: &PathBuf) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

fn main() {
    let value_of = ringmq_benches::arg_value;
    let quick = quick_mode_requested();
    let size = value_of("--size")
        .map(|s| parse_size(&s).unwrap_or_else(|| panic!("bad --size {s}")))
        .unwrap_or(if quick { 32 << 20 } else { 4 << 30 });
    let limit = value_of("--limit")
        .map(|s| parse_size(&s).unwrap_or_else(|| panic!("bad --limit {s}")))
        .unwrap_or(if quick { 16 << 20 } else { 2 << 30 });
    let depths: Vec<usize> = list(&value_of("--depths").unwrap_or(if quick {
        "1,4".into()
    } else {
        "1,2,4,8,16".into()
    }))
    .iter()
    .map(|d| d.parse().unwrap_or_else(|_| panic!("bad depth {d}")))
    .collect();
    let reads: Vec<usize> = list(&value_of("--reads").unwrap_or(if quick {
        "1M".into()
    } else {
        "256K,1M,4M".into()
    }))
    .iter()
    .map(|r| parse_size(r).unwrap_or_else(|| panic!("bad read size {r}")) as usize)
    .collect();
    let ways: Vec<Way> =
        list(&value_of("--ways").unwrap_or("direct,glommio,buffered,buffered+seq".into()))
            .iter()
            .map(|w| match w.as_str() {
                "direct" => Way::Direct,
                "direct+thp" => Way::DirectThp,
                "glommio" => Way::Glommio,
                "buffered" => Way::Buffered { sequential: false },
                "buffered+seq" => Way::Buffered { sequential: true },
                _ => panic!("bad way {w}"),
            })
            .collect();
    let reps: usize = value_of("--reps").map_or(1, |r| {
        r.parse().unwrap_or_else(|_| panic!("bad --reps {r}"))
    });
    // Quick mode (`cargo test`) leaves the machine's page cache alone.
    let cold = if quick { Cold::Files } else { Cold::DropCaches };

    let mut created = None;
    let files = if let Some(dir) = value_of("--dir") {
        log_files(&PathBuf::from(&dir)).unwrap_or_else(|e| panic!("listing {dir}: {e}"))
    } else if let Some(f) = value_of("--file") {
        vec![PathBuf::from(f)]
    } else {
        let dir =
            std::env::var_os("RINGMQ_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let dir = tempfile::tempdir_in(dir).expect("bench temp dir");
        let path = dir.path().join("disk-read.bin");
        eprintln!("writing {} MiB to {}", size >> 20, path.display());
        disk_read::create_file(&path, size)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        created = Some(dir);
        vec![path]
    };
    assert!(!files.is_empty(), "no files to read");
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "disk_read: {} file(s), {} MiB, reading up to {} MiB per run; kernel {}; {} reps",
        files.len(),
        total >> 20,
        limit >> 20,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        reps
    );
    let mut best = [0f64; 4];
    for _ in 0..reps {
        for &way in &ways {
            let shapes: Vec<Shape> = match way {
                Way::Buffered { .. } => reads
                    .iter()
                    .map(|&r| Shape {
                        way,
                        depth: 1,
                        read_bytes: r,
                    })
                    .collect(),
                _ => depths
                    .iter()
                    .flat_map(|&d| {
                        reads.iter().map(move |&r| Shape {
                            way,
                            depth: d,
                            read_bytes: r,
                        })
                    })
                    .collect(),
            };
            for shape in shapes {
                match disk_read::run(&files, shape, limit, cold) {
                    Ok(o) => {
                        println!("{}", o.line());
                        let k = match way {
                            Way::Direct => 0,
                            Way::Glommio => 1,
                            Way::Buffered { .. } => 2,
                            Way::DirectThp => 3,
                        };
                        best[k] = best[k].max(o.mb_per_s());
                    }
                    Err(e) => println!(
                        "{} {} x {}: failed: {e}",
                        way.name(),
                        shape.depth,
                        shape.read_bytes
                    ),
                }
            }
        }
    }
    if std::env::args().any(|a| a == "--summary") {
        println!(
            "disk_read best_direct_mb_s={:.0} best_direct_thp_mb_s={:.0} best_glommio_mb_s={:.0} best_buffered_mb_s={:.0}",
            best[0], best[3], best[1], best[2]
        );
    }
    drop(created);
}
