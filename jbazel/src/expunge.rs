//! `clean --expunge` on the pod's server, made to end as it does on the desktop.
//!
//! Bazel 4.2.3 expunges by deleting everything below its output base, then the output base
//! itself, and only then removes the workspace's convenience symlinks and exits 0. In the pod
//! the output base `/work/out` is a mount point (the pivot's bind of `R/U/H/out`, which a
//! build must not be able to rename), so the very last `rmdir` fails ("/work/out (Device or
//! resource busy)", or "Permission denied": `/work` is root's) and Bazel exits 36 with
//! `CleanCommand.OUTPUT_BASE_DELETE_FAILURE`, having emptied the output base but left the
//! links. The supervisor then restarts the server on the empty output base, as local Bazel
//! would start a new one.
//!
//! So when a `clean` ends with exactly that failure, naming `/work/out` itself and nothing
//! below it, jbazel finishes the command as Bazel would have: it drops that one ERROR line,
//! removes the convenience symlinks (see [`crate::links::remove`]) and exits 0.
//!
//! `--expunge_async` first renames the output base aside, which a mount point refuses
//! (`OUTPUT_BASE_TEMP_MOVE_FAILURE`, nothing deleted, the server still up). On exactly that
//! failure jbazel says so, drops the ERROR line and sends the same command again with
//! [`FOREGROUND_EXPUNGE`] appended, which then ends as above. Any other failure (a file
//! below the output base that would not go) is Bazel's to report, unchanged. The decisions
//! are pure; the caller does the I/O.

use proto::command_server::FailureDetail;

use crate::exit_code::ExitCode;
use crate::paths::POD_OUT;

/// `failure_details.CleanCommand.Code.OUTPUT_BASE_DELETE_FAILURE`.
pub const OUTPUT_BASE_DELETE_FAILURE: i32 = 4;
/// `failure_details.CleanCommand.Code.OUTPUT_BASE_TEMP_MOVE_FAILURE`.
pub const OUTPUT_BASE_TEMP_MOVE_FAILURE: i32 = 5;
/// What jbazel appends to a `clean` whose `--expunge_async` could not move the output base
/// aside (Bazel 4.2.3 parses options left to right: the last word wins).
pub const FOREGROUND_EXPUNGE: [&str; 2] = ["--expunge", "--noasync"];

/// Whether `why` reads as one strerror text ("Permission denied"), not a path or more.
fn is_strerror(why: &str) -> bool {
    !why.is_empty() && !why.contains(['/', '(', ')', '\n'])
}

