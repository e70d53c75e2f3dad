//! The layout of a server's output base (`R/<user>/<hash>/out`, `/work/out` in the pod):
//! the files Bazel's server writes there, and those the supervisor publishes for jbazel.
//! The supervisor writes and jbazel reads through these names; neither spells them.
//!
//! Every path is relative to the output base.

/// The server's directory (Bazel's `server/`, mode 0700).
pub const SERVER_DIR: &str = "server";
/// The cookie a client sends with each request (`server/request_cookie`).
pub const REQUEST_COOKIE: &str = "server/request_cookie";
/// The cookie the server sends with each response (`server/response_cookie`).
pub const RESPONSE_COOKIE: &str = "server/response_cookie";
/// The server's JVM output (`server/jvm.out`).
pub const SERVER_LOG: &str = "server/jvm.out";
/// Where Bazel's server leaves the code its client exits with if the server dies
/// (`CustomExitCodePublisher`: in the output base itself).
pub const ABRUPT_EXIT_FILE: &str = "exit_code_to_use_on_abrupt_exit";

/// The supervisor's directory for jbazel.
pub const JBAZEL_DIR: &str = "jbazel";
/// The system rc the pod's Bazel reads (`jbazel/system.bazelrc`), as jbazel's client must
/// read it too.
pub const SYSTEM_RC: &str = "jbazel/system.bazelrc";
/// The pod's client environment (`jbazel/client-env`: `NAME=value` lines).
pub const CLIENT_ENV: &str = "jbazel/client-env";
/// The staging directory of files jbazel delivers to the desktop (`jbazel/files`).
pub const FILES_DIR: &str = "jbazel/files";
/// Where the pod's Bazel makes its convenience symlinks (`jbazel/links`): jbazel gives it
/// `--symlink_prefix=/work/out/jbazel/links/<prefix>`, since the checkout is read-only in
/// the pod, and mirrors those links into the desktop's workspace.
pub const LINKS_DIR: &str = "jbazel/links";

/// The file name in [`JBAZEL_DIR`] of [`SYSTEM_RC`].
pub const SYSTEM_RC_NAME: &str = "system.bazelrc";
/// The file name in [`JBAZEL_DIR`] of [`CLIENT_ENV`].
pub const CLIENT_ENV_NAME: &str = "client-env";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_paths_last_parts() {
        assert_eq!(SYSTEM_RC, format!("{JBAZEL_DIR}/{SYSTEM_RC_NAME}"));
        assert_eq!(CLIENT_ENV, format!("{JBAZEL_DIR}/{CLIENT_ENV_NAME}"));
        for p in [REQUEST_COOKIE, RESPONSE_COOKIE, SERVER_LOG] {
            assert!(p.starts_with(&format!("{SERVER_DIR}/")), "{p}");
        }
        assert!(FILES_DIR.starts_with(JBAZEL_DIR));
        assert!(LINKS_DIR.starts_with(&format!("{JBAZEL_DIR}/")));
    }
}
