//! Rule 2a of the model: only frames addressed to the receiving
//! interface's own MAC are balanced. On a bridged or promiscuous port the
//! program also sees frames for the neighbours on the segment (and
//! broadcast and multicast frames reach every host); balancing those too
//! would answer for a neighbour, or send one client's packet to a backend
//! once per edge that saw it.

use aya_ebpf::bindings::xdp_action;
use lb_common::balancer::LbCounter;

use super::count;
use crate::{bytes::eq6, maps::LB_IF_MACS, packet::{Macs, Packet}};

/// Whether the frame is addressed elsewhere than the MAC the agent wrote
/// for `ifindex`; an interface without one is not checked. One inlined
/// array lookup and two word compares.
#[inline(always)]
pub fn other_host(pkt: &Packet, ifindex: u32) -> bool {
    let Some(m) = LB_IF_MACS.get(ifindex) else { return false };
    if m.known == 0 {
        return false;
    }
    !pkt.header::<Macs>(0).is_some_and(|macs| eq6(&macs.dst, &m.mac))
}

/// The verdict for such a frame: the kernel's, counted.
#[inline(always)]
pub fn pass() -> u32 {
    count(LbCounter::OtherHost);
    xdp_action::XDP_PASS
}
