//! `SessionTransition`: every decision the orchestrator takes about a BuildSessions row and
//! its pod, as plain functions of what it read.
//!
//! Architecture invariant: no I/O here. The store feeds these functions the row it read
//! inside a read-write transaction and writes what they return; the reconciler feeds them a
//! [`PodView`] built from what the cluster said. Everything is table-tested below.

use std::fmt;

use proto::names::{RepoHash, SessionId, UserId};

/// `Status` column values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The pod is being created or its Bazel server is starting.
    Pending,
    /// The Bazel server answered Ping; `pod_ip` is valid.
    Ready,
}

impl Status {
    /// The value stored in Spanner.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Ready => "READY",
        }
    }

    /// Parses a stored value; anything unknown is `None` (treated as not ready).
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "PENDING" => Some(Status::Pending),
            "READY" => Some(Status::Ready),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The primary key of a BuildSessions row, made of validated names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub user_id: UserId,
    pub repo_hash: RepoHash,
}

impl SessionKey {
    pub fn new(user_id: UserId, repo_hash: RepoHash) -> Self {
        SessionKey { user_id, repo_hash }
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.user_id, self.repo_hash)
    }
}

/// The non-key columns of a BuildSessions row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub session_id: SessionId,
    pub pod_ip: Option<String>,
    pub status: Status,
}

impl SessionRow {
    /// A fresh row for a session whose pod does not run yet.
    pub fn pending(session_id: &SessionId) -> Self {
        SessionRow {
            session_id: session_id.clone(),
            pod_ip: None,
            status: Status::Pending,
        }
    }
}

/// What the transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowWrite {
    /// Nothing: the row stays as it is (or stays absent).
    Keep,
    /// No row existed: insert this one.
    Insert(SessionRow),
    /// Overwrite SessionId, PodIP and Status with these.
    Update(SessionRow),
}

/// What GetServer found, for logs and for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetServerOutcome {
    /// No row: a new session was inserted PENDING.
    Created,
    /// Same session, row READY: reuse the running server.
    Reused,
    /// Same session, row PENDING: the spawn is under way.
    InProgress,
    /// Another session owned the row (a desktop bounce): it was taken over.
    Bounced { previous_session: SessionId },
}

/// What the cluster must do once the transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterIntent {
    /// Make sure this session's pod exists (create it unless it already runs).
    EnsurePod { session_id: SessionId },
    /// The old session's pod must go, then this session's pod is created.
    ReplacePod {
        stale_session_id: SessionId,
        session_id: SessionId,
    },
}

/// The result of [`get_server`]: write, resulting row, outcome and cluster intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetServerTransition {
    pub write: RowWrite,
    /// The row as it is after the write.
    pub row: SessionRow,
    pub outcome: GetServerOutcome,
    pub cluster: ClusterIntent,
}

/// GetServer's transition (design.md, "GetServer semantics"):
/// no row -> insert PENDING; same session -> as is; other session -> overwrite the session,
/// clear PodIP, PENDING, and the old pod must go.
pub fn get_server(row: Option<&SessionRow>, session_id: &SessionId) -> GetServerTransition {
    match row {
        None => {
            let new = SessionRow::pending(session_id);
            GetServerTransition {
                write: RowWrite::Insert(new.clone()),
                row: new,
                outcome: GetServerOutcome::Created,
                cluster: ClusterIntent::EnsurePod {
                    session_id: session_id.clone(),
                },
            }
        }
        Some(row) if row.session_id == *session_id => GetServerTransition {
            write: RowWrite::Keep,
            row: row.clone(),
            outcome: match row.status {
                Status::Ready => GetServerOutcome::Reused,
                Status::Pending => GetServerOutcome::InProgress,
            },
            cluster: ClusterIntent::EnsurePod {
                session_id: session_id.clone(),
            },
        },
        Some(row) => {
            let new = SessionRow::pending(session_id);
            GetServerTransition {
                write: RowWrite::Update(new.clone()),
                row: new,
                outcome: GetServerOutcome::Bounced {
                    previous_session: row.session_id.clone(),
                },
                cluster: ClusterIntent::ReplacePod {
                    stale_session_id: row.session_id.clone(),
                    session_id: session_id.clone(),
                },
            }
        }
    }
}

