//! Which Exchange parameters the relay takes (the config keys of `shared/spec/config.md`),
//! of what kind, and why each other parameter is dropped.

use crate::config::edit::Direction;

/// How a parameter's value is written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Text,
    List,
    /// One of these spellings (matched without case, written as here).
    Enum(&'static [&'static str]),
    /// A `[Flags]` enum written as a list (`ErrorPolicies`).
    Flags(&'static [&'static str]),
    Int,
    /// Exchange time span (`"00:10:00"`).
    TimeSpan,
    /// Size (`"25MB"`, bytes, `"Unlimited"`).
    Size,
    /// `{ UserName, PasswordFile }`.
    Credential,
}

const CONNECTOR_TYPES: &[&str] = &["Partner", "OnPremises"];
const SOURCES: &[&str] = &["Default", "Migrated", "HybridWizard", "AdminUI"];
const TLS: &[&str] = &[
    "EncryptionOnly",
    "CertificateValidation",
    "DomainValidation",
];
const MTA_STS: &[&str] = &["Opportunistic", "None"];
const DANE: &[&str] = &["Opportunistic", "Mandatory", "None"];
const AUTH: &[&str] = &[
    "None",
    "BasicAuth",
    "BasicAuthRequireTLS",
    "ExternalAuthoritative",
];
const ERROR_POLICIES: &[&str] = &[
    "Default",
    "DowngradeDnsFailures",
    "DowngradeCustomFailures",
    "UpgradeCustomFailures",
];
const LOGGING: &[&str] = &["None", "Verbose"];

/// The keys of `[[InboundConnector]]`, in the order they are written.
pub const INBOUND: &[(&str, Kind)] = &[
    ("Name", Kind::Text),
    ("Enabled", Kind::Bool),
    ("ConnectorType", Kind::Enum(CONNECTOR_TYPES)),
    ("SenderDomains", Kind::List),
    ("SenderIPAddresses", Kind::List),
    ("TlsSenderCertificateName", Kind::Text),
    // Extension key (the admin centre's "Require certificate from specific issuer"): taken
    // back from an export of the relay's own config; export flags it for Exchange.
    ("TlsSenderCertificateIssuer", Kind::List),
    ("RequireTls", Kind::Bool),
    ("RestrictDomainsToIPAddresses", Kind::Bool),
    ("RestrictDomainsToCertificate", Kind::Bool),
    ("CloudServicesMailEnabled", Kind::Bool),
    ("TreatMessagesAsInternal", Kind::Bool),
    ("AssociatedAcceptedDomains", Kind::List),
    ("Comment", Kind::Text),
    ("ConnectorSource", Kind::Enum(SOURCES)),
];

pub const OUTBOUND: &[(&str, Kind)] = &[
    ("Name", Kind::Text),
    ("Enabled", Kind::Bool),
    ("ConnectorType", Kind::Enum(CONNECTOR_TYPES)),
    ("RecipientDomains", Kind::List),
    ("AllAcceptedDomains", Kind::Bool),
    ("UseMXRecord", Kind::Bool),
    ("SmartHosts", Kind::List),
    ("TlsSettings", Kind::Enum(TLS)),
    ("TlsDomain", Kind::Text),
    ("RouteAllMessagesViaOnPremises", Kind::Bool),
    ("CloudServicesMailEnabled", Kind::Bool),
    ("SenderRewritingEnabled", Kind::Bool),
    ("MtaStsMode", Kind::Enum(MTA_STS)),
    ("SmtpDaneMode", Kind::Enum(DANE)),
    ("TestMode", Kind::Bool),
    ("IsTransportRuleScoped", Kind::Bool),
    ("ValidationRecipients", Kind::List),
    ("IsValidated", Kind::Bool),
    ("LastValidationTimestamp", Kind::Text),
    ("Comment", Kind::Text),
    ("ConnectorSource", Kind::Enum(SOURCES)),
];

