//! Outbound delivery: route selection per recipient, next hops, the SMTP client, and the
//! classification of every outcome as delivered / temporary / permanent.

pub mod client;
pub mod dane;
pub mod errpolicy;
mod events;
pub mod identity;
pub mod mta_sts;
pub mod nexthop;
pub mod pool;
pub mod protolog;
pub mod reply;
pub mod requiretls;
pub mod rewrite;
pub mod tls;

/// Why a recipient was not delivered (recorded in the trace and used in DSNs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The remote SMTP reply code, when the failure is a remote reply.
    pub code: Option<u16>,
    /// RFC 3463 enhanced status code, e.g. `4.4.318` (the remote's own when it sent one).
    pub enhanced: String,
    pub text: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "{code} {} {}", self.enhanced, self.text),
            None => write!(f, "{} {}", self.enhanced, self.text),
        }
    }
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Accepted by the next hop; `reply` is the final reply to DATA.
    Delivered { reply: String },
    /// Deferred: retry later.
    Temporary(Failure),
    /// Failed: return to the sender.
    Permanent(Failure),
}

impl DeliveryStatus {
    pub fn is_delivered(&self) -> bool {
        matches!(self, DeliveryStatus::Delivered { .. })
    }
    pub fn is_temporary(&self) -> bool {
        matches!(self, DeliveryStatus::Temporary(_))
    }
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryStatus::Permanent(_))
    }
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            DeliveryStatus::Delivered { .. } => None,
            DeliveryStatus::Temporary(f) | DeliveryStatus::Permanent(f) => Some(f),
        }
    }
}

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::dns::Resolver;
pub use crate::message::data::Data;
use crate::policy::route::{Route, RouteDecision, RouteTarget, TlsPolicy, select_route};
use crate::policy::{AuthMechanism, DomainPattern, Policy, TlsLevel};
use crate::trace::Events;

use client::{
    ClientConfig, Envelope, ProtocolLogger, Secret, SessionError, SmtpAuth, StartTls, TlsInfo,
};
use nexthop::resolve_next_hops;
use tls::TlsContext;

/// One message to deliver to some of its recipients.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryJob<'a> {
    /// Queue id (logs and trace).
    pub id: &'a str,
    /// `""` = the null sender.
    pub mail_from: &'a str,
    /// The recipients still pending.
    pub recipients: &'a [String],
    /// The full message, CRLF line endings, not dot-stuffed (large ones partly in the spool
    /// file, see `message::data`).
    pub data: Data<'a>,
    /// The message arrived from outside the organization (RouteAllMessagesViaOnPremises).
    pub from_outside_org: bool,
    /// RFC 8689 REQUIRETLS (see [`requiretls`]).
    pub requiretls: bool,
}

/// The outcome for one recipient of a [`DeliveryJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub recipient: String,
    pub status: DeliveryStatus,
    /// The connector whose route was used (`None`: default MX route).
    pub connector: Option<String>,
    /// The host that gave the answer, as `host [ip]` (`None` if no host answered).
    pub remote_host: Option<String>,
    /// The TestMode connector that would have routed this recipient.
    pub would_route: Option<String>,
    /// TLS facts of the session that gave the answer (`None`: plaintext or no session).
    pub tls: Option<TlsInfo>,
    /// The failure is the next hop's, not this message's: no address gave a usable session
    /// (connect, greeting, EHLO, TLS level, authentication), its next hops could not be
    /// resolved, or the route's client settings are unusable. The queue then puts the whole
    /// delivery queue in Retry instead of retrying this message alone.
    pub hop_failure: bool,
}

/// Tunables of the delivery engine that are not in the policy.
#[derive(Debug, Clone)]
pub struct DelivererOptions {
    pub connect_timeout: Duration,
    /// Overrides every route's inactivity timeout (tests).
    pub command_timeout: Option<Duration>,
    /// Wait for the reply to the final "." (RFC 5321 §4.5.3.2.6: 10 minutes).
    pub data_end_timeout: Duration,
}

impl Default for DelivererOptions {
    fn default() -> Self {
        DelivererOptions {
            connect_timeout: Duration::from_secs(30),
            command_timeout: None,
            data_end_timeout: Duration::from_secs(600),
        }
    }
}

/// The delivery engine the queue calls: routes, next hops, SMTP sessions, outcomes.
pub struct Deliverer {
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
    tls: Result<TlsContext, String>,
    options: DelivererOptions,
    /// `[Relay] ExternalDnsServers`, for Send connectors with `UseExternalDNSServersEnabled`.
    external_resolver: Option<Arc<dyn Resolver>>,
    /// Kept connections (`SmtpMaxMessagesPerConnection`).
    pool: pool::Pool,
    /// `ProtocolLogDir`, for connectors with `ProtocolLoggingLevel = "Verbose"`.
    protocol_log: Arc<protolog::ProtocolLog>,
    /// SRS signer for `SenderRewritingEnabled` routes (see [`rewrite`]).
    srs: Option<Arc<crate::message::srs::Srs>>,
    /// Trace events (`Routed`, `Attempt`); `None`: none are built at all.
    events: Option<Events>,
    /// MTA-STS (RFC 8461) for MX routes; `None`: not applied (see [`mta_sts`]).
    mta_sts: Option<Arc<mta_sts::MtaSts>>,
    /// TLS-RPT results of each attempt (`TlsRptEnabled`); see [`tlsrpt_record`].
    tlsrpt: Option<crate::tlsrpt::Recorder>,
}

