//! Valid configs load into the expected policy model: the complete example of
//! `shared/spec/config.md` (`tests/fixtures/spec-example.toml`), the defaults, and the
//! accepted spellings of every value syntax.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use connector_relay::config::{Loaded, load_file, load_str, summary};
use connector_relay::policy::*;
use ipnet::IpNet;

/// The fixture refers to `certs-test/...`; the loader checks that those files exist, so the
/// test writes stand-ins into a temporary directory and points the config there.
fn load_spec_example() -> (Loaded, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs-test");
    fs::create_dir(&certs).unwrap();
    for name in ["ca.crt", "relay.contoso.test.crt", "relay.contoso.test.key"] {
        fs::write(certs.join(name), "placeholder\n").unwrap();
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spec-example.toml");
    let text = fs::read_to_string(fixture).unwrap();
    let text = text.replace("\"certs-test/", &format!("\"{}/", certs.display()));
    let config = dir.path().join("relay.toml");
    fs::write(&config, text).unwrap();
    let loaded = load_file(&config).unwrap_or_else(|errors| panic!("{}", render(&errors)));
    (loaded, dir)
}

fn render(errors: &[connector_relay::config::ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn load(text: &str) -> Loaded {
    load_str(text, Path::new("relay.toml")).unwrap_or_else(|errors| panic!("{}", render(&errors)))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn exact(s: &str) -> DomainPattern {
    DomainPattern::Exact(s.to_string())
}

#[test]
fn spec_example_relay() {
    let (loaded, dir) = load_spec_example();
    let r = &loaded.policy.relay;
    assert_eq!(r.fqdn, "relay.contoso.test");
    assert_eq!(
        r.listen,
        vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert!(r.implicit_tls_listen.is_empty());
    let certs = dir.path().join("certs-test");
    assert_eq!(
        r.tls_certificate,
        Some(certs.join("relay.contoso.test.crt"))
    );
    assert_eq!(
        r.tls_private_key,
        Some(certs.join("relay.contoso.test.key"))
    );
    assert_eq!(r.trusted_ca_file, Some(certs.join("ca.crt")));
    assert_eq!(r.accepted_domains, vec![exact("contoso.test")]);
    assert_eq!(r.spool_dir, PathBuf::from("var/spool"));
    // Defaults from the [Relay] table of config.md.
    assert_eq!(r.data_dir, PathBuf::from("var"));
    assert_eq!(r.max_message_size, 25 * 1024 * 1024);
    assert_eq!(r.max_recipients_per_message, 500);
    assert!(r.dns_servers.is_empty());
    assert!(r.external_dns_servers.is_empty());
    assert_eq!(r.delivery_port, 25);
    assert_eq!(
        r.message_expiration_timeout,
        Duration::from_secs(2 * 86_400)
    );
    assert_eq!(r.transient_failure_retry_interval, Duration::from_secs(300));
    assert_eq!(r.max_retry_interval, Duration::from_secs(3600));
    assert_eq!(r.delay_notification_timeout, Duration::from_secs(4 * 3600));
    assert_eq!(
        r.admin_listen,
        "127.0.0.1:8025".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(r.admin_token_file, PathBuf::from("var/admin.token"));
    assert_eq!(r.protocol_log_dir, PathBuf::from("var/log/protocol"));
    assert_eq!(r.trace_retention_days, 30);
    assert_eq!(r.srs_secret_file, PathBuf::from("var/srs.key"));
    assert_eq!(r.bare_newline_policy, BareNewlinePolicy::Reject);
    assert_eq!(r.max_inbound_connection, 5000);
    assert_eq!(r.max_inbound_connection_per_source, 20);
    assert_eq!(r.max_inbound_connection_rate_per_source, 600);
    assert_eq!(r.connection_timeout, Duration::from_secs(600));
    assert_eq!(r.connection_inactivity_timeout, Duration::from_secs(300));
    assert_eq!(r.max_protocol_errors, 5);
    assert_eq!(r.max_header_size, 256 * 1024);
    assert!(r.certificates.is_empty());
    assert!(r.revocation_lists.is_empty());
}

#[test]
fn spec_example_connectors() {
    let (loaded, _dir) = load_spec_example();
    let p = &loaded.policy;
    assert_eq!(p.inbound.len(), 2);
    let onprem = &p.inbound[0];
    assert_eq!(onprem.name, "From on-premises");
    assert!(onprem.enabled);
    assert_eq!(onprem.connector_type, ConnectorType::OnPremises);
    assert_eq!(onprem.sender_ip_addresses, vec![net("127.0.0.10/32")]);
    assert!(onprem.cloud_services_mail_enabled);
    assert!(!onprem.require_tls);

    let fabrikam = &p.inbound[1];
    assert_eq!(fabrikam.connector_type, ConnectorType::Partner);
    assert_eq!(
        fabrikam.sender_domains,
        vec![
            exact("fabrikam.test"),
            DomainPattern::Subdomains("fabrikam.test".into())
        ]
    );
    assert_eq!(fabrikam.sender_ip_addresses, vec![net("127.0.0.20/30")]);
    assert!(fabrikam.restrict_domains_to_ip_addresses);
    assert!(fabrikam.require_tls);
    assert_eq!(
        fabrikam.tls_sender_certificate_name,
        Some(exact("mail.fabrikam.test"))
    );
    assert!(fabrikam.restrict_domains_to_certificate);

    assert_eq!(p.outbound.len(), 2);
    let to_onprem = &p.outbound[0];
    assert_eq!(to_onprem.connector_type, ConnectorType::OnPremises);
    assert!(to_onprem.all_accepted_domains);
    assert!(!to_onprem.use_mx_record);
    assert_eq!(
        to_onprem.smart_hosts,
        vec![SmartHost::Ip {
            addr: "127.0.0.11".parse().unwrap(),
            port: Some(2626)
        }]
    );
    assert_eq!(
        to_onprem.tls_settings,
        Some(TlsLevel::CertificateValidation)
    );
    let to_fabrikam = &p.outbound[1];
    assert!(to_fabrikam.use_mx_record);
    assert_eq!(to_fabrikam.recipient_domains, vec![exact("fabrikam.test")]);
    assert_eq!(to_fabrikam.tls_settings, Some(TlsLevel::DomainValidation));
    assert_eq!(
        to_fabrikam.tls_domain,
        Some(DomainPattern::Subdomains("fabrikam.test".into()))
    );
    assert_eq!(to_fabrikam.mta_sts_mode, MtaStsMode::Opportunistic);
    assert_eq!(to_fabrikam.smtp_dane_mode, DaneMode::Opportunistic);

    assert_eq!(p.send.len(), 1);
    let s = &p.send[0];
    assert_eq!(s.name, "Internet via smart host");
    assert_eq!(
        s.address_spaces,
        vec![AddressSpace {
            domain: DomainPattern::Any,
            cost: 10
        }]
    );
    assert!(!s.dns_routing_enabled);
    assert_eq!(
        s.smart_hosts,
        vec![SmartHost::Ip {
            addr: "127.0.0.12".parse().unwrap(),
            port: None
        }]
    );
    assert_eq!(s.port, 2626);
    assert!(s.require_tls);
    assert_eq!(s.tls_auth_level, Some(TlsLevel::EncryptionOnly));
    assert!(
        loaded.warnings.is_empty(),
        "unexpected warnings: {}",
        render(&loaded.warnings)
    );
}

#[test]
fn spec_example_summary() {
    let (loaded, _dir) = load_spec_example();
    let lines = summary(&loaded.policy);
    assert_eq!(lines.len(), 6);
    assert_eq!(
        lines[0],
        "Relay    relay.contoso.test listen 127.0.0.1:2525; STARTTLS on; accepted domains: contoso.test"
    );
    assert_eq!(
        lines[1],
        "Inbound  \"From on-premises\" OnPremises enabled: 1 IP range(s), 0 sender domain(s), cert=-, RequireTls=false"
    );
    assert_eq!(
        lines[3],
        "Outbound \"To on-premises\" OnPremises enabled: all accepted domains; smart hosts 127.0.0.11:2626; TLS CertificateValidation"
    );
    assert_eq!(
        lines[5],
        "Send     \"Internet via smart host\" enabled: address spaces *;10; smart hosts 127.0.0.12; port 2626; RequireTLS=true, TLS EncryptionOnly"
    );
}

#[test]
fn empty_file_gives_all_defaults() {
    let loaded = load("");
    let r = &loaded.policy.relay;
    assert!(!r.fqdn.is_empty(), "Fqdn defaults to the host name");
    assert_eq!(
        r.listen,
        vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert!(
        loaded.policy.inbound.is_empty()
            && loaded.policy.outbound.is_empty()
            && loaded.policy.send.is_empty()
    );
}

#[test]
fn send_connector_defaults_follow_exchange() {
    let loaded = load("[[SendConnector]]\nName = \"Internet\"\nAddressSpaces = [\"*\"]\n");
    let s = &loaded.policy.send[0];
    assert!(s.enabled);
    assert_eq!(
        s.address_spaces,
        vec![AddressSpace {
            domain: DomainPattern::Any,
            cost: 1
        }]
    );
    assert!(s.dns_routing_enabled);
    assert_eq!(s.port, 25);
    assert!(!s.require_tls && !s.ignore_starttls && !s.force_helo && !s.domain_secure_enabled);
    assert_eq!(s.tls_auth_level, None);
    assert_eq!(s.smart_host_auth_mechanism, AuthMechanism::None);
    assert_eq!(s.max_message_size, Some(25 * 1024 * 1024));
    assert_eq!(s.smtp_max_messages_per_connection, 20);
    assert_eq!(s.connection_inactivity_timeout, Duration::from_secs(600));
    assert_eq!(s.error_policies, vec![ErrorPolicy::Default]);
    assert_eq!(s.protocol_logging_level, ProtocolLoggingLevel::None);
}

#[test]
fn outbound_and_inbound_defaults() {
    let loaded = load(
        "[[InboundConnector]]\nName = \"In\"\nSenderDomains = [\"fabrikam.test\"]\n\n\
         [[OutboundConnector]]\nName = \"Out\"\nRecipientDomains = [\"fabrikam.test\"]\n",
    );
    let i = &loaded.policy.inbound[0];
    assert!(i.enabled);
    assert_eq!(i.connector_type, ConnectorType::Partner);
    assert!(!i.require_tls && !i.treat_messages_as_internal && !i.cloud_services_mail_enabled);
    let o = &loaded.policy.outbound[0];
    assert!(o.enabled && o.use_mx_record);
    assert_eq!(o.connector_type, ConnectorType::Partner);
    assert_eq!(o.tls_settings, None);
    assert_eq!(o.mta_sts_mode, MtaStsMode::Opportunistic);
    assert_eq!(o.smtp_dane_mode, DaneMode::Opportunistic);
    assert!(!o.test_mode && !o.is_validated && !o.is_transport_rule_scoped);
}

#[test]
fn lenient_value_spellings() {
    let loaded = load(
        r#"
[Relay]
Fqdn = "Relay.Contoso.Test."
MaxMessageSize = 1048576
MaxHeaderSize = "64 kb"
DnsServers = ["127.0.0.53", "[::1]:5353"]
MessageExpirationTimeout = "1.12:00:00"
BareNewlinePolicy = "normalize"

[[InboundConnector]]
Name = "Ranges"
ConnectorType = "onpremises"
SenderIPAddresses = ["10.0.0.1/24", "192.168.0.0-192.168.1.255", "2001:DB8::1"]

[[SendConnector]]
Name = "Partners"
AddressSpaces = ["SMTP:*.Contoso.com;2", "fabrikam.com;1", "tailspin.com"]
DNSRoutingEnabled = false
SmartHosts = ["Smart.Contoso.com", "[2001:db8::25]:2525", "10.1.1.1:26", "::1"]
MaxMessageSize = "Unlimited"
ErrorPolicies = "DowngradeDnsFailures, DowngradeCustomFailures"
TlsAuthLevel = "certificatevalidation"
RequireTLS = true
ConnectionInactivityTimeOut = "00:15:00"

[[OutboundConnector]]
Name = "Range"
RecipientDomains = ["range.test"]
UseMXRecord = false
SmartHosts = ["192.168.0.1/25"]
"#,
    );
    let r = &loaded.policy.relay;
    assert_eq!(r.fqdn, "relay.contoso.test");
    assert_eq!(r.max_message_size, 1 << 20);
    assert_eq!(r.max_header_size, 64 << 10);
    assert_eq!(
        r.dns_servers,
        vec![
            "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
            "[::1]:5353".parse().unwrap()
        ]
    );
    assert_eq!(r.message_expiration_timeout, Duration::from_secs(36 * 3600));
    assert_eq!(r.bare_newline_policy, BareNewlinePolicy::Normalize);

    let i = &loaded.policy.inbound[0];
    assert_eq!(i.connector_type, ConnectorType::OnPremises);
    assert_eq!(
        i.sender_ip_addresses,
        vec![
            net("10.0.0.0/24"),
            net("192.168.0.0/23"),
            net("2001:db8::1/128")
        ]
    );
    // The host bits of 10.0.0.1/24 are dropped with a warning on that line.
    assert_eq!(loaded.warnings.len(), 1, "{}", render(&loaded.warnings));
    assert_eq!(loaded.warnings[0].line, 13);
    assert_eq!(loaded.warnings[0].key, "SenderIPAddresses");

    let s = &loaded.policy.send[0];
    assert_eq!(
        s.address_spaces,
        vec![
            AddressSpace {
                domain: DomainPattern::Subdomains("contoso.com".into()),
                cost: 2
            },
            AddressSpace {
                domain: exact("fabrikam.com"),
                cost: 1
            },
            AddressSpace {
                domain: exact("tailspin.com"),
                cost: 1
            },
        ]
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        s.smart_hosts,
        vec![
            SmartHost::Name {
                host: "smart.contoso.com".into(),
                port: None
            },
            SmartHost::Ip {
                addr: ip("2001:db8::25"),
                port: Some(2525)
            },
            SmartHost::Ip {
                addr: ip("10.1.1.1"),
                port: Some(26)
            },
            SmartHost::Ip {
                addr: ip("::1"),
                port: None
            },
        ]
    );
    // An Outbound connector takes a CIDR smart host (New-OutboundConnector allows it); a
    // Send connector does not (tests/bad_configs: send smart host CIDR).
    assert_eq!(
        loaded.policy.outbound[0].smart_hosts,
        vec![SmartHost::Cidr {
            net: net("192.168.0.0/25"),
            port: None
        }]
    );
    assert_eq!(s.max_message_size, None);
    assert_eq!(
        s.error_policies,
        vec![
            ErrorPolicy::DowngradeDnsFailures,
            ErrorPolicy::DowngradeCustomFailures
        ]
    );
    assert_eq!(s.tls_auth_level, Some(TlsLevel::CertificateValidation));
    assert_eq!(s.connection_inactivity_timeout, Duration::from_secs(900));
}

#[test]
fn certificates_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| {
        let p = dir.path().join(name);
        fs::write(&p, "x").unwrap();
        p.display().to_string()
    };
    // TlsCertificateName must name a real certificate (its issuer and subject are read).
    let real = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("certs-test")
            .join(name)
            .display()
            .to_string()
    };
    let (c1, k1, c2, k2, pw) = (
        real("mail.fabrikam.test.crt"),
        real("mail.fabrikam.test.key"),
        file("b.crt"),
        file("b.key"),
        file("pw"),
    );
    let text = format!(
        r#"
[Relay]
Certificates = [{{ Certificate = "{c1}", PrivateKey = "{k1}" }}]

[[SendConnector]]
Name = "Smart host"
AddressSpaces = ["*"]
DNSRoutingEnabled = false
SmartHosts = ["smart.contoso.test"]
RequireTLS = true
SmartHostAuthMechanism = "BasicAuthRequireTLS"
AuthenticationCredential = {{ UserName = "relay@contoso.test", PasswordFile = "{pw}" }}
TlsCertificateName = "<I>CN=connector-relay Test CA, O=connector-relay tests<S>CN=mail.fabrikam.test, O=connector-relay tests"
"#
    );
    let loaded = load(&text);
    let certs = &loaded.policy.relay.certificates;
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].certificate, PathBuf::from(&c1));
    assert_eq!(certs[0].private_key, PathBuf::from(&k1));
    let s = &loaded.policy.send[0];
    let cred = s.authentication_credential.as_ref().unwrap();
    assert_eq!(cred.user_name, "relay@contoso.test");
    assert_eq!(cred.password_file, PathBuf::from(&pw));

    // The same identities as [[Relay.Certificates]] tables.
    let text = format!(
        "[Relay]\n[[Relay.Certificates]]\nCertificate = \"{c1}\"\nPrivateKey = \"{k1}\"\n\
         [[Relay.Certificates]]\nCertificate = \"{c2}\"\nPrivateKey = \"{k2}\"\n"
    );
    let loaded = load(&text);
    let paths: Vec<(String, String)> = loaded
        .policy
        .relay
        .certificates
        .iter()
        .map(|c| {
            (
                c.certificate.display().to_string(),
                c.private_key.display().to_string(),
            )
        })
        .collect();
    assert_eq!(paths, vec![(c1, k1), (c2, k2)]);
}

#[test]
fn warnings_do_not_stop_loading() {
    let loaded = load("[[OutboundConnector]]\nName = \"Nowhere\"\nTlsDomain = \"contoso.com\"\n");
    let keys: Vec<(usize, &str)> = loaded
        .warnings
        .iter()
        .map(|w| (w.line, w.key.as_str()))
        .collect();
    assert_eq!(keys, vec![(1, "RecipientDomains"), (3, "TlsDomain")]);
}

#[test]
fn inbound_and_outbound_may_share_a_name() {
    // Names are unique per namespace: inbound among inbound, outbound and send together.
    load(
        "[[InboundConnector]]\nName = \"Fabrikam\"\nSenderDomains = [\"fabrikam.test\"]\n\
         [[OutboundConnector]]\nName = \"Fabrikam\"\nRecipientDomains = [\"fabrikam.test\"]\n",
    );
    let errors = load_str(
        "[[OutboundConnector]]\nName = \"Fabrikam\"\nRecipientDomains = [\"fabrikam.test\"]\n\
         [[SendConnector]]\nName = \"FABRIKAM\"\nAddressSpaces = [\"fabrikam.test\"]\n",
        Path::new("relay.toml"),
    )
    .unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "relay.toml:5: Name: \"FABRIKAM\" is already the name of the outbound or send connector on line 2; names must be unique"
    );
}

#[test]
fn inline_connector_tables_and_multi_line_arrays() {
    let text = r#"InboundConnector = [
  { Name = "A", SenderDomains = ["a.test"] },
  { Name = "B", SenderIPAddresses = [
      "10.0.0.0/8",
      "10.0.0.0/40",
  ] },
]
"#;
    let errors = load_str(text, Path::new("relay.toml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "relay.toml:5: SenderIPAddresses: \"10.0.0.0/40\" is not an IP address or CIDR range: the prefix length /40 is larger than 32"
    );
    let loaded = load(&text.replace("10.0.0.0/40", "10.0.0.0/16"));
    assert_eq!(loaded.policy.inbound.len(), 2);
    assert_eq!(
        loaded.policy.inbound[1].sender_ip_addresses,
        vec![net("10.0.0.0/8"), net("10.0.0.0/16")]
    );
}

#[test]
fn a_number_for_a_time_span_says_what_is_expected() {
    let errors = load_str(
        "[Relay]\nConnectionTimeout = 600\n",
        Path::new("relay.toml"),
    )
    .unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "relay.toml:2: ConnectionTimeout: expected a time span string such as \"00:10:00\", found an integer (600)"
    );
}

#[test]
fn mta_sts_mode_on_a_smart_host_connector_is_explained() {
    // MTA-STS authenticates MX hosts; on a smart-host route the key does nothing, and
    // `check` says so (where it is written, with what to use instead).
    let loaded = load(
        "[[OutboundConnector]]\nName = \"Hub\"\nRecipientDomains = [\"fabrikam.test\"]\n\
         UseMXRecord = false\nSmartHosts = [\"hub.fabrikam.test\"]\nMtaStsMode = \"Opportunistic\"\n",
    );
    assert_eq!(loaded.warnings.len(), 1, "{}", render(&loaded.warnings));
    let w = &loaded.warnings[0];
    assert_eq!((w.line, w.key.as_str()), (6, "MtaStsMode"));
    assert!(
        w.to_string().contains("smart hosts are not MX hosts"),
        "{w}"
    );
    // "None" there, or the key left out, says nothing wrong.
    let quiet = load(
        "[[OutboundConnector]]\nName = \"Hub\"\nRecipientDomains = [\"fabrikam.test\"]\n\
         UseMXRecord = false\nSmartHosts = [\"hub.fabrikam.test\"]\nMtaStsMode = \"None\"\n",
    );
    assert!(quiet.warnings.is_empty(), "{}", render(&quiet.warnings));
}

#[test]
fn partner_sender_ip_addresses_without_restriction_are_flagged_unused() {
    // A Partner connector with SenderDomains is chosen by the sender's domain; its
    // SenderIPAddresses count only with RestrictDomainsToIPAddresses (fidelity audit §5).
    let partner = |restrict: &str| {
        format!(
            "[Relay]\nAcceptedDomains = [\"contoso.test\"]\n\n[[InboundConnector]]\nName = \"Fabrikam\"\n\
             ConnectorType = \"Partner\"\nSenderDomains = [\"fabrikam.test\"]\n\
             SenderIPAddresses = [\"192.0.2.0/24\"]\n{restrict}"
        )
    };
    let loaded = load(&partner(""));
    assert_eq!(loaded.warnings.len(), 1, "{}", render(&loaded.warnings));
    let w = &loaded.warnings[0];
    assert_eq!((w.line, w.key.as_str()), (8, "SenderIPAddresses"));
    assert!(
        w.to_string()
            .contains("RestrictDomainsToIPAddresses = true"),
        "{w}"
    );
    let quiet = load(&partner("RestrictDomainsToIPAddresses = true\n"));
    assert!(quiet.warnings.is_empty(), "{}", render(&quiet.warnings));
}

#[test]
fn key_names_are_not_case_sensitive() {
    // PowerShell parameter names are not: the seeds themselves write `-UseMxRecord` and
    // `RequireTLS` on an inbound connector. Any case is read as the canonical key.
    let pw = tempfile::NamedTempFile::new().unwrap();
    let loaded = load(&format!(
        r#"
[Relay]
fqdn = "relay.contoso.test"
ACCEPTEDDOMAINS = ["contoso.test"]

[[InboundConnector]]
name = "From Fabrikam"
SenderDomains = ["fabrikam.test"]
RequireTLS = true
senderipaddresses = ["192.0.2.0/24"]
restrictdomainstoipaddresses = true

[[OutboundConnector]]
Name = "To Fabrikam"
RecipientDomains = ["fabrikam.test"]
UseMxRecord = false
smartHosts = ["mail.fabrikam.test"]
TLSSettings = "EncryptionOnly"

[[SendConnector]]
Name = "Hub"
addressspaces = ["SMTP:*;1"]
DnsRoutingEnabled = false
SmartHosts = ["hub.contoso.test"]
RequireTls = true
smarthostauthmechanism = "BasicAuthRequireTLS"
AuthenticationCredential = {{ username = "relay", PASSWORDFILE = "{pw}" }}
"#,
        pw = pw.path().display()
    ));
    assert!(loaded.warnings.is_empty(), "{}", render(&loaded.warnings));
    let p = &loaded.policy;
    assert_eq!(p.relay.fqdn, "relay.contoso.test");
    assert_eq!(p.relay.accepted_domains, vec![exact("contoso.test")]);
    let i = &p.inbound[0];
    assert_eq!(i.name, "From Fabrikam");
    assert!(i.require_tls && i.restrict_domains_to_ip_addresses);
    assert_eq!(i.sender_ip_addresses, vec![net("192.0.2.0/24")]);
    let o = &p.outbound[0];
    assert!(!o.use_mx_record);
    assert_eq!(o.tls_settings, Some(TlsLevel::EncryptionOnly));
    let s = &p.send[0];
    assert!(!s.dns_routing_enabled && s.require_tls);
    assert_eq!(
        s.smart_host_auth_mechanism,
        AuthMechanism::BasicAuthRequireTls
    );
    assert_eq!(
        s.authentication_credential.as_ref().unwrap().user_name,
        "relay"
    );
}

#[test]
fn on_premises_sender_domains_are_the_organizations_own() {
    let on_prem = |domains: &str, restrict: &str| {
        format!(
            "[Relay]\nAcceptedDomains = [\"contoso.test\", \"*.corp.test\"]\n\n[[InboundConnector]]\n\
             Name = \"On-premises\"\nConnectorType = \"OnPremises\"\nSenderIPAddresses = [\"192.0.2.0/24\"]\n\
             SenderDomains = [{domains}]\n{restrict}"
        )
    };
    // Without RestrictDomainsToIPAddresses they do nothing: said where they are written.
    let loaded = load(&on_prem("\"contoso.test\"", ""));
    assert_eq!(loaded.warnings.len(), 1, "{}", render(&loaded.warnings));
    let w = &loaded.warnings[0];
    assert_eq!((w.line, w.key.as_str()), (8, "SenderDomains"));
    assert!(w.reason.contains("is not used"), "{w}");
    // A domain that is not accepted is not the organization's.
    let loaded = load(&on_prem(
        "\"contoso.test\", \"a.corp.test\", \"fabrikam.test\"",
        "RestrictDomainsToIPAddresses = true\n",
    ));
    assert_eq!(loaded.warnings.len(), 1, "{}", render(&loaded.warnings));
    assert!(
        loaded.warnings[0]
            .reason
            .starts_with("\"fabrikam.test\" is not one of the AcceptedDomains"),
        "{}",
        loaded.warnings[0]
    );
    let quiet = load(&on_prem(
        "\"contoso.test\", \"*.corp.test\"",
        "RestrictDomainsToIPAddresses = true\n",
    ));
    assert!(quiet.warnings.is_empty(), "{}", render(&quiet.warnings));
}

#[test]
fn last_validation_timestamp_in_either_iso_form() {
    for written in [
        "\"2016-05-06 14:30:00z\"",
        "\"2016-05-06T14:30:00Z\"",
        "\"2025-03-02T10:00:00.0000000\"",
        "\"2016-05-06T16:30:00+02:00\"",
        "2016-05-06T14:30:00Z",
        "2016-05-06 14:30:00",
    ] {
        let loaded = load_str(
            &format!(
                "[[OutboundConnector]]\nName = \"Fabrikam\"\nRecipientDomains = [\"fabrikam.test\"]\n\
                 LastValidationTimestamp = {written}\n"
            ),
            Path::new("relay.toml"),
        )
        .unwrap_or_else(|e| panic!("{written}: {}", render(&e)));
        let kept = loaded.policy.outbound[0]
            .last_validation_timestamp
            .clone()
            .unwrap();
        assert!(kept.starts_with("20"), "{written}: {kept}");
    }
}

#[test]
fn tls_sender_certificate_issuer_one_or_several() {
    let loaded = load(
        r#"
[[InboundConnector]]
Name = "Fabrikam"
SenderDomains = ["fabrikam.test"]
RequireTls = true
TlsSenderCertificateIssuer = "CN=Fabrikam Issuing CA, O=Fabrikam"

[[InboundConnector]]
Name = "Woodgrove"
SenderDomains = ["woodgrove.test"]
RequireTls = true
TlsSenderCertificateIssuer = ["Woodgrove CA 1", " CN=Woodgrove CA 2 "]
"#,
    );
    assert!(loaded.warnings.is_empty(), "{}", render(&loaded.warnings));
    assert_eq!(
        loaded.policy.inbound[0].tls_sender_certificate_issuer,
        vec!["CN=Fabrikam Issuing CA, O=Fabrikam".to_string()]
    );
    assert_eq!(
        loaded.policy.inbound[1].tls_sender_certificate_issuer,
        vec![
            "Woodgrove CA 1".to_string(),
            "CN=Woodgrove CA 2".to_string()
        ]
    );
}

#[test]
fn proxy_protocol_from_takes_addresses_cidrs_and_ranges() {
    let loaded = load(
        r#"
[Relay]
ProxyProtocolFrom = ["10.0.0.5", "10.1.0.0/24", "2001:db8::1", "192.168.0.0-192.168.1.255", "10.2.0.1/24"]
"#,
    );
    assert_eq!(
        loaded.policy.relay.proxy_protocol_from,
        vec![
            net("10.0.0.5/32"),
            net("10.1.0.0/24"),
            net("2001:db8::1/128"),
            net("192.168.0.0/23"),
            net("10.2.0.0/24"),
        ]
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0]
            .to_string()
            .contains("ProxyProtocolFrom: 10.2.0.1/24 has host bits set"),
        "{}",
        loaded.warnings[0]
    );
    assert!(
        load("").policy.relay.proxy_protocol_from.is_empty(),
        "none by default"
    );
}
