//! What the proxy reports for metrics: one [`Metric`] event per thing that
//! happened, handed synchronously to an [`Observer`] (the supernode's
//! Prometheus counters, or a recorder in tests). The proxy keeps no
//! registry and knows no metric names.

use std::time::Duration;

use ringmesh_sip::Method;

use crate::binding::Transport;

/// The outcome of a REGISTER (`ringmesh_sip_registrations_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Ok,
    Challenged,
    Rejected,
    Failed,
}

impl Registration {
    pub const ALL: [Registration; 4] = [
        Registration::Ok,
        Registration::Challenged,
        Registration::Rejected,
        Registration::Failed,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Registration::Ok => "ok",
            Registration::Challenged => "challenged",
            Registration::Rejected => "rejected",
            Registration::Failed => "failed",
        }
    }
}

/// Why a leaf's credentials were refused
/// (`ringmesh_auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownUser,
    BadCredentials,
    /// The response was right but the nonce expired (or is no longer
    /// tracked): challenged again with `stale=true`.
    StaleNonce,
    /// A nonce of another member of the farm, or of this node before a
    /// restart: challenged again with `stale=true`. Expected when phones
    /// move between nodes; no sign of an attack.
    ForeignNonce,
    /// A (nonce, nc) this node accepted before: a replayed request,
    /// challenged again with `stale=true`. A phone that does not count its
    /// requests shows here too.
    Replay,
    Barred,
    /// Authenticated, but asserting or registering an identity it does not
    /// own.
    ForbiddenIdentity,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::UnknownUser,
        AuthFailure::BadCredentials,
        AuthFailure::StaleNonce,
        AuthFailure::ForeignNonce,
        AuthFailure::Replay,
        AuthFailure::Barred,
        AuthFailure::ForbiddenIdentity,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadCredentials => "bad_credentials",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::ForeignNonce => "foreign_nonce",
            AuthFailure::Replay => "replay",
            AuthFailure::Barred => "barred",
            AuthFailure::ForbiddenIdentity => "forbidden_identity",
        }
    }
}

/// Why a request was refused by a rule of the farm
/// (`ringmesh_sip_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A To tag without a flow token of this farm for the dialog (481), or
    /// a flow token on an out-of-dialog request from a phone (403).
    NotInDialog,
    /// A REGISTER contact at an address that is not a phone's.
    ContactAddress,
    /// More contacts than an AOR may have.
    TooManyContacts,
    /// A call to a barred subscriber.
    BarredCallee,
    /// An emergency request with no emergency route configured.
    NoEmergencyRoute,
    /// A response for a transaction this node does not hold whose branch
    /// does not vouch for where it would go (dropped).
    ForgedResponse,
    /// A REGISTER from a phone carrying Path (only front ends add it).
    PathFromPhone,
    /// A Service-Route of this farm that is forged or names another
    /// subscriber's registration.
    ServiceRoute,
    /// A new subscription to an AOR that has as many as it may.
    TooManySubscriptions,
    /// An application server's return Route that is forged, too old, or
    /// sent by a phone.
    ServiceReturn,
    /// A call to a number beyond the farm (ENUM, the PSTN) from what is
    /// not a subscriber (a peer farm, a gateway): no transit.
    GatewayTransit,
    /// A peer farm's request for a domain this farm does not serve: no
    /// transit.
    PeerTransit,
    /// A peer farm's request beyond its rate limit (503).
    PeerRate,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::NotInDialog,
        Refusal::ContactAddress,
        Refusal::TooManyContacts,
        Refusal::BarredCallee,
        Refusal::NoEmergencyRoute,
        Refusal::ForgedResponse,
        Refusal::PathFromPhone,
        Refusal::ServiceRoute,
        Refusal::TooManySubscriptions,
        Refusal::ServiceReturn,
        Refusal::GatewayTransit,
        Refusal::PeerTransit,
        Refusal::PeerRate,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Refusal::NotInDialog => "not_in_dialog",
            Refusal::ContactAddress => "contact_address",
            Refusal::TooManyContacts => "too_many_contacts",
            Refusal::BarredCallee => "barred_callee",
            Refusal::NoEmergencyRoute => "no_emergency_route",
            Refusal::ForgedResponse => "forged_response",
            Refusal::PathFromPhone => "path_from_phone",
            Refusal::ServiceRoute => "service_route",
            Refusal::TooManySubscriptions => "too_many_subscriptions",
            Refusal::ServiceReturn => "service_return",
            Refusal::GatewayTransit => "gateway_transit",
            Refusal::PeerTransit => "peer_transit",
            Refusal::PeerRate => "peer_rate",
        }
    }
}

