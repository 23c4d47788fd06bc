//! Runs the [`Op`]s of all inputs, in order, over the connectors of a base config (or none),
//! then validates the result with the relay's own loader and traces its errors back to the
//! input lines. Every parameter ends as a config key or as a comment saying why it was
//! dropped; a value that cannot be taken is an error, and any error means no output.

use std::collections::BTreeSet;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use super::convert::convert;
use super::schema::{self, dropped, is_default, only_empty_may_drop};
use super::script::show;
use super::{Direction, ImportError, Op, OpKind, Param, Source, ps::Val};

/// One connector as the import builds it.
#[derive(Debug, Clone)]
struct Draft {
    direction: Direction,
    name: String,
    /// Its name in the base config, when it came from there.
    base_name: Option<String>,
    keys: Vec<(String, Value, Source)>,
    /// Comments written above the connector (dropped parameters).
    notes: Vec<String>,
    origin: Source,
    touched: bool,
}

impl Draft {
    fn get(&self, key: &str) -> Option<&Value> {
        self.keys
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v)
    }

    fn set(&mut self, key: &str, value: Option<Value>, at: Source) {
        let pos = self.keys.iter().position(|(k, _, _)| k == key);
        match (pos, value) {
            (Some(i), Some(v)) => self.keys[i] = (key.to_string(), v, at),
            (None, Some(v)) => self.keys.push((key.to_string(), v, at)),
            (Some(i), None) => {
                self.keys.remove(i);
            }
            (None, None) => {}
        }
    }
}

/// One connector the import creates, changes or removes (the admin page's preview).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    #[serde(rename = "Direction")]
    pub direction: String,
    #[serde(rename = "Name")]
    pub name: String,
    /// `New`, `Set` or `Remove`.
    #[serde(rename = "Action")]
    pub action: &'static str,
    /// Changed keys: `{Key, Old, New}` (JSON of the config values; null = not set).
    #[serde(rename = "Changes")]
    pub keys: Vec<serde_json::Value>,
    /// Dropped parameters and why.
    #[serde(rename = "Dropped")]
    pub notes: Vec<String>,
}

/// The outcome of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The config: the base with the changes applied (comments kept), or a new file.
    pub text: String,
    pub changes: Vec<Change>,
    /// Input lines that were not connector changes (`Connect-ExchangeOnline` ignored).
    pub notes: Vec<String>,
}

struct Engine {
    drafts: Vec<Draft>,
    base: Vec<Draft>,
    removed: Vec<(Direction, String)>,
    errors: Vec<ImportError>,
}

/// Imports `inputs` (`(file name, text)`) over `base` (`(file name, config text)`), or into
/// a new config when there is none.
pub fn import(
    inputs: &[(String, String)],
    base: Option<(&str, &str)>,
) -> Result<Imported, Vec<ImportError>> {
    let mut ops = Vec::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in inputs {
        match super::read(file, text) {
            Ok((o, n)) => {
                ops.extend(o);
                notes.extend(n);
            }
            Err(e) => errors.extend(e),
        }
    }
    let base_drafts = match base {
        Some((file, text)) => base_drafts(file, text).map_err(|e| vec![e])?,
        None => Vec::new(),
    };
    let mut engine = Engine {
        drafts: base_drafts.clone(),
        base: base_drafts,
        removed: Vec::new(),
        errors,
    };
    for op in ops {
        engine.apply(op);
    }
    // The loader's verdict on what could be read is reported with the other errors, so
    // that one run shows every problem.
    let files: Vec<&str> = inputs.iter().map(|(f, _)| f.as_str()).collect();
    let validated = engine.validate(base, &files, &notes);
    let mut errors = std::mem::take(&mut engine.errors);
    match validated {
        Ok(text) if errors.is_empty() => {
            let changes = engine.changes();
            Ok(Imported {
                text,
                changes,
                notes,
            })
        }
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            errors.sort_by(|a, b| (&a.at.file, a.at.line).cmp(&(&b.at.file, b.at.line)));
            errors.dedup();
            Err(errors)
        }
    }
}