/// Why a readiness report (push or reconciler) was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyRejection {
    /// There is no row for the key (never created, or deleted).
    NoRow,
    /// The row belongs to another session: a late report from an old pod.
    OtherSession { current_session: SessionId },
}

impl fmt::Display for ReadyRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyRejection::NoRow => f.write_str("no session row"),
            ReadyRejection::OtherSession { current_session } => {
                write!(f, "the row belongs to session {current_session}")
            }
        }
    }
}

/// The fenced READY write: applied only when the row's SessionId is the reporter's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyDecision {
    /// Accepted; `write` is `Keep` when the row already says exactly this.
    Accept { write: RowWrite, row: SessionRow },
    /// Rejected; nothing is written.
    Reject(ReadyRejection),
}

impl ReadyDecision {
    /// What the transaction writes for this decision (nothing when rejected).
    pub fn write(&self) -> RowWrite {
        match self {
            ReadyDecision::Accept { write, .. } => write.clone(),
            ReadyDecision::Reject(_) => RowWrite::Keep,
        }
    }
}

/// ReportReady (and the reconciler's "push was lost" repair): READY with the pod IP, only
/// if the session still owns the row.
pub fn mark_ready(row: Option<&SessionRow>, session_id: &SessionId, pod_ip: &str) -> ReadyDecision {
    match row {
        None => ReadyDecision::Reject(ReadyRejection::NoRow),
        Some(row) if row.session_id != *session_id => {
            ReadyDecision::Reject(ReadyRejection::OtherSession {
                current_session: row.session_id.clone(),
            })
        }
        Some(row) => {
            let new = SessionRow {
                session_id: session_id.clone(),
                pod_ip: Some(pod_ip.to_string()),
                status: Status::Ready,
            };
            let write = if *row == new {
                RowWrite::Keep
            } else {
                RowWrite::Update(new.clone())
            };
            ReadyDecision::Accept { write, row: new }
        }
    }
}

/// The row leaves READY (pod failed or gone), fenced by session: PENDING, PodIP cleared.
/// Returns `Keep` when the row is absent, another session's, or not READY.
pub fn leave_ready(row: Option<&SessionRow>, session_id: &SessionId) -> RowWrite {
    match row {
        Some(row) if row.session_id == *session_id && row.status == Status::Ready => {
            RowWrite::Update(SessionRow::pending(session_id))
        }
        _ => RowWrite::Keep,
    }
}

/// What the cluster says about one pod, reduced to what the decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// The `jbazel.dev/session` label; `None` when missing or not a valid SessionId.
    pub session_id: Option<SessionId>,
    pub health: PodHealth,
    pub pod_ip: Option<String>,
    /// The pod's UID, to delete exactly this pod and not a newer one of the same name.
    pub uid: Option<String>,
}

/// A pod's lifecycle as far as the platform cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodHealth {
    /// Created, scheduled or running but not (yet) passing its readiness probe.
    Starting,
    /// The Ready condition is true.
    Ready,
    /// It will not become ready by itself (phase Failed/Succeeded). The reason is the
    /// Kubernetes one where there is one.
    Failed { reason: String },
    /// `deletionTimestamp` is set: it is going away.
    Terminating,
}

/// What the reconciler does for one (row, pod) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileDecision {
    /// The cluster and the row agree (or only GetServer may act).
    Nothing,
    /// The pod is Ready for the row's session but the row is not READY: the push was lost.
    MarkReady {
        session_id: SessionId,
        pod_ip: String,
    },
    /// The row says READY but its pod failed or is gone.
    LeaveReady { session_id: SessionId },
    /// The pod belongs to no row or to another session than the row's: delete it.
    DeletePod { reason: DeleteReason },
}

/// Why the reconciler deletes a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteReason {
    /// The pod carries no session label.
    NoSessionLabel,
    /// There is no row for the pod's (user, repo).
    NoRow,
    /// The row belongs to another session.
    OtherSession { row_session: SessionId },
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteReason::NoSessionLabel => f.write_str("the pod has no session label"),
            DeleteReason::NoRow => f.write_str("no session row for the pod"),
            DeleteReason::OtherSession { row_session } => {
                write!(f, "the row belongs to session {row_session}")
            }
        }
    }
}

