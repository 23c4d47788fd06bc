//! PowerShell scripts of New-/Set-/Remove-InboundConnector, -OutboundConnector and
//! -SendConnector lines, into [`Op`]s. Variables assigned a plain value earlier in the
//! script (`$ips = "192.0.2.1","192.0.2.2"`) are substituted; `Get-X 'name' | Set-X …` is
//! read as `Set-X 'name' …`. Other commands are listed as ignored, never dropped silently.

use std::collections::HashMap;

use super::ps::{self, Arg, Command, Statement, Val};
use super::{ImportError, Op, OpKind, Param, direction_of_noun};

pub fn read(file: &str, text: &str) -> Result<(Vec<Op>, Vec<String>), Vec<ImportError>> {
    let statements =
        ps::parse(text).map_err(|e| vec![ImportError::new(file, e.line, "", e.reason)])?;
    let mut vars: HashMap<String, Val> = HashMap::new();
    let mut ops = Vec::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for st in statements {
        match st {
            Statement::Assign { name, value, line } => {
                match substitute(&value, &vars) {
                    Ok(v) => {
                        vars.insert(name.to_ascii_lowercase(), v);
                    }
                    // Unusable unless a connector parameter uses it; then that line errs.
                    Err(_) => {
                        let _ = line;
                        vars.remove(&name.to_ascii_lowercase());
                    }
                }
            }
            Statement::Pipeline(commands) => match pipeline(file, commands, &vars) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => {}
                Err(Skip::Note(n)) => notes.push(n),
                Err(Skip::Error(e)) => errors.push(e),
            },
        }
    }
    if errors.is_empty() {
        Ok((ops, notes))
    } else {
        Err(errors)
    }
}

enum Skip {
    Note(String),
    Error(ImportError),
}

