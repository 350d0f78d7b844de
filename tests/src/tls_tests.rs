//! The TLS fixtures against the real thing: Debian's nginx in a server
//! namespace, rustls clients in a client namespace, over IPv4 and IPv6.
//! Clients verify every chain against the test's own CA, so these tests
//! also show that a wrong name or a foreign CA is refused, not just that
//! bytes flow.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use rustls::{CertificateError, ProtocolVersion};

use crate::{
    nginx::{Nginx, HTTPS_PORT, HTTP_PORT},
    tls::{connect, handshake, http_get, https_get, tls_client, tls_error, TestCa},
    Topology, TwoHosts,
};

/// Skips (passes) a namespace test when not root, with a message.
macro_rules! need_root {
    () => {
        if !crate::root_or_skip() {
            return;
        }
    };
}

const VHOSTS: [&str; 3] = ["a.com", "b.com", "c.com"];

/// A two-host network with nginx as worker `w1` on the server's addresses.
fn setup(tag: &str) -> (TwoHosts, TestCa, Nginx) {
    let net = Topology::two_hosts(tag);
    let ca = TestCa::new();
    let nginx = Nginx::start(&net.server, "w1", &net.server_addrs(), &ca, &VHOSTS).unwrap();
    (net, ca, nginx)
}

/// Asserts that `result` failed because the client rejected the server's
/// certificate for `expected`'s reason.
fn assert_cert_error<T: std::fmt::Debug>(result: anyhow::Result<T>, expected: fn(&CertificateError) -> bool) {
    let err = result.expect_err("the handshake must fail");
    match tls_error(&err) {
        Some(rustls::Error::InvalidCertificate(e)) if expected(e) => {}
        other => panic!("wrong failure {other:?}: {err:#}"),
    }
}

fn not_valid_for_name(e: &CertificateError) -> bool {
    matches!(e, CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })
}

