//! Issue 20, the relay installed on a server: the Debian package (scripts/build-deb.sh, from
//! the binary this `cargo test` built, no second build) on a clean Debian 12 (the
//! debootstrap base image, nothing else installed), checked as an administrator would:
//!
//! - its files, system user, permissions and conffile; the default config passes `check`
//!   and is not an open relay; each use case's example passes `check` once copied into place;
//! - the binary started the way the unit starts it (its `ExecStart`, `User`, `Group`,
//!   `WorkingDirectory`, `UMask`, `NoNewPrivileges` and `AmbientCapabilities` read from the
//!   installed unit file) binds port 25 as the system user with CAP_NET_BIND_SERVICE alone,
//!   in a container where unprivileged users may not bind below 1024 (the same start
//!   without the capability is refused), and a message sent to port 25 is delivered;
//! - an upgrade keeps an edited conffile (the new default lands in `.dpkg-dist`), remove
//!   keeps the configuration and state, purge removes them;
//! - the unit file passes `systemd-analyze verify` (on this machine, in a root made of the
//!   unpacked package and the system's units) and its `systemd-analyze security` exposure
//!   stays "OK";
//! - the production image (docker/Dockerfile.prod) runs as the system user and delivers.
//!
//! The container tests need a Docker daemon (scripts/install-deps.sh); without one they print
//! a loud SKIPPED line and pass, as tests/lab.rs does.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use support::Dialog;
use support::docker::{self, BASE_IMAGE, must, ok, poll, repo, run, text};

/// Bounds on waiting for a slow machine; nothing asserts on time.
const READY: Duration = Duration::from_secs(120);
const UNIT: &str = "/usr/lib/systemd/system/connector-relay.service";
const CONF: &str = "/etc/connector-relay/relay.toml";
/// The line the upgrade's package adds to its default config (so dpkg sees it changed).
const V2_MARK: &str = "# default config of the upgrade package";

fn skip(why: &str) {
    docker::skip("tests/package.rs (Debian package)", why);
}

/// The two packages every test uses, built once: the version of Cargo.toml, and an upgrade
/// whose default config differs.
struct Packages {
    _dir: tempfile::TempDir,
    v1: PathBuf,
    v2: PathBuf,
    v2_version: String,
}

fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let v1 = build_deb(dir.path(), &[]);
        // The upgrade: the same binary, a newer version, a changed default config.
        let packaging = dir.path().join("packaging");
        must(
            Command::new("cp")
                .arg("-r")
                .arg(repo().join("packaging"))
                .arg(&packaging),
        );
        let conf = packaging.join("relay.toml");
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{text}{V2_MARK}\n")).unwrap();
        let version = format!("{}+upgrade1", env!("CARGO_PKG_VERSION"));
        let packaging = packaging.to_str().unwrap().to_string();
        let v2 = build_deb(
            dir.path(),
            &["--version", &version, "--packaging", &packaging],
        );
        Packages {
            _dir: dir,
            v1,
            v2,
            v2_version: version,
        }
    })
}

/// scripts/build-deb.sh on this test run's binary; the package's path.
fn build_deb(out: &Path, extra: &[&str]) -> PathBuf {
    let stdout = must(
        Command::new("bash")
            .arg(repo().join("scripts/build-deb.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_connector-relay"), "--out"])
            .arg(out)
            .args(extra)
            .current_dir(repo()),
    );
    PathBuf::from(stdout.lines().last().expect("build-deb prints the package"))
}

