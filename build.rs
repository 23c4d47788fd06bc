//! Stamps the git revision into `connector-relay --version` (and the start-up log line):
//! `CONNECTOR_RELAY_GIT_REV` from the environment when set (a build without `.git`, e.g. the
//! Dockerfile's builder, passes it as a build argument), else `git rev-parse HEAD` of the
//! checkout, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CONNECTOR_RELAY_GIT_REV");
    let rev = std::env::var("CONNECTOR_RELAY_GIT_REV")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_rev)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CONNECTOR_RELAY_GIT_REV={rev}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The short revision of HEAD, and the files whose change means HEAD moved (a commit, a
/// checkout): HEAD itself and the branch it points to. Only existing files are named: a
/// missing one would rerun this script, and so rebuild the crate, on every build.
fn git_rev() -> Option<String> {
    let rev = git(&["rev-parse", "--short=12", "HEAD"])?;
    let mut watch = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch.push(format!("{dir}/HEAD"));
    }
    // A worktree keeps its branches in the common directory.
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{common}/{branch}"));
        }
        watch.push(format!("{common}/packed-refs"));
    }
    for file in watch {
        if std::path::Path::new(&file).exists() {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    Some(rev)
}
