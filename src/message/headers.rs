//! Cross-premises header handling (policy.md "Inbound: headers" and "Outbound: headers"):
//! `X-MS-Exchange-Organization-*` and `X-MS-Exchange-CrossPremises-*` headers are removed,
//! promoted or preserved according to the connector's `CloudServicesMailEnabled`, and a
//! message from a `TreatMessagesAsInternal` connector is marked internal.
//!
//! Pure functions, bytes in and bytes out. Only the header section is rewritten:
//!
//! - The header section ends at the first empty line (CRLF CRLF), as
//!   [`super::header_block`] defines it. Everything from that empty line on (the separator and
//!   the body) is copied unchanged, so body hashes (DKIM `bh=`) stay valid. A message without
//!   a separator is all header.
//! - Header lines that are not touched keep their bytes and their order. A removed header
//!   goes with all its folded continuation lines.
//! - A promoted (inbound) or preserved (outbound) header is written in place of the header it
//!   came from: the new name, then the old value byte for byte from the colon on (folding
//!   included). Whitespace between the old name and its colon is dropped.
//! - The internal marks are appended at the end of the header section, just before the empty
//!   line, with CRLF line ends. Existing headers of those two names are removed first.
//!
//! Field boundaries come from mail-parser (`parse_headers`, which reports each field's byte
//! offsets). Its view is used only when it is self-consistent: every field starts at a line
//! start (after whitespace mail-parser skipped), ends at a line end, and every line inside it
//! after the first is a continuation (starts with SP or HTAB); and no byte mail-parser did
//! not assign to a field (lines without a colon, or whatever follows a whitespace-only line,
//! where mail-parser stops) contains `x-ms-exchange-`. Otherwise (garbage, or a layout meant
//! to hide a header from one parser) a manual RFC 5322 scan of the same bytes is used: a line
//! ends at LF (CRLF or a bare LF; a bare CR is not a line end), a line that starts with SP or
//! HTAB continues the preceding field, any other line starts a new field, named by what comes
//! before its first colon with surrounding whitespace trimmed. Neither path can panic or
//! reach into the body.
//!
//! Names are matched case-insensitively on the field name only; a value or a body line that
//! merely contains the prefix is never matched. A header whose name only starts with one of
//! the prefixes but whose `NAME` part is empty or not a valid field name (say it contains a
//! space) is removed where the policy removes, and dropped rather than converted where the
//! policy would convert it; an `X-MS-Exchange-Organization-` header like that is kept on an
//! inbound `CloudServicesMailEnabled` connector, like every other Organization header.
//! Several `X-MS-Exchange-CrossPremises-NAME` headers with one `NAME` are all promoted.

use std::collections::HashSet;

use mail_parser::MessageParser;

use super::header_block;

/// Name prefix of the organization's internal headers.
pub const ORGANIZATION_PREFIX: &str = "X-MS-Exchange-Organization-";
/// Name prefix of the headers that carry them across a hybrid hop.
pub const CROSS_PREMISES_PREFIX: &str = "X-MS-Exchange-CrossPremises-";

/// The common start of both prefixes; a header section without it (any case) has nothing
/// to rewrite.
const MARKER: &[u8] = b"x-ms-exchange-";
const ORG: &[u8] = ORGANIZATION_PREFIX.as_bytes();
const CROSS: &[u8] = CROSS_PREMISES_PREFIX.as_bytes();

/// The internal marks (`NAME` part, value) set for `TreatMessagesAsInternal`.
const INTERNAL_MARKS: [(&str, &str); 2] = [
    ("MessageDirectionality", "Originating"),
    ("AuthAs", "Internal"),
];

/// What the inbound side decided for one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundHeaderPolicy {
    /// The session is attributed to a connector with CloudServicesMailEnabled = true.
    pub cloud_services_mail_enabled: bool,
    /// TreatMessagesAsInternal on the (OnPremises) connector AND the sender's domain is
    /// accepted.
    pub mark_internal: bool,
}

