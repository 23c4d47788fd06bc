//! `connector-relay queue ...`: Exchange's queue commands (`Get-Queue`, `Retry-Queue`,
//! `Suspend-Queue`, `Resume-Queue`, `Get-Message`, `Suspend-Message`, `Resume-Message`,
//! `Remove-Message -WithNDR $false`) against the running relay's admin API, through
//! [`AdminClient`]. Tables for people; `--json` prints the API's answer unchanged.

use hyper::Method;
use serde_json::{Value, json};

use super::client::{AdminClient, ClientError, segment};

/// The `queue` subcommands (README, "Delivery queues").
#[derive(Debug, Clone, clap::Subcommand)]
pub enum QueueCmd {
    /// Get-Queue: every delivery queue (one per next hop).
    List {
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Get-Message: every message the relay holds.
    Messages {
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Retry-Queue: a queue in Retry tries its next hop now.
    Retry {
        /// The queue's Identity (`fqdn\3`), its number, or its NextHopDomain.
        id: String,
    },
    /// Suspend-Queue: no delivery starts from the queue until `resume`.
    Suspend { id: String },
    /// Resume-Queue.
    Resume { id: String },
    /// Suspend-Message: the message is not attempted until `resume-message`.
    SuspendMessage {
        /// The message's Identity (queue id).
        id: String,
    },
    /// Resume-Message.
    ResumeMessage { id: String },
    /// Remove-Message -WithNDR $false: out of the queue and the spool, no DSN.
    Remove { id: String },
    /// Takes over the spool of a relay node that is gone for good: its messages move into
    /// this relay's spool (each once, durably) and are delivered from here. Refused while a
    /// live relay holds that spool.
    Adopt {
        /// The dead node's SpoolDir, as the running relay sees it (a mounted volume).
        #[arg(long)]
        from: std::path::PathBuf,
    },
}

/// Runs one command; what to print on success, or the error.
pub async fn run(client: &AdminClient, cmd: &QueueCmd) -> Result<String, ClientError> {
    match cmd {
        QueueCmd::List { json } => list(client, "/api/queues", *json, queues_table).await,
        QueueCmd::Messages { json } => list(client, "/api/queue", *json, messages_table).await,
        QueueCmd::Retry { id } => {
            let q = client
                .call(Method::POST, &queue_path(id, "/retry"), None)
                .await?;
            Ok(queue_line("Retry-Queue", &q))
        }
        QueueCmd::Suspend { id } => set_queue_status(client, id, "Suspended").await,
        QueueCmd::Resume { id } => set_queue_status(client, id, "Active").await,
        QueueCmd::SuspendMessage { id } => set_message_status(client, id, "Suspended").await,
        QueueCmd::ResumeMessage { id } => set_message_status(client, id, "Active").await,
        QueueCmd::Adopt { from } => adopt(client, from).await,
        QueueCmd::Remove { id } => {
            let path = format!("/api/queue/{}", segment(id));
            client.call(Method::DELETE, &path, None).await?;
            Ok(format!(
                "{id}: removed from the queue and the spool (no NDR)\n"
            ))
        }
    }
}

async fn adopt(client: &AdminClient, from: &std::path::Path) -> Result<String, ClientError> {
    // The relay reads the path: relative to this command's directory, not the relay's.
    let from = std::path::absolute(from).unwrap_or_else(|_| from.to_path_buf());
    let body = json!({ "From": from });
    let r = client
        .call(Method::POST, "/api/queue/adopt", Some(&body))
        .await?;
    let count = |k: &str| r[k].as_array().map_or(0, Vec::len);
    let mut out = format!(
        "{}: {} message(s) adopted and queued here, {} already here, {} finished, {} unreadable\n",
        from.display(),
        count("Adopted"),
        count("AlreadyHere"),
        count("Finished"),
        count("Corrupt"),
    );
    for c in r["Corrupt"].as_array().into_iter().flatten() {
        out.push_str(&format!("  unreadable {}: {}\n", text(&c[0]), text(&c[1])));
    }
    Ok(out)
}

async fn list(
    client: &AdminClient,
    path: &str,
    json: bool,
    table: fn(&[Value]) -> String,
) -> Result<String, ClientError> {
    let answer = client.call(Method::GET, path, None).await?;
    if json {
        return Ok(pretty(&answer));
    }
    let rows = answer.as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(table(rows))
}

fn queue_path(id: &str, suffix: &str) -> String {
    format!("/api/queues/{}{suffix}", segment(id))
}

async fn set_queue_status(
    client: &AdminClient,
    id: &str,
    status: &str,
) -> Result<String, ClientError> {
    let body = json!({ "Status": status });
    let q = client
        .call(Method::PUT, &queue_path(id, "/status"), Some(&body))
        .await?;
    let command = if status == "Suspended" {
        "Suspend-Queue"
    } else {
        "Resume-Queue"
    };
    Ok(queue_line(command, &q))
}

async fn set_message_status(
    client: &AdminClient,
    id: &str,
    status: &str,
) -> Result<String, ClientError> {
    let body = json!({ "Status": status });
    let path = format!("/api/queue/{}/status", segment(id));
    let m = client.call(Method::PUT, &path, Some(&body)).await?;
    let command = if status == "Suspended" {
        "Suspend-Message"
    } else {
        "Resume-Message"
    };
    Ok(format!("{command} {id}: Status {}\n", text(&m["Status"])))
}

/// One line after a queue command: the queue as it is now.
fn queue_line(command: &str, q: &Value) -> String {
    let mut line = format!("{command} {}", text(&q["Identity"]));
    if q.get("Status").is_some() {
        line.push_str(&format!(
            " ({}): Status {}, MessageCount {}",
            text(&q["NextHopDomain"]),
            text(&q["Status"]),
            text(&q["MessageCount"]),
        ));
        if let Some(next) = q["NextRetryTime"].as_str() {
            line.push_str(&format!(", NextRetryTime {next}"));
        }
    } else {
        // The queue emptied in between: the command succeeded, there is nothing to show.
        line.push_str(": done (the queue is gone: it has no messages left)");
    }
    line + "\n"
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// A cell: strings as they are, `null` as `-`, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

const QUEUE_COLUMNS: [&str; 7] = [
    "Identity",
    "DeliveryType",
    "Status",
    "MessageCount",
    "NextHopDomain",
    "LastError",
    "NextRetryTime",
];

const MESSAGE_COLUMNS: [&str; 6] = [
    "Identity",
    "FromAddress",
    "Status",
    "Queues",
    "RetryCount",
    "LastError",
];

/// Get-Queue's default columns.
pub fn queues_table(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "no delivery queues (nothing waits for delivery)\n".into();
    }
    table(&QUEUE_COLUMNS, rows, |_, v| text(v))
}

/// Get-Message's default columns (the null sender as `<>`).
pub fn messages_table(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "no messages in the queue\n".into();
    }
    table(&MESSAGE_COLUMNS, rows, |column, v| match (column, v) {
        ("FromAddress", Value::String(s)) if s.is_empty() => "<>".into(),
        _ => text(v),
    })
}

/// Columns separated by two spaces, padded to the widest cell; the last one is not padded
/// (it is the long free text: LastError and the like).
fn table(columns: &[&str], rows: &[Value], cell: impl Fn(&str, &Value) -> String) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(c, &r[*c])).collect())
        .collect();
    let header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_table_has_get_queue_columns() {
        let rows = vec![json!({
            "Identity": "relay.contoso.test\\3",
            "DeliveryType": "SmartHostConnectorDelivery",
            "Status": "Retry",
            "MessageCount": 2,
            "NextHopDomain": "127.0.0.1:2526",
            "LastError": "4.4.316 Connection refused",
            "NextRetryTime": "2026-12-05T01:00:00Z",
        })];
        let t = queues_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "Identity              DeliveryType                Status  MessageCount  NextHopDomain   LastError                   NextRetryTime"
        );
        assert!(
            lines[1].starts_with("relay.contoso.test\\3  SmartHostConnectorDelivery  Retry   2 ")
        );
        assert!(lines[1].ends_with("2026-12-05T01:00:00Z"));
    }

    #[test]
    fn message_table_shows_the_null_sender_and_queues() {
        let rows = vec![json!({
            "Identity": "abc",
            "FromAddress": "",
            "Status": "Retry",
            "Queues": ["relay\\1", "relay\\2"],
            "RetryCount": 1,
            "LastError": null,
        })];
        let t = messages_table(&rows);
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .starts_with("abc       <>           Retry   relay\\1, relay\\2  1           -"),
            "{t}"
        );
        assert_eq!(messages_table(&[]), "no messages in the queue\n");
    }

    #[test]
    fn queue_paths_encode_the_identity() {
        assert_eq!(
            queue_path("relay.contoso.test\\3", "/retry"),
            "/api/queues/relay.contoso.test%5C3/retry"
        );
    }
}
