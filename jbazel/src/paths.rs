//! Desktop <-> pod path translation.
//!
//! The pod's Bazel sees the checkout at `/work/src` and its output base at `/work/out`; the
//! desktop sees the same directories at the workspace root `P` and at the filestore mirror
//! `R/U/H/out`. This module maps between the two views:
//! - desktop -> pod: the working directory (`--client_cwd`) and rc file names;
//! - pod -> desktop: `bazel run`'s ExecRequest (so the binary runs from the mirror) and,
//!   when a stream is a terminal, what the server prints.
//!
//! Pod paths are matched as whole path prefixes: `/work/src` matches in `/work/src`,
//! `/work/src/a` or `'/work/src'`, never in `/work/srcs` or `/x/work/src`. Pure code.

use proto::command_server::{EnvironmentVariable, ExecRequest};
use std::path::{Path, PathBuf};

/// The pod's view of the checkout.
pub const POD_SRC: &str = "/work/src";
/// The pod's view of the output base.
pub const POD_OUT: &str = "/work/out";

/// The two views of one (user, repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    /// `P`: the workspace root on the desktop (physical path).
    pub desktop_root: PathBuf,
    /// `R/U/H/src` on the desktop (the same directory as `P` through the mirror).
    pub mirror_src: PathBuf,
    /// `R/U/H/out` on the desktop: the output base.
    pub mirror_out: PathBuf,
    /// Other desktop spellings of the same directories (e.g. their canonical paths when the
    /// filestore root holds a symlink), mapped to their pod path by [`PathMap::pod_name`].
    pub aliases: Vec<(PathBuf, &'static str)>,
}

/// A path outside the workspace where one inside was needed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{} is not inside the workspace {}", path.display(), root.display())]
pub struct OutsideWorkspace {
    pub path: PathBuf,
    pub root: PathBuf,
}

impl PathMap {
    /// `R/U/H` for a filestore root, user and repo hash (already validated).
    pub fn new(desktop_root: &Path, filestore_root: &Path, user: &str, repo_hash: &str) -> Self {
        let base = filestore_root.join(user).join(repo_hash);
        PathMap {
            desktop_root: desktop_root.to_path_buf(),
            mirror_src: base.join("src"),
            mirror_out: base.join("out"),
            aliases: Vec::new(),
        }
    }

    /// The pod-side `--client_cwd` for a desktop directory inside the workspace.
    pub fn pod_cwd(&self, cwd: &Path) -> Result<String, OutsideWorkspace> {
        let rel = cwd
            .strip_prefix(&self.desktop_root)
            .map_err(|_| OutsideWorkspace {
                path: cwd.to_path_buf(),
                root: self.desktop_root.clone(),
            })?;
        Ok(join_pod(POD_SRC, rel))
    }

    /// The name the pod would give a desktop file: inside the workspace or the mirror it is
    /// the `/work/...` path, elsewhere (e.g. `~/.bazelrc`) it stays the desktop path.
    pub fn pod_name(&self, path: &Path) -> String {
        let main = [
            (&self.desktop_root, POD_SRC),
            (&self.mirror_src, POD_SRC),
            (&self.mirror_out, POD_OUT),
        ];
        let aliases = self.aliases.iter().map(|(p, pod)| (p, *pod));
        for (desktop, pod) in main.into_iter().chain(aliases) {
            if let Ok(rel) = path.strip_prefix(desktop) {
                return join_pod(pod, rel);
            }
        }
        path.to_string_lossy().into_owned()
    }

    /// The rewriter of pod paths to desktop paths: `/work/src` -> `P`, `/work/out` ->
    /// `R/U/H/out`.
    pub fn to_desktop(&self) -> Rewriter {
        self.to_desktop_with(Vec::new())
    }

    /// [`PathMap::to_desktop`] with `first` tried before the two trees' prefixes (more
    /// specific pod paths, such as the convenience links' directory).
    pub fn to_desktop_with(&self, mut first: Vec<(Vec<u8>, Vec<u8>)>) -> Rewriter {
        first.push((POD_SRC.into(), path_bytes(&self.desktop_root)));
        first.push((POD_OUT.into(), path_bytes(&self.mirror_out)));
        Rewriter::new(first)
    }
}

