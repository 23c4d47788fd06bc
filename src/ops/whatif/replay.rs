//! The second pass: each group's recorded facts reduced to a [`Shape`] (only what a
//! decision depends on: the sender's domain, not its local part; a recipient's domain and
//! whether its local part is `postmaster` or carries a route), decided once per shape and
//! policy by [`crate::ops::decide::decide`], and compared.
//!
//! Refusals that are not connector decisions (back pressure, size and recipient limits, an
//! invalid domain or SRS address, a spool error) are kept as recorded on both sides.

use std::net::IpAddr;

use foldhash::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::ops::decide::{Decisions, RecipientDecision, decide};
use crate::ops::{parse_recipient, parse_sender};
use crate::policy::Policy;
use crate::policy::inbound::Attribution;
use crate::policy::restrict::{
    InboundPolicy, Refusal, SessionFacts, is_accepted, is_relay_postmaster,
};
use crate::smtp::Reply;
use crate::trace::facts::TxFacts;

use super::collect::Group;

/// What a transaction's decisions depend on (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    pub ip: IpAddr,
    pub tls: bool,
    /// Names of the client certificate (all of them; `cert_trusted` says whether they count).
    pub cert_names: Vec<String>,
    pub cert_trusted: bool,
    /// The certificate's issuer DN (`TlsSenderCertificateIssuer`; counts only when trusted).
    pub cert_issuer: Option<String>,
    pub cert_problem: Option<String>,
    /// `""` for the null sender, else `s@domain`.
    pub sender: String,
    /// The rule that refused MAIL FROM, as recorded.
    pub mail_rule: Option<String>,
    /// Every recipient tried, reduced, with its recorded verdict (`Some(rule)`: refused).
    pub rcpts: Vec<(String, Option<String>)>,
}

impl Shape {
    /// The shape of a group; `None` when its row cannot be read (another format, an
    /// address that is not one).
    pub fn of(g: &Group<'_>) -> Option<Shape> {
        let facts = TxFacts::parse(g.facts)?;
        let mail_rule = (facts.end == "MAIL").then(|| g.rule.map(str::to_string));
        let mut rcpts: Vec<(String, Option<String>)> =
            facts.to.iter().map(|r| (r.to_string(), None)).collect();
        rcpts.extend(
            facts
                .no
                .iter()
                .map(|(r, rule)| (r.to_string(), Some(rule.to_string()))),
        );
        let cert = facts.cert.as_ref();
        Some(Shape {
            ip: g.client_ip,
            tls: g.tls,
            cert_names: cert.map_or_else(Vec::new, |c| {
                c.names.iter().map(|n| n.to_string()).collect()
            }),
            cert_trusted: cert.is_some_and(|c| c.trusted),
            cert_issuer: cert.map(|c| c.issuer.to_string()),
            cert_problem: cert.and_then(|c| c.problem.as_deref().map(str::to_string)),
            sender: reduce_sender(g.sender),
            mail_rule: mail_rule.flatten(),
            rcpts,
        })
    }

    fn facts(&self) -> SessionFacts<'_> {
        SessionFacts {
            ip: self.ip,
            tls: self.tls,
            trusted_cert_names: if self.cert_trusted {
                &self.cert_names
            } else {
                &[]
            },
            trusted_cert_issuer: self.cert_issuer.as_deref().filter(|_| self.cert_trusted),
            cert_problem: self.cert_problem.as_deref(),
        }
    }

    /// MAIL FROM was refused by a rule that is not a connector decision.
    pub fn mail_kept(&self) -> bool {
        self.mail_rule
            .as_deref()
            .is_some_and(|r| !is_policy_rule(r))
    }
}

fn is_policy_rule(rule: &str) -> bool {
    Refusal::RULES.contains(&rule)
}

/// A sender as far as decisions go: its domain.
fn reduce_sender(sender: &str) -> String {
    match parse_sender(sender) {
        Ok(None) => String::new(),
        Ok(Some(a)) if !a.domain.is_empty() => format!("s@{}", a.domain),
        _ => sender.to_string(),
    }
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Accepted,
    Refused {
        rule: String,
        connector: Option<String>,
        /// The reply, e.g. `451 5.7.3 STARTTLS is required ...` (empty for a refusal kept
        /// as recorded).
        reply: String,
    },
}

