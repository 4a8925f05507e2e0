//! Every task a supernode spawns, and the one signal that stops them.
//!
//! Nothing is spawned with a bare `tokio::spawn`: [`Tasks::spawn`] tracks
//! the task and ends it when [`Tasks::stop`] is called, so a shutdown (or a
//! test running a supernode in-process) can wait until every task is gone.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The supernode's tasks.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns `fut`, tracked: it runs until it finishes or the tasks stop.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                _ = fut => {}
            }
        })
    }

    /// Cancelled when the tasks are told to stop.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops every task and waits (at most `within`) until they are gone;
    /// false if some did not end in time.
    pub async fn stop(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}
