//! Rules 5 and 6 of the model: which backend a flow goes to, and in `nat`
//! mode its SNAT port and what its packets do to its NAT entry.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::{
    balancer::*,
    maglev::flow_hash,
    nat_state::{self, Check, Segment},
    isolator::FAMILY_V4,
    proxy_protocol,
    wire::{IPPROTO_TCP, TCP_FIN, TCP_RST},
};

use super::{parse, scratch::Scratch};
use crate::{
    bytes::{copy16, eq16, word},
    maps::{LB_BACKENDS, LB_FLOWS, LB_MAGLEV, LB_NAT, LB_SNAT_INDEX, LB_SNAT_POOL},
    packet::{Macs, Packet},
};

/// A flow's backend.
#[derive(Default)]
pub struct Placed {
    pub id: u32,
    pub generation: u32,
    pub addr: [u8; 16],
    /// 0 outside `nat` mode.
    pub nat_port: u16,
    /// The SNAT address's index in [`SnatPool`]; 0 outside `nat` mode.
    pub snat: u8,
    /// Placed by the Maglev table just now (not remembered); once the
    /// flow's state is settled, whether it counts as a new flow.
    pub new: bool,
    /// Its previous backend was gone or down.
    pub moved: bool,
    /// The flow table marks it closing ([`FLOW_CLOSING`]).
    pub closing: bool,
    /// The flow's backend gets a PROXY protocol header ([`FLOW_PROXY`]).
    pub proxy: bool,
}

/// Finds the flow's backend, or chooses one with the Maglev table, and
/// fills `out`; `Err(counter)` when the packet must be dropped
/// (`out.moved` is set either way). A packet that `opens` a connection
/// is always placed by the table (what the flow table holds for its
/// 5-tuple is an earlier connection's). Whether a placed flow is
/// remembered is the caller's to decide (rule 5).
#[inline(always)]
pub fn place(key: &FlowKey, svc: &Service, opens: bool, out: &mut Placed) -> Result<(), LbCounter> {
    // Field by field, not `Placed::default()`: LLVM makes that a call
    // of a byte loop (see `bytes`). `id`, `generation` and `addr` are
    // written on success, and nothing reads them after an error.
    out.nat_port = 0;
    out.snat = 0;
    out.new = false;
    out.moved = false;
    out.closing = false;
    out.proxy = false;
    // SAFETY: flow entries are replaced whole.
    if let Some(e) = if opens { None } else { unsafe { LB_FLOWS.get(key) } } {
        if let Some(b) = LB_BACKENDS.get(e.backend) {
            if b.generation == e.generation && b.up == 1 {
                out.id = e.backend;
                out.generation = b.generation;
                copy16(&mut out.addr, &b.addr);
                out.nat_port = e.nat_port;
                out.snat = e.snat;
                out.closing = e.flags & FLOW_CLOSING != 0;
                out.proxy = e.flags & FLOW_PROXY != 0;
                return Ok(());
            }
        }
        out.moved = true;
    }
    let h = flow_hash(&key.src, &key.dst, key.src_port, key.dst_port, key.proto, BACKEND_HASH_SEED);
    let size = if svc.table_size == 0 { 1 } else { svc.table_size };
    let id = match LB_MAGLEV.get(svc.table_base.wrapping_add(h % size)) {
        Some(&id) if id != NO_BACKEND => id,
        _ => return Err(LbCounter::NoBackend),
    };
    match LB_BACKENDS.get(id) {
        Some(b) if b.up == 1 => {
            out.id = id;
            out.generation = b.generation;
            copy16(&mut out.addr, &b.addr);
            out.new = true;
            Ok(())
        }
        _ => Err(LbCounter::NoBackend),
    }
}

/// Fills `out` with a known flow's backend, if it is still there and up;
/// never places a flow.
#[inline(always)]
pub fn known(key: &FlowKey, out: &mut Placed) -> bool {
    // SAFETY: flow entries are replaced whole.
    let Some(e) = (unsafe { LB_FLOWS.get(key) }) else { return false };
    match LB_BACKENDS.get(e.backend) {
        Some(b) if b.generation == e.generation && b.up == 1 => {
            *out = Placed { id: e.backend, generation: b.generation, addr: b.addr, nat_port: e.nat_port, snat: e.snat, ..Placed::default() };
            true
        }
        _ => false,
    }
}

