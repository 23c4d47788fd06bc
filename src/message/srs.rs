//! Sender Rewriting Scheme, SRS0 only (policy.md "Outbound: headers",
//! `SenderRewritingEnabled`), in the format of Shevek's SRS paper and libsrs2/postsrsd:
//!
//! ```text
//! SRS0=HHHH=TT=orig-domain=orig-local@rewrite-domain
//! ```
//!
//! - `TT`: the day (Unix time / 86400) modulo 1024 in base32 (`A-Z2-7`), two characters,
//!   high five bits first. Compared case-insensitively.
//! - `HHHH`: the first four characters of base64(HMAC-SHA1(secret, TT ‖ orig-domain ‖
//!   orig-local)), each part lower-cased first as libsrs2 does. Compared case-insensitively
//!   on reversal (some MTAs lower-case local parts), like libsrs2.
//! - The secret is the content of `[Relay] SrsSecretFile` with surrounding whitespace
//!   trimmed, used byte for byte as the HMAC key (so a postsrsd or libsrs2 secret string can
//!   be carried over).
//! - Reversal refuses a wrong hash and a timestamp older than [`MAX_AGE_DAYS`] days (or
//!   more than one day in the future, since the 1024-day cycle makes "future" ambiguous only
//!   far beyond that).
//! - An address that already is SRS0 (a forwarder upstream rewrote it) is simply rewritten
//!   again, not turned into SRS1: the reversal then gives back the upstream SRS0 address,
//!   whose own forwarder reverses it in turn. Addresses grow by about 20 characters per hop.
//! - Local parts that are quoted strings (`"a b"@x`) are not rewritten: the result would not
//!   be a valid address.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;

/// Timestamps older than this many days are refused on reversal (libsrs2 default).
pub const MAX_AGE_DAYS: u32 = 21;

/// Days in one timestamp cycle (two base32 characters).
const TICK_SLOTS: u32 = 1024;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why an SRS address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    #[error("not an SRS0 address")]
    NotSrs,
    #[error("malformed SRS0 address")]
    Malformed,
    #[error("SRS hash mismatch")]
    BadHash,
    #[error("SRS timestamp expired")]
    Expired,
}

/// The SRS signer/verifier. The key is never printed (`Debug` hides it).
pub struct Srs {
    key: hmac::Key,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Srs { key: <redacted> }")
    }
}

impl Srs {
    pub fn new(secret: &[u8]) -> Self {
        Srs {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
        }
    }

    /// Reads the secret from `path`, creating the file first (32 random bytes as hex, mode
    /// 0600) when it does not exist. An empty file is an error.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        crate::secret::load_or_create(path).map(|secret| Srs::new(&secret))
    }

    /// The SRS0 form of `sender` (`local@domain`) at `rewrite_domain`, for today.
    /// `None` for the null sender, an address without `@` or with a quoted local part.
    pub fn forward(&self, sender: &str, rewrite_domain: &str) -> Option<String> {
        self.forward_at(sender, rewrite_domain, today())
    }

    /// [`Srs::forward`] on a given day (days since the Unix epoch).
    pub fn forward_at(&self, sender: &str, rewrite_domain: &str, day: u64) -> Option<String> {
        let (local, domain) = sender.rsplit_once('@')?;
        if local.is_empty() || domain.is_empty() || local.starts_with('"') {
            return None;
        }
        let stamp = timestamp(day);
        let hash = self.hash(&stamp, domain, local);
        Some(format!(
            "SRS0={hash}={stamp}={domain}={local}@{rewrite_domain}"
        ))
    }

    /// The original address of an SRS0 address, checked against today's date.
    pub fn reverse(&self, address: &str) -> Result<String, SrsError> {
        self.reverse_at(address, today(), MAX_AGE_DAYS)
    }

    /// [`Srs::reverse`] on a given day, with a given maximum age in days.
    pub fn reverse_at(&self, address: &str, day: u64, max_age: u32) -> Result<String, SrsError> {
        let (local, _) = address.rsplit_once('@').ok_or(SrsError::NotSrs)?;
        let rest = strip_srs0(local).ok_or(SrsError::NotSrs)?;
        let mut parts = rest.splitn(4, '=');
        let (Some(hash), Some(stamp), Some(domain), Some(orig_local)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SrsError::Malformed);
        };
        if stamp.len() != 2 || domain.is_empty() || orig_local.is_empty() || hash.is_empty() {
            return Err(SrsError::Malformed);
        }
        let then = decode_timestamp(stamp).ok_or(SrsError::Malformed)?;
        let expected = self.hash(stamp, domain, orig_local);
        if !constant_time_eq_ci(hash.as_bytes(), expected.as_bytes()) {
            return Err(SrsError::BadHash);
        }
        // Age in days, modulo the cycle; a stamp up to one day "ahead" (clock skew between
        // RCPT and DATA, or between relays sharing the secret) counts as fresh.
        let now = (day % u64::from(TICK_SLOTS)) as u32;
        let age = (now + TICK_SLOTS - then) % TICK_SLOTS;
        if age > max_age && age != TICK_SLOTS - 1 {
            return Err(SrsError::Expired);
        }
        Ok(format!("{orig_local}@{domain}"))
    }

    /// HHHH: base64(HMAC-SHA1(secret, lc(stamp) ‖ lc(domain) ‖ lc(local)))[..4].
    fn hash(&self, stamp: &str, domain: &str, local: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [stamp, domain, local] {
            ctx.update(part.to_ascii_lowercase().as_bytes());
        }
        let tag = ctx.sign();
        base64_prefix4(tag.as_ref())
    }
}

/// Does `local` look like an SRS0 local part (`SRS0=` followed by something, any case)?
/// Only the prefix is checked.
pub fn is_srs0(address: &str) -> bool {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    strip_srs0(local).is_some()
}

/// The part after `SRS0=` (libsrs2 also accepts `+` and `-` as the first separator).
fn strip_srs0(local: &str) -> Option<&str> {
    let head = local.get(..5)?;
    let (tag, sep) = head.split_at(4);
    (tag.eq_ignore_ascii_case("SRS0") && matches!(sep, "=" | "+" | "-")).then(|| &local[5..])
}

/// Days since the Unix epoch, now.
pub fn today() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

/// TT for a day: (day mod 1024) in two base32 characters.
pub fn timestamp(day: u64) -> String {
    let t = (day % u64::from(TICK_SLOTS)) as usize;
    let chars = [BASE32[(t >> 5) & 31], BASE32[t & 31]];
    String::from_utf8_lossy(&chars).into_owned()
}

/// The day (mod 1024) of a TT, any case.
fn decode_timestamp(stamp: &str) -> Option<u32> {
    let mut v = 0u32;
    for c in stamp.bytes() {
        let c = c.to_ascii_uppercase();
        let d = BASE32.iter().position(|&b| b == c)? as u32;
        v = (v << 5) | d;
    }
    Some(v)
}

/// The first four base64 characters of `bytes` (the top 24 bits; needs 3 bytes).
fn base64_prefix4(bytes: &[u8]) -> String {
    let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
    (0..4)
        .map(|i| BASE64[((n >> (18 - 6 * i)) & 63) as usize] as char)
        .collect()
}

/// Case-insensitive comparison without an early exit on the first difference.
fn constant_time_eq_ci(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| {
            acc | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())
        }) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_prefix_matches_standard_encoding() {
        // "Man" -> "TWFu"; 0xfb 0xff 0xbf -> "+/+/"
        assert_eq!(base64_prefix4(b"Man"), "TWFu");
        assert_eq!(base64_prefix4(&[0xfb, 0xff, 0xbf]), "+/+/");
    }
}