fn join_pod(prefix: &str, rel: &Path) -> String {
    let rel = rel.to_string_lossy();
    if rel.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

/// Characters that continue a path component: a match must not be followed by one.
fn continues_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Characters that may precede a path component: a match must not be preceded by one.
fn precedes_name(b: u8) -> bool {
    continues_name(b) || matches!(b, b'/' | b'~')
}

/// Bytes of context kept before a chunk: enough for an ANSI colour sequence.
const CONTEXT: usize = 16;

/// Whether the text before a `/` ends a word: nothing, a non-name byte, or an ANSI CSI
/// sequence (`ESC [ 0 m`: Bazel colours `ERROR: ` right before a path on a terminal).
fn boundary_before(prev: &[u8], head: &[u8]) -> bool {
    let mut ctx: Vec<u8> = Vec::with_capacity(CONTEXT);
    let take = CONTEXT.min(head.len());
    if take < CONTEXT {
        ctx.extend_from_slice(&prev[prev.len().saturating_sub(CONTEXT - take)..]);
    }
    ctx.extend_from_slice(&head[head.len() - take..]);
    let Some(&last) = ctx.last() else {
        return true;
    };
    if !precedes_name(last) {
        return true;
    }
    // ESC '[' [0-9;?]* final, with final in '@'..='~'.
    if (b'@'..=b'~').contains(&last) {
        let body = &ctx[..ctx.len() - 1];
        let params = body
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit() || **b == b';' || **b == b'?')
            .count();
        let start = body.len() - params;
        return start >= 2 && body[start - 2] == 0x1b && body[start - 1] == b'[';
    }
    false
}

/// Replaces whole-prefix occurrences of pod paths by desktop paths in bytes.
#[derive(Debug, Clone)]
pub struct Rewriter {
    rules: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Rewriter {
    /// `rules`: (pattern, replacement); every pattern starts with `/`.
    pub fn new(rules: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        Rewriter { rules }
    }

    /// Rewrites a complete text.
    pub fn rewrite(&self, input: &[u8]) -> Vec<u8> {
        self.rewrite_part(input, &[], true).0
    }

    /// Rewrites a complete string (lossless for UTF-8 input).
    pub fn rewrite_str(&self, input: &str) -> String {
        String::from_utf8_lossy(&self.rewrite(input.as_bytes())).into_owned()
    }

    /// Rewrites `buf`, knowing the byte before it. Unless `at_end`, stops before a tail that
    /// may still become a match, and returns how many input bytes were consumed.
    fn rewrite_part(&self, buf: &[u8], prev: &[u8], at_end: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            if buf[i] == b'/' {
                let boundary_before = boundary_before(prev, &buf[..i]);
                for (pat, repl) in &self.rules {
                    if buf[i..].starts_with(pat) {
                        let after = i + pat.len();
                        if after == buf.len() && !at_end {
                            // Cannot tell yet whether the next byte continues the name.
                            return (out, i);
                        }
                        let boundary_after = buf.get(after).is_none_or(|b| !continues_name(*b));
                        if boundary_before && boundary_after {
                            out.extend_from_slice(repl);
                            i = after;
                            continue 'scan;
                        }
                    } else if !at_end && pat.starts_with(&buf[i..]) {
                        // The tail is the start of a pattern: wait for more bytes.
                        return (out, i);
                    }
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        (out, buf.len())
    }
}

/// Rewrites a byte stream that arrives in chunks (a match may straddle two chunks).
#[derive(Debug)]
pub struct StreamRewriter {
    rewriter: Rewriter,
    pending: Vec<u8>,
    /// The last bytes already emitted (context for the boundary before a match).
    prev: Vec<u8>,
}

impl StreamRewriter {
    pub fn new(rewriter: Rewriter) -> Self {
        StreamRewriter {
            rewriter,
            pending: Vec::new(),
            prev: Vec::new(),
        }
    }

    /// Rewrites what can be rewritten of the stream so far.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let (out, consumed) = self.rewriter.rewrite_part(&self.pending, &self.prev, false);
        if consumed > 0 {
            self.prev.extend_from_slice(&self.pending[..consumed]);
            let excess = self.prev.len().saturating_sub(CONTEXT);
            self.prev.drain(..excess);
            self.pending.drain(..consumed);
        }
        out
    }

    /// The held-back tail, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let (out, _) = self.rewriter.rewrite_part(&self.pending, &self.prev, true);
        self.pending.clear();
        out
    }
}

/// `bazel run`'s exec request with pod paths replaced by desktop paths, in the working
/// directory, every argv element and every environment value (`BUILD_WORKSPACE_DIRECTORY`,
/// `BUILD_WORKING_DIRECTORY`, ...). [`crate::runfiles`] then replaces argv with the words
/// [`crate::exec_policy`] admitted, each rewritten on its own (no shell line to re-quote).
pub fn rewrite_exec_request(req: &ExecRequest, rw: &Rewriter) -> ExecRequest {
    ExecRequest {
        working_directory: rw.rewrite(&req.working_directory),
        argv: req.argv.iter().map(|a| rw.rewrite(a)).collect(),
        environment_variable: req
            .environment_variable
            .iter()
            .map(|v| EnvironmentVariable {
                name: v.name.clone(),
                value: rw.rewrite(&v.value),
            })
            .collect(),
    }
}

/// Reads symlinks (so resolution is testable without a disk): see [`crate::runfiles::Resolver`].
pub trait ReadLink {
    /// The target of `path` if it is a symlink.
    fn read_link(&self, path: &Path) -> Option<PathBuf>;
}

/// The real filesystem.
pub struct DiskLinks;

impl ReadLink for DiskLinks {
    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        std::fs::read_link(path).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> PathMap {
        PathMap::new(
            Path::new("/home/alice/proj"),
            Path::new("/tmp/mock-filestore"),
            "alice",
            "0123456789abcdef0123456789abcdef",
        )
    }

