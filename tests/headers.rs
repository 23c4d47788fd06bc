//! Cross-premises header rewriting (`message::headers`) from the outside: the body is never
//! changed (DKIM body hash, simple canonicalization, RFC 6376 §3.4.3), and a generated set
//! of messages never keeps a header the policy removes.

use connector_relay::message::header_block;
use connector_relay::message::headers::{InboundHeaderPolicy, rewrite_inbound, rewrite_outbound};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const POLICIES: [InboundHeaderPolicy; 4] = [
    InboundHeaderPolicy {
        cloud_services_mail_enabled: false,
        mark_internal: false,
    },
    InboundHeaderPolicy {
        cloud_services_mail_enabled: true,
        mark_internal: false,
    },
    InboundHeaderPolicy {
        cloud_services_mail_enabled: false,
        mark_internal: true,
    },
    InboundHeaderPolicy {
        cloud_services_mail_enabled: true,
        mark_internal: true,
    },
];

const ORG: &[u8] = b"x-ms-exchange-organization-";
const CROSS: &[u8] = b"x-ms-exchange-crosspremises-";

/// The body: everything after the header section's empty line (none without one).
fn body(message: &[u8]) -> &[u8] {
    &message[header_block(message).len()..]
}

/// RFC 6376 §3.4.3 "simple" body canonicalization: empty lines at the end go, and the body
/// ends with CRLF (an empty body is CRLF).
fn simple_canonical(body: &[u8]) -> Vec<u8> {
    let mut end = body.len();
    while body[..end].ends_with(b"\r\n\r\n") {
        end -= 2;
    }
    let mut out = body[..end].to_vec();
    if out.is_empty() || !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// DKIM `bh=` with `c=.../simple`, `a=rsa-sha256`: SHA-256 of the canonical body.
fn body_hash(message: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, &simple_canonical(body(message)))
        .as_ref()
        .to_vec()
}

#[track_caller]
fn assert_body_kept(input: &[u8], output: &[u8], what: &str) {
    assert_eq!(
        body_hash(input),
        body_hash(output),
        "body hash changed: {what}"
    );
    assert_eq!(body(input), body(output), "body bytes changed: {what}");
}

/// Names of the header fields of the header section, as a line-based reader sees them:
/// every line that does not start with SP/HTAB and has a colon.
fn field_names_by_lines(message: &[u8]) -> Vec<Vec<u8>> {
    let block = header_block(message);
    block
        .split(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b" ") && !line.starts_with(b"\t"))
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some(line[..colon].trim_ascii().to_ascii_lowercase())
        })
        .collect()
}

