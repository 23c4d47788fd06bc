//! Changes to the config file made by the relay itself (admin API, `validate`): one
//! connector's keys set or removed, a connector added. The file is edited with `toml_edit`
//! so comments, key order and layout survive; the new text is validated exactly like
//! `check` before anything is written; the write is atomic (temporary file in the same
//! directory, fsync, rename, directory fsync) so a crash leaves the old or the new file,
//! never half of one.

use std::io::Write;
use std::path::Path;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Key, Table, Value};

use super::{ConfigError, Loaded, canonical_key, load_str};

/// Which array of connector tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    Inbound,
    Outbound,
    Send,
}

impl Direction {
    /// The TOML array-of-tables name.
    pub fn section(self) -> &'static str {
        match self {
            Direction::Inbound => "InboundConnector",
            Direction::Outbound => "OutboundConnector",
            Direction::Send => "SendConnector",
        }
    }

    pub fn all() -> [Direction; 3] {
        [Direction::Inbound, Direction::Outbound, Direction::Send]
    }

    pub fn parse(s: &str) -> Option<Direction> {
        Direction::all()
            .into_iter()
            .find(|d| format!("{d:?}").eq_ignore_ascii_case(s) || d.section() == s)
    }
}

/// A change to one connector. `None` in `set` removes the key (back to its default).
#[derive(Debug, Clone)]
pub struct Edit {
    pub direction: Direction,
    /// The connector to change; `None` creates a new one (its `Name` must be in `set`).
    pub name: Option<String>,
    pub set: Vec<(String, Option<Value>)>,
}

/// The result of an accepted edit.
#[derive(Debug)]
pub struct Edited {
    pub old_text: String,
    pub new_text: String,
    /// The validated configuration of `new_text`.
    pub loaded: Loaded,
}

fn err(file: &Path, key: &str, reason: impl Into<String>) -> Vec<ConfigError> {
    vec![ConfigError {
        file: file.to_path_buf(),
        line: 0,
        key: key.to_string(),
        reason: reason.into(),
    }]
}

/// The connector table called `name` in `direction`, if any.
pub fn find_connector<'a>(
    doc: &'a mut DocumentMut,
    direction: Direction,
    name: &str,
) -> Option<&'a mut Table> {
    doc.get_mut(direction.section())
        .and_then(Item::as_array_of_tables_mut)?
        .iter_mut()
        .find(|t| written_name(t) == Some(name))
}

/// The `Name` of a connector table, whatever the case of the key (`name = "..."`).
pub fn written_name(t: &Table) -> Option<&str> {
    super::reader::find_key(t, "Name").and_then(|(_, v)| v.as_str())
}

/// Removes the connector table called `name` in `direction`, with the comment lines directly
/// above its header (they are part of the table in `toml_edit`: they describe it). The
/// section disappears with its last table. False when there is no such table.
pub fn remove_connector(doc: &mut DocumentMut, direction: Direction, name: &str) -> bool {
    let section = direction.section();
    let Some(array) = doc.get_mut(section).and_then(Item::as_array_of_tables_mut) else {
        return false;
    };
    let Some(i) = array.iter().position(|t| written_name(t) == Some(name)) else {
        return false;
    };
    array.remove(i);
    if array.is_empty() {
        doc.remove(section);
    }
    true
}

fn parse(text: &str, file: &Path) -> Result<DocumentMut, Vec<ConfigError>> {
    text.parse()
        .map_err(|e: toml_edit::TomlError| err(file, "", e.message().trim().to_string()))
}

/// The edited document as text, validated like `check`.
fn validated(doc: &DocumentMut, old_text: &str, file: &Path) -> Result<Edited, Vec<ConfigError>> {
    let new_text = doc.to_string();
    let loaded = load_str(&new_text, file)?;
    Ok(Edited {
        old_text: old_text.to_string(),
        new_text,
        loaded,
    })
}

/// Removes the connector `name` from config `text` and validates what is left like
/// `check`. Nothing is written. `Ok(None)` when there is no such connector in the text.
pub fn remove(
    text: &str,
    file: &Path,
    direction: Direction,
    name: &str,
) -> Result<Option<Edited>, Vec<ConfigError>> {
    let mut doc = parse(text, file)?;
    if !remove_connector(&mut doc, direction, name) {
        return Ok(None);
    }
    validated(&doc, text, file).map(Some)
}

