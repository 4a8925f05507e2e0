//! The gRPC service: validates requests ([`crate::validate`]), calls the
//! store, maps errors in one place ([`crate::status`]).

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

use crate::metrics::Metrics;
use crate::store::{Change, StoreError, SubscriberStore};
use crate::validate;

/// The Provisioning gRPC service over a store.
#[derive(Debug)]
pub struct ProvisioningService<S> {
    store: Arc<S>,
    realm: String,
    metrics: Option<Metrics>,
    closing: watch::Receiver<bool>,
}

impl<S> Clone for ProvisioningService<S> {
    fn clone(&self) -> Self {
        ProvisioningService {
            store: self.store.clone(),
            realm: self.realm.clone(),
            metrics: self.metrics.clone(),
            closing: self.closing.clone(),
        }
    }
}

impl<S: SubscriberStore> ProvisioningService<S> {
    /// A service over `store`; HA1 values are computed with `realm` (the
    /// farm's SIP domain).
    pub fn new(store: Arc<S>, realm: &str) -> ProvisioningService<S> {
        let (_, closing) = watch::channel(false);
        ProvisioningService {
            store,
            realm: realm.to_ascii_lowercase(),
            metrics: None,
            closing,
        }
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
        let change = Change::Profile {
            public_ids,
            implicit_sets,
            service_profile,
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

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<S: SubscriberStore> Provisioning for ProvisioningService<S> {
    async fn create_subscriber(
        &self,
        req: Request<pb::CreateSubscriberRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = self.create(req.into_inner()).await;
        self.done("CreateSubscriber", t, r)
    }

    async fn get_subscriber(
        &self,
        req: Request<pb::GetSubscriberRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = self.get(req.into_inner()).await;
        self.done("GetSubscriber", t, r)
    }

    async fn list_subscribers(
        &self,
        req: Request<pb::ListSubscribersRequest>,
    ) -> Result<Response<pb::ListSubscribersResponse>, Status> {
        let t = Instant::now();
        let r = self.list(req.into_inner()).await;
        self.done("ListSubscribers", t, r)
    }

    async fn update_subscriber(
        &self,
        req: Request<pb::UpdateSubscriberRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = self.update(req.into_inner()).await;
        self.done("UpdateSubscriber", t, r)
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = ProvisioningService::set_password(self, req.into_inner()).await;
        self.done("SetPassword", t, r)
    }

    async fn set_barred(
        &self,
        req: Request<pb::SetBarredRequest>,
    ) -> Result<Response<pb::Subscriber>, Status> {
        let t = Instant::now();
        let r = ProvisioningService::set_barred(self, req.into_inner()).await;
        self.done("SetBarred", t, r)
    }

    async fn delete_subscriber(
        &self,
        req: Request<pb::DeleteSubscriberRequest>,
    ) -> Result<Response<pb::DeleteSubscriberResponse>, Status> {
        let t = Instant::now();
        let r = self.delete(req.into_inner()).await;
        self.done("DeleteSubscriber", t, r)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let t = Instant::now();
        let start = req.into_inner().start_revision;
        let events = match self.store.watch(start).await {
            Ok(s) => s,
            Err(e) => return self.done("Watch", t, Err(e.into())),
        };
        if let Some(m) = &self.metrics {
            m.watchers().inc();
        }
        let guard = WatcherGuard(self.metrics.clone());
        let mut closing = self.closing.clone();
        // Streams end when the server shuts down, so a graceful shutdown
        // never waits on a watcher.
        let stop = async move {
            if closing.wait_for(|c| *c).await.is_err() {
                // No server owns the signal (the service is used directly).
                std::future::pending::<()>().await;
            }
        };
        let out: WatchStream = Box::pin(
            events
                .map(move |r| {
                    let _keep = &guard;
                    r.map_err(|e: StoreError| Status::from(e))
                })
                .take_until(stop),
        );
        self.done("Watch", t, Ok(out))
    }
}

/// Serves the Provisioning API on `listener` until `shutdown` completes,
/// then ends every Watch stream and drains in-flight requests.
pub async fn serve<S: SubscriberStore>(
    listener: TcpListener,
    service: ProvisioningService<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = watch::channel(false);
    let service = ProvisioningService {
        closing: rx,
        ..service
    };
    // Nagle's algorithm would hold small Watch events back for up to 40 ms.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .add_service(ProvisioningServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await
}
