//! `Store`: the only code that talks to Spanner. One narrow type over `gcloud-spanner`.
//!
//! Every write is one read-write transaction of the same shape: read the row of one key,
//! hand it to a pure decision from [`crate::session`], buffer what it says, commit.
//!
//! Retries: `gcloud-spanner`'s `read_write_transaction` retries ABORTED only 5 times with a
//! fixed, unjittered schedule (10 ms, 100 ms, then 1 s), which is not enough against the
//! emulator (it runs ONE read-write transaction at a time and aborts the others), and all
//! contenders would wake up together. So this type does NOT use it: it runs single
//! attempts with `begin_read_write_transaction` + `end` (which never retry ABORTED
//! themselves; the gRPC layer below only retries UNAVAILABLE/UNKNOWN) and retries ABORTED
//! itself with jittered exponential backoff (`proto::backoff`) until the caller's
//! deadline. One retry loop, not two nested ones.

use std::time::Duration;

use gcloud_spanner::client::{Client, ClientConfig, Error as SpannerError};
use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{insert, update};
use gcloud_spanner::row::Row;
use gcloud_spanner::statement::Statement;
use gcloud_spanner::statement::ToKind;
use gcloud_spanner::value::TimestampBound;

/// `insert` or `update` of gcloud-spanner: same arguments, different mutation kind.
type MutationFn = fn(&str, &[&str], &[&dyn ToKind]) -> gcloud_googleapis::spanner::v1::Mutation;
use gcloud_spanner::transaction_rw::ReadWriteTransaction;
use proto::backoff::Backoff;
use proto::names::{RepoHash, SessionId, UserId};
use tokio::time::Instant;
use tonic::Code;

use crate::engine::SessionStore;

use crate::session::{
    self, Fence, GetServerTransition, ReadyDecision, RowWrite, SessionKey, SessionRow, Status,
};

/// The table and its columns (schema.sql).
pub const TABLE: &str = "BuildSessions";
const KEY_COLUMNS: [&str; 2] = ["UserId", "RepoHash"];
const VALUE_COLUMNS: [&str; 5] = ["SessionId", "PodIP", "Status", "Generation", "CommandPort"];
const ALL_COLUMNS: [&str; 7] = [
    "UserId",
    "RepoHash",
    "SessionId",
    "PodIP",
    "Status",
    "Generation",
    "CommandPort",
];

/// Pauses between ABORTED retries: from 1-2 ms (contention on the emulator clears in
/// milliseconds) up to 50-100 ms, jittered so that contenders do not retry together.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));

/// Errors from the session store; each names the operation and the row.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The Spanner client could not be created.
    #[error("cannot connect to Spanner database {database}")]
    Connect {
        database: String,
        #[source]
        source: SpannerError,
    },
    /// A Spanner call failed with something other than ABORTED.
    #[error("{op} on BuildSessions row {key}")]
    Spanner {
        op: &'static str,
        key: String,
        #[source]
        source: SpannerError,
    },
    /// Spanner did not answer before the request deadline (unreachable, or retrying).
    #[error("{op} on BuildSessions row {key}: no answer from Spanner before the deadline")]
    Timeout { op: &'static str, key: String },
    /// The transaction kept being aborted (contention) until the request deadline.
    #[error("{op} on BuildSessions row {key}: still aborted after {attempts} attempts when the deadline passed")]
    DeadlineExceeded {
        op: &'static str,
        key: String,
        attempts: u32,
    },
}

impl StoreError {
    /// The gRPC status code a caller should see.
    pub fn code(&self) -> Code {
        match self {
            StoreError::DeadlineExceeded { .. } | StoreError::Timeout { .. } => {
                Code::DeadlineExceeded
            }
            _ => Code::Unavailable,
        }
    }
}

/// The BuildSessions table behind one `gcloud-spanner` client (one per process).
#[derive(Clone)]
pub struct Store {
    client: Client,
}