/// Applies `edits` one after the other (several connectors created together, such as the
/// two of an email security gateway), validating after each, so that an error is told
/// with the index of the edit that caused it. Nothing is written.
pub fn apply_each(
    text: &str,
    file: &Path,
    edits: &[Edit],
) -> Result<Edited, (usize, Vec<ConfigError>)> {
    let mut current = text.to_string();
    let mut last = None;
    for (i, e) in edits.iter().enumerate() {
        let edited = apply(&current, file, e).map_err(|errors| (i, errors))?;
        current = edited.new_text.clone();
        last = Some(edited);
    }
    match last {
        Some(mut edited) => {
            edited.old_text = text.to_string();
            Ok(edited)
        }
        None => Err((0, err(file, "", "there is no change to make"))),
    }
}

/// Applies `edit` to config `text` (from `file`, named in errors) and validates the result
/// like `check`. Nothing is written.
pub fn apply(text: &str, file: &Path, edit: &Edit) -> Result<Edited, Vec<ConfigError>> {
    let mut doc = parse(text, file)?;
    let table = match &edit.name {
        Some(name) => find_connector(&mut doc, edit.direction, name).ok_or_else(|| {
            err(
                file,
                "Name",
                format!("there is no {} named {name:?}", edit.direction.section()),
            )
        })?,
        None => {
            let new_name = edit
                .set
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("Name"))
                .and_then(|(_, v)| v.as_ref())
                .and_then(Value::as_str)
                .ok_or_else(|| err(file, "Name", "a new connector needs a Name"))?
                .to_string();
            if find_connector(&mut doc, edit.direction, &new_name).is_some() {
                return Err(err(
                    file,
                    "Name",
                    format!(
                        "a {} named {new_name:?} already exists",
                        edit.direction.section()
                    ),
                ));
            }
            let section = edit.direction.section();
            if doc.get(section).is_none() {
                doc.insert(section, Item::ArrayOfTables(ArrayOfTables::new()));
            }
            let array = doc
                .get_mut(section)
                .and_then(Item::as_array_of_tables_mut)
                .ok_or_else(|| err(file, section, "is not an array of tables ([[...]])"))?;
            array.push(Table::new());
            array.iter_mut().last().expect("just pushed")
        }
    };
    for (key, value) in &edit.set {
        // Written in the canonical spelling, whatever spelling the caller or the file used.
        let key = canonical_key(edit.direction, key).unwrap_or(key);
        match value {
            None => table.retain(|k, _| !k.eq_ignore_ascii_case(key)),
            Some(v) => set_keeping_decor(table, key, v.clone()),
        }
    }
    validated(&doc, text, file)
}

/// Sets `key`, keeping the comment and spacing around an existing value. A key written in
/// another case (`useMxRecord`) is renamed to `key` where it stands.
fn set_keeping_decor(table: &mut Table, key: &str, mut value: Value) {
    rename_in_place(table, key);
    if let Some(old) = table.get_mut(key).and_then(Item::as_value_mut) {
        let decor = old.decor().clone();
        *value.decor_mut() = decor;
        *old = value;
    } else {
        table.insert(key, Item::Value(value));
    }
}

/// Renames every key of a `direction` connector table written in another case than the
/// canonical one (`useMxRecord` → `UseMXRecord`), where it stands. Unknown keys stay.
pub fn canonical_keys_in_place(table: &mut Table, direction: Direction) {
    let odd: Vec<&'static str> = table
        .iter()
        .filter_map(|(k, _)| canonical_key(direction, k).filter(|c| *c != k))
        .collect();
    for key in odd {
        rename_in_place(table, key);
    }
}

