//! Byte-level lexing shared by every grammar in the crate (RFC 3261 §25.1).
//!
//! Everything here works on `&[u8]` and returns offsets, so callers can slice
//! the original buffer without copying.

/// Character classes of the RFC 3261 grammar, as bit flags in one table.
const TOKEN: u8 = 1;
const WORD: u8 = 2;
const UNRESERVED: u8 = 4;
const USER: u8 = 8;
const PASSWORD: u8 = 16;
const PARAMCHAR: u8 = 32;
const HNV: u8 = 64;
const HOST: u8 = 128;

const fn class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric();
        let mark = matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        );
        let mut f = 0u8;
        if alnum
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            )
        {
            f |= TOKEN;
        }
        if f & TOKEN != 0
            || matches!(
                b,
                b'(' | b')'
                    | b'<'
                    | b'>'
                    | b':'
                    | b'\\'
                    | b'"'
                    | b'/'
                    | b'['
                    | b']'
                    | b'?'
                    | b'{'
                    | b'}'
            )
        {
            f |= WORD;
        }
        if alnum || mark {
            f |= UNRESERVED;
        }
        if alnum || mark || matches!(b, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/') {
            f |= USER;
        }
        if alnum || mark || matches!(b, b'&' | b'=' | b'+' | b'$' | b',') {
            f |= PASSWORD;
        }
        if alnum || mark || matches!(b, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$') {
            f |= PARAMCHAR;
        }
        if alnum || mark || matches!(b, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$') {
            f |= HNV;
        }
        if alnum || matches!(b, b'-' | b'.' | b'_') {
            f |= HOST;
        }
        t[c] = f;
        c += 1;
    }
    t
}

static CLASS: [u8; 256] = class_table();

#[inline]
pub(crate) fn is_token(c: u8) -> bool {
    CLASS[c as usize] & TOKEN != 0
}
#[inline]
pub(crate) fn is_word(c: u8) -> bool {
    CLASS[c as usize] & WORD != 0
}
#[inline]
pub(crate) fn is_user(c: u8) -> bool {
    CLASS[c as usize] & USER != 0
}
#[inline]
pub(crate) fn is_password(c: u8) -> bool {
    CLASS[c as usize] & PASSWORD != 0
}
#[inline]
pub(crate) fn is_paramchar(c: u8) -> bool {
    CLASS[c as usize] & PARAMCHAR != 0
}
#[inline]
pub(crate) fn is_hnv(c: u8) -> bool {
    CLASS[c as usize] & HNV != 0
}
#[inline]
pub(crate) fn is_hostchar(c: u8) -> bool {
    CLASS[c as usize] & HOST != 0
}
#[inline]
pub(crate) fn is_unreserved(c: u8) -> bool {
    CLASS[c as usize] & UNRESERVED != 0
}

/// Linear white space inside a header value. Line folding (CRLF followed by
/// SP/HTAB) has already been checked when the header was split, so a CR or LF
/// seen inside a value is always part of a fold.
#[inline]
pub(crate) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

#[inline]
pub(crate) fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_ws(s[i]) {
        i += 1;
    }
    i
}

pub fn trim(s: &[u8]) -> &[u8] {
    let start = skip_ws(s, 0);
    let mut end = s.len();
    while end > start && is_ws(s[end - 1]) {
        end -= 1;
    }
    &s[start..end]
}

/// End of a run of token characters starting at `i`.
#[inline]
pub(crate) fn scan_token(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_token(s[i]) {
        i += 1;
    }
    i
}

/// `s[i]` is a DQUOTE; returns the offset just past the closing DQUOTE.
/// quoted-pair (`\` followed by any octet but CR/LF) is honoured.
pub(crate) fn scan_quoted(s: &[u8], i: usize) -> Option<usize> {
    debug_assert_eq!(s.get(i), Some(&b'"'));
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'"' => return Some(j + 1),
            b'\\' => {
                match s.get(j + 1) {
                    Some(b'\r') | Some(b'\n') | None => return None,
                    Some(_) => j += 2,
                }
                continue;
            }
            _ => j += 1,
        }
    }
    None
}

