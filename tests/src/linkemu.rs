//! A userspace WAN link emulator (this kernel has no `sch_netem`): one TUN device per attached
//! network namespace, and one forwarding thread that carries IPv4 packets between the devices by
//! destination address, applying to every *ordered* pair of endpoints its own one-way delay, rate
//! limit (serialization at `rate_bps`), random loss and queue limit (tail drop), with counters.
//!
//! Shape of the data path:
//!
//! - **One event loop thread** (`ppoll` over every TUN descriptor and an eventfd for control) owns
//!   all queues, so the packet path takes no lock. A library thread rather than a separate
//!   process: tests reconfigure links and read counters directly, a panicking test tears it down
//!   with `Drop`, and a dead test process takes its TUN descriptors (hence the devices and their
//!   routes) with it. Tokio is not used because its timer has a 1 ms resolution; `ppoll` with a
//!   1 µs timer slack wakes within tens of microseconds of a packet's due time.
//! - **Offload.** Devices are opened with `IFF_VNET_HDR` + TSO/USO, so the kernel hands over TCP
//!   super-packets of up to 64 KiB; tun-rs splits them into MTU-sized packets (loss, rate and queue
//!   limits apply per real packet) and coalesces them again by GRO on the way out.
//! - **Per-link FIFO, no sleep per packet.** Every link is a FIFO whose due times never decrease
//!   (rate serialization is monotone and a shortened delay never reorders), so the head of each
//!   link is its next deadline and the loop sleeps until the earliest head. [`Link`] is the
//!   sans-IO core: time and the loss draw are passed in, and it is unit-tested without devices.
//! - **One wakeup per batch, not per packet.** Packets falling due within [`HORIZON`] (100 µs)
//!   leave together, and the loop makes at most one pass per horizon: at 1 Gbit/s a packet falls
//!   due every 12 µs, and waking for each cost most of a core on these virtual machines (arming
//!   a fine timer exits to the hypervisor), which starved the processes under test. A packet
//!   leaves at most the horizon early; a 1 ms or longer emulated delay hardly notices.
//! - **Bounded memory.** Packets live in fixed 2 KiB buffers from a pool capped at
//!   `max_buffered_packets` (default 16384, 32 MiB); a packet that finds the pool empty is
//!   dropped and counted as a queue drop. Every link also has a queue limit on the packets waiting
//!   for its transmitter (default 1000 packets, like `txqueuelen`).
//!
//! Packets are not modified (no TTL decrement): the emulator is a wire between the namespaces,
//! not a router. Non-IPv4 packets and destinations no endpoint owns are dropped and counted.
//! Dropping the [`Emulator`] stops the thread and closes the devices, which removes them and
//! every route through them.

use crate::netns::Netns;
use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use nix::poll::{PollFd, PollFlags};
use nix::sys::eventfd::EventFd;
use rand::{Rng as _, SeedableRng as _};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tun_rs::{DeviceBuilder, GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// The MTU of every emulator device.
pub const MTU: u16 = 1500;
/// Size of one packet buffer (≥ MTU).
const BUF_LEN: usize = 2048;
/// Room for the raw read of one super-packet and its virtio-net header.
const ORIGINAL_LEN: usize = VIRTIO_NET_HDR_LEN + 65_535;
/// Reads per device per loop iteration, so one busy device cannot starve the timers.
const READ_BUDGET: usize = 64;
/// Default cap on the packets buffered in the whole emulator.
pub const DEFAULT_MAX_BUFFERED: usize = 16_384;

/// How much a link may hold waiting for its transmitter (tail drop beyond it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueLimit {
    Packets(usize),
    Bytes(usize),
}

impl Default for QueueLimit {
    fn default() -> Self {
        QueueLimit::Packets(1000)
    }
}

/// The conditions of one direction between two endpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Bottleneck rate in bits per second of IP packets; `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Probability in `[0, 1]` that a packet is lost (independently per packet).
    pub loss: f64,
    /// Limit of the queue in front of the transmitter (only fills when `rate_bps` is set).
    pub queue: QueueLimit,
    /// Drops everything (a location that is down or cut off).
    pub down: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            rate_bps: None,
            loss: 0.0,
            queue: QueueLimit::default(),
            down: false,
        }
    }
}