#[test]
fn unit_file_passes_systemd_analyze() {
    if !ok(Command::new("systemd-analyze").arg("--version")) {
        return skip("systemd-analyze is not installed (Debian package systemd)");
    }
    // A root with the unpacked package, the system's own units (what the unit refers to:
    // network-online.target, sysinit.target) and the /bin/kill of ExecReload.
    let root = tempfile::tempdir().unwrap();
    must(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&packages().v1)
            .arg(root.path()),
    );
    let units = root.path().join("usr/lib/systemd/system");
    must(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system/.")
            .arg(&units),
    );
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    must(Command::new("cp").arg("/bin/kill").arg(&bin));

    let root_arg = format!("--root={}", root.path().display());
    let out = run(Command::new("systemd-analyze").args(["verify", "--man=no", &root_arg, UNIT]));
    // Unknown keys and bad values are only warnings: the output must be empty too.
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify:\n{}",
        text(&out)
    );
    let out =
        run(Command::new("systemd-analyze").args(["security", "--offline=yes", &root_arg, UNIT]));
    let report = text(&out);
    let exposure = report
        .lines()
        .find_map(|l| l.split("connector-relay.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    // systemd calls up to 4.9 "OK" (a service with network access cannot be lower than ~2).
    assert!(exposure <= 3.0, "exposure {exposure}:\n{report}");
}

/// A container of the base image, removed (with its anonymous volumes) on drop.
struct Container {
    name: String,
}

impl Container {
    fn start(name: String, args: &[&str]) -> Container {
        let c = Container { name };
        must(
            Command::new("docker")
                .args(["run", "-d", "--name", &c.name])
                .args(args),
        );
        c
    }

    fn sh(&self, script: &str) -> Output {
        run(Command::new("docker").args(["exec", &self.name, "sh", "-c", script]))
    }

    /// `script` must succeed; its stdout.
    fn must(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in the container: {script}\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `script` in the background (`docker exec -d`).
    fn spawn(&self, script: &str) {
        must(Command::new("docker").args(["exec", "-d", &self.name, "sh", "-c", script]));
    }

    fn copy_in(&self, from: &Path, to: &str) {
        must(
            Command::new("docker")
                .arg("cp")
                .arg(from)
                .arg(format!("{}:{to}", self.name)),
        );
    }

    fn ip(&self) -> String {
        let ip = must(Command::new("docker").args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.name,
        ]));
        ip.trim().to_string()
    }

    fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e {path}")).status.success()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        run(Command::new("docker").args(["rm", "-f", "-v", &self.name]));
    }
}

#[test]
fn package_installs_runs_as_the_unit_upgrades_and_purges() {
    if let Some(why) = docker::unavailable() {
        return skip(&why);
    }
    docker::base_image();
    let p = packages();
    // Unprivileged users may not bind below 1024 here (Docker's default lets them): port 25
    // then works only through the unit's capability.
    let c = Container::start(
        format!("crpkg{}", std::process::id()),
        &[
            "--init",
            "--sysctl",
            "net.ipv4.ip_unprivileged_port_start=1024",
            BASE_IMAGE,
            "sleep",
            "infinity",
        ],
    );
    c.copy_in(&p.v1, "/tmp/v1.deb");
    c.copy_in(&p.v2, "/tmp/v2.deb");
    c.copy_in(&repo().join("certs-test"), "/tmp/certs");

    let installed = c.must("dpkg -i /tmp/v1.deb 2>&1");
    assert!(installed.contains("installed, not started"), "{installed}");
    check_layout(&c);
    check_default_config(&c);
    check_examples(&c);
    deliver_as_the_unit(&c);
    upgrade_keeps_the_edited_conffile(&c, p);
    remove_and_purge(&c);
}

