//! `connector-relay import` / `export` (README "Import and export"): the fixtures of
//! tests/fixtures/exchange/ through the binary, and a round-trip property over generated
//! configs (seeded, so a failure is reproducible from the printed seed).

use std::path::{Path, PathBuf};
use std::process::Command;

use connector_relay::config::load_str;
use connector_relay::exchange::{self, Format};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_connector-relay"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/exchange")
        .join(name)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run connector-relay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Imports the fixtures into a new file and checks it with `check`.
#[test]
fn import_of_every_format_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("relay.toml");
    let (code, _, err) = run(bin()
        .arg("import")
        .args(
            [
                "hybrid.ps1",
                "get-inbound-exo.json",
                "get-send-server.json",
                "m365dsc.ps1",
            ]
            .map(fixture),
        )
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let (code, stdout, err) = run(bin().arg("check").arg("--config").arg(&out));
    assert_eq!(code, 0, "check refused the imported config:\n{err}\n{text}");
    assert!(stdout.contains("OK"), "{stdout}");

    let policy = load_str(&text, &out).unwrap().policy;
    let names = |v: Vec<&str>| v.join("|");
    assert_eq!(
        names(policy.inbound.iter().map(|c| c.name.as_str()).collect()),
        "From on-premises|From Fabrikam (forced TLS)|From Northwind|From Woodgrove"
    );
    assert_eq!(
        names(policy.outbound.iter().map(|c| c.name.as_str()).collect()),
        "To on-premises|To Fabrikam|Outbound to contoso on-premises|To Woodgrove",
        "Trial was created and removed again"
    );
    let fab = &policy.inbound[1];
    assert_eq!(
        fab.sender_ip_addresses.len(),
        2,
        "from the $FabrikamIPs variable"
    );
    assert_eq!(
        fab.sender_domains.len(),
        3,
        "@() over two lines, then @{{Add=…}} in a pipeline"
    );
    assert_eq!(fab.comment.as_deref(), Some("Fabrikam's \"edge\" servers"));
    assert!(fab.restrict_domains_to_certificate && fab.require_tls);
    let northwind = &policy.inbound[2];
    assert_eq!(
        northwind.sender_domains.len(),
        2,
        "smtp:…;1 address spaces read as domains"
    );
    assert_eq!(northwind.connector_source.as_deref(), Some("AdminUI"));
    assert_eq!(
        format!("{:?}", policy.outbound[1].smtp_dane_mode),
        "Mandatory",
        "Set- after New- on one line"
    );
    let send = &policy.send[0];
    assert_eq!(send.port, 587);
    assert_eq!(send.address_spaces[0].cost, 10);
    assert_eq!(send.smart_hosts.len(), 2, "host name and IP objects");
    assert_eq!(
        send.max_message_size,
        Some(36_700_160),
        "35 MB (36,700,160 bytes)"
    );
    assert_eq!(
        send.connection_inactivity_timeout.as_secs(),
        600,
        "from Ticks"
    );
    assert_eq!(
        format!("{:?}", send.error_policies),
        "[DowngradeDnsFailures]",
        "flags enum as a number"
    );
    assert_eq!(format!("{:?}", send.protocol_logging_level), "Verbose");

    // Every dropped parameter is a comment saying why.
    for expected in [
        "hybrid.ps1:21: dropped EFSkipLastIP = $true: Exchange Online Protection filtering",
        "hybrid.ps1:21: dropped EFSkipIPs = '10.1.1.1': Exchange Online Protection filtering",
        "dropped LinkForModifiedConnector = '00000000-0000-0000-0000-000000000000': bookkeeping",
        "dropped SourceTransportServers = @('EX01'): Active Directory-only",
        "hybrid.ps1:4: `Connect-ExchangeOnline` ignored: not a connector cmdlet",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        text.contains("ignored (read-only, empty, or PowerShell/DSC controls): ")
            && text.contains("Guid"),
        "{text}"
    );
    assert!(
        text.contains("CertificateThumbprint") && !text.contains("NonNodeData"),
        "DSC connection parameters listed, values not shown:\n{text}"
    );
}

