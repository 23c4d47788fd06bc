//! The production [`Resolver`]: hickory-resolver 0.25 over UDP and TCP.
//!
//! Hickory's errors are folded into [`DnsError`] here, so the delivery engine can classify
//! a lookup failure (temporary 4.4.31x vs permanent 5.4.x, `shared/spec/replies.md`)
//! without knowing which DNS library sits underneath.
//!
//! DNSSEC (`[Relay] DnssecValidation`, see [`super::DnssecValidation`]):
//! - `Resolver`: plain lookups as before; the `*_secured` and TLSA lookups go through
//!   [`super::ad::AdClient`] (AD bit of the same servers, cached).
//! - `Local`: hickory validates in-process (`validate = true`) from the DNSKEY trust
//!   anchors of `DnssecTrustAnchorFile`. Hickory hands bogus records back as `Ok` with a
//!   `Proof::Bogus` flag on each record (and bogus denials inside `NoRecordsFound`): every
//!   answer goes through [`proven`], which turns any bogus record into
//!   [`DnsError::Bogus`], for plain `mx`/`ips` lookups too, so bogus data is never used.
//! - `Off`: plain lookups; every status is `Unknown`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::dnssec::{Algorithm, Proof, PublicKeyBuf, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, ResolveError, ResolveErrorKind, TokioResolver};

use super::ad::AdClient;
use super::{BoxFuture, DnsError, DnssecValidation, MxAnswer, Resolver, Secured, Security, Tlsa};

/// Per-attempt timeout, as resolv.conf(5)'s default `timeout:5`:
/// a few seconds, so a dead server costs seconds, not minutes, per delivery attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts per query (the first try plus one retry), as resolv.conf's `attempts:2`.
const ATTEMPTS: usize = 2;

/// A [`Resolver`] backed by hickory's caching stub resolver.
///
/// Cheap to share behind an `Arc`; lookups are cached by hickory for the records' TTL.
pub struct HickoryResolver {
    inner: TokioResolver,
    dnssec: DnssecValidation,
    /// `DnssecValidation = "Resolver"`: the AD-bit client for the secured lookups.
    ad: Option<Arc<AdClient>>,
    /// The AD probe ran (it runs once, at the first secured lookup: see
    /// [`HickoryResolver::probe_once`]).
    probed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("name_servers", &self.inner.config().name_servers())
            .finish()
    }
}

impl HickoryResolver {
    /// Resolves through `servers` (UDP, and TCP for truncated answers) or, when `servers` is
    /// empty, through the system configuration (`/etc/resolv.conf`).
    pub fn new(servers: &[SocketAddr]) -> Result<Self, String> {
        Self::with_timeout(servers, DEFAULT_TIMEOUT)
    }

    /// As [`HickoryResolver::new`] with a per-attempt `timeout` (tests use a short one).
    pub fn with_timeout(servers: &[SocketAddr], timeout: Duration) -> Result<Self, String> {
        Self::with_dnssec(servers, timeout, DnssecValidation::Off, None)
    }

