//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): a load balancer
//! in front of the relay (HAProxy `send-proxy` / `send-proxy-v2`, AWS NLB, Envoy) writes
//! one header at the start of each connection it opens to the relay, carrying the address
//! of the client it accepted, so that attribution by IP still sees the real client.
//!
//! [`parse`] is sans-IO: it takes the bytes received so far and says whether they are a
//! whole header (and how long it is), the beginning of one, or no header. It answers
//! [`Parse::Incomplete`] only when every byte given belongs to the header, which is what
//! lets [`read_header`] consume the header and never a byte past it: SMTP input the
//! client pipelined behind it stays in the socket for the session.
//!
//! Accepted: v1 `TCP4`, `TCP6` and `UNKNOWN`; v2 `LOCAL` and `PROXY` over `AF_INET` /
//! `AF_INET6` with `STREAM`, and `AF_UNSPEC` / `AF_UNIX` (no IP to carry). TLVs are skipped.
//! `LOCAL`, `UNKNOWN` and address families without an IP carry no client: the connection
//! is the balancer's own (a health check) and keeps the balancer's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a balancer has to deliver the whole header after connecting (Postfix
/// `smtpd_upstream_proxy_timeout` = 5 s). HAProxy and the cloud balancers write it at
/// once, before any client byte, so only a broken or hostile peer ever waits this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The v1 header's longest form, CRLF included (spec §2.1: 107 bytes).
pub const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
/// The v2 signature (spec §2.2); its `QUIT\n` makes a server that does not expect the
/// header close at once.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, length.
const V2_FIXED: usize = 16;

/// A header read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// The client the balancer accepted; `None` for a connection of the balancer's own
    /// (v2 `LOCAL`, v1 `UNKNOWN`, an address family without an IP).
    pub source: Option<SocketAddr>,
}

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// The start of a header: every byte given belongs to it; more are needed.
    Incomplete,
    /// A whole header of `len` bytes (the bytes after it are the session's).
    Done { header: Header, len: usize },
    /// Not a header, or a broken one.
    Invalid(Invalid),
}

/// Why the bytes are not a usable header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Neither signature: the peer sent no header at all (e.g. SMTP straight away).
    Missing,
    /// A header that breaks the grammar; the text says where.
    Malformed(&'static str),
}

impl Invalid {
    pub fn describe(self) -> &'static str {
        match self {
            Invalid::Missing => "no PROXY protocol signature (the balancer sent no header)",
            Invalid::Malformed(why) => why,
        }
    }
}

/// Classifies the bytes received at the start of a connection.
pub fn parse(buf: &[u8]) -> Parse {
    if starts_like(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Parse::Incomplete;
        }
        return parse_v1(buf);
    }
    if starts_like(buf, &V2_SIGNATURE) {
        if buf.len() < V2_FIXED {
            return Parse::Incomplete;
        }
        return parse_v2(buf);
    }
    Parse::Invalid(Invalid::Missing)
}

/// Do `buf` and `prefix` agree over the shorter of the two?
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn malformed(why: &'static str) -> Parse {
    Parse::Invalid(Invalid::Malformed(why))
}

/// Version 1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN ...\r\n`, single
/// spaces, at most [`V1_MAX`] bytes (spec §2.1).
fn parse_v1(buf: &[u8]) -> Parse {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            malformed("PROXY v1 header without CRLF within 107 bytes")
        } else {
            Parse::Incomplete
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return malformed("PROXY v1 header ends with a bare LF");
    }
    let Ok(line) = std::str::from_utf8(&window[V1_PREFIX.len()..lf - 1]) else {
        return malformed("PROXY v1 header is not ASCII");
    };
    let mut fields = line.split(' ');
    let source = match fields.next() {
        // Spec §2.1: after UNKNOWN the receiver ignores everything up to the CRLF.
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => match v1_addresses(family, fields) {
            Ok(source) => Some(canonical(source)),
            Err(why) => return malformed(why),
        },
        _ => return malformed("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    Parse::Done {
        header: Header { version: 1, source },
        len: lf + 1,
    }
}

