//! TLS for tests: a throwaway certificate authority that issues server
//! certificates, and blocking rustls clients that do real handshakes (with
//! SNI, verifying the chain against that CA only) and simple HTTP/1.1 GETs.
//!
//! The load balancer passes TLS through untouched, so what a test can see
//! at the client is exactly what the backend presented: the certificate's
//! subject CN and SANs ([`HandshakeInfo`]) name the backend that answered.
//!
//! rustls runs with the `ring` provider, chosen explicitly per config (no
//! process-wide default provider), because rustls' default, aws-lc-rs, needs
//! cmake and a C toolchain build that the test machines should not depend on.
//!
//! Streams are plain [`TcpStream`]s: connect them inside the client's
//! namespace ([`connect`]) and the rest runs on any thread.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    pki_types::{CertificateDer, ServerName},
    ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, StreamOwned,
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::Netns;

/// How long [`connect`] waits for a TCP connection, and the read/write
/// timeout the helpers put on streams that have none: a dropped packet must
/// fail a test in seconds, not hang it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate authority made for one test: an ECDSA P-256 key and a
/// self-signed CA certificate. Nothing but the clients a test builds with
/// [`tls_client`] trusts it.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    name: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TestCa").field(&self.name).finish()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA whose subject CN (`swarmlb test CA <pid>-<n>`) is unique per
    /// process and call: chain building matches issuers by name first, so
    /// two test CAs with one name would turn "unknown issuer" into a
    /// signature failure and blur what a test asserts.
    ///
    /// Panics if the key or certificate cannot be made (a broken crypto
    /// library, not a test failure to handle).
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!("swarmlb test CA {}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.distinguished_name.push(DnType::OrganizationName, "swarmlb tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // rcgen's default validity (1975 to 4096) is kept on purpose: a test
        // must not fail because a clock or a slow run crossed a boundary.
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA certificate");
        Self { cert_der: cert.der().clone(), cert_pem: cert.pem(), issuer: Issuer::new(params, key), name }
    }

    /// Issues a server certificate for `names` (its SANs: DNS names, or IP
    /// addresses written as such) with subject CN `subject_cn`, signed by
    /// this CA. Returns `(certificate PEM, private key PEM)`; the key is a
    /// fresh ECDSA P-256 key (PKCS#8).
    ///
    /// The chain is just the leaf: clients trust the CA itself.
    /// Panics if a name is not a valid SAN (a test bug).
    pub fn issue(&self, names: &[&str], subject_cn: &str) -> (String, String) {
        self.issue_for(names, subject_cn, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate (TLS client authentication) with subject
    /// CN `subject_cn`; returns `(certificate PEM, private key PEM)`.
    pub fn issue_client(&self, subject_cn: &str) -> (String, String) {
        self.issue_for(&[], subject_cn, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue_for(&self, names: &[&str], subject_cn: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap_or_else(|e| panic!("SANs {names:?}: {e}"));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, subject_cn);
        params.distinguished_name.push(DnType::OrganizationName, "swarmlb tests");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate, PEM (for `curl --cacert` or `openssl` by hand).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's subject CN.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A rustls client config (TLS 1.2 and 1.3, `ring` provider) whose only
/// trust anchor is `ca`, offering ALPN `http/1.1`.
pub fn tls_client(ca: &TestCa) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).expect("a test CA is a valid trust anchor");
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// What a completed handshake showed about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// The leaf certificate's subject CN (empty if it has none).
    pub peer_cn: String,
    /// The leaf certificate's SANs: DNS names as written, IP addresses in
    /// their usual text form.
    pub peer_sans: Vec<String>,
    /// The negotiated protocol version (`TLSv1_3` or `TLSv1_2`).
    pub protocol_version: ProtocolVersion,
    /// The negotiated ALPN protocol, if any (`http/1.1` from nginx).
    pub alpn: Option<String>,
}

/// Opens a TCP connection to `addr` from inside `ns`, with [`IO_TIMEOUT`]
/// for the connect and for later reads and writes. The socket belongs to
/// `ns` for its whole life, whichever thread uses it.
pub fn connect(ns: &Netns, addr: SocketAddr) -> Result<TcpStream> {
    let stream = ns
        .run(move || TcpStream::connect_timeout(&addr, IO_TIMEOUT))
        .with_context(|| format!("connect to {addr} from {}", ns.name()))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Does a blocking TLS handshake over `stream`, sending `sni` as the server
/// name (an IP address sends no SNI, as with any client) and verifying the
/// chain and the name against `config`'s roots. On success the connection
/// is closed (close_notify) and what the server presented is returned.
///
/// A handshake that fails on the TLS level returns an error whose chain
/// holds the [`rustls::Error`] (see [`tls_error`]), so a test can tell a
/// certificate the client rejected (`InvalidCertificate(..)`) from an alert
/// the server sent or a dropped connection.
pub fn handshake(stream: TcpStream, config: &ClientConfig, sni: &str) -> Result<HandshakeInfo> {
    let (mut tls, info) = connect_tls(stream, config, sni)?;
    tls.conn.send_close_notify();
    // Best effort: the handshake, which is what was asked, succeeded.
    let _ = tls.conn.complete_io(&mut tls.sock);
    Ok(info)
}

/// `GET path` over TLS with SNI and `Host:` both `sni`, HTTP/1.1 with
/// `Connection: close`; returns the status code and the body (read up to
/// `Content-Length`, or to the end of the stream without one). Chunked
/// responses are not supported (nginx sends none for static files and
/// `return`).
pub fn https_get(stream: TcpStream, config: &ClientConfig, sni: &str, path: &str) -> Result<(u16, String)> {
    let (mut tls, _) = connect_tls(stream, config, sni)?;
    http_exchange(&mut tls, sni, path).with_context(|| format!("GET https://{sni}{path}"))
}

/// `GET path` in plain HTTP/1.1 with `Host: host` and `Connection: close`;
/// returns the status code and the body, as [`https_get`] does.
pub fn http_get(mut stream: TcpStream, host: &str, path: &str) -> Result<(u16, String)> {
    set_default_timeouts(&stream)?;
    http_exchange(&mut stream, host, path).with_context(|| format!("GET http://{host}{path}"))
}

/// The first [`rustls::Error`] in `err`'s chain: what made a handshake or a
/// TLS read fail, for tests that assert *why* a connection was refused.
pub fn tls_error(err: &anyhow::Error) -> Option<&rustls::Error> {
    err.chain().find_map(|e| e.downcast_ref::<rustls::Error>())
}

/// The subject CN and SANs of a DER certificate, as in [`HandshakeInfo`].
pub fn cert_names(der: &[u8]) -> Result<(String, Vec<String>)> {
    let (_, cert) = X509Certificate::from_der(der).context("parse X.509 certificate")?;
    let cn = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_owned();
    let mut sans = Vec::new();
    if let Some(ext) = cert.subject_alternative_name().context("parse subjectAltName")? {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(s) => sans.push(s.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => sans.push(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(*b)?)).to_string()),
                    16 => sans.push(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(*b)?)).to_string()),
                    n => bail!("IP address SAN of {n} bytes"),
                },
                other => sans.push(other.to_string()),
            }
        }
    }
    Ok((cn, sans))
}

