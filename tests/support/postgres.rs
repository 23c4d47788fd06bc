//! A private PostgreSQL server for tests: Debian's `postgresql` package (installed by
//! `scripts/install-deps.sh`), a cluster made with `initdb` in a temporary directory and run
//! with `pg_ctl` on a free loopback port, with SCRAM password authentication. PostgreSQL
//! refuses to run as root, so under root the cluster belongs to `nobody` and every command
//! runs through `runuser -u nobody`. Stopped (immediately) and deleted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The superuser of the test cluster and its password (a password the tests look for in
/// every output, to prove it is never shown).
pub const PG_USER: &str = "relay";
pub const PG_PASSWORD: &str = "pw-s3cret-never-shown";

pub struct TestPostgres {
    bin: PathBuf,
    /// `nobody` when the tests run as root.
    run_as: Option<String>,
    data: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb`, if PostgreSQL is installed.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl TestPostgres {
    /// A running server, or why there cannot be one (the caller skips loudly).
    pub fn start() -> Result<TestPostgres, String> {
        let bin = bin_dir().ok_or(
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb); \
             scripts/install-deps.sh installs Debian's postgresql",
        )?;
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "nobody".to_string());
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let home = dir.path().join("pg");
        std::fs::create_dir(&home).map_err(|e| e.to_string())?;
        if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            let uid = user_id("nobody")?;
            std::os::unix::fs::chown(&home, Some(uid), None).map_err(|e| e.to_string())?;
        }
        let pwfile = home.join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).map_err(|e| e.to_string())?;
        if root {
            std::os::unix::fs::chown(&pwfile, Some(user_id("nobody")?), None)
                .map_err(|e| e.to_string())?;
        }
        let pg = TestPostgres {
            bin,
            run_as,
            data: home.join("data"),
            port: super::free_port(),
            _dir: dir,
        };
        let init = pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                pg.data.as_os_str(),
                "-U".as_ref(),
                PG_USER.as_ref(),
                "--auth=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--no-sync".as_ref(),
            ],
        );
        if !init.status.success() {
            return Err(format!("initdb failed:\n{}", text(&init)));
        }
        pg.start_server()?;
        Ok(pg)
    }

    /// `program` of the PostgreSQL installation, as the cluster's owner.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    /// Starts (or starts again) the server on its port and waits until it accepts.
    pub fn start_server(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.home().display()
        );
        let log = self.home().join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "120".as_ref(),
                "start".as_ref(),
            ],
        );
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("pg_ctl start failed:\n{}\n{log}", text(&out)));
        }
        Ok(())
    }

    /// Stops the server (`fast`: connections are closed, as in a real outage).
    pub fn stop_server(&self) {
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out));
    }

    fn home(&self) -> &Path {
        self.data
            .parent()
            .expect("the data directory is in the home")
    }

    /// The URL of the test database, with the password in it.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.home().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("PostgreSQL's log (last lines):");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

/// The uid of `user` (`id -u`).
fn user_id(user: &str) -> Result<u32, String> {
    let out = Command::new("id")
        .args(["-u", user])
        .output()
        .map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("no user {user} to run PostgreSQL as (it refuses root)"))
}