impl Store {
    /// Connects to `projects/P/instances/I/databases/D`. `emulator_host` is
    /// `SPANNER_EMULATOR_HOST` (`host:port`).
    pub async fn connect(database: &str, emulator_host: &str) -> Result<Self, StoreError> {
        let config = ClientConfig {
            environment: gcloud_gax::conn::Environment::Emulator(emulator_host.to_string()),
            ..Default::default()
        };
        let client = Client::new(database, config)
            .await
            .map_err(|source| StoreError::Connect {
                database: database.to_string(),
                source,
            })?;
        Ok(Store { client })
    }

    /// Wraps an existing client (tests, the bench).
    pub fn from_client(client: Client) -> Self {
        Store { client }
    }

    /// The underlying client (the bench's raw transaction uses it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn active_rows_unbounded(&self) -> Result<Vec<(SessionKey, SessionRow)>, StoreError> {
        let err = |source| StoreError::Spanner {
            op: "ListActive",
            key: "*".to_string(),
            source,
        };
        let mut tx = self.client.single().await.map_err(err)?;
        let mut stmt = Statement::new(
            "SELECT UserId, RepoHash, SessionId, PodIP, Status, Generation, CommandPort \
             FROM BuildSessions WHERE Status IS NULL OR Status != @idle",
        );
        stmt.add_param("idle", &Status::Idle.as_str());
        let mut rows = tx.query(stmt).await.map_err(|s| err(s.into()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(|s| err(s.into()))? {
            let user = row
                .column_by_name::<String>("UserId")
                .map_err(|e| err(e.into()))?;
            let hash = row
                .column_by_name::<String>("RepoHash")
                .map_err(|e| err(e.into()))?;
            // Only rows whose key this service could have written count.
            let (Ok(user_id), Ok(repo_hash)) = (UserId::parse(user), RepoHash::parse(hash)) else {
                tracing::warn!("skipping a BuildSessions row whose key is not a valid name");
                continue;
            };
            let key = SessionKey::new(user_id, repo_hash);
            if let Some(parsed) = parse_value_columns(&key, &row).map_err(err)? {
                out.push((key, parsed));
            }
        }
        Ok(out)
    }

    /// One read-modify-write transaction on `key`, retried on ABORTED with jittered
    /// backoff until `deadline`. `decide` is pure and may run several times.
    async fn transact<T, F>(
        &self,
        op: &'static str,
        key: &SessionKey,
        deadline: Instant,
        decide: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Option<&SessionRow>) -> (RowWrite, T),
    {
        bounded(
            op,
            &key.to_string(),
            deadline,
            retry_aborted(op, key, deadline, || self.attempt(key, &decide)),
        )
        .await
    }

    async fn attempt<T, F>(&self, key: &SessionKey, decide: &F) -> Result<T, SpannerError>
    where
        F: Fn(Option<&SessionRow>) -> (RowWrite, T),
    {
        let mut tx = self.client.begin_read_write_transaction().await?;
        let result = read_decide_buffer(&mut tx, key, decide).await;
        let (_commit, out) = tx.end(result, None).await?;
        Ok(out)
    }
}

/// The sessions port on Spanner: each write is one read-write transaction.
impl SessionStore for Store {
    /// GetServer's transaction: read the row, apply [`session::get_server`], commit.
    async fn get_server(
        &self,
        key: &SessionKey,
        session_id: &SessionId,
        deadline: Instant,
    ) -> Result<GetServerTransition, StoreError> {
        self.transact("GetServer", key, deadline, |row| {
            let t = session::get_server(row, session_id);
            (t.write.clone(), t)
        })
        .await
    }

    /// The fenced READY write (ReportReady, and the reconciler when the push was lost).
    async fn mark_ready(
        &self,
        key: &SessionKey,
        fence: &Fence,
        pod_ip: &str,
        command_port: Option<u32>,
        deadline: Instant,
    ) -> Result<ReadyDecision, StoreError> {
        self.transact("MarkReady", key, deadline, |row| {
            let d = session::mark_ready(row, fence, pod_ip, command_port);
            (d.write(), d)
        })
        .await
    }

