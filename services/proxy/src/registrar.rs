//! Registrar decisions (RFC 3261 §10.3, RFC 5626 §6), as plain functions
//! over a message and a binding list, apart from any I/O.
//!
//! [`plan`] validates a REGISTER into a [`RegisterPlan`] (what to add,
//! refresh or remove); a location store applies it atomically with
//! [`apply`], wherever the AOR's bindings live; [`ok_response`] writes the
//! 200 listing every current contact.

use bytes::Bytes;
use ringmesh_sip::{Contact, HeaderName, Message, Scheme};

use crate::binding::{Binding, BindingKey, FlowRef, Transport, binding_key};

/// The registrar's limits.
#[derive(Debug, Clone, Copy)]
pub struct RegistrarConfig {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    /// Bindings one AOR may have at once: a REGISTER that would exceed it
    /// is refused (403), so one subscriber cannot make every call to it
    /// fork to thousands of contacts.
    pub max_contacts: usize,
    /// The Flow-Timer (RFC 5626 §4.4.1) of a registration that uses
    /// outbound: how often its phone should send keep-alives, seconds
    /// (0: none sent).
    pub flow_timer: u32,
    /// Whether a contact may be a loopback address (a lab farm on one
    /// machine; never on a real network).
    pub allow_loopback_contacts: bool,
}

/// One contact of a REGISTER: the binding it becomes, and its lifetime
/// (0 removes it).
#[derive(Debug, Clone)]
pub struct ContactUpdate {
    pub binding: Binding,
    pub expires: u32,
}

/// A validated REGISTER, ready to apply to the AOR's binding list.
#[derive(Debug, Clone)]
pub struct RegisterPlan {
    pub call_id: Bytes,
    pub cseq: u32,
    /// `Contact: *` with `Expires: 0`: remove every binding.
    pub wildcard: bool,
    pub contacts: Vec<ContactUpdate>,
    /// HLC stamp for the bindings written.
    pub hlc: u64,
    /// Bindings the AOR may have once the plan is applied.
    pub max_contacts: usize,
}

impl RegisterPlan {
    /// Whether any contact asked for RFC 5626 outbound.
    pub fn uses_outbound(&self) -> bool {
        self.contacts.iter().any(|c| c.binding.reg_id.is_some())
    }
}

/// A REGISTER refused before it touches the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub detail: &'static str,
    /// For 423: the Min-Expires to advertise.
    pub min_expires: Option<u32>,
}

impl Reject {
    fn bad(detail: &'static str) -> Reject {
        Reject {
            status: 400,
            detail,
            min_expires: None,
        }
    }
}

/// Refusals that need the current bindings to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegistrarError {
    /// Same Call-ID with a CSeq not above the stored one (§10.3 step 7).
    #[error("out-of-order REGISTER (CSeq not above the stored one for this Call-ID)")]
    OutOfOrder,
    /// The AOR would have more bindings than it may.
    #[error("too many contacts for this address-of-record")]
    TooManyContacts,
}

impl RegistrarError {
    pub fn status(&self) -> u16 {
        match self {
            RegistrarError::OutOfOrder => 500,
            RegistrarError::TooManyContacts => 403,
        }
    }
}

/// Where a REGISTER arrived: the flow, its transport, and this edge node.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub flow: FlowRef,
    pub transport: Transport,
    pub edge: [u8; 16],
}

/// Validates a REGISTER (steps 5–7 of §10.3 that need no stored state).
pub fn plan(
    req: &Message,
    aor: &ringmesh_sip::aor::Aor,
    cfg: &RegistrarConfig,
    at: Arrival,
    now_ms: u64,
    hlc: u64,
) -> Result<RegisterPlan, Reject> {
    let Arrival {
        flow,
        transport,
        edge,
    } = at;
    if !matches!(req.to_hdr().uri().scheme(), Scheme::Sip | Scheme::Sips) {
        return Err(Reject::bad(
            "the To header is not a SIP or SIPS address-of-record",
        ));
    }
    let header_expires = req.expires();
    let path = join_values(req.header_values(HeaderName::Path));
    let mut wildcard = false;
    let mut contacts = Vec::new();
    for c in req.contacts() {
        match c {
            Contact::Wildcard => wildcard = true,
            Contact::Addr(na) => {
                let mut expires = na
                    .expires()
                    .or(header_expires)
                    .unwrap_or(cfg.default_expires);
                if expires != 0 && expires < cfg.min_expires {
                    return Err(Reject {
                        status: 423,
                        detail: "registration too brief",
                        min_expires: Some(cfg.min_expires),
                    });
                }
                expires = expires.min(cfg.max_expires);
                let instance = na.instance().map(|i| Bytes::copy_from_slice(&i));
                let reg_id = na.reg_id().filter(|_| instance.is_some());
                contacts.push(ContactUpdate {
                    binding: Binding {
                        aor: Bytes::copy_from_slice(aor.as_bytes()),
                        // Copies, not slices: a stored binding must not pin
                        // the receive buffer it came in.
                        contact: Bytes::copy_from_slice(na.uri().as_bytes()),
                        instance,
                        reg_id,
                        q: na.q(),
                        expires_at_ms: now_ms + u64::from(expires) * 1000,
                        call_id: Bytes::copy_from_slice(req.call_id()),
                        cseq: req.cseq(),
                        flow,
                        transport,
                        edge,
                        hlc,
                        path: path.clone(),
                    },
                    expires,
                });
            }
        }
    }
    if wildcard && (!contacts.is_empty() || header_expires != Some(0)) {
        return Err(Reject::bad(
            "Contact: * needs Expires: 0 and no other contact",
        ));
    }
    Ok(RegisterPlan {
        call_id: Bytes::copy_from_slice(req.call_id()),
        cseq: req.cseq(),
        wildcard,
        contacts,
        hlc,
        max_contacts: cfg.max_contacts,
    })
}

