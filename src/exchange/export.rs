//! Writes the connector tables of a config back as New-*Connector lines or as a
//! Microsoft365DSC configuration, so a change proven in the lab can be applied to Exchange.
//!
//! The keys written are the ones written in the config (defaults stay defaults). Values
//! Exchange would not take are still written (import must give the same policy back) but
//! flagged by a comment: the relay's `host:port` smart hosts. Microsoft365DSC has no
//! resource for Send connectors nor properties for some Outbound keys (MtaStsMode,
//! SmtpDaneMode, SenderRewritingEnabled, IsValidated, LastValidationTimestamp): those are
//! written as `Set-…` lines in a comment after the configuration.

use toml_edit::{DocumentMut, Item, Value};

use crate::config::edit::Direction;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cmdlets,
    Dsc,
}

/// Properties of Microsoft365DSC's EXOOutboundConnector resource.
const DSC_OUTBOUND: [&str; 16] = [
    "Name",
    "Enabled",
    "UseMXRecord",
    "Comment",
    "ConnectorSource",
    "ConnectorType",
    "RecipientDomains",
    "SmartHosts",
    "TlsDomain",
    "TlsSettings",
    "IsTransportRuleScoped",
    "RouteAllMessagesViaOnPremises",
    "CloudServicesMailEnabled",
    "AllAcceptedDomains",
    "TestMode",
    "ValidationRecipients",
];

/// A connector table's keys and values, in file order.
type Table = Vec<(String, Value)>;

fn tables(doc: &DocumentMut, d: Direction) -> Vec<Table> {
    let Some(array) = doc.get(d.section()).and_then(Item::as_array_of_tables) else {
        return Vec::new();
    };
    array
        .iter()
        .map(|t| {
            t.iter()
                .filter_map(|(k, item)| {
                    let v = match item {
                        Item::Value(v) => v.clone(),
                        Item::Table(t) => Value::InlineTable(t.clone().into_inline_table()),
                        _ => return None,
                    };
                    // Keys are not case-sensitive in the config: written canonically.
                    let k = crate::config::canonical_key(d, k).unwrap_or(k);
                    Some((k.to_string(), v))
                })
                .collect()
        })
        .collect()
}

/// Exports the connectors of config `text` (which must have passed `check`); `source` is
/// named in the header comment.
pub fn export(text: &str, source: &str, format: Format) -> Result<String, String> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.message().trim().to_string())?;
    Ok(match format {
        Format::Cmdlets => cmdlets(&doc, source),
        Format::Dsc => dsc(&doc, source),
    })
}

/// A PowerShell single-quoted string (no expansion; `'` doubled).
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ps_value(key: &str, v: &Value) -> String {
    match v {
        Value::Boolean(b) => {
            if *b.value() {
                "$true".into()
            } else {
                "$false".into()
            }
        }
        Value::Integer(i) => i.value().to_string(),
        Value::String(s) => quote(s.value()),
        Value::Array(a) if a.is_empty() => "@()".into(),
        Value::Array(a) => format!(
            "@({})",
            a.iter()
                .map(|x| ps_value(key, x))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::InlineTable(t) if key == "AuthenticationCredential" => {
            let get = |k: &str| {
                t.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            format!(
                "(New-Object System.Management.Automation.PSCredential({}, (Get-Content {} -TotalCount 1 | ConvertTo-SecureString -AsPlainText -Force)))",
                quote(&get("UserName")),
                quote(&get("PasswordFile"))
            )
        }
        other => quote(&other.to_string()),
    }
}

/// Comments for values Exchange would refuse.
fn warnings(table: &Table) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in table {
        if k == "TlsSenderCertificateIssuer" {
            out.push("# TlsSenderCertificateIssuer is a connector-relay extension key (the admin centre's \"Require certificate from specific issuer\"): Exchange has no such parameter; set it in the admin centre".to_string());
        }
        if k == "SmartHosts"
            && let Some(a) = v.as_array()
        {
            for h in a.iter().filter_map(Value::as_str) {
                if h.rsplit_once(':').is_some_and(|(host, port)| {
                    port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
                }) {
                    out.push(format!("# SmartHosts {h:?} names a port, a connector-relay lab extension: Exchange takes host names and IP addresses only"));
                }
            }
        }
    }
    out
}

fn noun(d: Direction) -> &'static str {
    d.section()
}

