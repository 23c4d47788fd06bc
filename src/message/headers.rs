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
//! - One exception to "untouched lines stay byte for byte", for header sections with bare LFs
//!   (the DATA reader never stores those, so only for other callers): if removing a line
//!   would join a bare-LF line end with a following CRLF into a new CRLF CRLF, and so move
//!   the separator, the rewritten header section gets CRLF line ends and loses its empty
//!   lines. The separator and the body still stay exactly as they were.
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
//! before its first colon with surrounding whitespace trimmed (colons before the name are
//! skipped, as mail-parser does). Neither path can panic or reach into the body.
//!
//! Names are matched case-insensitively on the field name only; a value or a body line that
//! merely contains the prefix is never matched. A header whose name only starts with one of
//! the prefixes but whose `NAME` part is empty or not a valid field name (say it contains a
//! space) is removed where the policy removes, and dropped rather than converted where the
//! policy would convert it; an `X-MS-Exchange-Organization-` header like that is kept on an
//! inbound `CloudServicesMailEnabled` connector, like every other Organization header.
//! Several `X-MS-Exchange-CrossPremises-NAME` headers with one `NAME` are all promoted.

use std::borrow::Cow;
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

/// [`rewrite_inbound`] taking the message by value: a message whose header has nothing to
/// change (the common case) is handed back as it is, not copied (for a large message that
/// copy was as big as the message).
pub fn rewrite_inbound_owned(message: Vec<u8>, policy: &InboundHeaderPolicy) -> Vec<u8> {
    if HeaderSection::find(&message, policy.mark_internal).is_none() {
        return message;
    }
    rewrite_inbound(&message, policy)
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

/// [`rewrite_outbound`] borrowing the message when its header has nothing to change (the
/// common case): the copy it would make is as big as the message, once per delivery.
pub fn rewrite_outbound_cow(message: &[u8], cloud_services_mail_enabled: bool) -> Cow<'_, [u8]> {
    if HeaderSection::find(message, false).is_none() {
        return Cow::Borrowed(message);
    }
    Cow::Owned(rewrite_outbound(message, cloud_services_mail_enabled))
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
    /// The colon that ends the field name, if the first line has one (see [`name_colon`]).
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
        let name = &self.content[segment.start..colon];
        let skipped = name
            .iter()
            .take_while(|&&b| is_wsp_or_cr(b) || b == b':')
            .count();
        let name = trim_wsp(&name[skipped..]);
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
        let tail = &self.message[self.content.len()..];
        let mut content_len = out.len();
        out.extend_from_slice(tail);
        // The separator must stay where it was relative to the tail, or the body would
        // change. Only a header section with bare LFs can break that (a removed line between
        // a bare LF and a CRLF, or before the separator); then its line ends become CRLF and
        // the empty lines inside it go.
        if header_block(&out).len()
            != content_len + (header_block(self.message).len() - self.content.len())
        {
            out.truncate(content_len);
            let mut fixed = normalize_line_ends(&out);
            content_len = fixed.len();
            fixed.extend_from_slice(tail);
            out = fixed;
        }
        debug_assert_eq!(&out[content_len..], tail);
        out
    }
}

/// CRLF for every line end (bare LF included), without empty lines; a last line without a
/// line end gets CRLF too. Only for the header section (see `rebuild`).
fn normalize_line_ends(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    for line in content.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !text.is_empty() {
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
    out
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
        let colon = name_colon(&bytes[..first_line_end])? + start;
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
                    colon: name_colon(line).map(|i| pos + i),
                });
            }
        }
        pos = line_end;
    }
    segments
}

