//! REQUIRETLS (RFC 8689) on delivery, and the `TLS-Required: No` header field.
//!
//! A message received with `MAIL FROM:<...> REQUIRETLS` carries the flag in its spool
//! envelope (`requiretls: 1`) and the delivery job. For such a message, every next hop of
//! its route group is tried with a configuration of its own ([`Deliverer::requiretls_config`]):
//!
//! * STARTTLS is mandatory, never opportunistic, never skipped (`IgnoreSTARTTLS` and
//!   `EncryptionOnly` are raised, not obeyed: the sender's requirement wins over the
//!   route's laxer one; a stricter route setting is kept);
//! * the certificate must validate: chain to a trusted root (webpki roots and
//!   `TrustedCaFile`), dates, `RevocationLists`, and a name: the route's `DomainValidation`
//!   pattern when it has one, else the next-hop host name itself (the MX host or the smart
//!   host; an IP-literal smart host has no name to check and relies on the chain alone);
//! * after STARTTLS the server must offer `REQUIRETLS` in its EHLO reply, and the message
//!   is sent with the `REQUIRETLS` MAIL FROM parameter;
//! * kept connections are neither used nor kept (their TLS session may be unvalidated).
//!
//! **Hook for DANE / MTA-STS.** RFC 8689 §4.1 also wants the MX list itself protected
//! (DNSSEC or MTA-STS) and accepts a DANE-validated certificate instead of WebPKI. Those
//! arrive with the DANE and MTA-STS work: [`Deliverer::requiretls_config`] is the one
//! place that decides a host's REQUIRETLS TLS configuration, so a DANE verifier (or an
//! MTA-STS-checked MX) replaces the WebPKI one there.
//!
//! **Failures** (replies.md: `5.7.30`). A host without STARTTLS, with a certificate that
//! fails validation, or without REQUIRETLS after STARTTLS fails for this message
//! permanently, and the next host is tried (RFC 8689 §4.1: "repeat steps 2-4 with each
//! host"). When every host failed permanently the message is returned at once (RFC 8689
//! §4.1 asks for a non-delivery notification, not a retry: the hosts' policy will not
//! change by waiting). A host that could not be reached or whose handshake broke is a
//! temporary failure as for any message: a later attempt may find the host that can carry
//! it. The notice is sent with REQUIRETLS itself and carries the original's header block,
//! never its body (RFC 8689 §5; `queue::notices`).
//!
//! **`TLS-Required: No`** (RFC 8689 §5): the sender asks that recipient-side TLS policies
//! (MTA-STS, DANE) be ignored for this message; STARTTLS is still used opportunistically.
//! [`tls_required_no`] reads it (ignored when the message has the REQUIRETLS flag, which
//! wins); the delivery job carries it to where DANE / MTA-STS are applied. The connector's
//! own `TlsSettings` / `RequireTLS` are the organisation's policy, not the recipient's, and
//! still apply.

use std::collections::HashMap;

use super::client::{ClientConfig, StartTls};
use super::{Deliverer, Failure, identity, nexthop::NextHop};
use crate::policy::route::{Route, TlsPolicy};
use crate::policy::{DomainPattern, TlsLevel};

/// Does the message ask that recipient-side TLS policies be ignored (`TLS-Required: No`,
/// RFC 8689 §5)? Always false for a REQUIRETLS message (§4.2.1: the option wins).
pub fn tls_required_no(data: &[u8], requiretls: bool) -> bool {
    !requiretls
        && crate::message::header_value(data, "tls-required")
            .is_some_and(|v| v.eq_ignore_ascii_case("no"))
}

impl Deliverer {
    /// One client configuration per next-hop host for a REQUIRETLS message (module docs).
    pub(super) fn requiretls_configs(
        &self,
        route: &Route,
        base: &ClientConfig,
        domain: &str,
        hops: &[NextHop],
    ) -> Result<HashMap<String, ClientConfig>, Failure> {
        hops.iter()
            .map(|h| {
                let cfg = self.requiretls_config(route, base, domain, &h.host)?;
                Ok((h.host.clone(), cfg))
            })
            .collect()
    }

    /// The REQUIRETLS configuration for `host`: the route's settings with a validating,
    /// mandatory STARTTLS and the REQUIRETLS check. DANE / MTA-STS hook: see module docs.
    fn requiretls_config(
        &self,
        route: &Route,
        base: &ClientConfig,
        domain: &str,
        host: &str,
    ) -> Result<ClientConfig, Failure> {
        let fail = |text: String| Failure {
            code: None,
            enhanced: "4.7.320".into(),
            text: format!("REQUIRETLS: {text}"),
        };
        let ctx = self.tls.as_ref().map_err(|e| fail(e.clone()))?;
        let wanted = match &route.tls {
            // policy.md: a blank TlsDomain means the recipient domain and its subdomains.
            TlsPolicy::Required(TlsLevel::DomainValidation, p) => Some(
                p.clone()
                    .unwrap_or_else(|| DomainPattern::Subdomains(domain.to_string())),
            ),
            _ if host.parse::<std::net::IpAddr>().is_ok() => None,
            _ => Some(DomainPattern::Exact(host.to_ascii_lowercase())),
        };
        let level = match wanted {
            Some(_) => TlsLevel::DomainValidation,
            None => TlsLevel::CertificateValidation,
        };
        let mut config = ctx
            .client_config(level, wanted)
            .map_err(|e| fail(e.to_string()))?;
        if let Some(id) = self.client_identity(route)? {
            config = identity::with_identity(&config, &id);
        }
        let mut cfg = base.clone();
        cfg.starttls = StartTls::Required(config);
        cfg.requiretls = true;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::tls_required_no;

    #[test]
    fn tls_required_header() {
        let m = b"Subject: x\r\nTLS-Required:  no \r\n\r\nbody\r\n";
        assert!(tls_required_no(m, false));
        // RFC 8689 §4.2.1: the REQUIRETLS option wins over the header.
        assert!(!tls_required_no(m, true));
        assert!(!tls_required_no(b"TLS-Required: yes\r\n\r\n", false));
        assert!(!tls_required_no(
            b"Subject: x\r\n\r\nTLS-Required: No\r\n",
            false
        ));
    }
}
