//! Per-CPU scratch space for one packet's working state. The whole path's
//! structs on the stack would exceed BPF's 512-byte limit (the verifier
//! adds up the frames of a call chain); XDP never runs twice at once on
//! one CPU, so one slot per CPU is enough. Every field is written before
//! it is read for each packet.

use aya_ebpf::{bindings::bpf_fib_lookup, macros::map, maps::PerCpuArray};
use lb_common::{
    balancer::{FlowKey, NatEntry, NatKey, ServiceKey, SnatAddrKey},
    nat_state::Segment,
    proxy_protocol::V1_BUF,
};

use super::{egress::Hop, flow::Placed, icmp::IcmpError, parse::Parsed, proxy::TCP_MAX_HLEN, rewrite::Translation};

/// One packet's working state.
pub struct Scratch {
    pub parsed: Parsed,
    /// The TCP header fields the NAT state reads (read when needed).
    pub seg: Segment,
    pub service: ServiceKey,
    pub flow: FlowKey,
    pub placed: Placed,
    pub hop: Hop,
    pub translation: Translation,
    pub nat_key: NatKey,
    pub snat_key: SnatAddrKey,
    pub nat_entry: NatEntry,
    /// The PROXY protocol: what this `nat` packet becomes
    /// (`proxy_protocol::client_action` forward, `reply_action` bits on
    /// a reply; 0: nothing), and the header's length (for a SYN, the one
    /// its new NAT entry gets; else the entry's).
    pub proxy: u8,
    pub proxy_len: u8,
    /// A PROXY protocol v1 line as it is written into the packet.
    pub proxy_text: [u8; V1_BUF],
    /// The TCP header of a segment an odd-length line goes into, for its
    /// checksum.
    pub proxy_tcp_header: [u8; TCP_MAX_HLEN],
    pub fib: bpf_fib_lookup,
    pub icmp: IcmpError,
    /// Quoted addresses before and after an ICMP error's translation.
    pub quoted_old: [u8; 32],
    pub quoted_new: [u8; 32],
}

/// Not pinned: it holds nothing across packets.
#[map]
static LB_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch space.
#[inline(always)]
pub fn get() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU slot; XDP does not nest on a CPU, so nobody else
    // holds it while this packet is processed.
    LB_SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *s })
}
