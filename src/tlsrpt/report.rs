//! The report itself (RFC 8460 §4): the `_smtp._tls` TXT record, the JSON document built
//! from a period's counts, and its gzip form.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};

use super::ResultType;
use super::store::Row;

/// Where reports go: the `rua` URIs of a TLSRPT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` address (RFC 8460 §3: the report is mailed).
    Mailto(String),
    /// `https:` URL (the report is POSTed).
    Https(String),
}

/// Parses the TXT records of `_smtp._tls.<domain>`. RFC 8460 §3: only records starting
/// with `v=TLSRPTv1` count, and exactly one must be there (none or several: no reporting).
/// Unknown URI schemes are ignored; `mailto:` may carry `!size` limits (ignored: a report
/// is small) and percent-encoding is not expected in addresses.
pub fn parse_record(txts: &[String]) -> Result<Vec<Rua>, String> {
    let records: Vec<&String> = txts
        .iter()
        .filter(|t| t.trim_start().starts_with("v=TLSRPTv1"))
        .collect();
    let record = match records.as_slice() {
        [one] => one,
        [] => return Err("no v=TLSRPTv1 record".into()),
        _ => {
            return Err(format!(
                "{} v=TLSRPTv1 records (exactly one needed)",
                records.len()
            ));
        }
    };
    let mut out = Vec::new();
    for field in record.split(';').map(str::trim).skip(1) {
        let Some(value) = field.strip_prefix("rua=") else {
            continue;
        };
        for uri in value.split(',').map(str::trim) {
            if let Some(addr) = uri.strip_prefix("mailto:") {
                let addr = addr.split('!').next().unwrap_or("").trim();
                if addr.contains('@') {
                    out.push(Rua::Mailto(addr.to_string()));
                }
            } else if uri.starts_with("https://") {
                out.push(Rua::Https(uri.to_string()));
            }
        }
    }
    if out.is_empty() {
        return Err("no usable rua URI".into());
    }
    Ok(out)
}

/// Who sends the report.
#[derive(Debug, Clone)]
pub struct Submitter {
    pub organization: String,
    pub contact: String,
    /// The relay's FQDN, for report ids.
    pub fqdn: String,
}

/// The report id of a domain's period: stable, so a retry sends the same id.
pub fn report_id(start: u64, domain: &str, fqdn: &str) -> String {
    format!("{start}.{domain}@{fqdn}")
}

/// The RFC 8460 §4.4 JSON report of one domain's period.
pub fn build(sub: &Submitter, domain: &str, start: u64, end: u64, rows: &[Row]) -> Value {
    // One `policies[]` entry per applied policy; the BTreeMap keeps the output stable.
    let mut policies: BTreeMap<(String, String, String), Vec<&Row>> = BTreeMap::new();
    for row in rows {
        let r = &row.record;
        let key = (
            r.policy_type.as_str().to_string(),
            serde_json::to_string(&r.policy_strings).unwrap_or_default(),
            serde_json::to_string(&r.policy_mx_hosts).unwrap_or_default(),
        );
        policies.entry(key).or_default().push(row);
    }
    let policies: Vec<Value> = policies.values().map(|rows| policy(domain, rows)).collect();
    let utc = |s: u64| crate::trace::time::format_utc(s as i64 * 1000);
    json!({
        "organization-name": sub.organization,
        "date-range": { "start-datetime": utc(start), "end-datetime": utc(end) },
        "contact-info": sub.contact,
        "report-id": report_id(start, domain, &sub.fqdn),
        "policies": policies,
    })
}

