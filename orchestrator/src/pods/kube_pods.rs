//! [`KubePods`]: the engine's [`Pods`] port on kube-rs: the reconciler's pod cache for
//! reads, [`PodClient`] for writes, and kube-runtime watchers for WatchServer.

use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::runtime::reflector::{ObjectRef, Store as PodCache};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use proto::error_chain::ErrorChain;
use proto::names::UserId;
use tokio::time::Instant;

use super::{view, EnsureOutcome, PodClient, PodError, PodSpecFor};
use crate::engine::{PodSignal, Pods};
use crate::session::SessionKey;

/// The platform's pods through the Kubernetes API.
#[derive(Clone)]
pub struct KubePods {
    client: PodClient,
    kube: kube::Client,
    cache: PodCache<Pod>,
}

impl KubePods {
    /// `cache` is the reconciler's reflector store of platform pods.
    pub fn new(client: PodClient, kube: kube::Client, cache: PodCache<Pod>) -> Self {
        KubePods {
            client,
            kube,
            cache,
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
