//! The container labs' harness (tests/lab.rs, tests/fleet_lab.rs): a Compose project of
//! this checkout brought up under a project name of its own, its images built from Debian
//! packages on the debootstrap base image (scripts/lab-base-image.sh, cached by tag; no
//! image registry), the relay image from this build's binary; brought down with its volumes
//! and its relay image removed on drop, so a failing assertion leaves nothing behind.

use std::path::Path;
use std::process::{Command, Output};

use super::docker::{BASE_IMAGE, must, ok, repo, run, skip, text};

/// `docker compose` (v2) when the plugin works, else `docker-compose` (v1).
pub fn compose_program() -> Option<Vec<String>> {
    if ok(Command::new("docker").args(["compose", "version"])) {
        Some(vec!["docker".into(), "compose".into()])
    } else if ok(Command::new("docker-compose").arg("version")) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// A network already on `subnet` (a user's lab that is up) makes `up` fail.
pub fn subnet_in_use(subnet: &str) -> Option<String> {
    let ids = run(Command::new("docker").args(["network", "ls", "-q"]));
    let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
    ids.split_whitespace().find_map(|id| {
        let out = run(Command::new("docker").args([
            "network",
            "inspect",
            "-f",
            "{{.Name}} {{range .IPAM.Config}}{{.Subnet}} {{end}}",
            id,
        ]));
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        line.contains(subnet).then(|| line.trim().to_string())
    })
}

/// Whether a lab on `subnet` can run here; `Some(compose)` when it can, else the test is
/// skipped loudly (`test` names it).
pub fn ready(test: &str, subnet: &str) -> Option<Vec<String>> {
    if let Some(why) = super::docker::unavailable() {
        skip(test, &why);
        return None;
    }
    let Some(compose) = compose_program() else {
        skip(
            test,
            "neither `docker compose` nor `docker-compose` is installed",
        );
        return None;
    };
    if let Some(net) = subnet_in_use(subnet) {
        skip(
            test,
            &format!("network {net} already uses the lab's subnet {subnet} (a lab that is up?)"),
        );
        return None;
    }
    Some(compose)
}

/// One compose project.
pub struct Project {
    pub compose: Vec<String>,
    pub project: String,
    /// The compose file, relative to the repository.
    pub file: &'static str,
    /// Variables the compose file reads.
    pub env: Vec<(&'static str, String)>,
    /// The relay image built for this project, removed at the end.
    pub relay_image: String,
    pub down: bool,
}

impl Project {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(repo().join(self.file))
            .current_dir(repo())
            .env("LAB_BASE_IMAGE", BASE_IMAGE)
            .env("LAB_RELAY_IMAGE", &self.relay_image);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `compose exec -T SERVICE ARGS...`
    pub fn exec(&self, service: &str, args: &[&str]) -> Output {
        run(self.cmd().args(["exec", "-T", service]).args(args))
    }

    pub fn teardown(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        let out = run(self
            .cmd()
            .args(["down", "-v", "--remove-orphans", "-t", "5"]));
        if !out.status.success() {
            eprintln!("lab: compose down failed:\n{}", text(&out));
        }
        run(Command::new("docker").args(["rmi", "-f", &self.relay_image]));
    }

    /// What of the project is left, as `docker ... ls` prints it (empty: nothing).
    pub fn leftovers(&self) -> String {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = String::new();
        for what in [
            &["ps", "-a", "-q", "--filter"][..],
            &["network", "ls", "-q", "--filter"],
            &["volume", "ls", "-q", "--filter"],
        ] {
            let out = run(Command::new("docker").args(what).arg(&label));
            left.push_str(String::from_utf8_lossy(&out.stdout).trim());
        }
        let image = run(Command::new("docker").args(["image", "inspect", &self.relay_image]));
        if image.status.success() {
            left.push_str(&self.relay_image);
        }
        left
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.down {
            // A failure: show what the services said before they are gone.
            let logs = run(self.cmd().args(["logs", "--no-color", "--tail", "60"]));
            eprintln!("lab logs:\n{}", text(&logs));
        }
        self.teardown();
    }
}

/// An image of `lab/` (`lab/DOCKERFILE`, the layer cache keeps it) tagged `tag`.
pub fn lab_image(tag: &str, dockerfile: &str) {
    must(
        Command::new("docker")
            .args(["build", "-q", "-t", tag, "--build-arg"])
            .arg(format!("BASE_IMAGE={BASE_IMAGE}"))
            .args(["-f", &format!("lab/{dockerfile}"), "lab"])
            .current_dir(repo()),
    );
}

/// The relay image from the binary cargo built for this test run (the Dockerfile's
/// `prebuilt` stage: no Rust image), then images replaced by newer builds of their tag.
pub fn relay_image(tag: &str) {
    // Put where .dockerignore lets it through.
    let bin_dir = repo().join("lab/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("connector-relay");
    let _ = std::fs::remove_file(&bin);
    let built = Path::new(env!("CARGO_BIN_EXE_connector-relay"));
    if std::fs::hard_link(built, &bin).is_err() {
        std::fs::copy(built, &bin).unwrap();
    }
    let out = run(Command::new("docker")
        .args(["build", "-q", "--target", "prebuilt", "-t", tag])
        .arg(format!("--build-arg=BASE_IMAGE={BASE_IMAGE}"))
        .arg(".")
        .current_dir(repo()));
    let _ = std::fs::remove_file(&bin);
    assert!(out.status.success(), "relay image:\n{}", text(&out));
    run(Command::new("docker").args([
        "image",
        "prune",
        "-f",
        "--filter",
        "label=connector-relay-lab",
    ]));
}
