//! `SessionTransition`: every decision the orchestrator takes about a BuildSessions row and
//! its pods, as plain functions of what it read.
//!
//! Architecture invariant: no I/O here. The store feeds these functions the row it read
//! inside a read-write transaction and writes what they return; the reconciler feeds them a
//! [`PodView`] built from what the cluster said. Everything is table-tested below.
//!
//! Fencing: the row's `Generation` grows by one every time the row wants a new pod (a
//! desktop bounce, a resume after idling, a lost pod). Each pod carries the generation it
//! was made for, in its name and labels. Generations only grow, so a pod older than the row
//! is garbage for every reader, however stale its read: no replica can mistake the current
//! pod for a stale one, and no process-local lock is needed for that.

use std::fmt;

use proto::names::{RepoHash, SessionId, UserId};

/// `Status` column values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The pod is being created or its Bazel server is starting.
    Pending,
    /// The Bazel server answered Ping; `pod_ip` is valid.
    Ready,
    /// The server idled out and its pod was removed; the output base is kept on the
    /// filestore, and the next GetServer respawns on it.
    Idle,
}

impl Status {
    /// The value stored in Spanner.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Ready => "READY",
            Status::Idle => "IDLE",
        }
    }

    /// Parses a stored value; anything unknown is `None` (treated as not ready).
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "PENDING" => Some(Status::Pending),
            "READY" => Some(Status::Ready),
            "IDLE" => Some(Status::Idle),
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
    /// The fencing token (see the module doc); the current pod is the one of this
    /// generation.
    pub generation: u64,
    pub pod_ip: Option<String>,
    /// Bazel's command port in the pod, as the supervisor reported it (READY only).
    pub command_port: Option<u32>,
    pub status: Status,
}

impl SessionRow {
    /// A row whose pod of `generation` does not serve yet.
    pub fn pending(session_id: &SessionId, generation: u64) -> Self {
        SessionRow {
            session_id: session_id.clone(),
            generation,
            pod_ip: None,
            command_port: None,
            status: Status::Pending,
        }
    }

    /// The fence of the row's current pod.
    pub fn fence(&self) -> Fence {
        Fence {
            session_id: self.session_id.clone(),
            generation: self.generation,
        }
    }
}

/// Who may change a row: the session and the generation of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    pub session_id: SessionId,
    pub generation: u64,
}

impl Fence {
    fn holds(&self, row: &SessionRow) -> bool {
        row.session_id == self.session_id && row.generation == self.generation
    }
}

/// What the transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowWrite {
    /// Nothing: the row stays as it is (or stays absent).
    Keep,
    /// No row existed: insert this one.
    Insert(SessionRow),
    /// Overwrite the value columns with these.
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
    /// Same session, row IDLE: a new pod on the kept output base.
    Resumed,
    /// Another session owned the row (a desktop bounce): it was taken over.
    Bounced { previous_session: SessionId },
}

/// The result of [`get_server`]: write, resulting row and outcome. The cluster step is
/// always the same: the pod of the row's generation must exist, older ones must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetServerTransition {
    pub write: RowWrite,
    /// The row as it is after the write.
    pub row: SessionRow,
    pub outcome: GetServerOutcome,
}

/// GetServer's transition: no row -> insert PENDING;
/// same session -> as is (IDLE -> PENDING, next generation); other session -> overwrite
/// the session, clear PodIP, PENDING, next generation (the old pod must go).
pub fn get_server(row: Option<&SessionRow>, session_id: &SessionId) -> GetServerTransition {
    let respawn = |row: &SessionRow, outcome| {
        let new = SessionRow::pending(session_id, row.generation + 1);
        GetServerTransition {
            write: RowWrite::Update(new.clone()),
            row: new,
            outcome,
        }
    };
    match row {
        None => {
            let new = SessionRow::pending(session_id, 1);
            GetServerTransition {
                write: RowWrite::Insert(new.clone()),
                row: new,
                outcome: GetServerOutcome::Created,
            }
        }
        Some(row) if row.session_id == *session_id => match row.status {
            Status::Ready | Status::Pending => GetServerTransition {
                write: RowWrite::Keep,
                row: row.clone(),
                outcome: if row.status == Status::Ready {
                    GetServerOutcome::Reused
                } else {
                    GetServerOutcome::InProgress
                },
            },
            Status::Idle => respawn(row, GetServerOutcome::Resumed),
        },
        Some(row) => respawn(
            row,
            GetServerOutcome::Bounced {
                previous_session: row.session_id.clone(),
            },
        ),
    }
}

