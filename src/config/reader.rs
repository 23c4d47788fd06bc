//! Walking the span-preserving TOML tree: typed getters that report `file:line: key: reason`.
//!
//! The config is walked by hand over `toml_edit` (rather than deserialized with serde) because
//! every message must carry the line of the offending key, every problem should be reported in
//! one run, and Exchange-style values (one string where an array is expected, case-insensitive
//! enums) need lenient handling that serde derive makes awkward.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

use super::ConfigError;

/// Collects errors and warnings and turns byte offsets into line numbers.
pub(crate) struct Ctx {
    file: PathBuf,
    text: String,
    line_starts: Vec<usize>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl Ctx {
    pub fn new(text: &str, file: &Path) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ctx {
            file: file.to_path_buf(),
            text: text.to_string(),
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// 1-based line of a byte span; 0 when unknown.
    pub fn line(&self, span: Option<Range<usize>>) -> usize {
        span.map_or(0, |s| {
            self.line_starts.partition_point(|&start| start <= s.start)
        })
    }

    /// 1-based column (in characters) of a byte span; 0 when unknown.
    pub fn column(&self, span: Option<Range<usize>>) -> usize {
        let line = self.line(span.clone());
        match (span, line) {
            (Some(s), 1..) => {
                let start = self.line_starts[line - 1];
                let end = s.start.min(self.text.len()).max(start);
                self.text[start..end].chars().count() + 1
            }
            _ => 0,
        }
    }

    fn make(&self, line: usize, key: &str, reason: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            reason,
        }
    }

    pub fn error(&mut self, line: usize, key: &str, reason: impl Into<String>) {
        let e = self.make(line, key, reason.into());
        self.errors.push(e);
    }

    pub fn warn(&mut self, line: usize, key: &str, reason: impl Into<String>) {
        let w = self.make(line, key, reason.into());
        self.warnings.push(w);
    }
}

/// Where each key of one table was written, for messages about rules that involve several keys.
#[derive(Debug, Default, Clone)]
pub(crate) struct Lines {
    pub header: usize,
    keys: HashMap<&'static str, usize>,
    /// Every key a getter asked for, in the canonical spelling: the keys the table may have.
    pub known: Vec<&'static str>,
}

impl Lines {
    /// The line of `key`, or of the table header when the key was not written.
    pub fn of(&self, key: &str) -> usize {
        self.keys.get(key).copied().unwrap_or(self.header)
    }

    /// Was `key` written in the file (as opposed to defaulted)?
    pub fn has(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }
}

/// Reads the keys of one table. Every getter marks its key as known; `finish` reports the
/// rest as unknown keys.
pub(crate) struct Reader<'a> {
    table: &'a dyn TableLike,
    /// Prefix for keys in messages: "" for a section, "AuthenticationCredential." for a
    /// nested table.
    prefix: String,
    /// The spelling each canonical key was found under (`useMxRecord` for `UseMXRecord`).
    spelled: HashMap<&'static str, &'a str>,
    pub lines: Lines,
}

impl<'a> Reader<'a> {
    pub fn new(table: &'a dyn TableLike, header: usize, prefix: &str) -> Self {
        Reader {
            table,
            prefix: prefix.to_string(),
            spelled: HashMap::new(),
            lines: Lines {
                header,
                ..Lines::default()
            },
        }
    }

    pub fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The raw item of `key`, if present, with the line of the key. The key may be written
    /// in any case, as PowerShell parameter names may (`-UseMxRecord`); a key written twice
    /// in different cases is reported by [`Self::finish`].
    pub fn item(&mut self, ctx: &Ctx, key: &'static str) -> Option<(&'a Item, usize)> {
        self.lines.known.push(key);
        let (k, item) = find_key(self.table, key)?;
        let line = match ctx.line(k.span()) {
            0 => self.lines.header,
            n => n,
        };
        self.lines.keys.insert(key, line);
        self.spelled.insert(key, k.get());
        Some((item, line))
    }

    pub fn bool(&mut self, ctx: &mut Ctx, key: &'static str, default: bool) -> bool {
        let Some((item, line)) = self.item(ctx, key) else {
            return default;
        };
        item.as_bool().unwrap_or_else(|| {
            ctx.error(
                line,
                &self.name(key),
                format!("expected true or false, found {}", describe(item)),
            );
            default
        })
    }