/// Whether `message` (an IOException's "<path> (<strerror>)") names the pod's output base
/// itself, not something below or beside it.
pub fn names_the_output_base(message: &str) -> bool {
    message
        .strip_prefix(POD_OUT)
        .and_then(|rest| rest.strip_prefix(" ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .is_some_and(is_strerror)
}

/// Whether `message` is the failed rename of the pod's output base aside ("/work/out ->
/// /work/out_tmp_<pid>_<uuid> (<strerror>)"), `--expunge_async`'s first step.
pub fn names_the_output_base_moved_aside(message: &str) -> bool {
    message
        .strip_prefix(POD_OUT)
        .and_then(|rest| rest.strip_prefix(" -> "))
        .and_then(|rest| rest.strip_prefix(POD_OUT))
        .and_then(|rest| rest.strip_prefix("_tmp_"))
        .and_then(|rest| rest.split_once(" ("))
        .is_some_and(|(tmp, why)| {
            !tmp.is_empty()
                && tmp
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && why.strip_suffix(')').is_some_and(is_strerror)
        })
}

/// Whether a command ended with exit 36, the clean command's failure `code`, and a message
/// `names` accepts.
fn clean_failure(
    exit_code: i32,
    detail: Option<&FailureDetail>,
    code: i32,
    names: fn(&str) -> bool,
) -> bool {
    exit_code == ExitCode::LOCAL_ENVIRONMENTAL_ERROR.code()
        && detail.is_some_and(|d| {
            d.clean_command.as_ref().is_some_and(|c| c.code == code) && names(&d.message)
        })
}

/// Whether a `clean` that ended with `exit_code` and `detail` is `--expunge_async` failing
/// to move the output base aside (a mount point): nothing was deleted, and the server is
/// still up. jbazel then expunges in the foreground (`--expunge --noasync`), which ends
/// as [`only_the_mount_point_left`].
pub fn could_not_move_aside(exit_code: i32, detail: Option<&FailureDetail>) -> bool {
    clean_failure(
        exit_code,
        detail,
        OUTPUT_BASE_TEMP_MOVE_FAILURE,
        names_the_output_base_moved_aside,
    )
}

/// Whether a command that ended with `exit_code` and `detail` is an expunge that emptied
/// the output base and failed only to remove the mount point.
pub fn only_the_mount_point_left(exit_code: i32, detail: Option<&FailureDetail>) -> bool {
    clean_failure(
        exit_code,
        detail,
        OUTPUT_BASE_DELETE_FAILURE,
        names_the_output_base,
    )
}

/// `line` without ANSI escape sequences (Bazel colours "ERROR:" under `--color=yes`).
fn plain(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether a stderr line is Bazel's report of the failed `rmdir` of the output base, or of
/// its failed move aside.
pub fn is_the_error_line(line: &[u8]) -> bool {
    let text = plain(line);
    let text = text.trim_end_matches(['\n', '\r']);
    text.strip_prefix("ERROR: ").is_some_and(|m| {
        let m = m.trim_end();
        names_the_output_base(m) || names_the_output_base_moved_aside(m)
    })
}

/// The longest unfinished stderr line held back to see whether it is the error line (that
/// line is under 200 bytes): a longer one is passed through as it comes, so the pod's
/// server cannot make jbazel hold an endless line in memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// At most this many bytes of error lines are held; more are passed through.
pub const MAX_HELD_BYTES: usize = 4 * 1024;

/// A `clean` command's stderr, passed through line by line, except Bazel's report of the
/// failed `rmdir` of the output base, which is held until the command's end decides. Both
/// buffers are bounded ([`MAX_LINE_BYTES`], [`MAX_HELD_BYTES`]).
#[derive(Debug, Default)]
pub struct HeldError {
    partial: Vec<u8>,
    held: Vec<u8>,
    /// Inside a line already passed through for its length: its rest goes through too.
    passing: bool,
}

impl HeldError {
    /// What of `chunk` can be written now (whole lines; the held line excepted; a line over
    /// [`MAX_LINE_BYTES`] as it comes).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if std::mem::take(&mut self.passing) {
                out.extend_from_slice(&line);
            } else if is_the_error_line(&line) && self.held.len() + line.len() <= MAX_HELD_BYTES {
                self.held.extend_from_slice(&line);
            } else {
                out.extend_from_slice(&line);
            }
        }
        if self.partial.len() > MAX_LINE_BYTES {
            out.append(&mut self.partial);
            self.passing = true;
        }
        out
    }

    /// The unfinished last line, at the end of the stream.
    pub fn rest(&mut self) -> Vec<u8> {
        self.passing = false;
        std::mem::take(&mut self.partial)
    }

    /// The held line, once the command's end says it is to be shown after all.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::command_server::CleanCommand;

    fn detail(code: i32, message: &str) -> FailureDetail {
        FailureDetail {
            message: message.into(),
            clean_command: Some(CleanCommand { code }),
        }
    }

    #[test]
    fn only_the_output_base_itself_is_forgiven() {
        for m in [
            "/work/out (Device or resource busy)",
            "/work/out (Permission denied)",
        ] {
            assert!(names_the_output_base(m), "{m}");
            assert!(only_the_mount_point_left(36, Some(&detail(4, m))), "{m}");
        }
        for m in [
            "/work/out/execroot/ws (Permission denied)",
            "/work/outside (Permission denied)",
            "/work/out",
            "/work/out ()",
            "/work/out (busy) and /work/src (busy)",
            "x /work/out (Device or resource busy)",
            "",
        ] {
            assert!(!names_the_output_base(m), "{m}");
        }
        let busy = "/work/out (Device or resource busy)";
        // The exit code, the category and the code must all say so.
        assert!(!only_the_mount_point_left(0, Some(&detail(4, busy))));
        assert!(!only_the_mount_point_left(36, Some(&detail(5, busy))));
        assert!(!only_the_mount_point_left(36, None));
        let other = FailureDetail {
            message: busy.into(),
            clean_command: None,
        };
        assert!(!only_the_mount_point_left(36, Some(&other)));
    }

    #[test]
    fn only_the_output_base_moved_aside_is_retried() {
        let m = "/work/out -> /work/out_tmp_2867_7ba04326-05d4-4bf0-b27a-37359b014073 \
                 (Permission denied)";
        assert!(names_the_output_base_moved_aside(m));
        assert!(could_not_move_aside(36, Some(&detail(5, m))));
        assert!(!could_not_move_aside(36, Some(&detail(4, m))));
        assert!(!could_not_move_aside(2, Some(&detail(5, m))));
        assert!(!only_the_mount_point_left(36, Some(&detail(5, m))));
        for m in [
            "/work/out/execroot -> /work/out/execroot_tmp_1 (Permission denied)",
            "/work/out -> /tmp/x (Permission denied)",
            "/work/out -> /work/out_tmp_ (Permission denied)",
            "/work/out -> /work/out_tmp_1/x (Permission denied)",
            "/work/out -> /work/out_tmp_1",
            "/work/out (Permission denied)",
        ] {
            assert!(!names_the_output_base_moved_aside(m), "{m}");
        }
        assert!(is_the_error_line(format!("ERROR: {m}\n").as_bytes()));
    }

    #[test]
    fn the_error_line_is_found_in_colour_too() {
        assert!(is_the_error_line(
            b"ERROR: /work/out (Device or resource busy)\n"
        ));
        assert!(is_the_error_line(
            b"\x1b[31m\x1b[1mERROR: \x1b[0m/work/out (Device or resource busy)\r\n"
        ));
        assert!(!is_the_error_line(b"INFO: Starting clean.\n"));
        assert!(!is_the_error_line(
            b"ERROR: /work/out/x (Permission denied)\n"
        ));
        assert!(!is_the_error_line(
            b"WARNING: /work/out (Permission denied)\n"
        ));
    }

    #[test]
    fn the_held_line_waits_for_the_end() {
        let mut h = HeldError::default();
        let mut shown = h.push(b"INFO: Starting clean.\nERROR: /work/o");
        shown.extend(h.push(b"ut (Device or resource busy)\nlast, no newline"));
        assert_eq!(shown, b"INFO: Starting clean.\n");
        assert_eq!(h.rest(), b"last, no newline");

        let mut h = HeldError::default();
        assert!(h.push(b"ERROR: /work/out (Permission denied)\n").is_empty());
        assert!(h.rest().is_empty());
        assert_eq!(h.take_held(), b"ERROR: /work/out (Permission denied)\n");
        assert!(h.take_held().is_empty(), "taken once");
    }

    #[test]
    fn an_endless_line_is_passed_through_not_held() {
        let mut h = HeldError::default();
        let mut shown = 0;
        let chunk = vec![b'x'; 16 * 1024];
        // 64 MiB without a newline: what is held never exceeds the cap plus a chunk.
        for _ in 0..4096 {
            shown += h.push(&chunk).len();
            assert!(h.partial.len() <= MAX_LINE_BYTES + chunk.len());
        }
        assert!(shown > 4096 * chunk.len() - MAX_LINE_BYTES - chunk.len());
        // The long line's end, even if it reads like the error line, is passed through.
        let tail = h.push(b"ERROR: /work/out (Permission denied)\n");
        assert!(tail.ends_with(b"ERROR: /work/out (Permission denied)\n"));
        assert!(h.take_held().is_empty());
        // The next line is judged again.
        assert!(h.push(b"ERROR: /work/out (Permission denied)\n").is_empty());
        assert_eq!(h.take_held(), b"ERROR: /work/out (Permission denied)\n");
        // Many error lines: held up to the cap, then shown.
        let line = b"ERROR: /work/out (Device or resource busy)\n";
        let mut shown = Vec::new();
        for _ in 0..1000 {
            shown.extend(h.push(line));
        }
        let held = h.take_held();
        assert!(held.len() <= MAX_HELD_BYTES && !held.is_empty());
        assert_eq!(held.len() + shown.len(), 1000 * line.len());
    }
}
