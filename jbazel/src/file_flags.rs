//! Options that name a file the server writes or reads, rewritten so the file is where the
//! user named it on the desktop (issue: IDEs pass `--build_event_json_file=/tmp/...`).
//!
//! - An output file in the filestore mirror becomes its pod path (`/work/out/...`): the
//!   server writes it and the desktop sees it.
//! - An output file anywhere else on the desktop, the workspace included (it is read-only
//!   in the pod), is written by the server into the output base
//!   (`/work/out/jbazel/files/<pid>-<n>-<name>`) and copied to the desktop path after the
//!   command, whatever its outcome ([`deliver`]).
//! - `--override_repository=NAME=PATH` with PATH outside the workspace is refused with a
//!   clear error: the pod cannot see the desktop's other directories.
//!
//! Relative paths are taken from the desktop working directory, as Bazel's client does.
//! Options after `--` are the target's arguments and are left alone. Pure but for
//! [`prepare_staging`] and [`deliver`].
//!
//! The pod writes the staged files: [`deliver`] opens them as [`crate::untrusted_fs`] does
//! (no link, a regular file, no blocking), streams them with a cap
//! ([`MAX_DELIVERED_BYTES_VAR`], default [`DEFAULT_MAX_DELIVERED_BYTES`]) into a temporary
//! file renamed into place, so nothing is held in memory and nothing partial is left at the
//! destination.

use std::path::{Component, Path, PathBuf};

use crate::paths::{PathMap, Rewriter, StreamRewriter, POD_OUT};
use crate::untrusted_fs::{self, UntrustedFileError};

/// Output-file options: the server writes the file.
pub const OUTPUT_FILE_FLAGS: &[&str] = &[
    "build_event_json_file",
    "build_event_binary_file",
    "build_event_text_file",
    "profile",
    "execution_log_json_file",
    "execution_log_binary_file",
];

/// Output files in a text format whose pod paths are translated when delivered (IDEs find
/// outputs through the BEP's `file:///work/out/...` URIs).
const TEXT_FILE_FLAGS: &[&str] = &[
    "build_event_json_file",
    "build_event_text_file",
    "execution_log_json_file",
];

/// Where the server writes files bound for elsewhere on the desktop (under the output base).
pub use proto::mirror::FILES_DIR;

/// A file to copy from the mirror to the desktop once the command is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The file as the desktop sees it in the mirror (`R/U/H/out/jbazel/files/...`).
    pub from: PathBuf,
    /// Where the user asked for it.
    pub to: PathBuf,
    /// Text whose `/work/...` paths become desktop paths on the way.
    pub translate: bool,
}

/// The user's arguments as the server must see them, and the files to deliver after.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rewritten {
    pub args: Vec<String>,
    pub deliveries: Vec<Delivery>,
}

/// A file option the platform cannot honour; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileFlagError {
    #[error("--override_repository={name}={}: the directory is outside the workspace {}, and the Bazel server in your pod sees only the workspace; move or copy it inside the workspace", path.display(), root.display())]
    OverrideOutside {
        name: String,
        path: PathBuf,
        root: PathBuf,
    },
    #[error("--override_repository={0}: expected NAME=PATH")]
    OverrideSyntax(String),
}

/// `path` made absolute against `cwd`, with `.` and `..` resolved lexically.
fn absolute(cwd: &Path, path: &str) -> PathBuf {
    let joined = cwd.join(path);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The pod path of a desktop path, when the pod can see it (workspace or mirror).
fn pod_path(map: &PathMap, path: &Path) -> Option<String> {
    let name = map.pod_name(path);
    name.starts_with("/work/").then_some(name)
}

/// Splits `--name=value` / `--name value`; returns (name, value, consumed next arg).
fn option<'a>(arg: &'a str, next: Option<&'a String>) -> Option<(&'a str, Option<&'a str>, bool)> {
    let body = arg.strip_prefix("--")?;
    match body.split_once('=') {
        Some((name, value)) => Some((name, Some(value), false)),
        None => Some((body, next.map(String::as_str), next.is_some())),
    }
}

