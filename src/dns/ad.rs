//! DNSSEC status from the AD bit of a trusted validating resolver (`[Relay]
//! DnssecValidation = "Resolver"`, the default): Postfix's and maddy's model.
//!
//! hickory-resolver's `Lookup` does not expose the header of the answer, so the queries
//! whose DNSSEC status matters (MX, A/AAAA and TLSA for DANE) are sent here at message
//! level: RD=1, **AD=1** (RFC 6840 §5.7: a validating resolver sets AD in the answer only
//! when the query asked for it with AD or DO), EDNS, over UDP with a TCP retry on TC=1.
//!
//! | answer | meaning |
//! | --- | --- |
//! | NOERROR / NXDOMAIN with AD | secure |
//! | NOERROR / NXDOMAIN without AD | insecure (unsigned, or the resolver does not validate) |
//! | SERVFAIL with an RFC 8914 DNSSEC error (EDE 6–12) | bogus: [`DnsError::Bogus`] |
//! | other SERVFAIL, timeout | a lookup failure |
//!
//! This fails safe: a resolver that does not validate only turns DANE off (everything is
//! insecure), it can never make forged data look secure — provided the path to the
//! resolver is trusted (loopback, as the README says), since AD is just a header bit.
//!
//! Answers are cached for their TTL (negative answers for the SOA minimum, RFC 2308 §5),
//! so delivery to a busy domain costs no query per message; errors are not cached.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::Name;
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::hickory::{classify_mx, fqdn, merge_families, mx_records};
use super::{DnsError, MxAnswer, Secured, Security, Tlsa};

/// Longest time an answer is kept, whatever its TTL says.
const MAX_CACHE_TTL: u32 = 3600;
/// Tries per server (the first plus one retry), as resolv.conf's `attempts:2`.
const ATTEMPTS: usize = 2;
/// RFC 8914 §4: the extended DNS error option code.
const EDE_OPTION: u16 = 15;

/// One answer: the response code, the AD bit and the answer records.
#[derive(Debug, Clone)]
struct Answer {
    rcode: ResponseCode,
    secure: bool,
    records: Vec<Record>,
}

impl Answer {
    fn security(&self) -> Security {
        if self.secure {
            Security::Secure
        } else {
            Security::Insecure
        }
    }
}

/// Sends AD=1 queries to the configured servers and caches the answers.
pub struct AdClient {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<(String, RecordType), (Instant, Answer)>>,
}

impl std::fmt::Debug for AdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdClient")
            .field("servers", &self.servers)
            .finish()
    }
}

impl AdClient {
    /// Queries `servers`, or the system's name servers (`/etc/resolv.conf`) when empty.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<AdClient, String> {
        let servers = if servers.is_empty() {
            system_servers()?
        } else {
            servers.to_vec()
        };
        Ok(AdClient {
            servers,
            timeout,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The servers whose AD bit is trusted.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    pub async fn mx(&self, domain: &str) -> Result<Secured<MxAnswer>, DnsError> {
        let answer = self.query(domain, RecordType::MX).await?;
        let security = answer.security();
        match answer.rcode {
            ResponseCode::NXDomain => Err(DnsError::NxDomain),
            _ => Ok(Secured {
                value: classify_mx(mx_records(&answer.records)),
                security,
            }),
        }
    }

    pub async fn ips(&self, host: &str) -> Result<Secured<Vec<IpAddr>>, DnsError> {
        let (v6, v4) = tokio::join!(
            self.query(host, RecordType::AAAA),
            self.query(host, RecordType::A)
        );
        let mut security: Option<Security> = None;
        let mut family = |answer: Result<Answer, DnsError>| -> Result<Vec<IpAddr>, DnsError> {
            let answer = answer?;
            if answer.rcode == ResponseCode::NXDomain {
                return Err(DnsError::NxDomain);
            }
            security = Some(security.map_or(answer.security(), |s| s.min(answer.security())));
            super::hickory::addresses(&answer.records)
        };
        let v6 = family(v6);
        let v4 = family(v4);
        let ips = merge_families(v6, v4)?;
        Ok(Secured {
            value: ips,
            security: security.unwrap_or(Security::Insecure),
        })
    }

    /// The TLSA RRset at `name`; empty for NXDOMAIN / NODATA (with the denial's status).
    pub async fn tlsa(&self, name: &str) -> Result<Secured<Vec<Tlsa>>, DnsError> {
        let answer = self.query(name, RecordType::TLSA).await?;
        let value = answer
            .records
            .iter()
            .filter_map(|r| match r.data() {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage().into(),
                    selector: t.selector().into(),
                    matching: t.matching().into(),
                    data: t.cert_data().to_vec(),
                }),
                _ => None,
            })
            .collect();
        Ok(Secured {
            value,
            security: answer.security(),
        })
    }

