//! In-memory fakes of the engine's ports, for its unit tests: a session table that runs
//! the same pure transitions as the Spanner store, and a "cluster" of pods whose status
//! the test sets (the kubelet's part) and whose changes reach every watch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodCondition, PodStatus,
};
use proto::names::{SessionId, UserId};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;

use super::{PodChange, PodSignal, Pods, SessionStore};
use crate::pods::view;
use crate::pods::{EnsureOutcome, PodError, PodSettings, PodSpecFor};
use crate::session::{
    self, Fence, GetServerTransition, PodStep, ReadyDecision, RowWrite, SessionKey, SessionRow,
    Status,
};
use crate::store::StoreError;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// BuildSessions in a map. `set_unavailable(true)` makes every call fail as a store that
/// cannot reach Spanner would (DEADLINE_EXCEEDED after retries).
#[derive(Default)]
pub struct FakeStore {
    rows: Mutex<HashMap<SessionKey, SessionRow>>,
    unavailable: AtomicBool,
    transactions: AtomicU32,
}

impl FakeStore {
    /// Read-write transactions so far (reads do not count).
    pub fn transactions(&self) -> u32 {
        self.transactions.load(Ordering::SeqCst)
    }

    pub fn row(&self, key: &SessionKey) -> Option<SessionRow> {
        lock(&self.rows).get(key).cloned()
    }

    pub fn set_unavailable(&self, yes: bool) {
        self.unavailable.store(yes, Ordering::SeqCst);
    }

    fn check(&self, op: &'static str, key: &SessionKey) -> Result<(), StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::DeadlineExceeded {
                op,
                key: key.to_string(),
                attempts: 1,
            });
        }
        Ok(())
    }

    fn transact<T>(
        &self,
        op: &'static str,
        key: &SessionKey,
        decide: impl FnOnce(Option<&SessionRow>) -> (RowWrite, T),
    ) -> Result<T, StoreError> {
        self.check(op, key)?;
        self.transactions.fetch_add(1, Ordering::SeqCst);
        let mut rows = lock(&self.rows);
        let (write, out) = decide(rows.get(key));
        match write {
            RowWrite::Keep => {}
            RowWrite::Insert(r) | RowWrite::Update(r) => {
                rows.insert(key.clone(), r);
            }
        }
        Ok(out)
    }
}

impl SessionStore for Arc<FakeStore> {
    async fn get_server(
        &self,
        key: &SessionKey,
        session_id: &SessionId,
        _deadline: Instant,
    ) -> Result<GetServerTransition, StoreError> {
        self.transact("GetServer", key, |row| {
            let t = session::get_server(row, session_id);
            (t.write.clone(), t)
        })
    }

    async fn mark_ready(
        &self,
        key: &SessionKey,
        fence: &Fence,
        pod_ip: &str,
        command_port: Option<u32>,
        _deadline: Instant,
    ) -> Result<ReadyDecision, StoreError> {
        self.transact("MarkReady", key, |row| {
            let d = session::mark_ready(row, fence, pod_ip, command_port);
            (d.write(), d)
        })
    }

    async fn leave_ready(
        &self,
        key: &SessionKey,
        fence: &Fence,
        _deadline: Instant,
    ) -> Result<bool, StoreError> {
        self.transact("LeaveReady", key, |row| {
            let write = session::leave_ready(row, fence);
            let changed = write != RowWrite::Keep;
            (write, changed)
        })
    }

    async fn mark_idle(
        &self,
        key: &SessionKey,
        fence: &Fence,
        _deadline: Instant,
    ) -> Result<bool, StoreError> {
        self.transact("MarkIdle", key, |row| {
            let write = session::mark_idle(row, fence);
            let changed = write != RowWrite::Keep;
            (write, changed)
        })
    }

    async fn read_recent(
        &self,
        key: &SessionKey,
        deadline: Instant,
    ) -> Result<Option<SessionRow>, StoreError> {
        self.read(key, deadline).await
    }

    async fn active_rows(
        &self,
        _deadline: Instant,
    ) -> Result<Vec<(SessionKey, SessionRow)>, StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Timeout {
                op: "ListActive",
                key: "*".into(),
            });
        }
        Ok(lock(&self.rows)
            .iter()
            .filter(|(_, r)| r.status != Status::Idle)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect())
    }

    async fn read(
        &self,
        key: &SessionKey,
        _deadline: Instant,
    ) -> Result<Option<SessionRow>, StoreError> {
        self.check("Read", key)?;
        Ok(self.row(key))
    }
}