/// GetServer's read-only fast path: the row answers by itself when it is READY for the
/// caller's session (nothing to write). `None`: take the read-write path.
pub fn ready_for<'a>(
    row: Option<&'a SessionRow>,
    session_id: &SessionId,
) -> Option<&'a SessionRow> {
    row.filter(|r| r.session_id == *session_id && r.status == Status::Ready)
}

/// Why a readiness report (push or reconciler) was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyRejection {
    /// There is no row for the key (never created, or deleted).
    NoRow,
    /// The row belongs to another session: a late report from an old pod.
    OtherSession,
    /// The row wants another pod of this session (a newer generation).
    OtherGeneration { current: u64 },
    /// The row is IDLE: its server was culled.
    Idle,
}

impl fmt::Display for ReadyRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyRejection::NoRow => f.write_str("no session row"),
            ReadyRejection::OtherSession => f.write_str("the row belongs to another session"),
            ReadyRejection::OtherGeneration { current } => {
                write!(f, "the row wants the pod of generation {current}")
            }
            ReadyRejection::Idle => f.write_str("the row is IDLE"),
        }
    }
}

/// The fenced READY write: applied only when the row's session and generation are the
/// reporter's.
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

/// ReportReady (and the reconciler's "push was lost" repair): READY with the pod IP and
/// the command port (`None`: keep the one the row has), only for the row's current pod.
pub fn mark_ready(
    row: Option<&SessionRow>,
    fence: &Fence,
    pod_ip: &str,
    command_port: Option<u32>,
) -> ReadyDecision {
    let Some(row) = row else {
        return ReadyDecision::Reject(ReadyRejection::NoRow);
    };
    if row.session_id != fence.session_id {
        return ReadyDecision::Reject(ReadyRejection::OtherSession);
    }
    if row.generation != fence.generation {
        return ReadyDecision::Reject(ReadyRejection::OtherGeneration {
            current: row.generation,
        });
    }
    if row.status == Status::Idle {
        return ReadyDecision::Reject(ReadyRejection::Idle);
    }
    let new = SessionRow {
        session_id: row.session_id.clone(),
        generation: row.generation,
        pod_ip: Some(pod_ip.to_string()),
        command_port: command_port.or(row.command_port),
        status: Status::Ready,
    };
    let write = if *row == new {
        RowWrite::Keep
    } else {
        RowWrite::Update(new.clone())
    };
    ReadyDecision::Accept { write, row: new }
}

/// The row's pod failed or is gone: PENDING (PodIP cleared) until a pod of the same
/// generation, under the same name, reports again. `Keep` unless the row is READY under
/// `fence`.
pub fn leave_ready(row: Option<&SessionRow>, fence: &Fence) -> RowWrite {
    match row {
        Some(row) if fence.holds(row) && row.status == Status::Ready => {
            RowWrite::Update(SessionRow::pending(&row.session_id, row.generation))
        }
        _ => RowWrite::Keep,
    }
}

/// The row's pod idled out: IDLE (PodIP and port cleared, generation kept). `Keep` unless
/// the row is PENDING or READY under `fence`.
pub fn mark_idle(row: Option<&SessionRow>, fence: &Fence) -> RowWrite {
    match row {
        Some(row) if fence.holds(row) && row.status != Status::Idle => {
            RowWrite::Update(SessionRow {
                status: Status::Idle,
                pod_ip: None,
                command_port: None,
                ..row.clone()
            })
        }
        _ => RowWrite::Keep,
    }
}

