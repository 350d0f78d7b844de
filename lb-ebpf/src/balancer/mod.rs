//! The load balancer's XDP program: services in, backends out. It follows
//! `lb_common::balancer_model` rule for rule (the rules are stated there);
//! the differential tests hold the two to the same action and bytes.
//!
//! The hot path reads the headers once ([`parse`]), looks up the service,
//! checks the VIP's [`firewall`] if it has rules, then hands the packet
//! to [`flow`] (which backend), [`rewrite`] (what the
//! packet becomes) and [`egress`] (where it goes). Anything that is not the
//! balancer's goes on to the next stage by tail call.

mod dest_mac;
mod egress;
mod firewall;
mod flow;
mod icmp;
mod parse;
mod proxy;
mod rewrite;
mod scratch;
mod too_big;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    balancer::{FlowKey, LbCounter, Mode, NatEntry, NatKey, Service, TrafficStats, NAT_PROXY_ACKED, NEXT_STAGE_ISOLATOR},
    isolator::FAMILY_V4,
    nat_state::{self, Check},
    proxy_protocol::{self, ACK_SHIFT, PREPEND, SHIFT},
    wire::{IPPROTO_TCP, IPV4_MIN_HLEN, IPV6_HLEN},
};

use self::{egress::Hop, rewrite::Translation, scratch::Scratch};
use crate::{
    bytes::copy16,
    maps::{LB_BACKEND_STATS, LB_COUNTERS, LB_GLOBALS, LB_NAT, LB_NEXT_STAGE, LB_SERVICES, LB_SERVICE_STATS},
    packet::Packet,
};

/// The program's entry point.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match decide(ctx) {
        Some(action) => action,
        None => next_stage(ctx),
    }
}

/// Hands the packet to the isolator; without one, to the kernel.
#[inline(always)]
fn next_stage(ctx: &XdpContext) -> u32 {
    // SAFETY: a tail call either does not return or fails harmlessly.
    unsafe { LB_NEXT_STAGE.tail_call(ctx, NEXT_STAGE_ISOLATOR) };
    xdp_action::XDP_PASS
}

/// `None`: not the balancer's packet.
#[inline(always)]
fn decide(ctx: &XdpContext) -> Option<u32> {
    let pkt = Packet::new(ctx);
    let s = scratch::get()?;
    if parse::parse(&pkt, ctx.ingress_ifindex() as u32, &mut s.parsed).is_none() {
        return icmp::handle(ctx, &pkt, s);
    }
    let p = &s.parsed;
    (s.service.port, s.service.proto, s.service.family) = (p.dport, p.proto, p.family);
    copy16(&mut s.service.addr, &s.parsed.dst);
    // SAFETY: services are replaced whole by user space.
    if let Some(svc) = unsafe { LB_SERVICES.get(&s.service) } {
        return Some(forward(ctx, &pkt, s, svc));
    }
    let g = LB_GLOBALS.get(0)?;
    let snat = flow::snat_index(s, g)?;
    let p = &s.parsed;
    s.nat_key = NatKey { backend: p.src, backend_port: p.sport, nat_port: p.dport, proto: p.proto, family: p.family, snat, _pad: 0 };
    let (dport, ifindex) = (p.dport, p.ifindex);
    let entry = LB_NAT.get_ptr_mut(&s.nat_key);
    let snat_port = g.snat_port_min <= dport && dport <= g.snat_port_max;
    if entry.is_none() && !snat_port {
        return None;
    }
    if dest_mac::other_host(&pkt, ifindex) {
        return Some(dest_mac::pass());
    }
    match entry {
        Some(entry) => Some(reply(&pkt, s, entry)),
        // Rule 8b: only a backend's reply may come to a SNAT port.
        None => Some(drop(LbCounter::ForgedReply)),
    }
}

#[inline(always)]
pub(crate) fn count(c: LbCounter) {
    if let Some(v) = LB_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *v += 1 };
    }
}

/// Counts the counter at index `raw`.
#[inline(always)]
fn count_raw(raw: u32) {
    if let Some(v) = LB_COUNTERS.get_ptr_mut(raw) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
pub(crate) fn drop(c: LbCounter) -> u32 {
    count(c);
    xdp_action::XDP_DROP
}

#[inline(always)]
fn charge(stats: Option<*mut TrafficStats>, bytes: u64, new_flow: bool) {
    if let Some(s) = stats {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += u64::from(new_flow);
        }
    }
}

