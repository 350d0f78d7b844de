//! What a TCP segment or a UDP datagram of a `nat` flow does to its NAT
//! entry: the sequence window the entry has seen, whether a RST or FIN
//! belongs to the connection, and when the peer is proven real. The XDP
//! program and the model both call these functions on the entry they hold,
//! so the rules live once; the differential tests check that both feed them
//! the same segments and apply the same outcomes.
//!
//! # Why
//!
//! Anyone on the internet can send a packet with a client's address and
//! port, or a backend's. Conntrack's answer (`nf_conntrack_proto_tcp.c`,
//! after RFC 5961) is to change a connection's state only for packets in
//! the window it has seen. Here the window comes from the backend's side,
//! which the edge sees whole (every reply passes through it), so tracking
//! costs a few stores on the reply path and nothing on the client's
//! established path:
//!
//! - a client RST ends the connection only at exactly the backend's latest
//!   acknowledgement (the only sequence a Linux receiver accepts); inside
//!   `[ack, ack + window]` it passes unchanged (the backend answers with a
//!   challenge ACK, which passes here and updates the acknowledgement, and
//!   a real client's next RST is exact); outside it is dropped;
//! - a client FIN must end within `[ack, ack + window + 1]`;
//! - a backend RST or FIN must start within [`BACKEND_SLACK`] of what the
//!   backend has sent (replies are only accepted from the backend's own
//!   interface and address; this is the second line);
//! - before the backend has answered, nothing changes the state.
//!
//! A connection that is over for the backend frees its SNAT port at once
//! ([`Check::Finish`]), the way conntrack lets a new SYN reuse a finished
//! tuple: an exact RST from either side, or the client's acknowledgement
//! of the backend's FIN when that FIN acknowledged the client's (the
//! client closed first: the backend went to LAST_ACK, which this ACK
//! ends; it holds no TIME_WAIT). When the backend closed first, or both
//! at once (its FIN did not acknowledge the client's: it goes through
//! CLOSING to TIME_WAIT), it holds TIME_WAIT for the tuple, so the port
//! waits for the sweep's `tcp_time_wait` timeout instead.
//!
//! A flow is *proven* when its TCP client acknowledges what the backend
//! sent through this edge (for a connection opened by a SYN: exactly the
//! SYN-ACK, which a forged source never sees) or when a UDP backend
//! answers. Unproven entries may be reclaimed under pressure
//! ([`crate::balancer::NAT_RECLAIM_AFTER_NS`]) and expire within seconds.

use crate::{
    balancer::{NatEntry, NAT_BACKEND_FIN, NAT_CLOSED, NAT_OPENED_BY_SYN, NAT_PROVEN, NAT_PROXY_ACKED, NAT_REPLIED, NAT_TIME_WAIT},
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// How far from the backend's furthest sequence its own RST or FIN may
/// start (reordering, retransmission) and still change the state.
pub const BACKEND_SLACK: u32 = 1 << 20;
/// How far below the backend's furthest sequence a client's
/// acknowledgement may be and still prove an adopted flow (one that did
/// not start with a SYN through this edge: a failover).
pub const ADOPTED_PROOF_WINDOW: u32 = 1 << 20;
/// The largest window scale TCP allows (RFC 7323).
pub const MAX_WSCALE: u8 = 14;
/// Options [`window_scale`] reads at most. Linux's SYN-ACK puts the
/// window scale fifth or sixth (MSS, SACK permitted and timestamps or
/// no-ops, a no-op, window scale). Every step is a branch the kernel's
/// verifier follows both ways, so the walk is short.
pub const MAX_OPTION_STEPS: usize = 8;
/// TCP option kinds.
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_WSCALE: u8 = 3;

/// The window-scale option among the TCP options in `[start, end)`: its
/// shift (capped at [`MAX_WSCALE`]), 0 without one, and [`MAX_WSCALE`]
/// when the options are longer than [`MAX_OPTION_STEPS`] or malformed — a
/// window too wide only loosens the check, one too narrow would drop a
/// real peer's RST or FIN. `read16(off)` reads the two bytes at `off`,
/// `None` past the packet (the kernel reads in pairs, see
/// `lb-ebpf/src/packet.rs`).
#[inline(always)]
pub fn window_scale(read16: impl Fn(usize) -> Option<u16>, start: usize, end: usize) -> u8 {
    let mut off = start;
    for _ in 0..MAX_OPTION_STEPS {
        if off >= end {
            return 0;
        }
        if off + 2 > end {
            // One byte left: only an end or a no-op fits.
            return 0;
        }
        let Some(kind_len) = read16(off) else { return MAX_WSCALE };
        let (kind, len) = ((kind_len >> 8) as u8, usize::from(kind_len as u8));
        match kind {
            OPT_END => return 0,
            OPT_NOP => off += 1,
            OPT_WSCALE if len == 3 && off + 3 <= end => {
                let shift = read16(off + 1).map_or(MAX_WSCALE, |w| w as u8);
                return if shift > MAX_WSCALE { MAX_WSCALE } else { shift };
            }
            _ if len < 2 || off + len > end => return MAX_WSCALE,
            _ => off += len,
        }
    }
    MAX_WSCALE
}

/// The fields of a TCP header the NAT state reads, host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The window-scale option of a SYN (capped at [`MAX_WSCALE`]); 0
    /// without one.
    pub wscale: u8,
    pub window: u16,
    /// Payload bytes: the IP payload after the TCP header.
    pub payload: u32,
}

