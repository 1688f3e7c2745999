//! The SSRF guard for connections to user-supplied provider endpoints, enforced where the
//! socket is made: the resolver the providers' HTTP clients use refuses answers outside the
//! policy, every request URL whose host is an IP literal is checked before it is sent, provider
//! clients never follow redirects, and SFTP connects to the address that was checked.
//!
//! "Internal" is everything that is not globally reachable per the IANA IPv4 and IPv6
//! special-purpose address registries, plus every IPv6 form that embeds an IPv4 address
//! (mapped, compatible, NAT64, Teredo, 6to4), since those reach IPv4 hosts by other means.

use crate::resolve::Resolver;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// IPv4 ranges that are not globally reachable (IANA IPv4 special-purpose registry, plus
/// multicast and the reserved 240/4), as (network, prefix length).
const V4_NOT_GLOBAL: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link local (cloud metadata services live here)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, including 255.255.255.255 (limited broadcast)
];

/// IPv6 ranges inside global unicast (2000::/3) that are not globally reachable or that embed
/// an IPv4 address. Everything outside 2000::/3 (::/128, ::1, ::ffff:0:0/96, ::/96,
/// 64:ff9b::/96, 64:ff9b:1::/48, 100::/64, 5f00::/16, fc00::/7, fe80::/10, fec0::/10,
/// ff00::/8, ...) is refused by the 2000::/3 test itself.
const V6_NOT_GLOBAL: &[([u16; 2], u8)] = &[
    ([0x2001, 0x0000], 23), // IETF protocol assignments (Teredo 2001::/32, benchmarking, ORCHID)
    ([0x2001, 0x0db8], 32), // documentation
    ([0x2002, 0x0000], 16), // 6to4
    ([0x3fff, 0x0000], 20), // documentation
];

fn v4_in(ip: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v6_in(ip: Ipv6Addr, net: [u16; 2], len: u8) -> bool {
    let top = (u32::from(ip.segments()[0]) << 16) | u32::from(ip.segments()[1]);
    let want = (u32::from(net[0]) << 16) | u32::from(net[1]);
    let mask = u32::MAX << (32 - u32::from(len));
    top & mask == want & mask
}

/// The IPv4 address an IPv6 address embeds, for the forms that carry one: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`
/// with the address in the last 32 bits), 6to4 (`2002:AABB:CCDD::/48`) and Teredo (`2001::/32`,
/// the client address inverted in the last 32 bits).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && (s[6] != 0 || s[7] > 1))) {
        return Some(last32);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        return Some(last32);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(Ipv4Addr::from(!u32::from(last32)));
    }
    None
}

/// True when `ip` is globally reachable: not in any range the IANA special-purpose registries
/// mark as not globally reachable, not multicast, and (for IPv6) global unicast that embeds no
/// IPv4 address, or whose embedded address is itself global.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !V4_NOT_GLOBAL.iter().any(|(n, l)| v4_in(v4, *n, *l)),
        IpAddr::V6(v6) => {
            let global_unicast = v6.segments()[0] & 0xe000 == 0x2000;
            global_unicast
                && !V6_NOT_GLOBAL.iter().any(|(n, l)| v6_in(v6, *n, *l))
                && embedded_ipv4(v6).is_none_or(|v4| is_global(IpAddr::V4(v4)))
        }
    }
}

/// Where provider connections may go. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EgressPolicy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// No restriction at all (`storage.allow_private_endpoints`).
    open: bool,
    /// Non-global networks the operator allows anyway (`storage.allowed_private_endpoints`).
    allowed: Vec<IpNet>,
    resolver: Resolver,
}

impl Default for EgressPolicy {
    /// Only globally reachable addresses, resolved with the system resolver.
    fn default() -> Self {
        Self::guarded(Vec::new(), Resolver::system().clone())
    }
}

/// A connection the policy refused, or a name that could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("`{host}` resolves to {ip}, an internal address this hub does not connect to (storage.allowed_private_endpoints)")]
    Denied { host: String, ip: IpAddr },
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

impl EgressPolicy {
    /// Everything is allowed (the operator trusts every endpoint users give).
    pub fn open(resolver: Resolver) -> Self {
        Self {
            inner: Arc::new(Inner {
                open: true,
                allowed: Vec::new(),
                resolver,
            }),
        }
    }

    /// Globally reachable addresses, plus the networks in `allowed`.
    pub fn guarded(allowed: Vec<IpNet>, resolver: Resolver) -> Self {
        Self {
            inner: Arc::new(Inner {
                open: false,
                allowed,
                resolver,
            }),
        }
    }

