//! What changes in a message as it leaves on a route (policy.md "Outbound: headers"):
//! cross-premises headers per `CloudServicesMailEnabled`, and the envelope sender per
//! `SenderRewritingEnabled` (SRS). Applied once per route group, before the first attempt.

use std::borrow::Cow;

use crate::message::headers::rewrite_outbound;
use crate::message::srs::Srs;
use crate::policy::restrict::is_accepted;
use crate::policy::route::Route;
use crate::policy::{DomainPattern, Policy};

/// The domain SRS addresses are issued at: the first exact (`contoso.com`, not
/// `*.contoso.com`) accepted domain, else `[Relay] Fqdn`. Exchange Online rewrites to the
/// tenant's domain; the first accepted domain is its closest equivalent here.
pub fn srs_domain(policy: &Policy) -> String {
    policy
        .relay
        .accepted_domains
        .iter()
        .find_map(|p| match p {
            DomainPattern::Exact(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_else(|| policy.relay.fqdn.clone())
}

/// The envelope sender and the message as they leave on `route`:
/// - the header section goes through [`rewrite_outbound`] with the connector's
///   `CloudServicesMailEnabled` (`false` for the default MX route); the body is untouched;
/// - with `SenderRewritingEnabled`, a sender whose domain is not accepted becomes an SRS0
///   address at [`srs_domain`]; the null sender and accepted senders are kept.
pub fn for_route<'a>(
    policy: &Policy,
    srs: Option<&Srs>,
    route: &Route,
    mail_from: &'a str,
    data: &'a [u8],
) -> (Cow<'a, str>, Cow<'a, [u8]>) {
    let csme = route.cloud_services_mail_enabled.unwrap_or(false);
    let data = Cow::Owned(rewrite_outbound(data, csme));
    let sender_domain = mail_from
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
    let mail_from = match (route.sender_rewriting, srs, sender_domain) {
        (true, Some(srs), Some(domain)) if !is_accepted(policy, &domain) => {
            match srs.forward(mail_from, &srs_domain(policy)) {
                Some(rewritten) => {
                    tracing::debug!(from = mail_from, to = %rewritten, "sender rewritten (SRS)");
                    Cow::Owned(rewritten)
                }
                None => Cow::Borrowed(mail_from),
            }
        }
        (true, None, Some(_)) => {
            tracing::warn!("SenderRewritingEnabled but no SRS secret loaded; sender kept");
            Cow::Borrowed(mail_from)
        }
        _ => Cow::Borrowed(mail_from),
    };
    (mail_from, data)
}