/// Replaces `$name` by its assigned value (inside lists and hashtables too).
pub fn substitute(v: &Val, vars: &HashMap<String, Val>) -> Result<Val, String> {
    Ok(match v {
        Val::Var(name) => vars
            .get(&name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| format!("${name} is not assigned a plain value earlier in the input, so its value is unknown"))?,
        Val::List(items) => Val::List(items.iter().map(|i| substitute(i, vars)).collect::<Result<_, _>>()?),
        Val::Hash(pairs) => Val::Hash(
            pairs
                .iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// `Verb-Noun` of a connector cmdlet.
fn split(name: &str) -> Option<(String, super::Direction)> {
    let (verb, noun) = name.split_once('-')?;
    Some((verb.to_ascii_lowercase(), direction_of_noun(noun)?))
}

fn pipeline(
    file: &str,
    mut commands: Vec<Command>,
    vars: &HashMap<String, Val>,
) -> Result<Option<Op>, Skip> {
    let first = &commands[0];
    // `Get-InboundConnector "X" | Set-InboundConnector -RequireTls $true`
    if commands.len() == 2
        && let Some((verb, d)) = split(&first.name)
        && verb == "get"
        && split(&commands[1].name).is_some_and(|(v, d2)| d2 == d && (v == "set" || v == "remove"))
    {
        let identity = identity_arg(&first.args).ok_or_else(|| {
            Skip::Error(ImportError::new(
                file,
                first.line,
                "Identity",
                format!(
                    "`{} | {}` without a connector name would change every connector; name one",
                    first.name, commands[1].name
                ),
            ))
        })?;
        let mut cmd = commands.remove(1);
        cmd.args.insert(
            0,
            Arg {
                name: Some("Identity".into()),
                value: identity,
                line: cmd.line,
            },
        );
        return command(file, cmd, vars);
    }
    if commands.len() > 1
        && commands
            .iter()
            .any(|c| split(&c.name).is_some_and(|(v, _)| v != "get"))
    {
        return Err(Skip::Error(ImportError::new(
            file,
            first.line,
            "",
            "a pipeline into a connector cmdlet is only understood as `Get-XConnector 'name' | Set-XConnector …`",
        )));
    }
    command(file, commands.remove(0), vars)
}

fn identity_arg(args: &[Arg]) -> Option<Val> {
    args.iter()
        .find(|a| {
            a.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case("Identity"))
        })
        .or_else(|| args.iter().find(|a| a.name.is_none()))
        .map(|a| a.value.clone())
}

fn command(file: &str, cmd: Command, vars: &HashMap<String, Val>) -> Result<Option<Op>, Skip> {
    let Some((verb, direction)) = split(&cmd.name) else {
        return Err(Skip::Note(format!(
            "{file}:{}: `{}` ignored: not a connector cmdlet",
            cmd.line, cmd.name
        )));
    };
    let kind = match verb.as_str() {
        "new" => OpKind::New,
        "set" => OpKind::Set,
        "remove" => OpKind::Remove,
        "get" => {
            return Err(Skip::Note(format!(
                "{file}:{}: `{}` ignored: it changes nothing",
                cmd.line, cmd.name
            )));
        }
        _ => {
            return Err(Skip::Error(ImportError::new(
                file,
                cmd.line,
                "",
                format!(
                    "`{}` is not a connector change the import understands (New-, Set-, Remove-)",
                    cmd.name
                ),
            )));
        }
    };
    let id_param = if kind == OpKind::New {
        "Name"
    } else {
        "Identity"
    };
    let mut identity = None;
    let mut params = Vec::new();
    let mut positional = 0;
    for arg in cmd.args {
        let name = match arg.name {
            Some(n) => n,
            None => {
                positional += 1;
                if positional > 1 {
                    return Err(Skip::Error(ImportError::new(
                        file,
                        arg.line,
                        "",
                        format!(
                            "unexpected value {} after the connector name; every other value needs its -Parameter",
                            show(&arg.value)
                        ),
                    )));
                }
                id_param.to_string()
            }
        };
        let value = substitute(&arg.value, vars)
            .map_err(|e| Skip::Error(ImportError::new(file, arg.line, &name, e)))?;
        if name.eq_ignore_ascii_case(id_param) && identity.is_none() {
            identity = Some((value, arg.line));
            if kind == OpKind::New {
                // New-'s Name is also the connector's Name key.
                params.push(Param {
                    name: "Name".into(),
                    value: identity.clone().unwrap().0,
                    line: arg.line,
                });
            }
            continue;
        }
        params.push(Param {
            name,
            value,
            line: arg.line,
        });
    }
    let (identity, line) = identity.ok_or_else(|| {
        Skip::Error(ImportError::new(
            file,
            cmd.line,
            id_param,
            format!("{} needs the connector's -{id_param}", cmd.name),
        ))
    })?;
    let identity = match identity {
        Val::Str(s) => s,
        v => {
            return Err(Skip::Error(ImportError::new(
                file,
                line,
                id_param,
                format!("must be a connector name, found {}", show(&v)),
            )));
        }
    };
    Ok(Some(Op {
        kind,
        direction,
        identity,
        params,
        file: file.to_string(),
        line: cmd.line,
        what: cmd.name,
    }))
}

/// A value as a reader would write it, for messages (never used for secrets).
pub fn show(v: &Val) -> String {
    match v {
        Val::Str(s) => format!("'{}'", s.replace('\'', "''")),
        Val::Int(n) => n.to_string(),
        Val::Bool(b) => format!("${b}"),
        Val::Null => "$null".into(),
        Val::List(items) => format!(
            "@({})",
            items.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Val::Hash(pairs) => format!(
            "@{{{}}}",
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", show(v)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Val::Var(n) => format!("${n}"),
        Val::Expr(e) => format!("({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::edit::Direction;

    #[test]
    fn ops_from_a_script() {
        let text = "Connect-ExchangeOnline -UserPrincipalName admin@contoso.com\n$partner = 'fabrikam.com', '*.fabrikam.com'\nNew-InboundConnector \"From Fabrikam\" -SenderDomains $partner -requiretls $true\nGet-InboundConnector 'From Fabrikam' | Set-InboundConnector -Enabled:$false\nRemove-OutboundConnector -Identity Old -Confirm:$false\n";
        let (ops, notes) = read("s.ps1", text).unwrap();
        assert_eq!(
            notes,
            ["s.ps1:1: `Connect-ExchangeOnline` ignored: not a connector cmdlet"]
        );
        assert_eq!(ops.len(), 3);
        assert_eq!(
            (
                ops[0].kind,
                ops[0].direction,
                ops[0].identity.as_str(),
                ops[0].line
            ),
            (OpKind::New, Direction::Inbound, "From Fabrikam", 3)
        );
        assert_eq!(
            ops[0].params[1].value,
            Val::List(vec![
                Val::Str("fabrikam.com".into()),
                Val::Str("*.fabrikam.com".into())
            ])
        );
        assert_eq!(
            (ops[1].kind, ops[1].identity.as_str()),
            (OpKind::Set, "From Fabrikam")
        );
        assert_eq!(ops[1].params.len(), 1);
        assert_eq!(
            (ops[2].kind, ops[2].direction),
            (OpKind::Remove, Direction::Outbound)
        );
    }

    #[test]
    fn unknown_variables_and_verbs_are_errors_with_lines() {
        let e = read("s.ps1", "\nNew-InboundConnector X -SenderDomains $nowhere").unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "s.ps1:2: SenderDomains: $nowhere is not assigned a plain value earlier in the input, so its value is unknown"
        );
        let e = read("s.ps1", "Enable-InboundConnector X").unwrap_err();
        assert_eq!(e[0].at.line, 1);
    }
}
