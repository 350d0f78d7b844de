//! Forged packets against `nat` state (issue 17, items 3 and 4; the
//! balancer's part of item 5), end to end over IPv4 and IPv6: `swarmlb run`
//! on the edge, a client on the outside segment, a backend on the inside
//! one, and an attacker who can send any frame on either segment
//! ([`harness::forge`]).
//!
//! - Replies are accepted only where replies come from: frames on the
//!   outside segment from the backend's address and port to the edge's
//!   inside address, to every SNAT port, reach no client; neither do the
//!   same frames from a non-backend address on the inside segment.
//! - A blind RST or FIN changes nothing: after RSTs stepping the whole
//!   sequence space and FINs outside any window, from the client's side and
//!   from the backend's (outside and inside), and a silence longer than the
//!   closed timeout plus a sweep, the NAT entry is held, the server's push
//!   reaches the client and the client's next send reaches the server. A
//!   RST inside the window but not exact reaches the endpoint unchanged,
//!   which answers with a challenge ACK (RFC 5961, as conntrack lets it),
//!   and changes nothing at the edge either.
//! - The positive control: real closes (client FIN, server FIN, client
//!   RST) still end their entries within the closed timeout.
//!
//! Each test gathers every hole it finds (one line per case) and fails at
//! the end with all of them, so one run shows which cases a build lets
//! through. The counters the fix adds (`drop_forged_reply`,
//! `drop_out_of_window`) are printed when present; the verdict is what
//! reaches sockets and whether connections live.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use harness::{
    daemon::wait_until,
    forge::{
        conn::{close_with_reset, expect_end, Conn, DELIVERY, QUIET},
        frames::{self, flags::*},
        lab::*,
        wire, Attacker, Witness,
    },
    rawframe::{RawSocket, L4},
};

/// The connection's sequence numbers, read off the client's wire around
/// one more exchange.
fn learn_seqs(lab: &ForgeLab, conn: &mut Conn) -> wire::Seqs {
    let cap = RawSocket::open_capture(&lab.lab.client, "c-out").expect("capture on c-out");
    conn.greet("learning the sequence numbers").expect("an exchange");
    // Long enough for a delayed ACK.
    let seen = cap.drain(Duration::from_millis(250)).expect("capture");
    wire::seqs(&seen, conn.client_addr, conn.vip).expect("segments both ways on the client's wire")
}

fn family(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

/// One datagram out, its echo back, and nothing else in the socket: not
/// before (what was queued already is an answer nobody asked for) and not
/// after.
fn udp_only_real(sock: &UdpSocket, payload: &[u8]) -> Result<(), String> {
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(QUIET)).unwrap();
    if let Ok(n) = sock.recv(&mut buf) {
        return Err(format!("the socket received {:?} that it never asked for", String::from_utf8_lossy(&buf[..n])));
    }
    sock.send(payload).map_err(|e| format!("send: {e}"))?;
    sock.set_read_timeout(Some(DELIVERY)).unwrap();
    match sock.recv(&mut buf) {
        Ok(n) if &buf[..n] == payload => {}
        Ok(n) => return Err(format!("received {:?} instead of the echo {:?}", String::from_utf8_lossy(&buf[..n]), String::from_utf8_lossy(payload))),
        Err(e) => return Err(format!("no echo of {:?}: {e}", String::from_utf8_lossy(payload))),
    }
    sock.set_read_timeout(Some(QUIET)).unwrap();
    match sock.recv(&mut buf) {
        Ok(n) => Err(format!("received {:?} after the echo", String::from_utf8_lossy(&buf[..n]))),
        Err(_) => Ok(()),
    }
}

