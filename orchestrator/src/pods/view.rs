//! Pure readings of a pod: identity (labels), health for the reconciler, and WatchServer's
//! progress stage or failure reason. No I/O.
//!
//! "Failed" has one reading, [`failure`], built on the one list [`FAILURE_REASONS`]:
//! [`view`] (so the reconciler and GetServer's pod step), [`progress`] (WatchServer) and
//! [`event_failure`] (WatchServer's events) all use it, so they agree on when a pod will
//! not serve by itself.

use k8s_openapi::api::core::v1::{Event, Pod};
use proto::names::{RepoHash, SessionId, UserId};
use proto::orchestrator::Stage;

use super::manifest::{LABEL_GENERATION, LABEL_REPO_HASH, LABEL_SESSION, LABEL_USER};
use crate::session::{PodHealth, PodView, SessionKey};

/// Reasons that mean "this pod will not serve by itself": a container waiting for one of
/// them (the kubelet's image and start errors). WatchServer reports them at once as
/// STAGE_FAILED, the reconciler takes the row out of READY, and GetServer replaces the pod.
/// The scheduler's `Unschedulable` is not one of them: on a full node, or a cluster whose autoscaler is
/// adding one, the pod waits for a node, and every reader says so ([`progress`] shows the
/// scheduler's words) while the client's deadline runs.
pub const FAILURE_REASONS: &[&str] = &[
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ImageInspectError",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Whether `reason` is one of [`FAILURE_REASONS`].
pub fn is_failure_reason(reason: &str) -> bool {
    FAILURE_REASONS.contains(&reason)
}

/// Why a pod will not serve by itself: a Kubernetes reason and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

/// The (user, repo) a pod claims through its labels, if both are there and valid names.
pub fn key_of(pod: &Pod) -> Option<SessionKey> {
    let labels = pod.metadata.labels.as_ref()?;
    Some(SessionKey::new(
        UserId::parse(labels.get(LABEL_USER)?.as_str()).ok()?,
        RepoHash::parse(labels.get(LABEL_REPO_HASH)?.as_str()).ok()?,
    ))
}

/// The session label, if present and a valid SessionId.
pub fn session_of(pod: &Pod) -> Option<SessionId> {
    SessionId::parse(pod.metadata.labels.as_ref()?.get(LABEL_SESSION)?.as_str()).ok()
}

/// The generation label, if present and a number.
pub fn generation_of(pod: &Pod) -> Option<u64> {
    pod.metadata
        .labels
        .as_ref()?
        .get(LABEL_GENERATION)?
        .parse()
        .ok()
}

/// Why a readiness report does not match the pod the cluster has under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportMismatch {
    /// No pod of that name.
    NoPod,
    /// The pod is another key's, session's or generation's.
    NotThatPod,
    /// The pod is going away.
    Terminating,
    /// The reported IP is not the pod's (as the API server says).
    OtherAddress,
}

impl std::fmt::Display for ReportMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReportMismatch::NoPod => "no pod of that name",
            ReportMismatch::NotThatPod => "the pod of that name is not the reporter's",
            ReportMismatch::Terminating => "the pod is terminating",
            ReportMismatch::OtherAddress => "the reported IP is not the pod's",
        })
    }
}

/// A ReportReady is believed only as far as the cluster agrees: the pod under the
/// reported name exists, carries the key and the fence, is not going away, and has the
/// reported IP. A report from anywhere else (a forged one: it needs no credential to
/// reach the API) can then at most say early what the readiness probe would say anyway.
pub fn report_matches(
    pod: Option<&Pod>,
    key: &SessionKey,
    fence: &crate::session::Fence,
    pod_ip: &str,
    pod_uid: Option<&str>,
) -> Result<(), ReportMismatch> {
    let pod = pod.ok_or(ReportMismatch::NoPod)?;
    if pod_uid.is_some_and(|uid| pod.metadata.uid.as_deref() != Some(uid)) {
        return Err(ReportMismatch::NotThatPod);
    }
    let v = view(pod);
    if key_of(pod).as_ref() != Some(key) || v.fence().as_ref() != Some(fence) {
        return Err(ReportMismatch::NotThatPod);
    }
    if v.health == PodHealth::Terminating {
        return Err(ReportMismatch::Terminating);
    }
    if v.pod_ip.as_deref() != Some(pod_ip) {
        return Err(ReportMismatch::OtherAddress);
    }
    Ok(())
}