/// What brute-force protection did (`ringmesh_guard_events_total{event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardEvent {
    /// A (source, identity) pair was banned (applied here).
    PairBanned,
    /// A whole source was banned (applied here).
    SourceBanned,
    /// A banned request was answered 403.
    Refused,
    /// A banned request was dropped unanswered.
    Dropped,
    /// An operator lifted the bans of a source.
    Lifted,
}

impl GuardEvent {
    pub const ALL: [GuardEvent; 5] = [
        GuardEvent::PairBanned,
        GuardEvent::SourceBanned,
        GuardEvent::Refused,
        GuardEvent::Dropped,
        GuardEvent::Lifted,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            GuardEvent::PairBanned => "pair_banned",
            GuardEvent::SourceBanned => "source_banned",
            GuardEvent::Refused => "refused",
            GuardEvent::Dropped => "dropped",
            GuardEvent::Lifted => "lifted",
        }
    }
}

/// One thing that happened, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric<'a> {
    /// A response this node sent, on the transport of the request.
    ResponseSent {
        status: u16,
        transport: Transport,
    },
    /// A request forwarded (once, whatever the number of branches).
    Forwarded {
        method: &'a Method,
    },
    Registration(Registration),
    AuthFailure(AuthFailure),
    Refused(Refusal),
    Guard(GuardEvent),
    /// An emergency request arrived (routed, or refused for want of a
    /// route).
    Emergency,
    /// A new request answered 503 with Retry-After because the supernode
    /// of every reachable binding of its callee said it is overloaded.
    PeerOverloaded,
    /// From REGISTER to its final response.
    RegisterLatency(Duration),
    /// The final response to an out-of-dialog INVITE from a leaf of this
    /// node: what its caller saw.
    CallSetup {
        status: u16,
    },
    /// From a proxied INVITE to its first final response.
    CallSetupLatency(Duration),
    /// A proxied INVITE started, or its transaction ended.
    CallStarted,
    CallEnded,
    /// An outbound flow (RFC 5626) failed; its bindings are removed.
    FlowFailed(FlowFailure),
    /// Something happened to a farm-wide subscription.
    Subscription(SubscriptionEvent),
    /// An initial filter criterion sent a request to an application
    /// server, or the server failed it.
    AppServer(AppServerEvent),
    /// Something happened to a message kept for an offline subscriber.
    Mail(MailEvent),
    /// Something happened at PSTN gateway `name`.
    Gateway {
        name: &'a str,
        event: GatewayEvent,
    },
    /// What an ENUM lookup for a call came to.
    Enum(EnumResult),
    /// Something happened to a request sent to the servers RFC 3263
    /// found, for peer farm `peer`'s domain or (None) for the URI ENUM
    /// named (`ringmesh_sip_located_calls_total{peer,event}`, "other").
    Located {
        peer: Option<&'a str>,
        event: LocatedEvent,
    },
}

/// What happened to a call at a located server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocatedEvent {
    /// Sent to a server.
    Sent,
    /// A server answered it (2xx).
    Answered,
    /// A server refused it for good (a final answer other than 408 and
    /// 503): the caller gets that answer.
    Refused,
    /// A server failed it (408, 503, no answer in time, transport error):
    /// it moved on to the next.
    FailedOver,
    /// No server (left) took it, or none can be reached from here: to the
    /// gateways (a peer's domain: 503 to the caller).
    Exhausted,
}

