//! The gRPC service: admits the caller by the role of its client
//! certificate, validates requests ([`crate::validate`]), calls the store,
//! maps errors in one place ([`crate::status`]).
//!
//! Under mutual TLS, reads are open to every role but only a supernode's
//! carry HA1 values (operators and admins see empty hashes); writes need
//! the operator or admin role. Without TLS (`--plaintext`, for labs) every
//! caller may do everything.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt as _};
use ringmesh_proto::provisioning as pb;
use ringmesh_proto::provisioning::provisioning_server::{Provisioning, ProvisioningServer};
use ringmesh_sip::digest::Ha1;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use ringmesh_enrollment_client::revocations::Revocations;
use ringmesh_enrollment_client::tls::{Role, caller};

use crate::metrics::Metrics;
use crate::store::{Change, Events, Store, StoreError};
use crate::validate;

/// The Provisioning gRPC service over a store.
#[derive(Debug)]
pub struct ProvisioningService<S> {
    store: Arc<S>,
    realm: String,
    metrics: Option<Metrics>,
    closing: watch::Receiver<bool>,
    /// Callers present client certificates (the server runs mutual TLS).
    mtls: bool,
    /// Client certificates the farm CA revoked.
    revoked: Revocations,
}

impl<S> Clone for ProvisioningService<S> {
    fn clone(&self) -> Self {
        ProvisioningService {
            store: self.store.clone(),
            realm: self.realm.clone(),
            metrics: self.metrics.clone(),
            closing: self.closing.clone(),
            mtls: self.mtls,
            revoked: self.revoked.clone(),
        }
    }
}

/// What a request does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Whether the caller may see HA1 values.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SeesHa1(bool);

/// `sub` as a caller sees it: without HA1 values unless it may see them.
fn shown(mut sub: pb::Subscriber, sees: SeesHa1) -> pb::Subscriber {
    if !sees.0
        && let Some(c) = sub.credentials.as_mut()
    {
        c.ha1_md5.clear();
        c.ha1_sha256.clear();
    }
    sub
}

impl<S: Store> ProvisioningService<S> {
    /// A service over `store`; HA1 values are computed with `realm` (the
    /// farm's SIP domain).
    pub fn new(store: Arc<S>, realm: &str) -> ProvisioningService<S> {
        let (_, closing) = watch::channel(false);
        ProvisioningService {
            store,
            realm: realm.to_ascii_lowercase(),
            metrics: None,
            closing,
            mtls: false,
            revoked: Revocations::default(),
        }
    }

    /// Admits a request by its caller's role (see the module docs).
    fn admit<T>(&self, req: &Request<T>, access: Access) -> Result<SeesHa1, Status> {
        if !self.mtls {
            return Ok(SeesHa1(true));
        }
        let role = caller(req, &self.revoked)?;
        if access == Access::Write && !role.writes() {
            return Err(Status::permission_denied(format!(
                "the {role} role cannot change subscribers or trusted elements"
            )));
        }
        Ok(SeesHa1(role == Role::Supernode))
    }

    /// Refuses the client certificates in `revoked` (kept up to date by
    /// whoever follows the farm's revocations).
    pub fn with_revocations(mut self, revoked: Revocations) -> Self {
        self.revoked = revoked;
        self
    }