/// The connector tables of a config, as drafts.
fn base_drafts(file: &str, text: &str) -> Result<Vec<Draft>, ImportError> {
    let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        ImportError::new(
            file,
            0,
            "",
            format!("cannot read the config: {}", e.message().trim()),
        )
    })?;
    let mut out = Vec::new();
    for d in Direction::all() {
        let Some(item) = doc.get(d.section()) else {
            continue;
        };
        let Some(array) = item.as_array_of_tables() else {
            return Err(ImportError::new(
                file,
                0,
                d.section(),
                "the import needs [[…]] tables here",
            ));
        };
        for t in array.iter() {
            let at = Source {
                file: file.to_string(),
                line: 0,
            };
            // Keys under their canonical spelling, however the base file writes them.
            let keys: Vec<(String, Value, Source)> = t
                .iter()
                .filter_map(|(k, item)| {
                    let k = crate::config::canonical_key(d, k).unwrap_or(k);
                    item_value(item).map(|v| (k.to_string(), v, at.clone()))
                })
                .collect();
            let name = crate::config::edit::written_name(t)
                .unwrap_or_default()
                .to_string();
            out.push(Draft {
                direction: d,
                name: name.clone(),
                base_name: Some(name),
                keys,
                notes: Vec::new(),
                origin: at,
                touched: false,
            });
        }
    }
    Ok(out)
}

fn item_value(item: &Item) -> Option<Value> {
    match item {
        Item::Value(v) => Some(v.clone()),
        Item::Table(t) => Some(Value::InlineTable(t.clone().into_inline_table())),
        _ => None,
    }
}

/// A config value without its layout, as written in a fresh file.
fn lit(v: &Value) -> String {
    let mut v = v.clone();
    v.decor_mut().clear();
    if let Value::Array(a) = &mut v {
        a.fmt();
    }
    v.to_string()
}

fn secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["credential", "password", "secret", "token", "thumbprint"]
        .iter()
        .any(|s| n.contains(s))
}

fn empty(v: &Val) -> bool {
    match v {
        Val::Null | Val::Bool(false) => true,
        Val::List(l) => l.is_empty(),
        Val::Str(s) => s.is_empty(),
        _ => false,
    }
}

/// Microsoft365DSC's connection parameters, in every resource block.
const DSC_CONNECTION: [&str; 9] = [
    "credential",
    "applicationid",
    "tenantid",
    "certificatethumbprint",
    "certificatepassword",
    "certificatepath",
    "applicationsecret",
    "managedidentity",
    "accesstokens",
];

impl Engine {
    fn find(&self, d: Direction, name: &str) -> Option<usize> {
        self.drafts
            .iter()
            .position(|x| x.direction == d && x.name.eq_ignore_ascii_case(name))
    }

    fn error(&mut self, op: &Op, line: usize, key: &str, reason: impl Into<String>) {
        self.errors
            .push(ImportError::new(&op.file, line, key, reason));
    }

    fn apply(&mut self, op: Op) {
        let found = self.find(op.direction, &op.identity);
        let section = op.direction.section();
        let i = match (op.kind, found) {
            (OpKind::New, Some(i)) => {
                let where_ = self.drafts[i].origin.to_string();
                return self.error(&op, op.line, "Name", format!("{} cannot create {:?}: a {section} of that name already exists ({where_}); use Set-{section}", op.what, op.identity));
            }
            (OpKind::Set | OpKind::Remove, None) => {
                return self.error(&op, op.line, "Identity", format!("{}: there is no {section} named {:?}, neither earlier in the import nor in the config", op.what, op.identity));
            }
            (OpKind::Remove, Some(i)) => {
                let d = self.drafts.remove(i);
                if let Some(n) = d.base_name {
                    self.removed.push((d.direction, n));
                }
                return;
            }
            (_, Some(i)) => i,
            (_, None) => {
                let origin = Source {
                    file: op.file.clone(),
                    line: op.line,
                };
                self.drafts.push(Draft {
                    direction: op.direction,
                    name: op.identity.clone(),
                    base_name: None,
                    keys: Vec::new(),
                    notes: Vec::new(),
                    origin,
                    touched: false,
                });
                self.drafts.len() - 1
            }
        };
        let draft = &mut self.drafts[i];
        draft.touched = true;
        draft.origin = Source {
            file: op.file.clone(),
            line: op.line,
        };
        if op.kind == OpKind::State {
            // A Get- object is the whole connector: keys it does not show are defaults.
            draft.keys.retain(|(k, _, _)| k == "Name");
        }
        self.params(i, &op);
    }

