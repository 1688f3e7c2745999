//! Cryptokey routing, sans-IO: which peer an outbound packet goes to (longest prefix match
//! over every peer's AllowedIPs) and whether a decrypted packet's source is one its peer may
//! use. Also the few IP header reads the packet path needs.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Prefixes mapped to a value, looked up by longest prefix.
///
/// A gateway has a handful of peers with a few prefixes each, so entries live in one vector
/// sorted by prefix length (longest first) and the first match wins: a linear scan over a
/// short, cache-resident vector beats a trie at this size.
#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    v4: Vec<(u32, u32, u8, T)>,
    v6: Vec<(u128, u128, u8, T)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl<T: Clone> PrefixTable<T> {
    /// Adds `net -> value`; a prefix already present keeps its first value.
    pub fn insert(&mut self, net: IpNet, value: T) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let m = mask4(len);
                let addr = u32::from(n.addr()) & m;
                if self.v4.iter().any(|e| e.0 == addr && e.2 == len) {
                    return;
                }
                self.v4.push((addr, m, len, value));
                self.v4.sort_by_key(|e| std::cmp::Reverse(e.2));
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let m = mask6(len);
                let addr = u128::from(n.addr()) & m;
                if self.v6.iter().any(|e| e.0 == addr && e.2 == len) {
                    return;
                }
                self.v6.push((addr, m, len, value));
                self.v6.sort_by_key(|e| std::cmp::Reverse(e.2));
            }
        }
    }

    /// The value of the longest prefix containing `ip`.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    #[inline]
    pub fn lookup_v4(&self, ip: Ipv4Addr) -> Option<&T> {
        let ip = u32::from(ip);
        self.v4.iter().find(|e| ip & e.1 == e.0).map(|e| &e.3)
    }

    #[inline]
    pub fn lookup_v6(&self, ip: Ipv6Addr) -> Option<&T> {
        let ip = u128::from(ip);
        self.v6.iter().find(|e| ip & e.1 == e.0).map(|e| &e.3)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// A peer's AllowedIPs as a membership test.
#[derive(Debug, Clone, Default)]
pub struct AllowedIps(PrefixTable<()>);

impl AllowedIps {
    pub fn new(nets: &[IpNet]) -> AllowedIps {
        let mut t = PrefixTable::default();
        for n in nets {
            t.insert(*n, ());
        }
        AllowedIps(t)
    }

    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.lookup(ip).is_some()
    }
}

/// The destination address of an IPv4 or IPv6 packet, if its header is complete.
#[inline]
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The source address of an IPv4 or IPv6 packet, if its header is complete.
#[inline]
pub fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[12..16].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[8..24].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::default();
        t.insert(net("10.0.0.0/8"), "wide");
        t.insert(net("10.20.0.0/16"), "region-b");
        t.insert(net("10.20.5.0/24"), "subnet");
        t.insert(net("0.0.0.0/0"), "default");
        t.insert(net("fd00::/8"), "v6");
        let at = |s: &str| t.lookup(s.parse().expect("ip")).copied();
        assert_eq!(at("10.20.5.9"), Some("subnet"));
        assert_eq!(at("10.20.6.9"), Some("region-b"));
        assert_eq!(at("10.30.0.1"), Some("wide"));
        assert_eq!(at("192.0.2.1"), Some("default"));
        assert_eq!(at("fd12::1"), Some("v6"));
        assert_eq!(at("2001:db8::1"), None);
    }

    #[test]
    fn allowed_ips_membership() {
        let a = AllowedIps::new(&[net("10.20.0.0/16"), net("10.255.0.2/32")]);
        assert!(a.contains("10.20.1.1".parse().expect("ip")));
        assert!(a.contains("10.255.0.2".parse().expect("ip")));
        assert!(!a.contains("10.255.0.3".parse().expect("ip")));
        assert!(!a.contains("10.10.0.1".parse().expect("ip")));
    }

    #[test]
    fn header_addresses() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 10, 0, 2]);
        v4[16..20].copy_from_slice(&[10, 20, 0, 2]);
        assert_eq!(source(&v4), Some("10.10.0.2".parse().expect("ip")));
        assert_eq!(destination(&v4), Some("10.20.0.2".parse().expect("ip")));
        assert_eq!(destination(&v4[..19]), None);
        assert_eq!(source(&[]), None);
        assert_eq!(source(&[0x60; 39]), None);
    }

    proptest! {
        /// The table agrees with a brute-force longest-prefix search.
        #[test]
        fn lookup_matches_brute_force(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..12),
            probe in any::<u32>(),
        ) {
            let mut t = PrefixTable::default();
            let mut all = Vec::new();
            for (i, (a, l)) in nets.iter().enumerate() {
                let n = IpNet::new(IpAddr::V4(Ipv4Addr::from(*a)), *l).expect("valid").trunc();
                if !all.iter().any(|(m, _): &(IpNet, usize)| *m == n) {
                    all.push((n, i));
                }
                t.insert(n, i);
            }
            let ip = IpAddr::V4(Ipv4Addr::from(probe));
            let want = all
                .iter()
                .filter(|(n, _)| n.contains(&ip))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, i)| *i);
            prop_assert_eq!(t.lookup(ip).copied(), want);
        }

        #[test]
        fn header_reads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = source(&bytes);
            let _ = destination(&bytes);
        }
    }
}
