//! Config loading and validation: the TOML file described in `shared/spec/config.md`, whose
//! keys are the Exchange cmdlet parameter names, turned into the immutable [`Policy`].
//!
//! Every problem is reported as `file:line: key: reason`, and all problems found in one run
//! are reported together (sorted by line), so an administrator fixes a file in one pass.

pub mod edit;
mod inbound;
mod outbound;
mod pressure;
pub use pressure::summary as back_pressure_summary;
mod reader;
mod relay;
mod send;
mod summary;
mod units;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike};

use crate::policy::Policy;
use reader::{Ctx, Lines, suggest};

pub use relay::key_line as relay_key_line;
pub use relay::machine_host_name;
pub use summary::summary;
pub use units::{parse_size, parse_timespan};

/// One problem (or warning) in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not tied to a line (the file could not be read).
    pub line: usize,
    /// The Exchange key name (`SenderIPAddresses`), dotted for nested tables
    /// (`AuthenticationCredential.UserName`); empty when the problem is not about one key.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    /// `{file}:{line}: {key}: {reason}`; the line is left out when it is 0 and the key when it
    /// is empty, so no message shows an empty field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// A valid configuration, and the warnings found while loading it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<ConfigError>,
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Loaded, Vec<ConfigError>> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, path),
        Err(e) => Err(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            reason: format!("cannot read the config file: {e}"),
        }]),
    }
}

/// Validates config text; `file` is only used in messages (and is not read).
pub fn load_str(text: &str, file: &Path) -> Result<Loaded, Vec<ConfigError>> {
    let mut ctx = Ctx::new(text, file);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let line = ctx.line(e.span());
            let column = ctx.column(e.span());
            let message = e.message().trim().replace('\n', "; ");
            ctx.error(
                line,
                "",
                format!("TOML syntax error at column {column}: {message}"),
            );
            return Err(ctx.errors);
        }
    };
    let policy = build(&mut ctx, doc.as_table());
    ctx.errors.sort_by_key(|e| e.line);
    ctx.warnings.sort_by_key(|e| e.line);
    if ctx.errors.is_empty() {
        Ok(Loaded {
            policy,
            warnings: ctx.warnings,
        })
    } else {
        Err(ctx.errors)
    }
}

const SECTIONS: [&str; 4] = [
    "Relay",
    "InboundConnector",
    "OutboundConnector",
    "SendConnector",
];

/// Walks the top level: one `[Relay]` table and arrays of connector tables.
fn build(ctx: &mut Ctx, root: &toml_edit::Table) -> Policy {
    let mut relay_table = None;
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();
    let mut send = Vec::new();
    for (key, item) in root.iter() {
        let line = ctx.line(root.key(key).and_then(|k| k.span()));
        match key {
            "Relay" => match item.as_table_like() {
                Some(t) => relay_table = Some((t, table_line(ctx, item, line))),
                None => ctx.error(
                    line,
                    key,
                    "must be a table: write [Relay] followed by its keys",
                ),
            },
            "InboundConnector" => inbound = connector_tables(ctx, key, item, line),
            "OutboundConnector" => outbound = connector_tables(ctx, key, item, line),
            "SendConnector" => send = connector_tables(ctx, key, item, line),
            _ => unknown_section(ctx, key, item, line),
        }
    }
    let relay = match relay_table {
        Some((table, line)) => relay::build(ctx, table, line),
        None => relay::build(ctx, &toml_edit::Table::new(), 1),
    };
    let env = Env {
        accepted_domains: relay.accepted_domains.clone(),
        has_external_dns: !relay.external_dns_servers.is_empty(),
        dnssec: relay.dnssec_validation,
        certificates: relay.client_identities(),
        own_certificate: relay.tls_certificate.is_some() && relay.tls_private_key.is_some(),
    };
    let inbound: Vec<_> = inbound
        .into_iter()
        .map(|(t, l)| inbound::build(ctx, t, l, &env))
        .collect();
    let outbound: Vec<_> = outbound
        .into_iter()
        .map(|(t, l)| outbound::build(ctx, t, l, &env))
        .collect();
    let send: Vec<_> = send
        .into_iter()
        .map(|(t, l)| send::build(ctx, t, l, &env))
        .collect();
    // Names are unique per namespace, compared without case as Exchange does: inbound
    // connectors among themselves, and outbound + send connectors together, because both are
    // routes that trace rows, `validate --connector` and route selection name in one list.
    unique_names(
        ctx,
        inbound.iter().map(|(c, l)| (c.name.as_str(), l)),
        "inbound connector",
    );
    unique_names(
        ctx,
        outbound
            .iter()
            .map(|(c, l)| (c.name.as_str(), l))
            .chain(send.iter().map(|(c, l)| (c.name.as_str(), l))),
        "outbound or send connector",
    );
    Policy {
        relay,
        inbound: inbound.into_iter().map(|(c, _)| c).collect(),
        outbound: outbound.into_iter().map(|(c, _)| c).collect(),
        send: send.into_iter().map(|(c, _)| c).collect(),
    }
}

