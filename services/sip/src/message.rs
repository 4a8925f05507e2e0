//! SIP messages: the zero-copy parser (RFC 3261 §7, §25) and typed access.
//!
//! [`Message::parse`] takes one complete message in a [`Bytes`] buffer,
//! indexes its start line and header fields as offsets into that buffer,
//! validates every header a registrar, proxy or transaction layer relies on,
//! and keeps the hot scalars (Call-ID, CSeq, tags, branch, Max-Forwards)
//! ready. Typed views ([`Via`], [`NameAddr`], [`Uri`]) borrow from the
//! message; nothing is copied.
//!
//! On a stream transport, use [`crate::framing`] first to find where a
//! message ends.

use bytes::Bytes;

use crate::error::ParseError;
use crate::header::HeaderName;
use crate::method::Method;
use crate::name_addr::{Contact, NameAddr};
use crate::scan;
use crate::uri::{Scheme, Uri};
use crate::via::Via;

/// Hard limits that bound the work and memory one message can cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole message (start line, headers and body) in bytes.
    pub max_message: usize,
    /// Most header fields (lines, after unfolding) in one message.
    pub max_headers: usize,
    /// Longest start line or header field, continuation lines included.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 65_535,
            max_headers: 256,
            max_line: 8_192,
        }
    }
}

/// A half-open byte range into the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    #[inline]
    fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeaderEntry {
    name: HeaderName,
    name_span: Span,
    value: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request { method: Method, uri: Span },
    Response { status: u16, reason: Span },
}

/// A parsed SIP request or response.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    headers: Vec<HeaderEntry>,
    body: Span,
    call_id: Span,
    cseq: u32,
    cseq_method: Method,
    from: usize,
    to: usize,
    from_tag: Span,
    to_tag: Span,
    top_via: Span,
    branch: Span,
    max_forwards: Option<u8>,
    expires: Option<u32>,
    content_length: Option<u32>,
}

impl PartialEq for Message {
    /// Two messages are equal when they parse to the same start line,
    /// header names and values, and body (whatever their spelling of
    /// header names or their Content-Length).
    fn eq(&self, other: &Message) -> bool {
        fn hs(m: &Message) -> Vec<(HeaderName, &[u8], &[u8])> {
            m.headers
                .iter()
                .filter(|h| h.name != HeaderName::ContentLength)
                .map(|h| {
                    let name = if h.name == HeaderName::Other {
                        h.name_span.of(&m.buf)
                    } else {
                        b""
                    };
                    (h.name, name, h.value.of(&m.buf))
                })
                .collect()
        }
        fn start(m: &Message) -> (Option<&Method>, u16, &[u8]) {
            match &m.start {
                StartLine::Request { method, uri } => (Some(method), 0, uri.of(&m.buf)),
                StartLine::Response { status, reason } => (None, *status, reason.of(&m.buf)),
            }
        }
        start(self) == start(other) && hs(self) == hs(other) && self.body() == other.body()
    }
}

const MANDATORY: [(HeaderName, &str); 5] = [
    (HeaderName::Via, "missing Via"),
    (HeaderName::From, "missing From"),
    (HeaderName::To, "missing To"),
    (HeaderName::CallId, "missing Call-ID"),
    (HeaderName::CSeq, "missing CSeq"),
];

impl Message {
    /// Parses one message with the default [`Limits`]. On a datagram, octets
    /// after Content-Length are ignored (RFC 3261 §18.3); a missing
    /// Content-Length means the body runs to the end of the buffer.
    pub fn parse(buf: Bytes) -> Result<Message, ParseError> {
        Self::parse_with(buf, &Limits::default())
    }

    pub fn parse_with(buf: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        Self::parse_to(buf, limits, true)
    }

    /// Parses a message only as far as a stateless answer to it needs: the
    /// start line, the header index, and the headers a response copies or
    /// a proxy must check first (Via, From, To, Call-ID, CSeq,
    /// Max-Forwards, Content-Length), each checked as [`Message::parse_with`]
    /// checks it. The others (Contact, Route, Expires, option tags) are
    /// indexed unchecked, and [`Message::expires`] is not read. What parses
    /// in full parses here with the same view of those headers; overload
    /// control reads a new request it is about to refuse this way, and
    /// such a message must never be handed on.
    pub fn parse_shallow(buf: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        Self::parse_to(buf, limits, false)
    }

