//! Finding message boundaries on stream transports (RFC 3261 §18.3) and
//! RFC 5626 §4.4.1 CRLF keep-alives.
//!
//! Check that a whole message arrived before parsing it (mini-redis'
//! `Frame::check`): [`next_frame`] looks only at the header section and
//! Content-Length, so a slow or hostile peer costs no parsing work until its
//! message is complete, and the limits bound how much we buffer.

use crate::error::ParseError;
use crate::header::HeaderName;
use crate::message::Limits;
use crate::scan;

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// A double-CRLF keep-alive "ping" of this many bytes: answer with a
    /// single CRLF "pong".
    Ping(usize),
    /// A single CRLF "pong" (or stray line break) of this many bytes: ignore.
    Pong(usize),
    /// A complete message of this many bytes.
    Message(usize),
}

/// Inspects the start of `buf`.
pub fn next_frame(buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
    if buf.starts_with(b"\r\n\r\n") {
        return Ok(Frame::Ping(4));
    }
    if buf.starts_with(b"\r\n") {
        return Ok(
            if buf.len() < 4 && b"\r\n\r\n".starts_with(buf) && buf.len() > 2 {
                Frame::Incomplete
            } else {
                Frame::Pong(2)
            },
        );
    }
    if buf.first() == Some(&b'\r') && buf.len() == 1 {
        return Ok(Frame::Incomplete);
    }
    if buf.first() == Some(&b'\n') {
        return Ok(Frame::Pong(1));
    }
    let head_end = match memchr::memmem::find(buf, b"\r\n\r\n") {
        Some(p) => p + 4,
        None => {
            if buf.len() > limits.max_message {
                return Err(ParseError {
                    status: 413,
                    detail: "header section exceeds the size limit",
                });
            }
            return Ok(Frame::Incomplete);
        }
    };
    let head = &buf[..head_end];
    let mut content_length: Option<usize> = None;
    for line in head.split(|&c| c == b'\n').skip(1) {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            continue;
        }
        let name = scan::trim(&line[..colon]);
        if HeaderName::from_bytes(name) == HeaderName::ContentLength {
            if content_length.is_some() {
                return Err(ParseError {
                    status: 400,
                    detail: "Content-Length appears more than once",
                });
            }
            let v = scan::trim(&line[colon + 1..]);
            let n = scan::parse_u64(v, u64::MAX).ok_or(ParseError {
                status: 400,
                detail: "malformed Content-Length",
            })?;
            if n > limits.max_message as u64 {
                return Err(ParseError {
                    status: 413,
                    detail: "body exceeds the size limit",
                });
            }
            content_length = Some(n as usize);
        }
    }
    // A stream message without Content-Length has an empty body (§18.3
    // makes the header mandatory on streams; we do not guess).
    let total = head_end + content_length.unwrap_or(0);
    if total > limits.max_message {
        return Err(ParseError {
            status: 413,
            detail: "message exceeds the size limit",
        });
    }
    Ok(if buf.len() >= total {
        Frame::Message(total)
    } else {
        Frame::Incomplete
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_and_messages() {
        let l = Limits::default();
        assert_eq!(next_frame(b"\r\n\r\nINVITE", &l), Ok(Frame::Ping(4)));
        assert_eq!(next_frame(b"\r\nREGISTER", &l), Ok(Frame::Pong(2)));
        assert_eq!(next_frame(b"\r\n\r", &l), Ok(Frame::Incomplete));
        assert_eq!(
            next_frame(b"OPTIONS sip:x SIP/2.0\r\nl: 3\r\n\r\nab", &l),
            Ok(Frame::Incomplete)
        );
        let m = b"OPTIONS sip:x SIP/2.0\r\nl: 3\r\n\r\nabcNEXT";
        assert_eq!(next_frame(m, &l), Ok(Frame::Message(m.len() - 4)));
        let no_cl = b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\nrest";
        assert_eq!(next_frame(no_cl, &l), Ok(Frame::Message(no_cl.len() - 4)));
        assert_eq!(
            next_frame(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n", &l)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            next_frame(
                b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n",
                &l
            )
            .unwrap_err()
            .status,
            413
        );
        let small = Limits {
            max_message: 10,
            ..l
        };
        assert_eq!(
            next_frame(b"OPTIONS sip:x SIP/2.0 and on and on", &small)
                .unwrap_err()
                .status,
            413
        );
    }

    #[test]
    fn rfc4475_dblreq_on_a_stream() {
        // On a stream, dblreq is two messages, and the INVITE's body is
        // longer than its Content-Length: the leftover is not SIP.
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/rfc4475/dblreq.dat"
        ))
        .unwrap();
        let l = Limits::default();
        let mut buf = &data[..];
        let mut methods = Vec::new();
        while let Ok(frame) = next_frame(buf, &l) {
            match frame {
                Frame::Incomplete => break,
                Frame::Ping(n) | Frame::Pong(n) => buf = &buf[n..],
                Frame::Message(n) => {
                    match crate::Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])) {
                        Ok(m) => methods.push(m.method().to_string()),
                        Err(e) => methods.push(format!("error {}", e.status)),
                    }
                    buf = &buf[n..];
                }
            }
        }
        assert_eq!(methods, ["REGISTER", "INVITE", "error 400"]);
    }
}
