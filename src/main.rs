//! The `connector-relay` command line (see `shared/spec/config.md`).
//! Exit codes: 0 ok, 1 invalid input (config, arguments), 2 runtime failure; `validate`
//! exits 3 when the connector failed validation.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use connector_relay::logging::{self, LogFormat};
use connector_relay::{config, fds, ops, relay, service, sink, trace};

/// `--version`: the package version and the git revision it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("CONNECTOR_RELAY_GIT_REV"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "connector-relay",
    version = VERSION,
    about = "An SMTP relay that enforces Exchange-style connector policy"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Auto,
        env = "CONNECTOR_RELAY_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the relay until SIGTERM/SIGINT, then drain.
    Run {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
        /// This node's name in the message trace (several nodes sharing one config and one
        /// PostgreSQL trace store); default: the host name.
        #[arg(long, value_parser = node_name)]
        node: Option<String>,
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
        /// Store nothing: count accepted messages in `<maildir>/count` (benchmarks).
        #[arg(long)]
        discard: bool,
        /// Do not offer REQUIRETLS (RFC 8689) after STARTTLS.
        #[arg(long)]
        no_requiretls: bool,
    },
    /// Print message trace rows: every event of the messages that match, and refused
    /// sessions that match, oldest first.
    Trace {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
        /// The Message-ID header (with or without its angle brackets).
        #[arg(long)]
        message_id: Option<String>,
        /// The envelope sender (`<>` for the null sender).
        #[arg(long)]
        sender: Option<String>,
        #[arg(long)]
        recipient: Option<String>,
        /// An inbound or outbound connector name.
        #[arg(long)]
        connector: Option<String>,
        /// The relay's queue id of a message.
        #[arg(long)]
        queue_id: Option<String>,
        /// From this time: RFC 3339 (2026-11-27T08:00:00Z), a date, or back from now (2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// At most this many rows (the most recent).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// A JSON array of the rows instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the trace's reports: messages per direction and connector, TLS versions,
    /// messages per bucket, refusals by rule (the admin page's Reports view as tables).
    Report {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
        /// From this time: back from now (24h, 7d, 30d), RFC 3339 or a date; default 7d.
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same forms); default now.
        #[arg(long)]
        until: Option<String>,
        /// The bucket of the per-bucket table (15m, 1h, 1d); default chosen from the span.
        #[arg(long)]
        bucket: Option<String>,
        /// Connectors named per direction; the rest are summed as Other.
        #[arg(long, default_value_t = trace::reports::DEFAULT_TOP)]
        top: usize,
        /// The report as JSON (as GET /api/reports answers it).
        #[arg(long)]
        json: bool,
    },
    /// Send a test message through an Outbound (or Send) connector and report every step.
    /// Exit 0 validated (recorded in the config), 1 bad input, 2 config not writable, 3
    /// validation failed.
    Validate {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
        /// The connector's Name.
        #[arg(long)]
        connector: String,
        /// Recipient of the test message (repeatable); default: ValidationRecipients.
        #[arg(long = "recipient", value_name = "ADDRESS")]
        recipients: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Explain which connectors would decide what for such a session (nothing is sent).
    Explain {
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
        /// The client's IP address.
        #[arg(long)]
        ip: IpAddr,
        /// A client certificate file (PEM or DER), presented under TLS.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// MAIL FROM address (`<>` for the null sender).
        #[arg(long, allow_hyphen_values = true)]
        sender: String,
        /// RCPT TO address (repeatable).
        #[arg(long = "recipient", value_name = "ADDRESS", required = true)]
        recipients: Vec<String>,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay the recorded transactions through a proposed config: what it would have
    /// refused (by rule, connector and sender), accepted, relayed, or sent by another
    /// route or TLS level. Exit 0, 1 bad input, 2 trace unreadable, 3 the change opens
    /// the relay.
    Whatif {
        /// The proposed config.
        #[arg(long)]
        config: PathBuf,
        /// The config in effect now (its DataDir holds the trace).
        #[arg(long, default_value = "config/relay.toml")]
        current: PathBuf,
        /// From this time: back from now (7d, 24h), RFC 3339 or a date.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Before this time (same forms as --since); default now.
        #[arg(long)]
        until: Option<String>,
        /// Print the impact as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read Exchange connectors (New-/Set-/Remove-*Connector scripts, `Get-*Connector |
    /// ConvertTo-Json` output, Microsoft365DSC blocks) into a config. Without --out the
    /// config is printed; with an existing --out the connectors are changed in it (comments
    /// kept). Exit 1 with `file:line` errors when a value cannot be taken (nothing written).
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the config's connectors as New-*Connector lines or a Microsoft365DSC
    /// configuration, to apply to Exchange.
    Export {
        #[arg(long, value_parser = ["cmdlets", "dsc"])]
        format: String,
        #[arg(long, default_value = "config/relay.toml")]
        config: PathBuf,
    },
    /// The running relay's delivery queues and messages, through its admin API
    /// (`AdminListen`, token from `AdminTokenFile`). Exit 1 when the API refuses (no such
    /// queue or message), 2 when the relay cannot be reached.
    Queue {
        #[arg(long, default_value = "config/relay.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: connector_relay::admin::cli::QueueCmd,
    },
    /// Print a shell completion script for this command line (the Debian package installs
    /// them for bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page of this command line (roff); with --out-dir, write it and one
    /// page per subcommand (connector-relay-run.1, ...) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
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
    logging::init(cli.log_format);
    match cli.command {
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "connector-relay",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Cmd::Man { out_dir } => man_cmd(out_dir.as_deref()),
        Cmd::Check { config } => check(&config),
        Cmd::Run { config, node } => run(&config, node),
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
            discard,
            no_requiretls,
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
                discard,
                no_requiretls,
            };
            run_sink(opts)
        }
        Cmd::Validate {
            config,
            connector,
            recipients,
            json,
        } => validate(&config, &connector, &recipients, json),
        Cmd::Explain {
            config,
            ip,
            cert,
            sender,
            recipients,
            json,
        } => explain(&config, ip, cert.as_deref(), &sender, &recipients, json),
        Cmd::Whatif {
            config,
            current,
            since,
            until,
            json,
        } => whatif_cmd(&current, &config, &since, until.as_deref(), json),
        Cmd::Queue { config, command } => queue_cmd(&config, &command),
        Cmd::Import { files, out } => import_cmd(&files, out.as_deref()),
        Cmd::Export { format, config } => export_cmd(&config, &format),
        Cmd::Report {
            config,
            since,
            until,
            bucket,
            top,
            json,
        } => {
            let filter = trace::reports::ReportFilter {
                since,
                until,
                bucket,
                top: Some(top),
            };
            report_cmd(&config, &filter, json)
        }
        Cmd::Trace {
            config,
            message_id,
            sender,
            recipient,
            connector,
            queue_id,
            since,
            until,
            limit,
            json,
        } => {
            let filter = trace::TraceFilter {
                message_id,
                sender,
                recipient,
                connector,
                queue_id,
                since,
                until,
                limit: Some(limit),
            };
            trace_cmd(&config, &filter, json)
        }
    }
}

