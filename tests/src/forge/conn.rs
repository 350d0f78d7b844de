//! A TCP connection through a VIP whose both ends the test holds: the
//! client's socket and the backend's accepted socket. "The connection
//! lives" is then checked byte for byte at both ends: a push from the
//! server reaches the client exactly, and the client's next send reaches
//! the server exactly, with nothing else in between.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{tls::connect, Netns};

/// How long a byte may take to cross the lab.
pub const DELIVERY: Duration = Duration::from_secs(3);
/// How long "nothing else arrives" is watched after the expected bytes.
pub const QUIET: Duration = Duration::from_millis(300);

/// Both ends of one connection through the balancer.
pub struct Conn {
    /// The client's socket.
    pub client: TcpStream,
    /// The backend's accepted socket.
    pub server: TcpStream,
    /// The client's address and port.
    pub client_addr: SocketAddr,
    /// The VIP and port the client connected to.
    pub vip: SocketAddr,
    /// The connection's source as the backend sees it: the edge's inside
    /// address and the SNAT port.
    pub snat: SocketAddr,
}

/// Accepts one connection within `timeout`.
fn accept(listener: &TcpListener, timeout: Duration) -> Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accept on the backend"),
        }
    }
}

impl Conn {
    /// Connects from `ns` to `vip` and accepts on `listener` (the backend's,
    /// the only one the VIP balances to); checks the pair with a greeting
    /// each way.
    pub fn open(ns: &Netns, vip: SocketAddr, listener: &TcpListener) -> Result<Self> {
        let client = connect(ns, vip)?;
        let (server, snat) = accept(listener, DELIVERY)?;
        let client_addr = client.local_addr()?;
        let mut c = Self { client, server, client_addr, vip, snat };
        c.greet(&format!("hello {client_addr}"))?;
        Ok(c)
    }

    /// A push and a send carrying `tag`, each checked for its bytes only
    /// (no [`QUIET`] wait after them): for setting up.
    pub fn greet(&mut self, tag: &str) -> Result<()> {
        let (push, send) = (format!("server: {tag}\n"), format!("client: {tag}\n"));
        self.server.write_all(push.as_bytes()).context("the server's push")?;
        read_exactly(&mut self.client, push.as_bytes()).context("the client receiving the server's push")?;
        self.client.write_all(send.as_bytes()).context("the client's send")?;
        read_exactly(&mut self.server, send.as_bytes()).context("the server receiving the client's send")
    }

    /// The server pushes `bytes`; the client must receive exactly them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.server.write_all(bytes).context("the server's push")?;
        expect_exactly(&mut self.client, bytes).context("the client receiving the server's push")
    }

    /// The client sends `bytes`; the server must receive exactly them.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.client.write_all(bytes).context("the client's send")?;
        expect_exactly(&mut self.server, bytes).context("the server receiving the client's send")
    }

    /// A push and a send, each carrying `tag`.
    pub fn exchange(&mut self, tag: &str) -> Result<()> {
        self.push(format!("server: {tag}\n").as_bytes())?;
        self.send(format!("client: {tag}\n").as_bytes())
    }

    /// Fails if the client has anything to read within [`QUIET`] (bytes,
    /// an end of stream or a reset).
    pub fn client_quiet(&mut self) -> Result<()> {
        nothing_more(&mut self.client)
    }
}

/// Closes `s` with a RST (`SO_LINGER` 0) instead of a FIN.
pub fn close_with_reset(s: TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid linger struct for a socket we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", io::Error::last_os_error());
    drop(s);
}

/// What reading `s` (within [`DELIVERY`]) ends with: `Ok(())` at the end of
/// the stream, an error for bytes, a timeout or a reset.
pub fn expect_end(s: &mut TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(DELIVERY))?;
    let mut buf = [0u8; 256];
    match s.read(&mut buf)? {
        0 => Ok(()),
        n => Err(io::Error::other(format!("bytes instead of the end: {:?}", String::from_utf8_lossy(&buf[..n])))),
    }
}

/// Reads exactly `want` within [`DELIVERY`], then requires [`QUIET`]:
/// bytes that differ, come short, or come on top are an error naming them.
pub fn expect_exactly(s: &mut TcpStream, want: &[u8]) -> Result<()> {
    read_exactly(s, want)?;
    nothing_more(s)
}

/// Reads `want.len()` bytes within [`DELIVERY`]; they must be `want`.
pub fn read_exactly(s: &mut TcpStream, want: &[u8]) -> Result<()> {
    let mut got = Vec::with_capacity(want.len());
    let deadline = Instant::now() + DELIVERY;
    let mut buf = [0u8; 4096];
    while got.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("got {:?}, want {:?}: timed out", String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[..want.len() - got.len()]) {
            Ok(0) => bail!("got {:?}, want {:?}: end of stream", String::from_utf8_lossy(&got), String::from_utf8_lossy(want)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(anyhow!("got {:?}, want {:?}: {e}", String::from_utf8_lossy(&got), String::from_utf8_lossy(want))),
        }
    }
    if got != want {
        bail!("got {:?}, want {:?}", String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    }
    Ok(())
}

/// Fails if `s` has anything to read within [`QUIET`].
fn nothing_more(s: &mut TcpStream) -> Result<()> {
    s.set_read_timeout(Some(QUIET))?;
    let mut buf = [0u8; 4096];
    let r = s.read(&mut buf);
    s.set_read_timeout(Some(DELIVERY))?;
    match r {
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(()),
        Ok(0) => bail!("unexpected end of stream"),
        Ok(n) => bail!("unexpected bytes {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => bail!("unexpected {e}"),
    }
}
