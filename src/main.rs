//! The `connector-relay` command line (see `shared/spec/config.md`).
//! Exit codes: 0 ok, 1 invalid input (config, arguments), 2 runtime failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use connector_relay::{config, relay, sink};

#[derive(Parser)]
#[command(
    name = "connector-relay",
    version,
    about = "An SMTP relay that enforces Exchange-style connector policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the relay until SIGTERM/SIGINT, then drain.
    Run {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
    },
    /// Load and validate the config; print a summary of the connectors.
    Check {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
    },
    /// A capture SMTP server: stores every accepted message as one file in DIR.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        maildir: PathBuf,
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// Refuse MAIL FROM until the client has done STARTTLS.
        #[arg(long)]
        require_tls: bool,
        /// Demand a client certificate issued by this CA.
        #[arg(long)]
        client_ca: Option<PathBuf>,
        /// Never advertise STARTTLS, even with a certificate.
        #[arg(long, conflicts_with_all = ["refuse_starttls", "break_starttls"])]
        no_starttls: bool,
        /// Advertise STARTTLS but answer it `454 4.7.0 TLS not available due to temporary reason`.
        #[arg(long, conflicts_with = "break_starttls")]
        refuse_starttls: bool,
        /// Advertise STARTTLS, answer `220`, then close the connection (a failed handshake).
        #[arg(long)]
        break_starttls: bool,
        /// Offer AUTH PLAIN LOGIN and require it before MAIL: `--auth USER:PASS`.
        #[arg(long, value_parser = parse_auth)]
        auth: Option<(String, String)>,
    },
    /// Print message trace rows (not available yet).
    Trace {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
    /// Send a test message through an outbound connector (not available yet).
    Validate {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
    /// Explain which connectors would decide what (not available yet).
    Explain {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Cmd::Check { config } => check(&config),
        Cmd::Run { config } => run(&config),
        Cmd::Sink {
            listen,
            maildir,
            tls_cert,
            tls_key,
            require_tls,
            client_ca,
            no_starttls,
            refuse_starttls,
            break_starttls,
            auth,
        } => {
            use sink::StartTlsMode;
            let starttls = match (no_starttls, refuse_starttls, break_starttls) {
                (true, _, _) => StartTlsMode::Hide,
                (_, true, _) => StartTlsMode::Refuse,
                (_, _, true) => StartTlsMode::Break,
                _ => StartTlsMode::Offer,
            };
            let opts = sink::SinkOptions {
                listen: Some(listen),
                maildir,
                tls_cert,
                tls_key,
                require_tls,
                client_ca,
                rcpt_hook: None,
                starttls,
                auth,
            };
            run_sink(opts)
        }
        Cmd::Trace { .. } | Cmd::Validate { .. } | Cmd::Explain { .. } => {
            eprintln!("connector-relay: this command is not available in this version yet");
            ExitCode::from(1)
        }
    }
}

/// `USER:PASS` (the password may contain colons).
fn parse_auth(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err("expected USER:PASS".into()),
    }
}

fn load(path: &Path) -> Result<config::Loaded, ExitCode> {
    match config::load_file(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            Ok(loaded)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            Err(ExitCode::from(1))
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(loaded) => {
            for line in config::summary(&loaded.policy) {
                println!("{line}");
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run(path: &Path) -> ExitCode {
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let policy = Arc::new(loaded.policy);
    let options = relay::StartOptions {
        config_path: Some(path.to_path_buf()),
        ..relay::StartOptions::default()
    };
    runtime().block_on(async move {
        let handle = match relay::start_with_options(policy, options).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("connector-relay: {e}");
                return ExitCode::from(2);
            }
        };
        wait_for_stop(Some(&handle)).await;
        tracing::info!("shutting down: draining sessions");
        handle.shutdown(Duration::from_secs(30)).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn run_sink(opts: sink::SinkOptions) -> ExitCode {
    runtime().block_on(async move {
        let handle = match sink::start(opts).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("connector-relay sink: {e}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(addr = %handle.addr, "sink listening");
        wait_for_stop(None).await;
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Waits for SIGTERM or SIGINT. With a relay, SIGHUP reloads its configuration meanwhile
/// (a refused config is logged by the reload and the running one stays).
async fn wait_for_stop(relay: Option<&relay::RelayHandle>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => match relay {
                Some(r) => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = r.reload_for(relay::Trigger::Sighup).await;
                }
                None => tracing::info!("SIGHUP ignored"),
            },
        }
    }
}
