//! A report as aligned text tables (`connector-relay report`): the same numbers the page
//! draws, per connector, per TLS version, per bucket (those with mail) and per rule.

use super::{DirectionReport, Report};
use crate::trace::table::aligned;
use crate::trace::time::format_utc;

/// The whole report, sections separated by a blank line.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "Period {} to {}, buckets of {}\n",
        r.since, r.until, r.bucket
    );
    for section in [connectors(r), tls(r), buckets(r), refusals(r)] {
        out.push('\n');
        out.push_str(&section);
    }
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn direction_name(d: &DirectionReport) -> String {
    format!("{:?}", d.direction)
}

/// Messages per connector and direction, with each direction's total.
fn connectors(r: &Report) -> String {
    let mut lines = vec![row(&["DIRECTION", "CONNECTOR", "MESSAGES"])];
    for d in &r.directions {
        let name = direction_name(d);
        for s in &d.connectors {
            lines.push(vec![name.clone(), s.connector.clone(), s.total.to_string()]);
        }
        lines.push(vec![name, "(all)".into(), d.total.to_string()]);
    }
    aligned(&lines)
}

/// Messages per TLS version and the share under TLS, per direction.
fn tls(r: &Report) -> String {
    // Every version either direction names (`Other` may be in one only).
    let mut versions: Vec<&str> = Vec::new();
    for d in &r.directions {
        for t in &d.tls {
            if !versions.contains(&t.version.as_str()) {
                versions.push(&t.version);
            }
        }
    }
    let mut header = row(&["DIRECTION"]);
    header.extend(versions.iter().map(|v| v.to_string()));
    header.push("UNDER TLS".into());
    let mut lines = vec![header];
    for d in &r.directions {
        let mut line = vec![direction_name(d)];
        for v in &versions {
            let n: u64 = d
                .tls
                .iter()
                .filter(|t| t.version == *v)
                .map(|t| t.count)
                .sum();
            line.push(n.to_string());
        }
        line.push(match d.tls_share {
            Some(s) => format!("{}%", (s * 100.0).round()),
            None => "-".into(),
        });
        lines.push(line);
    }
    aligned(&lines)
}

/// Messages per bucket and direction; buckets without mail are left out.
fn buckets(r: &Report) -> String {
    let mut header = row(&["BUCKET (UTC)"]);
    header.extend(
        r.directions
            .iter()
            .map(|d| direction_name(d).to_uppercase()),
    );
    let mut lines = vec![header];
    for (i, start) in r.buckets.iter().enumerate() {
        let counts: Vec<u64> = r.directions.iter().map(|d| d.counts[i]).collect();
        if counts.iter().all(|c| *c == 0) {
            continue;
        }
        let mut line = vec![format_utc(*start)];
        line.extend(counts.iter().map(u64::to_string));
        lines.push(line);
    }
    if lines.len() == 1 {
        return "No mail in this period.\n".into();
    }
    aligned(&lines)
}

/// Refusals per rule, most first, and their total.
fn refusals(r: &Report) -> String {
    if r.refusals.is_empty() {
        return "No refusals in this period.\n".into();
    }
    let mut lines = vec![row(&["RULE", "REFUSALS"])];
    for rc in &r.refusals {
        let rule = if rc.rule.is_empty() {
            "(none)"
        } else {
            &rc.rule
        };
        lines.push(vec![rule.to_string(), rc.count.to_string()]);
    }
    lines.push(vec!["(all)".into(), r.refusals_total.to_string()]);
    aligned(&lines)
}
