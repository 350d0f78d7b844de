//! systemd's readiness protocol (`Type=notify`): `READY=1` once the first
//! config is applied, so `systemctl start` returns when the data path is
//! in place (and units ordered after swarmlb start after that).
//!
//! Written here rather than with the `sd-notify` crate: the protocol is
//! one datagram of `KEY=VALUE` lines to the unix socket `$NOTIFY_SOCKET`
//! (a path, or an abstract name after `@`), a dozen lines, and it keeps
//! the agent's dependency tree (audited in docs/dependencies.md) as it is.

use std::os::unix::net::UnixDatagram;

use tracing::warn;

/// Sends `state` (e.g. `"READY=1\nSTATUS=…"`) to the service manager, if
/// one asked for it; without `$NOTIFY_SOCKET` it does nothing. A failure
/// is logged, never fatal: the data path runs whether systemd hears or not.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        warn!(socket = %path.to_string_lossy(), error = %e, "telling the service manager {state:?} failed");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::{linux::net::SocketAddrExt, unix::ffi::OsStrExt};
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
        None => std::os::unix::net::SocketAddr::from_pathname(path)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// `READY=1` with the pid (systemd then knows the main process even when
/// it was not the one started) and a one-line status.
pub fn ready(status: &str) {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS={status}",
        std::process::id()
    ));
}