    /// The row's pod idled out: IDLE if the row is still `fence`'s. Whether it changed.
    async fn mark_idle(
        &self,
        key: &SessionKey,
        fence: &Fence,
        deadline: Instant,
    ) -> Result<bool, StoreError> {
        self.transact("MarkIdle", key, deadline, |row| {
            let write = session::mark_idle(row, fence);
            let changed = write != RowWrite::Keep;
            (write, changed)
        })
        .await
    }

    /// The row leaves READY if it is still `fence`'s. Returns whether it changed.
    async fn leave_ready(
        &self,
        key: &SessionKey,
        fence: &Fence,
        deadline: Instant,
    ) -> Result<bool, StoreError> {
        self.transact("LeaveReady", key, deadline, |row| {
            let write = session::leave_ready(row, fence);
            let changed = write != RowWrite::Keep;
            (write, changed)
        })
        .await
    }

    /// A strong single read of one row in a read-only transaction: no locks, never
    /// aborted (WatchServer, the reconciler, the engine's re-reads).
    async fn read(
        &self,
        key: &SessionKey,
        deadline: Instant,
    ) -> Result<Option<SessionRow>, StoreError> {
        bounded(
            "Read",
            &key.to_string(),
            deadline,
            self.read_with(key, None),
        )
        .await
    }

    /// One strong query of every row not IDLE.
    async fn active_rows(
        &self,
        deadline: Instant,
    ) -> Result<Vec<(SessionKey, SessionRow)>, StoreError> {
        bounded("ListActive", "*", deadline, self.active_rows_unbounded()).await
    }

    async fn read_recent(
        &self,
        key: &SessionKey,
        deadline: Instant,
    ) -> Result<Option<SessionRow>, StoreError> {
        bounded(
            "ReadRecent",
            &key.to_string(),
            deadline,
            self.read_with(key, Some(RECENT)),
        )
        .await
    }
}

/// How old GetServer's fast-path read may be. A strong read waits for the newest
/// timestamp (on the emulator that wait grows with every transaction it ever ran: its
/// clock drifts ahead, cloud-spanner-emulator#277; measured 24 ms after 10,000
/// transactions, against 3.6 ms for this bound); the fast path is checked against the
/// pod cache anyway, and a row younger than this is simply read by the read-write path.
pub const RECENT: std::time::Duration = std::time::Duration::from_secs(1);

impl Store {
    async fn read_with(
        &self,
        key: &SessionKey,
        staleness: Option<std::time::Duration>,
    ) -> Result<Option<SessionRow>, StoreError> {
        let err = |source| StoreError::Spanner {
            op: "Read",
            key: key.to_string(),
            source,
        };
        let mut tx = match staleness {
            None => self.client.single().await,
            Some(d) => {
                self.client
                    .single_with_timestamp_bound(TimestampBound::max_staleness(d))
                    .await
            }
        }
        .map_err(err)?;
        let spanner_key = Key::composite(&[&key.user_id.as_str(), &key.repo_hash.as_str()]);
        let row = tx
            .read_row(TABLE, &VALUE_COLUMNS, spanner_key)
            .await
            .map_err(|s| err(s.into()))?;
        match row {
            Some(r) => parse_value_columns(key, &r).map_err(err),
            None => Ok(None),
        }
    }
}

/// Bounds one store call by the caller's deadline: the Spanner client's own retries
/// (UNAVAILABLE, session pool waits) do not know it.
async fn bounded<T>(
    op: &'static str,
    key: &str,
    deadline: Instant,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout {
            op,
            key: key.to_string(),
        }),
    }
}

