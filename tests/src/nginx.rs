//! Debian's nginx as a Swarm node's proxy, inside a test namespace: TLS
//! virtual hosts on 443 with certificates from a [`TestCa`], and plain HTTP
//! on 80 serving ACME HTTP-01 challenges, which is what the load balancer
//! forwards to its backends (443→443, 80→80).
//!
//! Every answer names the worker: the certificates' subject CN is the
//! worker's name and the bodies say `worker=<name>`, so a test sees which
//! backend a connection reached, from the handshake alone or from a GET.
//!
//! Each instance lives in a private directory under the temp dir (config,
//! certificates, pid file, logs, temp paths, ACME webroot); nothing under
//! `/etc/nginx`, `/var/log/nginx` or `/var/lib/nginx` is read or written,
//! so instances run in parallel and beside a host's own nginx.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::{
        atomic::{AtomicU64, Ordering},
        Once,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{tls::TestCa, ChildGuard, Netns};

/// The port of the plain HTTP server (ACME HTTP-01 challenges).
pub const HTTP_PORT: u16 = 80;
/// The port of the TLS virtual hosts.
pub const HTTPS_PORT: u16 = 443;

/// How long [`Nginx::start`] waits for every listener to accept.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop (`SIGQUIT`) may take before `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Private directories are named `swl-nginx-<pid>-<n>-<worker>`.
const DIR_PREFIX: &str = "swl-nginx-";

/// One request from nginx's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The client address nginx saw (`$remote_addr`): shows whether a path
    /// through the load balancer kept the client's address.
    pub client: IpAddr,
    /// The address and port that accepted the connection.
    pub local: SocketAddr,
    /// The SNI the client sent (`None` on port 80 or without SNI).
    pub sni: Option<String>,
    /// The `Host` the request was served for.
    pub host: String,
    /// Method and URI, e.g. `GET /`.
    pub request: String,
    /// The response status.
    pub status: u16,
}

/// A running nginx in a namespace, configured as a worker node's proxy.
/// Stopped (`SIGQUIT`, then `SIGKILL` after a grace period) and its
/// directory removed on drop, also while a test unwinds.
///
/// nginx runs as a single process (`master_process off`), which serves with
/// one event loop just as one worker process would. That way the only
/// process is the [`ChildGuard`]'s child: it gets `SIGKILL` when the test
/// thread dies, and no orphaned worker can survive the test, keep serving
/// and keep its namespace alive.
pub struct Nginx {
    /// `Option` so that `Drop` can end the process before removing `dir`.
    child: Option<ChildGuard>,
    dir: PathBuf,
    worker: String,
    listen: Vec<IpAddr>,
    vhosts: Vec<String>,
    /// The ports whose listeners expect a PROXY protocol header.
    proxy_ports: Vec<u16>,
}

impl std::fmt::Debug for Nginx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nginx")
            .field("worker", &self.worker)
            .field("pid", &self.child.as_ref().map(|c| c.pid()))
            .field("dir", &self.dir)
            .field("listen", &self.listen)
            .field("vhosts", &self.vhosts)
            .finish()
    }
}

impl Nginx {
    /// Starts nginx in `ns` as worker `worker_name` (letters, digits and
    /// `-`), listening on each of `listen` (addresses configured in `ns`;
    /// `0.0.0.0` and `::` listen on every address of their family, e.g. for
    /// a VIP that arrives as the destination), and returns once every
    /// listener accepts connections:
    ///
    /// - `443`, TLS 1.3 only: one virtual host per name in `vhosts` (`a.com`,
    ///   or a wildcard `*.a.com`), each with its own certificate from `ca`
    ///   (SAN the vhost, subject CN `worker_name`). `GET /` answers
    ///   `worker=<name> host=<host>\n`. A client whose SNI matches no vhost
    ///   (or that sends none) gets the default server, whose certificate
    ///   names only [`Nginx::default_name`], so name verification fails.
    /// - `80`: `/.well-known/acme-challenge/<token>` serves what
    ///   [`Nginx::put_acme_challenge`] wrote (404 otherwise); everything
    ///   else answers `worker=<name>\n`.
    ///
    /// Call it from the thread that owns the value: like [`Netns::spawn`],
    /// nginx gets `SIGKILL` when the thread that started it exits, so
    /// starting workers on short-lived helper threads would kill them.
    pub fn start(ns: &Netns, worker_name: &str, listen: &[IpAddr], ca: &TestCa, vhosts: &[&str]) -> Result<Self> {
        Self::launch(ns, worker_name, listen, ca, vhosts, &[])
    }

