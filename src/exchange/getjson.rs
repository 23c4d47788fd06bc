//! `Get-InboundConnector | ConvertTo-Json` (and Outbound, Send) into [`Op`]s of kind
//! `State`: each object is a connector's full state.
//!
//! Exchange's serialized shapes differ by where the objects came from:
//! - the Exchange Online module (REST) writes plain strings: `"SenderIPAddresses":
//!   ["192.0.2.0/24"]`, `"TlsSettings": "DomainValidation"`, and domains of inbound
//!   connectors as address spaces (`"SenderDomains": ["smtp:*;1"]`);
//! - Exchange Server's shell and remote sessions write the objects' properties: IP ranges
//!   as `{LowerBound, UpperBound, CIDRLength, RangeFormat}`, smart hosts as
//!   `{IsIPAddress, Address, Domain: {HostnameString}}`, address spaces as
//!   `{Type, Address|Domain, Cost}`, domains as `{Domain, IncludeSubDomains}`, time spans as
//!   `{Ticks, Days, …}`, sizes as `{IsUnlimited, Value}` or `"35 MB (36,700,160 bytes)"`;
//! - Windows PowerShell wraps some arrays as `{"value": [...], "Count": n}`;
//! - enums are names, or numbers (PowerShell 5.1 has no `-EnumsAsStrings`), see
//!   [`super::schema::enum_number`].
//!
//! The direction of an object is told by the properties only its kind has.

use super::json::{self, J, JVal};
use super::ps::Val;
use super::{Direction, ImportError, Op, OpKind, Param};