/// What the cluster says about one pod, reduced to what the decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// The `jbazel.dev/session` label; `None` when missing or not a valid SessionId.
    pub session_id: Option<SessionId>,
    /// The `jbazel.dev/generation` label; `None` when missing or not a number.
    pub generation: Option<u64>,
    pub health: PodHealth,
    pub pod_ip: Option<String>,
    /// The pod's UID, to delete exactly this pod and not a newer one of the same name.
    pub uid: Option<String>,
}

impl PodView {
    /// The pod's fence, when it carries both labels.
    pub fn fence(&self) -> Option<Fence> {
        Some(Fence {
            session_id: self.session_id.clone()?,
            generation: self.generation?,
        })
    }
}

/// A pod's lifecycle as far as the platform cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodHealth {
    /// Created, scheduled or running but not (yet) passing its readiness probe.
    Starting,
    /// The Ready condition is true.
    Ready,
    /// It will not become ready by itself: it ended (phase Failed, or Succeeded other than
    /// by idling out), or a container gives one of the reasons of
    /// [`crate::pods::view::FAILURE_REASONS`] (read by [`crate::pods::view::failure`]).
    /// A pod waiting for a node is Starting.
    /// The reason is the Kubernetes one.
    Failed { reason: String },
    /// The supervisor ended the pod because Bazel idled out (phase Succeeded, termination
    /// message [`proto::pod::idle_message`]).
    Idle,
    /// `deletionTimestamp` is set: it is going away.
    Terminating,
}

/// What the reconciler does for one (row, pod) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileDecision {
    /// The cluster and the row agree (or only GetServer may act).
    Nothing,
    /// The pod is Ready for the row's fence but the row is not READY: the push was lost.
    MarkReady { fence: Fence, pod_ip: String },
    /// The row says READY but its pod failed or is going away.
    LeaveReady { fence: Fence },
    /// The row's pod idled out: the row says so, the pod goes.
    MarkIdle { fence: Fence },
    /// The pod is not the row's current pod: delete it.
    DeletePod { reason: DeleteReason },
}

/// Why the reconciler deletes a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteReason {
    /// The pod carries no valid session or generation label.
    NoFence,
    /// There is no row for the pod's (user, repo), or the pod names no valid one.
    NoRow,
    /// The row has moved on to a newer generation (a bounce, a resume, a lost pod).
    Stale { row_generation: u64 },
    /// The row is IDLE: the server was culled.
    Culled,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteReason::NoFence => f.write_str("the pod has no session/generation label"),
            DeleteReason::NoRow => f.write_str("no session row for the pod"),
            DeleteReason::Stale { row_generation } => {
                write!(f, "the row is at generation {row_generation}")
            }
            DeleteReason::Culled => f.write_str("the server idled out"),
        }
    }
}

/// The reconciler's decision for one existing pod and the row of its (user, repo) (`None`:
/// no row, or the pod names no valid (user, repo) to look one up by).
pub fn reconcile(row: Option<&SessionRow>, pod: &PodView) -> ReconcileDecision {
    // A pod that is already going away is not deleted again.
    let delete = |reason| {
        if pod.health == PodHealth::Terminating {
            ReconcileDecision::Nothing
        } else {
            ReconcileDecision::DeletePod { reason }
        }
    };
    let Some(pod_fence) = pod.fence() else {
        return delete(DeleteReason::NoFence);
    };
    let Some(row) = row else {
        return delete(DeleteReason::NoRow);
    };
    if pod_fence.generation > row.generation {
        // Our read of the row is older than the pod: whoever made the pod read a newer
        // row. Act on the next event.
        return ReconcileDecision::Nothing;
    }
    if !pod_fence.holds(row) {
        return delete(DeleteReason::Stale {
            row_generation: row.generation,
        });
    }
    match (&pod.health, row.status) {
        (_, Status::Idle) => delete(DeleteReason::Culled),
        (PodHealth::Idle, _) => ReconcileDecision::MarkIdle { fence: pod_fence },
        (PodHealth::Ready, Status::Pending) => match pod.pod_ip.as_deref() {
            Some(ip) if !ip.is_empty() => ReconcileDecision::MarkReady {
                fence: pod_fence,
                pod_ip: ip.to_string(),
            },
            _ => ReconcileDecision::Nothing,
        },
        (PodHealth::Failed { .. } | PodHealth::Terminating, Status::Ready) => {
            ReconcileDecision::LeaveReady { fence: pod_fence }
        }
        _ => ReconcileDecision::Nothing,
    }
}