/// An IPv4 client written IPv4-mapped (`::ffff:192.0.2.1`, as a dual-stack balancer may)
/// is that IPv4 client: in Received:, the trace and the per-source limits alike.
fn canonical(source: SocketAddr) -> SocketAddr {
    SocketAddr::new(source.ip().to_canonical(), source.port())
}

/// `SRC DST SPORT DPORT` of a v1 `TCP4`/`TCP6` line: the source address and port.
fn v1_addresses<'a>(
    family: &str,
    mut fields: impl Iterator<Item = &'a str>,
) -> Result<SocketAddr, &'static str> {
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err("PROXY v1 header does not have exactly four address fields");
    };
    let v4 = family == "TCP4";
    let ip = |s: &str| -> Result<IpAddr, &'static str> {
        let parsed = if v4 {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        } else {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        };
        parsed.map_err(|_| "PROXY v1 address is not an address of the family named")
    };
    let src = ip(src)?;
    ip(dst)?;
    let sport = v1_port(sport)?;
    v1_port(dport)?;
    Ok(SocketAddr::new(src, sport))
}

/// A v1 port: decimal digits without a leading zero (spec §2.1), 0 to 65535.
fn v1_port(s: &str) -> Result<u16, &'static str> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err("PROXY v1 port is not a decimal number without leading zeros");
    }
    s.parse().map_err(|_| "PROXY v1 port is larger than 65535")
}

/// Version 2 (spec §2.2): the fixed 16 bytes, then `len` bytes of addresses and TLVs.
fn parse_v2(buf: &[u8]) -> Parse {
    let (ver_cmd, fam, len) = (buf[12], buf[13], u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return malformed("PROXY v2 header of a version other than 2");
    }
    let local = match ver_cmd & 0x0F {
        0x0 => true,
        0x1 => false,
        _ => return malformed("PROXY v2 command is neither LOCAL nor PROXY"),
    };
    let (family, transport) = (fam >> 4, fam & 0x0F);
    // Spec §2.2: other values "must be rejected as invalid by receivers".
    if family > 3 || transport > 2 {
        return malformed("PROXY v2 address family or transport is not defined");
    }
    let total = V2_FIXED + usize::from(len);
    if buf.len() < total {
        return Parse::Incomplete;
    }
    let block = &buf[V2_FIXED..total];
    let source = if local {
        // A connection of the balancer's own: the address block is skipped unread.
        None
    } else {
        match v2_source(family, transport, block) {
            Ok(source) => source.map(canonical),
            Err(why) => return malformed(why),
        }
    };
    Parse::Done {
        header: Header { version: 2, source },
        len: total,
    }
}

/// The source address of a v2 `PROXY` header; TLVs after the addresses are skipped.
fn v2_source(family: u8, transport: u8, block: &[u8]) -> Result<Option<SocketAddr>, &'static str> {
    // AF_UNSPEC: "the receiver ... must use the real connection endpoints"; AF_UNIX
    // carries paths, no IP to attribute: both keep the balancer's address.
    if family == 0 || family == 3 {
        return Ok(None);
    }
    if transport != 1 {
        return Err("PROXY v2 transport is not STREAM (SMTP runs over TCP)");
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match family {
        1 if block.len() >= 12 => {
            let ip: [u8; 4] = block[..4].try_into().expect("4 bytes");
            Ok(Some(SocketAddr::new(Ipv4Addr::from(ip).into(), port(8))))
        }
        2 if block.len() >= 36 => {
            let ip: [u8; 16] = block[..16].try_into().expect("16 bytes");
            Ok(Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port(32))))
        }
        _ => Err("PROXY v2 address block is shorter than its family needs"),
    }
}

/// Why no header could be read from a balancer.
#[derive(Debug)]
pub enum ReadError {
    /// Not within [`HEADER_TIMEOUT`].
    Timeout,
    /// The peer closed (or reset) the connection before the header was whole.
    Closed,
    Invalid(Invalid),
}