    const OUT: &str = "/tmp/mock-filestore/alice/0123456789abcdef0123456789abcdef/out";

    #[test]
    fn pod_cwd_table() {
        let m = map();
        let cases = [
            ("/home/alice/proj", Some("/work/src")),
            ("/home/alice/proj/app", Some("/work/src/app")),
            ("/home/alice/proj/a/b c", Some("/work/src/a/b c")),
            ("/home/alice/projx", None),
            ("/home/alice", None),
        ];
        for (cwd, want) in cases {
            let got = m.pod_cwd(Path::new(cwd)).ok();
            assert_eq!(got.as_deref(), want, "{cwd}");
        }
    }

    #[test]
    fn pod_name_table() {
        let m = map();
        let cases = [
            ("/home/alice/proj/.bazelrc", "/work/src/.bazelrc"),
            ("/home/alice/proj/tools/x.rc", "/work/src/tools/x.rc"),
            (
                "/tmp/mock-filestore/alice/0123456789abcdef0123456789abcdef/out/jbazel/system.bazelrc",
                "/work/out/jbazel/system.bazelrc",
            ),
            (
                "/tmp/mock-filestore/alice/0123456789abcdef0123456789abcdef/src/.bazelrc",
                "/work/src/.bazelrc",
            ),
            ("/home/alice/.bazelrc", "/home/alice/.bazelrc"),
            ("/dev/null", "/dev/null"),
            ("/data/fs/alice/x/out/jbazel/system.bazelrc", "/work/out/jbazel/system.bazelrc"),
        ];
        let mut m = m;
        m.aliases
            .push((PathBuf::from("/data/fs/alice/x/out"), POD_OUT));
        for (path, want) in cases {
            assert_eq!(m.pod_name(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn rewrite_table() {
        let rw = map().to_desktop();
        let cases: &[(&str, String)] = &[
            ("/work/src", "/home/alice/proj".into()),
            (
                "/work/src/app/BUILD:3:1: error",
                "/home/alice/proj/app/BUILD:3:1: error".into(),
            ),
            (
                "bazel-bin -> /work/out/execroot/x",
                format!("bazel-bin -> {OUT}/execroot/x"),
            ),
            (
                "'/work/out/a' \"/work/src\"",
                format!("'{OUT}/a' \"/home/alice/proj\""),
            ),
            (
                "--x=/work/src:/work/out",
                format!("--x=/home/alice/proj:{OUT}"),
            ),
            // Not whole prefixes: untouched.
            (
                "/work/srcs /work/src2 /work/out.d /x/work/src a/work/out",
                "/work/srcs /work/src2 /work/out.d /x/work/src a/work/out".into(),
            ),
            ("/work/s /work /work/", "/work/s /work /work/".into()),
            // After a colour sequence, as Bazel prints errors on a terminal.
            (
                "\x1b[31m\x1b[1mERROR: \x1b[0m/work/src/BUILD:1",
                "\x1b[31m\x1b[1mERROR: \x1b[0m/home/alice/proj/BUILD:1".into(),
            ),
            ("\x1b[0m/work/out", format!("\x1b[0m{OUT}")),
            ("x[0m/work/src", "x[0m/work/src".into()),
            ("no paths here", "no paths here".into()),
        ];
        for (input, want) in cases {
            assert_eq!(rw.rewrite_str(input), *want, "{input}");
        }
    }

    #[test]
    fn stream_rewrite_across_chunk_boundaries() {
        let rw = map().to_desktop();
        let text = "INFO: /work/src/app/BUILD ok\n/work/out\r\x1b[1A/work/srcs /work/out/x \x1b[0m/work/src";
        let want = rw.rewrite(text.as_bytes());
        // Every split into two chunks, and byte-by-byte, gives the same result.
        for cut in 0..=text.len() {
            let mut s = StreamRewriter::new(rw.clone());
            let mut got = s.push(&text.as_bytes()[..cut]);
            got.extend(s.push(&text.as_bytes()[cut..]));
            got.extend(s.finish());
            assert_eq!(got, want, "cut at {cut}");
        }
        let mut s = StreamRewriter::new(rw.clone());
        let mut got = Vec::new();
        for b in text.as_bytes() {
            got.extend(s.push(&[*b]));
        }
        got.extend(s.finish());
        assert_eq!(got, want);
        // Plain text is never held back.
        let mut s = StreamRewriter::new(rw);
        assert_eq!(s.push(b"hello\n"), b"hello\n");
        // A possible match start is held back until the next chunk decides.
        assert_eq!(s.push(b"x /wor"), b"x ");
        assert_eq!(s.push(b"k/srcs"), b"/work/srcs");
        assert_eq!(s.finish(), b"");
    }

    #[test]
    fn exec_request_rewrite() {
        let rw = map().to_desktop();
        let req = ExecRequest {
            working_directory: b"/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin/app/hello.runfiles/__main__".to_vec(),
            argv: vec![
                b"/bin/bash".to_vec(),
                b"-c".to_vec(),
                b"/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin/app/hello 'a b'".to_vec(),
            ],
            environment_variable: vec![
                EnvironmentVariable {
                    name: b"BUILD_WORKSPACE_DIRECTORY".to_vec(),
                    value: b"/work/src".to_vec(),
                },
                EnvironmentVariable {
                    name: b"BUILD_WORKING_DIRECTORY".to_vec(),
                    value: b"/work/src/app".to_vec(),
                },
            ],
        };
        let got = rewrite_exec_request(&req, &rw);
        assert_eq!(
            String::from_utf8_lossy(&got.working_directory),
            format!(
                "{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin/app/hello.runfiles/__main__"
            )
        );
        assert_eq!(got.argv[0], b"/bin/bash");
        assert_eq!(got.argv[1], b"-c");
        assert_eq!(
            String::from_utf8_lossy(&got.argv[2]),
            format!("{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin/app/hello 'a b'")
        );
        assert_eq!(
            got.environment_variable[0].name,
            b"BUILD_WORKSPACE_DIRECTORY"
        );
        assert_eq!(got.environment_variable[0].value, b"/home/alice/proj");
        assert_eq!(got.environment_variable[1].value, b"/home/alice/proj/app");
    }
}