/// Applies a plan to an AOR's bindings: all or nothing.
pub fn apply(
    list: &mut Vec<Binding>,
    plan: &RegisterPlan,
    now_ms: u64,
) -> Result<(), RegistrarError> {
    list.retain(|b| b.expires_at_ms > now_ms);
    let stale = |b: &Binding| b.call_id == plan.call_id && plan.cseq <= b.cseq;
    if plan.wildcard {
        if list.iter().any(stale) {
            return Err(RegistrarError::OutOfOrder);
        }
        list.clear();
        return Ok(());
    }
    let keys: Vec<BindingKey> = plan.contacts.iter().map(|c| c.binding.key()).collect();
    for key in &keys {
        if list.iter().any(|b| &b.key() == key && stale(b)) {
            return Err(RegistrarError::OutOfOrder);
        }
    }
    // The count once applied: new keys added, existing ones removed.
    let mut after = list.len();
    for (update, key) in plan.contacts.iter().zip(&keys) {
        let exists = list.iter().any(|b| &b.key() == key);
        match (exists, update.expires) {
            (false, e) if e > 0 => after += 1,
            (true, 0) => after = after.saturating_sub(1),
            _ => {}
        }
    }
    if after > plan.max_contacts && after > list.len() {
        return Err(RegistrarError::TooManyContacts);
    }
    for (update, key) in plan.contacts.iter().zip(keys) {
        let existing = list.iter().position(|b| b.key() == key);
        match (existing, update.expires) {
            (Some(i), 0) => {
                list.swap_remove(i);
            }
            (None, 0) => {}
            (Some(i), _) => {
                let hlc = plan.hlc.max(list[i].hlc + 1);
                list[i] = Binding {
                    hlc,
                    ..update.binding.clone()
                };
            }
            (None, _) => list.push(update.binding.clone()),
        }
    }
    Ok(())
}

/// Highest q first; contacts without q count as 1.0 (RFC 3261 §16.6).
pub fn sort_by_preference(list: &mut [Binding]) {
    list.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(1000)));
}

/// Header values comma-joined in order (what a Path is kept as); `None`
/// when there are none.
fn join_values<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Bytes> {
    let mut out = Vec::new();
    for v in values {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
    }
    (!out.is_empty()).then(|| Bytes::from(out))
}

/// What a 200 OK to a REGISTER carries beyond the bindings: headers
/// (Path, Service-Route, P-Associated-URI) and the parameters each listed
/// contact gets (its GRUUs).
pub struct OkExtras<'a> {
    pub headers: Vec<(HeaderName, Vec<u8>)>,
    pub contact_params: &'a dyn Fn(&Binding) -> Option<String>,
}

impl std::fmt::Debug for OkExtras<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OkExtras")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl OkExtras<'_> {
    /// Nothing beyond the bindings.
    pub const NONE: OkExtras<'static> = OkExtras {
        headers: Vec::new(),
        contact_params: &|_| None,
    };
}

