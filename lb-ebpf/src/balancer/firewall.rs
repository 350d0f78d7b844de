//! Rule 3b of the model: a VIP's firewall rules, one longest-prefix
//! lookup keyed by (VIP index, source) (`lb_common::firewall`). Only VIPs
//! with rules come here: the service's flag byte says so.

use aya_ebpf::{bindings::xdp_action, maps::lpm_trie::Key};
use lb_common::{
    firewall::{self, key_bits, key_v4, key_v6, FW_VIP_MASK},
    isolator::FAMILY_V4,
};

use crate::maps::{LB_FIREWALL_DROPS, LB_FIREWALL_V4, LB_FIREWALL_V6};

/// `Some(XDP_DROP)`, counted at the rule's slot, when the VIP's rules
/// (`flags`: the service's firewall byte, not 0) refuse `src`.
#[inline(always)]
pub fn check(flags: u8, family: u8, src: &[u8; 16]) -> Option<u32> {
    let vip = u32::from(flags & FW_VIP_MASK);
    let found = if family == FAMILY_V4 {
        LB_FIREWALL_V4.get(&Key::new(key_bits(32), key_v4(vip, [src[0], src[1], src[2], src[3]]))).copied()
    } else {
        LB_FIREWALL_V6.get(&Key::new(key_bits(128), key_v6(vip, *src))).copied()
    };
    let slot = firewall::judge(flags, found)?;
    if let Some(v) = LB_FIREWALL_DROPS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *v += 1 };
    }
    Some(xdp_action::XDP_DROP)
}
