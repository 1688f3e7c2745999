//! The running gateway: the IO shell around [`Node`]. Two data-path tasks move packets
//! (TUN → encrypt → UDP, and UDP → decrypt → TUN, each in batches), and one event loop owns
//! everything else: protocol timers, the rate-limiter reset, the control socket, SIGHUP reload
//! and SIGTERM/SIGINT shutdown.
//!
//! The two directions run as separate tasks so that encryption and decryption use both cores;
//! they share only the read-mostly peer table (swapped whole on reload) and each peer's engine
//! lock.

use crate::config::{Config, PeerConfig};
use crate::control::{self, ControlSocket, Status};
use crate::device::{Tun, TunBatch};
use crate::engine::Boringtun;
use crate::node::Node;
use crate::udp::{RxBatch, TxBatch, Udp};
use anyhow::Context as _;
use ipnet::IpNet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tun_rs::{AsyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// How often protocol timers run (boringtun wants 100-250 ms).
const TICK: Duration = Duration::from_millis(100);
/// Extra TUN reads without waiting per batch, so GSO trains fill up under load.
const DRAIN_READS: usize = 8;

/// Everything the event loop reacts to.
enum Event {
    Tick,
    Second,
    Reload,
    Shutdown(&'static str),
    Status(tokio::net::UnixStream),
    DataPathEnded(&'static str, anyhow::Result<()>),
}

/// A gateway that is up: device, socket, routes, control socket.
pub struct Gateway {
    config_path: PathBuf,
    config: Config,
    node: Arc<Node>,
    tun: Option<Tun>,
    udp: Arc<Udp>,
    control: ControlSocket,
    routes: Vec<IpNet>,
    started: Instant,
}

impl Gateway {
    /// Brings the gateway up from `config` (re-read from `config_path` on SIGHUP).
    pub async fn start(config_path: &Path, config: Config) -> anyhow::Result<Gateway> {
        let i = &config.interface;
        let identity = Arc::new(Boringtun::new(&i.private_key));
        let node = Arc::new(Node::new(identity, i.rekey_after));
        warn_on_loops(&config.peers);
        let udp = Udp::bind(i.listen_port)
            .with_context(|| format!("binding UDP port {}", i.listen_port))?;
        let tun = Tun::create(&i.name, i.mtu, &i.addresses, i.offload)
            .with_context(|| format!("bringing up interface {}", i.name))?;
        let change = node.apply(&config.peers);
        let mut routes = Vec::new();
        for net in &change.routes_added {
            if let Err(e) = tun.add_route(net) {
                tun.remove(&routes);
                return Err(e.context(format!("adding the route to {net}")));
            }
            routes.push(*net);
        }
        let control = match ControlSocket::bind(&i.control_socket).await {
            Ok(c) => c,
            Err(e) => {
                tun.remove(&routes);
                return Err(e);
            }
        };
        tracing::info!(
            interface = %i.name,
            port = udp.local_addr().map(|a| a.port()).unwrap_or(i.listen_port),
            peers = config.peers.len(),
            offload = tun.offload,
            public_key = %i.private_key.public_key(),
            "gateway up"
        );
        Ok(Gateway {
            config_path: config_path.to_owned(),
            config,
            node,
            tun: Some(tun),
            udp,
            control,
            routes,
            started: Instant::now(),
        })
    }

    fn status(&self) -> Status {
        Status {
            interface: self.config.interface.name.clone(),
            public_key: self.config.interface.private_key.public_key().to_string(),
            listen_port: self
                .udp
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(self.config.interface.listen_port),
            offload: self.tun.as_ref().is_some_and(|t| t.offload),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            dropped: self.node.counters.snapshot(),
            peers: self.node.status(),
        }
    }

    /// Runs until SIGTERM or SIGINT, then removes routes and the interface.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let (device, offload) = match &self.tun {
            Some(t) => (t.device.clone(), t.offload),
            None => anyhow::bail!("the gateway is already shut down"),
        };
        let mut outbound = tokio::spawn(outbound(
            device.clone(),
            self.udp.clone(),
            self.node.clone(),
            self.config.interface.mtu,
            offload,
        ));
        let mut inbound = tokio::spawn(inbound(device, self.udp.clone(), self.node.clone()));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut timers_out = TxBatch::new(1);
        let result = loop {
            let event = tokio::select! {
                _ = tick.tick() => Event::Tick,
                _ = second.tick() => Event::Second,
                _ = hup.recv() => Event::Reload,
                _ = term.recv() => Event::Shutdown("SIGTERM"),
                _ = int.recv() => Event::Shutdown("SIGINT"),
                conn = self.control.listener.accept() => match conn {
                    Ok((stream, _)) => Event::Status(stream),
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        continue;
                    }
                },
                r = &mut outbound => Event::DataPathEnded("outbound", flatten(r)),
                r = &mut inbound => Event::DataPathEnded("inbound", flatten(r)),
            };
            match event {
                Event::Tick => {
                    self.node.tick(&mut timers_out);
                    timers_out.flush(&self.udp).await;
                }
                Event::Second => self.node.second(),
                Event::Reload => self.reload(),
                Event::Status(stream) => {
                    tokio::spawn(control::answer(stream, self.status()));
                }
                Event::Shutdown(why) => {
                    tracing::info!(signal = why, "shutting down");
                    break Ok(());
                }
                Event::DataPathEnded(which, r) => {
                    break Err(match r {
                        Ok(()) => anyhow::anyhow!("{which} data path ended"),
                        Err(e) => e.context(format!("{which} data path failed")),
                    });
                }
            }
        };
        outbound.abort();
        inbound.abort();
        let _ = outbound.await;
        let _ = inbound.await;
        self.shutdown();
        result
    }

    /// Re-reads the config and applies its peers; the interface section is only read at
    /// start (a change there needs a restart, and says so).
    fn reload(&mut self) {
        let next = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: keeping the running config");
                return;
            }
        };
        let (a, b) = (&self.config.interface, &next.interface);
        if a.name != b.name
            || a.addresses != b.addresses
            || a.listen_port != b.listen_port
            || a.mtu != b.mtu
            || a.private_key.public_key() != b.private_key.public_key()
        {
            tracing::warn!(
                "interface settings changed: they apply on restart; reloading peers only"
            );
        }
        warn_on_loops(&next.peers);
        let change = self.node.apply(&next.peers);
        if let Some(tun) = &self.tun {
            for net in &change.routes_removed {
                if let Err(e) = tun.remove_route(net) {
                    tracing::warn!(error = %e, "removing a route");
                }
                self.routes.retain(|r| r != net);
            }
            for net in &change.routes_added {
                match tun.add_route(net) {
                    Ok(()) => self.routes.push(*net),
                    Err(e) => tracing::error!(error = %e, "adding a route"),
                }
            }
        }
        tracing::info!(
            added = change.added.len(),
            removed = change.removed.len(),
            rekeyed = change.rekeyed.len(),
            updated = change.updated.len(),
            "reloaded peers"
        );
        self.config.peers = next.peers;
    }

    fn shutdown(&mut self) {
        if let Some(tun) = self.tun.take() {
            // The data-path tasks have ended and dropped their handles: this closes the
            // last file descriptor of the device.
            tun.remove(&self.routes);
        }
        tracing::info!("interface and routes removed");
    }
}