impl LocatedEvent {
    pub const ALL: [LocatedEvent; 5] = [
        LocatedEvent::Sent,
        LocatedEvent::Answered,
        LocatedEvent::Refused,
        LocatedEvent::FailedOver,
        LocatedEvent::Exhausted,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            LocatedEvent::Sent => "sent",
            LocatedEvent::Answered => "answered",
            LocatedEvent::Refused => "refused",
            LocatedEvent::FailedOver => "failed_over",
            LocatedEvent::Exhausted => "exhausted",
        }
    }
}

/// What an ENUM lookup for a call came to
/// (`ringmesh_sip_enum_lookups_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnumResult {
    /// A URI of this farm: routed here.
    Local,
    /// A URI naming an address: sent there.
    Direct,
    /// A URI of another domain: to its servers (RFC 3263).
    Foreign,
    /// No SIP record: to the gateways.
    None,
    /// DNS did not answer: to the gateways.
    Failed,
}

impl EnumResult {
    pub const ALL: [EnumResult; 5] = [
        EnumResult::Local,
        EnumResult::Direct,
        EnumResult::Foreign,
        EnumResult::None,
        EnumResult::Failed,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            EnumResult::Local => "local",
            EnumResult::Direct => "direct",
            EnumResult::Foreign => "foreign",
            EnumResult::None => "none",
            EnumResult::Failed => "failed",
        }
    }
}

/// What happened at a PSTN gateway
/// (`ringmesh_sip_gateway_events_total{gateway,event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayEvent {
    /// A call was sent to it.
    Sent,
    /// It answered a call (2xx).
    Answered,
    /// It refused a call for good (4xx other than 408, 6xx): the caller
    /// gets that answer.
    Refused,
    /// It failed a call (408, 5xx, no answer in time, transport error):
    /// the call moved to the next gateway.
    FailedOver,
    /// It stopped answering its probes, or answered again.
    Down,
    Up,
}

impl GatewayEvent {
    pub const ALL: [GatewayEvent; 6] = [
        GatewayEvent::Sent,
        GatewayEvent::Answered,
        GatewayEvent::Refused,
        GatewayEvent::FailedOver,
        GatewayEvent::Down,
        GatewayEvent::Up,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            GatewayEvent::Sent => "sent",
            GatewayEvent::Answered => "answered",
            GatewayEvent::Refused => "refused",
            GatewayEvent::FailedOver => "failed_over",
            GatewayEvent::Down => "down",
            GatewayEvent::Up => "up",
        }
    }
}

/// What happened to messages for subscribers with no reachable device
/// (`ringmesh_sip_offline_messages_total{event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailEvent {
    /// A message was kept (answered 202).
    Stored,
    /// Its mailbox was full (answered 480).
    Full,
    /// It was for no subscriber, or a barred one: answered 202 like a
    /// kept one (so that the answer tells no one who is a subscriber) and
    /// dropped.
    Discarded,
    /// A device took a kept message (2xx): it is removed.
    Delivered,
    /// A device did not take one now: the rest wait for its next REGISTER.
    Deferred,
    /// A device refused one for good: it is dropped.
    RefusedByDevice,
}

impl MailEvent {
    pub const ALL: [MailEvent; 6] = [
        MailEvent::Stored,
        MailEvent::Full,
        MailEvent::Discarded,
        MailEvent::Delivered,
        MailEvent::Deferred,
        MailEvent::RefusedByDevice,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            MailEvent::Stored => "stored",
            MailEvent::Full => "full",
            MailEvent::Discarded => "discarded",
            MailEvent::Delivered => "delivered",
            MailEvent::Deferred => "deferred",
            MailEvent::RefusedByDevice => "refused_by_device",
        }
    }
}

