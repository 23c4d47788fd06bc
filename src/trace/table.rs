//! Trace rows as an aligned text table for people (`connector-relay trace`): time (UTC, to
//! the second), the node that wrote the row (when rows name one), event, queue id, sender,
//! recipient, connector, then one free-form details column with whatever else the row
//! holds.

use super::time::format_utc;
use super::{EventKind, TraceEvent};

const HEADERS: [&str; 8] = [
    "TIME",
    "NODE",
    "EVENT",
    "QUEUE ID",
    "SENDER",
    "RECIPIENT",
    "CONNECTOR",
    "DETAILS",
];

/// The rows as lines of text (a header line first), columns separated by two spaces.
pub fn render(rows: &[TraceEvent]) -> String {
    // A NODE column once rows name their node (rows written before nodes were named, or a
    // hand-made row, have none).
    let with_node = rows.iter().any(|r| r.node.is_some());
    let columns = |mut row: Vec<String>| {
        if !with_node {
            row.remove(1);
        }
        row
    };
    let lines: Vec<Vec<String>> = std::iter::once(HEADERS.map(str::to_string).to_vec())
        .chain(rows.iter().map(cells))
        .map(columns)
        .collect();
    aligned(&lines)
}

/// Lines of cells as aligned text: every column as wide as its widest cell plus two
/// spaces, the last column not padded, no trailing blanks.
pub fn aligned(lines: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for line in lines {
        for (i, c) in line.iter().enumerate() {
            let n = c.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(n),
                None => widths.push(n),
            }
        }
    }
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (i, c) in line.iter().enumerate() {
            text.push_str(c);
            if i + 1 < line.len() {
                text.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn cells(e: &TraceEvent) -> Vec<String> {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let sender = match e.sender.as_deref() {
        Some("") => "<>".to_string(),
        _ => or_dash(&e.sender),
    };
    vec![
        format_utc(e.time_ms),
        or_dash(&e.node),
        e.event.as_str().to_string(),
        or_dash(&e.queue_id),
        sender,
        or_dash(&e.recipient),
        or_dash(&e.connector),
        details(e),
    ]
}

/// `key=value` pairs of the other fields that are set (values with spaces in double
/// quotes, their text verbatim: this is for reading, `--json` for parsing), then the free
/// text of `detail`.
pub fn details(e: &TraceEvent) -> String {
    let fields = [
        ("rule", &e.rule),
        ("client", &e.client_ip),
        ("helo", &e.helo),
        // Shown where a message enters the trace; its other rows share the queue id.
        (
            "message-id",
            if e.event == EventKind::Received {
                &e.message_id
            } else {
                &None
            },
        ),
        ("host", &e.host),
        ("ip", &e.ip),
        ("tls", &e.tls),
        ("cert", &e.certificate),
        ("reply", &e.reply),
    ];
    let mut parts: Vec<String> = fields
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let v = one_line(v);
            if v.contains(' ') {
                format!("{k}=\"{v}\"")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    if let Some(d) = e.detail.as_deref().filter(|d| !d.is_empty()) {
        parts.push(one_line(d));
    }
    parts.join(" ")
}

/// Control characters (line breaks of a multi-line reply) as spaces: one row, one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_columns_and_details() {
        let mut r = TraceEvent::new(EventKind::Rejected);
        r.time_ms = 1_795_766_400_000;
        r.sender = Some("alice@fabrikam.test".into());
        r.recipient = Some("x@example.test".into());
        r.client_ip = Some("127.0.0.99".into());
        r.rule = Some("RelayWithoutOnPremisesAttribution".into());
        r.reply = Some("550 5.7.64 TenantAttribution; Relay Access Denied".into());
        r.detail = Some("at RCPT\nTO".into());
        let mut d = TraceEvent::new(EventKind::Delivered);
        d.time_ms = 1_795_766_401_000;
        d.queue_id = Some("Q1".into());
        d.sender = Some(String::new());
        d.connector = Some("To on-premises".into());
        let text = render(&[r, d]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            "2026-11-27T08:00:00Z  Rejected   -         alice@fabrikam.test  x@example.test  -               \
             rule=RelayWithoutOnPremisesAttribution client=127.0.0.99 \
             reply=\"550 5.7.64 TenantAttribution; Relay Access Denied\" at RCPT TO"
        );
        assert_eq!(
            lines[2],
            "2026-11-27T08:00:01Z  Delivered  Q1        <>                   -               To on-premises"
        );
        assert!(lines[0].starts_with("TIME                  EVENT      QUEUE ID  SENDER"));
    }

    #[test]
    fn a_node_column_when_rows_name_their_node() {
        let mut a = TraceEvent::new(EventKind::Received);
        a.time_ms = 1_795_766_400_000;
        a.node = Some("relay-a".into());
        let mut b = TraceEvent::new(EventKind::Delivered);
        b.time_ms = 1_795_766_401_000;
        let text = render(&[a, b]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("TIME                  NODE     EVENT"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("2026-11-27T08:00:00Z  relay-a  Received"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("2026-11-27T08:00:01Z  -        Delivered"),
            "{text}"
        );
    }
}