/// The delivery queue of a recipient, and the unit of one SMTP transaction: the route, and
/// the recipient domain when the next hop depends on it (MX routes, and `DomainValidation`
/// without `TlsDomain`, whose name check is the domain). The queue keeps one delivery queue
/// per key (Exchange's per-next-hop queues); the connection pool keys sessions by it too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub route: Route,
    pub domain: Option<String>,
}

impl QueueKey {
    fn new(route: Route, domain: &str) -> QueueKey {
        let per_domain = route.target == RouteTarget::Mx
            || matches!(
                route.tls,
                TlsPolicy::Required(TlsLevel::DomainValidation, None)
            );
        QueueKey {
            domain: per_domain.then(|| domain.to_string()),
            route,
        }
    }

    /// Get-Queue's `NextHopDomain`: the recipient domain of an MX queue, the smart hosts of
    /// a smart-host queue (`127.0.0.1:2526, mail.fabrikam.test:25`).
    pub fn next_hop_domain(&self) -> String {
        match (&self.route.target, &self.domain) {
            (RouteTarget::Mx, Some(d)) => d.clone(),
            _ => self
                .route
                .next_hops_text("")
                .trim_start_matches("smart hosts ")
                .to_string(),
        }
    }

    /// Get-Queue's `DeliveryType`.
    pub fn delivery_type(&self) -> &'static str {
        match self.route.target {
            RouteTarget::Mx => "DnsConnectorDelivery",
            RouteTarget::SmartHosts(_) => "SmartHostConnectorDelivery",
        }
    }
}

/// How a route group ended, before the error policies and per-recipient outcomes.
enum GroupResult {
    /// One host ran the transaction: a status per recipient, in order.
    Transaction {
        statuses: Vec<DeliveryStatus>,
        remote: String,
        tls: Option<TlsInfo>,
    },
    /// The same status for every recipient. `hop_failure`: the next hop as a whole could
    /// not be used (see [`RecipientOutcome::hop_failure`]).
    All {
        status: DeliveryStatus,
        remote: Option<String>,
        tls: Option<TlsInfo>,
        hop_failure: bool,
    },
}

impl GroupResult {
    fn all(status: DeliveryStatus) -> GroupResult {
        GroupResult::All {
            status,
            remote: None,
            tls: None,
            hop_failure: false,
        }
    }

    /// A temporary failure of the whole next hop (no usable connection).
    fn hop_down(failure: Failure, remote: Option<String>) -> GroupResult {
        GroupResult::All {
            status: DeliveryStatus::Temporary(failure),
            remote,
            tls: None,
            hop_failure: true,
        }
    }
}

/// Failures at these stages say nothing about the message: the host could not be used at
/// all (no connection, no greeting, EHLO, TLS level or authentication not met).
fn is_connection_level(stage: client::Stage) -> bool {
    use client::Stage::*;
    matches!(stage, Connect | Greeting | Hello | StartTls | Auth)
}

impl Deliverer {
    pub fn new(policy: Arc<Policy>, resolver: Arc<dyn Resolver>) -> Self {
        let crls = &policy.relay.revocation_lists;
        let tls = TlsContext::new(policy.relay.trusted_ca_file.as_deref(), crls)
            .or_else(|e| {
                tracing::error!(error = %e, "TLS context unusable; trying the webpki roots only");
                // Never without the CRLs: that would accept revoked certificates.
                TlsContext::new(None, crls)
            })
            .map_err(|e| e.to_string());
        let protocol_log = protolog::ProtocolLog::new(policy.relay.protocol_log_dir.clone());
        Deliverer {
            policy,
            resolver,
            tls,
            options: DelivererOptions::default(),
            external_resolver: None,
            pool: pool::Pool::new(),
            protocol_log,
            srs: None,
            events: None,
            mta_sts: None,
            tlsrpt: None,
        }
    }

    /// Applies MTA-STS to MX routes whose `MtaStsMode` is `Opportunistic`, with the
    /// policy cache in `store` (`DataDir/mta-sts.sqlite`; `None`: memory only).
    pub fn with_mta_sts(
        mut self,
        settings: &mta_sts::Settings,
        store: Option<Arc<mta_sts::cache::Store>>,
    ) -> Self {
        let tls = self.tls.as_ref().ok().cloned();
        self.mta_sts = Some(mta_sts::MtaSts::new(
            self.resolver.clone(),
            tls,
            store,
            settings,
        ));
        self
    }

    /// Emits a `Routed` event per recipient and an `Attempt` event per session with a next
    /// hop (see [`events`]). Without it no event is built.
    /// Records the TLS outcome of every MX attempt for TLS-RPT.
    pub fn with_tlsrpt(mut self, recorder: Option<crate::tlsrpt::Recorder>) -> Self {
        self.tlsrpt = recorder;
        self
    }

