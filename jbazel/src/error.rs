//! Why a jbazel command ended without the server's exit code, and the exit code for it
//! ([`Error::exit_code`]): the one place jbazel chooses a code for its own failures.

use crate::args::ArgsError;
use crate::client::ClientError;
use crate::credential::CredentialError;
use crate::exec_policy::Refusal;
use crate::exit_code::ExitCode;
use crate::hop::HopError;
use crate::identity::IdentityError;
use crate::mirror::MirrorError;
use crate::orchestrator_client::OrchestratorError;
use crate::rc::RcError;
use crate::request::RequestError;
use crate::runfiles::RunfilesError;
use crate::workspace::WorkspaceError;
use std::path::PathBuf;

/// A failure of one jbazel command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line Bazel's client would reject.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// The working directory cannot be read.
    #[error("cannot read the working directory")]
    Cwd(#[source] std::io::Error),
    /// No workspace above the working directory.
    #[error("{what} is only supported from within a workspace")]
    NoWorkspace {
        /// `the 'build' command`, or `jbazel` without one.
        what: String,
        #[source]
        source: WorkspaceError,
    },
    /// The user or session id is not valid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// `JBAZEL_LOCAL` without the real Bazel to run.
    #[error("JBAZEL_LOCAL needs BAZEL_REAL (bazelisk sets it when it runs tools/bazel)")]
    NoBazelReal,
    /// The real Bazel cannot be executed.
    #[error("cannot exec BAZEL_REAL={path}")]
    ExecBazelReal {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The async runtime cannot be started.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// An rc file Bazel's client would reject.
    #[error(transparent)]
    Rc(#[from] RcError),
    /// The RunRequest cannot be built.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The kubeconfig's credential cannot be had.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The orchestrator did not give a ready server.
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    /// The route to the server cannot be opened.
    #[error(transparent)]
    Hop(#[from] HopError),
    /// The server's cookies are not in the mirror.
    #[error("is JBAZEL_FILESTORE_ROOT the filestore the server uses, and is the server up?")]
    Cookies(#[source] MirrorError),
    /// A restarting server did not serve in time.
    #[error(
        "the Bazel server of {} did not serve within {deadline_secs} s: {reason}",
        root.display()
    )]
    NotServing {
        root: PathBuf,
        deadline_secs: u64,
        /// The last reason it did not (already printed with its causes).
        reason: String,
    },
    /// The server did not take the command, even after waiting for it.
    #[error("server {route}")]
    NotTaken {
        route: String,
        #[source]
        source: ClientError,
    },
    /// The Run call failed (bad cookie, protocol breach, signal handlers).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server's exec request is not honoured.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// `run`'s binary cannot be prepared on the desktop, or is refused.
    #[error(transparent)]
    Runfiles(#[from] RunfilesError),
    /// `run`'s binary cannot be executed.
    #[error("cannot run {program} in {dir}")]
    Exec {
        program: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Bazel's exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Args(_)
            | Error::NoWorkspace { .. }
            | Error::Identity(_)
            | Error::NoBazelReal
            | Error::Request(RequestError::Startup(_) | RequestError::FileFlag(_)) => {
                ExitCode::COMMAND_LINE_ERROR
            }
            Error::Rc(e) => e.exit_code(),
            Error::Cwd(_)
            | Error::ExecBazelReal { .. }
            | Error::Runtime(_)
            | Error::Request(RequestError::ClientCwd(_))
            | Error::Credential(_)
            | Error::Orchestrator(_)
            | Error::Hop(_)
            | Error::Cookies(_)
            | Error::NotServing { .. } => ExitCode::LOCAL_ENVIRONMENTAL_ERROR,
            Error::Client(e) => match e {
                ClientError::BadCookie { .. } => ExitCode::LOCAL_ENVIRONMENTAL_ERROR,
                ClientError::BadResponseCookie { .. }
                | ClientError::NotTaken { .. }
                | ClientError::Lost { .. }
                | ClientError::NoExitCode
                | ClientError::Signals(_) => ExitCode::INTERNAL_ERROR,
            },
            Error::NotTaken { .. } | Error::Refused(_) | Error::Exec { .. } => {
                ExitCode::INTERNAL_ERROR
            }
            Error::Runfiles(e) if e.is_refusal() => ExitCode::INTERNAL_ERROR,
            Error::Runfiles(_) => ExitCode::LOCAL_ENVIRONMENTAL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::error_chain::ErrorChain;

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::NotFound)
    }

    #[test]
    fn exit_code_table() {
        let cases: Vec<(Error, ExitCode)> = vec![
            (
                Error::Args(ArgsError::UnknownStartupOption("--x".into())),
                ExitCode::COMMAND_LINE_ERROR,
            ),
            (
                Error::NoWorkspace {
                    what: "jbazel".into(),
                    source: WorkspaceError::NotFound {
                        start: PathBuf::from("/tmp"),
                    },
                },
                ExitCode::COMMAND_LINE_ERROR,
            ),
            (Error::NoBazelReal, ExitCode::COMMAND_LINE_ERROR),
            (
                Error::Rc(RcError::Unreadable {
                    path: PathBuf::from("/x"),
                }),
                ExitCode::INTERNAL_ERROR,
            ),
            (
                Error::Rc(RcError::ImportLoop { chain: vec![] }),
                ExitCode::COMMAND_LINE_ERROR,
            ),
            (Error::Cwd(io()), ExitCode::LOCAL_ENVIRONMENTAL_ERROR),
            (Error::Runtime(io()), ExitCode::LOCAL_ENVIRONMENTAL_ERROR),
            (
                Error::Request(RequestError::ClientCwd(crate::paths::OutsideWorkspace {
                    path: PathBuf::from("/x"),
                    root: PathBuf::from("/w"),
                })),
                ExitCode::LOCAL_ENVIRONMENTAL_ERROR,
            ),
            (
                Error::NotServing {
                    root: PathBuf::from("/w"),
                    deadline_secs: 3,
                    reason: "x".into(),
                },
                ExitCode::LOCAL_ENVIRONMENTAL_ERROR,
            ),
            (
                Error::Client(ClientError::BadCookie {
                    cookie_path: "/c".into(),
                }),
                ExitCode::LOCAL_ENVIRONMENTAL_ERROR,
            ),
            (
                Error::Client(ClientError::BadResponseCookie {
                    cookie_path: "/c".into(),
                }),
                ExitCode::INTERNAL_ERROR,
            ),
            (
                Error::Refused(Refusal::NotRun {
                    command: "build".into(),
                    program: "touch".into(),
                }),
                ExitCode::INTERNAL_ERROR,
            ),
            (
                Error::Runfiles(RunfilesError::Refused(Refusal::Empty)),
                ExitCode::INTERNAL_ERROR,
            ),
            (
                Error::Runfiles(RunfilesError::Base {
                    path: PathBuf::from("/run/user/1/jbazel-run"),
                    source: io(),
                }),
                ExitCode::LOCAL_ENVIRONMENTAL_ERROR,
            ),
            (
                Error::Exec {
                    program: "/x".into(),
                    dir: "/".into(),
                    source: io(),
                },
                ExitCode::INTERNAL_ERROR,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.exit_code(), want, "{}", ErrorChain(&err));
        }
    }

    #[test]
    fn messages_do_not_repeat_their_source() {
        let err = Error::NoWorkspace {
            what: "the 'build' command".into(),
            source: WorkspaceError::NotFound {
                start: PathBuf::from("/tmp/x"),
            },
        };
        let shown = ErrorChain(&err).to_string();
        assert!(
            shown.starts_with("the 'build' command is only supported from within a workspace: "),
            "{shown}"
        );
        assert_eq!(shown.matches("/tmp/x").count(), 1, "{shown}");
    }
}
