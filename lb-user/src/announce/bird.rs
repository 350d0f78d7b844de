//! What BIRD says about its sessions, for `swarmlb status`: `birdc show
//! protocols` on its control socket, read-only (`-r`).

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One line of `show protocols`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Protocol {
    pub name: String,
    /// `BGP`, `BFD`, `Kernel`, `Device`, …
    pub proto: String,
    /// `up`, `start`, `down`, …
    pub state: String,
    /// What BIRD adds (`Established`, `Active`, `Connect`, an error).
    pub info: String,
}

/// `birdc -r -s SOCKET show protocols`, parsed.
pub fn protocols(socket: &Path) -> Result<Vec<Protocol>> {
    let out = Command::new("birdc").arg("-r").arg("-s").arg(socket).args(["show", "protocols"]).output().context("running birdc (Debian package bird2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("Name") {
        bail!("birdc -s {}: {}{}", socket.display(), text.trim(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(parse(&text))
}

/// The rows under the `Name Proto Table State Since Info` header. `Since`
/// is one or two words (time, or date and time), so `Info` is what
/// follows the first word that looks like a time.
fn parse(text: &str) -> Vec<Protocol> {
    text.lines()
        .skip_while(|l| !l.starts_with("Name"))
        .skip(1)
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let [name, proto, _table, state, rest @ ..] = words.as_slice() else { return None };
            let after_time = rest.iter().position(|w| w.contains(':')).map_or(rest.len(), |i| i + 1);
            Some(Protocol { name: name.to_string(), proto: proto.to_string(), state: state.to_string(), info: rest[after_time..].join(" ") })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_protocols_is_read_with_either_time_format() {
        let text = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\ndevice1    Device     ---        up     08:01:02.345  \nrouter     BGP        ---        up     2026-12-06 08:01:03  Established   \nbfd1       BFD        ---        start  08:01:02.345  Passive\n";
        let p = parse(text);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].name.as_str(), p[0].proto.as_str(), p[0].state.as_str(), p[0].info.as_str()), ("device1", "Device", "up", ""));
        assert_eq!((p[1].name.as_str(), p[1].info.as_str()), ("router", "Established"));
        assert_eq!((p[2].state.as_str(), p[2].info.as_str()), ("start", "Passive"));
    }
}