    pub fn string(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<(String, usize)> {
        self.string_of(ctx, key, "a string")
    }

    /// A string; a value of another type is reported as "expected {what}".
    pub fn string_of(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        what: &str,
    ) -> Option<(String, usize)> {
        let (item, line) = self.item(ctx, key)?;
        match item.as_str() {
            Some(s) => Some((s.to_string(), line)),
            None => {
                ctx.error(
                    line,
                    &self.name(key),
                    format!("expected {what}, found {}", describe(item)),
                );
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn int(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        let Some((item, line)) = self.item(ctx, key) else {
            return default;
        };
        let Some(n) = item.as_integer() else {
            ctx.error(
                line,
                &self.name(key),
                format!("expected a whole number, found {}", describe(item)),
            );
            return default;
        };
        if (min..=max).contains(&n) {
            return n;
        }
        let reason = if max == i64::MAX {
            format!("{n} is too small; it must be at least {min}")
        } else {
            format!("{n} is out of range; it must be from {min} to {max}")
        };
        ctx.error(line, &self.name(key), reason);
        default
    }

    /// A string value run through `parse`; `None` when absent or invalid (error recorded).
    pub fn parsed<T>(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (s, line) = self.string(ctx, key)?;
        parse(&s)
            .map_err(|e| ctx.error(line, &self.name(key), e))
            .ok()
    }

    /// The strings of an array (each with its own line). A single string is accepted as a
    /// one-element list, as Exchange's MultiValuedProperty parameters accept one value.
    pub fn strings(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<Vec<(String, usize)>> {
        let (item, line) = self.item(ctx, key)?;
        if let Some(s) = item.as_str() {
            return Some(vec![(s.to_string(), line)]);
        }
        let Some(array) = item.as_array() else {
            ctx.error(
                line,
                &self.name(key),
                format!("expected an array of strings, found {}", describe(item)),
            );
            return None;
        };
        let mut out = Vec::new();
        for value in array.iter() {
            let vline = match ctx.line(value.span()) {
                0 => line,
                n => n,
            };
            match value.as_str() {
                Some(s) => out.push((s.to_string(), vline)),
                None => ctx.error(
                    vline,
                    &self.name(key),
                    format!(
                        "expected an array of strings, found an element that is {}",
                        describe_value(value)
                    ),
                ),
            }
        }
        Some(out)
    }

    /// An array of IP addresses, CIDR ranges and Exchange address ranges
    /// ([`super::values::ip_ranges`]), each network with the line of its entry; invalid entries
    /// are reported and dropped. A CIDR with host bits set is normalized with a warning, since
    /// the administrator may have meant a single host.
    pub fn ip_nets(&mut self, ctx: &mut Ctx, key: &'static str) -> Vec<(ipnet::IpNet, usize)> {
        let mut nets = Vec::new();
        for (s, line) in self.strings(ctx, key).unwrap_or_default() {
            match super::values::ip_ranges(&s) {
                Ok(parsed) => {
                    if let Some(given) = parsed.truncated_from {
                        let reason = format!(
                            "{given} has host bits set; it is read as {}",
                            parsed.nets[0]
                        );
                        ctx.warn(line, &self.name(key), reason);
                    }
                    nets.extend(parsed.nets.into_iter().map(|n| (n, line)));
                }
                Err(e) => ctx.error(line, &self.name(key), e),
            }
        }
        nets
    }

    /// Each string of an array run through `parse`; invalid entries are reported and dropped.
    pub fn parsed_list<T>(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let strings = self.strings(ctx, key)?;
        let name = self.name(key);
        Some(
            strings
                .into_iter()
                .filter_map(|(s, line)| parse(&s).map_err(|e| ctx.error(line, &name, e)).ok())
                .collect(),
        )
    }

    /// A case-insensitive enum (Exchange matches enum values without regard to case).
    pub fn choice<T: Copy>(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        values: &[(&str, T)],
    ) -> Option<T> {
        let (s, line) = self.string(ctx, key)?;
        match_choice(&s, values)
            .map_err(|e| ctx.error(line, &self.name(key), e))
            .ok()
    }

    /// A nested table (inline `{ ... }` or `[Parent.Key]`), with the line of its key.
    pub fn table(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
    ) -> Option<(&'a dyn TableLike, usize)> {
        let (item, line) = self.item(ctx, key)?;
        match item.as_table_like() {
            Some(t) => Some((t, line)),
            None => {
                ctx.error(
                    line,
                    &self.name(key),
                    format!(
                        "expected a table such as {{ Key = \"value\" }}, found {}",
                        describe(item)
                    ),
                );
                None
            }
        }
    }

    /// Reports every key no getter asked for, suggesting the intended spelling when close,
    /// and every key written a second time in another case.
    pub fn finish(self, ctx: &mut Ctx, section: &str) {
        for (key, _) in self.table.iter() {
            let line = match ctx.line(self.table.key(key).and_then(|k| k.span())) {
                0 => self.lines.header,
                n => n,
            };
            let canonical = self
                .lines
                .known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(key));
            match canonical {
                Some(k) => self.twice(ctx, k, key, line),
                None => self.unknown(ctx, section, key, line),
            }
        }
    }

    /// `written` is a spelling of known key `canonical`: an error unless it is the one the
    /// getter took (another spelling of the same key was used).
    fn twice(&self, ctx: &mut Ctx, canonical: &'static str, written: &str, line: usize) {
        let Some(&taken) = self.spelled.get(canonical) else {
            return;
        };
        if taken == written {
            return;
        }
        ctx.error(
            line,
            &self.name(canonical),
            format!(
                "is written twice, as {taken:?} on line {} and as {written:?} here (key names are not case-sensitive); keep one",
                self.lines.of(canonical)
            ),
        );
    }

    fn unknown(&self, ctx: &mut Ctx, section: &str, key: &str, line: usize) {
        let known = &self.lines.known;
        let hint = match suggest(key, known) {
            Some(k) => format!("; did you mean {k:?}?"),
            // Small nested tables: listing the valid keys is the quickest help.
            None if known.len() <= 4 => {
                format!("; the valid keys are {}", known.join(" and "))
            }
            None => String::new(),
        };
        ctx.error(
            line,
            &self.name(key),
            format!("unknown key in {section}{hint}"),
        );
    }
}

/// The entry of `key` in `table`, whatever the case it is written in (the exact spelling
/// first; otherwise the first spelling in file order).
pub(crate) fn find_key<'a>(
    table: &'a dyn TableLike,
    key: &str,
) -> Option<(&'a toml_edit::Key, &'a Item)> {
    if let Some(found) = table.get_key_value(key) {
        return Some(found);
    }
    let (written, _) = table.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))?;
    table.get_key_value(written)
}

/// Matches `s` against `values` ignoring case; the error lists what is accepted.
pub(crate) fn match_choice<T: Copy>(s: &str, values: &[(&str, T)]) -> Result<T, String> {
    values
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            format!(
                "{s:?} is not a valid value; expected {}",
                one_of(values.iter().map(|(n, _)| *n))
            )
        })
}