impl LinkConfig {
    /// A link with this one-way delay and nothing else.
    pub fn delay(delay: Duration) -> LinkConfig {
        LinkConfig {
            delay,
            ..LinkConfig::default()
        }
    }
}

/// Upper bounds of the lateness histogram buckets (the last bucket is open).
pub const LATE_BUCKETS: [Duration; 7] = [
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
];

/// Counters of one link, as read by [`Emulator::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets and bytes delivered to the destination device.
    pub packets: u64,
    pub bytes: u64,
    /// Dropped by random loss.
    pub dropped_loss: u64,
    /// Dropped because the queue (or the emulator's buffer pool) was full.
    pub dropped_queue: u64,
    /// Dropped because the link was down.
    pub dropped_down: u64,
    /// How late packets were written relative to their due time: counts per bucket of
    /// [`LATE_BUCKETS`], plus one for everything later than the last bound.
    pub late: [u64; 8],
}

impl LinkStats {
    /// An upper bound of the `q` quantile (0..=1) of lateness; `None` past the last bucket or
    /// when nothing was delivered.
    pub fn late_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.late.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.late.iter().enumerate() {
            seen += n;
            if seen >= want {
                return LATE_BUCKETS.get(i).copied();
            }
        }
        None
    }

    /// The counters accumulated since `earlier` (a snapshot of the same link).
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        let mut late = [0; 8];
        for (i, l) in late.iter_mut().enumerate() {
            *l = self.late[i] - earlier.late[i];
        }
        LinkStats {
            packets: self.packets - earlier.packets,
            bytes: self.bytes - earlier.bytes,
            dropped_loss: self.dropped_loss - earlier.dropped_loss,
            dropped_queue: self.dropped_queue - earlier.dropped_queue,
            dropped_down: self.dropped_down - earlier.dropped_down,
            late,
        }
    }
}

#[derive(Default)]
struct LinkCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_down: AtomicU64,
    late: [AtomicU64; 8],
}

impl LinkCounters {
    fn snapshot(&self) -> LinkStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            dropped_down: get(&self.dropped_down),
            late: std::array::from_fn(|i| get(&self.late[i])),
        }
    }

    fn bump(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    fn drop(&self, why: DropReason) {
        Self::bump(
            match why {
                DropReason::Lost => &self.dropped_loss,
                DropReason::Full => &self.dropped_queue,
                DropReason::Down => &self.dropped_down,
            },
            1,
        );
    }

    fn delivered(&self, len: usize, late: Duration) {
        Self::bump(&self.packets, 1);
        Self::bump(&self.bytes, len as u64);
        let bucket = LATE_BUCKETS
            .iter()
            .position(|b| late <= *b)
            .unwrap_or(LATE_BUCKETS.len());
        Self::bump(&self.late[bucket], 1);
    }
}

/// Why a link refused a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Lost,
    Full,
    Down,
}

struct Entry<T> {
    payload: T,
    len: usize,
    /// When its serialization ends (leaves the queue limit's accounting).
    depart: Instant,
    /// When it reaches the destination.
    due: Instant,
}

/// One direction of one emulated wire, without IO: a FIFO of packets with their due times.
pub struct Link<T> {
    cfg: LinkConfig,
    queue: VecDeque<Entry<T>>,
    /// How many entries at the front have finished serialization (`depart <= now`).
    departed: usize,
    /// Bytes of the entries still waiting for or in the transmitter.
    backlog_bytes: usize,
    /// When the transmitter finishes the last accepted packet.
    busy_until: Option<Instant>,
    /// The due time of the last accepted packet (due times never decrease).
    last_due: Option<Instant>,
}

