//! Finding message boundaries on stream transports (RFC 3261 §18.3) and
//! RFC 5626 §4.4.1 CRLF keep-alives.
//!
//! Check that a whole message arrived before parsing it (mini-redis'
//! `Frame::check`): a [`Framer`] looks only at the header section and
//! Content-Length, so a slow or hostile peer costs no parsing work until its
//! message is complete, and the limits bound how much we buffer.
//!
//! A connection keeps one [`Framer`], which remembers how far it has looked
//! into the message at the front of the buffer: the header lines it has
//! read, the Content-Length they gave, where the header section ended. Each
//! call looks only at the bytes that arrived since the last one, so a
//! message dripped one byte at a time costs O(n), not the O(n²) of
//! rescanning the buffer on every read. [`next_frame`] is the same scan
//! from scratch, for a buffer looked at once.

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

/// Inspects the start of `buf`, from scratch.
pub fn next_frame(buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
    Framer::new().next_frame(buf, limits)
}

/// The framing state of one stream: [`next_frame`] that resumes where it
/// stopped.
///
/// The contract: between two calls the buffer only grows at its end,
/// except after a call that returned a whole frame ([`Frame::Ping`],
/// [`Frame::Pong`] or [`Frame::Message`]), when the caller removes exactly
/// that frame from its front. The framer then starts afresh on what
/// follows. A buffer shorter than what the framer has already looked at
/// also starts it afresh (a caller that broke the contract gets a correct
/// answer, only not a cheap one). Every answer is the one [`next_frame`]
/// gives for the same buffer.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    /// Where the header line being read starts.
    line_start: usize,
    /// How far the search for that line's end has got.
    searched: usize,
    /// Whether the line before `line_start` ended with CRLF: a bare CRLF
    /// line after it ends the header section (the first CRLFCRLF).
    prev_crlf: bool,
    /// The Content-Length of the header lines read so far.
    content_length: Option<usize>,
    /// The first error in the header lines read so far: reported once the
    /// header section is complete, as a scan of the whole section would.
    error: Option<ParseError>,
    /// Where the header section ends, once found.
    head_end: Option<usize>,
    /// Bytes looked at so far (each byte must be looked at O(1) times).
    #[cfg(test)]
    examined: usize,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Forgets the message in progress (the caller dropped its buffer).
    pub fn reset(&mut self) {
        *self = Framer::default();
    }

    /// Inspects the start of `buf`, looking only at what arrived since the
    /// last call (see the [contract](Framer)).
    pub fn next_frame(&mut self, buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
        if buf.len() < self.searched {
            self.reset();
        }
        let frame = self.scan(buf, limits);
        if !matches!(frame, Ok(Frame::Incomplete)) {
            // A whole frame (the caller removes it) or an error (the
            // caller closes the stream): the next call starts afresh.
            self.reset();
        }
        frame
    }

    fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
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
        let head_end = match self.head_end {
            Some(end) => end,
            None => match self.read_lines(buf, limits) {
                Some(end) => end,
                None => {
                    if buf.len() > limits.max_message {
                        return Err(ParseError {
                            status: 413,
                            detail: "header section exceeds the size limit",
                        });
                    }
                    return Ok(Frame::Incomplete);
                }
            },
        };
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        // A stream message without Content-Length has an empty body (§18.3
        // makes the header mandatory on streams; we do not guess).
        let total = head_end + self.content_length.unwrap_or(0);
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

    /// Reads the header lines completed since the last call; returns where
    /// the header section ends once its empty line is in.
    fn read_lines(&mut self, buf: &[u8], limits: &Limits) -> Option<usize> {
        loop {
            let Some(i) = memchr::memchr(b'\n', &buf[self.searched..]) else {
                #[cfg(test)]
                {
                    self.examined += buf.len() - self.searched;
                }
                self.searched = buf.len();
                return None;
            };
            let nl = self.searched + i;
            let line = &buf[self.line_start..nl];
            #[cfg(test)]
            {
                self.examined += i + 1;
            }
            let crlf = line.last() == Some(&b'\r');
            if self.prev_crlf && line == b"\r" {
                self.head_end = Some(nl + 1);
                return self.head_end;
            }
            // The start line carries no header.
            if self.line_start > 0 {
                self.header_line(line, limits);
            }
            self.prev_crlf = crlf;
            self.line_start = nl + 1;
            self.searched = nl + 1;
        }
    }

    /// One header line (without its LF): Content-Length is all framing
    /// needs from it.
    fn header_line(&mut self, line: &[u8], limits: &Limits) {
        let Some(colon) = memchr::memchr(b':', line) else {
            #[cfg(test)]
            {
                self.examined += line.len();
            }
            return;
        };
        #[cfg(test)]
        {
            self.examined += colon + 1;
        }
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            return;
        }
        let name = scan::trim(&line[..colon]);
        if HeaderName::from_bytes(name) != HeaderName::ContentLength {
            return;
        }
        #[cfg(test)]
        {
            self.examined += line.len() - colon;
        }
        if self.error.is_some() {
            return;
        }
        if self.content_length.is_some() {
            self.error = Some(ParseError {
                status: 400,
                detail: "Content-Length appears more than once",
            });
            return;
        }
        let v = scan::trim(&line[colon + 1..]);
        let Some(n) = scan::parse_u64(v, u64::MAX) else {
            self.error = Some(ParseError {
                status: 400,
                detail: "malformed Content-Length",
            });
            return;
        };
        if n > limits.max_message as u64 {
            self.error = Some(ParseError {
                status: 413,
                detail: "body exceeds the size limit",
            });
            return;
        }
        self.content_length = Some(n as usize);
    }
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

    /// A 60 KB message (many header lines and a body) dripped one byte
    /// at a time: every byte is looked at a bounded number of times, so
    /// the framing work grows linearly (rescanning the buffer on each read
    /// would look at about n²/2 bytes, 1.8 billion here).
    #[test]
    fn a_message_dripped_byte_by_byte_costs_linear_work() {
        let mut msg = b"INVITE sip:bob@ringmesh.test SIP/2.0\r\n".to_vec();
        for i in 0..640 {
            msg.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(60)).as_bytes());
        }
        let body = vec![b'v'; 13_000];
        msg.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        msg.extend_from_slice(&body);
        assert!(msg.len() > 60_000 && msg.len() <= Limits::default().max_message);

        let l = Limits::default();
        let mut f = Framer::new();
        let mut buf = Vec::with_capacity(msg.len());
        for &b in &msg[..msg.len() - 1] {
            buf.push(b);
            assert_eq!(f.next_frame(&buf, &l), Ok(Frame::Incomplete));
        }
        let examined = f.examined;
        assert!(
            examined <= 3 * msg.len(),
            "{examined} bytes looked at for a message of {}",
            msg.len()
        );
        buf.push(msg[msg.len() - 1]);
        assert_eq!(f.next_frame(&buf, &l), Ok(Frame::Message(msg.len())));
    }

    #[test]
    fn the_framer_starts_afresh_after_each_frame() {
        let l = Limits::default();
        let mut f = Framer::new();
        let two = b"OPTIONS sip:x SIP/2.0\r\nl: 1\r\n\r\na\r\n\r\nOPTIONS sip:y SIP/2.0\r\n\r\n";
        let mut buf = &two[..];
        let mut frames = Vec::new();
        loop {
            match f.next_frame(buf, &l).unwrap() {
                Frame::Incomplete => break,
                frame @ (Frame::Ping(n) | Frame::Pong(n) | Frame::Message(n)) => {
                    frames.push(frame);
                    buf = &buf[n..];
                }
            }
        }
        assert_eq!(
            frames,
            [Frame::Message(32), Frame::Ping(4), Frame::Message(25)]
        );
        assert!(buf.is_empty());
        // A caller that hands a shorter buffer gets a correct answer.
        let mut f = Framer::new();
        assert_eq!(
            f.next_frame(b"OPTIONS sip:x SIP/2.0\r\nVia: a", &l),
            Ok(Frame::Incomplete)
        );
        assert_eq!(
            f.next_frame(b"BYE sip:x SIP/2.0\r\n\r\n", &l),
            Ok(Frame::Message(21))
        );
    }

    /// The scan from scratch this module used before [`Framer`]: the
    /// whole buffer searched for CRLFCRLF, then every header line for
    /// Content-Length. The reference the framer must agree with.
    fn reference(buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
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

    /// Pieces of header sections: line ends of every kind, Content-Length
    /// in its forms, folding, values good and bad.
    const PIECES: &[&[u8]] = &[
        b"\r\n",
        b"\r",
        b"\n",
        b":",
        b" ",
        b"\t",
        b"Content-Length",
        b"content-length",
        b"l",
        b"L",
        b"0",
        b"3",
        b"12",
        b"99999999",
        b"-1",
        b"x",
        b"Via",
        b"INVITE sip:a SIP/2.0",
        b"SIP/2.0 200 OK",
    ];

    proptest::proptest! {
        /// Fed in arbitrary pieces, with each frame removed as a stream
        /// reader removes it, the framer answers exactly what the scan of
        /// the whole buffer from scratch answered (and so does
        /// [`next_frame`]).
        #[test]
        fn the_framer_answers_what_a_scan_from_scratch_answers(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..160),
            cuts in proptest::collection::vec(1usize..48, 1..40),
            max_message in 16usize..400,
        ) {
            let data: Vec<u8> = pieces.concat();
            let limits = Limits { max_message, ..Limits::default() };
            let mut f = Framer::new();
            let mut buf: Vec<u8> = Vec::new();
            let mut fed = 0;
            let mut cuts = cuts.iter().cycle();
            while fed < data.len() {
                let n = (*cuts.next().unwrap()).min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + n]);
                fed += n;
                loop {
                    let want = reference(&buf, &limits);
                    proptest::prop_assert_eq!(&next_frame(&buf, &limits), &want);
                    let got = f.next_frame(&buf, &limits);
                    proptest::prop_assert_eq!(&got, &want);
                    match got {
                        Ok(Frame::Ping(k) | Frame::Pong(k) | Frame::Message(k)) => {
                            buf.drain(..k);
                        }
                        Ok(Frame::Incomplete) => break,
                        // The reader closes the stream.
                        Err(_) => return Ok(()),
                    }
                }
            }
        }
    }
}