/// What connector validation needs to know about `[Relay]`.
#[derive(Default)]
pub(crate) struct Env {
    pub accepted_domains: Vec<crate::policy::DomainPattern>,
    pub has_external_dns: bool,
    pub dnssec: crate::dns::DnssecValidation,
    /// The identities a Send connector can present: `[Relay] Certificates`, then the
    /// relay's own `TlsCertificate` (with its key).
    pub certificates: Vec<crate::policy::CertificateIdentity>,
    /// `[Relay] TlsCertificate` and `TlsPrivateKey` are set (what `DomainSecureEnabled`
    /// presents without a `TlsCertificateName`).
    pub own_certificate: bool,
}

/// The canonical spelling of a connector key (`useMxRecord` → `UseMXRecord`): the name the
/// loader asks for. `None` for a key the section does not have.
pub fn canonical_key(direction: edit::Direction, key: &str) -> Option<&'static str> {
    static KEYS: std::sync::OnceLock<[Vec<&'static str>; 3]> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| edit::Direction::all().map(section_keys));
    let i = edit::Direction::all()
        .iter()
        .position(|d| *d == direction)
        .expect("every direction is listed");
    keys[i]
        .iter()
        .find(|k| k.eq_ignore_ascii_case(key))
        .copied()
}

/// The keys of a connector section, as its builder asks for them (read off a build of an
/// empty table, so the list cannot drift from the loader).
fn section_keys(direction: edit::Direction) -> Vec<&'static str> {
    let mut ctx = Ctx::new("", Path::new(""));
    let env = Env::default();
    let table = toml_edit::Table::new();
    let lines = match direction {
        edit::Direction::Inbound => inbound::build(&mut ctx, &table, 1, &env).1,
        edit::Direction::Outbound => outbound::build(&mut ctx, &table, 1, &env).1,
        edit::Direction::Send => send::build(&mut ctx, &table, 1, &env).1,
    };
    lines.known
}

/// The line of a table's header (`[Relay]`), falling back to its key's line.
fn table_line(ctx: &Ctx, item: &Item, key_line: usize) -> usize {
    let span = match item {
        Item::Table(t) => t.span(),
        Item::Value(v) => v.span(),
        _ => None,
    };
    match ctx.line(span) {
        0 => key_line.max(1),
        n => n,
    }
}

/// The tables of `[[InboundConnector]]` (or `InboundConnector = [{...}, ...]`), each with
/// the line of its header.
fn connector_tables<'a>(
    ctx: &mut Ctx,
    key: &str,
    item: &'a Item,
    line: usize,
) -> Vec<(&'a dyn TableLike, usize)> {
    let wrong = |ctx: &mut Ctx| {
        ctx.error(
            line,
            key,
            format!(
                "must be an array of tables: write [[{key}]] (double brackets) once per connector"
            ),
        );
        Vec::new()
    };
    if let Some(array) = item.as_array_of_tables() {
        return array
            .iter()
            .map(|t| (t as &dyn TableLike, ctx.line(t.span()).max(line)))
            .collect();
    }
    let Some(array) = item.as_array() else {
        return wrong(ctx);
    };
    let mut out = Vec::new();
    for value in array.iter() {
        match value.as_inline_table() {
            Some(t) => out.push((t as &dyn TableLike, ctx.line(value.span()).max(line))),
            None => return wrong(ctx),
        }
    }
    out
}