impl Verdict {
    fn refused(r: &Refusal) -> Verdict {
        let (code, enhanced, text) = r.reply_parts();
        Verdict::Refused {
            rule: r.rule().to_string(),
            connector: r.connector().map(str::to_string),
            reply: Reply::new(code, enhanced, text).to_string(),
        }
    }

    fn kept(rule: &str) -> Verdict {
        Verdict::Refused {
            rule: rule.to_string(),
            connector: None,
            reply: String::new(),
        }
    }

    pub fn rule(&self) -> Option<&str> {
        match self {
            Verdict::Accepted => None,
            Verdict::Refused { rule, .. } => Some(rule),
        }
    }
}

/// How a recipient leaves: the connector, the TLS level and the whole route in words.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct RouteKey {
    pub connector: Option<String>,
    pub tls_level: &'static str,
    pub text: String,
}

/// A shape decided under one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outcome {
    /// The inbound connector of the transaction.
    pub attribution: Option<String>,
    pub mail: Verdict,
    /// Aligned with `Shape::rcpts`; meaningful when `mail` is accepted.
    pub rcpts: Vec<(Verdict, Option<RouteKey>)>,
    /// This client (address, TLS, certificate, sender's domain) may relay to any domain.
    pub may_relay: bool,
}

/// The domain a relay probe asks about: never an accepted domain unless every domain is.
pub(super) const PROBE_RECIPIENT: &str = "relay-probe@relay-probe.invalid";

/// One policy, compiled once for a replay.
pub(super) struct Decider<'p> {
    pub policy: &'p Policy,
    inbound: InboundPolicy,
}

impl<'p> Decider<'p> {
    pub fn new(policy: &'p Policy) -> Self {
        Decider {
            policy,
            inbound: InboundPolicy::new(policy),
        }
    }

    /// Decides `shape`: the recipients recorded as refused by a rule that is not a
    /// connector decision keep their refusal, the others are decided again.
    pub fn outcome(&self, shape: &Shape) -> Outcome {
        let decided_rcpts: Vec<String> = shape
            .rcpts
            .iter()
            .filter(|(_, rule)| rule.as_deref().is_none_or(is_policy_rule))
            .map(|(r, _)| r.clone())
            .collect();
        let d = self.decide(shape, &shape.sender, &decided_rcpts);
        let attribution = d
            .attribution
            .map(|a| self.policy.inbound[a.index].name.clone());
        let mail = match (&shape.mail_rule, &d.sender, &d.mail) {
            (Some(rule), _, _) if shape.mail_kept() => Verdict::kept(rule),
            (_, Err(reply), _) => Verdict::kept(&format!("Syntax ({reply})")),
            (_, Ok(_), Err(r)) => Verdict::refused(r),
            (_, Ok(_), Ok(())) => Verdict::Accepted,
        };
        let mut fresh = d.recipients.iter();
        let rcpts = shape
            .rcpts
            .iter()
            .map(|(_, rule)| match rule {
                Some(rule) if !is_policy_rule(rule) => (Verdict::kept(rule), None),
                _ => fresh
                    .next()
                    .map_or((Verdict::kept("?"), None), rcpt_outcome),
            })
            .collect();
        Outcome {
            attribution,
            mail,
            rcpts,
            may_relay: self.may_relay(shape),
        }
    }

    /// Would this client be allowed to relay (MAIL FROM and a recipient outside the
    /// accepted domains both accepted)?
    pub fn may_relay(&self, shape: &Shape) -> bool {
        let d = self.decide(shape, &shape.sender, &[PROBE_RECIPIENT.to_string()]);
        d.mail_accepted() && d.recipients.iter().all(RecipientDecision::accepted)
    }

    /// May anyone relay: an unknown client (documentation addresses, no TLS, no
    /// certificate), with an unknown sender?
    pub fn open_to_anyone(&self) -> bool {
        ["192.0.2.1", "2001:db8::1"].iter().any(|ip| {
            let shape = Shape {
                ip: ip.parse().expect("a literal address"),
                tls: false,
                cert_names: Vec::new(),
                cert_trusted: false,
                cert_issuer: None,
                cert_problem: None,
                sender: "probe@relay-probe.invalid".into(),
                mail_rule: None,
                rcpts: Vec::new(),
            };
            self.may_relay(&shape)
        })
    }

