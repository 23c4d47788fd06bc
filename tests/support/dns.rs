//! A real DNS server on loopback for integration tests, so tests exercise the production
//! resolver (`HickoryResolver`) over real UDP and TCP sockets.
//!
//! Built on `hickory-proto` (message encoding only); the server loop is a few lines of
//! tokio. It is authoritative for every name it is told about:
//! - a name with no records at all → NXDOMAIN;
//! - a known name without records of the asked type → NOERROR with an empty answer
//!   ("NODATA", RFC 2308 §2.2);
//! - names can be told to answer REFUSED or SERVFAIL instead ([`TestDns::fail`]), or a
//!   SERVFAIL carrying the RFC 8914 "DNSSEC Bogus" error (what unbound says for bogus data);
//! - names marked secure ([`TestDns::set_secure`]) answer with the AD bit when the query
//!   asked for it (AD or DO), as a validating resolver does (RFC 6840 §5.7); TLSA records
//!   for DANE with [`TestDns::add_tlsa`].
//!
//! Records are served with TTL 0 and negative answers carry an SOA with minimum 0
//! (RFC 2308 §5), so resolver caches never hide a change made at runtime; a test of the
//! resolver's cache sets another TTL with [`TestDns::set_ttl`].
//!
//! Use: `let dns = TestDns::start().await; dns.add_mx("example.test", 10, "mx.example.test");`
//! then `HickoryResolver::new(&[dns.addr])`.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How a name answers when it is set to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFailure {
    Refused,
    ServFail,
    /// SERVFAIL with EDE 6 (DNSSEC Bogus).
    Bogus,
}

#[derive(Debug, Default)]
struct Zone {
    /// Lower-case name without trailing dot → records of that name.
    names: HashMap<String, Vec<RData>>,
    /// Names that answer with an error code whatever the type asked.
    failures: HashMap<String, DnsFailure>,
    /// TTL of every answer, and the SOA minimum of negative answers (RFC 2308 §5).
    ttl: u32,
    /// Every name asked, in order (lower-case, no trailing dot).
    asked: Vec<String>,
    /// Names whose answers carry AD (when asked for).
    secure: std::collections::HashSet<String>,
}

/// A DNS server on 127.0.0.1 (UDP and TCP on the same port). Stops when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Normalises a name the way lookups do: lower-case (RFC 4343: DNS names compare
/// case-insensitively), no trailing dot.
fn key(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn name(text: &str) -> Name {
    let text = text.trim().trim_end_matches('.');
    Name::from_ascii(format!("{text}.")).expect("valid test DNS name")
}

/// Binds UDP and TCP on the same loopback port (retrying if TCP's port is taken).
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let addr = udp.local_addr().expect("UDP local address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("could not bind UDP and TCP on the same loopback port");
}

impl TestDns {
    /// Starts serving on 127.0.0.1:<ephemeral> (UDP and TCP, same port).
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("UDP local address");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let queries = Arc::new(AtomicUsize::new(0));
        let udp_task = tokio::spawn(serve_udp(udp, zone.clone(), queries.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, zone.clone(), queries.clone()));
        TestDns {
            addr,
            zone,
            queries,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn add(&self, owner: &str, rdata: RData) {
        let mut zone = self.zone.lock().expect("zone lock");
        zone.names.entry(key(owner)).or_default().push(rdata);
    }

    /// Adds an MX record; `exchange` "." publishes a null MX (RFC 7505).
    pub fn add_mx(&self, domain: &str, pref: u16, exchange: &str) {
        let exchange = if exchange.trim() == "." {
            Name::root()
        } else {
            name(exchange)
        };
        self.add(domain, RData::MX(MX::new(pref, exchange)));
    }

    pub fn add_a(&self, host: &str, ip: Ipv4Addr) {
        self.add(host, RData::A(A(ip)));
    }

    pub fn add_aaaa(&self, host: &str, ip: Ipv6Addr) {
        self.add(host, RData::AAAA(AAAA(ip)));
    }

    /// Adds A or AAAA depending on the address family.
    pub fn add_ip(&self, host: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add_a(host, v4),
            IpAddr::V6(v6) => self.add_aaaa(host, v6),
        }
    }

    /// Adds a TXT record (split into 255-octet character-strings, RFC 1035 §3.3.14).
    pub fn add_txt(&self, name: &str, txt: &str) {
        let chunks: Vec<String> = txt
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(name, RData::TXT(TXT::new(chunks)));
    }

    /// Adds a TLSA record (RFC 6698) at `name`, e.g. `_25._tcp.mx.example.test`.
    pub fn add_tlsa(&self, name: &str, usage: u8, selector: u8, matching: u8, data: Vec<u8>) {
        self.add(
            name,
            RData::TLSA(TLSA::new(
                usage.into(),
                selector.into(),
                matching.into(),
                data,
            )),
        );
    }

    /// Marks the answers for `name` (any type, positive or negative) as DNSSEC-secure.
    pub fn set_secure(&self, name: &str) {
        self.zone
            .lock()
            .expect("zone lock")
            .secure
            .insert(key(name));
    }

    /// Makes `name` exist with no records (every query → NODATA).
    pub fn add_empty(&self, name: &str) {
        let mut zone = self.zone.lock().expect("zone lock");
        zone.names.entry(key(name)).or_default();
    }

    /// Removes every record of `name` (it becomes NXDOMAIN) and any failure mode.
    pub fn remove(&self, name: &str) {
        let mut zone = self.zone.lock().expect("zone lock");
        zone.names.remove(&key(name));
        zone.failures.remove(&key(name));
    }

    /// Makes every query for `name` answer with `failure`, until [`TestDns::remove`].
    pub fn fail(&self, name: &str, failure: DnsFailure) {
        let mut zone = self.zone.lock().expect("zone lock");
        zone.failures.insert(key(name), failure);
    }

    /// Serves every record, and every negative answer, with `ttl` seconds from now on.
    pub fn set_ttl(&self, ttl: u32) {
        self.zone.lock().expect("zone lock").ttl = ttl;
    }

    /// Every name queried so far (any type, in order).
    pub fn queried_names(&self) -> Vec<String> {
        self.zone.lock().expect("zone lock").asked.clone()
    }

    /// Number of queries answered so far (UDP and TCP).
    pub fn query_count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// A "DNS server" that accepts queries (UDP) and connections (TCP) but never answers,
/// for timeout tests; it counts the UDP queries it swallows. Stops when dropped.
pub struct SilentDns {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    _tcp: TcpListener,
    udp_task: JoinHandle<()>,
}

impl Drop for SilentDns {
    fn drop(&mut self) {
        self.udp_task.abort();
    }
}

impl SilentDns {
    pub async fn start() -> SilentDns {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("UDP local address");
        // Datagrams are read (to count them) and never answered; TCP connections complete
        // in the kernel's backlog and are never read. Either way the client hears nothing.
        let queries = Arc::new(AtomicUsize::new(0));
        let q = queries.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while udp.recv_from(&mut buf).await.is_ok() {
                q.fetch_add(1, Ordering::SeqCst);
            }
        });
        SilentDns {
            addr,
            queries,
            _tcp: tcp,
            udp_task,
        }
    }

    /// UDP queries received (and left unanswered) so far.
    pub fn query_count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>, queries: Arc<AtomicUsize>) {
    // RFC 6891 §6.2.5: a UDP payload can be up to 65535 octets with EDNS.
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(reply) = answer(&buf[..len], &zone, true) else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let _ = socket.send_to(&reply, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>, queries: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_conn(stream, zone.clone(), queries.clone()));
    }
}