#[test]
fn forged_replies_to_every_snat_port_reach_no_client() {
    let lab = ForgeLab::start("fgrep");
    let mut holes = Vec::new();
    let mut log = Vec::new();
    for v6 in [false, true] {
        for inside in [false, true] {
            let (attacker, src, ifname, whence) = if inside {
                (lab.inside_attacker(), lab.not_a_backend(v6), "e-in", "on the inside segment from a non-backend address")
            } else {
                (lab.outside_attacker(), lab.backend(v6), "e-out", "on the outside segment from the backend's address")
            };
            let case = format!("{}, {whence}", family(v6));
            // A live UDP flow and a live TCP connection through the VIP.
            let udp = lab.udp_client(v6);
            udp_only_real(&udp, b"udp before").unwrap_or_else(|e| panic!("{case}: the UDP flow before forging: {e}"));
            let mut conn = lab.connect(v6);
            let seqs = learn_seqs(&lab, &mut conn);
            let mut flow_ports: Vec<u16> = lab.nat_entries().unwrap().iter().filter(|e| e.0 == lab.backend(v6)).map(|e| e.2).collect();
            flow_ports.sort_unstable();

            // Every SNAT port, UDP and TCP, from the backend's port; TCP
            // with the sequence numbers the client expects next (an
            // attacker who sees the client's traffic knows them), so a
            // segment let through is data in the client's stream.
            let marker = format!("FORGED {} {}", family(v6), if inside { "inside" } else { "outside" });
            let delivered = RawSocket::open_capture_incoming(&lab.lab.client, "c-out").expect("capture on c-out");
            let before = lab.counters();
            let witness = Witness::start(&lab.lab.edge, ifname);
            let to = lab.inside(v6);
            let udp_frames = frames::to_every_port(SNAT_PORTS, |p| L4::udp(UDP_PORT, p, format!("{marker} udp to {p}").as_bytes()));
            let mut sent = attacker.send_all(src, to, udp_frames).unwrap();
            let tcp_frames = frames::to_every_port(SNAT_PORTS, |p| {
                frames::tcp(TCP_PORT, p, seqs.server_next, seqs.client_next, PSH | ACK, format!("{marker} tcp to {p}\n").as_bytes())
            });
            sent += attacker.send_all(src, to, tcp_frames).unwrap();
            witness.saw_at_least(sent, &case);
            std::thread::sleep(QUIET);
            let after = lab.counters();

            // Nothing with the marker was handed to the client ...
            let handed = delivered.drain(Duration::from_millis(100)).unwrap();
            let forged: Vec<String> = wire::carrying(&handed, marker.as_bytes())
                .iter()
                .filter_map(|f| wire::segment(f))
                .map(|s| format!("{} -> {} {:?}", s.src, s.dst, String::from_utf8_lossy(&s.payload).trim_end()))
                .collect();
            if !forged.is_empty() {
                holes.push(format!("{case}: {} forged frames reached the client: {}", forged.len(), forged.join("; ")));
            }
            // ... the UDP socket receives only the real answer ...
            if let Err(e) = udp_only_real(&udp, b"udp after") {
                holes.push(format!("{case}: UDP: {e}"));
            }
            // ... the TCP stream is intact, both ways ...
            if let Err(e) = conn.client_quiet().and_then(|()| conn.exchange("after the forged replies")) {
                holes.push(format!("{case}: TCP: {e:#}"));
            }
            // ... and new flows work.
            let mut fresh = lab.connect(v6);
            if let Err(e) = fresh.exchange("a new connection") {
                holes.push(format!("{case}: a new TCP connection: {e:#}"));
            }
            if let Err(e) = udp_only_real(&lab.udp_client(v6), b"a new udp flow") {
                holes.push(format!("{case}: a new UDP flow: {e}"));
            }
            log.push(format!(
                "{case}: {sent} frames to all {} SNAT ports (live flows on {flow_ports:?}); {} reached the client; counters: {}",
                SNAT_PORTS.len(),
                forged.len(),
                counter_changes(&before, &after)
            ));
        }
    }
    println!("{}", log.join("\n"));
    assert!(holes.is_empty(), "forged replies got through:\n{}", holes.join("\n"));
}