/// Names as mail-parser sees them.
fn field_names_by_mail_parser(message: &[u8]) -> Vec<Vec<u8>> {
    let block = header_block(message);
    mail_parser::MessageParser::default()
        .parse_headers(block)
        .map(|m| {
            m.headers()
                .iter()
                .map(|h| h.name.as_str().as_bytes().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

fn names_with_prefix(message: &[u8], prefix: &[u8]) -> Vec<String> {
    field_names_by_lines(message)
        .into_iter()
        .chain(field_names_by_mail_parser(message))
        .filter(|n| n.starts_with(prefix))
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect()
}

const HEADERS: &[u8] =
    b"Received: from a.example ([192.0.2.1])\r\n\tby relay; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
X-MS-Exchange-Organization-AuthAs: Anonymous\r\n\
x-ms-exchange-crosspremises-authas: Internal\r\n\
X-MS-Exchange-CrossPremises-SCL:\r\n -1\r\n\
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; s=s;\r\n\
\tbh=abc; b=def\r\n\
Subject: X-MS-Exchange-Organization-AuthAs: Internal\r\n\
From: a@example.com\r\n\r\n";

#[test]
fn body_hash_survives_every_rewrite() {
    let long_line = vec![b'y'; 20_000];
    let bodies: Vec<Vec<u8>> = vec![
        b"X-MS-Exchange-Organization-AuthAs: Internal\r\nX-MS-Exchange-CrossPremises-SCL: -1\r\n\r\nSubject: not a header\r\n".to_vec(),
        b"caf\xc3\xa9 \xff\xfe\x80 8-bit\r\n\x00nul\r\n".to_vec(),
        b".\r\n..\r\n.\r\nend\r\n".to_vec(),
        [&long_line[..], b"\r\n", &long_line[..]].concat(),
        b"trailing empty lines\r\n\r\n\r\n\r\n".to_vec(),
        b"no final CRLF".to_vec(),
        b"\r\n".to_vec(),
        Vec::new(),
        b"\r\n\r\nX-MS-Exchange-Organization-Foo: x\r\n \r\n".to_vec(),
    ];
    for (i, b) in bodies.iter().enumerate() {
        let message = [HEADERS, &b[..]].concat();
        for policy in &POLICIES {
            let out = rewrite_inbound(&message, policy);
            assert_body_kept(&message, &out, &format!("body {i}, inbound {policy:?}"));
            assert!(out.ends_with(b), "body {i}");
        }
        for csme in [false, true] {
            let out = rewrite_outbound(&message, csme);
            assert_body_kept(&message, &out, &format!("body {i}, outbound csme={csme}"));
        }
    }
}

#[test]
fn header_rewrite_takes_effect_in_the_hash_test_message() {
    let message = [HEADERS, b"X-MS-Exchange-CrossPremises-SCL: body\r\n"].concat();
    let anon = rewrite_inbound(&message, &POLICIES[0]);
    assert!(names_with_prefix(&anon, b"x-ms-exchange-").is_empty());
    let csme = rewrite_inbound(&message, &POLICIES[1]);
    assert_eq!(
        names_with_prefix(&csme, b"x-ms-exchange-"),
        [
            "x-ms-exchange-organization-authas",
            "x-ms-exchange-organization-scl",
            "x-ms-exchange-organization-authas",
            "x-ms-exchange-organization-scl"
        ]
    );
    // The promoted value replaced the anonymous one.
    let text = String::from_utf8_lossy(&csme);
    assert!(text.contains("X-MS-Exchange-Organization-authas: Internal\r\n"));
    assert!(!text.contains("Anonymous"));
    assert!(text.contains("X-MS-Exchange-Organization-SCL:\r\n -1\r\n"));
    // The DKIM-Signature header (and every other untouched one) is byte for byte the same.
    assert!(text.contains(
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; s=s;\r\n\tbh=abc; b=def\r\n"
    ));
}

#[test]
fn messages_without_body_or_separator_and_garbage() {
    let cases: [&[u8]; 8] = [
        b"",
        b"Subject: only headers\r\nX-MS-Exchange-Organization-A: 1\r\n",
        b"Subject: unterminated\r\nX-MS-Exchange-CrossPremises-A: 1",
        b"X-MS-Exchange-CrossPremises-A: 1\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"\xff\xfe\xfd:\x00\r\n\r\n\xff",
        b"::::\r\n \r\n\t\r\nx-ms-exchange-\r\n",
        b"\n\n\r\r\rX-MS-Exchange-Organization-A:\r\n\r\nbody",
    ];
    for input in cases {
        for policy in &POLICIES {
            let out = rewrite_inbound(input, policy);
            assert_body_kept(input, &out, &format!("{input:?} {policy:?}"));
            assert!(names_with_prefix(&out, CROSS).is_empty(), "{input:?}");
        }
        for csme in [false, true] {
            let out = rewrite_outbound(input, csme);
            assert_body_kept(input, &out, &format!("{input:?} outbound {csme}"));
        }
    }
    // Only headers: still only headers, with the marks.
    let out = rewrite_inbound(b"Subject: s\r\n", &POLICIES[2]);
    assert_eq!(
        out,
        b"Subject: s\r\nX-MS-Exchange-Organization-MessageDirectionality: Originating\r\n\
          X-MS-Exchange-Organization-AuthAs: Internal\r\n"
    );
}

/// Deterministic message generator: header lines from a vocabulary that mixes the two
/// prefixes in several cases, folding, lines without a colon, leading whitespace, now and
/// then a bare LF; a body with header-looking lines, dots, 8-bit bytes and long lines.
fn generate(rng: &mut StdRng) -> Vec<u8> {
    const NAMES: [&str; 14] = [
        "Subject",
        "From",
        "Received",
        "X-MS-Exchange-Organization-AuthAs",
        "X-MS-Exchange-Organization-SCL",
        "x-ms-exchange-organization-messagedirectionality",
        "X-MS-Exchange-CrossPremises-AuthAs",
        "x-ms-exchange-crosspremises-scl",
        "X-MS-EXCHANGE-CROSSPREMISES-Foo",
        "X-MS-Exchange-CrossPremises-",
        "X-MS-Exchange-CrossPremises-A B",
        "X-MS-Exchange-Organization-",
        "X-Other",
        "X-MS-Exchange-OrganizationX",
    ];
    const VALUES: [&[u8]; 6] = [
        b"Internal",
        b"X-MS-Exchange-CrossPremises-Foo: smuggled?",
        b"",
        b"\xc3\xa9\xff",
        b"-1",
        b"a:b:c",
    ];
    let eol = |rng: &mut StdRng| -> &'static [u8] {
        if rng.random_bool(0.05) {
            b"\n"
        } else {
            b"\r\n"
        }
    };
    let mut m = Vec::new();
    for _ in 0..rng.random_range(0..12) {
        match rng.random_range(0..20) {
            0 => m.extend_from_slice(b"no colon on this line"),
            1 => m.extend_from_slice(b" X-MS-Exchange-CrossPremises-Lead: x"),
            2 => m.extend_from_slice(b" "),
            _ => {
                m.extend_from_slice(NAMES[rng.random_range(0..NAMES.len())].as_bytes());
                if rng.random_bool(0.1) {
                    m.push(b' ');
                }
                m.extend_from_slice(b": ");
                m.extend_from_slice(VALUES[rng.random_range(0..VALUES.len())]);
                for _ in 0..rng.random_range(0..3) {
                    m.extend_from_slice(eol(rng));
                    m.push(if rng.random_bool(0.5) { b' ' } else { b'\t' });
                    m.extend_from_slice(VALUES[rng.random_range(0..VALUES.len())]);
                }
            }
        }
        m.extend_from_slice(eol(rng));
    }
    if rng.random_bool(0.9) {
        m.extend_from_slice(b"\r\n");
        const BODY: [&[u8]; 8] = [
            b"X-MS-Exchange-Organization-AuthAs: Internal",
            b"X-MS-Exchange-CrossPremises-SCL: -1",
            b"",
            b".",
            b"..",
            b"\x80\xff 8-bit \xc3\xa9",
            b"Subject: body",
            b" folded-looking",
        ];
        for _ in 0..rng.random_range(0..10) {
            if rng.random_bool(0.05) {
                m.extend(std::iter::repeat_n(b'z', rng.random_range(900..3000)));
            } else {
                m.extend_from_slice(BODY[rng.random_range(0..BODY.len())]);
            }
            m.extend_from_slice(eol(rng));
        }
    }
    m
}

#[test]
fn generated_messages_keep_their_body_and_lose_cross_premises_headers() {
    let mut rng = StdRng::seed_from_u64(0x5eed_c5e0);
    for n in 0..600 {
        let message = generate(&mut rng);
        let what = |p: &str| format!("message {n} {p}: {:?}", String::from_utf8_lossy(&message));
        for policy in &POLICIES {
            let out = rewrite_inbound(&message, policy);
            let p = format!("{policy:?}");
            assert_body_kept(&message, &out, &what(&p));
            // No CrossPremises header survives inbound: removed, or promoted (CSME).
            assert!(
                names_with_prefix(&out, CROSS).is_empty(),
                "{} -> {:?}",
                what(&p),
                String::from_utf8_lossy(&out)
            );
            let org = names_with_prefix(&out, ORG);
            if policy.mark_internal {
                // One header each, and the last two of the header section. (Counted by the
                // line reader only: mail-parser stops early at a whitespace-only line.)
                let names = field_names_by_lines(&out);
                let marks: [&[u8]; 2] = [
                    b"x-ms-exchange-organization-messagedirectionality",
                    b"x-ms-exchange-organization-authas",
                ];
                for mark in marks {
                    assert_eq!(
                        names.iter().filter(|n| *n == mark).count(),
                        1,
                        "{}",
                        what(&p)
                    );
                }
                assert!(names.ends_with(&marks.map(|m| m.to_vec())), "{}", what(&p));
            }
            if !policy.cloud_services_mail_enabled && !policy.mark_internal {
                assert!(org.is_empty(), "{}", what(&p));
                // Nothing left to do the second time.
                assert_eq!(rewrite_inbound(&out, policy), out, "{}", what(&p));
            }
        }
        for csme in [false, true] {
            let out = rewrite_outbound(&message, csme);
            let p = format!("outbound csme={csme}");
            assert_body_kept(&message, &out, &what(&p));
            assert!(names_with_prefix(&out, ORG).is_empty(), "{}", what(&p));
            if !csme {
                assert!(names_with_prefix(&out, CROSS).is_empty(), "{}", what(&p));
            }
        }
    }
}

#[test]
fn random_bytes_never_panic_or_touch_the_body() {
    const PIECES: [&[u8]; 10] = [
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b":",
        b"X-MS-Exchange-Organization-A",
        b"x-ms-exchange-crosspremises-b",
        b"\xff",
        b"Subject",
        b"\t",
    ];
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let mut m = Vec::new();
        for _ in 0..rng.random_range(0..30) {
            m.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
        }
        for policy in &POLICIES {
            let out = rewrite_inbound(&m, policy);
            assert_body_kept(&m, &out, &format!("{m:?}"));
        }
        for csme in [false, true] {
            assert_body_kept(&m, &rewrite_outbound(&m, csme), &format!("{m:?}"));
        }
    }
}
