//! A phone on one UDP socket, as raw SIP: it registers, sends requests and
//! answers digest challenges (MD5, qop=auth), and answers what it gets.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ringmesh_sip::digest::{Algorithm, Ha1, ResponseParams, response_hex};

use crate::rand_u64;
use crate::sip::status_of;

/// The domain of the farms `ringmesh dev` starts.
pub const DOMAIN: &str = "ringmesh.test";

/// A phone on one UDP socket.
#[derive(Debug)]
pub struct UdpPhone {
    pub sock: UdpSocket,
    pub me: SocketAddr,
    /// How long to wait for each answer.
    pub patience: Duration,
    /// The domain it is a phone of ([`DOMAIN`] unless set).
    pub domain: String,
}

impl UdpPhone {
    /// A phone on a new socket at `ip` (127.0.0.0/8 is all loopback:
    /// another address plays another host).
    pub fn on(ip: &str) -> UdpPhone {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        let me = sock.local_addr().unwrap();
        UdpPhone {
            sock,
            me,
            patience: Duration::from_secs(5),
            domain: DOMAIN.into(),
        }
    }

    /// Another handle on the same socket (for a thread that answers).
    pub fn try_clone(&self) -> UdpPhone {
        UdpPhone {
            sock: self.sock.try_clone().expect("a socket handle"),
            me: self.me,
            patience: self.patience,
            domain: self.domain.clone(),
        }
    }

    /// The same phone, of `domain`'s farm.
    pub fn of(self, domain: &str) -> UdpPhone {
        UdpPhone {
            domain: domain.into(),
            ..self
        }
    }

    /// Sends `text` and returns the first final response with the same
    /// CSeq and Call-ID within `wait` (None: silence); anything else that
    /// arrives meanwhile is dropped.
    pub fn ask(&self, to: SocketAddr, text: &str, wait: Duration) -> Option<String> {
        self.sock.send_to(text.as_bytes(), to).unwrap();
        let cseq = header(text, "CSeq")?;
        let call = header(text, "Call-ID")?;
        let deadline = Instant::now() + wait;
        loop {
            let (t, _) = self.recv(deadline.checked_duration_since(Instant::now())?)?;
            if status_of(t.as_bytes()).is_some_and(|s| s >= 200)
                && header(&t, "CSeq") == Some(cseq.clone())
                && header(&t, "Call-ID") == Some(call.clone())
            {
                return Some(t);
            }
        }
    }

    /// The next message within `wait`, and where it came from.
    pub fn recv(&self, wait: Duration) -> Option<(String, SocketAddr)> {
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    }

    /// The next request within `wait` (responses skipped), and its source.
    pub fn next_request(&self, wait: Duration) -> Option<(String, SocketAddr)> {
        let deadline = Instant::now() + wait;
        loop {
            let (t, from) = self.recv(deadline.checked_duration_since(Instant::now())?)?;
            if !t.starts_with("SIP/2.0") {
                return Some((t, from));
            }
        }
    }

    /// Waits for the next request (ACKs skipped), answers it `status` (with
    /// this phone's Contact for a 2xx), and returns its text and source.
    pub fn answer_next(&self, status: u16, wait: Duration) -> Option<(String, SocketAddr)> {
        let deadline = Instant::now() + wait;
        loop {
            let (req, from) =
                self.next_request(deadline.checked_duration_since(Instant::now())?)?;
            if req.starts_with("ACK ") {
                continue;
            }
            let contact = if status < 300 {
                format!("Contact: <sip:ue@{}>\r\n", self.me)
            } else {
                String::new()
            };
            self.answer(&req, from, status, &contact);
            return Some((req, from));
        }
    }