/// The reconciler's decision for one pod name: `pod` is the pod currently under that name
/// (`None` when it is gone), `row` the row of its (user, repo).
pub fn reconcile(row: Option<&SessionRow>, pod: Option<&PodView>) -> ReconcileDecision {
    let Some(pod) = pod else {
        return match row {
            Some(row) if row.status == Status::Ready => ReconcileDecision::LeaveReady {
                session_id: row.session_id.clone(),
            },
            _ => ReconcileDecision::Nothing,
        };
    };
    let Some(pod_session) = pod.session_id.as_ref() else {
        return ReconcileDecision::DeletePod {
            reason: DeleteReason::NoSessionLabel,
        };
    };
    let Some(row) = row else {
        return ReconcileDecision::DeletePod {
            reason: DeleteReason::NoRow,
        };
    };
    if row.session_id != *pod_session {
        return ReconcileDecision::DeletePod {
            reason: DeleteReason::OtherSession {
                row_session: row.session_id.clone(),
            },
        };
    }
    match (&pod.health, row.status) {
        (PodHealth::Ready, Status::Pending) => match pod.pod_ip.as_deref() {
            Some(ip) if !ip.is_empty() => ReconcileDecision::MarkReady {
                session_id: row.session_id.clone(),
                pod_ip: ip.to_string(),
            },
            _ => ReconcileDecision::Nothing,
        },
        (PodHealth::Failed { .. } | PodHealth::Terminating, Status::Ready) => {
            ReconcileDecision::LeaveReady {
                session_id: row.session_id.clone(),
            }
        }
        _ => ReconcileDecision::Nothing,
    }
}

/// GetServer's cluster step: what to do with the pod under the session's pod name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodStep {
    /// The session's pod exists and is usable (starting or ready).
    Keep,
    /// No pod: create it.
    Create,
    /// A pod that cannot serve this session (another session, no label, failed): delete
    /// it (this UID), wait until it is gone, then create.
    Replace { uid: Option<String> },
    /// A pod is terminating: wait until it is gone, then create.
    WaitGone { uid: Option<String> },
}

