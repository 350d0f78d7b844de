//! The flood's frames: a template per (family, protocol) built once with
//! [`crate::rawframe`], then per frame a forged source address, a random
//! source port, one of the target ports, a random sequence number (TCP),
//! and the IPv4 header and TCP/UDP checksums computed again. Rewriting a
//! batch costs far less than sending it, so the sender's rate is the
//! kernel's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::{rngs::SmallRng, RngCore, SeedableRng};

use crate::rawframe::{fold, sum16, FrameBuilder, L4};

/// What a flood frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TCP SYN (no options), as a SYN flood sends it.
    Syn,
    /// A UDP datagram whose payload no service answers.
    Udp,
}

/// Bytes every frame slot holds (the largest frame: IPv6 + UDP + payload).
pub const SLOT: usize = 128;
/// The UDP flood's payload: garbage to the service ([`crate::flood::UdpService`]
/// answers only requests that start with its magic).
const UDP_GARBAGE: &[u8] = b"\x00\x01flood-garbage-not-a-request";
const ETH: usize = 14;

/// The flood's generator: `rand`'s small fast one, seeded from the spec so
/// that a run is reproducible (a flood needs variety, not secrecy).
pub type Rng = SmallRng;

/// The generator for `seed`.
pub fn rng(seed: u64) -> Rng {
    SmallRng::seed_from_u64(seed)
}

/// A forged IPv4 source that could be a real host on the internet: unicast,
/// none of the special-use ranges (RFC 6890: private, loopback, link-local,
/// shared, benchmarking, documentation — so never the test's own
/// 198.51.100.0/24, 203.0.113.0/24 or 10.0.0.0/8). A balancer that drops
/// bogons must not be able to tell these from real clients.
pub fn forged_v4(rng: &mut Rng) -> Ipv4Addr {
    loop {
        let a = Ipv4Addr::from(rng.next_u32());
        let [o0, o1, o2, _] = a.octets();
        let special = o0 == 0
            || o0 == 10
            || o0 == 127
            || o0 >= 224
            || (o0 == 100 && (64..128).contains(&o1))
            || (o0 == 169 && o1 == 254)
            || (o0 == 172 && (16..32).contains(&o1))
            || (o0 == 192 && o1 == 168)
            || (o0 == 192 && o1 == 0 && (o2 == 0 || o2 == 2))
            || (o0 == 192 && o1 == 88 && o2 == 99)
            || (o0 == 198 && (o1 == 18 || o1 == 19))
            || (o0 == 198 && o1 == 51 && o2 == 100)
            || (o0 == 203 && o1 == 0 && o2 == 113);
        if !special {
            return a;
        }
    }
}

/// A forged IPv6 source in global unicast (2000::/3) outside the special
/// ranges (2001::/23 — Teredo, benchmarking, ORCHID, and 2001:db8::/32, the
/// documentation prefix the test's own addresses use — and 6to4's 2002::/16).
pub fn forged_v6(rng: &mut Rng) -> Ipv6Addr {
    loop {
        let hi = (rng.next_u64() & !(0xe000u64 << 48)) | (0x2000u64 << 48);
        let a = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(rng.next_u64()));
        let s = a.segments();
        let special = (s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8)) || s[0] == 0x2002;
        if !special {
            return a;
        }
    }
}

/// One (family, kind) template and where its variable fields are.
#[derive(Clone, Debug)]
pub struct Template {
    frame: Vec<u8>,
    v6: bool,
    kind: Kind,
    /// Offset of the transport header.
    l4: usize,
}

