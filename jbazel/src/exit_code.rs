//! jbazel's exit codes: Bazel's (`blaze_exit_code.h` in its client, `ExitCode.java` in its
//! server). A code the server sent passes through as is ([`ExitCode::from_raw`]); the
//! codes jbazel chooses itself have one name each here.

/// The code a jbazel process exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExitCode(i32);

impl ExitCode {
    /// The command succeeded.
    pub const SUCCESS: ExitCode = ExitCode(0);
    /// The build (or parsing) failed.
    pub const BUILD_FAILURE: ExitCode = ExitCode(1);
    /// A bad command line: an unknown startup option, a bad `--jbazel-*` option, no
    /// workspace, an invalid user id (Bazel's `BAD_ARGV`).
    pub const COMMAND_LINE_ERROR: ExitCode = ExitCode(2);
    /// Tests ran and some failed.
    pub const TESTS_FAILED: ExitCode = ExitCode(3);
    /// `bazel test` found no tests.
    pub const NO_TESTS_FOUND: ExitCode = ExitCode(4);
    /// The command was interrupted (Ctrl-C, then Cancel).
    pub const INTERRUPTED: ExitCode = ExitCode(8);
    /// `--noblock_for_lock` and another command holds the server.
    pub const LOCK_HELD_NOBLOCK_FOR_LOCK: ExitCode = ExitCode(9);
    /// A problem of the local environment: the server, the orchestrator, the hop, the
    /// mirror, the credential cannot be had; the server rejected the request cookie.
    pub const LOCAL_ENVIRONMENTAL_ERROR: ExitCode = ExitCode(36);
    /// Bazel's internal error, which its client also uses when the server went away
    /// abruptly: a protocol breach, an exec request refused or failed, a lost server.
    pub const INTERNAL_ERROR: ExitCode = ExitCode(37);

    /// A code as a number: the one the server chose (`RunResponse.exit_code`, the
    /// abrupt-exit file), or one of Bazel's client's from a module that gives numbers.
    pub const fn from_raw(code: i32) -> ExitCode {
        ExitCode(code)
    }

    /// The process exit status.
    pub const fn code(self) -> i32 {
        self.0
    }

    /// Whether it is [`ExitCode::SUCCESS`].
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bazels_numbers() {
        let table = [
            (ExitCode::SUCCESS, 0),
            (ExitCode::BUILD_FAILURE, 1),
            (ExitCode::COMMAND_LINE_ERROR, 2),
            (ExitCode::TESTS_FAILED, 3),
            (ExitCode::NO_TESTS_FOUND, 4),
            (ExitCode::INTERRUPTED, 8),
            (ExitCode::LOCK_HELD_NOBLOCK_FOR_LOCK, 9),
            (ExitCode::LOCAL_ENVIRONMENTAL_ERROR, 36),
            (ExitCode::INTERNAL_ERROR, 37),
        ];
        for (code, n) in table {
            assert_eq!(code.code(), n);
            assert_eq!(ExitCode::from_raw(n), code);
        }
        assert!(ExitCode::SUCCESS.is_success());
        assert!(!ExitCode::from_raw(33).is_success());
        assert_eq!(ExitCode::from_raw(33).to_string(), "33");
    }
}
