//! The impact report: every group's two outcomes folded into counts by rule, connector,
//! sender and route ([`Tally`]), then the [`Impact`] the CLI prints and the admin API
//! answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::collect::Group;
use super::replay::{Decider, Outcome, RouteKey, Shape, Verdict, name_or_none};

/// The most senders listed per group (the rest are counted in `MoreSenders`).
const SENDERS_SHOWN: usize = 20;

/// The most examples of recorded decisions the current config does not reproduce.
const EXAMPLES: usize = 5;

/// What a proposed configuration would have changed in the recorded traffic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Impact {
    /// One sentence, e.g. `This change would have refused 37 messages from 3 senders in
    /// the last 7 days: ...`.
    pub summary: String,
    /// Relaying would become possible: recorded recipients outside the accepted domains
    /// would be accepted, recorded clients could relay, or anyone could.
    pub opens_relay: bool,
    pub period: PeriodText,
    pub replayed: Replayed,
    /// Commands accepted under the current config and refused under the proposed one (or
    /// refused by another rule: `Was`), by stage, rule and connector.
    pub refused: Vec<RefusedGroup>,
    /// Commands refused under the current config and accepted under the proposed one.
    pub accepted: Vec<AcceptedGroup>,
    pub relay: Relay,
    /// Recipients of recorded messages that would leave by another route or TLS level.
    pub rerouted: Vec<Rerouted>,
    /// Transactions attributed to another inbound connector (or none).
    pub attribution: Vec<AttributionChange>,
    pub unchanged: Counts,
    /// Recorded decisions the current config does not reproduce (it changed during the
    /// period, or the facts were not enough): these transactions are compared all the same.
    pub recorded_mismatches: Mismatches,
    /// What the replay takes for granted.
    pub assumptions: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeriodText {
    /// RFC 3339.
    pub since: String,
    pub until: String,
    /// `in the last 7 days`, `between ... and ...`.
    pub words: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Replayed {
    /// `Session` rows read (one per recorded transaction).
    pub rows: u64,
    /// Rows with identical facts, counted together.
    pub groups: u64,
    /// Distinct fact sets decided (under each config).
    pub decisions: u64,
    /// Rows in another format (skipped).
    pub unreadable: u64,
    pub milliseconds: u64,
}

/// Transactions, stored messages and recipients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Counts {
    pub transactions: u64,
    pub messages: u64,
    pub recipients: u64,
}