/// True when the pod ended because its server idled out: phase Succeeded and the
/// container's termination message is the supervisor's idle one
/// ([`proto::pod::is_idle_message`]).
fn idled_out(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Succeeded")
        && status.container_statuses.iter().flatten().any(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.message.as_deref())
                .is_some_and(proto::pod::is_idle_message)
        })
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The one reading of "this pod failed": the pod ended (phase Failed, or Succeeded other
/// than by idling out), a container waits for one of [`FAILURE_REASONS`], or the scheduler
/// says one of them. `None` for a pod that is going away (it is terminating, not failed)
/// or that idled out.
pub fn failure(pod: &Pod) -> Option<Failure> {
    if pod.metadata.deletion_timestamp.is_some() || idled_out(pod) {
        return None;
    }
    let name = pod.metadata.name.as_deref().unwrap_or("pod");
    let status = pod.status.as_ref()?;
    let phase = phase(pod);
    if matches!(phase, "Failed" | "Succeeded") {
        return Some(Failure {
            reason: status
                .reason
                .clone()
                .unwrap_or_else(|| format!("Pod{phase}")),
            message: status
                .message
                .clone()
                .unwrap_or_else(|| format!("{name} ended (phase {phase})")),
        });
    }
    for c in status.container_statuses.iter().flatten() {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        if let Some(reason) = waiting.reason.as_deref().filter(|r| is_failure_reason(r)) {
            return Some(Failure {
                reason: reason.to_string(),
                message: waiting
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("container {} is {reason}", c.name)),
            });
        }
    }
    status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.type_ == "PodScheduled" && c.status == "False")
        .find_map(|c| {
            let reason = c.reason.as_deref().filter(|r| is_failure_reason(r))?;
            Some(Failure {
                reason: reason.to_string(),
                message: c
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("{name} cannot be scheduled")),
            })
        })
}

/// The reconciler's view of a pod.
pub fn view(pod: &Pod) -> PodView {
    let health = if pod.metadata.deletion_timestamp.is_some() {
        PodHealth::Terminating
    } else if idled_out(pod) {
        PodHealth::Idle
    } else if let Some(f) = failure(pod) {
        PodHealth::Failed { reason: f.reason }
    } else if is_ready(pod) {
        PodHealth::Ready
    } else {
        PodHealth::Starting
    };
    PodView {
        session_id: session_of(pod),
        generation: generation_of(pod),
        health,
        pod_ip: pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty()),
        uid: pod.metadata.uid.clone(),
    }
}

/// Where a spawn is, as WatchServer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Still going: a stage and a human message.
    Stage { stage: Stage, message: String },
    /// It will not get better by waiting: a Kubernetes reason and its message.
    Failed { reason: String, message: String },
}

/// The progress of a spawn as the pod's status says. READY is not decided here: it comes
/// from the row (the supervisor's push, or the reconciler after the readiness probe).
pub fn progress(pod: &Pod) -> Progress {
    let name = pod.metadata.name.as_deref().unwrap_or("pod");
    let status = pod.status.as_ref();
    if pod.metadata.deletion_timestamp.is_some() {
        return Progress::Stage {
            stage: Stage::PodPending,
            message: format!("{name} is terminating"),
        };
    }
    if let Some(Failure { reason, message }) = failure(pod) {
        return Progress::Failed { reason, message };
    }
    let containers = status
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let conditions = status
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if is_ready(pod) {
        return Progress::Stage {
            stage: Stage::ContainerRunning,
            message: format!("{name} is ready; waiting for the Bazel server's report"),
        };
    }
    if containers
        .iter()
        .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    {
        return Progress::Stage {
            stage: Stage::ContainerRunning,
            message: format!("{name} is running: the supervisor is starting the Bazel server"),
        };
    }
    let scheduled = conditions
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True");
    if scheduled {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("a node");
        let waiting = containers
            .iter()
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .next()
            .unwrap_or_else(|| "ContainerCreating".to_string());
        return Progress::Stage {
            stage: Stage::PodScheduled,
            message: format!("{name} scheduled to {node}: {waiting}"),
        };
    }
    let scheduler = conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.as_deref())
        .filter(|m| !m.trim().is_empty());
    Progress::Stage {
        stage: Stage::PodPending,
        message: match scheduler {
            Some(why) => format!("{name} is waiting for a node: {why}"),
            None => format!("{name} is waiting for a node"),
        },
    }
}