/// A service's packet: finds its backend and sends it there. Not inlined
/// into the entry, which keeps the ICMP and reply paths out of its frame;
/// the helpers of the forwarding path are inlined here (a call costs a
/// frame per packet), except the `nat` state machine and the FIB lookup.
#[inline(never)]
fn forward(ctx: &XdpContext, pkt: &Packet, s: &mut Scratch, svc: &Service) -> u32 {
    let p = &s.parsed;
    if dest_mac::other_host(pkt, p.ifindex) {
        return dest_mac::pass();
    }
    if let Some(c) = parse::unfit(p, pkt.len()) {
        return drop(c);
    }
    // Rule 3b, every packet of a VIP with rules (a deny ends its flows).
    if svc.firewall != 0 {
        if let Some(action) = firewall::check(svc.firewall, p.family, &p.src) {
            return action;
        }
    }
    let mode = Mode::from_raw(svc.mode).unwrap_or(Mode::Nat);
    if mode == Mode::Nat && p.ttl <= 1 {
        count(LbCounter::TtlExpired);
        return xdp_action::XDP_PASS;
    }
    let Some(g) = LB_GLOBALS.get(0) else {
        return drop(LbCounter::NoBackend);
    };
    parse::read_tcp_flags(pkt, &mut s.parsed);
    let p = &s.parsed;
    let opens = parse::opens_connection(p);
    // Field by field: the addresses a word at a time (see `bytes`).
    (s.flow.src_port, s.flow.dst_port, s.flow.proto, s.flow.family, s.flow._pad) = (p.sport, p.dport, p.proto, p.family, [0; 2]);
    copy16(&mut s.flow.src, &s.parsed.src);
    copy16(&mut s.flow.dst, &s.parsed.dst);
    let placed_ok = flow::place(&s.flow, svc, opens, &mut s.placed);
    if s.placed.moved {
        count(LbCounter::FlowMoved);
    }
    if let Err(c) = placed_ok {
        return drop(c);
    }
    // Rule 5b: a new flow from a source that cannot be real here takes nothing.
    if s.placed.new && crate::martian::impossible_source(s.parsed.family, s.parsed.ifindex, &s.parsed.src).is_some() {
        return drop(LbCounter::ImpossibleSource);
    }
    // Rule 7 before any state: nothing is allocated for a packet that
    // cannot leave.
    let bytes = pkt.len() as u64;
    let extra = match mode {
        Mode::Dsr if s.parsed.family == FAMILY_V4 => IPV4_MIN_HLEN,
        Mode::Dsr => IPV6_HLEN,
        _ => 0,
    };
    if let Err(c) = egress::route(ctx, s, extra) {
        if c == LbCounter::TooBig {
            return too_big::answer(ctx, s, extra);
        }
        return drop(c);
    }
    // What the flow table holds for a SYN's 5-tuple is an earlier
    // connection's, and a moved flow's entry is stale: both go.
    if opens || s.placed.moved {
        flow::forget(&s.flow);
    }
    let mut also = 0;
    if mode == Mode::Nat {
        // Here, not in `nat_flow`: a v1 line's length is a call deeper
        // than the stack allows there.
        s.proxy_len = if opens && svc.proxy != 0 { proxy::header_len(svc.proxy, &s.parsed) } else { 0 };
        let r = flow::nat_flow(pkt, s, g, svc, opens);
        if r & flow::NAT_DROP != 0 {
            count_raw(r & flow::NAT_COUNTER);
            return xdp_action::XDP_DROP;
        }
        s.placed.new = r & flow::NAT_NEW != 0;
        also = r & flow::NAT_COUNTER;
    } else if s.placed.new {
        // A SYN is placed, not remembered: a flood of them must not evict
        // established flows. The connection's next packet is placed the
        // same way (the table is deterministic) and stays.
        if !opens {
            flow::remember(&s.flow, &s.placed, 0);
        }
        s.placed.new = opens || s.parsed.proto != IPPROTO_TCP;
    }
    let p = &s.parsed;
    let action = match mode {
        Mode::Nat => {
            s.translation = Translation {
                src: flow::snat_address(g, p.family, s.placed.snat),
                dst: s.placed.addr,
                sport: s.placed.nat_port,
                dport: svc.target_port,
            };
            // Rule 6c: the PROXY protocol header grows the frame.
            let pkt = if s.proxy == PREPEND {
                match proxy::prepend(ctx, s) {
                    Some(grown) => grown,
                    None => return drop(LbCounter::NoHeadroom),
                }
            } else {
                *pkt
            };
            let p = &s.parsed;
            if rewrite::nat(&pkt, p, &s.translation).is_none() {
                return drop(LbCounter::Malformed);
            }
            if s.proxy == SHIFT && proxy::shift_seq(&pkt, p, s.proxy_len).is_none() {
                return drop(LbCounter::Malformed);
            }
            egress::send(&pkt, &s.hop, p.ifindex)
        }
        Mode::Dsr => {
            if rewrite::encapsulate(ctx, p, g, &s.placed.addr).is_none() {
                return drop(LbCounter::NoHeadroom);
            }
            egress::send(&Packet::new(ctx), &s.hop, p.ifindex)
        }
        Mode::DsrL2 => egress::send(pkt, &s.hop, p.ifindex),
    };
    match action {
        Ok(action) => {
            // `new_flow` and `flow_hit` are not counted on their own: the
            // agent reads them from the service's stats (one per-CPU
            // update per packet less; `BalancerMaps::counters`).
            let new = s.placed.new;
            if also != 0 {
                count_raw(also - 1);
            }
            charge(LB_SERVICE_STATS.get_ptr_mut(u32::from(svc.stats_index)), bytes, new);
            charge(LB_BACKEND_STATS.get_ptr_mut(s.placed.id), bytes, new);
            action
        }
        Err(c) => drop(c),
    }
}

