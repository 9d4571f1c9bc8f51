//! The sidecar's DNS server (transparent proxying): install-redirect sends the
//! workload's DNS (UDP and TCP port 53) here. A mesh name, `<service>.<suffix>` or
//! `<service>.<zone>.<suffix>` (suffix `mesh` by default), is answered with the
//! outbound's virtual IP; every other query goes to the host's resolvers byte for byte,
//! and their answer comes back as they sent it (records and TTLs intact).
//!
//! [`reply`] decides from the query alone (no sockets; unit-tested); [`serve`] runs the
//! UDP and TCP listeners with limits: queries forwarded at once, TCP connections and
//! their idle time, and the time an upstream may take.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use causeway_api::proxy_config::ProxyConfig;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::proxy::Proxy;

/// The TTL of a mesh name's answer: virtual IPs never move, so a client may keep it; a
/// minute bounds how long a removed service still resolves.
const MESH_TTL: u32 = 60;
/// How long an upstream resolver may take to answer, per resolver tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries forwarded at once; past it, SERVFAIL (the client retries).
const MAX_FORWARDS: usize = 512;
/// TCP connections held at once, and how long one may sit idle.
const MAX_TCP: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest UDP message taken (EDNS clients offer up to 4096).
const MAX_UDP: usize = 4096;
/// How long the host's resolvers, once read, are used before /etc/resolv.conf is read
/// again (it changes with DHCP): not a file read per query.
const RESOLV_CONF_TTL: Duration = Duration::from_secs(10);

/// The mesh names this proxy answers, from its config.
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// The config they came from (its version), to rebuild on change only.
    version: String,
    /// `suffix`, lowercase, without dots around it.
    suffix: String,
    /// Fully qualified names, lowercase, without the final dot.
    by_name: HashMap<String, Ipv4Addr>,
}

impl Names {
    pub(crate) fn from_config(cfg: &ProxyConfig) -> Names {
        let suffix = cfg
            .transparent
            .as_ref()
            .map(|t| t.dns_suffix.trim_matches('.').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "mesh".into());
        let mut by_name = HashMap::new();
        // A service's own name wins over a zone's of another service that spells the
        // same (service `a.b` and service `a` in zone `b`): zones' names first.
        let mut vips: Vec<_> = cfg.outbounds.iter().filter(|o| o.vip.is_some()).collect();
        vips.sort_by_key(|o| o.zone.is_none());
        for ob in vips {
            let name = match &ob.zone {
                Some(zone) => format!("{}.{zone}.{suffix}", ob.service),
                None => format!("{}.{suffix}", ob.service),
            };
            by_name.insert(name.to_ascii_lowercase(), ob.vip.expect("filtered"));
        }
        Names {
            version: cfg.version.clone(),
            suffix,
            by_name,
        }
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Send this answer.
    Answer(Vec<u8>),
    /// Ask the host's resolvers, passing the query as it came.
    Forward,
    /// Not a DNS message: no answer.
    Drop,
}

/// What to do with `query` (a DNS message's bytes) given the mesh's `names`.
pub(crate) fn reply(query: &[u8], names: &Names) -> Reply {
    let Ok(msg) = Message::from_vec(query) else {
        // The header alone says who asked: tell them it did not parse.
        return match query.get(..2) {
            Some(id) => {
                let id = u16::from_be_bytes([id[0], id[1]]);
                encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr))
            }
            None => Reply::Drop,
        };
    };
    if msg.message_type() != MessageType::Query
        || msg.op_code() != OpCode::Query
        || msg.queries().len() != 1
    {
        return Reply::Forward;
    }
    let q = &msg.queries()[0];
    let name = q.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let in_mesh = name == names.suffix
        || name
            .strip_suffix(names.suffix.as_str())
            .is_some_and(|rest| rest.ends_with('.'));
    if !in_mesh {
        return Reply::Forward;
    }
    let mut out = Message::new();
    out.set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    match names.by_name.get(name) {
        // An address for A; for AAAA and the rest the name exists with no such record,
        // so a client asking both takes the IPv4 one.
        Some(ip) if q.query_type() == RecordType::A => {
            out.add_answer(Record::from_rdata(
                q.name().clone(),
                MESH_TTL,
                RData::A(A(*ip)),
            ));
        }
        Some(_) => {}
        None => {
            out.set_response_code(ResponseCode::NXDomain);
        }
    }
    encode(out)
}

fn encode(msg: Message) -> Reply {
    msg.to_vec().map_or(Reply::Drop, Reply::Answer)
}

/// A SERVFAIL for `query` (the forward failed), when its id can be read.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut out = Message::error_msg(msg.id(), msg.op_code(), ResponseCode::ServFail);
    out.add_queries(msg.queries().iter().cloned());
    out.to_vec().ok()
}

/// The nameservers of a resolv.conf, on port 53, in order.
pub(crate) fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // `fe80::1%eth0`: the zone is for the kernel; drop it rather than fail.
            let ip = words.next()?.split('%').next()?;
            Some(SocketAddr::new(ip.parse().ok()?, 53))
        })
        .collect()
}