/// Files, user, permissions and conffile of a fresh install.
fn check_layout(c: &Container) {
    let expected = [
        ("/etc/connector-relay", "root:connector-relay 2770"),
        ("/etc/connector-relay/tls", "root:connector-relay 750"),
        (CONF, "root:connector-relay 640"),
        (
            "/var/lib/connector-relay",
            "connector-relay:connector-relay 750",
        ),
        (
            "/var/lib/connector-relay/spool",
            "connector-relay:connector-relay 750",
        ),
        (
            "/var/log/connector-relay",
            "connector-relay:connector-relay 750",
        ),
        (
            "/var/log/connector-relay/protocol",
            "connector-relay:connector-relay 750",
        ),
        ("/usr/bin/connector-relay", "root:root 755"),
        (UNIT, "root:root 644"),
    ];
    let paths: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
    let stats = c.must(&format!("stat -c '%n %U:%G %a' {}", paths.join(" ")));
    let stats: HashMap<&str, &str> = stats.lines().filter_map(|l| l.split_once(' ')).collect();
    for (path, want) in expected {
        assert_eq!(stats.get(path).copied(), Some(want), "{path}");
    }
    // A system user without a login shell, at home in the state directory.
    let user = c.must("getent passwd connector-relay");
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {user}");
    assert_eq!(fields[5], "/var/lib/connector-relay", "{user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    let conffiles = c.must("dpkg-query -W -f='${Conffiles}' connector-relay");
    assert!(conffiles.contains(CONF), "conffiles: {conffiles}");
    for file in [
        "/usr/share/man/man1/connector-relay.1.gz",
        "/usr/share/man/man1/connector-relay-run.1.gz",
        "/usr/share/bash-completion/completions/connector-relay",
        "/usr/share/zsh/vendor-completions/_connector-relay",
        "/usr/share/fish/vendor_completions.d/connector-relay.fish",
        "/usr/share/doc/connector-relay/README.md.gz",
        "/usr/share/doc/connector-relay/copyright",
    ] {
        assert!(c.sh(&format!("test -s {file}")).status.success(), "{file}");
    }
    let version = c.must("connector-relay --version");
    let here = must(Command::new(env!("CARGO_BIN_EXE_connector-relay")).arg("--version"));
    assert_eq!(version, here);
    assert!(version.contains("(git "), "{version}");
}

/// The shipped config passes `check` as the service user and accepts no relaying.
fn check_default_config(c: &Container) {
    let checked = c.must(&format!(
        "runuser -u connector-relay -- connector-relay check --config {CONF}"
    ));
    assert!(checked.contains(&format!("{CONF}: OK")), "{checked}");
    let unit = c.must(&format!("cat {UNIT}"));
    // Without the capability, port 25 is refused to the user: the unit's capability is
    // what makes it work below.
    let denied = c.sh(&as_the_unit(&unit, false));
    assert_eq!(denied.status.code(), Some(2), "{}", text(&denied));
    assert!(
        text(&denied).contains("cannot listen on 0.0.0.0:25: Permission denied"),
        "{}",
        text(&denied)
    );
    let relay = Relay::start(c, &unit);
    tokio_block_on(async {
        let mut d = dialog(relay.addr).await;
        d.cmd("EHLO client.example.net", "250").await;
        d.cmd("MAIL FROM:<alice@example.net>", "250").await;
        d.cmd("RCPT TO:<bob@example.org>", "550 5.7.64").await;
        d.cmd("QUIT", "221").await;
    });
    relay.stop(c);
}

/// Each use case's example, copied into place with its certificates, passes `check`.
fn check_examples(c: &Container) {
    c.must(
        "cd /tmp/certs && install -m 0640 -g connector-relay relay.contoso.test.crt /etc/connector-relay/tls/relay.crt \
         && install -m 0640 -g connector-relay relay.contoso.test.key /etc/connector-relay/tls/relay.key \
         && install -m 0640 -g connector-relay ca.crt /etc/connector-relay/tls/ca.crt \
         && install -m 0640 -g connector-relay ca.crl.pem /etc/connector-relay/tls/ca.crl.pem",
    );
    for example in ["partner-forced-tls", "hybrid-lab", "gateway"] {
        let checked = c.must(&format!(
            "cp /usr/share/doc/connector-relay/examples/{example}.toml {CONF} \
             && runuser -u connector-relay -- connector-relay check --config {CONF}"
        ));
        assert!(checked.contains("OK"), "{example}: {checked}");
    }
}

/// The gateway example (left in place by `check_examples`) run as the unit runs it: a
/// message to port 25 is delivered to its mail server (a sink in the container).
fn deliver_as_the_unit(c: &Container) {
    start_sink(c);
    let unit = c.must(&format!("cat {UNIT}"));
    let relay = Relay::start(c, &unit);
    let status = c.must(&format!(
        "grep -E '^(Uid|CapEff|CapAmb):' /proc/{}/status",
        relay.pid
    ));
    let uid = c.must("id -u connector-relay");
    let net_bind_service = "0000000000000400"; // bit 10
    assert!(
        status.contains(&format!("Uid:\t{0}\t{0}\t{0}\t{0}", uid.trim())),
        "{status}"
    );
    assert!(
        status.contains(&format!("CapEff:\t{net_bind_service}")),
        "{status}"
    );
    assert!(
        status.contains(&format!("CapAmb:\t{net_bind_service}")),
        "{status}"
    );

    let reply = tokio_block_on(async {
        let mut d = dialog(relay.addr).await;
        d.cmd("EHLO client.example.net", "250").await;
        let reply = d
            .send_message(
                "alice@example.net",
                "bob@contoso.test",
                "Subject: installed relay\r\n\r\nsent to port 25",
            )
            .await;
        d.cmd("QUIT", "221").await;
        reply
    });
    assert!(reply.starts_with("250"), "{reply}");
    poll(READY, "the message in the sink", || {
        c.sh("grep -l 'Subject: installed relay' /tmp/sink/*.eml")
            .status
            .success()
            .then_some(())
    });
    // The trace, as the administrator reads it (its writer flushes in batches).
    poll(READY, "the Delivered trace row", || {
        c.must(&format!(
            "runuser -u connector-relay -- connector-relay trace --config {CONF} --recipient bob@contoso.test"
        ))
        .contains("Delivered")
        .then_some(())
    });
    let state = c.must(
        "stat -c '%n %U %a' /var/lib/connector-relay/admin.token /var/lib/connector-relay/trace.sqlite",
    );
    assert!(state.contains("admin.token connector-relay 600"), "{state}");
    assert!(state.contains("trace.sqlite connector-relay"), "{state}");
    // ExecReload: SIGHUP reloads.
    c.must(&format!("kill -HUP {}", relay.pid));
    poll(READY, "the reload", || {
        relay
            .log(c)
            .contains("configuration reloaded")
            .then_some(())
    });
    relay.stop(c);
}

fn upgrade_keeps_the_edited_conffile(c: &Container, p: &Packages) {
    let before = c.must(&format!("md5sum {CONF}"));
    let upgraded = c.must("dpkg -i --force-confold /tmp/v2.deb 2>&1");
    assert_eq!(c.must(&format!("md5sum {CONF}")), before, "{upgraded}");
    let dist = c.must(&format!("cat {CONF}.dpkg-dist"));
    assert!(dist.contains(V2_MARK), "{dist}");
    let version = c.must("dpkg-query -W -f='${Version}' connector-relay");
    assert_eq!(version, p.v2_version);
    let checked = c.must(&format!(
        "runuser -u connector-relay -- connector-relay check --config {CONF}"
    ));
    assert!(checked.contains("OK"), "{checked}");
}

fn remove_and_purge(c: &Container) {
    c.must("dpkg -r connector-relay");
    assert!(!c.exists("/usr/bin/connector-relay"));
    assert!(!c.exists(UNIT));
    for kept in [CONF, "/var/lib/connector-relay/trace.sqlite"] {
        assert!(c.exists(kept), "remove took {kept}");
    }
    let status = c.must("dpkg-query -W -f='${db:Status-Abbrev}' connector-relay");
    assert_eq!(status.trim(), "rc", "{status}");
    c.must("dpkg -P connector-relay");
    for gone in [
        "/etc/connector-relay",
        "/var/lib/connector-relay",
        "/var/log/connector-relay",
    ] {
        assert!(!c.exists(gone), "purge left {gone}");
    }
    // The user stays (Debian practice: files elsewhere may still be its own).
    assert!(c.sh("getent passwd connector-relay").status.success());
}

/// The relay started in the container as the unit would start it.
struct Relay {
    pid: u32,
    addr: SocketAddr,
}

const RELAY_LOG: &str = "/tmp/relay.log";

impl Relay {
    fn start(c: &Container, unit: &str) -> Relay {
        c.spawn(&format!("{} > {RELAY_LOG} 2>&1", as_the_unit(unit, true)));
        let addr: SocketAddr = format!("{}:25", c.ip()).parse().unwrap();
        poll(READY, "the relay on port 25", || {
            let log = c.sh(&format!("cat {RELAY_LOG}"));
            assert!(
                !text(&log).contains("cannot listen"),
                "relay log:\n{}",
                text(&log)
            );
            text(&log)
                .contains("listening addr=0.0.0.0:25")
                .then_some(())
        });
        let pid = c.must(
            "for p in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in \
             '/usr/bin/connector-relay run '*) echo ${p#/proc/};; esac; done",
        );
        let pid = pid.trim().parse().unwrap_or_else(|_| panic!("pid {pid:?}"));
        Relay { pid, addr }
    }

    fn log(&self, c: &Container) -> String {
        text(&c.sh(&format!("cat {RELAY_LOG}")))
    }

    /// SIGTERM, then waits for the drain to end.
    fn stop(self, c: &Container) {
        c.must(&format!("kill -TERM {}", self.pid));
        poll(READY, "the relay to stop", || {
            self.log(c)
                .contains("INFO connector_relay: stopped")
                .then_some(())
        });
        poll(READY, "the relay's exit", || {
            (!c.exists(&format!("/proc/{}/cmdline", self.pid))
                || c.sh(&format!("grep -q '^State:.*Z' /proc/{}/status", self.pid))
                    .status
                    .success())
            .then_some(())
        });
    }
}

/// The unit's start as a shell command: its user and group, working directory and umask,
/// `NoNewPrivileges`, and (with `caps`) its ambient capabilities as the only ones.
fn as_the_unit(unit: &str, caps: bool) -> String {
    let key = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("the unit has no {k}="))
            .trim()
            .to_string()
    };
    let caps = if caps {
        key("AmbientCapabilities")
            .split_whitespace()
            .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect::<String>()
    } else {
        String::new()
    };
    let no_new_privs = if key("NoNewPrivileges") == "yes" {
        "--no-new-privs"
    } else {
        ""
    };
    format!(
        "cd {wd} && umask {umask} && exec setpriv --reuid={user} --regid={group} --init-groups \
         --inh-caps=-all{caps} --ambient-caps=-all{caps} --bounding-set=-all{caps} {no_new_privs} -- {exec}",
        wd = key("WorkingDirectory"),
        umask = key("UMask"),
        user = key("User"),
        group = key("Group"),
        exec = key("ExecStart"),
    )
}

