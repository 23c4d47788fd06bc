//! DNS lookups behind a trait, so the delivery engine can be unit-tested with a mock and
//! integration tests can point the real resolver (hickory) at a DNS server on loopback.

pub mod ad;
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
    /// The answer failed DNSSEC validation (RFC 4035 §4.3 "bogus"): in-process validation
    /// said so, or the resolver's SERVFAIL carried an RFC 8914 DNSSEC error. Never data.
    #[error("DNSSEC validation failed (bogus): {0}")]
    Bogus(String),
}

/// The lookups the relay needs. Object-safe so it can live behind `Arc<dyn Resolver>`.
pub trait Resolver: Send + Sync {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>>;
    /// A and AAAA addresses of `host` (both families, IPv6 first when present).
    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>>;
    /// TXT records of `name`, each record's character-strings joined into one string
    /// (RFC 8461 §3.1 and RFC 8460 §3 read a record as its concatenated strings).
    /// The default knows no TXT records (resolvers of unit tests).
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>> {
        let _ = name;
        Box::pin(async { Err(DnsError::NoRecords) })
    }

    /// How this resolver knows DNSSEC status. Resolvers that cannot tell (test mocks)
    /// keep the default, and every status is then [`Security::Unknown`].
    fn dnssec(&self) -> DnssecValidation {
        DnssecValidation::Off
    }

    /// [`Resolver::mx`] with the DNSSEC status of the MX RRset (or of its denial).
    fn mx_secured<'a>(
        &'a self,
        domain: &'a str,
    ) -> BoxFuture<'a, Result<Secured<MxAnswer>, DnsError>> {
        Box::pin(async move { self.mx(domain).await.map(Secured::unknown) })
    }

    /// [`Resolver::ips`] with the DNSSEC status of the A/AAAA answers (the weaker of the
    /// two families that answered).
    fn ips_secured<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Secured<Vec<IpAddr>>, DnsError>> {
        Box::pin(async move { self.ips(host).await.map(Secured::unknown) })
    }

    /// The TLSA RRset at `name` (e.g. `_25._tcp.mx.example.com`); an empty set for
    /// NXDOMAIN/NODATA.
    fn tlsa<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Secured<Vec<Tlsa>>, DnsError>> {
        let _ = name;
        Box::pin(async { Err(DnsError::Failed("this resolver has no TLSA lookups".into())) })
    }
}

/// `[Relay] DnssecValidation`: where the DNSSEC status of an answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DnssecValidation {
    /// The AD bit of `DnsServers` (RFC 6840 §5.8; Postfix's model). The resolver must be
    /// trusted: local (loopback) or reached over a trusted path.
    #[default]
    Resolver,
    /// In-process validation (hickory, `dnssec-ring`) from `DnssecTrustAnchorFile`.
    Local,
    /// No DNSSEC: every answer's status is [`Security::Unknown`].
    Off,
}

impl DnssecValidation {
    pub fn as_str(self) -> &'static str {
        match self {
            DnssecValidation::Resolver => "Resolver",
            DnssecValidation::Local => "Local",
            DnssecValidation::Off => "Off",
        }
    }
}

/// The DNSSEC status of an answer that may be used (RFC 4035 §4.3). There is no `Bogus`
/// here on purpose: a bogus answer is never handed out as data, it is the error
/// [`DnsError::Bogus`], so no caller can use forged records by forgetting a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// Validated from a trust anchor (AD set by a trusted resolver, or proven in-process).
    Secure,
    /// Provably unsigned (or not validated by the resolver: no AD).
    Insecure,
    /// DNSSEC is off (`DnssecValidation = "Off"`) or the resolver cannot tell.
    Unknown,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Secure => "secure",
            Security::Insecure => "insecure",
            Security::Unknown => "unknown (DNSSEC off)",
        }
    }

    /// The weaker of two statuses (an RRset made of two answers is as strong as the
    /// weaker one).
    pub fn min(self, other: Security) -> Security {
        use Security::*;
        match (self, other) {
            (Unknown, _) | (_, Unknown) => Unknown,
            (Insecure, _) | (_, Insecure) => Insecure,
            (Secure, Secure) => Secure,
        }
    }
}

/// An answer with its DNSSEC status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secured<T> {
    pub value: T,
    pub security: Security,
}

impl<T> Secured<T> {
    pub fn unknown(value: T) -> Self {
        Secured {
            value,
            security: Security::Unknown,
        }
    }
}

/// One TLSA record (RFC 6698 §2.1), fields as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