/// RFC 1035 §4.2.2 / RFC 7766 §8: over TCP each message is preceded by a two-octet
/// length; a connection may carry several queries.
async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Mutex<Zone>>, queries: Arc<AtomicUsize>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Some(reply) = answer(&buf, &zone, false) else {
            return;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_u16(reply_len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Builds the wire reply to one query; `None` if the bytes are not a query at all.
fn answer(request: &[u8], zone: &Mutex<Zone>, udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true);
    response.add_queries(request.queries().iter().cloned());
    if request.extensions().is_some() {
        // RFC 6891 §7: answer EDNS with EDNS.
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        response.set_edns(edns);
    }

    let query = match (request.op_code(), request.queries()) {
        (OpCode::Query, [query]) => query,
        (OpCode::Query, _) => {
            response.set_response_code(ResponseCode::FormErr);
            return response.to_vec().ok();
        }
        _ => {
            response.set_response_code(ResponseCode::NotImp);
            return response.to_vec().ok();
        }
    };

    let owner = query.name().clone();
    let wanted = query.query_type();
    let lookup_key = key(&owner.to_ascii());
    let ttl;
    {
        let mut zone = zone.lock().ok()?;
        zone.asked.push(lookup_key.clone());
        ttl = zone.ttl;
        if let Some(failure) = zone.failures.get(&lookup_key) {
            response.set_response_code(match failure {
                DnsFailure::Refused => ResponseCode::Refused,
                DnsFailure::ServFail | DnsFailure::Bogus => ResponseCode::ServFail,
            });
            if *failure == DnsFailure::Bogus {
                // RFC 8914: INFO-CODE 6 "DNSSEC Bogus" and a text, as unbound's `ede: yes`.
                let mut data = 6u16.to_be_bytes().to_vec();
                data.extend_from_slice(b"signature crypto failed");
                let mut edns = Edns::new();
                edns.set_max_payload(4096);
                edns.options_mut().insert(EdnsOption::Unknown(15, data));
                response.set_edns(edns);
            }
            return response.to_vec().ok();
        }
        let asked_dnssec = request.authentic_data()
            || request
                .extensions()
                .as_ref()
                .is_some_and(|e| e.flags().dnssec_ok);
        if asked_dnssec && zone.secure.contains(&lookup_key) {
            response.set_authentic_data(true);
        }
        match zone.names.get(&lookup_key) {
            None => {
                response.set_response_code(ResponseCode::NXDomain);
            }
            Some(records) => {
                let matching = records
                    .iter()
                    .filter(|r| wanted == RecordType::ANY || r.record_type() == wanted);
                for rdata in matching {
                    response.add_answer(Record::from_rdata(owner.clone(), ttl, rdata.clone()));
                }
            }
        }
    }
    if response.answers().is_empty() {
        // RFC 2308 §3: negative answers carry the zone's SOA, cached for the lesser of its
        // TTL and its minimum (§5); 0 (the default) → not cached.
        let soa = SOA::new(
            name("ns.test"),
            name("hostmaster.test"),
            1,
            3600,
            600,
            86400,
            ttl,
        );
        response.add_name_server(Record::from_rdata(owner, ttl, RData::SOA(soa)));
    }

    let bytes = response.to_vec().ok()?;
    // RFC 1035 §4.2.1 / RFC 6891 §6.2.5: a UDP answer larger than the client can take is
    // sent truncated (TC set) so that the client retries over TCP.
    if udp && bytes.len() > usize::from(request.max_payload()) {
        response.take_answers();
        response.take_name_servers();
        response.set_truncated(true);
        return response.to_vec().ok();
    }
    Some(bytes)
}