/// Rewrites the file options of `args` (the user's arguments after the command).
pub fn rewrite(args: &[String], cwd: &Path, map: &PathMap) -> Result<Rewritten, FileFlagError> {
    let mut out = Rewritten::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            out.args.extend(args[i..].iter().cloned());
            break;
        }
        let parsed = option(arg, args.get(i + 1));
        match parsed {
            Some((name, Some(value), consumed)) if OUTPUT_FILE_FLAGS.contains(&name) => {
                let desktop = absolute(cwd, value);
                // The server writes the mirror directly; the checkout is read-only in the
                // pod, so a file for the workspace is staged and delivered like any other.
                let in_mirror = pod_path(map, &desktop).filter(|pod| {
                    pod.strip_prefix(POD_OUT)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                });
                let pod = match in_mirror {
                    Some(pod) => pod,
                    None if value.is_empty() => String::new(),
                    None => {
                        let file = desktop
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "file".into());
                        let staged = format!(
                            "{FILES_DIR}/{}-{}-{file}",
                            std::process::id(),
                            out.deliveries.len()
                        );
                        out.deliveries.push(Delivery {
                            from: map.mirror_out.join(&staged),
                            to: desktop,
                            translate: TEXT_FILE_FLAGS.contains(&name),
                        });
                        format!("{POD_OUT}/{staged}")
                    }
                };
                out.args.push(format!("--{name}={pod}"));
                i += 1 + usize::from(consumed);
            }
            Some(("override_repository", Some(value), consumed)) => {
                let (repo, path) = value
                    .split_once('=')
                    .ok_or_else(|| FileFlagError::OverrideSyntax(value.to_string()))?;
                let pod = if path.starts_with("%workspace%") {
                    path.to_string()
                } else {
                    let desktop = absolute(cwd, path);
                    pod_path(map, &desktop).ok_or_else(|| FileFlagError::OverrideOutside {
                        name: repo.to_string(),
                        path: desktop.clone(),
                        root: map.desktop_root.clone(),
                    })?
                };
                out.args.push(format!("--override_repository={repo}={pod}"));
                i += 1 + usize::from(consumed);
            }
            _ => {
                out.args.push(arg.clone());
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Errors delivering a file; each names both ends.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No staged file: the server did not write it (the command failed early).
    #[error("the server did not write {} (for {})", from.display(), to.display())]
    Missing { from: PathBuf, to: PathBuf },
    /// A link, a FIFO, a directory, ... where the server writes a regular file.
    #[error("{} is not a regular file (or is reached through a link); not copied to {}", from.display(), to.display())]
    NotAFile { from: PathBuf, to: PathBuf },
    /// Over the cap ([`MAX_DELIVERED_BYTES_VAR`]): nothing written at the destination.
    #[error("{} is larger than {limit} bytes ({MAX_DELIVERED_BYTES_VAR}); {} not written", from.display(), to.display())]
    TooLarge {
        from: PathBuf,
        to: PathBuf,
        limit: u64,
    },
    /// Reading, writing or renaming into place failed.
    #[error("cannot copy {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The variable that caps a delivered file's size, in bytes.
pub const MAX_DELIVERED_BYTES_VAR: &str = "JBAZEL_MAX_DELIVERED_BYTES";
/// The cap without [`MAX_DELIVERED_BYTES_VAR`]: 4 GiB, more than any BEP or profile of a
/// real build, and bounded on the desktop's disk (nothing is held in memory).
pub const DEFAULT_MAX_DELIVERED_BYTES: u64 = 4 << 30;

/// The cap on a delivered file from [`MAX_DELIVERED_BYTES_VAR`]'s value: a whole number of
/// bytes; unset, empty or not a number is [`DEFAULT_MAX_DELIVERED_BYTES`].
pub fn max_delivered_bytes(value: Option<&str>) -> u64 {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => DEFAULT_MAX_DELIVERED_BYTES,
        Some(v) => v.parse().unwrap_or_else(|_| {
            tracing::warn!(
                variable = MAX_DELIVERED_BYTES_VAR,
                value = v,
                default = DEFAULT_MAX_DELIVERED_BYTES,
                "not a number of bytes; using the default"
            );
            DEFAULT_MAX_DELIVERED_BYTES
        }),
    }
}