/// A `nat`-mode reply: back to the client it belongs to, if it came from
/// where the backend is.
#[inline(never)]
fn reply(pkt: &Packet, s: &mut Scratch, entry: *mut NatEntry) -> u32 {
    let p = &s.parsed;
    // SAFETY: points into a live map value; written in place (the client's
    // side reads it; a torn read costs one RST or FIN its check).
    let e = unsafe { &mut *entry };
    if e.backend_ifindex != 0 && e.backend_ifindex != p.ifindex {
        return drop(LbCounter::ForgedReply);
    }
    if let Some(c) = parse::unfit(p, pkt.len()) {
        return drop(c);
    }
    if p.ttl <= 1 {
        count(LbCounter::TtlExpired);
        return xdp_action::XDP_PASS;
    }
    let mut inexact = false;
    let mut finished = false;
    s.proxy = 0;
    if p.proto == IPPROTO_TCP {
        if !parse::segment(pkt, p, &mut s.seg) {
            return drop(LbCounter::Malformed);
        }
        // Rule 8c, judged before the segment moves the entry.
        s.proxy = proxy_protocol::reply_action(e, &s.seg);
        s.proxy_len = e.proxy_len;
        match nat_state::tcp_reply(e, &s.seg) {
            Check::OutOfWindow => return drop(LbCounter::OutOfWindow),
            Check::Inexact => inexact = true,
            Check::Finish => finished = true,
            // tcp_reply has marked a closing entry.
            Check::Close | Check::Pass => {}
        }
        if s.proxy & ACK_SHIFT != 0 {
            e.state |= NAT_PROXY_ACKED;
        }
    } else {
        nat_state::udp_reply(e);
    }
    flow::touch_nat(e);
    s.translation = Translation { src: e.vip, dst: e.client, sport: e.vip_port, dport: e.client_port };
    s.hop = Hop { ifindex: e.ifindex, smac: e.edge_mac, dmac: e.client_mac };
    if finished {
        s.flow = FlowKey { src: e.client, dst: e.vip, src_port: e.client_port, dst_port: e.vip_port, proto: p.proto, family: p.family, _pad: [0; 2] };
        flow::finish(s);
    }
    if rewrite::nat(pkt, p, &s.translation).is_none() {
        return drop(LbCounter::Malformed);
    }
    if s.proxy != 0 && proxy::reply(pkt, p, s.proxy, s.proxy_len).is_none() {
        return drop(LbCounter::Malformed);
    }
    match egress::send(pkt, &s.hop, p.ifindex) {
        Ok(action) => {
            count(LbCounter::NatReply);
            if inexact {
                count(LbCounter::RstInexact);
            }
            if finished {
                count(LbCounter::NatPortFreed);
            }
            action
        }
        Err(c) => drop(c),
    }
}
