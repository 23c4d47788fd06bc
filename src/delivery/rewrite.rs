//! What changes in a message as it leaves on a route (policy.md "Outbound: headers"):
//! cross-premises headers per `CloudServicesMailEnabled`, and the envelope sender per
//! `SenderRewritingEnabled` (SRS). Applied once per route group, before the first attempt.

use std::borrow::Cow;

use crate::message::headers::rewrite_outbound_cow;
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
/// - the header section goes through [`rewrite_outbound_cow`] with the connector's
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
    let data = rewrite_outbound_cow(data, csme);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::route::test_support::{pat, policy};

    const MSG: &[u8] = b"X-MS-Exchange-Organization-SCL: 5\r\n\
X-MS-Exchange-CrossPremises-X: 1\r\nSubject: s\r\n\r\nX-MS-Exchange-Organization-SCL: body\r\n";

    #[test]
    fn headers_by_route() {
        let p = policy();
        let mx = Route::default_mx(25);
        let (_, data) = for_route(&p, None, &mx, "a@x.test", MSG);
        assert_eq!(
            &data[..],
            b"Subject: s\r\n\r\nX-MS-Exchange-Organization-SCL: body\r\n"
        );
        let csme = Route {
            cloud_services_mail_enabled: Some(true),
            ..mx.clone()
        };
        let (_, data) = for_route(&p, None, &csme, "a@x.test", MSG);
        assert_eq!(
            &data[..],
            b"X-MS-Exchange-CrossPremises-SCL: 5\r\nX-MS-Exchange-CrossPremises-X: 1\r\n\
Subject: s\r\n\r\nX-MS-Exchange-Organization-SCL: body\r\n"
        );
    }

    #[test]
    fn srs_only_for_foreign_senders_on_srs_routes() {
        let mut p = policy();
        p.relay.accepted_domains = vec![pat("*.corp.contoso.test"), pat("contoso.test")];
        assert_eq!(srs_domain(&p), "contoso.test");
        let srs = Srs::new(b"k");
        let route = Route {
            sender_rewriting: true,
            ..Route::default_mx(25)
        };
        let from = |r: &Route, s: &str| for_route(&p, Some(&srs), r, s, b"").0.into_owned();
        assert!(from(&route, "alice@fabrikam.test").starts_with("SRS0="));
        assert!(from(&route, "alice@fabrikam.test").ends_with("=fabrikam.test=alice@contoso.test"));
        assert_eq!(from(&route, "bob@contoso.test"), "bob@contoso.test");
        assert_eq!(
            from(&route, "bob@x.corp.contoso.test"),
            "bob@x.corp.contoso.test"
        );
        assert_eq!(from(&route, ""), "");
        let plain = Route::default_mx(25);
        assert_eq!(from(&plain, "alice@fabrikam.test"), "alice@fabrikam.test");
        p.relay.accepted_domains = vec![pat("*.corp.contoso.test")];
        assert_eq!(srs_domain(&p), "relay.contoso.test");
    }
}