    /// A resolver that knows the DNSSEC status of answers as `mode` says; `anchor_file`
    /// (DNSKEY records in zone-file form) is required for `Local`.
    pub fn with_dnssec(
        servers: &[SocketAddr],
        timeout: Duration,
        mode: DnssecValidation,
        anchor_file: Option<&Path>,
    ) -> Result<Self, String> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| format!("reading the system DNS configuration: {e}"))?
        } else {
            let mut config = ResolverConfig::new();
            for &addr in servers {
                // UDP first; TCP is needed when an answer is truncated (RFC 7766 §5: TCP
                // is a mandatory transport, e.g. for large MX sets).
                config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, provider)
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        // Hickory's `attempts` counts retries after the first try ("number of retries after
        // lookup failure"): 2 there was 3 tries, 15 s per lookup against a dead server.
        opts.attempts = ATTEMPTS - 1;
        // Every name we look up is a domain taken from an address or an MX answer, so it
        // is absolute: never try it under resolv.conf's search domains (RFC 1123 §6.1.4.3:
        // a resolver must not apply search lists to names that came from the network).
        opts.ndots = 0;
        // Next hops come from DNS, as Postfix's default `smtp_host_lookup = dns`; a stray
        // /etc/hosts entry must not redirect mail.
        opts.use_hosts_file = ResolveHosts::Never;
        // Larger UDP answers (RFC 6891) before falling back to TCP.
        opts.edns0 = true;
        // Cache, honouring the records' TTLs (hickory's default: no minimum TTL override).
        opts.positive_min_ttl = None;
        opts.negative_min_ttl = None;
        let mut ad = None;
        match mode {
            DnssecValidation::Off => {}
            DnssecValidation::Resolver => ad = Some(Arc::new(AdClient::new(servers, timeout)?)),
            DnssecValidation::Local => {
                let path = anchor_file.ok_or_else(|| {
                    "DnssecValidation = \"Local\" needs DnssecTrustAnchorFile".to_string()
                })?;
                let anchors = read_trust_anchors(path)?;
                builder.options_mut().validate = true;
                builder = builder.with_trust_anchor(Arc::new(anchors));
            }
        }
        Ok(Self {
            inner: builder.build(),
            dnssec: mode,
            ad,
            probed: false.into(),
        })
    }

    /// `Resolver` mode, once per resolver, in the background: asks for the (signed) root's
    /// NS with AD and warns when the resolver never sets it (Postfix's `dnssec_probe`): DANE
    /// can then never apply. It runs at the first secured lookup, i.e. the first delivery
    /// that could use DANE, not at start-up: a relay that never resolves an MX sends no DNS
    /// query at all.
    fn probe_once(&self) {
        use std::sync::atomic::Ordering;
        let Some(ad) = &self.ad else { return };
        if self.probed.swap(true, Ordering::Relaxed) {
            return;
        }
        let ad = ad.clone();
        tokio::spawn(async move {
            match ad.probe().await {
                Ok(true) => {
                    tracing::info!("DNSSEC probe: the resolver validates (AD set for the root)")
                }
                Ok(false) => tracing::warn!(
                    "DNSSEC probe: DnsServers did not set the AD bit for the signed root zone; the resolver does not validate, so DANE never applies (Mandatory DANE defers everything). Use a validating resolver such as unbound on loopback, or DnssecValidation = \"Local\""
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "DNSSEC probe failed: could not ask DnsServers for the root NS with AD")
                }
            }
        });
    }

    /// `DnssecValidation = "Resolver"`: does the resolver set AD for the (signed) root?
    /// `None` in the other modes.
    pub async fn probe_dnssec(&self) -> Option<Result<bool, DnsError>> {
        match &self.ad {
            Some(ad) => Some(ad.probe().await),
            None => None,
        }
    }

    /// `Resolver` mode: a plain lookup failed (SERVFAIL). hickory does not show the
    /// RFC 8914 extended error, so the AD client asks again: when the resolver says the
    /// failure is DNSSEC's, the error is [`DnsError::Bogus`] (4.7.324, dnssec-invalid),
    /// otherwise the plain failure stands.
    async fn why_failed(
        &self,
        plain: String,
        again: impl std::future::Future<Output = Option<DnsError>>,
    ) -> DnsError {
        match again.await {
            Some(bogus @ DnsError::Bogus(_)) => bogus,
            _ => DnsError::Failed(plain),
        }
    }

    async fn ad_mx(&self, domain: &str) -> Option<DnsError> {
        self.ad.as_ref()?.mx(domain).await.err()
    }

    async fn ad_ips(&self, host: &str) -> Option<DnsError> {
        self.ad.as_ref()?.ips(host).await.err()
    }

    /// The servers whose AD bit is trusted (`Resolver` mode).
    pub fn ad_servers(&self) -> &[SocketAddr] {
        self.ad.as_deref().map(AdClient::servers).unwrap_or(&[])
    }

    /// `Local` mode: one validated lookup, its records of type `rtype` and their status.
    /// NXDOMAIN / NODATA give no records and the status of the denial.
    async fn proven_lookup(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Vec<Record>, Security, ResponseCode), DnsError> {
        match self.inner.lookup(fqdn(name)?, rtype).await {
            Ok(lookup) => {
                let records: Vec<Record> = lookup.record_iter().cloned().collect();
                let security = proven(records.iter().map(Record::proof))?;
                let wanted = records
                    .into_iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect();
                Ok((wanted, security, ResponseCode::NoError))
            }
            Err(e) => {
                if let ResolveErrorKind::Proto(proto) = e.kind()
                    && let ProtoErrorKind::NoRecordsFound {
                        soa, response_code, ..
                    } = proto.kind()
                    && matches!(
                        *response_code,
                        ResponseCode::NXDomain | ResponseCode::NoError
                    )
                {
                    let proof = soa.as_ref().map_or(Proof::Insecure, |s| s.proof());
                    return Ok((Vec::new(), proven([proof])?, *response_code));
                }
                Err(map_error(&e))
            }
        }
    }

    async fn local_mx(&self, domain: &str) -> Result<Secured<MxAnswer>, DnsError> {
        let (records, security, rcode) = self.proven_lookup(domain, RecordType::MX).await?;
        if rcode == ResponseCode::NXDomain {
            return Err(DnsError::NxDomain);
        }
        Ok(Secured {
            value: classify_mx(mx_records(&records)),
            security,
        })
    }

    async fn local_ips(&self, host: &str) -> Result<Secured<Vec<IpAddr>>, DnsError> {
        let (v6, v4) = tokio::join!(
            self.proven_lookup(host, RecordType::AAAA),
            self.proven_lookup(host, RecordType::A)
        );
        let mut security: Option<Security> = None;
        let mut family = |r: Result<(Vec<Record>, Security, ResponseCode), DnsError>| {
            let (records, sec, rcode) = r?;
            if rcode == ResponseCode::NXDomain {
                return Err(DnsError::NxDomain);
            }
            security = Some(security.map_or(sec, |s: Security| s.min(sec)));
            addresses(&records)
        };
        let v6 = family(v6);
        let v4 = family(v4);
        // A bogus family poisons the whole answer: never fall back to the other one.
        for r in [&v6, &v4] {
            if let Err(DnsError::Bogus(e)) = r {
                return Err(DnsError::Bogus(e.clone()));
            }
        }
        Ok(Secured {
            value: merge_families(v6, v4)?,
            security: security.unwrap_or(Security::Insecure),
        })
    }

    async fn local_tlsa(&self, name: &str) -> Result<Secured<Vec<Tlsa>>, DnsError> {
        let (records, security, _) = self.proven_lookup(name, RecordType::TLSA).await?;
        Ok(Secured {
            value: records.iter().filter_map(tlsa_of).collect(),
            security,
        })
    }

    async fn lookup_mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let name = fqdn(domain)?;
        let lookup = match self.inner.mx_lookup(name).await {
            Ok(lookup) => lookup,
            Err(e) => {
                return match map_error(&e) {
                    // RFC 5321 §5.1: no MX but the name exists → implicit MX (A/AAAA).
                    DnsError::NoRecords => Ok(MxAnswer::NoRecords),
                    other => Err(other),
                };
            }
        };
        let records: Vec<(u16, String)> = lookup
            .iter()
            .map(|mx| (mx.preference(), host_name(mx.exchange())))
            .collect();
        Ok(classify_mx(records))
    }

    async fn lookup_ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let name = fqdn(host)?;
        let (v6, v4) = tokio::join!(
            self.inner.ipv6_lookup(name.clone()),
            self.inner.ipv4_lookup(name)
        );
        let v6 = v6.map(|l| l.iter().map(|r| IpAddr::V6(r.0)).collect::<Vec<_>>());
        let v4 = v4.map(|l| l.iter().map(|r| IpAddr::V4(r.0)).collect::<Vec<_>>());
        merge_families(v6.map_err(|e| map_error(&e)), v4.map_err(|e| map_error(&e)))
    }
}