/// `"A", "B" or "C"`.
pub(crate) fn one_of<'s>(names: impl Iterator<Item = &'s str>) -> String {
    let quoted: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// The known key that `key` was probably meant to be: same letters in another case, or at
/// most two edits away.
pub(crate) fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Type expectation for time span keys (a common mistake is a bare number of seconds).
pub(crate) const TIMESPAN: &str = "a time span string such as \"00:10:00\"";

/// "a string (\"yes\")", "an integer (5)", ... for type errors.
pub(crate) fn describe(item: &Item) -> String {
    match item {
        Item::Value(v) => describe_value(v),
        Item::Table(_) => "a table".to_string(),
        Item::ArrayOfTables(_) => "an array of tables".to_string(),
        Item::None => "nothing".to_string(),
    }
}

pub(crate) fn describe_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("a string ({:?})", s.value()),
        Value::Integer(i) => format!("an integer ({})", i.value()),
        Value::Float(f) => format!("a decimal number ({})", f.value()),
        Value::Boolean(b) => format!("a boolean ({})", b.value()),
        Value::Datetime(_) => "a date-time".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::InlineTable(_) => "a table".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known = ["RequireTls", "SenderDomains", "Name"];
        assert_eq!(suggest("RequireTLs", &known), Some("RequireTls"));
        assert_eq!(suggest("SenderDomain", &known), Some("SenderDomains"));
        assert_eq!(suggest("Colour", &known), None);
    }

    #[test]
    fn choices() {
        let values = [("Partner", 1), ("OnPremises", 2)];
        assert_eq!(match_choice("onpremises", &values), Ok(2));
        assert_eq!(
            match_choice("Cloud", &values).unwrap_err(),
            "\"Cloud\" is not a valid value; expected \"Partner\" or \"OnPremises\""
        );
    }

    #[test]
    fn lines() {
        let ctx = Ctx::new("a\nbb\n\nc", Path::new("x"));
        assert_eq!(ctx.line(Some(0..1)), 1);
        assert_eq!(ctx.line(Some(2..3)), 2);
        assert_eq!(ctx.line(Some(5..5)), 3);
        assert_eq!(ctx.line(Some(6..7)), 4);
        assert_eq!(ctx.line(None), 0);
    }
}
