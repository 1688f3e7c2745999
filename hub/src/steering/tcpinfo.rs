//! The kernel's smoothed RTT of a TCP connection (`getsockopt(TCP_INFO)`, Linux). Right after
//! `accept` it is the handshake's RTT: one free latency sample per API connection.
//!
//! One of the workspace's two places with `unsafe` (the other is `spoke::malloc`): no safe
//! wrapper of `TCP_INFO` exists in our dependencies.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// `tcpi_rtt` in microseconds, or `None` when the kernel does not say.
pub fn rtt_us(socket: &impl AsRawFd) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `tcp_info` is plain old data (integers only), so all-zero bytes are a valid
        // value; `getsockopt` writes at most `len` bytes into it and reports how many.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: the pointer and length describe `info`, which outlives the call; the fd is
        // borrowed from a live socket.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast::<libc::c_void>(),
                &mut len,
            )
        };
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_rtt) + std::mem::size_of::<u32>();
        (rc == 0 && len as usize >= needed && info.tcpi_rtt > 0).then_some(info.tcpi_rtt)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_loopback_connection_has_a_small_rtt() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let rtt = super::rtt_us(&s).expect("an RTT");
        assert!(rtt < 50_000, "{rtt} µs on loopback");
        drop(c);
    }
}