/// A cluster of pods in a map; deletions are immediate (no grace period). The map is the
/// cache too: every change reaches the name's watches and [`Pods::changes`] at once.
pub struct FakePods {
    settings: PodSettings,
    pods: Mutex<HashMap<String, Pod>>,
    changes: broadcast::Sender<(String, PodSignal)>,
    all_changes: broadcast::Sender<PodChange>,
    /// Pods deleted through [`Pods::delete`] (by the reconciler), by name.
    pub deleted: Mutex<Vec<String>>,
    next_uid: AtomicU32,
    /// Pods created so far (across replacements).
    pub created: AtomicU32,
    /// Deletions leave the pod terminating (as a grace period would) until `remove`.
    slow: AtomicBool,
}

impl Default for FakePods {
    fn default() -> Self {
        FakePods {
            settings: PodSettings::default(),
            pods: Mutex::default(),
            changes: broadcast::channel(256).0,
            all_changes: broadcast::channel(256).0,
            deleted: Mutex::default(),
            next_uid: AtomicU32::new(1),
            created: AtomicU32::new(0),
            slow: AtomicBool::new(false),
        }
    }
}

impl FakePods {
    pub fn pod(&self, name: &str) -> Option<Pod> {
        lock(&self.pods).get(name).cloned()
    }

    fn publish(&self, name: &str, signal: PodSignal) {
        let _ = self.changes.send((name.to_string(), signal));
    }

    fn publish_change(&self, change: PodChange) {
        let _ = self.all_changes.send(change);
    }

    /// Puts a pod in the cluster as is (one the platform did not make as the row says:
    /// without labels, of an old generation, ...).
    pub fn insert(&self, pod: Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        lock(&self.pods).insert(name.clone(), pod.clone());
        self.publish_change(PodChange::Applied(Arc::new(pod.clone())));
        self.publish(&name, PodSignal::Applied(Box::new(pod)));
    }

    /// Tells [`Pods::changes`] receivers that the cache was listed anew.
    pub fn resynced(&self) {
        self.publish_change(PodChange::Resynced);
    }

    /// Changes the pod's status as the kubelet would, and tells the watches.
    pub fn set_status(&self, name: &str, status: PodStatus) {
        let pod = {
            let mut pods = lock(&self.pods);
            let Some(pod) = pods.get_mut(name) else {
                return;
            };
            pod.status = Some(status);
            pod.clone()
        };
        self.publish_change(PodChange::Applied(Arc::new(pod.clone())));
        self.publish(name, PodSignal::Applied(Box::new(pod)));
    }

    /// Running and passing its readiness probe at `ip`.
    pub fn set_ready(&self, name: &str, ip: &str) {
        self.set_status(
            name,
            PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        );
    }