/// The resolvers queries go to: `--dns-upstream`, else the host's.
fn upstreams(proxy: &Proxy) -> Vec<SocketAddr> {
    match proxy.dns_upstreams.get() {
        Some(given) if !given.is_empty() => given.clone(),
        _ => nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
    }
}

/// The current names, rebuilt when the config changed.
fn current_names(proxy: &Proxy, names: &mut Arc<Names>) -> Arc<Names> {
    if let Some(cfg) = proxy.current()
        && cfg.version != names.version
    {
        *names = Arc::new(Names::from_config(&cfg));
    }
    names.clone()
}

/// Serves DNS on `addr` (UDP and TCP) until aborted.
pub(crate) async fn serve(proxy: Arc<Proxy>, addr: SocketAddr) {
    let (udp, tcp) = match (UdpSocket::bind(addr).await, TcpListener::bind(addr).await) {
        (Ok(u), Ok(t)) => (Arc::new(u), t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(%addr, error = %e, "cannot serve DNS; will retry");
            return;
        }
    };
    let mut resolvers = (Arc::new(upstreams(&proxy)), std::time::Instant::now());
    tracing::info!(%addr, upstreams = ?resolvers.0, "serving DNS");
    let forwards = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS));
    let tcp_slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
    let mut names = Arc::new(Names::default());
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                let Ok((n, client)) = r else { continue };
                if resolvers.1.elapsed() > RESOLV_CONF_TTL {
                    resolvers = (Arc::new(upstreams(&proxy)), std::time::Instant::now());
                }
                let query = buf[..n].to_vec();
                match reply(&query, &current_names(&proxy, &mut names)) {
                    Reply::Answer(a) => {
                        proxy.metrics.dns_answered("mesh");
                        let _ = udp.send_to(&a, client).await;
                    }
                    Reply::Drop => proxy.metrics.dns_answered("dropped"),
                    Reply::Forward => {
                        let Ok(permit) = forwards.clone().try_acquire_owned() else {
                            proxy.metrics.dns_answered("servfail");
                            if let Some(a) = servfail(&query) {
                                let _ = udp.send_to(&a, client).await;
                            }
                            continue;
                        };
                        let (p, udp, ups) = (proxy.clone(), udp.clone(), resolvers.0.clone());
                        tokio::spawn(async move {
                            let _permit = permit;
                            let answer = forward_udp(&ups, &query).await;
                            p.metrics.dns_answered(if answer.is_some() { "upstream" } else { "servfail" });
                            if let Some(a) = answer.or_else(|| servfail(&query)) {
                                let _ = udp.send_to(&a, client).await;
                            }
                        });
                    }
                }
            }
            r = tcp.accept() => {
                let Ok((conn, _)) = r else { continue };
                let Ok(slot) = tcp_slots.clone().try_acquire_owned() else { continue };
                let (p, names) = (proxy.clone(), current_names(&proxy, &mut names));
                let ups = resolvers.0.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = serve_tcp(&p, conn, names, &ups).await;
                });
            }
        }
    }
}

/// Asks each upstream in turn over UDP; the first answer to this query's id.
async fn forward_udp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_UDP];
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                // A stray datagram with another id is not this answer.
                if buf.get(..2) == Some(id) {
                    return Some(buf[..n].to_vec());
                }
            }
        })
        .await;
        if let Ok(Some(a)) = answer {
            return Some(a);
        }
    }
    None
}

/// One DNS-over-TCP connection: length-prefixed queries until the client closes or
/// stays idle for [`TCP_IDLE`].
async fn serve_tcp(
    proxy: &Proxy,
    mut conn: TcpStream,
    names: Arc<Names>,
    upstreams: &[SocketAddr],
) -> std::io::Result<()> {
    loop {
        let Ok(query) = tokio::time::timeout(TCP_IDLE, read_framed(&mut conn)).await else {
            return Ok(());
        };
        let query = query?;
        let answer = match reply(&query, &names) {
            Reply::Answer(a) => {
                proxy.metrics.dns_answered("mesh");
                a
            }
            Reply::Drop => return Ok(()),
            Reply::Forward => match forward_tcp(upstreams, &query).await {
                Some(a) => {
                    proxy.metrics.dns_answered("upstream");
                    a
                }
                None => {
                    proxy.metrics.dns_answered("servfail");
                    servfail(&query).unwrap_or_default()
                }
            },
        };
        write_framed(&mut conn, &answer).await?;
    }
}

async fn read_framed(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = conn.read_u16().await?;
    let mut msg = vec![0u8; usize::from(len)];
    conn.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_framed(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    conn.write_all(&out).await
}

/// Asks each upstream in turn over TCP.
async fn forward_tcp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let asked = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            let mut conn = TcpStream::connect(up).await?;
            write_framed(&mut conn, query).await?;
            read_framed(&mut conn).await
        })
        .await;
        if let Ok(Ok(a)) = asked {
            return Some(a);
        }
    }
    None
}

#[cfg(test)]
mod tests;
