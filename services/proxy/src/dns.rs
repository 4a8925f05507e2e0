//! DNS for the proxy core: the queries it asks its driver for
//! ([`Query`], answered as [`Resolved`]), and ENUM.
//!
//! ENUM (RFC 6116): the URI a telephone number maps to in DNS.
//!
//! The number's digits, reversed and dot-separated under the ENUM domain
//! (`+442071234567` → `7.6.5.4.3.2.1.7.0.2.4.4.e164.arpa`), name NAPTR
//! records (RFC 3403). Those for SIP (`E2U+sip`) and terminal (flag `u`)
//! are taken in order, then preference; the first whose regular
//! expression matches the number (`!^.*$!sip:bob@example.com!`, with
//! `\1`… back-references) gives the URI. Non-terminal rules (a
//! replacement domain to look up again) are not followed.
//!
//! The DNS query itself is the driver's ([`crate::proxy::Action::Resolve`]);
//! this module names and reads.

use regex::RegexBuilder;

/// A DNS question of the proxy's (names are fully qualified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// The NAPTR records of a name.
    Naptr { name: String },
    /// The SRV records of a name (`_sip._udp.example.com.`).
    Srv { name: String },
    /// The addresses of a name (A and AAAA).
    Addrs { name: String },
}

/// The driver's answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Naptr(Vec<Naptr>),
    Srv(Vec<Srv>),
    Addrs(Vec<std::net::IpAddr>),
    /// The name, or records of that type, do not exist.
    NotFound,
    /// No answer (timeout, server failure, refused); why.
    Failed(String),
}

/// A NAPTR record, as the driver read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub regexp: String,
    /// The name to look up next ("." when the record is terminal).
    pub replacement: String,
}

/// An SRV record (RFC 2782), as the driver read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The domain name of `number` (E.164, `+…`) under `domain`.
pub fn enum_name(number: &str, domain: &str) -> String {
    let mut name = String::with_capacity(number.len() * 2 + domain.len());
    for d in number.bytes().filter(u8::is_ascii_digit).rev() {
        name.push(char::from(d));
        name.push('.');
    }
    name.push_str(domain.trim_end_matches('.'));
    name.push('.');
    name
}

/// The SIP URI `records` map `number` to, if any.
pub fn sip_uri(number: &str, records: &[Naptr]) -> Option<String> {
    let mut sip: Vec<&Naptr> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("u"))
        .filter(|r| {
            // "E2U+sip", or with sub-types: "E2U+sip:…".
            let s = r.services.to_ascii_lowercase();
            s.split_once('+')
                .is_some_and(|(e, rest)| e == "e2u" && rest.split(':').any(|t| t == "sip"))
        })
        .collect();
    sip.sort_by_key(|r| (r.order, r.preference));
    sip.into_iter()
        .filter_map(|r| apply(&r.regexp, number))
        .find(|uri| {
            let lower = uri.to_ascii_lowercase();
            lower.starts_with("sip:") || lower.starts_with("sips:")
        })
}

/// Applies a NAPTR substitution expression (`delim ere delim repl delim
/// flags`) to `input`; `None` when it does not parse or match.
fn apply(expr: &str, input: &str) -> Option<String> {
    let delim = expr.chars().next()?;
    if delim.is_ascii_alphanumeric() || delim == '\\' {
        return None;
    }
    let parts: Vec<&str> = expr[delim.len_utf8()..].split(delim).collect();
    let [ere, repl, flags] = parts[..] else {
        return None;
    };
    if !flags.chars().all(|f| f == 'i') {
        return None;
    }
    let re = RegexBuilder::new(ere)
        .case_insensitive(flags == "i")
        .size_limit(1 << 16)
        .build()
        .ok()?;
    let caps = re.captures(input)?;
    // The replacement: \0–\9 are back-references, \\ a backslash.
    let mut out = String::new();
    let mut chars = repl.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            d @ '0'..='9' => {
                let i = d.to_digit(10).expect("a digit") as usize;
                out.push_str(caps.get(i).map_or("", |m| m.as_str()));
            }
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naptr(order: u16, preference: u16, services: &str, regexp: &str) -> Naptr {
        Naptr {
            order,
            preference,
            flags: "u".into(),
            services: services.into(),
            regexp: regexp.into(),
            replacement: ".".into(),
        }
    }

    #[test]
    fn the_name_is_the_reversed_digits_under_the_domain() {
        assert_eq!(
            enum_name("+442071234567", "e164.arpa"),
            "7.6.5.4.3.2.1.7.0.2.4.4.e164.arpa."
        );
        assert_eq!(enum_name("+1555", "e164.test."), "5.5.5.1.e164.test.");
    }

    #[test]
    fn sip_rules_in_order_then_preference_with_back_references() {
        let records = vec![
            naptr(10, 10, "E2U+mailto", "!^.*$!mailto:bob@example.com!"),
            naptr(20, 10, "E2U+sip", "!^.*$!sip:second@example.com!"),
            naptr(10, 20, "E2U+sip", "!^\\+(.*)$!sip:\\1@192.0.2.7:5070!"),
            naptr(10, 30, "E2U+sip", "!^.*$!sip:third@example.com!"),
        ];
        assert_eq!(
            sip_uri("+15551234", &records).as_deref(),
            Some("sip:15551234@192.0.2.7:5070")
        );
    }

    #[test]
    fn non_matching_non_terminal_and_broken_rules_are_skipped() {
        let mut nonterminal = naptr(1, 1, "E2U+sip", "!^.*$!sip:x@example.com!");
        nonterminal.flags = String::new();
        let records = vec![
            nonterminal,
            naptr(2, 1, "E2U+sip", "!^\\+44.*$!sip:uk@example.com!"),
            naptr(3, 1, "E2U+sip", "!^(.*$!sip:broken@example.com!"),
            naptr(4, 1, "E2U+sip", "!^.*$!tel:+15551234!"),
            naptr(5, 1, "E2U+sip:voice", "#^.*$#sip:last@example.com#"),
        ];
        assert_eq!(
            sip_uri("+15551234", &records).as_deref(),
            Some("sip:last@example.com")
        );
        assert_eq!(sip_uri("+15551234", &records[..4]), None);
        assert_eq!(apply("!a!b", "a"), None, "three parts");
        assert_eq!(apply("aa!b!", "a"), None, "a letter is no delimiter");
        assert_eq!(apply("!A!b!i", "a").as_deref(), Some("b"));
    }
}