/// Runs `attempt` until it succeeds, fails with something other than ABORTED, or the next
/// backoff would end past `deadline` (then DEADLINE_EXCEEDED naming the attempts).
async fn retry_aborted<T, Fut>(
    op: &'static str,
    key: &SessionKey,
    deadline: Instant,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, SpannerError>>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(out) => {
                if attempts > 1 {
                    tracing::debug!(op, user = %key.user_id, repo_hash = %key.repo_hash, attempts, "transaction committed after retries");
                }
                return Ok(out);
            }
            Err(e) if is_aborted(&e) => {
                let pause = BACKOFF.pause(attempts, proto::backoff::jitter());
                if Instant::now() + pause >= deadline {
                    return Err(StoreError::DeadlineExceeded {
                        op,
                        key: key.to_string(),
                        attempts,
                    });
                }
                tracing::trace!(op, user = %key.user_id, repo_hash = %key.repo_hash, attempts, ?pause, "transaction aborted, retrying");
                tokio::time::sleep(pause).await;
            }
            Err(source) => {
                return Err(StoreError::Spanner {
                    op,
                    key: key.to_string(),
                    source,
                })
            }
        }
    }
}

async fn read_decide_buffer<T, F>(
    tx: &mut ReadWriteTransaction,
    key: &SessionKey,
    decide: &F,
) -> Result<T, SpannerError>
where
    F: Fn(Option<&SessionRow>) -> (RowWrite, T),
{
    // Bound to a `let`: written inside the call, the temporary array of `&dyn ToKind` would
    // live across the `.await` and make the future not Send.
    let spanner_key = Key::composite(&[&key.user_id.as_str(), &key.repo_hash.as_str()]);
    let raw = tx.read_row(TABLE, &VALUE_COLUMNS, spanner_key).await?;
    let existed = raw.is_some();
    let row = match raw {
        Some(r) => parse_value_columns(key, &r)?,
        None => None,
    };
    let (write, out) = decide(row.as_ref());
    // The same columns either way; only the mutation kind differs. An unreadable row
    // (decided on as absent) exists, so it is updated, not inserted.
    let (mutation, r): (MutationFn, _) = match write {
        RowWrite::Keep => return Ok(out),
        RowWrite::Insert(r) | RowWrite::Update(r) if existed => (update, r),
        RowWrite::Insert(r) | RowWrite::Update(r) => (insert, r),
    };
    tx.buffer_write(vec![mutation(
        TABLE,
        &ALL_COLUMNS,
        &[
            &key.user_id.as_str(),
            &key.repo_hash.as_str(),
            &r.session_id.as_str(),
            &r.pod_ip,
            &r.status.as_str(),
            &(r.generation as i64),
            &r.command_port.map(i64::from),
        ],
    )]);
    Ok(out)
}

/// Reads the value columns ([`VALUE_COLUMNS`]). A row without a valid SessionId reads as
/// no row (`None`: no session owns it, so the next GetServer takes it over); an unknown or
/// NULL Status reads as PENDING (never trust an unknown READY).
fn parse_value_columns(key: &SessionKey, row: &Row) -> Result<Option<SessionRow>, SpannerError> {
    let raw_session = row.column_by_name::<Option<String>>("SessionId")?;
    let Some(session_id) = raw_session.and_then(|s| SessionId::parse(s).ok()) else {
        tracing::warn!(user = %key.user_id, repo_hash = %key.repo_hash,
            "BuildSessions row without a valid SessionId: treated as absent");
        return Ok(None);
    };
    let pod_ip = row
        .column_by_name::<Option<String>>("PodIP")?
        .filter(|s| !s.is_empty());
    let status = row
        .column_by_name::<Option<String>>("Status")?
        .as_deref()
        .and_then(Status::parse)
        .unwrap_or(Status::Pending);
    // A row written before generations existed (NULL) is at generation 0: its first
    // takeover makes generation 1.
    let generation = row
        .column_by_name::<Option<i64>>("Generation")?
        .and_then(|g| u64::try_from(g).ok())
        .unwrap_or(0);
    let command_port = row
        .column_by_name::<Option<i64>>("CommandPort")?
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| (1..=65535).contains(p));
    Ok(Some(SessionRow {
        session_id,
        generation,
        pod_ip,
        command_port,
        status,
    }))
}