/// Removes the surrounding quotes and quoted-pair escapes of a quoted string.
/// Values that are not quoted are returned as they are.
pub fn unquote(s: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if s.len() >= 2 && s[0] == b'"' && s[s.len() - 1] == b'"' {
        let inner = &s[1..s.len() - 1];
        if !inner.contains(&b'\\') {
            return std::borrow::Cow::Borrowed(inner);
        }
        let mut out = Vec::with_capacity(inner.len());
        let mut it = inner.iter();
        while let Some(&c) = it.next() {
            if c == b'\\' {
                if let Some(&n) = it.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Splits a header value into its comma-separated elements, ignoring commas
/// inside quoted strings and `<...>`. Elements are trimmed; empty elements
/// are yielded (as empty slices) so callers can reject them.
#[derive(Debug, Clone)]
pub struct ListIter<'a> {
    s: &'a [u8],
    pos: usize,
    done: bool,
}

pub(crate) fn split_list(s: &[u8]) -> ListIter<'_> {
    ListIter {
        s,
        pos: 0,
        done: false,
    }
}

impl<'a> Iterator for ListIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let s = self.s;
        let start = self.pos;
        let mut i = start;
        let mut angle = false;
        while i < s.len() {
            match s[i] {
                b'"' => match scan_quoted(s, i) {
                    Some(e) => {
                        i = e;
                        continue;
                    }
                    None => break,
                },
                b'<' => angle = true,
                b'>' => angle = false,
                b',' if !angle => {
                    self.pos = i + 1;
                    return Some(trim(&s[start..i]));
                }
                _ => {}
            }
            i += 1;
        }
        self.done = true;
        Some(trim(&s[start..]))
    }
}

/// Parses an unsigned decimal number made only of digits, rejecting empty
/// input and values above `max`.
pub(crate) fn parse_u64(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    (v <= max).then_some(v)
}

/// Like [`parse_u64`] but saturates at `u32::MAX` instead of failing, for
/// delta-seconds values that RFC 3261 lets us clamp (Expires).
pub(crate) fn parse_delta_seconds(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = {
        let z = s.iter().take_while(|&&c| c == b'0').count();
        &s[z.min(s.len() - 1)..]
    };
    if digits.len() > 10 {
        return Some(u32::MAX);
    }
    Some(parse_u64(digits, u64::MAX).map_or(u32::MAX, |v| v.min(u64::from(u32::MAX)) as u32))
}