/// Renames the key spelled like `key` in another case to `key`, keeping its position and
/// the comments around it (the table is rebuilt in order: toml_edit cannot rename a key).
fn rename_in_place(table: &mut Table, key: &str) {
    let other = table
        .iter()
        .any(|(k, _)| k != key && k.eq_ignore_ascii_case(key));
    if !other {
        return;
    }
    let mut rebuilt = table.clone();
    rebuilt.clear();
    for (k, item) in table.iter() {
        let written = table.key(k).expect("a key of the table").clone();
        let new_key = if k.eq_ignore_ascii_case(key) {
            Key::new(key)
                .with_leaf_decor(written.leaf_decor().clone())
                .with_dotted_decor(written.dotted_decor().clone())
        } else {
            written
        };
        rebuilt.insert_formatted(&new_key, item.clone());
    }
    *table = rebuilt;
}

/// Reads `path`, applies `edit`, validates, and (unless `what_if`) writes the file back
/// atomically, refusing when the file changed on disk meanwhile.
pub fn edit_file(path: &Path, edit: &Edit, what_if: bool) -> Result<Edited, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(path, "", format!("cannot read the config file: {e}")))?;
    let edited = apply(&text, path, edit)?;
    if !what_if {
        write_if_unchanged(path, &edited.new_text, content_hash(text.as_bytes()))
            .map_err(|e| err(path, "", format!("cannot write the config file: {e}")))?;
    }
    Ok(edited)
}

/// The SHA-256 of a config file's bytes: what a change read, compared again at write time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentHash([u8; 32]);

pub fn content_hash(bytes: &[u8]) -> ContentHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    ContentHash(out)
}

/// Why [`write_if_unchanged`] did not replace the file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Someone (an administrator's editor, a deployment tool) replaced or rewrote the file
    /// after the change read it: writing would silently undo their edit.
    #[error("the config file was changed on disk since it was read")]
    ChangedOnDisk,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Replaces `path` with `text` if the file still holds what the caller read (`read`):
/// temporary file beside it, fsync, then the swap, then a directory fsync, so a crash
/// leaves the old or the new file, never half of one. Returns the metadata of the file
/// written, taken from its own descriptor (the reload poll compares against it, so an
/// edit landing just after ours is still seen as a change).
///
/// The check is made twice: the content is compared just before the swap (the usual
/// case: an edit made while the change was validated), and the swap itself is an atomic
/// exchange (`renameat2(RENAME_EXCHANGE)`, Linux) that hands back exactly the file it
/// displaced, so an edit that lands between that comparison and the swap is detected and
/// put back ([`restore`]). Where the exchange is unsupported the swap is a plain
/// `rename` after the comparison. The file keeps its permissions.
pub fn write_if_unchanged(
    path: &Path,
    text: &str,
    read: ContentHash,
) -> Result<std::fs::Metadata, WriteError> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = write_temp(&tmp, path, text)?;
        if hash_of(path)? != read {
            return Err(WriteError::ChangedOnDisk);
        }
        swap_in(&tmp, path, read, content_hash(text.as_bytes()))?;
        Ok(file.metadata()?)
    })();
    if let Err(e) = std::fs::remove_file(&tmp)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %tmp.display(), error = %e, "cannot remove the config writer's temporary file");
    }
    std::fs::File::open(parent_dir(path))?.sync_all()?;
    result
}

/// The directory of `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The config writer's temporary file for `path`: `.<name>.<host>.<pid>.tmp` beside it.
/// The host name keeps apart the writers of several nodes sharing the config directory
/// (a volume mounted into containers, where every relay may well be pid 1).
fn temp_path(path: &Path) -> std::path::PathBuf {
    parent_dir(path).join(format!(
        ".{}.{}.{}.tmp",
        file_name(path),
        super::machine_host_name(),
        std::process::id()
    ))
}

/// The pid of a writer's temporary file name after `.<name>.` (`<host>.<pid>.tmp`, or
/// `<pid>.tmp` as written before host names), if it is this host's.
fn local_writer_pid(rest: &str) -> Option<u32> {
    let rest = rest.strip_suffix(".tmp")?;
    let (host, pid) = match rest.rsplit_once('.') {
        Some((host, pid)) => (Some(host), pid),
        None => (None, rest),
    };
    let pid = pid.parse::<u32>().ok()?;
    match host {
        Some(h) if h != super::machine_host_name() => None,
        _ => Some(pid),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into())
}