    pub fn with_events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }

    /// The resolver of `[Relay] ExternalDnsServers` (Send connectors with
    /// `UseExternalDNSServersEnabled = true`; without one they use the main resolver).
    pub fn with_external_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.external_resolver = Some(resolver);
        self
    }

    /// The SRS signer for `SenderRewritingEnabled` routes.
    pub fn with_srs(mut self, srs: Option<Arc<crate::message::srs::Srs>>) -> Self {
        self.srs = srs;
        self
    }

    pub fn with_options(mut self, options: DelivererOptions) -> Self {
        self.options = options;
        self
    }

    /// Delivers one message to the given recipients: groups them by route (one SMTP
    /// transaction per group, groups in parallel), tries next hops in order (every address of
    /// a host before the next host), and returns one outcome per recipient in input order.
    pub async fn deliver(&self, job: &DeliveryJob<'_>) -> Vec<RecipientOutcome> {
        self.deliver_routed(job, None).await
    }

    /// Like [`Self::deliver`], but every recipient takes `route`, whatever route selection
    /// would choose for its domain: connector validation proves that a connector works,
    /// including for recipients it would not normally carry.
    pub async fn deliver_via(&self, job: &DeliveryJob<'_>, route: &Route) -> Vec<RecipientOutcome> {
        self.deliver_routed(job, Some(route)).await
    }

    /// The delivery queue of one recipient: route selection only, no I/O. An address
    /// that can never be routed fails now (5.1.3 / 5.1.2).
    pub fn queue_key(&self, recipient: &str, from_outside_org: bool) -> Result<QueueKey, Failure> {
        let domain = recipient_domain(recipient)?;
        let decision = select_route(&self.policy, &domain, from_outside_org);
        Ok(QueueKey::new(decision.route, &domain))
    }

    /// Facts shared by the trace events of one message (`None` without events).
    fn message_facts<'a>(&'a self, job: &DeliveryJob<'a>) -> Option<events::MessageFacts<'a>> {
        let events = self.events.as_ref()?;
        Some(events::MessageFacts {
            events,
            queue_id: job.id,
            message_id: crate::message::message_id(job.data.head()),
            sender: job.mail_from,
            crls: !self.policy.relay.revocation_lists.is_empty(),
        })
    }

    async fn deliver_routed(
        &self,
        job: &DeliveryJob<'_>,
        forced: Option<&Route>,
    ) -> Vec<RecipientOutcome> {
        let facts = self.message_facts(job);
        let mut outcomes: Vec<Option<RecipientOutcome>> = vec![None; job.recipients.len()];
        let mut decisions: HashMap<String, RouteDecision> = HashMap::new();
        let mut groups: Vec<(QueueKey, Vec<usize>)> = Vec::new();
        // TestMode results are per domain, while groups are per route.
        let mut would_route: Vec<Option<String>> = vec![None; job.recipients.len()];

        for (i, rcpt) in job.recipients.iter().enumerate() {
            let domain = match recipient_domain(rcpt) {
                Ok(d) => d,
                Err(failure) => {
                    outcomes[i] = Some(RecipientOutcome {
                        recipient: rcpt.clone(),
                        status: DeliveryStatus::Permanent(failure),
                        connector: None,
                        remote_host: None,
                        would_route: None,
                        tls: None,
                        hop_failure: false,
                    });
                    continue;
                }
            };
            let decision = decisions
                .entry(domain.clone())
                .or_insert_with(|| match forced {
                    Some(route) => RouteDecision {
                        route: route.clone(),
                        would_route: None,
                    },
                    None => select_route(&self.policy, &domain, job.from_outside_org),
                });
            if let Some(f) = &facts {
                f.routed(rcpt, &domain, decision, forced.is_some());
            }
            would_route[i] = decision.would_route.clone();
            let key = QueueKey::new(decision.route.clone(), &domain);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, idxs)) => idxs.push(i),
                None => groups.push((key, vec![i])),
            }
        }

        let tasks = groups
            .iter()
            .map(|(key, idxs)| {
                let domain = key
                    .domain
                    .clone()
                    .or_else(|| recipient_domain(&job.recipients[idxs[0]]).ok())
                    .unwrap_or_default();
                self.deliver_group(job, facts.as_ref(), key, domain, idxs)
            })
            .collect();
        for group in join_all(tasks).await {
            for (i, mut outcome) in group {
                outcome.would_route = would_route[i].take();
                outcomes[i] = Some(outcome);
            }
        }
        outcomes.into_iter().flatten().collect()
    }

    /// The client settings for a route.
    fn client_config(&self, route: &Route, domain: &str) -> Result<ClientConfig, Failure> {
        let tls_fail = |text: String| Failure {
            code: None,
            enhanced: "4.7.320".into(),
            text,
        };
        let starttls = match (&route.tls, &self.tls) {
            (TlsPolicy::Never, _) => StartTls::Never,
            (_, Err(e)) => return Err(tls_fail(format!("TLS unavailable: {e}"))),
            (TlsPolicy::Opportunistic, Ok(ctx)) => StartTls::Opportunistic(ctx.opportunistic()),
            (TlsPolicy::Required(level, wanted), Ok(ctx)) => {
                // policy.md: a blank TlsDomain means the recipient's domain (the domain
                // itself or any subdomain of it, e.g. its MX hosts).
                let wanted = wanted
                    .clone()
                    .unwrap_or_else(|| DomainPattern::Subdomains(domain.to_string()));
                StartTls::Required(
                    ctx.client_config(*level, Some(wanted))
                        .map_err(|e| tls_fail(e.to_string()))?,
                )
            }
        };
        let starttls = match (starttls, self.client_identity(route)?) {
            (StartTls::Opportunistic(c), Some(id)) => {
                StartTls::Opportunistic(identity::with_identity(&c, &id))
            }
            (StartTls::Required(c), Some(id)) => {
                StartTls::Required(identity::with_identity(&c, &id))
            }
            (s, _) => s,
        };
        let relay = &self.policy.relay;
        Ok(ClientConfig {
            helo_name: route.helo.clone().unwrap_or_else(|| relay.fqdn.clone()),
            force_helo: route.force_helo,
            connect_timeout: self.options.connect_timeout,
            command_timeout: self
                .options
                .command_timeout
                .or(route.inactivity_timeout)
                .unwrap_or(relay.connection_inactivity_timeout),
            data_end_timeout: self.options.data_end_timeout,
            source_ip: route.source_ip,
            starttls,
            auth: self.smtp_auth(route)?,
            protocol_log: route.send.protocol_log.then(|| ProtocolLogger {
                log: self.protocol_log.clone(),
                connector: route.connector.clone().unwrap_or_default(),
            }),
            requiretls: false,
        })
    }

    /// The client certificate to present: `TlsCertificateName`, or with
    /// `DomainSecureEnabled` and no name, the relay's own `TlsCertificate`.
    fn client_identity(&self, route: &Route) -> Result<Option<identity::ClientIdentity>, Failure> {
        let fail = |text: String| Failure {
            code: None,
            enhanced: "4.7.320".into(),
            text,
        };
        let relay = &self.policy.relay;
        let (cert, key) = match (&route.send.tls_certificate_name, route.send.domain_secure) {
            (Some(name), _) => {
                let identities = relay.client_identities();
                let c = identity::find(name, &identities).map_err(fail)?;
                (c.certificate.clone(), c.private_key.clone())
            }
            (None, true) => match (&relay.tls_certificate, &relay.tls_private_key) {
                (Some(c), Some(k)) => (c.clone(), k.clone()),
                _ => {
                    return Err(fail(
                        "DomainSecureEnabled: no certificate to present; set TlsCertificateName or [Relay] TlsCertificate".into(),
                    ));
                }
            },
            (None, false) => return Ok(None),
        };
        identity::load(&cert, &key, &tls::provider())
            .map(Some)
            .map_err(|e| fail(format!("client certificate: {e}")))
    }

    /// AUTH credentials of a `BasicAuth` / `BasicAuthRequireTLS` route; the password is
    /// read from `PasswordFile` now (one trailing newline removed).
    fn smtp_auth(&self, route: &Route) -> Result<Option<SmtpAuth>, Failure> {
        let require_tls = match route.send.auth {
            AuthMechanism::BasicAuth => false,
            AuthMechanism::BasicAuthRequireTls => true,
            AuthMechanism::None | AuthMechanism::ExternalAuthoritative => return Ok(None),
        };
        let Some(cred) = &route.send.credential else {
            return Ok(None);
        };
        let mut password = std::fs::read_to_string(&cred.password_file).map_err(|e| Failure {
            code: None,
            enhanced: "4.7.0".into(),
            text: format!(
                "cannot read AuthenticationCredential.PasswordFile {}: {e}",
                cred.password_file.display()
            ),
        })?;
        if password.ends_with('\n') {
            password.pop();
            if password.ends_with('\r') {
                password.pop();
            }
        }
        Ok(Some(SmtpAuth {
            user: cred.user_name.clone(),
            password: Secret::new(password),
            require_tls,
        }))
    }

    /// One route group: next hops, then hosts in order until one gives an answer; one
    /// outcome per recipient, with the route's error policies applied.
    async fn deliver_group(
        &self,
        job: &DeliveryJob<'_>,
        facts: Option<&events::MessageFacts<'_>>,
        key: &QueueKey,
        domain: String,
        idxs: &[usize],
    ) -> Vec<(usize, RecipientOutcome)> {
        let recipients: Vec<String> = idxs.iter().map(|&i| job.recipients[i].clone()).collect();
        let result = self.run_group(job, facts, key, &domain, &recipients).await;
        group_outcomes(&key.route, job, idxs, result)
    }

    async fn run_group(
        &self,
        job: &DeliveryJob<'_>,
        facts: Option<&events::MessageFacts<'_>>,
        key: &QueueKey,
        domain: &str,
        recipients: &[String],
    ) -> GroupResult {
        let route = &key.route;
        if let Some(max) = route.max_message_size
            && job.data.len() > max
        {
            return GroupResult::all(DeliveryStatus::Permanent(Failure {
                code: None,
                enhanced: "5.3.4".into(),
                text: format!(
                    "message size {} exceeds the MaxMessageSize {max} of connector {:?}",
                    job.data.len(),
                    route.connector.as_deref().unwrap_or("default")
                ),
            }));
        }
        let cfg = match self.client_config(route, domain) {
            Ok(c) => c,
            Err(f) => return GroupResult::hop_down(f, None),
        };
        let resolver = match &self.external_resolver {
            Some(r) if route.send.external_dns => r.as_ref(),
            _ => self.resolver.as_ref(),
        };
        let hops = match resolve_next_hops(resolver, route, domain).await {
            Ok(h) => h,
            Err(e) => {
                tracing::info!(id = job.id, domain, error = %e, "no next hop");
                let status = if e.is_permanent() {
                    DeliveryStatus::Permanent(e.to_failure())
                } else {
                    DeliveryStatus::Temporary(e.to_failure())
                };
                let status = errpolicy::apply_dns(&route.send.error_policies, status);
                return GroupResult::All {
                    hop_failure: status.is_temporary(),
                    status,
                    remote: None,
                    tls: None,
                };
            }
        };
        // Outbound headers (CloudServicesMailEnabled) and SRS, once per route group. Only
        // the head is rewritten: it holds the header block.
        let (mail_from, head) = rewrite::for_route(
            &self.policy,
            self.srs.as_deref(),
            route,
            job.mail_from,
            job.data.head(),
        );
        let per_host = match job.requiretls {
            true => match self.requiretls_configs(route, &cfg, domain, &hops) {
                Ok(c) => Some(c),
                Err(f) => return GroupResult::hop_down(f, None),
            },
            false => None,
        };
        let env = Envelope {
            mail_from: &mail_from,
            recipients,
            data: job.data.with_head(&head),
            requiretls: job.requiretls,
        };
        let mut target = Target {
            key,
            domain,
            cfg: &cfg,
            per_host: per_host.as_ref(),
            tls_required_no: requiretls::tls_required_no(job.data.head(), job.requiretls),
            hops: &hops,
            sts: self.sts_lookup(route, domain, false).await,
            resolver,
        };
        let result = self.try_hosts(job, facts, &target, &env).await;
        // RFC 8461 §5.1: before failing because of the policy, check the TXT id live; a
        // new policy is fetched and the hosts are tried again under it, once.
        if sts_failed(&result)
            && let Some(fresh) = self.sts_lookup(route, domain, true).await
            && fresh.cached.as_ref().map(|c| &c.id)
                != target
                    .sts
                    .as_ref()
                    .and_then(|a| a.cached.as_ref())
                    .map(|c| &c.id)
        {
            tracing::info!(id = job.id, domain, policy = %fresh.summary(), "MTA-STS policy changed; trying again");
            target.sts = Some(fresh);
            return self.try_hosts(job, facts, &target, &env).await;
        }
        result
    }

    /// The MTA-STS policy for a route group (`None`: not an MX route, `MtaStsMode =
    /// None`, or no engine).
    async fn sts_lookup(
        &self,
        route: &Route,
        domain: &str,
        recheck: bool,
    ) -> Option<mta_sts::Active> {
        let engine = self.mta_sts.as_ref()?;
        if route.target != RouteTarget::Mx
            || route.mta_sts != crate::policy::MtaStsMode::Opportunistic
        {
            return None;
        }
        Some(engine.lookup(domain, recheck).await)
    }

    /// Every address of every host in order, until one gives an answer. Permanent only when
    /// every host said so (e.g. 5xx greetings); a failure of the whole hop when none got as
    /// far as a transaction.
    async fn try_hosts(
        &self,
        job: &DeliveryJob<'_>,
        facts: Option<&events::MessageFacts<'_>>,
        target: &Target<'_>,
        env: &Envelope<'_>,
    ) -> GroupResult {
        let mut last: Option<(SessionError, String)> = None;
        let mut all_permanent = true;
        let mut all_connection_level = true;
        let hops_text = facts.map(|_| events::hops_text(target.hops));
        let total: usize = target.hops.iter().map(|h| h.addrs.len()).sum();
        let mut n = 0;
        let mut sts_refused = None;
        for hop in target.hops {
            // DANE first: one TLS decision per host. MTA-STS applies only where DANE does
            // not (RFC 8461 §2: it never overrides a DANE verdict).
            // A message with `TLS-Required: No` (RFC 8689 §5) is sent under the route's own
            // TLS settings: DANE and MTA-STS are not applied to it.
            let plan = if target.tls_required_no {
                dane::HostPlan::route("TLS-Required: No: DANE and MTA-STS not applied".into())
            } else {
                dane::plan_host(target.resolver, &target.key.route, target.domain, &hop.host).await
            };
            let sts = match plan.tls {
                dane::HostTls::Route if !target.tls_required_no => {
                    mta_sts::host_requirement(target.sts.as_ref(), &hop.host)
                }
                _ => mta_sts::HostTls::NotApplied,
            };
            if let mta_sts::HostTls::Refuse(failure) = &sts {
                tracing::info!(id = job.id, host = %hop.host, error = %failure, "MX host not in the MTA-STS policy; skipped");
                if let Some(f) = facts {
                    f.sts_refused(
                        target.key.route.connector.as_deref(),
                        &hop.host,
                        env.recipients,
                        failure,
                    );
                }
                crate::metrics::mta_sts_verdict("enforce", "mx_mismatch");
                n += hop.addrs.len();
                sts_refused = Some(failure.clone());
                continue;
            }
            for addr in &hop.addrs {
                n += 1;
                let remote = format!("{} [{}]", hop.host, addr.ip());
                let attempt = self
                    .try_address(target, &hop.host, *addr, env, &plan, &sts)
                    .await;
                let webpki = self.tls.as_ref().ok();
                let sts_note = sts_detail(target.sts.as_ref(), &sts, &hop.host, &attempt, webpki);
                // No reports about reports (RFC 8460 §3): a report's delivery is not counted.
                if let Some(recorder) = &self.tlsrpt
                    && matches!(target.key.route.target, RouteTarget::Mx)
                    && !crate::tlsrpt::is_report(env.data.head())
                {
                    let policy = tlsrpt_policy(&plan, &sts);
                    tlsrpt_record(recorder, target, policy, &hop.host, *addr, &attempt);
                }
                if let (Some(f), Some(hops_text)) = (facts, &hops_text) {
                    let hop_facts = events::HopFacts {
                        connector: target.key.route.connector.as_deref(),
                        tls: &target.key.route.tls,
                        domain: target.domain,
                        host: &hop.host,
                        ip: addr.ip(),
                        recipients: env.recipients,
                        position: format!(
                            "address {n} of {total}; next hops: {hops_text}{sts_note}"
                        ),
                        dane: &plan.steps,
                    };
                    f.attempts(&hop_facts, &attempt);
                }
                match attempt.result {
                    Ok(statuses) => {
                        tracing::info!(
                            id = job.id,
                            remote,
                            tls = attempt.tls.is_some(),
                            "transaction done"
                        );
                        return GroupResult::Transaction {
                            statuses,
                            remote,
                            tls: attempt.tls,
                        };
                    }
                    Err(e) if e.try_next_host => {
                        tracing::info!(id = job.id, remote, stage = ?e.stage, error = %e.failure, "host failed; trying the next one");
                        all_permanent &= e.permanent;
                        all_connection_level &= is_connection_level(e.stage);
                        last = Some((e, remote));
                    }
                    Err(e) => {
                        tracing::info!(id = job.id, remote, stage = ?e.stage, error = %e.failure, "transaction failed");
                        return GroupResult::All {
                            status: e.to_status(),
                            remote: Some(remote),
                            tls: attempt.tls,
                            hop_failure: false,
                        };
                    }
                }
            }
        }
        match last {
            Some((e, remote)) if all_permanent => GroupResult::All {
                status: DeliveryStatus::Permanent(e.failure),
                remote: Some(remote),
                tls: None,
                hop_failure: false,
            },
            Some((e, remote)) => GroupResult::All {
                status: DeliveryStatus::Temporary(e.failure),
                remote: Some(remote),
                tls: None,
                // A REQUIRETLS message's stricter TLS failing is the message's, not the
                // hop's: other messages may still go there (no Retry for the queue).
                hop_failure: all_connection_level && target.per_host.is_none(),
            },
            None => GroupResult::hop_down(
                sts_refused.unwrap_or_else(|| Failure {
                    code: None,
                    enhanced: "4.4.312".into(),
                    text: "no next hop address".into(),
                }),
                None,
            ),
        }
    }

    /// One address: a kept session or a new connection, then the transaction; the session
    /// goes back to the pool when it can carry another message.
    async fn try_address(
        &self,
        target: &Target<'_>,
        host: &str,
        addr: std::net::SocketAddr,
        env: &Envelope<'_>,
        plan: &dane::HostPlan,
        sts: &mta_sts::HostTls,
    ) -> client::Attempt {
        if let dane::HostTls::Fail(failure) = &plan.tls {
            return client::Attempt::refused(failure.clone());
        }
        let dane_cfg = dane::client_config(target.cfg, plan, &target.key.route, target.domain);
        // REQUIRETLS: a session of its own, validated for this message (by DANE where the
        // host has usable TLSA records, else by WebPKI and its name), and not kept (see the
        // `requiretls` module).
        if let Some(configs) = target.per_host {
            let validated = match (&plan.tls, &dane_cfg) {
                (dane::HostTls::Dane(_), Some(cfg)) => Some(cfg),
                _ => configs.get(host),
            };
            let Some(cfg) = validated else {
                return client::Attempt::local_failure(
                    "4.3.0",
                    "REQUIRETLS: no configuration for this host",
                );
            };
            let (mut attempt, _) = client::deliver_reusing(addr, host, cfg, env, None).await;
            dane::classify_attempt(plan, &mut attempt);
            return attempt;
        }
        let enforced = *sts == mta_sts::HostTls::Enforce;
        let cfg = match dane_cfg {
            Some(dane_cfg) => std::borrow::Cow::Owned(dane_cfg),
            None => match self.sts_client_config(target, host, enforced) {
                Ok(cfg) => cfg,
                Err(failure) => return client::Attempt::failed(client::Stage::StartTls, failure),
            },
        };
        // A kept session is only reused under the same DANE and MTA-STS requirement.
        let sts_tag = if enforced { " sts" } else { "" };
        let hop_key = pool::HopKey {
            group: format!("{:?}/{}{sts_tag}", target.key, plan.tag()),
            host: host.to_string(),
            addr,
        };
        let kept = self.pool.take(&hop_key);
        let (mut attempt, session) =
            client::deliver_reusing(addr, host, cfg.as_ref(), env, kept).await;
        dane::classify_attempt(plan, &mut attempt);
        if enforced && let Err(e) = &mut attempt.result {
            mta_sts::enforce_tls_failure(e);
        } else if enforced {
            crate::metrics::mta_sts_verdict("enforce", "ok");
        }
        if let Some(session) = session {
            self.pool.put(
                hop_key,
                session,
                target.key.route.send.max_messages_per_connection,
                target.cfg.command_timeout,
            );
        }
        attempt
    }

    /// The route's client settings, with STARTTLS required and validated for `host` when
    /// MTA-STS enforces it (plus the route's own `DomainValidation` pattern, and its client
    /// certificate).
    fn sts_client_config<'c>(
        &self,
        target: &'c Target<'_>,
        host: &str,
        enforced: bool,
    ) -> Result<std::borrow::Cow<'c, ClientConfig>, Failure> {
        let Some(engine) = self.mta_sts.as_ref().filter(|_| enforced) else {
            return Ok(std::borrow::Cow::Borrowed(target.cfg));
        };
        let also = match &target.key.route.tls {
            TlsPolicy::Required(TlsLevel::DomainValidation, wanted) => Some(
                wanted
                    .clone()
                    .unwrap_or_else(|| DomainPattern::Subdomains(target.domain.to_string())),
            ),
            _ => None,
        };
        let mut config = engine
            .enforced_config(host, also)
            .map_err(|e| mta_sts::tls_failure(&format!("TLS unavailable: {e}")))?;
        if let Some(id) = self.client_identity(&target.key.route)? {
            config = identity::with_identity(&config, &id);
        }
        let mut cfg = target.cfg.clone();
        cfg.starttls = StartTls::Required(config);
        Ok(std::borrow::Cow::Owned(cfg))
    }
}