/// What a blind attacker sends at one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// [`Blind::RSTS`] RSTs stepping the whole sequence space, none with
    /// the exact value.
    RstSweep,
    /// [`Blind::FINS`] FINs far outside any window.
    FarFins,
    /// One RST inside the window, [`IN_WINDOW`] past the exact value: it
    /// must reach the endpoint unchanged (which answers with a challenge
    /// ACK, RFC 5961) and change nothing at the edge.
    InWindowRst,
}

/// How far past the exact value the in-window RST is.
const IN_WINDOW: u32 = 1000;

/// One blind attack on one connection.
#[derive(Clone, Copy, Debug)]
struct Blind {
    attack: Attack,
    /// From the backend's address and port to the inside address (else
    /// from the client's to the VIP).
    from_backend: bool,
    /// Sent on the inside segment (else on the outside one).
    inside: bool,
}

impl Blind {
    const ALL: [Blind; 8] = [
        Blind { attack: Attack::RstSweep, from_backend: false, inside: false },
        Blind { attack: Attack::FarFins, from_backend: false, inside: false },
        Blind { attack: Attack::RstSweep, from_backend: true, inside: false },
        Blind { attack: Attack::FarFins, from_backend: true, inside: false },
        Blind { attack: Attack::RstSweep, from_backend: true, inside: true },
        Blind { attack: Attack::FarFins, from_backend: true, inside: true },
        Blind { attack: Attack::InWindowRst, from_backend: false, inside: false },
        Blind { attack: Attack::InWindowRst, from_backend: true, inside: true },
    ];

    /// RSTs per sweep: one every 64 KiB of the sequence space.
    const RSTS: u32 = 65536;
    /// FINs per connection, 64 KiB apart around the point opposite the
    /// real sequence number.
    const FINS: u32 = 4096;

    fn name(&self) -> String {
        format!(
            "{} {} from the {}",
            match self.attack {
                Attack::RstSweep => format!("{} RSTs", Self::RSTS),
                Attack::FarFins => format!("{} FINs", Self::FINS),
                Attack::InWindowRst => format!("a RST {IN_WINDOW} into the window"),
            },
            if self.from_backend { "backend → inside address" } else { "client → VIP" },
            if self.inside { "inside segment" } else { "outside segment" }
        )
    }

