//! Hand-made Ethernet frames, injected with an AF_PACKET socket.
//!
//! This is how tests send what no socket API produces: VLAN tags (this
//! kernel has no 802.1Q devices, yet its stack accepts VLAN-ID-0 tagged
//! frames), IPv4 options, IPv6 extension header chains, and fragments cut at
//! chosen boundaries (zero-length, overlapping, header-splitting).
//!
//! Packets are built in layers so each can be reused: an [`L4`] segment is
//! placed in an [`Ipv4`] or [`Ipv6`] packet (which computes the IPv4 header
//! checksum and the TCP/UDP checksum over the right pseudo-header), which
//! may be fragmented, and each piece is wrapped in Ethernet (+ tags) by a
//! [`FrameBuilder`]. Checksums are correct, so a receiving kernel accepts
//! the packets exactly as if a real host had sent them; to test a bad
//! checksum, change a byte after building.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{sys, Netns};

mod checksum;
mod ethernet;
mod ipv4;
mod ipv6;
mod l4;

pub use checksum::{checksum, fold, sum16};
pub use ethernet::FrameBuilder;
pub use ipv4::{fragment_ipv4, ipv4_fragment, Ipv4};
pub use ipv6::{fragment_ipv6, ipv6_fragment, ExtHeader, Ipv6};
pub use l4::L4;

/// EtherType values used in tests.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag (C-tag).
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (S-tag, "QinQ").
    pub const QINQ: u16 = 0x88a8;
}

/// IP protocol / IPv6 next-header numbers used in tests.
pub mod proto {
    /// IPv6 Hop-by-Hop options.
    pub const HOPOPT: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 Routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 Fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 No Next Header.
    pub const NONE: u8 = 59;
    /// IPv6 Destination options.
    pub const DSTOPTS: u8 = 60;
}

/// An AF_PACKET socket bound to one interface of a namespace. Frames sent
/// go out of that interface as they are (the peer of a veth receives them).
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl RawSocket {
    /// A send-only socket on `ifname` in `ns` (protocol 0: it receives
    /// nothing, so nothing queues up on it).
    pub fn open(ns: &Netns, ifname: &str) -> Result<Self> {
        Self::open_proto(ns, ifname, 0)
    }

    /// A socket that also receives every frame seen on `ifname`, in and out
    /// (for [`RawSocket::recv_timeout`]).
    pub fn open_capture(ns: &Netns, ifname: &str) -> Result<Self> {
        let sock = Self::open_proto(ns, ifname, libc::ETH_P_ALL as u16)?;
        // Room for a burst of frames read only afterwards (root may exceed
        // rmem_max); a full queue would lose frames silently.
        sys::setsockopt(sock.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16i32 << 20)?;
        Ok(sock)
    }

    /// A capture socket that receives only the frames arriving *on*
    /// `ifname` (`PACKET_IGNORE_OUTGOING`): what the host behind it is
    /// handed, not what it (or a raw socket of the test) sends.
    pub fn open_capture_incoming(ns: &Netns, ifname: &str) -> Result<Self> {
        let sock = Self::open_capture(ns, ifname)?;
        sys::setsockopt(sock.fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1i32)
            .context("PACKET_IGNORE_OUTGOING")?;
        Ok(sock)
    }

    /// Every frame already queued on a capture socket (waits at most
    /// `quiet` for each next one).
    pub fn drain(&self, quiet: Duration) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(f) = self.recv_timeout(quiet)? {
            out.push(f);
        }
        Ok(out)
    }

    fn open_proto(ns: &Netns, ifname: &str, protocol: u16) -> Result<Self> {
        let ifindex = crate::topology::ifindex(ns, ifname)?;
        let fd = ns
            .run(move || sys::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol.to_be())))
            .context("AF_PACKET socket")?;
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex as i32;
        sys::cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        })
        .with_context(|| format!("bind AF_PACKET to {ifname} in {}", ns.name()))?;
        Ok(Self { fd, ifindex })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let n = sys::cvt_size(unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) })
            .context("send raw frame")?;
        if n != frame.len() {
            bail!("sent {n} of {} bytes", frame.len());
        }
        Ok(())
    }

    /// The next frame received within `timeout` (only for
    /// [`RawSocket::open_capture`] sockets), or `None`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            sys::cvt(r)?;
            if r == 0 {
                return Ok(None);
            }
            let n = sys::cvt_size(unsafe {
                libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            });
            match n {
                Ok(n) => return Ok(Some(buf[..n].to_vec())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