pub const SEND: &[(&str, Kind)] = &[
    ("Name", Kind::Text),
    ("Enabled", Kind::Bool),
    ("AddressSpaces", Kind::List),
    ("DNSRoutingEnabled", Kind::Bool),
    ("SmartHosts", Kind::List),
    ("Port", Kind::Int),
    ("RequireTLS", Kind::Bool),
    ("TlsAuthLevel", Kind::Enum(TLS)),
    ("TlsDomain", Kind::Text),
    ("IgnoreSTARTTLS", Kind::Bool),
    ("ForceHELO", Kind::Bool),
    ("Fqdn", Kind::Text),
    ("SmartHostAuthMechanism", Kind::Enum(AUTH)),
    ("AuthenticationCredential", Kind::Credential),
    ("MaxMessageSize", Kind::Size),
    ("SmtpMaxMessagesPerConnection", Kind::Int),
    ("ConnectionInactivityTimeOut", Kind::TimeSpan),
    ("SourceIPAddress", Kind::Text),
    ("ErrorPolicies", Kind::Flags(ERROR_POLICIES)),
    ("ProtocolLoggingLevel", Kind::Enum(LOGGING)),
    ("TlsCertificateName", Kind::Text),
    ("DomainSecureEnabled", Kind::Bool),
    ("CloudServicesMailEnabled", Kind::Bool),
    ("UseExternalDNSServersEnabled", Kind::Bool),
    ("Comment", Kind::Text),
];

pub fn keys(d: Direction) -> &'static [(&'static str, Kind)] {
    match d {
        Direction::Inbound => INBOUND,
        Direction::Outbound => OUTBOUND,
        Direction::Send => SEND,
    }
}

/// The config key for a parameter name written in any case.
pub fn key(d: Direction, param: &str) -> Option<(&'static str, Kind)> {
    keys(d)
        .iter()
        .copied()
        .find(|(k, _)| k.eq_ignore_ascii_case(param))
}

/// The relay's default for a key, as the value `Get-*Connector` shows when nothing was set;
/// such values are left out of an imported config (they change nothing).
pub fn is_default(key: &str, v: &toml_edit::Value) -> bool {
    match v {
        toml_edit::Value::Boolean(b) => {
            let default_true = matches!(key, "Enabled" | "UseMXRecord" | "DNSRoutingEnabled");
            *b.value() == default_true
        }
        toml_edit::Value::Array(a) => a.is_empty(),
        toml_edit::Value::String(s) => {
            let s = s.value();
            s.is_empty()
                || matches!(
                    (key, s.as_str()),
                    ("ConnectorType", "Partner")
                        | ("MtaStsMode" | "SmtpDaneMode", "Opportunistic")
                        | ("SmartHostAuthMechanism" | "ProtocolLoggingLevel", "None")
                )
        }
        toml_edit::Value::Integer(i) => matches!(
            (key, *i.value()),
            ("Port", 25) | ("SmtpMaxMessagesPerConnection", 20)
        ),
        _ => false,
    }
}

