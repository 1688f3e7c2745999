//! Name resolution for the connections we make ourselves (spokes dialing hubs and relays,
//! storage probes), with hickory-resolver instead of the libc resolver: answers are cached for
//! exactly their TTL, so a steering change (TTL 30 s) reaches us within one TTL, and lookups are
//! async (no blocking thread per lookup). IP literals never touch DNS; if the system has no
//! usable resolver configuration, the operating system's lookup is used instead.

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

/// A caching resolver.
#[derive(Clone)]
pub struct Resolver {
    inner: Option<TokioResolver>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("hickory", &self.inner.is_some())
            .finish()
    }
}

impl Resolver {
    /// The system's configuration (`/etc/resolv.conf`, `/etc/hosts`), shared process-wide.
    pub fn system() -> &'static Resolver {
        static SYSTEM: OnceLock<Resolver> = OnceLock::new();
        SYSTEM.get_or_init(|| {
            let inner = TokioResolver::builder_tokio()
                .and_then(|b| b.build())
                .map_err(|e| {
                    tracing::warn!(error = %e, "no usable resolver configuration; using the \
                                   operating system's lookups");
                })
                .ok();
            Resolver { inner }
        })
    }

    /// A resolver asking only the server at `server` (UDP, then TCP for truncated answers).
    pub fn with_nameserver(server: SocketAddr) -> io::Result<Resolver> {
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        for c in &mut ns.connections {
            c.port = server.port();
        }
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .map_err(io::Error::other)?;
        Ok(Resolver { inner: Some(inner) })
    }

    /// The addresses of `host` (a name or an IP literal).
    pub async fn lookup_host(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match &self.inner {
            Some(r) => {
                let found = r
                    .lookup_ip(host)
                    .await
                    .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("{host}: {e}")))?;
                let ips: Vec<IpAddr> = found.iter().collect();
                if ips.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{host} has no addresses"),
                    ));
                }
                Ok(ips)
            }
            None => Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| a.ip())
                .collect()),
        }
    }

    /// The first address of `host:port` (`[v6]:port` for IPv6 literals).
    pub async fn resolve(&self, host_port: &str) -> io::Result<SocketAddr> {
        if let Ok(a) = host_port.parse::<SocketAddr>() {
            return Ok(a);
        }
        let (host, port) = host_port.rsplit_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host_port:?} is not host:port"),
            )
        })?;
        let port: u16 = port.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host_port:?} has no valid port"),
            )
        })?;
        let ips = self.lookup_host(host).await?;
        Ok(SocketAddr::new(ips[0], port))
    }
}

/// [`Resolver::resolve`] with the system resolver.
pub async fn resolve(host_port: &str) -> io::Result<SocketAddr> {
    Resolver::system().resolve(host_port).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_skip_dns_and_bad_input_is_an_error() {
        let r = Resolver::system();
        assert_eq!(
            r.resolve("192.0.2.1:80").await.expect("v4"),
            "192.0.2.1:80".parse().expect("addr")
        );
        assert_eq!(
            r.resolve("[2001:db8::1]:443").await.expect("v6"),
            "[2001:db8::1]:443".parse().expect("addr")
        );
        assert!(r.resolve("no-port").await.is_err());
        assert!(r.resolve("host:http").await.is_err());
    }
}
