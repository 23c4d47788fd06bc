//! What the container tests (tests/lab.rs, tests/package.rs) share: running docker and
//! other commands, the loud skip when Docker is absent, and the debootstrap Debian base
//! image (scripts/lab-base-image.sh, cached by tag).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Debian 12 image scripts/lab-base-image.sh builds with debootstrap (no registry).
pub const BASE_IMAGE: &str = "connector-relay-lab/debian:bookworm";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn ok(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` and panics with its output unless it succeeds; its stdout.
pub fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The loud line a test prints when it cannot run here (and then passes).
pub fn skip(what: &str, why: &str) {
    eprintln!("\n======================================================================");
    eprintln!("SKIPPED {what}: {why}");
    eprintln!("Install with scripts/install-deps.sh and start a Docker daemon to run it.");
    eprintln!("======================================================================\n");
}

/// Why containers cannot be used here, if they cannot: no daemon, or no base image and no
/// root to make it (debootstrap).
pub fn unavailable() -> Option<String> {
    if !ok(Command::new("docker").arg("info")) {
        return Some("no Docker daemon answers `docker info`".into());
    }
    let cached = ok(Command::new("docker").args(["image", "inspect", BASE_IMAGE]));
    if !cached && unsafe { libc::geteuid() } != 0 {
        return Some(
            "the Debian base image must be made once as root (scripts/lab-base-image.sh)".into(),
        );
    }
    None
}

/// The base image, built once (the script does nothing when the tag exists).
pub fn base_image() {
    must(
        Command::new("bash")
            .arg(repo().join("scripts/lab-base-image.sh"))
            .current_dir(repo()),
    );
}

/// Calls `f` every half second until it answers, for at most `limit` (a bound on waiting:
/// nothing asserts on time).
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