/// Puts [`IO_TIMEOUT`] on a stream that has no timeouts, so no helper can
/// block forever; timeouts the caller chose are kept.
fn set_default_timeouts(stream: &TcpStream) -> io::Result<()> {
    if stream.read_timeout()?.is_none() {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
    }
    if stream.write_timeout()?.is_none() {
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
    }
    Ok(())
}

/// Handshakes and returns the established stream with what it showed.
fn connect_tls(
    stream: TcpStream,
    config: &ClientConfig,
    sni: &str,
) -> Result<(StreamOwned<ClientConnection, TcpStream>, HandshakeInfo)> {
    set_default_timeouts(&stream)?;
    let peer = stream.peer_addr().ok();
    let name = ServerName::try_from(sni.to_owned()).with_context(|| format!("server name {sni:?}"))?;
    let mut conn = ClientConnection::new(Arc::new(config.clone()), name)?;
    let mut sock = stream;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(unwrap_tls_error).with_context(|| {
            format!("TLS handshake with {} (SNI {sni})", peer.map_or("?".into(), |p| p.to_string()))
        })?;
    }
    let leaf =
        conn.peer_certificates().and_then(|c| c.first()).context("handshake finished without a server certificate")?;
    let (peer_cn, peer_sans) = cert_names(leaf)?;
    let info = HandshakeInfo {
        peer_cn,
        peer_sans,
        protocol_version: conn.protocol_version().context("no protocol version after the handshake")?,
        alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
    };
    Ok((StreamOwned::new(conn, sock), info))
}