impl ReadError {
    /// The `reason` label of `connector_relay_proxy_header_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Timeout => "timeout",
            ReadError::Closed => "closed",
            ReadError::Invalid(Invalid::Missing) => "missing",
            ReadError::Invalid(Invalid::Malformed(_)) => "malformed",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ReadError::Timeout => format!(
                "no whole PROXY protocol header within {} s",
                HEADER_TIMEOUT.as_secs()
            ),
            ReadError::Closed => {
                "connection closed before the PROXY protocol header was whole".into()
            }
            ReadError::Invalid(i) => i.describe().into(),
        }
    }
}

/// Reads the header at the start of `stream` within [`HEADER_TIMEOUT`], consuming exactly
/// its bytes: it peeks at what has arrived, and takes only bytes that [`parse`] counts as
/// the header's. Usually one peek and one read.
pub async fn read_header(stream: &mut TcpStream) -> Result<Header, ReadError> {
    match tokio::time::timeout(HEADER_TIMEOUT, read_untimed(stream)).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Timeout),
    }
}

async fn read_untimed(stream: &mut TcpStream) -> Result<Header, ReadError> {
    // The header's bytes consumed so far, then what has arrived after them.
    let mut got: Vec<u8> = Vec::with_capacity(V1_MAX + 1);
    let mut window = vec![0u8; 256];
    loop {
        let n = match stream.peek(&mut window).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(n) => n,
        };
        let before = got.len();
        got.extend_from_slice(&window[..n]);
        // Every byte up to `take` is the header's and leaves the socket.
        let (take, done) = match parse(&got) {
            Parse::Incomplete => (n, None),
            Parse::Done { header, len } => (len - before, Some(header)),
            Parse::Invalid(i) => return Err(ReadError::Invalid(i)),
        };
        stream
            .read_exact(&mut window[..take])
            .await
            .map_err(|_| ReadError::Closed)?;
        if let Some(header) = done {
            return Ok(header);
        }
    }
}

/// A v1 header for `source` → `dest` (tests, the benchmark's client). Addresses of two
/// families are both written as IPv6 (the IPv4 one IPv4-mapped), as in [`v2_header`].
pub fn v1_header(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let (family, src, dst) = match (source.ip(), dest.ip()) {
        (s @ IpAddr::V4(_), d @ IpAddr::V4(_)) => ("TCP4", s, d),
        (s, d) => ("TCP6", IpAddr::V6(v6(s)), IpAddr::V6(v6(d))),
    };
    let (sport, dport) = (source.port(), dest.port());
    format!("PROXY {family} {src} {dst} {sport} {dport}\r\n").into_bytes()
}

/// A v2 `PROXY` header for `source` → `dest` over TCP, with `tlvs` appended (raw TLV
/// bytes, possibly empty). Addresses of two families are both written as IPv6.
pub fn v2_header(source: SocketAddr, dest: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut addresses = Vec::with_capacity(36);
    let family = match (source.ip(), dest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            0x11
        }
        (s, d) => {
            addresses.extend_from_slice(&v6(s).octets());
            addresses.extend_from_slice(&v6(d).octets());
            0x21
        }
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&dest.port().to_be_bytes());
    addresses.extend_from_slice(tlvs);
    v2_frame(0x21, family, &addresses)
}

/// A v2 `LOCAL` header (a balancer's health check), with no address block.
pub fn v2_local() -> Vec<u8> {
    v2_frame(0x20, 0x00, &[])
}