impl Counts {
    fn add(&mut self, transactions: u64, messages: u64, recipients: u64) {
        self.transactions += transactions;
        self.messages += messages;
        self.recipients += recipients;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SenderCounts {
    /// `<>` for the null sender.
    pub sender: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RefusedGroup {
    /// `MAIL` or `RCPT`.
    pub stage: String,
    pub rule: String,
    pub connector: Option<String>,
    /// The reply the client would get.
    pub reply: String,
    /// The rule that refused it under the current config, when it was refused already.
    pub was: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    pub senders: Vec<SenderCounts>,
    pub more_senders: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AcceptedGroup {
    pub stage: String,
    /// The rule and connector that refused it under the current config.
    pub was_rule: String,
    pub was_connector: Option<String>,
    /// Recipients outside the accepted domains: relaying.
    pub relay: bool,
    #[serde(flatten)]
    pub counts: Counts,
    pub senders: Vec<SenderCounts>,
    pub more_senders: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Relay {
    /// Recorded recipients outside the accepted domains that would be relayed.
    pub recipients: u64,
    /// Recorded clients that could relay to any domain under the proposed config and
    /// could not under the current one.
    pub clients: Vec<RelayClient>,
    /// Anyone (an unknown address, no TLS, any sender) could relay under the proposed
    /// config.
    pub anyone: bool,
    /// ... and already can under the current one.
    pub already_open: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RelayClient {
    pub client_ip: String,
    pub sender: String,
    /// The inbound connector that would let it relay.
    pub connector: Option<String>,
    pub transactions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteText {
    /// `None`: the default MX route.
    pub connector: Option<String>,
    pub tls_level: String,
    pub route: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Rerouted {
    pub domain: String,
    pub from: RouteText,
    pub to: RouteText,
    pub messages: u64,
    pub recipients: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributionChange {
    pub from: Option<String>,
    pub to: Option<String>,
    pub transactions: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mismatches {
    pub transactions: u64,
    pub examples: Vec<String>,
}

/// Counts of one group of the report, with its senders.
#[derive(Debug, Default)]
struct GroupTally {
    counts: Counts,
    reply: String,
    senders: HashMap<String, Counts>,
}

impl GroupTally {
    fn add(&mut self, g: &Group<'_>, recipients: u64) {
        let messages = if g.stored { g.count } else { 0 };
        self.counts.add(g.count, messages, recipients);
        let sender = if g.sender.is_empty() {
            "<>".to_string()
        } else {
            g.sender.to_string()
        };
        self.senders
            .entry(sender)
            .or_default()
            .add(g.count, messages, recipients);
    }

    /// The senders, most transactions first, and how many more there are.
    fn senders(&self) -> (Vec<SenderCounts>, usize) {
        let mut all: Vec<SenderCounts> = self
            .senders
            .iter()
            .map(|(s, c)| SenderCounts {
                sender: s.clone(),
                counts: *c,
            })
            .collect();
        all.sort_by(|a, b| {
            (b.counts.transactions, b.counts.recipients)
                .cmp(&(a.counts.transactions, a.counts.recipients))
                .then(a.sender.cmp(&b.sender))
        });
        let more = all.len().saturating_sub(SENDERS_SHOWN);
        all.truncate(SENDERS_SHOWN);
        (all, more)
    }
}

/// (stage, rule, connector, was).
type RefusedKey = (&'static str, String, Option<String>, Option<String>);
/// (stage, was rule, was connector, relay).
type AcceptedKey = (&'static str, String, Option<String>, bool);

/// The report being built, group by group.
#[derive(Default)]
pub(super) struct Tally {
    refused: BTreeMap<RefusedKey, GroupTally>,
    accepted: BTreeMap<AcceptedKey, GroupTally>,
    rerouted: BTreeMap<(String, RouteKey, RouteKey), (u64, u64)>,
    attribution: BTreeMap<(Option<String>, Option<String>), u64>,
    relay_clients: BTreeMap<(String, String, Option<String>), u64>,
    relay_recipients: u64,
    unchanged: Counts,
    totals: Totals,
    mismatches: Mismatches,
}

impl Tally {
    /// Folds in one group: its shape, its current and proposed outcomes.
    pub fn add(
        &mut self,
        g: &Group<'_>,
        shape: &Shape,
        (current, proposed): (&Outcome, &Outcome),
        decider: &Decider<'_>,
    ) {
        let mut changed = false;
        if current.attribution != proposed.attribution && !shape.mail_kept() {
            *self
                .attribution
                .entry((current.attribution.clone(), proposed.attribution.clone()))
                .or_default() += g.count;
            changed = true;
        }
        if proposed.may_relay && !current.may_relay {
            let key = (
                g.client_ip.to_string(),
                g.sender.to_string(),
                proposed.attribution.clone(),
            );
            *self.relay_clients.entry(key).or_default() += g.count;
            changed = true;
        }
        let accepted_before = accepted_rcpts(current);
        changed |= self.mail(g, current, proposed, accepted_before);
        if current.mail == Verdict::Accepted && proposed.mail == Verdict::Accepted {
            changed |= self.rcpts(g, shape, current, proposed, decider);
        }
        let accepted_after = accepted_rcpts(proposed);
        if g.stored && accepted_before > 0 {
            if accepted_after == 0 {
                self.totals.lost_messages += g.count;
            } else if lost_rcpts(current, proposed) > 0 {
                self.totals.partial_messages += g.count;
            }
        }
        if !changed {
            let messages = if g.stored { g.count } else { 0 };
            let rcpts = g.count * shape.rcpts.len() as u64;
            self.unchanged.add(g.count, messages, rcpts);
        }
    }

    /// MAIL FROM decided differently; true when it was.
    fn mail(&mut self, g: &Group<'_>, current: &Outcome, proposed: &Outcome, rcpts: u64) -> bool {
        match (&current.mail, &proposed.mail) {
            (a, b) if a == b => false,
            (Verdict::Accepted, Verdict::Refused { .. }) => {
                self.refuse(g, "MAIL", &proposed.mail, None, g.count * rcpts);
                true
            }
            (Verdict::Refused { rule, .. }, Verdict::Refused { .. }) => {
                self.refuse(g, "MAIL", &proposed.mail, Some(rule.clone()), 0);
                true
            }
            (Verdict::Refused { .. }, Verdict::Accepted) => {
                // Its recipients were never tried: unknown.
                self.accept(g, "MAIL", &current.mail, false, 0);
                true
            }
            _ => false,
        }
    }

    /// RCPT TO and routes decided differently (MAIL FROM accepted by both); true when any.
    fn rcpts(
        &mut self,
        g: &Group<'_>,
        shape: &Shape,
        current: &Outcome,
        proposed: &Outcome,
        decider: &Decider<'_>,
    ) -> bool {
        let mut changed = false;
        // Rerouted recipients of this message, by domain and routes: the message counts
        // once per key.
        let mut moved: BTreeMap<(String, RouteKey, RouteKey), u64> = BTreeMap::new();
        let pairs = current.rcpts.iter().zip(&proposed.rcpts);
        for ((rcpt, _), ((was, was_route), (now, now_route))) in shape.rcpts.iter().zip(pairs) {
            match (was, now) {
                (Verdict::Accepted, Verdict::Accepted) => {
                    if let (true, Some(a), Some(b)) = (g.stored, was_route, now_route)
                        && a != b
                    {
                        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
                        let key = (domain.to_ascii_lowercase(), a.clone(), b.clone());
                        *moved.entry(key).or_default() += 1;
                        changed = true;
                    }
                }
                (a, b) if a == b => {}
                (Verdict::Accepted, Verdict::Refused { .. }) => {
                    self.refuse(g, "RCPT", now, None, g.count);
                    changed = true;
                }
                (Verdict::Refused { rule, .. }, Verdict::Refused { .. }) => {
                    self.refuse(g, "RCPT", now, Some(rule.clone()), g.count);
                    changed = true;
                }
                (Verdict::Refused { .. }, Verdict::Accepted) => {
                    let relay = decider.is_relay(rcpt);
                    if relay {
                        self.relay_recipients += g.count;
                    }
                    self.accept(g, "RCPT", was, relay, g.count);
                    changed = true;
                }
            }
        }
        for (key, rcpts) in moved {
            let e = self.rerouted.entry(key).or_default();
            e.0 += g.count;
            e.1 += g.count * rcpts;
        }
        changed
    }

    fn refuse(
        &mut self,
        g: &Group<'_>,
        stage: &'static str,
        now: &Verdict,
        was: Option<String>,
        recipients: u64,
    ) {
        let Verdict::Refused {
            rule,
            connector,
            reply,
        } = now
        else {
            return;
        };
        if was.is_none() {
            self.totals.refused_transactions += g.count;
            self.totals.refused_senders.insert(g.sender.to_string());
        }
        let key = (stage, rule.clone(), connector.clone(), was);
        let t = self.refused.entry(key).or_default();
        t.reply.clone_from(reply);
        t.add(g, recipients);
    }

    fn accept(
        &mut self,
        g: &Group<'_>,
        stage: &'static str,
        was: &Verdict,
        relay: bool,
        recipients: u64,
    ) {
        let Verdict::Refused {
            rule, connector, ..
        } = was
        else {
            return;
        };
        // MAIL FROM accepted: one command per transaction; RCPT TO: per recipient.
        self.totals.newly_accepted += if stage == "MAIL" { g.count } else { recipients };
        let key = (stage, rule.clone(), connector.clone(), relay);
        self.accepted.entry(key).or_default().add(g, recipients);
    }

    /// A recorded decision the current config does not reproduce.
    pub fn mismatch(&mut self, g: &Group<'_>, why: String) {
        self.mismatches.transactions += g.count;
        if self.mismatches.examples.len() < EXAMPLES {
            self.mismatches.examples.push(why);
        }
    }

    /// The report (`open_to_anyone`: under the current and the proposed config).
    pub fn finish(self, anyone: (bool, bool), period: PeriodText, replayed: Replayed) -> Impact {
        let relay = Relay {
            recipients: self.relay_recipients,
            clients: self
                .relay_clients
                .into_iter()
                .map(
                    |((client_ip, sender, connector), transactions)| RelayClient {
                        client_ip,
                        sender,
                        connector,
                        transactions,
                    },
                )
                .collect(),
            anyone: anyone.1,
            already_open: anyone.0 && anyone.1,
        };
        let opens_relay =
            relay.recipients > 0 || !relay.clients.is_empty() || (anyone.1 && !anyone.0);
        let mut impact = Impact {
            summary: String::new(),
            opens_relay,
            period,
            replayed,
            refused: refused_groups(self.refused),
            accepted: accepted_groups(self.accepted),
            relay,
            rerouted: rerouted(self.rerouted),
            attribution: self
                .attribution
                .into_iter()
                .map(|((from, to), transactions)| AttributionChange {
                    from,
                    to,
                    transactions,
                })
                .collect(),
            unchanged: self.unchanged,
            recorded_mismatches: self.mismatches,
            assumptions: Vec::new(),
        };
        impact.summary = summary(&impact, &self.totals);
        impact
    }
}

fn refused_groups(groups: BTreeMap<RefusedKey, GroupTally>) -> Vec<RefusedGroup> {
    groups
        .into_iter()
        .map(|((stage, rule, connector, was), t)| {
            let (senders, more_senders) = t.senders();
            RefusedGroup {
                stage: stage.to_string(),
                rule,
                connector,
                reply: t.reply.clone(),
                was,
                counts: t.counts,
                senders,
                more_senders,
            }
        })
        .collect()
}

fn accepted_groups(groups: BTreeMap<AcceptedKey, GroupTally>) -> Vec<AcceptedGroup> {
    groups
        .into_iter()
        .map(|((stage, was_rule, was_connector, relay), t)| {
            let (senders, more_senders) = t.senders();
            AcceptedGroup {
                stage: stage.to_string(),
                was_rule,
                was_connector,
                relay,
                counts: t.counts,
                senders,
                more_senders,
            }
        })
        .collect()
}

fn rerouted(routes: BTreeMap<(String, RouteKey, RouteKey), (u64, u64)>) -> Vec<Rerouted> {
    routes
        .into_iter()
        .map(|((domain, from, to), (messages, recipients))| Rerouted {
            from: route_text(from),
            to: route_text(to),
            domain,
            messages,
            recipients,
        })
        .collect()
}

fn accepted_rcpts(o: &Outcome) -> u64 {
    if o.mail != Verdict::Accepted {
        return 0;
    }
    o.rcpts
        .iter()
        .filter(|(v, _)| *v == Verdict::Accepted)
        .count() as u64
}

/// Recipients accepted under the current config and not under the proposed one.
fn lost_rcpts(current: &Outcome, proposed: &Outcome) -> usize {
    current
        .rcpts
        .iter()
        .zip(&proposed.rcpts)
        .filter(|((a, _), (b, _))| *a == Verdict::Accepted && *b != Verdict::Accepted)
        .count()
}

fn route_text(r: RouteKey) -> RouteText {
    RouteText {
        connector: r.connector,
        tls_level: r.tls_level.to_string(),
        route: r.text,
    }
}

/// Totals over every group, for the summary.
#[derive(Default)]
struct Totals {
    /// Recorded messages refused whole, and that lose some recipients.
    lost_messages: u64,
    partial_messages: u64,
    refused_transactions: u64,
    refused_senders: BTreeSet<String>,
    newly_accepted: u64,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The one-sentence answer (see [`Impact::summary`]).
fn summary(i: &Impact, t: &Totals) -> String {
    let mut parts = Vec::new();
    if t.refused_transactions > 0 {
        let what = if t.lost_messages > 0 {
            let mut s = plural(t.lost_messages, "message", "messages");
            if t.partial_messages > 0 {
                s.push_str(&format!(
                    " (and some recipients of {} more)",
                    t.partial_messages
                ));
            }
            s
        } else if t.partial_messages > 0 {
            format!(
                "some recipients of {}",
                plural(t.partial_messages, "message", "messages")
            )
        } else {
            plural(
                t.refused_transactions,
                "mail transaction",
                "mail transactions",
            )
        };
        parts.push(format!(
            "refused {what} from {}",
            plural(t.refused_senders.len() as u64, "sender", "senders")
        ));
    }
    if t.newly_accepted > 0 {
        parts.push(format!(
            "accepted {} refused until now",
            plural(t.newly_accepted, "command", "commands")
        ));
    }
    let rerouted: u64 = i.rerouted.iter().map(|r| r.recipients).sum();
    if rerouted > 0 {
        parts.push(format!(
            "sent {} by another route or TLS level",
            plural(rerouted, "recipient", "recipients")
        ));
    }
    let moved: u64 = i.attribution.iter().map(|a| a.transactions).sum();
    if moved > 0 && parts.is_empty() {
        parts.push(format!(
            "attributed {} to another inbound connector",
            plural(moved, "transaction", "transactions")
        ));
    }
    let unchanged = format!(
        "the {} recorded {}",
        plural(i.replayed.rows, "transaction", "transactions"),
        i.period.words
    );
    match (parts.is_empty(), i.opens_relay) {
        (true, false) => {
            return format!("This change would not have changed any decision about {unchanged}.");
        }
        (true, true) => {
            return format!(
                "OPENS RELAY: with this change {}; it would not have changed any decision about {unchanged}.",
                relay_words(&i.relay)
            );
        }
        _ => {}
    }
    let relay = if i.opens_relay { "OPENS RELAY: " } else { "" };
    let mut s = format!("{relay}This change would have {}", parts.join(", "));
    s.push_str(&format!(" {}", i.period.words));
    let senders = top_senders(i);
    if !senders.is_empty() {
        s.push_str(&format!(": {senders}"));
    }
    if i.opens_relay {
        s.push_str(&format!("; {}", relay_words(&i.relay)));
    }
    s.push('.');
    s
}

/// The most refused senders with their counts: `alice@fabrikam.test (30), ...`.
fn top_senders(i: &Impact) -> String {
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for g in i.refused.iter().filter(|g| g.was.is_none()) {
        for s in &g.senders {
            *by.entry(&s.sender).or_default() += s.counts.transactions;
        }
    }
    let mut all: Vec<(&str, u64)> = by.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = all
        .iter()
        .take(3)
        .map(|(s, n)| format!("{s} ({n})"))
        .collect();
    let mut text = shown.join(", ");
    if all.len() > 3 {
        text.push_str(", ...");
    }
    text
}

fn relay_words(r: &Relay) -> String {
    let mut parts = Vec::new();
    if r.anyone {
        parts.push("anyone could relay through it".to_string());
    }
    if !r.clients.is_empty() {
        parts.push(format!(
            "{} could relay to any domain",
            plural(
                r.clients.len() as u64,
                "recorded client",
                "recorded clients"
            )
        ));
    }
    if r.recipients > 0 {
        parts.push(format!(
            "{} outside the accepted domains would have been relayed",
            plural(r.recipients, "recorded recipient", "recorded recipients")
        ));
    }
    parts.join(", ")
}

impl Impact {
    /// The report as the CLI prints it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("{}\n\n", self.summary));
        out.push_str(&format!(
            "Replayed {} from {} to {} ({} distinct fact sets, {} ms)\n",
            plural(
                self.replayed.rows,
                "recorded transaction",
                "recorded transactions"
            ),
            self.period.since,
            self.period.until,
            self.replayed.decisions,
            self.replayed.milliseconds
        ));
        if self.opens_relay {
            out.push_str(&self.relay_text());
        }
        self.refused_text(&mut out);
        self.accepted_text(&mut out);
        if !self.rerouted.is_empty() {
            out.push_str("\nAnother route or TLS level:\n");
            for r in &self.rerouted {
                out.push_str(&format!(
                    "  {}: {} of {}\n    current:  {}\n    proposed: {}\n",
                    r.domain,
                    plural(r.recipients, "recipient", "recipients"),
                    plural(r.messages, "message", "messages"),
                    r.from.route,
                    r.to.route
                ));
            }
        }
        if !self.attribution.is_empty() {
            out.push_str("\nAnother inbound connector:\n");
            for a in &self.attribution {
                out.push_str(&format!(
                    "  {} -> {}: {}\n",
                    name_or_none(a.from.as_deref()),
                    name_or_none(a.to.as_deref()),
                    plural(a.transactions, "transaction", "transactions")
                ));
            }
        }
        out.push_str(&format!("\nUnchanged: {}\n", counts_text(&self.unchanged)));
        if self.recorded_mismatches.transactions > 0 {
            out.push_str(&format!(
                "\nNote: for {} the current config decides otherwise than the relay did (the config changed during the period?), e.g.:\n",
                plural(
                    self.recorded_mismatches.transactions,
                    "recorded transaction",
                    "recorded transactions"
                )
            ));
            for e in &self.recorded_mismatches.examples {
                out.push_str(&format!("  {e}\n"));
            }
        }
        out.push_str("\nAssumptions:\n");
        for a in &self.assumptions {
            out.push_str(&format!("  - {a}\n"));
        }
        out
    }

    fn relay_text(&self) -> String {
        let r = &self.relay;
        let mut out = String::from("\nOPENS RELAY\n");
        if r.anyone {
            out.push_str(
                "  anyone (an unknown address, no TLS, any sender) could relay to any domain\n",
            );
        }
        for c in &r.clients {
            out.push_str(&format!(
                "  client {} <{}> could relay to any domain through {} ({})\n",
                c.client_ip,
                c.sender,
                name_or_none(c.connector.as_deref()),
                plural(c.transactions, "transaction", "transactions")
            ));
        }
        if r.recipients > 0 {
            out.push_str(&format!(
                "  {} outside the accepted domains would have been relayed\n",
                plural(r.recipients, "recorded recipient", "recorded recipients")
            ));
        }
        out
    }

    fn refused_text(&self, out: &mut String) {
        if self.refused.is_empty() {
            return;
        }
        out.push_str("\nRefused:\n");
        for g in &self.refused {
            let was = g
                .was
                .as_ref()
                .map(|w| format!(" (refused already, by {w})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  at {} by {}{}{was}: {}\n    {}\n",
                g.stage,
                g.rule,
                of_connector(g.connector.as_deref()),
                counts_text(&g.counts),
                g.reply
            ));
            senders_text(out, &g.senders, g.more_senders);
        }
    }

    fn accepted_text(&self, out: &mut String) {
        if self.accepted.is_empty() {
            return;
        }
        out.push_str("\nAccepted (refused until now):\n");
        for g in &self.accepted {
            let relay = if g.relay { " RELAY" } else { "" };
            out.push_str(&format!(
                "  at {}{relay}, refused until now by {}{}: {}\n",
                g.stage,
                g.was_rule,
                of_connector(g.was_connector.as_deref()),
                counts_text(&g.counts)
            ));
            senders_text(out, &g.senders, g.more_senders);
        }
    }
}

/// ` of connector "X"`, or nothing.
fn of_connector(connector: Option<&str>) -> String {
    connector.map_or_else(String::new, |c| format!(" of connector \"{c}\""))
}

fn counts_text(c: &Counts) -> String {
    format!(
        "{} ({}, {})",
        plural(c.transactions, "transaction", "transactions"),
        plural(c.messages, "message", "messages"),
        plural(c.recipients, "recipient", "recipients")
    )
}

fn senders_text(out: &mut String, senders: &[SenderCounts], more: usize) {
    for s in senders {
        out.push_str(&format!(
            "    {:<40} {}\n",
            s.sender,
            counts_text(&s.counts)
        ));
    }
    if more > 0 {
        out.push_str(&format!("    ... and {more} more senders\n"));
    }
}
