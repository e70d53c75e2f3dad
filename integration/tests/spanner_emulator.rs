//! The emulator fixture against the real emulator: the schema is there, a row round-trips.

use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::insert;
use gcloud_spanner::statement::Statement;
use integration::spanner::SpannerEmulator;

#[tokio::test]
async fn build_sessions_table_exists_and_a_row_round_trips() {
    let emulator = SpannerEmulator::start().await.expect("emulator must start");
    let client = emulator.client().await.expect("client");

    client
        .apply(vec![insert(
            "BuildSessions",
            &["UserId", "RepoHash", "SessionId", "PodIP", "Status"],
            &[
                &"alice",
                &"0123456789abcdef0123456789abcdef",
                &"s1",
                &"10.244.0.7",
                &"PENDING",
            ],
        )])
        .await
        .expect("insert");

    let mut tx = client.single().await.expect("read-only tx");
    let key = Key::composite(&[&"alice", &"0123456789abcdef0123456789abcdef"]);
    let row = tx
        .read_row("BuildSessions", &["SessionId", "PodIP", "Status"], key)
        .await
        .expect("read")
        .expect("row must exist");
    assert_eq!(row.column_by_name::<String>("SessionId").unwrap(), "s1");
    assert_eq!(row.column_by_name::<String>("PodIP").unwrap(), "10.244.0.7");
    assert_eq!(row.column_by_name::<String>("Status").unwrap(), "PENDING");

    // The table has the seed's columns, then the two added with a reason (schema.sql):
    // Generation (the fencing token) and CommandPort (what the hop needs, for every replica).
    let mut tx = client.single().await.expect("read-only tx");
    let mut rows = tx
        .query(Statement::new(
            "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS \
             WHERE TABLE_NAME = 'BuildSessions' ORDER BY ORDINAL_POSITION",
        ))
        .await
        .expect("schema query");
    let mut columns = Vec::new();
    while let Some(row) = rows.next().await.expect("row") {
        columns.push(row.column::<String>(0).unwrap());
    }
    assert_eq!(
        columns,
        [
            "UserId",
            "RepoHash",
            "SessionId",
            "PodIP",
            "Status",
            "Generation",
            "CommandPort"
        ]
    );
    client.close().await;
}