    /// Records RPC counts and latencies.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn credentials(&self, private_id: &str, password: &str) -> pb::Credentials {
        let ha1 = Ha1::compute(
            private_id.as_bytes(),
            self.realm.as_bytes(),
            password.as_bytes(),
        );
        pb::Credentials {
            realm: self.realm.clone(),
            ha1_md5: ha1.md5_hex(),
            ha1_sha256: ha1.sha256_hex(),
        }
    }

    fn done<T>(
        &self,
        rpc: &str,
        started: Instant,
        r: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        if let Some(m) = &self.metrics {
            m.observe(
                rpc,
                started,
                r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
            );
        }
        if let Err(e) = &r
            && matches!(
                e.code(),
                tonic::Code::Unavailable | tonic::Code::DataLoss | tonic::Code::Internal
            )
        {
            tracing::warn!(rpc, code = ?e.code(), message = e.message(), "provisioning request failed");
        }
        r.map(Response::new)
    }

    async fn create(&self, req: pb::CreateSubscriberRequest) -> Result<pb::Subscriber, Status> {
        let mut sub = validate::new_subscriber(req.subscriber.as_ref())?;
        let pw = validate::password(&req.password)?;
        sub.credentials = Some(self.credentials(&sub.private_id, pw));
        Ok(self.store.create(sub).await?)
    }

    async fn get(&self, req: pb::GetSubscriberRequest) -> Result<pb::Subscriber, Status> {
        use pb::get_subscriber_request::Id;
        match req.id {
            Some(Id::PrivateId(id)) => {
                let id = validate::private_id("private_id", &id)?;
                Ok(self.store.get(&id).await?)
            }
            Some(Id::PublicId(id)) => {
                let id = validate::public_id("public_id", &id)?;
                Ok(self.store.get_by_public(&id).await?)
            }
            None => Err(Status::invalid_argument("id: give private_id or public_id")),
        }
    }

    async fn list(
        &self,
        req: pb::ListSubscribersRequest,
    ) -> Result<pb::ListSubscribersResponse, Status> {
        let limit = validate::page_size(req.page_size)?;
        let after = validate::parse_page_token(&req.page_token)?;
        let page = self.store.list(after.as_deref(), limit).await?;
        let next_page_token = match (page.more, page.subscribers.last()) {
            (true, Some(last)) => validate::page_token(&last.private_id),
            _ => String::new(),
        };
        Ok(pb::ListSubscribersResponse {
            subscribers: page.subscribers,
            next_page_token,
        })
    }

    async fn update(&self, req: pb::UpdateSubscriberRequest) -> Result<pb::Subscriber, Status> {
        let s = req
            .subscriber
            .ok_or_else(|| Status::invalid_argument("subscriber: is required"))?;
        let id = validate::private_id("subscriber.private_id", &s.private_id)?;
        let prefix = |e: validate::FieldError| validate::FieldError {
            field: format!("subscriber.{}", e.field),
            ..e
        };
        let public_ids = validate::public_ids(&s.public_ids).map_err(prefix)?;
        let implicit_sets =
            validate::implicit_sets(&s.implicit_sets, &public_ids).map_err(prefix)?;
        let service_profile =
            validate::service_profile(s.service_profile.as_ref()).map_err(prefix)?;
        let region = validate::region("subscriber.region", &s.region)?;
        let change = Change::Profile {
            public_ids,
            implicit_sets,
            service_profile,
            region,
        };
        Ok(self
            .store
            .update(&id, expected(req.expected_revision), change)
            .await?)
    }

    async fn set_password(&self, req: pb::SetPasswordRequest) -> Result<pb::Subscriber, Status> {
        let id = validate::private_id("private_id", &req.private_id)?;
        let pw = validate::password(&req.password)?;
        let change = Change::Credentials(self.credentials(&id, pw));
        Ok(self
            .store
            .update(&id, expected(req.expected_revision), change)
            .await?)
    }

    async fn set_barred(&self, req: pb::SetBarredRequest) -> Result<pb::Subscriber, Status> {
        let id = validate::private_id("private_id", &req.private_id)?;
        let change = Change::Barring(validate::barring(req.barred, &req.reason)?);
        Ok(self
            .store
            .update(&id, expected(req.expected_revision), change)
            .await?)
    }

    async fn delete(
        &self,
        req: pb::DeleteSubscriberRequest,
    ) -> Result<pb::DeleteSubscriberResponse, Status> {
        let id = validate::private_id("private_id", &req.private_id)?;
        let revision = self
            .store
            .delete(&id, expected(req.expected_revision))
            .await?;
        Ok(pb::DeleteSubscriberResponse { revision })
    }

    async fn create_trusted(
        &self,
        req: pb::CreateTrustedElementRequest,
    ) -> Result<pb::TrustedElement, Status> {
        let element = validate::new_trusted_element(req.element.as_ref())?;
        Ok(self.store.create_trusted(element).await?)
    }

    async fn get_trusted(
        &self,
        req: pb::GetTrustedElementRequest,
    ) -> Result<pb::TrustedElement, Status> {
        let name = validate::trusted_name("name", &req.name)?;
        Ok(self.store.get_trusted(&name).await?)
    }

    async fn list_trusted(&self) -> Result<pb::ListTrustedElementsResponse, Status> {
        let (elements, revision) = self.store.list_trusted().await?;
        Ok(pb::ListTrustedElementsResponse { elements, revision })
    }

    async fn delete_trusted(
        &self,
        req: pb::DeleteTrustedElementRequest,
    ) -> Result<pb::DeleteTrustedElementResponse, Status> {
        let name = validate::trusted_name("name", &req.name)?;
        let revision = self
            .store
            .delete_trusted(&name, expected(req.expected_revision))
            .await?;
        Ok(pb::DeleteTrustedElementResponse { revision })
    }

    /// A store event stream as a gRPC stream: counted in the watchers
    /// gauge while open, ended when the server shuts down (so a graceful
    /// shutdown never waits on a watcher).
    /// A Watch stream to a caller presenting `leaf`: it ends with
    /// PERMISSION_DENIED at the first event (keep-alives included) after
    /// the farm CA revokes that certificate.
    fn stream<E: Send + 'static>(
        &self,
        rpc: &str,
        started: Instant,
        leaf: Option<Vec<u8>>,
        events: Result<Events<E>, StoreError>,
    ) -> Result<Response<Outgoing<E>>, Status> {
        let events = match events {
            Ok(s) => s,
            Err(e) => return self.done(rpc, started, Err(e.into())),
        };
        if let Some(m) = &self.metrics {
            m.watchers().inc();
        }
        let guard = WatcherGuard(self.metrics.clone());
        let mut closing = self.closing.clone();
        let stop = async move {
            if closing.wait_for(|c| *c).await.is_err() {
                // No server owns the signal (the service is used directly).
                std::future::pending::<()>().await;
            }
        };
        let revoked = self.revoked.clone();
        let out: Outgoing<E> = Box::pin(
            events
                .map(move |r| {
                    let _keep = &guard;
                    if leaf.as_deref().is_some_and(|c| revoked.is_revoked(c)) {
                        return (true, Err(Status::permission_denied(REVOKED)));
                    }
                    (false, r.map_err(|e: StoreError| Status::from(e)))
                })
                .scan(false, |ended, (revoked, r)| {
                    let out = (!*ended).then_some(r);
                    *ended |= revoked;
                    std::future::ready(out)
                })
                .take_until(stop),
        );
        self.done(rpc, started, Ok(out))
    }
}