impl Segment {
    /// Where the segment's sequence space ends (SYN and FIN take one).
    pub const fn end(&self) -> u32 {
        self.seq.wrapping_add(self.payload).wrapping_add((self.flags & TCP_SYN != 0) as u32).wrapping_add((self.flags & TCP_FIN != 0) as u32)
    }
}

/// Whether `a` is within `[lo, lo + len]` in sequence space.
#[inline(always)]
pub const fn within(a: u32, lo: u32, len: u32) -> bool {
    a.wrapping_sub(lo) <= len
}

/// Whether `a` is later than `b` in sequence space.
#[inline(always)]
pub const fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// What a packet may do to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Forward it; the state is unchanged.
    Pass,
    /// Forward it; a FIN in the window: the connection is closing
    /// ([`tcp_reply`] has marked the entry; for a client's, the caller
    /// applies [`client_fin`]).
    Close,
    /// Forward it; the connection is over for the backend: free the port
    /// (remove the NAT entry and the flow).
    Finish,
    /// Forward it unchanged: a RST in the window but not exact.
    Inexact,
    /// Drop it: a RST or FIN outside the window.
    OutOfWindow,
}

/// Whether the entry has seen the backend answer.
#[inline(always)]
pub const fn replied(e: &NatEntry) -> bool {
    e.state & NAT_REPLIED != 0
}

/// Whether the entry's peer is proven real.
#[inline(always)]
pub const fn proven(e: &NatEntry) -> bool {
    e.state & NAT_PROVEN != 0
}

/// A UDP reply: the backend answered, which proves the flow.
#[inline(always)]
pub fn udp_reply(e: &mut NatEntry) {
    e.state |= NAT_REPLIED | NAT_PROVEN;
}

/// Judges a TCP segment from the backend and, unless it is dropped, takes
/// what it says about the backend's sequence space into the entry.
#[inline(always)]
pub fn tcp_reply(e: &mut NatEntry, s: &Segment) -> Check {
    let check = if s.flags & (TCP_RST | TCP_FIN) == 0 || !replied(e) {
        Check::Pass
    } else if !within(s.seq, e.backend_next.wrapping_sub(BACKEND_SLACK), 2 * BACKEND_SLACK) {
        Check::OutOfWindow
    } else if s.flags & TCP_RST != 0 {
        if s.seq == e.backend_next {
            Check::Finish
        } else {
            Check::Inexact
        }
    } else {
        backend_fin(e, s);
        Check::Close
    };
    if check == Check::OutOfWindow {
        return check;
    }
    let end = s.end();
    if s.flags & TCP_SYN != 0 {
        e.backend_wscale = if s.wscale > MAX_WSCALE { MAX_WSCALE } else { s.wscale };
    }
    if !replied(e) || after(end, e.backend_next) {
        e.backend_next = end;
    }
    if s.flags & TCP_ACK != 0 && (!replied(e) || !after(e.backend_ack, s.ack)) {
        e.backend_ack = s.ack;
        // A SYN's window is never scaled (RFC 7323).
        let shift = if s.flags & TCP_SYN != 0 { 0 } else { e.backend_wscale & 15 };
        e.backend_win = (s.window as u32) << shift;
    }
    e.state |= NAT_REPLIED;
    check
}