/// `import`: reads every input, imports over `out` when it exists, writes `out` (atomically,
/// refused if it changed meanwhile) or prints the config.
fn import_cmd(files: &[PathBuf], out: Option<&Path>) -> ExitCode {
    use connector_relay::exchange;
    let mut inputs = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => inputs.push((f.display().to_string(), text)),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", f.display());
                return ExitCode::from(1);
            }
        }
    }
    let base = match out.map(std::fs::read_to_string) {
        Some(Ok(text)) => Some(text),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Some(Err(e)) => {
            eprintln!(
                "{}: cannot read: {e}",
                out.unwrap_or(Path::new("")).display()
            );
            return ExitCode::from(1);
        }
        None => None,
    };
    let out_name = out.map(|p| p.display().to_string()).unwrap_or_default();
    let imported = match exchange::import(&inputs, base.as_deref().map(|t| (out_name.as_str(), t)))
    {
        Ok(i) => i,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("import: {} error(s); nothing written", errors.len());
            return ExitCode::from(1);
        }
    };
    for c in &imported.changes {
        eprintln!(
            "{} {}Connector {:?}: {} key(s) changed, {} note(s)",
            c.action,
            c.direction,
            c.name,
            c.keys.len(),
            c.notes.len()
        );
    }
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    let Some(out) = out else {
        print!("{}", imported.text);
        return ExitCode::SUCCESS;
    };
    let written = match &base {
        Some(b) => config::edit::write_if_unchanged(
            out,
            &imported.text,
            config::edit::content_hash(b.as_bytes()),
        )
        .map(|_| ())
        .map_err(|e| e.to_string()),
        None => write_new(out, &imported.text).map_err(|e| e.to_string()),
    };
    match written {
        Ok(()) => {
            eprintln!("{}: written", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: cannot write: {e}", out.display());
            ExitCode::from(2)
        }
    }
}

