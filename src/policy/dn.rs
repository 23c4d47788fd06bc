//! Distinguished names as x509-parser prints them (`C=US, O=Contoso, CN=Contoso CA`) compared
//! with names an administrator writes: attribute types and values without case, whitespace
//! around `=` and `,` ignored, runs of whitespace collapsed. The RDN order may be the
//! certificate's or the reverse (Windows prints `CN=..., O=..., C=...`), so a value copied
//! from either side matches. Used for `TlsCertificateName` (outbound identities) and
//! `TlsSenderCertificateIssuer` (inbound issuers).

/// Normalised RDN list of a DN string.
fn rdns(dn: &str) -> Vec<String> {
    dn.split(',')
        .map(|rdn| {
            let (k, v) = rdn.split_once('=').unwrap_or(("", rdn));
            format!("{}={}", k.trim(), collapse(v)).to_lowercase()
        })
        .filter(|r| r != "=")
        .collect()
}

/// Trimmed, with every run of whitespace made one space.
fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Does `wanted` (as written in the config) name the DN `actual` (x509-parser's text)?
pub fn dn_matches(wanted: &str, actual: &str) -> bool {
    let (w, a) = (rdns(wanted), rdns(actual));
    w == a || w.iter().rev().eq(a.iter())
}

/// The CN of a DN (the last one, the most specific, when there are several).
fn common_name(dn: &str) -> Option<String> {
    dn.split(',').rev().find_map(|rdn| {
        let (k, v) = rdn.split_once('=')?;
        k.trim().eq_ignore_ascii_case("CN").then(|| collapse(v))
    })
}

/// `TlsSenderCertificateIssuer`: does the issuer DN `issuer` (x509-parser's text) match the
/// configured `wanted`, a whole DN or the issuer's CN alone (written bare, `Fabrikam CA`,
/// or as `CN=Fabrikam CA`)?
pub fn issuer_matches(wanted: &str, issuer: &str) -> bool {
    if dn_matches(wanted, issuer) {
        return true;
    }
    let wanted_cn = match wanted.contains('=') {
        false => Some(collapse(wanted)),
        true if !wanted.contains(',') => common_name(wanted),
        true => None,
    };
    match (wanted_cn, common_name(issuer)) {
        (Some(w), Some(i)) => w.eq_ignore_ascii_case(&i),
        _ => false,
    }
}

/// Checks that `s` is a DN (`CN=Fabrikam CA, O=Fabrikam`: every part `type=value`, the type a
/// name or dotted OID, the value not empty) or a bare CN (no `=` or `,`).
pub fn parse_dn_or_cn(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("the value is empty; expected an issuer name such as \"CN=Fabrikam CA, O=Fabrikam\" or \"Fabrikam CA\"".into());
    }
    if !s.contains('=') {
        if s.contains(',') {
            return Err(format!(
                "{s:?} is neither a distinguished name (\"CN=..., O=...\") nor a common name (a CN alone has no comma)"
            ));
        }
        return Ok(());
    }
    for rdn in s.split(',') {
        let (k, v) = rdn.split_once('=').unwrap_or((rdn, ""));
        let k = k.trim();
        let type_ok = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !type_ok || v.trim().is_empty() {
            return Err(format!(
                "{s:?} is not a distinguished name: {:?} is not \"type=value\" (e.g. \"CN=Fabrikam CA, O=Fabrikam\")",
                rdn.trim()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_matching() {
        let actual = "O=connector-relay tests, CN=connector-relay Test CA";
        assert!(dn_matches(
            "O=connector-relay tests, CN=connector-relay Test CA",
            actual
        ));
        assert!(dn_matches(
            "cn = Connector-Relay  Test CA,o=connector-relay tests",
            actual
        ));
        assert!(!dn_matches("CN=connector-relay Test CA", actual));
        assert!(!dn_matches("O=other, CN=connector-relay Test CA", actual));
    }

    #[test]
    fn issuer_by_dn_or_cn() {
        let issuer = "C=US, O=Fabrikam, CN=Fabrikam Issuing CA";
        assert!(issuer_matches(
            "CN=Fabrikam Issuing CA, O=Fabrikam, C=US",
            issuer
        ));
        assert!(issuer_matches(
            "c=us,o=fabrikam,cn=fabrikam  issuing ca",
            issuer
        ));
        assert!(issuer_matches("Fabrikam Issuing CA", issuer));
        assert!(issuer_matches(" fabrikam issuing CA ", issuer));
        assert!(issuer_matches("CN = Fabrikam Issuing CA", issuer));
        // A partial DN is not the issuer; nor is another CN.
        assert!(!issuer_matches("CN=Fabrikam Issuing CA, O=Contoso", issuer));
        assert!(!issuer_matches("O=Fabrikam", issuer));
        assert!(!issuer_matches("Fabrikam", issuer));
        assert!(!issuer_matches("Contoso Issuing CA", issuer));
        assert!(!issuer_matches("Fabrikam Issuing CA", "O=Fabrikam"));
    }

    #[test]
    fn dn_or_cn_syntax() {
        assert!(parse_dn_or_cn("CN=Fabrikam Issuing CA, O=Fabrikam").is_ok());
        assert!(parse_dn_or_cn("Fabrikam Issuing CA").is_ok());
        assert!(parse_dn_or_cn("2.5.4.3=Fabrikam").is_ok());
        assert!(parse_dn_or_cn("").is_err());
        assert!(parse_dn_or_cn("Fabrikam, Inc").is_err());
        assert!(parse_dn_or_cn("CN=").is_err());
        assert!(parse_dn_or_cn("CN=a,,O=b").is_err());
        assert!(parse_dn_or_cn("=a").is_err());
        assert!(parse_dn_or_cn("CN=a, O").is_err());
    }
}