/// The TLS-RPT record of one attempt (`no-policy-found`: DANE and MTA-STS results come
/// with their own policy type): success once TLS was established; the failed check of a
/// TLS failure (the first, failed session of an opportunistic fallback included); no
/// STARTTLS offered when TLS was to be used opportunistically and the session went on in
/// plaintext. Attempts that never reached TLS negotiation (connection failures) and routes
/// that skip STARTTLS (`IgnoreSTARTTLS`) record nothing.
fn tlsrpt_record(
    recorder: &crate::tlsrpt::Recorder,
    target: &Target<'_>,
    policy_type: crate::tlsrpt::PolicyType,
    host: &str,
    addr: std::net::SocketAddr,
    attempt: &client::Attempt,
) {
    use crate::tlsrpt::{Record, ResultType};
    let failed = |e: &SessionError| {
        e.tls_failure
            .as_deref()
            .map(|f| (f.check, f.reason.clone()))
    };
    let (result, reason) = if attempt.tls.is_some() {
        (ResultType::Success, None)
    } else if let Some((check, reason)) = attempt
        .fallback
        .as_deref()
        .and_then(failed)
        .or_else(|| attempt.result.as_ref().err().and_then(failed))
    {
        (ResultType::from_tls_check(check), Some(reason))
    } else if matches!(target.cfg.starttls, StartTls::Opportunistic(_))
        && match &attempt.result {
            Ok(_) => true,
            Err(e) => !is_connection_level(e.stage),
        }
    {
        (ResultType::StarttlsNotSupported, None)
    } else {
        return;
    };
    recorder.record(Record {
        policy_domain: target.domain.to_string(),
        policy_type,
        policy_strings: Vec::new(),
        policy_mx_hosts: Vec::new(),
        result,
        sending_mta_ip: target
            .key
            .route
            .source_ip
            .or_else(|| source_ip_towards(addr)),
        receiving_mx_hostname: Some(host.to_string()),
        receiving_ip: Some(addr.ip()),
        failure_reason: reason,
    });
}

