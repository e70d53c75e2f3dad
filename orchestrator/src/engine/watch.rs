//! One WatchServer stream: follows the session's pod and its events (through
//! [`Pods::watch`]), the pod cache's changes of the key's other pods (through
//! [`Pods::changes`]: a bounce's previous pod) and the READY notices, and turns them into
//! progress stages, READY, a failure reason, or "superseded". Consecutive duplicate
//! stages are not repeated. Nothing is polled: every step follows a change.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use proto::error_chain::ErrorChain;
use proto::names::SessionId;
use proto::orchestrator::{ServerEvent, Stage};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::{Engine, EngineError, PodChange, PodSignal, Pods, SessionStore};
use crate::notify::ReadyNotice;
use crate::pods::pod_name;
use crate::pods::view::{self, Progress};
use crate::session::{PodHealth, SessionKey, SessionRow, Status};

/// Longest a READY write from a Ready pod may take inside a watch.
const READY_WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) struct Watch<S, P> {
    engine: Arc<Engine<S, P>>,
    key: SessionKey,
    session_id: SessionId,
    /// The row generation whose pod this watch follows.
    generation: u64,
    pod_name: String,
    tx: mpsc::Sender<Result<ServerEvent, EngineError>>,
    last: Option<(Stage, String)>,
    /// UID of the pod currently under the name (events of older pods do not count).
    current_uid: Option<String>,
    /// The "previous server is stopping" message last sent, while older pods are there.
    previous: Option<String>,
}

enum Next {
    Continue,
    Done,
    /// The row wants another pod of this session (a lost pod was replaced): follow it.
    Follow(u64),
}

impl<S: SessionStore, P: Pods> Watch<S, P> {
    pub(super) fn new(
        engine: Arc<Engine<S, P>>,
        key: SessionKey,
        row: SessionRow,
        tx: mpsc::Sender<Result<ServerEvent, EngineError>>,
    ) -> Self {
        let pod_name = pod_name(&key.user_id, &key.repo_hash, row.generation);
        Watch {
            engine,
            key,
            session_id: row.session_id,
            generation: row.generation,
            pod_name,
            tx,
            last: None,
            current_uid: None,
            previous: None,
        }
    }