/// Every bad value is reported at its file and line; nothing is written.
#[test]
fn values_that_cannot_be_taken_are_file_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("relay.toml");
    let (code, _, err) = run(bin()
        .arg("import")
        .arg(fixture("bad.ps1"))
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 1, "{err}");
    assert!(!out.exists(), "nothing written on errors");
    let f = fixture("bad.ps1").display().to_string();
    for (line, key) in [
        (3, "SenderDomains"),
        (4, "SenderIPAddresses"),
        (5, "TlsSettings"),
        (6, "Identity"),
        (7, "Pirority"),
        (8, "AuthenticationCredential"),
    ] {
        assert!(
            err.contains(&format!("{f}:{line}: {key}: ")),
            "no error at line {line} ({key}):\n{err}"
        );
    }
    // Errors of the loader are traced back too, once the script itself is readable.
    let script = "New-InboundConnector -Name 'Bad partner' `\n    -SenderDomains 'mail.*.fabrikam.test' `\n    -SenderIPAddresses 192.0.2.300\nNew-OutboundConnector -Name \"Bad route\" -RecipientDomains contoso.test -TlsSettings Strongest\n";
    let e = exchange::import(&[("b.ps1".into(), script.into())], None).unwrap_err();
    let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("b.ps1:2: SenderDomains: ")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("b.ps1:3: SenderIPAddresses: ")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("b.ps1:4: TlsSettings: ")),
        "{shown:?}"
    );
}

/// Import over an existing config changes it in place, comments kept.
#[test]
fn import_into_an_existing_config_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("relay.toml");
    std::fs::write(&out, "# lab relay\n[Relay]\nAcceptedDomains = [\"contoso.test\"] # ours\n\n[[InboundConnector]]\nName = \"From Fabrikam (forced TLS)\"\nSenderDomains = [\"fabrikam.test\"]\n").unwrap();
    let script = dir.path().join("change.ps1");
    std::fs::write(&script, "Set-InboundConnector 'From Fabrikam (forced TLS)' -RequireTls $true\nNew-OutboundConnector 'To Fabrikam' -RecipientDomains fabrikam.test\n").unwrap();
    let (code, _, err) = run(bin().arg("import").arg(&script).arg("--out").arg(&out));
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with("# lab relay\n[Relay]\nAcceptedDomains = [\"contoso.test\"] # ours\n"),
        "{text}"
    );
    assert!(text.contains("RequireTls = true"), "{text}");
    assert!(
        text.contains("[[OutboundConnector]]\nName = \"To Fabrikam\""),
        "{text}"
    );
    assert!(
        err.contains("Set InboundConnector \"From Fabrikam (forced TLS)\": 1 key(s) changed"),
        "{err}"
    );
}

/// `export` through the binary, then `import` of its output: the same connectors.
#[test]
fn export_then_import_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let (code, _, err) = run(bin()
        .arg("import")
        .arg(fixture("hybrid.ps1"))
        .arg("--out")
        .arg(&config));
    assert_eq!(code, 0, "{err}");
    for format in ["cmdlets", "dsc"] {
        let (code, exported, err) = run(bin()
            .args(["export", "--format", format, "--config"])
            .arg(&config));
        assert_eq!(code, 0, "{err}");
        let file = dir.path().join(format!("export-{format}.ps1"));
        std::fs::write(&file, &exported).unwrap();
        let again = dir.path().join(format!("again-{format}.toml"));
        let (code, _, err) = run(bin().arg("import").arg(&file).arg("--out").arg(&again));
        assert_eq!(code, 0, "{format}: {err}\n{exported}");
        let a = load_str(&std::fs::read_to_string(&config).unwrap(), &config)
            .unwrap()
            .policy;
        let b = load_str(&std::fs::read_to_string(&again).unwrap(), &again)
            .unwrap()
            .policy;
        assert_eq!(
            format!("{:?}", a.inbound),
            format!("{:?}", b.inbound),
            "{format}"
        );
        if format == "cmdlets" {
            assert_eq!(format!("{:?}", a.outbound), format!("{:?}", b.outbound));
        } else {
            // SmtpDaneMode has no EXOOutboundConnector property: it is a Set- line in a comment.
            assert!(
                exported.contains("#     -SmtpDaneMode 'Mandatory'"),
                "{exported}"
            );
        }
    }
}