/// The TLS-RPT policy type of a host's attempt: `tlsa` where DANE authenticated it (or
/// required TLS for unusable records), `sts` under an MTA-STS policy, else
/// `no-policy-found`.
fn tlsrpt_policy(plan: &dane::HostPlan, sts: &mta_sts::HostTls) -> crate::tlsrpt::PolicyType {
    use crate::tlsrpt::PolicyType;
    match (&plan.tls, sts) {
        (dane::HostTls::Dane(_) | dane::HostTls::Encrypt | dane::HostTls::Fail(_), _) => {
            PolicyType::Tlsa
        }
        (_, mta_sts::HostTls::Enforce | mta_sts::HostTls::Testing { .. }) => PolicyType::Sts,
        _ => PolicyType::NoPolicyFound,
    }
}

/// The local address the system would use towards `addr` (a UDP "connect" sends nothing).
fn source_ip_towards(addr: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let any: std::net::SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(addr).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Where one route group goes: its key, the recipient domain, the client settings, the
/// resolved next hops and the MTA-STS policy in force.
struct Target<'a> {
    key: &'a QueueKey,
    domain: &'a str,
    cfg: &'a ClientConfig,
    /// REQUIRETLS: the configuration of each host (`requiretls` module), used instead of
    /// `cfg`; `None` for other messages.
    per_host: Option<&'a HashMap<String, ClientConfig>>,
    /// `TLS-Required: No` (RFC 8689 §5): recipient-side policies (DANE, MTA-STS) are to be
    /// ignored for this message. Read by those policies when they are applied.
    #[allow(dead_code)]
    tls_required_no: bool,
    hops: &'a [nexthop::NextHop],
    sts: Option<mta_sts::Active>,
    /// The resolver of the route (DANE's DNSSEC lookups).
    resolver: &'a dyn Resolver,
}

