//! Regenerates the test PKI in `certs-test/` (overwriting what is there).
//!
//! Run with `cargo run --example gen-certs`. The generated files are committed: tests read
//! them and never regenerate them, so a regeneration is a deliberate, reviewed change.
//! Keys are ECDSA P-256 in PKCS#8 PEM (rustls accepts them for both server and client
//! authentication); certificates are PEM. See `certs-test/README.md` for what each file is.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SerialNumber, date_time_ymd,
};
use time::OffsetDateTime;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Fixed serial numbers, so the revoked certificate's serial is known and stable across
/// regenerations (the CRL and the README name it). Kept below 2^63 so the DER INTEGER is
/// positive without padding games (RFC 5280 §4.1.2.2: serials are positive integers).
const SERIAL_CA: u64 = 0x01;
const SERIAL_RELAY: u64 = 0x1001;
const SERIAL_ONPREM: u64 = 0x1002;
const SERIAL_FABRIKAM: u64 = 0x1003;
const SERIAL_WRONGNAME: u64 = 0x1004;
const SERIAL_EXPIRED: u64 = 0x1005;
const SERIAL_REVOKED: u64 = 0x1006;
const SERIAL_SINK: u64 = 0x1007;
const SERIAL_SELFSIGNED: u64 = 0x2001;
const SERIAL_UNTRUSTED_CA: u64 = 0x3001;
const SERIAL_UNTRUSTED: u64 = 0x3002;

/// A CA: its certificate (needed to sign, for the issuer name and key identifier) and key.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn new_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "connector-relay tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(common_name: &str, serial: u64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.serial_number = Some(SerialNumber::from(serial));
    params.not_before = date_time_ymd(2024, 1, 1);
    params.not_after = date_time_ymd(2046, 1, 1);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // keyCertSign to issue certificates, cRLSign to sign `ca.crl.pem` (RFC 5280 §4.2.1.3).
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn new_ca(common_name: &str, serial: u64) -> Result<Ca> {
    let key = new_key()?;
    let cert = ca_params(common_name, serial).self_signed(&key)?;
    Ok(Ca { cert, key })
}

