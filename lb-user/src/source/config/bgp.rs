//! `[bgp]`: how this edge tells BIRD which VIPs it can serve
//! (docs/scale-out.md). swarmlb speaks no BGP: it keeps one host route per
//! servable VIP in a kernel routing table of its own, which BIRD's kernel
//! protocol learns and its BGP sessions announce.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Locator};

/// The routing tables the kernel itself uses (`local`, `main`,
/// `default`, and 0, "unspecified"): a VIP route there would be
/// forwarded by this host, not only announced.
const KERNEL_TABLES: [u32; 4] = [0, 253, 254, 255];

/// Where BIRD 2's control socket is on Debian.
pub const DEFAULT_BIRDC_SOCKET: &str = "/run/bird/bird.ctl";

/// `[bgp]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    /// The kernel routing table the VIP routes go into; BIRD's `kernel`
    /// protocol reads it (`kernel table N; learn;`). No `ip rule` should
    /// send traffic through it.
    pub table: u32,
    /// BIRD's control socket, for `swarmlb status` (`birdc -s`).
    pub birdc_socket: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    table: Spanned<i64>,
    birdc_socket: Option<Spanned<String>>,
}

/// Validates `[bgp]`; it needs a `[balancer]` (its VIPs are what it announces).
pub(super) fn parse(loc: &Locator, raw: Option<&Spanned<RawBgp>>, have_balancer: bool) -> Result<Option<BgpConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if !have_balancer {
        return Err(loc.at(raw.span(), "[bgp]: announces the balancer's VIPs, so it needs a [balancer] section"));
    }
    let r = raw.get_ref();
    let table = match u32::try_from(*r.table.get_ref()) {
        Ok(t) if !KERNEL_TABLES.contains(&t) => t,
        _ => {
            return Err(loc.at(
                r.table.span(),
                format!(
                    "bgp.table = {}: expected a routing table of swarmlb's own, 1-4294967295 except 253 (default), 254 (main) and 255 (local)",
                    r.table.get_ref()
                ),
            ))
        }
    };
    let birdc_socket = match &r.birdc_socket {
        None => PathBuf::from(DEFAULT_BIRDC_SOCKET),
        Some(s) if s.get_ref().starts_with('/') => PathBuf::from(s.get_ref()),
        Some(s) => return Err(loc.at(s.span(), format!("bgp.birdc_socket = {:?}: must be an absolute path", s.get_ref()))),
    };
    Ok(Some(BgpConfig { table, birdc_socket }))
}