    fn parse_to(buf: Bytes, limits: &Limits, full: bool) -> Result<Message, ParseError> {
        if buf.len() > limits.max_message {
            return Err(ParseError::too_large("message exceeds the size limit"));
        }
        let b: &[u8] = &buf;
        let mut pos = 0;
        // RFC 3261 §7.5: ignore CRLFs before the start line.
        while pos < b.len() && (b[pos] == b'\r' || b[pos] == b'\n') {
            pos += 1;
        }
        let (line_end, next) = line_at(b, pos).ok_or(ParseError::bad("no start line"))?;
        if line_end - pos > limits.max_line {
            return Err(ParseError::bad("start line too long"));
        }
        let start = parse_start_line(b, pos, line_end)?;
        pos = next;

        // One allocation for the header index, sized from the message
        // length (header lines average well over 32 bytes), so that even a
        // response with many Via and Record-Route lines never regrows it.
        let estimate = ((b.len() - pos) / 32).clamp(16, limits.max_headers.max(16));
        let mut headers: Vec<HeaderEntry> = Vec::with_capacity(estimate);
        let body_start;
        loop {
            let Some((end, nxt)) = line_at(b, pos) else {
                // A datagram may end right after its last header line.
                if pos == b.len() {
                    body_start = pos;
                    break;
                }
                return Err(ParseError::bad("header section not terminated"));
            };
            if end == pos {
                body_start = nxt;
                break;
            }
            if b[pos] == b' ' || b[pos] == b'\t' {
                // Continuation line: the previous header grows.
                let last = headers
                    .last_mut()
                    .ok_or(ParseError::bad("continuation before first header"))?;
                last.value.end = end as u32;
                if (last.value.end - last.name_span.start) as usize > limits.max_line {
                    return Err(ParseError::bad("header line too long"));
                }
            } else {
                if end - pos > limits.max_line {
                    return Err(ParseError::bad("header line too long"));
                }
                if headers.len() == limits.max_headers {
                    return Err(ParseError::bad("too many header fields"));
                }
                let colon = memchr::memchr(b':', &b[pos..end])
                    .ok_or(ParseError::bad("header line without ':'"))?
                    + pos;
                let mut name_end = colon;
                while name_end > pos && (b[name_end - 1] == b' ' || b[name_end - 1] == b'\t') {
                    name_end -= 1;
                }
                let name = &b[pos..name_end];
                if name.is_empty() || scan::scan_token(name, 0) != name.len() {
                    return Err(ParseError::bad("invalid header name"));
                }
                let vstart = scan::skip_ws(&b[..end], colon + 1);
                headers.push(HeaderEntry {
                    name: HeaderName::from_bytes(name),
                    name_span: Span::new(pos, name_end),
                    value: Span::new(vstart, end),
                });
            }
            pos = nxt;
        }
        // Trim trailing white space of every value (folds included).
        for h in &mut headers {
            while h.value.end > h.value.start && scan::is_ws(b[h.value.end as usize - 1]) {
                h.value.end -= 1;
            }
        }

        let mut msg = Message {
            start,
            headers,
            body: Span::default(),
            call_id: Span::default(),
            cseq: 0,
            cseq_method: Method::Ack,
            from: usize::MAX,
            to: usize::MAX,
            from_tag: Span::default(),
            to_tag: Span::default(),
            top_via: Span::default(),
            branch: Span::default(),
            max_forwards: None,
            expires: None,
            content_length: None,
            buf: Bytes::new(),
        };
        msg.validate(b, full)?;
        let rest = b.len() - body_start;
        let body_len = match msg.content_length {
            Some(cl) if cl as usize > rest => {
                return Err(ParseError::bad("Content-Length exceeds the message"));
            }
            Some(cl) => cl as usize,
            None => rest,
        };
        msg.body = Span::new(body_start, body_start + body_len);
        let end = body_start + body_len;
        // Slicing a Vec-backed buffer allocates its shared header: skip it
        // when nothing trails the message (the usual case).
        msg.buf = if end == buf.len() {
            buf
        } else {
            buf.slice(..end)
        };
        Ok(msg)
    }

