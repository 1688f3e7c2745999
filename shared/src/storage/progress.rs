//! Progress of one copy, sans IO: what `bytes_done` a transfer shows, from the engine's
//! [`CopyEvent`]s.
//!
//! A part that fails mid-way is retried from its start, so the bytes its failed attempt sent
//! are sent again: adding up every [`CopyEvent::Bytes`] counts them twice and can pass the
//! object's size. [`Progress`] counts the verified parts plus, for each part in flight, only
//! its current attempt; the result is clamped to the total and never goes back (a retry makes
//! the true figure dip; the shown one waits until it is passed again). Hubs and spokes both
//! run it: the spoke on its run, the hub on its own runs.

use super::transfer::CopyEvent;
use std::collections::BTreeMap;

/// The progress of one run of a copy.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The object's size, when known: nothing above it is shown.
    total: Option<u64>,
    /// Bytes of verified parts (those durable before this run included).
    verified: u64,
    /// Per part in flight, the bytes its current attempt sent.
    in_flight: BTreeMap<u32, u64>,
    /// Bytes of a stream copy (no parts; a failed stream copy ends the run).
    stream: u64,
    /// Every byte sent, failed attempts included (the wire rate).
    sent: u64,
    /// The highest figure shown so far.
    shown: u64,
}

impl Progress {
    /// A run of a copy of `total` bytes (`None`: unknown) that starts with `verified` bytes of
    /// parts already durable.
    pub fn new(total: Option<u64>, verified: u64) -> Self {
        let mut p = Self {
            total,
            verified,
            ..Self::default()
        };
        p.shown = p.current();
        p
    }

    /// Folds one engine event in; returns [`Progress::bytes_done`].
    pub fn observe(&mut self, ev: &CopyEvent) -> u64 {
        match ev {
            CopyEvent::Bytes { part, len } => {
                self.sent = self.sent.saturating_add(*len);
                match part {
                    Some(i) => {
                        let n = self.in_flight.entry(*i).or_insert(0);
                        *n = n.saturating_add(*len);
                    }
                    None => self.stream = self.stream.saturating_add(*len),
                }
            }
            CopyEvent::PartDone(p) => {
                self.in_flight.remove(&p.index);
                self.verified = self.verified.saturating_add(p.len);
            }
            CopyEvent::PartRetry { index, .. } => {
                self.in_flight.remove(index);
            }
        }
        self.shown = self.shown.max(self.current());
        self.shown
    }

    /// Bytes done: verified parts plus the current attempts of the parts in flight (plus a
    /// stream copy's bytes), at most the total, and never less than shown before.
    pub fn bytes_done(&self) -> u64 {
        self.shown
    }