/// Inbound rewrite (policy.md "Inbound: headers"):
/// - not CloudServicesMailEnabled: every `X-MS-Exchange-Organization-*` and every
///   `X-MS-Exchange-CrossPremises-*` header is removed;
/// - CloudServicesMailEnabled: every `X-MS-Exchange-CrossPremises-NAME` is promoted, in its
///   place, to `X-MS-Exchange-Organization-NAME` (value kept byte for byte), and every
///   `X-MS-Exchange-Organization-NAME` header that was already there is removed; other
///   Organization headers stay;
/// - `mark_internal`: `X-MS-Exchange-Organization-MessageDirectionality: Originating` and
///   `X-MS-Exchange-Organization-AuthAs: Internal` are appended at the end of the header
///   section, replacing any headers of those names.
///
/// The body is never changed (see the module documentation).
pub fn rewrite_inbound(message: &[u8], policy: &InboundHeaderPolicy) -> Vec<u8> {
    let csme = policy.cloud_services_mail_enabled;
    let mark = policy.mark_internal;
    let Some(section) = HeaderSection::find(message, mark) else {
        return message.to_vec();
    };
    let segments = section.segments();
    let promoted: HashSet<Vec<u8>> = if csme {
        segments
            .iter()
            .filter_map(|s| match section.kind(s) {
                Kind::CrossPremises(name) if valid_name(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    } else {
        HashSet::new()
    };
    let is_mark = |name: &[u8]| mark && INTERNAL_MARKS.iter().any(|(n, _)| eq_ci(name, n));
    let marks: Vec<String> = if mark {
        INTERNAL_MARKS
            .iter()
            .map(|(n, v)| format!("{ORGANIZATION_PREFIX}{n}: {v}\r\n"))
            .collect()
    } else {
        Vec::new()
    };
    section.rebuild(
        &segments,
        |kind| match kind {
            Kind::Other => Action::Keep,
            Kind::Organization(_) if !csme => Action::Drop,
            Kind::Organization(name) if is_mark(name) => Action::Drop,
            Kind::Organization(name) if promoted.contains(&name.to_ascii_lowercase()) => {
                Action::Drop
            }
            Kind::Organization(_) => Action::Keep,
            Kind::CrossPremises(_) if !csme => Action::Drop,
            Kind::CrossPremises(name) if !valid_name(name) || is_mark(name) => Action::Drop,
            Kind::CrossPremises(name) => Action::Rename(ORG, name),
        },
        &marks,
    )
}

/// Outbound rewrite (policy.md "Outbound: headers"), for the delivery side:
/// - `cloud_services_mail_enabled = true`: every `X-MS-Exchange-Organization-NAME` becomes,
///   in its place, `X-MS-Exchange-CrossPremises-NAME` (value kept byte for byte), and every
///   `X-MS-Exchange-CrossPremises-NAME` that was already there is removed; CrossPremises
///   headers of other names stay;
/// - `false`: every Organization-* and CrossPremises-* header is removed.
///
/// The body is never changed (see the module documentation).
pub fn rewrite_outbound(message: &[u8], cloud_services_mail_enabled: bool) -> Vec<u8> {
    let csme = cloud_services_mail_enabled;
    let Some(section) = HeaderSection::find(message, false) else {
        return message.to_vec();
    };
    let segments = section.segments();
    let converted: HashSet<Vec<u8>> = if csme {
        segments
            .iter()
            .filter_map(|s| match section.kind(s) {
                Kind::Organization(name) if valid_name(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    } else {
        HashSet::new()
    };
    section.rebuild(
        &segments,
        |kind| match kind {
            Kind::Other => Action::Keep,
            _ if !csme => Action::Drop,
            Kind::Organization(name) if valid_name(name) => Action::Rename(CROSS, name),
            Kind::Organization(_) => Action::Drop,
            Kind::CrossPremises(name) if converted.contains(&name.to_ascii_lowercase()) => {
                Action::Drop
            }
            Kind::CrossPremises(_) => Action::Keep,
        },
        &[],
    )
}

/// The header fields of a message: `content` is the header section without the empty line
/// that ends it; `message[content.len()..]` (the empty line and the body) is never touched.
struct HeaderSection<'a> {
    message: &'a [u8],
    content: &'a [u8],
}

/// One field (with its continuation lines and line end), or lines that are not a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: usize,
    end: usize,
    /// The colon that ends the field name, if the first line has one.
    colon: Option<usize>,
}

/// What a segment is, with the `NAME` part after the prefix (as written, maybe not valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    Other,
    Organization(&'a [u8]),
    CrossPremises(&'a [u8]),
}

/// What happens to a segment.
enum Action<'a> {
    Keep,
    Drop,
    /// Write `prefix` + `NAME`, then the old value from the colon on.
    Rename(&'static [u8], &'a [u8]),
}

impl<'a> HeaderSection<'a> {
    /// `None` when there is nothing to do: no `x-ms-exchange-` in the header section (any
    /// case) and no header to add.
    fn find(message: &'a [u8], adding: bool) -> Option<Self> {
        let block = header_block(message);
        if !adding && !contains_ci(block, MARKER) {
            return None;
        }
        let content_len = if message.starts_with(b"\r\n") {
            0
        } else if block.ends_with(b"\r\n\r\n") {
            // Keep the last field's CRLF; the empty line's CRLF belongs to the separator.
            block.len() - 2
        } else {
            block.len()
        };
        Some(HeaderSection {
            message,
            content: &message[..content_len],
        })
    }

    /// The segments, in order, covering `content` exactly.
    fn segments(&self) -> Vec<Segment> {
        segments_by_mail_parser(self.content).unwrap_or_else(|| segments_by_scan(self.content))
    }

    fn kind(&self, segment: &Segment) -> Kind<'a> {
        let Some(colon) = segment.colon else {
            return Kind::Other;
        };
        let name = trim_wsp(&self.content[segment.start..colon]);
        if let Some(rest) = strip_prefix_ci(name, ORG) {
            Kind::Organization(rest)
        } else if let Some(rest) = strip_prefix_ci(name, CROSS) {
            Kind::CrossPremises(rest)
        } else {
            Kind::Other
        }
    }

    /// The new message: each segment as `action` says, then `append` (whole header lines
    /// ending in CRLF), then the empty line and body unchanged.
    fn rebuild(
        &self,
        segments: &[Segment],
        action: impl Fn(Kind<'a>) -> Action<'a>,
        append: &[String],
    ) -> Vec<u8> {
        let extra: usize = append.iter().map(|a| a.len() + 2).sum();
        let mut out = Vec::with_capacity(self.message.len() + extra + 64);
        for segment in segments {
            let bytes = &self.content[segment.start..segment.end];
            match action(self.kind(segment)) {
                Action::Keep => out.extend_from_slice(bytes),
                Action::Drop => {}
                Action::Rename(prefix, name) => {
                    // Rename is only chosen for a field, which has a colon.
                    let colon = segment.colon.unwrap_or(segment.start);
                    out.extend_from_slice(prefix);
                    out.extend_from_slice(name);
                    out.extend_from_slice(&self.content[colon..segment.end]);
                }
            }
        }
        if !append.is_empty() {
            // Only a message without a separator can end in an unterminated header line.
            if !out.is_empty() && !out.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
            for line in append {
                out.extend_from_slice(line.as_bytes());
            }
        }
        out.extend_from_slice(&self.message[self.content.len()..]);
        out
    }
}

/// Field boundaries as mail-parser sees them, or `None` when it parsed nothing or its view
/// is not one this module can safely rewrite (see the module documentation).
fn segments_by_mail_parser(content: &[u8]) -> Option<Vec<Segment>> {
    let parsed = MessageParser::default().parse_headers(content)?;
    let mut segments = Vec::new();
    let mut pos = 0;
    let gap = |segments: &mut Vec<Segment>, start: usize, end: usize| -> Option<()> {
        if start < end {
            if contains_ci(&content[start..end], MARKER) {
                return None;
            }
            segments.push(Segment {
                start,
                end,
                colon: None,
            });
        }
        Some(())
    };
    for header in parsed.headers() {
        let field = header.offset_field as usize;
        let end = header.offset_end as usize;
        if field < pos || end <= field || end > content.len() {
            return None;
        }
        // mail-parser skips whitespace before a field name; the field starts at its line.
        let start = content[..field]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if start < pos || !content[start..field].iter().all(|&b| is_wsp_or_cr(b)) {
            return None;
        }
        if end < content.len() && content[end - 1] != b'\n' {
            return None;
        }
        let bytes = &content[start..end];
        // Every line after the first is a continuation line.
        let folded_ok = bytes
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'\n' && i + 1 < bytes.len())
            .all(|(i, _)| matches!(bytes[i + 1], b' ' | b'\t'));
        if !folded_ok {
            return None;
        }
        let first_line_end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        let colon = bytes[..first_line_end].iter().position(|&b| b == b':')? + start;
        gap(&mut segments, pos, start)?;
        segments.push(Segment {
            start,
            end,
            colon: Some(colon),
        });
        pos = end;
    }
    gap(&mut segments, pos, content.len())?;
    Some(segments)
}

/// Field boundaries by a plain RFC 5322 scan (see the module documentation).
fn segments_by_scan(content: &[u8]) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        let line_end = content[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(content.len(), |i| pos + i + 1);
        let continues = matches!(content[pos], b' ' | b'\t')
            && segments.last().is_some_and(|s| s.colon.is_some());
        match segments.last_mut() {
            Some(last) if continues => last.end = line_end,
            _ => {
                let line = &content[pos..line_end];
                segments.push(Segment {
                    start: pos,
                    end: line_end,
                    colon: line.iter().position(|&b| b == b':').map(|i| pos + i),
                });
            }
        }
        pos = line_end;
    }
    segments
}

/// RFC 5322 ftext: printable US-ASCII except the colon.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

fn is_wsp_or_cr(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

fn trim_wsp(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_wsp_or_cr(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_wsp_or_cr(*last)
    {
        s = rest;
    }
    s
}

fn eq_ci(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn strip_prefix_ci<'s>(s: &'s [u8], prefix: &[u8]) -> Option<&'s [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}