/// Where the field name of this (first) line ends: the first colon after the first byte
/// that is neither whitespace nor a colon. Like mail-parser, colons before the name are
/// skipped (`:X-MS-Exchange-Organization-A: 1` names `X-MS-Exchange-Organization-A`), so no
/// reader finds a name this module does not.
fn name_colon(line: &[u8]) -> Option<usize> {
    let name_start = line
        .iter()
        .position(|&b| !is_wsp_or_cr(b) && b != b':' && b != b'\n')?;
    line[name_start..]
        .iter()
        .take_while(|&&b| b != b'\n')
        .position(|&b| b == b':')
        .map(|i| name_start + i)
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

#[cfg(test)]
mod tests {
    use super::*;

    const ANON: InboundHeaderPolicy = InboundHeaderPolicy {
        cloud_services_mail_enabled: false,
        mark_internal: false,
    };
    const CSME: InboundHeaderPolicy = InboundHeaderPolicy {
        cloud_services_mail_enabled: true,
        mark_internal: false,
    };
    const MARK: InboundHeaderPolicy = InboundHeaderPolicy {
        cloud_services_mail_enabled: false,
        mark_internal: true,
    };
    const CSME_MARK: InboundHeaderPolicy = InboundHeaderPolicy {
        cloud_services_mail_enabled: true,
        mark_internal: true,
    };
    const MARKS: &str = "X-MS-Exchange-Organization-MessageDirectionality: Originating\r\n\
                         X-MS-Exchange-Organization-AuthAs: Internal\r\n";

    #[track_caller]
    fn inbound(input: &str, policy: InboundHeaderPolicy, expected: &str) {
        let out = rewrite_inbound(input.as_bytes(), &policy);
        assert_eq!(
            String::from_utf8_lossy(&out),
            expected,
            "inbound {policy:?} of {input:?}"
        );
        // The by-value form (no copy when nothing changes) gives the same bytes.
        let owned = rewrite_inbound_owned(input.as_bytes().to_vec(), &policy);
        assert_eq!(owned, out, "inbound (owned) {policy:?} of {input:?}");
    }

    #[track_caller]
    fn outbound(input: &str, csme: bool, expected: &str) {
        let out = rewrite_outbound(input.as_bytes(), csme);
        assert_eq!(
            String::from_utf8_lossy(&out),
            expected,
            "outbound csme={csme} of {input:?}"
        );
    }

    #[test]
    fn anonymous_removes_both_prefixes_any_case_with_folding() {
        let input = "Received: from x\r\n\tby y\r\n\
                     X-MS-Exchange-Organization-AuthAs: Internal\r\n\
                     Subject: hi\r\n\
                     x-ms-exchange-crosspremises-authas: Internal\r\n\
                     X-MS-EXCHANGE-ORGANIZATION-SCL: -1\r\n  folded more\r\n\tand more\r\n\
                     X-Ms-Exchange-CrossPremises-Foo:\r\n bar\r\n\
                     From: a@b\r\n\
                     \r\n\
                     body\r\n";
        let expected = "Received: from x\r\n\tby y\r\n\
                        Subject: hi\r\n\
                        From: a@b\r\n\
                        \r\n\
                        body\r\n";
        inbound(input, ANON, expected);
        outbound(input, false, expected);
    }

    #[test]
    fn promotion_replaces_every_existing_organization_header_of_that_name() {
        let input = "X-MS-Exchange-Organization-AuthAs: Anonymous\r\n\
                     Subject: s\r\n\
                     X-MS-Exchange-CrossPremises-AuthAs: Internal\r\n\
                     X-MS-Exchange-Organization-SCL: 1\r\n\
                     X-MS-Exchange-CrossPremises-Originating: yes,\r\n\tfolded\r\n\
                     x-ms-exchange-organization-AUTHAS: again\r\n\
                     \r\n\
                     body";
        let expected = "Subject: s\r\n\
                        X-MS-Exchange-Organization-AuthAs: Internal\r\n\
                        X-MS-Exchange-Organization-SCL: 1\r\n\
                        X-MS-Exchange-Organization-Originating: yes,\r\n\tfolded\r\n\
                        \r\n\
                        body";
        inbound(input, CSME, expected);
    }

    #[test]
    fn promotion_when_no_organization_header_existed() {
        inbound(
            "Subject: s\r\nx-ms-exchange-CROSSPREMISES-Foo:  v  \r\n\r\nb",
            CSME,
            "Subject: s\r\nX-MS-Exchange-Organization-Foo:  v  \r\n\r\nb",
        );
        // Whitespace before the colon goes; the value stays byte for byte.
        inbound(
            "X-MS-Exchange-CrossPremises-Foo \t: été\r\n \r\n\tx\r\n\r\n",
            CSME,
            "X-MS-Exchange-Organization-Foo: été\r\n \r\n\tx\r\n\r\n",
        );
    }

    #[test]
    fn cloud_services_keeps_other_organization_headers() {
        let input = "X-MS-Exchange-Organization-SCL: -1\r\n\
                     Subject: s\r\n\
                     X-MS-Exchange-Organization-Network-Message-Id:\r\n abc\r\n\
                     X-MS-Exchange-Organization-: odd but kept\r\n\
                     \r\n\
                     body\r\n";
        inbound(input, CSME, input);
    }

    #[test]
    fn cross_premises_header_without_a_valid_name_is_dropped_not_promoted() {
        inbound(
            "X-MS-Exchange-CrossPremises-: v\r\nX-MS-Exchange-CrossPremises-A B: v\r\nS: t\r\n\r\n",
            CSME,
            "S: t\r\n\r\n",
        );
    }

    #[test]
    fn mark_internal_adds_both_headers_at_the_end_of_the_header_section() {
        inbound(
            "Subject: s\r\n\r\nbody",
            MARK,
            &format!("Subject: s\r\n{MARKS}\r\nbody"),
        );
        inbound(
            "Subject: s\r\n\r\nbody",
            CSME_MARK,
            &format!("Subject: s\r\n{MARKS}\r\nbody"),
        );
    }

    #[test]
    fn mark_internal_replaces_existing_headers_of_those_names() {
        inbound(
            "X-MS-Exchange-Organization-AuthAs: Anonymous\r\n\
             Subject: s\r\n\
             X-MS-Exchange-Organization-MessageDirectionality: Incoming\r\n\
             \r\n\
             body",
            MARK,
            &format!("Subject: s\r\n{MARKS}\r\nbody"),
        );
        // With CloudServicesMailEnabled the marks also win over promoted headers, and the
        // other Organization headers stay.
        inbound(
            "x-ms-exchange-organization-authas: Anonymous\r\n\
             X-MS-Exchange-CrossPremises-AuthAs: Partner\r\n\
             X-MS-Exchange-CrossPremises-MessageDirectionality: Incoming\r\n\
             X-MS-Exchange-Organization-SCL: 5\r\n\
             X-MS-Exchange-CrossPremises-Foo: bar\r\n\
             \r\n\
             body",
            CSME_MARK,
            &format!(
                "X-MS-Exchange-Organization-SCL: 5\r\n\
                 X-MS-Exchange-Organization-Foo: bar\r\n\
                 {MARKS}\r\nbody"
            ),
        );
    }

    #[test]
    fn outbound_preserves_organization_headers_as_cross_premises() {
        let input = "X-MS-Exchange-Organization-AuthAs: Internal\r\n\
                     X-MS-Exchange-CrossPremises-AuthAs: stale\r\n\
                     X-MS-Exchange-CrossPremises-Other: keep\r\n\
                     Subject: s\r\n\
                     x-ms-exchange-organization-scl:\r\n -1\r\n\
                     X-MS-Exchange-Organization-: no name\r\n\
                     \r\n\
                     X-MS-Exchange-Organization-InBody: stays\r\n";
        outbound(
            input,
            true,
            "X-MS-Exchange-CrossPremises-AuthAs: Internal\r\n\
             X-MS-Exchange-CrossPremises-Other: keep\r\n\
             Subject: s\r\n\
             X-MS-Exchange-CrossPremises-scl:\r\n -1\r\n\
             \r\n\
             X-MS-Exchange-Organization-InBody: stays\r\n",
        );
        outbound(
            input,
            false,
            "Subject: s\r\n\
             \r\n\
             X-MS-Exchange-Organization-InBody: stays\r\n",
        );
    }

    #[test]
    fn values_and_body_lines_are_never_matched() {
        let input = "Subject: X-MS-Exchange-Organization-AuthAs: Internal\r\n\
                     X-Note: x-ms-exchange-crosspremises-foo: 1\r\n\
                     X-MS-Exchange-OrganizationX: not the prefix\r\n\
                     \r\n\
                     X-MS-Exchange-Organization-Foo: x\r\n\
                     X-MS-Exchange-CrossPremises-Foo: y\r\n";
        for policy in [ANON, CSME] {
            inbound(input, policy, input);
        }
        outbound(input, true, input);
        outbound(input, false, input);
    }

    #[test]
    fn fast_path_returns_a_copy() {
        let input = b"Subject: s\r\n\r\nX-MS-Exchange-Organization-Foo: body\r\n";
        assert_eq!(rewrite_inbound(input, &ANON), input);
        assert_eq!(rewrite_outbound(input, false), input);
        assert!(HeaderSection::find(input, false).is_none());
    }

    #[test]
    fn outbound_borrows_a_message_with_nothing_to_change() {
        let plain = b"Subject: s\r\n\r\nX-MS-Exchange-Organization-A: body\r\n";
        for csme in [false, true] {
            assert!(matches!(
                rewrite_outbound_cow(plain, csme),
                Cow::Borrowed(_)
            ));
        }
        let marked = b"X-MS-Exchange-Organization-A: 1\r\nSubject: s\r\n\r\nbody\r\n";
        for csme in [false, true] {
            let cow = rewrite_outbound_cow(marked, csme);
            assert!(matches!(cow, Cow::Owned(_)));
            assert_eq!(&cow[..], &rewrite_outbound(marked, csme)[..]);
        }
    }

    #[test]
    fn messages_without_separator_or_without_headers() {
        // All header, last line unterminated.
        inbound(
            "Subject: s\r\nX-MS-Exchange-Organization-A: 1",
            ANON,
            "Subject: s\r\n",
        );
        inbound(
            "Subject: s\r\nX-MS-Exchange-CrossPremises-A: 1",
            CSME,
            "Subject: s\r\nX-MS-Exchange-Organization-A: 1",
        );
        inbound("Subject: s", MARK, &format!("Subject: s\r\n{MARKS}"));
        // All header, terminated.
        inbound(
            "Subject: s\r\nX-MS-Exchange-Organization-A: 1\r\n",
            ANON,
            "Subject: s\r\n",
        );
        inbound("Subject: s\r\n", MARK, &format!("Subject: s\r\n{MARKS}"));
        // Only the separator and headers.
        inbound("X-MS-Exchange-Organization-A: 1\r\n\r\n", ANON, "\r\n");
        // Empty header section: the "header" lines are body.
        let no_headers = "\r\nX-MS-Exchange-Organization-A: 1\r\n";
        inbound(no_headers, ANON, no_headers);
        inbound(no_headers, MARK, &format!("{MARKS}{no_headers}"));
        inbound("", ANON, "");
        inbound("", MARK, MARKS);
    }

    #[test]
    fn whitespace_before_the_colon_and_header_starting_with_whitespace() {
        inbound(
            "X-MS-Exchange-Organization-AuthAs : Internal\r\nS: t\r\n\r\n",
            ANON,
            "S: t\r\n\r\n",
        );
        // mail-parser skips leading whitespace and reads a header here; so does this module.
        inbound(
            " X-MS-Exchange-Organization-AuthAs: Internal\r\nS: t\r\n\r\n",
            ANON,
            "S: t\r\n\r\n",
        );
        inbound(
            "garbage\r\n\tX-MS-Exchange-Organization-AuthAs: Internal\r\nS: t\r\n\r\n",
            ANON,
            "garbage\r\nS: t\r\n\r\n",
        );
    }

    #[test]
    fn colons_before_the_name_are_skipped_like_mail_parser_does() {
        inbound(
            ":X-MS-Exchange-Organization-AuthAs: Internal\r\n: :x-ms-exchange-crosspremises-a: 1\r\nS: t\r\n\r\n",
            ANON,
            "S: t\r\n\r\n",
        );
        inbound(
            ": :X-MS-Exchange-CrossPremises-A : 1\r\n:::\r\n\r\n",
            CSME,
            "X-MS-Exchange-Organization-A: 1\r\n:::\r\n\r\n",
        );
    }

    #[test]
    fn hidden_behind_a_whitespace_only_line_is_still_found() {
        // mail-parser stops at the whitespace-only line; the manual scan takes over.
        let input = "garbage line\r\n \r\nX-MS-Exchange-Organization-AuthAs: Internal\r\n\
                     Subject: s\r\n\r\nbody";
        let section = HeaderSection::find(input.as_bytes(), false).unwrap();
        assert_eq!(segments_by_mail_parser(section.content), None);
        inbound(input, ANON, "garbage line\r\n \r\nSubject: s\r\n\r\nbody");
    }

    #[test]
    fn bare_lf_ends_a_header_line() {
        inbound(
            "Subject: s\nX-MS-Exchange-Organization-A: 1\nFrom: a\r\n\r\nbody",
            ANON,
            "Subject: s\nFrom: a\r\n\r\nbody",
        );
    }

    #[test]
    fn removal_next_to_bare_lf_does_not_move_the_separator() {
        // Dropping the line would join "A: 1\r\n" with the CRLF that followed a bare LF, an
        // empty line that would end the header section early; the section is made CRLF-only
        // and its empty lines go instead.
        inbound(
            "A: 1\r\nX-MS-Exchange-Organization-A: 1\n\r\nB: 2\r\n\r\nbody\r\n",
            ANON,
            "A: 1\r\nB: 2\r\n\r\nbody\r\n",
        );
        // Dropping the last header would leave "A: 1\n" before the separator, which is then
        // no longer CRLF CRLF.
        inbound(
            "A: 1\nX-MS-Exchange-Organization-A: 1\r\n\r\nbody\r\n\r\nmore\r\n",
            ANON,
            "A: 1\r\n\r\nbody\r\n\r\nmore\r\n",
        );
        // Without such a join the bare LFs stay.
        inbound(
            "A: 1\nX-MS-Exchange-Organization-A: 1\r\nB: 2\r\n\r\nbody",
            ANON,
            "A: 1\nB: 2\r\n\r\nbody",
        );
    }

    #[test]
    fn mail_parser_and_scan_agree_on_ordinary_headers() {
        let inputs: [&[u8]; 5] = [
            b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: \"x\" <a@b>\r\n",
            b"To: a@b,\r\n c@d\r\nSubject: =?utf-8?q?h=C3=A9?=\r\nDate: bogus\r\nX-MS-Exchange-Organization-A: 1\r\n",
            b"Content-Type: multipart/mixed;\r\n boundary=\"xx\"\r\nMIME-Version: 1.0\r\nMessage-ID: <a@b>\r\n",
            b"From: \"unterminated <a@b>\r\nX-MS-Exchange-Organization-A: 1\r\nS: \xff\xfe\r\n",
            b"S: t\r\nno colon here\r\nT: u\r\n",
        ];
        for input in inputs {
            assert_eq!(
                segments_by_mail_parser(input),
                Some(segments_by_scan(input)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn segments_cover_the_content_exactly() {
        let inputs: [&[u8]; 6] = [
            b"",
            b":",
            b"\r\n",
            b" \t\r\n:x\r\nx-ms-exchange-\r\n",
            b"\xff\xfe\x00:\r\n\r",
            b"a:\n\n\nX-MS-Exchange-Organization-A: 1\n \n",
        ];
        for input in inputs {
            for segments in [
                segments_by_mail_parser(input),
                Some(segments_by_scan(input)),
            ]
            .into_iter()
            .flatten()
            {
                let mut pos = 0;
                for s in &segments {
                    assert_eq!(s.start, pos);
                    assert!(s.end > s.start);
                    pos = s.end;
                }
                assert_eq!(pos, input.len());
            }
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        let inputs: [&[u8]; 9] = [
            b"",
            b"\r",
            b"\n",
            b"\r\n\r\n",
            b":::\r\n\r\n",
            b"x-ms-exchange-",
            b"X-MS-Exchange-CrossPremises-:",
            b"\xff\x00X-MS-Exchange-CrossPremises-A:\r\n\r\n\xff",
            b" \r\n\tX-MS-Exchange-Organization-A: b\r\n \r\n",
        ];
        for input in inputs {
            for policy in [ANON, CSME, MARK, CSME_MARK] {
                let _ = rewrite_inbound(input, &policy);
            }
            let _ = rewrite_outbound(input, true);
            let _ = rewrite_outbound(input, false);
        }
    }
}