    /// Every byte sent, the failed attempts' included (for a rate on the wire).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn current(&self) -> u64 {
        let attempts = self
            .in_flight
            .values()
            .fold(0u64, |a, n| a.saturating_add(*n));
        self.clamp(
            self.verified
                .saturating_add(attempts)
                .saturating_add(self.stream),
        )
    }

    fn clamp(&self, n: u64) -> u64 {
        self.total.map_or(n, |t| n.min(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::transfer::PartDone;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn bytes(part: u32, len: u64) -> CopyEvent {
        CopyEvent::Bytes {
            part: Some(part),
            len,
        }
    }

    fn done(index: u32, len: u64) -> CopyEvent {
        CopyEvent::PartDone(PartDone {
            index,
            len,
            sha256: String::new(),
            etag: String::new(),
        })
    }

    fn retry(index: u32) -> CopyEvent {
        CopyEvent::PartRetry {
            index,
            error: "cut".into(),
        }
    }

    #[test]
    fn a_retried_part_counts_once() {
        // 24 MiB in three parts of 8; part 1 fails after 6 MiB and is sent again.
        let mut p = Progress::new(Some(24 * MIB), 0);
        for _ in 0..8 {
            p.observe(&bytes(0, MIB));
        }
        assert_eq!(p.observe(&done(0, 8 * MIB)), 8 * MIB);
        for _ in 0..6 {
            p.observe(&bytes(1, MIB));
        }
        assert_eq!(p.bytes_done(), 14 * MIB);
        // The retry: the true figure falls back to 8 MiB; the shown one stays.
        assert_eq!(p.observe(&retry(1)), 14 * MIB);
        for i in 1..=6 {
            // Not counted twice: the new attempt passes the old one only after 6 MiB.
            assert_eq!(p.observe(&bytes(1, MIB)), 14 * MIB, "after {i} MiB");
        }
        assert_eq!(p.observe(&bytes(1, MIB)), 15 * MIB);
        assert_eq!(p.observe(&bytes(1, MIB)), 16 * MIB);
        assert_eq!(p.observe(&done(1, 8 * MIB)), 16 * MIB);
        for i in 1..=8 {
            assert_eq!(p.observe(&bytes(2, MIB)), (16 + i) * MIB);
        }
        assert_eq!(p.observe(&done(2, 8 * MIB)), 24 * MIB);
        // 6 MiB went twice over the wire.
        assert_eq!(p.sent(), 30 * MIB);
        // The old arithmetic (every byte sent) would have shown 30 of 24 MiB.
    }

    #[test]
    fn concurrent_parts_and_durable_parts_of_earlier_runs() {
        // A resumed run: 8 MiB durable before it.
        let mut p = Progress::new(Some(32 * MIB), 8 * MIB);
        assert_eq!(p.bytes_done(), 8 * MIB);
        p.observe(&bytes(1, 3 * MIB));
        assert_eq!(p.observe(&bytes(2, 2 * MIB)), 13 * MIB);
        // Part 2 fails; part 1 goes on: nothing shows until the truth passes 13 MiB again.
        assert_eq!(p.observe(&retry(2)), 13 * MIB);
        assert_eq!(p.observe(&bytes(1, MIB)), 13 * MIB);
        assert_eq!(p.observe(&bytes(1, MIB)), 13 * MIB);
        assert_eq!(p.observe(&bytes(2, MIB)), 14 * MIB);
        // Durable parts above the total (never planned so) are clamped.
        assert_eq!(Progress::new(Some(MIB), 5 * MIB).bytes_done(), MIB);
    }

    #[test]
    fn stream_copies_and_unknown_totals() {
        let mut p = Progress::new(None, 0);
        for _ in 0..4 {
            p.observe(&CopyEvent::Bytes {
                part: None,
                len: MIB,
            });
        }
        assert_eq!(p.bytes_done(), 4 * MIB);
        let mut q = Progress::new(Some(MIB), 0);
        q.observe(&CopyEvent::Bytes {
            part: None,
            len: 2 * MIB,
        });
        assert_eq!(q.bytes_done(), MIB);
    }

    proptest! {
        /// Whatever the interleaving of parts, attempts and failures, the figure is the
        /// highest "verified parts plus current attempts" so far, clamped to the total: never
        /// above the total, never backwards, a failed attempt's bytes never counted on top of
        /// its retry's, and exactly the total once every part is verified.
        #[test]
        fn bounded_monotone_and_exact(
            steps in proptest::collection::vec((0u32..4, 0u64..3 * MIB, 0u8..10), 1..200),
        ) {
            const PART: u64 = 4 * MIB;
            let total = 4 * PART;
            let mut p = Progress::new(Some(total), 0);
            // The model: per part, bytes of the current attempt; verified parts.
            let mut attempt = [0u64; 4];
            let mut verified = [false; 4];
            let mut last = 0;
            let mut peak = 0;
            for (part, len, what) in steps {
                let i = part as usize;
                if verified[i] {
                    continue;
                }
                let ev = match what {
                    0 => {
                        attempt[i] = 0;
                        retry(part)
                    }
                    1 if attempt[i] == PART => {
                        verified[i] = true;
                        attempt[i] = 0;
                        done(part, PART)
                    }
                    _ => {
                        let len = len.min(PART - attempt[i]);
                        attempt[i] += len;
                        bytes(part, len)
                    }
                };
                let shown = p.observe(&ev);
                prop_assert!(shown <= total);
                prop_assert!(shown >= last, "went back from {last} to {shown}");
                let truth: u64 = (0..4)
                    .map(|j| if verified[j] { PART } else { attempt[j] })
                    .sum();
                peak = peak.max(truth);
                prop_assert_eq!(shown, peak.min(total));
                last = shown;
            }
            for part in 0..4u32 {
                let i = part as usize;
                if !verified[i] {
                    p.observe(&bytes(part, PART - attempt[i]));
                    p.observe(&done(part, PART));
                }
            }
            prop_assert_eq!(p.bytes_done(), total);
        }
    }
}