impl<T> Link<T> {
    pub fn new(cfg: LinkConfig) -> Link<T> {
        Link {
            cfg,
            queue: VecDeque::new(),
            departed: 0,
            backlog_bytes: 0,
            busy_until: None,
            last_due: None,
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// New conditions, applying to packets offered from now on.
    pub fn set_config(&mut self, cfg: LinkConfig) {
        self.cfg = cfg;
    }

    /// Packets held (queued or in flight).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Packets waiting for or in the transmitter at `now`.
    pub fn backlog(&mut self, now: Instant) -> (usize, usize) {
        self.advance(now);
        (self.queue.len() - self.departed, self.backlog_bytes)
    }

    fn advance(&mut self, now: Instant) {
        while let Some(e) = self.queue.get(self.departed) {
            if e.depart > now {
                break;
            }
            self.backlog_bytes -= e.len;
            self.departed += 1;
        }
    }

    /// Offers a packet of `len` bytes arriving at `now`; `draw` is a uniform sample in `[0, 1)`
    /// for the loss decision. Returns its due time, or the payload back with the reason.
    pub fn offer(
        &mut self,
        now: Instant,
        len: usize,
        draw: f64,
        payload: T,
    ) -> std::result::Result<Instant, (T, DropReason)> {
        if self.cfg.down {
            return Err((payload, DropReason::Down));
        }
        if self.cfg.loss > 0.0 && draw < self.cfg.loss {
            return Err((payload, DropReason::Lost));
        }
        self.advance(now);
        let full = match self.cfg.queue {
            QueueLimit::Packets(p) => self.queue.len() - self.departed >= p,
            QueueLimit::Bytes(b) => self.backlog_bytes + len > b,
        };
        if full {
            return Err((payload, DropReason::Full));
        }
        // The transmitter starts when it is free; with no rate a packet takes no time on it,
        // but still leaves after what an earlier rate queued (departures never reorder).
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let depart = match self.cfg.rate_bps {
            Some(rate) if rate > 0 => {
                start + Duration::from_nanos((len as u64 * 8 * 1_000_000_000) / rate)
            }
            _ => start,
        };
        self.busy_until = Some(depart);
        let due = self
            .last_due
            .map_or(depart + self.cfg.delay, |l| l.max(depart + self.cfg.delay));
        self.last_due = Some(due);
        self.queue.push_back(Entry {
            payload,
            len,
            depart,
            due,
        });
        self.backlog_bytes += len;
        self.advance(now);
        Ok(due)
    }

    /// The due time of the next packet.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|e| e.due)
    }

    /// The next packet if it is due at `now`, with its length and due time.
    pub fn pop_due(&mut self, now: Instant) -> Option<(T, usize, Instant)> {
        if self.queue.front()?.due > now {
            return None;
        }
        self.advance(now);
        let e = self.queue.pop_front()?;
        // Due implies departed (due >= depart), so the front was counted as departed.
        self.departed = self.departed.saturating_sub(1);
        Some((e.payload, e.len, e.due))
    }
}

/// One endpoint of the emulator: a TUN device in a namespace, what it is called, which
/// addresses it owns and which routes send traffic into it.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// A label for logs and errors (e.g. the location's name).
    pub name: String,
    /// The TUN interface name (unique within its namespace).
    pub tun: String,
    /// Addresses put on the TUN device (as /32), e.g. the namespace's own WAN address.
    pub addresses: Vec<Ipv4Addr>,
    /// Destinations the emulator delivers to this endpoint.
    pub owns: Vec<Ipv4Net>,
    /// Routes added in the namespace through the device (`0.0.0.0/0` for a default route).
    pub routes: Vec<Ipv4Net>,
}

/// An endpoint's index, in attachment order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointId(pub usize);

struct Device {
    dev: SyncDevice,
    att: Attachment,
}

/// Attaches endpoints (creating their devices), then starts the emulator.
pub struct EmulatorBuilder {
    devices: Vec<Device>,
    default_link: LinkConfig,
    seed: u64,
    max_buffered: usize,
    realtime: bool,
}

/// The release horizon: packets due within it of now leave in the same wakeup.
pub const HORIZON: Duration = Duration::from_micros(100);

impl EmulatorBuilder {
    /// Whether the forwarding thread runs with real-time priority (`SCHED_FIFO`, the default),
    /// so that it keeps its deadlines on a busy machine.
    pub fn realtime(mut self, on: bool) -> Self {
        self.realtime = on;
        self
    }