impl HickoryResolver {
    async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let lookup = self
            .inner
            .txt_lookup(fqdn(name)?)
            .await
            .map_err(|e| map_error(&e))?;
        Ok(lookup
            .iter()
            .map(|txt| {
                txt.txt_data()
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect::<String>()
            })
            .collect())
    }
}

impl Resolver for HickoryResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>> {
        Box::pin(async move {
            match self.dnssec {
                // Never the unchecked lookup: it would hand out bogus records.
                DnssecValidation::Local => self.local_mx(domain).await.map(|s| s.value),
                _ => match self.lookup_mx(domain).await {
                    Err(DnsError::Failed(e)) => Err(self.why_failed(e, self.ad_mx(domain)).await),
                    other => other,
                },
            }
        })
    }

    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move {
            match self.dnssec {
                DnssecValidation::Local => self.local_ips(host).await.map(|s| s.value),
                _ => match self.lookup_ips(host).await {
                    Err(DnsError::Failed(e)) => Err(self.why_failed(e, self.ad_ips(host)).await),
                    other => other,
                },
            }
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>> {
        Box::pin(self.lookup_txt(name))
    }

    fn dnssec(&self) -> DnssecValidation {
        self.dnssec
    }

    fn mx_secured<'a>(
        &'a self,
        domain: &'a str,
    ) -> BoxFuture<'a, Result<Secured<MxAnswer>, DnsError>> {
        self.probe_once();
        Box::pin(async move {
            match (&self.ad, self.dnssec) {
                (Some(ad), _) => ad.mx(domain).await,
                (None, DnssecValidation::Local) => self.local_mx(domain).await,
                _ => self.lookup_mx(domain).await.map(Secured::unknown),
            }
        })
    }

    fn ips_secured<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Secured<Vec<IpAddr>>, DnsError>> {
        self.probe_once();
        Box::pin(async move {
            match (&self.ad, self.dnssec) {
                (Some(ad), _) => ad.ips(host).await,
                (None, DnssecValidation::Local) => self.local_ips(host).await,
                _ => self.lookup_ips(host).await.map(Secured::unknown),
            }
        })
    }

    fn tlsa<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Secured<Vec<Tlsa>>, DnsError>> {
        Box::pin(async move {
            match (&self.ad, self.dnssec) {
                (Some(ad), _) => ad.tlsa(name).await,
                (None, DnssecValidation::Local) => self.local_tlsa(name).await,
                _ => Err(DnsError::Failed(
                    "DnssecValidation = \"Off\": no TLSA lookups".into(),
                )),
            }
        })
    }
}