fn counts(doc: &DocumentMut) -> String {
    Direction::all()
        .iter()
        .map(|d| format!("{} {}", tables(doc, *d).len(), d.section()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cmdlets(doc: &DocumentMut, source: &str) -> String {
    let mut out = format!(
        "# Exported by `connector-relay export --format cmdlets` from {source}: {}.\n# [Relay] settings (listeners, certificates, accepted domains) have no connector cmdlet and are not exported.\n",
        counts(doc)
    );
    for d in Direction::all() {
        for table in tables(doc, d) {
            out.push('\n');
            for w in warnings(&table) {
                out.push_str(&w);
                out.push('\n');
            }
            out.push_str(&cmdlet_line(&format!("New-{}", noun(d)), &table));
        }
    }
    out
}

/// `New-X -Name 'n' `, then one `-Key value` per continued line.
fn cmdlet_line(cmdlet: &str, table: &Table) -> String {
    let mut parts = vec![cmdlet.to_string()];
    if let Some((_, name)) = table.iter().find(|(k, _)| k == "Name") {
        parts[0] = format!("{cmdlet} -Name {}", ps_value("Name", name));
    }
    for (k, v) in table.iter().filter(|(k, _)| k != "Name") {
        parts.push(format!("    -{k} {}", ps_value(k, v)));
    }
    parts.join(" `\n") + "\n"
}

fn dsc(doc: &DocumentMut, source: &str) -> String {
    let mut out = format!(
        "# Exported by `connector-relay export --format dsc` from {source}: {}.\n# Compile with Microsoft365DSC; $Credscredential is the tenant admin credential.\nConfiguration ConnectorRelayExport\n{{\n    param\n    (\n        [Parameter(Mandatory = $true)]\n        [System.Management.Automation.PSCredential]\n        $Credscredential\n    )\n\n    Import-DscResource -ModuleName 'Microsoft365DSC'\n\n    Node localhost\n    {{\n",
        counts(doc)
    );
    let mut outside: Vec<String> = Vec::new();
    for d in [Direction::Inbound, Direction::Outbound] {
        let resource = if d == Direction::Inbound {
            "EXOInboundConnector"
        } else {
            "EXOOutboundConnector"
        };
        for table in tables(doc, d) {
            let name = table
                .iter()
                .find(|(k, _)| k == "Name")
                .and_then(|(_, v)| v.as_str())
                .unwrap_or_default()
                .to_string();
            for w in warnings(&table) {
                out.push_str(&format!("        {w}\n"));
            }
            out.push_str(&format!(
                "        {resource} {}\n        {{\n",
                quote(&format!("{resource}-{name}"))
            ));
            out.push_str(&format!("            Identity = {}\n            Ensure = 'Present'\n            Credential = $Credscredential\n", quote(&name)));
            let mut missing: Table = Vec::new();
            for (k, v) in table.iter().filter(|(k, _)| k != "Name") {
                if d == Direction::Outbound && !DSC_OUTBOUND.contains(&k.as_str()) {
                    missing.push((k.clone(), v.clone()));
                    continue;
                }
                out.push_str(&format!("            {k} = {}\n", ps_value(k, v)));
            }
            out.push_str("        }\n");
            if !missing.is_empty() {
                let mut t = vec![("Name".to_string(), Value::from(name.clone()))];
                t.extend(missing);
                outside
                    .push(cmdlet_line("Set-OutboundConnector", &t).replace("-Name", "-Identity"));
            }
        }
    }
    out.push_str("    }\n}\n");
    let sends = tables(doc, Direction::Send);
    if !outside.is_empty() || !sends.is_empty() {
        out.push_str("\n# Not expressible in Microsoft365DSC (no resource property, or no resource for Send connectors);\n# apply these with the Exchange cmdlets:\n");
        for line in outside {
            out.push_str(&comment(&line));
        }
        for table in sends {
            out.push_str(&comment(&cmdlet_line("New-SendConnector", &table)));
        }
    }
    out
}

fn comment(block: &str) -> String {
    block.lines().map(|l| format!("# {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[Relay]
AcceptedDomains = ["contoso.test"]

[[InboundConnector]]
Name = "O'Brien partner"
SenderDomains = ["fabrikam.test", "*.fabrikam.test"]
RequireTls = true

[[OutboundConnector]]
Name = "Lab"
UseMXRecord = false
SmartHosts = ["127.0.0.1:2626"]
RecipientDomains = ["fabrikam.test"]
SmtpDaneMode = "None"

[[SendConnector]]
Name = "Internet"
AddressSpaces = ["SMTP:*;10"]
"#;

    #[test]
    fn cmdlets_quote_and_continue_lines() {
        let out = export(TEXT, "relay.toml", Format::Cmdlets).unwrap();
        assert!(out.contains("New-InboundConnector -Name 'O''Brien partner' `\n    -SenderDomains @('fabrikam.test', '*.fabrikam.test') `\n    -RequireTls $true\n"), "{out}");
        assert!(
            out.contains("# SmartHosts \"127.0.0.1:2626\" names a port"),
            "{out}"
        );
        assert!(
            out.contains(
                "New-SendConnector -Name 'Internet' `\n    -AddressSpaces @('SMTP:*;10')\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn dsc_keeps_what_the_resources_lack_as_cmdlets() {
        let out = export(TEXT, "relay.toml", Format::Dsc).unwrap();
        assert!(
            out.contains("EXOInboundConnector 'EXOInboundConnector-O''Brien partner'"),
            "{out}"
        );
        assert!(out.contains("            RequireTls = $true\n"), "{out}");
        assert!(
            out.contains("# Set-OutboundConnector -Identity 'Lab' `\n#     -SmtpDaneMode 'None'"),
            "{out}"
        );
        assert!(
            out.contains("# New-SendConnector -Name 'Internet'"),
            "{out}"
        );
    }
}
