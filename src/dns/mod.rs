//! DNS lookups behind a trait, so the delivery engine can be unit-tested with a mock and
//! integration tests can point the real resolver (hickory) at a DNS server on loopback.

pub mod hickory;
pub mod idn;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The answer to an MX query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX records as (preference, exchange host without trailing dot), in any order.
    Records(Vec<(u16, String)>),
    /// The domain exists but has no MX records: RFC 5321 §5.1 implicit MX (A/AAAA fallback).
    NoRecords,
    /// RFC 7505 null MX (`0 .`): the domain accepts no mail; a permanent failure.
    NullMx,
}

/// Why a lookup failed. Maps onto the outbound status codes of `shared/spec/replies.md`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist (permanent, 5.4.x).
    #[error("domain does not exist (NXDOMAIN)")]
    NxDomain,
    /// The name exists but has no records of the asked type.
    #[error("no records of the requested type")]
    NoRecords,
    #[error("DNS query timed out")]
    Timeout,
    #[error("DNS query refused")]
    Refused,
    #[error("DNS query failed: {0}")]
    Failed(String),
}

/// The lookups the relay needs. Object-safe so it can live behind `Arc<dyn Resolver>`.
pub trait Resolver: Send + Sync {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>>;
    /// A and AAAA addresses of `host` (both families, IPv6 first when present).
    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>>;
    /// TXT records of `name`, each record's strings joined (RFC 7208 §3.3 style), for
    /// `_smtp._tls` (TLS-RPT). Resolvers that cannot look TXT up say so.
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>> {
        let _ = name;
        Box::pin(async { Err(DnsError::Failed("TXT lookups not supported".into())) })
    }
}