impl Template {
    /// A frame from `macs` (source, destination) to `dst` (a VIP) carrying
    /// `kind`; source and ports are filled in by [`Template::write`].
    pub fn new(macs: ([u8; 6], [u8; 6]), dst: IpAddr, kind: Kind) -> Self {
        let l4 = match kind {
            Kind::Syn => L4::Tcp { sport: 0, dport: 0, seq: 0, ack: 0, flags: 0x02, window: 64240, payload: Vec::new() },
            Kind::Udp => L4::udp(0, 0, UDP_GARBAGE),
        };
        let src = match dst {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2a00, 0, 0, 0, 0, 0, 0, 1)),
        };
        let frame = FrameBuilder::new(macs.0, macs.1).ip_l4(src, dst, &l4, |_| {}, |_| {});
        assert!(frame.len() <= SLOT, "a flood frame fits its slot");
        let v6 = dst.is_ipv6();
        Self { frame, v6, kind, l4: ETH + if v6 { 40 } else { 20 } }
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Whether the template is empty (never: a frame has headers).
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// Writes a fresh frame into `out` (at least [`Template::len`] bytes):
    /// a forged source, a random source port, `dport`, a random sequence
    /// number and IPv4 ID, correct checksums.
    pub fn write(&self, out: &mut [u8], rng: &mut Rng, dport: u16) {
        let out = &mut out[..self.frame.len()];
        out.copy_from_slice(&self.frame);
        let r = rng.next_u64();
        // Ports below 1024 are rare as client ports; any other is fine.
        let sport = 1024 + (r as u16 % (65535 - 1024));
        let l4 = self.l4;
        out[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        out[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
        let l4_len = out.len() - l4;
        // The pseudo-header: addresses, protocol, length.
        let mut acc;
        if self.v6 {
            out[ETH + 8..ETH + 24].copy_from_slice(&forged_v6(rng).octets());
            acc = sum16(&out[ETH + 8..ETH + 40], 0);
        } else {
            out[ETH + 4..ETH + 6].copy_from_slice(&((r >> 16) as u16).to_be_bytes());
            out[ETH + 12..ETH + 16].copy_from_slice(&forged_v4(rng).octets());
            out[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
            let c = fold(sum16(&out[ETH..ETH + 20], 0));
            out[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
            acc = sum16(&out[ETH + 12..ETH + 20], 0);
        }
        let protocol = match self.kind {
            Kind::Syn => 6u32,
            Kind::Udp => 17,
        };
        acc += protocol + l4_len as u32;
        match self.kind {
            Kind::Syn => {
                out[l4 + 4..l4 + 8].copy_from_slice(&((r >> 32) as u32).to_be_bytes());
                out[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
                let c = fold(sum16(&out[l4..], acc));
                out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
            }
            Kind::Udp => {
                out[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
                let mut c = fold(sum16(&out[l4..], acc));
                if c == 0 {
                    c = 0xffff;
                }
                out[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rawframe::{Ipv4, Ipv6};

    /// A rewritten frame equals the one the harness' builders make from the
    /// same fields: the incremental rewrite keeps every checksum right.
    #[test]
    fn rewritten_frames_equal_freshly_built_ones() {
        let macs = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let dsts: [IpAddr; 2] = ["203.0.113.10".parse().unwrap(), "2001:db8:10::10".parse().unwrap()];
        let mut rng = rng(7);
        for dst in dsts {
            for kind in [Kind::Syn, Kind::Udp] {
                let t = Template::new(macs, dst, kind);
                for _ in 0..200 {
                    let mut out = [0u8; SLOT];
                    t.write(&mut out, &mut rng, 443);
                    let f = &out[..t.len()];
                    let l4 = t.l4;
                    let sport = u16::from_be_bytes([f[l4], f[l4 + 1]]);
                    let l4_want = match kind {
                        Kind::Syn => L4::Tcp {
                            sport,
                            dport: 443,
                            seq: u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().unwrap()),
                            ack: 0,
                            flags: 0x02,
                            window: 64240,
                            payload: Vec::new(),
                        },
                        Kind::Udp => L4::udp(sport, 443, UDP_GARBAGE),
                    };
                    let b = FrameBuilder::new(macs.0, macs.1);
                    let want = match dst {
                        IpAddr::V4(d) => {
                            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&f[26..30]).unwrap());
                            let mut h = Ipv4::new(src, d);
                            h.id = u16::from_be_bytes([f[18], f[19]]);
                            b.ipv4(&h.packet(&l4_want))
                        }
                        IpAddr::V6(d) => {
                            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
                            b.ipv6(&Ipv6::new(src, d).packet(&l4_want))
                        }
                    };
                    assert_eq!(f, &want[..], "{dst} {kind:?}");
                    assert!(sport >= 1024);
                }
            }
        }
    }

    #[test]
    fn forged_sources_avoid_special_ranges_and_vary() {
        let mut rng = rng(1);
        let v4: Vec<Ipv4Addr> = (0..20_000).map(|_| forged_v4(&mut rng)).collect();
        for a in &v4 {
            assert!(!a.is_private() && !a.is_loopback() && !a.is_multicast() && !a.is_documentation() && !a.is_link_local(), "{a}");
        }
        let distinct: std::collections::HashSet<_> = v4.iter().collect();
        assert!(distinct.len() > 19_900);
        for _ in 0..20_000 {
            let a = forged_v6(&mut rng);
            assert_eq!(a.segments()[0] >> 13, 1, "2000::/3: {a}");
            assert!(!(a.segments()[0] == 0x2001 && a.segments()[1] == 0xdb8), "{a}");
        }
    }
}