    /// [`Nginx::start`] behind a balancer that sends a PROXY protocol
    /// header on `ports` ([`HTTP_PORT`], [`HTTPS_PORT`]): their listeners
    /// have `proxy_protocol`, and the client address logged
    /// ([`Access::client`]) is the header's (`real_ip_header
    /// proxy_protocol`); a port not in `ports` is plain and logs the peer.
    /// Port 80 also takes `PUT /up/<name>` (WebDAV: the body is stored,
    /// [`Nginx::uploaded`]) and serves `GET /files/<name>` from
    /// [`Nginx::put_file`].
    pub fn start_proxy_protocol(ns: &Netns, worker_name: &str, listen: &[IpAddr], ca: &TestCa, vhosts: &[&str], ports: &[u16]) -> Result<Self> {
        if ports.is_empty() || ports.iter().any(|p| ![HTTP_PORT, HTTPS_PORT].contains(p)) {
            bail!("nginx {worker_name}: PROXY protocol ports {ports:?}, expected some of {HTTP_PORT} and {HTTPS_PORT}");
        }
        Self::launch(ns, worker_name, listen, ca, vhosts, ports)
    }

    /// A file [`Nginx::start_proxy_protocol`] serves at `/files/<name>`.
    pub fn put_file(&self, name: &str, body: &[u8]) -> Result<()> {
        check_worker_name(name)?;
        let path = self.dir.join("files").join(name);
        fs::write(&path, body).with_context(|| format!("write {}", path.display()))
    }

    /// What a client stored with `PUT /up/<name>`.
    pub fn uploaded(&self, name: &str) -> Option<Vec<u8>> {
        check_worker_name(name).ok()?;
        fs::read(self.dir.join("up").join(name)).ok()
    }