    fn decide(&self, shape: &Shape, sender: &str, rcpts: &[String]) -> Decisions {
        // Ties between equally good connectors: the same seed on both sides of the
        // comparison, so that the same tie picks the same connector.
        let mut rng = StdRng::seed_from_u64(0);
        let facts = shape.facts();
        decide(self.policy, &self.inbound, &facts, sender, rcpts, &mut rng)
    }

    /// What `ip` means to this policy (see [`IpRole`]).
    fn ip_role(&self, ip: IpAddr) -> IpRole {
        let alone = SessionFacts {
            ip,
            tls: false,
            trusted_cert_names: &[],
            trusted_cert_issuer: None,
            cert_problem: None,
        };
        let holding = self
            .policy
            .inbound
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                !c.sender_ip_addresses.is_empty() && self.inbound.table().ip_allowed(*i, ip)
            })
            .map(|(i, _)| i as u32)
            .collect();
        (self.inbound.attribute(&alone, None), holding)
    }

    /// A newly accepted recipient outside the accepted domains (and not the relay's
    /// postmaster): relaying.
    pub fn is_relay(&self, rcpt: &str) -> bool {
        match parse_recipient(rcpt) {
            Ok(a) => {
                let domain = a.domain_lc();
                !is_accepted(self.policy, &domain)
                    && !is_relay_postmaster(self.policy, &a.local, &domain)
            }
            Err(_) => false,
        }
    }
}

fn rcpt_outcome(r: &RecipientDecision) -> (Verdict, Option<RouteKey>) {
    match r {
        RecipientDecision::Syntax { reply, .. } => {
            (Verdict::kept(&format!("Syntax ({reply})")), None)
        }
        RecipientDecision::Parsed {
            domain,
            verdict,
            route,
            ..
        } => {
            let verdict = match verdict {
                Ok(()) => Verdict::Accepted,
                Err(r) => Verdict::refused(r),
            };
            let route = route.as_ref().map(|d| RouteKey {
                connector: d.route.connector.clone(),
                tls_level: d.route.tls.level_name(),
                text: d.route.describe(domain),
            });
            (verdict, route)
        }
    }
}

/// What a client address means to one policy: the connector it attributes a session to
/// by itself (an OnPremises address, else a Partner one without SenderDomains), and the
/// connectors whose `SenderIPAddresses` hold it (`RestrictDomainsToIPAddresses`). Two
/// addresses alike in both policies get the same decisions, so an internet gateway's
/// thousands of client addresses are a handful of cases.
type IpRole = (Option<Attribution>, Vec<u32>);

/// What a sender's domain means to one policy: the Partner connector whose
/// `SenderDomains` match it (the domain counts for nothing else but reply texts).
type DomainRole = Option<usize>;

/// How a sender counts in both policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SenderRole {
    Null,
    Domain(DomainRole, DomainRole),
    /// No domain to go by: the sender itself (by its string number).
    Other(u32),
}

/// Groups with the same key get the same decisions: the same reduced facts, TLS and
/// recorded refusal, an address of the same roles and a sender of the same role.
type MemoKey = (u32, bool, Option<u32>, u32, SenderRole);

/// A shape and its outcomes under the current and the proposed config.
pub(super) struct Decided {
    pub shape: Shape,
    pub current: Outcome,
    pub proposed: Outcome,
}

/// Both policies' outcomes for every group, each distinct case decided once.
pub(super) struct Memo<'p> {
    pub current: Decider<'p>,
    pub proposed: Decider<'p>,
    /// `None`: facts that cannot be read.
    keys: HashMap<MemoKey, Option<usize>>,
    ip_roles: HashMap<IpAddr, u32>,
    role_ids: HashMap<(IpRole, IpRole), u32>,
    senders: HashMap<u32, SenderRole>,
    pub decided: Vec<Decided>,
}

impl<'p> Memo<'p> {
    pub fn new(current: &'p Policy, proposed: &'p Policy) -> Self {
        Memo {
            current: Decider::new(current),
            proposed: Decider::new(proposed),
            keys: HashMap::default(),
            ip_roles: HashMap::default(),
            role_ids: HashMap::default(),
            senders: HashMap::default(),
            decided: Vec::new(),
        }
    }