/// Warning events that mean failure before the pod status says so, read with the same
/// list as the status ([`is_failure_reason`]): the kubelet's image events carry the
/// container status's reasons. The scheduler's `FailedScheduling` is none of them: a pod
/// waiting for a node is a wait.
pub fn event_failure(event: &Event) -> Option<Progress> {
    if event.type_.as_deref() != Some("Warning") {
        return None;
    }
    let reason = event.reason.as_deref()?;
    is_failure_reason(reason).then(|| Progress::Failed {
        reason: reason.to_string(),
        message: event.message.clone().unwrap_or_default(),
    })
}

/// Events that are part of a normal start and would only alarm a person watching: the
/// readiness probe fails (503) until the Bazel server answers Ping, by design.
pub fn expected_while_starting(event: &Event) -> bool {
    event.reason.as_deref() == Some("Unhealthy")
        && event
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("Readiness probe failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use std::collections::BTreeMap;

    fn cond(type_: &str, status: &str, reason: Option<&str>) -> PodCondition {
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(str::to_string),
            message: reason.map(|r| format!("because {r}")),
            ..Default::default()
        }
    }

    fn container(state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: "bazel-server".into(),
            state: Some(state),
            ..Default::default()
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(format!("msg {reason}")),
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn pod(
        phase: &str,
        conditions: Vec<PodCondition>,
        containers: Vec<ContainerStatus>,
        ip: Option<&str>,
    ) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("bazel-server-alice-01234567".into()),
                uid: Some("u1".into()),
                labels: Some(BTreeMap::from([
                    (LABEL_USER.to_string(), "alice".to_string()),
                    (
                        LABEL_REPO_HASH.to_string(),
                        "0123456789abcdef0123456789abcdef".to_string(),
                    ),
                    (LABEL_SESSION.to_string(), "s1".to_string()),
                    (LABEL_GENERATION.to_string(), "3".to_string()),
                ])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(conditions),
                container_statuses: Some(containers),
                pod_ip: ip.map(str::to_string),
                ..Default::default()
            }),
        }
    }

    fn stage(p: Progress) -> Stage {
        match p {
            Progress::Stage { stage, .. } => stage,
            Progress::Failed { reason, .. } => panic!("unexpected failure {reason}"),
        }
    }

    fn failed_reason(p: Progress) -> String {
        match p {
            Progress::Failed { reason, .. } => reason,
            Progress::Stage { stage, .. } => panic!("expected a failure, got {stage:?}"),
        }
    }

    #[test]
    fn stages() {
        let scheduled = cond("PodScheduled", "True", None);
        let cases = vec![
            (pod("Pending", vec![], vec![], None), Stage::PodPending),
            (
                pod("Pending", vec![scheduled.clone()], vec![], None),
                Stage::PodScheduled,
            ),
            (
                pod(
                    "Pending",
                    vec![scheduled.clone()],
                    vec![container(waiting("ContainerCreating"))],
                    None,
                ),
                Stage::PodScheduled,
            ),
            (
                pod(
                    "Running",
                    vec![scheduled.clone(), cond("Ready", "False", None)],
                    vec![container(running())],
                    Some("10.244.0.5"),
                ),
                Stage::ContainerRunning,
            ),
            (
                pod(
                    "Running",
                    vec![scheduled.clone(), cond("Ready", "True", None)],
                    vec![container(running())],
                    Some("10.244.0.5"),
                ),
                Stage::ContainerRunning,
            ),
        ];
        for (p, expected) in cases {
            assert_eq!(stage(progress(&p)), expected, "{:?}", p.status);
        }
    }

    #[test]
    fn failures_are_reported_at_once() {
        let scheduled = cond("PodScheduled", "True", None);
        for reason in [
            "ErrImageNeverPull",
            "ImagePullBackOff",
            "ErrImagePull",
            "CrashLoopBackOff",
            "CreateContainerConfigError",
        ] {
            let p = pod(
                "Pending",
                vec![scheduled.clone()],
                vec![container(waiting(reason))],
                None,
            );
            assert_eq!(failed_reason(progress(&p)), reason);
        }
        let mut unschedulable = pod(
            "Pending",
            vec![cond("PodScheduled", "False", Some("Unschedulable"))],
            vec![],
            None,
        );
        // A full node is a wait (an autoscaler may be adding one), with the scheduler's words.
        if let Some(c) = unschedulable
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .and_then(|c| c.first_mut())
        {
            c.message = Some("0/1 nodes are available: 1 Insufficient cpu.".into());
        }
        match progress(&unschedulable) {
            Progress::Stage { stage, message } => {
                assert_eq!(stage, Stage::PodPending);
                assert!(
                    message.contains(
                        "waiting for a node: 0/1 nodes are available: 1 Insufficient cpu."
                    ),
                    "{message}"
                );
            }
            other => panic!("a wait, not {other:?}"),
        }
        assert!(failure(&unschedulable).is_none());
        assert_eq!(view(&unschedulable).health, PodHealth::Starting);
        let mut evicted = pod("Failed", vec![], vec![], None);
        if let Some(s) = evicted.status.as_mut() {
            s.reason = Some("Evicted".into());
        }
        assert_eq!(failed_reason(progress(&evicted)), "Evicted");
        assert_eq!(
            failed_reason(progress(&pod("Failed", vec![], vec![], None))),
            "PodFailed"
        );
    }

    /// One pod per reading of "failed": WatchServer (progress, events), the reconciler
    /// (view -> session::reconcile) and GetServer (view -> session::pod_step) agree.
    fn failed_in_every_reading(p: &Pod, reason: &str) {
        use crate::session::{self, Fence, ReconcileDecision, SessionRow, Status};
        assert_eq!(failure(p).map(|f| f.reason).as_deref(), Some(reason));
        assert_eq!(failed_reason(progress(p)), reason, "WatchServer");
        let v = view(p);
        assert_eq!(
            v.health,
            PodHealth::Failed {
                reason: reason.to_string()
            },
            "view"
        );
        let fence = Fence {
            session_id: SessionId::parse("s1").expect("valid"),
            generation: 3,
        };
        let ready = SessionRow {
            pod_ip: Some("10.244.0.5".into()),
            command_port: Some(9001),
            status: Status::Ready,
            ..SessionRow::pending(&fence.session_id, 3)
        };
        assert_eq!(
            session::reconcile(Some(&ready), &v),
            ReconcileDecision::LeaveReady {
                fence: fence.clone()
            },
            "reconciler"
        );
        assert_eq!(
            session::pod_step(&fence, Some(&v)),
            session::PodStep::Replace {
                uid: Some("u1".into())
            },
            "GetServer"
        );
    }

    #[test]
    fn every_failure_reason_is_failed_in_every_reading() {
        let scheduled = cond("PodScheduled", "True", None);
        for reason in FAILURE_REASONS {
            let waiting_pod = pod(
                "Pending",
                vec![scheduled.clone()],
                vec![container(waiting(reason))],
                None,
            );
            failed_in_every_reading(&waiting_pod, reason);
            let event = Event {
                type_: Some("Warning".into()),
                reason: Some(reason.to_string()),
                message: Some("m".into()),
                ..Default::default()
            };
            assert_eq!(
                event_failure(&event),
                Some(Progress::Failed {
                    reason: reason.to_string(),
                    message: "m".into()
                }),
                "event {reason}"
            );
        }
        failed_in_every_reading(&pod("Failed", vec![], vec![], None), "PodFailed");
        failed_in_every_reading(&pod("Succeeded", vec![], vec![], None), "PodSucceeded");
        // A waiting reason outside the list is a start, in every reading.
        let creating = pod(
            "Pending",
            vec![scheduled],
            vec![container(waiting("ContainerCreating"))],
            None,
        );
        assert_eq!(failure(&creating), None);
        assert_eq!(view(&creating).health, PodHealth::Starting);
        assert_eq!(stage(progress(&creating)), Stage::PodScheduled);
    }

    #[test]
    fn views() {
        let ready = pod(
            "Running",
            vec![cond("Ready", "True", None)],
            vec![container(running())],
            Some("10.244.0.5"),
        );
        let v = view(&ready);
        assert_eq!(v.health, PodHealth::Ready);
        assert_eq!(v.session_id.as_deref(), Some("s1"));
        assert_eq!(v.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(v.uid.as_deref(), Some("u1"));

        let starting = pod("Pending", vec![], vec![], Some(""));
        assert_eq!(view(&starting).health, PodHealth::Starting);
        assert_eq!(view(&starting).pod_ip, None);

        assert_eq!(
            view(&pod("Failed", vec![], vec![], None)).health,
            PodHealth::Failed {
                reason: "PodFailed".into()
            }
        );
        assert!(matches!(
            view(&pod("Succeeded", vec![], vec![], None)).health,
            PodHealth::Failed { .. }
        ));
        // Succeeded with the supervisor's idle message: idled out, not failed.
        let ended = |message: &str| {
            let mut c = container(running());
            c.state = Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 0,
                    message: Some(message.into()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            pod("Succeeded", vec![], vec![c], None)
        };
        assert_eq!(
            view(&ended(&proto::pod::idle_message(10800))).health,
            PodHealth::Idle
        );
        assert!(matches!(
            view(&ended("something else")).health,
            PodHealth::Failed { .. }
        ));

        let mut deleting = ready.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(view(&deleting).health, PodHealth::Terminating);
        assert_eq!(stage(progress(&deleting)), Stage::PodPending);
    }

    #[test]
    fn identity_from_labels_and_annotations() {
        let mut p = pod("Running", vec![], vec![], None);
        assert_eq!(
            key_of(&p),
            Some(SessionKey::new(
                UserId::parse("alice").expect("valid"),
                RepoHash::parse("0123456789abcdef0123456789abcdef").expect("valid")
            ))
        );
        assert_eq!(session_of(&p), SessionId::parse("s1").ok());
        assert_eq!(generation_of(&p), Some(3));
        assert_eq!(view(&p).generation, Some(3));
        if let Some(l) = p.metadata.labels.as_mut() {
            l.insert(LABEL_GENERATION.to_string(), "x".to_string());
        }
        assert_eq!(generation_of(&p), None);
        p.metadata.labels = None;
        assert_eq!(key_of(&p), None);
        assert_eq!(session_of(&p), None);
    }

    #[test]
    fn reports_are_checked_against_the_pod() {
        let key = key_of(&pod("Running", vec![], vec![], None)).expect("key");
        let fence = crate::session::Fence {
            session_id: SessionId::parse("s1").expect("valid"),
            generation: 3,
        };
        let running = pod(
            "Running",
            vec![],
            vec![container(running())],
            Some("10.244.0.5"),
        );
        assert_eq!(
            report_matches(Some(&running), &key, &fence, "10.244.0.5", None),
            Ok(())
        );
        assert_eq!(
            report_matches(Some(&running), &key, &fence, "10.6.6.6", None),
            Err(ReportMismatch::OtherAddress)
        );
        assert_eq!(
            report_matches(None, &key, &fence, "10.244.0.5", None),
            Err(ReportMismatch::NoPod)
        );
        let other = crate::session::Fence {
            generation: 2,
            ..fence.clone()
        };
        assert_eq!(
            report_matches(Some(&running), &key, &other, "10.244.0.5", None),
            Err(ReportMismatch::NotThatPod)
        );
        let bob = SessionKey::new(UserId::parse("bob").expect("valid"), key.repo_hash.clone());
        assert_eq!(
            report_matches(Some(&running), &bob, &fence, "10.244.0.5", None),
            Err(ReportMismatch::NotThatPod)
        );
        let mut going = running.clone();
        going.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            report_matches(Some(&going), &key, &fence, "10.244.0.5", None),
            Err(ReportMismatch::Terminating)
        );
        // A token bound to another pod of the same name (an earlier one) is not this pod.
        let mut with_uid = running.clone();
        with_uid.metadata.uid = Some("uid-now".into());
        assert_eq!(
            report_matches(Some(&with_uid), &key, &fence, "10.244.0.5", Some("uid-now")),
            Ok(())
        );
        assert_eq!(
            report_matches(
                Some(&with_uid),
                &key,
                &fence,
                "10.244.0.5",
                Some("uid-before")
            ),
            Err(ReportMismatch::NotThatPod)
        );
    }

    #[test]
    fn warning_events() {
        let ev = |type_: &str, reason: &str| Event {
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            message: Some("0/1 nodes are available".into()),
            ..Default::default()
        };
        assert_eq!(event_failure(&ev("Warning", "FailedScheduling")), None);
        assert_eq!(event_failure(&ev("Normal", "Scheduled")), None);
        assert_eq!(event_failure(&ev("Warning", "BackOff")), None);
    }

    #[test]
    fn readiness_failures_while_starting_are_not_news() {
        let ev = |reason: &str, message: &str| Event {
            type_: Some("Warning".into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        };
        assert!(expected_while_starting(&ev(
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 503"
        )));
        assert!(!expected_while_starting(&ev(
            "Unhealthy",
            "Liveness probe failed: connection refused"
        )));
        assert!(!expected_while_starting(&ev(
            "BackOff",
            "Readiness probe failed"
        )));
    }
}