/// Why a parameter the relay does not take is dropped (shown as a comment in the output).
pub fn dropped(d: Direction, param: &str) -> Option<&'static str> {
    const PS: &str = "a PowerShell or cmdlet control parameter, not a connector setting";
    const AD: &str = "Active Directory-only: where Exchange stores or runs the connector, meaningless for a stand-alone relay";
    const EOP: &str =
        "Exchange Online Protection filtering; the relay does no spam or malware filtering";
    const READ_ONLY: &str = "a read-only property of the Get- output, not a setting";
    let p = param.to_ascii_lowercase();
    let common = match p.as_str() {
        "confirm"
        | "whatif"
        | "force"
        | "verbose"
        | "debug"
        | "erroraction"
        | "warningaction"
        | "errorvariable"
        | "warningvariable"
        | "outvariable"
        | "outbuffer"
        | "informationaction"
        | "informationvariable"
        | "pipelinevariable" => Some(PS),
        "domaincontroller" => Some(AD),
        "identity"
        | "guid"
        | "distinguishedname"
        | "whenchanged"
        | "whencreated"
        | "whenchangedutc"
        | "whencreatedutc"
        | "isvalid"
        | "objectstate"
        | "organizationid"
        | "exchangeversion"
        | "objectcategory"
        | "objectclass"
        | "originatingserver"
        | "id"
        | "admindisplayname"
        | "pscomputername"
        | "psshowcomputername"
        | "runspaceid"
        | "exchangeobjectid"
        | "validationerrors"
        | "objectguid"
        | "orgid"
        | "smarthostsstring"
        | "homemta"
        | "homemtaserverid"
        | "connecteddomains"
        | "sourceroutinggroup"
        | "transportrulescoped"
        | "isvalidatedtimestamp" => Some(READ_ONLY),
        _ => None,
    };
    if common.is_some() {
        return common;
    }
    match (d, p.as_str()) {
        (
            Direction::Inbound,
            "efskipips"
            | "efskiplastip"
            | "efusers"
            | "eftestmode"
            | "efskipmailgateway"
            | "scananddroprecipients",
        ) => Some(EOP),
        (Direction::Inbound, "trustedorganizations") => {
            Some("cross-tenant trust inside Exchange Online; the relay has no tenants")
        }
        (Direction::Inbound, "clienthostnames") => Some(
            "only an empty list can be dropped; the relay identifies senders by IP address or certificate",
        ),
        (Direction::Outbound, "linkformodifiedconnector") => {
            Some("bookkeeping of the admin centre's connector wizard")
        }
        (Direction::Send, "sourcetransportservers") => Some(AD),
        (Direction::Send, "linkedreceiveconnector") => Some(AD),
        (Direction::Send, "isscopedconnector") => {
            Some("scopes the connector to an Active Directory site; the relay has one site")
        }
        (Direction::Send, "iscoexistenceconnector") => {
            Some("marks Exchange 2003 coexistence routing inside Active Directory")
        }
        (Direction::Send, "frontendproxyenabled") => {
            Some("routes through an Exchange Front End Transport service; the relay sends itself")
        }
        (Direction::Send, "requireoorg") => Some(
            "cross-forest Exchange header trust (X-MS-Exchange-Organization-*), set on the receiving Exchange forest",
        ),
        (Direction::Send, "usage" | "custom" | "internal" | "internet" | "partner") => {
            Some("New-SendConnector's preset (-Usage); its settings are the other parameters")
        }
        (Direction::Send, "connectortype") => {
            Some("Exchange hybrid's XPremises marker; the relay routes by AddressSpaces")
        }
        (Direction::Send, "region" | "maxmessagesizestring") => Some(READ_ONLY),
        _ => None,
    }
}

/// A parameter that may only be dropped when empty (dropping a value would widen a match).
pub fn only_empty_may_drop(d: Direction, param: &str) -> bool {
    d == Direction::Inbound && param.eq_ignore_ascii_case("ClientHostNames")
}

/// Enum values `ConvertTo-Json` writes as numbers (Windows PowerShell 5.1 has no
/// `-EnumsAsStrings`). Only the flags enums of Exchange's transport configuration whose
/// values are documented as bits are mapped; for the others a number is refused rather
/// than guessed.
pub fn enum_number(key: &str, n: i64) -> Option<Vec<&'static str>> {
    let bits: &[(i64, &str)] = match key {
        "ErrorPolicies" => &[
            (1, "DowngradeDnsFailures"),
            (2, "DowngradeCustomFailures"),
            (4, "UpgradeCustomFailures"),
        ],
        "ProtocolLoggingLevel" => {
            return match n {
                0 => Some(vec!["None"]),
                1 => Some(vec!["Verbose"]),
                _ => None,
            };
        }
        _ => return None,
    };
    if n == 0 {
        return Some(vec!["Default"]);
    }
    let names: Vec<&str> = bits
        .iter()
        .filter(|(b, _)| n & b != 0)
        .map(|(_, s)| *s)
        .collect();
    let known: i64 = bits.iter().map(|(b, _)| b).sum();
    (n & !known == 0).then_some(names)
}