/// A new file, complete or not at all: a temporary file renamed over it.
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("import-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// `export`: the config must pass `check` first (an invalid config is not carried out).
fn export_cmd(path: &Path, format: &str) -> ExitCode {
    use connector_relay::exchange::{Format, export};
    if let Err(code) = load(path) {
        return code;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let format = if format == "dsc" {
        Format::Dsc
    } else {
        Format::Cmdlets
    };
    match export(&text, &path.display().to_string(), format) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

/// `man`: the pages clap_mangen renders from the same definition as `--help`.
fn man_cmd(out_dir: Option<&Path>) -> ExitCode {
    let written = match out_dir {
        Some(dir) => clap_mangen::generate_to(Cli::command(), dir),
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connector-relay man: {e}");
            ExitCode::from(2)
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
            println!(
                "{}",
                config::back_pressure_summary(&loaded.policy.relay.back_pressure)
            );
            // `run` raises its soft limit to the hard one, so the hard limit of this
            // process is what the relay would get if started the same way.
            if let Ok(limits) = fds::open_files() {
                let budget = fds::Budget::of(&loaded.policy.relay);
                if let Err(e) = fits(path, &budget, limits.hard, "on this machine") {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
                println!(
                    "open files: needs {} of the hard limit {} on this machine",
                    budget.total(),
                    limits.hard
                );
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The open-files budget of the config at `path` against `limit`, as a config error on the
/// line of the key to lower.
fn fits(
    path: &Path,
    budget: &fds::Budget,
    limit: u64,
    where_: &str,
) -> Result<(), config::ConfigError> {
    budget.check(limit, where_).map_err(|short| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        config::ConfigError {
            file: path.to_path_buf(),
            line: config::relay_key_line(&text, short.key),
            key: short.key.to_string(),
            reason: short.reason,
        }
    })
}

/// Raises the open-files soft limit to the hard limit (logged) and refuses a config whose
/// connection limits cannot fit in it.
fn prepare_open_files(
    path: &Path,
    policy: &connector_relay::policy::Policy,
) -> Result<(), ExitCode> {
    let soft = match fds::raise_soft_limit() {
        Ok((before, after)) => {
            tracing::info!(
                before = before.soft,
                soft = after.soft,
                hard = after.hard,
                "open files limit (RLIMIT_NOFILE) raised to the hard limit"
            );
            after.soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open files limit");
            return Ok(());
        }
    };
    let budget = fds::Budget::of(&policy.relay);
    tracing::info!(
        needed = budget.total(),
        reserve = budget.reserve(),
        limit = soft,
        "open files budget"
    );
    fits(path, &budget, soft, "for this process").map_err(|e| {
        tracing::error!("{e}");
        eprintln!("{e}");
        ExitCode::from(1)
    })
}

/// `validate`: send through the connector, print the report, record the result in the
/// config file (Outbound connectors).
fn validate(path: &Path, connector: &str, recipients: &[String], json: bool) -> ExitCode {
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let policy = Arc::new(loaded.policy);
    let resolver =
        match connector_relay::dns::hickory::HickoryResolver::new(&policy.relay.dns_servers) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                eprintln!("connector-relay: DNS resolver: {e}");
                return ExitCode::from(2);
            }
        };
    let report = runtime().block_on(validate_traced(policy, resolver, connector, recipients));
    print_answer(json, &report, report.to_text());
    if report.error.is_some() {
        return ExitCode::from(1);
    }
    match ops::record(path, &report) {
        Ok(Some(_)) => eprintln!(
            "{}: IsValidated = {}{}",
            path.display(),
            report.success,
            if report.success {
                format!(", LastValidationTimestamp = {}", report.timestamp)
            } else {
                String::new()
            }
        ),
        Ok(None) => {}
        Err(errors) => {
            for e in &errors {
                eprintln!("connector-relay: cannot record the validation: {e}");
            }
            return ExitCode::from(2);
        }
    }
    if report.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// Runs the validation with its `Routed` and `Attempt` events written to the trace store
/// (`TraceStore`), as the admin API's validation writes them into the running relay's
/// (SQLite lets both write the same file), naming this host as their node. A store that cannot be opened is said on stderr
/// and the validation runs anyway: the report does not depend on it.
async fn validate_traced(
    policy: Arc<connector_relay::policy::Policy>,
    resolver: Arc<dyn connector_relay::dns::Resolver>,
    connector: &str,
    recipients: &[String],
) -> ops::ValidationReport {
    let relay = &policy.relay;
    let options = trace::store::WriterOptions {
        retention_days: relay.trace_retention_days,
        node: config::machine_host_name(),
        buffer: trace::CHANNEL_CAPACITY,
    };
    let store = trace::store::start(&trace::backend::Location::of(relay), options)
        .map_err(|e| {
            eprintln!("connector-relay: the validation is not written to the message trace: {e}")
        })
        .ok();
    let events = store.as_ref().map(|(events, _)| events);
    let report =
        ops::validate_traced(policy.clone(), resolver, connector, recipients, events).await;
    if let Some((events, writer)) = store {
        drop(events);
        writer.finish().await;
    }
    report
}

/// `explain`: what the relay would decide, without sending anything.
fn explain(
    path: &Path,
    ip: IpAddr,
    cert: Option<&Path>,
    sender: &str,
    recipients: &[String],
    json: bool,
) -> ExitCode {
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let cert = match cert.map(std::fs::read).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connector-relay: cannot read the certificate file: {e}");
            return ExitCode::from(1);
        }
    };
    let explanation = ops::explain(&loaded.policy, ip, cert.as_deref(), sender, recipients);
    print_answer(json, &explanation, explanation.to_text());
    if explanation.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `whatif`: the proposed config's impact on the recorded traffic of the current one.
fn whatif_cmd(
    current: &Path,
    proposed: &Path,
    since: &str,
    until: Option<&str>,
    json: bool,
) -> ExitCode {
    let now = trace::time::now_ms();
    let window = match whatif_window(now, since, until) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("connector-relay whatif: {e}");
            return ExitCode::from(1);
        }
    };
    let (current, proposed) = match (load(current), load(proposed)) {
        (Ok(c), Ok(p)) => (c, p),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let data_dir = &current.policy.relay.data_dir;
    let impact = match ops::whatif::whatif(&current.policy, &proposed.policy, data_dir, window) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("connector-relay whatif: {e}");
            return ExitCode::from(2);
        }
    };
    print_answer(json, &impact, impact.to_text());
    if impact.opens_relay {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// The period of `--since` / `--until`: "in the last 7 days" when it ends now and starts
/// a duration back.
fn whatif_window(
    now: i64,
    since: &str,
    until: Option<&str>,
) -> Result<ops::whatif::Window, String> {
    let since_ms = trace::parse_since(since, now).map_err(|e| format!("--since: {e}"))?;
    let until_ms = match until {
        Some(u) => trace::parse_since(u, now).map_err(|e| format!("--until: {e}"))?,
        None => now,
    };
    if since_ms >= until_ms {
        return Err("--since must be before --until".into());
    }
    let back = trace::time::relative(since.trim()).is_some();
    Ok(if until.is_none() && back {
        ops::whatif::Window::last(now, now - since_ms)
    } else {
        ops::whatif::Window::between(since_ms, until_ms)
    })
}

/// Prints a report as pretty JSON (`--json`) or as its text rendering.
fn print_answer(json: bool, value: &impl serde::Serialize, text: String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("connector-relay: cannot render JSON: {e}"),
        }
    } else {
        print!("{text}");
    }
}

/// `connector-relay trace`: exit 1 on a bad config or argument, 2 when the store cannot be
/// read; no rows is not an error.
fn trace_cmd(path: &Path, filter: &trace::TraceFilter, json: bool) -> ExitCode {
    let q = match filter.to_query(trace::time::now_ms()) {
        Ok(q) => q,
        Err((name, why)) => {
            eprintln!("connector-relay trace: --{name}: {why}");
            return ExitCode::from(1);
        }
    };
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let at = trace::backend::Location::of(&loaded.policy.relay);
    let rows = match trace::query_store(&at, &q) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("connector-relay trace: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string_pretty(&rows) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("connector-relay trace: {e}");
                return ExitCode::from(2);
            }
        }
    } else if !rows.is_empty() {
        print!("{}", trace::table::render(&rows));
    }
    if rows.is_empty() {
        eprintln!("no trace rows match");
    } else if rows.len() == q.limit {
        eprintln!(
            "(the latest {} rows; there may be more: raise --limit or narrow the search)",
            q.limit
        );
    }
    ExitCode::SUCCESS
}