    /// The conditions every link starts with (default: no delay, no limit).
    pub fn default_link(mut self, cfg: LinkConfig) -> Self {
        self.default_link = cfg;
        self
    }

    /// The seed of the loss draws (runs with the same traffic drop the same packets).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The cap on packets buffered in the whole emulator.
    pub fn max_buffered_packets(mut self, n: usize) -> Self {
        self.max_buffered = n.max(1);
        self
    }

    /// Creates the endpoint's TUN device inside `ns` (the root namespace when `None`), with
    /// offload when the kernel allows, its addresses and routes, up.
    pub fn attach(&mut self, ns: Option<&Netns>, att: Attachment) -> Result<EndpointId> {
        self.attach_in(ns.map(|n| n.name.as_str()), att)
    }

    /// [`EmulatorBuilder::attach`] to a namespace by name (one made by `ip netns add`).
    pub fn attach_in(&mut self, ns: Option<&str>, att: Attachment) -> Result<EndpointId> {
        let name = att.tun.clone();
        let open = move || -> std::io::Result<SyncDevice> {
            let build = |offload: bool| {
                DeviceBuilder::new()
                    .name(name.clone())
                    .mtu(MTU)
                    .offload(offload)
                    .build_sync()
            };
            let dev = match build(true) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "TUN offload unavailable, continuing without");
                    build(false)?
                }
            };
            dev.set_nonblocking(true)?;
            Ok(dev)
        };
        let dev = match ns {
            Some(ns) => crate::netns::run_in(ns, open)
                .join()
                .map_err(|_| anyhow::anyhow!("the TUN thread panicked"))??,
            None => open(),
        }
        .with_context(|| format!("creating TUN device {} for {}", att.tun, att.name))?;
        let ip = |args: &[&str]| -> Result<()> {
            match ns {
                Some(ns) => crate::netns::ip(&[&["-n", ns], args].concat()).map(drop),
                None => crate::netns::ip(args).map(drop),
            }
        };
        for a in &att.addresses {
            ip(&["address", "add", &format!("{a}/32"), "dev", &att.tun])?;
        }
        ip(&["link", "set", "dev", &att.tun, "up"])?;
        for r in &att.routes {
            ip(&["route", "replace", &r.to_string(), "dev", &att.tun])?;
        }
        self.devices.push(Device { dev, att });
        Ok(EndpointId(self.devices.len() - 1))
    }

    /// Starts the forwarding thread.
    pub fn start(self) -> Result<Emulator> {
        let n = self.devices.len();
        let shared = Arc::new(Shared {
            configs: Mutex::new(vec![self.default_link; n * n]),
            generation: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            wake: EventFd::new().context("creating the eventfd")?,
            counters: (0..n * n).map(|_| LinkCounters::default()).collect(),
            unroutable: (0..n).map(|_| AtomicU64::new(0)).collect(),
            tid: std::sync::atomic::AtomicI32::new(0),
        });
        let names = self.devices.iter().map(|d| d.att.name.clone()).collect();
        let mut routes: Vec<(Ipv4Net, usize)> = self
            .devices
            .iter()
            .enumerate()
            .flat_map(|(i, d)| d.att.owns.iter().map(move |net| (*net, i)))
            .collect();
        routes.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let state = Loop {
            links: (0..n * n).map(|_| Link::new(self.default_link)).collect(),
            devices: self.devices,
            routes,
            n,
            pool: Vec::new(),
            allocated: 0,
            max_buffered: self.max_buffered,
            rng: rand::rngs::StdRng::seed_from_u64(self.seed),
            generation: 0,
            realtime: self.realtime,
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("linkemu".into())
            .spawn(move || state.run())
            .context("starting the emulator thread")?;
        Ok(Emulator {
            shared,
            thread: Some(thread),
            names,
        })
    }
}

struct Shared {
    configs: Mutex<Vec<LinkConfig>>,
    generation: AtomicU64,
    stop: AtomicBool,
    wake: EventFd,
    counters: Vec<LinkCounters>,
    unroutable: Vec<AtomicU64>,
    /// The forwarding thread's kernel id (0 until it runs), for its CPU time.
    tid: std::sync::atomic::AtomicI32,
}