/// rustls reports TLS failures from `complete_io` as an `io::Error` wrapping
/// a `rustls::Error`; lift the latter out so [`tls_error`] finds it by type.
fn unwrap_tls_error(e: io::Error) -> anyhow::Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => anyhow::Error::new(tls.clone()),
        None => anyhow::Error::new(e),
    }
}

/// Sends one GET and reads the response.
fn http_exchange<S: Read + Write>(s: &mut S, host: &str, path: &str) -> Result<(u16, String)> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: swarmlb-harness\r\nConnection: close\r\n\r\n")?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, body)) = parse_response(&buf, false)? {
            return Ok((status, body));
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A TLS peer that closes without close_notify: the end of the body
            // for a response without a length, an error otherwise (below).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unwrap_tls_error(e)).context("read response"),
        }
    }
    match parse_response(&buf, true)? {
        Some(r) => Ok(r),
        None => bail!("response cut short after {} bytes: {:?}", buf.len(), String::from_utf8_lossy(&buf)),
    }
}

/// Parses a complete response from `buf`: `None` while more is needed.
/// `at_eof`: the stream has ended, so a response without `Content-Length`
/// is complete.
fn parse_response(buf: &[u8], at_eof: bool) -> Result<Option<(u16, String)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().with_context(|| format!("bad Content-Length {v:?}"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("transfer-encoding") && !v.eq_ignore_ascii_case("identity") {
            bail!("Transfer-Encoding {v} is not supported by this client");
        }
    }
    let body = &buf[end + 4..];
    if chunked {
        return Ok(dechunk(body)?.map(|b| (status, String::from_utf8_lossy(&b).into_owned())));
    }
    match length {
        Some(n) if body.len() >= n => Ok(Some((status, String::from_utf8_lossy(&body[..n]).into_owned()))),
        None if at_eof => Ok(Some((status, String::from_utf8_lossy(body).into_owned()))),
        _ => Ok(None),
    }
}

/// A chunked body (RFC 9112, 7.1) put together: `None` until the last
/// chunk arrived. Chunk extensions and trailers are skipped.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {line:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn chunked_bodies_are_put_together() {
        let wire = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
        assert_eq!(dechunk(wire).unwrap().as_deref(), Some(&b"Wikipedia"[..]));
        assert_eq!(dechunk(&wire[..12]).unwrap(), None, "incomplete");
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[test]
    fn issued_certificate_names() {
        let ca = TestCa::new();
        let (cert_pem, key_pem) = ca.issue(&["a.com", "*.b.com", "10.0.0.2", "fd00::2"], "w1");
        assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----"), "{cert_pem}");
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{key_pem}");
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (cn, sans) = cert_names(&der).unwrap();
        assert_eq!(cn, "w1");
        assert_eq!(sans, ["a.com", "*.b.com", "10.0.0.2", "fd00::2"]);
        let (ca_cn, ca_sans) = cert_names(ca.cert_der()).unwrap();
        assert_eq!(ca_cn, ca.name());
        assert!(ca_sans.is_empty());
        assert_ne!(TestCa::new().name(), ca.name(), "CA names are unique");
    }

    #[test]
    fn parse_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(r, false).unwrap(), Some((200, "hello".into())));
        assert_eq!(parse_response(&r[..r.len() - 1], false).unwrap(), None);
        let r = b"HTTP/1.1 404 Not Found\r\nServer: x\r\n\r\ngone";
        assert_eq!(parse_response(r, false).unwrap(), None);
        assert_eq!(parse_response(r, true).unwrap(), Some((404, "gone".into())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false).unwrap(), Some((200, "hello".into())));
        assert_eq!(parse_response(&chunked[..chunked.len() - 5], false).unwrap(), None, "the last chunk is still to come");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).is_err());
        assert!(parse_response(b"garbage\r\n\r\n", true).is_err());
    }
}