    /// Postfix's `dnssec_probe`: does the resolver set AD for the root's NS RRset (always
    /// signed)? `Ok(false)` means DANE can never apply through these servers.
    pub async fn probe(&self) -> Result<bool, DnsError> {
        let answer = self.query(".", RecordType::NS).await?;
        Ok(answer.secure)
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, DnsError> {
        let qname = if name.trim_end_matches('.').is_empty() {
            Name::root()
        } else {
            fqdn(name)?
        };
        let key = (qname.to_ascii().to_ascii_lowercase(), rtype);
        if let Some((expires, answer)) = self.cache.lock().expect("cache lock").get(&key)
            && *expires > Instant::now()
        {
            return Ok(answer.clone());
        }
        let (answer, ttl) = self.ask(&qname, rtype).await?;
        if ttl > 0 {
            let expires = Instant::now() + Duration::from_secs(u64::from(ttl.min(MAX_CACHE_TTL)));
            let mut cache = self.cache.lock().expect("cache lock");
            cache.retain(|_, (e, _)| *e > Instant::now());
            cache.insert(key, (expires, answer.clone()));
        }
        Ok(answer)
    }

    /// Every server in order, [`ATTEMPTS`] rounds, until one answers.
    async fn ask(&self, qname: &Name, rtype: RecordType) -> Result<(Answer, u32), DnsError> {
        let mut last = DnsError::Failed("no DNS server configured".into());
        for _ in 0..ATTEMPTS {
            for &server in &self.servers {
                match self.exchange(server, qname, rtype).await {
                    Ok(msg) => return interpret(&msg),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// One query to one server: UDP, then TCP when the answer was truncated.
    async fn exchange(
        &self,
        server: SocketAddr,
        qname: &Name,
        rtype: RecordType,
    ) -> Result<Message, DnsError> {
        let id: u16 = rand::random();
        let request = build_query(id, qname, rtype)?;
        let fut = async {
            let msg = udp_exchange(server, &request, id, qname, rtype).await?;
            if msg.truncated() {
                return tcp_exchange(server, &request, id, qname, rtype).await;
            }
            Ok(msg)
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DnsError::Timeout),
        }
    }
}

fn system_servers() -> Result<Vec<SocketAddr>, String> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| format!("reading the system DNS configuration: {e}"))?;
    let mut servers: Vec<SocketAddr> = Vec::new();
    for ns in config.name_servers() {
        if !servers.contains(&ns.socket_addr) {
            servers.push(ns.socket_addr);
        }
    }
    Ok(servers)
}

fn build_query(id: u16, qname: &Name, rtype: RecordType) -> Result<Vec<u8>, DnsError> {
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        // RFC 6840 §5.7: ask for the AD bit.
        .set_authentic_data(true);
    msg.add_query(Query::query(qname.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    msg.to_vec()
        .map_err(|e| DnsError::Failed(format!("encoding a DNS query: {e}")))
}

/// Is `msg` the answer to our query (id and question), and not something injected?
fn is_answer(msg: &Message, id: u16, qname: &Name, rtype: RecordType) -> bool {
    msg.id() == id
        && msg.message_type() == MessageType::Response
        && msg
            .queries()
            .first()
            .is_some_and(|q| q.query_type() == rtype && q.name() == qname)
}

async fn udp_exchange(
    server: SocketAddr,
    request: &[u8],
    id: u16,
    qname: &Name,
    rtype: RecordType,
) -> Result<Message, DnsError> {
    let io = |e: std::io::Error| DnsError::Failed(format!("DNS over UDP to {server}: {e}"));
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    socket.send(request).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        if let Ok(msg) = Message::from_vec(&buf[..n])
            && is_answer(&msg, id, qname, rtype)
        {
            return Ok(msg);
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    request: &[u8],
    id: u16,
    qname: &Name,
    rtype: RecordType,
) -> Result<Message, DnsError> {
    let io = |e: std::io::Error| DnsError::Failed(format!("DNS over TCP to {server}: {e}"));
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    let len =
        u16::try_from(request.len()).map_err(|_| DnsError::Failed("query too long".into()))?;
    stream.write_u16(len).await.map_err(io)?;
    stream.write_all(request).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.map_err(io)?;
    let msg = Message::from_vec(&buf)
        .map_err(|e| DnsError::Failed(format!("malformed DNS answer from {server}: {e}")))?;
    if !is_answer(&msg, id, qname, rtype) {
        return Err(DnsError::Failed(format!(
            "DNS answer from {server} does not match the query"
        )));
    }
    Ok(msg)
}

/// Folds a response into an [`Answer`] and its cache TTL.
fn interpret(msg: &Message) -> Result<(Answer, u32), DnsError> {
    match msg.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        ResponseCode::Refused => return Err(DnsError::Refused),
        ResponseCode::ServFail => {
            return Err(match dnssec_error(msg) {
                Some(ede) => DnsError::Bogus(ede),
                None => DnsError::Failed("server answered SERVFAIL".into()),
            });
        }
        code => return Err(DnsError::Failed(format!("server answered {code}"))),
    }
    let records: Vec<Record> = msg.answers().to_vec();
    let ttl = if records.is_empty() {
        // RFC 2308 §5: a negative answer is cached for min(SOA TTL, SOA minimum).
        msg.name_servers()
            .iter()
            .find_map(|r| match r.data() {
                RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
                _ => None,
            })
            .unwrap_or(0)
    } else {
        records.iter().map(Record::ttl).min().unwrap_or(0)
    };
    Ok((
        Answer {
            rcode: msg.response_code(),
            secure: msg.authentic_data(),
            records,
        },
        ttl,
    ))
}

/// An RFC 8914 extended error of the DNSSEC kind (6 DNSSEC Bogus, 7 Signature Expired,
/// 8 Signature Not Yet Valid, 9 DNSKEY Missing, 10 RRSIGs Missing, 11 No Zone Key Bit
/// Set, 12 NSEC Missing), as text; `None` for any other SERVFAIL.
fn dnssec_error(msg: &Message) -> Option<String> {
    let edns = msg.extensions().as_ref()?;
    let option = edns.option(EdnsCode::Unknown(EDE_OPTION))?;
    let EdnsOption::Unknown(_, data) = option else {
        return None;
    };
    let code = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
    let name = match code {
        6 => "DNSSEC Bogus",
        7 => "Signature Expired",
        8 => "Signature Not Yet Valid",
        9 => "DNSKEY Missing",
        10 => "RRSIGs Missing",
        11 => "No Zone Key Bit Set",
        12 => "NSEC Missing",
        _ => return None,
    };
    let extra = String::from_utf8_lossy(&data[2..]).trim().to_string();
    Some(if extra.is_empty() {
        format!("EDE {code} ({name})")
    } else {
        format!("EDE {code} ({name}): {extra}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servfail_with(option: Option<Vec<u8>>) -> Message {
        let mut msg = Message::new();
        msg.set_message_type(MessageType::Response);
        msg.set_response_code(ResponseCode::ServFail);
        if let Some(data) = option {
            let mut edns = Edns::new();
            edns.options_mut()
                .insert(EdnsOption::Unknown(EDE_OPTION, data));
            msg.set_edns(edns);
        }
        msg
    }

    #[test]
    fn servfail_with_a_dnssec_ede_is_bogus_else_a_failure() {
        let mut data = 7u16.to_be_bytes().to_vec();
        data.extend_from_slice(b"signature expired");
        match interpret(&servfail_with(Some(data))) {
            Err(DnsError::Bogus(text)) => assert!(text.contains("Signature Expired"), "{text}"),
            other => panic!("{other:?}"),
        }
        let stale = 3u16.to_be_bytes().to_vec(); // EDE 3: Stale Answer, not DNSSEC
        assert!(matches!(
            interpret(&servfail_with(Some(stale))),
            Err(DnsError::Failed(_))
        ));
        assert!(matches!(
            interpret(&servfail_with(None)),
            Err(DnsError::Failed(_))
        ));
    }

    #[test]
    fn ad_bit_is_the_status() {
        let mut msg = Message::new();
        msg.set_message_type(MessageType::Response);
        msg.set_authentic_data(true);
        let (answer, ttl) = interpret(&msg).unwrap();
        assert_eq!(answer.security(), Security::Secure);
        assert_eq!(ttl, 0);
        msg.set_authentic_data(false);
        assert_eq!(interpret(&msg).unwrap().0.security(), Security::Insecure);
    }
}