// ---- round trip over generated configs ------------------------------------------------

/// Picks a random non-empty subset (in order) of `pool`.
fn some<'a>(rng: &mut StdRng, pool: &[&'a str]) -> Vec<&'a str> {
    loop {
        let v: Vec<&str> = pool
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.4))
            .collect();
        if !v.is_empty() {
            return v;
        }
    }
}

fn list(v: &[&str]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ")
    )
}

fn toml_str(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_string()
}

/// Texts that stress quoting in both PowerShell and TOML.
const COMMENTS: [&str; 6] = [
    "plain",
    "O'Brien's \"quoted\" note",
    "costs $5 `and` a backtick",
    "# not a comment; @(not an array)",
    "naïve – “typographic”",
    "line one\nline two",
];

fn bool_key(rng: &mut StdRng, out: &mut String, key: &str) {
    if rng.random_bool(0.5) {
        out.push_str(&format!("{key} = {}\n", rng.random_bool(0.5)));
    }
}

fn inbound(rng: &mut StdRng, i: usize, out: &mut String) {
    out.push_str(&format!("\n[[InboundConnector]]\nName = \"In {i}\"\n"));
    let on_prem = rng.random_bool(0.3);
    if on_prem || rng.random_bool(0.3) {
        out.push_str(&format!(
            "ConnectorType = \"{}\"\n",
            if on_prem { "OnPremises" } else { "Partner" }
        ));
    }
    let domains = rng.random_bool(0.7).then(|| {
        some(
            rng,
            &["fabrikam.test", "*.fabrikam.test", "northwind.test", "*"],
        )
    });
    let ips = (on_prem || rng.random_bool(0.5)).then(|| {
        some(
            rng,
            &[
                "192.0.2.1",
                "198.51.100.0/24",
                "2001:db8::/32",
                "203.0.113.1-203.0.113.9",
            ],
        )
    });
    let cert = rng
        .random_bool(0.4)
        .then(|| ["mail.fabrikam.test", "*.fabrikam.test"][rng.random_range(0..2)]);
    let (domains, ips) = match (domains, ips, cert) {
        (None, None, None) => (Some(vec!["fabrikam.test"]), None),
        x => (x.0, x.1),
    };
    if let Some(d) = &domains {
        out.push_str(&format!("SenderDomains = {}\n", list(d)));
    }
    if let Some(ip) = &ips {
        out.push_str(&format!("SenderIPAddresses = {}\n", list(ip)));
    }
    if let Some(c) = cert {
        out.push_str(&format!(
            "TlsSenderCertificateName = \"{c}\"\nRequireTls = true\n"
        ));
        bool_key(rng, out, "RestrictDomainsToCertificate");
    } else {
        bool_key(rng, out, "RequireTls");
    }
    if domains.is_some() && ips.is_some() {
        bool_key(rng, out, "RestrictDomainsToIPAddresses");
    }
    if on_prem {
        bool_key(rng, out, "TreatMessagesAsInternal");
    }
    bool_key(rng, out, "Enabled");
    bool_key(rng, out, "CloudServicesMailEnabled");
    if rng.random_bool(0.3) {
        out.push_str("AssociatedAcceptedDomains = [\"contoso.test\"]\n");
    }
    if rng.random_bool(0.5) {
        out.push_str(&format!(
            "Comment = {}\n",
            toml_str(COMMENTS[rng.random_range(0..COMMENTS.len())])
        ));
    }
    if rng.random_bool(0.3) {
        out.push_str(&format!(
            "ConnectorSource = \"{}\"\n",
            ["Default", "Migrated", "HybridWizard", "AdminUI"][rng.random_range(0..4)]
        ));
    }
}