/// Decodes `%HH` escapes. Invalid escapes are kept literally (RFC 3261 only
/// defines escapes where they are valid; callers validate beforehand).
pub fn unescape(s: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let (Some(h), Some(l)) = (hex_val(s[i + 1]), hex_val(s[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// True when every `%` in `s` starts a valid `%HH` escape.
pub(crate) fn escapes_valid(s: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'%', &s[i..]) {
        let at = i + p;
        if at + 2 >= s.len() {
            return false;
        }
        if hex_val(s[at + 1]).is_none() || hex_val(s[at + 2]).is_none() {
            return false;
        }
        i = at + 3;
    }
    true
}

/// One `;name[=value]` parameter of a header (not URI) parameter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a [u8],
    /// The raw value, still quoted when it was a quoted string.
    pub value: Option<&'a [u8]>,
}

/// Validates a header parameter list `*( SEMI generic-param )` and returns
/// the offset where it stopped (the end of `s`, or a non-parameter byte).
/// `s` starts at the first `;` (or is empty).
pub(crate) fn scan_params(s: &[u8], mut i: usize) -> Result<usize, &'static str> {
    loop {
        let j = skip_ws(s, i);
        if j >= s.len() || s[j] != b';' {
            return Ok(i);
        }
        let mut k = skip_ws(s, j + 1);
        let name_end = scan_token(s, k);
        if name_end == k {
            return Err("empty or invalid parameter name");
        }
        k = skip_ws(s, name_end);
        if k < s.len() && s[k] == b'=' {
            k = skip_ws(s, k + 1);
            if k < s.len() && s[k] == b'"' {
                k = scan_quoted(s, k).ok_or("unterminated quoted parameter value")?;
            } else {
                let v = k;
                while k < s.len() && (is_token(s[k]) || matches!(s[k], b'[' | b']' | b':')) {
                    k += 1;
                }
                if k == v {
                    return Err("empty parameter value");
                }
            }
            i = k;
        } else {
            i = name_end;
        }
    }
}

/// Iterates a header parameter list that `scan_params` already accepted.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Params<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Params { s, i: 0 }
    }

    /// The value of the first parameter named `name` (case-insensitive):
    /// `None` when absent, `Some(None)` when present without a value.
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.clone()
            .find(|p| p.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|p| p.value)
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;
    fn next(&mut self) -> Option<Param<'a>> {
        let s = self.s;
        let j = skip_ws(s, self.i);
        if j >= s.len() || s[j] != b';' {
            return None;
        }
        let k = skip_ws(s, j + 1);
        let name_end = scan_token(s, k);
        let name = &s[k..name_end];
        let mut m = skip_ws(s, name_end);
        let value = if m < s.len() && s[m] == b'=' {
            let v = skip_ws(s, m + 1);
            m = if v < s.len() && s[v] == b'"' {
                scan_quoted(s, v).unwrap_or(s.len())
            } else {
                let mut e = v;
                while e < s.len() && (is_token(s[e]) || matches!(s[e], b'[' | b']' | b':')) {
                    e += 1;
                }
                e
            };
            Some(&s[v..m])
        } else {
            m = name_end;
            None
        };
        self.i = m;
        Some(Param { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_split_respects_quotes_and_angles() {
        let v: Vec<_> = split_list(br#""a, b" <sip:x@y;p=1,2>;q=0.5 , <sip:z@w>"#).collect();
        assert_eq!(
            v,
            vec![&br#""a, b" <sip:x@y;p=1,2>;q=0.5"#[..], &b"<sip:z@w>"[..]]
        );
        let v: Vec<_> = split_list(b";;,;,,").collect();
        assert_eq!(v, vec![&b";;"[..], b";", b"", b""]);
    }

    #[test]
    fn params_scan_and_iterate() {
        let s = b" ;   tag    = 1918181833n ; x ; y=\"q\\\"v\"";
        assert_eq!(scan_params(s, 0), Ok(s.len()));
        let p: Vec<_> = Params::new(s).collect();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].name, b"tag");
        assert_eq!(p[0].value, Some(&b"1918181833n"[..]));
        assert_eq!(p[1].value, None);
        assert_eq!(unquote(p[2].value.unwrap()).as_ref(), b"q\"v");
        assert!(scan_params(b";;", 0).is_err());
        assert!(scan_params(b";a=", 0).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0068", 255), Some(68));
        assert_eq!(parse_u64(b"300", 255), None);
        assert_eq!(parse_u64(b"36893488147419103232", u64::MAX), None);
        assert_eq!(parse_delta_seconds(b"3600"), Some(3600));
        assert_eq!(parse_delta_seconds(&[b'1'; 100]), Some(u32::MAX));
        assert_eq!(parse_delta_seconds(b"0000000000000042"), Some(42));
        assert_eq!(parse_delta_seconds(b"-1"), None);
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape(b"%75se%72").as_ref(), b"user");
        assert_eq!(unescape(b"null-%00-null").as_ref(), b"null-\0-null");
        assert_eq!(unescape(b"100%").as_ref(), b"100%");
        assert!(escapes_valid(b"a%20b"));
        assert!(!escapes_valid(b"a%2"));
        assert!(!escapes_valid(b"%ZE"));
    }
}
