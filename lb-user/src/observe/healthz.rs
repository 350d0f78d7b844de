//! `GET /healthz`: whether the data path is whole — every configured
//! interface still there and carrying an XDP program, every zone
//! interface bound to its zone, every map and link pinned (a restart would
//! adopt it). A load balancer in front or a supervisor can act on the
//! answer; the reason says what to look at.

use crate::{observe::status::StatusReport, source::links};

/// `Ok` with what was found whole, or `Err` with the first thing that is not.
pub async fn check(r: &StatusReport) -> Result<String, String> {
    if !r.agent.pins_ok {
        return Err(format!(
            "the pins are missing (a restart would not adopt the data path): {}",
            r.agent.pins_error.as_deref().unwrap_or("being restored")
        ));
    }
    for i in &r.interfaces {
        match links::link(i.ifindex).await {
            Ok(Some(l)) if l.name != i.name => {
                return Err(format!("interface {} (ifindex {}) is gone; ifindex {} is now {}", i.name, i.ifindex, i.ifindex, l.name))
            }
            Ok(Some(l)) if !l.xdp => return Err(format!("interface {} carries no XDP program", i.name)),
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("interface {} (ifindex {}) is gone", i.name, i.ifindex)),
            Err(e) => return Err(format!("{e:#}")),
        }
        if !i.zone.is_empty() && !i.bound {
            return Err(format!("interface {} is not bound to its zone {}", i.name, i.zone));
        }
    }
    Ok(format!("{} interfaces carry their XDP programs; maps and links pinned", r.interfaces.len()))
}