    /// Running, not yet passing its readiness probe (the Bazel server is starting).
    pub fn set_running(&self, name: &str, ip: &str) {
        self.set_status(
            name,
            PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "bazel-server".into(),
                    state: Some(ContainerState {
                        running: Some(Default::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        );
    }

    /// Ended by the supervisor because Bazel idled out.
    pub fn set_idled_out(&self, name: &str) {
        self.set_status(
            name,
            PodStatus {
                phase: Some("Succeeded".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "bazel-server".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 0,
                            message: Some(proto::pod::idle_message(10800)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        );
    }

    /// The container waits for a reason (e.g. ErrImageNeverPull).
    pub fn set_waiting(&self, name: &str, reason: &str) {
        self.set_status(
            name,
            PodStatus {
                phase: Some("Pending".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "bazel-server".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some(format!("the container is {reason}")),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        );
    }

    /// From now on, deleting an older generation leaves it terminating until `remove`.
    pub fn slow_deletes(&self, yes: bool) {
        self.slow.store(yes, Ordering::SeqCst);
    }

    /// The pod starts terminating (a deletion with a grace period).
    pub fn terminate(&self, name: &str) {
        let pod = {
            let mut pods = lock(&self.pods);
            let Some(p) = pods.get_mut(name) else {
                return;
            };
            p.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
            );
            p.clone()
        };
        self.publish_change(PodChange::Applied(Arc::new(pod.clone())));
        self.publish(name, PodSignal::Applied(Box::new(pod)));
    }

    /// The pod disappears (deleted by someone else, or its node died).
    pub fn remove(&self, name: &str) {
        let removed = lock(&self.pods).remove(name);
        if let Some(pod) = removed {
            self.publish_change(PodChange::Deleted(Arc::new(pod)));
            self.publish(name, PodSignal::Deleted);
        }
    }

    fn create(&self, spec: &PodSpecFor<'_>) -> Pod {
        let mut pod = spec.manifest(&self.settings);
        let uid = self.next_uid.fetch_add(1, Ordering::SeqCst);
        pod.metadata.uid = Some(format!("uid-{uid}"));
        lock(&self.pods).insert(spec.name(), pod.clone());
        self.created.fetch_add(1, Ordering::SeqCst);
        self.publish_change(PodChange::Applied(Arc::new(pod.clone())));
        self.publish(&spec.name(), PodSignal::Applied(Box::new(pod.clone())));
        pod
    }
}

impl Pods for Arc<FakePods> {
    fn namespace(&self) -> &str {
        &self.settings.namespace
    }

    fn cached(&self, _user: &UserId, name: &str) -> Option<Arc<Pod>> {
        self.pod(name).map(Arc::new)
    }

    async fn ensure(
        &self,
        spec: &PodSpecFor<'_>,
        _deadline: Instant,
    ) -> Result<EnsureOutcome, PodError> {
        let name = spec.name();
        let current = self.pod(&name);
        let current_view = current.as_ref().map(view::view);
        match session::pod_step(&spec.fence(), current_view.as_ref()) {
            PodStep::Keep => match current {
                Some(pod) => Ok(EnsureOutcome::Existing(Box::new(pod))),
                None => Ok(EnsureOutcome::Created(Box::new(self.create(spec)))),
            },
            PodStep::Create => Ok(EnsureOutcome::Created(Box::new(self.create(spec)))),
            PodStep::Replace { .. } | PodStep::WaitGone { .. } => {
                self.remove(&name);
                Ok(EnsureOutcome::Created(Box::new(self.create(spec))))
            }
        }
    }

    async fn get(&self, _user: &UserId, name: &str) -> Result<Option<Pod>, PodError> {
        Ok(self.pod(name))
    }

    fn cached_of_key(&self, key: &SessionKey) -> Vec<Arc<Pod>> {
        lock(&self.pods)
            .values()
            .filter(|p| view::key_of(p).as_ref() == Some(key))
            .cloned()
            .map(Arc::new)
            .collect()
    }

    async fn remove_older(
        &self,
        key: &SessionKey,
        generation: u64,
    ) -> Result<Vec<String>, PodError> {
        let older: Vec<String> = lock(&self.pods)
            .iter()
            .filter(|(_, p)| {
                view::key_of(p).as_ref() == Some(key)
                    && view::generation_of(p).is_none_or(|g| g < generation)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in &older {
            if self.slow.load(Ordering::SeqCst) {
                self.terminate(name);
            } else {
                self.remove(name);
            }
        }
        Ok(older)
    }

    fn cached_all(&self) -> Vec<Arc<Pod>> {
        lock(&self.pods).values().cloned().map(Arc::new).collect()
    }

    fn changes(&self) -> BoxStream<'static, PodChange> {
        BroadcastStream::new(self.all_changes.subscribe())
            .map(|item| item.unwrap_or(PodChange::Missed))
            .boxed()
    }

    async fn delete(&self, pod: &Pod) -> Result<(), PodError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let current_uid = self.pod(&name).and_then(|p| p.metadata.uid);
        if current_uid.is_some() && current_uid == pod.metadata.uid {
            lock(&self.deleted).push(name.clone());
            if self.slow.load(Ordering::SeqCst) {
                self.terminate(&name);
            } else {
                self.remove(&name);
            }
        }
        Ok(())
    }

    fn watch(&self, _user: &UserId, name: &str) -> BoxStream<'static, PodSignal> {
        // Subscribe first, then read: a change in between is seen (maybe twice; harmless).
        let changes = BroadcastStream::new(self.changes.subscribe());
        let initial = self
            .pod(name)
            .map(|p| PodSignal::Applied(Box::new(p)))
            .into_iter();
        let name = name.to_string();
        let later = changes.filter_map(move |item| {
            std::future::ready(match item {
                Ok((n, signal)) if n == name => Some(signal),
                _ => None,
            })
        });
        stream::iter(initial).chain(later).boxed()
    }
}

/// The repository of the engine's and the reconciler's tests.
pub const HASH: &str = "0123456789abcdef0123456789abcdef";

/// The session key of `user` for [`HASH`].
pub fn key(user: &str) -> crate::session::SessionKey {
    crate::session::SessionKey::new(
        UserId::parse(user).expect("valid"),
        proto::names::RepoHash::parse(HASH).expect("valid"),
    )
}

/// A parsed session id.
pub fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("valid")
}

/// A deadline a test's call never reaches.
pub fn soon() -> Instant {
    Instant::now() + std::time::Duration::from_secs(5)
}