/// Did the group fail because of an MTA-STS `enforce` policy (4.4.8 / 4.7.5)?
fn sts_failed(result: &GroupResult) -> bool {
    let status = match result {
        GroupResult::All { status, .. } => status,
        GroupResult::Transaction { .. } => return false,
    };
    status
        .failure()
        .is_some_and(|f| f.enhanced == "4.4.8" || f.enhanced == "4.7.5")
}

/// The MTA-STS part of an `Attempt` trace row's detail (empty without a policy).
fn sts_detail(
    active: Option<&mta_sts::Active>,
    sts: &mta_sts::HostTls,
    host: &str,
    attempt: &client::Attempt,
    webpki: Option<&TlsContext>,
) -> String {
    let Some(active) = active.filter(|a| a.cached.is_some()) else {
        return String::new();
    };
    let verdict = match sts {
        mta_sts::HostTls::Enforce => {
            format!("MX matched; certificate must validate (WebPKI) for {host}, no plaintext")
        }
        mta_sts::HostTls::Testing { mx_matched } => {
            match mta_sts::testing_verdict(*mx_matched, host, attempt.tls.as_ref(), webpki) {
                Some(why) => {
                    tracing::warn!(host, domain = %active.domain, why, "MTA-STS testing: enforce would have failed");
                    format!("testing: would fail under enforce: {why}; delivered as the route says")
                }
                None => "testing: would pass under enforce".to_string(),
            }
        }
        _ => "mode none: not applied".to_string(),
    };
    format!("; MTA-STS: {}; {verdict}", active.summary())
}