    pub(super) async fn run(
        mut self,
        row: SessionRow,
        mut notices: broadcast::Receiver<ReadyNotice>,
        deadline: Instant,
    ) {
        if row.status == Status::Ready {
            self.ready(&row).await;
            return;
        }
        let message = format!(
            "session {} is PENDING; pod {} is being created",
            row.session_id, self.pod_name
        );
        if let Next::Done = self.send(Stage::Session, message).await {
            return;
        }
        // Subscribed before the first look at the cache: a change in between is not missed.
        let mut changes = self.engine.pods.changes();
        let mut changes_open = true;
        let mut signals = self.engine.pods.watch(&self.key.user_id, &self.pod_name);
        if let Next::Done = self.check_previous().await {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let pod = self.pod_name.clone();
                    let _ = self.tx.send(Err(EngineError::NotReady { pod })).await;
                    Next::Done
                }
                _ = self.tx.closed() => Next::Done,
                notice = notices.recv() => match notice {
                    Ok(n) if n.key != self.key || n.session_id != self.session_id => Next::Continue,
                    // Ours, or we lagged behind: look at the row.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.check_row().await,
                    Err(broadcast::error::RecvError::Closed) => Next::Done,
                },
                change = changes.next(), if changes_open => match change {
                    Some(PodChange::Applied(pod) | PodChange::Deleted(pod)) => {
                        if view::key_of(&pod).as_ref() == Some(&self.key) {
                            self.check_previous().await
                        } else {
                            Next::Continue
                        }
                    }
                    Some(PodChange::Resynced | PodChange::Missed) => self.check_previous().await,
                    None => {
                        changes_open = false;
                        Next::Continue
                    }
                },
                signal = signals.next() => match signal {
                    Some(PodSignal::Applied(pod)) => {
                        self.current_uid = pod.metadata.uid.clone();
                        match self.on_pod(&pod).await {
                            // The new pod's stage may change what to say of the previous one.
                            Next::Continue => self.check_previous().await,
                            other => other,
                        }
                    }
                    Some(PodSignal::Deleted) => {
                        self.current_uid = None;
                        // Deleted because the row moved on (a bounce), or lost: the row says.
                        match self.check_row().await {
                            Next::Continue => {
                                let message = format!("{} was deleted; waiting for a new pod", self.pod_name);
                                self.send(Stage::PodPending, message).await
                            }
                            other => other,
                        }
                    }
                    Some(PodSignal::Event(event)) => self.on_event(&event).await,
                    None => Next::Done,
                },
            };
            match next {
                Next::Continue => {}
                Next::Done => return,
                Next::Follow(generation) => {
                    self.generation = generation;
                    self.pod_name = pod_name(&self.key.user_id, &self.key.repo_hash, generation);
                    self.current_uid = None;
                    signals = self.engine.pods.watch(&self.key.user_id, &self.pod_name);
                }
            }
        }
    }

    /// A bounce: the new pod starts at once, and its server waits until the previous
    /// generation's server released the output base. Say so while an older pod of the
    /// key is still there, and go back to the pod's own stage when it is gone.
    async fn check_previous(&mut self) -> Next {
        let older: Vec<_> = self
            .engine
            .pods
            .cached_of_key(&self.key)
            .into_iter()
            .filter(|p| view::generation_of(p).is_none_or(|g| g < self.generation))
            .collect();
        if let Some(old) = older.first() {
            let session = view::session_of(old)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".to_string());
            let message = format!(
                "stopping your previous server (session {session}, pod {})",
                old.metadata.name.as_deref().unwrap_or("?")
            );
            // Said once when seen; the new pod's own stages go on in between. Once the new
            // pod runs, its supervisor waits for the old server's output-base lock: that
            // is what the user waits for, so it is the stage until the old pod is gone.
            if self.previous.as_ref() != Some(&message) {
                self.previous = Some(message.clone());
                return self.send(Stage::PreviousStopping, message).await;
            }
            let running = self.last.as_ref().map(|(s, _)| *s) == Some(Stage::ContainerRunning);
            if running {
                let message = format!(
                    "your previous server (session {session}) still holds the output base; \
                     waiting for it to stop"
                );
                return self.send(Stage::PreviousStopping, message).await;
            }
            return Next::Continue;
        }
        if self.previous.take().is_some() {
            self.last = None;
            if let Some(pod) = self.engine.pods.cached(&self.key.user_id, &self.pod_name) {
                return self.on_pod(&pod).await;
            }
        }
        Next::Continue
    }

    /// Sends a progress stage unless it repeats the previous one exactly.
    async fn send(&mut self, stage: Stage, message: String) -> Next {
        if self.last.as_ref() == Some(&(stage, message.clone())) {
            return Next::Continue;
        }
        self.last = Some((stage, message.clone()));
        let row = SessionRow::pending(&self.session_id, self.generation);
        let event = ServerEvent {
            stage: stage as i32,
            message,
            reason: String::new(),
            server: Some(self.engine.server(&self.key, &row)),
        };
        match self.tx.send(Ok(event)).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Done,
        }
    }

    /// A failure that will not heal by itself: a FAILED stage with its reason, then the
    /// error that ends the stream.
    async fn fail(&mut self, reason: String, message: String) -> Next {
        tracing::info!(user = %self.key.user_id, repo_hash = %self.key.repo_hash, session = %self.session_id,
            pod = %self.pod_name, %reason, %message, "spawn failed");
        let row = SessionRow::pending(&self.session_id, self.generation);
        let event = ServerEvent {
            stage: Stage::Failed as i32,
            message: message.clone(),
            reason: reason.clone(),
            server: Some(self.engine.server(&self.key, &row)),
        };
        if self.tx.send(Ok(event)).await.is_ok() {
            let _ = self
                .tx
                .send(Err(EngineError::SpawnFailed { reason, message }))
                .await;
        }
        Next::Done
    }

    async fn ready(&mut self, row: &SessionRow) {
        let event = ServerEvent {
            stage: Stage::Ready as i32,
            message: format!(
                "Bazel server ready at {}",
                row.pod_ip.as_deref().unwrap_or("?")
            ),
            reason: String::new(),
            server: Some(self.engine.server(&self.key, row)),
        };
        let _ = self.tx.send(Ok(event)).await;
    }

    /// Reads the row: superseded and READY end the stream; a new generation of this
    /// session is followed.
    async fn check_row(&mut self) -> Next {
        let deadline = Instant::now() + READY_WRITE_DEADLINE;
        match self.engine.store.read(&self.key, deadline).await {
            Ok(Some(row)) if row.session_id != self.session_id => {
                let session_id = self.session_id.clone();
                let _ = self
                    .tx
                    .send(Err(EngineError::Superseded { session_id }))
                    .await;
                Next::Done
            }
            Ok(Some(row)) if row.generation != self.generation => Next::Follow(row.generation),
            Ok(Some(row)) if row.status == Status::Ready => {
                self.ready(&row).await;
                Next::Done
            }
            Ok(_) => Next::Continue,
            Err(e) => {
                tracing::warn!(pod = %self.pod_name, error = %ErrorChain(&e),
                    "WatchServer could not read the row (will retry on the next event)");
                Next::Continue
            }
        }
    }

    async fn on_pod(&mut self, pod: &Pod) -> Next {
        let v = view::view(pod);
        if v.session_id.as_ref() != Some(&self.session_id) || v.generation != Some(self.generation)
        {
            // Not ours (names are per generation, so only a foreign object): the row decides.
            return self.check_row().await;
        }
        match view::progress(pod) {
            Progress::Failed { reason, message } => self.fail(reason, message).await,
            Progress::Stage { stage, message } => {
                if view::view(pod).health == PodHealth::Ready {
                    // The probe says the server answers: READY from the pod if the row is
                    // still PENDING (fenced), else whatever the row says now.
                    let row = SessionRow::pending(&self.session_id, self.generation);
                    let deadline = Instant::now() + READY_WRITE_DEADLINE;
                    match self
                        .engine
                        .ready_from_pod(&self.key, &row, pod, deadline)
                        .await
                    {
                        Ok(Some(ready)) => {
                            self.ready(&ready).await;
                            return Next::Done;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(pod = %self.pod_name, error = %ErrorChain(&e),
                            "WatchServer could not mark the row READY from the pod"),
                    }
                    match self.check_row().await {
                        Next::Continue => {}
                        other => return other,
                    }
                }
                self.send(stage, message).await
            }
        }
    }

    async fn on_event(&mut self, event: &Event) -> Next {
        // Events outlive pods: only those of the current pod count.
        if self.current_uid.is_none() || event.involved_object.uid != self.current_uid {
            return Next::Continue;
        }
        if let Some(Progress::Failed { reason, message }) = view::event_failure(event) {
            return self.fail(reason, message).await;
        }
        if view::expected_while_starting(event) {
            return Next::Continue;
        }
        let stage = self.last.as_ref().map_or(Stage::PodPending, |(s, _)| *s);
        let text = format!(
            "{}: {}",
            event.reason.as_deref().unwrap_or("Event"),
            event.message.as_deref().unwrap_or("")
        );
        self.send(stage, text).await
    }
}