/// The 200 OK to a REGISTER: every current binding with its remaining
/// lifetime (§10.3 step 8), and `Require: outbound` and the `Flow-Timer`
/// (unless 0) when the UA used outbound.
pub fn ok_response(
    req: &Message,
    bindings: &[Binding],
    plan: &RegisterPlan,
    now_ms: u64,
    to_tag: &[u8],
    flow_timer: u32,
    extras: &OkExtras<'_>,
) -> Bytes {
    let mut w = req.response_writer(200, Some(to_tag));
    for b in bindings {
        let mut v = Vec::with_capacity(b.contact.len() + 64);
        v.push(b'<');
        v.extend_from_slice(&b.contact);
        v.extend_from_slice(b">;expires=");
        v.extend_from_slice(b.remaining_secs(now_ms).to_string().as_bytes());
        if let Some(q) = b.q {
            v.extend_from_slice(format!(";q={}.{:03}", q / 1000, q % 1000).as_bytes());
        }
        if let Some(i) = &b.instance {
            v.extend_from_slice(b";+sip.instance=\"");
            v.extend_from_slice(i);
            v.push(b'"');
        }
        if let Some(r) = b.reg_id {
            v.extend_from_slice(format!(";reg-id={r}").as_bytes());
        }
        if let Some(p) = (extras.contact_params)(b) {
            v.extend_from_slice(p.as_bytes());
        }
        w.header(HeaderName::Contact, &v);
    }
    for (name, value) in &extras.headers {
        w.header(*name, value);
    }
    if plan.uses_outbound() {
        w.header(HeaderName::Require, b"outbound");
        if flow_timer > 0 {
            w.header_fmt(HeaderName::FlowTimer, format_args!("{flow_timer}"));
        }
    }
    w.header(HeaderName::Supported, super::proxy::SUPPORTED_HEADER);
    w.finish(b"")
}

/// 423 Interval Too Brief with Min-Expires, or another refusal.
pub fn reject_response(req: &Message, reject: &Reject, to_tag: &[u8]) -> Bytes {
    let mut w = req.response_writer(reject.status, Some(to_tag));
    if let Some(m) = reject.min_expires {
        w.header_fmt(HeaderName::MinExpires, format_args!("{m}"));
    }
    w.header(
        HeaderName::Warning,
        format!("399 ringmesh \"{}\"", reject.detail).as_bytes(),
    );
    w.finish(b"")
}

