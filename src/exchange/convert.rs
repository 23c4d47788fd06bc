//! A parameter value ([`Val`]) as the config value of its key ([`Kind`]). `Ok(None)` means
//! "not set" (`$null`, an empty list or text); checking the value itself (is it a domain,
//! an IP range, …) is left to the config loader, whose errors the engine traces back here.

use toml_edit::{Array, InlineTable, Value};

use super::ps::{self, Val};
use super::schema::{Kind, enum_number};
use super::script::show;

/// Converts `v` for `key`. `current` is the key's value before this change (for
/// `@{Add=…; Remove=…}` on lists).
pub fn convert(
    key: &str,
    kind: Kind,
    v: &Val,
    current: Option<&Value>,
) -> Result<Option<Value>, String> {
    if let Val::Expr(e) = v
        && kind != Kind::Credential
    {
        return Err(format!("cannot evaluate {e}; write the value itself"));
    }
    if let Val::Var(n) = v {
        return Err(format!(
            "${n} is not assigned a plain value earlier in the input, so its value is unknown"
        ));
    }
    if *v == Val::Null {
        return Ok(None);
    }
    match kind {
        Kind::Bool => boolean(v).map(|b| Some(Value::from(b))),
        Kind::Text => text(v).map(|s| s.filter(|s| !s.is_empty()).map(Value::from)),
        Kind::List => list(key, v, current),
        Kind::Enum(names) => enumeration(key, names, v).map(Some),
        Kind::Flags(names) => flags(key, names, v),
        Kind::Int => match v {
            Val::Int(n) => Ok(Some(Value::from(*n))),
            Val::Str(s) => s
                .trim()
                .parse::<i64>()
                .map(|n| Some(Value::from(n)))
                .map_err(|_| format!("expects a whole number, found {}", show(v))),
            _ => Err(format!("expects a whole number, found {}", show(v))),
        },
        Kind::TimeSpan => text(v).map(|s| s.map(Value::from)),
        Kind::Size => size(v).map(Some),
        Kind::Credential => credential(v).map(Some),
    }
}

fn boolean(v: &Val) -> Result<bool, String> {
    match v {
        Val::Bool(b) => Ok(*b),
        Val::Str(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("$true") => {
            Ok(true)
        }
        Val::Str(s) if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("$false") => {
            Ok(false)
        }
        _ => Err(format!("expects $true or $false, found {}", show(v))),
    }
}

fn text(v: &Val) -> Result<Option<String>, String> {
    match v {
        Val::Str(s) => Ok(Some(s.clone())),
        Val::Int(n) => Ok(Some(n.to_string())),
        Val::List(items) if items.len() == 1 => text(&items[0]),
        Val::List(items) if items.is_empty() => Ok(None),
        _ => Err(format!("expects one value, found {}", show(v))),
    }
}

/// Domain lists of Exchange Online are serialized as address spaces (`smtp:*;1`).
fn domain_entry(key: &str, s: &str) -> String {
    let domain_key = matches!(
        key,
        "SenderDomains" | "RecipientDomains" | "AssociatedAcceptedDomains"
    );
    if domain_key
        && let Some(rest) = s
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("smtp:"))
            .map(|_| &s[5..])
    {
        return rest
            .rsplit_once(';')
            .filter(|(_, c)| c.parse::<u32>().is_ok())
            .map_or(rest, |(d, _)| d)
            .to_string();
    }
    s.to_string()
}