/// Remembers a placed flow, with [`FlowEntry::flags`] `flags`.
#[inline(always)]
pub fn remember(key: &FlowKey, placed: &Placed, flags: u8) {
    let entry = FlowEntry { backend: placed.id, generation: placed.generation, nat_port: placed.nat_port, flags, snat: placed.snat };
    let _ = LB_FLOWS.insert(key, &entry, 0);
}

/// Forgets a flow: a SYN's 5-tuple is a new connection, and what the
/// table holds for it is an earlier one's.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let _ = LB_FLOWS.remove(key);
}

/// What [`nat_flow`] returns: a drop counter with [`NAT_DROP`] set, or
/// the extra counter plus one in the low byte (0: none), with [`NAT_NEW`]
/// set for a new flow.
pub const NAT_DROP: u32 = 1 << 16;
/// See [`NAT_DROP`].
pub const NAT_NEW: u32 = 1 << 17;
/// The counter in [`nat_flow`]'s answer.
pub const NAT_COUNTER: u32 = 0xff;

#[inline(always)]
fn forwarded(new: bool, extra: Option<LbCounter>) -> u32 {
    (if new { NAT_NEW } else { 0 }) | extra.map_or(0, |c| c as u32 + 1)
}

#[inline(always)]
fn dropped(c: LbCounter) -> u32 {
    NAT_DROP | c as u32
}

