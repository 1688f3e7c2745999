//! Response rate limiting of the steering DNS server, sans IO: a token bucket of UDP responses
//! per client network (/24, /56), with slip, as NSD and BIND do.
//!
//! UDP source addresses can be forged, so without a limit anyone can aim the server's answers
//! (larger than the queries) at a victim. Each client network may get `burst` responses at once
//! and `per_second` sustained; beyond, responses are dropped, except every `slip`-th, which is
//! sent empty with TC=1: a real client behind a flooded network then retries over TCP, which is
//! never limited (its handshake proves the address). The table of networks is bounded: when
//! full, the network tracked the longest is forgotten (it starts again with a full bucket, which
//! costs at most one burst).

use super::core::Prefix;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget: answer.
    Answer,
    /// Over the budget, and this one slips: send it empty with TC=1.
    Slip,
    /// Over the budget: send nothing.
    Drop,
}

/// The limits (`dns.rrl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sustained responses per second per network; 0: no limiting.
    pub per_second: u32,
    /// The bucket's size.
    pub burst: u32,
    /// Every `slip`-th limited response slips; 0: none does.
    pub slip: u32,
    /// Networks tracked at most.
    pub max_prefixes: usize,
}

impl From<&crate::config::RrlConfig> for Limits {
    fn from(c: &crate::config::RrlConfig) -> Self {
        Limits {
            per_second: c.responses_per_second,
            burst: c.burst,
            slip: c.slip,
            max_prefixes: c.max_prefixes,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Responses limited so far (for slip).
    limited: u64,
}

/// The buckets of all client networks.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    buckets: HashMap<Prefix, Bucket>,
    /// Networks in the order they were first seen (the eviction order).
    order: VecDeque<Prefix>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            buckets: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Networks tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes one response from the bucket of `client`'s network at `now`.
    pub fn check(&mut self, client: IpAddr, now: Instant) -> Verdict {
        let l = self.limits;
        if l.per_second == 0 {
            return Verdict::Answer;
        }
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d; it is that IPv4
        // network, not one /56 shared by all of IPv4.
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        let prefix = Prefix::of(client, None);
        let burst = f64::from(l.burst.max(1));
        if !self.buckets.contains_key(&prefix) {
            while self.buckets.len() >= l.max_prefixes.max(1) {
                match self.order.pop_front() {
                    Some(old) => {
                        self.buckets.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(prefix);
        }
        let b = self.buckets.entry(prefix).or_insert(Bucket {
            tokens: burst,
            at: now,
            limited: 0,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * f64::from(l.per_second)).min(burst);
        b.at = b.at.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Answer;
        }
        b.limited += 1;
        if l.slip > 0 && b.limited.is_multiple_of(u64::from(l.slip)) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(per_second: u32, burst: u32, slip: u32) -> Limits {
        Limits {
            per_second,
            burst,
            slip,
            max_prefixes: 1000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_burst_then_the_rate_then_nothing() {
        let mut r = RateLimiter::new(limits(10, 5, 0));
        let t0 = Instant::now();
        let got: Vec<Verdict> = (0..8).map(|_| r.check(ip("192.0.2.1"), t0)).collect();
        assert_eq!(got.iter().filter(|v| **v == Verdict::Answer).count(), 5);
        assert!(got[5..].iter().all(|v| *v == Verdict::Drop), "{got:?}");
        // 10/s: after 300 ms three more tokens.
        let t1 = t0 + Duration::from_millis(300);
        let later: Vec<Verdict> = (0..5).map(|_| r.check(ip("192.0.2.200"), t1)).collect();
        assert_eq!(
            later.iter().filter(|v| **v == Verdict::Answer).count(),
            3,
            "{later:?}"
        );
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        let after: Vec<Verdict> = (0..10).map(|_| r.check(ip("192.0.2.9"), t2)).collect();
        assert_eq!(after.iter().filter(|v| **v == Verdict::Answer).count(), 5);
    }

    #[test]
    fn every_slip_th_limited_response_slips() {
        let mut r = RateLimiter::new(limits(1, 1, 3));
        let t = Instant::now();
        assert_eq!(r.check(ip("198.51.100.1"), t), Verdict::Answer);
        let got: Vec<Verdict> = (0..9).map(|_| r.check(ip("198.51.100.1"), t)).collect();
        use Verdict::{Drop as D, Slip as S};
        assert_eq!(got, vec![D, D, S, D, D, S, D, D, S]);
        let mut all = RateLimiter::new(limits(1, 1, 1));
        all.check(ip("198.51.100.1"), t);
        assert_eq!(all.check(ip("198.51.100.1"), t), Verdict::Slip);
    }

    #[test]
    fn networks_have_their_own_buckets() {
        let mut r = RateLimiter::new(limits(1, 2, 0));
        let t = Instant::now();
        for _ in 0..2 {
            assert_eq!(r.check(ip("203.0.113.7"), t), Verdict::Answer);
        }
        // Same /24: same bucket, also as an IPv4-mapped IPv6 address.
        assert_eq!(r.check(ip("203.0.113.99"), t), Verdict::Drop);
        assert_eq!(r.check(ip("::ffff:203.0.113.5"), t), Verdict::Drop);
        // The next /24 and another /56 are untouched.
        assert_eq!(r.check(ip("203.0.114.7"), t), Verdict::Answer);
        for _ in 0..2 {
            assert_eq!(r.check(ip("2001:db8:0:100::1"), t), Verdict::Answer);
        }
        assert_eq!(r.check(ip("2001:db8:0:1ff::2"), t), Verdict::Drop);
        assert_eq!(r.check(ip("2001:db8:0:200::1"), t), Verdict::Answer);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest() {
        let mut r = RateLimiter::new(Limits {
            max_prefixes: 100,
            ..limits(1, 1, 0)
        });
        let t = Instant::now();
        for i in 0..1000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8));
            assert_eq!(r.check(IpAddr::V4(a), t), Verdict::Answer);
            assert!(r.len() <= 100);
        }
        assert_eq!(r.len(), 100);
        // The newest network is still limited; the first one was forgotten.
        assert_eq!(
            r.check(
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + (999 << 8))),
                t
            ),
            Verdict::Drop
        );
        assert_eq!(r.check(ip("10.0.0.1"), t), Verdict::Answer);
        assert_eq!(r.len(), 100);
    }

    #[test]
    fn zero_rate_is_off() {
        let mut r = RateLimiter::new(limits(0, 1, 2));
        let t = Instant::now();
        assert!((0..1000).all(|_| r.check(ip("192.0.2.1"), t) == Verdict::Answer));
        assert!(r.is_empty());
    }
}
