//! SASL pieces shared by the server session and the outbound client: base64 (RFC 4648 §4,
//! the alphabet RFC 4954 uses), the PLAIN message (RFC 4616) and the LOGIN prompts.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 with padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64 with or without padding; `None` on any other character.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover character (6 bits) cannot come from any input.
    (bits < 6).then_some(out)
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
pub fn plain_message(user: &str, password: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(user.len() + password.len() + 2);
    m.push(0);
    m.extend_from_slice(user.as_bytes());
    m.push(0);
    m.extend_from_slice(password.as_bytes());
    m
}

/// Parses a PLAIN message into (authcid, password). An authzid other than empty or the
/// authcid itself is refused (no proxy authorization).
pub fn parse_plain(message: &[u8]) -> Option<(String, String)> {
    let mut parts = message.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || (!authz.is_empty() && authz != user.as_bytes()) {
        return None;
    }
    Some((user.to_string(), pass.to_string()))
}

/// The LOGIN mechanism's prompts (draft-murchison-sasl-login), base64-encoded.
pub const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for (raw, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"Username:", "VXNlcm5hbWU6"),
        ] {
            assert_eq!(encode(raw), b64);
            assert_eq!(decode(b64).unwrap(), raw);
        }
        assert_eq!(decode("Zm9vYg").unwrap(), b"foob");
        assert!(decode("Zm9v!").is_none());
        assert!(decode("Z").is_none());
    }

    #[test]
    fn plain() {
        let m = plain_message("user", "p@ss word");
        assert_eq!(encode(&m), "AHVzZXIAcEBzcyB3b3Jk");
        assert_eq!(parse_plain(&m), Some(("user".into(), "p@ss word".into())));
        assert_eq!(
            parse_plain(b"user\0user\0pw"),
            Some(("user".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"admin\0user\0pw"), None);
        assert_eq!(parse_plain(b"\0user"), None);
    }
}
