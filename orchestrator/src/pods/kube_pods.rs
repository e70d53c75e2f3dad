//! [`KubePods`]: the engine's [`Pods`] port on kube-rs: a reflector cache of the
//! platform's pods (filled by [`PodCacheFeed`], whose changes it fans out) for reads,
//! [`PodClient`] for writes, and kube-runtime watchers for WatchServer.

use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::runtime::reflector::{self, ObjectRef, Store as PodCache};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use proto::error_chain::ErrorChain;
use proto::names::UserId;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;

use super::manifest::platform_selector;
use super::{view, EnsureOutcome, PodClient, PodError, PodSpecFor};
use crate::engine::{PodChange, PodSignal, Pods};
use crate::session::SessionKey;

/// Changes a receiver of [`Pods::changes`] may fall behind by before it is told it missed
/// some (a first listing of many pods comes at once).
const CHANGES_CAPACITY: usize = 4096;

/// The platform's pods through the Kubernetes API.
#[derive(Clone)]
pub struct KubePods {
    client: PodClient,
    kube: kube::Client,
    cache: PodCache<Pod>,
    changes: broadcast::Sender<PodChange>,
}

/// What fills [`KubePods`]' cache: one cluster-wide watch of the platform's pods (every
/// user namespace, selected by the platform's labels). Each change is applied to the
/// cache, then sent to every [`Pods::changes`] receiver.
pub struct PodCacheFeed {
    api: Api<Pod>,
    selector: String,
    writer: reflector::store::Writer<Pod>,
    changes: broadcast::Sender<PodChange>,
}

impl KubePods {
    /// The port, and the feed of its cache: run [`PodCacheFeed::run`] for as long as the
    /// port is used (until then the cache is empty).
    pub fn new(client: PodClient, kube: kube::Client) -> (Self, PodCacheFeed) {
        let (cache, writer) = reflector::store();
        let changes = broadcast::channel(CHANGES_CAPACITY).0;
        let feed = PodCacheFeed {
            api: client.all(),
            selector: platform_selector(&client.settings().namespace),
            writer,
            changes: changes.clone(),
        };
        let pods = KubePods {
            client,
            kube,
            cache,
            changes,
        };
        (pods, feed)
    }

    /// The reflector store of the platform's pods.
    pub fn cache(&self) -> PodCache<Pod> {
        self.cache.clone()
    }
}

impl PodCacheFeed {
    /// Watches until the future is dropped; watch errors are logged and retried with
    /// kube-runtime's default backoff, so it never ends by itself.
    pub async fn run(self) {
        let config = watcher::Config::default().labels(&self.selector);
        let stream = reflector::reflector(self.writer, watcher(self.api, config).default_backoff());
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let change = match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    PodChange::Applied(Arc::new(pod))
                }
                Ok(watcher::Event::Delete(pod)) => PodChange::Deleted(Arc::new(pod)),
                Ok(watcher::Event::Init) => continue,
                Ok(watcher::Event::InitDone) => PodChange::Resynced,
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "platform pod watch error; resuming with backoff");
                    continue;
                }
            };
            // No receiver is fine: nobody is following the changes.
            let _ = self.changes.send(change);
        }
    }
}

impl Pods for KubePods {
    fn namespace(&self) -> &str {
        &self.client.settings().namespace
    }

    fn cached(&self, user: &UserId, name: &str) -> Option<Arc<Pod>> {
        self.cache
            .get(&ObjectRef::new(name).within(&self.client.namespace_of(user)))
    }

    async fn get(&self, user: &UserId, name: &str) -> Result<Option<Pod>, PodError> {
        self.client.get(user, name).await
    }

    fn cached_of_key(&self, key: &SessionKey) -> Vec<Arc<Pod>> {
        self.cache
            .state()
            .into_iter()
            .filter(|p| view::key_of(p).as_ref() == Some(key))
            .collect()
    }

    fn cached_all(&self) -> Vec<Arc<Pod>> {
        self.cache.state()
    }

    fn changes(&self) -> BoxStream<'static, PodChange> {
        BroadcastStream::new(self.changes.subscribe())
            .map(|item| item.unwrap_or(PodChange::Missed))
            .boxed()
    }

    async fn delete(&self, pod: &Pod) -> Result<(), PodError> {
        self.client
            .delete_in(
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.uid.as_deref(),
            )
            .await
    }

    async fn ensure(
        &self,
        spec: &PodSpecFor<'_>,
        deadline: Instant,
    ) -> Result<EnsureOutcome, PodError> {
        self.client.ensure(spec, deadline).await
    }

    async fn remove_older(
        &self,
        key: &SessionKey,
        generation: u64,
    ) -> Result<Vec<String>, PodError> {
        self.client.remove_older(key, generation).await
    }

    fn watch(&self, user: &UserId, name: &str) -> BoxStream<'static, PodSignal> {
        let ns = self.client.namespace_of(user);
        let pod_name = name.to_string();
        let pods = watcher(
            Api::<Pod>::namespaced(self.kube.clone(), &ns),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .default_backoff()
        .filter_map(move |ev| {
            let signal = match ev {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    Some(PodSignal::Applied(Box::new(pod)))
                }
                Ok(watcher::Event::Delete(_)) => Some(PodSignal::Deleted),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(pod = %pod_name, error = %ErrorChain(&e), "WatchServer pod watch error (retrying)");
                    None
                }
            };
            std::future::ready(signal)
        });
        let pod_name = name.to_string();
        let events = watcher(
            Api::<Event>::namespaced(self.kube.clone(), &ns),
            watcher::Config::default().fields(&format!(
                "involvedObject.kind=Pod,involvedObject.name={name}"
            )),
        )
        .default_backoff()
        .filter_map(move |ev| {
            let signal = match ev {
                Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => {
                    Some(PodSignal::Event(Box::new(e)))
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(pod = %pod_name, error = %ErrorChain(&e), "WatchServer event watch error (retrying)");
                    None
                }
            };
            std::future::ready(signal)
        });
        stream::select(pods, events).boxed()
    }
}