/// Judges a TCP segment from the client and reports whether it proves
/// the flow (the caller sets [`NAT_PROVEN`] and remembers the flow).
#[inline(always)]
pub fn tcp_client(e: &NatEntry, s: &Segment) -> (Check, bool) {
    if !replied(e) {
        return (Check::Pass, false);
    }
    let check = if s.flags & TCP_RST != 0 {
        if s.seq == e.backend_ack {
            Check::Finish
        } else if within(s.seq, e.backend_ack, e.backend_win) {
            Check::Inexact
        } else {
            Check::OutOfWindow
        }
    } else if s.flags & TCP_FIN != 0 {
        if within(s.end(), e.backend_ack, e.backend_win.wrapping_add(1)) {
            Check::Close
        } else {
            Check::OutOfWindow
        }
    } else if last_ack(e, s) {
        Check::Finish
    } else {
        Check::Pass
    };
    let proves = !proven(e)
        && check != Check::OutOfWindow
        && s.flags & TCP_ACK != 0
        && s.flags & TCP_RST == 0
        && if e.state & NAT_OPENED_BY_SYN != 0 {
            s.ack == e.backend_next
        } else {
            within(s.ack, e.backend_next.wrapping_sub(ADOPTED_PROOF_WINDOW), ADOPTED_PROOF_WINDOW)
        };
    (check, proves)
}

/// The backend's FIN (in its window) marks the entry: the first FIN
/// decides how the connection ends ([`NAT_TIME_WAIT`]: the backend's);
/// after the client's, a FIN that acknowledges it (its end is where
/// [`client_fin`] moved the expected acknowledgement) puts the backend in
/// LAST_ACK ([`NAT_BACKEND_FIN`]), one that does not crossed it: both
/// closed at once and the backend holds TIME_WAIT.
#[inline(always)]
fn backend_fin(e: &mut NatEntry, s: &Segment) {
    if e.closing == NAT_CLOSED {
        if s.flags & TCP_ACK != 0 && s.ack == e.backend_ack {
            e.state |= NAT_BACKEND_FIN;
        } else {
            e.closing = NAT_TIME_WAIT;
        }
    } else if e.closing == 0 {
        e.closing = NAT_TIME_WAIT;
    }
}

/// A client's FIN in the window ([`Check::Close`]) marks its entry: the
/// first FIN decides how the connection ends ([`NAT_CLOSED`]: the
/// client's), and the backend is expected to acknowledge the FIN's end
/// next (which tells its LAST_ACK from a crossing close, see
/// [`backend_fin`]; a RST after the FIN starts there too). Returns whether
/// the entry changed. A flow whose PROXY protocol header the backend has
/// not acknowledged yet is not marked: its `backend_ack` must stay where
/// the client's data starts (`crate::proxy_protocol`).
#[inline(always)]
pub fn client_fin(e: &mut NatEntry, s: &Segment) -> bool {
    if e.proxy_len != 0 && e.state & NAT_PROXY_ACKED == 0 {
        return false;
    }
    let before = (e.closing, e.backend_ack);
    if e.closing == 0 {
        e.closing = NAT_CLOSED;
    }
    if e.closing == NAT_CLOSED {
        e.backend_ack = s.end();
    }
    (e.closing, e.backend_ack) != before
}

/// Whether the client's segment acknowledges the backend's FIN after the
/// client closed first: the backend's LAST_ACK ends, nothing of the
/// connection is left on its side.
#[inline(always)]
const fn last_ack(e: &NatEntry, s: &Segment) -> bool {
    e.closing == NAT_CLOSED && e.state & NAT_BACKEND_FIN != 0 && s.flags & TCP_ACK != 0 && s.ack == e.backend_next
}