/// The (preference, exchange) pairs of an answer's MX records.
pub(super) fn mx_records(records: &[Record]) -> Vec<(u16, String)> {
    records
        .iter()
        .filter_map(|r| match r.data() {
            RData::MX(mx) => Some((mx.preference(), host_name(mx.exchange()))),
            _ => None,
        })
        .collect()
}

/// The A and AAAA addresses of an answer's records; `NoRecords` when there is none.
pub(super) fn addresses(records: &[Record]) -> Result<Vec<IpAddr>, DnsError> {
    let ips: Vec<IpAddr> = records
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    if ips.is_empty() {
        Err(DnsError::NoRecords)
    } else {
        Ok(ips)
    }
}

/// The status of an RRset from its records' proofs: the weakest wins, and one bogus
/// record makes the whole answer an error. Indeterminate (no chain could be built either
/// way) counts as insecure: DANE does not apply, and Mandatory DANE then fails.
fn proven(proofs: impl IntoIterator<Item = Proof>) -> Result<Security, DnsError> {
    let mut security = Security::Secure;
    for proof in proofs {
        match proof {
            Proof::Secure => {}
            Proof::Bogus => {
                return Err(DnsError::Bogus("in-process validation failed".into()));
            }
            _ => security = Security::Insecure,
        }
    }
    Ok(security)
}