/// A path as a `file://` URI path: bytes outside RFC 3986's unreserved set and `/` are
/// percent-encoded (Bazel writes `file:///a/my%20repo`).
fn uri_path(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Pod paths in text as the desktop must read them: `file:///work/...` URIs first, then
/// plain paths.
pub fn translate_text(bytes: &[u8], map: &PathMap) -> Vec<u8> {
    map.to_desktop().rewrite(&uri_rewriter(map).rewrite(bytes))
}

/// `file:///work/...` URIs to the desktop's (see [`translate_text`]).
fn uri_rewriter(map: &PathMap) -> Rewriter {
    // Rewriter patterns start with `/`: match `///work/..` after `file:`.
    let uri = |prefix: &str, desktop: &Path| {
        let mut to = b"//".to_vec();
        to.extend(uri_path(desktop));
        (format!("//{prefix}").into_bytes(), to)
    };
    Rewriter::new(vec![
        uri(crate::paths::POD_SRC, &map.desktop_root),
        uri(POD_OUT, &map.mirror_out),
    ])
}

/// Copies one staged file to the desktop path (text formats translated, see
/// [`translate_text`]) and removes the staged copy, with the cap from
/// [`MAX_DELIVERED_BYTES_VAR`] (see [`deliver_capped`]).
pub fn deliver(d: &Delivery, map: &PathMap) -> Result<(), DeliveryError> {
    let cap = max_delivered_bytes(std::env::var(MAX_DELIVERED_BYTES_VAR).ok().as_deref());
    deliver_capped(d, map, cap)
}

/// The staged file as (root, path below it): below the mirror of the output base, which
/// the pod writes; a staged path elsewhere (tests) below its own directory.
fn staged_location(from: &Path, map: &PathMap) -> (PathBuf, PathBuf) {
    match from.strip_prefix(&map.mirror_out) {
        Ok(rel) => (map.mirror_out.clone(), rel.to_path_buf()),
        Err(_) => (
            from.parent().unwrap_or(Path::new("/")).to_path_buf(),
            from.file_name().map(PathBuf::from).unwrap_or_default(),
        ),
    }
}

/// Pod paths to desktop paths in a stream, chunk by chunk, as [`translate_text`] does for
/// a whole text: `file:///work/...` URIs first, then plain paths. Holds no more than a
/// pattern's length between chunks.
struct TextTranslator {
    uris: StreamRewriter,
    paths: StreamRewriter,
}

impl TextTranslator {
    fn new(map: &PathMap) -> Self {
        TextTranslator {
            uris: StreamRewriter::new(uri_rewriter(map)),
            paths: StreamRewriter::new(map.to_desktop()),
        }
    }

    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let once = self.uris.push(chunk);
        self.paths.push(&once)
    }

    fn finish(&mut self) -> Vec<u8> {
        let tail = self.uris.finish();
        let mut out = self.paths.push(&tail);
        out.extend(self.paths.finish());
        out
    }
}

/// Bytes read at a time when delivering.
const DELIVERY_CHUNK: usize = 64 * 1024;

