//! Invariant checks shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, which include
//! this file with `#[path]`) and the stable-toolchain smoke test (`tests/fuzz_smoke.rs`).
//! Each `check_*` function takes raw fuzz input and panics when an invariant breaks.
#![allow(dead_code)]

use std::path::Path;

use connector_relay::config;
use connector_relay::delivery::reply::{MAX_REPLY_LINES, Reply, ReplyError, ReplyReader};
use connector_relay::message::header_block;
use connector_relay::message::headers::{InboundHeaderPolicy, rewrite_inbound, rewrite_outbound};
use connector_relay::policy::BareNewlinePolicy;
use connector_relay::smtp::command::{self, Command};
use connector_relay::smtp::data::{DataError, DataReader};
use connector_relay::smtp::proxy::{self, Parse};

/// The fuzz targets, by corpus directory name.
pub const TARGETS: [&str; 6] = [
    "command_parser",
    "dot_reader",
    "header_rewriter",
    "config_loader",
    "reply_reader",
    "proxy_header",
];

/// Runs the check of `target` on `data`.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "command_parser" => check_command_parser(data),
        "dot_reader" => check_dot_reader(data),
        "header_rewriter" => check_header_rewriter(data),
        "config_loader" => check_config_loader(data),
        "reply_reader" => check_reply_reader(data),
        "proxy_header" => check_proxy_header(data),
        _ => panic!("unknown fuzz target {target}"),
    }
}

/// `command::parse` never panics, and nothing it accepts carries CR, LF or NUL.
pub fn check_command_parser(data: &[u8]) {
    let Ok(cmd) = command::parse(data) else {
        return;
    };
    let clean = |s: &str| {
        assert!(
            !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0),
            "control character accepted in {cmd:?}"
        )
    };
    match &cmd {
        Command::Ehlo(s) | Command::Helo(s) => clean(s),
        Command::Mail(Some(a), _) => clean(&a.to_string()),
        Command::Rcpt(a) => clean(&a.to_string()),
        Command::Auth(m, r) => {
            clean(m);
            if let Some(r) = r {
                clean(r);
            }
        }
        _ => {}
    }
}

/// FNV-1a, to derive split points and a size limit from the input itself.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where the end-of-data line ends (the number of bytes that belong to the message), by the
/// RFC 5321 rule written plainly: the first `.CRLF` that starts the data or follows a CRLF.
fn reference_end(data: &[u8]) -> Option<usize> {
    if data.starts_with(b".\r\n") {
        return Some(3);
    }
    data.windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|i| i + 5)
}

/// True when `out` holds a CR not followed by LF or an LF not preceded by CR.
fn has_bare_newline(out: &[u8]) -> bool {
    out.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => out.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || out[i - 1] != b'\r',
        _ => false,
    })
}

#[derive(Debug, PartialEq, Eq)]
struct DotResult {
    consumed: usize,
    done: bool,
    out: Vec<u8>,
    error: Option<DataError>,
    size: u64,
}

/// Feeds `data` in the given chunk sizes (cycled), stopping at `done` like the session does.
fn feed_chunks(
    data: &[u8],
    max: u64,
    policy: BareNewlinePolicy,
    chunks: &mut dyn FnMut() -> usize,
) -> DotResult {
    let mut r = DataReader::new(max, policy);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut done = false;
    while pos < data.len() {
        let end = (pos + chunks().max(1)).min(data.len());
        let (n, d) = r.feed(&data[pos..end], &mut out);
        assert!(n <= end - pos, "consumed {n} of a {}-byte chunk", end - pos);
        assert!(d || n == end - pos, "not done but chunk not consumed");
        pos += n;
        if d {
            done = true;
            break;
        }
    }
    DotResult {
        consumed: pos,
        done,
        out,
        error: r.error(),
        size: r.size(),
    }
}

