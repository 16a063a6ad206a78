//! Kafka clients that are separate programs rather than the linked librdkafka: kcat from the
//! system's packages and kafka-python in a virtual environment prepared here. Each run is a
//! child process bounded by a deadline; a missing program fails the test with what to install,
//! it never lets the test pass without running.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Creating the virtual environment (`python3 -m venv`, which also installs pip into it).
const VENV_CREATE_LIMIT: Duration = Duration::from_secs(180);

/// `pip install` of the pinned requirements from the package index.
const PIP_INSTALL_LIMIT: Duration = Duration::from_secs(600);

/// Output kept per stream of an external program (kcat prints a few KiB per test, the Python
/// script a JSON summary).
const MAX_KEPT_OUTPUT_BYTES: u64 = 16 << 20;

/// The file inside the virtual environment that holds the requirements it was built from and
/// the interpreter that built it; the environment is rebuilt when either changed.
const VENV_STAMP: &str = "ringmq-requirements.txt";

/// What a program printed, once it exited with status 0.
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
}

/// The folder of the scripts and requirements the external clients use (`tests/interop`).
fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// The full path of `program` on `PATH`; panics with `install_hint` when it is not there, so a
/// machine without the client fails the test instead of skipping it.
pub fn require_program(program: &str, install_hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| panic!("`{program}` is not on PATH; this test needs it: {install_hint}"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Runs `command` with `stdin` as its input and waits for it to exit, at most `limit`. Panics,
/// showing what it printed, if it runs longer (it is killed first) or exits unsuccessfully.
pub fn run_checked(command: &mut Command, stdin: &[u8], limit: Duration) -> ToolOutput {
    let what = format!("{command:?}");
    let (status, output) = run_bounded(command, stdin, limit);
    match status {
        Some(status) if status.success() => output,
        Some(status) => panic!(
            "{what} failed ({status});\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.stdout, output.stderr
        ),
        None => panic!(
            "{what} was still running after {limit:?}, killed;\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.stdout, output.stderr
        ),
    }
}

/// Runs `command` to its exit or until `limit` passes (then kills it: the status is `None`).
fn run_bounded(
    command: &mut Command,
    stdin: &[u8],
    limit: Duration,
) -> (Option<ExitStatus>, ToolOutput) {
    command
        // `cargo test` puts build-script output folders on the library path, and rdkafka-sys
        // leaves its librdkafka.so.1 in one: kcat would load that newer librdkafka instead of
        // the system's, and test neither. External clients run with the system's libraries.
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::dies_with_its_parent(command);
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("starting {command:?}: {err}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    // A program that exits without reading all its input closes the pipe: that write error is
    // the program's business, its exit status tells.
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let stdout = read_to_end_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_to_end_in_background(child.stderr.take().expect("piped stderr"));

    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = feeder.join();
    let output = ToolOutput {
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    (status, output)
}

/// Reads a pipe to its end, keeping the first MAX_KEPT_OUTPUT_BYTES; the rest is read (so the
/// program never blocks on a full pipe) and counted.
fn read_to_end_in_background(pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut pipe = std::io::BufReader::new(pipe);
        let mut kept = Vec::new();
        let _ = pipe
            .by_ref()
            .take(MAX_KEPT_OUTPUT_BYTES)
            .read_to_end(&mut kept);
        let dropped = std::io::copy(&mut pipe, &mut std::io::sink()).unwrap_or(0);
        let mut text = String::from_utf8_lossy(&kept).into_owned();
        if dropped > 0 {
            text.push_str(&format!("\n[{dropped} more bytes of output dropped]"));
        }
        text
    })
}

/// The Python interpreter of a virtual environment holding the pinned requirements of
/// `tests/interop/requirements.txt` (kafka-python and its codecs).
///
/// The environment lives in `cache_root/kafka-python-venv` (tests pass their
/// `CARGO_TARGET_TMPDIR`, inside the target directory) and is built once: later runs find the
/// stamp of the same requirements and interpreter in it and reuse it. Test processes running
/// at the same time take turns through an exclusive lock on `cache_root/kafka-python-venv.lock`;
/// the stamp is written last, so an interrupted build is redone by the next run.
pub fn kafka_python(cache_root: &Path) -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| prepare_venv(cache_root))
}

fn prepare_venv(cache_root: &Path) -> PathBuf {
    let requirements_path = interop_dir().join("requirements.txt");
    let requirements = fs::read_to_string(&requirements_path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", requirements_path.display()));
    let python3 = require_program(
        "python3",
        "install Python 3 with its venv module (Debian: apt-get install python3 python3-venv)",
    );
    // The environment is tied to the interpreter that made it: another python3 (an upgrade, a
    // different PATH) gets a new one.
    let interpreter = run_checked(
        Command::new(&python3).args(["-c", "import sys; print(sys.executable, sys.version)"]),
        b"",
        VENV_CREATE_LIMIT,
    )
    .stdout;
    let built_from = format!("{requirements}# made by python3: {interpreter}");
    fs::create_dir_all(cache_root)
        .unwrap_or_else(|err| panic!("creating {}: {err}", cache_root.display()));
    let _lock = ExclusiveLock::take(&cache_root.join("kafka-python-venv.lock"));

    let venv = cache_root.join("kafka-python-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(VENV_STAMP);
    if fs::read_to_string(&stamp).is_ok_and(|stamped| stamped == built_from) {
        return python;
    }
    if venv.exists() {
        fs::remove_dir_all(&venv)
            .unwrap_or_else(|err| panic!("removing the stale {}: {err}", venv.display()));
    }
    run_checked(
        Command::new(&python3).arg("-m").arg("venv").arg(&venv),
        b"",
        VENV_CREATE_LIMIT,
    );
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-input", "--quiet", "--requirement"])
            .arg(&requirements_path),
        b"",
        PIP_INSTALL_LIMIT,
    );
    fs::write(&stamp, &built_from)
        .unwrap_or_else(|err| panic!("writing {}: {err}", stamp.display()));
    python
}

/// Runs `tests/interop/<script>` with `args` in the kafka-python environment and parses the
/// JSON object it prints. Panics, with the script's output, if it fails, outlives `limit` or
/// prints anything but JSON.
pub fn run_python_script(
    python: &Path,
    script: &str,
    args: &[&str],
    limit: Duration,
) -> serde_json::Value {
    let output = run_checked(
        Command::new(python)
            .arg(interop_dir().join(script))
            .args(args)
            // Output as it happens, and no bytecode written into the source tree.
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        b"",
        limit,
    );
    serde_json::from_str(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "{script} {args:?} printed no JSON summary ({err});\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.stdout, output.stderr
        )
    })
}

/// An exclusive `flock` on a file, released when dropped (closing the file releases it).
struct ExclusiveLock {
    _open: File,
}

impl ExclusiveLock {
    fn take(path: &Path) -> ExclusiveLock {
        let file = File::create(path)
            .unwrap_or_else(|err| panic!("creating the lock file {}: {err}", path.display()));
        // SAFETY: flock on a descriptor this function owns for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock({}) failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        ExclusiveLock { _open: file }
    }
}