    /// Sends the attack on `conn` (whose sequence numbers are `seqs`);
    /// returns the frames sent (all seen arriving at the edge) and, for an
    /// in-window RST, whether it reached the endpoint unchanged and was
    /// answered with a challenge ACK.
    fn send(&self, lab: &ForgeLab, conn: &Conn, seqs: wire::Seqs) -> (u64, Result<(), String>) {
        let v6 = conn.vip.is_ipv6();
        let attacker: Attacker = if self.inside { lab.inside_attacker() } else { lab.outside_attacker() };
        let witness = Witness::start(&lab.lab.edge, if self.inside { "e-in" } else { "e-out" });
        let backend = SocketAddr::new(lab.backend(v6), TCP_PORT);
        // Who it pretends to be, and the numbers the receiver expects.
        let (src, dst, real, ack): (SocketAddr, SocketAddr, u32, u32) = if self.from_backend {
            (backend, conn.snat, seqs.server_next, seqs.client_next)
        } else {
            (conn.client_addr, conn.vip, seqs.client_next, seqs.server_next)
        };
        let segment = |seq: u32, flags: u8, ack: u32| frames::tcp(src.port(), dst.port(), seq, ack, flags, &[]);
        // The wires of the client and of the backend, for the in-window RST.
        let caps = (self.attack == Attack::InWindowRst).then(|| {
            let client = RawSocket::open_capture_incoming(&lab.lab.client, "c-out").expect("capture on c-out");
            let server = RawSocket::open_capture_incoming(&lab.lab.workers[0], "eth0").expect("capture on w1's eth0");
            (client, server)
        });
        let sent = match self.attack {
            Attack::RstSweep => attacker.send_all(src.ip(), dst.ip(), frames::sweep(real, Self::RSTS).map(|q| segment(q, RST, 0))),
            Attack::FarFins => attacker.send_all(src.ip(), dst.ip(), frames::far(real, Self::FINS, 65536).map(|q| segment(q, FIN | ACK, ack))),
            Attack::InWindowRst => attacker.send_all(src.ip(), dst.ip(), [segment(real.wrapping_add(IN_WINDOW), RST, 0)]),
        }
        .unwrap();
        witness.saw_at_least(sent, &self.name());
        let Some((client_cap, server_cap)) = caps else { return (sent, Ok(())) };
        std::thread::sleep(QUIET);
        let at_client: Vec<wire::Segment> = client_cap.drain(Duration::from_millis(50)).unwrap().iter().filter_map(|f| wire::segment(f)).collect();
        let at_server: Vec<wire::Segment> = server_cap.drain(Duration::from_millis(50)).unwrap().iter().filter_map(|f| wire::segment(f)).collect();
        // The endpoint the RST was aimed at, as the balancer translates it.
        let (endpoint, peer, rst_on, ack_on) = if self.from_backend {
            ((conn.vip, conn.client_addr), (conn.snat, backend), &at_client, &at_server)
        } else {
            ((conn.snat, backend), (conn.vip, conn.client_addr), &at_server, &at_client)
        };
        let rst_seq = real.wrapping_add(IN_WINDOW);
        let got_rst = rst_on.iter().any(|s| (s.src, s.dst) == endpoint && s.flags & RST != 0 && s.seq == rst_seq);
        // The endpoint's challenge ACK, back through the balancer: a pure
        // ACK of what it has received (nothing moved on this connection).
        let challenge = ack_on.iter().any(|s| (s.src, s.dst) == peer && s.flags & (RST | FIN) == 0 && s.flags & ACK != 0 && s.payload.is_empty() && s.ack == real);
        let verdict = match (got_rst, challenge) {
            (true, true) => Ok(()),
            (false, _) => Err(format!("the in-window RST (seq {rst_seq}) did not reach the endpoint unchanged: {rst_on:?}")),
            (true, false) => Err(format!("no challenge ACK came back from the endpoint: {ack_on:?}")),
        };
        (sent, verdict)
    }
}

