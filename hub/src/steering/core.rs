//! The steering decision, sans IO: given a client's address, the RTTs hubs measured to its
//! network, the hubs' health and the static fallbacks, rank the hubs and choose one. A pure
//! function of its inputs, so every rule is a table-driven test.
//!
//! Rules, in order:
//! 1. Only healthy hubs are candidates; if none is healthy, all are (fail open).
//! 2. Candidates with a measured RTT to the client's prefix come first, lowest RTT first.
//! 3. Then the region the static CIDR map gives for the client, then the default region.
//! 4. Hysteresis: a prefix stays on the hub it was last given unless the best candidate is at
//!    least `pct` % and `min_gain` better by measured RTT (or the old hub is no candidate).

use ipnet::IpNet;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Prefix length clients are grouped by (IPv4).
pub const V4_PREFIX: u8 = 24;
/// Prefix length clients are grouped by (IPv6).
pub const V6_PREFIX: u8 = 56;

/// A client network: an address masked to [`V4_PREFIX`] / [`V6_PREFIX`] (or shorter, when an
/// EDNS Client Subnet says less).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// The prefix `ip` belongs to, at most `source_len` bits long (an ECS source prefix).
    pub fn of(ip: IpAddr, source_len: Option<u8>) -> Prefix {
        let max = match ip {
            IpAddr::V4(_) => V4_PREFIX,
            IpAddr::V6(_) => V6_PREFIX,
        };
        let len = source_len.map_or(max, |l| l.min(max));
        let addr = match ip {
            IpAddr::V4(a) => {
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len))
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Prefix { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Parses `a.b.c.d/len` or `x::/len`.
    pub fn parse(s: &str) -> Option<Prefix> {
        let net: IpNet = s.parse().ok()?;
        let p = Prefix::of(net.addr(), Some(net.prefix_len()));
        (p.len == net.prefix_len()).then_some(p)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A hub as the steering sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubEntry {
    pub region: String,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    pub healthy: bool,
}

/// When to move a prefix to another hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// The new hub must be at least this many percent faster...
    pub pct: u32,
    /// ...and at least this much faster.
    pub min_gain: Duration,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self {
            pct: 20,
            min_gain: Duration::from_millis(10),
        }
    }
}

/// Everything a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub hubs: &'a [HubEntry],
    /// Measured RTT (µs) from each hub (by region) to the client's prefix.
    pub rtt_us: Option<&'a HashMap<String, u64>>,
    /// Static CIDR → region map, most specific match wins.
    pub cidr_regions: &'a [(IpNet, String)],
    pub default_region: &'a str,
    /// The region this prefix was last steered to.
    pub sticky: Option<&'a str>,
    pub hysteresis: Hysteresis,
}

/// One ranked hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub region: String,
    pub healthy: bool,
    /// Measured RTT to the client's prefix, µs.
    pub rtt_us: Option<u64>,
    /// Why it ranks where it does: `rtt`, `static_map`, `default_region` or `other`.
    pub basis: &'static str,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Candidates, best first.
    pub ranked: Vec<Candidate>,
    /// The region answered (`None` only when there are no hubs at all).
    pub chosen: Option<String>,
    /// Human-readable reason for the choice.
    pub reason: String,
    /// No hub was healthy, so all were candidates.
    pub fail_open: bool,
}

/// The region the static map gives `ip` (longest prefix wins).
pub fn static_region(ip: IpAddr, map: &[(IpNet, String)]) -> Option<&str> {
    map.iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, r)| r.as_str())
}

