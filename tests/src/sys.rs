//! Thin wrappers over the few libc socket calls the harness needs that std
//! does not offer (non-blocking connect, SO_ERROR, SO_LINGER, epoll, source
//! binding before connect). Kept in one place so the `unsafe` is small and
//! reviewed once.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// Turns a libc `-1 + errno` return into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for `ssize_t` returns.
pub(crate) fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A `socket(2)` call returning an owned descriptor (always CLOEXEC so
/// spawned daemons never inherit scanner sockets).
pub(crate) fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The address family for an IP address.
pub(crate) fn family(ip: IpAddr) -> libc::c_int {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

/// Encodes a socket address for the kernel.
pub(crate) fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Decodes a kernel socket address (IPv4 or IPv6 only).
pub(crate) fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `bind(2)`.
pub(crate) fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    cvt(unsafe { libc::bind(fd.as_raw_fd(), &ss as *const _ as *const libc::sockaddr, len) }).map(drop)
}

/// `connect(2)`; on a non-blocking socket `EINPROGRESS` comes back as an error.
pub(crate) fn connect(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    cvt(unsafe { libc::connect(fd.as_raw_fd(), &ss as *const _ as *const libc::sockaddr, len) }).map(drop)
}

/// `getsockname(2)`.
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), &mut ss as *mut _ as *mut libc::sockaddr, &mut len) })?;
    from_sockaddr(&ss).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
}

/// `setsockopt(2)` with a plain-old-data value.
pub(crate) fn setsockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: T) -> io::Result<()> {
    cvt(unsafe {
        libc::setsockopt(fd, level, name, &val as *const T as *const libc::c_void, size_of::<T>() as libc::socklen_t)
    })
    .map(drop)
}

/// Reads and clears the socket's pending error (`SO_ERROR`): how a
/// non-blocking connect reports its result.
pub(crate) fn so_error(fd: &OwnedFd) -> io::Result<i32> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(err)
}

/// `SO_LINGER {on, 0}`: close sends a RST and leaves no TIME_WAIT socket,
/// so a full scan does not pile up tens of thousands of them.
pub(crate) fn linger_zero(fd: &OwnedFd) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, l);
}

/// Raises the soft open-files limit to the hard one: a scan keeps a few
/// thousand sockets open at once.
pub(crate) fn raise_nofile() {
    let mut r: libc::rlimit = unsafe { zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 && r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

/// A minimal epoll instance; the `u64` token identifies the registered fd.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub(crate) fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
    }

    /// Waits at most `timeout` (rounded up to a millisecond so a short
    /// remaining time never turns into a busy loop). EINTR counts as no event.
    pub(crate) fn wait(&self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> io::Result<usize> {
        let ms = match timeout {
            None => -1,
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, ms) };
        match cvt(n) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// An eventfd used to wake a server thread blocked in epoll for shutdown.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signals an eventfd (ignores errors: the counter can only overflow after
/// 2^64 signals).
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}