/// Parameters of an end-entity certificate usable both as a TLS server certificate and as
/// an SMTP client certificate (an MTA is both: it receives with one and presents the same
/// one when it relays onward, which is what certificate-based connectors match on).
fn leaf_params(
    common_name: &str,
    sans: &[&str],
    serial: u64,
    validity: (OffsetDateTime, OffsetDateTime),
) -> Result<CertificateParams> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    // `CertificateParams::new` turns strings that parse as IP addresses into iPAddress SANs.
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = dn(common_name);
    params.serial_number = Some(SerialNumber::from(serial));
    params.not_before = validity.0;
    params.not_after = validity.1;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn standard_validity() -> (OffsetDateTime, OffsetDateTime) {
    (date_time_ymd(2024, 1, 1), date_time_ymd(2046, 1, 1))
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Issues a leaf from `ca` and writes `<name>.crt` (leaf only) and `<name>.key`.
fn issue(
    dir: &Path,
    ca: &Ca,
    name: &str,
    common_name: &str,
    sans: &[&str],
    serial: u64,
    validity: (OffsetDateTime, OffsetDateTime),
) -> Result<Certificate> {
    let key = new_key()?;
    let cert =
        leaf_params(common_name, sans, serial, validity)?.signed_by(&key, &ca.cert, &ca.key)?;
    write(dir, &format!("{name}.crt"), &cert.pem())?;
    write(dir, &format!("{name}.key"), &key.serialize_pem())?;
    Ok(cert)
}

fn output_dir() -> PathBuf {
    // The manifest directory, not the current one, so the example works from anywhere.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-test")
}

fn main() -> Result<()> {
    let dir = output_dir();
    fs::create_dir_all(&dir)?;
    let valid = standard_validity();

    // The trusted test root.
    let ca = new_ca("connector-relay Test CA", SERIAL_CA)?;
    write(&dir, "ca.crt", &ca.cert.pem())?;
    write(&dir, "ca.key", &ca.key.serialize_pem())?;

    // The relay itself; the chain file is what a server presents (leaf, then issuer).
    let relay = issue(
        &dir,
        &ca,
        "relay.contoso.test",
        "relay.contoso.test",
        &["relay.contoso.test", "localhost", "127.0.0.1", "::1"],
        SERIAL_RELAY,
        valid,
    )?;
    write(
        &dir,
        "relay.contoso.test.chain.crt",
        &format!("{}{}", relay.pem(), ca.cert.pem()),
    )?;

    // The on-premises organisation (hybrid: cross-premises mail, OnPremises connectors).
    issue(
        &dir,
        &ca,
        "onprem.contoso.test",
        "mail.contoso.test",
        &["mail.contoso.test", "onprem.contoso.test"],
        SERIAL_ONPREM,
        valid,
    )?;

    // The partner for forced-TLS connectors.
    issue(
        &dir,
        &ca,
        "mail.fabrikam.test",
        "mail.fabrikam.test",
        &["mail.fabrikam.test"],
        SERIAL_FABRIKAM,
        valid,
    )?;

    // Trusted chain, wrong name: must fail certificate-name checks (4.4.317 / 5.7.51).
    issue(
        &dir,
        &ca,
        "wrongname",
        "mail.evil.test",
        &["mail.evil.test"],
        SERIAL_WRONGNAME,
        valid,
    )?;

    // Right name and chain, outside its validity period: must fail validation (4.7.320).
    issue(
        &dir,
        &ca,
        "expired",
        "mail.fabrikam.test",
        &["mail.fabrikam.test"],
        SERIAL_EXPIRED,
        (date_time_ymd(2020, 1, 1), date_time_ymd(2021, 1, 1)),
    )?;

    // Right name and chain, but listed in `ca.crl.pem`.
    issue(
        &dir,
        &ca,
        "revoked",
        "mail.fabrikam.test",
        &["mail.fabrikam.test"],
        SERIAL_REVOKED,
        valid,
    )?;

    // The test sink (a fake remote MTA); the wildcard lets one certificate serve many
    // test hostnames.
    issue(
        &dir,
        &ca,
        "sink.test",
        "sink.test",
        &["sink.test", "*.sink.test", "localhost", "127.0.0.1", "::1"],
        SERIAL_SINK,
        valid,
    )?;

    // Right name, self-signed: no chain to any trust anchor.
    {
        let key = new_key()?;
        let mut params = leaf_params(
            "mail.fabrikam.test",
            &["mail.fabrikam.test"],
            SERIAL_SELFSIGNED,
            valid,
        )?;
        // A self-signed certificate has no separate authority key to identify.
        params.use_authority_key_identifier_extension = false;
        let cert = params.self_signed(&key)?;
        write(&dir, "selfsigned.crt", &cert.pem())?;
        write(&dir, "selfsigned.key", &key.serialize_pem())?;
    }

    // Right name, valid chain to a CA that nobody trusts. Its key is not kept: nothing
    // needs to issue from it again.
    {
        let untrusted_ca = new_ca("Untrusted Test CA", SERIAL_UNTRUSTED_CA)?;
        write(&dir, "untrusted-ca.crt", &untrusted_ca.cert.pem())?;
        issue(
            &dir,
            &untrusted_ca,
            "untrusted",
            "mail.fabrikam.test",
            &["mail.fabrikam.test"],
            SERIAL_UNTRUSTED,
            valid,
        )?;
    }

    // The CRL of the test CA, revoking `revoked.crt` (RFC 5280 §5).
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2046, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(SERIAL_REVOKED),
            revocation_time: date_time_ymd(2024, 1, 2),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: ca.cert.params().key_identifier_method.clone(),
    }
    .signed_by(&ca.cert, &ca.key)?;
    write(&dir, "ca.crl.pem", &crl.pem()?)?;

    Ok(())
}
