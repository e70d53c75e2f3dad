//! The BuildSessions schema (the repository's `schema.sql`) and `--create-database`.

use gcloud_gax::conn::Environment;
use gcloud_googleapis::spanner::admin::database::v1::CreateDatabaseRequest;
use gcloud_googleapis::spanner::admin::instance::v1::{CreateInstanceRequest, Instance};
use gcloud_spanner::admin::client::Client as AdminClient;
use gcloud_spanner::admin::AdminClientConfig;
use google_cloud_longrunning::longrunning::Operation;
use tonic::Code;

/// The project's schema.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Errors creating the database on the emulator.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("Spanner admin call {call} for {target} failed: {message}")]
    Admin {
        call: &'static str,
        target: String,
        message: String,
    },
}

/// Splits a DDL file into statements: `--` comments dropped, `;` separated, blanks removed.
pub fn schema_statements(sql: &str) -> Vec<String> {
    let without_comments: Vec<&str> = sql
        .lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
        .collect();
    without_comments
        .join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits for a create operation; AlreadyExists counts as done (the call is idempotent).
async fn finish<T: prost::Message + Default>(
    started: Result<Operation<T>, tonic::Status>,
    call: &'static str,
    err: &impl Fn(&'static str, String) -> SchemaError,
) -> Result<(), SchemaError> {
    match started {
        Ok(mut op) => op
            .wait(None)
            .await
            .map(drop)
            .map_err(|e| err(call, format!("waiting: {e}"))),
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(s) => Err(err(call, s.to_string())),
    }
}

/// Creates the instance and the database with [`SCHEMA_SQL`] on the emulator unless they
/// exist (an existing database is left as it is).
pub async fn create_database(
    emulator_host: &str,
    project: &str,
    instance: &str,
    database: &str,
) -> Result<(), SchemaError> {
    let target = format!("projects/{project}/instances/{instance}/databases/{database}");
    let err = |call: &'static str, message: String| SchemaError::Admin {
        call,
        target: target.clone(),
        message,
    };
    let admin = AdminClient::new(AdminClientConfig {
        environment: Environment::Emulator(emulator_host.to_string()),
        ..Default::default()
    })
    .await
    .map_err(|e| err("connect", e.to_string()))?;
    let instance_op = admin
        .instance()
        .create_instance(
            CreateInstanceRequest {
                parent: format!("projects/{project}"),
                instance_id: instance.to_string(),
                instance: Some(Instance {
                    name: format!("projects/{project}/instances/{instance}"),
                    config: format!("projects/{project}/instanceConfigs/emulator-config"),
                    display_name: instance.to_string(),
                    node_count: 1,
                    ..Default::default()
                }),
            },
            None,
        )
        .await;
    finish(instance_op, "CreateInstance", &err).await?;
    let database_op = admin
        .database()
        .create_database(
            CreateDatabaseRequest {
                parent: format!("projects/{project}/instances/{instance}"),
                create_statement: format!("CREATE DATABASE `{database}`"),
                extra_statements: schema_statements(SCHEMA_SQL),
                ..Default::default()
            },
            None,
        )
        .await;
    finish(database_op, "CreateDatabase", &err).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_without_comments() {
        let stmts = schema_statements(SCHEMA_SQL);
        assert_eq!(stmts.len(), 1, "{stmts:?}");
        assert!(stmts[0].starts_with("CREATE TABLE BuildSessions"));
        assert!(stmts[0].contains("PRIMARY KEY (UserId, RepoHash)"));
        assert_eq!(schema_statements("A;\n-- x;\nB -- y\n;"), ["A", "B"]);
    }
}
