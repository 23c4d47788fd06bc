//! The production [`Resolver`]: hickory-resolver 0.25 over UDP and TCP.
//!
//! Hickory's errors are folded into [`DnsError`] here, so the delivery engine can classify
//! a lookup failure (temporary 4.4.31x vs permanent 5.4.x, `shared/spec/replies.md`)
//! without knowing which DNS library sits underneath.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, ResolveError, ResolveErrorKind, TokioResolver};

use super::{BoxFuture, DnsError, MxAnswer, Resolver};

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
        Ok(Self {
            inner: builder.build(),
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

impl Resolver for HickoryResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>> {
        Box::pin(self.lookup_mx(domain))
    }

    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(self.lookup_ips(host))
    }

    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>> {
        Box::pin(async move {
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
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>()
                })
                .collect())
        })
    }
}

/// Parses `name` as an absolute domain name (trailing dot added), so no search domain is
/// ever appended.
fn fqdn(name: &str) -> Result<Name, DnsError> {
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
fn host_name(name: &Name) -> String {
    let text = name.to_ascii();
    text.trim_end_matches('.').to_ascii_lowercase()
}

/// Applies RFC 7505 to an MX answer. A null MX is a single record whose exchange is the
/// root (`0 .`, §3); the root is never a usable host, so root entries mixed with real
/// ones (which §3 forbids publishing) are dropped rather than tried.
fn classify_mx(records: Vec<(u16, String)>) -> MxAnswer {
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
fn merge_families(
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
