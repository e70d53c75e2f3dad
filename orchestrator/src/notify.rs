//! In-process signals between the request handlers and the reconciler.
//!
//! - [`ReadyNotices`]: "row (key) became READY for session S", sent by ReportReady and by
//!   the reconciler, received by WatchServer streams (no polling of the row).
//!
//! Nothing here is needed for correctness across replicas (a notice only saves a watch
//! the wait for the pod's next event); fencing is the row's, in Spanner.

use proto::names::SessionId;
use tokio::sync::broadcast;

use crate::session::SessionKey;

/// A row became READY for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyNotice {
    pub key: SessionKey,
    pub session_id: SessionId,
}

/// Fan-out of [`ReadyNotice`]s. Receivers that lag re-read the row.
#[derive(Clone)]
pub struct ReadyNotices {
    tx: broadcast::Sender<ReadyNotice>,
}

impl Default for ReadyNotices {
    fn default() -> Self {
        ReadyNotices {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl ReadyNotices {
    pub fn send(&self, key: &SessionKey, session_id: &SessionId) {
        // No receiver is fine: nobody is watching that session.
        let _ = self.tx.send(ReadyNotice {
            key: key.clone(),
            session_id: session_id.clone(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ReadyNotice> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::names::{RepoHash, UserId};

    fn key(user: &str) -> SessionKey {
        SessionKey::new(
            UserId::parse(user).expect("valid"),
            RepoHash::parse("0123456789abcdef0123456789abcdef").expect("valid"),
        )
    }

    #[tokio::test]
    async fn notices_reach_subscribers() {
        let n = ReadyNotices::default();
        let mut rx = n.subscribe();
        let k = key("alice");
        let s1 = SessionId::parse("s1").expect("valid");
        n.send(&k, &s1);
        let got = rx.recv().await.expect("notice");
        assert_eq!(got.key, k);
        assert_eq!(got.session_id, s1);
    }
}