pub fn read(file: &str, text: &str) -> Result<(Vec<Op>, Vec<String>), Vec<ImportError>> {
    let root = json::parse(text).map_err(|(line, reason)| {
        vec![ImportError::new(
            file,
            line,
            "",
            format!("not valid JSON: {reason}"),
        )]
    })?;
    let objects = match unwrap_array(&root) {
        Some(items) => items,
        None => vec![root.clone()],
    };
    let mut ops = Vec::new();
    let mut errors = Vec::new();
    for obj in objects {
        match object(file, &obj) {
            Ok(op) => ops.push(op),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok((ops, Vec::new()))
    } else {
        Err(errors)
    }
}

/// An array, or Windows PowerShell's `{"value": [...], "Count": n}` wrapper of one.
fn unwrap_array(v: &JVal) -> Option<Vec<JVal>> {
    match &v.v {
        J::Arr(items) => Some(items.clone()),
        J::Obj(m) if m.len() == 2 && v.get("Count").is_some() => match &v.get("value")?.v {
            J::Arr(items) => Some(items.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn direction(obj: &JVal) -> Option<Direction> {
    let has = |k: &str| obj.get(k).is_some();
    let inbound = [
        "SenderDomains",
        "SenderIPAddresses",
        "RestrictDomainsToIPAddresses",
        "TlsSenderCertificateName",
    ]
    .iter()
    .any(|k| has(k));
    let outbound = [
        "RecipientDomains",
        "UseMXRecord",
        "TlsSettings",
        "RouteAllMessagesViaOnPremises",
    ]
    .iter()
    .any(|k| has(k));
    let send = [
        "AddressSpaces",
        "DNSRoutingEnabled",
        "SourceTransportServers",
        "TlsAuthLevel",
    ]
    .iter()
    .any(|k| has(k));
    match (inbound, outbound, send) {
        (true, false, false) => Some(Direction::Inbound),
        (false, true, false) => Some(Direction::Outbound),
        (false, false, true) => Some(Direction::Send),
        _ => None,
    }
}

fn object(file: &str, obj: &JVal) -> Result<Op, Vec<ImportError>> {
    let J::Obj(members) = &obj.v else {
        return Err(vec![ImportError::new(
            file,
            obj.line,
            "",
            "expected a connector object (the output of Get-InboundConnector, Get-OutboundConnector or Get-SendConnector)",
        )]);
    };
    let direction = direction(obj).ok_or_else(|| vec![ImportError::new(file, obj.line, "", "cannot tell which kind of connector this object is: it has the properties of none, or of several, of Get-InboundConnector, Get-OutboundConnector and Get-SendConnector")])?;
    let name = obj
        .get("Name")
        .or_else(|| obj.get("Identity"))
        .and_then(JVal::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            vec![ImportError::new(
                file,
                obj.line,
                "Name",
                "the connector object has no Name",
            )]
        })?;
    let mut params = Vec::new();
    let mut errors = Vec::new();
    for (key, value) in members {
        match val(key, value) {
            Ok(v) => params.push(Param {
                name: key.clone(),
                value: v,
                line: value.line,
            }),
            Err(reason) => errors.push(ImportError::new(file, value.line, key, reason)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let what = match direction {
        Direction::Inbound => "Get-InboundConnector",
        Direction::Outbound => "Get-OutboundConnector",
        Direction::Send => "Get-SendConnector",
    };
    Ok(Op {
        kind: OpKind::State,
        direction,
        identity: name,
        params,
        file: file.to_string(),
        line: obj.line,
        what: what.into(),
    })
}

/// A serialized property as a value. Secrets are never echoed in errors.
fn val(key: &str, v: &JVal) -> Result<Val, String> {
    Ok(match &v.v {
        J::Null => Val::Null,
        J::Bool(b) => Val::Bool(*b),
        J::Num(n) => match n.parse::<i64>() {
            Ok(i) => Val::Int(i),
            Err(_) => Val::Str(n.clone()),
        },
        J::Str(s) => Val::Str(s.clone()),
        J::Arr(items) => Val::List(
            items
                .iter()
                .map(|i| val(key, i))
                .collect::<Result<_, _>>()?,
        ),
        J::Obj(_) => {
            if let Some(items) = unwrap_array(v) {
                return Ok(Val::List(
                    items
                        .iter()
                        .map(|i| val(key, i))
                        .collect::<Result<_, _>>()?,
                ));
            }
            Val::Str(shape(key, v)?)
        }
    })
}

/// The string form of one of Exchange's serialized objects.
fn shape(key: &str, v: &JVal) -> Result<String, String> {
    if key.eq_ignore_ascii_case("AuthenticationCredential") {
        return Err("a serialized credential carries no password; write AuthenticationCredential = { UserName = \"…\", PasswordFile = \"…\" } into the config by hand, or import a script with the New-Object PSCredential line that `export` writes".into());
    }
    if v.get("LowerBound").is_some() {
        return ip_range(v);
    }
    if let Some(is_ip) = v.get("IsIPAddress") {
        return if is_ip.v == J::Bool(true) {
            address(
                v.get("Address")
                    .ok_or("a smart host with IsIPAddress but no Address")?,
            )
        } else {
            hostname(v.get("Domain").ok_or("a smart host with no Domain")?)
        };
    }
    if let Some(cost) = v.get("Cost") {
        let kind = v.get("Type").and_then(JVal::as_str).unwrap_or("SMTP");
        let addr = match v.get("Address").and_then(JVal::as_str) {
            Some(a) => a.to_string(),
            None => domain(
                v.get("Domain")
                    .ok_or("an address space with no Address or Domain")?,
            )?,
        };
        let cost = match &cost.v {
            J::Num(n) => n.clone(),
            _ => return Err("an address space whose Cost is not a number".into()),
        };
        return Ok(format!("{kind}:{addr};{cost}"));
    }
    if v.get("IncludeSubDomains").is_some() || v.get("SmtpDomain").is_some() {
        return domain(v);
    }
    if let Some(ticks) = v.get("Ticks") {
        return timespan(ticks);
    }
    if let Some(unlimited) = v.get("IsUnlimited") {
        if unlimited.v == J::Bool(true) {
            return Ok("Unlimited".into());
        }
        let value = v
            .get("Value")
            .ok_or("a size with IsUnlimited = false but no Value")?;
        return match &value.v {
            J::Str(s) => Ok(s.clone()),
            J::Num(n) => Ok(n.clone()),
            J::Obj(_) => shape(key, value),
            _ => Err("a size whose Value is not a number or text".into()),
        };
    }
    if let Some(J::Num(n)) = v.get("ToBytes").map(|x| &x.v) {
        return Ok(n.clone());
    }
    let props: Vec<&str> = match &v.v {
        J::Obj(m) => m.iter().map(|(k, _)| k.as_str()).take(8).collect(),
        _ => Vec::new(),
    };
    Err(format!(
        "cannot read this serialized object (properties {}); re-export with a larger -Depth, or as strings",
        props.join(", ")
    ))
}

/// An IPAddress: a string, or an object with `IPAddressToString` (Windows PowerShell).
fn address(v: &JVal) -> Result<String, String> {
    match &v.v {
        J::Str(s) => Ok(s.clone()),
        J::Obj(_) => v
            .get("IPAddressToString")
            .and_then(JVal::as_str)
            .map(str::to_string)
            .ok_or_else(|| "an IP address object without IPAddressToString".into()),
        _ => Err("expected an IP address".into()),
    }
}

fn hostname(v: &JVal) -> Result<String, String> {
    match &v.v {
        J::Str(s) => Ok(s.clone()),
        J::Obj(_) => {
            for k in ["HostnameString", "Domain", "SmtpDomain"] {
                if let Some(inner) = v.get(k) {
                    return hostname(inner);
                }
            }
            Err("a host name object without HostnameString".into())
        }
        _ => Err("expected a host name".into()),
    }
}

/// `SmtpDomainWithSubdomains`: `{Domain, IncludeSubDomains}` (or `{Address}`).
fn domain(v: &JVal) -> Result<String, String> {
    match &v.v {
        J::Str(s) => Ok(s.clone()),
        J::Obj(_) => {
            if let Some(a) = v.get("Address").and_then(JVal::as_str) {
                return Ok(a.to_string());
            }
            let d = hostname(
                v.get("Domain")
                    .or(v.get("SmtpDomain"))
                    .ok_or("a domain object without Domain")?,
            )?;
            let star = v
                .get("IncludeSubDomains")
                .is_some_and(|x| x.v == J::Bool(true));
            Ok(if star && d != "*" {
                format!("*.{d}")
            } else {
                d
            })
        }
        _ => Err("expected a domain".into()),
    }
}

/// IPRange: one address, a CIDR block, or `low-high`, told from the bounds themselves.
fn ip_range(v: &JVal) -> Result<String, String> {
    let low = address(
        v.get("LowerBound")
            .ok_or("an IP range without LowerBound")?,
    )?;
    let high = match v.get("UpperBound") {
        Some(u) => address(u)?,
        None => low.clone(),
    };
    if low == high {
        return Ok(low);
    }
    if let Some(J::Num(len)) = v.get("CIDRLength").map(|x| &x.v)
        && let Ok(net) = format!("{low}/{len}").parse::<ipnet::IpNet>()
        && net.network().to_string() == low
        && net.broadcast().to_string() == high
    {
        return Ok(net.to_string());
    }
    Ok(format!("{low}-{high}"))
}

/// EnhancedTimeSpan from its `Ticks` (100 ns): `d.hh:mm:ss`.
fn timespan(ticks: &JVal) -> Result<String, String> {
    let J::Num(n) = &ticks.v else {
        return Err("a time span whose Ticks is not a number".into());
    };
    let t: i64 = n
        .parse()
        .map_err(|_| "a time span whose Ticks is not an integer")?;
    let secs = t / 10_000_000;
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    Ok(if d > 0 {
        format!("{d}.{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Op {
        let (mut ops, _) = read("g.json", text).unwrap();
        ops.remove(0)
    }

    fn param<'a>(op: &'a Op, name: &str) -> &'a Val {
        &op.params.iter().find(|p| p.name == name).unwrap().value
    }

    #[test]
    fn server_shapes_become_strings() {
        let op = one(r#"{
  "Name": "Internet",
  "AddressSpaces": [{"Type": "SMTP", "Domain": {"Domain": "contoso.com", "IncludeSubDomains": true}, "Cost": 5}],
  "SmartHosts": {"value": [{"IsIPAddress": false, "Address": null, "Domain": {"HostnameString": "mail.contoso.com"}},
                          {"IsIPAddress": true, "Address": {"IPAddressToString": "192.0.2.7", "AddressFamily": 2}}], "Count": 2},
  "ConnectionInactivityTimeOut": {"Ticks": 6000000000, "Days": 0, "Minutes": 10},
  "MaxMessageSize": {"IsUnlimited": false, "Value": "35 MB (36,700,160 bytes)"},
  "DNSRoutingEnabled": false,
  "ErrorPolicies": 3
}"#);
        assert_eq!(op.direction, Direction::Send);
        assert_eq!(
            param(&op, "AddressSpaces"),
            &Val::List(vec![Val::Str("SMTP:*.contoso.com;5".into())])
        );
        assert_eq!(
            param(&op, "SmartHosts"),
            &Val::List(vec![
                Val::Str("mail.contoso.com".into()),
                Val::Str("192.0.2.7".into())
            ])
        );
        assert_eq!(
            param(&op, "ConnectionInactivityTimeOut"),
            &Val::Str("00:10:00".into())
        );
        assert_eq!(
            param(&op, "MaxMessageSize"),
            &Val::Str("35 MB (36,700,160 bytes)".into())
        );
        assert_eq!(param(&op, "ErrorPolicies"), &Val::Int(3));
    }

    #[test]
    fn ip_ranges_in_every_format() {
        let op = one(r#"[{"Name": "P", "SenderIPAddresses": [
  {"LowerBound": "192.0.2.5", "UpperBound": "192.0.2.5", "CIDRLength": 32, "RangeFormat": 0},
  {"LowerBound": "198.51.100.0", "UpperBound": "198.51.100.255", "CIDRLength": 24, "RangeFormat": "CIDR"},
  {"LowerBound": {"IPAddressToString": "203.0.113.1"}, "UpperBound": {"IPAddressToString": "203.0.113.9"}, "CIDRLength": 0, "RangeFormat": "LoHi"}
]}]"#);
        assert_eq!(op.direction, Direction::Inbound);
        assert_eq!(
            param(&op, "SenderIPAddresses"),
            &Val::List(vec![
                Val::Str("192.0.2.5".into()),
                Val::Str("198.51.100.0/24".into()),
                Val::Str("203.0.113.1-203.0.113.9".into()),
            ])
        );
    }

    #[test]
    fn unknown_objects_and_kinds_are_errors_with_lines() {
        let e = read(
            "g.json",
            "[\n{\"Name\": \"X\", \"SenderDomains\": [],\n \"Odd\": {\"A\": 1}}]",
        )
        .unwrap_err();
        assert_eq!((e[0].at.line, e[0].key.as_str()), (3, "Odd"));
        let e = read("g.json", "{\"Name\": \"X\"}").unwrap_err();
        assert!(e[0].reason.contains("which kind"), "{}", e[0].reason);
    }
}
