//! Fuzz smoke run for CI on the stable toolchain: replays every committed fuzz corpus file
//! (`fuzz/corpus/<target>/`) and regression input (`fuzz/regressions/<target>/`) through the
//! same invariant checks as the cargo-fuzz targets (tests/support/fuzz_checks.rs), then runs
//! a bounded, deterministic mutation loop (seeded `StdRng`) over the corpus.

#[path = "support/fuzz_checks.rs"]
mod fuzz_checks;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use fuzz_checks::{TARGETS, check};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted by name (empty if the directory is missing).
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("read corpus file");
            (p, data)
        })
        .collect()
}

fn run_one(target: &str, what: &str, data: &[u8]) {
    if let Err(e) = std::panic::catch_unwind(|| check(target, data)) {
        let msg = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        panic!("{target}: {what} ({} bytes: {data:?}): {msg}", data.len());
    }
}

#[test]
fn corpus_and_regressions_replay() {
    for target in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(!corpus.is_empty(), "no seed corpus for {target}");
        for (path, data) in corpus.iter().chain(&inputs("regressions", target)) {
            run_one(target, &path.display().to_string(), data);
        }
    }
}

/// Tokens the mutator inserts: line ends, dots, header prefixes, address syntax, TOML syntax.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b".\r\n",
    b"\r\n\r\n",
    b"\0",
    b" ",
    b"\t",
    b":",
    b"<",
    b">",
    b"@",
    b"%",
    b"!",
    b"\"",
    b"[",
    b"]",
    b"=",
    b"\\",
    b"X-MS-Exchange-Organization-",
    b"X-MS-Exchange-CrossPremises-",
    b"MAIL FROM:<",
    b"RCPT TO:<",
    b"SIZE=",
    b"[[ReceiveConnector]]",
    b"[[SendConnector]]",
    b"Name = \"",
    b"RemoteIPRanges = [\"",
    b"0.0.0.0/0",
    b"::/0",
    b"MaxMessageSize = \"",
    b"\xff",
    "é".as_bytes(),
];

fn mutate(rng: &mut StdRng, corpus: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    let mut data = corpus[rng.random_range(0..corpus.len())].1.clone();
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        let at = rng.random_range(0..=len);
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 => data.insert(at, rng.random()),
            2 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                data.splice(at..at, t.iter().copied());
            }
            3 if len > 0 => {
                let end = (at + rng.random_range(1..=16)).min(len);
                data.drain(at.min(end)..end);
            }
            4 if len > 0 => {
                // Duplicate a slice (repeated lines, headers, tables).
                let start = rng.random_range(0..len);
                let end = (start + rng.random_range(1..=64)).min(len);
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            5 => {
                // Splice in part of another corpus file.
                let other = &corpus[rng.random_range(0..corpus.len())].1;
                if !other.is_empty() {
                    let start = rng.random_range(0..other.len());
                    let end = (start + rng.random_range(1..=128)).min(other.len());
                    data.splice(at..at, other[start..end].iter().copied());
                }
            }
            _ => data.truncate(at),
        }
    }
    data
}

/// Iterations per target: the config loader is far slower per input in a debug build.
fn iterations(target: &str) -> usize {
    match target {
        "config_loader" => 3_000,
        "dot_reader" => 10_000,
        _ => 20_000,
    }
}

#[test]
fn bounded_mutation_loop() {
    for (n, target) in TARGETS.into_iter().enumerate() {
        let corpus = inputs("corpus", target);
        let mut rng = StdRng::seed_from_u64(0x5eed_f022 + n as u64);
        for i in 0..iterations(target) {
            let data = mutate(&mut rng, &corpus);
            run_one(target, &format!("mutation {i}"), &data);
        }
    }
}