/// Ranks the hubs for a client at `client` and chooses one.
pub fn decide(client: IpAddr, inputs: &Inputs<'_>) -> Decision {
    let any_healthy = inputs.hubs.iter().any(|h| h.healthy);
    let fail_open = !any_healthy && !inputs.hubs.is_empty();
    let mapped = static_region(client, inputs.cidr_regions);
    let rtt_of = |region: &str| inputs.rtt_us.and_then(|m| m.get(region).copied());
    let mut ranked: Vec<(u8, u64, Candidate)> = inputs
        .hubs
        .iter()
        .filter(|h| h.healthy || fail_open)
        .map(|h| {
            let rtt = rtt_of(&h.region);
            let (tier, basis) = match rtt {
                Some(_) => (0, "rtt"),
                None if mapped == Some(h.region.as_str()) => (1, "static_map"),
                None if h.region == inputs.default_region => (2, "default_region"),
                None => (3, "other"),
            };
            (
                tier,
                rtt.unwrap_or(u64::MAX),
                Candidate {
                    region: h.region.clone(),
                    healthy: h.healthy,
                    rtt_us: rtt,
                    basis,
                },
            )
        })
        .collect();
    ranked.sort_by(|a, b| (a.0, a.1, &a.2.region).cmp(&(b.0, b.1, &b.2.region)));
    let ranked: Vec<Candidate> = ranked.into_iter().map(|(_, _, c)| c).collect();
    let Some(best) = ranked.first() else {
        return Decision {
            ranked,
            chosen: None,
            reason: "no hubs are known".into(),
            fail_open,
        };
    };
    let mut chosen = best.region.clone();
    let mut reason = match best.basis {
        "rtt" => format!(
            "lowest measured RTT ({:.1} ms)",
            best.rtt_us.unwrap_or(0) as f64 / 1000.0
        ),
        "static_map" => "no RTT samples; the static CIDR map names this region".into(),
        "default_region" => "no RTT samples or static mapping; the default region".into(),
        _ => "no RTT samples, static mapping or default region; first healthy hub".into(),
    };
    if let Some(old) = inputs.sticky.filter(|old| *old != best.region) {
        if let Some(stay) = ranked.iter().find(|c| c.region == old) {
            let clearly_better = match (stay.rtt_us, best.rtt_us) {
                (Some(o), Some(n)) => {
                    let gain = o.saturating_sub(n);
                    gain >= inputs.hysteresis.min_gain.as_micros() as u64
                        && gain.saturating_mul(100)
                            >= o.saturating_mul(u64::from(inputs.hysteresis.pct))
                }
                // A measured hub beats an unmeasured one; otherwise keep the current one.
                (None, Some(_)) => true,
                _ => false,
            };
            if !clearly_better {
                chosen = stay.region.clone();
                reason = format!(
                    "kept on {old}: {} is not at least {} % and {} ms better",
                    best.region,
                    inputs.hysteresis.pct,
                    inputs.hysteresis.min_gain.as_millis()
                );
            }
        }
    }
    if fail_open {
        reason = format!("no hub is healthy, so every hub is a candidate (fail open); {reason}");
    }
    Decision {
        ranked,
        chosen: Some(chosen),
        reason,
        fail_open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(region: &str, healthy: bool) -> HubEntry {
        HubEntry {
            region: region.into(),
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 1)],
            ipv6: vec![],
            healthy,
        }
    }

    fn ms(v: u64) -> u64 {
        v * 1000
    }

    #[test]
    fn prefixes_group_clients() {
        let cases = [
            ("192.0.2.77", None, "192.0.2.0/24"),
            ("192.0.2.77", Some(16), "192.0.0.0/16"),
            ("192.0.2.77", Some(32), "192.0.2.0/24"),
            ("192.0.2.77", Some(0), "0.0.0.0/0"),
            ("2001:db8:aa:bbcc::1", None, "2001:db8:aa:bb00::/56"),
            ("2001:db8:aa:bbcc::1", Some(48), "2001:db8:aa::/48"),
        ];
        for (ip, src, want) in cases {
            let p = Prefix::of(ip.parse().expect("ip"), src);
            assert_eq!(p.to_string(), want, "{ip} {src:?}");
        }
        assert_eq!(
            Prefix::parse("10.1.2.0/24"),
            Some(Prefix::of("10.1.2.9".parse().expect("ip"), None))
        );
        assert_eq!(Prefix::parse("nonsense"), None);
    }

    #[test]
    fn static_map_prefers_the_most_specific_network() {
        let map: Vec<(IpNet, String)> = vec![
            ("10.0.0.0/8".parse().expect("net"), "us-east".into()),
            ("10.2.0.0/16".parse().expect("net"), "eu-west".into()),
        ];
        let at = |s: &str| static_region(s.parse().expect("ip"), &map);
        assert_eq!(at("10.2.3.4"), Some("eu-west"));
        assert_eq!(at("10.3.3.4"), Some("us-east"));
        assert_eq!(at("192.0.2.1"), None);
    }

    struct Case {
        name: &'static str,
        hubs: Vec<HubEntry>,
        rtt: Vec<(&'static str, u64)>,
        sticky: Option<&'static str>,
        client: &'static str,
        chosen: &'static str,
        fail_open: bool,
    }

    #[test]
    fn decisions() {
        let three = || {
            vec![
                hub("us-east", true),
                hub("eu-west", true),
                hub("ap-south", true),
            ]
        };
        let cases = vec![
            Case {
                name: "lowest RTT wins",
                hubs: three(),
                rtt: vec![
                    ("us-east", ms(80)),
                    ("eu-west", ms(10)),
                    ("ap-south", ms(150)),
                ],
                sticky: None,
                client: "198.51.100.7",
                chosen: "eu-west",
                fail_open: false,
            },
            Case {
                name: "an unhealthy hub is skipped even when nearest",
                hubs: vec![
                    hub("us-east", true),
                    hub("eu-west", false),
                    hub("ap-south", true),
                ],
                rtt: vec![
                    ("us-east", ms(80)),
                    ("eu-west", ms(10)),
                    ("ap-south", ms(150)),
                ],
                sticky: None,
                client: "198.51.100.7",
                chosen: "us-east",
                fail_open: false,
            },
            Case {
                name: "no RTT: the static map",
                hubs: three(),
                rtt: vec![],
                sticky: None,
                client: "10.2.9.9",
                chosen: "ap-south",
                fail_open: false,
            },
            Case {
                name: "no RTT, no mapping: the default region",
                hubs: three(),
                rtt: vec![],
                sticky: None,
                client: "203.0.113.5",
                chosen: "us-east",
                fail_open: false,
            },
            Case {
                name: "a measured hub beats the static map",
                hubs: three(),
                rtt: vec![("eu-west", ms(40))],
                sticky: None,
                client: "10.2.9.9",
                chosen: "eu-west",
                fail_open: false,
            },
            Case {
                name: "hysteresis: 15 % better is not enough",
                hubs: three(),
                rtt: vec![("us-east", ms(100)), ("eu-west", ms(85))],
                sticky: Some("us-east"),
                client: "198.51.100.7",
                chosen: "us-east",
                fail_open: false,
            },
            Case {
                name: "hysteresis: 25 % but only 5 ms better is not enough",
                hubs: three(),
                rtt: vec![("us-east", ms(20)), ("eu-west", ms(15))],
                sticky: Some("us-east"),
                client: "198.51.100.7",
                chosen: "us-east",
                fail_open: false,
            },
            Case {
                name: "hysteresis: 30 % and 30 ms better moves",
                hubs: three(),
                rtt: vec![("us-east", ms(100)), ("eu-west", ms(70))],
                sticky: Some("us-east"),
                client: "198.51.100.7",
                chosen: "eu-west",
                fail_open: false,
            },
            Case {
                name: "hysteresis never keeps a prefix on an unhealthy hub",
                hubs: vec![
                    hub("us-east", false),
                    hub("eu-west", true),
                    hub("ap-south", true),
                ],
                rtt: vec![("us-east", ms(10)), ("eu-west", ms(12))],
                sticky: Some("us-east"),
                client: "198.51.100.7",
                chosen: "eu-west",
                fail_open: false,
            },
            Case {
                name: "all down: fail open, nearest of all",
                hubs: vec![
                    hub("us-east", false),
                    hub("eu-west", false),
                    hub("ap-south", false),
                ],
                rtt: vec![("us-east", ms(80)), ("ap-south", ms(30))],
                sticky: None,
                client: "198.51.100.7",
                chosen: "ap-south",
                fail_open: true,
            },
        ];
        let map: Vec<(IpNet, String)> =
            vec![("10.2.0.0/16".parse().expect("net"), "ap-south".into())];
        for c in cases {
            let rtt: HashMap<String, u64> =
                c.rtt.iter().map(|(r, v)| ((*r).to_owned(), *v)).collect();
            let d = decide(
                c.client.parse().expect("ip"),
                &Inputs {
                    hubs: &c.hubs,
                    rtt_us: Some(&rtt),
                    cidr_regions: &map,
                    default_region: "us-east",
                    sticky: c.sticky,
                    hysteresis: Hysteresis::default(),
                },
            );
            assert_eq!(d.chosen.as_deref(), Some(c.chosen), "{}: {d:?}", c.name);
            assert_eq!(d.fail_open, c.fail_open, "{}: {d:?}", c.name);
            assert!(!d.reason.is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn no_hubs_no_answer() {
        let d = decide(
            "192.0.2.1".parse().expect("ip"),
            &Inputs {
                hubs: &[],
                rtt_us: None,
                cidr_regions: &[],
                default_region: "x",
                sticky: None,
                hysteresis: Hysteresis::default(),
            },
        );
        assert_eq!(d.chosen, None);
    }
}
