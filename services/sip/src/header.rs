//! Header names: the full and compact forms RFC 3261 §7.3.3 and its
//! extensions define, matched case-insensitively without allocating.

macro_rules! header_names {
    ($( $variant:ident => $name:literal $(, $compact:literal)? ; list = $list:literal ;)*) => {
        /// A header field name. Unknown names keep their text in the
        /// message; [`HeaderName::Other`] only marks them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $( $variant, )*
            Other,
        }

        impl HeaderName {
            /// Recognises a full or compact header name, case-insensitively.
            pub fn from_bytes(name: &[u8]) -> HeaderName {
                if name.len() == 1 {
                    let c = name[0].to_ascii_lowercase();
                    $( $( if c == $compact { return HeaderName::$variant; } )? )*
                    return HeaderName::Other;
                }
                $( if name.len() == $name.len() && name.eq_ignore_ascii_case($name.as_bytes()) {
                    return HeaderName::$variant;
                } )*
                HeaderName::Other
            }

            /// The canonical full name (empty for `Other`).
            pub fn as_str(&self) -> &'static str {
                match self {
                    $( HeaderName::$variant => $name, )*
                    HeaderName::Other => "",
                }
            }

            /// Whether the header's grammar is a comma-separated list, so
            /// several values may share one line (RFC 3261 §7.3.1).
            pub fn is_list(&self) -> bool {
                match self {
                    $( HeaderName::$variant => $list, )*
                    HeaderName::Other => false,
                }
            }
        }
    };
}

header_names! {
    Accept => "Accept"; list = true;
    AcceptEncoding => "Accept-Encoding"; list = true;
    AcceptLanguage => "Accept-Language"; list = true;
    AcceptContact => "Accept-Contact", b'a'; list = true;
    AlertInfo => "Alert-Info"; list = true;
    Allow => "Allow"; list = true;
    AllowEvents => "Allow-Events", b'u'; list = true;
    AuthenticationInfo => "Authentication-Info"; list = false;
    Authorization => "Authorization"; list = false;
    CallId => "Call-ID", b'i'; list = false;
    CallInfo => "Call-Info"; list = true;
    Contact => "Contact", b'm'; list = true;
    ContentDisposition => "Content-Disposition"; list = false;
    ContentEncoding => "Content-Encoding", b'e'; list = true;
    ContentLanguage => "Content-Language"; list = true;
    ContentLength => "Content-Length", b'l'; list = false;
    ContentType => "Content-Type", b'c'; list = false;
    CSeq => "CSeq"; list = false;
    Date => "Date"; list = false;
    ErrorInfo => "Error-Info"; list = true;
    Event => "Event", b'o'; list = false;
    Expires => "Expires"; list = false;
    FlowTimer => "Flow-Timer"; list = false;
    From => "From", b'f'; list = false;
    Identity => "Identity", b'y'; list = false;
    InReplyTo => "In-Reply-To"; list = true;
    MaxForwards => "Max-Forwards"; list = false;
    MinExpires => "Min-Expires"; list = false;
    MimeVersion => "MIME-Version"; list = false;
    Organization => "Organization"; list = false;
    PAssertedIdentity => "P-Asserted-Identity"; list = true;
    PAssociatedUri => "P-Associated-URI"; list = true;
    PCalledPartyId => "P-Called-Party-ID"; list = false;
    PChargingVector => "P-Charging-Vector"; list = false;
    PPreferredIdentity => "P-Preferred-Identity"; list = true;
    Path => "Path"; list = true;
    Priority => "Priority"; list = false;
    Privacy => "Privacy"; list = false;
    ProxyAuthenticate => "Proxy-Authenticate"; list = false;
    ProxyAuthorization => "Proxy-Authorization"; list = false;
    ProxyRequire => "Proxy-Require"; list = true;
    RAck => "RAck"; list = false;
    RecordRoute => "Record-Route"; list = true;
    ReferTo => "Refer-To", b'r'; list = false;
    ReferredBy => "Referred-By", b'b'; list = false;
    RejectContact => "Reject-Contact", b'j'; list = true;
    // Not standardised (a draft), but phones and gateways send it as a
    // caller identity: the farm strips it from phones like PAI.
    RemotePartyId => "Remote-Party-ID"; list = true;
    ReplyTo => "Reply-To"; list = false;
    RequestDisposition => "Request-Disposition", b'd'; list = true;
    Require => "Require"; list = true;
    RetryAfter => "Retry-After"; list = false;
    Route => "Route"; list = true;
    RSeq => "RSeq"; list = false;
    Server => "Server"; list = false;
    ServiceRoute => "Service-Route"; list = true;
    SipETag => "SIP-ETag"; list = false;
    SipIfMatch => "SIP-If-Match"; list = false;
    SessionExpires => "Session-Expires", b'x'; list = false;
    Subject => "Subject", b's'; list = false;
    SubscriptionState => "Subscription-State"; list = false;
    Supported => "Supported", b'k'; list = true;
    Timestamp => "Timestamp"; list = false;
    To => "To", b't'; list = false;
    Unsupported => "Unsupported"; list = true;
    UserAgent => "User-Agent"; list = false;
    Via => "Via", b'v'; list = true;
    Warning => "Warning"; list = true;
    WwwAuthenticate => "WWW-Authenticate"; list = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_compact_forms() {
        assert_eq!(
            HeaderName::from_bytes(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"I"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"m"), HeaderName::Contact);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"s"), HeaderName::Subject);
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"z"), HeaderName::Other);
        assert_eq!(HeaderName::CallId.as_str(), "Call-ID");
        assert!(HeaderName::Via.is_list());
        assert!(!HeaderName::WwwAuthenticate.is_list());
    }
}