/// A running emulator. Dropping it stops the thread and removes the devices.
pub struct Emulator {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<()>>>,
    names: Vec<String>,
}

impl Emulator {
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder {
            devices: Vec::new(),
            default_link: LinkConfig::default(),
            seed: 0x5eed,
            max_buffered: DEFAULT_MAX_BUFFERED,
            realtime: true,
        }
    }

    /// The number of endpoints.
    pub fn endpoints(&self) -> usize {
        self.names.len()
    }

    /// An endpoint by its attachment name.
    pub fn endpoint(&self, name: &str) -> Option<EndpointId> {
        self.names.iter().position(|n| n == name).map(EndpointId)
    }

    fn index(&self, from: EndpointId, to: EndpointId) -> usize {
        let n = self.names.len();
        assert!(from.0 < n && to.0 < n, "no such endpoint");
        from.0 * n + to.0
    }

    /// The conditions from `from` to `to`.
    pub fn link(&self, from: EndpointId, to: EndpointId) -> LinkConfig {
        let i = self.index(from, to);
        self.shared
            .configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())[i]
    }

    /// Changes the conditions from `from` to `to` (packets already in flight keep theirs).
    pub fn set_link(&self, from: EndpointId, to: EndpointId, cfg: LinkConfig) {
        self.update_link(from, to, |c| *c = cfg);
    }

    /// Edits the conditions from `from` to `to` in place.
    pub fn update_link(&self, from: EndpointId, to: EndpointId, f: impl FnOnce(&mut LinkConfig)) {
        let i = self.index(from, to);
        f(&mut self
            .shared
            .configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())[i]);
        self.shared.generation.fetch_add(1, Ordering::Release);
        let _ = self.shared.wake.write(1);
    }

    /// The counters of the link from `from` to `to`.
    pub fn stats(&self, from: EndpointId, to: EndpointId) -> LinkStats {
        self.shared.counters[self.index(from, to)].snapshot()
    }

    /// Packets from `from` that no endpoint owns (or that are not IPv4).
    pub fn unroutable(&self, from: EndpointId) -> u64 {
        self.shared.unroutable[from.0].load(Ordering::Relaxed)
    }

    /// The CPU time (user + system) the forwarding thread used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let tid = self.shared.tid.load(Ordering::Relaxed);
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')')?.1;
        let mut f = rest.split_whitespace().skip(11);
        let ticks: u64 = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
        // USER_HZ is 100 on Linux.
        Some(Duration::from_millis(ticks * 10))
    }

    /// Whether the forwarding thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread and removes the devices; the thread's error if it failed.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.wake.write(1);
        t.join()
            .map_err(|_| anyhow::anyhow!("the emulator thread panicked"))?
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "link emulator failed");
        }
    }
}

/// The forwarding thread's state.
struct Loop {
    devices: Vec<Device>,
    /// Destination prefixes to endpoints, longest prefix first.
    routes: Vec<(Ipv4Net, usize)>,
    n: usize,
    /// `links[from * n + to]`, holding pool buffers.
    links: Vec<Link<Vec<u8>>>,
    pool: Vec<Vec<u8>>,
    allocated: usize,
    max_buffered: usize,
    rng: rand::rngs::StdRng,
    generation: u64,
    realtime: bool,
    shared: Arc<Shared>,
}