fn items(key: &str, v: &Val) -> Result<Vec<String>, String> {
    match v {
        Val::Str(s) => Ok(vec![domain_entry(key, s)]),
        Val::Int(n) => Ok(vec![n.to_string()]),
        Val::List(list) => {
            let mut out = Vec::new();
            for i in list {
                match i {
                    Val::Null => {}
                    Val::Str(_) | Val::Int(_) | Val::List(_) => out.extend(items(key, i)?),
                    _ => {
                        return Err(format!(
                            "expects a list of values, found the element {}",
                            show(i)
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(format!("expects a list of values, found {}", show(v))),
    }
}

fn strings(a: &Array) -> Vec<String> {
    a.iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// A list; `@{Add=…; Remove=…}` changes the current list as Set-*Connector does.
fn list(key: &str, v: &Val, current: Option<&Value>) -> Result<Option<Value>, String> {
    let out: Vec<String> = match v {
        Val::Hash(pairs) => {
            let mut now = match current {
                Some(Value::Array(a)) => strings(a),
                Some(Value::String(s)) => vec![s.value().clone()],
                _ => Vec::new(),
            };
            for (op, val) in pairs {
                let vals = items(key, val)?;
                match op.to_ascii_lowercase().as_str() {
                    "add" => {
                        for x in vals {
                            if !now.iter().any(|n| n.eq_ignore_ascii_case(&x)) {
                                now.push(x);
                            }
                        }
                    }
                    "remove" => now.retain(|n| !vals.iter().any(|x| x.eq_ignore_ascii_case(n))),
                    _ => {
                        return Err(format!(
                            "@{{…}} on a list takes Add and Remove, found {op:?}"
                        ));
                    }
                }
            }
            now
        }
        _ => items(key, v)?,
    };
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some(Value::Array(out.iter().map(String::as_str).collect())))
}

fn canonical(names: &[&str], s: &str) -> Option<String> {
    names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(s.trim()))
        .map(|n| n.to_string())
}

fn enumeration(key: &str, names: &[&str], v: &Val) -> Result<Value, String> {
    match v {
        // An unknown name is passed on: the loader says which names are valid.
        Val::Str(s) => Ok(Value::from(
            canonical(names, s).unwrap_or_else(|| s.clone()),
        )),
        Val::Int(n) => match enum_number(key, *n).as_deref() {
            Some([one]) => Ok(Value::from(*one)),
            _ => Err(number_refused(key, *n)),
        },
        _ => Err(format!(
            "expects one of {}, found {}",
            names.join(", "),
            show(v)
        )),
    }
}

fn number_refused(key: &str, n: i64) -> String {
    format!(
        "ConvertTo-Json wrote the enum as the number {n}, whose name the import does not guess; export with PowerShell 7's `ConvertTo-Json -EnumsAsStrings` (or `Select-Object @{{n='{key}';e={{$_.{key}.ToString()}}}}`)"
    )
}

/// `[Flags]` enums: a list, `"A, B"`, or a number.
fn flags(key: &str, names: &[&str], v: &Val) -> Result<Option<Value>, String> {
    let parts: Vec<String> = match v {
        Val::Int(n) => enum_number(key, *n)
            .ok_or_else(|| number_refused(key, *n))?
            .into_iter()
            .map(String::from)
            .collect(),
        _ => items(key, v)?
            .iter()
            .flat_map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if parts.is_empty() {
        return Ok(None);
    }
    let parts: Vec<String> = parts
        .iter()
        .map(|p| canonical(names, p).unwrap_or_else(|| p.clone()))
        .collect();
    Ok(Some(Value::Array(
        parts.iter().map(String::as_str).collect(),
    )))
}

/// Sizes: `25MB`, bytes, `Unlimited`, or Exchange's display form `35 MB (36,700,160 bytes)`.
fn size(v: &Val) -> Result<Value, String> {
    match v {
        Val::Int(n) => Ok(Value::from(*n)),
        Val::Str(s) => {
            if let Some(open) = s.rfind('(')
                && let Some(bytes) = s[open + 1..].strip_suffix("bytes)")
            {
                let digits: String = bytes.chars().filter(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse::<i64>() {
                    return Ok(Value::from(n));
                }
            }
            Ok(Value::from(s.replace(' ', "")))
        }
        _ => Err(format!("expects a size such as 25MB, found {}", show(v))),
    }
}

/// `(New-Object System.Management.Automation.PSCredential('user', (Get-Content 'file' …
/// | ConvertTo-SecureString …)))`: the user and the file the password is read from, as
/// `export` writes it. Other credential expressions hold a password the import cannot see.
fn credential(v: &Val) -> Result<Value, String> {
    let refuse = || {
        "AuthenticationCredential must be written as (New-Object System.Management.Automation.PSCredential('user', (Get-Content 'password-file' -TotalCount 1 | ConvertTo-SecureString -AsPlainText -Force))) so the relay can read the password from that file; a credential object or Get-Credential prompt cannot be imported".to_string()
    };
    let Val::Expr(e) = v else {
        return Err(refuse());
    };
    let tokens = ps::tokenize(e).map_err(|_| refuse())?;
    let words: Vec<&ps::Tok> = tokens.iter().map(|t| &t.tok).collect();
    let is_word =
        |t: &ps::Tok, w: &str| matches!(t, ps::Tok::Word(x) if x.to_ascii_lowercase().ends_with(w));
    let cred = words
        .iter()
        .position(|t| is_word(t, "pscredential"))
        .ok_or_else(refuse)?;
    let user = words[cred..]
        .iter()
        .find_map(|t| match t {
            ps::Tok::Str(s) => Some(s.clone()),
            _ => None,
        })
        .ok_or_else(refuse)?;
    let content = words
        .iter()
        .position(|t| is_word(t, "get-content"))
        .ok_or_else(refuse)?;
    let file = words[content..]
        .iter()
        .find_map(|t| match t {
            ps::Tok::Str(s) => Some(s.clone()),
            _ => None,
        })
        .ok_or_else(refuse)?;
    let mut t = InlineTable::new();
    t.insert("UserName", Value::from(user));
    t.insert("PasswordFile", Value::from(file));
    Ok(Value::InlineTable(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::schema;

    fn s(x: &str) -> Val {
        Val::Str(x.into())
    }

    fn conv(key: &str, v: Val) -> Result<Option<String>, String> {
        let kind = [schema::INBOUND, schema::OUTBOUND, schema::SEND]
            .iter()
            .flat_map(|k| k.iter())
            .find(|(k, _)| *k == key)
            .unwrap()
            .1;
        convert(key, kind, &v, None).map(|o| o.map(|v| v.to_string().trim().to_string()))
    }

    #[test]
    fn kinds() {
        assert_eq!(conv("RequireTls", s("True")), Ok(Some("true".into())));
        assert!(conv("RequireTls", s("yes")).is_err());
        assert_eq!(
            conv("SenderDomains", s("smtp:*;1")),
            Ok(Some("[\"*\"]".into()))
        );
        assert_eq!(conv("SenderDomains", Val::List(vec![])), Ok(None));
        assert_eq!(
            conv("TlsSettings", s("domainvalidation")),
            Ok(Some("\"DomainValidation\"".into()))
        );
        assert!(
            conv("ConnectorType", Val::Int(2))
                .unwrap_err()
                .contains("EnumsAsStrings")
        );
        assert_eq!(
            conv("ErrorPolicies", Val::Int(3)),
            Ok(Some(
                "[\"DowngradeDnsFailures\", \"DowngradeCustomFailures\"]".into()
            ))
        );
        assert_eq!(
            conv(
                "ErrorPolicies",
                s("DowngradeDnsFailures, UpgradeCustomFailures")
            ),
            Ok(Some(
                "[\"DowngradeDnsFailures\", \"UpgradeCustomFailures\"]".into()
            ))
        );
        assert_eq!(
            conv("MaxMessageSize", s("35 MB (36,700,160 bytes)")),
            Ok(Some("36700160".into()))
        );
        assert_eq!(conv("Port", s("2525")), Ok(Some("2525".into())));
        assert_eq!(conv("Comment", s("")), Ok(None));
    }

    #[test]
    fn add_and_remove_change_the_current_list() {
        let current = Value::Array(["a.com", "b.com"].into_iter().collect());
        let v = Val::Hash(vec![
            ("Add".into(), Val::List(vec![s("c.com"), s("A.com")])),
            ("Remove".into(), s("b.com")),
        ]);
        let out = convert("SenderDomains", Kind::List, &v, Some(&current))
            .unwrap()
            .unwrap();
        assert_eq!(out.to_string().trim(), "[\"a.com\", \"c.com\"]");
    }

    #[test]
    fn credentials_only_from_a_password_file() {
        let v = Val::Expr("New-Object System.Management.Automation.PSCredential('relay', (Get-Content '/etc/relay/pw' -TotalCount 1 | ConvertTo-SecureString -AsPlainText -Force))".into());
        let out = convert("AuthenticationCredential", Kind::Credential, &v, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            out.to_string().trim(),
            "{ UserName = \"relay\", PasswordFile = \"/etc/relay/pw\" }"
        );
        assert!(
            convert(
                "AuthenticationCredential",
                Kind::Credential,
                &Val::Expr("Get-Credential".into()),
                None
            )
            .is_err()
        );
    }
}