/// `dsc`: only keys Microsoft365DSC's EXOOutboundConnector has.
fn outbound(rng: &mut StdRng, i: usize, dsc: bool, out: &mut String) {
    out.push_str(&format!("\n[[OutboundConnector]]\nName = \"Out {i}\"\n"));
    let on_prem = rng.random_bool(0.3);
    if on_prem {
        out.push_str("ConnectorType = \"OnPremises\"\n");
        bool_key(rng, out, "AllAcceptedDomains");
        bool_key(rng, out, "RouteAllMessagesViaOnPremises");
        if !dsc {
            bool_key(rng, out, "SenderRewritingEnabled");
        }
    }
    out.push_str(&format!(
        "RecipientDomains = {}\n",
        list(&some(
            rng,
            &["fabrikam.test", "*.northwind.test", "woodgrove.test"]
        ))
    ));
    let mx = rng.random_bool(0.5);
    if !mx {
        out.push_str(&format!(
            "UseMXRecord = false\nSmartHosts = {}\n",
            list(&some(
                rng,
                &[
                    "mail.fabrikam.test",
                    "192.0.2.25",
                    "127.0.0.1:2626",
                    "[::1]:2526"
                ]
            ))
        ));
    } else if rng.random_bool(0.3) {
        out.push_str("UseMXRecord = true\n");
    }
    match rng.random_range(0..4) {
        0 => {}
        1 => out.push_str("TlsSettings = \"EncryptionOnly\"\n"),
        2 => out.push_str("TlsSettings = \"CertificateValidation\"\n"),
        _ => out.push_str("TlsSettings = \"DomainValidation\"\nTlsDomain = \"*.fabrikam.test\"\n"),
    }
    if !dsc {
        if mx && rng.random_bool(0.4) {
            out.push_str(&format!(
                "SmtpDaneMode = \"{}\"\n",
                ["Mandatory", "None", "Opportunistic"][rng.random_range(0..3)]
            ));
        }
        if mx && rng.random_bool(0.3) {
            out.push_str("MtaStsMode = \"None\"\n");
        }
        bool_key(rng, out, "IsValidated");
        if rng.random_bool(0.2) {
            out.push_str("LastValidationTimestamp = \"2016-05-06 14:30:00z\"\n");
        }
    }
    bool_key(rng, out, "Enabled");
    bool_key(rng, out, "TestMode");
    bool_key(rng, out, "IsTransportRuleScoped");
    bool_key(rng, out, "CloudServicesMailEnabled");
    if rng.random_bool(0.3) {
        out.push_str("ValidationRecipients = [\"postmaster@fabrikam.test\"]\n");
    }
    if rng.random_bool(0.4) {
        out.push_str(&format!(
            "Comment = {}\n",
            toml_str(COMMENTS[rng.random_range(0..COMMENTS.len())])
        ));
    }
}