/// Why a revoked caller's stream ends.
const REVOKED: &str = "the client certificate was revoked by the farm CA";

/// The certificate the caller of `req` presented, if any.
fn peer_leaf<T>(req: &Request<T>) -> Option<Vec<u8>> {
    req.peer_certs()?.first().map(|c| c.to_vec())
}

fn expected(rev: u64) -> Option<u64> {
    (rev != 0).then_some(rev)
}

/// Decrements the watchers gauge when a Watch stream ends.
struct WatcherGuard(Option<Metrics>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.watchers().dec();
        }
    }
}

/// A server stream of events.
type Outgoing<E> = Pin<Box<dyn Stream<Item = Result<E, Status>> + Send + 'static>>;
type WatchStream = Outgoing<pb::WatchEvent>;
type TrustWatchStream = Outgoing<pb::TrustedElementEvent>;

#[tonic::async_trait]
impl<S: Store> Provisioning for ProvisioningService<S> {
    async fn create_subscriber(
        &self,
        req: Request<pb::CreateSubscriberRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = async {
            let sees = self.admit(&req, Access::Write)?;
            Ok(shown(self.create(req.into_inner()).await?, sees))
        }
        .await;
        self.done("CreateSubscriber", t, r)
    }

    async fn get_subscriber(
        &self,
        req: Request<pb::GetSubscriberRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = async {
            let sees = self.admit(&req, Access::Read)?;
            Ok(shown(self.get(req.into_inner()).await?, sees))
        }
        .await;
        self.done("GetSubscriber", t, r)
    }

