//! `BPF_PROG_TEST_RUN` on the agent's loaded programs: a frame in, the XDP
//! action (and the frame as the program left it) out.

use anyhow::{Context, Result};
use aya::programs::{TestRun as _, TestRunOptions};
use lb_user::datapath::loader::{Datapath, Program};

/// Test runs of a [`Datapath`]'s programs.
pub trait TestRun {
    /// Runs `which` `repeat` times over `frame` (as if it arrived on the
    /// current namespace's loopback); returns the XDP action and the
    /// kernel's mean time per run.
    fn test_run(&mut self, which: Program, frame: &[u8], repeat: u32) -> Result<(u32, std::time::Duration)>;

    /// Runs `which` once over `frame` as if it arrived on `ifindex` (an
    /// interface of the current network namespace); returns the XDP action
    /// and the packet as the program left it.
    fn test_run_on(&mut self, which: Program, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)>;
}

impl TestRun for Datapath {
    fn test_run(&mut self, which: Program, frame: &[u8], repeat: u32) -> Result<(u32, std::time::Duration)> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let r = self.program_mut(which)?.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration))
    }

    fn test_run_on(&mut self, which: Program, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        // The kernel wants `data_end` = the frame's length and no metadata.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let r = self.program_mut(which)?.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }
}
