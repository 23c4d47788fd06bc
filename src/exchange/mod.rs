//! Import and export of Exchange connectors (README "Import and export").
//!
//! Data flow of an import: each input is read by the reader for its format ([`script`]:
//! New-/Set-/Remove-*Connector lines, [`getjson`]: `Get-*Connector | ConvertTo-Json`,
//! [`dsc`]: Microsoft365DSC resource blocks) into [`Op`]s — a connector created, changed,
//! removed or stated in full, with its parameters as written and their lines. [`engine`]
//! runs the ops in order over the connectors of the base config (if any), turning each
//! parameter into its config key ([`convert`], [`schema`]) or into a comment saying why it
//! was dropped. The result is validated by the relay's own loader (`config::load_str`), and
//! every loader error is traced back to the input line the value came from.
//!
//! Export ([`export`]) writes the connector tables of a config back as New-*Connector lines
//! or DSC blocks; import of that output gives the same policy (tests/exchange_impex.rs).
//!
//! Everything here is sans-IO: text in, text out. The CLI (src/main.rs) and the admin API
//! (src/admin/import.rs) read and write the files.

pub mod convert;
pub mod dsc;
pub mod engine;
pub mod export;
pub mod getjson;
pub mod json;
pub mod ps;
pub mod schema;
pub mod script;

use std::fmt;

use crate::config::edit::Direction;
pub use engine::{Change, Imported, import};
pub use export::{Format, export};
use ps::Val;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file, self.line)
        } else {
            write!(f, "{}", self.file)
        }
    }
}

/// A value the import cannot take, or an input it cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub at: Source,
    /// The parameter or config key; empty when the error is about a whole line.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.at)?;
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl ImportError {
    pub fn new(file: &str, line: usize, key: &str, reason: impl Into<String>) -> Self {
        ImportError {
            at: Source {
                file: file.to_string(),
                line,
            },
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// What an op does to its connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// New-*Connector: the connector must not exist yet.
    New,
    /// Set-*Connector: the connector must exist; the parameters given change.
    Set,
    /// Remove-*Connector, DSC `Ensure = "Absent"`.
    Remove,
    /// A DSC block: created or changed to have these parameters (others are kept).
    Ensure,
    /// A Get- output object: the connector's full state (parameters not shown are defaults).
    State,
}

/// One parameter as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub value: Val,
    pub line: usize,
}

/// One operation on one connector.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    pub direction: Direction,
    /// The connector's name (`-Identity`, `-Name` of New-, DSC `Identity`, JSON `Name`).
    pub identity: String,
    pub params: Vec<Param>,
    pub file: String,
    pub line: usize,
    /// What the input called it (`New-InboundConnector`, `EXOOutboundConnector`), for messages.
    pub what: String,
}

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Script,
    Json,
    Dsc,
}

/// Tells the formats apart by content: JSON starts with `[` or `{`; a DSC configuration
/// names an `EXO…Connector` resource; anything else is read as a script.
pub fn detect(text: &str) -> InputFormat {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    let array_of_json = t
        .strip_prefix('[')
        .map(|rest| rest.trim_start())
        .is_some_and(|rest| rest.starts_with(['{', ']', '"']));
    if t.starts_with('{') || array_of_json {
        return InputFormat::Json;
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("exoinboundconnector")
        || lower.contains("exooutboundconnector")
        || lower.contains("import-dscresource")
    {
        return InputFormat::Dsc;
    }
    InputFormat::Script
}

/// Reads one input into ops (and notes about lines that are not connector changes).
pub fn read(file: &str, text: &str) -> Result<(Vec<Op>, Vec<String>), Vec<ImportError>> {
    match detect(text) {
        InputFormat::Json => getjson::read(file, text),
        InputFormat::Dsc => dsc::read(file, text),
        InputFormat::Script => script::read(file, text),
    }
}

/// The connector cmdlet nouns and their direction.
pub fn direction_of_noun(noun: &str) -> Option<Direction> {
    match noun.to_ascii_lowercase().as_str() {
        "inboundconnector" => Some(Direction::Inbound),
        "outboundconnector" => Some(Direction::Outbound),
        "sendconnector" => Some(Direction::Send),
        _ => None,
    }
}
