//! A minimal HTTP/1.1 client: one keep-alive connection, one request in flight.
//!
//! Requests are written with one `write` and responses parsed in place with `httparse`,
//! with no task or channel between the caller and the socket, so the client costs less
//! CPU per request than the server it measures. Bodies with `Content-Length` and chunked
//! bodies are both read; [`SseStream`] decodes an endless chunked `text/event-stream`.
//!
//! With timestamps on, reads use `recvmsg` with `SO_TIMESTAMPNS`: the kernel's receive
//! time of the data (CLOCK_REALTIME, ns), which does not depend on when this tool got
//! around to reading it. Latencies measured between two such stamps exclude the tool's
//! own scheduling delays.

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// What the scenarios need of a response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Lock-Token` header, when present.
    pub lock_token: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// Kernel receive time of the response's last bytes (CLOCK_REALTIME, ns), when
    /// timestamps are on.
    pub stamp: Option<u64>,
}

/// A growable read buffer with a window of unread bytes.
struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Read with `recvmsg` and keep the kernel's receive time.
    stamps: bool,
    /// The receive time of the last read, when `stamps` is on.
    stamp: Option<u64>,
}

impl ReadBuf {
    fn new(capacity: usize, stamps: bool) -> Self {
        Self {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            stamps,
            stamp: None,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more from `stream`; EOF is an error (a response was expected).
    async fn fill(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = if self.stamps {
            let fd = stream.as_raw_fd();
            loop {
                stream.readable().await?;
                let dst = &mut self.buf[self.end..];
                match stream.try_io(Interest::READABLE, || recv_stamped(fd, dst)) {
                    Ok((n, stamp)) => {
                        self.stamp = stamp.or(self.stamp);
                        break n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            stream.read(&mut self.buf[self.end..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }
}

/// `SO_TIMESTAMPNS` (also its control message type) on Linux x86_64 and aarch64.
const SO_TIMESTAMPNS: libc::c_int = 35;

/// Asks the kernel to stamp what `stream` receives.
fn enable_stamps(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a valid pointer for the given length.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg` into `buf`: the bytes read and the kernel's receive time, if stamped.
fn recv_stamped(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer in it refers to a live local buffer of
    // the stated length, and the control messages are read only within what the kernel
    // reported (msg_controllen), through the CMSG_* helpers.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut stamp = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == SO_TIMESTAMPNS {
                let ts: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
        Ok((n as usize, stamp))
    }
}

/// The wall clock (CLOCK_REALTIME) in ns, the clock of the kernel's receive stamps.
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The head of a response.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    lock_token: Option<String>,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads a response head; leaves the body in `rbuf`.
async fn read_head(stream: &mut TcpStream, rbuf: &mut ReadBuf) -> io::Result<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response
            .parse(rbuf.unread())
            .map_err(|e| invalid(format!("bad HTTP response: {e}")))?
        {
            httparse::Status::Complete(used) => {
                let mut head = Head {
                    status: response.code.unwrap_or(0),
                    content_length: None,
                    chunked: false,
                    lock_token: None,
                };
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        let text = std::str::from_utf8(header.value)
                            .map_err(|_| invalid("content-length"))?;
                        head.content_length =
                            Some(text.trim().parse().map_err(|_| invalid("content-length"))?);
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        head.chunked = header
                            .value
                            .windows(7)
                            .any(|w| w.eq_ignore_ascii_case(b"chunked"));
                    } else if header.name.eq_ignore_ascii_case("lock-token") {
                        head.lock_token = Some(String::from_utf8_lossy(header.value).into_owned());
                    }
                }
                rbuf.consume(used);
                return Ok(head);
            }
            httparse::Status::Partial => rbuf.fill(stream).await?,
        }
    }
}

/// A keep-alive connection to one server.
pub struct HttpConn {
    stream: TcpStream,
    host: String,
    rbuf: ReadBuf,
    wbuf: Vec<u8>,
    chunks: ChunkDecoder,
}

impl HttpConn {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> io::Result<Self> {
        Self::connect_with(addr, false).await
    }

    /// Connects to `addr`; with `stamps`, responses carry the kernel's receive time.
    pub async fn connect_with(addr: &str, stamps: bool) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        if stamps {
            enable_stamps(&stream)?;
        }
        Ok(Self {
            stream,
            host: addr.to_owned(),
            rbuf: ReadBuf::new(4096, stamps),
            wbuf: Vec::with_capacity(512),
            chunks: ChunkDecoder::default(),
        })
    }

    /// Sends a request and reads the whole response. `body` is sent as JSON.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        lock_token: Option<&str>,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        self.wbuf.clear();
        let w = &mut self.wbuf;
        w.extend_from_slice(method.as_bytes());
        w.push(b' ');
        w.extend_from_slice(path.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        w.extend_from_slice(self.host.as_bytes());
        w.extend_from_slice(b"\r\n");
        if let Some(token) = lock_token {
            w.extend_from_slice(b"lock-token: ");
            w.extend_from_slice(token.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        if let Some(body) = body {
            w.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
            w.extend_from_slice(body.len().to_string().as_bytes());
            w.extend_from_slice(b"\r\n\r\n");
            w.extend_from_slice(body);
        } else {
            w.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.wbuf).await?;

        let head = read_head(&mut self.stream, &mut self.rbuf).await?;
        let body = if head.chunked {
            let mut body = Vec::new();
            loop {
                let (used, done) = self.chunks.feed(self.rbuf.unread(), &mut body)?;
                self.rbuf.consume(used);
                if done {
                    self.chunks = ChunkDecoder::default();
                    break body;
                }
                self.rbuf.fill(&mut self.stream).await?;
            }
        } else {
            let len = match head.content_length {
                Some(len) => len,
                None if head.status == 204 || head.status == 304 || method == "HEAD" => 0,
                None => return Err(invalid("response without a length")),
            };
            while self.rbuf.unread().len() < len {
                self.rbuf.fill(&mut self.stream).await?;
            }
            let body = self.rbuf.unread()[..len].to_vec();
            self.rbuf.consume(len);
            body
        };
        Ok(Response {
            status: head.status,
            lock_token: head.lock_token,
            body,
            stamp: self.rbuf.stamp,
        })
    }
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Debug, Default)]
struct ChunkDecoder {
    /// Bytes of data left in the current chunk, plus its trailing CRLF.
    left: usize,
    /// The zero-size chunk was seen: only the trailer remains.
    last: bool,
}

impl ChunkDecoder {
    /// Decodes what it can from `input` into `out`: returns the bytes consumed and
    /// whether the body ended.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<(usize, bool)> {
        let mut at = 0;
        loop {
            if self.left > 0 {
                let take = self.left.min(input.len() - at);
                // The final two bytes of `left` are the chunk's CRLF: not data.
                let data_left = self.left.saturating_sub(2);
                let data = take.min(data_left);
                out.extend_from_slice(&input[at..at + data]);
                at += take;
                self.left -= take;
                if self.left > 0 {
                    return Ok((at, false));
                }
                continue;
            }
            let rest = &input[at..];
            let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                return Ok((at, false));
            };
            let line = &rest[..line_end];
            at += line_end + 2;
            if self.last {
                // Trailer lines end with an empty one.
                if line.is_empty() {
                    return Ok((at, true));
                }
                continue;
            }
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_text =
                std::str::from_utf8(size_text).map_err(|_| invalid("bad chunk size"))?;
            let size = usize::from_str_radix(size_text.trim(), 16)
                .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                self.last = true;
            } else {
                self.left = size + 2;
            }
        }
    }
}

/// A `GET /events` stream, read frame by frame.
pub struct SseStream {
    stream: TcpStream,
    rbuf: ReadBuf,
    chunks: ChunkDecoder,
    /// Decoded event-stream text not yet split into frames.
    text: Vec<u8>,
    /// Where the next frame starts in `text`.
    consumed: usize,
}

impl SseStream {
    /// Opens `GET {path}` on `addr` and reads the response head; with `stamps`, frames
    /// carry the kernel's receive time.
    pub async fn open(addr: &str, path: &str, stamps: bool) -> io::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        if stamps {
            enable_stamps(&stream)?;
        }
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut rbuf = ReadBuf::new(2048, stamps);
        let head = read_head(&mut stream, &mut rbuf).await?;
        if head.status != 200 {
            return Err(invalid(format!("GET {path} answered {}", head.status)));
        }
        if !head.chunked {
            return Err(invalid("event stream is not chunked"));
        }
        Ok(Self {
            stream,
            rbuf,
            chunks: ChunkDecoder::default(),
            text: Vec::with_capacity(1024),
            consumed: 0,
        })
    }

    /// The next frame (the text before a blank line) and the kernel's receive time of
    /// the last read before it was complete, or `None` when the stream ended.
    pub async fn next_frame(&mut self) -> io::Result<Option<(Vec<u8>, Option<u64>)>> {
        loop {
            if let Some(pos) = self.text[self.consumed..]
                .windows(2)
                .position(|w| w == b"\n\n")
            {
                let frame = self.text[self.consumed..self.consumed + pos].to_vec();
                self.consumed += pos + 2;
                if self.consumed == self.text.len() {
                    self.text.clear();
                    self.consumed = 0;
                }
                return Ok(Some((frame, self.rbuf.stamp)));
            }
            if self.consumed > 0 {
                self.text.drain(..self.consumed);
                self.consumed = 0;
            }
            if !self.rbuf.unread().is_empty() {
                let (used, done) = self.chunks.feed(self.rbuf.unread(), &mut self.text)?;
                self.rbuf.consume(used);
                if done {
                    return Ok(None);
                }
                if used > 0 {
                    continue;
                }
            }
            match self.rbuf.fill(&mut self.stream).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_decode_across_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut decoder = ChunkDecoder::default();
            let mut out = Vec::new();
            let (used, done) = decoder.feed(&wire[..split], &mut out).unwrap();
            assert!(!done || split == wire.len());
            let mut rest = wire[used..].to_vec();
            let (_, done) = decoder.feed(&rest, &mut out).unwrap();
            rest.clear();
            assert!(done, "split {split}");
            assert_eq!(out, b"hello, world", "split {split}");
        }
    }
}