fn flatten(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match r {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("task failed: {e}")),
    }
}

/// A peer whose endpoint lies inside some peer's AllowedIPs would route its own encrypted
/// datagrams into the tunnel.
fn warn_on_loops(peers: &[PeerConfig]) {
    for p in peers {
        let Some(ep) = p.endpoint else { continue };
        if peers
            .iter()
            .flat_map(|q| q.allowed_ips.iter())
            .any(|n| n.contains(&ep.ip()))
        {
            tracing::warn!(
                peer = %p.label(),
                "the peer's endpoint is inside a tunnel route: its datagrams would loop"
            );
        }
    }
}

/// TUN → encrypt → UDP.
async fn outbound(
    device: Arc<AsyncDevice>,
    udp: Arc<Udp>,
    node: Arc<Node>,
    mtu: u16,
    offload: bool,
) -> anyhow::Result<()> {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    // With offload a read yields up to a 64 KiB super-packet split into MTU-sized packets;
    // without it, one packet of at most the MTU.
    let slots = if offload { IDEAL_BATCH_SIZE } else { 1 };
    let mut bufs: Vec<Vec<u8>> = (0..slots)
        .map(|_| vec![0u8; usize::from(mtu).max(1500) + 256])
        .collect();
    let mut sizes = vec![0usize; slots];
    let mut tx = TxBatch::new(udp.max_segments());
    let mut errors = 0u32;
    loop {
        let mut r = device
            .recv_multiple(&mut original, &mut bufs, &mut sizes, 0)
            .await;
        let table = node.table();
        for _ in 0..=DRAIN_READS {
            match r {
                Ok(n) => {
                    errors = 0;
                    node.outbound(
                        &table,
                        bufs.iter().zip(&sizes).take(n).map(|(b, &s)| &b[..s]),
                        &mut tx,
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    errors += 1;
                    tracing::debug!(error = %e, "TUN read failed");
                    if errors > 1000 {
                        return Err(e).context("reading the TUN device");
                    }
                    break;
                }
            }
            if tx.pending() >= 256 * 1024 {
                break;
            }
            r = device.try_recv_multiple(&mut original, &mut bufs, &mut sizes, 0);
        }
        tx.flush(&udp).await;
    }
}

/// UDP → decrypt → TUN.
async fn inbound(device: Arc<AsyncDevice>, udp: Arc<Udp>, node: Arc<Node>) -> anyhow::Result<()> {
    let mut rx = RxBatch::default();
    let mut tx = TxBatch::new(1);
    let mut tun = TunBatch::default();
    let mut errors = 0u32;
    loop {
        let n = match udp.recv(&mut rx).await {
            Ok(n) => {
                errors = 0;
                n
            }
            Err(e) => {
                errors += 1;
                tracing::debug!(error = %e, "UDP receive failed");
                if errors > 1000 {
                    return Err(e).context("receiving from the UDP socket");
                }
                continue;
            }
        };
        let table = node.table();
        node.inbound(&table, rx.datagrams(n), &mut tx, &mut tun);
        if let Err(e) = tun.flush(&device).await {
            tracing::debug!(error = %e, "TUN write failed");
        }
        if tx.pending() > 0 {
            tx.flush(&udp).await;
        }
    }
}
