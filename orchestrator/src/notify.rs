//! In-process signals between the request handlers and the reconciler.
//!
//! - [`ReadyNotices`]: "row (key) became READY for session S", sent by ReportReady and by
//!   the reconciler, received by WatchServer streams (no polling of the row).
//! - [`KeyLocks`]: one async mutex per (user, repo), so two requests never create and
//!   delete the same pod concurrently inside one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// Per-key async mutexes; entries are dropped when nobody holds or waits for them.
#[derive(Default, Clone)]
pub struct KeyLocks {
    map: Arc<Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Held while a key's pod is being made to match its row.
pub struct KeyGuard {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    key: SessionKey,
    locks: KeyLocks,
}

impl KeyLocks {
    pub async fn lock(&self, key: &SessionKey) -> KeyGuard {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        KeyGuard {
            _guard: mutex.lock_owned().await,
            key: key.clone(),
            locks: self.clone(),
        }
    }

    /// Number of keys with a live mutex (tests).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it (our guard holds its own Arc inside OwnedMutexGuard, which
        // is still alive here): 2 references means nobody else waits.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::names::{RepoHash, UserId};
    use std::time::Duration;

    fn key(user: &str) -> SessionKey {
        SessionKey::new(
            UserId::parse(user).expect("valid"),
            RepoHash::parse("0123456789abcdef0123456789abcdef").expect("valid"),
        )
    }

    #[tokio::test]
    async fn a_key_is_held_by_one_holder_at_a_time_and_entries_are_cleaned() {
        let locks = KeyLocks::default();
        let k = key("alice");
        let g = locks.lock(&k).await;
        let locks2 = locks.clone();
        let k2 = k.clone();
        let waiter = tokio::spawn(async move {
            let _g = locks2.lock(&k2).await;
        });
        // The waiter cannot finish while `g` is held.
        assert!(tokio::time::timeout(Duration::from_millis(50), async {
            while !waiter.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_err());
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter finishes")
            .expect("no panic");
        assert!(locks.is_empty(), "entries must not leak");
        // Another key is independent.
        let _a = locks.lock(&k).await;
        let _b = locks.lock(&key("bob")).await;
        assert_eq!(locks.len(), 2);
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