fn is_aborted(e: &SpannerError) -> bool {
    matches!(e, SpannerError::GRPC(status) if status.code() == Code::Aborted)
}

/// `KEY_COLUMNS` is the primary key; kept for the docs and the schema test.
pub fn key_columns() -> [&'static str; 2] {
    KEY_COLUMNS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let pause = |attempt| BACKOFF.pause(attempt, proto::backoff::jitter());
        for attempt in 1..40 {
            let d = pause(attempt);
            assert!(d >= BACKOFF.first / 2, "{attempt}: {d:?}");
            assert!(d <= BACKOFF.max, "{attempt}: {d:?}");
        }
        // First attempts stay short: contention on the emulator clears in milliseconds.
        assert!(pause(1) <= Duration::from_millis(2));
        // Later ones spread out: 200 draws at attempt 10 are not all equal.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| pause(10)).collect();
        assert!(draws.len() > 50, "not jittered: {} distinct", draws.len());
    }

    #[test]
    fn aborted_is_the_only_retried_code() {
        assert!(is_aborted(&SpannerError::GRPC(tonic::Status::aborted("x"))));
        for code in [
            Code::Unavailable,
            Code::NotFound,
            Code::Internal,
            Code::DeadlineExceeded,
        ] {
            assert!(!is_aborted(&SpannerError::GRPC(tonic::Status::new(
                code, "x"
            ))));
        }
    }

    fn k() -> SessionKey {
        SessionKey::new(
            UserId::parse("alice").expect("valid"),
            RepoHash::parse("0123456789abcdef0123456789abcdef").expect("valid"),
        )
    }

    #[tokio::test]
    async fn aborted_attempts_are_retried_until_success() {
        let calls = std::cell::Cell::new(0u32);
        let out = retry_aborted("t", &k(), Instant::now() + Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 4 {
                    Err(SpannerError::GRPC(tonic::Status::aborted("busy")))
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .expect("succeeds on the 4th attempt");
        assert_eq!(out, 4);
    }

    /// On tokio's paused clock: the test measures the loop's own arithmetic, not how
    /// late a 2-core machine wakes a sleeper (CI once saw 311 ms for a 300 ms deadline).
    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_deadline() {
        let calls = std::cell::Cell::new(0u32);
        let t0 = Instant::now();
        let err = retry_aborted("t", &k(), t0 + Duration::from_millis(300), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(SpannerError::GRPC(tonic::Status::aborted("busy"))) }
        })
        .await
        .expect_err("always aborted");
        let waited = t0.elapsed();
        assert!(
            matches!(err, StoreError::DeadlineExceeded { attempts, .. } if attempts == calls.get() && attempts > 3),
            "{err}"
        );
        // The loop never starts a pause that would end past the deadline.
        assert!(
            waited <= Duration::from_millis(300),
            "overran the deadline: {waited:?}"
        );
        assert!(
            waited >= Duration::from_millis(150),
            "gave up early: {waited:?}"
        );
        assert_eq!(err.code(), Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let calls = std::cell::Cell::new(0u32);
        let err = retry_aborted("t", &k(), Instant::now() + Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(SpannerError::GRPC(tonic::Status::not_found("no table"))) }
        })
        .await
        .expect_err("fails");
        assert_eq!(calls.get(), 1);
        assert!(matches!(err, StoreError::Spanner { .. }));
        assert!(
            err.to_string()
                .contains("(alice, 0123456789abcdef0123456789abcdef)"),
            "{err}"
        );
    }

    #[test]
    fn columns_match_schema_sql() {
        let schema = include_str!("../../schema.sql");
        for c in ALL_COLUMNS {
            assert!(schema.contains(c), "{c} not in schema.sql");
        }
        assert!(schema.contains(&format!("PRIMARY KEY ({})", key_columns().join(", "))));
    }
}