/// The key a contact would have; used by tests and the admin API.
pub fn contact_key(contact: &[u8]) -> BindingKey {
    binding_key(None, None, contact)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: RegistrarConfig = RegistrarConfig {
        min_expires: 60,
        max_expires: 7200,
        default_expires: 3600,
        max_contacts: 4,
        flow_timer: 120,
        allow_loopback_contacts: false,
    };

    fn flow() -> FlowRef {
        FlowRef::Udp {
            socket: 0,
            peer: "192.0.2.1:5060".parse().unwrap(),
        }
    }

    fn register(call_id: &str, cseq: u32, contacts: &[&str], expires: Option<u32>) -> Message {
        let mut s = format!(
            "REGISTER sip:ringmesh.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{cseq}\r\n\
             To: <sip:alice@ringmesh.test>\r\nFrom: <sip:alice@ringmesh.test>;tag=1\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n"
        );
        for c in contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(Bytes::from(s)).unwrap()
    }

    fn aor_of(m: &Message) -> ringmesh_sip::aor::Aor {
        ringmesh_sip::aor::Aor::from_uri(m.to_hdr().uri()).unwrap()
    }

    fn plan_for(
        m: &Message,
        cfg: &RegistrarConfig,
        now: u64,
        hlc: u64,
    ) -> Result<RegisterPlan, Reject> {
        let at = Arrival {
            flow: flow(),
            transport: Transport::Udp,
            edge: [0; 16],
        };
        plan(m, &aor_of(m), cfg, at, now, hlc)
    }

    fn run(list: &mut Vec<Binding>, m: &Message, now: u64) -> Result<(), RegistrarError> {
        let p = plan_for(m, &CFG, now, now).unwrap();
        apply(list, &p, now)
    }

    #[test]
    fn add_refresh_remove() {
        let mut list = Vec::new();
        run(
            &mut list,
            &register("c1", 1, &["<sip:a@192.0.2.1>"], None),
            0,
        )
        .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].expires_at_ms, 3_600_000);
        run(
            &mut list,
            &register("c1", 2, &["<sip:a@192.0.2.1>;expires=120"], Some(600)),
            1000,
        )
        .unwrap();
        assert_eq!(list.len(), 1, "refresh replaces");
        assert_eq!(list[0].expires_at_ms, 121_000, "parameter beats header");
        run(
            &mut list,
            &register("c1", 3, &["<sip:a@192.0.2.2>"], Some(600)),
            2000,
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        run(
            &mut list,
            &register("c1", 4, &["<sip:a@192.0.2.1>"], Some(0)),
            3000,
        )
        .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(&list[0].contact[..], b"sip:a@192.0.2.2");
    }

    #[test]
    fn wildcard_and_ordering() {
        let mut list = Vec::new();
        run(
            &mut list,
            &register("c1", 5, &["<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>"], None),
            0,
        )
        .unwrap();
        assert_eq!(
            run(
                &mut list,
                &register("c1", 5, &["<sip:a@192.0.2.1>"], None),
                0
            ),
            Err(RegistrarError::OutOfOrder)
        );
        assert_eq!(
            run(&mut list, &register("c1", 4, &["*"], Some(0)), 0),
            Err(RegistrarError::OutOfOrder)
        );
        // A different Call-ID is a different UA instance: no ordering.
        run(
            &mut list,
            &register("c2", 1, &["<sip:a@192.0.2.1>"], None),
            0,
        )
        .unwrap();
        run(&mut list, &register("c1", 6, &["*"], Some(0)), 0).unwrap();
        assert!(list.is_empty());
    }

    #[test]
    fn rejections() {
        let too_brief = plan_for(
            &register("c", 1, &["<sip:a@b>;expires=10"], None),
            &CFG,
            0,
            0,
        );
        assert_eq!(too_brief.unwrap_err().min_expires, Some(60));
        let bad_star = plan_for(&register("c", 1, &["*"], Some(30)), &CFG, 0, 0);
        assert_eq!(bad_star.unwrap_err().status, 400);
        let clamped =
            plan_for(&register("c", 1, &["<sip:a@b>"], Some(999_999)), &CFG, 0, 0).unwrap();
        assert_eq!(clamped.contacts[0].expires, 7200);
        let query = plan_for(&register("c", 1, &[], None), &CFG, 0, 0).unwrap();
        assert!(!query.wildcard && query.contacts.is_empty(), "a fetch");
    }

    fn contacts(n: std::ops::Range<u8>) -> Vec<String> {
        n.map(|i| format!("<sip:a@192.0.2.{i}>")).collect()
    }

    fn register_all(call_id: &str, cseq: u32, c: &[String], expires: Option<u32>) -> Message {
        let c: Vec<&str> = c.iter().map(String::as_str).collect();
        register(call_id, cseq, &c, expires)
    }

    #[test]
    fn the_contact_cap_counts_what_the_list_holds_once_applied() {
        let mut list = Vec::new();
        // Up to the cap (4) exactly is fine.
        run(&mut list, &register_all("c", 1, &contacts(1..4), None), 0).unwrap();
        run(&mut list, &register_all("c", 2, &contacts(4..5), None), 0).unwrap();
        assert_eq!(list.len(), 4);
        // One more is not.
        assert_eq!(
            run(&mut list, &register_all("c", 3, &contacts(5..6), None), 0),
            Err(RegistrarError::TooManyContacts)
        );
        // Removing a contact the list does not hold adds nothing.
        run(
            &mut list,
            &register_all("c", 4, &contacts(9..10), Some(0)),
            0,
        )
        .unwrap();
        // Removing one and adding one in the same request stays at the cap.
        let swap = register(
            "c",
            5,
            &["<sip:a@192.0.2.1>;expires=0", "<sip:a@192.0.2.5>"],
            None,
        );
        run(&mut list, &swap, 0).unwrap();
        assert_eq!(list.len(), 4);
        assert!(list.iter().any(|b| &b.contact[..] == b"sip:a@192.0.2.5"));
    }

    #[test]
    fn a_list_over_a_lowered_cap_is_refreshed_and_shrunk_but_never_grown() {
        let mut list = Vec::new();
        run(&mut list, &register_all("c", 1, &contacts(1..5), None), 0).unwrap();
        assert_eq!(list.len(), 4);
        // The operator lowers the cap to 2: the phone's four bindings stay.
        let lowered = RegistrarConfig {
            max_contacts: 2,
            ..CFG
        };
        let apply_lowered = |list: &mut Vec<Binding>, m: &Message| {
            apply(list, &plan_for(m, &lowered, 0, 0).unwrap(), 0)
        };
        // Refreshing them all keeps the count as it is: accepted.
        apply_lowered(&mut list, &register_all("c", 2, &contacts(1..5), None)).unwrap();
        assert_eq!(list.len(), 4);
        // A swap (one out, one in) does not grow the list either.
        let swap = register(
            "c",
            3,
            &["<sip:a@192.0.2.1>;expires=0", "<sip:a@192.0.2.9>"],
            None,
        );
        apply_lowered(&mut list, &swap).unwrap();
        assert_eq!(list.len(), 4);
        // One more contact is refused, and removing one is fine.
        assert_eq!(
            apply_lowered(&mut list, &register_all("c", 4, &contacts(10..11), None)),
            Err(RegistrarError::TooManyContacts)
        );
        apply_lowered(&mut list, &register_all("c", 5, &contacts(2..3), Some(0))).unwrap();
        assert_eq!(list.len(), 3);
    }

    #[test]
    fn a_binding_expiring_now_is_gone_and_a_refresh_never_goes_back_in_time() {
        let mut list = Vec::new();
        let m = register("c", 1, &["<sip:a@192.0.2.1>;expires=60"], None);
        run(&mut list, &m, 0).unwrap();
        assert_eq!(list[0].expires_at_ms, 60_000);
        // At its expiry instant it no longer counts.
        run(
            &mut list,
            &register("d", 1, &["<sip:a@192.0.2.2>"], None),
            60_000,
        )
        .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(&list[0].contact[..], b"sip:a@192.0.2.2");
        // A refresh stamped with an older clock than the binding's (another
        // supernode's HLC) still orders after it.
        list[0].hlc = 10;
        let refresh = plan_for(
            &register("d", 2, &["<sip:a@192.0.2.2>"], None),
            &CFG,
            60_000,
            5,
        )
        .unwrap();
        apply(&mut list, &refresh, 60_000).unwrap();
        assert_eq!(list[0].hlc, 11);
    }

    #[test]
    fn require_outbound_only_when_the_phone_used_it() {
        let plain = register("c", 1, &["<sip:a@192.0.2.1>"], None);
        let inst = "+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\"";
        let ob = register(
            "c",
            2,
            &[&format!("<sip:a@192.0.2.1;ob>;{inst};reg-id=1")],
            None,
        );
        for (m, want) in [(plain, false), (ob, true)] {
            let p = plan_for(&m, &CFG, 0, 0).unwrap();
            let r =
                Message::parse(ok_response(&m, &[], &p, 0, b"t", 120, &OkExtras::NONE)).unwrap();
            assert_eq!(r.header(HeaderName::Require).is_some(), want);
            // The Flow-Timer tells an outbound phone how often to ping.
            let timer = r.header(HeaderName::FlowTimer).map(|v| v.to_vec());
            assert_eq!(timer, want.then(|| b"120".to_vec()));
            let off =
                Message::parse(ok_response(&m, &[], &p, 0, b"t", 0, &OkExtras::NONE)).unwrap();
            assert!(off.header(HeaderName::FlowTimer).is_none(), "0: none sent");
        }
    }

    #[test]
    fn outbound_keys_by_instance() {
        let inst = "+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\"";
        let mut list = Vec::new();
        run(
            &mut list,
            &register(
                "c",
                1,
                &[&format!("<sip:a@192.0.2.1:1111;ob>;{inst};reg-id=1")],
                None,
            ),
            0,
        )
        .unwrap();
        run(
            &mut list,
            &register(
                "c",
                2,
                &[&format!("<sip:a@192.0.2.1:2222;ob>;{inst};reg-id=1")],
                None,
            ),
            0,
        )
        .unwrap();
        assert_eq!(
            list.len(),
            1,
            "same instance and reg-id: the new contact replaces the old"
        );
        run(
            &mut list,
            &register(
                "c",
                3,
                &[&format!("<sip:a@192.0.2.1:3333;ob>;{inst};reg-id=2")],
                None,
            ),
            0,
        )
        .unwrap();
        assert_eq!(list.len(), 2, "a second flow of the same instance");
        assert!(list.iter().all(|b| b.use_flow()));
    }

    #[test]
    fn ok_lists_every_contact() {
        let mut list = Vec::new();
        let m = register(
            "c1",
            1,
            &["<sip:a@192.0.2.1>;q=0.5", "<sip:a@192.0.2.2>"],
            Some(600),
        );
        let p = plan_for(&m, &CFG, 0, 0).unwrap();
        apply(&mut list, &p, 0).unwrap();
        sort_by_preference(&mut list);
        let r = Message::parse(ok_response(
            &m,
            &list,
            &p,
            100_000,
            b"tag",
            120,
            &OkExtras::NONE,
        ))
        .unwrap();
        assert_eq!(r.status(), Some(200));
        let c: Vec<_> = r
            .contacts()
            .map(|c| match c {
                Contact::Addr(a) => (a.uri().as_bytes().to_vec(), a.expires(), a.q()),
                Contact::Wildcard => panic!(),
            })
            .collect();
        assert_eq!(
            c,
            vec![
                (b"sip:a@192.0.2.2".to_vec(), Some(500), None),
                (b"sip:a@192.0.2.1".to_vec(), Some(500), Some(500))
            ]
        );
    }
}
