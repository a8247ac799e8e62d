//! Netfilter netlink framing shared by the conntrack and NFLOG readers: messages and
//! attributes both ways (the parsers are pure; the encoders feed tests and benchmarks), and a
//! multicast reader that takes bursts.

pub(crate) const NLM_F_REQUEST: u16 = 1;
pub(crate) const NLM_F_ACK: u16 = 4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

/// Each netlink message in one datagram: (type, flags, payload after the header). Stops at the
/// first truncated or malformed header.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let msg = &buf[16..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some((ty, flags, msg))
    })
}

const NLA_TYPE_MASK: u16 = 0x3fff;

/// Netlink attributes in `buf`: (type without flags, payload).
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let payload = &buf[4..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

pub(crate) fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(((4 + payload.len()) as u16).to_ne_bytes());
    v.extend(ty.to_ne_bytes());
    v.extend(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// One netfilter netlink message: header, nfgenmsg (family, version 0, `res_id`), attributes.
pub(crate) fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(((16 + 4 + attrs.len()) as u32).to_ne_bytes());
    v.extend(ty.to_ne_bytes());
    v.extend(flags.to_ne_bytes());
    v.extend(seq.to_ne_bytes());
    v.extend(0u32.to_ne_bytes());
    v.extend([family, 0]);
    v.extend(res_id.to_be_bytes());
    v.extend(attrs);
    v
}

/// A netfilter netlink socket read by a reader thread: blocking reads with a timeout (so the
/// thread sees a stop), bursts taken in one wake-up, kernel overruns reported as ENOBUFS.
pub(crate) struct Reader {
    pub(crate) sock: netlink_sys::Socket,
    buf: Vec<u8>,
    /// An ENOBUFS seen while draining, returned by the next read.
    overrun: bool,
}

impl Reader {
    pub(crate) fn new(sock: netlink_sys::Socket) -> Self {
        // A burst must not overflow the socket before the reader drains it.
        let _ = sock.set_rx_buf_sz(4 << 20);
        Reader { sock, buf: vec![0; 1 << 16], overrun: false }
    }

    /// Make reads give up (EAGAIN) after `d` without data.
    pub(crate) fn set_read_timeout(&self, d: std::time::Duration) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let tv = libc::timeval { tv_sec: d.as_secs() as libc::time_t, tv_usec: d.subsec_micros() as libc::suseconds_t };
        // SAFETY: a valid socket fd and a timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// Block for the next datagram. `Err` with ENOBUFS: the kernel dropped messages (the
    /// caller counts them as lost, never silently).
    pub(crate) fn recv<T>(&mut self, parse: fn(&[u8]) -> Vec<T>) -> std::io::Result<Vec<T>> {
        if std::mem::take(&mut self.overrun) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
        Ok(parse(&self.buf[..n]))
    }

    /// `recv`, then every datagram already queued without blocking: one wake-up per burst.
    pub(crate) fn recv_batch<T>(&mut self, parse: fn(&[u8]) -> Vec<T>) -> std::io::Result<Vec<T>> {
        let mut out = self.recv(parse)?;
        loop {
            match self.sock.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => out.extend(parse(&self.buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                // An overrun after a good read: report it next call, keep what was read.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && !out.is_empty() => {
                    self.overrun = true;
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
