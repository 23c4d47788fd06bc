//! One transaction's decisions, made by the code the SMTP session uses: the session's
//! command parser for the addresses, `InboundPolicy::check_mail` (attribution and
//! `RequireTls`), `InboundPolicy::check_recipient` (postmaster, routing characters,
//! restrictions, anti-relay), `message_connector` (the connector that counts for the
//! message) and `select_route_with_rng` for each accepted recipient.
//!
//! The policy explainer ([`super::explain`]) and the change impact preview
//! ([`super::whatif`]) both call [`decide`]; neither holds a copy of the decision logic.
//! Only the facts differ: the explainer takes them from a question (an IP and a
//! certificate file), the preview from the trace's `Session` rows.

use rand::RngCore;

use crate::policy::inbound::Attribution;
use crate::policy::restrict::{InboundPolicy, Refusal, SessionFacts, message_connector};
use crate::policy::route::{RouteDecision, select_route_with_rng};
use crate::policy::{ConnectorType, Policy};
use crate::smtp::Reply;
use crate::smtp::command::Address;

use super::{parse_recipient, parse_sender};

/// What the relay decides for a transaction.
#[derive(Debug, Clone)]
pub struct Decisions {
    /// MAIL FROM: `Err` is the syntax error the session would answer; `Ok(None)` the null
    /// sender.
    pub sender: Result<Option<Address>, Reply>,
    /// The sender's domain, lower-cased (`None`: the null sender or a syntax error).
    pub sender_domain: Option<String>,
    /// The inbound connector of the transaction (with the sender's domain).
    pub attribution: Option<Attribution>,
    /// `RequireTls` at MAIL FROM (`Ok` too when the sender does not parse).
    pub mail: Result<(), Refusal>,
    /// Every RCPT TO, in order, as the session would answer it.
    pub recipients: Vec<RecipientDecision>,
    /// The message, made of the accepted recipients, arrived from outside the organization
    /// (not through an OnPremises connector): `RouteAllMessagesViaOnPremises`.
    pub from_outside_org: bool,
}

impl Decisions {
    /// MAIL FROM is accepted.
    pub fn mail_accepted(&self) -> bool {
        self.sender.is_ok() && self.mail.is_ok()
    }
}

/// One RCPT TO.
#[derive(Debug, Clone)]
pub enum RecipientDecision {
    /// The address does not parse: the session's reply.
    Syntax { text: String, reply: Reply },
    Parsed {
        /// As the session keeps it (`<postmaster>` gets the relay's Fqdn).
        address: Address,
        /// Lower-case domain.
        domain: String,
        verdict: Result<(), Refusal>,
        /// For an accepted recipient: the route the queue would pick (boxed: a route is
        /// large, and most decisions in a replay are refusals or have none yet).
        route: Option<Box<RouteDecision>>,
    },
}

impl RecipientDecision {
    pub fn accepted(&self) -> bool {
        matches!(
            self,
            RecipientDecision::Parsed {
                verdict: Ok(()),
                ..
            }
        )
    }
}

/// Decides a transaction (see the module documentation). `route_rng` breaks ties between
/// equally good outbound connectors (delivery uses the thread RNG; a replay passes a
/// seeded one so that two policies with the same tie pick alike).
pub fn decide(
    policy: &Policy,
    inbound: &InboundPolicy,
    facts: &SessionFacts<'_>,
    sender: &str,
    recipients: &[String],
    route_rng: &mut dyn RngCore,
) -> Decisions {
    let sender = parse_sender(sender);
    let sender_domain = match &sender {
        Ok(Some(a)) => Some(a.domain_lc()),
        _ => None,
    };
    let (attribution, mail) = match &sender {
        Ok(_) => inbound.check_mail(policy, facts, sender_domain.as_deref()),
        Err(_) => (None, Ok(())),
    };
    let mut decided: Vec<RecipientDecision> = recipients
        .iter()
        .map(|r| {
            recipient(
                policy,
                inbound,
                facts,
                attribution,
                sender_domain.as_deref(),
                r,
            )
        })
        .collect();
    // Routes: as the queue routes the message made of the accepted recipients.
    let accepted_domains: Vec<&str> = decided
        .iter()
        .filter_map(|r| match r {
            RecipientDecision::Parsed {
                domain,
                verdict: Ok(()),
                ..
            } => Some(domain.as_str()),
            _ => None,
        })
        .collect();
    let from_outside_org = !message_connector(policy, attribution, &accepted_domains)
        .is_some_and(|c| c.connector_type == ConnectorType::OnPremises);
    for r in &mut decided {
        if let RecipientDecision::Parsed {
            domain,
            verdict: Ok(()),
            route,
            ..
        } = r
        {
            *route = Some(Box::new(select_route_with_rng(
                policy,
                domain,
                from_outside_org,
                route_rng,
            )));
        }
    }
    Decisions {
        sender,
        sender_domain,
        attribution,
        mail,
        recipients: decided,
        from_outside_org,
    }
}

/// One RCPT TO as the session answers it (its parser, then `check_recipient`).
fn recipient(
    policy: &Policy,
    inbound: &InboundPolicy,
    facts: &SessionFacts<'_>,
    attribution: Option<Attribution>,
    sender_domain: Option<&str>,
    text: &str,
) -> RecipientDecision {
    let mut address = match parse_recipient(text) {
        Ok(a) => a,
        Err(reply) => {
            return RecipientDecision::Syntax {
                text: text.to_string(),
                reply,
            };
        }
    };
    if address.domain.is_empty() {
        // <postmaster> is the relay's own postmaster (the session does the same).
        address.domain = policy.relay.fqdn.clone();
    }
    let domain = address.domain_lc();
    let verdict = inbound.check_recipient(
        policy,
        facts,
        attribution,
        sender_domain,
        &address.local,
        &domain,
    );
    RecipientDecision::Parsed {
        address,
        domain,
        verdict,
        route: None,
    }
}
