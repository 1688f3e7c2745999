//! The TUN side: the device (tun-rs, with offload: the kernel hands us TCP super-packets of up
//! to 64 KiB, split here into MTU-sized packets, and takes coalesced ones back), its addresses
//! and the routes to every peer's AllowedIPs (iproute2's `ip`, as `wg-quick` does), and
//! [`TunBatch`], the buffer the packet path decrypts into.

use crate::node::{Deliveries, MAX_DATAGRAM};
use anyhow::{bail, Context as _};
use ipnet::IpNet;
use std::io;
use std::process::Command;
use tun_rs::{AsyncDevice, DeviceBuilder, ExpandBuffer, GROTable, VIRTIO_NET_HDR_LEN};

/// Headroom before each packet for the virtio-net header that offload writes.
pub const HEADROOM: usize = VIRTIO_NET_HDR_LEN;

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The TUN interface, its addresses and routes.
pub struct Tun {
    pub device: std::sync::Arc<AsyncDevice>,
    pub name: String,
    pub offload: bool,
}

impl Tun {
    /// Creates the interface `name` (with offload when asked and the kernel allows), sets
    /// its MTU and addresses and brings it up.
    pub fn create(name: &str, mtu: u16, addresses: &[IpNet], offload: bool) -> anyhow::Result<Tun> {
        let build = |offload: bool| {
            DeviceBuilder::new()
                .name(name)
                .offload(offload)
                .enable(false)
                .build_async()
        };
        let (device, offload) = match build(offload) {
            Ok(d) => (d, offload),
            Err(e) if offload => {
                tracing::warn!(error = %e, "TUN offload unavailable, continuing without");
                (build(false).context("creating the TUN device")?, false)
            }
            Err(e) => return Err(e).context("creating the TUN device"),
        };
        let tun = Tun {
            device: std::sync::Arc::new(device),
            name: name.to_owned(),
            offload,
        };
        ip(&["link", "set", "dev", name, "mtu", &mtu.to_string()])?;
        for a in addresses {
            ip(&["address", "add", &a.to_string(), "dev", name])?;
        }
        ip(&["link", "set", "dev", name, "up"])?;
        Ok(tun)
    }

    /// Routes `net` into the tunnel (replacing an existing route to it).
    pub fn add_route(&self, net: &IpNet) -> anyhow::Result<()> {
        ip(&["route", "replace", &net.to_string(), "dev", &self.name])
    }

    /// Removes the route to `net` through this interface.
    pub fn remove_route(&self, net: &IpNet) -> anyhow::Result<()> {
        ip(&["route", "del", &net.to_string(), "dev", &self.name])
    }

    /// Removes the interface (and with it every route through it).
    pub fn remove(self, routes: &[IpNet]) {
        for r in routes {
            if let Err(e) = self.remove_route(r) {
                tracing::debug!(error = %e, "route already gone");
            }
        }
        let name = self.name.clone();
        // Closing the only file descriptor of a non-persistent TUN device deletes it; the
        // explicit delete covers a device someone made persistent.
        drop(self.device);
        let _ = ip(&["link", "delete", "dev", &name]);
    }
}

/// A packet buffer with fixed storage and a movable end, so reusing it costs no memset.
pub struct PacketBuf {
    data: Vec<u8>,
    len: usize,
}

impl PacketBuf {
    fn new() -> PacketBuf {
        PacketBuf {
            // Pages are zeroed lazily by the kernel; only the bytes touched cost memory.
            data: vec![0u8; HEADROOM + MAX_DATAGRAM],
            len: 0,
        }
    }
}

impl AsRef<[u8]> for PacketBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for PacketBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl ExpandBuffer for PacketBuf {
    fn buf_capacity(&self) -> usize {
        self.data.len()
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        if new_len > self.data.len() {
            self.data.resize(new_len, value);
        }
        if new_len > self.len {
            self.data[self.len..new_len].fill(value);
        }
        self.len = new_len;
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let end = self.len + src.len();
        if end > self.data.len() {
            self.data.resize(end, 0);
        }
        self.data[self.len..end].copy_from_slice(src);
        self.len = end;
    }
}

/// Decrypted packets waiting to be written to the TUN device (coalesced by GRO on the way).
#[derive(Default)]
pub struct TunBatch {
    bufs: Vec<PacketBuf>,
    n: usize,
    gro: GROTable,
}

impl TunBatch {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The packets waiting (for tests).
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.n].iter().map(|b| &b.as_ref()[HEADROOM..])
    }

    /// Writes everything waiting to `device`.
    pub async fn flush(&mut self, device: &AsyncDevice) -> io::Result<()> {
        if self.n == 0 {
            return Ok(());
        }
        let r = device
            .send_multiple(&mut self.gro, &mut self.bufs[..self.n], HEADROOM)
            .await;
        self.n = 0;
        r.map(|_| ())
    }

    /// Forgets everything waiting (for tests).
    pub fn clear(&mut self) {
        self.n = 0;
    }
}

impl Deliveries for TunBatch {
    fn space(&mut self) -> &mut [u8] {
        if self.bufs.len() == self.n {
            self.bufs.push(PacketBuf::new());
        }
        let b = &mut self.bufs[self.n];
        b.len = b.data.len();
        &mut b.data[HEADROOM..]
    }

    fn commit(&mut self, len: usize) {
        let b = &mut self.bufs[self.n];
        b.len = HEADROOM + len;
        self.n += 1;
    }
}