    /// Whether a connection to `ip` is allowed. IPv4-mapped IPv6 addresses count as the IPv4
    /// address they map, so an allow-list entry covers both spellings.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.inner.open || self.inner.allowed.iter().any(|n| n.contains(&ip)) || is_global(ip)
    }

    /// The policy a hub handed its spokes, with the system resolver.
    pub fn from_settings(s: &crate::proto::EgressSettings) -> Self {
        let resolver = Resolver::system().clone();
        if s.allow_private {
            Self::open(resolver)
        } else {
            Self::guarded(s.allowed.clone(), resolver)
        }
    }

    /// Checks one address (an IP literal in a URL or endpoint).
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), EgressError> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(EgressError::Denied {
                host: host.to_owned(),
                ip,
            })
        }
    }

    /// Resolves `host` (a name or an IP literal) and refuses the whole answer if any address in
    /// it is outside the policy: a mixed answer is what a rebinding attacker would serve.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, EgressError> {
        let ips = self
            .inner
            .resolver
            .lookup_host(host)
            .await
            .map_err(|source| EgressError::Resolve {
                host: host.to_owned(),
                source,
            })?;
        for ip in &ips {
            self.check_ip(host, *ip)?;
        }
        Ok(ips)
    }

    /// Checks the host of a request URL before it is sent: IP literals are checked here (a
    /// resolver is never asked about them); names are checked by the client's resolver.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), EgressError> {
        let host = url.host_str().unwrap_or_default();
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self.check_ip(host, ip),
            Err(_) => Ok(()),
        }
    }

    /// An HTTP client for provider requests: names resolve through this policy, redirects are
    /// never followed (a provider could otherwise bounce us to an internal address), and no
    /// environment proxy is used (a proxy would resolve names where the guard cannot see).
    /// Callers check IP-literal URLs with [`EgressPolicy::check_url`].
    pub fn http_client(&self, connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
        self.http_builder(connect_timeout).build()
    }

    /// The builder behind [`EgressPolicy::http_client`], for clients that add settings of
    /// their own (a read timeout) on top of the guard.
    pub fn http_builder(&self, connect_timeout: Duration) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedDns(self.clone())))
    }
}

/// reqwest's resolver hook: answers only addresses the policy permits.
struct GuardedDns(EgressPolicy);

impl reqwest::dns::Resolve for GuardedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = policy.resolve(&host).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip literal")
    }

    #[test]
    fn special_purpose_addresses_are_not_global() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::a00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:808:808::1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(!is_global(ip(a)), "{a} must be refused");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.3.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:200::1",
            "2003::1",
        ] {
            assert!(is_global(ip(a)), "{a} must be allowed");
        }
    }

    #[test]
    fn embedded_addresses_are_found() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("v6");
        let v4 = |s: &str| Some(s.parse::<Ipv4Addr>().expect("v4"));
        assert_eq!(embedded_ipv4(v6("::ffff:10.1.2.3")), v4("10.1.2.3"));
        assert_eq!(embedded_ipv4(v6("::10.1.2.3")), v4("10.1.2.3"));
        assert_eq!(embedded_ipv4(v6("64:ff9b::10.1.2.3")), v4("10.1.2.3"));
        assert_eq!(embedded_ipv4(v6("2002:a01:203::1")), v4("10.1.2.3"));
        // Teredo: the client address is stored inverted.
        assert_eq!(
            embedded_ipv4(v6("2001:0:4136:e378:8000:63bf:f5fe:fdfc")),
            v4("10.1.2.3")
        );
        assert_eq!(embedded_ipv4(v6("::1")), None);
        assert_eq!(embedded_ipv4(v6("2606:4700::1111")), None);
    }

    #[test]
    fn the_allow_list_admits_exactly_its_networks() {
        let p = EgressPolicy::guarded(
            vec!["127.0.0.1/32".parse().expect("net")],
            Resolver::system().clone(),
        );
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!(!p.permits(ip("127.0.0.2")));
        assert!(!p.permits(ip("::1")));
        assert!(p.permits(ip("8.8.8.8")));
        assert!(EgressPolicy::open(Resolver::system().clone()).permits(ip("10.0.0.1")));
    }

    fn v4_not_global() -> impl Strategy<Value = Ipv4Addr> {
        (0..V4_NOT_GLOBAL.len(), any::<u32>()).prop_map(|(i, r)| {
            let (net, len) = V4_NOT_GLOBAL[i];
            let host_mask = if len == 0 { u32::MAX } else { u32::MAX >> len };
            Ipv4Addr::from(u32::from(Ipv4Addr::from(net)) | (r & host_mask))
        })
    }

    proptest! {
        #[test]
        fn every_address_of_a_special_range_is_refused(v4 in v4_not_global()) {
            prop_assert!(!is_global(IpAddr::V4(v4)));
            // ... and so is every IPv6 spelling that carries it.
            let o = v4.octets();
            let [a, b, c, d] = o.map(u16::from);
            for v6 in [
                v4.to_ipv6_mapped(),
                v4.to_ipv6_compatible(),
                Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, (a << 8) | b, (c << 8) | d),
                Ipv6Addr::new(0x2002, (a << 8) | b, (c << 8) | d, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0x2001, 0, 0x4136, 0xe378, 0x8000, 0x63bf,
                              !((a << 8) | b), !((c << 8) | d)),
            ] {
                prop_assert!(!is_global(IpAddr::V6(v6)), "{v6}");
            }
        }

        #[test]
        fn outside_global_unicast_nothing_is_global(s in any::<[u16; 8]>()) {
            let v6 = Ipv6Addr::from(s);
            if s[0] & 0xe000 != 0x2000 {
                prop_assert!(!is_global(IpAddr::V6(v6)));
            }
        }
    }
}
