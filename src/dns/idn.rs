//! Internationalized domain names in one form: lower-case A-labels (RFC 5890 §2.3.2.1,
//! `exämple.test` → `xn--exmple-cua.test`), the only form DNS, certificates (RFC 6125
//! §6.4.2) and this relay's configuration compare.
//!
//! The conversion is UTS #46 processing (the `idna` crate), as browsers and Postfix's
//! `smtputf8_enable` do: case folding and compatibility mapping first, then Punycode
//! (RFC 3492). Transitional processing is off (`ß` stays `ß`, IDNA2008), CheckHyphens and
//! the STD3 ASCII rules are off as in the WHATWG URL standard: the relay's own checks of
//! label shape (config values, [`routable`]) apply to the result.

use std::borrow::Cow;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// A domain that UTS #46 processing refuses (a disallowed code point, a broken `xn--`
/// label, a bidi rule violation, ...), or that cannot be a DNS name ([`routable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{domain:?} is not a valid domain name: {why}")]
pub struct InvalidDomain {
    pub domain: String,
    pub why: &'static str,
}

const NOT_IDNA: &str = "it is not a valid internationalized domain name (IDNA, UTS #46)";

/// `domain` as lower-case A-labels, trailing dot removed. ASCII names without an `xn--`
/// label are only lower-cased (no allocation when already lower-case); anything else goes
/// through UTS #46 ToASCII, which also verifies existing `xn--` labels. Lengths are not
/// checked here (see [`routable`]).
pub fn to_ascii(domain: &str) -> Result<Cow<'_, str>, InvalidDomain> {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    if d.is_ascii() && !d.split('.').any(is_a_label) {
        return Ok(if d.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(d.to_ascii_lowercase())
        } else {
            Cow::Borrowed(d)
        });
    }
    Uts46::new()
        .to_ascii(
            d.as_bytes(),
            AsciiDenyList::EMPTY,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map(|a| Cow::Owned(a.into_owned()))
        .map_err(|_| InvalidDomain {
            domain: domain.to_string(),
            why: NOT_IDNA,
        })
}

/// `xn--…` in any case (RFC 5890 §2.3.1: the ACE prefix).
fn is_a_label(label: &str) -> bool {
    label
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("xn--"))
}

/// The domain of a recipient (or sender) address as it is routed and looked up: A-labels,
/// and a name DNS can carry (RFC 1035 §2.3.4: labels of 1-63 octets, at most 253 in all).
/// A domain that fails can never be delivered to: the caller refuses it at `RCPT`
/// (`553 5.1.2`, RFC 3463 "bad destination system address") or fails it permanently.
pub fn routable(domain: &str) -> Result<String, InvalidDomain> {
    let ascii = to_ascii(domain)?;
    let invalid = |why| InvalidDomain {
        domain: domain.to_string(),
        why,
    };
    if ascii.is_empty() || ascii.len() > 253 {
        return Err(invalid("it is empty or longer than 253 characters"));
    }
    if ascii.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(invalid(
            "it has an empty label or one longer than 63 characters",
        ));
    }
    Ok(ascii.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_labels_become_lower_case_a_labels() {
        assert_eq!(to_ascii("exämple.test").unwrap(), "xn--exmple-cua.test");
        assert_eq!(to_ascii("EXÄMPLE.Test.").unwrap(), "xn--exmple-cua.test");
        assert_eq!(to_ascii("bücher.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(
            to_ascii("XN--Exmple-CUA.test").unwrap(),
            "xn--exmple-cua.test"
        );
        // IDNA2008, non-transitional: ß is kept (fass.de and faß.de are two names).
        assert_eq!(to_ascii("faß.de").unwrap(), "xn--fa-hia.de");
        // Full-width letters are mapped (UTS #46 compatibility mapping).
        assert_eq!(to_ascii("ｅｘａｍｐｌｅ.test").unwrap(), "example.test");
    }

    #[test]
    fn ascii_names_are_only_lower_cased() {
        assert!(matches!(
            to_ascii("contoso.test"),
            Ok(Cow::Borrowed("contoso.test"))
        ));
        assert_eq!(to_ascii("Contoso.TEST").unwrap(), "contoso.test");
        assert_eq!(
            to_ascii("_mta-sts.contoso.test").unwrap(),
            "_mta-sts.contoso.test"
        );
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            "xn--zz.test",
            "xn--a.test",
            "a\u{200d}b.test",
            "\u{fffd}.test",
        ] {
            assert!(to_ascii(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            to_ascii("xn--zz.test").unwrap_err().to_string(),
            "\"xn--zz.test\" is not a valid domain name: it is not a valid internationalized domain name (IDNA, UTS #46)"
        );
        assert!(
            routable(&format!("{}.test", "ä".repeat(60))).is_err(),
            "label too long"
        );
        assert!(routable("a..test").is_err());
        assert_eq!(routable("Exämple.test.").unwrap(), "xn--exmple-cua.test");
    }
}