/// The DATA reader, fed whole, byte by byte and split at points derived from the input,
/// under both bare-newline policies and with a large and a small size limit.
pub fn check_dot_reader(data: &[u8]) {
    let h = fnv(data);
    let expected_end = reference_end(data);
    for policy in [BareNewlinePolicy::Reject, BareNewlinePolicy::Normalize] {
        for max in [1u64 << 20, h % 257] {
            let whole = feed_chunks(data, max, policy, &mut || usize::MAX);
            let ctx = || format!("policy {policy:?} max {max}");
            assert!(whole.consumed <= data.len(), "{}", ctx());
            // Done exactly at the first CRLF.CRLF (or a leading .CRLF), never elsewhere.
            assert_eq!(
                whole.done.then_some(whole.consumed),
                expected_end,
                "end of data misplaced, {}",
                ctx()
            );
            if whole.done {
                let prefix = &data[..whole.consumed];
                assert!(
                    prefix == b".\r\n" || prefix.ends_with(b"\r\n.\r\n"),
                    "{}",
                    ctx()
                );
            }
            match whole.error {
                None => {
                    assert!(whole.out.len() as u64 <= max, "{}", ctx());
                    assert_eq!(whole.out.len() as u64, whole.size, "{}", ctx());
                    // Nothing bare is ever stored: Normalize converts, Reject refuses.
                    assert!(
                        !has_bare_newline(&whole.out),
                        "bare newline stored, {}: {:?}",
                        ctx(),
                        whole.out
                    );
                }
                // `out` is dropped lazily, but always by the time the end is found.
                Some(_) if whole.done => {
                    assert!(whole.out.is_empty(), "refused message kept, {}", ctx())
                }
                Some(_) => {}
            }
            // Once done every CR is resolved (a trailing CR of an unfinished feed is not).
            if policy == BareNewlinePolicy::Reject && whole.done && whole.error.is_none() {
                let msg = &data[..whole.consumed];
                assert!(!has_bare_newline(msg), "bare newline accepted, {}", ctx());
            }
            let bytes = feed_chunks(data, max, policy, &mut || 1);
            assert_eq!(bytes, whole, "byte by byte differs, {}", ctx());
            let mut state = h | 1;
            let split = feed_chunks(data, max, policy, &mut || {
                // xorshift64: chunk sizes 1..=64 from the input's hash.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 64) as usize + 1
            });
            assert_eq!(split, whole, "split feed differs, {}", ctx());
        }
    }
}

/// The header rewriters never panic and never touch the body (everything after the first
/// CRLF CRLF, as `header_block` defines it): the output's own header block ends right where
/// the unchanged body starts.
pub fn check_header_rewriter(data: &[u8]) {
    let body = &data[header_block(data).len()..];
    let has_separator = data.starts_with(b"\r\n") || data.windows(4).any(|w| w == b"\r\n\r\n");
    let mut outputs = Vec::new();
    for csme in [false, true] {
        for mark_internal in [false, true] {
            let policy = InboundHeaderPolicy {
                cloud_services_mail_enabled: csme,
                mark_internal,
            };
            outputs.push((
                format!("inbound {policy:?}"),
                rewrite_inbound(data, &policy),
            ));
        }
        outputs.push((
            format!("outbound csme {csme}"),
            rewrite_outbound(data, csme),
        ));
    }
    for (what, out) in outputs {
        assert!(out.ends_with(body), "{what}: body changed");
        if has_separator {
            assert_eq!(
                header_block(&out).len(),
                out.len() - body.len(),
                "{what}: header/body separator moved"
            );
        }
    }
}

/// `config::load_str` never panics on any text, and every error or warning reads
/// `fuzz.toml:LINE: ...` (LINE within the file) or `fuzz.toml: ...`.
pub fn check_config_loader(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let file = Path::new("fuzz.toml");
    let lines = text.lines().count() + 1;
    let (errors, warnings) = match config::load_str(&text, file) {
        Ok(loaded) => (Vec::new(), loaded.warnings),
        Err(errors) => {
            assert!(!errors.is_empty(), "Err with no errors");
            (errors, Vec::new())
        }
    };
    for e in errors.iter().chain(&warnings) {
        let shown = e.to_string();
        let rest = shown
            .strip_prefix("fuzz.toml")
            .unwrap_or_else(|| panic!("error without the file name: {shown:?}"));
        if let Some(rest) = rest.strip_prefix(':').filter(|r| !r.starts_with(' ')) {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            assert!(digits > 0, "bad line number: {shown:?}");
            let line: usize = rest[..digits].parse().expect("line number");
            assert!(
                line >= 1 && line <= lines,
                "line {line} outside the file: {shown:?}"
            );
            assert!(
                rest[digits..].starts_with(": "),
                "no ': ' after the line: {shown:?}"
            );
        } else {
            assert!(rest.starts_with(": "), "no ': ' after the file: {shown:?}");
        }
        assert!(!e.reason.is_empty(), "empty reason: {shown:?}");
    }
}