/// Writes and fsyncs the temporary file, with the permissions of `path`.
fn write_temp(tmp: &Path, path: &Path, text: &str) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::File::create(tmp)?;
    if let Ok(meta) = std::fs::metadata(path) {
        f.set_permissions(meta.permissions())?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(f)
}

/// The hash of the file at `path` now; a file that is gone changed too.
fn hash_of(path: &Path) -> Result<ContentHash, WriteError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(content_hash(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(WriteError::ChangedOnDisk),
        Err(e) => Err(e.into()),
    }
}

/// Puts the temporary file (content hash `ours`) at `path`. After the exchange `tmp`
/// holds the displaced file: anything but `read` is an edit made after the comparison.
fn swap_in(
    tmp: &Path,
    path: &Path,
    read: ContentHash,
    ours: ContentHash,
) -> Result<(), WriteError> {
    if !exchange(tmp, path)? {
        std::fs::rename(tmp, path)?;
        return Ok(());
    }
    if hash_of(tmp)? == read {
        return Ok(());
    }
    restore(tmp, path, ours)?;
    Err(WriteError::ChangedOnDisk)
}

/// A disk edit is at `tmp` and our file (hash `at_path`) at `path`: exchange them back.
/// If what comes back is not the file we expected at `path`, a newer edit replaced it
/// meanwhile: exchange again, so that the newest file ends at `path` and what is left at
/// `tmp` (removed by the caller) is always a file that a later one replaced.
fn restore(tmp: &Path, path: &Path, mut at_path: ContentHash) -> std::io::Result<()> {
    const TRIES: usize = 8;
    for _ in 0..TRIES {
        let going_back = hash_of(tmp).map_err(as_io)?;
        exchange(tmp, path)?;
        if hash_of(tmp).map_err(as_io)? == at_path {
            return Ok(());
        }
        at_path = going_back;
    }
    // Never reached unless the file is rewritten continuously: keep the displaced file
    // under a name the start-up clean-up leaves alone.
    let kept = parent_dir(path).join(format!(
        "{}.displaced-{}",
        file_name(path),
        crate::queue::spool::unix_now()
    ));
    std::fs::rename(tmp, &kept)?;
    tracing::error!(kept = %kept.display(), "the config file kept changing during an API write; the file it displaced is kept");
    Ok(())
}

fn as_io(e: WriteError) -> std::io::Error {
    match e {
        WriteError::Io(e) => e,
        WriteError::ChangedOnDisk => std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

/// Atomically exchanges two paths (`renameat2(RENAME_EXCHANGE)`, Linux 3.15+); `Ok(false)`
/// when the system or file system does not support it. Public for the race test, which
/// saves the file the same way an editor that keeps a backup would.
#[cfg(target_os = "linux")]
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call; no other memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Removes the temporary files the config writer left beside `path` when it was killed
/// between creating one and swapping it in (`.<name>.<host>.<pid>.tmp` of this host),
/// unless that pid is a running process other than this one (a `validate` run writing
/// right now). Another host's files are another node's business (its pid means nothing
/// here). Nothing else is touched. Returns the files removed.
pub fn remove_leftover_temp_files(path: &Path) -> Vec<std::path::PathBuf> {
    let prefix = format!(".{}.", file_name(path));
    let Ok(entries) = std::fs::read_dir(parent_dir(path)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(local_writer_pid) else {
            continue;
        };
        if pid != std::process::id() && process_alive(pid) {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Is `pid` a running process? (`kill(pid, 0)`: EPERM means it exists.)
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A JSON value from the admin API as a TOML value (`null` is handled by the caller as
/// "remove the key"). Objects become inline tables (`AuthenticationCredential`).
pub fn json_to_toml(v: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => return Err("null is only allowed to remove a key".into()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => return Err(format!("{n} is not an integer")),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => {
            let mut a = toml_edit::Array::new();
            for i in items {
                a.push(json_to_toml(i)?);
            }
            Value::Array(a)
        }
        J::Object(map) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, v) in map {
                t.insert(k, json_to_toml(v)?);
            }
            Value::InlineTable(t)
        }
    })
}

/// A TOML item as JSON (for `GET /api/exchange/connectors`).
pub fn toml_to_json(item: &Item) -> serde_json::Value {
    use serde_json::Value as J;
    match item {
        Item::None => J::Null,
        Item::Value(v) => value_to_json(v),
        Item::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), toml_to_json(v)))
                .collect(),
        ),
        Item::ArrayOfTables(a) => J::Array(
            a.iter()
                .map(|t| toml_to_json(&Item::Table(t.clone())))
                .collect(),
        ),
    }
}

fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::String(s) => J::String(s.value().clone()),
        Value::Integer(i) => J::from(*i.value()),
        Value::Float(f) => J::from(*f.value()),
        Value::Boolean(b) => J::Bool(*b.value()),
        Value::Datetime(d) => J::String(d.value().to_string()),
        Value::Array(a) => J::Array(a.iter().map(value_to_json).collect()),
        Value::InlineTable(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), value_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# the relay
[Relay]
Fqdn = "relay.contoso.test" # our name
AcceptedDomains = ["contoso.test"]

# partners
[[InboundConnector]]
Name = "Fabrikam"
SenderDomains = ["fabrikam.test"]  # their domain
SenderIPAddresses = ["127.0.0.20/30"]
RestrictDomainsToIPAddresses = true
"#;

    fn edit(name: Option<&str>, set: Vec<(&str, Option<Value>)>) -> Edit {
        Edit {
            direction: Direction::Inbound,
            name: name.map(str::to_string),
            set: set.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    #[test]
    fn changing_a_key_keeps_comments_and_layout() {
        let e = edit(
            Some("Fabrikam"),
            vec![("Enabled", Some(Value::from(false)))],
        );
        let out = apply(TEXT, Path::new("relay.toml"), &e).unwrap();
        assert!(out.new_text.starts_with("# the relay\n[Relay]\n"));
        assert!(
            out.new_text
                .contains("Fqdn = \"relay.contoso.test\" # our name")
        );
        assert!(out.new_text.contains("# partners\n[[InboundConnector]]"));
        assert!(out.new_text.contains("Enabled = false"));
        assert!(!out.loaded.policy.inbound[0].enabled);

        let e = edit(
            Some("Fabrikam"),
            vec![(
                "SenderDomains",
                Some(
                    json_to_toml(&serde_json::json!(["fabrikam.test", "*.fabrikam.test"])).unwrap(),
                ),
            )],
        );
        let out = apply(TEXT, Path::new("relay.toml"), &e).unwrap();
        assert!(
            out.new_text.contains(
                r#"SenderDomains = ["fabrikam.test", "*.fabrikam.test"]  # their domain"#
            ),
            "{}",
            out.new_text
        );
    }

    #[test]
    fn invalid_changes_are_refused_with_the_key() {
        let e = edit(
            Some("Fabrikam"),
            vec![("SenderIPAddresses", Some(Value::from("not-an-ip")))],
        );
        let errors = apply(TEXT, Path::new("relay.toml"), &e).unwrap_err();
        assert_eq!(errors[0].key, "SenderIPAddresses", "{errors:?}");
        let e = edit(Some("Nobody"), vec![("Enabled", Some(Value::from(false)))]);
        let errors = apply(TEXT, Path::new("relay.toml"), &e).unwrap_err();
        assert!(errors[0].reason.contains("no InboundConnector named"));
    }

    #[test]
    fn creating_and_removing() {
        let e = edit(
            None,
            vec![
                ("Name", Some(Value::from("On-prem"))),
                ("ConnectorType", Some(Value::from("OnPremises"))),
                (
                    "SenderIPAddresses",
                    Some(json_to_toml(&serde_json::json!(["127.0.0.10"])).unwrap()),
                ),
            ],
        );
        let out = apply(TEXT, Path::new("relay.toml"), &e).unwrap();
        assert_eq!(out.loaded.policy.inbound.len(), 2);
        assert_eq!(out.loaded.policy.inbound[1].name, "On-prem");
        let dup = edit(None, vec![("Name", Some(Value::from("Fabrikam")))]);
        assert!(apply(TEXT, Path::new("relay.toml"), &dup).is_err());

        let e = edit(
            Some("Fabrikam"),
            vec![("RestrictDomainsToIPAddresses", None)],
        );
        let out = apply(TEXT, Path::new("relay.toml"), &e).unwrap();
        assert!(!out.new_text.contains("RestrictDomainsToIPAddresses"));
    }

    #[test]
    fn removing_a_connector_keeps_the_other_comments() {
        let text = format!(
            "{TEXT}\n# the second one\n[[InboundConnector]]\nName = \"On-prem\"\nConnectorType = \"OnPremises\"\nSenderIPAddresses = [\"127.0.0.10\"] # the server\n# the end\n"
        );
        let file = Path::new("relay.toml");
        let out = remove(&text, file, Direction::Inbound, "On-prem")
            .unwrap()
            .expect("found");
        assert_eq!(out.loaded.policy.inbound.len(), 1);
        assert!(out.new_text.starts_with(TEXT), "{}", out.new_text);
        assert!(
            !out.new_text.contains("the second one"),
            "its own comment goes"
        );
        assert!(!out.new_text.contains("On-prem"));

        let out = remove(TEXT, file, Direction::Inbound, "Fabrikam")
            .unwrap()
            .expect("found");
        assert!(
            !out.new_text.contains("InboundConnector"),
            "{}",
            out.new_text
        );
        assert!(
            out.new_text
                .contains("Fqdn = \"relay.contoso.test\" # our name")
        );
        assert!(out.loaded.policy.inbound.is_empty());

        assert!(
            remove(TEXT, file, Direction::Inbound, "Nobody")
                .unwrap()
                .is_none()
        );
        assert!(
            remove(TEXT, file, Direction::Outbound, "Fabrikam")
                .unwrap()
                .is_none()
        );
        // What is left must be valid: here the rest of the file is not.
        let broken = TEXT.replace("[Relay]\n", "[Relay]\nNoSuchKey = 1\n");
        let errors = remove(&broken, file, Direction::Inbound, "Fabrikam").unwrap_err();
        assert_eq!(errors[0].key, "NoSuchKey", "{errors:?}");
    }

    #[test]
    fn several_edits_are_applied_together_or_not_at_all() {
        let file = Path::new("relay.toml");
        let new = |name: &str, ips: &str| Edit {
            direction: Direction::Inbound,
            name: None,
            set: vec![
                ("Name".into(), Some(Value::from(name))),
                ("ConnectorType".into(), Some(Value::from("OnPremises"))),
                (
                    "SenderIPAddresses".into(),
                    Some(json_to_toml(&serde_json::json!([ips])).unwrap()),
                ),
            ],
        };
        let out = apply_each(TEXT, file, &[new("A", "127.0.0.1"), new("B", "127.0.0.2")]).unwrap();
        assert_eq!(out.old_text, TEXT);
        assert_eq!(out.loaded.policy.inbound.len(), 3);
        let (i, errors) =
            apply_each(TEXT, file, &[new("A", "127.0.0.1"), new("B", "not-an-ip")]).unwrap_err();
        assert_eq!((i, errors[0].key.as_str()), (1, "SenderIPAddresses"));
        assert!(apply_each(TEXT, file, &[]).is_err());
    }

    #[test]
    fn keys_are_written_in_the_canonical_spelling() {
        let text = "[[OutboundConnector]]\nname = \"Hub\"\nRecipientDomains = [\"fabrikam.test\"]\n\
                    useMxRecord = false # written as in the cmdlet example\nSmartHosts = [\"hub.test\"]\n";
        // The connector is found by a lower-case `name`; a key given in another case by the
        // caller is written canonically; a key the file spells otherwise is renamed where
        // it stands, its comment kept.
        let e = Edit {
            direction: Direction::Outbound,
            name: Some("Hub".into()),
            set: vec![
                ("USEMXRECORD".into(), Some(Value::from(false))),
                ("tlsSettings".into(), Some(Value::from("EncryptionOnly"))),
            ],
        };
        let out = apply(text, Path::new("relay.toml"), &e).unwrap();
        assert_eq!(
            out.new_text,
            "[[OutboundConnector]]\nname = \"Hub\"\nRecipientDomains = [\"fabrikam.test\"]\n\
             UseMXRecord = false # written as in the cmdlet example\nSmartHosts = [\"hub.test\"]\n\
             TlsSettings = \"EncryptionOnly\"\n"
        );
        assert_eq!(
            out.loaded.policy.outbound[0].tls_settings,
            Some(crate::policy::TlsLevel::EncryptionOnly)
        );
        // Removing a key removes it in whatever case it is written.
        let e = Edit {
            direction: Direction::Outbound,
            name: Some("Hub".into()),
            set: vec![("SmartHOSTS".into(), None), ("UseMXRecord".into(), None)],
        };
        let out = apply(text, Path::new("relay.toml"), &e).unwrap();
        assert!(
            !out.new_text.to_lowercase().contains("smarthosts"),
            "{}",
            out.new_text
        );
        assert!(
            !out.new_text.to_lowercase().contains("usemxrecord"),
            "{}",
            out.new_text
        );
        // An unknown key is kept as given, for the loader to name.
        let e = Edit {
            direction: Direction::Outbound,
            name: Some("Hub".into()),
            set: vec![("Colour".into(), Some(Value::from("blue")))],
        };
        let errors = apply(text, Path::new("relay.toml"), &e).unwrap_err();
        assert_eq!(errors[0].key, "Colour");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, TEXT).unwrap();
        let e = edit(Some("Fabrikam"), vec![("Comment", Some(Value::from("hi")))]);
        edit_file(&path, &e, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            TEXT,
            "whatIf wrote"
        );
        edit_file(&path, &e, false).unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("Comment = \"hi\"")
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left"
        );
    }

    #[test]
    fn a_file_changed_on_disk_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, TEXT).unwrap();
        let read = content_hash(TEXT.as_bytes());
        std::fs::write(&path, "# edited by hand\n").unwrap();
        let r = write_if_unchanged(&path, "# ours\n", read);
        assert!(matches!(r, Err(WriteError::ChangedOnDisk)), "{r:?}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# edited by hand\n"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left"
        );

        let read = content_hash(b"# edited by hand\n");
        let meta = write_if_unchanged(&path, "# ours\n", read).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# ours\n");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.ino(), std::fs::metadata(&path).unwrap().ino());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left"
        );
    }

    #[test]
    fn an_edit_landing_between_the_check_and_the_swap_is_put_back() {
        // Staged: the file already holds a newer disk edit when the swap happens.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let tmp = temp_path(&path);
        std::fs::write(&path, "# the newer disk edit\n").unwrap();
        std::fs::write(&tmp, "# ours\n").unwrap();
        let r = swap_in(
            &tmp,
            &path,
            content_hash(b"# as read\n"),
            content_hash(b"# ours\n"),
        );
        assert!(matches!(r, Err(WriteError::ChangedOnDisk)), "{r:?}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# the newer disk edit\n"
        );
        assert_eq!(std::fs::read_to_string(&tmp).unwrap(), "# ours\n");
    }

    #[test]
    fn only_the_writers_leftover_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let host = crate::config::machine_host_name();
        let gone = [
            format!(".relay.toml.{dead}.tmp"),
            format!(".relay.toml.{host}.{dead}.tmp"),
            format!(".relay.toml.{}.tmp", std::process::id()),
        ];
        let kept = [
            ".relay.toml.1.tmp", // pid 1 runs: a writer at work
            ".relay.toml.x.tmp",
            ".other.toml.5.tmp",
            "relay.toml.displaced-5",
            // Another node's writer, on a config directory the nodes share.
            ".relay.toml.node-b.contoso.test.5.tmp",
        ];
        assert!(
            temp_path(&path).ends_with(format!(".relay.toml.{host}.{}.tmp", std::process::id()))
        );
        for name in gone.iter().map(String::as_str).chain(kept) {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let mut removed = remove_leftover_temp_files(&path);
        removed.sort();
        let mut want: Vec<_> = gone.iter().map(|n| dir.path().join(n)).collect();
        want.sort();
        assert_eq!(removed, want);
        for name in kept {
            assert!(dir.path().join(name).exists(), "{name}");
        }
    }
}