fn tlsa_of(record: &Record) -> Option<Tlsa> {
    match record.data() {
        RData::TLSA(t) => Some(Tlsa {
            usage: t.cert_usage().into(),
            selector: t.selector().into(),
            matching: t.matching().into(),
            data: t.cert_data().to_vec(),
        }),
        _ => None,
    }
}

/// Reads DNSKEY trust anchors in zone-file form (`. 172800 IN DNSKEY 257 3 8 AwEAA...`),
/// as `dig . DNSKEY` or unbound's `trust-anchor-file` print them. DS records cannot be
/// used as anchors by hickory 0.25: they are refused with a sentence.
pub fn read_trust_anchors(path: &Path) -> Result<TrustAnchors, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("DnssecTrustAnchorFile {}: {e}", path.display()))?;
    let mut anchors = TrustAnchors::empty();
    for (n, line) in text.lines().enumerate() {
        let line = line.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |what: &str| format!("DnssecTrustAnchorFile {}:{}: {what}", path.display(), n + 1);
        let Some(pos) = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("DNSKEY") || w.eq_ignore_ascii_case("DS"))
        else {
            return Err(at("not a DNSKEY record"));
        };
        if words[pos].eq_ignore_ascii_case("DS") {
            return Err(at(
                "a DS record; in-process validation needs the DNSKEY itself (e.g. `dig . DNSKEY`), or use DnssecValidation = \"Resolver\"",
            ));
        }
        let (Some(alg), Some(_)) = (words.get(pos + 3), words.get(pos + 4)) else {
            return Err(at("DNSKEY needs flags, protocol, algorithm and key"));
        };
        let alg: u8 = alg.parse().map_err(|_| at("bad algorithm number"))?;
        let key: String = words[pos + 4..].concat();
        let key = data_encoding::BASE64
            .decode(key.as_bytes())
            .map_err(|e| at(&format!("bad base64 key: {e}")))?;
        anchors.insert(&PublicKeyBuf::new(key, Algorithm::from_u8(alg)));
    }
    if anchors.is_empty() {
        return Err(format!(
            "DnssecTrustAnchorFile {}: no DNSKEY record",
            path.display()
        ));
    }
    Ok(anchors)
}

/// Parses `name` as an absolute domain name (trailing dot added), so no search domain is
/// ever appended.
pub(super) fn fqdn(name: &str) -> Result<Name, DnsError> {
    let trimmed = name.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(DnsError::Failed(format!("invalid domain name {name:?}")));
    }
    // DNS carries A-labels only (RFC 5890 §2.3.2.1): a name in Unicode is looked up as
    // its A-label, never sent as raw UTF-8.
    let ascii = super::idn::to_ascii(trimmed).map_err(|e| DnsError::Failed(e.to_string()))?;
    Name::from_ascii(format!("{ascii}."))
        .map_err(|e| DnsError::Failed(format!("invalid domain name {name:?}: {e}")))
}

/// A host name as the rest of the relay stores them: lower-case, no trailing dot.
pub(super) fn host_name(name: &Name) -> String {
    let text = name.to_ascii();
    text.trim_end_matches('.').to_ascii_lowercase()
}

/// Applies RFC 7505 to an MX answer. A null MX is a single record whose exchange is the
/// root (`0 .`, §3); the root is never a usable host, so root entries mixed with real
/// ones (which §3 forbids publishing) are dropped rather than tried.
pub(super) fn classify_mx(records: Vec<(u16, String)>) -> MxAnswer {
    if records.is_empty() {
        return MxAnswer::NoRecords;
    }
    // `host_name` turns the root "." into "".
    if records.iter().all(|(_, host)| host.is_empty()) {
        return MxAnswer::NullMx;
    }
    MxAnswer::Records(
        records
            .into_iter()
            .filter(|(_, host)| !host.is_empty())
            .collect(),
    )
}