impl Loop {
    fn run(mut self) -> Result<()> {
        // Wake for a deadline within microseconds rather than the default 50 µs slack.
        if let Err(e) = nix::sys::prctl::set_timerslack(1_000) {
            tracing::debug!(error = %e, "cannot lower the timer slack");
        }
        self.shared
            .tid
            .store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
        if self.realtime {
            realtime_priority();
        }
        let shared = self.shared.clone();
        let devices = std::mem::take(&mut self.devices);
        let mut fds: Vec<PollFd<'_>> = std::iter::once(shared.wake.as_fd())
            .chain(devices.iter().map(|d| d.dev.as_fd()))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let mut alive = vec![true; devices.len()];
        let mut original = vec![0u8; ORIGINAL_LEN];
        let mut rx: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE).map(|_| vec![0u8; BUF_LEN]).collect();
        let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
        let mut tx: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
            .map(|_| Vec::with_capacity(BUF_LEN))
            .collect();
        let mut gro = GROTable::default();
        let mut next_due: Option<Instant> = None;
        let mut start = 0;
        let mut last_pass = Instant::now();
        loop {
            self.apply_configs();
            // At most one pass per horizon: what arrives meanwhile waits in the devices' queues
            // and is read in one batch (an idle emulator never sleeps here).
            let since = last_pass.elapsed();
            if since < HORIZON {
                std::thread::sleep(HORIZON - since);
            }
            let timeout = next_due.map(|d| {
                nix::sys::time::TimeSpec::from_duration(d.saturating_duration_since(Instant::now()))
            });
            match nix::poll::ppoll(&mut fds, timeout, None) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("ppoll"),
            }
            last_pass = Instant::now();
            if fds[0].any().unwrap_or(false) {
                let _ = shared.wake.read();
                if shared.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                self.apply_configs();
            }
            // Read until every ready device is drained or a packet falls due, starting with a
            // different device each time so that a busy one cannot starve the others.
            let n = devices.len();
            start = (start + 1) % n.max(1);
            'devices: for i in (start..n).chain(0..start) {
                let d = &devices[i];
                let ready = fds[i + 1].revents().unwrap_or(PollFlags::empty());
                if !alive[i] || ready.is_empty() {
                    continue;
                }
                if !ready.contains(PollFlags::POLLIN) {
                    // POLLERR/POLLHUP/POLLNVAL: the device went away (its namespace was
                    // deleted); the others keep working.
                    tracing::debug!(endpoint = %d.att.name, ?ready, "TUN device gone");
                    alive[i] = false;
                    fds[i + 1].set_events(PollFlags::empty());
                    continue;
                }
                for _ in 0..READ_BUDGET {
                    match d.dev.recv_multiple(&mut original, &mut rx, &mut sizes, 0) {
                        Ok(count) => {
                            if let Some(due) = self.route(i, &mut rx, &sizes[..count]) {
                                next_due = Some(next_due.map_or(due, |x| x.min(due)));
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                            alive[i] = false;
                            fds[i + 1].set_events(PollFlags::empty());
                            break;
                        }
                        Err(e) => {
                            // A malformed offload read; the packet is lost, the device fine.
                            tracing::trace!(error = %e, "TUN read");
                            shared.unroutable[i].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // A burst of reads (a 2 MB TCP window takes milliseconds) must not hold
                    // back packets already due for longer than a horizon; but stopping at the
                    // first due packet would read one batch per pass, too slow to empty the
                    // devices' queues at 1 Gbit/s (they drop what does not fit).
                    if next_due.is_some_and(|d| d + HORIZON <= Instant::now()) {
                        break 'devices;
                    }
                }
            }
            next_due = self.deliver(&devices, &alive, &mut tx, &mut gro);
        }
    }

    fn apply_configs(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g == self.generation {
            return;
        }
        self.generation = g;
        let configs = self
            .shared
            .configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (link, cfg) in self.links.iter_mut().zip(configs) {
            link.set_config(cfg);
        }
    }

    fn lookup(&self, dst: Ipv4Addr) -> Option<usize> {
        self.routes
            .iter()
            .find(|(net, _)| net.contains(&dst))
            .map(|(_, i)| *i)
    }

