//! The engine's two ports: where sessions are kept ([`SessionStore`]) and where pods run
//! ([`Pods`]). The real adapters are [`crate::store::Store`] (Spanner) and
//! [`crate::pods::KubePods`] (kube-rs); the engine's unit tests use in-memory fakes.

use std::future::Future;
use std::sync::Arc;

use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Event, Pod};
use proto::names::{SessionId, UserId};
use tokio::time::Instant;

use crate::pods::{EnsureOutcome, PodError, PodSpecFor};
use crate::session::{Fence, GetServerTransition, ReadyDecision, SessionKey, SessionRow};
use crate::store::StoreError;

/// The BuildSessions rows. Every write is one transaction fenced by the row's SessionId;
/// every call gives up at `deadline`.
pub trait SessionStore: Send + Sync + 'static {
    /// GetServer's transaction ([`crate::session::get_server`]).
    fn get_server(
        &self,
        key: &SessionKey,
        session_id: &SessionId,
        deadline: Instant,
    ) -> impl Future<Output = Result<GetServerTransition, StoreError>> + Send;

    /// The fenced READY write ([`crate::session::mark_ready`]).
    fn mark_ready(
        &self,
        key: &SessionKey,
        fence: &Fence,
        pod_ip: &str,
        command_port: Option<u32>,
        deadline: Instant,
    ) -> impl Future<Output = Result<ReadyDecision, StoreError>> + Send;

    /// The row leaves READY if it is still `fence`'s; true when it changed.
    fn leave_ready(
        &self,
        key: &SessionKey,
        fence: &Fence,
        deadline: Instant,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The row becomes IDLE if it is still `fence`'s; true when it changed.
    fn mark_idle(
        &self,
        key: &SessionKey,
        fence: &Fence,
        deadline: Instant,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A strong read of one row (read-only: no locks, never aborted).
    fn read(
        &self,
        key: &SessionKey,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<SessionRow>, StoreError>> + Send;

    /// Every row that wants a pod (PENDING or READY): the reconciler's sweep.
    fn active_rows(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<(SessionKey, SessionRow)>, StoreError>> + Send;

    /// A read of one row at most [`crate::store::RECENT`] old (bounded staleness: served
    /// without waiting for the newest timestamp). Only for GetServer's fast path, which
    /// answers READY from it only when the cache sees that row's pod alive.
    fn read_recent(
        &self,
        key: &SessionKey,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<SessionRow>, StoreError>> + Send;
}

/// What a watch on one pod name reports.
#[derive(Debug, Clone)]
pub enum PodSignal {
    /// The pod under the name, as it is now (created or changed).
    Applied(Box<Pod>),
    /// The pod under the name was deleted.
    Deleted,
    /// A Kubernetes Event about a pod of that name (any UID: events outlive pods).
    Event(Box<Event>),
}

/// A change of one of the platform's pods (any user's), as the pod cache applied it.
#[derive(Debug, Clone)]
pub enum PodChange {
    /// The pod, as it is now (created or changed).
    Applied(Arc<Pod>),
    /// The pod was deleted (its last state).
    Deleted(Arc<Pod>),
    /// The cache was listed anew: it holds every pod, as of now.
    Resynced,
    /// The receiver fell behind and missed changes: whatever it derived from them, it
    /// must read again from the cache.
    Missed,
}

/// The platform's pods, each user's in their own namespace.
pub trait Pods: Send + Sync + 'static {
    /// The platform's namespace (user U's pods live in `user_namespace(this, U)`).
    fn namespace(&self) -> &str;

    /// The pod `name` of `user` as the cache last saw it (no API call).
    fn cached(&self, user: &UserId, name: &str) -> Option<Arc<Pod>>;

    /// The pod `name` of `user` as the API server has it now (not a cache: what a report
    /// is checked against).
    fn get(
        &self,
        user: &UserId,
        name: &str,
    ) -> impl Future<Output = Result<Option<Pod>, PodError>> + Send;

    /// Every pod of `key` (any generation) as the cache last saw it.
    fn cached_of_key(&self, key: &SessionKey) -> Vec<Arc<Pod>>;

    /// Every platform pod the cache holds (every user's).
    fn cached_all(&self) -> Vec<Arc<Pod>>;

    /// The cache's changes from now on, until the stream is dropped. Each receiver gets
    /// every change; one that falls behind gets [`PodChange::Missed`].
    fn changes(&self) -> BoxStream<'static, PodChange>;

    /// Makes the cluster hold exactly `spec`'s pod (idempotent; deletes another session's).
    fn ensure(
        &self,
        spec: &PodSpecFor<'_>,
        deadline: Instant,
    ) -> impl Future<Output = Result<EnsureOutcome, PodError>> + Send;

    /// Deletes every pod of `key` older than `generation` (or without one), each by its
    /// UID, without waiting for it to be gone. Returns their names.
    fn remove_older(
        &self,
        key: &SessionKey,
        generation: u64,
    ) -> impl Future<Output = Result<Vec<String>, PodError>> + Send;

    /// Deletes this very pod (its namespace, name and UID): gone already, or replaced by a
    /// newer pod of the same name meanwhile, is success.
    fn delete(&self, pod: &Pod) -> impl Future<Output = Result<(), PodError>> + Send;

    /// Follows the pod `name` of `user` and its events until the stream is dropped.
    fn watch(&self, user: &UserId, name: &str) -> BoxStream<'static, PodSignal>;
}
