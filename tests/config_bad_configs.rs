//! Every folder under `tests/bad_configs/` holds a broken `relay.toml` and, in
//! `expected_error`, the exact first error line the loader must report for it. The file is
//! loaded under the name `relay.toml`, so messages read `relay.toml:LINE: KEY: reason`; paths
//! inside the configs are relative to the package root (the working directory of tests).

use std::fs;
use std::path::{Path, PathBuf};

use connector_relay::config::load_str;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_configs");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .expect("tests/bad_configs exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_bad_config_reports_its_exact_first_error() {
    let dirs = cases();
    assert!(
        dirs.len() >= 25,
        "expected at least 25 bad configs, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(dir.join("relay.toml")).expect("relay.toml");
        let expected = fs::read_to_string(dir.join("expected_error")).unwrap_or_default();
        let expected = expected.trim_end_matches(['\n', '\r']);
        match load_str(&text, Path::new("relay.toml")) {
            Ok(_) => failures.push(format!(
                "{name}: loaded without error, expected\n    {expected}"
            )),
            Err(errors) => {
                let first = errors[0].to_string();
                if first != expected {
                    failures.push(format!(
                        "{name}:\n    expected {expected}\n    actual   {first}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn errors_carry_file_line_and_key() {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_configs/04-bad-cidr/relay.toml"),
    )
    .unwrap();
    let errors = load_str(&text, Path::new("bad.toml")).unwrap_err();
    assert_eq!(errors[0].file, Path::new("bad.toml"));
    assert_eq!(errors[0].line, 8);
    assert_eq!(errors[0].key, "SenderIPAddresses");
}

#[test]
fn all_errors_are_collected_in_line_order() {
    let text = r#"
[Relay]
MaxMessageSize = "lots"
Listen = ["nowhere"]

[[InboundConnector]]
Name = "A"
SenderIPAddresses = ["10.0.0.0/33"]
RequireTls = "yes"
Colour = "blue"

[[SendConnector]]
AddressSpaces = ["contoso.com;0"]
"#;
    let errors = load_str(text, Path::new("relay.toml")).unwrap_err();
    let lines: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        lines,
        vec![
            (3, "MaxMessageSize"),
            (4, "Listen"),
            (8, "SenderIPAddresses"),
            (9, "RequireTls"),
            (10, "Colour"),
            (12, "Name"),
            (13, "AddressSpaces"),
        ]
    );
}

#[test]
fn unreadable_file_is_one_error_without_line() {
    let errors = connector_relay::config::load_file(Path::new("does/not/exist.toml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 0);
    assert_eq!(errors[0].key, "");
    assert!(
        errors[0]
            .to_string()
            .starts_with("does/not/exist.toml: cannot read the config file: ")
    );
}