/// [`deliver`] with a cap of `limit` bytes. The staged file (written by the pod) is opened
/// as [`crate::untrusted_fs`] opens files: no link on the way, a regular file, no blocking.
/// It is streamed (binary formats copied, text formats translated chunk by chunk) into a
/// temporary file beside the destination, renamed into place at the end: a file over the
/// cap (by its size, before anything is copied, or while it grows) or a failed copy leaves
/// the destination as it was.
pub fn deliver_capped(d: &Delivery, map: &PathMap, limit: u64) -> Result<(), DeliveryError> {
    use std::io::{Read, Write};
    let (from, to) = (d.from.clone(), d.to.clone());
    let (root, rel) = staged_location(&d.from, map);
    let mut src = match untrusted_fs::open_beneath(&root, &rel) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Err(DeliveryError::Missing { from, to }),
        Err(UntrustedFileError::Link { .. } | UntrustedFileError::NotRegular { .. }) => {
            return Err(DeliveryError::NotAFile { from, to })
        }
        Err(e) => {
            tracing::debug!(error = %proto::error_chain::ErrorChain(&e), "staged file not opened");
            return Err(DeliveryError::Missing { from, to });
        }
    };
    // Over the cap: the staged file goes too (it is the pod's, and useless).
    let too_large = || {
        let _ = untrusted_fs::remove_file_beneath(&root, &rel);
        DeliveryError::TooLarge {
            from: d.from.clone(),
            to: d.to.clone(),
            limit,
        }
    };
    let copy_err = |source| DeliveryError::Copy {
        from: d.from.clone(),
        to: d.to.clone(),
        source,
    };
    if src.metadata().map_err(copy_err)?.len() > limit {
        return Err(too_large());
    }
    let dir = match d.to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name =
        d.to.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
    let prefix = format!(".{name}.jbazel-");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(copy_err)?;
    let mut translator = d.translate.then(|| TextTranslator::new(map));
    let mut buf = vec![0u8; DELIVERY_CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(copy_err(e)),
        };
        total += n as u64;
        if total > limit {
            // The pod grew it while it was copied; `tmp` is removed when dropped.
            return Err(too_large());
        }
        match translator.as_mut() {
            Some(t) => tmp.write_all(&t.push(&buf[..n])),
            None => tmp.write_all(&buf[..n]),
        }
        .map_err(copy_err)?;
    }
    if let Some(t) = translator.as_mut() {
        tmp.write_all(&t.finish()).map_err(copy_err)?;
    }
    tmp.persist(&d.to).map_err(|e| copy_err(e.error))?;
    if let Err(e) = untrusted_fs::remove_file_beneath(&root, &rel) {
        tracing::debug!(error = %proto::error_chain::ErrorChain(&e), "staged file not removed");
    }
    Ok(())
}

