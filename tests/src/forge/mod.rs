//! Forged packets against the balancer's `nat` state, sent the way an
//! attacker on a segment would: raw frames out of an interface of a
//! namespace (an [`Attacker`]), built by [`frames`], checked on arrival at
//! the edge ([`Witness`]), and read back where they must not show up
//! ([`wire`]).
//!
//! [`lab`] is the edge lab the forged-packet tests run in, with servers the
//! test holds both ends of ([`conn`]), so that "the connection lives" is
//! checked byte for byte at both ends rather than inferred from a counter.

pub mod conn;
pub mod frames;
pub mod lab;
pub mod wire;

use std::{
    net::IpAddr,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    netns::{link_stats, LinkStats},
    rawframe::{FrameBuilder, RawSocket, L4},
    topology::mac,
    Netns,
};

/// Raw frames out of one interface: what anyone on that segment can send.
pub struct Attacker {
    sock: RawSocket,
    eth: FrameBuilder,
    /// Where it sends from (for messages).
    pub at: String,
}

impl Attacker {
    /// Sends out of `ifname` in `ns`, to `dst_mac` (the edge's interface on
    /// that segment), from the interface's own MAC (so switches do not
    /// learn a stolen address).
    pub fn on(ns: &Netns, ifname: &str, dst_mac: [u8; 6]) -> Result<Self> {
        let src_mac = mac(ns, ifname)?;
        let sock = RawSocket::open(ns, ifname)?;
        Ok(Self { sock, eth: FrameBuilder::new(src_mac, dst_mac), at: format!("{}:{ifname}", ns.name()) })
    }

    /// The frame of `l4` from `src` to `dst` (plain IPv4 / IPv6 header).
    pub fn frame(&self, src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
        self.eth.ip_l4(src, dst, l4, |_| {}, |_| {})
    }

    /// Sends the frames of `segments` (all from `src` to `dst`), paced in
    /// bursts of [`BURST`] so that no queue between here and the edge's XDP
    /// program overflows (a veth's XDP ring holds 256 frames, a CPU's
    /// backlog 1000). Returns how many were sent.
    pub fn send_all(&self, src: IpAddr, dst: IpAddr, segments: impl IntoIterator<Item = L4>) -> Result<u64> {
        let mut n = 0u64;
        for l4 in segments {
            self.sock.send(&self.frame(src, dst, &l4)).with_context(|| format!("raw send from {}", self.at))?;
            n += 1;
            if n.is_multiple_of(BURST) {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(n)
    }
}

/// Frames an [`Attacker`] sends back to back.
pub const BURST: u64 = 64;

/// Proof that forged frames reached the edge's XDP program: the receiving
/// interface's counters before and after. A forging test whose frames were
/// lost on the way would pass without testing anything.
pub struct Witness {
    ns: Netns,
    ifname: String,
    before: LinkStats,
}

impl Witness {
    /// Starts watching `ifname` in `ns`.
    pub fn start(ns: &Netns, ifname: &str) -> Self {
        let before = link_stats(ns, ifname).expect("link counters");
        Self { ns: ns.clone(), ifname: ifname.to_owned(), before }
    }

    /// Panics unless at least `sent` frames arrived (other traffic may add
    /// to the count) and none were lost on receive.
    pub fn saw_at_least(&self, sent: u64, what: &str) {
        let after = link_stats(&self.ns, &self.ifname).expect("link counters");
        let got = after.rx_packets - self.before.rx_packets;
        let lost = after.rx_dropped - self.before.rx_dropped;
        assert!(
            got >= sent && lost == 0,
            "{what}: {sent} frames sent, {got} reached {}'s XDP program, {lost} lost on receive: the test did not test",
            self.ifname
        );
    }
}
