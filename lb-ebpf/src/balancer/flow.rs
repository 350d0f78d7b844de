//! Rules 5 and 6 of the model: which backend a flow goes to, and its SNAT
//! port in `nat` mode.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::{
    balancer::*,
    balancer_model::same_flow,
    maglev::flow_hash,
};

use super::scratch::Scratch;
use crate::{
    maps::{LB_BACKENDS, LB_FLOWS, LB_MAGLEV, LB_NAT},
    packet::Packet,
};

/// A flow's backend.
#[derive(Default)]
pub struct Placed {
    pub id: u32,
    pub generation: u32,
    pub addr: [u8; 16],
    /// 0 outside `nat` mode.
    pub nat_port: u16,
    /// Placed by the Maglev table just now (not remembered yet).
    pub new: bool,
    /// Its previous backend was gone or down.
    pub moved: bool,
    /// A forgotten `nat` flow whose own NAT entry [`snat_port`] found.
    pub refound: bool,
}

/// Finds the flow's backend, or chooses one with the Maglev table, and
/// fills `out`; `Err(counter)` when the packet must be dropped
/// (`out.moved` is set either way). A packet that `opens` a connection
/// is always placed by the table (what the flow table holds for its
/// 5-tuple is an earlier connection's). A new flow is remembered by
/// [`remember`] once it has everything it needs.
#[inline(never)]
pub fn place(key: &FlowKey, svc: &Service, opens: bool, out: &mut Placed) -> Result<(), LbCounter> {
    *out = Placed::default();
    // SAFETY: flow entries are replaced whole.
    if let Some(e) = if opens { None } else { unsafe { LB_FLOWS.get(key) } } {
        if let Some(b) = LB_BACKENDS.get(e.backend) {
            if b.generation == e.generation && b.up == 1 {
                out.id = e.backend;
                out.generation = b.generation;
                out.addr = b.addr;
                out.nat_port = e.nat_port;
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
            out.addr = b.addr;
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
            *out = Placed { id: e.backend, generation: b.generation, addr: b.addr, nat_port: e.nat_port, new: false, moved: false, refound: false };
            true
        }
        _ => false,
    }
}

/// Remembers a newly placed flow.
#[inline(always)]
pub fn remember(key: &FlowKey, placed: &Placed) {
    let entry = FlowEntry { backend: placed.id, generation: placed.generation, nat_port: placed.nat_port, _pad: [0; 2] };
    let _ = LB_FLOWS.insert(key, &entry, 0);
}

/// [`snat_port`] found no free port.
pub const NO_PORT: u32 = u32::MAX;
/// [`snat_port`] found a free port, but the NAT table had no room.
pub const TABLE_FULL: u32 = u32::MAX - 1;

/// `-EEXIST`: another CPU took the key between the lookup and the insert.
const EEXIST: i64 = -17;

/// The flow's SNAT port: its own NAT entry if one survived the flow
/// table's eviction (written afresh if the packet `opens` a connection),
/// else the first free port of the probe sequence; [`NO_PORT`] if all are
/// taken, [`TABLE_FULL`] if the entry of a free one could not be inserted.
#[inline(never)]
pub fn snat_port(pkt: &Packet, s: &mut Scratch, g: &Globals, svc: &Service, opens: bool) -> u32 {
    match find_snat_port(pkt, s, g, svc, opens) {
        Ok(port) => u32::from(port),
        Err(LbCounter::NatTableFull) => TABLE_FULL,
        Err(_) => NO_PORT,
    }
}

#[inline(always)]
fn find_snat_port(pkt: &Packet, s: &mut Scratch, g: &Globals, svc: &Service, opens: bool) -> Result<u16, LbCounter> {
    let (p, backend) = (&s.parsed, &s.placed.addr);
    if g.snat_port_max < g.snat_port_min {
        return Err(LbCounter::SnatExhausted);
    }
    let span = u32::from(g.snat_port_max - g.snat_port_min) + 1;
    let h = flow_hash(&p.src, &p.dst, p.sport, p.dport, p.proto, SNAT_HASH_SEED);
    s.nat_entry = NatEntry {
        client: p.src,
        vip: p.dst,
        client_port: p.sport,
        vip_port: p.dport,
        client_mac: pkt.bytes_at::<6>(6).ok_or(LbCounter::SnatExhausted)?,
        edge_mac: pkt.bytes_at::<6>(0).ok_or(LbCounter::SnatExhausted)?,
        ifindex: p.ifindex,
        closing: 0,
        _pad: [0; 3],
        // SAFETY: helper without side effects.
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    for i in 0..SNAT_PROBES {
        let port = g.snat_port_min + (h.wrapping_add(i) % span) as u16;
        s.nat_key = NatKey { backend: *backend, backend_port: svc.target_port, nat_port: port, proto: p.proto, family: p.family, _pad: [0; 2] };
        // SAFETY: entries are replaced whole.
        match unsafe { LB_NAT.get(&s.nat_key) } {
            Some(e) if same_flow(e, &s.nat_entry) => {
                // A new connection on an earlier one's port: open again,
                // its clock restarted (else the sweep would end it as the
                // earlier, closed one). Anything else found its own entry
                // after the flow table forgot it.
                if opens {
                    let _ = LB_NAT.insert(&s.nat_key, &s.nat_entry, 0);
                } else {
                    s.placed.refound = true;
                }
                return Ok(port);
            }
            Some(_) => continue,
            None => match LB_NAT.insert(&s.nat_key, &s.nat_entry, u64::from(BPF_NOEXIST)) {
                Ok(()) => return Ok(port),
                Err(e) if i64::from(e) == EEXIST => continue,
                // -E2BIG: a preallocated map has no free element left.
                Err(_) => return Err(LbCounter::NatTableFull),
            },
        }
    }
    Err(LbCounter::SnatExhausted)
}

/// Marks the flow's NAT entry closing with `state` (rule 6b: its first
/// FIN or RST passed).
#[inline(never)]
pub fn mark_closing(s: &mut Scratch, svc: &Service, state: u8) {
    let p = &s.parsed;
    s.nat_key = NatKey { backend: s.placed.addr, backend_port: svc.target_port, nat_port: s.placed.nat_port, proto: p.proto, family: p.family, _pad: [0; 2] };
    if let Some(e) = LB_NAT.get_ptr_mut(&s.nat_key) {
        // SAFETY: points into a live map value; one byte, written in place.
        unsafe {
            if (*e).closing == 0 {
                (*e).closing = state;
            }
        }
    }
}

/// Refreshes a NAT entry's idle clock (at most once per
/// [`NAT_TOUCH_INTERVAL_NS`], to keep writes off the hot path). Only the
/// aligned 8-byte clock is written in place; the agent's sweep only reads it.
#[inline(always)]
pub fn touch_nat(e: *mut NatEntry) {
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `e` points into a live map value.
    unsafe {
        if now.wrapping_sub((*e).last_seen_ns) >= NAT_TOUCH_INTERVAL_NS {
            (*e).last_seen_ns = now;
        }
    }
}