/// The mail server behind the relay: a sink on 127.0.0.1:2626 in the container, listening
/// before the relay could try it (a refused first attempt would wait for the retry).
fn start_sink(c: &Container) {
    c.spawn(
        "exec connector-relay sink --listen 127.0.0.1:2626 --maildir /tmp/sink > /tmp/sink.log 2>&1",
    );
    poll(READY, "the sink", || {
        c.sh("grep -q 'sink listening' /tmp/sink.log")
            .status
            .success()
            .then_some(())
    });
}

/// An SMTP dialog with the container (from the host's own address on the bridge, where
/// `Dialog::connect`'s loopback source cannot reach), after its `220`.
async fn dialog(addr: SocketAddr) -> Dialog {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut d = Dialog::new(stream);
    d.expect("220", "greeting").await;
    d
}

fn tokio_block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn production_image_runs_as_the_system_user() {
    if let Some(why) = docker::unavailable() {
        return skip(&why);
    }
    docker::base_image();
    let p = packages();
    let image = format!("connector-relay-pkgtest/prod:{}", std::process::id());
    let deb_name = p.v1.file_name().unwrap().to_str().unwrap();
    must(
        Command::new("docker")
            .args(["build", "-q", "-t", &image, "-f"])
            .arg(repo().join("docker/Dockerfile.prod"))
            .arg(format!("--build-arg=BASE_IMAGE={BASE_IMAGE}"))
            .arg(format!("--build-arg=DEB={deb_name}"))
            .arg(p.v1.parent().unwrap()),
    );
    let _image = Image(image.clone());
    // A config of its own, mounted read-only where the image's volume is.
    let etc = tempfile::tempdir().unwrap();
    std::fs::write(etc.path().join("relay.toml"), PROD_CONFIG).unwrap();
    for (path, mode) in [(etc.path(), 0o755), (&etc.path().join("relay.toml"), 0o644)] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mount = format!("{}:/etc/connector-relay:ro", etc.path().display());
    let c = Container::start(
        format!("crprod{}", std::process::id()),
        &["-v", &mount, &image],
    );
    assert_eq!(
        must(Command::new("docker").args(["inspect", "-f", "{{.Config.User}}", &image])).trim(),
        "connector-relay"
    );
    start_sink(&c);
    let uid = c.must("id -u connector-relay");
    let status = c.must("grep '^Uid:' /proc/1/status");
    assert!(
        status.contains(&format!("Uid:\t{}\t", uid.trim())),
        "{status}"
    );
    assert_ne!(uid.trim(), "0");
    let addr: SocketAddr = format!("{}:25", c.ip()).parse().unwrap();
    poll(READY, "the image's relay on port 25", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .ok()
            .map(|_| ())
    });
    tokio_block_on(async {
        let mut d = dialog(addr).await;
        d.cmd("EHLO client.example.net", "250").await;
        d.send_message(
            "alice@example.net",
            "bob@contoso.test",
            "Subject: production image\r\n\r\nsent to port 25",
        )
        .await;
        d.cmd("QUIT", "221").await;
    });
    poll(READY, "the message in the image's sink", || {
        c.sh("grep -l 'Subject: production image' /tmp/sink/*.eml")
            .status
            .success()
            .then_some(())
    });
}

/// The production test's config: the package's paths, contoso.test to a sink in the
/// container.
const PROD_CONFIG: &str = r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["0.0.0.0:25"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "/var/lib/connector-relay/spool"
DataDir = "/var/lib/connector-relay"
AdminTokenFile = "/var/lib/connector-relay/admin.token"
SrsSecretFile = "/var/lib/connector-relay/srs.key"
ProtocolLogDir = "/var/log/connector-relay/protocol"

[[OutboundConnector]]
Name = "To the mail server"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["127.0.0.1:2626"]
"#;

/// An image removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        run(Command::new("docker").args(["rmi", "-f", &self.0]));
    }
}