    fn launch(ns: &Netns, worker_name: &str, listen: &[IpAddr], ca: &TestCa, vhosts: &[&str], proxy_ports: &[u16]) -> Result<Self> {
        crate::require_root()?;
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(remove_stale_dirs);
        check_worker_name(worker_name)?;
        for v in vhosts {
            check_vhost(v)?;
        }
        if listen.is_empty() {
            bail!("nginx {worker_name}: no listen address");
        }

        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}-{worker_name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // The path goes into the config in quotes: keep it to characters
        // that need no escaping there.
        if !dir.to_string_lossy().chars().all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c)) {
            bail!("temp dir {} has characters unsafe in an nginx config", dir.display());
        }
        fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("create {}", dir.display()))?;
        // From here on the directory exists: a failure below removes it
        // through Drop (child None).
        let mut nginx = Self {
            child: None,
            dir,
            worker: worker_name.to_owned(),
            listen: listen.to_vec(),
            vhosts: vhosts.iter().map(|v| v.to_string()).collect(),
            proxy_ports: proxy_ports.to_vec(),
        };
        nginx.write_files(ca).with_context(|| format!("nginx {worker_name}: write config"))?;
        let d = nginx.dir.display().to_string();
        let child = ns
            .try_spawn(
                Command::new("nginx")
                    .arg("-p")
                    .arg(format!("{d}/"))
                    .arg("-c")
                    .arg(format!("{d}/nginx.conf"))
                    // Startup messages to stderr (the guard's log) instead of
                    // the distribution's compiled-in error log path.
                    .args(["-e", "stderr"]),
            )
            .context("is nginx installed? (Debian package `nginx`)")?;
        nginx.child = Some(child);
        nginx.wait_ready(ns).with_context(|| format!("nginx {worker_name} in {}", ns.name()))?;
        Ok(nginx)
    }

    /// The worker name its certificates and answers carry.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The name on the default server's certificate,
    /// `<worker>.default.invalid`: the certificate a client gets for an
    /// SNI that matches no vhost. A client that asks for exactly this name
    /// verifies it, so a health check can identify a worker without a vhost.
    pub fn default_name(&self) -> String {
        format!("{}.default.invalid", self.worker)
    }

    /// The process ID (the only nginx process of this instance).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.pid())
    }

    /// The private directory (config, certificates, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The addresses it listens on.
    pub fn listen(&self) -> &[IpAddr] {
        &self.listen
    }

    /// `host:443` for each listen address: what a test connects to (with
    /// unspecified listen addresses, connect to a concrete one instead).
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().map(|a| SocketAddr::new(*a, HTTPS_PORT)).collect()
    }

    /// `host:80` for each listen address.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().map(|a| SocketAddr::new(*a, HTTP_PORT)).collect()
    }

    /// Makes `GET /.well-known/acme-challenge/<token>` on port 80 answer
    /// `body` (as an ACME client does before asking for validation); served
    /// at once, no reload needed.
    pub fn put_acme_challenge(&self, token: &str, body: &str) -> Result<()> {
        // The token's alphabet per RFC 8555 (base64url); anything else could
        // escape the webroot.
        if token.is_empty() || !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("invalid ACME token {token:?}");
        }
        let path = self.dir.join("acme").join(token);
        fs::write(&path, body).with_context(|| format!("write {}", path.display()))
    }

    /// The requests served so far, oldest first.
    ///
    /// nginx logs a request after sending its response, so a client may
    /// read the answer a moment before the line appears: see
    /// [`Nginx::wait_access_count`].
    pub fn accesses(&self) -> Vec<Access> {
        let text = fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines().filter_map(parse_access).collect()
    }

    /// The number of requests served so far.
    pub fn access_count(&self) -> usize {
        self.accesses().len()
    }

    /// Waits up to `timeout` until at least `n` requests are logged;
    /// returns the count reached.
    pub fn wait_access_count(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.access_count();
            if count >= n || Instant::now() >= deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The error log so far (also in the process's output, which a failing
    /// test prints). Lossy: nginx quotes what it could not parse as it
    /// came (a TLS hello where a PROXY header should be), and a strict
    /// read would turn such a log into an empty one.
    pub fn error_log(&self) -> String {
        fs::read(self.dir.join("error.log")).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Stops nginx: `SIGQUIT` (graceful: open requests finish), `SIGKILL`
    /// if it has not exited within the grace period. Returns its exit
    /// status, `None` if it was never started. Drop does this too.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.signal(libc::SIGQUIT);
        if let Some(s) = child.wait_timeout(STOP_GRACE) {
            return Some(s);
        }
        child.signal(libc::SIGKILL);
        child.wait_timeout(STOP_GRACE)
    }

    /// Writes the certificates, the ACME webroot and `nginx.conf`.
    fn write_files(&self, ca: &TestCa) -> Result<()> {
        let d = &self.dir;
        for sub in ["acme", "tmp", "files", "up"] {
            fs::create_dir(d.join(sub))?;
        }
        let write_pair = |stem: &str, names: &[&str]| -> Result<()> {
            let (cert, key) = ca.issue(names, &self.worker);
            fs::write(d.join(format!("{stem}.crt")), cert)?;
            let key_path = d.join(format!("{stem}.key"));
            fs::write(&key_path, key)?;
            fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))?;
            Ok(())
        };
        write_pair("default", &[&self.default_name()])?;
        for (i, v) in self.vhosts.iter().enumerate() {
            write_pair(&format!("vhost{i}"), &[v])?;
        }
        fs::write(d.join("nginx.conf"), self.config())?;
        Ok(())
    }

    /// The configuration text.
    fn config(&self) -> String {
        let d = self.dir.display();
        let w = &self.worker;
        let listen = |port: u16, extra: &str| -> String {
            let pp = if self.proxy_ports.contains(&port) { " proxy_protocol" } else { "" };
            self.listen.iter().fold(String::new(), |mut s, a| {
                let _ = writeln!(s, "        listen {}{extra}{pp};", SocketAddr::new(*a, port));
                s
            })
        };
        // Behind a PROXY protocol balancer: the header's client address
        // is the one logged, files up and down for long transfers.
        let (real_ip, transfers) = if !self.proxy_ports.is_empty() {
            (
                "set_real_ip_from 0.0.0.0/0;\n    set_real_ip_from ::/0;\n    real_ip_header proxy_protocol;\n    client_max_body_size 256m;\n",
                format!(
                    "        location /files/ {{\n            alias \"{d}/files/\";\n        }}\n        location /up/ {{\n            alias \"{d}/up/\";\n            dav_methods PUT;\n            create_full_put_path off;\n        }}\n"
                ),
            )
        } else {
            ("", String::new())
        };
        let mut c = format!(
            r#"# swarmlb test harness: nginx as the proxy of worker {w}
daemon off;
# One process: see Nginx's doc comment in tests/src/nginx.rs.
master_process off;
worker_processes 1;
# Only used to chown the temp dirs: keep them root's, and do not depend on
# the compiled-in user existing.
user root root;
pid "{d}/nginx.pid";
lock_file "{d}/nginx.lock";
error_log "{d}/error.log" info;
error_log stderr warn;

events {{
    worker_connections 1024;
}}

http {{
    # Every path nginx would otherwise take from its compiled-in defaults
    # (under /var/lib/nginx and /var/log/nginx) points into {d}.
    client_body_temp_path "{d}/tmp/body";
    proxy_temp_path "{d}/tmp/proxy";
    fastcgi_temp_path "{d}/tmp/fastcgi";
    uwsgi_temp_path "{d}/tmp/uwsgi";
    scgi_temp_path "{d}/tmp/scgi";
    log_format swl "$remote_addr\t$server_addr\t$server_port\t$ssl_server_name\t$host\t$request_method $request_uri\t$status";
    access_log "{d}/access.log" swl;
    types {{ }}
    default_type text/plain;
    server_tokens off;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    # The soak's long-lived streams make thousands of requests each; by
    # default nginx closes a keep-alive connection after 1000.
    keepalive_requests 1000000;
    {real_ip}
    server {{
{listen80}        server_name _;
        location /.well-known/acme-challenge/ {{
            alias "{d}/acme/";
        }}
{transfers}
        location / {{
            return 200 "worker={w}\n";
        }}
    }}

    server {{
{listen443d}        server_name {default};
        ssl_certificate "{d}/default.crt";
        ssl_certificate_key "{d}/default.key";
        location / {{
            return 200 "worker={w} host=$host\n";
        }}
    }}
"#,
            listen80 = listen(HTTP_PORT, " default_server"),
            listen443d = listen(HTTPS_PORT, " ssl default_server"),
            default = self.default_name(),
        );
        for (i, v) in self.vhosts.iter().enumerate() {
            let _ = write!(
                c,
                r#"
    server {{
{listen443}        server_name {v};
        ssl_certificate "{d}/vhost{i}.crt";
        ssl_certificate_key "{d}/vhost{i}.key";
        location / {{
            return 200 "worker={w} host=$host\n";
        }}
    }}
"#,
                listen443 = listen(HTTPS_PORT, " ssl"),
            );
        }
        c.push_str("}\n");
        c
    }

    /// Polls until every listener accepts a TCP connection; fails at once
    /// with nginx's output if it exits instead (a config error, a port in
    /// use, an address not configured in the namespace).
    fn wait_ready(&mut self, ns: &Netns) -> Result<()> {
        let addrs: Vec<SocketAddr> = self.http_addrs().into_iter().chain(self.https_addrs()).collect();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pending = addrs.clone();
        loop {
            let child = self.child.as_mut().context("not started")?;
            if let Some(status) = child.try_status() {
                bail!("nginx exited at start ({status}):\n{}", child.output_so_far().trim());
            }
            let probe = pending.clone();
            pending = ns.run(move || {
                probe
                    .into_iter()
                    .filter(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err())
                    .collect()
            });
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("no listener on {pending:?} after {START_TIMEOUT:?}; output:\n{}", child.output_so_far().trim());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Never panic here: this runs during unwinding too.
        self.stop();
        // The guard reaps the process (and prints its output if the test is
        // panicking) before the files it used go.
        drop(self.child.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Worker names go into file names, the config and DNS names: one DNS
/// label, so none of those needs escaping.
fn check_worker_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        bail!("worker name {name:?}: use 1-40 letters, digits and inner '-'");
    }
    Ok(())
}

/// A vhost is a DNS name, optionally with a leading `*.` wildcard label.
fn check_vhost(name: &str) -> Result<()> {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let ok = !rest.is_empty()
        && name.len() <= 253
        && rest
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !ok {
        bail!("vhost {name:?} is not a DNS name");
    }
    Ok(())
}

/// Parses one line of the `swl` log format (see [`Nginx::config`]).
fn parse_access(line: &str) -> Option<Access> {
    let f: Vec<&str> = line.split('\t').collect();
    let [client, local, port, sni, host, request, status] = f[..] else { return None };
    Some(Access {
        client: client.parse().ok()?,
        local: SocketAddr::new(local.parse().ok()?, port.parse().ok()?),
        // nginx logs an empty variable as "-".
        sni: (sni != "-" && !sni.is_empty()).then(|| sni.to_owned()),
        host: host.to_owned(),
        request: request.to_owned(),
        status: status.parse().ok()?,
    })
}

/// Removes private directories left by harness processes that no longer
/// exist (a run killed by a timeout cannot run its destructors). Only names
/// `swl-nginx-<pid>-…` whose PID is gone are touched.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else { continue };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = fs::remove_dir_all(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_worker_name("w1").is_ok());
        assert!(check_worker_name("node-3").is_ok());
        for bad in ["", "-w", "w-", "w 1", "w;1", "w/1", "w.1"] {
            assert!(check_worker_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a.com", "*.b.com", "x-y.example.org"] {
            assert!(check_vhost(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a..com", "a.com;", "*.", "a.*.com", "-a.com", "a com"] {
            assert!(check_vhost(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn access_lines_parse() {
        let a = parse_access("10.0.0.1\t10.0.0.2\t443\ta.com\ta.com\tGET /\t200").unwrap();
        assert_eq!(a.client, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(a.local, "10.0.0.2:443".parse().unwrap());
        assert_eq!(a.sni.as_deref(), Some("a.com"));
        assert_eq!((a.host.as_str(), a.request.as_str(), a.status), ("a.com", "GET /", 200));
        let a = parse_access("fd00::1\tfd00::2\t80\t-\tx\tGET /.well-known/acme-challenge/t\t404").unwrap();
        assert_eq!(a.sni, None);
        assert_eq!(a.local, "[fd00::2]:80".parse().unwrap());
        assert!(parse_access("garbage").is_none());
    }
}