fn send(rng: &mut StdRng, i: usize, password_file: &Path, out: &mut String) {
    out.push_str(&format!("\n[[SendConnector]]\nName = \"Send {i}\"\n"));
    out.push_str(&format!(
        "AddressSpaces = {}\n",
        list(&some(
            rng,
            &[
                "SMTP:*;10",
                "contoso.test;1",
                "*.northwind.test",
                "SMTP:woodgrove.test;5"
            ]
        ))
    ));
    let smart = rng.random_bool(0.5);
    // ForceHELO gets no ESMTP extensions: `check` refuses it with TLS or AUTH required.
    let mut needs_esmtp = false;
    if smart {
        out.push_str(&format!(
            "DNSRoutingEnabled = false\nSmartHosts = {}\n",
            list(&some(rng, &["smarthost.test", "192.0.2.30"]))
        ));
        if rng.random_bool(0.3) {
            needs_esmtp = true;
            out.push_str(&format!(
                "SmartHostAuthMechanism = \"BasicAuth\"\nAuthenticationCredential = {{ UserName = \"relay's user\", PasswordFile = {} }}\n",
                toml_str(&password_file.display().to_string())
            ));
        }
    }
    match rng.random_range(0..3) {
        0 => {}
        1 => out.push_str("IgnoreSTARTTLS = true\n"),
        _ => {
            needs_esmtp = true;
            out.push_str("RequireTLS = true\n");
            match rng.random_range(0..3) {
                0 => {}
                1 => out.push_str("TlsAuthLevel = \"CertificateValidation\"\n"),
                _ => out.push_str(
                    "TlsAuthLevel = \"DomainValidation\"\nTlsDomain = \"smarthost.test\"\n",
                ),
            }
        }
    }
    if rng.random_bool(0.4) {
        out.push_str(&format!("Port = {}\n", rng.random_range(1..65535)));
    }
    if !needs_esmtp {
        bool_key(rng, out, "ForceHELO");
    }
    bool_key(rng, out, "Enabled");
    if rng.random_bool(0.3) {
        out.push_str("Fqdn = \"relay.contoso.test\"\n");
    }
    if rng.random_bool(0.3) {
        out.push_str(&format!(
            "MaxMessageSize = {}\n",
            ["\"25MB\"", "\"Unlimited\"", "1048576"][rng.random_range(0..3)]
        ));
    }
    if rng.random_bool(0.3) {
        out.push_str(&format!(
            "SmtpMaxMessagesPerConnection = {}\n",
            rng.random_range(1..100)
        ));
    }
    if rng.random_bool(0.3) {
        out.push_str("ConnectionInactivityTimeOut = \"00:05:00\"\n");
    }
    if rng.random_bool(0.3) {
        out.push_str(&format!(
            "ErrorPolicies = {}\n",
            [
                "[\"Default\"]",
                "[\"DowngradeDnsFailures\"]",
                "[\"DowngradeDnsFailures\", \"UpgradeCustomFailures\"]"
            ][rng.random_range(0..3)]
        ));
    }
    if rng.random_bool(0.3) {
        out.push_str("ProtocolLoggingLevel = \"Verbose\"\n");
    }
    if rng.random_bool(0.2) {
        out.push_str("SourceIPAddress = \"0.0.0.0\"\n");
    }
    if rng.random_bool(0.3) {
        out.push_str(&format!(
            "Comment = {}\n",
            toml_str(COMMENTS[rng.random_range(0..COMMENTS.len())])
        ));
    }
}

fn generate(rng: &mut StdRng, dsc: bool, password_file: &Path) -> String {
    let mut out = String::from("[Relay]\nAcceptedDomains = [\"contoso.test\"]\n");
    for i in 0..rng.random_range(0..4) {
        inbound(rng, i, &mut out);
    }
    for i in 0..rng.random_range(0..4) {
        outbound(rng, i, dsc, &mut out);
    }
    if !dsc {
        for i in 0..rng.random_range(0..3) {
            send(rng, i, password_file, &mut out);
        }
    }
    out
}

/// The policy's connectors, compared through their Debug form (the types have no PartialEq).
fn connectors(text: &str) -> String {
    let p = load_str(text, Path::new("generated.toml"))
        .unwrap_or_else(|e| panic!("generated config invalid: {e:?}\n{text}"))
        .policy;
    format!("{:?}\n{:?}\n{:?}", p.inbound, p.outbound, p.send)
}

#[test]
fn export_then_import_gives_the_same_policy() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("smarthost.pw");
    std::fs::write(&password_file, "secret\n").unwrap();
    for (format, dsc) in [(Format::Cmdlets, false), (Format::Dsc, true)] {
        let mut tables = 0;
        for seed in 0..150u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let config = generate(&mut rng, dsc, &password_file);
            tables += config.matches("[[").count();
            let want = connectors(&config);
            let exported = exchange::export(&config, "generated.toml", format).unwrap();
            let base = "[Relay]\nAcceptedDomains = [\"contoso.test\"]\n";
            let imported = exchange::import(
                &[("exported.ps1".into(), exported.clone())],
                Some(("relay.toml", base)),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "seed {seed} {format:?}: {e:?}\n--- config\n{config}\n--- exported\n{exported}"
                )
            });
            assert_eq!(
                connectors(&imported.text),
                want,
                "seed {seed} {format:?}\n--- config\n{config}\n--- exported\n{exported}\n--- imported\n{}",
                imported.text
            );
        }
        assert!(tables > 300, "the generator made only {tables} connectors");
    }
}