    /// Queues the packets read from endpoint `from` on their links; the earliest due time
    /// among them.
    fn route(&mut self, from: usize, rx: &mut [Vec<u8>], sizes: &[usize]) -> Option<Instant> {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        let mut cached: Option<(Ipv4Addr, Option<usize>)> = None;
        for (k, &len) in sizes.iter().enumerate() {
            let pkt = &rx[k][..len];
            if len < 20 || pkt[0] >> 4 != 4 {
                self.shared.unroutable[from].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let to = match cached {
                Some((d, to)) if d == dst => to,
                _ => {
                    let to = self.lookup(dst);
                    cached = Some((dst, to));
                    to
                }
            };
            let Some(to) = to else {
                self.shared.unroutable[from].fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let li = from * self.n + to;
            let counters = &self.shared.counters[li];
            let Some(fresh) = self.pool.pop().or_else(|| {
                (self.allocated < self.max_buffered).then(|| {
                    self.allocated += 1;
                    vec![0u8; BUF_LEN]
                })
            }) else {
                counters.drop(DropReason::Full);
                continue;
            };
            let draw: f64 = if self.links[li].config().loss > 0.0 {
                self.rng.gen()
            } else {
                1.0
            };
            let buf = std::mem::replace(&mut rx[k], fresh);
            match self.links[li].offer(now, len, draw, buf) {
                Ok(due) => earliest = Some(earliest.map_or(due, |e| e.min(due))),
                Err((buf, why)) => {
                    counters.drop(why);
                    // The fresh buffer goes back to the pool, the filled one is reused.
                    self.pool.push(std::mem::replace(&mut rx[k], buf));
                }
            }
        }
        earliest
    }

    /// Writes every due packet to its destination device; the next deadline.
    fn deliver(
        &mut self,
        devices: &[Device],
        alive: &[bool],
        tx: &mut [Vec<u8>],
        gro: &mut GROTable,
    ) -> Option<Instant> {
        let now = Instant::now();
        let release = now + HORIZON;
        let n = self.n;
        let mut next: Option<Instant> = None;
        for (to, d) in devices.iter().enumerate() {
            let mut count = 0;
            for from in 0..n {
                let li = from * n + to;
                while let Some((buf, len, due)) = self.links[li].pop_due(release) {
                    self.shared.counters[li].delivered(len, now.saturating_duration_since(due));
                    let out = &mut tx[count];
                    out.clear();
                    out.resize(VIRTIO_NET_HDR_LEN, 0);
                    out.extend_from_slice(&buf[..len]);
                    self.pool.push(buf);
                    count += 1;
                    if count == tx.len() {
                        write(d, alive[to], gro, &mut tx[..count]);
                        count = 0;
                    }
                }
                if let Some(due) = self.links[li].next_due() {
                    next = Some(next.map_or(due, |x| x.min(due)));
                }
            }
            write(d, alive[to], gro, &mut tx[..count]);
        }
        next
    }
}

/// Moves the calling thread to `SCHED_FIFO` (with `chrt`, util-linux, as the workspace forbids
/// `unsafe`). On a machine busy with builds or other tests, a normal thread waking for a
/// deadline waits milliseconds for a core; a real-time one preempts at once. The thread only
/// runs when packets arrive or fall due, and the kernel's real-time throttling caps it anyway.
fn realtime_priority() {
    let tid = nix::unistd::gettid().to_string();
    let ok = std::process::Command::new("chrt")
        .args(["--fifo", "--pid", "10", &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        tracing::warn!("cannot give the link emulator real-time priority; timing may suffer");
    }
}

fn write(d: &Device, alive: bool, gro: &mut GROTable, batch: &mut [Vec<u8>]) {
    if batch.is_empty() || !alive {
        return;
    }
    if let Err(e) = d.dev.send_multiple(gro, batch, VIRTIO_NET_HDR_LEN) {
        tracing::trace!(endpoint = %d.att.name, error = %e, "TUN write");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_only_keeps_order_and_due_times() {
        let t0 = Instant::now();
        let mut l = Link::new(LinkConfig::delay(ms(40)));
        assert_eq!(l.offer(t0, 100, 0.5, 1).ok(), Some(t0 + ms(40)));
        assert_eq!(l.offer(t0 + ms(1), 100, 0.5, 2).ok(), Some(t0 + ms(41)));
        assert_eq!(l.next_due(), Some(t0 + ms(40)));
        assert!(l.pop_due(t0 + ms(39)).is_none());
        assert_eq!(l.pop_due(t0 + ms(40)).map(|p| p.0), Some(1));
        assert!(l.pop_due(t0 + ms(40)).is_none());
        assert_eq!(l.pop_due(t0 + ms(50)).map(|p| p.0), Some(2));
        assert!(l.is_empty());
    }

    #[test]
    fn rate_serializes_back_to_back() {
        let t0 = Instant::now();
        // 1500 bytes at 12 Mbit/s take exactly 1 ms on the wire.
        let mut l = Link::new(LinkConfig {
            delay: ms(10),
            rate_bps: Some(12_000_000),
            ..LinkConfig::default()
        });
        let dues: Vec<Instant> = (0..3)
            .map(|i| l.offer(t0, 1500, 0.5, i).expect("accepted"))
            .collect();
        assert_eq!(dues, vec![t0 + ms(11), t0 + ms(12), t0 + ms(13)]);
        assert_eq!(l.backlog(t0), (3, 4500));
        assert_eq!(l.backlog(t0 + ms(1)), (2, 3000));
        assert_eq!(l.backlog(t0 + ms(3)), (0, 0));
        // An idle transmitter starts at once.
        assert_eq!(l.offer(t0 + ms(20), 1500, 0.5, 9).ok(), Some(t0 + ms(31)));
    }

    #[test]
    fn queue_limit_tail_drops_only_the_backlog() {
        let t0 = Instant::now();
        let mut l = Link::new(LinkConfig {
            delay: ms(100),
            rate_bps: Some(12_000_000),
            queue: QueueLimit::Packets(2),
            ..LinkConfig::default()
        });
        assert!(l.offer(t0, 1500, 0.5, 1).is_ok());
        assert!(l.offer(t0, 1500, 0.5, 2).is_ok());
        assert_eq!(l.offer(t0, 1500, 0.5, 3).err(), Some((3, DropReason::Full)));
        // Once serialized, packets in the delay line no longer count against the queue.
        assert!(l.offer(t0 + ms(2), 1500, 0.5, 4).is_ok());
        assert!(l.offer(t0 + ms(2), 1500, 0.5, 5).is_ok());
        assert_eq!(l.len(), 4);

        let mut b = Link::new(LinkConfig {
            rate_bps: Some(12_000_000),
            queue: QueueLimit::Bytes(2000),
            ..LinkConfig::default()
        });
        assert!(b.offer(t0, 1500, 0.5, 1).is_ok());
        assert_eq!(b.offer(t0, 600, 0.5, 2).err(), Some((2, DropReason::Full)));
        assert!(b.offer(t0, 500, 0.5, 3).is_ok());
    }

    #[test]
    fn loss_and_down() {
        let t0 = Instant::now();
        let mut l = Link::new(LinkConfig {
            loss: 0.1,
            ..LinkConfig::default()
        });
        assert_eq!(l.offer(t0, 100, 0.05, 1).err(), Some((1, DropReason::Lost)));
        assert!(l.offer(t0, 100, 0.1, 2).is_ok());
        l.set_config(LinkConfig {
            down: true,
            ..LinkConfig::default()
        });
        assert_eq!(l.offer(t0, 100, 0.9, 3).err(), Some((3, DropReason::Down)));
    }

    #[test]
    fn shorter_delay_never_reorders() {
        let t0 = Instant::now();
        let mut l = Link::new(LinkConfig::delay(ms(100)));
        assert!(l.offer(t0, 100, 0.5, 1).is_ok());
        l.set_config(LinkConfig::delay(ms(10)));
        assert_eq!(l.offer(t0 + ms(1), 100, 0.5, 2).ok(), Some(t0 + ms(100)));
        assert_eq!(l.offer(t0 + ms(95), 100, 0.5, 3).ok(), Some(t0 + ms(105)));
    }

    #[test]
    fn late_quantiles() {
        let mut s = LinkStats::default();
        s.late[0] = 98;
        s.late[3] = 1;
        s.late[7] = 1;
        assert_eq!(s.late_quantile(0.5), Some(Duration::from_micros(50)));
        assert_eq!(s.late_quantile(0.99), Some(Duration::from_micros(500)));
        assert_eq!(s.late_quantile(1.0), None);
    }
}
