//! A minimal Redis client: one connection, one command in flight, RESP2 replies.
//!
//! Just enough for the raw lock cycle (`SET NX PX`, `EVALSHA`, `SCRIPT LOAD`, `PING`),
//! with no task or channel between the caller and the socket, so that the client costs as
//! little CPU per command as possible.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and friends.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n` (None for the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*n` (None for the null array).
    Array(Option<Vec<Reply>>),
}

/// One connection.
pub struct Resp {
    stream: TcpStream,
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
}

impl Resp {
    /// Connects to `host:port`.
    pub async fn connect(addr: &str) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            rbuf: vec![0; 4096],
            start: 0,
            end: 0,
            wbuf: Vec::with_capacity(256),
        })
    }

    /// Sends one command and reads its reply.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.wbuf.clear();
        encode(&mut self.wbuf, args);
        self.stream.write_all(&self.wbuf).await?;
        loop {
            if let Some((reply, used)) = parse(&self.rbuf[self.start..self.end])? {
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(reply);
            }
            if self.end == self.rbuf.len() {
                if self.start > 0 {
                    self.rbuf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                } else {
                    self.rbuf.resize(self.rbuf.len() * 2, 0);
                }
            }
            let n = self.stream.read(&mut self.rbuf[self.end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
    }
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Parses one reply from the front of `buf`: `None` when it is not complete yet.
fn parse(buf: &[u8]) -> io::Result<Option<(Reply, usize)>> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if line_end == 0 {
        return Err(invalid("empty RESP line"));
    }
    let line = &buf[1..line_end];
    let after = line_end + 2;
    let text = || std::str::from_utf8(line).map_err(|_| invalid("RESP line is not UTF-8"));
    let number = || -> io::Result<i64> {
        text()?
            .parse()
            .map_err(|_| invalid("RESP length is not a number"))
    };
    match buf[0] {
        b'+' => Ok(Some((Reply::Simple(text()?.to_owned()), after))),
        b'-' => Ok(Some((Reply::Error(text()?.to_owned()), after))),
        b':' => Ok(Some((Reply::Int(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| invalid("bulk length"))?;
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            let data = buf[after..after + len].to_vec();
            Ok(Some((Reply::Bulk(Some(data)), after + len + 2)))
        }
        b'*' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..count {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        _ => Err(invalid("unknown RESP type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_and_waits_for_the_rest() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Reply::Simple("OK".into()), 5))
        );
        assert_eq!(parse(b":12\r\n").unwrap(), Some((Reply::Int(12), 5)));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").unwrap(),
            Some((Reply::Bulk(Some(b"abc".to_vec())), 9))
        );
        assert_eq!(parse(b"$3\r\nab").unwrap(), None);
        assert_eq!(
            parse(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap(),
            Some((
                Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(Some(b"x".to_vec()))])),
                15
            ))
        );
        assert_eq!(parse(b"*2\r\n:1\r\n").unwrap(), None);
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