/// Merges the AAAA and A answers, IPv6 first (the `Resolver::ips` contract). One family
/// failing is normal (IPv4-only hosts); the lookup fails only when both did, and then
/// NXDOMAIN wins: the name does not exist, so the failure is permanent.
pub(super) fn merge_families(
    v6: Result<Vec<IpAddr>, DnsError>,
    v4: Result<Vec<IpAddr>, DnsError>,
) -> Result<Vec<IpAddr>, DnsError> {
    match (v6, v4) {
        (Ok(mut a), Ok(b)) => {
            a.extend(b);
            if a.is_empty() {
                Err(DnsError::NoRecords)
            } else {
                Ok(a)
            }
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) if !a.is_empty() => Ok(a),
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => Err(e),
        (Err(e6), Err(e4)) => Err(if e6 == DnsError::NxDomain || e4 == DnsError::NxDomain {
            DnsError::NxDomain
        } else if e6 == DnsError::NoRecords {
            // NODATA for AAAA says nothing; the A error is the interesting one.
            e4
        } else {
            e6
        }),
    }
}

/// Folds a hickory error into [`DnsError`].
fn map_error(error: &ResolveError) -> DnsError {
    let proto = match error.kind() {
        ResolveErrorKind::Proto(proto) => proto,
        other => return DnsError::Failed(other.to_string()),
    };
    match proto.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => DnsError::NxDomain,
            // NOERROR with an empty answer section ("NODATA", RFC 2308 §2.2).
            ResponseCode::NoError => DnsError::NoRecords,
            ResponseCode::Refused => DnsError::Refused,
            code => DnsError::Failed(format!("server answered {code}")),
        },
        ProtoErrorKind::Timeout => DnsError::Timeout,
        ProtoErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => DnsError::Timeout,
        ProtoErrorKind::RequestRefused => DnsError::Refused,
        _ => DnsError::Failed(proto.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn fqdn_is_absolute() {
        assert!(fqdn("Example.COM").unwrap().is_fqdn());
        assert!(fqdn("example.com.").unwrap().is_fqdn());
        assert!(matches!(fqdn(""), Err(DnsError::Failed(_))));
        assert!(matches!(fqdn("."), Err(DnsError::Failed(_))));
        assert_eq!(
            fqdn("Exämple.test").unwrap().to_ascii(),
            "xn--exmple-cua.test."
        );
    }

    #[test]
    fn host_names_are_lower_case_without_trailing_dot() {
        let name = Name::from_ascii("MX1.Example.COM.").unwrap();
        assert_eq!(host_name(&name), "mx1.example.com");
        assert_eq!(host_name(&Name::root()), "");
    }

    #[test]
    fn null_mx() {
        assert_eq!(classify_mx(vec![(0, String::new())]), MxAnswer::NullMx);
        assert_eq!(classify_mx(vec![]), MxAnswer::NoRecords);
        assert_eq!(
            classify_mx(vec![(0, String::new()), (10, "mx.example".into())]),
            MxAnswer::Records(vec![(10, "mx.example".into())])
        );
    }

    #[test]
    fn merge_prefers_v6_and_tolerates_one_family() {
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(merge_families(Ok(vec![v6]), Ok(vec![v4])), Ok(vec![v6, v4]));
        assert_eq!(
            merge_families(Err(DnsError::NoRecords), Ok(vec![v4])),
            Ok(vec![v4])
        );
        assert_eq!(
            merge_families(Err(DnsError::Timeout), Ok(vec![v4])),
            Ok(vec![v4])
        );
        assert_eq!(
            merge_families(Err(DnsError::NoRecords), Err(DnsError::NxDomain)),
            Err(DnsError::NxDomain)
        );
        assert_eq!(
            merge_families(Err(DnsError::NoRecords), Err(DnsError::Timeout)),
            Err(DnsError::Timeout)
        );
        assert_eq!(
            merge_families(Ok(vec![]), Ok(vec![])),
            Err(DnsError::NoRecords)
        );
    }
}