    /// Checks every header the upper layers rely on (only those of a
    /// stateless answer unless `full`) and caches the scalars.
    fn validate(&mut self, b: &[u8], full: bool) -> Result<(), ParseError> {
        let mut seen = [false; MANDATORY.len()];
        for (idx, h) in self.headers.iter().enumerate() {
            if !full
                && !matches!(
                    h.name,
                    HeaderName::Via
                        | HeaderName::From
                        | HeaderName::To
                        | HeaderName::CallId
                        | HeaderName::CSeq
                        | HeaderName::MaxForwards
                        | HeaderName::ContentLength
                )
            {
                continue;
            }
            let v = h.value.of(b);
            let once = |done: bool, what: &'static str| {
                if done {
                    Err(ParseError::bad(what))
                } else {
                    Ok(())
                }
            };
            match h.name {
                HeaderName::Via => {
                    for (i, el) in scan::split_list(v).enumerate() {
                        let via = Via::parse(el).map_err(|_| ParseError::bad("malformed Via"))?;
                        if self.top_via.is_empty() && i == 0 && !seen[0] {
                            self.top_via = sub_span(b, el);
                            if let Some(br) = via.branch() {
                                self.branch = sub_span(b, br);
                            }
                        }
                    }
                    seen[0] = true;
                }
                HeaderName::From | HeaderName::To => {
                    let is_from = h.name == HeaderName::From;
                    once(
                        if is_from { seen[1] } else { seen[2] },
                        "From or To appears more than once",
                    )?;
                    let na =
                        NameAddr::parse(v).map_err(|_| ParseError::bad("malformed From or To"))?;
                    let tag = na.tag().map_or(Span::default(), |t| sub_span(b, t));
                    if let Some(t) = na.param("tag")
                        && t.is_none_or(|t| scan::scan_token(t, 0) != t.len() || t.is_empty())
                    {
                        return Err(ParseError::bad("invalid tag"));
                    }
                    if is_from {
                        seen[1] = true;
                        self.from = idx;
                        self.from_tag = tag;
                    } else {
                        seen[2] = true;
                        self.to = idx;
                        self.to_tag = tag;
                    }
                }
                HeaderName::CallId => {
                    once(seen[3], "Call-ID appears more than once")?;
                    seen[3] = true;
                    if !valid_call_id(v) {
                        return Err(ParseError::bad("malformed Call-ID"));
                    }
                    self.call_id = h.value;
                }
                HeaderName::CSeq => {
                    once(seen[4], "CSeq appears more than once")?;
                    seen[4] = true;
                    let ws = v
                        .iter()
                        .position(|&c| scan::is_ws(c))
                        .ok_or(ParseError::bad("malformed CSeq"))?;
                    self.cseq = scan::parse_u64(&v[..ws], u64::from(u32::MAX))
                        .ok_or(ParseError::bad("CSeq number out of range"))?
                        as u32;
                    let m = &v[scan::skip_ws(v, ws)..];
                    if m.is_empty() || scan::scan_token(m, 0) != m.len() {
                        return Err(ParseError::bad("malformed CSeq method"));
                    }
                    self.cseq_method = Method::from_token(m);
                }
                HeaderName::MaxForwards => {
                    once(
                        self.max_forwards.is_some(),
                        "Max-Forwards appears more than once",
                    )?;
                    self.max_forwards = Some(
                        scan::parse_u64(v, 255)
                            .ok_or(ParseError::bad("Max-Forwards out of range"))?
                            as u8,
                    );
                }
                HeaderName::ContentLength => {
                    once(
                        self.content_length.is_some(),
                        "Content-Length appears more than once",
                    )?;
                    self.content_length = Some(
                        scan::parse_u64(v, u64::from(u32::MAX))
                            .ok_or(ParseError::bad("malformed Content-Length"))?
                            as u32,
                    );
                }
                HeaderName::Expires => {
                    once(self.expires.is_some(), "Expires appears more than once")?;
                    self.expires = Some(
                        scan::parse_delta_seconds(v).ok_or(ParseError::bad("malformed Expires"))?,
                    );
                }
                HeaderName::MinExpires => {
                    scan::parse_delta_seconds(v).ok_or(ParseError::bad("malformed Min-Expires"))?;
                }
                HeaderName::Contact => {
                    for el in scan::split_list(v) {
                        Contact::parse(el).map_err(|_| ParseError::bad("malformed Contact"))?;
                    }
                }
                HeaderName::Route | HeaderName::RecordRoute | HeaderName::Path => {
                    for el in scan::split_list(v) {
                        let na = NameAddr::parse(el)
                            .map_err(|_| ParseError::bad("malformed Route or Record-Route"))?;
                        if !na.has_angle_brackets() {
                            return Err(ParseError::bad("Route URI must be enclosed in <>"));
                        }
                    }
                }
                HeaderName::Require
                | HeaderName::ProxyRequire
                | HeaderName::Supported
                | HeaderName::Unsupported => {
                    for el in scan::split_list(v) {
                        if !el.is_empty() && scan::scan_token(el, 0) != el.len() {
                            return Err(ParseError::bad("malformed option tag"));
                        }
                    }
                }
                _ => {}
            }
        }
        for (present, (_, what)) in seen.iter().zip(MANDATORY) {
            if !present {
                return Err(ParseError::bad(what));
            }
        }
        if let StartLine::Request { method, .. } = &self.start
            && *method != self.cseq_method
        {
            return Err(ParseError::bad(
                "CSeq method does not match the request method",
            ));
        }
        Ok(())
    }

    // ---- start line -------------------------------------------------------

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }
    pub fn is_response(&self) -> bool {
        !self.is_request()
    }
    /// The request method, or the CSeq method of a response.
    pub fn method(&self) -> &Method {
        match &self.start {
            StartLine::Request { method, .. } => method,
            StartLine::Response { .. } => &self.cseq_method,
        }
    }
    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }
    pub fn reason(&self) -> &[u8] {
        match self.start {
            StartLine::Response { reason, .. } => reason.of(&self.buf),
            StartLine::Request { .. } => b"",
        }
    }
    /// The raw Request-URI of a request.
    pub fn request_uri_bytes(&self) -> &[u8] {
        match self.start {
            StartLine::Request { uri, .. } => uri.of(&self.buf),
            StartLine::Response { .. } => b"",
        }
    }
    /// The Request-URI, validated at parse time.
    pub fn request_uri(&self) -> Option<Uri<'_>> {
        match self.start {
            StartLine::Request { uri, .. } => Uri::parse(uri.of(&self.buf)).ok(),
            StartLine::Response { .. } => None,
        }
    }

    // ---- headers ----------------------------------------------------------

    /// Every header field as (name, name as written, value).
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, &[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|h| (h.name, h.name_span.of(&self.buf), h.value.of(&self.buf)))
    }
    /// The value of the first field named `name`.
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.of(&self.buf))
    }
    /// The first field with this (case-insensitive) name, for extension headers.
    pub fn header_named(&self, name: &str) -> Option<&[u8]> {
        let known = HeaderName::from_bytes(name.as_bytes());
        self.headers
            .iter()
            .find(|h| {
                if known == HeaderName::Other {
                    h.name == HeaderName::Other
                        && h.name_span
                            .of(&self.buf)
                            .eq_ignore_ascii_case(name.as_bytes())
                } else {
                    h.name == known
                }
            })
            .map(|h| h.value.of(&self.buf))
    }
    /// The values of every field named `name`, one per line.
    pub fn header_lines(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| h.value.of(&self.buf))
    }
    /// The elements of a list header across all its lines.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.header_lines(name)
            .flat_map(scan::split_list)
            .filter(|e| !e.is_empty())
    }
    pub fn has_header(&self, name: HeaderName) -> bool {
        self.headers.iter().any(|h| h.name == name)
    }

    pub fn vias(&self) -> impl Iterator<Item = Via<'_>> + '_ {
        self.header_values(HeaderName::Via)
            .filter_map(|v| Via::parse(v).ok())
    }
    /// The topmost Via (validated at parse time).
    pub fn top_via(&self) -> Via<'_> {
        Via::parse(self.top_via.of(&self.buf))
            .unwrap_or_else(|_| self.vias().next().expect("validated"))
    }
    /// The raw topmost Via element.
    pub fn top_via_bytes(&self) -> &[u8] {
        self.top_via.of(&self.buf)
    }
    pub fn branch(&self) -> Option<&[u8]> {
        (!self.branch.is_empty()).then(|| self.branch.of(&self.buf))
    }
    pub fn from_hdr(&self) -> NameAddr<'_> {
        NameAddr::parse(self.headers[self.from].value.of(&self.buf))
            .expect("validated at parse time")
    }
    pub fn to_hdr(&self) -> NameAddr<'_> {
        NameAddr::parse(self.headers[self.to].value.of(&self.buf)).expect("validated at parse time")
    }
    pub fn from_bytes(&self) -> &[u8] {
        self.headers[self.from].value.of(&self.buf)
    }
    pub fn to_bytes(&self) -> &[u8] {
        self.headers[self.to].value.of(&self.buf)
    }
    pub fn from_tag(&self) -> Option<&[u8]> {
        (!self.from_tag.is_empty()).then(|| self.from_tag.of(&self.buf))
    }
    pub fn to_tag(&self) -> Option<&[u8]> {
        (!self.to_tag.is_empty()).then(|| self.to_tag.of(&self.buf))
    }
    pub fn call_id(&self) -> &[u8] {
        self.call_id.of(&self.buf)
    }
    pub fn cseq(&self) -> u32 {
        self.cseq
    }
    pub fn cseq_method(&self) -> &Method {
        &self.cseq_method
    }
    pub fn max_forwards(&self) -> Option<u8> {
        self.max_forwards
    }
    /// The Expires header, clamped to u32.
    pub fn expires(&self) -> Option<u32> {
        self.expires
    }
    pub fn contacts(&self) -> impl Iterator<Item = Contact<'_>> + '_ {
        self.header_values(HeaderName::Contact)
            .filter_map(|c| Contact::parse(c).ok())
    }
    pub fn routes(&self) -> impl Iterator<Item = NameAddr<'_>> + '_ {
        self.header_values(HeaderName::Route)
            .filter_map(|c| NameAddr::parse(c).ok())
    }
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr<'_>> + '_ {
        self.header_values(HeaderName::RecordRoute)
            .filter_map(|c| NameAddr::parse(c).ok())
    }

    pub fn body(&self) -> &[u8] {
        self.body.of(&self.buf)
    }
    pub fn body_bytes(&self) -> Bytes {
        self.buf
            .slice(self.body.start as usize..self.body.end as usize)
    }
    /// The message exactly as received (trailing datagram octets removed).
    pub fn raw(&self) -> &Bytes {
        &self.buf
    }
    /// A [`Bytes`] handle on `part`, which must be a slice of this message
    /// (as returned by any accessor), without copying.
    pub fn share(&self, part: &[u8]) -> Bytes {
        self.buf.slice_ref(part)
    }

    /// Serialises the message in canonical form: full header names, the
    /// values as received, and a Content-Length that matches the body.
    pub fn encode(&self) -> Bytes {
        let mut w = match &self.start {
            StartLine::Request { method, uri } => {
                crate::writer::Writer::request(method, uri.of(&self.buf))
            }
            StartLine::Response { status, reason } => {
                crate::writer::Writer::response_raw(*status, reason.of(&self.buf))
            }
        };
        for h in &self.headers {
            match h.name {
                HeaderName::ContentLength => {}
                HeaderName::Other => {
                    w.raw_header(h.name_span.of(&self.buf), h.value.of(&self.buf));
                }
                n => {
                    w.header(n, h.value.of(&self.buf));
                }
            }
        }
        w.finish(self.body())
    }
}

