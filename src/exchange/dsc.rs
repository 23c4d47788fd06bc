//! Microsoft365DSC configurations: `EXOInboundConnector` and `EXOOutboundConnector`
//! resource blocks (`Name 'instance' { Identity = "…"; Key = value … }`), into [`Op`]s.
//! `Ensure = "Absent"` removes the connector; otherwise the block's properties are set and
//! the connector's other keys are kept, as the DSC resource does. Everything outside the
//! resource blocks (Configuration, param, Node, Import-DscResource) is skipped.

use std::collections::HashMap;

use super::ps::{self, Parser, Tok, Val};
use super::script::substitute;
use super::{Direction, ImportError, Op, OpKind, Param};

fn resource(word: &str) -> Option<Direction> {
    match word.to_ascii_lowercase().as_str() {
        "exoinboundconnector" => Some(Direction::Inbound),
        "exooutboundconnector" => Some(Direction::Outbound),
        _ => None,
    }
}

pub fn read(file: &str, text: &str) -> Result<(Vec<Op>, Vec<String>), Vec<ImportError>> {
    let err = |line, reason: String| vec![ImportError::new(file, line, "", reason)];
    let tokens = ps::tokenize(text).map_err(|e| err(e.line, e.reason))?;
    let mut p = Parser {
        text,
        toks: &tokens,
        i: 0,
    };
    let mut ops = Vec::new();
    let mut errors = Vec::new();
    let vars: HashMap<String, Val> = HashMap::new();
    while let Some(tok) = p.tok().cloned() {
        let direction = match &tok {
            Tok::Word(w) => resource(w),
            _ => None,
        };
        let Some(direction) = direction else {
            p.i += 1;
            continue;
        };
        let line = p.line();
        let what = match tok {
            Tok::Word(w) => w,
            _ => unreachable!(),
        };
        p.i += 1;
        // The instance name, then `{`.
        if matches!(p.tok(), Some(Tok::Str(_) | Tok::Word(_) | Tok::Expand(_))) {
            p.i += 1;
        }
        while matches!(p.tok(), Some(Tok::End)) {
            p.i += 1;
        }
        if !matches!(p.tok(), Some(Tok::LBrace)) {
            return Err(err(
                p.line(),
                format!("expected `{{` to open the {what} block"),
            ));
        }
        p.i += 1;
        match block(file, &mut p, &vars) {
            Ok(params) => match op(file, direction, what, line, params) {
                Ok(o) => ops.push(o),
                Err(e) => errors.push(e),
            },
            Err(e) => return Err(err(e.line, e.reason)),
        }
    }
    if errors.is_empty() {
        Ok((ops, Vec::new()))
    } else {
        Err(errors)
    }
}

/// `Key = value` pairs up to the closing `}`.
fn block(
    file: &str,
    p: &mut Parser<'_>,
    vars: &HashMap<String, Val>,
) -> Result<Vec<Param>, ps::SyntaxError> {
    let _ = file;
    let mut params = Vec::new();
    loop {
        let line = p.line();
        match p.tok().cloned() {
            None => {
                return Err(ps::SyntaxError {
                    line,
                    reason: "a resource block is never closed with }".into(),
                });
            }
            Some(Tok::RBrace) => {
                p.i += 1;
                return Ok(params);
            }
            Some(Tok::End) => p.i += 1,
            Some(Tok::Word(key)) => {
                p.i += 1;
                if !matches!(p.tok(), Some(Tok::Eq)) {
                    return Err(ps::SyntaxError {
                        line,
                        reason: format!("expected `=` after {key}"),
                    });
                }
                p.i += 1;
                let raw = p.value_list()?;
                // Variables are kept unresolved unless known: `$Credscredential` is dropped anyway.
                let value = substitute(&raw, vars).unwrap_or(raw);
                params.push(Param {
                    name: key,
                    value,
                    line,
                });
            }
            Some(t) => {
                return Err(ps::SyntaxError {
                    line,
                    reason: format!("expected `Key = value`, found {}", ps::describe(&t)),
                });
            }
        }
    }
}

fn op(
    file: &str,
    direction: Direction,
    what: String,
    line: usize,
    mut params: Vec<Param>,
) -> Result<Op, ImportError> {
    let take = |params: &mut Vec<Param>, key: &str| {
        params
            .iter()
            .position(|p| p.name.eq_ignore_ascii_case(key))
            .map(|i| params.remove(i))
    };
    let identity = take(&mut params, "Identity").ok_or_else(|| {
        ImportError::new(
            file,
            line,
            "Identity",
            format!("the {what} block has no Identity (the connector's name)"),
        )
    })?;
    let name = match &identity.value {
        Val::Str(s) => s.clone(),
        v => {
            return Err(ImportError::new(
                file,
                identity.line,
                "Identity",
                format!("must be a connector name, found {}", super::script::show(v)),
            ));
        }
    };
    let kind = match take(&mut params, "Ensure") {
        None => OpKind::Ensure,
        Some(Param {
            value: Val::Str(s), ..
        }) if s.eq_ignore_ascii_case("Present") => OpKind::Ensure,
        Some(Param {
            value: Val::Str(s), ..
        }) if s.eq_ignore_ascii_case("Absent") => OpKind::Remove,
        Some(p) => {
            return Err(ImportError::new(
                file,
                p.line,
                "Ensure",
                format!(
                    "must be \"Present\" or \"Absent\", found {}",
                    super::script::show(&p.value)
                ),
            ));
        }
    };
    if kind != OpKind::Remove {
        params.insert(
            0,
            Param {
                name: "Name".into(),
                value: Val::Str(name.clone()),
                line: identity.line,
            },
        );
    }
    Ok(Op {
        kind,
        direction,
        identity: name,
        params,
        file: file.to_string(),
        line,
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resource_blocks() {
        let text = r#"Configuration M365TenantConfig
{
    param (
        [parameter()]
        [System.Management.Automation.PSCredential]
        $Credential
    )
    $OrganizationName = $Credential.UserName.Split('@')[1]
    Import-DscResource -ModuleName 'Microsoft365DSC' -ModuleVersion '1.24.1016.1'
    Node localhost
    {
        EXOInboundConnector "EXOInboundConnector-From Fabrikam"
        {
            Identity                     = "From Fabrikam";
            SenderDomains                = @("fabrikam.com","*.fabrikam.com");
            RequireTls                   = $True;
            Ensure                       = "Present";
            Credential                   = $Credscredential;
        }
        EXOOutboundConnector 'Old'
        {
            Identity = 'Old'
            Ensure = 'Absent'
        }
    }
}
"#;
        let (ops, _) = read("t.ps1", text).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(
            (ops[0].kind, ops[0].identity.as_str(), ops[0].line),
            (OpKind::Ensure, "From Fabrikam", 12)
        );
        let names: Vec<&str> = ops[0].params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Name", "SenderDomains", "RequireTls", "Credential"]);
        assert_eq!(ops[0].params[2].value, Val::Bool(true));
        assert_eq!(ops[0].params[2].line, 16);
        assert_eq!(
            (ops[1].kind, ops[1].direction),
            (OpKind::Remove, Direction::Outbound)
        );
    }
}