/// Rules 6 and 6b and the proof (`lb_common::nat_state`) for a `nat`
/// packet whose backend and route are known: its SNAT port (into
/// `s.placed.nat_port`) and what it does to its NAT entry. A remembered
/// flow reads its entry only for a RST or FIN, or while it is closing (a
/// client FIN marks it so); any other flow probes the
/// SNAT ports for its own entry, a free port, or (none free) an unproven
/// entry to reclaim, and a proven flow found by probing is remembered.
/// Not inlined: the map-value pointer must stay in this frame.
#[inline(never)]
pub fn nat_flow(pkt: &Packet, s: &mut Scratch, g: &Globals, svc: &Service, opens: bool) -> u32 {
    let tcp = s.parsed.proto == IPPROTO_TCP;
    s.proxy = proxy_protocol::UNCHANGED;
    // The established path: a remembered flow's packet needs its entry only
    // for a RST or FIN, or while the flow is closing or has a PROXY
    // header, and its flags alone say so (read once by `forward`; the
    // fixed TCP header is whole: `parse::unfit`).
    if !s.placed.new && (!tcp || (!s.placed.closing && !s.placed.proxy && s.parsed.tcp_flags & (TCP_RST | TCP_FIN) == 0)) {
        return forwarded(false, None);
    }
    if tcp && !parse::segment(pkt, &s.parsed, &mut s.seg) {
        return dropped(LbCounter::Malformed);
    }
    if !s.placed.new {
        s.nat_key = nat_key(s, svc, s.placed.nat_port, s.placed.snat);
        let Some(e) = LB_NAT.get_ptr_mut(&s.nat_key) else { return forwarded(false, None) };
        // SAFETY: points into a live map value.
        let e = unsafe { &mut *e };
        as_backend_gets_it(s, e);
        let (check, _) = nat_state::tcp_client(e, &s.seg);
        let extra = match apply_client_check(e, &s.seg, check) {
            Ok(extra) => extra,
            Err(c) => return dropped(c),
        };
        if check == Check::Finish {
            finish(s);
        } else if !s.placed.closing && e.closing != 0 {
            remember(&s.flow, &s.placed, e.flow_flags());
        }
        return forwarded(false, extra);
    }
    let p = &s.parsed;
    if g.snat_port_max < g.snat_port_min {
        return dropped(LbCounter::SnatExhausted);
    }
    let span = u32::from(g.snat_port_max - g.snat_port_min) + 1;
    let slots = span * LB_SNAT_POOL.get(0).map_or(1, |pool| pool.count(s.parsed.family));
    let h = flow_hash(&p.src, &p.dst, p.sport, p.dport, p.proto, SNAT_HASH_SEED);
    let Some(macs) = pkt.header::<Macs>(0) else {
        return dropped(LbCounter::Malformed);
    };
    let (client_mac, edge_mac) = (macs.src, macs.dst);
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    s.nat_entry = NatEntry {
        client: p.src,
        vip: p.dst,
        client_port: p.sport,
        vip_port: p.dport,
        client_mac,
        edge_mac,
        ifindex: p.ifindex,
        closing: 0,
        state: if opens { NAT_OPENED_BY_SYN } else { 0 },
        backend_wscale: 0,
        proxy_len: if opens && tcp { s.proxy_len } else { 0 },
        last_seen_ns: now,
        backend_ifindex: s.hop.ifindex,
        backend_next: 0,
        backend_ack: 0,
        backend_win: 0,
    };
    let mut reclaim = NO_RECLAIM;
    let mut full = false;
    for i in 0..SNAT_PROBES {
        let x = h.wrapping_add(i) % slots;
        let (port, snat) = (g.snat_port_min + (x % span) as u16, (x / span) as u8);
        s.nat_key = nat_key(s, svc, port, snat);
        // A SYN tries the insert first: its first probed port is nearly
        // always free, and a lookup before the insert would walk the
        // bucket twice. Only a taken port (or a full table) needs the
        // entry read, the same as the model's order decides.
        if opens && !full {
            match LB_NAT.insert(&s.nat_key, &s.nat_entry, u64::from(BPF_NOEXIST)) {
                Ok(()) => {
                    s.placed.nat_port = port;
                    s.placed.snat = snat;
                    return forwarded(true, None);
                }
                Err(e) if i64::from(e) == EEXIST => {}
                Err(_) => full = true,
            }
        }
        match LB_NAT.get_ptr_mut(&s.nat_key) {
            Some(e) => {
                // SAFETY: points into a live map value.
                let e = unsafe { &mut *e };
                if e.same_flow(&s.nat_entry) {
                    s.placed.nat_port = port;
                    s.placed.snat = snat;
                    if opens {
                        // A new connection on an earlier one's port: its
                        // entry written afresh.
                        let _ = LB_NAT.insert(&s.nat_key, &s.nat_entry, 0);
                        return forwarded(true, None);
                    }
                    s.placed.new = false;
                    return own_entry(s, e, tcp);
                }
                if reclaim == NO_RECLAIM && nat_state::reclaimable(e, now) {
                    reclaim = x;
                }
            }
            // A SYN's insert has answered for this port (gone again since:
            // another CPU's finish; the next port will do).
            None if full || opens => {}
            None => match LB_NAT.insert(&s.nat_key, &s.nat_entry, u64::from(BPF_NOEXIST)) {
                Ok(()) => {
                    s.placed.nat_port = port;
                    s.placed.snat = snat;
                    return forwarded(true, None);
                }
                Err(e) if i64::from(e) == EEXIST => continue,
                // -E2BIG: a preallocated map has no free element left;
                // an unproven entry further on may still be taken over.
                Err(_) => full = true,
            },
        }
    }
    if reclaim == NO_RECLAIM {
        return dropped(if full { LbCounter::NatTableFull } else { LbCounter::SnatExhausted });
    }
    s.placed.nat_port = g.snat_port_min + (reclaim % span) as u16;
    s.placed.snat = (reclaim / span) as u8;
    s.nat_key = nat_key(s, svc, s.placed.nat_port, s.placed.snat);
    let _ = LB_NAT.insert(&s.nat_key, &s.nat_entry, 0);
    forwarded(true, Some(LbCounter::HalfOpenReclaimed))
}

/// No unproven entry to reclaim was found.
const NO_RECLAIM: u32 = u32::MAX;

#[inline(always)]
fn nat_key(s: &Scratch, svc: &Service, port: u16, snat: u8) -> NatKey {
    NatKey { backend: s.placed.addr, backend_port: svc.target_port, nat_port: port, proto: s.parsed.proto, family: s.parsed.family, snat, _pad: 0 }
}

/// SNAT address `index` of `family`: the inside address for 0 (or a pool
/// never written), else the pool's.
#[inline(always)]
pub fn snat_address(g: &Globals, family: u8, index: u8) -> [u8; 16] {
    if index != 0 {
        if let Some(pool) = LB_SNAT_POOL.get(0) {
            return pool.address(family, index);
        }
    }
    g.inside(family)
}

