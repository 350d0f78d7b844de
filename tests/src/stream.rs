//! A keep-alive HTTP connection through a VIP that asks nginx "who are
//! you" again and again: the end-to-end tests' and the soak's long-lived
//! connection. nginx ([`crate::nginx`]) answers `worker=<name>` on port 80.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
};

use crate::{tls::connect, Netns};

/// A keep-alive HTTP connection to port 80 of a VIP.
pub struct Stream {
    /// The connection.
    pub reader: BufReader<TcpStream>,
    /// The worker that answered the first request.
    pub worker: String,
    /// Bytes of padding each request carries.
    pub pad: usize,
}

impl Stream {
    /// Connects from `ns` and asks once; panics if that fails.
    pub fn open(ns: &Netns, vip: IpAddr) -> Self {
        Self::try_open(ns, vip).unwrap_or_else(|e| panic!("a stream to {vip}: {e}"))
    }

    /// Connects from `ns` and asks once (which sets [`Stream::worker`]).
    pub fn try_open(ns: &Netns, vip: IpAddr) -> io::Result<Self> {
        let sock = connect(ns, SocketAddr::new(vip, 80)).map_err(|e| io::Error::other(format!("{e:#}")))?;
        let mut s = Self { reader: BufReader::new(sock), worker: String::new(), pad: 512 };
        s.worker = s.ask()?;
        Ok(s)
    }

    /// One request/response with a payload both ways; returns the name of
    /// the worker that answered.
    pub fn ask(&mut self) -> io::Result<String> {
        let pad = "x".repeat(self.pad);
        write!(self.reader.get_mut(), "GET / HTTP/1.1\r\nHost: a.com\r\nX-Pad: {pad}\r\n\r\n")?;
        let mut len = 0;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().trim_start_matches("worker=").to_string())
    }
}