/// One outcome per recipient of a group, with the route's error policies applied.
fn group_outcomes(
    route: &Route,
    job: &DeliveryJob<'_>,
    idxs: &[usize],
    result: GroupResult,
) -> Vec<(usize, RecipientOutcome)> {
    let outcome = |i: usize, status: DeliveryStatus, remote: Option<String>, tls, hop_failure| {
        (
            i,
            RecipientOutcome {
                recipient: job.recipients[i].clone(),
                status: errpolicy::apply(&route.send.error_policies, status),
                connector: route.connector.clone(),
                remote_host: remote,
                would_route: None, // filled in per recipient by the caller
                tls,
                hop_failure,
            },
        )
    };
    match result {
        GroupResult::Transaction {
            statuses,
            remote,
            tls,
        } => idxs
            .iter()
            .zip(statuses)
            .map(|(&i, s)| outcome(i, s, Some(remote.clone()), tls.clone(), false))
            .collect(),
        GroupResult::All {
            status,
            remote,
            tls,
            hop_failure,
        } => idxs
            .iter()
            .map(|&i| outcome(i, status.clone(), remote.clone(), tls.clone(), hop_failure))
            .collect(),
    }
}

/// The domain of `local@domain` as it is routed, looked up and compared: lower-case
/// A-labels, no trailing dot ([`crate::dns::idn::routable`]). No domain is `5.1.3` (bad
/// address syntax); a domain that is not valid IDNA can never be looked up, so it fails
/// now with `5.1.2` (RFC 3463: bad destination system address) instead of deferring
/// until the message expires.
fn recipient_domain(addr: &str) -> Result<String, Failure> {
    let failure = |enhanced: &str, text: String| Failure {
        code: None,
        enhanced: enhanced.into(),
        text,
    };
    match addr.rsplit_once('@') {
        Some((_, domain)) if !domain.trim_end_matches('.').is_empty() => {
            crate::dns::idn::routable(domain).map_err(|e| failure("5.1.2", e.to_string()))
        }
        _ => Err(failure(
            "5.1.3",
            format!("bad recipient address syntax: {addr:?}"),
        )),
    }
}