/// Makes the staging directory for delivered files ([`FILES_DIR`] in the mirror of the
/// output base) without following a link there ([`untrusted_fs::create_dir_beneath`]). The
/// server writes there as the tree's owner: when jbazel runs as root (an admin, a test
/// harness), the directories on the way are given to the owner of the output base.
pub fn prepare_staging(map: &PathMap) -> Result<(), UntrustedFileError> {
    untrusted_fs::create_dir_beneath(&map.mirror_out, Path::new(FILES_DIR))?;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&map.mirror_out).map_err(|source| UntrustedFileError::Open {
        path: map.mirror_out.clone(),
        source,
    })?;
    let mut rel = PathBuf::new();
    for part in Path::new(FILES_DIR).components() {
        rel.push(part);
        let dir = untrusted_fs::open_dir_beneath(&map.mirror_out, &rel)?;
        let uid = dir.metadata().map(|m| m.uid()).ok();
        if uid == Some(0) && owner.uid() != 0 {
            std::os::unix::fs::fchown(&dir, Some(owner.uid()), Some(owner.gid())).map_err(
                |source| UntrustedFileError::Open {
                    path: map.mirror_out.join(&rel),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef";

    fn map() -> PathMap {
        PathMap::new(
            Path::new("/home/a/my repo"),
            Path::new("/fs"),
            "alice",
            HASH,
        )
    }

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn staged(n: usize, file: &str) -> String {
        format!("{POD_OUT}/{FILES_DIR}/{}-{n}-{file}", std::process::id())
    }

    #[test]
    fn every_output_flag_in_both_spellings() {
        let cwd = Path::new("/home/a/my repo/lib");
        for flag in OUTPUT_FILE_FLAGS {
            // Inside the workspace, which is read-only in the pod: staged, then delivered.
            let r = rewrite(
                &v(&["//...", &format!("--{flag}=out/bep.json")]),
                cwd,
                &map(),
            )
            .expect("rewrite");
            assert_eq!(
                r.args,
                v(&["//...", &format!("--{flag}={}", staged(0, "bep.json"))]),
                "{flag}"
            );
            assert_eq!(
                r.deliveries.iter().map(|d| &d.to).collect::<Vec<_>>(),
                [Path::new("/home/a/my repo/lib/out/bep.json")]
            );
            // Elsewhere, spelled as two arguments: staged in the output base, delivered after.
            let r = rewrite(
                &v(&[&format!("--{flag}"), "/tmp/intellij-bep-123"]),
                cwd,
                &map(),
            )
            .expect("rewrite");
            assert_eq!(
                r.args,
                vec![format!("--{flag}={}", staged(0, "intellij-bep-123"))]
            );
            assert_eq!(
                r.deliveries,
                vec![Delivery {
                    from: PathBuf::from(format!(
                        "/fs/alice/{HASH}/out/{FILES_DIR}/{}-0-intellij-bep-123",
                        std::process::id()
                    )),
                    to: PathBuf::from("/tmp/intellij-bep-123"),
                    translate: TEXT_FILE_FLAGS.contains(flag),
                }]
            );
        }
    }

    #[test]
    fn table() {
        let cwd = Path::new("/home/a/my repo");
        let out = format!("/fs/alice/{HASH}/out");
        // (args, expected args)
        let cases: Vec<(Vec<String>, Vec<String>)> = vec![
            (
                v(&["//app:x", "--keep_going"]),
                v(&["//app:x", "--keep_going"]),
            ),
            (
                v(&[&format!("--profile={out}/p.gz")]),
                v(&["--profile=/work/out/p.gz"]),
            ),
            (
                v(&["--override_repository=foo=third_party/foo"]),
                v(&["--override_repository=foo=/work/src/third_party/foo"]),
            ),
            (
                v(&["--override_repository", "foo=%workspace%/x"]),
                v(&["--override_repository=foo=%workspace%/x"]),
            ),
            // After `--`: the binary's arguments, untouched.
            (
                v(&["//app:x", "--", "--profile=/tmp/p"]),
                v(&["//app:x", "--", "--profile=/tmp/p"]),
            ),
            // A flag that only looks alike.
            (v(&["--profiles=/tmp/p"]), v(&["--profiles=/tmp/p"])),
        ];
        for (args, want) in cases {
            let r = rewrite(&args, cwd, &map()).expect("rewrite");
            assert_eq!(r.args, want, "{args:?}");
            assert!(r.deliveries.is_empty(), "{args:?}");
        }
    }

    #[test]
    fn a_file_for_the_workspace_is_delivered_there() {
        let r = rewrite(
            &v(&["--profile=../elsewhere/../my repo/p.gz"]),
            Path::new("/home/a/my repo"),
            &map(),
        )
        .expect("rewrite");
        assert_eq!(r.args, v(&[&format!("--profile={}", staged(0, "p.gz"))]));
        assert_eq!(r.deliveries.len(), 1);
        assert_eq!(r.deliveries[0].to, Path::new("/home/a/my repo/p.gz"));
    }

    #[test]
    fn override_outside_the_workspace_is_a_clear_error() {
        let err = rewrite(
            &v(&["--override_repository=foo=/opt/foo"]),
            Path::new("/home/a/my repo"),
            &map(),
        )
        .expect_err("outside");
        assert!(matches!(err, FileFlagError::OverrideOutside { .. }));
        let text = err.to_string();
        assert!(
            text.contains("/opt/foo") && text.contains("inside the workspace"),
            "{text}"
        );
        assert_eq!(
            rewrite(
                &v(&["--override_repository=nopath"]),
                Path::new("/"),
                &map()
            ),
            Err(FileFlagError::OverrideSyntax("nopath".into()))
        );
    }

    #[test]
    fn delivery_copies_regular_files_only_and_translates_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rw = map();
        let staged = dir.path().join("staged");
        let bep = b"{\"uri\":\"file:///work/out/execroot/__main__/bazel-out/x\",\"src\":\"/work/src/a.cc\"}";
        std::fs::write(&staged, bep).expect("write");
        let to = dir.path().join("bep.json");
        deliver(
            &Delivery {
                from: staged.clone(),
                to: to.clone(),
                translate: true,
            },
            &rw,
        )
        .expect("deliver");
        let want = format!(
            "{{\"uri\":\"file:///fs/alice/{HASH}/out/execroot/__main__/bazel-out/x\",\"src\":\"/home/a/my repo/a.cc\"}}"
        );
        assert_eq!(
            translate_text(b"file:///work/src/x", &map()),
            b"file:///home/a/my%20repo/x".to_vec()
        );
        assert_eq!(std::fs::read_to_string(&to).expect("read"), want);
        assert!(!staged.exists(), "the staged copy is removed");
        // Binary formats are copied byte for byte.
        std::fs::write(&staged, bep).expect("write");
        deliver(
            &Delivery {
                from: staged.clone(),
                to: to.clone(),
                translate: false,
            },
            &rw,
        )
        .expect("deliver");
        assert_eq!(std::fs::read(&to).expect("read"), bep);
        // A symlink written by the pod is not followed.
        std::os::unix::fs::symlink("/etc/hostname", &staged).expect("link");
        let err = deliver(
            &Delivery {
                from: staged,
                to: dir.path().join("x"),
                translate: false,
            },
            &rw,
        )
        .expect_err("link");
        assert!(matches!(err, DeliveryError::NotAFile { .. }), "{err}");
        let err = deliver(
            &Delivery {
                from: dir.path().join("none"),
                to: dir.path().join("y"),
                translate: false,
            },
            &rw,
        )
        .expect_err("missing");
        assert!(matches!(err, DeliveryError::Missing { .. }));
    }

    /// A map whose mirror of the output base is `out`.
    fn map_at(out: &Path) -> PathMap {
        PathMap {
            mirror_out: out.to_path_buf(),
            ..map()
        }
    }

    use crate::untrusted_fs::within;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_sparse_terabyte_fails_fast_and_writes_nothing() {
        let out = tempfile::tempdir().expect("tempdir");
        let dest = tempfile::tempdir().expect("tempdir");
        let m = map_at(out.path());
        prepare_staging(&m).expect("staging");
        let from = out.path().join(FILES_DIR).join("1-0-bep.json");
        std::fs::File::create(&from)
            .expect("create")
            .set_len(1 << 40)
            .expect("1 TiB, sparse");
        let to = dest.path().join("bep.json");
        let d = Delivery {
            from: from.clone(),
            to: to.clone(),
            translate: true,
        };
        let start = std::time::Instant::now();
        let err = within(std::time::Duration::from_secs(20), move || {
            deliver_capped(&d, &m, DEFAULT_MAX_DELIVERED_BYTES)
        })
        .expect_err("over the cap");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert!(matches!(err, DeliveryError::TooLarge { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("1-0-bep.json") && text.contains(MAX_DELIVERED_BYTES_VAR),
            "{text}"
        );
        assert!(
            entries(dest.path()).is_empty(),
            "nothing at the destination"
        );
        assert!(!from.exists(), "the staged file is dropped");
    }

    #[test]
    fn over_the_cap_the_destination_is_left_as_it_was() {
        let out = tempfile::tempdir().expect("tempdir");
        let dest = tempfile::tempdir().expect("tempdir");
        let m = map_at(out.path());
        prepare_staging(&m).expect("staging");
        let from = out.path().join(FILES_DIR).join("1-0-profile");
        std::fs::write(&from, vec![b'x'; 1000]).expect("write");
        let to = dest.path().join("profile.gz");
        std::fs::write(&to, "previous").expect("write");
        for translate in [false, true] {
            let d = Delivery {
                from: from.clone(),
                to: to.clone(),
                translate,
            };
            std::fs::write(&from, vec![b'x'; 1000]).expect("write");
            let err = deliver_capped(&d, &m, 999).expect_err("over");
            assert!(
                matches!(err, DeliveryError::TooLarge { limit: 999, .. }),
                "{err}"
            );
            assert_eq!(std::fs::read(&to).expect("read"), b"previous");
            assert_eq!(entries(dest.path()), ["profile.gz"], "no temporary left");
        }
        // At the cap exactly: delivered.
        std::fs::write(&from, vec![b'x'; 1000]).expect("write");
        let d = Delivery {
            from,
            to: to.clone(),
            translate: false,
        };
        deliver_capped(&d, &m, 1000).expect("at the cap");
        assert_eq!(std::fs::read(&to).expect("read").len(), 1000);
    }

    #[test]
    fn text_is_translated_as_a_stream_the_same_as_whole() {
        let out = tempfile::tempdir().expect("tempdir");
        let dest = tempfile::tempdir().expect("tempdir");
        let m = map_at(out.path());
        prepare_staging(&m).expect("staging");
        // Paths and URIs across every chunk boundary, and one long line with no newline.
        let mut text = Vec::new();
        let mut n = 0;
        while text.len() < 3 * DELIVERY_CHUNK + 100 {
            text.extend_from_slice(b"{\"uri\":\"file:///work/out/x/");
            text.extend_from_slice(n.to_string().as_bytes());
            text.extend_from_slice(b"\",\"src\":\"/work/src/a.cc\",\"no\":\"/work/srcx\"}");
            if n % 7 == 0 {
                text.push(b'\n');
            }
            n += 1;
        }
        for start in [0, 3, 17] {
            let body = &text[start..];
            let from = out.path().join(FILES_DIR).join("1-0-bep.json");
            std::fs::write(&from, body).expect("write");
            let to = dest.path().join("bep.json");
            let d = Delivery {
                from,
                to: to.clone(),
                translate: true,
            };
            deliver_capped(&d, &m, DEFAULT_MAX_DELIVERED_BYTES).expect("deliver");
            let got = std::fs::read(&to).expect("read");
            assert!(got == translate_text(body, &m), "offset {start}: differs");
            assert!(!String::from_utf8_lossy(&got).contains("file:///work/"));
        }
    }

    #[test]
    fn staged_files_are_opened_the_safe_way() {
        let out = tempfile::tempdir().expect("tempdir");
        let dest = tempfile::tempdir().expect("tempdir");
        let desktop = tempfile::tempdir().expect("tempdir");
        let canary = desktop.path().join("credentials");
        std::fs::write(&canary, "CANARY").expect("write");
        let m = map_at(out.path());
        prepare_staging(&m).expect("staging");
        let staged = out.path().join(FILES_DIR);
        let to = dest.path().join("bep.json");
        let d = |name: &str| Delivery {
            from: staged.join(name),
            to: to.clone(),
            translate: false,
        };
        // A FIFO: refused at once, no hang.
        nix::unistd::mkfifo(
            &staged.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let (fifo, m2) = (d("fifo"), m.clone());
        let r = within(std::time::Duration::from_secs(10), move || {
            deliver_capped(&fifo, &m2, DEFAULT_MAX_DELIVERED_BYTES)
        });
        assert!(matches!(r, Err(DeliveryError::NotAFile { .. })), "{r:?}");
        // A link to /dev/zero, or to a desktop file.
        std::os::unix::fs::symlink("/dev/zero", staged.join("zero")).expect("symlink");
        let r = deliver_capped(&d("zero"), &m, DEFAULT_MAX_DELIVERED_BYTES);
        assert!(matches!(r, Err(DeliveryError::NotAFile { .. })), "{r:?}");
        std::os::unix::fs::symlink(&canary, staged.join("canary")).expect("symlink");
        let r = deliver_capped(&d("canary"), &m, DEFAULT_MAX_DELIVERED_BYTES);
        assert!(matches!(r, Err(DeliveryError::NotAFile { .. })), "{r:?}");
        assert!(!to.exists());
        // The staging directory itself replaced by a link to the desktop.
        std::fs::write(desktop.path().join("1-0-bep.json"), "CANARY").expect("write");
        std::fs::remove_dir_all(&staged).expect("rm");
        std::os::unix::fs::symlink(desktop.path(), &staged).expect("symlink");
        let r = deliver_capped(&d("1-0-bep.json"), &m, DEFAULT_MAX_DELIVERED_BYTES);
        assert!(matches!(r, Err(DeliveryError::NotAFile { .. })), "{r:?}");
        assert!(!to.exists());
        assert!(desktop.path().join("1-0-bep.json").exists(), "not removed");
        // And the staging directory is not made through it.
        let err = prepare_staging(&m).expect_err("a link");
        assert!(matches!(err, UntrustedFileError::Link { .. }), "{err}");
    }

    #[test]
    fn the_cap_comes_from_the_environment() {
        for (value, want) in [
            (None, DEFAULT_MAX_DELIVERED_BYTES),
            (Some(""), DEFAULT_MAX_DELIVERED_BYTES),
            (Some("1048576"), 1 << 20),
            (Some(" 10 "), 10),
            (Some("0"), 0),
            (Some("4G"), DEFAULT_MAX_DELIVERED_BYTES),
            (Some("-1"), DEFAULT_MAX_DELIVERED_BYTES),
        ] {
            assert_eq!(max_delivered_bytes(value), want, "{value:?}");
        }
        assert_eq!(DEFAULT_MAX_DELIVERED_BYTES, 4 * 1024 * 1024 * 1024);
    }
}