/// The index of the parsed packet's destination among its family's SNAT
/// addresses: 0 for the inside address, `None` if it is none of them. Not
/// inlined: the key stays out of the caller's frame.
#[inline(never)]
pub fn snat_index(s: &mut Scratch, g: &Globals) -> Option<u8> {
    let p = &s.parsed;
    // A v4 address key's last twelve bytes are zero.
    let inside = if p.family == FAMILY_V4 { word(&p.dst) == word(&g.inside_v4) } else { eq16(&p.dst, &g.inside_v6) };
    if inside {
        return Some(0);
    }
    // Only the inside address: nothing else is in the index. Most packets
    // that are not a VIP's stop here, without a hash lookup.
    if LB_SNAT_POOL.get(0).map_or(1, |pool| pool.count(p.family)) <= 1 {
        return None;
    }
    s.snat_key = SnatAddrKey { addr: p.dst, family: p.family, _pad: [0; 3] };
    // SAFETY: plain data, replaced whole by user space.
    unsafe { LB_SNAT_INDEX.get(&s.snat_key) }.map(|&i| i as u8)
}

/// A flow's packet found its own entry by probing: the proof, the close
/// check, and the flow table for a proven flow.
#[inline(always)]
fn own_entry(s: &mut Scratch, e: &mut NatEntry, tcp: bool) -> u32 {
    if tcp {
        as_backend_gets_it(s, e);
    }
    let (check, proves) = if tcp { nat_state::tcp_client(e, &s.seg) } else { (Check::Pass, false) };
    if proves {
        e.state |= NAT_PROVEN;
    }
    let mut extra = match apply_client_check(e, &s.seg, check) {
        Ok(extra) => extra,
        Err(c) => return dropped(c),
    };
    if check == Check::Finish {
        finish(s);
    } else if nat_state::proven(e) {
        extra = Some(if e.state & NAT_REMEMBERED != 0 { LbCounter::FlowRefound } else { LbCounter::FlowProven });
        e.state |= NAT_REMEMBERED;
        remember(&s.flow, &s.placed, e.flow_flags());
    }
    forwarded(false, extra)
}

/// Rule 6c: the client's segment (`s.seg`) as the backend gets it, and
/// its PROXY protocol action into `s.proxy` (`s.proxy_len`).
#[inline(always)]
fn as_backend_gets_it(s: &mut Scratch, e: &NatEntry) {
    s.proxy = proxy_protocol::client_action(e, &s.seg);
    s.proxy_len = e.proxy_len;
    proxy_protocol::translated(&mut s.seg, s.proxy, e.proxy_len);
}

/// Frees a finished connection's SNAT port: its NAT entry (at
/// `s.nat_key`) and its flow (`s.flow`) go. Nothing may read the entry
/// afterwards: a preallocated map hands the element to the next insert.
#[inline(always)]
pub fn finish(s: &Scratch) {
    let _ = LB_NAT.remove(&s.nat_key);
    forget(&s.flow);
}

/// Applies a client segment's check to its entry (in place): the drop
/// counter, or the extra counter of a forwarded packet. A finished
/// connection's entry is the caller's to remove ([`finish`]).
#[inline(always)]
fn apply_client_check(e: &mut NatEntry, seg: &Segment, check: Check) -> Result<Option<LbCounter>, LbCounter> {
    match check {
        Check::OutOfWindow => Err(LbCounter::OutOfWindow),
        Check::Inexact => Ok(Some(LbCounter::RstInexact)),
        Check::Finish => Ok(Some(LbCounter::NatPortFreed)),
        Check::Close => {
            nat_state::client_fin(e, seg);
            Ok(None)
        }
        Check::Pass => Ok(None),
    }
}

/// `-EEXIST`: another CPU took the key between the lookup and the insert.
const EEXIST: i64 = -17;

/// Refreshes a NAT entry's idle clock (at most once per
/// [`NAT_TOUCH_INTERVAL_NS`], to keep writes off the hot path). Only the
/// aligned 8-byte clock is written in place; the agent's sweep only reads
/// it. An unproven entry keeps its creation time: its short life runs
/// from there.
#[inline(always)]
pub fn touch_nat(e: &mut NatEntry) {
    if !nat_state::proven(e) {
        return;
    }
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(e.last_seen_ns) >= NAT_TOUCH_INTERVAL_NS {
        e.last_seen_ns = now;
    }
}