    /// The index of `g`'s outcomes in `decided`, deciding them the first time a group of
    /// the same key comes; `None` when its facts cannot be read.
    pub fn get(&mut self, g: &Group<'_>) -> Option<usize> {
        let key = (
            g.facts_id,
            g.tls,
            g.rule_id,
            self.ip_role(g.client_ip),
            self.sender_role(g),
        );
        if let Some(&i) = self.keys.get(&key) {
            return i;
        }
        let i = Shape::of(g).map(|shape| {
            self.decided.push(Decided {
                current: self.current.outcome(&shape),
                proposed: self.proposed.outcome(&shape),
                shape,
            });
            self.decided.len() - 1
        });
        self.keys.insert(key, i);
        i
    }

    /// How many distinct cases were decided.
    pub fn len(&self) -> usize {
        self.decided.len()
    }

    /// The number of `ip`'s roles in both policies.
    fn ip_role(&mut self, ip: IpAddr) -> u32 {
        if let Some(&r) = self.ip_roles.get(&ip) {
            return r;
        }
        let roles = (self.current.ip_role(ip), self.proposed.ip_role(ip));
        let next = self.role_ids.len() as u32;
        let r = *self.role_ids.entry(roles).or_insert(next);
        self.ip_roles.insert(ip, r);
        r
    }

    fn sender_role(&mut self, g: &Group<'_>) -> SenderRole {
        if let Some(&r) = self.senders.get(&g.sender_id) {
            return r;
        }
        // The session's `local@domain`: a domain never holds an `@`.
        let role = match g.sender.rsplit_once('@') {
            _ if g.sender.is_empty() => SenderRole::Null,
            Some((_, domain)) if !domain.is_empty() => {
                let of = |d: &Decider<'_>| d.inbound.table().sender_domain_connector(domain);
                SenderRole::Domain(of(&self.current), of(&self.proposed))
            }
            _ => SenderRole::Other(g.sender_id),
        };
        self.senders.insert(g.sender_id, role);
        role
    }
}

/// Where the current config's decision differs from what the trace recorded for a group:
/// the config changed during the period, or the facts were not enough. A sentence, or
/// `None` when they agree.
pub(super) fn recorded_mismatch(g: &Group<'_>, shape: &Shape, current: &Outcome) -> Option<String> {
    if shape.mail_kept() {
        return None;
    }
    let who = || format!("{} <{}>", g.client_ip, g.sender);
    if g.connector != current.attribution.as_deref() {
        return Some(format!(
            "{}: recorded inbound connector {}, the current config attributes it to {}",
            who(),
            name_or_none(g.connector),
            name_or_none(current.attribution.as_deref())
        ));
    }
    if shape.mail_rule.as_deref() != current.mail.rule() {
        return Some(format!(
            "{}: MAIL FROM recorded as {}, the current config gives {}",
            who(),
            rule_or_accepted(shape.mail_rule.as_deref()),
            rule_or_accepted(current.mail.rule())
        ));
    }
    if current.mail != Verdict::Accepted {
        return None;
    }
    let ((rcpt, recorded), (now, _)) = shape
        .rcpts
        .iter()
        .zip(&current.rcpts)
        .find(|((_, recorded), (now, _))| recorded.as_deref() != now.rule())?;
    // The recipient is reduced to its domain (or postmaster, or a routed local part).
    let rcpt = rcpt.strip_prefix("u@").map_or_else(
        || rcpt.to_string(),
        |domain| format!("a recipient at {domain}"),
    );
    Some(format!(
        "{}: RCPT TO {rcpt} recorded as {}, the current config gives {}",
        who(),
        rule_or_accepted(recorded.as_deref()),
        rule_or_accepted(now.rule())
    ))
}

pub(super) fn name_or_none(name: Option<&str>) -> String {
    name.map_or_else(|| "none (anonymous)".to_string(), |n| format!("\"{n}\""))
}

fn rule_or_accepted(rule: Option<&str>) -> String {
    rule.map_or_else(|| "accepted".to_string(), |r| format!("refused ({r})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_keep_only_their_domain() {
        assert_eq!(reduce_sender("Alice@Fabrikam.test"), "s@Fabrikam.test");
        assert_eq!(reduce_sender(""), "");
        assert_eq!(reduce_sender("not an address"), "not an address");
    }
}