/// PIDs of processes whose command line mentions `dir` (an instance's
/// private directory: unique, so only that instance's processes match).
fn processes_using(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Asserts that an instance with `pid` and `dir` left nothing behind.
fn assert_nothing_left(pid: u32, dir: &Path) {
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(processes_using(dir).is_empty(), "nginx processes left: {:?}", processes_using(dir));
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still exists");
}

#[test]
fn each_vhost_presents_its_certificate_v4_and_v6() {
    need_root!();
    let (net, ca, nginx) = setup("tlsvh");
    let client = tls_client(&ca);
    for addr in nginx.https_addrs() {
        for vhost in VHOSTS {
            let info = handshake(connect(&net.client, addr).unwrap(), &client, vhost)
                .unwrap_or_else(|e| panic!("{vhost} at {addr}: {e:#}"));
            assert_eq!(info.peer_cn, "w1", "{vhost} at {addr}");
            assert_eq!(info.peer_sans, [vhost], "{vhost} at {addr}");
            assert_eq!(info.protocol_version, ProtocolVersion::TLSv1_3);
            assert_eq!(info.alpn.as_deref(), Some("http/1.1"));

            let (status, body) = https_get(connect(&net.client, addr).unwrap(), &client, vhost, "/").unwrap();
            assert_eq!((status, body), (200, format!("worker=w1 host={vhost}\n")), "{vhost} at {addr}");
        }
    }
    // Handshakes without a request are not logged: the six GETs are.
    assert_eq!(nginx.wait_access_count(6, Duration::from_secs(2)), 6, "{:#?}", nginx.accesses());
    let accesses = nginx.accesses();
    let clients: BTreeSet<IpAddr> = accesses.iter().map(|a| a.client).collect();
    assert_eq!(clients, net.client_addrs().into_iter().collect(), "nginx saw the client's own addresses");
    for a in &accesses {
        assert_eq!(a.sni.as_deref(), Some(a.host.as_str()), "{a:?}");
        assert_eq!((a.local.port(), a.request.as_str(), a.status), (HTTPS_PORT, "GET /", 200), "{a:?}");
    }
    // Only notices and info (start-up, the readiness probes' closed
    // connections): nothing about the config or the certificates.
    let log = nginx.error_log();
    for level in ["[warn]", "[error]", "[crit]", "[alert]", "[emerg]"] {
        assert!(!log.contains(level), "{log}");
    }
}

#[test]
fn unknown_names_and_foreign_cas_are_refused() {
    need_root!();
    let (net, ca, nginx) = setup("tlsbad");
    let client = tls_client(&ca);
    let stranger = tls_client(&TestCa::new());
    for addr in nginx.https_addrs() {
        // An SNI no vhost serves gets the default server's certificate,
        // which names neither it nor a vhost.
        assert_cert_error(handshake(connect(&net.client, addr).unwrap(), &client, "d.com"), not_valid_for_name);
        // No SNI at all (an IP address as the name): the same.
        let ip = addr.ip().to_string();
        assert_cert_error(handshake(connect(&net.client, addr).unwrap(), &client, &ip), not_valid_for_name);
        // The default server's own name verifies, and names the worker.
        let info = handshake(connect(&net.client, addr).unwrap(), &client, &nginx.default_name()).unwrap();
        assert_eq!((info.peer_cn.as_str(), info.peer_sans.clone()), ("w1", vec![nginx.default_name()]));
        // A client trusting another CA rejects every vhost's chain.
        for vhost in VHOSTS {
            assert_cert_error(handshake(connect(&net.client, addr).unwrap(), &stranger, vhost), |e| {
                matches!(e, CertificateError::UnknownIssuer)
            });
            assert_cert_error(https_get(connect(&net.client, addr).unwrap(), &stranger, vhost, "/"), |e| {
                matches!(e, CertificateError::UnknownIssuer)
            });
        }
    }
    assert_eq!(nginx.access_count(), 0, "no request got through: {:#?}", nginx.accesses());
}

#[test]
fn http_serves_acme_challenges_v4_and_v6() {
    need_root!();
    let (net, _ca, nginx) = setup("tlsacme");
    let token = "Xr7_tok-3n";
    let key_auth = format!("{token}.thumbprint-of-w1");
    nginx.put_acme_challenge(token, &key_auth).unwrap();
    assert!(nginx.put_acme_challenge("../escape", "x").is_err());
    for addr in nginx.http_addrs() {
        let get = |path: &str| http_get(connect(&net.client, addr).unwrap(), "a.com", path).unwrap();
        assert_eq!(get(&format!("/.well-known/acme-challenge/{token}")), (200, key_auth.clone()), "{addr}");
        assert_eq!(get("/.well-known/acme-challenge/unknown").0, 404, "{addr}");
        assert_eq!(get("/"), (200, "worker=w1\n".to_owned()), "{addr}");
    }
    assert_eq!(nginx.wait_access_count(6, Duration::from_secs(2)), 6);
    for a in nginx.accesses() {
        assert_eq!((a.local.port(), a.sni.as_deref(), a.host.as_str()), (HTTP_PORT, None, "a.com"), "{a:?}");
        assert!(net.client_addrs().contains(&a.client), "{a:?}");
    }
}

#[test]
fn two_workers_in_one_namespace_answer_for_themselves() {
    need_root!();
    let mut net = Topology::two_hosts("tls2w");
    net.topo.addr(&net.server, TwoHosts::SERVER_IF, "10.0.0.3/24");
    net.topo.addr(&net.server, TwoHosts::SERVER_IF, "fd00::3/64");
    let ca = TestCa::new();
    let w1 = Nginx::start(&net.server, "w1", &net.server_addrs(), &ca, &VHOSTS).unwrap();
    let w2 = Nginx::start(&net.server, "w2", &["10.0.0.3".parse().unwrap(), "fd00::3".parse().unwrap()], &ca, &VHOSTS)
        .unwrap();
    assert_ne!(w1.dir(), w2.dir());
    let client = tls_client(&ca);
    for (nginx, name) in [(&w1, "w1"), (&w2, "w2")] {
        for addr in nginx.https_addrs() {
            let info = handshake(connect(&net.client, addr).unwrap(), &client, "b.com").unwrap();
            assert_eq!(info.peer_cn, name, "{addr}");
        }
    }
}

#[test]
fn nginx_leaves_nothing_behind() {
    need_root!();
    let net = Topology::two_hosts("tlsgone");
    let ca = TestCa::new();

    // Normal drop.
    let nginx = Nginx::start(&net.server, "w1", &net.server_addrs(), &ca, &VHOSTS).unwrap();
    let (pid, dir): (u32, PathBuf) = (nginx.pid(), nginx.dir().to_owned());
    assert!(dir.join("nginx.conf").exists());
    assert_eq!(processes_using(&dir), [pid], "one process, no workers");
    drop(nginx);
    assert_nothing_left(pid, &dir);

    // Dropped while a test panics.
    let (server, ca2) = (net.server.clone(), &ca);
    let mut seen = None;
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let nginx = Nginx::start(&server, "w2", &[IpAddr::V4(TwoHosts::SERVER4)], ca2, &["a.com"]).unwrap();
        seen = Some((nginx.pid(), nginx.dir().to_owned()));
        panic!("deliberate panic with nginx running");
    }));
    assert!(unwound.is_err());
    let (pid, dir) = seen.expect("nginx started");
    assert_nothing_left(pid, &dir);

    // A start that fails (an address the namespace does not have) says why
    // and cleans up too.
    // (A worker name no other test uses: their directories come and go
    // in parallel.)
    let err = Nginx::start(&net.server, "failstart", &["10.9.9.9".parse().unwrap()], &ca, &[]).unwrap_err();
    assert!(format!("{err:#}").contains("10.9.9.9"), "{err:#}");
    assert!(dirs_of_this_process("failstart").is_empty(), "{:?}", dirs_of_this_process("failstart"));

    // Nothing listens any more.
    for port in [HTTP_PORT, HTTPS_PORT] {
        assert!(connect(&net.client, SocketAddr::new(IpAddr::V4(TwoHosts::SERVER4), port)).is_err());
    }
}

/// This process's nginx directories for `worker` that exist right now.
fn dirs_of_this_process(worker: &str) -> Vec<PathBuf> {
    let prefix = format!("swl-nginx-{}-", std::process::id());
    let suffix = format!("-{worker}");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
        .map(|n| std::env::temp_dir().join(n))
        .collect()
}

#[test]
fn unspecified_addresses_listen_on_every_address() {
    need_root!();
    let net = Topology::two_hosts("tlsany");
    let ca = TestCa::new();
    let any: [IpAddr; 2] = ["0.0.0.0".parse().unwrap(), "::".parse().unwrap()];
    let nginx = Nginx::start(&net.server, "w1", &any, &ca, &["a.com"]).unwrap();
    let client = tls_client(&ca);
    for ip in net.server_addrs() {
        let (status, body) =
            https_get(connect(&net.client, SocketAddr::new(ip, HTTPS_PORT)).unwrap(), &client, "a.com", "/").unwrap();
        assert_eq!((status, body.as_str()), (200, "worker=w1 host=a.com\n"), "{ip}");
    }
    assert_eq!(nginx.wait_access_count(2, Duration::from_secs(2)), 2);
    let locals: BTreeSet<IpAddr> = nginx.accesses().iter().map(|a| a.local.ip()).collect();
    assert_eq!(locals, net.server_addrs().into_iter().collect(), "the address each connection reached");
}