/// Decides the cluster step for `session_id` given the pod currently under its name.
pub fn pod_step(session_id: &SessionId, pod: Option<&PodView>) -> PodStep {
    match pod {
        None => PodStep::Create,
        Some(pod) if pod.health == PodHealth::Terminating => PodStep::WaitGone {
            uid: pod.uid.clone(),
        },
        Some(pod)
            if pod.session_id.as_ref() != Some(session_id)
                || matches!(pod.health, PodHealth::Failed { .. }) =>
        {
            PodStep::Replace {
                uid: pod.uid.clone(),
            }
        }
        Some(_) => PodStep::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).expect("valid session id")
    }

    fn row(session: &str, status: Status, ip: Option<&str>) -> SessionRow {
        SessionRow {
            session_id: sid(session),
            pod_ip: ip.map(str::to_string),
            status,
        }
    }

    fn pod(session: Option<&str>, health: PodHealth, ip: Option<&str>) -> PodView {
        PodView {
            session_id: session.map(sid),
            health,
            pod_ip: ip.map(str::to_string),
            uid: Some("uid-1".into()),
        }
    }

    #[test]
    fn get_server_transitions() {
        let ready = row("s1", Status::Ready, Some("10.244.0.5"));
        let pending = row("s1", Status::Pending, None);
        // (row, requested session, expected write, expected outcome, expected intent)
        let cases: Vec<(
            Option<&SessionRow>,
            &str,
            RowWrite,
            GetServerOutcome,
            ClusterIntent,
        )> = vec![
            (
                None,
                "s1",
                RowWrite::Insert(SessionRow::pending(&sid("s1"))),
                GetServerOutcome::Created,
                ClusterIntent::EnsurePod {
                    session_id: sid("s1"),
                },
            ),
            (
                Some(&ready),
                "s1",
                RowWrite::Keep,
                GetServerOutcome::Reused,
                ClusterIntent::EnsurePod {
                    session_id: sid("s1"),
                },
            ),
            (
                Some(&pending),
                "s1",
                RowWrite::Keep,
                GetServerOutcome::InProgress,
                ClusterIntent::EnsurePod {
                    session_id: sid("s1"),
                },
            ),
            (
                Some(&ready),
                "s2",
                RowWrite::Update(SessionRow::pending(&sid("s2"))),
                GetServerOutcome::Bounced {
                    previous_session: sid("s1"),
                },
                ClusterIntent::ReplacePod {
                    stale_session_id: sid("s1"),
                    session_id: sid("s2"),
                },
            ),
            (
                Some(&pending),
                "s2",
                RowWrite::Update(SessionRow::pending(&sid("s2"))),
                GetServerOutcome::Bounced {
                    previous_session: sid("s1"),
                },
                ClusterIntent::ReplacePod {
                    stale_session_id: sid("s1"),
                    session_id: sid("s2"),
                },
            ),
        ];
        for (before, session, write, outcome, intent) in cases {
            let t = get_server(before, &sid(session));
            assert_eq!(t.write, write, "{before:?} {session}");
            assert_eq!(t.outcome, outcome, "{before:?} {session}");
            assert_eq!(t.cluster, intent, "{before:?} {session}");
            // The returned row is what the table holds afterwards.
            let after = match &t.write {
                RowWrite::Keep => before.cloned().expect("keep only on an existing row"),
                RowWrite::Insert(r) | RowWrite::Update(r) => r.clone(),
            };
            assert_eq!(t.row, after);
            assert_eq!(t.row.session_id, sid(session));
        }
    }

    #[test]
    fn bounce_clears_the_pod_ip() {
        let t = get_server(
            Some(&row("old", Status::Ready, Some("10.244.0.9"))),
            &sid("new"),
        );
        assert_eq!(t.row.pod_ip, None);
        assert_eq!(t.row.status, Status::Pending);
    }

    #[test]
    fn ready_is_fenced_by_session() {
        let pending = row("s1", Status::Pending, None);
        let ready = row("s1", Status::Ready, Some("10.244.0.5"));
        let cases: Vec<(Option<&SessionRow>, &str, &str, ReadyDecision)> = vec![
            (
                None,
                "s1",
                "10.244.0.5",
                ReadyDecision::Reject(ReadyRejection::NoRow),
            ),
            (
                Some(&pending),
                "s0",
                "10.244.0.5",
                ReadyDecision::Reject(ReadyRejection::OtherSession {
                    current_session: sid("s1"),
                }),
            ),
            (
                Some(&ready),
                "s0",
                "10.244.0.7",
                ReadyDecision::Reject(ReadyRejection::OtherSession {
                    current_session: sid("s1"),
                }),
            ),
            (
                Some(&pending),
                "s1",
                "10.244.0.5",
                ReadyDecision::Accept {
                    write: RowWrite::Update(ready.clone()),
                    row: ready.clone(),
                },
            ),
            // A repeated report is accepted and writes nothing.
            (
                Some(&ready),
                "s1",
                "10.244.0.5",
                ReadyDecision::Accept {
                    write: RowWrite::Keep,
                    row: ready.clone(),
                },
            ),
            // A restarted pod of the same session reports a new IP.
            (
                Some(&ready),
                "s1",
                "10.244.0.6",
                ReadyDecision::Accept {
                    write: RowWrite::Update(row("s1", Status::Ready, Some("10.244.0.6"))),
                    row: row("s1", Status::Ready, Some("10.244.0.6")),
                },
            ),
        ];
        for (before, session, ip, expected) in cases {
            assert_eq!(
                mark_ready(before, &sid(session), ip),
                expected,
                "{before:?} {session}"
            );
        }
    }

    #[test]
    fn leaving_ready_is_fenced_by_session() {
        let ready = row("s1", Status::Ready, Some("10.244.0.5"));
        let pending = row("s1", Status::Pending, None);
        assert_eq!(
            leave_ready(Some(&ready), &sid("s1")),
            RowWrite::Update(SessionRow::pending(&sid("s1")))
        );
        assert_eq!(leave_ready(Some(&ready), &sid("s0")), RowWrite::Keep);
        assert_eq!(leave_ready(Some(&pending), &sid("s1")), RowWrite::Keep);
        assert_eq!(leave_ready(None, &sid("s1")), RowWrite::Keep);
    }

    #[test]
    fn reconciler_decisions() {
        let ready = row("s1", Status::Ready, Some("10.244.0.5"));
        let pending = row("s1", Status::Pending, None);
        let failed = PodHealth::Failed {
            reason: "Error".into(),
        };
        use ReconcileDecision as D;
        let cases: Vec<(Option<&SessionRow>, Option<PodView>, D)> = vec![
            // Push lost: pod Ready with the row's session, row PENDING -> READY.
            (
                Some(&pending),
                Some(pod(Some("s1"), PodHealth::Ready, Some("10.244.0.5"))),
                D::MarkReady {
                    session_id: sid("s1"),
                    pod_ip: "10.244.0.5".into(),
                },
            ),
            // Ready but no IP reported yet: wait.
            (
                Some(&pending),
                Some(pod(Some("s1"), PodHealth::Ready, None)),
                D::Nothing,
            ),
            // Agreement.
            (
                Some(&ready),
                Some(pod(Some("s1"), PodHealth::Ready, Some("10.244.0.5"))),
                D::Nothing,
            ),
            (
                Some(&pending),
                Some(pod(Some("s1"), PodHealth::Starting, None)),
                D::Nothing,
            ),
            // A READY row whose pod is merely not passing its probe stays READY (the push
            // is the fast path; only failure or absence demotes it).
            (
                Some(&ready),
                Some(pod(Some("s1"), PodHealth::Starting, Some("10.244.0.5"))),
                D::Nothing,
            ),
            // Pod failed or going away -> the row leaves READY.
            (
                Some(&ready),
                Some(pod(Some("s1"), failed.clone(), Some("10.244.0.5"))),
                D::LeaveReady {
                    session_id: sid("s1"),
                },
            ),
            (
                Some(&ready),
                Some(pod(Some("s1"), PodHealth::Terminating, Some("10.244.0.5"))),
                D::LeaveReady {
                    session_id: sid("s1"),
                },
            ),
            (
                Some(&pending),
                Some(pod(Some("s1"), failed.clone(), None)),
                D::Nothing,
            ),
            // Pod gone.
            (
                Some(&ready),
                None,
                D::LeaveReady {
                    session_id: sid("s1"),
                },
            ),
            (Some(&pending), None, D::Nothing),
            (None, None, D::Nothing),
            // Orphans.
            (
                None,
                Some(pod(Some("s1"), PodHealth::Ready, Some("10.244.0.5"))),
                D::DeletePod {
                    reason: DeleteReason::NoRow,
                },
            ),
            (
                Some(&ready),
                Some(pod(Some("s0"), PodHealth::Ready, Some("10.244.0.5"))),
                D::DeletePod {
                    reason: DeleteReason::OtherSession {
                        row_session: sid("s1"),
                    },
                },
            ),
            (
                Some(&pending),
                Some(pod(Some("s0"), PodHealth::Starting, None)),
                D::DeletePod {
                    reason: DeleteReason::OtherSession {
                        row_session: sid("s1"),
                    },
                },
            ),
            (
                Some(&pending),
                Some(pod(None, PodHealth::Starting, None)),
                D::DeletePod {
                    reason: DeleteReason::NoSessionLabel,
                },
            ),
        ];
        for (row, pod, expected) in cases {
            assert_eq!(reconcile(row, pod.as_ref()), expected, "{row:?} {pod:?}");
        }
    }

    #[test]
    fn pod_steps() {
        let failed = PodHealth::Failed {
            reason: "Evicted".into(),
        };
        let replace = PodStep::Replace {
            uid: Some("uid-1".into()),
        };
        let cases: Vec<(Option<PodView>, PodStep)> = vec![
            (None, PodStep::Create),
            (
                Some(pod(Some("s1"), PodHealth::Starting, None)),
                PodStep::Keep,
            ),
            (Some(pod(Some("s1"), PodHealth::Ready, None)), PodStep::Keep),
            (
                Some(pod(Some("s0"), PodHealth::Ready, None)),
                replace.clone(),
            ),
            (Some(pod(None, PodHealth::Starting, None)), replace.clone()),
            (Some(pod(Some("s1"), failed, None)), replace),
            (
                Some(pod(Some("s1"), PodHealth::Terminating, None)),
                PodStep::WaitGone {
                    uid: Some("uid-1".into()),
                },
            ),
            (
                Some(pod(Some("s0"), PodHealth::Terminating, None)),
                PodStep::WaitGone {
                    uid: Some("uid-1".into()),
                },
            ),
        ];
        for (pod, expected) in cases {
            assert_eq!(pod_step(&sid("s1"), pod.as_ref()), expected, "{pod:?}");
        }
    }

    #[test]
    fn status_round_trips() {
        for s in [Status::Pending, Status::Ready] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("ready"), None);
        assert_eq!(Status::parse(""), None);
    }
}