    async fn list_subscribers(
        &self,
        req: Request<pb::ListSubscribersRequest>,
    ) -> Result<Response<pb::ListSubscribersResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let sees = self.admit(&req, Access::Read)?;
            let mut l = self.list(req.into_inner()).await?;
            l.subscribers = l.subscribers.into_iter().map(|s| shown(s, sees)).collect();
            Ok(l)
        }
        .await;
        self.done("ListSubscribers", t, r)
    }

    async fn update_subscriber(
        &self,
        req: Request<pb::UpdateSubscriberRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = async {
            let sees = self.admit(&req, Access::Write)?;
            Ok(shown(self.update(req.into_inner()).await?, sees))
        }
        .await;
        self.done("UpdateSubscriber", t, r)
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = async {
            let sees = self.admit(&req, Access::Write)?;
            Ok(shown(
                ProvisioningService::set_password(self, req.into_inner()).await?,
                sees,
            ))
        }
        .await;
        self.done("SetPassword", t, r)
    }

    async fn set_barred(
        &self,
        req: Request<pb::SetBarredRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = async {
            let sees = self.admit(&req, Access::Write)?;
            Ok(shown(
                ProvisioningService::set_barred(self, req.into_inner()).await?,
                sees,
            ))
        }
        .await;
        self.done("SetBarred", t, r)
    }

    async fn delete_subscriber(
        &self,
        req: Request<pb::DeleteSubscriberRequest>,
    ) -> Result<Response<pb::DeleteSubscriberResponse>, Status> {
        let t = Instant::now();
        let r = async {
            self.admit(&req, Access::Write)?;
            self.delete(req.into_inner()).await
        }
        .await;
        self.done("DeleteSubscriber", t, r)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let t = Instant::now();
        let sees = match self.admit(&req, Access::Read) {
            Ok(sees) => sees,
            Err(e) => return self.done("Watch", t, Err(e)),
        };
        let leaf = peer_leaf(&req);
        let req = req.into_inner();
        let events = self
            .store
            .watch(req.start_revision, req.store_id)
            .await
            .map(|events| -> Events<pb::WatchEvent> {
                Box::pin(events.map(move |r| {
                    r.map(|mut e| {
                        e.subscriber = e.subscriber.map(|s| shown(s, sees));
                        e
                    })
                }))
            });
        self.stream("Watch", t, leaf, events)
    }

    async fn create_trusted_element(
        &self,
        req: Request<pb::CreateTrustedElementRequest>,
    ) -> Result<Response<pb::TrustedElement>, Status> {
        let t = Instant::now();
        let r = async {
            self.admit(&req, Access::Write)?;
            self.create_trusted(req.into_inner()).await
        }
        .await;
        self.done("CreateTrustedElement", t, r)
    }

    async fn get_trusted_element(
        &self,
        req: Request<pb::GetTrustedElementRequest>,
    ) -> Result<Response<pb::TrustedElement>, Status> {
        let t = Instant::now();
        let r = async {
            self.admit(&req, Access::Read)?;
            self.get_trusted(req.into_inner()).await
        }
        .await;
        self.done("GetTrustedElement", t, r)
    }

    async fn list_trusted_elements(
        &self,
        req: Request<pb::ListTrustedElementsRequest>,
    ) -> Result<Response<pb::ListTrustedElementsResponse>, Status> {
        let t = Instant::now();
        let r = async {
            self.admit(&req, Access::Read)?;
            self.list_trusted().await
        }
        .await;
        self.done("ListTrustedElements", t, r)
    }

    async fn delete_trusted_element(
        &self,
        req: Request<pb::DeleteTrustedElementRequest>,
    ) -> Result<Response<pb::DeleteTrustedElementResponse>, Status> {
        let t = Instant::now();
        let r = async {
            self.admit(&req, Access::Write)?;
            self.delete_trusted(req.into_inner()).await
        }
        .await;
        self.done("DeleteTrustedElement", t, r)
    }

    type WatchTrustedElementsStream = TrustWatchStream;

    async fn watch_trusted_elements(
        &self,
        req: Request<pb::WatchTrustedElementsRequest>,
    ) -> Result<Response<Self::WatchTrustedElementsStream>, Status> {
        let t = Instant::now();
        if let Err(e) = self.admit(&req, Access::Read) {
            return self.done("WatchTrustedElements", t, Err(e));
        }
        let leaf = peer_leaf(&req);
        let start = req.into_inner().start_revision;
        let events = self.store.watch_trusted(start).await;
        self.stream("WatchTrustedElements", t, leaf, events)
    }
}

/// Serves the Provisioning API on `listener` until `shutdown` completes,
/// then ends every Watch stream and drains in-flight requests. With `tls`
/// it speaks mutual TLS and admits callers by their certificate's role.
pub async fn serve<S: Store>(
    listener: TcpListener,
    service: ProvisioningService<S>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = watch::channel(false);
    let service = ProvisioningService {
        closing: rx,
        mtls: tls.is_some(),
        ..service
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Nagle's algorithm would hold small Watch events back for up to 40 ms.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    builder
        .add_service(ProvisioningServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await
}