/// What a reply reader made of some input: the replies, the error that stopped it, and
/// whether it was left holding bytes or half a reply.
#[derive(Debug, PartialEq, Eq)]
struct ReplyResult {
    replies: Vec<Reply>,
    error: Option<ReplyError>,
    left_over: bool,
}

/// Feeds `data` in pieces that end at `cuts`, taking every complete reply after each piece.
fn read_replies(data: &[u8], cuts: &[usize]) -> ReplyResult {
    let mut reader = ReplyReader::default();
    let mut replies = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let end = end.clamp(start, data.len());
        reader.feed(&data[start..end]);
        start = end;
        loop {
            match reader.next_reply(|line| assert!(!line.contains('\n'), "{line:?}")) {
                Ok(Some(r)) => replies.push(r),
                Ok(None) => break,
                Err(error) => {
                    return ReplyResult {
                        replies,
                        error: Some(error),
                        left_over: true,
                    };
                }
            }
        }
    }
    ReplyResult {
        replies,
        error: None,
        left_over: !reader.is_empty(),
    }
}

/// The outbound client's reply reader: codes 200-599 only, at most `MAX_REPLY_LINES` lines,
/// no line break inside a line; what it leaves unread is exactly an unterminated tail; the
/// same replies (and error) whether the input comes whole, byte by byte, or split at points
/// derived from the input's hash.
pub fn check_reply_reader(data: &[u8]) {
    let whole = read_replies(data, &[]);
    for r in &whole.replies {
        assert!((200..600).contains(&r.code), "code {} accepted", r.code);
        assert!(!r.lines.is_empty() && r.lines.len() <= MAX_REPLY_LINES);
        assert!(r.lines.iter().all(|l| !l.contains('\n')));
    }
    if whole.error.is_none() {
        // Left over iff the input does not end with a complete final line.
        let ends_reply = data.is_empty()
            || (data.ends_with(b"\n") && {
                let body = &data[..data.len() - 1];
                let last = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
                last.get(3).is_none_or(|&b| b != b'-')
            });
        assert_eq!(whole.left_over, !ends_reply, "left over for {data:?}");
    }
    let h = fnv(data) as usize;
    let len = data.len().max(1);
    let splits: [Vec<usize>; 3] = [
        (1..data.len()).collect(),
        vec![h % len],
        vec![h % len, (h >> 16) % len, (h >> 32) % len],
    ];
    for cuts in splits {
        let mut cuts = cuts;
        cuts.sort_unstable();
        assert_eq!(read_replies(data, &cuts), whole, "split at {cuts:?}");
    }
}

/// `smtp::proxy::parse`, the listener's PROXY protocol header parser: a whole header is no
/// longer than the input and than its version allows (v1: 107 bytes), starts with its
/// signature, and carries no IPv4-mapped client; every shorter prefix of a whole header or
/// of an incomplete input is incomplete (so the reader only ever takes header bytes); bytes
/// after a whole header, or after an invalid input, change nothing.
pub fn check_proxy_header(data: &[u8]) {
    let verdict = proxy::parse(data);
    let h = fnv(data) as usize;
    let mut more = data.to_vec();
    more.extend_from_slice(b"EHLO x\r\n");
    let end = match verdict {
        Parse::Done { header, len } => {
            assert!(len <= data.len(), "{len} > {}", data.len());
            if header.version == 1 {
                assert!(data.starts_with(b"PROXY ") && len <= proxy::V1_MAX);
                assert!(data[..len].ends_with(b"\r\n"));
            } else {
                assert!(data.starts_with(&proxy::V2_SIGNATURE) && len >= 16);
            }
            if let Some(source) = header.source {
                assert_eq!(
                    source.ip(),
                    source.ip().to_canonical(),
                    "IPv4-mapped client"
                );
            }
            assert_eq!(proxy::parse(&data[..len]), verdict, "the header alone");
            more.splice(len..len, b"\r\n".iter().copied());
            assert_eq!(proxy::parse(&more), verdict, "bytes after the header");
            len
        }
        Parse::Incomplete => data.len(),
        Parse::Invalid(_) => {
            assert!(
                matches!(proxy::parse(&more), Parse::Invalid(_)),
                "invalid, then valid"
            );
            return;
        }
    };
    for cut in [0, end / 2, h % end.max(1), end.saturating_sub(1)] {
        if cut < end {
            assert_eq!(
                proxy::parse(&data[..cut]),
                Parse::Incomplete,
                "prefix of {cut}"
            );
        }
    }
}