#[test]
fn blind_resets_and_fins_leave_a_nat_connection_open() {
    let lab = ForgeLab::start("fgrst");
    // One connection per attack and family, so each result is its own.
    let mut cases = Vec::new();
    for v6 in [false, true] {
        for blind in Blind::ALL {
            let mut conn = lab.connect(v6);
            let seqs = learn_seqs(&lab, &mut conn);
            cases.push((v6, blind, conn, seqs));
        }
    }
    let before = lab.counters();
    let t = Instant::now();
    let mut sent = 0;
    let mut holes = Vec::new();
    for (v6, blind, conn, seqs) in &cases {
        let (n, passed) = blind.send(&lab, conn, *seqs);
        sent += n;
        if let Err(e) = passed {
            holes.push(format!("{}, {}: {e}", family(*v6), blind.name()));
        }
    }
    let forging = t.elapsed();
    // What an attack let through at once: the stream must be untouched (an
    // in-window RST is answered with a challenge ACK, not obeyed).
    // (All connections at once: each check waits QUIET.)
    let quiet: Vec<anyhow::Result<()>> =
        std::thread::scope(|sc| cases.iter_mut().map(|(_, _, c, _)| sc.spawn(move || c.client_quiet())).collect::<Vec<_>>().into_iter().map(|h| h.join().unwrap()).collect());
    for ((v6, blind, _, _), q) in cases.iter().zip(quiet) {
        if let Err(e) = q {
            holes.push(format!("{}, {}: right after the attack, the client's socket: {e:#}", family(*v6), blind.name()));
        }
    }
    let after = lab.counters();
    println!("{sent} forged frames in {:.1} s; counters: {}", forging.as_secs_f64(), counter_changes(&before, &after));

    // Silence: an entry the attack marked closed is swept by now.
    std::thread::sleep(ENDED_WITHIN);
    let held: Vec<bool> = cases.iter().map(|(_, _, c, _)| lab.holds(c.snat)).collect();
    // The server's push, then the client's next send, on every connection
    // at once (a failed one waits DELIVERY).
    let lives: Vec<(anyhow::Result<()>, anyhow::Result<()>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = cases
            .iter_mut()
            .map(|(_, _, c, _)| sc.spawn(move || (c.push(b"the server's push after the silence\n"), c.send(b"the client's next send\n"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut table = Vec::new();
    for (((v6, blind, _, _), held), (push, send)) in cases.iter().zip(held).zip(lives) {
        let case = format!("{}, {}", family(*v6), blind.name());
        let verdict = |r: &anyhow::Result<()>| r.as_ref().map_or_else(|e| format!("FAILED ({e:#})"), |()| "ok".into());
        table.push(format!("{case}: entry {}, push {}, next send {}", if held { "held" } else { "GONE" }, verdict(&push), verdict(&send)));
        if !held || push.is_err() || send.is_err() {
            holes.push(table.last().unwrap().clone());
        }
    }
    println!("after {:.1} s of silence (closed timeout {} s, sweep every {} s):\n{}", ENDED_WITHIN.as_secs_f64(), CLOSED_TIMEOUT.as_secs(), SWEEP_INTERVAL.as_secs(), table.join("\n"));
    assert!(holes.is_empty(), "blind RSTs / FINs ended or broke nat connections:\n{}", holes.join("\n"));
}

#[test]
fn real_closes_still_end_nat_entries_quickly() {
    let lab = ForgeLab::start("fgend");
    let mut ended: Vec<(String, SocketAddr)> = Vec::new();
    let mut kept = Vec::new();
    for v6 in [false, true] {
        let fam = family(v6);
        // The client closes first; the server answers the end with its own.
        let Conn { client, mut server, snat, .. } = lab.connect(v6);
        drop(client);
        expect_end(&mut server).unwrap_or_else(|e| panic!("{fam}: the server sees the client's FIN: {e}"));
        drop(server);
        ended.push((format!("{fam}, client closed first"), snat));
        // The server closes first.
        let Conn { mut client, server, snat, .. } = lab.connect(v6);
        drop(server);
        expect_end(&mut client).unwrap_or_else(|e| panic!("{fam}: the client sees the server's FIN: {e}"));
        drop(client);
        ended.push((format!("{fam}, server closed first"), snat));
        // The client resets (SO_LINGER 0).
        let Conn { client, mut server, snat, .. } = lab.connect(v6);
        close_with_reset(client);
        match expect_end(&mut server) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("{fam}: the server sees the client's RST: {other:?}"),
        }
        ended.push((format!("{fam}, client reset"), snat));
        // And an idle connection beside them, which must stay.
        kept.push(lab.connect(v6));
    }
    let t = Instant::now();
    wait_until(
        ENDED_WITHIN + Duration::from_secs(2),
        || ended.iter().all(|(_, snat)| !lab.holds(*snat)),
        || {
            let left: Vec<&str> = ended.iter().filter(|(_, s)| lab.holds(*s)).map(|(n, _)| n.as_str()).collect();
            format!("NAT entries of closed connections still held: {left:?}\n{:?}", lab.nat_entries())
        },
    );
    println!("closed connections' NAT entries gone after {:.1} s (closed timeout {} s, sweep every {} s)", t.elapsed().as_secs_f64(), CLOSED_TIMEOUT.as_secs(), SWEEP_INTERVAL.as_secs());
    for mut c in kept {
        assert!(lab.holds(c.snat), "the idle open connection's entry is held");
        c.exchange("the idle connection, still open").unwrap_or_else(|e| panic!("the idle connection: {e:#}"));
    }
    for v6 in [false, true] {
        lab.connect(v6).exchange("a new connection").unwrap_or_else(|e| panic!("{}: a new connection: {e:#}", family(v6)));
    }
}