/// Finds the line starting at `pos`: (end excluding CR LF, start of next).
#[inline]
fn line_at(b: &[u8], pos: usize) -> Option<(usize, usize)> {
    let nl = memchr::memchr(b'\n', &b[pos..])? + pos;
    let end = if nl > pos && b[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((end, nl + 1))
}

fn sub_span(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    Span::new(start, start + part.len())
}

fn valid_call_id(v: &[u8]) -> bool {
    let mut parts = v.splitn(2, |&c| c == b'@');
    let word = |w: &[u8]| !w.is_empty() && w.iter().all(|&c| scan::is_word(c));
    word(parts.next().unwrap_or(b"")) && parts.next().is_none_or(word)
}

/// `SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT`: Ok(true) for 2.0,
/// Ok(false) for another well-formed version.
fn sip_version(v: &[u8]) -> Result<bool, ParseError> {
    if v.len() < 7 || !v[..4].eq_ignore_ascii_case(b"SIP/") {
        return Err(ParseError::bad("malformed SIP version"));
    }
    let num = &v[4..];
    let dot = memchr::memchr(b'.', num).ok_or(ParseError::bad("malformed SIP version"))?;
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !digits(&num[..dot]) || !digits(&num[dot + 1..]) {
        return Err(ParseError::bad("malformed SIP version"));
    }
    Ok(num == b"2.0")
}

fn parse_start_line(b: &[u8], start: usize, end: usize) -> Result<StartLine, ParseError> {
    let line = &b[start..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        let sp = memchr::memchr(b' ', line).ok_or(ParseError::bad("malformed status line"))?;
        if !sip_version(&line[..sp])? {
            return Err(ParseError::version("unsupported SIP version"));
        }
        let rest = &line[sp + 1..];
        if rest.len() < 3
            || !rest[..3].iter().all(u8::is_ascii_digit)
            || rest.get(3).is_some_and(|&c| c != b' ')
        {
            return Err(ParseError::bad("malformed status code"));
        }
        let status = scan::parse_u64(&rest[..3], 699)
            .filter(|&s| s >= 100)
            .ok_or(ParseError::bad("status code out of range"))? as u16;
        let rs = (start + sp + 1 + 4).min(end);
        return Ok(StartLine::Response {
            status,
            reason: Span::new(rs, end),
        });
    }
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::bad("malformed request line"))?;
    let sp2 = memchr::memrchr(b' ', line)
        .filter(|&p| p > sp1)
        .ok_or(ParseError::bad("malformed request line"))?;
    let method = &line[..sp1];
    let uri = &line[sp1 + 1..sp2];
    let version = &line[sp2 + 1..];
    if method.is_empty() || scan::scan_token(method, 0) != method.len() {
        return Err(ParseError::bad("malformed method"));
    }
    if uri.is_empty() || uri.iter().any(|&c| scan::is_ws(c)) {
        return Err(ParseError::bad("malformed Request-URI"));
    }
    if !sip_version(version)? {
        return Err(ParseError::version("unsupported SIP version"));
    }
    let parsed = Uri::parse(uri).map_err(|_| ParseError::bad("malformed Request-URI"))?;
    if matches!(parsed.scheme(), Scheme::Sip | Scheme::Sips) && !parsed.headers_raw().is_empty() {
        // RFC 3261 §19.1.1: headers are not allowed in a Request-URI.
        return Err(ParseError::bad("headers in Request-URI"));
    }
    Ok(StartLine::Request {
        method: Method::from_token(method),
        uri: Span::new(start + sp1 + 1, start + sp2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &[u8] = b"REGISTER sip:ringmesh.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:alice@ringmesh.test>\r\n\
From: <sip:alice@ringmesh.test>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:alice@192.0.2.1:5060>;expires=3600\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn register_fields() {
        let m = Message::parse(Bytes::from_static(REGISTER)).unwrap();
        assert!(m.is_request());
        assert_eq!(*m.method(), Method::Register);
        assert_eq!(m.request_uri_bytes(), b"sip:ringmesh.test");
        assert_eq!(m.branch(), Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(m.top_via().rport(), Some(None));
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.from_tag(), Some(&b"1928301774"[..]));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.call_id(), b"a84b4c76e66710@pc33.example.com");
        assert_eq!(m.cseq(), 314159);
        let c: Vec<_> = m.contacts().collect();
        assert_eq!(c.len(), 1);
        let Contact::Addr(c) = &c[0] else { panic!() };
        assert_eq!(c.expires(), Some(3600));
        assert!(m.body().is_empty());
    }

    #[test]
    fn round_trip() {
        let m = Message::parse(Bytes::from_static(REGISTER)).unwrap();
        let again = Message::parse(m.encode()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn response_line() {
        let r = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(Bytes::from_static(r)).unwrap();
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.reason(), b"Ringing");
        assert_eq!(*m.method(), Method::Invite);
        assert_eq!(m.to_tag(), Some(&b"2"[..]));
    }

    #[test]
    fn limits_enforced() {
        let tight = Limits {
            max_message: 100,
            ..Limits::default()
        };
        assert_eq!(
            Message::parse_with(Bytes::from_static(REGISTER), &tight)
                .unwrap_err()
                .status,
            413
        );
        let few = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        assert_eq!(
            Message::parse_with(Bytes::from_static(REGISTER), &few)
                .unwrap_err()
                .status,
            400
        );
        let short = Limits {
            max_line: 30,
            ..Limits::default()
        };
        assert_eq!(
            Message::parse_with(Bytes::from_static(REGISTER), &short)
                .unwrap_err()
                .status,
            400
        );
    }
}