/// `connector-relay report`: exit 1 on a bad config or argument, 2 when the store cannot
/// be read; an empty period is not an error.
fn report_cmd(path: &Path, filter: &trace::reports::ReportFilter, json: bool) -> ExitCode {
    let q = match filter.to_query(trace::time::now_ms()) {
        Ok(q) => q,
        Err((name, why)) => {
            eprintln!("connector-relay report: --{name}: {why}");
            return ExitCode::from(1);
        }
    };
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let at = trace::backend::Location::of(&loaded.policy.relay);
    match trace::reports::report_store(&at, &q) {
        Ok(r) => {
            let text = trace::reports::text::render(&r);
            print_answer(json, &r, text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("connector-relay report: {e}");
            ExitCode::from(2)
        }
    }
}

/// `connector-relay queue ...`: the config only says where the admin API is and where its
/// token is; its warnings are not this command's business, so only errors are printed.
fn queue_cmd(path: &Path, command: &connector_relay::admin::cli::QueueCmd) -> ExitCode {
    use connector_relay::admin::{cli, client::AdminClient};
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::from(1);
        }
    };
    let outcome = match AdminClient::for_relay(&loaded.policy.relay) {
        Ok(client) => runtime().block_on(cli::run(&client, command)),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("connector-relay queue: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `--node`: a name people read in the trace (no control characters, at most 255).
fn node_name(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() || t.len() > 255 || t.chars().any(char::is_control) {
        return Err("a node name is 1 to 255 printable characters".into());
    }
    Ok(t.to_string())
}

fn run(path: &Path, node: Option<String>) -> ExitCode {
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if let Err(code) = prepare_open_files(path, &loaded.policy) {
        return code;
    }
    let policy = Arc::new(loaded.policy);
    let options = relay::StartOptions {
        config_path: Some(path.to_path_buf()),
        node,
        ..relay::StartOptions::default()
    };
    tracing::info!(version = VERSION, config = %path.display(), "starting");
    runtime().block_on(async move {
        let mut signals = Signals::catch();
        let handle = match relay::start_with_options(policy, options).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("connector-relay: {e}");
                service::status(&format!("cannot start: {e}"));
                return ExitCode::from(2);
            }
        };
        // start_with_options returns once the spool is recovered and every listener bound.
        service::ready(&listening_status(&handle));
        wait_for_stop(&mut signals, Some(&handle)).await;
        service::stopping();
        tracing::info!("shutting down: draining sessions");
        handle.shutdown(DRAIN).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// How long a stop lets open SMTP transactions finish (the unit's TimeoutStopSec covers it
/// and the queue's stop after it).
const DRAIN: Duration = Duration::from_secs(30);

/// The service status line: where the relay listens.
fn listening_status(handle: &relay::RelayHandle) -> String {
    let smtp: Vec<String> = handle
        .smtp_addrs
        .iter()
        .chain(&handle.implicit_tls_addrs)
        .map(ToString::to_string)
        .collect();
    format!("listening on {}", smtp.join(", "))
}

/// The service status line after a reload (a refused config leaves the running one).
fn reload_status(
    handle: &relay::RelayHandle,
    reloaded: &Result<relay::Reloaded, relay::ReloadError>,
) -> String {
    match reloaded {
        Ok(done) => format!(
            "{}; configuration generation {}",
            listening_status(handle),
            done.generation
        ),
        Err(e) => format!(
            "{}; reload refused, the running configuration stays: {e}",
            listening_status(handle)
        ),
    }
}

fn run_sink(opts: sink::SinkOptions) -> ExitCode {
    runtime().block_on(async move {
        let mut signals = Signals::catch();
        let handle = match sink::start(opts).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("connector-relay sink: {e}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(addr = %handle.addr, "sink listening");
        wait_for_stop(&mut signals, None).await;
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGTERM, SIGINT and SIGHUP, caught from before the relay starts: a signal that arrives
/// while it starts (its listeners already accept) must not take the default action, which
/// for SIGHUP is to kill the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
        }
    }
}

/// Waits for SIGTERM or SIGINT. With a relay, SIGHUP reloads its configuration meanwhile
/// (a refused config is logged by the reload and the running one stays).
async fn wait_for_stop(signals: &mut Signals, relay: Option<&relay::RelayHandle>) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => return,
            _ = signals.int.recv() => return,
            _ = signals.hup.recv() => match relay {
                Some(r) => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    service::reloading();
                    let reloaded = r.reload_for(relay::Trigger::Sighup).await;
                    service::ready(&reload_status(r, &reloaded));
                }
                None => tracing::info!("SIGHUP ignored"),
            },
        }
    }
}
