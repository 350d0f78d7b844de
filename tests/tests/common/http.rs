//! HTTP clients of the end-to-end tests: who answered, keep-alive streams,
//! the metrics endpoint.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
};

use harness::{
    tls::{connect, http_get},
    Netns,
};

/// `GET /` on port 80 through the VIP: the worker's name.
pub fn who(ns: &Netns, vip: IpAddr) -> String {
    let (status, body) = http_get(connect(ns, SocketAddr::new(vip, 80)).unwrap(), "a.com", "/").unwrap();
    assert_eq!(status, 200);
    body.trim().strip_prefix("worker=").expect("worker=NAME").to_string()
}

/// A keep-alive HTTP connection that asks "who are you" again and again.
pub struct Stream {
    pub reader: BufReader<TcpStream>,
    pub worker: String,
    /// Bytes of padding each request carries.
    pub pad: usize,
}

impl Stream {
    pub fn open(ns: &Netns, vip: IpAddr) -> Self {
        let sock = connect(ns, SocketAddr::new(vip, 80)).unwrap();
        let mut s = Self { reader: BufReader::new(sock), worker: String::new(), pad: 512 };
        s.worker = s.ask().expect("first answer");
        s
    }

    /// One request/response with a payload both ways.
    pub fn ask(&mut self) -> std::io::Result<String> {
        let pad = "x".repeat(self.pad);
        write!(self.reader.get_mut(), "GET / HTTP/1.1\r\nHost: a.com\r\nX-Pad: {pad}\r\n\r\n")?;
        let mut len = 0;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
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

/// Asks every stream once; returns the indices that failed or moved.
pub fn check(streams: &mut [Stream]) -> Vec<usize> {
    let mut bad = Vec::new();
    for (i, s) in streams.iter_mut().enumerate() {
        match s.ask() {
            Ok(w) if w == s.worker => {}
            _ => bad.push(i),
        }
    }
    bad
}

/// `GET /metrics` from the daemon's default endpoint in `ns`.
pub fn metrics(ns: &Netns) -> String {
    let sock = connect(ns, "127.0.0.1:9469".parse().unwrap()).expect("the metrics endpoint listens");
    let (status, body) = http_get(sock, "127.0.0.1", "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