/// What happened on the way through an application server
/// (`ringmesh_sip_app_server_events_total{event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppServerEvent {
    /// A request went to an application server.
    Triggered,
    /// It came back to the farm to continue.
    Returned,
    /// The server did not answer (or answered 408/5xx before any
    /// provisional response): the request went on without it
    /// (SESSION_CONTINUED), or was failed (SESSION_TERMINATED).
    FailedContinued,
    FailedTerminated,
}

impl AppServerEvent {
    pub const ALL: [AppServerEvent; 4] = [
        AppServerEvent::Triggered,
        AppServerEvent::Returned,
        AppServerEvent::FailedContinued,
        AppServerEvent::FailedTerminated,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            AppServerEvent::Triggered => "triggered",
            AppServerEvent::Returned => "returned",
            AppServerEvent::FailedContinued => "failed_continued",
            AppServerEvent::FailedTerminated => "failed_terminated",
        }
    }
}

/// What happened to a subscription
/// (`ringmesh_sip_subscription_events_total{event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionEvent {
    /// A SUBSCRIBE was accepted (stored), or refreshed.
    Accepted,
    Refreshed,
    /// A NOTIFY was sent (after its state was stored).
    Notified,
    /// A subscription ended: it ran out or was un-SUBSCRIBEd (its last
    /// NOTIFY sent), or its watcher answered 481 or not at all.
    Ended,
    WatcherGone,
}

impl SubscriptionEvent {
    pub const ALL: [SubscriptionEvent; 5] = [
        SubscriptionEvent::Accepted,
        SubscriptionEvent::Refreshed,
        SubscriptionEvent::Notified,
        SubscriptionEvent::Ended,
        SubscriptionEvent::WatcherGone,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            SubscriptionEvent::Accepted => "accepted",
            SubscriptionEvent::Refreshed => "refreshed",
            SubscriptionEvent::Notified => "notified",
            SubscriptionEvent::Ended => "ended",
            SubscriptionEvent::WatcherGone => "watcher_gone",
        }
    }
}

/// Why an outbound flow failed
/// (`ringmesh_sip_outbound_flows_failed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFailure {
    /// Its connection closed.
    Closed,
    /// Silent past its Flow-Timer.
    Silent,
}

impl FlowFailure {
    pub const ALL: [FlowFailure; 2] = [FlowFailure::Closed, FlowFailure::Silent];

    pub fn as_label(self) -> &'static str {
        match self {
            FlowFailure::Closed => "closed",
            FlowFailure::Silent => "silent",
        }
    }
}

/// Receives the proxy's metric events.
pub trait Observer: Send + 'static {
    fn observe(&self, m: Metric<'_>);
}

/// An observer that drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ignore;

impl Observer for Ignore {
    fn observe(&self, _m: Metric<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each reason's label is a distinct snake_case word: the Prometheus
    /// series and the dashboards name them.
    #[test]
    fn labels_are_distinct_snake_case_words() {
        let sets: [Vec<&str>; 6] = [
            Registration::ALL.map(Registration::as_label).to_vec(),
            AuthFailure::ALL.map(AuthFailure::as_label).to_vec(),
            Refusal::ALL.map(Refusal::as_label).to_vec(),
            GuardEvent::ALL.map(GuardEvent::as_label).to_vec(),
            GatewayEvent::ALL.map(GatewayEvent::as_label).to_vec(),
            EnumResult::ALL.map(EnumResult::as_label).to_vec(),
        ];
        for labels in sets {
            let mut unique = labels.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), labels.len(), "{labels:?}");
            for l in labels {
                assert!(
                    !l.is_empty() && l.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'),
                    "{l}"
                );
            }
        }
        assert_eq!(Registration::Ok.as_label(), "ok");
        assert_eq!(AuthFailure::BadCredentials.as_label(), "bad_credentials");
    }
}