    /// A request of the dialog a 200 OK (`ok`) to this phone's INVITE
    /// (`invite`, as sent) set up: to the callee's Contact along the
    /// route set (the 200's Record-Route, reversed), with `extra` header
    /// lines (CRLF-terminated).
    pub fn in_dialog(
        &self,
        method: &str,
        cseq: u32,
        invite: &str,
        ok: &str,
        extra: &str,
    ) -> String {
        let mut route: Vec<&str> = ok
            .lines()
            .filter_map(|l| l.strip_prefix("Record-Route: "))
            .flat_map(|l| l.split(", "))
            .collect();
        route.reverse();
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{m}{n:x};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call}\r\nCSeq: {cseq} {method}\r\n\
             {extra}Route: {route}\r\nContent-Length: 0\r\n\r\n",
            target = header(ok, "Contact")
                .unwrap_or_default()
                .trim_matches(['<', '>']),
            me = self.me,
            m = method.to_lowercase(),
            n = rand_u64(),
            from = header(invite, "From").unwrap_or_default(),
            to = header(ok, "To").unwrap_or_default(),
            call = header(invite, "Call-ID").unwrap_or_default(),
            route = route.join(", "),
        )
    }

    /// Answers the request `req` (its text) with `status` and `extra`
    /// header lines (CRLF-terminated), back to `to`.
    pub fn answer(&self, req: &str, to: SocketAddr, status: u16, extra: &str) {
        let r = response_to(req, status, extra);
        let _ = self.sock.send_to(r.as_bytes(), to);
    }

    /// A request from this phone, as `from` (a user of the domain).
    pub fn request(&self, method: &str, to_user: &str, from: &str, extra: &str) -> String {
        self.request_to(
            method,
            &format!("sip:{to_user}@{}", self.domain),
            from,
            extra,
        )
    }

    /// A request to the Request-URI `ruri` from this phone, as `from`.
    pub fn request_to(&self, method: &str, ruri: &str, from: &str, extra: &str) -> String {
        let n = rand_u64();
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKa{n:x};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{from}@{domain}>;tag=a{n:x}\r\nTo: <{ruri}>\r\n\
             Call-ID: ph-{n:x}\r\nCSeq: 1 {method}\r\nContact: <sip:{from}@{me}>\r\n{extra}Content-Length: 0\r\n\r\n",
            me = self.me,
            domain = self.domain
        )
    }

    /// `text`, then its challenge answered as `user` with `password`;
    /// the final status of the second try and its text (None: silence).
    pub fn authenticated(
        &self,
        to: SocketAddr,
        text: &str,
        user: &str,
        password: &str,
    ) -> Option<(u16, String)> {
        let first = self.ask(to, text, self.patience)?;
        let status = status_of(first.as_bytes())?;
        if status != 401 && status != 407 {
            return Some((status, first));
        }
        let again = with_credentials(text, &first, user, password, "00000001");
        let r = self.ask(to, &again, self.patience)?;
        Some((status_of(r.as_bytes())?, r))
    }

    /// Registers `user` with this phone's address as its contact.
    pub fn register(&self, to: SocketAddr, user: &str, password: &str) -> Option<u16> {
        self.register_expires(to, user, password, 600)
            .map(|(s, _)| s)
    }

    /// Registers `user` for `expires` seconds (0 removes the contact);
    /// the final status and response.
    pub fn register_expires(
        &self,
        to: SocketAddr,
        user: &str,
        password: &str,
        expires: u32,
    ) -> Option<(u16, String)> {
        let text = self
            .request("REGISTER", user, user, &format!("Expires: {expires}\r\n"))
            .replacen(
                &format!("REGISTER sip:{user}@{}", self.domain),
                &format!("REGISTER sip:{}", self.domain),
                1,
            );
        self.authenticated(to, &text, user, password)
    }
}

/// A response with `status` to the request `req` (its text): Via, From,
/// To (tagged if it had none), Call-ID, CSeq and Record-Route copied,
/// then `extra` header lines (CRLF-terminated).
pub fn response_to(req: &str, status: u16, extra: &str) -> String {
    let mut out = format!("SIP/2.0 {status} X\r\n");
    for l in req.lines().take_while(|l| !l.is_empty()) {
        let name = l.split(':').next().unwrap_or_default().trim();
        let is = |h: &str| name.eq_ignore_ascii_case(h);
        if is("To") && !l.contains(";tag=") {
            out.push_str(&format!("{};tag=ph{:x}\r\n", l.trim_end(), rand_u64()));
        } else if ["Via", "From", "To", "Call-ID", "CSeq", "Record-Route"]
            .iter()
            .any(|h| is(h))
        {
            out.push_str(l.trim_end());
            out.push_str("\r\n");
        }
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// The value of the first header `name` in `text`.
pub fn header(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The quoted parameter `name` of a header value.
pub fn param(value: &str, name: &str) -> String {
    value
        .split(&format!("{name}=\""))
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string()
}

/// `text` again with the next CSeq, a new branch and an answer (MD5,
/// qop=auth, nonce count `nc`) to the challenge in `challenge_response`.
pub fn with_credentials(
    text: &str,
    challenge_response: &str,
    user: &str,
    password: &str,
    nc: &str,
) -> String {
    let proxy = status_of(challenge_response.as_bytes()) == Some(407);
    let (ask, answer) = if proxy {
        ("Proxy-Authenticate", "Proxy-Authorization")
    } else {
        ("WWW-Authenticate", "Authorization")
    };
    // The MD5 challenge among those offered.
    let challenge = challenge_response
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with(&ask.to_ascii_lowercase())
        })
        .find(|l| l.contains("MD5"))
        .unwrap_or_else(|| panic!("an MD5 challenge in {challenge_response}"));
    let nonce = param(challenge, "nonce");
    let realm = param(challenge, "realm");
    let method = text.split(' ').next().unwrap();
    let uri = text.split(' ').nth(1).unwrap();
    let ha1 = Ha1::compute(user.as_bytes(), realm.as_bytes(), password.as_bytes());
    let resp = response_hex(
        &ha1,
        &ResponseParams {
            algorithm: Algorithm::Md5,
            nonce: nonce.as_bytes(),
            cnonce: b"c0ffee",
            nc: nc.as_bytes(),
            qop: Some(b"auth"),
            method: method.as_bytes(),
            uri: uri.as_bytes(),
        },
    );
    let cred = format!(
        "{answer}: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{resp}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"c0ffee\"\r\n"
    );
    let n = rand_u64();
    text.replacen("CSeq: 1 ", "CSeq: 2 ", 1)
        .replacen(";branch=z9hG4bK", &format!(";branch=z9hG4bK{n:x}"), 1)
        .replacen("Content-Length:", &format!("{cred}Content-Length:"), 1)
}
