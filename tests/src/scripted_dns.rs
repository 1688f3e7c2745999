//! A small real DNS server (UDP on loopback) whose A answers follow a script: the first
//! query for a name gets the first address, later queries the next one, TTL 0 so no cache
//! keeps an answer. This is what a DNS-rebinding attacker runs; the SSRF tests point the hub's
//! provider resolver (`storage.nameserver`) at it. Other names answer NXDOMAIN, other types
//! an empty answer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// A running scripted DNS server; stops when dropped.
pub struct ScriptedDns {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedDns {
    /// Serves `script`: for each name (lowercase, no trailing dot), the A answers in the order
    /// they are given out; the last one repeats.
    pub async fn start(script: &[(&str, &[Ipv4Addr])]) -> anyhow::Result<ScriptedDns> {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = sock.local_addr()?;
        let script: HashMap<String, Vec<Ipv4Addr>> = script
            .iter()
            .map(|(n, ips)| (n.to_ascii_lowercase(), ips.to_vec()))
            .collect();
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let counts = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(reply) = answer(&buf[..n], &script, &counts) {
                    let _ = sock.send_to(&reply, from).await;
                }
            }
        });
        Ok(ScriptedDns {
            addr,
            queries,
            task,
        })
    }

    /// Where the server listens (UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many A queries for `name` it has answered.
    pub fn a_queries(&self, name: &str) -> usize {
        self.queries
            .lock()
            .map(|q| q.get(&name.to_ascii_lowercase()).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for ScriptedDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one query datagram, or `None` for garbage.
fn answer(
    q: &[u8],
    script: &HashMap<String, Vec<Ipv4Addr>>,
    counts: &Mutex<HashMap<String, usize>>,
) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let name = labels.join(".");
    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&q[..2]);
    let known = script.get(&name);
    let rcode = if known.is_some() { 0 } else { 3 };
    // QR, opcode 0, AA, RD copied, RA; rcode.
    reply.push(0x84 | (q[2] & 0x01));
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&1u16.to_be_bytes());
    let ip = match (known, qtype) {
        (Some(ips), 1) if !ips.is_empty() => {
            let mut c = counts.lock().ok()?;
            let n = c.entry(name.clone()).or_insert(0);
            let ip = ips[(*n).min(ips.len() - 1)];
            *n += 1;
            Some(ip)
        }
        _ => None,
    };
    reply.extend_from_slice(&u16::from(ip.is_some()).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if let Some(ip) = ip {
        // Name pointer to the question, A, IN, TTL 0, 4 bytes.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}