fn policy(domain: &str, rows: &[&Row]) -> Value {
    let first = &rows[0].record;
    let mut policy = json!({
        "policy-type": first.policy_type.as_str(),
        // sys4/tlsrpt-reporter #51: parsers expect the domain even for no-policy-found.
        "policy-domain": domain,
    });
    if !first.policy_strings.is_empty() {
        policy["policy-string"] = json!(first.policy_strings);
    }
    if !first.policy_mx_hosts.is_empty() {
        policy["mx-host"] = json!(first.policy_mx_hosts);
    }
    let ok: u64 = rows
        .iter()
        .filter(|r| r.record.result == ResultType::Success)
        .map(|r| r.count)
        .sum();
    let failed: Vec<&&Row> = rows
        .iter()
        .filter(|r| r.record.result != ResultType::Success)
        .collect();
    let mut out = json!({
        "policy": policy,
        "summary": {
            "total-successful-session-count": ok,
            "total-failure-session-count": failed.iter().map(|r| r.count).sum::<u64>(),
        },
    });
    if !failed.is_empty() {
        out["failure-details"] = failed.iter().map(|r| failure(r)).collect();
    }
    out
}

fn failure(row: &Row) -> Value {
    let r = &row.record;
    let mut f = json!({
        "result-type": r.result.as_str(),
        "failed-session-count": row.count,
    });
    if let Some(ip) = r.sending_mta_ip {
        f["sending-mta-ip"] = json!(ip.to_string());
    }
    if let Some(mx) = &r.receiving_mx_hostname {
        f["receiving-mx-hostname"] = json!(mx);
    }
    if let Some(ip) = r.receiving_ip {
        f["receiving-ip"] = json!(ip.to_string());
    }
    if let Some(reason) = &r.failure_reason {
        f["failure-reason-code"] = json!(reason);
    }
    f
}

/// The report as `application/tlsrpt+gzip` (RFC 8460 §5.2).
pub fn gzip(report: &Value) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(report.to_string().as_bytes());
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::{PolicyType, Record};

    #[test]
    fn txt_record() {
        let one = vec![
            "v=spf1 -all".to_string(),
            "v=TLSRPTv1; rua=mailto:tls@example.test!10m, https://r.example.test/x ,ftp://no"
                .to_string(),
        ];
        assert_eq!(
            parse_record(&one).unwrap(),
            vec![
                Rua::Mailto("tls@example.test".into()),
                Rua::Https("https://r.example.test/x".into())
            ]
        );
        let two = vec![
            "v=TLSRPTv1; rua=mailto:a@b".into(),
            "v=TLSRPTv1; rua=mailto:c@d".into(),
        ];
        assert!(parse_record(&two).is_err());
        assert!(parse_record(&[]).is_err());
        assert!(parse_record(&["v=TLSRPTv1; rua=http://plain".into()]).is_err());
    }

    #[test]
    fn report_fields() {
        let rec = |result, n| Row {
            record: Record {
                policy_domain: "example.test".into(),
                policy_type: PolicyType::NoPolicyFound,
                policy_strings: vec![],
                policy_mx_hosts: vec![],
                result,
                sending_mta_ip: Some("192.0.2.1".parse().unwrap()),
                receiving_mx_hostname: Some("mx.example.test".into()),
                receiving_ip: Some("192.0.2.2".parse().unwrap()),
                failure_reason: None,
            },
            count: n,
        };
        let sub = Submitter {
            organization: "Contoso".into(),
            contact: "postmaster@contoso.test".into(),
            fqdn: "relay.contoso.test".into(),
        };
        let rows = [
            rec(ResultType::Success, 5),
            rec(ResultType::StarttlsNotSupported, 2),
        ];
        let v = build(&sub, "example.test", 0, 86_400, &rows);
        assert_eq!(v["date-range"]["start-datetime"], "1970-01-01T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "1970-01-02T00:00:00Z");
        let p = &v["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "no-policy-found");
        assert_eq!(p["policy"]["policy-domain"], "example.test");
        assert_eq!(p["summary"]["total-successful-session-count"], 5);
        assert_eq!(p["summary"]["total-failure-session-count"], 2);
        assert_eq!(
            p["failure-details"][0]["result-type"],
            "starttls-not-supported"
        );
        assert_eq!(p["failure-details"][0]["sending-mta-ip"], "192.0.2.1");
        let gz = gzip(&v);
        let mut back = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back)
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&back).unwrap(), v);
    }
}