/// Runs futures concurrently on the current task and returns their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::nexthop::mock::MockResolver;
    use super::*;
    use crate::dns::{DnsError, MxAnswer};
    use crate::policy::route::test_support;

    #[test]
    fn an_unroutable_recipient_domain_fails_permanently() {
        assert_eq!(
            recipient_domain("a@Exämple.Test.").unwrap(),
            "xn--exmple-cua.test"
        );
        let bad = recipient_domain("bad@xn--zz.test").unwrap_err();
        assert_eq!(bad.enhanced, "5.1.2");
        assert!(
            bad.text
                .contains("not a valid internationalized domain name"),
            "{bad}"
        );
        let long = format!("a@{}.test", "x".repeat(64));
        assert_eq!(recipient_domain(&long).unwrap_err().enhanced, "5.1.2");
        assert_eq!(recipient_domain("nodomain@").unwrap_err().enhanced, "5.1.3");
    }

    #[tokio::test]
    async fn route_errors_are_per_recipient_and_in_order() {
        let resolver = MockResolver::default()
            .with_mx("nomail.test", Ok(MxAnswer::NullMx))
            .with_mx("slow.test", Err(DnsError::Timeout));
        let mut policy = test_support::policy();
        let mut t = test_support::outbound("trial", &["slow.test"]);
        t.test_mode = true;
        policy.outbound.push(t);
        let d = Deliverer::new(Arc::new(policy), Arc::new(resolver));
        let rcpts: Vec<String> = [
            "a@nomail.test",
            "b@gone.test",
            "bad",
            "c@SLOW.test",
            "d@nomail.test",
        ]
        .map(String::from)
        .to_vec();
        let out = d
            .deliver(&DeliveryJob {
                id: "q1",
                mail_from: "",
                recipients: &rcpts,
                data: Data::memory(b"Subject: x\r\n\r\nhi\r\n"),
                from_outside_org: false,
                requiretls: false,
            })
            .await;
        let codes: Vec<(&str, bool, &str)> = out
            .iter()
            .map(|o| {
                let f = o.status.failure().unwrap();
                (
                    o.recipient.as_str(),
                    o.status.is_permanent(),
                    f.enhanced.as_str(),
                )
            })
            .collect();
        assert_eq!(
            codes,
            [
                ("a@nomail.test", true, "5.1.10"),
                ("b@gone.test", true, "5.4.310"),
                ("bad", true, "5.1.3"),
                ("c@SLOW.test", false, "4.4.315"),
                ("d@nomail.test", true, "5.1.10"),
            ]
        );
        assert_eq!(out[3].would_route.as_deref(), Some("trial"));
        assert_eq!(out[3].connector, None);
    }

    #[tokio::test]
    async fn max_message_size_of_send_connector() {
        let mut policy = test_support::policy();
        let mut s = test_support::send("small", &[("*", 1)]);
        s.max_message_size = Some(4);
        policy.send.push(s);
        let d = Deliverer::new(Arc::new(policy), Arc::new(MockResolver::default()));
        let rcpts = vec!["a@x.test".to_string()];
        let out = d
            .deliver(&DeliveryJob {
                id: "q2",
                mail_from: "s@contoso.test",
                recipients: &rcpts,
                data: Data::memory(b"0123456789\r\n"),
                from_outside_org: false,
                requiretls: false,
            })
            .await;
        assert_eq!(out[0].status.failure().unwrap().enhanced, "5.3.4");
        assert_eq!(out[0].connector.as_deref(), Some("small"));
    }
}