    /// Each parameter into a key of draft `i`, a note, or an error.
    fn params(&mut self, i: usize, op: &Op) {
        let d = op.direction;
        let mut ignored: BTreeSet<String> = BTreeSet::new();
        for p in &op.params {
            let at = Source {
                file: op.file.clone(),
                line: p.line,
            };
            if let Some((key, kind)) = schema::key(d, &p.name) {
                let current = self.drafts[i].get(key).cloned();
                match convert(key, kind, &p.value, current.as_ref()) {
                    Ok(Some(v))
                        if op.kind == OpKind::State && key != "Name" && is_default(key, &v) => {}
                    Ok(Some(v)) => {
                        if key == "Name"
                            && let Some(s) = v.as_str()
                        {
                            self.drafts[i].name = s.to_string();
                        }
                        self.drafts[i].set(key, Some(v), at);
                    }
                    Ok(None) => self.drafts[i].set(key, None, at),
                    Err(reason) => self.error(op, p.line, key, reason),
                }
                continue;
            }
            if let Some(reason) = dropped(d, &p.name) {
                if only_empty_may_drop(d, &p.name) && !empty(&p.value) {
                    self.error(
                        op,
                        p.line,
                        &p.name,
                        format!("cannot be dropped while it lists values: {reason}"),
                    );
                } else if empty(&p.value)
                    || reason.starts_with("a read-only")
                    || reason.starts_with("a PowerShell")
                {
                    ignored.insert(p.name.clone());
                } else {
                    self.drafts[i].notes.push(note(&at, p, reason));
                }
                continue;
            }
            if op.kind == OpKind::Ensure
                && DSC_CONNECTION.contains(&p.name.to_ascii_lowercase().as_str())
            {
                ignored.insert(p.name.clone());
            } else if op.kind == OpKind::State {
                if empty(&p.value) {
                    ignored.insert(p.name.clone());
                } else {
                    self.drafts[i]
                        .notes
                        .push(note(&at, p, "not a setting the relay knows"));
                }
            } else {
                self.error(
                    op,
                    p.line,
                    &p.name,
                    format!(
                        "is not a parameter of {} that the relay knows; the relay takes: {}",
                        op.what,
                        schema::keys(d)
                            .iter()
                            .map(|(k, _)| *k)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        if !ignored.is_empty() {
            let list: Vec<String> = ignored.into_iter().collect();
            self.drafts[i].notes.push(format!(
                "{}:{}: ignored (read-only, empty, or PowerShell/DSC controls): {}",
                op.file,
                op.line,
                list.join(", ")
            ));
        }
    }

    /// Renders every connector (with `relay` as the `[Relay]` section), loads the text like
    /// `check`, and maps the loader's errors to input lines. Returns the config to write.
    fn validate(
        &self,
        base: Option<(&str, &str)>,
        files: &[&str],
        notes: &[String],
    ) -> Result<String, Vec<ImportError>> {
        let relay = match base {
            Some((_, text)) => relay_of(text),
            None => self.fresh_relay(),
        };
        let (text, origins) = self.render(&relay, files, notes);
        let path = std::path::Path::new(base.map_or("import.toml", |b| b.0));
        if let Err(errors) = crate::config::load_str(&text, path) {
            return Err(errors
                .into_iter()
                .map(|e| {
                    let at = origins.get(e.line).cloned().flatten().unwrap_or(Source {
                        file: path.display().to_string(),
                        line: 0,
                    });
                    ImportError {
                        at,
                        key: e.key,
                        reason: e.reason,
                    }
                })
                .collect());
        }
        match base {
            None => Ok(text),
            Some((file, base_text)) => self.merge(file, base_text),
        }
    }

    /// `[Relay]` of a new config: the accepted domains the connectors name.
    fn fresh_relay(&self) -> String {
        let mut domains: Vec<String> = Vec::new();
        for d in &self.drafts {
            if let Some(Value::Array(a)) = d.get("AssociatedAcceptedDomains") {
                for x in a.iter().filter_map(Value::as_str) {
                    let x = x.trim_start_matches("*.").to_string();
                    if !domains.contains(&x) {
                        domains.push(x);
                    }
                }
            }
        }
        let mut s = String::from(
            "[Relay]\n# The relay's own settings keep their defaults (README \"Configuration\").\n",
        );
        if !domains.is_empty() {
            s.push_str("# AcceptedDomains: the domains the imported connectors name in AssociatedAcceptedDomains;\n# add the organization's other accepted domains.\n");
            let arr: Value = Value::Array(domains.iter().map(String::as_str).collect());
            s.push_str(&format!("AcceptedDomains = {}\n", lit(&arr)));
        }
        s
    }

    /// The config text and, per line (1-based index), the input the line came from.
    fn render(
        &self,
        relay: &str,
        files: &[&str],
        notes: &[String],
    ) -> (String, Vec<Option<Source>>) {
        let mut out = String::new();
        let mut origins: Vec<Option<Source>> = vec![None];
        let line = |out: &mut String,
                    origins: &mut Vec<Option<Source>>,
                    text: &str,
                    at: Option<Source>| {
            out.push_str(text);
            out.push('\n');
            origins.push(at);
        };
        line(
            &mut out,
            &mut origins,
            &format!(
                "# Written by `connector-relay import` from {}.",
                files.join(", ")
            ),
            None,
        );
        for n in notes {
            line(&mut out, &mut origins, &format!("# {n}"), None);
        }
        line(&mut out, &mut origins, "", None);
        for l in relay.lines() {
            line(&mut out, &mut origins, l, None);
        }
        for d in Direction::all() {
            for draft in self.drafts.iter().filter(|x| x.direction == d) {
                line(&mut out, &mut origins, "", None);
                for n in &draft.notes {
                    line(&mut out, &mut origins, &format!("# {n}"), None);
                }
                line(
                    &mut out,
                    &mut origins,
                    &format!("[[{}]]", d.section()),
                    Some(draft.origin.clone()),
                );
                for (k, v, at) in ordered(draft) {
                    line(
                        &mut out,
                        &mut origins,
                        &format!("{k} = {}", lit(v)),
                        Some(at.clone()),
                    );
                }
            }
        }
        (out, origins)
    }

    /// The base config with the import's changes, comments and layout kept.
    fn merge(&self, file: &str, base_text: &str) -> Result<String, Vec<ImportError>> {
        let fail = |reason: String| vec![ImportError::new(file, 0, "", reason)];
        let mut doc: DocumentMut = base_text
            .parse()
            .map_err(|e: toml_edit::TomlError| fail(e.message().to_string()))?;
        for (d, name) in &self.removed {
            crate::config::edit::remove_connector(&mut doc, *d, name);
        }
        for draft in self.drafts.iter().filter(|x| x.touched) {
            let section = draft.direction.section();
            let existing = draft
                .base_name
                .as_ref()
                .and_then(|n| crate::config::edit::find_connector(&mut doc, draft.direction, n));
            let table = match existing {
                Some(t) => t,
                None => {
                    if doc.get(section).is_none() {
                        doc.insert(section, Item::ArrayOfTables(ArrayOfTables::new()));
                    }
                    let array = doc
                        .get_mut(section)
                        .and_then(Item::as_array_of_tables_mut)
                        .ok_or_else(|| fail(format!("{section} is not an array of tables")))?;
                    array.push(Table::new());
                    array.iter_mut().last().expect("just pushed")
                }
            };
            crate::config::edit::canonical_keys_in_place(table, draft.direction);
            write_table(table, draft);
        }
        let text = doc.to_string();
        crate::config::load_str(&text, std::path::Path::new(file)).map_err(|errs| {
            errs.into_iter()
                .map(|e| ImportError::new(file, e.line, &e.key, e.reason))
                .collect::<Vec<_>>()
        })?;
        Ok(text)
    }

    fn changes(&self) -> Vec<Change> {
        let json = |v: Option<&Value>| {
            v.map_or(serde_json::Value::Null, |v| {
                crate::config::edit::toml_to_json(&Item::Value(v.clone()))
            })
        };
        let mut out = Vec::new();
        for (d, name) in &self.removed {
            if !self
                .drafts
                .iter()
                .any(|x| x.touched && x.base_name.as_ref() == Some(name) && x.direction == *d)
            {
                out.push(Change {
                    direction: format!("{d:?}"),
                    name: name.clone(),
                    action: "Remove",
                    keys: Vec::new(),
                    notes: Vec::new(),
                });
            }
        }
        for draft in self.drafts.iter().filter(|x| x.touched) {
            let before = draft.base_name.as_ref().and_then(|n| {
                self.base
                    .iter()
                    .find(|b| b.direction == draft.direction && &b.name == n)
            });
            let mut keys: Vec<String> = draft.keys.iter().map(|(k, _, _)| k.clone()).collect();
            if let Some(b) = before {
                keys.extend(
                    b.keys
                        .iter()
                        .map(|(k, _, _)| k.clone())
                        .filter(|k| draft.get(k).is_none()),
                );
            }
            let diffs: Vec<serde_json::Value> = keys
                .iter()
                .filter_map(|k| {
                    let old = before.and_then(|b| b.get(k));
                    let new = draft.get(k);
                    (old.map(lit) != new.map(lit))
                        .then(|| serde_json::json!({"Key": k, "Old": json(old), "New": json(new)}))
                })
                .collect();
            let action = if before.is_some() { "Set" } else { "New" };
            out.push(Change {
                direction: format!("{:?}", draft.direction),
                name: draft.name.clone(),
                action,
                keys: diffs,
                notes: draft.notes.clone(),
            });
        }
        out
    }
}

/// Keys in the schema's order (Name first), then any others as found.
fn ordered(draft: &Draft) -> Vec<&(String, Value, Source)> {
    let order = schema::keys(draft.direction);
    let pos = |k: &str| {
        order
            .iter()
            .position(|(x, _)| *x == k)
            .unwrap_or(order.len())
    };
    let mut keys: Vec<&(String, Value, Source)> = draft.keys.iter().collect();
    keys.sort_by_key(|(k, _, _)| pos(k));
    keys
}

/// Sets a table to the draft's keys (others removed), keeping the layout of unchanged
/// values, and adds the draft's notes as comments above it.
fn write_table(table: &mut Table, draft: &Draft) {
    let gone: Vec<String> = table
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| draft.get(k).is_none())
        .collect();
    for k in gone {
        table.remove(&k);
    }
    for (k, v, _) in ordered(draft) {
        let same = table
            .get(k)
            .and_then(item_value)
            .is_some_and(|old| lit(&old) == lit(v));
        if !same {
            let mut v = v.clone();
            v.decor_mut().clear();
            match table.get_mut(k).and_then(Item::as_value_mut) {
                Some(old) => {
                    *v.decor_mut() = old.decor().clone();
                    *old = v;
                }
                None => {
                    table.insert(k, Item::Value(v));
                }
            }
        }
    }
    if !draft.notes.is_empty() {
        let prefix = table
            .decor()
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("\n")
            .to_string();
        let mut prefix = if prefix.is_empty() {
            "\n".to_string()
        } else {
            prefix
        };
        for n in &draft.notes {
            prefix.push_str(&format!("# {n}\n"));
        }
        table.decor_mut().set_prefix(prefix);
    }
}

/// The `[Relay]` section of a config as text.
fn relay_of(text: &str) -> String {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return "[Relay]\n".into();
    };
    let mut d = DocumentMut::new();
    if let Some(r) = doc.get("Relay") {
        d.insert("Relay", r.clone());
    } else {
        d.insert("Relay", Item::Table(Table::new()));
    }
    d.to_string()
}

/// `dropped file:line Param = value: reason` (values of secret-looking names not shown).
fn note(at: &Source, p: &Param, reason: &str) -> String {
    let mut value = if secret(&p.name) {
        "(not shown)".to_string()
    } else {
        show(&p.value)
    };
    if value.chars().count() > 80 {
        value = value.chars().take(77).collect::<String>() + "...";
    }
    format!("{at}: dropped {} = {value}: {reason}", p.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, text: &str) -> Vec<(String, String)> {
        vec![(name.to_string(), text.to_string())]
    }

    #[test]
    fn a_script_becomes_a_config_that_loads() {
        let script = "New-InboundConnector -Name 'From Fabrikam' -SenderDomains fabrikam.com -SenderIPAddresses 192.0.2.0/24 -RestrictDomainsToIPAddresses $true -EFSkipIPs 10.0.0.1 -Confirm:$false\nSet-InboundConnector 'From Fabrikam' -RequireTls $true -TlsSenderCertificateName mail.fabrikam.com\n";
        let out = import(&one("in.ps1", script), None).unwrap();
        let loaded = crate::config::load_str(&out.text, std::path::Path::new("x.toml")).unwrap();
        let c = &loaded.policy.inbound[0];
        assert_eq!(c.name, "From Fabrikam");
        assert!(c.require_tls && c.restrict_domains_to_ip_addresses);
        assert!(
            out.text.contains(
                "# in.ps1:1: dropped EFSkipIPs = '10.0.0.1': Exchange Online Protection filtering"
            ),
            "{}",
            out.text
        );
        assert!(
            out.text
                .contains("ignored (read-only, empty, or PowerShell/DSC controls): Confirm"),
            "{}",
            out.text
        );
        assert_eq!(out.changes[0].action, "New");
    }

    #[test]
    fn loader_errors_point_at_the_input_line() {
        let script = "New-OutboundConnector -Name X `\n  -RecipientDomains contoso.com `\n  -TlsSettings Strongest\n";
        let e = import(&one("in.ps1", script), None).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].at.to_string(), e[0].key.as_str()),
            ("in.ps1:3".to_string(), "TlsSettings")
        );
        let e = import(
            &one(
                "in.ps1",
                "\nNew-InboundConnector -Name X -ConnectorType OnPremises\n",
            ),
            None,
        )
        .unwrap_err();
        assert_eq!(e[0].at.to_string(), "in.ps1:2");
    }

    #[test]
    fn set_and_remove_change_a_base_config_keeping_comments() {
        let base = "[Relay]\nAcceptedDomains = [\"contoso.test\"]\n\n# our partner\n[[InboundConnector]]\nName = \"P\"\nSenderDomains = [\"p.test\"] # theirs\n\n[[OutboundConnector]]\nName = \"Old\"\nRecipientDomains = [\"old.test\"]\n";
        let script = "Set-InboundConnector p -SenderDomains @{Add='q.test'} -RequireTls $true\nRemove-OutboundConnector Old\n";
        let out = import(&one("s.ps1", script), Some(("relay.toml", base))).unwrap();
        assert!(out.text.contains("# our partner"), "{}", out.text);
        assert!(
            out.text
                .contains("SenderDomains = [\"p.test\", \"q.test\"] # theirs"),
            "{}",
            out.text
        );
        assert!(!out.text.contains("Old"), "{}", out.text);
        let set = out.changes.iter().find(|c| c.action == "Set").unwrap();
        assert_eq!(set.keys.len(), 2, "{:?}", set.keys);
        assert!(
            out.changes
                .iter()
                .any(|c| c.action == "Remove" && c.name == "Old")
        );
    }

    #[test]
    fn unknown_parameters_and_missing_connectors_are_errors() {
        let e = import(
            &one("s.ps1", "New-InboundConnector X -SenderDomain a.com"),
            None,
        )
        .unwrap_err();
        assert_eq!(e[0].key, "SenderDomain");
        let e = import(
            &one("s.ps1", "Set-InboundConnector Nobody -RequireTls $true"),
            None,
        )
        .unwrap_err();
        assert!(
            e[0].reason.contains("no InboundConnector named"),
            "{}",
            e[0].reason
        );
    }

    #[test]
    fn get_output_of_exchange_online() {
        let json = r#"[{
  "Enabled": false, "ConnectorType": "OnPremises", "ConnectorSource": "AdminUI", "Comment": "",
  "SenderIPAddresses": ["81.187.237.31"], "SenderDomains": ["smtp:*;1"], "TrustedOrganizations": [],
  "ClientHostNames": [], "AssociatedAcceptedDomains": [], "RequireTls": false,
  "RestrictDomainsToIPAddresses": false, "RestrictDomainsToCertificate": false,
  "CloudServicesMailEnabled": false, "TreatMessagesAsInternal": false, "TlsSenderCertificateName": null,
  "EFTestMode": false, "ScanAndDropRecipients": [], "EFSkipLastIP": false, "EFSkipIPs": [],
  "EFSkipMailGateway": [], "EFUsers": [], "AdminDisplayName": "", "Name": "myorgemail",
  "Identity": "myorgemail", "WhenChangedUTC": "2026-07-23T22:55:49.0000000Z",
  "Guid": "acc2eccd-550f-4efa-9905-46054a5f516a", "IsValid": true
}]"#;
        let out = import(&one("in.json", json), None).unwrap();
        let loaded = crate::config::load_str(&out.text, std::path::Path::new("x.toml")).unwrap();
        let c = &loaded.policy.inbound[0];
        assert!(!c.enabled);
        assert_eq!(c.sender_domains.len(), 1);
        assert!(
            out.text.contains("Guid"),
            "read-only properties are listed: {}",
            out.text
        );
    }
}