/// What the reconciler does for a row whose current pod (the one of its generation) the
/// cache does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingPodDecision {
    Nothing,
    /// A PENDING row without its pod (the spawn crashed between commit and create, or the
    /// pod was deleted before it served): create it.
    CreatePod,
    /// A READY row without its pod: PENDING first (then CreatePod).
    LeaveReady {
        fence: Fence,
    },
}

/// The decision for a row whose current pod the cache does not hold: found missing by a
/// sweep (`deleted` is `None`), or after the deletion of `deleted`, which matters only
/// when it was the row's current pod (older generations are meant to go).
pub fn missing_pod(row: &SessionRow, deleted: Option<&PodView>) -> MissingPodDecision {
    if deleted.is_some_and(|pod| pod.fence().as_ref() != Some(&row.fence())) {
        return MissingPodDecision::Nothing;
    }
    match row.status {
        Status::Idle => MissingPodDecision::Nothing,
        Status::Pending => MissingPodDecision::CreatePod,
        Status::Ready => MissingPodDecision::LeaveReady { fence: row.fence() },
    }
}

/// GetServer's cluster step: what to do with the pod under the current pod's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodStep {
    /// The pod exists and is usable (starting or ready).
    Keep,
    /// No pod: create it.
    Create,
    /// A pod under the name that cannot serve (failed, idled out, or not this fence):
    /// delete it (this UID), wait until it is gone, then create.
    Replace { uid: Option<String> },
    /// A pod is terminating: wait until it is gone, then create.
    WaitGone { uid: Option<String> },
}