/// Whether a new flow that found no free port may take the port of `e`
/// at `now_ns`: only an unproven entry, and only once it is older than
/// [`crate::balancer::NAT_RECLAIM_AFTER_NS`].
#[inline(always)]
pub const fn reclaimable(e: &NatEntry, now_ns: u64) -> bool {
    !proven(e) && now_ns.wrapping_sub(e.last_seen_ns) >= crate::balancer::NAT_RECLAIM_AFTER_NS && now_ns >= e.last_seen_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, ack: u32, flags: u8, window: u16, payload: u32) -> Segment {
        Segment { seq, ack, flags, wscale: 0, window, payload }
    }

    fn handshaken() -> NatEntry {
        let mut e = NatEntry { state: NAT_OPENED_BY_SYN, ..NatEntry::default() };
        // SYN-ACK: backend ISN 1000, client ISN 5000, window scale 7.
        let synack = Segment { wscale: 7, ..seg(1000, 5001, TCP_SYN | TCP_ACK, 65535, 0) };
        assert_eq!(tcp_reply(&mut e, &synack), Check::Pass);
        e
    }

    #[test]
    fn the_syn_ack_sets_the_window_and_only_its_exact_ack_proves() {
        let e = handshaken();
        assert_eq!((e.backend_next, e.backend_ack, e.backend_win, e.backend_wscale), (1001, 5001, 65535, 7));
        assert_eq!(tcp_client(&e, &seg(5001, 1001, TCP_ACK, 100, 0)), (Check::Pass, true));
        assert_eq!(tcp_client(&e, &seg(5001, 1002, TCP_ACK, 100, 0)), (Check::Pass, false));
        assert_eq!(tcp_client(&e, &seg(5001, 1001, TCP_SYN, 100, 0)), (Check::Pass, false), "no ACK flag");
    }

    #[test]
    fn nothing_changes_state_before_the_backend_answers() {
        let e = NatEntry { state: NAT_OPENED_BY_SYN, ..NatEntry::default() };
        assert_eq!(tcp_client(&e, &seg(7, 0, TCP_RST, 0, 0)), (Check::Pass, false));
    }

    #[test]
    fn a_client_rst_closes_only_at_the_exact_ack_and_is_dropped_outside_the_window() {
        let mut e = handshaken();
        // Later ACKs scale the window: 512 << 7 = 65536.
        tcp_reply(&mut e, &seg(1001, 5001, TCP_ACK, 512, 100));
        assert_eq!(e.backend_win, 65536);
        assert_eq!(e.backend_next, 1101);
        assert_eq!(tcp_client(&e, &seg(5001, 0, TCP_RST, 0, 0)).0, Check::Finish);
        assert_eq!(tcp_client(&e, &seg(5001 + 65536, 0, TCP_RST, 0, 0)).0, Check::Inexact);
        assert_eq!(tcp_client(&e, &seg(5001 + 65537, 0, TCP_RST, 0, 0)).0, Check::OutOfWindow);
        assert_eq!(tcp_client(&e, &seg(5000, 0, TCP_RST, 0, 0)).0, Check::OutOfWindow);
    }

    #[test]
    fn a_client_fin_must_end_in_the_window_and_a_retransmitted_one_still_does() {
        let e = handshaken();
        assert_eq!(tcp_client(&e, &seg(5001, 1001, TCP_FIN | TCP_ACK, 0, 10)).0, Check::Close);
        // Retransmission of a FIN the backend acknowledged: ends at the ack.
        let mut acked = e;
        tcp_reply(&mut acked, &seg(1001, 5012, TCP_ACK, 512, 0));
        assert_eq!(tcp_client(&acked, &seg(5001, 1001, TCP_FIN | TCP_ACK, 0, 10)).0, Check::Close);
        assert_eq!(tcp_client(&e, &seg(5001u32.wrapping_add(1 << 31), 1001, TCP_FIN | TCP_ACK, 0, 0)).0, Check::OutOfWindow);
    }

    #[test]
    fn backend_rst_and_fin_are_checked_against_what_it_sent() {
        let mut e = handshaken();
        tcp_reply(&mut e, &seg(1001, 5001, TCP_ACK, 512, 1000));
        let before = e;
        assert_eq!(tcp_reply(&mut e, &seg(2001u32.wrapping_add(1 << 30), 0, TCP_RST, 0, 0)), Check::OutOfWindow);
        assert_eq!(e, before, "a dropped segment changes nothing");
        assert_eq!(tcp_reply(&mut e.clone(), &seg(2001, 0, TCP_RST, 0, 0)), Check::Finish);
        assert_eq!(tcp_reply(&mut e.clone(), &seg(2000, 0, TCP_RST, 0, 0)), Check::Inexact);
        assert_eq!(tcp_reply(&mut e, &seg(2001, 5001, TCP_FIN | TCP_ACK, 0, 0)), Check::Close);
        assert_eq!(e.backend_next, 2002);
    }

    #[test]
    fn the_last_ack_finishes_only_when_the_backends_fin_acknowledged_the_clients() {
        let first_fin = seg(5001, 1001, TCP_FIN | TCP_ACK, 100, 0);
        // Client first: its FIN (end 5002), the backend's FIN acknowledging
        // it (end 1002), the client's ACK of that.
        let mut e = handshaken();
        assert_eq!(tcp_client(&e, &first_fin).0, Check::Close);
        assert!(client_fin(&mut e, &first_fin));
        assert_eq!((e.closing, e.backend_ack), (NAT_CLOSED, 5002));
        assert_eq!(tcp_client(&e, &seg(5002, 1001, TCP_ACK, 100, 0)).0, Check::Pass, "no backend FIN yet");
        assert_eq!(tcp_reply(&mut e, &seg(1001, 5002, TCP_FIN | TCP_ACK, 100, 0)), Check::Close);
        assert_eq!((e.closing, e.state & NAT_BACKEND_FIN), (NAT_CLOSED, NAT_BACKEND_FIN), "the backend is in LAST_ACK");
        assert_eq!(tcp_client(&e, &seg(5002, 1001, TCP_ACK, 100, 0)).0, Check::Pass, "not the FIN's acknowledgement");
        assert_eq!(tcp_client(&e, &seg(5002, 1002, TCP_ACK, 100, 0)).0, Check::Finish);
        assert_eq!(tcp_client(&e, &seg(5002, 0, TCP_RST, 0, 0)).0, Check::Finish, "a RST after the FIN starts at its end");
        // Both at once: the backend's FIN crossed the client's (it does
        // not acknowledge it): the backend goes to TIME_WAIT.
        let mut e = handshaken();
        client_fin(&mut e, &first_fin);
        assert_eq!(tcp_reply(&mut e, &seg(1001, 5001, TCP_FIN | TCP_ACK, 100, 0)), Check::Close);
        assert_eq!((e.closing, e.state & NAT_BACKEND_FIN), (NAT_TIME_WAIT, 0));
        assert_eq!(tcp_client(&e, &seg(5002, 1002, TCP_ACK, 100, 0)).0, Check::Pass);
        // Backend first: it holds TIME_WAIT, nothing finishes.
        let mut e = handshaken();
        assert_eq!(tcp_reply(&mut e, &seg(1001, 5001, TCP_FIN | TCP_ACK, 100, 0)), Check::Close);
        assert_eq!(e.closing, NAT_TIME_WAIT);
        let fin = seg(5001, 1002, TCP_FIN | TCP_ACK, 100, 0);
        assert_eq!(tcp_client(&e, &fin).0, Check::Close);
        assert!(!client_fin(&mut e, &fin), "the backend's FIN came first: nothing changes");
        assert_eq!(tcp_client(&e, &seg(5002, 1002, TCP_ACK, 100, 0)).0, Check::Pass);
    }

    #[test]
    fn an_adopted_flow_is_proven_by_acknowledging_recent_backend_data() {
        let mut e = NatEntry::default();
        tcp_reply(&mut e, &seg(70_000, 9, TCP_ACK, 100, 500));
        assert_eq!(tcp_client(&e, &seg(9, 70_200, TCP_ACK, 100, 0)), (Check::Pass, true));
        assert_eq!(tcp_client(&e, &seg(9, 70_501, TCP_ACK, 100, 0)), (Check::Pass, false));
    }

    #[test]
    fn the_window_scale_is_found_among_the_options() {
        let read = |opts: &'static [u8]| move |off: usize| Some(u16::from_be_bytes([*opts.get(off)?, *opts.get(off + 1)?]));
        // Linux's SYN-ACKs: MSS, SACK permitted + timestamps, NOP, wscale 7;
        // MSS, NOP, NOP, timestamps, NOP, wscale.
        let linux: &[u8] = &[2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        assert_eq!(window_scale(read(linux), 0, linux.len()), 7);
        let no_sack: &[u8] = &[2, 4, 5, 180, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 9];
        assert_eq!(window_scale(read(no_sack), 0, no_sack.len()), 9);
        assert_eq!(window_scale(read(&[3, 3, 20]), 0, 3), MAX_WSCALE);
        assert_eq!(window_scale(read(&[2, 4, 5, 180]), 0, 4), 0, "no window scale");
        assert_eq!(window_scale(read(&[0, 3, 3, 7]), 0, 4), 0, "after the end of options");
        assert_eq!(window_scale(read(&[9, 0, 3, 3, 7]), 0, 5), MAX_WSCALE, "malformed: the widest");
        assert_eq!(window_scale(read(&[3, 3, 7, 0]), 0, 2), MAX_WSCALE, "cut by the header's end");
        assert_eq!(window_scale(read(&[1; 40]), 0, 40), MAX_WSCALE, "too long a walk: the widest");
    }

    #[test]
    fn only_unproven_entries_old_enough_are_reclaimable() {
        let e = NatEntry { last_seen_ns: 1_000_000_000, ..NatEntry::default() };
        assert!(!reclaimable(&e, 1_100_000_000));
        assert!(reclaimable(&e, 1_200_000_000));
        assert!(!reclaimable(&NatEntry { state: NAT_PROVEN, ..e }, 9_000_000_000));
        assert!(!reclaimable(&e, 0), "a clock behind the entry's is not an age");
    }
}
