//! The load balancer's XDP program: services in, backends out. It follows
//! `lb_common::balancer_model` rule for rule (the rules are stated there);
//! the differential tests hold the two to the same action and bytes.
//!
//! The hot path reads the headers once ([`parse`]), looks up the service,
//! then hands the packet to [`flow`] (which backend), [`rewrite`] (what the
//! packet becomes) and [`egress`] (where it goes). Anything that is not the
//! balancer's goes on to the next stage by tail call.

mod egress;
mod flow;
mod icmp;
mod parse;
mod rewrite;
mod scratch;
mod too_big;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    balancer::{v4_key, FlowKey, LbCounter, Mode, NatEntry, NatKey, Service, ServiceKey, TrafficStats, NEXT_STAGE_ISOLATOR},
    isolator::FAMILY_V4,
    wire::{IPV4_MIN_HLEN, IPV6_HLEN},
};

use self::{egress::Hop, rewrite::Translation, scratch::Scratch};
use crate::{
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
    s.service = ServiceKey { addr: p.dst, port: p.dport, proto: p.proto, family: p.family };
    // SAFETY: services are replaced whole by user space.
    if let Some(svc) = unsafe { LB_SERVICES.get(&s.service) } {
        return Some(forward(ctx, &pkt, s, svc));
    }
    let g = LB_GLOBALS.get(0)?;
    let inside = if p.family == FAMILY_V4 { v4_key(g.inside_v4) } else { g.inside_v6 };
    if p.dst != inside {
        return None;
    }
    s.nat_key = NatKey { backend: p.src, backend_port: p.sport, nat_port: p.dport, proto: p.proto, family: p.family, _pad: [0; 2] };
    let entry = LB_NAT.get_ptr_mut(&s.nat_key)?;
    Some(reply(&pkt, s, entry))
}

#[inline(always)]
pub(crate) fn count(c: LbCounter) {
    if let Some(v) = LB_COUNTERS.get_ptr_mut(c as u32) {
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

/// A service's packet: finds its backend and sends it there. Not inlined:
/// each helper gets its own stack frame (the whole path inlined exceeds
/// BPF's 512-byte stack).
#[inline(never)]
fn forward(ctx: &XdpContext, pkt: &Packet, s: &mut Scratch, svc: &Service) -> u32 {
    let p = &s.parsed;
    if let Some(c) = parse::unfit(p, pkt.len()) {
        return drop(c);
    }
    let mode = Mode::from_raw(svc.mode).unwrap_or(Mode::Nat);
    if mode == Mode::Nat && p.ttl <= 1 {
        count(LbCounter::TtlExpired);
        return xdp_action::XDP_PASS;
    }
    let Some(g) = LB_GLOBALS.get(0) else {
        return drop(LbCounter::NoBackend);
    };
    let opens = parse::opens_connection(pkt, p);
    s.flow = FlowKey { src: p.src, dst: p.dst, src_port: p.sport, dst_port: p.dport, proto: p.proto, family: p.family, _pad: [0; 2] };
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
    if s.placed.new {
        if mode == Mode::Nat {
            let port = flow::snat_port(pkt, s, g, svc, opens);
            if port == flow::NO_PORT {
                return drop(LbCounter::SnatExhausted);
            }
            if port == flow::TABLE_FULL {
                return drop(LbCounter::NatTableFull);
            }
            s.placed.nat_port = port as u16;
        }
        flow::remember(&s.flow, &s.placed);
    }
    if mode == Mode::Nat {
        let state = parse::end_of_flow(pkt, &s.parsed, false);
        if state != 0 {
            flow::mark_closing(s, svc, state);
        }
    }
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
    let p = &s.parsed;
    let action = match mode {
        Mode::Nat => {
            s.translation = Translation {
                src: if p.family == FAMILY_V4 { v4_key(g.inside_v4) } else { g.inside_v6 },
                dst: s.placed.addr,
                sport: s.placed.nat_port,
                dport: svc.target_port,
            };
            if !rewrite::nat(pkt, p, &s.translation) {
                return drop(LbCounter::Malformed);
            }
            egress::send(pkt, &s.hop, p.ifindex)
        }
        Mode::Dsr => {
            if !rewrite::encapsulate(ctx, p, g, &s.placed.addr) {
                return drop(LbCounter::NoHeadroom);
            }
            egress::send(&Packet::new(ctx), &s.hop, p.ifindex)
        }
        Mode::DsrL2 => egress::send(pkt, &s.hop, p.ifindex),
    };
    match action {
        Ok(action) => {
            let new = s.placed.new;
            count(if new { LbCounter::NewFlow } else { LbCounter::FlowHit });
            if s.placed.refound {
                count(LbCounter::FlowRefound);
            }
            charge(LB_SERVICE_STATS.get_ptr_mut(svc.stats_index), bytes, new);
            charge(LB_BACKEND_STATS.get_ptr_mut(s.placed.id), bytes, new);
            action
        }
        Err(c) => drop(c),
    }
}

/// A `nat`-mode reply: back to the client it belongs to.
#[inline(never)]
fn reply(pkt: &Packet, s: &mut Scratch, entry: *mut NatEntry) -> u32 {
    let p = &s.parsed;
    // SAFETY: points into a live map value; only the clock changes under us.
    let e = unsafe { &*entry };
    if let Some(c) = parse::unfit(p, pkt.len()) {
        return drop(c);
    }
    if p.ttl <= 1 {
        count(LbCounter::TtlExpired);
        return xdp_action::XDP_PASS;
    }
    flow::touch_nat(entry);
    let state = parse::end_of_flow(pkt, p, true);
    // SAFETY: as above; one byte, written in place (the first end wins).
    unsafe {
        if state != 0 && (*entry).closing == 0 {
            (*entry).closing = state;
        }
    }
    s.translation = Translation { src: e.vip, dst: e.client, sport: e.vip_port, dport: e.client_port };
    if !rewrite::nat(pkt, p, &s.translation) {
        return drop(LbCounter::Malformed);
    }
    s.hop = Hop { ifindex: e.ifindex, smac: e.edge_mac, dmac: e.client_mac };
    match egress::send(pkt, &s.hop, p.ifindex) {
        Ok(action) => {
            count(LbCounter::NatReply);
            action
        }
        Err(c) => drop(c),
    }
}