/// The v2 fixed part for `ver_cmd` and `fam`, then `block`.
pub fn v2_frame(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let len = u16::try_from(block.len()).expect("a v2 block fits its 16-bit length");
    let mut out = Vec::with_capacity(V2_FIXED + block.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[ver_cmd, fam]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(block);
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Parse::Done { header, len } => (header, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn why(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Parse::Invalid(i) => i.describe(),
            other => panic!(
                "{:?}: expected invalid, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    /// Every proper prefix of a whole header is `Incomplete` (what `read_header` relies on).
    fn prefixes_incomplete(buf: &[u8], len: usize) {
        for cut in 0..len {
            assert_eq!(parse(&buf[..cut]), Parse::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 203.0.113.9 10.0.0.5 56324 25\r\nEHLO x\r\n";
        let (h, len) = done(line);
        assert_eq!(
            h,
            Header {
                version: 1,
                source: Some(addr("203.0.113.9:56324"))
            }
        );
        assert_eq!(&line[len..], b"EHLO x\r\n", "the bytes after it are left");
        prefixes_incomplete(line, len);

        let mixed = v1_header(addr("203.0.113.9:1"), addr("[2001:db8::1]:25"));
        assert_eq!(mixed, b"PROXY TCP6 ::ffff:203.0.113.9 2001:db8::1 1 25\r\n");
        assert_eq!(done(&mixed).0.source, Some(addr("203.0.113.9:1")));

        let line = b"PROXY TCP6 2001:db8::9 2001:db8::1 65535 0\r\n";
        let (h, len) = done(line);
        assert_eq!(h.source, Some(addr("[2001:db8::9]:65535")));
        assert_eq!(len, line.len());
    }

    #[test]
    fn v1_unknown_keeps_the_connection_address() {
        assert_eq!(done(b"PROXY UNKNOWN\r\n").0.source, None);
        let (h, len) = done(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest");
        assert_eq!((h.source, len), (None, 35));
    }

    #[test]
    fn v1_longest_form_is_107_bytes() {
        // Spec §2.1's worst case: UNKNOWN followed by two full IPv6 addresses and ports.
        let max = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(max.len(), V1_MAX);
        assert_eq!(done(max).1, V1_MAX);
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(why(&long), "PROXY v1 header without CRLF within 107 bytes");
        long.truncate(V1_MAX - 1);
        assert_eq!(parse(&long), Parse::Incomplete, "106 bytes may still end");
    }

    #[test]
    fn v1_malformed_forms() {
        let cases: &[(&[u8], &str)] = &[
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4"),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "exactly four"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "exactly four"),
            (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "exactly four"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "exactly four"),
            (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "family named"),
            (b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", "family named"),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "family named"),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "family named"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.999 1 2\r\n", "family named"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                "larger than 65535",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 025 2\r\n", "leading zeros"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +25 2\r\n", "leading zeros"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "leading zeros"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 25 \r\n", "leading zeros"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", "ASCII"),
            (b"PROXY \r\n", "not TCP4"),
        ];
        for (line, part) in cases {
            let got = why(line);
            assert!(
                got.contains(part),
                "{:?}: {got}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn no_signature_is_missing() {
        for input in [
            &b"EHLO client\r\n"[..],
            b"PROXX",
            b"\r\n\r\n\0\r\nQUIX",
            b"proxy tcp4",
        ] {
            assert_eq!(parse(input), Parse::Invalid(Invalid::Missing), "{input:?}");
        }
        assert_eq!(parse(b""), Parse::Incomplete);
        assert_eq!(parse(b"PRO"), Parse::Incomplete);
        assert_eq!(
            parse(b"\r\n\r\n"),
            Parse::Incomplete,
            "a v2 signature begins"
        );
    }

    #[test]
    fn v2_inet_and_inet6_with_tlvs_skipped() {
        let (src, dst) = (addr("203.0.113.9:56324"), addr("10.0.0.5:25"));
        let mut bytes = v2_header(src, dst, &[0x04, 0x00, 0x02, 0xAA, 0xBB]);
        let whole = bytes.len();
        bytes.extend_from_slice(b"EHLO x\r\n");
        let (h, len) = done(&bytes);
        assert_eq!(
            h,
            Header {
                version: 2,
                source: Some(src)
            }
        );
        assert_eq!(len, whole);
        prefixes_incomplete(&bytes, len);

        // IPv4 written IPv4-mapped in an INET6 block is the IPv4 client.
        let mapped = v2_header(src, addr("[2001:db8::1]:25"), &[]);
        assert_eq!(done(&mapped).0.source, Some(src));
        let v1 = b"PROXY TCP6 ::ffff:203.0.113.9 2001:db8::1 56324 25\r\n";
        assert_eq!(done(v1).0.source, Some(src));

        let src6 = addr("[2001:db8::9]:4000");
        let bytes = v2_header(src6, addr("[2001:db8::1]:25"), &[]);
        assert_eq!(
            done(&bytes),
            (
                Header {
                    version: 2,
                    source: Some(src6)
                },
                16 + 36
            )
        );
    }

    #[test]
    fn v2_local_and_unspec_keep_the_connection_address() {
        assert_eq!(
            done(&v2_local()),
            (
                Header {
                    version: 2,
                    source: None
                },
                16
            )
        );
        // LOCAL with an address block: skipped whole, never read as a client.
        let block = &v2_header(addr("1.2.3.4:1"), addr("5.6.7.8:2"), &[])[16..];
        let local = v2_frame(0x20, 0x11, block);
        assert_eq!(
            done(&local),
            (
                Header {
                    version: 2,
                    source: None
                },
                28
            )
        );
        let unspec = v2_frame(0x21, 0x00, &[]);
        assert_eq!(done(&unspec).0.source, None);
        let unix = v2_frame(0x21, 0x31, &[0u8; 216]);
        assert_eq!(
            done(&unix),
            (
                Header {
                    version: 2,
                    source: None
                },
                16 + 216
            )
        );
    }

    #[test]
    fn v2_malformed_forms() {
        let block = v2_header(addr("1.2.3.4:1"), addr("5.6.7.8:2"), &[])[16..].to_vec();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (v2_frame(0x11, 0x11, &block), "version other than 2"),
            (v2_frame(0x31, 0x11, &block), "version other than 2"),
            (v2_frame(0x22, 0x11, &block), "neither LOCAL nor PROXY"),
            (v2_frame(0x21, 0x41, &block), "not defined"),
            (v2_frame(0x21, 0x13, &block), "not defined"),
            (v2_frame(0x21, 0x12, &block), "not STREAM"),
            (
                v2_frame(0x21, 0x11, &block[..11]),
                "shorter than its family",
            ),
            (v2_frame(0x21, 0x21, &[0u8; 35]), "shorter than its family"),
            (v2_frame(0x21, 0x10, &block), "not STREAM"),
        ];
        for (bytes, part) in &cases {
            let got = why(bytes);
            assert!(got.contains(part), "{bytes:?}: {got}");
        }
    }

    #[test]
    fn v2_waits_for_its_whole_length() {
        let bytes = v2_header(addr("1.2.3.4:1"), addr("5.6.7.8:2"), &[0u8; 300]);
        assert_eq!(bytes.len(), 16 + 12 + 300);
        prefixes_incomplete(&bytes, bytes.len());
        assert_eq!(done(&bytes).1, bytes.len());
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn read_header_leaves_the_bytes_after_it() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = pair().await;
        let src = addr("203.0.113.9:56324");
        // The header in pieces (a v2 header split across segments), SMTP right behind it.
        let mut bytes = v2_header(src, addr("10.0.0.5:25"), &[0x04, 0x00, 0x01, 0x00]);
        bytes.extend_from_slice(b"EHLO x\r\n");
        let reader = tokio::spawn(async move {
            let h = read_header(&mut server).await.expect("header");
            let mut rest = [0u8; 8];
            server.read_exact(&mut rest).await.unwrap();
            (h, rest)
        });
        for piece in bytes.chunks(7) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (h, rest) = reader.await.unwrap();
        assert_eq!(h.source, Some(src));
        assert_eq!(&rest, b"EHLO x\r\n");
    }

    #[tokio::test]
    async fn read_header_reports_a_close_and_garbage() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 1.2.3").await.unwrap();
        drop(client);
        let e = read_header(&mut server).await.unwrap_err();
        assert_eq!(e.reason(), "closed");

        let (mut client, mut server) = pair().await;
        client.write_all(b"EHLO x\r\n").await.unwrap();
        let e = read_header(&mut server).await.unwrap_err();
        assert_eq!(e.reason(), "missing");
    }
}
