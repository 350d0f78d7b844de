//! The soak for a minute (`cargo xtask soak` runs the same for ten): new
//! connections at 150 a second and 50 long-lived streams through an IPv4
//! and an IPv6 VIP while a backend is added, removed, drained, undrained
//! or reweighted every 3 s. Nothing the design keeps breaks, every new
//! connection is answered by a backend taking new flows (or was in flight
//! while a removal was applied), removals break exactly the streams on the
//! removed backend, the flow and NAT tables stay under their bounds and the
//! agent's memory stays flat. The rules: `harness::soak::verdict`.

use std::time::Duration;

use harness::soak::{self, Plan};

#[test]
fn a_minute_of_load_through_backend_churn_breaks_nothing_the_design_keeps() {
    harness::require_root().unwrap();
    let mut plan = Plan::new(Duration::from_secs(60));
    plan.progress = Duration::from_secs(10);
    let r = soak::run(&plan).expect("the soak runs");
    println!("{}", r.markdown());
    let violations = r.violations();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // A run without these would prove little.
    for kind in ["add", "remove", "drain", "undrain"] {
        assert!(r.changes.contains_key(kind), "the churn did no {kind}: {:?}", r.changes);
    }
    assert!(r.streams.on_removed > 0 && r.streams.broken_by_removal > 0, "removals broke streams: {:?}", r.streams);
    assert!(r.streams.kept >= plan.streams / 2 && r.streams.alive_at_end > 0, "streams outlived changes: {:?}", r.streams);
    assert!(r.flows_max > 0 && r.rss_start_kib > 0, "the gauges were read");
}
