//! Sending frames fast: an AF_PACKET socket with `PACKET_QDISC_BYPASS`
//! (straight to the driver, no qdisc) and `sendmmsg` of a whole batch per
//! system call. On a veth the receiving side's XDP program runs in the
//! sender's softirq, so the rate measured here is what the receiver took.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use crate::{sys, Netns};

/// A send-only AF_PACKET socket bound to one interface of a namespace.
pub struct Tx {
    fd: OwnedFd,
}

impl Tx {
    /// Opens it on `ifname` in `ns` (protocol 0: it receives nothing).
    pub fn open(ns: &Netns, ifname: &str) -> Result<Self> {
        let ifindex = crate::topology::ifindex(ns, ifname)?;
        let fd = ns.run(|| sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)).context("AF_PACKET socket")?;
        let raw = fd.as_raw_fd();
        sys::setsockopt(raw, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1i32).context("PACKET_QDISC_BYPASS")?;
        // Room for a few batches in flight (root may exceed wmem_max).
        sys::setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4i32 << 20)?;
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sys::cvt(unsafe {
            libc::bind(raw, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32)
        })
        .with_context(|| format!("bind AF_PACKET to {ifname} in {}", ns.name()))?;
        Ok(Self { fd })
    }

    /// Sends `lens.len()` frames, frame `i` at `buf[i * stride..][..lens[i]]`,
    /// with as few `sendmmsg` calls as the kernel allows. Returns how many
    /// went out; frames the device refused (its queue full: `ENOBUFS`,
    /// `EAGAIN`) are counted as not sent, and the rest of the batch is
    /// dropped with them, as a real flooder would.
    pub fn send_batch(&self, buf: &mut [u8], stride: usize, lens: &[usize]) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = lens
            .iter()
            .enumerate()
            .map(|(i, len)| libc::iovec { iov_base: buf[i * stride..].as_mut_ptr().cast(), iov_len: *len })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            let rest = &mut msgs[sent..];
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), rest.as_mut_ptr(), rest.len() as u32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                        // The frame at the head was refused; skip it.
                        sent += 1;
                        return Ok(sent - 1 + self.finish(&mut msgs[sent..]));
                    }
                    _ => return Err(e),
                }
            }
            sent += n as usize;
        }
        Ok(sent)
    }

    /// The rest of a batch after a refusal: what still goes out.
    fn finish(&self, rest: &mut [libc::mmsghdr]) -> usize {
        let mut done = 0;
        let mut skipped = 0;
        while done + skipped < rest.len() {
            let r = &mut rest[done + skipped..];
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), r.as_mut_ptr(), r.len() as u32, 0) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // Refused again: give the queue a moment, drop this frame.
                skipped += 1;
                std::thread::yield_now();
                continue;
            }
            done += n as usize;
        }
        done
    }
}