/// Decides the cluster step for `fence`'s pod given the pod currently under its name.
pub fn pod_step(fence: &Fence, pod: Option<&PodView>) -> PodStep {
    match pod {
        None => PodStep::Create,
        Some(pod) if pod.health == PodHealth::Terminating => PodStep::WaitGone {
            uid: pod.uid.clone(),
        },
        Some(pod)
            if pod.fence().as_ref() != Some(fence)
                || matches!(pod.health, PodHealth::Failed { .. } | PodHealth::Idle) =>
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

    fn fence(session: &str, generation: u64) -> Fence {
        Fence {
            session_id: sid(session),
            generation,
        }
    }

    fn row(session: &str, generation: u64, status: Status, ip: Option<&str>) -> SessionRow {
        SessionRow {
            session_id: sid(session),
            generation,
            pod_ip: ip.map(str::to_string),
            command_port: ip.map(|_| 9001),
            status,
        }
    }

    fn pod(fence: Option<(&str, u64)>, health: PodHealth, ip: Option<&str>) -> PodView {
        PodView {
            session_id: fence.map(|(s, _)| sid(s)),
            generation: fence.map(|(_, g)| g),
            health,
            pod_ip: ip.map(str::to_string),
            uid: Some("uid-1".into()),
        }
    }

    #[test]
    fn get_server_transitions() {
        let ready = row("s1", 3, Status::Ready, Some("10.244.0.5"));
        let pending = row("s1", 3, Status::Pending, None);
        let idle = row("s1", 3, Status::Idle, None);
        let cases: Vec<(Option<&SessionRow>, &str, RowWrite, GetServerOutcome)> = vec![
            (
                None,
                "s1",
                RowWrite::Insert(SessionRow::pending(&sid("s1"), 1)),
                GetServerOutcome::Created,
            ),
            (Some(&ready), "s1", RowWrite::Keep, GetServerOutcome::Reused),
            (
                Some(&pending),
                "s1",
                RowWrite::Keep,
                GetServerOutcome::InProgress,
            ),
            // Resuming after idling: a new pod (next generation) on the kept output base.
            (
                Some(&idle),
                "s1",
                RowWrite::Update(SessionRow::pending(&sid("s1"), 4)),
                GetServerOutcome::Resumed,
            ),
            (
                Some(&ready),
                "s2",
                RowWrite::Update(SessionRow::pending(&sid("s2"), 4)),
                GetServerOutcome::Bounced {
                    previous_session: sid("s1"),
                },
            ),
            (
                Some(&pending),
                "s2",
                RowWrite::Update(SessionRow::pending(&sid("s2"), 4)),
                GetServerOutcome::Bounced {
                    previous_session: sid("s1"),
                },
            ),
            (
                Some(&idle),
                "s2",
                RowWrite::Update(SessionRow::pending(&sid("s2"), 4)),
                GetServerOutcome::Bounced {
                    previous_session: sid("s1"),
                },
            ),
        ];
        for (before, session, write, outcome) in cases {
            let t = get_server(before, &sid(session));
            assert_eq!(t.write, write, "{before:?} {session}");
            assert_eq!(t.outcome, outcome, "{before:?} {session}");
            let after = match &t.write {
                RowWrite::Keep => before.cloned().expect("keep only on an existing row"),
                RowWrite::Insert(r) | RowWrite::Update(r) => r.clone(),
            };
            assert_eq!(t.row, after);
            assert_eq!(t.row.session_id, sid(session));
            // Generations never go back.
            assert!(t.row.generation >= before.map_or(1, |r| r.generation));
        }
    }

    #[test]
    fn fast_path_only_for_ready_rows_of_the_caller() {
        let ready = row("s1", 1, Status::Ready, Some("10.244.0.5"));
        assert_eq!(ready_for(Some(&ready), &sid("s1")), Some(&ready));
        assert_eq!(ready_for(Some(&ready), &sid("s2")), None);
        assert_eq!(
            ready_for(Some(&row("s1", 1, Status::Pending, None)), &sid("s1")),
            None
        );
        assert_eq!(
            ready_for(Some(&row("s1", 1, Status::Idle, None)), &sid("s1")),
            None
        );
        assert_eq!(ready_for(None, &sid("s1")), None);
    }

    #[test]
    fn ready_is_fenced_by_session_and_generation() {
        let pending = row("s1", 2, Status::Pending, None);
        let ready = row("s1", 2, Status::Ready, Some("10.244.0.5"));
        let idle = row("s1", 2, Status::Idle, None);
        use ReadyRejection as R;
        let cases: Vec<(Option<&SessionRow>, Fence, &str, ReadyDecision)> = vec![
            (
                None,
                fence("s1", 2),
                "10.244.0.5",
                ReadyDecision::Reject(R::NoRow),
            ),
            (
                Some(&pending),
                fence("s0", 2),
                "10.244.0.5",
                ReadyDecision::Reject(R::OtherSession),
            ),
            // A late report of an older pod of the same session.
            (
                Some(&pending),
                fence("s1", 1),
                "10.244.0.7",
                ReadyDecision::Reject(R::OtherGeneration { current: 2 }),
            ),
            (
                Some(&idle),
                fence("s1", 2),
                "10.244.0.7",
                ReadyDecision::Reject(R::Idle),
            ),
            (
                Some(&pending),
                fence("s1", 2),
                "10.244.0.5",
                ReadyDecision::Accept {
                    write: RowWrite::Update(ready.clone()),
                    row: ready.clone(),
                },
            ),
            // A repeated report is accepted and writes nothing.
            (
                Some(&ready),
                fence("s1", 2),
                "10.244.0.5",
                ReadyDecision::Accept {
                    write: RowWrite::Keep,
                    row: ready.clone(),
                },
            ),
        ];
        for (before, f, ip, expected) in cases {
            assert_eq!(
                mark_ready(before, &f, ip, Some(9001)),
                expected,
                "{before:?} {f:?}"
            );
        }
        // Without a port (the reconciler's repair), the row's port stays.
        let ReadyDecision::Accept { row: r, .. } =
            mark_ready(Some(&ready), &fence("s1", 2), "10.244.0.6", None)
        else {
            panic!("accepted")
        };
        assert_eq!(r.command_port, Some(9001));
        assert_eq!(r.pod_ip.as_deref(), Some("10.244.0.6"));
    }

    #[test]
    fn leaving_ready_waits_for_a_new_report() {
        let ready = row("s1", 2, Status::Ready, Some("10.244.0.5"));
        assert_eq!(
            leave_ready(Some(&ready), &fence("s1", 2)),
            RowWrite::Update(SessionRow::pending(&sid("s1"), 2))
        );
        assert_eq!(leave_ready(Some(&ready), &fence("s0", 2)), RowWrite::Keep);
        assert_eq!(leave_ready(Some(&ready), &fence("s1", 1)), RowWrite::Keep);
        assert_eq!(
            leave_ready(Some(&row("s1", 2, Status::Pending, None)), &fence("s1", 2)),
            RowWrite::Keep
        );
        assert_eq!(leave_ready(None, &fence("s1", 2)), RowWrite::Keep);
    }

    #[test]
    fn idling_keeps_the_generation_and_clears_the_address() {
        let ready = row("s1", 2, Status::Ready, Some("10.244.0.5"));
        assert_eq!(
            mark_idle(Some(&ready), &fence("s1", 2)),
            RowWrite::Update(row("s1", 2, Status::Idle, None))
        );
        assert_eq!(mark_idle(Some(&ready), &fence("s1", 1)), RowWrite::Keep);
        assert_eq!(
            mark_idle(Some(&row("s1", 2, Status::Idle, None)), &fence("s1", 2)),
            RowWrite::Keep
        );
        assert_eq!(mark_idle(None, &fence("s1", 2)), RowWrite::Keep);
    }

    #[test]
    fn reconciler_decisions() {
        let ready = row("s1", 2, Status::Ready, Some("10.244.0.5"));
        let pending = row("s1", 2, Status::Pending, None);
        let idle = row("s1", 2, Status::Idle, None);
        let failed = PodHealth::Failed {
            reason: "Error".into(),
        };
        use ReconcileDecision as D;
        let cases: Vec<(Option<&SessionRow>, PodView, D)> = vec![
            // Push lost: pod Ready with the row's fence, row PENDING -> READY.
            (
                Some(&pending),
                pod(Some(("s1", 2)), PodHealth::Ready, Some("10.244.0.5")),
                D::MarkReady {
                    fence: fence("s1", 2),
                    pod_ip: "10.244.0.5".into(),
                },
            ),
            (
                Some(&pending),
                pod(Some(("s1", 2)), PodHealth::Ready, None),
                D::Nothing,
            ),
            (
                Some(&ready),
                pod(Some(("s1", 2)), PodHealth::Ready, Some("10.244.0.5")),
                D::Nothing,
            ),
            (
                Some(&ready),
                pod(Some(("s1", 2)), PodHealth::Starting, Some("10.244.0.5")),
                D::Nothing,
            ),
            (
                Some(&ready),
                pod(Some(("s1", 2)), failed.clone(), Some("10.244.0.5")),
                D::LeaveReady {
                    fence: fence("s1", 2),
                },
            ),
            (
                Some(&ready),
                pod(Some(("s1", 2)), PodHealth::Terminating, Some("10.244.0.5")),
                D::LeaveReady {
                    fence: fence("s1", 2),
                },
            ),
            (
                Some(&pending),
                pod(Some(("s1", 2)), failed.clone(), None),
                D::Nothing,
            ),
            // Idling out.
            (
                Some(&ready),
                pod(Some(("s1", 2)), PodHealth::Idle, None),
                D::MarkIdle {
                    fence: fence("s1", 2),
                },
            ),
            (
                Some(&idle),
                pod(Some(("s1", 2)), PodHealth::Idle, None),
                D::DeletePod {
                    reason: DeleteReason::Culled,
                },
            ),
            // Orphans and stale pods, whatever their health.
            (
                None,
                pod(Some(("s1", 2)), PodHealth::Ready, Some("10.244.0.5")),
                D::DeletePod {
                    reason: DeleteReason::NoRow,
                },
            ),
            (
                Some(&ready),
                pod(Some(("s0", 1)), PodHealth::Ready, Some("10.244.0.5")),
                D::DeletePod {
                    reason: DeleteReason::Stale { row_generation: 2 },
                },
            ),
            (
                Some(&pending),
                pod(Some(("s1", 1)), PodHealth::Ready, Some("10.244.0.5")),
                D::DeletePod {
                    reason: DeleteReason::Stale { row_generation: 2 },
                },
            ),
            (
                Some(&pending),
                pod(None, PodHealth::Starting, None),
                D::DeletePod {
                    reason: DeleteReason::NoFence,
                },
            ),
            // A pod newer than our read of the row: never deleted on a stale read.
            (
                Some(&pending),
                pod(Some(("s9", 3)), PodHealth::Starting, None),
                D::Nothing,
            ),
            // A pod already going away is not deleted again, whatever the reason.
            (
                None,
                pod(Some(("s1", 2)), PodHealth::Terminating, None),
                D::Nothing,
            ),
            (
                Some(&ready),
                pod(Some(("s0", 1)), PodHealth::Terminating, None),
                D::Nothing,
            ),
            (
                Some(&idle),
                pod(Some(("s1", 2)), PodHealth::Terminating, None),
                D::Nothing,
            ),
            (
                Some(&pending),
                pod(None, PodHealth::Terminating, None),
                D::Nothing,
            ),
        ];
        for (row, pod, expected) in cases {
            assert_eq!(reconcile(row, &pod), expected, "{row:?} {pod:?}");
        }
    }

    #[test]
    fn missing_pods() {
        let pending = row("s1", 2, Status::Pending, None);
        let ready = row("s1", 2, Status::Ready, Some("10.244.0.5"));
        assert_eq!(missing_pod(&pending, None), MissingPodDecision::CreatePod);
        assert_eq!(
            missing_pod(&ready, None),
            MissingPodDecision::LeaveReady {
                fence: fence("s1", 2)
            }
        );
        assert_eq!(
            missing_pod(&row("s1", 2, Status::Idle, None), None),
            MissingPodDecision::Nothing
        );
        // A deleted pod counts only when it was the row's current one.
        let current = pod(Some(("s1", 2)), PodHealth::Terminating, None);
        assert_eq!(
            missing_pod(&ready, Some(&current)),
            MissingPodDecision::LeaveReady {
                fence: fence("s1", 2)
            }
        );
        assert_eq!(
            missing_pod(&pending, Some(&current)),
            MissingPodDecision::CreatePod
        );
        for other in [
            pod(Some(("s1", 1)), PodHealth::Ready, None),
            pod(Some(("s0", 2)), PodHealth::Ready, None),
            pod(None, PodHealth::Starting, None),
        ] {
            assert_eq!(
                missing_pod(&ready, Some(&other)),
                MissingPodDecision::Nothing,
                "{other:?}"
            );
        }
    }

    #[test]
    fn pod_steps() {
        let replace = PodStep::Replace {
            uid: Some("uid-1".into()),
        };
        let f = fence("s1", 2);
        let cases: Vec<(Option<PodView>, PodStep)> = vec![
            (None, PodStep::Create),
            (
                Some(pod(Some(("s1", 2)), PodHealth::Starting, None)),
                PodStep::Keep,
            ),
            (
                Some(pod(Some(("s1", 2)), PodHealth::Ready, None)),
                PodStep::Keep,
            ),
            (
                Some(pod(Some(("s0", 2)), PodHealth::Ready, None)),
                replace.clone(),
            ),
            (Some(pod(None, PodHealth::Starting, None)), replace.clone()),
            (
                Some(pod(
                    Some(("s1", 2)),
                    PodHealth::Failed {
                        reason: "Evicted".into(),
                    },
                    None,
                )),
                replace.clone(),
            ),
            (Some(pod(Some(("s1", 2)), PodHealth::Idle, None)), replace),
            (
                Some(pod(Some(("s1", 2)), PodHealth::Terminating, None)),
                PodStep::WaitGone {
                    uid: Some("uid-1".into()),
                },
            ),
        ];
        for (pod, expected) in cases {
            assert_eq!(pod_step(&f, pod.as_ref()), expected, "{pod:?}");
        }
    }

    #[test]
    fn status_round_trips() {
        for s in [Status::Pending, Status::Ready, Status::Idle] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("ready"), None);
        assert_eq!(Status::parse(""), None);
    }
}