fn unknown_section(ctx: &mut Ctx, key: &str, item: &Item, line: usize) {
    let valid = "the valid sections are [Relay], [[InboundConnector]], [[OutboundConnector]] and [[SendConnector]]";
    let hint = suggest(key, &SECTIONS)
        .map(|s| format!("did you mean {s:?}? "))
        .unwrap_or_default();
    let reason = if item.is_table_like() || item.is_array_of_tables() {
        format!("unknown section; {hint}{valid}")
    } else {
        format!(
            "is outside any section; every key belongs under a section header such as [Relay] ({valid})"
        )
    };
    ctx.error(line, key, reason);
}

/// Reports every name used a second time (case-insensitively), at the later connector.
fn unique_names<'a>(ctx: &mut Ctx, names: impl Iterator<Item = (&'a str, &'a Lines)>, what: &str) {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (name, lines) in names {
        if name.is_empty() {
            continue;
        }
        let lower = name.to_lowercase();
        match seen.iter().find(|(n, _)| *n == lower) {
            Some((_, first)) => ctx.error(
                lines.of("Name"),
                "Name",
                format!("{name:?} is already the name of the {what} on line {first}; names must be unique"),
            ),
            None => seen.push((lower, lines.of("Name"))),
        }
    }
}

/// Shared by the connector builders: `Name` is required, non-empty and at most 64 characters
/// (Set-OutboundConnector: "The maximum length is 64 characters").
pub(crate) fn connector_name(ctx: &mut Ctx, r: &mut reader::Reader<'_>, section: &str) -> String {
    let Some((name, line)) = r.string(ctx, "Name") else {
        if !r.lines.has("Name") {
            ctx.error(
                r.lines.header,
                "Name",
                format!("missing; every [[{section}]] needs a unique Name"),
            );
        }
        return String::new();
    };
    if name.trim().is_empty() {
        ctx.error(line, "Name", "must not be empty");
    } else if name.chars().count() > 64 {
        ctx.error(
            line,
            "Name",
            format!(
                "is {} characters long; the maximum is 64",
                name.chars().count()
            ),
        );
    } else if name.trim() != name {
        ctx.error(line, "Name", format!("{name:?} starts or ends with spaces"));
    }
    name
}

/// Checks that a configured file exists. A relay that starts and then fails at the first
/// STARTTLS is worse than one that refuses to start.
pub(crate) fn check_file(ctx: &mut Ctx, line: usize, key: &str, path: &Path) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => ctx.error(
            line,
            key,
            format!("{:?} is not a regular file", path.display().to_string()),
        ),
        Err(_) => ctx.error(
            line,
            key,
            format!(
                "file not found: {:?} (relative paths are relative to the working directory)",
                path.display().to_string()
            ),
        ),
    }
}

pub(crate) const CONNECTOR_TYPES: [(&str, crate::policy::ConnectorType); 2] = [
    ("Partner", crate::policy::ConnectorType::Partner),
    ("OnPremises", crate::policy::ConnectorType::OnPremises),
];

/// Set-InboundConnector / Set-OutboundConnector -ConnectorSource; stored with this spelling.
pub(crate) const CONNECTOR_SOURCES: [(&str, &str); 4] = [
    ("Default", "Default"),
    ("Migrated", "Migrated"),
    ("HybridWizard", "HybridWizard"),
    ("AdminUI", "AdminUI"),
];

/// An optional free-text string (`Comment`).
pub(crate) fn text(ctx: &mut Ctx, r: &mut reader::Reader<'_>, key: &'static str) -> Option<String> {
    r.string(ctx, key).map(|(s, _)| s)
}
